"""Load the preregistered model and tokenizer, render prompts, and check the runtime against the study.

Models load through ``transformers`` ``from_pretrained`` from a local folder: the builtin synthetic
model's cache folder (:mod:`capture.builtin`), a ``model.path`` in the study, or the local Hugging Face
cache for ``model.id`` at the pinned ``model.revision`` (``local_files_only``: capture never downloads).

A runtime that differs from the preregistration (model revision, dtype, chat template, thinking
suppression, decoding, batch size, token budget) is a *deviation*: refused unless the caller allows
deviations, in which case each one is recorded in the run manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lockstep.errors import CaptureError, WeightsNotFound
from lockstep.fsio import sha256_bytes
from lockstep.models import DTYPES, ModelSource, config_sha256, hub_snapshot, load_model, load_tokenizer

__all__ = ["DTYPES", "ModelSource", "config_sha256", "deviations", "hub_snapshot", "load_model", "load_tokenizer",
           "render", "resolve_model", "stop_ids", "study_words", "template_facts", "token_id", "trim_ids"]

from . import builtin

def study_words(frozen) -> set[str]:
    """Words of the prompts and the rubric lexicon: what a builtin tokenizer must cover."""
    words = builtin.words_of(p["text"] for p in frozen.prompts)
    sets = (frozen.rubric or {}).get("lexicon", {}).get("sets", {}) or {}
    for members in sets.values():
        words |= builtin.words_of(str(m) for m in members)
    return words


def resolve_model(frozen, runs_root: Path, model_path: Path | None = None) -> ModelSource:
    """Find the study's weights on this machine; raise :class:`WeightsNotFound` with the fix if absent."""
    model = frozen.spec["model"]
    source = model.get("source", "hub")
    if source == "builtin" and model_path is None:
        folder = builtin.ensure_builtin(model["builtin"], Path(runs_root) / "_models", study_words(frozen))
        return ModelSource(folder, "builtin", builtin.BUILDER_VERSION)
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


def render(tok, text: str, runtime: dict[str, Any]) -> str:
    """The prompt text the model reads: chat-templated unless ``chat_template`` is ``none``."""
    if runtime.get("chat_template", "chatml") == "none":
        return text
    if not tok.chat_template:
        raise CaptureError(
            "the study asks for a chat template but the tokenizer has none",
            hint="use the model's own tokenizer folder, or set /runtime/chat_template to none",
        )
    messages = []
    if runtime.get("system_prompt"):
        messages.append({"role": "system", "content": runtime["system_prompt"]})
    messages.append({"role": "user", "content": text})
    kwargs = {}
    if runtime.get("enable_thinking") is not None:
        kwargs["enable_thinking"] = bool(runtime["enable_thinking"])
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)


def template_facts(tok, runtime: dict[str, Any]) -> dict[str, Any]:
    """What the template does: its digest, whether it is ChatML, whether it honours enable_thinking."""
    if runtime.get("chat_template", "chatml") == "none":
        return {"chat_template": "none", "sha256": None, "chatml": False, "thinking_flag_honoured": None}
    probe = "probe"
    on = render(tok, probe, {**runtime, "enable_thinking": True})
    off = render(tok, probe, {**runtime, "enable_thinking": False})
    return {
        "chat_template": runtime.get("chat_template", "chatml"),
        "sha256": sha256_bytes((tok.chat_template or "").encode()),
        "chatml": "<|im_start|>" in off,
        "thinking_flag_honoured": on != off,
    }


def deviations(
    frozen, source: ModelSource, facts: dict[str, Any], overrides: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every way this runtime differs from the preregistration, as ``{field, preregistered, actual}``."""
    model, runtime = frozen.spec["model"], frozen.spec["runtime"]
    found = []
    pinned = model.get("revision")
    if pinned is not None and source.revision is not None and source.revision != pinned:
        found.append({"field": "/model/revision", "preregistered": pinned, "actual": source.revision})
    if pinned is not None and source.revision is None:
        found.append({"field": "/model/revision", "preregistered": pinned, "actual": "unverifiable local folder"})
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
