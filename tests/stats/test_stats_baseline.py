import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from maxt_reference import brute_maxt
from stats import _engine, _kernels, all_unit_baseline


@pytest.mark.parametrize("statistic", ["welch_t", "mean_diff"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_monte_carlo_baseline_matches_brute_force(statistic, alternative):
    rng = np.random.default_rng(0)
    n, f = 16, 150
    x = rng.normal(size=(n, f))
    x[:8, 3] += 1.5
    mask = np.r_[np.ones(8, bool), np.zeros(8, bool)]
    r = all_unit_baseline(x, mask, statistic=statistic, alternative=alternative, exact_cap=0,
                          n_resamples=1500, rng=3, batch=211)
    rel = np.concatenate(list(_engine.random_relabelings("two_sample", n, 8, 1500,
                                                         np.random.default_rng(3), 4096, float)))
    _, p_unc, p_ss, p_sd = brute_maxt(x, mask, statistic, alternative, rel, exact=False)
    np.testing.assert_allclose(r.p_uncorrected, p_unc)
    np.testing.assert_allclose(r.p_maxt_single_step, p_ss)
    np.testing.assert_allclose(r.p_maxt_step_down, p_sd)


def test_exact_unbalanced_welch_baseline_matches_brute_force():
    rng = np.random.default_rng(1)
    n, f = 11, 70
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 3, f)
    mask = np.r_[np.ones(4, bool), np.zeros(7, bool)]
    r = all_unit_baseline(x, mask, statistic="welch_t", batch=37)
    import itertools
    rel = []
    for c in itertools.combinations(range(n), 4):
        row = np.zeros(n, bool)
        row[list(c)] = True
        rel.append(row)
    t, p_unc, p_ss, p_sd = brute_maxt(x, mask, "welch_t", "two-sided", np.array(rel), exact=True)
    assert r.exact and r.n_resamples == 330
    np.testing.assert_allclose(np.abs(r.statistic), t, rtol=1e-10)
    np.testing.assert_allclose(r.p_uncorrected, p_unc)
    np.testing.assert_allclose(r.p_maxt_single_step, p_ss)
    np.testing.assert_allclose(r.p_maxt_step_down, p_sd)


def test_step_down_is_between_uncorrected_and_single_step():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 500))
    x[:10, :5] += 2.0
    mask = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    r = all_unit_baseline(x, mask, n_resamples=999, exact_cap=0, rng=0)
    assert np.all(r.p_uncorrected <= r.p_maxt_step_down + 1e-15)
    assert np.all(r.p_maxt_step_down <= r.p_maxt_single_step + 1e-15)


def test_holm_and_bh_are_statsmodels_on_the_uncorrected_p():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 60))
    x[:7, :4] += 2.5
    mask = np.r_[np.ones(7, bool), np.zeros(7, bool)]
    r = all_unit_baseline(x, mask, n_resamples=2000, exact_cap=0, rng=1)
    # statsmodels.stats.multitest.multipletests(p, method="holm") / method="fdr_bh"
    np.testing.assert_allclose(r.p_holm, multipletests(r.p_uncorrected, method="holm")[1])
    np.testing.assert_allclose(r.q_bh, multipletests(r.p_uncorrected, method="fdr_bh")[1])


def test_single_step_agrees_with_nilearn_permuted_ols():
    from nilearn.mass_univariate import permuted_ols
    rng = np.random.default_rng(4)
    n, f = 24, 300
    x = rng.normal(size=(n, f))
    x[:12, :3] += 1.4
    mask = np.r_[np.ones(12, bool), np.zeros(12, bool)]
    r = all_unit_baseline(x, mask, statistic="student_t", n_resamples=3000, exact_cap=0, rng=2)
    # nilearn.mass_univariate.permuted_ols(group, x, model_intercept=True, two_sided_test=True)
    out = permuted_ols(mask[:, None].astype(float), x, model_intercept=True, n_perm=3000,
                       two_sided_test=True, random_state=0, n_jobs=1)
    np.testing.assert_allclose(np.abs(r.statistic), np.abs(out["t"][0]), rtol=1e-8)
    ref = 10 ** -out["logp_max_t"][0]
    # two independent Monte Carlo estimates of the same p: 4 standard errors of a difference
    se = np.sqrt(2 * ref * (1 - ref) / 3000) + 2 / 3001
    assert np.all(np.abs(r.p_maxt_single_step - ref) <= 4 * se)
    # the null max distributions agree in their 95th percentile too
    assert np.quantile(r.null_max, 0.95) == pytest.approx(np.quantile(out["h0_max_t"][0], 0.95), rel=0.06)


