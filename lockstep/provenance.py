"""Git and environment provenance: which commit, whether the tree was dirty, which package versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from .errors import GitError

_PACKAGES = ("lockstep", "torch", "transformers", "tokenizers", "numpy", "scipy", "pandas", "pyarrow", "statsmodels", "pingouin")


def _git(cwd: Path, *args: str, check: bool = True, binary: bool = False):
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise GitError("git is not installed", hint="install git; lockstep records the commit of every freeze") from exc
    if check and result.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.decode(errors='replace').strip()}")
    return result if binary else result.stdout.decode(errors="replace")


def repo_root(path: Path) -> Path:
    """The top of the git work tree holding ``path``; GitError if there is none."""
    path = Path(path).resolve()
    start = path if path.is_dir() else path.parent
    result = _git(start, "rev-parse", "--show-toplevel", check=False, binary=True)
    if result.returncode != 0:
        raise GitError(f"{path} is not inside a git repository",
                       hint="a study lives in a git repository so that its freeze can name a commit; run `git init` and commit the study")
    return Path(result.stdout.decode().strip()).resolve()


def head_commit(root: Path) -> str | None:
    result = _git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False)
    return result.strip() or None


def dirty_files(root: Path, paths: list[Path]) -> list[str]:
    """Paths (relative to ``root``) among ``paths`` that differ from HEAD or are untracked."""
    rel = [str(p.resolve().relative_to(root)) for p in paths]
    out = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *rel)
    return sorted(line[3:].strip().strip('"') for line in out.splitlines() if line.strip())


def blob_at(root: Path, commit: str, relative: str) -> bytes | None:
    """Bytes of ``relative`` at ``commit``, or None if the commit or the path is absent."""
    result = _git(root, "show", f"{commit}:{relative}", check=False, binary=True)
    return result.stdout if result.returncode == 0 else None


def staged_blob(root: Path, relative: str) -> bytes | None:
    result = _git(root, "show", f":{relative}", check=False, binary=True)
    return result.stdout if result.returncode == 0 else None


def commit_exists(root: Path, commit: str) -> bool:
    return _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False, binary=True).returncode == 0


def is_ancestor(root: Path, ancestor: str, descendant: str) -> bool:
    return _git(root, "merge-base", "--is-ancestor", ancestor, descendant, check=False, binary=True).returncode == 0


def git_info(path: Path) -> dict:
    """``{"commit": sha or None, "dirty": bool}`` for the repository holding ``path`` (None commit outside git)."""
    try:
        root = repo_root(path)
    except GitError:
        return {"commit": None, "dirty": False}
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no").strip())
    return {"commit": head_commit(root), "dirty": dirty}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
