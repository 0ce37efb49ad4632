"""The gate: the one function every later stage calls first.

``require_frozen`` refuses, with a message naming each file and what differs, when there is no lock, a
locked byte changed, a locked file is missing, the lock body was edited, an amendment is open or broken,
or the journal chain is broken. Otherwise it returns the plan in force as a :class:`FrozenStudy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .journal import Journal
from .lock import effective_files
from .study import Study, load_study
from .verify import STEPS, make_context


@dataclass(frozen=True)
class FrozenStudy(Study):
    """A study whose freeze verified: the plan in force plus its lock and journal state."""

    lock_digest: str = ""
    base_lock_digest: str = ""
    repo_root: Path | None = None
    journal: Journal | None = None
    amendments: tuple = ()

    @property
    def access_level(self) -> str:
        return self.journal.access_level


def require_frozen(study_dir: Path, *, allow_draft: bool = False) -> FrozenStudy:
    """Verify the freeze of ``study_dir`` and return the plan in force; raise the first failure."""
    ctx = make_context(study_dir, allow_draft=allow_draft)
    for step in STEPS:
        step(ctx)
    study = load_study(ctx.study_dir, effective_files(ctx.study_dir))
    lock_digest = ctx.amendments[-1]["lock_digest"] if ctx.amendments else ctx.lock["lock_digest"]
    return FrozenStudy(
        root=study.root, study_id=study.study_id, design=study.design, spec=study.spec, prompts=study.prompts,
        rubric=study.rubric, thresholds=study.thresholds, files=study.files, analyses=study.analyses,
        lock_digest=lock_digest, base_lock_digest=ctx.lock["lock_digest"], repo_root=ctx.root,
        journal=ctx.journal, amendments=tuple(ctx.amendments),
    )
