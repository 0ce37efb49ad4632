"""Hostile and degenerate data through the rest of :mod:`stats` (effects, W/S/Q, register,
reproduction, ablation, rank, the paired test, variance), against references outside the package.

References: pingouin (``compute_effsize``), scipy (``ttest_ind``, ``ttest_1samp``, ``levene``,
``permutation_test``, ``rankdata``, ``chi2``), statsmodels OLS, and values worked out by hand in
the test. Scale invariance is checked with powers of ten far from 1 (1e±200): d, t, variance
ratios, ranks and p-values must not change when every value is multiplied by the same positive
number, as they do not in exact arithmetic.

Several tests here fail on the code as it stands; each names the defect it pins down (see the
hostile-review report). They are the regression tests for the fixes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import scipy.stats as sps
import statsmodels.formula.api as smf

from stats import paired_permutation_test
from stats.ablation import ablation_summary, slot_rankings
from stats.effects import cohen_d, compare_groups, d_interval, hedges_g
from stats.rank import rank_interval
from stats.register import register_analysis
from stats.reproduction import compare_runs
from stats.variance import variance_check
from stats.wsq import wsq_decomposition

SCALES = (1e200, 1e-200, 1e-160)


def _groups(seed=0, na=8, nb=9, shift=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(shift, 1, na), rng.normal(0, 1, nb)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


# --- effects: cohen_d, hedges_g, d_interval, compare_groups -------------------------------------

def test_d_and_g_match_pingouin_symmetric_and_integer_input():
    a, b = _groups()
    assert cohen_d(a, b) == pytest.approx(pg.compute_effsize(a, b, eftype="cohen"), rel=1e-12)
    assert hedges_g(a, b) == pytest.approx(pg.compute_effsize(a, b, eftype="hedges"), rel=3e-3)
    assert cohen_d(b, a) == pytest.approx(-cohen_d(a, b), rel=1e-12)
    assert cohen_d([1, 2, 3], [4, 5, 7]) == pytest.approx(cohen_d([1.0, 2, 3], [4.0, 5, 7]), rel=1e-15)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    assert cohen_d(a32, b32) == pytest.approx(cohen_d(a32.astype(float), b32.astype(float)), rel=1e-15)
    for bad in ([1.0], [], [1.0, np.nan, 2.0], [1.0, np.inf, 2.0]):
        with pytest.raises(ValueError):
            cohen_d(bad, b)


@pytest.mark.parametrize("scale", SCALES)
def test_d_and_g_are_scale_invariant(scale):
    """FAILS today: squares of 1e200 overflow (d = 0), of 1e-200 underflow (d = inf), of 1e-160 are
    subnormal (d off in the 4th digit). Fix: scale both groups by one power of two first."""
    a, b = _groups()
    assert _quiet(cohen_d, a * scale, b * scale) == pytest.approx(cohen_d(a, b), rel=1e-12)
    assert _quiet(hedges_g, a * scale, b * scale) == pytest.approx(hedges_g(a, b), rel=1e-12)


@pytest.mark.parametrize("scale", (1e200, 1e-200))
def test_compare_groups_is_scale_invariant(scale):
    """FAILS today: d, Welch/Student t, the variance ratio and the Brown–Forsythe W of data near
    1e±200 come out 0, inf or NaN; scipy's ttest_ind on the same data shares the overflow, so the
    reference is the unscaled run."""
    a, b = _groups()
    ref = compare_groups(a, b, n_boot=200, rng=0)
    got = _quiet(compare_groups, a * scale, b * scale, n_boot=200, rng=0)
    for name in ("cohen_d", "hedges_g", "welch_t", "student_t", "welch_p", "student_p",
                 "variance_ratio", "brown_forsythe_w", "brown_forsythe_p", "ratio", "auc"):
        assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-9), name
    assert got.mean_diff == pytest.approx(ref.mean_diff * scale, rel=1e-12)


def test_compare_groups_references_and_properties():
    a, b = _groups(seed=3, na=7, nb=11)
    a, b = a + 2, b + 2  # positive means, as W and S are
    r = compare_groups(a, b, n_boot=500, rng=1)
    w = sps.ttest_ind(a, b, equal_var=False)
    s = sps.ttest_ind(a, b, equal_var=True)
    mw = sps.mannwhitneyu(a, b, alternative="two-sided")
    lev = sps.levene(a, b, center="median")
    assert r.welch_t == pytest.approx(w.statistic, rel=1e-12) and r.welch_p == pytest.approx(w.pvalue, rel=1e-9)
    assert r.student_t == pytest.approx(s.statistic, rel=1e-12)
    assert r.auc == pytest.approx(mw.statistic / (a.size * b.size), rel=1e-12)
    assert r.brown_forsythe_p == pytest.approx(lev.pvalue, rel=1e-9)
    for p in (r.welch_p, r.student_p, r.mann_whitney_p, r.brown_forsythe_p):
        assert 0 < p <= 1
    assert r.cohen_d_ci[0] <= r.cohen_d <= r.cohen_d_ci[1]
    assert r.hedges_g_ci[0] <= r.hedges_g <= r.hedges_g_ci[1]
    assert r.ratio_ci[0] <= r.ratio <= r.ratio_ci[1]
    swapped = compare_groups(b, a, n_boot=500, rng=1)
    assert swapped.cohen_d == pytest.approx(-r.cohen_d, rel=1e-12)
    assert swapped.auc == pytest.approx(1 - r.auc, rel=1e-12)
    assert swapped.ratio == pytest.approx(1 / r.ratio, rel=1e-12)
    # all values tie: AUC 1/2 exactly (P(A > B) + ½P(A = B))
    t = compare_groups([2.0, 2.0, 3.0], [2.0, 3.0, 2.0], n_boot=200, rng=0)
    assert t.auc == pytest.approx(0.5) and t.cohen_d == pytest.approx(0.0, abs=1e-12)


def test_ratio_interval_with_a_denominator_near_zero_contains_the_ratio_or_is_flagged():
    """FAILS today: mean_b = -0.0048 with sd 1, so the bootstrap means of B change sign and the
    resampled ratio runs to ±inf on both sides; the percentile interval (-24.1, ...) does not
    contain the ratio -108.4 and no flag says the interval means nothing."""
    a, b = _groups(seed=3, na=7, nb=11)
    r = compare_groups(a, b, n_boot=500, rng=1)
    ok = r.ratio_ci[0] <= r.ratio <= r.ratio_ci[1]
    assert ok or "ratio_ci_undefined" in [f.code for f in r.flags]


@pytest.mark.parametrize("lo,hi", [(0.1, 0.2), (0.7, 0.1), (1.0, 2.0)])
def test_constant_groups_give_infinite_d_whatever_the_rounding(lo, hi):
    """FAILS today for 0.1/0.2 and 0.7/0.1: the rounded mean of [0.1]*3 is not 0.1, so a constant
    group gets a nonzero sd and d ~ 1e15 instead of ±inf (1.0/2.0, exact in binary, gives -inf).
    The finite d then gets a noncentral-t "interval" that does not contain it. Both groups
    constant: the pooled sd is 0, d = ±inf, no d interval, variance ratio 0/0 = NaN."""
    r = _quiet(compare_groups, [lo] * 3, [hi] * 3, n_boot=200, rng=0)
    assert r.cohen_d == np.sign(lo - hi) * np.inf
    assert np.isnan(r.cohen_d_ci[0]) and np.isnan(r.cohen_d_ci[1])
    assert np.isnan(r.variance_ratio)
    assert r.sd_a == 0 and r.sd_b == 0


def _asymptotic_interval(d, n_a, n_b, confidence=0.95):
    """For large noncentrality T = (Z + δ)/sqrt(χ²_ν/ν) ≈ δ/sqrt(χ²_ν/ν), so the interval for δ is
    t·sqrt(χ²_ν quantiles/ν) (relative error O(1/δ)); in d units the sqrt(n_a n_b/(n_a+n_b))
    cancels."""
    nu = n_a + n_b - 2
    a = 1 - confidence
    return d * np.sqrt(sps.chi2.ppf([a / 2, 1 - a / 2], nu) / nu)


@pytest.mark.parametrize("d,n", [(1e3, 3), (1e5, 3), (1e5, 20), (-1e5, 5)])
def test_d_interval_for_large_d_contains_d_and_matches_the_chi_square_limit(d, n):
    """FAILS today from |t| ≈ 1e5: the bisection on scipy's nct.cdf returns a degenerate interval
    (lo == hi) far from d, e.g. d_interval(1e8, 3, 3) = (8.3e4, 8.3e4), after ~1.3 s of widening."""
    lo, hi = d_interval(d, n, n)
    ref = np.sort(_asymptotic_interval(d, n, n))
    assert lo <= d <= hi
    np.testing.assert_allclose([lo, hi], ref, rtol=2e-3)


@pytest.mark.parametrize("n_a,n_b", [(1, 1), (2, 1), (0, 5), (-3, 5), (2.5, 3)])
def test_d_interval_refuses_impossible_group_sizes(n_a, n_b):
    """FAILS today: d_interval(1.0, 1, 1) has 0 df and returns (-7.07, -7.07), an "interval" that
    excludes d; (0, 5) gives (-inf, inf) and (-3, 5) NaN, all without a word. cohen_d needs 2 per
    group; so does its interval."""
    with pytest.raises(ValueError, match="n_"):
        _quiet(d_interval, 1.0, n_a, n_b)


# --- W/S/Q -----------------------------------------------------------------------------------------

def test_wsq_identical_groups_have_no_carrier():
    """FAILS today: the two groups hold the same per-prompt values in another order; the summation
    order makes ΔW = 5.6e-17 instead of 0, and the S share of that rounding is 1: carrier "S"."""
    s = np.r_[0.1, 0.2, 0.3, 0.3, 0.2, 0.1]
    g = np.r_[True, True, True, False, False, False]
    w = wsq_decomposition(s, np.ones(6), g, n_boot=200, rng=0)
    assert w.delta_w == 0.0
    assert w.carrier == "none" and np.isnan(w.s_share)


def test_wsq_identities_never_selected_and_symmetry():
    g = np.r_[[True] * 4, [False] * 4]
    s = np.r_[0.6, 0.4, 0.6, 0.4, 0.3, 0.2, 0.3, 0.1]
    q = np.r_[0.5, 0.7, 0.4, 0.6, 0.2, 0.3, 0.25, 0.2]
    w = wsq_decomposition(s, q, g, n_boot=300, rng=0)
    wa, wb = np.mean(s[:4] * q[:4]), np.mean(s[4:] * q[4:])
    assert w.w_a == pytest.approx(wa) and w.w_b == pytest.approx(wb)
    assert w.s_a * w.q_a == pytest.approx(w.w_a, rel=1e-12)
    assert w.s_part + w.q_part == pytest.approx(w.delta_w, rel=1e-12)
    assert w.log_ratio_s + w.log_ratio_q == pytest.approx(w.log_ratio_w, rel=1e-12)
    assert w.s_share_ci[0] <= w.s_share <= w.s_share_ci[1]
    sw = wsq_decomposition(s, q, ~g, n_boot=300, rng=0)
    assert sw.delta_w == pytest.approx(-w.delta_w, rel=1e-12)
    assert sw.s_share == pytest.approx(w.s_share, rel=1e-12)
    assert sw.log_ratio_w == pytest.approx(-w.log_ratio_w, rel=1e-12)
    # group B never selects the unit: Q_B undefined, the whole ΔW is selection
    s0 = np.r_[0.5, 0.4, 0.6, 0.5, 0, 0, 0, 0]
    q0 = np.r_[0.3, 0.2, 0.25, 0.3, np.nan, np.nan, np.nan, np.nan]
    w0 = wsq_decomposition(s0, q0, g, n_boot=300, rng=0)
    assert w0.s_share == 1.0 and w0.s_share_ci == (1.0, 1.0) and w0.carrier == "S"
    assert np.isnan(w0.q_b) and w0.n_q_missing_b == 4
    assert [f.code for f in w0.flags] == ["q_undefined"]
    # neither group selects it; zero weight in both: no difference, no carrier
    for s_, q_ in ((np.zeros(8), np.full(8, np.nan)), (np.r_[[0.5] * 4, [0.2] * 4], np.zeros(8))):
        wn = wsq_decomposition(s_, q_, g, n_boot=200, rng=0)
        assert wn.delta_w == 0 and wn.carrier == "none" and np.isnan(wn.s_share)


def test_wsq_refuses_negative_q():
    """FAILS today: Q is a mean routing weight (a softmax share, >= 0); a negative Q is accepted
    and gives ΔW < 0 with carrier "S". Proposed: refuse it like NaN Q where s > 0."""
    g = np.r_[[True] * 4, [False] * 4]
    with pytest.raises(ValueError, match="`q`"):
        wsq_decomposition(np.r_[[0.5] * 4, [0.2] * 4], np.full(8, -0.3), g, n_boot=200, rng=0)


# --- rank ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", (1e200, 1e-200))
def test_rank_interval_is_scale_invariant(scale):
    """FAILS today: at 1e200 the variances overflow (every t is 0), at 1e-200 they underflow (every t
    undefined), and the target ranks last instead of first."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (10, 6))
    g = np.r_[[True] * 5, [False] * 5]
    x[g, 0] += 1.5
    ref = rank_interval(x, g, target=0, n_boot=200, rng=0)
    got = _quiet(rank_interval, x * scale, g, target=0, n_boot=200, rng=0)
    assert got.rank_ci == ref.rank_ci and got.p_first == ref.p_first


