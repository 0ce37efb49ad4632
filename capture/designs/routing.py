"""Capture for the routing design: generate under the frozen runtime, record routing on every MoE layer.

For each preregistered run (``decoding`` greedy or sample), the prompts sorted by id are cut into fixed
batches of ``runtime.batch_size``; each batch is decoded by :func:`capture.decode.decode_batch` with the
:class:`capture.hooks.RoutingRecorder` on every MoE layer, reduced to W/S/Q per prompt × unit × zone on
the device, and written atomically as one batch folder; batches already on disk are skipped (resume).
With ``shard=(i, n)`` a process takes batches ``b % n == i`` and leaves the merge to a later call
without ``shard``, which finds every batch done and merges deterministically.

Layout of ``runs/<study>/<run-id>/`` once complete: ``manifest.json`` (written last), ``texts.parquet``,
``units.parquet``, ``events.parquet``, ``tokens.parquet``, per-token top-k arrays, optional residuals.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lockstep.errors import CaptureError
from lockstep.fsio import utc_now

from .. import families, runtime, zones
from ..decode import BatchDecode, Decoding, decode_batch, teacher_force_batch
from ..hooks import DISAGREE, NEAR_TIE, BatchRouting, RoutingRecorder
from ..reduce import units_frame_columns
from ..store import EVENTS_SCHEMA, TEXTS_SCHEMA, TOKENS_SCHEMA, UNITS_SCHEMA, RunStore

ZONE_NAMES = {zones.PREFILL: "prefill", zones.TRIMMED: "trimmed", zones.SPILL: "spill"}
OPTIONS: tuple[str, ...] = ()  # design-specific capture options (none)


@dataclass
class Setup:
    """The loaded model plus what routing capture needs of it: MoE sites, trim, stop and special ids."""

    ld: runtime.Loaded
    sites: list
    skipped: list
    trim: dict[int, str]
    stop: set[int]
    special: dict[int, str]


def check_request(frozen, runs: list[dict], *, shard, options: dict) -> None:
    """A routing run generates text: a run that only runs forwards (decoding none) is refused."""
    for run in runs:
        if run["decoding"] == "none":
            raise CaptureError(f"run {run['id']!r} has decoding none; a routing run generates text",
                               hint="set its decoding to greedy or sample (an amendment)")


def setup(frozen, source, identity: dict, overrides: dict, device_map, options: dict) -> Setup:
    ld = runtime.load(frozen, source, identity, overrides, device_map)
    trim = runtime.trim_ids(ld.tok, frozen.spec["runtime"]["trim_tokens"])
    sites, skipped = families.find_moe_sites(ld.model)
    special = {int(i): t for t, i in zip(ld.tok.all_special_tokens, ld.tok.all_special_ids)}
    special.update(trim)
    return Setup(ld, sites, skipped, trim, runtime.stop_ids(ld.model, ld.tok), special)


def prepare(frozen, st: Setup, overrides: dict) -> dict[str, Any]:
    """Prompts sorted by id, each with its rendered text and token ids; refuses over-long prompts."""
    rt = frozen.spec["runtime"]
    max_new_tokens = int(overrides.get("max_new_tokens", rt["max_new_tokens"]))
    batch_size = int(overrides.get("batch_size", rt.get("batch_size", 1)))
    limit = getattr(st.ld.model.config, "max_position_embeddings", None)
    out, too_long = [], []
    for p in sorted(frozen.prompts, key=lambda p: p["id"]):
        rendered = runtime.render(st.ld.tok, p["text"], rt)
        ids = st.ld.tok(rendered, add_special_tokens=False).input_ids
        if limit is not None and len(ids) + max_new_tokens > limit:
            too_long.append(f"{p['id']} ({len(ids)} + {max_new_tokens} > {limit})")
        out.append({**p, "rendered": rendered, "ids": ids})
    if too_long:
        raise CaptureError(
            f"prompt(s) longer than the model's context with the token budget: {', '.join(too_long)}",
            hint="shorten the prompts (an amendment) or lower /runtime/max_new_tokens",
        )
    return {"prompts": out, "max_new_tokens": max_new_tokens, "batch_size": batch_size}


def journal_details(paths) -> dict[str, Any]:
    return {}


def _weight_tol(dtype: str) -> float:
    return 1e-5 if dtype == "float32" else 1e-2


def _batch_tables(batch: list[dict], dec: BatchDecode, br: BatchRouting, st: Setup) -> tuple[dict, dict, dict]:
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
        tp = zones.trim_position(row.generated, st.trim)
        counts = zones.zone_counts(len(p["ids"]), row.generated, st.trim)
        got = {"prefill": n_tokens[r, 0], "trimmed": n_tokens[r, 1], "spill": n_tokens[r, 2]}
        if any(counts[k] != got[k] for k in got):  # the hooks and the ids must agree: a bug otherwise
            raise RuntimeError(f"zone counts of {p['id']} disagree: ids {counts}, routing rows {got}")
        texts.append({
            "prompt_id": p["id"], "class": p.get("class"), "split": p.get("split"),
            "prompt_text": p["text"], "rendered_prompt": p["rendered"], "prompt_token_ids": list(p["ids"]),
            "generated_text": st.ld.tok.decode(row.generated, skip_special_tokens=False),
            "trimmed_text": st.ld.tok.decode(row.generated[:tp], skip_special_tokens=False),
            "token_ids": list(row.generated), "trim_position": tp, "finish_reason": row.finish_reason,
            "n_prefill": counts["prefill"], "n_generated": counts["generated"],
            "n_trimmed": counts["trimmed"], "n_spill": counts["spill"],
            "spill_tokens": zones.spill_tokens(row.generated, tp, st.special),
        })
    layers = [s.layer for s in st.sites]
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
    """One stderr line: prompts done, tokens/s, ETA (tqdm, the maintained bar, drawn per batch).

    ``enabled`` None: drawn only when stderr is a terminal (tqdm's ``disable=None``), so a log file or a
    pipe gets no carriage-return clutter unless the bar is asked for (True)."""

    def __init__(self, label: str, total: int, done: int, enabled: bool | None):
        from tqdm import tqdm

        disable = None if enabled is None else not enabled
        self.bar = tqdm(total=total, initial=done, desc=label, unit="prompt", disable=disable, file=sys.stderr,
                        dynamic_ncols=True, leave=True)
        self.start, self.tokens = time.monotonic(), 0

    def update(self, prompts: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.set_postfix_str(f"{self.tokens / max(time.monotonic() - self.start, 1e-9):.1f} tok/s", refresh=False)
        self.bar.update(prompts)

    def close(self) -> None:
        self.bar.close()


NEAR_TIE_RULE = ("k-th minus (k+1)-th score where the router ranks (logits; DeepSeek-V3: biased sigmoid score), "
                 "divided by max(1, |k-th score|), below max(near_tie_tolerance, 2 eps of the model dtype)")


def _tie_tolerance(preregistered: float, dtype: str) -> float:
    """The near-tie tolerance in force: the preregistered one, or the dtype's rounding if that is coarser
    (two scores closer than two rounding steps can swap under another kernel)."""
    import torch

    return max(preregistered, 2 * float(torch.finfo(getattr(torch, dtype)).eps))


def _run_config(frozen, run, st: Setup, work: dict, deviations) -> dict[str, Any]:
    cap = frozen.spec.get("capture", {})
    return {
        **runtime.base_run_config(frozen, run, st.ld, work["batch_size"], deviations),
        "max_new_tokens": work["max_new_tokens"], "trim_tokens": sorted(st.trim.values()),
        "stop_at": frozen.spec["runtime"].get("stop_at", "eos"),
        "stop_ids": sorted(st.stop) if frozen.spec["runtime"].get("stop_at", "eos") == "eos" else [],
        "near_tie_tolerance": float(cap.get("near_tie_tolerance", 1e-5)),
        "near_tie_tolerance_in_force": _tie_tolerance(float(cap.get("near_tie_tolerance", 1e-5)), st.ld.dtype),
        "residual_layers": sorted(int(x) for x in cap.get("residual_layers", []) or []),
        "prompt_ids": [p["id"] for p in work["prompts"]],
    }


def _manifest(frozen, run, st: Setup, store: RunStore, config, n_batches, started, deviations) -> dict[str, Any]:
    infos = [store.batch_info(b) for b in range(n_batches)]
    prompts = {pid: v for info in infos for pid, v in info["prompts"].items()}
    return {
        **runtime.base_manifest(frozen, run, st.ld, config, started, deviations),
        "moe_layers": [{"layer": s.layer, "name": s.name, "family": s.spec.family, "n_experts": s.spec.n_experts,
                        "top_k": s.spec.top_k} for s in st.sites],
        "skipped_layers": st.skipped,
        "max_new_tokens": config["max_new_tokens"], "trim_tokens": config["trim_tokens"], "stop_at": config["stop_at"],
        "near_tie_tolerance": config["near_tie_tolerance"], "residual_layers": config["residual_layers"],
        "near_tie_rule": NEAR_TIE_RULE, "near_tie_tolerance_in_force": config["near_tie_tolerance_in_force"],
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


def batch_invariance(st: Setup, batches: list[list[dict]], decoding: Decoding, n: int, max_new_tokens: int,
                     stop: set[int]) -> dict[str, Any]:
    """Greedy output of the first batches covering ``n`` prompts, decoded one prompt at a time and in the
    batches capture runs: identical token ids, or the prompts that differ and where they first diverge.

    Left padding and a batch's other rows change the floating-point path of a forward (kernels pick
    their blocking by shape), so greedy decoding can flip a near-tied argmax; the journal's method reads
    greedy output as deterministic, which this check makes a recorded fact instead of an assumption.
    """
    covered, checked = [], 0
    for batch in batches:
        if checked >= n:
            break
        covered.append(batch)
        checked += len(batch)
    differing = []
    for batch in covered:
        together = decode_batch(st.ld.model, [p["ids"] for p in batch], [p["id"] for p in batch], decoding=decoding,
                                max_new_tokens=max_new_tokens, stop_ids=stop, trim_ids=set(st.trim), pad_id=st.ld.pad_id)
        for p, row in zip(batch, together.rows):
            alone = decode_batch(st.ld.model, [p["ids"]], [p["id"]], decoding=decoding, max_new_tokens=max_new_tokens,
                                 stop_ids=stop, trim_ids=set(st.trim), pad_id=st.ld.pad_id).rows[0]
            if alone.generated != row.generated:
                at = next((j for j, (x, y) in enumerate(zip(alone.generated, row.generated)) if x != y),
                          min(len(alone.generated), len(row.generated)))
                differing.append({"prompt_id": p["id"], "first_divergence": at})
    return {"prompts_checked": checked, "batch_size": max((len(b) for b in covered), default=0),
            "identical": not differing, "differing": differing}


def capture_run(frozen, run, st: Setup, work: dict, store: RunStore, *, shard, progress, deviations) -> bool:
    """Capture one run's missing batches; merge when all are done and no shard was asked. True if complete."""
    prompts, batch_size, max_new_tokens = work["prompts"], work["batch_size"], work["max_new_tokens"]
    config = _run_config(frozen, run, st, work, deviations)
    stop = set(config["stop_ids"])
    started = utc_now()
    store.bind(config)
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    mine = [b for b in range(len(batches)) if shard is None or b % shard[1] == shard[0]]
    done = store.done_batches()
    todo = [b for b in mine if b not in done]
    forced = _source_texts(frozen, run, store) if run["decoding"] == "teacher_forced" else None
    if forced is not None:
        _check_same_prompts(run, work, forced)
    bar = _Progress(f"capture {frozen.study_id}/{run['id']}", sum(len(batches[b]) for b in mine),
                    sum(len(batches[b]) for b in mine if b in done), progress)
    decoding = None if forced is not None else Decoding.from_run(run)
    recorder = RoutingRecorder(st.sites, tie_tol=config["near_tie_tolerance_in_force"], weight_tol=_weight_tol(st.ld.dtype),
                               residual_layers=config["residual_layers"])
    try:
        with recorder.hooked():
            for b in todo:
                batch = batches[b]
                recorder.start_batch(len(batch))
                if forced is not None:  # re-read the source run's texts: no token is chosen
                    dec = teacher_force_batch(st.ld.model, [p["ids"] for p in batch], [forced["tokens"][p["id"]] for p in batch],
                                              [forced["finish"][p["id"]] for p in batch], trim_ids=set(st.trim),
                                              pad_id=st.ld.pad_id, recorder=recorder)
                else:
                    dec = decode_batch(st.ld.model, [p["ids"] for p in batch], [p["id"] for p in batch], decoding=decoding,
                                       max_new_tokens=max_new_tokens, stop_ids=stop, trim_ids=set(st.trim),
                                       pad_id=st.ld.pad_id, recorder=recorder)
                tables, arrays, info = _batch_tables(batch, dec, recorder.finish_batch(), st)
                store.write_batch(b, tables, arrays, info)
                bar.update(len(batch), info["routing_rows"])
    finally:
        bar.close()
    if shard is not None or len(store.done_batches()) < len(batches):
        return False
    manifest = _manifest(frozen, run, st, store, config, len(batches), started, deviations)
    if forced is not None:
        manifest["source_run"] = forced["record"]
    check = int(frozen.spec["runtime"].get("batch_invariance_check", 0) or 0)
    if check and decoding is not None and decoding.mode == "greedy":
        manifest["batch_invariance"] = batch_invariance(st, batches, decoding, check, max_new_tokens, stop)
        if not manifest["batch_invariance"]["identical"]:
            diff = manifest["batch_invariance"]["differing"]
            manifest.setdefault("warnings", []).append(
                f"greedy output differs between batch size 1 and {batch_size} for {len(diff)} of "
                f"{manifest['batch_invariance']['prompts_checked']} checked prompts ({', '.join(d['prompt_id'] for d in diff)}): "
                "greedy decoding is not batch-invariant on this runtime")
    store.merge(len(batches), config["residual_layers"])
    _write_vocab(store.root, st.ld.tok)
    store.finish(manifest)
    return True


