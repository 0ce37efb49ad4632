"""The max-T engine on torch: the scan of :mod:`stats._engine` and :mod:`stats._resample` with the
products and the passes after them on a torch device (CUDA when there is one, else the CPU).

What stays on the host, in numpy, and is shared with the numpy engine bit for bit: the data
preparation (:func:`stats._engine.prepare`, :func:`stats._resample.prepare`), the observed
statistics and scores (one row, computed by the numpy engine), the tie thresholds, and the
relabelings and resamples themselves (drawn from the same ``numpy.random.Generator`` in the same
order; exact enumeration in the same order). Each chunk of relabelings goes to the device as a
``B×N`` matrix; the product, the score (``abs`` or negation), the uncorrected exceedance counts
and the suffix maxima in the order of the observed scores (single-step and step-down max-T) are
computed there, and only per-unit counts and per-relabeling maxima come back.

So the two backends count the same relabelings against the same thresholds; a null score can
differ from the numpy one by a few ulp (another summation order in the product), which the tie
tolerance of :mod:`stats._engine` absorbs. p-values, ranks and decisions agree exactly unless a
null score falls within a few ulp of the edge of the tolerance band; null maxima and critical
values agree to the working precision (tests/stats/test_stats_torch_backend.py).

On CUDA, TF32 matrix products are switched off for the scan (they would round the data to 10
mantissa bits) and restored afterwards.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np

from stats import _engine, _resample

BACKENDS = ("numpy", "torch", "auto")

#: the backend an ``all_unit_baseline(backend=None)`` call uses (see :func:`use_backend`).
_DEFAULT: contextvars.ContextVar[str] = contextvars.ContextVar("lockstep_maxt_backend", default="numpy")

#: bound on the elements of one chunk (B·F) on a CUDA device: fewer, larger products.
_CUDA_CHUNK_ELEMENTS = 1 << 26


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS} (or None for the current default), "
                         f"got {backend!r}.")
    return backend


@contextlib.contextmanager
def use_backend(backend: str):
    """Within the block, ``all_unit_baseline(backend=None)`` uses ``backend``."""
    token = _DEFAULT.set(check_backend(backend))
    try:
        yield
    finally:
        _DEFAULT.reset(token)


def resolve(backend: str | None) -> str:
    """``"numpy"``, ``"torch:cuda"`` or ``"torch:cpu"``: what runs for ``backend``.

    ``"auto"`` is torch on CUDA when a CUDA device is present, numpy otherwise (on a CPU the numpy
    engine is the faster one, bench/RESULTS.md); ``"torch"`` is torch on CUDA, else on the CPU.
    """
    backend = _DEFAULT.get() if backend is None else check_backend(backend)
    if backend == "numpy":
        return "numpy"
    try:
        import torch
    except ImportError as exc:
        if backend == "auto":
            return "numpy"
        raise ValueError("`backend`='torch' needs PyTorch (pip install torch), or pass "
                         "backend='numpy'.") from exc
    if torch.cuda.is_available():
        return "torch:cuda"
    return "numpy" if backend == "auto" else "torch:cpu"


def default_batch(device: str, n_units: int, numpy_batch: int) -> int:
    if device == "cuda":
        return max(16, _CUDA_CHUNK_ELEMENTS // max(1, n_units))
    return numpy_batch


@contextlib.contextmanager
def _exact_matmul(torch, device: str):
    """No TF32 in the products of the scan (restored afterwards)."""
    if device != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _welch(s, q, n1: int, n2: int, floor: float):
    """:func:`stats._engine._welch_from_sums` on tensors, in place in ``s`` and ``q``: the same
    operations in the same order."""
    from stats._engine import welch_coefficients

    a, b, c, r = welch_coefficients(n1, n2)
    w = s * s
    q.mul_(a)
    w.mul_(b)
    q.add_(w)
    q.add_(c)
    q.clamp_(min=floor)
    q.sqrt_()  # den
    s.mul_(r)  # num
    zero = s == 0
    s.div_(q)
    s.masked_fill_(zero, 0.0)
    return s


def _t_from_sums(sa, qa, sb, qb, n1: int, n2: int, statistic: str, floor: float):
    """:func:`stats._resample.t_from_sums` on tensors."""
    import torch

    ma = sa / n1
    mb = sb / n2
    num = ma - mb
    if statistic == "mean_diff":
        return num
    ssa = qa - sa * ma
    ssb = qb - sb * mb
    if statistic == "welch_t":
        v = ssa / ((n1 - 1) * n1) + ssb / ((n2 - 1) * n2)
    else:
        v = (ssa + ssb) / (n1 + n2 - 2) * (1.0 / n1 + 1.0 / n2)
    t = num / torch.sqrt(torch.clamp(v, min=floor))
    return t.masked_fill_(num == 0, 0.0)


def _tensor(torch, a: np.ndarray, device: str):
    """``a`` on ``device``; to CUDA through pinned memory without waiting, so that the host draws
    the next chunk while the device works on this one."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def scan(prep: _engine.Prepared, chunks: Iterator[np.ndarray], obs_row: np.ndarray, alternative: str,
         *, exact: bool, half: bool, keep_cols: np.ndarray | None, stepdown: bool,
         device: str) -> _engine.ScanResult:
    """:func:`stats._engine.scan` on ``device`` (``"cuda"`` or ``"cpu"``)."""
    import torch

    g_obs, s_obs = _engine._score(prep, obs_row[None, :].astype(prep.z.dtype), alternative)
    g_obs = g_obs[0].astype(np.float64)
    s_obs = s_obs[0].astype(np.float64)
    thr = _engine.thresholds(s_obs, prep.scale, prep.rtol)
    cols = _columns(s_obs)
    z = _tensor(torch, prep.z[:, cols], device)
    z2 = None if prep.z2 is None else _tensor(torch, prep.z2[:, cols], device)
    n1, n2 = prep.n1, prep.n - prep.n1

    def blocks():
        for r in chunks:
            rt = _tensor(torch, r, device)
            s = rt @ z
            if z2 is not None:
                s = _welch(s, rt @ z2, n1, n2, prep.floor)
            yield s

    with _exact_matmul(torch, device):
        return _collect(torch, blocks(), cols, s_obs, thr, prep.to_stat(g_obs), alternative,
                        prep.z.dtype, device, exact=exact, half=half, keep_cols=keep_cols,
                        stepdown=stepdown)


