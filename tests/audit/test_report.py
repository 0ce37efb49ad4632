"""The HTML report: rendered from realistic audit outputs and opened in a real headless Chromium.

The browser tests drive Debian's ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` with
selenium (install both with ``tools/install-browser.sh``). They read the DOM as the browser built
it, the browser console (no SEVERE entry allowed), the resource timing list (nothing fetched) and the
layout (bounding boxes: no two elements of the page overlap). The inputs:

* hand-built report folders shaped like the two shipped studies: a routing study with a 40 x 256
  all-expert baseline and one planted unit (L14E114), and an ablation study with 32 x 28 head slots,
  109 headline and 7 control pairs, and the 1.5-logit threshold;
* (in ``tests/audit/test_pipeline.py``) the real ``demo`` study run through the CLI, to check the
  report's crossing marks and first screen against what the audit and the journal actually wrote.

Every number the page shows in its data sections must be a number of ``ledger.json`` or of the tables
(``_page_numbers`` / ``_source_numbers``): a p-value recomputed by the page as (k + 1)/(n + 1) would
not be found.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from audit.report import REPORT_NAME, ReportContext, render_report
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
ROUTING_SECTIONS = ("sec-heatmap", "sec-strip", "sec-null", "sec-class-register", "sec-wsq", "sec-contexts")
ABLATION_SECTIONS = ("sec-heatmap", "sec-null", "sec-ablation")
LEADING = ("sec-deviations", "sec-ledger", "sec-runs", "sec-claims")
NAMESPACE_URLS = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
TARGET_REGISTER = "self_examination"

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
           review: str = "pending_review", spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "hypothesis": hid, "claim": claim or f"{hid}: pre-registered claim tested by {analysis}.", "kind": kind,
        "analysis": analysis, "status": status, "reason": reason or f"{hid} is {status} by the frozen thresholds.",
        "review_status": review, "criteria": criteria or [],
        "evidence_standard": _evidence([True, True, True, False, True, True, True, None]),
        "numbers": numbers or {}, "parameters": [], "warnings": [],
        "analysis_spec": {"id": analysis, **(spec or {})},
    }


def _ledger(design: str, *, synthetic: bool, claims: list[dict[str, Any]], runs: list[dict[str, Any]],
            deviations: list[dict[str, Any]] | None = None, amendments: list[dict[str, Any]] | None = None,
            study_id: str = "e114-register", title: str = "L14E114 registered specificity test",
            evidence: dict[str, str] | None = None) -> dict[str, Any]:
    ledger = {
        "schema_version": 1, "study_id": study_id, "title": title, "design": design, "synthetic": synthetic,
        "lock_digest": "3f" * 32, "generated_utc": "2026-06-08T12:00:00.000000Z",
        "tool_version": "0.1.0", "deviations": deviations or [], "amendments": amendments or [],
        "runs": runs, "claims": claims,
    }
    if evidence:
        ledger["evidence"] = evidence
    return ledger


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


def _crosses(prompt_class: pd.Series, register: pd.Series) -> np.ndarray:
    """The study's definition, written out here independently: the register is not the one the class was
    built to elicit (FIRE -> the target register, any other class -> any other register)."""
    return ((prompt_class == "FIRE").to_numpy() != (register == TARGET_REGISTER).to_numpy())


def routing_inputs(report_dir: Path, *, synthetic: bool = True, evil: str = "") -> Path:
    """The e114-register study after audit: 24 + 24 heldout prompts, one crossing NOFIRE prompt and two FIRE
    prompts that came out in the other register."""
    rng = np.random.default_rng(7)
    rows = []
    for run, shift in (("sampled", 0.0), ("greedy", 0.0006)):
        for i in range(24):
            fire_other = i in (5, 17)  # two FIRE prompts that came out technical: they cross their class
            rows.append(("A1" if run == "sampled" else "A3", run, f"fire-{i + 9:03d}", "FIRE",
                         "other" if fire_other else TARGET_REGISTER,
                         rng.normal(0.006, 0.002) if fire_other else rng.normal(0.067 + shift, 0.014)))
            crossing = i == 8  # the cat-purring control that entered the target register
            pid = f"nofire-{i + 9:03d}" + (evil if crossing else "")
            rows.append(("A1" if run == "sampled" else "A3", run, pid, "NOFIRE",
                         TARGET_REGISTER if crossing else "other",
                         rng.normal(0.041, 0.004) if crossing else abs(rng.normal(0.0031, 0.0012))))
    tv = pd.DataFrame(rows, columns=["analysis_id", "run", "prompt_id", "prompt_class", "register_label", "value"])
    tv["crosses"] = _crosses(tv["prompt_class"], tv["register_label"])
    tv.insert(1, "unit", "L14E114" + evil)
    tv.insert(3, "zone", "trimmed")
    tv.insert(4, "metric", "W")
    tv["value"] = tv["value"].clip(lower=0.0)
    tv = pd.concat([tv[tv["analysis_id"] == "A1"], tv[tv["run"] == "sampled"].assign(analysis_id="A3"),
                    tv[tv["analysis_id"] == "A3"]], ignore_index=True)

    baseline = _baseline("A2", 40, 256, "E", {"L14E114": 9.1, "L26E114": 3.4, "L26E3": 4.1}, rng)
    null = pd.concat([pd.DataFrame({"analysis_id": "A2", "value": 3.6 + rng.gumbel(0.0, 0.35, size=19_999)}),
                      pd.DataFrame({"analysis_id": "A1", "value": rng.standard_t(30, size=9_999)})])
    critical = float(np.quantile(null.loc[null["analysis_id"] == "A2", "value"], 0.95))
    sub = tv[tv["analysis_id"] == "A1"]
    cr = (sub.groupby(["prompt_class", "register_label"])["value"].agg(["size", "mean", "std"]).reset_index()
          .rename(columns={"size": "n", "std": "sd"}).assign(analysis_id="A6"))
    cr["crosses"] = _crosses(cr["prompt_class"], cr["register_label"])
    s = {"FIRE": 0.694, "NOFIRE": 0.048}
    q = {"FIRE": 0.120, "NOFIRE": 0.066}
    wsq = pd.DataFrame([{"analysis_id": "A5", "unit": "L14E114", "group": g, "W": s[g] * q[g], "S": s[g], "Q": q[g],
                         "W_ci_low": s[g] * q[g] * 0.8, "W_ci_high": s[g] * q[g] * 1.2, "S_ci_low": s[g] * 0.9,
                         "S_ci_high": s[g] * 1.1, "Q_ci_low": q[g] * 0.85, "Q_ci_high": q[g] * 1.15}
                        for g in ("FIRE", "NOFIRE")])
    crossing_a1 = ", ".join(sub.loc[sub["crosses"], "prompt_id"])

    groups = {"by": "prompt_class", "a": "FIRE", "b": "NOFIRE"}
    ratio = dict(name="min_ratio", threshold=5.0, observed=21.4, passed=True, text="FIRE/NOFIRE ratio ≥ 5")
    fire, nofire = sub[sub["prompt_class"] == "FIRE"], sub[sub["prompt_class"] == "NOFIRE"]
    claims = [
        _claim("H1", "A1", "held", claim="L14E114 carries more trimmed W on FIRE than on matched NOFIRE." + evil,
               reason="ratio 21.4 ≥ 5, d 2.8 ≥ 0.8, p 0.0006495 < 0.05" + evil,
               criteria=[ratio, dict(name="alpha", threshold=0.05, observed=0.0006495052934681418, passed=True,
                                     text="p < alpha")],
               numbers={"ratio": 21.4, "cohen_d": 2.8, "p_value": 0.0006495052934681418, "n_a": len(fire),
                        "n_b": len(nofire), "mean_a": float(fire["value"].mean()), "mean_b": float(nofire["value"].mean()),
                        "observed_statistic": 4.19733540436221, "critical_statistic": 1.717, "exact": False,
                        "n_relabelings": 9999, "resampling": "permutation", "null": "exchangeable",
                        "crossing_prompts": crossing_a1},
               spec={"kind": "two_group", "run": "sampled", "groups": groups, "statistic": "welch_t", "tails": "greater"}),
        _claim("H2", "A2", "held", reason="max-T adjusted p 0.008898 and rank 1 of 10,240",
               criteria=[dict(name="max_target_rank", threshold=10, observed=1, passed=True, text="rank ≤ 10")],
               numbers={"observed_statistic": 9.1, "critical_statistic": critical, "target_p_corrected": 0.008898222520513543,
                        "rank": 1, "family_size": 10240, "n_relabelings": 19999, "correction": "maxT_stepdown",
                        "best_unit": "L14E114", "exact": False},
               spec={"kind": "all_unit_baseline", "run": "sampled", "groups": groups}),
        _claim("H3", "A3", "partly_held", reason="greedy d 2.1 is outside the d tolerance of 0.5",
               spec={"kind": "reproduction", "runs": ["sampled", "greedy"], "groups": groups}),
        _claim("H5", "A5", "held", kind="exploratory", reason="S share 0.86 ≥ 0.5",
               spec={"kind": "wsq_decomposition", "run": "sampled"}),
        _claim("H6", "A6", "not_established", kind="exploratory",
               reason="one discordant generation: register and class are confounded",
               numbers={"crossing_prompts": crossing_a1},
               spec={"kind": "register_vs_class", "run": "sampled", "classes": {"a": "FIRE", "b": "NOFIRE"},
                     "register": {"target": TARGET_REGISTER, "other": "other"}}),
        _claim("H7", "A7", "fell", kind="exploratory", reason="fell on the lexical control",
               spec={"kind": "two_group", "run": "sampled"}),
        _claim("H8", "A8", "unsupported", kind="exploratory", reason="L26E114 measured on spill only",
               spec={"kind": "two_group", "run": "greedy"}),
    ]
    runs = [{"run_id": "sampled", "status": "pass", "warnings": [], "claims": {}, "review_status": "pending_review"},
            {"run_id": "greedy", "status": "pass_with_warnings", "claims": {}, "review_status": "pending_review",
             "warnings": ["3 generations reached max_new_tokens without a trim token (X2)" + evil]}]
    deviations = [{"kind": "exclusion", "detail": "2 generations excluded under X3 (not English)" + evil},
                  {"kind": "runtime", "run": "greedy", "field": "/runtime/batch_size", "preregistered": 8, "actual": 4,
                   "detail": "run greedy: /runtime/batch_size: preregistered 8, actual 4"},
                  {"kind": "runtime", "run": "sampled", "field": "/model/revision", "preregistered": "0f3c9e1",
                   "actual": "unverifiable local folder (pin /model/weights_sha256 to name it by its content)",
                   "detail": "run sampled: /model/revision"}]
    amendments = [{"id": "AM1", "seen": "labels_frozen", "post_hoc": True, "reason": "rubric typo fixed after labelling"},
                  {"id": "AM0", "seen": "nothing_run", "post_hoc": False, "reason": "batch size lowered before capture"}]
    ledger = _ledger("routing", synthetic=synthetic, claims=claims, runs=runs, deviations=deviations,
                     amendments=amendments, title="L14E114 registered specificity test" + evil,
                     evidence={"level": "signed", "detail": "every stage entry signed by an allowed signer"})
    return _write(report_dir, ledger, {"target_values": tv, "baseline": baseline, "null_distribution": null,
                                       "class_register": cr, "wsq": wsq})


ROUTING_CONTEXT = ReportContext(
    model={"id": "Qwen/Qwen3.5-35B-A3B", "revision": "0f3c9e1b7d", "dtype": "bfloat16", "source": "hub"},
    runtime={"chat_template": "chatml", "enable_thinking": False, "max_new_tokens": 256, "batch_size": 8},
    runs=({"run_id": "sampled", "decoding": "sampled (temperature 1.0)", "seed": 1234, "weights_sha256": "ab" * 32,
           "tokenizer_sha256": "cd" * 32, "captures": ("2026-06-07T10:00:00.000000Z",)},
          {"run_id": "greedy", "decoding": "greedy", "seed": None, "weights_sha256": "ab" * 32,
           "tokenizer_sha256": "cd" * 32,
           "captures": tuple(f"2026-06-07T1{i}:00:00.000000Z" for i in range(1, 5))}),
    inference_seed=20261121,
    exclusions=({"run": "sampled", "rule": "X1", "description": "an empty trimmed zone", "ids": ["fire-003"]},),
    reviews=({"reviewer": "R. A. Fisher", "decision": "approve", "utc": "2026-06-09T10:00:00.000000Z",
              "note": "checked the chain", "covers_this_ledger": True},),
    verify="the freeze verified before the audit read any run")


def ablation_inputs(report_dir: Path) -> Path:
    """The l31h14-ablation study after audit: 109 headline and 7 control pairs, mean drop 1.32 < 1.5."""
    rng = np.random.default_rng(11)
    planted = {"L31H14": 7.5, "L23H0": 5.2, "L26H17": 4.8, "L19H11": 4.1, "L23H8": 3.9}
    baseline = _baseline("A0", 32, 28, "H", planted, rng)
    baseline.loc[baseline["unit"] == "L0H3", "statistic"] = -0.134
    head_base = rng.normal(2.3, 0.6, size=109).clip(0.4)
    head_drop = rng.normal(1.32, 0.55, size=109)
    head_drop += 1.32 - head_drop.mean()
    ctrl_base = rng.normal(2.0, 0.5, size=7).clip(0.4)
    ctrl_drop = rng.normal(0.027, 0.03, size=7)
    pairs = pd.DataFrame({
        "analysis_id": "A1", "target": "L19H11+L23H0+L23H8+L26H17+L31H14", "mode": "combined",
        "pair_id": [f"pair-{i:03d}" for i in range(116)],
        "pair_class": ["headline"] * 109 + ["control"] * 7,
        "baseline_margin": np.r_[head_base, ctrl_base], "drop": np.r_[head_drop, ctrl_drop]})
    pairs["ablated_margin"] = pairs["baseline_margin"] - pairs["drop"]
    pairs = pd.concat([pairs, pairs.assign(analysis_id="A3")], ignore_index=True)  # specificity reads the same pairs
    summary = pd.DataFrame({"analysis_id": "A1", "target": "L19H11+L23H0+L23H8+L26H17+L31H14",
                            "quantity": ["mean_drop", "mean_drop_boot", "relative_drop_ratio_of_means"],
                            "estimate": [1.32, 1.32, 0.574], "ci_low": [1.216, 1.22, 0.52],
                            "ci_high": [1.424, 1.41, 0.63]})
    null = pd.concat([pd.DataFrame({"analysis_id": "A1", "value": rng.normal(0.0, 0.11, size=9_999)}),
                      pd.DataFrame({"analysis_id": "A0", "value": np.abs(rng.normal(0.0, 0.2, size=9_999)) + 0.3})])
    spec_drop = {"kind": "ablation_drop", "pairs": "headline", "mode": "combined", "tails": "greater"}
    claims = [_claim("H1", "A1", "partly_held", claim="Mean-ablating L31H14 + L23H0, L26H17, L19H11, L23H8 "
                     "(+ L27H11) lowers the headline logit-difference margin by at least 1.5 logits.",
                     reason="relative drop 0.574 and specificity ratio 49x, but the mean headline drop 1.320 "
                            "did not clear the 1.5-logit threshold",
                     criteria=[dict(name="min_mean_drop_logits", threshold=1.5, observed=1.32, passed=False,
                                    text="mean headline drop ≥ 1.5 logits")],
                     numbers={"mean_drop": 1.32, "relative_drop": 0.574, "p_value": 0.0001, "n_relabelings": 9999,
                              "observed_statistic": 1.32, "critical_statistic": 0.181, "resampling": "sign_flip",
                              "exact": False, "mean_drop_boot_ci_low": 1.22, "mean_drop_boot_ci_high": 1.41,
                              "L19H11_mean_drop_boot_ci_low": 0.3877},
                     spec=spec_drop),
              _claim("H3", "A3", "held", reason="specificity ratio 49 ≥ 10",
                     numbers={"mean_drop": 1.32, "control_mean_drop": 0.027, "specificity_ratio": 49.0},
                     spec={"kind": "specificity", "pairs": "headline", "control": "control", "mode": "combined"}),
              _claim("H2", "A0", "held", kind="exploratory", reason="L31H14 ranks first of 896 slots",
                     numbers={"observed_statistic": 7.5, "critical_statistic": 0.95, "target_p_corrected": 0.0001,
                              "family_size": 896, "n_relabelings": 9999, "correction": "maxT_stepdown"},
                     spec={"kind": "all_unit_baseline"})]
    runs = [{"run_id": "combined-ablation", "status": "pass_with_warnings", "claims": {}, "review_status": "pending_review",
             "warnings": ["mean headline drop 1.320 logits did not clear the preset 1.5-logit threshold"]}]
    ledger = _ledger("ablation", synthetic=False, claims=claims, runs=runs, study_id="l31h14-ablation",
                     title="L31H14+ factual-recall head-slot ablation")
    return _write(report_dir, ledger, {"baseline": baseline, "ablation_pairs": pairs, "ablation_summary": summary,
                                       "null_distribution": null})


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


# --------------------------------------------------------------------------------------------
# Every number shown is the ledger's or its tables'

# The visible text nodes of the data sections (<main>), outside figure graphics (axis ticks are not
# data), figure numbers, headings and section ledes.
_TEXT_JS = r"""
const skip = 'svg, .fignum, h2, .lede, script, style';
const out = [];
const walker = document.createTreeWalker(document.querySelector('main'), NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const el = n.parentElement;
  if (!el || el.closest(skip) || !n.textContent.trim()) continue;
  const r = el.getBoundingClientRect();
  if (r.width === 0 && r.height === 0) continue;
  out.push(n.textContent);
}
return out;
"""

# A number standing alone: not part of an identifier such as L14E114, fire-009, H1 or X1.
_NUMBER = re.compile(r"(?<![\w.\-−])[−-]?\d[\d,]*(?:\.\d+)?(?:e[−+-]?\d+)?(?![\w]|\.\d)")


def _numbers_in(text: str) -> list[str]:
    return [m.group(0) for m in _NUMBER.finditer(text)]


def _value(token: str) -> float:
    return float(token.replace(",", "").replace("−", "-"))


def _tolerance(token: str) -> float:
    """Half a unit in the last shown digit: what rounding to the shown digits can move a number."""
    mantissa, _, exponent = token.replace(",", "").replace("−", "-").partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals) * (1 + 1e-9) + 1e-12


def _leaves(value: Any) -> list[float]:
    """Every number in a JSON value, including the numbers written inside its strings."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        return [_value(t) for t in _numbers_in(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _leaves(v)]
    return []


