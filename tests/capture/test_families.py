"""Tests of capture/families.py on tiny models of every supported family.

Each model is built from a transformers config with a fixed seed, saved with ``save_pretrained``
and loaded back with ``AutoModelForCausalLM.from_pretrained`` -- the loader users run. A forward
pass with public PyTorch hooks on ``site.router`` (forward hook) and ``site.experts`` (forward
pre-hook) must give routing that equals (a) ``reconstruct_routing`` of the hooked logits and (b) the
model's own router called directly on the hidden states captured at the block input.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import pytest
import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM

from capture.families import (
    SUPPORTED_FAMILIES,
    RouterSpec,
    compare_routing,
    find_moe_sites,
    looks_like_probabilities,
    reconstruct_routing,
    router_bias,
    router_scores,
    used_routing,
)
from lockstep.errors import CaptureError

VOCAB = 64
SEED = 1234
_ATTN = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, num_key_value_heads=2)


def _config(family: str):
    """A tiny config per family; ``expected`` = (MoE layers, {dense layer: reason}, top_k, n_experts)."""
    if family == "qwen3_5_moe":
        cfg = transformers.Qwen3_5MoeTextConfig(
            **{**_ATTN, "num_key_value_heads": 1}, num_hidden_layers=2, head_dim=16,
            moe_intermediate_size=16, shared_expert_intermediate_size=16, num_experts=16,
            num_experts_per_tok=4, layer_types=["linear_attention", "full_attention"],
            linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=8, linear_value_head_dim=8,
        )
        return cfg, ([0, 1], {}, 4, 16)
    if family == "qwen3_moe":
        cfg = transformers.Qwen3MoeConfig(
            **_ATTN, num_hidden_layers=3, head_dim=16, intermediate_size=64, moe_intermediate_size=16,
            num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[2],
        )
        return cfg, ([0, 1], {2: "dense MLP (mlp_only_layers / decoder_sparse_step)"}, 2, 8)
    if family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            **_ATTN, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=16,
            shared_expert_intermediate_size=32, num_experts=12, num_experts_per_tok=3,
            norm_topk_prob=False, mlp_only_layers=[0],
        )
        return cfg, ([1, 2], {0: "dense MLP (mlp_only_layers / decoder_sparse_step)"}, 3, 12)
    if family == "olmoe":
        cfg = transformers.OlmoeConfig(
            **_ATTN, num_hidden_layers=2, intermediate_size=16, num_experts=16, num_experts_per_tok=4,
            norm_topk_prob=False, pad_token_id=1, eos_token_id=2,
        )
        return cfg, ([0, 1], {}, 4, 16)
    if family == "mixtral":
        cfg = transformers.MixtralConfig(
            **_ATTN, num_hidden_layers=2, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
        )
        return cfg, ([0, 1], {}, 2, 8)
    if family == "deepseek_v3":
        cfg = transformers.DeepseekV3Config(
            **_ATTN, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=16,
            num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
            norm_topk_prob=True, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8,
        )
        return cfg, ([1, 2], {0: "dense MLP (first_k_dense_replace)"}, 4, 16)
    raise ValueError(family)


def _plant_bias(model) -> None:
    """Give every DeepSeek-V3 router a selection bias big enough to change some selections."""
    for module in model.modules():
        if hasattr(module, "e_score_correction_bias"):
            module.e_score_correction_bias.copy_(torch.randn(module.e_score_correction_bias.shape) * 0.05)


def _roundtrip(model, path):
    model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every family's tiny model, saved and loaded back once for the whole module."""
    models = {}
    for family in SUPPORTED_FAMILIES:
        torch.manual_seed(SEED)
        cfg, expected = _config(family)
        model = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():
            _plant_bias(model)
        models[family] = (_roundtrip(model, tmp_path_factory.mktemp(family)), expected)
    return models


