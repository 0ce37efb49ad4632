"""Routing hooks on every MoE site, behind a context manager that always removes them.

Per site two public PyTorch hooks are registered:

* a forward hook on ``site.router`` keeps the raw logits (:func:`capture.families.router_scores`),
  and a forward pre-hook on it keeps the residual stream it reads, for the layers asked for;
* a forward pre-hook (``with_kwargs=True``) on ``site.experts`` reads the routing the block actually
  passed to its experts (:func:`capture.families.used_routing`), reduces it into the zone accumulators
  (:mod:`capture.reduce`), and keeps it with the step's router logits.

Nothing in a hook copies to the host: per-token top-k rows, router logits and residuals are kept as device
tensors. :meth:`RoutingRecorder.finish_batch` compares every step's used routing with its reconstruction
from the logits in one pass per site (the comparison is row by row, so one pass gives the same flags as
one per step, without a step's handful of tiny tensor ops per layer) and copies once per batch. The
logits cost ``rows x experts`` float32 per site on the device until then.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from . import families
from .reduce import accumulate, routing_flags, slot_onehot
from .zones import N_DISJOINT

NEAR_TIE = 1
DISAGREE = 2


@dataclass
class BatchRouting:
    """One batch's routing, on the host.

    ``sel``/``wsum``: ``[n_sites, n_rows, 3, n_experts]`` float64; ``idx`` ``[N, n_sites, k]`` int16,
    ``weights`` float16,
    ``flags`` ``[N, n_sites]`` uint8 (bit 1 near-tie, bit 2 disagreement), ``gap`` ``[N, n_sites]``
    float32 -- one row per routing row of every forward, in forward order (the caller selects the
    rows that belong to a zone); ``residual``: layer -> ``[N, hidden]`` float16.
    """

    sel: np.ndarray
    wsum: np.ndarray
    idx: np.ndarray
    weights: np.ndarray
    flags: np.ndarray
    gap: np.ndarray
    residual: dict[int, np.ndarray]


class _SiteState:
    def __init__(self, site: families.MoESite):
        self.site = site
        self.bias = families.router_bias(site)
        self.logits: torch.Tensor | None = None
        self.sel = self.wsum = None
        self.steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # used ids, weights, router logits
        self.residual: list[torch.Tensor] = []
        self.checked = False


class RoutingRecorder:
    """Records the routing of every MoE site during capture forwards.

    Parameters
    ----------
    sites : sequence of MoESite
        From :func:`capture.families.find_moe_sites`.
    tie_tol : float
        A routing row is a near-tie when the k-th and (k+1)-th selection scores differ by less.
    weight_tol : float
        Used and reconstructed weights may differ by this much (bf16 rounding) without a
        disagreement being counted.
    residual_layers : sequence of int
        Layers whose router input (the residual stream the router reads) is kept per token.
    """

    def __init__(
        self,
        sites: Sequence[families.MoESite],
        *,
        tie_tol: float,
        weight_tol: float,
        residual_layers: Sequence[int] = (),
    ):
        self.states = [_SiteState(s) for s in sites]
        self.tie_tol = float(tie_tol)
        self.weight_tol = float(weight_tol)
        self.residual_layers = set(int(x) for x in residual_layers)
        self.n_rows = 0
        self._slots: torch.Tensor | None = None
        self._onehot: dict[torch.device, torch.Tensor] = {}

    # -- batch / forward bookkeeping (called by the decode loop) -------------------------------
    def start_batch(self, n_rows: int) -> None:
        self.n_rows = n_rows
        for st in self.states:
            st.sel = st.wsum = None
            st.steps, st.residual, st.logits = [], [], None
            st.checked = False  # the first forward of a batch validates the router output

    def set_slots(self, slots: torch.Tensor) -> None:
        """Slots of the next forward's routing rows, flattened ``[batch * seq]`` (see reduce)."""
        self._slots = slots
        self._onehot = {}

    def _onehot_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._onehot:
            self._onehot[device] = slot_onehot(self._slots.to(device, non_blocking=True), self.n_rows)
        return self._onehot[device]

    # -- hooks ----------------------------------------------------------------------------------
    def _router_pre(self, st: _SiteState):
        def hook(module, args):
            st.residual.append(args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float16))

        return hook

    def _router_post(self, st: _SiteState):
        def hook(module, args, output):
            if st.checked:
                # Same read as router_scores, without its host-syncing probability check.
                logits = output[0] if isinstance(output, (tuple, list)) else output
                st.logits = logits.detach().reshape(-1, st.site.spec.n_experts).to(torch.float32)
            else:
                st.logits = families.router_scores(st.site, output)
                st.checked = True

        return hook

    def _experts_pre(self, st: _SiteState):
        def hook(module, args, kwargs):
            used_idx, used_w = families.used_routing(st.site, args, kwargs)
            logits, st.logits = st.logits, None
            onehot = self._onehot_on(used_idx.device)
            if st.sel is None:
                shape = (onehot.shape[1], st.site.spec.n_experts)
                st.sel = torch.zeros(shape, dtype=torch.float32, device=used_idx.device)
                st.wsum = torch.zeros_like(st.sel)
            accumulate(st.sel, st.wsum, onehot, used_idx, used_w)
            # the reconstruction and its flags are row-wise: done once per batch over every step's rows
            # (finish_batch), not per step, where at batch 1 their dispatch cost was most of the hook's
            st.steps.append((used_idx, used_w.to(torch.float32), logits))

        return hook

    @contextmanager
    def hooked(self) -> Iterator["RoutingRecorder"]:
        """Register every hook; remove them all on exit, whatever happened."""
        handles = []
        try:
            for st in self.states:
                site = st.site
                if site.layer in self.residual_layers:
                    handles.append(site.router.register_forward_pre_hook(self._router_pre(st)))
                handles.append(site.router.register_forward_hook(self._router_post(st)))
                handles.append(site.experts.register_forward_pre_hook(self._experts_pre(st), with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    # -- one host copy per batch ------------------------------------------------------------------
    def _checked_rows(self, st: "_SiteState") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One site's rows of the batch, every step's concatenated: the used routing (int16 ids, float16
        weights), its flags against the reconstruction from the router logits, and the k-th gap."""
        used_idx = torch.cat([s[0] for s in st.steps])
        used_w = torch.cat([s[1] for s in st.steps])
        logits = torch.cat([s[2] for s in st.steps])
        rec_idx, rec_w, gap = families.reconstruct_routing(logits, st.site.spec, st.bias)
        differ, near = routing_flags(used_idx, used_w, rec_idx, rec_w, gap, self.tie_tol, self.weight_tol)
        flags = near.to(torch.uint8) * NEAR_TIE + differ.to(torch.uint8) * DISAGREE
        return (used_idx.to(torch.int16).cpu().numpy(), used_w.to(torch.float16).cpu().numpy(),
                flags.cpu().numpy(), gap.cpu().numpy())

    def finish_batch(self) -> BatchRouting:
        n, z = self.n_rows, N_DISJOINT

        def per_zone(t: torch.Tensor) -> np.ndarray:
            return t[: n * z].reshape(n, z, *t.shape[1:]).cpu().numpy()

        sel = np.stack([per_zone(st.sel) for st in self.states]).astype(np.float64)
        wsum = np.stack([per_zone(st.wsum) for st in self.states]).astype(np.float64)
        rows = [self._checked_rows(st) for st in self.states]
        idx = np.stack([r[0] for r in rows], axis=1)
        w = np.stack([r[1] for r in rows], axis=1)
        flags = np.stack([r[2] for r in rows], axis=1)
        gap = np.stack([r[3] for r in rows], axis=1)
        residual = {
            st.site.layer: torch.cat(st.residual).cpu().numpy() for st in self.states if st.residual
        }
        for st in self.states:
            st.steps, st.residual = [], []
        return BatchRouting(sel, wsum, idx, w, flags, gap.astype(np.float32), residual)
