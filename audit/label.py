"""Labels before scores: apply the frozen rubric to generated texts only, and freeze the labels.

The label stage reads two columns of ``texts.parquet`` — the prompt id and the text zone the rubric
names — and never the routing or ablation tables, nor the prompt class. Its output, ``labels.parquet``,
is digested into the journal at access level ``labels_frozen``; the audit refuses to read unit data
for a run whose labels are not frozen.

Rubric kinds: ``lexicon`` (frozen word lists and declarative rules, evaluated without ``eval``) and
``judge`` (a local model scores each label as a continuation of a frozen template, :mod:`audit.judge`),
and ``human`` (a blinded sheet exported, filled, and imported).

The lexicon engine (word sets, the negation/disclaimer scope, rules, the pilot) is
:mod:`lockstep.lexicon`, which validation runs too. A lexicon rubric may declare ``human_arm`` (the
blinded human sheet beside the lexicon, one of them the labeller of record, with a preregistered minimum
Cohen's kappa between the two: :func:`import_sheet`, :func:`agreement`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lockstep import artifacts
from lockstep.errors import LockstepError, ProblemList, StageRefused
from lockstep.fsio import atomic_write, sha256_file
from lockstep.journal import append_entry
from lockstep.lexicon import apply_rules, lexicon_features

from .data import check_captured_files

LABELS = artifacts.LABELS
SHEET_KEY = "sheet_key.json"


@dataclass(frozen=True)
class LabelResult:
    path: Path
    counts: dict[str, int]
    entry: dict
    agreement: Agreement | None = None  # the human arm against the lexicon, when the rubric declares one


@dataclass(frozen=True)
class Agreement:
    """Cohen's kappa and raw agreement between the human arm and the lexicon on one run's texts.

    ``kappa`` is NaN when it is undefined (both arms gave every text one and the same label: chance
    agreement is 1); an undefined kappa does not reach any minimum.
    """

    n: int
    raw: float
    expected: float
    kappa: float
    min_kappa: float
    labeller_of_record: str

    @property
    def passed(self) -> bool:
        return not math.isnan(self.kappa) and self.kappa >= self.min_kappa

    def to_dict(self) -> dict:
        kappa = None if math.isnan(self.kappa) else self.kappa
        return {"n": self.n, "raw_agreement": self.raw, "expected_agreement": self.expected, "kappa": kappa,
                "min_kappa": self.min_kappa, "labeller_of_record": self.labeller_of_record, "passed": self.passed}

    def sentence(self) -> str:
        if math.isnan(self.kappa):
            kappa, verdict = "undefined (both arms gave one label throughout)", "so it cannot reach"
        else:
            kappa, verdict = f"{self.kappa:.3f}", "kappa meets" if self.passed else "kappa is BELOW"
        return (f"human vs lexicon on {self.n} texts: Cohen's kappa {kappa}, raw agreement {self.raw:.3f}; "
                f"{verdict} the preregistered minimum {self.min_kappa:g} (labeller of record: {self.labeller_of_record})")


def cohen_kappa(a, b, labels) -> tuple[float, float, float]:
    """(raw agreement p_o, chance agreement p_e, kappa) of two labellings of the same items.

    kappa = (p_o - p_e) / (1 - p_e), p_e = sum over labels of the product of the two arms' label shares
    (Cohen 1960); NaN when p_e = 1. Checked against ``sklearn.metrics.cohen_kappa_score``.
    """
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"`a` and `b` must label the same, non-empty set of items; got {len(a)} and {len(b)}")
    observed = float(np.mean(a == b))
    expected = float(sum(np.mean(a == k) * np.mean(b == k) for k in labels))
    kappa = (observed - expected) / (1.0 - expected) if expected < 1.0 else float("nan")
    return observed, expected, kappa


def agreement(human, lexicon, rubric: dict) -> Agreement:
    """The human arm's agreement with the lexicon, judged against the rubric's ``human_arm.min_kappa``."""
    arm = rubric["human_arm"]
    observed, expected, kappa = cohen_kappa(human, lexicon, list(rubric["labels"]))
    return Agreement(len(human), observed, expected, kappa, float(arm["min_kappa"]), arm["labeller_of_record"])


def run_agreement(frozen, run_dir: Path) -> Agreement | None:
    """The agreement recorded in a run's frozen labels (``human_label`` and ``lexicon_label`` columns);
    None when the rubric declares no human arm. The audit calls this after checking the labels' digest."""
    if "human_arm" not in frozen.rubric:
        return None
    path = Path(run_dir) / LABELS
    names = set(pq.read_schema(path).names)
    if not {"human_label", "lexicon_label"} <= names:
        raise StageRefused(f"{path} has no human_label/lexicon_label columns, but the rubric declares a human arm",
                           hint=f"freeze the labels through the blinded sheet: `lockstep label {frozen.root} --run RUN --export-sheet ...` "
                                "then `--import-sheet`")
    frame = pq.read_table(path, columns=["human_label", "lexicon_label"]).to_pandas()
    return agreement(frame["human_label"].tolist(), frame["lexicon_label"].tolist(), frozen.rubric)


