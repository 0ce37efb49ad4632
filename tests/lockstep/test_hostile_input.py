"""Bad input from a hostile or careless hand: one clear message (file, field, what was expected, the fix)
and a non-zero exit, never a traceback, never a hang, never a half-written lock.

Each case is one the fuzzing of issue 11 found: integers of more than 4,300 digits, deep nesting (YAML
flow and block, JSON), a YAML alias bomb, oversized files, symlinked plan files, non-finite thresholds,
messages that echoed values of 148,000 characters, and git's "dubious ownership" misreported.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lockstep.cli import cli
from lockstep.errors import MAX_MESSAGE_CHARS
from lockstep.loaders import MAX_DEPTH, MAX_FILE_BYTES, MAX_INT_DIGITS, MAX_YAML_BYTES
from studyrepo import commit_all, copy_study, make_writable

LOCKSTEP = [sys.executable, "-m", "lockstep"]


def lockstep(*args):
    result = CliRunner().invoke(cli, [*map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def assert_clean_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("error: ") and "fix: " in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def replace_in(path: Path, old: str, new: str) -> None:
    make_writable(path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first occurrence of ``text`` in ``path``."""
    return path.read_text()[: path.read_text().index(text)].count("\n") + 1


@pytest.fixture
def study(repo: Path) -> Path:
    """An uncommitted copy of the demo study (validate does not need a commit)."""
    return copy_study("demo", repo)


def test_the_demo_itself_validates(study):
    assert lockstep("validate", study).exit_code == 0


@pytest.mark.parametrize("file, old, new, needle", [
    ("study.yaml", "max_new_tokens: 24", "max_new_tokens: " + "9" * 5000,
     f"/runtime/max_new_tokens: an integer of 5000 digits; lockstep reads integers of at most {MAX_INT_DIGITS} digits"),
    ("thresholds.yaml", "value: 1\n", "value: -" + "1" * 4301 + "\n", "/thresholds/max_target_rank/value: an integer of 4301 digits"),
    ("prompts.jsonl", '"anchors": ["hum", "processing"]}', '"anchors": ["hum", "processing"], "n": ' + "7" * 4400 + "}",
     "prompts.jsonl:1 /0: an integer of 4400 digits"),
    ("thresholds.yaml", "value: 0.05", "value: .nan", "thresholds.yaml:4 /thresholds/alpha/value: .nan is not a finite number"),
    ("thresholds.yaml", "value: 0.05", "value: .inf", "thresholds.yaml:4 /thresholds/alpha/value: .inf is not a finite number"),
    ("thresholds.yaml", "value: 2.0", "value: -.Inf", "/thresholds/min_ratio/value: -.Inf is not a finite number"),
    ("thresholds.yaml", "value: 2.0", "value: 1.0e+999", "/thresholds/min_ratio/value: 1.0e+999 is not a finite number"),
    ("prompts.jsonl", '"anchors": ["hum", "processing"]}', '"anchors": ["hum", "processing"], "w": NaN}', "prompts.jsonl:1 /0: NaN is not JSON"),
    ("prompts.jsonl", '"anchors": ["hum", "processing"]}', '"anchors": ["hum", "processing"], "w": 1e400}', "prompts.jsonl:1 /0: 1e400 is not a finite number"),
])
def test_huge_integers_and_non_finite_numbers_are_refused(study, file, old, new, needle):
    line = line_of(study / file, old)
    replace_in(study / file, old, new)
    assert_clean_error(lockstep("validate", study), 1, f"{file}:{line} ", needle)


@pytest.mark.parametrize("file, tail", [
    ("study.yaml", "extra: " + "[" * 10_000 + "]" * 10_000 + "\n"),                                   # YAML flow
    ("rubric.yaml", "extra:\n" + "".join("  " * i + "- k:\n" for i in range(1, 400)) + "  " * 400 + "v: 1\n"),  # block
    ("thresholds.yaml", "extra: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n"),
])
def test_deep_yaml_nesting_is_refused_without_recursion(study, file, tail):
    path = study / file
    make_writable(path)
    path.write_text(path.read_text() + tail)
    assert_clean_error(lockstep("validate", study), 1, f"{file}:", f"nested more than {MAX_DEPTH} levels deep")


