"""The ablation design in the audit: a captured run's tables and the ablation analyses.

Margins and drops come from ``capture/designs/ablation.py``: drop = unablated clean margin - ablated
clean margin, per pair, on the pairs left after the preregistered exclusions. Conditions are keyed as
capture keys them (:func:`lockstep.units.condition_key`), and by the replacement (``kind``: the
analysis's ``ablation_kind``, resolved to the plan's ``ablation.kind`` unless it names a sensitivity
kind). The analyses: ``ablation_drop`` (mean drop, relative drop, paired sign-flip test, with the
distribution of unablated margins and the corrupted prompts' drops described beside it),
``specificity`` (headline against control drops, each class's relative drop) and
``all_unit_baseline`` (every slot ablated alone, max-T over slots; with a ``control`` class the slots
are ranked and tested on headline minus control drop, by a studentised statistic).

The stopping rule ``ablation.min_pairs_after_exclusions`` is enforced before any analysis: a class
with fewer analysed pairs makes every analysis ``not_established`` (warning code
``stopping_rule_unmet``, with the counts in the outcome's numbers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import stats as sps

import stats
from lockstep import artifacts
from lockstep.units import condition_key

from ..analyses import Outcome, Settings, critical_value, direction_ok, record_baseline, warn
from ..source_trace import source_trace as _trace
from .ablation_sae import knockdown as _sae_knockdown


@dataclass(frozen=True)
class AblationRunData:
    """A captured ablation run (capture/designs/ablation.py). ``prompts`` is the pairs table in the shape the run
    cards read (``prompt_id``, ``prompt_class``, ``split``; ``n_spill`` 0: nothing is generated)."""

    run_id: str
    run_dir: Path
    manifest: dict
    prompts: pd.DataFrame
    pairs: pd.DataFrame      # pair_id, class, split, ..., baseline_clean_margin, excluded, excluded_by
    ablations: pd.DataFrame  # pair_id, mode, target, ablated_clean_margin, clean_drop, ...
    baseline: pd.DataFrame   # pair_id, slot, layer, head, layer_type, ablated_margin, drop (may be empty)

    def analysed_pairs(self, cls: str | None = None, split: str | None = None) -> pd.DataFrame:
        """Pairs left after the preregistered exclusions, of one class and split, sorted by id."""
        keep = ~self.pairs["excluded"].astype(bool)
        if cls is not None:
            keep &= self.pairs["class"] == cls
        if split is not None:
            keep &= self.pairs["split"] == split
        return self.pairs[keep].sort_values("pair_id").reset_index(drop=True)


def read_run(run_id: str, run_dir: Path) -> AblationRunData:
    manifest = json.loads((run_dir / artifacts.MANIFEST).read_text())
    pairs = pq.read_table(run_dir / artifacts.PAIRS).to_pandas()
    ablations = pq.read_table(run_dir / artifacts.ABLATIONS).to_pandas()
    baseline_path = run_dir / artifacts.BASELINE
    baseline = pq.read_table(baseline_path).to_pandas() if baseline_path.exists() else pd.DataFrame(
        columns=["pair_id", "slot", "layer", "head", "layer_type", "ablated_margin", "drop"])
    prompts = pd.DataFrame({"prompt_id": pairs["pair_id"], "prompt_class": pairs["class"], "split": pairs["split"],
                            "n_spill": 0})
    return AblationRunData(run_id, run_dir, manifest, prompts.sort_values("prompt_id").reset_index(drop=True),
                           pairs, ablations, baseline)


# keys them: slot labels sorted by layer then head, joined by "+".


def _confidence(frozen) -> float:
    return float(frozen.spec["inference"].get("bootstrap", {}).get("confidence", 0.95))


def _exclusion_warnings(run, out: Outcome) -> None:
    for line in run.manifest.get("warnings", []):
        warn(out, "exclusion_applied", line)


def _stopping_rule_unmet(frozen, run, analysis: dict, out: Outcome) -> bool:
    """Enforce ``ablation.min_pairs_after_exclusions``: True (and the outcome not_established) when a class of
    the analysis's split has fewer analysed pairs than the plan's minimum."""
    minimum = frozen.spec["ablation"].get("min_pairs_after_exclusions") or {}
    short = []
    for cls, need in sorted(minimum.items()):
        have = len(run.analysed_pairs(cls=cls, split=analysis.get("split")))
        out.numbers[f"analysed_pairs_{cls}"] = have
        out.numbers[f"min_pairs_{cls}"] = int(need)
        if have < need:
            short.append(f"{have} {cls} pair(s) left after exclusions, fewer than the preregistered {need}")
    if short:
        out.numbers["stopping_rule_met"] = False
        text = "stopping rule (ablation.min_pairs_after_exclusions): " + "; ".join(short)
        warn(out, "stopping_rule_unmet", text)
        out.not_established = text
        return True
    if minimum:
        out.numbers["stopping_rule_met"] = True
    return False


def _kind_not_captured(run, analysis: dict, out: Outcome) -> bool:
    """True (and the outcome not_established) when the run holds no ablation of the analysis's ``ablation_kind``."""
    kinds = sorted(set(run.ablations["kind"])) if "kind" in run.ablations.columns else [analysis["ablation_kind"]]
    if analysis["ablation_kind"] in kinds:
        return False
    out.not_established = (f"ablation_kind {analysis['ablation_kind']!r} was not captured in run {run.run_id} (it holds "
                           f"{', '.join(kinds) or 'no ablation'}); name it in /ablation/kind or /ablation/sensitivity_kinds")
    return True


