"""Every file the toolkit writes has a published schema: the run manifest against schemas/run-manifest."""

from __future__ import annotations

import json

from jsonschema import Draft202012Validator

from lockstep.records import schema


def test_manifests_match_the_published_schema(demo_capture):
    frozen, paths = demo_capture
    validator = Draft202012Validator(schema("run-manifest"))
    for run_id, path in paths.items():
        manifest = json.loads((path / "manifest.json").read_text())
        assert [e.message for e in validator.iter_errors(manifest)] == []
        assert manifest["lock_digest"] == frozen.lock_digest and manifest["run_id"] == run_id
    broken = json.loads((paths["sampled"] / "manifest.json").read_text()) | {"lock_digest": "not-a-digest"}
    assert any("does not match" in e.message for e in validator.iter_errors(broken))
