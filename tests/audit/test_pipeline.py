"""End to end, as a user runs it: freeze -> capture -> label -> audit on the planted demo and its null twin,
in real git repositories; labels before scores; tampering; post-hoc amendments; verify and bundles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from jsonschema import Draft202012Validator

from lockstep.fsio import sha256_file
from lockstep.records import schema
from studyrepo import commit_all, copy_study, git

LOCKSTEP = [sys.executable, "-m", "lockstep"]


def lockstep(*args, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*LOCKSTEP, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def _captured(tmp_path_factory, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    """A repository with the study frozen and captured; returns it and what `lockstep audit` said before labels."""
    repo = tmp_path_factory.mktemp(name) / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    copy_study(name, repo)
    commit_all(repo, f"add {name}")
    lockstep("prereg", f"preregistrations/{name}", cwd=repo)
    commit_all(repo, f"freeze {name}")
    lockstep("capture", f"preregistrations/{name}", "--no-progress", cwd=repo)
    early = lockstep("audit", f"preregistrations/{name}", cwd=repo, check=False)
    return repo, early


def _audited(tmp_path_factory, name: str) -> tuple[Path, subprocess.CompletedProcess]:
    repo, early = _captured(tmp_path_factory, name)
    lockstep("label", f"preregistrations/{name}", cwd=repo)
    lockstep("audit", f"preregistrations/{name}", cwd=repo)
    return repo, early


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return _audited(tmp_path_factory, "demo")


@pytest.fixture(scope="module")
def null_twin(tmp_path_factory):
    return _audited(tmp_path_factory, "demo-null")[0]


def ledger(repo: Path, study: str) -> dict:
    return json.loads((repo / "reports" / study / "ledger.json").read_text())


def status(repo: Path, study: str) -> dict[str, str]:
    return {c["hypothesis"]: c["status"] for c in ledger(repo, study)["claims"]}


def test_stats_before_labels_are_refused(planted):
    _, early = planted
    assert early.returncode == 1 and "Traceback" not in early.stderr
    assert "labels of run" in early.stderr and "are not frozen after its capture" in early.stderr


def test_the_planted_unit_holds_and_ranks_first(planted):
    repo, _ = planted
    assert status(repo, "demo")["H1"] == "held"
    assert status(repo, "demo")["H2"] == "held"
    # register effect real, but not shown larger than the class effect the planted attention path also makes
    h4 = next(c for c in ledger(repo, "demo")["claims"] if c["hypothesis"] == "H4")
    assert h4["status"] == "partly_held" and "register_not_above_class" in h4["warning_codes"]
    assert h4["numbers"]["register_p"] < 0.05 < h4["numbers"]["register_minus_class_p_one_sided"]
    baseline = pd.read_parquet(repo / "reports/demo/tables/baseline.parquet")
    assert baseline.set_index("unit").loc["L1E5", "rank"] == 1
    assert baseline["rank"].min() == 1 and (baseline["rank"] == 1).sum() == 1


def test_the_null_twin_does_not_hold(null_twin):
    assert status(null_twin, "demo-null")["H1"] != "held"
    assert status(null_twin, "demo-null")["H2"] != "held"


def test_ledger_matches_its_schema_and_run_cards_exist(planted):
    repo, _ = planted
    data = ledger(repo, "demo")
    errors = list(Draft202012Validator(schema("ledger")).iter_errors(data))
    assert errors == []
    for run in ("sampled", "greedy"):
        card = json.loads((repo / f"reports/demo/run_card_{run}.json").read_text())
        assert card["status"] in ("pass", "pass_with_warnings") and card["review_status"] == "pending_review"
    assert (repo / "reports/demo/ledger.md").read_text().startswith("# Evidence ledger")
    assert (repo / "reports/demo/report.html").stat().st_size > 10_000


def test_verify_recomputes_the_ledger_and_a_bundle_verifies_elsewhere(planted, tmp_path):
    repo, _ = planted
    result = lockstep("verify", "preregistrations/demo", "--json", cwd=repo)
    steps = {s["name"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["verify_ledger"]["ok"] and "equals the one recomputed" in steps["verify_ledger"]["message"]
    assert steps["verify_stage_order"]["ok"]
    bundle = lockstep("bundle", "preregistrations/demo", "--out", tmp_path / "demo.bundle.tar.gz", cwd=repo)
    assert "wrote" in bundle.stdout
    elsewhere = lockstep("verify", tmp_path / "demo.bundle.tar.gz", "--json", cwd=tmp_path)
    steps = {s["name"]: s for s in json.loads(elsewhere.stdout)["steps"]}
    assert "no git repository here" in steps["verify_git_commit"]["message"]
    assert "equals the one recomputed" in steps["verify_ledger"]["message"]


@pytest.fixture
def scratch(planted, tmp_path):
    """A copy of the audited planted repository for tests that break things."""
    repo = tmp_path / "repo"
    shutil.copytree(planted[0], repo, symlinks=True)
    return repo


def test_a_tampered_label_file_is_refused(scratch):
    labels = scratch / "runs/demo/sampled/labels.parquet"
    frame = pd.read_parquet(labels)
    frame.loc[0, "label"] = "inner" if frame.loc[0, "label"] == "outer" else "outer"
    frame.to_parquet(labels, index=False)
    refused = lockstep("audit", "preregistrations/demo", cwd=scratch, check=False)
    assert refused.returncode == 1 and "differs from the labels frozen in the journal" in refused.stderr
    verify = lockstep("verify", "preregistrations/demo", cwd=scratch, check=False)
    assert verify.returncode == 1 and "runs/demo/sampled/labels.parquet" in verify.stdout


def test_a_changed_unit_table_breaks_verify(scratch):
    units = scratch / "runs/demo/sampled/units.parquet"
    frame = pd.read_parquet(units)
    frame.loc[frame.index[0], "W"] += 0.5
    frame.to_parquet(units, index=False)
    verify = lockstep("verify", "preregistrations/demo", cwd=scratch, check=False)
    assert verify.returncode == 1 and "FAIL verify_artifacts" in verify.stdout


def test_an_amendment_after_scores_is_flagged_post_hoc(scratch):
    study = scratch / "preregistrations/demo"
    lockstep("amend", study, "--replace", "thresholds.yaml", "--reason", "looser ratio after seeing scores", "--seen", "scores_seen", cwd=scratch)
    path = study / "amendments/001/thresholds.yaml"
    path.write_text(path.read_text().replace("value: 2.0", "value: 1.5"))
    commit_all(scratch, "amend")
    lockstep("amend", study, "--freeze", cwd=scratch)
    lockstep("audit", study, cwd=scratch)
    data = ledger(scratch, "demo")
    assert data["amendments"] == [{"id": "001", "seen": "scores_seen", "post_hoc": True, "reason": "looser ratio after seeing scores"}]
    assert "POST HOC" in (scratch / "reports/demo/ledger.md").read_text()
    verify = lockstep("verify", study, cwd=scratch)
    assert "POST-HOC amendment(s) ['001']" in verify.stdout


def test_review_approves_exactly_the_reviewed_content(scratch, tmp_path):
    assert {c["review_status"] for c in ledger(scratch, "demo")["claims"]} == {"pending_review"}
    key = tmp_path / "reviewer"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = scratch / "preregistrations/demo/witness/allowed_signers"
    allowed.parent.mkdir(parents=True, exist_ok=True)
    allowed.write_text("reviewer " + " ".join(key.with_suffix(".pub").read_text().split()[:2]) + "\n")
    # an unsigned approval is not an approval: verify and the ledger say so
    unsigned = lockstep("review", "preregistrations/demo", "--approve", "--reviewer", "reviewer", cwd=scratch)
    assert "is unsigned, so it is not an approval" in unsigned.stderr
    lockstep("audit", "preregistrations/demo", cwd=scratch)
    assert {c["review_status"] for c in ledger(scratch, "demo")["claims"]} == {"pending_review"}
    assert "NOT an approval" in lockstep("verify", "preregistrations/demo", cwd=scratch).stdout
    lockstep("review", "preregistrations/demo", "--approve", "--reviewer", "reviewer", "--sign-key", key, cwd=scratch)
    entry = json.loads((scratch / "preregistrations/demo/JOURNAL.jsonl").read_text().splitlines()[-1])
    assert entry["stage"] == "review" and entry["details"]["reviewer"] == "reviewer"
    lockstep("audit", "preregistrations/demo", cwd=scratch)  # same data, same content: approved by the signed review
    assert {c["review_status"] for c in ledger(scratch, "demo")["claims"]} == {"approved"}
    assert "approval by reviewer (entry" in lockstep("verify", "preregistrations/demo", cwd=scratch).stdout
    study = scratch / "preregistrations/demo"
    lockstep("amend", study, "--replace", "thresholds.yaml", "--reason", "stricter d", "--seen", "scores_seen", cwd=scratch)
    path = study / "amendments/001/thresholds.yaml"
    path.write_text(path.read_text().replace("value: 0.8", "value: 0.9"))
    commit_all(scratch, "amend")
    lockstep("amend", study, "--freeze", cwd=scratch)
    lockstep("audit", study, cwd=scratch)  # new content: the approval does not carry over
    assert {c["review_status"] for c in ledger(scratch, "demo")["claims"]} == {"pending_review"}


def test_a_reviewer_can_reject_and_the_claims_stay_pending(scratch):
    refused = lockstep("review", "preregistrations/demo", "--reject", "--reviewer", "rita", cwd=scratch, check=False)
    assert refused.returncode == 2 and "--reject needs --note" in refused.stderr
    assert lockstep("review", "preregistrations/demo", "--reviewer", "rita", cwd=scratch, check=False).returncode == 2
    lockstep("review", "preregistrations/demo", "--reject", "--reviewer", "rita", "--note", "H4 needs the contrast", cwd=scratch)
    entry = json.loads((scratch / "preregistrations/demo/JOURNAL.jsonl").read_text().splitlines()[-1])
    assert entry["details"]["decision"] == "reject" and entry["details"]["note"] == "H4 needs the contrast"
    lockstep("audit", "preregistrations/demo", cwd=scratch)
    assert {c["review_status"] for c in ledger(scratch, "demo")["claims"]} == {"pending_review"}
    page = (scratch / "reports/demo/report.html").read_text()
    assert "rita" in page and "reject" in page
    assert lockstep("verify", "preregistrations/demo", cwd=scratch, check=False).returncode == 0


def test_a_review_shows_in_the_report_without_a_new_audit(scratch):
    """The review redraws the page from the audit's outputs (no statistic recomputed), journals the new page's
    digest with the review, and verify stays intact; a review killed between its entry and moving the page
    into place is finished by the next review."""
    import shutil

    audits_before = [e for e in map(json.loads, (scratch / "preregistrations/demo/JOURNAL.jsonl").read_text().splitlines())
                     if e["stage"] == "audit"]
    ledger_before = (scratch / "reports/demo/ledger.json").read_bytes()
    lockstep("review", "preregistrations/demo", "--reject", "--reviewer", "quentin", "--note", "H2 rests on one run", cwd=scratch)
    page = (scratch / "reports/demo/report.html").read_text()
    assert "quentin" in page and "H2 rests on one run" in page
    assert (scratch / "reports/demo/ledger.json").read_bytes() == ledger_before  # the ledger is the audit's
    entries = [json.loads(line) for line in (scratch / "preregistrations/demo/JOURNAL.jsonl").read_text().splitlines()]
    assert [e for e in entries if e["stage"] == "audit"] == audits_before
    assert entries[-1]["outputs"] == {"reports/demo/report.html": sha256_file(scratch / "reports/demo/report.html")}
    assert lockstep("verify", "preregistrations/demo", cwd=scratch).returncode == 0
    # a report edited by hand after the review is an alteration
    copy = scratch.parent / "edited"
    shutil.copytree(scratch, copy, symlinks=True)
    report = copy / "reports/demo/report.html"
    report.write_text(report.read_text().replace("quentin", "someone else"))
    altered = lockstep("verify", "preregistrations/demo", cwd=copy, check=False)
    assert altered.returncode == 1 and "report.html differs" in altered.stdout
    # interrupted: the entry recorded the page's digest, the page is still beside it as .pending
    report = scratch / "reports/demo/report.html"
    pending = report.with_name("report.html.pending")
    os.replace(report, pending)
    shutil.copyfile(pending, report)
    report.write_text("an older page")
    said = lockstep("verify", "preregistrations/demo", cwd=scratch, check=False)
    assert said.returncode == 1 and "rerun `lockstep review`" in said.stdout
    lockstep("review", "preregistrations/demo", "--reject", "--reviewer", "quentin", "--note", "still", cwd=scratch)
    assert not pending.exists() and lockstep("verify", "preregistrations/demo", cwd=scratch).returncode == 0


def test_ablation_study_stops_at_weights_not_found(repo):
    copy_study("l31h14-ablation", repo)
    commit_all(repo)
    lockstep("prereg", "preregistrations/l31h14-ablation", cwd=repo)
    commit_all(repo, "freeze")  # capture refuses an uncommitted lock before it looks for weights
    result = lockstep("capture", "preregistrations/l31h14-ablation", cwd=repo, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


def test_e114_stops_at_weights_not_found(repo):
    copy_study("e114-register", repo)
    commit_all(repo)
    lockstep("prereg", "preregistrations/e114-register", cwd=repo)
    commit_all(repo, "freeze")  # capture refuses an uncommitted lock before it looks for weights
    result = lockstep("capture", "preregistrations/e114-register", cwd=repo, check=False)
    assert result.returncode == 3 and "capture not run: weights not found" in result.stderr and "Traceback" not in result.stderr


def test_a_ledger_shown_approved_without_a_signed_approval_fails_verify(scratch):
    from audit.chain import verify_approvals
    from audit.ledger import content_digest
    from lockstep.journal import append_entry
    from lockstep.lock import current_lock_digest
    from lockstep.verify import STEPS, exit_code_of, make_context, run_steps

    study = scratch / "preregistrations/demo"
    path = scratch / "reports/demo/ledger.json"
    data = json.loads(path.read_text())
    for item in data["claims"] + data["runs"]:
        item["review_status"] = "approved"  # the forger edits the ledger and appends an unsigned approval of it
    path.write_text(json.dumps(data))
    append_entry(study, "review", inputs={}, outputs={}, access_level="scores_seen", lock_digest=current_lock_digest(study),
                 details={"decision": "approve", "reviewer": "A. Reviewer", "note": "", "ledger_digest": content_digest(data)})
    results = run_steps(make_context(study), list(STEPS) + [verify_approvals])
    assert exit_code_of(results) == 1
    assert "shows claims as approved, but no signed approval" in results[-1].message and "is unsigned" in results[-1].message


# ---------------------------------------------------------------- the report agrees with the ledger (issue 14)


def _report_crossing_expected(repo: Path) -> set[str]:
    """Crossing read from the captured files by its definition: the frozen rubric's label is not the register
    the prompt's class was built to elicit (FIRE -> inner, NOFIRE -> outer); heldout prompts with a trimmed zone."""
    run = repo / "runs" / "demo" / "sampled"
    texts = pd.read_parquet(run / "texts.parquet", columns=["prompt_id", "class", "split", "n_trimmed"])
    labels = pd.read_parquet(run / "labels.parquet", columns=["prompt_id", "label"])
    prompts = texts.merge(labels, on="prompt_id")
    prompts = prompts[(prompts["split"] == "heldout") & (prompts["n_trimmed"] > 0)]
    return set(prompts.loc[(prompts["class"] == "FIRE") != (prompts["label"] == "inner"), "prompt_id"])


