"""The command line as a user runs it: one clear message and a non-zero exit for bad input, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from studyrepo import commit_all, copy_study, make_writable

LOCKSTEP = [sys.executable, "-m", "lockstep"]


def run(*args, cwd=None):
    return subprocess.run([*LOCKSTEP, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_clean_error(result, code: int, *needles: str):
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr


def test_prereg_then_verify_then_prereg_again(demo_study):
    first = run("prereg", demo_study)
    assert first.returncode == 0 and "frozen; lock digest" in first.stdout
    assert run("verify", demo_study).returncode == 0
    again = run("prereg", demo_study)
    assert again.returncode == 0 and "already frozen and intact" in again.stdout


@pytest.mark.parametrize(
    "content, needle",
    [
        ("schema_version: 1\nthresholds:\n  alpha: {value: 0.05, description: a}\n  alpha: {value: 0.1, description: b}\n", "duplicate key 'alpha'"),
        ("schema_version: 1\nthresholds: [\n", "not valid YAML"),
        ("schema_version: 1\nthresholds:\n  alpha: {value: high, description: a}\n", "expected number, found str 'high'"),
        ("", "the file is empty"),
    ],
)
def test_bad_thresholds_give_one_clear_message(repo, content, needle):
    study = copy_study("demo", repo)
    (study / "thresholds.yaml").write_text(content)
    commit_all(repo)
    result = run("prereg", study)
    assert_clean_error(result, 1, "thresholds.yaml", needle, "fix: ")
    assert not (study / "prereg.lock.json").exists()


def test_unreadable_file(repo):
    study = copy_study("demo", repo)
    commit_all(repo)
    (study / "rubric.yaml").unlink()
    (study / "rubric.yaml").mkdir()
    assert_clean_error(run("validate", study), 1, "rubric.yaml", "is not a regular file")


def test_non_git_folder_and_missing_folder(tmp_path):
    study = copy_study("demo", tmp_path)
    assert_clean_error(run("prereg", study), 2, "is not inside a git repository", "git init")
    assert_clean_error(run("verify", tmp_path / "absent"), 2, "does not exist")


def test_gate_message_lists_every_changed_file(demo_study):
    run("prereg", demo_study)
    for name in ("rubric.yaml", "prompts.jsonl"):
        make_writable(demo_study / name)
        with open(demo_study / name, "a") as handle:
            handle.write("\n")
    result = run("prereg", demo_study)
    assert_clean_error(result, 1, "rubric.yaml: changed", "prompts.jsonl: changed", "lockstep amend")


def test_amend_cli_round_trip(demo_study):
    run("prereg", demo_study)
    commit_all(demo_study.parent.parent)
    opened = run("amend", demo_study, "--replace", "thresholds.yaml", "--reason", "stricter", "--seen", "nothing_run")
    assert opened.returncode == 0, opened.stderr
    path = demo_study / "amendments" / "001" / "thresholds.yaml"
    path.write_text(path.read_text().replace("value: 0.05", "value: 0.01"))
    commit_all(demo_study.parent.parent)
    frozen = run("amend", demo_study, "--freeze")
    assert frozen.returncode == 0, frozen.stderr
    listing = run("journal", demo_study).stdout.splitlines()
    assert [line.split()[2] for line in listing] == ["prereg", "amend"]
    assert_clean_error(run("amend", demo_study, "--freeze"), 2, "has no open amendment")


def test_validate_reports_all_problems_and_exit_1(repo):
    study = copy_study("demo", repo)
    lines = (study / "prompts.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["anchors"] = ["absent-word"]
    record["split"] = "training"
    lines[0] = json.dumps(record)
    (study / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    result = run("validate", study)
    assert_clean_error(result, 1, "2 problems in the study", "prompts.jsonl:1 /0/split", "'training' is not allowed")


def test_version_and_help():
    assert run("--version").stdout.startswith("lockstep, version")
    assert "verify" in run("--help").stdout
