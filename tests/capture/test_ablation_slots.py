"""Head slots on the builtin hybrid Qwen3.5: the LxxHyy table on both layer types, the ablation hooks
against independent references (weights edited in a copy of the model), margins against the model's own
float32 logits, batched against one-at-a-time, and the mean-ablation no-op."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from capture import builtin_heads, runtime
from capture.designs.ablation import MarginForward, ablated_margins
from capture.slots import SlotAblation, SlotMeans, slot_summary, slot_table
from lockstep.errors import CaptureError

PLANT = {"name": "tiny-qwen3_5", "seed": 0, "plant": {"layer": 3, "head": 2, "strength": 12.0}}
WORDS = ("the", "capital", "of", "is", "in", "city", "clock", "says", "then", "sound", "went", "x")
HEADLINE = [("the capital of veltoria is", "marn", "tolv"), ("in osmira the capital city is", "tolv", "drun"),
            ("the capital of lumeria is", "lisk", "pesk"), ("the capital of zeldra is", "jalk", "norv"),
            ("in brenmark the capital city is", "embra", "sorn")]
CONTROL = [("the clock says tick", "tock", "pong"), ("then the sound went zig", "zag", "flop")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The planted builtin model and its tokenizer, saved and loaded back the way capture loads them."""
    folder = builtin_heads.ensure_builtin(PLANT, tmp_path_factory.mktemp("models"), WORDS)
    tok, loader = runtime.load_tokenizer(folder, [t for t, _, _ in HEADLINE + CONTROL])
    model = runtime.load_model(runtime.ModelSource(folder, "builtin", builtin_heads.BUILDER_VERSION),
                               dtype="float32", trust_remote_code=False, device_map=None)
    return model, tok, loader


def _encode(tok, items):
    rows = [tok(t, add_special_tokens=False).input_ids for t, _, _ in items]
    answer = [tok(" " + a, add_special_tokens=False).input_ids[0] for _, a, _ in items]
    wrong = [tok(" " + w, add_special_tokens=False).input_ids[0] for _, _, w in items]
    return rows, answer, wrong


def _fwd(model, tok) -> MarginForward:
    return MarginForward(model, tok.pad_token_id)


def test_slot_table_of_the_builtin_model_on_both_layer_types(built):
    model, _, _ = built
    slots = slot_table(model)
    assert [s.label for s in slots] == [f"L{l}H{h}" for l in range(4) for h in range(4)]
    table = {s.label: s for s in slots}
    assert table["L3H2"].to_dict() == {"label": "L3H2", "layer": 3, "head": 2, "layer_type": "full_attention",
                                       "module": "model.layers.3.self_attn.o_proj", "start": 32, "stop": 48}
    assert table["L0H3"].to_dict() == {"label": "L0H3", "layer": 0, "head": 3, "layer_type": "linear_attention",
                                       "module": "model.layers.0.linear_attn.out_proj", "start": 48, "stop": 64}
    assert slot_summary(slots) == {"slots": 16, "by_layer_type": {"full_attention": {"layers": 2, "slots": 8},
                                                                  "linear_attention": {"layers": 2, "slots": 8}}}
    assert [s.label for s in slot_table(model, "full_attention")] == [f"L{l}H{h}" for l in (1, 3) for h in range(4)]
    assert [s.label for s in slot_table(model, [2])] == ["L2H0", "L2H1", "L2H2", "L2H3"]
    with pytest.raises(CaptureError, match=r"names layer\(s\) \[7\] with no attention block"):
        slot_table(model, [2, 7])


