"""The preregistered analyses, each a function of the frozen plan and the captured, labelled runs.

Every analysis returns an :class:`Outcome`: the quantities its thresholds compare against, whether the
primary criterion passed (the test at alpha in the preregistered direction), the numbers and tables
behind it, warnings, and — when data are missing or too few — why it is not established.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

import stats
from lockstep.units import condition_key, parse_unit_id

from .data import RunData


@dataclass
class Outcome:
    analysis_id: str
    kind: str
    quantities: dict[str, float] = field(default_factory=dict)
    primary_passed: bool = False
    primary_text: str = ""
    numbers: dict[str, float | str | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    not_established: str | None = None
    facts: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    alpha: float
    n_resamples: int
    exact_cap: int
    seed: int
    n_boot: int = 1999


def _groups(run: RunData, analysis: dict, split: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    prompts = run.prompts if split is None else run.prompts[run.prompts["split"] == split]
    column = "prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"
    keep = prompts[column].isin([analysis["groups"]["a"], analysis["groups"]["b"]])
    prompts = prompts[keep].reset_index(drop=True)
    return prompts, (prompts[column] == analysis["groups"]["a"]).to_numpy()


def _exclude_empty(run: RunData, prompts: pd.DataFrame, zone: str, out: Outcome) -> pd.DataFrame:
    count = prompts[f"n_{zone}"] if f"n_{zone}" in prompts else None
    if count is None:
        return prompts
    empty = prompts[count == 0]
    if len(empty):
        out.warnings.append(f"{len(empty)} prompt(s) excluded for an empty {zone} zone: {', '.join(empty['prompt_id'])}")
    return prompts[count > 0].reset_index(drop=True)


def _direction_ok(diff: float, tails: str) -> bool:
    return diff > 0 if tails == "greater" else diff < 0 if tails == "less" else diff != 0


def _two_group_core(run: RunData, analysis: dict, settings: Settings, out: Outcome, unit: str, suffix: str = "") -> bool:
    prompts, group = _groups(run, analysis, analysis.get("split"))
    prompts = _exclude_empty(run, prompts, analysis["zone"], out)
    group = (prompts["prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"] == analysis["groups"]["a"]).to_numpy()
    x, ids = run.matrix(analysis["zone"], analysis["metric"], list(prompts["prompt_id"]))
    if unit not in ids:
        out.not_established = f"unit {unit} is not in the captured run {run.run_id} (the model has {len(ids)} units)"
        return False
    values = x[:, ids.index(unit)]
    finite = np.isfinite(values)
    if (~finite).any():
        out.warnings.append(f"{int((~finite).sum())} prompt(s) have no {analysis['metric']} for {unit} (never selected) and are left out")
    values, group, prompts = values[finite], group[finite], prompts[finite].reset_index(drop=True)
    n_a, n_b = int(group.sum()), int((~group).sum())
    if min(n_a, n_b) < 2:
        out.not_established = f"too few prompts: {n_a} in {analysis['groups']['a']} and {n_b} in {analysis['groups']['b']} (need 2 each)"
        return False
    rng = np.random.default_rng(settings.seed)
    effect = stats.compare_groups(values[group], values[~group], ids_a=list(prompts["prompt_id"][group]),
                                  ids_b=list(prompts["prompt_id"][~group]), n_boot=settings.n_boot, rng=rng)
    test = stats.permutation_test(values, group, statistic=analysis.get("statistic", "welch_t"),
                                  alternative=analysis.get("tails", "two-sided"), n_resamples=settings.n_resamples,
                                  exact_cap=settings.exact_cap, rng=np.random.default_rng(settings.seed))
    p = float(test.pvalue)
    out.quantities.update({f"p{suffix}": p, f"ratio{suffix}": effect.ratio, f"cohen_d{suffix}": effect.cohen_d,
                           f"hedges_g{suffix}": effect.hedges_g, f"auc{suffix}": effect.auc, f"mean_diff{suffix}": effect.mean_diff})
    out.numbers.update({f"{k}{suffix}": v for k, v in {
        "n_a": n_a, "n_b": n_b, "mean_a": effect.mean_a, "mean_b": effect.mean_b, "ratio": effect.ratio,
        "ratio_ci_low": effect.ratio_ci[0], "ratio_ci_high": effect.ratio_ci[1], "cohen_d": effect.cohen_d,
        "cohen_d_ci_low": effect.cohen_d_ci[0], "cohen_d_ci_high": effect.cohen_d_ci[1], "hedges_g": effect.hedges_g,
        "auc": effect.auc, "p_value": p, "exact": bool(test.exact),
        "n_relabelings": math.comb(n_a + n_b, n_a) if test.exact else int(test.n_resamples),
        "ranges_overlap": bool(effect.ranges_overlap)}.items()})
    crossing = set(effect.crossing_a) | set(effect.crossing_b)
    frame = pd.DataFrame({"analysis_id": analysis["id"], "unit": unit, "run": run.run_id, "zone": analysis["zone"],
                          "metric": analysis["metric"], "prompt_id": prompts["prompt_id"], "prompt_class": prompts["prompt_class"],
                          "register_label": prompts["register_label"], "value": values,
                          "crosses": prompts["prompt_id"].isin(crossing)})
    out.tables.setdefault("target_values", pd.DataFrame())
    out.tables["target_values"] = pd.concat([out.tables["target_values"], frame], ignore_index=True)
    if test.null_distribution is not None and not suffix:
        out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"], "value": np.asarray(test.null_distribution).ravel()})
        out.numbers["observed_statistic"] = float(test.statistic)
    passed = p <= settings.alpha and _direction_ok(effect.mean_diff, analysis.get("tails", "two-sided"))
    out.facts["spill_tokens"] = int(run.prompts["n_spill"].sum())
    return passed


def two_group(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "two_group")
    run = runs(analysis["run"])
    passed = _two_group_core(run, analysis, settings, out, analysis["unit"])
    if out.not_established:
        return out
    out.primary_passed = passed
    g = analysis["groups"]
    out.primary_text = (f"{analysis['unit']} {analysis['metric']} in the {analysis['zone']} zone, {g['a']} vs {g['b']}: "
                        f"mean {out.numbers['mean_a']:.4g} vs {out.numbers['mean_b']:.4g}, permutation p = {out.quantities['p']:.4g} "
                        f"({analysis.get('tails', 'two-sided')}; {'exact' if out.numbers['exact'] else 'Monte Carlo'}, "
                        f"{out.numbers['n_relabelings']} relabelings) against alpha {settings.alpha}")
    _wsq_table(run, analysis, out)
    return out


def _wsq_table(run: RunData, analysis: dict, out: Outcome) -> None:
    prompts, group = _groups(run, analysis, analysis.get("split"))
    rows = []
    for label, mask in ((analysis["groups"]["a"], group), (analysis["groups"]["b"], ~group)):
        row = {"analysis_id": analysis["id"], "unit": analysis["unit"], "group": label}
        for metric in ("W", "S", "Q"):
            x, ids = run.matrix(analysis["zone"], metric, list(prompts["prompt_id"][mask]))
            row[metric] = float(np.nanmean(x[:, ids.index(analysis["unit"])])) if mask.any() else float("nan")
        rows.append(row)
    out.tables["wsq"] = pd.DataFrame(rows)


def all_unit_baseline(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "all_unit_baseline")
    run = runs(analysis["run"])
    prompts, _ = _groups(run, analysis, analysis.get("split"))
    prompts = _exclude_empty(run, prompts, analysis["zone"], out)
    column = "prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"
    group = (prompts[column] == analysis["groups"]["a"]).to_numpy()
    if min(group.sum(), (~group).sum()) < 2:
        out.not_established = f"too few prompts in a group ({int(group.sum())} vs {int((~group).sum())})"
        return out
    x, ids = run.matrix(analysis["zone"], analysis["metric"], list(prompts["prompt_id"]))
    targets = [t["id"] for t in frozen.spec["units"]["targets"] if t["id"] in ids]
    target = analysis.get("unit") or (targets[0] if targets else None)
    if target is None or target not in ids:
        out.not_established = f"the target unit is not among the {len(ids)} captured units"
        return out
    x = np.nan_to_num(x, nan=0.0) if analysis["metric"] in ("W", "S") else x
    result = stats.all_unit_baseline(x, group, unit_ids=ids, target=target, statistic=analysis.get("statistic", "welch_t"),
                                     alternative=analysis.get("tails", "two-sided"), n_resamples=settings.n_resamples,
                                     exact_cap=settings.exact_cap, alpha=settings.alpha,
                                     rng=np.random.default_rng(settings.seed), dtype=np.float64, nan_policy="drop_units")
    layers_idx = [parse_unit_id(u) for u in ids]
    _record_baseline(out, analysis, result, ids, target, targets, settings, "units",
                     {"layer": [l for l, _, _ in layers_idx], "index": [i for _, _, i in layers_idx]})
    return out


def _record_baseline(out: Outcome, analysis: dict, result, ids: list[str], target: str, targets: list[str],
                     settings: Settings, what: str, columns: dict) -> None:
    """The all-unit baseline's numbers, tables, primary criterion and warnings, for units or head slots."""
    correction = analysis.get("correction", "maxT_stepdown")
    per_unit_p = {"maxT_stepdown": result.p_maxt_step_down, "maxT_single_step": result.p_maxt_single_step,
                  "holm": result.p_holm, "fdr_bh": result.q_bh, "none": result.p_uncorrected}[correction]
    p_target = float(per_unit_p[ids.index(target)])
    out.quantities.update({"p": p_target, "target_rank": float(result.target_rank), "target_percentile": float(result.target_percentile)})
    out.numbers.update({"target": target, "correction": correction, "target_p_corrected": p_target,
                        "target_statistic": float(result.target_statistic), "target_rank": int(result.target_rank),
                        "family_size": int(result.family_size), "best_unit": result.best_unit,
                        "best_statistic": float(result.best_statistic), "critical_statistic": float(result.critical_value),
                        "observed_statistic": float(result.target_statistic), "n_relabelings": int(result.n_resamples),
                        "exact": bool(result.exact), "dropped_units": len(result.dropped_units)})
    for t in targets:
        j = ids.index(t)
        out.numbers[f"{t}_rank"] = int(result.rank[j])
        out.numbers[f"{t}_p_corrected"] = float(per_unit_p[j])
    for flag in result.flags:
        out.warnings.append(str(getattr(flag, "message", flag)))
    out.tables["baseline"] = pd.DataFrame({"analysis_id": analysis["id"], "unit": ids, **columns, "statistic": result.statistic,
                                           "p_uncorrected": result.p_uncorrected, "p_fwer": per_unit_p, "rank": result.rank,
                                           "is_target": [u in targets for u in ids]})
    out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"], "value": np.asarray(result.null_max, dtype=float)})
    out.primary_passed = p_target <= settings.alpha and _direction_ok(float(result.target_statistic), analysis.get("tails", "two-sided"))
    ranks = ", ".join(f"{t} {int(result.rank[ids.index(t)])}" for t in targets)
    out.primary_text = (f"{target} ranks {int(result.target_rank)} of {int(result.family_size)} {what} "
                        f"(statistic {float(result.target_statistic):.4g}; best: {result.best_unit}); {correction} corrected "
                        f"p = {p_target:.4g} against alpha {settings.alpha}" + (f"; ranks of the targets: {ranks}" if len(targets) > 1 else ""))
    if result.best_unit != target:
        out.warnings.append(f"the best-separating unit is {result.best_unit}, not the target {target}")
    out.facts["best_is_target"] = result.best_unit == target


