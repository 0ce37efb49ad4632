"""Load the preregistered model and tokenizer, render prompts, and check the runtime against the study.

Models load through ``transformers`` ``from_pretrained`` from a local folder: the builtin synthetic
model's cache folder (:mod:`capture.builtin`), a ``model.path`` in the study, or the local Hugging Face
cache for ``model.id`` at the pinned ``model.revision`` (``local_files_only``: capture never downloads).

A runtime that differs from the preregistration (model revision, dtype, chat template, thinking
suppression, decoding, batch size, token budget) is a *deviation*: refused unless the caller allows
deviations, in which case each one is recorded in the run manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockstep import artifacts, variants
from lockstep.errors import CaptureError, UsageError, WeightsNotFound
from lockstep.fsio import sha256_bytes
from lockstep.models import (
    DTYPES,
    ModelSource,
    config_sha256,
    hub_snapshot,
    load_model,
    load_tokenizer,
)

__all__ = ["DTYPES", "Loaded", "ModelSource", "base_manifest", "base_run_config", "config_sha256", "deviations",
           "hub_snapshot", "load", "load_model", "load_tokenizer", "pad_id", "prompt_texts", "refuse_deviations",
           "render", "resolve_device_map", "resolve_model", "select_runs", "stop_ids", "study_words", "template_facts", "token_id", "trim_ids"]

from . import builtin, builtin_heads


PROMPT_TEXT_FIELDS = ("text", "clean", "corrupted", "answer", "wrong_answer")


def prompt_texts(frozen) -> list[str]:
    """Every text of the prompts a model will read (routing prompts; pairs, answers and wrong answers)."""
    return [p[k] for p in frozen.prompts for k in PROMPT_TEXT_FIELDS if isinstance(p.get(k), str)]


def study_words(frozen) -> set[str]:
    """Words of the prompts and the rubric lexicon: what a builtin tokenizer must cover."""
    words = builtin.words_of(prompt_texts(frozen))
    words |= set((frozen.spec["model"].get("builtin") or {}).get("vocabulary_words", []))  # a proposed study's
    sets = (frozen.rubric or {}).get("lexicon", {}).get("sets", {}) or {}
    for members in sets.values():
        words |= builtin.words_of(str(m) for m in members)
    return words


def resolve_model(frozen, runs_root: Path, model_path: Path | None = None) -> ModelSource:
    """Find the study's weights on this machine; raise :class:`WeightsNotFound` with the fix if absent."""
    model = frozen.spec["model"]
    source = model.get("source", "hub")
    if source == "builtin" and model_path is None:
        maker = builtin_heads if model["builtin"]["name"] == builtin_heads.NAME else builtin
        folder = maker.ensure_builtin(model["builtin"], Path(runs_root) / artifacts.MODELS, study_words(frozen))
        return ModelSource(folder, "builtin", maker.BUILDER_VERSION)
    if model_path is not None or source in ("path", "local"):
        raw = model_path if model_path is not None else model.get("path")
        path = Path(raw) if raw is not None else None
        if path is not None and not path.is_absolute():
            path = Path(frozen.repo_root) / path
        if path is None or not (path / "config.json").is_file():
            raise WeightsNotFound(
                f"capture not run: weights not found at {path} (no config.json there)",
                hint="put the model folder (config.json, *.safetensors, tokenizer files) at that path, "
                "or pass --model-path to where it is",
            )
        revision = path.name if path.parent.name == "snapshots" else None
        return ModelSource(path, "local", revision)
    return hub_snapshot(model["id"], model.get("revision"))


def token_id(tok, token: str) -> int | None:
    """The id of a single special token, or None if the tokenizer does not know it as one token."""
    ids = tok.convert_tokens_to_ids([token])
    unk = tok.unk_token_id
    if not ids or ids[0] is None or (unk is not None and ids[0] == unk and token != tok.unk_token):
        return None
    return int(ids[0])


