import numpy as np
import pingouin as pg
import pytest
import scipy.stats as sps

from stats import cohen_d, compare_groups, d_interval, hedges_g


@pytest.mark.parametrize("na,nb,seed", [(10, 10, 0), (7, 13, 1), (2, 2, 2), (30, 5, 3)])
def test_d_and_g_match_pingouin(na, nb, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1, 1, na), rng.normal(0, 2, nb)
    r = compare_groups(a, b, rng=0, n_boot=200)
    # pingouin.compute_effsize(a, b, eftype="cohen") / eftype="hedges"
    assert r.cohen_d == pytest.approx(pg.compute_effsize(a, b, eftype="cohen"), rel=1e-12)
    assert r.hedges_g == pytest.approx(pg.compute_effsize(a, b, eftype="hedges"), rel=1e-12)
    assert cohen_d(a, b) == pytest.approx(r.cohen_d, rel=1e-12)
    assert hedges_g(a, b) == pytest.approx(r.hedges_g, rel=1e-12)


def test_t_tests_and_mann_whitney_match_scipy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.5, 1, 9), rng.normal(0, 3, 14)
    r = compare_groups(a, b, rng=0, n_boot=200)
    w = sps.ttest_ind(a, b, equal_var=False)  # scipy.stats.ttest_ind(a, b, equal_var=False)
    s = sps.ttest_ind(a, b)  # scipy.stats.ttest_ind(a, b)
    mw = sps.mannwhitneyu(a, b, alternative="two-sided")  # scipy.stats.mannwhitneyu(a, b)
    assert (r.welch_t, r.welch_df, r.welch_p) == pytest.approx((w.statistic, w.df, w.pvalue))
    assert (r.student_t, r.student_df, r.student_p) == pytest.approx((s.statistic, s.df, s.pvalue))
    assert r.mann_whitney_u == mw.statistic and r.mann_whitney_p == pytest.approx(mw.pvalue)
    # AUC by brute force over all pairs: P(A > B) + P(A = B)/2
    gt = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    assert r.auc == pytest.approx(gt)


def test_ratio_of_means_and_interval_contains_estimate():
    rng = np.random.default_rng(5)
    a, b = rng.gamma(5, 0.0135, 10), rng.gamma(5, 0.0006, 10)
    r = compare_groups(a, b, rng=1, n_boot=2000)
    assert r.ratio == pytest.approx(a.mean() / b.mean())
    assert r.ratio_ci[0] < r.ratio < r.ratio_ci[1]
    assert r.mean_diff == pytest.approx(a.mean() - b.mean())


def test_noncentral_t_interval_inverts_the_cdf():
    d, na, nb = 2.94, 10, 10
    lo, hi = d_interval(d, na, nb, 0.95)
    k = np.sqrt(na * nb / (na + nb))
    t = d * k
    # scipy.stats.nct.cdf(t, df, ncp) at the two bounds is 0.975 and 0.025 by construction
    assert sps.nct.cdf(t, na + nb - 2, lo * k) == pytest.approx(0.975, abs=1e-9)
    assert sps.nct.cdf(t, na + nb - 2, hi * k) == pytest.approx(0.025, abs=1e-9)
    assert lo < d < hi


def test_noncentral_t_interval_coverage():
    rng = np.random.default_rng(6)
    sims, na, nb, delta = 600, 8, 12, 1.0
    a = rng.normal(delta, 1, (sims, na))
    b = rng.normal(0, 1, (sims, nb))
    sp = np.sqrt(((na - 1) * a.var(1, ddof=1) + (nb - 1) * b.var(1, ddof=1)) / (na + nb - 2))
    d = (a.mean(1) - b.mean(1)) / sp
    lo, hi = d_interval(d, na, nb, 0.95)
    covered = int(np.sum((lo <= delta) & (delta <= hi)))
    # exact interval: coverage ~ Binomial(600, 0.95); 99 % interval
    lo_c, hi_c = sps.binom.ppf([0.005, 0.995], sims, 0.95)
    assert lo_c <= covered <= hi_c


