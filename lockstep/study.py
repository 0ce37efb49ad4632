"""The study model: load the four plan files, validate them against the schemas and the cross-file
rules, and hand every later stage one :class:`Study`.

Validation reports every problem at once (file, line, JSON pointer, what was expected) by raising a
single :class:`~lockstep.errors.SchemaError`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import variants
from .claim_words import check_claim_words
from .designs import ANALYSIS_OUTPUTS, DESIGNS, Design, design_of, threshold_quantity
from .errors import ProblemList
from .lexicon import PILOT_FILE, anchor_overlaps, check_pilot
from .loaders import Parsed, pointer_of, read_jsonl, read_yaml
from .records import _validator, describe
from .units import KINDS, UNIT_ID

PLAN_FILES = ("study.yaml", "prompts.jsonl", "rubric.yaml", "thresholds.yaml")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Study:
    """A validated study plan. ``spec`` is study.yaml; ``prompts`` the prompt records in file order."""

    root: Path
    study_id: str
    design: str
    spec: dict
    prompts: list[dict]
    rubric: dict
    thresholds: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    analyses: tuple[dict, ...] = ()  # /analyses with every default filled in (lockstep.designs)

    @property
    def design_record(self) -> Design:
        return design_of(self.design)

    def prompts_in(self, split: str | None = None, cls: str | None = None) -> list[dict]:
        return [p for p in self.prompts if (split is None or p["split"] == split) and (cls is None or p["class"] == cls)]

    def analysis(self, analysis_id: str) -> dict:
        """The analysis ``analysis_id`` as resolved (defaults filled in)."""
        return next(a for a in self.analyses if a["id"] == analysis_id)

    def target(self, unit_id: str) -> dict:
        return next(t for t in self.spec["units"]["targets"] if t["id"] == unit_id)


def normalise_text(text: str) -> str:
    """Case-folded, NFKC, whitespace collapsed: the form the split-overlap rule compares."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def load_study(root: Path, files: dict[str, Path] | None = None) -> Study:
    """Load and validate the study in ``root``; ``files`` overrides where each plan file is read from
    (the effective plan after amendments). Raises SchemaError listing every problem."""
    root = Path(root)
    files = {name: root / name for name in PLAN_FILES} | dict(files or {})
    problems = ProblemList()
    study = read_yaml(files["study.yaml"], "study.yaml", problems)
    prompts = read_jsonl(files["prompts.jsonl"], "prompts.jsonl", problems)
    rubric = read_yaml(files["rubric.yaml"], "rubric.yaml", problems)
    thresholds = read_yaml(files["thresholds.yaml"], "thresholds.yaml", problems)

    _check_schema("study", "study.yaml", study, problems)
    _check_schema("rubric", "rubric.yaml", rubric, problems)
    _check_schema("thresholds", "thresholds.yaml", thresholds, problems)
    name = study.data.get("design") if isinstance(study.data, dict) else None
    design = DESIGNS.get(name) if isinstance(name, str) else None
    valid_records: list[int] = []
    if prompts.data is not None and design is not None:
        prompt_schema = design.prompt_schema
        for index, record in enumerate(prompts.data):
            if record is not None:
                before = len(problems.problems)
                _check_schema(prompt_schema, "prompts.jsonl", Parsed(record, {}), problems,
                              base=f"/{index}", line=prompts.lines.get(f"/{index}"))
                if len(problems.problems) == before:
                    valid_records.append(index)

    # Cross-file rules run on whatever passed its schema, so one bad field does not hide other problems:
    # a study.yaml with schema errors still gets every cross-file check whose parts of it parsed.
    bad_files = {p.file for p in problems.problems if p.file != "prompts.jsonl"}
    if prompts.data is not None:
        _prompt_checks(prompts, design, problems)
    if rubric.data is not None and "rubric.yaml" not in bad_files:
        _check_rubric(rubric, problems)
    if thresholds.data is not None and "thresholds.yaml" not in bad_files:
        _check_threshold_values(thresholds, problems)
    parsed_all = all(p.data is not None for p in (study, prompts, rubric, thresholds))
    if (parsed_all and isinstance(study.data, dict) and not bad_files - {"study.yaml"}
            and len(valid_records) == len(prompts.data)):
        _cross_checks(root, study, prompts, rubric, thresholds, problems, partial="study.yaml" in bad_files)
    _name_read_files(problems, root, files)
    problems.raise_if_any(hint="correct the files listed, then run `lockstep validate` again")
    spec = study.data
    record = design_of(spec["design"])
    return Study(
        root=root,
        study_id=spec["study_id"],
        design=spec["design"],
        spec=spec,
        prompts=list(prompts.data),
        rubric=rubric.data,
        thresholds={k: float(v["value"]) for k, v in thresholds.data["thresholds"].items()},
        files=files,
        analyses=tuple(record.resolve_analysis(a, spec) for a in spec["analyses"]),
    )


def _name_read_files(problems: ProblemList, root: Path, files: dict[str, Path]) -> None:
    """Name each problem by the file it was read from: a plan file an amendment replaces lives in
    ``amendments/NNN/``, and that copy, not the study's top-level file, is the one to edit."""
    for index, problem in enumerate(problems.problems):
        source = files.get(problem.file)
        if source is not None and Path(source) != root / problem.file:
            try:
                label = Path(source).relative_to(root).as_posix()
            except ValueError:  # read from outside the study folder: name it in full
                label = str(source)
            problems.problems[index] = replace(problem, file=label)


def _check_schema(name: str, file: str, parsed: Parsed, problems: ProblemList, *, base: str = "", line: int | None = None) -> None:
    if parsed.data is None:
        return
    for error in sorted(_validator(name).iter_errors(parsed.data), key=lambda e: list(e.absolute_path)):
        pointer = base + pointer_of(error.absolute_path)
        where = line if line is not None else parsed.line_of(pointer_of(error.absolute_path))
        problems.add(file, pointer, describe(error), where)


ALPHA_RANGE = (0.0, 0.2)  # a significance level outside (0, 0.2] is a typo or a test that means nothing