def test_crossing_is_one_definition_in_tables_ledger_and_report(planted):
    repo, _ = planted
    report = repo / "reports" / "demo"
    expected = _report_crossing_expected(repo)
    assert expected
    tv = pd.read_parquet(report / "tables" / "target_values.parquet")
    a1 = tv[tv["analysis_id"] == "A1"]
    assert set(a1.loc[a1["crosses"], "prompt_id"]) == expected
    numbers = {c["hypothesis"]: c["numbers"] for c in ledger(repo, "demo")["claims"]}
    assert set(numbers["H1"]["crossing_prompts"].split(", ")) == expected
    assert set(numbers["H4"]["crossing_prompts"].split(", ")) == expected  # register_vs_class: the same prompts
    cr = pd.read_parquet(report / "tables" / "class_register.parquet")
    assert set(cr["prompt_class"]) == {"FIRE", "NOFIRE"} and set(cr["register_label"]) == {"inner", "outer"}
    assert {(r.prompt_class, r.register_label) for r in cr[cr["crosses"]].itertuples()} == {("FIRE", "outer"), ("NOFIRE", "inner")}
    html = (report / "report.html").read_text()
    figure = html[html.index('<figure id="fig-strip-A1"'):]
    figure = figure[:figure.index("</figure>")]
    assert set(re.findall(r'id="fig-strip-A1-p0-cross-ring-([^"]+)"', figure)) == expected


