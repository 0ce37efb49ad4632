"""The routing design in the audit: a captured run's tables, the routing analyses, and the facts behind
the evidence standard.

``read_run`` reads ``texts.parquet`` (with the frozen labels) and ``units.parquet``; the analyses compare
W, S or Q of a unit between prompt classes or register labels (``two_group``), race every unit of the
model (``all_unit_baseline``, max-T), repeat a comparison in a second run (``reproduction``), model the
register against the prompt class (``register_vs_class``), and split a W difference into its S and Q
parts (``wsq_decomposition``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

import stats
from lockstep import artifacts, contexts
from lockstep.units import parse_unit_id, unit_id

from .. import basin
from ..topk import TOKEN_ZONES as _TOKEN_ZONES  # shared with the basin comparison
from ..topk import read_topk as _topk
from ..analyses import Outcome, Settings, critical_value, direction_ok, flag_warnings, record_baseline, warn


@dataclass(frozen=True)
class RunData:
    run_id: str
    run_dir: Path
    manifest: dict
    prompts: pd.DataFrame  # prompt_id, prompt_class, split, register_label, n_<zone>, spill
    units: pd.DataFrame     # long: prompt_id, layer, expert, zone, n_tokens, n_selected, S, Q, W

    def matrix(self, zone: str, metric: str, prompt_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """Prompt × unit matrix of ``metric`` in ``zone`` (rows in ``prompt_ids`` order; unit ids LxEy)."""
        frame = self.units[self.units["zone"] == zone]
        wide = frame.pivot(index="prompt_id", columns=["layer", "expert"], values=metric)
        wide = wide.reindex(index=prompt_ids).sort_index(axis=1)
        ids = [unit_id(layer, expert, "E") for layer, expert in wide.columns]
        return wide.to_numpy(dtype=float), ids


def read_run(run_id: str, run_dir: Path) -> RunData:
    manifest = json.loads((run_dir / artifacts.MANIFEST).read_text())
    texts = pq.read_table(run_dir / artifacts.TEXTS, columns=["prompt_id", "class", "split", "n_prefill", "n_generated",
                                                              "n_trimmed", "n_spill", "trim_position", "token_ids",
                                                              "trimmed_text"]).to_pandas()
    # the facts the preregistered exclusion rules read (study.schema.json /exclusions; see _exclude)
    texts["no_trim_token"] = texts["trim_position"] >= texts["token_ids"].map(len)
    texts["other_language"] = texts["trimmed_text"].map(other_language)
    texts = texts.drop(columns=["trim_position", "token_ids", "trimmed_text"])
    labels = pq.read_table(run_dir / artifacts.LABELS, columns=["prompt_id", "label"]).to_pandas()
    prompts = texts.rename(columns={"class": "prompt_class"}).merge(
        labels.rename(columns={"label": "register_label"}), on="prompt_id", how="left")
    units = pq.read_table(run_dir / artifacts.UNITS).to_pandas()
    return RunData(run_id, run_dir, manifest, prompts.sort_values("prompt_id").reset_index(drop=True), units)


def _groups(run: RunData, analysis: dict, split: str | None) -> tuple[pd.DataFrame, np.ndarray]:
    prompts = run.prompts if split is None else run.prompts[run.prompts["split"] == split]
    column = "prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"
    keep = prompts[column].isin([analysis["groups"]["a"], analysis["groups"]["b"]])
    prompts = prompts[keep].reset_index(drop=True)
    return prompts, (prompts[column] == analysis["groups"]["a"]).to_numpy()


_WORD = re.compile(r"[^\W\d_]+")


def other_language(text: str) -> bool:
    """The ``other_language`` rule: fewer than half of the text's alphabetic word tokens are ASCII words
    (an English-only lexicon rubric cannot label it). A text with no alphabetic word is not judged."""
    words = _WORD.findall(text or "")
    return bool(words) and sum(w.isascii() for w in words) * 2 < len(words)


# The zones a rule applies to (a generation property says nothing about the prompt's own tokens), and
# whether it also leaves a prompt out of analyses grouped by, or modelling, the register label.
_RULE_ZONES = {"no_trim_token": ("generated", "trimmed", "spill"), "other_language": ("generated", "trimmed", "spill")}
_RULE_REGISTER = {"other_language"}


def _applies(rule: dict, analysis: dict) -> bool:
    by_register = analysis["kind"] == "register_vs_class" or (analysis.get("groups") or {}).get("by") == "register_label"
    return analysis["zone"] in _RULE_ZONES.get(rule["rule"], ()) or (by_register and rule["rule"] in _RULE_REGISTER)


def _by_class(rows: pd.DataFrame) -> str:
    return ", ".join(f"{c} {n}" for c, n in _class_counts(rows).items())


def _exclude(frozen, prompts: pd.DataFrame, analysis: dict, out: Outcome) -> pd.DataFrame:
    """The prompts an analysis keeps: an empty zone leaves a prompt out; so does every preregistered
    exclusion rule with ``action: exclude`` that applies to the analysis. A rule with ``action: flag``
    keeps its prompts and names them (the two-group analyses add a sensitivity result without them)."""
    zone = analysis["zone"]
    left = analysis.get("leave_out")
    if left:  # a preregistered sensitivity analysis
        gone = prompts[prompts["prompt_id"].isin(left["prompts"])]
        warn(out, "left_out", f"{len(gone)} prompt(s) left out as preregistered ({left['reason']}): {', '.join(gone['prompt_id'])}")
        prompts = prompts[~prompts["prompt_id"].isin(left["prompts"])]
    if f"n_{zone}" in prompts:
        empty = prompts[prompts[f"n_{zone}"] == 0]
        if len(empty):
            warn(out, "empty_zone", f"{len(empty)} prompt(s) excluded for an empty {zone} zone: {', '.join(empty['prompt_id'])}")
        prompts = prompts[prompts[f"n_{zone}"] > 0]
    for rule in frozen.spec.get("exclusions", []):
        if rule["rule"] not in _RULE_ZONES or rule["rule"] not in prompts or not _applies(rule, analysis):
            continue
        hit = prompts[prompts[rule["rule"]]]
        if not len(hit):
            continue
        if rule.get("action", "exclude") == "exclude":
            warn(out, "excluded", f"{rule['id']} ({rule['rule']}) excluded {len(hit)} prompt(s) ({_by_class(hit)}): "
                 f"{', '.join(hit['prompt_id'])}")
            prompts = prompts[~prompts[rule["rule"]]]
        else:
            warn(out, "flagged", f"{rule['id']} ({rule['rule']}) flags {len(hit)} prompt(s) ({_by_class(hit)}), kept as "
                 f"preregistered: {', '.join(hit['prompt_id'])}")
    prompts = prompts.reset_index(drop=True)
    minimum = frozen.spec.get("sampling_plan", {}).get("min_after_exclusions") or {}
    short = [f"{cls} {int((prompts['prompt_class'] == cls).sum())} < {need}" for cls, need in sorted(minimum.items())
             if cls in set(run_classes(analysis)) and int((prompts["prompt_class"] == cls).sum()) < need]
    if short and not out.not_established:
        out.not_established = ("the sampling plan's minimum after exclusions is not met ("
                               + ", ".join(short) + "; /sampling_plan/min_after_exclusions)")
    return prompts


def run_classes(analysis: dict) -> list[str]:
    """The prompt classes an analysis compares (none for a grouping by register label)."""
    if "classes" in analysis:
        return [analysis["classes"]["a"], analysis["classes"]["b"]]
    groups = analysis.get("groups") or {}
    return [groups["a"], groups["b"]] if groups.get("by") == "prompt_class" else []


def _flagged(frozen, prompts: pd.DataFrame, analysis: dict) -> dict[str, np.ndarray]:
    """``{rule id: mask}`` of the prompts each applicable ``action: flag`` rule flags."""
    return {rule["id"]: prompts[rule["rule"]].to_numpy(bool) for rule in frozen.spec.get("exclusions", [])
            if rule.get("action", "exclude") == "flag" and rule["rule"] in _RULE_ZONES and rule["rule"] in prompts
            and _applies(rule, analysis) and prompts[rule["rule"]].any()}


#: The prompt class built to elicit the rubric's target register (DESIGN.md: FIRE / NOFIRE).
TARGET_CLASS = "FIRE"


def crossing(frozen, prompt_class, register_label) -> np.ndarray:
    """Which prompts cross their class (:func:`stats.crosses`) in the study's own names: FIRE and the frozen
    rubric's target label."""
    return stats.crosses(prompt_class, register_label, target_class=TARGET_CLASS,
                         target_register=frozen.rubric["target_label"])


