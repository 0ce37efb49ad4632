"""Capture storage: atomic per-batch shards, resume, and a deterministic merge.

Layout of ``runs/<study>/<run-id>/`` once complete::

    manifest.json           provenance, counts, deviations, the sha256 of every other file (``outputs``);
                            written last (its presence = the data are complete; the run is complete
                            once the capture's journal entry records it, :mod:`capture.run`)
    texts.parquet           one row per prompt: texts, token ids, trim position, finish reason,
                            zone token counts, spill tokens -- everything labelling may read
    units.parquet           prompt x layer x expert x zone: n_tokens, n_selected, weight_sum, S, Q, W
    events.parquet          near-ties and used-vs-reconstructed disagreements, one row per token x layer
    topk/tokens.parquet     one row per routing row in a zone: prompt_id, position, token_id, zone
    topk/idx.npy            int16   [tokens, layers, k]  expert ids, rows aligned with tokens.parquet
    topk/weight.npy         float16 [tokens, layers, k]  routed weights
    residual/L<l>.npy       float16 [tokens, hidden] router input at layer l (only if asked for)

While running, ``_work/`` holds ``run.json`` (the resolved configuration; a resume must match it) and
``batches/b<nnnnn>/`` shards, each written into a temporary folder and renamed into place, so a
shard is either complete or absent. A resume skips complete batches; batches are fixed by the prompt
order (sorted by id) and the batch size, never by what happens to be left, so an interrupted and
resumed run computes every batch exactly as an uninterrupted one and the merged files are bitwise
identical. Every file is written to a temporary name and renamed; an out-of-disk error leaves the
completed shards in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lockstep import artifacts
from lockstep.errors import CaptureError
from lockstep.records import RUN_MANIFEST, write_record
from lockstep.fsio import atomic_write, canonical_json, pretty_json, sha256_bytes, sha256_file

TEXTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("class", pa.string()), ("split", pa.string()),
    ("prompt_text", pa.string()), ("rendered_prompt", pa.string()),
    ("prompt_token_ids", pa.list_(pa.int64())), ("generated_text", pa.string()), ("trimmed_text", pa.string()),
    ("token_ids", pa.list_(pa.int64())), ("trim_position", pa.int64()), ("finish_reason", pa.string()),
    ("n_prefill", pa.int64()), ("n_generated", pa.int64()), ("n_trimmed", pa.int64()), ("n_spill", pa.int64()),
    ("spill_tokens", pa.list_(pa.struct([("token", pa.string()), ("count", pa.int64())]))),
])
UNITS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("layer", pa.int64()), ("expert", pa.int64()), ("zone", pa.string()),
    ("n_tokens", pa.int64()), ("n_selected", pa.int64()), ("weight_sum", pa.float64()),
    ("S", pa.float64()), ("Q", pa.float64()), ("W", pa.float64()),
])
EVENTS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("position", pa.int64()), ("zone", pa.string()), ("layer", pa.int64()),
    ("near_tie", pa.bool_()), ("disagreement", pa.bool_()), ("kth_gap", pa.float32()),
])
TOKENS_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("position", pa.int64()), ("token_id", pa.int64()), ("zone", pa.string()),
])

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """Turn out-of-disk ``OSError`` into a :class:`CaptureError` that says completed batches are kept."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise CaptureError(
                f"out of disk space while writing under {where} ({os.strerror(exc.errno)})",
                hint="free space and run the same command again: completed batches are kept and resumed",
            ) from None
        raise