def test_the_default_qwen3_5_4b_layout_has_896_slots():
    """The l31h14 study's slot count, from the transformers defaults, on a meta-device model (no weights)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    with torch.device("meta"):
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig())
    slots = slot_table(model)
    summary = slot_summary(slots)
    assert summary == {"slots": 896, "by_layer_type": {"full_attention": {"layers": 8, "slots": 128},
                                                       "linear_attention": {"layers": 24, "slots": 768}}}
    table = {s.label: s for s in slots}
    assert table["L31H14"].layer_type == "full_attention" and table["L31H14"].module == "model.layers.31.self_attn.o_proj"
    assert (table["L31H14"].start, table["L31H14"].stop) == (14 * 256, 15 * 256)
    assert table["L26H17"].layer_type == "linear_attention" and (table["L26H17"].start, table["L26H17"].stop) == (17 * 128, 18 * 128)
    assert "L27H16" not in table and "L26H31" in table


def _weights_copy(model, edit):
    other = copy.deepcopy(model)
    with torch.no_grad():
        edit(other)
    return other


def test_zero_ablating_a_slot_equals_silencing_that_head_upstream(built):
    """L3H2 (full attention): zero v_proj rows of head 2 (one kv head per head here) -> its output is 0.
    L0H3 (linear attention): zero the value-head-3 rows of in_proj_qkv -> its delta-rule output is 0."""
    model, tok, _ = built
    rows, a, b = _encode(tok, HEADLINE + CONTROL)
    slots = slot_table(model)
    abl = SlotAblation(model, slots)
    cfg = model.config
    d = cfg.head_dim
    key_dim = cfg.linear_key_head_dim * cfg.linear_num_key_heads
    dv = cfg.linear_value_head_dim

    def silence_full(m):
        m.model.layers[3].self_attn.v_proj.weight[2 * d:3 * d] = 0.0

    def silence_linear(m):
        m.model.layers[0].linear_attn.in_proj_qkv.weight[2 * key_dim + 3 * dv:2 * key_dim + 4 * dv] = 0.0

    for label, other_label, edit in (("L3H2", "L3H1", silence_full), ("L0H3", "L0H2", silence_linear)):
        expected = _fwd(_weights_copy(model, edit), tok).margins(rows, a, b)
        got = ablated_margins(_fwd(model, tok), abl, rows, a, b, [[label]], stack=1)[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        wrong_slot = ablated_margins(_fwd(model, tok), abl, rows, a, b, [[other_label]], stack=1)[0]
        assert np.max(np.abs(wrong_slot - expected)) > 1e-3  # the neighbouring slot is not the same head


def test_zero_ablating_every_head_of_a_layer_removes_the_attention_output(built):
    model, tok, _ = built
    rows, a, b = _encode(tok, HEADLINE + CONTROL)
    abl = SlotAblation(model, slot_table(model))
    for layer, proj in ((1, "self_attn.o_proj"), (2, "linear_attn.out_proj")):
        expected = _fwd(_weights_copy(model, lambda m: m.model.layers[layer].get_submodule(proj).weight.zero_()), tok).margins(rows, a, b)
        got = ablated_margins(_fwd(model, tok), abl, rows, a, b, [[f"L{layer}H{h}" for h in range(4)]], stack=1)[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert np.max(np.abs(got - _fwd(model, tok).margins(rows, a, b))) > 1e-3


def test_margin_is_the_float32_logit_difference_at_the_last_real_token(built):
    model, tok, _ = built
    rows, a, b = _encode(tok, HEADLINE + CONTROL)
    fwd = _fwd(model, tok)
    got = fwd.margins(rows, a, b)
    for r, row in enumerate(rows):  # one unpadded prompt at a time, the model's own logits
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row])).logits[0, -1].double()
        assert got[r] == pytest.approx(float(logits[a[r]] - logits[b[r]]), abs=1e-5)
    assert len({len(r) for r in rows}) > 1  # the batch above was left-padded


def test_batched_stacked_and_one_at_a_time_margins_agree(built):
    model, tok, _ = built
    items = HEADLINE + CONTROL
    rows, a, b = _encode(tok, items)
    slots = slot_table(model)
    means = {s.label: torch.randn(s.stop - s.start, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(slots)}
    abl = SlotAblation(model, slots, means)
    conditions = [[s.label] for s in slots] + [["L3H2", "L0H1", "L2H3"]]
    batched = ablated_margins(_fwd(model, tok), abl, rows, a, b, conditions, stack=6)
    single = np.array([[ablated_margins(_fwd(model, tok), abl, [row], [x], [y], [c], stack=1)[0, 0]
                        for row, x, y in zip(rows, a, b)] for c in conditions])
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert np.ptp(batched, axis=0).max() > 1e-2  # the conditions do differ


def test_mean_ablation_with_the_activation_as_the_mean_is_a_no_op(built):
    model, tok, _ = built
    one = tok("x", add_special_tokens=False).input_ids
    assert len(one) == 1
    fwd = _fwd(model, tok)
    slots = slot_table(model)
    acc = SlotMeans(model, slots)
    _, mask, _ = fwd.batch([one])
    with acc.recording(mask):
        fwd.run([one])
    abl = SlotAblation(model, slots, acc.means())
    a, b = tok(" marn", add_special_tokens=False).input_ids, tok(" tolv", add_special_tokens=False).input_ids
    base = fwd.margins([one], a, b)
    everything = [[s.label for s in slots]]
    np.testing.assert_array_equal(ablated_margins(fwd, abl, [one], a, b, everything, stack=1)[0], base)
    zero = ablated_margins(fwd, SlotAblation(model, slots), [one], a, b, everything, stack=1)[0]
    assert abs(zero[0] - base[0]) > 1e-2


def test_reference_means_skip_pads_and_do_not_depend_on_batching(built):
    model, tok, _ = built
    texts = ["the clock says tick", "x", "then the sound went zig", "in osmira the capital city is"]
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    fwd = _fwd(model, tok)
    slots = slot_table(model)

    def means(batches):
        acc = SlotMeans(model, slots)
        for chunk in batches:
            _, mask, _ = fwd.batch(chunk)
            with acc.recording(mask):
                fwd.run(chunk)
        return acc.means(), acc.n_tokens

    together, n = means([ids])
    apart, m = means([[i] for i in ids])
    assert n == m == sum(len(i) for i in ids)
    for label in together:
        torch.testing.assert_close(together[label], apart[label], atol=1e-5, rtol=1e-5)


def test_hooks_are_removed_even_when_the_forward_fails(built):
    model, tok, _ = built
    abl = SlotAblation(model, slot_table(model))
    proj = model.model.layers[3].self_attn.o_proj
    before = len(proj._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="the ablation plan has 2 rows but the forward has 1"):
        with abl.ablating([["L3H2"], ["L3H2"]]):
            _fwd(model, tok).run([tok("x", add_special_tokens=False).input_ids])
    assert len(proj._forward_pre_hooks) == before
    with pytest.raises(CaptureError, match="L9H0 is not a head slot"):
        with abl.ablating([["L9H0"]]):
            pass


def test_planted_head_carries_the_facts_and_the_null_twin_has_none(built, tmp_path):
    model, tok, _ = built
    for text, _, _ in HEADLINE + CONTROL:  # the tokenizer users load round-trips the study's words
        assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    rows, a, b = _encode(tok, HEADLINE)
    fwd = _fwd(model, tok)
    abl = SlotAblation(model, slot_table(model))
    drops = fwd.margins(rows, a, b)[None, :] - ablated_margins(fwd, abl, rows, a, b, [[f"L{l}H{h}"] for l in range(4) for h in range(4)], stack=16)
    assert drops.mean(axis=1).argmax() == 3 * 4 + 2 and drops[14].min() > 2.0
    null = builtin_heads.ensure_builtin({**PLANT, "plant": None}, tmp_path, WORDS)
    assert null.name != builtin_heads.ensure_builtin(PLANT, tmp_path, WORDS).name
    null_model = runtime.load_model(runtime.ModelSource(null, "builtin", builtin_heads.BUILDER_VERSION),
                                    dtype="float32", trust_remote_code=False, device_map=None)
    nf = _fwd(null_model, tok)
    null_drop = nf.margins(rows, a, b) - ablated_margins(nf, SlotAblation(null_model, slot_table(null_model)), rows, a, b, [["L3H2"]], stack=1)[0]
    assert np.abs(null_drop).max() < 0.5
    with pytest.raises(CaptureError, match="plant layer 2 is not a full-attention layer"):
        builtin_heads.build_spec({**PLANT, "plant": {"layer": 2, "head": 0}})