def _kind_rows(run, analysis: dict) -> pd.DataFrame:
    """Rows of ablations.parquet with the analysis's replacement (``ablation_kind``)."""
    if "kind" not in run.ablations.columns:  # a run captured before sensitivity kinds existed: one kind
        return run.ablations
    return run.ablations[run.ablations["kind"] == analysis["ablation_kind"]]


def _condition_frame(run, analysis: dict, mode: str, key: str) -> pd.DataFrame | None:
    """Analysed pairs of the analysis's split with their margins under one condition (None: not captured)."""
    rows = _kind_rows(run, analysis)
    rows = rows[(rows["mode"] == mode) & (rows["target"] == key)]
    if rows.empty:
        return None
    pairs = run.analysed_pairs(split=analysis.get("split"))
    frame = pairs[["pair_id", "class"]].merge(rows, on="pair_id", how="inner")
    return frame.sort_values("pair_id").reset_index(drop=True)


def _conditions(frozen, analysis: dict) -> list[tuple[str, str, list[str]]]:
    """(label for tables, condition key, slots) of the analysis: one combined set, or each target alone."""
    ablation = frozen.spec["ablation"]
    every = [t["id"] for t in frozen.spec["units"]["targets"]]
    if analysis["mode"] == "combined":
        targets = analysis.get("targets") or ablation.get("combined") or every
        return [(analysis["id"], condition_key(targets), list(targets))]
    targets = analysis.get("targets") or [t for t in every if t not in set(ablation.get("combined_only", []))]
    label = (lambda t: analysis["id"]) if len(targets) == 1 else (lambda t: f"{analysis['id']}/{t}")
    return [(label(t), condition_key([t]), [t]) for t in targets]


def _pairs_table(analysis_id: str, key: str, mode: str, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"analysis_id": analysis_id, "target": key, "mode": mode, "pair_id": frame["pair_id"],
                         "pair_class": frame["class"], "baseline_margin": frame["baseline_clean_margin"],
                         "ablated_margin": frame["ablated_clean_margin"], "drop": frame["clean_drop"],
                         "corrupted_baseline_margin": frame["baseline_corrupted_margin"],
                         "corrupted_ablated_margin": frame["ablated_corrupted_margin"],
                         "corrupted_drop": frame["corrupted_drop"]})


