"""Amendments: a change after the freeze is a new frozen file chained to its parent, in the open."""

from __future__ import annotations

import json

import pytest

from lockstep.errors import ChainBroken, LockMismatch, SchemaError, UsageError
from lockstep.gate import require_frozen
from lockstep.journal import append_entry, read_journal
from lockstep.freeze import freeze_amendment, start_amendment
from lockstep.verify import exit_code_of, make_context, run_steps
from studyrepo import commit_all, invoke, make_writable


def _raise_alpha(folder):
    path = folder / "thresholds.yaml"
    path.write_text(path.read_text().replace("value: 0.05", "value: 0.01"))


def test_amendment_replaces_a_file_and_chains_to_the_lock(frozen_demo):
    base = require_frozen(frozen_demo)
    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="tighter alpha", seen="nothing_run")
    assert folder.name == "001" and (folder / "thresholds.yaml").read_bytes() == (frozen_demo / "thresholds.yaml").read_bytes()
    with pytest.raises(ChainBroken, match="amendment 001 is open"):
        require_frozen(frozen_demo)
    _raise_alpha(folder)
    commit_all(frozen_demo.parent.parent, "amend alpha")
    result = freeze_amendment(frozen_demo)
    lock = json.loads(result.lock_path.read_text())
    assert lock["amendment"]["parent_digest"] == base.lock_digest
    amended = require_frozen(frozen_demo)
    assert amended.thresholds["alpha"] == 0.01 and base.thresholds["alpha"] == 0.05
    assert amended.lock_digest == result.lock_digest != base.lock_digest
    last = read_journal(frozen_demo).entries[-1]
    assert last["stage"] == "amend" and last["details"]["post_hoc"] is False
    assert exit_code_of(run_steps(make_context(frozen_demo))) == 0


def test_second_amendment_chains_to_the_first(frozen_demo):
    first = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="a", seen="nothing_run")
    _raise_alpha(first)
    commit_all(frozen_demo.parent.parent)
    one = freeze_amendment(frozen_demo)
    second = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="b", seen="nothing_run")
    assert "value: 0.01" in (second / "thresholds.yaml").read_text()  # copies the plan in force
    path = second / "thresholds.yaml"
    path.write_text(path.read_text().replace("value: 2.0", "value: 3.0"))
    commit_all(frozen_demo.parent.parent)
    two = freeze_amendment(frozen_demo)
    assert json.loads(two.lock_path.read_text())["amendment"]["parent_digest"] == one.lock_digest
    assert require_frozen(frozen_demo).thresholds["min_ratio"] == 3.0


def test_an_amendment_cannot_claim_less_was_seen_than_the_journal_shows(frozen_demo):
    append_entry(frozen_demo, "audit", inputs={}, outputs={}, access_level="scores_seen",
                 lock_digest=require_frozen(frozen_demo).lock_digest)
    with pytest.raises(SchemaError, match="the journal shows 'scores_seen' was reached"):
        start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="x", seen="nothing_run")
    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="after scores", seen="scores_seen")
    _raise_alpha(folder)
    commit_all(frozen_demo.parent.parent)
    freeze_amendment(frozen_demo)
    assert read_journal(frozen_demo).entries[-1]["details"]["post_hoc"] is True


def test_an_amendment_that_changes_nothing_is_refused(frozen_demo):
    start_amendment(frozen_demo, replaces=["rubric.yaml"], reason="noop", seen="nothing_run")
    commit_all(frozen_demo.parent.parent)
    with pytest.raises(UsageError, match="without changing a byte"):
        freeze_amendment(frozen_demo)


def test_an_invalid_amendment_is_refused_with_the_problem(frozen_demo):
    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="x", seen="nothing_run")
    (folder / "thresholds.yaml").write_text("schema_version: 1\nthresholds: {}\n")
    commit_all(frozen_demo.parent.parent)
    with pytest.raises(SchemaError, match="thresholds.yaml"):
        freeze_amendment(frozen_demo)


def test_tampering_with_a_frozen_amendment_is_caught(frozen_demo):
    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="x", seen="nothing_run")
    _raise_alpha(folder)
    commit_all(frozen_demo.parent.parent)
    freeze_amendment(frozen_demo)
    make_writable(folder / "thresholds.yaml")
    (folder / "thresholds.yaml").write_text((folder / "thresholds.yaml").read_text().replace("0.01", "0.02"))
    with pytest.raises(LockMismatch, match="amendment 001 files differ from its lock"):
        require_frozen(frozen_demo)


def test_unknown_file_and_empty_reason_are_both_reported(frozen_demo):
    with pytest.raises(SchemaError) as info:
        start_amendment(frozen_demo, replaces=["notes.txt"], reason=" ", seen="nothing_run")
    messages = [p.message for p in info.value.problems]
    assert any("'notes.txt' cannot be amended" in m for m in messages)
    assert any("is empty; say why the plan changes" in m for m in messages)


def test_a_bad_threshold_in_an_amendment_names_the_amendment_copy(frozen_demo):
    """The problem names amendments/NNN/thresholds.yaml (the file to edit), not the study's own
    thresholds.yaml, and the fix points back at `lockstep amend --freeze`, which is what validates a draft."""
    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="looser alpha", seen="nothing_run")
    path = folder / "thresholds.yaml"
    path.write_text(path.read_text().replace("value: 0.05", "value: 5"))
    commit_all(frozen_demo.parent.parent)
    result = invoke("amend", "preregistrations/demo", "--freeze", cwd=frozen_demo.parent.parent)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("  - ")]
    assert problems == [line for line in problems if line.startswith("  - amendments/001/thresholds.yaml:4 /thresholds/alpha/value:")]
    assert len(problems) == 1 and "lockstep amend" in result.output and "--freeze` again" in result.output
    assert not (folder / "amendment.lock.json").exists()


def test_a_frozen_amendments_file_is_named_by_validate(frozen_demo):
    """Once frozen, the amendment's copy is the plan in force: validate's --json names that file."""
    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="tighter", seen="nothing_run")
    _raise_alpha(folder)
    commit_all(frozen_demo.parent.parent)
    freeze_amendment(frozen_demo)
    path = folder / "thresholds.yaml"
    make_writable(path)
    path.write_text(path.read_text().replace("value: 0.01", "value: 5"))
    result = invoke("validate", "preregistrations/demo", "--json", cwd=frozen_demo.parent.parent)
    assert result.exit_code == 1
    assert [p["file"] for p in json.loads(result.output)["problems"]] == ["amendments/001/thresholds.yaml"]
