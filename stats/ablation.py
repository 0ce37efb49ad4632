"""Ablation summaries: per-pair margin drop, mean drop, relative drop, specificity, sign-flip test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from stats._common import Flag, as_1d_float, as_generator, as_ids, check_confidence
from stats.baseline import BaselineResult, all_unit_baseline
from stats.permutation import paired_permutation_test

__all__ = ["AblationResult", "ablation_summary", "control_adjusted_baseline", "describe_margins", "slot_rankings"]


@dataclass(frozen=True)
class AblationResult:
    """Result of :func:`ablation_summary`.

    Attributes
    ----------
    pair_ids : numpy.ndarray
    drop : numpy.ndarray
        Per-pair ``baseline_margin - ablated_margin`` (positive = ablation hurt the margin).
    n_pairs : int
    mean_drop, mean_drop_ci_t, mean_drop_ci_boot : float, (float, float), (float, float)
        Mean drop with a t interval and a percentile bootstrap interval.
    relative_drop, relative_drop_ci : float, (float, float)
        Per ``relative_definition``: ``"ratio_of_means"`` = ``mean(drop)/mean(baseline)``, or
        ``"mean_of_ratios"`` = ``mean(drop_i/baseline_i)``; percentile bootstrap interval.
    relative_definition : str
    control_mean_drop, control_mean_drop_ci_t : float, (float, float)
        NaN when no control pairs were given.
    specificity_ratio, specificity_ratio_ci : float, (float, float)
        ``mean headline drop / mean control drop``, bootstrap interval resampling both sets.
    pvalue, pvalue_exact, n_resamples : float, bool, int
        Paired sign-flip test of mean drop > 0.
    thresholds : dict[str, tuple]
        ``name -> (value, threshold, passed)`` for each preregistered threshold given.
    flags : tuple of Flag
        ``below_threshold_<name>``, ``control_drop_not_positive`` (the ratio is not meaningful),
        ``nonpositive_baseline`` (mean_of_ratios with baseline margins ≤ 0).
    """

    pair_ids: np.ndarray
    drop: np.ndarray
    n_pairs: int
    mean_drop: float
    mean_drop_ci_t: tuple
    mean_drop_ci_boot: tuple
    relative_drop: float
    relative_drop_ci: tuple
    relative_definition: str
    control_mean_drop: float
    control_mean_drop_ci_t: tuple
    specificity_ratio: float
    specificity_ratio_ci: tuple
    pvalue: float
    pvalue_exact: bool
    n_resamples: int
    thresholds: dict
    confidence: float
    flags: tuple

    def to_frame(self) -> pd.DataFrame:
        """One row per pair: ``pair, drop``."""
        return pd.DataFrame({"pair": self.pair_ids, "drop": self.drop})

    def summary_frame(self) -> pd.DataFrame:
        """One row per quantity: ``quantity, estimate, ci_low, ci_high``."""
        rows = [("mean_drop", self.mean_drop, *self.mean_drop_ci_t),
                ("mean_drop_boot", self.mean_drop, *self.mean_drop_ci_boot),
                (f"relative_drop_{self.relative_definition}", self.relative_drop, *self.relative_drop_ci),
                ("control_mean_drop", self.control_mean_drop, *self.control_mean_drop_ci_t),
                ("specificity_ratio", self.specificity_ratio, *self.specificity_ratio_ci)]
        return pd.DataFrame(rows, columns=["quantity", "estimate", "ci_low", "ci_high"])


def _t_ci(x, confidence):
    n = x.size
    m = float(x.mean())
    k = int(np.frexp(np.max(np.abs(x)))[1])  # exact scaling: the square of 1e300 must not overflow
    sd = 0.0 if np.all(x == x[0]) else float(np.ldexp(np.ldexp(x, -k).std(ddof=1), k))
    se = sd / np.sqrt(n)
    h = sps.t.ppf(0.5 + confidence / 2, n - 1) * se
    return m - h, m + h


def _ablation_iv(baseline_margin, ablated_margin, control_baseline, control_ablated, pair_ids,
                 relative_definition, confidence, n_boot):
    b = as_1d_float(baseline_margin, "baseline_margin")
    a = as_1d_float(ablated_margin, "ablated_margin")
    if a.shape != b.shape:
        raise ValueError(f"`ablated_margin` must have the shape of `baseline_margin` {b.shape}.")
    if b.size < 2:
        raise ValueError("`baseline_margin` must hold at least 2 pairs.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("`baseline_margin` and `ablated_margin` must be finite.")
    if not np.all(np.isfinite(b - a)):
        raise ValueError("`baseline_margin` - `ablated_margin` overflows for some pairs: the margins "
                         "must be differences of logits, far below 1e308.")
    if (control_baseline is None) != (control_ablated is None):
        raise ValueError("`control_baseline` and `control_ablated` go together: give both or neither.")
    cb = ca = None
    if control_baseline is not None:
        cb = as_1d_float(control_baseline, "control_baseline")
        ca = as_1d_float(control_ablated, "control_ablated")
        if cb.shape != ca.shape or cb.size < 2:
            raise ValueError("`control_ablated` must match `control_baseline`, with at least 2 pairs.")
        if not (np.all(np.isfinite(cb)) and np.all(np.isfinite(ca))):
            raise ValueError("`control_baseline` and `control_ablated` must be finite.")
        if not np.all(np.isfinite(cb - ca)):
            raise ValueError("`control_baseline` - `control_ablated` overflows for some pairs: "
                             "the margins must be differences of logits, far below 1e308.")
    if relative_definition not in ("ratio_of_means", "mean_of_ratios"):
        raise ValueError("`relative_definition` must be 'ratio_of_means' or 'mean_of_ratios'.")
    confidence = check_confidence(confidence)
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 100):
        raise ValueError("`n_boot` must be an integer of at least 100.")
    ids = as_ids(pair_ids, b.size, "pair_ids", "pair")
    return b, a, cb, ca, ids, confidence


def _quantiles(x, confidence):
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (np.nan, np.nan)
    a = 1 - confidence
    return float(np.quantile(x, a / 2)), float(np.quantile(x, 1 - a / 2))


def ablation_summary(baseline_margin, ablated_margin, *, control_baseline=None,
                     control_ablated=None, pair_ids=None,
                     relative_definition: str = "ratio_of_means", min_mean_drop: float | None = None,
                     min_relative_drop: float | None = None, min_specificity: float | None = None,
                     confidence: float = 0.95, n_boot: int = 9_999, n_resamples: int = 9_999,
                     rng=None) -> AblationResult:
    """Summarise a paired ablation: how much the logit-difference margin drops, and how specifically.

    Parameters
    ----------
    baseline_margin, ablated_margin : array_like, 1-D
        Headline pairs' clean-vs-corrupted margin without and with the ablation.
    control_baseline, control_ablated : array_like, optional
        The same for the control pairs.
    pair_ids : sequence of str, optional
    relative_definition : {"ratio_of_means", "mean_of_ratios"}
        As preregistered. The ablation card's 0.574 is of this kind; which one it used is not stated.
    min_mean_drop, min_relative_drop, min_specificity : float, optional
        Preregistered thresholds (the card's 1.5-logit mean drop); each failure is a named flag.
    confidence, n_boot, n_resamples, rng
        Intervals, bootstrap resamples, sign-flip resamples (exact when 2**n ≤ 200,000).

    Returns
    -------
    AblationResult

    Notes
    -----
    ``drop_i = baseline_i - ablated_i``; t interval ``mean ± t_{n-1}·s/sqrt(n)`` (checked against
    ``scipy.stats.ttest_1samp(drop, 0).confidence_interval``); bootstrap intervals resample pairs
    (headline and control independently). The sign-flip test is
    :func:`stats.permutation.paired_permutation_test` with ``statistic="mean"`` and
    ``alternative="greater"``.
    """
    b, a, cb, ca, ids, confidence = _ablation_iv(baseline_margin, ablated_margin, control_baseline,
                                                 control_ablated, pair_ids, relative_definition,
                                                 confidence, n_boot)
    gen = as_generator(rng)
    drop = b - a
    n = drop.size
    flags = []
    idx = gen.integers(0, n, size=(n_boot, n))
    boot_drop = drop[idx].mean(axis=1)
    if relative_definition == "ratio_of_means":
        if b.mean() <= 0:
            flags.append(Flag("nonpositive_baseline",
                              f"the mean baseline margin is {b.mean():.4g} (<= 0); the ratio of mean "
                              "drop to mean baseline is not a relative drop"))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = float(drop.mean() / b.mean())
            boot_rel = boot_drop / b[idx].mean(axis=1)
    else:
        if np.any(b <= 0):
            flags.append(Flag("nonpositive_baseline",
                              f"{int(np.sum(b <= 0))} pair(s) have baseline margin <= 0; their ratios "
                              "are not relative drops"))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = drop / b
        rel = float(ratios.mean())
        # a zero baseline makes a ratio infinite: no interval (dropping those resamples would give
        # one that excludes the estimate)
        boot_rel = ratios[idx].mean(axis=1) if np.all(np.isfinite(ratios)) else np.full(n_boot, np.nan)
    c_mean, c_ci, spec, spec_ci = np.nan, (np.nan, np.nan), np.nan, (np.nan, np.nan)
    if cb is not None:
        cdrop = cb - ca
        c_mean = float(cdrop.mean())
        c_ci = _t_ci(cdrop, confidence)
        cidx = gen.integers(0, cdrop.size, size=(n_boot, cdrop.size))
        with np.errstate(divide="ignore", invalid="ignore"):
            spec = float(drop.mean() / c_mean) if c_mean != 0 else np.nan
            spec_ci = _quantiles(boot_drop / cdrop[cidx].mean(axis=1), confidence)
        if not (c_ci[0] > 0):
            flags.append(Flag("control_drop_not_positive",
                              f"the control mean drop {c_mean:.4g} has a {confidence:.0%} interval "
                              f"[{c_ci[0]:.4g}, {c_ci[1]:.4g}] reaching 0 or below; the specificity "
                              "ratio is unbounded there and its interval is not informative"))
    test = paired_permutation_test(drop, statistic="mean", alternative="greater",
                                   n_resamples=n_resamples, rng=gen)
    thresholds = {}
    for name, value, thr in (("mean_drop", float(drop.mean()), min_mean_drop),
                             ("relative_drop", rel, min_relative_drop),
                             ("specificity_ratio", spec, min_specificity)):
        if thr is None:
            continue
        ok = bool(np.isfinite(value) and value >= thr)
        thresholds[name] = (value, float(thr), ok)
        if not ok:
            flags.append(Flag(f"below_threshold_{name}", f"{name} {value:.4g} is below the "
                                                         f"preregistered {thr:g}"))
    return AblationResult(
        pair_ids=ids, drop=drop, n_pairs=n, mean_drop=float(drop.mean()),
        mean_drop_ci_t=_t_ci(drop, confidence), mean_drop_ci_boot=_quantiles(boot_drop, confidence),
        relative_drop=rel, relative_drop_ci=_quantiles(boot_rel, confidence),
        relative_definition=relative_definition, control_mean_drop=c_mean,
        control_mean_drop_ci_t=c_ci, specificity_ratio=spec, specificity_ratio_ci=spec_ci,
        pvalue=float(test.pvalue), pvalue_exact=bool(test.exact), n_resamples=int(test.n_resamples),
        thresholds=thresholds, confidence=confidence, flags=tuple(flags),
    )


_MARGIN_QUANTILES = (("min", 0.0), ("q10", 0.1), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q90", 0.9),
                     ("max", 1.0))


def describe_margins(margins) -> dict[str, float]:
    """The distribution of unablated margins: ``n``, ``mean``, ``sd`` (ddof 1), ``min``, ``q10``, ``q25``,
    ``median``, ``q75``, ``q90``, ``max`` (``numpy.quantile``, linear interpolation).

    A mean drop in logits is comparable across prompt sets only when their margins are: easy facts
    (large margins) leave more to drop. Report this beside every mean drop.
    """
    x = as_1d_float(margins, "margins")
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("`margins` must be a non-empty array of finite values.")
    out = {"n": float(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else float("nan")}
    out.update({name: float(np.quantile(x, q)) for name, q in _MARGIN_QUANTILES})
    return out


_RANK_COLUMNS = ("unit", "headline_mean_drop", "control_mean_drop", "adjusted_drop", "rank_headline", "rank_adjusted")


def _drops_iv(x, name: str, width: int | None) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a numeric array of shape (pairs, units).") from exc
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] == 0:
        raise ValueError(f"`{name}` must be a numeric array of shape (pairs, units) with at least 2 pairs.")
    if width is not None and arr.shape[1] != width:
        raise ValueError(f"`{name}` must have one column per unit ({width}), got {arr.shape[1]}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite.")
    return arr


def slot_rankings(headline_drops, control_drops=None, *, unit_ids=None) -> pd.DataFrame:
    """Both rankings of ablated units: by mean headline drop, and by headline minus control drop.

    Parameters
    ----------
    headline_drops : array_like, shape (N_h, F)
        Per headline pair, the drop of the margin when each of F units is ablated alone.
    control_drops : array_like, shape (N_c, F), optional
        The same for the control pairs. Without them the adjusted columns are NaN.
    unit_ids : sequence of str, optional

    Returns
    -------
    pandas.DataFrame
        One row per unit in input order, columns ``unit, headline_mean_drop, control_mean_drop,
        adjusted_drop, rank_headline, rank_adjusted``; ``adjusted_drop = headline_mean_drop -
        control_mean_drop``; ranks 1 = largest, ties take the largest rank they share
        (``scipy.stats.rankdata(method="max")``), as in :func:`stats.all_unit_baseline`.

    Notes
    -----
    Ranking by the raw headline drop rewards a unit whose ablation disrupts every prompt; the
    control-adjusted ranking asks for a drop on the headline pairs beyond the drop on the controls.
    """
    h = _drops_iv(headline_drops, "headline_drops", None)
    f = h.shape[1]
    ids = [f"u{i}" for i in range(f)] if unit_ids is None else [str(u) for u in unit_ids]
    if len(ids) != f or len(set(ids)) != f:
        raise ValueError(f"`unit_ids` must be {f} unique ids, one per column.")
    # means of the sorted columns: units with the same drops in another order get the same mean and tie
    hm = np.sort(h, axis=0).mean(axis=0)
    if control_drops is None:
        cm = np.full(f, np.nan)
    else:
        cm = np.sort(_drops_iv(control_drops, "control_drops", f), axis=0).mean(axis=0)
    adjusted = hm - cm
    rank_adj = (sps.rankdata(-adjusted, method="max").astype(np.int64) if control_drops is not None
                else np.zeros(f, dtype=np.int64))
    return pd.DataFrame({"unit": ids, "headline_mean_drop": hm, "control_mean_drop": cm, "adjusted_drop": adjusted,
                         "rank_headline": sps.rankdata(-hm, method="max").astype(np.int64), "rank_adjusted": rank_adj},
                        columns=list(_RANK_COLUMNS))


def control_adjusted_baseline(headline_drops, control_drops, *, unit_ids=None, target: str | None = None,
                              statistic: str = "welch_t", null: str = "equal_means", alternative: str = "greater",
                              n_resamples: int = 9_999, exact_cap: int = 200_000, alpha: float = 0.05,
                              rng=None) -> BaselineResult:
    """Max-T over ablated units of headline drop against control drop (a two-group test per unit).

    For each unit, the statistic compares its drops on the headline pairs with its drops on the
    control pairs; the same relabelings (or resamples) serve every unit, so the step-down max-T p is
    family-wise over all units (:func:`stats.all_unit_baseline`, with group A = headline pairs).

    Parameters
    ----------
    headline_drops, control_drops : array_like, shapes (N_h, F) and (N_c, F)
    statistic : {"welch_t", "student_t", "mean_diff"}
        ``welch_t`` (the default) is the studentised statistic: ``(mean_h - mean_c) /
        sqrt(s_h²/N_h + s_c²/N_c)``, so a unit whose drops vary widely does not dominate the maximum.
    null : {"equal_means", "exchangeable"}
        ``equal_means`` (default): the Rademacher wild bootstrap of the null-centred statistic, a test
        of equal mean drops when the two classes' spreads differ; ``exchangeable``: relabel pairs.
    alternative, n_resamples, exact_cap, alpha, rng
        As in :func:`stats.all_unit_baseline`.

    Returns
    -------
    BaselineResult

    Notes
    -----
    Checked against a brute-force enumeration of every relabeling with
    ``scipy.stats.ttest_ind(equal_var=False)`` in ``tests/stats/test_stats_ablation_ranking.py``.
    """
    h = _drops_iv(headline_drops, "headline_drops", None)
    c = _drops_iv(control_drops, "control_drops", h.shape[1])
    group = np.r_[np.ones(h.shape[0], dtype=bool), np.zeros(c.shape[0], dtype=bool)]
    return all_unit_baseline(np.vstack([h, c]), group, unit_ids=unit_ids, target=target, statistic=statistic,
                             alternative=alternative, n_resamples=n_resamples, exact_cap=exact_cap, alpha=alpha,
                             rng=rng, null=null, nan_policy="drop_units")
