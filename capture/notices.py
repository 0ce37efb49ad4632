"""What the libraries capture runs on say while it runs, kept apart from what lockstep says.

transformers and huggingface_hub print their own notices (a kernel falling back to its PyTorch
reference, a deprecated argument) through their loggers, and their own progress bars ("Loading
weights", "Writing model shards"). Printed among lockstep's lines they read as lockstep's. During a
capture :func:`library_output` takes every such notice into a list (recorded once in each run
manifest as ``runtime_notices``) and, when the progress bar is off, silences the libraries' bars too;
on exit the loggers and bars are as they were.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOGGERS = ("transformers", "huggingface_hub")


def progress_enabled(progress: bool | None) -> bool:
    """Whether bars are drawn: as asked, else (None) only when stderr is a terminal (tqdm's ``disable=None``)."""
    if progress is not None:
        return bool(progress)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        text = f"[{record.name.split('.')[0]}] {record.getMessage()}"
        if text not in self.into:
            self.into.append(text)


@contextmanager
def library_output(progress: bool | None) -> Iterator[list[str]]:
    """Collect the libraries' warnings (yielded list, each once, in order) and, unless bars are drawn,
    silence their progress bars; restores both on exit."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    notices: list[str] = []
    handler = _Collect(notices)
    hf_logging.get_logger()  # transformers configures its root logger (and its stderr handler) on first use
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.addHandler(handler)
        logger.propagate = False
    bars_were_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    if not progress_enabled(progress):
        hf_logging.disable_progress_bar()
        disable_progress_bars()
    try:
        yield notices
    finally:
        for logger, handlers, propagate in saved:
            logger.removeHandler(handler)
            for h in handlers:
                logger.addHandler(h)
            logger.propagate = propagate
        if bars_were_on[0]:
            hf_logging.enable_progress_bar()
        (enable_progress_bars if bars_were_on[1] else disable_progress_bars)()


def summary(notices: list[str]) -> str | None:
    """The one line the command prints about the notices, or None when there were none."""
    if not notices:
        return None
    first = notices[0].split(". ")[0].rstrip(".")
    return (f"note: {len(notices)} notice(s) from the model libraries during capture, not from lockstep (e.g. {first}); "
            "each run manifest records them all under runtime_notices")
