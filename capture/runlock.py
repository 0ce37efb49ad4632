"""One capture per run folder at a time: an ``fcntl`` lock on ``<runs root>/<study>/.<run>.capture.lock``.

A capture holds the lock of every run it writes from before it looks at the run folders until its
journal entry is written, so no two processes capture, merge or journal the same run at once. A second
capture is refused at once, naming the holder (pid, host, start time, command), never left waiting.
Shards of one run (``--shard i/n``) share the lock; capturing or merging the whole run needs it alone.
The kernel releases the lock when its process ends, however it ends, so a killed capture leaves no
stale lock; the holder's details in the file are read only when the lock is busy.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lockstep.errors import CaptureError
from lockstep.fsio import utc_now


def lock_path(runs_root: Path, study_id: str, run_id: str) -> Path:
    """The lock file of a run: beside its folder, so it is never one of the run's artifacts."""
    return Path(runs_root) / study_id / f".{run_id}.capture.lock"


@contextmanager
def runs_locked(runs_root: Path, study_id: str, run_ids: list[str], *, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the lock of each run in ``run_ids`` (shared for a shard, exclusive otherwise) for the block;
    CaptureError naming the holder when another process has one."""
    with ExitStack() as stack:
        for run_id in sorted(set(run_ids)):
            stack.enter_context(_held(lock_path(runs_root, study_id, run_id), run_id, shard))
        yield


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, in words."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        what = f"pid {info['pid']} on host {info['host']}, started {info['started_utc']}"
        if info.get("shard"):
            what += f", shard {info['shard']}"
        return what + f" (command: {info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has just started (its details are not written yet)"


@contextmanager
def _held(path: Path, run_id: str, shard: tuple[int, int] | None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shard else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CaptureError(
                f"run {run_id!r} is being captured by another process: {holder(path)}",
                hint="wait for it to finish (a capture already running writes this run), then run the same command again "
                     "to resume; shards of one run may run together, but not with a capture of the whole run") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": utc_now(),
                "command": " ".join(sys.argv)[:300], "shard": f"{shard[0]}/{shard[1]}" if shard else None}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info, sort_keys=True).encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)
