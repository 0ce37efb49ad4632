"""A small greedy / sampling decode loop with a KV cache, on top of the model's own forward.

Why not ``model.generate``: capture needs to know, before each forward, which zone every routing row
will belong to, and sampling must not depend on batch composition. Here each row samples from its own
``torch.Generator`` seeded from (run seed, prompt id) (:func:`row_seed`), so a prompt draws the same
random numbers whether it runs alone, in any batch, or after a resume. Greedy decoding is checked
against ``model.generate`` in the tests.

The loop is the one ``generate`` runs: left-padded prefill with position ids from the attention mask,
then one token per row per step; a row that has finished is fed a pad (its rows are in no zone) until
every row has finished or ``max_new_tokens`` is reached. It syncs with the host once per step, to read
the chosen tokens (``generate`` does too, for its stopping criteria); the routing hooks never do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .zones import N_DISJOINT, PREFILL, generated_zone

STOP = "stop"
LENGTH = "length"


@dataclass(frozen=True)
class Decoding:
    """A preregistered decoding rule: ``mode`` is ``"greedy"`` or ``"sample"``."""

    mode: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @classmethod
    def from_run(cls, run: dict[str, Any]) -> "Decoding":
        mode = {"greedy": "greedy", "sample": "sample", "sampled": "sample"}.get(run.get("decoding"))
        if mode is None:
            raise ValueError(f"`decoding` must be 'greedy' or 'sample', got {run.get('decoding')!r}")
        if mode == "greedy":
            return cls("greedy")
        if run.get("seed") is None:
            raise ValueError("a sampled run needs a `seed`")
        return cls(
            "sample",
            temperature=float(run.get("temperature", 1.0)),
            top_p=float(run.get("top_p", 1.0)),
            top_k=int(run.get("top_k", 0) or 0),
            seed=int(run["seed"]),
        )


def row_seed(run_seed: int, prompt_id: str) -> int:
    """The RNG seed of one prompt in one run: sha256 of ``"<run seed>/<prompt id>"``, 63 bits."""
    digest = hashlib.sha256(f"{run_seed}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


@dataclass
class RowResult:
    prompt_ids: list[int]
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class BatchDecode:
    """Rows in input order, and for every routing row of every forward (forward order) its batch
    row, its position in the sequence, its token id and its disjoint zone (-1: none)."""

    rows: list[RowResult]
    row: np.ndarray
    position: np.ndarray
    token: np.ndarray
    zone: np.ndarray


def _filter_logits(logits: torch.Tensor, dec: Decoding) -> torch.Tensor:
    x = logits.to(torch.float32) / max(dec.temperature, 1e-6)
    if dec.top_k and dec.top_k < x.shape[-1]:
        kth = torch.topk(x, dec.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if dec.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        cum = torch.softmax(sorted_x, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_x, dim=-1) >= dec.top_p  # keep the token that crosses top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(1, order, sorted_x)
    return x


def _choose(logits: torch.Tensor, dec: Decoding, gens: list[torch.Generator | None]) -> list[int]:
    if dec.mode == "greedy":
        return torch.argmax(logits, dim=-1).tolist()
    probs = torch.softmax(_filter_logits(logits, dec), dim=-1)
    picks = [torch.multinomial(probs[r : r + 1], 1, generator=g).view(1) for r, g in enumerate(gens)]
    return torch.cat(picks).tolist()


def decode_batch(
    model,
    prompts: list[list[int]],
    prompt_keys: list[str],
    *,
    decoding: Decoding,
    max_new_tokens: int,
    stop_ids: set[int],
    trim_ids: set[int],
    pad_id: int,
    recorder=None,
) -> BatchDecode:
    """Generate for a batch of token-id prompts (left-padded), recording routing if ``recorder``.

    ``prompt_keys`` (the prompt ids) seed each row's generator when sampling.
    """
    from transformers import DynamicCache

    device = model.get_input_embeddings().weight.device
    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p) :] = 1
    gens: list[torch.Generator | None] = [None] * n
    if decoding.mode == "sample":
        gens = [torch.Generator(device=device).manual_seed(row_seed(decoding.seed, k)) for k in prompt_keys]
    rows = [RowResult(list(p)) for p in prompts]
    log_row, log_pos, log_tok, log_zone = [], [], [], []

    def note(row, pos, tok, zone):
        log_row.append(row), log_pos.append(pos), log_tok.append(tok), log_zone.append(zone)
        if recorder is not None:
            slots = np.where(zone >= 0, row * N_DISJOINT + np.maximum(zone, 0), N_DISJOINT * n)
            recorder.set_slots(torch.from_numpy(slots.astype(np.int64)))

    real = mask.numpy().astype(bool)
    pos = np.cumsum(real, axis=1) - 1
    note(
        np.repeat(np.arange(n), width), pos.ravel(), ids.numpy().ravel(),
        np.where(real, PREFILL, -1).ravel(),
    )
    position_ids = torch.from_numpy(np.maximum(pos, 0))
    cache = DynamicCache(config=model.config)
    ids, mask, position_ids = ids.to(device), mask.to(device), position_ids.to(device)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        last_pos = np.array([len(p) - 1 for p in prompts])
        trim_at = [None] * n
        for _ in range(max_new_tokens):
            chosen = _choose(out.logits[:, -1, :], decoding, gens)
            step_tok = np.full(n, pad_id, dtype=np.int64)
            step_zone = np.full(n, -1, dtype=np.int64)
            for r, row in enumerate(rows):
                if row.finish_reason is not None:
                    continue
                row.generated.append(chosen[r])
                if chosen[r] in stop_ids:
                    row.finish_reason = STOP
                elif len(row.generated) >= max_new_tokens:
                    row.finish_reason = LENGTH
                else:  # the row reads this token in the next forward
                    j = len(row.generated) - 1
                    if trim_at[r] is None and chosen[r] in trim_ids:
                        trim_at[r] = j
                    step_tok[r] = chosen[r]
                    step_zone[r] = generated_zone(j, trim_at[r] if trim_at[r] is not None else j + 1)
            if all(row.finish_reason is not None for row in rows):
                break
            last_pos = last_pos + 1
            note(np.arange(n), last_pos.copy(), step_tok, step_zone)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=torch.long, device=device)], dim=1)
            out = model(
                input_ids=torch.from_numpy(step_tok).view(n, 1).to(device),
                attention_mask=mask,
                position_ids=torch.from_numpy(last_pos).view(n, 1).to(device),
                past_key_values=cache,
                use_cache=True,
            )
    return BatchDecode(
        rows,
        np.concatenate(log_row).astype(np.int64),
        np.concatenate(log_pos).astype(np.int64),
        np.concatenate(log_tok).astype(np.int64),
        np.concatenate(log_zone).astype(np.int64),
    )


def teacher_force_batch(
    model,
    prompts: list[list[int]],
    generations: list[list[int]],
    finish_reasons: list[str | None],
    *,
    trim_ids: set[int],
    pad_id: int,
    recorder=None,
) -> BatchDecode:
    """Re-read given generations: one forward per batch over each prompt and the generated tokens it fed back.

    A generation of ``n`` tokens was read as its first ``n - 1`` (the last is never fed back; see
    :mod:`capture.zones`), so each row is ``prompt + generated[:-1]``, left-padded, and its routing rows fall
    in the zones decoding gave them. No token is chosen: ``rows`` carry the given generations unchanged,
    so the tables of a teacher-forced run line up token for token with its source run's.
    """
    n = len(prompts)
    read = [list(p) + list(g[:-1]) for p, g in zip(prompts, generations)]
    width = max(len(r) for r in read)
    device = model.get_input_embeddings().weight.device
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    zone = np.full((n, width), -1, dtype=np.int64)
    for r, (p, g, seq) in enumerate(zip(prompts, generations, read)):
        start = width - len(seq)
        ids[r, start:] = torch.tensor(seq, dtype=torch.long)
        mask[r, start:] = 1
        zone[r, start : start + len(p)] = PREFILL
        trim_at = next((j for j, t in enumerate(g) if t in trim_ids), len(g))
        zone[r, start + len(p) :] = [generated_zone(j, trim_at) for j in range(len(seq) - len(p))]
    real = mask.numpy().astype(bool)
    pos = np.cumsum(real, axis=1) - 1
    if recorder is not None:
        slots = np.where(zone >= 0, np.arange(n)[:, None] * N_DISJOINT + np.maximum(zone, 0), N_DISJOINT * n)
        recorder.set_slots(torch.from_numpy(slots.ravel().astype(np.int64)))
    with torch.inference_mode():
        model(input_ids=ids.to(device), attention_mask=mask.to(device),
              position_ids=torch.from_numpy(np.maximum(pos, 0)).to(device), use_cache=False, logits_to_keep=1)
    rows = [RowResult(list(p), list(g), reason) for p, g, reason in zip(prompts, generations, finish_reasons)]
    return BatchDecode(rows, np.repeat(np.arange(n), width).astype(np.int64), pos.ravel().astype(np.int64),
                       ids.numpy().ravel().astype(np.int64), zone.ravel())
