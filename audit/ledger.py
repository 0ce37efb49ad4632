"""The audit: run every preregistered analysis, decide each claim, and write the ledger, run cards,
tables and report to ``reports/<study>/``.

``compute_ledger`` is pure (same inputs, same ledger, except ``generated_utc``), so a reviewer's verify
can recompute it and compare with the one on disk.
"""

from __future__ import annotations

import io
from dataclasses import replace
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import stats
from lockstep import __version__, artifacts, variants, witness
from lockstep.fsio import atomic_write, canonical_json, pretty_json, sha256_bytes, sha256_file, utc_now
from lockstep.journal import append_entry
from lockstep.records import LEDGER as LEDGER_SCHEMA
from lockstep.records import check_record, read_record, write_record

from .analyses import Outcome, Settings, analysis_for
from .data import load_run, run_dir_of
from .label import annotate_run_cards, hold_on_agreement, low_agreement, run_agreements
from .designs import audit_design
from .verdicts import cap_by_evidence, decide, evidence_standard

LEDGER = artifacts.LEDGER
VOLATILE = ("generated_utc", "evidence")  # evidence: witnesses can be added after the audit (lockstep.witness)


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
                    exact_cap=perms["exact_cap"], seed=perms["seed"], n_boot=boot.get("n_resamples", 1999),
                    engine=inference.get("engine", "numpy"))


def content_digest(ledger: dict) -> str:
    """sha256 of the ledger's content (no time, no review status): what a reviewer approves."""
    return sha256_bytes(canonical_json(comparable(ledger)))


def _approved_digests(frozen) -> set[str]:
    """Ledger contents approved by a review signed by the reviewer it names (an allowed signer)."""
    return witness.approved_ledger_digests(frozen.root, frozen.journal, frozen.repo_root)


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
        # variants are kept apart unless compared: runs captured on different model identities are not pooled
        refused = variants.pooling_refusal(analysis, {r: runs(r).manifest for r in analysis.get("runs", [])})
        if refused:
            outcomes[analysis["id"]] = Outcome(analysis["id"], analysis["kind"], not_established=refused)
            continue
        with stats.use_backend(settings.engine):  # the max-T scan's backend; the ledger records what ran
            outcomes[analysis["id"]] = analysis_for(frozen.design, analysis["kind"])(frozen, analysis, runs, settings)
    agreements = run_agreements(frozen, cache)  # rubric human_arm: human vs lexicon kappa per run (audit/label.py)
    claims = []
    for hypothesis in frozen.spec["hypotheses"]:
        analysis = frozen.analysis(hypothesis["analysis"])
        outcome = outcomes[analysis["id"]]
        fell_back = None
        undecidable = outcome.not_established or low_agreement(analysis, agreements)
        if undecidable and analysis.get("fallback"):  # the preregistered fallback decides
            fell_back = (analysis["id"], undecidable)
            analysis = frozen.analysis(analysis["fallback"])
            outcome = outcomes[analysis["id"]]
        verdict = decide(hypothesis, outcome, frozen.thresholds, frozen.design_record)
        if fell_back:
            verdict = replace(verdict, reason=f"{fell_back[0]} was not established ({fell_back[1]}), so its preregistered "
                                              f"fallback {analysis['id']} decides: {verdict.reason}")
        points = evidence_standard(hypothesis, analysis, outcome, outcomes, verdict, frozen)
        verdict = cap_by_evidence(verdict, points)
        claims.append({
            "hypothesis": hypothesis["id"], "claim": hypothesis["claim"], "kind": hypothesis["kind"],
            "analysis": analysis["id"], "status": verdict.status, "reason": verdict.reason,
            "review_status": "pending_review",
            "criteria": [c.to_dict() for c in verdict.criteria],
            "parameters": verdict.parameters,
            "evidence_standard": points,
            "numbers": _clean(outcome.numbers), "warnings": [w.message for w in outcome.warnings],
            "warning_codes": [w.code for w in outcome.warnings], "analysis_spec": dict(sorted(analysis.items())),
        })
    claims = [hold_on_agreement(c, frozen.analysis(c["analysis"]), agreements) for c in claims]
    ledger = {
        "schema_version": artifacts.LEDGER_SCHEMA_VERSION, "study_id": frozen.study_id, "title": frozen.spec["title"], "design": frozen.design,
        "synthetic": bool(frozen.spec.get("synthetic", False)), "lock_digest": frozen.lock_digest,
        "generated_utc": utc_now(), "tool_version": __version__,
        "deviations": _deviations(cache) + witness.uncommitted_lock_deviations(frozen.journal), "amendments": _amendments(frozen),
        "runs": _run_cards(frozen, cache, claims),
        "claims": claims,
    }
    if frozen.spec.get("discovery_source"):
        ledger["discovery"] = _discovery(frozen)
    annotate_run_cards(ledger["runs"], agreements)
    ledger = _set_review_status(frozen, _clean(ledger))
    ledger["evidence"] = _evidence(frozen)
    check_record(LEDGER_SCHEMA, ledger, "ledger.json", hint="a lockstep bug: the audit built a ledger its schema refuses")
    tables: dict[str, pd.DataFrame] = {}
    for outcome in outcomes.values():
        for name, frame in outcome.tables.items():
            tables[name] = pd.concat([tables[name], frame], ignore_index=True) if name in tables else frame
    return ledger, tables