def _text_column(rubric: dict) -> str:
    return "trimmed_text" if rubric.get("text_zone", "trimmed") == "trimmed" else "generated_text"


def read_texts(run_dir: Path, rubric: dict) -> pd.DataFrame:
    """Only the prompt id and the rubric's text zone: the label stage never sees class or routing."""
    path = Path(run_dir) / artifacts.TEXTS
    if not path.exists():
        raise StageRefused(f"{path} does not exist: this run has not been captured",
                           hint="run `lockstep capture STUDY` first")
    return pq.read_table(path, columns=["prompt_id", _text_column(rubric)]).to_pandas().rename(columns={_text_column(rubric): "text"})


def lexicon_labels(texts: pd.DataFrame, rubric: dict) -> pd.DataFrame:
    lexicon = rubric["lexicon"]
    rows = []
    for prompt_id, text in zip(texts["prompt_id"], texts["text"]):
        features = lexicon_features(text, lexicon)
        label, why = apply_rules(features, lexicon)
        rows.append({"prompt_id": prompt_id, "label": label, "rule": why, "features": json.dumps(features, sort_keys=True)})
    return pd.DataFrame(rows, columns=["prompt_id", "label", "rule", "features"])


# ---------------------------------------------------------------- the human arm in the audit

#: warning code of a claim held at not_established because its run's labels fell below human_arm.min_kappa
LOW_AGREEMENT = "labels_below_min_kappa"


def reads_register_labels(analysis: dict) -> bool:
    """Does this analysis (as resolved) decide on register labels: groups by them, or models them?"""
    return (analysis.get("groups") or {}).get("by") == "register_label" or "register" in analysis


def run_agreements(frozen, run_ids) -> dict[str, Agreement]:
    """The human arm's agreement with the lexicon for each run that has one (rubric ``human_arm``).
    Read from the run's frozen labels, whose digest the audit checked when it loaded the run."""
    from .data import run_dir_of

    out = {}
    for run_id in sorted(run_ids):
        agreed = run_agreement(frozen, run_dir_of(frozen, run_id))
        if agreed is not None:
            out[run_id] = agreed
    return out


def low_agreement(analysis: dict, agreements: dict[str, Agreement]) -> str | None:
    """Why ``analysis`` cannot be decided on its runs' register labels (their human/lexicon kappa is below
    the preregistered minimum), or None. The ledger hands such an analysis to its preregistered fallback."""
    if not reads_register_labels(analysis):
        return None
    low = [r for r in (analysis.get("run"), *analysis.get("runs", ())) if r in agreements and not agreements[r].passed]
    if not low:
        return None
    return "register labels not corroborated (" + "; ".join(f"run {r}: {agreements[r].sentence()}" for r in low) + ")"


def hold_on_agreement(claim: dict, analysis: dict, agreements: dict[str, Agreement]) -> dict:
    """``claim`` (a ledger claim) held at ``not_established`` when its analysis decides on the register
    labels of a run whose human/lexicon kappa is below the preregistered minimum; else unchanged. An
    unsupported claim stays unsupported: its words ask too much whatever the labels."""
    low = low_agreement(analysis, agreements)
    if low is None or claim["status"] == "unsupported":
        return claim
    warning = f"{low}; the claim cannot be decided on them"
    return claim | {"status": "not_established",
                    "reason": f"{warning} (by its criteria alone: {claim['status']}: {claim['reason']})",
                    "warnings": [*claim["warnings"], warning], "warning_codes": [*claim.get("warning_codes", []), LOW_AGREEMENT]}


