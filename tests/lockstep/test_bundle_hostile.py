"""Bundles from strangers: bounded size and member count, every path kept inside the bundle, a message
(never a traceback, never "Aborted!") for a corrupt archive, and a bundle that says what it lacks.

Bundles here are written by `lockstep bundle` from real frozen studies in real git repositories; the
hostile ones are built with tarfile the way an attacker would, member by member.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from lockstep.bundle import DEFAULT_LIMITS, write_bundle
from lockstep.cli import cli
from lockstep.freeze import freeze
from lockstep.fsio import pretty_json, sha256_bytes
from lockstep.journal import append_entry
from lockstep.lock import lock_digest_of
from studyrepo import commit_all, copy_study, git, make_writable


def verify(*args) -> object:
    result = CliRunner().invoke(cli, ["verify", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Aborted!" not in result.output
    return result


def members_of(bundle: Path) -> dict[str, bytes | None]:
    """name -> bytes (None for a folder) of every member of a bundle lockstep wrote."""
    with tarfile.open(bundle, "r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def write_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    """A gzip'd tar with ``files`` (regular members) followed by hand-made ``extra`` members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _capture_entry(study: Path) -> None:
    """Record a capture of run `sampled` with the real journal writer, its file on disk."""
    run = study.parent.parent / "runs/demo/sampled"
    run.mkdir(parents=True)
    (run / "texts.parquet").write_bytes(b"captured texts")
    append_entry(study, "capture", inputs={}, outputs={"runs/demo/sampled/texts.parquet": sha256_bytes(b"captured texts")},
                 access_level="texts_seen", lock_digest=_lock_digest(study),
                 details={"runs": ["sampled"], "design": "routing", "runs_root": "runs"})


