"""The all-unit baseline: race a target unit against every unit in the model, with max-T.

For every unit (``L14E114``, ``L31H14`` …) the observed statistic, the uncorrected p, the
single-step and step-down max-T family-wise p (Westfall & Young 1993), Holm and Benjamini–Hochberg
adjustments of the uncorrected p, the best-separating unit, the target's rank and percentile, the
critical statistic at ``alpha``, and (two-sample designs) each unit's variance ratio and
Brown–Forsythe p. The null distribution comes from relabeling prompts (``null="exchangeable"``) or,
when the groups' variances may differ, from resampling residuals (``null="equal_means"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from stats import _engine, _resample, _torch, variance
from stats._common import Flag, as_generator, check_resampling
from stats.permutation import null_iv

__all__ = ["BaselineResult", "all_unit_baseline"]

_FRAME_COLUMNS = ("unit", "in_family", "statistic", "p_uncorrected", "p_maxt_single_step",
                  "p_maxt_step_down", "p_holm", "q_bh", "rank", "significant_maxt",
                  "variance_ratio", "brown_forsythe_p")


@dataclass(frozen=True)
class BaselineResult:
    """Result of :func:`all_unit_baseline`.

    Per-unit arrays run over ``unit_ids`` (every unit given, in input order); units outside the
    family (constant, or dropped for NaN) hold NaN statistics and p-values and rank 0.

    Attributes
    ----------
    unit_ids : numpy.ndarray of str
    in_family : numpy.ndarray of bool
        False for units that never vary (e.g. experts never selected) or were dropped for NaN.
    statistic : numpy.ndarray
        Observed statistic per unit (``±inf`` for a t statistic of a unit constant within each group
        and different between them).
    p_uncorrected, p_maxt_single_step, p_maxt_step_down, p_holm, q_bh : numpy.ndarray
        Permutation p; single-step max-T p; step-down max-T p (Westfall–Young, monotone);
        Holm (``multipletests(method="holm")``) and Benjamini–Hochberg (``method="fdr_bh"``)
        applied to the uncorrected permutation p over the family.
    rank : numpy.ndarray of int
        Rank by score (1 = most extreme in the tested direction); ties take the *largest* rank
        they share (``rankdata(method="max")``), so a tie never flatters a unit. Scores within the
        tie tolerance of the p-value counts tie (identical units tie, whatever the rounding of the
        product that scores them). Units whose statistic is infinite in the tested direction all tie.
    family_size : int
        Units in the family (the correction's denominator).
    dropped_units : tuple of (str, str)
        ``(unit, reason)`` for each unit left out of the family.
    best_unit : str
        Unit with the most extreme observed score (first in input order among ties).
    best_statistic : float
    target : str or None
    target_statistic, target_rank, target_percentile : float, int, float
        Percentile = 100·(units strictly below the target's score)/family_size.
    target_p_maxt : float
        The target's step-down max-T p.
    critical_value : float
        Score a unit must strictly exceed to have single-step max-T p ≤ alpha (``inf`` when
        unreachable); in the units of ``|statistic|`` (two-sided), ``statistic`` (greater) or
        ``-statistic`` (less).
    alpha : float
    null_max : numpy.ndarray
        Max score over the family under each relabeling (the max-T null distribution).
    target_null : numpy.ndarray or None
        The target's statistic under each relabeling.
    n_resamples : int
    exact : bool
    statistic_name, alternative : str
    flags : tuple of Flag
        ``maxt_unreachable``, ``holm_unreachable``, ``target_not_in_family``, ``units_dropped``,
        ``not_exchangeable`` (permutation max-T on units whose group variances clearly differ).
    null : str
        ``"exchangeable"`` (two-sample relabelings), ``"symmetric"`` (paired sign flips) or
        ``"equal_means"`` (residual resampling; variances may differ).
    resampling : str
        ``"permutation"``, ``"sign_flip"``, ``"wild"`` or ``"bootstrap"``.
    variance_ratio, brown_forsythe_p : numpy.ndarray
        Per unit, ``var_A/var_B`` (ddof=1) and the Brown–Forsythe p of equal variances
        (:func:`stats.variance_check`); NaN outside the family and for paired designs.
    target_variance_ratio, target_brown_forsythe_p : float
    engine : str
        The backend that ran the scan: ``"numpy"``, ``"torch:cuda"`` or ``"torch:cpu"``.
    """

    unit_ids: np.ndarray
    in_family: np.ndarray
    statistic: np.ndarray
    p_uncorrected: np.ndarray
    p_maxt_single_step: np.ndarray
    p_maxt_step_down: np.ndarray
    p_holm: np.ndarray
    q_bh: np.ndarray
    rank: np.ndarray
    family_size: int
    dropped_units: tuple
    best_unit: str | None
    best_statistic: float
    target: str | None
    target_statistic: float
    target_rank: int
    target_percentile: float
    target_p_maxt: float
    critical_value: float
    alpha: float
    null_max: np.ndarray
    target_null: np.ndarray | None
    n_resamples: int
    exact: bool
    statistic_name: str
    alternative: str
    flags: tuple = field(default=())
    null: str = "exchangeable"
    resampling: str = "permutation"
    variance_ratio: np.ndarray | None = None
    brown_forsythe_p: np.ndarray | None = None
    target_variance_ratio: float = float("nan")
    target_brown_forsythe_p: float = float("nan")
    engine: str = "numpy"

    def to_frame(self) -> pd.DataFrame:
        """One row per unit with columns ``unit, in_family, statistic, p_uncorrected,
        p_maxt_single_step, p_maxt_step_down, p_holm, q_bh, rank, significant_maxt,
        variance_ratio, brown_forsythe_p``."""
        nan = np.full(len(self.unit_ids), np.nan)
        return pd.DataFrame({
            "unit": self.unit_ids,
            "in_family": self.in_family,
            "statistic": self.statistic,
            "p_uncorrected": self.p_uncorrected,
            "p_maxt_single_step": self.p_maxt_single_step,
            "p_maxt_step_down": self.p_maxt_step_down,
            "p_holm": self.p_holm,
            "q_bh": self.q_bh,
            "rank": self.rank,
            "significant_maxt": self.p_maxt_step_down <= self.alpha,
            "variance_ratio": nan if self.variance_ratio is None else self.variance_ratio,
            "brown_forsythe_p": nan if self.brown_forsythe_p is None else self.brown_forsythe_p,
        }, columns=list(_FRAME_COLUMNS))

    def summary(self) -> dict:
        """The numbers a ledger entry quotes, as plain Python values."""
        return {
            "family_size": self.family_size, "n_dropped": len(self.dropped_units),
            "best_unit": self.best_unit, "best_statistic": self.best_statistic,
            "target": self.target, "target_statistic": self.target_statistic,
            "target_rank": self.target_rank, "target_rank_tie_rule": "max",
            "target_percentile": self.target_percentile, "target_p_maxt": self.target_p_maxt,
            "critical_value": self.critical_value, "alpha": self.alpha,
            "n_resamples": self.n_resamples, "exact": self.exact,
            "statistic": self.statistic_name, "alternative": self.alternative,
            "null": self.null, "resampling": self.resampling,
            "target_variance_ratio": self.target_variance_ratio,
            "target_brown_forsythe_p": self.target_brown_forsythe_p,
            "flags": [f.code for f in self.flags], "engine": self.engine,
        }


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p: sorted ``p_(i)·(m - i + 1)``, running max, capped at 1.

    The same numbers as ``multipletests(p, method="holm")[1]`` (pinned by a test); written out here
    because statsmodels' Holm branch calls ``gc.collect()`` on every call (~80 ms in a loaded process).
    """
    m = p.size
    o = np.argsort(p, kind="mergesort")
    adj = np.minimum(np.maximum.accumulate(p[o] * np.arange(m, 0, -1)), 1.0)
    out = np.empty(m)
    out[o] = adj
    return out


def _all_unit_baseline_iv(x, group, unit_ids, target, statistic, alternative, n_resamples,
                          exact_cap, alpha, batch, dtype, nan_policy, null, resampling, backend):
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("`x` must be a numeric array of shape (N, F): prompts × units.") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError("`x` must be a numeric array of shape (N, F): prompts × units.")
    n, f = arr.shape
    paired = group is None
    allowed = _engine.PAIRED_STATISTICS if paired else _engine.TWO_SAMPLE_STATISTICS
    if statistic not in allowed:
        raise ValueError(f"`statistic` must be one of {allowed} for this design, got {statistic!r}.")
    check_resampling(alternative, n_resamples, exact_cap, batch, _engine.ALTERNATIVES)
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError("`alpha` must be strictly between 0 and 1.")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError("`dtype` must be numpy.float32 or numpy.float64.")
    if nan_policy not in ("raise", "drop_units"):
        raise ValueError("`nan_policy` must be 'raise' or 'drop_units'.")
    null, resampling = null_iv(null, resampling, paired)
    engine = _torch.resolve(backend)
    finite = np.all(np.isfinite(arr), axis=0)
    if nan_policy == "raise" and not finite.all():
        bad = int((~finite).sum())
        raise ValueError(f"`x` has NaN or infinite values in {bad} unit(s); pass "
                         "nan_policy='drop_units' to leave them out of the family, or fill them.")
    ids = (np.array([f"u{i}" for i in range(f)], dtype=object) if unit_ids is None
           else np.asarray(unit_ids, dtype=object))
    if ids.shape != (f,):
        raise ValueError(f"`unit_ids` must have one id per column of `x` ({f}).")
    if len(set(ids.tolist())) != f:
        raise ValueError("`unit_ids` must be unique.")
    if target is not None and target not in set(ids.tolist()):
        raise ValueError(f"`target` {target!r} is not among `unit_ids`.")
    if paired:
        mask = None
        if n < 2:
            raise ValueError("`x` must hold at least 2 pairs.")
    else:
        g = np.asarray(group)
        if g.shape != (n,):
            raise ValueError(f"`group` must be a boolean mask of length {n} (one per prompt), or None "
                             "for a paired design.")
        if g.dtype != bool:
            if not np.all(np.isin(g, (0, 1))):
                raise ValueError("`group` must be a boolean mask or 0/1 labels (1 = first group).")
            g = g.astype(bool)
        n1 = int(g.sum())
        if n1 < 2 or n - n1 < 2:
            raise ValueError(f"`group` must put at least 2 items in each group, got {n1} and {n - n1}.")
        mask = g
    return arr, mask, ids, finite, null, resampling, engine


def _variance_diagnostic(fam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per unit of the family: the variance ratio A/B and the Brown–Forsythe p."""
    fam = variance.unit_scaled(fam)  # both are scale-free; no overflow in the squares
    groups = (fam[mask], fam[~mask])
    _, _, vr = variance.variance_ratio(fam, mask, groups=groups)
    _, bp = variance.brown_forsythe(fam, mask, groups=groups)
    return vr, bp


def all_unit_baseline(x, group, *, unit_ids=None, target: str | None = None,
                      statistic: str = "welch_t", alternative: str = "two-sided",
                      n_resamples: int = 9_999, exact_cap: int = 200_000, alpha: float = 0.05,
                      batch: int | None = None, rng=None, dtype=np.float64,
                      nan_policy: str = "raise", null: str | None = None,
                      resampling: str | None = None, backend: str | None = None) -> BaselineResult:
    """Max-T baseline over every unit: is the target the best-separating unit, and does it survive?

    Parameters
    ----------
    x : array_like, shape (N, F)
        Per-prompt value of every unit (e.g. W of each of 40×256 experts in the trimmed zone).
    group : array_like of bool, shape (N,), or None
        True for group A (FIRE / target register). ``None``: ``x`` holds paired differences and the
        relabelings are sign flips.
    unit_ids : sequence of str, optional
        Unit ids such as ``"L14E114"``; ``"u0"…`` when omitted.
    target : str, optional
        The preregistered unit to rank.
    statistic : {"welch_t", "student_t", "mean_diff"} or, paired, {"mean", "paired_t"}
        A t statistic is the usual choice for max-T: it is pivotal, so units with large variance do
        not dominate the maximum the way ``mean_diff`` lets them.
    alternative : {"two-sided", "greater", "less"}
        Two-sided uses ``max |T|``; one-sided uses ``max T`` (or ``max -T``), never the absolute value.
    n_resamples, exact_cap, batch, rng, dtype
        As in :func:`stats.permutation.permutation_test`; the same relabelings (or resamples) serve
        every unit. A cap that would enumerate more than 10⁸ relabelings raises ``ValueError``.
    alpha : float
        Level for the critical value, the significance column and the reachability flags.
    nan_policy : {"raise", "drop_units"}
        NaN values are not allowed in the product; ``drop_units`` leaves any unit with a NaN out of
        the family and lists it in ``dropped_units``.
    null : {None, "exchangeable", "equal_means"}
        The null each unit is tested under. ``None`` or ``"exchangeable"`` (two-sample default):
        relabel prompts; the null is that both groups have one distribution, and the max-T is
        exact under it, but not a test of equal means when the groups' spreads differ (flag
        ``not_exchangeable``). ``"equal_means"``: ``n_resamples`` resamples of the null-centred
        residuals (never exact; ``exact_cap`` unused), valid for equal means with unequal
        variances. Paired designs (``group=None``) test ``"symmetric"`` differences by sign flips.
    resampling : {None, "wild", "bootstrap"}
        With ``null="equal_means"``: the Rademacher wild bootstrap (default, the better calibrated
        in bench/RESULTS.md) or the within-group bootstrap (:mod:`stats._resample`).
    backend : {None, "numpy", "torch", "auto"}
        Where the scan runs. ``"numpy"`` (the default; ``None`` takes the default set by
        :func:`stats.use_backend`); ``"torch"``: PyTorch on CUDA when present, else on the CPU;
        ``"auto"``: torch on CUDA, numpy otherwise. The relabelings are drawn on the host from the
        same generator for both, so decisions and ranks agree and statistics agree within float
        tolerance (:mod:`stats._torch`); ``engine`` records what ran.

    Returns
    -------
    BaselineResult

    Notes
    -----
    With ``T_{π,j}`` the score of unit ``j`` under relabeling (or resample) ``π`` and ``t_j`` its
    observed score:

    * uncorrected ``p_j = #{π : T_{π,j} ≥ t_j} / P`` (exact) or ``(1 + b_j)/(1 + P)`` (Monte Carlo
      and residual resampling);
    * single-step max-T ``p̃_j = #{π : max_k T_{π,k} ≥ t_j} / P`` (same ``+1`` rule);
    * step-down: order units by ``t`` descending, ``r_1 … r_F``; ``u_{π,i} = max_{l ≥ i} T_{π,r_l}``;
      ``p̃_{r_i} = #{π : u_{π,i} ≥ t_{r_i}}/P``, then ``p_{r_i} = max_{l ≤ i} p̃_{r_l}``
      (Westfall & Young 1993, Algorithm 2.8; Ge, Dudoit & Speed 2003; with a resampled null,
      Pollard & van der Laan 2004 and Dudoit & van der Laan 2008, Procedure 4.1);
    * Holm (``method="holm"`` of ``statsmodels.stats.multitest.multipletests``, reimplemented in
      ``_holm`` and tested equal) and Benjamini–Hochberg (``multipletests(method="fdr_bh")``);
      statsmodels' default, ``"hs"``, is Holm–Šidák, not Holm.

    Every exact p is at least ``1/P`` (``2/P`` when complements are folded in): the identity is
    one of the relabelings, also for units separated perfectly (t infinite). Units whose values
    never vary (sd = 0, e.g. an expert never selected in the zone) cannot separate anything under
    any relabeling; they are dropped from the family and listed, and ``family_size`` counts the
    rest. The suffix maximum is computed in blocks of 64 units, working element by element only
    inside blocks where the running maximum straddles the observed statistics, so step-down costs
    little more than single-step.

    Variance diagnostic (two-sample designs): ``variance_ratio`` and the Brown–Forsythe p per unit
    (:func:`stats.variance_check`). With ``null="exchangeable"``, flag ``not_exchangeable`` when more
    than 5 % of the family, or the target, has a Brown–Forsythe ``p ≤ 0.01``: the permutation
    max-T then controls the family-wise error of "identical distributions", and its error for
    "equal means" can be far above alpha (bench/RESULTS.md, "Which baseline null to preregister").

    Checked against ``nilearn.mass_univariate.permuted_ols`` (max-T p within Monte Carlo error),
    ``statsmodels`` for Holm/BH, a brute-force step-down, and (``equal_means``) a loop-over-resamples
    reference with the same draws, in ``tests/stats/test_stats_baseline.py`` and
    ``tests/stats/test_stats_equal_means.py``.
    """
    arr, mask, ids, finite, null, resampling, engine = _all_unit_baseline_iv(
        x, group, unit_ids, target, statistic, alternative, n_resamples, exact_cap, alpha, batch,
        dtype, nan_policy, null, resampling, backend)
    device = engine.partition(":")[2]  # "" for numpy
    n, f = arr.shape
    design = "paired" if mask is None else "two_sample"
    work = arr if finite.all() else np.where(finite[None, :], arr, 0.0)
    resampled = null == "equal_means"

    def prepare(data):
        if resampled:
            return _resample.prepare(data, mask, statistic, resampling, dtype)
        return _engine.prepare(data, mask, statistic, dtype)

    prep = prepare(work)
    in_family = prep.keep & finite
    # units dropped for NaN have been zero-filled: they must leave the family too.
    if not finite.all():
        prep = prepare(work[:, in_family])
    fam_idx = np.flatnonzero(in_family)
    dropped = tuple((str(ids[j]), "nan" if not finite[j] else "constant") for j in range(f)
                    if not in_family[j])
    m = fam_idx.size
    if m == 0:
        raise ValueError("`x` has no unit that varies; there is no family to test.")
    n1 = int(mask.sum()) if mask is not None else 0
    tpos = None
    if target is not None and in_family[list(ids).index(target)]:
        tpos = int(np.searchsorted(fam_idx, list(ids).index(target)))
    keep_cols = None if tpos is None else np.array([tpos])
    half = False
    if resampled:
        exact = False
        b = batch or _resample.default_batch(m)
        if device:
            res = _torch.resample_scan(prep, alternative, n_resamples, as_generator(rng),
                                       batch or _torch.default_batch(device, m, b),
                                       keep_cols=keep_cols, stepdown=True, device=device)
        else:
            res = _resample.scan(prep, alternative, n_resamples, as_generator(rng), b,
                                 keep_cols=keep_cols, stepdown=True)
    else:
        total = _engine.count_relabelings(design, n, n1)
        exact = _engine.check_exact(total, exact_cap, m, n_resamples)
        chunks, half = _engine.relabelings(design, n, n1, exact=exact, alternative=alternative,
                                           n_resamples=n_resamples,
                                           rng=None if exact else as_generator(rng),
                                           batch=batch or _torch.default_batch(
                                               device, m, _engine.default_batch(m)),
                                           dtype=prep.z.dtype)
        obs_row = mask.astype(float) if mask is not None else np.ones(n)
        scan = _engine.scan if not device else partial(_torch.scan, device=device)
        res = scan(prep, chunks, obs_row, alternative, exact=exact, half=half,
                   keep_cols=keep_cols, stepdown=True)
    P = res.n_resamples

    p_unc = _engine.pvalues_from_counts(res.count_unc, P, exact, res.min_count)
    p_ss = _engine.pvalues_from_counts(res.count_ss, P, exact, res.min_count)
    p_sd_raw = _engine.pvalues_from_counts(res.count_sd, P, exact, res.min_count)
    order = np.argsort(-res.observed_score, kind="stable")
    p_sd = np.empty(m)
    p_sd[order] = np.maximum.accumulate(p_sd_raw[order])
    p_sd = np.maximum(p_sd, p_unc)  # guards the tolerance band; a no-op in exact arithmetic
    p_holm = _holm(p_unc)
    q_bh = multipletests(p_unc, method="fdr_bh")[1]

    # rank on the score, except that statistics infinite in the tested direction all tie first
    directed = {"two-sided": np.abs, "greater": lambda v: v, "less": np.negative}[alternative](
        res.observed)
    score = np.where(directed == np.inf, np.inf, res.observed_score)
    # rank = how many units reach this unit's threshold (itself included): ties, within the tolerance
    # the counts use, share the largest rank, so a product's rounding cannot break a tie between
    # identical units (scipy.stats.rankdata(-score, method="max") on exact scores)
    thr_rank = np.where(np.isinf(score), score, res.thr)
    srt_score = np.sort(score)
    rank = (m - np.searchsorted(srt_score, thr_rank, side="left")).astype(np.int64)

    def full(v, fill=np.nan, dt=float):
        out = np.full(f, fill, dtype=dt)
        out[fam_idx] = v
        return out

    best = int(np.flatnonzero(score >= thr_rank[int(np.argmax(score))])[0])
    null_max = _score_to_stat(prep, res.null_max, alternative, resampled)
    srt = np.sort(null_max)[::-1]
    k = int(np.floor(alpha * P + 1e-9)) if exact else int(np.floor(alpha * (1 + P) - 1 + 1e-9))
    critical = float(srt[k]) if 0 <= k < srt.size else (float("inf") if k < 0 else float("-inf"))

    flags = []
    min_p = (1.0 / P) if exact else 1.0 / (1 + P)
    if half:
        min_p = 2.0 / P
    if min_p > alpha:
        flags.append(Flag("maxt_unreachable",
                          f"the smallest attainable permutation p is {min_p:.3g} > alpha={alpha}; "
                          "no unit can reach significance with this many relabelings"))
    if min_p * m > alpha:
        flags.append(Flag("holm_unreachable",
                          f"Holm over {m} units needs an uncorrected p ≤ {alpha / m:.3g}, but the "
                          f"smallest attainable p is {min_p:.3g}; raise n_resamples above "
                          f"{int(np.ceil(m / alpha))} (or use max-T)"))
    if dropped:
        flags.append(Flag("units_dropped",
                          f"{len(dropped)} unit(s) left out of the family (constant or NaN); "
                          f"family size {m}"))
    if target is not None and tpos is None:
        flags.append(Flag("target_not_in_family",
                          f"target {target} never varies (or has NaN) and cannot be ranked"))

    v_ratio = bf_p = None
    t_vr = t_bf = float("nan")
    if mask is not None:
        vr, bp = _variance_diagnostic(arr if m == f else arr[:, fam_idx], mask)
        v_ratio, bf_p = full(vr), full(bp)
        if tpos is not None:
            t_vr, t_bf = float(vr[tpos]), float(bp[tpos])
        if null == "exchangeable":
            what = ("the permutation max-T tests identical distributions, and its family-wise "
                    "error for equal means can be far above alpha; preregister "
                    "null='equal_means' to test equal means")
            flag = variance.unequal_flag(bp, vr, what)
            if flag is None and tpos is not None and t_bf <= variance.UNEQUAL_P:
                flag = Flag("not_exchangeable",
                            f"the target {target} has unequal group variances (ratio {t_vr:.3g}, "
                            f"Brown–Forsythe p = {t_bf:.3g}); {what}")
            if flag is not None:
                flags.append(flag)

    if tpos is not None:
        t_stat = float(res.observed[tpos])
        t_rank = int(rank[tpos])
        t_pct = 100.0 * float(np.sum(score < thr_rank[tpos])) / m
        t_p = float(p_sd[tpos])
        t_null = prep.to_stat(res.null_keep[:, 0]) if res.null_keep is not None else None
    else:
        t_stat, t_rank, t_pct, t_p, t_null = float("nan"), 0, float("nan"), float("nan"), None

    return BaselineResult(
        unit_ids=ids, in_family=in_family, statistic=full(res.observed),
        p_uncorrected=full(p_unc), p_maxt_single_step=full(p_ss), p_maxt_step_down=full(p_sd),
        p_holm=full(p_holm), q_bh=full(q_bh), rank=full(rank, 0, np.int64), family_size=m,
        dropped_units=dropped, best_unit=str(ids[fam_idx[best]]),
        best_statistic=float(res.observed[best]), target=target, target_statistic=t_stat,
        target_rank=t_rank, target_percentile=t_pct, target_p_maxt=t_p, critical_value=critical,
        alpha=float(alpha), null_max=null_max, target_null=t_null, n_resamples=P, exact=exact,
        statistic_name=statistic, alternative=alternative, flags=tuple(flags), null=null,
        resampling=resampling, variance_ratio=v_ratio, brown_forsythe_p=bf_p,
        target_variance_ratio=t_vr, target_brown_forsythe_p=t_bf, engine=engine,
    )


def _score_to_stat(prep, score: np.ndarray, alternative: str, resampled: bool) -> np.ndarray:
    """Max scores in statistic units (``|stat|`` two-sided, ``stat`` or ``-stat`` one-sided)."""
    if resampled:  # the score is the statistic itself (floored t); to_stat is odd
        return prep.to_stat(score)
    return _engine.score_to_stat(prep, score, alternative)
