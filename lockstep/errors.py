"""One root error class, specific subclasses, exit codes mapped in one place.

Every message a user sees names the file, the field (a JSON pointer) where there is one, what was
expected, and how to fix it. The CLI turns a :class:`LockstepError` into that message and its exit
code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One problem in one file: where it is, what was expected."""

    file: str
    pointer: str
    message: str
    line: int | None = None

    def render(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        pointer = bounded(self.pointer or "/", 200)
        return f"{where} {pointer}: {self.message}"


# The longest message (and JSON pointer) a problem echoes: a hostile file may hold a value of megabytes,
# and a message repeats it. The middle is elided, so that the start (what) and the end (the fix) remain.
MAX_MESSAGE_CHARS = 600
# The most problems one SchemaError lists; the rest are counted.
MAX_PROBLEMS_SHOWN = 100


def bounded(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` with its middle elided when it is longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    keep = (limit - 40) // 2
    return f"{text[:keep]} …[{len(text) - 2 * keep:,} characters omitted]… {text[-keep:]}"


class LockstepError(Exception):
    """Root of every error a user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class UsageError(LockstepError):
    """Wrong arguments, a folder that is not a study, a study outside the repository."""

    exit_code = 2


class SchemaError(LockstepError):
    """A study file does not match its schema or the cross-file rules; carries every problem at once."""

    exit_code = 1

    def __init__(self, problems: list[Problem], *, hint: str | None = None):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.pointer, p.message))
        count = len(self.problems)
        lines = "\n".join(f"  - {p.render()}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        if count > MAX_PROBLEMS_SHOWN:
            lines += f"\n  … and {count - MAX_PROBLEMS_SHOWN} more (fix these first; validation lists the rest)"
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the study:\n{lines}", hint=hint)


class NotLocked(LockstepError):
    """The study has no lock yet."""

    exit_code = 2


class LockMismatch(LockstepError):
    """A locked file changed, went missing, or the lock itself was edited."""

    exit_code = 1


class ChainBroken(LockstepError):
    """The journal or the amendment chain does not verify."""

    exit_code = 1


class GitError(LockstepError):
    """The study is not in a git repository, or git refuses what the stage needs."""

    exit_code = 2


class NotInRepository(GitError):
    """The path is in no git work tree at all (git's other refusals, such as dubious ownership, are GitError)."""


class BundleRefused(LockstepError):
    """A bundle that cannot be unpacked safely: corrupt or truncated, over its limits, or with a member
    that would land outside the folder it is unpacked into. Nothing in it was verified."""

    exit_code = 2


class DirtyStudy(LockstepError):
    """Study files have uncommitted changes and ``--allow-dirty`` was not given."""

    exit_code = 1


class StageRefused(LockstepError):
    """A stage may not run yet: an earlier stage is missing or the access order forbids it."""

    exit_code = 1


class CaptureError(LockstepError):
    """Capture cannot run as preregistered (model, tokenizer, runtime, disk)."""

    exit_code = 1


class WeightsNotFound(CaptureError):
    """The model named by the study is not on this machine."""

    exit_code = 3


@dataclass
class ProblemList:
    """Collects problems during validation so that every one is reported at once."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str, pointer: str, message: str, line: int | None = None) -> None:
        self.problems.append(Problem(file, pointer, bounded(message), line))

    def raise_if_any(self, hint: str | None = None) -> None:
        if self.problems:
            raise SchemaError(self.problems, hint=hint)
