"""``lockstep capture STUDY_DIR``: the gate, then :func:`capture.run.run_capture`, then one journal entry."""

from __future__ import annotations

from pathlib import Path

import click

from lockstep.fsio import sha256_file, utc_now

STAGE = "capture"
ACCESS_LEVEL = "nothing_run"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _digests(folder: Path, root: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "_work" not in p.parts)
    return {_rel(p, root): sha256_file(p) for p in files}


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

    from .run import parse_shard, run_capture

    frozen = require_frozen(study_dir)
    started = utc_now()
    root = Path(runs_root) if runs_root is not None else Path(frozen.repo_root) / "runs"
    wanted = list(run_ids) or [r["id"] for r in frozen.spec["runtime"]["runs"]]
    already = all((root / frozen.study_id / r / "manifest.json").is_file() for r in wanted)
    kwargs = dict(run_ids=list(run_ids) or None, allow_deviation=allow_deviation, runs_root=runs_root,
                  shard=parse_shard(shard), progress=not no_progress, model_path=model_path,
                  overrides={"dtype": dtype, "batch_size": batch_size}, device_map=device_map)
    if frozen.design == "ablation":  # capture/ablation.py; its exclusions go into the journal entry
        from .ablation import run_ablation_capture

        paths = run_ablation_capture(frozen, slots_per_forward=slots_per_forward, **kwargs)
    else:
        paths = run_capture(frozen, **kwargs)
    incomplete = [p for p in paths if not (p / "manifest.json").is_file()]
    for p in paths:
        click.echo(f"{p}: {'complete' if p not in incomplete else 'shard done; run without --shard to merge'}")
    if incomplete or already:
        return
    root = Path(frozen.repo_root)
    outputs: dict[str, str] = {}
    for p in paths:
        outputs.update(_digests(p, root))
    inputs = {_rel(f, root): sha256_file(f) for f in sorted(Path(frozen.root).glob("*")) if f.is_file()
              and f.name in ("study.yaml", "prompts.jsonl", "rubric.yaml", "thresholds.yaml", "prereg.lock.json")}
    details = {"runs": [p.name for p in paths]}
    if frozen.design == "ablation":
        import json

        details["design"] = "ablation"  # no labels follow: the audit reads these runs on their capture digests
        details["exclusions"] = {p.name: json.loads((p / "manifest.json").read_text())["exclusions"] for p in paths}
    append_entry(frozen.root, STAGE, inputs=inputs, outputs=outputs, access_level=ACCESS_LEVEL, lock_digest=frozen.lock_digest,
                 details=details, started_utc=started)
