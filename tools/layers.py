#!/usr/bin/env python3
"""The layering contract of lockstep, checked by reading every import (module level and inside functions).

Floors, lowest first; a module may import its own floor and the floors below, never above or sideways:

    core      lockstep.* (but not lockstep.cli / lockstep.__main__): study, designs, artifacts, lock,
              journal, verify, gate, freeze, bundle, models, records, errors, fsio, provenance
    stats     stats.*: may import the core
    stages    capture.*, audit.*: may import the core and stats; never each other
    top       lockstep.cli, lockstep.__main__: may import everything; nothing imports them

And no circle: the graph of imports between modules has no cycle, at any floor.

Usage: ``python tools/layers.py`` prints the violations and exits 1 if there are any (0 otherwise).
``tests/test_layers.py`` runs it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("lockstep", "stats", "capture", "audit")
TOP = {"lockstep.cli", "lockstep.__main__"}
ALLOWED = {  # floor -> floors it may import
    "core": {"core"},
    "stats": {"core", "stats"},
    "capture": {"core", "stats", "capture"},
    "audit": {"core", "stats", "audit"},
    "top": {"core", "stats", "capture", "audit", "top"},
}


def floor_of(module: str) -> str:
    if module in TOP:
        return "top"
    package = module.split(".")[0]
    return "core" if package == "lockstep" else package


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(root: Path, path: Path, modules: set[str]) -> set[str]:
    """Project modules that ``path`` imports, resolved to the most specific module that exists."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:
                add(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    paths = [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    modules = {module_name(root, p) for p in paths}
    return {module_name(root, p): imports_of(root, p, modules) for p in paths}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(root: Path) -> list[str]:
    edges = graph(root)
    problems = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if floor_of(target) not in ALLOWED[floor_of(source)]:
                problems.append(f"{source} ({floor_of(source)}) imports {target} ({floor_of(target)}): not allowed")
            if target in TOP and source not in TOP:
                problems.append(f"{source} imports {target}: the command line is the top floor; nothing imports it")
    for component in cycles(edges):
        problems.append("import circle: " + " <-> ".join(component))
    return problems


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    problems = violations(root)
    for line in problems:
        print(line)
    edges = graph(root)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports: "
          + ("layering holds, no circle" if not problems else f"{len(problems)} violation(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