def test_rank_interval_constant_unit_does_not_outrank_the_target():
    """FAILS today: a unit constant within each group (0.7 vs 0.1) has an undefined t (se = 0),
    which "never beats the target"; the rounded mean of [0.7]*3 gives it se ~ 1e-16 and t ~ 7.6e15,
    so the target is ranked 2nd in every resample."""
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (6, 3))
    g = np.r_[[True] * 3, [False] * 3]
    x[g, 0] += 3
    x[:, 1] = np.where(g, 0.7, 0.1)
    x[:, 2] = -np.abs(x[:, 2])  # any third unit
    ref = x.copy()
    ref[:, 1] = np.where(g, 1.0, 0.0)  # the same unit in values that are exact in binary
    want = rank_interval(ref, g, target=0, n_boot=100, rng=0)
    got = rank_interval(x, g, target=0, n_boot=100, rng=0)
    assert got.rank_ci == want.rank_ci and got.p_first == want.p_first


@pytest.mark.parametrize("bad", (np.nan, np.inf))
def test_rank_interval_refuses_non_finite_values(bad):
    """FAILS today: a NaN or inf in the target's column is accepted and the rank interval (1, 3) is
    computed from resamples that happen to miss it; every other entry point refuses it."""
    x = np.random.default_rng(0).normal(0, 1, (8, 3))
    g = np.r_[[True] * 4, [False] * 4]
    x[0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        _quiet(rank_interval, x, g, target=0, n_boot=50, rng=0)


# --- variance ----------------------------------------------------------------------------------------

def test_variance_check_constant_groups():
    """FAILS today: both groups constant -> var 0 and ratio NaN (docstring); the rounded means of
    [0.1]*3 and [0.7]*3 give variances ~1e-33 and a ratio of 0.015625, and a unit at 0.1 everywhere
    a ratio of 1."""
    g = np.r_[[True] * 3, [False] * 3]
    x = np.c_[np.where(g, 0.1, 0.7), np.full(6, 0.1), np.where(g, 1.0, 2.0)]
    v = variance_check(x, g)
    np.testing.assert_array_equal(v.var_a, 0.0)
    np.testing.assert_array_equal(v.var_b, 0.0)
    assert np.isnan(v.variance_ratio).all()


def test_variance_check_matches_levene_and_is_scale_invariant():
    rng = np.random.default_rng(5)
    x = rng.normal(0, [1, 3], (12, 2))
    g = np.r_[[True] * 5, [False] * 7]
    v = variance_check(x, g)
    for j in range(2):
        lev = sps.levene(x[g, j], x[~g, j], center="median")
        assert v.brown_forsythe_w[j] == pytest.approx(lev.statistic, rel=1e-10)
        assert v.brown_forsythe_p[j] == pytest.approx(lev.pvalue, rel=1e-10)
        assert v.variance_ratio[j] == pytest.approx(np.var(x[g, j], ddof=1) / np.var(x[~g, j], ddof=1))
    for scale in (1e300, 1e-300):
        s = _quiet(variance_check, x * scale, g)
        np.testing.assert_allclose(s.variance_ratio, v.variance_ratio, rtol=1e-12)
        np.testing.assert_allclose(s.brown_forsythe_p, v.brown_forsythe_p, rtol=1e-10)
    one = variance_check(x[:, 1], g.astype(int))  # 1-D input, 0/1 labels
    assert one.brown_forsythe_p[0] == pytest.approx(v.brown_forsythe_p[1], rel=1e-12)


# --- ablation ----------------------------------------------------------------------------------------

def test_slot_rankings_identical_units_tie():
    """FAILS today: two units with the same drops in another order get means 0.20000000000000004 and
    0.19999999999999998 and ranks 1 and 2; ties must share the largest rank (rankdata "max")."""
    h = np.array([[0.1, 0.3], [0.2, 0.2], [0.3, 0.1]])
    r = slot_rankings(h, np.zeros((2, 2)))
    assert r["rank_headline"].tolist() == [2, 2]
    assert r["rank_adjusted"].tolist() == [2, 2]


def test_ablation_summary_against_scipy():
    b = np.array([2.0, 3, 4, 5, 3.5])
    a = np.array([1.0, 1, 2, 2, 3.4])
    r = ablation_summary(b, a, n_boot=300, n_resamples=99, rng=0)
    ci = sps.ttest_1samp(b - a, 0).confidence_interval()
    np.testing.assert_allclose(r.mean_drop_ci_t, (ci.low, ci.high), rtol=1e-12)
    ref = sps.permutation_test(((b - a),), lambda z, axis: np.mean(z, axis=axis),
                               permutation_type="samples", n_resamples=np.inf, alternative="greater")
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12) and r.pvalue_exact
    assert r.relative_drop == pytest.approx((b - a).mean() / b.mean(), rel=1e-12)
    assert r.relative_drop_ci[0] <= r.relative_drop <= r.relative_drop_ci[1]
    assert r.mean_drop_ci_boot[0] <= r.mean_drop <= r.mean_drop_ci_boot[1]


