"""Freeze and amend: the writers of the lock (its format is :mod:`lockstep.lock`).

``freeze`` validates a study and writes ``prereg.lock.json``, ``SHA256SUMS`` and the journal's first
entry; an amendment lives in ``amendments/NNN/`` with ``amendment.yaml`` and the replacement files, and
freezing it writes ``amendment.lock.json`` chained to its parent's digest. Both need the gate (the plan
in force must verify before it can be amended), so they sit one floor above it.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import __version__
from .artifacts import JOURNAL_FORMAT_VERSION, LOCK_FORMAT_VERSION, SCHEMA_VERSION
from .errors import DirtyStudy, LockMismatch, ProblemList, UsageError
from .fsio import atomic_write, pretty_json, sha256_file, utc_now
from .gate import require_frozen
from .journal import ACCESS_LEVELS, append_entry, read_journal
from .lock import (
    AMENDMENT_FILE,
    AMENDMENT_LOCK,
    AMENDMENTS,
    LOCK,
    SUMS,
    amendment_dirs,
    effective_files,
    file_differences,
    lock_digest_of,
    read_lock,
    study_dir_iv,
    sums_text,
)
from .provenance import dirty_files, head_commit, repo_root
from .records import _validator
from .study import PLAN_FILES, frozen_file_names, load_study

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


@dataclass(frozen=True)
class FreezeResult:
    status: str          # "frozen" | "already_frozen"
    lock_path: Path
    lock_digest: str
    dirty: bool


def _make_read_only(paths: list[Path]) -> None:
    for path in paths:
        os.chmod(path, READ_ONLY)


def _ensure_gitattributes(root: Path, study_dir: Path) -> bool:
    """Make sure a ``-text`` rule covers the study folder, so no checkout rewrites line endings."""
    rel = study_dir.relative_to(root).as_posix()
    path = root / ".gitattributes"
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    covering = {f"{rel}/** -text", "preregistrations/** -text"} if rel.startswith("preregistrations/") else {f"{rel}/** -text"}
    if any(line.strip() in covering for line in existing.splitlines()):
        return False
    text = existing + ("" if existing.endswith("\n") or not existing else "\n") + f"{rel}/** -text\n"
    atomic_write(path, text.encode())
    return True


def _lock_body(kind: str, study_id: str, folder: Path, names: list[str], root: Path, dirty: list[str], extra: dict | None = None) -> dict:
    body = {
        "lock_version": 1,
        "kind": kind,
        "study_id": study_id,
        "files": {name: {"sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size} for name in sorted(names)},
        "git": {"commit": head_commit(root), "dirty": bool(dirty), "dirty_files": dirty},
        "created_utc": utc_now(),
        "tool": {"name": "lockstep", "version": __version__},
        "schema_versions": {"study": SCHEMA_VERSION, "prompts": SCHEMA_VERSION, "rubric": SCHEMA_VERSION,
                            "thresholds": SCHEMA_VERSION, "lock": LOCK_FORMAT_VERSION, "journal": JOURNAL_FORMAT_VERSION},
    }
    if extra:
        body.update(extra)
    body["lock_digest"] = lock_digest_of(body)
    return body


def _refuse_dirty(root: Path, paths: list[Path], allow_dirty: bool) -> list[str]:
    dirty = dirty_files(root, paths)
    if dirty and not allow_dirty:
        raise DirtyStudy(
            "these study files have uncommitted changes, so no commit holds the bytes being frozen:\n"
            + "\n".join(f"  - {d}" for d in dirty),
            hint=f"commit them (git add {' '.join(dirty)} && git commit), or pass --allow-dirty, which the lock records")
    return dirty


def freeze(study_dir: Path, *, allow_dirty: bool = False) -> FreezeResult:
    """Validate and freeze the study in ``study_dir`` (``lockstep prereg``).

    Already frozen and intact: says so and changes nothing. Frozen but changed: LockMismatch listing
    the differences and pointing to ``lockstep amend``.
    """
    study_dir = study_dir_iv(study_dir)
    root = repo_root(study_dir)
    lock_path = study_dir / LOCK
    if lock_path.exists():
        return _already_frozen(study_dir, lock_path)
    study = load_study(study_dir)
    names = frozen_file_names(study.spec)
    dirty = _refuse_dirty(root, [study_dir / n for n in names], allow_dirty)
    body = _lock_body("base", study.study_id, study_dir, names, root, dirty)
    atomic_write(study_dir / SUMS, sums_text(body["files"]).encode(), mode=READ_ONLY)
    atomic_write(lock_path, pretty_json(body), mode=READ_ONLY)
    _make_read_only([study_dir / n for n in names])
    _ensure_gitattributes(root, study_dir)
    append_entry(study_dir, "prereg", inputs={}, outputs={n: e["sha256"] for n, e in body["files"].items()} | {LOCK: sha256_file(lock_path)},
                 access_level="nothing_run", lock_digest=body["lock_digest"],
                 details={"dirty": bool(dirty), "dirty_files": dirty})
    return FreezeResult("frozen", lock_path, body["lock_digest"], bool(dirty))


def _already_frozen(study_dir: Path, lock_path: Path) -> FreezeResult:
    body = read_lock(lock_path)
    diffs = file_differences(study_dir, body["files"])
    if diffs:
        raise LockMismatch(
            f"{study_dir} is frozen and its frozen files changed:\n" + "\n".join(f"  - {d}" for d in diffs),
            hint=f"restore the frozen files (git checkout -- {study_dir}), and make the change as an amendment: "
                 f"`lockstep amend {study_dir} --replace FILE --reason ... --seen ...`")
    if not read_journal(study_dir).entries:
        append_entry(study_dir, "prereg", inputs={}, outputs={n: e["sha256"] for n, e in body["files"].items()},
                     access_level="nothing_run", lock_digest=body["lock_digest"], details={"resumed": True})
    return FreezeResult("already_frozen", lock_path, body["lock_digest"], body["git"]["dirty"])


# ---------------------------------------------------------------- amendments

def start_amendment(study_dir: Path, *, replaces: list[str], reason: str, seen: str) -> Path:
    """Open ``amendments/NNN/`` with ``amendment.yaml`` and editable copies of the files it replaces."""
    study_dir = study_dir_iv(study_dir)
    frozen = require_frozen(study_dir)
    problems = ProblemList()
    for name in replaces:
        if name not in PLAN_FILES:
            problems.add("amendment", "/replaces", f"{name!r} cannot be amended; choose from {', '.join(PLAN_FILES)}")
    if seen not in ACCESS_LEVELS:
        problems.add("amendment", "/seen", f"{seen!r} is not an access level; expected one of {', '.join(ACCESS_LEVELS)}")
    elif ACCESS_LEVELS.index(seen) < ACCESS_LEVELS.index(frozen.access_level):
        problems.add("amendment", "/seen", f"says {seen!r}, but the journal shows {frozen.access_level!r} was reached; an amendment cannot claim less was seen")
    if not reason.strip():
        problems.add("amendment", "/reason", "is empty; say why the plan changes")
    problems.raise_if_any()
    number = len(amendment_dirs(study_dir)) + 1
    folder = study_dir / AMENDMENTS / f"{number:03d}"
    folder.mkdir(parents=True)
    body = {"schema_version": SCHEMA_VERSION, "id": f"{number:03d}", "replaces": sorted(replaces), "reason": reason, "seen": seen}
    atomic_write(folder / AMENDMENT_FILE, yaml.safe_dump(body, sort_keys=True, allow_unicode=True).encode())
    current = effective_files(study_dir)
    for name in replaces:
        shutil.copyfile(current[name], folder / name)
        os.chmod(folder / name, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    return folder


def draft_amendment(study_dir: Path) -> Path | None:
    drafts = [d for d in amendment_dirs(study_dir) if not (d / AMENDMENT_LOCK).exists()]
    return drafts[0] if drafts else None


def freeze_amendment(study_dir: Path, *, allow_dirty: bool = False) -> FreezeResult:
    """Validate the plan with the draft amendment applied and freeze the amendment, chained to its parent."""
    study_dir = study_dir_iv(study_dir)
    folder = draft_amendment(study_dir)
    if folder is None:
        raise UsageError(f"{study_dir} has no open amendment", hint=f"start one with `lockstep amend {study_dir} --replace FILE --reason ... --seen ...`")
    frozen = require_frozen(study_dir, allow_draft=True)
    root = repo_root(study_dir)
    problems = ProblemList()
    meta = yaml.safe_load((folder / AMENDMENT_FILE).read_text(encoding="utf-8"))
    for error in _validator("amendment").iter_errors(meta):
        problems.add(f"{folder.name}/{AMENDMENT_FILE}", "/" + "/".join(map(str, error.absolute_path)), error.message)
    problems.raise_if_any()
    files = effective_files(study_dir) | {name: folder / name for name in meta["replaces"]}
    load_study(study_dir, files)
    unchanged = [n for n in meta["replaces"] if sha256_file(folder / n) == sha256_file(effective_files(study_dir)[n])]
    if unchanged:
        raise UsageError(f"amendment {folder.name} replaces {', '.join(unchanged)} without changing a byte",
                         hint=f"edit the copies in {folder}, or remove {meta['replaces']} from {AMENDMENT_FILE}")
    names = [AMENDMENT_FILE, *meta["replaces"]]
    dirty = _refuse_dirty(root, [folder / n for n in names], allow_dirty)
    extra = {"amendment": {"id": meta["id"], "parent_digest": frozen.lock_digest, "replaces": meta["replaces"],
                           "reason": meta["reason"], "seen": meta["seen"]}}
    body = _lock_body("amendment", frozen.study_id, folder, names, root, dirty, extra)
    atomic_write(folder / AMENDMENT_LOCK, pretty_json(body), mode=READ_ONLY)
    _make_read_only([folder / n for n in names])
    append_entry(study_dir, "amend", inputs={}, outputs={f"{AMENDMENTS}/{folder.name}/{n}": e["sha256"] for n, e in body["files"].items()},
                 access_level=frozen.access_level, lock_digest=body["lock_digest"],
                 details={"amendment": meta["id"], "seen": meta["seen"], "post_hoc": meta["seen"] == "scores_seen",
                          "replaces": meta["replaces"], "reason": meta["reason"]})
    return FreezeResult("frozen", folder / AMENDMENT_LOCK, body["lock_digest"], bool(dirty))
