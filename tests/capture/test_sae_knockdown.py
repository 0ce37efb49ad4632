"""SAE knockdown as capture runs it (capture/designs/ablation_sae.py) on the builtin hybrid Qwen3.5: a never-active
feature is a no-op, a knockdown is ``x - z_f W_dec[f] / s`` by hand (with each input normalisation), the three
checkpoint layouts give the same knockdown, hostile checkpoints get one message naming the file and the field,
and the committed demo SAE is the one capture/builtin_sae.py builds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from capture import builtin_heads, builtin_sae
from capture.designs.ablation import MarginForward
from capture.designs.ablation_sae import _splice_pass, knockdown_rows, load_study_sae
from capture.sae import FeatureKnockdown, TopKSAE, knockdown_margins, load_sae
from capture_helpers import HEADS_TEXTS, heads_model, random_sae
from lockstep.errors import CaptureError

REPO = Path(__file__).resolve().parents[2]
TEXTS = HEADS_TEXTS
D, F, K = 64, 96, 8


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory):
    return heads_model(tmp_path_factory.mktemp("models"))


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    return random_sae(D, F, seed)


def _rows(tok):
    rows = [tok(x, add_special_tokens=False).input_ids for x in TEXTS]
    a = tok(" marn", add_special_tokens=False).input_ids * len(rows)
    b = tok(" tolv", add_special_tokens=False).input_ids * len(rows)
    return rows, a, b


def _pairs(rows, a, b, base):
    return [{"pair_id": f"p{i}", "class": "headline", "split": "heldout", "clean_token_ids": r, "answer_token_id": x,
             "wrong_token_id": y, "baseline_clean_margin": float(m)} for i, (r, x, y, m) in enumerate(zip(rows, a, b, base))]


def test_a_feature_never_active_is_a_no_op(model_tok):
    model, tok = model_tok
    t = _tensors()
    t["b_enc"][5] = -1e6                                           # feature 5 can never be active
    sae = TopKSAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], K)
    rows, a, b = _rows(tok)
    fwd = MarginForward(model, tok.pad_token_id)
    base = fwd.margins(rows, a, b)
    knock = FeatureKnockdown(model, sae, "3.mid")
    margins, active = knockdown_margins(fwd, knock, rows, a, b, [5], stack=1)
    np.testing.assert_array_equal(margins[0], base)                # same forward, an exact zero added
    assert not active.any()
    pairs = _pairs(rows, a, b, base)
    _, seen = _splice_pass(fwd, sae, "3.mid", pairs, 4, "s", model)
    assert all(5 not in on for on in seen.values())
    assert knockdown_rows(fwd, knock, pairs, seen, [5], 16, "s") == []   # capture spends no forward on it
    # a feature that is active somewhere does move its margins, so the no-op above is not vacuous
    busy = max(range(F), key=lambda f: sum(f in on for on in seen.values()))
    moved = knockdown_rows(fwd, knock, pairs, seen, [busy], 16, "s")
    assert moved and max(abs(r["drop"]) for r in moved) > 1e-5


@pytest.mark.parametrize("scaling, scale", [("none", 1.0), ("scalar", 3.0), ("token_norm", 1.0)])
def test_knockdown_subtracts_z_times_the_decoder_row_by_hand(model_tok, scaling, scale):
    model, tok = model_tok
    t = _tensors(1)
    sae = TopKSAE(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], K, scaling, scale)
    rows, a, b = _rows(tok)
    fwd = MarginForward(model, tok.pad_token_id)
    probe = model.model.layers[2].post_attention_layernorm           # reads the stream at 2.mid
    plain, knocked = [], []
    handle = probe.register_forward_pre_hook(lambda m, args: plain.append(args[0].detach().clone()))
    try:
        fwd.margins(rows, a, b)
    finally:
        handle.remove()
    x = plain[0][:, -1].double().numpy()
    s = {"none": np.ones((len(x), 1)), "scalar": np.full((len(x), 1), scale),
         "token_norm": np.sqrt(D) / np.linalg.norm(x, axis=1, keepdims=True)}[scaling]
    pre = (x * s - t["b_dec"].double().numpy()) @ t["W_enc"].double().numpy() + t["b_enc"].double().numpy()
    z = np.zeros_like(pre)
    for i, row in enumerate(pre):                                   # numpy TopK then ReLU
        top = np.argsort(-row, kind="stable")[:K]
        z[i, top] = np.maximum(row[top], 0)
    feature = int(np.argmax((z > 0).sum(axis=0)))
    knock = FeatureKnockdown(model, sae, "2.mid")
    handle = probe.register_forward_pre_hook(lambda m, args: knocked.append(args[0].detach().clone()))
    try:
        with knock.knocking([feature] * len(rows)):
            fwd.margins(rows, a, b)
    finally:
        handle.remove()
    expected = -(z[:, feature:feature + 1] / s) * t["W_dec"][feature].double().numpy()[None, :]
    np.testing.assert_allclose(knocked[0][:, -1].double().numpy() - x, expected, atol=2e-5)
    np.testing.assert_allclose(knock.activations, z[:, feature], atol=2e-5)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _three_layouts(root: Path, t: dict[str, torch.Tensor]) -> list[dict]:
    """The same SAE as an SAELens folder, a safetensors state dict and a .pt state dict, with study entries."""
    lens = root / "lens"
    lens.mkdir()
    (lens / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": F, "activation_fn_kwargs": {"k": K},
                                               "normalize_activations": "none", "hook_name": "blocks.3.hook_resid_mid"}))
    save_file(t, str(lens / "sae_weights.safetensors"))
    linear = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
              "decoder.weight": t["W_dec"].T.contiguous(), "decoder.bias": t["b_dec"]}
    save_file(linear, str(root / "sae.safetensors"), metadata={"k": str(K)})
    torch.save(dict(t), root / "sae.pt")
    common = {"hook_point": "3.mid", "width": F, "k": K, "normalization": {"kind": "none"}}
    return [{"id": "lens", "path": "lens", "format": "saelens", **common,
             "sha256": {"cfg.json": _sha(lens / "cfg.json"), "sae_weights.safetensors": _sha(lens / "sae_weights.safetensors")}},
            {"id": "sd", "path": "sae.safetensors", "format": "state_dict", "sha256": _sha(root / "sae.safetensors"), **common},
            {"id": "pt", "path": "sae.pt", "format": "pt", "sha256": _sha(root / "sae.pt"), **common}]


def test_the_three_layouts_give_the_same_knockdown(model_tok, tmp_path):
    model, tok = model_tok
    t = _tensors(2)
    entries = _three_layouts(tmp_path, t)
    rows, a, b = _rows(tok)
    fwd = MarginForward(model, tok.pad_token_id)
    results = []
    for j, entry in enumerate(entries):
        sae = load_study_sae(tmp_path, entry, j)
        torch.testing.assert_close(sae.w_enc, t["W_enc"], rtol=0, atol=0)
        torch.testing.assert_close(sae.w_dec, t["W_dec"], rtol=0, atol=0)
        results.append(knockdown_margins(fwd, FeatureKnockdown(model, sae, "3.mid"), rows, a, b, list(range(0, F, 7)), stack=4))
    for margins, active in results[1:]:
        np.testing.assert_allclose(margins, results[0][0], atol=1e-6)
        np.testing.assert_allclose(active, results[0][1], atol=1e-6)
    assert (results[0][1] > 0).any()


class _Payload:
    """Not a tensor: a pickle of it is what torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (print, ("this would run at load time",))


