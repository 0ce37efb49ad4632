"""The reviewer's chain checks, run by ``lockstep verify`` after the freeze checks of :mod:`lockstep.verify`.

Each ``verify_*`` step raises a LockstepError or returns what it established. Paths in journal entries
are relative to the repository root (or to the folder a bundle was unpacked into).
"""

from __future__ import annotations

from pathlib import Path

from lockstep.bundle import BUNDLE_STEPS, DEFAULT_LIMITS, is_bundle, unpacked, verify_journal_paths
from lockstep.bundle import SUFFIX as BUNDLE_SUFFIX
from lockstep.bundle import Limits as BundleLimits
from lockstep import artifacts
from lockstep.designs import DESIGNS
from lockstep.errors import ChainBroken, LockMismatch
from lockstep.fsio import sha256_file
from lockstep.provenance import is_ancestor
from lockstep.verify import STEPS as FREEZE_STEPS
from lockstep.verify import Context, StepResult, make_context, run_steps

from .label import SHEET_KEY


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


def verify_discovery(ctx: Context) -> str:
    """A study proposed from a discovery run (``discovery_source``): that run is in the discovery study's intact
    journal, finished before this study's freeze, and read none of this study's pairs
    (:func:`lockstep.propose.check_discovery_source`). A discovery study: its discover entries read only
    its discovery split (the pair digests they journaled are all of that split)."""
    from lockstep.gate import require_frozen
    from lockstep.propose import check_discovery_source, pair_digest

    frozen = require_frozen(ctx.study_dir)
    freeze_entry = ctx.journal.entries[0]
    said = check_discovery_source(ctx.root, frozen.spec, frozen.prompts, frozen_at=freeze_entry["finished_utc"],
                                  base=_base(ctx))
    discovers = ctx.journal.stages("discover")
    if discovers:
        split = (frozen.spec.get("discovery") or {}).get("split", "discovery")
        allowed = {pair_digest(p) for p in frozen.prompts if p["split"] == split}
        for e in discovers:
            outside = set(e.get("details", {}).get("pair_digests", [])) - allowed
            if outside:
                raise ChainBroken(f"discover entry {e['seq']} read {len(outside)} pair(s) outside the discovery split {split!r}")
        said += f"; {len(discovers)} discovery run(s) here read only the {split!r} split"
    return said


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


def _folders_written(ctx: Context, entry: dict) -> list[str]:
    """The folders a stage entry writes as a whole, as the journal names paths (``runs/demo/sampled/``):
    a capture its runs' folders, an audit the study's report folder; a label entry none (one file)."""
    study_id, details = ctx.lock["study_id"], entry.get("details", {})
    if entry["stage"] == "capture":
        root = str(details.get("runs_root") or artifacts.RUNS).rstrip("/")
        return [f"{root}/{study_id}/{run}/" for run in details.get("runs", [])]
    if entry["stage"] == "audit":
        return [f"{artifacts.REPORTS}/{study_id}/"]
    if entry["stage"] == "discover" and details.get("folder"):
        return [details["folder"].rstrip("/") + "/"]
    return []


def artifacts_in_force(ctx: Context) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
    """What the journal says is on disk now: ``{path: (sha256, seq)}`` and ``{folder: seq}`` of the
    folders written as a whole. A newer capture of a run replaces everything earlier entries recorded in
    that run's folder (its old labels included); a newer audit replaces the earlier report; a label entry
    replaces one file."""
    files: dict[str, tuple[str, int]] = {}
    folders: dict[str, int] = {}
    for e in ctx.journal.entries:
        if e["stage"] not in ("capture", "label", "audit", "discover", "review"):  # a review redraws the report
            continue
        for folder in _folders_written(ctx, e):
            files = {p: v for p, v in files.items() if not p.startswith(folder)}
            folders[folder] = e["seq"]
        files.update({p: (d, e["seq"]) for p, d in e["outputs"].items() if not p.endswith(BUNDLE_SUFFIX)})
    return files, folders