def _source_numbers(report: Path, extra: list[float] = ()) -> np.ndarray:
    """The numbers of ``ledger.json`` and of the table rows a page may list (the null distributions'
    resampled values are drawn, never listed; of the baseline, the top ranks and the targets)."""
    numbers = _leaves(json.loads((report / "ledger.json").read_text(encoding="utf-8"))) + list(extra)
    for path in sorted((report / "tables").glob("*.parquet")):
        if path.stem == "null_distribution":
            continue
        frame = pd.read_parquet(path)
        if path.stem == "baseline":
            frame = frame[(frame["rank"] <= 10) | frame["is_target"].astype(bool)]
        numbers += frame.select_dtypes("number").to_numpy(dtype=float).ravel().tolist()
    values = np.array([v for v in numbers if math.isfinite(v)])
    return np.sort(values)


def _unmatched(driver, sources: np.ndarray) -> list[str]:
    missing = []
    for text in driver.execute_script(_TEXT_JS):
        for token in _numbers_in(text):
            x, tol = _value(token), _tolerance(token)
            i = np.searchsorted(sources, x - tol)
            if not (i < sources.size and sources[i] <= x + tol):
                missing.append(f"{token} in {text.strip()[:80]!r}")
    return missing


def test_number_matcher_finds_a_recomputed_p_value() -> None:
    """The check can fail: the p-value a page would recompute as (k + 1)/(n + 1) is not the ledger's."""
    sources = np.sort(np.array([0.0006495052934681418, 0.008898222520513543, 9999.0]))
    for token, found in (("0.0006495", True), ("0.0006603", False), ("0.008898", True), ("0.008909", False),
                         ("9,999", True), ("6.495e-04", True)):
        x, tol = _value(token), _tolerance(token)
        i = np.searchsorted(sources, x - tol)
        assert bool(i < sources.size and sources[i] <= x + tol) is found, token
    assert _numbers_in("L14E114 fire-009 H1 rank 1. p = 5e-05, n 9,999 (−0.134)") == ["1", "5e-05", "9,999", "−0.134"]


