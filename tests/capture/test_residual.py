"""Residual capture: the router input kept per token equals the MoE block input of an independent forward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from capture.run import run_capture
from capture_helpers import frozen_repo
from lockstep.gate import require_frozen


def test_residual_rows_equal_the_block_input_of_a_plain_forward(tmp_path):
    layers = [1, 3]
    study = frozen_repo(tmp_path / "repo", edit=lambda s: s["capture"].update(residual_layers=layers))
    [run_dir] = run_capture(require_frozen(study), runs_root=tmp_path / "runs", run_ids=["greedy"], progress=False)
    tokens = pd.read_parquet(run_dir / "topk" / "tokens.parquet")
    residual = {l: np.load(run_dir / "residual" / f"L{l}.npy") for l in layers}
    assert all(r.shape == (len(tokens), 64) and r.dtype == np.float16 for r in residual.values())

    from transformers import AutoModelForCausalLM

    manifest = json.loads((run_dir / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(Path(manifest["model"]["path"]), dtype=torch.float32).eval()
    seen: dict[int, torch.Tensor] = {}
    hooks = [model.model.layers[l].mlp.register_forward_pre_hook(lambda m, args, l=l: seen.__setitem__(l, args[0][0].clone()))
             for l in layers]
    try:
        for prompt_id in ("fire-03", "nofire-07"):
            rows = tokens.index[tokens.prompt_id == prompt_id].to_numpy()
            order = rows[np.argsort(tokens.position.to_numpy()[rows])]
            ids = torch.from_numpy(tokens.token_id.to_numpy()[order])[None]
            assert (tokens.position.to_numpy()[order] == np.arange(len(order))).all()  # every position read, in order
            with torch.no_grad():
                model(ids)
            for l in layers:
                expected = seen[l].numpy()
                np.testing.assert_allclose(residual[l][order].astype(np.float32), expected, rtol=2e-2, atol=2e-2)
    finally:
        for h in hooks:
            h.remove()