@contextmanager
def _atomic_file(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``, fsynced and renamed over it on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(path: Path, table: pa.Table) -> None:
    with _atomic_file(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_npy(path: Path, array: np.ndarray) -> None:
    with _atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


class RunStore:
    """The folder of one run: its work area, batch shards and merged outputs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.work = self.root / artifacts.WORK
        self.batches = self.work / "batches"

    # -- configuration ----------------------------------------------------------------------------
    def bind(self, config: dict[str, Any]) -> None:
        """Start or resume: a resume must have the same resolved configuration."""
        digest = sha256_bytes(canonical_json(config))
        path = self.work / "run.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("digest") != digest:
                changed = sorted(k for k in set(old.get("config", {})) | set(config)
                                 if old.get("config", {}).get(k) != config.get(k))
                raise CaptureError(
                    f"{self.root} holds an interrupted run with a different configuration (changed: {changed})",
                    hint=f"resume with the same study, run and options, or delete {self.root} to start over",
                )
            return
        with disk_errors(self.root):
            atomic_write(path, pretty_json({"digest": digest, "config": config}))

    def is_complete(self) -> bool:
        return (self.root / artifacts.MANIFEST).is_file()

    def done_batches(self) -> set[int]:
        if not self.batches.is_dir():
            return set()
        return {int(p.name[1:]) for p in self.batches.iterdir() if p.is_dir() and p.name.startswith("b")}

    def batch_info(self, index: int) -> dict[str, Any]:
        return json.loads((self.batches / f"b{index:05d}" / "batch.json").read_text())

    # -- one batch --------------------------------------------------------------------------------
    def write_batch(self, index: int, tables: dict[str, pa.Table], arrays: dict[str, np.ndarray],
                    info: dict[str, Any]) -> None:
        """Write every file of one batch into a temp folder, then rename it into place."""
        final = self.batches / f"b{index:05d}"
        with disk_errors(self.root):
            self.batches.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".b{index:05d}.", dir=self.batches))
            try:
                for name, table in tables.items():
                    write_table(tmp / f"{name}.parquet", table)
                for name, array in arrays.items():
                    write_npy(tmp / f"{name}.npy", array)
                atomic_write(tmp / "batch.json", pretty_json(info))
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    # -- merge ------------------------------------------------------------------------------------
    def merge(self, n_batches: int, residual_layers: list[int]) -> None:
        """Concatenate every batch, in batch order (= prompt id order), into the run's outputs."""
        dirs = [self.batches / f"b{i:05d}" for i in range(n_batches)]
        with disk_errors(self.root):
            for name, schema, dest in (
                ("texts", TEXTS_SCHEMA, self.root / artifacts.TEXTS),
                ("units", UNITS_SCHEMA, self.root / artifacts.UNITS),
                ("events", EVENTS_SCHEMA, self.root / artifacts.EVENTS),
                ("tokens", TOKENS_SCHEMA, self.root / "topk" / "tokens.parquet"),
            ):
                with _atomic_file(dest) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                    for d in dirs:
                        writer.write_table(pq.read_table(d / f"{name}.parquet", schema=schema))
            _concat_npy([d / "idx.npy" for d in dirs], self.root / "topk" / "idx.npy")
            _concat_npy([d / "weight.npy" for d in dirs], self.root / "topk" / "weight.npy")
            for layer in residual_layers:
                _concat_npy([d / f"residual_L{layer}.npy" for d in dirs], self.root / "residual" / f"L{layer}.npy")

    def output_digests(self) -> dict[str, str]:
        """sha256 of every file of the run folder but the manifest and ``_work/``, by path relative to it."""
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and artifacts.WORK not in p.relative_to(self.root).parts)
        return {p.relative_to(self.root).as_posix(): sha256_file(p) for p in files if p.name != artifacts.MANIFEST or p.parent != self.root}

    def finish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest, with the digest of every output, then drop ``_work/``."""
        with disk_errors(self.root):
            write_record(self.root / artifacts.MANIFEST, RUN_MANIFEST, {**manifest, "outputs": self.output_digests()})
        shutil.rmtree(self.work, ignore_errors=True)


def _concat_npy(parts: list[Path], dest: Path) -> None:
    """Stream ``parts`` (same dtype and trailing shape) into one ``.npy`` without loading them all."""
    heads = [np.load(p, mmap_mode="r") for p in parts]
    rows = sum(h.shape[0] for h in heads)
    shape = (rows, *heads[0].shape[1:])
    with _atomic_file(dest) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=heads[0].dtype, shape=shape)
        start = 0
        for h in heads:
            out[start : start + h.shape[0]] = h
            start += h.shape[0]
        out.flush()
        del out
