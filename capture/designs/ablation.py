"""Capture for the ablation design: contrastive-pair margins, head-slot ablation, the all-slot baseline.

For a frozen study with ``design: ablation`` and each preregistered run (``decoding: none``),
:func:`run_ablation_capture`:

1. loads the model and tokenizer once, builds the slot table (:mod:`capture.slots`) for
   ``ablation.slot_layers``, and refuses a target that is not a slot;
2. tokenises every pair (sorted by id): clean and corrupted prompt, and the answer and wrong answer
   (each tokenised alone, no special tokens, leading space kept; every token id and its text are
   recorded in ``pairs.parquet``); exclusions ``shared_first_token`` (under ``full_answer`` scoring:
   answer and wrong answer tokenise identically, so the margin is 0) and ``multi_token_answer`` (the
   answer or the wrong answer is more than one token) apply here. An exclusion with ``classes``
   applies to pairs of those classes only;
3. for mean ablation (``kind: mean``, or ``mean`` among ``sensitivity_kinds``), the mean of every
   slot over the reference split in the unablated model (float64 sums): over every non-pad token, or,
   with ``per_position_means: K``, at each of the last ``K`` positions from the end and over the
   positions before them (:class:`capture.slots.SlotMeans`);
4. the unablated margins of every pair, clean and corrupted; exclusion ``nonpositive_clean_margin``
   applies here, before any ablated margin exists;
5. the targeted ablations on the pairs left, for the plan's ``kind`` and each of its
   ``sensitivity_kinds`` (column ``kind``): each target alone (mode ``individual``; not those in
   ``combined_only``) and each combined set (``ablation.combined`` and the targets of every
   ``mode: combined`` analysis), clean and corrupted;
6. when an analysis is an ``all_unit_baseline``: every slot ablated alone (the plan's ``kind``) on the
   clean prompts of the pairs left, one batch of pairs at a time (resumable per batch),
   ``slots_per_forward`` slot ablations stacked along the batch dimension of one forward.

The margin of a prompt, by ``ablation.answer_tokenization``:

- ``first_token`` (the default): ``logit(a) - logit(b)`` at its last real token, ``a`` and ``b`` the
  first tokens of the answer and the wrong answer (prompts are left-padded, position ids count real
  tokens only), computed in float32 as ``h · (W[a] - W[b])`` from ``h``, the output head's input at
  that position, and ``W``, the output head's weight (plus its bias when it has one). For a linear
  output head this is the float32 logit difference whatever the model's dtype (tests check it
  against the model's own logits); it equals the first tokens' log-probability difference.
- ``full_answer``: ``log p(answer | prompt) - log p(wrong answer | prompt)``, each the sum over the
  answer's tokens of the float32 log-softmax of the output head at the position before the token,
  teacher-forced (the prompt followed by the answer's earlier tokens, one row per answer).

Drop = unablated margin - ablated margin.

Layout of ``runs/<study>/<run-id>/`` once complete::

    manifest.json             provenance, the slot table, exclusions, counts, cost; written last
    pairs.parquet             one row per pair: texts, token ids, answers' token ids and texts, unablated
                              margins, exclusion and flags
    ablations.parquet         one row per pair x ablation kind x targeted condition: ablated margins and drops
    baseline.parquet          one row per pair x slot (all-slot baseline): ablated clean margin, drop
    source_trace.parquet      when a source_trace analysis exists: one row per traced pair x target x source
                              layer x position, the restored fractions (capture/source_trace.py); pairs whose
                              clean and corrupted prompts differ in length are excluded from it (unaligned_lengths)
    reference_means.parquet   one row per slot x position class: the mean it is replaced by (mean ablation)
    sae_knockdown.parquet     with an sae_knockdown analysis: SAE features knocked down, splice-in (capture/designs/ablation_sae.py)

While running, ``_work/`` holds the bound configuration, ``prep/`` (steps 2-5, written once, so that
a resume reuses the same exclusions) and one shard per batch of the all-slot baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lockstep import artifacts
from lockstep.errors import CaptureError, UsageError
from lockstep.fsio import atomic_write, canonical_json, pretty_json, sha256_bytes, utc_now
from lockstep.units import condition_key, unit_order

from .. import runtime, source_trace
from ..slots import Slot, SlotAblation, SlotMeans, slot_summary, slot_table
from ..store import RunStore, disk_errors, write_table
from . import ablation_sae

OPTIONS = ("slots_per_forward",)  # design-specific capture options (lockstep capture --slots-per-forward)
DEFAULT_STACK_ROWS = 256
FIRST_TOKEN, FULL_ANSWER = "first_token", "full_answer"
MEAN, ZERO = "mean", "zero"
MARGIN_DEFINITIONS = {
    FIRST_TOKEN: ("logit(first token of answer) - logit(first token of wrong_answer) at the last real token, "
                  "float32, from the output head's input"),
    FULL_ANSWER: ("log p(answer | prompt) - log p(wrong_answer | prompt): the sum over each answer's tokens of the "
                  "float32 log-softmax of the output head, teacher-forced"),
}
MARGIN_DEFINITION = MARGIN_DEFINITIONS[FIRST_TOKEN]
VOCAB_CHUNK = 32_768  # output-head rows per float32 matmul in the full-answer log-softmax

PAIRS_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("class", pa.string()), ("split", pa.string()),
    ("clean", pa.string()), ("corrupted", pa.string()), ("answer", pa.string()), ("wrong_answer", pa.string()),
    ("clean_token_ids", pa.list_(pa.int64())), ("corrupted_token_ids", pa.list_(pa.int64())),
    ("answer_token_id", pa.int64()), ("wrong_token_id", pa.int64()),
    ("answer_n_tokens", pa.int64()), ("wrong_n_tokens", pa.int64()),
    ("answer_token_ids", pa.list_(pa.int64())), ("wrong_token_ids", pa.list_(pa.int64())),
    ("answer_tokens", pa.list_(pa.string())), ("wrong_tokens", pa.list_(pa.string())),
    ("baseline_clean_margin", pa.float64()), ("baseline_corrupted_margin", pa.float64()),
    ("excluded", pa.bool_()), ("excluded_by", pa.string()), ("flagged_by", pa.list_(pa.string())),
])
ABLATIONS_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("kind", pa.string()), ("mode", pa.string()), ("target", pa.string()), ("n_slots", pa.int64()),
    ("baseline_clean_margin", pa.float64()), ("ablated_clean_margin", pa.float64()), ("clean_drop", pa.float64()),
    ("baseline_corrupted_margin", pa.float64()), ("ablated_corrupted_margin", pa.float64()),
    ("corrupted_drop", pa.float64()),
])
BASELINE_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("slot", pa.string()), ("layer", pa.int64()), ("head", pa.int64()),
    ("layer_type", pa.string()), ("ablated_margin", pa.float64()), ("drop", pa.float64()),
])
MEANS_SCHEMA = pa.schema([
    ("slot", pa.string()), ("layer", pa.int64()), ("head", pa.int64()), ("layer_type", pa.string()),
    ("module", pa.string()), ("position", pa.int64()), ("n_tokens", pa.int64()), ("mean", pa.list_(pa.float32())),
])  # position 0: the pooled mean (or, with per_position_means K, the positions before the last K); k: k-th from the end


# -- the forward ------------------------------------------------------------------------------------

class MarginForward:
    """Left-padded forwards that return the float32 margin at each row's last real token.

    Parameters
    ----------
    model : transformers PreTrainedModel (causal LM)
    pad_id : int
        Token id used for left padding (masked out; position ids count real tokens only).
    """

    def __init__(self, model, pad_id: int):
        if getattr(model.config, "final_logit_softcapping", None):
            raise CaptureError("the model soft-caps its logits; the margin from the output head's input would not "
                               "be its logit difference")
        self.model = model
        self.pad_id = int(pad_id)
        self.head = model.get_output_embeddings()
        self.device = model.get_input_embeddings().weight.device
        self.forwards = 0
        self.rows = 0

    def batch(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row):] = 1
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return ids, mask, position_ids

    def run(self, rows: list[list[int]]) -> torch.Tensor:
        """One forward of ``rows`` (token-id lists); returns the output head's input at the last position."""
        ids, mask, position_ids = self.batch(rows)
        seen: list[torch.Tensor] = []

        def keep(module, args, kwargs):
            seen.append(args[0][:, -1, :].detach())

        handle = self.head.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with torch.inference_mode():
                self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=position_ids.to(self.device), use_cache=False, logits_to_keep=1)
        finally:
            handle.remove()
        self.forwards += 1
        self.rows += len(rows)
        return seen[-1]

    def margins(self, rows: list[list[int]], answer: list[int], wrong: list[int]) -> np.ndarray:
        """Float64 copy of the float32 margins ``h · (W[a] - W[b]) (+ b[a] - b[b])``, one per row."""
        h = self.run(rows)
        weight = self.head.weight
        with torch.inference_mode():
            a = torch.tensor(answer, device=weight.device)
            b = torch.tensor(wrong, device=weight.device)
            diff = weight[a].float() - weight[b].float()
            out = (h.to(weight.device).float() * diff).sum(dim=-1)
            if getattr(self.head, "bias", None) is not None:
                out = out + self.head.bias[a].float() - self.head.bias[b].float()
        return out.double().cpu().numpy()

    def logprobs(self, rows: list[list[int]], targets: list[list[int]]) -> np.ndarray:
        """Teacher-forced ``sum_i log p(targets[r][i] | rows[r] + targets[r][:i])`` per row, float32 log-softmax.

        One forward of ``rows[r] + targets[r][:-1]``; the output head's input at the last
        ``len(targets[r])`` positions of each row is multiplied by the head's weight in float32, a
        vocabulary chunk at a time (``VOCAB_CHUNK`` rows), for the log-sum-exp.
        """
        if any(not t for t in targets):
            raise CaptureError("an answer tokenises to nothing; there is no log-probability to score")
        keep = max(len(t) for t in targets)
        seqs = [list(r) + list(t[:-1]) for r, t in zip(rows, targets)]
        ids, mask, position_ids = self.batch(seqs)
        seen: list[torch.Tensor] = []

        def hold(module, args, kwargs):
            seen.append(args[0][:, -keep:, :].detach())

        handle = self.head.register_forward_pre_hook(hold, with_kwargs=True)
        try:
            with torch.inference_mode():
                self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=position_ids.to(self.device), use_cache=False, logits_to_keep=keep)
        finally:
            handle.remove()
        self.forwards += 1
        self.rows += len(seqs)
        h = seen[-1]
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        with torch.inference_mode():
            picked = torch.cat([h[r, keep - len(t):, :] for r, t in enumerate(targets)]).to(weight.device).float()
            flat = torch.tensor([x for t in targets for x in t], device=weight.device)
            lse = torch.full((picked.shape[0],), -torch.inf, device=weight.device)
            for start in range(0, weight.shape[0], VOCAB_CHUNK):
                logits = picked @ weight[start:start + VOCAB_CHUNK].float().T
                if bias is not None:
                    logits = logits + bias[start:start + VOCAB_CHUNK].float()
                lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
            chosen = (picked * weight[flat].float()).sum(dim=-1)
            if bias is not None:
                chosen = chosen + bias[flat].float()
            per_token = (chosen - lse).double().cpu().numpy()
        bounds = np.cumsum([0] + [len(t) for t in targets])
        return np.array([per_token[bounds[r]:bounds[r + 1]].sum() for r in range(len(targets))])


