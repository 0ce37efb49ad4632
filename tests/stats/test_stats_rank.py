"""stats.rank_interval: the target's bootstrap rank, against scipy's Welch t on the same resamples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, ttest_ind

import stats


def _reference(x, group, target, n_boot, seed, alternative):
    """The same stratified resamples, the statistic from scipy.stats.ttest_ind(equal_var=False)."""
    gen = np.random.default_rng(seed)
    a, b = x[group], x[~group]
    ranks = []
    for _ in range(n_boot):
        ra = a[gen.integers(0, len(a), len(a))]
        rb = b[gen.integers(0, len(b), len(b))]
        t = ttest_ind(ra, rb, equal_var=False).statistic
        score = {"greater": t, "less": -t, "two-sided": np.abs(t)}[alternative]
        score = np.where(np.isfinite(score), score, -np.inf)
        ranks.append(rankdata(-score, method="max")[target])
    ranks = np.array(ranks)
    return np.quantile(ranks, [0.025, 0.975], method="inverted_cdf").astype(int), np.mean(ranks == 1)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_rank_interval_matches_scipy_on_the_same_resamples(alternative):
    rng = np.random.default_rng(4)
    group = np.r_[np.ones(8, bool), np.zeros(9, bool)]
    x = rng.normal(0, 1, (17, 12))
    x[group, 3] += 1.2   # the target: a moderate effect
    x[group, 7] += 1.0   # a rival of similar size
    got = stats.rank_interval(x, group, target=3, alternative=alternative, n_boot=300, rng=11)
    (low, high), first = _reference(x, group, 3, 300, 11, alternative)
    assert got.rank_ci == (low, high) and got.p_first == pytest.approx(first)


def test_a_clear_winner_is_sure_and_a_near_tie_is_not():
    rng = np.random.default_rng(5)
    group = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    x = rng.normal(0, 1, (20, 50))
    x[group, 0] += 6.0
    sure = stats.rank_interval(x, group, target=0, n_boot=400, rng=1)
    assert sure.rank_ci == (1, 1) and sure.p_first >= 0.95
    x[group, 1] += 1.0
    x[group, 2] += 1.0
    tie = stats.rank_interval(x, group, target=1, n_boot=400, rng=1)
    assert tie.rank_ci[1] >= 3 and tie.p_first < 0.5


def test_a_constant_unit_never_beats_the_target():
    group = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    x = np.column_stack([np.r_[np.full(5, 1.0), np.zeros(5)] + np.linspace(0, 0.1, 10), np.full(10, 3.0)])
    assert stats.rank_interval(x, group, target=0, n_boot=50, rng=0).rank_ci == (1, 1)
