"""Permutation tests: two-sample relabelings and paired sign flips, exact or Monte Carlo.

Both functions run on one unit (1-D input) or many units at once (N×F input, one column per unit);
they share the chunked matrix-product engine in :mod:`stats._engine` with the all-unit baseline.
Each result says which null it tests (``null``): ``"exchangeable"`` (two-sample relabelings: the
groups come from one distribution), ``"symmetric"`` (paired sign flips: each difference is
symmetric about 0), or ``"equal_means"`` (two-sample, variances may differ: residual resampling,
:mod:`stats._resample`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stats import _engine, _resample
from stats._common import as_generator, check_resampling

__all__ = ["PermutationResult", "permutation_test", "paired_permutation_test"]

#: units for which the full null distribution is kept (P×F floats).
_KEEP_NULL_UNITS = 16


@dataclass(frozen=True)
class PermutationResult:
    """Result of :func:`permutation_test` or :func:`paired_permutation_test`.

    Attributes
    ----------
    statistic : numpy.ndarray or float
        Observed statistic per unit (a float for 1-D input). NaN for a unit that never varies.
    pvalue : numpy.ndarray or float
        Permutation p-value per unit (uncorrected). 1.0 for a unit that never varies.
    null_distribution : numpy.ndarray or None
        The statistic under every relabeling (shape ``(P,)`` for 1-D input, ``(P, F)`` for up to 16
        units, else None). For exact two-sided balanced designs each enumerated relabeling appears
        with its complement.
    n_resamples : int
        ``P``, the number of relabelings the p-value is out of (all of them when exact).
    exact : bool
        True when every relabeling was enumerated.
    statistic_name, alternative, design : str
        What was computed: e.g. ``"welch_t"``, ``"two-sided"``, ``"two_sample"`` or ``"paired"``.
    unit_ids : numpy.ndarray
        One id per unit (``"u0"``, ``"u1"`` … when none given).
    null : str
        The null hypothesis tested: ``"exchangeable"``, ``"symmetric"`` or ``"equal_means"``.
    resampling : str
        How its null distribution was drawn: ``"permutation"``, ``"sign_flip"``, ``"wild"`` or
        ``"bootstrap"``.
    """

    statistic: np.ndarray | float
    pvalue: np.ndarray | float
    null_distribution: np.ndarray | None
    n_resamples: int
    exact: bool
    statistic_name: str
    alternative: str
    design: str
    unit_ids: np.ndarray
    null: str = "exchangeable"
    resampling: str = "permutation"

    def to_frame(self) -> pd.DataFrame:
        """One row per unit: ``unit, statistic, pvalue, n_resamples, exact, statistic_name,
        alternative, design, null, resampling``."""
        return pd.DataFrame({
            "unit": np.asarray(self.unit_ids, dtype=object),
            "statistic": np.atleast_1d(self.statistic).astype(float),
            "pvalue": np.atleast_1d(self.pvalue).astype(float),
            "n_resamples": self.n_resamples,
            "exact": self.exact,
            "statistic_name": self.statistic_name,
            "alternative": self.alternative,
            "design": self.design,
            "null": self.null,
            "resampling": self.resampling,
        })


def _common_iv(x, statistic, alternative, n_resamples, exact_cap, batch, dtype, allowed, unit_ids):
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("`x` must be a numeric array of shape (N,) or (N, F).") from exc
    one_d = arr.ndim == 1
    if one_d:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError("`x` must be a numeric array of shape (N,) or (N, F).")
    if not np.all(np.isfinite(arr)):
        raise ValueError("`x` contains NaN or infinite values; drop those items or units first.")
    if statistic not in allowed:
        raise ValueError(f"`statistic` must be one of {allowed}, got {statistic!r}.")
    check_resampling(alternative, n_resamples, exact_cap, batch, _engine.ALTERNATIVES)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError("`dtype` must be numpy.float32 or numpy.float64.")
    if unit_ids is None:
        ids = np.array([f"u{i}" for i in range(arr.shape[1])], dtype=object)
    else:
        ids = np.asarray(unit_ids, dtype=object)
        if ids.shape != (arr.shape[1],):
            raise ValueError(f"`unit_ids` must have one id per unit ({arr.shape[1]}).")
    return arr, one_d, ids


def _group_iv(group, n):
    g = np.asarray(group)
    if g.shape != (n,):
        raise ValueError(f"`group` must be a boolean mask or 0/1 labels of length {n} (one per item).")
    if g.dtype != bool:
        if not np.all(np.isin(g, (0, 1))):
            raise ValueError("`group` must be a boolean mask or 0/1 labels (1 = first group).")
        g = g.astype(bool)
    n1 = int(g.sum())
    if n1 < 2 or n - n1 < 2:
        raise ValueError(f"`group` must put at least 2 items in each group, got {n1} and {n - n1}.")
    return g


def null_iv(null, resampling, paired: bool) -> tuple[str, str]:
    """Resolve ``null`` and ``resampling`` for a design (``ValueError`` naming the parameter)."""
    if paired:
        if null not in (None, "symmetric"):
            raise ValueError(f"`null` must be None or 'symmetric' for a paired design, got {null!r}: "
                             "sign flips are valid whatever each pair's variance.")
        if resampling not in (None, "sign_flip"):
            raise ValueError(f"`resampling` must be None or 'sign_flip' for a paired design, got "
                             f"{resampling!r}.")
        return "symmetric", "sign_flip"
    null = "exchangeable" if null is None else null
    if null not in ("exchangeable", "equal_means"):
        raise ValueError(f"`null` must be None, 'exchangeable' or 'equal_means', got {null!r}.")
    if null == "exchangeable":
        if resampling not in (None, "permutation"):
            raise ValueError(f"`resampling` must be None or 'permutation' with "
                             f"null='exchangeable', got {resampling!r}.")
        return null, "permutation"
    resampling = "wild" if resampling is None else resampling
    if resampling not in _resample.RESAMPLINGS:
        raise ValueError(f"`resampling` must be None or one of {_resample.RESAMPLINGS} with "
                         f"null='equal_means', got {resampling!r}.")
    return null, resampling


def _run_equal_means(arr, mask, statistic, alternative, n_resamples, batch, rng, dtype, ids, one_d,
                     resampling):
    f = arr.shape[1]
    prep = _resample.prepare(arr, mask, statistic, resampling, dtype)
    nk = int(prep.keep.sum())
    stat = np.full(f, np.nan)
    pval = np.ones(f)
    null = None
    if nk:
        res = _resample.scan(prep, alternative, n_resamples, as_generator(rng),
                             batch or _resample.default_batch(nk),
                             keep_cols=np.arange(nk) if f <= _KEEP_NULL_UNITS else None,
                             stepdown=False)
        stat[prep.keep] = res.observed
        pval[prep.keep] = _engine.pvalues_from_counts(res.count_unc, res.n_resamples, False)
        if res.null_keep is not None:
            null = np.full((res.n_resamples, f), np.nan)
            null[:, prep.keep] = prep.to_stat(res.null_keep)
    args = (n_resamples, False, statistic, alternative, "two_sample")
    if one_d:
        return PermutationResult(float(stat[0]), float(pval[0]), None if null is None else null[:, 0],
                                 *args, ids, "equal_means", resampling)
    return PermutationResult(stat, pval, null, *args, ids, "equal_means", resampling)


def _run(arr, mask, statistic, alternative, n_resamples, exact_cap, batch, rng, dtype, ids, one_d,
         design):
    n, f = arr.shape
    prep = _engine.prepare(arr, mask, statistic, dtype)
    n1 = int(mask.sum()) if mask is not None else 0
    total = _engine.count_relabelings(design, n, n1)
    exact = _engine.check_exact(total, exact_cap, f, n_resamples)
    nk = int(prep.keep.sum())
    stat = np.full(f, np.nan)
    pval = np.ones(f)
    null = None
    if nk:
        batch = batch or _engine.default_batch(nk)
        chunks, half = _engine.relabelings(design, n, n1, exact=exact, alternative=alternative, n_resamples=n_resamples,
                                           rng=None if exact else as_generator(rng), batch=batch, dtype=prep.z.dtype)
        obs_row = mask.astype(float) if mask is not None else np.ones(n)
        keep_cols = np.arange(nk) if f <= _KEEP_NULL_UNITS else None
        res = _engine.scan(prep, chunks, obs_row, alternative, exact=exact, half=half,
                           keep_cols=keep_cols, stepdown=False)
        stat[prep.keep] = res.observed
        pval[prep.keep] = _engine.pvalues_from_counts(res.count_unc, res.n_resamples, exact,
                                                      res.min_count)
        p_used = res.n_resamples
        if res.null_keep is not None:
            null = np.full((p_used, f), np.nan)
            null[:, prep.keep] = prep.to_stat(res.null_keep)
    else:
        p_used = total if exact else n_resamples
    tested = ("exchangeable", "permutation") if design == "two_sample" else ("symmetric", "sign_flip")
    if one_d:
        return PermutationResult(float(stat[0]), float(pval[0]), None if null is None else null[:, 0],
                                 p_used, exact, statistic, alternative, design, ids, *tested)
    return PermutationResult(stat, pval, null, p_used, exact, statistic, alternative, design, ids,
                             *tested)


def permutation_test(x, group, *, statistic: str = "welch_t", alternative: str = "two-sided",
                     n_resamples: int = 9_999, exact_cap: int = 200_000, batch: int | None = None,
                     rng=None, dtype=np.float64, unit_ids=None, null: str | None = None,
                     resampling: str | None = None) -> PermutationResult:
    """Two-sample test of group A (``group`` True) against group B, per unit: a permutation test
    (``null="exchangeable"``, the default) or a residual resampling test of equal means.

    Parameters
    ----------
    x : array_like, shape (N,) or (N, F)
        One value per item (prompt), one column per unit. Must be finite.
    group : array_like of bool or 0/1, shape (N,)
        True / 1 for group A (e.g. FIRE), at least 2 items in each group.
    statistic : {"welch_t", "student_t", "mean_diff"}
        ``mean_diff`` is ``mean(A) - mean(B)``; the t statistics are the usual Welch / pooled ones.
    alternative : {"two-sided", "greater", "less"}
        Two-sided counts ``|T| >= |t|``; ``greater`` counts ``T >= t``; ``less`` counts ``T <= t``.
    n_resamples : int
        Monte Carlo relabelings when the exact count exceeds ``exact_cap``.
    exact_cap : int
        Enumerate all ``C(N, n_A)`` relabelings when there are at most this many
        (10 vs 10 gives 184,756: exact by default). More than ``stats._engine.EXACT_MAX``
        (10⁸) relabelings are never enumerated: a cap that would allow it raises ``ValueError``.
    batch : int, optional
        Relabelings per matrix product; bounds memory at about ``batch × F`` floats. Results do not
        depend on it.
    rng : None, int or numpy.random.Generator
        Seed for the Monte Carlo relabelings (drawn in fixed blocks: same seed, same answer, any batch).
    dtype : numpy.float64 or numpy.float32
        Working precision of the product. float32 is about twice as fast; its sums carry relative
        error around 1e-6, so the tie tolerance is ``64·eps`` (about 8e-6, relative); p-values can differ from
        float64 only for relabelings within that tolerance of the observed statistic.
    unit_ids : sequence of str, optional
        One id per column.
    null : {None, "exchangeable", "equal_means"}
        ``exchangeable`` (default): relabel prompts; valid when the groups have one distribution
        under the null. ``equal_means``: the null is equal means with possibly unequal variances;
        ``n_resamples`` residual resamples (never exact, ``exact_cap`` unused), see
        ``resampling``.
    resampling : {None, "wild", "bootstrap"}
        With ``null="equal_means"``: Rademacher wild bootstrap (default) or the within-group
        bootstrap of null-centred residuals (:mod:`stats._resample`).

    Returns
    -------
    PermutationResult

    Notes
    -----
    Exact: ``p = #{relabelings π : T(π) ≥ t_obs} / C(N, n_A)`` (the identity is one of them, so
    ``p ≥ 1/C(N, n_A)`` even when the groups are perfectly separated and ``t`` is infinite).
    Monte Carlo: ``p = (1 + b) / (1 + P)`` with ``b`` the random relabelings reaching ``t_obs``
    (Phipson & Smyth 2010). Ties are counted against (see :mod:`stats._engine` for the tolerance).
    With ``null="equal_means"`` the same ``(1 + b)/(1 + P)`` over ``P`` residual resamples.
    When ``n_A == n_B`` and the test is two-sided, only the relabelings that keep item 0 in group A
    are computed: each complement has the opposite statistic, so counts double exactly.

    Checked against ``scipy.stats.permutation_test(..., permutation_type="independent",
    n_resamples=np.inf)`` for exact p-values and ``scipy.stats.ttest_ind`` for the statistics
    (``tests/stats/test_stats_permutation.py``). scipy's two-sided p is ``2·min(p_less, p_greater)``;
    it equals this ``|T|`` p-value when the null is symmetric (balanced designs) and the tests
    compare unbalanced designs with scipy on ``|T|`` and ``alternative="greater"``.
    """
    arr, one_d, ids = _common_iv(x, statistic, alternative, n_resamples, exact_cap, batch, dtype,
                                 _engine.TWO_SAMPLE_STATISTICS, unit_ids)
    mask = _group_iv(group, arr.shape[0])
    null, resampling = null_iv(null, resampling, paired=False)
    if null == "equal_means":
        return _run_equal_means(arr, mask, statistic, alternative, n_resamples, batch, rng, dtype,
                                ids, one_d, resampling)
    return _run(arr, mask, statistic, alternative, n_resamples, exact_cap, batch, rng, dtype, ids,
                one_d, "two_sample")


def paired_permutation_test(x, y=None, *, statistic: str = "mean", alternative: str = "two-sided",
                            n_resamples: int = 9_999, exact_cap: int = 200_000,
                            batch: int | None = None, rng=None, dtype=np.float64,
                            unit_ids=None, null: str | None = None,
                            resampling: str | None = None) -> PermutationResult:
    """Sign-flip test for paired designs (e.g. the margin before and after ablation on one pair).

    Parameters
    ----------
    x : array_like, shape (N,) or (N, F)
        Differences ``d_i`` (``y=None``), or the first measurement of each pair.
    y : array_like, optional
        Second measurement; the test is on ``d = x - y``.
    statistic : {"mean", "paired_t"}
        Mean difference, or the one-sample t of the differences ``mean/(sd/sqrt(N))``.
    alternative, n_resamples, exact_cap, batch, rng, dtype, unit_ids
        As in :func:`permutation_test`; exact enumeration of ``2**N`` sign vectors when at most
        ``exact_cap`` (N ≤ 17 by default).
    null, resampling : None
        Accepted for symmetry with :func:`permutation_test`: the null is ``"symmetric"`` (each
        difference symmetric about 0, whatever its variance) and the resampling ``"sign_flip"``.

    Returns
    -------
    PermutationResult

    Notes
    -----
    Under the null each difference is symmetric about 0, so the ``2**N`` sign vectors are equally
    likely. Exact: ``p = #{ε : T(ε·d) ≥ t} / 2**N`` (at least ``2/2**N`` two-sided, ``1/2**N``
    one-sided); Monte Carlo ``(1 + b)/(1 + P)``.
    Checked against ``scipy.stats.permutation_test(..., permutation_type="samples",
    n_resamples=np.inf)`` (``tests/stats/test_stats_permutation.py``).
    """
    null_iv(null, resampling, paired=True)
    arr, one_d, ids = _common_iv(x, statistic, alternative, n_resamples, exact_cap, batch, dtype,
                                 _engine.PAIRED_STATISTICS, unit_ids)
    if y is not None:
        yarr, _, _ = _common_iv(y, statistic, alternative, n_resamples, exact_cap, batch, dtype,
                                _engine.PAIRED_STATISTICS, unit_ids)
        if yarr.shape != arr.shape:
            raise ValueError(f"`y` must have the shape of `x` {arr.shape}, got {yarr.shape}.")
        arr = arr - yarr
    if arr.shape[0] < 2:
        raise ValueError("`x` must hold at least 2 pairs.")
    return _run(arr, None, statistic, alternative, n_resamples, exact_cap, batch, rng, dtype, ids,
                one_d, "paired")
