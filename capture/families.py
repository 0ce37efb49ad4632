"""Find every MoE layer of a model and read what its router did.

A *site* is one MoE block of one decoder layer. For each site this module names two hook points,
both reached through public PyTorch hook APIs by the capture core:

* ``site.router`` -- a forward hook on it sees the router's output; :func:`router_scores` turns that
  output into raw router logits ``[tokens, n_experts]`` (float32);
* ``site.experts`` -- a forward pre-hook on it (``with_kwargs=True``) sees the routing the block
  actually passed to its experts; :func:`used_routing` turns those inputs into
  ``(indices [tokens, k] int64, weights [tokens, k] float32)``.

:func:`reconstruct_routing` re-derives the routing from the logits alone, following each family's
published rule, and :func:`compare_routing` counts where the two disagree, so that a capture can
prove it read what the model did.

Sites are found by module class, never by module name: a registry maps each supported family to the
exact transformers 5.x classes of its MoE block, router and experts (by defining module and
qualified name, so a ``trust_remote_code`` class with the same name is not mistaken for it).

Notes
-----
Read from the installed transformers 5.23 sources (``models/<family>/modeling_<family>.py``):

=============  ======================  ========  ===========  =========================================
family         router class            scores    renormalise  other
=============  ======================  ========  ===========  =========================================
qwen3_5_moe    Qwen3_5MoeTopKRouter    softmax   always       shared expert (sigmoid gate), not routed
qwen3_moe      Qwen3MoeTopKRouter      softmax   config       mlp_only_layers / decoder_sparse_step
qwen2_moe      Qwen2MoeTopKRouter      softmax   config       shared expert; mlp_only_layers / step
olmoe          OlmoeTopKRouter         softmax   config       (OLMoE-1B-7B ships norm_topk_prob=False)
mixtral        MixtralTopKRouter       softmax   always       weights stay float32
deepseek_v3    DeepseekV3TopkRouter    sigmoid   config       selection bias, groups, scaling, dense
                                                              first_k_dense_replace layers
=============  ======================  ========  ===========  =========================================

Every router returns ``(router_logits, top_k_weights, top_k_index)``: the first item is raw
logits (pre-softmax / pre-sigmoid), and every block calls ``experts(hidden, top_k_index,
top_k_weights)`` positionally. The Qwen-style routers cast the top-k weights back to the logits'
dtype, so in a bf16 model the used weights carry bf16 rounding; compare with a tolerance to match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lockstep.errors import CaptureError

__all__ = [
    "SUPPORTED_FAMILIES",
    "MoESite",
    "RouterSpec",
    "compare_routing",
    "find_moe_sites",
    "looks_like_probabilities",
    "reconstruct_routing",
    "router_bias",
    "router_scores",
    "used_routing",
]


@dataclass(frozen=True)
class RouterSpec:
    """How one family's router turns logits into the routing it uses.

    Attributes
    ----------
    family : str
        One of :data:`SUPPORTED_FAMILIES`.
    n_experts : int
        Routed experts per layer (a shared expert is not counted: it is not a routed unit).
    top_k : int
        Experts selected per token.
    score_fn : str
        ``"softmax"`` (over all experts) or ``"sigmoid"`` (per expert).
    renormalize : bool
        Whether the top-k weights are divided by their sum.
    selection_bias : bool
        DeepSeek-V3 ``e_score_correction_bias``: added to the scores for *selection* only.
    routed_scaling : float
        Multiplier on the final weights (1.0 if none).
    n_group : int
        Expert groups for grouped selection (1: no grouping).
    topk_group : int
        Groups kept per token (equal to ``n_group``: no grouping).
    weights_in_logits_dtype : bool
        Whether the model casts the used weights back to the logits' dtype (bf16 rounding in a
        bf16 model) rather than keeping them float32.
    """

    family: str
    n_experts: int
    top_k: int
    score_fn: str
    renormalize: bool
    selection_bias: bool = False
    routed_scaling: float = 1.0
    n_group: int = 1
    topk_group: int = 1
    weights_in_logits_dtype: bool = True


@dataclass(frozen=True)
class MoESite:
    """One MoE block of one decoder layer, with the two modules a capture hooks.

    Attributes
    ----------
    layer : int
        Decoder-layer index (0-based), the ``L`` in ``L14E114``.
    name : str
        Dotted module path of the MoE block, e.g. ``"model.layers.14.mlp"``.
    block : torch.nn.Module
        The MoE block.
    router : torch.nn.Module
        Its forward output carries the raw router logits (read with :func:`router_scores`).
    experts : torch.nn.Module
        Its forward input carries the routing actually used (read with :func:`used_routing`).
    spec : RouterSpec
        The routing rule, read from the router module's own attributes.
    """

    layer: int
    name: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    spec: RouterSpec


@dataclass(frozen=True)
class _Family:
    """Registry entry: the exact classes of one family and how to read its router's rule."""

    family: str
    module: str
    block: str
    router: str
    experts: str
    router_attr: str
    experts_attr: str
    dense: tuple[str, ...]
    dense_reason: str
    spec: Callable[[nn.Module], RouterSpec]


