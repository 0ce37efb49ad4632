"""The relabeling engine shared by :mod:`stats.permutation` and :mod:`stats.baseline`.

One matrix product per chunk of relabelings: ``R (B×N) @ Z (N×F)`` where ``R`` holds 0/1 group
labels (two-sample designs) or ±1 signs (paired designs) and ``Z`` is the data, prepared once so that
the product is directly a *score* that orders relabelings the same way the statistic does. After the
product, one compiled pass over the chunk (:mod:`stats._kernels`, numba) does what the numpy passes
do in four: the score (``abs`` or negation), a comparison with the observed thresholds counted per
unit (exceedance counts), and the maxima of 64-unit blocks (per-relabeling maxima for single-step
max-T, and a blocked suffix maximum in the order of the observed statistics for step-down max-T;
see :class:`_Layout`). The numpy passes (:meth:`_Tally.add`: ``abs`` in place, a comparison into a
bool buffer, uint8 column sums, one elementwise block maximum) run where numba is missing or
``LOCKSTEP_KERNELS=numpy``, with identical counts. There is no Python loop over units or
relabelings; the loops are over chunks of ``batch`` rows (default: about 8 M elements, so few BLAS
calls, each of which pays a thread hand-off on a loaded machine) and, for the numpy passes, over
row blocks of about 1 M elements inside a chunk, so a block stays in cache from the first pass to
the last.

Preparation (what makes one product enough)
-------------------------------------------
Two-sample, ``N = n1 + n2``, ``s = Σ_{i∈A} z_i`` with ``z`` centred per unit:

* ``mean_diff``: ``z = (x - x̄)·N/(n1·n2)``, so ``s = x̄_A - x̄_B`` exactly.
* ``student_t``: ``z = (x - x̄)/sd`` so every unit has total sum of squares ``N - 1`` and
  ``t = D / sqrt(((N-1) - n1·n2/N·D²)/(N-2) · N/(n1·n2))`` with ``D = s·N/(n1·n2)``: one odd increasing
  function of ``s``, the same for every unit, so comparing ``s`` is comparing ``t``.
* ``welch_t`` with ``n1 == n2``: identical to Student's statistic (the variance terms reduce to the
  pooled one), so the same path. With ``n1 != n2`` a second product ``R @ z²`` gives the group sums of
  squares and ``t`` is evaluated elementwise (about twice the cost), from the variance term expanded
  as ``a·q + b·s² + c`` (:func:`welch_coefficients`: one square root and one division per element).

Paired (sign flips), ``m = Σ_i ε_i z_i``: sign flips keep ``Σ d²`` fixed, so

* ``mean``: ``z = d/N``, ``m`` is the mean of the flipped differences.
* ``paired_t``: ``z = d/(N·sqrt(Σd²/N))`` so ``t = m·sqrt((N-1)/(1-m²))`` for every unit.

Ties are counted against: a relabeling counts when its score is ``>= observed - γ`` with
``γ = rtol·(|observed| + scale)``, ``rtol = 100·eps`` of the working dtype (float64) or ``64·eps``
(float32), ``scale`` the unit's null spread. This makes the count independent of the summation order
the BLAS picks for a given ``batch`` (the same idea as ``scipy.stats.permutation_test``): p-values,
ranks and decisions are the same whatever ``batch``; statistics and null values agree to a few ulp.

Separation and infinities
-------------------------
A unit that is constant within each group but differs between them has within-group variance 0
under the observed labelling (and, for ``n1 == n2``, its complement): its t is infinite. In product
space the relabelings are still ordered by a finite, well-conditioned score (``s`` for Student t
and balanced Welch, ``m`` for paired t). Unbalanced Welch computes ``t`` itself, from two sums
whose difference is pure rounding when a group is constant, so its variance term is floored:
``t = num/sqrt(max(v_A/n1 + v_B/n2, δ))`` with ``δ = rtol·(N-1)·N/(n1·n2)`` (standardised data,
total sum of squares ``N-1``). A separated labelling then scores ``num_max/sqrt(δ) = 1/sqrt(rtol)``
(6.7e6 in float64, 362 in float32) up to rounding, the same under the observed labelling and the
identity relabeling, so the tie rule counts it. ``to_stat`` reports every statistic whose variance
term is at that floor (Student: ``SS_within <= rtol·(N-1)``; paired t: ``1 - m² <= rtol``; Welch:
``|t| >= (1 - 2⁻¹⁰)/sqrt(rtol)``) as ``±inf``. Exact p-values are at least ``1/P`` (``2/P`` when
the complement is folded in), since the identity is one of the ``P`` relabelings; Monte Carlo
p-values are at least ``1/(P+1)`` by construction.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from stats._common import column_absmax, unit_exponents

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
#: elements per row block for the passes after the product (a block stays in cache across them).
_SUB_ELEMENTS = 1 << 20


@functools.lru_cache(maxsize=1)
def compiled():
    """The compiled passes (:mod:`stats._kernels`), or None for the numpy passes: where numba cannot
    be imported, or with ``LOCKSTEP_KERNELS=numpy``. Imported on first use (numba takes a second
    to import and compiles on first call, or loads its cache)."""
    import os

    if os.environ.get("LOCKSTEP_KERNELS", "").strip().lower() == "numpy":
        return None
    try:
        from stats import _kernels
    except ImportError:  # pragma: no cover - numba is a dependency; this is the fallback
        return None
    return _kernels


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
    floor: float = 0.0  # Welch variance floor (unbalanced Welch only)


def _student_from_s(s, n1, n2, rtol):
    """Student t from ``s`` (standardised data); ``±inf`` where ``SS_within <= rtol·(N-1)``."""
    n = n1 + n2
    d = s * (n / (n1 * n2))
    ssw = (n - 1) - (n1 * n2 / n) * d * d
    with np.errstate(divide="ignore", invalid="ignore"):
        t = d / np.sqrt(np.maximum(ssw, 0) / (n - 2) * (n / (n1 * n2)))
        t = np.where(ssw <= rtol * (n - 1), np.sign(d) * np.inf, t)
    return np.where(d == 0, 0.0, t)


def _paired_t_from_m(m, n, rtol):
    """Paired t from ``m`` (``Σd² = N·1`` scaling); ``±inf`` where ``1 - m² <= rtol``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m * np.sqrt((n - 1) / np.maximum(1 - m * m, 0))
        t = np.where(1 - m * m <= rtol, np.sign(m) * np.inf, t)
    return np.where(m == 0, 0.0, t)


