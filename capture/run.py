"""Orchestration: one preregistered routing study, every preregistered run, resumable, shardable.

``run_capture`` takes a study whose freeze already verified (the CLI calls the gate first), loads the
model once, and for each run walks the fixed batches (prompts sorted by id, ``runtime.batch_size`` a
batch), skipping batches already on disk. With ``shard=(i, n)`` a process takes batches ``b`` with
``b % n == i`` and leaves the merge to a later call without ``shard``, which finds every batch done
and merges deterministically.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from lockstep.errors import CaptureError, UsageError
from lockstep.fsio import utc_now

from . import families, runtime, zones
from .decode import BatchDecode, Decoding, decode_batch
from .hooks import DISAGREE, NEAR_TIE, BatchRouting, RoutingRecorder
from .reduce import units_frame_columns
from .store import EVENTS_SCHEMA, TEXTS_SCHEMA, TOKENS_SCHEMA, UNITS_SCHEMA, RunStore

ZONE_NAMES = {zones.PREFILL: "prefill", zones.TRIMMED: "trimmed", zones.SPILL: "spill"}
FORMAT_VERSION = 1


@dataclass
class _Loaded:
    source: runtime.ModelSource
    model: Any
    tok: Any
    tokenizer_loader: str
    sites: list
    skipped: list
    trim: dict[int, str]
    stop: set[int]
    special: dict[int, str]
    facts: dict[str, Any]
    dtype: str


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


def _runs_iv(frozen, run_ids) -> list[dict[str, Any]]:
    runs = frozen.spec["runtime"]["runs"]
    if run_ids is None:
        return list(runs)
    known = [r["id"] for r in runs]
    unknown = sorted(set(run_ids) - set(known))
    if unknown:
        raise UsageError(f"unknown run(s) {unknown}; the study preregisters {known}")
    return [r for r in runs if r["id"] in set(run_ids)]


def _load(frozen, runs_root: Path, overrides: dict, model_path, device_map) -> _Loaded:
    spec = frozen.spec
    source = runtime.resolve_model(frozen, runs_root, model_path)
    tok, loader = runtime.load_tokenizer(source.path, [p["text"] for p in frozen.prompts])
    trim = runtime.trim_ids(tok, spec["runtime"]["trim_tokens"])
    dtype = overrides.get("dtype") or spec["model"].get("dtype", "float32")
    model = runtime.load_model(source, dtype=dtype, trust_remote_code=bool(spec["model"].get("trust_remote_code")),
                               device_map=device_map)
    sites, skipped = families.find_moe_sites(model)
    special = {int(i): t for t, i in zip(tok.all_special_tokens, tok.all_special_ids)}
    special.update(trim)
    facts = runtime.template_facts(tok, spec["runtime"])
    return _Loaded(source, model, tok, loader, sites, skipped, trim, runtime.stop_ids(model, tok), special, facts, dtype)


def _encode(frozen, ld: _Loaded, max_new_tokens: int) -> list[dict[str, Any]]:
    """Prompts sorted by id, each with its rendered text and token ids; refuses over-long prompts."""
    limit = getattr(ld.model.config, "max_position_embeddings", None)
    out, too_long = [], []
    for p in sorted(frozen.prompts, key=lambda p: p["id"]):
        rendered = runtime.render(ld.tok, p["text"], frozen.spec["runtime"])
        ids = ld.tok(rendered, add_special_tokens=False).input_ids
        if limit is not None and len(ids) + max_new_tokens > limit:
            too_long.append(f"{p['id']} ({len(ids)} + {max_new_tokens} > {limit})")
        out.append({**p, "rendered": rendered, "ids": ids})
    if too_long:
        raise CaptureError(
            f"prompt(s) longer than the model's context with the token budget: {', '.join(too_long)}",
            hint="shorten the prompts (an amendment) or lower /runtime/max_new_tokens",
        )
    return out


def _weight_tol(dtype: str) -> float:
    return 1e-5 if dtype == "float32" else 1e-2


def _batch_tables(batch: list[dict], dec: BatchDecode, br: BatchRouting, ld: _Loaded) -> tuple[dict, dict, dict]:
    """Turn one decoded, recorded batch into its tables, arrays and info."""
    n = len(batch)
    keep = np.flatnonzero(dec.zone >= 0)
    order = keep[np.lexsort((dec.position[keep], dec.row[keep]))]
    n_tokens = np.zeros((n, zones.N_DISJOINT), dtype=np.int64)
    np.add.at(n_tokens, (dec.row[order], dec.zone[order]), 1)
    ids = [p["id"] for p in batch]
    pid = np.asarray(ids, dtype=object)
    zone_name = np.asarray([ZONE_NAMES[z] for z in range(3)], dtype=object)
    texts = []
    for r, (p, row) in enumerate(zip(batch, dec.rows)):
        tp = zones.trim_position(row.generated, ld.trim)
        counts = zones.zone_counts(len(p["ids"]), row.generated, ld.trim)
        got = {"prefill": n_tokens[r, 0], "trimmed": n_tokens[r, 1], "spill": n_tokens[r, 2]}
        if any(counts[k] != got[k] for k in got):  # the hooks and the ids must agree: a bug otherwise
            raise RuntimeError(f"zone counts of {p['id']} disagree: ids {counts}, routing rows {got}")
        texts.append({
            "prompt_id": p["id"], "class": p.get("class"), "split": p.get("split"),
            "prompt_text": p["text"], "rendered_prompt": p["rendered"], "prompt_token_ids": list(p["ids"]),
            "generated_text": ld.tok.decode(row.generated, skip_special_tokens=False),
            "trimmed_text": ld.tok.decode(row.generated[:tp], skip_special_tokens=False),
            "token_ids": list(row.generated), "trim_position": tp, "finish_reason": row.finish_reason,
            "n_prefill": counts["prefill"], "n_generated": counts["generated"],
            "n_trimmed": counts["trimmed"], "n_spill": counts["spill"],
            "spill_tokens": zones.spill_tokens(row.generated, tp, ld.special),
        })
    layers = [s.layer for s in ld.sites]
    flags = br.flags[order]
    ev_tok, ev_site = np.nonzero(flags)
    ev = order[ev_tok]
    tables = {
        "texts": pa.Table.from_pylist(texts, schema=TEXTS_SCHEMA),
        "units": pa.Table.from_pydict(units_frame_columns(ids, layers, br.sel, br.wsum, n_tokens), schema=UNITS_SCHEMA),
        "events": pa.Table.from_pydict({
            "prompt_id": pid[dec.row[ev]], "position": dec.position[ev], "zone": zone_name[dec.zone[ev]],
            "layer": np.asarray(layers, dtype=np.int64)[ev_site],
            "near_tie": (flags[ev_tok, ev_site] & NEAR_TIE) > 0, "disagreement": (flags[ev_tok, ev_site] & DISAGREE) > 0,
            "kth_gap": br.gap[ev, ev_site],
        }, schema=EVENTS_SCHEMA),
        "tokens": pa.Table.from_pydict({
            "prompt_id": pid[dec.row[order]], "position": dec.position[order],
            "token_id": dec.token[order], "zone": zone_name[dec.zone[order]],
        }, schema=TOKENS_SCHEMA),
    }
    arrays = {"idx": br.idx[order], "weight": br.weights[order]}
    for layer, res in br.residual.items():
        arrays[f"residual_L{layer}"] = res[order]
    near = (flags & NEAR_TIE) > 0
    differ = (flags & DISAGREE) > 0
    info = {
        "prompts": {p["id"]: {"finish_reason": row.finish_reason} for p, row in zip(batch, dec.rows)},
        "near_ties": int(near.sum()), "disagreements": int(differ.sum()),
        "disagreements_outside_near_ties": int((differ & ~near).sum()),
        "routing_rows": int(len(order)), "tokens_generated": int(sum(len(r.generated) for r in dec.rows)),
    }
    return tables, arrays, info


class _Progress:
    """One stderr line: prompts done, tokens/s, ETA."""

    def __init__(self, label: str, total: int, done: int, enabled: bool):
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self.start, self.tokens, self.counted = time.monotonic(), 0, 0

    def update(self, prompts: int, tokens: int) -> None:
        self.done += prompts
        self.counted += prompts
        self.tokens += tokens
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.tokens / elapsed
        left = (self.total - self.done) * elapsed / max(self.counted, 1)
        width = 24
        bar = "#" * round(width * self.done / max(self.total, 1))
        eta = time.strftime("%H:%M:%S", time.gmtime(left))
        sys.stderr.write(f"\r{self.label} [{bar:<{width}}] {self.done}/{self.total} prompts  "
                         f"{rate:7.1f} tok/s  ETA {eta}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _run_config(frozen, run, ld: _Loaded, prompts, batch_size, max_new_tokens, deviations) -> dict[str, Any]:
    cap = frozen.spec.get("capture", {})
    return {
        "format_version": FORMAT_VERSION, "study_id": frozen.study_id, "run_id": run["id"],
        "lock_digest": frozen.lock_digest, "run": run, "model_config_sha256": runtime.config_sha256(ld.source.path),
        "model_revision": ld.source.revision, "dtype": ld.dtype, "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "trim_tokens": sorted(ld.trim.values()),
        "stop_ids": sorted(ld.stop), "near_tie_tolerance": float(cap.get("near_tie_tolerance", 1e-5)),
        "residual_layers": sorted(int(x) for x in cap.get("residual_layers", []) or []),
        "prompt_ids": [p["id"] for p in prompts], "deviations": deviations,
    }


def _manifest(frozen, run, ld: _Loaded, store: RunStore, config, n_batches, started, deviations) -> dict[str, Any]:
    from lockstep.provenance import git_info, package_versions

    infos = [store.batch_info(b) for b in range(n_batches)]
    prompts = {pid: v for info in infos for pid, v in info["prompts"].items()}
    devices = sorted({str(p.device) for p in ld.model.parameters()})
    return {
        "format_version": FORMAT_VERSION, "study_id": frozen.study_id, "run_id": run["id"],
        "lock_digest": frozen.lock_digest, "synthetic": bool(frozen.spec.get("synthetic", False)),
        "model": {
            "id": frozen.spec["model"].get("id"), "source": ld.source.kind, "path": str(ld.source.path),
            "revision": ld.source.revision, "config_sha256": config["model_config_sha256"],
            "class": type(ld.model).__name__, "dtype": ld.dtype, "devices": devices,
        },
        "tokenizer": {"loader": ld.tokenizer_loader, "template": ld.facts},
        "moe_layers": [{"layer": s.layer, "name": s.name, "family": s.spec.family, "n_experts": s.spec.n_experts,
                        "top_k": s.spec.top_k} for s in ld.sites],
        "skipped_layers": ld.skipped, "decoding": run, "batch_size": config["batch_size"],
        "max_new_tokens": config["max_new_tokens"], "trim_tokens": config["trim_tokens"],
        "near_tie_tolerance": config["near_tie_tolerance"], "residual_layers": config["residual_layers"],
        "deviations": deviations, "versions": package_versions(), "git": git_info(frozen.root),
        "started_utc": started, "finished_utc": utc_now(),
        "prompts": dict(sorted(prompts.items())),
        "counts": {
            "prompts": len(prompts), "batches": n_batches,
            "routing_rows": sum(i["routing_rows"] for i in infos),
            "tokens_generated": sum(i["tokens_generated"] for i in infos),
            "near_ties": sum(i["near_ties"] for i in infos),
            "disagreements": sum(i["disagreements"] for i in infos),
            "disagreements_outside_near_ties": sum(i["disagreements_outside_near_ties"] for i in infos),
        },
    }


def _capture_run(frozen, run, ld: _Loaded, prompts, store: RunStore, *, batch_size, max_new_tokens,
                 shard, progress, deviations) -> bool:
    """Capture one run's missing batches; merge when all are done and no shard was asked. True if complete."""
    config = _run_config(frozen, run, ld, prompts, batch_size, max_new_tokens, deviations)
    started = utc_now()
    store.bind(config)
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    mine = [b for b in range(len(batches)) if shard is None or b % shard[1] == shard[0]]
    done = store.done_batches()
    todo = [b for b in mine if b not in done]
    bar = _Progress(f"capture {frozen.study_id}/{run['id']}", sum(len(batches[b]) for b in mine),
                    sum(len(batches[b]) for b in mine if b in done), progress)
    decoding = Decoding.from_run(run)
    recorder = RoutingRecorder(ld.sites, tie_tol=config["near_tie_tolerance"], weight_tol=_weight_tol(ld.dtype),
                               residual_layers=config["residual_layers"])
    with recorder.hooked():
        for b in todo:
            batch = batches[b]
            recorder.start_batch(len(batch))
            dec = decode_batch(ld.model, [p["ids"] for p in batch], [p["id"] for p in batch], decoding=decoding,
                               max_new_tokens=max_new_tokens, stop_ids=ld.stop, trim_ids=set(ld.trim),
                               pad_id=_pad_id(ld), recorder=recorder)
            tables, arrays, info = _batch_tables(batch, dec, recorder.finish_batch(), ld)
            store.write_batch(b, tables, arrays, info)
            bar.update(len(batch), info["routing_rows"])
    if shard is not None or len(store.done_batches()) < len(batches):
        return False
    store.merge(len(batches), config["residual_layers"])
    store.finish(_manifest(frozen, run, ld, store, config, len(batches), started, deviations))
    return True


