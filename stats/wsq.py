"""W/S/Q: which component carries a unit's W effect (the journal's "mostly an S effect").

Per prompt: S = selection rate, Q = mean routed weight when selected (NaN when never selected),
W = S·Q (0 when never selected). A group that never selects the unit (S̄ = 0) has no Q; the
decomposition then says so (flag ``q_undefined``) and gives the whole ΔW to S (see
:func:`wsq_decomposition`, Notes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stats._common import Flag, as_1d_float, as_generator, check_confidence
from stats.effects import _d

__all__ = ["WSQResult", "wsq_decomposition"]


@dataclass(frozen=True)
class WSQResult:
    """Result of :func:`wsq_decomposition` (group A against group B).

    Attributes
    ----------
    s_a, s_b : float
        Mean selection rate per group (mean of per-prompt S).
    q_a, q_b : float
        Selection-weighted Q per group, ``mean(W)/mean(S)``, so that ``w = s·q`` exactly; NaN
        (undefined) for a group that never selects the unit.
    q_mean_a, q_mean_b : float
        Plain mean of per-prompt Q over the prompts where the unit was selected.
    w_a, w_b : float
        Mean of per-prompt W ("mean of means").
    delta_w, s_part, q_part : float
        ``ΔW = s_part + q_part`` with ``s_part = ΔS·(q_a+q_b)/2``, ``q_part = (s_a+s_b)/2·ΔQ``.
    s_share, s_share_ci : float, (float, float)
        ``s_part/ΔW`` with a stratified percentile bootstrap interval; 1 when exactly one group
        never selects the unit, in the estimate and in every resample where that happens.
    log_ratio_w, log_ratio_s, log_ratio_q : float
        ``ln(w_a/w_b) = ln(s_a/s_b) + ln(q_a/q_b)``; the ratio view of the same split.
    d_s, d_q, d_w : float
        Cohen's d of per-prompt S, Q (NaN prompts left out) and W.
    carrier : str
        ``"S"`` when ``s_share >= dominance``, ``"Q"`` when ``1 - s_share >= dominance``, ``"both"``
        otherwise, ``"none"`` when ``ΔW == 0``.
    n_q_missing_a, n_q_missing_b : int
        Prompts with no selection (Q undefined) per group.
    flags : tuple of Flag
        ``q_undefined`` (a group never selects the unit), ``s_share_resamples_undefined``
        (bootstrap resamples with ΔW = 0 left out of the interval).
    """

    n_a: int
    n_b: int
    s_a: float
    s_b: float
    q_a: float
    q_b: float
    q_mean_a: float
    q_mean_b: float
    w_a: float
    w_b: float
    delta_w: float
    s_part: float
    q_part: float
    s_share: float
    s_share_ci: tuple
    log_ratio_w: float
    log_ratio_s: float
    log_ratio_q: float
    d_s: float
    d_q: float
    d_w: float
    carrier: str
    dominance: float
    n_q_missing_a: int
    n_q_missing_b: int
    confidence: float
    flags: tuple = ()

    def to_frame(self) -> pd.DataFrame:
        """One row per component ``S, Q, W``: ``component, mean_a, mean_b, diff, log_ratio,
        cohen_d, part_of_delta_w, share_of_delta_w``."""
        return pd.DataFrame({
            "component": ["S", "Q", "W"],
            "mean_a": [self.s_a, self.q_a, self.w_a],
            "mean_b": [self.s_b, self.q_b, self.w_b],
            "diff": [self.s_a - self.s_b, self.q_a - self.q_b, self.delta_w],
            "log_ratio": [self.log_ratio_s, self.log_ratio_q, self.log_ratio_w],
            "cohen_d": [self.d_s, self.d_q, self.d_w],
            "part_of_delta_w": [self.s_part, self.q_part, self.delta_w],
            "share_of_delta_w": [self.s_share, 1.0 - self.s_share, 1.0],
        })


def _wsq_iv(s, q, group, dominance, confidence, n_boot):
    s = as_1d_float(s, "s")
    q = as_1d_float(q, "q")
    if q.shape != s.shape:
        raise ValueError(f"`q` must have the shape of `s` {s.shape}, got {q.shape}.")
    g = np.asarray(group)
    if g.shape != s.shape:
        raise ValueError(f"`group` must have one entry per prompt ({s.size}).")
    if g.dtype != bool:
        if not np.all(np.isin(g, (0, 1))):
            raise ValueError("`group` must be a boolean mask or 0/1 labels.")
        g = g.astype(bool)
    if not np.all(np.isfinite(s)) or np.any(s < 0) or np.any(s > 1):
        raise ValueError("`s` must be selection rates in [0, 1] with no NaN.")
    bad = (s > 0) & ~np.isfinite(q)
    if np.any(q[(s > 0) & ~bad] < 0):
        raise ValueError("`q` must be a mean routing weight (>= 0) where `s` > 0; got "
                         f"{int(np.sum(q[(s > 0) & ~bad] < 0))} negative value(s).")
    if bad.any():
        raise ValueError(f"`q` is NaN for {int(bad.sum())} prompt(s) where `s` > 0; Q may be NaN only "
                         "where the unit was never selected (s == 0).")
    if g.sum() < 2 or (~g).sum() < 2:
        raise ValueError("`group` must put at least 2 prompts in each group.")
    if not (0.5 < float(dominance) <= 1.0):
        raise ValueError("`dominance` must be in (0.5, 1].")
    confidence = check_confidence(confidence)
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 100):
        raise ValueError("`n_boot` must be an integer of at least 100.")
    return s, q, g, confidence


def _mean(x, axis=-1):
    """Mean over ``axis`` of the values in sorted order: the same multiset of values gives the same
    mean bit for bit, so two groups holding the same values in another order have ΔW = 0 exactly."""
    return np.sort(x, axis=axis).mean(axis=axis)


def _parts(s, w):
    """Vectorised over leading axes: group means -> (s_a, s_b, q_a, q_b, dw, s_part, q_part).

    ``q_g`` is ``w_g/s_g``; a group with ``s_g == 0`` takes the other group's ``q`` (both 0 when
    neither selects), so that ``ΔQ = 0`` and ``s_part = ΔW`` (see :func:`wsq_decomposition`).
    """
    sa, sb = s
    wa, wb = w
    with np.errstate(divide="ignore", invalid="ignore"):
        qa = np.where(sa > 0, wa / sa, 0.0)
        qb = np.where(sb > 0, wb / sb, 0.0)
    qa, qb = np.where(sa > 0, qa, qb), np.where(sb > 0, qb, qa)
    dw = wa - wb
    s_part = (sa - sb) * (qa + qb) / 2
    q_part = (sa + sb) / 2 * (qa - qb)
    return sa, sb, qa, qb, dw, s_part, q_part


def wsq_decomposition(s, q, group, *, dominance: float = 2 / 3, confidence: float = 0.95,
                      n_boot: int = 9_999, rng=None) -> WSQResult:
    """Split a unit's group difference in W into a selection (S) part and a weight (Q) part.

    Parameters
    ----------
    s, q : array_like, 1-D
        Per-prompt selection rate and mean weight when selected (NaN where ``s == 0``).
    group : array_like of bool
        True for group A (FIRE / target register).
    dominance : float
        Share of ΔW a component must carry to be named the carrier.
    confidence, n_boot, rng
        Bootstrap interval for the S share (prompts resampled within each group).

    Returns
    -------
    WSQResult

    Notes
    -----
    With group means ``S̄`` and ``W̄`` and the selection-weighted ``Q̄ = W̄/S̄`` (so ``W̄ = S̄·Q̄``
    holds exactly, unlike the mean of per-prompt Q), the symmetric (midpoint) decomposition
    ``ΔW = ΔS·(Q̄_A+Q̄_B)/2 + (S̄_A+S̄_B)/2·ΔQ`` is exact; so is ``ln(W̄_A/W̄_B) = ln(S̄_A/S̄_B) +
    ln(Q̄_A/Q̄_B)``.

    A group that never selects the unit (``S̄_B = 0``) has no Q: ``Q̄_B`` is undefined and is
    reported as NaN (flag ``q_undefined``). Its W is 0, so ``ΔW = W̄_A = S̄_A·Q̄_A``: the whole
    difference comes from selecting the unit against never selecting it, and the decomposition
    takes ``Q̄_B := Q̄_A`` (``ΔQ = 0``), so ``s_part = ΔW`` and the S share is 1. This is the limit
    of the ratio view for any finite ``Q̄_B > 0``: as ``S̄_B → 0``, ``ln(S̄_A/S̄_B) → ∞`` while
    ``ln(Q̄_A/Q̄_B)`` stays finite, so the S part of ``ln(W̄_A/W̄_B)`` tends to all of it.
    (The midpoint formula with ``Q̄_B = 0`` would give 1/2 whatever the data, and its limit as
    ``S̄_B → 0`` depends on a ``Q̄_B`` that was never observed.) The same rule is applied in every
    bootstrap resample, so resamples that happen to draw only non-selecting prompts of a group
    give a share of 1 rather than 1/2. When neither group selects the unit, ``ΔW = 0``, the share is
    NaN and the carrier ``"none"``.

    Checked in ``tests/stats/test_stats_wsq_register.py`` by the identities, on planted S-only and
    Q-only effects, and on never-selected groups against the hand-computed limit.
    """
    s, q, g, confidence = _wsq_iv(s, q, group, dominance, confidence, n_boot)
    w = np.where(s > 0, s * np.nan_to_num(q), 0.0)
    wa_mean, wb_mean = _mean(w[g]), _mean(w[~g])
    sa, sb, qa, qb, dw, s_part, q_part = _parts((_mean(s[g]), _mean(s[~g])), (wa_mean, wb_mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = float(s_part / dw) if dw != 0 else np.nan
        lrw, lrs, lrq = (float(np.log(wa_mean / wb_mean)), float(np.log(sa / sb)),
                         float(np.log(qa / qb)))
    gen = as_generator(rng)
    ia, ib = np.flatnonzero(g), np.flatnonzero(~g)
    ba = gen.choice(ia, size=(n_boot, ia.size))
    bb = gen.choice(ib, size=(n_boot, ib.size))
    bs = _parts((_mean(s[ba]), _mean(s[bb])), (_mean(w[ba]), _mean(w[bb])))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot_share = bs[5] / bs[4]
    n_dropped = int(np.sum(~np.isfinite(boot_share)))
    boot_share = boot_share[np.isfinite(boot_share)]
    alpha = 1 - confidence
    ci = ((float(np.quantile(boot_share, alpha / 2)), float(np.quantile(boot_share, 1 - alpha / 2)))
          if boot_share.size else (np.nan, np.nan))
    if dw == 0:
        carrier = "none"
    elif share >= dominance:
        carrier = "S"
    elif 1 - share >= dominance:
        carrier = "Q"
    else:
        carrier = "both"
    flags = []
    for label, s_g in (("A", sa), ("B", sb)):
        if s_g == 0 and dw != 0:
            flags.append(Flag("q_undefined",
                              f"group {label} never selects the unit (mean S = 0), so its Q is "
                              "undefined (reported as NaN); the whole ΔW is a selection effect "
                              "and the S share is 1"))
    if n_dropped and boot_share.size:
        flags.append(Flag("s_share_resamples_undefined",
                          f"{n_dropped} of {n_boot} bootstrap resamples have ΔW = 0 (no S share) "
                          "and are left out of the interval"))
    if sa == 0:
        qa = np.nan
    if sb == 0:
        qb = np.nan
    if sa == 0 or sb == 0:
        lrq = np.nan
    qa_sel, qb_sel = q[g & (s > 0)], q[~g & (s > 0)]
    with np.errstate(divide="ignore", invalid="ignore"):
        d_q = float(_d(qa_sel, qb_sel)) if qa_sel.size >= 2 and qb_sel.size >= 2 else np.nan
        d_s, d_w = float(_d(s[g], s[~g])), float(_d(w[g], w[~g]))
    return WSQResult(
        n_a=int(g.sum()), n_b=int((~g).sum()), s_a=float(sa), s_b=float(sb), q_a=float(qa),
        q_b=float(qb), q_mean_a=float(qa_sel.mean()) if qa_sel.size else np.nan,
        q_mean_b=float(qb_sel.mean()) if qb_sel.size else np.nan, w_a=float(wa_mean),
        w_b=float(wb_mean), delta_w=float(dw), s_part=float(s_part), q_part=float(q_part),
        s_share=share, s_share_ci=ci, log_ratio_w=lrw, log_ratio_s=lrs, log_ratio_q=lrq,
        d_s=d_s, d_q=d_q, d_w=d_w, carrier=carrier, dominance=float(dominance),
        n_q_missing_a=int(np.sum(g & (s == 0))), n_q_missing_b=int(np.sum(~g & (s == 0))),
        confidence=confidence, flags=tuple(flags),
    )