def _source_texts(frozen, run, store: RunStore) -> dict[str, Any]:
    """What a teacher-forced run re-reads: its source run's generated token ids and finish reasons per prompt,
    and the record of that source (run id, digests of its manifest and texts) its manifest keeps.

    The source must be complete, and its prompts must tokenise to the same ids under this variant's
    tokenizer and runtime (otherwise the two runs would not read identical tokens)."""
    import pyarrow.parquet as pq

    from lockstep import artifacts
    from lockstep.fsio import sha256_file

    source = artifacts.run_dir(store.root.parent.parent, frozen.study_id, run["source_run"])
    if not (source / artifacts.MANIFEST).is_file():
        raise CaptureError(f"run {run['id']!r} re-reads the texts of run {run['source_run']!r}, which is not captured yet",
                           hint=f"run `lockstep capture {frozen.root} --run {run['source_run']}` first, or capture both together; "
                                "under --shard, finish and merge the source run's shards (a run without --shard) before "
                                "starting this run's shards")
    table = pq.read_table(source / artifacts.TEXTS, columns=["prompt_id", "prompt_token_ids", "token_ids", "finish_reason"])
    rows = table.to_pylist()
    return {"tokens": {r["prompt_id"]: list(r["token_ids"]) for r in rows},
            "finish": {r["prompt_id"]: r["finish_reason"] for r in rows},
            "prompt_ids": {r["prompt_id"]: list(r["prompt_token_ids"]) for r in rows},
            "record": {"run_id": run["source_run"], "manifest_sha256": sha256_file(source / artifacts.MANIFEST),
                       "texts_sha256": sha256_file(source / artifacts.TEXTS)}}


