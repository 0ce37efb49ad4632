"""Do the two groups have the same spread? Variance ratio and the Brown–Forsythe test, per unit.

A permutation test assumes the groups are exchangeable; with unequal variances its null is "same
distribution", not "same mean". This diagnostic says, per unit, how far the spreads differ, so a
reader (and :func:`stats.all_unit_baseline`'s ``not_exchangeable`` flag) can see when the
permutation max-T is the wrong tool and ``null="equal_means"`` is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from stats._common import Flag, unit_exponents

__all__ = ["VarianceCheckResult", "variance_check"]

_FRAME_COLUMNS = ("unit", "n_a", "n_b", "var_a", "var_b", "variance_ratio", "brown_forsythe_w",
                  "brown_forsythe_p")

#: a unit "clearly" has unequal variances at this Brown–Forsythe p.
UNEQUAL_P = 0.01
#: share of a family's units at ``p <= UNEQUAL_P`` above which the family is flagged
#: (five times the share expected when every unit has equal variances).
UNEQUAL_SHARE = 0.05


@dataclass(frozen=True)
class VarianceCheckResult:
    """Result of :func:`variance_check`.

    Attributes
    ----------
    unit_ids : numpy.ndarray of str
    n_a, n_b : int
    var_a, var_b : numpy.ndarray
        Sample variances (ddof=1) of group A and group B per unit.
    variance_ratio : numpy.ndarray
        ``var_a/var_b`` (``inf`` when only B is constant, NaN when both are).
    brown_forsythe_w, brown_forsythe_p : numpy.ndarray
        Levene's W with the median as centre (Brown & Forsythe 1974) and its ``F(1, N-2)`` p;
        NaN when the absolute deviations are constant within and between groups.
    flags : tuple of Flag
        ``not_exchangeable`` when more than 5 % of the units have ``p <= 0.01``.
    """

    unit_ids: np.ndarray
    n_a: int
    n_b: int
    var_a: np.ndarray
    var_b: np.ndarray
    variance_ratio: np.ndarray
    brown_forsythe_w: np.ndarray
    brown_forsythe_p: np.ndarray
    flags: tuple = ()

    def to_frame(self) -> pd.DataFrame:
        """One row per unit: ``unit, n_a, n_b, var_a, var_b, variance_ratio, brown_forsythe_w,
        brown_forsythe_p``."""
        return pd.DataFrame({
            "unit": self.unit_ids, "n_a": self.n_a, "n_b": self.n_b, "var_a": self.var_a,
            "var_b": self.var_b, "variance_ratio": self.variance_ratio,
            "brown_forsythe_w": self.brown_forsythe_w, "brown_forsythe_p": self.brown_forsythe_p,
        }, columns=list(_FRAME_COLUMNS))


def variance_ratio(x: np.ndarray, mask: np.ndarray, *,
                   groups: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(var_a, var_b, var_a/var_b)`` per column of ``x`` (N×F), ddof=1; ``groups`` = ``(x[mask],
    x[~mask])`` when the caller has them."""
    a, b = groups if groups is not None else (x[mask], x[~mask])
    # exactly 0 for a column constant within a group: a rounded mean must not make it vary
    va = np.where((a == a[:1]).all(axis=0), 0.0, a.var(axis=0, ddof=1))
    vb = np.where((b == b[:1]).all(axis=0), 0.0, b.var(axis=0, ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = va / vb
    return va, vb, ratio


def unit_scaled(x: np.ndarray) -> np.ndarray:
    """``x`` with each column scaled by a power of two (exact) so that its largest ``|value|`` lies in
    [0.5, 1), where that is needed (:func:`stats._common.unit_exponents`; ``x`` itself otherwise):
    ratios of variances and the Brown–Forsythe W are unchanged, and squares of data near 1e±154 and
    beyond neither overflow nor underflow."""
    ex = unit_exponents(x)
    return x if ex is None else np.ldexp(x, -ex)


def _column_median(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=0)``, equal to it bit for bit: each column sorted as a contiguous row
    (numpy's SIMD sort; ``np.median`` partitions along the strided axis, about 3× slower at
    100 × 10,240), then the middle value or the mean of the two middle values."""
    n = a.shape[0]
    srt = np.sort(np.ascontiguousarray(a.T), axis=1)
    med = srt[:, n // 2] if n % 2 else np.mean(srt[:, n // 2 - 1:n // 2 + 1], axis=1)
    return np.where(np.isnan(srt[:, -1]), np.nan, med)  # sort puts NaN last; median is NaN then


def brown_forsythe(x: np.ndarray, mask: np.ndarray, *,
                   groups: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``scipy.stats.levene(a, b, center="median")`` over the columns of ``x``.

    ``z_ij = |x_ij - median_g(x_j)|``; ``W = (N-2)·Σ_g n_g(z̄_g - z̄)² / Σ_g Σ_i (z_ij - z̄_g)²``,
    ``p = F.sf(W; 1, N-2)``.
    """
    a, b = groups if groups is not None else (x[mask], x[~mask])
    n1, n2 = a.shape[0], b.shape[0]
    za = np.abs(a - _column_median(a))
    zb = np.abs(b - _column_median(b))
    ma, mb = za.mean(axis=0), zb.mean(axis=0)
    m = (n1 * ma + n2 * mb) / (n1 + n2)
    between = n1 * (ma - m) ** 2 + n2 * (mb - m) ** 2
    within = ((za - ma) ** 2).sum(axis=0) + ((zb - mb) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (n1 + n2 - 2) * between / within
    return w, sps.f.sf(w, 1, n1 + n2 - 2)


def unequal_flag(p: np.ndarray, ratio: np.ndarray, what: str) -> Flag | None:
    """``not_exchangeable`` when more than :data:`UNEQUAL_SHARE` of the units have a
    Brown–Forsythe ``p <= UNEQUAL_P``; None otherwise."""
    ok = np.isfinite(p)
    if not ok.any():
        return None
    k = int(np.sum(p[ok] <= UNEQUAL_P))
    share = k / int(ok.sum())
    if share <= UNEQUAL_SHARE:
        return None
    r = ratio[ok & (p <= UNEQUAL_P)]
    lr = np.abs(np.log(r[np.isfinite(r) & (r > 0)]))
    med = float(np.exp(np.median(lr))) if lr.size else float("inf")
    return Flag("not_exchangeable",
                f"{k} of {int(ok.sum())} units ({share:.0%}) have unequal group variances by the "
                f"Brown–Forsythe test at p ≤ {UNEQUAL_P} (about 1 % expected if the groups were "
                f"exchangeable; median variance ratio {med:.3g}:1 among them); {what}")


def variance_check(x, group, *, unit_ids=None) -> VarianceCheckResult:
    """Variance ratio and Brown–Forsythe test of equal variances, per unit.

    Parameters
    ----------
    x : array_like, shape (N,) or (N, F)
        One value per item (prompt), one column per unit. Must be finite.
    group : array_like of bool or 0/1, shape (N,)
        True / 1 for group A, at least 2 items in each group.
    unit_ids : sequence of str, optional

    Returns
    -------
    VarianceCheckResult

    Notes
    -----
    Brown–Forsythe (1974): Levene's test on ``|x - median of the group|``; for two groups
    ``W = t²`` of Student's t on those deviations, referred to ``F(1, N - 2)``. Robust to
    non-normal data (routing S and W are bounded and often zero-inflated), unlike the F test of the
    variance ratio. Checked against ``scipy.stats.levene(a, b, center="median")`` column by column
    (``tests/stats/test_stats_variance.py``).
    """
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("`x` must be a numeric array of shape (N,) or (N, F).") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError("`x` must be a numeric array of shape (N,) or (N, F).")
    if not np.all(np.isfinite(arr)):
        raise ValueError("`x` contains NaN or infinite values; drop those items or units first.")
    g = np.asarray(group)
    if g.shape != (arr.shape[0],):
        raise ValueError(f"`group` must be a boolean mask or 0/1 labels of length {arr.shape[0]}.")
    if g.dtype != bool:
        if not np.all(np.isin(g, (0, 1))):
            raise ValueError("`group` must be a boolean mask or 0/1 labels (1 = first group).")
        g = g.astype(bool)
    n1 = int(g.sum())
    if n1 < 2 or g.size - n1 < 2:
        raise ValueError(f"`group` must put at least 2 items in each group, got {n1} and "
                         f"{g.size - n1}.")
    f = arr.shape[1]
    ids = (np.array([f"u{i}" for i in range(f)], dtype=object) if unit_ids is None
           else np.asarray(unit_ids, dtype=object))
    if ids.shape != (f,):
        raise ValueError(f"`unit_ids` must have one id per unit ({f}).")
    va, vb, _ = variance_ratio(arr, g)  # in the data's units (inf where a variance overflows)
    scaled = unit_scaled(arr)
    _, _, ratio = variance_ratio(scaled, g)
    w, p = brown_forsythe(scaled, g)
    flag = unequal_flag(p, ratio, "a permutation test of these units tests identical "
                                  "distributions, not equal means")
    return VarianceCheckResult(ids, n1, g.size - n1, va, vb, ratio, w, p,
                               (flag,) if flag else ())