@contextmanager
def _hooked(sites):
    """Hook every site's block (pre), router (forward) and experts (pre); always remove the hooks."""
    seen = {"input": {}, "logits": {}, "used": {}}
    handles = []
    for site in sites:
        def block_pre(module, args, kwargs, layer=site.layer):
            seen["input"][layer] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        def router_out(module, args, kwargs, output, site=site):
            seen["logits"][site.layer] = router_scores(site, output)

        def experts_pre(module, args, kwargs, site=site):
            seen["used"][site.layer] = used_routing(site, args, kwargs)

        handles.append(site.block.register_forward_pre_hook(block_pre, with_kwargs=True))
        handles.append(site.router.register_forward_hook(router_out, with_kwargs=True))
        handles.append(site.experts.register_forward_pre_hook(experts_pre, with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _forward(model, sites, tokens=(2, 9)):
    torch.manual_seed(SEED + 1)
    ids = torch.randint(3, VOCAB, tokens)
    with _hooked(sites) as seen, torch.no_grad():
        model(input_ids=ids)
    return seen


def _same_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.sort(dim=-1).values, b.sort(dim=-1).values)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_find_moe_sites_finds_moe_layers_and_lists_dense_ones(built, family):
    model, (moe_layers, dense, top_k, n_experts) = built[family]
    sites, skipped = find_moe_sites(model)
    assert [s.layer for s in sites] == moe_layers
    assert [s.name for s in sites] == [f"model.layers.{i}.mlp" for i in moe_layers]
    assert {s.spec.family for s in sites} == {family}
    assert {(s.spec.top_k, s.spec.n_experts) for s in sites} == {(top_k, n_experts)}
    assert {d["layer"]: d["reason"] for d in skipped} == dense
    for entry in skipped:
        assert entry["name"] == f"model.layers.{entry['layer']}.mlp"
        assert entry["class"] == type(model.get_submodule(entry["name"])).__name__


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_hooked_routing_matches_reconstruction_and_the_models_own_router(built, family):
    model, (moe_layers, _, top_k, _) = built[family]
    sites, _ = find_moe_sites(model)
    seen = _forward(model, sites)
    assert sorted(seen["used"]) == moe_layers
    for site in sites:
        logits = seen["logits"][site.layer]
        used_idx, used_w = seen["used"][site.layer]
        assert logits.shape == (18, site.spec.n_experts) and logits.dtype == torch.float32
        assert used_idx.shape == used_w.shape == (18, top_k) and used_idx.dtype == torch.int64
        rec_idx, rec_w, gap = reconstruct_routing(logits, site.spec, router_bias(site))
        report = compare_routing(used_idx, used_w, rec_idx, rec_w, gap, tol=1e-6)
        assert report["tokens"] == 18
        assert report["disagreements_outside_near_ties"] == 0
        assert report["set_disagreements"] <= report["near_ties"]
        assert report["weight_max_abs_diff"] <= 1e-5
        # independent reference: the model's own router on the hidden states seen at the block input
        hidden = seen["input"][site.layer]
        with torch.no_grad():
            ref_logits, ref_w, ref_idx = site.router(hidden.reshape(-1, hidden.shape[-1]))
        torch.testing.assert_close(logits, ref_logits.float(), rtol=0, atol=0)
        assert _same_sets(used_idx, ref_idx.long())
        torch.testing.assert_close(
            used_w.gather(1, used_idx.argsort(-1)), ref_w.float().gather(1, ref_idx.long().argsort(-1)),
            rtol=0, atol=1e-5,
        )


@pytest.mark.parametrize(
    ("family", "row_sum"),
    [("qwen3_5_moe", 1.0), ("mixtral", 1.0), ("qwen3_moe", 1.0), ("deepseek_v3", 2.5)],
)
def test_renormalised_weights_sum_to_the_scaling(built, family, row_sum):
    model, _ = built[family]
    sites, _ = find_moe_sites(model)
    used_w = _forward(model, sites)["used"][sites[-1].layer][1]
    torch.testing.assert_close(used_w.sum(-1), torch.full((18,), row_sum), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe"])
def test_families_without_renormalisation_keep_softmax_mass(built, family):
    model, _ = built[family]
    sites, _ = find_moe_sites(model)
    seen = _forward(model, sites)
    site = sites[0]
    assert site.spec.renormalize is False
    used_w = seen["used"][site.layer][1]
    assert bool((used_w.sum(-1) < 1 - 1e-3).all())
    # reconstructing with renormalisation would not match what the model used
    renorm = RouterSpec(**{**site.spec.__dict__, "renormalize": True})
    _, wrong_w, _ = reconstruct_routing(seen["logits"][site.layer], renorm)
    assert float((wrong_w.sort(-1).values - used_w.sort(-1).values).abs().max()) > 1e-2


def test_deepseek_v3_bias_survives_save_and_changes_selection(built):
    model, _ = built["deepseek_v3"]
    sites, _ = find_moe_sites(model)
    site = sites[0]
    spec = site.spec
    assert (spec.score_fn, spec.selection_bias, spec.routed_scaling, spec.n_group, spec.topk_group) == (
        "sigmoid", True, 2.5, 4, 2,
    )
    bias = router_bias(site)
    assert bias is not None and float(bias.abs().max()) > 0
    seen = _forward(model, sites, tokens=(4, 16))
    used_idx, _ = seen["used"][site.layer]
    logits = seen["logits"][site.layer]
    idx, _, _ = reconstruct_routing(logits, spec, bias)
    assert _same_sets(idx, used_idx)
    idx_no_bias, _, _ = reconstruct_routing(logits, spec, torch.zeros_like(bias))
    assert not _same_sets(idx_no_bias, used_idx)


def test_planted_near_tie_in_a_real_router_is_flagged(built):
    model, _ = built["qwen3_5_moe"]
    sites, _ = find_moe_sites(model)
    site = sites[1]
    k = site.spec.top_k
    logits = _forward(model, sites)["logits"][site.layer]
    order = logits[0].argsort(descending=True)
    kth, next_one = int(order[k - 1]), int(order[k])
    saved = site.router.weight.detach().clone()
    try:
        with torch.no_grad():  # expert k+1 of token 0 now scores exactly as expert k does
            site.router.weight[next_one] = site.router.weight[kth]
        seen = _forward(model, sites)
    finally:
        with torch.no_grad():
            site.router.weight.copy_(saved)
    tied = seen["logits"][site.layer]
    assert float(tied[0, kth] - tied[0, next_one]) == 0.0
    rec_idx, rec_w, gap = reconstruct_routing(tied, site.spec)
    assert float(gap[0]) < 1e-6
    report = compare_routing(*seen["used"][site.layer], rec_idx, rec_w, gap, tol=1e-6)
    assert report["near_ties"] >= 1
    assert report["disagreements_outside_near_ties"] == 0
    # as if another kernel broke the tie the other way: one set disagreement, inside a near-tie
    chosen, other = (kth, next_one) if kth in rec_idx[0].tolist() else (next_one, kth)
    assert other not in rec_idx[0].tolist()
    flipped = rec_idx.clone()
    flipped[0][flipped[0] == chosen] = other
    report = compare_routing(flipped, rec_w, rec_idx, rec_w, gap, tol=1e-6)
    assert (report["set_disagreements"], report["disagreements_outside_near_ties"]) == (1, 0)
    # with no tolerance the same flip is a real disagreement
    report = compare_routing(flipped, rec_w, rec_idx, rec_w, gap, tol=0.0)
    assert (report["disagreements_outside_near_ties"], report["examples_outside_near_ties"]) == (1, [0])


@pytest.mark.parametrize(("family", "max_diff"), [("qwen3_moe", 2.0**-9), ("mixtral", 1e-6)])
def test_bf16_model_weights_carry_the_rounding_the_spec_declares(built, family, max_diff):
    model, _ = built[family]
    model = copy.deepcopy(model).to(torch.bfloat16)
    sites, _ = find_moe_sites(model)
    seen = _forward(model, sites)
    site = sites[0]
    assert site.spec.weights_in_logits_dtype is (family == "qwen3_moe")
    rec_idx, rec_w, gap = reconstruct_routing(seen["logits"][site.layer], site.spec)
    report = compare_routing(*seen["used"][site.layer], rec_idx, rec_w, gap, tol=1e-6)
    assert report["disagreements_outside_near_ties"] == 0
    assert report["weight_max_abs_diff"] <= max_diff
    if site.spec.weights_in_logits_dtype:  # the cast to bf16 is visible, and within half an ulp
        assert report["weight_max_abs_diff"] > 0


def test_multimodal_qwen3_5_moe_sites_are_in_the_language_model():
    torch.manual_seed(SEED)
    text, _ = _config("qwen3_5_moe")
    vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                  patch_size=2, spatial_merge_size=1, temporal_patch_size=1)
    config = transformers.Qwen3_5MoeConfig(text_config=text.to_dict(), vision_config=vision)
    model = transformers.Qwen3_5MoeForConditionalGeneration(config)
    sites, skipped = find_moe_sites(model)
    assert [(s.layer, s.name) for s in sites] == [
        (0, "model.language_model.layers.0.mlp"), (1, "model.language_model.layers.1.mlp"),
    ]
    assert skipped == []


def test_compare_routing_counts_on_hand_made_rows():
    used_idx = torch.tensor([[3, 1], [0, 2], [4, 5], [1, 2]])
    used_w = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])
    rec_idx = torch.tensor([[1, 3], [0, 2], [4, 6], [1, 3]])  # row 0: same set, other order
    rec_w = torch.tensor([[0.3, 0.7], [0.6, 0.45], [0.5, 0.5], [0.9, 0.1]])
    gap = torch.tensor([0.2, 0.3, 1e-8, 0.4])
    report = compare_routing(used_idx, used_w, rec_idx, rec_w, gap, tol=1e-6)
    assert report == {
        "tokens": 4,
        "set_disagreements": 2,  # rows 2 and 3
        "weight_max_abs_diff": pytest.approx(0.05, abs=1e-7),  # row 1, expert 2
        "near_ties": 1,
        "disagreements_outside_near_ties": 1,
        "examples_outside_near_ties": [3],
    }