def welch_floor(n1: int, n2: int, rtol: float) -> float:
    """``δ = rtol·(N-1)·N/(n1·n2)``: the floor of Welch's variance term on standardised data."""
    n = n1 + n2
    return rtol * (n - 1) * n / (n1 * n2)


def welch_inf_bound(rtol: float) -> float:
    """``|t|`` at or above which a floored Welch t is reported as infinite (see module notes)."""
    return (1.0 - 2.0 ** -10) / math.sqrt(rtol)


def _welch_to_stat(t, rtol):
    big = welch_inf_bound(rtol)
    t = np.asarray(t)
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(t) >= big, np.sign(t) * np.inf, t)


def welch_coefficients(n1: int, n2: int) -> tuple[float, float, float, float]:
    """``(a, b, c, r)`` with Welch's variance term ``v_A/n1 + v_B/n2 = a·q + b·s² + c`` and
    numerator ``r·s``, for group-A sum ``s`` and sum of squares ``q`` of standardised data (total
    0 and ``N-1``): ``v_A = (q - s²/n1)/(n1-1)``, ``v_B = ((N-1) - q - s²/n2)/(n2-1)`` expanded, so
    that the statistic costs one square root and one division per element, not seven."""
    n = n1 + n2
    a = 1.0 / (n1 * (n1 - 1)) - 1.0 / (n2 * (n2 - 1))
    b = -(1.0 / (n1 * n1 * (n1 - 1)) + 1.0 / (n2 * n2 * (n2 - 1)))
    c = (n - 1) / (n2 * (n2 - 1))
    return a, b, c, n / (n1 * n2)


def _welch_from_sums(s, q, n1, n2, floor):
    """Welch t from group-A sum ``s`` and sum of squares ``q`` of standardised data (total 0, N-1),
    with the variance term floored at ``floor`` (:func:`welch_floor`); see :func:`welch_coefficients`."""
    a, b, c, r = welch_coefficients(n1, n2)
    v = a * q + b * (s * s) + c
    den = np.sqrt(np.maximum(v, floor))
    num = s * r
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    return np.where(num == 0, 0.0, t)


