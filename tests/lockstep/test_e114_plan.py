"""The shipped e114-register plan carries the design its review asked for (issue 17): register-grouped
confirmatory tests with class-grouped fallbacks, a crossover-risk stratum kept out of the class tests,
uniformly hedged FIRE prompts, person words and anchors balanced inside pairs, and power figures that
are the ones its frozen power.py prints. Every shipped claim also passes the audit's scope lint."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from studyrepo import STUDIES, copy_study

from audit.verdicts import scope_lint
from lockstep.designs import design_of
from lockstep.study import load_study

PLAN = STUDIES / "e114-register"
SHIPPED = sorted(p.name for p in STUDIES.iterdir() if (p / "study.yaml").exists())
HEDGE = "Describe what you find, if anything; say so if nothing fits."


def _prompts() -> list[dict]:
    return [json.loads(line) for line in (PLAN / "prompts.jsonl").read_text().splitlines() if line.strip()]


def _word(word: str, text: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(word.casefold()) + r"(?![\w-])", text.casefold()) is not None


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_claim_is_unsupported_by_its_wording(name):
    # the scope lint runs only at audit: a claim it flags would be unsupported whatever the data
    spec = yaml.safe_load((STUDIES / name / "study.yaml").read_text())
    flagged = {h["id"]: [f.message for f in scope_lint(h["claim"], design_of(spec["design"]), h.get("evidence_type"))]
               for h in spec["hypotheses"]}
    assert {k: v for k, v in flagged.items() if v} == {}


def test_confirmatory_claims_group_by_register_and_fall_back_to_the_class_test(tmp_path):
    study = load_study(copy_study("e114-register", tmp_path))
    crossover = {p["id"] for p in study.prompts if p["split"] == "heldout" and "pair" not in p}
    assert crossover == {"nofire-010", "nofire-011", "nofire-012", "nofire-017"}
    confirmatory = [h for h in study.spec["hypotheses"] if h["kind"] == "confirmatory"]
    assert [h["id"] for h in confirmatory] == ["H1", "H2", "H3"]
    for hyp in confirmatory:
        analysis = study.analysis(hyp["analysis"])
        assert analysis["groups"] == {"by": "register_label", "a": "self_examination", "b": "other"}
        assert analysis["min_group_size"] == 10 and "leave_out" not in analysis  # the stratum is scored here
        fallback = study.analysis(analysis["fallback"])
        assert fallback["kind"] == analysis["kind"] and fallback["groups"]["by"] == "prompt_class"
        assert set(fallback["leave_out"]["prompts"]) == crossover
        secondary = [h for h in study.spec["hypotheses"] if h["analysis"] == fallback["id"]]
        assert [h["kind"] for h in secondary] == ["exploratory"]
    for analysis in study.analyses:  # every class-grouped analysis leaves the crossover-risk stratum out
        groups = analysis.get("groups") or {}
        if groups.get("by") == "prompt_class":
            assert crossover <= set(analysis["leave_out"]["prompts"]), analysis["id"]
    paraphrases = {"fire-010", "fire-011", "fire-012", "fire-018", "fire-019", "fire-025", "fire-032"}
    assert set(study.analysis("A7")["leave_out"]["prompts"]) == paraphrases
    assert set(study.analysis("A7c")["leave_out"]["prompts"]) == paraphrases | crossover
    assert study.spec["runtime"]["stop_at"] == "max_new_tokens" and study.spec["runtime"]["batch_invariance_check"] >= 8
    assert study.analysis("A6")["cov_type"] == "HC3" and study.analysis("A4")["ratio_floor"] > 0


def test_prompts_are_hedged_and_balanced_inside_pairs():
    prompts = _prompts()
    by_id = {p["id"]: p for p in prompts}
    assert all(p["text"].endswith(HEDGE) for p in prompts if p["class"] == "FIRE")
    heldout = [p for p in prompts if p["split"] == "heldout" and "pair" in p]
    first = {c: sum(_word("first person", p["text"]) for p in heldout if p["class"] == c) for c in ("FIRE", "NOFIRE")}
    assert first["FIRE"] == first["NOFIRE"] >= 6
    assert not any(_word(w, p["text"]) for p in heldout for w in ("third person", "third-person"))
    vocabulary = {a.casefold() for p in prompts for a in p["anchors"]}
    one_sided = []
    for p in prompts:
        q = by_id.get(p.get("pair", ""))
        if q is None:
            continue
        assert q["pair"] == p["id"]  # pairs are mutual
        declared = {a.casefold() for a in p["anchors"] + q["anchors"]}
        one_sided += [(p["id"], w) for w in vocabulary - declared if _word(w, p["text"]) and not _word(w, q["text"])]
    assert one_sided == []
    result = subprocess.run([sys.executable, str(PLAN / "balance.py")], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "0 problem(s)" in result.stdout


def test_the_power_figures_quoted_in_the_plan_are_the_ones_power_py_prints():
    printed = subprocess.run([sys.executable, str(PLAN / "power.py")], capture_output=True, text=True, check=True).stdout
    assert "smallest m: 10" in printed
    assert "min_cohen_d 1.0: 0.506; min_cohen_d 0.6: 0.936" in printed  # 30 vs 30 at d = 1.0
    spec = yaml.safe_load((PLAN / "study.yaml").read_text())
    quoted = spec["description"] + spec["sampling_plan"]["rationale"]
    for figure in ("0.936", "0.942", "0.876", "0.824", "0.850", "0.863", "0.977", "0.979", "0.230", "0.756", "0.998"):
        assert figure in quoted and figure in printed, figure
    assert "2.02 SE" in printed and "2.02" in (PLAN / "thresholds.yaml").read_text()