def _softmax_spec(family: str, *, always_renormalize: bool, weights_in_logits_dtype: bool = True):
    def build(router: nn.Module) -> RouterSpec:
        renorm = True if always_renormalize else bool(router.norm_topk_prob)
        return RouterSpec(
            family=family,
            n_experts=int(router.num_experts),
            top_k=int(router.top_k),
            score_fn="softmax",
            renormalize=renorm,
            weights_in_logits_dtype=weights_in_logits_dtype,
        )

    return build


def _deepseek_v3_spec(router: nn.Module) -> RouterSpec:
    return RouterSpec(
        family="deepseek_v3",
        n_experts=int(router.num_experts),
        top_k=int(router.top_k),
        score_fn="sigmoid",
        renormalize=bool(router.norm_topk_prob),
        selection_bias=True,
        routed_scaling=float(router.routed_scaling_factor),
        n_group=int(router.num_group),
        topk_group=int(router.topk_group),
        weights_in_logits_dtype=False,
    )


def _entry(family: str, prefix: str, block: str, router: str, dense: str, reason: str, spec) -> _Family:
    return _Family(
        family=family,
        module=f"transformers.models.{family}.modeling_{family}",
        block=block,
        router=router,
        experts=f"{prefix}Experts",
        router_attr="gate",
        experts_attr="experts",
        dense=(dense,),
        dense_reason=reason,
        spec=spec,
    )


_STEP_REASON = "dense MLP (mlp_only_layers / decoder_sparse_step)"
_FAMILIES: tuple[_Family, ...] = (
    _entry("qwen3_5_moe", "Qwen3_5Moe", "Qwen3_5MoeSparseMoeBlock", "Qwen3_5MoeTopKRouter",
           "Qwen3_5MoeMLP", "dense MLP", _softmax_spec("qwen3_5_moe", always_renormalize=True)),
    _entry("qwen3_moe", "Qwen3Moe", "Qwen3MoeSparseMoeBlock", "Qwen3MoeTopKRouter",
           "Qwen3MoeMLP", _STEP_REASON, _softmax_spec("qwen3_moe", always_renormalize=False)),
    _entry("qwen2_moe", "Qwen2Moe", "Qwen2MoeSparseMoeBlock", "Qwen2MoeTopKRouter",
           "Qwen2MoeMLP", _STEP_REASON, _softmax_spec("qwen2_moe", always_renormalize=False)),
    _entry("olmoe", "Olmoe", "OlmoeSparseMoeBlock", "OlmoeTopKRouter",
           "OlmoeMLP", "dense MLP", _softmax_spec("olmoe", always_renormalize=False)),
    _entry("mixtral", "Mixtral", "MixtralSparseMoeBlock", "MixtralTopKRouter", "MixtralMLP", "dense MLP",
           _softmax_spec("mixtral", always_renormalize=True, weights_in_logits_dtype=False)),
    _entry("deepseek_v3", "DeepseekV3", "DeepseekV3MoE", "DeepseekV3TopkRouter",
           "DeepseekV3MLP", "dense MLP (first_k_dense_replace)", _deepseek_v3_spec),
)

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(f.family for f in _FAMILIES)
"""Families whose MoE blocks :func:`find_moe_sites` recognises (transformers 5.x classes)."""


