"""The relabeling engine shared by :mod:`stats.permutation` and :mod:`stats.baseline`.

One matrix product per chunk of relabelings: ``R (B×N) @ Z (N×F)`` where ``R`` holds 0/1 group
labels (two-sample designs) or ±1 signs (paired designs) and ``Z`` is the data, prepared once so that
the product is directly a *score* that orders relabelings the same way the statistic does. After the
product, a handful of vectorised passes: per-unit exceedance counts, per-relabeling maxima (single-step
max-T) and a blocked suffix maximum in the order of the observed statistics (step-down max-T).
There is no Python loop over units or relabelings; the only loop is over chunks of ``batch`` rows.

Preparation (what makes one product enough)
-------------------------------------------
Two-sample, ``N = n1 + n2``, ``s = Σ_{i∈A} z_i`` with ``z`` centred per unit:

* ``mean_diff``: ``z = (x - x̄)·N/(n1·n2)``, so ``s = x̄_A - x̄_B`` exactly.
* ``student_t``: ``z = (x - x̄)/sd`` so every unit has total sum of squares ``N - 1`` and
  ``t = D / sqrt(((N-1) - n1·n2/N·D²)/(N-2) · N/(n1·n2))`` with ``D = s·N/(n1·n2)``: one odd increasing
  function of ``s``, the same for every unit, so comparing ``s`` is comparing ``t``.
* ``welch_t`` with ``n1 == n2``: identical to Student's statistic (the variance terms reduce to the
  pooled one), so the same path. With ``n1 != n2`` a second product ``R @ z²`` gives the group sums of
  squares and ``t`` is evaluated elementwise (about twice the cost).

Paired (sign flips), ``m = Σ_i ε_i z_i``: sign flips keep ``Σ d²`` fixed, so

* ``mean``: ``z = d/N``, ``m`` is the mean of the flipped differences.
* ``paired_t``: ``z = d/(N·sqrt(Σd²/N))`` so ``t = m·sqrt((N-1)/(1-m²))`` for every unit.

Ties are counted against: a relabeling counts when its score is ``>= observed - γ`` with
``γ = rtol·(|observed| + scale)``, ``rtol = 100·eps`` of the working dtype (float64) or ``64·eps``
(float32), ``scale`` the unit's null spread. This makes the count independent of the summation order
the BLAS picks for a given ``batch`` (the same idea as ``scipy.stats.permutation_test``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

TWO_SAMPLE_STATISTICS = ("mean_diff", "student_t", "welch_t")
PAIRED_STATISTICS = ("mean", "paired_t")
ALTERNATIVES = ("two-sided", "greater", "less")

#: rows drawn from the generator at a time for Monte Carlo relabelings; fixed so that the
#: relabelings (and so the results) do not depend on ``batch``.
_RNG_BLOCK = 1024
#: units per block for the step-down suffix maximum.
_SD_BLOCK = 64
#: default bound on the elements of one chunk (B·F); ``batch=None`` uses it.
_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class Prepared:
    """Data prepared for the engine; ``to_stat`` maps product-space values to the statistic."""

    z: np.ndarray  # N×F, working dtype
    z2: np.ndarray | None  # N×F squares (unbalanced Welch only)
    design: str  # "two_sample" | "paired"
    statistic: str
    n: int
    n1: int
    scale: np.ndarray  # F, typical null spread of the score (for the tie tolerance)
    to_stat: Callable[[np.ndarray], np.ndarray]
    rtol: float
    keep: np.ndarray  # boolean over the input units: True where the unit varies


def _student_from_s(s, n1, n2):
    n = n1 + n2
    d = s * (n / (n1 * n2))
    ssw = (n - 1) - (n1 * n2 / n) * d * d
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d / np.sqrt(np.maximum(ssw, 0) / (n - 2) * (n / (n1 * n2)))
    return np.where(d == 0, 0.0, t)


def _paired_t_from_m(m, n):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m * np.sqrt((n - 1) / np.maximum(1 - m * m, 0))
    return np.where(m == 0, 0.0, t)


def _welch_from_sums(s, q, n1, n2, xp=np):
    """Welch t from group-A sum ``s`` and sum of squares ``q`` of standardised data (total 0, N-1)."""
    n = n1 + n2
    va = (q - s * s / n1) / (n1 - 1)
    vb = ((n - 1) - q - s * s / n2) / (n2 - 1)
    num = s * (n / (n1 * n2))
    den = xp.sqrt(xp.clip(va / n1 + vb / n2, 0, None)) if xp is np else (va / n1 + vb / n2).clamp_min(0).sqrt()
    if xp is np:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / den
        return np.where(num == 0, 0.0, t)
    t = num / den
    return xp.where(num == 0, xp.zeros_like(t), t)


def prepare(x: np.ndarray, mask: np.ndarray | None, statistic: str, dtype) -> Prepared:
    """Prepare ``x`` (N×F, float64, finite) for the engine. ``mask`` is group A (None: paired)."""
    n = x.shape[0]
    dtype = np.dtype(dtype)
    rtol = float(np.finfo(dtype).eps) * (100.0 if dtype == np.float64 else 64.0)
    if mask is None:
        ss = np.einsum("nf,nf->f", x, x)
        keep = ss > 0
        xs = x[:, keep]
        ss = ss[keep]
        if statistic == "mean":
            z = xs / n
            scale = np.sqrt(ss) / n

            def to_stat(m):
                return m
        else:  # paired_t
            z = xs / (n * np.sqrt(ss / n))
            scale = np.full(xs.shape[1], 1.0 / np.sqrt(n))

            def to_stat(m):
                return _paired_t_from_m(m, n)

        return Prepared(np.ascontiguousarray(z, dtype), None, "paired", statistic, n, 0,
                        scale, to_stat, rtol, keep)
    n1 = int(mask.sum())
    n2 = n - n1
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    keep = sd > 0
    c = (x[:, keep] - mean[keep])
    sd = sd[keep]
    z2 = None
    if statistic == "mean_diff":
        z = c * (n / (n1 * n2))
        scale = sd * np.sqrt(n / (n1 * n2))

        def to_stat(s):
            return s
    elif statistic == "student_t" or (statistic == "welch_t" and n1 == n2):
        z = c / sd
        scale = np.full(z.shape[1], np.sqrt(n1 * n2 / n))

        def to_stat(s):
            return _student_from_s(s, n1, n2)
    else:  # unbalanced Welch: the score is t itself
        z = c / sd
        z2 = np.ascontiguousarray(z * z, dtype)
        scale = np.ones(z.shape[1])

        def to_stat(t):
            return t
    return Prepared(np.ascontiguousarray(z, dtype), z2, "two_sample", statistic, n, n1,
                    scale, to_stat, rtol, keep)


# ----------------------------------------------------------------------------------------------
# relabelings
# ----------------------------------------------------------------------------------------------

def count_relabelings(design: str, n: int, n1: int) -> int:
    return math.comb(n, n1) if design == "two_sample" else 2 ** n


def can_halve(design: str, n: int, n1: int, alternative: str) -> bool:
    """Two-sided exact enumeration needs only half the relabelings when the complement negates."""
    return alternative == "two-sided" and (design == "paired" or 2 * n1 == n)


def exact_relabelings(design: str, n: int, n1: int, half: bool, batch: int, dtype) -> Iterator[np.ndarray]:
    """All relabelings in a fixed order (``itertools.combinations`` order; sign vectors by bits)."""
    if design == "two_sample":
        if half:
            it = ((0,) + c for c in itertools.combinations(range(1, n), n1 - 1))
        else:
            it = itertools.combinations(range(n), n1)
        while True:
            rows = list(itertools.islice(it, batch))
            if not rows:
                return
            idx = np.array(rows, dtype=np.intp).reshape(len(rows), n1)
            r = np.zeros((len(rows), n), dtype=dtype)
            np.put_along_axis(r, idx, 1, axis=1)
            yield r
    else:
        total = 2 ** (n - 1) if half else 2 ** n
        bits = np.arange(n - 1 if half else n, dtype=np.int64)
        for start in range(0, total, batch):
            k = np.arange(start, min(start + batch, total), dtype=np.int64)
            flips = (k[:, None] >> bits) & 1
            signs = (1 - 2 * flips).astype(dtype)
            if half:
                signs = np.concatenate([np.ones((len(k), 1), dtype), signs], axis=1)
            yield signs


def random_relabelings(design: str, n: int, n1: int, n_resamples: int, rng: np.random.Generator,
                       batch: int, dtype) -> Iterator[np.ndarray]:
    """Monte Carlo relabelings drawn in fixed blocks of ``_RNG_BLOCK`` rows, re-cut to ``batch``.

    Two-sample: group A is the first ``n1`` items of a uniform random permutation
    (``Generator.permuted`` of ``0..N-1``).
    Paired: independent fair signs.
    """
    base = np.arange(n)

    def blocks():
        left = n_resamples
        while left > 0:
            b = min(_RNG_BLOCK, left)
            if design == "two_sample":
                idx = rng.permuted(np.broadcast_to(base, (b, n)), axis=1)[:, :n1]
                r = np.zeros((b, n), dtype=dtype)
                np.put_along_axis(r, idx, 1, axis=1)
            else:
                r = (1 - 2 * rng.integers(0, 2, size=(b, n), dtype=np.int8)).astype(dtype)
            left -= b
            yield r

    buf: list[np.ndarray] = []
    have = 0
    for blk in blocks():
        buf.append(blk)
        have += blk.shape[0]
        while have >= batch:
            cat = np.concatenate(buf) if len(buf) > 1 else buf[0]
            yield cat[:batch]
            rest = cat[batch:]
            buf = [rest] if rest.shape[0] else []
            have = rest.shape[0]
    if have:
        yield np.concatenate(buf) if len(buf) > 1 else buf[0]


# ----------------------------------------------------------------------------------------------
# the scan
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanResult:
    """Raw output of :func:`scan` over the units kept in ``Prepared`` (input order of kept units)."""

    observed: np.ndarray  # F, statistic
    observed_score: np.ndarray  # F, score (|stat|, stat or -stat in product space)
    count_unc: np.ndarray  # F, relabelings with score >= observed (ties against)
    count_ss: np.ndarray  # F, relabelings whose max score over units >= unit's observed
    count_sd: np.ndarray  # F, step-down successive-max counts (before monotonicity)
    null_max: np.ndarray  # P, max score over units per relabeling (product space)
    null_keep: np.ndarray | None  # P×K product-space values of the kept columns
    n_resamples: int  # P, the number of relabelings the counts are out of
    exact: bool
    thr: np.ndarray  # F, observed score minus tolerance


def _score(prep: Prepared, r: np.ndarray, alternative: str) -> tuple[np.ndarray, np.ndarray]:
    """Product-space values ``g`` (what ``to_stat`` maps) and scores for a chunk ``r``."""
    g = np.empty((r.shape[0], prep.z.shape[1]), prep.z.dtype)
    _product(prep, r, g)
    if alternative == "two-sided":
        s = np.abs(g)
    elif alternative == "greater":
        s = g
    else:
        s = -g
    return g, s


def _product(prep: Prepared, r: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = r @ z`` (or the unbalanced Welch t from ``r @ z`` and ``r @ z²``)."""
    np.matmul(r, prep.z, out=out)
    if prep.z2 is not None:
        q = r @ prep.z2
        out[...] = _welch_from_sums(out, q, prep.n1, prep.n - prep.n1)


