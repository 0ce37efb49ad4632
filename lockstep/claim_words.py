"""Claim words an analysis does not test: a table of word patterns, each with the property of the analysis
(its kind, mode, runs, metric, zone, groups) or of a bound (its name and value) that the words require.

A verdict rule that passes a claim its own words do not support is a defect even if every number is right,
so these are refused at validation, before any data exist. Each rule reports one problem at the claim's
JSON pointer (``/hypotheses/<i>/claim``, or ``.../thresholds`` for a missing bound) that quotes the words,
says what the analysis tests and how to fix one or the other. A rule reads the words only where they
assert something: "at most" is not a superlative, "prompts only" not an exclusivity claim, "trimmed before
the spill" not a claim about the spill.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .designs import design_of, threshold_quantity

_NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
                 "twice": 2, "double": 2, "thrice": 3, "triple": 3}
_NUMBER = r"(\d+(?:\.\d+)?|two|three|four|five|six|seven|eight|nine|ten)"
#: the smallest bound each effect-size word asks of Cohen's d (Cohen's conventions)
EFFECT_SIZE_WORDS = {"small": 0.2, "medium": 0.5, "moderate": 0.5, "large": 0.8, "big": 0.8, "strong": 0.8,
                     "substantial": 0.8}
#: "removes the margin entirely": the smallest relative drop the words allow (1 is the whole margin)
COMPLETE_RELATIVE_DROP = 0.9
_UNIT_NOUN = r"(?:layers?|experts?|heads?|(?:head\s+)?slots?|units?)"
_WSQ = {"W": re.compile(r"\bW\b|(?i:\brouted weight\b)"),
        "S": re.compile(r"\bS\b|(?i:\bselection[- ]rates?\b|\bselected more often\b|\bselection frequenc(?:y|ies)\b)"),
        "Q": re.compile(r"\bQ\b|(?i:\bconditional[- ]weights?\b)")}
_ARMS = {"zero": re.compile(r"\bzero[- ]ablat\w*|\bzero ablation\b|\bzeroing\b", re.I),
         "mean": re.compile(r"\bmean[- ]ablat\w*|\bmean ablation\b", re.I)}


@dataclass(frozen=True)
class Claim:
    """One hypothesis as the rules read it: its words, its resolved analysis and the values of its bounds."""

    words: str
    hyp: dict
    analysis: dict
    spec: dict
    classes: frozenset[str]
    bounds: dict[str, float]  # the hypothesis' thresholds with their values in thresholds.yaml

    @property
    def name(self) -> str:
        return f"analysis {self.analysis['id']!r} ({self.analysis['kind']})"

    def runs(self) -> list[str]:
        return [self.analysis["run"]] if "run" in self.analysis else list(self.analysis.get("runs", []))

    def units(self) -> str:
        tested = [self.analysis["unit"]] if "unit" in self.analysis else list(self.analysis.get("targets") or [])
        return ", ".join(tested) or "its units"

    def lower_bounds(self, *quantities: str) -> list[tuple[str, float]]:
        """The hypothesis' ``min_*`` bounds on one of ``quantities``, with their values."""
        out = []
        for name, value in self.bounds.items():
            op, candidates = threshold_quantity(name)
            if op == ">=" and set(candidates[:2]) & set(quantities):
                out.append((name, value))
        return out


# Each rule: (what it guards, the words, check). The check gets the claim and the match and returns
# (pointer suffix, message) when the analysis does not test what the words say, None otherwise.
Check = Callable[[Claim, re.Match], "tuple[str, str] | None"]


def _number(text: str) -> float:
    return float(_NUMBER_WORDS.get(text.lower(), text))


def _exclusive_groups(c: Claim, m: re.Match) -> tuple[str, str] | None:
    groups = c.analysis.get("groups") or c.analysis.get("classes")
    if not groups:
        return None
    names = {groups["a"].casefold(), groups["b"].casefold()}
    if m.group("group").casefold() not in names:
        return None
    return "/claim", (f"says {m.group(0)!r}: that one group carries nothing, but {c.name} compares the mean of "
                      f"{groups['a']} with that of {groups['b']} and bounds neither at zero; say what it tests "
                      f"('more on {groups['a']} than on {groups['b']}', with min_ratio for how much more)")


