"""The write-up check: every number a Markdown write-up quotes, traced to the study's ledger.

A researcher's write-up quotes numbers ("ratio 21.68x, Cohen's d 2.94, 75 / 108 tokens"). Each number
either matches a ledger value at its printed rounding (the check says which value: its path in
``ledger.json``), or is reported as untraceable. Arithmetic the write-up states is checked too:
``a / b = c`` and ``a × b = c`` at c's printed rounding, a fraction ``k / n`` followed by a percentage
``(p%)``, and, where the write-up quotes a claim's two means and its ratio, the ratio against the means.

What is a number here: a run of digits with an optional sign, decimal part, exponent, percent sign or
``x``/``×`` suffix, standing apart from letters (``L1E5``, ``H1``, ``fire-03`` and ISO dates are names,
not numbers); list markers (``1.`` at the start of a line) and heading levels are skipped, and so is
anything between ``<!-- lockstep: ignore -->`` and ``<!-- lockstep: end -->``.

The citation draft (:func:`cite`) builds the journal's "recommended citation sentence" from the ledger
alone: claim, status, the primary numbers, the lock digest and the scope the evidence standard gives.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = ["Quoted", "Check", "WriteupReport", "check_writeup", "cite", "ledger_values"]

_NUMBER = re.compile(
    r"(?<![\w.\-/])(?P<sign>[-−])?(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?(?P<unit>%|x\b|×)?(?![\w\-]|\.\d)")
_IGNORE = re.compile(r"<!--\s*lockstep:\s*ignore\s*-->.*?<!--\s*lockstep:\s*end\s*-->", re.S)
_LIST_MARKER = re.compile(r"^(\s*)(\d+)([.)])(\s)", re.M)
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ][\d:.]+Z?)?\b")
_NUM = r"[-−]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_DIVISION = re.compile(rf"(?P<a>{_NUM})\s*/\s*(?P<b>{_NUM})\s*=\s*(?P<c>{_NUM})")
_PRODUCT = re.compile(rf"(?P<a>{_NUM})\s*[×*]\s*(?P<b>{_NUM})\s*=\s*(?P<c>{_NUM})")
_FRACTION_PCT = re.compile(rf"(?P<a>\d+)\s*/\s*(?P<b>\d+)\D{{0,12}}?\(\s*(?P<c>{_NUM})\s*%\s*\)")


@dataclass(frozen=True)
class Quoted:
    """One number of the write-up: as printed, its value, the decimals printed, line and column."""

    text: str
    value: float
    decimals: int
    percent: bool
    line: int
    column: int


@dataclass(frozen=True)
class Check:
    """One arithmetic statement of the write-up and whether it holds at its printed rounding."""

    text: str
    line: int
    holds: bool
    detail: str


@dataclass
class WriteupReport:
    matched: list[tuple[Quoted, str, float]] = field(default_factory=list)   # number, ledger path, ledger value
    untraceable: list[Quoted] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.untraceable and all(c.holds for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok,
                "matched": [{"number": q.text, "line": q.line, "ledger": path, "value": value} for q, path, value in self.matched],
                "untraceable": [{"number": q.text, "line": q.line, "column": q.column} for q in self.untraceable],
                "arithmetic": [{"statement": c.text, "line": c.line, "holds": c.holds, "detail": c.detail} for c in self.checks]}

    def render(self) -> str:
        lines = [f"{len(self.matched)} number(s) traced to the ledger, {len(self.untraceable)} untraceable, "
                 f"{sum(not c.holds for c in self.checks)} of {len(self.checks)} arithmetic statement(s) do not hold"]
        for q in self.untraceable:
            lines.append(f"  UNTRACEABLE line {q.line}:{q.column}: {q.text} matches no ledger value at its printed rounding")
        for c in self.checks:
            if not c.holds:
                lines.append(f"  ARITHMETIC line {c.line}: {c.text}: {c.detail}")
        for q, path, value in self.matched:
            lines.append(f"  ok line {q.line}: {q.text} = {path} ({value:.6g})")
        return "\n".join(lines)


def ledger_values(ledger: dict) -> list[tuple[str, float]]:
    """Every finite number in the ledger with its JSON path (booleans are not numbers; "inf" strings are skipped)."""
    out: list[tuple[str, float]] = []

    def walk(node, path: str) -> None:
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, (int, float)):
            if math.isfinite(node):
                out.append((path, float(node)))
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk({k: v for k, v in ledger.items() if k not in ("generated_utc", "schema_version")}, "")
    return out


def _parse_number(match: re.Match) -> tuple[float, int]:
    body = match.group("body").replace(",", "")
    decimals = len(body.split(".")[1]) if "." in body else 0
    text = ("-" if match.group("sign") else "") + body + (match.group("exp") or "")
    if match.group("exp"):
        decimals = -Decimal(text).as_tuple().exponent if "." in body else -int(match.group("exp")[1:])
    return float(text), decimals


def _quoted(text: str) -> list[Quoted]:
    blanked = _IGNORE.sub(lambda m: " " * len(m.group(0)), text)
    blanked = _DATE.sub(lambda m: " " * len(m.group(0)), blanked)
    blanked = _LIST_MARKER.sub(lambda m: m.group(1) + " " * (len(m.group(2)) + 1) + m.group(4), blanked)
    # heading markers and a section number after them ("## 2.1 Results")
    blanked = re.sub(r"^#+\s*(?:\d+(?:\.\d+)*\.?(?=\s))?", lambda m: " " * len(m.group(0)), blanked, flags=re.M)
    out = []
    for lineno, line in enumerate(blanked.splitlines(), 1):
        for m in _NUMBER.finditer(line):
            value, decimals = _parse_number(m)
            out.append(Quoted(m.group(0), value, decimals, m.group("unit") == "%", lineno, m.start() + 1))
    return out


def _rounds_to(value: float, printed: float, decimals: int) -> bool:
    """``value`` printed with ``decimals`` places (negative: a power of ten) reads ``printed``."""
    half = 0.5 * 10.0 ** (-decimals)
    return abs(value - printed) <= half * (1 + 1e-9) + 1e-15


def _significant(value: float, printed: float, text: str) -> bool:
    """``value`` at the significant figures ``text`` shows (0.0006495 has 4): how the ledger prints p."""
    digits = re.sub(r"[^\d]", "", text.split("e")[0].split("E")[0]).lstrip("0")
    if not digits or value == 0:
        return False
    figures = len(digits)
    return float(f"{value:.{figures}g}") == float(f"{printed:.{figures}g}")


def _match(q: Quoted, values: list[tuple[str, float]]) -> tuple[str, float] | None:
    candidates = []
    for path, value in values:
        if q.percent:
            hit = _rounds_to(100 * value, q.value, q.decimals) or _rounds_to(value, q.value, q.decimals)
        else:
            hit = _rounds_to(value, q.value, q.decimals) or _significant(value, q.value, q.text)
        if hit:
            candidates.append((path, value))
    if not candidates:
        return None
    # the closest value, then a claim's own number over a run card's, then the shortest path
    return min(candidates, key=lambda pv: (abs(pv[1] * (100 if q.percent and abs(pv[1]) <= 1 else 1) - q.value),
                                           not pv[0].startswith("claims"), len(pv[0])))


def _arithmetic(text: str) -> list[Check]:
    checks = []
    for lineno, line in enumerate(_IGNORE.sub("", text).splitlines(), 1):
        for pattern, op, symbol in ((_DIVISION, lambda a, b: a / b if b else math.nan, "/"),
                                    (_PRODUCT, lambda a, b: a * b, "×")):
            for m in pattern.finditer(line):
                a, b = (float(m.group(k).replace("−", "-")) for k in ("a", "b"))
                c_text = m.group("c").replace("−", "-")
                c = float(c_text)
                decimals = len(c_text.split(".")[1]) if "." in c_text else 0
                got = op(a, b)
                holds = bool(math.isfinite(got) and _rounds_to(got, c, decimals))
                checks.append(Check(m.group(0), lineno, holds, f"{a:g} {symbol} {b:g} = {got:.6g}, printed {c_text}"))
        for m in _FRACTION_PCT.finditer(line):
            a, b = int(m.group("a")), int(m.group("b"))
            c_text = m.group("c")
            decimals = len(c_text.split(".")[1]) if "." in c_text else 0
            got = 100 * a / b if b else math.nan
            holds = bool(math.isfinite(got) and _rounds_to(got, float(c_text), decimals))
            checks.append(Check(m.group(0), lineno, holds, f"{a}/{b} = {got:.6g}%, printed {c_text}%"))
    return checks


def _ratio_checks(report: WriteupReport) -> list[Check]:
    """A claim whose mean_a, mean_b and ratio the write-up all quotes: the quoted ratio against the quoted means."""
    by_claim: dict[str, dict[str, Quoted]] = {}
    for q, path, _ in report.matched:
        m = re.fullmatch(r"(claims\[\d+\])\.numbers\.(mean_a|mean_b|ratio)", path)
        if m:
            by_claim.setdefault(m.group(1), {})[m.group(2)] = q
    checks = []
    for claim, found in by_claim.items():
        if len(found) == 3 and found["mean_b"].value:
            got = found["mean_a"].value / found["mean_b"].value
            # the quoted means are themselves rounded: the ratio may differ by what their rounding allows
            lo_a, hi_a = found["mean_a"].value - 0.5 * 10 ** -found["mean_a"].decimals, found["mean_a"].value + 0.5 * 10 ** -found["mean_a"].decimals
            lo_b, hi_b = found["mean_b"].value - 0.5 * 10 ** -found["mean_b"].decimals, found["mean_b"].value + 0.5 * 10 ** -found["mean_b"].decimals
            low, high = (lo_a / hi_b, hi_a / lo_b) if lo_b > 0 else (-math.inf, math.inf)
            r = found["ratio"]
            half = 0.5 * 10 ** -r.decimals
            holds = low - half <= r.value <= high + half
            checks.append(Check(f"{claim}: ratio {r.text} from means {found['mean_a'].text} / {found['mean_b'].text}", r.line, holds,
                                f"{found['mean_a'].text} / {found['mean_b'].text} = {got:.6g} (between {low:.6g} and {high:.6g} "
                                f"given the means' rounding), printed {r.text}"))
    return checks


def check_writeup(text: str, ledger: dict) -> WriteupReport:
    """Trace every number of ``text`` (Markdown) to ``ledger`` and check its stated arithmetic."""
    values = ledger_values(ledger)
    report = WriteupReport()
    arithmetic = _arithmetic(text)
    derived = {(c.line, part) for c in arithmetic for part in re.findall(_NUM, c.text)}
    for q in _quoted(text):
        found = _match(q, values)
        if found:
            report.matched.append((q, *found))
        elif (q.line, q.text.rstrip("%x×")) not in derived:  # a number inside a stated computation is checked there
            report.untraceable.append(q)
    report.checks = arithmetic + _ratio_checks(report)
    return report


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cite(ledger: dict, hypothesis: str | None = None) -> list[str]:
    """The citation sentence of each claim (or of ``hypothesis``), every number taken from the ledger."""
    out = []
    for claim in ledger["claims"]:
        if hypothesis and claim["hypothesis"] != hypothesis:
            continue
        n = claim["numbers"]
        parts = []
        for key, label in (("ratio", "ratio"), ("cohen_d", "Cohen's d"), ("p_value", "p"), ("target_rank", "rank"),
                           ("family_size", "of"), ("mean_drop", "mean drop"), ("register_effect", "register effect"),
                           ("s_share", "S share")):
            if n.get(key) is not None and not isinstance(n[key], bool):
                parts.append(f"{label} {_fmt(n[key])}")
        met = [p["name"] for p in claim["evidence_standard"] if p["met"] is True]
        unmet = [p["name"] for p in claim["evidence_standard"] if p["met"] is False]
        scope = (f"evidence standard met on {len(met)} point(s)" + (f"; not met: {', '.join(unmet)}" if unmet else ""))
        synthetic = " (synthetic study: about the toolkit, not a real model)" if ledger.get("synthetic") else ""
        out.append(f"In the preregistered study {ledger['study_id']!r}{synthetic} (lock {ledger['lock_digest'][:12]}, "
                   f"lockstep {ledger['tool_version']}), {claim['hypothesis']} ({claim['kind']}: \"{claim['claim']}\") "
                   f"was {claim['status']}" + (f": {', '.join(parts)}" if parts else "") + f"; {scope}.")
    return out
