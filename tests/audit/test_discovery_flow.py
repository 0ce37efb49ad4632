"""Discovery to confirmation, as a user runs it through the CLI in a real git repository: freeze a discovery
study, `lockstep discover` on its discovery split, `lockstep propose` a confirmatory study from the ranking,
freeze, capture and audit it on heldout pairs, and `lockstep verify` it; on the planted model and on its
null twin. Then the fence and the order are attacked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from studyrepo import commit_all, copy_study, git, make_writable

LOCKSTEP = [sys.executable, "-m", "lockstep"]
SETS = ["--set", "min_mean_drop_logits=1.5", "--set", "min_specificity_ratio=5", "--set",
        "control_drop_floor_logits=0.05", "--set", "max_target_rank=1"]


def lockstep(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*LOCKSTEP, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _flow(tmp_path_factory, twin: str) -> Path:
    repo = tmp_path_factory.mktemp("discovery" + twin) / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study("demo-discover" + twin, repo)
    commit_all(repo, "plan")
    lockstep("prereg", f"preregistrations/demo-discover{twin}", cwd=repo)
    commit_all(repo, "freeze discovery")
    lockstep("discover", f"preregistrations/demo-discover{twin}", "--no-progress", cwd=repo)
    lockstep("propose", f"preregistrations/demo-discover{twin}", "--out", f"preregistrations/demo-confirm{twin}", *SETS, cwd=repo)
    commit_all(repo, "propose")
    lockstep("prereg", f"preregistrations/demo-confirm{twin}", cwd=repo)
    commit_all(repo, "freeze confirmation")
    lockstep("capture", f"preregistrations/demo-confirm{twin}", "--no-progress", cwd=repo)
    lockstep("audit", f"preregistrations/demo-confirm{twin}", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _flow(tmp_path_factory, "")


@pytest.fixture(scope="module")
def null_twin(tmp_path_factory):
    return _flow(tmp_path_factory, "-null")


def _run_folder(repo: Path, study: str) -> Path:
    """The folder the study's newest discover entry wrote (its journal says where)."""
    entries = [json.loads(line) for line in (repo / "preregistrations" / study / "JOURNAL.jsonl").read_text().splitlines()]
    return repo / [e for e in entries if e["stage"] == "discover"][-1]["details"]["folder"]


def _discovery(repo: Path, twin: str = "") -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    folder = _run_folder(repo, f"demo-discover{twin}")
    return (json.loads((folder / "discovery.json").read_text()), pd.read_parquet(folder / "candidates.parquet"),
            pd.read_parquet(folder / "slots.parquet"))


def test_discovery_ranks_the_planted_head_first_and_reads_only_its_split(planted):
    record, candidates, slots = _discovery(planted)
    heads = candidates[candidates["probe"] == "head_attribution"].sort_values("rank")
    assert heads.iloc[0]["unit"] == "L3H2" and heads.iloc[0]["top_k_frequency"] == 1.0
    assert record["ranked_exact"][0] == "L3H2"
    # only discovery-split pairs were read, and the record says which by content
    prompts = [json.loads(line) for line in (planted / "preregistrations/demo-discover/prompts.jsonl").read_text().splitlines()]
    split_of = {p["id"]: p["split"] for p in prompts}
    assert record["pairs_read"] and {split_of[i] for i in record["pairs_read"]} == {"discovery"}
    # the summary is the per-pair table's mean over the pairs left in (recomputed here with pandas)
    pairs = pd.read_parquet(_run_folder(planted, "demo-discover") / "pairs.parquet")
    kept = set(pairs.loc[pairs["excluded_by"].isna(), "pair_id"])
    mine = slots[slots["pair_id"].isin(kept)].groupby("slot")["attribution_drop"].mean()
    for _, row in heads.iterrows():
        assert row["mean"] == pytest.approx(mine[row["unit"]], rel=1e-9, abs=1e-12)
    # the exact check's rank correlation is scipy's over the checked slots' means
    exact = slots[slots["pair_id"].isin(kept)].groupby("slot")["exact_drop"].mean()
    checked = record["exact_check"]["slots"]
    rho = sps.spearmanr([mine[s] for s in checked], [exact[s] for s in checked]).statistic
    assert record["exact_check"]["spearman_rho"] == pytest.approx(rho, abs=1e-12)
    assert rho > 0.5


def test_the_proposed_study_confirms_the_planted_head_and_names_its_discovery(planted):
    ledger = json.loads((planted / "reports/demo-confirm/ledger.json").read_text())
    status = {c["hypothesis"]: c["status"] for c in ledger["claims"]}
    assert status == {"H1": "held", "H2": "held", "H3": "held"}
    assert ledger["discovery"]["study_id"] == "demo-discover" and ledger["discovery"]["ranked"][0] == "L3H2"
    spec = yaml.safe_load((planted / "preregistrations/demo-confirm/study.yaml").read_text())
    assert {p["split"] for p in map(json.loads, (planted / "preregistrations/demo-confirm/prompts.jsonl").read_text().splitlines())} \
        == {"heldout", "reference"}
    assert all(a["split"] == "heldout" for a in spec["analyses"])
    said = lockstep("verify", "preregistrations/demo-confirm", cwd=planted).stdout
    assert "verify_discovery: proposed from demo-discover" in said and "verify: intact" in said
    report = (planted / "reports/demo-confirm/report.html").read_text()
    assert 'id="discovery-source"' in report


