"""Resampling under a null of equal means when the groups' variances may differ (two-sample).

A permutation test's null is that the labels are exchangeable (both groups drawn from one
distribution). When the groups' spreads differ, a small permutation p no longer means that the
*means* differ, and max-T over many units magnifies the error (bench/RESULTS.md, "Which baseline
null to preregister"). Here the null is imposed by centring each group on its own mean, and the
statistic is recomputed on resampled residuals, so every group keeps its own spread:

``wild`` (default)
    ``e*_i = ε_i·e_i`` with independent Rademacher signs ``ε_i = ±1`` (one sign per prompt, shared
    by every unit, so the correlation between units is kept). Since ``ε² = 1``, each group's sum of
    squares is fixed and one product per group, ``ε_A @ E_A``, gives every group sum
    (Wu 1986; Liu 1988; Mammen 1993; Davidson & Flachaire 2008 for Rademacher weights).
``bootstrap``
    ``e*`` drawn with replacement within each group (rows whole, so units stay correlated): the
    null-centred within-group bootstrap of Westfall & Young (1993, §2.6) and Pollard & van der Laan
    (2004), the resampling of R's ``multtest::MTP(..., nulldist="boot.ctr")`` for a t statistic.
    Two products per group (counts ``@ E`` and ``@ E²``).

Residuals are ``e_i = (x_i - x̄_g)·sqrt(n_g/(n_g-1))`` (the factor makes each resampled group
variance unbiased for ``s_g²``, as HC2 does for a group indicator). The t statistics are recomputed
on every resample (studentised, "bootstrap-t"), on data standardised per unit, with the variance
term floored as in :mod:`stats._engine` so that degenerate resamples (a group drawn constant) give
a finite score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from stats import _engine
from stats._common import unit_exponents

RESAMPLINGS = ("wild", "bootstrap")
#: default bound on the elements of one chunk (B·F): several chunk-sized buffers are live at once.
_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class ResidualPrep:
    """Null-centred residuals of the kept units and the observed statistic (product space)."""

    ea: np.ndarray  # n1×F residuals of group A (working dtype)
    eb: np.ndarray  # n2×F
    n1: int
    n2: int
    statistic: str
    resampling: str
    rtol: float
    floor: float
    scale: np.ndarray  # F, typical null spread of the score (tie tolerance)
    keep: np.ndarray  # over the input units: True where the unit varies
    g_obs: np.ndarray  # F, observed statistic, floored (float64)
    to_stat: Callable[[np.ndarray], np.ndarray]


def t_from_sums(sa, qa, sb, qb, n1: int, n2: int, statistic: str, floor: float):
    """The statistic from group sums ``sa, sb`` and sums of squares ``qa, qb`` (any broadcast).

    ``mean_diff = sa/n1 - sb/n2``; Welch ``num/sqrt(max(v_A/n1 + v_B/n2, floor))``; Student
    ``num/sqrt(max(s_p²·(1/n1 + 1/n2), floor))`` with ``v_g = (q_g - s_g²/n_g)/(n_g - 1)``.
    """
    ma = sa / n1
    mb = sb / n2
    return _t(ma - mb, qa - sa * ma, qb - sb * mb, n1, n2, statistic, floor)


def _t(num, ssa, ssb, n1: int, n2: int, statistic: str, floor: float):
    """The statistic from the mean difference and the groups' sums of squared deviations."""
    if statistic == "mean_diff":
        return num
    if statistic == "welch_t":
        v = ssa / ((n1 - 1) * n1) + ssb / ((n2 - 1) * n2)
    else:
        v = (ssa + ssb) / (n1 + n2 - 2) * (1.0 / n1 + 1.0 / n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / np.sqrt(np.maximum(v, floor))
    return np.where(num == 0, 0.0, t)


def prepare(x: np.ndarray, mask: np.ndarray, statistic: str, resampling: str, dtype) -> ResidualPrep:
    """Residuals and observed statistic of ``x`` (N×F, float64, finite); ``mask`` is group A."""
    n = x.shape[0]
    n1 = int(mask.sum())
    n2 = n - n1
    dtype = np.dtype(dtype)
    rtol = float(np.finfo(dtype).eps) * (100.0 if dtype == np.float64 else 64.0)
    keep = (x != x[:1]).any(axis=0)  # exact, and each unit scaled by a power of two: as stats._engine.prepare
    ex = unit_exponents(x)
    xk = x[:, keep] if ex is None else np.ldexp(x[:, keep], -ex[keep])
    sd = xk.std(axis=0, ddof=1)
    xk = xk - xk.mean(axis=0)
    if statistic == "mean_diff":
        if ex is not None:
            xk, sd = np.ldexp(xk, ex[keep]), np.ldexp(sd, ex[keep])
        _engine.check_range(xk, max(n1, n2), dtype, "values")
        scale = sd * np.sqrt(n / (n1 * n2))
        floor = 0.0

        def to_stat(g):
            return g
    else:
        xk = xk / sd  # standardised: total sum of squares N - 1, as in stats._engine
        scale = np.ones(xk.shape[1])
        floor = _engine.welch_floor(n1, n2, rtol)

        def to_stat(g):
            return _engine._welch_to_stat(g, rtol)
    a, b = xk[mask], xk[~mask]
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    ea, eb = a - ma, b - mb
    g_obs = _t(ma - mb, np.einsum("nf,nf->f", ea, ea), np.einsum("nf,nf->f", eb, eb), n1, n2,
               statistic, floor)
    ea = ea * math.sqrt(n1 / (n1 - 1))
    eb = eb * math.sqrt(n2 / (n2 - 1))
    return ResidualPrep(np.ascontiguousarray(ea, dtype), np.ascontiguousarray(eb, dtype), n1, n2,
                        statistic, resampling, rtol, floor, scale, keep,
                        np.asarray(g_obs, np.float64), to_stat)


def draws(resampling: str, n1: int, n2: int, n_resamples: int, rng: np.random.Generator,
          batch: int, dtype) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Weights per resample for group A (B×n1) and B (B×n2): Rademacher signs (``wild``) or
    multinomial counts (``bootstrap``), drawn in fixed blocks of ``_engine._RNG_BLOCK`` rows and
    re-cut to ``batch`` (so the draws do not depend on ``batch``)."""

    def counts(b, k):
        idx = rng.integers(0, k, size=(b, k)) + (np.arange(b) * k)[:, None]
        return np.bincount(idx.ravel(), minlength=b * k).reshape(b, k).astype(dtype)

    def blocks():
        left = n_resamples
        while left > 0:
            b = min(_engine._RNG_BLOCK, left)
            if resampling == "wild":
                w = (1 - 2 * rng.integers(0, 2, size=(b, n1 + n2), dtype=np.int8)).astype(dtype)
                yield w[:, :n1], w[:, n1:]
            else:
                wa = counts(b, n1)
                yield wa, counts(b, n2)
            left -= b

    buf_a: list[np.ndarray] = []
    buf_b: list[np.ndarray] = []
    have = 0
    for wa, wb in blocks():
        buf_a.append(wa)
        buf_b.append(wb)
        have += wa.shape[0]
        while have >= batch:
            ca, cb = np.concatenate(buf_a), np.concatenate(buf_b)
            yield ca[:batch], cb[:batch]
            buf_a, buf_b = [ca[batch:]], [cb[batch:]]
            have = ca.shape[0] - batch
            if not have:
                buf_a, buf_b = [], []
    if have:
        yield np.concatenate(buf_a), np.concatenate(buf_b)


def default_batch(n_units: int) -> int:
    return max(16, _CHUNK_ELEMENTS // max(1, n_units))


def scan(prep: ResidualPrep, alternative: str, n_resamples: int, rng: np.random.Generator,
         batch: int, *, keep_cols: np.ndarray | None, stepdown: bool) -> _engine.ScanResult:
    """Counts, maxima and kept null columns of the resampled statistics (see module notes)."""
    g_obs = prep.g_obs
    s_obs = {"two-sided": np.abs, "greater": lambda v: v, "less": np.negative}[alternative](g_obs)
    thr = _engine.thresholds(s_obs, prep.scale, prep.rtol)
    lay = _engine._Layout.of(s_obs, _engine._SD_BLOCK)
    ea, eb = lay.to_columns(prep.ea, 0), lay.to_columns(prep.eb, 0)
    dt = ea.dtype
    qa_fix = qb_fix = None
    ea2 = eb2 = None
    if prep.resampling == "wild":
        qa_fix, qb_fix = np.einsum("nf,nf->f", ea, ea), np.einsum("nf,nf->f", eb, eb)
    else:
        ea2, eb2 = ea * ea, eb * eb
    scratch = _engine._Scratch(ea.shape[1])

    def blocks():
        for wa, wb in draws(prep.resampling, prep.n1, prep.n2, n_resamples, rng, batch, dt):
            b = wa.shape[0]
            sa = np.matmul(wa, ea, out=scratch.get("sa", b, dt))
            sb = np.matmul(wb, eb, out=scratch.get("sb", b, dt))
            if qa_fix is not None:
                qa, qb = qa_fix, qb_fix
            else:
                qa = np.matmul(wa, ea2, out=scratch.get("qa", b, dt))
                qb = np.matmul(wb, eb2, out=scratch.get("qb", b, dt))
            t = t_from_sums(sa, qa, sb, qb, prep.n1, prep.n2, prep.statistic, prep.floor)
            yield np.asarray(t, dt)

    return _engine.collect(blocks(), lay, g_obs, s_obs, thr, prep.to_stat(g_obs), alternative, dt,
                           exact=False, half=False, keep_cols=keep_cols, stepdown=stepdown,
                           scratch=scratch)
