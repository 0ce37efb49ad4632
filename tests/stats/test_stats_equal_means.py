"""The equal-means null (residual resampling): arithmetic against a loop, then calibration."""

import numpy as np
import pytest
import scipy.stats as sps

from stats import _engine, all_unit_baseline, permutation_test


def _draws(resampling, n1, n2, n_res, seed):
    """The draws of stats._resample.draws, re-derived: blocks of 1,024 rows from one generator."""
    rng = np.random.default_rng(seed)
    wa, wb = [], []
    left = n_res
    while left > 0:
        b = min(_engine._RNG_BLOCK, left)
        if resampling == "wild":
            s = 1 - 2 * rng.integers(0, 2, size=(b, n1 + n2), dtype=np.int8)
            wa.append(s[:, :n1])
            wb.append(s[:, n1:])
        else:
            wa.append(rng.integers(0, n1, size=(b, n1)))
            wb.append(rng.integers(0, n2, size=(b, n2)))
        left -= b
    return np.concatenate(wa), np.concatenate(wb)


def _reference(x, g, statistic, alternative, resampling, n_res, seed):
    """Every resample materialised (P×n×F) and scipy.stats.ttest_ind along the prompts."""
    a, b = x[g], x[~g]
    n1, n2 = len(a), len(b)
    ea = (a - a.mean(0)) * np.sqrt(n1 / (n1 - 1))
    eb = (b - b.mean(0)) * np.sqrt(n2 / (n2 - 1))

    def stat(u, v, axis):
        if statistic == "mean_diff":
            return u.mean(axis) - v.mean(axis)
        # scipy.stats.ttest_ind(u, v, axis=axis, equal_var=...)
        return sps.ttest_ind(u, v, axis=axis, equal_var=statistic == "student_t").statistic

    sc = {"two-sided": np.abs, "greater": lambda v: v, "less": lambda v: -v}[alternative]
    t = sc(stat(a, b, 0))
    wa, wb = _draws(resampling, n1, n2, n_res, seed)
    if resampling == "wild":
        T = sc(stat(ea[None] * wa[:, :, None], eb[None] * wb[:, :, None], 1))
    else:
        T = sc(stat(ea[wa], eb[wb], 1))
    thr = t - 1e-9 * (1 + np.abs(t))
    pv = lambda c: (1 + c) / (1 + len(T))
    o = np.argsort(-t, kind="stable")
    U = np.maximum.accumulate(T[:, o][:, ::-1], axis=1)[:, ::-1]
    raw = pv((U >= thr[o]).sum(0))
    p_sd = np.empty_like(raw)
    p_sd[o] = np.maximum.accumulate(raw)
    return t, pv((T >= thr).sum(0)), pv((T.max(1)[:, None] >= thr).sum(0)), p_sd


@pytest.mark.parametrize("resampling", ["wild", "bootstrap"])
@pytest.mark.parametrize("statistic,alternative", [("welch_t", "two-sided"), ("welch_t", "less"),
                                                   ("student_t", "greater"), ("mean_diff", "two-sided")])
def test_equal_means_baseline_matches_a_loop_over_resamples(resampling, statistic, alternative):
    rng = np.random.default_rng(40)
    g = np.r_[np.ones(6, bool), np.zeros(9, bool)]
    x = rng.normal(size=(15, 90)) * rng.uniform(0.5, 2, 90) * np.where(g, 2.0, 1.0)[:, None]
    x[:6, :5] += 1.5
    r = all_unit_baseline(x, g, statistic=statistic, alternative=alternative, null="equal_means",
                          resampling=resampling, n_resamples=1300, rng=9, batch=77)
    t, p_unc, p_ss, p_sd = _reference(x, g, statistic, alternative, resampling, 1300, 9)
    assert not r.exact and r.n_resamples == 1300 and r.resampling == resampling
    sc = {"two-sided": np.abs, "greater": lambda v: v, "less": lambda v: -v}[alternative]
    np.testing.assert_allclose(sc(r.statistic), t, rtol=1e-10)
    np.testing.assert_allclose(r.p_uncorrected, p_unc)
    np.testing.assert_allclose(r.p_maxt_single_step, p_ss)
    np.testing.assert_allclose(r.p_maxt_step_down, p_sd)
    # the per-unit test is the same resampling
    one = permutation_test(x[:, :3], g, statistic=statistic, alternative=alternative,
                           null="equal_means", resampling=resampling, n_resamples=1300, rng=9)
    np.testing.assert_allclose(one.pvalue, p_unc[:3])
    assert one.null == "equal_means" and one.null_distribution.shape == (1300, 3)