def _describe(out: Outcome, prefix: str, head: pd.DataFrame, confidence: float) -> None:
    """Descriptive numbers beside a drop: the distribution of the unablated clean margins (a mean drop in logits is
    comparable only across sets of similar margins) and the corrupted-prompt arm (no test)."""
    for name, value in stats.describe_margins(head["baseline_clean_margin"]).items():
        out.numbers[f"{prefix}baseline_margin_{name}"] = int(value) if name == "n" else value
    corrupted = head["corrupted_drop"].to_numpy(dtype=float)
    out.numbers[f"{prefix}corrupted_mean_baseline_margin"] = float(head["baseline_corrupted_margin"].mean())
    out.numbers[f"{prefix}corrupted_mean_ablated_margin"] = float(head["ablated_corrupted_margin"].mean())
    out.numbers[f"{prefix}corrupted_mean_drop"] = float(corrupted.mean())
    if corrupted.size > 1:
        ci = sps.ttest_1samp(corrupted, 0.0).confidence_interval(confidence)
        out.numbers[f"{prefix}corrupted_mean_drop_ci_low"] = float(ci.low)
        out.numbers[f"{prefix}corrupted_mean_drop_ci_high"] = float(ci.high)


def _margins_table(analysis_id: str, key: str, run, head: pd.DataFrame) -> pd.DataFrame:
    """Per analysed pair: its unablated margins and its answers' tokenisation (the margins' distribution)."""
    cols = [c for c in ("answer_n_tokens", "wrong_n_tokens") if c in run.pairs.columns]
    info = run.pairs.set_index("pair_id")[cols]
    frame = pd.DataFrame({"analysis_id": analysis_id, "target": key, "pair_id": head["pair_id"].to_numpy(),
                          "pair_class": head["class"].to_numpy(),
                          "baseline_margin": head["baseline_clean_margin"].to_numpy(),
                          "corrupted_baseline_margin": head["baseline_corrupted_margin"].to_numpy()})
    for c in cols:
        frame[c] = info.loc[frame["pair_id"], c].to_numpy()
    return frame


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
    if _stopping_rule_unmet(frozen, run, analysis, out) or _kind_not_captured(run, analysis, out):
        return out
    cls, mode, tails = analysis["pairs"], analysis["mode"], analysis["tails"]
    relative = analysis["relative_drop"]
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
    correction = analysis["correction"]
    if drops is None and correction.startswith("maxT"):
        out.not_established = "the targets were measured on different pairs, so a max-T correction across them is undefined"
        return out
    adjusted = _adjust(raw, drops, correction, settings, tails)
    multi = len(results) > 1
    texts, passed = [], []
    for (label, key, summary, test, head), p_adj in zip(results, adjusted):
        prefix = f"{key}_" if multi else ""
        ok = bool(p_adj <= settings.alpha and direction_ok(summary.mean_drop, tails))
        passed.append(ok)
        out.numbers.update({f"{prefix}{k}": v for k, v in {
            "target": key, "mode": mode, "n_pairs": summary.n_pairs, "mean_baseline_margin": float(head["baseline_clean_margin"].mean()),
            "mean_ablated_margin": float(head["ablated_clean_margin"].mean()), "mean_drop": summary.mean_drop,
            "mean_drop_ci_low": summary.mean_drop_ci_t[0], "mean_drop_ci_high": summary.mean_drop_ci_t[1],
            "mean_drop_boot_ci_low": summary.mean_drop_ci_boot[0], "mean_drop_boot_ci_high": summary.mean_drop_ci_boot[1],
            "relative_drop": summary.relative_drop, "relative_definition": relative,
            "relative_drop_ci_low": summary.relative_drop_ci[0], "relative_drop_ci_high": summary.relative_drop_ci[1],
            "p_value": float(test.pvalue), "p_adjusted": float(p_adj), "exact": bool(test.exact),
            "n_relabelings": int(test.n_resamples), "ablation_kind": analysis["ablation_kind"]}.items()})
        _describe(out, prefix, head, confidence)
        texts.append(f"{key} ({mode}): mean {cls} drop {summary.mean_drop:.4g} logits "
                     f"[{summary.mean_drop_ci_t[0]:.3g}, {summary.mean_drop_ci_t[1]:.3g}] over {summary.n_pairs} pairs, "
                     f"relative drop {summary.relative_drop:.3g} ({relative}), sign-flip p = {float(test.pvalue):.4g}"
                     + (f", {correction}-adjusted {float(p_adj):.4g}" if multi and correction != "none" else ""))
    if not multi:
        out.numbers["observed_statistic"] = float(results[0][3].statistic)
        if results[0][3].null_distribution is not None:
            out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"],
                                                            "value": np.asarray(results[0][3].null_distribution, dtype=float)})
            out.numbers["critical_statistic"] = critical_value(results[0][3].null_distribution, settings.alpha, tails,
                                                               bool(results[0][3].exact))
    out.quantities.update({"p": float(np.max(adjusted)), "mean_drop": float(min(r[2].mean_drop for r in results)),
                           "relative_drop": float(min(r[2].relative_drop for r in results))})
    out.tables["ablation_pairs"] = pd.concat(frames, ignore_index=True)
    out.tables["ablation_margins"] = pd.concat([_margins_table(r[0], r[1], run, r[4]) for r in results], ignore_index=True)
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
    if _stopping_rule_unmet(frozen, run, analysis, out) or _kind_not_captured(run, analysis, out):
        return out
    mode, tails = analysis["mode"], analysis["tails"]
    conditions = _conditions(frozen, analysis)
    if len(conditions) != 1:
        out.not_established = "a specificity analysis compares one condition; name one target or mode: combined"
        return out
    label, key, _ = conditions[0]
    frame = _condition_frame(run, analysis, mode, key)
    if frame is None:
        out.not_established = f"no {mode} ablation of {key} was captured in run {run.run_id}"
        return out
    cls, control = analysis["pairs"], analysis["control"]
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
    test = stats.permutation_test(frame["clean_drop"].to_numpy(), group, statistic=analysis["statistic"], null=analysis["null"],
                                  alternative=tails, n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                  rng=np.random.default_rng(settings.seed))
    p = float(test.pvalue)
    relative = {}
    for name, part in (("relative_drop", head), ("control_relative_drop", ctrl)):
        base = float(part["baseline_clean_margin"].mean())
        relative[name] = float(part["clean_drop"].mean() / base) if base > 0 else float("nan")
    out.quantities.update({"p": p, "specificity_ratio": ratio, "mean_drop": float(h.mean()), "control_mean_drop": float(c.mean()),
                           **relative})
    out.numbers.update({**relative, "relative_definition": "ratio_of_means", "ablation_kind": analysis["ablation_kind"],
                        "control_mean_baseline_margin": float(ctrl["baseline_clean_margin"].mean()),
                        "control_mean_abs_drop": float(np.abs(c).mean()),
                        "control_corrupted_mean_drop": float(ctrl["corrupted_drop"].mean())})
    out.numbers.update({"target": key, "mode": mode, "n_pairs": int(h.size), "n_control": int(c.size),
                        "mean_drop": float(h.mean()), "control_mean_drop": float(c.mean()),
                        "control_mean_drop_ci_low": summary.control_mean_drop_ci_t[0],
                        "control_mean_drop_ci_high": summary.control_mean_drop_ci_t[1],
                        "control_drop_floor": floor, "specificity_ratio": ratio, "specificity_ratio_ci_low": ci[0],
                        "specificity_ratio_ci_high": ci[1], "unfloored_ratio": summary.specificity_ratio,
                        "p_value": p, "exact": bool(test.exact), "n_relabelings": int(test.n_resamples),
                        "observed_statistic": float(test.statistic)})
    if floor is not None and float(c.mean()) < floor:
        warn(out, "control_floored", f"the mean control drop {float(c.mean()):.4g} is below the floor {floor:g} ({floor_name}); "
                            "the ratio's denominator is the floor")
    if test.null_distribution is not None:
        out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"], "value": np.asarray(test.null_distribution, dtype=float)})
        out.numbers["critical_statistic"] = critical_value(test.null_distribution, settings.alpha, tails, bool(test.exact))
    out.tables["ablation_pairs"] = _pairs_table(label, key, mode, frame)
    out.primary_passed = bool(p <= settings.alpha and direction_ok(float(h.mean() - c.mean()), tails))
    out.primary_text = (f"{key} ({mode}): mean {cls} drop {h.mean():.4g} vs {control} {c.mean():.4g} logits, ratio "
                        f"{ratio:.4g} [{ci[0]:.3g}, {ci[1]:.3g}]" + (f" (control floored at {floor:g})" if floor is not None else "")
                        + f"; permutation p = {p:.4g} ({tails}, {'exact' if test.exact else 'Monte Carlo'}) against alpha {settings.alpha}")
    return out


