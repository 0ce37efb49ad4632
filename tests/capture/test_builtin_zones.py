"""The builtin tokenizer and model, zones on hand-built sequences, the on-device reductions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from capture import builtin, runtime, zones
from capture.decode import row_seed
from capture.reduce import accumulate, slot_onehot

DEMO_BUILTIN = {"name": "tiny-qwen3_5-moe", "seed": 0,
                "plant": {"layer": 1, "expert": 5, "tokens": ["feel", "hum"], "strength": 8.0}}


def test_tokenizer_round_trips_through_the_user_loader(demo_capture):
    frozen, paths = demo_capture
    folder = json.loads((paths["greedy"] / "manifest.json").read_text())["model"]["path"]
    tok, _ = runtime.load_tokenizer(folder, [p["text"] for p in frozen.prompts])
    unk = tok.unk_token_id
    texts = [p["text"] for p in frozen.prompts] + [" ".join(sorted(runtime.study_words(frozen)))]
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert unk not in ids
        assert tok.decode(ids) == text
    assert tok("i feel the", add_special_tokens=False).input_ids != tok("i", add_special_tokens=False).input_ids * 2
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<pad>"):
        assert tok.convert_ids_to_tokens(tok(special, add_special_tokens=False).input_ids) == [special]
    rendered = runtime.render(tok, "i feel", {"chat_template": "chatml", "enable_thinking": False})
    assert rendered == "<|im_start|>user\ni feel<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_build_is_deterministic_and_keyed_by_spec(tmp_path):
    a = builtin.ensure_builtin(DEMO_BUILTIN, tmp_path / "a")
    b = builtin.ensure_builtin(DEMO_BUILTIN, tmp_path / "b")
    assert a.name == b.name
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    null = builtin.ensure_builtin({**DEMO_BUILTIN, "plant": None}, tmp_path / "a")
    assert null.name != a.name
    assert json.loads((a / "lockstep-builtin.json").read_text())["synthetic"] is True
    with pytest.raises(Exception, match="unknown builtin model 'huge'"):
        builtin.ensure_builtin({**DEMO_BUILTIN, "name": "huge"}, tmp_path / "a")


def test_zones_on_hand_built_sequences():
    IM_END, EOT, W = 2, 0, 50
    trim = {IM_END, EOT}
    assert zones.trim_position([W, W, IM_END, W, EOT], trim) == 2
    assert zones.trim_position([W, W, W], trim) == 3
    # 5 generated, the last never read: rows for tokens 0..3; spill starts at the trim token (2)
    assert zones.zone_counts(7, [W, W, IM_END, W, EOT], trim) == {"prefill": 7, "generated": 4, "trimmed": 2, "spill": 2}
    assert zones.zone_counts(3, [W, W, W], trim) == {"prefill": 3, "generated": 2, "trimmed": 2, "spill": 0}
    assert zones.zone_counts(3, [EOT], trim) == {"prefill": 3, "generated": 0, "trimmed": 0, "spill": 0}
    assert zones.spill_tokens([W, IM_END, W, IM_END, 1, EOT], 1, {IM_END: "<|im_end|>", EOT: "<|endoftext|>", 1: "<|im_start|>"}) == [
        {"token": "<|endoftext|>", "count": 1}, {"token": "<|im_end|>", "count": 2}, {"token": "<|im_start|>", "count": 1}]


def test_accumulate_equals_loops():
    gen = torch.Generator().manual_seed(0)
    n_rows, n_experts, k, n = 3, 6, 2, 40
    slots = torch.randint(0, 3 * n_rows + 1, (n,), generator=gen)
    idx = torch.stack([torch.randperm(n_experts, generator=gen)[:k] for _ in range(n)])
    w = torch.rand(n, k, generator=gen)
    sel = torch.zeros(3 * n_rows + 1, n_experts)
    wsum = torch.zeros_like(sel)
    accumulate(sel, wsum, slot_onehot(slots, n_rows), idx, w)
    ref_sel, ref_w = np.zeros(sel.shape), np.zeros(sel.shape)
    for t in range(n):
        for j in range(k):
            ref_sel[slots[t], idx[t, j]] += 1
            ref_w[slots[t], idx[t, j]] += float(w[t, j])
    np.testing.assert_array_equal(sel.numpy(), ref_sel)
    np.testing.assert_allclose(wsum.numpy(), ref_w, rtol=1e-6)


def test_row_seed_depends_on_run_seed_and_prompt_only():
    assert row_seed(1234, "fire-01") == row_seed(1234, "fire-01")
    assert len({row_seed(1234, "fire-01"), row_seed(1234, "fire-02"), row_seed(1235, "fire-01")}) == 3
    assert 0 <= row_seed(1, "x") < 2**63