def test_report_first_screen_and_ledger_md_read_the_study(planted):
    from audit.ledger import content_digest
    from audit.report import study_context
    from lockstep.gate import require_frozen

    repo, _ = planted
    report = repo / "reports" / "demo"
    manifest = json.loads((repo / "runs" / "demo" / "sampled" / "manifest.json").read_text())
    html = (report / "report.html").read_text()
    first = html[html.index('id="first-screen"'):html.index("</header>")]
    for fact in (manifest["model"]["id"], manifest["model"]["revision"], manifest["model"]["weights_sha256"],
                 "seed 1234", "rule <strong>X1</strong>", "<code>fire-03</code>", "captured once", 'id="evidence-level"',
                 "No reviewer has approved this ledger"):
        assert fact in first, fact
    frozen = require_frozen(repo / "preregistrations" / "demo")
    context = study_context(frozen, content_digest(ledger(repo, "demo")))
    assert [len(r["captures"]) for r in context.runs] == [len(frozen.journal.captures_of(r)) for r in ("sampled", "greedy")]
    assert {(x["run"], x["rule"], tuple(x["ids"])) for x in context.exclusions} == {("sampled", "X1", ("fire-03",))}
    text = (report / "ledger.md").read_text()
    assert "## Criteria and evidence standard, per claim" in text
    for claim in ledger(repo, "demo")["claims"]:
        assert f"### {claim['hypothesis']}: {claim['status']}" in text
        assert all(f"| `{c['name']}` |" in text for c in claim["criteria"])
        assert all(f"| {p['point']} | {p['name']} |" in text for p in claim["evidence_standard"])


