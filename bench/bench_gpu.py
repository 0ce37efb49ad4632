"""GPU benchmarks in one run: capture against plain ``generate``, and the max-T engine against its
GEMM floor on the same device. Started by ``bench/gpu.sh`` (which refuses a machine without CUDA);
never part of the tests.

1. Capture: a random Qwen3.5-MoE built from config (16 MoE layers x 64 experts, top-8, hidden 1,024),
   on the device; plain ``model.generate`` (greedy) against capture's decode loop with the routing
   hooks on (reductions on the device, one host copy per batch), at batch 1 and 8, as tokens/s and
   the ratio (goal on a GPU: <= 1.03x).
2. Max-T: ``stats.all_unit_baseline(backend="torch")`` (Welch t, two-sided, step-down) on the
   e114-sized problem (N = 48, 24 vs 24, F = 10,240, P = 19,999) and a DeepSeek-sized one
   (N = 400, 200 vs 200, F = 14,848, P = 100,000), float32 and float64, each against the floor: the
   products ``R @ Z`` alone on the device, in the engine's chunk size, with ``R`` already there.
   The relabelings are drawn on the host from a numpy Generator (so that both backends see the same
   ones); the time to draw them alone is printed too, since it bounds the ratio from below.

Usage::

    bash bench/gpu.sh                                        # on a CUDA machine, under 5 minutes
    .venv/bin/python bench/bench_gpu.py --device cpu --small # CPU smoke run of every piece (seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stats import _engine, _torch, all_unit_baseline

#: (label, N, F, P) of the max-T problems; ``--small`` uses the second list.
PROBLEMS = [("e114-sized", 48, 10_240, 19_999), ("DeepSeek-sized", 400, 14_848, 100_000)]
SMALL_PROBLEMS = [("e114-shaped (small)", 48, 512, 999), ("DeepSeek-shaped (small)", 40, 768, 1_999)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best(fn, repeats: int, device: str) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs after one warm-up, synchronised."""
    fn()
    sync(device)
    out = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        out = min(out, time.perf_counter() - t)
    return out


def build_moe(small: bool, device: str):
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

    if small:
        dims = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 16, "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
                "linear_num_value_heads": 4, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
                "num_experts": 8, "num_experts_per_tok": 2}
    else:
        dims = {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 4,
                "head_dim": 64, "linear_key_head_dim": 64, "linear_value_head_dim": 64, "linear_num_key_heads": 8,
                "linear_num_value_heads": 16, "moe_intermediate_size": 256, "shared_expert_intermediate_size": 512,
                "num_experts": 64, "num_experts_per_tok": 8}
    config = Qwen3_5MoeTextConfig(vocab_size=4096, max_position_embeddings=2048, pad_token_id=0,
                                  eos_token_id=1, **dims)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return Qwen3_5MoeForCausalLM(config).to(device=device, dtype=dtype).eval(), dims


def bench_capture(args) -> None:
    from capture import families
    from capture.decode import Decoding, decode_batch
    from capture.hooks import RoutingRecorder

    model, dims = build_moe(args.small, args.device)
    sites, _ = families.find_moe_sites(model)
    k = sites[0].spec.top_k
    new, plen = (8, 8) if args.small else (args.new_tokens, 64)
    print(f"capture: random Qwen3.5-MoE hidden {dims['hidden_size']}, {len(sites)} MoE layers x "
          f"{dims['num_experts']} experts, top-{k}, {next(model.parameters()).dtype}; prompt {plen} "
          f"tokens, {new} new tokens, greedy, best of {args.repeats}")
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 8):
        prompts = [torch.randint(2, 4096, (plen,), generator=gen).tolist() for _ in range(batch)]
        keys = [f"p{i}" for i in range(batch)]
        ids = torch.tensor(prompts, device=args.device)
        mask = torch.ones_like(ids)

        def plain(ids=ids, mask=mask):
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0)

        recorder = RoutingRecorder(sites, tie_tol=1e-2, weight_tol=1e-2)

        def hooked(recorder=recorder, batch=batch, prompts=prompts, keys=keys):
            recorder.start_batch(batch)
            with recorder.hooked():
                decode_batch(model, prompts, keys, decoding=Decoding("greedy"), max_new_tokens=new,
                             stop_ids=set(), trim_ids={1}, pad_id=0, recorder=recorder)
            return recorder.finish_batch()

        t_plain, t_hooks = [], []
        plain(), hooked()  # warm-up
        for _ in range(args.repeats):  # interleaved, so that a burst of load hits both
            t_plain.append(best(plain, 1, args.device))
            t_hooks.append(best(hooked, 1, args.device))
        tp, th = min(t_plain), min(t_hooks)
        tokens = batch * new
        print(f"  batch {batch}: generate {tokens / tp:9.1f} tok/s | capture {tokens / th:9.1f} tok/s | "
              f"capture/generate {th / tp:.3f}x (goal on a GPU <= 1.03x)")


