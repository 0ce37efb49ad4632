"""The reviewer's chain checks, run by ``lockstep verify`` after the freeze checks of :mod:`lockstep.verify`.

Each ``verify_*`` step raises a LockstepError or returns what it established. Paths in journal entries
are relative to the repository root (or to the folder a bundle was unpacked into).
"""

from __future__ import annotations

from pathlib import Path

from lockstep.bundle import unpacked
from lockstep import artifacts
from lockstep.designs import DESIGNS
from lockstep.errors import ChainBroken, LockMismatch
from lockstep.fsio import sha256_file
from lockstep.provenance import is_ancestor
from lockstep.verify import STEPS as FREEZE_STEPS
from lockstep.verify import Context, StepResult, make_context, run_steps


def _base(ctx: Context) -> Path:
    return ctx.root if ctx.root is not None else ctx.study_dir.parent.parent


def verify_stage_order(ctx: Context) -> str:
    """Capture after the freeze; each run's labels frozen after its capture; every audit after those labels."""
    captured: dict[str, int] = {}
    labelled: dict[str, int] = {}
    unlabelled_design: set[str] = set()  # runs of a design that labels nothing: read on their capture digests
    post_hoc = []
    for e in ctx.journal.entries:
        details = e.get("details", {})
        if e["stage"] == "capture":
            for run in details.get("runs", []):
                captured[run] = e["seq"]
                record = DESIGNS.get(details.get("design", "routing"))
                if record is not None and not record.needs_labels:
                    unlabelled_design.add(run)
        elif e["stage"] == "label":
            run = details.get("run")
            if run not in captured:
                raise ChainBroken(f"journal entry {e['seq']} froze labels of run {run!r} before any capture of it")
            labelled[run] = e["seq"]
        elif e["stage"] == "audit":
            runs = details.get("runs", {})
            unlabelled = [r for r in runs if r not in labelled and r not in unlabelled_design]
            if unlabelled:
                raise ChainBroken(f"journal entry {e['seq']} read scores of run(s) {unlabelled} whose labels were not frozen first")
        elif e["stage"] == "amend" and details.get("post_hoc"):
            post_hoc.append(details.get("amendment"))
    note = f"capture after freeze; labels before scores for {len(labelled)} run(s)"
    return note + (f"; POST-HOC amendment(s) {post_hoc} (made after scores were seen; the ledger shows them)" if post_hoc else "")


def verify_capture_commit(ctx: Context) -> str:
    lock_commit = ctx.lock["git"]["commit"]
    captures = [e for e in ctx.journal.entries if e["stage"] == "capture"]
    if not captures:
        return "no capture yet"
    if ctx.root is None or lock_commit is None:
        return "no git repository here; ancestry not checked"
    for e in captures:
        commit = e["git"]["commit"]
        if commit is None or not is_ancestor(ctx.root, lock_commit, commit):
            raise ChainBroken(f"capture (journal entry {e['seq']}) ran at commit {str(commit)[:12]}, which does not descend from the lock's commit {lock_commit[:12]}")
    return f"{len(captures)} capture(s) ran on commits descending from the lock's"


def verify_artifacts(ctx: Context) -> str:
    """The newest journal digest of every artifact matches the file, where the file is present."""
    latest: dict[str, str] = {}
    for e in ctx.journal.entries:
        if e["stage"] in ("capture", "label", "audit"):
            latest.update(e["outputs"])
    base = _base(ctx)
    checked, absent, wrong = 0, [], []
    for rel, digest in sorted(latest.items()):
        path = artifacts.from_journal(base, rel)
        if not path.is_file():
            absent.append(rel)
            continue
        checked += 1
        if sha256_file(path) != digest:
            wrong.append(rel)
    if wrong:
        raise LockMismatch("artifacts differ from the digests the journal recorded:\n" + "\n".join(f"  - {w}" for w in wrong),
                           hint="an artifact changed after its stage ran; restore it or rerun the stage")
    where = f"; {len(absent)} not present here (runs/ is not in git: verify a bundle for those)" if absent else ""
    return f"{checked} artifact(s) match their journal digests{where}"


def verify_ledger(ctx: Context) -> str:
    """Recompute the ledger from the captured tables and compare it with the one on disk."""
    from audit.ledger import LEDGER, comparable, compute, read_ledger
    from lockstep.gate import require_frozen

    base = _base(ctx)
    study_id = ctx.lock["study_id"]
    ledger_path = artifacts.reports_dir(base, study_id) / LEDGER
    if not ledger_path.exists():
        return "no ledger yet"
    frozen = require_frozen(ctx.study_dir)
    if frozen.repo_root is None:
        frozen = type(frozen)(**{**frozen.__dict__, "repo_root": base})
    tables = frozen.design_record.run_tables
    if not all((artifacts.study_run_dir(frozen, r["id"], base) / t).exists() for r in frozen.spec["runtime"]["runs"] for t in tables):
        return "captured tables not present here; ledger not recomputed (verify a bundle)"
    recomputed, _ = compute(frozen)
    on_disk = read_ledger(ledger_path)
    if comparable(recomputed) != comparable(on_disk):
        differing = [c["hypothesis"] for c, d in zip(recomputed["claims"], on_disk["claims"]) if c["status"] != d.get("status")]
        raise LockMismatch(f"{ledger_path} differs from the ledger recomputed from the captured tables"
                           + (f" (claims {differing} change status)" if differing else ""),
                           hint=f"rerun `make audit STUDY={study_id}`, or find what changed the tables")
    return "the ledger on disk equals the one recomputed from the captured tables"


CHAIN_STEPS = [verify_stage_order, verify_capture_commit, verify_artifacts, verify_ledger]


def reviewer_steps(*, staged: bool = False) -> list:
    """The reviewer's one numbered sequence: the freeze steps of :mod:`lockstep.verify`, then the chain
    steps above (``staged``: the freeze steps alone, on the git index, for a pre-commit hook)."""
    return list(FREEZE_STEPS) + ([] if staged else CHAIN_STEPS)


def verify_target(target: Path, *, staged: bool = False) -> list[StepResult]:
    """Run every reviewer step on a study folder or a bundle and return each step's result."""
    with unpacked(target) as study_dir:
        return run_steps(make_context(study_dir, staged=staged), reviewer_steps(staged=staged))