#: quantities with a bounded range: (lowest, highest, whole numbers only, what the quantity is)
QUANTITY_DOMAINS: dict[str, tuple[float | None, float | None, bool, str]] = {
    "target_rank": (1, None, True, "a rank among the units (1 is the best unit)"),
    "target_percentile": (0, 100, False, "a percentile"),
    "auc": (0, 1, False, "an AUC"),
    "jaccard": (0, 1, False, "a Jaccard overlap"),
    "rank_correlation": (-1, 1, False, "a correlation"),
    "correlation": (-1, 1, False, "a correlation"),
    "rank_correlation_s": (-1, 1, False, "a correlation"),
    "correlation_s": (-1, 1, False, "a correlation"),
    "mismatched_tokens": (0, None, True, "a count"),
    "mismatched_topk": (0, None, True, "a count"),
    "active_pairs": (0, None, True, "a count"),
}


def _check_threshold_values(thresholds: Parsed, problems: ProblemList) -> None:
    """Values a verdict cannot rest on: a significance level (``alpha*``) outside (0, 0.2]; a bound
    outside the range of the quantity it bounds (a rank below 1, a correlation above 1, a negative
    count or tolerance), which the verdict would meet always or never."""
    low, high = ALPHA_RANGE
    for name, entry in thresholds.data["thresholds"].items():
        pointer = f"/thresholds/{name}/value"
        value = float(entry["value"])
        if name.startswith("alpha") and not low < value <= high:
            problems.add("thresholds.yaml", pointer, f"is {entry['value']}, but a significance level must lie in ({low:g}, {high:g}] "
                         "(0.05 is usual); " + ("at 0 no test can reject anything" if value <= 0 else
                                                "a test at this level would call almost anything significant"),
                         thresholds.line_of(pointer))
            continue
        if name.endswith("_tolerance") and value < 0:
            problems.add("thresholds.yaml", pointer, f"is {entry['value']}, but a tolerance is at least 0 (a difference "
                         "within it passes; a negative one passes nothing)", thresholds.line_of(pointer))
            continue
        op, candidates = threshold_quantity(name)
        quantity = next((c for c in candidates if c in QUANTITY_DOMAINS), None)
        if op is None or quantity is None:
            continue
        lo, hi, whole, what = QUANTITY_DOMAINS[quantity]
        outside = (lo is not None and value < lo) or (hi is not None and value > hi)
        if outside or (whole and value != int(value)):
            span = (f"from {lo:g}" if lo is not None else "") + (f" to {hi:g}" if hi is not None else " up")
            problems.add("thresholds.yaml", pointer, f"is {entry['value']}, but {name!r} bounds {quantity!r}, {what}, which runs "
                         f"{span.strip()}" + (" in whole numbers" if whole else "") + "; a bound outside that range is met "
                         "always or never, so the verdict would not depend on the data", thresholds.line_of(pointer))


