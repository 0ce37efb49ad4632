"""Calibration by simulation, small enough for CI (larger versions run in bench/bench_stats.py)."""

import numpy as np
import scipy.stats as sps

from stats import all_unit_baseline, permutation_test


def test_per_unit_rejection_rate_under_the_null():
    # 3,000 independent null units, 10 vs 10, exact enumeration: each p is exact, so the count of
    # p <= 0.05 is Binomial(3000, a) with a = floor(0.05·184756)/184756 (even counts: ties in pairs).
    rng = np.random.default_rng(100)
    x = rng.normal(size=(20, 3000))
    g = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    r = permutation_test(x, g, statistic="welch_t")
    rejected = int(np.sum(r.pvalue <= 0.05))
    lo, hi = sps.binom.ppf([0.005, 0.995], 3000, 0.05)
    assert lo <= rejected <= hi


def test_max_t_family_wise_error_at_most_alpha():
    # 300 simulated studies, 6 vs 6 (924 relabelings, exact), 1,000 null units each, some correlated.
    rng = np.random.default_rng(101)
    g = np.r_[np.ones(6, bool), np.zeros(6, bool)]
    sims, errors = 300, 0
    for _ in range(sims):
        base = rng.normal(size=(12, 1000))
        base[:, 500:] = 0.7 * base[:, :500] + 0.3 * rng.normal(size=(12, 500))
        r = all_unit_baseline(base, g, statistic="welch_t")
        errors += bool(np.any(r.p_maxt_step_down <= 0.05))
    # FWER <= alpha: the count must not exceed the 99 % upper binomial bound at 0.05
    assert errors <= sps.binom.ppf(0.99, sims, 0.05)


def test_planted_effect_found_in_at_least_90_percent():
    # d = 1.5 at 10 vs 10, preregistered direction (FIRE > NOFIRE): "found" = the target's exact
    # one-sided permutation p <= 0.05. Each of 300 columns is one simulated study.
    rng = np.random.default_rng(102)
    sims = 300
    x = rng.normal(size=(20, sims))
    x[:10] += 1.5
    g = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    r = permutation_test(x, g, statistic="welch_t", alternative="greater")
    assert np.mean(r.pvalue <= 0.05) >= 0.90


def test_planted_target_found_against_a_family_by_max_t():
    # The same planted target raced against 200 null units, 12 vs 12, Monte Carlo max-T:
    # the target is the best-separating unit in at least 90 % of 60 studies with d = 3.
    rng = np.random.default_rng(103)
    g = np.r_[np.ones(12, bool), np.zeros(12, bool)]
    found = 0
    for _ in range(60):
        x = rng.normal(size=(24, 201))
        x[:12, 0] += 3.0
        r = all_unit_baseline(x, g, unit_ids=[f"u{i}" for i in range(201)], target="u0",
                              n_resamples=499, exact_cap=0, rng=rng, alternative="greater")
        found += r.best_unit == "u0"
    assert found / 60 >= 0.90
