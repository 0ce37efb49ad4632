"""Source tracing as a user runs it (prereg -> capture -> audit through the CLI) on a small copy of demo-ablation
with one unaligned pair: the exclusion is counted and named, the ledger's cell numbers are recomputed from the
captured table by independent code (numpy), and the report draws the heatmap."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from studyrepo import commit_all, copy_study, git, make_writable

NAME = "demo-source-trace"
KEEP = {f"head-{i:03d}" for i in range(1, 11)} | {f"ctrl-{i:03d}" for i in range(1, 4)} | {f"ref-{i:03d}" for i in range(1, 5)}
UNALIGNED = {"id": "head-u1", "class": "headline", "split": "heldout", "clean": "the capital of veltoria is",
             "corrupted": "the capital city of osmira is", "answer": " marn", "wrong_answer": " tolv",
             "note": "corrupted prompt one token longer: cannot be patched position by position"}


def lockstep(*args, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "lockstep", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _small(study: Path) -> None:
    """demo-ablation cut to 10 headline, 3 control and 4 reference pairs plus an unaligned pair; analyses B1 and B5."""
    prompts = [json.loads(line) for line in (study / "prompts.jsonl").read_text().splitlines() if line.strip()]
    prompts = [p for p in prompts if p["id"] in KEEP] + [UNALIGNED]
    assert len(prompts) == len(KEEP) + 1
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["study_id"] = NAME
    spec["analyses"] = [a for a in spec["analyses"] if a["id"] in ("B1", "B5")]
    spec["hypotheses"] = [h for h in spec["hypotheses"] if h["analysis"] in ("B1", "B5")]
    for key, field_name in (("classes", "class"), ("splits", "split")):
        spec["sampling_plan"][key] = dict(Counter(p[field_name] for p in prompts))
    spec["inference"]["exploratory_note"] = "H1 is confirmatory; H6 is exploratory."
    thresholds = yaml.safe_load((study / "thresholds.yaml").read_text())
    keep = {n for h in spec["hypotheses"] for n in h["thresholds"]} | {"alpha"}
    thresholds["thresholds"] = {k: v for k, v in thresholds["thresholds"].items() if k in keep}
    for name, text in (("prompts.jsonl", "".join(json.dumps(p) + "\n" for p in prompts)),
                       ("study.yaml", yaml.safe_dump(spec, sort_keys=False)),
                       ("thresholds.yaml", yaml.safe_dump(thresholds, sort_keys=False))):
        make_writable(study / name)
        (study / name).write_text(text)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    repo = tmp_path_factory.mktemp("source-trace") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    _small(copy_study("demo-ablation", repo, as_name=NAME))
    commit_all(repo, "add study")
    lockstep("prereg", f"preregistrations/{NAME}", cwd=repo)
    commit_all(repo, "freeze")
    lockstep("capture", f"preregistrations/{NAME}", "--no-progress", cwd=repo)
    lockstep("audit", f"preregistrations/{NAME}", cwd=repo)
    return repo


def _ledger(repo: Path) -> dict:
    return json.loads((repo / "reports" / NAME / "ledger.json").read_text())


def _aligned(repo: Path) -> list[str]:
    """Headline pairs left after the preregistered exclusions (X2 removes one here), less the unaligned one."""
    pairs = pd.read_parquet(repo / "runs" / NAME / "forward" / "pairs.parquet")
    kept = pairs[~pairs["excluded"] & (pairs["class"] == "headline") & (pairs["pair_id"] != "head-u1")]
    assert len(kept) >= 8
    return sorted(kept["pair_id"])


def test_unaligned_pairs_are_excluded_from_tracing_only_counted_and_named(traced):
    run = traced / "runs" / NAME / "forward"
    manifest = json.loads((run / "manifest.json").read_text())
    [unaligned] = [x for x in manifest["exclusions"] if x["rule"] == "unaligned_lengths"]
    assert unaligned["pairs"] == ["head-u1"] and unaligned["by_class"] == {"headline": 1}
    assert unaligned["scope"] == "source_trace"
    assert "exclusion unaligned_lengths (unaligned_lengths) excluded 1 pair(s) from source tracing (headline 1): head-u1" \
        in manifest["warnings"]
    trace = pd.read_parquet(run / "source_trace.parquet")
    n = len(_aligned(traced))
    assert sorted(set(trace["pair_id"])) == _aligned(traced)
    # the ablation analyses keep the pair: the exclusion is source tracing's alone
    pairs = pd.read_parquet(run / "pairs.parquet").set_index("pair_id")
    assert not pairs.loc["head-u1", "excluded"]
    assert "head-u1" in set(pd.read_parquet(run / "ablations.parquet")["pair_id"])
    # grid: 4 layers x 3 position keys per pair, one target
    assert len(trace) == n * 4 * 3 and set(trace["position"]) == {"0", "first_diff", "-1"}
    assert manifest["source_trace"]["cells"] == n * 4 * 3 and manifest["cost"]["source_trace_forwards"] >= 1
    ledger = _ledger(traced)
    card = next(r for r in ledger["runs"] if r["run_id"] == "forward")
    assert {"rule": "unaligned_lengths", "ids": ["head-u1"]}.items() <= next(
        x for x in card["exclusions"] if x["rule"] == "unaligned_lengths").items()
    h6 = next(c for c in ledger["claims"] if c["hypothesis"] == "H6")
    assert h6["numbers"]["n_unaligned"] == 1
    assert any("head-u1" in w and "unaligned_lengths" in w for w in h6["warnings"])


def test_the_claim_cell_is_recomputed_from_the_captured_table(traced):
    trace = pd.read_parquet(traced / "runs" / NAME / "forward" / "source_trace.parquet")
    cell = trace[(trace["layer"] == 2) & (trace["position"] == "first_diff")].sort_values("pair_id")
    values = cell["slot_restored"].to_numpy()
    n = len(_aligned(traced))
    assert len(values) == n and (values > 0.5).all()
    h6 = next(c for c in _ledger(traced)["claims"] if c["hypothesis"] == "H6")
    numbers = h6["numbers"]
    assert h6["status"] == "held"
    assert numbers["restored_fraction"] == pytest.approx(values.mean(), rel=1e-12)
    assert numbers["n_pairs"] == n
    # every value positive: of the 2^n sign patterns only the observed one reaches the observed mean (exact test)
    assert numbers["exact"] is True and numbers["p_value"] == pytest.approx(1 / 2 ** n)
    # the interval: percentile bootstrap of the mean, the study's bootstrap settings (numpy, by hand)
    rng = np.random.default_rng(20260702)
    means = values[rng.integers(0, n, size=(1999, n))].mean(axis=1)
    assert numbers["restored_fraction_ci_low"] == pytest.approx(np.quantile(means, 0.025), rel=1e-12)
    assert numbers["restored_fraction_ci_high"] == pytest.approx(np.quantile(means, 0.975), rel=1e-12)
    ci = next(c for c in h6["criteria"] if c["name"] == "min_restored_fraction_ci_low")
    assert ci["passed"] and ci["observed"] == numbers["restored_fraction_ci_low"]


def test_the_layer_by_position_table_and_the_heatmap(traced):
    table = pd.read_parquet(traced / "reports" / NAME / "tables" / "source_trace.parquet")
    assert len(table) == 4 * 3 and set(table["n_pairs"]) == {len(_aligned(traced))} and table["is_claim_cell"].sum() == 1
    by_cell = table.set_index(["layer", "position"])["mean"]
    trace = pd.read_parquet(traced / "runs" / NAME / "forward" / "source_trace.parquet")
    np.testing.assert_allclose(by_cell.sort_index(), trace.groupby(["layer", "position"])["slot_restored"].mean().sort_index())
    # position 0 precedes the land and is the same token in both prompts: patching it restores nothing
    np.testing.assert_allclose(by_cell.xs("0", level="position"), 0.0, atol=1e-4)
    assert (table["ci_low"] <= table["mean"] + 1e-12).all() and (table["mean"] <= table["ci_high"] + 1e-12).all()
    html = (traced / "reports" / NAME / "report.html").read_text()
    assert 'id="sec-source"' in html and 'id="fig-source-B5"' in html
    assert "The claim's cell for <code>L3H2</code> (ringed), layer 2 at position <code>first_diff</code>" in html
