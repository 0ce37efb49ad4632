"""Capture overhead and throughput on a random Qwen3.5-MoE (hidden 512, 8 layers, 64 experts, top-8).

Not a timed test: run ``.venv/bin/python bench/bench_capture.py`` and copy the output into
bench/RESULTS.md (## capture). Prints, for batch 1 and batch 8: plain ``model.generate`` (greedy),
capture's own decode loop without hooks, and with the routing hooks on (every MoE layer, reductions on
device, one host copy per batch), as tokens/s and the ratio to ``generate``; and bytes per token of the
stored top-k rows against the 4·L·k target.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig

from capture import families
from capture.decode import Decoding, decode_batch
from capture.hooks import RoutingRecorder


def build(seed: int = 0) -> Qwen3_5MoeForCausalLM:
    config = Qwen3_5MoeTextConfig(
        vocab_size=4096, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        head_dim=64, linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=4,
        linear_num_value_heads=8, moe_intermediate_size=128, shared_expert_intermediate_size=256,
        num_experts=64, num_experts_per_tok=8, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(seed)
    return Qwen3_5MoeForCausalLM(config).eval()


def timed_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Best time of each function, measured in turns (a, b, c, a, b, c, ...) so that a burst of load
    on a shared machine hits every candidate alike instead of one cell."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = build()
    sites, _ = families.find_moe_sites(model)
    gen = torch.Generator().manual_seed(1)
    n_layers, k = len(sites), sites[0].spec.top_k
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"model: Qwen3.5-MoE hidden 512, {n_layers} MoE layers, 64 experts, top-{k}; "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, greedy, best of {args.repeats}")
    for batch in (1, 8):
        prompts = [torch.randint(2, 4096, (args.prompt_len,), generator=gen).tolist() for _ in range(batch)]
        keys = [f"p{i}" for i in range(batch)]
        ids = torch.tensor(prompts)
        mask = torch.ones_like(ids)

        def plain():
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

        def loop(recorder=None):
            if recorder is not None:
                recorder.start_batch(batch)
            decode_batch(model, prompts, keys, decoding=Decoding("greedy"), max_new_tokens=args.new_tokens,
                         stop_ids=set(), trim_ids={1}, pad_id=0, recorder=recorder)
            if recorder is not None:
                return recorder.finish_batch()

        recorder = RoutingRecorder(sites, tie_tol=1e-5, weight_tol=1e-5)

        def hooked():
            with recorder.hooked():
                return loop(recorder)

        best = timed_interleaved({"plain": plain, "loop": loop, "hooks": hooked}, args.repeats)
        t_plain, t_loop, t_hooks = best["plain"], best["loop"], best["hooks"]
        routing = hooked()
        tokens = batch * args.new_tokens
        per_token = (routing.idx.nbytes + routing.weights.nbytes) / routing.idx.shape[0]
        print(f"batch {batch}: generate {tokens / t_plain:8.1f} tok/s | own loop {tokens / t_loop:8.1f} tok/s "
              f"({t_loop / t_plain:.3f}x) | capture {tokens / t_hooks:8.1f} tok/s "
              f"(overhead vs generate {t_hooks / t_plain:.3f}x, vs own loop {t_hooks / t_loop:.3f}x) | "
              f"top-k storage {per_token:.0f} B/token (target <= 4*L*k = {4 * n_layers * k})")


if __name__ == "__main__":
    main()