def reproduction(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "reproduction")
    first, second = analysis["runs"]
    ok_first = _two_group_core(runs(first), analysis, settings, out, analysis["unit"], suffix=f"_{first}")
    if out.not_established:
        return out
    ok_second = _two_group_core(runs(second), analysis, settings, out, analysis["unit"], suffix=f"_{second}")
    if out.not_established:
        return out
    r1, r2 = out.quantities[f"ratio_{first}"], out.quantities[f"ratio_{second}"]
    d1, d2 = out.quantities[f"cohen_d_{first}"], out.quantities[f"cohen_d_{second}"]
    # how far apart the two ratios are, as a fraction: exp(|ln(r2/r1)|) - 1 (0.5: within a factor of 1.5)
    rel = float(np.expm1(abs(np.log(r2 / r1)))) if r1 > 0 and r2 > 0 and np.isfinite(r1 * r2) else float("inf")
    out.quantities.update({"p": max(out.quantities[f"p_{first}"], out.quantities[f"p_{second}"]), "ratio": r2,
                           "cohen_d": d2, "reproduction_ratio": rel, "reproduction_d": abs(d2 - d1)})
    out.numbers.update({"ratio_relative_change": rel, "d_abs_change": abs(d2 - d1)})
    out.primary_passed = ok_first and ok_second
    out.primary_text = (f"{analysis['unit']}: {first} ratio {r1:.4g} (d {d1:.3g}, p {out.quantities[f'p_{first}']:.3g}); "
                        f"{second} ratio {r2:.4g} (d {d2:.3g}, p {out.quantities[f'p_{second}']:.3g}); both must pass alpha {settings.alpha}")
    out.facts["reproduced_runs"] = [first, second]
    return out


