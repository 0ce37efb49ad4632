"""Train the two tiny demo models of issue #16 on CPU, with a fixed seed, and write their folders.

    .venv/bin/python tools/train_demo.py                 # both models into models/trained-moe, models/trained-heads
    .venv/bin/python tools/train_demo.py --model moe --out /tmp/x   # one model, elsewhere
    .venv/bin/python tools/train_demo.py --check         # evaluate the folders already there, train nothing

* ``trained-moe``: a tiny Qwen3.5-MoE (4 layers: linear, full, linear, full attention; 8 routed experts,
  top-2, one shared expert) trained on the register corpus of :mod:`tools.demo_corpus`: ChatML turns
  (``enable_thinking: false``) whose answers continue a first-person self-description prompt in the
  inner register and a technical prompt in the outer register, with shared lexical anchors.
* ``trained-heads``: a tiny dense hybrid Qwen3.5 (the same layer pattern; 16 head slots) trained on
  made-up facts, cue pairs and filler (raw text, no chat template).

Each folder gets the weights (float32 safetensors), config, tokenizer (the builtin word-level
ChatML tokenizer of :mod:`capture.builtin`, which lockstep loads with ``PreTrainedTokenizerFast``),
``prompts.jsonl`` (the demo studies' prompt set), ``training.json`` (seed, corpus digest, library
versions, steps, losses, time, ``folder_identity``'s ``weights_sha256``, and the evaluation below) and
a README. Training is deterministic: a fixed seed, ``torch.use_deterministic_algorithms(True)`` and a
fixed thread count, so retraining on the same machine and library versions reproduces the weights bit
for bit (``training.json`` records what it was trained with; a different BLAS, CPU or thread count
may round differently).

The evaluation is exploratory context for the demo studies, not a claim: (a) how often greedy and
sampled continuations of each class's prompts stay in register, and which experts' routed weight on
the generated tokens differs most between the classes; (b) the clean and clean-minus-corrupted margins
of the pairs, and the drop in mean clean margin when each head slot is zero- or mean-ablated.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

from capture.builtin import make_tokenizer
from lockstep.models import folder_identity
from tools import demo_corpus as corpus

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
THREADS = 1

MOE = {
    "folder": "trained-moe", "seed": 1601, "corpus_seed": 16010, "prompt_seed": 16011, "n_documents": 6000,
    "steps": 800, "batch": 32, "lr": 3e-3, "warmup": 60, "weight_decay": 0.01, "max_len": 80,
    "router_aux_loss_coef": 0.01,
}
HEADS = {
    "folder": "trained-heads", "seed": 1602, "corpus_seed": 16020, "prompt_seed": 16021, "n_documents": 6000,
    "steps": 800, "batch": 32, "lr": 3e-3, "warmup": 60, "weight_decay": 0.01, "max_len": 64,
}


# ---------------------------------------------------------------------------------------------------
# models and data
# ---------------------------------------------------------------------------------------------------

def moe_config(vocab: list[str], hp: dict[str, Any]):
    from transformers import Qwen3_5MoeTextConfig

    return Qwen3_5MoeTextConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        moe_intermediate_size=64, shared_expert_intermediate_size=64, num_experts=8, num_experts_per_tok=2,
        router_aux_loss_coef=hp["router_aux_loss_coef"], layer_types=LAYER_TYPES, max_position_embeddings=512,
        eos_token_id=vocab.index("<|endoftext|>"), pad_token_id=vocab.index("<pad>"), bos_token_id=None,
        tie_word_embeddings=False)


def heads_config(vocab: list[str], hp: dict[str, Any]):
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, layer_types=LAYER_TYPES, max_position_embeddings=512,
        eos_token_id=vocab.index("<|endoftext|>"), pad_token_id=vocab.index("<pad>"), bos_token_id=None,
        tie_word_embeddings=False)


def chat_prompt(tok, text: str) -> str:
    """The prompt as a routing study with ``chat_template: chatml, enable_thinking: false`` renders it."""
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False,
                                   enable_thinking=False)


def moe_texts(tok, hp) -> tuple[list[str], list[dict]]:
    turns = corpus.register_turns(hp["corpus_seed"], hp["n_documents"])
    return [chat_prompt(tok, t["prompt"]) + t["response"] + "<|im_end|><|endoftext|>" for t in turns], turns


def heads_texts(tok, hp) -> tuple[list[str], list[str]]:
    docs = corpus.fact_documents(hp["corpus_seed"], hp["n_documents"])
    return [d + "<|endoftext|>" for d in docs], docs


def encode(tok, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask; refuses an unknown word or a text over ``max_len``."""
    pad, unk = tok.pad_token_id, tok.unk_token_id
    rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    for t, r in zip(texts, rows):
        if unk in r:
            raise SystemExit(f"train_demo: corpus text has a word outside the vocabulary: {t[:80]!r}")
        if len(r) > max_len:
            raise SystemExit(f"train_demo: corpus text of {len(r)} tokens exceeds max_len {max_len}: {t[:80]!r}")
    ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, (ids != pad).long()


