"""The committed trained demo models (models/trained-moe, models/trained-heads; tools/train_demo.py) load
through lockstep's own loader as a ``source: path`` study would load them, their recorded digests are
the digests of the committed files, their tokenizers round-trip every prompt text, and they do what
they were trained to do (with slack: no bitwise float equality)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
from transformers import PreTrainedTokenizerFast

from capture import runtime
from capture_helpers import frozen_repo
from lockstep.gate import require_frozen
from lockstep.models import ModelSource, folder_identity, load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
FOLDERS = {"trained-moe": ("routing", "Qwen3_5MoeForCausalLM"), "trained-heads": ("ablation", "Qwen3_5ForCausalLM")}
TEXT_FIELDS = ("text", "clean", "corrupted", "answer", "wrong_answer")


def _note(name: str) -> dict:
    return json.loads((MODELS / name / "training.json").read_text())


def _prompts(name: str) -> list[dict]:
    return [json.loads(line) for line in (MODELS / name / "prompts.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_recorded_digests_are_those_of_the_committed_files(name):
    folder, note = MODELS / name, _note(name)
    identity = folder_identity(folder)
    assert identity["weights_sha256"] == note["weights_sha256"]
    assert identity["tokenizer_sha256"] == note["tokenizer_sha256"]
    assert sorted(identity["weight_files"]) == sorted(note["weight_files"]) == ["model.safetensors"]
    # independently of folder_identity's cache: hashlib over the bytes, and the sha256sum-style digest by hand
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert sha == note["weight_files"]["model.safetensors"]["sha256"]
    assert hashlib.sha256(f"{sha}  model.safetensors\n".encode()).hexdigest() == note["weights_sha256"]
    assert (folder / "model.safetensors").stat().st_size < 8 * 2**20
    assert note["training_script"] == "tools/train_demo.py" and (REPO / note["corpus_generator"]).is_file()


def _train_demo():
    """tools/train_demo.py as a module (it puts the repository root on sys.path for tools.demo_corpus)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("train_demo", REPO / "tools" / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_the_generators_still_make_what_the_weights_were_trained_on(name):
    """Retraining reproduces the weights only if the script's settings, the corpus, the prompts and the
    vocabulary are unchanged: an edit to any of them (or to capture.builtin's word pool) fails here."""
    train_demo = _train_demo()
    corpus, note = train_demo.corpus, _note(name)
    moe = name == "trained-moe"
    hp = train_demo.MOE if moe else train_demo.HEADS
    assert note["hyperparameters"] == hp and note["seed"] == hp["seed"] and note["threads"] == train_demo.THREADS
    raw = (corpus.register_turns if moe else corpus.fact_documents)(hp["corpus_seed"], hp["n_documents"])
    assert corpus.digest(raw) == note["corpus"]["sha256"]
    lines = (corpus.register_prompt_lines if moe else corpus.fact_prompt_lines)(hp["prompt_seed"])
    assert lines == _prompts(name) and corpus.digest(lines) == note["prompts_sha256"]
    vocabulary = corpus.register_vocabulary() if moe else corpus.fact_vocabulary()
    tokenizer = json.loads((MODELS / name / "tokenizer.json").read_text())
    assert tokenizer["model"]["vocab"] == {word: i for i, word in enumerate(vocabulary)}


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_prompts_follow_their_schema_and_the_tokenizer_round_trips_them(name):
    design, _ = FOLDERS[name]
    schema = json.loads((REPO / "lockstep" / "schemas" / f"prompt-{design}.schema.json").read_text())
    lines = _prompts(name)
    texts = [line[k] for line in lines for k in TEXT_FIELDS if k in line]
    for line in lines:
        jsonschema.validate(line, schema)
        for anchor in line.get("anchors", []):
            assert f" {anchor} " in f" {line['text']} ", (line["id"], anchor)
    assert len({line["id"] for line in lines}) == len(lines)
    tok, loader = load_tokenizer(MODELS / name, texts)  # refuses a loader that encodes differently from tokenizer.json
    assert loader == PreTrainedTokenizerFast.__name__  # not AutoTokenizer's class for the model type (DESIGN.md)
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text.strip()
    for line in lines:
        if "answer" in line:  # the pairs score first tokens: answers are one word and differ
            a, w = (tok(line[k], add_special_tokens=False).input_ids for k in ("answer", "wrong_answer"))
            assert len(a) == len(w) == 1 and a != w, line["id"]
    splits = {line["split"] for line in lines}
    assert splits == ({"discovery", "heldout"} if design == "routing" else {"discovery", "heldout", "reference"})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Each folder resolved and loaded as a frozen study with ``model.source: path`` (pinned by content) loads it."""
    out = {}
    for name in sorted(FOLDERS):
        note = _note(name)

        def local(spec, name=name, note=note):
            spec["model"].update({"id": f"lockstep/{name}", "source": "path", "path": str(MODELS / name), "revision": "trained-v1",
                                  "weights_sha256": note["weights_sha256"], "tokenizer_sha256": note["tokenizer_sha256"]})
            spec["model"].pop("builtin", None)

        frozen = require_frozen(frozen_repo(tmp_path_factory.mktemp(name) / "repo", edit=local))
        source = runtime.resolve_model(frozen, tmp_path_factory.mktemp("runs"))
        identity = folder_identity(source.path)
        deviations = runtime.source_deviations(frozen, source, identity, None)
        out[name] = (source, deviations, runtime.load(frozen, source, identity, {}, None))
    return out


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_a_source_path_study_loads_the_folder_without_deviations(loaded, name):
    source, deviations, ld = loaded[name]
    assert source.kind == "local" and source.path == MODELS / name
    assert deviations == []
    assert type(ld.model).__name__ == FOLDERS[name][1] and not ld.model.training
    assert ld.tokenizer_loader == PreTrainedTokenizerFast.__name__
    direct = load_model(ModelSource(MODELS / name, "local", None), dtype="float32", trust_remote_code=False, device_map=None)
    assert sum(p.numel() for p in direct.parameters()) == _note(name)["parameters"]


def test_the_fact_model_prefers_the_learned_answer_on_heldout_pairs(loaded):
    import torch

    ld = loaded["trained-heads"][2]
    pairs = [p for p in _prompts("trained-heads") if p["class"] == "headline" and p["split"] == "heldout"]
    tok = ld.tok
    enc = tok([p["clean"] for p in pairs], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = ld.model(**enc).logits[:, -1]
    ans = [tok(p["answer"], add_special_tokens=False).input_ids[0] for p in pairs]
    wrong = [tok(p["wrong_answer"], add_special_tokens=False).input_ids[0] for p in pairs]
    margins = logits[range(len(pairs)), ans] - logits[range(len(pairs)), wrong]
    assert float(margins.min()) > 0.0 and float(margins.mean()) > 2.0
    assert (logits.argmax(dim=1) == torch.tensor(ans)).float().mean() > 0.8


def test_the_register_model_continues_plain_prompts_in_their_register(loaded):
    import torch

    ld = loaded["trained-moe"][2]
    tok = ld.tok
    lines = [p for p in _prompts("trained-moe") if p["split"] == "heldout" and "note" not in p]
    picked = [p for p in lines if p["class"] == "FIRE"][:3] + [p for p in lines if p["class"] == "NOFIRE"][:3]
    first_person = {"i", "me", "my", "myself"}
    prompts = [runtime.render(tok, line["text"], {"chat_template": "chatml", "enable_thinking": False}) for line in picked]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)  # left-padded: one batch
    with torch.no_grad():
        out = ld.model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    for line, row in zip(picked, out[:, enc.input_ids.shape[1]:]):
        words = set(tok.decode(row, skip_special_tokens=True).split())
        assert bool(words & first_person) == (line["class"] == "FIRE"), (line["id"], words)
