"""Model and tokenizer loading, shared by capture and the judge rubric (the audit).

Models load through ``transformers`` ``from_pretrained`` from a local folder only (``local_files_only``):
the builtin demo model's cache folder, a path, or the local Hugging Face cache at a pinned revision
(:func:`hub_snapshot`). Nothing here downloads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CaptureError, WeightsNotFound
from .fsio import sha256_bytes, sha256_file

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes a study may ask for
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")


def _cache_path() -> Path:
    import os

    root = os.environ.get("LOCKSTEP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lockstep")
    return Path(root) / "file-sha256.json"


def cached_sha256(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, cached by (resolved path, size, mtime) so that a 70 GB model is hashed once.
    The cache is read once and written once per call."""
    from .fsio import atomic_write, pretty_json

    cache_file = _cache_path()
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    out, missed = {}, False
    for path in paths:
        real = Path(path).resolve()
        st = real.stat()
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
        if key not in cache:
            cache[key], missed = sha256_file(real), True
        out[Path(path)] = cache[key]
    if missed:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cache_file, pretty_json(cache))
        except OSError:
            pass  # a read-only home: hash again next time
    return out


def folder_identity(folder: Path) -> dict:
    """What a model folder is, by content: the sha256 of every weight and tokenizer file, and one digest of each set.

    A digest is the sha256 of the sorted ``sha256  name`` lines (the form ``sha256sum`` prints), so a renamed,
    added, removed or changed file changes it.
    """
    folder = Path(folder)

    def digest(files: dict[str, str]) -> str:
        return sha256_bytes("".join(f"{sha}  {name}\n" for name, sha in sorted(files.items())).encode())

    entries = sorted(p for p in folder.iterdir() if p.is_file()
                     and (p.name.endswith(WEIGHT_SUFFIXES) or p.name in TOKENIZER_FILES))
    digests = cached_sha256(entries)
    weights = {p.name: digests[p] for p in entries if p.name.endswith(WEIGHT_SUFFIXES)}
    tokenizer = {p.name: digests[p] for p in entries if p.name in TOKENIZER_FILES}
    return {"weight_files": weights, "weights_sha256": digest(weights),
            "tokenizer_files": tokenizer, "tokenizer_sha256": digest(tokenizer)}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are and what revision that folder is."""

    path: Path
    kind: str  # builtin | local | hub
    revision: str | None


def hub_snapshot(repo_id: str, revision: str | None) -> ModelSource:
    """The local Hugging Face cache folder of ``repo_id`` at ``revision``; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several types for "not in the cache"
        raise WeightsNotFound(
            f"capture not run: weights not found at the local Hugging Face cache for {repo_id}@{revision} "
            f"({type(exc).__name__})",
            hint=f"on a machine with the weights run `huggingface-cli download {repo_id} --revision {revision}`, "
            "or pass --model-path to a local copy",
        ) from None
    return ModelSource(folder, "hub", folder.name)


def load_model(source: ModelSource, *, dtype: str, trust_remote_code: bool, device_map: str | None):
    """``AutoModelForCausalLM.from_pretrained`` on the folder, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise CaptureError(f"dtype {dtype!r} is not one of {list(DTYPES)}", hint="fix study.yaml /model/dtype")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
            device_map=device_map, local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise WeightsNotFound(
            f"capture not run: weights not found at {source.path} ({exc})".splitlines()[0],
            hint="check that the folder holds the model's config.json and weight files",
        ) from None
    return model.eval()


def load_tokenizer(folder: Path, probe_texts: list[str]):
    """Load the tokenizer users get for ``folder``, checked against the folder's ``tokenizer.json``.

    ``AutoTokenizer`` picks a class from the model type; for a locally built word-level tokenizer in
    a ``qwen3_5_moe`` folder it rebuilds the pipeline wrongly (transformers 5.23). A tokenizer saved
    as a plain tokenizers backend is therefore loaded with ``PreTrainedTokenizerFast``; any loaded
    tokenizer must encode the probe texts as the raw ``tokenizer.json`` does, or capture refuses.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    plain = config.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast")
    loader = PreTrainedTokenizerFast if plain else AutoTokenizer
    tok = loader.from_pretrained(folder, local_files_only=True)
    raw_path = folder / "tokenizer.json"
    if raw_path.is_file():
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(str(raw_path))
        for text in probe_texts:
            if raw.encode(text, add_special_tokens=False).ids != tok(text, add_special_tokens=False).input_ids:
                raise CaptureError(
                    f"{loader.__name__} loads the tokenizer at {folder} differently from its tokenizer.json "
                    f"(probe text {text[:40]!r})",
                    hint="save the tokenizer with tokenizer_class PreTrainedTokenizerFast in tokenizer_config.json",
                )
    tok.padding_side = "left"
    return tok, loader.__name__


def config_sha256(folder: Path) -> str:
    return sha256_file(Path(folder) / "config.json")
