"""Shared fixtures: real git repositories in temp dirs holding copies of the shipped studies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from studyrepo import commit_all, copy_study, git  # noqa: E402


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    return root


@pytest.fixture
def demo_study(repo: Path) -> Path:
    """The demo study's plan, committed in a fresh repository, not yet frozen."""
    study = copy_study("demo", repo)
    commit_all(repo, "add demo study")
    return study


@pytest.fixture
def frozen_demo(demo_study: Path) -> Path:
    from lockstep.freeze import freeze

    freeze(demo_study)
    commit_all(demo_study.parent.parent, "freeze demo")
    return demo_study
