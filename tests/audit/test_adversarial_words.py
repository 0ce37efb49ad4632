"""Adversarial claim words: hypotheses whose words ask more than their analysis tests ("only", "each of",
"in every layer", "the most selective", "three times", "necessary and sufficient", "specifically ... not
on control pairs"), written into copies of the shipped demo studies the way a careless or hostile
researcher would, by editing only the plan.

Each such claim must be refused by `lockstep validate` (a problem naming the hypothesis or its analysis)
or, if it validates, must not end ``held`` or ``partly_held`` in the ledger: a verdict rule that passes a
claim its own words do not support is a defect even if every number is right. Every case is first
validated alone; the cases of one base study that still validate are then frozen, captured, labelled and
audited together, once, as a user runs them. The guards at the end pin attacks validation already refuses;
the honest twins pin that the claim-word rules do not refuse the same words used as the analysis supports them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from adversarial.cases import write_case
from studyrepo import commit_all, copy_study, git, invoke

from lockstep.errors import SchemaError
from lockstep.study import load_study

NOT_PASSED = ("unsupported", "not_established", "fell")

_TRIMMED_W = {"kind": "two_group", "unit": "L1E5", "metric": "W", "zone": "trimmed", "run": "sampled", "split": "heldout",
              "groups": {"by": "prompt_class", "a": "FIRE", "b": "NOFIRE"}, "tails": "greater"}
_DROP_L3H2 = {"kind": "ablation_drop", "metric": "margin_drop", "mode": "individual", "targets": ["L3H2"], "run": "forward",
              "split": "heldout", "pairs": "headline", "statistic": "mean_drop", "test": "paired_sign_flip",
              "tails": "greater", "correction": "none"}


def _routing(claim: str, thresholds=("alpha",), analysis=None, **extra) -> dict:
    return {"base": "routing", "hypothesis": {"claim": claim, "direction": "greater", "kind": "exploratory",
                                               "thresholds": list(thresholds), "analysis": analysis or _TRIMMED_W}, **extra}


def _ablation(claim: str, thresholds=("alpha",), analysis=None, **extra) -> dict:
    return {"base": "ablation", "hypothesis": {"claim": claim, "direction": "greater", "kind": "exploratory",
                                                "thresholds": list(thresholds), "evidence_type": "intervention",
                                                "analysis": analysis or _DROP_L3H2}, **extra}


# Claims whose words the analysis does not test. None may validate and then pass.
DEFECTS = {
    # routing (planted demo: L1E5 W is 0.52 on FIRE, 0.15 on NOFIRE, ratio 3.5, p 0.00065; L1E5 ranks 1 of 32)
    "only_on_fire_none_on_nofire": _routing(
        "L1E5 fires only on FIRE prompts: in trimmed text it carries W on FIRE prompts and none on NOFIRE prompts."),
    "every_layer_from_one_unit": _routing(
        "In every layer of the model, the experts carry more trimmed-text W on FIRE prompts than on NOFIRE prompts."),
    "every_run_from_one_run": _routing(
        "In every run, under every decoding, L1E5 carries more trimmed-text W on FIRE prompts than on NOFIRE prompts."),
    "most_selective_without_baseline": _routing(
        "L1E5 is the most selective expert of the model: in trimmed text it carries more W on FIRE prompts than on NOFIRE prompts."),
    "four_times_without_ratio_bound": _routing(
        "In trimmed text, L1E5's W on FIRE prompts is at least four times its W on NOFIRE prompts."),
    "four_times_with_ratio_bound_1_1": _routing(
        "In trimmed text, L1E5's W on FIRE prompts is at least four times its W on NOFIRE prompts.",
        thresholds=("alpha", "min_ratio"), threshold_values={"min_ratio": 1.1}),
    "p_below_0_0001_tested_at_alpha_0_05": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts, with p below 0.0001."),
    "spill_words_trimmed_zone": _routing(
        "In the spill after the end-of-turn token, L1E5 carries more W on FIRE prompts than on NOFIRE prompts."),
    "selection_rate_words_w_metric": _routing(
        "In trimmed text, L1E5 is selected more often (a higher selection rate S) on FIRE prompts than on NOFIRE prompts."),
    "large_effect_with_cohen_d_bound_minus_10": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts, with a large effect size.",
        thresholds=("alpha", "min_cohen_d"), threshold_values={"min_cohen_d": -10}),
    "register_words_class_groups": _routing(
        "In trimmed text, L1E5 carries more W on inner-register generations than on outer-register generations."),
    "same_w_without_equivalence_bound": {"base": "routing", "hypothesis": {
        "claim": "In trimmed text, L0E3 carries the same W on FIRE prompts as on NOFIRE prompts.",
        "direction": "none_expected", "kind": "exploratory", "thresholds": ["alpha"],
        "analysis": {**_TRIMMED_W, "unit": "L0E3", "tails": "two-sided"}}},
    # ablation (planted demo: L3H2 alone drops the margin 3.7 logits, relative 0.94; L1H1 and L2H1 carry nothing)
    "necessary_and_sufficient_from_a_drop": _ablation(
        "L3H2 is necessary and sufficient for recalling the made-up facts: mean-ablating it reduces the headline margin."),
    "each_of_three_from_a_combined_drop": _ablation(
        "Each of L3H2, L1H1 and L2H1, mean-ablated, reduces the headline margin.",
        analysis={**_DROP_L3H2, "mode": "combined", "targets": ["L3H2", "L1H1", "L2H1"]}),
    "specific_without_control_pairs": _ablation(
        "Mean-ablating L3H2 reduces the margin specifically on the made-up facts and not on control pairs."),
    "most_important_without_baseline": _ablation(
        "L3H2 is the most important head of the model for the made-up facts: mean-ablating it reduces the headline margin."),
    "removes_entirely_with_relative_drop_0_3": _ablation(
        "Mean-ablating L3H2 removes the headline margin entirely.", thresholds=("alpha", "min_relative_drop")),
    "at_least_5_logits_with_bound_1_5": _ablation(
        "Mean-ablating L3H2 reduces the headline margin by at least 5 logits.", thresholds=("alpha", "min_mean_drop_logits")),
    "zero_ablating_words_mean_arm": _ablation("Zero-ablating L3H2 reduces the headline margin."),
    "only_this_head_from_one_drop": _ablation(
        "Only L3H2 matters: no other head slot changes the headline margin when ablated, and ablating L3H2 reduces it."),
}

BASES = {"routing": "demo", "ablation": "demo-ablation"}


def _build(repo: Path, base: str, cases: dict[str, dict]) -> tuple[Path, dict[str, str]]:
    """A copy of the base study holding only ``cases``' hypotheses (H1, H2, ... in order); the demo's own
    hypotheses, its greedy run (routing) and its SAEs (ablation) removed so the capture is short."""
    name = f"adv-{base}"
    edits = [{"set": "/hypotheses", "to": []}, {"set": "/analyses", "to": []}]
    if base == "routing":
        edits += [{"append": "/units/targets", "value": {"id": "L0E3", "layer": 0, "expert": 3}},
                  {"set": "/runtime/runs", "to": [{"id": "sampled", "decoding": "sample", "temperature": 1.0, "top_p": 1.0,
                                                    "top_k": 0, "seed": 1234}]}]
    ids, hyps, values = {}, [], {}
    for i, (case, spec) in enumerate(cases.items(), start=1):
        ids[case] = f"H{i}"
        edits += copy.deepcopy(spec.get("edits", []))  # a case's own edits of the plan (an honest twin's second run)
        hyps.append({"id": f"H{i}", **copy.deepcopy(spec["hypothesis"])})  # no shared objects: YAML would alias them
        values.update(spec.get("threshold_values", {}))
    study = copy_study(BASES[base], repo, as_name=name)
    write_case(study, {"edits": edits, "hypotheses": hyps})
    doc = yaml.safe_load((study / "study.yaml").read_text())
    if base == "ablation":
        doc["ablation"].pop("saes", None)
        doc.pop("files", None)
    (study / "study.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    tpath = study / "thresholds.yaml"
    thresholds = yaml.safe_load(tpath.read_text())
    for key, value in values.items():  # a threshold the base does not define is added
        thresholds["thresholds"].setdefault(key, {"description": "adversarial bound"})["value"] = value
    tpath.write_text(yaml.safe_dump(thresholds, sort_keys=False))
    return study, ids


def _refusal(tmp_path: Path, case: str) -> list[tuple[str, str]] | None:
    """The problems validation names for the case's hypothesis or analysis when it refuses the case alone."""
    repo = tmp_path / case
    repo.mkdir()
    study, _ = _build(repo, DEFECTS[case]["base"], {case: DEFECTS[case]})
    try:
        load_study(study)
    except SchemaError as error:
        return [(p.pointer, p.message) for p in error.problems]
    return None


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """Each base's cases that validate alone, frozen, captured, labelled and audited together: base -> case ->
    the case's claim in the ledger."""
    root = tmp_path_factory.mktemp("adversarial-words")
    statuses: dict[str, dict[str, dict]] = {}
    for base in BASES:
        passing = {c: s for c, s in DEFECTS.items() if s["base"] == base and _refusal(root, c) is None}
        if not passing:
            continue
        repo = root / f"repo-{base}"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        study, ids = _build(repo, base, passing)
        commit_all(repo, "an adversarial plan")
        where = f"preregistrations/{study.name}"
        result = invoke("prereg", where, cwd=repo)
        assert result.exit_code == 0, result.output
        commit_all(repo, "freeze")
        for args in (("capture", where, "--no-progress"), ("label", where), ("audit", where)):
            result = invoke(*args, cwd=repo)
            assert result.exit_code == 0, result.output
        ledger = json.loads((repo / "reports" / study.name / "ledger.json").read_text())
        by_id = {c["hypothesis"]: c for c in ledger["claims"]}
        statuses[base] = {case: by_id[hid] for case, hid in ids.items()}
    return statuses


