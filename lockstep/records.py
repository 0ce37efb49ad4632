"""The published schemas, and the one place where a record lockstep writes or reads is checked against them.

The schemas ship inside the package (``lockstep/schemas/*.schema.json``; ``schemas/`` at the repository
root points there), so an installed lockstep validates without its source tree. :func:`write_record`
checks a ledger, run manifest or journal entry against its schema before it is written, and
:func:`check_record` checks it again where it is read: a stage trusts what passed, and never re-checks
fields by hand.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

from jsonschema import Draft202012Validator

from .errors import ProblemList
from .fsio import atomic_write, pretty_json
from .loaders import pointer_of

# The records lockstep writes, by the name of their schema.
LEDGER = "ledger"
RUN_MANIFEST = "run-manifest"
JOURNAL_ENTRY = "journal-entry"
JOURNAL_HEAD = "journal-head"


@cache
def schema(name: str) -> dict:
    """The published JSON Schema ``schemas/<name>.schema.json``, read from the installed package."""
    text = resources.files("lockstep").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema(name))


def schema_names() -> list[str]:
    """Every published schema, by name."""
    folder = resources.files("lockstep").joinpath("schemas")
    return sorted(p.name.removesuffix(".schema.json") for p in folder.iterdir() if p.name.endswith(".schema.json"))


def describe(error) -> str:
    """A jsonschema error in the words lockstep reports it with."""
    if error.validator == "additionalProperties":
        return f"{error.message}; allowed keys: {', '.join(sorted(error.schema.get('properties', {})))}"
    if error.validator in ("enum", "const"):
        expected = error.validator_value if error.validator == "enum" else [error.validator_value]
        return f"{error.instance!r} is not allowed; expected one of {', '.join(map(repr, expected))}"
    if error.validator == "type" and error.instance is None:
        return f"is empty; expected {error.validator_value} (a threshold `lockstep propose` left for you: write it here, " \
               "or draft again with --set NAME=VALUE)" if list(error.absolute_path)[-1:] == ["value"] else \
               f"is empty; expected {error.validator_value}"
    if error.validator == "type":
        return f"expected {error.validator_value}, found {type(error.instance).__name__} {error.instance!r}"
    return error.message


def record_problems(name: str, data, where: str) -> list:
    """Every way ``data`` breaks ``schemas/<name>.schema.json``, as problems naming ``where`` and the field."""
    problems = ProblemList()
    for error in sorted(_validator(name).iter_errors(data), key=lambda e: list(e.absolute_path)):
        problems.add(where, pointer_of(error.absolute_path), describe(error))
    return problems.problems


def check_record(name: str, data, where: str, *, hint: str | None = None) -> None:
    """Raise SchemaError listing every way ``data`` breaks ``schemas/<name>.schema.json`` (``where``: its file)."""
    problems = ProblemList(record_problems(name, data, where))
    problems.raise_if_any(hint=hint or f"{where} does not follow schemas/{name}.schema.json")


def write_record(path: Path, name: str, data: dict) -> None:
    """Check ``data`` against its schema, then write it atomically as pretty JSON (nothing written if it fails)."""
    check_record(name, data, str(path), hint=f"a lockstep bug: it is about to write a {name} its schema refuses")
    atomic_write(Path(path), pretty_json(data))


def read_record(path: Path, name: str) -> dict:
    """Read a JSON record and check it against its schema (SchemaError naming the file and field)."""
    hint = f"{path} was edited or written by another version; restore it or rerun its stage"
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError covers JSON, UTF-8 and huge integers
        problems = ProblemList()
        problems.add(str(path), "", f"cannot be read as JSON ({type(exc).__name__}: {exc})")
        problems.raise_if_any(hint=hint)
    check_record(name, data, str(path), hint=hint)
    return data