def _two_group_core(run: RunData, analysis: dict, settings: Settings, out: Outcome, unit: str, suffix: str = "",
                    *, frozen) -> bool:
    prompts, group = _groups(run, analysis, analysis.get("split"))
    prompts = _exclude(frozen, prompts, analysis, out)
    group = (prompts["prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"] == analysis["groups"]["a"]).to_numpy()
    x, ids = run.matrix(analysis["zone"], analysis["metric"], list(prompts["prompt_id"]))
    if unit not in ids:
        out.not_established = f"unit {unit} is not in the captured run {run.run_id} (the model has {len(ids)} units)"
        return False
    values = x[:, ids.index(unit)]
    finite = np.isfinite(values)
    if (~finite).any():
        warn(out, "never_selected", f"{int((~finite).sum())} prompt(s) have no {analysis['metric']} for {unit} (never selected) and are left out")
    values, group, prompts = values[finite], group[finite], prompts[finite].reset_index(drop=True)
    n_a, n_b = int(group.sum()), int((~group).sum())
    need = int(analysis.get("min_group_size", 2))
    if min(n_a, n_b) < need:
        out.not_established = (f"too few prompts: {n_a} in {analysis['groups']['a']} and {n_b} in {analysis['groups']['b']} "
                               f"(need {need} each{', the preregistered min_group_size' if need > 2 else ''})")
        return False
    rng = np.random.default_rng(settings.seed)
    effect = stats.compare_groups(values[group], values[~group], ids_a=list(prompts["prompt_id"][group]),
                                  ids_b=list(prompts["prompt_id"][~group]), n_boot=settings.n_boot, rng=rng)
    flag_warnings(out, effect.flags)
    # spreads this different make a permutation test's alpha unreliable for means (bench/RESULTS.md: SD 3:1,
    # i.e. variance 9:1, gives a family-wise error of .24 at alpha .05): a variance ratio beyond 4 either way,
    # or a Brown-Forsythe test that rejects at .01
    ratio = effect.variance_ratio
    lopsided = bool(np.isfinite(ratio) and ratio > 0 and max(ratio, 1 / ratio) >= 4)
    if analysis["null"] == "exchangeable" and (lopsided or (np.isfinite(effect.brown_forsythe_p) and effect.brown_forsythe_p <= 0.01)):
        warn(out, "not_exchangeable",
             f"the groups' spreads differ (variance ratio {effect.variance_ratio:.3g}, Brown-Forsythe p = "
             f"{effect.brown_forsythe_p:.2g}): a permutation test of exchangeable groups is then not a test of equal means, "
             "and its alpha is not reliable for a claim about means (preregister null: equal_means)")
    test = stats.permutation_test(values, group, statistic=analysis["statistic"], null=analysis["null"],
                                  alternative=analysis["tails"], n_resamples=settings.n_resamples,
                                  exact_cap=settings.exact_cap, rng=np.random.default_rng(settings.seed))
    p = float(test.pvalue)
    ratio = effect.ratio
    floor = analysis.get("ratio_floor")
    if floor is not None:  # the preregistered floor (study.schema.json /analyses/ratio_floor)
        ratio = max(effect.mean_a, floor) / max(effect.mean_b, floor)
        out.numbers[f"ratio_unfloored{suffix}"] = effect.ratio
        out.numbers[f"ratio_floor{suffix}"] = floor
    out.quantities.update({f"p{suffix}": p, f"ratio{suffix}": ratio, f"cohen_d{suffix}": effect.cohen_d,
                           f"hedges_g{suffix}": effect.hedges_g, f"auc{suffix}": effect.auc, f"mean_diff{suffix}": effect.mean_diff})
    out.numbers.update({f"{k}{suffix}": v for k, v in {
        "n_a": n_a, "n_b": n_b, "mean_a": effect.mean_a, "mean_b": effect.mean_b, "ratio": ratio,
        "ratio_ci_low": effect.ratio_ci[0], "ratio_ci_high": effect.ratio_ci[1], "cohen_d": effect.cohen_d,
        "cohen_d_ci_low": effect.cohen_d_ci[0], "cohen_d_ci_high": effect.cohen_d_ci[1], "hedges_g": effect.hedges_g,
        "auc": effect.auc, "p_value": p, "exact": bool(test.exact), "null": test.null, "resampling": test.resampling,
        "variance_ratio": effect.variance_ratio, "brown_forsythe_p": effect.brown_forsythe_p,
        "n_relabelings": math.comb(n_a + n_b, n_a) if test.exact else int(test.n_resamples),
        "ranges_overlap": bool(effect.ranges_overlap)}.items()})
    crosses = crossing(frozen, prompts["prompt_class"], prompts["register_label"])
    out.numbers[f"crossing_prompts{suffix}"] = ", ".join(map(str, prompts["prompt_id"][crosses]))
    frame = pd.DataFrame({"analysis_id": analysis["id"], "unit": unit, "run": run.run_id, "zone": analysis["zone"],
                          "metric": analysis["metric"], "prompt_id": prompts["prompt_id"], "prompt_class": prompts["prompt_class"],
                          "register_label": prompts["register_label"], "value": values,
                          "crosses": crosses})
    out.tables.setdefault("target_values", pd.DataFrame())
    out.tables["target_values"] = pd.concat([out.tables["target_values"], frame], ignore_index=True)
    if test.null_distribution is not None and not suffix:
        out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"], "value": np.asarray(test.null_distribution).ravel()})
        out.numbers["observed_statistic"] = float(test.statistic)
        out.numbers["critical_statistic"] = critical_value(test.null_distribution, settings.alpha, analysis["tails"], bool(test.exact))
    for rule_id, mask in _flagged(frozen, prompts, analysis).items():
        # the preregistered sensitivity result: the same comparison without the flagged prompts
        keep = ~mask
        g = group[keep]
        if min(int(g.sum()), int((~g).sum())) < 2:
            out.numbers[f"without_{rule_id}{suffix}"] = "too few prompts left"
            continue
        sub = stats.compare_groups(values[keep][g], values[keep][~g], n_boot=settings.n_boot, rng=np.random.default_rng(settings.seed))
        sub_test = stats.permutation_test(values[keep], g, statistic=analysis["statistic"], null=analysis["null"],
                                          alternative=analysis["tails"], n_resamples=settings.n_resamples,
                                          exact_cap=settings.exact_cap, rng=np.random.default_rng(settings.seed))
        out.numbers.update({f"p_without_{rule_id}{suffix}": float(sub_test.pvalue), f"ratio_without_{rule_id}{suffix}": sub.ratio,
                            f"cohen_d_without_{rule_id}{suffix}": sub.cohen_d, f"n_without_{rule_id}{suffix}": int(keep.sum())})
    passed = p <= settings.alpha and direction_ok(effect.mean_diff, analysis["tails"])
    out.facts["spill_tokens"] = int(run.prompts["n_spill"].sum())
    if analysis["zone"] == "generated":
        spilled = prompts[prompts["n_spill"] > 0] if "n_spill" in prompts else prompts.iloc[:0]
        if len(spilled):
            warn(out, "spill_in_zone", f"{int(spilled['n_spill'].sum())} token(s) of {len(spilled)} prompt(s) in run {run.run_id} "
                 "spilled past a trim token into the generated zone this claim scores (score the trimmed zone to leave them out)")
    return passed


