"""Full-answer log-probability scoring and per-position (template-matched) reference means on the builtin hybrid
Qwen3.5, against independent references: the model's own float32 logits one unpadded sequence at a time, a
weights-edited copy of the model for zero ablation, and the no-op of a reference set that is the prompt itself."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from capture import builtin_heads, runtime
from capture.designs.ablation import (
    FULL_ANSWER,
    MarginForward,
    ablated_margins,
    score_margins,
)
from capture.slots import SlotAblation, SlotMeans, slot_table
from lockstep.errors import CaptureError

PLANT = {"name": "tiny-qwen3_5", "seed": 0, "plant": {"layer": 3, "head": 2, "strength": 12.0}}
WORDS = ("the", "capital", "of", "is", "in", "city", "veltoria", "osmira", "lumeria", "marn", "tolv", "pesk",
         "lisk", "drun", "clock", "says", "tick", "tock")
ITEMS = [("the capital of veltoria is", " marn", " tolv pesk"), ("in osmira the capital city is", " tolv drun", " marn"),
         ("the capital of lumeria is", " lisk", " pesk"), ("the clock says tick", " tock tick", " tick tock tick")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = builtin_heads.ensure_builtin(PLANT, tmp_path_factory.mktemp("models"), WORDS)
    tok, _ = runtime.load_tokenizer(folder, [t for t, _, _ in ITEMS])
    model = runtime.load_model(runtime.ModelSource(folder, "builtin", builtin_heads.BUILDER_VERSION),
                               dtype="float32", trust_remote_code=False, device_map=None)
    return model, tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def _encode(tok):
    return ([_ids(tok, t) for t, _, _ in ITEMS], [_ids(tok, a) for _, a, _ in ITEMS], [_ids(tok, w) for _, _, w in ITEMS])


def _reference_logprob(model, prompt, answer) -> float:
    """log p(answer | prompt), teacher-forced, from the model's own logits of one unpadded sequence (float64 softmax)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(answer)))


def test_full_answer_margin_is_the_teacher_forced_log_probability_difference(built):
    model, tok = built
    rows, answers, wrongs = _encode(tok)
    assert sorted({len(a) for a in answers + wrongs}) == [1, 2, 3]  # single- and multi-token answers, one batch
    got = score_margins(MarginForward(model, tok.pad_token_id), rows, answers, wrongs, FULL_ANSWER)
    for r, (row, a, w) in enumerate(zip(rows, answers, wrongs)):
        expected = _reference_logprob(model, row, a) - _reference_logprob(model, row, w)
        assert got[r] == pytest.approx(expected, abs=1e-4)


def test_single_token_full_answer_equals_the_first_token_logit_difference(built):
    model, tok = built
    rows = [_ids(tok, t) for t, _, _ in ITEMS]
    a, b = _ids(tok, " marn"), _ids(tok, " pesk")
    fwd = MarginForward(model, tok.pad_token_id)
    first = fwd.margins(rows, a * len(rows), b * len(rows))
    full = score_margins(fwd, rows, [a] * len(rows), [b] * len(rows), FULL_ANSWER)
    np.testing.assert_allclose(full, first, atol=1e-4)


def test_full_answer_zero_ablation_equals_silencing_the_head_at_every_position(built):
    """Zero-ablating L3H2 must act on the teacher-forced answer tokens too: compare with a copy of the model whose
    head 2 value rows in layer 3 are zeroed, scored without any hook."""
    model, tok = built
    rows, answers, wrongs = _encode(tok)
    other = copy.deepcopy(model)
    d = model.config.head_dim
    with torch.no_grad():
        other.model.layers[3].self_attn.v_proj.weight[2 * d:3 * d] = 0.0
    expected = score_margins(MarginForward(other, tok.pad_token_id), rows, answers, wrongs, FULL_ANSWER)
    abl = SlotAblation(model, slot_table(model))
    got = ablated_margins(MarginForward(model, tok.pad_token_id), abl, rows, answers, wrongs, [["L3H2"], ["L3H1"]],
                          stack=2, scoring=FULL_ANSWER)
    np.testing.assert_allclose(got[0], expected, atol=1e-4)
    assert np.max(np.abs(got[1] - expected)) > 1e-3


def _means(model, tok, texts, positions):
    fwd = MarginForward(model, tok.pad_token_id)
    acc = SlotMeans(model, slot_table(model), positions)
    rows = [_ids(tok, t) for t in texts]
    _, mask, _ = fwd.batch(rows)
    with acc.recording(mask):
        fwd.run(rows)
    return acc


def test_per_position_means_are_the_reference_activations_at_each_position_from_the_end(built):
    model, tok = built
    texts = ["the capital of veltoria is", "in osmira the capital city is", "the clock says tick"]
    acc = _means(model, tok, texts, 2)
    # independent: the o_proj input of layer 3, one unpadded prompt at a time
    seen = []
    handle = model.model.layers[3].self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].double()))
    try:
        with torch.no_grad():
            for t in texts:
                model(input_ids=torch.tensor([_ids(tok, t)]))
    finally:
        handle.remove()
    last = torch.stack([x[-1] for x in seen]).mean(0)
    second = torch.stack([x[-2] for x in seen]).mean(0)
    rest = torch.cat([x[:-2] for x in seen]).mean(0)
    got = acc.means()["L3H2"]
    assert got.shape == (3, 16) and acc.counts == [sum(len(x) for x in seen) - 6, 3, 3]
    for k, expected in ((0, rest), (1, last), (2, second)):
        torch.testing.assert_close(got[k].double(), expected[32:48], atol=1e-5, rtol=1e-5)


def test_per_position_mean_ablation_with_the_prompt_as_its_own_reference_is_a_no_op(built):
    """A 5-token prompt is its own reference with K = 4: positions 1-4 from the end get their own activations and
    the first token the mean of the only earlier token, itself. Pooled means (K = 0) are not a no-op. A longer,
    unablated row in the batch left-pads the prompt, so the alignment from the end is exercised."""
    model, tok = built
    prompt = "the capital of veltoria is"
    row = _ids(tok, prompt)
    assert len(row) == 5
    longer = _ids(tok, "in osmira the capital city is the")
    fwd = MarginForward(model, tok.pad_token_id)
    slots = slot_table(model)
    everything = [s.label for s in slots]
    a, b = _ids(tok, " marn")[0], _ids(tok, " tolv")[0]
    base = fwd.margins([row, longer], [a, a], [b, b])
    for positions, no_op in ((4, True), (0, False)):
        abl = SlotAblation(model, slots, _means(model, tok, [prompt], positions).means())
        with abl.ablating([everything, []]):
            got = fwd.margins([row, longer], [a, a], [b, b])
        if no_op:
            np.testing.assert_allclose(got, base, atol=1e-5)  # the means came from an unpadded forward
        else:
            assert abs(got[0] - base[0]) > 1e-3 and got[1] == base[1]


def test_per_position_means_refuse_a_reference_prompt_shorter_than_the_positions(built):
    model, tok = built
    with pytest.raises(CaptureError, match="a reference prompt has 3 token\\(s\\), fewer than the 4 positions"):
        _means(model, tok, ["the clock says", "the capital of veltoria is"], 4)
    with pytest.raises(CaptureError, match="no token is left for the mean of the earlier positions"):
        _means(model, tok, ["the clock says tick"], 4).means()