def register_vs_class(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "register_vs_class")
    run = runs(analysis["run"])
    prompts = run.prompts if "split" not in analysis else run.prompts[run.prompts["split"] == analysis["split"]]
    prompts = prompts[prompts["prompt_class"].isin(analysis["classes"].values())].reset_index(drop=True)
    prompts = _exclude_empty(run, prompts, analysis["zone"], out)
    x, ids = run.matrix(analysis["zone"], analysis["metric"], list(prompts["prompt_id"]))
    if analysis["unit"] not in ids:
        out.not_established = f"unit {analysis['unit']} is not in the captured run"
        return out
    values = x[:, ids.index(analysis["unit"])]
    register = np.where(prompts["register_label"] == analysis["register"]["target"], "target", "other")
    if len(prompts) < 4:
        out.not_established = f"too few prompts ({len(prompts)}) for a model of register and class"
        return out
    result = stats.register_analysis(values, prompts["prompt_class"].to_numpy(), register,
                                     target_class=analysis["classes"]["a"], target_register="target",
                                     ids=list(prompts["prompt_id"]))
    coef = result.coefficients.set_index("term")
    reg, cls = coef.loc["register"], coef.loc["prompt_class"]
    cells = result.cells.rename(columns={"register": "register_label"})
    cells["register_label"] = cells["register_label"].map({"target": analysis["register"]["target"], "other": analysis["register"]["other"]}).fillna(cells["register_label"])
    cells.insert(0, "analysis_id", analysis["id"])
    out.tables["class_register"] = cells
    out.numbers.update({"register_effect": float(reg["estimate"]), "register_ci_low": float(reg["ci_low"]),
                        "register_ci_high": float(reg["ci_high"]), "register_p": float(reg["pvalue"]),
                        "class_effect": float(cls["estimate"]), "class_ci_low": float(cls["ci_low"]),
                        "class_ci_high": float(cls["ci_high"]), "class_p": float(cls["pvalue"]),
                        "crossing_prompts": ", ".join(map(str, result.crossing["item"])) if len(result.crossing) else ""})
    out.quantities.update({"p": float(reg["pvalue"]), "register_effect": float(reg["estimate"]), "class_effect": float(cls["estimate"])})
    for flag in result.flags:
        out.warnings.append(str(getattr(flag, "message", flag)))
    if not np.isfinite(reg["pvalue"]):
        out.not_established = "register and prompt class are confounded (no prompt left its class's register), so the model cannot separate them"
        return out
    out.primary_passed = reg["pvalue"] <= settings.alpha and reg["estimate"] > 0
    out.primary_text = (f"{analysis['unit']} {analysis['metric']} ~ register + class: register effect {reg['estimate']:.4g} "
                        f"[{reg['ci_low']:.3g}, {reg['ci_high']:.3g}], p = {reg['pvalue']:.3g}; class effect {cls['estimate']:.4g} "
                        f"[{cls['ci_low']:.3g}, {cls['ci_high']:.3g}]")
    out.facts["register_separated"] = bool(out.primary_passed)
    return out


