"""Two-group comparisons of one unit: FIRE vs NOFIRE, or target register vs not.

Means and the mean-of-means ratio with a bootstrap interval, Cohen's d and Hedges' g with
noncentral-t (default) or BCa bootstrap intervals, AUC from the Mann–Whitney U, range overlap with
the items that cross, Welch and Student t.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from stats import variance
from stats._common import Flag, as_1d_float, as_generator, as_ids, check_confidence

__all__ = ["TwoGroupResult", "compare_groups", "cohen_d", "hedges_g", "d_interval"]

_FRAME_COLUMNS = (
    "n_a", "n_b", "mean_a", "mean_b", "sd_a", "sd_b", "mean_diff", "ratio", "ratio_low", "ratio_high",
    "cohen_d", "cohen_d_low", "cohen_d_high", "hedges_g", "hedges_g_low", "hedges_g_high",
    "d_ci_method", "auc", "mann_whitney_u", "mann_whitney_p", "welch_t", "welch_df", "welch_p",
    "student_t", "student_df", "student_p", "ranges_overlap", "n_crossing", "confidence",
    "variance_ratio", "brown_forsythe_w", "brown_forsythe_p",
)


@dataclass(frozen=True)
class TwoGroupResult:
    """Result of :func:`compare_groups` (group A against group B).

    Attributes
    ----------
    n_a, n_b : int
    mean_a, mean_b, sd_a, sd_b : float
        Group means ("mean of means" when each item is a per-prompt mean) and SDs (ddof=1).
    mean_diff : float
        ``mean_a - mean_b``.
    ratio, ratio_ci : float, (float, float)
        ``mean_a / mean_b`` and its stratified bootstrap interval (``ratio_ci_method``).
    cohen_d, cohen_d_ci, hedges_g, hedges_g_ci : float, (float, float)
        Pooled-SD d and small-sample corrected g with intervals (``d_ci_method``).
    auc, mann_whitney_u, mann_whitney_p : float
        ``U_A/(n_a·n_b)`` = P(A > B) + ½P(A = B), the U of group A and scipy's two-sided p.
    welch_t, welch_df, welch_p, student_t, student_df, student_p : float
    ranges_overlap : bool
        Whether the groups' ranges overlap (closed intervals).
    crossing_a, crossing_b : tuple of str
        Items of A at or below B's maximum, items of B at or above A's minimum, when A has the higher
        mean (the other way round otherwise): the prompts that cross.
    omitted : tuple of str
        Items left out for NaN (``nan_policy="omit"``).
    confidence, n_boot : float, int
    variance_ratio, brown_forsythe_w, brown_forsythe_p : float
        ``sd_a²/sd_b²`` and the Brown–Forsythe test of equal variances
        (``scipy.stats.levene(a, b, center="median")``): a permutation test of these groups tests
        identical distributions; with unequal variances use ``null="equal_means"``.
    flags : tuple of Flag
        ``ratio_ci_undefined``: the ratio interval is NaN or infinite because ``mean_b`` is 0, the
        values are constant, or bootstrap resamples of group B have mean 0 (the message counts
        them).
    """

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float
    sd_b: float
    mean_diff: float
    ratio: float
    ratio_ci: tuple
    ratio_ci_method: str
    cohen_d: float
    cohen_d_ci: tuple
    hedges_g: float
    hedges_g_ci: tuple
    d_ci_method: str
    auc: float
    mann_whitney_u: float
    mann_whitney_p: float
    welch_t: float
    welch_df: float
    welch_p: float
    student_t: float
    student_df: float
    student_p: float
    ranges_overlap: bool
    crossing_a: tuple
    crossing_b: tuple
    omitted: tuple
    confidence: float
    n_boot: int
    variance_ratio: float = float("nan")
    brown_forsythe_w: float = float("nan")
    brown_forsythe_p: float = float("nan")
    flags: tuple = ()

    def to_frame(self) -> pd.DataFrame:
        """One row with the fixed columns listed in ``stats.effects._FRAME_COLUMNS``."""
        row = {
            "n_a": self.n_a, "n_b": self.n_b, "mean_a": self.mean_a, "mean_b": self.mean_b,
            "sd_a": self.sd_a, "sd_b": self.sd_b, "mean_diff": self.mean_diff, "ratio": self.ratio,
            "ratio_low": self.ratio_ci[0], "ratio_high": self.ratio_ci[1],
            "cohen_d": self.cohen_d, "cohen_d_low": self.cohen_d_ci[0], "cohen_d_high": self.cohen_d_ci[1],
            "hedges_g": self.hedges_g, "hedges_g_low": self.hedges_g_ci[0],
            "hedges_g_high": self.hedges_g_ci[1], "d_ci_method": self.d_ci_method, "auc": self.auc,
            "mann_whitney_u": self.mann_whitney_u, "mann_whitney_p": self.mann_whitney_p,
            "welch_t": self.welch_t, "welch_df": self.welch_df, "welch_p": self.welch_p,
            "student_t": self.student_t, "student_df": self.student_df, "student_p": self.student_p,
            "ranges_overlap": self.ranges_overlap,
            "n_crossing": len(self.crossing_a) + len(self.crossing_b), "confidence": self.confidence,
            "variance_ratio": self.variance_ratio, "brown_forsythe_w": self.brown_forsythe_w,
            "brown_forsythe_p": self.brown_forsythe_p,
        }
        return pd.DataFrame([row], columns=list(_FRAME_COLUMNS))


def _var(x, axis=-1):
    """``np.var(x, ddof=1)``, exactly 0 for a group whose values are all equal (whose rounded mean
    would otherwise leave deviations of an ulp and a variance of ~1e-33)."""
    v = np.var(x, axis=axis, ddof=1)
    const = np.all(x == np.take(x, [0], axis=axis), axis=axis)
    return np.where(const, 0.0, v)


def _common_scale(a, b, axis=-1):
    """``a`` and ``b`` times one power of two (exact) putting their largest ``|value|`` in [0.5, 1),
    and that power's exponent: d, t and variance ratios are unchanged, and the squares of data near
    1e±154 and beyond neither overflow nor underflow."""
    top = np.maximum(np.max(np.abs(a), axis=axis, keepdims=True),
                     np.max(np.abs(b), axis=axis, keepdims=True))
    k = np.frexp(top)[1]
    return np.ldexp(a, -k), np.ldexp(b, -k), np.squeeze(k, axis=axis)


def _pooled_sd(a, b, axis=-1):
    na, nb = a.shape[axis], b.shape[axis]
    va, vb = _var(a, axis=axis), _var(b, axis=axis)
    return np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))


def _d(a, b, axis=-1):
    a, b, _ = _common_scale(a, b, axis=axis)
    diff = np.mean(a, axis=axis) - np.mean(b, axis=axis)
    sp = _pooled_sd(a, b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return diff / sp


def _j(n_a, n_b):
    """Hedges' small-sample factor, ``1 - 3/(4(n_a+n_b) - 9)`` (Hedges & Olkin 1985, eq. 5.10)."""
    return 1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)