def bench_maxt(args) -> None:
    engine = _torch.resolve("torch")
    dev = engine.partition(":")[2]
    if dev != args.device:
        print(f"max-T: the torch backend resolves to {engine}, not {args.device}; timing it there")
    print(f"max-T: stats.all_unit_baseline(backend='torch') -> {engine}; Welch t two-sided, step-down; "
          f"floor = R @ Z alone on the device (same chunks, R already there); best of {args.repeats}")
    rng = np.random.default_rng(0)
    for label, n, f, p in (SMALL_PROBLEMS if args.small else PROBLEMS):
        x = rng.normal(size=(n, f))
        x[: n // 2, 114] += 3.0  # a planted unit: both backends must rank it first
        group = np.arange(n) < n // 2
        batch = _torch.default_batch(dev, f, _engine.default_batch(f))
        t0 = time.perf_counter()
        for _ in _engine.random_relabelings("two_sample", n, n // 2, p, np.random.default_rng(1), batch,
                                            np.float32):
            pass
        t_draw = time.perf_counter() - t0
        for dtype, tdt in ((np.float32, torch.float32), (np.float64, torch.float64)):
            r = torch.zeros((p, n), dtype=tdt, device=dev)
            idx = torch.argsort(torch.rand((p, n), device=dev), dim=1)[:, : n // 2]
            r.scatter_(1, idx, 1.0)
            z = torch.from_numpy(x.astype(dtype)).to(dev)
            out = torch.empty((min(batch, p), f), dtype=tdt, device=dev)
            torch.backends.cuda.matmul.allow_tf32 = False

            def floor(r=r, z=z, out=out, p=p, batch=batch):
                for i in range(0, p, batch):
                    rr = r[i:i + batch]
                    torch.matmul(rr, z, out=out[: rr.shape[0]])

            def ours(x=x, group=group, p=p, dtype=dtype):
                return all_unit_baseline(x, group, statistic="welch_t", target="u114", n_resamples=p,
                                         rng=1, dtype=dtype, backend="torch")

            t_floor = best(floor, args.repeats, dev)
            t_ours = best(ours, args.repeats, dev)
            res = ours()
            if res.engine != engine or res.target_rank != 1:
                sys.exit(f"bench_gpu.py: the engine ran on {res.engine} and ranked the planted unit "
                         f"{res.target_rank}, expected {engine} and 1")
            print(f"  {label:24s} N={n} F={f:,} P={p:,} {np.dtype(dtype).name}: engine {t_ours:7.3f} s | "
                  f"floor {t_floor:7.4f} s | {t_ours / t_floor:7.1f}x the floor | host draws alone "
                  f"{t_draw:6.3f} s ({t_draw / t_floor:.1f}x the floor)")
            del r, z, out, floor  # the next problem's buffers replace them
            if dev == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny sizes: a smoke run of every piece")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--skip-capture", action="store_true")
    ap.add_argument("--skip-maxt", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: --device cuda but torch.cuda.is_available() is False (no CUDA device "
                 "or a CPU-only PyTorch); run on a GPU machine, or pass --device cpu --small")
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else (platform.processor() or
                                                                         platform.machine())
    print(f"device: {args.device} ({where}) | torch {torch.__version__} (CUDA {torch.version.cuda}) | "
          f"numpy {np.__version__} | {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t0 = time.perf_counter()
    if not args.skip_capture:
        bench_capture(args)
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the model is gone with bench_capture's frame
    if not args.skip_maxt:
        bench_maxt(args)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
