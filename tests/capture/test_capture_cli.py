"""The capture command: the gate, resume after SIGKILL, shards and merge, make, refusals of bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from capture.cli import capture as capture_command
from capture.run import parse_shard, run_capture
from capture_helpers import frozen_repo
from lockstep.errors import CaptureError, LockMismatch, UsageError, WeightsNotFound
from lockstep.fsio import sha256_file
from lockstep.gate import require_frozen
from lockstep.journal import read_journal

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TABLES = ["texts.parquet", "units.parquet", "events.parquet", "topk/tokens.parquet", "topk/idx.npy",
          "topk/weight.npy"]


def _digests(run_dir: Path) -> dict[str, str]:
    return {name: sha256_file(run_dir / name) for name in TABLES}


def _share_models(models_root: Path, runs_root: Path) -> None:
    """Reuse the already built builtin model (the same bytes a fresh build writes)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(models_root, runs_root / "_models")


@pytest.fixture(scope="module")
def reference(demo_capture, models_root, tmp_path_factory):
    """The sampled run, batch size 1, uninterrupted: what a resumed or sharded run must equal."""
    frozen, _ = demo_capture
    root = tmp_path_factory.mktemp("reference")
    _share_models(models_root, root)
    path = run_capture(frozen, run_ids=["sampled"], runs_root=root, progress=False, allow_deviation=True,
                       overrides={"batch_size": 1})[0]
    return _digests(path)


