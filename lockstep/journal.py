"""The study journal: ``JOURNAL.jsonl`` (append-only, hash-chained) and ``JOURNAL.head.json`` (a witness
of its length and last line, so that a removed last entry is caught).

Each line is the canonical JSON of one entry. Entry ``seq`` n carries ``prev_sha256`` = sha256 of line
n-1's bytes; entry 0 carries ``prev_sha256: null`` and is the freeze, whose ``lock_digest`` is the base
lock's digest. Appends take an exclusive ``flock`` and rewrite both files atomically, the journal first.

Recovery rule: a process killed between the two writes leaves the head one entry behind a chain that
verifies. The head is derivable from the journal and that state removes nothing, so it is accepted
(:attr:`Journal.head_behind`, which ``verify`` reports) and the next append, or ``lockstep prereg`` on the
frozen study, rewrites the head. A head that is ahead of the journal, or behind by more, is an alteration.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import ChainBroken, StageRefused, bounded
from .fsio import atomic_write, canonical_json, pretty_json, sha256_bytes, utc_now
from .provenance import git_info
from .records import JOURNAL_ENTRY, JOURNAL_HEAD, check_record, record_problems

JOURNAL = "JOURNAL.jsonl"
HEAD = "JOURNAL.head.json"
ACCESS_LEVELS = ("nothing_run", "texts_seen", "labels_frozen", "scores_seen")


@dataclass(frozen=True)
class Journal:
    entries: list[dict]
    lines: list[bytes]
    head_behind: bool = False  # the head witnesses all but the last entry: an append was interrupted

    @property
    def head(self) -> dict:
        """The head witness this journal derives (what ``JOURNAL.head.json`` holds once written)."""
        return {"length": len(self.lines), "last_sha256": sha256_bytes(self.lines[-1]) if self.lines else None}

    @property
    def access_level(self) -> str:
        """The furthest access level any stage has reached (levels only move forward)."""
        reached = [ACCESS_LEVELS.index(e["access_level"]) for e in self.entries]
        return ACCESS_LEVELS[max(reached, default=0)]

    def stages(self, stage: str) -> list[dict]:
        return [e for e in self.entries if e["stage"] == stage]

    def captures_of(self, run_id: str) -> list[dict]:
        """The capture entries that wrote run ``run_id``, oldest first."""
        return [e for e in self.stages("capture") if run_id in e.get("details", {}).get("runs", [])]


def read_journal(study_dir: Path) -> Journal:
    """Read and verify the chain and the head witness; raise ChainBroken naming the first bad entry."""
    path = Path(study_dir) / JOURNAL
    head_path = Path(study_dir) / HEAD
    if not path.exists():
        if head_path.exists():
            try:
                _check_head(head_path, [])  # the empty head the first append writes before the journal
            except ChainBroken:
                raise ChainBroken(f"{path} is missing but {HEAD} witnesses a journal", hint="restore the journal from git") from None
        return Journal([], [])
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise ChainBroken(f"{path}: the last line is incomplete (no newline)", hint="restore the journal from git")
    lines = raw.splitlines()
    entries = []
    prev = None
    for seq, line in enumerate(lines):
        where = f"{path}:{seq + 1}"
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8, a huge integer, or nesting too deep to parse
            raise ChainBroken(f"{where}: not valid JSON ({bounded(str(exc), 200) or type(exc).__name__})",
                              hint="the journal is append-only; restore it from git") from exc
        if canonical_json(entry) != line:
            raise ChainBroken(f"{where}: the entry is not in canonical form, so it was edited", hint="restore the journal from git")
        problems = record_problems(JOURNAL_ENTRY, entry, where)
        if problems:
            raise ChainBroken(f"{where}: the entry does not follow schemas/journal-entry.schema.json "
                              f"({problems[0].pointer or '/'}: {problems[0].message})", hint="restore the journal from git")
        if entry.get("seq") != seq:
            raise ChainBroken(f"{where}: seq is {entry.get('seq')!r}, expected {seq} (an entry was removed or reordered)")
        if entry.get("prev_sha256") != prev:
            raise ChainBroken(f"{where}: prev_sha256 does not match the previous entry (an entry was edited, removed or inserted)")
        prev = sha256_bytes(line)
        entries.append(entry)
    behind = _check_head(head_path, lines)
    return Journal(entries, lines, behind)


def _check_head(head_path: Path, lines: list[bytes]) -> bool:
    """Check the head witness byte for byte; True when it is exactly one entry behind (an interrupted append)."""
    length = len(lines)
    last = sha256_bytes(lines[-1]) if lines else None
    if not head_path.exists():
        if length:
            raise ChainBroken(f"{head_path} is missing; it witnesses the journal's length", hint="restore it from git")
        return False
    raw = head_path.read_bytes()
    try:
        head = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ChainBroken(f"{head_path}: not valid JSON", hint="restore it from git") from exc
    if record_problems(JOURNAL_HEAD, head, str(head_path)) or _pretty_or_none(head) != raw:
        raise ChainBroken(f"{head_path} is not byte for byte the form lockstep writes (its whitespace or layout was edited)",
                          hint="restore JOURNAL.head.json from git")
    if head.get("length") == length and head.get("last_sha256") == last:
        return False
    if length and head.get("length") == length - 1 and head.get("last_sha256") == (sha256_bytes(lines[-2]) if length > 1 else None):
        return True
    raise ChainBroken(
        f"{head_path} witnesses {head.get('length')} entries ending in {str(head.get('last_sha256'))[:12]}, "
        f"but {JOURNAL} has {length} ending in {str(last)[:12]} (an entry was removed, added or edited)",
        hint="restore JOURNAL.jsonl and JOURNAL.head.json from git")


def _pretty_or_none(obj) -> bytes | None:
    try:
        return pretty_json(obj)
    except ValueError:  # NaN or infinity: never written by lockstep
        return None


@contextmanager
def _locked(study_dir: Path):
    """Exclusive lock on the study folder itself (no lock file to leave behind or commit)."""
    fd = os.open(study_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def append_entry(study_dir: Path, stage: str, *, inputs: dict[str, str], outputs: dict[str, str],
                 access_level: str, lock_digest: str, details: dict | None = None,
                 started_utc: str | None = None) -> dict:
    """Append one stage entry under ``lock_digest``, the lock in force (``FrozenStudy.lock_digest``; the
    freeze and an amendment pass the digest of the lock they just wrote).

    The entry records the access level the stage needed; the journal's level is the furthest any entry
    reached, so levels only move forward. Only the freeze may be the first entry (StageRefused otherwise).
    """
    if not isinstance(lock_digest, str) or len(lock_digest) != 64:
        raise ValueError(f"`lock_digest` must be the 64-hex digest of the lock in force, got {lock_digest!r}")
    if access_level not in ACCESS_LEVELS:
        raise ValueError(f"`access_level` must be one of {ACCESS_LEVELS}, got {access_level!r}")
    study_dir = Path(study_dir)
    with _locked(study_dir):
        journal = read_journal(study_dir)
        if not journal.entries and stage != "prereg":
            raise StageRefused(f"the journal of {study_dir} has no freeze entry; stage {stage!r} cannot be first",
                               hint=f"run `lockstep prereg {study_dir}` first")
        if not (study_dir / HEAD).exists():  # a kill after the first journal write leaves a head one behind
            atomic_write(study_dir / HEAD, pretty_json(journal.head))
        now = utc_now()
        entry = {
            "seq": len(journal.entries),
            "stage": stage,
            "started_utc": started_utc or now,
            "finished_utc": now,
            "inputs": dict(sorted(inputs.items())),
            "outputs": dict(sorted(outputs.items())),
            "access_level": access_level,
            "tool_version": __version__,
            "git": git_info(study_dir),
            "prev_sha256": sha256_bytes(journal.lines[-1]) if journal.lines else None,
            "lock_digest": lock_digest,
        }
        if details:
            entry["details"] = details
        check_record(JOURNAL_ENTRY, entry, f"{study_dir / JOURNAL} (entry {entry['seq']})",
                     hint="a lockstep bug: a stage is about to journal an entry its schema refuses")
        line = canonical_json(entry)
        atomic_write(study_dir / JOURNAL, b"".join(l + b"\n" for l in journal.lines) + line + b"\n")
        atomic_write(study_dir / HEAD, pretty_json(Journal([*journal.entries, entry], [*journal.lines, line]).head))
    return entry


def repair_head(study_dir: Path) -> bool:
    """Rewrite a head left one entry behind by an interrupted append; True if it was rewritten."""
    study_dir = Path(study_dir)
    with _locked(study_dir):
        journal = read_journal(study_dir)
        if not journal.head_behind:
            return False
        atomic_write(study_dir / HEAD, pretty_json(journal.head))
        return True