def score_margins(fwd: MarginForward, rows: list[list[int]], answer: list, wrong: list, scoring: str = FIRST_TOKEN,
                  ablation: SlotAblation | None = None, row_slots: list[list[str]] | None = None) -> np.ndarray:
    """Margins of ``rows`` by ``scoring`` (``first_token``: ``answer``/``wrong`` are token ids;
    ``full_answer``: token-id lists), under ``ablation`` of ``row_slots`` when given."""
    if scoring == FIRST_TOKEN:
        if ablation is None:
            return fwd.margins(rows, answer, wrong)
        with ablation.ablating(row_slots):
            return fwd.margins(rows, answer, wrong)
    if scoring != FULL_ANSWER:
        raise CaptureError(f"answer_tokenization {scoring!r} is not supported")
    n = len(rows)
    both, targets = list(rows) + list(rows), list(answer) + list(wrong)
    if ablation is None:
        lp = fwd.logprobs(both, targets)
    else:
        with ablation.ablating(list(row_slots) * 2, tails=[len(t) - 1 for t in targets]):
            lp = fwd.logprobs(both, targets)
    return lp[:n] - lp[n:]


def ablated_margins(fwd: MarginForward, ablation: SlotAblation, rows: list[list[int]], answer: list,
                    wrong: list, conditions: list[list[str]], stack: int, scoring: str = FIRST_TOKEN) -> np.ndarray:
    """Margins of ``rows`` under each condition (a list of slot labels ablated together): ``[C, len(rows)]``.

    ``stack`` conditions share one forward (their rows concatenated); the result does not depend on
    it beyond floating-point reassociation. ``answer``/``wrong`` as :func:`score_margins` reads them.
    """
    out = np.empty((len(conditions), len(rows)))
    for start in range(0, len(conditions), stack):
        group = conditions[start:start + stack]
        row_slots = [labels for labels in group for _ in rows]
        m = score_margins(fwd, rows * len(group), answer * len(group), wrong * len(group), scoring, ablation, row_slots)
        out[start:start + len(group)] = m.reshape(len(group), len(rows))
    return out


