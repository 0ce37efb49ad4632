"""Capture fixtures: a frozen copy of the demo study in a real git repo, captured once per session."""

from __future__ import annotations

from pathlib import Path

import sys

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capture_helpers import frozen_repo  # noqa: E402


@pytest.fixture(scope="session")
def demo_capture(tmp_path_factory):
    """(frozen study, run folders) of the demo captured with both preregistered runs."""
    from capture.run import run_capture
    from lockstep.gate import require_frozen

    base = tmp_path_factory.mktemp("capture-demo")
    study = frozen_repo(base / "repo")
    frozen = require_frozen(study)
    paths = run_capture(frozen, runs_root=base / "runs", progress=False)
    return frozen, {p.name: p for p in paths}


@pytest.fixture(scope="session")
def models_root(demo_capture) -> Path:
    frozen, paths = demo_capture
    return paths["sampled"].parent.parent / "_models"
