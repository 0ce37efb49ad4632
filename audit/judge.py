"""The ``judge`` rubric: a local transformers model chooses each text's register label.

The judge does not generate free text to be parsed. For each text it renders the frozen template
(``{text}`` and ``{labels}`` are replaced literally, never through ``str.format``) and scores every label
as a continuation: the sum of the label's token log-probabilities after the prompt, in float32. The
label with the highest score wins; ties go to the label listed first in the rubric. The scores are kept
with the label, so a reviewer can see how close each call was. The model loads from a local folder or
the local Hugging Face cache at the pinned revision (never downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from lockstep import models as runtime
from lockstep.errors import WeightsNotFound


def judge_folder(judge: dict, repo_root: Path) -> Path:
    """The judge's weights: a folder path (absolute or repository-relative), else the hub cache at the revision."""
    path = Path(judge["model"])
    if not path.is_absolute():
        path = Path(repo_root) / path
    if (path / "config.json").is_file():
        return path
    try:
        return runtime.hub_snapshot(judge["model"], judge["revision"]).path
    except WeightsNotFound as exc:
        raise WeightsNotFound(f"labels not made: judge weights not found for {judge['model']}@{judge['revision']}",
                              hint="put the judge model folder at that path (config.json, weights, tokenizer), "
                                   "or download it into the Hugging Face cache") from exc


def render_prompt(template: str, text: str, labels: list[str]) -> str:
    return template.replace("{labels}", ", ".join(labels)).replace("{text}", text)


@torch.no_grad()
def label_scores(model, tok, prompt: str, labels: list[str]) -> list[float]:
    """Sum of log p(label tokens | prompt) for each label (teacher-forced, float32)."""
    prompt_ids = tok(prompt, add_special_tokens=False).input_ids
    scores = []
    for label in labels:
        # a label continues the prompt after a space (" inner": one word for a word-level tokenizer,
        # the space-prefixed piece for a BPE one)
        label_ids = tok(" " + label, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt_ids + label_ids])
        logits = model(ids).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
        scores.append(float(logp[torch.arange(len(label_ids)), torch.tensor(label_ids)].sum()))
    return scores


def judge_labels(texts: pd.DataFrame, rubric: dict, repo_root: Path) -> pd.DataFrame:
    judge = rubric["judge"]
    folder = judge_folder(judge, repo_root)
    labels = list(rubric["labels"])
    tok, _ = runtime.load_tokenizer(folder, labels)
    model = runtime.load_model(runtime.ModelSource(folder, "local", judge["revision"]), dtype="float32",
                               trust_remote_code=False, device_map=None)
    rows = []
    for prompt_id, text in zip(texts["prompt_id"], texts["text"]):
        scores = label_scores(model, tok, render_prompt(judge["template"], text, labels), labels)
        best = max(range(len(labels)), key=lambda i: (scores[i], -i))
        rows.append({"prompt_id": prompt_id, "label": labels[best], "rule": "judge",
                     "features": json.dumps(dict(zip(labels, scores)), sort_keys=True)})
    return pd.DataFrame(rows, columns=["prompt_id", "label", "rule", "features"])
