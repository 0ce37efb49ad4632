"""Source tracing: where, upstream of a head slot, the clean-versus-corrupted signal enters.

For a contrastive pair whose clean and corrupted prompts tokenise to the same length ``T``, a *cell*
``(layer l, positions S)`` patches the residual stream **entering decoder layer** ``l`` (the
hidden state the layer's forward receives, before its input norm; ``l = 0`` is the token
embeddings) at the prompt positions ``S`` from the clean run into the corrupted run, and lets the
corrupted run go on from there. Two things are read from the patched run:

* the target slot's output: the slot's channels of the input of its output projection
  (:mod:`capture.slots`, site ``o_proj_input``) at the last position, a vector ``p``;
* the margin ``m_p`` at the last position (``logit(answer) - logit(wrong answer)`` of the first
  tokens, as :class:`capture.designs.ablation.MarginForward` computes it).

How much of the clean-minus-corrupted difference the patch restores, with ``c``/``k`` the clean and
corrupted slot outputs and ``m_c``/``m_k`` their margins:

* ``slot_restored = (p - k) · (c - k) / ||c - k||²``: the projection of the patched change onto
  the clean-minus-corrupted direction, as a fraction of its length;
* ``margin_restored = (m_p - m_k) / (m_c - m_k)``, which is the same formula in one dimension.

Both are 0 when the patch changes nothing and 1 when it reproduces the clean run; they are linear
in the patched quantity (so a mean over pairs is the mean of the per-pair fractions of a linear
read-out), can fall outside [0, 1], and are undefined (NaN) when the clean and corrupted runs do
not differ there (a denominator below ``TINY`` times the clean quantity's scale). A patch at a
layer after the target slot's layer cannot reach the slot: ``slot_restored`` is NaN there.

Positions are indices into the prompt (``0`` = its first token); left padding is taken care of
here (a row of length ``T`` in a forward ``W`` wide starts at column ``W - T``). Every row of a
forward is either a pair's clean run, its corrupted run, or a patched corrupted run whose source is
its own pair's clean row *in the same forward*: the hook on decoder layer ``l`` copies
``hidden[clean_row, cols]`` into ``hidden[patched_row, cols]`` (a pre-hook on the layer, with the
public ``register_forward_pre_hook(..., with_kwargs=True)``, removed in ``finally``). So one
forward gives the clean and corrupted references and every cell stacked along the batch
dimension, and a clean row and its patched copies always share their padding.

Cost: one row (one sequence of ``T`` tokens) per pair per cell, plus two rows per pair and per
forward for the clean and corrupted references; ``stack`` rows share one forward.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from lockstep.errors import CaptureError

from .slots import Slot

TINY = 1e-6  # relative size below which the clean and corrupted runs count as equal (restored fraction NaN)
FIRST_DIFF = "first_diff"
LAST = "last"
ALL = "all"


def decoder_layers(model) -> nn.ModuleList:
    """The decoder layers of a causal LM, in order (the ``ModuleList`` the model's forward loops over)."""
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return layers
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise CaptureError("could not find the decoder layers of the model (a ModuleList of num_hidden_layers layers)")


def parse_layers(spec, n_layers: int) -> list[int]:
    """``source_layers`` as preregistered (``"all"``, ``"a-b"`` inclusive, or a list) -> sorted layer indices,
    each checked against the model's ``n_layers``."""
    if spec == ALL:
        return list(range(n_layers))
    if isinstance(spec, str):
        lo, _, hi = spec.partition("-")
        if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
            raise CaptureError(f"source_layers {spec!r} is not 'all', 'a-b' (a <= b) or a list of layers")
        layers = list(range(int(lo), int(hi) + 1))
    else:
        layers = sorted({int(x) for x in spec})
    outside = [x for x in layers if not 0 <= x < n_layers]
    if outside:
        raise CaptureError(f"source_layers names layer(s) {outside}, but the model has decoder layers 0..{n_layers - 1}",
                           hint="fix the source_trace analysis's source_layers (an amendment)")
    return layers


def position_index(key, clean: Sequence[int], corrupted: Sequence[int]) -> int | None:
    """Where position ``key`` is in a pair's prompt (0 = first token), or None when the pair has no such position.

    ``key``: a negative int (offset from the end, -1 = last token), a non-negative int (index from the
    start), ``"last"`` (= -1) or ``"first_diff"`` (the first position where the clean and corrupted token
    ids differ: the subject of a minimal contrastive pair).
    """
    n = len(clean)
    if key == LAST:
        key = -1
    if key == FIRST_DIFF:
        return next((i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b), None)
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
        raise CaptureError(f"position {key!r} is not an integer, 'last' or 'first_diff'")
    index = n + int(key) if key < 0 else int(key)
    return index if 0 <= index < n else None


def position_keys(positions, length: int) -> list:
    """The position keys of a grid for a prompt of ``length`` tokens: ``"all"`` is every offset from the end."""
    return list(range(-length, 0)) if positions == ALL else list(positions)


@dataclass(frozen=True)
class Cell:
    """One patch: the residual entering decoder layer ``layer`` at prompt positions ``positions``."""

    layer: int
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Traced:
    """What one pair's trace measured.

    ``clean_margin``/``corrupted_margin``: float; ``patched_margin``: ``[cells]``; ``clean_slot``,
    ``corrupted_slot``: ``{label: [width]}``; ``patched_slot``: ``{label: [cells, width]}`` (float64).
    """

    clean_margin: float
    corrupted_margin: float
    patched_margin: np.ndarray
    clean_slot: dict[str, np.ndarray]
    corrupted_slot: dict[str, np.ndarray]
    patched_slot: dict[str, np.ndarray]

    def margin_restored(self) -> np.ndarray:
        return restored_fraction(self.patched_margin[:, None], np.array([self.clean_margin]),
                                 np.array([self.corrupted_margin]))

    def slot_restored(self, label: str) -> np.ndarray:
        return restored_fraction(self.patched_slot[label], self.clean_slot[label], self.corrupted_slot[label])


def restored_fraction(patched: np.ndarray, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """``(p - k) · (c - k) / ||c - k||²`` per row of ``patched`` (``[n, width]``); NaN where ``||c - k||`` is
    below ``TINY`` times ``max(||c||, ||k||, 1)``."""
    diff = np.asarray(clean, dtype=np.float64) - np.asarray(corrupted, dtype=np.float64)
    scale = max(float(np.linalg.norm(clean)), float(np.linalg.norm(corrupted)), 1.0)
    denominator = float(diff @ diff)
    if np.sqrt(denominator) < TINY * scale:
        return np.full(len(patched), np.nan)
    return ((np.asarray(patched, dtype=np.float64) - corrupted) @ diff) / denominator


class ResidualPatch:
    """Copy the residual stream entering decoder layers from one row of a forward into others.

    Use :meth:`patching` around one forward with a plan ``{layer: (dst_rows, src_rows, cols)}`` (equal-length
    int sequences: ``hidden[dst[i], cols[i]] = hidden[src[i], cols[i]]`` before layer ``layer`` runs; columns
    are the forward's, after left padding).
    """

    def __init__(self, model):
        self.layers = decoder_layers(model)

    @contextmanager
    def patching(self, plan: dict[int, tuple[list[int], list[int], list[int]]]) -> Iterator[None]:
        handles = []

        def make_hook(dst: torch.Tensor, src: torch.Tensor, cols: torch.Tensor):
            def hook(module, args, kwargs):
                in_kwargs = not args
                hidden = kwargs["hidden_states"] if in_kwargs else args[0]
                d, s, c = dst.to(hidden.device), src.to(hidden.device), cols.to(hidden.device)
                hidden = hidden.clone()
                hidden[d, c] = hidden[s, c]
                if in_kwargs:
                    return args, {**kwargs, "hidden_states": hidden}
                return (hidden, *args[1:]), kwargs
            return hook

        try:
            for layer, (dst, src, cols) in sorted(plan.items()):
                if not dst:
                    continue
                if layer not in range(len(self.layers)):
                    raise CaptureError(f"layer {layer} is not a decoder layer (the model has 0..{len(self.layers) - 1})")
                hook = make_hook(torch.tensor(dst), torch.tensor(src), torch.tensor(cols))
                handles.append(self.layers[layer].register_forward_pre_hook(hook, with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def reading_slots(model, slots: Sequence[Slot], seen: dict[str, torch.Tensor]) -> Iterator[None]:
    """Keep each slot's channels of its projection's input at the last column, ``seen[label] = [rows, width]``."""
    modules = dict(model.named_modules())
    by_module: dict[str, list[Slot]] = {}
    for s in slots:
        by_module.setdefault(s.module, []).append(s)
    handles = []

    def make_hook(mine: list[Slot]):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            for s in mine:
                seen[s.label] = x[:, -1, s.start:s.stop].detach().double().cpu()
        return hook

    try:
        for path, mine in by_module.items():
            handles.append(modules[path].register_forward_pre_hook(make_hook(mine), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class _Unit:
    """Rows of one forward for one pair: its clean row, its corrupted row, then one row per cell of ``cells``."""

    pair: int
    cells: tuple[int, ...]


def _units(n_cells: list[int], stack: int) -> list[list[_Unit]]:
    """Pack each pair's cells into forwards of at most ``stack`` rows (at least one cell per forward)."""
    per = max(1, stack - 2)
    units = [_Unit(p, tuple(range(start, min(start + per, n)))) for p, n in enumerate(n_cells)
             for start in range(0, max(n, 1), per)]
    forwards, current, rows = [], [], 0
    for u in units:
        size = 2 + len(u.cells)
        if current and rows + size > stack:
            forwards.append(current)
            current, rows = [], 0
        current.append(u)
        rows += size
    if current:
        forwards.append(current)
    return forwards


def trace_pairs(fwd, model, slots: Sequence[Slot], pairs: Sequence[tuple[list[int], list[int], int, int]],
                cells: Sequence[Sequence[Cell]], stack: int) -> list[Traced]:
    """Patch every cell of each pair and read the margin and the slots.

    Parameters
    ----------
    fwd : capture.designs.ablation.MarginForward
        Runs the forwards (left padding, float32 margins from the output head's input).
    model : the loaded causal LM
    slots : the target slots read at the last position
    pairs : ``(clean ids, corrupted ids, answer id, wrong id)``; clean and corrupted must have the same length
    cells : per pair, the cells to patch (positions are prompt indices)
    stack : rows per forward
    """
    for i, (clean, corrupted, _, _) in enumerate(pairs):
        if len(clean) != len(corrupted):
            raise CaptureError(f"pair {i}: clean and corrupted prompts have {len(clean)} and {len(corrupted)} tokens; "
                               "source tracing patches position by position and needs them aligned")
        for cell in cells[i]:
            if any(not 0 <= p < len(clean) for p in cell.positions):
                raise CaptureError(f"pair {i}: a cell patches position(s) {list(cell.positions)} outside 0..{len(clean) - 1}")
    patch = ResidualPatch(model)
    out: dict[int, dict] = {p: {"margin": np.empty(len(cells[p])), "slot": {s.label: np.empty((len(cells[p]), s.stop - s.start))
                                                                             for s in slots}} for p in range(len(pairs))}
    for group in _units([len(c) for c in cells], stack):
        rows, answers, wrongs = [], [], []
        plan: dict[int, tuple[list[int], list[int], list[int]]] = {}
        where: list[tuple[str, int, int]] = []  # (what, pair, cell) per row
        width = max(len(pairs[u.pair][0]) for u in group)
        for u in group:
            clean, corrupted, a, b = pairs[u.pair]
            source = len(rows)
            rows += [list(clean), list(corrupted)]
            where += [("clean", u.pair, -1), ("corrupted", u.pair, -1)]
            offset = width - len(clean)
            for c in u.cells:
                cell = cells[u.pair][c]
                dst, src, cols = plan.setdefault(cell.layer, ([], [], []))
                for p in cell.positions:
                    dst.append(len(rows)), src.append(source), cols.append(offset + p)
                rows.append(list(corrupted))
                where.append(("cell", u.pair, c))
            answers += [a] * (2 + len(u.cells))
            wrongs += [b] * (2 + len(u.cells))
        seen: dict[str, torch.Tensor] = {}
        with patch.patching(plan), reading_slots(model, slots, seen):
            margins = fwd.margins(rows, answers, wrongs)
        for r, (what, p, c) in enumerate(where):
            target = out[p]
            if what == "cell":
                target["margin"][c] = margins[r]
                for s in slots:
                    target["slot"][s.label][c] = seen[s.label][r].numpy()
            elif what not in target:  # the first forward's clean and corrupted rows are the references
                target[what] = (float(margins[r]), {s.label: seen[s.label][r].numpy() for s in slots})
    return [Traced(o["clean"][0], o["corrupted"][0], o["margin"], o["clean"][1], o["corrupted"][1], o["slot"])
            for _, o in sorted(out.items())]


# -- a study's grid -----------------------------------------------------------------------------------

KIND = "source_trace"
EXCLUSION = "unaligned_lengths"
EXCLUSION_TEXT = ("clean and corrupted prompts tokenise to different lengths, so they cannot be patched position by "
                  "position; excluded from source tracing only")
SITE = "residual stream entering decoder layer <l> (the layer's input, before its input norm; 0 = the embeddings)"

TABLE_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("class", pa.string()), ("split", pa.string()), ("target", pa.string()),
    ("layer", pa.int64()), ("position", pa.string()), ("position_index", pa.int64()), ("position_from_end", pa.int64()),
    ("clean_token_id", pa.int64()), ("corrupted_token_id", pa.int64()),
    ("clean_margin", pa.float64()), ("corrupted_margin", pa.float64()), ("patched_margin", pa.float64()),
    ("margin_restored", pa.float64()), ("slot_restored", pa.float64()),
])  # one row per traced pair x target x source layer x position key; slot_restored NaN after the target's layer


def analyses_of(frozen) -> list[dict]:
    """The study's source_trace analyses (resolved)."""
    return [a for a in frozen.analyses if a["kind"] == KIND]


def position_label(key) -> str:
    """How a position key is written in the table and matched against an analysis's ``at.position``."""
    return str(int(key)) if isinstance(key, (int, np.integer)) and not isinstance(key, bool) else str(key)


def _in_scope(pair: dict, analyses: list[dict]) -> bool:
    return any(pair["class"] == a.get("pairs") and a.get("split") in (None, pair["split"]) for a in analyses)


def study_trace(frozen, model, fwd, slots: Sequence[Slot], pairs: list[dict], stack: int, say) -> tuple[pa.Table, dict]:
    """The source-trace table of a run, and what the manifest records of it.

    ``pairs``: rows of pairs.parquet. Traced: the pairs left after the preregistered exclusions whose class
    (and split) some source_trace analysis reads, minus the unaligned ones (rule ``unaligned_lengths``).
    Every analysis's grid (source layers x position keys) is traced for the union of their targets.
    """
    analyses = analyses_of(frozen)
    if frozen.spec["ablation"]["answer_tokenization"] != "first_token":
        raise CaptureError("source tracing reads the first-token margin; this study scores full answers",
                           hint="set /ablation/answer_tokenization to first_token, or drop the source_trace analyses (an amendment)")
    n_layers = len(decoder_layers(model))
    by_label = {s.label: s for s in slots}
    labels = sorted({t for a in analyses for t in a["targets"]}, key=lambda t: (by_label[t].layer, by_label[t].head)
                    if t in by_label else (-1, -1))
    missing = [t for t in labels if t not in by_label]
    if missing:
        raise CaptureError(f"source_trace target(s) {missing} are not head slots of this model")
    targets = [by_label[t] for t in labels]
    grids = [(parse_layers(a["source_layers"], n_layers), a["positions"]) for a in analyses]
    scope = [p for p in pairs if not p["excluded"] and _in_scope(p, analyses)]
    unaligned = [p for p in scope if len(p["clean_token_ids"]) != len(p["corrupted_token_ids"])]
    traced = [p for p in scope if len(p["clean_token_ids"]) == len(p["corrupted_token_ids"])]
    plans = []  # per pair: [(layer, label, index)] and the distinct cells
    for p in traced:
        clean, corrupted = p["clean_token_ids"], p["corrupted_token_ids"]
        keyed, cells = {}, {}
        for layers, positions in grids:
            for key in position_keys(positions, len(clean)):
                index = position_index(key, clean, corrupted)
                if index is None:
                    continue
                for layer in layers:
                    keyed[(layer, position_label(key))] = index
                    cells.setdefault((layer, index), len(cells))
        plans.append((keyed, cells))
    say(f"source tracing: {len(traced)} pairs, {sum(len(c) for _, c in plans)} cells, targets {', '.join(labels)}"
        + (f" ({len(unaligned)} unaligned pair(s) excluded)" if unaligned else ""))
    start, forwards, rows_before = time.perf_counter(), fwd.forwards, fwd.rows
    results = trace_pairs(fwd, model, targets, [(p["clean_token_ids"], p["corrupted_token_ids"], p["answer_token_id"],
                                                 p["wrong_token_id"]) for p in traced],
                          [[Cell(layer, (index,)) for (layer, index) in cells] for _, cells in plans], stack)
    seconds = time.perf_counter() - start
    out = {name: [] for name in TABLE_SCHEMA.names}
    for p, (keyed, cells), res in zip(traced, plans, results):
        margin = res.margin_restored()
        slot = {s.label: res.slot_restored(s.label) for s in targets}
        n = len(p["clean_token_ids"])
        for s in targets:
            for (layer, label), index in sorted(keyed.items()):
                c = cells[(layer, index)]
                values = (p["pair_id"], p["class"], p["split"], s.label, layer, label, index, index - n,
                          p["clean_token_ids"][index], p["corrupted_token_ids"][index], res.clean_margin,
                          res.corrupted_margin, float(res.patched_margin[c]), float(margin[c]),
                          float(slot[s.label][c]) if layer <= s.layer else float("nan"))
                for name, value in zip(TABLE_SCHEMA.names, values):
                    out[name].append(value)
    by_class: dict[str, int] = {}
    for p in unaligned:
        by_class[p["class"]] = by_class.get(p["class"], 0) + 1
    exclusion = {"id": EXCLUSION, "rule": EXCLUSION, "action": "exclude", "scope": KIND, "description": EXCLUSION_TEXT,
                 "pairs": sorted(p["pair_id"] for p in unaligned), "by_class": dict(sorted(by_class.items()))}
    n_cells = sum(len(c) for _, c in plans)
    info = {"site": SITE, "targets": labels, "pairs_traced": len(traced), "cells": n_cells,
            "forwards": fwd.forwards - forwards, "rows": fwd.rows - rows_before, "seconds": seconds,
            "rows_per_forward": stack, "exclusion": exclusion}
    return pa.Table.from_pydict(out, schema=TABLE_SCHEMA), info


def exclusion_warning(exclusion: dict) -> str | None:
    """The run's warning line for the unaligned pairs (None when there are none)."""
    if not exclusion["pairs"]:
        return None
    classes = ", ".join(f"{k} {v}" for k, v in exclusion["by_class"].items())
    return (f"exclusion {exclusion['id']} ({exclusion['rule']}) excluded {len(exclusion['pairs'])} pair(s) from source "
            f"tracing ({classes}): " + ", ".join(exclusion["pairs"]))
