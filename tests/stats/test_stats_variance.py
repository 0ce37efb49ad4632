import numpy as np
import pytest
import scipy.stats as sps

from stats import all_unit_baseline, compare_groups, variance_check


def test_brown_forsythe_matches_scipy_levene_median_per_unit():
    rng = np.random.default_rng(30)
    x = rng.normal(size=(19, 25)) * np.r_[np.full(8, 2.5), np.ones(11)][:, None]
    x[:, 3] = rng.exponential(size=19)  # skewed, as routing W is
    g = np.r_[np.ones(8, bool), np.zeros(11, bool)]
    r = variance_check(x, g, unit_ids=[f"L1E{j}" for j in range(25)])
    for j in range(25):
        # scipy.stats.levene(a, b, center="median") (Brown–Forsythe)
        ref = sps.levene(x[g, j], x[~g, j], center="median")
        assert r.brown_forsythe_w[j] == pytest.approx(ref.statistic, rel=1e-10)
        assert r.brown_forsythe_p[j] == pytest.approx(ref.pvalue, rel=1e-10)
        # numpy: var(ddof=1) of each group
        assert r.variance_ratio[j] == pytest.approx(x[g, j].var(ddof=1) / x[~g, j].var(ddof=1))
    assert list(r.to_frame().columns) == ["unit", "n_a", "n_b", "var_a", "var_b", "variance_ratio",
                                          "brown_forsythe_w", "brown_forsythe_p"]
    assert "not_exchangeable" in {f.code for f in r.flags}
    same = variance_check(rng.normal(size=(19, 25)), g)
    assert same.flags == ()


def test_never_selected_group_has_infinite_ratio():
    x = np.r_[[0.1, 0.3, 0.2, 0.25], np.zeros(4)]
    r = variance_check(x, [1, 1, 1, 1, 0, 0, 0, 0])
    assert r.variance_ratio[0] == np.inf
    # scipy.stats.levene(a, b, center="median")
    assert r.brown_forsythe_p[0] == pytest.approx(sps.levene(x[:4], x[4:], center="median").pvalue)


def test_two_group_result_carries_the_diagnostic():
    rng = np.random.default_rng(31)
    a, b = rng.normal(0, 3, 9), rng.normal(0, 1, 14)
    r = compare_groups(a, b, n_boot=200, rng=0)
    ref = sps.levene(a, b, center="median")  # scipy.stats.levene(a, b, center="median")
    assert r.variance_ratio == pytest.approx(a.var(ddof=1) / b.var(ddof=1))
    assert (r.brown_forsythe_w, r.brown_forsythe_p) == pytest.approx((ref.statistic, ref.pvalue))
    f = r.to_frame()
    assert list(f.columns)[-3:] == ["variance_ratio", "brown_forsythe_w", "brown_forsythe_p"]


def test_baseline_reports_variances_and_flags_permutation_max_t():
    rng = np.random.default_rng(32)
    g = np.r_[np.ones(8, bool), np.zeros(14, bool)]
    x = rng.normal(size=(22, 120)) * np.where(g, 3.0, 1.0)[:, None]  # smaller group SD x3
    r = all_unit_baseline(x, g, target="u5", n_resamples=199, exact_cap=0, rng=0)
    vc = variance_check(x, g)
    np.testing.assert_allclose(r.variance_ratio, vc.variance_ratio)
    np.testing.assert_allclose(r.brown_forsythe_p, vc.brown_forsythe_p)
    assert r.target_variance_ratio == pytest.approx(vc.variance_ratio[5])
    assert r.summary()["target_brown_forsythe_p"] == pytest.approx(vc.brown_forsythe_p[5])
    assert "not_exchangeable" in {f.code for f in r.flags}
    em = all_unit_baseline(x, g, n_resamples=199, rng=0, null="equal_means")
    assert "not_exchangeable" not in {f.code for f in em.flags}
    assert (em.null, em.resampling) == ("equal_means", "wild")
    calm = all_unit_baseline(rng.normal(size=(22, 120)), g, n_resamples=199, exact_cap=0, rng=0)
    assert "not_exchangeable" not in {f.code for f in calm.flags}
    paired = all_unit_baseline(x, None, statistic="mean", n_resamples=99, exact_cap=0, rng=0)
    assert paired.null == "symmetric" and np.all(np.isnan(paired.to_frame()["variance_ratio"]))
