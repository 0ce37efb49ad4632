"""Git and environment provenance: which commit, whether the tree was dirty, which package versions."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from .errors import GitError, NotInRepository, bounded

_PACKAGES = ("lockstep", "torch", "transformers", "tokenizers", "numpy", "scipy", "pandas", "pyarrow", "statsmodels", "accelerate", "huggingface_hub")


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
        reason = result.stderr.decode(errors="replace").strip()
        if "dubious ownership" in reason:
            raise GitError(f"git refuses the repository holding {path}: it is owned by another user (git: dubious ownership)",
                           hint=f"if you trust it, run `git config --global --add safe.directory {_repository_of(reason, start)}`, "
                                "or run lockstep as the repository's owner")
        if "not a git repository" not in reason:
            raise GitError(f"git cannot use the repository holding {path}: {bounded(reason, 400)}",
                           hint="fix what git reports (run `git status` there to see it), then try again")
        raise NotInRepository(f"{path} is not inside a git repository",
                              hint="a study lives in a git repository so that its freeze can name a commit; run `git init` and commit the study")
    return Path(result.stdout.decode().strip()).resolve()


def _repository_of(reason: str, start: Path) -> str:
    """The repository git names in a dubious-ownership refusal ("... repository at '/path'"), else ``start``."""
    for line in reason.splitlines():
        if "repository at '" in line:
            return line.split("repository at '", 1)[1].rstrip("'")
    return str(start)


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
    except NotInRepository:
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


def machine_facts(argv: list[str] | None = None) -> dict:
    """Where a capture ran, as an inspect-style log records it: python, host, CUDA and its driver, the GPUs,
    and the command as passed."""
    import platform
    import socket
    import sys

    facts = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
             "argv": list(sys.argv if argv is None else argv)}
    try:
        import torch

        facts["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            facts["cuda_driver"] = _nvidia_driver()
        else:
            facts["gpus"] = []
    except ImportError:
        pass
    return facts


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None

