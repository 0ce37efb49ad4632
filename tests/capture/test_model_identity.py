"""Model identity: the weights and tokenizer a capture loads are named by content, so swapping them is a
recorded deviation, and a local folder can be captured as preregistered by pinning its digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from capture import builtin, runtime
from capture.run import run_capture
from capture_helpers import frozen_repo
from lockstep.errors import CaptureError
from lockstep.fsio import sha256_file
from lockstep.gate import require_frozen
from lockstep.models import folder_identity


def _planted_folder(models_root: Path) -> Path:
    [folder] = [p for p in models_root.iterdir() if p.is_dir()]
    return folder


def test_folder_identity_is_the_digest_of_name_and_sha256_lines(models_root):
    folder = _planted_folder(models_root)
    identity = folder_identity(folder)
    # by hand: sha256sum of each weight file, sorted by name, as `sha256sum` prints them
    lines = "".join(f"{sha256_file(folder / n)}  {n}\n" for n in sorted(identity["weight_files"]))
    import hashlib
    assert identity["weights_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert "model.safetensors" in identity["weight_files"] and "tokenizer.json" in identity["tokenizer_files"]


def test_swapped_weights_or_tokenizer_are_deviations_before_the_model_loads(demo_capture, models_root, tmp_path):
    frozen, run_dirs = demo_capture
    root = tmp_path / "runs"
    shutil.copytree(run_dirs["sampled"], root / "demo" / "sampled")  # the study's first capture, planted weights
    first = runtime.first_capture_identity(root, "demo")
    assert first["run_id"] == "sampled" and first["weights_sha256"] == folder_identity(_planted_folder(models_root))["weights_sha256"]
    # the null twin's weights: same config.json, other weights (the swap the manifest's config hash alone missed)
    null_spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "preregistrations/demo-null/study.yaml").read_text())
    null_folder = builtin.ensure_builtin(null_spec["model"]["builtin"], tmp_path / "models", runtime.study_words(frozen))
    with pytest.raises(CaptureError, match=r"/model/weights_sha256: preregistered .[0-9a-f]{64} \(the study's first capture, run sampled\)"):
        run_capture(frozen, run_ids=["greedy"], runs_root=root, model_path=null_folder, progress=False)
    # the planted weights with an edited tokenizer file
    edited = tmp_path / "edited"
    shutil.copytree(_planted_folder(models_root), edited)
    config = json.loads((edited / "tokenizer_config.json").read_text())
    (edited / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 7}))
    with pytest.raises(CaptureError, match=r"/model/tokenizer_sha256") as info:
        run_capture(frozen, run_ids=["greedy"], runs_root=root, model_path=edited, progress=False)
    assert "/model/weights_sha256: preregistered" not in str(info.value)  # the weights are the first capture's


def test_a_local_folder_pinned_by_content_captures_as_preregistered(models_root, tmp_path):
    folder = tmp_path / "weights" / "tiny-demo"
    shutil.copytree(_planted_folder(models_root), folder)
    identity = folder_identity(folder)

    def local(spec, digest):
        spec["model"].update({"source": "path", "path": str(folder), "revision": "v1", "weights_sha256": digest,
                              "tokenizer_sha256": identity["tokenizer_sha256"]})
        spec["model"].pop("builtin", None)

    wrong = require_frozen(frozen_repo(tmp_path / "wrong", edit=lambda s: local(s, "0" * 64)))
    with pytest.raises(CaptureError, match=r"/model/weights_sha256: preregistered '0{64}'"):
        run_capture(wrong, run_ids=["greedy"], runs_root=tmp_path / "runs-wrong", progress=False)
    pinned = require_frozen(frozen_repo(tmp_path / "pinned", edit=lambda s: local(s, identity["weights_sha256"])))
    [run_dir] = run_capture(pinned, run_ids=["greedy"], runs_root=tmp_path / "runs-pinned", progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["deviations"] == []  # no "unverifiable local folder": the folder is named by its content
    assert manifest["model"]["weights_sha256"] == identity["weights_sha256"]
    assert manifest["model"]["tokenizer_sha256"] == identity["tokenizer_sha256"]


def test_chatml_is_supplied_when_the_tokenizer_has_no_template(models_root, tmp_path):
    """chat_template: chatml means the toolkit's ChatML template; a tokenizer without a template gets it,
    and chat_template: model on such a tokenizer is refused with the fix."""
    planted = _planted_folder(models_root)
    bare = tmp_path / "bare"
    shutil.copytree(planted, bare)
    for extra in ("chat_template.jinja", "chat_template.json"):
        (bare / extra).unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with_template, _ = runtime.load_tokenizer(planted, ["i feel the hum"])
    without, _ = runtime.load_tokenizer(bare, ["i feel the hum"])
    assert not without.chat_template
    settings = {"chat_template": "chatml", "enable_thinking": False}
    assert runtime.render(without, "i feel the hum", settings) == runtime.render(with_template, "i feel the hum", settings)
    facts = runtime.template_facts(without, settings)
    assert facts["chatml"] and facts["thinking_flag_honoured"] and facts["source"] == "toolkit ChatML"
    with pytest.raises(CaptureError, match="chat_template: model"):
        runtime.render(without, "i feel the hum", {"chat_template": "model"})