@pytest.mark.parametrize("case", sorted(DEFECTS))
def test_a_claim_asking_more_than_its_analysis_is_refused_or_not_passed(tmp_path, ledgers, case):
    problems = _refusal(tmp_path, case)
    if problems is not None:  # refused at validation: the message names the hypothesis, its analysis or its bound
        assert any(p.startswith(("/hypotheses/0", "/analyses/0", "/thresholds/")) for p, _ in problems), problems
        return
    claim = ledgers[DEFECTS[case]["base"]][case]
    assert claim["status"] in NOT_PASSED, (
        f"{case}: validated and audited {claim['status']!r}, though its words ask more than its analysis tests: "
        f"{claim['claim']!r} -- {claim['reason']}")


# Attacks validation already refuses: a guard each (validation only, no capture).
GUARDS = {
    "alpha_above_the_limit": (_routing("In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts.",
                                       threshold_values={"alpha": 0.5}),
                              "thresholds.yaml", "/thresholds/alpha/value", "a significance level must lie in (0, 0.2]"),
    "rank_bound_below_one": (_routing("L1E5 is the best-separating unit of all experts in the trimmed zone.",
                                      thresholds=("alpha", "max_target_rank"), threshold_values={"max_target_rank": 0},
                                      analysis={k: v for k, v in {**_TRIMMED_W, "kind": "all_unit_baseline"}.items() if k != "unit"}),
                             "thresholds.yaml", "/thresholds/max_target_rank/value", "a rank among the units"),
    "auc_bound_above_one": (_routing("In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts.",
                                     thresholds=("alpha", "min_auc"), threshold_values={"min_auc": 1.5}),
                            "thresholds.yaml", "/thresholds/min_auc/value", "an AUC"),
    "claim_names_a_second_unit": (_routing("In trimmed text, L1E5 and L0E3 both carry more W on FIRE prompts than on NOFIRE prompts."),
                                  "study.yaml", "/hypotheses/0/claim", "names L0E3, but analysis 'A1' tests L1E5"),
    "confirmatory_same_w_without_bound": ({"base": "routing", "hypothesis": {
        "claim": "In trimmed text, L0E3 carries the same W on FIRE prompts as on NOFIRE prompts.",
        "direction": "none_expected", "kind": "confirmatory", "thresholds": ["alpha"],
        "analysis": {**_TRIMMED_W, "unit": "L0E3", "tails": "two-sided"}}},
        "study.yaml", "/hypotheses/0/thresholds", "needs an equivalence-style bound"),
    "greedy_words_sampled_run": (_routing("Under greedy decoding, L1E5 carries more trimmed-text W on FIRE prompts than on NOFIRE prompts."),
                                 "study.yaml", "/hypotheses/0/claim", "speaks of greedy decoding"),
    "more_on_nofire_tested_fire_greater": (_routing("In trimmed text, L1E5 carries more W on NOFIRE prompts than on FIRE prompts."),
                                           "study.yaml", "/hypotheses/0/claim", "swap the groups or the direction"),
    "specificity_bound_on_a_drop": (_ablation("Mean-ablating L3H2 drops the headline margin at least five times the control drop.",
                                              thresholds=("alpha", "min_specificity_ratio")),
                                    "study.yaml", "/hypotheses/0/thresholds/1", "which a ablation_drop analysis does not compute"),
}


