import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from stats import ablation_summary, compare_runs, pivot_units


def _pairs(seed=0, n=12, drop=1.3):
    rng = np.random.default_rng(seed)
    base = rng.normal(2.3, 0.6, n)
    return base, base - rng.normal(drop, 0.8, n)


def test_drop_mean_and_t_interval_match_scipy():
    base, abl = _pairs()
    r = ablation_summary(base, abl, n_boot=500, rng=0)
    drop = base - abl
    ci = sps.ttest_1samp(drop, 0).confidence_interval(0.95)  # scipy.stats.ttest_1samp(drop, 0)
    assert r.mean_drop == pytest.approx(drop.mean())
    assert r.mean_drop_ci_t == pytest.approx((ci.low, ci.high))
    assert r.mean_drop_ci_boot[0] < r.mean_drop < r.mean_drop_ci_boot[1]
    np.testing.assert_allclose(r.to_frame()["drop"], drop)


def test_relative_drop_definitions():
    base = np.array([2.0, 4.0, 1.0])
    abl = np.array([1.0, 1.0, 0.5])
    rom = ablation_summary(base, abl, n_boot=200, rng=0)
    mor = ablation_summary(base, abl, relative_definition="mean_of_ratios", n_boot=200, rng=0)
    assert rom.relative_drop == pytest.approx(4.5 / 7.0)  # mean(drop)/mean(baseline)
    assert mor.relative_drop == pytest.approx((0.5 + 0.75 + 0.5) / 3)  # mean(drop_i/baseline_i)
    assert rom.relative_definition == "ratio_of_means"


def test_threshold_check_names_the_card_warning():
    # the ablation card: mean drop 1.320 against a 1.5-logit threshold -> pass_with_warnings
    base, abl = _pairs(1, n=30)
    drop = base - abl
    abl = abl + (drop.mean() - 1.320)  # shift so the mean drop is exactly 1.320
    r = ablation_summary(base, abl, min_mean_drop=1.5, n_boot=200, rng=0)
    assert r.mean_drop == pytest.approx(1.320)
    assert r.thresholds["mean_drop"] == (pytest.approx(1.320), 1.5, False)
    assert "below_threshold_mean_drop" in {f.code for f in r.flags}


def test_specificity_ratio_and_control_flag():
    base, abl = _pairs(2, n=20)
    cb = np.array([1.0, 1.1, 0.9, 1.2, 1.0, 0.95, 1.05])
    ca = cb - np.array([0.02, 0.03, 0.01, 0.04, 0.02, 0.03, 0.05])
    r = ablation_summary(base, abl, control_baseline=cb, control_ablated=ca, min_specificity=10,
                         n_boot=1000, rng=0)
    assert r.specificity_ratio == pytest.approx((base - abl).mean() / (cb - ca).mean())
    assert r.specificity_ratio_ci[0] < r.specificity_ratio < r.specificity_ratio_ci[1]
    noisy = ablation_summary(base, abl, control_baseline=cb, control_ablated=cb + [0.1, -0.1, 0.05, -0.02, 0.01, 0.0, 0.02],
                             n_boot=200, rng=0)
    assert "control_drop_not_positive" in {f.code for f in noisy.flags}


def test_sign_flip_p_matches_scipy_exact():
    base, abl = _pairs(3, n=10, drop=0.3)
    r = ablation_summary(base, abl, n_boot=200, rng=0)
    # scipy.stats.permutation_test((drop,), mean, permutation_type="samples", alternative="greater")
    ref = sps.permutation_test((base - abl,), lambda u, axis=-1: u.mean(axis=axis),
                               permutation_type="samples", n_resamples=np.inf, alternative="greater")
    assert r.pvalue_exact and r.pvalue == pytest.approx(ref.pvalue)


def _run(rng, ratio, n=10):
    a = rng.gamma(6, 0.067450 / 6, n)
    b = rng.gamma(6, 0.067450 / ratio / 6, n)
    return a, b


def test_reproduction_within_tolerance_and_failure_flags():
    rng = np.random.default_rng(4)
    a1, b1 = _run(rng, 21.68)
    a2, b2 = a1 * 1.01, b1 * 1.04  # greedy run: the same shape, slightly shifted
    r = compare_runs(((a1, b1), (a2, b2)), n_boot=200, rng=0)
    assert r.reproduced and r.ratio_change == pytest.approx(abs(np.log(1.01 / 1.04)))
    bad = compare_runs(((a1, b1), (a1, b1 * 3)), ratio_rtol=0.25, n_boot=200, rng=0)
    assert not bad.reproduced and "reproduction_ratio_within_tolerance" in {f.code for f in bad.flags}
    assert list(r.to_frame()["run"]) == ["sampled", "greedy"]


def test_pivot_units_from_tidy_frame():
    rows = [("p1", 14, 114, 0.07), ("p1", 14, 3, 0.01), ("p2", 14, 114, 0.002), ("p2", 2, 7, 0.3)]
    frame = pd.DataFrame(rows, columns=["prompt_id", "layer", "expert", "value"])
    t = pivot_units(frame)
    assert list(t.unit_ids) == ["L2E7", "L14E3", "L14E114"] and list(t.prompt_ids) == ["p1", "p2"]
    assert t.column("L14E114").tolist() == [0.07, 0.002] and np.isnan(t.column("L2E7")[0])
    assert t.mask({"p1": "FIRE", "p2": "NOFIRE"}, "FIRE").tolist() == [True, False]
    with pytest.raises(ValueError, match="`frame` has more than one row per"):
        pivot_units(pd.concat([frame, frame]))