def head_baseline(frozen, analysis: dict, runs, settings: Settings) -> Outcome:
    """The all-slot baseline of an ablation study: every slot ablated alone, scored on the analysed pairs, the
    same relabelings shared by all slots (max-T), the target's and every target's rank.

    Without ``control``: a paired design (sign flips) on the headline drops, statistic ``mean_drop`` or
    ``paired_t`` (the studentised one-sample t). With ``control``: each slot's headline drops against its control
    drops (:func:`stats.control_adjusted_baseline`), statistic ``welch_t`` (studentised, the default) or
    ``mean_diff``. Both rankings are reported: by mean headline drop, and by headline minus control drop.
    """
    out = Outcome(analysis["id"], "all_unit_baseline")
    run = runs(analysis["run"])
    _exclusion_warnings(run, out)
    if _stopping_rule_unmet(frozen, run, analysis, out):
        return out
    if analysis["ablation_kind"] != frozen.spec["ablation"]["kind"]:
        out.not_established = (f"the all-slot baseline is captured with /ablation/kind {frozen.spec['ablation']['kind']!r} only, "
                               f"not {analysis['ablation_kind']!r}")
        return out
    control = analysis.get("control")
    allowed = ("welch_t", "student_t", "mean_diff") if control else ("mean_drop", "paired_t")
    nulls = ("equal_means", "exchangeable") if control else ("symmetric",)
    if analysis["statistic"] not in allowed or analysis["null"] not in nulls:
        out.not_established = (f"statistic {analysis['statistic']!r} with null {analysis['null']!r} does not apply to the "
                               f"{'control-adjusted' if control else 'paired'} all-slot baseline; it offers statistic "
                               f"{', '.join(allowed)} with null {' or '.join(nulls)}")
        return out
    if run.baseline.empty:
        out.not_established = f"run {run.run_id} has no all-slot baseline"
        return out
    pairs = run.analysed_pairs(cls=analysis["pairs"], split=analysis.get("split"))
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
    tails = analysis["tails"]
    control_wide = None
    if control:
        kept = run.analysed_pairs(cls=control, split=analysis.get("split"))
        cframe = run.baseline[run.baseline["pair_id"].isin(kept["pair_id"])]
        if cframe["pair_id"].nunique() < 2:
            out.not_established = f"{cframe['pair_id'].nunique()} {control} pair(s) in the baseline after exclusions; need at least 2"
            return out
        control_wide = cframe.pivot(index="pair_id", columns="slot", values="drop").sort_index().reindex(columns=ids)
        result = stats.control_adjusted_baseline(wide.to_numpy(dtype=float), control_wide.to_numpy(dtype=float),
                                                 unit_ids=ids, target=target, statistic=analysis["statistic"],
                                                 null=analysis["null"], alternative=tails,
                                                 n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                                 alpha=settings.alpha, rng=np.random.default_rng(settings.seed))
        out.numbers["n_control"] = int(control_wide.shape[0])
    else:
        result = stats.all_unit_baseline(wide.to_numpy(dtype=float), None, unit_ids=ids, target=target,
                                         statistic="mean" if analysis["statistic"] == "mean_drop" else "paired_t",
                                         alternative=tails, n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                         alpha=settings.alpha, rng=np.random.default_rng(settings.seed), dtype=np.float64,
                                         nan_policy="drop_units", null=analysis["null"])
    rankings = stats.slot_rankings(wide.to_numpy(dtype=float),
                                   None if control_wide is None else control_wide.to_numpy(dtype=float), unit_ids=ids)
    out.numbers["n_pairs"] = int(wide.shape[0])
    out.numbers["statistic"] = analysis["statistic"]
    out.numbers["ablation_kind"] = analysis["ablation_kind"]
    by_unit = rankings.set_index("unit")
    for t in targets:
        out.numbers[f"{t}_mean_drop"] = (float(result.statistic[ids.index(t)]) if analysis["statistic"] == "mean_drop"
                                         else float(by_unit.loc[t, "headline_mean_drop"]))
        out.numbers[f"{t}_rank_headline_drop"] = int(by_unit.loc[t, "rank_headline"])
        if control:
            out.numbers[f"{t}_control_mean_drop"] = float(by_unit.loc[t, "control_mean_drop"])
            out.numbers[f"{t}_rank_adjusted_drop"] = int(by_unit.loc[t, "rank_adjusted"])
    what = (f"slots by {analysis['statistic']} of headline against {control} drops" if control
            else f"slots by {'mean drop' if analysis['statistic'] == 'mean_drop' else 'paired t of the drops'}")
    record_baseline(out, analysis, result, ids, target, targets, settings, what,
                     {"layer": slots["layer"].to_numpy(), "index": slots["head"].to_numpy(), "layer_type": slots["layer_type"].to_numpy(),
                      "headline_mean_drop": rankings["headline_mean_drop"].to_numpy(),
                      "control_mean_drop": rankings["control_mean_drop"].to_numpy(),
                      "adjusted_drop": rankings["adjusted_drop"].to_numpy(),
                      "rank_headline": rankings["rank_headline"].to_numpy(),
                      "rank_adjusted": rankings["rank_adjusted"].to_numpy()})
    return out


