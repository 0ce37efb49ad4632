"""``lockstep label``, ``lockstep audit`` and ``lockstep review``: thin wrappers over the audit library."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lockstep.witness import signs_new_entries

STUDY_DIR = click.argument("study_dir", type=click.Path(path_type=Path))


def _run_ids(frozen, run_ids) -> list[str]:
    return list(run_ids) or [r["id"] for r in frozen.spec["runtime"]["runs"]]


@click.command()
@STUDY_DIR
@click.option("--run", "run_ids", multiple=True, help="Run id(s) to label (default: every preregistered run).")
@click.option("--export-sheet", type=click.Path(path_type=Path), help="Human rubric: write a blinded sheet here.")
@click.option("--import-sheet", type=click.Path(path_type=Path), help="Human rubric: read the filled sheet and freeze it.")
@signs_new_entries
def label(study_dir: Path, run_ids, export_sheet, import_sheet) -> None:
    """Apply the frozen rubric to generated texts only, and freeze the labels (before any score is read).

    \b
    Example: lockstep label mystudy --run sampled
    Exit codes: 0 labelled; 1 refused (capture not complete, labels already frozen differently); 2 usage or not frozen.
    """
    from lockstep.errors import UsageError
    from lockstep.gate import require_frozen

    from .data import run_dir_of
    from .label import export_sheet as export
    from .label import import_sheet as import_
    from .label import label_run

    frozen = require_frozen(study_dir)
    if not frozen.design_record.needs_labels:
        click.echo(f"{study_dir}: a study of design {frozen.design!r} has no generated text to label")
        return
    ids = _run_ids(frozen, run_ids)
    if (export_sheet or import_sheet) and len(ids) != 1:
        raise UsageError("a sheet belongs to one run", hint="name it with --run RUN")
    for run_id in ids:
        run_dir = run_dir_of(frozen, run_id)
        if export_sheet:
            click.echo(f"wrote blinded sheet {export(frozen, run_id, run_dir, export_sheet)} for run {run_id}")
            continue
        result = import_(frozen, run_id, run_dir, import_sheet) if import_sheet else label_run(frozen, run_id, run_dir)
        counts = ", ".join(f"{k}: {v}" for k, v in result.counts.items())
        click.echo(f"{result.path}: labels frozen ({counts})")
        if result.agreement is not None:  # rubric human_arm: the human sheet against the lexicon
            click.echo(f"  {result.agreement.sentence()}"
                       + ("" if result.agreement.passed else "; the labels are flagged, and the audit holds every claim "
                                                             "that reads them at not_established"))


@click.command()
@STUDY_DIR
@click.option("--json", "as_json", is_flag=True,
              help="Print study id, lock digest, claims and run statuses as JSON (the ledger and report are written as usual).")
@signs_new_entries
def audit(study_dir: Path, as_json: bool) -> None:
    """Compute the preregistered statistics and write the ledger, run cards, tables and report.

    \b
    Example: lockstep audit mystudy --json
    Exit codes: 0 ledger written (whatever the claims' statuses); 1 refused (a stage missing, labels not
    frozen, the chain altered); 2 usage or not frozen.
    """
    import json

    from lockstep.gate import require_frozen

    from .ledger import LEDGER, run_audit

    frozen = require_frozen(study_dir)
    out = run_audit(frozen)
    ledger = json.loads((out / LEDGER).read_text())
    if as_json:
        click.echo(json.dumps({
            "study_id": ledger["study_id"], "lock_digest": ledger["lock_digest"], "ledger": str(out / LEDGER),
            "report": str(out / "report.html"),
            "claims": [{"hypothesis": c["hypothesis"], "status": c["status"], "claim": c["claim"]} for c in ledger["claims"]],
            "runs": [{"run_id": r["run_id"], "status": r["status"], "warnings": len(r["warnings"]),
                      "review_status": r["review_status"]} for r in ledger["runs"]],
        }, indent=2))
        return
    for claim in ledger["claims"]:
        click.echo(f"  {claim['hypothesis']:4s} {claim['status']:16s} {claim['claim'][:90]}")
    for run in ledger["runs"]:
        click.echo(f"  run {run['run_id']}: {run['status']} ({len(run['warnings'])} warnings); claims {run['review_status']}")
    click.echo(f"report: {out / 'report.html'}")


@click.command()
@STUDY_DIR
@click.option("--approve", is_flag=True, help="Sign off the current ledger.")
@click.option("--reject", is_flag=True, help="Record that the current ledger is not approved (say why in --note).")
@click.option("--reviewer", required=True, help="Name of the reviewer, recorded in the journal.")
@click.option("--note", default="", help="What the reviewer checked (for --reject: why not).")
@signs_new_entries
def review(study_dir: Path, approve: bool, reject: bool, reviewer: str, note: str) -> None:
    """Record a named reviewer's approval, or rejection, of the current ledger in the journal.

    An approval counts only when signed (--sign-key) by the reviewer it names, listed in the allowed signers.
    A rejection is recorded and shown in the report; the claims stay pending_review.

    \b
    Example: lockstep review mystudy --approve --reviewer "A. Reviewer" --sign-key ~/.ssh/id_ed25519
    Exit codes: 0 recorded; 1 nothing to review, or a ledger the audit did not write; 2 usage (neither or
    both of --approve/--reject; --reject without --note) or not frozen.
    """
    from lockstep.errors import UsageError

    if approve == reject:
        raise UsageError("say --approve or --reject", hint="a review records one decision about the current ledger")
    if reject and not note.strip():
        raise UsageError("--reject needs --note saying why", hint="e.g. --note 'H2 rests on a baseline with a dropped unit'")
    import json

    from lockstep import artifacts
    from lockstep.errors import StageRefused
    from lockstep.fsio import atomic_write, sha256_bytes, sha256_file
    from lockstep.gate import require_frozen
    from lockstep.journal import append_entry

    from .ledger import LEDGER, content_digest, reports_dir

    frozen = require_frozen(study_dir)
    if finish_pending_report(frozen):
        click.echo(f"{frozen.study_id}: finished an interrupted review (its redrawn report moved into place)")
    ledger = reports_dir(frozen) / LEDGER
    if not ledger.exists():
        raise StageRefused(f"{ledger} does not exist: there is nothing to review", hint=f"run `lockstep audit {frozen.root}` first")
    from .data import check_audited

    check_audited(frozen, ledger)  # a reviewer approves the ledger the audit wrote, nothing else
    rel = artifacts.repo_relative(ledger, frozen.repo_root)
    decision = "approve" if approve else "reject"
    digest = content_digest(json.loads(ledger.read_text()))
    # the report shows the review without recomputing the audit: drawn with it first, journaled with its digest,
    # then moved into place (a review killed in between is finished by the next `lockstep review`, see finish_pending_report)
    page, report = redraw_with_review(frozen, digest, {"reviewer": reviewer, "decision": decision, "note": note})
    pending = report.with_name(report.name + PENDING)
    atomic_write(pending, page)
    append_entry(frozen.root, "review", inputs={rel: sha256_file(ledger)},
                 outputs={artifacts.repo_relative(report, frozen.repo_root): sha256_bytes(page)}, access_level="scores_seen",
                 lock_digest=frozen.lock_digest, details={"decision": decision, "reviewer": reviewer, "note": note,
                                                          "ledger_digest": digest})
    os.replace(pending, report)
    if reject:
        click.echo(f"{frozen.study_id}: rejection by {reviewer} recorded ({note}) and shown in {report}; the claims stay pending_review")
        return
    click.echo(f"{frozen.study_id}: approval by {reviewer} recorded and shown in {report}; signed by {reviewer} (an allowed "
               f"signer), it counts, and the next audit prints the ledger's claims as approved")


PENDING = ".pending"


def redraw_with_review(frozen, ledger_digest: str, review: dict) -> tuple[bytes, Path]:
    """The report page of the audited ledger with ``review`` added to its reviews (as the journal will hold it),
    drawn from the audit's outputs (no statistic is recomputed), and the report's path."""
    import dataclasses

    from lockstep.fsio import utc_now

    from .ledger import reports_dir
    from .report import REPORT_NAME, draw_report, study_context

    context = study_context(frozen, ledger_digest)
    added = {**review, "utc": utc_now(), "covers_this_ledger": True}
    context = dataclasses.replace(context, reviews=tuple(context.reviews) + (added,))
    out = reports_dir(frozen)
    return draw_report(out, context), out / REPORT_NAME


def finish_pending_report(frozen) -> bool:
    """A review killed between its journal entry and moving its redrawn report into place left
    ``report.html.pending`` whose digest the entry recorded: move it into place (True), or drop a stale one."""
    from lockstep.fsio import sha256_file

    from .ledger import reports_dir
    from .report import REPORT_NAME

    report = reports_dir(frozen) / REPORT_NAME
    pending = report.with_name(report.name + PENDING)
    if not pending.is_file():
        return False
    reviews = frozen.journal.stages("review")
    recorded = reviews[-1]["outputs"].get(artifacts_rel(frozen, report)) if reviews else None
    if recorded is not None and recorded == sha256_file(pending):
        os.replace(pending, report)
        return True
    pending.unlink()
    return False


def artifacts_rel(frozen, path: Path) -> str:
    from lockstep import artifacts

    return artifacts.repo_relative(path, frozen.repo_root)


@click.command("check-writeup")
@STUDY_DIR
@click.argument("writeup", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (study id and lock digest at the top).")
def check_writeup(study_dir: Path, writeup: Path, as_json: bool) -> None:
    """Trace every number of a Markdown write-up to the study's ledger.

    \b
    Example: lockstep check-writeup mystudy paper/results.md --json
    Exit codes: 0 every number traced; 1 a number untraceable or wrong; 2 not audited yet, usage, or not frozen.
    """
    import json

    from lockstep.gate import require_frozen

    from .ledger import LEDGER, read_ledger, reports_dir
    from .writeup import check_writeup as check

    frozen = require_frozen(study_dir)
    ledger = read_ledger(_audited(frozen, reports_dir(frozen) / LEDGER))
    report = check(writeup.read_text(encoding="utf-8", errors="replace"), ledger)
    if as_json:
        click.echo(json.dumps({"study_id": ledger["study_id"], "lock_digest": ledger["lock_digest"], **report.to_dict()}, indent=2))
    else:
        click.echo(f"{writeup} against {frozen.study_id}'s ledger: " + report.render())
    if not report.ok:
        raise SystemExit(1)


@click.command()
@STUDY_DIR
@click.option("--claim", "hypothesis", help="One hypothesis id (default: every claim).")
def cite(study_dir: Path, hypothesis: str | None) -> None:
    """Draft the citation sentence of each claim from the ledger (every number traceable to it).

    \b
    Example: lockstep cite mystudy --claim H1
    Exit codes: 0 printed; 2 no such claim, not audited yet, or not frozen.
    """
    from lockstep.errors import UsageError
    from lockstep.gate import require_frozen

    from .ledger import LEDGER, read_ledger, reports_dir
    from .writeup import cite as sentences

    frozen = require_frozen(study_dir)
    ledger = read_ledger(_audited(frozen, reports_dir(frozen) / LEDGER))
    out = sentences(ledger, hypothesis)
    if not out:
        raise UsageError(f"no claim {hypothesis!r} in the ledger", hint="name one of: " + ", ".join(c["hypothesis"] for c in ledger["claims"]))
    for line in out:
        click.echo(line)


def _audited(frozen, path: Path) -> Path:
    from lockstep.errors import UsageError

    if not path.exists():
        raise UsageError(f"{path} does not exist: the study has not been audited", hint=f"run `lockstep audit {frozen.root}` first")
    return path
