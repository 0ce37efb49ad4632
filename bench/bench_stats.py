"""Benchmark of the all-unit max-T baseline against its floor and two references.

One run prints, each as a ratio to the floor (a plain float32 ``(P×N) @ (N×F)`` product):

* this implementation (``stats.all_unit_baseline``: single-step and step-down max-T, uncorrected,
  Holm and BH in one call), float32 with Welch t and mean difference on balanced (100 vs 100) and
  unequal (120 vs 80) groups, and float64 Welch t balanced;
* ``scipy.stats.permutation_test`` (vectorized) on a subset of units, scaled to F units;
* ``nilearn.mass_univariate.permuted_ols`` (scaled from fewer permutations if needed);
* exact enumeration of C(20,10) = 184,756 relabelings over F units;
* the e114-sized problem (N = 48, 24 vs 24, F = 10,240, P = 19,999, float64 Welch t, as the audit runs it);
* a larger calibration run (null rejection rate, max-T FWER).

The baseline, exact and e114 rows run once per ``--backends`` entry (``numpy``; ``torch``: the
torch backend of :mod:`stats._torch` on CUDA if present, else on the CPU), each against the floor of
its own device and library (numpy's matmul for numpy, ``torch.matmul`` for torch).

Usage::

    .venv/bin/python bench/bench_stats.py            # N=200, F=10,240, P=10,000
    .venv/bin/python bench/bench_stats.py --quick    # smaller sizes, for a smoke run
    .venv/bin/python bench/bench_stats.py --baseline-only   # baseline, exact and e114 rows only
    .venv/bin/python bench/bench_stats.py --baseline-only --backends numpy,torch

Timings are the minimum over ``--repeat`` runs; the floor is measured in the same process on the
same machine. Each baseline row alternates ``--repeat`` rounds of (floor, baseline) and prints the
ratio of the two minima and the median of the per-round ratios. The load average and the BLAS thread
count are printed, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy
import scipy.stats as sps

from stats import all_unit_baseline, permutation_test


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved(fn, floor, repeat):
    """``repeat`` rounds of (floor, fn): min of fn, min of the floors beside it, and the median of
    the per-round ratios fn/floor (on a shared machine a burst of load then hits both sides)."""
    tf, tt = [], []
    for _ in range(repeat):
        tf.append(best_of(floor, 1))
        tt.append(best_of(fn, 1))
    return min(tt), min(tf), float(np.median(np.divide(tt, tf)))


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS threads: unknown (threadpoolctl not installed)"
    blas = [f"{i['prefix']} {i['num_threads']} threads" for i in threadpool_info()
            if i["user_api"] == "blas"]
    return "BLAS: " + (", ".join(blas) or "none found")


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (N=60, F=2048, P=2000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-calibration", action="store_true")
    ap.add_argument("--baseline-only", action="store_true",
                    help="only the baseline, exact and e114 rows (no scipy, nilearn, calibration)")
    ap.add_argument("--backends", default="numpy",
                    help="comma-separated max-T backends to time: numpy, torch (default: numpy)")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    n, f, p = (60, 2048, 2000) if args.quick else (200, 10_240, 10_000)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, f))
    x[: n // 2, 114] += 1.0
    group = np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)]
    ids = [f"L{j // 256}E{j % 256}" for j in range(f)]
    print(f"machine: {platform.machine()} {platform.processor() or ''} | {os.cpu_count()} CPUs | "
          f"numpy {np.__version__} | scipy {scipy.__version__} | N={n} F={f} P={p}")
    print(f"{blas_threads()} | {load()} (start)")

    lab = np.zeros((p, n), np.float32)
    idx = np.argsort(rng.random((p, n)), axis=1)[:, : n // 2]
    np.put_along_axis(lab, idx, 1, axis=1)
    z32 = x.astype(np.float32)

    def floor():
        return lab @ z32

    floors = {"numpy": floor}
    if "torch" in backends:
        import torch

        from stats._torch import resolve
        dev = resolve("torch").partition(":")[2]
        lab_t, z_t = torch.from_numpy(lab).to(dev), torch.from_numpy(z32).to(dev)
        torch.backends.cuda.matmul.allow_tf32 = False

        def torch_floor():
            out = lab_t @ z_t
            if dev == "cuda":
                torch.cuda.synchronize()
            return out
        floors["torch"] = torch_floor
        print(f"torch {torch.__version__} on {dev} ({torch.get_num_threads()} CPU threads)")

    n1u = (6 * n) // 10  # unequal groups: 120 vs 80 at N = 200
    group_u = np.r_[np.ones(n1u, bool), np.zeros(n - n1u, bool)]
    x_u = x.copy()
    x_u[:n1u, 114] += 1.0
    cases = [  # label, data, group, statistic, dtype, note
        ("float32 welch_t, balanced", x, group, "welch_t", np.float32, "one product"),
        ("float32 welch_t, unequal", x_u, group_u, "welch_t", np.float32,
         "two products: R@z and R@z^2"),
        ("float32 mean_diff, balanced", x, group, "mean_diff", np.float32, "one product"),
        ("float32 mean_diff, unequal", x_u, group_u, "mean_diff", np.float32, "one product"),
        ("float64 welch_t, balanced", x, group, "welch_t", np.float64, "one float64 product"),
    ]

    def ours(xx, gg, stat, dt, backend):
        return lambda: all_unit_baseline(xx, gg, unit_ids=ids, target="L0E114", statistic=stat,
                                         n_resamples=p, rng=1, dtype=dt, backend=backend)

    t_floor = best_of(floor, args.repeat)
    for backend in backends:
        fl_fn = floors[backend]
        t_fl = best_of(fl_fn, args.repeat)
        print(f"[{backend}] floor float32 matmul ({p}x{n} @ {n}x{f})   {t_fl:8.3f} s   1.00x")
        print(f"{'':52s} {'min':>8s}   {'ratio':>5s}  {'adjacent floor':>14s}  {'median paired':>13s}")
        for label, xx, gg, stat, dt, note in cases:
            t, fl, paired = interleaved(ours(xx, gg, stat, dt, backend), fl_fn, args.repeat)
            if backend == "numpy":
                t_floor = min(t_floor, fl)
            print(f"[{backend}] baseline {label:33s} {t:8.3f} s  {t / fl:5.2f}x  {fl:12.3f} s  "
                  f"{paired:11.2f}x  ({note})")
        print(f"{load()} (after the {backend} baseline rows)")
    maxt_extras(backends, floors, ids, rng, args.repeat, f)
    if args.baseline_only:
        return

    # scipy.stats.permutation_test, vectorized over a subset of units, scaled to F
    sub = 64 if not args.quick else 32
    a_, b_ = x[group, :sub], x[~group, :sub]

    def welch(u, v, axis=-1):
        return sps.ttest_ind(u, v, axis=axis, equal_var=False).statistic

    t_sp = best_of(lambda: sps.permutation_test((a_, b_), welch, n_resamples=p, vectorized=True,
                                                axis=0, rng=2, batch=200), 1)
    t_sp_scaled = t_sp * f / sub
    print(f"scipy.stats.permutation_test, {sub} units -> x{f // sub} {t_sp:8.3f} s -> {t_sp_scaled:8.1f} s "
          f"{t_sp_scaled / t_floor:7.1f}x  (per-unit p only, no max-T)")

    try:
        from nilearn.mass_univariate import permuted_ols
        p_nl = min(p, 1000)
        t_nl = best_of(lambda: permuted_ols(group[:, None].astype(float), x, model_intercept=True,
                                            n_perm=p_nl, two_sided_test=True, random_state=0,
                                            n_jobs=1, verbose=0), 1)
        t_nl_scaled = t_nl * p / p_nl
        print(f"nilearn permuted_ols, {p_nl} perms -> x{p / p_nl:g}        {t_nl:8.3f} s -> "
              f"{t_nl_scaled:8.1f} s {t_nl_scaled / t_floor:7.1f}x  (single-step max-T, n_jobs=1)")
    except ImportError:
        print("nilearn not installed (pip install -e '.[bench]')")

    x20 = rng.normal(size=(20, f))
    g20 = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    t0 = time.perf_counter()
    permutation_test(x20, g20, dtype=np.float32)
    t_ex_unc = time.perf_counter() - t0
    print(f"exact C(20,10) x {f} units: per-unit permutation_test {t_ex_unc:.2f} s (float32)")

    if args.skip_calibration:
        return
    # calibration, larger than the CI tests
    sims, fam = (200, 2000) if not args.quick else (50, 500)
    g12 = np.r_[np.ones(6, bool), np.zeros(6, bool)]
    t0 = time.perf_counter()
    fw = sum(bool(np.any(all_unit_baseline(rng.normal(size=(12, fam)), g12).p_maxt_step_down <= 0.05))
             for _ in range(sims))
    hi = sps.binom.ppf(0.99, sims, 0.05)
    print(f"max-T FWER under the null: {fw}/{sims} = {fw / sims:.3f} (99% upper bound at 0.05: {hi / sims:.3f}) "
          f"[{sims} studies x {fam} units, 6 vs 6 exact, {time.perf_counter() - t0:.1f} s]")
    xn = rng.normal(size=(20, 20_000 if not args.quick else 4000))
    rej = int(np.sum(permutation_test(xn, g20, dtype=np.float32).pvalue <= 0.05))
    lo_, hi_ = sps.binom.ppf([0.005, 0.995], xn.shape[1], 0.05)
    print(f"per-unit null rejection at 0.05: {rej}/{xn.shape[1]} (99% binomial interval {lo_:.0f}-{hi_:.0f})")
    found = 0
    for _ in range(100):
        xp = rng.normal(size=(20, 1024))
        xp[:10, 0] += 1.5
        rr = all_unit_baseline(xp, g20, target="u0", alternative="greater", n_resamples=999, rng=rng,
                               exact_cap=0, dtype=np.float32)
        found += rr.target_p_maxt <= 0.05
    print(f"planted d=1.5, 10 vs 10, raced against 1,023 null units: target max-T significant in "
          f"{found}/100 studies (one-sided, step-down, alpha 0.05)")


def maxt_extras(backends, floors, ids, rng, repeat, f):
    """Exact C(20,10) over ``f`` units, and the e114-sized problem against its own floor."""
    x20 = rng.normal(size=(20, f))
    g20 = np.r_[np.ones(10, bool), np.zeros(10, bool)]
    n, p = 48, 19_999
    x48 = rng.normal(size=(n, f))
    g48 = np.r_[np.ones(24, bool), np.zeros(24, bool)]
    lab = np.zeros((p, n), np.float64)
    np.put_along_axis(lab, np.argsort(rng.random((p, n)), axis=1)[:, :24], 1, axis=1)
    # the exact run's own floor: the products of the 92,378 enumerated rows (half of C(20,10)) with
    # the data, in the engine's chunks, the rows already built
    from stats import _engine
    r20 = np.concatenate(list(_engine.exact_relabelings("two_sample", 20, 10, True,
                                                        _engine.default_batch(f), np.float32)))
    z20 = x20.astype(np.float32)
    step = _engine.default_batch(f)
    for backend in backends:
        if backend == "numpy":
            out = np.empty((step, f), np.float32)

            def ex_floor(out=out):
                for i in range(0, r20.shape[0], step):
                    np.matmul(r20[i:i + step], z20, out=out[: min(step, r20.shape[0] - i)])
        else:
            import torch
            dev = floors["torch"]().device.type
            r20_t, z20_t = torch.from_numpy(r20).to(dev), torch.from_numpy(z20).to(dev)

            def ex_floor(r20_t=r20_t, z20_t=z20_t, dev=dev):
                for i in range(0, r20_t.shape[0], step):
                    r20_t[i:i + step] @ z20_t
                if dev == "cuda":
                    torch.cuda.synchronize()
        t_ex, t_exf, paired = interleaved(
            lambda backend=backend: all_unit_baseline(x20, g20, unit_ids=ids, dtype=np.float32,
                                                      backend=backend),
            ex_floor, repeat)
        print(f"[{backend}] exact C(20,10)=184,756 relabelings x {f} units: baseline (step-down) "
              f"{t_ex:.2f} s (goal <= 2 s); its own product floor {t_exf:.2f} s, {t_ex / t_exf:.2f}x "
              f"(median paired {paired:.2f}x) (float32; two-sided balanced: half enumerated)")
        # the floor: the float64 products in the engine's chunks, into one reused buffer
        if backend == "numpy":
            out48 = np.empty((step, f))

            def fl_fn(out48=out48):
                for i in range(0, p, step):
                    np.matmul(lab[i:i + step], x48, out=out48[: min(step, p - i)])
        else:
            import torch
            dev = floors["torch"]().device.type
            lab_t, z_t = torch.from_numpy(lab).to(dev), torch.from_numpy(x48).to(dev)
            out48_t = torch.empty((step, f), dtype=torch.float64, device=dev)

            def fl_fn(lab_t=lab_t, z_t=z_t, out48_t=out48_t, dev=dev):
                for i in range(0, p, step):
                    torch.matmul(lab_t[i:i + step], z_t, out=out48_t[: min(step, p - i)])
                if dev == "cuda":
                    torch.cuda.synchronize()
        t, fl, paired = interleaved(
            lambda backend=backend: all_unit_baseline(x48, g48, unit_ids=ids, target="L0E114",
                                                      statistic="welch_t", n_resamples=p, rng=1,
                                                      dtype=np.float64, backend=backend),
            fl_fn, repeat)
        print(f"[{backend}] e114-sized N={n} F={f} P={p} float64 welch_t {t:8.3f} s  {t / fl:5.2f}x "
              f"the float64 floor ({fl:.3f} s; median paired {paired:.2f}x)")
    print(f"{load()} (after the exact and e114 rows)")


if __name__ == "__main__":
    main()