def _class_key(module: nn.Module) -> tuple[str, str]:
    cls = type(module)
    return cls.__module__, cls.__qualname__


def _class_label(module: nn.Module) -> str:
    module_name, qualname = _class_key(module)
    return f"{module_name}.{qualname}"


def _family_of_block(module: nn.Module) -> _Family | None:
    key = _class_key(module)
    for fam in _FAMILIES:
        if key == (fam.module, fam.block):
            return fam
    return None


def _is_registered_part(module: nn.Module) -> bool:
    key = _class_key(module)
    return any(key in ((f.module, f.router), (f.module, f.experts)) for f in _FAMILIES)


def _looks_like_moe(module: nn.Module) -> bool:
    """Structural check for an MoE block of a class the registry does not know.

    A module that owns a child called ``experts``, or owns a registered router or experts module,
    routes tokens among experts whatever its class is called.
    """
    for child_name, child in module.named_children():
        if child_name == "experts" or _is_registered_part(child):
            return True
    return False


def _unsupported(label: str, where: str) -> CaptureError:
    families = ", ".join(SUPPORTED_FAMILIES)
    return CaptureError(
        f"module {where!r} looks like an MoE block but its class {label} is not a supported "
        f"MoE block; supported families: {families}",
        hint="load the model with the transformers version pinned by lockstep and without "
        "trust_remote_code, or add the family to capture/families.py with tests",
    )


def _child(block: nn.Module, attr: str, expected: str, fam: _Family, where: str) -> nn.Module:
    part = getattr(block, attr, None)
    if not isinstance(part, nn.Module) or _class_key(part) != (fam.module, expected):
        found = "nothing" if part is None else _class_label(part)
        raise CaptureError(
            f"MoE block {where!r} ({fam.block}) has {found} as .{attr}, expected {fam.module}.{expected}",
            hint="the block was modified after loading; capture the model as transformers built it",
        )
    return part


def _layer_of(model: nn.Module, name: str) -> tuple[str, int]:
    """The deepest ``ModuleList`` on the path of ``name`` and the index taken in it."""
    parts = name.split(".")
    found: tuple[str, int] | None = None
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parts[i].isdigit() and isinstance(model.get_submodule(parent), nn.ModuleList):
            found = (parent, int(parts[i]))
    if found is None:
        raise CaptureError(
            f"MoE block {name!r} is not inside a list of decoder layers, so it has no layer index",
            hint="pass the causal-LM model that transformers loaded, not a single block",
        )
    return found


def _site(model: nn.Module, name: str, block: nn.Module, fam: _Family) -> tuple[str, MoESite]:
    router = _child(block, fam.router_attr, fam.router, fam, name)
    experts = _child(block, fam.experts_attr, fam.experts, fam, name)
    layers_name, layer = _layer_of(model, name)
    site = MoESite(layer=layer, name=name, block=block, router=router, experts=experts, spec=fam.spec(router))
    return layers_name, site


def _collect(model: nn.Module) -> list[tuple[str, MoESite, _Family]]:
    found: list[tuple[str, MoESite, _Family]] = []
    for name, module in model.named_modules():
        fam = _family_of_block(module)
        if fam is not None:
            layers_name, site = _site(model, name, module, fam)
            found.append((layers_name, site, fam))
        elif not _is_registered_part(module) and _looks_like_moe(module):
            inside_known = any(name.startswith(f"{s.name}.") for _, s, _ in found)
            if not inside_known:
                raise _unsupported(_class_label(module), name)
    return found


