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


class _Group(click.Group):
    """Turns every LockstepError raised by any command into its message and exit code."""

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lockstep")
def cli() -> None:
    """Preregister, capture, audit and verify mechanistic-interpretability claims.

    make prereg -> make capture -> make audit; a reviewer runs `lockstep verify DIR`.
    """


@cli.command()
@STUDY_DIR
def validate(study_dir: Path) -> None:
    """Check a study against the schemas and the cross-file rules; report every problem at once."""
    from .lock import effective_files, study_dir_iv
    from .study import load_study

    folder = study_dir_iv(study_dir)
    study = load_study(folder, effective_files(folder))
    click.echo(f"{study_dir}: valid {study.design} study {study.study_id!r} "
               f"({len(study.prompts)} prompts, {len(study.spec['hypotheses'])} hypotheses)")


@cli.command()
@STUDY_DIR
@click.option("--allow-dirty", is_flag=True, help="Freeze files with uncommitted changes; the lock records it.")
def prereg(study_dir: Path, allow_dirty: bool) -> None:
    """Validate and freeze a study: write prereg.lock.json, SHA256SUMS and the journal's first entry."""
    from .freeze import freeze

    result = freeze(study_dir, allow_dirty=allow_dirty)
    if result.status == "already_frozen":
        click.echo(f"{study_dir}: already frozen and intact (lock digest {result.lock_digest[:12]}); nothing changed")
        return
    click.echo(f"{study_dir}: frozen; lock digest {result.lock_digest}")
    if result.dirty:
        click.echo("warning: frozen from uncommitted files (--allow-dirty); the lock records it", err=True)
    click.echo(f"commit the lock now: git add {study_dir} .gitattributes && git commit -m 'Freeze {Path(study_dir).name}'")


@cli.command()
@STUDY_DIR
@click.option("--replace", "replaces", multiple=True, metavar="FILE", help="Plan file the amendment replaces (repeatable).")
@click.option("--reason", default="", help="Why the plan changes.")
@click.option("--seen", type=click.Choice(["nothing_run", "texts_seen", "labels_frozen", "scores_seen"]),
              help="What had been seen when the amendment was made.")
@click.option("--freeze", "do_freeze", is_flag=True, help="Validate and freeze the open amendment.")
@click.option("--allow-dirty", is_flag=True, help="With --freeze: freeze uncommitted amendment files; recorded.")
def amend(study_dir: Path, replaces: tuple[str, ...], reason: str, seen: str | None, do_freeze: bool, allow_dirty: bool) -> None:
    """Start an amendment to a frozen plan, or freeze the open one (--freeze)."""
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
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@click.option("--staged", is_flag=True, help="Check the git index instead of the working tree (pre-commit hook).")
def verify(target: Path, as_json: bool, staged: bool) -> None:
    """Re-check every hash and the order of the stages (a study folder or a bundle).

    Exit 0 intact, 1 altered or tampered, 2 not frozen or usage.
    """
    from audit.chain import verify_target

    from .verify import exit_code_of, render

    results = verify_target(target, staged=staged)
    click.echo(render(results, as_json))
    sys.exit(exit_code_of(results))


@cli.command()
@STUDY_DIR
@click.option("--out", type=click.Path(path_type=Path), help="Archive to write (default: reports/<study>/<study>.bundle.tar.gz).")
def bundle(study_dir: Path, out: Path | None) -> None:
    """Write one archive with plan, lock, journal, captured tables, labels, ledger and report."""
    from .bundle import write_bundle

    path = write_bundle(study_dir, out)
    click.echo(f"wrote {path}; a reviewer runs `lockstep verify {path}`")


@cli.command()
@STUDY_DIR
def journal(study_dir: Path) -> None:
    """Print the study's journal, one stage a line."""
    from .lock import study_dir_iv

    entries = read_journal(study_dir_iv(study_dir)).entries
    for e in entries:
        click.echo(f"{e['seq']:3d}  {e['finished_utc']}  {e['stage']:8s} {e['access_level']:14s} lock {e['lock_digest'][:12]}")
    if not entries:
        click.echo("no entries")


@cli.command()
@click.option("--study", "study_dir", default="preregistrations/demo", type=click.Path(path_type=Path), show_default=True)
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr (as `lockstep capture --no-progress`).")
def demo(study_dir: Path, no_progress: bool) -> None:
    """Run the whole pipeline on the embedded synthetic demo study."""
    ctx = click.get_current_context()
    ctx.invoke(prereg, study_dir=study_dir, allow_dirty=False)
    for stage in ("capture", "label", "audit"):
        click.echo(f"== {stage}")
        extra = {"no_progress": no_progress} if stage == "capture" else {}
        ctx.invoke(cli.commands[stage], study_dir=study_dir, **extra)


def _register_stage_commands() -> None:
    """Stage packages contribute their commands to the one group."""
    from audit.cli import audit, label, review
    from capture.cli import capture

    for command in (capture, label, audit, review):
        cli.add_command(command)


_register_stage_commands()


def main() -> None:
    cli(prog_name="lockstep")
