"""Crash windows and concurrency (issue 11, section 3).

Each kill point is simulated by leaving the files exactly as a process killed there leaves them (real
files, real git repositories, real locks held by real processes), never by mocking the filesystem:

- the journal written and its head not (a stale head, one entry behind);
- a freeze killed after its journal entry and before its lock is put in place, or before its entry;
- a capture killed after ``manifest.json`` and before its journal entry (and before ``_work/`` went);
- two captures of one run at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from audit.chain import verify_target
from capture.runlock import lock_path, runs_locked
from capture_helpers import frozen_repo
from lockstep.errors import CaptureError, ChainBroken
from lockstep.fsio import pretty_json, sha256_file
from lockstep.gate import require_frozen
from lockstep.journal import HEAD, JOURNAL, append_entry, read_journal
from lockstep.lock import current_lock_digest
from lockstep.verify import exit_code_of, make_context, run_steps
from studyrepo import invoke

PYTHON = sys.executable




# ---------------------------------------------------------------- the journal and its head

def _append_without_head(study: Path) -> bytes:
    """An append killed between its two writes: the journal has the new entry, the head is the old one."""
    old_head = (study / HEAD).read_bytes()
    append_entry(study, "capture", inputs={}, outputs={}, access_level="nothing_run", lock_digest=current_lock_digest(study),
                 details={"runs": []})
    (study / HEAD).write_bytes(old_head)
    return old_head


def test_a_head_one_entry_behind_is_recovered_and_explained(frozen_demo):
    _append_without_head(frozen_demo)
    results = run_steps(make_context(frozen_demo))
    assert exit_code_of(results) == 0
    journal_step = next(r for r in results if r.name == "verify_journal")
    assert "JOURNAL.head.json was one entry behind (an append was interrupted" in journal_step.message
    assert len(require_frozen(frozen_demo).journal.entries) == 2  # the gate lets every stage run
    result = invoke("prereg", "preregistrations/demo", cwd=frozen_demo.parent.parent)
    assert result.exit_code == 0 and "rewrote JOURNAL.head.json" in result.output
    journal = read_journal(frozen_demo)
    assert not journal.head_behind and json.loads((frozen_demo / HEAD).read_bytes()) == journal.head
    assert "one entry behind" not in next(r for r in run_steps(make_context(frozen_demo)) if r.name == "verify_journal").message


def test_the_next_append_rewrites_a_stale_head(frozen_demo):
    _append_without_head(frozen_demo)
    append_entry(frozen_demo, "capture", inputs={}, outputs={}, access_level="nothing_run",
                 lock_digest=current_lock_digest(frozen_demo), details={"runs": []})
    journal = read_journal(frozen_demo)
    assert len(journal.entries) == 3 and not journal.head_behind


def test_a_head_two_entries_behind_is_an_alteration(frozen_demo):
    old_head = (frozen_demo / HEAD).read_bytes()
    for _ in range(2):
        append_entry(frozen_demo, "capture", inputs={}, outputs={}, access_level="nothing_run",
                     lock_digest=current_lock_digest(frozen_demo), details={"runs": []})
    (frozen_demo / HEAD).write_bytes(old_head)
    with pytest.raises(ChainBroken, match="witnesses 1 entries .* but JOURNAL.jsonl has 3"):
        read_journal(frozen_demo)


def _undo_lock_install(study: Path) -> None:
    """The files of a freeze killed after its journal entry and before its lock's rename (and its head)."""
    os.replace(study / "prereg.lock.json", study / ".prereg.lock.json.pending")
    (study / HEAD).write_bytes(pretty_json({"length": 0, "last_sha256": None}))


def test_a_freeze_killed_after_its_journal_entry_is_finished_by_prereg(demo_study):
    from lockstep.freeze import freeze

    freeze(demo_study)
    digest = sha256_file(demo_study / "prereg.lock.json")
    _undo_lock_install(demo_study)
    results = run_steps(make_context(demo_study))
    assert exit_code_of(results) == 2 and "a freeze was interrupted" in results[-1].message
    result = invoke("prereg", "preregistrations/demo", cwd=demo_study.parent.parent)
    assert result.exit_code == 0 and "finished an interrupted freeze" in result.output
    assert sha256_file(demo_study / "prereg.lock.json") == digest and not (demo_study / ".prereg.lock.json.pending").exists()
    assert len(read_journal(demo_study).entries) == 1
    assert exit_code_of(run_steps(make_context(demo_study))) == 0


def test_a_freeze_killed_before_its_journal_entry_starts_over(demo_study):
    from lockstep.freeze import freeze

    freeze(demo_study)
    os.replace(demo_study / "prereg.lock.json", demo_study / ".prereg.lock.json.pending")
    (demo_study / JOURNAL).unlink()
    (demo_study / HEAD).write_bytes(pretty_json({"length": 0, "last_sha256": None}))
    result = invoke("prereg", "preregistrations/demo", cwd=demo_study.parent.parent)
    assert result.exit_code == 0 and ": frozen; lock digest" in result.output
    assert not (demo_study / ".prereg.lock.json.pending").exists()
    assert exit_code_of(run_steps(make_context(demo_study))) == 0


