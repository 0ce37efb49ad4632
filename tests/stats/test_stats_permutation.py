import numpy as np
import pytest
import scipy.stats as sps

from stats import paired_permutation_test, permutation_test

STATS = {
    "mean_diff": lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
    "student_t": lambda x, y, axis=-1: sps.ttest_ind(x, y, axis=axis).statistic,
    "welch_t": lambda x, y, axis=-1: sps.ttest_ind(x, y, axis=axis, equal_var=False).statistic,
}


def _split(seed, na, nb, shift=0.6):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(shift, 1, na), rng.normal(0, 1.5, nb)
    return a, b, np.r_[a, b], np.r_[np.ones(na, bool), np.zeros(nb, bool)]


@pytest.mark.parametrize("statistic", list(STATS))
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_exact_one_sided_matches_scipy(statistic, alternative):
    a, b, x, g = _split(1, 6, 5)
    r = permutation_test(x, g, statistic=statistic, alternative=alternative)
    # scipy.stats.permutation_test((a, b), stat, n_resamples=np.inf, alternative=...)
    ref = sps.permutation_test((a, b), STATS[statistic], n_resamples=np.inf, alternative=alternative)
    assert r.exact and r.n_resamples == 462
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


@pytest.mark.parametrize("statistic", list(STATS))
def test_exact_two_sided_balanced_matches_scipy(statistic):
    a, b, x, g = _split(2, 7, 7)
    r = permutation_test(x, g, statistic=statistic)
    # balanced: the null is symmetric, so scipy's 2·min(p_less, p_greater) equals the |T| p-value
    ref = sps.permutation_test((a, b), STATS[statistic], n_resamples=np.inf)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert r.n_resamples == 3432 and r.null_distribution.shape == (3432,)


def test_exact_two_sided_unbalanced_is_abs_t_as_in_scipy_greater():
    a, b, x, g = _split(3, 5, 8)
    r = permutation_test(x, g, statistic="welch_t")

    def abs_welch(u, v, axis=-1):
        return np.abs(STATS["welch_t"](u, v, axis=axis))

    ref = sps.permutation_test((a, b), abs_welch, n_resamples=np.inf, alternative="greater")
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


@pytest.mark.parametrize("statistic,alternative", [("mean", "two-sided"), ("mean", "less"),
                                                   ("paired_t", "greater"), ("paired_t", "two-sided")])
def test_paired_sign_flip_exact_matches_scipy(statistic, alternative):
    rng = np.random.default_rng(4)
    before, after = rng.normal(2, 1, 11), rng.normal(1.5, 1, 11)
    d = before - after
    r = paired_permutation_test(before, after, statistic=statistic, alternative=alternative)
    fn = {"mean": lambda u, axis=-1: u.mean(axis=axis),
          "paired_t": lambda u, axis=-1: sps.ttest_1samp(u, 0, axis=axis).statistic}[statistic]
    # scipy.stats.permutation_test((d,), fn, permutation_type="samples", n_resamples=np.inf)
    ref = sps.permutation_test((d,), fn, permutation_type="samples", n_resamples=np.inf,
                               alternative=alternative)
    assert r.exact and r.n_resamples == 2 ** 11
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


def test_ten_vs_ten_is_exact_by_default():
    _, _, x, g = _split(5, 10, 10)
    r = permutation_test(x, g)
    assert r.exact and r.n_resamples == 184_756


def test_monte_carlo_p_formula_and_agreement_with_exact():
    _, _, x, g = _split(6, 8, 8, shift=0.8)
    exact = permutation_test(x, g, statistic="welch_t")
    mc = permutation_test(x, g, statistic="welch_t", exact_cap=0, n_resamples=4999, rng=1)
    assert not mc.exact and mc.n_resamples == 4999
    # p = (1 + b)/(1 + P) with b the resamples reaching the observed |t|
    b = np.sum(np.abs(mc.null_distribution) >= abs(mc.statistic) * (1 - 1e-12))
    assert mc.pvalue == pytest.approx((1 + b) / 5000)
    se = np.sqrt(exact.pvalue * (1 - exact.pvalue) / 4999)
    assert abs(mc.pvalue - exact.pvalue) < 4 * se + 1 / 5000


@pytest.mark.parametrize("kind", ["mc", "exact"])
def test_same_seed_same_answer_whatever_the_batch(kind):
    # 12 units: at most 16, so the null distribution is kept and compared too. The relabelings
    # are the same whatever the batch: p-values identical; null values to a few ulp (the BLAS
    # may sum another chunk shape in another order).
    rng = np.random.default_rng(7)
    x = rng.normal(size=(14, 12))
    g = np.r_[np.ones(6, bool), np.zeros(8, bool)]
    kw = {"exact_cap": 0, "n_resamples": 3000, "rng": 11} if kind == "mc" else {}
    ref = permutation_test(x, g, batch=10_000, **kw)
    assert ref.null_distribution is not None and ref.null_distribution.shape == (ref.n_resamples, 12)
    for batch in (1, 7, 1024, 1025):
        other = permutation_test(x, g, batch=batch, **kw)
        np.testing.assert_array_equal(other.pvalue, ref.pvalue)
        np.testing.assert_allclose(other.null_distribution, ref.null_distribution, rtol=1e-13,
                                   atol=1e-13)
    if kind == "mc":
        assert not np.array_equal(permutation_test(x, g, exact_cap=0, n_resamples=3000, rng=12).pvalue,
                                  ref.pvalue)


def test_many_units_equal_one_unit_at_a_time():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(12, 5))
    g = np.r_[np.ones(6, bool), np.zeros(6, bool)]
    many = permutation_test(x, g, statistic="student_t")
    one = [permutation_test(x[:, j], g, statistic="student_t").pvalue for j in range(5)]
    np.testing.assert_allclose(many.pvalue, one, rtol=1e-12)


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(16, 30))
    g = np.r_[np.ones(8, bool), np.zeros(8, bool)]
    p64 = permutation_test(x, g).pvalue
    p32 = permutation_test(x, g, dtype=np.float32).pvalue
    np.testing.assert_allclose(p32, p64, atol=2 / 12870)


def test_n_two_per_group_and_constant_and_single_unit():
    r = permutation_test([3.0, 4.0, 1.0, 0.0], [1, 1, 0, 0], statistic="mean_diff")
    # C(4,2) = 6 relabelings; the observed split and its complement are the two most extreme
    assert r.exact and r.n_resamples == 6 and r.pvalue == pytest.approx(2 / 6)
    c = permutation_test(np.ones((6, 2)) * [[1.0, 2.0]], [1, 1, 1, 0, 0, 0])
    assert np.all(np.isnan(c.statistic)) and np.all(c.pvalue == 1.0)
    frame = r.to_frame()
    assert list(frame.columns) == ["unit", "statistic", "pvalue", "n_resamples", "exact",
                                   "statistic_name", "alternative", "design", "null", "resampling"]
    assert (r.null, r.resampling) == ("exchangeable", "permutation")
    paired = paired_permutation_test([0.3, -0.1, 0.4, 0.2])
    assert (paired.null, paired.resampling) == ("symmetric", "sign_flip")
