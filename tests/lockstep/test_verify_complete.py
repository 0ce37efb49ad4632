"""What passes verify but should not (issue 11, section 2): every artifact a stage recorded must be present
and match, nothing unrecorded may sit beside them, the lock's and the head's bytes are checked, every
stage checks the digests of what it reads, and a frozen study whose journal is gone is altered.

The audited study is built once per module (prereg -> capture -> label -> audit, in process, through the
CLI a user runs) in a real git repository; each test attacks its own copy.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

from audit.chain import verify_target
from lockstep.errors import ChainBroken, LockMismatch
from lockstep.fsio import sha256_file
from lockstep.gate import require_frozen
from lockstep.verify import exit_code_of, make_context, run_steps
from studyrepo import commit_all, copy_study, git, invoke, make_writable




@pytest.fixture(scope="module")
def audited_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("audited") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study("demo", repo)
    commit_all(repo, "add demo")
    assert invoke("prereg", "preregistrations/demo", cwd=repo).exit_code == 0
    commit_all(repo, "freeze demo")
    for stage in (["capture", "--no-progress"], ["label"], ["audit"]):
        result = invoke(stage[0], "preregistrations/demo", *stage[1:], cwd=repo)
        assert result.exit_code == 0, result.output
    return repo


@pytest.fixture
def copy(audited_repo, tmp_path) -> Path:
    """A private copy of the audited repository; returns its root."""
    dest = tmp_path / "repo"
    shutil.copytree(audited_repo, dest, symlinks=True)
    return dest


def verify(repo: Path):
    results = verify_target(repo / "preregistrations" / "demo")
    return exit_code_of(results), results


def failure(results) -> tuple[str, str]:
    [failed] = [r for r in results if not r.ok]
    return failed.name, failed.message


def test_the_audited_study_is_intact_and_verify_lists_every_artifact(copy):
    recorded = sum(1 for p in (copy / "runs" / "demo").rglob("*") if p.is_file() and not p.name.startswith(".")) \
        + sum(1 for p in (copy / "reports" / "demo").rglob("*") if p.is_file())
    # files lockstep writes beside the artifacts, that are no stage's output, are noted and not counted
    (copy / "runs/demo/sampled/_work").mkdir()
    (copy / "runs/demo/sampled/_work/run.json").write_text("{}\n")
    result = invoke("bundle", "preregistrations/demo", cwd=copy)
    assert result.exit_code == 0, result.output
    code, results = verify(copy)
    assert code == 0, [r.message for r in results if not r.ok]
    message = next(r for r in results if r.name == "verify_artifacts").message
    assert message.startswith(f"{recorded} artifact(s) present and matching")
    assert "runs/demo/sampled/_work/ (an interrupted capture's scratch folder" in message and "(a bundle)" in message


def test_a_deleted_units_table_is_an_alteration_naming_it(copy):
    (copy / "runs/demo/sampled/units.parquet").unlink()
    code, results = verify(copy)
    assert code == 1
    name, message = failure(results)
    assert name == "verify_artifacts" and "runs/demo/sampled/units.parquet is missing (recorded by journal entry 1)" in message


def test_deleted_report_and_ledger_are_named(copy):
    (copy / "reports/demo/report.html").unlink()
    (copy / "reports/demo/ledger.json").unlink()
    code, results = verify(copy)
    name, message = failure(results)
    assert code == 1 and name == "verify_artifacts"
    assert "reports/demo/report.html is missing" in message and "reports/demo/ledger.json is missing" in message


def test_a_removed_runs_folder_is_altered_not_intact(copy):
    shutil.rmtree(copy / "runs" / "demo")
    code, results = verify(copy)
    name, message = failure(results)
    assert code == 1 and name == "verify_artifacts"
    assert "runs/demo/greedy/ is missing" in message and "runs/demo/sampled/ is missing" in message
    result = invoke("verify", "preregistrations/demo", cwd=copy)
    assert result.exit_code == 1 and "verify: ALTERED" in result.output and "bundle" in result.output


def test_extra_files_in_a_run_or_report_folder_are_alterations(copy):
    (copy / "reports/demo/tables/extra.csv").write_text("unit,p\nL0E0,0.001\n")
    (copy / "runs/demo/greedy/units_fixed.parquet").write_bytes((copy / "runs/demo/greedy/units.parquet").read_bytes())
    code, results = verify(copy)
    name, message = failure(results)
    assert code == 1 and name == "verify_artifacts"
    assert "reports/demo/tables/extra.csv is not recorded by any stage" in message
    assert "runs/demo/greedy/units_fixed.parquet is not recorded by any stage" in message


def test_a_rewritten_units_table_is_refused_by_the_routing_audit(copy):
    path = copy / "runs/demo/sampled/units.parquet"
    frame = pd.read_parquet(path)
    frame.loc[frame["expert"] == 5, "W"] *= 2.0
    frame.to_parquet(path, index=False)
    result = invoke("audit", "preregistrations/demo", cwd=copy)
    assert result.exit_code == 1
    assert "units.parquet differs from the file the capture recorded in the journal (entry 1)" in result.output
    assert "Traceback" not in result.output


def test_relabelling_refuses_rewritten_texts(copy):
    path = copy / "runs/demo/greedy/texts.parquet"
    frame = pd.read_parquet(path)
    frame["trimmed_text"] = "i feel the hum inside"
    frame.to_parquet(path, index=False)
    before = (copy / "preregistrations/demo/JOURNAL.jsonl").read_bytes()
    result = invoke("label", "preregistrations/demo", "--run", "greedy", cwd=copy)
    assert result.exit_code == 1 and "texts.parquet differs from the file the capture recorded" in result.output
    assert (copy / "preregistrations/demo/JOURNAL.jsonl").read_bytes() == before


def test_a_review_refuses_a_ledger_the_audit_did_not_write(copy):
    path = copy / "reports/demo/ledger.json"
    ledger = json.loads(path.read_text())
    ledger["claims"][0]["status"] = "held" if ledger["claims"][0]["status"] != "held" else "fell"
    path.write_text(json.dumps(ledger, indent=2))
    before = (copy / "preregistrations/demo/JOURNAL.jsonl").read_bytes()
    result = invoke("review", "preregistrations/demo", "--approve", "--reviewer", "rev", cwd=copy)
    assert result.exit_code == 1 and "ledger.json differs from the file the audit recorded in the journal" in result.output
    assert (copy / "preregistrations/demo/JOURNAL.jsonl").read_bytes() == before


# ---------------------------------------------------------------- the lock's and the head's own bytes

WHITESPACE = (b" ", b"\n", b"\t", b"\r")


def _whitespace_swaps(data: bytes, n: int, seed: int) -> list[bytes]:
    """``n`` variants of ``data`` with one whitespace byte replaced by another: each still parses to the same JSON."""
    rng = random.Random(seed)
    spots = [i for i, b in enumerate(data) if bytes([b]) in WHITESPACE]
    out = []
    for i in rng.sample(spots, min(n, len(spots))):
        other = rng.choice([w for w in WHITESPACE if w != data[i : i + 1]])
        out.append(data[:i] + other + data[i + 1 :])
    return out


@pytest.mark.parametrize("name", ["prereg.lock.json", "JOURNAL.head.json"])
def test_whitespace_swaps_in_the_lock_and_the_head_are_caught(frozen_demo, name):
    path = frozen_demo / name
    original = path.read_bytes()
    variants = _whitespace_swaps(original, 25, seed=11)
    assert len(variants) == 25 or name == "JOURNAL.head.json"
    make_writable(path)
    for variant in variants:
        assert json.loads(variant) == json.loads(original)  # the same JSON: only the bytes differ
        path.write_bytes(variant)
        results = run_steps(make_context(frozen_demo))
        assert exit_code_of(results) == 1, variant
        assert "byte for byte" in failure(results)[1]
    path.write_bytes(original)
    assert exit_code_of(run_steps(make_context(frozen_demo))) == 0


def test_a_back_dated_lock_with_a_recomputed_digest_is_caught(frozen_demo):
    """A lock rewritten in lockstep's own form with a recomputed digest still differs from what the freeze journalled."""
    from lockstep.fsio import pretty_json
    from lockstep.lock import lock_digest_of

    path = frozen_demo / "prereg.lock.json"
    body = json.loads(path.read_bytes())
    body["created_utc"] = "2020-01-01T00:00:00.000000Z"  # back-dated
    body["lock_digest"] = lock_digest_of(body)
    make_writable(path)
    path.write_bytes(pretty_json(body))
    results = run_steps(make_context(frozen_demo))
    assert exit_code_of(results) == 1
    name, message = failure(results)
    # the freeze entry names the lock digest, so the forged one is "not the freeze of this lock"
    assert name == "verify_journal" and "first entry is not the freeze of this lock" in message


