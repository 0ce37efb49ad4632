"""TopK-SAE feature knockdown on the builtin hybrid Qwen3.5: the checkpoint loader and encoder against a
numpy TopK, and the residual-stream edit at each hook point read back by independent hooks downstream
(x' = x - z_f W_dec[f] at the last token, the reconstruction error kept, nothing else moved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from capture.designs.ablation import MarginForward
from capture.sae import FeatureKnockdown, TopKSAE, feature_table, knockdown_margins, load_topk_sae
from capture_helpers import HEADS_TEXTS, heads_model, random_sae
from lockstep.errors import CaptureError

TEXTS = HEADS_TEXTS
D, F, K = 64, 128, 8


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory):
    return heads_model(tmp_path_factory.mktemp("models"))


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_sae(D, F, seed)


def _numpy_topk(x: np.ndarray, t: dict[str, torch.Tensor], k: int) -> np.ndarray:
    pre = (x - t["b_dec"].numpy()) @ t["W_enc"].numpy() + t["b_enc"].numpy()
    z = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row, kind="stable")[:k]
        z[i, top] = np.maximum(row[top], 0)
    return z


def test_loader_and_encoder_match_a_numpy_topk(tmp_path):
    t = _tensors()
    save_file(t, str(tmp_path / "sae.safetensors"), metadata={"k": str(K)})
    linear = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
              "decoder.weight": t["W_dec"].T.contiguous(), "decoder.bias": t["b_dec"]}
    save_file(linear, str(tmp_path / "linear.safetensors"))
    sae = load_topk_sae(tmp_path / "sae.safetensors")
    other = load_topk_sae(tmp_path / "linear.safetensors", k=K)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(3))
    expected = _numpy_topk(x.numpy(), t, K)
    np.testing.assert_allclose(sae.encode(x).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(other.encode(x).numpy(), expected, atol=1e-6)
    assert (sae.encode(x) > 0).sum(dim=1).max() <= K
    with pytest.raises(CaptureError, match="does not record k"):
        load_topk_sae(tmp_path / "linear.safetensors")
    save_file({"W_enc": t["W_enc"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CaptureError, match="has no w_dec"):
        load_topk_sae(tmp_path / "bad.safetensors", k=K)


def _record(module, store: list):
    return module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach().clone()))


@pytest.mark.parametrize("point, probe", [
    ("1.in", lambda m: m.model.layers[1].input_layernorm),
    ("2.mid", lambda m: m.model.layers[2].post_attention_layernorm),   # linear-attention layer
    ("3.mid", lambda m: m.model.layers[3].post_attention_layernorm),   # full-attention layer
    ("1.out", lambda m: m.model.layers[2]),
])
def test_knockdown_removes_exactly_the_feature_contribution(model_tok, point, probe):
    model, tok = model_tok
    t = _tensors()
    sae = TopKSAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], K)
    rows = [tok(x, add_special_tokens=False).input_ids for x in TEXTS]
    fwd = MarginForward(model, tok.pad_token_id)
    plain, knocked = [], []
    handle = _record(probe(model), plain)
    try:
        fwd.margins(rows, [5] * len(rows), [6] * len(rows))
    finally:
        handle.remove()
    x = plain[0]
    z = _numpy_topk(x[:, -1].numpy(), t, K)
    feature = int(np.argmax((z > 0).sum(axis=0)))        # the feature active in most rows
    assert (z[:, feature] > 0).sum() >= 2
    knock = FeatureKnockdown(model, sae, point)
    handle = _record(probe(model), knocked)
    try:
        with knock.knocking([feature] * len(rows)):
            fwd.margins(rows, [5] * len(rows), [6] * len(rows))
    finally:
        handle.remove()
    y = knocked[0]
    expected = -z[:, feature][:, None] * t["W_dec"][feature].numpy()[None, :]
    np.testing.assert_allclose((y[:, -1] - x[:, -1]).numpy(), expected, atol=1e-5)
    torch.testing.assert_close(y[:, :-1], x[:, :-1], atol=1e-6, rtol=0)   # earlier tokens, at this point, untouched
    np.testing.assert_allclose(knock.activations, z[:, feature], atol=1e-5)


def test_inactive_features_change_nothing_and_stacking_agrees(model_tok):
    model, tok = model_tok
    t = _tensors()
    t["b_enc"][7] = -1e6                                  # feature 7 can never be active
    sae = TopKSAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], K)
    rows = [tok(x, add_special_tokens=False).input_ids for x in TEXTS]
    a = tok(" marn", add_special_tokens=False).input_ids * len(rows)
    b = tok(" tolv", add_special_tokens=False).input_ids * len(rows)
    fwd = MarginForward(model, tok.pad_token_id)
    base = fwd.margins(rows, a, b)
    knock = FeatureKnockdown(model, sae, "2.mid")
    features = [7, 0, 3, 11, 42]
    stacked, active = knockdown_margins(fwd, knock, rows, a, b, features, stack=5)
    single, active1 = knockdown_margins(fwd, knock, rows, a, b, features, stack=1)
    np.testing.assert_allclose(stacked, single, atol=2e-5)
    np.testing.assert_allclose(active, active1, atol=1e-5)
    np.testing.assert_array_equal(stacked[0], base)
    assert (active[0] == 0).all()
    assert np.abs(stacked[1:] - base).max() > 1e-4        # some feature does move some margin
    table = feature_table(base, stacked, active, features)
    assert table[0] == {"feature": 7, "active_pairs": 0, "mean_drop_active": table[0]["mean_drop_active"],
                        "mean_activation_active": table[0]["mean_activation_active"]}
    assert np.isnan(table[0]["mean_drop_active"])
    on = active[1] > 0
    assert table[1]["active_pairs"] == int(on.sum())
    if on.any():
        assert table[1]["mean_drop_active"] == pytest.approx(float((base[on] - stacked[1, on]).mean()))


def test_refusals(model_tok):
    model, _ = model_tok
    t = _tensors()
    sae = TopKSAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], K)
    with pytest.raises(CaptureError, match="is not '<layer>.in'"):
        FeatureKnockdown(model, sae, "14.middle")
    with pytest.raises(CaptureError, match="the model has 4 layers"):
        FeatureKnockdown(model, sae, "14.mid")
    small = TopKSAE(t["W_enc"][:32], t["b_enc"], t["W_dec"][:, :32], t["b_dec"][:32], K)
    with pytest.raises(CaptureError, match="reads 32 channels"):
        FeatureKnockdown(model, small, "1.mid")
