"""Out of disk: a clear error, nothing half-written, nothing lost; the next run resumes to the same tables."""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys

import pandas as pd

from lockstep.journal import read_journal


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # let write() fail with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_out_of_disk_is_a_clear_error_and_the_rerun_completes(demo_capture, models_root, tmp_path):
    frozen, paths = demo_capture
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(models_root, runs / "_models")
    before = len(read_journal(frozen.root).entries)
    command = [sys.executable, "-m", "lockstep", "capture", str(frozen.root), "--run", "sampled", "--runs-root", str(runs), "--no-progress"]
    full = subprocess.run(command, capture_output=True, text=True, preexec_fn=_limit_file_size(2048))
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    assert "out of disk space while writing under" in full.stderr and "completed batches are kept" in full.stderr
    run_dir = runs / "demo" / "sampled"
    assert not (run_dir / "manifest.json").exists()
    assert not list(run_dir.rglob("*.tmp"))  # no half-written file left behind
    assert len(read_journal(frozen.root).entries) == before  # an incomplete capture is not journalled

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for table in ("units.parquet", "texts.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run_dir / table), pd.read_parquet(paths["sampled"] / table))