def test_a_writeup_is_checked_against_the_ledger(planted, tmp_path):
    """A write-up drafted from the demo ledger traces; the same with one number altered is refused, naming it."""
    repo = planted[0]
    cited = lockstep("cite", "preregistrations/demo", "--claim", "H1", cwd=repo).stdout.strip()
    h1 = next(c for c in ledger(repo, "demo")["claims"] if c["hypothesis"] == "H1")
    mean_a, mean_b = h1["numbers"]["mean_a"], h1["numbers"]["mean_b"]
    text = f"{cited}\n\nFIRE {mean_a:.4f} vs NOFIRE {mean_b:.4f}: {mean_a:.4f} / {mean_b:.4f} = {mean_a / mean_b:.3f}.\n"
    good = tmp_path / "writeup.md"
    good.write_text(text)
    assert lockstep("check-writeup", "preregistrations/demo", good, cwd=repo).returncode == 0
    ratio = f"{h1['numbers']['ratio']:.4g}"
    bad = tmp_path / "altered.md"
    bad.write_text(text.replace(f"ratio {ratio}", "ratio 9.999"))
    result = lockstep("check-writeup", "preregistrations/demo", bad, "--json", cwd=repo, check=False)
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert out["study_id"] == "demo" and [u["number"] for u in out["untraceable"]] == ["9.999"]