def trim_ids(tok, trim_tokens: list[str]) -> dict[int, str]:
    """``{id: token}`` of the study's trim tokens; refuses a tokenizer that lacks one."""
    out, missing = {}, []
    for t in trim_tokens:
        i = token_id(tok, t)
        (missing.append(t) if i is None else out.__setitem__(i, t))
    if missing:
        raise CaptureError(
            f"the tokenizer has no single token for trim token(s) {missing}: trimming before special-token "
            "spill would be impossible",
            hint="fix study.yaml /runtime/trim_tokens to the model's own special tokens",
        )
    return out


def stop_ids(model, tok) -> set[int]:
    """Stop tokens as ``generate`` would use them: the generation config's eos ids, else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tok.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def template_in_force(tok, runtime: dict[str, Any]) -> str | None:
    """The chat template prompts are rendered with: the tokenizer's own; for ``chatml`` on a tokenizer that
    has none, the toolkit's ChatML template (:data:`capture.builtin.CHATML_TEMPLATE`); None for ``none``."""
    kind = runtime.get("chat_template", "chatml")
    if kind == "none":
        return None
    if tok.chat_template:
        return tok.chat_template
    if kind == "chatml":
        return builtin.CHATML_TEMPLATE
    raise CaptureError(
        "the study asks for the model's own chat template (chat_template: model) but the tokenizer has none",
        hint="use the model's own tokenizer folder, set /runtime/chat_template to chatml (the toolkit's) or none",
    )


def render(tok, text: str, runtime: dict[str, Any]) -> str:
    """The prompt text the model reads: chat-templated unless ``chat_template`` is ``none``."""
    template = template_in_force(tok, runtime)
    if template is None:
        return text
    messages = []
    if runtime.get("system_prompt"):
        messages.append({"role": "system", "content": runtime["system_prompt"]})
    messages.append({"role": "user", "content": text})
    kwargs = {}
    if runtime.get("enable_thinking") is not None:
        kwargs["enable_thinking"] = bool(runtime["enable_thinking"])
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, chat_template=template, **kwargs)


def template_facts(tok, runtime: dict[str, Any]) -> dict[str, Any]:
    """What the template does: its digest, whether it is ChatML, whether it honours enable_thinking."""
    if runtime.get("chat_template", "chatml") == "none":
        return {"chat_template": "none", "sha256": None, "chatml": False, "thinking_flag_honoured": None}
    probe = "probe"
    on = render(tok, probe, {**runtime, "enable_thinking": True})
    off = render(tok, probe, {**runtime, "enable_thinking": False})
    return {
        "chat_template": runtime.get("chat_template", "chatml"),
        "sha256": sha256_bytes((template_in_force(tok, runtime) or "").encode()),
        "source": "tokenizer" if tok.chat_template else "toolkit ChatML",
        "chatml": "<|im_start|>" in off,
        "thinking_flag_honoured": on != off,
    }


def first_capture_identity(runs_root: Path, study_id: str, variant: str = variants.BASE) -> dict[str, Any] | None:
    """The model identity the study's first completed capture of model ``variant`` recorded (None before any)."""
    found = []
    for manifest_path in sorted((Path(runs_root) / study_id).glob(f"*/{artifacts.MANIFEST}")):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue
        model = manifest.get("model", {})
        if (manifest.get("variant") or variants.BASE) != variant:
            continue
        if model.get("weights_sha256"):
            found.append((manifest.get("started_utc") or "", manifest.get("run_id"), model))
    if not found:
        return None
    _, run_id, model = min(found, key=lambda item: (item[0], str(item[1])))
    return {"run_id": run_id, "weights_sha256": model.get("weights_sha256"), "tokenizer_sha256": model.get("tokenizer_sha256")}


