"""``lockstep new NAME --design routing|ablation``: a commented study that validates, its blanks marked.

Every line a researcher must change carries ``FILL:``; everything else is a sensible default with a
comment saying what it means. The files validate as written (so ``lockstep validate`` works from the first
minute) but describe no real experiment until the FILL lines are done: the example prompts are two
pairs, far too few for any confirmatory claim, and the model is a placeholder id.

Why text templates and not a copy of the demo: copying a demo after ``make demo`` also copies its lock,
journal and read-only bits, and the demo's plan is about a synthetic planted model; a new study starts
from nothing frozen and a real model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import UsageError
from .fsio import atomic_write

__all__ = ["DESIGN_TEMPLATES", "new_study"]

_ROUTING_STUDY = """\
# A routing study: W/S/Q of routed experts between prompt classes and generated registers.
# Lines marked FILL: are yours to write; `lockstep validate preregistrations/{name}` checks every field.
# README.md, "Writing a study", says what each block means; preregistrations/e114-register is a full example.
schema_version: 1
study_id: {name}
title: "FILL: one line saying what is claimed, about which unit, in which model"
design: routing
description: >
  FILL: the question, where the candidate unit came from (a discovery run on the discovery split only),
  and what would count against the claim.

model:
  id: FILL-org/FILL-model          # FILL: the Hugging Face id of the model
  source: hub                      # hub (local HF cache), path (a folder: pin weights_sha256), builtin (tests)
  revision: main                   # FILL: pin the snapshot's 40-hex commit (a branch name moves) and drop the next line
  revision_policy: record_at_first_capture
  dtype: bfloat16
  trust_remote_code: false

runtime:
  chat_template: model             # model: the tokenizer's template; chatml: the toolkit's; none: raw text
  enable_thinking: false
  system_prompt: null
  max_new_tokens: 256              # FILL: how long a generation may run
  stop_at: eos                     # eos, or max_new_tokens to capture text past the end token (spill)
  batch_size: 8
  batch_invariance_check: 8        # greedy output checked at batch 1 against batch_size, in the manifest
  trim_tokens: ["<|im_end|>", "<|endoftext|>", "<|im_start|>"]
  runs:
    - id: sampled
      decoding: sample
      temperature: 1.0
      top_p: 1.0
      top_k: 0
      seed: 1234                   # FILL: any fixed seed, chosen now
    - id: greedy
      decoding: greedy

capture:
  metrics: [W, S, Q]
  zones: [prefill, generated, trimmed, spill]
  per_token_topk: true
  residual_layers: []
  near_tie_tolerance: 1.0e-5

units:
  kind: expert
  family: all
  targets:
    - id: L14E114                  # FILL: the unit discovery proposed (layer L, expert E)
      layer: 14
      expert: 114

sampling_plan:                     # FILL: the counts must be prompts.jsonl's; plan power before choosing them
  classes: {{FIRE: 3, NOFIRE: 3}}
  splits: {{discovery: 2, heldout: 4}}
  stopping_rule: "Fixed sample: every prompt is run once per preregistered run; no optional stopping."
  min_after_exclusions: {{FIRE: 2, NOFIRE: 2}}

exclusions:
  - id: X1
    rule: empty_trimmed
    action: exclude
    description: "A generation whose trimmed zone has no tokens is left out of trimmed-zone analyses and counted."

hypotheses:
  - id: H1
    claim: "In trimmed generated text, L14E114 carries more routed weight (W) on FIRE prompts than on matched NOFIRE prompts."
    direction: greater
    kind: confirmatory
    analysis: A1
    thresholds: [alpha, min_cohen_d]

analyses:
  - id: A1
    kind: two_group
    unit: L14E114
    metric: W
    zone: trimmed
    run: sampled
    split: heldout
    groups: {{by: prompt_class, a: FIRE, b: NOFIRE}}
    statistic: welch_t
    test: permutation
    "null": equal_means              # quote the key: a bare null is YAML's empty value
    tails: greater

