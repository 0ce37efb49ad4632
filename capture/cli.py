"""``lockstep capture STUDY_DIR``: the gate, then :func:`capture.run.run_capture` (any design), then one journal entry."""

from __future__ import annotations

from pathlib import Path

import click

from lockstep import artifacts
from lockstep.fsio import sha256_file, utc_now
from lockstep.lock import AMENDMENT_LOCK, LOCK, amendment_dirs

STAGE = "capture"
ACCESS_LEVEL = "nothing_run"


def _digests(folder: Path, root: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and artifacts.WORK not in p.parts)
    return {artifacts.repo_relative(p, root): sha256_file(p) for p in files}


def _plan_in_force(frozen) -> list[Path]:
    """The files of the plan in force (after amendments), the base lock and every amendment lock."""
    locks = [Path(frozen.root) / LOCK] + [d / AMENDMENT_LOCK for d in amendment_dirs(frozen.root)
                                          if (d / AMENDMENT_LOCK).is_file()]
    return sorted(set(Path(f) for f in frozen.files.values()) | set(locks))


@click.command("capture")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--run", "run_ids", multiple=True, help="Capture only this preregistered run (repeatable).")
@click.option("--allow-deviation", is_flag=True, help="Record runtime deviations in the manifest instead of refusing.")
@click.option("--shard", default=None, metavar="I/N",
              help="Capture only batches b with b % N == I; run once more without --shard to merge.")
@click.option("--runs-root", type=click.Path(path_type=Path), default=None,
              help="Where <study>/<run-id>/ folders go (default: <repo>/runs).")
@click.option("--model-path", type=click.Path(path_type=Path), default=None,
              help="A local folder with the weights, instead of the study's model source.")
@click.option("--dtype", default=None, help="Override /model/dtype (a deviation).")
@click.option("--batch-size", type=int, default=None, help="Override /runtime/batch_size (a deviation).")
@click.option("--device-map", default=None, help='Passed to from_pretrained, e.g. "auto" across GPUs.')
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@click.option("--slots-per-forward", type=int, default=None,
              help="Ablation studies: single-slot ablations stacked in one forward of the all-slot baseline.")
def capture(study_dir: Path, run_ids, allow_deviation, shard, runs_root, model_path, dtype, batch_size,
            device_map, no_progress, slots_per_forward) -> None:
    """Run the model on the frozen study's prompts and write texts and routing under runs/.

    Refuses unless the study's freeze verifies. Interrupted and started again, it resumes.
    """
    from lockstep.gate import require_frozen
    from lockstep.journal import append_entry

    from .designs import capture_design
    from .run import parse_shard, run_capture

    frozen = require_frozen(study_dir)
    started = utc_now()
    root = artifacts.runs_root_of(frozen, runs_root)
    wanted = list(run_ids) or [r["id"] for r in frozen.spec["runtime"]["runs"]]
    already = all((artifacts.run_dir(root, frozen.study_id, r) / artifacts.MANIFEST).is_file() for r in wanted)
    paths = run_capture(frozen, run_ids=list(run_ids) or None, allow_deviation=allow_deviation, runs_root=root,
                        shard=parse_shard(shard), progress=not no_progress, model_path=model_path,
                        overrides={"dtype": dtype, "batch_size": batch_size}, device_map=device_map,
                        options={"slots_per_forward": slots_per_forward})
    incomplete = [p for p in paths if not (p / artifacts.MANIFEST).is_file()]
    for p in paths:
        click.echo(f"{p}: {'complete' if p not in incomplete else 'shard done; run without --shard to merge'}")
    if incomplete or already:
        return
    repo = Path(frozen.repo_root)
    outputs: dict[str, str] = {}
    for p in paths:
        outputs.update(_digests(p, repo))
    inputs = {artifacts.repo_relative(f, repo): sha256_file(f) for f in _plan_in_force(frozen)}
    details = {"runs": [p.name for p in paths], "design": frozen.design,
               "runs_root": artifacts.repo_relative(root, repo), **capture_design(frozen.design).journal_details(paths)}
    append_entry(frozen.root, STAGE, inputs=inputs, outputs=outputs, access_level=ACCESS_LEVEL, lock_digest=frozen.lock_digest,
                 details=details, started_utc=started)
