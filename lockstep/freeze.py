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
from .errors import (
    ChainBroken,
    DirtyStudy,
    LockMismatch,
    ProblemList,
    SchemaError,
    UsageError,
)
from .fsio import atomic_write, pretty_json, sha256_bytes, sha256_file, utc_now
from .gate import require_frozen
from .journal import (
    ACCESS_LEVELS,
    HEAD,
    JOURNAL,
    append_entry,
    read_journal,
    repair_head,
)
from .loaders import read_yaml
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
from .propose import check_discovery_source
from .provenance import dirty_files, head_commit, repo_root
from .records import _validator
from .study import PLAN_FILES, frozen_file_names, load_study

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
# The lock, written here before the freeze's journal entry and renamed to ``prereg.lock.json`` after it, so a
# freeze killed at any point is finished (or started over) by running ``lockstep prereg`` again.
PENDING_LOCK = f".{LOCK}.pending"


@dataclass(frozen=True)
class FreezeResult:
    status: str          # "frozen" | "already_frozen"
    lock_path: Path
    lock_digest: str
    dirty: bool
    note: str = ""       # what a rerun repaired (a freeze finished, a head rewritten)


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
    the differences and pointing to ``lockstep amend``. Frozen but its journal gone, or a journal whose
    lock is gone: ChainBroken (the freeze is never started again over a study that has a history).

    The lock is written to :data:`PENDING_LOCK`, the journal's first entry records its digest, then it is
    renamed into place: a freeze killed before the entry starts over, one killed after it is finished.
    """
    study_dir = study_dir_iv(study_dir)
    root = repo_root(study_dir)
    lock_path = study_dir / LOCK
    if lock_path.exists():
        return _already_frozen(study_dir, lock_path)
    journal = read_journal(study_dir)
    if journal.entries:
        return _finish_interrupted_freeze(study_dir, root, journal)
    (study_dir / PENDING_LOCK).unlink(missing_ok=True)  # a freeze killed before its journal entry: start over
    study = load_study(study_dir)
    check_discovery_source(root, study.spec, study.prompts)  # a proposed study: its discovery ran, and read none of its pairs
    names = frozen_file_names(study.spec, study_dir)
    dirty = _refuse_dirty(root, [study_dir / n for n in names], allow_dirty)
    body = _lock_body("base", study.study_id, study_dir, names, root, dirty)
    data = pretty_json(body)
    atomic_write(study_dir / SUMS, sums_text(body["files"]).encode(), mode=READ_ONLY)
    atomic_write(study_dir / PENDING_LOCK, data, mode=READ_ONLY)
    append_entry(study_dir, "prereg", inputs={}, outputs={n: e["sha256"] for n, e in body["files"].items()} | {LOCK: sha256_bytes(data)},
                 access_level="nothing_run", lock_digest=body["lock_digest"],
                 details={"dirty": bool(dirty), "dirty_files": dirty})
    _install_lock(study_dir, root, names)
    return FreezeResult("frozen", lock_path, body["lock_digest"], bool(dirty))


def _install_lock(study_dir: Path, root: Path, names: list[str]) -> None:
    os.replace(study_dir / PENDING_LOCK, study_dir / LOCK)
    _make_read_only([study_dir / n for n in names])
    _ensure_gitattributes(root, study_dir)


def _finish_interrupted_freeze(study_dir: Path, root: Path, journal) -> FreezeResult:
    """No lock but a journal: a freeze killed between its journal entry and the lock's rename is finished;
    anything else is a removed lock (ChainBroken)."""
    pending = study_dir / PENDING_LOCK
    first = journal.entries[0]
    if len(journal.entries) == 1 and first["stage"] == "prereg" and pending.is_file() \
            and first["outputs"].get(LOCK) == sha256_file(pending):
        body = read_lock(pending)
        if body["lock_digest"] == first["lock_digest"]:
            _install_lock(study_dir, root, sorted(body["files"]))
            repair_head(study_dir)  # a kill between the entry and its head, too
            return FreezeResult("frozen", study_dir / LOCK, body["lock_digest"], body["git"]["dirty"],
                                note=f"finished an interrupted freeze: {LOCK} is the one its journal entry recorded")
    raise ChainBroken(f"{study_dir / LOCK} is missing, but {JOURNAL} records {len(journal.entries)} stage(s) under a lock: "
                      "the lock was removed, and a study with a history is not frozen again",
                      hint=f"restore {LOCK} and {SUMS} from git (git checkout -- {study_dir})")


def _already_frozen(study_dir: Path, lock_path: Path) -> FreezeResult:
    body = read_lock(lock_path)
    if body.get("study_id") != study_dir.name:
        raise LockMismatch(
            f"{lock_path} is the lock of study {body.get('study_id')!r}, not of {study_dir.name!r}: the folder was copied "
            "from another study with its lock, journal and read-only files",
            hint=f"to start a new study here, remove the copied freeze (rm -f {study_dir}/{LOCK} {study_dir}/{SUMS} "
                 f"{study_dir}/JOURNAL.* && chmod u+w {study_dir}/*) and set study_id, or start from a template: "
                 f"`lockstep new NAME --design routing|ablation`")
    diffs = file_differences(study_dir, body["files"])
    if diffs:
        raise LockMismatch(
            f"{study_dir} is frozen and its frozen files changed:\n" + "\n".join(f"  - {d}" for d in diffs),
            hint=f"restore the frozen files (git checkout -- {study_dir}), and make the change as an amendment: "
                 f"`lockstep amend {study_dir} --replace FILE --reason ... --seen ...`")
    if not read_journal(study_dir).entries:
        raise ChainBroken(f"{study_dir} is frozen ({LOCK} exists) but {JOURNAL} has no entries: the journal was removed, "
                          "and a frozen study's journal is never started again",
                          hint=f"restore {JOURNAL} and {HEAD} from git (git checkout -- {study_dir / JOURNAL} {study_dir / HEAD})")
    note = f"rewrote {HEAD}, left one entry behind by an interrupted append" if repair_head(study_dir) else ""
    return FreezeResult("already_frozen", lock_path, body["lock_digest"], body["git"]["dirty"], note=note)


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
    where = f"{AMENDMENTS}/{folder.name}/{AMENDMENT_FILE}"
    meta = read_yaml(folder / AMENDMENT_FILE, where, problems).data  # the plan files' safe reader (no aliases, bounded)
    for error in _validator("amendment").iter_errors(meta) if meta is not None else ():
        problems.add(where, "/" + "/".join(map(str, error.absolute_path)), error.message)
    problems.raise_if_any()
    files = effective_files(study_dir) | {name: folder / name for name in meta["replaces"]}
    try:
        load_study(study_dir, files)
    except SchemaError as exc:  # `lockstep validate` reads only frozen amendments: point back at this command
        raise SchemaError(exc.problems, hint=f"correct the files listed (paths inside {study_dir}), commit, "
                                             f"then run `lockstep amend {study_dir} --freeze` again") from None
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
    outputs = {f"{AMENDMENTS}/{folder.name}/{n}": e["sha256"] for n, e in body["files"].items()}
    outputs[f"{AMENDMENTS}/{folder.name}/{AMENDMENT_LOCK}"] = sha256_file(folder / AMENDMENT_LOCK)
    append_entry(study_dir, "amend", inputs={}, outputs=outputs,
                 access_level=frozen.access_level, lock_digest=body["lock_digest"],
                 details={"amendment": meta["id"], "seen": meta["seen"], "post_hoc": meta["seen"] == "scores_seen",
                          "replaces": meta["replaces"], "reason": meta["reason"]})
    return FreezeResult("frozen", folder / AMENDMENT_LOCK, body["lock_digest"], bool(dirty))