def test_ablation_t_interval_scales_with_the_data():
    """FAILS today: at 1e300 the sd overflows and the t interval is (-inf, inf)."""
    b = np.array([2.0, 3, 4, 5])
    a = np.array([1.0, 1, 2, 2])
    ref = ablation_summary(b, a, n_boot=200, rng=0)
    got = _quiet(ablation_summary, b * 1e300, a * 1e300, n_boot=200, rng=0)
    np.testing.assert_allclose(np.array(got.mean_drop_ci_t) / 1e300, ref.mean_drop_ci_t, rtol=1e-12)


@pytest.mark.parametrize("baseline", ([0.0, 0.0, 0.0, 0.0], [-1.0, -2.0, 1.0, 1.5]))
def test_ratio_of_means_with_nonpositive_mean_baseline_is_flagged(baseline):
    """FAILS today: a mean baseline margin of 0 (relative drop inf) or below 0 (relative drop -8, with
    an interval (-8, 8)) is reported with no flag; ``nonpositive_baseline`` is raised only for
    mean_of_ratios."""
    b = np.array(baseline)
    r = _quiet(ablation_summary, b, b - np.array([1.0, 1.0, 2.0, 2.0]), n_boot=200, rng=0)
    assert "nonpositive_baseline" in [f.code for f in r.flags]