def annotate_run_cards(cards: list[dict], agreements: dict[str, Agreement]) -> None:
    """Add each run's human/lexicon agreement to its run card (``labelling``), with a warning below the minimum."""
    for card in cards:
        agreed = agreements.get(card["run_id"])
        if agreed is None:
            continue
        card["labelling"] = agreed.to_dict()
        if not agreed.passed:
            card["warnings"].append(f"labels flagged: {agreed.sentence()}")
            card["status"] = "pass_with_warnings" if card["status"] == "pass" else card["status"]


def _write_labels(run_dir: Path, frame: pd.DataFrame) -> Path:
    frame = frame.sort_values("prompt_id", kind="stable").reset_index(drop=True)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    path = Path(run_dir) / LABELS
    atomic_write(path, sink.getvalue())
    return path


def _freeze_labels(frozen, run_id: str, run_dir: Path, frame: pd.DataFrame, how: str,
                   agreed: Agreement | None = None) -> LabelResult:
    path = _write_labels(run_dir, frame)
    rel = lambda p: artifacts.repo_relative(p, frozen.repo_root)  # noqa: E731
    counts = {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}
    details = {"run": run_id, "rubric_kind": frozen.rubric["kind"], "how": how, "counts": counts}
    if agreed is not None:
        details["agreement"] = agreed.to_dict()
    entry = append_entry(frozen.root, "label", inputs={rel(run_dir / artifacts.TEXTS): sha256_file(run_dir / artifacts.TEXTS)},
                         outputs={rel(path): sha256_file(path)}, access_level="labels_frozen", lock_digest=frozen.lock_digest,
                         details=details)
    return LabelResult(path, counts, entry, agreed)


def label_run(frozen, run_id: str, run_dir: Path) -> LabelResult:
    """Apply a lexicon rubric to one captured run and freeze the labels (journal: ``labels_frozen``)."""
    check_captured_files(frozen, run_id, run_dir, [artifacts.TEXTS])
    rubric = frozen.rubric
    if "human_arm" in rubric:
        raise LockstepError(f"the rubric of {frozen.study_id} declares a human arm (labeller of record: "
                            f"{rubric['human_arm']['labeller_of_record']}); its labels are frozen with the blinded sheet, "
                            "beside the lexicon's, so that their agreement is measured",
                            hint=f"export a blinded sheet with `lockstep label {frozen.root} --run {run_id} --export-sheet sheet.csv`, "
                                 f"fill it, then `lockstep label {frozen.root} --run {run_id} --import-sheet sheet.csv`")
    if rubric["kind"] == "lexicon":
        frame = lexicon_labels(read_texts(run_dir, rubric), rubric)
        return _freeze_labels(frozen, run_id, run_dir, frame, "lexicon")
    if rubric["kind"] == "judge":
        from .judge import judge_labels

        frame = judge_labels(read_texts(run_dir, rubric), rubric, frozen.repo_root)
        return _freeze_labels(frozen, run_id, run_dir, frame, f"judge {rubric['judge']['model']}@{rubric['judge']['revision']}")
    if rubric["kind"] == "human":
        raise LockstepError(f"the rubric of {frozen.study_id} is human-labelled",
                            hint="export a blinded sheet with `lockstep label DIR --run RUN --export-sheet sheet.csv`, fill it, "
                                 "then `lockstep label DIR --run RUN --import-sheet sheet.csv`")
    raise LockstepError(f"rubric kind {rubric['kind']!r} labels nothing", hint="a routing study needs a lexicon, judge or human rubric")


# ---------------------------------------------------------------- human labelling: blinded sheets

