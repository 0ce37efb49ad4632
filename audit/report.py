"""The audit's single self-contained HTML report, rendered from jinja2 templates with autoescaping.

:func:`render_report` reads what the audit engine wrote into a report folder (``ledger.json`` and the
Parquet tables under ``tables/``) and, when given one, a :class:`ReportContext` built from the study by
:func:`study_context` (model, runtime and seeds from the frozen plan and the run manifests; captures,
exclusions and reviewers' approvals from the journal and the runs). It writes ``report.html`` beside
them, atomically. The page works opened from disk with no network: CSS is inline, figures are inline
SVG, there is no script and no external URL, and a Content-Security-Policy forbids fetching anything.
The templates (``audit/templates/``) escape every value; nothing from the study reaches the page as
markup except the SVG that :mod:`audit._plots` draws (matplotlib escapes its text).

Every number in the data sections is the ledger's or its tables', never recomputed here: a caption's
p-value is the ledger's, a summary table is the audit's own table. Crossing prompts are the ones the
audit marked (``crosses``, :func:`stats.crosses`).

Section order is part of the contract: header (with a SYNTHETIC banner when the study is synthetic)
and the reviewer's first screen (model, revision and weight digest, runtime and seeds, exclusions,
captures, verification and evidence level, approvals), then deviations and post-hoc amendments, the
evidence status ledger, run cards, per-claim detail, then the figures the study's design has (an
analysis kind of the design record produces them): all-unit baseline heatmap, FIRE/NOFIRE strips, null
distribution, class x register table, W/S/Q bars, ablation drops. A figure section whose table was
not written says so ("Not available for this study").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from audit import _plots as plots
from lockstep.designs import design_of
from lockstep.errors import Problem, SchemaError, UsageError
from lockstep.fsio import atomic_write
from lockstep.records import LEDGER as LEDGER_SCHEMA
from lockstep.records import record_problems

__all__ = ["REPORT_NAME", "SECTIONS", "TABLE_COLUMNS", "ReportContext", "render_report", "study_context"]

REPORT_NAME = "report.html"
TEMPLATES = Path(__file__).with_name("templates")

CLAIM_STATUSES = ("held", "partly_held", "fell", "unsupported", "not_established")

#: Columns each table must have (extra columns are read when present).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "target_values": ("analysis_id", "unit", "run", "zone", "metric", "prompt_id", "prompt_class",
                      "register_label", "value", "crosses"),
    "baseline": ("analysis_id", "unit", "layer", "index", "statistic", "p_uncorrected", "p_fwer", "rank",
                 "is_target"),
    "null_distribution": ("analysis_id", "value"),
    "contexts": ("analysis_id", "unit", "run", "set", "prompt_id", "position", "weight", "before", "token", "after"),
    "class_register": ("analysis_id", "prompt_class", "register_label", "n", "mean", "sd"),
    "wsq": ("analysis_id", "unit", "group", "W", "S", "Q"),
    "ablation_pairs": ("analysis_id", "pair_id", "pair_class", "baseline_margin", "ablated_margin", "drop"),
    "ablation_summary": ("analysis_id", "quantity", "estimate", "ci_low", "ci_high"),
    "source_trace": ("analysis_id", "target", "metric", "layer", "position", "n_pairs", "mean", "ci_low", "ci_high",
                     "is_claim_cell"),
    "basin_layers": ("analysis_id", "layer", "jaccard", "n_tokens", "top_k"),
    "sae_features": ("analysis_id", "feature", "active_pairs", "mean_drop", "mean_activation", "p_value", "p_adjusted",
                     "is_claimed"),
}


@dataclass(frozen=True)
class Section:
    """A figure section: its id, title, the table it draws, and the analysis kinds that write that table.
    A study's page has the section when its design record lists one of those kinds (``only_when_used``: and a
    claim of the study is decided by one: a comparison most routing studies never make)."""

    id: str
    title: str
    table: str
    kinds: tuple[str, ...]
    only_when_used: bool = False


SECTIONS: tuple[Section, ...] = (
    Section("sec-heatmap", "All-unit baseline", "baseline", ("all_unit_baseline",)),
    Section("sec-strip", "Target values by prompt class", "target_values", ("two_group", "reproduction")),
    Section("sec-null", "Null distribution", "null_distribution",
            ("two_group", "all_unit_baseline", "ablation_drop", "specificity")),
    Section("sec-class-register", "Prompt class × generated register", "class_register", ("register_vs_class",)),
    Section("sec-wsq", "W / S / Q", "wsq", ("wsq_decomposition",)),
    Section("sec-contexts", "Token contexts of the target", "contexts", ("two_group",)),
    Section("sec-ablation", "Ablation: margin drop per pair", "ablation_pairs", ("ablation_drop", "specificity")),
    Section("sec-source", "Source tracing: where the signal enters", "source_trace", ("source_trace",), only_when_used=True),
    Section("sec-basin", "Routing-basin comparison", "basin_layers", ("basin_comparison",), only_when_used=True),
)

_TOP_UNITS = 10
_EVIDENCE_LEVELS = ("self-attested", "signed", "timestamped")


# ============================================================================================
# What the study adds to the ledger: the reviewer's first screen


@dataclass(frozen=True)
class ReportContext:
    """What a reviewer wants on the first screen that the ledger does not hold, read from the study.

    Attributes
    ----------
    model : dict
        ``id``, ``revision``, ``dtype``, ``source`` as preregistered.
    runtime : dict
        The frozen runtime settings shown (chat template, thinking, max new tokens, batch size, trim tokens).
    runs : tuple of dict
        Per run: ``run_id``, ``decoding`` (text), ``seed`` (or None), ``weights_sha256``,
        ``tokenizer_sha256``, ``captures`` (UTC times of the journal's capture entries, oldest first).
    inference_seed : int or None
        The permutation seed of the analyses.
    exclusions : tuple of dict
        ``run``, ``rule``, ``description``, ``ids``: what each run's analyses left out, by rule.
    reviews : tuple of dict
        The journal's review entries: ``reviewer``, ``decision``, ``utc``, ``note``, ``covers_this_ledger``.
    verify : str
        What was verified when the report was drawn (the gate's check of the freeze).
    """

    model: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    runs: tuple[dict[str, Any], ...] = ()
    inference_seed: int | None = None
    exclusions: tuple[dict[str, Any], ...] = ()
    reviews: tuple[dict[str, Any], ...] = ()
    verify: str = ""


def _decoding_text(run: Mapping[str, Any]) -> str:
    if run.get("decoding") == "greedy":
        return "greedy"
    if run.get("decoding") == "sample":
        parts = [f"{k} {run[k]}" for k in ("temperature", "top_p", "top_k") if k in run]
        return "sampled" + (f" ({', '.join(parts)})" if parts else "")
    if run.get("decoding") in (None, "none"):
        return "forward passes only (nothing generated)"
    if run.get("decoding") == "teacher_forced":
        return f"teacher-forced re-reading of run {run.get('source_run')}, variant {run.get('variant') or 'base'}"
    return str(run["decoding"])


def study_context(frozen, ledger_digest: str) -> ReportContext:
    """The :class:`ReportContext` of an audited study: the frozen plan, each run's manifest and the journal.

    ``ledger_digest`` is the content digest of the ledger drawn (:func:`audit.ledger.content_digest`), so
    that an approval is shown as covering this ledger or an earlier one. Called by the audit after it
    wrote the ledger (and by anyone re-drawing the report, e.g. after a review).
    """
    from audit.data import load_run
    from audit.designs import audit_design

    spec = frozen.spec
    module = audit_design(frozen.design)
    runs, exclusions = [], []
    for run in spec["runtime"]["runs"]:
        run_id = run["id"]
        captures = frozen.journal.captures_of(run_id)
        if not captures:
            continue
        data = load_run(frozen, run_id)
        model = data.manifest.get("model", {})
        runs.append({"run_id": run_id, "decoding": _decoding_text(run), "seed": run.get("seed"),
                     "weights_sha256": model.get("weights_sha256"), "tokenizer_sha256": model.get("tokenizer_sha256"),
                     "captures": tuple(e.get("finished_utc", "") for e in captures)})
        exclusions += [{"run": run_id, **x} for x in module.exclusions(frozen, data)]
    reviews = tuple({"reviewer": e["details"].get("reviewer", ""), "decision": e["details"].get("decision", ""),
                     "utc": e.get("finished_utc", ""), "note": e["details"].get("note", ""),
                     "covers_this_ledger": e["details"].get("ledger_digest") == ledger_digest}
                    for e in frozen.journal.entries if e["stage"] == "review")
    runtime = spec.get("runtime", {})
    shown = {k: runtime[k] for k in ("chat_template", "enable_thinking", "max_new_tokens", "batch_size", "trim_tokens")
             if k in runtime}
    model = spec.get("model", {})
    return ReportContext(
        model={k: model.get(k) for k in ("id", "revision", "dtype", "source")},
        runtime=shown, runs=tuple(runs), inference_seed=spec.get("inference", {}).get("permutations", {}).get("seed"),
        exclusions=tuple(exclusions), reviews=reviews,
        verify=(f"the freeze verified against lock {frozen.lock_digest[:12]}… before the audit read any run "
                "(the gate); the journal shows each run captured"
                + (", then its labels frozen, before any score was read" if frozen.design_record.needs_labels
                   else " with the digests its tables have")))


# ============================================================================================
# Public entry point


def render_report(report_dir: Path, context: ReportContext | None = None) -> Path:
    """Render ``report_dir/report.html`` from the audit outputs in ``report_dir``.

    Parameters
    ----------
    report_dir : pathlib.Path
        A report folder as ``lockstep audit`` writes it: ``ledger.json`` and, optionally, the tables
        ``tables/<name>.parquet`` of :data:`TABLE_COLUMNS`.
    context : ReportContext, optional
        The study's first-screen facts (:func:`study_context`); without it the first screen shows what
        the ledger holds and says that the rest was not given.

    Returns
    -------
    pathlib.Path
        The path of the written report.

    Raises
    ------
    UsageError
        ``report_dir`` or its ``ledger.json`` does not exist.
    SchemaError
        ``ledger.json`` or a table present does not match the contract; every problem is listed.

    Notes
    -----
    The file is written to a temporary file in ``report_dir`` and renamed over ``report.html``,
    so a reader never sees half a report. The same inputs give the same bytes.
    """
    out = Path(report_dir) / REPORT_NAME
    atomic_write(out, draw_report(report_dir, context))
    return out


def draw_report(report_dir: Path, context: ReportContext | None = None) -> bytes:
    """The bytes :func:`render_report` writes (``lockstep review`` draws the page before it journals its digest)."""
    inputs = _load_inputs(Path(report_dir))
    return _environment().get_template("report.html.j2").render(page=_Page(inputs, context).build()).encode("utf-8")


# ============================================================================================
# Inputs


@dataclass(frozen=True)
class _Inputs:
    ledger: dict[str, Any]
    tables: dict[str, pd.DataFrame | None]
    reasons: dict[str, str] = field(default_factory=dict)  # why a table is None


def _load_inputs(report_dir: Path) -> _Inputs:
    if not report_dir.is_dir():
        raise UsageError(f"report folder {report_dir} does not exist",
                         hint="run `lockstep audit STUDY` first; it writes reports/<study_id>/")
    ledger_path = report_dir / "ledger.json"
    if not ledger_path.is_file():
        raise UsageError(f"{ledger_path} does not exist",
                         hint="run `lockstep audit STUDY` first; it writes the ledger the report is drawn from")
    try:
        ledger = json.loads(ledger_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError([Problem("ledger.json", "", f"is not valid JSON: {exc.msg}", exc.lineno)],
                          hint="rerun `lockstep audit STUDY`; the ledger is written by the audit, never by hand") from exc
    problems = record_problems(LEDGER_SCHEMA, ledger, "ledger.json")
    tables: dict[str, pd.DataFrame | None] = {}
    reasons: dict[str, str] = {}
    for name, columns in TABLE_COLUMNS.items():
        path = report_dir / "tables" / f"{name}.parquet"
        rel = f"tables/{name}.parquet"
        if not path.is_file():
            tables[name], reasons[name] = None, f"{rel} was not written"
            continue
        frame = pd.read_parquet(path)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            problems.append(Problem(rel, "", f"is missing column(s) {', '.join(missing)}"))
            continue
        if frame.empty:
            tables[name], reasons[name] = None, f"{rel} has no rows"
            continue
        frame = frame.copy()
        frame["analysis_id"] = frame["analysis_id"].astype(str)
        for flag in ("crosses", "is_target"):  # a missing flag is False, never NaN-read-as-True
            if flag in frame.columns:
                frame[flag] = frame[flag].astype("boolean").fillna(False).astype(bool)
        tables[name] = frame
    if problems:
        raise SchemaError(problems, hint="the report reads what `lockstep audit` writes; rerun `lockstep audit STUDY` with this tool version")
    return _Inputs(ledger=ledger, tables=tables, reasons=reasons)


# ============================================================================================
# Formatting (template filters)


def num(value: Any) -> str:
    """A number as a reader wants it: 4 significant digits, integers with thousands separators."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v.is_integer() and abs(v) < 1e9:
            return f"{int(v):,}"
        return f"{v:.4g}"
    if isinstance(value, str) and value in ("inf", "-inf"):
        return "∞" if value == "inf" else "−∞"
    return str(value)


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _analyses(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["analysis_id"].unique().tolist(), key=_natural_key)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["num"] = num
    env.filters["slug"] = plots.slug
    env.globals["css"] = Markup((TEMPLATES / "report.css").read_text(encoding="utf-8"))
    return env


def _value_text(value: Any) -> str:
    """A preregistered or actual value of a deviation as a short text (never a raw dict)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value)
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_value_text(v)}" for k, v in sorted(value.items()))
    return num(value) if isinstance(value, (int, float)) else str(value)


# ============================================================================================
# The page: a plain view of the ledger, its tables and the context, for the templates


class _Page:
    def __init__(self, inputs: _Inputs, context: ReportContext | None):
        self.ledger = inputs.ledger
        self.tables = inputs.tables
        self.reasons = inputs.reasons
        self.context = context
        self.design = design_of(self.ledger["design"])
        self.claims: list[dict[str, Any]] = list(self.ledger.get("claims", []))
        self.figure_count = 0
        self.figures_by_analysis: dict[str, list[tuple[str, str]]] = {}

    # ---------------------------------------------------------------- helpers

    def _claims_for(self, analysis: str) -> list[dict[str, Any]]:
        return [c for c in self.claims if str(c.get("analysis")) == analysis]

    def _numbers(self, analysis: str) -> dict[str, Any]:
        for claim in self._claims_for(analysis):
            if claim.get("numbers"):
                return claim["numbers"]
        return {}

    def _spec(self, analysis: str) -> dict[str, Any]:
        for claim in self._claims_for(analysis):
            if claim.get("analysis_spec"):
                return claim["analysis_spec"]
        return {}

    def _refs(self, analysis: str) -> list[dict[str, str]]:
        return [{"hypothesis": c["hypothesis"], "status": c["status"]} for c in self._claims_for(analysis)]

    def _figure(self, kind: str, analysis: str, label: str, **fields: Any) -> dict[str, Any]:
        self.figure_count += 1
        fid = f"fig-{kind}-{plots.slug(analysis)}"
        analyses = fields.pop("analyses", [analysis])
        for a in analyses:
            self.figures_by_analysis.setdefault(a, []).append((fid, label))
        refs = [r for a in analyses for r in self._refs(a)]
        return {"id": fid, "kind": kind, "number": self.figure_count, "analysis": analysis, "analyses": analyses,
                "refs": refs, **fields}

    @staticmethod
    def _svg(svg: str, fid: str) -> Markup:
        return Markup(svg.replace('role="img"', f'role="img" aria-labelledby="{fid}-caption"', 1))

    # ---------------------------------------------------------------- whole page

    def build(self) -> dict[str, Any]:
        led = self.ledger
        used = {str((c.get("analysis_spec") or {}).get("kind")) for c in self.claims}
        sections = [self._section(s) for s in SECTIONS if set(s.kinds) & set(self.design.analysis_kinds)
                    and (not s.only_when_used or set(s.kinds) & used)]
        counts = [(s, sum(1 for c in self.claims if c["status"] == s)) for s in CLAIM_STATUSES]
        level = led.get("evidence") or led.get("evidence_level") or "self-attested"
        level_detail = ""
        if isinstance(level, Mapping):
            level_detail = str(level.get("detail", "") or level.get("why", ""))
            level = level.get("level", "self-attested")
        return {
            "title": led["title"], "study_id": led["study_id"], "design": led["design"], "synthetic": led["synthetic"],
            "lock_digest": led["lock_digest"], "generated_utc": led["generated_utc"], "tool_version": led["tool_version"],
            "unit_kind": self.design.unit_kind,
            "evidence_level": str(level), "evidence_level_detail": level_detail,
            "evidence_level_known": str(level) in _EVIDENCE_LEVELS,
            "discovery": led.get("discovery"),
            "first": self._first_screen(),
            "claim_counts": [(s, n) for s, n in counts if n],
            "n_claims": len(self.claims),
            "pending": sum(1 for c in self.claims if c["review_status"] == "pending_review"),
            "runs": self._runs(),
            "deviations": self._deviations(),
            "amendments": led.get("amendments", []),
            "post_hoc": sum(1 for a in led.get("amendments", []) if a.get("post_hoc")),
            "sections": sections,
            "matrix": self._evidence_matrix(),
            "claims": [self._claim(c) for c in self.claims],
        }

    # ---------------------------------------------------------------- first screen

    def _first_screen(self) -> dict[str, Any]:
        ctx = self.context
        if ctx is None:
            return {"given": False}
        digests = sorted({r["weights_sha256"] for r in ctx.runs if r.get("weights_sha256")})
        tokenizers = sorted({r["tokenizer_sha256"] for r in ctx.runs if r.get("tokenizer_sha256")})
        approvals = [r for r in ctx.reviews if r["decision"] == "approve"]
        current = [r for r in approvals if r["covers_this_ledger"]]
        runtime = [(k, _value_text(v)) for k, v in ctx.runtime.items()]
        return {
            "given": True, "model": ctx.model, "weights": digests, "tokenizers": tokenizers, "runtime": runtime,
            "runs": [{**r, "n_captures": len(r["captures"]), "newest": r["captures"][-1] if r["captures"] else ""}
                     for r in ctx.runs],
            "inference_seed": ctx.inference_seed,
            "exclusions": [{**x, "n": len(x["ids"])} for x in ctx.exclusions],
            "reviews": list(ctx.reviews), "approved_now": current, "verify": ctx.verify,
        }

    # ---------------------------------------------------------------- deviations, runs, claims

    def _deviations(self) -> list[dict[str, Any]]:
        rows = []
        for d in self.ledger.get("deviations", []):
            run = d.get("run")
            impact = sorted(c["hypothesis"] for c in self.claims
                            if run is not None and run in [c.get("analysis_spec", {}).get("run"),
                                                           *c.get("analysis_spec", {}).get("runs", [])])
            if run is not None and not impact:
                impact = sorted(h for r in self.ledger.get("runs", []) if r["run_id"] == run for h in r.get("claims", {}))
            rows.append({
                "kind": d.get("kind", ""), "run": run, "field": d.get("field") or d.get("kind", ""),
                "preregistered": _value_text(d["preregistered"]) if "preregistered" in d else "—",
                "actual": _value_text(d["actual"]) if "actual" in d else d.get("detail", ""),
                "reason": d.get("reason") or "none recorded",
                "impact": (f"claims {', '.join(impact)} read run {run}" if impact
                           else f"run {run}: no claim reads it" if run is not None else "see the detail"),
            })
        return rows

    def _runs(self) -> list[dict[str, Any]]:
        captures = {r["run_id"]: r["captures"] for r in (self.context.runs if self.context else ())}
        return [{"run_id": r["run_id"], "status": r["status"], "warnings": r.get("warnings", []),
                 "captures": len(captures.get(r["run_id"], ())), "known": r["run_id"] in captures}
                for r in self.ledger.get("runs", [])]

    def _evidence_matrix(self) -> dict[str, Any] | None:
        names: dict[int, str] = {}
        for claim in self.claims:
            for p in claim.get("evidence_standard", []):
                names.setdefault(p["point"], p["name"])
        if not names:
            return None
        points = sorted(names)
        rows = []
        for claim in self.claims:
            by_point = {p["point"]: p["met"] for p in claim.get("evidence_standard", [])}
            cells = []
            for k in points:
                met = by_point.get(k, "absent")
                word, mark = {True: ("met", "✓"), False: ("unmet", "✗"), None: ("not_applicable", "–")}.get(
                    met, ("absent", ""))
                cells.append({"word": word, "mark": mark, "title": f"{names[k]}: {word.replace('_', ' ')}"})
            rows.append({"hypothesis": claim["hypothesis"], "cells": cells})
        return {"points": [(k, names[k]) for k in points], "rows": rows}

    def _claim(self, claim: Mapping[str, Any]) -> dict[str, Any]:
        evidence = []
        for p in sorted(claim.get("evidence_standard", []), key=lambda p: p["point"]):
            word = "met" if p["met"] is True else "unmet" if p["met"] is False else "not_applicable"
            evidence.append({"point": p["point"], "name": p["name"], "word": word,
                             "label": word.replace("_", " "), "fact": p["fact"], "caps": p.get("caps")})
        return {**claim, "evidence": evidence, "numbers_sorted": sorted((claim.get("numbers") or {}).items()),
                "figures": self.figures_by_analysis.get(str(claim["analysis"]), []),
                "sae_features": self._sae_features(str(claim["analysis"]))}

    def _sae_features(self, analysis: str, top: int = 10) -> list[dict[str, Any]]:
        """An sae_knockdown analysis's best features (tables/sae_features holds them all)."""
        frame = self.tables.get("sae_features")
        if frame is None:
            return []
        return frame[frame["analysis_id"] == analysis].head(top).to_dict("records")

    # ---------------------------------------------------------------- figure sections

    def _section(self, section: Section) -> dict[str, Any]:
        frame = self.tables.get(section.table)
        build = {"sec-heatmap": self._heatmaps, "sec-strip": self._strips, "sec-null": self._nulls,
                 "sec-class-register": self._class_register, "sec-wsq": self._wsq,
                 "sec-contexts": self._contexts, "sec-ablation": self._ablation,
                 "sec-source": self._source_traces, "sec-basin": self._basins}[section.id]
        figures = [] if frame is None else build(frame)
        return {"id": section.id, "title": section.title, "available": frame is not None,
                "reason": self.reasons.get(section.table, ""), "figures": figures}

    def _heatmaps(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis]
            fid = f"fig-heatmap-{plots.slug(analysis)}"
            svg = plots.baseline_heatmap(sub, index_name=self.design.unit_kind, fig_id=fid)
            targets = sub[sub["is_target"]].sort_values(["rank", "unit"], kind="stable")
            top = sub.sort_values(["rank", "unit"], kind="stable").head(_TOP_UNITS)
            extra = sub[sub["is_target"] & ~sub.index.isin(top.index)]
            numbers = self._numbers(analysis)
            out.append(self._figure(
                "heatmap", analysis, "baseline heatmap", svg=self._svg(svg, fid),
                family_size=numbers.get("family_size"), correction=numbers.get("correction"),
                critical=numbers.get("critical_statistic"), best_unit=numbers.get("best_unit"),
                targets=targets.to_dict("records"), top=pd.concat([top, extra]).to_dict("records")))
        return out

    def _strip_labels(self, analysis: str, sub: pd.DataFrame) -> dict[tuple[str, str], str]:
        """Under each class: the ledger's n and mean for it in that run, when the analysis groups by class."""
        spec, numbers = self._spec(analysis), self._numbers(analysis)
        groups = spec.get("groups") or {}
        labels = {}
        if groups.get("by") != "prompt_class":
            return labels
        for run in sub["run"].astype(str).unique():
            suffix = f"_{run}" if spec.get("kind") == "reproduction" else ""
            for side in ("a", "b"):
                n, mean = numbers.get(f"n_{side}{suffix}"), numbers.get(f"mean_{side}{suffix}")
                if isinstance(n, (int, float)) and isinstance(mean, (int, float)):
                    labels[(run, str(groups[side]))] = f"{groups[side]}\nmean {num(mean)} · n {num(n)}"
        return labels

    def _strips(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis]
            fid = f"fig-strip-{plots.slug(analysis)}"
            svg = plots.target_strips(sub, tick_labels=self._strip_labels(analysis, sub), fig_id=fid)
            crossing = (sub[sub["crosses"]][["run", "prompt_id", "prompt_class", "register_label"]]
                        .drop_duplicates().to_dict("records"))
            n_panels = sub.groupby(["unit", "run", "zone", "metric"]).ngroups
            out.append(self._figure("strip", analysis, "FIRE/NOFIRE strip", svg=self._svg(svg, fid),
                                    crossing=crossing, n_panels=n_panels))
        return out

    def _nulls(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for analysis in _analyses(frame):
            values = frame.loc[frame["analysis_id"] == analysis, "value"].astype(float).to_numpy()
            numbers, spec = self._numbers(analysis), self._spec(analysis)
            kind = spec.get("kind", "")
            observed = numbers.get("observed_statistic")
            critical = numbers.get("critical_statistic")
            p_key = "target_p_corrected" if kind == "all_unit_baseline" else "p_value"
            resampling = numbers.get("resampling", "")
            if kind == "all_unit_baseline":
                null, xlabel = "max_t", f"largest statistic over all {num(numbers.get('family_size'))} units"
            elif resampling == "sign_flip" or kind == "ablation_drop":
                null, xlabel = "sign_flip", "mean drop with each pair's sign flipped at random"
            elif numbers.get("null") == "equal_means":
                null, xlabel = "bootstrap", "statistic under the null-centred bootstrap"
            else:
                null, xlabel = "relabel", "statistic with the group labels shuffled"
            ylabel = "resamples"
            fid = f"fig-null-{plots.slug(analysis)}"
            svg = plots.null_histogram(values, observed=_finite(observed), critical=_finite(critical),
                                       xlabel=xlabel, ylabel=ylabel, fig_id=fid)
            out.append(self._figure("null", analysis, "null distribution", svg=self._svg(svg, fid), null=null,
                                    observed=observed, critical=critical, p=numbers.get(p_key), p_key=p_key,
                                    n_resamples=numbers.get("n_relabelings"), exact=numbers.get("exact"),
                                    family_size=numbers.get("family_size"), correction=numbers.get("correction"),
                                    statistic=spec.get("statistic"), tails=spec.get("tails")))
        return out

    def _class_register(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis].copy()
            means = sub["mean"].astype(float)
            sds = sub["sd"].astype(float).fillna(0.0)
            lo = float(min(0.0, np.nanmin(means - sds))) if means.notna().any() else 0.0
            hi = float(max(0.0, np.nanmax(means + sds))) if means.notna().any() else 1.0
            order = {c: i for i, c in enumerate(plots.class_order(sub["prompt_class"]))}
            sub["_o"] = sub["prompt_class"].astype(str).map(order)
            rows = []
            for r in sub.sort_values(["_o", "register_label"], kind="stable").to_dict("records"):
                crosses = bool(r.get("crosses", False))
                rows.append({**r, "crosses": crosses,
                             "bar": Markup(plots.minibar(float(r["mean"]), float(r["sd"]), lo=lo, hi=hi))})
            numbers = self._numbers(analysis)
            listed = [p.strip() for p in str(numbers.get("crossing_prompts", "")).split(",") if p.strip()]
            out.append(self._figure("class-register", analysis, "class × register", rows=rows,
                                    crossing_prompts=listed, spec=self._spec(analysis)))
        return out

    def _contexts(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis]
            out.append(self._figure("contexts", analysis, "token contexts", rows=sub.to_dict("records"),
                                    unit=str(sub["unit"].iloc[0]) if len(sub) else ""))
        return out

    def _wsq(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis]
            fid = f"fig-wsq-{plots.slug(analysis)}"
            svg = plots.wsq_bars(sub, fig_id=fid)
            intervals = all(f"{m}_ci_low" in sub.columns for m in "WSQ")
            out.append(self._figure("wsq", analysis, "W/S/Q", svg=self._svg(svg, fid), intervals=intervals,
                                    rows=sub.to_dict("records")))
        return out

    def _ablation(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """One figure per distinct ablation (target and mode): analyses that read the same pairs share it."""
        keyed: dict[tuple[str, ...], list[str]] = {}
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis]
            key = tuple(str(sub[c].iloc[0]) for c in ("target", "mode") if c in sub.columns) or (analysis,)
            keyed.setdefault(key, []).append(analysis)
        summary = self.tables.get("ablation_summary")
        out = []
        for analyses in keyed.values():
            first = analyses[0]
            sub = frame[frame["analysis_id"] == first]
            threshold, means = None, {}
            for a in analyses:
                spec, numbers = self._spec(a), self._numbers(a)
                for claim in self._claims_for(a):
                    for c in claim.get("criteria", []):
                        if c["name"] == "min_mean_drop_logits" and isinstance(c.get("threshold"), (int, float)):
                            threshold = float(c["threshold"])
                headline = spec.get("pairs", "headline")
                if isinstance(numbers.get("mean_drop"), (int, float)):
                    means.setdefault(str(headline), float(numbers["mean_drop"]))
                if isinstance(numbers.get("control_mean_drop"), (int, float)):
                    means.setdefault(str(spec.get("control", "control")), float(numbers["control_mean_drop"]))
            fid = f"fig-ablation-{plots.slug(first)}"
            svg = plots.ablation_drops(sub, threshold=threshold, means=means, fig_id=fid)
            rows = [] if summary is None else summary[summary["analysis_id"].isin(analyses)].to_dict("records")
            out.append(self._figure("ablation", first, "ablation drops", analyses=analyses, svg=self._svg(svg, fid),
                                    threshold=threshold, summary=rows,
                                    target=str(sub["target"].iloc[0]) if "target" in sub.columns else "",
                                    mode=str(sub["mode"].iloc[0]) if "mode" in sub.columns else ""))
        return out


    def _source_traces(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """One figure per source_trace analysis: a heatmap of mean restored fraction per source layer x position,
        a panel per target."""
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis]
            fid = f"fig-source-{plots.slug(analysis)}"
            out.append(self._figure("source", analysis, "source-trace heatmap",
                                    svg=self._svg(plots.source_trace_heatmap(sub, fig_id=fid), fid),
                                    targets=sorted(sub["target"].astype(str).unique()), metric=str(sub["metric"].iloc[0]),
                                    cells=sub[sub["is_claim_cell"].astype(bool)].to_dict("records"),
                                    n_pairs=int(sub["n_pairs"].max()) if len(sub) else 0))
        return out

    def _basins(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """One table per basin_comparison: the ledger's summary of the two variants, then top-k overlap per layer."""
        out = []
        for analysis in _analyses(frame):
            sub = frame[frame["analysis_id"] == analysis].sort_values("layer")
            out.append(self._figure("basin", analysis, "basin comparison", numbers=self._numbers(analysis),
                                    layers=sub.to_dict("records")))
        return out


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