def cohen_d(a, b) -> float:
    """Cohen's d with the pooled SD: ``(mean(a) - mean(b)) / sqrt(((n_a-1)s_a² + (n_b-1)s_b²)/(n_a+n_b-2))``.

    Checked against ``pingouin.compute_effsize(a, b, eftype="cohen")``.
    """
    a, b = _pair_iv(a, b)
    return float(_d(a, b))


def hedges_g(a, b) -> float:
    """Hedges' g: ``d · (1 - 3/(4(n_a+n_b) - 9))``.

    Checked against ``pingouin.compute_effsize(a, b, eftype="hedges")`` (the same approximation of
    the exact gamma-function factor; they differ by < 0.3 % at n = 10 + 10).
    """
    a, b = _pair_iv(a, b)
    return float(_d(a, b) * _j(a.size, b.size))


def _pair_iv(a, b):
    a = as_1d_float(a, "a")
    b = as_1d_float(b, "b")
    if a.size < 2 or b.size < 2:
        raise ValueError("`a` and `b` must each hold at least 2 values.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("`a` and `b` must be finite; use compare_groups(nan_policy='omit') for NaN.")
    return a, b


def _nct_bounds(t, df, confidence):
    """Noncentrality parameters bracketing ``t``: cdf(t; ncp_lo) = 1-α/2, cdf(t; ncp_hi) = α/2.

    Vectorised bisection; ``nct.cdf`` is decreasing in the noncentrality.
    """
    t = np.atleast_1d(np.asarray(t, dtype=float))
    alpha = 1 - confidence
    # far out (|t| >= 1e4) nct.cdf loses the root: use T = (Z + δ)/sqrt(χ²_df/df) ≈ δ/sqrt(χ²_df/df),
    # whose interval t·sqrt(χ²_df quantile/df) is within O(1/|t|) (< 1e-5 relative) of the exact one
    big = np.abs(t) >= 1e4
    if big.all():
        c = np.sqrt(sps.chi2.ppf([alpha / 2, 1 - alpha / 2], df) / df)
        return np.minimum(t * c[0], t * c[1]), np.maximum(t * c[0], t * c[1])
    if big.any():
        lo, hi = np.empty_like(t), np.empty_like(t)
        lo[big], hi[big] = _nct_bounds(t[big], df, confidence)
        lo[~big], hi[~big] = _nct_bounds(t[~big], df, confidence)
        return lo, hi
    out = []
    for target in (1 - alpha / 2, alpha / 2):
        lo = t - 5.0 - np.abs(t)
        hi = t + 5.0 + np.abs(t)
        for _ in range(60):  # widen until the bracket holds the root
            bad_lo = sps.nct.cdf(t, df, lo) < target
            bad_hi = sps.nct.cdf(t, df, hi) > target
            if not (bad_lo.any() or bad_hi.any()):
                break
            lo = np.where(bad_lo, lo - 2 * (hi - lo), lo)
            hi = np.where(bad_hi, hi + 2 * (hi - lo), hi)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            above = sps.nct.cdf(t, df, mid) > target
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        out.append(0.5 * (lo + hi))
    return out[0], out[1]


def d_interval(d, n_a: int, n_b: int, confidence: float = 0.95):
    """Noncentral-t interval for Cohen's d (vectorised over ``d``).

    Notes
    -----
    ``t = d·sqrt(n_a·n_b/(n_a+n_b))`` follows a noncentral t with ``n_a+n_b-2`` df and noncentrality
    ``δ·sqrt(n_a·n_b/(n_a+n_b))``; inverting its cdf in the noncentrality gives an exact interval
    under normal errors with equal variances (Steiger & Fouladi 1997; Cumming & Finch 2001; the method
    of R's ``MBESS::ci.smd``). Checked by inversion and by a coverage simulation in the tests.
    """
    confidence = check_confidence(confidence)
    for name, n in (("n_a", n_a), ("n_b", n_b)):
        if not (isinstance(n, (int, np.integer)) and n >= 2):
            raise ValueError(f"`{name}` must be an integer group size of at least 2, got {n!r}.")
    d = np.asarray(d, dtype=float)
    k = np.sqrt(n_a * n_b / (n_a + n_b))
    finite = np.isfinite(d)
    lo = np.full(d.shape, np.nan)
    hi = np.full(d.shape, np.nan)
    if finite.any():
        l, h = _nct_bounds(d[finite] * k, n_a + n_b - 2, confidence)
        lo[finite] = l / k
        hi[finite] = h / k
    if d.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def _compare_groups_iv(a, b, ids_a, ids_b, confidence, ci_method, boot_method, n_boot, nan_policy):
    a = as_1d_float(a, "a")
    b = as_1d_float(b, "b")
    ids_a = as_ids(ids_a, a.size, "ids_a", "a")
    ids_b = as_ids(ids_b, b.size, "ids_b", "b")
    confidence = check_confidence(confidence)
    if ci_method not in ("noncentral_t", "bca"):
        raise ValueError("`ci_method` must be 'noncentral_t' or 'bca'.")
    if boot_method not in ("percentile", "bca"):
        raise ValueError("`boot_method` must be 'percentile' or 'bca'.")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 100):
        raise ValueError("`n_boot` must be an integer of at least 100.")
    if nan_policy not in ("raise", "omit"):
        raise ValueError("`nan_policy` must be 'raise' or 'omit'.")
    omitted = ()
    if nan_policy == "raise" and (np.isnan(a).any() or np.isnan(b).any()):
        raise ValueError("`a` or `b` contains NaN (e.g. Q where the unit was never selected); "
                         "pass nan_policy='omit' to leave those items out.")
    if nan_policy == "omit":
        ka, kb = ~np.isnan(a), ~np.isnan(b)
        omitted = tuple(str(i) for i in ids_a[~ka]) + tuple(str(i) for i in ids_b[~kb])
        a, ids_a, b, ids_b = a[ka], ids_a[ka], b[kb], ids_b[kb]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("`a` and `b` must not contain infinite values.")
    if a.size < 2 or b.size < 2:
        raise ValueError(f"`a` and `b` must each hold at least 2 values, got {a.size} and {b.size}.")
    return a, b, ids_a, ids_b, omitted, confidence


