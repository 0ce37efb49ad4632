"""The ``lockstep`` command: one click group; each command is a thin wrapper over a library function.

Errors a user can fix (:class:`~lockstep.errors.LockstepError`) become one message and their exit code;
no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .errors import LockstepError
from .journal import read_journal
from .witness import signs_new_entries


PIPELINE_ORDER = ("new", "validate", "prereg", "amend", "discover", "propose", "capture", "label", "audit", "review", "verify", "bundle", "sign",
                  "timestamp", "check-writeup", "cite", "demo", "journal")


class _Group(click.Group):
    """Lists the commands in the order a study goes through them; turns every LockstepError raised by any
    command into its message and exit code."""

    def list_commands(self, ctx):
        return sorted(self.commands, key=lambda name: (PIPELINE_ORDER.index(name) if name in PIPELINE_ORDER
                                                       else len(PIPELINE_ORDER), name))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LockstepError as exc:
            click.echo(exc.render(), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; completed work is kept and the next run resumes", err=True)
            ctx.exit(130)


STUDY_DIR = click.argument("study_dir", type=click.Path(path_type=Path))
DEMO = "lockstep.demo"  # click context meta key: the command runs inside `lockstep demo`


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockstep")
def cli() -> None:
    """Preregister, capture, audit and verify mechanistic-interpretability claims.

    A study goes through the commands in the order listed: new, validate, prereg, (amend), (discover, propose:
    a discovery study and the confirmatory study it proposes), capture, label,
    audit, review; a reviewer runs verify on the folder or its bundle. `lockstep COMMAND -h` shows an example.

    \b
    Exit codes (every command): 0 done; 1 refused: the study, its data or its chain has a problem (the
    message names the file, the field and the fix); 2 usage, not a study folder, or not frozen yet;
    3 capture: weights not found on this machine; 130 interrupted (completed work is kept).
    """


def scope_warnings(study) -> list[str]:
    """Claims whose words ask for more than their evidence type gives: the audit will call them unsupported
    whatever the data say (the scope lint of audit/verdicts.py), so a researcher hears it before freezing."""
    from audit.verdicts import scope_lint

    from .study import unused_thresholds

    out = []
    for hyp in study.spec["hypotheses"]:
        for flag in scope_lint(hyp["claim"], study.design_record, hyp.get("evidence_type")):
            out.append(f"{hyp['id']} will be unsupported at audit whatever the data: its claim {flag.message}")
    for name in unused_thresholds(study.spec, study.thresholds):
        out.append(f"threshold {name!r} in thresholds.yaml is used by no hypothesis (nor /inference/alpha_threshold): "
                   "no verdict reads it; list it in a hypothesis' thresholds or delete it")
    return out


@cli.command()
@click.argument("name")
@click.option("--design", type=click.Choice(["routing", "ablation"]), required=True, help="The study's design.")
@click.option("--under", type=click.Path(path_type=Path), default=Path("preregistrations"), show_default=True,
              help="The folder the study goes in.")
def new(name: str, design: str, under: Path) -> None:
    """Start a study: a commented template that validates, every field to write marked FILL.

    \b
    Example: lockstep new mystudy --design routing
    Exit codes: 0 written; 2 bad name, unknown design, or the folder exists.
    """
    from .scaffold import new_study

    folder = new_study(under, name, design)
    click.echo(f"{folder}: new {design} study; write every line marked FILL, then `lockstep validate {folder}`, "
               f"commit it, and `lockstep prereg {folder}`")


@cli.command()
@STUDY_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (study id and lock digest at the top).")
def validate(study_dir: Path, as_json: bool) -> None:
    """Check a study against the schemas and the cross-file rules; report every problem at once.

    Warnings (a claim its evidence cannot support, a threshold no hypothesis uses) do not fail it.

    \b
    Example: lockstep validate mystudy --json
    Exit codes: 0 valid; 1 invalid (every problem listed); 2 not a study folder.
    """
    import json

    from .errors import SchemaError
    from .lock import LOCK, effective_files, study_dir_iv
    from .study import PILOT_FILE, load_study

    folder = study_dir_iv(study_dir)
    lock = folder / LOCK
    digest = json.loads(lock.read_text()).get("lock_digest") if lock.is_file() else None
    try:
        study = load_study(folder, effective_files(folder))
    except SchemaError as exc:
        if not as_json:
            raise
        click.echo(json.dumps({"study_id": folder.name, "lock_digest": digest, "valid": False,
                               "problems": [{"file": p.file, "line": p.line, "pointer": p.pointer, "message": p.message}
                                            for p in exc.problems]}, indent=2))
        raise SystemExit(exc.exit_code) from None
    pilot = folder / PILOT_FILE
    checked = sum(1 for line in pilot.read_text(encoding="utf-8").splitlines() if line.strip()) if pilot.is_file() else 0
    warnings = scope_warnings(study)
    if as_json:
        click.echo(json.dumps({"study_id": study.study_id, "lock_digest": digest, "valid": True, "design": study.design,
                               "prompts": len(study.prompts), "hypotheses": len(study.spec["hypotheses"]),
                               "pilot_texts": checked, "warnings": warnings}, indent=2))
        return
    click.echo(f"{study_dir}: valid {study.design} study {study.study_id!r} "
               f"({len(study.prompts)} prompts, {len(study.spec['hypotheses'])} hypotheses"
               + (f"; rubric pilot: {checked} texts labelled as expected)" if checked else ")"))
    for line in warnings:
        click.echo(f"warning: {line}", err=True)


@cli.command()
@STUDY_DIR
@click.option("--allow-dirty", is_flag=True, help="Freeze files with uncommitted changes; the lock records it.")
@signs_new_entries
def prereg(study_dir: Path, allow_dirty: bool) -> None:
    """Validate and freeze a study: write prereg.lock.json, SHA256SUMS and the journal's first entry.

    \b
    Example: lockstep prereg preregistrations/mystudy
    Exit codes: 0 frozen (or already frozen and intact); 1 invalid, uncommitted files, or a lock that
    does not match; 2 not a study folder or not in a git repository.
    """
    from .freeze import freeze
    from .lock import effective_files, study_dir_iv
    from .study import load_study

    folder = study_dir_iv(study_dir)
    result = freeze(folder, allow_dirty=allow_dirty)
    if result.status != "already_frozen":
        for line in scope_warnings(load_study(folder, effective_files(folder))):
            click.echo(f"warning: {line}", err=True)
    if result.note:
        click.echo(f"{study_dir}: {result.note}")
    if result.status == "already_frozen":
        click.echo(f"{study_dir}: already frozen and intact (lock digest {result.lock_digest[:12]}); nothing changed")
        return
    click.echo(f"{study_dir}: frozen; lock digest {result.lock_digest}")
    if result.dirty:
        click.echo("warning: frozen from uncommitted files (--allow-dirty); the lock records it", err=True)
    if click.get_current_context().meta.get(DEMO):
        click.echo(f"{study_dir}: the demo's lock stays uncommitted (its capture records that as a deviation); do not commit it")
        return
    click.echo(f"commit the lock now: git add {study_dir} .gitattributes && git commit -m 'Freeze {Path(study_dir).name}'")


@cli.command()
@STUDY_DIR
@click.option("--replace", "replaces", multiple=True, metavar="FILE", help="Plan file the amendment replaces (repeatable).")
@click.option("--reason", default="", help="Why the plan changes.")
@click.option("--seen", type=click.Choice(["nothing_run", "texts_seen", "labels_frozen", "scores_seen"]),
              help="What had been seen when the amendment was made.")
@click.option("--freeze", "do_freeze", is_flag=True, help="Validate and freeze the open amendment.")
@click.option("--allow-dirty", is_flag=True, help="With --freeze: freeze uncommitted amendment files; recorded.")
@signs_new_entries
def amend(study_dir: Path, replaces: tuple[str, ...], reason: str, seen: str | None, do_freeze: bool, allow_dirty: bool) -> None:
    """Start an amendment to a frozen plan, or freeze the open one (--freeze).

    \b
    Example: lockstep amend mystudy --replace prompts.jsonl --reason 'typo in p07' --seen nothing_run
    Exit codes: 0 opened or frozen; 1 the amendment is invalid or the chain altered; 2 usage or not frozen.
    """
    from .errors import UsageError
    from .freeze import freeze_amendment, start_amendment

    if do_freeze:
        result = freeze_amendment(study_dir, allow_dirty=allow_dirty)
        click.echo(f"{study_dir}: amendment frozen; lock digest {result.lock_digest}")
        return
    if not replaces or seen is None:
        raise UsageError("an amendment needs --replace FILE and --seen LEVEL (and --reason)",
                         hint=f"lockstep amend {study_dir} --replace prompts.jsonl --reason 'why' --seen nothing_run")
    folder = start_amendment(study_dir, replaces=list(replaces), reason=reason, seen=seen)
    click.echo(f"opened {folder}: edit {', '.join(replaces)} there, commit, then run `lockstep amend {study_dir} --freeze`")


@cli.command()
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The new study folder to write (must not exist).")
@click.option("--study-id", default=None, help="The new study's id (default: the folder's name).")
@click.option("--top", default=3, show_default=True, help="How many best-ranked head slots become targets.")
@click.option("--probe", default="head_attribution", show_default=True, type=click.Choice(["head_attribution", "exact"]),
              help="The ranking to take them from: per-slot attribution, or the exact-patching check of the best slots.")
@click.option("--split", default="heldout", show_default=True, help="The split the confirmatory analyses read.")
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="Set a threshold of the draft (repeatable); unset ones stay empty.")
@click.option("--groups", default=None, metavar="A,B", help="Routing: the two prompt classes the draft compares (default: the study's two classes).")
def propose(study_dir: Path, out: Path, study_id, top: int, probe: str, split: str, sets, groups) -> None:
    """Draft a confirmatory study from the newest discovery run of a discovery study.

    The draft's targets are the slots discovery ranked best; its prompts are every pair outside the
    discovery split; its hypotheses test the slots' combined necessity, specificity and baseline rank on
    SPLIT; its thresholds stay empty unless --set (validation refuses an empty one). It records the
    discovery run it came from; `lockstep verify` checks that run preceded its freeze and read none of its pairs.

    \b
    Example: lockstep propose preregistrations/demo-discover --out preregistrations/demo-confirm --set min_mean_drop_logits=1.5
    Exit codes: 0 written; 1 refused (no discovery run, a record that differs from its journal digest); 2 usage or not frozen.
    """
    from .propose import propose as draft

    pair = tuple(g.strip() for g in groups.split(",")) if groups else None
    if pair is not None and len(pair) != 2:
        raise click.UsageError("--groups takes two classes, A,B")
    done = draft(study_dir, out, study_id=study_id, top=top, probe=probe, split=split, sets=tuple(sets), groups=pair)
    click.echo(f"{done['folder']}: draft study {done['study_id']!r} from discover entry {done['entry']}; targets "
               f"{', '.join(done['targets'])}")
    if done["missing"]:
        click.echo(f"set these thresholds in {done['folder']}/thresholds.yaml before freezing: {', '.join(done['missing'])}")
    click.echo(f"next: review it, then lockstep prereg {done['folder']}")


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@click.option("--staged", is_flag=True, help="Check the git index instead of the working tree (pre-commit hook).")
@click.option("--allowed-signers", type=click.Path(path_type=Path), default=None,
              help="Allowed-signers file with the keys you trust (default: <study>/witness/allowed_signers, else <repo>/.lockstep/allowed_signers).")
@click.option("--tsa-ca", type=click.Path(path_type=Path), default=None,
              help="CA certificate(s) of the time-stamping authority (default: <study>/witness/tsa-ca.pem, else <repo>/.lockstep/tsa-ca.pem).")
@click.option("--max-bundle-bytes", type=click.IntRange(min=1), default=None, metavar="N",
              help="A bundle may expand to at most N bytes of files (default 1 GiB).")
@click.option("--max-bundle-members", type=click.IntRange(min=1), default=None, metavar="N",
              help="A bundle may hold at most N files and folders (default 10,000).")
def verify(target: Path, as_json: bool, staged: bool, allowed_signers: Path | None, tsa_ca: Path | None,
           max_bundle_bytes: int | None, max_bundle_members: int | None) -> None:
    """Re-check every hash and the order of the stages (a study folder or a bundle), and say how strong
    the ordering evidence is: self-attested, signed or timestamped.

    \b
    Example: lockstep verify reports/mystudy/mystudy.bundle.tar.gz --json
    Exit codes: 0 intact; 1 altered or tampered; 2 not frozen or usage.
    """
    from audit.chain import verify_target_identified

    from .verify import exit_code_of, render

    from .bundle import DEFAULT_LIMITS, Limits

    limits = Limits(max_bundle_bytes or DEFAULT_LIMITS.max_bytes, max_bundle_members or DEFAULT_LIMITS.max_members)
    results, identity = verify_target_identified(target, staged=staged, allowed_signers=allowed_signers, tsa_ca=tsa_ca,
                                                 bundle_limits=limits)
    click.echo(render(results, as_json, identity))
    sys.exit(exit_code_of(results))


@cli.command()
@STUDY_DIR
@click.option("--out", type=click.Path(path_type=Path), help="Archive to write (default: reports/<study>/<study>.bundle.tar.gz).")
def bundle(study_dir: Path, out: Path | None) -> None:
    """Write one archive with plan, lock, journal, captured tables, labels, ledger and report.

    \b
    Example: lockstep bundle mystudy
    Exit codes: 0 written; 1 the study's chain does not verify; 2 not frozen, or a file a bundle refuses.
    """
    from .bundle import write_bundle

    path = write_bundle(study_dir, out)
    click.echo(f"wrote {path}; a reviewer runs `lockstep verify {path}`")


@cli.command()
@STUDY_DIR
@click.option("--sign-key", type=click.Path(path_type=Path), envvar="LOCKSTEP_SIGNING_KEY", required=True,
              help="SSH private key (or set LOCKSTEP_SIGNING_KEY).")
@click.option("--entry", "seqs", type=int, multiple=True, help="Journal entry to sign (repeatable; default: every stage entry, reviews excepted).")
def sign(study_dir: Path, sign_key: Path, seqs: tuple[int, ...]) -> None:
    """Sign journal entries with an SSH key (ssh-keygen -Y sign), into <study>/witness/signatures/.

    \b
    Example: lockstep sign mystudy --sign-key ~/.ssh/id_ed25519
    Exit codes: 0 signed; 1 the chain does not verify; 2 not frozen, or a key ssh-keygen refuses.
    """
    from .gate import require_frozen
    from .witness import sign_entries

    frozen = require_frozen(study_dir)
    for seq, path in sign_entries(frozen.root, sign_key, list(seqs) or None):
        click.echo(f"entry {seq} ({frozen.journal.entries[seq]['stage']}): {path}")


@cli.command()
@STUDY_DIR
@click.option("--entry", "seq", type=int, default=None, help="Stamp this journal entry's sha256 instead of the lock digest.")
@click.option("--query-out", type=click.Path(path_type=Path), help="Write the RFC 3161 TimeStampReq here (send it to a TSA yourself).")
@click.option("--token", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Attach this TimeStampResp (or token) a TSA returned.")
@click.option("--tsa-command", help="Shell command given the TimeStampReq on stdin; its stdout is the TimeStampResp.")
@click.option("--tsa-url", help="POST the TimeStampReq to this RFC 3161 TSA (needs the network).")
@click.option("--tsa-ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Check the token against this CA before attaching it.")
def timestamp(study_dir: Path, seq: int | None, query_out: Path | None, token: Path | None, tsa_command: str | None,
              tsa_url: str | None, tsa_ca: Path | None) -> None:
    """Timestamp the lock digest (or a journal entry) by an RFC 3161 authority, into <study>/witness/timestamps/.

    \b
    Example: lockstep timestamp mystudy --tsa-url https://freetsa.org/tsr --tsa-ca cacert.pem
    Exit codes: 0 timestamped (or query written); 1 the token does not verify or stamp another digest;
    2 usage (not exactly one way to get a token) or not frozen.
    """
    from .errors import UsageError
    from .fsio import atomic_write, sha256_bytes
    from .gate import require_frozen
    from .witness import attach_token, request_token, timestamp_query

    ways = [w for w in (query_out, token, tsa_command, tsa_url) if w]
    if len(ways) != 1:
        raise UsageError("give exactly one of --query-out, --token, --tsa-command, --tsa-url",
                         hint=f"e.g. lockstep timestamp {study_dir} --tsa-url https://freetsa.org/tsr --tsa-ca cacert.pem")
    frozen = require_frozen(study_dir)
    if seq is None:
        digest, what = frozen.base_lock_digest, "the lock digest"
    elif 0 <= seq < len(frozen.journal.lines):
        digest, what = sha256_bytes(frozen.journal.lines[seq]), f"journal entry {seq}"
    else:
        raise UsageError(f"`--entry` {seq} is not in the journal", hint=f"list the entries with `lockstep journal {study_dir}`")
    if query_out:
        atomic_write(query_out, timestamp_query(digest))
        click.echo(f"wrote {query_out}: a TimeStampReq for {what} ({digest}); attach the reply with `lockstep timestamp {study_dir} --token REPLY`")
        return
    reply = token.read_bytes() if token else request_token(timestamp_query(digest), tsa_command=tsa_command, tsa_url=tsa_url)
    path = attach_token(frozen.root, digest, reply, tsa_ca)
    click.echo(f"{what} timestamped: {path}; commit it")


@cli.command()
@STUDY_DIR
def journal(study_dir: Path) -> None:
    """Print the study's journal, one stage a line.

    \b
    Example: lockstep journal mystudy
    Exit codes: 0 printed; 1 the journal cannot be read; 2 not a study folder.
    """
    from .lock import study_dir_iv

    entries = read_journal(study_dir_iv(study_dir)).entries
    for e in entries:
        click.echo(f"{e['seq']:3d}  {e['finished_utc']}  {e['stage']:8s} {e['access_level']:14s} lock {e['lock_digest'][:12]}")
    if not entries:
        click.echo("no entries")


@cli.command()
@click.option("--study", "study_dir", default="preregistrations/demo", type=click.Path(path_type=Path), show_default=True)
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr (default: only on a terminal), as `lockstep capture --no-progress`.")
def demo(study_dir: Path, progress: bool | None) -> None:
    """Run the whole pipeline on the embedded synthetic demo study.

    The demo's lock is left uncommitted (its capture records that as a deviation): it is a tour, not a
    study of yours; start one with `lockstep new`.

    \b
    Example: lockstep demo --no-progress
    Exit codes: 0 done; otherwise the code of the stage that refused (prereg, capture, label, audit).
    """
    ctx = click.get_current_context()
    ctx.meta[DEMO] = True  # shared with the commands it invokes: prereg does not ask to commit the demo's lock
    ctx.invoke(prereg, study_dir=study_dir, allow_dirty=False)
    for stage in ("capture", "label", "audit"):
        click.echo(f"== {stage}")
        # the demo does not commit in your repository: an uncommitted lock is recorded as a deviation
        extra = {"progress": progress, "allow_uncommitted_lock": True} if stage == "capture" else {}
        ctx.invoke(cli.commands[stage], study_dir=study_dir, **extra)
    click.echo("demo done. To start a study of your own: lockstep new mystudy --design routing")


def _register_stage_commands() -> None:
    """Stage packages contribute their commands to the one group."""
    from audit.cli import audit, check_writeup, cite, label, review
    from capture.cli import capture, discover

    for command in (capture, discover, label, audit, review, check_writeup, cite):
        cli.add_command(command)


_register_stage_commands()


def main() -> None:
    cli(prog_name="lockstep")