def check_range(z: np.ndarray, n_terms: int, dtype, what: str) -> None:
    """``ValueError`` when the product cannot hold ``z`` (N×F, prepared, float64) in ``dtype``: a sum of
    ``n_terms`` of them could overflow, or a unit's values would underflow to zero (its statistic would
    read 0, or inf/NaN, and every p-value with it). Only mean differences need it: t statistics are
    computed on standardised data."""
    if not z.size:
        return
    fi = np.finfo(dtype)
    top = column_absmax(z)
    if np.isfinite(top).all() and top.max() * n_terms < fi.max and top.min() > fi.tiny:
        return
    fix = "pass dtype=numpy.float64 or rescale `x`" if dtype != np.float64 else "rescale `x`"
    raise ValueError(f"`x` has {what} outside the range of {dtype.name}, the working `dtype` "
                     f"(largest {top.max():.3g}, smallest unit's largest {top.min():.3g}, over {n_terms} terms "
                     f"of a sum; {dtype.name} spans {fi.tiny:.3g} to {fi.max:.3g}); {fix}.")


def prepare(x: np.ndarray, mask: np.ndarray | None, statistic: str, dtype) -> Prepared:
    """Prepare ``x`` (N×F, float64, finite) for the engine. ``mask`` is group A (None: paired).

    Which units vary is decided exactly (``x`` differs from its first row, or from 0 for paired
    differences), not from a computed sd, whose rounded mean can make a constant unit look varying.
    Each unit is scaled by a power of two (exact) so that its largest value lies in [0.5, 1) before
    squares are taken: data near 1e±154 and beyond neither overflow nor underflow, and the t statistics,
    being scale-free, are unchanged; mean differences are scaled back."""
    n = x.shape[0]
    dtype = np.dtype(dtype)
    rtol = float(np.finfo(dtype).eps) * (100.0 if dtype == np.float64 else 64.0)
    ex = unit_exponents(x)  # None: no unit needs scaling
    if mask is None:
        keep = (x != 0).any(axis=0)
        xs = x[:, keep] if ex is None else np.ldexp(x[:, keep], -ex[keep])
        ss = np.einsum("nf,nf->f", xs, xs)
        if statistic == "mean":
            z = (xs if ex is None else np.ldexp(xs, ex[keep])) / n
            scale = (np.sqrt(ss) if ex is None else np.ldexp(np.sqrt(ss), ex[keep])) / n
            check_range(z, n, dtype, "paired differences")

            def to_stat(m):
                return m
        else:  # paired_t
            z = xs / (n * np.sqrt(ss / n))
            scale = np.full(xs.shape[1], 1.0 / np.sqrt(n))

            def to_stat(m):
                return _paired_t_from_m(m, n, rtol)

        return Prepared(np.ascontiguousarray(z, dtype), None, "paired", statistic, n, 0,
                        scale, to_stat, rtol, keep)
    n1 = int(mask.sum())
    n2 = n - n1
    keep = (x != x[:1]).any(axis=0)  # exact: a rounded mean must not make a constant unit vary
    if ex is not None:
        x = np.ldexp(x, -ex)  # each unit's max |x| in [0.5, 1): exact; no overflow in the squares
    mean = x.mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    c = x - mean if keep.all() else x[:, keep] - mean[keep]  # a fresh array: scaled in place
    sd = sd[keep]
    z2 = None
    if statistic == "mean_diff":
        if ex is not None:
            c, sd = np.ldexp(c, ex[keep]), np.ldexp(sd, ex[keep])
        z = np.multiply(c, n / (n1 * n2), out=c)
        check_range(z, max(n1, n2), dtype, "values")
        scale = sd * np.sqrt(n / (n1 * n2))

        def to_stat(s):
            return s
    elif statistic == "student_t" or (statistic == "welch_t" and n1 == n2):
        z = np.divide(c, sd, out=c)
        scale = np.full(z.shape[1], np.sqrt(n1 * n2 / n))

        def to_stat(s):
            return _student_from_s(s, n1, n2, rtol)
    else:  # unbalanced Welch: the score is t itself
        z = np.divide(c, sd, out=c)
        z2 = np.ascontiguousarray(z * z, dtype)
        scale = np.ones(z.shape[1])

        def to_stat(t):
            return _welch_to_stat(t, rtol)
    floor = welch_floor(n1, n2, rtol) if z2 is not None else 0.0
    return Prepared(np.ascontiguousarray(z, dtype), z2, "two_sample", statistic, n, n1,
                    scale, to_stat, rtol, keep, floor)