def _no_moe_error(model: nn.Module) -> CaptureError:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return CaptureError(
        f"no MoE layer found in {type(model).__name__} (model_type {model_type!r}): "
        f"routing capture needs a routed mixture-of-experts model; supported families: "
        f"{', '.join(SUPPORTED_FAMILIES)}",
        hint="check the model named in study.yaml; a dense model has no router to capture",
    )


def _check_layout(found: list[tuple[str, MoESite, _Family]]) -> str:
    lists = sorted({layers_name for layers_name, _, _ in found})
    if len(lists) != 1:
        raise CaptureError(
            f"MoE blocks sit in {len(lists)} lists of layers ({', '.join(lists)}); "
            "a layer index would be ambiguous",
            hint="capture one decoder stack at a time (e.g. the language model of a multimodal model)",
        )
    layers = [site.layer for _, site, _ in found]
    duplicated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if duplicated:
        raise CaptureError(
            f"more than one MoE block in decoder layer(s) {duplicated}; units L<layer>E<expert> would collide",
            hint="this architecture needs its own entry in capture/families.py",
        )
    return lists[0]


def _dense_entry(layers_name: str, index: int, layer: nn.Module, fams: Sequence[_Family]) -> dict:
    mlp = getattr(layer, "mlp", None)
    target = mlp if isinstance(mlp, nn.Module) else layer
    name = f"{layers_name}.{index}.mlp" if target is mlp else f"{layers_name}.{index}"
    label = type(target).__name__
    reason = "no MoE block in this decoder layer"
    for fam in fams:
        if _class_key(target) in {(fam.module, dense) for dense in fam.dense}:
            reason = fam.dense_reason
    return {"layer": index, "name": name, "class": label, "reason": reason}


def find_moe_sites(model: nn.Module) -> tuple[list[MoESite], list[dict]]:
    """Find every MoE block of ``model`` by class, and the decoder layers that have none.

    Parameters
    ----------
    model : torch.nn.Module
        A model as loaded by transformers (e.g. ``Qwen3_5MoeForCausalLM``).

    Returns
    -------
    sites : list of MoESite
        One per MoE decoder layer, in layer order.
    skipped : list of dict
        One per decoder layer without an MoE block, in layer order, with keys ``layer``,
        ``name`` (dotted path of its MLP), ``class`` (the MLP's class name) and ``reason``.

    Raises
    ------
    CaptureError
        No MoE block at all; a module that routes among experts but is of a class the registry
        does not know (the message names the class and the supported families); a registered block
        whose router or experts module was replaced; MoE blocks in more than one layer list.

    Notes
    -----
    Classes are matched exactly (defining module and qualified name), not by ``isinstance``: a
    subclass may route differently, so it is reported as unknown rather than read wrongly.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    found = _collect(model)
    if not found:
        raise _no_moe_error(model)
    layers_name = _check_layout(found)
    sites = sorted((site for _, site, _ in found), key=lambda s: s.layer)
    fams = list({fam.family: fam for _, _, fam in found}.values())
    by_layer = {site.layer for site in sites}
    layers = model.get_submodule(layers_name)
    skipped = [
        _dense_entry(layers_name, i, layer, fams) for i, layer in enumerate(layers) if i not in by_layer
    ]
    return sites, skipped


def router_bias(site: MoESite) -> torch.Tensor | None:
    """The selection bias of a site's router as float32 (DeepSeek-V3), or None if it has none."""
    if not site.spec.selection_bias:
        return None
    return site.router.e_score_correction_bias.detach().to(torch.float32)


