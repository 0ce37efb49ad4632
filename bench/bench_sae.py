"""Cost of SAE knockdown (capture/designs/ablation_sae.py) on demo-ablation's builtin model and demo SAE.

``.venv/bin/python bench/bench_sae.py [--repeats 3]``: the plain clean margins of the 36 pairs (batch 8),
the splice-in pass (one forward per batch: margins with the SAE output spliced in, the hook-point
activations for the variance explained, each pair's active features), and the knockdown of every feature
active on at least one pair, rows stacked (``batch x slots_per_forward`` = 256 rows per forward) or one
(pair, feature) row per 8-row forward. Best of ``--repeats``; prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from capture.builtin_sae import HOOK_POINT, demo_model
from capture.designs.ablation import MarginForward
from capture.designs.ablation_sae import _splice_pass, knockdown_rows
from capture.sae import FeatureKnockdown, load_sae

STUDY = Path(__file__).resolve().parents[1] / "preregistrations" / "demo-ablation"


def best(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tok = demo_model(STUDY, Path(tempfile.mkdtemp(prefix="bench-sae-")))
    sae = load_sae(STUDY / "sae", "saelens", k=48)
    prompts = [json.loads(x) for x in (STUDY / "prompts.jsonl").read_text().splitlines() if x.strip()]
    pairs = []
    for p in (p for p in prompts if "clean" in p):
        pairs.append({"pair_id": p["id"], "clean_token_ids": tok(p["clean"], add_special_tokens=False).input_ids,
                      "answer_token_id": tok(p["answer"], add_special_tokens=False).input_ids[0],
                      "wrong_token_id": tok(p["wrong_answer"], add_special_tokens=False).input_ids[0]})
    fwd = MarginForward(model, tok.pad_token_id)
    batches = [pairs[i:i + 8] for i in range(0, len(pairs), 8)]

    def plain():
        return [fwd.margins([p["clean_token_ids"] for p in b], [p["answer_token_id"] for p in b],
                            [p["wrong_token_id"] for p in b]) for b in batches]

    t_plain, margins = best(plain, args.repeats)
    for b, m in zip(batches, margins):
        for p, v in zip(b, m):
            p["baseline_clean_margin"] = float(v)
    t_splice, (_, active) = best(lambda: _splice_pass(fwd, sae, HOOK_POINT, pairs, 8, "demo", model), args.repeats)
    features = sorted({f for on in active.values() for f in on})
    knock = FeatureKnockdown(model, sae, HOOK_POINT)
    rows = sum(len(on) for on in active.values())
    print(f"{len(pairs)} pairs, {len(features)} features active on at least one, {rows} (pair, feature) rows; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| what | time | forwards | rows | per (pair, feature) row |")
    print("|---|---|---|---|---|")
    print(f"| plain clean margins, {len(batches)} forwards of 8 rows | {t_plain * 1e3:.1f} ms | {len(batches)} | {len(pairs)} | – |")
    print(f"| splice-in pass (margins, variance explained, active features) | {t_splice * 1e3:.1f} ms | {len(batches)} | "
          f"{len(pairs)} | – |")
    for per in (256, 8):
        before = fwd.forwards
        t, _ = best(lambda per=per: knockdown_rows(fwd, knock, pairs, active, features, per, "demo"), 1)
        n = fwd.forwards - before
        print(f"| knockdown of every active feature, {per} rows per forward | {t:.2f} s | {n} | {rows} | "
              f"{t / rows * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
