"""Cost of the all-slot ablation baseline against a plain forward, on a random hybrid Qwen3.5.

Not a timed test: run ``.venv/bin/python bench/bench_ablation.py`` and copy the output into
bench/RESULTS.md (## ablation). The model is a random dense Qwen3.5 built from config (hidden 256,
8 layers, full attention every fourth layer like Qwen3.5-4B; 8 query heads of 32 channels, 8 value
heads of 32 channels in the linear-attention layers: 2 x 8 + 6 x 8 = 64 head slots), batches of
16 left-padded prompts of 12-20 tokens. Prints, best of N:

* a plain forward of one batch (the margin read from the output head's input, no ablation hook);
* one forward with one slot mean-ablated (the hook's overhead);
* the all-slot baseline of one batch, one forward per slot (``slots_per_forward=1``) and with k slot
  ablations stacked along the batch (``slots_per_forward=k``): seconds, forwards/s, and slot
  ablations (pairs x slots) per second, with the ratio of the baseline's time to S plain forwards.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

from capture.designs.ablation import MarginForward, ablated_margins
from capture.slots import SlotAblation, slot_summary, slot_table


def build(seed: int = 0) -> Qwen3_5ForCausalLM:
    config = Qwen3_5TextConfig(
        vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=8,
        layer_types=["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"],
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, linear_key_head_dim=32, linear_value_head_dim=32,
        linear_num_key_heads=4, linear_num_value_heads=8, max_position_embeddings=1024, pad_token_id=0,
        eos_token_id=1, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen3_5ForCausalLM(config).eval()


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stack", type=int, nargs="+", default=[1, 8, 64])
    args = ap.parse_args()
    model = build()
    slots = slot_table(model)
    summary = slot_summary(slots)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(12, 21, (args.batch,), generator=gen).tolist()
    rows = [torch.randint(2, 4096, (n,), generator=gen).tolist() for n in lengths]
    answer = torch.randint(2, 4096, (args.batch,), generator=gen).tolist()
    wrong = torch.randint(2, 4096, (args.batch,), generator=gen).tolist()
    means = {s.label: torch.randn(s.stop - s.start, generator=gen) for s in slots}
    abl = SlotAblation(model, slots, means)
    fwd = MarginForward(model, pad_id=0)
    n_slots = len(slots)
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    say(f"model: random Qwen3.5 hidden 256, 8 layers ({summary['by_layer_type']}), {n_slots} slots; "
        f"batch {args.batch} pairs of {min(lengths)}-{max(lengths)} tokens; best of {args.repeats}")
    t_plain = best_of(lambda: fwd.margins(rows, answer, wrong), args.repeats)
    say(f"plain forward (one batch): {t_plain * 1e3:7.1f} ms = {1 / t_plain:7.2f} forwards/s, "
        f"{args.batch / t_plain:8.1f} pairs/s")
    t_one = best_of(lambda: ablated_margins(fwd, abl, rows, answer, wrong, [[slots[-1].label]], 1), args.repeats)
    say(f"one slot mean-ablated:      {t_one * 1e3:7.1f} ms = {1 / t_one:7.2f} forwards/s ({t_one / t_plain:.3f}x plain)")
    conditions = [[s.label] for s in slots]
    for stack in args.stack:
        start = time.perf_counter()
        ablated_margins(fwd, abl, rows, answer, wrong, conditions, stack)
        t_all = time.perf_counter() - start
        forwards = -(-n_slots // stack)
        say(f"all-slot baseline, {stack:3d} slot(s)/forward: {t_all:7.2f} s for {n_slots} slots x {args.batch} pairs "
            f"= {forwards} forwards of {stack * args.batch} rows, {forwards / t_all:6.2f} forwards/s, "
            f"{n_slots * args.batch / t_all:8.1f} slot-ablations/s; {t_all / (n_slots * t_plain):.3f}x "
            f"the time of {n_slots} plain forwards")


if __name__ == "__main__":
    main()