def _check_same_prompts(run, work: dict, forced: dict) -> None:
    """The prompt ids this variant renders must be those the source run read."""
    differ = [p["id"] for p in work["prompts"] if forced["prompt_ids"].get(p["id"]) != list(p["ids"])]
    if differ:
        raise CaptureError(f"run {run['id']!r} cannot re-read run {run['source_run']!r}: prompt(s) {', '.join(differ[:5])} "
                           "tokenise differently under this variant's tokenizer and runtime, so the two runs would not "
                           "read identical tokens",
                           hint="give the variant the source's tokenizer and runtime surface, or compare the runs' own generations")


def _write_vocab(run_dir, tok) -> None:
    """``topk/vocab.parquet``: the text of every token id the run's top-k rows hold, so the audit can show
    a unit's token contexts without the tokenizer (a reviewer's copy may not have the model). Each id is
    decoded alone, special tokens kept; a byte-level piece that is not whole UTF-8 shows as U+FFFD."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lockstep.fsio import atomic_write

    path = run_dir / "topk" / "tokens.parquet"
    if not path.is_file():
        return
    ids = sorted({int(i) for i in pq.read_table(path, columns=["token_id"]).column(0).to_pylist()})
    texts = [tok.decode([i], skip_special_tokens=False) for i in ids]
    # how decoded pieces join: a word-level tokenizer puts a space between tokens, a byte-level BPE carries
    # its spaces inside the pieces (recorded so the audit can rebuild a window of text without the tokenizer)
    joiner = ""
    if len(ids) >= 2:
        pair = tok.decode(ids[:2], skip_special_tokens=False)
        joiner = " " if pair == f"{texts[0]} {texts[1]}" else ""
    table = pa.table({"token_id": pa.array(ids, pa.int64()), "text": pa.array(texts, pa.string())},
                     metadata={"joiner": joiner})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(run_dir / "topk" / "vocab.parquet", sink.getvalue().to_pybytes())
