"""What ends a generation (/runtime/stop_at) and the greedy batch-invariance check, on the demo model."""

from __future__ import annotations

import json

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from capture.decode import Decoding, decode_batch
from capture.run import run_capture
from capture_helpers import frozen_repo
from lockstep.gate import require_frozen


def test_stop_at_max_new_tokens_is_captured_and_the_check_is_recorded(demo_capture, tmp_path):
    _, paths = demo_capture
    eos = pd.read_parquet(paths["greedy"] / "texts.parquet").set_index("prompt_id")

    def edit(spec):
        spec["runtime"].update(stop_at="max_new_tokens", batch_invariance_check=4)

    study = frozen_repo(tmp_path / "repo", edit=edit)
    run_dir = run_capture(require_frozen(study), runs_root=tmp_path / "runs", run_ids=["greedy"], progress=False)[0]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    texts = pd.read_parquet(run_dir / "texts.parquet").set_index("prompt_id")
    assert manifest["stop_at"] == "max_new_tokens"
    assert (texts.token_ids.map(len) == manifest["max_new_tokens"]).all() and (texts.finish_reason == "length").all()
    for pid, row in eos.iterrows():  # up to where the eos run stopped, the text is the same
        assert list(texts.loc[pid, "token_ids"][: len(row.token_ids)]) == list(row.token_ids)
    check = manifest["batch_invariance"]
    assert check["prompts_checked"] >= 4 and check["batch_size"] == 4
    # the demo's greedy output is padding-invariant (test_capture_run.test_padding_invariance shows it independently)
    assert check["identical"] and check["differing"] == []


def test_a_stop_token_ends_a_row_and_no_stop_set_runs_to_the_limit(demo_capture):
    """decode_batch with the stop set eos gives and with the empty set stop_at: max_new_tokens gives."""
    _, paths = demo_capture
    manifest = json.loads((paths["greedy"] / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(manifest["model"]["path"], dtype=torch.float32).eval()
    texts = pd.read_parquet(paths["greedy"] / "texts.parquet")
    row = texts.iloc[0]
    prompt = list(row.prompt_token_ids)
    stop = int(row.token_ids[2])  # a token the model does generate, third or earlier
    first = list(row.token_ids).index(stop)
    greedy = Decoding("greedy")
    stopped = decode_batch(model, [prompt], [row.prompt_id], decoding=greedy, max_new_tokens=24, stop_ids={stop},
                           trim_ids=set(), pad_id=0).rows[0]
    assert stopped.finish_reason == "stop" and stopped.generated == list(row.token_ids[: first + 1])
    free = decode_batch(model, [prompt], [row.prompt_id], decoding=greedy, max_new_tokens=24, stop_ids=set(),
                        trim_ids=set(), pad_id=0).rows[0]
    assert free.finish_reason == "length" and len(free.generated) == 24
    assert free.generated[: len(row.token_ids)] == list(row.token_ids)
