"""Freeze: the lock, SHA256SUMS, read-only files, .gitattributes, idempotence, dirty trees."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess

import pytest

from lockstep.errors import DirtyStudy, GitError, LockMismatch, UsageError
from lockstep.fsio import canonical_json
from lockstep.journal import read_journal
from lockstep.freeze import freeze
from studyrepo import PLAN_FILES, commit_all, copy_study, git, make_writable


def test_lock_records_each_file_commit_and_a_digest_over_its_body(demo_study):
    head = git(demo_study, "rev-parse", "HEAD").strip()
    result = freeze(demo_study)
    assert result.status == "frozen"
    lock = json.loads((demo_study / "prereg.lock.json").read_text())
    for name in PLAN_FILES:
        data = (demo_study / name).read_bytes()
        assert lock["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert lock["git"] == {"commit": head, "dirty": False, "dirty_files": []}
    body = {k: v for k, v in lock.items() if k != "lock_digest"}
    # the digest is sha256 over sorted-key, no-space UTF-8 JSON of the body (computed here by hand)
    manual = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert lock["lock_digest"] == manual == result.lock_digest
    assert lock["created_utc"].endswith("Z")


def test_sha256sums_is_accepted_by_sha256sum(demo_study):
    freeze(demo_study)
    out = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=demo_study, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(line.split(":")[0] for line in out.stdout.splitlines()) == sorted(PLAN_FILES)


def test_frozen_files_are_read_only_and_line_endings_pinned(demo_study):
    freeze(demo_study)
    for name in PLAN_FILES:
        assert not (demo_study / name).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    repo = demo_study.parent.parent
    assert "preregistrations/demo/** -text" in (repo / ".gitattributes").read_text().splitlines()
    assert git(repo, "check-attr", "text", "preregistrations/demo/study.yaml").strip().endswith("text: unset")


def test_the_journal_starts_with_the_freeze(demo_study):
    result = freeze(demo_study)
    [entry] = read_journal(demo_study).entries
    assert entry["stage"] == "prereg" and entry["seq"] == 0 and entry["prev_sha256"] is None
    assert entry["lock_digest"] == result.lock_digest
    assert entry["access_level"] == "nothing_run"


def test_freezing_twice_changes_nothing(demo_study):
    freeze(demo_study)
    before = {p.name: p.read_bytes() for p in demo_study.iterdir() if p.is_file()}
    result = freeze(demo_study)
    assert result.status == "already_frozen"
    assert {p.name: p.read_bytes() for p in demo_study.iterdir() if p.is_file()} == before


def test_a_frozen_study_whose_files_changed_is_refused_and_pointed_to_amend(demo_study):
    freeze(demo_study)
    make_writable(demo_study / "thresholds.yaml")
    (demo_study / "thresholds.yaml").write_text((demo_study / "thresholds.yaml").read_text().replace("0.05", "0.10"))
    with pytest.raises(LockMismatch, match=r"thresholds\.yaml: changed \(locked sha256 [0-9a-f]{12} size \d+, now sha256") as info:
        freeze(demo_study)
    assert "lockstep amend" in info.value.hint


def test_uncommitted_changes_are_refused_unless_allowed(demo_study):
    make_writable(demo_study / "prompts.jsonl")
    lines = (demo_study / "prompts.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["text"] += " indeed"  # an uncommitted edit that keeps the plan valid (anchors, counts)
    (demo_study / "prompts.jsonl").write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    with pytest.raises(DirtyStudy, match=r"preregistrations/demo/prompts\.jsonl") as info:
        freeze(demo_study)
    assert "--allow-dirty" in info.value.hint
    assert not (demo_study / "prereg.lock.json").exists()
    result = freeze(demo_study, allow_dirty=True)
    lock = json.loads((demo_study / "prereg.lock.json").read_text())
    assert result.dirty and lock["git"]["dirty"] is True
    assert lock["git"]["dirty_files"] == ["preregistrations/demo/prompts.jsonl"]


def test_an_untracked_study_is_dirty(repo):
    study = copy_study("demo", repo)
    with pytest.raises(DirtyStudy):
        freeze(study)


def test_a_folder_outside_git_is_refused(tmp_path):
    study = copy_study("demo", tmp_path)
    with pytest.raises(GitError, match="is not inside a git repository") as info:
        freeze(study)
    assert info.value.exit_code == 2


def test_not_a_study_folder(tmp_path):
    with pytest.raises(UsageError, match="has no study.yaml"):
        freeze(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        freeze(tmp_path / "nope")


def test_invalid_study_is_not_frozen_and_nothing_is_written(demo_study):
    make_writable(demo_study / "study.yaml")
    (demo_study / "study.yaml").write_text("schema_version: 1\n")
    commit_all(demo_study.parent.parent, "break")
    with pytest.raises(Exception, match="is a required property"):
        freeze(demo_study)
    assert sorted(p.name for p in demo_study.iterdir()) == sorted(PLAN_FILES)


def test_lock_is_written_canonically(demo_study):
    freeze(demo_study)
    lock = json.loads((demo_study / "prereg.lock.json").read_text())
    body = {k: v for k, v in lock.items() if k != "lock_digest"}
    assert hashlib.sha256(canonical_json(body)).hexdigest() == lock["lock_digest"]
