"""Compiled passes of the relabeling engine (:mod:`stats._engine`), one read of each chunk.

After the product, the engine needs, for every relabeling row: the score of each unit (``|g|``,
``g`` or ``-g``), whether it reaches the unit's threshold (uncorrected counts), the maxima of the
64-unit blocks (single-step max-T) and the successive maxima of step-down max-T. numpy does that in
four passes over the chunk, each a separate ufunc call; here it is one read of each row, written
with numba because no ufunc fuses a compare, a count and a blocked maximum. The unbalanced Welch t
(:func:`welch`) is computed in the same read, row by row (numpy: ten passes).

One thread: a second one gained nothing in the scan on the 2-core machine of bench/RESULTS.md, where
OpenBLAS's workers, spinning after each product, hold the other core (with their spin cut short by
``OPENBLAS_THREAD_TIMEOUT=4``, two threads gained 1.3×).

The numpy passes (:meth:`stats._engine._Tally.add`, :func:`stats._engine._welch_inplace`) stay as
the fallback where numba cannot be imported (or ``LOCKSTEP_KERNELS=numpy``) and as the reference the
tests compare these kernels with: counts and maxima are exact (integer sums, comparisons, maxima),
so both give identical counts, maxima and p-values; the Welch kernel performs the same IEEE
operations in the same order (no fast-math, no contraction), so its t values are identical bit for
bit.

Compiled on first use and cached (``cache=True``: beside this file, or in ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always", cache=True)
def _score(x, mode):  # pragma: no cover - compiled
    if mode == 0:
        return abs(x)
    return x if mode == 1 else -x


@numba.njit(cache=True, nogil=True, error_model="numpy")
def tally(s, si, q, wc, tbuf, tbufi, ic, thr_cols, mode, k, nb, pad, thr_b, thr_hi, thr_lo,
          stepdown, cnt, sd_all, sd_part, maxima, kbuf, bbits, bmax):  # pragma: no cover - compiled
    """One chunk ``s`` (B×k·nb, column ``j·nb + b`` = sorted position ``b·k + j``).

    With Welch constants ``wc`` (:func:`welch`; empty otherwise) ``s`` and ``q`` are group
    sums and sums of squares, and each row's t is computed into ``tbuf`` (``tbufi``: its integer
    view) and tallied from there: the chunk is read once and never written.

    mode 0: score ``|g|``; 1: ``g``; 2: ``-g``. The last ``pad`` positions of the last block are
    padding (never counted, never a maximum). ``cnt`` += exceedances (column order); ``sd_all[b]``
    += relabelings whose every successive maximum in block ``b`` clears its threshold (decided
    from the later blocks' maximum and the block's last unit, as :meth:`stats._engine._Tally.
    _step_down`); ``sd_part[b·k + j]`` += the rest, counted element by element; ``maxima[r]`` =
    row ``r``'s maximum score.

    The block maxima are taken on integer keys: ``si`` is ``s`` viewed as integers of its width,
    ``ic`` holds the magnitude mask, the sign bit and the sign shift in that type. A float's bits
    ``i`` give the key ``i ^ ((i >> shift) & magnitude)``, which orders as the float does (-0 just
    below +0); an integer maximum vectorizes to a plain store, where a float maximum into memory
    becomes a masked store (microcoded on some x86 CPUs, 2× slower here). ``kbuf`` (keys),
    ``bbits`` and its float view ``bmax`` (nb each) are scratch.
    """
    rows = s.shape[0]
    last_b = nb - 1
    mag, sign, shift = ic[0], ic[1], ic[2]
    suf = np.empty(nb, s.dtype)
    welch = wc.size > 0
    for r in range(rows):
        if welch:
            _welch_row(s[r], q[r], wc, tbuf)
            row = tbuf
            rowi = tbufi
        else:
            row = s[r]
            rowi = si[r]
        kbuf[:] = ic[3]  # the smallest key
        for j in range(k):
            lo = j * nb
            g = row[lo:lo + nb]
            gi = rowi[lo:lo + nb]
            th = thr_cols[lo:lo + nb]
            cc = cnt[lo:lo + nb]
            if mode == 0:
                for b in range(nb):
                    cc[b] += np.int32(abs(g[b]) >= th[b])
                    kbuf[b] = max(kbuf[b], gi[b] & mag)  # |x| is its own key
            elif mode == 1:
                for b in range(nb):
                    cc[b] += np.int32(g[b] >= th[b])
                    xi = gi[b]
                    kbuf[b] = max(kbuf[b], xi ^ ((xi >> shift) & mag))
            else:
                for b in range(nb):
                    cc[b] += np.int32(-g[b] >= th[b])
                    xi = gi[b] ^ sign
                    kbuf[b] = max(kbuf[b], xi ^ ((xi >> shift) & mag))
        for b in range(nb):
            key = kbuf[b]
            bbits[b] = key ^ mag if key < 0 else key
        if pad:  # padding never counts (threshold +inf); drop it from the last block
            m = -np.inf
            for j in range(k - pad):
                x = _score(row[j * nb + last_b], mode)
                if x > m:
                    m = x
            bmax[last_b] = m
        m = -np.inf
        for b in range(last_b, -1, -1):
            if bmax[b] > m:
                m = bmax[b]
            suf[b] = m
        maxima[r] = suf[0]
        if not stepdown:
            continue
        for b in range(nb):
            nxt = suf[b + 1] if b < last_b else -np.inf
            jl = k - 1 if b < last_b else k - 1 - pad  # the block's last real unit
            low = _score(row[jl * nb + b], mode)
            if nxt > low:
                low = nxt
            if low >= thr_hi[b]:
                sd_all[b] += 1
            elif suf[b] >= thr_lo[b]:
                u = nxt
                for j in range(jl, -1, -1):
                    x = _score(row[j * nb + b], mode)
                    if x > u:
                        u = x
                    if u >= thr_b[b, j]:
                        sd_part[b * k + j] += 1


@numba.njit(inline="always", cache=True, error_model="numpy")
def _welch_row(srow, qrow, c, out):  # pragma: no cover - compiled
    """``out[:] =`` Welch t of one row (see :func:`welch`)."""
    ca, cb, cc, fl, rr = c[0], c[1], c[2], c[3], c[4]
    zero = ca - ca
    for j in range(srow.shape[0]):
        x = srow[j]
        v = qrow[j] * ca + (x * x) * cb
        v = v + cc
        v = v if v >= fl or v != v else fl  # np.maximum(v, floor)
        num = x * rr
        t = num / np.sqrt(v)
        out[j] = zero if num == 0 else t


@numba.njit(cache=True, nogil=True, error_model="numpy")
def welch(s, q, c, out):  # pragma: no cover - compiled
    """``out[:] =`` Welch t from group sums ``s`` and sums of squares ``q``; ``c`` holds ``a, b, c,
    floor, r`` of :func:`stats._engine.welch_coefficients` in the working dtype: the same
    operations in the same order as :func:`stats._engine._welch_inplace`, so the same rounding
    (what :func:`tally` computes row by row)."""
    for i in range(s.shape[0]):
        _welch_row(s[i], q[i], c, out[i])
