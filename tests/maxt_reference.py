"""The loop-over-relabelings reference the max-T engine is checked against (shared by the stats tests).

For every relabeling, the statistic of every unit is computed from scratch with numpy (no engine code),
then uncorrected, single-step and step-down max-T p-values are counted from the table. Ties count
against the unit (a relabeling ties when it is within 1e-9 relative of the observed value); a unit that
is separated (infinite statistic) ties only with infinite relabelings; a NaN statistic never exceeds.
"""

from __future__ import annotations

import numpy as np


def brute_maxt(x, mask, statistic, alternative, relabelings, exact):
    """(observed statistic, uncorrected p, single-step p, step-down p) per unit.

    ``exact``: the relabelings are the whole enumeration (identity included), p = count / P;
    otherwise Monte Carlo draws, p = (1 + count) / (1 + P).
    """
    def stat(lab):
        a, b = x[lab], x[~lab]
        diff = a.mean(0) - b.mean(0)
        if statistic == "mean_diff":
            return diff
        with np.errstate(divide="ignore", invalid="ignore"):
            if statistic == "student_t":
                na, nb = len(a), len(b)
                sp2 = ((na - 1) * a.var(0, ddof=1) + (nb - 1) * b.var(0, ddof=1)) / (na + nb - 2)
                return diff / np.sqrt(sp2 * (1 / na + 1 / nb))
            return diff / np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))

    sc = {"two-sided": np.abs, "greater": lambda v: v, "less": lambda v: -v}[alternative]
    t = sc(stat(mask))
    T = np.array([sc(stat(r.astype(bool))) for r in relabelings])
    T = np.where(np.isnan(T), -np.inf, T)
    with np.errstate(invalid="ignore"):
        thr = np.where(np.isinf(t), t, t - 1e-9 * (1 + np.abs(t)))
    P = len(T)
    pv = (lambda c: np.maximum(c, 1) / P) if exact else (lambda c: (1 + c) / (1 + P))
    o = np.argsort(-np.where(np.isnan(t), -np.inf, t), kind="stable")
    U = np.maximum.accumulate(T[:, o][:, ::-1], axis=1)[:, ::-1]
    raw = pv((U >= thr[o]).sum(0))
    p_sd = np.empty_like(raw)
    p_sd[o] = np.maximum.accumulate(raw)
    return t, pv((T >= thr).sum(0)), pv((T.max(1)[:, None] >= thr).sum(0)), p_sd
