"""The audit: run every preregistered analysis, decide each claim, and write the ledger, run cards,
tables and report to ``reports/<study>/``.

``compute_ledger`` is pure (same inputs, same ledger, except ``generated_utc``), so a reviewer's verify
can recompute it and compare with the one on disk.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lockstep import __version__, artifacts
from lockstep.fsio import atomic_write, canonical_json, pretty_json, sha256_bytes, sha256_file, utc_now
from lockstep.journal import append_entry
from lockstep.records import LEDGER as LEDGER_SCHEMA
from lockstep.records import check_record, read_record, write_record

from .analyses import Outcome, Settings, analysis_for
from .data import load_run, run_dir_of
from .verdicts import decide, evidence_standard

LEDGER = artifacts.LEDGER
VOLATILE = ("generated_utc",)


def reports_dir(frozen) -> Path:
    return artifacts.reports_dir(frozen.repo_root, frozen.study_id)


def read_ledger(path: Path) -> dict:
    """A ledger on disk, checked against schemas/ledger.schema.json."""
    return read_record(path, LEDGER_SCHEMA)


def _settings(frozen) -> Settings:
    inference = frozen.spec["inference"]
    perms = inference["permutations"]
    boot = inference.get("bootstrap", {})
    return Settings(alpha=frozen.thresholds[inference["alpha_threshold"]], n_resamples=perms["n_resamples"],
                    exact_cap=perms["exact_cap"], seed=perms["seed"], n_boot=boot.get("n_resamples", 1999))


def content_digest(ledger: dict) -> str:
    """sha256 of the ledger's content (no time, no review status): what a reviewer approves."""
    return sha256_bytes(canonical_json(comparable(ledger)))


def _approved_digests(frozen) -> set[str]:
    return {e["details"]["ledger_digest"] for e in frozen.journal.entries
            if e["stage"] == "review" and e.get("details", {}).get("decision") == "approve"}


def _set_review_status(frozen, ledger: dict) -> dict:
    """Claims are approved only when a named reviewer approved exactly this content."""
    state = "approved" if content_digest(ledger) in _approved_digests(frozen) else "pending_review"
    for item in ledger["claims"] + ledger["runs"]:
        item["review_status"] = state
    return ledger


def compute(frozen) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Run the analyses and decide every claim; return the ledger and the tables behind it."""
    cache: dict = {}

    def runs(run_id: str):
        if run_id not in cache:
            cache[run_id] = load_run(frozen, run_id)
        return cache[run_id]

    settings = _settings(frozen)
    outcomes: dict[str, Outcome] = {}
    for analysis in frozen.analyses:
        outcomes[analysis["id"]] = analysis_for(frozen.design, analysis["kind"])(frozen, analysis, runs, settings)
    claims = []
    for hypothesis in frozen.spec["hypotheses"]:
        analysis = frozen.analysis(hypothesis["analysis"])
        outcome = outcomes[analysis["id"]]
        verdict = decide(hypothesis, outcome, frozen.thresholds, frozen.design_record)
        claims.append({
            "hypothesis": hypothesis["id"], "claim": hypothesis["claim"], "kind": hypothesis["kind"],
            "analysis": analysis["id"], "status": verdict.status, "reason": verdict.reason,
            "review_status": "pending_review",
            "criteria": [c.to_dict() for c in verdict.criteria],
            "parameters": verdict.parameters,
            "evidence_standard": evidence_standard(hypothesis, analysis, outcome, outcomes, verdict, frozen),
            "numbers": _clean(outcome.numbers), "warnings": [w.message for w in outcome.warnings],
            "warning_codes": [w.code for w in outcome.warnings], "analysis_spec": dict(sorted(analysis.items())),
        })
    ledger = {
        "schema_version": artifacts.LEDGER_SCHEMA_VERSION, "study_id": frozen.study_id, "title": frozen.spec["title"], "design": frozen.design,
        "synthetic": bool(frozen.spec.get("synthetic", False)), "lock_digest": frozen.lock_digest,
        "generated_utc": utc_now(), "tool_version": __version__,
        "deviations": _deviations(cache), "amendments": _amendments(frozen),
        "runs": _run_cards(frozen, cache, claims),
        "claims": claims,
    }
    ledger = _set_review_status(frozen, _clean(ledger))
    check_record(LEDGER_SCHEMA, ledger, "ledger.json", hint="a lockstep bug: the audit built a ledger its schema refuses")
    tables: dict[str, pd.DataFrame] = {}
    for outcome in outcomes.values():
        for name, frame in outcome.tables.items():
            tables[name] = pd.concat([tables[name], frame], ignore_index=True) if name in tables else frame
    return ledger, tables


def _clean(value):
    """JSON-safe copy: NaN becomes null, ±inf the strings "inf"/"-inf", numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    return value


def _deviations(cache: dict) -> list[dict]:
    out = []
    for run_id, run in sorted(cache.items()):
        for deviation in run.manifest.get("deviations", []):
            detail = deviation if isinstance(deviation, str) else json.dumps(deviation, sort_keys=True)
            out.append({"kind": "runtime", "detail": f"run {run_id}: {detail}"})
    return out


def _amendments(frozen) -> list[dict]:
    return [{"id": a["amendment"]["id"], "seen": a["amendment"]["seen"], "post_hoc": a["amendment"]["seen"] == "scores_seen",
             "reason": a["amendment"]["reason"]} for a in frozen.amendments]