# -- the study --------------------------------------------------------------------------------------

@dataclass
class Setup:
    """The loaded model, its slot table, and how many single-slot ablations share one forward."""

    ld: runtime.Loaded
    slots: list[Slot]
    stack: int
    batch_size: int
    scoring: str = FIRST_TOKEN   # ablation.answer_tokenization
    kind: str = MEAN             # ablation.kind: the all-slot baseline's replacement


@dataclass
class _Prep:
    pairs: pa.Table
    ablations: pa.Table
    means: pa.Table | None
    info: dict[str, Any] = field(default_factory=dict)


def check_request(frozen, runs: list[dict], *, shard, options: dict) -> None:
    """An ablation run is forward passes only, captured in one process."""
    for run in runs:
        if run["decoding"] != "none":
            raise CaptureError(f"run {run['id']!r} decodes ({run['decoding']}); an ablation run is forward passes only",
                               hint="set its decoding to none (an amendment)")
    stack = options.get("slots_per_forward")
    if stack is not None and stack < 1:
        raise UsageError("`--slots-per-forward` must be at least 1")


def setup(frozen, source, identity: dict, overrides: dict, device_map, options: dict) -> Setup:
    """Load the model and build the slot table for ``ablation.slot_layers``; refuse a target that is not a slot."""
    spec = frozen.spec
    ld = runtime.load(frozen, source, identity, overrides, device_map)
    slots = slot_table(ld.model, spec["ablation"].get("slot_layers", "all"))
    labels = {s.label for s in slots}
    missing = [t["id"] for t in spec["units"]["targets"] if t["id"] not in labels]
    if missing:
        summary = slot_summary(slots)
        raise CaptureError(
            f"target(s) {missing} are not head slots of {spec['model']['id']} with slot_layers "
            f"{spec['ablation'].get('slot_layers', 'all')!r} ({summary['slots']} slots: {summary['by_layer_type']})",
            hint="the LxxHyy labels must name slots of this model's slot table (see capture/slots.py); amend the study")
    ablation_sae.check_saes(frozen, ld.model)   # refuse a changed or unreadable SAE before any forward
    for analysis in source_trace.analyses_of(frozen):  # a source layer the model lacks: refused before any forward
        source_trace.parse_layers(analysis["source_layers"], len(source_trace.decoder_layers(ld.model)))
    batch_size = int(overrides.get("batch_size", spec["runtime"].get("batch_size", 1)))
    stack = int(options.get("slots_per_forward") or max(1, DEFAULT_STACK_ROWS // batch_size))
    return Setup(ld, slots, stack, batch_size, spec["ablation"]["answer_tokenization"], spec["ablation"]["kind"])


def prepare(frozen, st: Setup, overrides: dict) -> None:
    """Nothing before the runs: each run prepares (and keeps, for a resume) its own pairs and exclusions."""
    return None


def journal_details(paths) -> dict[str, Any]:
    """The exclusions of each run go into the capture's journal entry."""
    return {"exclusions": {p.name: json.loads((p / artifacts.MANIFEST).read_text())["exclusions"] for p in paths}}


def _encode_answer(tok, text: str) -> list[int]:
    ids = tok(text, add_special_tokens=False).input_ids
    if not ids:
        raise CaptureError(f"the answer {text!r} tokenises to nothing")
    return list(ids)


def _encode(frozen, st: Setup) -> tuple[list[dict], list[list[int]]]:
    """Pairs sorted by id with token ids, and the reference texts' token ids."""
    rt = frozen.spec["runtime"]
    ablation = frozen.spec["ablation"]
    unk = st.ld.tok.unk_token_id
    limit = getattr(st.ld.model.config, "max_position_embeddings", None)
    pairs, unknown, too_long = [], [], []
    for p in sorted((p for p in frozen.prompts if "clean" in p), key=lambda p: p["id"]):
        clean = st.ld.tok(runtime.render(st.ld.tok, p["clean"], rt), add_special_tokens=False).input_ids
        corrupted = st.ld.tok(runtime.render(st.ld.tok, p["corrupted"], rt), add_special_tokens=False).input_ids
        answer, wrong = _encode_answer(st.ld.tok, p["answer"]), _encode_answer(st.ld.tok, p["wrong_answer"])
        if unk is not None and unk in (answer[0], wrong[0]):
            unknown.append(p["id"])
        if limit is not None and max(len(clean), len(corrupted)) > limit:
            too_long.append(p["id"])
        pairs.append({**p, "clean_ids": list(clean), "corrupted_ids": list(corrupted), "answer_ids": answer, "wrong_ids": wrong,
                      "answer_pieces": [st.ld.tok.decode([i]) for i in answer],
                      "wrong_pieces": [st.ld.tok.decode([i]) for i in wrong]})
    if unknown:
        raise CaptureError(f"the tokenizer maps the first token of the answer or wrong answer of {unknown} to its unknown token",
                           hint="fix the answers (an amendment); a margin against the unknown token means nothing")
    if too_long:
        raise CaptureError(f"pair(s) {too_long} are longer than the model's context", hint="shorten them (an amendment)")
    if ablation["answer_tokenization"] not in MARGIN_DEFINITIONS:
        raise CaptureError(f"answer_tokenization {ablation['answer_tokenization']!r} is not supported")
    reference = []
    if MEAN in ablation_kinds(ablation):
        for p in sorted(frozen.prompts_in(split=ablation["reference_split"]), key=lambda p: p["id"]):
            text = p.get("text") or p.get("clean")
            reference.append(list(st.ld.tok(runtime.render(st.ld.tok, text, rt), add_special_tokens=False).input_ids))
        if not any(reference):
            raise CaptureError(f"the reference split {ablation['reference_split']!r} has no text to average over")
    return pairs, reference


def ablation_kinds(ablation: dict) -> list[str]:
    """The plan's ablation kind, then each sensitivity kind: the ``kind`` values of ablations.parquet."""
    return [ablation["kind"]] + [k for k in ablation.get("sensitivity_kinds", []) if k != ablation["kind"]]


def _answers(pairs: list[dict], scoring: str, key: str) -> list:
    """Each pair's answer (``key`` answer_ids / wrong_ids) as :func:`score_margins` reads it under ``scoring``."""
    return [p[key][0] for p in pairs] if scoring == FIRST_TOKEN else [list(p[key]) for p in pairs]


def _shares_first_token(pair: dict, scoring: str) -> bool:
    """Rule ``shared_first_token``: the margin is identically 0 (first tokens equal, or, under
    full-answer scoring, the whole tokenisations equal)."""
    if scoring == FIRST_TOKEN:
        return pair["answer_ids"][0] == pair["wrong_ids"][0]
    return list(pair["answer_ids"]) == list(pair["wrong_ids"])


CAPTURE_RULES = ("shared_first_token", "multi_token_answer", "nonpositive_clean_margin")


def _exclusion_rules(frozen) -> dict[str, tuple[str, str, set[str] | None]]:
    """rule -> (exclusion id, action, classes it applies to or None for all) for the rules capture applies."""
    out = {}
    for x in frozen.spec.get("exclusions", []):
        if x["rule"] in CAPTURE_RULES:
            out[x["rule"]] = (x["id"], x.get("action", "exclude"), set(x["classes"]) if "classes" in x else None)
    return out


def targeted_conditions(frozen) -> list[tuple[str, list[str]]]:
    """(mode, slot labels) of every targeted ablation the plan calls for, in a fixed order."""
    spec = frozen.spec
    ablation = spec["ablation"]
    modes = ablation["modes"]
    out: list[tuple[str, list[str]]] = []
    if "individual" in modes:
        only = set(ablation.get("combined_only", []))
        out += [("individual", [t["id"]]) for t in spec["units"]["targets"] if t["id"] not in only]
    if "combined" in modes:
        sets = [ablation["combined"]] if ablation.get("combined") else []
        sets += [a["targets"] for a in frozen.analyses if a.get("mode") == "combined" and a.get("targets")]
        seen = set()
        for labels in sets:
            key = condition_key(labels)
            if key not in seen:
                seen.add(key)
                out.append(("combined", sorted(set(labels), key=unit_order)))
    for a in frozen.analyses:  # resolved: an analysis that names no mode has its design's default
        if a.get("mode") == "individual" and a["kind"] != "all_unit_baseline":
            for t in a.get("targets", []):
                if ("individual", [t]) not in out:
                    out.append(("individual", [t]))
    return out


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _reference_means(st: Setup, fwd: MarginForward, reference: list[list[int]], positions: int,
                     batch_size: int) -> tuple[dict[str, torch.Tensor], pa.Table, int]:
    """Every slot's mean over the reference prompts (per position from the end when ``positions`` > 0), the
    reference_means table, and the number of reference tokens."""
    acc = SlotMeans(st.ld.model, st.slots, positions)
    for chunk in _batches(reference, batch_size):
        _, mask, _ = fwd.batch(chunk)
        with acc.recording(mask):
            fwd.run(chunk)
    means = acc.means()
    rows = []
    for s in st.slots:
        table = means[s.label].reshape(positions + 1, -1)
        rows += [{"slot": s.label, "layer": s.layer, "head": s.head, "layer_type": s.layer_type, "module": s.module,
                  "position": k, "n_tokens": acc.counts[k], "mean": table[k].tolist()} for k in range(positions + 1)]
    return means, pa.Table.from_pylist(rows, schema=MEANS_SCHEMA), acc.n_tokens


def _prepare(frozen, st: Setup, fwd: MarginForward, pairs: list[dict], reference: list[list[int]],
             batch_size: int, stack: int, progress) -> _Prep:
    ablation_spec = frozen.spec["ablation"]
    scoring = ablation_spec["answer_tokenization"]
    rules = _exclusion_rules(frozen)
    excluded: dict[str, str] = {}
    flagged: dict[str, list[str]] = {p["id"]: [] for p in pairs}

    classes = {p["id"]: p["class"] for p in pairs}

    def apply(rule: str, pair_ids: list[str]) -> None:
        if rule not in rules:
            return
        xid, action, only = rules[rule]
        for pid in pair_ids:
            if only is not None and classes[pid] not in only:
                continue
            (excluded.setdefault(pid, xid) if action == "exclude" else flagged[pid].append(xid))

    apply("shared_first_token", [p["id"] for p in pairs if _shares_first_token(p, scoring)])
    apply("multi_token_answer", [p["id"] for p in pairs if len(p["answer_ids"]) > 1 or len(p["wrong_ids"]) > 1])
    kinds = ablation_kinds(ablation_spec)
    means, means_table, reference_tokens = None, None, 0
    if MEAN in kinds:
        means, means_table, reference_tokens = _reference_means(st, fwd, reference,
                                                                int(ablation_spec.get("per_position_means", 0)), batch_size)
    live = [p for p in pairs if p["id"] not in excluded]
    base_clean, base_corrupted = {}, {}
    for chunk in _batches(live, batch_size):
        a, b = _answers(chunk, scoring, "answer_ids"), _answers(chunk, scoring, "wrong_ids")
        for pid, m in zip([p["id"] for p in chunk], score_margins(fwd, [p["clean_ids"] for p in chunk], a, b, scoring)):
            base_clean[pid] = float(m)
        for pid, m in zip([p["id"] for p in chunk], score_margins(fwd, [p["corrupted_ids"] for p in chunk], a, b, scoring)):
            base_corrupted[pid] = float(m)
    apply("nonpositive_clean_margin", [p["id"] for p in live if base_clean[p["id"]] <= 0])
    live = [p for p in pairs if p["id"] not in excluded]
    conditions = targeted_conditions(frozen)
    rows = []
    progress(f"targeted ablations ({len(conditions)} conditions x {len(kinds)} kind(s), {len(live)} pairs)")
    for kind in kinds:
        abl = SlotAblation(st.ld.model, st.slots, means if kind == MEAN else None)
        for chunk in _batches(live, batch_size):
            a, b = _answers(chunk, scoring, "answer_ids"), _answers(chunk, scoring, "wrong_ids")
            labels = [c[1] for c in conditions]
            clean = ablated_margins(fwd, abl, [p["clean_ids"] for p in chunk], a, b, labels, stack, scoring)
            corrupted = ablated_margins(fwd, abl, [p["corrupted_ids"] for p in chunk], a, b, labels, stack, scoring)
            for c, (mode, slots) in enumerate(conditions):
                for r, p in enumerate(chunk):
                    bc, bk = base_clean[p["id"]], base_corrupted[p["id"]]
                    rows.append({"pair_id": p["id"], "kind": kind, "mode": mode, "target": condition_key(slots),
                                 "n_slots": len(slots), "baseline_clean_margin": bc,
                                 "ablated_clean_margin": float(clean[c, r]), "clean_drop": bc - float(clean[c, r]),
                                 "baseline_corrupted_margin": bk, "ablated_corrupted_margin": float(corrupted[c, r]),
                                 "corrupted_drop": bk - float(corrupted[c, r])})
    order = {k: i for i, k in enumerate(kinds)}
    rows.sort(key=lambda r: (order[r["kind"]], r["mode"], r["target"], r["pair_id"]))
    pair_rows = [{
        "pair_id": p["id"], "class": p["class"], "split": p["split"], "clean": p["clean"], "corrupted": p["corrupted"],
        "answer": p["answer"], "wrong_answer": p["wrong_answer"], "clean_token_ids": p["clean_ids"],
        "corrupted_token_ids": p["corrupted_ids"], "answer_token_id": p["answer_ids"][0],
        "wrong_token_id": p["wrong_ids"][0], "answer_n_tokens": len(p["answer_ids"]),
        "wrong_n_tokens": len(p["wrong_ids"]), "answer_token_ids": list(p["answer_ids"]),
        "wrong_token_ids": list(p["wrong_ids"]), "answer_tokens": p["answer_pieces"], "wrong_tokens": p["wrong_pieces"],
        "baseline_clean_margin": base_clean.get(p["id"]),
        "baseline_corrupted_margin": base_corrupted.get(p["id"]), "excluded": p["id"] in excluded,
        "excluded_by": excluded.get(p["id"]), "flagged_by": flagged[p["id"]]} for p in pairs]
    info = {"reference_tokens": reference_tokens, "reference_texts": len(reference), "kinds": kinds,
            "conditions": [{"mode": m, "target": condition_key(s), "slots": s} for m, s in conditions]}
    return _Prep(pa.Table.from_pylist(pair_rows, schema=PAIRS_SCHEMA),
                 pa.Table.from_pylist(rows, schema=ABLATIONS_SCHEMA), means_table, info)


# -- storage of the prepared tables -----------------------------------------------------------------

def _save_prep(store: RunStore, prep: _Prep) -> None:
    final = store.work / "prep"
    with disk_errors(store.root):
        store.work.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prep.", dir=store.work))
        try:
            write_table(tmp / artifacts.PAIRS, prep.pairs)
            write_table(tmp / artifacts.ABLATIONS, prep.ablations)
            if prep.means is not None:
                write_table(tmp / artifacts.REFERENCE_MEANS, prep.means)
            atomic_write(tmp / "prep.json", pretty_json(prep.info))
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _load_prep(store: RunStore) -> _Prep | None:
    folder = store.work / "prep"
    if not (folder / "prep.json").is_file():
        return None
    means = folder / artifacts.REFERENCE_MEANS
    return _Prep(pq.read_table(folder / artifacts.PAIRS, schema=PAIRS_SCHEMA),
                 pq.read_table(folder / artifacts.ABLATIONS, schema=ABLATIONS_SCHEMA),
                 pq.read_table(means, schema=MEANS_SCHEMA) if means.is_file() else None,
                 json.loads((folder / "prep.json").read_text()))


def _means_of(table: pa.Table | None) -> dict[str, torch.Tensor] | None:
    """``label -> [K + 1, width]`` from reference_means.parquet (rows in position order per slot)."""
    if table is None:
        return None
    rows: dict[str, dict[int, list[float]]] = {}
    for slot, k, mean in zip(table["slot"].to_pylist(), table["position"].to_pylist(), table["mean"].to_pylist()):
        rows.setdefault(slot, {})[k] = mean
    return {s: torch.tensor([by[k] for k in sorted(by)], dtype=torch.float32) for s, by in rows.items()}


# -- one run ------------------------------------------------------------------------------------------

def _needs_baseline(frozen) -> bool:
    return any(a["kind"] == "all_unit_baseline" for a in frozen.spec["analyses"])


def _run_config(frozen, run, st: Setup, deviations) -> dict[str, Any]:
    return {
        **runtime.base_run_config(frozen, run, st.ld, st.batch_size, deviations),
        "slots_per_forward": st.stack, "ablation": frozen.spec["ablation"],
        "slot_table_sha256": sha256_bytes(canonical_json([s.to_dict() for s in st.slots])),
        "pair_ids": sorted(p["id"] for p in frozen.prompts if "clean" in p),
    }


def _say(enabled: bool | None):
    """Step lines on stderr (not a redrawn bar, so a log file keeps them too) unless progress is off."""
    def say(text: str) -> None:
        if enabled is not False:
            sys.stderr.write(f"{text}\n")
            sys.stderr.flush()
    return say


def _baseline_batches(prep: _Prep, batch_size: int) -> list[list[dict]]:
    pairs = [r for r in prep.pairs.to_pylist() if not r["excluded"]]
    return _batches(pairs, batch_size)


def baseline_batch(st: Setup, fwd: MarginForward, abl: SlotAblation, chunk: list[dict], stack: int) -> pa.Table:
    """Every slot ablated alone on one batch of pairs (rows of pairs.parquet): the long baseline table."""
    scoring = st.scoring
    if scoring == FIRST_TOKEN:
        a, w = [p["answer_token_id"] for p in chunk], [p["wrong_token_id"] for p in chunk]
    else:
        a, w = [list(p["answer_token_ids"]) for p in chunk], [list(p["wrong_token_ids"]) for p in chunk]
    ablated = ablated_margins(fwd, abl, [p["clean_token_ids"] for p in chunk], a, w, [[s.label] for s in st.slots], stack,
                              scoring)
    rows = {"pair_id": [], "slot": [], "layer": [], "head": [], "layer_type": [], "ablated_margin": [], "drop": []}
    for r, p in enumerate(chunk):
        for j, s in enumerate(st.slots):
            rows["pair_id"].append(p["pair_id"]), rows["slot"].append(s.label), rows["layer"].append(s.layer)
            rows["head"].append(s.head), rows["layer_type"].append(s.layer_type)
            rows["ablated_margin"].append(float(ablated[j, r]))
            rows["drop"].append(p["baseline_clean_margin"] - float(ablated[j, r]))
    return pa.Table.from_pydict(rows, schema=BASELINE_SCHEMA)


def _capture_baseline(st: Setup, fwd: MarginForward, prep: _Prep, store: RunStore, batch_size: int, stack: int,
                      say) -> dict[str, float]:
    """The all-slot baseline, one shard per batch of pairs (skipping shards already on disk); returns its cost."""
    abl = SlotAblation(st.ld.model, st.slots, _means_of(prep.means) if st.kind == MEAN else None)
    batches = _baseline_batches(prep, batch_size)
    done = store.done_batches()
    seconds, forwards = 0.0, 0
    for b, chunk in enumerate(batches):
        if b in done:
            continue
        start, before = time.perf_counter(), fwd.forwards
        table = baseline_batch(st, fwd, abl, chunk, stack)
        elapsed = time.perf_counter() - start
        seconds += elapsed
        forwards += fwd.forwards - before
        store.write_batch(b, {"baseline": table}, {}, {"pairs": len(chunk), "forwards": fwd.forwards - before, "seconds": elapsed})
        say(f"  all-slot baseline: batch {b + 1}/{len(batches)} ({len(st.slots)} slots x {len(chunk)} pairs, "
            f"{elapsed:.1f} s)")
    return {"seconds": seconds, "forwards": forwards}


def _merge(store: RunStore, prep: _Prep, n_batches: int | None) -> None:
    with disk_errors(store.root):
        write_table(store.root / artifacts.PAIRS, prep.pairs)
        write_table(store.root / artifacts.ABLATIONS, prep.ablations)
        if prep.means is not None:
            write_table(store.root / artifacts.REFERENCE_MEANS, prep.means)
        if n_batches is not None:
            parts = [pq.read_table(store.batches / f"b{i:05d}" / artifacts.BASELINE, schema=BASELINE_SCHEMA)
                     for i in range(n_batches)]
            table = pa.concat_tables(parts) if parts else BASELINE_SCHEMA.empty_table()
            write_table(store.root / artifacts.BASELINE, table)


def exclusion_summary(frozen, pairs: pa.Table) -> tuple[list[dict], list[str]]:
    """Per preregistered exclusion: the pairs it removed or flagged, by class; and one warning line each."""
    frame = pairs.select(["pair_id", "class", "excluded_by", "flagged_by"]).to_pylist()
    out, warnings = [], []
    for x in frozen.spec.get("exclusions", []):
        hit = [r for r in frame if r["excluded_by"] == x["id"] or x["id"] in (r["flagged_by"] or [])]
        by_class: dict[str, int] = {}
        for r in hit:
            by_class[r["class"]] = by_class.get(r["class"], 0) + 1
        out.append({"id": x["id"], "rule": x["rule"], "action": x.get("action", "exclude"),
                    "pairs": sorted(r["pair_id"] for r in hit), "by_class": dict(sorted(by_class.items()))})
        if "classes" in x:
            out[-1]["classes"] = sorted(x["classes"])
        if hit:
            verb = "excluded" if x.get("action", "exclude") == "exclude" else "flagged"
            classes = ", ".join(f"{k} {v}" for k, v in sorted(by_class.items()))
            warnings.append(f"exclusion {x['id']} ({x['rule']}) {verb} {len(hit)} pair(s) ({classes}): "
                            + ", ".join(sorted(r["pair_id"] for r in hit)))
    return out, warnings


def _manifest(frozen, run, st: Setup, prep: _Prep, config: dict, cost: dict, fwd: MarginForward, started: str,
              deviations, n_batches: int) -> dict[str, Any]:
    pairs = prep.pairs.select(["pair_id", "class", "excluded", "excluded_by"]).to_pylist()
    by_class: dict[str, dict[str, int]] = {}
    for r in pairs:
        c = by_class.setdefault(r["class"], {"pairs": 0, "analysed": 0})
        c["pairs"] += 1
        c["analysed"] += 0 if r["excluded"] else 1
    exclusions, warnings = exclusion_summary(frozen, prep.pairs)
    targets = {t["id"]: next(s.to_dict() for s in st.slots if s.label == t["id"]) for t in frozen.spec["units"]["targets"]}
    per_second = cost["baseline"]["forwards"] / cost["baseline"]["seconds"] if cost["baseline"]["seconds"] else None
    return {
        **runtime.base_manifest(frozen, run, st.ld, config, started, deviations),
        "ablation": frozen.spec["ablation"], "margin": MARGIN_DEFINITIONS[st.scoring], "kinds": prep.info["kinds"],
        "slot_summary": slot_summary(st.slots), "slot_table": [s.to_dict() for s in st.slots],
        "slot_table_sha256": config["slot_table_sha256"], "targets": targets,
        "conditions": prep.info["conditions"],
        "reference": {"split": frozen.spec["ablation"].get("reference_split"), "texts": prep.info["reference_texts"],
                      "tokens": prep.info["reference_tokens"],
                      "per_position_means": int(frozen.spec["ablation"].get("per_position_means", 0))},
        "exclusions": exclusions, "warnings": warnings, "slots_per_forward": config["slots_per_forward"],
        # finish_reason null: nothing is generated in the ablation design (the run-manifest schema asks for it)
        "prompts": {r["pair_id"]: {"finish_reason": None, "class": r["class"], "excluded_by": r["excluded_by"]}
                    for r in pairs},
        "counts": {"prompts": len(pairs), "pairs": len(pairs), "analysed": sum(not r["excluded"] for r in pairs),
                   "by_class": by_class, "batches": n_batches, "slots": len(st.slots),
                   "conditions": len(prep.info["conditions"])},
        "cost": {"all_slot_baseline_seconds": cost["baseline"]["seconds"],
                 "all_slot_baseline_forwards": cost["baseline"]["forwards"],
                 "all_slot_baseline_forwards_per_second": per_second,
                 "forwards_this_process": fwd.forwards, "rows_this_process": fwd.rows},
    }


def capture_run(frozen, run, st: Setup, work: None, store: RunStore, *, shard, progress, deviations) -> bool:
    """Capture one run: pairs, margins and targeted ablations once (kept for a resume), then the all-slot
    baseline one batch of pairs at a time (batches on disk are skipped). True once complete."""
    say = _say(progress)
    batch_size, stack = st.batch_size, st.stack
    config = _run_config(frozen, run, st, deviations)
    started = utc_now()
    store.bind(config)
    fwd = MarginForward(st.ld.model, st.ld.pad_id)
    prep = _load_prep(store)
    if prep is None:
        pairs, reference = _encode(frozen, st)
        say(f"capture {frozen.study_id}/{run['id']}: {len(pairs)} pairs, {len(st.slots)} slots")
        prep = _prepare(frozen, st, fwd, pairs, reference, batch_size, stack, say)
        _save_prep(store, prep)
    cost = {"baseline": {"seconds": 0.0, "forwards": 0}}
    n_batches = None
    if _needs_baseline(frozen):
        cost["baseline"] = _capture_baseline(st, fwd, prep, store, batch_size, stack, say)
        n_batches = len(_baseline_batches(prep, batch_size))
    _merge(store, prep, n_batches)
    manifest = _manifest(frozen, run, st, prep, config, cost, fwd, started, deviations,
                         n_batches if n_batches is not None else len(_baseline_batches(prep, batch_size)))
    if source_trace.analyses_of(frozen):
        _capture_source_trace(frozen, st, fwd, prep, store, manifest, say)
    if ablation_sae.needed(frozen):
        manifest["sae_knockdown"] = ablation_sae.capture(frozen, st, fwd, prep, store, say)
    store.finish(manifest)
    return True


def _capture_source_trace(frozen, st: Setup, fwd: MarginForward, prep: _Prep, store: RunStore, manifest: dict, say) -> None:
    """source_trace.parquet (kept in ``_work/`` for a resume) and its manifest entries: the unaligned pairs as an
    exclusion of source tracing only, and its cost (:mod:`capture.source_trace`)."""
    kept, info_path = store.work / artifacts.SOURCE_TRACE, store.work / "source_trace.json"
    if kept.is_file() and info_path.is_file():
        table, info = pq.read_table(kept, schema=source_trace.TABLE_SCHEMA), json.loads(info_path.read_text())
    else:
        table, info = source_trace.study_trace(frozen, st.ld.model, fwd, st.slots, prep.pairs.to_pylist(),
                                               st.stack * st.batch_size, say)
        with disk_errors(store.root):
            write_table(kept, table)
            atomic_write(info_path, pretty_json(info))
    with disk_errors(store.root):
        write_table(store.root / artifacts.SOURCE_TRACE, table)
    exclusion = info.pop("exclusion")
    manifest["exclusions"].append(exclusion)
    line = source_trace.exclusion_warning(exclusion)
    if line:
        manifest["warnings"].append(line)
    manifest["source_trace"] = info
    per_cell = info["seconds"] / info["cells"] if info["cells"] else None
    manifest["cost"].update({"source_trace_seconds": info["seconds"], "source_trace_forwards": info["forwards"],
                             "source_trace_rows": info["rows"], "source_trace_seconds_per_pair_cell": per_cell,
                             "forwards_this_process": fwd.forwards, "rows_this_process": fwd.rows})