def test_mean_of_ratios_interval_contains_the_estimate_or_is_nan():
    """FAILS today: one pair has baseline 0, so drop/baseline = inf and the estimate is inf; the
    bootstrap drops every resample holding that pair and reports (0.42, 0.91), an interval that
    excludes the estimate."""
    r = _quiet(ablation_summary, np.array([0.0, 1, 2, 3]), np.array([-1.0, 0, 1, 2]),
               relative_definition="mean_of_ratios", n_boot=200, rng=0)
    lo, hi = r.relative_drop_ci
    assert (np.isnan(lo) and np.isnan(hi)) or lo <= r.relative_drop <= hi


def test_ablation_overflowing_drop_is_refused_by_name():
    """FAILS today: finite margins whose difference overflows reach the sign-flip test, whose message
    names a parameter `x` the caller never passed."""
    with pytest.raises(ValueError, match="margin"):
        _quiet(ablation_summary, np.array([1e308, 1e308, 1e308]), np.array([-1e308, -1e308, -1e308]),
               n_boot=200, rng=0)


# --- paired sign-flip test ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", (1.0, 1e300, 1e-300, 1e-170))
@pytest.mark.parametrize("statistic", ("mean", "paired_t"))
def test_paired_test_exact_and_scale_invariant(scale, statistic):
    d = np.random.default_rng(7).normal(0.5, 1, 7)
    ref = sps.permutation_test((d,), lambda z, axis: np.mean(z, axis=axis), permutation_type="samples",
                               n_resamples=np.inf, alternative="greater")
    r = paired_permutation_test(d * scale, statistic=statistic, alternative="greater")
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12) and r.exact
    if statistic == "paired_t":
        assert r.statistic == pytest.approx(sps.ttest_1samp(d, 0).statistic, rel=1e-12)


