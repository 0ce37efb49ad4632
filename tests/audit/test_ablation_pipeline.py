"""The ablation design end to end, as a user runs it (prereg -> capture -> label -> audit through the CLI) on
demo-ablation (a planted head) and its null twin, with the ledger's numbers recomputed from the captured
tables by independent code (numpy, scipy.stats, pandas)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats as sps

from studyrepo import commit_all, copy_study, git, make_writable

LOCKSTEP = [sys.executable, "-m", "lockstep"]
COMBINED = "L1H1+L2H1+L3H2"


def lockstep(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*LOCKSTEP, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _audited(tmp_path_factory, name: str) -> tuple[Path, str]:
    repo = tmp_path_factory.mktemp(name) / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study(name, repo)
    commit_all(repo, f"add {name}")
    lockstep("prereg", f"preregistrations/{name}", cwd=repo)
    commit_all(repo, f"freeze {name}")
    lockstep("capture", f"preregistrations/{name}", "--no-progress", cwd=repo)
    said = lockstep("label", f"preregistrations/{name}", cwd=repo).stdout
    lockstep("audit", f"preregistrations/{name}", cwd=repo)
    return repo, said


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _audited(tmp_path_factory, "demo-ablation")


@pytest.fixture(scope="module")
def null_twin(tmp_path_factory):
    return _audited(tmp_path_factory, "demo-ablation-null")


def ledger(repo: Path, study: str) -> dict:
    return json.loads((repo / "reports" / study / "ledger.json").read_text())


def claims(repo: Path, study: str) -> dict[str, dict]:
    return {c["hypothesis"]: c for c in ledger(repo, study)["claims"]}


def run_table(repo: Path, study: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(repo / "runs" / study / "forward" / name)


def drops(repo: Path, study: str, target: str, cls: str) -> pd.DataFrame:
    pairs = run_table(repo, study, "pairs.parquet")
    kept = pairs[~pairs["excluded"] & (pairs["class"] == cls)]["pair_id"]
    abl = run_table(repo, study, "ablations.parquet")
    return abl[(abl["target"] == target) & abl["pair_id"].isin(kept)].sort_values("pair_id")


def test_the_planted_head_is_found_and_held(planted):
    repo, said = planted
    assert "no generated text to label" in said
    status = {h: c["status"] for h, c in claims(repo, "demo-ablation").items()}
    assert status == {"H1": "held", "H2": "held", "H3": "held", "H4": "held", "H5": "fell", "H6": "held",
                      "H7": "held", "H8": "fell"}
    card = json.loads((repo / "reports/demo-ablation/run_card_forward.json").read_text())
    assert card["status"] == "pass" and card["review_status"] == "pending_review"
    baseline = pd.read_parquet(repo / "reports/demo-ablation/tables/baseline.parquet").set_index("unit")
    assert baseline.loc["L3H2", "rank"] == 1 and (baseline["rank"] == 1).sum() == 1
    assert len(baseline) == 16 and baseline.loc["L2H1", "layer_type"] == "linear_attention"
    assert ledger(repo, "demo-ablation")["synthetic"] is True


def test_sae_knockdown_numbers_match_the_captured_table(planted):
    repo, _ = planted
    table = run_table(repo, "demo-ablation", "sae_knockdown.parquet")
    pairs = run_table(repo, "demo-ablation", "pairs.parquet")
    head = set(pairs[~pairs["excluded"] & (pairs["class"] == "headline")]["pair_id"])
    found = claims(repo, "demo-ablation")
    for hyp, feature in (("H7", 37), ("H8", 90)):
        rows = table[(table["condition"] == "knockdown") & (table["feature"] == feature) & table["pair_id"].isin(head)]
        numbers = found[hyp]["numbers"]
        assert numbers["feature"] == feature and numbers["active_pairs"] == len(rows) >= 2
        assert numbers["mean_drop"] == pytest.approx(rows["drop"].mean(), rel=1e-12)
        assert (rows["activation"] > 0).all()
        assert numbers["p_adjusted"] >= numbers["p_value"]
    assert found["H7"]["numbers"]["mean_drop"] > 0.25 and found["H8"]["numbers"]["features_tested"] > 2
    splice = table[(table["condition"] == "splice_in") & table["pair_id"].isin(head)]
    assert len(splice) == len(head)
    assert found["H7"]["numbers"]["splice_mean_margin_change"] == pytest.approx(
        (splice["margin"] - splice["baseline_margin"]).mean(), rel=1e-12)
    assert 0.9 < found["H7"]["numbers"]["variance_explained"] <= 1.0 and not found["H7"]["warnings"]


def test_the_null_twin_is_not_held(null_twin):
    repo, _ = null_twin
    found = claims(repo, "demo-ablation-null")
    assert found["H1"]["status"] == "fell" and found["H4"]["status"] == "fell"
    assert all(c["status"] != "held" for c in found.values())
    card = json.loads((repo / "reports/demo-ablation-null/run_card_forward.json").read_text())
    assert card["status"] == "fail"
    # with nothing planted the unablated headline margins are noise: X2 removed some, and says so
    pairs = run_table(repo, "demo-ablation-null", "pairs.parquet")
    x2 = pairs[pairs["excluded_by"] == "X2"]
    assert len(x2) > 0 and (x2["baseline_clean_margin"] <= 0).all()
    assert any(w.startswith(f"exclusion X2 (nonpositive_clean_margin) excluded {len(x2)} pair(s)") for w in found["H1"]["warnings"])
    entry = [json.loads(l) for l in (repo / "preregistrations/demo-ablation-null/JOURNAL.jsonl").read_text().splitlines()
             if json.loads(l)["stage"] == "capture"][-1]
    assert entry["details"]["exclusions"]["forward"][1]["pairs"] == sorted(x2["pair_id"])


@pytest.mark.parametrize("study", ["demo-ablation", "demo-ablation-null"])
def test_drop_numbers_match_an_independent_computation(planted, null_twin, study):
    repo = planted[0] if study == "demo-ablation" else null_twin[0]
    found = claims(repo, study)
    numbers = found["H1"]["numbers"]
    d = drops(repo, study, COMBINED, "headline")
    drop = d["clean_drop"].to_numpy()
    assert numbers["n_pairs"] == len(drop)
    assert numbers["mean_drop"] == pytest.approx(drop.mean(), rel=1e-12)
    ci = sps.ttest_1samp(drop, 0).confidence_interval(0.95)  # scipy.stats.ttest_1samp(drop, 0)
    assert (numbers["mean_drop_ci_low"], numbers["mean_drop_ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert numbers["relative_drop"] == pytest.approx(drop.mean() / d["baseline_clean_margin"].mean(), rel=1e-12)
    # Monte Carlo sign flips: scipy's own estimate with another stream agrees within 4 standard errors
    ref = sps.permutation_test((drop,), np.mean, permutation_type="samples", alternative="greater",
                               n_resamples=9999, random_state=1).pvalue
    assert abs(numbers["p_value"] - ref) <= 4 * np.sqrt(max(ref * (1 - ref), 1e-4) / 9999) + 2e-4

    spec = found["H3"]["numbers"]
    c = drops(repo, study, COMBINED, "control")["clean_drop"].to_numpy()
    assert spec["control_mean_drop"] == pytest.approx(c.mean(), rel=1e-12)
    assert spec["specificity_ratio"] == pytest.approx(drop.mean() / max(c.mean(), 0.05), rel=1e-12)
    ref = sps.permutation_test((drop, c), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                               alternative="greater", n_resamples=9999, random_state=1).pvalue
    assert abs(spec["p_value"] - ref) <= 4 * np.sqrt(max(ref * (1 - ref), 1e-4) / 9999) + 2e-4


@pytest.mark.parametrize("study", ["demo-ablation", "demo-ablation-null"])
def test_baseline_ranks_match_an_independent_computation(planted, null_twin, study):
    repo = planted[0] if study == "demo-ablation" else null_twin[0]
    numbers = claims(repo, study)["H4"]["numbers"]
    pairs = run_table(repo, study, "pairs.parquet")
    kept = pairs[~pairs["excluded"] & (pairs["class"] == "headline")]["pair_id"]
    base = run_table(repo, study, "baseline.parquet")
    means = base[base["pair_id"].isin(kept)].groupby("slot")["drop"].mean()
    ranks = means.rank(ascending=False, method="max")  # ties ranked pessimistically
    assert numbers["target_statistic"] == pytest.approx(means["L3H2"], rel=1e-12)
    assert numbers["target_rank"] == ranks["L3H2"] and numbers["L2H1_rank"] == ranks["L2H1"]
    assert numbers["best_unit"] == means.idxmax() and numbers["family_size"] == 16
    # the stacked baseline and the targeted individual ablation of the same slot agree
    targeted = drops(repo, study, "L3H2", "headline").set_index("pair_id")["clean_drop"]
    stacked = base[(base["slot"] == "L3H2") & base["pair_id"].isin(kept)].set_index("pair_id")["drop"]
    np.testing.assert_allclose(stacked.sort_index(), targeted.sort_index(), atol=1e-5)


def test_report_shows_the_drop_plot_and_the_head_heatmap(planted):
    repo, _ = planted
    html = (repo / "reports/demo-ablation/report.html").read_text()
    assert "Ablation: margin drop per pair" in html and 'id="fig-ablation-B1"' in html
    assert "layer × head" in html and 'id="fig-heatmap-B3"' in html
    assert "pre-registered threshold of 1.5 logits" in html
    pairs = pd.read_parquet(repo / "reports/demo-ablation/tables/ablation_pairs.parquet")
    assert {"analysis_id", "pair_id", "pair_class", "baseline_margin", "ablated_margin", "drop"} <= set(pairs.columns)
    assert set(pairs["analysis_id"]) == {"B1", "B2", "B4/L1H1", "B4/L2H1"}


def test_captured_tables_changed_after_capture_are_refused(planted, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(planted[0], repo)
    path = repo / "runs/demo-ablation/forward/ablations.parquet"
    table = pq.read_table(path)
    margins = table["ablated_clean_margin"].to_numpy().copy()
    margins[0] -= 5.0
    path.chmod(0o644)
    pq.write_table(table.set_column(table.schema.get_field_index("ablated_clean_margin"), "ablated_clean_margin",
                                    pa.array(margins)), path)
    result = lockstep("audit", "preregistrations/demo-ablation", cwd=repo, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "ablations.parquet differs from the file the capture recorded" in result.stderr


# -- the review's features on an edited copy of demo-ablation ---------------------------------------------------

FEATURES = "demo-ablation-features"


def _with_features(study: Path) -> None:
    """demo-ablation with full-answer scoring (head-001's wrong answer made two tokens, flagged by X3), a
    template-position reference (last position), a zero-ablation sensitivity arm, X2 scoped to headline
    pairs, the stopping rule as a structured minimum, a control-adjusted all-slot baseline (H6) and an
    analysis of the zero arm (H7)."""
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["study_id"] = FEATURES
    # source tracing and SAE knockdown read first-token margins only
    traced = {a["id"] for a in spec["analyses"] if a["kind"] in ("source_trace", "sae_knockdown")}
    spec["analyses"] = [a for a in spec["analyses"] if a["id"] not in traced]
    spec["hypotheses"] = [h for h in spec["hypotheses"] if h["analysis"] not in traced]
    spec["ablation"].update({"answer_tokenization": "full_answer", "per_position_means": 1,
                             "sensitivity_kinds": ["zero"],
                             "min_pairs_after_exclusions": {"headline": 20, "control": 8}})
    spec["exclusions"][1]["classes"] = ["headline"]
    spec["exclusions"].append({"id": "X3", "rule": "multi_token_answer", "action": "flag",
                               "description": "Answers longer than one token are flagged."})
    base = {"metric": "margin_drop", "run": "forward", "split": "heldout", "pairs": "headline", "tails": "greater"}
    spec["analyses"] += [
        {"id": "B5", "kind": "all_unit_baseline", "mode": "individual", "control": "control", "correction": "maxT_stepdown",
         "family": "all_units", **base},
        {"id": "B6", "kind": "ablation_drop", "mode": "combined", "targets": ["L3H2", "L1H1", "L2H1"], "ablation_kind": "zero",
         "test": "paired_sign_flip", "correction": "none", **base}]
    spec["hypotheses"] += [
        {"id": "H6", "claim": "Net of the control drops, L3H2 ranks at most max_target_rank among all slots, with a max-T "
                              "step-down adjusted p below alpha.", "direction": "greater", "kind": "exploratory",
         "analysis": "B5", "thresholds": ["alpha", "max_target_rank"], "evidence_type": "intervention"},
        {"id": "H7", "claim": "Zero-ablating the combined set (L3H2, L1H1, L2H1) reduces the mean headline margin.",
         "direction": "greater", "kind": "exploratory", "analysis": "B6", "thresholds": ["alpha"],
         "evidence_type": "intervention"}]
    for file, text in (("study.yaml", yaml.safe_dump(spec, sort_keys=False)),):
        make_writable(study / file)
        (study / file).write_text(text)
    prompts = [json.loads(line) for line in (study / "prompts.jsonl").read_text().splitlines() if line.strip()]
    for p in prompts:
        if p["id"] == "head-001":
            p["wrong_answer"] = " tolv pesk"
    make_writable(study / "prompts.jsonl")
    (study / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    repo = tmp_path_factory.mktemp("features") / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    _with_features(copy_study("demo-ablation", repo, as_name=FEATURES))
    commit_all(repo, "add study")
    lockstep("prereg", f"preregistrations/{FEATURES}", cwd=repo)
    commit_all(repo, "freeze")
    lockstep("capture", f"preregistrations/{FEATURES}", "--no-progress", cwd=repo)
    lockstep("label", f"preregistrations/{FEATURES}", cwd=repo)
    lockstep("audit", f"preregistrations/{FEATURES}", cwd=repo)
    return repo


def test_full_answer_scoring_and_the_tokenisation_in_pairs(features, planted):
    pairs = run_table(features, FEATURES, "pairs.parquet").set_index("pair_id")
    first = run_table(planted[0], "demo-ablation", "pairs.parquet").set_index("pair_id")
    row = pairs.loc["head-001"]
    assert row["wrong_n_tokens"] == len(row["wrong_token_ids"]) == 2 and list(row["wrong_tokens"]) == ["tolv", "pesk"]
    assert row["wrong_token_ids"][0] == row["wrong_token_id"] == first.loc["head-001", "wrong_token_id"]
    assert all(list(r["answer_token_ids"]) == [r["answer_token_id"]] for _, r in pairs.iterrows())
    assert list(row["flagged_by"]) == ["X3"] and not row["excluded"]
    manifest = json.loads((features / "runs" / FEATURES / "forward" / "manifest.json").read_text())
    by_id = {x["id"]: x for x in manifest["exclusions"]}
    assert by_id["X3"]["pairs"] == ["head-001"] and by_id["X3"]["action"] == "flag"
    assert by_id["X2"]["classes"] == ["headline"] and "control" not in by_id["X2"]["by_class"]
    # single-token answers: the summed log-probability margin is the first-token logit difference
    others = pairs.index.drop("head-001")
    np.testing.assert_allclose(pairs.loc[others, "baseline_clean_margin"], first.loc[others, "baseline_clean_margin"], atol=1e-4)
    # a second wrong-answer token only lowers log p(wrong answer): the margin grows
    assert row["baseline_clean_margin"] > first.loc["head-001", "baseline_clean_margin"] + 1e-3


def test_position_means_and_the_zero_arm(features):
    means = run_table(features, FEATURES, "reference_means.parquet")
    reference = [json.loads(line) for line in (features / "preregistrations" / FEATURES / "prompts.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "reference"]
    assert len(means) == 32 and set(means["position"]) == {0, 1}
    assert set(means.loc[means["position"] == 1, "n_tokens"]) == {len(reference)}  # one last token per reference prompt
    abl = run_table(features, FEATURES, "ablations.parquet")
    assert set(abl["kind"]) == {"mean", "zero"}
    found = claims(features, FEATURES)
    zero = drops(features, FEATURES, COMBINED, "headline")
    zero = zero[zero["kind"] == "zero"]["clean_drop"].to_numpy()
    assert found["H7"]["numbers"]["mean_drop"] == pytest.approx(zero.mean(), rel=1e-12)
    assert found["H7"]["numbers"]["ablation_kind"] == "zero" and found["H1"]["numbers"]["ablation_kind"] == "mean"
    meaned = drops(features, FEATURES, COMBINED, "headline")
    meaned = meaned[meaned["kind"] == "mean"]["clean_drop"].to_numpy()
    assert found["H1"]["numbers"]["mean_drop"] == pytest.approx(meaned.mean(), rel=1e-12)
    assert np.max(np.abs(zero - meaned)) > 1e-3


def test_descriptive_arms_and_the_stopping_rule_counts(features):
    found = claims(features, FEATURES)
    numbers = found["H1"]["numbers"]
    d = drops(features, FEATURES, COMBINED, "headline")
    d = d[d["kind"] == "mean"]
    assert numbers["baseline_margin_median"] == pytest.approx(np.median(d["baseline_clean_margin"]), rel=1e-12)
    assert numbers["baseline_margin_q25"] == pytest.approx(np.quantile(d["baseline_clean_margin"], 0.25), rel=1e-12)
    assert numbers["corrupted_mean_drop"] == pytest.approx(d["corrupted_drop"].mean(), rel=1e-12)
    assert numbers["corrupted_mean_ablated_margin"] == pytest.approx(d["ablated_corrupted_margin"].mean(), rel=1e-12)
    assert numbers["analysed_pairs_headline"] == len(d) and numbers["min_pairs_headline"] == 20
    assert numbers["stopping_rule_met"] is True
    c = drops(features, FEATURES, COMBINED, "control")
    c = c[c["kind"] == "mean"]
    spec = found["H3"]["numbers"]
    assert spec["control_relative_drop"] == pytest.approx(c["clean_drop"].mean() / c["baseline_clean_margin"].mean(), rel=1e-12)
    assert spec["relative_drop"] == pytest.approx(d["clean_drop"].mean() / d["baseline_clean_margin"].mean(), rel=1e-12)
    table = pd.read_parquet(features / "reports" / FEATURES / "tables" / "ablation_pairs.parquet")
    assert {"corrupted_baseline_margin", "corrupted_ablated_margin", "corrupted_drop"} <= set(table.columns)


def test_control_adjusted_baseline_against_scipy_and_pandas(features):
    numbers = claims(features, FEATURES)["H6"]["numbers"]
    pairs = run_table(features, FEATURES, "pairs.parquet")
    kept = pairs[~pairs["excluded"]]
    base = run_table(features, FEATURES, "baseline.parquet")
    head = base[base["pair_id"].isin(kept.loc[kept["class"] == "headline", "pair_id"])]
    ctrl = base[base["pair_id"].isin(kept.loc[kept["class"] == "control", "pair_id"])]
    welch = sps.ttest_ind(head.loc[head["slot"] == "L3H2", "drop"], ctrl.loc[ctrl["slot"] == "L3H2", "drop"],
                          equal_var=False).statistic  # scipy.stats.ttest_ind(equal_var=False)
    assert numbers["target_statistic"] == pytest.approx(welch, rel=1e-9) and numbers["statistic"] == "welch_t"
    adjusted = head.groupby("slot")["drop"].mean() - ctrl.groupby("slot")["drop"].mean()
    assert numbers["L3H2_rank_adjusted_drop"] == adjusted.rank(ascending=False, method="max")["L3H2"]
    assert numbers["L3H2_rank_headline_drop"] == head.groupby("slot")["drop"].mean().rank(ascending=False, method="max")["L3H2"]
    assert numbers["null"] == "equal_means" and numbers["family_size"] == 16
    assert claims(features, FEATURES)["H6"]["status"] == "held"


def test_an_unmet_stopping_rule_makes_every_claim_not_established(features):
    from audit.ledger import compute
    from lockstep.gate import require_frozen

    frozen = require_frozen(features / "preregistrations" / FEATURES)
    spec = json.loads(json.dumps(frozen.spec))
    spec["ablation"]["min_pairs_after_exclusions"] = {"headline": 20, "control": 13}  # 12 control pairs exist
    ledger_, _ = compute(dataclasses.replace(frozen, spec=spec))
    for claim in ledger_["claims"]:
        assert claim["status"] == "not_established", claim["hypothesis"]
        assert "stopping_rule_unmet" in claim["warning_codes"]
        assert claim["numbers"]["analysed_pairs_control"] == 12 and claim["numbers"]["stopping_rule_met"] is False
