"""Bundles: one archive with everything a reviewer on another machine needs to run ``lockstep verify``.

The archive holds ``preregistrations/<study>/``, ``runs/<study>/`` and ``reports/<study>/`` at their
repository-relative paths, so the journal's paths resolve inside the unpacked folder.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import artifacts
from .errors import UsageError
from .fsio import atomic_write
from .lock import study_dir_iv
from .provenance import repo_root

SUFFIX = ".bundle.tar.gz"


def write_bundle(study_dir: Path, out: Path | None = None) -> Path:
    study_dir = study_dir_iv(study_dir)
    root = repo_root(study_dir)
    study_id = study_dir.name
    out = Path(out) if out else artifacts.reports_dir(root, study_id) / f"{study_id}{SUFFIX}"
    members = [study_dir, artifacts.default_runs_root(root) / study_id, artifacts.reports_dir(root, study_id)]
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w:gz") as tar:
        for folder in members:
            for path in sorted(folder.rglob("*")) if folder.exists() else []:
                if path.is_file() and not path.name.endswith(SUFFIX) and path.resolve() != out.resolve():
                    tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    atomic_write(out, sink.getvalue())
    return out


@contextmanager
def unpacked(target: Path) -> Iterator[Path]:
    """A study folder: ``target`` itself, or the study inside a bundle unpacked into a temp folder."""
    target = Path(target)
    if not (target.is_file() and target.name.endswith(SUFFIX)):
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="lockstep-bundle-") as tmp:
        try:
            with tarfile.open(target, mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"{target} is not a readable lockstep bundle ({exc})") from exc
        studies = [p.parent for p in Path(tmp).glob("preregistrations/*/study.yaml")]
        if len(studies) != 1:
            raise UsageError(f"{target} holds {len(studies)} studies; a bundle holds exactly one")
        yield studies[0]
