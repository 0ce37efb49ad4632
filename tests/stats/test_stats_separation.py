"""Perfect separation and constant-within-group units: every p at least its attainable minimum."""

import math

import numpy as np
import pytest
import scipy.stats as sps

from maxt_reference import brute_maxt
from stats import all_unit_baseline, paired_permutation_test, permutation_test

TWO_SAMPLE = ["welch_t", "student_t", "mean_diff"]
ALTERNATIVES = ["two-sided", "greater", "less"]


def _separated(n1, n2, hi=1.0, lo=0.0):
    return np.r_[np.full(n1, hi), np.full(n2, lo)], np.r_[np.ones(n1, bool), np.zeros(n2, bool)]


@pytest.mark.parametrize("statistic", TWO_SAMPLE)
@pytest.mark.parametrize("alternative", ALTERNATIVES)
@pytest.mark.parametrize("n1,n2", [(5, 7), (6, 6)])
def test_permutation_p_of_a_separated_unit_is_the_minimum(statistic, alternative, n1, n2):
    x, g = _separated(n1, n2)
    r = permutation_test(x, g, statistic=statistic, alternative=alternative)
    total = math.comb(n1 + n2, n1)
    # hand count: only the observed labelling (and, balanced two-sided, its complement) reaches
    # the observed |T|; "less" counts every relabeling (the observed T is the largest)
    k = 1 if alternative == "greater" else (2 if n1 == n2 else 1)
    expected = 1.0 if alternative == "less" else k / total
    assert r.exact and r.n_resamples == total
    assert r.pvalue == pytest.approx(expected, rel=1e-12)
    if statistic != "mean_diff":
        assert r.statistic == np.inf
    # the null distribution holds the identity's infinite value, and reproduces the p
    null = np.abs(r.null_distribution) if alternative == "two-sided" else r.null_distribution
    obs = abs(r.statistic) if alternative == "two-sided" else r.statistic
    if alternative != "less":
        assert np.sum(null >= obs * (1 - 1e-12)) == round(expected * total)


def test_issue_example_matches_scipy_permutation_test():
    x, g = _separated(5, 7)
    r = permutation_test(x, g)  # default welch_t, two-sided, exact over 792 relabelings
    # scipy.stats.permutation_test((a, b), |mean(a) - mean(b)|, n_resamples=np.inf,
    # alternative="greater"): for two-valued data only the observed labelling reaches the
    # largest |mean difference|, as it alone reaches the infinite |t|
    ref = sps.permutation_test((x[g], x[~g]),
                               lambda u, v, axis=-1: np.abs(u.mean(axis=axis) - v.mean(axis=axis)),
                               n_resamples=np.inf, alternative="greater")
    assert ref.pvalue == pytest.approx(1 / 792)
    assert r.pvalue == pytest.approx(ref.pvalue, rel=1e-12) and r.statistic == np.inf
    assert permutation_test(x, g, statistic="student_t").pvalue == pytest.approx(ref.pvalue)


@pytest.mark.parametrize("statistic", TWO_SAMPLE)
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_monte_carlo_and_equal_means_never_below_one_over_p_plus_one(statistic, alternative):
    x, g = _separated(5, 8, hi=0.7, lo=0.0)
    for kw in ({"exact_cap": 0, "n_resamples": 499, "rng": 1},
               {"null": "equal_means", "n_resamples": 499, "rng": 1},
               {"null": "equal_means", "resampling": "bootstrap", "n_resamples": 499, "rng": 1}):
        r = permutation_test(x, g, statistic=statistic, alternative=alternative, **kw)
        assert r.pvalue >= 1 / 500
        if alternative != "less":
            assert r.pvalue <= 0.05