def looks_like_probabilities(t: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether a router output holds probabilities (rows in [0, 1] summing to 1) rather than logits.

    Parameters
    ----------
    t : torch.Tensor
        ``[..., n_experts]`` router output.
    atol : float
        Slack on the bounds and on the row sums (bf16 softmax rows sum to 1 within ~4e-3 per
        element rounding; float32 within ~1e-6).

    Returns
    -------
    bool
        False for an empty tensor or one with a non-finite value.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`t` must be a torch.Tensor, got {type(t).__name__}")
    if t.numel() == 0 or t.dim() == 0:
        return False
    x = t.detach().to(torch.float32)
    if not torch.isfinite(x).all():
        return False
    in_range = bool(((x >= -atol) & (x <= 1 + atol)).all())
    sums = x.sum(dim=-1)
    slack = atol * max(1, x.shape[-1]) ** 0.5
    return in_range and bool(((sums - 1).abs() <= slack).all())


def router_scores(site: MoESite, module_output: Any) -> torch.Tensor:
    """Raw router logits ``[tokens, n_experts]`` as float32, from the router's forward output.

    Parameters
    ----------
    site : MoESite
        The site whose ``router`` produced the output.
    module_output : tuple or torch.Tensor
        What a forward hook on ``site.router`` receives as ``output``: for every supported family
        ``(router_logits, top_k_weights, top_k_index)``.

    Raises
    ------
    CaptureError
        The output is not logits of the expected width, or looks like probabilities (a replaced
        router kernel would change what is read).
    """
    logits = module_output[0] if isinstance(module_output, (tuple, list)) else module_output
    if not isinstance(logits, torch.Tensor) or logits.shape[-1] != site.spec.n_experts:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CaptureError(
            f"router of {site.name!r} returned {shape} where [tokens, {site.spec.n_experts}] logits were expected",
            hint="the router's forward was replaced (e.g. a hub kernel); load without use_kernels",
        )
    out = logits.detach().reshape(-1, site.spec.n_experts).to(torch.float32)
    if looks_like_probabilities(out):
        raise CaptureError(
            f"router of {site.name!r} returned rows that look like probabilities, not logits",
            hint="the router's forward was replaced (e.g. a hub kernel); load without use_kernels",
        )
    return out


def _expert_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    index = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)
    weights = kwargs.get("top_k_weights", args[2] if len(args) > 2 else None)
    return index, weights


