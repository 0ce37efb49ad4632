"""A reviewer's verify: a flat, numbered sequence of ``verify_*`` steps, each raising or returning a note.

``verify_study`` runs every step and reports each; the gate (:mod:`lockstep.gate`) runs the same steps
and stops at the first failure. Exit codes: 0 intact, 1 altered or tampered, 2 not frozen or usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ChainBroken, LockMismatch, LockstepError, NotInRepository, NotLocked
from .fsio import sha256_bytes
from .journal import HEAD, JOURNAL, read_journal
from .lock import (
    AMENDMENT_LOCK,
    AMENDMENTS,
    LOCK,
    SUMS,
    amendment_dirs,
    file_differences,
    read_lock,
    study_dir_iv,
    sums_text,
)
from .provenance import blob_at, commit_exists, repo_root, staged_blob


@dataclass
class Context:
    """What the steps share: the study folder, the repository (if any), and what earlier steps read."""

    study_dir: Path
    staged: bool = False
    allow_draft: bool = False
    root: Path | None = None
    lock: dict | None = None
    amendments: list[dict] = field(default_factory=list)
    journal: object | None = None
    allowed_signers: Path | None = None   # the reviewer's trust files (lockstep.witness); None: the defaults
    tsa_ca: Path | None = None
    evidence: object | None = None        # lockstep.witness.Evidence, once verify_evidence ran
    bundle: Path | None = None            # the folder a bundle was unpacked into (lockstep.bundle), else None


def verify_lock_present(ctx: Context) -> str:
    if not (ctx.study_dir / LOCK).exists():
        if (ctx.study_dir / f".{LOCK}.pending").exists():
            raise NotLocked(f"{ctx.study_dir} is not frozen: a freeze was interrupted before {LOCK} was put in place",
                            hint=f"run `lockstep prereg {ctx.study_dir}` to finish it")
        if (ctx.study_dir / JOURNAL).is_file() and (ctx.study_dir / JOURNAL).stat().st_size:
            raise LockMismatch(f"{ctx.study_dir / LOCK} is missing, but {JOURNAL} records stages run under a lock (the lock was removed)",
                               hint=f"restore {LOCK} and {SUMS} from git (git checkout -- {ctx.study_dir})")
        raise NotLocked(f"{ctx.study_dir} is not frozen: {LOCK} is missing",
                        hint=f"run `lockstep prereg {ctx.study_dir}` first")
    return f"{LOCK} present"


def verify_lock_body(ctx: Context) -> str:
    ctx.lock = read_lock(ctx.study_dir / LOCK)
    return f"lock body intact, digest {ctx.lock['lock_digest'][:12]}"


def _reader(ctx: Context, folder: Path):
    if not ctx.staged:
        return None
    rel = folder.resolve().relative_to(ctx.root)
    return lambda name: staged_blob(ctx.root, (rel / name).as_posix())


def verify_files_match_lock(ctx: Context) -> str:
    diffs = file_differences(ctx.study_dir, ctx.lock["files"], _reader(ctx, ctx.study_dir))
    if diffs:
        where = "the git index" if ctx.staged else "the working tree"
        raise LockMismatch(f"frozen files differ from the lock in {where}:\n" + "\n".join(f"  - {d}" for d in diffs),
                           hint=f"restore them (git checkout -- {ctx.study_dir}); a change to a frozen plan is an amendment (`lockstep amend`)")
    return f"{len(ctx.lock['files'])} frozen files match the lock"


def verify_sha256sums(ctx: Context) -> str:
    path = ctx.study_dir / SUMS
    if not path.exists():
        raise LockMismatch(f"{path} is missing", hint="restore it from git")
    if path.read_bytes() != sums_text(ctx.lock["files"]).encode():
        raise LockMismatch(f"{path} is not byte for byte the lock's digests", hint="restore it from git")
    return f"{SUMS} agrees with the lock"


def verify_git_commit(ctx: Context) -> str:
    commit = ctx.lock["git"]["commit"]
    if ctx.root is None:
        return "no git repository here; commit check skipped (run verify inside the study's repository)"
    if ctx.lock["git"]["dirty"]:
        return f"frozen with --allow-dirty from commit {str(commit)[:12]}; no commit holds the frozen bytes of {', '.join(ctx.lock['git']['dirty_files'])}"
    if commit is None:
        raise LockMismatch("the lock names no commit but says the tree was clean")
    if not commit_exists(ctx.root, commit):
        raise LockMismatch(f"the lock's commit {commit[:12]} is not in this repository",
                           hint="fetch the full history (git fetch --unshallow) and verify again")
    rel = ctx.study_dir.resolve().relative_to(ctx.root)
    wrong = [name for name, entry in ctx.lock["files"].items()
             if (data := blob_at(ctx.root, commit, (rel / name).as_posix())) is None or sha256_bytes(data) != entry["sha256"]]
    if wrong:
        raise LockMismatch(f"commit {commit[:12]} does not hold the frozen bytes of {', '.join(sorted(wrong))}")
    return f"commit {commit[:12]} holds the frozen bytes"


def verify_amendments(ctx: Context) -> str:
    parent = ctx.lock["lock_digest"]
    ctx.amendments = []
    for folder in amendment_dirs(ctx.study_dir):
        if not (folder / AMENDMENT_LOCK).exists():
            if ctx.allow_draft:
                continue
            raise ChainBroken(f"amendment {folder.name} is open (not frozen)",
                              hint=f"freeze it with `lockstep amend {ctx.study_dir} --freeze`, or remove {folder}")
        body = read_lock(folder / AMENDMENT_LOCK)
        if body["kind"] != "amendment" or body["amendment"]["parent_digest"] != parent:
            raise ChainBroken(f"amendment {folder.name}: parent_digest does not match the lock before it (the amendment chain is broken)")
        diffs = file_differences(folder, body["files"], _reader(ctx, folder))
        if diffs:
            raise LockMismatch(f"amendment {folder.name} files differ from its lock:\n" + "\n".join(f"  - {d}" for d in diffs))
        ctx.amendments.append(body)
        parent = body["lock_digest"]
    return f"{len(ctx.amendments)} amendment(s) chained" if ctx.amendments else "no amendments"


def verify_journal(ctx: Context) -> str:
    ctx.journal = read_journal(ctx.study_dir)
    entries = ctx.journal.entries
    if not entries:
        raise ChainBroken(f"{ctx.study_dir} is frozen but {JOURNAL} is missing or empty: the freeze wrote its first entry, "
                          "so the journal was removed", hint=f"restore {JOURNAL} and {HEAD} from git")
    if entries[0]["stage"] != "prereg" or entries[0]["lock_digest"] != ctx.lock["lock_digest"]:
        raise ChainBroken("the journal's first entry is not the freeze of this lock")
    known = {ctx.lock["lock_digest"], *(a["lock_digest"] for a in ctx.amendments)}
    stray = [e["seq"] for e in entries if e["lock_digest"] not in known]
    if stray:
        raise ChainBroken(f"journal entries {stray} name a lock digest that is neither the lock nor an amendment")
    _check_recorded_locks(ctx)
    note = (f"; {HEAD} was one entry behind (an append was interrupted between {JOURNAL} and its head; the head "
            f"is derived from the intact chain, and `lockstep prereg {ctx.study_dir}` or the next stage rewrites it)"
            if ctx.journal.head_behind else "")
    return f"journal chain and head intact ({len(entries)} entries, access level {ctx.journal.access_level}); lock bytes match the journal{note}"


def _check_recorded_locks(ctx: Context) -> None:
    """Each lock file's bytes match the digest its freeze (or amendment) entry recorded."""
    recorded = [(ctx.study_dir / LOCK, ctx.journal.entries[0]["outputs"].get(LOCK), 0)]
    for e in ctx.journal.stages("amend"):
        rel = f"{AMENDMENTS}/{e.get('details', {}).get('amendment')}/{AMENDMENT_LOCK}"
        recorded.append((ctx.study_dir / rel, e["outputs"].get(rel), e["seq"]))
    if recorded[0][1] is None:
        raise ChainBroken(f"the freeze's journal entry does not record the digest of {LOCK}", hint="restore the journal from git")
    for path, digest, seq in recorded:
        if digest is None:
            continue  # an amendment entry written before amendments recorded their lock's digest
        if not path.is_file() or sha256_bytes(path.read_bytes()) != digest:
            raise LockMismatch(f"{path} is not byte for byte the lock journal entry {seq} recorded (sha256 {digest[:12]})",
                               hint="restore the lock from git")