# ----------------------------------------------------------------------------------------------
# relabelings
# ----------------------------------------------------------------------------------------------

def count_relabelings(design: str, n: int, n1: int) -> int:
    return math.comb(n, n1) if design == "two_sample" else 2 ** n


#: the most relabelings an exact enumeration may visit (a raised ``exact_cap`` cannot pass it).
EXACT_MAX = 10 ** 8
#: rough throughputs for the time estimate in the refusal (2-core VM, bench/RESULTS.md):
#: relabelings enumerated per second (``itertools.combinations`` and the 0/1 rows), and
#: relabeling × unit scores per second (product and passes, float64).
_ENUM_RATE, _SCORE_RATE = 1e6, 2e8


def check_exact(total: int, exact_cap: int, n_units: int, n_resamples: int) -> bool:
    """Whether to enumerate; ``ValueError`` naming ``exact_cap`` when enumeration would pass
    :data:`EXACT_MAX` (the count and a time estimate in the message)."""
    exact = total <= exact_cap
    if exact and total > EXACT_MAX:
        est = total / _ENUM_RATE + total * max(n_units, 1) / _SCORE_RATE
        raise ValueError(
            f"`exact_cap`={exact_cap:,} asks for exact enumeration of all {total:,} relabelings "
            f"(about {est / 3600:,.0f} h for {n_units:,} unit(s) at ~{_ENUM_RATE:.0e} "
            f"relabelings/s); at most {EXACT_MAX:,} are enumerated. Lower `exact_cap` below "
            f"{total:,} (the default is 200,000) to draw `n_resamples`={n_resamples:,} Monte Carlo "
            "relabelings instead.")
    return exact


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
    rows = np.arange(_RNG_BLOCK)[:, None] * n  # flat offset of each row

    def blocks():
        left = n_resamples
        while left > 0:
            b = min(_RNG_BLOCK, left)
            if design == "two_sample":
                idx = rng.permuted(np.broadcast_to(base, (b, n)), axis=1)[:, :n1]
                r = np.zeros((b, n), dtype=dtype)
                r.reshape(-1)[(idx + rows[:b]).reshape(-1)] = 1  # r[i, idx[i]] = 1
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
    min_count: int = 0  # exact: the identity (and its complement when folded) always counts


def _score(prep: Prepared, r: np.ndarray, alternative: str) -> tuple[np.ndarray, np.ndarray]:
    """Product-space values ``g`` (what ``to_stat`` maps) and scores for a chunk ``r``."""
    g = np.empty((r.shape[0], prep.z.shape[1]), prep.z.dtype)
    _product(prep, r, g, _Scratch(prep.z.shape[1]))
    if alternative == "two-sided":
        s = np.abs(g)
    elif alternative == "greater":
        s = g
    else:
        s = -g
    return g, s


class _Scratch:
    """Named ``rows × width`` work buffers, kept across chunks so that a chunk allocates nothing
    (fresh chunk-sized arrays cost a page fault per 4 KiB on every chunk)."""

    def __init__(self, width: int):
        self.width = width
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, rows: int, dtype) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = np.empty((rows, self.width), dtype)
            self._bufs[name] = buf
        return buf[:rows]


def _product(prep: Prepared, r: np.ndarray, out: np.ndarray, scratch: _Scratch) -> None:
    """``out[:] = r @ z`` (or the unbalanced Welch t from ``r @ z`` and ``r @ z²``)."""
    np.matmul(r, prep.z, out=out)
    if prep.z2 is not None:
        b, dt = r.shape[0], prep.z.dtype
        q = scratch.get("q", b, dt)
        np.matmul(r, prep.z2, out=q)
        _welch_inplace(out, q, scratch.get("w", b, dt), scratch.get("m", b, np.bool_), prep.n1,
                       prep.n - prep.n1, prep.floor)


def welch_constants(n1: int, n2: int, floor: float, dtype) -> np.ndarray:
    """``a, b, c, floor, r`` of :func:`welch_coefficients` in ``dtype``, as the compiled kernel
    takes them (the values numpy's weak Python scalars take when they meet an array of ``dtype``)."""
    a, b, c, r = welch_coefficients(n1, n2)
    return np.array([a, b, c, floor, r], dtype=dtype)


