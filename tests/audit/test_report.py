"""The HTML report: rendered from realistic audit outputs and opened in a real headless Chromium.

The browser tests drive Debian's ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` with
selenium (install both with ``tools/install-browser.sh``). They read the DOM as the browser built
it, the browser console (no SEVERE entry allowed) and the resource timing list (nothing fetched).
The inputs are synthetic but shaped like the two shipped studies: a routing study with a 40 x 256
all-expert baseline and one planted unit (L14E114), and an ablation study with 32 x 28 head slots,
109 headline and 7 control pairs, and the 1.5-logit threshold.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from audit.report import REPORT_NAME, render_report
from lockstep.errors import SchemaError, UsageError

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1600",
)
FIGURE_SECTIONS = ("sec-heatmap", "sec-strip", "sec-null", "sec-class-register", "sec-wsq")
NAMESPACE_URLS = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'

# ============================================================================================
# Inputs shaped like what the audit engine writes


EVIDENCE_NAMES = (
    "generation-side, not prefill-only",
    "localised to a named unit",
    "survives lexical controls",
    "separates prompt class from generated register",
    "reproduced under deterministic greedy decoding",
    "trimmed before special-token spill",
    "reports W/S/Q, not only an aggregate rank",
    "claim text does not read unit activity as subjective experience",
)


def _evidence(met: list[bool | None]) -> list[dict[str, Any]]:
    return [{"point": i + 1, "name": name, "met": m,
             "fact": {True: "checked and satisfied", False: "checked and not satisfied", None: "does not apply"}[m]}
            for i, (name, m) in enumerate(zip(EVIDENCE_NAMES, met))]


def _claim(hid: str, analysis: str, status: str, *, kind: str = "confirmatory", claim: str | None = None,
           reason: str = "", criteria: list[dict[str, Any]] | None = None, numbers: dict[str, Any] | None = None,
           review: str = "pending_review") -> dict[str, Any]:
    return {
        "hypothesis": hid, "claim": claim or f"{hid}: pre-registered claim tested by {analysis}.", "kind": kind,
        "analysis": analysis, "status": status, "reason": reason or f"{hid} is {status} by the frozen thresholds.",
        "review_status": review, "criteria": criteria or [],
        "evidence_standard": _evidence([True, True, True, False, True, True, True, None]),
        "numbers": numbers or {}, "parameters": [], "warnings": [],
    }


def _ledger(design: str, *, synthetic: bool, claims: list[dict[str, Any]], runs: list[dict[str, Any]],
            deviations: list[dict[str, Any]] | None = None, amendments: list[dict[str, Any]] | None = None,
            study_id: str = "e114-register", title: str = "L14E114 registered specificity test") -> dict[str, Any]:
    return {
        "schema_version": 1, "study_id": study_id, "title": title, "design": design, "synthetic": synthetic,
        "lock_digest": "3f" * 32, "generated_utc": "2026-06-08T12:00:00.000000Z",
        "tool_version": "0.1.0", "deviations": deviations or [], "amendments": amendments or [],
        "runs": runs, "claims": claims,
    }


def _write(report_dir: Path, ledger: dict[str, Any], tables: dict[str, pd.DataFrame]) -> Path:
    (report_dir / "tables").mkdir(parents=True, exist_ok=True)
    (report_dir / "ledger.json").write_text(json.dumps(ledger, indent=2), encoding="utf-8")
    for name, frame in tables.items():
        frame.to_parquet(report_dir / "tables" / f"{name}.parquet", index=False)
    return report_dir


def _baseline(analysis: str, n_layers: int, n_index: int, kind: str, planted: dict[str, float],
              rng: np.random.Generator) -> pd.DataFrame:
    layer, index = np.divmod(np.arange(n_layers * n_index), n_index)
    units = np.array([f"L{l}{kind}{i}" for l, i in zip(layer, index)])
    stat = rng.normal(0.0, 1.0, size=units.size)
    for unit, value in planted.items():
        stat[units == unit] = value
    p_unc = np.clip(np.exp(-0.9 * np.maximum(stat, 0.0) ** 1.6), 1e-9, 1.0)
    p_fwer = np.clip(p_unc * units.size, 5e-5, 1.0)
    rank = pd.Series(-stat).rank(method="max").to_numpy()
    return pd.DataFrame({"analysis_id": analysis, "unit": units, "layer": layer, "index": index, "statistic": stat,
                         "p_uncorrected": p_unc, "p_fwer": p_fwer, "rank": rank,
                         "is_target": np.isin(units, list(planted)[:2] if kind == "E" else list(planted))})


def routing_inputs(report_dir: Path, *, synthetic: bool = True, evil: str = "") -> Path:
    """The e114-register study after audit: 24 + 24 heldout prompts, one crossing NOFIRE prompt."""
    rng = np.random.default_rng(7)
    rows = []
    for run, shift in (("sampled", 0.0), ("greedy", 0.0006)):
        for i in range(24):
            fire_other = i in (5, 17)  # two FIRE prompts that came out technical: weak
            rows.append(("A1" if run == "sampled" else "A3", run, f"fire-{i + 9:03d}", "FIRE",
                         "other" if fire_other else "self_examination",
                         rng.normal(0.006, 0.002) if fire_other else rng.normal(0.067 + shift, 0.014), fire_other))
            crossing = i == 8  # the cat-purring control that entered the target register
            pid = f"nofire-{i + 9:03d}" + (evil if crossing else "")
            rows.append(("A1" if run == "sampled" else "A3", run, pid, "NOFIRE",
                         "self_examination" if crossing else "other",
                         rng.normal(0.041, 0.004) if crossing else abs(rng.normal(0.0031, 0.0012)), crossing))
    tv = pd.DataFrame(rows, columns=["analysis_id", "run", "prompt_id", "prompt_class", "register_label", "value",
                                     "crosses"])
    tv.insert(1, "unit", "L14E114" + evil)
    tv.insert(3, "zone", "trimmed")
    tv.insert(4, "metric", "W")
    tv["value"] = tv["value"].clip(lower=0.0)
    tv = pd.concat([tv[tv["analysis_id"] == "A1"], tv[tv["run"] == "sampled"].assign(analysis_id="A3"),
                    tv[tv["analysis_id"] == "A3"]], ignore_index=True)

    baseline = _baseline("A2", 40, 256, "E", {"L14E114": 9.1, "L26E114": 3.4, "L26E3": 4.1}, rng)
    null = pd.DataFrame({"analysis_id": "A2", "value": 3.6 + rng.gumbel(0.0, 0.35, size=19_999)})
    critical = float(np.quantile(null["value"], 0.95))
    sub = tv[tv["analysis_id"] == "A1"]
    cr = (sub.groupby(["prompt_class", "register_label"])["value"].agg(["size", "mean", "std"]).reset_index()
          .rename(columns={"size": "n", "std": "sd"}).assign(analysis_id="A6"))
    s = {"FIRE": 0.694, "NOFIRE": 0.048}
    q = {"FIRE": 0.120, "NOFIRE": 0.066}
    wsq = pd.DataFrame([{"analysis_id": "A5", "unit": "L14E114", "group": g, "W": s[g] * q[g], "S": s[g], "Q": q[g]}
                        for g in ("FIRE", "NOFIRE")])

    ratio = dict(name="min_ratio", threshold=5.0, observed=21.4, passed=True, text="FIRE/NOFIRE ratio ≥ 5")
    claims = [
        _claim("H1", "A1", "held", claim="L14E114 carries more trimmed W on FIRE than on matched NOFIRE." + evil,
               reason="ratio 21.4 ≥ 5, d 2.8 ≥ 0.8, p 5e-05 < 0.05" + evil,
               criteria=[ratio, dict(name="alpha", threshold=0.05, observed=5e-5, passed=True, text="p < alpha")],
               numbers={"ratio": 21.4, "cohen_d": 2.8, "p_value": 5e-05, "n_fire": 24, "n_nofire": 24}),
        _claim("H2", "A2", "held", reason="max-T adjusted p 5e-05 and rank 1 of 10,240",
               criteria=[dict(name="max_target_rank", threshold=10, observed=1, passed=True, text="rank ≤ 10")],
               numbers={"observed_statistic": 9.1, "critical_statistic": critical, "p_fwer": 5e-05, "rank": 1}),
        _claim("H3", "A3", "partly_held", reason="greedy d 2.1 is outside the d tolerance of 0.5"),
        _claim("H5", "A5", "held", kind="exploratory", reason="S share 0.86 ≥ 0.5"),
        _claim("H6", "A6", "not_established", kind="exploratory",
               reason="one discordant generation: register and class are confounded"),
        _claim("H7", "A7", "fell", kind="exploratory", reason="fell on the lexical control"),
        _claim("H8", "A8", "unsupported", kind="exploratory", reason="L26E114 measured on spill only"),
    ]
    runs = [{"run_id": "sampled", "status": "pass", "warnings": [], "claims": {}, "review_status": "pending_review"},
            {"run_id": "greedy", "status": "pass_with_warnings", "claims": {}, "review_status": "pending_review",
             "warnings": ["3 generations reached max_new_tokens without a trim token (X2)" + evil]}]
    deviations = [{"kind": "exclusion", "detail": "2 generations excluded under X3 (not English)" + evil}]
    amendments = [{"id": "AM1", "seen": "labels_frozen", "post_hoc": True, "reason": "rubric typo fixed after labelling"},
                  {"id": "AM0", "seen": "nothing_run", "post_hoc": False, "reason": "batch size lowered before capture"}]
    ledger = _ledger("routing", synthetic=synthetic, claims=claims, runs=runs, deviations=deviations,
                     amendments=amendments, title="L14E114 registered specificity test" + evil)
    return _write(report_dir, ledger, {"target_values": tv, "baseline": baseline, "null_distribution": null,
                                       "class_register": cr, "wsq": wsq})


def ablation_inputs(report_dir: Path) -> Path:
    """The l31h14-ablation study after audit: 109 headline and 7 control pairs, mean drop 1.32 < 1.5."""
    rng = np.random.default_rng(11)
    planted = {"L31H14": 7.5, "L23H0": 5.2, "L26H17": 4.8, "L19H11": 4.1, "L23H8": 3.9}
    baseline = _baseline("A0", 32, 28, "H", planted, rng)
    head_base = rng.normal(2.3, 0.6, size=109).clip(0.4)
    head_drop = rng.normal(1.32, 0.55, size=109)
    head_drop += 1.32 - head_drop.mean()
    ctrl_base = rng.normal(2.0, 0.5, size=7).clip(0.4)
    ctrl_drop = rng.normal(0.027, 0.03, size=7)
    pairs = pd.DataFrame({
        "analysis_id": "A1", "pair_id": [f"pair-{i:03d}" for i in range(116)],
        "pair_class": ["headline"] * 109 + ["control"] * 7,
        "baseline_margin": np.r_[head_base, ctrl_base], "drop": np.r_[head_drop, ctrl_drop]})
    pairs["ablated_margin"] = pairs["baseline_margin"] - pairs["drop"]
    claims = [_claim("H1", "A1", "partly_held", claim="Mean-ablating L31H14 + L23H0, L26H17, L19H11, L23H8 "
                     "(+ L27H11) lowers the headline logit-difference margin by at least 1.5 logits.",
                     reason="relative drop 0.574 and specificity ratio 49x, but the mean headline drop 1.320 "
                            "did not clear the 1.5-logit threshold",
                     criteria=[dict(name="min_mean_drop_logits", threshold=1.5, observed=1.32, passed=False,
                                    text="mean headline drop ≥ 1.5 logits")],
                     numbers={"mean_drop": 1.32, "relative_drop": 0.574, "specificity_ratio": 49.0}),
              _claim("H2", "A0", "held", kind="exploratory", reason="L31H14 ranks first of 896 slots")]
    runs = [{"run_id": "combined-ablation", "status": "pass_with_warnings", "claims": {}, "review_status": "pending_review",
             "warnings": ["mean headline drop 1.320 logits did not clear the preset 1.5-logit threshold"]}]
    ledger = _ledger("ablation", synthetic=False, claims=claims, runs=runs, study_id="l31h14-ablation",
                     title="L31H14+ factual-recall head-slot ablation")
    return _write(report_dir, ledger, {"baseline": baseline, "ablation_pairs": pairs})


# ============================================================================================
# A real browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Debian Chromium driven by chromedriver; fails (never skips) when they are missing."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run `tools/install-browser.sh` (needs root or sudo)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver, path: Path) -> list[dict[str, Any]]:
    """Load ``path`` from ``file://``; return the console entries this page produced."""
    driver.get_log("browser")  # drop what an earlier page left
    driver.get(path.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    assert driver.current_url.startswith("file://")
    return driver.get_log("browser")


def _severe(entries: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in entries if e.get("level") == "SEVERE"]


_EXTERNAL_JS = r"""
const bad = [];
const ext = /^\s*(https?:)?\/\//i, css = /url\(\s*['"]?\s*(https?:)?\/\/|@import/i;
for (const el of document.querySelectorAll('*')) {
  for (const a of el.attributes) {
    if (a.name.toLowerCase().startsWith('xmlns')) continue;
    if (ext.test(a.value) || css.test(a.value)) bad.push(el.tagName + ' ' + a.name + '=' + a.value.slice(0, 80));
  }
}
for (const s of document.querySelectorAll('style')) if (css.test(s.textContent)) bad.push('style element');
return {bad: bad, fetched: performance.getEntriesByType('resource').map(r => r.name),
        scripts: document.scripts.length};
"""


def _assert_offline(driver) -> None:
    found = driver.execute_script(_EXTERNAL_JS)
    assert found["bad"] == [], found["bad"]
    assert found["fetched"] == [], found["fetched"]
    assert found["scripts"] == 0


def _section_ids(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('main > section')].map(s => s.id)")


def _figure_svg(driver, fig_id: str) -> dict[str, Any]:
    return driver.execute_script(
        """const f = document.getElementById(arguments[0]);
           if (!f) return null;
           const svg = f.querySelector('svg'); if (!svg) return {svg: false};
           const r = svg.getBoundingClientRect();
           return {svg: true, tag: f.tagName, width: r.width, height: r.height, text: svg.textContent,
                   caption: (f.querySelector('figcaption') || {}).textContent};""", fig_id)


# ============================================================================================
# Browser tests


def test_routing_report_in_browser(browser, tmp_path: Path) -> None:
    out = render_report(routing_inputs(tmp_path / "report", evil=EVIL))
    assert out == tmp_path / "report" / REPORT_NAME
    assert _severe(_open(browser, out)) == []
    _assert_offline(browser)
    assert browser.title.startswith("[SYNTHETIC]")

    banner = browser.find_element("id", "synthetic-banner")
    assert banner.is_displayed() and "SYNTHETIC" in banner.text
    assert browser.execute_script("return document.body.firstElementChild.id") == "synthetic-banner"

    # Deviations and post-hoc amendments come first, then the ledger, run cards, claims, figures.
    assert _section_ids(browser) == ["sec-deviations", "sec-ledger", "sec-runs", "sec-claims", *FIGURE_SECTIONS]
    dev, led = (browser.find_element("id", s) for s in ("sec-deviations", "sec-ledger"))
    assert dev.rect["y"] < led.rect["y"]
    assert "post_hoc" in browser.find_element("id", "amendments").text
    assert EVIL in browser.find_element("id", "deviations").text  # shown as text, not run

    # The ledger: one row per claim, the status word and the reason on each.
    ledger = json.loads((tmp_path / "report" / "ledger.json").read_text())
    rows = browser.find_elements("css selector", "#ledger tbody tr")
    assert len(rows) == len(ledger["claims"])
    for row, claim in zip(rows, ledger["claims"]):
        cells = row.find_elements("css selector", "th, td")
        assert cells[0].text == claim["hypothesis"]
        assert cells[2].text == claim["status"]
        assert cells[3].text == claim["reason"]
        assert cells[4].text == "pending_review"
    colours = {row.get_attribute("data-status"): row.find_element("css selector", ".badge").value_of_css_property(
        "background-color") for row in rows}
    assert len(set(colours.values())) == 5  # a colour per status

    # Run cards and review status.
    card = browser.find_element("id", "run-greedy")
    assert "pass_with_warnings" in card.text and "max_new_tokens" in card.text
    assert "pending_review" in browser.find_element("id", "sec-runs").text

    # Per-claim detail: criteria and the eight evidence-standard points.
    h1 = browser.find_element("id", "claim-H1")
    assert "min_ratio" in h1.text and "✓ passed" in h1.text
    points = h1.find_elements("css selector", "table.evidence tbody tr")
    assert [p.find_element("css selector", ".badge").text for p in points] == \
        ["met", "met", "met", "unmet", "met", "met", "met", "not applicable"]

    # Every figure is there, holds a rendered <svg>, and marks what it should.
    for fig_id in ("fig-heatmap-A2", "fig-strip-A1", "fig-strip-A3", "fig-null-A2", "fig-class-register-A6",
                   "fig-wsq-A5"):
        fig = _figure_svg(browser, fig_id)
        assert fig is not None, fig_id
        assert fig["svg"] and fig["tag"] == "FIGURE", fig_id
        assert fig["width"] > 100 and fig["height"] > 10, (fig_id, fig)
        assert fig["caption"], fig_id
    heat = _figure_svg(browser, "fig-heatmap-A2")
    assert "L14E114" in heat["text"] and "rank 1" in heat["text"]
    ring = browser.find_element("id", "fig-heatmap-A2-target-L14E114")
    assert ring.is_displayed()
    assert "L14E114" in browser.find_element("id", "top-units-A2").text
    strip = _figure_svg(browser, "fig-strip-A1")
    assert "nofire-017" in strip["text"]  # the crossing prompt is named on the plot
    assert browser.find_elements("css selector", "#fig-strip-A1 [id*='cross-nofire-017']")
    null = _figure_svg(browser, "fig-null-A2")
    assert "observed 9.1" in null["text"] and "critical" in null["text"]
    assert "crosses" in browser.find_element("id", "class-register-A6").text

    png = tmp_path / "report.png"
    assert browser.save_screenshot(str(png)) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ablation_report_in_browser(browser, tmp_path: Path) -> None:
    out = render_report(ablation_inputs(tmp_path / "report"))
    assert _severe(_open(browser, out)) == []
    _assert_offline(browser)
    assert browser.find_elements("id", "synthetic-banner") == []
    assert _section_ids(browser) == ["sec-deviations", "sec-ledger", "sec-runs", "sec-claims", *FIGURE_SECTIONS,
                                     "sec-ablation"]
    assert "no deviations" in browser.find_element("id", "sec-deviations").text
    assert browser.find_element("id", "deviations-none").text == "Deviations: none."

    row = browser.find_element("css selector", "#ledger tbody tr[data-hypothesis='H1']")
    assert row.find_element("css selector", "td.status").text == "partly_held"
    assert "1.5-logit threshold" in browser.find_element("id", "run-combined-ablation").text

    heat = _figure_svg(browser, "fig-heatmap-A0")
    assert heat["svg"] and "L31H14" in heat["text"] and "head" in heat["text"]
    for unit in ("L31H14", "L23H0", "L26H17", "L19H11", "L23H8"):
        assert browser.find_element("id", f"fig-heatmap-A0-target-{unit}")
    drops = _figure_svg(browser, "fig-ablation-A1")
    assert drops["svg"] and "threshold 1.5" in drops["text"] and "mean 1.32" in drops["text"]
    assert browser.find_element("id", "fig-ablation-A1-threshold")
    summary = browser.find_element("id", "ablation-summary-A1").text
    assert "headline" in summary and "109" in summary and "control" in summary
    for sid in ("sec-strip", "sec-null", "sec-class-register", "sec-wsq"):
        assert "Not available for this study" in browser.find_element("id", sid).text


def test_missing_tables_say_not_available_in_browser(browser, tmp_path: Path) -> None:
    report = routing_inputs(tmp_path / "report", synthetic=False)
    shutil.rmtree(report / "tables")
    out = render_report(report)
    assert _severe(_open(browser, out)) == []
    _assert_offline(browser)
    assert browser.find_elements("id", "synthetic-banner") == []
    assert browser.find_elements("css selector", "figure") == []
    for sid in FIGURE_SECTIONS:
        text = browser.find_element("id", sid).text
        assert "Not available for this study" in text and ".parquet was not written" in text
    assert len(browser.find_elements("css selector", "#ledger tbody tr")) == 7


# ============================================================================================
# Pure-Python tests


def test_user_text_is_escaped(tmp_path: Path) -> None:
    page = render_report(routing_inputs(tmp_path, evil=EVIL)).read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert re.search(r"<[a-z][^>]*\son\w+\s*=", page, flags=re.I) is None  # no element has an event handler
    assert page.count("&lt;script&gt;") >= 6  # title, claim, reason, deviation, warning, plot text...
    svg = re.search(r'<figure id="fig-strip-A1".*?</figure>', page, flags=re.S).group(0)
    assert "&lt;script&gt;" in svg  # the prompt id drawn in the plot is escaped too


def test_prompt_ids_with_dollars_are_not_mathtext(tmp_path: Path) -> None:
    page = render_report(routing_inputs(tmp_path, evil=" $x^2$ \\alpha")).read_text(encoding="utf-8")
    svg = re.search(r'<figure id="fig-strip-A1".*?<figcaption>', page, flags=re.S).group(0)
    assert ">nofire-017 $x^2$ \\alpha</text>" in svg  # drawn as written, not as math


def test_report_is_deterministic_atomic_and_small(tmp_path: Path) -> None:
    report = routing_inputs(tmp_path)
    first = render_report(report).read_bytes()
    second = render_report(report).read_bytes()
    assert first == second
    assert sorted(p.name for p in report.iterdir()) == ["ledger.json", REPORT_NAME, "tables"]  # no temp left
    assert len(first) < 3 * 1024 * 1024
    urls = set(re.findall(rb"https?://[^\s\"'<>)]+", first))
    assert {u.decode() for u in urls} <= NAMESPACE_URLS


def test_units_outside_the_family_and_missing_flags_render(tmp_path: Path) -> None:
    report = routing_inputs(tmp_path)
    base = pd.read_parquet(report / "tables" / "baseline.parquet")
    base.loc[base["layer"] == 0, ["rank", "p_fwer"]] = np.nan  # layer 0 left out of the family
    base["is_target"] = base["is_target"].astype(object).where(base["unit"] != "L26E114", None)
    base.to_parquet(report / "tables" / "baseline.parquet")
    tv = pd.read_parquet(report / "tables" / "target_values.parquet")
    tv["crosses"] = tv["crosses"].astype(object).where(~tv["crosses"], None)  # no prompt flagged as crossing
    tv.to_parquet(report / "tables" / "target_values.parquet")
    page = render_report(report).read_text(encoding="utf-8")
    assert 'id="fig-heatmap-A2-target-L14E114"' in page
    assert 'id="fig-heatmap-A2-target-L26E114"' not in page
    assert "cross-nofire-017" not in page
    assert "their class was built to elicit are ringed and named: none." in page


def test_missing_ledger_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"ledger\.json does not exist"):
        render_report(tmp_path)
    with pytest.raises(UsageError, match=r"does not exist"):
        render_report(tmp_path / "nowhere")


def test_bad_ledger_and_bad_table_list_every_problem(tmp_path: Path) -> None:
    report = routing_inputs(tmp_path)
    ledger = json.loads((report / "ledger.json").read_text())
    ledger["claims"][0]["status"] = "proved"
    ledger["runs"][0]["status"] = "ok"
    (report / "ledger.json").write_text(json.dumps(ledger))
    pd.read_parquet(report / "tables" / "wsq.parquet").drop(columns=["Q"]).to_parquet(report / "tables" / "wsq.parquet")
    with pytest.raises(SchemaError, match=r"3 problems") as info:
        render_report(report)
    text = str(info.value)
    assert "ledger.json /claims/0/status: 'proved' is not allowed; expected one of 'held'" in text
    assert "ledger.json /runs/0/status" in text
    assert "tables/wsq.parquet /: is missing column(s) Q" in text
    assert not (report / REPORT_NAME).exists()
