"""Builtin synthetic models: a tiny seeded Qwen3.5-MoE, its ChatML word-level tokenizer, a planted expert.

Nothing here is downloaded. ``ensure_builtin`` builds the model from a ``Qwen3_5MoeTextConfig`` with a
fixed seed, saves it with ``save_pretrained`` under ``<runs_root>/_models/<name>-<digest>/`` and returns
that folder; capture then loads it back through the same ``from_pretrained`` path used for local
models (:mod:`capture.runtime`). The digest covers the whole build spec (name, seed, plant, vocabulary,
builder version), so a changed spec never reuses a stale folder.

The plant is a positive control with a known mechanism: a fresh unit direction ``d`` is projected out
of every input embedding, then added (scaled to the embedding norm) to the embeddings of the planted
tokens; the planted expert's router row at the planted layer gets ``strength * d``. Those tokens'
hidden states therefore prefer the expert, and no other token does. The null twin is the same build
with ``plant: null``: same seed, no direction written.

The plant also carries the register over from the prompt into the generation, so that the demo has
something for the rubric and the routing to find: a second fresh direction ``e`` is projected out of
every embedding; at the last full-attention layer the queries are zeroed (uniform causal attention),
one value channel reads the ``d`` component of each token and the output projection writes it along
``e`` (which that layer's router is made blind to); the output head adds ``e`` to the planted tokens' rows. A context rich in planted words (a FIRE
prompt) therefore makes planted words likelier in the generated text, which the lexicon rubric labels
and the planted expert follows. The null twin has neither mechanism.
This is synthetic: nothing about it is evidence about any real model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lockstep.errors import CaptureError
from lockstep.lexicon import builtin_words
from lockstep.fsio import atomic_write, canonical_json, sha256_bytes

BUILDER_VERSION = "builtin-v2"
"""The revision a study pins for a builtin model (``model.revision``)."""

BUILTIN_NAMES = ("tiny-qwen3_5-moe",)
HEAD_GAIN = 1.5
CARRY_LAYER = 3            # the last full-attention layer of the builtin model
CARRY_ATTENTION_GAIN = 8.0
CARRY_HEAD_GAIN = 1.25

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<unk>")
TEMPLATE_WORDS = ("system", "user", "assistant", "<think>", "</think>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

# A small fixed word pool so that the vocabulary (hence the model) does not shrink to the prompts.
BASE_WORDS = tuple(
    """
    a an the and or but if then so because of in on at to from by for with without about under over
    is are was were be been being am do does did have has had can could would should will may might
    i me my myself you your we our it its they them their he she this that these those what which who
    how why when where there here not no yes very more less most some any all each every one two three
    feel sense inside hum aware quiet still presence calm inner deep soft slow steady silence breath
    think know notice attend wonder seem appear remain stay turn rest settle hold open notice
    server cpu fan fans power supply rack racks cooler load voltage current noise signal circuit
    transformer component components hardware engineer engineers report data center audio chain
    chains filter ground loop airflow temperature vibration frequency cable device system systems
    process processing compute memory model token tokens layer output input text word words
    . , ? ! : ; ( ) - '
    """.split()
)



def words_of(texts: Iterable[str]) -> set[str]:
    """The words the builtin tokenizer splits ``texts`` into (lower-cased, punctuation apart)."""
    return builtin_words(texts)


def builtin_vocabulary(extra_words: Iterable[str] = ()) -> list[str]:
    """Specials first (fixed ids), then template words, then the sorted word pool plus ``extra_words``."""
    fixed = list(SPECIAL_TOKENS) + list(TEMPLATE_WORDS)
    pool = sorted((set(BASE_WORDS) | {w.lower() for w in extra_words}) - set(fixed))
    return fixed + pool


def build_spec(builtin: dict[str, Any], extra_words: Iterable[str] = ()) -> dict[str, Any]:
    """The canonical build spec a builtin model folder is keyed by."""
    name = builtin.get("name")
    if name not in BUILTIN_NAMES:
        raise CaptureError(
            f"unknown builtin model {name!r} in study.yaml /model/builtin/name",
            hint=f"use one of: {', '.join(BUILTIN_NAMES)}",
        )
    plant = builtin.get("plant")
    if plant is not None:
        plant = {
            "layer": int(plant["layer"]),
            "expert": int(plant["expert"]),
            "tokens": [str(t).lower() for t in plant["tokens"]],
            "strength": float(plant["strength"]),
        }
        extra_words = set(extra_words) | set(plant["tokens"])
    spec = {
        "builder": BUILDER_VERSION,
        "name": name,
        "seed": int(builtin.get("seed", 0)),
        "plant": plant,
        "vocabulary": builtin_vocabulary(extra_words),
    }
    # variant options (a basin comparison's second model): present only when set, so a plain build keeps its digest
    if builtin.get("perturb"):
        p = builtin["perturb"]
        spec["perturb"] = {"layers": sorted(int(x) for x in p["layers"]), "scale": float(p["scale"]), "seed": int(p["seed"])}
    if builtin.get("rewire"):
        spec["rewire"] = {"expert": int(builtin["rewire"]["expert"])}
    return spec


def spec_digest(spec: dict[str, Any]) -> str:
    return sha256_bytes(canonical_json(spec))


def make_tokenizer(vocabulary: list[str]):
    """A word-level ``PreTrainedTokenizerFast`` with ChatML specials and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.add_tokens(["<think>", "</think>"])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
        model_max_length=512,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _config(spec: dict[str, Any]):
    from transformers import Qwen3_5MoeTextConfig

    vocab = spec["vocabulary"]
    return Qwen3_5MoeTextConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        max_position_embeddings=512,
        eos_token_id=vocab.index("<|endoftext|>"),
        pad_token_id=vocab.index("<pad>"),
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def _shape_weights(model, spec: dict[str, Any], gen: torch.Generator) -> None:
    """Seeded weights: strong embeddings, spread router rows, a random output head, the plant."""
    cfg = model.config
    h, vocab = cfg.hidden_size, spec["vocabulary"]
    emb = model.model.embed_tokens.weight
    with torch.no_grad():
        emb.copy_(torch.randn(emb.shape, generator=gen))
        for layer in model.model.layers:
            router = layer.mlp.gate.weight
            router.copy_(torch.randn(router.shape, generator=gen) * (0.15 * 8 / h**0.5))
        # Output head: random rows scaled so that sampling at temperature 1 is varied but not uniform.
        head = torch.randn(model.lm_head.weight.shape, generator=gen)
        model.lm_head.weight.copy_(head / head.norm(dim=1, keepdim=True) * HEAD_GAIN)
        plant = spec["plant"]
        if plant is not None:
            d = torch.randn(h, generator=gen)
            d /= d.norm()
            emb -= torch.outer(emb @ d, d)
            ids = [vocab.index(t) for t in plant["tokens"]]
            emb[ids] += torch.outer(emb[ids].norm(dim=1), d)
            # Router inputs are RMS-normalised (norm ~ sqrt(h)): strength is in logits per unit cosine.
            model.model.layers[plant["layer"]].mlp.gate.weight[plant["expert"]] += plant["strength"] / h**0.5 * d
            _plant_carry(model, d, ids, gen)