def test_deep_json_nesting_is_refused_without_recursion(study):
    path = study / "prompts.jsonl"
    make_writable(path)
    records = len(path.read_text().splitlines())
    path.write_text(path.read_text() + '{"id": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    assert_clean_error(lockstep("validate", study), 1, f"prompts.jsonl:{records + 1} /{records}: nested more than {MAX_DEPTH} levels deep")


def test_a_yaml_alias_bomb_is_refused_at_once(study):
    # the "billion laughs": nine levels of nine aliases, 387 million strings if expanded
    levels = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = study / "rubric.yaml"
    make_writable(path)
    path.write_text(path.read_text() + "\n".join(levels) + "\n")
    # a subprocess with a timeout: before the fix this expanded without end (413 MB after 25 s)
    result = subprocess.run([*LOCKSTEP, "validate", str(study)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "rubric.yaml:" in result.stderr and "uses a YAML anchor or alias" in result.stderr


def test_a_single_anchor_is_refused_too(study):
    line = line_of(study / "study.yaml", "trim_tokens: [")
    replace_in(study / "study.yaml", "trim_tokens: [", "trim_tokens: &trim [")
    assert_clean_error(lockstep("validate", study), 1, f"study.yaml:{line} /: uses a YAML anchor or alias")


@pytest.mark.parametrize("file", ["prompts.jsonl", "study.yaml"])
def test_oversized_files_are_refused_before_they_are_read(study, file):
    limit = MAX_FILE_BYTES.get(file, MAX_YAML_BYTES)
    path = study / file
    make_writable(path)
    with open(path, "ab") as handle:  # a sparse file: its size is what matters, and it is never read
        handle.truncate(limit + 1)
    assert_clean_error(lockstep("validate", study), 1, f"is {limit + 1:,} bytes; a {file} may be at most {limit:,} bytes")


def test_a_plan_file_symlinked_outside_the_repository_is_refused(repo, tmp_path):
    study = copy_study("demo", repo)
    outside = tmp_path / "outside-rubric.yaml"
    (study / "rubric.yaml").rename(outside)
    (study / "rubric.yaml").symlink_to(outside)
    commit_all(repo)
    before = stat.S_IMODE(outside.stat().st_mode)
    assert_clean_error(lockstep("prereg", study), 1, "rubric.yaml /: ", "is a symbolic link", "replace the link with a copy")
    assert not (study / "prereg.lock.json").exists()
    assert stat.S_IMODE(outside.stat().st_mode) == before


def test_a_plan_file_symlinked_inside_the_repository_is_refused_and_its_target_left_writable(repo):
    study = copy_study("demo", repo)
    target = repo / "shared-thresholds.yaml"
    (study / "thresholds.yaml").rename(target)
    (study / "thresholds.yaml").symlink_to(os.path.relpath(target, study))
    commit_all(repo)
    assert_clean_error(lockstep("prereg", study), 1, "thresholds.yaml /: ", "is a symbolic link")
    assert stat.S_IMODE(target.stat().st_mode) & stat.S_IWUSR
    assert not (study / "prereg.lock.json").exists() and not (study / "JOURNAL.jsonl").exists()


def test_an_extra_file_behind_a_symlink_is_refused(study):
    (study / "data").mkdir()
    (study / "real.txt").write_text("notes\n")
    (study / "data" / "notes.txt").symlink_to(study / "real.txt")
    replace_in(study / "study.yaml", "synthetic: true\n", "synthetic: true\nfiles: [data/notes.txt]\n")
    assert_clean_error(lockstep("validate", study), 1, "/files/0: 'data/notes.txt' is (or lies under) a symbolic link")


def test_messages_never_echo_a_huge_value(study):
    # the fuzzing found messages of 148,000 characters: each echoes a bounded excerpt, and the fix survives
    replace_in(study / "study.yaml", "design: routing", "design: " + "A" * 148_000)
    replace_in(study / "prompts.jsonl", '"class": "FIRE"', '"class": "' + "B" * 148_000 + '"')
    result = lockstep("validate", study)
    assert_clean_error(result, 1, "characters omitted", "expected one of 'routing'")
    assert all(len(line) <= MAX_MESSAGE_CHARS + 200 for line in result.stderr.splitlines())
    assert len(result.stderr) < 10_000


def test_a_flood_of_problems_is_listed_up_to_a_bound(study):
    path = study / "prompts.jsonl"
    make_writable(path)
    path.write_text("not json\n" * 5000)
    result = lockstep("validate", study)
    assert_clean_error(result, 1, "… and 4900 more")
    assert result.stderr.count("not valid JSON") == 100


def _dubious_env() -> dict:
    # git's own test switch makes it treat every repository as owned by another user; no global or system
    # config may mark it safe
    return os.environ | {"GIT_TEST_ASSUME_DIFFERENT_OWNER": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def test_git_dubious_ownership_is_reported_as_such(demo_study):
    for command in ("prereg", "verify"):
        result = subprocess.run([*LOCKSTEP, command, str(demo_study)], capture_output=True, text=True, env=_dubious_env(), timeout=120,
                                check=False)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and result.stderr.startswith("error: ")
        assert "owned by another user (git: dubious ownership)" in result.stderr
        assert f"git config --global --add safe.directory {demo_study.parent.parent}" in result.stderr
        assert "not inside a git repository" not in result.stderr
    assert not (demo_study / "prereg.lock.json").exists()


def test_an_alias_bomb_in_an_amendment_is_refused_at_freeze(frozen_demo):
    from lockstep.freeze import start_amendment

    folder = start_amendment(frozen_demo, replaces=["thresholds.yaml"], reason="stricter", seen="nothing_run")
    replace_in(folder / "thresholds.yaml", "value: 0.05", "value: 0.01")
    bomb = "\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "\n".join(
        f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)) + "\n"
    (folder / "amendment.yaml").write_text((folder / "amendment.yaml").read_text() + bomb)
    commit_all(frozen_demo.parent.parent)
    result = subprocess.run([*LOCKSTEP, "amend", str(frozen_demo), "--freeze"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "001/amendment.yaml:" in result.stderr and "uses a YAML anchor or alias" in result.stderr
    assert not (folder / "amendment.lock.json").exists()