def deterministic(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def train(model, ids: torch.Tensor, mask: torch.Tensor, hp: dict[str, Any], moe: bool, log) -> dict[str, Any]:
    """AdamW with linear warmup and cosine decay to 10%; batches drawn by a seeded generator."""
    import math

    gen = torch.Generator().manual_seed(hp["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps, warm = hp["steps"], hp["warmup"]

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses, started = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, ids.shape[0], (hp["batch"],), generator=gen)
        x, m = ids[idx], mask[idx]
        width = int(m.sum(dim=1).max())
        x, m = x[:, :width], m[:, :width]
        labels = x.masked_fill(m == 0, -100)
        kwargs = {"output_router_logits": True} if moe else {}
        out = model(input_ids=x, attention_mask=m, labels=labels, **kwargs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            log(f"  step {step:5d}  loss {losses[-1]:.4f}  ({time.perf_counter() - started:.0f} s)")
    model.eval()
    return {"train_seconds": round(time.perf_counter() - started, 1), "final_loss": round(losses[-1], 4),
            "final_loss_mean_last_50": round(sum(losses[-50:]) / 50, 4), "first_loss": round(losses[0], 4)}


@torch.no_grad()
def eval_loss(model, ids, mask, batch: int = 64) -> float:
    """Mean token cross-entropy (language-model loss only) over a held-out sample of the corpus."""
    total, count = 0.0, 0
    for i in range(0, ids.shape[0], batch):
        x, m = ids[i:i + batch], mask[i:i + batch]
        width = int(m.sum(dim=1).max())
        x, m = x[:, :width], m[:, :width]
        logits = model(input_ids=x, attention_mask=m).logits[:, :-1]
        target = x[:, 1:].masked_fill(m[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total, count = total + float(loss), count + int((target != -100).sum())
    return round(total / count, 4)


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def eval_moe(model, tok, lines: list[dict], max_new_tokens: int = 24) -> dict[str, Any]:
    """Greedy and sampled (temperature 1, seed 1234) continuations; register kept per class and split;
    per-expert mean routed weight on the generated tokens (greedy), FIRE minus NOFIRE."""
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    results: dict[str, Any] = {"max_new_tokens": max_new_tokens, "examples": {}}
    cfg = model.config
    weights: dict[str, list[torch.Tensor]] = {"FIRE": [], "NOFIRE": []}
    for mode in ("greedy", "sampled"):
        tally: dict[str, list[int]] = {}
        torch.manual_seed(1234)
        for line in lines:
            enc = tok(chat_prompt(tok, line["text"]), return_tensors="pt", add_special_tokens=False)
            kwargs = {"do_sample": False} if mode == "greedy" else {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tok.pad_token_id, **kwargs)
            new = out[0, enc.input_ids.shape[1]:]
            text = tok.decode(new, skip_special_tokens=True)
            label = corpus.register_label(text)
            want = "inner" if line["class"] == "FIRE" else "outer"
            key = f"{line['class']}/{line['split']}/{'hedged' if 'note' in line else 'plain'}"
            tally.setdefault(key, []).append(int(label == want))
            if mode == "greedy":
                results["examples"].setdefault(line["class"], []).append({"id": line["id"], "label": label, "text": text})
                if new.numel():
                    weights[line["class"]].append(_routed_weight(model, out, enc.input_ids.shape[1]))
        results[mode] = {k: {"in_register": sum(v), "n": len(v)} for k, v in sorted(tally.items())}
    for cls in weights:
        results["examples"][cls] = results["examples"][cls][:6]
    fire, nofire = torch.stack(weights["FIRE"]).mean(0), torch.stack(weights["NOFIRE"]).mean(0)
    diff = (fire - nofire).flatten()
    order = diff.abs().argsort(descending=True)[:6]
    e = cfg.num_experts
    results["experts_by_fire_minus_nofire_W_greedy"] = [
        {"unit": f"L{int(i) // e}E{int(i) % e}", "W_fire": round(float(fire.flatten()[i]), 4),
         "W_nofire": round(float(nofire.flatten()[i]), 4)} for i in order]
    return results


def _routed_weight(model, sequence: torch.Tensor, start: int) -> torch.Tensor:
    """[layers, experts] mean routed weight over the generated tokens of one teacher-forced sequence."""
    cfg = model.config
    rows: list[torch.Tensor] = []

    def hook(module, args, out):
        _, scores, indices = out
        dense = torch.zeros(scores.shape[0], cfg.num_experts).scatter(1, indices, scores.float())
        rows.append(dense[start:].mean(0))

    handles = [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers]
    try:
        model(input_ids=sequence)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows)


@torch.no_grad()
def margins(model, tok, pairs: list[dict], which: str, ablation=None, rows=None) -> torch.Tensor:
    """First-token logit(answer) - logit(wrong answer) at the last position of each pair's ``which`` prompt."""
    texts = [p[which] for p in pairs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ans = torch.tensor([tok(p["answer"], add_special_tokens=False).input_ids[0] for p in pairs])
    wrong = torch.tensor([tok(p["wrong_answer"], add_special_tokens=False).input_ids[0] for p in pairs])
    if ablation is None:
        logits = model(**enc).logits[:, -1]
    else:
        with ablation.ablating([rows] * len(pairs)):
            logits = model(**enc).logits[:, -1]
    idx = torch.arange(len(pairs))
    return (logits[idx, ans] - logits[idx, wrong]).float()


@torch.no_grad()
def eval_heads(model, tok, lines: list[dict]) -> dict[str, Any]:
    """Margins per class and split; each head slot's mean-drop of the heldout headline clean margin
    under zero and mean ablation (reference split, pooled means), with the control pairs' drop."""
    from capture.slots import SlotAblation, SlotMeans, slot_table

    out: dict[str, Any] = {}
    for cls in ("headline", "control"):
        for split in ("discovery", "heldout"):
            pairs = [p for p in lines if p["class"] == cls and p["split"] == split]
            clean, corrupt = margins(model, tok, pairs, "clean"), margins(model, tok, pairs, "corrupted")
            out[f"{cls}/{split}"] = {"n": len(pairs), "mean_clean_margin": round(float(clean.mean()), 3),
                                     "min_clean_margin": round(float(clean.min()), 3),
                                     "n_nonpositive_clean": int((clean <= 0).sum()),
                                     "mean_clean_minus_corrupted": round(float((clean - corrupt).mean()), 3)}
    slots = slot_table(model)
    refs = [p["text"] for p in lines if p["class"] == "reference"]
    recorder = SlotMeans(model, slots, positions=0)
    enc = tok(refs, return_tensors="pt", padding=True, add_special_tokens=False)
    with recorder.recording(enc.attention_mask):
        model(**enc)
    means = recorder.means()
    head = [p for p in lines if p["class"] == "headline" and p["split"] == "heldout"]
    ctrl = [p for p in lines if p["class"] == "control" and p["split"] == "heldout"]
    base_h, base_c = margins(model, tok, head, "clean"), margins(model, tok, ctrl, "clean")
    table = []
    for kind, ablation in (("zero", SlotAblation(model, slots)), ("mean", SlotAblation(model, slots, means))):
        for slot in slots:
            drop_h = base_h - margins(model, tok, head, "clean", ablation, [slot.label])
            drop_c = base_c - margins(model, tok, ctrl, "clean", ablation, [slot.label])
            table.append({"kind": kind, "slot": slot.label, "layer_type": slot.layer_type,
                          "headline_mean_drop": round(float(drop_h.mean()), 3),
                          "headline_relative_drop": round(float(drop_h.mean() / base_h.mean()), 3),
                          "control_mean_drop": round(float(drop_c.mean()), 3)})
    out["slot_ablation_heldout"] = sorted(table, key=lambda r: (r["kind"], -r["headline_mean_drop"]))
    return out


# ---------------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import safetensors
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "machine": platform.machine(), "system": platform.system(), "torch_threads": torch.get_num_threads(),
            "blas": torch.backends.cpu.get_cpu_capability()}


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


ABOUT = {
    "trained-moe": (
        "A tiny Qwen3.5-MoE (4 layers: linear, full, linear, full attention; 8 routed experts, top-2, one shared "
        "expert) trained here on a generated two-register corpus (tools/demo_corpus.py): ChatML turns "
        "(`enable_thinking: false`) whose user prompt asks for a first-person self-description or a third-person "
        "technical account, answered in the same register, with the same lexical anchors in both. Hedged prompts "
        "are answered in their class's register 70% of the time, so they may cross. `prompts.jsonl`: FIRE "
        "(self-description) and NOFIRE (technical) prompts in the prompt-routing schema, matched by anchor, with a "
        "`discovery` and a `heldout` split. A routing study loads it with `model.source: path`, "
        "`runtime.chat_template: chatml`, `enable_thinking: false`."),
    "trained-heads": (
        "A tiny dense hybrid Qwen3.5 (4 layers: linear, full, linear, full attention; 16 head slots) trained here "
        "on generated made-up facts (\"the capital of veltoria is marn\", \"the symbol for zorbium is qx\"), cue "
        "pairs (\"the clock says tick tock\") and filler (tools/demo_corpus.py), as raw text. `prompts.jsonl`: "
        "clean/corrupted pairs in the prompt-ablation schema: `headline` (facts; templates split between "
        "`discovery` and `heldout`), `control` (cue pairs), and a template-matched `reference` split (facts no pair "
        "uses). An ablation study loads it with `model.source: path`, `runtime.chat_template: none`."),
}


def readme(note: dict[str, Any]) -> str:
    """The folder's README: what it is, how it was made, and its identity (from ``training.json``)."""
    hp, v = note["hyperparameters"], note["versions"]
    lines = [
        f"# {note['model']}: a tiny model trained for the lockstep demo (synthetic)", "",
        ABOUT[note["model"]], "",
        "Nothing about this model is evidence about any real model; its entities and texts are made up.", "",
        "| | |", "|---|---|",
        f"| trained by | `{note['command']}` ({note['training_script']}, corpus from {note['corpus_generator']}) |",
        (f"| seed | {note['seed']} (corpus seed {hp['corpus_seed']}, prompt seed {hp['prompt_seed']}); "
         f"deterministic algorithms, {note['threads']} torch thread |"),
        f"| corpus | {note['corpus']['documents']} documents, sha256 `{note['corpus']['sha256']}` |",
        f"| steps | {hp['steps']} of batch {hp['batch']}, AdamW lr {hp['lr']} (warmup {hp['warmup']}, cosine to 10%) |",
        (f"| loss | first {note['first_loss']}, final {note['final_loss']} (mean of last 50: "
         f"{note['final_loss_mean_last_50']}), held-out corpus {note['heldout_corpus_loss']} |"),
        (f"| parameters | {note['parameters']:,} (float32, `model.safetensors` "
         f"{note['weight_files']['model.safetensors']['bytes']:,} bytes) |"),
        (f"| versions | python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
         f"tokenizers {v['tokenizers']}, safetensors {v['safetensors']} |"),
        f"| machine | {note['machine']['cpu']} ({note['machine']['blas']}), {note['train_seconds']} s of training |",
        f"| `model.weights_sha256` | `{note['weights_sha256']}` |",
        f"| `model.tokenizer_sha256` | `{note['tokenizer_sha256']}` |", "",
        ("The two digests are `lockstep.models.folder_identity` of this folder: pin them in a study's `model` block. "
         "Retraining with the same command, versions and thread count on the same machine gives the same weights bit "
         "for bit; another CPU or BLAS may round differently. `training.json` holds the full record, with the "
         "exploratory evaluation (`.venv/bin/python tools/train_demo.py --check` recomputes it from the committed "
         "files; `--check --update` writes it back)."), ""]
    return "\n".join(lines)


def build(kind: str, out_root: Path, steps: int | None, log) -> Path:
    """Train one model and write its folder; return the folder."""
    hp = dict(MOE if kind == "moe" else HEADS)
    if steps is not None:
        hp["steps"] = steps
    vocab = corpus.register_vocabulary() if kind == "moe" else corpus.fact_vocabulary()
    tok = make_tokenizer(vocab)
    texts, raw = (moe_texts if kind == "moe" else heads_texts)(tok, hp)
    ids, mask = encode(tok, texts, hp["max_len"])
    lines = corpus.register_prompt_lines(hp["prompt_seed"]) if kind == "moe" else corpus.fact_prompt_lines(hp["prompt_seed"])
    held_texts, _ = (moe_texts if kind == "moe" else heads_texts)(tok, {**hp, "corpus_seed": hp["corpus_seed"] + 7,
                                                                       "n_documents": 256})
    held_ids, held_mask = encode(tok, held_texts, hp["max_len"])

    deterministic(hp["seed"], THREADS)
    if kind == "moe":
        from transformers import Qwen3_5MoeForCausalLM
        model = Qwen3_5MoeForCausalLM(moe_config(vocab, hp))
    else:
        from transformers import Qwen3_5ForCausalLM
        model = Qwen3_5ForCausalLM(heads_config(vocab, hp))
    log(f"{hp['folder']}: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(vocab)}, "
        f"{len(texts)} documents, {hp['steps']} steps of {hp['batch']}")
    stats = train(model, ids, mask, hp, kind == "moe", log)
    stats["heldout_corpus_loss"] = eval_loss(model, held_ids, held_mask)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id

    folder = out_root / hp["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_jsonl(folder / "prompts.jsonl", lines)
    identity = folder_identity(folder)
    evaluation = eval_moe(model, tok, lines) if kind == "moe" else eval_heads(model, tok, lines)
    note = {
        "model": hp["folder"], "synthetic": True, "trained": True,
        "training_script": "tools/train_demo.py", "corpus_generator": "tools/demo_corpus.py",
        "command": f".venv/bin/python tools/train_demo.py --model {kind}",
        "seed": hp["seed"], "hyperparameters": hp, "threads": THREADS,
        "deterministic": "torch.manual_seed(seed); torch.use_deterministic_algorithms(True); torch.set_num_threads(threads)",
        "corpus": {"documents": len(raw), "sha256": corpus.digest(raw),
                   "digest_of": "canonical JSON lines of the generated documents (demo_corpus.digest)"},
        "prompts_sha256": corpus.digest(lines), "vocabulary_size": len(vocab),
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions(), "machine": machine(), **stats,
        "weights_sha256": identity["weights_sha256"], "tokenizer_sha256": identity["tokenizer_sha256"],
        "weight_files": {name: {"sha256": sha, "bytes": (folder / name).stat().st_size}
                         for name, sha in identity["weight_files"].items()},
        "evaluation": evaluation,
    }
    (folder / "training.json").write_text(json.dumps(note, indent=2) + "\n")
    (folder / "README.md").write_text(readme(note))
    log(f"{hp['folder']}: final loss {stats['final_loss']}, heldout corpus loss {stats['heldout_corpus_loss']}, "
        f"{stats['train_seconds']} s, weights_sha256 {identity['weights_sha256']}")
    return folder


def check(folder: Path, kind: str, update: bool = False) -> dict[str, Any]:
    """Evaluate a folder already written (loaded through lockstep's loader), and compare its digest.

    ``update`` first rewrites ``prompts.jsonl`` from the generator, then writes the new evaluation and the
    prompts' digest into ``training.json`` and the README (the weights and tokenizer are not touched:
    prompts are not part of the folder's identity)."""
    hp = MOE if kind == "moe" else HEADS
    if update:
        write_jsonl(folder / "prompts.jsonl", corpus.register_prompt_lines(hp["prompt_seed"]) if kind == "moe"
                    else corpus.fact_prompt_lines(hp["prompt_seed"]))
    from lockstep.models import ModelSource, load_model, load_tokenizer

    lines = [json.loads(x) for x in (folder / "prompts.jsonl").read_text().splitlines() if x.strip()]
    texts = [v for line in lines for k, v in line.items() if k in ("text", "clean", "corrupted", "answer", "wrong_answer")]
    tok, _ = load_tokenizer(folder, texts)
    torch.set_num_threads(THREADS)
    model = load_model(ModelSource(folder, "local", None), dtype="float32", trust_remote_code=False, device_map=None)
    note = json.loads((folder / "training.json").read_text())
    identity = folder_identity(folder)
    evaluation = eval_moe(model, tok, lines) if kind == "moe" else eval_heads(model, tok, lines)
    matches = identity["weights_sha256"] == note["weights_sha256"]
    if update and matches:
        note["evaluation"], note["prompts_sha256"] = evaluation, corpus.digest(lines)
        (folder / "training.json").write_text(json.dumps(note, indent=2) + "\n")
        (folder / "README.md").write_text(readme(note))
    return {"weights_sha256_matches": matches, "evaluation": evaluation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("moe", "heads", "both"), default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "models", help="parent folder of the model folders (default: models/)")
    parser.add_argument("--steps", type=int, default=None, help="override the training steps (for a quick trial)")
    parser.add_argument("--check", action="store_true", help="evaluate the folders under --out instead of training")
    parser.add_argument("--update", action="store_true", help="with --check: write the evaluation into training.json")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    kinds = ("moe", "heads") if args.model == "both" else (args.model,)
    for kind in kinds:
        folder = args.out / (MOE if kind == "moe" else HEADS)["folder"]
        if args.check:
            if not (folder / "training.json").is_file():
                log(f"train_demo: {folder} has no training.json; train it first (drop --check)")
                return 1
            result = check(folder, kind, update=args.update)
            print(json.dumps({kind: result}, indent=2))
            if not result["weights_sha256_matches"]:
                log(f"train_demo: {folder}: the weights are not those training.json records (weights_sha256 differs)")
                return 1
        else:
            build(kind, args.out, args.steps, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