def _discovery(frozen) -> dict:
    """The discovery run a proposed study came from, checked again (:func:`lockstep.propose.check_discovery_source`):
    the ledger names it, and the audit refuses a study whose discovery no longer checks out."""
    from lockstep.propose import check_discovery_source

    source = frozen.spec["discovery_source"]
    check = check_discovery_source(frozen.repo_root, frozen.spec, frozen.prompts,
                                   frozen_at=frozen.journal.entries[0]["finished_utc"])
    out = {**{k: source[k] for k in ("study", "study_id", "journal_seq", "entry_sha256", "record_sha256")},
           "probe": source.get("probe"), "ranked": list(source.get("ranked", [])), "check": check,
           "note": "discovery is exploratory: it chose the targets; no number of it enters a verdict"}
    return out | _discovery_tables(frozen, source)


def _discovery_tables(frozen, source: dict, top: int = 8) -> dict:
    """The discovery's best candidates (and, for a routing scan, the proposed unit's heaviest tokens), read
    from the tables its discover entry recorded, each checked against the entry's digest; a note instead
    when they are not on this machine (runs/ is not in git)."""
    from lockstep.journal import read_journal

    base = Path(frozen.repo_root)
    entry = read_journal(base / source["study"]).entries[source["journal_seq"]]
    found = {}
    for name in ("candidates.parquet", "contexts.parquet"):
        rel = next((p for p in entry["outputs"] if "/_discovery/" in p and p.endswith("/" + name)), None)
        if rel is None:
            continue
        path = artifacts.from_journal(base, rel)
        if not path.is_file() or sha256_file(path) != entry["outputs"][rel]:
            return {"tables_note": f"{rel} is not on this machine as its discover entry recorded it; the ranking is "
                                   "the study.yaml's discovery_source.ranked"}
        found[name] = pd.read_parquet(path)
    candidates = found.get("candidates.parquet")
    if candidates is None:
        return {}
    if "probe" in candidates.columns:  # an ablation discovery: the probe the study was proposed from
        rows = candidates[candidates["probe"] == "head_attribution"].sort_values("rank").head(top)
        cols = {"unit": "unit", "rank": "rank", "mean": "score", "top_k_frequency": "top_k_frequency", "exact_mean": "exact"}
        names = {"score_name": "mean attribution drop", "second_name": "share of pairs with it in their top k"}
    elif "W_diff" in candidates.columns:  # a routing scan with a contrast: by the difference of pooled W
        rows = candidates.sort_values(["W_diff", "unit"], ascending=[False, True]).head(top)
        rows = rows.assign(rank=range(1, len(rows) + 1))
        cols = {"unit": "unit", "rank": "rank", "W_diff": "score", "W": "top_k_frequency"}
        names = {"score_name": "pooled W, a minus b", "second_name": "pooled W"}
    else:  # a routing scan: the best of each layer, by pooled W
        rows = candidates.sort_values(["rank_in_layer", "W"], ascending=[True, False]).head(top)
        cols = {"unit": "unit", "rank_in_layer": "rank", "W": "score", "S": "top_k_frequency"}
        names = {"score_name": "pooled W (rank: in its layer)", "second_name": "pooled S"}
    table = [{new: (v.item() if hasattr(v, "item") else v) for old, new in cols.items() for v in [row[old]]}
             for _, row in rows.iterrows()]
    out = {"candidates": _clean(table), **names}
    contexts = found.get("contexts.parquet")
    if contexts is not None and len(contexts) and source.get("ranked"):
        mine = contexts[contexts["unit"] == source["ranked"][0]]
        out["contexts"] = [{"prompt_id": r.prompt_id, "zone": r.zone, "weight": float(r.weight), "before": r.before,
                            "token": r.token, "after": r.after} for r in mine.itertuples()]
    return out