def source_deviations(frozen, source: ModelSource, identity: dict[str, Any], first: dict[str, Any] | None) -> list[dict[str, Any]]:
    """How the weights and tokenizer found differ from the plan: its revision, its pinned digests, or (unpinned)
    the digests of the study's first capture. Checked before the model loads."""
    model = frozen.spec["model"]
    found = []
    pinned = model.get("revision")
    by_content = bool(model.get("weights_sha256")) or model.get("revision_policy") == "record_at_first_capture"
    if pinned is not None and source.revision is not None and source.revision != pinned:
        found.append({"field": "/model/revision", "preregistered": pinned, "actual": source.revision})
    if pinned is not None and source.revision is None and not by_content:
        found.append({"field": "/model/revision", "preregistered": pinned,
                      "actual": "unverifiable local folder (pin /model/weights_sha256 to name it by its content)"})
    for key in ("weights_sha256", "tokenizer_sha256"):
        if model.get(key):
            if identity[key] != model[key]:
                found.append({"field": f"/model/{key}", "preregistered": model[key], "actual": identity[key]})
        elif first is not None and first.get(key) and first[key] != identity[key]:
            found.append({"field": f"/model/{key}", "preregistered": f"{first[key]} (the study's first capture, run {first['run_id']})",
                          "actual": identity[key]})
    return found