def _tool_file(rel: str) -> str | None:
    """What ``rel`` is when it is a file lockstep writes beside the artifacts that is no stage's output
    (a capture's scratch folder, the blinded sheet's key, a bundle); None otherwise."""
    parts = rel.split("/")
    if artifacts.WORK in parts:
        return "/".join(parts[: parts.index(artifacts.WORK) + 1]) + "/ (an interrupted capture's scratch folder; rerun `lockstep capture` to clean it)"
    if parts[-1].endswith(".pending"):
        return f"{rel} (a review's redrawn report not yet moved into place; rerun `lockstep review` to finish it)"
    if parts[-1] == SHEET_KEY:
        return f"{rel} (the key of a blinded labelling sheet)"
    if rel.endswith(BUNDLE_SUFFIX):
        return f"{rel} (a bundle)"
    return None


def verify_artifacts(ctx: Context) -> str:
    """Every artifact in force (:func:`artifacts_in_force`) is present and matches its digest, and the
    folders the stages wrote hold nothing else.

    A missing artifact, a missing run or report folder, or an unrecorded file in one of those folders is
    an alteration: the journal is the inventory of what the stages wrote, and a file it does not list
    (a forged table, a second report) would be read as output. Files lockstep writes that are no
    stage's output (``_work/``, ``sheet_key.json``, bundles) are noted, not counted.
    """
    base = _base(ctx)
    files, folders = artifacts_in_force(ctx)
    folders.setdefault(f"{artifacts.REPORTS}/{ctx.lock['study_id']}/", -1)  # a report no audit recorded is extra
    problems, noted = [], []
    for folder, seq in sorted(folders.items()):
        inside = sorted(p for p in files if p.startswith(folder))
        path = artifacts.from_journal(base, folder)
        if inside and not path.is_dir():
            problems.append(f"{folder} is missing ({len(inside)} artifact(s) recorded there by journal entry {seq})")
            continue
        on_disk = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
        for rel in on_disk:
            if folder + rel in files:
                continue
            what = _tool_file(folder + rel)
            if what is None:
                problems.append(f"{folder}{rel} is not recorded by any stage (an extra file)")
            elif what not in noted:
                noted.append(what)
    checked = 0
    for rel, (digest, seq) in sorted(files.items()):
        path = artifacts.from_journal(base, rel)
        folder = next((f for f in folders if rel.startswith(f)), None)
        if folder is not None and not artifacts.from_journal(base, folder).is_dir():
            continue  # reported once, as its folder
        if not path.is_file():
            problems.append(f"{rel} is missing (recorded by journal entry {seq})")
        elif sha256_file(path) != digest:
            problems.append(f"{rel} differs from the digest journal entry {seq} recorded")
        else:
            checked += 1
    if problems:
        raise LockMismatch("artifacts differ from what the journal recorded:\n" + "\n".join(f"  - {p}" for p in problems)
                           + "".join(f"\n  beside them: {n}" for n in noted),
                           hint="restore them, or rerun the stage that wrote them; runs/ and reports/ are not in git, "
                                "so on another machine verify the study's bundle (`lockstep bundle`), which carries them")
    note = f"; beside them, not outputs: {'; '.join(noted)}" if noted else ""
    return f"{checked} artifact(s) present and matching their journal digests; no unrecorded files{note}"


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
                           hint=f"rerun `lockstep audit {'STUDY' if ctx.bundle else ctx.study_dir}`, or find what changed the tables")
    return "the ledger on disk equals the one recomputed from the captured tables"


