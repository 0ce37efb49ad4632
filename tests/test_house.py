"""The house: every design declared once with both stage modules, the layering contract, and the schemas
shipped inside the package (a non-editable install validates a study from another folder)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lockstep import designs, records

ROOT = Path(__file__).resolve().parent.parent


def test_the_registered_designs_and_their_modules():
    from audit.designs import PARTS, registered as audit_modules
    from capture.designs import STEPS, registered as capture_modules

    assert sorted(designs.DESIGNS) == ["ablation", "routing"]
    study_schema = records.schema("study")
    assert sorted(study_schema["properties"]["design"]["enum"]) == sorted(designs.DESIGNS)
    for name, record in designs.DESIGNS.items():
        assert record.name == name
        assert records.schema(record.prompt_schema)["type"] == "object"
        assert record.plan_block in study_schema["properties"]
        assert set(record.evidence_points) <= set(range(1, 9)) and 8 in record.evidence_points
        capture = capture_modules()[name]
        assert all(hasattr(capture, step) for step in STEPS), name
        audit = audit_modules()[name]
        assert all(hasattr(audit, part) for part in PARTS), name
        # every analysis kind the record offers has a function, and nothing else does
        assert sorted(audit.ANALYSES) == sorted(record.analysis_kinds), name
        for kind in record.analysis_kinds:
            assert kind in study_schema["$defs"]["analysis"]["properties"]["kind"]["enum"]
    with pytest.raises(KeyError, match="registered: ablation, routing"):
        designs.design_of("basin")


def test_defaults_are_resolved_once_and_the_plan_wins():
    spec = {"ablation": {"relative_drop": "mean_of_ratios"}}
    drop = designs.ABLATION.resolve_analysis({"id": "A1", "kind": "ablation_drop", "tails": "two-sided"}, spec)
    assert drop["tails"] == "two-sided" and drop["mode"] == "combined" and drop["relative_drop"] == "mean_of_ratios"
    # the same kind has design-specific defaults: a head-slot baseline is one-sided mean drops
    assert designs.ABLATION.resolve_analysis({"id": "B", "kind": "all_unit_baseline"}, spec)["tails"] == "greater"
    assert designs.ROUTING.resolve_analysis({"id": "B", "kind": "all_unit_baseline"}, {})["tails"] == "two-sided"


def test_no_design_name_branches_outside_the_records():
    offenders = []
    for package in ("lockstep", "capture", "audit"):  # stats speaks of two-sample and paired designs, another axis
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "designs.py" and path.parent.name == "lockstep":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "design ==" in line or "design !=" in line or '== "ablation"' in line or '== "routing"' in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_layering_holds():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        layers = importlib.import_module("layers")
    finally:
        sys.path.pop(0)
    assert layers.violations(ROOT) == []
    # the checker is not blind: an arrow from the core to a stage, and a circle, are both reported
    edges = layers.graph(ROOT)
    edges["lockstep.study"] = edges["lockstep.study"] | {"audit.ledger"}
    edges["lockstep.fsio"] = edges["lockstep.fsio"] | {"lockstep.study"}
    assert any("lockstep.fsio" in c and "lockstep.study" in c for c in layers.cycles(edges))
    assert layers.floor_of("audit.ledger") not in layers.ALLOWED[layers.floor_of("lockstep.study")]


def test_a_built_wheel_ships_the_schemas_and_validates_elsewhere(tmp_path):
    out = tmp_path / "wheel"
    source = tmp_path / "source"  # build from a copy: setuptools writes build/ beside the sources it builds
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "runs", "reports", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = list(out.glob("lockstep-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"lockstep/schemas/{n}.schema.json" for n in ("study", "ledger", "run-manifest")} <= set(names)
    # every design's modules and the report's templates travel too (subpackages are not implied by their parents)
    assert {"audit/designs/routing.py", "audit/designs/ablation.py", "capture/designs/routing.py",
            "capture/designs/ablation.py"} <= set(names)
    assert any(n.startswith("audit/templates/") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    study = tmp_path / "elsewhere" / "demo"
    study.mkdir(parents=True)
    for name in ("study.yaml", "prompts.jsonl", "rubric.yaml", "thresholds.yaml"):
        (study / name).write_bytes((ROOT / "preregistrations" / "demo" / name).read_bytes())
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import lockstep, sys; from lockstep.cli import main; print(lockstep.__file__, file=sys.stderr); sys.argv = ['lockstep', 'validate', 'demo']; main()"
    done = subprocess.run([sys.executable, "-c", code], cwd=study.parent, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(site) in done.stderr  # the installed copy ran, not the source tree
    assert "valid routing study 'demo'" in done.stdout