inference:
  alpha_threshold: alpha
  permutations: {{exact_cap: 200000, n_resamples: 9999, seed: 20261130}}
  multiple_comparisons: {{family: all_units, method: maxT_stepdown, also_report: [holm, fdr_bh]}}
"""

_ROUTING_PROMPTS = [
    {"id": "fire-01", "class": "FIRE", "split": "discovery", "anchors": ["hum", "processing"],
     "text": "FILL: a prompt that invites the register under study, using the words hum and processing."},
    {"id": "nofire-01", "class": "NOFIRE", "split": "discovery", "anchors": ["hum", "processing"],
     "text": "FILL: its matched control on another register, with the same words hum and processing."},
    {"id": "fire-02", "class": "FIRE", "split": "heldout", "anchors": ["signal"],
     "text": "FILL: a heldout prompt of the target register that mentions the signal."},
    {"id": "nofire-02", "class": "NOFIRE", "split": "heldout", "anchors": ["signal"],
     "text": "FILL: its matched control, explaining how the signal is filtered."},
    {"id": "fire-03", "class": "FIRE", "split": "heldout", "anchors": ["layers"],
     "text": "FILL: another heldout prompt of the target register about the layers."},
    {"id": "nofire-03", "class": "NOFIRE", "split": "heldout", "anchors": ["layers"],
     "text": "FILL: its matched control, describing the layers of a network technically."},
]

_ROUTING_RUBRIC = """\
# How generated text gets its register label, frozen before any routing score is read.
schema_version: 1
kind: lexicon                      # lexicon (word sets and rules), judge (a local model), or human (a sheet)
text_zone: trimmed
labels:
  target: "FILL: what a text of the target register is."
  other: "Any other generated text."
target_label: target
lexicon:
  case: lower
  sets:
    marker_words: [wonder, seems]  # FILL: words of the target register; never a prompt's anchor word
  features:
    marker_count: {count_of: marker_words}
  rules:
    - label: target
      all:
        - {feature: marker_count, op: ">=", value: 2}
  otherwise: other
"""

_ROUTING_THRESHOLDS = """\
schema_version: 1
thresholds:
  alpha:
    value: 0.05
    description: "Family-wise error rate of the confirmatory tests."
  min_cohen_d:
    value: 0.8
    description: "FILL: the smallest effect worth claiming (Cohen's d, FIRE minus NOFIRE)."
"""

_ABLATION_STUDY = """\
# An ablation study: head slots ablated on contrastive pairs; the clean logit-difference margin and its drop.
# Lines marked FILL: are yours to write; `lockstep validate preregistrations/{name}` checks every field.
# README.md, "The ablation design", says what each block means; preregistrations/l31h14-ablation is a full example.
schema_version: 1
study_id: {name}
title: "FILL: one line saying which head slots are claimed to carry what"
design: ablation
description: >
  FILL: the question, where the candidate slots came from (discovery on another split), and what would
  count against the claim.

model:
  id: FILL-org/FILL-model          # FILL: the Hugging Face id of the model
  source: hub
  revision: main                   # FILL: pin the snapshot's 40-hex commit (a branch name moves) and drop the next line
  revision_policy: record_at_first_capture
  dtype: bfloat16
  trust_remote_code: false

runtime:
  chat_template: none
  batch_size: 8
  runs:
    - id: forward
      decoding: none

ablation:
  site: o_proj_input
  slot_layers: all
  kind: mean                       # mean (over the reference prompts) or zero
  reference_split: reference
  answer_tokenization: first_token
  position: last
  modes: [individual, combined]
  combined: [L31H14]               # FILL: the slots ablated together
  relative_drop: ratio_of_means

units:
  kind: head
  family: all
  targets:
    - id: L31H14                   # FILL: the slot discovery proposed (layer L, head H)
      layer: 31
      head: 14

