import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from stats import register_analysis, wsq_decomposition


def _routing(rng, n, s_mean, q_mean):
    s = np.clip(rng.normal(s_mean, 0.05, n), 0, 1)
    q = rng.normal(q_mean, 0.005, n)
    return s, q


def test_decomposition_identities_hold_exactly():
    rng = np.random.default_rng(0)
    sa, qa = _routing(rng, 10, 0.6, 0.11)
    sb, qb = _routing(rng, 10, 0.05, 0.09)
    s, q = np.r_[sa, sb], np.r_[qa, qb]
    g = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    r = wsq_decomposition(s, q, g, n_boot=500, rng=0)
    w = s * q
    assert r.w_a == pytest.approx(w[g].mean()) and r.w_b == pytest.approx(w[~g].mean())
    assert r.s_part + r.q_part == pytest.approx(r.delta_w, rel=1e-12)
    assert r.log_ratio_s + r.log_ratio_q == pytest.approx(r.log_ratio_w, rel=1e-12)
    assert r.w_a == pytest.approx(r.s_a * r.q_a, rel=1e-12)


def test_planted_selection_effect_is_an_s_effect():
    rng = np.random.default_rng(1)
    sa, qa = _routing(rng, 12, 0.65, 0.12)
    sb, qb = _routing(rng, 12, 0.03, 0.12)
    g = np.r_[np.ones(12, bool), np.zeros(12, bool)]
    r = wsq_decomposition(np.r_[sa, sb], np.r_[qa, qb], g, n_boot=500, rng=0)
    assert r.carrier == "S" and r.s_share > 0.9 and r.s_share_ci[0] > 2 / 3


def test_planted_weight_effect_is_a_q_effect():
    rng = np.random.default_rng(2)
    sa, qa = _routing(rng, 12, 0.5, 0.20)
    sb, qb = _routing(rng, 12, 0.5, 0.05)
    g = np.r_[np.ones(12, bool), np.zeros(12, bool)]
    r = wsq_decomposition(np.r_[sa, sb], np.r_[qa, qb], g, n_boot=500, rng=0)
    assert r.carrier == "Q" and r.s_share < 0.2
    assert list(r.to_frame()["component"]) == ["S", "Q", "W"]


def test_nan_q_where_never_selected():
    s = np.array([0.7, 0.6, 0.65, 0.0, 0.02, 0.0])
    q = np.array([0.12, 0.11, 0.125, np.nan, 0.10, np.nan])
    g = np.array([1, 1, 1, 0, 0, 0], bool)
    r = wsq_decomposition(s, q, g, n_boot=200, rng=0)
    assert r.n_q_missing_b == 2 and r.w_b == pytest.approx(0.02 * 0.10 / 3)
    assert np.isnan(r.d_q)  # one NOFIRE prompt with a Q: no SD
    with pytest.raises(ValueError, match="`q` is NaN for 1 prompt"):
        wsq_decomposition(s, np.r_[q[:2], np.nan, q[3:]], g)


def test_seed_localisation_numbers_are_consistent():
    # routing journal, trimmed L14 E114: W = 0.083379, S = 0.694444 (75/108), Q = 0.120066
    assert 75 / 108 == pytest.approx(0.694444, abs=1e-6)
    assert 0.694444 * 0.120066 == pytest.approx(0.083379, abs=1e-6)


def _register_data():
    # balanced 2×2, 5 per cell: class FIRE/NOFIRE × register target/other
    cls = np.repeat(["FIRE", "FIRE", "NOFIRE", "NOFIRE"], 5)
    reg = np.repeat(["target", "other", "target", "other"], 5)
    rng = np.random.default_rng(3)
    value = 0.06 * (reg == "target") + 0.005 * (cls == "FIRE") + rng.normal(0, 0.004, 20)
    return value, cls, reg


