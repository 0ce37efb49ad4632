"""``lockstep capture STUDY_DIR``: the gate, then :func:`capture.run.run_capture` (any design), then one journal entry."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lockstep import artifacts
from lockstep.fsio import sha256_file, utc_now
from lockstep.lock import AMENDMENT_LOCK, LOCK, amendment_dirs
from lockstep.witness import require_committed_lock, signs_new_entries

STAGE = "capture"
ACCESS_LEVEL = "nothing_run"


def _plan_in_force(frozen) -> list[Path]:
    """The files of the plan in force (after amendments), the base lock and every amendment lock."""
    locks = [Path(frozen.root) / LOCK] + [d / AMENDMENT_LOCK for d in amendment_dirs(frozen.root)
                                          if (d / AMENDMENT_LOCK).is_file()]
    return sorted(set(Path(f) for f in frozen.files.values()) | set(locks))


@click.command("capture")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--run", "--run-id", "run_ids", multiple=True,
              help="Capture only this preregistered run (repeatable; under torchrun write --run-id: torchrun reads --run as its own --run-path).")
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
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: only when stderr is a terminal); --no-progress also silences "
                   "transformers' and huggingface_hub's bars.")
@click.option("--slots-per-forward", type=int, default=None,
              help="Ablation studies: single-slot ablations stacked in one forward of the all-slot baseline.")
@click.option("--allow-uncommitted-lock", is_flag=True,
              help="Capture although prereg.lock.json / SHA256SUMS are not committed; the journal and the ledger record it as a deviation.")
@signs_new_entries
def capture(study_dir: Path, run_ids, allow_deviation, shard, runs_root, model_path, dtype, batch_size,
            device_map, progress, slots_per_forward, allow_uncommitted_lock=False) -> None:
    """Run the model on the frozen study's prompts and write texts and routing under runs/.

    Refuses unless the study's freeze verifies. Interrupted and started again, it resumes. What
    transformers says while it loads and runs (kernel fallbacks) goes to each run manifest's
    runtime_notices, summed up in one line.

    \b
    Example: lockstep capture mystudy --run sampled --no-progress
    Exit codes: 0 complete (or the shard done); 1 refused (freeze altered, lock uncommitted, a runtime
    deviation); 2 usage or not frozen; 3 weights not found; 130 interrupted (the next run resumes).
    """
    from lockstep.errors import UsageError
    from lockstep.gate import require_frozen

    from .run import parse_shard
    from .runtime import select_runs

    frozen = require_frozen(study_dir)
    uncommitted = require_committed_lock(frozen.root, frozen.repo_root, allow=allow_uncommitted_lock)
    started = utc_now()
    root = artifacts.runs_root_of(frozen, runs_root)
    wanted = [r["id"] for r in select_runs(frozen, list(run_ids) or None)]
    shard = parse_shard(shard)
    repo = Path(frozen.repo_root)
    kwargs = dict(run_ids=run_ids, allow_deviation=allow_deviation, model_path=model_path, dtype=dtype, batch_size=batch_size,
                  progress=progress, slots_per_forward=slots_per_forward)
    world = distributed_world()
    if world is None:
        _capture_once(frozen, root, wanted, shard, repo, started, uncommitted, device_map=device_map, **kwargs)
        return
    if shard is not None:
        raise UsageError("`--shard` and a torchrun launch both split the prompts", hint="use one of them")
    import torch
    import torch.distributed as dist

    rank, size, local = world
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        if torch.cuda.is_available():  # one device per rank, unless the command names a map
            torch.cuda.set_device(local)
            device_map = device_map or f"cuda:{local}"
        if rank == 0 and model_path is None:  # a builtin model is built once, by rank 0, before any rank loads it
            from .notices import library_output
            from .runtime import resolve_model

            try:
                with library_output(progress):
                    resolve_model(frozen, root)
            finally:
                dist.barrier()
        else:
            dist.barrier()
        # each rank captures its deterministic share of the batches (b % size == rank), then rank 0 merges and
        # writes the one journal entry; a rank that dies leaves batches the next launch resumes
        _capture_once(frozen, root, wanted, (rank, size), repo, started, uncommitted, device_map=device_map, **kwargs)
        dist.barrier()
        if rank == 0:
            _capture_once(frozen, root, wanted, None, repo, started, uncommitted, device_map=device_map, **kwargs)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def distributed_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under torchrun / accelerate launch (WORLD_SIZE > 1), else None."""
    import os

    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    return rank, size, int(os.environ.get("LOCAL_RANK", str(rank)))


