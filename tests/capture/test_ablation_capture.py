"""Ablation capture end to end on frozen copies of demo-ablation: the tables and manifest, the two
preregistered exclusions, resume after an interruption, refusals, and the l31h14 study's clean stop."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from jsonschema import Draft202012Validator

from capture import runtime
from capture.designs import ablation, ablation_sae
from capture.run import run_capture
from capture.store import RunStore
from lockstep.errors import CaptureError, UsageError
from lockstep.fsio import sha256_file
from lockstep.gate import require_frozen
from lockstep.freeze import freeze
from lockstep.models import folder_identity
from lockstep.records import schema
from studyrepo import commit_all, copy_study, git, make_writable

EXTRA_PAIRS = [  # appended to demo-ablation's prompts in `edited`
    {"id": "head-x1", "class": "headline", "split": "heldout", "clean": "the capital of ostvald is",
     "corrupted": "the capital of mirethi is", "answer": " norv", "wrong_answer": " norv fitch",
     "note": "shares its first answer token with the wrong answer: X1"},
    {"id": "head-x2", "class": "headline", "split": "heldout", "clean": "the capital of quenzar is",
     "corrupted": "the capital of dravia is", "answer": " drun", "wrong_answer": " pesk",
     "note": "answer and wrong answer swapped, so the clean margin is negative: X2"},
]


def _frozen(root: Path, name: str = "demo-ablation", edit_spec=None, extra_prompts=()) -> Path:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    study = copy_study(name, root)
    if edit_spec is not None:
        path = study / "study.yaml"
        spec = yaml.safe_load(path.read_text())
        edit_spec(spec)
        make_writable(path)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    if extra_prompts:
        path = study / "prompts.jsonl"
        make_writable(path)
        path.write_text(path.read_text() + "".join(json.dumps(p) + "\n" for p in extra_prompts))
        # the plan's counts must stay the prompt file's (lockstep validate refuses them otherwise)
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        plan_path = study / "study.yaml"
        spec = yaml.safe_load(plan_path.read_text())
        for key, field_name in (("classes", "class"), ("splits", "split")):
            spec["sampling_plan"][key] = dict(Counter(r[field_name] for r in records))
        make_writable(plan_path)
        plan_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    commit_all(root, "add study")
    freeze(study)
    commit_all(root, "freeze")
    return study


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """demo-ablation plus an X1 and an X2 pair, frozen and captured (library call)."""
    base = tmp_path_factory.mktemp("abl-capture")
    study = _frozen(base / "repo", extra_prompts=EXTRA_PAIRS)
    frozen = require_frozen(study)
    [run_dir] = run_capture(frozen, runs_root=base / "runs", progress=False)
    return frozen, run_dir


def _read(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(run_dir / name)


def test_tables_manifest_and_exclusions(edited):
    frozen, run_dir = edited
    manifest = json.loads((run_dir / "manifest.json").read_text())
    pairs = _read(run_dir, "pairs.parquet").set_index("pair_id")
    assert len(pairs) == 38 and set(pairs["class"]) == {"headline", "control"}
    assert pairs.loc["head-x1", "excluded_by"] == "X1" and np.isnan(pairs.loc["head-x1", "baseline_clean_margin"])
    assert pairs.loc["head-x1", "answer_token_id"] == pairs.loc["head-x1", "wrong_token_id"]
    assert pairs.loc["head-x1", "wrong_n_tokens"] == 2
    assert pairs.loc["head-x2", "excluded_by"] == "X2" and pairs.loc["head-x2", "baseline_clean_margin"] <= 0
    kept = pairs[~pairs["excluded"]]
    assert (kept["baseline_clean_margin"] > 0).all() and len(kept) == 36
    assert manifest["exclusions"][0] == {"id": "X1", "rule": "shared_first_token", "action": "exclude",
                                         "pairs": ["head-x1"], "by_class": {"headline": 1}}
    assert manifest["exclusions"][1]["pairs"] == ["head-x2"]
    assert manifest["warnings"] == ["exclusion X1 (shared_first_token) excluded 1 pair(s) (headline 1): head-x1",
                                    "exclusion X2 (nonpositive_clean_margin) excluded 1 pair(s) (headline 1): head-x2"]
    assert manifest["synthetic"] is True and manifest["design"] == "ablation"
    validator = Draft202012Validator(schema("run-manifest"))  # the published schema, plus the ablation fields
    assert [e.message for e in validator.iter_errors(manifest)] == []
    assert manifest["prompts"]["head-x2"] == {"finish_reason": None, "class": "headline", "excluded_by": "X2"}
    assert manifest["counts"]["batches"] == 5 and manifest["counts"]["prompts"] == 38
    assert manifest["targets"]["L2H1"]["module"] == "model.layers.2.linear_attn.out_proj"
    assert len(manifest["slot_table"]) == manifest["counts"]["slots"] == 16

    abl = _read(run_dir, "ablations.parquet")
    assert set(abl["target"]) == {"L3H2", "L1H1", "L2H1", "L1H1+L2H1+L3H2"}
    assert set(abl.loc[abl["target"] == "L1H1+L2H1+L3H2", "mode"]) == {"combined"}
    assert set(abl["pair_id"]) == set(kept.index)
    np.testing.assert_allclose(abl["clean_drop"], abl["baseline_clean_margin"] - abl["ablated_clean_margin"])
    np.testing.assert_allclose(abl["corrupted_drop"], abl["baseline_corrupted_margin"] - abl["ablated_corrupted_margin"])

    base = _read(run_dir, "baseline.parquet")
    assert len(base) == 36 * 16 and set(base["pair_id"]) == set(kept.index)
    # the stacked all-slot baseline and the targeted path agree on L3H2 alone
    stacked = base[base["slot"] == "L3H2"].set_index("pair_id")["ablated_margin"].sort_index()
    targeted = abl[abl["target"] == "L3H2"].set_index("pair_id")["ablated_clean_margin"].sort_index()
    np.testing.assert_allclose(stacked, targeted, atol=1e-5)
    headline = base[base["pair_id"].str.startswith("head")].groupby("slot")["drop"].mean()
    assert headline.idxmax() == "L3H2" and headline["L3H2"] > 2.0


def test_reference_means_cover_every_non_pad_reference_token(edited):
    frozen, run_dir = edited
    manifest = json.loads((run_dir / "manifest.json").read_text())
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(manifest["model"]["path"])
    expected = sum(len(tok(p["text"], add_special_tokens=False).input_ids) for p in frozen.prompts_in(split="reference"))
    means = _read(run_dir, "reference_means.parquet")
    assert len(means) == 16 and set(means["n_tokens"]) == {expected} == {manifest["reference"]["tokens"]}
    assert all(len(m) == 16 for m in means["mean"])


def test_an_interrupted_capture_resumes_to_the_same_tables(edited, tmp_path):
    frozen, run_dir = edited
    runs_root = tmp_path / "runs"
    source = runtime.resolve_model(frozen, runs_root)
    st = ablation.setup(frozen, source, folder_identity(source.path), {"batch_size": 8}, None, {})
    store = RunStore(runs_root / frozen.study_id / "forward")
    run = frozen.spec["runtime"]["runs"][0]
    stack = ablation.DEFAULT_STACK_ROWS // 8
    store.bind(ablation._run_config(frozen, run, st, []))
    fwd = ablation.MarginForward(st.ld.model, st.ld.pad_id)
    pairs, reference = ablation._encode(frozen, st)
    prep = ablation._prepare(frozen, st, fwd, pairs, reference, 8, stack, lambda _: None)
    ablation._save_prep(store, prep)
    # the first batch of the all-slot baseline is done, the process dies before the second
    first = ablation._baseline_batches(prep, 8)[0]
    abl = ablation.SlotAblation(st.ld.model, st.slots, ablation._means_of(prep.means))
    store.write_batch(0, {"baseline": ablation.baseline_batch(st, fwd, abl, first, stack)}, {}, {"pairs": len(first)})
    assert store.done_batches() == {0} and not store.is_complete()
    with pytest.raises(CaptureError, match="different configuration"):
        RunStore(store.root).bind(ablation._run_config(frozen, run, dataclasses.replace(st, batch_size=4), []))
    [resumed] = run_capture(frozen, runs_root=runs_root, progress=False)
    assert resumed == store.root and not (resumed / "_work").exists()
    cost = json.loads((resumed / "manifest.json").read_text())["cost"]
    # the resume reused the saved exclusions and margins and the finished shard: 4 batches left, one forward each
    assert cost["all_slot_baseline_forwards"] == 4
    assert cost["forwards_this_process"] == 4 + cost["source_trace_forwards"]  # demo-ablation's B5 traces after the baseline
    for name in ("pairs.parquet", "ablations.parquet", "baseline.parquet", "reference_means.parquet"):
        assert sha256_file(resumed / name) == sha256_file(run_dir / name), name


def test_an_sae_knockdown_killed_midway_resumes_to_the_same_table(edited, tmp_path, monkeypatch):
    # the process dies in the SAE knockdown, after the splice pass and the first knockdown forward are
    # on disk (a crash injected at the second forward); the rerun reads both back and runs the rest
    frozen, run_dir = edited
    reference = json.loads((run_dir / "manifest.json").read_text())["sae_knockdown"]
    real, calls = ablation_sae._knock_chunk, []

    class Killed(BaseException):
        pass

    def dies_at_the_second_forward(*args):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return real(*args)

    monkeypatch.setattr(ablation_sae, "_knock_chunk", dies_at_the_second_forward)
    runs_root = tmp_path / "runs"
    with pytest.raises(Killed):
        run_capture(frozen, runs_root=runs_root, progress=False)
    work = runs_root / frozen.study_id / "forward" / "_work" / "sae_knockdown"
    [first] = sorted(reference)[:1]
    assert sorted(p.name for p in (work / first).iterdir()) == ["active.json", "k00000.parquet", "splice.parquet"]
    monkeypatch.setattr(ablation_sae, "_knock_chunk", real)
    [resumed] = run_capture(frozen, runs_root=runs_root, progress=False)
    assert not (resumed / "_work").exists()
    assert sha256_file(resumed / "sae_knockdown.parquet") == sha256_file(run_dir / "sae_knockdown.parquet")
    again = json.loads((resumed / "manifest.json").read_text())["sae_knockdown"]
    # the splice pass and the finished forward were not run again
    n_splice = -(-reference[first]["pairs"] // 8)  # one forward per batch of 8 analysed pairs
    assert again[first]["forwards"] == reference[first]["forwards"] - n_splice - 1
    assert {k: v["features_tested"] for k, v in again.items()} == {k: v["features_tested"] for k, v in reference.items()}


def test_refusals(edited, tmp_path):
    frozen, _ = edited
    with pytest.raises(UsageError, match="`--shard` does not apply to design 'ablation'"):
        run_capture(frozen, runs_root=tmp_path, shard=(0, 2), progress=False)
    with pytest.raises(UsageError, match=r"unknown run\(s\) \['greedy'\]"):
        run_capture(frozen, run_ids=["greedy"], runs_root=tmp_path, progress=False)

    def add_target(spec):
        spec["units"]["targets"].append({"id": "L3H7", "layer": 3, "head": 7})

    study = _frozen(tmp_path / "bad-target", edit_spec=add_target)
    with pytest.raises(CaptureError, match=r"target\(s\) \['L3H7'\] are not head slots"):
        run_capture(require_frozen(study), runs_root=tmp_path / "runs", progress=False)

    def generate(spec):
        spec["runtime"]["runs"][0]["decoding"] = "greedy"

    study = _frozen(tmp_path / "decoding", edit_spec=generate)
    with pytest.raises(CaptureError, match="an ablation run is forward passes only"):
        run_capture(require_frozen(study), runs_root=tmp_path / "runs", progress=False)


def test_the_l31h14_study_validates_and_stops_at_weights_not_found(tmp_path):
    study = _frozen(tmp_path / "repo", name="l31h14-ablation")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "lockstep", "capture", str(study), "--no-progress"],
                            cwd=tmp_path / "repo", capture_output=True, text=True, env=env)
    assert result.returncode == 3, result.stderr
    assert "capture not run: weights not found" in result.stderr and "Qwen/Qwen3.5-4B" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "repo" / "runs" / "l31h14-ablation" / "forward" / "manifest.json").exists()


def test_zero_ablation_needs_no_reference_and_matches_the_hook(edited, tmp_path):
    def zero(spec):
        spec["ablation"]["kind"] = "zero"
        del spec["ablation"]["reference_split"]
        spec["analyses"] = [a for a in spec["analyses"] if a["kind"] != "all_unit_baseline"]
        spec["hypotheses"] = [h for h in spec["hypotheses"] if h["analysis"] != "B3"]
        for h in spec["hypotheses"]:  # the claims name the arm they read (validation refuses the other's words)
            for a, b in (("Mean-ablating", "Zero-ablating"), ("mean-ablat", "zero-ablat"), ("mean ablation", "zero ablation")):
                h["claim"] = h["claim"].replace(a, b)

    study = _frozen(tmp_path / "repo", edit_spec=zero)
    [run_dir] = run_capture(require_frozen(study), runs_root=tmp_path / "runs", progress=False)
    assert not (run_dir / "reference_means.parquet").exists() and not (run_dir / "baseline.parquet").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["ablation"]["kind"] == "zero" and manifest["reference"]["tokens"] == 0
    zeroed = _read(run_dir, "ablations.parquet").set_index(["target", "pair_id"])["ablated_clean_margin"]
    meaned = _read(edited[1], "ablations.parquet").set_index(["target", "pair_id"])["ablated_clean_margin"]
    common = zeroed.index.intersection(meaned.index)
    assert len(common) == 4 * 36
    assert not np.allclose(zeroed[common], meaned[common], atol=1e-3)  # a different replacement value, a different margin