@pytest.mark.parametrize("case", sorted(GUARDS))
def test_validation_refuses_the_attack_with_file_field_and_fix(repo, case):
    spec, file, pointer, words = GUARDS[case]
    study, _ = _build(repo, spec["base"], {case: spec})
    with pytest.raises(SchemaError) as info:
        load_study(study)
    problems = [(p.file, p.pointer, p.message) for p in info.value.problems]
    assert any(f == file and p == pointer and words in m for f, p, m in problems), problems


# The defects the claim-word rules (lockstep/claim_words.py) refuse at validation, before any data: the pointer
# and the words of the message. The one left, "necessary and sufficient", is the audit's scope lint (unsupported).
REFUSED_AT_VALIDATE = {
    "only_on_fire_none_on_nofire": ("/hypotheses/0/claim", "'only on FIRE': that one group carries nothing"),
    "every_layer_from_one_unit": ("/hypotheses/0/claim", "speaks of 'every layer', but analysis 'A1' (two_group) tests L1E5 alone"),
    "every_run_from_one_run": ("/hypotheses/0/claim", "speaks of 'every run', but analysis 'A1' (two_group) reads run sampled"),
    "most_selective_without_baseline": ("/hypotheses/0/claim", "'the most selective', a rank among all units"),
    "four_times_without_ratio_bound": ("/hypotheses/0/thresholds", "add min_ratio with a value of at least 4"),
    "four_times_with_ratio_bound_1_1": ("/hypotheses/0/claim", "its bound min_ratio is 1.1 in thresholds.yaml, below 4"),
    "p_below_0_0001_tested_at_alpha_0_05": ("/hypotheses/0/claim", "'p below 0.0001', but the claim is tested at alpha = 0.05"),
    "spill_words_trimmed_zone": ("/hypotheses/0/claim", "speaks of the spill ('spill'), but analysis 'A1' (two_group) scores the trimmed zone"),
    "selection_rate_words_w_metric": ("/hypotheses/0/claim", "speaks of S ('selected more often'), but analysis 'A1' (two_group) scores W"),
    "large_effect_with_cohen_d_bound_minus_10": ("/hypotheses/0/claim", "its bound min_cohen_d is -10 in thresholds.yaml, below 0.8"),
    "register_words_class_groups": ("/hypotheses/0/claim", "speaks of the generated register ('inner-register')"),
    "same_w_without_equivalence_bound": ("/hypotheses/0/thresholds", "needs an equivalence-style bound"),
    "each_of_three_from_a_combined_drop": ("/hypotheses/0/claim", "'Each of L3H2', one unit at a time"),
    "specific_without_control_pairs": ("/hypotheses/0/claim", "add a specificity analysis"),
    "most_important_without_baseline": ("/hypotheses/0/claim", "'the most important', a rank among all units"),
    "removes_entirely_with_relative_drop_0_3": ("/hypotheses/0/claim", "its bound min_relative_drop is 0.3 in thresholds.yaml, below 0.9"),
    "at_least_5_logits_with_bound_1_5": ("/hypotheses/0/claim", "its bound min_mean_drop_logits is 1.5 in thresholds.yaml, below 5"),
    "zero_ablating_words_mean_arm": ("/hypotheses/0/claim", "'Zero-ablating', but analysis 'A1' (ablation_drop) reads the mean-ablation arm"),
    "only_this_head_from_one_drop": ("/hypotheses/0/claim", "'Only L3H2 matters': that no other unit matters"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_AT_VALIDATE))