def unused_thresholds(spec: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """Thresholds no hypothesis lists and /inference/alpha_threshold does not name: numbers no verdict reads."""
    used = {n for hyp in spec["hypotheses"] for n in hyp["thresholds"]} | {spec["inference"]["alpha_threshold"]}
    return sorted(set(thresholds) - used)


def _cross_checks(root: Path, study: Parsed, prompts: Parsed, rubric: Parsed, thresholds: Parsed, problems: ProblemList,
                  *, partial: bool = False) -> None:
    """The cross-file rules, each a step. ``partial``: study.yaml failed its schema, so a step that meets a part
    of it that did not parse (KeyError, TypeError...) is skipped, its cause already reported, and the others run."""

    def add(file: str, parsed: Parsed, pointer: str, message: str) -> None:
        problems.add(file, pointer, message, parsed.line_of(pointer))

    steps = [lambda: _check_references(root, study, thresholds, add), lambda: _check_hypothesis_references(study, thresholds, add)]
    analyses = study.data.get("analyses")
    for i in range(len(analyses) if isinstance(analyses, list) else 0):
        steps.append(lambda i=i: _check_analysis_references(i, study, prompts, rubric, add))
    steps += [
        lambda: _check_claims(study.data, prompts.data, study, add),
        lambda: check_claim_words(study.data, prompts.data, thresholds.data,
                                  lambda pointer, message: add("study.yaml", study, pointer, message)),
        lambda: _check_sampling_plan(study.data, prompts.data, study, add),
        lambda: _check_design_fit(study, prompts, rubric, add),
        lambda: _check_extra_files(root, study.data, study, add),
        lambda: _check_discovery(study.data, prompts.data, study, add),
        lambda: variants.check_plan(study.data, design_of(study.data["design"]),
                                    lambda pointer, message: add("study.yaml", study, pointer, message)),
        lambda: _check_lexicon_and_pilot(root, rubric, prompts.data, problems),
    ]
    for step in steps:
        if not partial:
            step()
            continue
        try:
            step()
        except (KeyError, TypeError, AttributeError, IndexError, ValueError):
            continue  # this rule reads a part of study.yaml its schema error already reported


def _check_references(root: Path, study: Parsed, thresholds: Parsed, add) -> None:
    """Ids, the model block, the target units and the alpha threshold's name."""
    spec = study.data
    if spec["study_id"] != root.name:
        add("study.yaml", study, "/study_id", f"is {spec['study_id']!r} but the folder is {root.name!r}; they must match")

    _check_model(spec, study, add)
    _unique_ids(spec, study, add)
    threshold_names = set(thresholds.data["thresholds"])
    for i, target in enumerate(spec["units"]["targets"]):
        _check_target_id(spec["units"]["kind"], target, f"/units/targets/{i}", study, add)

    alpha = spec["inference"]["alpha_threshold"]
    if alpha not in threshold_names:
        add("study.yaml", study, "/inference/alpha_threshold", f"names {alpha!r}, which is not in thresholds.yaml; defined: {', '.join(sorted(threshold_names))}")


def _check_hypothesis_references(study: Parsed, thresholds: Parsed, add) -> None:
    """The analysis and the thresholds each hypothesis names exist."""
    spec = study.data
    threshold_names = set(thresholds.data["thresholds"])
    analyses = {a["id"] for a in spec["analyses"]}
    for i, hyp in enumerate(spec["hypotheses"]):
        if hyp["analysis"] not in analyses:
            add("study.yaml", study, f"/hypotheses/{i}/analysis", f"names analysis {hyp['analysis']!r}, which is not defined; defined: {', '.join(sorted(analyses))}")
        for j, name in enumerate(hyp["thresholds"]):
            if name not in threshold_names:
                add("study.yaml", study, f"/hypotheses/{i}/thresholds/{j}", f"names threshold {name!r}, which is not in thresholds.yaml")


def _check_analysis_references(i: int, study: Parsed, prompts: Parsed, rubric: Parsed, add) -> None:
    """The units, runs, prompts, classes, labels and fallback that analysis ``i`` names exist."""
    spec, records = study.data, prompts.data
    runs = {r["id"] for r in spec["runtime"]["runs"]}
    targets = {t["id"] for t in spec["units"]["targets"]}
    classes = {r["class"] for r in records}
    splits = {r["split"] for r in records}
    labels = set(rubric.data.get("labels", {}))
    analysis = spec["analyses"][i]
    at = f"/analyses/{i}"
    if "unit" in analysis and analysis["unit"] not in targets:
        add("study.yaml", study, f"{at}/unit", f"names unit {analysis['unit']!r}, which is not a target in /units/targets")
    for j, tid in enumerate(analysis.get("targets", [])):
        if tid not in targets:
            add("study.yaml", study, f"{at}/targets/{j}", f"names unit {tid!r}, which is not a target in /units/targets")
    for key, values in (("run", [analysis.get("run")]), ("runs", analysis.get("runs", []))):
        for j, run in enumerate(values):
            if run is not None and run not in runs:
                pointer = f"{at}/{key}" if key == "run" else f"{at}/runs/{j}"
                add("study.yaml", study, pointer, f"names run {run!r}, which is not in /runtime/runs")
    if "run" not in analysis and "runs" not in analysis and len(runs) > 1:
        add("study.yaml", study, f"{at}", f"names no run, and the study has {len(runs)} ({', '.join(sorted(runs))}); "
            "add `run: <id>` (an analysis reads one run's data; a study with a single run may leave it out)")
    for j, pid in enumerate((analysis.get("leave_out") or {}).get("prompts", [])):
        if pid not in {r.get("id") for r in records}:
            add("study.yaml", study, f"{at}/leave_out/prompts/{j}", f"{pid!r} is not a prompt id in prompts.jsonl")
    fallback = analysis.get("fallback")
    if fallback is not None:
        target = next((a for a in spec["analyses"] if a.get("id") == fallback), None)
        if target is None or fallback == analysis.get("id"):
            add("study.yaml", study, f"{at}/fallback", f"names {fallback!r}, which is not another analysis of the study")
        elif target.get("kind") != analysis.get("kind"):
            add("study.yaml", study, f"{at}/fallback", f"names {fallback!r}, a {target.get('kind')} analysis; a fallback is "
                f"an analysis of the same kind ({analysis.get('kind')})")
    if "split" in analysis and analysis["split"] not in splits:
        add("study.yaml", study, f"{at}/split", f"names split {analysis['split']!r}; prompts.jsonl has {', '.join(sorted(splits))}")
    groups = analysis.get("groups")
    if groups:
        known = classes if groups["by"] == "prompt_class" else labels
        where = "prompt classes in prompts.jsonl" if groups["by"] == "prompt_class" else "labels in rubric.yaml"
        for side in ("a", "b"):
            if groups[side] not in known:
                add("study.yaml", study, f"{at}/groups/{side}", f"{groups[side]!r} is not one of the {where}: {', '.join(sorted(known))}")
    for key in ("classes",):
        for side, value in (analysis.get(key) or {}).items():
            if value not in classes:
                add("study.yaml", study, f"{at}/{key}/{side}", f"{value!r} is not a prompt class in prompts.jsonl")
    for side, value in (analysis.get("register") or {}).items():
        if value not in labels:
            add("study.yaml", study, f"{at}/register/{side}", f"{value!r} is not a label in rubric.yaml")
    for key in ("pairs", "control"):
        if key in analysis and analysis[key] not in classes:
            add("study.yaml", study, f"{at}/{key}", f"{analysis[key]!r} is not a prompt class in prompts.jsonl")


def _check_design_fit(study: Parsed, prompts: Parsed, rubric: Parsed, add) -> None:
    """Units, analysis kinds, the design's own block and the rubric fit the study's design."""
    spec = study.data
    design = design_of(spec["design"])
    targets = {t["id"]: (i, t) for i, t in enumerate(spec["units"]["targets"])}
    splits = {r["split"] for r in prompts.data}
    if spec["units"]["kind"] != design.unit_kind:
        add("study.yaml", study, "/units/kind", f"is {spec['units']['kind']!r}, but a {design.name} study names {design.unit_kind} units")
    for i, analysis in enumerate(spec["analyses"]):
        if analysis["kind"] not in design.analysis_kinds:
            add("study.yaml", study, f"/analyses/{i}/kind",
                f"{analysis['kind']!r} does not apply to a {design.name} study; it offers {', '.join(design.analysis_kinds)}")
    if design.plan_block in _BLOCK_CHECKS:
        _BLOCK_CHECKS[design.plan_block](spec, targets, splits, study, add, classes={r["class"] for r in prompts.data})
    if design.needs_labels and rubric.data["kind"] == "none":
        add("rubric.yaml", rubric, "/kind", f"is 'none' but a {design.name} study labels generated text; use lexicon, judge or human")


def _check_lexicon_and_pilot(root: Path, rubric: Parsed, records: list[dict], problems: ProblemList) -> None:
    """No rubric word set holds a lexical anchor of the prompts (lexicon.anchor_overlaps), and the pilot
    texts, when the study ships them, get the labels they expect (lexicon.check_pilot): the same engine
    the label stage runs."""
    if rubric.data["kind"] == "none":
        return
    if any(p.file == "rubric.yaml" for p in problems.problems):
        return  # the engine runs only a rubric that passed its own checks
    for pointer, message in anchor_overlaps(rubric.data, records):
        problems.add("rubric.yaml", pointer, message, rubric.line_of(pointer))
    check_pilot(root, rubric.data, problems)


_UNIT_IN_TEXT = re.compile(r"\bL\d+[EH]\d+\b")
_DECODING_WORDS = {"greedy": "greedy", "sampled": "sample", "sampling": "sample"}


def _check_claims(spec: dict, records: list[dict], study: Parsed, add) -> None:
    """A hypothesis must say what its analysis tests: direction and tails, thresholds the analysis computes,
    the units, zone and decodings its words name, and (confirmatory) at least one decision criterion."""
    design = design_of(spec["design"])
    analyses = {a["id"]: design.resolve_analysis(a, spec) for a in spec["analyses"] if a.get("kind") in ANALYSIS_OUTPUTS}
    runs = {r["id"]: r for r in spec["runtime"]["runs"]}
    targets = [t["id"] for t in spec["units"]["targets"]]
    for i, hyp in enumerate(spec["hypotheses"]):
        at = f"/hypotheses/{i}"
        analysis = analyses.get(hyp["analysis"])
        if analysis is None:
            continue  # reported elsewhere (unknown analysis or kind)
        words = " ".join(hyp["claim"].split())
        tails = analysis.get("tails")
        if tails is not None:
            if hyp["direction"] == "none_expected" and tails != "two-sided":
                add("study.yaml", study, f"{at}/direction", f"is none_expected but analysis {analysis['id']!r} tests tails "
                    f"{tails!r}; a claim of no separation needs a two-sided test (set /analyses tails: two-sided)")
            elif hyp["direction"] != "none_expected" and hyp["direction"] != tails:
                add("study.yaml", study, f"{at}/direction", f"is {hyp['direction']!r} but analysis {analysis['id']!r} tests tails "
                    f"{tails!r} (group a {_group_a(analysis)!r} against b); a directional claim is tested in its own direction")
        if hyp["direction"] == "none_expected":
            bounds = [n for n in hyp["thresholds"] if n.startswith("max_")]
            if "alpha" not in hyp["thresholds"]:
                add("study.yaml", study, f"{at}/thresholds", "a none_expected claim must list alpha: without it the "
                    "separation test is never allowed to reject, and 'no separation' holds whatever the data")
            if hyp["kind"] == "confirmatory" and not bounds:
                add("study.yaml", study, f"{at}/thresholds", "a confirmatory none_expected claim needs an equivalence-style "
                    "bound on the effect (a max_* threshold, e.g. max_cohen_d); a test that fails to reject confirms nothing")
        outputs = design.outputs(analysis["kind"])
        for j, name in enumerate(hyp["thresholds"]):
            op, candidates = threshold_quantity(name)
            if op is None:
                if not any(name.startswith(prefix) for prefix in outputs["parameters"]):
                    add("study.yaml", study, f"{at}/thresholds/{j}", f"{name!r} is neither a bound (alpha, min_*, max_*, *_tolerance) "
                        f"nor a parameter of a {analysis['kind']} analysis")
            elif not set(candidates) & set(outputs["quantities"]):
                add("study.yaml", study, f"{at}/thresholds/{j}", f"{name!r} bounds {candidates[0]!r}, which a {analysis['kind']} analysis "
                    f"does not compute (it computes {', '.join(outputs['quantities'])}); the bound would never be checked")
        if hyp["kind"] == "confirmatory" and not any(threshold_quantity(n)[0] for n in hyp["thresholds"]):
            add("study.yaml", study, f"{at}/thresholds", "a confirmatory hypothesis needs at least one decision criterion "
                "(alpha, a min_*/max_* bound or a *_tolerance)")
        named = set(_UNIT_IN_TEXT.findall(words))
        tested = {analysis["unit"]} if "unit" in analysis else set(analysis.get("targets") or [])
        if not tested:
            tested = set(spec.get("ablation", {}).get("combined") or []) if analysis.get("mode") == "combined" else set()
            tested = tested or ({targets[0]} if analysis["kind"] == "all_unit_baseline" and targets else set(targets))
        if named - tested:
            add("study.yaml", study, f"{at}/claim", f"names {', '.join(sorted(named - tested))}, but analysis {analysis['id']!r} "
                f"tests {', '.join(sorted(tested)) or 'no named unit'}")
        _check_claim_zone(words, analysis, at, study, add)
        _check_claim_order(words, hyp, analysis, at, study, add)
        if analysis["kind"] == "reproduction" and len(set(analysis.get("runs", []))) < 2:
            add("study.yaml", study, f"/analyses/{list(analyses).index(analysis['id'])}/runs",
                f"names {analysis.get('runs')}; a reproduction compares two different runs")
        mentioned = {d for w, d in _DECODING_WORDS.items() if re.search(rf"\b{w}\b", words, re.I)}
        used = {runs[r]["decoding"] for r in ([analysis["run"]] if "run" in analysis else analysis.get("runs", [])) if r in runs}
        if mentioned and used and not mentioned <= used:
            add("study.yaml", study, f"{at}/claim", f"speaks of {', '.join(sorted(mentioned))} decoding, but analysis "
                f"{analysis['id']!r} reads runs decoded by {', '.join(sorted(used))}")


def _group_a(analysis: dict) -> str | None:
    groups = analysis.get("groups") or analysis.get("classes") or {}
    return groups.get("a") or analysis.get("pairs")


_MORE = r"more|higher|greater|larger|stronger"
_LESS = r"less|lower|smaller|weaker|fewer"


def _check_claim_order(words: str, hyp: dict, analysis: dict, at: str, study: Parsed, add) -> None:
    """A claim that says which group has more must name the group its analysis's direction favours.

    The group a comparative word ("more", "lower", ...) is followed by first is the one it speaks of:
    "more W on NOFIRE than on FIRE" favours NOFIRE; a test of FIRE > NOFIRE (group a FIRE, tails greater)
    would pass it on the opposite effect.
    """
    groups = analysis.get("groups") or ({"by": "prompt_class", **analysis["classes"]} if "classes" in analysis else None)
    if not groups or hyp["direction"] not in ("greater", "less") or groups["a"] == groups["b"]:
        return
    names = "|".join(re.escape(groups[side]) for side in ("a", "b"))
    match = re.search(rf"\b({_MORE}|{_LESS})\b.*?(?<![\w-])({names})(?![\w-])", words, re.I)
    if not match:
        return
    more = re.fullmatch(_MORE, match.group(1), re.I) is not None
    named = groups["a"] if match.group(2).casefold() == groups["a"].casefold() else groups["b"]
    other = groups["b"] if named == groups["a"] else groups["a"]
    favoured = named if more else other
    tested = groups["a"] if hyp["direction"] == "greater" else groups["b"]
    if favoured != tested:
        add("study.yaml", study, f"{at}/claim", f"says {match.group(1)} on {named}, so it favours {favoured}; but analysis "
            f"{analysis['id']!r} tests {groups['a']} {'>' if hyp['direction'] == 'greater' else '<'} {groups['b']} "
            f"(direction {hyp['direction']!r}), which favours {tested}: swap the groups or the direction")


def _check_claim_zone(words: str, analysis: dict, at: str, study: Parsed, add) -> None:
    """The zone a claim's words name must be the zone its analysis scores."""
    zone = analysis.get("zone")
    if zone is None:
        return
    lower = words.lower()
    generated = bool(re.search(r"\bgenerat(ed|ion|ions)\b", lower))
    prefill = bool(re.search(r"\bprefill\b|\bprompt tokens\b", lower))
    if "trimmed" in lower and zone != "trimmed" and not prefill:
        add("study.yaml", study, f"{at}/claim", f"speaks of trimmed text, but analysis {analysis['id']!r} scores the {zone} zone")
    elif generated and not prefill and zone == "prefill":
        add("study.yaml", study, f"{at}/claim", f"speaks of generated text, but analysis {analysis['id']!r} scores the prefill zone")
    elif prefill and not generated and zone != "prefill":
        add("study.yaml", study, f"{at}/claim", f"speaks of prompt tokens (prefill), but analysis {analysis['id']!r} scores the {zone} zone")


def _check_discovery(spec: dict, records: list[dict], study: Parsed, add) -> None:
    """A discovery block screens pairs of its own split: a split with pairs of the screened class, that no
    analysis reads (discovery must not touch what confirmation reads), in a design its probes are defined for."""
    block = spec.get("discovery")
    if block is None:
        return
    record = DESIGNS.get(spec.get("design"))
    if record is None:
        return  # the schema reported the design
    split = block.get("split", "discovery")
    if record.discovery is None:
        add("study.yaml", study, "/discovery", f"the {record.name} design has no discovery stage; remove the block")
        return
    for name in sorted(set(block) - {"split"} - set(record.discovery_fields)):
        add("study.yaml", study, f"/discovery/{name}", f"does not apply to a {record.name} study's discovery; remove it")
    if record.discovery == "scan":
        if not any(r.get("split") == split for r in records):
            add("study.yaml", study, "/discovery/split", f"names split {split!r}, which no prompt of prompts.jsonl has")
        # One message per bad class: a class named on both sides is one problem, not two; a key other than
        # a/b, or a class that is not a string, is the schema's to report.
        contrast = block.get("contrast") if isinstance(block.get("contrast"), dict) else {}
        sides = {side: contrast[side] for side in ("a", "b") if isinstance(contrast.get(side), str)}
        present = sorted({r["class"] for r in records if r.get("split") == split and isinstance(r.get("class"), str)})
        has = f" (it has {', '.join(present)})" if present else ""
        if len(sides) == 2 and sides["a"] == sides["b"]:
            absent = "" if sides["a"] in present else f" (and the discovery split {split!r} has no prompt of it)"
            add("study.yaml", study, "/discovery/contrast",
                f"compares class {sides['a']!r} with itself{absent}; name two different classes of the split{has}")
        else:
            for side, cls in sides.items():
                if cls not in present:
                    add("study.yaml", study, f"/discovery/contrast/{side}",
                        f"names class {cls!r}, which the discovery split {split!r} has no prompt of{has}")
    else:
        classes = block.get("pairs", "headline")
        classes = [classes] if isinstance(classes, str) else list(classes)
        if not any(r.get("split") == split and r.get("class") in classes and "clean" in r for r in records):
            add("study.yaml", study, "/discovery/split", f"names split {split!r}, which has no pair of class {', '.join(classes)} in prompts.jsonl")
    for i, analysis in enumerate(spec.get("analyses") or []):
        if "split" not in analysis:
            add("study.yaml", study, f"/analyses/{i}", f"names no split, so it would read every split, the discovery "
                f"split {split!r} included; add `split: <a split discovery does not read>`")
        if analysis.get("split") == split:
            add("study.yaml", study, f"/analyses/{i}/split", f"reads split {split!r}, the discovery split; an analysis must "
                "read pairs discovery never read (give discovery its own split)")
    if spec.get("ablation", {}).get("reference_split") == split:
        add("study.yaml", study, "/ablation/reference_split", f"is the discovery split {split!r}; use a reference split of its own")


def _check_sampling_plan(spec: dict, records: list[dict], study: Parsed, add) -> None:
    """The plan's counts per class and split are the counts of prompts.jsonl."""
    plan = spec["sampling_plan"]
    for key, field_name in (("classes", "class"), ("splits", "split")):
        actual: dict[str, int] = {}
        for record in records:
            actual[record[field_name]] = actual.get(record[field_name], 0) + 1
        for name, count in (plan.get(key) or {}).items():
            if actual.get(name, 0) != count:
                add("study.yaml", study, f"/sampling_plan/{key}/{name}", f"says {count}, but prompts.jsonl has {actual.get(name, 0)} "
                    f"prompt(s) with {field_name} {name!r}; make the plan and the file agree")
    per_class: dict[str, int] = {}
    for record in records:
        per_class[record["class"]] = per_class.get(record["class"], 0) + 1
    for name, minimum in (plan.get("min_after_exclusions") or {}).items():
        if name not in per_class:
            add("study.yaml", study, f"/sampling_plan/min_after_exclusions/{name}", f"names class {name!r}, which no prompt has "
                f"(classes: {', '.join(sorted(per_class))})")
        elif minimum > per_class[name]:
            add("study.yaml", study, f"/sampling_plan/min_after_exclusions/{name}", f"asks for at least {minimum} {name} prompts "
                f"after exclusions, but prompts.jsonl has only {per_class[name]}: the rule could never be met")


def _check_ablation_block(spec: dict, targets: dict, splits: set[str], study: Parsed, add, *, classes: set[str]) -> None:
    ablation = spec["ablation"]
    captured = {ablation["kind"], *ablation.get("sensitivity_kinds", [])}
    for i, analysis in enumerate(spec["analyses"]):
        kind = analysis.get("ablation_kind")
        if kind is not None and kind not in captured:
            add("study.yaml", study, f"/analyses/{i}/ablation_kind", f"reads the {kind!r} ablation, which capture does not make "
                f"(/ablation/kind is {ablation['kind']!r}; add {kind!r} to /ablation/sensitivity_kinds)")
    for name in (ablation.get("min_pairs_after_exclusions") or {}):
        if name not in classes:
            add("study.yaml", study, f"/ablation/min_pairs_after_exclusions/{name}", f"names pair class {name!r}, which no "
                f"pair has (classes: {', '.join(sorted(classes))}): the stopping rule would never apply to it")
    for key in ("combined", "combined_only"):
        for j, tid in enumerate(ablation.get(key, [])):
            if tid not in targets:
                add("study.yaml", study, f"/ablation/{key}/{j}", f"names unit {tid!r}, which is not a target in /units/targets")
    if ablation["kind"] == "mean" and ablation.get("reference_split") not in splits:
        add("study.yaml", study, "/ablation/reference_split", f"names split {ablation.get('reference_split')!r}, which no prompt has")
    _check_source_traces(spec, targets, study, add)


_TRACE_FIELDS = ("source_layers", "positions", "at")
_TRACE_METRICS = ("margin_restored", "slot_restored")
_TRACE_POSITIONS = ("last", "first_diff")


def _trace_layers(spec_layers) -> list[int] | None:
    """The layers a source_trace's ``source_layers`` names, or None for ``all`` (the model decides)."""
    if spec_layers == "all":
        return None
    if isinstance(spec_layers, str):
        lo, _, hi = spec_layers.partition("-")
        return list(range(int(lo), int(hi) + 1))
    return sorted(set(spec_layers))


def _check_source_traces(spec: dict, targets: dict, study: Parsed, add) -> None:
    """A source_trace analysis names slots to trace and a grid the claim's cell lies in; its fields mean nothing
    on another kind; a claim with a bound needs the cell (``at``) it is decided at."""
    bounded = {h["analysis"]: h["id"] for h in spec["hypotheses"] if any(threshold_quantity(n)[0] for n in h["thresholds"])}
    for i, analysis in enumerate(spec["analyses"]):
        at = f"/analyses/{i}"
        if analysis["kind"] != "source_trace":
            for name in _TRACE_FIELDS:
                if name in analysis:
                    add("study.yaml", study, f"{at}/{name}", f"applies to a source_trace analysis only, not {analysis['kind']}; remove it")
            if analysis.get("metric") in _TRACE_METRICS:
                add("study.yaml", study, f"{at}/metric", f"{analysis['metric']!r} is a source_trace metric; a {analysis['kind']} "
                    "analysis reads margin_drop")
            continue
        if spec["ablation"].get("answer_tokenization") != "first_token":
            add("study.yaml", study, f"{at}/kind", "source tracing reads the first-token margin, but /ablation/answer_tokenization "
                f"is {spec['ablation'].get('answer_tokenization')!r}; set it to first_token or drop this analysis")
        if not analysis.get("targets"):
            add("study.yaml", study, f"{at}/targets", "a source_trace analysis names the head slot(s) it traces: set targets "
                "to slots of /units/targets, e.g. [L3H2]")
        for name in ("mode", "ablation_kind", "control", "correction"):
            if name in analysis:
                add("study.yaml", study, f"{at}/{name}", "does not apply to a source_trace analysis (it patches, it ablates "
                    "nothing); remove it")
        metric = analysis.get("metric", "margin_restored")
        if metric not in _TRACE_METRICS:
            add("study.yaml", study, f"{at}/metric", f"is {metric!r}; a source_trace analysis reads margin_restored or slot_restored")
        layers_spec = analysis.get("source_layers", "all")
        if isinstance(layers_spec, str) and layers_spec != "all":
            match = re.fullmatch(r"(\d{1,4})-(\d{1,4})", layers_spec)
            if not match or int(match.group(1)) > int(match.group(2)):
                why = "runs backwards" if match else "is not a layer range"
                add("study.yaml", study, f"{at}/source_layers", f"{layers_spec!r} {why}; write all, 'a-b' with a <= b "
                    "(e.g. '0-3'), or a list of layers")
                continue
        positions = analysis.get("positions", "all")
        named = [positions] if isinstance(positions, str) else [p for p in positions if isinstance(p, str)]
        wrong = [p for p in named if p not in (("all",) if isinstance(positions, str) else _TRACE_POSITIONS)]
        if wrong:
            add("study.yaml", study, f"{at}/positions", f"names {', '.join(map(repr, wrong))}; a position is all (alone), an "
                "offset from the end (-1 = the last token), an index from the start (0 = the first), last, or first_diff "
                "(where the clean and corrupted tokens first differ)")
            continue
        layers = _trace_layers(layers_spec)
        slot_layers = [targets[t][1]["layer"] for t in analysis.get("targets", []) if t in targets]
        if metric == "slot_restored" and slot_layers and layers is not None and max(layers) > min(slot_layers):
            add("study.yaml", study, f"{at}/source_layers", f"names layer(s) {[x for x in layers if x > min(slot_layers)]}, after "
                f"layer {min(slot_layers)} of the traced slot: a patch there cannot reach the slot, so slot_restored is undefined; "
                f"trace layers 0-{min(slot_layers)} or use metric margin_restored")
        cell = analysis.get("at")
        if cell is None:
            if analysis["id"] in bounded:
                add("study.yaml", study, f"{at}/at", f"hypothesis {bounded[analysis['id']]} bounds this analysis, so it must name the "
                    "grid cell the claim is decided at: at: {layer: L, position: P}")
            continue
        if layers is not None and cell["layer"] not in layers:
            add("study.yaml", study, f"{at}/at/layer", f"is {cell['layer']}, which source_layers {layers_spec!r} does not patch")
        elif metric == "slot_restored" and slot_layers and cell["layer"] > min(slot_layers):
            add("study.yaml", study, f"{at}/at/layer", f"is {cell['layer']}, after the traced slot's layer {min(slot_layers)}; "
                "slot_restored is undefined there")
        if isinstance(cell["position"], str) and cell["position"] not in _TRACE_POSITIONS:
            add("study.yaml", study, f"{at}/at/position", f"is {cell['position']!r}; name an offset from the end, an index "
                "from the start, last or first_diff")
        elif positions == "all" and not (isinstance(cell["position"], int) and cell["position"] < 0):
            add("study.yaml", study, f"{at}/at/position", f"is {cell['position']!r}, but positions: all are offsets from the end; "
                "name a negative offset (-1 = the last token) or list the position in positions")
        elif positions != "all" and str(cell["position"]) not in {str(p) for p in positions}:
            add("study.yaml", study, f"{at}/at/position", f"is {cell['position']!r}, which positions {positions} does not patch")
    _check_sae_knockdowns(spec, study, add)


_SAE_FIELDS = ("sae", "features", "feature", "min_active_pairs", "position", "min_variance_explained")


def _check_sae_knockdowns(spec: dict, study: Parsed, add) -> None:
    """Each sae_knockdown analysis names a run and an SAE of /ablation/saes, and features within its width."""
    saes = {}
    for j, sae in enumerate(spec["ablation"].get("saes", [])):
        if sae["id"] in saes:
            add("study.yaml", study, f"/ablation/saes/{j}/id", f"{sae['id']!r} names two SAEs; SAE ids must be unique")
        saes[sae["id"]] = sae
    for i, analysis in enumerate(spec["analyses"]):
        if analysis["kind"] != "sae_knockdown":
            for name in _SAE_FIELDS:
                if name in analysis:
                    add("study.yaml", study, f"/analyses/{i}/{name}", f"applies to sae_knockdown analyses only, not to "
                        f"{analysis['kind']}; remove it")
            continue
        if "run" not in analysis:
            add("study.yaml", study, f"/analyses/{i}", "an sae_knockdown analysis must name its run (`run:`)")
        if spec["ablation"]["answer_tokenization"] != "first_token":
            add("study.yaml", study, f"/analyses/{i}/kind", "sae_knockdown reads the first-token margin at the last "
                "position, but /ablation/answer_tokenization is full_answer")
        sae = saes.get(analysis.get("sae"))
        if sae is None:
            add("study.yaml", study, f"/analyses/{i}/sae", f"names SAE {analysis.get('sae')!r}; /ablation/saes declares "
                f"{', '.join(sorted(saes)) or 'none'} (declare it there: path, format, sha256, hook_point, width, k, normalization)")
            continue
        features = analysis.get("features")
        named = ([("features/" + str(j), f) for j, f in enumerate(features)] if isinstance(features, list) else [])
        named += [("feature", analysis["feature"])] if "feature" in analysis else []
        for where, f in named:
            if f >= sae["width"]:
                add("study.yaml", study, f"/analyses/{i}/{where}", f"feature {f} is outside SAE {sae['id']!r}'s {sae['width']} features")


# Cross-file rules of a design's own block of study.yaml (lockstep.designs.Design.plan_block).
_BLOCK_CHECKS = {"ablation": _check_ablation_block}


def _prompt_checks(prompts: Parsed, design: Design | None, problems: ProblemList) -> None:
    """Rules within prompts.jsonl, on every record whose fields have the types the rule reads."""
    records = [(i, r) for i, r in enumerate(prompts.data) if isinstance(r, dict)]
    if design is None or design.anchored_prompts:
        _check_anchors(records, prompts, problems)
        _check_pairs(records, prompts, problems)
    _check_split_overlap(records, prompts, problems)


def _check_model(spec: dict, study: Parsed, add) -> None:
    model = spec["model"]
    if model["source"] == "hub" and not _HEX40.match(model["revision"]) and model.get("revision_policy", "pinned") != "record_at_first_capture":
        add("study.yaml", study, "/model/revision",
            f"{model['revision']!r} is not a 40-hex commit; pin the commit, or set revision_policy: record_at_first_capture")


def _unique_ids(spec: dict, study: Parsed, add) -> None:
    for key, items in (("hypotheses", spec["hypotheses"]), ("analyses", spec["analyses"]),
                       ("exclusions", spec.get("exclusions", [])), ("units/targets", spec["units"]["targets"]),
                       ("runtime/runs", spec["runtime"]["runs"])):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item["id"] in seen:
                add("study.yaml", study, f"/{key}/{i}/id", f"duplicate id {item['id']!r} (also at /{key}/{seen[item['id']]}); ids must be unique")
            seen.setdefault(item["id"], i)


def _check_target_id(kind: str, target: dict, at: str, study: Parsed, add) -> None:
    match = UNIT_ID.match(target["id"])
    field_name, letter = kind, KINDS[kind]
    if field_name not in target:
        add("study.yaml", study, at, f"a {kind} target needs `{field_name}`")
        return
    if not match or match.group(2) != letter or int(match.group(1)) != target["layer"] or int(match.group(3)) != target[field_name]:
        add("study.yaml", study, f"{at}/id", f"{target['id']!r} does not match layer {target['layer']} {field_name} {target[field_name]}; expected 'L{target['layer']}{letter}{target[field_name]}'")


def _check_anchors(records: list[tuple[int, dict]], prompts: Parsed, problems: ProblemList) -> None:
    for i, record in records:
        if not (isinstance(record.get("text"), str) and isinstance(record.get("anchors"), list)):
            continue  # the schema has reported it
        text = normalise_text(record["text"])
        for j, anchor in enumerate(a for a in record["anchors"] if isinstance(a, str)):
            pattern = r"(?<!\w)" + re.escape(normalise_text(anchor)) + r"(?!\w)"
            if not re.search(pattern, text):
                problems.add("prompts.jsonl", f"/{i}/anchors/{j}",
                             f"anchor {anchor!r} does not occur in the prompt text of {record['id']!r}; an anchor must appear as a whole word or phrase",
                             prompts.lines.get(f"/{i}"))


def _check_pairs(records: list[tuple[int, dict]], prompts: Parsed, problems: ProblemList) -> None:
    records = [(i, r) for i, r in records if _has_strings(r, "id", "class", "split")]
    by_id = {r["id"]: r for _, r in records}
    for i, record in records:
        other = record.get("pair")
        if not isinstance(other, str):
            continue
        line = prompts.lines.get(f"/{i}")
        if other not in by_id:
            problems.add("prompts.jsonl", f"/{i}/pair", f"names prompt {other!r}, which does not exist", line)
        elif by_id[other]["class"] == record["class"]:
            problems.add("prompts.jsonl", f"/{i}/pair", f"pairs with {other!r} of the same class {record['class']!r}; a pair matches two classes", line)
        elif by_id[other]["split"] != record["split"]:
            problems.add("prompts.jsonl", f"/{i}/pair", f"pairs with {other!r} in split {by_id[other]['split']!r}; both members of a pair belong to one split", line)


def _has_strings(record: dict, *keys: str) -> bool:
    return all(isinstance(record.get(k), str) for k in keys)


def _prompt_texts(record: dict) -> list[str]:
    return [record[k] for k in ("text", "clean", "corrupted") if isinstance(record.get(k), str)]


def _check_split_overlap(records: list[tuple[int, dict]], prompts: Parsed, problems: ProblemList) -> None:
    seen_ids: dict[str, int] = {}
    earlier: dict[str, list[tuple[str, str, str]]] = {}  # normalised text -> [(split, id, exact text)]
    for i, record in records:
        if not _has_strings(record, "id", "split"):
            continue  # the schema has reported it
        line = prompts.lines.get(f"/{i}")
        if record["id"] in seen_ids:
            problems.add("prompts.jsonl", f"/{i}/id", f"duplicate id {record['id']!r} (first on line {seen_ids[record['id']]}); ids must be unique", line)
        seen_ids.setdefault(record["id"], line or 0)
        reported: set[str] = set()
        for text in _prompt_texts(record):
            key = normalise_text(text)
            for split, other_id, other_text in earlier.get(key, []):
                if split == record["split"] or other_id in reported:
                    continue
                reported.add(other_id)
                how = "the same text" if other_text == text else "the same text after case and whitespace normalisation"
                problems.add("prompts.jsonl", f"/{i}", f"{record['id']!r} ({record['split']}) has {how} as {other_id!r} ({split}); splits must not overlap", line)
            earlier.setdefault(key, []).append((record["split"], record["id"], text))


def _check_rubric(rubric: Parsed, problems: ProblemList) -> None:
    data = rubric.data
    if data["kind"] == "none":
        return

    def add(pointer: str, message: str) -> None:
        problems.add("rubric.yaml", pointer, message, rubric.line_of(pointer))

    labels = set(data["labels"])
    if data["target_label"] not in labels:
        add("/target_label", f"{data['target_label']!r} is not one of the labels: {', '.join(sorted(labels))}")
    judge = data.get("judge")
    if data["kind"] == "judge" and judge and "{text}" not in judge["template"]:
        add("/judge/template", "has no {text} placeholder; the judge must see the text it labels")
    lexicon = data.get("lexicon")
    if not lexicon:
        return
    sets = set(lexicon["sets"])
    negation = lexicon.get("negation") or {}
    for j, name in enumerate(negation.get("sets", [])):
        if name not in sets:
            add(f"/lexicon/negation/sets/{j}", f"{name!r} is not in /lexicon/sets")
    disclaimer = negation.get("disclaimer_set")
    if disclaimer in sets:
        add("/lexicon/negation/disclaimer_set", f"{disclaimer!r} is already a word set; name the disclaimed hits something else")
    for name, feature in lexicon["features"].items():
        ref = next(iter(feature.values()))
        if ref not in sets and ref != disclaimer:
            add(f"/lexicon/features/{name}", f"refers to set {ref!r}, which is not in /lexicon/sets"
                + (f" nor the negation's disclaimer_set {disclaimer!r}" if disclaimer else ""))
    for i, rule in enumerate(lexicon["rules"]):
        if rule["label"] not in labels:
            add(f"/lexicon/rules/{i}/label", f"{rule['label']!r} is not one of the labels")
        for key in ("all", "any"):
            for j, condition in enumerate(rule.get(key, [])):
                if condition["feature"] not in lexicon["features"]:
                    add(f"/lexicon/rules/{i}/{key}/{j}/feature", f"{condition['feature']!r} is not in /lexicon/features")
    if lexicon["otherwise"] not in labels:
        add("/lexicon/otherwise", f"{lexicon['otherwise']!r} is not one of the labels")


def plain_relative(name: str) -> bool:
    """True for a relative POSIX path that stays below its folder: not absolute, no ``..`` or ``.``, no
    empty part, no backslash, no NUL. Every path a lock or a bundle names has this form."""
    return (bool(name) and not name.startswith("/") and "\\" not in name and "\0" not in name
            and all(part not in ("", ".", "..") for part in name.split("/")))


def inside(root: Path, relative: str) -> bool:
    """True when ``relative`` resolves to a path inside ``root`` (no ``..`` escape, no absolute path)."""
    if Path(relative).is_absolute():
        return False
    resolved = (root / relative).resolve()
    return resolved == root.resolve() or root.resolve() in resolved.parents


def _check_extra_files(root: Path, spec: dict, study: Parsed, add) -> None:
    for i, relative in enumerate(spec.get("files", [])):
        if not plain_relative(relative) or not inside(root, relative):
            add("study.yaml", study, f"/files/{i}", f"{relative!r} points outside the study folder or is not a plain "
                "relative path (no '..', '.', '//', leading '/' or backslash); study files must live inside it")
        elif _through_symlink(root, relative):
            add("study.yaml", study, f"/files/{i}", f"{relative!r} is (or lies under) a symbolic link; a frozen file must be a "
                "regular file in the study folder: replace the link with a copy")
        elif not (root / relative).is_file():
            add("study.yaml", study, f"/files/{i}", f"{relative!r} does not exist in the study folder")
        elif relative in PLAN_FILES:
            add("study.yaml", study, f"/files/{i}", f"{relative!r} is always frozen; list only extra files")


def _through_symlink(root: Path, relative: str) -> bool:
    """True when ``relative`` or a folder between ``root`` and it is a symbolic link."""
    path = root / relative
    while path != root and path != path.parent:
        if path.is_symlink():
            return True
        path = path.parent
    return False


def frozen_file_names(spec: dict[str, Any], root: Path | None = None) -> list[str]:
    """Every file the lock covers: the four plan files, any extra files the plan names, and the rubric's
    pilot texts (``pilot/pilot.jsonl``) when the study in ``root`` ships them."""
    pilot = [PILOT_FILE] if root is not None and (Path(root) / PILOT_FILE).is_file() else []
    return sorted(set(PLAN_FILES) | set(spec.get("files", [])) | set(pilot))
