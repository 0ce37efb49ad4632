"""Power of the e114-register plan's criteria, as quoted in study.yaml (sampling_plan.rationale and the
description's "changes after review"). Run: `.venv/bin/python preregistrations/e114-register/power.py`.

Normal theory, statsmodels TTestIndPower, one-sided tests (the permutation / wild-bootstrap tests the
plan runs are approximated by the t test they studentise). A two-group verdict needs p <= alpha AND
Cohen's d >= min_cohen_d; with pooled SD, d = t / sqrt(n_a n_b / (n_a + n_b)), so both criteria are
bounds on the same t, and the verdict's power is the t test's power at the stricter of the two levels:
alpha_eff = min(alpha, P(t_df >= min_cohen_d * sqrt(n_a n_b / (n_a + n_b)))). Not modelled (so every
figure is an upper bound for its claim): the ratio criteria (min_ratio, reproduction_ratio_tolerance),
which depend on the NOFIRE mean and not on d alone, and H2's rank-interval criteria, which depend on the
competing units. H2's adjusted p is bounded by Bonferroni 0.05 / 10,240 (max-T is less conservative).
"""

from __future__ import annotations

import math

from scipy import stats
from statsmodels.stats.power import TTestIndPower

ALPHA = 0.05
MIN_D = 0.6          # thresholds.yaml min_cohen_d
OLD_MIN_D = 1.0      # the value before review
D_TOL = 1.0          # thresholds.yaml reproduction_d_tolerance
UNITS = 40 * 256     # the all-unit family
HELDOUT = 64         # heldout prompts: 30 FIRE + 30 matched NOFIRE + 4 crossover-risk NOFIRE
PAIRS = 30           # heldout matched pairs (the class tests leave the crossover-risk stratum out)
POWER = TTestIndPower()


def two_group(d: float, n_a: int, n_b: int, min_d: float = MIN_D) -> float:
    """Power of 'p <= alpha and d >= min_d' (one-sided) at true effect d."""
    df, h = n_a + n_b - 2, math.sqrt(n_a * n_b / (n_a + n_b))
    level = min(ALPHA, float(stats.t.sf(min_d * h, df)))
    return float(POWER.power(effect_size=d, nobs1=n_a, ratio=n_b / n_a, alpha=level, alternative="larger"))


def p_only(d: float, n_a: int, n_b: int, alpha: float = ALPHA) -> float:
    return float(POWER.power(effect_size=d, nobs1=n_a, ratio=n_b / n_a, alpha=alpha, alternative="larger"))


def se_d(d: float, n_a: int, n_b: int) -> float:
    """Large-sample standard error of Cohen's d (Hedges & Olkin 1985)."""
    return math.sqrt((n_a + n_b) / (n_a * n_b) + d * d / (2 * (n_a + n_b)))


def within_tolerance(d: float, n_a: int, n_b: int) -> float:
    """P(|d_greedy - d_sampled| <= D_TOL) for two independent runs with the same true d."""
    se = math.sqrt(2) * se_d(d, n_a, n_b)
    return float(2 * stats.norm.cdf(D_TOL / se) - 1)


def reproduction(d: float, n_a: int, n_b: int) -> float:
    """H3 (runs treated as independent): sampled p <= alpha, greedy p <= alpha and d >= min_d, |d2 - d1| <= tol."""
    return p_only(d, n_a, n_b) * two_group(d, n_a, n_b) * within_tolerance(d, n_a, n_b)


def baseline(d: float, n_a: int, n_b: int) -> float:
    return p_only(d, n_a, n_b, ALPHA / UNITS)


def main() -> None:
    print("Two-group verdict (p <= 0.05 and d >= min_cohen_d), one-sided, at true d = 1.0")
    for n in (10, 24, PAIRS):
        print(f"  {n} vs {n}: min_cohen_d {OLD_MIN_D}: {two_group(1.0, n, n, OLD_MIN_D):.3f}; "
              f"min_cohen_d {MIN_D}: {two_group(1.0, n, n):.3f}; p alone: {p_only(1.0, n, n):.3f}")

    print("\nmin_group_size: the smallest register group m (other group 64 - m) with power >= 0.80 for both")
    print("  the two-group verdict at d = 1.0 and the all-unit baseline (Bonferroni bound) at d = 2.0")
    for m in range(6, 17, 2):
        print(f"  m = {m:2d} vs {HELDOUT - m}: two-group {two_group(1.0, m, HELDOUT - m):.3f}, baseline {baseline(2.0, m, HELDOUT - m):.3f}")
    smallest = next(m for m in range(2, HELDOUT // 2) if two_group(1.0, m, HELDOUT - m) >= 0.8 and baseline(2.0, m, HELDOUT - m) >= 0.8)
    print(f"  smallest m: {smallest}")

    print("\nWhole verdict: run status pass needs H1, H2 and H3 all held. Bounds from the per-claim powers:")
    print("  upper = min(P1, P2, P3); lower = 1 - sum(1 - P_i) (holds whatever the dependence).")
    for label, n_a, n_b in (("labels follow the classes, 30 vs 34", 30, 34), ("at min_group_size, 10 vs 54", 10, 54),
                            ("class fallback, 30 vs 30", PAIRS, PAIRS)):
        print(f"  {label}:")
        for d in (1.0, 1.5, 2.0, 2.5):
            p1, p2, p3 = two_group(d, n_a, n_b), baseline(d, n_a, n_b), reproduction(d, n_a, n_b)
            print(f"    d = {d}: H1 {p1:.3f}, H2 {p2:.3f}, H3 {p3:.3f}; whole verdict in "
                  f"[{max(0.0, 1 - (3 - p1 - p2 - p3)):.3f}, {min(p1, p2, p3):.3f}]")

    print("\nreproduction_d_tolerance = 1.0 in standard errors of the difference of two independent d's")
    for d in (1.0, 2.0, 2.6):
        se = se_d(d, PAIRS, PAIRS)
        print(f"  d = {d}, 30 vs 30: SE(d) {se:.3f}, SE(d2 - d1) {math.sqrt(2) * se:.3f}, tolerance = "
              f"{D_TOL / (math.sqrt(2) * se):.2f} SE; P(|d2 - d1| > 1.0 | no real change) = {1 - within_tolerance(d, PAIRS, PAIRS):.3f}")


if __name__ == "__main__":
    main()