def _evidence(frozen) -> dict:
    """The ordering evidence of the stages before this audit (the report shows it first)."""
    evidence = witness.assess(frozen.root, frozen.journal, {"lock_digest": frozen.base_lock_digest},
                              list(frozen.amendments), frozen.repo_root)
    return {"level": evidence.level, "detail": evidence.detail()}


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
            if isinstance(deviation, dict) and "field" in deviation:  # {field, preregistered, actual}: a table row
                out.append({"kind": "runtime", "run": run_id, "field": deviation["field"],
                            "preregistered": deviation.get("preregistered"), "actual": deviation.get("actual"),
                            "detail": f"run {run_id}: {deviation['field']}: preregistered {deviation.get('preregistered')!r}, "
                                      f"actual {deviation.get('actual')!r}",
                            **({"reason": deviation["reason"]} if deviation.get("reason") else {})})
                continue
            detail = deviation if isinstance(deviation, str) else json.dumps(deviation, sort_keys=True)
            out.append({"kind": "runtime", "run": run_id, "detail": f"run {run_id}: {detail}"})
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
        excluded = audit_design(frozen.design).exclusions(frozen, run)
        noted = " ".join(warnings)
        for x in excluded:  # counted per run, rule and class (a capture-time exclusion is already in the manifest's lines)
            if f"{x['rule']} " not in noted and f"{x['rule']}:" not in noted:
                classes = ", ".join(f"{c} {n}" for c, n in x.get("by_class", {}).items())
                warnings.append(f"{x['rule']}: {len(x['ids'])} {'flagged, kept' if x.get('action') == 'flag' else 'excluded'}"
                                f"{f' ({classes})' if classes else ''}: {', '.join(x['ids'])}")
        failed = [c for c in mine if c["status"] in ("fell", "not_established", "unsupported")]
        status = "fail" if failed else "pass_with_warnings" if warnings else "pass"
        cards.append({"run_id": run_id, "status": status, "warnings": warnings,
                      "claims": {c["hypothesis"]: c["status"] for c in mine}, "review_status": "pending_review",
                      "exclusions": excluded})
    return cards


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_num(value) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def ledger_markdown(ledger: dict) -> str:
    lines = [f"# Evidence ledger: {ledger['title']}", ""]
    if "evidence" in ledger:
        lines += [f"Ordering evidence: **{ledger['evidence']['level']}** ({ledger['evidence']['detail']})", ""]
    if ledger["synthetic"]:
        lines += ["> SYNTHETIC study on a built model: these results are about the toolkit, not a real model.", ""]
    lines += ["## Deviations and amendments", ""]
    items = [f"- deviation ({d['kind']}): {d['detail']}" for d in ledger["deviations"]]
    items += [f"- amendment {a['id']} ({'POST HOC, ' if a['post_hoc'] else ''}made with {a['seen']}): {a['reason']}" for a in ledger["amendments"]]
    lines += (items or ["- none"]) + ["", "## Claims", "", "| Finding | Status | Why |", "|---|---|---|"]
    for c in ledger["claims"]:
        why = c["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c['hypothesis']} ({c['kind']}): {c['claim'].replace('|', '/')} | {c['status']} | {why} |")
    lines += ["", "## Criteria and evidence standard, per claim"]
    for c in ledger["claims"]:
        lines += ["", f"### {c['hypothesis']}: {c['status']}", "", f"> {c['claim']}", "",
                  "| Criterion | Threshold | Observed | Result | Rule |", "|---|---|---|---|---|"]
        lines += [f"| `{k['name']}` | {_md_num(k['threshold'])} | {_md_num(k['observed'])} | "
                  f"{'met' if k['passed'] else 'not met'} | {_md_cell(k['text'])} |" for k in c["criteria"]] or ["| none | | | | |"]
        lines += ["", "| # | Evidence standard | Status | Fact |", "|---|---|---|---|"]
        lines += [f"| {p['point']} | {p['name']} | {'met' if p['met'] is True else 'unmet' if p['met'] is False else 'not applicable'}"
                  f"{' (caps at ' + p['caps'] + ')' if p.get('caps') and p['met'] is False else ''} | {_md_cell(p['fact'])} |"
                  for p in sorted(c["evidence_standard"], key=lambda p: p["point"])]
    lines += ["", "## Runs", ""]
    for r in ledger["runs"]:
        lines.append(f"- {r['run_id']}: **{r['status']}**, claim review {r['review_status']}")
        if "labelling" in r:  # rubric human_arm (audit/label.py)
            a = r["labelling"]
            lines.append(f"  - labels: human vs lexicon Cohen's kappa {_md_num(a['kappa'])} (minimum {a['min_kappa']:g}), raw agreement "
                         f"{a['raw_agreement']:.3f}, n {a['n']}, labeller of record {a['labeller_of_record']}: "
                         f"{'met' if a['passed'] else 'FLAGGED'}")
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
    from .report import render_report, study_context
    render_report(out, study_context(frozen, content_digest(ledger)))
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