def _exclusive_units(c: Claim, m: re.Match) -> tuple[str, str] | None:
    return "/claim", (f"says {m.group(0)!r}: that no other unit matters, but {c.name} tests {c.units()}, and no analysis "
                      "shows every other unit carries nothing (an all_unit_baseline ranks the target among them, it does "
                      "not clear the rest); claim what is tested, e.g. that it ranks first of all units (all_unit_baseline "
                      "with max_target_rank)")


def _every_unit(c: Claim, m: re.Match) -> tuple[str, str] | None:
    if c.analysis["kind"] in ("all_unit_baseline", "basin_comparison"):
        return None
    return "/claim", (f"speaks of {m.group(0).strip()!r}, but {c.name} tests {c.units()} alone; a claim about every "
                      "layer or unit is not tested by one unit (an all_unit_baseline analysis ranks the target among all "
                      "units): name the unit the analysis tests")


def _every_run(c: Claim, m: re.Match) -> tuple[str, str] | None:
    runs = c.runs()
    study_runs = [r["id"] for r in c.spec["runtime"]["runs"]]
    universal = not m.group(0).lower().startswith("both")
    if len(set(runs)) >= 2 and (not universal or set(study_runs) <= set(runs)):
        return None
    decodings = sorted({r["decoding"] for r in c.spec["runtime"]["runs"] if r["id"] in runs})
    return "/claim", (f"speaks of {m.group(0)!r}, but {c.name} reads run {', '.join(runs) or 'none'} (decoded by "
                      f"{', '.join(decodings) or 'none'}); a claim over runs or decodings needs a reproduction analysis "
                      "whose runs cover them: name the run the analysis reads, or add the runs and a reproduction analysis")


def _superlative(c: Claim, m: re.Match) -> tuple[str, str] | None:
    if c.analysis["kind"] in ("all_unit_baseline", "basin_comparison"):
        return None
    return "/claim", (f"says {m.group(0)!r}, a rank among all units, but {c.name} tests {c.units()} alone and ranks "
                      "nothing; a superlative needs an all_unit_baseline analysis with a max_target_rank bound")


def _times(c: Claim, m: re.Match) -> tuple[str, str] | None:
    n = _number(m.group("n") or m.group("word"))
    if n <= 1:
        return None
    quantity = {"two_group": "ratio", "reproduction": "ratio", "specificity": "specificity_ratio"}.get(c.analysis["kind"])
    if quantity is None:
        return "/claim", (f"says {m.group(0)!r}, a ratio, but a {c.analysis['kind']} analysis computes none "
                          f"({c.name}); drop the number or test it with an analysis that computes the ratio")
    return _at_least(c, m.group(0), n, (quantity,), f"min_{quantity}")


def _at_least(c: Claim, said: str, n: float, quantities: tuple[str, ...], suggest: str) -> tuple[str, str] | None:
    bounds = c.lower_bounds(*quantities)
    if not bounds:
        return "/thresholds", (f"lists no bound on {quantities[0]}, but the claim says {said!r}: nothing would check the "
                               f"number; add {suggest} with a value of at least {n:g} to its thresholds, or drop the number")
    if max(v for _, v in bounds) >= n:
        return None
    name, value = max(bounds, key=lambda b: b[1])
    return "/claim", (f"says {said!r}, but its bound {name} is {value:g} in thresholds.yaml, below {n:g}: the claim would "
                      f"be passed at {value:g}; raise {name} to at least {n:g} or say what the bound tests")