def _block_max(sb: np.ndarray) -> np.ndarray:
    """Max over the last axis of a B×nb×k array.

    (torch's ``amax`` is about twice as fast in isolation, but its OpenMP workers spin after each
    call and slow the BLAS product that follows on a 2-core machine, so numpy it is.)
    """
    return sb.max(axis=2)


def scan(prep: Prepared, chunks: Iterator[np.ndarray], obs_row: np.ndarray, alternative: str, *,
         exact: bool, half: bool, keep_cols: np.ndarray | None, stepdown: bool) -> ScanResult:
    """Run the relabelings in ``chunks`` and collect counts, maxima and kept null columns."""
    nf = prep.z.shape[1]
    g_obs, s_obs = _score(prep, obs_row[None, :].astype(prep.z.dtype), alternative)
    g_obs = g_obs[0].astype(np.float64)
    s_obs = s_obs[0].astype(np.float64)
    thr = s_obs - prep.rtol * (np.abs(s_obs) + prep.scale)

    # units in descending order of observed score; step-down works on that order.
    order = np.argsort(-s_obs, kind="stable")
    k = _SD_BLOCK
    nb = -(-nf // k)
    pad = nb * k - nf
    zs = prep.z[:, order]
    z2s = prep.z2[:, order] if prep.z2 is not None else None
    if pad:
        zs = np.concatenate([zs, np.zeros((zs.shape[0], pad), zs.dtype)], axis=1)
        if z2s is not None:
            z2s = np.concatenate([z2s, np.zeros((z2s.shape[0], pad), z2s.dtype)], axis=1)
    sprep = Prepared(np.ascontiguousarray(zs), None if z2s is None else np.ascontiguousarray(z2s),
                     prep.design, prep.statistic, prep.n, prep.n1, prep.scale, prep.to_stat,
                     prep.rtol, prep.keep)
    thr_s = np.concatenate([thr[order], np.full(pad, np.inf)]).astype(zs.dtype)
    thr_b = thr_s.reshape(nb, k)
    thr_hi = thr_b.max(axis=1)
    thr_lo = thr_b.min(axis=1)
    pos_keep = None if keep_cols is None else np.argsort(order)[keep_cols]

    count_unc = np.zeros(nb * k, np.int64)
    sd_all = np.zeros(nb, np.int64)
    sd_part = np.zeros(nb * k, np.int64)
    maxima: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    gbuf = np.empty((0, nb * k), zs.dtype)
    bbuf = np.empty((0, nb * k), bool)
    p = 0
    for r in chunks:
        b = r.shape[0]
        p += b
        if b > gbuf.shape[0]:  # buffers reused across chunks: no page faults per chunk
            gbuf = np.empty((b, nb * k), zs.dtype)
            bbuf = np.empty((b, nb * k), bool)
        s = gbuf[:b]
        _product(sprep, r, s)
        if pos_keep is not None:
            kept.append(s[:, pos_keep].astype(np.float64))
        if alternative == "two-sided":
            np.abs(s, out=s)
        elif alternative == "less":
            np.negative(s, out=s)
        if pad:
            s[:, nf:] = -np.inf
        hit_buf = bbuf[:b]
        np.greater_equal(s, thr_s, out=hit_buf)
        count_unc += np.add.reduce(hit_buf, axis=0, dtype=np.int32)
        sb = s.reshape(b, nb, k)
        bmax = _block_max(sb)
        suf = np.maximum.accumulate(bmax[:, ::-1], axis=1)[:, ::-1]
        maxima.append(suf[:, 0].astype(np.float64))
        if not stepdown:
            continue
        nxt = np.empty_like(suf)
        nxt[:, :-1] = suf[:, 1:]
        nxt[:, -1] = -np.inf
        all_in = nxt >= thr_hi
        sd_all += np.count_nonzero(all_in, axis=0)
        amb = ~all_in & (suf >= thr_lo)
        bi, mi = np.nonzero(amb)
        if bi.size:
            sub = sb[bi, mi]  # A×k
            u = np.maximum.accumulate(sub[:, ::-1], axis=1)[:, ::-1]
            np.maximum(u, nxt[bi, mi][:, None], out=u)
            hit = u >= thr_b[mi]
            flat = (mi[:, None] * k + np.arange(k)).ravel()
            sd_part += np.bincount(flat, weights=hit.ravel(), minlength=nb * k).astype(np.int64)

    null_max = np.concatenate(maxima) if maxima else np.empty(0)
    null_keep = np.concatenate(kept) if kept else None
    count_unc = count_unc[:nf]
    count_sd = (np.repeat(sd_all, k) + sd_part)[:nf]
    if half:  # each relabeling stands for itself and its complement (score identical)
        p *= 2
        count_unc = count_unc * 2
        count_sd = count_sd * 2
        null_max = np.concatenate([null_max, null_max])
        if null_keep is not None:
            null_keep = np.concatenate([null_keep, -null_keep])
    srt = np.sort(null_max)
    count_ss = (srt.size - np.searchsorted(srt, thr_s[:nf].astype(np.float64), side="left"))
    inv = np.argsort(order)
    return ScanResult(
        observed=prep.to_stat(g_obs),
        observed_score=s_obs,
        count_unc=count_unc[inv],
        count_ss=count_ss[inv].astype(np.int64),
        count_sd=count_sd[inv] if stepdown else np.full(nf, -1, np.int64),
        null_max=null_max,
        null_keep=null_keep,
        n_resamples=p,
        exact=exact,
        thr=thr,
    )


def default_batch(n_units: int) -> int:
    return max(16, _CHUNK_ELEMENTS // max(1, n_units))


def pvalues_from_counts(count: np.ndarray, n_resamples: int, exact: bool) -> np.ndarray:
    """Exact: ``count/P`` (the identity is among the ``P``); Monte Carlo: ``(1 + count)/(1 + P)``."""
    count = np.asarray(count, dtype=np.float64)
    if exact:
        return np.minimum(count / n_resamples, 1.0)
    return np.minimum((1.0 + count) / (1.0 + n_resamples), 1.0)


def score_to_stat(prep: Prepared, score: np.ndarray, alternative: str) -> np.ndarray:
    """Map max scores back to statistic units (|stat| for two-sided, stat or -stat one-sided)."""
    if prep.z2 is not None or prep.statistic in ("mean_diff", "mean"):
        return score
    if alternative == "less":
        return -prep.to_stat(-score)
    return prep.to_stat(score)
