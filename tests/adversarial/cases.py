"""The adversarial suite: studies built by editing a shipped study the way a careless or hostile
researcher would, each with the outcome its own words call for (see README.md in this folder)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def cases(folder: str) -> dict[str, dict]:
    """Every case file in ``folder`` (``prereg``), by name."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((HERE / folder).glob("*.yaml"))}


def case(name: str) -> dict:
    """One case file of this folder (``claims``)."""
    return yaml.safe_load((HERE / f"{name}.yaml").read_text())


def expected_statuses(spec: dict) -> dict[str, list[str]]:
    """Each hypothesis id of a claims case with the statuses its words allow."""
    out = {hid: [s] if isinstance(s, str) else list(s) for hid, s in (spec.get("expect") or {}).items()}
    for hyp in spec.get("hypotheses", []):
        out[hyp["id"]] = [hyp["expect"]] if isinstance(hyp["expect"], str) else list(hyp["expect"])
    return out


def _parent(doc, pointer: str):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def apply_edits(spec: dict, edits: list[dict]) -> dict:
    """Apply ``{set: POINTER, to: VALUE}`` and ``{append: POINTER, value: VALUE}`` edits in order."""
    for edit in edits:
        if "set" in edit:
            node, key = _parent(spec, edit["set"])
            node[int(key) if isinstance(node, list) else key] = edit["to"]
        elif "append" in edit:
            node, key = _parent(spec, edit["append"])
            (node[int(key)] if isinstance(node, list) else node[key]).append(edit["value"])
        else:
            raise ValueError(f"unknown edit {edit!r}: use set/to or append/value")
    return spec


def write_case(study: Path, case: dict) -> Path:
    """Edit the copy of the case's base study at ``study`` in place; returns it."""
    path = study / "study.yaml"
    spec = apply_edits(yaml.safe_load(path.read_text()), case.get("edits", []))
    spec["study_id"] = study.name
    for hyp in case.get("hypotheses", []):
        analysis = {"id": "A" + hyp["id"].lstrip("H"), **hyp["analysis"]}
        spec["analyses"].append(analysis)
        spec["hypotheses"].append({**{k: v for k, v in hyp.items() if k not in ("why", "expect", "analysis")},
                                   "analysis": analysis["id"]})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    if case.get("thresholds"):
        tpath = study / "thresholds.yaml"
        thresholds = yaml.safe_load(tpath.read_text())
        thresholds["thresholds"].update(case["thresholds"])
        tpath.write_text(yaml.safe_dump(thresholds, sort_keys=False))
    if case.get("prompts"):
        lines = [json.loads(line) for line in (study / "prompts.jsonl").read_text().splitlines() if line.strip()]
        for pid, changes in case["prompts"].items():
            next(p for p in lines if p["id"] == pid).update(changes)
        (study / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in lines))
    return study
