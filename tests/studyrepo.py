"""Helpers for tests: real git repositories in temp dirs holding copies of the shipped studies."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "preregistrations"
PLAN_FILES = ("study.yaml", "prompts.jsonl", "rubric.yaml", "thresholds.yaml")


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout


def commit_all(repo: Path, message: str = "commit") -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=lockstep-tests", "-c", "user.email=tests@lockstep.invalid", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def copy_study(name: str, repo: Path, as_name: str | None = None) -> Path:
    """Copy the plan files of a shipped study, its rubric pilot (``pilot/``) when it has one, and the extra
    files its ``study.yaml`` freezes (``files``) into ``repo`` (never its lock or journal)."""
    dest = repo / "preregistrations" / (as_name or name)
    dest.mkdir(parents=True)
    for file in PLAN_FILES:
        shutil.copyfile(STUDIES / name / file, dest / file)
        (dest / file).chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    if (STUDIES / name / "pilot").is_dir():
        shutil.copytree(STUDIES / name / "pilot", dest / "pilot")
    spec = yaml.safe_load((STUDIES / name / "study.yaml").read_text()) or {}
    for extra in spec.get("files", []):  # frozen extras
        (dest / extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STUDIES / name / extra, dest / extra)
    for sae in (spec.get("ablation") or {}).get("saes", []):  # SAEs it names by repository path (pinned by digest)
        source, target = REPO / sae["path"], repo / sae["path"]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return dest


def make_writable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)


def invoke(*args: str, cwd: Path):
    """Run ``lockstep ARGS`` in ``cwd`` in this process, as the user's shell would (click's CliRunner)."""
    import os

    from click.testing import CliRunner

    from lockstep.cli import cli

    here = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(here)

