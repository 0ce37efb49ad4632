"""The capture orchestrator: one loop for every design.

``run_capture`` takes a study whose freeze already verified (the CLI calls the gate first), asks the
design's capture module (:mod:`capture.designs`) to check the request and load the model once, refuses a
runtime that differs from the preregistration (or records it, with ``allow_deviation``), and for each
preregistered run skips it when complete, else captures it. Where a run goes is
:func:`lockstep.artifacts.run_dir`.

A run's data are complete when its ``manifest.json`` is written; the run is complete when the study's
journal holds a capture entry recording that manifest (:func:`journaled`). A capture killed between the
two is finished by the next one (:func:`completion_outputs`): the files are checked against the digests
the manifest recorded, ``_work/`` is removed, and the entry is written. The caller holds the runs' locks
(:mod:`capture.runlock`) from before it captures until that entry is written; the CLI does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lockstep import artifacts, variants
from lockstep.designs import design_of
from lockstep.errors import CaptureError, UsageError
from lockstep.fsio import sha256_file
from lockstep.models import folder_identity

from . import runtime
from .designs import capture_design
from .notices import library_output
from .store import RunStore


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"`--shard` must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"`--shard` {text!r} needs 0 <= i < n")
    return i, n


def _options_iv(module, design: str, options: dict[str, Any] | None, shard, shardable: bool) -> dict[str, Any]:
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(module.OPTIONS))
    if unknown:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in unknown)
        raise UsageError(f"{flags} does not apply to design {design!r}", hint=f"drop {flags}")
    if shard is not None and not shardable:
        raise UsageError(f"`--shard` does not apply to design {design!r}: it is captured in one process",
                         hint="run `lockstep capture` without --shard")
    return options


def run_capture(
    frozen,
    *,
    run_ids: list[str] | None = None,
    allow_deviation: bool = False,
    runs_root: Path | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool | None = None,
    model_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    device_map: str | None = None,
    options: dict[str, Any] | None = None,
) -> list[Path]:
    """Capture every (or the chosen) preregistered run of a frozen study, whatever its design.

    Parameters
    ----------
    frozen : FrozenStudy
        From :func:`lockstep.gate.require_frozen` (the caller runs the gate).
    run_ids : list of str, optional
        Preregistered run ids to capture; all when None.
    allow_deviation : bool
        Record runtime deviations in the manifest instead of refusing.
    runs_root : Path, optional
        Where ``<study>/<run-id>/`` folders go; ``<repo>/runs`` by default.
    shard : (i, n), optional
        Capture only batches ``b % n == i`` and do not merge (designs whose record says ``shardable``).
    progress : bool, optional
        Draw progress bars on stderr; None (default): only when stderr is a terminal. Off also silences
        transformers' and huggingface_hub's own bars. Their notices are never printed: each run manifest
        records them as ``runtime_notices``.
    model_path : Path, optional
        A local folder with the weights, instead of the study's source.
    overrides : dict, optional
        ``dtype``, ``batch_size``, ``max_new_tokens`` that differ from the study (deviations).
    device_map : str, optional
        Passed to ``from_pretrained`` (``"auto"`` for a model across GPUs).
    options : dict, optional
        Design-specific options (``slots_per_forward`` for the ablation design).

    Returns
    -------
    list of Path
        The run folders; complete ones hold ``manifest.json``.
    """
    record = design_of(frozen.design)
    module = capture_design(record.name)
    options = _options_iv(module, record.name, options, shard, record.shardable)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    runs = runtime.select_runs(frozen, run_ids)
    module.check_request(frozen, runs, shard=shard, options=options)
    root = artifacts.runs_root_of(frozen, runs_root)
    stores = [RunStore(artifacts.run_dir(root, frozen.study_id, run["id"])) for run in runs]
    if all(store.is_complete() for store in stores):
        return [store.root for store in stores]  # nothing to capture: do not load the model
    with library_output(progress) as notices:  # the libraries' notices go to the manifest, not among lockstep's lines
        for name, group in runtime.variant_groups(frozen, runs, stores):
            # each model variant is loaded for its own runs; the study as that variant sees it (its model block
            # and runtime surface) is what every later step reads, so each manifest records the variant it ran
            view = runtime.variant_view(frozen, name)
            source = runtime.resolve_model(view, root, model_path if name == variants.BASE else None)  # builtin: built here
            identity = folder_identity(source.path)  # hashed (once per file, cached) before the slow load
            first = runtime.first_capture_identity(root, frozen.study_id, variant=name)
            found = runtime.source_deviations(view, source, identity, first)
            runtime.refuse_deviations(found, allow_deviation)
            setup = module.setup(view, source, identity, overrides, runtime.resolve_device_map(view, device_map), options)
            setup.ld.notices = notices  # the same list, still filling: each manifest records those seen by its end
            found = found + runtime.deviations(view, setup.ld.facts, overrides)
            runtime.refuse_deviations(found, allow_deviation)
            work = module.prepare(view, setup, overrides)
            for run, store in group:
                module.capture_run(view, run, setup, work, store, shard=shard, progress=progress, deviations=found)
    return [store.root for store in stores]


def journaled(journal, run_dir: Path, repo_root: Path) -> bool:
    """True when the newest capture entry of the run records its manifest as it is now (the run is complete)."""
    manifest = Path(run_dir) / artifacts.MANIFEST
    captures = journal.captures_of(Path(run_dir).name)
    return bool(captures) and manifest.is_file() and \
        captures[-1]["outputs"].get(artifacts.repo_relative(manifest, repo_root)) == sha256_file(manifest)


def completion_outputs(frozen, run_dir: Path, repo_root: Path) -> dict[str, str]:
    """The digests a capture entry records for the complete run folder ``run_dir`` (paths as the journal names
    them), once they are checked against the digests its manifest recorded; removes a ``_work/`` left behind.

    CaptureError, saying what to do, when the folder is not the one its manifest describes: a file changed,
    missing or added since, a manifest of another lock, or one that records no digests.
    """
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    manifest_path = run_dir / artifacts.MANIFEST
    start_over = f"delete {run_dir} and run `lockstep capture {frozen.root} --run {run_dir.name}` again"
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CaptureError(f"{manifest_path} cannot be read as JSON ({exc})", hint=start_over) from None
    if manifest.get("lock_digest") != frozen.lock_digest:
        raise CaptureError(f"{manifest_path} was captured under lock {str(manifest.get('lock_digest'))[:12]}, but the lock in "
                           f"force is {frozen.lock_digest[:12]}, and no journal entry records that capture", hint=start_over)
    recorded = manifest.get("outputs")
    if not isinstance(recorded, dict):
        raise CaptureError(f"{manifest_path} is complete but no journal entry records it, and it records no digests of "
                           "the run's files to check them by (a manifest of an older lockstep)", hint=start_over)
    now = store.output_digests()
    differing = sorted(set(now) ^ set(recorded) | {k for k in set(now) & set(recorded) if now[k] != recorded[k]})
    if differing:
        raise CaptureError(f"{run_dir} is complete but no journal entry records it, and it no longer holds the files its "
                           f"manifest recorded ({', '.join(differing)} missing, added or changed)", hint=start_over)
    shutil.rmtree(store.work, ignore_errors=True)
    outputs = {artifacts.repo_relative(run_dir / name, repo_root): digest for name, digest in now.items()}
    return outputs | {artifacts.repo_relative(manifest_path, repo_root): sha256_file(manifest_path)}