def test_hostile_checkpoints_get_one_message_naming_file_and_field(tmp_path):
    t = _tensors(3)
    entries = _three_layouts(tmp_path, t)

    def refused(make, fmt: str, match: str, **kw):
        path = make()
        with pytest.raises(CaptureError, match=match) as info:
            load_sae(path, fmt, k=K, **kw)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)

    def sd(name: str, tensors: dict, **meta):
        save_file(tensors, str(tmp_path / name), metadata=meta or None)
        return tmp_path / name

    refused(lambda: sd("shape.safetensors", {**t, "W_dec": t["W_dec"][:, :10].contiguous()}), "state_dict",
            r"w_dec has shape \(96, 10\), but w_enc \(64, 96\) asks for \(96, 64\)")
    nan = t["b_enc"].clone()
    nan[3] = float("nan")
    refused(lambda: sd("nan.safetensors", {**t, "b_enc": nan}), "state_dict", r"b_enc holds 1 NaN or infinite value")
    refused(lambda: sd("missing.safetensors", {k: v for k, v in t.items() if k != "b_dec"}), "state_dict",
            r"has no b_dec \(looked for b_dec, decoder.bias, b_pre")
    refused(lambda: sd("k.safetensors", dict(t), k="9"), "state_dict", r"k is 9, but the study says 8")

    def pickle_file():
        torch.save({"W_enc": t["W_enc"], "payload": _Payload()}, tmp_path / "evil.pt")
        return tmp_path / "evil.pt"
    refused(pickle_file, "pt", r"not a plain state dict that torch.load\(weights_only=True\) accepts")

    def junk():
        (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
        return tmp_path / "junk.safetensors"
    refused(junk, "state_dict", "is not a readable safetensors file")

    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    (tmp_path / "lens" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "constant_norm_rescale"}))
    with pytest.raises(CaptureError, match=r"cfg.json: normalize_activations means 'token_norm'.*study says 'none'"):
        load_sae(tmp_path / "lens", "saelens", k=K)
    with pytest.raises(CaptureError, match=r"lens/cfg.json: sha256 [0-9a-f]{64} differs from [0-9a-f]{64}, which "
                                           r"study.yaml /ablation/saes/0/sha256/cfg.json pins"):
        load_study_sae(tmp_path, entries[0], 0)
    with pytest.raises(CaptureError, match="the SAE has 96 features, but the study says width 100"):
        load_study_sae(tmp_path, {**entries[1], "width": 100}, 1)