# --------------------------------------------------------------------------------------------
# Nothing overlaps

# Pairs of laid-out boxes that intersect although neither holds the other, and boxes whose content
# spills out of them (a long word in a narrow cell, a raw dict in a card).
_OVERLAP_JS = r"""
const sel = arguments[0];
const els = [...document.querySelectorAll(sel)].filter(e => {
  const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; });
const boxes = els.map(e => e.getBoundingClientRect());
const hits = [], spills = [];
const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' "' + e.textContent.trim().slice(0, 40) + '"';
for (let i = 0; i < els.length; i++) {
  for (let j = i + 1; j < els.length; j++) {
    if (els[i].contains(els[j]) || els[j].contains(els[i])) continue;
    const a = boxes[i], b = boxes[j];
    const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (w > 1 && h > 1) hits.push(name(els[i]) + ' x ' + name(els[j]));
  }
  const e = els[i], style = getComputedStyle(e);
  if (style.display !== 'inline' && style.overflowX === 'visible' && e.scrollWidth > e.clientWidth + 1
      && e.tagName !== 'TABLE') spills.push(name(e) + ' ' + e.scrollWidth + '>' + e.clientWidth);
}
return {n: els.length, hits: hits.slice(0, 20), spills: spills.slice(0, 20)};
"""
_BOXES = ("header .card, .kv dt, .kv dd, .first li, main .card, main figure, main figcaption, main td, main th, "
          "main dt, main dd, main .numbers > div, main h3, main h4, main p, main li, main blockquote, "
          "main table, main details > summary")