def _p_below(c: Claim, m: re.Match) -> tuple[str, str] | None:
    n = float(m.group("p"))
    if "alpha" not in c.bounds:
        return "/thresholds", (f"lists no alpha, but the claim says {m.group(0)!r}: nothing would check the p-value; "
                               f"list alpha and set it to at most {n:g}")
    if c.bounds["alpha"] <= n:
        return None
    return "/claim", (f"says {m.group(0)!r}, but the claim is tested at alpha = {c.bounds['alpha']:g}: it would be passed at "
                      f"p = {c.bounds['alpha']:g}; test it at a significance level of at most {n:g} (a threshold of its "
                      "own) or drop the number")


def _spill(c: Claim, m: re.Match) -> tuple[str, str] | None:
    zone = c.analysis.get("zone")
    if zone not in ("trimmed", "prefill") or re.search(r"\b(trimmed|before|without|excluding|excluded|free of|cut|removed)\b",
                                                       c.words, re.I):
        return None
    return "/claim", (f"speaks of the spill ({m.group(0)!r}), but {c.name} scores the {zone} zone, which holds none of it; "
                      "score zone: spill (or generated, spill included), or drop the words")


def _metric(c: Claim, m: re.Match) -> tuple[str, str] | None:
    metric = c.analysis.get("metric")
    if metric not in _WSQ or c.analysis["kind"] == "wsq_decomposition":
        return None
    named = {k for k, pattern in _WSQ.items() if pattern.search(c.words)}
    if not named or metric in named:
        return None
    return "/claim", (f"speaks of {' and '.join(sorted(named))} ({m.group(0)!r}), but {c.name} scores {metric}; set the "
                      f"analysis' metric to {'/'.join(sorted(named))} or speak of {metric}")


def _arm(c: Claim, m: re.Match) -> tuple[str, str] | None:
    kind = c.analysis.get("ablation_kind")
    said = sorted(k for k, pattern in _ARMS.items() if pattern.search(c.words))
    if kind is None or kind in said or c.analysis["kind"] not in ("ablation_drop", "specificity", "all_unit_baseline"):
        return None
    return "/claim", (f"says {m.group(0)!r}, but {c.name} reads the {kind}-ablation arm; set the analysis' ablation_kind: "
                      f"{said[0]} (captured when /ablation/kind or sensitivity_kinds names it), or speak of {kind} ablation")


def _effect_size(c: Claim, m: re.Match) -> tuple[str, str] | None:
    n = EFFECT_SIZE_WORDS[m.group("size").lower()]
    if c.analysis["kind"] not in ("two_group", "reproduction"):
        return "/claim", (f"says {m.group(0)!r}, but a {c.analysis['kind']} analysis computes no effect size ({c.name}); "
                          "drop the words or test them with an analysis that computes Cohen's d")
    return _at_least(c, m.group(0), n, ("cohen_d", "hedges_g"), "min_cohen_d")


def _grouping(c: Claim, m: re.Match) -> tuple[str, str] | None:
    groups = c.analysis.get("groups")
    if not groups:
        return None
    named = [g for g in (groups["a"], groups["b"]) if re.search(rf"(?<!\w){re.escape(g)}(?!\w)", c.words, re.I)]
    if named:
        return None
    if groups["by"] == "prompt_class" and m.group("register"):
        return "/claim", (f"speaks of the generated register ({m.group(0)!r}), but {c.name} groups by prompt class "
                          f"({groups['a']} against {groups['b']}); group by register_label, or speak of the prompt classes")
    if groups["by"] == "register_label" and m.group("cls") and m.group("cls") in c.classes:
        return "/claim", (f"speaks of prompt class {m.group('cls')} ({m.group(0)!r}), but {c.name} groups by the register "
                          f"label ({groups['a']} against {groups['b']}); group by prompt_class, or speak of the labels")
    return None


def _each_target(c: Claim, m: re.Match) -> tuple[str, str] | None:
    if c.analysis.get("mode") != "combined" or c.analysis["kind"] not in ("ablation_drop", "specificity"):
        return None
    return "/claim", (f"says {m.group(0)!r}, one unit at a time, but {c.name} ablates {c.units()} together (mode: "
                      "combined), and a combined drop says nothing of each; set mode: individual (one test per target, "
                      "Holm-corrected), or speak of the combined set")