def _capture_once(frozen, root: Path, wanted: list[str], shard, repo: Path, started: str, uncommitted, *, run_ids,
                  allow_deviation, model_path, dtype, batch_size, device_map, progress, slots_per_forward) -> None:
    """One process's capture: its shard (or the whole run, merging), under the runs' locks, then the entry."""
    from lockstep.journal import read_journal

    from .notices import summary
    from .run import completion_outputs, journaled, run_capture
    from .runlock import runs_locked

    with runs_locked(root, frozen.study_id, wanted, shard=shard):  # until the journal entry is written
        journal = read_journal(frozen.root)  # as it is now, under the locks
        dirs = [artifacts.run_dir(root, frozen.study_id, r) for r in wanted]
        interrupted = {d for d in dirs if (d / artifacts.MANIFEST).is_file() and not journaled(journal, d, repo)}
        paths = run_capture(frozen, run_ids=list(run_ids) or None, allow_deviation=allow_deviation, runs_root=root,
                            shard=shard, progress=progress, model_path=model_path,
                            overrides={"dtype": dtype, "batch_size": batch_size}, device_map=device_map,
                            options={"slots_per_forward": slots_per_forward})
        incomplete = [p for p in paths if not (p / artifacts.MANIFEST).is_file()]
        # completion is the journal entry: a complete run without one gets it here (a shard leaves that to the merge)
        todo = [] if shard else [p for p in paths if p not in incomplete and not journaled(journal, p, repo)]
        outputs: dict[str, str] = {}
        for p in todo:
            outputs.update(completion_outputs(frozen, p, repo))
        for p in paths:
            click.echo(f"{p}: " + ("shard done; run without --shard to merge" if p in incomplete else
                                   "complete (an interrupted capture, finished: its files match its manifest; journal entry "
                                   "written)" if p in interrupted and p in todo else "complete"))
        notices = sorted({n for p in todo for n in json.loads((p / artifacts.MANIFEST).read_text()).get("runtime_notices", [])})
        if summary(notices):
            click.echo(summary(notices), err=True)
        if not todo:
            return
        _write_entry(frozen, root, todo, outputs, started, uncommitted)


def _write_entry(frozen, root: Path, todo: list[Path], outputs: dict[str, str], started: str, uncommitted) -> None:
    """The capture's journal entry for the runs in ``todo`` (the caller holds their locks)."""
    from lockstep.journal import append_entry

    from .designs import capture_design

    repo = Path(frozen.repo_root)
    inputs = {artifacts.repo_relative(f, repo): sha256_file(f) for f in _plan_in_force(frozen)}
    details = {"runs": [p.name for p in todo], "design": frozen.design,
               "runs_root": artifacts.repo_relative(root, repo), **capture_design(frozen.design).journal_details(todo)}
    if uncommitted:
        details["uncommitted_lock"] = uncommitted  # a deviation: no commit witnessed the freeze before this capture
    append_entry(frozen.root, STAGE, inputs=inputs, outputs=outputs, access_level=ACCESS_LEVEL, lock_digest=frozen.lock_digest,
                 details=details, started_utc=started)


def _ranked_by(record: dict) -> str:
    """What a discovery run's proposal order is by, in words."""
    if record.get("design") != "routing":
        return "slots by attribution"
    contrast = (record.get("settings") or {}).get("contrast")
    return f"units by pooled W, {contrast['a']} minus {contrast['b']}" if contrast else "units by pooled W"


@click.command("discover")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--runs-root", type=click.Path(path_type=Path), default=None,
              help="Where <study>/_discovery/ goes (default: <repo>/runs).")