def token_contexts(run: RunData, analysis: dict, values: pd.DataFrame, *, top: int = 5, window: int = 8) -> pd.DataFrame | None:
    """Where the unit carried its routed weight: for each compared group its ``top`` tokens by the unit's
    weight in the analysis's zone, and for each crossing prompt its heaviest token, each with ``window``
    tokens of text on either side (read from the per-token top-k capture stores, ``topk/``, and the run's
    ``topk/vocab.parquet``). None when the run stored no per-token top-k.

    ``values`` is the analysis's rows of ``target_values`` (the prompts it compared, after exclusions).
    """
    stored = _topk(run.run_dir)
    if stored is None:
        return None
    layer, _, expert = parse_unit_id(analysis["unit"])
    layers = [m["layer"] for m in run.manifest.get("moe_layers", [])]
    if layer not in layers:
        return None
    li = layers.index(layer)
    tokens, idx, weight, vocab, joiner = stored
    tokens = tokens.assign(w=contexts.unit_weight(idx, weight, li, expert))
    tokens = tokens[tokens["zone"].isin(_TOKEN_ZONES[analysis["zone"]]) & tokens["prompt_id"].isin(values["prompt_id"])]
    text = contexts.token_text(vocab)
    by_prompt = {pid: g.sort_values("position") for pid, g in tokens.groupby("prompt_id")}
    group_col = "prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"

    def rows_for(label: str, prompt_ids, n: int) -> list[dict]:
        pool = tokens[tokens["prompt_id"].isin(prompt_ids) & (tokens["w"] > 0)].nlargest(n, "w")
        out = []
        for r in pool.itertuples():
            seq = by_prompt[r.prompt_id]
            at = int(np.flatnonzero(seq["position"].to_numpy() == r.position)[0])
            ids = seq["token_id"].to_numpy()
            out.append({"analysis_id": analysis["id"], "unit": analysis["unit"], "run": run.run_id, "set": label,
                        "prompt_id": r.prompt_id, "position": int(r.position), "weight": float(r.w),
                        **contexts.window(ids, at, window, text, joiner)})
        return out

    rows = []
    for side in ("a", "b"):
        label = analysis["groups"][side]
        rows += rows_for(label, values.loc[values[group_col] == label, "prompt_id"], top)
    for pid in values.loc[values["crosses"].astype(bool), "prompt_id"]:
        rows += rows_for("crossing", [pid], 1)
    columns = ["analysis_id", "unit", "run", "set", "prompt_id", "position", "weight", "before", "token", "after"]
    return pd.DataFrame(rows, columns=columns)


