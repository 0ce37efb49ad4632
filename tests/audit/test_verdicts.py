"""Verdict rules, threshold resolution and the scope lint, on small hand-made outcomes."""

from __future__ import annotations

import pytest

from audit.analyses import Outcome
from audit.verdicts import decide, resolve_threshold, scope_lint
from lockstep.designs import ABLATION, ROUTING
from stats import Flag

THRESHOLDS = {"alpha": 0.05, "min_ratio": 5.0, "min_cohen_d": 1.0, "max_target_rank": 1, "control_drop_floor_logits": 0.05,
              "min_mean_drop_logits": 1.5, "reproduction_ratio_tolerance": 0.5}


def hypothesis(claim="L14E114 W separates FIRE from NOFIRE in trimmed generated text.", thresholds=("alpha", "min_ratio", "min_cohen_d"),
               direction="greater"):
    return {"id": "H1", "claim": claim, "direction": direction, "kind": "confirmatory", "analysis": "A1", "thresholds": list(thresholds)}


def outcome(p=0.001, ratio=21.68, d=2.94, passed=True, **extra):
    out = Outcome("A1", "two_group", quantities={"p": p, "ratio": ratio, "cohen_d": d, **extra}, primary_passed=passed,
                  primary_text=f"p = {p}")
    return out


def test_held_when_primary_and_every_threshold_pass():
    # the routing journal's heldout run: ratio 21.68, d 2.94
    verdict = decide(hypothesis(), outcome(), THRESHOLDS, ROUTING)
    assert verdict.status == "held"
    assert [(c.name, c.passed) for c in verdict.criteria] == [("alpha", True), ("min_ratio", True), ("min_cohen_d", True)]


def test_partly_held_names_the_failed_secondary():
    verdict = decide(hypothesis(), outcome(ratio=3.2), THRESHOLDS, ROUTING)
    assert verdict.status == "partly_held"
    assert "ratio = 3.2 ≥ 5 required: not met" in verdict.reason


def test_partly_held_when_the_target_is_not_the_best_unit():
    out = outcome()
    out.warnings.append(Flag("best_not_target", "the best-separating unit is L26E114, not the target L14E114"))
    verdict = decide(hypothesis(), out, THRESHOLDS, ROUTING)
    assert verdict.status == "partly_held" and "L26E114" in verdict.reason
    assert verdict.codes == ("best_not_target",)


def test_rules_read_codes_not_the_wording_of_a_warning():
    reworded = outcome()
    reworded.warnings.append(Flag("best_not_target", "L26E114 separates the classes better than L14E114"))
    assert decide(hypothesis(), reworded, THRESHOLDS, ROUTING).status == "partly_held"
    lookalike = outcome()
    lookalike.warnings.append(Flag("empty_zone", "the best-separating unit is a phrase inside another warning"))
    assert decide(hypothesis(), lookalike, THRESHOLDS, ROUTING).status == "held"


def test_fell_when_the_primary_fails():
    verdict = decide(hypothesis(), outcome(p=0.4, passed=False), THRESHOLDS, ROUTING)
    assert verdict.status == "fell" and verdict.reason.startswith("the primary criterion failed")


def test_not_established_when_data_are_missing():
    out = outcome()
    out.not_established = "too few prompts: 1 in FIRE and 9 in NOFIRE (need 2 each)"
    assert decide(hypothesis(), out, THRESHOLDS, ROUTING).status == "not_established"


@pytest.mark.parametrize("claim", [
    "L14E114 detects subjective experience in the model.",
    "Expert 114 is a consciousness expert.",
    "E114 recognises itself in routing data.",
])
def test_unsupported_when_the_claim_reads_activity_as_a_mental_state(claim):
    verdict = decide(hypothesis(claim), outcome(), THRESHOLDS, ROUTING)
    assert verdict.status == "unsupported" and "mental state" in verdict.reason


def test_unsupported_when_natural_routing_backs_a_causal_claim():
    verdict = decide(hypothesis("L14E114 is causally necessary for the register."), outcome(), THRESHOLDS, ROUTING)
    assert verdict.status == "unsupported" and "necessity needs an intervention" in verdict.reason
    # the same words on intervention evidence are in scope
    assert decide(hypothesis("Ablating the cluster causes the margin to drop."), outcome(), THRESHOLDS, ABLATION).status == "held"


