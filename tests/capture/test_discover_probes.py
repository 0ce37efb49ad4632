"""The discovery probes' arithmetic (capture/discover.py), on the builtin tiny hybrid Qwen3.5.

Attribution patching is a first-order Taylor estimate. Where the margin is linear in the patched activation
it must equal exact patching: that is the case for the last layer's head slots once the final norm is the
identity and the last layer's MLP writes nothing (the margin is then a constant plus the slot's output
projection read by the output head at the last position). Elsewhere the two may differ, and the exact check
is there to say by how much.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from capture.builtin_heads import build_model, build_spec
from capture.discover import Probe, _attribution, _exact, _slot_attribution
from capture.slots import slot_table

PLANT = {"name": "tiny-qwen3_5", "seed": 0, "plant": {"layer": 3, "head": 2, "strength": 12.0}}


class IdentityNorm(nn.Module):
    """A final norm that passes the residual through unchanged (it keeps a `weight` so the probe finds it)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x


def _model(linear: bool):
    model = build_model(build_spec(PLANT))
    if linear:
        model.model.norm = IdentityNorm(model.config.hidden_size)
        with torch.no_grad():
            model.model.layers[-1].mlp.down_proj.weight.zero_()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _rows(seed: int, n: int, width: int, vocab: int) -> tuple[list[list[int]], list[list[int]]]:
    g = np.random.default_rng(seed)
    clean = [list(map(int, g.integers(5, vocab, size=width))) for _ in range(n)]
    corrupted = [row[:-2] + list(map(int, g.integers(5, vocab, size=2))) for row in clean]
    return clean, corrupted


@pytest.fixture(scope="module")
def linear_model():
    return _model(linear=True)


def test_attribution_equals_exact_patching_where_the_margin_is_linear(linear_model):
    model = linear_model
    slots = slot_table(model)
    probe = Probe(model, model.config.pad_token_id or 0, slots)
    clean_rows, corrupted_rows = _rows(0, 6, 7, model.config.vocab_size)
    a, b = [11] * 6, [12] * 6
    corr = probe.run(corrupted_rows, a, b, grad=False, width=7)
    clean = probe.run(clean_rows, a, b, grad=True, width=7)
    estimate = _slot_attribution(probe, clean, corr)
    last = [j for j, s in enumerate(slots) if s.layer == len(probe.layers) - 1]
    assert last, "the builtin model's last layer has head slots"
    for j in last:
        exact = clean["margins"] - _exact(probe, clean_rows, corr, a, b, slots[j])
        np.testing.assert_allclose(estimate[:, j], exact, rtol=1e-4, atol=1e-4)
    # the final residual is the margin's only input there: its attribution is the whole clean - corrupted difference
    whole = _attribution(clean["resid"][-1], corr["resid"][-1])
    np.testing.assert_allclose(whole, clean["margins"] - corr["margins"], rtol=1e-4, atol=1e-4)
    # and the lens at the final residual is the margin itself
    lens = probe.lens(clean["resid"], clean["diff"], a, b)
    np.testing.assert_allclose(lens[:, -1], clean["margins"], rtol=1e-5, atol=1e-5)


def test_attribution_is_not_exact_where_the_model_is_nonlinear():
    """A property that could fail the other way: with the real final norm the estimate is only an estimate."""
    model = _model(linear=False)
    slots = slot_table(model)
    probe = Probe(model, 0, slots)
    clean_rows, corrupted_rows = _rows(1, 6, 7, model.config.vocab_size)
    a, b = [11] * 6, [12] * 6
    corr = probe.run(corrupted_rows, a, b, grad=False, width=7)
    clean = probe.run(clean_rows, a, b, grad=True, width=7)
    estimate = _slot_attribution(probe, clean, corr)
    exact = np.stack([clean["margins"] - _exact(probe, clean_rows, corr, a, b, s) for s in slots], axis=1)
    assert np.abs(estimate - exact).max() > 1e-3


def test_patching_a_slot_with_its_own_values_changes_nothing(linear_model):
    model = linear_model
    slots = slot_table(model)
    probe = Probe(model, 0, slots)
    clean_rows, _ = _rows(2, 4, 6, model.config.vocab_size)
    a, b = [11] * 4, [12] * 4
    clean = probe.run(clean_rows, a, b, grad=False, width=6)
    for slot in slots[:3] + slots[-3:]:
        np.testing.assert_allclose(_exact(probe, clean_rows, clean, a, b, slot), clean["margins"], rtol=1e-5, atol=1e-5)


def test_left_padding_to_a_common_width_changes_no_margin(linear_model):
    """Clean and corrupted batches are padded to one width so positions align; padding is masked."""
    model = linear_model
    probe = Probe(model, 0, slot_table(model))
    rows, _ = _rows(3, 3, 5, model.config.vocab_size)
    a, b = [11] * 3, [12] * 3
    narrow = probe.run(rows, a, b, grad=False, width=5)["margins"]
    wide = probe.run(rows, a, b, grad=False, width=9)["margins"]
    np.testing.assert_allclose(narrow, wide, rtol=1e-4, atol=1e-4)
