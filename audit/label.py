"""Labels before scores: apply the frozen rubric to generated texts only, and freeze the labels.

The label stage reads two columns of ``texts.parquet`` — the prompt id and the text zone the rubric
names — and never the routing or ablation tables, nor the prompt class. Its output, ``labels.parquet``,
is digested into the journal at access level ``labels_frozen``; the audit refuses to read unit data
for a run whose labels are not frozen.

Rubric kinds: ``lexicon`` (frozen word lists and declarative rules, evaluated without ``eval``) and
``judge`` (a local model scores each label as a continuation of a frozen template, :mod:`audit.judge`),
and ``human`` (a blinded sheet exported, filled, and imported).
"""

from __future__ import annotations

import csv
import io
import json
import operator
import re
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

LABELS = artifacts.LABELS
SHEET_KEY = "sheet_key.json"
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


@dataclass(frozen=True)
class LabelResult:
    path: Path
    counts: dict[str, int]
    entry: dict


def words(text: str, case: str = "lower") -> list[str]:
    """Word tokens: letters/digits with an inner apostrophe (``i'm``), lower-cased unless ``case: sensitive``."""
    text = text if case == "sensitive" else text.casefold()
    return _WORD.findall(text)


def lexicon_features(text: str, lexicon: dict) -> dict[str, float]:
    """Counts and rates of the rubric's word sets in ``text``.

    A set entry with a space is a phrase, counted as a run of words; ``rate_of`` divides by the number
    of words (0 for an empty text).
    """
    case = lexicon.get("case", "lower")
    tokens = words(text, case)
    counts = {}
    for name, entries in lexicon["sets"].items():
        total = 0
        for entry in entries:
            phrase = words(entry, case)
            if len(phrase) == 1:
                total += sum(1 for t in tokens if t == phrase[0])
            elif phrase:
                n = len(phrase)
                total += sum(1 for i in range(len(tokens) - n + 1) if tokens[i:i + n] == phrase)
        counts[name] = total
    features = {}
    for name, spec in lexicon["features"].items():
        (kind, set_name), = spec.items()
        count = counts[set_name]
        features[name] = float(count) if kind == "count_of" else (count / len(tokens) if tokens else 0.0)
    features["n_words"] = float(len(tokens))
    return features


def apply_rules(features: dict[str, float], lexicon: dict) -> tuple[str, str]:
    """The first rule whose conditions hold gives the label; else ``otherwise``. Returns (label, why)."""
    for index, rule in enumerate(lexicon["rules"]):
        checks_all = [_holds(features, c) for c in rule.get("all", [])]
        checks_any = [_holds(features, c) for c in rule.get("any", [])]
        if all(checks_all) and (not checks_any or any(checks_any)):
            return rule["label"], f"rule {index}"
    return lexicon["otherwise"], "otherwise"


def _holds(features: dict[str, float], condition: dict) -> bool:
    return bool(_OPS[condition["op"]](features[condition["feature"]], condition["value"]))


def _text_column(rubric: dict) -> str:
    return "trimmed_text" if rubric.get("text_zone", "trimmed") == "trimmed" else "generated_text"


def read_texts(run_dir: Path, rubric: dict) -> pd.DataFrame:
    """Only the prompt id and the rubric's text zone: the label stage never sees class or routing."""
    path = Path(run_dir) / artifacts.TEXTS
    if not path.exists():
        raise StageRefused(f"{path} does not exist: this run has not been captured",
                           hint="run `make capture STUDY=...` first")
    return pq.read_table(path, columns=["prompt_id", _text_column(rubric)]).to_pandas().rename(columns={_text_column(rubric): "text"})


def lexicon_labels(texts: pd.DataFrame, rubric: dict) -> pd.DataFrame:
    lexicon = rubric["lexicon"]
    rows = []
    for prompt_id, text in zip(texts["prompt_id"], texts["text"]):
        features = lexicon_features(text, lexicon)
        label, why = apply_rules(features, lexicon)
        rows.append({"prompt_id": prompt_id, "label": label, "rule": why, "features": json.dumps(features, sort_keys=True)})
    return pd.DataFrame(rows, columns=["prompt_id", "label", "rule", "features"])


def _write_labels(run_dir: Path, frame: pd.DataFrame) -> Path:
    frame = frame.sort_values("prompt_id", kind="stable").reset_index(drop=True)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    path = Path(run_dir) / LABELS
    atomic_write(path, sink.getvalue())
    return path


def _freeze_labels(frozen, run_id: str, run_dir: Path, frame: pd.DataFrame, how: str) -> LabelResult:
    path = _write_labels(run_dir, frame)
    rel = lambda p: artifacts.repo_relative(p, frozen.repo_root)  # noqa: E731
    counts = {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}
    entry = append_entry(frozen.root, "label", inputs={rel(run_dir / artifacts.TEXTS): sha256_file(run_dir / artifacts.TEXTS)},
                         outputs={rel(path): sha256_file(path)}, access_level="labels_frozen", lock_digest=frozen.lock_digest,
                         details={"run": run_id, "rubric_kind": frozen.rubric["kind"], "how": how, "counts": counts})
    return LabelResult(path, counts, entry)


def label_run(frozen, run_id: str, run_dir: Path) -> LabelResult:
    """Apply a lexicon rubric to one captured run and freeze the labels (journal: ``labels_frozen``)."""
    rubric = frozen.rubric
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
    return _freeze_labels(frozen, run_id, run_dir, frame, "human sheet")