def wsq_decomposition(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "wsq_decomposition")
    run = runs(analysis["run"])
    prompts, group = _groups(run, analysis, analysis.get("split"))
    prompts = _exclude_empty(run, prompts, analysis["zone"], out)
    group = (prompts["prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"] == analysis["groups"]["a"]).to_numpy()
    s, ids = run.matrix(analysis["zone"], "S", list(prompts["prompt_id"]))
    q, _ = run.matrix(analysis["zone"], "Q", list(prompts["prompt_id"]))
    if analysis["unit"] not in ids:
        out.not_established = f"unit {analysis['unit']} is not in the captured run"
        return out
    j = ids.index(analysis["unit"])
    result = stats.wsq_decomposition(s[:, j], q[:, j], group, n_boot=settings.n_boot, rng=np.random.default_rng(settings.seed))
    share = float(result.s_part / result.delta_w) if result.delta_w else float("nan")
    out.quantities.update({"s_share": share})
    out.numbers.update({"carrier": result.carrier, "delta_w": float(result.delta_w), "s_part": float(result.s_part), "s_share": share,
                        "s_a": float(result.s_a), "s_b": float(result.s_b), "q_a": float(result.q_a), "q_b": float(result.q_b)})
    out.primary_passed = bool(np.isfinite(share))
    out.primary_text = f"{analysis['unit']}: ΔW = {result.delta_w:.4g}, of which the S part is {share:.0%}; carrier: {result.carrier}"
    _wsq_table(run, {**analysis, "metric": "W"}, out)
    return out


