"""End-to-end capture of the demo study, checked against references that share no code with capture.

References: the model's own router modules called directly on the MoE block input (routing), numpy
sums over the per-token rows (W/S/Q), ``model.generate`` (greedy decoding), a one-prompt-at-a-time
capture (padding invariance), a null twin without the plant (positive control).
"""

from __future__ import annotations

import json

import numpy as np
import yaml
import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from capture import families, runtime
from capture.run import run_capture
from capture_helpers import frozen_repo
from studyrepo import STUDIES

# the planted words, as the shipped demo study names them
PLANT = set(yaml.safe_load((STUDIES / "demo" / "study.yaml").read_text())["model"]["builtin"]["plant"]["tokens"])


def _load(run_dir):
    texts = pd.read_parquet(run_dir / "texts.parquet")
    units = pd.read_parquet(run_dir / "units.parquet")
    tokens = pd.read_parquet(run_dir / "topk" / "tokens.parquet")
    idx = np.load(run_dir / "topk" / "idx.npy")
    weight = np.load(run_dir / "topk" / "weight.npy")
    return texts, units, tokens, idx, weight


def _model(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    path = manifest["model"]["path"]
    return manifest, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _reference_routing(model, ids: list[int]):
    """Router modules called directly on the block input of one unpadded forward over ``ids``."""
    sites, _ = families.find_moe_sites(model)
    inputs, handles = {}, []
    for s in sites:
        handles.append(s.block.register_forward_pre_hook(
            lambda mod, args, layer=s.layer: inputs.__setitem__(layer, args[0].reshape(-1, args[0].shape[-1]))))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
            out = {}
            for s in sites:
                _, w, i = s.router(inputs[s.layer])
                out[s.layer] = (i.numpy(), w.float().numpy())
    finally:
        for h in handles:
            h.remove()
    return out


def test_layout_and_manifest(demo_capture):
    frozen, paths = demo_capture
    assert sorted(paths) == ["greedy", "sampled"]
    for run_id, run_dir in paths.items():
        files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
        assert files == ["events.parquet", "manifest.json", "texts.parquet", "topk/idx.npy",
                         "topk/tokens.parquet", "topk/vocab.parquet", "topk/weight.npy", "units.parquet"]
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["study_id"] == "demo" and m["run_id"] == run_id
        assert m["lock_digest"] == frozen.lock_digest
        assert m["model"]["revision"] == "builtin-v2" and m["model"]["dtype"] == "float32"
        assert m["model"]["config_sha256"] == runtime.config_sha256(m["model"]["path"] and
                                                                   __import__("pathlib").Path(m["model"]["path"]))
        assert [x["layer"] for x in m["moe_layers"]] == [0, 1, 2, 3]
        assert sorted(m["prompts"]) == sorted(p["id"] for p in frozen.prompts)
        assert m["counts"]["disagreements"] == 0  # float32: used routing == reconstruction
        assert m["deviations"] == [] and m["synthetic"] is True
        assert {"torch", "transformers"} <= set(m["versions"]) and "commit" in m["git"]


def test_storage_is_compact(demo_capture):
    _, paths = demo_capture
    _, _, tokens, idx, weight = _load(paths["sampled"])
    n_layers, k = 4, 2
    assert idx.dtype == np.int16 and weight.dtype == np.float16
    assert idx.shape == weight.shape == (len(tokens), n_layers, k)
    assert (idx.nbytes + weight.nbytes) / len(tokens) <= 4 * n_layers * k


def test_texts_zone_counts(demo_capture):
    _, paths = demo_capture
    texts, units, tokens, _, _ = _load(paths["sampled"])
    assert list(texts.prompt_id) == sorted(texts.prompt_id)
    for row in texts.itertuples():
        gen = list(row.token_ids)
        assert row.n_prefill == len(row.prompt_token_ids)
        assert row.n_generated == len(gen) - 1  # the last token is never read
        assert row.n_trimmed + row.n_spill == row.n_generated
        mine = tokens[tokens.prompt_id == row.prompt_id]
        assert (mine.zone == "prefill").sum() == row.n_prefill
        assert (mine.zone == "trimmed").sum() == row.n_trimmed
        assert (mine.zone == "spill").sum() == row.n_spill
        read = list(mine.token_id[mine.zone != "prefill"])
        assert read == gen[: row.n_generated]
        if row.n_spill:
            assert row.trim_position == row.n_trimmed
    # texts say which special tokens spilled; every one appears in a generated text
    spilled = [s for row in texts.spill_tokens for s in row]
    assert spilled, "the demo's sampled run is expected to spill at least once"
    assert {s["token"] for s in spilled} <= {"<|im_end|>", "<|endoftext|>", "<|im_start|>"}


def test_routing_matches_router_modules(demo_capture):
    """Stored top-k rows == the router modules run directly, token by token, every layer."""
    _, paths = demo_capture
    for run_dir in paths.values():
        texts, _, tokens, idx, weight = _load(run_dir)
        _, model = _model(run_dir)
        events = pd.read_parquet(run_dir / "events.parquet")
        for row in texts.itertuples():
            seq = list(row.prompt_token_ids) + list(row.token_ids)[: row.n_generated]
            ref = _reference_routing(model, seq)
            sel = np.flatnonzero(tokens.prompt_id.to_numpy() == row.prompt_id)
            assert list(tokens.position.to_numpy()[sel]) == list(range(len(seq)))
            ties = set(zip(events.position[events.prompt_id == row.prompt_id],
                           events.layer[events.prompt_id == row.prompt_id]))
            for layer, (ref_i, ref_w) in ref.items():
                got_i = np.sort(idx[sel, layer].astype(np.int64), axis=1)
                order = np.argsort(ref_i, axis=1)
                want_i = np.take_along_axis(ref_i, order, axis=1)
                same = (got_i == want_i).all(axis=1)
                flagged = np.array([(p, layer) in ties for p in range(len(seq))])
                assert (same | flagged).all()
                got_w = np.take_along_axis(weight[sel, layer].astype(np.float32),
                                           np.argsort(idx[sel, layer], axis=1), axis=1)
                want_w = np.take_along_axis(ref_w, order, axis=1)
                np.testing.assert_allclose(got_w[same], want_w[same], atol=1e-3)  # float16 storage


def test_units_equal_token_sums_and_identities(demo_capture):
    """units.parquet == numpy sums over the per-token rows; W = S x Q where Q is defined."""
    _, paths = demo_capture
    texts, units, tokens, idx, weight = _load(paths["sampled"])
    zone_of = tokens.zone.to_numpy()
    for pid in ["fire-03", "nofire-03"]:
        for zone in ["prefill", "generated", "trimmed", "spill"]:
            m = (tokens.prompt_id.to_numpy() == pid) & (
                (zone_of != "prefill") if zone == "generated" else (zone_of == zone))
            for layer in range(4):
                for expert in range(8):
                    hit = (idx[m, layer] == expert)
                    u = units[(units.prompt_id == pid) & (units.layer == layer) & (units.expert == expert)
                              & (units.zone == zone)].iloc[0]
                    assert u.n_tokens == m.sum() and u.n_selected == hit.any(axis=1).sum()
                    np.testing.assert_allclose(u.weight_sum, weight[m, layer][hit].astype(np.float64).sum(), atol=5e-3)
    q_defined = units.n_selected > 0
    np.testing.assert_allclose(units.W[q_defined], (units.S * units.Q)[q_defined], rtol=1e-12)
    assert (units.W[(units.n_tokens > 0) & ~q_defined] == 0).all()
    assert units.Q[~q_defined].isna().all() and units.S[units.n_tokens == 0].isna().all()
    # the routed weights of one token in one layer sum to 1 (Qwen3.5 renormalises within the top-k)
    per_prompt = units.groupby(["prompt_id", "layer", "zone"]).agg(w=("weight_sum", "sum"), n=("n_tokens", "first"))
    np.testing.assert_allclose(per_prompt.w, per_prompt.n, rtol=1e-5)
    assert list(units.columns) == ["prompt_id", "layer", "expert", "zone", "n_tokens", "n_selected",
                                   "weight_sum", "S", "Q", "W"]


def test_greedy_equals_generate(demo_capture):
    _, paths = demo_capture
    texts, *_ = _load(paths["greedy"])
    manifest, model = _model(paths["greedy"])
    tok, _ = runtime.load_tokenizer(manifest["model"]["path"], [])
    batch = tok.pad({"input_ids": [[int(t) for t in x] for x in texts.prompt_token_ids[:8]]}, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=24, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    for row, gen in zip(texts.itertuples(), out[:, batch["input_ids"].shape[1]:].tolist()):
        gen = gen[: len(row.token_ids)]
        assert gen == list(row.token_ids)


def test_padding_invariance(demo_capture, tmp_path):
    """Batched left-padded == one prompt at a time (a deviation, recorded), except flagged near-ties."""
    frozen, paths = demo_capture
    single = run_capture(frozen, runs_root=tmp_path, progress=False, allow_deviation=True,
                         overrides={"batch_size": 1})
    for one in single:
        m = json.loads((one / "manifest.json").read_text())
        assert m["deviations"] == [{"field": "/runtime/batch_size", "preregistered": 4, "actual": 1}]
        t1, u1, k1, i1, w1 = _load(one)
        t4, u4, k4, i4, w4 = _load(paths[one.name])
        assert [list(x) for x in t1.token_ids] == [list(x) for x in t4.token_ids]
        pd.testing.assert_frame_equal(k1, k4)
        near = pd.read_parquet(paths[one.name] / "events.parquet")
        flagged = np.zeros(i1.shape[:2], dtype=bool)
        key = {(p, q): n for n, (p, q) in enumerate(zip(k4.prompt_id, k4.position))}
        for e in near.itertuples():
            flagged[key[(e.prompt_id, e.position)], e.layer] = True
        same = (np.sort(i1, axis=2) == np.sort(i4, axis=2)).all(axis=2)
        assert (same | flagged).all()
        np.testing.assert_allclose(w1[same].astype(np.float32), w4[same].astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(u1.W.fillna(-1), u4.W.fillna(-1), atol=1e-4)


def test_planted_expert_stands_out_null_twin_does_not(demo_capture, tmp_path):
    frozen, paths = demo_capture
    null_study = frozen_repo(tmp_path / "repo", name="demo-null",
                             edit=lambda s: (s["model"]["builtin"].update(plant=None), s.update(study_id="demo-null")))
    from lockstep.gate import require_frozen

    null = run_capture(require_frozen(null_study), runs_root=tmp_path / "runs", run_ids=["greedy"], progress=False)[0]

    def plant_contrast(run_dir):
        texts, units, tokens, idx, _ = _load(run_dir)
        manifest = json.loads((run_dir / "manifest.json").read_text())
        vocab = json.loads((__import__("pathlib").Path(manifest["model"]["path"]) / "lockstep-builtin.json")
                           .read_text())["spec"]["vocabulary"]
        is_plant = np.array([vocab[t] in PLANT for t in tokens.token_id])
        picked = (idx[:, 1] == 5).any(axis=1)
        pre = units[(units.layer == 1) & (units.zone == "prefill")]
        fire = pre[pre.prompt_id.str.startswith("fire")].groupby("expert").W.mean()
        nofire = pre[pre.prompt_id.str.startswith("nofire")].groupby("expert").W.mean()
        return picked[is_plant].mean(), picked[~is_plant].mean(), (fire - nofire)

    s_plant, s_other, diff = plant_contrast(paths["greedy"])
    assert s_plant == 1.0 and s_other < 0.5          # S of L1E5 on planted tokens vs the rest
    assert diff.idxmax() == 5 and diff[5] > 0.03     # FIRE prompts hold more planted words
    n_plant, n_other, n_diff = plant_contrast(null)
    assert n_plant < 0.6                              # no preference for the planted words
    assert n_diff[5] < diff[5] / 2