def test_target_rank_uses_the_pessimistic_tie_rule():
    x = np.array([[1.0, 1.0, 0.5], [2.0, 2.0, 0.1], [0.0, 0.0, 0.3], [0.5, 0.5, 0.9]])
    mask = np.array([True, True, False, False])
    r = all_unit_baseline(x, mask, unit_ids=["L1E1", "L1E2", "L2E0"], target="L1E2",
                          statistic="mean_diff")
    # L1E1 and L1E2 tie for first: the target takes rank 2, not 1; percentile counts only units below
    assert r.target_rank == 2 and list(r.rank) == [2, 2, 3]
    assert r.target_percentile == pytest.approx(100 / 3)
    assert r.best_unit == "L1E1"


def test_constant_units_leave_the_family_and_are_listed():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, 6))
    x[:, 2] = 0.0  # an expert never selected
    mask = np.r_[np.ones(6, bool), np.zeros(6, bool)]
    ids = [f"L14E{i}" for i in range(6)]
    r = all_unit_baseline(x, mask, unit_ids=ids, target="L14E2")
    assert r.family_size == 5 and r.dropped_units == (("L14E2", "constant"),)
    assert not r.in_family[2] and np.isnan(r.p_maxt_step_down[2]) and r.rank[2] == 0
    assert {f.code for f in r.flags} >= {"units_dropped", "target_not_in_family"}
    assert r.target_rank == 0 and np.isnan(r.target_statistic)


def test_nan_units_raise_or_drop():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(10, 4))
    x[3, 1] = np.nan
    mask = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    with pytest.raises(ValueError, match="`x` has NaN or infinite values in 1 unit"):
        all_unit_baseline(x, mask)
    r = all_unit_baseline(x, mask, nan_policy="drop_units")
    assert r.family_size == 3 and r.dropped_units == (("u1", "nan"),)
    ref = all_unit_baseline(x[:, [0, 2, 3]], mask)
    np.testing.assert_allclose(r.p_maxt_step_down[[0, 2, 3]], ref.p_maxt_step_down)


def test_flags_when_permutations_cannot_reach_alpha():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 400))
    mask = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    r = all_unit_baseline(x, mask, n_resamples=15, exact_cap=0, rng=0)
    codes = {f.code for f in r.flags}
    assert "maxt_unreachable" in codes and "holm_unreachable" in codes
    assert r.critical_value == np.inf
    ok = all_unit_baseline(x[:, :2], mask, n_resamples=999, exact_cap=0, rng=0)
    assert not {f.code for f in ok.flags} & {"maxt_unreachable", "holm_unreachable"}


def test_critical_value_separates_significant_units():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(20, 300))
    x[:10, :6] += np.linspace(1.0, 3.0, 6)
    mask = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    r = all_unit_baseline(x, mask, n_resamples=1999, exact_cap=0, rng=4, target="u5")
    score = np.abs(r.statistic)
    assert np.all((score > r.critical_value) == (r.p_maxt_single_step <= 0.05))
    assert r.best_unit == "u5" and r.target_rank == 1 and r.target_p_maxt <= 0.05
    assert r.target_null.shape == (1999,) and r.null_max.shape == (1999,)


def test_paired_baseline_matches_per_unit_sign_flip():
    from stats import paired_permutation_test
    rng = np.random.default_rng(9)
    d = rng.normal(0.2, 1, size=(10, 25))
    r = all_unit_baseline(d, None, statistic="paired_t")
    ref = paired_permutation_test(d, statistic="paired_t")
    assert r.exact and r.n_resamples == 1024
    np.testing.assert_allclose(r.p_uncorrected, ref.pvalue)
    assert np.all(r.p_maxt_step_down >= r.p_uncorrected)