# -- the ablation design ---------------------------------------------------------------------------
#
# Margins and drops come from capture/ablation.py: drop = unablated clean margin - ablated clean margin,
# per pair, on the pairs left after the preregistered exclusions. Conditions are keyed like capture
# keys them: slot labels sorted by layer then head, joined by "+".


def _confidence(frozen) -> float:
    return float(frozen.spec["inference"].get("bootstrap", {}).get("confidence", 0.95))


def _exclusion_warnings(run, out: Outcome) -> None:
    for line in run.manifest.get("warnings", []):
        if line not in out.warnings:
            out.warnings.append(line)


def _condition_frame(run, analysis: dict, mode: str, key: str) -> pd.DataFrame | None:
    """Analysed pairs of the analysis's split with their margins under one condition (None: not captured)."""
    rows = run.ablations[(run.ablations["mode"] == mode) & (run.ablations["target"] == key)]
    if rows.empty:
        return None
    pairs = run.analysed_pairs(split=analysis.get("split"))
    frame = pairs[["pair_id", "class"]].merge(rows, on="pair_id", how="inner")
    return frame.sort_values("pair_id").reset_index(drop=True)


def _conditions(frozen, analysis: dict) -> list[tuple[str, str, list[str]]]:
    """(label for tables, condition key, slots) of the analysis: one combined set, or each target alone."""
    ablation = frozen.spec["ablation"]
    every = [t["id"] for t in frozen.spec["units"]["targets"]]
    if analysis.get("mode", "combined") == "combined":
        targets = analysis.get("targets") or ablation.get("combined") or every
        return [(analysis["id"], condition_key(targets), list(targets))]
    targets = analysis.get("targets") or [t for t in every if t not in set(ablation.get("combined_only", []))]
    label = (lambda t: analysis["id"]) if len(targets) == 1 else (lambda t: f"{analysis['id']}/{t}")
    return [(label(t), condition_key([t]), [t]) for t in targets]


def _pairs_table(analysis_id: str, key: str, mode: str, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"analysis_id": analysis_id, "target": key, "mode": mode, "pair_id": frame["pair_id"],
                         "pair_class": frame["class"], "baseline_margin": frame["baseline_clean_margin"],
                         "ablated_margin": frame["ablated_clean_margin"], "drop": frame["clean_drop"]})


def _adjust(p: np.ndarray, drops: np.ndarray, correction: str, settings: Settings, tails: str) -> np.ndarray:
    """Adjusted p of several targets' sign-flip tests (drops: pairs x targets)."""
    if len(p) == 1 or correction == "none":
        return p
    if correction in ("holm", "fdr_bh"):
        from statsmodels.stats.multitest import multipletests

        return multipletests(p, method=correction)[1]
    result = stats.all_unit_baseline(drops, None, statistic="mean", alternative=tails, n_resamples=settings.n_resamples,
                                     exact_cap=settings.exact_cap, alpha=settings.alpha,
                                     rng=np.random.default_rng(settings.seed))
    return result.p_maxt_step_down if correction == "maxT_stepdown" else result.p_maxt_single_step