def test_the_claim_word_rule_refuses_the_defect_at_validation(tmp_path, case):
    pointer, words = REFUSED_AT_VALIDATE[case]
    problems = _refusal(tmp_path, case)
    assert problems is not None and any(p == pointer and words in m for p, m in problems), problems


# Honest twins of the word rules: the same words ("only", "every", "the most", "three times", "p below", "spill",
# "S", "large effect", "register", "each of", "specifically", "entirely", "logits", "the same") used as the analysis
# supports them. Each must validate: a word rule that refuses honest wording is a defect too.
_GREEDY = {"append": "/runtime/runs", "value": {"id": "greedy", "decoding": "greedy"}}
_SPECIFICITY = {"kind": "specificity", "metric": "margin_drop", "mode": "combined", "targets": ["L3H2", "L1H1", "L2H1"],
                "run": "forward", "split": "heldout", "pairs": "headline", "control": "control", "statistic": "mean_diff",
                "test": "permutation", "tails": "greater"}
HONEST = {
    "only_heldout_prompts_scored": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts; only heldout prompts are scored."),
    "only_names_the_ablated_head": _ablation("Mean-ablating only L3H2 reduces the headline margin."),
    "every_layer_and_the_most_from_the_baseline": _routing(
        "Of all experts in every layer, L1E5 is the most selective in the trimmed zone: it separates FIRE from NOFIRE best.",
        thresholds=("alpha", "max_target_rank"),
        analysis={k: v for k, v in {**_TRIMMED_W, "kind": "all_unit_baseline"}.items() if k != "unit"}),
    "both_runs_from_a_reproduction": {**_routing(
        "In both runs, under both decodings (sampled and greedy), L1E5's trimmed-text FIRE/NOFIRE separation of W is reproduced.",
        thresholds=("reproduction_ratio_tolerance",),
        analysis={**{k: v for k, v in _TRIMMED_W.items() if k != "run"}, "kind": "reproduction", "runs": ["sampled", "greedy"]}),
        "edits": [_GREEDY]},
    "at_most_is_no_superlative": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts, with p at most alpha."),
    "three_times_with_ratio_bound_3": _routing(
        "In trimmed text, L1E5's W on FIRE prompts is at least three times its W on NOFIRE prompts.",
        thresholds=("alpha", "min_ratio"), threshold_values={"min_ratio": 3.0}),
    "p_below_0_05_tested_at_alpha_0_05": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts, with p below 0.05."),
    "trimmed_before_the_spill": _routing(
        "In generated text trimmed before the spill after the end-of-turn token, L1E5 carries more W on FIRE prompts than on "
        "NOFIRE prompts."),
    "selection_rate_words_s_metric": _routing(
        "In trimmed text, L1E5 is selected more often (a higher selection rate S) on FIRE prompts than on NOFIRE prompts.",
        analysis={**_TRIMMED_W, "metric": "S"}),
    "large_effect_with_cohen_d_bound_0_8": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts, with a large effect size "
        "(Cohen's d at least min_cohen_d).", thresholds=("alpha", "min_cohen_d"), threshold_values={"min_cohen_d": 0.8}),
    "register_named_with_both_classes": _routing(
        "In trimmed text, L1E5 carries more W on FIRE prompts than on NOFIRE prompts, whatever the register of the generations."),
    "each_of_two_heads_individually": _ablation(
        "Each of L1H1 and L2H1, mean-ablated alone, reduces the headline margin (Holm-corrected).",
        analysis={**_DROP_L3H2, "targets": ["L1H1", "L2H1"], "correction": "holm"}),
    "specifically_with_a_specificity_analysis": _ablation(
        "Mean-ablating L3H2, L1H1 and L2H1 together reduces the margin specifically on the made-up facts and not on control "
        "pairs: headline drops exceed control drops.", analysis=_SPECIFICITY),
    "almost_entirely_with_relative_drop_0_9": _ablation(
        "Mean-ablating L3H2 removes the headline margin almost entirely: the relative drop is at least min_relative_drop.",
        thresholds=("alpha", "min_relative_drop"), threshold_values={"min_relative_drop": 0.9}),
    "by_at_least_1_5_logits_with_bound_1_5": _ablation(
        "Mean-ablating L3H2 reduces the headline margin by at least 1.5 logits.", thresholds=("alpha", "min_mean_drop_logits")),
    "mean_rather_than_zeroing": _ablation("Mean-ablating L3H2, rather than zeroing it, reduces the headline margin."),
    "no_significant_difference_without_bound": {"base": "routing", "hypothesis": {
        "claim": "In trimmed text, L0E3's W shows no significant difference between FIRE and NOFIRE prompts at alpha.",
        "direction": "none_expected", "kind": "exploratory", "thresholds": ["alpha"],
        "analysis": {**_TRIMMED_W, "unit": "L0E3", "tails": "two-sided"}}},
    "same_w_within_an_equivalence_bound": {"base": "routing", "threshold_values": {"max_cohen_d": 0.5}, "hypothesis": {
        "claim": "In trimmed text, L0E3 carries the same W on FIRE prompts as on NOFIRE prompts, within max_cohen_d.",
        "direction": "none_expected", "kind": "exploratory", "thresholds": ["alpha", "max_cohen_d"],
        "analysis": {**_TRIMMED_W, "unit": "L0E3", "tails": "two-sided"}}},
}


