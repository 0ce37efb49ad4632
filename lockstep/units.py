"""Unit ids and condition keys: the one place that writes and reads them.

A unit is one (layer, expert) of an MoE router, ``L14E114``, or one (layer, head) slot of attention,
``L31H14``. A condition is a set of head slots ablated together; its key is their ids sorted by layer
then index, joined by ``+`` (``L19H11+L23H0``). Capture writes these strings and the audit reads them;
neither builds or parses them by hand.
"""

from __future__ import annotations

import re

KINDS = {"expert": "E", "head": "H"}   # unit kind in study.yaml /units/kind -> the letter of its id
UNIT_ID = re.compile(r"^L(\d+)([EH])(\d+)$")


def unit_id(layer: int, index: int, kind: str = "E") -> str:
    """``unit_id(14, 114) == "L14E114"``; ``kind`` is the letter (``E``, ``H``) or the kind (``expert``, ``head``)."""
    letter = KINDS.get(kind, kind)
    if letter not in KINDS.values():
        raise ValueError(f"`kind` must be one of {sorted(KINDS) + sorted(KINDS.values())}, got {kind!r}")
    return f"L{int(layer)}{letter}{int(index)}"


def parse_unit_id(uid: str) -> tuple[int, str, int]:
    """Inverse of :func:`unit_id`: ``"L31H14" -> (31, "H", 14)``; ValueError for anything else."""
    match = UNIT_ID.match(uid) if isinstance(uid, str) else None
    if match is None:
        raise ValueError(f"`unit` {uid!r} is not a unit id like 'L14E114' (expert) or 'L31H14' (head slot)")
    return int(match.group(1)), match.group(2), int(match.group(3))


def unit_order(uid: str) -> tuple[int, int]:
    """Sort key of a unit id: by layer, then index."""
    layer, _, index = parse_unit_id(uid)
    return layer, index


def condition_key(unit_ids) -> str:
    """The key of a set of slots ablated together: ids sorted by layer then index, joined by ``+``."""
    return "+".join(sorted(set(unit_ids), key=unit_order))