def resample_scan(prep: _resample.ResidualPrep, alternative: str, n_resamples: int,
                  rng: np.random.Generator, batch: int, *, keep_cols: np.ndarray | None,
                  stepdown: bool, device: str) -> _engine.ScanResult:
    """:func:`stats._resample.scan` on ``device``; the draws come from ``rng`` as there."""
    import torch

    g_obs = prep.g_obs
    s_obs = {"two-sided": np.abs, "greater": lambda v: v, "less": np.negative}[alternative](g_obs)
    thr = _engine.thresholds(s_obs, prep.scale, prep.rtol)
    cols = _columns(s_obs)
    ea, eb = _tensor(torch, prep.ea[:, cols], device), _tensor(torch, prep.eb[:, cols], device)
    dt = prep.ea.dtype
    if prep.resampling == "wild":
        qa_fix, qb_fix = (ea * ea).sum(0), (eb * eb).sum(0)
    else:
        ea2, eb2 = ea * ea, eb * eb

    def blocks():
        for wa, wb in _resample.draws(prep.resampling, prep.n1, prep.n2, n_resamples, rng, batch, dt):
            wa, wb = _tensor(torch, wa, device), _tensor(torch, wb, device)
            sa, sb = wa @ ea, wb @ eb
            if prep.resampling == "wild":
                qa, qb = qa_fix, qb_fix
            else:
                qa, qb = wa @ ea2, wb @ eb2
            yield _t_from_sums(sa, qa, sb, qb, prep.n1, prep.n2, prep.statistic, prep.floor)

    with _exact_matmul(torch, device):
        return _collect(torch, blocks(), cols, s_obs, thr, prep.to_stat(g_obs), alternative, dt,
                        device, exact=False, half=False, keep_cols=keep_cols, stepdown=stepdown)


def _columns(s_obs: np.ndarray) -> np.ndarray:
    """The unit in each column: the step-down order of the numpy engine (descending observed score,
    ties in input order), reversed, so that its suffix maxima are running maxima along the columns."""
    return np.ascontiguousarray(np.argsort(-s_obs, kind="stable")[::-1])


def _collect(torch, blocks, cols: np.ndarray, s_obs: np.ndarray, thr: np.ndarray,
             observed: np.ndarray, alternative: str, dtype, device: str, *, exact: bool, half: bool,
             keep_cols: np.ndarray | None, stepdown: bool) -> _engine.ScanResult:
    """:func:`stats._engine.collect` for blocks of product-space values on the device, unit
    ``cols[c]`` in column ``c`` (:func:`_columns`): per block the score in place, the exceedance
    counts, and the running maximum along the columns (its last column is the max-T null value,
    and comparing it with the thresholds gives the step-down counts)."""
    nf = s_obs.size
    inv = np.argsort(cols)
    thr_d = thr[cols].astype(dtype)  # column order, working dtype, as the numpy tally compares
    thr_t = _tensor(torch, thr_d, device)
    count_unc = torch.zeros(nf, dtype=torch.int64, device=device)
    count_sd = torch.zeros(nf, dtype=torch.int64, device=device)
    maxima, kept = [], []
    pos_keep = None if keep_cols is None else torch.as_tensor(inv[keep_cols], device=device)
    p = 0
    for s in blocks:
        p += s.shape[0]
        if pos_keep is not None:
            kept.append(s[:, pos_keep].to(torch.float64))
        if alternative == "two-sided":
            s.abs_()
        elif alternative == "less":
            s.neg_()
        count_unc += (s >= thr_t).sum(0)
        if stepdown:
            u = torch.cummax(s, 1).values
            count_sd += (u >= thr_t).sum(0)
            maxima.append(u[:, -1].to(torch.float64))
        else:
            maxima.append(s.amax(1).to(torch.float64))
    # nothing has come back to the host so far (no synchronisation inside the loop)
    null_max = torch.cat(maxima).cpu().numpy() if maxima else np.empty(0)
    null_keep = torch.cat(kept).cpu().numpy() if kept else None
    count_unc = count_unc.cpu().numpy()
    count_sd = count_sd.cpu().numpy()
    return _engine.finish(observed=observed, s_obs=s_obs, thr=thr, thr_sorted=thr_d, inv=inv, p=p,
                          count_unc=count_unc, count_sd=count_sd, null_max=null_max, null_keep=null_keep,
                          exact=exact, half=half, stepdown=stepdown)