def test_the_committed_demo_sae_is_the_one_the_builder_makes(tmp_path):
    study = REPO / "preregistrations" / "demo-ablation"
    model, tok = builtin_sae.demo_model(study, tmp_path)
    expected = builtin_sae.demo_sae_tensors(model.lm_head.weight, tok.get_vocab())
    committed = load_file(str(study / "sae" / "sae_weights.safetensors"))
    for name, tensor in expected.items():
        torch.testing.assert_close(committed[name], tensor, atol=1e-5, rtol=0)
    assert json.loads((study / "sae" / "cfg.json").read_text()) == builtin_sae.saelens_config()
    w = expected["W_dec"].double()
    gram = w @ w.T                                        # the two signs of an orthonormal basis
    torch.testing.assert_close(gram.abs().sum(dim=1), torch.full((builtin_sae.WIDTH,), 2.0, dtype=torch.float64), atol=1e-5, rtol=0)
    head = model.lm_head.weight.detach().double()
    vocab = tok.get_vocab()
    answers = [w2 for pair in builtin_heads.FACTS + builtin_heads.CUES for w2 in pair[1:]]
    null = w[builtin_sae.NULL]
    assert max(abs(float(head[vocab[x]] @ null)) for x in answers) < 1e-5      # no answer row reads the null feature
    planted = w[builtin_sae.PLANTED]
    group = [float(head[vocab[c]] @ planted) for c in builtin_sae.GROUP]
    assert min(group) > 0                                                    # the planted one raises the even cities


def test_validation_refuses_an_unknown_sae_and_a_feature_outside_its_width(tmp_path):
    import shutil

    import yaml

    from lockstep.errors import SchemaError
    from lockstep.study import load_study

    study = tmp_path / "demo-ablation"
    shutil.copytree(REPO / "preregistrations" / "demo-ablation", study,
                    ignore=shutil.ignore_patterns("prereg.lock.json", "SHA256SUMS", "JOURNAL*", "amendments"))
    load_study(study)                                                   # as shipped: valid
    spec = yaml.safe_load((study / "study.yaml").read_text())
    s1 = next(i for i, a in enumerate(spec["analyses"]) if a["id"] == "S1")
    spec["analyses"][s1]["features"] = [37, 128]
    s2 = next(i for i, a in enumerate(spec["analyses"]) if a["id"] == "S2")
    spec["analyses"][s2]["sae"] = "other-sae"
    spec["analyses"][0]["feature"] = 3                                  # B1 is an ablation_drop
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SchemaError) as info:
        load_study(study)
    text = str(info.value) + " " + " ".join(str(p) for p in getattr(info.value, "problems", []))
    assert f"/analyses/{s1}/features/1" in text and "feature 128 is outside SAE 'demo-sae''s 128 features" in text
    assert f"/analyses/{s2}/sae" in text and "names SAE 'other-sae'; /ablation/saes declares demo-sae" in text
    assert "/analyses/0/feature" in text and "applies to sae_knockdown analyses only, not to ablation_drop" in text