def test_reconstruct_softmax_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = [math.exp(v) for v in (2.0, 1.0, 0.0, -1.0)]
    p = [v / sum(p) for v in p]
    spec = RouterSpec("qwen3_5_moe", n_experts=4, top_k=2, score_fn="softmax", renormalize=True)
    idx, w, gap = reconstruct_routing(logits, spec)
    assert idx.tolist() == [[0, 1]]
    torch.testing.assert_close(w, torch.tensor([[p[0] / (p[0] + p[1]), p[1] / (p[0] + p[1])]]))
    # the gap is read where the router ranks, the logits: (1.0 - 0.0) / max(1, |1.0|)
    torch.testing.assert_close(gap, torch.tensor([1.0]))
    olmoe = RouterSpec("olmoe", n_experts=4, top_k=2, score_fn="softmax", renormalize=False)
    _, w, _ = reconstruct_routing(logits, olmoe)
    torch.testing.assert_close(w, torch.tensor([[p[0], p[1]]]))
    every = RouterSpec("olmoe", n_experts=4, top_k=4, score_fn="softmax", renormalize=False)
    idx, _, gap = reconstruct_routing(logits, every)  # nothing left out: no tie can flip the set
    assert idx.tolist() == [[0, 1, 2, 3]] and gap.tolist() == [math.inf]