def ablation_drop(frozen, analysis: dict, runs, settings: Settings) -> Outcome:
    """Mean drop with intervals, relative drop as preregistered, and the paired sign-flip test per condition.

    Several targets in ``mode: individual`` are tested each alone and corrected together
    (``correction``); the claim is about each of them, so the outcome's ``p`` is the largest adjusted
    p and its ``mean_drop``/``relative_drop`` the smallest.
    """
    out = Outcome(analysis["id"], "ablation_drop")
    run = runs(analysis["run"])
    _exclusion_warnings(run, out)
    cls, mode, tails = analysis.get("pairs", "headline"), analysis.get("mode", "combined"), analysis.get("tails", "greater")
    relative = analysis.get("relative_drop") or frozen.spec["ablation"].get("relative_drop", "ratio_of_means")
    confidence = _confidence(frozen)
    results, frames = [], []
    for label, key, slots in _conditions(frozen, analysis):
        frame = _condition_frame(run, analysis, mode, key)
        if frame is None:
            out.not_established = (f"no {mode} ablation of {key} was captured in run {run.run_id}"
                                   + (" (it is combined_only)" if set(slots) & set(frozen.spec["ablation"].get("combined_only", [])) else ""))
            return out
        head = frame[frame["class"] == cls]
        if len(head) < 2:
            out.not_established = f"{len(head)} {cls} pair(s) left after exclusions; the test needs at least 2"
            return out
        summary = stats.ablation_summary(head["baseline_clean_margin"], head["ablated_clean_margin"],
                                         pair_ids=list(head["pair_id"]), relative_definition=relative,
                                         confidence=confidence, n_boot=settings.n_boot, n_resamples=settings.n_resamples,
                                         rng=np.random.default_rng(settings.seed))
        test = stats.paired_permutation_test(head["clean_drop"].to_numpy(), statistic="mean", alternative=tails,
                                             n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                             rng=np.random.default_rng(settings.seed))
        results.append((label, key, summary, test, head))
        frames.append(_pairs_table(label, key, mode, frame))
    drops = np.column_stack([h["clean_drop"].to_numpy() for *_, h in results]) if len({len(h) for *_, h in results}) == 1 else None
    raw = np.array([float(t.pvalue) for _, _, _, t, _ in results])
    correction = analysis.get("correction", "none")
    if drops is None and correction.startswith("maxT"):
        out.not_established = "the targets were measured on different pairs, so a max-T correction across them is undefined"
        return out
    adjusted = _adjust(raw, drops, correction, settings, tails)
    multi = len(results) > 1
    texts, passed = [], []
    for (label, key, summary, test, head), p_adj in zip(results, adjusted):
        prefix = f"{key}_" if multi else ""
        ok = bool(p_adj <= settings.alpha and _direction_ok(summary.mean_drop, tails))
        passed.append(ok)
        out.numbers.update({f"{prefix}{k}": v for k, v in {
            "target": key, "mode": mode, "n_pairs": summary.n_pairs, "mean_baseline_margin": float(head["baseline_clean_margin"].mean()),
            "mean_ablated_margin": float(head["ablated_clean_margin"].mean()), "mean_drop": summary.mean_drop,
            "mean_drop_ci_low": summary.mean_drop_ci_t[0], "mean_drop_ci_high": summary.mean_drop_ci_t[1],
            "mean_drop_boot_ci_low": summary.mean_drop_ci_boot[0], "mean_drop_boot_ci_high": summary.mean_drop_ci_boot[1],
            "relative_drop": summary.relative_drop, "relative_definition": relative,
            "relative_drop_ci_low": summary.relative_drop_ci[0], "relative_drop_ci_high": summary.relative_drop_ci[1],
            "p_value": float(test.pvalue), "p_adjusted": float(p_adj), "exact": bool(test.exact),
            "n_relabelings": int(test.n_resamples)}.items()})
        texts.append(f"{key} ({mode}): mean {cls} drop {summary.mean_drop:.4g} logits "
                     f"[{summary.mean_drop_ci_t[0]:.3g}, {summary.mean_drop_ci_t[1]:.3g}] over {summary.n_pairs} pairs, "
                     f"relative drop {summary.relative_drop:.3g} ({relative}), sign-flip p = {float(test.pvalue):.4g}"
                     + (f", {correction}-adjusted {float(p_adj):.4g}" if multi and correction != "none" else ""))
    if not multi:
        out.numbers["observed_statistic"] = float(results[0][3].statistic)
        if results[0][3].null_distribution is not None:
            out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"],
                                                            "value": np.asarray(results[0][3].null_distribution, dtype=float)})
    out.quantities.update({"p": float(np.max(adjusted)), "mean_drop": float(min(r[2].mean_drop for r in results)),
                           "relative_drop": float(min(r[2].relative_drop for r in results))})
    out.tables["ablation_pairs"] = pd.concat(frames, ignore_index=True)
    out.tables["ablation_summary"] = pd.concat(
        [r[2].summary_frame().assign(analysis_id=r[0], target=r[1]) for r in results], ignore_index=True)
    out.primary_passed = all(passed)
    out.primary_text = "; ".join(texts) + f" ({tails}) against alpha {settings.alpha}"
    out.facts["targets"] = [r[1] for r in results]
    return out


