"""The sae_knockdown analysis's numbers (audit/designs/ablation_sae.py) against independent references: the max-T
step-down over features by brute-force enumeration of every sign vector (Westfall & Young 1993, Algorithm 2.8),
each feature's raw p against stats.paired_permutation_test on its active pairs alone, the variance explained
against numpy on the tokens, and the low-variance warning read by its code."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

import stats
from audit.analyses import Outcome, Settings, warn
from audit.designs.ablation_sae import LOW_VE, feature_drops, knockdown_test, variance_explained
from audit.verdicts import decide
from lockstep.designs import ABLATION

N = 10  # pairs: 2**10 sign vectors, enumerated exactly


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    features = [4, 18641, 7, 99, 3]
    active = rng.random((N, len(features))) < 0.7
    active[:3, 1] = True                                   # every feature active on at least 3 pairs
    active[:3, 0] = True
    shift = np.array([0.05, 0.6, 0.0, -0.2, 0.3])
    drops = np.where(active, rng.normal(shift, 0.4, size=(N, len(features))), 0.0)
    return drops, active, features


def _brute_force(drops: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_active = active.sum(axis=0)
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=N)))          # [2**N, N], identity first
    null = (signs @ drops) / n_active                                          # mean over active pairs per feature
    obs = drops.sum(axis=0) / n_active
    eps = 1e-12
    raw = (null >= obs - eps).mean(axis=0)
    order = np.argsort(-obs)
    adjusted = np.empty(len(obs))
    running = 0.0
    for i, f in enumerate(order):                                              # step-down: max over the rest
        tail = null[:, order[i:]].max(axis=1)
        running = max(running, float((tail >= obs[f] - eps).mean()))
        adjusted[f] = running
    return raw, adjusted


def test_maxt_over_features_matches_enumeration_and_the_paired_engine():
    drops, active, features = _data()
    settings = Settings(alpha=0.05, n_resamples=9999, exact_cap=200_000, seed=1)
    result = knockdown_test(drops, active, features, tails="greater", settings=settings)
    assert result.exact and result.family_size == len(features)
    raw, adjusted = _brute_force(drops, active)
    np.testing.assert_allclose(result.p_uncorrected, raw, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.p_maxt_step_down, adjusted, rtol=0, atol=1e-12)
    assert (result.p_maxt_step_down >= result.p_uncorrected - 1e-12).all()
    np.testing.assert_allclose(result.statistic, drops.sum(axis=0) / active.sum(axis=0), rtol=1e-12)
    for j in range(len(features)):                         # the feature's own sign-flip test on its active pairs
        alone = stats.paired_permutation_test(drops[active[:, j], j], statistic="mean", alternative="greater",
                                              exact_cap=200_000)
        assert alone.exact
        assert result.p_uncorrected[j] == pytest.approx(float(alone.pvalue), abs=1e-12)
    assert result.p_maxt_step_down[1] <= 0.05 < result.p_maxt_step_down[2]   # the strong one survives, the null does not


def test_feature_drops_puts_zero_where_a_feature_is_inactive():
    knock = pd.DataFrame({"feature": [5, 5, 9], "pair_id": ["b", "c", "a"], "drop": [0.5, -0.25, 2.0]})
    drops, active = feature_drops(knock, ["a", "b", "c"], [5, 9, 11])
    np.testing.assert_array_equal(drops, [[0, 2.0, 0], [0.5, 0, 0], [-0.25, 0, 0]])
    np.testing.assert_array_equal(active, [[False, True, False], [True, False, False], [True, False, False]])


def test_variance_explained_over_every_token():
    rng = np.random.default_rng(4)
    tokens = [rng.normal(size=(n, 6)) + 2.0 for n in (3, 5, 2)]
    recon = [x + rng.normal(scale=0.3, size=x.shape) for x in tokens]
    frame = pd.DataFrame({"n_tokens": [len(x) for x in tokens],
                          "sse": [float(((r - x) ** 2).sum()) for x, r in zip(tokens, recon)],
                          "sum_sq": [float((x ** 2).sum()) for x in tokens],
                          "sum_x": [list(x.sum(axis=0)) for x in tokens]})
    every, hat = np.concatenate(tokens), np.concatenate(recon)
    expected = 1 - ((every - hat) ** 2).sum() / ((every - every.mean(axis=0)) ** 2).sum()
    ve, n = variance_explained(frame)
    assert n == 10
    assert ve == pytest.approx(expected, rel=1e-10)


def test_a_poor_sae_makes_a_passing_claim_partly_held():
    hypothesis = {"id": "H1", "claim": "Knocking down feature 3 reduces the clean margin.", "direction": "greater",
                  "kind": "exploratory", "analysis": "S1", "thresholds": ["alpha"], "evidence_type": "intervention"}
    out = Outcome("S1", "sae_knockdown", quantities={"p": 0.001, "mean_drop": 0.4}, primary_passed=True,
                  primary_text="feature 3: 12 active pairs")
    assert decide(hypothesis, out, {"alpha": 0.05}, ABLATION).status == "held"
    warn(out, LOW_VE, "SAE 's' explains 0.31 of the variance")
    verdict = decide(hypothesis, out, {"alpha": 0.05}, ABLATION)
    assert verdict.status == "partly_held" and LOW_VE in verdict.codes