def test_unsupported_when_an_ablation_backs_a_sufficiency_claim():
    """A drop shows what the margin loses without the unit (necessity), never that the unit alone produces it."""
    verdict = decide(hypothesis("L3H2 is necessary and sufficient for the recall: ablating it drops the margin."),
                     outcome(), THRESHOLDS, ABLATION)
    assert verdict.status == "unsupported" and verdict.codes == ("sufficiency_untested",), verdict
    assert "'sufficient'" in verdict.reason and "ablation evidence" in verdict.reason
    # necessity alone is what a drop shows; a negated sufficiency claims nothing more
    assert decide(hypothesis("L3H2 is necessary for the recall."), outcome(), THRESHOLDS, ABLATION).status == "held"
    assert scope_lint("L3H2 is necessary, though not sufficient, for the recall.", ABLATION, "intervention") == []


def test_the_lint_respects_negation():
    assert scope_lint("L14E114 tracks a generated register, not subjective experience.", ROUTING, None) == []
    assert scope_lint("is associated with a generated first-person self-examination register", ROUTING, None) == []


def test_threshold_names_resolve_to_quantities_or_parameters():
    q = {"p": 0.01, "mean_drop": 1.320, "target_rank": 3.0, "reproduction_ratio": 0.4}
    # the ablation card: 1.320 logits against the preset 1.5 threshold
    drop = resolve_threshold("min_mean_drop_logits", 1.5, q)
    assert drop.observed == 1.320 and drop.passed is False
    assert resolve_threshold("max_target_rank", 1, q).passed is False
    assert resolve_threshold("reproduction_ratio_tolerance", 0.5, q).passed is True
    assert resolve_threshold("alpha", 0.05, q).passed is True
    assert resolve_threshold("control_drop_floor_logits", 0.05, q) is None


def test_a_parameter_is_listed_not_passed():
    verdict = decide(hypothesis(thresholds=("alpha", "control_drop_floor_logits")), outcome(), THRESHOLDS, ROUTING)
    assert verdict.parameters == ["control_drop_floor_logits"] and [c.name for c in verdict.criteria] == ["alpha"]


def test_none_expected_holds_without_separation_and_falls_with_it():
    flat = outcome(p=0.6, ratio=1.1, passed=False, prefill_ratio=1.1)
    h = hypothesis("Prefill W does not separate FIRE from NOFIRE.", ("alpha", "max_prefill_ratio"), "none_expected")
    assert decide(h, flat, THRESHOLDS | {"max_prefill_ratio": 2.0}, ROUTING).status == "held"
    steep = outcome(p=0.001, ratio=6.0, prefill_ratio=6.0)
    assert decide(h, steep, THRESHOLDS | {"max_prefill_ratio": 2.0}, ROUTING).status == "fell"



@pytest.mark.parametrize("quantities", [{"cohen_d": -2.8}, {"cohen_d": 2.8}, {"ratio": 0.1}, {"ratio": 10.0}])
def test_no_separation_bounds_the_size_of_the_effect_either_way(quantities):
    """An underpowered test that fails to reject (p 0.2) does not make a large effect the other way
    'no separation': the equivalence bound is on |d| (and on max(r, 1/r) for a ratio)."""
    h = hypothesis("L1E5 shows no separation between FIRE and NOFIRE.", ("alpha", "max_cohen_d", "max_ratio"), "none_expected")
    observed = {"cohen_d": 0.1, "ratio": 1.05} | quantities
    o = outcome(p=0.2, passed=False, **observed)
    verdict = decide(h, o, THRESHOLDS | {"max_cohen_d": 0.5, "max_ratio": 1.5}, ROUTING)
    assert verdict.status == "fell", verdict.reason
    small = decide(h, outcome(p=0.2, passed=False, cohen_d=-0.3, ratio=0.8), THRESHOLDS | {"max_cohen_d": 0.5, "max_ratio": 1.5}, ROUTING)
    assert small.status == "held", small.reason


@pytest.mark.parametrize("claim, code", [
    # a "not" elsewhere in the sentence does not cover the phrase (both were held before the fix)
    ("L1E5 activity is not lexical but reflects the model's feelings about the prompt.", "mental_state"),
    ("L1E5 is not a bystander: it drives the register of the continuation.", "causal_from_natural"),
])
def test_a_nearby_negation_does_not_excuse_the_claim(claim, code):
    verdict = decide(hypothesis(claim), outcome(), THRESHOLDS, ROUTING)
    assert verdict.status == "unsupported" and verdict.codes == (code,)