def test_resume_after_sigkill_is_bitwise_identical(demo_capture, models_root, reference, tmp_path):
    frozen, _ = demo_capture
    root = tmp_path / "runs"
    _share_models(models_root, root)
    cmd = [PYTHON, "-m", "lockstep", "capture", str(frozen.root), "--run", "sampled", "--batch-size", "1",
           "--allow-deviation", "--runs-root", str(root), "--no-progress"]
    batches = root / "demo" / "sampled" / "_work" / "batches"
    proc = subprocess.Popen(cmd, cwd=frozen.repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in batches.glob("b*")] if batches.is_dir() else []
        if len(done) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the capture finished before it could be killed"
    assert not (root / "demo" / "sampled" / "manifest.json").exists()
    kept = len(list(batches.glob("b*")))
    assert 2 <= kept < 16
    done = subprocess.run(cmd, cwd=frozen.repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _digests(root / "demo" / "sampled") == reference
    assert not (root / "demo" / "sampled" / "_work").exists()


def test_shards_merge_to_the_unsharded_run(demo_capture, models_root, reference, tmp_path):
    frozen, _ = demo_capture
    _share_models(models_root, tmp_path)
    kwargs = dict(run_ids=["sampled"], runs_root=tmp_path, progress=False, allow_deviation=True,
                  overrides={"batch_size": 1})
    for i in (1, 0, 2):
        (path,) = run_capture(frozen, shard=(i, 3), **kwargs)
        assert not (path / "manifest.json").exists()
    (path,) = run_capture(frozen, **kwargs)  # nothing left to capture: merges
    assert _digests(path) == reference
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(UsageError, match="i/n"):
        parse_shard("2-3")
    with pytest.raises(UsageError, match="0 <= i < n"):
        parse_shard("3/3")


def test_cli_runs_gate_captures_and_journals(tmp_path, models_root):
    study = frozen_repo(tmp_path / "repo")
    _share_models(models_root, tmp_path / "repo" / "runs")
    runner = CliRunner()
    result = runner.invoke(capture_command, [str(study), "--run", "greedy", "--no-progress"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "repo" / "runs" / "demo" / "greedy"
    assert (run_dir / "manifest.json").is_file()
    entries = read_journal(study).entries
    assert [e["stage"] for e in entries] == ["prereg", "capture"]
    entry = entries[-1]
    assert entry["access_level"] == "nothing_run"
    assert entry["outputs"]["runs/demo/greedy/units.parquet"] == sha256_file(run_dir / "units.parquet")
    assert "preregistrations/demo/prompts.jsonl" in entry["inputs"]
    again = runner.invoke(capture_command, [str(study), "--run", "greedy", "--no-progress"])
    assert again.exit_code == 0 and len(read_journal(study).entries) == 2  # nothing new, no new entry


def test_gate_refuses_a_tampered_study(tmp_path):
    study = frozen_repo(tmp_path / "repo")
    prompts = study / "prompts.jsonl"
    prompts.chmod(0o644)
    prompts.write_text(prompts.read_text().replace("hum", "buzz", 1))
    with pytest.raises(LockMismatch):
        require_frozen(study)
    from lockstep.cli import _register_stage_commands, cli

    _register_stage_commands()
    result = CliRunner().invoke(cli, ["capture", str(study), "--no-progress"])
    assert result.exit_code == LockMismatch.exit_code and "prompts.jsonl" in result.output
    assert not (tmp_path / "repo" / "runs").exists()


def test_make_capture_demo(tmp_path, models_root):
    study = frozen_repo(tmp_path / "repo")
    root = tmp_path / "repo"
    shutil.copyfile(REPO / "Makefile", root / "Makefile")
    _share_models(models_root, root / "runs")
    venv = REPO / ".venv"
    result = subprocess.run(["make", "-s", "capture", "STUDY=demo", f"VENV={venv}", "-o", f"{venv}/.installed"],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for run_id in ("sampled", "greedy"):
        assert (root / "runs" / "demo" / run_id / "manifest.json").is_file()
    assert read_journal(study).entries[-1]["stage"] == "capture"
    # stderr is a pipe here: no bar of lockstep's or of transformers', and the libraries' notices are not printed
    # as lockstep's; they are in the manifest, summed up in one line at most
    notices = json.loads((root / "runs" / "demo" / "sampled" / "manifest.json").read_text())["runtime_notices"]
    assert "Loading weights" not in result.stderr and "capture demo/" not in result.stderr and "it/s" not in result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert not [line for line in result.stderr.splitlines() if "[transformers]" in line and line not in summary]
    assert len(summary) == (1 if notices else 0) and all(n.startswith(("[transformers] ", "[huggingface_hub] ")) for n in notices)
    assert len(set(notices)) == len(notices)


# -- bad input -----------------------------------------------------------------------------------

def test_weights_not_found(demo_capture, tmp_path):
    frozen, _ = demo_capture
    with pytest.raises(WeightsNotFound, match=r"capture not run: weights not found at .*nowhere"):
        run_capture(frozen, runs_root=tmp_path, model_path=tmp_path / "nowhere", progress=False)
    assert not (tmp_path / "demo").exists()


def test_dense_model_has_no_moe_layers(demo_capture, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    frozen, _ = demo_capture
    config = Qwen3Config(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=32)
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "dense")
    src = Path(json.loads((next(iter(demo_capture[1].values())) / "manifest.json").read_text())["model"]["path"])
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(src / name, tmp_path / "dense" / name)
    with pytest.raises(CaptureError, match="no MoE layer found"):
        run_capture(frozen, runs_root=tmp_path, model_path=tmp_path / "dense", progress=False, allow_deviation=True)


def _with(frozen, runtime=None, prompts=None):
    spec = json.loads(json.dumps(frozen.spec))
    spec["runtime"].update(runtime or {})
    return dataclasses.replace(frozen, spec=spec, prompts=prompts if prompts is not None else frozen.prompts)


def test_tokenizer_without_trim_tokens(demo_capture, tmp_path):
    frozen, _ = demo_capture
    bad = _with(frozen, runtime={"trim_tokens": ["<|im_end|>", "<|eot_id|>"]})
    with pytest.raises(CaptureError, match=r"no single token for trim token\(s\) \['<\|eot_id\|>'\]"):
        run_capture(bad, runs_root=tmp_path, progress=False)


def test_prompt_longer_than_context(demo_capture, tmp_path):
    frozen, _ = demo_capture
    long = dict(frozen.prompts[0], id="fire-long", text=" ".join(["hum"] * 600))
    bad = _with(frozen, prompts=[*frozen.prompts, long])
    with pytest.raises(CaptureError, match=r"longer than the model's context.*fire-long"):
        run_capture(bad, runs_root=tmp_path, progress=False)
    assert not (tmp_path / "demo").exists()


def test_deviation_refused_unless_allowed(demo_capture, tmp_path):
    frozen, _ = demo_capture
    with pytest.raises(CaptureError, match=r"/model/dtype: preregistered 'float32', actual 'bfloat16'"):
        run_capture(frozen, runs_root=tmp_path, progress=False, overrides={"dtype": "bfloat16"})
    with pytest.raises(UsageError, match=r"unknown run\(s\) \['beam'\]"):
        run_capture(frozen, runs_root=tmp_path, run_ids=["beam"], progress=False)


def test_resume_refuses_a_changed_configuration(demo_capture, models_root, tmp_path):
    frozen, _ = demo_capture
    _share_models(models_root, tmp_path)
    run_capture(frozen, run_ids=["greedy"], runs_root=tmp_path, shard=(0, 4), progress=False)
    with pytest.raises(CaptureError, match="interrupted run with a different configuration"):
        run_capture(frozen, run_ids=["greedy"], runs_root=tmp_path, progress=False, allow_deviation=True,
                    overrides={"batch_size": 2})


def test_runs_root_and_the_plan_in_force_carry_through_label_audit_and_verify(tmp_path, models_root):
    """capture --runs-root elsewhere: label, audit and verify find the runs where the journal says; the
    capture entry records the digests of the plan in force (after an amendment), not of the base files."""
    from audit.chain import verify_target
    from audit.cli import audit as audit_command
    from audit.cli import label as label_command
    from lockstep.freeze import freeze_amendment, start_amendment
    from lockstep.verify import exit_code_of
    from studyrepo import commit_all

    repo = tmp_path / "repo"
    study = frozen_repo(repo)
    folder = start_amendment(study, replaces=["thresholds.yaml"], reason="a stricter ratio", seen="nothing_run")
    (folder / "thresholds.yaml").write_text((folder / "thresholds.yaml").read_text().replace("value: 2.0", "value: 2.5"))
    commit_all(repo, "amend")
    freeze_amendment(study)
    commit_all(repo, "freeze amendment")
    elsewhere = tmp_path / "scratch" / "runs"
    _share_models(models_root, elsewhere)
    runner = CliRunner()
    result = runner.invoke(capture_command, [str(study), "--runs-root", str(elsewhere), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not (repo / "runs" / "demo").exists()
    entry = read_journal(study).entries[-1]
    amended = folder / "thresholds.yaml"
    assert entry["inputs"]["preregistrations/demo/amendments/001/thresholds.yaml"] == sha256_file(amended)
    assert "preregistrations/demo/thresholds.yaml" not in entry["inputs"]  # the base file is not the plan in force
    assert "preregistrations/demo/amendments/001/amendment.lock.json" in entry["inputs"]
    assert entry["details"]["runs_root"] == elsewhere.resolve().as_posix()
    for command in (label_command, audit_command):
        result = runner.invoke(command, [str(study)])
        assert result.exit_code == 0, result.output
    assert (elsewhere / "demo" / "greedy" / "labels.parquet").is_file()
    # the audit read the tables elsewhere, and says so in its journal entry
    audit_entry = read_journal(study).entries[-1]
    assert audit_entry["stage"] == "audit"
    units = (elsewhere / "demo" / "sampled" / "units.parquet").resolve().as_posix()
    assert audit_entry["inputs"][units] == sha256_file(elsewhere / "demo" / "sampled" / "units.parquet")
    assert not any(path.startswith("runs/") for path in audit_entry["inputs"])
    results = verify_target(study)
    assert exit_code_of(results) == 0, [r for r in results if not r.ok]
    assert any("equals the one recomputed" in r.message for r in results)  # the ledger was recomputed from the runs elsewhere


def test_capturing_complete_runs_again_does_not_load_the_model(demo_capture, tmp_path):
    """Nothing left to capture: the orchestrator returns before any model loads (weights that are not
    there would otherwise stop it with WeightsNotFound)."""
    frozen, run_dirs = demo_capture
    root = run_dirs["greedy"].parent.parent
    again = run_capture(frozen, runs_root=root, progress=False, model_path=tmp_path / "no-weights-here")
    assert again == [run_dirs[r["id"]] for r in frozen.spec["runtime"]["runs"]]
    with pytest.raises(WeightsNotFound):  # the same call with a run left to capture does load
        run_capture(frozen, runs_root=tmp_path / "empty", progress=False, model_path=tmp_path / "no-weights-here")


# -- quiet, honest output --------------------------------------------------------------------------


def test_the_progress_bar_draws_only_on_a_terminal_unless_asked(monkeypatch, capsys):
    """tqdm's disable=None: a pipe or a log file gets no bar unless --progress asks; a terminal gets one."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    from capture.designs.routing import _Progress

    def draw(enabled):
        bar = _Progress("capture demo/sampled", 4, 0, enabled)
        bar.update(4, 40)
        bar.close()

    draw(None)   # stderr is pytest's capture, not a terminal
    assert capsys.readouterr().err == ""
    draw(True)
    assert "capture demo/sampled" in capsys.readouterr().err
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        draw(None)
        terminal.flush()
        monkeypatch.undo()
    assert b"capture demo/sampled" in os.read(leader, 4096)
    os.close(leader)


def test_library_output_silences_transformers_bars_and_keeps_its_notices(tmp_path, capfd):
    """Saving and loading a real tiny model draws transformers' bars ('Writing model shards', 'Loading weights')
    unless progress is off; a transformers warning goes to the list, once, never to stderr; all restored after."""
    import logging

    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from capture.notices import library_output, summary

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8))
    say = hf_logging.get_logger("transformers.integrations.hub_kernels")
    before = (list(logging.getLogger("transformers").handlers), logging.getLogger("transformers").propagate)
    hf_logging.enable_progress_bar()   # as a fresh process has them (whatever an earlier test left)
    assert before[0]   # transformers prints through its own stderr handler
    with library_output(False) as notices:
        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        model.save_pretrained(tmp_path / "quiet")
        GPT2LMHeadModel.from_pretrained(tmp_path / "quiet")
        say.warning("`kernel_fn` is falling back to its reference PyTorch implementation. This is correct")
        say.warning("`kernel_fn` is falling back to its reference PyTorch implementation. This is correct")
    quiet = capfd.readouterr()
    assert "Writing model shards" not in quiet.err and "Loading weights" not in quiet.err and "falling back" not in quiet.err
    assert notices == ["[transformers] `kernel_fn` is falling back to its reference PyTorch implementation. This is correct"]
    assert summary(notices).startswith("note: 1 notice(s) from the model libraries during capture, not from lockstep")
    assert summary([]) is None
    assert hf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()   # restored
    with library_output(True):
        model.save_pretrained(tmp_path / "loud")
        GPT2LMHeadModel.from_pretrained(tmp_path / "loud")
    assert "Writing model shards" in capfd.readouterr().err
    root = logging.getLogger("transformers")
    assert (root.handlers, root.propagate) == before   # transformers' own handler is back


def test_the_demo_does_not_ask_to_commit_its_lock(tmp_path, models_root):
    """`lockstep demo` freezes, captures, labels and audits; it never tells the user to commit the demo's lock
    (a plain `prereg` does), and with stderr a pipe it draws no bar."""
    from studyrepo import commit_all, copy_study, git

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study("demo", repo)
    commit_all(repo, "add demo")
    _share_models(models_root, repo / "runs")
    result = subprocess.run([PYTHON, "-m", "lockstep", "demo"], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "commit the lock now" not in result.stdout + result.stderr and "git commit" not in result.stdout
    assert "the demo's lock stays uncommitted" in result.stdout and "lockstep new" in result.stdout
    assert (repo / "reports" / "demo" / "ledger.json").is_file()
    assert "capture demo/" not in result.stderr and "Loading weights" not in result.stderr
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    copy_study("demo", other)
    commit_all(other, "add demo")
    plain = subprocess.run([PYTHON, "-m", "lockstep", "prereg", "demo"], cwd=other, capture_output=True, text=True)
    assert plain.returncode == 0 and "commit the lock now" in plain.stdout