STEPS: list[Callable[[Context], str]] = [
    verify_lock_present,
    verify_lock_body,
    verify_files_match_lock,
    verify_sha256sums,
    verify_git_commit,
    verify_amendments,
    verify_journal,
]


@dataclass(frozen=True)
class StepResult:
    number: int
    name: str
    ok: bool
    message: str
    exit_code: int = 0


def make_context(study_dir: Path, *, staged: bool = False, allow_draft: bool = False,
                 allowed_signers: Path | None = None, tsa_ca: Path | None = None) -> Context:
    study_dir = study_dir_iv(study_dir)
    try:
        root = repo_root(study_dir)
    except NotInRepository:  # git's other refusals (dubious ownership) are reported, not skipped
        if staged:
            raise
        root = None
    return Context(study_dir=study_dir, staged=staged, allow_draft=allow_draft, root=root,
                   allowed_signers=allowed_signers, tsa_ca=tsa_ca)


def run_steps(ctx: Context, steps=None) -> list[StepResult]:
    """Run every step in order; stop after the first failure (later steps depend on earlier ones)."""
    results = []
    for number, step in enumerate(steps or STEPS, start=1):
        try:
            message = step(ctx)
        except LockstepError as exc:
            results.append(StepResult(number, step.__name__, False, exc.message + (f" (fix: {exc.hint})" if exc.hint else ""), exc.exit_code))
            break
        results.append(StepResult(number, step.__name__, True, message))
    return results


def exit_code_of(results: list[StepResult]) -> int:
    failed = [r for r in results if not r.ok]
    return failed[0].exit_code if failed else 0


def render(results: list[StepResult], as_json: bool = False, identity: dict | None = None) -> str:
    """The numbered steps and the verdict line; ``as_json``: one object, with ``identity`` (study id and lock
    digest, :func:`audit.chain.verify_target_identified`) at its top level."""
    if as_json:
        code = exit_code_of(results)
        return json.dumps({**(identity or {}), "ok": code == 0, "exit_code": code, "evidence": _evidence_line(results),
                           "steps": [r.__dict__ for r in results]}, indent=2, sort_keys=True)
    lines = [f"{r.number:2d}. {'ok  ' if r.ok else 'FAIL'} {r.name}: {r.message}" for r in results]
    code = exit_code_of(results)
    evidence = _evidence_line(results)
    lines.append(("verify: intact" + (f"; {evidence.split(' (')[0]}" if evidence else "")) if code == 0
                 else f"verify: {'NOT FROZEN' if code == 2 else 'ALTERED'} (exit {code})")
    return "\n".join(lines)


def _evidence_line(results: list[StepResult]) -> str | None:
    """The ordering-evidence sentence of the reviewer's ``verify_evidence`` step (:mod:`audit.chain`), if it ran."""
    return next((r.message for r in results if r.name == "verify_evidence" and r.ok), None)
