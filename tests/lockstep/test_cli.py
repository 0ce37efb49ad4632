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


PIPELINE = ["new", "validate", "prereg", "amend", "discover", "propose", "capture", "label", "audit", "review", "verify", "bundle", "sign",
            "timestamp", "check-writeup", "cite", "demo"]


def test_help_lists_commands_in_pipeline_order_each_with_an_example_and_its_exit_codes():
    from click.testing import CliRunner

    from lockstep.cli import cli

    text = CliRunner().invoke(cli, ["--help"]).output
    listed = [line.split()[0] for line in text.split("Commands:")[1].splitlines() if line.strip()]
    assert listed[: len(PIPELINE)] == PIPELINE and set(listed) == set(cli.commands)
    for name in listed:
        out = CliRunner().invoke(cli, [name, "--help"]).output
        examples = [line.strip() for line in out.splitlines() if line.strip().startswith("Example: ")]
        assert len(examples) == 1 and examples[0].startswith(f"Example: lockstep {name}"), (name, out)
        assert "Exit codes: 0 " in out, (name, out)


def test_a_study_is_named_by_name_or_path_and_validate_speaks_json(demo_study):
    repo = demo_study.parent.parent
    by_name = run("validate", "demo", "--json", cwd=repo / "preregistrations")   # from a folder below the repo root
    assert by_name.returncode == 0, by_name.stderr
    out = json.loads(by_name.stdout)
    assert out["study_id"] == "demo" and out["lock_digest"] is None and out["valid"] and out["warnings"] == []
    assert run("prereg", "demo", cwd=repo).returncode == 0
    frozen = json.loads(run("validate", "preregistrations/demo", "--json", cwd=repo).stdout)
    assert frozen["lock_digest"] == json.loads((demo_study / "prereg.lock.json").read_text())["lock_digest"]
    missing = run("validate", "nosuchstudy", cwd=repo)
    assert_clean_error(missing, 2, "nosuchstudy does not exist")


def test_validate_warns_of_a_claim_the_audit_will_call_unsupported(demo_study):
    import yaml

    path = demo_study / "study.yaml"
    make_writable(path)
    spec = yaml.safe_load(path.read_text())
    spec["hypotheses"][3]["claim"] = "L1E5 tracks the register the model feels, rather than the prompt class."
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run("validate", demo_study)
    assert result.returncode == 0   # a warning: the claim may stay, and the ledger will say unsupported
    assert "warning: H4 will be unsupported at audit whatever the data" in result.stderr and "'feels'" in result.stderr
    bad = json.loads(run("validate", demo_study, "--json").stdout)
    assert len(bad["warnings"]) == 1
    spec["alpha_typo"] = 1
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    invalid = run("validate", demo_study, "--json")
    assert invalid.returncode == 1 and not json.loads(invalid.stdout)["valid"]
    assert any("alpha_typo" in p["message"] for p in json.loads(invalid.stdout)["problems"])


@pytest.mark.parametrize("design", ["routing", "ablation"])
def test_a_new_study_validates_freezes_and_stops_at_missing_weights(repo, design):
    """The first hour: `lockstep new`, then validate, commit, prereg, capture (no weights here: exit 3, the fix named)."""
    made = run("new", "mystudy", "--design", design, cwd=repo)
    assert made.returncode == 0 and "FILL" in made.stdout
    study = repo / "preregistrations" / "mystudy"
    assert "FILL:" in (study / "study.yaml").read_text()
    assert run("validate", "mystudy", cwd=repo).returncode == 0
    commit_all(repo, "start mystudy")
    assert run("prereg", "mystudy", cwd=repo).returncode == 0
    commit_all(repo, "freeze mystudy")
    capture = run("capture", "mystudy", "--no-progress", cwd=repo)
    assert_clean_error(capture, 3, "weights not found")
    assert_clean_error(run("new", "mystudy", "--design", design, cwd=repo), 2, "already exists")


def test_a_copied_frozen_study_is_recognised(demo_study):
    """Copying a frozen demo copies its lock: prereg says whose lock it is, instead of 'files changed'."""
    import shutil

    repo = demo_study.parent.parent
    assert run("prereg", demo_study).returncode == 0
    copy = repo / "preregistrations" / "mine"
    shutil.copytree(demo_study, copy)
    result = run("prereg", copy)
    assert_clean_error(result, 1, "is the lock of study 'demo', not of 'mine'", "lockstep new NAME")


def test_stage_hints_name_the_lockstep_command_not_make(demo_study):
    """A user's own repository has no Makefile with lockstep's targets: every "run this first" hint is the
    `lockstep` command, with the study folder, whichever stage is missing."""
    repo = demo_study.parent.parent
    unfrozen = run("verify", demo_study)
    assert unfrozen.returncode == 2 and f"run `lockstep prereg {demo_study}` first" in unfrozen.stdout
    assert run("prereg", demo_study).returncode == 0
    commit_all(repo, "freeze")
    missing = {"audit": ("capture", run("audit", demo_study)),
               "label": ("capture", run("label", demo_study)),
               "review": ("audit", run("review", demo_study, "--approve", "--reviewer", "r"))}
    for stage, (needed, result) in missing.items():
        assert_clean_error(result, 1, f"fix: run `lockstep {needed} {demo_study}")
        assert "make " not in result.stderr, stage
    assert "make " not in unfrozen.stdout