def test_token_contexts_show_where_the_unit_carried_its_weight(planted):
    """The per-token top-k read back: the planted unit's heaviest FIRE tokens are the planted words, each
    shown in its text with the token marked, in the tables and on the page."""
    import yaml

    repo = planted[0]
    plant = set(yaml.safe_load((repo / "preregistrations/demo/study.yaml").read_text())["model"]["builtin"]["plant"]["tokens"])
    contexts = pd.read_parquet(repo / "reports/demo/tables/contexts.parquet")
    fire = contexts[(contexts["analysis_id"] == "A1") & (contexts["set"] == "FIRE")]
    assert len(fire) == 5 and set(fire["token"].str.strip()) <= plant and (fire["weight"] > 0).all()
    crossing = set(contexts.loc[(contexts["analysis_id"] == "A1") & (contexts["set"] == "crossing"), "prompt_id"])
    h1 = next(c for c in ledger(repo, "demo")["claims"] if c["hypothesis"] == "H1")
    listed = {p.strip() for p in h1["numbers"]["crossing_prompts"].split(",") if p.strip()}
    assert crossing <= listed  # a crossing prompt with no weight on the unit in the zone has no row
    page = (repo / "reports/demo/report.html").read_text()
    assert page.count("<mark>") == len(contexts) and 'id="sec-contexts"' in page


