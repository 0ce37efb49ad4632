"""Source tracing on the builtin hybrid Qwen3.5 with the planted head L3H2, against independent references:
the model's own clean and corrupted runs one unpadded sequence at a time, and a patch done by hand (a hook
that writes a separately computed clean residual into a batch-of-one corrupted run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from studyrepo import commit_all, copy_study, git, make_writable

from capture import builtin_heads, runtime
from capture.designs.ablation import MarginForward
from capture.run import run_capture
from capture.slots import slot_table
from capture.source_trace import (
    Cell,
    decoder_layers,
    parse_layers,
    position_index,
    restored_fraction,
    trace_pairs,
)
from lockstep.errors import CaptureError
from lockstep.freeze import freeze
from lockstep.gate import require_frozen

PLANT = {"name": "tiny-qwen3_5", "seed": 0, "plant": {"layer": 3, "head": 2, "strength": 12.0}}
WORDS = ("the", "capital", "of", "is", "in", "city", "veltoria", "osmira", "lumeria", "tarskon", "marn", "tolv", "lisk",
         "varo")
# (clean, corrupted, answer, wrong answer): two templates of different lengths, so one forward mixes left padding
PAIRS = [("the capital of veltoria is", "the capital of osmira is", " marn", " tolv"),
         ("in lumeria the capital city is", "in tarskon the capital city is", " lisk", " varo"),
         ("the capital of osmira is", "the capital of lumeria is", " tolv", " lisk")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = builtin_heads.ensure_builtin(PLANT, tmp_path_factory.mktemp("models"), WORDS)
    tok, _ = runtime.load_tokenizer(folder, [c for c, *_ in PAIRS])
    model = runtime.load_model(runtime.ModelSource(folder, "builtin", builtin_heads.BUILDER_VERSION),
                               dtype="float32", trust_remote_code=False, device_map=None)
    slot = next(s for s in slot_table(model) if s.label == "L3H2")
    ids = lambda text: tok(text, add_special_tokens=False).input_ids
    pairs = [(ids(c), ids(k), ids(a)[0], ids(w)[0]) for c, k, a, w in PAIRS]
    return model, tok, slot, pairs


def _alone(model, slot, ids, a, b, patch=None):
    """One unpadded sequence: (margin from the model's own logits, L3H2's slot at the last position); ``patch``
    = (layer, position, vector) replaces the residual entering that layer at that position."""
    seen, handles = {}, []
    proj = dict(model.named_modules())[slot.module]
    handles.append(proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("slot", args[0][0, -1, slot.start:slot.stop].clone())))
    if patch is not None:
        layer, pos, vector = patch

        def put(module, args, kwargs):
            hidden = args[0].clone()
            hidden[0, pos] = vector
            return (hidden, *args[1:]), kwargs
        handles.append(decoder_layers(model)[layer].register_forward_pre_hook(put, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    finally:
        for h in handles:
            h.remove()
    return float(logits[a] - logits[b]), seen["slot"].double().numpy()


def _clean_residual(model, ids, layer):
    seen = {}
    handle = decoder_layers(model)[layer].register_forward_pre_hook(lambda m, args: seen.__setitem__("h", args[0][0].clone()))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return seen["h"]


def test_patching_every_position_reproduces_the_clean_run_and_nothing_the_corrupted(built):
    model, _, slot, pairs = built
    fwd = MarginForward(model, model.config.pad_token_id)
    n_layers = len(decoder_layers(model))
    cells = [[Cell(layer, tuple(range(len(c)))) for layer in range(n_layers)] + [Cell(0, ())] for c, *_ in pairs]
    results = trace_pairs(fwd, model, [slot], pairs, cells, stack=64)
    assert fwd.forwards == 1  # every pair and cell stacked in one forward, two prompt lengths padded together
    for (clean, corrupted, a, b), res in zip(pairs, results):
        clean_margin, clean_slot = _alone(model, slot, clean, a, b)
        corrupted_margin, corrupted_slot = _alone(model, slot, corrupted, a, b)
        assert clean_margin - corrupted_margin > 2.0  # the planted fact: the clean margin is well above the corrupted one
        assert res.clean_margin == pytest.approx(clean_margin, abs=1e-3)
        assert res.corrupted_margin == pytest.approx(corrupted_margin, abs=1e-3)
        np.testing.assert_allclose(res.clean_slot["L3H2"], clean_slot, atol=1e-4)
        np.testing.assert_allclose(res.corrupted_slot["L3H2"], corrupted_slot, atol=1e-4)
        # every position at any layer up to the slot's: the clean run from there on, at the slot and the margin
        np.testing.assert_allclose(res.patched_margin[:n_layers], clean_margin, atol=1e-3)
        np.testing.assert_allclose(res.patched_slot["L3H2"][:n_layers], np.tile(clean_slot, (n_layers, 1)), atol=1e-4)
        np.testing.assert_allclose(res.margin_restored()[:n_layers], 1.0, atol=1e-4)
        np.testing.assert_allclose(res.slot_restored("L3H2")[:n_layers], 1.0, atol=1e-4)
        # no position patched: the corrupted run
        assert res.patched_margin[-1] == pytest.approx(corrupted_margin, abs=1e-3)
        np.testing.assert_allclose(res.patched_slot["L3H2"][-1], corrupted_slot, atol=1e-4)
        assert abs(res.margin_restored()[-1]) < 1e-4 and abs(res.slot_restored("L3H2")[-1]) < 1e-4


def test_one_cell_matches_a_patch_by_hand_and_does_not_depend_on_stacking(built):
    model, tok, slot, pairs = built
    clean, corrupted, a, b = pairs[1]
    subject = position_index("first_diff", clean, corrupted)
    assert tok.decode([clean[subject]]).strip() == "lumeria"
    cells = [[Cell(layer, (pos,)) for layer in range(4) for pos in range(len(clean))]]
    stacked = trace_pairs(MarginForward(model, model.config.pad_token_id), model, [slot], [pairs[1]], cells, stack=256)[0]
    narrow_fwd = MarginForward(model, model.config.pad_token_id)
    narrow = trace_pairs(narrow_fwd, model, [slot], [pairs[1]], cells, stack=5)[0]
    assert narrow_fwd.forwards == 8  # 24 cells, 3 per forward beside the clean and corrupted rows
    np.testing.assert_allclose(narrow.patched_margin, stacked.patched_margin, atol=1e-4)
    for c, cell in enumerate(cells[0]):
        if (cell.layer, cell.positions[0]) not in {(2, subject), (1, len(clean) - 1), (3, 0)}:
            continue
        vector = _clean_residual(model, clean, cell.layer)[cell.positions[0]]
        margin, out = _alone(model, slot, corrupted, a, b, patch=(cell.layer, cell.positions[0], vector))
        assert stacked.patched_margin[c] == pytest.approx(margin, abs=1e-3)
        np.testing.assert_allclose(stacked.patched_slot["L3H2"][c], out, atol=1e-4)


def test_the_planted_signal_is_found_at_the_subject_and_not_at_an_irrelevant_position(built):
    model, _, slot, pairs = built
    cells = []
    for clean, corrupted, *_ in pairs:
        subject = position_index("first_diff", clean, corrupted)
        cells.append([Cell(layer, (subject,)) for layer in range(4)] + [Cell(layer, (0,)) for layer in range(4)])
    results = trace_pairs(MarginForward(model, model.config.pad_token_id), model, [slot], pairs, cells, stack=256)
    for res in results:
        slot_frac, margin_frac = res.slot_restored("L3H2"), res.margin_restored()
        # the land token carries the code L3H2 reads: patching it restores most of the head's output and the margin
        assert (slot_frac[:4] > 0.7).all() and (margin_frac[:4] > 0.7).all()
        assert slot_frac[0] == pytest.approx(1.0, abs=1e-4)  # at the embeddings the land is the only difference
        # position 0 holds the same token in both prompts and precedes the land: patching it changes nothing
        np.testing.assert_allclose(slot_frac[4:], 0.0, atol=1e-4)
        np.testing.assert_allclose(margin_frac[4:], 0.0, atol=1e-4)


def test_positions_layers_and_the_restored_fraction():
    clean, corrupted = [1, 2, 3, 4, 5], [1, 2, 9, 4, 5]
    assert [position_index(k, clean, corrupted) for k in (-1, -5, -6, 0, 4, 5, "last", "first_diff")] == \
        [4, 0, None, 0, 4, None, 4, 2]
    assert position_index("first_diff", clean, clean) is None
    with pytest.raises(CaptureError, match="not an integer"):
        position_index("subject", clean, corrupted)
    assert parse_layers("all", 4) == [0, 1, 2, 3] and parse_layers("1-2", 4) == [1, 2] and parse_layers([3, 0, 3], 4) == [0, 3]
    with pytest.raises(CaptureError, match=r"names layer\(s\) \[4\], but the model has decoder layers 0..3"):
        parse_layers("2-4", 4)
    with pytest.raises(CaptureError, match="not 'all', 'a-b'"):
        parse_layers("3-1", 4)
    c, k = np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 0.0])
    patched = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.5, 1.0, 7.0], [2.0, 4.0, 0.0]])
    # the projection onto c - k as a fraction of its length: (p - k) . (c - k) / |c - k|^2, by hand
    np.testing.assert_allclose(restored_fraction(patched, c, k), [1.0, 0.0, 0.5, 2.0])
    assert np.isnan(restored_fraction(patched, c, c)).all()  # clean = corrupted: nothing to restore


def test_unaligned_pairs_and_positions_outside_the_prompt_are_refused(built):
    model, _, slot, pairs = built
    clean, _, a, b = pairs[0]
    fwd = MarginForward(model, model.config.pad_token_id)
    with pytest.raises(CaptureError, match="have 5 and 6 tokens; source tracing patches position by position"):
        trace_pairs(fwd, model, [slot], [(clean, pairs[1][1], a, b)], [[Cell(0, (0,))]], stack=8)
    with pytest.raises(CaptureError, match=r"position\(s\) \[5\] outside 0..4"):
        trace_pairs(fwd, model, [slot], [pairs[0]], [[Cell(0, (5,))]], stack=8)
    assert fwd.forwards == 0


def test_capture_refuses_a_source_layer_the_model_lacks_before_any_forward(tmp_path):
    """Validation cannot know how many layers a model has; capture does, and refuses before computing anything."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    study = copy_study("demo-ablation", root)
    path = study / "study.yaml"
    spec = yaml.safe_load(path.read_text())
    next(a for a in spec["analyses"] if a["kind"] == "source_trace").update(metric="margin_restored", source_layers=[0, 2, 9])
    make_writable(path)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    commit_all(root, "add")
    freeze(study)
    commit_all(root, "freeze")
    with pytest.raises(CaptureError, match=r"names layer\(s\) \[9\], but the model has decoder layers 0..3"):
        run_capture(require_frozen(study), runs_root=tmp_path / "runs", progress=False)
    assert not list((tmp_path / "runs").rglob("*.parquet"))
