"""Cost of the discovery probes against exact patching, on a random hybrid Qwen3.5.

Not a timed test: run ``.venv/bin/python bench/bench_discovery.py`` and copy the output into
bench/RESULTS.md (## discovery). The model is bench_ablation's random dense Qwen3.5 (hidden 256, 8 layers,
64 head slots); one batch of 16 left-padded pairs of 16 tokens. Prints, best of N, measured in one run:

* a plain forward of the batch (no grad);
* the probes' pass: the corrupted forward (no grad) + the clean forward with gradients kept + one
  backward, which gives the logit lens, every layer's and every slot's attribution at once;
* exact patching of every slot, one forward per slot;

and the ratios: probes / plain forward, and exact-all-slots / probes (what attribution saves). Per pair:
the probes cost 2 forwards + 1 backward per batch whatever the number of slots; the exact check costs
one forward per checked slot per batch.
"""

from __future__ import annotations

import argparse
import platform

import torch

from bench_ablation import build
from bench_stats import best_of as best
from capture.discover import Probe, _exact, _slot_attribution
from capture.slots import slot_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build()
    for p in model.parameters():
        p.requires_grad_(False)
    slots = slot_table(model)
    probe = Probe(model, 0, slots)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(5, model.config.vocab_size, (args.pairs, args.tokens), generator=g).tolist()
    corrupted = [row[:-3] + torch.randint(5, model.config.vocab_size, (3,), generator=g).tolist() for row in clean]
    a, b = [7] * args.pairs, [8] * args.pairs
    w = args.tokens
    plain = best(lambda: probe.run(clean, a, b, grad=False, width=w), args.repeat)

    def probes():
        corr = probe.run(corrupted, a, b, grad=False, width=w)
        cl = probe.run(clean, a, b, grad=True, width=w)
        _slot_attribution(probe, cl, corr)
        return corr

    both = best(probes, args.repeat)
    corr = probes()
    exact = best(lambda: [_exact(probe, clean, corr, a, b, s) for s in slots], 1)
    print(f"machine: {platform.machine()} {platform.processor() or ''} torch {torch.__version__} threads {torch.get_num_threads()}")
    print(f"model: {len(probe.layers)} layers, {len(slots)} head slots; batch {args.pairs} pairs x {w} tokens")
    print(f"plain forward            {plain * 1e3:8.1f} ms")
    print(f"probes (2 fwd + 1 bwd)   {both * 1e3:8.1f} ms   = {both / plain:5.2f} x a plain forward; ranks all {len(slots)} slots")
    print(f"exact, every slot        {exact * 1e3:8.1f} ms   = {exact / plain:5.2f} x a plain forward ({len(slots)} forwards)")
    print(f"exact-all / probes       {exact / both:8.2f}")


if __name__ == "__main__":
    main()