def test_paired_test_degenerate_inputs():
    # constant positive differences: only the all-plus sign vector reaches the observed mean
    r = paired_permutation_test(np.full(3, 0.1), alternative="greater")
    assert r.pvalue == pytest.approx(1 / 8)
    assert paired_permutation_test(np.full(3, 0.1), alternative="two-sided").pvalue == pytest.approx(2 / 8)
    z = paired_permutation_test(np.zeros(5))
    assert np.isnan(z.statistic) and z.pvalue == 1.0
    same = paired_permutation_test(np.array([1.0, 2, 3]), np.array([1.0, 2, 3]))
    assert same.pvalue == 1.0
    i = paired_permutation_test(np.array([1, 2, 3, 4]), np.array([0, 0, 1, 1]), statistic="paired_t")
    assert i.statistic == pytest.approx(sps.ttest_1samp([1, 2, 2, 3], 0).statistic, rel=1e-12)
    f32 = paired_permutation_test(np.array([1, 2, 3, 4], dtype=np.float32), statistic="paired_t")
    f64 = paired_permutation_test(np.array([1.0, 2, 3, 4]), statistic="paired_t")
    assert f32.statistic == pytest.approx(f64.statistic, rel=1e-12) and f32.pvalue == f64.pvalue
    for bad in ([], [1.0], [np.nan, 1.0, 2.0]):
        with pytest.raises(ValueError):
            paired_permutation_test(np.array(bad))