def test_audit_and_verify_speak_json_with_study_id_and_lock_digest_at_the_top(scratch):
    """`audit --json` and `verify --json` name what they are about first: the study and the lock in force."""
    lock_digest = json.loads((scratch / "preregistrations/demo/prereg.lock.json").read_text())["lock_digest"]
    audited = json.loads(lockstep("audit", "preregistrations/demo", "--json", cwd=scratch).stdout)
    written = ledger(scratch, "demo")
    assert (audited["study_id"], audited["lock_digest"]) == ("demo", lock_digest) == (written["study_id"], written["lock_digest"])
    assert {c["hypothesis"]: c["status"] for c in audited["claims"]} == status(scratch, "demo")
    assert [(r["run_id"], r["status"], r["review_status"]) for r in audited["runs"]] == \
        [(r["run_id"], r["status"], r["review_status"]) for r in written["runs"]]
    verified = json.loads(lockstep("verify", "preregistrations/demo", "--json", cwd=scratch).stdout)
    assert (verified["study_id"], verified["lock_digest"], verified["ok"]) == ("demo", lock_digest, True)
    (scratch / "preregistrations/demo/prereg.lock.json").unlink()  # no lock to read: the folder names it, no digest
    broken = lockstep("verify", "preregistrations/demo", "--json", cwd=scratch, check=False)
    assert broken.returncode == 1
    assert (json.loads(broken.stdout)["study_id"], json.loads(broken.stdout)["lock_digest"]) == ("demo", None)


def test_the_ledger_records_the_engine_that_ran_the_max_t_scan(planted):
    """The ledger's `engine` names what ran the all-unit baseline's scan, device included: numpy by default;
    with `inference.engine: torch`, "torch:cuda" or "torch:cpu" as the stats result names it; no decision moves."""
    import dataclasses

    import torch

    from audit.ledger import compute
    from lockstep.gate import require_frozen

    repo, _ = planted
    on_disk = ledger(repo, "demo")["claims"]
    scanned = [c["hypothesis"] for c in on_disk if "engine" in c["numbers"]]
    assert scanned and all(c["numbers"]["engine"] == "numpy" for c in on_disk if c["hypothesis"] in scanned)
    frozen = require_frozen(repo / "preregistrations" / "demo")
    spec = {**frozen.spec, "inference": {**frozen.spec["inference"], "engine": "torch"}}
    on_torch, _ = compute(dataclasses.replace(frozen, spec=spec))
    device = "torch:cuda" if torch.cuda.is_available() else "torch:cpu"
    assert {c["hypothesis"]: c["numbers"].get("engine") for c in on_torch["claims"] if c["hypothesis"] in scanned} == \
        dict.fromkeys(scanned, device)
    assert [(c["hypothesis"], c["status"], c["numbers"].get("target_rank")) for c in on_torch["claims"]] == \
        [(c["hypothesis"], c["status"], c["numbers"].get("target_rank")) for c in on_disk]