def test_equal_means_batch_invariance():
    rng = np.random.default_rng(41)
    g = np.r_[np.ones(8, bool), np.zeros(12, bool)]
    x = rng.normal(size=(20, 70))
    a = all_unit_baseline(x, g, null="equal_means", n_resamples=2100, rng=3, batch=50)
    b = all_unit_baseline(x, g, null="equal_means", n_resamples=2100, rng=3, batch=4096)
    np.testing.assert_array_equal(a.p_maxt_step_down, b.p_maxt_step_down)
    np.testing.assert_array_equal(a.rank, b.rank)
    np.testing.assert_allclose(a.null_max, b.null_max, rtol=1e-13)


def _fwer(sims, n1, n2, sd_a, f, seed, **kw):
    rng = np.random.default_rng(seed)
    g = np.r_[np.ones(n1, bool), np.zeros(n2, bool)]
    errors, flagged = 0, 0
    for _ in range(sims):
        x = rng.normal(size=(n1 + n2, f)) * np.where(g, sd_a, 1.0)[:, None]
        r = all_unit_baseline(x, g, n_resamples=199, rng=rng, **kw)
        errors += bool(np.any(r.p_maxt_step_down <= 0.05))
        flagged += "not_exchangeable" in {fl.code for fl in r.flags}
    return errors, flagged


def test_equal_means_max_t_is_calibrated_where_permutation_is_not():
    # 8 vs 14, smaller group SD x3, 60 null units, 150 simulated studies (bench/bench_calibration.py
    # runs the 400-study, 200-unit version). Equal means hold, variances differ.
    sims = 150
    lo, hi = sps.binom.ppf([0.005, 0.995], sims, 0.05)  # 99 % binomial interval around alpha
    err_em, _ = _fwer(sims, 8, 14, 3.0, 60, 50, null="equal_means")
    assert lo <= err_em <= hi
    err_perm, flagged = _fwer(sims, 8, 14, 3.0, 60, 50, exact_cap=0)
    assert err_perm > hi  # the permutation max-T's family-wise error for equal means
    assert flagged >= 0.9 * sims  # ... and the flag that says so


def test_equal_means_finds_a_planted_effect():
    rng = np.random.default_rng(51)
    g = np.r_[np.ones(10, bool), np.zeros(14, bool)]
    x = rng.normal(size=(24, 200)) * np.where(g, 2.0, 1.0)[:, None]
    x[:10, 7] += 5.0
    r = all_unit_baseline(x, g, target="u7", null="equal_means", n_resamples=999, rng=0)
    assert r.best_unit == "u7" and r.target_p_maxt <= 0.01


def test_equal_means_float32_agrees_with_float64():
    rng = np.random.default_rng(52)
    g = np.r_[np.ones(7, bool), np.zeros(11, bool)]
    x = rng.normal(size=(18, 40)) * np.where(g, 2.0, 1.0)[:, None]
    p64 = all_unit_baseline(x, g, null="equal_means", n_resamples=999, rng=1)
    p32 = all_unit_baseline(x, g, null="equal_means", n_resamples=999, rng=1, dtype=np.float32)
    # the same draws; float32 sums move a resampled t by ~1e-6 relative, so a count can move by a
    # resample that lands within that of an observed t
    np.testing.assert_allclose(p32.p_uncorrected, p64.p_uncorrected, atol=2 / 1000)
    np.testing.assert_allclose(p32.statistic, p64.statistic, rtol=1e-5)