# --- register ----------------------------------------------------------------------------------------

def _register_data():
    rng = np.random.default_rng(2)
    pc = np.array(["FIRE"] * 4 + ["NOFIRE"] * 4)
    rg = np.array(["target"] * 3 + ["other"] * 4 + ["target"])
    val = rng.normal(0, 1, 8) + (rg == "target") * 2
    return val, pc, rg


def test_register_matches_statsmodels():
    val, pc, rg = _register_data()
    r = register_analysis(val, pc, rg)
    frame = pd.DataFrame({"value": val, "register": (rg == "target").astype(int),
                          "prompt_class": (pc == "FIRE").astype(int)})
    fit = smf.ols("value ~ register + prompt_class", data=frame).fit()
    terms = ["Intercept", "register", "prompt_class"]
    np.testing.assert_allclose(r.coefficients["estimate"][:3], fit.params[terms], rtol=1e-10)
    np.testing.assert_allclose(r.coefficients["pvalue"][:3], fit.pvalues[terms], rtol=1e-8)
    assert ((r.coefficients["pvalue"] > 0) & (r.coefficients["pvalue"] <= 1)).all()
    assert (r.coefficients["ci_low"] <= r.coefficients["estimate"]).all()
    assert (r.coefficients["estimate"] <= r.coefficients["ci_high"]).all()


