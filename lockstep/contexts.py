"""Token contexts of a routed unit: where it carried its weight, with the text around each token.

Shared by the discovery scan (``capture/discover.py``: each best unit's heaviest tokens) and the audit
(``audit/designs/routing.py``: the target unit's heaviest tokens per compared group), which read the same
per-token top-k stores (``topk/idx.npy``, ``topk/weight.npy``: tokens × MoE layers × k) and must show the
same weights and the same text for the same token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def unit_weight(idx: np.ndarray, weight: np.ndarray, layer_index: int, expert: int) -> np.ndarray:
    """Per token, the routed weight ``expert`` received at MoE layer ``layer_index`` (0 where the
    router did not select it): the sum over the token's top-k slots that name the expert."""
    chosen = np.asarray(idx[:, layer_index, :]) == expert
    return np.where(chosen, np.asarray(weight[:, layer_index, :], dtype=np.float64), 0.0).sum(axis=1)


def token_text(vocab: Mapping[int, str]) -> Callable[[int], str]:
    """A token id's text from a run's ``topk/vocab.parquet`` mapping; ``<id>`` for an id it lacks."""
    return lambda tid: vocab.get(int(tid), f"<{int(tid)}>")


def window(ids: np.ndarray, at: int, width: int, text: Callable[[int], str], joiner: str) -> dict[str, str]:
    """The token at position ``at`` of ``ids`` and ``width`` tokens of text on either side, joined so that
    ``before + token + after`` reads as the passage (``joiner`` is the tokenizer's separator)."""
    before = ids[max(0, at - width):at]
    after = ids[at + 1:at + 1 + width]
    return {"before": joiner.join(text(t) for t in before) + (joiner if len(before) else ""),
            "token": text(ids[at]),
            "after": (joiner if len(after) else "") + joiner.join(text(t) for t in after)}