@click.option("--model-path", type=click.Path(path_type=Path), default=None,
              help="A local folder with the weights, instead of the study's model source.")
@click.option("--device-map", default=None, help='Passed to from_pretrained, e.g. "auto" across GPUs.')
@click.option("--allow-deviation", is_flag=True, help="Record runtime deviations instead of refusing.")
@click.option("--allow-uncommitted-lock", is_flag=True,
              help="Run although the lock is not committed; the journal entry records it.")
@click.option("--progress/--no-progress", default=None, help="Library progress bars (default: only on a terminal).")
@signs_new_entries
def discover(study_dir: Path, runs_root, model_path, device_map, allow_deviation, allow_uncommitted_lock=False,
             progress=None) -> None:
    """Screen every head slot for the signal on the discovery split only (exploratory).

    Runs the frozen study's `discovery` probes (logit lens, layer and per-slot attribution patching, an
    exact-patching check of the best slots) on the pairs of its discovery split, writes
    runs/<study>/_discovery/, and journals the pairs it read (ids and content digests), so that a study
    proposed from it (`lockstep propose`) can be checked to confirm on pairs discovery never read.

    \b
    Example: lockstep discover preregistrations/demo-discover && lockstep propose preregistrations/demo-discover --out preregistrations/demo-confirm
    Exit codes: 0 done; 1 refused (freeze altered, lock uncommitted, the fence); 2 usage or not frozen; 3 weights not found.
    """
    from lockstep.gate import require_frozen
    from lockstep.journal import append_entry

    from .discover import RECORD, run_discovery

    frozen = require_frozen(study_dir)
    uncommitted = require_committed_lock(frozen.root, frozen.repo_root, allow=allow_uncommitted_lock)
    started = utc_now()
    root = artifacts.runs_root_of(frozen, runs_root)
    folder, record = run_discovery(frozen, runs_root=root, model_path=model_path, progress=progress,
                                   device_map=device_map, allow_deviation=allow_deviation)
    repo = Path(frozen.repo_root)
    outputs = {artifacts.repo_relative(folder / name, repo): digest for name, digest in record["outputs"].items()}
    outputs[artifacts.repo_relative(folder / RECORD, repo)] = sha256_file(folder / RECORD)
    inputs = {artifacts.repo_relative(f, repo): sha256_file(f) for f in _plan_in_force(frozen)}
    details = {"split": record["split"], "pairs_read": len(record["pairs_read"]), "probes": record["probes"],
               "pair_digests": sorted(set(record["pairs_read"].values())),  # the fence verify checks, from the journal alone
               "text_digests": dict(sorted(record["text_digests"].items())),
               "weights_sha256": record["model"].get("weights_sha256"),
               "runs_root": artifacts.repo_relative(root, repo), "folder": artifacts.repo_relative(folder, repo)}
    if uncommitted:
        details["uncommitted_lock"] = uncommitted
    # discovery reads the discovery split only: no confirmatory data are seen, so the access level does not rise
    entry = append_entry(frozen.root, "discover", inputs=inputs, outputs=outputs, access_level="nothing_run",
                         lock_digest=frozen.lock_digest, details=details, started_utc=started)
    best = [f"{r}" for r in record["ranked"][:3]] if "ranked" in record else []
    click.echo(f"{folder}: {len(record['pairs_read'])} discovery {'prompts scanned' if record.get('design') == 'routing' else 'pairs screened'}"
               + (f"; best {_ranked_by(record)}: {', '.join(best)}" if best else "")
               + (f"; exact check Spearman rho {record['exact_check']['spearman_rho']:.2f}"
                  if record.get("exact_check", {}).get("spearman_rho") is not None else "")
               + (f"; special tokens generated: {' '.join(f'{n} {t}' for t, n in record['spill']['special_tokens_generated'].items()) or 'none'}"
                  if record.get("spill") else ""))
    click.echo(f"journal entry {entry['seq']} (discover); next: lockstep propose {frozen.root} --out <new study folder>")