def _after_the_rules(kind: str, body):
    """An analysis of ``kind`` that runs ``body(frozen, analysis, run, settings, out)`` after this design's
    exclusion warnings and stopping rule."""
    def analysis_fn(frozen, analysis: dict, runs, settings: Settings) -> Outcome:
        out = Outcome(analysis["id"], kind)
        run = runs(analysis["run"])
        _exclusion_warnings(run, out)
        if _stopping_rule_unmet(frozen, run, analysis, out):
            return out
        return body(frozen, analysis, run, settings, out)
    analysis_fn.__name__ = kind
    return analysis_fn


# Source tracing of head slots (audit/source_trace.py); one SAE feature knocked down at a time, max-T over
# the features (audit/designs/ablation_sae.py).
source_trace = _after_the_rules("source_trace", _trace)
sae_knockdown = _after_the_rules("sae_knockdown", _sae_knockdown)


ANALYSES = {
    "ablation_drop": ablation_drop,
    "specificity": specificity,
    "all_unit_baseline": head_baseline,
    "source_trace": source_trace,
    "sae_knockdown": sae_knockdown,
}


def evidence_facts(hypothesis: dict, analysis: dict, outcome: Outcome, study_outcomes: dict[str, Outcome],
                   study) -> dict[int, tuple[bool, str]]:
    """No point but the scope lint applies to an ablation design (lockstep.designs.ABLATION.evidence_points)."""
    return {}


def exclusions(frozen, run: AblationRunData) -> list[dict]:
    """The pairs of ``run`` that capture excluded before any ablated margin existed, by preregistered rule:
    ``[{"rule", "description", "ids"}]``."""
    rules = {x["id"]: x for x in frozen.spec.get("exclusions", [])}
    excluded = run.pairs[run.pairs["excluded"].astype(bool)]
    out = []
    for rule_id, rows in excluded.groupby(excluded["excluded_by"].astype(str), sort=True):
        rule = rules.get(rule_id) or next((x for x in rules.values() if x["rule"] == rule_id), None)
        out.append({"rule": rule["id"] if rule else rule_id, "description": rule["description"] if rule else rule_id,
                    "ids": sorted(rows["pair_id"].astype(str))})
    for x in run.manifest.get("exclusions", []):  # source tracing's own: pairs it could not align (capture/source_trace.py)
        if x.get("scope") == "source_trace" and x["pairs"]:
            out.append({"rule": x["id"], "description": x["description"], "ids": list(x["pairs"]), "action": "exclude",
                        "by_class": dict(x["by_class"])})
    return out