@pytest.mark.parametrize("claim", [
    "L1E5 tracks a generated register rather than the model's feelings.",
    "L1E5 separates the classes; this is not evidence of awareness.",
    "The register shift is associated with L1E5 but not caused by it in any tested sense.",
])
def test_a_negation_right_before_the_phrase_still_covers_it(claim):
    assert scope_lint(claim, ROUTING, None) == []


def test_spill_in_the_scored_zone_makes_a_passing_claim_partly_held():
    out = outcome()
    out.warnings.append(Flag("spill_in_zone", "61 token(s) of 6 prompt(s) spilled into the generated zone"))
    verdict = decide(hypothesis("L1E5 carries more W on FIRE prompts in generated text."), out, THRESHOLDS, ROUTING)
    assert verdict.status == "partly_held" and "spilled" in verdict.reason


def _points(**met):
    """Evidence-standard entries as the ledger writes them, with ``met`` per point (default met)."""
    from audit.verdicts import EVIDENCE_POINTS

    return [{"point": n, "name": name, "met": met.get(f"p{n}", True), "fact": f"fact {n}",
             "caps": "unsupported" if n == 8 else ("partly_held" if n in ROUTING.capping_points else None)}
            for n, name in EVIDENCE_POINTS]


def test_an_unmet_capping_point_makes_a_held_claim_partly_held():
    from audit.verdicts import cap_by_evidence

    held = decide(hypothesis(), outcome(), THRESHOLDS, ROUTING)
    capped = cap_by_evidence(held, _points(p1=False))
    assert capped.status == "partly_held" and "evidence point 1 (generation-side" in capped.reason
    assert "evidence_point_1" in capped.codes
    # a point another analysis establishes (4: register vs class, 5: reproduction, 7: W/S/Q) is recorded, not capping
    assert cap_by_evidence(held, _points(p4=False, p5=False, p7=False)).status == "held"
    # a claim that fell stays fell
    fell = decide(hypothesis(), outcome(p=0.4, passed=False), THRESHOLDS, ROUTING)
    assert cap_by_evidence(fell, _points(p1=False, p3=False)).status == "fell"


def test_a_criterion_on_an_undefined_quantity_is_not_decided():
    """A 0/0 ratio (prefill W of an expert never selected in either class) is NaN: neither held nor fell."""
    h = hypothesis("Prefill W does not separate FIRE from NOFIRE.", ("alpha", "max_prefill_ratio"), "none_expected")
    verdict = decide(h, outcome(p=0.9, passed=False, prefill_ratio=float("nan")), THRESHOLDS | {"max_prefill_ratio": 2.0}, ROUTING)
    assert verdict.status == "not_established" and "ratio_floor" in verdict.reason
    # an infinite ratio (NOFIRE mean 0, FIRE mean above it) is defined: a max bound is broken, a min bound met
    assert decide(h, outcome(p=0.9, passed=False, prefill_ratio=float("inf")), THRESHOLDS | {"max_prefill_ratio": 2.0},
                  ROUTING).status == "fell"
    assert decide(hypothesis(), outcome(ratio=float("inf")), THRESHOLDS, ROUTING).status == "held"


def test_a_bound_on_a_quantity_the_analysis_did_not_compute_is_not_passed():
    h = hypothesis(thresholds=("alpha", "max_target_rank_upper"))
    verdict = decide(h, outcome(), THRESHOLDS | {"max_target_rank_upper": 3}, ROUTING)
    assert verdict.status == "not_established" and "max_target_rank_upper cannot be checked" in verdict.reason
    assert "max_target_rank_upper" not in verdict.parameters


@pytest.mark.parametrize("claim, unsupported", [
    ("L1E5 carries more W on FIRE prompts than on matched NOFIRE controls.", False),
    ("The separation survives lexical controls in trimmed text.", False),
    ("L1E5 controls the register of the continuation.", True),
    ("The register is controlled by L1E5.", True),
])
def test_control_as_a_noun_is_not_a_causal_claim(claim, unsupported):
    verdict = decide(hypothesis(claim), outcome(), THRESHOLDS, ROUTING)
    assert (verdict.status == "unsupported") == unsupported, verdict.reason
