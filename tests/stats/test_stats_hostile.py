"""Hostile and degenerate data through the public API, against references outside the engine.

References: the loop-over-relabelings brute force of ``tests/maxt_reference.py``,
``scipy.stats.permutation_test`` (exact), ``scipy.stats.ttest_ind`` and ``scipy.stats.rankdata``,
and counts worked out by hand in the test. Every end-to-end case also runs with the compiled
passes (:mod:`stats._kernels`) and with ``LOCKSTEP_KERNELS=numpy``: counts are exact, so p-values,
ranks and decisions must be identical, not close.

Shapes chosen to hit the 64-unit blocks of the tally: F = 1, 63, 64, 65 (padding of the last
block) and 129; designs small enough to enumerate (2 vs 2, 4 vs 5, 3 pairs).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats as sps
from maxt_reference import brute_maxt

from stats import _engine, all_unit_baseline, paired_permutation_test, permutation_test

ALTERNATIVES = ("two-sided", "greater", "less")
SCORE = {"two-sided": np.abs, "greater": lambda v: v, "less": np.negative}
COUNT_FIELDS = ("p_uncorrected", "p_maxt_single_step", "p_maxt_step_down", "rank", "in_family")


def _both_passes(monkeypatch, run, *args, **kwargs):
    """``run(*args, **kwargs)`` with the numpy passes, then the compiled ones; both results."""
    out = []
    for env in ("numpy", ""):
        monkeypatch.setenv("LOCKSTEP_KERNELS", env)
        _engine.compiled.cache_clear()
        assert (_engine.compiled() is None) == (env == "numpy")
        out.append(run(*args, **kwargs))
    _engine.compiled.cache_clear()
    return out


def _same_counts(a, b):
    for name in COUNT_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.best_unit == b.best_unit and a.critical_value == b.critical_value


def _all_labelings(n, n1):
    out = []
    for c in itertools.combinations(range(n), n1):
        r = np.zeros(n, bool)
        r[list(c)] = True
        out.append(r)
    return out


def _assert_matches_brute(res, x, mask, statistic, alternative):
    keep = res.in_family
    _, p_unc, p_ss, p_sd = brute_maxt(x[:, keep], mask, statistic, alternative,
                                      _all_labelings(mask.size, int(mask.sum())), exact=True)
    np.testing.assert_allclose(res.p_uncorrected[keep], p_unc, rtol=1e-12)
    np.testing.assert_allclose(res.p_maxt_single_step[keep], p_ss, rtol=1e-12)
    np.testing.assert_allclose(res.p_maxt_step_down[keep], p_sd, rtol=1e-12)


def _degenerate_family(seed, n, n1, f):
    """Integers with many ties, a separated unit (constant in each group: t infinite), a separated
    unit that is not constant (t finite), duplicated units, and constant units (out of the family)."""
    rng = np.random.default_rng(seed)
    mask = np.arange(n) < n1
    x = rng.integers(0, 4, size=(n, f)).astype(float)
    x[:, 0] = np.where(mask, 5.0, 1.0)  # separated: t = ±inf
    x[:, 1] = np.where(mask, 3.0, 0.0) + np.arange(n) % 2  # separated, finite t
    x[:, 2] = x[:, 3] = x[:, f - 1] = x[:, 4]  # duplicated units, one in the last (padded) block
    x[:, 5] = 7.0  # constant: dropped
    x[:, f - 2] = -1.0  # constant, in the last block
    return x, mask


# ----------------------------------------------------------------------------------------------
# exact enumeration against the brute force
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("f", [1, 63, 64, 65, 129])
@pytest.mark.parametrize("statistic", ["welch_t", "student_t", "mean_diff"])
def test_exact_four_vs_five_matches_brute_force(monkeypatch, f, statistic):
    # 4 vs 5: unbalanced, so Welch takes the row-by-row t of the kernel; C(9, 4) = 126 relabelings
    rng = np.random.default_rng(f)
    x = rng.normal(size=(9, f))
    x[:4, : min(f, 3)] += 2.0
    mask = np.arange(9) < 4
    for alternative in ALTERNATIVES:
        a, b = _both_passes(monkeypatch, all_unit_baseline,
            x, mask, statistic=statistic, alternative=alternative, exact_cap=10 ** 6)
        assert b.exact and b.n_resamples == 126
        _same_counts(a, b)
        _assert_matches_brute(b, x, mask, statistic, alternative)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n,n1,f", [(9, 4, 65), (8, 4, 65), (9, 4, 64), (8, 4, 63)])
def test_exact_degenerate_family_matches_brute_force(monkeypatch, dtype, n, n1, f):
    # integer data: relabelings tie exactly or differ by far more than the float32 tolerance
    x, mask = _degenerate_family(n + f, n, n1, f)
    for statistic in ("welch_t", "student_t"):
        for alternative in ALTERNATIVES:
            a, b = _both_passes(monkeypatch, all_unit_baseline,
                x, mask, statistic=statistic, alternative=alternative, exact_cap=10 ** 6,
                dtype=dtype)
            _same_counts(a, b)
            _assert_matches_brute(b, x, mask, statistic, alternative)
            assert not b.in_family[5] and not b.in_family[f - 2]
            # the separated unit: t infinite; by hand, only the identity (and, balanced, its
            # complement, whose t is -inf) reaches it, so p = 1/C(n, n1) or 2/C(n, n1)
            assert b.statistic[0] == np.inf
            total = len(_all_labelings(n, n1))
            hits = 2 if (alternative == "two-sided" and 2 * n1 == n) else 1
            if alternative != "less":
                assert b.p_uncorrected[0] == pytest.approx(hits / total)
            else:  # -t = -inf: every relabeling reaches it
                assert b.p_uncorrected[0] == 1.0
            # duplicated units: one statistic, one p-value each
            for name in ("p_uncorrected", "p_maxt_single_step", "p_maxt_step_down"):
                v = getattr(b, name)
                assert v[2] == v[3] == v[4] == v[f - 1], name


def test_two_vs_two_single_unit_by_hand(monkeypatch):
    # x = (1, 2.5 | 0.3, 4): the 6 relabelings of 2 vs 2 give mean differences
    # {1,2.5}-{0.3,4}=-0.4, {1,0.3}-{2.5,4}=-2.6, {1,4}-{2.5,0.3}=1.1 and their negatives;
    # |observed| = 0.4 is reached by all 6 (two-sided p = 1), by 4 of 6 ≥ -0.4 (greater).
    x = np.array([[1.0], [2.5], [0.3], [4.0]])
    mask = np.array([True, True, False, False])
    for alternative, p in (("two-sided", 1.0), ("greater", 4 / 6), ("less", 3 / 6)):
        for dtype in (np.float64, np.float32):
            a, b = _both_passes(monkeypatch, permutation_test,
                x[:, 0], mask, statistic="mean_diff", alternative=alternative, dtype=dtype)
            assert a.pvalue == b.pvalue == pytest.approx(p, rel=1e-12)
            assert b.statistic == pytest.approx(-0.4, rel=1e-6) and b.n_resamples == 6


# ----------------------------------------------------------------------------------------------
# one unit at a time against scipy
# ----------------------------------------------------------------------------------------------

def _welch(a, b, axis=-1):
    return sps.ttest_ind(a, b, axis=axis, equal_var=False).statistic


@pytest.mark.parametrize("n1,n2", [(2, 3), (3, 5), (5, 3), (2, 7)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unbalanced_welch_matches_scipy_exact(monkeypatch, n1, n2, dtype):
    rng = np.random.default_rng(10 * n1 + n2)
    x = rng.integers(0, 9, size=n1 + n2).astype(float)  # ties within and across relabelings
    x[0] += 3.0
    mask = np.arange(n1 + n2) < n1
    a_, b_ = x[mask], x[~mask]
    for alternative in ALTERNATIVES:
        if alternative == "two-sided":  # |T| >= |t|: scipy's "greater" on |t|
            ref = sps.permutation_test((a_, b_), lambda u, v, axis=-1: np.abs(_welch(u, v, axis)),
                                       permutation_type="independent", n_resamples=np.inf,
                                       alternative="greater")
        else:
            ref = sps.permutation_test((a_, b_), _welch, permutation_type="independent",
                                       n_resamples=np.inf, alternative=alternative)
        a, b = _both_passes(monkeypatch, permutation_test,
            x, mask, statistic="welch_t", alternative=alternative, dtype=dtype)
        assert a.pvalue == b.pvalue
        assert b.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
        assert b.statistic == pytest.approx(_welch(a_, b_), rel=1e-5)


@pytest.mark.parametrize("statistic", ["mean", "paired_t"])
def test_three_pairs_sign_flips_match_scipy_and_brute(monkeypatch, statistic):
    # N = 3 pairs: 8 sign vectors; F = 65 units (one padded block) through the baseline
    rng = np.random.default_rng(3)
    d = rng.normal(size=(3, 65)).round(2)
    d[:, 0] = [1.0, 2.0, 3.0]
    d[:, 7] = 0.0  # never varies: out of the family

    def stat(y, axis=0):
        if statistic == "mean":
            return y.mean(axis)
        return y.mean(axis) / (y.std(axis, ddof=1) / np.sqrt(y.shape[axis]))

    signs = np.array(list(itertools.product([1.0, -1.0], repeat=3)))
    for alternative in ALTERNATIVES:
        a, b = _both_passes(monkeypatch, all_unit_baseline,
            d, None, statistic=statistic, alternative=alternative)
        _same_counts(a, b)
        keep = b.in_family
        assert not keep[7] and b.exact and b.n_resamples == 8
        dk = d[:, keep]
        t = SCORE[alternative](stat(dk))
        with np.errstate(divide="ignore", invalid="ignore"):
            T = SCORE[alternative](np.array([stat(dk * s[:, None]) for s in signs]))
        thr = np.where(np.isinf(t), t, t - 1e-9 * (1 + np.abs(t)))
        p_unc = np.maximum((T >= thr).sum(0), 1) / 8
        p_ss = np.maximum((T.max(1)[:, None] >= thr).sum(0), 1) / 8
        np.testing.assert_allclose(b.p_uncorrected[keep], p_unc, rtol=1e-12)
        np.testing.assert_allclose(b.p_maxt_single_step[keep], p_ss, rtol=1e-12)
        # unit 0, (1, 2, 3): every difference positive, so only the identity reaches it one-sided
        score = SCORE[alternative]
        ref = sps.permutation_test((d[:, 0],), lambda y, axis=-1, sc=score: sc(stat(y, axis)),
                                   permutation_type="samples", n_resamples=np.inf,
                                   alternative="greater")
        assert b.p_uncorrected[0] == pytest.approx(ref.pvalue, rel=1e-12)
        one = paired_permutation_test(d[:, 0], statistic=statistic, alternative=alternative)
        assert one.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# scale, Monte Carlo, residual resampling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_near_1e30_and_1e_minus_30_are_scale_free(monkeypatch, scale, dtype):
    # every statistic is equivariant under one positive scale: p-values and ranks of x·scale are
    # those of x (brute force on x), t statistics those of scipy on x
    x, mask = _degenerate_family(7, 9, 4, 65)
    x = 20.0 * x + np.random.default_rng(1).integers(-2, 3, size=x.shape)  # integers: exact ties only
    x[:, 5] = x[:, 63] = 0.0  # constant (a nonzero constant is test_constant_units_leave_the_family)
    for statistic in ("welch_t", "mean_diff"):
        a, b = _both_passes(monkeypatch, all_unit_baseline,
            x * scale, mask, statistic=statistic, alternative="two-sided", exact_cap=10 ** 6,
            dtype=dtype)
        _same_counts(a, b)
        _assert_matches_brute(b, x, mask, statistic, "two-sided")
        keep = b.in_family
        if statistic == "welch_t":
            ref = _welch(x[mask][:, keep], x[~mask][:, keep], axis=0)
            # documented (stats._engine): |t| beyond about 1/sqrt(rtol) (362 in float32, 6.7e6 in
            # float64) is not resolved and is reported as ±inf; here one unit has t = 701
            big = np.abs(ref) > (400.0 if dtype == np.float32 else 1e7)
            np.testing.assert_array_equal(b.statistic[keep][big], np.sign(ref[big]) * np.inf)
            np.testing.assert_allclose(b.statistic[keep][~big], ref[~big], rtol=1e-4)
            np.testing.assert_array_equal(b.rank[keep], sps.rankdata(-np.abs(ref), method="max"))
        else:
            ref = x[mask][:, keep].mean(0) - x[~mask][:, keep].mean(0)
            np.testing.assert_allclose(b.statistic[keep], ref * scale, rtol=1e-4, atol=1e-6 * scale)


def _mc_labelings(n, n1, n_res, seed):
    """The Monte Carlo relabelings, re-derived from the documented rule: group A is the first n1
    items of ``Generator.permuted`` of 0..n-1, drawn in blocks of 1,024 rows from one generator."""
    rng = np.random.default_rng(seed)
    out, left = [], n_res
    while left > 0:
        b = min(1024, left)
        idx = rng.permuted(np.broadcast_to(np.arange(n), (b, n)), axis=1)[:, :n1]
        r = np.zeros((b, n), bool)
        np.put_along_axis(r, idx, True, axis=1)
        out.append(r)
        left -= b
    return list(np.concatenate(out))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_monte_carlo_unbalanced_welch_matches_brute_force_with_the_same_draws(monkeypatch, dtype):
    x, mask = _degenerate_family(11, 17, 5, 65)
    x[:, 6:] += np.random.default_rng(2).normal(size=(17, 59)).round(1)
    x[:, 5] = 7.0
    x[:, 63] = -1.0
    labelings = _mc_labelings(17, 5, 1500, 4)
    for alternative in ALTERNATIVES:
        a, b = _both_passes(monkeypatch, all_unit_baseline,
            x, mask, statistic="welch_t", alternative=alternative, exact_cap=0, n_resamples=1500,
            rng=4, batch=333, dtype=dtype, target="u0")
        _same_counts(a, b)
        np.testing.assert_array_equal(a.target_null, b.target_null)
        keep = b.in_family
        _, p_unc, p_ss, p_sd = brute_maxt(x[:, keep], mask, "welch_t", alternative, labelings,
                                          exact=False)
        np.testing.assert_allclose(b.p_uncorrected[keep], p_unc, rtol=1e-12)
        np.testing.assert_allclose(b.p_maxt_single_step[keep], p_ss, rtol=1e-12)
        np.testing.assert_allclose(b.p_maxt_step_down[keep], p_sd, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equal_means_wild_matches_scipy_on_every_resample(monkeypatch, dtype):
    # residual resampling through the compiled tally: the wild draws re-derived (one block of
    # Rademacher signs per 1,024 rows) and scipy's Welch t on each resampled data set
    rng = np.random.default_rng(21)
    n1, n2, f = 5, 9, 65
    mask = np.arange(n1 + n2) < n1
    x = rng.normal(size=(n1 + n2, f)).round(1) * np.where(mask, 3.0, 1.0)[:, None]
    x[:n1, :4] += 2.0
    x[:, 10] = x[:, 11]
    x[:, 64] = 2.0  # constant, in the padded block
    n_res = 1200
    a, b = _both_passes(monkeypatch, all_unit_baseline,
        x, mask, statistic="welch_t", null="equal_means", resampling="wild", n_resamples=n_res,
        rng=5, dtype=dtype)
    _same_counts(a, b)
    keep = b.in_family
    xa, xb = x[mask][:, keep], x[~mask][:, keep]
    ea = (xa - xa.mean(0)) * np.sqrt(n1 / (n1 - 1))
    eb = (xb - xb.mean(0)) * np.sqrt(n2 / (n2 - 1))
    g = np.random.default_rng(5)
    signs = np.concatenate([1 - 2 * g.integers(0, 2, size=(min(1024, n_res - i), n1 + n2),
                                                 dtype=np.int8) for i in range(0, n_res, 1024)])
    T = np.abs(_welch(ea[None] * signs[:, :n1, None], eb[None] * signs[:, n1:, None], axis=1))
    t = np.abs(_welch(xa, xb, axis=0))
    thr = t - 1e-9 * (1 + t)
    np.testing.assert_allclose(b.p_uncorrected[keep], (1 + (T >= thr).sum(0)) / (1 + n_res))
    np.testing.assert_allclose(b.p_maxt_single_step[keep],
                               (1 + (T.max(1)[:, None] >= thr).sum(0)) / (1 + n_res))


# ----------------------------------------------------------------------------------------------
# regressions: defects found by this file (see the report of the hostile-data review)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("statistic", ["welch_t", "student_t", "mean_diff"])
@pytest.mark.parametrize("n", [6, 7, 9, 10])
def test_identical_units_share_the_largest_rank(monkeypatch, statistic, n):
    # five copies of one unit have one statistic (scipy: identical columns, identical t), so they
    # tie, and a tie takes the largest rank it shares (rankdata "max"): 5 each. The target,
    # copy u4, must not be reported first, nor above 0 % of the family, nor as the best unit.
    rng = np.random.default_rng(n)
    col = rng.normal(size=n).round(2)
    x = np.repeat(col[:, None], 5, axis=1)
    mask = np.arange(n) < n // 2
    a, b = _both_passes(monkeypatch, all_unit_baseline,
        x, mask, statistic=statistic, target="u4", n_resamples=99, rng=1)
    if statistic == "mean_diff":
        ref = x[mask].mean(0) - x[~mask].mean(0)
    else:
        ref = sps.ttest_ind(x[mask], x[~mask], equal_var=statistic == "student_t").statistic
    expected = sps.rankdata(-np.abs(ref), method="max")
    np.testing.assert_array_equal(expected, [5] * 5)
    for r in (a, b):
        np.testing.assert_array_equal(r.rank, expected)
        assert r.target_rank == 5 and r.target_percentile == 0.0
        assert r.best_unit == "u0"  # first in input order among ties


@pytest.mark.parametrize("scale", [1e39, 1e-101])
def test_float32_mean_diff_out_of_float32_range_is_refused(monkeypatch, scale):
    # mean differences of 1e39 overflow float32 (and 1e-101 underflow to 0): before, a NaN statistic
    # with p = 1/P for every unit (a false discovery), or a 0 statistic with p = 1. Now one ValueError
    # naming the dtype and the fix, with either pass; float64 gives the brute-force answer.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3))
    x[:4, 0] += 3.0
    mask = np.arange(9) < 4
    for env in ("numpy", ""):
        monkeypatch.setenv("LOCKSTEP_KERNELS", env)
        _engine.compiled.cache_clear()
        for null in (None, "equal_means"):
            with pytest.raises(ValueError, match=r"outside the range of float32, the working `dtype`.*"
                                                 r"pass dtype=numpy.float64 or rescale `x`"):
                all_unit_baseline(x * scale, mask, statistic="mean_diff", dtype=np.float32,
                                  exact_cap=10 ** 6, null=null)
    _engine.compiled.cache_clear()
    b = all_unit_baseline(x * scale, mask, statistic="mean_diff", dtype=np.float64, exact_cap=10 ** 6)
    assert np.all(np.isfinite(b.statistic))
    _assert_matches_brute(b, x, mask, "mean_diff", "two-sided")


@pytest.mark.parametrize("scale", [1e39, 1e-101])
def test_float32_paired_mean_out_of_float32_range_is_refused(monkeypatch, scale):
    # the paired mean of differences around 1e39 overflows float32 (statistic inf, p 3× too large
    # before the fix): refused naming the dtype; in float64, scipy's exact sign-flip p of the
    # unscaled differences (the mean is equivariant under one positive scale)
    d = np.array([[1.0, -0.5], [2.0, 1.5], [3.0, -2.0], [2.5, 0.25], [1.5, -1.0]])
    for env in ("numpy", ""):
        monkeypatch.setenv("LOCKSTEP_KERNELS", env)
        _engine.compiled.cache_clear()
        with pytest.raises(ValueError, match="paired differences outside the range of float32"):
            all_unit_baseline(d * scale, None, statistic="mean", dtype=np.float32)
    _engine.compiled.cache_clear()
    b = all_unit_baseline(d * scale, None, statistic="mean", dtype=np.float64)
    for j in range(2):
        ref = sps.permutation_test((d[:, j],), lambda y, axis=-1: np.abs(y.mean(axis)),
                                   permutation_type="samples", n_resamples=np.inf,
                                   alternative="greater")
        assert b.p_uncorrected[j] == pytest.approx(ref.pvalue, rel=1e-12)
        assert b.statistic[j] == pytest.approx(d[:, j].mean() * scale, rel=1e-12)


@pytest.mark.parametrize("scale", [2.0 ** 600, 2.0 ** -600])
def test_float64_t_statistics_at_extreme_scales_are_exact(monkeypatch, scale):
    # |x| around 4e180 (or 2.4e-181): finite, accepted; the per-unit variance x² overflowed
    # (underflowed) before each unit was scaled by a power of two. t is scale-free, so the answer is
    # the brute force on x -- never t = 0 with p = 1, nor every unit dropped as "constant".
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 3))
    x[:4, 0] += 3.0
    mask = np.arange(9) < 4

    a, b = _both_passes(monkeypatch, all_unit_baseline, x * scale, mask, statistic="welch_t",
                        exact_cap=10 ** 6)
    _same_counts(a, b)
    assert b.family_size == 3
    np.testing.assert_allclose(b.statistic, _welch(x[mask], x[~mask], axis=0), rtol=1e-9)
    _assert_matches_brute(b, x, mask, "welch_t", "two-sided")


@pytest.mark.parametrize("scale", [2.0 ** 600, 2.0 ** -600])
def test_float64_paired_t_at_extreme_scales_is_exact(monkeypatch, scale):
    # the sum of squared differences overflows (t = 0) or underflows (the unit is dropped as if
    # every difference were 0); the paired t is scale-free: scipy's exact sign-flip p on d
    d = np.array([[1.0, -0.5], [2.0, 1.5], [3.0, -2.0], [2.5, 0.25], [1.5, -1.0]])

    def t(y, axis=-1):
        return y.mean(axis) / (y.std(axis, ddof=1) / np.sqrt(y.shape[axis]))

    a, b = _both_passes(monkeypatch, all_unit_baseline, d * scale, None, statistic="paired_t")
    _same_counts(a, b)
    assert b.family_size == 2
    for j in range(2):
        ref = sps.permutation_test((d[:, j],), lambda y, axis=-1: np.abs(t(y, axis)),
                                   permutation_type="samples", n_resamples=np.inf,
                                   alternative="greater")
        assert b.p_uncorrected[j] == pytest.approx(ref.pvalue, rel=1e-12)
        assert b.statistic[j] == pytest.approx(t(d[:, j], 0), rel=1e-9)


@pytest.mark.parametrize("n,n1,value", [(10, 5, 0.3), (7, 3, 2.2), (9, 4, 7e30)])
def test_constant_units_leave_the_family(monkeypatch, n, n1, value):
    # a unit that never varies cannot separate anything (documented: dropped from the family,
    # statistic NaN, rank 0). Its mean n·v/n is not v in floating point for these values
    # (sum of 10 × 0.3 rounds), which must not turn it into a unit with t = ±inf ranked first.
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 20))
    x[:, 0] = value
    mask = np.arange(n) < n1
    for statistic in ("welch_t", "student_t", "mean_diff"):
        for null in (None, "equal_means"):
            a, b = _both_passes(monkeypatch, all_unit_baseline,
                x, mask, statistic=statistic, target="u1", n_resamples=199, rng=1, null=null)
            _same_counts(a, b)
            assert not b.in_family[0] and np.isnan(b.statistic[0]) and b.rank[0] == 0
            assert b.family_size == 19 and ("u0", "constant") in b.dropped_units
            assert b.best_unit != "u0" and "units_dropped" in [f.code for f in b.flags]
            # the rest of the family is ranked as scipy ranks it
            if statistic != "mean_diff":
                t = sps.ttest_ind(x[mask][:, 1:], x[~mask][:, 1:],
                                  equal_var=statistic == "student_t").statistic
                np.testing.assert_array_equal(b.rank[1:], sps.rankdata(-np.abs(t), method="max"))
        one = permutation_test(x[:, 0], mask, statistic=statistic)
        assert np.isnan(one.statistic) and one.pvalue == 1.0
