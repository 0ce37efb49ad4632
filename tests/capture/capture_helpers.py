"""Helpers for capture tests: a frozen copy of the demo study in a real git repository."""

from __future__ import annotations

from pathlib import Path

import yaml

from studyrepo import commit_all, copy_study, git


def frozen_repo(root: Path, *, name: str = "demo", edit=None) -> Path:
    """A git repo at ``root`` holding the demo study (optionally edited), frozen and committed."""
    from lockstep.freeze import freeze

    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    study = copy_study("demo", root, as_name=name)
    if edit is not None:
        path = study / "study.yaml"
        spec = yaml.safe_load(path.read_text())
        edit(spec)
        path.chmod(0o644)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
    commit_all(root, "add study")
    freeze(study)
    commit_all(root, "freeze")
    return study
