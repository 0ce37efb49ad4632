"""How sure is a unit's rank? A stratified bootstrap of the target's rank among every unit.

``max_target_rank: 1`` over 10,240 units is a noisy criterion: with a few dozen prompts the best
sample statistic often belongs to a unit whose true effect is no larger than the target's. The rank
interval resamples prompts within each group (the groups' sizes kept), recomputes every unit's
statistic on each resample, and records the target's rank each time: its percentile interval, and the
share of resamples in which the target ranks first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from stats._common import as_generator, unit_exponents

__all__ = ["RankInterval", "rank_interval"]


@dataclass(frozen=True)
class RankInterval:
    """The target's bootstrap rank distribution.

    Attributes
    ----------
    rank_ci : (int, int)
        Percentile interval of the target's rank (1 = most extreme in the tested direction; ties take
        the largest rank they share, as :func:`stats.all_unit_baseline` ranks).
    p_first : float
        Share of resamples in which the target ranks first.
    n_boot : int
    confidence : float
    """

    rank_ci: tuple[int, int]
    p_first: float
    n_boot: int
    confidence: float

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"rank_ci_low": self.rank_ci[0], "rank_ci_high": self.rank_ci[1], "p_first": self.p_first,
                              "n_boot": self.n_boot, "confidence": self.confidence}])


def _statistic(a: np.ndarray, b: np.ndarray, statistic: str) -> np.ndarray:
    """Per-unit statistic of groups ``a`` (n_a × F) and ``b`` (n_b × F); NaN where it is undefined."""
    diff = a.mean(axis=0) - b.mean(axis=0)
    if statistic == "mean_diff":
        return diff
    # exactly 0 for a column constant within a group: a rounded mean must not make it vary
    va = np.where((a == a[:1]).all(axis=0), 0.0, a.var(axis=0, ddof=1))
    vb = np.where((b == b[:1]).all(axis=0), 0.0, b.var(axis=0, ddof=1))
    na, nb = a.shape[0], b.shape[0]
    if statistic == "welch_t":
        se = np.sqrt(va / na + vb / nb)
    elif statistic == "student_t":
        sp = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
        se = np.sqrt(sp * (1 / na + 1 / nb))
    else:
        raise ValueError("`statistic` must be 'welch_t', 'student_t' or 'mean_diff'.")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, diff / se, np.nan)


def _target_rank(stat: np.ndarray, target: int, alternative: str) -> int:
    score = {"greater": stat, "less": -stat, "two-sided": np.abs(stat)}[alternative]
    score = np.where(np.isfinite(score), score, -np.inf)  # an undefined statistic never beats the target
    if not np.isfinite(score[target]):
        return score.size
    return int(rankdata(-score, method="max")[target])


def rank_interval(x, group, *, target: int, statistic: str = "welch_t", alternative: str = "greater",
                  n_boot: int = 1000, confidence: float = 0.95, rng=None) -> RankInterval:
    """Bootstrap interval of unit ``target``'s rank among the columns of ``x``.

    Parameters
    ----------
    x : array (n items × F units)
    group : bool array (n,)
        True for group a.
    target : int
        Column of the target unit.
    statistic : {"welch_t", "student_t", "mean_diff"}
    alternative : {"greater", "less", "two-sided"}
        The tested direction: what "most extreme" means for the rank.
    n_boot : int
    confidence : float
    rng : None, int or numpy.random.Generator

    Returns
    -------
    RankInterval
    """
    x = np.asarray(x, dtype=float)
    g = np.asarray(group, dtype=bool)
    if x.ndim != 2 or g.shape != (x.shape[0],):
        raise ValueError("`x` must be items × units and `group` one bool per item.")
    if not np.all(np.isfinite(x)):
        raise ValueError("`x` contains NaN or infinite values; drop those items or units first.")
    if not 0 <= target < x.shape[1]:
        raise ValueError("`target` must be a column of `x`.")
    if min(g.sum(), (~g).sum()) < 2:
        raise ValueError("`group` needs at least two items on each side.")
    if n_boot < 1 or not 0 < confidence < 1:
        raise ValueError("`n_boot` must be positive and `confidence` in (0, 1).")
    gen = as_generator(rng)
    # exact powers of two so that squares neither overflow nor underflow: per column for a t
    # (unchanged by a column's scale), one for all columns for the mean difference (ranked across them)
    ex = unit_exponents(x)
    if ex is not None:
        x = np.ldexp(x, -(ex if statistic != "mean_diff" else np.full_like(ex, ex.max())))
    a, b = x[g], x[~g]
    ranks = np.empty(n_boot, dtype=np.int64)
    for i in range(n_boot):
        ra = a[gen.integers(0, a.shape[0], a.shape[0])]
        rb = b[gen.integers(0, b.shape[0], b.shape[0])]
        ranks[i] = _target_rank(_statistic(ra, rb, statistic), target, alternative)
    tail = (1 - confidence) / 2
    low, high = np.quantile(ranks, [tail, 1 - tail], method="inverted_cdf")
    return RankInterval((int(low), int(high)), float(np.mean(ranks == 1)), n_boot, confidence)
