"""The compiled passes of the engine (stats._kernels) against the numpy passes they replace.

Counts and maxima are comparisons, integer sums and maxima: exact in any order, so the kernel and
the numpy passes must agree exactly (not within a tolerance), chunk by chunk and end to end, on
scores with ties at the thresholds, padding, infinite thresholds and every alternative.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stats import _engine, _kernels, all_unit_baseline, permutation_test

MODES = {"two-sided": 0, "greater": 1, "less": 2}


def _tally_both(g, thr_sorted, alternative, stepdown, k=_engine._SD_BLOCK):
    """One chunk ``g`` (product-space values in sorted order) through both passes."""
    lay = _engine._Layout.of(-np.arange(thr_sorted.size, dtype=float), k)  # sorted = input order
    cols = lay.to_columns(g, 0.0)
    dt = g.dtype
    numpy_t = _engine._Tally(lay, thr_sorted, dt, stepdown)
    s = cols.copy()
    if alternative == "two-sided":
        np.abs(s, out=s)
    elif alternative == "less":
        np.negative(s, out=s)
    if lay.pad:
        s[:, lay.col[thr_sorted.size:]] = -np.inf
    numpy_t.add(s, np.empty(s.shape, bool))
    kern_t = _engine._Tally(lay, thr_sorted, dt, stepdown)
    kern_t.add_compiled(_kernels, np.ascontiguousarray(cols), alternative)
    return numpy_t, kern_t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alternative", list(MODES))
@pytest.mark.parametrize("n_units", [1, 63, 64, 200, 1000])
def test_compiled_tally_equals_the_numpy_passes(dtype, alternative, n_units):
    rng = np.random.default_rng(n_units)
    rows = 300
    g = rng.normal(size=(rows, n_units)).round(1).astype(dtype)  # rounded: many exact ties
    g[5] = 0.0  # a row of zeros (±0 under negation)
    g[6] = -g[7]
    # thresholds in descending order, some equal to scores (ties count), one +inf, one -inf
    obs = np.sort(np.abs(rng.normal(size=n_units)).round(1))[::-1].astype(dtype)
    if alternative != "two-sided":
        obs = np.sort(rng.normal(size=n_units).round(1))[::-1].astype(dtype)
    thr = obs.astype(np.float64)
    if n_units > 2:
        thr[0] = np.inf
        thr[-1] = -np.inf
    for stepdown in (True, False):
        a, b = _tally_both(g, thr, alternative, stepdown)
        np.testing.assert_array_equal(a.count_unc, b.count_unc)
        np.testing.assert_array_equal(np.concatenate(a.maxima), np.concatenate(b.maxima))
        if stepdown:
            np.testing.assert_array_equal(a.sd_all, b.sd_all)
            np.testing.assert_array_equal(a.sd_part, b.sd_part)
        # the counts can fail: thresholds are met by some rows and missed by others
        assert 0 < a.count_unc[lay_mid(n_units)] < rows or n_units == 1


def lay_mid(n_units):
    """A column near the middle of the sorted order (its column index in the layout)."""
    lay = _engine._Layout.of(-np.arange(n_units, dtype=float), _engine._SD_BLOCK)
    return lay.col[n_units // 2]


def test_the_integer_keys_order_as_the_floats_do():
    # the block maxima are taken on integer keys; their order must be the floats' order,
    # negatives, ±0, subnormals and infinities included
    vals = np.array([-np.inf, -3e38, -1.5, -1e-42, -0.0, 0.0, 1e-42, 2.5, 3e38, np.inf], np.float32)
    lay = _engine._Layout.of(-np.arange(vals.size, dtype=float), _engine._SD_BLOCK)
    for alternative, score in (("greater", vals), ("less", -vals), ("two-sided", np.abs(vals))):
        for perm in (np.arange(vals.size), np.arange(vals.size)[::-1]):
            g = np.ascontiguousarray(lay.to_columns(vals[perm][None, :], 0.0))
            t = _engine._Tally(lay, np.full(vals.size, np.inf), np.float32, False)
            t.add_compiled(_kernels, g, alternative)
            assert t.maxima[0][0] == score.max()


@pytest.mark.parametrize("statistic,n1", [("welch_t", 12), ("welch_t", 10), ("mean_diff", 7)])
def test_baseline_with_and_without_the_kernels(monkeypatch, statistic, n1):
    # end to end: every count-derived field identical, statistics identical (same product)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 150))
    x[:n1, :5] += 3.0
    x[:, 7] = 2.0  # constant: dropped from the family
    group = np.arange(20) < n1
    runs = {}
    for passes in ("numpy", "compiled"):
        monkeypatch.setenv("LOCKSTEP_KERNELS", "numpy" if passes == "numpy" else "")
        _engine.compiled.cache_clear()
        assert (_engine.compiled() is None) == (passes == "numpy")
        runs[passes] = [all_unit_baseline(x, group, statistic=statistic, alternative=alt,
                                          n_resamples=999, rng=np.random.default_rng(8),
                                          dtype=np.float32, target="u0")
                        for alt in MODES]
    _engine.compiled.cache_clear()
    for a, b in zip(runs["numpy"], runs["compiled"]):
        for name in ("p_uncorrected", "p_maxt_single_step", "p_maxt_step_down", "rank", "q_bh",
                     "statistic", "null_max", "target_null"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert a.target_p_maxt == b.target_p_maxt and a.best_unit == b.best_unit
        assert a.critical_value == b.critical_value
    # and the planted units are found (the comparison is not between two empty results)
    assert runs["compiled"][0].p_maxt_step_down[:5].max() < 0.05


def test_permutation_test_with_and_without_the_kernels(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 40))
    group = np.arange(16) < 8
    out = []
    for env in ("numpy", ""):
        monkeypatch.setenv("LOCKSTEP_KERNELS", env)
        _engine.compiled.cache_clear()
        out.append(permutation_test(x, group, statistic="welch_t", exact_cap=20_000,
                                    n_resamples=999, rng=np.random.default_rng(1)))
    _engine.compiled.cache_clear()
    np.testing.assert_array_equal(out[0].pvalue, out[1].pvalue)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), n_units=st.integers(1, 200), seed=st.integers(0, 2 ** 31 - 1),
       alternative=st.sampled_from(list(MODES)), dtype=st.sampled_from([np.float32, np.float64]),
       levels=st.integers(1, 6))
def test_compiled_tally_equals_numpy_on_any_shape(rows, n_units, seed, alternative, dtype, levels):
    # few distinct values (levels): scores tie with each other and with the thresholds everywhere
    rng = np.random.default_rng(seed)
    g = (rng.integers(-levels, levels + 1, size=(rows, n_units)) / 2).astype(dtype)
    thr = np.sort(rng.integers(-levels, levels + 1, size=n_units) / 2)[::-1].astype(np.float64)
    a, b = _tally_both(g, thr, alternative, True)
    np.testing.assert_array_equal(a.count_unc, b.count_unc)
    np.testing.assert_array_equal(np.concatenate(a.maxima), np.concatenate(b.maxima))
    np.testing.assert_array_equal(a.sd_all, b.sd_all)
    np.testing.assert_array_equal(a.sd_part, b.sd_part)
