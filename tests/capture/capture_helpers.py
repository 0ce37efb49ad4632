"""Helpers for capture tests: a frozen copy of the demo study in a real git repository."""

from __future__ import annotations

from pathlib import Path

import yaml

from studyrepo import commit_all, copy_study, git


def frozen_repo(root: Path, *, name: str = "demo", edit=None) -> Path:
    """A git repo at ``root`` holding the demo study (optionally edited), frozen and committed."""
    from lockstep.freeze import freeze

    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    study = copy_study("demo", root, as_name=name)
    if edit is not None:
        path = study / "study.yaml"
        spec = yaml.safe_load(path.read_text())
        edit(spec)
        path.chmod(0o644)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    commit_all(root, "add study")
    freeze(study)
    commit_all(root, "freeze")
    return study


#: the builtin hybrid Qwen3.5 with a planted head (layer 3, head 2), the prompts the SAE tests read,
#: and the extra words its tokenizer knows
HEADS_PLANT = {"name": "tiny-qwen3_5", "seed": 0, "plant": {"layer": 3, "head": 2, "strength": 12.0}}
HEADS_TEXTS = ["the capital of veltoria is", "in osmira the capital city is", "the clock says tick",
               "the capital of zeldra is"]
HEADS_WORDS = ["the", "capital", "of", "is", "in", "city", "clock", "says"]


def heads_model(models_dir: Path):
    """(model, tokenizer) of :data:`HEADS_PLANT`, built into ``models_dir`` and loaded back through the
    loader capture uses."""
    from capture import builtin_heads, runtime

    folder = builtin_heads.ensure_builtin(HEADS_PLANT, models_dir, HEADS_WORDS)
    tok, _ = runtime.load_tokenizer(folder, HEADS_TEXTS)
    model = runtime.load_model(runtime.ModelSource(folder, "builtin", builtin_heads.BUILDER_VERSION),
                               dtype="float32", trust_remote_code=False, device_map=None)
    return model, tok


def random_sae(d: int, f: int, seed: int = 0) -> dict:
    """A random TopK SAE's tensors (``W_enc`` d×f, ``b_enc``, ``W_dec`` f×d, ``b_dec``), seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d, f, generator=g) / d ** 0.5, "b_enc": torch.randn(f, generator=g) * 0.1,
            "W_dec": torch.randn(f, d, generator=g) / d ** 0.5, "b_dec": torch.randn(d, generator=g) * 0.1}