def test_reconstruct_deepseek_grouped_biased_by_hand():
    # 4 experts in 2 groups of 2, keep 1 group, top-2. Bias moves selection to group 1 ({2, 3});
    # weights come from the un-biased sigmoid scores, renormalised, then scaled by 2.
    logits = torch.tensor([[1.0, 0.9, 0.0, -0.2]])
    bias = torch.tensor([0.0, 0.0, 0.5, 0.5])
    spec = RouterSpec("deepseek_v3", 4, 2, "sigmoid", True, selection_bias=True, routed_scaling=2.0,
                      n_group=2, topk_group=1, weights_in_logits_dtype=False)
    idx, w, gap = reconstruct_routing(logits, spec, bias)
    s = [1 / (1 + math.exp(-v)) for v in (1.0, 0.9, 0.0, -0.2)]
    assert idx.tolist() == [[2, 3]]
    torch.testing.assert_close(w, torch.tensor([[2 * s[2] / (s[2] + s[3]), 2 * s[3] / (s[2] + s[3])]]))
    kept = s[2] + s[3] + 1.0  # the kept group's score (its two biased scores)
    group_gap = (kept - (s[0] + s[1])) / max(1.0, kept)  # kept minus dropped group, relative to the kept score
    torch.testing.assert_close(gap, torch.tensor([group_gap]))  # expert gap is inf: only 2 kept
    idx, _, _ = reconstruct_routing(logits, spec, torch.zeros(4))
    assert idx.tolist() == [[0, 1]]


