"""`torchrun --nproc-per-node 2 -m lockstep capture` on CPU (gloo): each rank captures its share of the
batches, rank 0 merges once and writes one journal entry; the tables equal a one-process capture."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from capture_helpers import frozen_repo


def test_a_two_process_torchrun_capture_equals_one_process(demo_capture, tmp_path):
    _, paths = demo_capture
    study = frozen_repo(tmp_path / "repo")
    repo = study.parent.parent
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "lockstep", "capture", f"preregistrations/{study.name}", "--run-id", "greedy", "--no-progress"],
                            cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = repo / "runs" / study.name / "greedy"
    entries = [json.loads(line) for line in (study / "JOURNAL.jsonl").read_text().splitlines()]
    captures = [e for e in entries if e["stage"] == "capture"]
    assert len(captures) == 1 and captures[0]["details"]["runs"] == ["greedy"]  # one entry, from rank 0's merge
    assert not (run / "_work").exists()
    one = pd.read_parquet(paths["greedy"] / "texts.parquet").set_index("prompt_id").sort_index()
    two = pd.read_parquet(run / "texts.parquet").set_index("prompt_id").sort_index()
    assert list(one.index) == list(two.index)
    assert [list(x) for x in one.token_ids] == [list(x) for x in two.token_ids]
    key = ["prompt_id", "layer", "expert", "zone"]
    u1 = pd.read_parquet(paths["greedy"] / "units.parquet").sort_values(key).reset_index(drop=True)
    u2 = pd.read_parquet(run / "units.parquet").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(u1[key + ["n_tokens", "n_selected"]], u2[key + ["n_tokens", "n_selected"]])
    # each rank runs one thread (torchrun sets OMP_NUM_THREADS=1): reductions may round differently
    np.testing.assert_allclose(u1.W.fillna(-1), u2.W.fillna(-1), atol=1e-5)