@pytest.mark.parametrize("case", sorted(HONEST))
def test_honest_wording_of_the_same_words_validates(repo, case):
    study, _ = _build(repo, HONEST[case]["base"], {case: HONEST[case]})
    try:
        load_study(study)
    except SchemaError as error:
        pytest.fail(f"{case}: honest words refused: {[(p.pointer, p.message) for p in error.problems]}")


def test_a_causal_word_from_natural_routing_is_warned_at_validate(repo):
    """'causes' from routing data: validate warns that the audit will call it unsupported, whatever the data."""
    spec = _routing("L1E5 causes the inner register: in trimmed text it carries more W on FIRE prompts than on NOFIRE prompts.")
    study, _ = _build(repo, "routing", {"causes": spec})
    commit_all(repo, "a causal claim from routing")
    result = invoke("validate", str(study), cwd=repo)
    assert result.exit_code == 0, result.output
    assert "H1 will be unsupported at audit whatever the data" in result.output and "'causes'" in result.output


def test_a_sufficiency_word_from_ablation_is_warned_at_validate(repo):
    """'sufficient' from a drop: validate warns that the audit will call it unsupported, whatever the data."""
    study, _ = _build(repo, "ablation", {"sufficient": DEFECTS["necessary_and_sufficient_from_a_drop"]})
    commit_all(repo, "a sufficiency claim from an ablation")
    result = invoke("validate", str(study), cwd=repo)
    assert result.exit_code == 0, result.output
    assert "H1 will be unsupported at audit whatever the data" in result.output and "'sufficient'" in result.output
