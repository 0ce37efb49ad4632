"""Discovery on the discovery split: candidate screens that rank where a contrastive-pair signal lives.

``lockstep discover STUDY_DIR`` runs the probes a frozen study's ``discovery`` block names on the pairs of
its discovery split, and nothing else: no pair of another split is tokenised, let alone run. Its output
is exploratory by construction. It can propose the targets of a confirmatory study (``lockstep propose``),
which is frozen after it and audited on heldout pairs the probes never read; ``lockstep verify`` checks
that order and that fence from the digests this stage journals.

The probes (the ablation card's "candidate screens"), each per pair, then summarised over pairs:

``logit_lens``
    the margin read from the residual stream at the last position, through the model's final norm and
    output head, at the input of every decoder layer and at the last layer's output (``resid`` 0..L:
    the input of layer ``resid``; ``resid = L`` the last layer's output), for the clean and the
    corrupted prompt. Where the margin appears is where the answer becomes readable.
``layer_attribution``
    attribution patching of the residual stream: ``-(h_corrupted - h_clean) . dm/dh`` at the input of
    each layer (summed over positions and channels), the gradient taken on the clean run. A
    first-order estimate of the margin drop when that layer's input is replaced by the corrupted run's
    at every position.
``head_attribution``
    the same for every head slot (:mod:`capture.slots`) at once, from one backward pass per batch: the
    slot's share of the output projection's input replaced by the corrupted run's.

Attribution needs positions that correspond: a pair whose clean and corrupted prompts tokenise to
different lengths is left out of both attribution probes (exclusion ``unaligned_lengths``, counted);
the logit lens reads it. The study's ``nonpositive_clean_margin`` exclusion, when it has one, leaves a
pair out of the rankings the same way.

The approximation is checked, not trusted (``exact_check.top``): the best-ranked slots are patched
exactly, one at a time (clean run, the slot's channels replaced by the corrupted run's at every
position), and the Spearman rank correlation between attribution and exact drops over those slots is
in ``discovery.json``.

Layout of ``runs/<study>/_discovery/run-<n>/``, one folder per discovery run (written whole, then journaled)::

    discovery.json       what ran: split, pairs read (ids and content digests), probes, model identity,
                         exclusions, the exact check, cost, digests of the tables
    pairs.parquet        one row per pair read: margins, alignment, exclusion, content digest
    logit_lens.parquet   pair x resid: clean and corrupted margin through the final norm and head
    layers.parquet       pair x resid: attribution drop of the residual stream at that layer's input
    slots.parquet        pair x slot: attribution drop, and the exact drop where the check patched it
    candidates.parquet   probe x unit: mean, sd, n, how often the unit is in a pair's top k, rank
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from lockstep import __version__, artifacts
from lockstep import contexts as token_contexts
from lockstep.errors import CaptureError, UsageError
from lockstep.fsio import pretty_json, sha256_file, utc_now
from lockstep.models import folder_identity
from lockstep.propose import pair_digest, text_digests

from . import runtime
from .designs.ablation import MarginForward
from .notices import library_output
from .sae import _decoder_layers
from .slots import Slot, slot_table
from .store import write_table

FOLDER = "_discovery"
RECORD = "discovery.json"
PROBES = ("logit_lens", "layer_attribution", "head_attribution")
DEFAULTS = {"split": "discovery", "pairs": "headline", "probes": list(PROBES), "top_k": 3, "exact_check": {"top": 8}}
UNALIGNED = "unaligned_lengths"


def settings(spec: dict) -> dict[str, Any]:
    """The study's ``discovery`` block with every default filled in."""
    block = {**DEFAULTS, **(spec.get("discovery") or {})}
    block["exact_check"] = {**DEFAULTS["exact_check"], **(block.get("exact_check") or {})}
    return block


def discovery_dir(runs_root: Path, study_id: str, frozen=None) -> Path:
    """``<runs root>/<study>/_discovery/``, or with ``frozen`` the folder of its next discovery run,
    ``run-<n>/``: each run keeps its own folder, so a study proposed from an earlier run stays verifiable."""
    base = Path(runs_root) / study_id / FOLDER
    return base if frozen is None else base / f"run-{len(frozen.journal.stages('discover')) + 1}"


# -- the forwards -----------------------------------------------------------------------------------

def _final_norm(model, layers) -> torch.nn.Module:
    """The norm between the last decoder layer and the output head."""
    for name, module in model.named_modules():
        if name.endswith(".norm") and isinstance(getattr(module, "weight", None), torch.Tensor) \
                and "layers" not in name.split(".") and "visual" not in name.split("."):
            return module
    raise CaptureError("the model has no final norm (a module named `norm` outside its layers); the logit lens needs it")