def _floor(frozen, analysis: dict) -> tuple[str | None, float | None]:
    """The control-drop floor a hypothesis on this analysis names (a threshold ``control_drop_floor*``)."""
    for hyp in frozen.spec["hypotheses"]:
        if hyp["analysis"] == analysis["id"]:
            for name in hyp["thresholds"]:
                if name.startswith("control_drop_floor"):
                    return name, frozen.thresholds[name]
    return None, None


def specificity(frozen, analysis: dict, runs, settings: Settings) -> Outcome:
    """Headline drop against control drop under one condition: the ratio (control mean floored as
    preregistered) with a bootstrap interval, and a permutation test of headline vs control drops."""
    out = Outcome(analysis["id"], "specificity")
    run = runs(analysis["run"])
    _exclusion_warnings(run, out)
    mode, tails = analysis.get("mode", "combined"), analysis.get("tails", "greater")
    conditions = _conditions(frozen, analysis)
    if len(conditions) != 1:
        out.not_established = "a specificity analysis compares one condition; name one target or mode: combined"
        return out
    label, key, _ = conditions[0]
    frame = _condition_frame(run, analysis, mode, key)
    if frame is None:
        out.not_established = f"no {mode} ablation of {key} was captured in run {run.run_id}"
        return out
    cls, control = analysis.get("pairs", "headline"), analysis.get("control", "control")
    frame = frame[frame["class"].isin([cls, control])].reset_index(drop=True)
    head, ctrl = frame[frame["class"] == cls], frame[frame["class"] == control]
    if min(len(head), len(ctrl)) < 2:
        out.not_established = f"too few pairs after exclusions: {len(head)} {cls} and {len(ctrl)} {control} (need 2 each)"
        return out
    floor_name, floor = _floor(frozen, analysis)
    summary = stats.ablation_summary(head["baseline_clean_margin"], head["ablated_clean_margin"],
                                     control_baseline=ctrl["baseline_clean_margin"], control_ablated=ctrl["ablated_clean_margin"],
                                     pair_ids=list(head["pair_id"]), confidence=_confidence(frozen), n_boot=settings.n_boot,
                                     n_resamples=settings.n_resamples, rng=np.random.default_rng(settings.seed))
    h, c = head["clean_drop"].to_numpy(), ctrl["clean_drop"].to_numpy()
    denominator = max(float(c.mean()), floor) if floor is not None else float(c.mean())
    ratio = float(h.mean() / denominator) if denominator > 0 else float("nan")
    rng = np.random.default_rng(settings.seed)
    boot_h = h[rng.integers(0, h.size, size=(settings.n_boot, h.size))].mean(axis=1)
    boot_c = c[rng.integers(0, c.size, size=(settings.n_boot, c.size))].mean(axis=1)
    boot_den = np.maximum(boot_c, floor) if floor is not None else boot_c
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(boot_den > 0, boot_h / boot_den, np.nan)
    alpha_ci = 1 - _confidence(frozen)
    finite = boot[np.isfinite(boot)]
    ci = (float(np.quantile(finite, alpha_ci / 2)), float(np.quantile(finite, 1 - alpha_ci / 2))) if finite.size else (float("nan"),) * 2
    group = (frame["class"] == cls).to_numpy()
    test = stats.permutation_test(frame["clean_drop"].to_numpy(), group, statistic=analysis.get("statistic", "mean_diff"),
                                  alternative=tails, n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                  rng=np.random.default_rng(settings.seed))
    p = float(test.pvalue)
    out.quantities.update({"p": p, "specificity_ratio": ratio, "mean_drop": float(h.mean()), "control_mean_drop": float(c.mean())})
    out.numbers.update({"target": key, "mode": mode, "n_pairs": int(h.size), "n_control": int(c.size),
                        "mean_drop": float(h.mean()), "control_mean_drop": float(c.mean()),
                        "control_mean_drop_ci_low": summary.control_mean_drop_ci_t[0],
                        "control_mean_drop_ci_high": summary.control_mean_drop_ci_t[1],
                        "control_drop_floor": floor, "specificity_ratio": ratio, "specificity_ratio_ci_low": ci[0],
                        "specificity_ratio_ci_high": ci[1], "unfloored_ratio": summary.specificity_ratio,
                        "p_value": p, "exact": bool(test.exact), "n_relabelings": int(test.n_resamples),
                        "observed_statistic": float(test.statistic)})
    if floor is not None and float(c.mean()) < floor:
        out.warnings.append(f"the mean control drop {float(c.mean()):.4g} is below the floor {floor:g} ({floor_name}); "
                            "the ratio's denominator is the floor")
    if test.null_distribution is not None:
        out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"], "value": np.asarray(test.null_distribution, dtype=float)})
    out.tables["ablation_pairs"] = _pairs_table(label, key, mode, frame)
    out.primary_passed = bool(p <= settings.alpha and _direction_ok(float(h.mean() - c.mean()), tails))
    out.primary_text = (f"{key} ({mode}): mean {cls} drop {h.mean():.4g} vs {control} {c.mean():.4g} logits, ratio "
                        f"{ratio:.4g} [{ci[0]:.3g}, {ci[1]:.3g}]" + (f" (control floored at {floor:g})" if floor is not None else "")
                        + f"; permutation p = {p:.4g} ({tails}, {'exact' if test.exact else 'Monte Carlo'}) against alpha {settings.alpha}")
    return out