def two_group(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "two_group")
    run = runs(analysis["run"])
    passed = _two_group_core(run, analysis, settings, out, analysis["unit"], frozen=frozen)
    if not out.not_established and "target_values" in out.tables:
        values = out.tables["target_values"]
        where = token_contexts(run, analysis, values[values["analysis_id"] == analysis["id"]])
        if where is not None:
            out.tables["contexts"] = where
    if out.not_established:
        return out
    out.primary_passed = passed
    g = analysis["groups"]
    if out.numbers["null"] == "equal_means":  # a resampling test of equal means, not a relabeling test
        how = f"{out.numbers['resampling']} bootstrap p = {out.quantities['p']:.4g} ({analysis['tails']}; equal means, " \
              f"{out.numbers['n_relabelings']} resamples)"
    else:
        how = (f"permutation p = {out.quantities['p']:.4g} ({analysis['tails']}; {'exact' if out.numbers['exact'] else 'Monte Carlo'}, "
               f"{out.numbers['n_relabelings']} relabelings)")
    out.primary_text = (f"{analysis['unit']} {analysis['metric']} in the {analysis['zone']} zone, {g['a']} vs {g['b']}: "
                        f"mean {out.numbers['mean_a']:.4g} vs {out.numbers['mean_b']:.4g}, {how} against alpha {settings.alpha}")
    _wsq_table(run, analysis, out)
    return out