class Probe:
    """Forwards that record the residual stream at every layer input and every slot's projection input,
    and the margin at the last position; with ``grad=True`` they keep gradients for attribution."""

    def __init__(self, model, pad_id: int, slots: list[Slot]):
        self.model = model
        self.fwd = MarginForward(model, pad_id)
        self.layers = _decoder_layers(model)
        self.norm = _final_norm(model, self.layers)
        self.slots = slots
        self.modules = dict(model.named_modules())
        self.projections = sorted({s.module for s in slots})
        self.forwards = 0
        self.backwards = 0

    def _diff(self, answer: list[int], wrong: list[int]) -> torch.Tensor:
        w = self.fwd.head.weight
        a, b = torch.tensor(answer, device=w.device), torch.tensor(wrong, device=w.device)
        return (w[a].float() - w[b].float()).detach()

    def _bias(self, answer: list[int], wrong: list[int]) -> torch.Tensor | float:
        bias = getattr(self.fwd.head, "bias", None)
        if bias is None:
            return 0.0
        return (bias[answer].float() - bias[wrong].float()).detach()

    def batch(self, rows: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``rows`` left-padded to ``width`` (masked; position ids count real tokens only): a clean and a
        corrupted batch of the same pairs get one width, so aligned pairs' positions correspond."""
        ids = torch.full((len(rows), width), self.fwd.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row):] = 1
        return ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0)

    def run(self, rows: list[list[int]], answer: list[int], wrong: list[int], *, grad: bool, width: int,
            patch: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """One forward of ``rows`` (left-padded to one width): the margins, the residual at each layer input
        and the final one, each projection's input; their gradients when ``grad``. ``patch``: projection
        path -> ``[rows, width, channels]`` values and a bool channel mask, replacing its input."""
        ids, mask, position_ids = self.batch(rows, width)
        resid: list[torch.Tensor] = [None] * (len(self.layers) + 1)  # type: ignore[list-item]
        proj: dict[str, torch.Tensor] = {}
        handles = []

        def layer_in(i):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs["hidden_states"]
                if grad and i == 0:
                    x = x.detach().requires_grad_(True)
                elif grad:
                    x.retain_grad()
                resid[i] = x
                if args:
                    return (x, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": x}
            return hook

        def final_in(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if grad:
                x.retain_grad()
            resid[-1] = x

        def proj_in(path):
            def hook(module, args, kwargs):
                x = args[0]
                if patch is not None and path in patch:
                    values, channels = patch[path]
                    x = torch.where(channels[:, None, :].to(x.device), values.to(device=x.device, dtype=x.dtype), x)
                if grad:
                    x.retain_grad()
                proj[path] = x
                return (x, *args[1:]), kwargs
            return hook

        head_in: list[torch.Tensor] = []

        def keep_head(module, args, kwargs):
            head_in.append(args[0][:, -1, :])

        try:
            for i, layer in enumerate(self.layers):
                handles.append(layer.register_forward_pre_hook(layer_in(i), with_kwargs=True))
            handles.append(self.norm.register_forward_pre_hook(final_in, with_kwargs=True))
            for path in self.projections:
                handles.append(self.modules[path].register_forward_pre_hook(proj_in(path), with_kwargs=True))
            handles.append(self.fwd.head.register_forward_pre_hook(keep_head, with_kwargs=True))
            with torch.set_grad_enabled(grad):
                self.model(input_ids=ids.to(self.fwd.device), attention_mask=mask.to(self.fwd.device),
                           position_ids=position_ids.to(self.fwd.device), use_cache=False, logits_to_keep=1)
                diff = self._diff(answer, wrong)
                margins = (head_in[-1].float() * diff.to(head_in[-1].device)).sum(-1) + self._bias(answer, wrong)
                self.forwards += 1
                if grad:
                    margins.sum().backward()
                    self.backwards += 1
        finally:
            for handle in handles:
                handle.remove()
        return {"margins": margins.detach().double().cpu().numpy(), "resid": resid, "proj": proj, "diff": diff}

    def lens(self, resid: list[torch.Tensor], diff: torch.Tensor, answer: list[int], wrong: list[int]) -> np.ndarray:
        """``[rows, L + 1]``: the margin read through the final norm and head from each residual's last position."""
        with torch.no_grad():
            out = []
            for x in resid:
                h = self.norm(x[:, -1, :].detach())
                out.append(((h.float() * diff.to(h.device)).sum(-1) + self._bias(answer, wrong)).double().cpu())
        return torch.stack(out, dim=1).numpy()


def _attribution(clean: torch.Tensor, corrupted: torch.Tensor) -> np.ndarray:
    """``-(corrupted - clean) . grad`` per row, summed over positions and channels: an estimated drop."""
    g = clean.grad
    if g is None:
        return np.zeros(clean.shape[0])
    return (-(corrupted.detach().float() - clean.detach().float()) * g.float()).sum(dim=(1, 2)).double().cpu().numpy()


def _slot_attribution(probe: Probe, clean: dict, corrupted: dict) -> np.ndarray:
    """``[rows, slots]`` estimated drops of every slot from one backward pass."""
    out = np.zeros((len(clean["margins"]), len(probe.slots)))
    for j, slot in enumerate(probe.slots):
        c, k = clean["proj"][slot.module], corrupted["proj"][slot.module]
        g = c.grad
        if g is None:
            continue
        sl = slice(slot.start, slot.stop)
        out[:, j] = (-(k.detach()[..., sl].float() - c.detach()[..., sl].float()) * g[..., sl].float()).sum(dim=(1, 2)).double().cpu().numpy()
    return out


def _exact(probe: Probe, rows: list[list[int]], corrupted: dict, answer, wrong, slot: Slot) -> np.ndarray:
    """Clean margins with ``slot``'s channels replaced by the corrupted run's at every position."""
    values = corrupted["proj"][slot.module].detach()
    channels = torch.zeros((len(rows), values.shape[-1]), dtype=torch.bool)
    channels[:, slot.start:slot.stop] = True
    return probe.run(rows, answer, wrong, grad=False, width=values.shape[1], patch={slot.module: (values, channels)})["margins"]


# -- the stage --------------------------------------------------------------------------------------

def _pairs(frozen, block: dict) -> list[dict]:
    classes = block["pairs"] if isinstance(block["pairs"], list) else [block["pairs"]]
    chosen = [p for p in frozen.prompts if p["split"] == block["split"] and "clean" in p and p["class"] in classes]
    if not chosen:
        raise CaptureError(f"the discovery split {block['split']!r} has no pair of class {', '.join(classes)}",
                           hint="add discovery pairs to prompts.jsonl (a new study, or an amendment before any capture)")
    return sorted(chosen, key=lambda p: p["id"])


def _confirmatory_splits(spec: dict) -> set[str]:
    splits = {a["split"] for a in spec.get("analyses", []) if "split" in a}
    return splits


def check_fence(frozen, block: dict) -> None:
    """Refuse a discovery split that an analysis of the study reads, or discovery pairs whose content is
    also a pair of another split: discovery must not touch what confirmation reads."""
    if block["split"] in _confirmatory_splits(frozen.spec):
        raise UsageError(f"discovery split {block['split']!r} is read by an analysis of {frozen.study_id}; discovery "
                         "would touch confirmatory pairs", hint="give discovery its own split (e.g. `discovery`)")
    mine = {pair_digest(p): p["id"] for p in frozen.prompts if p["split"] == block["split"]}
    shared = sorted(f"{mine[pair_digest(p)]}={p['id']}" for p in frozen.prompts
                    if p["split"] != block["split"] and pair_digest(p) in mine)
    if shared:
        raise UsageError(f"discovery pairs have the same content as pairs of another split ({', '.join(shared[:5])})",
                         hint="a pair discovery reads must not be confirmed on; remove the copies")


def _encode(ld, frozen, pairs: list[dict]) -> list[dict]:
    rt = frozen.spec["runtime"]
    out = []
    for p in pairs:
        enc = {k: list(ld.tok(runtime.render(ld.tok, p[k], rt), add_special_tokens=False).input_ids)
               for k in ("clean", "corrupted")}
        answer = ld.tok(p["answer"], add_special_tokens=False).input_ids
        wrong = ld.tok(p["wrong_answer"], add_special_tokens=False).input_ids
        if not answer or not wrong:
            raise CaptureError(f"pair {p['id']}: an answer tokenises to nothing")
        out.append({**p, "clean_ids": enc["clean"], "corrupted_ids": enc["corrupted"], "a": answer[0], "b": wrong[0]})
    return out


def _summary(probe: str, units: list[str], scores: np.ndarray, top_k: int, extra: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Rows of candidates.parquet for one probe: ``scores`` is ``[pairs, units]`` (higher = more of the signal)."""
    n = scores.shape[0]
    mean = scores.mean(axis=0) if n else np.full(len(units), np.nan)
    sd = scores.std(axis=0, ddof=1) if n > 1 else np.full(len(units), np.nan)
    k = min(top_k, len(units))
    in_top = np.zeros(len(units))
    for row in scores:
        in_top[np.argsort(-row, kind="stable")[:k]] += 1
    order = np.argsort(-mean, kind="stable")
    rank = np.empty(len(units), dtype=int)
    rank[order] = np.arange(1, len(units) + 1)
    rows = []
    for j, unit in enumerate(units):
        rows.append({"probe": probe, "unit": unit, "rank": int(rank[j]), "mean": float(mean[j]),
                     "sd": float(sd[j]), "n_pairs": int(n), "top_k": int(k),
                     "top_k_frequency": float(in_top[j] / n) if n else float("nan"),
                     "exact_mean": float(extra["exact_mean"][j]) if extra else float("nan")})
    return sorted(rows, key=lambda r: r["rank"])


def run_discovery(frozen, *, runs_root: Path | None = None, model_path: Path | None = None, progress: bool | None = None,
                  device_map: str | None = None, allow_deviation: bool = False) -> tuple[Path, dict[str, Any]]:
    """Run the study's discovery probes on its discovery split; return the written folder and its record.

    The folder is written whole in a scratch folder and renamed into place, so a killed run leaves no
    half-written output (the scratch folder is removed by the next run)."""
    if "discovery" not in frozen.spec:
        raise UsageError(f"{frozen.study_id} has no discovery block, so there is nothing to discover",
                         hint="discovery is planned before the freeze: start a discovery study (`lockstep new`) whose "
                              "study.yaml has a `discovery:` block (README, \"Discovery, then confirmation\")")
    kind = frozen.design_record.discovery
    if kind == "scan":
        return run_scan(frozen, runs_root=runs_root, model_path=model_path, progress=progress, device_map=device_map,
                        allow_deviation=allow_deviation)
    if kind != "probes":
        raise UsageError(f"the {frozen.design} design has no discovery stage")
    block = settings(frozen.spec)
    unknown = sorted(set(block["probes"]) - set(PROBES))
    if unknown:
        raise UsageError(f"unknown discovery probe(s) {unknown}; known: {', '.join(PROBES)}")
    check_fence(frozen, block)
    pairs = _pairs(frozen, block)
    started, t0 = utc_now(), time.perf_counter()
    root = artifacts.runs_root_of(frozen, runs_root)
    with library_output(progress) as notices:  # the libraries' notices go to discovery.json, not the terminal
        source = runtime.resolve_model(frozen, root, model_path)
        identity = folder_identity(source.path)
        found = runtime.source_deviations(frozen, source, identity, runtime.first_capture_identity(root, frozen.study_id))
        runtime.refuse_deviations(found, allow_deviation)
        ld = runtime.load(frozen, source, identity, {}, runtime.resolve_device_map(frozen, device_map))
        tables, record = _screen(frozen, block, pairs, ld, identity, found, notices, started, t0)
    return _write(discovery_dir(root, frozen.study_id, frozen), tables, record), record


def _screen(frozen, block: dict, pairs: list[dict], ld, identity: dict, found: list, notices: list, started: str,
            t0: float) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The probes on the loaded model: the tables and the record :func:`run_discovery` writes."""
    from scipy.stats import spearmanr

    model = ld.model
    for p in model.parameters():
        p.requires_grad_(False)
    slots = slot_table(model, frozen.spec["ablation"].get("slot_layers", "all"))
    probe = Probe(model, ld.pad_id, slots)
    enc = _encode(ld, frozen, pairs)
    nonpositive = any(x.get("rule") == "nonpositive_clean_margin" for x in frozen.spec.get("exclusions", []))
    batch = int(frozen.spec["runtime"].get("batch_size", 8))
    n_resid = len(probe.layers) + 1
    lens_clean, lens_corrupted = np.zeros((len(enc), n_resid)), np.zeros((len(enc), n_resid))
    clean_m, corrupted_m = np.zeros(len(enc)), np.zeros(len(enc))
    layer_attr = np.full((len(enc), n_resid), np.nan)
    slot_attr = np.full((len(enc), len(slots)), np.nan)
    exact = np.full((len(enc), len(slots)), np.nan)
    aligned = np.array([len(p["clean_ids"]) == len(p["corrupted_ids"]) for p in enc])
    kept_batches: list[tuple[list[int], dict]] = []
    for start in range(0, len(enc), batch):
        idx = list(range(start, min(start + batch, len(enc))))
        chunk = [enc[i] for i in idx]
        a, b = [p["a"] for p in chunk], [p["b"] for p in chunk]
        # clean and corrupted are padded to one width so that aligned pairs' positions correspond
        width = max(max(len(p["clean_ids"]), len(p["corrupted_ids"])) for p in chunk)
        clean_rows = [p["clean_ids"] for p in chunk]
        corr = probe.run([p["corrupted_ids"] for p in chunk], a, b, grad=False, width=width)
        clean = probe.run(clean_rows, a, b, grad=True, width=width)
        lens_clean[idx] = probe.lens(clean["resid"], clean["diff"], a, b)
        lens_corrupted[idx] = probe.lens(corr["resid"], corr["diff"], a, b)
        clean_m[idx], corrupted_m[idx] = clean["margins"], corr["margins"]
        for j in range(n_resid):
            layer_attr[idx, j] = _attribution(clean["resid"][j], corr["resid"][j])
        slot_attr[idx] = _slot_attribution(probe, clean, corr)
        kept_batches.append((idx, {"rows": clean_rows, "a": a, "b": b, "corr": corr}))
        del clean
    excluded = np.array(["" for _ in enc], dtype=object)
    excluded[~aligned] = UNALIGNED
    if any(x.get("rule") == "shared_first_token" for x in frozen.spec.get("exclusions", [])):
        excluded[(excluded == "") & np.array([p["a"] == p["b"] for p in enc])] = "shared_first_token"
    if nonpositive:
        excluded[(excluded == "") & ~(clean_m > 0)] = "nonpositive_clean_margin"
    use = excluded == ""
    slot_labels = [s.label for s in slots]
    ranking = _summary("head_attribution", slot_labels, slot_attr[use], block["top_k"])
    top = block["exact_check"]["top"]
    checked = [r["unit"] for r in ranking][: (len(slots) if top == "all" else int(top))]
    for idx, held in kept_batches:
        for label in checked:
            j = slot_labels.index(label)
            patched = _exact(probe, held["rows"], held["corr"], held["a"], held["b"], slots[j])
            exact[idx, j] = clean_m[idx] - patched
    kept_batches.clear()
    exact_mean = np.array([np.nanmean(exact[use, j]) if use.any() and label in checked else np.nan
                           for j, label in enumerate(slot_labels)])
    ranking = _summary("head_attribution", slot_labels, slot_attr[use], block["top_k"], {"exact_mean": exact_mean})
    check = {"slots": checked, "n_pairs": int(use.sum())}
    attr_means = [r["mean"] for r in sorted(ranking, key=lambda r: slot_labels.index(r["unit"])) if r["unit"] in checked]
    exact_means = [float(exact_mean[slot_labels.index(u)]) for u in slot_labels if u in checked]
    if len(checked) >= 3 and np.ptp(attr_means) > 0 and np.ptp(exact_means) > 0:
        rho, p = spearmanr(attr_means, exact_means)
        check.update({"spearman_rho": float(rho), "spearman_p": float(p)})
    else:
        check.update({"spearman_rho": None, "spearman_p": None,
                      "note": "fewer than 3 checked slots, or a constant score: no rank correlation"})
    resid_names = [f"resid{j}" for j in range(n_resid)]
    candidates = list(ranking) if "head_attribution" in block["probes"] else []
    if "layer_attribution" in block["probes"]:
        candidates += _summary("layer_attribution", resid_names, layer_attr[use], block["top_k"])
    if "logit_lens" in block["probes"]:
        candidates += _summary("logit_lens", resid_names, lens_clean - lens_corrupted, block["top_k"])
    tables = _tables(enc, slots, clean_m, corrupted_m, aligned, excluded, lens_clean, lens_corrupted, layer_attr,
                     slot_attr, exact, candidates, block)
    record = {
        "format_version": artifacts.RUN_FORMAT_VERSION, "stage": "discover", "exploratory": True,
        "study_id": frozen.study_id, "lock_digest": frozen.lock_digest, "split": block["split"],
        "pair_classes": block["pairs"] if isinstance(block["pairs"], list) else [block["pairs"]],
        "probes": list(block["probes"]), "top_k": block["top_k"], "settings": block,
        "pairs_read": {p["id"]: pair_digest(p) for p in pairs},
        "text_digests": {d: p["id"] for p in pairs for d in text_digests(p)},
        "exclusions": {rule: sorted(enc[i]["id"] for i in np.flatnonzero(excluded == rule))
                       for rule in (UNALIGNED, "shared_first_token", "nonpositive_clean_margin") if (excluded == rule).any()},
        "exact_check": check,
        "ranked": [r["unit"] for r in ranking],
        "ranked_exact": sorted(checked, key=lambda u: -exact_mean[slot_labels.index(u)]),
        "resid": "resid<i>: the input of decoder layer i; resid<L> (L = number of layers): the last layer's output",
        "model": {"id": frozen.spec["model"].get("id"), "source": ld.source.kind, "revision": ld.source.revision,
                  "dtype": ld.dtype, **identity},
        "deviations": found, "runtime_notices": list(notices),
        "cost": {"forwards": probe.forwards, "backwards": probe.backwards, "pairs": len(enc),
                 "seconds": round(time.perf_counter() - t0, 3)},
        "tool_version": __version__, "started_utc": started, "finished_utc": utc_now(),
    }
    record["runtime_notices"] = notices  # the same list, still filling until the model is done with
    return tables, record


def _tables(enc, slots, clean_m, corrupted_m, aligned, excluded, lens_clean, lens_corrupted, layer_attr, slot_attr, exact,
            candidates, block) -> dict[str, pa.Table]:
    ids = [p["id"] for p in enc]
    n_resid = lens_clean.shape[1]
    pairs = pa.table({
        "pair_id": ids, "class": [p["class"] for p in enc], "split": [p["split"] for p in enc],
        "content_sha256": [pair_digest(p) for p in enc],
        "clean_n_tokens": [len(p["clean_ids"]) for p in enc], "corrupted_n_tokens": [len(p["corrupted_ids"]) for p in enc],
        "aligned": aligned.tolist(), "clean_margin": clean_m, "corrupted_margin": corrupted_m,
        "excluded_by": [x or None for x in excluded],
    })
    lens = pa.table({
        "pair_id": [i for i in ids for _ in range(n_resid)], "resid": [j for _ in ids for j in range(n_resid)],
        "clean_margin": lens_clean.reshape(-1), "corrupted_margin": lens_corrupted.reshape(-1),
    })
    layers = pa.table({
        "pair_id": [i for i in ids for _ in range(n_resid)], "resid": [j for _ in ids for j in range(n_resid)],
        "attribution_drop": layer_attr.reshape(-1),
    })
    slot_rows = pa.table({
        "pair_id": [i for i in ids for _ in slots], "slot": [s.label for _ in ids for s in slots],
        "layer": [s.layer for _ in ids for s in slots], "head": [s.head for _ in ids for s in slots],
        "layer_type": [s.layer_type for _ in ids for s in slots],
        "attribution_drop": slot_attr.reshape(-1), "exact_drop": exact.reshape(-1),
    })
    return {"pairs.parquet": pairs, "logit_lens.parquet": lens, "layers.parquet": layers, "slots.parquet": slot_rows,
            "candidates.parquet": pa.Table.from_pylist(candidates)}


def _scratch(folder: Path) -> Path:
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    return scratch


def _write(folder: Path, tables: dict[str, pa.Table], record: dict, scratch: Path | None = None) -> Path:
    """Write the tables and the record into a scratch folder (which may already hold a scan's run folder),
    then swap it in for the old output; the record lists the digest of every file beside it."""
    scratch = scratch or _scratch(folder)
    for name, table in tables.items():
        write_table(scratch / name, table)
    record["outputs"] = {f.relative_to(scratch).as_posix(): sha256_file(f)
                         for f in sorted(scratch.rglob("*")) if f.is_file() and f.name != RECORD}
    (scratch / RECORD).write_bytes(pretty_json(record))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    scratch.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


# -- the routing scan -------------------------------------------------------------------------------

SCAN_DEFAULTS = {"split": "discovery", "max_new_tokens": 256, "top_units": 5, "contexts": 5, "window": 8,
                 "decoding": {"decoding": "greedy"}}
SCAN_ZONES = ("prefill", "generated")            # units.parquet zones pooled (generated = trimmed + spill)
SCAN_TOKEN_ZONES = ("prefill", "trimmed", "spill")  # the same tokens, as tokens.parquet names their zones


def scan_settings(spec: dict) -> dict[str, Any]:
    block = {**SCAN_DEFAULTS, **(spec.get("discovery") or {})}
    return block


def run_scan(frozen, *, runs_root: Path | None = None, model_path: Path | None = None, progress: bool | None = None,
             device_map: str | None = None, allow_deviation: bool = False) -> tuple[Path, dict[str, Any]]:
    """The routing journal's discovery scan: generate long from the discovery split's prompts under the frozen
    runtime with every MoE layer recorded (the routing capture itself, on those prompts only), then per unit
    the routed weight W pooled over the prefill and generated zones, the best ``top_units`` of each layer,
    the special tokens that spilled past the end of the answer, and each best unit's heaviest tokens with
    ``window`` tokens of text either side. Writes ``_discovery/run-<n>/`` with the scan's run folder in ``scan/``."""
    import dataclasses

    from lockstep.units import unit_id

    from .designs import routing as capture_routing
    from .store import RunStore

    block = scan_settings(frozen.spec)
    prompts = sorted((p for p in frozen.prompts if p["split"] == block["split"]), key=lambda p: p["id"])
    if not prompts:
        raise CaptureError(f"the discovery split {block['split']!r} has no prompt", hint="add discovery prompts to prompts.jsonl")
    check_fence(frozen, block)
    view = dataclasses.replace(frozen, prompts=prompts)  # the routing capture sees the discovery prompts and nothing else
    started, t0 = utc_now(), time.perf_counter()
    root = artifacts.runs_root_of(frozen, runs_root)
    folder = discovery_dir(root, frozen.study_id, frozen)
    scratch = _scratch(folder)
    run = {"id": "scan", **block["decoding"]}
    with library_output(progress) as notices:
        source = runtime.resolve_model(frozen, root, model_path)  # the whole study's model (a builtin's vocabulary)
        identity = folder_identity(source.path)
        found = runtime.source_deviations(frozen, source, identity, runtime.first_capture_identity(root, frozen.study_id))
        runtime.refuse_deviations(found, allow_deviation)
        st = capture_routing.setup(view, source, identity, {}, runtime.resolve_device_map(frozen, device_map), {})
        st.ld.notices = notices
        work = capture_routing.prepare(view, st, {"max_new_tokens": int(block["max_new_tokens"])})
        store = RunStore(scratch / "scan")
        capture_routing.capture_run(view, run, st, work, store, shard=None, progress=progress, deviations=found)
    shutil.rmtree(store.work, ignore_errors=True)
    classes = {p["id"]: p["class"] for p in prompts}
    tables, spill, best = _scan_tables(scratch / "scan", block, unit_id, set(st.special), classes)
    record = {
        "format_version": artifacts.RUN_FORMAT_VERSION, "stage": "discover", "exploratory": True, "design": "routing",
        "study_id": frozen.study_id, "lock_digest": frozen.lock_digest, "split": block["split"], "settings": block,
        "probes": ["pooled_weight"], "pairs_read": {p["id"]: pair_digest(p) for p in prompts},
        "text_digests": {d: p["id"] for p in prompts for d in text_digests(p)},
        "ranked": best, "spill": spill, "zones_pooled": list(SCAN_ZONES),
        "model": {"id": frozen.spec["model"].get("id"), "source": st.ld.source.kind, "revision": st.ld.source.revision,
                  "dtype": st.ld.dtype, **identity},
        "deviations": found, "runtime_notices": list(notices),
        "cost": {"prompts": len(prompts), "max_new_tokens": int(block["max_new_tokens"]),
                 "seconds": round(time.perf_counter() - t0, 3)},
        "tool_version": __version__, "started_utc": started, "finished_utc": utc_now(),
    }
    return _write(folder, tables, record, scratch), record


def _scan_tables(run_dir: Path, block: dict, unit_id, special: set[int], classes: dict[str, str]
                 ) -> tuple[dict[str, pa.Table], dict[str, Any], list[str]]:
    """candidates.parquet (every unit, pooled W and S, rank in its layer; with a ``contrast``, pooled W in
    each of its two classes and their difference), contexts.parquet (each best unit's heaviest tokens in
    their text), the special tokens generated (``special``: the tokenizer's special and trim ids) and the
    spill's size, and the units in proposal order: by pooled W (each layer's best), or, with a contrast, by
    the difference of pooled W between its classes (every unit)."""
    import pyarrow.parquet as pq

    units = pq.read_table(run_dir / artifacts.UNITS).to_pandas()
    pooled = units[units["zone"].isin(SCAN_ZONES)].groupby(["layer", "expert"], as_index=False)[
        ["n_tokens", "n_selected", "weight_sum"]].sum()
    pooled["W"] = pooled["weight_sum"] / pooled["n_tokens"].where(pooled["n_tokens"] > 0)
    pooled["S"] = pooled["n_selected"] / pooled["n_tokens"].where(pooled["n_tokens"] > 0)
    pooled["unit"] = [unit_id(int(layer), int(e)) for layer, e in zip(pooled["layer"], pooled["expert"])]
    pooled["rank_in_layer"] = pooled.groupby("layer")["W"].rank(ascending=False, method="first").astype(int)
    contrast = block.get("contrast")
    if contrast:
        zoned = units[units["zone"].isin(SCAN_ZONES)].assign(cls=lambda f: f["prompt_id"].map(classes))
        for side in ("a", "b"):
            mine = zoned[zoned["cls"] == contrast[side]].groupby(["layer", "expert"])[["n_tokens", "weight_sum"]].sum()
            w = (mine["weight_sum"] / mine["n_tokens"].where(mine["n_tokens"] > 0)).rename(f"W_{side}")
            pooled = pooled.merge(w.reset_index(), on=["layer", "expert"], how="left")
        pooled["W_diff"] = pooled["W_a"] - pooled["W_b"]
    pooled = pooled.sort_values(["layer", "rank_in_layer"]).reset_index(drop=True)
    best_rows = pooled[pooled["rank_in_layer"] <= int(block["top_units"])]
    tokens = pq.read_table(run_dir / "topk" / "tokens.parquet").to_pandas()
    vocab_table = pq.read_table(run_dir / "topk" / "vocab.parquet")
    vocab = dict(zip(vocab_table.column("token_id").to_pylist(), vocab_table.column("text").to_pylist()))
    joiner = (vocab_table.schema.metadata or {}).get(b"joiner", b" ").decode()
    generated = tokens.loc[tokens["zone"].isin(["trimmed", "spill"]), "token_id"]
    specials = generated[generated.isin(special)].value_counts()
    spill = {"special_tokens_generated": {vocab.get(int(t), f"<{int(t)}>"): int(n) for t, n in specials.items()},
             "spill_tokens": int((tokens["zone"] == "spill").sum()), "generated_tokens": int(len(generated))}
    idx = np.load(run_dir / "topk" / "idx.npy", mmap_mode="r")
    weight = np.load(run_dir / "topk" / "weight.npy", mmap_mode="r")
    manifest = json.loads((run_dir / artifacts.MANIFEST).read_text())
    layers = [m["layer"] for m in manifest.get("moe_layers", [])]
    in_zone = tokens["zone"].isin(SCAN_TOKEN_ZONES).to_numpy()
    by_prompt = {pid: g.sort_values("position") for pid, g in tokens.groupby("prompt_id")}
    width = int(block["window"])
    text = token_contexts.token_text(vocab)
    contexts = []
    for row in best_rows.itertuples():
        li = layers.index(int(row.layer))
        w = np.where(in_zone, token_contexts.unit_weight(idx, weight, li, int(row.expert)), 0.0)
        for r in np.argsort(-w, kind="stable")[: int(block["contexts"])]:
            if w[r] <= 0:
                break
            pid, pos = tokens.at[r, "prompt_id"], int(tokens.at[r, "position"])
            seq = by_prompt[pid]
            at = int(np.flatnonzero(seq["position"].to_numpy() == pos)[0])
            ids = seq["token_id"].to_numpy()
            contexts.append({"unit": row.unit, "layer": int(row.layer), "rank_in_layer": int(row.rank_in_layer),
                             "prompt_id": pid, "position": pos, "zone": tokens.at[r, "zone"], "weight": float(w[r]),
                             **token_contexts.window(ids, at, width, text, joiner)})
    columns = ["unit", "layer", "rank_in_layer", "prompt_id", "position", "zone", "weight", "before", "token", "after"]
    columns_kept = ["unit", "layer", "expert", "rank_in_layer", "W", "S", "n_tokens", "n_selected", "weight_sum"]
    if contrast:
        columns_kept += ["W_a", "W_b", "W_diff"]
        best = pooled.sort_values(["W_diff", "unit"], ascending=[False, True])["unit"].tolist()[: int(block["top_units"])]
    else:
        best = best_rows.sort_values(["rank_in_layer", "W"], ascending=[True, False])["unit"].tolist()
    candidates = pooled[columns_kept]
    return ({"candidates.parquet": pa.Table.from_pandas(candidates, preserve_index=False),
             "contexts.parquet": pa.Table.from_pylist(contexts) if contexts else pa.table({c: [] for c in columns})},
            spill, best)