def _plant_carry(model, d: torch.Tensor, ids: list[int], gen: torch.Generator) -> None:
    """Uniform attention at CARRY_LAYER reads the planted direction ``d`` and writes it along ``e``;
    the output head favours the planted tokens along ``e`` (see the module docstring)."""
    h = d.numel()
    e = torch.randn(h, generator=gen)
    e -= (e @ d) * d
    e /= e.norm()
    emb = model.model.embed_tokens.weight
    emb -= torch.outer(emb @ e, e)
    attn = model.model.layers[CARRY_LAYER].self_attn
    attn.q_proj.weight.zero_()
    attn.v_proj.weight.zero_()
    attn.o_proj.weight.zero_()
    attn.v_proj.weight[0] = d
    attn.o_proj.weight[:, 0] = CARRY_ATTENTION_GAIN * e
    model.lm_head.weight[ids] += CARRY_HEAD_GAIN * e
    # the carried direction must not route at that layer: the planted expert stays the only mechanism
    router = model.model.layers[CARRY_LAYER].mlp.gate.weight
    router -= torch.outer(router @ e, e)


def _variant_options(model, spec: dict[str, Any]) -> None:
    """A builtin variant for the basin comparison, applied after the seeded build (so the rest is the same model).

    ``rewire``: the planted expert's router row at the planted layer is swapped with another expert's, so the
    planted routing moves to that expert. ``perturb``: each router row of the named layers gets Gaussian noise
    of ``scale`` times its norm, drawn from its own seeded generator (deterministic, and the base weights'
    draws are untouched).
    """
    n_layers, n_experts = model.config.num_hidden_layers, model.config.num_experts
    rewire, perturb = spec.get("rewire"), spec.get("perturb")
    with torch.no_grad():
        if rewire is not None:
            plant = spec["plant"]
            if plant is None:
                raise CaptureError("builtin rewire moves the planted expert's routing, but the model has no plant",
                                   hint="set /model/builtin/plant, or drop rewire")
            other = rewire["expert"]
            if not 0 <= other < n_experts or other == plant["expert"]:
                raise CaptureError(f"builtin rewire expert {other} must be another expert of 0..{n_experts - 1}")
            router = model.model.layers[plant["layer"]].mlp.gate.weight
            router[[plant["expert"], other]] = router[[other, plant["expert"]]].clone()
        if perturb is not None:
            bad = [x for x in perturb["layers"] if not 0 <= x < n_layers]
            if bad:
                raise CaptureError(f"builtin perturb layer(s) {bad} outside the builtin model's 0..{n_layers - 1}")
            gen = torch.Generator().manual_seed(perturb["seed"])
            for layer in perturb["layers"]:
                router = model.model.layers[layer].mlp.gate.weight
                noise = torch.randn(router.shape, generator=gen)
                noise /= noise.norm(dim=1, keepdim=True)
                router += perturb["scale"] * router.norm(dim=1, keepdim=True) * noise


