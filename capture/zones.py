"""Token zones of a generated sequence, and which zone each routing row belongs to.

A routing row belongs to the zone of the token the model was *reading* when it produced the row:

* ``prefill`` -- the prompt's tokens (the chat-templated prompt, pads excluded);
* ``generated`` -- every generated token that was fed back into the model;
* ``trimmed`` -- generated tokens before the first trim token (e.g. ``<|im_end|>``);
* ``spill`` -- generated tokens from the first trim token on.

``generated`` is the union of ``trimmed`` and ``spill``; the accumulators therefore keep three
disjoint zones (:data:`PREFILL`, :data:`TRIMMED`, :data:`SPILL`) and add the last two for
``generated``. A generated token is read when the model is fed it to produce the next one; the last
token of a generation (the stop token, or the token that reached ``max_new_tokens``) is never read,
so a generation of ``n`` tokens has ``n - 1`` generated routing rows. Pads, and the forward passes of
rows that have finished while others in the batch go on, belong to no zone (:data:`NONE`), so no
result depends on batch composition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

NONE = -1
PREFILL = 0
TRIMMED = 1
SPILL = 2
N_DISJOINT = 3

ZONES = ("prefill", "generated", "trimmed", "spill")
"""Zone names in the order every table lists them."""


def trim_position(generated: Sequence[int], trim_ids: Iterable[int]) -> int:
    """Index of the first trim token in ``generated``; ``len(generated)`` when there is none."""
    trim = set(trim_ids)
    for j, token in enumerate(generated):
        if token in trim:
            return j
    return len(generated)


def generated_zone(j: int, trim_pos: int) -> int:
    """Disjoint zone code of generated token ``j`` given the trim position."""
    return TRIMMED if j < trim_pos else SPILL


def zone_counts(n_prompt: int, generated: Sequence[int], trim_ids: Iterable[int]) -> dict[str, int]:
    """Routing rows per zone for one sequence: what :mod:`capture.hooks` counts, computed from ids.

    Parameters
    ----------
    n_prompt : int
        Prompt tokens (pads excluded).
    generated : sequence of int
        The generated ids, stop token included.
    trim_ids : iterable of int
        Ids of the trim tokens.
    """
    read = max(len(generated) - 1, 0)
    pos = trim_position(generated, trim_ids)
    trimmed = min(pos, read)
    return {"prefill": n_prompt, "generated": read, "trimmed": trimmed, "spill": read - trimmed}


def spill_tokens(generated: Sequence[int], trim_pos: int, special: dict[int, str]) -> list[dict]:
    """Which special tokens occur in the spill text (``generated[trim_pos:]``) and how many times.

    Returns ``[{"token": "<|im_end|>", "count": 4}, …]`` sorted by token string.
    """
    counts = Counter(special[t] for t in generated[trim_pos:] if t in special)
    return [{"token": tok, "count": counts[tok]} for tok in sorted(counts)]