@pytest.mark.parametrize("scale", (1e200, 1e-200))
def test_register_is_scale_invariant(scale):
    """FAILS today: the residual sum of squares overflows at 1e200 (se inf, p 1) and underflows at
    1e-200 (se 0, p 0, outside (0, 1])."""
    val, pc, rg = _register_data()
    ref = register_analysis(val, pc, rg).coefficients
    got = _quiet(register_analysis, val * scale, pc, rg).coefficients
    np.testing.assert_allclose(got["estimate"] / scale, ref["estimate"], rtol=1e-9)
    np.testing.assert_allclose(got["std_error"] / scale, ref["std_error"], rtol=1e-9)
    np.testing.assert_allclose(got["pvalue"], ref["pvalue"], rtol=1e-8)


def test_register_constant_value_has_no_test():
    """FAILS today: a value that never varies (0.1 for every prompt) fits exactly; the slopes are
    rounding noise (~1e-17) with p-values 0.63 and 0.81. Proposed: slopes 0, their standard errors
    and p-values NaN, and a ``value_constant`` flag."""
    val, pc, rg = _register_data()
    r = _quiet(register_analysis, np.full(8, 0.1), pc, rg)
    coef = r.coefficients.set_index("term")
    assert coef.loc["register", "estimate"] == 0 and coef.loc["prompt_class", "estimate"] == 0
    assert np.isnan(coef.loc[["register", "prompt_class"], "pvalue"].astype(float)).all()
    assert "value_constant" in [f.code for f in r.flags]
    assert all(coef[c].dtype == np.float64 for c in ("estimate", "std_error", "ci_low", "ci_high", "pvalue"))


def test_register_confounded_coefficients_are_float_nan():
    """FAILS today: with register confounded with class the table is filled from a scalar NaN, and
    pandas (with its string dtype for ``term``) makes every numeric column ``object``; a reader doing
    arithmetic or ``np.isnan`` on it gets a TypeError. Proposed: build the NaN columns from arrays."""
    pc = np.array(["FIRE"] * 4 + ["NOFIRE"] * 4)
    rg = np.array(["target"] * 4 + ["other"] * 4)
    r = register_analysis(np.arange(8.0), pc, rg)
    assert "register_confounded_with_class" in [f.code for f in r.flags]
    for c in ("estimate", "std_error", "ci_low", "ci_high", "pvalue"):
        assert r.coefficients[c].dtype == np.float64, c
        assert np.isnan(r.coefficients[c].to_numpy(dtype=float)).all()
    assert np.isnan(r.register_effect) and np.isnan(r.class_effect)


# --- reproduction --------------------------------------------------------------------------------------

def test_identical_runs_reproduce_even_with_infinite_d():
    """FAILS today: both runs are [1, 1, 1] vs [2, 2, 2]; d = -inf in each and |d2 - d1| = |-inf + inf|
    = NaN, so an identical run is "not reproduced"."""
    run = ([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    r = _quiet(compare_runs, (run, run), n_boot=200, rng=0)
    assert r.d_change == 0 and r.reproduced


def test_a_rescaled_run_reproduces():
    """FAILS today (through the d defect): the second run is the first in other units (× 1e200);
    its d comes out 0, so d_change = 1.15 > d_atol and the run is "not reproduced"."""
    a, b = [1.0, 2, 3, 4], [0.5, 1, 1.5, 2.2]
    r = _quiet(compare_runs, ((a, b), (np.multiply(a, 1e200), np.multiply(b, 1e200))), n_boot=200, rng=0)
    assert r.d_change == pytest.approx(0, abs=1e-9) and r.ratio_change == pytest.approx(0, abs=1e-12)
    assert r.reproduced