# ---------------------------------------------------------------- capture: manifest written, entry not

@pytest.fixture(scope="module")
def captured_unjournaled(tmp_path_factory) -> Path:
    """A frozen study whose run ``greedy`` was captured to its manifest but never journalled: what a
    capture killed after ``manifest.json`` leaves (the library call writes no entry; the CLI writes it after)."""
    from capture.run import run_capture

    study = frozen_repo(tmp_path_factory.mktemp("unjournaled") / "repo")
    run_capture(require_frozen(study), run_ids=["greedy"], progress=False)
    return study.parent.parent


@pytest.fixture
def copy(captured_unjournaled, tmp_path) -> Path:
    """A private copy of the repository of :func:`captured_unjournaled`."""
    dest = tmp_path / "repo"
    shutil.copytree(captured_unjournaled, dest, symlinks=True)
    return dest


def test_a_capture_killed_after_its_manifest_is_finished_by_the_rerun(copy):
    repo = copy
    study, run_dir = repo / "preregistrations/demo", repo / "runs/demo/greedy"
    (run_dir / "_work" / "batches" / "b00000").mkdir(parents=True)  # the kill came before _work/ was removed
    (run_dir / "_work" / "run.json").write_text("{}\n")
    assert [e["stage"] for e in read_journal(study).entries] == ["prereg"]
    early = invoke("label", "preregistrations/demo", "--run", "greedy", cwd=repo)
    assert early.exit_code == 1 and "has no capture in the journal" in early.output  # completion is the entry
    result = invoke("capture", "preregistrations/demo", "--run", "greedy", "--no-progress", cwd=repo)
    assert result.exit_code == 0, result.output
    assert "an interrupted capture, finished" in result.output
    assert not (run_dir / "_work").exists()
    entries = read_journal(study).entries
    assert [e["stage"] for e in entries] == ["prereg", "capture"] and entries[1]["details"]["runs"] == ["greedy"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert entries[1]["outputs"] == {f"runs/demo/greedy/{k}": v for k, v in manifest["outputs"].items()} | {
        "runs/demo/greedy/manifest.json": sha256_file(run_dir / "manifest.json")}
    assert entries[1]["outputs"]["runs/demo/greedy/units.parquet"] == sha256_file(run_dir / "units.parquet")
    again = invoke("capture", "preregistrations/demo", "--run", "greedy", "--no-progress", cwd=repo)
    assert again.exit_code == 0 and len(read_journal(study).entries) == 2  # complete: no second entry
    assert invoke("label", "preregistrations/demo", "--run", "greedy", cwd=repo).exit_code == 0
    results = verify_target(study)
    assert exit_code_of(results) == 0, [r.message for r in results if not r.ok]


def test_a_run_changed_after_its_manifest_is_not_journalled(copy):
    repo = copy
    path = repo / "runs/demo/greedy/units.parquet"
    frame = pd.read_parquet(path)
    frame["W"] = frame["W"] * 0.5
    frame.to_parquet(path, index=False)
    result = invoke("capture", "preregistrations/demo", "--run", "greedy", "--no-progress", cwd=repo)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no longer holds the files its manifest recorded (units.parquet missing, added or changed)" in result.output
    assert "delete " in result.output and "runs/demo/greedy and run `lockstep capture" in result.output
    assert [e["stage"] for e in read_journal(repo / "preregistrations/demo").entries] == ["prereg"]


# ---------------------------------------------------------------- two captures of one run

CAPTURE = ["-m", "lockstep", "capture", "preregistrations/demo", "--run", "greedy", "--no-progress"]
HOLD = """import sys, time
from capture.runlock import runs_locked
with runs_locked(sys.argv[1], 'demo', ['greedy']):
    print('held', flush=True)
    time.sleep(120)
"""


def test_a_second_capture_of_a_locked_run_is_refused_naming_the_holder(copy):
    repo = copy
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLD, str(repo / "runs")], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([PYTHON, *CAPTURE], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        assert f"run 'greedy' is being captured by another process: pid {holder.pid} on host {socket.gethostname()}, started 20" in second.stderr
        assert [e["stage"] for e in read_journal(repo / "preregistrations/demo").entries] == ["prereg"]
    finally:
        holder.send_signal(signal.SIGKILL)  # killed, however it ends, its lock goes with it
        holder.wait()
    third = subprocess.run([PYTHON, *CAPTURE], cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert third.returncode == 0, third.stderr
    assert [e["stage"] for e in read_journal(repo / "preregistrations/demo").entries] == ["prereg", "capture"]


def test_shards_share_a_run_lock_and_the_whole_run_needs_it_alone(tmp_path):
    with runs_locked(tmp_path, "demo", ["sampled"], shard=(0, 2)), runs_locked(tmp_path, "demo", ["sampled"], shard=(1, 2)), \
            pytest.raises(CaptureError, match=rf"pid {os.getpid()} on host .*, shard 1/2"), \
            runs_locked(tmp_path, "demo", ["sampled"]):
        pass
    with runs_locked(tmp_path, "demo", ["sampled"]):  # released: free again
        assert json.loads(lock_path(tmp_path, "demo", "sampled").read_text())["shard"] is None
