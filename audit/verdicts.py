"""Verdicts by declarative rules: thresholds by name, the scope lint, and the eight-point evidence standard.

A threshold's name says what it bounds: ``alpha`` bounds the analysis p-value from above; ``min_<q>``
bounds quantity ``q`` from below; ``max_<q>`` from above; ``<q>_tolerance`` from above. A name whose
quantity the analysis does not produce is a parameter of the analysis (e.g. ``control_drop_floor_logits``)
and is listed as such, never silently passed.

Status rules, in order: ``unsupported`` when the claim asks for more than the evidence type can give
(scope lint); ``not_established`` when data or analyses are missing or too small; ``fell`` when the
primary criterion (the preregistered test at alpha, in the preregistered direction) fails; ``partly_held``
when the primary passes and a named secondary criterion fails or a named warning applies (the target is
not the best unit, spill present in an untrimmed generated zone); otherwise ``held``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .analyses import Outcome

_MENTAL = re.compile(r"\b(conscious(ness)?|sentien(t|ce)|subjective|qualia|experienc(e|es|ing)|feel(s|ing|ings)?|"
                     r"self[- ]recogni(tion|zes?|ses?)|recogni[sz]es? itself|aware(ness)?|suffer(s|ing)?|inner life|emotions?)\b", re.I)
_CAUSAL = re.compile(r"\b(caus(e|es|ed|al|ally)|necessary|responsible for|drives?|controls?|the mechanism)\b", re.I)
_NEGATED = re.compile(r"\b(not|no|never|without|rather than)\b[^.;,]{0,40}$", re.I)


@dataclass(frozen=True)
class Criterion:
    name: str
    threshold: float | None
    observed: float | None
    passed: bool
    text: str

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def resolve_threshold(name: str, value: float, quantities: dict[str, float]) -> Criterion | None:
    """The criterion a named threshold sets on an analysis's quantities; None if it is a parameter."""
    if name == "alpha":
        quantity, op = "p", "<="
    elif name.startswith("min_"):
        quantity, op = name[4:], ">="
    elif name.startswith("max_"):
        quantity, op = name[4:], "<="
    elif name.endswith("_tolerance"):
        quantity, op = name[: -len("_tolerance")], "<="
    else:
        return None
    candidates = [quantity, quantity.removesuffix("_logits")] + [quantity.split("_", 1)[1]] if "_" in quantity else [quantity]
    key = next((c for c in candidates if c in quantities), None)
    if key is None:
        return None
    observed = quantities[key]
    passed = bool(observed == observed and (observed <= value if op == "<=" else observed >= value))
    return Criterion(name, value, observed, passed, f"{key} = {observed:.4g} {'≤' if op == '<=' else '≥'} {value:g} required: {'met' if passed else 'not met'}")


def scope_lint(claim: str, design: str, evidence_type: str | None) -> list[str]:
    """Why a claim asks for more than its evidence can give (empty when it does not)."""
    problems = []
    for match in _MENTAL.finditer(claim):
        if not _NEGATED.search(claim[: match.start()]):
            problems.append(f"reads unit activity as a mental state ({match.group(0)!r}); routing or ablation data "
                            "speak of generated text and margins, not of experience")
            break
    natural = (evidence_type or ("natural" if design == "routing" else "intervention")) == "natural"
    match = _CAUSAL.search(claim)
    if natural and match and not _NEGATED.search(claim[: match.start()]):
        problems.append(f"makes a causal claim ({match.group(0)!r}) from natural-routing evidence; necessity needs an intervention")
    return problems


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    criteria: list[Criterion]
    parameters: list[str]


def decide(hypothesis: dict, outcome: Outcome, thresholds: dict[str, float], design: str) -> Verdict:
    lint = scope_lint(hypothesis["claim"], design, hypothesis.get("evidence_type"))
    criteria, parameters = [], []
    for name in hypothesis["thresholds"]:
        criterion = resolve_threshold(name, thresholds[name], outcome.quantities)
        (criteria.append(criterion) if criterion else parameters.append(name))
    if lint:
        return Verdict("unsupported", "; ".join(lint), criteria, parameters)
    if outcome.not_established:
        return Verdict("not_established", outcome.not_established, criteria, parameters)
    if hypothesis["direction"] == "none_expected":
        return _none_expected(outcome, criteria, parameters)
    if not outcome.primary_passed:
        return Verdict("fell", f"the primary criterion failed: {outcome.primary_text}", criteria, parameters)
    failed = [c for c in criteria if not c.passed and c.name != "alpha"]
    named = [w for w in outcome.warnings if w.startswith("the best-separating unit")]
    if failed or named:
        why = [c.text for c in failed] + named
        return Verdict("partly_held", f"the primary criterion passed ({outcome.primary_text}), but " + "; ".join(why), criteria, parameters)
    return Verdict("held", outcome.primary_text + "; every preregistered threshold met", criteria, parameters)


