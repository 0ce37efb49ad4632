"""The audit's single self-contained HTML report.

:func:`render_report` reads what the audit engine wrote into a report folder (``ledger.json`` and
the Parquet tables under ``tables/``) and writes ``report.html`` beside them, atomically. The page
works opened from disk with no network: CSS is inline, figures are inline SVG, there is no script
and no external URL, and a Content-Security-Policy forbids fetching anything. Every string that
comes from the study (claims, reasons, prompt ids, labels) is HTML-escaped.

Section order is part of the contract: header (with a SYNTHETIC banner when the study is
synthetic), deviations and post-hoc amendments first, the evidence status ledger (as in the routing
journal), run cards with each claim's review status, per-claim detail (criteria, evidence standard
points 1-8, numbers), then the figures: all-unit baseline heatmap, FIRE/NOFIRE strips, null
distribution, class x register table, W/S/Q bars and, for ablation studies, the per-pair drop
against the threshold. Any table may be absent; its section then says "not available for this study".
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit import _plots as plots
from lockstep.designs import design_of
from lockstep.records import LEDGER as LEDGER_SCHEMA
from lockstep.records import record_problems
from lockstep.errors import Problem, SchemaError, UsageError
from lockstep.fsio import atomic_write

__all__ = ["REPORT_NAME", "TABLE_COLUMNS", "render_report"]

REPORT_NAME = "report.html"

CLAIM_STATUSES = ("held", "partly_held", "fell", "unsupported", "not_established")
RUN_STATUSES = ("pass", "pass_with_warnings", "fail")
REVIEW_STATUSES = ("pending_review", "approved")

#: Columns each table must have (extra columns are ignored).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "target_values": ("analysis_id", "unit", "run", "zone", "metric", "prompt_id", "prompt_class",
                      "register_label", "value", "crosses"),
    "baseline": ("analysis_id", "unit", "layer", "index", "statistic", "p_uncorrected", "p_fwer", "rank",
                 "is_target"),
    "null_distribution": ("analysis_id", "value"),
    "class_register": ("analysis_id", "prompt_class", "register_label", "n", "mean", "sd"),
    "wsq": ("analysis_id", "unit", "group", "W", "S", "Q"),
    "ablation_pairs": ("analysis_id", "pair_id", "pair_class", "baseline_margin", "ablated_margin", "drop"),
}

_TOP_UNITS = 10


# ============================================================================================
# Public entry point


def render_report(report_dir: Path) -> Path:
    """Render ``report_dir/report.html`` from the audit outputs in ``report_dir``.

    Parameters
    ----------
    report_dir : pathlib.Path
        A report folder as ``make audit`` writes it: ``ledger.json`` and, optionally, the tables
        ``tables/{target_values,baseline,null_distribution,class_register,wsq,ablation_pairs}.parquet``.

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
    report_dir = Path(report_dir)
    inputs = _load_inputs(report_dir)
    page = _Page(inputs).render()
    out = report_dir / REPORT_NAME
    atomic_write(out, page.encode("utf-8"))
    return out


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
                         hint="run `make audit STUDY=<study>` first; it writes reports/<study>/")
    ledger_path = report_dir / "ledger.json"
    if not ledger_path.is_file():
        raise UsageError(f"{ledger_path} does not exist",
                         hint="run `make audit STUDY=<study>` first; it writes the ledger the report is drawn from")
    try:
        ledger = json.loads(ledger_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError([Problem("ledger.json", "", f"is not valid JSON: {exc.msg}", exc.lineno)],
                          hint="re-run `make audit`; the ledger is written by the audit, never by hand") from exc
    problems = _ledger_problems(ledger)
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
        raise SchemaError(problems, hint="the report reads what `make audit` writes; re-run it with this tool version")
    return _Inputs(ledger=ledger, tables=tables, reasons=reasons)


def _ledger_problems(ledger: Any) -> list[Problem]:
    """Every way ``ledger.json`` breaks its published schema (the one check the audit ran when it wrote it)."""
    return record_problems(LEDGER_SCHEMA, ledger, "ledger.json")


# ============================================================================================
# Small HTML helpers


def _e(value: Any) -> str:
    """HTML-escape any value as text (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> str:
    """A number as a reader wants it: 4 significant digits, integers without a decimal point."""
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
    return _e(value)


def _badge(word: str, family: str) -> str:
    """A status badge whose text is the vocabulary word itself (``partly_held``, ``pending_review``)."""
    return f'<span class="badge {family}-{_slug(word)}" data-status="{_e(word)}">{_e(word)}</span>'


def _slug(text: Any) -> str:
    return plots.slug(text)


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _analyses(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["analysis_id"].unique().tolist(), key=_natural_key)


def _not_available(reason: str) -> str:
    return f'<p class="na">Not available for this study: {_e(reason)}.</p>'


def _table(head: Iterable[str], rows: Iterable[Iterable[str]], *, cls: str = "", table_id: str = "") -> str:
    """``head`` and ``rows`` are already-escaped HTML fragments."""
    attrs = (f' class="{cls}"' if cls else "") + (f' id="{table_id}"' if table_id else "")
    thead = "".join(f'<th scope="col">{h}</th>' for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="tablewrap"><table{attrs}><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table></div>'


# ============================================================================================
# The page


class _Page:
    """Assembles the document; one method per section, in page order."""

    def __init__(self, inputs: _Inputs):
        self.ledger = inputs.ledger
        self.tables = inputs.tables
        self.reasons = inputs.reasons
        self.claims: list[dict[str, Any]] = [c for c in self.ledger.get("claims", []) if isinstance(c, dict)]
        self.figure_count = 0
        self.figures_by_analysis: dict[str, list[tuple[str, str]]] = {}

    # ---------------------------------------------------------------- document

    def render(self) -> str:
        # Figures are drawn first so that claim details can link to them.
        figures = [
            self._section_heatmap(),
            self._section_strips(),
            self._section_null(),
            self._section_class_register(),
            self._section_wsq(),
        ]
        if design_of(self.ledger["design"]).unit_kind == "head" or self.tables.get("ablation_pairs") is not None:
            figures.append(self._section_ablation())
        body = [
            self._banner(),
            self._header(),
            self._nav(figures),
            '<main>',
            self._section_deviations(),
            self._section_ledger(),
            self._section_runs(),
            self._section_claims(),
            *[html_ for _, _, html_ in figures],
            '</main>',
            self._footer(),
        ]
        title = f"{self.ledger.get('study_id', '')} · lockstep audit report"
        if self.ledger.get("synthetic"):
            title = "[SYNTHETIC] " + title
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\">\n"
            "<meta name=\"generator\" content=\"lockstep " + _e(self.ledger.get("tool_version", "")) + "\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(b for b in body if b)
            + "\n</body>\n</html>\n"
        )

    def _banner(self) -> str:
        if not self.ledger.get("synthetic"):
            return ""
        return ('<div class="synthetic-banner" id="synthetic-banner" role="note">'
                "<strong>SYNTHETIC</strong> — this study runs on synthetic data or a synthetic model. "
                "Its numbers exercise the toolkit; they are not evidence about any real model.</div>")

    def _header(self) -> str:
        led = self.ledger
        counts = {s: sum(1 for c in self.claims if c.get("status") == s) for s in CLAIM_STATUSES}
        chips = "".join(f'<li>{_badge(s, "st")} <span class="count">{n}</span></li>'
                        for s, n in counts.items() if n)
        pending = sum(1 for c in self.claims if c.get("review_status", "pending_review") == "pending_review")
        runs = led.get("runs", []) or []
        run_chips = "".join(f'<li>{_e(r.get("run_id"))} {_badge(r.get("status", ""), "run")}</li>' for r in runs)
        meta = [
            ("Study", f"<code>{_e(led.get('study_id'))}</code>"),
            ("Design", _e(led.get("design"))),
            ("Lock digest", f'<code class="digest">{_e(led.get("lock_digest") or "—")}</code>'),
            ("Generated (UTC)", _e(led.get("generated_utc") or "—")),
            ("Tool version", f"lockstep {_e(led.get('tool_version') or '—')}"),
        ]
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)
        review = (f'<p class="review-note">{_badge("pending_review", "review")} {pending} of {len(self.claims)} '
                  "claims have not been signed by a reviewer.</p>") if pending else ""
        return (
            '<header id="sec-header">'
            '<p class="eyebrow">lockstep · pre-registered audit report</p>'
            f"<h1>{_e(led.get('title'))}</h1>"
            f'<dl class="meta">{dl}</dl>'
            f'<div class="summary"><div><h2 class="mini">Claims ({len(self.claims)})</h2>'
            f'<ul class="chips">{chips}</ul></div>'
            f'<div><h2 class="mini">Runs ({len(runs)})</h2>'
            f'<ul class="chips">{run_chips or "<li>none recorded</li>"}</ul></div></div>'
            f"{review}</header>"
        )

    def _nav(self, figures: list[tuple[str, str, str]]) -> str:
        links = [("sec-deviations", "Deviations &amp; amendments"), ("sec-ledger", "Ledger"),
                 ("sec-runs", "Run cards"), ("sec-claims", "Claims")]
        links += [(sid, title) for sid, title, _ in figures]
        items = "".join(f'<li><a href="#{sid}">{title}</a></li>' for sid, title in links)
        return f'<nav class="toc" aria-label="Sections"><ul>{items}</ul></nav>'

    def _footer(self) -> str:
        return ('<footer><p>Drawn by lockstep from <code>ledger.json</code> and <code>tables/*.parquet</code> '
                f"of study <code>{_e(self.ledger.get('study_id'))}</code>, lock digest "
                f"<code class=\"digest\">{_e(self.ledger.get('lock_digest') or '—')}</code>. "
                "This file is self-contained: no scripts, no network.</p></footer>")

    # ---------------------------------------------------------------- deviations and amendments

    def _section_deviations(self) -> str:
        deviations = [d for d in self.ledger.get("deviations", []) or [] if isinstance(d, dict)]
        amendments = [a for a in self.ledger.get("amendments", []) or [] if isinstance(a, dict)]
        post_hoc = [a for a in amendments if a.get("post_hoc")]
        if deviations or post_hoc:
            parts = []
            if deviations:
                parts.append(f"{len(deviations)} deviation{'s' if len(deviations) != 1 else ''} from the plan")
            if post_hoc:
                parts.append(f"{len(post_hoc)} post-hoc amendment{'s' if len(post_hoc) != 1 else ''}")
            callout = (f'<p class="callout warn"><strong>{" and ".join(parts)}.</strong> '
                       "Read these before the ledger: they change what the verdicts below can mean.</p>")
        else:
            callout = ('<p class="callout ok">The study ran as pre-registered: '
                       "no deviations and no post-hoc amendments.</p>")
        if deviations:
            dev_html = _table(["Kind", "Detail"], ([_e(d.get("kind")), _e(d.get("detail"))] for d in deviations),
                              cls="data", table_id="deviations")
        else:
            dev_html = '<p class="none" id="deviations-none">Deviations: none.</p>'
        if amendments:
            rows = ([f"<code>{_e(a.get('id'))}</code>",
                     _badge("post_hoc", "amend") if a.get("post_hoc") else _badge("before_data", "amend"),
                     _e(a.get("seen")), _e(a.get("reason"))] for a in amendments)
            amend_html = _table(["Amendment", "When", "Seen when made", "Reason"], rows, cls="data",
                                table_id="amendments")
        else:
            amend_html = '<p class="none" id="amendments-none">Amendments: none.</p>'
        return ('<section id="sec-deviations"><h2>Deviations and post-hoc amendments</h2>'
                f"{callout}<h3>Deviations</h3>{dev_html}<h3>Amendments</h3>{amend_html}</section>")

    # ---------------------------------------------------------------- ledger

    def _section_ledger(self) -> str:
        if not self.claims:
            return ('<section id="sec-ledger"><h2>Evidence status ledger</h2>'
                    '<p class="none">No claims in the ledger.</p></section>')
        rows = []
        for claim in self.claims:
            hid = claim.get("hypothesis", "")
            status = claim.get("status", "")
            review = claim.get("review_status", "pending_review")
            rows.append(
                f'<tr data-hypothesis="{_e(hid)}" data-status="{_e(status)}">'
                f'<th scope="row"><a href="#claim-{_slug(hid)}">{_e(hid)}</a></th>'
                f'<td class="finding">{_e(claim.get("claim"))}'
                f'<div class="sub"><span class="tag">{_e(claim.get("kind"))}</span> analysis '
                f'<code>{_e(claim.get("analysis"))}</code></div></td>'
                f'<td class="status">{_badge(status, "st")}</td>'
                f'<td class="why">{_e(claim.get("reason"))}</td>'
                f"<td>{_badge(review, 'review')}</td></tr>"
            )
        return (
            '<section id="sec-ledger"><h2>Evidence status ledger</h2>'
            '<p class="lede">One row per pre-registered claim: its status by the frozen thresholds, and why. '
            "Statuses: <em>held</em>, <em>partly_held</em>, <em>fell</em>, <em>unsupported</em>, "
            "<em>not_established</em>.</p>"
            '<div class="tablewrap"><table class="ledger" id="ledger"><thead><tr>'
            '<th scope="col">Claim</th><th scope="col">Finding</th><th scope="col">Status</th>'
            '<th scope="col">Why</th><th scope="col">Review</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div></section>"
        )

    # ---------------------------------------------------------------- run cards

    def _section_runs(self) -> str:
        runs = [r for r in self.ledger.get("runs", []) or [] if isinstance(r, dict)]
        cards = []
        for run in runs:
            warnings = [w for w in run.get("warnings", []) or []]
            if warnings:
                items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
                body = f'<ul class="warnings">{items}</ul>'
            else:
                body = '<p class="none">No warnings.</p>'
            cards.append(
                f'<article class="card run run-{_slug(run.get("status"))}" id="run-{_slug(run.get("run_id"))}" '
                f'data-status="{_e(run.get("status"))}">'
                f'<h3><code>{_e(run.get("run_id"))}</code> {_badge(run.get("status", ""), "run")}</h3>{body}</article>'
            )
        runs_html = f'<div class="cards">{"".join(cards)}</div>' if cards else '<p class="none">No runs recorded.</p>'
        review_rows = "".join(
            f'<li><a href="#claim-{_slug(c.get("hypothesis"))}">{_e(c.get("hypothesis"))}</a> '
            f'{_badge(c.get("review_status", "pending_review"), "review")}</li>' for c in self.claims)
        pending = [c for c in self.claims if c.get("review_status", "pending_review") == "pending_review"]
        review_note = (f'<p class="callout warn"><strong>{len(pending)} claim{"s" if len(pending) != 1 else ""} '
                       "pending_review.</strong> A status here is the audit's reading of the pre-registered rules; "
                       "it is not final until a reviewer signs it.</p>") if pending else (
                       '<p class="callout ok">Every claim has been approved by a reviewer.</p>' if self.claims else "")
        return ('<section id="sec-runs"><h2>Run cards</h2>' + runs_html
                + f'<h3>Claim review</h3>{review_note}<ul class="chips review-list">{review_rows}</ul></section>')

    # ---------------------------------------------------------------- claims in detail

    def _section_claims(self) -> str:
        if not self.claims:
            return '<section id="sec-claims"><h2>Claims in detail</h2><p class="none">No claims.</p></section>'
        return ('<section id="sec-claims"><h2>Claims in detail</h2>' + self._evidence_matrix()
                + "".join(self._claim(c) for c in self.claims) + "</section>")

    def _evidence_matrix(self) -> str:
        """Claims x evidence-standard points 1-8 at a glance; each claim below gives the facts."""
        names: dict[int, str] = {}
        for claim in self.claims:
            for p in claim.get("evidence_standard", []) or []:
                if isinstance(p.get("point"), int):
                    names.setdefault(p["point"], str(p.get("name", "")))
        if not names:
            return ""
        points = sorted(names)
        head = "".join(f'<th scope="col" title="{_e(names[k])}">{k}</th>' for k in points)
        rows = []
        for claim in self.claims:
            by_point = {p.get("point"): p.get("met") for p in claim.get("evidence_standard", []) or []}
            cells = []
            for k in points:
                met = by_point.get(k, "absent")
                word, mark = {True: ("met", "✓"), False: ("unmet", "✗"), None: ("not_applicable", "–")}.get(
                    met, ("absent", ""))
                cells.append(f'<td class="ev ev-{word}" title="{_e(names[k])}: {word.replace("_", " ")}">{mark}</td>')
            hid = claim.get("hypothesis", "")
            rows.append(f'<tr><th scope="row"><a href="#claim-{_slug(hid)}">{_e(hid)}</a></th>{"".join(cells)}</tr>')
        legend = "".join(f"<li><strong>{k}</strong> {_e(names[k])}</li>" for k in points)
        return ('<div class="evmatrix"><div class="tablewrap"><table class="matrix" id="evidence-matrix"><thead><tr>'
                f'<th scope="col">Claim</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
                f'<ul class="evlegend">{legend}</ul></div>'
                '<p class="lede">✓ met · ✗ unmet · – not applicable. The evidence standard is the routing '
                "journal's; each claim below gives the fact behind every mark.</p>")

    def _claim(self, claim: Mapping[str, Any]) -> str:
        hid = claim.get("hypothesis", "")
        crit_rows = []
        for c in claim.get("criteria", []) or []:
            passed = c.get("passed")
            verdict = ('<span class="mark pass">✓ passed</span>' if passed is True
                       else '<span class="mark fail">✗ not met</span>' if passed is False
                       else '<span class="mark na">—</span>')
            crit_rows.append([f"<code>{_e(c.get('name'))}</code>", _num(c.get("threshold")),
                              _num(c.get("observed")), verdict, _e(c.get("text"))])
        criteria = (_table(["Criterion", "Threshold", "Observed", "Result", "Rule"], crit_rows, cls="data num-2-3")
                    if crit_rows else '<p class="none">No criteria recorded.</p>')
        ev_rows = []
        for p in sorted(claim.get("evidence_standard", []) or [], key=lambda p: p.get("point") or 0):
            met = p.get("met")
            word = "met" if met is True else "unmet" if met is False else "not_applicable"
            label = {"met": "met", "unmet": "unmet", "not_applicable": "not applicable"}[word]
            ev_rows.append([_num(p.get("point")), _e(p.get("name")),
                            f'<span class="badge ev-{word}" data-status="{word}">{label}</span>', _e(p.get("fact"))])
        evidence = (_table(["#", "Evidence standard", "Status", "Fact"], ev_rows, cls="data compact evidence")
                    if ev_rows else '<p class="none">No evidence-standard points recorded.</p>')
        numbers = claim.get("numbers") or {}
        numbers_html = ("".join(f'<div><dt><code>{_e(k)}</code></dt><dd>{_num(v)}</dd></div>'
                                for k, v in sorted(numbers.items())))
        numbers_html = (f'<dl class="numbers">{numbers_html}</dl>' if numbers_html
                        else '<p class="none">No numbers recorded.</p>')
        links = self.figures_by_analysis.get(str(claim.get("analysis")), [])
        links_html = ('<p class="figlinks">Figures: '
                      + ", ".join(f'<a href="#{fid}">{label}</a>' for fid, label in links)
                      + "</p>") if links else ""
        return (
            f'<article class="claim" id="claim-{_slug(hid)}" data-status="{_e(claim.get("status"))}">'
            f'<h3><span class="hid">{_e(hid)}</span> {_badge(claim.get("status", ""), "st")} '
            f'{_badge(claim.get("review_status", "pending_review"), "review")}'
            f'<span class="tag">{_e(claim.get("kind"))}</span> '
            f'<span class="tag">analysis {_e(claim.get("analysis"))}</span></h3>'
            f"<blockquote>{_e(claim.get('claim'))}</blockquote>"
            f'<p class="why"><strong>Why:</strong> {_e(claim.get("reason"))}</p>{links_html}'
            f"<h4>Criteria</h4>{criteria}<h4>Evidence standard</h4>{evidence}<h4>Numbers</h4>{numbers_html}</article>"
        )

    # ---------------------------------------------------------------- figures

    def _figure(self, kind: str, analysis: str, svg: str, caption: str, extra: str = "", label: str = "") -> str:
        self.figure_count += 1
        fid = f"fig-{kind}-{_slug(analysis)}"
        self.figures_by_analysis.setdefault(analysis, []).append((fid, label or kind))
        svg = svg.replace('role="img"', f'role="img" aria-labelledby="{fid}-caption"', 1)
        return (f'<figure id="{fid}" class="plot" data-analysis="{_e(analysis)}">'
                f'<div class="svgwrap">{svg}</div>'
                f'<figcaption id="{fid}-caption"><strong>Figure {self.figure_count}.</strong> {caption}</figcaption>'
                f"{extra}</figure>")

    def _claims_for(self, analysis: str) -> list[Mapping[str, Any]]:
        return [c for c in self.claims if str(c.get("analysis")) == analysis]

    def _claim_refs(self, analysis: str) -> str:
        refs = [f'<a href="#claim-{_slug(c.get("hypothesis"))}">{_e(c.get("hypothesis"))}</a> '
                f'({_e(c.get("status"))})' for c in self._claims_for(analysis)]
        return f" Claims: {', '.join(refs)}." if refs else ""

    def _section(self, sid: str, title: str, lede: str, table: str, parts: list[str]) -> tuple[str, str, str]:
        if self.tables.get(table) is None:
            content = _not_available(self.reasons.get(table, f"tables/{table}.parquet was not written"))
        else:
            content = "".join(parts)
        return sid, _e(title), (f'<section id="{sid}" class="figures"><h2>{_e(title)}</h2>'
                                f'<p class="lede">{lede}</p>{content}</section>')

    def _section_heatmap(self) -> tuple[str, str, str]:
        frame = self.tables.get("baseline")
        index_name = design_of(self.ledger["design"]).unit_kind
        parts = []
        for analysis in ([] if frame is None else _analyses(frame)):
            sub = frame[frame["analysis_id"] == analysis]
            svg = plots.baseline_heatmap(sub, index_name=index_name, fig_id=f"fig-heatmap-{_slug(analysis)}")
            targets = sub[sub["is_target"].astype(bool)].sort_values(["rank", "unit"], kind="stable")
            n = len(sub)
            target_text = "; ".join(
                f"<strong>{_e(r.unit)}</strong> statistic {_num(r.statistic)}, rank {_num(r.rank)} of {n:,}, "
                f"FWER-adjusted p {_num(r.p_fwer)}" for r in targets.itertuples()) or "no target unit in this table"
            caption = (f"All-unit baseline for analysis <code>{_e(analysis)}</code>: the statistic of every "
                       f"layer × {index_name} unit ({n:,} units; grey = not measured). Target ringed in red "
                       f"({target_text}); the best-separating unit, when it is not the target, is ringed in purple."
                       + self._claim_refs(analysis))
            parts.append(self._figure("heatmap", analysis, svg, caption, extra=self._top_units(sub, analysis),
                                      label="baseline heatmap"))
        return self._section("sec-heatmap", "All-unit baseline", (
            f"Every layer × {index_name} unit scored with the same statistic as the target, corrected for "
            "the whole family (max-T). A target that is not near the top is explained better by another unit."),
            "baseline", parts)

    def _top_units(self, sub: pd.DataFrame, analysis: str) -> str:
        top = sub.sort_values(["rank", "unit"], kind="stable").head(_TOP_UNITS)
        rows = []
        for r in top.itertuples():
            unit = f"<strong>{_e(r.unit)}</strong> {_badge('target', 'flag')}" if bool(r.is_target) else _e(r.unit)
            rows.append([_num(r.rank), unit, _num(r.layer), _num(r.index), _num(r.statistic),
                         _num(r.p_uncorrected), _num(r.p_fwer)])
        targets = sub[sub["is_target"].astype(bool) & ~sub.index.isin(top.index)]
        for r in targets.itertuples():
            rows.append([_num(r.rank), f"<strong>{_e(r.unit)}</strong> {_badge('target', 'flag')}", _num(r.layer),
                         _num(r.index), _num(r.statistic), _num(r.p_uncorrected), _num(r.p_fwer)])
        return ('<details class="top" open><summary>Top units</summary>'
                + _table(["Rank", "Unit", "Layer", "Index", "Statistic", "p (uncorrected)", "p (FWER)"], rows,
                         cls="data compact", table_id=f"top-units-{_slug(analysis)}") + "</details>")

    def _section_strips(self) -> tuple[str, str, str]:
        frame = self.tables.get("target_values")
        parts = []
        for analysis in ([] if frame is None else _analyses(frame)):
            sub = frame[frame["analysis_id"] == analysis]
            svg = plots.target_strips(sub, fig_id=f"fig-strip-{_slug(analysis)}")
            crossing = sub[sub["crosses"].astype(bool)]
            cross_text = (", ".join(f"<code>{_e(p)}</code> ({_e(c)} → {_e(r)})" for p, c, r in
                                    crossing[["prompt_id", "prompt_class", "register_label"]].drop_duplicates()
                                    .itertuples(index=False))
                          or "none")
            n_panels = sub.groupby(["unit", "run", "zone", "metric"]).ngroups
            more = f" Only the first 6 of {n_panels} panels are drawn." if n_panels > 6 else ""
            caption = (f"Per-prompt value of the target for analysis <code>{_e(analysis)}</code>, by prompt class; "
                       "colour is the generated register by the frozen rubric, black bars are class means. "
                       f"Prompts whose register crosses what their class was built to elicit are ringed and named: "
                       f"{cross_text}.{more}" + self._claim_refs(analysis))
            parts.append(self._figure("strip", analysis, svg, caption, label="FIRE/NOFIRE strip"))
        return self._section("sec-strip", "Target values by prompt class", (
            "Prompt class is what a prompt was built to elicit; the register label is what the generated text "
            "actually is. A register signal follows the label, even when a prompt leaves its class."),
            "target_values", parts)

    def _section_null(self) -> tuple[str, str, str]:
        frame = self.tables.get("null_distribution")
        parts = []
        for analysis in ([] if frame is None else _analyses(frame)):
            values = frame.loc[frame["analysis_id"] == analysis, "value"].astype(float).to_numpy()
            observed = critical = None
            for claim in self._claims_for(analysis):
                nums = claim.get("numbers") or {}
                if observed is None and isinstance(nums.get("observed_statistic"), (int, float)):
                    observed = float(nums["observed_statistic"])
                if critical is None and isinstance(nums.get("critical_statistic"), (int, float)):
                    critical = float(nums["critical_statistic"])
            svg = plots.null_histogram(values, observed=observed, critical=critical,
                                 fig_id=f"fig-null-{_slug(analysis)}")
            finite = values[np.isfinite(values)]
            if observed is not None and finite.size:
                exceed = int(np.sum(finite >= observed))
                share = (exceed + 1) / (finite.size + 1)
                obs_text = (f"Observed {_num(observed)} (red); {exceed:,} of {finite.size:,} null values are at or "
                            f"above it, (k + 1)/(n + 1) = {_num(share)}.")
            else:
                obs_text = "The ledger gives no observed statistic for this analysis."
            crit_text = (f" Critical value {_num(critical)} (dashed)." if critical is not None
                         else " The ledger gives no critical value.")
            caption = (f"Permutation null distribution for analysis <code>{_e(analysis)}</code> "
                       f"({finite.size:,} relabellings). {obs_text}{crit_text}" + self._claim_refs(analysis))
            parts.append(self._figure("null", analysis, svg, caption, label="null distribution"))
        return self._section("sec-null", "Null distribution", (
            "What the statistic looks like when class labels carry no information. The observed value "
            "must clear the critical value for the claim to hold."), "null_distribution", parts)

    def _section_class_register(self) -> tuple[str, str, str]:
        frame = self.tables.get("class_register")
        crossing_pairs: set[tuple[str, str]] = set()
        tv = self.tables.get("target_values")
        if tv is not None:
            crossed = tv[tv["crosses"].astype(bool)]
            crossing_pairs = {(str(c), str(r)) for c, r in zip(crossed["prompt_class"], crossed["register_label"])}
        parts = []
        for analysis in ([] if frame is None else _analyses(frame)):
            sub = frame[frame["analysis_id"] == analysis].copy()
            means = sub["mean"].astype(float)
            sds = sub["sd"].astype(float).fillna(0.0)
            lo = float(min(0.0, np.nanmin(means - sds))) if means.notna().any() else 0.0
            hi = float(max(0.0, np.nanmax(means + sds))) if means.notna().any() else 1.0
            order = {c: i for i, c in enumerate(plots.class_order(sub["prompt_class"]))}
            sub["_o"] = sub["prompt_class"].astype(str).map(order)
            rows = []
            for r in sub.sort_values(["_o", "register_label"], kind="stable").itertuples():
                tag = (f" {_badge('crosses', 'flag')}" if (str(r.prompt_class), str(r.register_label)) in crossing_pairs
                       else "")
                rows.append([_e(r.prompt_class), _e(r.register_label) + tag, _num(r.n), _num(r.mean), _num(r.sd),
                             plots.minibar(float(r.mean), float(r.sd), lo=lo, hi=hi)])
            table = _table(["Prompt class", "Generated register", "n", "Mean", "SD", "Mean ± SD"], rows,
                           cls="data num-3-4-5", table_id=f"class-register-{_slug(analysis)}")
            self.figure_count += 1
            fid = f"fig-class-register-{_slug(analysis)}"
            self.figures_by_analysis.setdefault(analysis, []).append((fid, "class × register"))
            parts.append(
                f'<figure id="{fid}" class="plot table-figure" data-analysis="{_e(analysis)}">{table}'
                f"<figcaption><strong>Figure {self.figure_count}.</strong> Target value by prompt class × generated "
                f"register for analysis <code>{_e(analysis)}</code> (mean of per-prompt values, SD across prompts). "
                "Rows tagged <em>crosses</em> hold prompts whose register left their class — the journal's hinge row."
                + self._claim_refs(analysis) + "</figcaption></figure>")
        return self._section("sec-class-register", "Prompt class × generated register", (
            "The routing journal's 2 × 2: if the unit follows the generated register, the off-class rows "
            "move with the register, not with the prompt's class."), "class_register", parts)

    def _section_wsq(self) -> tuple[str, str, str]:
        frame = self.tables.get("wsq")
        parts = []
        for analysis in ([] if frame is None else _analyses(frame)):
            sub = frame[frame["analysis_id"] == analysis]
            svg = plots.wsq_bars(sub, fig_id=f"fig-wsq-{_slug(analysis)}")
            caption = (f"Group means of W, S and Q for analysis <code>{_e(analysis)}</code>. W = S × Q: a "
                       "difference carried by S means the unit is selected more often; one carried by Q means it "
                       "is weighted more once selected." + self._claim_refs(analysis))
            parts.append(self._figure("wsq", analysis, svg, caption, label="W/S/Q"))
        return self._section("sec-wsq", "W / S / Q", (
            "S = selection rate, Q = mean routed weight when selected, W = S × Q; per prompt, then the mean "
            "of means across prompts."), "wsq", parts)

    def _section_ablation(self) -> tuple[str, str, str]:
        frame = self.tables.get("ablation_pairs")
        parts = []
        for analysis in ([] if frame is None else _analyses(frame)):
            sub = frame[frame["analysis_id"] == analysis]
            threshold = None
            for claim in self._claims_for(analysis):
                for c in claim.get("criteria", []) or []:
                    if c.get("name") == "min_mean_drop_logits" and isinstance(c.get("threshold"), (int, float)):
                        threshold = float(c["threshold"])
            svg = plots.ablation_drops(sub, threshold=threshold, fig_id=f"fig-ablation-{_slug(analysis)}")
            rows = []
            for cls in plots.class_order(sub["pair_class"]):
                g = sub[sub["pair_class"].astype(str) == cls]
                base = float(g["baseline_margin"].astype(float).mean())
                drop = float(g["drop"].astype(float).mean())
                rel = drop / base if base else float("nan")
                rows.append([_e(cls), _num(len(g)), _num(base), _num(float(g["ablated_margin"].astype(float).mean())),
                             _num(drop), _num(rel)])
            table = _table(["Pair class", "Pairs", "Mean baseline margin", "Mean ablated margin", "Mean drop",
                            "Relative drop"], rows, cls="data compact", table_id=f"ablation-summary-{_slug(analysis)}")
            thr = (f"the dashed line is the pre-registered threshold of {_num(threshold)} logits, which applies to "
                   "the mean headline drop, not to single pairs" if threshold is not None
                   else "the ledger gives no <code>min_mean_drop_logits</code> threshold for this analysis")
            caption = (f"Logit-difference margin drop under ablation, one point per contrastive pair, for analysis "
                       f"<code>{_e(analysis)}</code>; solid lines are class means and {thr}."
                       + self._claim_refs(analysis))
            parts.append(self._figure("ablation", analysis, svg, caption, extra=table, label="ablation drops"))
        return self._section("sec-ablation", "Ablation: margin drop per pair", (
            "The drop in logit(correct) − logit(corrupted) at the last position when the target units are "
            "ablated; headline pairs against diagnostic/control pairs."), "ablation_pairs", parts)


# ============================================================================================
# Style

_CSS = """
:root{--ink:#1f2328;--muted:#656d76;--line:#d0d7de;--soft:#f6f8fa;--accent:#0969da;
--held:#1a7f37;--held-bg:#dafbe1;--partly:#9a6700;--partly-bg:#fff8c5;--fell:#cf222e;--fell-bg:#ffebe9;
--unsup:#57606a;--unsup-bg:#eaeef2;--notest:#8250df;--notest-bg:#fbefff;}
*{box-sizing:border-box}
html{font-size:15px}
body{margin:0;color:var(--ink);background:#fff;line-height:1.5;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif;
-webkit-font-smoothing:antialiased}
code,.digest{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,"Liberation Mono",monospace;font-size:.88em}
.digest{word-break:break-all}
header,main,footer,nav.toc{max-width:1160px;margin:0 auto;padding:0 28px}
header{padding-top:28px;padding-bottom:8px}
.eyebrow{text-transform:uppercase;letter-spacing:.08em;font-size:.75rem;color:var(--muted);margin:0 0 6px}
h1{font-size:1.65rem;line-height:1.25;margin:0 0 16px;font-weight:650}
h2{font-size:1.3rem;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h2.mini{font-size:.8rem;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);border:0;margin:0 0 6px;padding:0}
h3{font-size:1.05rem;margin:20px 0 8px}
h4{font-size:.9rem;margin:16px 0 6px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
section{margin:34px 0}
section,article,figure,.card{scroll-margin-top:64px}
.meta{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0 0 16px;font-size:.93rem}
.meta dt{color:var(--muted)}.meta dd{margin:0}
.summary{display:flex;flex-wrap:wrap;gap:12px 40px;margin:8px 0}
.chips{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:8px 14px;align-items:center}
.chips li{display:flex;align-items:center;gap:6px}
.count{font-weight:650}
.synthetic-banner{background:repeating-linear-gradient(135deg,#fff1c2 0 14px,#ffe08a 14px 28px);color:#4d2d00;
border-bottom:3px solid #d4a72c;padding:12px 28px;text-align:center;font-size:1rem}
.synthetic-banner strong{font-size:1.15rem;letter-spacing:.12em;margin-right:6px}
nav.toc{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.96);border-bottom:1px solid var(--line);
padding-top:8px;padding-bottom:8px}
nav.toc ul{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:.85rem}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.lede{color:var(--muted);margin:0 0 14px;max-width:75ch}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:.78rem;font-weight:600;
white-space:nowrap;border:1px solid transparent;line-height:1.6;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.st-held,.run-pass,.review-approved,.ev-met{color:var(--held);background:var(--held-bg);border-color:#aceebb}
.st-partly_held,.run-pass_with_warnings,.ev-unmet{color:var(--partly);background:var(--partly-bg);border-color:#eed888}
.st-fell,.run-fail,.amend-post_hoc{color:var(--fell);background:var(--fell-bg);border-color:#ffcecb}
.st-unsupported,.ev-not_applicable,.amend-before_data{color:var(--unsup);background:var(--unsup-bg);border-color:#d0d7de}
.st-not_established{color:var(--notest);background:var(--notest-bg);border-color:#e9d2fd}
.review-pending_review{color:#953800;background:#fff1e5;border-color:#ffc680;border-style:dashed}
.flag-target{color:#fff;background:#d1242f}.flag-crosses{color:#fff;background:#cf222e}
.tag{display:inline-block;font-size:.72rem;color:var(--muted);border:1px solid var(--line);border-radius:4px;
padding:0 6px;margin-left:6px;vertical-align:middle;font-weight:500}
.tablewrap{overflow-x:auto;margin:6px 0 10px}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;vertical-align:top;padding:7px 10px;border-bottom:1px solid var(--line)}
thead th{background:var(--soft);font-weight:600;font-size:.8rem;text-transform:uppercase;letter-spacing:.04em;
color:var(--muted);border-bottom:2px solid var(--line)}
tbody tr:hover{background:#fbfcfd}
table.compact td,table.compact th{padding:4px 10px}
td{font-variant-numeric:tabular-nums}
table.ledger td.finding{max-width:46ch}
table.ledger td.why{color:#2f363d;max-width:50ch}
table.ledger th[scope=row]{white-space:nowrap}
table.ledger tr[data-status] td.status{white-space:nowrap}
.sub{margin-top:3px;font-size:.78rem;color:var(--muted)}
.sub .tag{margin-left:0;margin-right:4px}
.callout{border-radius:6px;padding:10px 14px;margin:0 0 14px;border:1px solid}
.callout.warn{background:#fff8c5;border-color:#d4a72c;color:#4d2d00}
.callout.ok{background:#f0fff4;border-color:#aceebb;color:#0f5323}
.none{color:var(--muted);font-style:italic}
.na{color:#6e5a00;background:#fffbe6;border:1px dashed #d4a72c;border-radius:6px;padding:10px 14px}
.review-note{margin:10px 0 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 16px;background:#fff;border-top-width:4px}
.card h3{margin:0 0 8px;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.run-pass.card{border-top-color:var(--held)}.run-pass_with_warnings.card{border-top-color:#d4a72c}
.run-fail.card{border-top-color:var(--fell)}
.card.run{color:var(--ink);background:#fff;border-left-color:var(--line);border-right-color:var(--line);border-bottom-color:var(--line)}
.warnings{margin:0;padding-left:20px}.warnings li{margin:4px 0}
article.claim{border:1px solid var(--line);border-left:5px solid var(--unsup);border-radius:8px;padding:4px 20px 14px;margin:18px 0}
article.claim[data-status=held]{border-left-color:var(--held)}
article.claim[data-status=partly_held]{border-left-color:#d4a72c}
article.claim[data-status=fell]{border-left-color:var(--fell)}
article.claim[data-status=not_established]{border-left-color:var(--notest)}
article.claim h3{display:flex;flex-wrap:wrap;align-items:center;gap:8px}
.hid{font-size:1.2rem}
blockquote{margin:8px 0;padding:8px 14px;background:var(--soft);border-left:3px solid var(--line);border-radius:0 6px 6px 0}
.mark.pass{color:var(--held);font-weight:600}.mark.fail{color:var(--fell);font-weight:600}.mark.na{color:var(--muted)}
.numbers{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:2px 18px;margin:0}
.numbers div{display:flex;justify-content:space-between;gap:10px;border-bottom:1px dotted var(--line);padding:3px 0}
.numbers dt{color:var(--muted)}.numbers dd{margin:0;font-variant-numeric:tabular-nums;font-weight:550}
.figlinks{font-size:.88rem}
figure{margin:18px 0 26px;padding:14px 16px;border:1px solid var(--line);border-radius:8px;background:#fff}
figcaption{font-size:.88rem;color:#2f363d;margin-top:8px;max-width:95ch}
.svgwrap svg.plot{display:block;width:100%;height:auto;margin:0 auto}
.evmatrix{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
table.matrix{width:auto}table.matrix th,table.matrix td{text-align:center;padding:4px 10px}
table.matrix td.ev{font-weight:700;min-width:34px}
td.ev-met{color:var(--held);background:var(--held-bg)}td.ev-unmet{color:var(--partly);background:var(--partly-bg)}
td.ev-not_applicable{color:var(--unsup);background:var(--soft)}td.ev-absent{background:#fff}
.evlegend{list-style:none;margin:4px 0;padding-left:0;font-size:.82rem;color:var(--muted);columns:2;column-gap:28px;flex:1;min-width:380px}
table.evidence td:first-child{width:2.5em;color:var(--muted)}
svg.plot *{stroke-linejoin:round;stroke-linecap:butt}
svg.plot image{image-rendering:pixelated}
svg.minibar{display:block}
details.top summary{cursor:pointer;color:var(--muted);font-size:.85rem;margin-top:10px}
footer{color:var(--muted);font-size:.82rem;border-top:1px solid var(--line);margin-top:40px;padding-top:12px;padding-bottom:40px}
@media print{nav.toc{display:none}figure,article.claim,.card{break-inside:avoid}}
"""