def used_routing(
    site: MoESite, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing the block passed to its experts, from a forward pre-hook on ``site.experts``.

    Parameters
    ----------
    site : MoESite
        The site whose ``experts`` module was called.
    args, kwargs
        What ``register_forward_pre_hook(..., with_kwargs=True)`` passes: the experts module is
        called as ``experts(hidden_states, top_k_index, top_k_weights)``.

    Returns
    -------
    indices : torch.Tensor
        ``[tokens, top_k]`` int64 expert ids, in the order the model produced them (DeepSeek-V3
        selects with ``sorted=False``; compare as sets).
    weights : torch.Tensor
        ``[tokens, top_k]`` float32 routed weights, aligned with ``indices``.

    Raises
    ------
    CaptureError
        The inputs are missing or not ``[tokens, top_k]``.
    """
    index, weights = _expert_inputs(args, kwargs)
    k = site.spec.top_k
    ok = all(isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == k for t in (index, weights))
    if not ok or index.shape != weights.shape:
        raise CaptureError(
            f"experts of {site.name!r} were not called with (hidden_states, top_k_index, top_k_weights) "
            f"of width top_k={k}",
            hint="the MoE block's forward differs from transformers 5.x; check the pinned version",
        )
    return (
        index.detach().reshape(-1, k).to(torch.int64),
        weights.detach().reshape(-1, k).to(torch.float32),
    )


def _reconstruct_iv(logits: torch.Tensor, spec: RouterSpec, bias: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != spec.n_experts:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"`logits` must be [tokens, {spec.n_experts}], got {shape}")
    if not 1 <= spec.top_k <= spec.n_experts:
        raise ValueError(f"`spec.top_k` must be in [1, {spec.n_experts}], got {spec.top_k}")
    if spec.score_fn not in ("softmax", "sigmoid"):
        raise ValueError(f"`spec.score_fn` must be 'softmax' or 'sigmoid', got {spec.score_fn!r}")
    if spec.selection_bias and bias is None:
        raise ValueError("`bias` is required when `spec.selection_bias` is true (see router_bias)")
    if not spec.selection_bias and bias is not None:
        raise ValueError("`bias` was given but `spec.selection_bias` is false")
    if bias is not None and tuple(bias.shape) != (spec.n_experts,):
        raise ValueError(f"`bias` must be [{spec.n_experts}], got {tuple(bias.shape)}")
    if spec.n_group < 1 or spec.n_experts % spec.n_group or not 1 <= spec.topk_group <= spec.n_group:
        raise ValueError(
            f"`spec.n_group`={spec.n_group} must divide n_experts={spec.n_experts} and "
            f"`spec.topk_group`={spec.topk_group} must be in [1, n_group]"
        )
    return logits.detach().to(torch.float32)


def _kth_gap(choice: torch.Tensor, k: int) -> torch.Tensor:
    """(score[k-th] - score[(k+1)-th]) / max(1, |score[k-th]|) per row: the gap relative to the scale at
    which the scores are rounded; +inf when there is no (k+1)-th finite choice."""
    if k >= choice.shape[1]:
        return torch.full((choice.shape[0],), math.inf, device=choice.device)
    top = torch.topk(choice, k + 1, dim=-1).values
    gap = (top[:, k - 1] - top[:, k]) / torch.clamp(top[:, k - 1].abs(), min=1.0)
    return torch.where(torch.isfinite(top[:, k]), gap, torch.full_like(gap, math.inf))


def _group_mask(choice: torch.Tensor, spec: RouterSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped selection as DeepSeek-V3 does it: keep the groups whose best two scores sum highest.

    Returns the choice scores with experts of dropped groups at -inf, and the gap between the last
    kept and the first dropped group score (+inf when every group is kept).
    """
    tokens = choice.shape[0]
    size = spec.n_experts // spec.n_group
    grouped = choice.view(tokens, spec.n_group, size)
    group_scores = grouped.topk(min(2, size), dim=-1).values.sum(dim=-1)
    kept = torch.topk(group_scores, spec.topk_group, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
    masked = grouped.masked_fill(~mask.unsqueeze(-1), -math.inf).reshape(tokens, spec.n_experts)
    return masked, _kth_gap(group_scores, spec.topk_group)


def reconstruct_routing(
    logits: torch.Tensor, spec: RouterSpec, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-derive the routing from raw router logits, independently of the model's code.

    Parameters
    ----------
    logits : torch.Tensor
        ``[tokens, n_experts]`` raw router logits (as from :func:`router_scores`).
    spec : RouterSpec
        The family's routing rule.
    bias : torch.Tensor, optional
        ``[n_experts]`` selection bias; required exactly when ``spec.selection_bias``.

    Returns
    -------
    idx : torch.Tensor
        ``[tokens, top_k]`` int64, best selection score first.
    weights : torch.Tensor
        ``[tokens, top_k]`` float32 routed weights aligned with ``idx``.
    kth_gap : torch.Tensor
        ``[tokens]`` float32: k-th minus (k+1)-th score where the router ranks (the logits of a
        softmax family, whose ranking softmax keeps; the biased sigmoid score of DeepSeek-V3),
        divided by ``max(1, |k-th score|)``: a gap relative to the scale at which the scores are
        rounded. Small means a near-tie that rounding could flip; a dominant expert that makes the
        other probabilities tiny does not make the row a near-tie. With grouped selection it is the
        smaller of that gap and the (relative) gap between the last kept and first dropped group.

    Notes
    -----
    softmax families: ``p = softmax(logits)`` over all experts; select the top-k of ``p``;
    weights ``p[idx]``, divided by their sum when ``renormalize`` (Qwen3.5-MoE, Mixtral; Qwen3-MoE,
    Qwen2-MoE, OLMoE per ``norm_topk_prob``). The ranking is that of the logits (softmax is
    monotone), and near-ties are measured there.

    sigmoid (DeepSeek-V3): ``s = sigmoid(logits)``; selection on ``c = s + bias``: per group the
    sum of its top two ``c``, keep ``topk_group`` groups, top-k of ``c`` among their experts;
    weights ``s[idx]`` (un-biased), divided by ``sum + 1e-20`` when ``renormalize``, times
    ``routed_scaling``. The selection score space is ``c``.
    """
    x = _reconstruct_iv(logits, spec, bias)
    if spec.score_fn == "softmax":
        scores = torch.softmax(x, dim=-1)
        choice = scores
        group_gap = None
    else:
        scores = torch.sigmoid(x)
        choice = scores + bias.detach().to(torch.float32)
        group_gap = None
        if spec.n_group > 1 and spec.topk_group < spec.n_group:
            choice, group_gap = _group_mask(choice, spec)
    idx = torch.topk(choice, spec.top_k, dim=-1).indices
    weights = scores.gather(1, idx)
    if spec.renormalize:
        eps = 1e-20 if spec.score_fn == "sigmoid" else 0.0
        weights = weights / (weights.sum(dim=-1, keepdim=True) + eps)
    weights = weights * spec.routed_scaling
    gap = _kth_gap(x if spec.score_fn == "softmax" else choice, spec.top_k)
    if group_gap is not None:
        gap = torch.minimum(gap, group_gap)
    return idx.to(torch.int64), weights.to(torch.float32), gap.to(torch.float32)


def _compare_iv(used_idx, used_w, rec_idx, rec_w, kth_gap, tol) -> None:
    tensors = {"used_idx": used_idx, "used_w": used_w, "rec_idx": rec_idx, "rec_w": rec_w, "kth_gap": kth_gap}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if used_idx.dim() != 2:
        raise ValueError(f"`used_idx` must be [tokens, k], got {tuple(used_idx.shape)}")
    for name in ("used_w", "rec_idx", "rec_w"):
        if tensors[name].shape != used_idx.shape:
            raise ValueError(f"`{name}` must have the shape of `used_idx` {tuple(used_idx.shape)}, "
                             f"got {tuple(tensors[name].shape)}")
    if tuple(kth_gap.shape) != (used_idx.shape[0],):
        raise ValueError(f"`kth_gap` must be [{used_idx.shape[0]}], got {tuple(kth_gap.shape)}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}")


def _by_expert(idx: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(idx, dim=-1)
    return idx.gather(1, order), w.to(torch.float32).gather(1, order)


def compare_routing(
    used_idx: torch.Tensor,
    used_w: torch.Tensor,
    rec_idx: torch.Tensor,
    rec_w: torch.Tensor,
    kth_gap: torch.Tensor,
    tol: float,
    max_examples: int = 10,
) -> dict:
    """Count where the routing the model used differs from the reconstruction.

    Index sets are compared as sets (order within the top-k is ignored); weights are compared
    expert by expert on the tokens whose sets agree.

    Parameters
    ----------
    used_idx, used_w : torch.Tensor
        ``[tokens, k]`` from :func:`used_routing`.
    rec_idx, rec_w, kth_gap : torch.Tensor
        From :func:`reconstruct_routing`.
    tol : float
        A token is a near-tie when ``kth_gap < tol``.
    max_examples : int
        How many token rows of disagreements outside near-ties to list.

    Returns
    -------
    dict
        ``tokens``, ``set_disagreements``, ``weight_max_abs_diff`` (over agreeing tokens; 0.0 if
        none), ``near_ties``, ``disagreements_outside_near_ties`` and
        ``examples_outside_near_ties`` (token rows, at most ``max_examples``).
    """
    _compare_iv(used_idx, used_w, rec_idx, rec_w, kth_gap, tol)
    u_idx, u_w = _by_expert(used_idx.to(torch.int64), used_w)
    r_idx, r_w = _by_expert(rec_idx.to(torch.int64), rec_w)
    differ = (u_idx != r_idx).any(dim=-1)
    near = kth_gap.to(torch.float32) < tol
    outside = differ & ~near
    agree = ~differ
    diff = (u_w[agree] - r_w[agree]).abs()
    return {
        "tokens": int(used_idx.shape[0]),
        "set_disagreements": int(differ.sum()),
        "weight_max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "near_ties": int(near.sum()),
        "disagreements_outside_near_ties": int(outside.sum()),
        "examples_outside_near_ties": torch.nonzero(outside).flatten()[:max_examples].tolist(),
    }
