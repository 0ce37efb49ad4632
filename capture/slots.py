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
slot's mean over a reference set's non-pad tokens (``mean``). :class:`SlotAblation` does it with one
public ``register_forward_pre_hook(..., with_kwargs=True)`` per hooked projection, removed in
``finally``. Rows of a batch may ablate different slots (``row_slots``), so that several
single-slot ablations share one forward (the all-slot baseline stacks slots along the batch).
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
        ``label -> [stop - start]`` replacement values (mean ablation); zeros when None.

    Use :meth:`ablating` as a context manager around one forward. ``row_slots[r]`` lists the slot
    labels ablated in row ``r`` of that forward (an empty list leaves the row untouched).
    """

    def __init__(self, model, slots: Sequence[Slot], means: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.slots = {s.label: s for s in slots}
        self.means = means
        self.modules = dict(model.named_modules())

    def _plan(self, row_slots: Sequence[Sequence[str]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per hooked module: a ``[rows, width]`` bool mask of replaced channels and ``[rows, width]`` values."""
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
            values = torch.zeros((len(row_slots), proj.in_features), dtype=torch.float32)
            for r, slot in items:
                mask[r, slot.start:slot.stop] = True
                if self.means is not None:
                    values[r, slot.start:slot.stop] = self.means[slot.label].to(torch.float32).cpu()
            plan[path] = (mask.to(weight.device), values.to(device=weight.device, dtype=weight.dtype))
        return plan

    @contextmanager
    def ablating(self, row_slots: Sequence[Sequence[str]]) -> Iterator[None]:
        plan = self._plan(row_slots)
        handles = []

        def make_hook(mask: torch.Tensor, values: torch.Tensor):
            def hook(module, args, kwargs):
                x = args[0]
                if x.shape[0] != mask.shape[0]:
                    raise RuntimeError(f"the ablation plan has {mask.shape[0]} rows but the forward has {x.shape[0]}")
                m, v = mask.to(x.device), values.to(device=x.device, dtype=x.dtype)
                return (torch.where(m[:, None, :], v[:, None, :], x), *args[1:]), kwargs
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

    Use :meth:`recording` around each reference forward with that forward's ``[rows, positions]``
    attention mask; :meth:`means` then gives ``label -> mean`` (float64 sums, float32 result) and
    :attr:`n_tokens` how many tokens the means are over.
    """

    def __init__(self, model, slots: Sequence[Slot]):
        self.model = model
        self.slots = list(slots)
        self.modules = dict(model.named_modules())
        self.sums: dict[str, torch.Tensor] = {}
        self.n_tokens = 0

    @contextmanager
    def recording(self, attention_mask: torch.Tensor) -> Iterator[None]:
        handles = []

        def make_hook(path: str):
            def hook(module, args, kwargs):
                x = args[0]
                keep = attention_mask.to(device=x.device, dtype=torch.bool)
                total = x[keep].to(torch.float64).sum(dim=0).cpu()
                self.sums[path] = self.sums[path] + total if path in self.sums else total
            return hook

        try:
            for path in sorted({s.module for s in self.slots}):
                handles.append(self.modules[path].register_forward_pre_hook(make_hook(path), with_kwargs=True))
            yield
            self.n_tokens += int(attention_mask.sum())
        finally:
            for handle in handles:
                handle.remove()

    def means(self) -> dict[str, torch.Tensor]:
        if not self.n_tokens:
            raise CaptureError("the reference set has no tokens, so there is no mean to ablate with",
                               hint="add reference lines (class reference) to prompts.jsonl, an amendment")
        return {s.label: (self.sums[s.module][s.start:s.stop] / self.n_tokens).to(torch.float32) for s in self.slots}
