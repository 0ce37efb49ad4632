"""The routing discovery scan (`lockstep discover` on a routing study), as a user runs it: on the demo study's
four discovery prompts the planted expert L1E5 must be the best unit of its layer by pooled W, and its
heaviest tokens must be the planted words; the scan reads no prompt outside the discovery split."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import yaml

from capture_helpers import frozen_repo

PLANTED = {"feel", "sense", "inside", "aware", "quiet", "still", "presence", "calm"}


def test_the_scan_finds_the_planted_expert_with_its_words(tmp_path):
    study = frozen_repo(tmp_path / "repo")
    repo = study.parent.parent
    said = subprocess.run([sys.executable, "-m", "lockstep", "discover", str(study), "--no-progress"], cwd=repo,
                          capture_output=True, text=True)
    assert said.returncode == 0, said.stderr
    entry = json.loads((study / "JOURNAL.jsonl").read_text().splitlines()[-1])
    folder = repo / entry["details"]["folder"]
    assert folder.name == "run-1"
    record = json.loads((folder / "discovery.json").read_text())
    candidates = pd.read_parquet(folder / "candidates.parquet")
    layer1 = candidates[candidates["layer"] == 1].sort_values("rank_in_layer")
    assert layer1.iloc[0]["unit"] == "L1E5"
    # pooled W is the weight sum over prefill and generated tokens divided by their count (recomputed here)
    units = pd.read_parquet(folder / "scan" / "units.parquet")
    mine = units[(units["layer"] == 1) & (units["expert"] == 5) & units["zone"].isin(["prefill", "generated"])]
    assert layer1.iloc[0]["W"] == mine["weight_sum"].sum() / mine["n_tokens"].sum()
    contexts = pd.read_parquet(folder / "contexts.parquet")
    words = contexts.loc[contexts["unit"] == "L1E5", "token"].tolist()
    assert len(words) == 5 and sum(w in PLANTED for w in words) >= 4
    # only the discovery split was read, and the journal carries the fence
    prompts = [json.loads(line) for line in (study / "prompts.jsonl").read_text().splitlines()]
    split_of = {p["id"]: p["split"] for p in prompts}
    assert {split_of[i] for i in record["pairs_read"]} == {"discovery"}
    assert set(pd.read_parquet(folder / "scan" / "texts.parquet")["prompt_id"]) == set(record["pairs_read"])
    entry = json.loads((study / "JOURNAL.jsonl").read_text().splitlines()[-1])
    assert entry["stage"] == "discover" and len(entry["details"]["pair_digests"]) == 4
    spec = yaml.safe_load((study / "study.yaml").read_text())
    assert record["cost"]["max_new_tokens"] == spec["discovery"]["max_new_tokens"]
    verify = subprocess.run([sys.executable, "-m", "lockstep", "verify", str(study)], cwd=repo, capture_output=True, text=True)
    assert verify.returncode == 0 and "read only the 'discovery' split" in verify.stdout