def verify_approvals(ctx: Context) -> str:
    """A review approval counts only when signed by the reviewer it names (an allowed signer); a ledger
    on disk that shows claims approved needs such an approval of exactly its content."""
    from audit.ledger import LEDGER, content_digest, read_ledger
    from lockstep import witness

    allowed, _ = witness.trust_file(ctx.study_dir, ctx.root, witness.ALLOWED_SIGNERS, ctx.allowed_signers)
    found = witness.approvals(ctx.study_dir, ctx.journal, allowed)
    ledger_path = artifacts.reports_dir(_base(ctx), ctx.lock["study_id"]) / LEDGER
    if ledger_path.is_file():
        ledger = read_ledger(ledger_path)
        shown = any(item.get("review_status") == "approved" for item in ledger["claims"] + ledger["runs"])
        if shown and content_digest(ledger) not in {a.ledger_digest for a in found if a.valid}:
            raise LockMismatch(f"{ledger_path} shows claims as approved, but no signed approval by an allowed reviewer covers "
                               f"this ledger ({'; '.join(a.note for a in found) or 'no review in the journal'})",
                               hint="a reviewer approves with `lockstep review STUDY --approve --reviewer NAME --sign-key KEY`")
    return "; ".join(a.note for a in found) if found else "no review approvals"


def verify_evidence(ctx: Context) -> str:
    """How strong the ordering evidence is: self-attested, signed or timestamped (:mod:`lockstep.witness`)."""
    from lockstep import witness

    ctx.evidence = witness.assess(ctx.study_dir, ctx.journal, ctx.lock, ctx.amendments, ctx.root,
                                  allowed_signers=ctx.allowed_signers, tsa_ca=ctx.tsa_ca)
    return f"ordering evidence: {ctx.evidence.summary()}; trust: allowed signers {ctx.evidence.allowed_signers}, TSA CA {ctx.evidence.tsa_ca}"


CHAIN_STEPS = [verify_stage_order, verify_discovery, verify_capture_commit, verify_artifacts, verify_ledger, verify_approvals, verify_evidence]


def reviewer_steps(*, staged: bool = False, bundle: bool = False) -> list:
    """The reviewer's one numbered sequence: the freeze steps of :mod:`lockstep.verify`, then the chain
    steps above (``staged``: the freeze steps alone, on the git index, for a pre-commit hook). Before any
    step reads a path the journal names, :func:`lockstep.bundle.verify_journal_paths` confines them, and
    for a bundle (``bundle``) :data:`lockstep.bundle.BUNDLE_STEPS` check that it holds what they name."""
    if staged:
        return list(FREEZE_STEPS)
    return list(FREEZE_STEPS) + [verify_journal_paths] + (list(BUNDLE_STEPS) if bundle else []) + CHAIN_STEPS


def verify_target(target: Path, *, staged: bool = False, allowed_signers: Path | None = None,
                  tsa_ca: Path | None = None, bundle_limits: BundleLimits = DEFAULT_LIMITS) -> list[StepResult]:
    """Run every reviewer step on a study folder or a bundle and return each step's result
    (``allowed_signers``, ``tsa_ca``: the reviewer's trust files; the study's own by default;
    ``bundle_limits``: what a bundle may expand to, :class:`lockstep.bundle.Limits`)."""
    return verify_target_identified(target, staged=staged, allowed_signers=allowed_signers, tsa_ca=tsa_ca,
                                    bundle_limits=bundle_limits)[0]


def verify_target_identified(target: Path, *, staged: bool = False, allowed_signers: Path | None = None,
                             tsa_ca: Path | None = None, bundle_limits: BundleLimits = DEFAULT_LIMITS
                             ) -> tuple[list[StepResult], dict[str, str | None]]:
    """:func:`verify_target`, and what was verified: ``{"study_id", "lock_digest"}`` (the lock in force, after
    amendments) as the lock read says, the folder's name and None where no lock could be read."""
    bundle = is_bundle(target)
    with unpacked(target, bundle_limits) as study_dir:
        ctx = make_context(study_dir, staged=staged, allowed_signers=allowed_signers, tsa_ca=tsa_ca)
        if bundle:
            ctx.root = None  # a bundle is no git repository, wherever it was unpacked
            ctx.bundle = study_dir.parent.parent
        results = run_steps(ctx, reviewer_steps(staged=staged, bundle=bundle))
        lock = ctx.lock if isinstance(ctx.lock, dict) else {}
        digest = ctx.amendments[-1].get("lock_digest") if ctx.amendments else lock.get("lock_digest")
        return results, {"study_id": lock.get("study_id") or Path(study_dir).name, "lock_digest": digest}
