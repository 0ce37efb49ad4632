"""Source tracing cost on the demo-ablation builtin model: seconds per pair x grid cell, against plain forwards.

Usage: .venv/bin/python bench/bench_source_trace.py [--repeats 3]. Traces demo-ablation's 24 headline pairs over
its B5 grid (source layers 0-3 x positions 0, first_diff, -1 = 288 cells, every cell one row of a stacked forward
of up to 256 rows) and times the same number of rows as plain forwards of the corrupted prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from capture import builtin_heads, runtime
from capture.designs.ablation import MarginForward
from capture.slots import slot_table
from capture.source_trace import Cell, position_index, trace_pairs

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = [json.loads(x) for x in (ROOT / "preregistrations/demo-ablation/prompts.jsonl").read_text().splitlines() if x.strip()]
    heads = [p for p in prompts if p["class"] == "headline"]
    plant = {"name": "tiny-qwen3_5", "seed": 0, "plant": {"layer": 3, "head": 2, "strength": 12.0}}
    words = {w for p in prompts for k in ("clean", "corrupted", "answer", "wrong_answer", "text") for w in p.get(k, "").split()}
    folder = builtin_heads.ensure_builtin(plant, Path(tempfile.mkdtemp()), words)
    tok, _ = runtime.load_tokenizer(folder, [p["clean"] for p in heads])
    model = runtime.load_model(runtime.ModelSource(folder, "builtin", builtin_heads.BUILDER_VERSION), dtype="float32",
                               trust_remote_code=False, device_map=None)
    ids = lambda t: tok(t, add_special_tokens=False).input_ids
    pairs = [(ids(p["clean"]), ids(p["corrupted"]), ids(p["answer"])[0], ids(p["wrong_answer"])[0]) for p in heads]
    cells = [[Cell(layer, (position_index(k, c, k2),)) for layer in range(4) for k in (0, "first_diff", -1)]
             for c, k2, _, _ in pairs]
    slot = [s for s in slot_table(model) if s.label == "L3H2"]
    fwd = MarginForward(model, model.config.pad_token_id)
    n_cells = sum(len(c) for c in cells)
    trace_pairs(fwd, model, slot, pairs, cells, stack=256)  # warm-up
    best_trace, best_plain = float("inf"), float("inf")
    for _ in range(args.repeats):
        before, start = fwd.rows, time.perf_counter()
        trace_pairs(fwd, model, slot, pairs, cells, stack=256)
        best_trace, rows = min(best_trace, time.perf_counter() - start), fwd.rows - before
        plain = [k for (_, k, _, _), c in zip(pairs, cells) for _ in range(len(c) + 2)]
        answers = [a for (_, _, a, _), c in zip(pairs, cells) for _ in range(len(c) + 2)]
        wrongs = [b for (_, _, _, b), c in zip(pairs, cells) for _ in range(len(c) + 2)]
        start = time.perf_counter()
        for i in range(0, len(plain), 256):
            fwd.margins(plain[i:i + 256], answers[i:i + 256], wrongs[i:i + 256])
        best_plain = min(best_plain, time.perf_counter() - start)
    print(f"{len(pairs)} pairs x {n_cells // len(pairs)} cells = {n_cells} cells, {rows} rows; trace {best_trace:.3f} s "
          f"({1e3 * best_trace / n_cells:.2f} ms per pair x cell); the same rows as plain forwards {best_plain:.3f} s "
          f"(ratio {best_trace / best_plain:.2f}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