@pytest.mark.parametrize("statistic", ["mean", "paired_t"])
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_paired_constant_differences(statistic, alternative):
    d = np.full(9, 0.3)  # every pair moved by the same amount
    r = paired_permutation_test(d, statistic=statistic, alternative=alternative)
    # hand count over 2**9 sign vectors: |T| is reached by all-plus and all-minus; T by all-plus
    expected = {"two-sided": 2 / 512, "greater": 1 / 512, "less": 1.0}[alternative]
    assert r.pvalue == pytest.approx(expected, rel=1e-12)
    if statistic == "paired_t":
        assert r.statistic == np.inf
    mc = paired_permutation_test(d, statistic=statistic, alternative=alternative, exact_cap=0,
                                 n_resamples=299, rng=0)
    assert mc.pvalue >= 1 / 300


def _routing_like(rng, n1, n2, n_sep, n_free):
    """``n_sep`` units selected on every A prompt and no B prompt (constant in each group, with a
    per-unit level), then ``n_free`` ordinary units."""
    g = np.r_[np.ones(n1, bool), np.zeros(n2, bool)]
    sep = np.where(g[:, None], rng.uniform(0.05, 0.2, n_sep)[None, :], 0.0)
    free = rng.normal(size=(n1 + n2, n_free)) * rng.uniform(0.5, 2, n_free)
    return np.c_[sep, free], g


@pytest.mark.parametrize("statistic", TWO_SAMPLE)
@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_baseline_with_separated_units_matches_brute_force(statistic, alternative):
    # 5 vs 7: 792 relabelings, exact. Before the fix, 0 p-values for the separated units, and a
    # NaN threshold that made every unit in the same 64-unit step-down block fall back to its
    # uncorrected p.
    import itertools
    rng = np.random.default_rng(20)
    x, g = _routing_like(rng, 5, 7, 12, 60)
    r = all_unit_baseline(x, g, statistic=statistic, alternative=alternative)
    rel = []
    for c in itertools.combinations(range(12), 5):
        row = np.zeros(12, bool)
        row[list(c)] = True
        rel.append(row)
    _, p_unc, p_ss, p_sd = brute_maxt(x, g, statistic, alternative, np.array(rel), exact=True)
    np.testing.assert_allclose(r.p_uncorrected, p_unc)
    np.testing.assert_allclose(r.p_maxt_single_step, p_ss)
    np.testing.assert_allclose(r.p_maxt_step_down, p_sd)
    for p in (r.p_uncorrected, r.p_maxt_single_step, r.p_maxt_step_down, r.p_holm):
        assert np.all(p >= 1 / 792)
    if statistic != "mean_diff":
        assert np.all(r.statistic[:12] == np.inf) and np.all(np.isfinite(r.statistic[12:]))
        if alternative != "less":
            assert np.all(r.rank[:12] == 12)  # all twelve tie at the top (max rule)


@pytest.mark.parametrize("null", ["exchangeable", "equal_means"])
def test_baseline_monte_carlo_minimum_with_many_separated_units(null):
    rng = np.random.default_rng(21)
    x, g = _routing_like(rng, 9, 14, 336, 64)
    r = all_unit_baseline(x, g, n_resamples=199, exact_cap=0, rng=2, null=null)
    for p in (r.p_uncorrected, r.p_maxt_single_step, r.p_maxt_step_down, r.p_holm, r.q_bh):
        assert np.all(p >= 1 / 200)
    assert np.all(r.statistic[:336] == np.inf) and np.all(r.p_uncorrected[:336] == 1 / 200)
    assert r.target_rank == 0 and r.rank[0] == 336


def test_exact_cap_that_would_enumerate_for_days_is_refused():
    x = np.random.default_rng(22).normal(size=(40, 3))
    g = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    # C(40, 20) = 137,846,528,820 relabelings
    with pytest.raises(ValueError, match=r"`exact_cap`=1,000,000,000,000 asks for exact enumeration "
                                         r"of all 137,846,528,820 relabelings.*Lower `exact_cap`"):
        permutation_test(x, g, exact_cap=10 ** 12)
    with pytest.raises(ValueError, match="`exact_cap`=1,000,000,000,000 asks for exact"):
        all_unit_baseline(x, g, exact_cap=10 ** 12)
    # below the bound the same cap is fine: 10 vs 10 is enumerated
    assert permutation_test(x[:20], g[::2], exact_cap=10 ** 12).exact
