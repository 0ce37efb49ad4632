"""On-device reductions of routing rows, and the W/S/Q table they become.

Per forward pass and MoE layer, every routing row (token) carries a *slot*: ``row * 3 + zone`` for a
row in a disjoint zone (:mod:`capture.zones`), or the dump slot ``3 * n_rows`` for pads and finished
rows. The reductions are dense matrix products against the one-hot of the slots, so they run on the
model's device without a host sync and, unlike ``index_add_`` on CUDA, in a fixed summation order:
the same batch gives the same bits.

Definitions (per prompt, unit = (layer, expert), zone):

* ``n_tokens`` -- routing rows in the zone;
* ``n_selected`` -- rows whose top-k contains the expert;
* ``weight_sum`` -- sum over those rows of the routed weight the expert received;
* ``S = n_selected / n_tokens`` (NaN when ``n_tokens == 0``);
* ``Q = weight_sum / n_selected`` (NaN when ``n_selected == 0``);
* ``W = weight_sum / n_tokens`` (NaN when ``n_tokens == 0``), so ``W == S * Q`` wherever Q is
  defined and ``W == 0`` where the zone has tokens but the expert was never selected.
"""

from __future__ import annotations

import numpy as np
import torch

from .zones import N_DISJOINT, ZONES


def slot_onehot(slots: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[N, 3*n_rows + 1]`` float32 one-hot of the slots (last column: the dump slot)."""
    out = torch.zeros(slots.shape[0], N_DISJOINT * n_rows + 1, dtype=torch.float32, device=slots.device)
    return out.scatter_(1, slots.view(-1, 1), 1.0)


def accumulate(
    sel: torch.Tensor, wsum: torch.Tensor, onehot: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor
) -> None:
    """Add one forward's routing to ``sel`` and ``wsum`` (``[3*n_rows + 1, n_experts]``) in place."""
    n_experts = sel.shape[1]
    picked = torch.zeros(idx.shape[0], n_experts, dtype=torch.float32, device=idx.device)
    dense_w = picked.clone().scatter_(1, idx, weights.to(torch.float32))
    picked.scatter_(1, idx, 1.0)
    sel.add_(onehot.T @ picked)
    wsum.add_(onehot.T @ dense_w)


def routing_flags(
    used_idx: torch.Tensor,
    used_w: torch.Tensor,
    rec_idx: torch.Tensor,
    rec_w: torch.Tensor,
    kth_gap: torch.Tensor,
    tie_tol: float,
    weight_tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(disagree, near_tie)`` booleans, on device.

    A row disagrees when the used expert set differs from the reconstruction's, or when, with the
    same set, a weight differs by more than ``weight_tol``; it is a near-tie when
    ``kth_gap < tie_tol``. Same rule as :func:`capture.families.compare_routing`, without host syncs.
    """
    u_order = torch.argsort(used_idx, dim=-1)
    r_order = torch.argsort(rec_idx, dim=-1)
    u_idx, r_idx = used_idx.gather(1, u_order), rec_idx.gather(1, r_order)
    u_w, r_w = used_w.gather(1, u_order), rec_w.gather(1, r_order)
    differ = (u_idx != r_idx).any(dim=-1) | ((u_w - r_w).abs() > weight_tol).any(dim=-1)
    return differ, kth_gap < tie_tol


def units_frame_columns(
    prompt_ids: list[str],
    layers: list[int],
    sel: np.ndarray,
    wsum: np.ndarray,
    n_tokens: np.ndarray,
) -> dict[str, np.ndarray]:
    """The long W/S/Q table of one batch as columns, sorted by (prompt_id, layer, expert, zone).

    Parameters
    ----------
    prompt_ids : list of str
        One per batch row, in row order (the caller passes rows sorted by id).
    layers : list of int
        One per MoE site, in site order.
    sel, wsum : ndarray
        ``[n_sites, n_rows, 3, n_experts]`` disjoint-zone accumulators (float).
    n_tokens : ndarray
        ``[n_rows, 3]`` routing rows per disjoint zone.
    """
    n_sites, n_rows, _, n_experts = sel.shape
    # Four zones in ZONES order: prefill, generated (= trimmed + spill), trimmed, spill.
    z_sel = np.stack([sel[:, :, 0], sel[:, :, 1] + sel[:, :, 2], sel[:, :, 1], sel[:, :, 2]], axis=2)
    z_w = np.stack([wsum[:, :, 0], wsum[:, :, 1] + wsum[:, :, 2], wsum[:, :, 1], wsum[:, :, 2]], axis=2)
    z_n = np.stack([n_tokens[:, 0], n_tokens[:, 1] + n_tokens[:, 2], n_tokens[:, 1], n_tokens[:, 2]], axis=1)
    # Order the axes (row, site, expert, zone) so that a C-order ravel is the sort order.
    n_sel = np.rint(z_sel.transpose(1, 0, 3, 2)).astype(np.int64)
    w_sum = z_w.transpose(1, 0, 3, 2).astype(np.float64)
    n_tok = np.broadcast_to(z_n[:, None, None, :], n_sel.shape).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(n_tok > 0, n_sel / np.maximum(n_tok, 1), np.nan)
        Q = np.where(n_sel > 0, w_sum / np.maximum(n_sel, 1), np.nan)
        W = np.where(n_tok > 0, w_sum / np.maximum(n_tok, 1), np.nan)
    shape = n_sel.shape
    grid = np.indices(shape)
    return {
        "prompt_id": np.asarray(prompt_ids, dtype=object)[grid[0].ravel()],
        "layer": np.asarray(layers, dtype=np.int64)[grid[1].ravel()],
        "expert": grid[2].ravel().astype(np.int64),
        "zone": np.asarray(ZONES, dtype=object)[grid[3].ravel()],
        "n_tokens": n_tok.ravel(),
        "n_selected": n_sel.ravel(),
        "weight_sum": w_sum.ravel(),
        "S": S.ravel(),
        "Q": Q.ravel(),
        "W": W.ravel(),
    }