def _welch_inplace(s, q, w, zero, n1: int, n2: int, floor: float) -> None:
    """``s[:] = _welch_from_sums(s, q, n1, n2, floor)`` using ``q``, ``w``, ``zero`` as scratch.

    The same operations in the same order as :func:`_welch_from_sums` (so the same rounding,
    bit for bit), without its chunk-sized temporaries; the compiled kernel does the same.
    """
    a, b, c, r = welch_coefficients(n1, n2)
    np.multiply(s, s, out=w)
    np.multiply(q, a, out=q)
    np.multiply(w, b, out=w)
    np.add(q, w, out=q)
    np.add(q, c, out=q)
    np.maximum(q, floor, out=q)
    np.sqrt(q, out=q)  # den
    np.multiply(s, r, out=s)  # num
    np.equal(s, 0, out=zero)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(s, q, out=s)
    np.copyto(s, 0, where=zero)


@dataclass(frozen=True)
class _Layout:
    """Where each unit sits in a chunk's columns.

    Units are taken in descending order of observed score (the step-down order) and cut into
    ``nb`` blocks of ``k``; sorted position ``b·k + j`` is stored in column ``j·nb + b``. Viewed
    as ``B×k×nb``, a chunk's block maxima are then an elementwise maximum over ``k`` contiguous
    rows of ``nb`` values (SIMD), not ``B·nb`` short reductions of ``k`` values (about 3× slower).
    The last ``pad`` sorted positions are padding (a zero column, score set to -inf).
    """

    order: np.ndarray  # sorted position -> unit
    k: int
    nb: int
    pad: int
    col: np.ndarray  # sorted position (padded) -> column

    @classmethod
    def of(cls, s_obs: np.ndarray, k: int) -> "_Layout":
        nf = s_obs.size
        nb = -(-nf // k)
        q = np.arange(nb * k)
        return cls(np.argsort(-s_obs, kind="stable"), k, nb, nb * k - nf, (q % k) * nb + q // k)

    def to_columns(self, v: np.ndarray, fill) -> np.ndarray:
        """Per-unit ``v`` (F, or N×F) placed in column order (one gather), padding set to ``fill``."""
        nf = self.order.size
        src = np.zeros(self.col.size, np.intp)
        src[self.col[:nf]] = self.order
        out = np.take(v, src, axis=-1)
        out[..., self.col[nf:]] = fill
        return out

    def from_columns(self, v: np.ndarray) -> np.ndarray:
        """Column-order ``v`` back to sorted order (padding dropped)."""
        return v[self.col][: self.col.size - self.pad]


class _Tally:
    """Counts and maxima accumulated chunk by chunk, all in column order (see :class:`_Layout`)."""

    def __init__(self, lay: _Layout, thr_sorted: np.ndarray, dtype, stepdown: bool):
        k, nb = lay.k, lay.nb
        self.lay = lay
        self.stepdown = stepdown
        self.last = lay.k - 1
        thr_s = np.concatenate([thr_sorted, np.full(lay.pad, np.inf)]).astype(dtype)
        self.thr_cols = np.empty_like(thr_s)
        self.thr_cols[lay.col] = thr_s
        self.thr_b = thr_s.reshape(nb, k)  # sorted order, by block
        self.thr_hi = self.thr_b.max(axis=1)
        self.thr_lo = self.thr_b.min(axis=1)
        self.count_unc = np.zeros(nb * k, np.int64)  # column order
        self.sd_all = np.zeros(nb, np.int64)
        self.sd_part = np.zeros(nb * k, np.int64)  # sorted order
        self.maxima: list[np.ndarray] = []

    def add(self, s: np.ndarray, hit: np.ndarray) -> None:
        """Take one chunk of scores ``s`` (B×cols, padding at -inf); ``hit`` is a bool buffer."""
        lay, b = self.lay, s.shape[0]
        np.greater_equal(s, self.thr_cols, out=hit)
        h8 = hit.view(np.uint8)
        for i in range(0, b, 255):  # uint8 column sums: no widening cast, no overflow
            self.count_unc += np.add.reduce(h8[i:i + 255], axis=0, dtype=np.uint8)
        s3 = s.reshape(b, lay.k, lay.nb)
        bmax = np.maximum.reduce(s3, axis=1)  # B×nb, block maxima in sorted block order
        suf = np.maximum.accumulate(bmax[:, ::-1], axis=1)[:, ::-1]
        self.maxima.append(suf[:, 0].astype(np.float64))
        if self.stepdown:
            self._step_down(s3, suf)

    def add_compiled(self, kern, g: np.ndarray, alternative: str,
                     welch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Take one chunk of product-space values ``g`` (not yet scored; padding anywhere) through
        :func:`stats._kernels.tally`: the same counts and maxima as :meth:`add`. With ``welch`` =
        ``(q, constants)``, ``g`` holds group sums and ``q`` sums of squares, and the kernel computes
        the Welch t as it reads them (:func:`welch_constants`)."""
        lay, (b, width) = self.lay, g.shape
        dt = g.dtype
        cnt = np.zeros(width, np.int32)  # int32 per chunk (a chunk has < 2³¹ rows)
        sd_all = np.zeros(lay.nb, np.int32)
        sd_part = np.zeros(lay.nb * lay.k, np.int32)
        maxima = np.empty(b, np.float64)
        mode = {"two-sided": 0, "greater": 1, "less": 2}[alternative]
        it = np.int32 if dt == np.float32 else np.int64
        ii = np.iinfo(it)
        ic = np.array([ii.max, ii.min, ii.bits - 1, ii.min], it)
        bbits = np.empty(lay.nb, it)
        q, wc = welch if welch is not None else (g, np.empty(0, dt))
        tbuf = np.empty(width if welch is not None else 0, dt)
        kern.tally(g, g.view(it), q, wc, tbuf, tbuf.view(it), ic, self.thr_cols, mode, lay.k,
                   lay.nb, lay.pad, self.thr_b, self.thr_hi, self.thr_lo, self.stepdown, cnt,
                   sd_all, sd_part, maxima, np.empty(lay.nb, it), bbits, bbits.view(dt))
        self.count_unc += cnt
        self.maxima.append(maxima)
        if self.stepdown:
            self.sd_all += sd_all
            self.sd_part += sd_part

    def _step_down(self, s3: np.ndarray, suf: np.ndarray) -> None:
        """Successive maxima: whole blocks where the suffix maximum clears (or misses) every
        threshold in the block, element by element only in blocks that straddle.

        Every successive maximum inside block ``m`` is at least ``max(nxt, last)``: the maximum
        over the later blocks and the block's own last unit, which is in every suffix of it. When
        that clears the block's highest threshold the whole block counts without looking inside
        (this settles, e.g., the last block, whose thresholds are near 0).
        """
        k = self.lay.k
        nxt = np.empty_like(suf)
        nxt[:, :-1] = suf[:, 1:]
        nxt[:, -1] = -np.inf
        low = np.maximum(nxt, s3[:, self.last, :])
        all_in = low >= self.thr_hi
        self.sd_all += np.count_nonzero(all_in, axis=0)
        amb = ~all_in & (suf >= self.thr_lo)
        bi, mi = np.nonzero(amb)
        if bi.size:
            sub = s3[bi, :, mi]  # A×k, sorted order within the block
            u = np.maximum.accumulate(sub[:, ::-1], axis=1)[:, ::-1]
            np.maximum(u, nxt[bi, mi][:, None], out=u)
            hit = u >= self.thr_b[mi]
            flat = (mi[:, None] * k + np.arange(k)).ravel()
            self.sd_part += np.bincount(flat, weights=hit.ravel(), minlength=self.sd_part.size
                                        ).astype(np.int64)


def thresholds(s_obs: np.ndarray, scale: np.ndarray, rtol: float) -> np.ndarray:
    """Observed score minus the tie tolerance; an infinite score is its own threshold."""
    with np.errstate(invalid="ignore"):
        thr = s_obs - rtol * (np.abs(s_obs) + scale)
    return np.where(np.isinf(s_obs), s_obs, thr)


def scan(prep: Prepared, chunks: Iterator[np.ndarray], obs_row: np.ndarray, alternative: str, *,
         exact: bool, half: bool, keep_cols: np.ndarray | None, stepdown: bool) -> ScanResult:
    """Run the relabelings in ``chunks`` and collect counts, maxima and kept null columns.

    Per chunk: one product (two for unbalanced Welch) into reused buffers; then, per cache-sized
    row block, in place the Welch t (unbalanced only) and the score (``abs`` or negation), a
    comparison with the thresholds summed as uint8 down the columns (uncorrected counts), one
    elementwise block maximum (single-step and step-down), and small work on the block maxima.
    """
    g_obs, s_obs = _score(prep, obs_row[None, :].astype(prep.z.dtype), alternative)
    g_obs = g_obs[0].astype(np.float64)
    s_obs = s_obs[0].astype(np.float64)
    thr = thresholds(s_obs, prep.scale, prep.rtol)
    lay = _Layout.of(s_obs, _SD_BLOCK)
    sprep = Prepared(lay.to_columns(prep.z, 0),
                     None if prep.z2 is None else lay.to_columns(prep.z2, 0),
                     prep.design, prep.statistic, prep.n, prep.n1, prep.scale, prep.to_stat,
                     prep.rtol, prep.keep, prep.floor)
    scratch = _Scratch(sprep.z.shape[1])
    dt, width = sprep.z.dtype, sprep.z.shape[1]
    kern = compiled()
    sub = max(1, _SUB_ELEMENTS // width)

    def blocks():
        for r in chunks:
            b = r.shape[0]
            s = scratch.get("s", b, dt)
            np.matmul(r, sprep.z, out=s)
            q = None
            if sprep.z2 is not None:
                q = scratch.get("q", b, dt)
                np.matmul(r, sprep.z2, out=q)
            if kern is not None:  # one compiled pass per chunk (Welch t computed as it reads)
                yield s if q is None else (s, q)
                continue
            for i in range(0, b, sub):  # the passes after the product, on cache-sized row blocks
                si = s[i:i + sub]
                if q is not None:
                    m = si.shape[0]
                    _welch_inplace(si, q[i:i + sub], scratch.get("w", m, dt),
                                   scratch.get("m", m, np.bool_), sprep.n1, sprep.n - sprep.n1,
                                   sprep.floor)
                yield si

    return collect(blocks(), lay, g_obs, s_obs, thr, prep.to_stat(g_obs), alternative, dt,
                   exact=exact, half=half, keep_cols=keep_cols, stepdown=stepdown,
                   scratch=scratch, welch=None if prep.z2 is None else (
                       prep.n1, prep.n - prep.n1, prep.floor))


def collect(blocks: Iterator[np.ndarray], lay: _Layout, g_obs: np.ndarray, s_obs: np.ndarray,
            thr: np.ndarray, observed: np.ndarray, alternative: str, dtype, *, exact: bool,
            half: bool, keep_cols: np.ndarray | None, stepdown: bool,
            scratch: _Scratch, welch: tuple[int, int, float] | None = None) -> ScanResult:
    """Tally blocks of product-space values (rows: resamples; columns in ``lay`` order).

    Shared by the relabeling scan above and the residual resampling of
    :mod:`stats._resample`: per block, the score (``abs`` or negation) in place, padding set to
    ``-inf``, the uncorrected exceedance counts and the block maxima (:class:`_Tally`).
    With the compiled passes and an unbalanced Welch t (``welch`` = ``(n1, n2, floor)``) a block is
    the pair ``(s, q)`` of group sums and sums of squares; the kernel computes t as it reads them.
    """
    nf = s_obs.size
    tally = _Tally(lay, thr[lay.order], dtype, stepdown)
    col_keep = None if keep_cols is None else lay.col[np.argsort(lay.order)[keep_cols]]
    pad_cols = lay.col[nf:]
    kept: list[np.ndarray] = []
    p = 0
    kern = compiled()
    for si in blocks:
        if isinstance(si, tuple):  # (group sums, sums of squares): compiled, unbalanced Welch
            s, q = si
            p += s.shape[0]
            if col_keep is not None:  # the same operations as the kernel's, on a few columns
                kept.append(_welch_from_sums(s[:, col_keep], q[:, col_keep], *welch
                                             ).astype(np.float64))
            tally.add_compiled(kern, s, alternative, (q, welch_constants(*welch, s.dtype)))
            continue
        m = si.shape[0]
        p += m
        if col_keep is not None:
            kept.append(si[:, col_keep].astype(np.float64))
        if kern is not None:
            tally.add_compiled(kern, si, alternative)
            continue
        if alternative == "two-sided":
            np.abs(si, out=si)
        elif alternative == "less":
            np.negative(si, out=si)
        if lay.pad:
            si[:, pad_cols] = -np.inf
        tally.add(si, scratch.get("hit", m, np.bool_))

    null_max = np.concatenate(tally.maxima) if tally.maxima else np.empty(0)
    null_keep = np.concatenate(kept) if kept else None
    count_unc = lay.from_columns(tally.count_unc)
    count_sd = (np.repeat(tally.sd_all, lay.k) + tally.sd_part)[:nf]
    return finish(observed=observed, s_obs=s_obs, thr=thr, thr_sorted=tally.thr_b.ravel()[:nf],
                  inv=np.argsort(lay.order), p=p, count_unc=count_unc, count_sd=count_sd, null_max=null_max,
                  null_keep=null_keep, exact=exact, half=half, stepdown=stepdown)


def default_batch(n_units: int) -> int:
    return max(16, _CHUNK_ELEMENTS // max(1, n_units))


def pvalues_from_counts(count: np.ndarray, n_resamples: int, exact: bool,
                        min_count: int = 0) -> np.ndarray:
    """Exact: ``max(count, min_count)/P`` (the identity is among the ``P``, so ``min_count`` is 1,
    or 2 when each relabeling stands for its complement too); Monte Carlo: ``(1 + count)/(1 + P)``.
    """
    count = np.asarray(count, dtype=np.float64)
    if exact:
        return np.minimum(np.maximum(count, min_count) / n_resamples, 1.0)
    return np.minimum((1.0 + count) / (1.0 + n_resamples), 1.0)


def score_to_stat(prep: Prepared, score: np.ndarray, alternative: str) -> np.ndarray:
    """Map max scores back to statistic units (|stat| for two-sided, stat or -stat one-sided)."""
    if prep.statistic in ("mean_diff", "mean"):
        return score
    if prep.z2 is not None:  # Welch t itself, floored; to_stat is odd, so any alternative
        return prep.to_stat(score)
    if alternative == "less":
        return -prep.to_stat(-score)
    return prep.to_stat(score)


def relabelings(design: str, n: int, n1: int, *, exact: bool, alternative: str, n_resamples: int, rng,
                batch: int, dtype) -> tuple[Iterator[np.ndarray], bool]:
    """The relabeling chunks of a test and whether they are the halved exact set (symmetric designs)."""
    if exact:
        half = can_halve(design, n, n1, alternative)
        return exact_relabelings(design, n, n1, half, batch, dtype), half
    return random_relabelings(design, n, n1, n_resamples, rng, batch, dtype), False


def finish(*, observed: np.ndarray, s_obs: np.ndarray, thr: np.ndarray, thr_sorted, inv: np.ndarray, p: int,
           count_unc, count_sd, null_max: np.ndarray, null_keep, exact: bool, half: bool,
           stepdown: bool) -> ScanResult:
    """The scan's result once every relabeling is tallied, shared by the numpy and torch backends.

    Counts arrive in the backend's column order (``inv`` puts them back in unit order), with
    ``thr_sorted`` the thresholds in that order as the tally compared them. With ``half``, each
    relabeling stands for itself and its complement (same score), so counts and ``p`` double and the
    null maxima (and the target's kept null, negated) are repeated; then ``count_ss``, how many null
    maxima reach each unit's threshold (single-step max-T)."""
    if half:
        p *= 2
        count_unc = count_unc * 2
        count_sd = count_sd * 2
        null_max = np.concatenate([null_max, null_max])
        if null_keep is not None:
            null_keep = np.concatenate([null_keep, -null_keep])
    srt = np.sort(null_max)
    count_ss = srt.size - np.searchsorted(srt, np.asarray(thr_sorted, dtype=np.float64), side="left")
    return ScanResult(
        observed=observed,
        observed_score=s_obs,
        count_unc=np.asarray(count_unc)[inv].astype(np.int64),
        count_ss=count_ss[inv].astype(np.int64),
        count_sd=np.asarray(count_sd)[inv].astype(np.int64) if stepdown else np.full(s_obs.size, -1, np.int64),
        null_max=null_max,
        null_keep=null_keep,
        n_resamples=p,
        exact=exact,
        thr=thr,
        min_count=(2 if half else 1) if exact else 0,
    )