def test_the_null_twin_confirms_nothing(null_twin):
    record, candidates, _ = _discovery(null_twin, "-null")
    ledger = json.loads((null_twin / "reports/demo-confirm-null/ledger.json").read_text())
    assert all(c["status"] != "held" for c in ledger["claims"])
    # with nothing planted, no slot carries the facts: the null's best attribution is a small fraction of the plant's
    heads = candidates[candidates["probe"] == "head_attribution"]
    assert heads["mean"].max() < 1.0


def test_propose_leaves_thresholds_to_the_researcher(planted, tmp_path):
    out = planted / "preregistrations" / "draft-unset"
    lockstep("propose", "preregistrations/demo-discover", "--out", out, cwd=planted)
    said = lockstep("validate", out, cwd=planted, check=False)
    assert said.returncode == 1
    assert "thresholds.yaml" in said.stderr and "min_mean_drop_logits" in said.stderr
    again = lockstep("propose", "preregistrations/demo-discover", "--out", out, cwd=planted, check=False)
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_confirmatory_pair_discovery_read_is_refused_at_freeze(planted):
    out = planted / "preregistrations" / "leaky"
    lockstep("propose", "preregistrations/demo-discover", "--out", out, *SETS, cwd=planted)
    discovery_pair = next(json.loads(line) for line in (planted / "preregistrations/demo-discover/prompts.jsonl")
                          .read_text().splitlines() if json.loads(line)["split"] == "discovery")
    renamed = {**discovery_pair, "id": "head-renamed", "split": "heldout"}
    # the same clean prompt with a doubled space and a new corrupted prompt: the model reads the same tokens
    spaced = {**discovery_pair, "id": "head-spaced", "split": "heldout", "clean": discovery_pair["clean"].replace(" ", "  ") + " ",
              "corrupted": "zeldra is the capital of"}
    with (out / "prompts.jsonl").open("a") as f:
        f.write(json.dumps(renamed) + "\n" + json.dumps(spaced) + "\n")
    spec = yaml.safe_load((out / "study.yaml").read_text())
    spec["sampling_plan"]["classes"]["headline"] += 2
    spec["sampling_plan"]["splits"]["heldout"] += 2
    (out / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    commit_all(planted, "leaky draft")
    said = lockstep("prereg", out, cwd=planted, check=False)
    assert said.returncode == 1 and "read by discovery" in said.stderr and "head-renamed" in said.stderr
    assert "head-spaced (has a text of discovery pair disc-" in said.stderr
    assert not (out / "prereg.lock.json").exists()


def test_an_altered_discovery_journal_breaks_the_confirmatory_verify(planted, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(planted, copy, symlinks=True)
    journal = copy / "preregistrations/demo-discover/JOURNAL.jsonl"
    make_writable(journal)
    lines = journal.read_text().splitlines()
    entry = json.loads(lines[1])
    assert entry["stage"] == "discover"
    entry["details"]["pair_digests"] = entry["details"]["pair_digests"][:-1]  # hide one pair it read
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    journal.write_text("\n".join(lines) + "\n")
    said = lockstep("verify", "preregistrations/demo-confirm", cwd=copy, check=False)
    assert said.returncode != 0 and "verify_discovery" in said.stdout


def test_the_order_and_the_weights_are_checked(planted):
    from lockstep.errors import ChainBroken
    from lockstep.propose import check_discovery_source

    assert check_discovery_source(None, {}, []) == "not derived from a discovery run"
    spec = yaml.safe_load((planted / "preregistrations/demo-confirm/study.yaml").read_text())
    prompts = [json.loads(line) for line in (planted / "preregistrations/demo-confirm/prompts.jsonl").read_text().splitlines()]
    assert "fence: none of its" in check_discovery_source(planted, spec, prompts, frozen_at="2999-01-01T00:00:00Z")
    with pytest.raises(ChainBroken, match="did not finish before this study was frozen"):
        check_discovery_source(planted, spec, prompts, frozen_at="2000-01-01T00:00:00Z")
    other = {**spec, "model": {**spec["model"], "weights_sha256": "0" * 64}}
    with pytest.raises(ChainBroken, match="discovery screened weights"):
        check_discovery_source(planted, other, prompts)
    with pytest.raises(ChainBroken, match="JOURNAL.jsonl is not here"):
        check_discovery_source(Path("/nonexistent"), spec, prompts)


def test_discovery_on_a_split_an_analysis_reads_is_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    study = copy_study("demo-discover", repo)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["discovery"]["split"] = "heldout"
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    lockstep("validate", study, cwd=repo)  # a split's name is not the rule: no analysis reads it yet
    spec["analyses"] = [{"id": "B1", "kind": "ablation_drop", "metric": "margin_drop", "mode": "individual",
                         "targets": ["L3H2"], "run": "forward", "split": "heldout", "pairs": "headline"}]
    spec["units"]["targets"] = [{"id": "L3H2", "layer": 3, "head": 2}]
    spec["hypotheses"] = [{"id": "H1", "kind": "exploratory", "direction": "greater", "analysis": "B1", "thresholds": ["alpha"],
                           "evidence_type": "intervention",
                           "claim": "Mean-ablating L3H2 reduces the clean logit-difference margin on headline pairs, sign-flip p below alpha."}]
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    said = lockstep("validate", study, cwd=repo, check=False)
    assert said.returncode == 1
    assert "/analyses/0/split" in said.stderr and "discovery split" in said.stderr


def test_the_bundle_carries_the_discovery_and_verifies_elsewhere(planted, tmp_path):
    import shutil

    lockstep("bundle", "preregistrations/demo-confirm", cwd=planted)
    bundle = next((planted / "reports/demo-confirm").glob("*.tar.gz"))
    away = tmp_path / "elsewhere" / bundle.name
    away.parent.mkdir()
    shutil.copyfile(bundle, away)
    said = lockstep("verify", away, cwd=tmp_path)
    assert "verify_discovery: proposed from demo-discover" in said.stdout and "verify: intact" in said.stdout


@pytest.mark.parametrize("args, words", [
    (["--set", "min_ratio=2"], "this draft's thresholds"),          # a routing threshold on an ablation draft
    (["--set", "max_target_rank=0"], "whole number of at least 1"),
    (["--set", "max_target_rank=2.5"], "whole number of at least 1"),
    (["--set", "alpha=nan"], "finite number"),
    (["--set", "alpha=0.5"], "(0, 0.2]"),
    (["--groups", "FIRE,NOFIRE"], "--groups applies to a routing scan"),
    (["--split", "discovery"], "is the discovery split"),
    (["--split", "reference"], "no headline pair in that split"),
])
def test_propose_refuses_what_does_not_apply_to_its_draft(planted, args, words):
    out = planted / "preregistrations" / "refused-draft"
    said = lockstep("propose", "preregistrations/demo-discover", "--out", out, *args, cwd=planted, check=False)
    assert said.returncode == 2 and words in said.stderr and "Traceback" not in said.stderr
    assert not out.exists()


def test_a_bundle_name_verify_could_not_recognise_is_refused(planted):
    said = lockstep("bundle", "preregistrations/demo-confirm", "--out", planted / "h.tar.gz", cwd=planted, check=False)
    assert said.returncode == 2 and ".bundle.tar.gz" in said.stderr and not (planted / "h.tar.gz").exists()


def test_an_analysis_without_a_split_or_a_run_is_refused_where_it_would_read_too_much(tmp_path):
    from lockstep.designs import design_of

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    study = copy_study("demo-discover", repo)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["units"]["targets"] = [{"id": "L3H2", "layer": 3, "head": 2}]
    spec["analyses"] = [{"id": "B1", "kind": "ablation_drop", "metric": "margin_drop", "mode": "individual",
                         "targets": ["L3H2"], "pairs": "headline"}]  # no split: it would read the discovery split too
    spec["hypotheses"] = [{"id": "H1", "kind": "exploratory", "direction": "greater", "analysis": "B1", "thresholds": ["alpha"],
                           "evidence_type": "intervention",
                           "claim": "Mean-ablating L3H2 reduces the clean logit-difference margin on headline pairs, sign-flip p below alpha."}]
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    said = lockstep("validate", study, cwd=repo, check=False)
    assert said.returncode == 1 and "/analyses/0: names no split" in said.stderr
    # one run: an analysis that names none reads it; two runs: it must say which
    assert design_of("ablation").resolve_analysis(spec["analyses"][0], spec)["run"] == "forward"
    spec["analyses"][0]["split"] = "heldout"
    spec["runtime"]["runs"].append({"id": "again", "decoding": "none"})
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    said = lockstep("validate", study, cwd=repo, check=False)
    assert said.returncode == 1 and "names no run, and the study has 2" in said.stderr


def test_a_contrast_of_a_class_with_itself_is_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    study = copy_study("demo-trained-moe", repo)
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["discovery"]["contrast"] = {"a": "FIRE", "b": "FIRE"}
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    said = lockstep("validate", study, cwd=repo, check=False)
    assert said.returncode == 1 and "compares class 'FIRE' with itself" in said.stderr


def test_the_draft_names_the_ablation_arm_the_study_uses():
    # the claim-word rules refuse a claim naming another arm than its analysis reads: a discovery study
    # that zero-ablates gets a draft that says so, one that mean-ablates a draft that says that
    from lockstep.propose import _hypotheses

    for kind, verb, done in (("zero", "Zero-ablating", "zero-ablated"), ("mean", "Mean-ablating", "mean-ablated")):
        hyps, analyses, _ = _hypotheses(["L3H2", "L1H1"], True, "heldout", kind)
        assert hyps[0]["claim"].startswith(f"{verb} the proposed slots (L3H2, L1H1)")
        assert f"each head slot is {done} alone" in hyps[-1]["claim"]
        other = "mean" if kind == "zero" else "zero"
        assert not any(f"{other}-ablat" in h["claim"].lower() for h in hyps)
