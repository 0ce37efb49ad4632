"""The demo SAE of demo-ablation: an analytic TopK SAE at ``3.mid`` of the builtin tiny hybrid Qwen3.5.

Synthetic, like the model it reads (:mod:`capture.builtin_heads`). Its 128 features are the two signs
of an orthonormal basis ``Q`` of the 64-channel residual stream (feature ``+q`` reads ``x · q`` and
writes ``q``; ``-q`` the opposite), with TopK ``k`` = :data:`K`, so it reconstructs the stream up to the
components TopK drops. Two basis directions are chosen, the rest are seeded random:

* the **planted** feature :data:`PLANTED` reads and writes ``d``, the unit sum of the unembedding
  directions of the cities of the even-numbered facts (marn, pesk, lisk, quem, sorn, fitch), the
  share of the planted head L3H2's output those facts have in common; with encoder bias
  ``-THRESHOLD`` (0) it is active where that share is positive and among the ``k`` largest, which is
  at the last token of most headline pairs whose answer is one of those cities (their wrong answers
  are odd-numbered cities). Knocking it down removes ``z · d`` and lowers the answer's logit more than
  the wrong answer's: the margin drops (by about 0.77 logits over its 10 active headline pairs);
* the **null** feature :data:`NULL` reads and writes ``n``, a seeded direction orthogonal to ``d`` and
  to every answer's unembedding row (cities and cue partners): knocking it down moves the margins only
  through layer 3's MLP and the final norm, by little and in no consistent direction.

The checkpoint is committed in SAELens layout under ``preregistrations/demo-ablation/sae/`` (66 KB of
float32 weights), frozen with the study (``files``) and pinned by digest (``ablation.saes``), rather than
built at capture like the model: a study pins an SAE's bytes, and a rebuild goes through a QR
decomposition whose last bits may differ between BLAS builds, which would break the pin on another
machine. ``python -m capture.builtin_sae`` rewrites it from the current builtin model, and a test checks
that the committed file still matches that build (within float tolerance).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .builtin_heads import CUES, FACTS, HIDDEN

HOOK_POINT = "3.mid"
WIDTH = 2 * HIDDEN
K = 48
THRESHOLD = 0.0
PLANTED = 37
NULL = 90
SEED = 1
GROUP = tuple(city for i, (_, city) in enumerate(FACTS) if i % 2 == 0)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def demo_sae_tensors(lm_head: torch.Tensor, vocab: dict[str, int]) -> dict[str, torch.Tensor]:
    """``W_enc [64, 128]``, ``b_enc``, ``W_dec [128, 64]``, ``b_dec`` of the demo SAE for this output head."""
    head = lm_head.detach().double()
    d = _unit(sum(_unit(head[vocab[c]]) for c in GROUP))
    answers = torch.stack([head[vocab[w]] for pair in FACTS + CUES for w in pair[1:]] + [d])
    gen = torch.Generator().manual_seed(SEED)
    basis, _ = torch.linalg.qr(answers.T)                      # span of every answer row and d
    n = torch.randn(HIDDEN, generator=gen, dtype=torch.float64)
    n = _unit(n - basis @ (basis.T @ n))
    rest, r = torch.linalg.qr(torch.cat([d[:, None], n[:, None], torch.randn(HIDDEN, HIDDEN - 2, generator=gen,
                                                                            dtype=torch.float64)], dim=1))
    rest = rest * torch.sign(torch.diagonal(r))[None, :]      # column 0 is d, column 1 is n
    directions = torch.cat([rest, -rest], dim=1).T             # [128, 64]: +q_0 (= d), +q_1 (= n), ..., -q_0, ...
    order = [i for i in torch.randperm(WIDTH, generator=gen).tolist() if i not in (0, 1)]
    slots = [s for s in range(WIDTH) if s not in (PLANTED, NULL)]
    index = {PLANTED: 0, NULL: 1, **dict(zip(slots, order))}
    w_dec = torch.stack([directions[index[s]] for s in range(WIDTH)])
    b_enc = torch.zeros(WIDTH, dtype=torch.float64)
    b_enc[PLANTED] = -THRESHOLD
    return {"W_enc": w_dec.T.contiguous().float(), "b_enc": b_enc.float(), "W_dec": w_dec.contiguous().float(),
            "b_dec": torch.zeros(HIDDEN)}


def saelens_config() -> dict:
    return {"architecture": "topk", "d_in": HIDDEN, "d_sae": WIDTH, "k": K, "hook_name": HOOK_POINT,
            "model_name": "lockstep/tiny-qwen3_5-planted-head", "normalize_activations": "none", "dtype": "float32",
            "description": "Synthetic analytic TopK SAE for demo-ablation (capture/builtin_sae.py); not trained."}


def write_saelens(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``cfg.json`` and ``sae_weights.safetensors`` in ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(saelens_config(), indent=2, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))


def demo_model(study: Path, cache: Path):
    """The builtin model and tokenizer exactly as capture builds them for the study in ``study``."""
    import yaml

    from . import builtin, builtin_heads, runtime

    spec = yaml.safe_load((Path(study) / "study.yaml").read_text())
    prompts = [json.loads(line) for line in (Path(study) / "prompts.jsonl").read_text().splitlines() if line.strip()]
    texts = [p[k] for p in prompts for k in runtime.PROMPT_TEXT_FIELDS if isinstance(p.get(k), str)]
    folder = builtin_heads.ensure_builtin(spec["model"]["builtin"], Path(cache), builtin.words_of(texts))
    tok, _ = runtime.load_tokenizer(folder, texts)
    model = runtime.load_model(runtime.ModelSource(folder, "builtin", builtin_heads.BUILDER_VERSION), dtype="float32",
                               trust_remote_code=False, device_map=None)
    return model, tok


def main(argv: list[str]) -> int:
    """``python -m capture.builtin_sae [study folder] [cache folder]``: rewrite the study's ``sae/``."""
    import tempfile

    study = Path(argv[0] if argv else "preregistrations/demo-ablation")
    cache = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="lockstep-sae-"))
    model, tok = demo_model(study, cache)
    write_saelens(study / "sae", demo_sae_tensors(model.lm_head.weight, tok.get_vocab()))
    print(f"wrote {study / 'sae'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