def export_sheet(frozen, run_id: str, run_dir: Path, out: Path, *, seed: int | None = None) -> Path:
    """Write a blinded sheet: rows shuffled, prompt ids and classes hidden behind codes.

    The code → prompt id key stays in the run folder (``sheet_key.json``); labellers see only the code,
    the generated text and an empty ``label`` column with the allowed labels in the header comment.
    """
    check_captured_files(frozen, run_id, run_dir, [artifacts.TEXTS])
    rubric = frozen.rubric
    texts = read_texts(run_dir, rubric)
    rng = np.random.default_rng(seed if seed is not None else rubric.get("human", {}).get("seed", 0))
    order = rng.permutation(len(texts))
    codes = [f"T{i + 1:04d}" for i in range(len(texts))]
    key = {code: texts["prompt_id"].iloc[j] for code, j in zip(codes, order)}
    buffer = io.StringIO()
    buffer.write(f"# labels: {' | '.join(rubric['labels'])}\n")
    writer = csv.writer(buffer)
    writer.writerow(["code", "text", "label"])
    for code, j in zip(codes, order):
        writer.writerow([code, texts["text"].iloc[j], ""])
    atomic_write(Path(out), buffer.getvalue().encode())
    atomic_write(Path(run_dir) / SHEET_KEY, json.dumps(key, sort_keys=True, indent=2).encode())
    return Path(out)


def import_sheet(frozen, run_id: str, run_dir: Path, sheet: Path) -> LabelResult:
    """Validate a filled sheet against the key and the rubric's labels, then freeze the labels."""
    check_captured_files(frozen, run_id, run_dir, [artifacts.TEXTS])
    key_path = Path(run_dir) / SHEET_KEY
    if not key_path.exists():
        raise StageRefused(f"{key_path} is missing: no sheet was exported for run {run_id!r}",
                           hint="export one first with --export-sheet")
    key = json.loads(key_path.read_text())
    labels = set(frozen.rubric["labels"])
    problems = ProblemList()
    try:
        lines = [l for l in Path(sheet).read_text(encoding="utf-8").splitlines(keepends=True) if not l.startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise LockstepError(f"cannot read the sheet {sheet}: {exc}") from exc
    rows = list(csv.DictReader(lines))
    seen = {}
    for number, row in enumerate(rows, start=2):
        code, label = (row.get("code") or "").strip(), (row.get("label") or "").strip()
        if code not in key:
            problems.add(str(sheet), f"/{number - 2}/code", f"unknown code {code!r}; use the sheet as exported", number)
        elif code in seen:
            problems.add(str(sheet), f"/{number - 2}/code", f"code {code!r} appears twice", number)
        elif label not in labels:
            problems.add(str(sheet), f"/{number - 2}/label", f"{label!r} is not a label; expected one of {', '.join(sorted(labels))}", number)
        seen[code] = label
    for code in sorted(set(key) - set(seen)):
        problems.add(str(sheet), "", f"code {code} has no row; every text must be labelled")
    problems.raise_if_any(hint="correct the sheet and import it again")
    frame = pd.DataFrame({"prompt_id": [key[c] for c in seen], "label": list(seen.values()),
                          "rule": "human", "features": "{}"})
    if "human_arm" not in frozen.rubric:
        return _freeze_labels(frozen, run_id, run_dir, frame, "human sheet")
    return _freeze_both_arms(frozen, run_id, run_dir, frame)


def _freeze_both_arms(frozen, run_id: str, run_dir: Path, human: pd.DataFrame) -> LabelResult:
    """Freeze the human and the lexicon labels of one run together, the labeller of record's as ``label``.

    Cohen's kappa between the two arms is computed on the run's texts and recorded in the journal entry.
    Labels below the preregistered ``human_arm.min_kappa`` are frozen all the same, and flagged: refusing
    them would invite relabelling until the agreement passes, whereas a frozen, flagged run stays on the
    record, and the audit holds every claim that reads its register labels at ``not_established``
    (:func:`audit.ledger.compute`).
    """
    rubric = frozen.rubric
    lexicon = lexicon_labels(read_texts(run_dir, rubric), rubric)
    frame = human.rename(columns={"label": "human_label"})[["prompt_id", "human_label"]].merge(
        lexicon.rename(columns={"label": "lexicon_label"}), on="prompt_id", how="left", validate="one_to_one")
    record = rubric["human_arm"]["labeller_of_record"]
    frame["label"] = frame[f"{record}_label"]
    frame["rule"] = "human" if record == "human" else frame["rule"]
    frame = frame[["prompt_id", "label", "rule", "features", "human_label", "lexicon_label"]]
    agreed = agreement(frame["human_label"].tolist(), frame["lexicon_label"].tolist(), rubric)
    return _freeze_labels(frozen, run_id, run_dir, frame, f"human sheet + lexicon (labeller of record: {record})", agreed)