def _mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of the finite ``values`` (NaN with fewer than two)."""
    from scipy import stats as sps

    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + confidence / 2, finite.size - 1) * finite.std(ddof=1) / np.sqrt(finite.size))
    return float(finite.mean() - half), float(finite.mean() + half)


def _wsq_table(run: RunData, analysis: dict, out: Outcome) -> None:
    prompts, group = _groups(run, analysis, analysis.get("split"))
    rows = []
    for label, mask in ((analysis["groups"]["a"], group), (analysis["groups"]["b"], ~group)):
        row = {"analysis_id": analysis["id"], "unit": analysis["unit"], "group": label}
        for metric in ("W", "S", "Q"):
            x, ids = run.matrix(analysis["zone"], metric, list(prompts["prompt_id"][mask]))
            column = x[:, ids.index(analysis["unit"])]
            # Q of a group that never selects the unit is undefined (NaN), not 0
            row[metric] = float(np.nanmean(column)) if mask.any() and np.isfinite(column).any() else float("nan")
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = _mean_interval(column)
        rows.append(row)
    out.tables["wsq"] = pd.DataFrame(rows)


def all_unit_baseline(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "all_unit_baseline")
    run = runs(analysis["run"])
    prompts, _ = _groups(run, analysis, analysis.get("split"))
    prompts = _exclude(frozen, prompts, analysis, out)
    column = "prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"
    group = (prompts[column] == analysis["groups"]["a"]).to_numpy()
    need = int(analysis.get("min_group_size", 2))
    if min(group.sum(), (~group).sum()) < need:
        out.not_established = (f"too few prompts: {int(group.sum())} in {analysis['groups']['a']} and {int((~group).sum())} in "
                               f"{analysis['groups']['b']} (need {need} each{', the preregistered min_group_size' if need > 2 else ''})")
        return out
    x, ids = run.matrix(analysis["zone"], analysis["metric"], list(prompts["prompt_id"]))
    targets = [t["id"] for t in frozen.spec["units"]["targets"] if t["id"] in ids]
    target = analysis.get("unit") or (targets[0] if targets else None)
    if target is None or target not in ids:
        out.not_established = f"the target unit is not among the {len(ids)} captured units"
        return out
    x = np.nan_to_num(x, nan=0.0) if analysis["metric"] in ("W", "S") else x
    result = stats.all_unit_baseline(x, group, unit_ids=ids, target=target, statistic=analysis["statistic"], null=analysis["null"],
                                     alternative=analysis["tails"], n_resamples=settings.n_resamples,
                                     exact_cap=settings.exact_cap, alpha=settings.alpha,
                                     rng=np.random.default_rng(settings.seed), dtype=np.float64, nan_policy="drop_units")
    layers_idx = [parse_unit_id(u) for u in ids]
    record_baseline(out, analysis, result, ids, target, targets, settings, "units",
                     {"layer": [l for l, _, _ in layers_idx], "index": [i for _, _, i in layers_idx]})
    # how sure the rank is: the target's rank over a stratified bootstrap of the prompts (stats.rank_interval)
    finite = np.isfinite(x).all(axis=0)
    j = [u for u, ok in zip(ids, finite) if ok].index(target) if finite[ids.index(target)] else None
    if j is not None:
        ranked = stats.rank_interval(x[:, finite], group, target=j, statistic=analysis["statistic"], alternative=analysis["tails"],
                                     n_boot=settings.n_boot, rng=np.random.default_rng(settings.seed))
        out.quantities.update({"target_rank_upper": float(ranked.rank_ci[1]), "p_target_first": ranked.p_first})
        out.numbers.update({"target_rank_ci_low": ranked.rank_ci[0], "target_rank_ci_high": ranked.rank_ci[1],
                            "p_target_first": ranked.p_first})
        out.primary_text += (f"; bootstrap rank interval [{ranked.rank_ci[0]}, {ranked.rank_ci[1]}], "
                             f"first in {ranked.p_first:.0%} of {ranked.n_boot} resamples")
    return out


def reproduction(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "reproduction")
    first, second = analysis["runs"]
    ok_first = _two_group_core(runs(first), analysis, settings, out, analysis["unit"], suffix=f"_{first}", frozen=frozen)
    if out.not_established:
        return out
    ok_second = _two_group_core(runs(second), analysis, settings, out, analysis["unit"], suffix=f"_{second}", frozen=frozen)
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
    prompts = _exclude(frozen, prompts, analysis, out)
    x, ids = run.matrix(analysis["zone"], analysis["metric"], list(prompts["prompt_id"]))
    if analysis["unit"] not in ids:
        out.not_established = f"unit {analysis['unit']} is not in the captured run"
        return out
    values = x[:, ids.index(analysis["unit"])]
    if len(prompts) < 4:
        out.not_established = f"too few prompts ({len(prompts)}) for a model of register and class"
        return out
    target_register, other_register = analysis["register"]["target"], analysis["register"]["other"]
    register = np.where(prompts["register_label"] == target_register, target_register, other_register)
    result = stats.register_analysis(values, prompts["prompt_class"].to_numpy(), register,
                                     target_class=analysis["classes"]["a"], other_class=analysis["classes"]["b"],
                                     target_register=target_register, other_register=other_register,
                                     ids=list(prompts["prompt_id"]), cov_type=analysis["cov_type"])
    coef = result.coefficients.set_index("term")
    reg, cls, diff = coef.loc["register"], coef.loc["prompt_class"], coef.loc["register - prompt_class"]
    cells = result.cells.rename(columns={"register": "register_label"})
    cells.insert(0, "analysis_id", analysis["id"])
    cells["crosses"] = stats.crosses(cells["prompt_class"], cells["register_label"], target_class=analysis["classes"]["a"],
                                     target_register=target_register)
    out.tables["class_register"] = cells
    out.numbers.update({"register_effect": float(reg["estimate"]), "register_ci_low": float(reg["ci_low"]),
                        "register_ci_high": float(reg["ci_high"]), "register_p": float(reg["pvalue"]),
                        "class_effect": float(cls["estimate"]), "class_ci_low": float(cls["ci_low"]),
                        "class_ci_high": float(cls["ci_high"]), "class_p": float(cls["pvalue"]),
                        "register_minus_class": float(diff["estimate"]), "register_minus_class_ci_low": float(diff["ci_low"]),
                        "register_minus_class_ci_high": float(diff["ci_high"]), "register_minus_class_p": float(diff["pvalue"]),
                        "crossing_prompts": ", ".join(map(str, result.crossing["item"])) if len(result.crossing) else ""})
    out.quantities.update({"p": float(reg["pvalue"]), "register_effect": float(reg["estimate"]), "class_effect": float(cls["estimate"]),
                           "register_minus_class": float(diff["estimate"])})
    flag_warnings(out, result.flags)
    if not np.isfinite(reg["pvalue"]):
        codes = {f.code for f in result.flags}
        if "register_constant" in codes:
            out.not_established = ("every analysed generation has the same register label, so there is no register "
                                   "difference to compare with the class difference")
        else:
            out.not_established = ("register and prompt class are confounded (no prompt left its class's register), "
                                   "so the model cannot separate them")
        return out
    out.primary_passed = bool(reg["pvalue"] <= settings.alpha and reg["estimate"] > 0)
    # "the register rather than the class": the register effect must also exceed the class effect
    # (one-sided test of the contrast, from its two-sided p)
    one_sided = float(diff["pvalue"]) / 2 if diff["estimate"] > 0 else 1 - float(diff["pvalue"]) / 2
    out.numbers["register_minus_class_p_one_sided"] = one_sided
    if out.primary_passed and one_sided > settings.alpha:
        warn(out, "register_not_above_class",
             f"the register effect is not shown larger than the class effect: register - class = {diff['estimate']:.3g} "
             f"[{diff['ci_low']:.3g}, {diff['ci_high']:.3g}], one-sided p = {one_sided:.3g} against alpha {settings.alpha}")
    out.primary_text = (f"{analysis['unit']} {analysis['metric']} ~ register + class: register effect {reg['estimate']:.4g} "
                        f"[{reg['ci_low']:.3g}, {reg['ci_high']:.3g}], p = {reg['pvalue']:.3g}; class effect {cls['estimate']:.4g} "
                        f"[{cls['ci_low']:.3g}, {cls['ci_high']:.3g}]; register - class {diff['estimate']:.3g} "
                        f"[{diff['ci_low']:.3g}, {diff['ci_high']:.3g}]")
    out.facts["register_separated"] = bool(out.primary_passed)
    return out


def wsq_decomposition(frozen, analysis: dict, runs: Callable[[str], RunData], settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "wsq_decomposition")
    run = runs(analysis["run"])
    prompts, group = _groups(run, analysis, analysis.get("split"))
    prompts = _exclude(frozen, prompts, analysis, out)
    group = (prompts["prompt_class" if analysis["groups"]["by"] == "prompt_class" else "register_label"] == analysis["groups"]["a"]).to_numpy()
    s, ids = run.matrix(analysis["zone"], "S", list(prompts["prompt_id"]))
    q, _ = run.matrix(analysis["zone"], "Q", list(prompts["prompt_id"]))
    if analysis["unit"] not in ids:
        out.not_established = f"unit {analysis['unit']} is not in the captured run"
        return out
    j = ids.index(analysis["unit"])
    result = stats.wsq_decomposition(s[:, j], q[:, j], group, n_boot=settings.n_boot, rng=np.random.default_rng(settings.seed))
    flag_warnings(out, result.flags)
    share = float(result.s_share)
    # a share of a W difference means something only when that difference is in the claimed direction and
    # distinguishable from zero: the per-prompt W of the unit, tested as a two-group analysis would
    w, _ = run.matrix(analysis["zone"], "W", list(prompts["prompt_id"]))
    w_unit = np.nan_to_num(w[:, j], nan=0.0)
    test = stats.permutation_test(w_unit, group, statistic=analysis["statistic"], alternative=analysis["tails"],
                                  null=analysis["null"], n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                  rng=np.random.default_rng(settings.seed))
    p = float(test.pvalue)
    out.quantities.update({"s_share": share, "p": p})
    out.numbers.update({"carrier": result.carrier, "delta_w": float(result.delta_w), "s_part": float(result.s_part), "s_share": share,
                        "s_share_ci_low": float(result.s_share_ci[0]), "s_share_ci_high": float(result.s_share_ci[1]),
                        "s_a": float(result.s_a), "s_b": float(result.s_b), "q_a": float(result.q_a), "q_b": float(result.q_b),
                        "delta_w_p": p, "null": test.null})
    in_direction = direction_ok(float(result.delta_w), analysis["tails"])
    # a share outside [0, 1] means the S and Q parts pull opposite ways; a point estimate just past 1 whose
    # interval still reaches [0, 1] is a Q part indistinguishable from zero, not opposite signs
    low, high = (float(v) for v in result.s_share_ci)
    within = bool(np.isfinite(share) and (0.0 <= share <= 1.0 or (np.isfinite(low) and np.isfinite(high)
                                                                   and low <= 1.0 and high >= 0.0)))
    out.primary_passed = bool(in_direction and p <= settings.alpha and within)
    why = []
    if not in_direction or p > settings.alpha:
        why.append(f"the W difference it splits is not established in the {analysis['tails']} direction "
                   f"(ΔW = {result.delta_w:.4g}, p = {p:.4g} against alpha {settings.alpha})")
    if not within:
        why.append(f"an S share of {share:.3g} [{low:.3g}, {high:.3g}] lies outside [0, 1]: the S and Q parts have opposite signs")
    out.primary_text = (f"{analysis['unit']}: ΔW = {result.delta_w:.4g} (p = {p:.4g}, {analysis['tails']}), of which the S part "
                        f"is {share:.0%} [{result.s_share_ci[0]:.0%}, {result.s_share_ci[1]:.0%}]; carrier: {result.carrier}"
                        + (f"; {'; '.join(why)}" if why else ""))
    _wsq_table(run, {**analysis, "metric": "W"}, out)
    return out


ANALYSES = {
    "two_group": two_group,
    "all_unit_baseline": all_unit_baseline,
    "reproduction": reproduction,
    "register_vs_class": register_vs_class,
    "wsq_decomposition": wsq_decomposition,
    "basin_comparison": basin.basin_comparison,
    "duplicate_check": basin.duplicate_check,
}


def evidence_facts(hypothesis: dict, analysis: dict, outcome: Outcome, study_outcomes: dict[str, Outcome],
                   study) -> dict[int, tuple[bool, str]]:
    """Points 1-7 of the evidence standard for one claim, each with the fact that met or failed it."""
    zone = analysis.get("zone")
    unit = analysis.get("unit") or next((t["id"] for t in study.spec["units"]["targets"]), None)
    same_unit = [(study.analysis(a_id), o) for a_id, o in study_outcomes.items() if study.analysis(a_id).get("unit", unit) == unit]
    register = [o for a, o in same_unit if a["kind"] == "register_vs_class"]
    repro = [o for a, o in same_unit if a["kind"] == "reproduction"]
    anchors, anchor_fact = _anchors_matched(study, analysis)
    spill = outcome.facts.get("spill_tokens")
    register_ok = bool(register and register[0].primary_passed
                       and not any(w.code == "register_not_above_class" for w in register[0].warnings))
    if not register:
        register_fact = "no register_vs_class analysis of this unit"
    elif register_ok:
        register_fact = register[0].primary_text
    else:
        register_fact = register[0].primary_text + ("; the register effect is not shown above the class effect"
                                                    if register[0].primary_passed else "")
    wsq = [a for a, _ in same_unit if a["kind"] in ("two_group", "wsq_decomposition")]
    if zone == "trimmed":
        spill_fact = "trimmed before the first trim token"
    elif zone == "prefill":
        spill_fact = "scored in the prefill zone, which holds no generated special tokens"
    else:
        spill_fact = f"zone {zone}; {spill} spill tokens in the run" + ("" if spill == 0 else ": score the trimmed zone")
    if analysis["kind"] == "duplicate_check":  # compares every token of two runs exactly: no zone to score
        zone, spill = "generated", 0
        spill_fact = "every token compared exactly, spill included: spill cannot inflate an exact comparison"
    return {
        1: (zone in ("generated", "trimmed"), f"scored in the {zone} zone" if zone else "no zone"),
        2: (unit is not None, f"unit {unit}" if unit else "no named unit"),
        3: (anchors and outcome.primary_passed, anchor_fact + ("" if outcome.primary_passed else "; the primary criterion failed")),
        4: (register_ok, register_fact),
        5: (bool(repro and repro[0].primary_passed), repro[0].primary_text if repro else "no reproduction analysis of this unit"),
        6: (zone in ("trimmed", "prefill") or (zone == "generated" and spill == 0), spill_fact),
        7: (bool(wsq), f"W, S and Q tabulated for {unit} by {', '.join(sorted({a['id'] for a in wsq}))}" if wsq
            else f"no two_group or wsq_decomposition analysis of {unit}: W, S and Q not tabulated"),
    }


def _anchors_matched(study, analysis: dict) -> tuple[bool, str]:
    """Whether the prompts behind the compared groups share lexical anchors, and the fact that says so.

    Groups by prompt class compare those two classes; groups by register label compare texts generated
    from every class of the split, so their lexical control is that the split's classes share anchors.
    """
    groups = analysis.get("groups") or ({"by": "prompt_class", **analysis["classes"]} if "classes" in analysis else {})
    split = analysis.get("split")
    if groups.get("by") == "prompt_class":
        classes = [groups["a"], groups["b"]]
    else:
        classes = sorted({p["class"] for p in study.prompts_in(split)})
    if len(classes) < 2:
        return False, "the groups do not come from two prompt classes, so no lexical anchors can be matched"
    words = [{w.casefold() for p in study.prompts_in(split, c) for w in p.get("anchors", [])} for c in classes]
    shared = set.intersection(*words)
    names = " and ".join(classes)
    if not shared:
        return False, f"the prompts of {names} share no lexical anchors"
    lead = "" if groups.get("by") == "prompt_class" else f"grouped by {groups.get('by', 'register label')}; "
    return True, f"{lead}{names} share {len(shared)} lexical anchor{'s' if len(shared) != 1 else ''}"


def exclusions(frozen, run: RunData) -> list[dict]:
    """The prompts of ``run`` that its analyses leave out, by rule: ``[{"rule", "description", "ids"}]``.

    A prompt whose zone is empty is left out of every analysis of that zone (the ``empty_zone`` warning);
    the plan's ``empty_<zone>`` exclusion names the rule when it has one. Only the splits the run's
    analyses read are listed.
    """
    mine = [a for a in frozen.analyses if run.run_id in [a.get("run"), *a.get("runs", [])] and a.get("zone")]
    rules = {x["rule"]: x for x in frozen.spec.get("exclusions", [])}
    out = []
    for zone in sorted({a["zone"] for a in mine}):
        splits = {a.get("split") for a in mine if a["zone"] == zone}
        prompts = run.prompts if None in splits else run.prompts[run.prompts["split"].isin(splits)]
        if f"n_{zone}" not in prompts:
            continue
        empty = prompts[prompts[f"n_{zone}"] == 0]
        if len(empty):
            rule = rules.get(f"empty_{zone}")
            out.append({"rule": rule["id"] if rule else f"empty_{zone}",
                        "description": rule["description"] if rule else f"an empty {zone} zone leaves a prompt out of every {zone}-zone analysis",
                        "ids": sorted(empty["prompt_id"].astype(str)), "action": "exclude", "by_class": _class_counts(empty)})
    splits = {a.get("split") for a in mine}
    prompts = run.prompts if None in splits else run.prompts[run.prompts["split"].isin(splits)]
    for rule in frozen.spec.get("exclusions", []):
        if rule["rule"] not in _RULE_ZONES or rule["rule"] not in prompts:
            continue
        hit = prompts[prompts[rule["rule"]]]
        if len(hit):
            out.append({"rule": rule["id"], "description": rule["description"], "ids": sorted(hit["prompt_id"].astype(str)),
                        "action": rule.get("action", "exclude"), "by_class": _class_counts(hit)})
    return out


def _class_counts(rows: pd.DataFrame) -> dict[str, int]:
    return {str(c): int(n) for c, n in rows["prompt_class"].value_counts().sort_index().items()}
