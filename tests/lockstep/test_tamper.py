"""Tampering: any single flipped byte, an edited lock, a removed journal entry — verify exits 1, the gate refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockstep.errors import ChainBroken, LockMismatch, NotLocked
from lockstep.gate import require_frozen
from lockstep.journal import append_entry
from lockstep.lock import current_lock_digest
from lockstep.verify import exit_code_of, make_context, run_steps
from studyrepo import PLAN_FILES, make_writable

LOCKSTEP = [sys.executable, "-m", "lockstep"]


def verify_code(study: Path) -> int:
    return exit_code_of(run_steps(make_context(study)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_byte_of_any_frozen_file_is_caught(frozen_demo, data):
    name = data.draw(st.sampled_from(PLAN_FILES + ("prereg.lock.json", "SHA256SUMS")))
    path = frozen_demo / name
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(original)
    flipped[position] ^= 1 << bit
    make_writable(path)
    path.write_bytes(bytes(flipped))
    try:
        assert verify_code(frozen_demo) == 1
        with pytest.raises((LockMismatch, ChainBroken)):
            require_frozen(frozen_demo)
    finally:
        path.write_bytes(original)
    assert verify_code(frozen_demo) == 0


def test_the_intact_study_verifies_and_the_gate_returns_the_plan(frozen_demo):
    assert verify_code(frozen_demo) == 0
    study = require_frozen(frozen_demo)
    lines = [l for l in (frozen_demo / "prompts.jsonl").read_text().splitlines() if l.strip()]
    assert study.study_id == "demo" and [p["id"] for p in study.prompts] == [json.loads(l)["id"] for l in lines]
    assert study.lock_digest == json.loads((frozen_demo / "prereg.lock.json").read_text())["lock_digest"]


def test_a_missing_locked_file_is_named(frozen_demo):
    (frozen_demo / "rubric.yaml").unlink()
    with pytest.raises(LockMismatch, match=r"rubric\.yaml: missing \(locked sha256"):
        require_frozen(frozen_demo)


def test_an_edited_lock_body_with_a_recomputed_file_digest_is_still_caught(frozen_demo):
    lock_path = frozen_demo / "prereg.lock.json"
    lock = json.loads(lock_path.read_text())
    lock["files"]["thresholds.yaml"]["size"] += 1
    make_writable(lock_path)
    lock_path.write_text(json.dumps(lock))
    with pytest.raises(LockMismatch, match="lock_digest does not match the lock body"):
        require_frozen(frozen_demo)


def test_no_lock_means_not_frozen(demo_study):
    with pytest.raises(NotLocked, match="is not frozen") as info:
        require_frozen(demo_study)
    # a user's own repository has no Makefile with lockstep's targets: the hint is the lockstep command
    assert info.value.hint.startswith("run `lockstep prereg ") and info.value.hint.endswith("/demo` first")
    assert "make" not in info.value.hint
    assert verify_code(demo_study) == 2


def _append(study: Path, stage: str = "capture") -> None:
    append_entry(study, stage, inputs={}, outputs={"x": "0" * 64}, access_level="nothing_run",
                 lock_digest=current_lock_digest(study))


def test_removing_the_last_journal_entry_is_caught(frozen_demo):
    _append(frozen_demo)
    _append(frozen_demo)
    journal = frozen_demo / "JOURNAL.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(ChainBroken, match="witnesses 3 entries .* but JOURNAL.jsonl has 2"):
        require_frozen(frozen_demo)
    assert verify_code(frozen_demo) == 1


def test_editing_a_middle_journal_entry_is_caught(frozen_demo):
    _append(frozen_demo)
    _append(frozen_demo)
    journal = frozen_demo / "JOURNAL.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[1])
    entry["access_level"] = "scores_seen"
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    journal.write_bytes(b"".join(lines))
    with pytest.raises(ChainBroken, match=r"JOURNAL\.jsonl:3: prev_sha256 does not match"):
        require_frozen(frozen_demo)


def test_the_gate_refuses_a_study_with_a_broken_journal_even_if_files_are_intact(frozen_demo):
    (frozen_demo / "JOURNAL.head.json").unlink()
    with pytest.raises(ChainBroken, match="JOURNAL.head.json is missing"):
        require_frozen(frozen_demo)


def test_a_commit_that_does_not_hold_the_bytes_is_caught(frozen_demo):
    lock_path = frozen_demo / "prereg.lock.json"
    lock = json.loads(lock_path.read_text())
    from lockstep.lock import lock_digest_of
    from lockstep.fsio import pretty_json
    lock["git"]["commit"] = "f" * 40
    lock["lock_digest"] = lock_digest_of(lock)
    make_writable(lock_path)
    lock_path.write_bytes(pretty_json(lock))  # a forger who writes the lock in lockstep's own form
    results = run_steps(make_context(frozen_demo))
    [failed] = [r for r in results if not r.ok]
    assert failed.name == "verify_git_commit" and "is not in this repository" in failed.message


def test_verify_cli_exit_codes_and_json(frozen_demo, demo_study):
    ok = subprocess.run([*LOCKSTEP, "verify", str(frozen_demo), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] is True and [s["number"] for s in report["steps"]] == list(range(1, len(report["steps"]) + 1))
    make_writable(frozen_demo / "study.yaml")
    with open(frozen_demo / "study.yaml", "a") as handle:
        handle.write("\n")
    bad = subprocess.run([*LOCKSTEP, "verify", str(frozen_demo)], capture_output=True, text=True)
    assert bad.returncode == 1 and "FAIL verify_files_match_lock" in bad.stdout and "Traceback" not in bad.stderr


def test_verify_staged_checks_the_index(frozen_demo):
    from studyrepo import git

    repo = frozen_demo.parent.parent
    assert exit_code_of(run_steps(make_context(frozen_demo, staged=True))) == 0
    make_writable(frozen_demo / "rubric.yaml")
    (frozen_demo / "rubric.yaml").write_text("changed\n")
    # the working tree changed but the index did not: --staged still passes ...
    assert exit_code_of(run_steps(make_context(frozen_demo, staged=True))) == 0
    git(repo, "add", "preregistrations/demo/rubric.yaml")
    # ... until the change is staged, which a pre-commit hook then refuses
    results = run_steps(make_context(frozen_demo, staged=True))
    assert exit_code_of(results) == 1 and "in the git index" in results[-1].message
