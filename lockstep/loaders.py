"""Read study files safely: YAML without duplicate keys and with line numbers, JSON Lines with line numbers.

Every reader collects :class:`~lockstep.errors.Problem` objects instead of raising on the first one, so
that validation can report every problem in a study at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ProblemList


@dataclass
class Parsed:
    """A parsed file: its data (None if unreadable) and a JSON-pointer → line map for messages."""

    data: Any
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, pointer: str) -> int | None:
        """The line of ``pointer``, or of its nearest ancestor that has one."""
        while True:
            if pointer in self.lines:
                return self.lines[pointer]
            if not pointer:
                return None
            pointer = pointer.rsplit("/", 1)[0]


def _escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer_of(parts) -> str:
    """JSON pointer (RFC 6901) of a path of keys and indices."""
    return "".join(f"/{_escape(p)}" for p in parts)


def _walk_node(node: yaml.Node, pointer: str, lines: dict[str, int], problems: ProblemList, name: str) -> None:
    lines[pointer] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.add(name, pointer_of([key]) if not pointer else f"{pointer}/{_escape(key)}",
                             f"duplicate key {key!r} (first at line {seen[key]}); each key may appear once", line)
            seen[key] = line
            _walk_node(value_node, f"{pointer}/{_escape(key)}", lines, problems, name)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_node(item, f"{pointer}/{index}", lines, problems, name)


def read_yaml(path: Path, name: str, problems: ProblemList) -> Parsed:
    """Parse a YAML file with the safe loader; duplicate keys are problems, as are syntax errors."""
    text = _read_text(path, name, problems)
    if text is None:
        return Parsed(None)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problems.add(name, "", f"not valid YAML: {getattr(exc, 'problem', None) or exc}", line)
        return Parsed(None)
    if node is None:
        problems.add(name, "", "the file is empty; expected a YAML mapping", 1)
        return Parsed(None)
    lines: dict[str, int] = {}
    before = len(problems.problems)
    _walk_node(node, "", lines, problems, name)
    if len(problems.problems) > before:
        return Parsed(None, lines)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # e.g. a python/object tag the safe loader refuses
        mark = getattr(exc, "problem_mark", None)
        problems.add(name, "", f"not valid YAML for lockstep: {getattr(exc, 'problem', None) or exc}",
                     mark.line + 1 if mark is not None else None)
        return Parsed(None, lines)
    if not isinstance(data, dict):
        problems.add(name, "", f"expected a YAML mapping at the top, found {type(data).__name__}", 1)
        return Parsed(None, lines)
    return Parsed(data, lines)


def read_jsonl(path: Path, name: str, problems: ProblemList) -> Parsed:
    """Parse JSON Lines: one object per non-empty line. Pointer ``/i`` is the i-th record."""
    text = _read_text(path, name, problems)
    if text is None:
        return Parsed(None)
    records: list[Any] = []
    lines: dict[str, int] = {}
    ok = True
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw, object_pairs_hook=_no_duplicates)
        except _DuplicateKey as exc:
            problems.add(name, f"/{len(records)}", f"duplicate key {exc.key!r}; each key may appear once", number)
            ok = False
            records.append(None)
            lines[f"/{len(records) - 1}"] = number
            continue
        except json.JSONDecodeError as exc:
            problems.add(name, f"/{len(records)}", f"not valid JSON: {exc.msg} (column {exc.colno})", number)
            ok = False
            records.append(None)
            lines[f"/{len(records) - 1}"] = number
            continue
        lines[f"/{len(records)}"] = number
        records.append(record)
    if not records:
        problems.add(name, "", "no records; expected one JSON object per line", 1)
        return Parsed(None, lines)
    return Parsed(records if ok else [r for r in records], lines)


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_text(path: Path, name: str, problems: ProblemList) -> str | None:
    if not path.exists():
        problems.add(name, "", f"missing file {path}; every study needs it (see schemas/ and preregistrations/demo/)")
        return None
    if not path.is_file():
        problems.add(name, "", f"{path} is not a regular file")
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.add(name, "", f"cannot read {path}: {exc.strerror}; check its permissions")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(name, "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")
        return None
