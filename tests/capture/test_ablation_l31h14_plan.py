"""The l31h14-ablation plan as reviewed: what capture will run for it (conditions, kinds, exclusions by class) and
the properties the review asked of its prompts, read from the shipped files through the loader users run."""

from __future__ import annotations

import re

from studyrepo import copy_study

from capture.designs.ablation import ablation_kinds, targeted_conditions
from lockstep.study import load_study
from lockstep.units import condition_key

SIX = ["L31H14", "L23H0", "L26H17", "L19H11", "L23H8", "L27H11"]
FIVE = SIX[:5]


def _study(tmp_path):
    return load_study(copy_study("l31h14-ablation", tmp_path))


def test_conditions_kinds_and_the_structured_stopping_rule(tmp_path):
    study = _study(tmp_path)
    conditions = {(mode, condition_key(slots)) for mode, slots in targeted_conditions(study)}
    assert ("combined", condition_key(SIX)) in conditions and ("combined", condition_key(FIVE)) in conditions
    assert {t for m, t in conditions if m == "individual"} == set(FIVE)  # L27H11 is combined-only
    assert ablation_kinds(study.spec["ablation"]) == ["mean", "zero"]
    assert study.spec["ablation"]["min_pairs_after_exclusions"] == {"headline": 40, "control": 8}
    assert study.spec["ablation"]["per_position_means"] >= 1
    assert {a["id"]: a["ablation_kind"] for a in study.analyses}["B6"] == "zero"
    baseline = study.analysis("B3")
    assert (baseline["control"], baseline["statistic"], baseline["null"]) == ("control", "welch_t", "equal_means")
    x2 = next(x for x in study.spec["exclusions"] if x["rule"] == "nonpositive_clean_margin")
    assert "control" not in x2["classes"]


def test_controls_are_template_matched_and_diagnostics_are_apart(tmp_path):
    study = _study(tmp_path)
    headline = study.prompts_in(cls="headline")
    answers = {(p["answer"], p["wrong_answer"]) for p in headline}
    templates = {re.sub(r"\s+", " ", p["clean"]).split(" ")[-1] for p in headline}
    for p in study.prompts_in(cls="control"):
        assert (p["answer"], p["wrong_answer"]) in answers, p["id"]  # a headline pair's answer tokens
        assert p["clean"].split(" ")[-1] in templates, p["id"]
    assert len(study.prompts_in(cls="copy")) >= 5 and len(study.prompts_in(cls="sequence")) >= 5
    for p in study.prompts:
        if "clean" in p:  # the wrong answer never appears in the clean prompt (old ctrl-008 had " Monday")
            assert p["wrong_answer"].strip() not in p["clean"].split(), p["id"]
    assert not [p["id"] for p in headline if p["clean"].startswith("The currency of")]


def test_the_reference_is_template_matched_with_unseen_entities(tmp_path):
    study = _study(tmp_path)
    reference = study.prompts_in(split=study.spec["ablation"]["reference_split"])
    pair_texts = {p[k] for p in study.prompts if "clean" in p for k in ("clean", "corrupted")}
    assert len(reference) >= 24 and not {r["text"] for r in reference} & pair_texts
    endings = {p["clean"].split(" ")[-1] for p in study.prompts_in(cls="headline")}
    assert {r["text"].split(" ")[-1] for r in reference} <= endings  # the same template endings
