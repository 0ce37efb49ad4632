"""Read study files safely: YAML without duplicate keys and with line numbers, JSON Lines with line numbers.

Every reader collects :class:`~lockstep.errors.Problem` objects instead of raising on the first one, so
that validation can report every problem in a study at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ProblemList, bounded

# Bounds on what a plan file may hold. A plan is a few kilobytes written by hand; anything past these is
# refused with a message, before it can exhaust memory, the stack or the integer parser.
MAX_FILE_BYTES = {"prompts.jsonl": 64 << 20}   # 64 MiB of prompts
MAX_YAML_BYTES = 4 << 20                        # 4 MiB for study.yaml, rubric.yaml, thresholds.yaml
MAX_DEPTH = 64                                  # nesting of mappings and lists
MAX_INT_DIGITS = 40                             # a seed of 2**128 has 39 digits

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


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
    if isinstance(node, yaml.ScalarNode):
        _check_scalar(node, pointer, problems, name)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.add(name, pointer or "/", "a key is a mapping or a list; keys must be plain words",
                             key_node.start_mark.line + 1)
                continue
            key = key_node.value
            _check_scalar(key_node, f"{pointer}/{_escape(key)}", problems, name)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.add(name, pointer_of([key]) if not pointer else f"{pointer}/{_escape(key)}",
                             f"duplicate key {key!r} (first at line {seen[key]}); each key may appear once", line)
            seen[key] = line
            _walk_node(value_node, f"{pointer}/{_escape(key)}", lines, problems, name)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_node(item, f"{pointer}/{index}", lines, problems, name)


def _check_scalar(node: yaml.ScalarNode, pointer: str, problems: ProblemList, name: str) -> None:
    """Integers of at most MAX_INT_DIGITS digits; floats finite (``.nan`` and ``.inf`` bound nothing)."""
    line = node.start_mark.line + 1
    if node.tag == _INT_TAG:
        digits = sum(c.isdigit() for c in node.value)
        if digits > MAX_INT_DIGITS:
            problems.add(name, pointer, f"an integer of {digits} digits; lockstep reads integers of at most "
                         f"{MAX_INT_DIGITS} digits (write the number you mean)", line)
    elif node.tag == _FLOAT_TAG:
        try:
            value = yaml.constructor.SafeConstructor().construct_yaml_float(node)
        except (ValueError, OverflowError):
            value = math.nan
        if not math.isfinite(value):
            problems.add(name, pointer, f"{bounded(node.value, 40)!s} is not a finite number; "
                         "write a finite number (.nan and .inf bound nothing)", line)


def _scan_events(text: str, name: str, problems: ProblemList) -> bool:
    """Parse ``text`` as a stream of events (no recursion, no alias expansion) and refuse what the
    composer and constructor cannot take safely: anchors and aliases, nesting deeper than MAX_DEPTH."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            problems.add(name, "", "uses a YAML anchor or alias (&name / *name); lockstep plan files may not: "
                         "write each value out in full", line)
            return False
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                problems.add(name, "", f"nested more than {MAX_DEPTH} levels deep; a plan file is a shallow "
                             "mapping (see schemas/ and preregistrations/demo/)", line)
                return False
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return True


def _yaml_problem(exc: yaml.YAMLError, name: str, problems: ProblemList, what: str = "not valid YAML") -> None:
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problems.add(name, "", f"{what}: {getattr(exc, 'problem', None) or exc}", line)


def read_yaml(path: Path, name: str, problems: ProblemList) -> Parsed:
    """Parse a YAML file with the safe loader; duplicate keys are problems, as are syntax errors,
    anchors and aliases, nesting deeper than MAX_DEPTH, huge integers and non-finite floats."""
    text = _read_text(path, name, problems)
    if text is None:
        return Parsed(None)
    try:
        if not _scan_events(text, name, problems):
            return Parsed(None)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        _yaml_problem(exc, name, problems)
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
        _yaml_problem(exc, name, problems, "not valid YAML for lockstep")
        return Parsed(None, lines)
    except (ValueError, OverflowError) as exc:  # e.g. a date such as 2024-13-45 the constructor cannot build
        problems.add(name, "", f"holds a value YAML cannot build ({exc}); quote it if it is text", None)
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
            record = json.loads(raw, object_pairs_hook=_no_duplicates, parse_int=_bounded_int,
                                parse_float=_finite_float, parse_constant=_no_constant)
            message = _too_deep(record)
        except _DuplicateKey as exc:
            message = f"duplicate key {exc.key!r}; each key may appear once"
        except _Refused as exc:
            message = str(exc)
        except json.JSONDecodeError as exc:
            message = f"not valid JSON: {exc.msg} (column {exc.colno})"
        except RecursionError:
            message = f"nested more than {MAX_DEPTH} levels deep; a prompt is one flat JSON object"
        if message is not None:
            problems.add(name, f"/{len(records)}", message, number)
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


class _Refused(ValueError):
    """A JSON value lockstep does not read (a huge integer, a non-finite number)."""


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {digits} digits; lockstep reads integers of at most {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"{bounded(text, 40)} is not a finite number; write a finite number")
    return value


def _no_constant(text: str):
    raise _Refused(f"{text} is not JSON (JSON has no NaN or Infinity); write a finite number")


def _too_deep(value: Any) -> str | None:
    """A message if ``value`` nests more than MAX_DEPTH containers deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep; a prompt is one flat JSON object"
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return None


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
    if path.is_symlink():
        problems.add(name, "", f"{path} is a symbolic link; a plan file must be a regular file in the study folder "
                     "(freezing would make the link's target read-only, and git stores the link, not the bytes): "
                     "replace the link with a copy of the file")
        return None
    if not path.exists():
        problems.add(name, "", f"missing file {path}; every study needs it (see schemas/ and preregistrations/demo/)")
        return None
    if not path.is_file():
        problems.add(name, "", f"{path} is not a regular file")
        return None
    limit = MAX_FILE_BYTES.get(name, MAX_YAML_BYTES)
    try:
        size = path.stat().st_size
        if size > limit:
            problems.add(name, "", f"{path} is {size:,} bytes; a {name} may be at most {limit:,} bytes "
                         "(a plan is small: split bulky material out of it)")
            return None
        raw = path.read_bytes()
    except OSError as exc:
        problems.add(name, "", f"cannot read {path}: {exc.strerror}; check its permissions")
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(name, "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8")
        return None