def _specific(c: Claim, m: re.Match) -> tuple[str, str] | None:
    kind = c.analysis["kind"]
    if design_of(c.spec["design"]).name != "ablation" or kind == "specificity":
        return None
    if kind == "all_unit_baseline" and "control" in c.analysis:
        return None
    return "/claim", (f"says {m.group(0)!r}: that the drop is specific to the headline pairs, but {c.name} reads the "
                      f"{c.analysis.get('pairs', 'headline')} pairs alone, with no control to compare; add a specificity "
                      "analysis (control: <class>) with min_specificity_ratio, or drop the words")


def _complete(c: Claim, m: re.Match) -> tuple[str, str] | None:
    if c.analysis["kind"] not in ("ablation_drop", "specificity"):
        return None
    return _at_least(c, m.group(0), COMPLETE_RELATIVE_DROP, ("relative_drop",), "min_relative_drop")


def _logits(c: Claim, m: re.Match) -> tuple[str, str] | None:
    if c.analysis["kind"] not in ("ablation_drop", "specificity", "sae_knockdown"):
        return None
    return _at_least(c, m.group(0), _number(m.group("n")), ("mean_drop", "feature_mean_drop"), "min_mean_drop_logits")


def _sameness(c: Claim, m: re.Match) -> tuple[str, str] | None:
    if c.hyp["direction"] != "none_expected" or c.hyp["kind"] == "confirmatory":
        return None  # a confirmatory none_expected claim needs the bound whatever its words (study._check_claims)
    if any(name.startswith("max_") or name.endswith("_tolerance") for name in c.bounds):
        return None
    return "/thresholds", (f"says {m.group(0)!r}, but lists no equivalence-style bound: {c.name} failing to reject is not "
                           "sameness, so the claim would hold on a separation too small a sample to detect; it needs an "
                           "equivalence-style bound (a max_* threshold, e.g. max_cohen_d), or say what the test shows "
                           "('no significant difference at alpha')")