def _boot_ci(a, b, fn, n_boot, confidence, method, rng, with_distribution=False):
    """Stratified bootstrap (resample within each group) via ``scipy.stats.bootstrap``."""
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # a degenerate bootstrap distribution: the NaN/inf interval is flagged by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.bootstrap((a, b), fn, n_resamples=n_boot, confidence_level=confidence,
                            method="BCa" if method == "bca" else "percentile", rng=rng,
                            vectorized=True)
    ci = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (ci, res.bootstrap_distribution) if with_distribution else ci


def compare_groups(a, b, *, ids_a=None, ids_b=None, confidence: float = 0.95,
                   ci_method: str = "noncentral_t", boot_method: str = "percentile",
                   n_boot: int = 9_999, rng=None, nan_policy: str = "raise") -> TwoGroupResult:
    """Compare one unit's per-item values between group A and group B.

    Parameters
    ----------
    a, b : array_like, 1-D
        Values of group A (e.g. FIRE prompts) and group B (NOFIRE).
    ids_a, ids_b : sequence of str, optional
        Item (prompt) ids, used to name the items that cross.
    confidence : float
        Level of every interval.
    ci_method : {"noncentral_t", "bca"}
        Interval for d and g: inversion of the noncentral t (exact under normality, default) or a
        stratified BCa bootstrap (``scipy.stats.bootstrap(method="BCa")``).
    boot_method : {"percentile", "bca"}
        Bootstrap interval for the ratio of means.
    n_boot : int
        Bootstrap resamples.
    rng : None, int or numpy.random.Generator
    nan_policy : {"raise", "omit"}
        ``omit`` drops NaN items (Q of a prompt where the unit was never selected) and lists them.

    Returns
    -------
    TwoGroupResult

    Notes
    -----
    ``ratio = mean(a)/mean(b)`` (the journal's "mean-of-means ratio" when each item is a per-prompt
    mean). ``d = (mean(a) - mean(b))/s_p`` with ``s_p² = ((n_a-1)s_a² + (n_b-1)s_b²)/(n_a+n_b-2)``;
    ``g = d·(1 - 3/(4(n_a+n_b) - 9))``; a g interval is the d interval times the same factor.
    Checked against pingouin (``compute_effsize``), ``scipy.stats.ttest_ind`` (both variants) and
    ``scipy.stats.mannwhitneyu`` in ``tests/stats/test_stats_effects.py``; the Brown–Forsythe
    test against ``scipy.stats.levene(a, b, center="median")``.
    """
    a, b, ids_a, ids_b, omitted, confidence = _compare_groups_iv(
        a, b, ids_a, ids_b, confidence, ci_method, boot_method, n_boot, nan_policy)
    sa, sb, k = _common_scale(a, b)  # exact; for every scale-free quantity (d, t, W, variance ratio)
    gen = as_generator(rng)
    na, nb = a.size, b.size
    ma, mb = float(a.mean()), float(b.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = ma / mb if mb != 0 else (np.inf * np.sign(ma) if ma != 0 else np.nan)
    d = float(_d(a, b))
    j = _j(na, nb)
    constant = np.ptp(a) == 0 and np.ptp(b) == 0

    def ratio_fn(x, y, axis=-1):
        return np.mean(x, axis=axis) / np.mean(y, axis=axis)

    flags = []
    if constant or mb == 0:
        ratio_ci = (np.nan, np.nan)
        why = "the values are constant" if constant else "mean_b is 0"
        flags.append(Flag("ratio_ci_undefined",
                          f"no interval for the ratio mean_a/mean_b: {why} (ratio {ratio:.4g})"))
    else:
        ratio_ci, dist = _boot_ci(a, b, ratio_fn, n_boot, confidence, boot_method, gen, True)
        bad = int(np.sum(~np.isfinite(dist)))
        if bad or not np.all(np.isfinite(ratio_ci)):
            flags.append(Flag("ratio_ci_undefined",
                              f"{bad} of {n_boot} bootstrap resamples of group B have mean 0, so "
                              f"their ratio is infinite or undefined; the interval is "
                              f"({ratio_ci[0]:.4g}, {ratio_ci[1]:.4g})"))
        se_b = float(np.ldexp(np.sqrt(_var(sb) / nb), int(k)))
        if not flags and abs(mb) <= sps.t.ppf(0.5 + confidence / 2, nb - 1) * se_b:
            # Fieller (1954): with mean_b within its own interval of 0 the ratio's interval is unbounded
            flags.append(Flag("ratio_ci_undefined",
                              f"mean_b {mb:.4g} is within its {confidence:.0%} interval of 0 (standard "
                              f"error {se_b:.4g}): the ratio's interval is unbounded (Fieller) and the "
                              f"bootstrap interval ({ratio_ci[0]:.4g}, {ratio_ci[1]:.4g}) is not "
                              "informative"))
    if not np.isfinite(d):
        d_ci = (np.nan, np.nan)
    elif ci_method == "noncentral_t":
        d_ci = d_interval(d, na, nb, confidence)
    else:
        d_ci = _boot_ci(a, b, _d, n_boot, confidence, "bca", gen)
    g_ci = (d_ci[0] * j, d_ci[1] * j)

    mw = sps.mannwhitneyu(a, b, alternative="two-sided")
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # constant groups: scipy warns about precision loss; the NaN/inf t it returns is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = sps.ttest_ind(sa, sb, equal_var=False)
        student = sps.ttest_ind(sa, sb, equal_var=True)

    va, vb = float(_var(sa)), float(_var(sb))
    with np.errstate(divide="ignore", invalid="ignore"):
        v_ratio = float(np.float64(va) / vb)
    bf_w, bf_p = variance.brown_forsythe(np.r_[sa, sb][:, None], np.r_[np.ones(na, bool),
                                                                      np.zeros(nb, bool)])
    a_high = ma >= mb
    hi, lo = (a, b) if a_high else (b, a)
    overlap = bool(hi.min() <= lo.max())
    if a_high:
        cross_a = tuple(str(i) for i in ids_a[a <= b.max()])
        cross_b = tuple(str(i) for i in ids_b[b >= a.min()])
    else:
        cross_a = tuple(str(i) for i in ids_a[a >= b.min()])
        cross_b = tuple(str(i) for i in ids_b[b <= a.max()])

    return TwoGroupResult(
        n_a=na, n_b=nb, mean_a=ma, mean_b=mb, sd_a=float(np.ldexp(np.sqrt(va), k)),
        sd_b=float(np.ldexp(np.sqrt(vb), k)),
        mean_diff=ma - mb, ratio=float(ratio), ratio_ci=ratio_ci,
        ratio_ci_method=f"bootstrap_{boot_method}_stratified", cohen_d=d, cohen_d_ci=tuple(d_ci),
        hedges_g=d * j, hedges_g_ci=g_ci,
        d_ci_method="noncentral_t" if ci_method == "noncentral_t" else "bootstrap_bca_stratified",
        auc=float(mw.statistic) / (na * nb), mann_whitney_u=float(mw.statistic),
        mann_whitney_p=float(mw.pvalue), welch_t=float(welch.statistic), welch_df=float(welch.df),
        welch_p=float(welch.pvalue), student_t=float(student.statistic),
        student_df=float(student.df), student_p=float(student.pvalue), ranges_overlap=overlap,
        crossing_a=cross_a, crossing_b=cross_b, omitted=omitted, confidence=confidence,
        n_boot=int(n_boot), variance_ratio=v_ratio, brown_forsythe_w=float(bf_w[0]),
        brown_forsythe_p=float(bf_p[0]), flags=tuple(flags),
    )