def _none_expected(outcome: Outcome, criteria: list[Criterion], parameters: list[str]) -> Verdict:
    """A hypothesis that predicts no separation holds when no named bound is broken and the test does not reject."""
    broken = [c for c in criteria if not c.passed and c.name != "alpha"]
    rejected = [c for c in criteria if c.name == "alpha" and c.passed]
    if broken or rejected:
        return Verdict("fell", "a separation was predicted not to appear, but " + "; ".join(c.text for c in broken + rejected), criteria, parameters)
    return Verdict("held", f"no separation, as predicted: {outcome.primary_text}", criteria, parameters)


EVIDENCE_POINTS = (
    (1, "generation-side, not prefill-only"),
    (2, "localised to a named unit"),
    (3, "survives lexical controls"),
    (4, "separates prompt class from generated register"),
    (5, "reproduced under deterministic greedy decoding"),
    (6, "trimmed before special-token spill"),
    (7, "reports W/S/Q, not only an aggregate rank"),
    (8, "does not read unit activity as subjective experience"),
)


def evidence_standard(hypothesis: dict, analysis: dict, outcome: Outcome, study_outcomes: dict[str, Outcome],
                      verdict: Verdict, study) -> list[dict]:
    """Score the eight points for one claim, each with the fact that met or failed it (None: not applicable)."""
    if study.design != "routing":
        return [{"point": n, "name": name, "met": None, "fact": "not applicable to an ablation design"} if n != 8 else
                {"point": 8, "name": name, "met": "mental state" not in verdict.reason, "fact": "scope lint of the claim text"}
                for n, name in EVIDENCE_POINTS]
    zone = analysis.get("zone")
    unit = analysis.get("unit") or next((t["id"] for t in study.spec["units"]["targets"]), None)
    same_unit = [(study.analysis(a_id), o) for a_id, o in study_outcomes.items() if study.analysis(a_id).get("unit", unit) == unit]
    register = [o for a, o in same_unit if a["kind"] == "register_vs_class"]
    repro = [o for a, o in same_unit if a["kind"] == "reproduction"]
    anchors = _anchors_matched(study, analysis)
    spill = outcome.facts.get("spill_tokens")
    points = {
        1: (zone in ("generated", "trimmed"), f"scored in the {zone} zone" if zone else "no zone"),
        2: (unit is not None, f"unit {unit}" if unit else "no named unit"),
        3: (anchors and outcome.primary_passed, "classes share their lexical anchors and the primary passed" if anchors
            else "the compared groups do not share lexical anchors"),
        4: (bool(register and register[0].primary_passed),
            register[0].primary_text if register else "no register_vs_class analysis of this unit"),
        5: (bool(repro and repro[0].primary_passed), repro[0].primary_text if repro else "no reproduction analysis of this unit"),
        6: (zone == "trimmed" or (zone == "generated" and spill == 0),
            "trimmed before the first trim token" if zone == "trimmed" else f"zone {zone}; {spill} spill tokens in the run"),
        7: (any(a["kind"] in ("two_group", "wsq_decomposition") for a, _ in same_unit), "W, S and Q tabulated for the unit"),
        8: (not any("mental state" in r for r in [verdict.reason]), "scope lint of the claim text"),
    }
    return [{"point": n, "name": name, "met": bool(points[n][0]), "fact": points[n][1]} for n, name in EVIDENCE_POINTS]


def _anchors_matched(study, analysis: dict) -> bool:
    groups = analysis.get("groups") or ({"by": "prompt_class", **analysis["classes"]} if "classes" in analysis else {})
    if groups.get("by") != "prompt_class":
        return False
    split = analysis.get("split")
    a = {w.casefold() for p in study.prompts_in(split, groups["a"]) for w in p.get("anchors", [])}
    b = {w.casefold() for p in study.prompts_in(split, groups["b"]) for w in p.get("anchors", [])}
    return bool(a & b)
