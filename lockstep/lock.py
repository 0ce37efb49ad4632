"""The lock format: what makes a plan tamper-evident, read and checked (the writers are in :mod:`lockstep.freeze`).

A frozen file never changes by one byte. ``prereg.lock.json`` records each frozen file's sha256 and size,
the git commit that holds those bytes, the UTC time, tool and schema versions, and ``lock_digest``: the
sha256 of the canonical JSON of the lock without that field. ``SHA256SUMS`` repeats the digests in the
form ``sha256sum -c`` reads. An amendment lives in ``amendments/NNN/`` with ``amendment.yaml`` and the
replacement files; freezing it writes ``amendment.lock.json`` chained to its parent's digest.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LockMismatch, NotLocked, UsageError, bounded
from .fsio import canonical_json, pretty_json, sha256_bytes
from .records import _validator
from .study import PLAN_FILES, plain_relative

LOCK = "prereg.lock.json"
SUMS = "SHA256SUMS"
AMENDMENTS = "amendments"
AMENDMENT_LOCK = "amendment.lock.json"
AMENDMENT_FILE = "amendment.yaml"


def study_dir_iv(study_dir: Path) -> Path:
    """Resolve ``study_dir`` and check it is a study folder (UsageError otherwise).

    A bare name (``demo``) that is not a folder here names ``preregistrations/<name>`` in this folder or
    the nearest one above it that has it, as ``make ... STUDY=<name>`` does.
    """
    path = Path(study_dir)
    if not path.exists() and len(path.parts) == 1:
        here = Path.cwd().resolve()
        for base in (here, *here.parents):
            if (base / "preregistrations" / path.name / "study.yaml").is_file():
                path = base / "preregistrations" / path.name
                break
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="give the path of a study folder, e.g. preregistrations/demo")
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder", hint="give the path of a study folder, e.g. preregistrations/demo")
    if not (path / "study.yaml").exists():
        raise UsageError(f"{path} has no study.yaml, so it is not a study folder",
                         hint="a study folder holds study.yaml, prompts.jsonl, rubric.yaml and thresholds.yaml")
    return path.resolve()


def sums_text(files: dict[str, dict]) -> str:
    """The SHA256SUMS file for locked ``files``, in the form ``sha256sum -c`` reads, sorted by name."""
    return "".join(f"{entry['sha256']}  {name}\n" for name, entry in sorted(files.items()))


def lock_digest_of(body: dict) -> str:
    return sha256_bytes(canonical_json({k: v for k, v in body.items() if k != "lock_digest"}))


def read_lock(path: Path) -> dict:
    """Parse a lock and check its schema and digest; LockMismatch if its body was edited."""
    try:
        raw = path.read_bytes()
        body = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers JSON, UTF-8 and huge integers
        raise LockMismatch(f"{path} cannot be read as JSON ({bounded(str(exc), 200)})", hint="restore the lock from git") from exc
    errors = sorted(_validator("lock").iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        pointer = "/" + "/".join(map(str, first.absolute_path))
        raise LockMismatch(bounded(f"{path} {pointer}: {first.message}"), hint="restore the lock from git")
    outside = [name for name in body["files"] if not plain_relative(name)]
    if outside:
        raise LockMismatch(f"{path} /files: names {bounded(repr(sorted(outside)), 300)}, outside the folder the lock covers; "
                           "a lock only names files inside its own folder, and lockstep never writes such a name",
                           hint="this lock was written by hand or tampered with: restore it from git")
    if lock_digest_of(body) != body["lock_digest"]:
        raise LockMismatch(f"{path}: lock_digest does not match the lock body, so the lock itself was edited",
                           hint="restore the lock from git; a change to a frozen plan is an amendment (`lockstep amend`)")
    if pretty_json(body) != raw:
        raise LockMismatch(f"{path} is not byte for byte the form lockstep writes (its whitespace or layout was edited)",
                           hint="restore the lock from git")
    return body


def file_differences(folder: Path, locked: dict[str, dict], reader=None) -> list[str]:
    """One line per locked file that is missing or whose bytes differ from the lock."""
    reader = reader or (lambda name: (folder / name).read_bytes() if (folder / name).is_file() else None)
    out = []
    for name, want in sorted(locked.items()):
        data = reader(name)
        if data is None:
            out.append(f"{folder / name}: missing (locked sha256 {want['sha256'][:12]}, {want['size']} bytes)")
            continue
        got = sha256_bytes(data)
        if got != want["sha256"]:
            out.append(f"{folder / name}: changed (locked sha256 {want['sha256'][:12]} size {want['size']}, "
                       f"now sha256 {got[:12]} size {len(data)})")
    return out


def amendment_dirs(study_dir: Path) -> list[Path]:
    folder = Path(study_dir) / AMENDMENTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def effective_files(study_dir: Path) -> dict[str, Path]:
    """Where each plan file is read from: the base, overridden by each frozen amendment in order."""
    files = {name: Path(study_dir) / name for name in PLAN_FILES}
    for folder in amendment_dirs(study_dir):
        if (folder / AMENDMENT_LOCK).exists():
            for name in read_lock(folder / AMENDMENT_LOCK).get("amendment", {}).get("replaces", []):
                files[name] = folder / name
    return files


def current_lock_digest(study_dir: Path) -> str:
    """The digest of the lock in force: the last frozen amendment's, else the base lock's."""
    study_dir = Path(study_dir)
    digest = None
    if (study_dir / LOCK).exists():
        digest = read_lock(study_dir / LOCK)["lock_digest"]
    for folder in amendment_dirs(study_dir):
        if (folder / AMENDMENT_LOCK).exists():
            digest = read_lock(folder / AMENDMENT_LOCK)["lock_digest"]
    if digest is None:
        raise NotLocked(f"{study_dir} is not frozen", hint=f"run `lockstep prereg {study_dir}` first")
    return digest
