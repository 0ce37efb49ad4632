"""A routing run's per-token top-k stores (``topk/``), read once per run: shared by the routing analyses'
token contexts (:mod:`audit.designs.routing`) and the basin comparison (:mod:`audit.basin`)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

#: zones of the per-token rows (capture stores disjoint zones) that each analysis zone reads
TOKEN_ZONES = {"prefill": ("prefill",), "generated": ("trimmed", "spill"), "trimmed": ("trimmed",), "spill": ("spill",)}


def read_topk(run_dir: Path):
    """A run's per-token top-k (rows, expert ids, weights: memory-mapped) and its vocabulary, read once per
    run however many analyses ask (keyed by the files' size and mtime, so a rewritten file is read again);
    None when the run stored none."""
    topk = Path(run_dir) / "topk"
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(topk.glob("*")) if f.is_file()) \
        if topk.is_dir() else ()
    return _read_topk(topk, stamp)


@functools.lru_cache(maxsize=4)
def _read_topk(topk: Path, stamp: tuple):
    if not (topk / "idx.npy").is_file() or not (topk / "tokens.parquet").is_file():
        return None
    tokens = pq.read_table(topk / "tokens.parquet").to_pandas()
    idx, weight = np.load(topk / "idx.npy", mmap_mode="r"), np.load(topk / "weight.npy", mmap_mode="r")
    vocab, joiner = {}, " "
    if (topk / "vocab.parquet").is_file():
        table = pq.read_table(topk / "vocab.parquet")
        vocab = dict(zip(table.column("token_id").to_pylist(), table.column("text").to_pylist()))
        joiner = (table.schema.metadata or {}).get(b"joiner", b" ").decode()
    return tokens, idx, weight, vocab, joiner
