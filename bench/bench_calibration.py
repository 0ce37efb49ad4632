"""Calibration of the all-unit baseline under a null of equal means, with equal and unequal variances.

For each design (group sizes, which group has the larger SD) and unit correlation (independent, or
blocks of 20 units sharing a factor with correlation 0.5), ``--sims`` simulated datasets of ``--units``
null units (every unit has equal group means) are tested by every method offered, and the script
prints the per-unit rejection rate at alpha (uncorrected p) and the family-wise error of the
step-down max-T (any unit with p <= alpha), with the Clopper–Pearson 99 % interval of that error and
whether it lies in the 99 % binomial acceptance interval of alpha (``Binomial(sims, alpha)``).

Methods: the permutation max-T with Welch t and with Student t (``null="exchangeable"``), the
equal-means max-T with the wild bootstrap and with the within-group bootstrap
(``null="equal_means"``), and, for reference, the parametric Welch t-test with Bonferroni.

Usage::

    .venv/bin/python bench/bench_calibration.py                 # 400 datasets x 200 units
    .venv/bin/python bench/bench_calibration.py --sims 50       # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
import scipy.stats as sps

from stats import all_unit_baseline

DESIGNS = [  # label, n_a, n_b, SD of group A, SD of group B
    ("10 v 10, equal variances", 10, 10, 1.0, 1.0),
    ("8 v 14, equal variances", 8, 14, 1.0, 1.0),
    ("10 v 10, SD ratio 3:1", 10, 10, 3.0, 1.0),
    ("8 v 14, smaller group SD x3", 8, 14, 3.0, 1.0),
    ("8 v 14, larger group SD x3", 8, 14, 1.0, 3.0),
]
METHODS = [  # label, keyword arguments of all_unit_baseline (None: parametric Welch + Bonferroni)
    ("permutation, Welch t", {"null": "exchangeable", "statistic": "welch_t", "exact_cap": 0}),
    ("permutation, Student t", {"null": "exchangeable", "statistic": "student_t", "exact_cap": 0}),
    ("equal means, wild bootstrap, Welch t", {"null": "equal_means", "resampling": "wild"}),
    ("equal means, within-group bootstrap, Welch t", {"null": "equal_means", "resampling": "bootstrap"}),
    ("parametric Welch + Bonferroni", None),
]


def simulate(rng, n_a, n_b, sd_a, sd_b, units, correlated):
    n = n_a + n_b
    x = rng.normal(size=(n, units))
    if correlated:  # blocks of 20 units share one factor: within-block correlation 0.5
        common = rng.normal(size=(n, -(-units // 20))).repeat(20, axis=1)[:, :units]
        x = np.sqrt(0.5) * common + np.sqrt(0.5) * x
    return x * np.r_[np.full(n_a, sd_a), np.full(n_b, sd_b)][:, None]


def parametric(x, g, alpha):
    res = sps.ttest_ind(x[g], x[~g], equal_var=False)
    p = res.pvalue
    return np.mean(p <= alpha), bool(np.any(p <= alpha / x.shape[1]))


def clopper_pearson(k, n, level=0.99):
    a = 1 - level
    lo = sps.beta.ppf(a / 2, k, n - k + 1) if k > 0 else 0.0
    hi = sps.beta.ppf(1 - a / 2, k + 1, n - k) if k < n else 1.0
    return lo, hi


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=400)
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=999)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration, subprocess.CalledProcessError):
        cpu = platform.processor() or "unknown"
    print(f"machine: {cpu} | {os.cpu_count()} CPUs | numpy {np.__version__} | "
          f"{args.sims} datasets x {args.units} null units | {args.resamples} resamples | "
          f"alpha {args.alpha} | seed {args.seed}")
    lo_acc, hi_acc = sps.binom.ppf([0.005, 0.995], args.sims, args.alpha) / args.sims
    print(f"99 % binomial acceptance interval of alpha over {args.sims} datasets: "
          f"[{lo_acc:.4f}, {hi_acc:.4f}]")
    print("| design | units | method | per-unit rejection | FWER (99 % CI) | FWER in the interval of alpha |")
    print("|---|---|---|---|---|---|")
    for di, (label, n_a, n_b, sd_a, sd_b) in enumerate(DESIGNS):
        g = np.r_[np.ones(n_a, bool), np.zeros(n_b, bool)]
        for correlated in (False, True):
            # one stream of datasets per design and correlation, shared by every method
            data_seed = [args.seed, di, int(correlated)]
            for mi, (mlabel, kw) in enumerate(METHODS):
                rng = np.random.default_rng(data_seed)
                rs = np.random.default_rng([args.seed, di, int(correlated), mi, 1])
                t0 = time.perf_counter()
                rej, fw = 0.0, 0
                for _ in range(args.sims):
                    x = simulate(rng, n_a, n_b, sd_a, sd_b, args.units, correlated)
                    if kw is None:
                        r_unit, err = parametric(x, g, args.alpha)
                    else:
                        r = all_unit_baseline(x, g, n_resamples=args.resamples, rng=rs,
                                              alpha=args.alpha, **kw)
                        r_unit = float(np.mean(r.p_uncorrected <= args.alpha))
                        err = bool(np.any(r.p_maxt_step_down <= args.alpha))
                    rej += r_unit
                    fw += err
                lo, hi = clopper_pearson(fw, args.sims)
                ok = "yes" if lo_acc <= fw / args.sims <= hi_acc else (
                    "no (above)" if fw / args.sims > hi_acc else "no (below)")
                print(f"| {label} | {'correlated' if correlated else 'independent'} | {mlabel} | "
                      f"{rej / args.sims:.3f} | {fw / args.sims:.3f} ({lo:.3f}-{hi:.3f}) | {ok} |"
                      f"  <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