# ---------------------------------------------------------------- a frozen study whose journal is gone

def test_prereg_after_deleting_the_journal_refuses_and_writes_nothing(frozen_demo):
    (frozen_demo / "JOURNAL.jsonl").unlink()
    (frozen_demo / "JOURNAL.head.json").unlink()
    repo = frozen_demo.parent.parent
    result = invoke("prereg", "preregistrations/demo", cwd=repo)
    assert result.exit_code == 1 and "the journal was removed" in result.output
    assert not (frozen_demo / "JOURNAL.jsonl").exists() and not (frozen_demo / "JOURNAL.head.json").exists()
    amend = invoke("amend", "preregistrations/demo", "--replace", "thresholds.yaml", "--reason", "x", "--seen", "nothing_run", cwd=repo)
    assert amend.exit_code == 1 and not (frozen_demo / "amendments").exists()
    results = run_steps(make_context(frozen_demo))
    assert exit_code_of(results) == 1 and "JOURNAL.jsonl is missing or empty" in failure(results)[1]
    with pytest.raises(ChainBroken):
        require_frozen(frozen_demo)


def test_prereg_after_deleting_the_lock_of_a_study_with_a_history_refuses(frozen_demo):
    for name in ("prereg.lock.json", "SHA256SUMS"):
        (frozen_demo / name).unlink()
    repo = frozen_demo.parent.parent
    journal = (frozen_demo / "JOURNAL.jsonl").read_bytes()
    results = run_steps(make_context(frozen_demo))
    assert exit_code_of(results) == 1 and "records stages run under a lock" in failure(results)[1]
    result = invoke("prereg", "preregistrations/demo", cwd=repo)
    assert result.exit_code == 1 and "a study with a history is not frozen again" in result.output
    assert not (frozen_demo / "prereg.lock.json").exists() and (frozen_demo / "JOURNAL.jsonl").read_bytes() == journal


def test_the_freeze_records_the_lock_bytes(frozen_demo):
    from lockstep.journal import read_journal

    first = read_journal(frozen_demo).entries[0]
    assert first["outputs"]["prereg.lock.json"] == sha256_file(frozen_demo / "prereg.lock.json")
    with pytest.raises(LockMismatch, match="byte for byte"):
        from lockstep.lock import read_lock

        path = frozen_demo / "prereg.lock.json"
        make_writable(path)
        path.write_bytes(path.read_bytes().replace(b'": ', b'":  ', 1))
        read_lock(path)
