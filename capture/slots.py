"""Head slots: where ``LxxHyy`` lives in a model, and the hooks that ablate slots.

A *head slot* is one head's share of the input of an attention block's output projection: the
tensor the projection multiplies, reshaped per head. That is where a head's contribution to the
residual stream is still separate from the other heads', after everything the block does per head
(attention, and in Qwen3.5 the output gate or the gated norm) and before the heads are mixed.

The slot table, for the two layer types of a hybrid Qwen3.5 model (``transformers`` 5.23,
``models/qwen3_5/modeling_qwen3_5.py``; the MoE variant has the same attention classes):

============================  ==========================================  ==================================
layer type                    module hooked (input of)                    slot ``LlHh`` = input channels
============================  ==========================================  ==================================
``full_attention``            ``<layers>.<l>.self_attn.o_proj``           ``[h*head_dim, (h+1)*head_dim)``,
                              (``Qwen3_5Attention``)                      after ``attn_output * sigmoid(gate)``
``linear_attention``          ``<layers>.<l>.linear_attn.out_proj``       ``[h*head_v_dim, (h+1)*head_v_dim)``,
                              (``Qwen3_5GatedDeltaNet``)                  value head ``h`` after the gated
                                                                          RMS norm ``norm(core_attn_out, z)``
============================  ==========================================  ==================================

Full attention has ``num_attention_heads`` slots of ``head_dim`` channels (``attn_output`` is
``[B, T, heads, head_dim]`` flattened head-major before ``o_proj``). Linear attention has
``linear_num_value_heads`` slots of ``linear_value_head_dim`` channels (``core_attn_out`` is
``[B, T, value_heads, head_v_dim]``, normalised per head, flattened head-major before ``out_proj``).
So ``L3H2`` and ``L2H2`` name different kinds of thing in a hybrid model: a query head's gated output
and a gated-delta-rule value head's normalised output. The labels are slot identifiers, not a claim
of a uniform head grid. The table is discovered from the loaded modules (any attention module with
``o_proj`` + ``head_dim`` + ``layer_idx``, or ``out_proj`` + ``num_v_heads`` + ``head_v_dim`` +
``layer_idx``), checked against the projection's width, and recorded in the run manifest.

Ablation replaces a slot's channels at every position of a row: with zeros (``zero``) or with the
slot's mean over a reference set's non-pad tokens (``mean``). With ``positions = K > 0`` the means
are per position, aligned from the end of each prompt (a template-matched reference: the same
templates with other entities): the last ``K`` positions of a prompt are replaced by the reference
set's mean at the same position from the end, and every other position (earlier prompt tokens, and
the teacher-forced answer tokens after the prompt) by the mean over the reference tokens further than
``K`` from the end. ``K = 0`` pools every reference token (one mean per slot).
:class:`SlotAblation` does it with one public ``register_forward_pre_hook(..., with_kwargs=True)``
per hooked projection, removed in ``finally``. Rows of a batch may ablate different slots
(``row_slots``), so that several single-slot ablations share one forward (the all-slot baseline
stacks slots along the batch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lockstep.errors import CaptureError
from lockstep.units import unit_id

FULL = "full_attention"
LINEAR = "linear_attention"


@dataclass(frozen=True)
class Slot:
    """One head slot: its label, its layer and head, and which input channels of which module it is."""

    label: str
    layer: int
    head: int
    layer_type: str
    module: str
    start: int
    stop: int

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_type(model, layer: int, default: str) -> str:
    types = getattr(model.config, "layer_types", None)
    if types is None and hasattr(model.config, "get_text_config"):
        types = getattr(model.config.get_text_config(), "layer_types", None)
    if types is not None and layer < len(types):
        return str(types[layer])
    return default


def _attention_blocks(model) -> Iterator[tuple[str, int, str, str, int, int]]:
    """(block path, layer, layer type, projection path, heads, channels per head) of every attention block."""
    for name, module in model.named_modules():
        layer = getattr(module, "layer_idx", None)
        if not isinstance(layer, int) or "visual" in name.split("."):
            continue
        o_proj, out_proj = getattr(module, "o_proj", None), getattr(module, "out_proj", None)
        if isinstance(o_proj, nn.Linear) and isinstance(getattr(module, "head_dim", None), int):
            width, per = o_proj.in_features, module.head_dim
            kind, proj = _layer_type(model, layer, FULL), "o_proj"
        elif isinstance(out_proj, nn.Linear) and isinstance(getattr(module, "head_v_dim", None), int) \
                and isinstance(getattr(module, "num_v_heads", None), int):
            width, per = out_proj.in_features, module.head_v_dim
            kind, proj = _layer_type(model, layer, LINEAR), "out_proj"
            if module.num_v_heads * per != width:
                raise CaptureError(f"{name}.out_proj reads {width} channels, not {module.num_v_heads} value heads x {per}")
        else:
            continue
        if width % per:
            raise CaptureError(f"{name}.{proj} reads {width} channels, not a whole number of {per}-channel heads")
        yield name, layer, kind, f"{name}.{proj}", width // per, per


def slot_table(model, slot_layers: str | Sequence[int] = "all") -> list[Slot]:
    """Every head slot of ``model`` that ``slot_layers`` selects, sorted by layer then head.

    Parameters
    ----------
    model : torch.nn.Module
        A loaded causal LM.
    slot_layers : "all", "full_attention" or sequence of int
        As ``ablation.slot_layers`` in study.yaml: every attention layer, only full-attention
        layers, or the listed layer indices (each must have an attention block).
    """
    blocks = sorted(_attention_blocks(model), key=lambda b: b[1])
    seen = [b[1] for b in blocks]
    if len(set(seen)) != len(seen):
        raise CaptureError(f"more than one attention block claims a layer index: {seen}")
    if isinstance(slot_layers, str):
        if slot_layers not in ("all", FULL):
            raise CaptureError(f"ablation.slot_layers {slot_layers!r} is not 'all', 'full_attention' or a list of layers")
        chosen = [b for b in blocks if slot_layers == "all" or b[2] == FULL]
    else:
        wanted = [int(x) for x in slot_layers]
        missing = sorted(set(wanted) - set(seen))
        if missing:
            raise CaptureError(f"ablation.slot_layers names layer(s) {missing} with no attention block; "
                               f"the model has attention in layers {seen}",
                               hint="fix study.yaml /ablation/slot_layers (an amendment)")
        chosen = [b for b in blocks if b[1] in set(wanted)]
    if not chosen:
        raise CaptureError("the model has no attention block whose output projection could be ablated")
    return [Slot(unit_id(layer, h, "H"), layer, h, kind, proj, h * per, (h + 1) * per)
            for _, layer, kind, proj, heads, per in chosen for h in range(heads)]


def slot_summary(slots: Sequence[Slot]) -> dict[str, object]:
    """Counts per layer type, for the manifest and messages."""
    by_type: dict[str, dict[str, int]] = {}
    for kind in sorted({s.layer_type for s in slots}):
        mine = [s for s in slots if s.layer_type == kind]
        by_type[kind] = {"layers": len({s.layer for s in mine}), "slots": len(mine)}
    return {"slots": len(slots), "by_layer_type": by_type}


class SlotAblation:
    """Replace head slots in the input of output projections, per row of a batch.

    Parameters
    ----------
    model : torch.nn.Module
    slots : sequence of Slot
        The slot table (from :func:`slot_table`).
    means : dict[str, torch.Tensor], optional
        ``label -> [stop - start]`` (one pooled mean) or ``label -> [K + 1, stop - start]`` (row 0: the
        mean of the other positions; row ``k``: the mean at the ``k``-th position from the end), as
        :meth:`SlotMeans.means` gives them; zeros when None (zero ablation).

    Use :meth:`ablating` as a context manager around one forward. ``row_slots[r]`` lists the slot
    labels ablated in row ``r`` of that forward (an empty list leaves the row untouched); ``tails[r]``
    is how many tokens of row ``r`` follow its prompt (teacher-forced answer tokens; 0 by default), so
    that positions are counted from the prompt's end.
    """

    def __init__(self, model, slots: Sequence[Slot], means: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.slots = {s.label: s for s in slots}
        self.means = None if means is None else {k: v.reshape(-1, v.shape[-1]) for k, v in means.items()}
        self.positions = 0 if not self.means else next(iter(self.means.values())).shape[0] - 1
        self.modules = dict(model.named_modules())

    def _plan(self, row_slots: Sequence[Sequence[str]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per hooked module: a ``[rows, width]`` bool mask of replaced channels and the ``[K + 1, width]``
        replacement values by position class (row 0: other positions; row k: k-th from the end)."""
        per_module: dict[str, list[tuple[int, Slot]]] = {}
        for r, labels in enumerate(row_slots):
            for label in labels:
                if label not in self.slots:
                    raise CaptureError(f"{label} is not a head slot of this model (see the slot table in the manifest)")
                slot = self.slots[label]
                per_module.setdefault(slot.module, []).append((r, slot))
        plan = {}
        for path, items in per_module.items():
            proj = self.modules[path]
            weight = proj.weight
            mask = torch.zeros((len(row_slots), proj.in_features), dtype=torch.bool)
            values = torch.zeros((self.positions + 1, proj.in_features), dtype=torch.float32)
            for r, slot in items:
                mask[r, slot.start:slot.stop] = True
                if self.means is not None:
                    values[:, slot.start:slot.stop] = self.means[slot.label].to(torch.float32).cpu()
            plan[path] = (mask.to(weight.device), values.to(device=weight.device, dtype=weight.dtype))
        return plan

    @contextmanager
    def ablating(self, row_slots: Sequence[Sequence[str]], tails: Sequence[int] | None = None) -> Iterator[None]:
        plan = self._plan(row_slots)
        tails_t = torch.zeros(len(row_slots), dtype=torch.long) if tails is None else torch.tensor(list(tails), dtype=torch.long)
        if tails_t.shape[0] != len(row_slots):
            raise CaptureError(f"`tails` has {tails_t.shape[0]} rows but `row_slots` has {len(row_slots)}")
        handles = []
        positions = self.positions

        def make_hook(mask: torch.Tensor, values: torch.Tensor):
            def hook(module, args, kwargs):
                x = args[0]
                if x.shape[0] != mask.shape[0]:
                    raise RuntimeError(f"the ablation plan has {mask.shape[0]} rows but the forward has {x.shape[0]}")
                m, v = mask.to(x.device), values.to(device=x.device, dtype=x.dtype)
                if positions == 0:
                    return (torch.where(m[:, None, :], v[0][None, None, :], x), *args[1:]), kwargs
                width = x.shape[1]
                from_end = (width - tails_t)[:, None] - torch.arange(width)[None, :]  # 1 = the prompt's last token
                index = torch.where((from_end >= 1) & (from_end <= positions), from_end, 0).to(x.device)
                return (torch.where(m[:, None, :], v[index], x), *args[1:]), kwargs
            return hook

        try:
            for path, (mask, values) in plan.items():
                handles.append(self.modules[path].register_forward_pre_hook(make_hook(mask, values), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


class SlotMeans:
    """Accumulate each hooked projection's input over the non-pad tokens of reference forwards.

    Use :meth:`recording` around each reference forward (left-padded prompts, nothing after them)
    with that forward's ``[rows, positions]`` attention mask; :meth:`means` then gives ``label -> mean``
    (float64 sums, float32 result) and :attr:`n_tokens` how many tokens the means are over.

    Parameters
    ----------
    positions : int
        0: one mean over every non-pad token. ``K > 0``: ``K + 1`` means per slot: row ``k`` (1..K) over
        the ``k``-th token from the end of every reference prompt (each must have at least ``K``
        tokens), row 0 over the tokens further than ``K`` from the end. :attr:`counts` holds the
        number of tokens behind each row.
    """

    def __init__(self, model, slots: Sequence[Slot], positions: int = 0):
        if positions < 0:
            raise ValueError("`positions` must be 0 or more")
        self.model = model
        self.slots = list(slots)
        self.positions = int(positions)
        self.modules = dict(model.named_modules())
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = [0] * (self.positions + 1)
        self.n_tokens = 0

    def _classes(self, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Per position class (0: other; k: k-th from the end) a ``[rows, positions]`` bool mask of non-pad tokens."""
        keep = attention_mask.to(torch.bool)
        if self.positions == 0:
            return [keep]
        lengths = keep.sum(dim=1)
        if int(lengths.min()) < self.positions:
            raise CaptureError(f"a reference prompt has {int(lengths.min())} token(s), fewer than the {self.positions} "
                               "positions from the end that per_position_means averages",
                               hint="lengthen the reference prompts or lower /ablation/per_position_means (an amendment)")
        width = keep.shape[1]
        from_end = width - torch.arange(width)  # left padding: the last column is the last token of every row
        out = [keep & (from_end > self.positions)[None, :]]
        out += [keep & (from_end == k)[None, :] for k in range(1, self.positions + 1)]
        return out

    @contextmanager
    def recording(self, attention_mask: torch.Tensor) -> Iterator[None]:
        handles = []
        classes = self._classes(attention_mask)

        def make_hook(path: str):
            def hook(module, args, kwargs):
                x = args[0]
                total = torch.stack([x[c.to(x.device)].to(torch.float64).sum(dim=0).cpu() for c in classes])
                self.sums[path] = self.sums[path] + total if path in self.sums else total
            return hook

        try:
            for path in sorted({s.module for s in self.slots}):
                handles.append(self.modules[path].register_forward_pre_hook(make_hook(path), with_kwargs=True))
            yield
            self.n_tokens += int(attention_mask.sum())
            for k, c in enumerate(classes):
                self.counts[k] += int(c.sum())
        finally:
            for handle in handles:
                handle.remove()

    def means(self) -> dict[str, torch.Tensor]:
        """``label -> [width]`` (``positions`` 0) or ``label -> [K + 1, width]``."""
        if not self.n_tokens:
            raise CaptureError("the reference set has no tokens, so there is no mean to ablate with",
                               hint="add reference lines (class reference) to prompts.jsonl, an amendment")
        if not self.counts[0]:
            raise CaptureError(f"every reference prompt has exactly {self.positions} token(s), so no token is left for "
                               "the mean of the earlier positions",
                               hint="lengthen the reference prompts or lower /ablation/per_position_means (an amendment)")
        counts = torch.tensor(self.counts, dtype=torch.float64)[:, None]
        out = {}
        for s in self.slots:
            mean = (self.sums[s.module][:, s.start:s.stop] / counts).to(torch.float32)
            out[s.label] = mean[0] if self.positions == 0 else mean
        return out