def _lock_digest(study: Path) -> str:
    return json.loads((study / "prereg.lock.json").read_text())["lock_digest"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A repository with the demo frozen and a capture recorded (built once for the module)."""
    repo = tmp_path_factory.mktemp("bundle-source") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    study = copy_study("demo", repo)
    commit_all(repo, "add demo")
    freeze(study)
    commit_all(repo, "freeze demo")
    _capture_entry(study)
    return repo


@pytest.fixture
def captured_demo(source, tmp_path) -> Path:
    """A private copy of the source repository's study, for tests that change it."""
    repo = tmp_path / "repo"
    shutil.copytree(source, repo, symlinks=True)
    return repo / "preregistrations/demo"


@pytest.fixture(scope="module")
def good_bundle(source, tmp_path_factory) -> Path:
    return write_bundle(source / "preregistrations/demo", tmp_path_factory.mktemp("bundle") / "demo.bundle.tar.gz")


def test_a_complete_bundle_verifies_and_says_what_it_holds(good_bundle):
    result = verify(good_bundle, "--json")
    steps = {s["name"]: s for s in json.loads(result.stdout)["steps"]}
    assert result.exit_code == 0, result.output
    assert steps["verify_bundle_contents"]["message"] == "bundle holds plan, lock and journal, runs/demo (1 run(s))"
    assert "stay inside the bundle" in steps["verify_journal_paths"]["message"]


@pytest.mark.parametrize("drop, needle", [
    ("runs/", "bundle has no runs/demo: captures cannot be checked (journal entries 1 recorded runs sampled)"),
    ("runs/demo/sampled/", "bundle has no runs/demo/{sampled}: those captures cannot be checked"),
])
def test_a_bundle_without_its_runs_says_so_instead_of_intact(good_bundle, tmp_path, drop, needle):
    kept = {n: d for n, d in members_of(good_bundle).items() if not n.startswith(drop)}
    if drop == "runs/demo/sampled/":
        kept["runs/demo/other.txt"] = b"not the run"  # runs/demo exists, the run folder does not
    partial = write_tar(tmp_path / "partial.bundle.tar.gz", kept)
    result = verify(partial)
    assert result.exit_code == 1 and needle in result.stdout and "verify: ALTERED" in result.stdout


def test_a_bundle_without_the_report_of_a_recorded_audit_says_so(captured_demo, tmp_path):
    repo = captured_demo.parent.parent
    (repo / "reports/demo").mkdir(parents=True)
    (repo / "reports/demo/ledger.json").write_bytes(b"{}")
    digest = _lock_digest(captured_demo)
    append_entry(captured_demo, "audit", inputs={}, outputs={"reports/demo/ledger.json": sha256_bytes(b"{}")},
                 access_level="scores_seen", lock_digest=digest, details={"runs": {}})
    bundle = write_bundle(captured_demo, tmp_path / "demo.bundle.tar.gz")
    kept = {n: d for n, d in members_of(bundle).items() if not n.startswith("reports/")}
    result = verify(write_tar(tmp_path / "noreport.bundle.tar.gz", kept))
    assert result.exit_code == 1
    assert "bundle has no reports/demo: the audit (journal entry 2) and its ledger cannot be checked" in result.stdout


def _escape_target() -> Path:
    """A path in the temp folder where a member escaping the unpack folder by one level would land."""
    return Path(tempfile.gettempdir()) / f"lockstep-escape-{uuid.uuid4().hex}"


def _info(name: str, kind: bytes, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


@pytest.mark.parametrize("member, needle", [
    (lambda esc: _info(f"../{esc.name}", tarfile.REGTYPE, 4), "would land outside the bundle's folders"),
    (lambda esc: _info(str(esc), tarfile.REGTYPE, 4), "would land outside the bundle's folders"),
    (lambda esc: _info(f"runs/demo/../../../{esc.name}", tarfile.REGTYPE, 4), "would land outside the bundle's folders"),
    (lambda esc: _info("evil.txt", tarfile.REGTYPE, 4), "would land outside the bundle's folders"),
    (lambda esc: _info("runs/demo/link", tarfile.SYMTYPE, linkname="/etc/hostname"), "is a link"),
    (lambda esc: _info("runs/demo/hard", tarfile.LNKTYPE, linkname="/etc/hostname"), "is a link"),
    (lambda esc: _info("runs/demo/dev", tarfile.CHRTYPE), "device, FIFO or other special file"),
    (lambda esc: _info("runs/demo/fifo", tarfile.FIFOTYPE), "device, FIFO or other special file"),
    (lambda esc: _info("preregistrations/demo/study.yaml", tarfile.REGTYPE, 4), "appears twice"),
])
def test_members_that_escape_or_are_not_plain_files_are_refused(good_bundle, tmp_path, member, needle):
    escape = _escape_target()
    hostile = write_tar(tmp_path / "hostile.bundle.tar.gz", members_of(good_bundle), [member(escape)])
    result = verify(hostile)
    assert result.exit_code == 2 and needle in result.stderr and result.stderr.startswith("error: ")
    assert not escape.exists()


def test_a_symlink_then_a_file_through_it_never_writes_outside(good_bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = write_tar(tmp_path / "hostile.bundle.tar.gz", members_of(good_bundle),
                        [_info("runs/demo/out", tarfile.SYMTYPE, linkname=str(outside)), _info("runs/demo/out/pwned", tarfile.REGTYPE, 4)])
    assert verify(hostile).exit_code == 2
    assert list(outside.iterdir()) == []


def test_member_count_is_bounded(good_bundle, tmp_path):
    files = members_of(good_bundle)
    many = files | {f"runs/demo/sampled/f{i}": b"" for i in range(30)}
    bundle = write_tar(tmp_path / "many.bundle.tar.gz", many)
    result = verify(bundle, "--max-bundle-members", 20)
    assert result.exit_code == 2 and "holds more than 20 members" in result.stderr and "--max-bundle-members" in result.stderr
    # the same bundle within a raised limit unpacks (and is then ALTERED: the extra files are no stage's output)
    assert verify(bundle, "--max-bundle-members", 1000).exit_code == 1


def test_more_members_than_the_default_are_refused(good_bundle, tmp_path):
    # the case was 20,000 members, accepted; the default bound is 10,000, and one more is refused
    path = tmp_path / "swarm.bundle.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i in range(DEFAULT_LIMITS.max_members + 1):
            tar.addfile(tarfile.TarInfo(f"runs/demo/x/{i}"), io.BytesIO(b""))
    result = verify(path)
    assert result.exit_code == 2 and f"holds more than {DEFAULT_LIMITS.max_members:,} members" in result.stderr


def test_a_compression_bomb_is_refused_before_it_is_written(good_bundle, tmp_path):
    # 8 MiB of zeros compress to a few KiB; a 1 MiB limit refuses the member from its header
    bomb = write_tar(tmp_path / "bomb.bundle.tar.gz", members_of(good_bundle) | {"runs/demo/zeros": bytes(8 << 20)})
    assert bomb.stat().st_size < 100_000
    result = verify(bomb, "--max-bundle-bytes", 1 << 20)
    assert result.exit_code == 2 and "expands to more than 1,048,576 bytes" in result.stderr
    assert "at member 'runs/demo/zeros'" in result.stderr


def test_the_default_size_limit_refuses_a_gigabyte_bomb_from_its_header(good_bundle, tmp_path):
    # the case (a few MiB expanding to 1 GiB): the header declares more than the 1 GiB default;
    # the data need not even be there, since nothing is decompressed past the header
    path = tmp_path / "gig.bundle.tar.gz"
    files = members_of(good_bundle)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("runs/demo/huge.parquet")
        info.size = DEFAULT_LIMITS.max_bytes + 1
        tar.fileobj.write(info.tobuf())
        tar.fileobj.write(bytes(1 << 20))
    result = verify(path)
    assert result.exit_code == 2 and "expands to more than 1,073,741,824 bytes" in result.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_truncated_or_corrupt_archive_gives_a_message(good_bundle, tmp_path, damage):
    assert_refused_when_damaged(good_bundle, tmp_path, damage)


def assert_refused_when_damaged(good_bundle: Path, tmp_path: Path, damage: str, position: float = 0.5) -> None:
    data = good_bundle.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        at = int(len(data) * position)
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    elif damage == "garbage":
        data = b"this is not an archive\n" * 10
    else:
        data = b""
    bad = tmp_path / "bad.bundle.tar.gz"
    bad.write_bytes(data)
    result = verify(bad)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "fix: " in result.stderr
    # a flipped byte is caught by deflate, by gzip's CRC (checked to the end of the stream), or by the
    # member checks when it lands in a header: a refusal each time, never an "intact" or an "ALTERED"
    assert "truncated or corrupt" in result.stderr or damage == "flip" or "holds 0 studies" in result.stderr


@pytest.mark.parametrize("position", [0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
def test_a_byte_flipped_anywhere_in_the_compressed_stream_refuses_the_bundle(good_bundle, tmp_path, position):
    assert_refused_when_damaged(good_bundle, tmp_path, "flip", position)


def test_trailing_data_after_the_archive_is_refused(good_bundle, tmp_path):
    import gzip

    # a valid bundle followed by a second gzip member of 8 MiB of zeros: nothing a reviewer needs, and unbounded
    path = tmp_path / "trailer.bundle.tar.gz"
    path.write_bytes(good_bundle.read_bytes() + gzip.compress(bytes(8 << 20)))
    result = verify(path)
    assert result.exit_code == 2 and "bytes after the end of its archive" in result.stderr


def test_a_lock_entry_outside_the_folder_is_refused_not_read(captured_demo, tmp_path):
    # an attacker adds ../../../../etc/hostname to the lock and recomputes its digest: verify must not hash the host file
    lock_path = captured_demo / "prereg.lock.json"
    body = json.loads(lock_path.read_text())
    body["files"]["../../../../etc/hostname"] = {"sha256": "0" * 64, "size": 1}
    body["lock_digest"] = lock_digest_of(body)
    make_writable(lock_path)
    lock_path.write_bytes(pretty_json(body))
    bundle = write_bundle(captured_demo, tmp_path / "demo.bundle.tar.gz")
    result = verify(bundle)
    assert result.exit_code == 1
    assert "names ['../../../../etc/hostname'], outside the folder the lock covers" in result.stdout
    assert "2. FAIL verify_lock_body" in result.stdout  # before any step reads a locked file


@pytest.mark.parametrize("recorded", ["/etc/hostname", "../../../../etc/hostname", "runs/../../etc/hostname"])
def test_a_journal_path_outside_the_bundle_is_refused_not_read(captured_demo, tmp_path, recorded):
    digest = _lock_digest(captured_demo)
    append_entry(captured_demo, "label", inputs={}, outputs={recorded: "0" * 64}, access_level="labels_frozen",
                 lock_digest=digest, details={"run": "sampled"})
    bundle = write_bundle(captured_demo, tmp_path / "demo.bundle.tar.gz")
    result = verify(bundle, "--json")
    steps = json.loads(result.stdout)["steps"]
    assert result.exit_code == 1
    failed = [s for s in steps if not s["ok"]]
    assert [s["name"] for s in failed] == ["verify_journal_paths"]
    assert f"journal entry 2 output {recorded!r}" in failed[0]["message"]
    assert "verify_artifacts" not in {s["name"] for s in steps}  # no later step ran, so nothing read it


def test_bundle_refuses_a_symlink_in_the_study(captured_demo, tmp_path):
    os.symlink("/etc/hostname", captured_demo.parent.parent / "runs/demo/sampled/host")
    result = CliRunner().invoke(cli, ["bundle", str(captured_demo), "--out", str(tmp_path / "x.bundle.tar.gz")])
    assert result.exit_code == 2 and "is a symbolic link; a bundle holds regular files only" in result.stderr
    assert not (tmp_path / "x.bundle.tar.gz").exists()


def test_in_a_study_folder_a_journal_path_outside_the_repository_is_refused_not_read(captured_demo):
    append_entry(captured_demo, "label", inputs={}, outputs={"/etc/hostname": "0" * 64}, access_level="labels_frozen",
                 lock_digest=_lock_digest(captured_demo), details={"run": "sampled"})
    result = verify(captured_demo, "--json")
    steps = json.loads(result.stdout)["steps"]
    assert result.exit_code == 1
    assert [s["name"] for s in steps if not s["ok"]] == ["verify_journal_paths"]
    assert "outside the repository or a runs root a capture recorded" in steps[-1]["message"]
    assert "journal entry 2 output '/etc/hostname'" in steps[-1]["message"]


def test_in_a_study_folder_runs_under_a_recorded_outside_runs_root_are_read(captured_demo, tmp_path):
    # `capture --runs-root /elsewhere` records absolute paths under /elsewhere/<study>/: those stay readable
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "demo/greedy").mkdir(parents=True)
    (elsewhere / "demo/greedy/texts.parquet").write_bytes(b"greedy texts")
    append_entry(captured_demo, "capture", inputs={}, access_level="texts_seen", lock_digest=_lock_digest(captured_demo),
                 outputs={str(elsewhere / "demo/greedy/texts.parquet"): sha256_bytes(b"greedy texts")},
                 details={"runs": ["greedy"], "design": "routing", "runs_root": str(elsewhere)})
    result = verify(captured_demo, "--json")
    steps = {s["name"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["verify_journal_paths"]["ok"], result.stdout
    assert steps["verify_journal_paths"]["message"].endswith("stay inside the repository and the recorded runs roots")
    assert steps["verify_artifacts"]["ok"], steps["verify_artifacts"]["message"]


@pytest.mark.parametrize("ledger", [b"{", b"[" * 100_000 + b"]" * 100_000, b'{"n": ' + b"9" * 5000 + b"}", b"\xff\xfe"])
def test_an_unreadable_ledger_in_a_bundle_fails_its_step_with_a_message(captured_demo, tmp_path, ledger):
    repo = captured_demo.parent.parent
    (repo / "reports/demo").mkdir(parents=True)
    (repo / "reports/demo/ledger.json").write_bytes(ledger)
    append_entry(captured_demo, "audit", inputs={}, outputs={"reports/demo/ledger.json": sha256_bytes(ledger)},
                 access_level="scores_seen", lock_digest=_lock_digest(captured_demo), details={"runs": {}})
    result = verify(write_bundle(captured_demo, tmp_path / "demo.bundle.tar.gz"))
    assert result.exit_code == 1 and "verify: ALTERED" in result.stdout
    assert "ledger.json" in result.stdout and "cannot be read as JSON" in result.stdout
