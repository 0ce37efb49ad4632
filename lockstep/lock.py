"""Freeze and amend: the lock that makes a plan tamper-evident, and the amendments that change it in the open.

A frozen file never changes by one byte. ``prereg.lock.json`` records each frozen file's sha256 and size,
the git commit that holds those bytes, the UTC time, tool and schema versions, and ``lock_digest``: the
sha256 of the canonical JSON of the lock without that field. ``SHA256SUMS`` repeats the digests in the
form ``sha256sum -c`` reads. An amendment lives in ``amendments/NNN/`` with ``amendment.yaml`` and the
replacement files; freezing it writes ``amendment.lock.json`` chained to its parent's digest.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import SCHEMA_VERSION, __version__
from .errors import DirtyStudy, LockMismatch, NotLocked, ProblemList, UsageError
from .fsio import atomic_write, canonical_json, pretty_json, sha256_bytes, sha256_file, utc_now
from .journal import ACCESS_LEVELS, append_entry, read_journal
from .provenance import dirty_files, head_commit, repo_root
from .study import PLAN_FILES, _validator, frozen_file_names, load_study

LOCK = "prereg.lock.json"
SUMS = "SHA256SUMS"
AMENDMENTS = "amendments"
AMENDMENT_LOCK = "amendment.lock.json"
AMENDMENT_FILE = "amendment.yaml"
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


@dataclass(frozen=True)
class FreezeResult:
    status: str          # "frozen" | "already_frozen"
    lock_path: Path
    lock_digest: str
    dirty: bool


def study_dir_iv(study_dir: Path) -> Path:
    """Resolve ``study_dir`` and check it is a study folder (UsageError otherwise)."""
    path = Path(study_dir)
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
        body = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError covers JSON and UTF-8 errors
        raise LockMismatch(f"{path} cannot be read as JSON ({exc})", hint="restore the lock from git") from exc
    errors = sorted(_validator("lock").iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        pointer = "/" + "/".join(map(str, first.absolute_path))
        raise LockMismatch(f"{path} {pointer}: {first.message}", hint="restore the lock from git")
    if lock_digest_of(body) != body["lock_digest"]:
        raise LockMismatch(f"{path}: lock_digest does not match the lock body, so the lock itself was edited",
                           hint="restore the lock from git; a change to a frozen plan is an amendment (`lockstep amend`)")
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
            for name in json.loads((folder / AMENDMENT_LOCK).read_bytes())["amendment"]["replaces"]:
                files[name] = folder / name
    return files


def current_lock_digest(study_dir: Path) -> str:
    """The digest of the lock in force: the last frozen amendment's, else the base lock's."""
    study_dir = Path(study_dir)
    digest = None
    if (study_dir / LOCK).exists():
        digest = json.loads((study_dir / LOCK).read_bytes())["lock_digest"]
    for folder in amendment_dirs(study_dir):
        if (folder / AMENDMENT_LOCK).exists():
            digest = json.loads((folder / AMENDMENT_LOCK).read_bytes())["lock_digest"]
    if digest is None:
        raise NotLocked(f"{study_dir} is not frozen", hint=f"run `lockstep prereg {study_dir}` first")
    return digest


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
                            "thresholds": SCHEMA_VERSION, "lock": 1, "journal": 1},
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
    from .gate import require_frozen  # the plan in force must verify before it can be amended

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
    body = {"schema_version": 1, "id": f"{number:03d}", "replaces": sorted(replaces), "reason": reason, "seen": seen}
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
    from .gate import require_frozen

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