def test_register_coefficients_in_a_balanced_design_are_cell_mean_contrasts():
    value, cls, reg = _register_data()
    r = register_analysis(value, cls, reg)
    m = pd.DataFrame({"v": value, "c": cls, "r": reg}).groupby(["c", "r"])["v"].mean()
    # balanced additive OLS: register slope = average of the within-class register differences
    reg_ref = ((m["FIRE", "target"] - m["FIRE", "other"]) + (m["NOFIRE", "target"] - m["NOFIRE", "other"])) / 2
    cls_ref = ((m["FIRE", "target"] - m["NOFIRE", "target"]) + (m["FIRE", "other"] - m["NOFIRE", "other"])) / 2
    assert r.register_effect == pytest.approx(reg_ref, rel=1e-10)
    assert r.class_effect == pytest.approx(cls_ref, rel=1e-10)
    row = r.to_frame().set_index("term").loc["register"]
    assert row["ci_low"] > 0.05 and row["ci_high"] < 0.07
    # statsmodels.formula.api.ols("value ~ register + prompt_class").fit().conf_int()
    fit = smf.ols("v ~ r + c", data=pd.DataFrame({"v": value, "r": (reg == "target").astype(int),
                                                   "c": (cls == "FIRE").astype(int)})).fit()
    assert row["ci_low"] == pytest.approx(fit.conf_int().loc["r", 0])
    assert list(r.cells["n"]) == [5, 5, 5, 5] and len(r.crossing) == 10


def test_register_confounded_with_class_is_flagged():
    v = np.array([0.07, 0.06, 0.065, 0.003, 0.004, 0.002])
    cls = ["FIRE"] * 3 + ["NOFIRE"] * 3
    reg = ["target"] * 3 + ["other"] * 3
    r = register_analysis(v, cls, reg)
    codes = {f.code for f in r.flags}
    assert "register_confounded_with_class" in codes and "empty_cell" in codes
    assert np.isnan(r.register_effect) and r.crossing.empty


def test_single_crossing_prompt_and_hc3_leverage_flag():
    # the journal's pattern: one NOFIRE control (cat purring) crossed into the target register
    v = np.array([0.07, 0.06, 0.065, 0.004, 0.002, 0.003, 0.05])
    cls = ["FIRE"] * 3 + ["NOFIRE"] * 4
    reg = ["target"] * 3 + ["other"] * 3 + ["target"]
    ids = ["f1", "f2", "f3", "n1", "n2", "n3", "cat"]
    r = register_analysis(v, cls, reg, ids=ids)
    assert list(r.crossing["item"]) == ["cat"] and r.register_effect > 0.04
    r3 = register_analysis(v, cls, reg, ids=ids, cov_type="HC3")
    assert "leverage_one" in {f.code for f in r3.flags}


S_A = [0.70, 0.65, 0.72, 0.68, 0.70, 0.69]
Q_A = [0.120, 0.118, 0.121, 0.119, 0.120, 0.122]


def test_never_selected_group_makes_the_whole_difference_a_selection_effect():
    # the example: NOFIRE never selects the unit. Hand computation: W_B = 0, so
    # ΔW = mean(s_A·q_A); Q_B undefined -> taken equal to Q_A, ΔQ = 0, S part = ΔW, share 1.
    s = np.r_[S_A, np.zeros(6)]
    q = np.r_[Q_A, np.full(6, np.nan)]
    r = wsq_decomposition(s, q, [1] * 6 + [0] * 6, n_boot=500, rng=0)
    assert r.delta_w == pytest.approx(np.mean(np.multiply(S_A, Q_A)))
    assert r.s_share == 1.0 and r.s_part == pytest.approx(r.delta_w) and r.q_part == 0.0
    assert r.carrier == "S" and r.s_share_ci == (1.0, 1.0)
    assert np.isnan(r.q_b) and np.isnan(r.log_ratio_q) and r.log_ratio_s == np.inf
    assert [f.code for f in r.flags] == ["q_undefined"]


