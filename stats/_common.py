"""Small shared pieces of :mod:`stats`: named flags, unit ids, generators, frame helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lockstep.units import parse_unit_id, unit_id  # the one owner of unit ids (re-exported)

__all__ = ["Flag", "unit_id", "parse_unit_id"]


@dataclass(frozen=True)
class Flag:
    """A named warning attached to a result (never raised).

    Attributes
    ----------
    code : str
        Stable machine-readable name, e.g. ``"below_threshold"`` or ``"holm_unreachable"``.
    message : str
        One sentence a reader can act on, with the numbers involved.
    """

    code: str
    message: str


def as_generator(rng) -> np.random.Generator:
    """Accept ``None``, an int seed, or a :class:`numpy.random.Generator`."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise ValueError("`rng` must be None, an int seed or a numpy.random.Generator.")


def check_confidence(confidence: float, name: str = "confidence") -> float:
    if not (isinstance(confidence, (float, int)) and 0.0 < float(confidence) < 1.0):
        raise ValueError(f"`{name}` must be a number strictly between 0 and 1.")
    return float(confidence)


def as_1d_float(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a 1-D array of numbers.") from exc
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of numbers, got {arr.ndim} dimensions.")
    return arr


def as_ids(ids, n: int, name: str, default_prefix: str) -> np.ndarray:
    if ids is None:
        return np.array([f"{default_prefix}{i}" for i in range(n)], dtype=object)
    arr = np.asarray(ids, dtype=object)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"`{name}` must have one id per item ({n}), got shape {arr.shape}.")
    return arr


def check_resampling(alternative, n_resamples, exact_cap, batch, alternatives) -> None:
    """The checks every resampling entry point shares (``ValueError`` naming the parameter)."""
    if alternative not in alternatives:
        raise ValueError(f"`alternative` must be one of {alternatives}, got {alternative!r}.")
    if not (isinstance(n_resamples, (int, np.integer)) and n_resamples >= 1):
        raise ValueError("`n_resamples` must be a positive integer.")
    if not (isinstance(exact_cap, (int, np.integer)) and exact_cap >= 0):
        raise ValueError("`exact_cap` must be a non-negative integer.")
    if batch is not None and not (isinstance(batch, (int, np.integer)) and batch >= 1):
        raise ValueError("`batch` must be None or a positive integer.")


#: columns whose largest |value| lies within 2^±400 need no scaling: their squares, sums of squares of
#: up to 2^40 terms, and the squares of their smallest nonzero deviations (an ulp of the largest value)
#: all stay normal float64 numbers
_SAFE_SCALE = 2.0 ** 400


def column_absmax(x: np.ndarray) -> np.ndarray:
    """``np.abs(x).max(axis=0)`` without the N×F temporary (two reductions); 0 for no rows."""
    if not x.shape[0]:
        return np.zeros(x.shape[1:])
    return np.maximum(x.max(axis=0), -x.min(axis=0))


def unit_exponents(x: np.ndarray) -> np.ndarray | None:
    """Per column of ``x`` (N×F, float64), the power of two ``k`` with ``max|x|·2⁻ᵏ`` in [0.5, 1), or
    None when no column needs scaling (every nonzero column's largest ``|value|`` within 2^±400).

    Scaling a column by ``2⁻ᵏ`` is exact, so what is computed on scaled data (means, variances, t)
    equals the unscaled computation bit for bit wherever that one neither overflows nor underflows,
    and stays finite for data near 1e±154 and beyond, where squares would overflow or vanish."""
    top = column_absmax(x)
    nonzero = top[top > 0]
    if not nonzero.size or (nonzero.max() < _SAFE_SCALE and nonzero.min() > 1.0 / _SAFE_SCALE):
        return None
    return np.frexp(top)[1]