sampling_plan:                     # FILL: the counts must be prompts.jsonl's
  classes: {{headline: 2, control: 1, reference: 2}}
  splits: {{heldout: 3, reference: 2}}
  stopping_rule: "Fixed sample: every pair is run once; the reference split only defines the ablation means."

exclusions:
  - id: X1
    rule: shared_first_token
    action: exclude
    description: "A pair whose answer and wrong answer begin with the same token is excluded before any forward pass."

hypotheses:
  - id: H1
    claim: "Mean-ablating L31H14 reduces the clean logit-difference margin on headline pairs."
    direction: greater
    kind: confirmatory
    analysis: A1
    thresholds: [alpha, min_mean_drop_logits]

analyses:
  - id: A1
    kind: ablation_drop
    pairs: headline
    mode: combined
    statistic: mean_drop
    test: paired_sign_flip
    tails: greater

inference:
  alpha_threshold: alpha
  permutations: {{exact_cap: 200000, n_resamples: 9999, seed: 20261130}}
  multiple_comparisons: {{family: all_units, method: maxT_stepdown, also_report: [holm]}}
"""

_ABLATION_PROMPTS = [
    {"id": "head-001", "class": "headline", "split": "heldout", "clean": "FILL: The capital of France is",
     "corrupted": "FILL: The capital of Italy is", "answer": " Paris", "wrong_answer": " Rome"},
    {"id": "head-002", "class": "headline", "split": "heldout", "clean": "FILL: The chemical symbol for gold is",
     "corrupted": "FILL: The chemical symbol for silver is", "answer": " Au", "wrong_answer": " Ag"},
    {"id": "ctrl-001", "class": "control", "split": "heldout", "clean": "FILL: The chemical symbol for energy is",
     "corrupted": "FILL: The chemical symbol for power is", "answer": " E", "wrong_answer": " P"},
    {"id": "ref-001", "class": "reference", "split": "reference", "text": "FILL: The capital of Norway is"},
    {"id": "ref-002", "class": "reference", "split": "reference", "text": "FILL: The chemical symbol for tin is"},
]

_ABLATION_RUBRIC = """\
schema_version: 1
kind: none
reason: "No generated text is labelled in the ablation design; the measured quantity is the logit-difference margin."
"""

_ABLATION_THRESHOLDS = """\
schema_version: 1
thresholds:
  alpha:
    value: 0.05
    description: "Significance level of the confirmatory tests."
  min_mean_drop_logits:
    value: 1.5
    description: "FILL: the smallest mean headline drop, in logits, worth claiming."
"""

DESIGN_TEMPLATES = {
    "routing": (_ROUTING_STUDY, _ROUTING_PROMPTS, _ROUTING_RUBRIC, _ROUTING_THRESHOLDS),
    "ablation": (_ABLATION_STUDY, _ABLATION_PROMPTS, _ABLATION_RUBRIC, _ABLATION_THRESHOLDS),
}


def new_study(parent: Path, name: str, design: str) -> Path:
    """Write ``parent/<name>/`` from the design's template; UsageError if the name is bad or the folder exists."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise UsageError(f"{name!r} is not a study id", hint="use lower-case letters, digits, '.', '_' or '-' (at most 64), "
                                                              "starting with a letter or digit")
    if design not in DESIGN_TEMPLATES:
        raise UsageError(f"no design {design!r}", hint=f"choose one of: {', '.join(sorted(DESIGN_TEMPLATES))}")
    folder = Path(parent) / name
    if folder.exists():
        raise UsageError(f"{folder} already exists", hint="choose another name; a study folder is never overwritten")
    study, prompts, rubric, thresholds = DESIGN_TEMPLATES[design]
    folder.mkdir(parents=True)
    atomic_write(folder / "study.yaml", study.format(name=name).encode())
    atomic_write(folder / "prompts.jsonl", "".join(json.dumps(p) + "\n" for p in prompts).encode())
    atomic_write(folder / "rubric.yaml", rubric.encode())
    atomic_write(folder / "thresholds.yaml", thresholds.encode())
    return folder
