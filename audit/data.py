"""What the audit may read, and when: captured runs, on the digests the journal recorded for them.

A run's folder is where its capture's journal entry says (:func:`lockstep.artifacts.study_run_dir`, so a
``--runs-root`` given to capture is honoured). :func:`load_run` asks the design's audit module
(``audit/designs/<name>.py``) to read it, after the checks its design record calls for: a design that
labels generated text (``needs_labels``) is read only when the journal shows, for that run, a capture
entry and then a label entry whose digests match the files on disk — labels before scores; and every
design's run is read only when the newest capture entry of the run records the digests its tables have
now (:func:`check_capture_digests`; the label stage checks the texts it reads the same way).
"""

from __future__ import annotations

from pathlib import Path

from lockstep import artifacts
from lockstep.errors import StageRefused
from lockstep.fsio import sha256_file

def run_dir_of(frozen, run_id: str) -> Path:
    """The folder of a run, where its capture put it."""
    return artifacts.study_run_dir(frozen, run_id)


def _rel(frozen, path: Path) -> str:
    return artifacts.repo_relative(path, frozen.repo_root)


def _captures(frozen, run_id: str) -> list[dict]:
    captures = frozen.journal.captures_of(run_id)
    if not captures:
        raise StageRefused(f"run {run_id!r} of {frozen.study_id} has no capture in the journal",
                           hint=f"run `lockstep capture {frozen.root}` first")
    return captures


def check_labels_before_scores(frozen, run_id: str, run_dir: Path) -> None:
    """Capture recorded, then labels frozen for this run, with the digests the files have now."""
    entries = frozen.journal.entries
    captures = _captures(frozen, run_id)
    labels = [e for e in entries if e["stage"] == "label" and e.get("details", {}).get("run") == run_id]
    if not labels or labels[-1]["seq"] < captures[-1]["seq"]:
        raise StageRefused(f"labels of run {run_id!r} are not frozen after its capture, so its scores may not be read",
                           hint=f"run `lockstep label {frozen.root} --run {run_id}` first (labels before scores)")
    texts = run_dir / artifacts.TEXTS
    label_file = run_dir / artifacts.LABELS
    if labels[-1]["outputs"].get(_rel(frozen, label_file)) != sha256_file(label_file):
        raise StageRefused(f"{label_file} differs from the labels frozen in the journal (entry {labels[-1]['seq']})",
                           hint="labels cannot change after they are frozen; restore them, or relabel with `lockstep label`")
    if labels[-1]["inputs"].get(_rel(frozen, texts)) != sha256_file(texts):
        raise StageRefused(f"{texts} differs from the texts the labels were made from")


def check_captured_files(frozen, run_id: str, run_dir: Path, names, optional=()) -> None:
    """The newest capture of the run recorded each of ``names`` (and of ``optional``, where present) with
    the digest the file has now; StageRefused naming the first that is missing or differs."""
    captures = _captures(frozen, run_id)
    outputs = captures[-1]["outputs"]
    for name in [*names, *optional]:
        path = run_dir / name
        if not path.exists():
            if name in optional:
                continue
            raise StageRefused(f"{path} is missing", hint=f"run `lockstep capture {frozen.root}` again")
        if outputs.get(_rel(frozen, path)) != sha256_file(path):
            raise StageRefused(f"{path} differs from the file the capture recorded in the journal (entry {captures[-1]['seq']})",
                               hint="captured data cannot change after capture; restore it, or capture into a new run")


def check_capture_digests(frozen, run_id: str, run_dir: Path) -> None:
    """Every table of the design's record as the newest capture of the run recorded it (labels are the
    label stage's output, checked by :func:`check_labels_before_scores`)."""
    record = frozen.design_record
    check_captured_files(frozen, run_id, run_dir, [t for t in record.run_tables if t != artifacts.LABELS],
                         record.optional_tables)


def check_audited(frozen, path: Path) -> None:
    """``path`` (a report file) is as the newest audit entry recorded it; StageRefused otherwise."""
    audits = frozen.journal.stages("audit")
    if not audits:
        raise StageRefused(f"{path} is not recorded by any audit in the journal", hint=f"run `lockstep audit {frozen.root}`")
    if audits[-1]["outputs"].get(_rel(frozen, path)) != sha256_file(path):
        raise StageRefused(f"{path} differs from the file the audit recorded in the journal (entry {audits[-1]['seq']})",
                           hint=f"the ledger cannot change after its audit; restore it, or rerun `lockstep audit {frozen.root}`")


def captured_run_dir(frozen, run_id: str) -> Path:
    """The run's folder; StageRefused when its capture did not complete (no manifest)."""
    run_dir = run_dir_of(frozen, run_id)
    if not (run_dir / artifacts.MANIFEST).exists():
        raise StageRefused(f"run {run_id!r} of {frozen.study_id} is not captured ({run_dir}/{artifacts.MANIFEST} is missing)",
                           hint=f"run `lockstep capture {frozen.root}`")
    return run_dir


def load_run(frozen, run_id: str):
    """Read a captured run through its design's audit module, after the checks its record calls for."""
    from .designs import audit_design

    run_dir = captured_run_dir(frozen, run_id)
    if frozen.design_record.needs_labels:
        check_labels_before_scores(frozen, run_id, run_dir)
    check_capture_digests(frozen, run_id, run_dir)
    return audit_design(frozen.design).read_run(run_id, run_dir)
