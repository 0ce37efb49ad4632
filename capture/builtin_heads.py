"""The builtin dense hybrid model for ablation studies: a tiny seeded Qwen3.5 with one planted head.

``model.builtin.name: tiny-qwen3_5`` builds a ``Qwen3_5ForCausalLM`` from a ``Qwen3_5TextConfig``
(4 layers: linear, full, linear, full attention; 4 query heads of 16 channels in full-attention
layers, 4 value heads of 16 channels in linear-attention layers: 16 head slots), saves it with
``save_pretrained`` under ``<runs_root>/_models/tiny-qwen3_5-<digest>/`` and returns that folder;
capture loads it back through ``from_pretrained`` like any local model. The tokenizer is the
builtin word-level one (:func:`capture.builtin.make_tokenizer`). Nothing is downloaded.

What the model knows, by construction (all of it synthetic):

* **Facts** (:data:`FACTS`): each made-up *land* has a made-up *city*. Every land's embedding gets a
  code ``r_i`` from a 12-dimensional subspace ``R`` that is projected out of every other embedding.
  With a plant ``{layer: l, head: h, strength: s}`` (``l`` must be a full-attention layer), head
  ``h`` of layer ``l`` is rewired: its query and output-gate rows are zeroed (uniform causal
  attention, gate sigmoid(0) = 1/2), its value rows read the codes (value channel ``i`` = ``r_i``),
  and its output-projection column ``i`` writes ``s`` times the unit unembedding direction of city
  ``i``. At the last position of "the capital of <land> is" the head therefore adds the land's city
  to the logits, and nothing else in the model does: ablating that head collapses the clean margin
  ``logit(city) - logit(corrupted land's city)``, and no other slot matters as much.
* **Cues** (:data:`CUES`): each cue word's embedding carries its partner's unembedding direction
  (the direct path, no head involved). Control pairs end on a cue ("the clock says tick" -> tock), so
  their margins are positive in every build and no head ablation should move them much.
* The rest is random: embeddings ``N(0, 1)``, output rows of norm :data:`HEAD_GAIN`, every other
  projection ``N(0, BACKGROUND_GAIN / fan_in)`` so that unplanted heads do move margins a little.

The null twin is the same build with ``plant: null``: same seed, same facts and cues, no rewired head.
Nothing about either model is evidence about any real model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from lockstep.errors import CaptureError

from .builtin import builtin_vocabulary, make_tokenizer, publish_built, spec_digest

NAME = "tiny-qwen3_5"
BUILDER_VERSION = "builtin-heads-v1"
"""The revision a study pins for this builtin model (``model.revision``)."""

LAYER_TYPES = ("linear_attention", "full_attention", "linear_attention", "full_attention")
HIDDEN = 64
HEADS = 4
HEAD_DIM = 16
HEAD_GAIN = 1.5
BACKGROUND_GAIN = 1.0
CUE_GAIN = 1.0

FACTS = (
    ("veltoria", "marn"), ("osmira", "tolv"), ("quenzar", "pesk"), ("dravia", "drun"),
    ("lumeria", "lisk"), ("tarskon", "varo"), ("ophalia", "quem"), ("brenmark", "embra"),
    ("corvala", "sorn"), ("zeldra", "jalk"), ("mirethi", "fitch"), ("ostvald", "norv"),
)
"""(land, city): the facts a planted head carries. Twelve codes fit a 16-channel head."""

CUES = (
    ("tick", "tock"), ("ping", "pong"), ("zig", "zag"), ("flip", "flop"),
    ("hip", "hop"), ("ding", "dong"), ("criss", "cross"), ("knick", "knack"),
)
"""(cue, partner): the direct-path associations control pairs use."""


def build_spec(builtin: dict[str, Any], extra_words: Iterable[str] = ()) -> dict[str, Any]:
    """The canonical build spec the model folder is keyed by."""
    plant = builtin.get("plant")
    if plant is not None:
        if "head" not in plant:
            raise CaptureError("the tiny-qwen3_5 plant needs `head` (a full-attention head to plant)",
                               hint="set study.yaml /model/builtin/plant/head")
        plant = {"layer": int(plant["layer"]), "head": int(plant["head"]), "strength": float(plant.get("strength", 12.0))}
        if plant["layer"] not in range(len(LAYER_TYPES)) or LAYER_TYPES[plant["layer"]] != "full_attention":
            full = [i for i, t in enumerate(LAYER_TYPES) if t == "full_attention"]
            raise CaptureError(f"plant layer {plant['layer']} is not a full-attention layer of tiny-qwen3_5 (those are {full})",
                               hint="fix study.yaml /model/builtin/plant/layer")
        if plant["head"] not in range(HEADS):
            raise CaptureError(f"plant head {plant['head']} is outside tiny-qwen3_5's 0..{HEADS - 1}")
    words = set(extra_words) | {w for pair in FACTS + CUES for w in pair}
    return {
        "builder": BUILDER_VERSION,
        "name": NAME,
        "seed": int(builtin.get("seed", 0)),
        "plant": plant,
        "facts": [list(f) for f in FACTS],
        "cues": [list(c) for c in CUES],
        "vocabulary": builtin_vocabulary(words),
    }


def _config(spec: dict[str, Any]):
    from transformers import Qwen3_5TextConfig

    vocab = spec["vocabulary"]
    return Qwen3_5TextConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        layer_types=list(LAYER_TYPES), max_position_embeddings=512,
        eos_token_id=vocab.index("<|endoftext|>"), pad_token_id=vocab.index("<pad>"), bos_token_id=None,
        tie_word_embeddings=False,
    )


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _shape_weights(model, spec: dict[str, Any], gen: torch.Generator) -> None:
    vocab = {w: i for i, w in enumerate(spec["vocabulary"])}
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    with torch.no_grad():
        for name, param in model.model.layers.named_parameters():
            if param.dim() == 2 and name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * (BACKGROUND_GAIN / param.shape[1]) ** 0.5)
        emb.copy_(torch.randn(emb.shape, generator=gen))
        rows = torch.randn(head.shape, generator=gen)
        head.copy_(rows / rows.norm(dim=1, keepdim=True) * HEAD_GAIN)
        codes, _ = torch.linalg.qr(torch.randn(HIDDEN, len(spec["facts"]), generator=gen))
        emb -= (emb @ codes) @ codes.T
        for i, (land, _) in enumerate(spec["facts"]):
            emb[vocab[land]] += emb[vocab[land]].norm() * codes[:, i]
        for cue, partner in spec["cues"]:
            direction = head[vocab[partner]] - codes @ (codes.T @ head[vocab[partner]])
            emb[vocab[cue]] += CUE_GAIN * emb[vocab[cue]].norm() * _unit(direction)
        if spec["plant"] is not None:
            _plant_head(model, spec, codes, vocab)


def _plant_head(model, spec: dict[str, Any], codes: torch.Tensor, vocab: dict[str, int]) -> None:
    plant = spec["plant"]
    attn = model.model.layers[plant["layer"]].self_attn
    h, d = plant["head"], HEAD_DIM
    attn.q_proj.weight[h * 2 * d:(h + 1) * 2 * d] = 0.0          # query and output gate of head h
    attn.v_proj.weight[h * d:(h + 1) * d] = 0.0
    attn.o_proj.weight[:, h * d:(h + 1) * d] = 0.0
    head = model.lm_head.weight
    for i, (_, city) in enumerate(spec["facts"]):
        attn.v_proj.weight[h * d + i] = codes[:, i]
        attn.o_proj.weight[:, h * d + i] = plant["strength"] * _unit(head[vocab[city]])


def build_model(spec: dict[str, Any]):
    """Build the seeded tiny model for ``spec``; float32, eval mode."""
    from transformers import Qwen3_5ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = Qwen3_5ForCausalLM(_config(spec))
    _shape_weights(model, spec, torch.Generator().manual_seed(spec["seed"]))
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.eval()


def ensure_builtin(builtin: dict[str, Any], cache_root: Path, extra_words: Iterable[str] = ()) -> Path:
    """Build (once) and save the model and tokenizer; return the folder (complete when its marker exists)."""
    spec = build_spec(builtin, extra_words)
    digest = spec_digest(spec)

    def build(tmp: Path) -> dict[str, Any]:
        build_model(spec).save_pretrained(tmp)
        make_tokenizer(spec["vocabulary"]).save_pretrained(tmp)
        return {"synthetic": True, "spec_sha256": digest, "spec": spec,
                "description": "Tiny seeded hybrid Qwen3.5 built locally by lockstep, one head planted to carry "
                               "made-up facts; not a trained model."}

    return publish_built(Path(cache_root) / f"{NAME}-{digest[:16]}", build)
