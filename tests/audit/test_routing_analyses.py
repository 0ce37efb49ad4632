"""Routing analyses on a run built in memory (no model): the preregistered null reaches the statistics,
and the data shapes the statistics issue is about (never-selected units, unequal variances) reach the
ledger as flags with codes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

import stats
from audit.analyses import Settings, analysis_for
from audit.designs.routing import RunData
from lockstep.designs import ROUTING

SETTINGS = Settings(alpha=0.05, n_resamples=999, exact_cap=10_000, seed=7, n_boot=199)


def _run(w: np.ndarray, s: np.ndarray, n_a: int) -> RunData:
    """A run of ``len(w)`` prompts (the first ``n_a`` FIRE) over units L0E0..L0E{F-1} in the trimmed zone."""
    n, f = w.shape
    ids = [f"p{i:02d}" for i in range(n)]
    prompts = pd.DataFrame({"prompt_id": ids, "prompt_class": ["FIRE"] * n_a + ["NOFIRE"] * (n - n_a),
                            "split": "heldout", "register_label": "other", "n_prefill": 5, "n_generated": 10,
                            "n_trimmed": 10, "n_spill": 0})
    rows = []
    for i, pid in enumerate(ids):
        for e in range(f):
            q = w[i, e] / s[i, e] if s[i, e] > 0 else np.nan
            rows.append({"prompt_id": pid, "layer": 0, "expert": e, "zone": "trimmed", "n_tokens": 10,
                         "n_selected": int(round(10 * s[i, e])), "S": s[i, e], "Q": q, "W": w[i, e]})
    return RunData("sampled", Path("."), {}, prompts, pd.DataFrame(rows))


def _frozen(target="L0E0"):
    return SimpleNamespace(spec={"units": {"targets": [{"id": target, "layer": 0, "expert": 0}]}}, rubric={"target_label": "inner"})


def _spec(kind, **extra):
    raw = {"id": "A", "kind": kind, "metric": "W", "zone": "trimmed", "run": "sampled",
           "groups": {"by": "prompt_class", "a": "FIRE", "b": "NOFIRE"}, **extra}
    return ROUTING.resolve_analysis(raw, {})


def test_the_preregistered_null_reaches_the_baseline():
    rng = np.random.default_rng(0)
    n_a, n_b, f = 8, 14, 40
    w = np.vstack([rng.normal(0.5, 0.3, (n_a, f)), rng.normal(0.5, 0.05, (n_b, f))]).clip(0.01)
    s = np.full_like(w, 0.5)
    run = _run(w, s, n_a)
    group = np.r_[np.ones(n_a, bool), np.zeros(n_b, bool)]
    for null in ("exchangeable", "equal_means"):
        spec = _spec("all_unit_baseline", null=null)
        out = analysis_for("routing", "all_unit_baseline")(_frozen(), spec, lambda _: run, SETTINGS)
        # stats.all_unit_baseline called directly on the same matrix, the same seed: the same adjusted p
        direct = stats.all_unit_baseline(w, group, unit_ids=[f"L0E{e}" for e in range(f)], target="L0E0",
                                         alternative="two-sided", n_resamples=999, exact_cap=10_000, alpha=0.05,
                                         rng=np.random.default_rng(7), null=null, nan_policy="drop_units")
        assert out.numbers["null"] == null
        assert np.isclose(out.quantities["p"], direct.p_maxt_step_down[0], rtol=1e-12)
    # the groups' spreads differ 6:1: the permutation baseline says its null is not the claim's
    exchangeable = analysis_for("routing", "all_unit_baseline")(_frozen(), _spec("all_unit_baseline"), lambda _: run, SETTINGS)
    assert "not_exchangeable" in {w.code for w in exchangeable.warnings}


def test_a_never_selected_unit_reaches_the_ledger_as_a_flag():
    rng = np.random.default_rng(1)
    n_a, n_b = 6, 6
    s = np.vstack([rng.uniform(0.6, 0.75, (n_a, 2)), np.zeros((n_b, 2))])
    w = s * 0.12
    run = _run(w, s, n_a)
    out = analysis_for("routing", "wsq_decomposition")(_frozen(), _spec("wsq_decomposition", unit="L0E0"), lambda _: run, SETTINGS)
    # stats.wsq_decomposition: the NOFIRE group never selects L0E0, so the whole W difference is S's
    assert out.numbers["carrier"] == "S" and out.quantities["s_share"] == 1.0
    assert "q_undefined" in {w.code for w in out.warnings}


def _wsq(s_fire, s_nofire, q_fire, q_nofire):
    n_a = len(s_fire)
    s = np.r_[s_fire, s_nofire][:, None].repeat(2, axis=1)
    q = np.r_[q_fire, q_nofire][:, None].repeat(2, axis=1)
    run = _run(s * q, s, n_a)
    return analysis_for("routing", "wsq_decomposition")(_frozen(), _spec("wsq_decomposition", unit="L0E0"), lambda _: run, SETTINGS)


def test_mostly_s_holds_only_on_a_real_w_difference_in_the_claimed_direction():
    rng = np.random.default_rng(3)
    q = np.r_[rng.uniform(0.11, 0.12, 10), rng.uniform(0.10, 0.11, 10)]  # Q a little higher on FIRE: both parts positive
    # a clear selection effect: FIRE selects L0E0 about 70 % of the time, NOFIRE about 10 %
    real = _wsq(rng.uniform(0.6, 0.8, 10), rng.uniform(0.05, 0.15, 10), q[:10], q[10:])
    assert real.primary_passed and 0.5 < real.quantities["s_share"] <= 1.0
    # the same decomposition the other way round: the W difference is negative, the claim says more on FIRE
    reversed_ = _wsq(rng.uniform(0.05, 0.15, 10), rng.uniform(0.6, 0.8, 10), q[:10], q[10:])
    assert not reversed_.primary_passed and "not established in the greater direction" in reversed_.primary_text
    # a W difference indistinguishable from zero (same S distribution): the share of nothing is not a result
    same, q_same = rng.uniform(0.4, 0.6, 20), rng.uniform(0.10, 0.12, 20)
    noise = _wsq(same[:10], same[10:], q_same[:10], q_same[10:])
    assert noise.quantities["p"] > 0.05 and not noise.primary_passed
    # opposite signs: FIRE selects more but with much lower weight, so ΔW is a small remainder of two large parts
    opposed = _wsq(rng.uniform(0.68, 0.72, 10), rng.uniform(0.33, 0.37, 10), rng.uniform(0.075, 0.085, 10),
                   rng.uniform(0.105, 0.115, 10))
    assert opposed.quantities["s_share"] > 1.5 and not opposed.primary_passed
    assert "opposite signs" in opposed.primary_text


def _register_run(register_effect, class_effect, crossing=(1, 4, 13, 17, 20), constant=None, seed=5):
    rng = np.random.default_rng(seed)
    n = 24
    cls = np.r_[np.ones(12), np.zeros(12)].astype(int)
    reg = cls.copy()
    reg[list(crossing)] = 1 - reg[list(crossing)]
    w = (0.2 + register_effect * reg + class_effect * cls + rng.normal(0, 0.05, n))[:, None].repeat(2, axis=1)
    run = _run(w, np.full_like(w, 0.5), 12)
    labels = np.where(reg == 1, "inner", "outer") if constant is None else np.full(n, constant)
    run.prompts["register_label"] = labels
    return run


def _register(run):
    spec = _spec("register_vs_class", unit="L0E0", classes={"a": "FIRE", "b": "NOFIRE"},
                 register={"target": "inner", "other": "outer"})
    spec.pop("groups")
    return analysis_for("routing", "register_vs_class")(_frozen(), spec, lambda _: run, SETTINGS)


def test_register_rather_than_class_tests_the_contrast_the_claim_states():
    from audit.verdicts import decide

    hyp = {"id": "H4", "claim": "L0E0 tracks the generated register rather than the prompt class.", "direction": "greater",
           "kind": "exploratory", "analysis": "A", "thresholds": ["alpha"]}
    register_wins = _register(_register_run(0.4, 0.05))
    assert register_wins.primary_passed and not register_wins.warnings
    assert decide(hyp, register_wins, {"alpha": 0.05}, ROUTING).status == "held"
    # both effects large and alike (the shipped demo's pattern): the register effect is real, "rather than" is not shown
    both = _register(_register_run(0.3, 0.26))
    assert both.primary_passed and [w.code for w in both.warnings] == ["register_not_above_class"]
    assert decide(hyp, both, {"alpha": 0.05}, ROUTING).status == "partly_held"
    # the cell table speaks the study's names
    assert set(both.tables["class_register"]["prompt_class"]) == {"FIRE", "NOFIRE"}
    assert set(both.tables["class_register"]["register_label"]) == {"inner", "outer"}
    # a register that never varies is not "confounded": there is simply nothing to compare
    flat = _register(_register_run(0.3, 0.2, constant="outer"))
    assert flat.not_established and "same register label" in flat.not_established


def test_a_claim_about_means_on_groups_of_different_shape_is_warned():
    """NOFIRE zero-inflated, FIRE near-constant, equal means: the permutation test's alpha is not the claim's."""
    rng = np.random.default_rng(9)
    fire = rng.normal(0.30, 0.01, 12)
    nofire = np.where(rng.random(12) < 0.5, 0.0, 0.6) + rng.normal(0, 0.01, 12)
    w = np.r_[fire, nofire].clip(0.001)[:, None].repeat(2, axis=1)
    run = _run(w, np.full_like(w, 0.5), 12)
    spec = _spec("two_group", unit="L0E0")
    out = analysis_for("routing", "two_group")(_frozen(), spec, lambda _: run, SETTINGS)
    assert "not_exchangeable" in {w.code for w in out.warnings}
    equal_means = analysis_for("routing", "two_group")(_frozen(), _spec("two_group", unit="L0E0", null="equal_means"),
                                                       lambda _: run, SETTINGS)
    assert "not_exchangeable" not in {w.code for w in equal_means.warnings}
    assert equal_means.numbers["null"] == "equal_means" and "bootstrap p" in equal_means.primary_text


def test_a_preregistered_ratio_floor_makes_a_zero_denominator_finite():
    """Prefill W of an expert NOFIRE never selects: mean 0. Unfloored, the ratio is infinite (and 0/0 is
    NaN, which no criterion decides on); with ratio_floor f it is max(mean_a, f) / max(mean_b, f)."""
    fire = np.array([0.02, 0.04, 0.03, 0.05, 0.01, 0.03])
    w = np.r_[fire, np.zeros(6)][:, None].repeat(2, axis=1)
    s = np.where(w > 0, 0.5, 0.0)
    run = _run(w, s, 6)
    raw = analysis_for("routing", "two_group")(_frozen(), _spec("two_group", unit="L0E0", tails="two-sided"), lambda _: run, SETTINGS)
    assert raw.quantities["ratio"] == np.inf
    floored = analysis_for("routing", "two_group")(_frozen(), _spec("two_group", unit="L0E0", tails="two-sided", ratio_floor=0.01),
                                                   lambda _: run, SETTINGS)
    assert np.isclose(floored.quantities["ratio"], fire.mean() / 0.01)  # 0.03 / 0.01 = 3
    assert floored.numbers["ratio_unfloored"] == np.inf and floored.numbers["ratio_floor"] == 0.01
    both_zero = _run(np.zeros((12, 2)), np.zeros((12, 2)), 6)
    flat = analysis_for("routing", "two_group")(_frozen(), _spec("two_group", unit="L0E1", tails="two-sided", ratio_floor=0.01),
                                                lambda _: both_zero, SETTINGS)
    assert flat.not_established or flat.quantities["ratio"] == 1.0


def test_other_language_is_fewer_than_half_ascii_words():
    from audit.designs.routing import other_language

    assert other_language("我 觉得 很 安静 and")            # 4 of 5 alphabetic words are not ASCII
    assert not other_language("The cache is warm 很")         # 1 of 5
    assert not other_language("A café with a naïve résumé")    # 3 of 6 ASCII: not fewer than half
    assert other_language("Café au lait, naïve résumé")        # 2 of 5 ASCII
    assert not other_language("12 + 30 = 42")                 # no alphabetic word: not judged


def _frozen_with(*rules):
    frozen = _frozen()
    frozen.spec["exclusions"] = [{"id": f"X{i + 2}", "description": r[0], "rule": r[0], "action": r[1]} for i, r in enumerate(rules)]
    frozen.analyses = []
    return frozen


def test_preregistered_exclusion_rules_leave_out_or_flag_what_they_say():
    """X2 no_trim_token flagged (kept, with a sensitivity result without them); X3 other_language excluded:
    n and the comparison follow, and each is named with its count per class."""
    rng = np.random.default_rng(3)
    w = np.r_[rng.normal(0.5, 0.1, 8), rng.normal(0.2, 0.1, 8)].clip(0.01)[:, None].repeat(2, axis=1)
    run = _run(w, np.full_like(w, 0.5), 8)
    run.prompts["no_trim_token"] = [True, True] + [False] * 13 + [True]
    run.prompts["other_language"] = [False] * 7 + [True, True] + [False] * 7
    frozen = _frozen_with(("no_trim_token", "flag"), ("other_language", "exclude"))
    out = analysis_for("routing", "two_group")(frozen, _spec("two_group", unit="L0E0", tails="greater"), lambda _: run, SETTINGS)
    assert (out.numbers["n_a"], out.numbers["n_b"]) == (7, 7)                     # p07 (FIRE), p08 (NOFIRE) excluded
    codes = {w.code: w.message for w in out.warnings}
    assert "X3 (other_language) excluded 2 prompt(s) (FIRE 1, NOFIRE 1)" in codes["excluded"]
    assert "X2 (no_trim_token) flags 3 prompt(s) (FIRE 2, NOFIRE 1)" in codes["flagged"]
    # the sensitivity result is the same test on the 11 unflagged prompts: against scipy's Welch t direction
    kept = [i for i in range(16) if i not in (0, 1, 15, 7, 8)]
    a, b = w[[i for i in kept if i < 8], 0], w[[i for i in kept if i >= 8], 0]
    assert out.numbers["n_without_X2"] == len(kept)
    assert np.isclose(out.numbers["ratio_without_X2"], a.mean() / b.mean())
    # rules about generations do not touch a prefill analysis, except other_language on register groupings
    from audit.designs.routing import _applies

    rules = frozen.spec["exclusions"]
    assert not any(_applies(r, _spec("two_group", zone="prefill")) for r in rules)
    by_register = _spec("two_group", zone="prefill", groups={"by": "register_label", "a": "inner", "b": "outer"})
    assert [r["rule"] for r in rules if _applies(r, by_register)] == ["other_language"]


def test_register_vs_class_uses_the_preregistered_standard_errors():
    """cov_type HC3 reaches statsmodels: the register coefficient's interval is the HC3 one."""
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(11)
    n = 24
    cls = np.array(["FIRE"] * 12 + ["NOFIRE"] * 12)
    reg = np.array((["inner"] * 9 + ["outer"] * 3) + (["inner"] * 4 + ["outer"] * 8))
    w = (0.3 * (reg == "inner") + 0.1 * (cls == "FIRE") + rng.normal(0, 1, n) * np.where(reg == "inner", 0.2, 0.02)).clip(0)
    run = _run(w[:, None].repeat(2, axis=1), np.full((n, 2), 0.5), 12)
    run.prompts["register_label"] = reg
    frozen = _frozen()
    for cov in ("nonrobust", "HC3"):
        spec = ROUTING.resolve_analysis({"id": "A", "kind": "register_vs_class", "unit": "L0E0", "metric": "W", "zone": "trimmed",
                                         "run": "sampled", "classes": {"a": "FIRE", "b": "NOFIRE"},
                                         "register": {"target": "inner", "other": "outer"}, "cov_type": cov}, {})
        out = analysis_for("routing", "register_vs_class")(frozen, spec, lambda _: run, SETTINGS)
        frame = pd.DataFrame({"w": w, "register": (reg == "inner").astype(float), "prompt_class": (cls == "FIRE").astype(float)})
        fit = smf.ols("w ~ register + prompt_class", frame).fit(cov_type=cov)
        low, high = fit.conf_int().loc["register"]
        assert np.isclose(out.numbers["register_ci_low"], low, rtol=1e-6) and np.isclose(out.numbers["register_ci_high"], high, rtol=1e-6)


def test_the_sampling_plan_minimum_after_exclusions_is_enforced():
    """8 FIRE prompts, one excluded (other_language): a plan minimum of 8 FIRE makes the claim not_established
    with the count; a minimum of 7 is met."""
    rng = np.random.default_rng(8)
    w = np.r_[rng.normal(0.5, 0.1, 8), rng.normal(0.2, 0.1, 8)].clip(0.01)[:, None].repeat(2, axis=1)
    run = _run(w, np.full_like(w, 0.5), 8)
    run.prompts["other_language"] = [True] + [False] * 15
    spec = _spec("two_group", unit="L0E0", tails="greater")
    for minimum, established in ((8, False), (7, True)):
        frozen = _frozen_with(("other_language", "exclude"))
        frozen.spec["sampling_plan"] = {"min_after_exclusions": {"FIRE": minimum, "NOFIRE": 8}}
        out = analysis_for("routing", "two_group")(frozen, spec, lambda _: run, SETTINGS)
        assert (out.not_established is None) == established, out.not_established
        if not established:
            assert "FIRE 7 < 8" in out.not_established and "min_after_exclusions" in out.not_established