def _pad_id(ld: _Loaded) -> int:
    pad = ld.tok.pad_token_id
    if pad is None:
        pad = ld.tok.eos_token_id
    if pad is None:
        raise CaptureError("the tokenizer has neither a pad nor an eos token to left-pad batches with")
    return int(pad)


def run_capture(
    frozen,
    *,
    run_ids: list[str] | None = None,
    allow_deviation: bool = False,
    runs_root: Path | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    model_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    device_map: str | None = None,
) -> list[Path]:
    """Capture every (or the chosen) preregistered run of a frozen routing study (ablation studies go to
    :func:`capture.ablation.run_ablation_capture`).

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
        Capture only batches ``b % n == i`` and do not merge.
    model_path : Path, optional
        A local folder with the weights, instead of the study's source.
    overrides : dict, optional
        ``dtype``, ``batch_size``, ``max_new_tokens`` that differ from the study (deviations).
    device_map : str, optional
        Passed to ``from_pretrained`` (``"auto"`` for a model across GPUs).

    Returns
    -------
    list of Path
        The run folders; complete ones hold ``manifest.json``.
    """
    if frozen.design == "ablation":  # the ablation design has its own capture: capture/ablation.py
        from .ablation import run_ablation_capture

        return run_ablation_capture(frozen, run_ids=run_ids, allow_deviation=allow_deviation, runs_root=runs_root,
                                    shard=shard, progress=progress, model_path=model_path, overrides=overrides,
                                    device_map=device_map)
    if frozen.design != "routing":
        raise CaptureError(f"study {frozen.study_id!r} has design {frozen.design!r}; routing capture needs 'routing'")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    runs = _runs_iv(frozen, run_ids)
    root = Path(runs_root) if runs_root is not None else Path(frozen.repo_root) / "runs"
    rt = frozen.spec["runtime"]
    batch_size = int(overrides.get("batch_size", rt.get("batch_size", 1)))
    max_new_tokens = int(overrides.get("max_new_tokens", rt["max_new_tokens"]))
    ld = _load(frozen, root, overrides, model_path, device_map)
    found = runtime.deviations(frozen, ld.source, ld.facts, overrides)
    if found and not allow_deviation:
        lines = "; ".join(f"{d['field']}: preregistered {d['preregistered']!r}, actual {d['actual']!r}" for d in found)
        raise CaptureError(f"the runtime differs from the preregistration: {lines}",
                           hint="run as preregistered, amend the study, or pass --allow-deviation to record it")
    prompts = _encode(frozen, ld, max_new_tokens)
    paths = []
    for run in runs:
        store = RunStore(root / frozen.study_id / run["id"])
        paths.append(store.root)
        if store.is_complete():
            continue
        _capture_run(frozen, run, ld, prompts, store, batch_size=batch_size, max_new_tokens=max_new_tokens,
                     shard=shard, progress=progress, deviations=found)
    return paths