RULES: tuple[tuple[str, re.Pattern, Check], ...] = (
    ("one group carries nothing", re.compile(
        r"\b(?:only\s+(?:on|in|for|with|when)|(?:none|nothing|no\s+\w+|zero)\s+(?:on|in|for))\s+(?:the\s+)?(?P<group>[\w-]+)",
        re.I), _exclusive_groups),
    ("no other unit matters", re.compile(
        rf"\bno other\s+{_UNIT_NOUN}|\bnone of the other\b|\bthe only\s+{_UNIT_NOUN}|\bonly\s+L\d+[EH]\d+\s+"
        r"(?:matters|counts|carries|drives|does|is)\b", re.I), _exclusive_units),
    ("every layer or unit", re.compile(rf"\b(?:every|all(?:\s+the)?)\s+{_UNIT_NOUN}\b|\beach\s+layer\b", re.I), _every_unit),
    ("every run or decoding", re.compile(
        r"\b(?:every|each|all|any|both)\s+(?:of\s+the\s+)?(?:runs?|decodings?|seeds?)\b|\bwhatever the (?:decoding|run|seed)\b",
        re.I), _every_run),
    ("a superlative", re.compile(
        r"\bthe\s+(?:single\s+)?(?:most|least)\s+[\w-]+|\bthe\s+(?:best|strongest|largest|biggest|greatest|highest|top)\b"
        r"|\b(?:more|stronger|larger)\s+than\s+any\s+other\b|\branks?\s+first\b", re.I), _superlative),
    ("a multiple", re.compile(rf"\b(?P<n>{_NUMBER[1:-1]})\s*(?:times|-fold|fold|×)|\b(?P<word>twice|double|"
                              r"thrice|triple)\s+(?:as|the|its|that)\b", re.I), _times),
    ("a p-value", re.compile(r"\bp(?:[- ]value)?\s*(?:<|≤|<=|below|under|less than|smaller than|(?:of\s+)?at most)\s*"
                             r"(?P<p>\d*\.\d+(?:e-?\d+)?|\d+e-?\d+)", re.I), _p_below),
    ("the spill", re.compile(r"\bspill(?:s|ed|over|-over)?\b|\bafter the end[- ]of[- ](?:turn|text|sequence)\b|\buntrimmed\b",
                             re.I), _spill),
    ("a metric", re.compile(r"\b[WSQ]\b|(?i:\brouted weight\b|\bselection[- ]rates?\b|\bselected more often\b|"
                            r"\bconditional[- ]weights?\b)"), _metric),
    ("an ablation arm", re.compile(r"\bzero[- ]ablat\w*|\bzero ablation\b|\bzeroing\b|\bmean[- ]ablat\w*|\bmean ablation\b",
                                   re.I), _arm),
    ("an effect size", re.compile(r"\b(?P<size>small|medium|moderate|large|big|strong|substantial)\s+(?:standardi[sz]ed\s+)?"
                                  r"(?:effect(?:\s+sizes?)?|cohen'?s\s+d)\b", re.I), _effect_size),
    ("a grouping", re.compile(r"(?P<register>(?i:\bregisters?\b|\b[\w-]+-register\b|\blabel(?:l)?ed\b))|(?P<cls>\b[A-Z][A-Z_]+\b)"
                              r"(?=\s+prompts?\b)"), _grouping),
    ("each unit", re.compile(r"\beach\s+of\s+(?:the\s+)?(?:L\d+[EH]\d+|targets|heads|slots|units|experts|\w+\s+(?:heads|slots|"
                             r"targets|units))|\beach\s+(?:target|head|slot|unit)\b|\bindividually\b|\bseparately\b|"
                             r"\bone at a time\b", re.I), _each_target),
    ("specificity", re.compile(r"\bspecific(?:ally)?\s+(?:to|on|for|in)\b|\bselectively\b|"
                               r"\bnot\s+(?:on|for|in)\s+(?:the\s+)?control", re.I), _specific),
    ("a complete drop", re.compile(r"\b(?:entirely|completely|wholly|abolish\w*|eliminat\w*|wipes?\s+out)\b", re.I), _complete),
    ("a drop in logits", re.compile(rf"\b(?:at least|by|more than|over|no less than)\s+(?P<n>{_NUMBER[1:-1]})\s+logits?\b",
                                    re.I), _logits),
    ("sameness", re.compile(r"\bthe same\b|\bidentical(?:ly)?\b|\bequal(?:ly)?\b|\bequivalent\b|\bindistinguishable\b|"
                            r"\bno difference\b|\bdo(?:es)? not differ\b", re.I), _sameness),
)


def check_claim_words(spec: dict, records: list[dict], thresholds: dict, add) -> None:
    """Every rule of :data:`RULES` on every hypothesis with a known analysis; ``add(pointer, message)`` once per
    rule that fires (at its first firing match)."""
    design = design_of(spec["design"])
    analyses = {a["id"]: design.resolve_analysis(a, spec) for a in spec["analyses"] if isinstance(a, dict) and "kind" in a}
    classes = frozenset(r["class"] for r in records if "class" in r)
    values = {name: float(entry["value"]) for name, entry in thresholds["thresholds"].items()}
    for i, hyp in enumerate(spec["hypotheses"]):
        analysis = analyses.get(hyp["analysis"])
        if analysis is None:
            continue  # reported elsewhere
        claim = Claim(" ".join(hyp["claim"].split()), hyp, analysis, spec, classes,
                      {n: values[n] for n in hyp["thresholds"] if n in values})
        for _, pattern, check in RULES:
            for match in pattern.finditer(claim.words):
                found = check(claim, match)
                if found:
                    add(f"/hypotheses/{i}{found[0]}", found[1])
                    break