# The crossing-prompt labels drawn in each strip figure (their text boxes).
_STRIP_LABELS_JS = r"""
const out = {};
for (const f of document.querySelectorAll('figure[id^="fig-strip-"]')) {
  const boxes = [...f.querySelectorAll('g[id*="-cross-"]:not([id*="-cross-ring-"]) text')]
    .map(t => t.getBoundingClientRect()).filter(r => r.width > 0);
  const hits = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const a = boxes[i], b = boxes[j];
    if (Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5
        && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5) hits.push([i, j]);
  }
  out[f.id] = {labels: boxes.length, hits: hits};
}
return out;
"""


def _assert_no_overlap(driver) -> None:
    found = driver.execute_script(_OVERLAP_JS, _BOXES)
    assert found["n"] > 50, found
    assert found["hits"] == [], found["hits"]
    assert found["spills"] == [], found["spills"]
    for fig, strip in driver.execute_script(_STRIP_LABELS_JS).items():
        assert strip["hits"] == [], (fig, strip)


def _ring_ids(driver, fig_id: str) -> set[str]:
    ids = driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' [id*=\"-cross-ring-\"]')].map(e => e.id)", fig_id)
    return {re.sub(r"^.*-cross-ring-", "", i) for i in ids}


def _slug(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")
    return cleaned or "x"


# ============================================================================================
# Browser tests on hand-built report folders


@pytest.fixture(scope="module")
def routing_report(tmp_path_factory) -> Path:
    """The routing report folder, with user text that tries to run, rendered once with the study context."""
    report = routing_inputs(tmp_path_factory.mktemp("routing") / "report", evil=EVIL)
    render_report(report, ROUTING_CONTEXT)
    return report


def test_routing_report_in_browser(browser, routing_report: Path, tmp_path: Path) -> None:
    out = routing_report / REPORT_NAME
    assert _severe(_open(browser, out)) == []
    _assert_offline(browser)
    assert browser.title.startswith("[SYNTHETIC]")

    banner = browser.find_element("id", "synthetic-banner")
    assert banner.is_displayed() and "SYNTHETIC" in banner.text
    assert browser.execute_script("return document.body.firstElementChild.id") == "synthetic-banner"

    # Deviations and post-hoc amendments come first, then the ledger, run cards, claims, figures.
    assert _section_ids(browser) == [*LEADING, *ROUTING_SECTIONS]
    dev, led = (browser.find_element("id", s) for s in ("sec-deviations", "sec-ledger"))
    assert dev.rect["y"] < led.rect["y"]
    assert "post_hoc" in browser.find_element("id", "amendments").text
    assert EVIL in browser.find_element("id", "deviations").text  # shown as text, not run

    # Deviations are a table: field, preregistered, actual, reason, impact on claims; never a raw dict.
    rows = [[c.text for c in r.find_elements("css selector", "td")]
            for r in browser.find_elements("css selector", "#deviations tbody tr")]
    assert [h.text for h in browser.find_elements("css selector", "#deviations thead th")] == \
        ["FIELD", "PREREGISTERED", "ACTUAL", "REASON", "IMPACT ON CLAIMS"]
    batch = next(r for r in rows if r[0].startswith("/runtime/batch_size"))
    assert batch[1:3] == ["8", "4"] and batch[4] == "claims H3, H8 read run greedy"
    revision = next(r for r in rows if r[0].startswith("/model/revision"))
    assert revision[2].startswith("unverifiable local folder") and "{" not in revision[2]
    assert "claims H1, H2, H3, H5, H6, H7 read run sampled" == revision[4]

    # The ledger: one row per claim, the status word and the reason on each.
    ledger = json.loads((routing_report / "ledger.json").read_text())
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

    # Run cards, repeated captures and review status.
    card = browser.find_element("id", "run-greedy")
    assert "pass_with_warnings" in card.text and "max_new_tokens" in card.text
    assert "captured 4 times" in card.text
    assert "captured" not in browser.find_element("id", "run-sampled").text
    assert "pending_review" in browser.find_element("id", "sec-runs").text

    # Per-claim detail: criteria and the eight evidence-standard points.
    h1 = browser.find_element("id", "claim-H1")
    assert "min_ratio" in h1.text and "✓ passed" in h1.text
    points = h1.find_elements("css selector", "table.evidence tbody tr")
    assert [p.find_element("css selector", ".badge").text for p in points] == \
        ["met", "met", "met", "unmet", "met", "met", "met", "not applicable"]

    # Every figure is there, holds a rendered <svg>, and marks what it should.
    for fig_id in ("fig-heatmap-A2", "fig-strip-A1", "fig-strip-A3", "fig-null-A1", "fig-null-A2",
                   "fig-class-register-A6", "fig-wsq-A5"):
        fig = _figure_svg(browser, fig_id)
        assert fig is not None, fig_id
        assert fig["tag"] == "FIGURE", fig_id
        assert fig["caption"], fig_id
        if fig_id != "fig-class-register-A6":
            assert fig["svg"] and fig["width"] > 100 and fig["height"] > 10, (fig_id, fig)
    heat = _figure_svg(browser, "fig-heatmap-A2")
    assert "L14E114" in heat["text"] and "rank 1" in heat["text"]
    ring = browser.find_element("id", "fig-heatmap-A2-target-L14E114")
    assert ring.is_displayed()
    assert "L14E114" in browser.find_element("id", "top-units-A2").text
    strip = _figure_svg(browser, "fig-strip-A1")
    assert "nofire-017" in strip["text"]  # the crossing prompt is named on the plot
    assert browser.find_elements("css selector", "#fig-strip-A1 [id*='cross-nofire-017']")
    numbers = next(c["numbers"] for c in ledger["claims"] if c["hypothesis"] == "H1")
    assert f"mean {numbers['mean_a']:.4g} · n 24" in strip["text"]  # the ledger's mean and n under each class
    assert f"mean {numbers['mean_b']:.4g} · n 24" in strip["text"]

    # The null captions say which null each is, and give the ledger's p, not a recomputed one.
    null_a2 = _figure_svg(browser, "fig-null-A2")
    assert "observed 9.1" in null_a2["text"] and "critical" in null_a2["text"]
    assert null_a2["caption"].startswith("Figure") and "Max-T null distribution" in null_a2["caption"]
    assert "over all 10,240 units" in null_a2["caption"] and "p = 0.008898" in null_a2["caption"]
    null_a1 = _figure_svg(browser, "fig-null-A1")
    assert "Permutation null distribution" in null_a1["caption"] and "labels shuffled" in null_a1["caption"]
    assert "p = 0.0006495" in null_a1["caption"] and "Critical value 1.717" in null_a1["caption"]
    assert browser.find_element("id", "fig-null-A1-critical")

    # W/S/Q bars carry the table's intervals.
    for metric in "WSQ":
        for group in ("FIRE", "NOFIRE"):
            assert browser.find_element("id", f"fig-wsq-A5-{metric}-{group}-L14E114-ci")

    png = tmp_path / "report.png"
    assert browser.save_screenshot(str(png)) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_routing_first_screen_in_browser(browser, routing_report: Path) -> None:
    _open(browser, routing_report / REPORT_NAME)
    first = browser.find_element("id", "first-screen")
    assert first.rect["y"] < browser.find_element("id", "sec-deviations").rect["y"]
    model = browser.find_element("id", "first-model").text
    assert "Qwen/Qwen3.5-35B-A3B" in model and "0f3c9e1b7d" in model and "ab" * 32 in model and "cd" * 32 in model
    runtime = browser.find_element("id", "first-runtime").text
    assert "max_new_tokens\n256" in runtime and "seed 1234" in runtime and "20261121" in runtime
    assert "run greedy\ngreedy" in runtime
    exclusions = browser.find_element("id", "exclusions").text
    assert "run sampled, rule X1 (an empty trimmed zone): fire-003" == exclusions
    assert "captured 4 times" in browser.find_element("id", "captures").text
    assert browser.find_element("id", "evidence-level").text == "signed"
    assert "every stage entry signed" in browser.find_element("id", "first-verify").text
    assert "the freeze verified" in browser.find_element("id", "verify-result").text
    reviews = browser.find_element("id", "reviews").text
    assert "R. A. Fisher approved at 2026-06-09T10:00:00.000000Z — this ledger: checked the chain" == reviews


def test_routing_numbers_are_the_ledgers_and_nothing_overlaps(browser, routing_report: Path) -> None:
    _open(browser, routing_report / REPORT_NAME)
    captures = [float(len(r["captures"])) for r in ROUTING_CONTEXT.runs]
    assert _unmatched(browser, _source_numbers(routing_report, captures)) == []
    _assert_no_overlap(browser)


def test_routing_crossing_marks_are_the_ledgers(browser, routing_report: Path) -> None:
    _open(browser, routing_report / REPORT_NAME)
    ledger = json.loads((routing_report / "ledger.json").read_text())
    listed = {c["analysis"]: {p.strip() for p in c["numbers"].get("crossing_prompts", "").split(",") if p.strip()}
              for c in ledger["claims"]}
    assert listed["A1"] == {"fire-014", "fire-026", "nofire-017" + EVIL}  # the fixture's: FIRE -> other, NOFIRE -> target
    assert _ring_ids(browser, "fig-strip-A1") == {_slug(p) for p in listed["A1"]}
    caption = browser.find_element("id", "fig-strip-A1-caption").text
    assert [p for p in sorted(listed["A1"]) if p not in caption] == []
    # The class x register table marks exactly the cells whose register is not their class's, in the study's names.
    marked = [(r.find_elements("css selector", "td")[0].text, r.find_elements("css selector", "td")[1].text)
              for r in browser.find_elements("css selector", "#class-register-A6 tbody tr[data-crosses='yes']")]
    assert marked == [("FIRE", "other crosses"), ("NOFIRE", f"{TARGET_REGISTER} crosses")]
    table = browser.find_element("id", "class-register-A6").text
    assert "not_FIRE" not in table and "not_target" not in table and "NOFIRE" in table
    assert "fire-014" in browser.find_element("id", "fig-class-register-A6-caption").text


def test_ablation_report_in_browser(browser, tmp_path: Path) -> None:
    report = ablation_inputs(tmp_path / "report")
    out = render_report(report)
    assert _severe(_open(browser, out)) == []
    _assert_offline(browser)
    assert browser.find_elements("id", "synthetic-banner") == []
    # Only the sections the ablation design has: no routing section, no "Not available" placeholder.
    assert _section_ids(browser) == [*LEADING, *ABLATION_SECTIONS]
    assert "Not available" not in browser.find_element("tag name", "main").text
    assert "no deviations" in browser.find_element("id", "sec-deviations").text
    assert browser.find_element("id", "deviations-none").text == "Deviations: none."
    # Without the study's journal, the first screen says what it lacks; the evidence level defaults.
    assert browser.find_element("id", "evidence-level").text == "self-attested"
    assert "the journal was not given" in browser.find_element("id", "first-review").text

    row = browser.find_element("css selector", "#ledger tbody tr[data-hypothesis='H1']")
    assert row.find_element("css selector", "td.status").text == "partly_held"
    assert "1.5-logit threshold" in browser.find_element("id", "run-combined-ablation").text

    heat = _figure_svg(browser, "fig-heatmap-A0")
    assert heat["svg"] and "L31H14" in heat["text"] and "head" in heat["text"]
    for unit in ("L31H14", "L23H0", "L26H17", "L19H11", "L23H8"):
        assert browser.find_element("id", f"fig-heatmap-A0-target-{unit}")
    # A diverging colour scale centred at 0 with symmetric limits: ticks on both sides of 0.
    ticks = [float(t.replace("−", "-")) for t in re.findall(r"[−-]?\d+\.\d+|[−-]?\d+",
             browser.find_element("id", "fig-heatmap-A0-colourbar").get_attribute("textContent"))]
    assert min(ticks) == -max(ticks) and min(ticks) < 0 and 0.0 in ticks

    # The two analyses of the same ablation (A1 drop, A3 specificity) share one figure, not two copies.
    assert browser.find_elements("css selector", "#sec-ablation figure").__len__() == 1
    drops = _figure_svg(browser, "fig-ablation-A1")
    assert drops["svg"] and "threshold 1.5" in drops["text"] and "mean 1.32" in drops["text"]
    assert "mean 0.027" in drops["text"]  # the control mean, as the specificity claim's numbers give it
    assert "A1, A3" in drops["caption"]
    assert browser.find_element("id", "fig-ablation-A1-threshold")
    summary = browser.find_element("id", "ablation-summary-A1").text
    assert "mean_drop" in summary and "1.216" in summary and "1.424" in summary
    # The sign-flip null says it flips signs, not that it shuffles class labels.
    null = _figure_svg(browser, "fig-null-A1")["caption"]
    assert "Sign-flip null distribution" in null and "labels" not in null and "p = 0.0001" in null
    assert "Max-T null distribution" in _figure_svg(browser, "fig-null-A0")["caption"]


def test_ablation_numbers_are_the_ledgers_and_nothing_overlaps(browser, tmp_path: Path) -> None:
    report = ablation_inputs(tmp_path / "report")
    _open(browser, render_report(report))
    assert _unmatched(browser, _source_numbers(report)) == []
    _assert_no_overlap(browser)
    grid = browser.find_element("css selector", "#claim-H1 dl.numbers")
    assert "0.3877L1H1" not in grid.text.replace("\n", "")  # value and the next key never run together


def test_missing_tables_say_not_available_in_browser(browser, tmp_path: Path) -> None:
    report = routing_inputs(tmp_path / "report", synthetic=False)
    shutil.rmtree(report / "tables")
    out = render_report(report)
    assert _severe(_open(browser, out)) == []
    _assert_offline(browser)
    assert browser.find_elements("id", "synthetic-banner") == []
    assert browser.find_elements("css selector", "figure") == []
    for sid in ROUTING_SECTIONS:
        text = browser.find_element("id", sid).text
        assert "Not available for this study" in text and ".parquet was not written" in text
    assert len(browser.find_elements("css selector", "#ledger tbody tr")) == 7


# ============================================================================================
# Pure-Python tests


def test_user_text_is_escaped(routing_report: Path) -> None:
    page = (routing_report / REPORT_NAME).read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert re.search(r"<[a-z][^>]*\son\w+\s*=", page, flags=re.I) is None  # no element has an event handler
    assert page.count("&lt;script&gt;") >= 6  # title, claim, reason, deviation, warning, plot text...
    svg = re.search(r'<figure id="fig-strip-A1".*?</figure>', page, flags=re.S).group(0)
    assert "&lt;script&gt;" in svg  # the prompt id drawn in the plot is escaped too


def test_prompt_ids_with_dollars_are_not_mathtext(tmp_path: Path) -> None:
    page = render_report(routing_inputs(tmp_path, evil=" $x^2$ \\alpha")).read_text(encoding="utf-8")
    svg = re.search(r'<figure id="fig-strip-A1".*?<figcaption', page, flags=re.S).group(0)
    assert ">nofire-017 $x^2$ \\alpha</text>" in svg  # drawn as written, not as math


def test_report_is_deterministic_atomic_and_small(routing_report: Path) -> None:
    report = routing_report
    first = (report / REPORT_NAME).read_bytes()
    second = render_report(report, ROUTING_CONTEXT).read_bytes()
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
    assert "Prompts that cross their class are ringed and named: none." in page


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