def test_hedges_interval_is_scaled_d_interval():
    rng = np.random.default_rng(7)
    a, b = rng.normal(1, 1, 6), rng.normal(0, 1, 9)
    r = compare_groups(a, b, n_boot=200, rng=0)
    j = r.hedges_g / r.cohen_d
    assert r.hedges_g_ci == pytest.approx((r.cohen_d_ci[0] * j, r.cohen_d_ci[1] * j))


def test_bca_option_matches_scipy_bootstrap():
    rng = np.random.default_rng(8)
    a, b = rng.normal(1, 1, 10), rng.normal(0, 1, 10)
    r = compare_groups(a, b, ci_method="bca", n_boot=999, rng=np.random.default_rng(3))
    assert r.d_ci_method == "bootstrap_bca_stratified"

    def d(x, y, axis=-1):
        sp = np.sqrt(((x.shape[axis] - 1) * x.var(axis=axis, ddof=1)
                      + (y.shape[axis] - 1) * y.var(axis=axis, ddof=1)) / (x.shape[axis] + y.shape[axis] - 2))
        return (x.mean(axis=axis) - y.mean(axis=axis)) / sp

    gen = np.random.default_rng(3)
    # the ratio interval draws first from the same generator
    sps.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) / y.mean(axis), n_resamples=999,
                  method="percentile", rng=gen, vectorized=True)
    ref = sps.bootstrap((a, b), d, n_resamples=999, method="BCa", rng=gen, vectorized=True)
    assert r.cohen_d_ci == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))


def test_range_overlap_names_the_crossing_prompts():
    fire = [0.07, 0.06, 0.08, 0.05]
    nofire = [0.003, 0.004, 0.055, 0.002]  # the "cat-purring" control crosses
    r = compare_groups(fire, nofire, ids_a=["f1", "f2", "f3", "f4"], ids_b=["n1", "n2", "cat", "n4"],
                       n_boot=200, rng=0)
    assert r.ranges_overlap
    assert r.crossing_b == ("cat",) and r.crossing_a == ("f4",)
    clean = compare_groups(fire, [0.003, 0.004, 0.002], n_boot=200, rng=0)
    assert not clean.ranges_overlap and clean.crossing_a == () and clean.crossing_b == ()


def test_n_equals_two_per_group():
    r = compare_groups([1.0, 2.0], [0.0, 0.5], n_boot=200, rng=0)
    assert r.n_a == 2 and np.isfinite(r.cohen_d) and r.cohen_d_ci[0] < r.cohen_d < r.cohen_d_ci[1]


def test_all_equal_values_give_nan_effect_sizes_not_errors():
    r = compare_groups([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], n_boot=200, rng=0)
    assert np.isnan(r.cohen_d) and np.isnan(r.cohen_d_ci[0]) and np.isnan(r.ratio_ci[0])
    assert r.ratio == 1.0 and r.ranges_overlap


def test_nan_policy_omit_lists_omitted_items():
    r = compare_groups([0.1, np.nan, 0.12, 0.11], [0.09, 0.1, np.nan], ids_a=list("abcd"),
                       ids_b=list("xyz"), nan_policy="omit", n_boot=200, rng=0)
    assert r.omitted == ("b", "z") and r.n_a == 3 and r.n_b == 2
    with pytest.raises(ValueError, match="`a` or `b` contains NaN"):
        compare_groups([0.1, np.nan, 0.2], [0.1, 0.2])


def test_to_frame_has_fixed_columns():
    r = compare_groups([1.0, 2.0, 3.0], [0.0, 0.5, 0.2], n_boot=200, rng=0)
    f = r.to_frame()
    assert list(f.columns)[:4] == ["n_a", "n_b", "mean_a", "mean_b"] and len(f) == 1
    f2 = compare_groups([1.0, 2.0, 3.0], [0.0, 0.5, 0.2], n_boot=200, rng=0, ci_method="bca").to_frame()
    assert list(f2.columns) == list(f.columns)