def head_baseline(frozen, analysis: dict, runs, settings: Settings) -> Outcome:
    """The all-slot baseline of an ablation study: every slot ablated alone, scored by its mean drop on
    the analysed pairs, sign flips shared by all slots (max-T), the target's and every target's rank."""
    out = Outcome(analysis["id"], "all_unit_baseline")
    run = runs(analysis["run"])
    _exclusion_warnings(run, out)
    if analysis.get("statistic", "mean_drop") != "mean_drop":
        out.not_established = f"statistic {analysis['statistic']!r} does not apply to the paired all-slot baseline; it uses mean_drop"
        return out
    if run.baseline.empty:
        out.not_established = f"run {run.run_id} has no all-slot baseline"
        return out
    pairs = run.analysed_pairs(cls=analysis.get("pairs", "headline"), split=analysis.get("split"))
    frame = run.baseline[run.baseline["pair_id"].isin(pairs["pair_id"])]
    if frame["pair_id"].nunique() < 2:
        out.not_established = f"{frame['pair_id'].nunique()} pair(s) in the baseline after exclusions; need at least 2"
        return out
    slots = frame[["slot", "layer", "head", "layer_type"]].drop_duplicates().sort_values(["layer", "head"])
    ids = list(slots["slot"])
    wide = frame.pivot(index="pair_id", columns="slot", values="drop").sort_index().reindex(columns=ids)
    targets = [t["id"] for t in frozen.spec["units"]["targets"] if t["id"] in ids]
    target = analysis.get("unit") or (targets[0] if targets else None)
    if target is None or target not in ids:
        out.not_established = f"the target unit is not among the {len(ids)} slots of the baseline"
        return out
    tails = analysis.get("tails", "greater")
    result = stats.all_unit_baseline(wide.to_numpy(dtype=float), None, unit_ids=ids, target=target, statistic="mean",
                                     alternative=tails, n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                     alpha=settings.alpha, rng=np.random.default_rng(settings.seed), dtype=np.float64,
                                     nan_policy="drop_units")
    out.numbers["n_pairs"] = int(wide.shape[0])
    for t in targets:
        out.numbers[f"{t}_mean_drop"] = float(result.statistic[ids.index(t)])
    _record_baseline(out, {**analysis, "tails": tails}, result, ids, target, targets, settings, "slots by mean drop",
                     {"layer": slots["layer"].to_numpy(), "index": slots["head"].to_numpy(), "layer_type": slots["layer_type"].to_numpy()})
    return out


def _by_design(routing, ablation):
    def analysis(frozen, spec: dict, runs, settings: Settings) -> Outcome:
        return (ablation if frozen.design == "ablation" else routing)(frozen, spec, runs, settings)
    analysis.__name__ = routing.__name__
    return analysis


ANALYSES = {
    "two_group": two_group,
    "all_unit_baseline": _by_design(all_unit_baseline, head_baseline),
    "reproduction": reproduction,
    "register_vs_class": register_vs_class,
    "wsq_decomposition": wsq_decomposition,
    "ablation_drop": ablation_drop,
    "specificity": specificity,
}
