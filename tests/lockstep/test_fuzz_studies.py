"""Seed-driven fuzzing of study loading at a size CI can afford: every mutation of
``tools/fuzz_studies.py`` twice (byte flips, truncation, huge integers, deep nesting, alias bombs,
symlinks, non-finite numbers, huge strings, bad tags, ...), each folder run through
``lockstep validate`` and ``prereg`` in a forked child with a memory cap and a timeout.

No command may raise, hang, exit non-zero without one ``error:`` message, print a line longer than
``MAX_LINE``, accept a certainly invalid study, or leave a lock behind a refused freeze. The large run
(300+ folders) is ``python tools/fuzz_studies.py --n 300``; its result is in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_studies.py"


def _tool():
    spec = importlib.util.spec_from_file_location("fuzz_studies", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_fuzzed_studies_never_crash_hang_or_mumble(tmp_path):
    tool = _tool()
    n = 2 * len(tool.MUTATIONS)
    # verify of the few folders that still freeze is left to the large run (it is the slow command here)
    cases = tool.fuzz(n, seed=20261130, timeout=60, workdir=tmp_path, cycle=True, verify=False)
    failing = [(c.index, c.mutation, c.failures) for c in cases if c.failures]
    assert failing == []
    result = tool.summary(cases)
    assert result["cases"] == n and result["tracebacks"] == 0 and result["hangs"] == 0
    assert set(result["mutations"]) == {m.__name__[2:] for m in tool.MUTATIONS}
    # the certainly invalid ones were each refused by validate, with exit 1 and a message naming a plan file
    invalid = [c for c in cases if c.invalid]
    assert len(invalid) >= n // 2
    for case in invalid:
        validate = case.outcomes[0]
        assert validate.code == 1, (case.mutation, validate.stderr)
        assert any(name in validate.stderr for name in tool.PLAN_FILES), (case.mutation, validate.stderr)


def test_the_judge_catches_what_it_is_meant_to(tmp_path):
    # the oracle itself must be able to fail: a traceback, a hang, a bare exit and a long line are each reported
    tool = _tool()
    study = tmp_path / "study"
    study.mkdir()
    case = tool.Case(0, "synthetic", invalid=True, outcomes=[
        tool.Outcome("validate", 0, 0.1, "", ""),
        tool.Outcome("prereg", tool.TRACEBACK_EXIT, 0.1, "", "Traceback (most recent call last):\nValueError: x\n"),
        tool.Outcome("prereg", None, 60.0),
        tool.Outcome("prereg", 1, 0.1, "", "Aborted!\n"),
        tool.Outcome("prereg", 2, 0.1, "", "something went wrong\n"),
        tool.Outcome("prereg", 1, 0.1, "", "error: " + "x" * (tool.MAX_LINE + 1) + "\n"),
    ])
    tool.judge(case, study)
    kinds = sorted(f.split(":", 1)[0] for f in case.failures)
    assert kinds == ["accepted", "hang", "long message", "traceback", "traceback", "unclear"]