def _run_cards(frozen, cache: dict, claims: list[dict]) -> list[dict]:
    cards = []
    by_analysis = {a["id"]: a for a in frozen.analyses}
    for run_id, run in sorted(cache.items()):
        mine = [c for c in claims if c["kind"] == "confirmatory"
                and run_id in ([by_analysis[c["analysis"]].get("run")] + by_analysis[c["analysis"]].get("runs", []))]
        warnings = []
        for c in mine:
            if c["status"] != "held":
                warnings.append(f"{c['hypothesis']} {c['status']}: {c['reason']}")
        counts = run.manifest.get("counts", {})
        if counts.get("disagreements_outside_near_ties"):
            warnings.append(f"{counts['disagreements_outside_near_ties']} routing rows disagree with the reconstruction outside near-ties")
        if counts.get("near_ties"):
            warnings.append(f"{counts['near_ties']} routing rows are near-ties (k-th vs (k+1)-th score gap below tolerance)")
        spill = int(run.prompts["n_spill"].sum())
        if spill:
            warnings.append(f"{spill} generated tokens spilled past a trim token ({int((run.prompts['n_spill'] > 0).sum())} prompts); analyses of the trimmed zone leave them out, analyses of the generated zone do not")
        warnings += list(run.manifest.get("warnings", []))  # ablation runs: one line per preregistered exclusion that applied
        for deviation in run.manifest.get("deviations", []):
            warnings.append(f"runtime deviation: {deviation}")
        failed = [c for c in mine if c["status"] in ("fell", "not_established", "unsupported")]
        status = "fail" if failed else "pass_with_warnings" if warnings else "pass"
        cards.append({"run_id": run_id, "status": status, "warnings": warnings,
                      "claims": {c["hypothesis"]: c["status"] for c in mine}, "review_status": "pending_review"})
    return cards


def ledger_markdown(ledger: dict) -> str:
    lines = [f"# Evidence ledger: {ledger['title']}", ""]
    if ledger["synthetic"]:
        lines += ["> SYNTHETIC study on a built model: these results are about the toolkit, not a real model.", ""]
    lines += ["## Deviations and amendments", ""]
    items = [f"- deviation ({d['kind']}): {d['detail']}" for d in ledger["deviations"]]
    items += [f"- amendment {a['id']} ({'POST HOC, ' if a['post_hoc'] else ''}made with {a['seen']}): {a['reason']}" for a in ledger["amendments"]]
    lines += (items or ["- none"]) + ["", "## Claims", "", "| Finding | Status | Why |", "|---|---|---|"]
    for c in ledger["claims"]:
        why = c["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['hypothesis']} ({c['kind']}): {c['claim'].replace('|', '/')} | {c['status']} | {why} |")
    lines += ["", "## Runs", ""]
    for r in ledger["runs"]:
        lines.append(f"- {r['run_id']}: **{r['status']}**, claim review {r['review_status']}")
        lines += [f"  - warning: {w}" for w in r["warnings"]]
    return "\n".join(lines) + "\n"


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def write_reports(frozen, ledger: dict, tables: dict[str, pd.DataFrame]) -> Path:
    out = reports_dir(frozen)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, frame in sorted(tables.items()):
        atomic_write(out / "tables" / f"{name}.parquet", _parquet_bytes(frame))
        atomic_write(out / "tables" / f"{name}.csv", frame.to_csv(index=False).encode())
    for card in ledger["runs"]:
        atomic_write(out / f"run_card_{card['run_id']}.json", pretty_json(card | {"study_id": ledger["study_id"], "lock_digest": ledger["lock_digest"]}))
    atomic_write(out / "ledger.md", ledger_markdown(ledger).encode())
    write_record(out / LEDGER, LEDGER_SCHEMA, ledger)
    from .report import render_report
    render_report(out)
    return out


def run_audit(frozen) -> Path:
    """Compute, write, and record the audit (journal: ``scores_seen``)."""
    started = utc_now()
    ledger, tables = compute(frozen)
    out = write_reports(frozen, ledger, tables)
    root = Path(frozen.repo_root)
    outputs = {artifacts.repo_relative(p, root): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
    inputs = {}
    record = frozen.design_record
    for run in frozen.spec["runtime"]["runs"]:
        run_dir = run_dir_of(frozen, run["id"])
        for name in record.run_tables + record.optional_tables:
            if (run_dir / name).exists():
                inputs[artifacts.repo_relative(run_dir / name, root)] = sha256_file(run_dir / name)
    append_entry(frozen.root, "audit", inputs=inputs, outputs=outputs, access_level="scores_seen", started_utc=started,
                 lock_digest=frozen.lock_digest,
                 details={"claims": {c["hypothesis"]: c["status"] for c in ledger["claims"]},
                          "runs": {r["run_id"]: r["status"] for r in ledger["runs"]}})
    return out


def comparable(ledger: dict) -> dict:
    """The ledger without what changes from one computation to the next (time, later review sign-off)."""
    out = {k: v for k, v in ledger.items() if k not in VOLATILE}
    out["claims"] = [{k: v for k, v in c.items() if k != "review_status"} for c in ledger["claims"]]
    out["runs"] = [{k: v for k, v in r.items() if k != "review_status"} for r in ledger["runs"]]
    return json.loads(json.dumps(out, sort_keys=True))
