"""Control-adjusted slot ranking and its max-T, and the margin distribution, against independent references:
hand computations, ``scipy.stats.rankdata``/``ttest_ind`` and a brute-force enumeration of every relabeling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

import stats


def test_both_rankings_by_hand():
    # three slots; slot u2 disrupts everything (large headline and control drops), u1 is specific
    head = np.array([[1.0, 2.0, 3.0],
                     [1.0, 2.0, 3.0],
                     [1.0, 2.0, 3.0]])
    ctrl = np.array([[0.0, 0.0, 2.5],
                     [0.0, 0.0, 2.5]])
    frame = stats.slot_rankings(head, ctrl, unit_ids=["u0", "u1", "u2"]).set_index("unit")
    assert list(frame["headline_mean_drop"]) == [1.0, 2.0, 3.0]
    assert list(frame["control_mean_drop"]) == [0.0, 0.0, 2.5]
    assert list(frame["adjusted_drop"]) == [1.0, 2.0, 0.5]
    assert list(frame["rank_headline"]) == [3, 2, 1]   # by headline drop the disruptive slot wins
    assert list(frame["rank_adjusted"]) == [2, 1, 3]   # net of the controls the specific slot wins


def test_ties_are_ranked_pessimistically_and_no_control_leaves_adjusted_empty():
    head = np.array([[2.0, 2.0, 1.0], [2.0, 2.0, 1.0]])
    frame = stats.slot_rankings(head)
    assert list(frame["rank_headline"]) == [2, 2, 3]  # scipy.stats.rankdata(-x, method="max")
    assert frame["adjusted_drop"].isna().all() and (frame["rank_adjusted"] == 0).all()
    assert list(frame.columns) == ["unit", "headline_mean_drop", "control_mean_drop", "adjusted_drop",
                                   "rank_headline", "rank_adjusted"]


def test_ranking_input_is_checked():
    with pytest.raises(ValueError, match="`control_drops` must have one column per unit"):
        stats.slot_rankings(np.ones((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="`headline_drops` must be a numeric array"):
        stats.slot_rankings(np.ones((1, 2)))
    with pytest.raises(ValueError, match="`unit_ids` must be 2 unique ids"):
        stats.slot_rankings(np.ones((3, 2)), unit_ids=["a", "a"])


def _brute_force_maxt(head: np.ndarray, ctrl: np.ndarray):
    """Every assignment of the pooled pairs to a headline group of the same size; Welch t per slot
    (scipy.stats.ttest_ind(equal_var=False)); uncorrected and single-step max-T p, one-sided greater."""
    pooled = np.vstack([head, ctrl])
    n, n1 = pooled.shape[0], head.shape[0]
    observed = sps.ttest_ind(head, ctrl, equal_var=False, axis=0).statistic
    null = []
    for chosen in itertools.combinations(range(n), n1):
        mask = np.zeros(n, dtype=bool)
        mask[list(chosen)] = True
        null.append(sps.ttest_ind(pooled[mask], pooled[~mask], equal_var=False, axis=0).statistic)
    null = np.array(null)
    eps = 1e-9 * np.maximum(1.0, np.abs(observed))
    p_unc = (null >= observed - eps).mean(axis=0)
    p_ss = (null.max(axis=1)[:, None] >= observed - eps).mean(axis=0)
    return observed, p_unc, p_ss


def test_control_adjusted_maxt_matches_a_brute_force_enumeration():
    rng = np.random.default_rng(7)
    head = rng.normal(0.0, 1.0, size=(5, 6))
    ctrl = rng.normal(0.0, 0.3, size=(4, 6))
    head[:, 2] += 2.0   # a slot that drops the headline margins beyond the controls
    ids = [f"L1H{i}" for i in range(6)]
    result = stats.control_adjusted_baseline(head, ctrl, unit_ids=ids, target="L1H2", null="exchangeable",
                                             alternative="greater", exact_cap=10_000)
    observed, p_unc, p_ss = _brute_force_maxt(head, ctrl)
    assert result.exact and result.n_resamples == 126  # C(9, 5) relabelings
    np.testing.assert_allclose(result.statistic, observed, rtol=1e-9)
    np.testing.assert_allclose(result.p_uncorrected, p_unc, atol=1e-12)
    np.testing.assert_allclose(result.p_maxt_single_step, p_ss, atol=1e-12)
    assert result.best_unit == "L1H2" and result.target_rank == 1
    assert result.statistic_name == "welch_t" and result.null == "exchangeable"


def test_control_adjusted_equal_means_null_is_studentised_and_finds_the_specific_slot():
    rng = np.random.default_rng(11)
    head = rng.normal(0.0, 1.0, size=(30, 8))
    ctrl = rng.normal(0.0, 1.0, size=(10, 8))
    head[:, 5] += 1.5                # specific to headline pairs
    head[:, 1] += 3.0
    ctrl[:, 1] += 3.0                # disrupts everything: large raw drop, no adjusted effect
    ids = [f"L2H{i}" for i in range(8)]
    result = stats.control_adjusted_baseline(head, ctrl, unit_ids=ids, target="L2H5", n_resamples=1999,
                                             rng=np.random.default_rng(0))
    assert result.null == "equal_means" and result.resampling == "wild"
    assert result.best_unit == "L2H5" and result.target_p_maxt < 0.01
    assert result.p_maxt_step_down[1] > 0.2
    frame = stats.slot_rankings(head, ctrl, unit_ids=ids).set_index("unit")
    assert frame.loc["L2H1", "rank_headline"] == 1 and frame.loc["L2H5", "rank_adjusted"] == 1


def test_describe_margins_by_hand():
    got = stats.describe_margins([4.0, 1.0, 3.0, 2.0, 5.0])
    # numpy.quantile, linear interpolation: q25 of 1..5 is 2, q10 is 1.4
    assert got == pytest.approx({"n": 5, "mean": 3.0, "sd": np.sqrt(2.5), "min": 1.0, "q10": 1.4, "q25": 2.0,
                                 "median": 3.0, "q75": 4.0, "q90": 4.6, "max": 5.0})
    with pytest.raises(ValueError, match="`margins` must be a non-empty array of finite values"):
        stats.describe_margins([1.0, np.nan])
