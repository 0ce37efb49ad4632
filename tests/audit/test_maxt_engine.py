"""A study's `inference.engine` chooses where the all-unit baseline's max-T scan runs, and the ledger
numbers record what ran; the choice changes no decision (tests/stats/test_stats_torch_backend.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

import stats
from audit.analyses import analysis_for
from audit.ledger import _settings
from lockstep.records import record_problems
from tests.audit.test_routing_analyses import SETTINGS, _frozen, _run, _spec

STUDY = Path(__file__).resolve().parents[2] / "preregistrations" / "l31h14-ablation" / "study.yaml"


def test_the_engine_reaches_the_ledger_numbers_and_changes_no_decision():
    rng = np.random.default_rng(1)
    n_a, n_b, f = 9, 12, 30
    w = rng.normal(0.5, 0.2, (n_a + n_b, f)).clip(0.01)
    w[:n_a, 0] += 0.4
    run = _run(w, np.full_like(w, 0.5), n_a)
    baseline = analysis_for("routing", "all_unit_baseline")
    outs = {}
    for engine in ("numpy", "torch"):
        with stats.use_backend(engine):
            outs[engine] = baseline(_frozen(), _spec("all_unit_baseline"), lambda _: run, SETTINGS)
    assert outs["numpy"].numbers["engine"] == "numpy"
    assert outs["torch"].numbers["engine"] in ("torch:cpu", "torch:cuda")
    same = ("target_p_corrected", "target_rank", "family_size", "best_unit", "n_relabelings", "exact")
    assert {k: outs["numpy"].numbers[k] for k in same} == {k: outs["torch"].numbers[k] for k in same}
    assert outs["numpy"].primary_passed == outs["torch"].primary_passed
    np.testing.assert_array_equal(outs["numpy"].tables["baseline"]["rank"], outs["torch"].tables["baseline"]["rank"])


def test_the_study_schema_takes_an_engine_and_the_audit_settings_read_it():
    spec = yaml.safe_load(STUDY.read_text())
    assert "engine" not in spec["inference"]
    assert _settings(SimpleNamespace(spec=spec, thresholds={spec["inference"]["alpha_threshold"]: 0.05})).engine == "numpy"
    spec["inference"]["engine"] = "auto"
    assert not record_problems("study", spec, "study.yaml")
    assert _settings(SimpleNamespace(spec=spec, thresholds={spec["inference"]["alpha_threshold"]: 0.05})).engine == "auto"
    spec["inference"]["engine"] = "gpu"
    problems = record_problems("study", spec, "study.yaml")
    assert len(problems) == 1 and "/inference/engine" in str(problems[0])