def test_reconstruct_input_checks():
    spec = RouterSpec("mixtral", 8, 2, "softmax", True, weights_in_logits_dtype=False)
    with pytest.raises(ValueError, match=r"`logits` must be \[tokens, 8\]"):
        reconstruct_routing(torch.zeros(3, 7), spec)
    with pytest.raises(ValueError, match="`bias` was given"):
        reconstruct_routing(torch.zeros(3, 8), spec, torch.zeros(8))
    ds = RouterSpec("deepseek_v3", 8, 2, "sigmoid", True, selection_bias=True, n_group=3, topk_group=1)
    with pytest.raises(ValueError, match="`bias` is required"):
        reconstruct_routing(torch.zeros(3, 8), ds)
    with pytest.raises(ValueError, match="`spec.n_group`=3 must divide"):
        reconstruct_routing(torch.zeros(3, 8), ds, torch.zeros(8))
    with pytest.raises(ValueError, match="`tol` must be a finite number"):
        z = torch.zeros(2, 2, dtype=torch.int64)
        compare_routing(z, z.float(), z, z.float(), torch.zeros(2), tol=-1)


def test_looks_like_probabilities():
    torch.manual_seed(SEED)
    logits = torch.randn(5, 16)
    assert looks_like_probabilities(logits.softmax(-1))
    assert looks_like_probabilities(logits.softmax(-1).to(torch.bfloat16))
    assert not looks_like_probabilities(logits)
    assert not looks_like_probabilities(logits.sigmoid())  # in [0, 1] but rows do not sum to 1
    assert not looks_like_probabilities(torch.empty(0, 16))


def test_router_scores_refuses_probabilities_and_wrong_width(built):
    model, _ = built["mixtral"]
    site = find_moe_sites(model)[0][0]
    logits = torch.randn(3, site.spec.n_experts)
    torch.testing.assert_close(router_scores(site, (logits, None, None)), logits)
    for probs in (logits.softmax(-1), logits.softmax(-1).to(torch.bfloat16)):
        with pytest.raises(CaptureError, match="look like probabilities"):
            router_scores(site, (probs, None, None))
    with pytest.raises(CaptureError, match=r"returned \(3, 5\)"):
        router_scores(site, (torch.randn(3, 5), None, None))


def test_used_routing_reads_keyword_call_and_refuses_wrong_width(built):
    model, _ = built["olmoe"]
    site = find_moe_sites(model)[0][0]
    idx = torch.tensor([[1, 2, 3, 4]], dtype=torch.int32)
    w = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.bfloat16)
    got_idx, got_w = used_routing(site, (torch.zeros(1, 32),), {"top_k_index": idx, "top_k_weights": w})
    assert got_idx.dtype == torch.int64 and got_idx.tolist() == [[1, 2, 3, 4]]
    assert got_w.dtype == torch.float32
    with pytest.raises(CaptureError, match="top_k=4"):
        used_routing(site, (torch.zeros(1, 32), idx[:, :2], w[:, :2]), {})