def test_resamples_without_a_selection_follow_the_same_rule():
    # one NOFIRE prompt selects the unit (s = 0.02): resamples that leave it out have S_B = 0 and
    # a share of 1 (they used to land at 0.5, and the interval reached 1.003).
    s = np.r_[S_A, np.zeros(5), 0.02]
    q = np.r_[Q_A, np.full(5, np.nan), 0.10]
    r = wsq_decomposition(s, q, [1] * 6 + [0] * 6, n_boot=2000, rng=0)
    qa = np.mean(np.multiply(S_A, Q_A)) / np.mean(S_A)
    sb, qb = 0.02 / 6, 0.10
    # midpoint decomposition by hand: S part = ΔS·(Q_A + Q_B)/2
    assert r.s_share == pytest.approx((np.mean(S_A) - sb) * (qa + qb) / 2 / r.delta_w)
    assert 0.5 < r.s_share_ci[0] <= r.s_share <= r.s_share_ci[1] <= 1.0
    # P(a resample of 6 NOFIRE prompts misses the selecting one) = (5/6)^6 ≈ 0.33 > 2.5 %: the
    # upper bound is exactly the limit, 1
    assert r.s_share_ci[1] == 1.0 and r.flags == ()


def test_ratio_interval_with_a_zero_denominator_is_flagged():
    from stats import compare_groups
    fire = [0.07, 0.06, 0.08, 0.05]
    nofire = [0.0, 0.0, 0.0, 0.002, 0.001]
    r = compare_groups(fire, nofire, n_boot=999, rng=0)
    flag = [f for f in r.flags if f.code == "ratio_ci_undefined"]
    # P(a resample of 5 draws only the three zeros) = (3/5)^5 ≈ 0.078: about 78 of 999
    assert len(flag) == 1 and "bootstrap resamples of group B have mean 0" in flag[0].message
    assert r.ratio_ci[1] == np.inf
    none = compare_groups(fire, [0.0] * 5, n_boot=200, rng=0)
    assert np.isnan(none.ratio_ci[0]) and [f.code for f in none.flags] == ["ratio_ci_undefined"]
    ok = compare_groups(fire, [0.003, 0.004, 0.002], n_boot=200, rng=0)
    assert ok.flags == ()


def test_register_minus_class_contrast_matches_the_coefficient_covariance():
    """The contrast a "register rather than class" claim states, against a hand computation from the fit:
    estimate b_r - b_c, variance V_rr + V_cc - 2 V_rc, t on the residual degrees of freedom."""
    import statsmodels.formula.api as smf
    from scipy import stats as sps

    rng = np.random.default_rng(11)
    cls = np.r_[np.ones(12), np.zeros(12)].astype(int)
    reg = cls.copy()
    reg[[1, 4, 13, 17, 20]] = 1 - reg[[1, 4, 13, 17, 20]]  # five prompts leave their class's register
    v = 0.3 * reg + 0.25 * cls + rng.normal(0, 0.1, 24)
    result = register_analysis(v, np.where(cls, "FIRE", "NOFIRE"), np.where(reg, "inner", "outer"),
                               target_register="inner", other_class="NOFIRE", other_register="outer")
    fit = smf.ols("value ~ register + prompt_class", data=pd.DataFrame({"value": v, "register": reg, "prompt_class": cls})).fit()
    V = fit.cov_params()
    est = fit.params["register"] - fit.params["prompt_class"]
    se = np.sqrt(V.loc["register", "register"] + V.loc["prompt_class", "prompt_class"] - 2 * V.loc["register", "prompt_class"])
    p = 2 * sps.t.sf(abs(est / se), fit.df_resid)
    row = result.coefficients.set_index("term").loc["register - prompt_class"]
    assert np.isclose(row["estimate"], est, rtol=1e-12) and np.isclose(row["std_error"], se, rtol=1e-10)
    assert np.isclose(row["pvalue"], p, rtol=1e-8)
    assert set(result.cells["prompt_class"]) == {"FIRE", "NOFIRE"} and set(result.cells["register"]) == {"inner", "outer"}


def test_a_constant_register_is_not_called_confounded():
    v = np.arange(8, dtype=float)
    result = register_analysis(v, ["FIRE"] * 4 + ["NOFIRE"] * 4, ["outer"] * 8, target_register="inner")
    assert [f.code for f in result.flags] == ["empty_cell", "register_constant"]