def test_batch_invariance_and_single_unit_and_frame():
    # The contract across batch sizes: the relabelings are the same, so p-values, ranks and
    # decisions are identical; the BLAS may sum a chunk in another order (other kernels for other
    # shapes, and other CPUs), so statistics and null maxima agree to a few ulp, not bit for bit.
    rng = np.random.default_rng(10)
    x = rng.normal(size=(18, 130))
    mask = np.r_[np.ones(9, bool), np.zeros(9, bool)]
    a = all_unit_baseline(x, mask, n_resamples=700, exact_cap=0, rng=5, batch=13)
    for batch in (1, 64, 5000):
        b = all_unit_baseline(x, mask, n_resamples=700, exact_cap=0, rng=5, batch=batch)
        for name in ("p_uncorrected", "p_maxt_single_step", "p_maxt_step_down", "p_holm", "rank"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(a.to_frame()["significant_maxt"], b.to_frame()["significant_maxt"])
        np.testing.assert_allclose(a.null_max, b.null_max, rtol=1e-13)
        np.testing.assert_allclose(a.statistic, b.statistic, rtol=1e-13)
    one = all_unit_baseline(x[:, 0], mask, target="u0")
    assert one.family_size == 1 and one.target_rank == 1
    assert one.p_maxt_step_down[0] == pytest.approx(one.p_uncorrected[0])
    assert list(a.to_frame().columns) == ["unit", "in_family", "statistic", "p_uncorrected",
                                          "p_maxt_single_step", "p_maxt_step_down", "p_holm", "q_bh",
                                          "rank", "significant_maxt", "variance_ratio",
                                          "brown_forsythe_p"]
    assert a.summary()["target_rank_tie_rule"] == "max"
    assert (a.null, a.resampling) == ("exchangeable", "permutation")


@pytest.mark.parametrize("statistic,n1", [("welch_t", 9), ("mean_diff", 10), ("student_t", 12)])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_many_blocks_step_down_matches_brute_force(statistic, n1, alternative):
    # 1000 units = 15 blocks of 64 plus a padded one; graded planted effects make the step-down
    # successive maxima straddle the observed statistics in several blocks, not just the first.
    rng = np.random.default_rng(11)
    n, f = 20, 1000
    x = rng.normal(size=(n, f)) * rng.uniform(0.5, 2, f)
    x[:n1, :500] += np.linspace(3.0, 0.5, 500) * rng.choice([-1, 1], 500)
    mask = np.r_[np.ones(n1, bool), np.zeros(n - n1, bool)]
    r = all_unit_baseline(x, mask, statistic=statistic, alternative=alternative, exact_cap=0,
                          n_resamples=400, rng=7, batch=64)
    rel = np.concatenate(list(_engine.random_relabelings("two_sample", n, n1, 400,
                                                         np.random.default_rng(7), 4096, float)))
    _, p_unc, p_ss, p_sd = brute_maxt(x, mask, statistic, alternative, rel, exact=False)
    np.testing.assert_allclose(r.p_uncorrected, p_unc)
    np.testing.assert_allclose(r.p_maxt_single_step, p_ss)
    np.testing.assert_allclose(r.p_maxt_step_down, p_sd)


def test_welch_from_group_sums_is_scipys_welch_t():
    # the engine's expanded form a·q + b·s² + c of Welch's variance term, on standardised data,
    # against scipy.stats.ttest_ind(equal_var=False) on the raw groups (unequal sizes and spreads)
    rng = np.random.default_rng(5)
    for n1, n2 in ((7, 13), (30, 11), (2, 5)):
        x = np.concatenate([rng.normal(0.4, 0.5, (n1, 40)), rng.normal(0, 2.0, (n2, 40))])
        z = (x - x.mean(0)) / x.std(0, ddof=1)
        s, q = z[:n1].sum(0), (z[:n1] ** 2).sum(0)
        t = _engine._welch_from_sums(s, q, n1, n2, 0.0)
        want = stats.ttest_ind(x[:n1], x[n1:], equal_var=False).statistic
        np.testing.assert_allclose(t, want, rtol=1e-10)


def test_in_place_welch_is_bit_identical_to_the_formula():
    # elementwise IEEE operations only (no BLAS): each is correctly rounded on every CPU, so the
    # same operations in the same order agree bit for bit
    rng = np.random.default_rng(12)
    n1, n2 = 7, 13
    for dt in (np.float32, np.float64):
        s = rng.normal(size=(5, 300)).astype(dt)
        s[0, :4] = 0  # num == 0 takes 0, including 0/0
        q = rng.uniform(0, n1 + n2 - 1, size=(5, 300)).astype(dt)
        q[0, 0] = (n1 + n2 - 1) * n1 / (n1 + n2)  # den may reach 0 here with s = 0
        floor = _engine.welch_floor(n1, n2, 100 * np.finfo(dt).eps)
        ref = _engine._welch_from_sums(s, q, n1, n2, floor)
        got, qq = s.copy(), q.copy()
        _engine._welch_inplace(got, qq, np.empty_like(s), np.empty(s.shape, bool), n1, n2, floor)
        assert got.dtype == dt
        np.testing.assert_array_equal(got.view(np.uint8), ref.astype(dt).view(np.uint8))
        # the compiled kernel: the same operations in the same order
        kern = np.empty_like(s)
        _kernels.welch(s, q, _engine.welch_constants(n1, n2, floor, dt), kern)
        np.testing.assert_array_equal(kern.view(np.uint8), ref.astype(dt).view(np.uint8))