class TinyHomemadeMoE(nn.Module):
    """A routed block of a class no family registers."""

    def __init__(self, hidden: int, n_experts: int = 4):
        super().__init__()
        self.gate = nn.Linear(hidden, n_experts, bias=False)
        self.experts = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_experts))

    def forward(self, x):
        weights = self.gate(x).softmax(-1)
        return sum(w.unsqueeze(-1) * e(x) for w, e in zip(weights.unbind(-1), self.experts))


def _dense(tmp_path, family: str):
    torch.manual_seed(SEED)
    if family == "qwen3":
        cfg = transformers.Qwen3Config(**_ATTN, num_hidden_layers=2, head_dim=16, intermediate_size=64)
    else:
        cfg = transformers.LlamaConfig(**_ATTN, num_hidden_layers=2, intermediate_size=64)
    return _roundtrip(AutoModelForCausalLM.from_config(cfg), tmp_path / family)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_dense_model_has_no_moe_layer(tmp_path, family):
    model = _dense(tmp_path, family)
    with pytest.raises(CaptureError, match=f"no MoE layer found in .*model_type '{family}'"):
        find_moe_sites(model)


def test_unknown_moe_class_is_named(tmp_path):
    model = _dense(tmp_path, "qwen3")
    model.model.layers[1].mlp = TinyHomemadeMoE(32)
    with pytest.raises(CaptureError, match=r"model\.layers\.1\.mlp.*TinyHomemadeMoE.*qwen3_5_moe, qwen3_moe"):
        find_moe_sites(model)


def test_subclass_of_a_known_block_is_not_trusted(built):
    model, _ = built["mixtral"]
    block = model.model.layers[0].mlp
    subclass = type("PatchedMixtralSparseMoeBlock", (type(block),), {})
    original = block.__class__
    try:
        block.__class__ = subclass
        with pytest.raises(CaptureError, match="PatchedMixtralSparseMoeBlock"):
            find_moe_sites(model)
    finally:
        block.__class__ = original
    assert len(find_moe_sites(model)[0]) == 2


def test_replaced_router_is_refused(built):
    model, _ = built["qwen3_moe"]
    block = model.model.layers[0].mlp
    router = block.gate
    try:
        block.gate = nn.Linear(32, 8, bias=False)
        with pytest.raises(CaptureError, match=r"has torch\.nn\.modules\.linear\.Linear as \.gate"):
            find_moe_sites(model)
    finally:
        block.gate = router


def test_find_moe_sites_needs_a_module():
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        find_moe_sites("Qwen/Qwen3.5-35B-A3B")


def test_a_dominant_expert_does_not_make_clear_decisions_near_ties():
    """One expert takes nearly all the probability: the others' probabilities differ by ~1e-7 although their
    logits are 0.24 apart. Measured in probability space such rows were flagged; where the router ranks they
    are clear (a real near-tie, logits equal to the last bits, still is one)."""
    logits = torch.tensor([[20.0, 3.24, 3.0, -2.0], [20.0, 3.0, 3.0 + 1e-7, -2.0]])
    spec = RouterSpec("qwen3_5_moe", n_experts=4, top_k=2, score_fn="softmax", renormalize=True)
    probs = torch.softmax(logits, dim=-1)
    assert float(probs[0, 1] - probs[0, 2]) < 1e-7  # the old probability-space gap: below the 1e-5 tolerance
    _, _, gap = reconstruct_routing(logits, spec)
    assert float(gap[0]) == pytest.approx(0.24 / 3.24, rel=1e-5) and float(gap[0]) > 1e-5
    assert float(gap[1]) < 1e-5