def deviations(frozen, facts: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Every way this runtime (template, dtype, batch size, token budget) differs from the preregistration,
    as ``{field, preregistered, actual}``; the model's own identity is :func:`source_deviations`."""
    model, runtime = frozen.spec["model"], frozen.spec["runtime"]
    found = []
    if runtime.get("chat_template", "chatml") == "chatml" and not facts["chatml"]:
        found.append({"field": "/runtime/chat_template", "preregistered": "chatml", "actual": "not ChatML"})
    if runtime.get("enable_thinking") is False and facts.get("thinking_flag_honoured") is False:
        found.append({"field": "/runtime/enable_thinking", "preregistered": False,
                      "actual": "template ignores enable_thinking"})
    prereg = {"dtype": model.get("dtype"), "batch_size": runtime.get("batch_size"),
              "max_new_tokens": runtime.get("max_new_tokens")}
    where = {"dtype": "/model/dtype", "batch_size": "/runtime/batch_size", "max_new_tokens": "/runtime/max_new_tokens"}
    for key, value in sorted(overrides.items()):
        if value is not None and value != prereg.get(key):
            found.append({"field": where[key], "preregistered": prereg.get(key), "actual": value})
    return found


def refuse_deviations(found: list[dict[str, Any]], allow_deviation: bool) -> None:
    """Refuse a runtime that differs from the preregistration, unless deviations are allowed (and recorded)."""
    if found and not allow_deviation:
        lines = "; ".join(f"{d['field']}: preregistered {d['preregistered']!r}, actual {d['actual']!r}" for d in found)
        raise CaptureError(f"the runtime differs from the preregistration: {lines}",
                           hint="run as preregistered, amend the study, or pass --allow-deviation to record it")


def variant_view(frozen, name: str):
    """The frozen study as model variant ``name`` sees it: its model block and runtime surface in ``spec``."""
    import dataclasses

    return dataclasses.replace(frozen, spec=variants.spec_for(frozen.spec, name))


def variant_groups(frozen, runs: list[dict[str, Any]], stores) -> list[tuple[str, list]]:
    """The runs still to capture, ``[(variant, [(run, store), ...])]``: each variant's generating runs, then
    the teacher-forced runs (which re-read a generating run's texts, so come after it), in plan order."""
    pending = [(run, store) for run, store in zip(runs, stores) if not store.is_complete()]
    groups: dict[tuple[bool, str], list] = {}
    for run, store in pending:
        groups.setdefault((run["decoding"] == "teacher_forced", variants.variant_name(run)), []).append((run, store))
    return [(key[1], group) for key, group in sorted(groups.items(), key=lambda item: item[0][0])]


def select_runs(frozen, run_ids) -> list[dict[str, Any]]:
    """The preregistered runs to capture: all, or those named (UsageError for an unknown id)."""
    runs = frozen.spec["runtime"]["runs"]
    if run_ids is None:
        return list(runs)
    known = [r["id"] for r in runs]
    unknown = sorted(set(run_ids) - set(known))
    if unknown:
        raise UsageError(f"unknown run(s) {unknown}; the study preregisters {known}")
    return [r for r in runs if r["id"] in set(run_ids)]


def pad_id(tok) -> int:
    """The id batches are left-padded with: the pad token, else the eos token."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise CaptureError("the tokenizer has neither a pad nor an eos token to left-pad batches with")
    return int(pad)


@dataclass
class Loaded:
    """What every design's capture starts from: the weights' source, model, tokenizer and template facts."""

    source: ModelSource
    model: Any
    tok: Any
    tokenizer_loader: str
    facts: dict[str, Any]
    dtype: str
    pad_id: int
    identity: dict[str, Any]  # lockstep.models.folder_identity of the folder loaded
    notices: list[str] = field(default_factory=list)  # what transformers / huggingface_hub said (capture.notices)


def resolve_device_map(frozen, requested: str | None) -> str | None:
    """The device map in force: the command's ``--device-map``, else the study's ``/model/device_map``.

    On a machine without CUDA, ``"auto"`` (the schema's default) means the CPU: the model loads as it
    would without a map. Where the model went is recorded in the manifest (``model.device_map``,
    ``model.devices``); a different device layout is not a deviation of the plan.
    """
    import torch

    value = requested if requested is not None else frozen.spec["model"].get("device_map")
    if value in (None, "auto", "cpu") and not torch.cuda.is_available():
        return None
    return value


def load(frozen, source: ModelSource, identity: dict[str, Any], overrides: dict, device_map) -> Loaded:
    """Load the study's model and tokenizer from ``source`` (resolved, and its identity checked, by the
    orchestrator before this slow step); the tokenizer is checked on every prompt text."""
    spec = frozen.spec
    tok, loader = load_tokenizer(source.path, prompt_texts(frozen))
    dtype = overrides.get("dtype") or spec["model"].get("dtype", "float32")
    model = load_model(source, dtype=dtype, trust_remote_code=bool(spec["model"].get("trust_remote_code")),
                       device_map=device_map)
    return Loaded(source, model, tok, loader, template_facts(tok, spec["runtime"]), dtype, pad_id(tok), identity)


def base_run_config(frozen, run, ld: Loaded, batch_size: int, deviations) -> dict[str, Any]:
    """The fields every design binds a run folder to (a resume refuses a folder bound to other ones)."""
    return {
        "format_version": artifacts.RUN_FORMAT_VERSION, "design": frozen.design, "study_id": frozen.study_id,
        "run_id": run["id"], "lock_digest": frozen.lock_digest, "run": run,
        "model_config_sha256": config_sha256(ld.source.path), "model_revision": ld.source.revision,
        "dtype": ld.dtype, "batch_size": batch_size, "deviations": deviations,
    }


def base_manifest(frozen, run, ld: Loaded, config: dict[str, Any], started: str, deviations) -> dict[str, Any]:
    """The manifest fields every design writes (schemas/run-manifest.schema.json); designs add their own."""
    from lockstep.fsio import utc_now
    from lockstep.provenance import git_info, machine_facts, package_versions

    return {
        "format_version": artifacts.RUN_FORMAT_VERSION, "design": frozen.design, "study_id": frozen.study_id,
        "run_id": run["id"], "lock_digest": frozen.lock_digest, "synthetic": bool(frozen.spec.get("synthetic", False)),
        "model": {
            "id": frozen.spec["model"].get("id"), "source": ld.source.kind, "path": str(ld.source.path),
            "revision": ld.source.revision, "config_sha256": config["model_config_sha256"],
            "class": type(ld.model).__name__, "dtype": ld.dtype,
            "devices": sorted({str(p.device) for p in ld.model.parameters()}),
            "device_map": {str(k): str(v) for k, v in (getattr(ld.model, "hf_device_map", None) or {}).items()} or None,
            **ld.identity,
        },
        "tokenizer": {"loader": ld.tokenizer_loader, "template": ld.facts},
        "decoding": run, "batch_size": config["batch_size"], "deviations": deviations,
        "variant": variants.variant_name(run),
        "runtime_surface": {k: frozen.spec["runtime"].get(k) for k in variants.SURFACE_FIELDS},
        "runtime_notices": list(ld.notices),
        "versions": package_versions(), "machine": machine_facts(), "git": git_info(frozen.root), "started_utc": started,
        "finished_utc": utc_now(),
    }