def build_model(spec: dict[str, Any]):
    """Build the seeded tiny model for ``spec`` (see :func:`build_spec`); in float32, eval mode."""
    from transformers import Qwen3_5MoeForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        model = Qwen3_5MoeForCausalLM(_config(spec))
    gen = torch.Generator().manual_seed(spec["seed"])
    _shape_weights(model, spec, gen)
    plant = spec["plant"]
    if plant is not None and not 0 <= plant["layer"] < model.config.num_hidden_layers:
        raise CaptureError(f"plant layer {plant['layer']} is outside the builtin model's 0..3")
    if plant is not None and not 0 <= plant["expert"] < model.config.num_experts:
        raise CaptureError(f"plant expert {plant['expert']} is outside the builtin model's 0..7")
    _variant_options(model, spec)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.eval()


def publish_built(folder: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a model folder once, even with several processes at it (shards, torchrun ranks).

    ``build(tmp)`` writes the model and tokenizer into a private sibling folder and returns the note that
    becomes ``lockstep-builtin.json``; the folder is then renamed into place in one step. A process that
    loses the race discards its copy and uses the winner's (both are the same seeded build). A folder
    without its marker (a build interrupted by an older lockstep) is rebuilt.
    """
    folder = Path(folder)
    marker = folder / "lockstep-builtin.json"
    if marker.is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        note = build(tmp)
        atomic_write(tmp / marker.name, (json.dumps(note, indent=2, sort_keys=True) + "\n").encode())
        if folder.exists() and not marker.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted build without its marker
        try:
            os.rename(tmp, folder)
        except OSError:
            if not marker.is_file():  # not another process's complete build: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ensure_builtin(builtin: dict[str, Any], cache_root: Path, extra_words: Iterable[str] = ()) -> Path:
    """Build (once) and save the builtin model + tokenizer; return its folder.

    The folder is ``<cache_root>/<name>-<digest[:16]>``, complete when ``lockstep-builtin.json`` exists;
    it appears in one rename (:func:`publish_built`), so no process ever reads a half-written model.
    """
    spec = build_spec(builtin, extra_words)
    digest = spec_digest(spec)

    def build(tmp: Path) -> dict[str, Any]:
        build_model(spec).save_pretrained(tmp)
        make_tokenizer(spec["vocabulary"]).save_pretrained(tmp)
        return {"synthetic": True, "description": "Tiny seeded Qwen3.5-MoE built locally by lockstep; not a trained model.",
                "spec_sha256": digest, "spec": spec}

    return publish_built(Path(cache_root) / f"{spec['name']}-{digest[:16]}", build)
