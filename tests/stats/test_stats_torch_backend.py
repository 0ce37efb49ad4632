"""The torch backend of the max-T baseline (stats._torch) against the numpy engine and a brute force.

Both backends draw the same relabelings from the same generator, so p-values (counts over the same
relabelings), ranks and decisions are asserted exactly; null values, which come out of a product
whose summation order differs between BLAS and torch, within a stated tolerance. On a machine
without CUDA the torch backend runs on the CPU through the same code as on a GPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats as sps

from stats import all_unit_baseline, use_backend
from stats._torch import resolve

#: null values and critical values: relative tolerance by working dtype (a few ulp of a sum of N terms)
RTOL = {np.float64: 1e-12, np.float32: 2e-5}
EXACT_FIELDS = ("in_family", "rank", "p_uncorrected", "p_maxt_single_step", "p_maxt_step_down",
                "p_holm", "q_bh")


def _both(x, group, **kw):
    a = all_unit_baseline(x, group, backend="numpy", **kw)
    b = all_unit_baseline(x, group, backend="torch", **kw)
    return a, b


def _assert_same(a, b, dtype):
    assert a.engine == "numpy" and b.engine.startswith("torch:")
    for name in EXACT_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.n_resamples, a.exact, a.family_size, a.best_unit, a.target_rank) == \
           (b.n_resamples, b.exact, b.family_size, b.best_unit, b.target_rank)
    assert a.target_p_maxt == b.target_p_maxt
    assert a.dropped_units == b.dropped_units
    rtol = RTOL[dtype]
    # the observed statistics come from the same host computation in both backends (separate calls:
    # compared within tolerance, not bit for bit)
    np.testing.assert_allclose(b.statistic, a.statistic, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(b.null_max, a.null_max, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(b.critical_value, a.critical_value, rtol=rtol, atol=rtol)
    if a.target_null is not None:
        np.testing.assert_allclose(b.target_null, a.target_null, rtol=rtol, atol=rtol)
    assert b.summary()["engine"] == b.engine


def _data(n, f, rng, shift_unit=1):
    x = rng.normal(size=(n, f))
    x[:, 0] = 3.0  # a constant unit: out of the family in both backends
    x[: n // 2, shift_unit] += 3.0
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n1,n,statistic,alternative", [
    (12, 24, "welch_t", "two-sided"),     # balanced Welch: one product
    (9, 25, "welch_t", "two-sided"),      # unequal Welch: two products and the floored t
    (9, 25, "welch_t", "greater"),
    (14, 24, "mean_diff", "less"),
    (10, 25, "student_t", "two-sided"),
])
def test_monte_carlo_matches_numpy(dtype, n1, n, statistic, alternative):
    rng = np.random.default_rng(11)
    x = _data(n, 400, rng)
    group = np.arange(n) < n1
    x[group, 1] += 3.0
    a, b = _both(x, group, statistic=statistic, alternative=alternative, n_resamples=1999, rng=3,
                 dtype=dtype, target="u1", exact_cap=0)
    assert not a.exact and a.family_size == 399
    _assert_same(a, b, dtype)
    if alternative != "less":  # the planted unit is found by both
        assert a.target_rank == 1 and a.target_p_maxt <= 0.01


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exact_enumeration_c10_5_matches_numpy(dtype):
    rng = np.random.default_rng(5)
    x = _data(10, 300, rng)
    x[:5, 7] = 1.0  # separated: infinite t, the identity and its complement count
    x[5:, 7] = 0.0
    x[:, 8] = x[:, 7]  # tied observed statistics (here infinite, and below finite): the step-down
    x[:, 9] = x[:, 2]  # order of tied units is the numpy engine's (input order)
    group = np.arange(10) < 5
    a, b = _both(x, group, statistic="welch_t", dtype=dtype, target="u7")
    assert a.exact and a.n_resamples == 252  # C(10,5), half enumerated, complements folded in
    assert np.isinf(a.target_statistic) and a.target_rank == 2  # tied with u8: the largest rank
    _assert_same(a, b, dtype)


def test_batch_does_not_change_the_torch_result():
    rng = np.random.default_rng(9)
    x = _data(21, 150, rng)
    group = np.arange(21) < 8
    kw = {"statistic": "welch_t", "n_resamples": 999, "rng": 4, "exact_cap": 0, "backend": "torch"}
    r1 = all_unit_baseline(x, group, batch=37, **kw)
    r2 = all_unit_baseline(x, group, batch=1000, **kw)
    for name in EXACT_FIELDS:
        np.testing.assert_array_equal(getattr(r1, name), getattr(r2, name), err_msg=name)


@pytest.mark.parametrize("resampling", ["wild", "bootstrap"])
@pytest.mark.parametrize("statistic", ["welch_t", "mean_diff"])
def test_equal_means_null_matches_numpy(resampling, statistic):
    rng = np.random.default_rng(2)
    x = _data(22, 200, rng)
    x[:9] *= 3.0  # unequal spreads: the reason for this null
    group = np.arange(22) < 9
    a, b = _both(x, group, statistic=statistic, null="equal_means", resampling=resampling,
                 n_resamples=999, rng=6, target="u1")
    _assert_same(a, b, np.float64)


@pytest.mark.parametrize("statistic", ["mean", "paired_t"])
def test_paired_sign_flips_match_numpy(statistic):
    rng = np.random.default_rng(4)
    d = rng.normal(size=(11, 120))
    d[:, 2] += 1.0
    d[:, 5] = 0.0
    a, b = _both(d, None, statistic=statistic, target="u2")  # 2^11 flips: exact, halved
    assert a.exact and a.n_resamples == 2048
    _assert_same(a, b, np.float64)
    a, b = _both(d, None, statistic=statistic, target="u2", exact_cap=0, n_resamples=999, rng=1)
    _assert_same(a, b, np.float64)


def _brute_force(x, group):
    """Exact max-T by a loop over every relabeling (scipy's Welch t per relabeling), with the
    Westfall–Young step-down (Algorithm 2.8), ties counted against (within 1e-9)."""
    n, f = x.shape
    n1 = int(group.sum())
    t_obs = np.abs(sps.ttest_ind(x[group], x[~group], equal_var=False).statistic)
    null = []
    for a in itertools.combinations(range(n), n1):
        m = np.zeros(n, bool)
        m[list(a)] = True
        null.append(np.abs(sps.ttest_ind(x[m], x[~m], equal_var=False).statistic))
    null = np.array(null)
    P = null.shape[0]
    ge = null >= t_obs - 1e-9 * (np.abs(t_obs) + 1)
    p_unc = ge.sum(0) / P
    p_ss = (null.max(1)[:, None] >= t_obs - 1e-9 * (np.abs(t_obs) + 1)).sum(0) / P
    order = np.argsort(-t_obs)
    p_sd = np.empty(f)
    running = 0.0
    for i, j in enumerate(order):
        u = null[:, order[i:]].max(1)
        running = max(running, np.sum(u >= t_obs[j] - 1e-9 * (abs(t_obs[j]) + 1)) / P)
        p_sd[j] = running
    return t_obs, p_unc, p_ss, p_sd


@pytest.mark.parametrize("n1", [4, 3])  # balanced (complements folded in) and unequal groups
def test_torch_backend_against_a_brute_force_loop(n1):
    rng = np.random.default_rng(8)
    n = 8
    x = rng.normal(size=(n, 6))
    x[:n1, 2] += 2.0
    group = np.arange(n) < n1
    t_obs, p_unc, p_ss, p_sd = _brute_force(x, group)
    r = all_unit_baseline(x, group, statistic="welch_t", backend="torch")
    assert r.exact and r.n_resamples == (70 if n1 == 4 else 56)  # C(8,4) or C(8,3)
    np.testing.assert_allclose(np.abs(r.statistic), t_obs, rtol=1e-10)
    np.testing.assert_allclose(r.p_uncorrected, p_unc, rtol=1e-12)
    np.testing.assert_allclose(r.p_maxt_single_step, p_ss, rtol=1e-12)
    np.testing.assert_allclose(r.p_maxt_step_down, p_sd, rtol=1e-12)


def test_backend_choice_and_validation():
    assert resolve("numpy") == "numpy"
    import torch

    assert resolve("torch") == ("torch:cuda" if torch.cuda.is_available() else "torch:cpu")
    assert resolve("auto") == ("torch:cuda" if torch.cuda.is_available() else "numpy")
    x = np.random.default_rng(0).normal(size=(8, 3))
    g = np.arange(8) < 4
    assert all_unit_baseline(x, g).engine == "numpy"
    with use_backend("torch"):
        assert all_unit_baseline(x, g).engine.startswith("torch:")
        assert all_unit_baseline(x, g, backend="numpy").engine == "numpy"
    assert all_unit_baseline(x, g).engine == "numpy"
    with pytest.raises(ValueError, match="`backend` must be one of"):
        all_unit_baseline(x, g, backend="gpu")
