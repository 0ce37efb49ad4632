"""Verdicts by declarative rules: thresholds by name, the scope lint, and the eight-point evidence standard.

A threshold's name says what it bounds: ``alpha`` bounds the analysis p-value from above; ``min_<q>``
bounds quantity ``q`` from below; ``max_<q>`` from above; ``<q>_tolerance`` from above. A name whose
quantity the analysis does not produce is a parameter of the analysis (e.g. ``control_drop_floor_logits``)
and is listed as such, never silently passed.

Status rules, in order: ``unsupported`` when the claim asks for more than the evidence type can give
(scope lint); ``not_established`` when data or analyses are missing or too small; ``fell`` when the
primary criterion (the preregistered test at alpha, in the preregistered direction) fails; ``partly_held``
when the primary passes and a named secondary criterion fails or a named warning applies (the target is
not the best unit, spill present in an untrimmed generated zone, the register not shown above the class)
or a point of the evidence standard that the design marks as capping is unmet (:func:`cap_by_evidence`);
otherwise ``held``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lockstep.designs import Design, threshold_quantity
from stats import Flag

from .analyses import Outcome

_MENTAL = re.compile(r"\b(conscious(ness)?|sentien(t|ce)|subjective|qualia|experienc(e|es|ing)|feel(s|ing|ings)?|"
                     r"self[- ]recogni(tion|zes?|ses?)|recogni[sz]es? itself|aware(ness)?|suffer(s|ing)?|inner life|emotions?)\b", re.I)
# "control" is a causal verb only with an object ("controls the register", "controls whether ..."); as a noun
# ("matched NOFIRE controls", "lexical controls") it names a comparison group, and the lint leaves it alone
_CAUSAL = re.compile(r"\b(caus(e|es|ed|al|ally)|necessary|responsible for|drives?|controls?(?=\s+(the|its|their|his|her|what|"
                     r"which|whether|how|when|generation|output|routing)\b)|controlled by|the mechanism)\b", re.I)
# Sufficiency: that the unit alone produces the behaviour. Ablation removes a unit and shows what the margin
# loses without it (necessity); natural routing shows co-occurrence. Neither restores the behaviour from the
# unit alone, so a sufficiency claim is unsupported whatever the data.
_SUFFICIENT = re.compile(r"\b(sufficien(t|cy)|suffices?|is enough to|alone (produces|restores|recovers))\b", re.I)
# A negation covers a phrase only when it stands right before it: at most three words between, none of
# them turning the clause ("not subjective experience", "rather than the model's feelings"; but not
# "is not lexical but reflects the model's feelings" or "is not a bystander: it drives").
_NEGATED = re.compile(r"\b(not|no|never|without|rather than)\b(?:\s+(?!(?:but|and|yet|though|although|it|this|that)\b)"
                      r"[\w'’-]+){0,3}\s*$", re.I)


@dataclass(frozen=True)
class Criterion:
    name: str
    threshold: float | None
    observed: float | None
    passed: bool
    text: str

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def resolve_threshold(name: str, value: float, quantities: dict[str, float], *, magnitude: bool = False) -> Criterion | None:
    """The criterion a named threshold sets on an analysis's quantities; None if it is a parameter.

    ``magnitude``: an upper bound bounds the size of the effect, |q|, or max(r, 1/r) for a ratio (a
    none_expected claim's equivalence bound: a large effect the other way is no more "no separation"
    than one this way).
    """
    op, candidates = threshold_quantity(name)
    if op is None:
        return None
    key = next((c for c in candidates if c in quantities), None)
    if key is None:  # a bound whose quantity the analysis did not produce is never silently passed
        return Criterion(name, value, None, False, f"{candidates[0]} was not computed by the analysis: the bound cannot be checked")
    observed = quantities[key]
    absolute = magnitude and op == "<=" and name != "alpha"
    compared, label = observed, key
    if absolute and key.endswith("ratio"):  # a ratio's size is its distance from 1 either way
        compared = (max(observed, 1 / observed) if observed > 0 else float("inf")) if observed == observed else observed
        label = f"max({key}, 1/{key})"
    elif absolute:
        compared, label = abs(observed), f"|{key}|"
    passed = bool(compared == compared and (compared <= value if op == "<=" else compared >= value))
    return Criterion(name, value, observed, passed, f"{label} = {compared:.4g} {'≤' if op == '<=' else '≥'} {value:g} required: {'met' if passed else 'not met'}")


MENTAL_STATE = "mental_state"
CAUSAL_FROM_NATURAL = "causal_from_natural"
SUFFICIENCY = "sufficiency_untested"


def scope_lint(claim: str, design: Design, evidence_type: str | None) -> list[Flag]:
    """Why a claim asks for more than its evidence can give (empty when it does not), as flags with codes."""
    problems = []
    for match in _MENTAL.finditer(claim):
        if not _NEGATED.search(claim[: match.start()]):
            problems.append(Flag(MENTAL_STATE, f"reads unit activity as a mental state ({match.group(0)!r}); routing or "
                                 "ablation data speak of generated text and margins, not of experience"))
            break
    natural = (evidence_type or design.evidence_type) == "natural"
    match = _CAUSAL.search(claim)
    if natural and match and not _NEGATED.search(claim[: match.start()]):
        problems.append(Flag(CAUSAL_FROM_NATURAL, f"makes a causal claim ({match.group(0)!r}) from natural-routing evidence; "
                             "necessity needs an intervention"))
    match = _SUFFICIENT.search(claim)
    if match and not _NEGATED.search(claim[: match.start()]):
        problems.append(Flag(SUFFICIENCY, f"makes a sufficiency claim ({match.group(0)!r}) from "
                             f"{'natural-routing' if natural else design.name} evidence, which shows at most what the "
                             "outcome loses without the unit, never that the unit alone produces it; claim what the "
                             "drop shows (e.g. 'necessary'), or test sufficiency by restoring the unit's signal alone"))
    return problems


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    criteria: list[Criterion]
    parameters: list[str]
    codes: tuple[str, ...] = ()  # codes of the flags behind the status (scope lint, warnings that named it)


# Warnings that make a claim whose primary criterion passed only partly held.
# sae_low_variance_explained: an SAE knockdown read through an SAE that reconstructs the activation poorly.
NAMED_WARNINGS = ("best_not_target", "spill_in_zone", "register_not_above_class", "sae_low_variance_explained")


def decide(hypothesis: dict, outcome: Outcome, thresholds: dict[str, float], design: Design) -> Verdict:
    lint = scope_lint(hypothesis["claim"], design, hypothesis.get("evidence_type"))
    criteria, parameters = [], []
    for name in hypothesis["thresholds"]:
        criterion = resolve_threshold(name, thresholds[name], outcome.quantities,
                                      magnitude=hypothesis["direction"] == "none_expected")
        (criteria.append(criterion) if criterion else parameters.append(name))
    if lint:
        return Verdict("unsupported", "; ".join(f.message for f in lint), criteria, parameters,
                       tuple(f.code for f in lint))
    if outcome.not_established:
        return Verdict("not_established", outcome.not_established, criteria, parameters)
    undefined = [c for c in criteria if c.observed is None or c.observed != c.observed]
    if undefined:  # never decide on NaN (a 0/0 ratio, a statistic of constant data)
        why = "; ".join(f"{c.name} cannot be checked: the quantity it bounds is undefined (NaN)" for c in undefined)
        if any("ratio" in c.name for c in undefined):
            why += " (a ratio of two zero means: preregister ratio_floor on the analysis)"
        return Verdict("not_established", why, criteria, parameters)
    if hypothesis["direction"] == "none_expected":
        return _none_expected(outcome, criteria, parameters)
    if outcome.facts.get("decided_by_bounds"):  # a descriptive comparison (basin_comparison): its bounds are its test
        failed = [c for c in criteria if not c.passed]
        if failed:
            return Verdict("fell", f"the preregistered criterion failed: {'; '.join(c.text for c in failed)} ({outcome.primary_text})",
                           criteria, parameters)
    if not outcome.primary_passed:
        return Verdict("fell", f"the primary criterion failed: {outcome.primary_text}", criteria, parameters)
    failed = [c for c in criteria if not c.passed and c.name != "alpha"]
    named = [w for w in outcome.warnings if w.code in NAMED_WARNINGS]
    if failed or named:
        why = [c.text for c in failed] + [w.message for w in named]
        return Verdict("partly_held", f"the primary criterion passed ({outcome.primary_text}), but " + "; ".join(why), criteria,
                       parameters, tuple(w.code for w in named))
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
    """Score the eight points for one claim, each with the fact that met or failed it (None: not applicable).

    Which points apply is the design record's (``evidence_points``); the facts of points 1-7 come from
    the design's audit module, point 8 is the scope lint of the claim text.
    """
    from .designs import audit_design

    record = study.design_record
    facts = audit_design(study.design).evidence_facts(hypothesis, analysis, outcome, study_outcomes, study)
    facts[8] = (MENTAL_STATE not in verdict.codes, "scope lint of the claim text")
    directional = hypothesis["direction"] != "none_expected"
    out = []
    for n, name in EVIDENCE_POINTS:
        if n not in record.evidence_points:
            article = "an" if record.name[:1] in "aeiou" else "a"
            out.append({"point": n, "name": name, "met": None, "fact": f"not applicable to {article} {record.name} design",
                        "caps": None})
        else:
            met, fact = facts[n]
            caps = "unsupported" if n == 8 else ("partly_held" if directional and n in record.capping_points else None)
            out.append({"point": n, "name": name, "met": bool(met), "fact": fact, "caps": caps})
    return out


def cap_by_evidence(verdict: Verdict, points: list[dict]) -> Verdict:
    """A held claim with an unmet capping point of the evidence standard is only partly held.

    Which points cap is the design record's (``capping_points``; written into each point as ``caps``).
    Only ``held`` is capped: a claim that fell, is not established or is unsupported keeps its status,
    and a partly held one gains the unmet point in its reason.
    """
    unmet = [p for p in points if p["met"] is False and p["caps"] == "partly_held"]
    if not unmet or verdict.status not in ("held", "partly_held"):
        return verdict
    why = "; ".join(f"evidence point {p['point']} ({p['name']}) is unmet: {p['fact']}" for p in unmet)
    codes = verdict.codes + tuple(f"evidence_point_{p['point']}" for p in unmet)
    if verdict.status == "held":
        reason = verdict.reason.replace("; every preregistered threshold met", "") + f"; every preregistered threshold met, but {why}"
    else:
        reason = f"{verdict.reason}; {why}"
    return Verdict("partly_held", reason, verdict.criteria, verdict.parameters, codes)
