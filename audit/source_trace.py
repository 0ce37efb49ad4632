"""The ``source_trace`` analysis of the ablation design: where upstream of a head slot its signal enters.

Capture (:mod:`capture.source_trace`) patched the residual stream entering each preregistered source
layer, at one prompt position at a time, from each pair's clean run into its corrupted run, and
wrote per pair and cell the fraction of the clean-minus-corrupted difference restored, at the final
margin (``margin_restored``) and at the target slot's output (``slot_restored``).

Per target, the analysis tabulates every cell of the grid (table ``source_trace``: the mean restored
fraction over the analysed pairs with a percentile bootstrap interval, from the study's
``inference.bootstrap`` settings, and the number of pairs with the cell defined) and, at the
preregistered cell ``at``, decides: ``restored_fraction`` (the mean), ``restored_fraction_ci_low``
and ``restored_fraction_ci_high`` (its interval), and ``p``, a paired sign-flip test of mean restored
fraction > 0 (``tails``). A claim such as "the signal for L3H2 is present by layer 3 at the subject
position" bounds ``min_restored_fraction_ci_low``; with several targets the outcome carries the
smallest fraction and the largest p (the claim is about each).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

import stats
from lockstep import artifacts

from .analyses import Outcome, Settings, direction_ok, warn

COLUMNS = ("analysis_id", "target", "metric", "layer", "position", "n_pairs", "mean", "ci_low", "ci_high", "is_claim_cell")


def _table(run) -> pd.DataFrame | None:
    path = run.run_dir / artifacts.SOURCE_TRACE
    return pq.read_table(path).to_pandas() if path.exists() else None


def _bootstrap(frozen) -> tuple[int, float, int]:
    boot = frozen.spec["inference"].get("bootstrap", {})
    seed = boot.get("seed", frozen.spec["inference"]["permutations"]["seed"])
    return int(boot.get("n_resamples", 1999)), float(boot.get("confidence", 0.95)), int(seed)


def cell_interval(values: np.ndarray, n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN with fewer than 2 values)."""
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _grid(analysis: dict, frame: pd.DataFrame, n_boot: int, confidence: float, seed: int) -> pd.DataFrame:
    """One row per target x layer x position of the analysis's grid: mean, interval, n over the defined pairs."""
    metric = analysis["metric"]
    at = analysis.get("at") or {}
    rows = []
    for (target, layer, position), sub in frame.groupby(["target", "layer", "position"], sort=True):
        values = sub[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        low, high = cell_interval(values, n_boot, confidence, seed)
        rows.append({"analysis_id": analysis["id"], "target": target, "metric": metric, "layer": int(layer),
                     "position": str(position), "n_pairs": int(values.size),
                     "mean": float(values.mean()) if values.size else float("nan"), "ci_low": low, "ci_high": high,
                     "is_claim_cell": bool(at) and int(layer) == at["layer"] and str(position) == str(at["position"])})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _selected(analysis: dict, table: pd.DataFrame, pair_ids: set[str]) -> pd.DataFrame:
    """The analysis's rows: its targets, pairs, source layers and positions."""
    frame = table[table["target"].isin(analysis["targets"]) & table["pair_id"].isin(pair_ids)]
    layers = analysis["source_layers"]
    if layers != "all":
        if isinstance(layers, str):
            lo, _, hi = layers.partition("-")
            layers = range(int(lo), int(hi) + 1)
        frame = frame[frame["layer"].isin(list(layers))]
    positions = analysis["positions"]
    if positions == "all":
        return frame[frame["position"].str.fullmatch(r"-\d+")]
    return frame[frame["position"].isin([str(p) for p in positions])]


def source_trace(frozen, analysis: dict, run, settings: Settings, out: Outcome) -> Outcome:
    """The layer x position table per target, and the claim's cell: mean restored fraction, interval, sign-flip p.

    ``run`` is the captured ablation run (:class:`audit.designs.ablation.AblationRunData`); ``out`` the outcome the
    design's wrapper started (its exclusion warnings and stopping rule already applied).
    """
    table = _table(run)
    if table is None:
        out.not_established = f"run {run.run_id} has no {artifacts.SOURCE_TRACE} (it was captured without a source_trace analysis)"
        return out
    info = run.manifest.get("source_trace", {})
    unaligned = next((x for x in run.manifest.get("exclusions", []) if x.get("scope") == "source_trace"), None)
    pairs = run.analysed_pairs(cls=analysis["pairs"], split=analysis.get("split"))
    skipped = sorted(set(pairs["pair_id"]) & set((unaligned or {}).get("pairs", [])))
    frame = _selected(analysis, table, set(pairs["pair_id"]) - set(skipped))
    n_boot, confidence, seed = _bootstrap(frozen)
    grid = _grid(analysis, frame, n_boot, confidence, seed)
    out.tables["source_trace"] = grid
    metric, tails = analysis["metric"], analysis["tails"]
    out.numbers.update({"metric": metric, "site": info.get("site", ""), "targets": ", ".join(analysis["targets"]),
                        "n_pairs_analysed": len(pairs), "n_unaligned": len(skipped), "n_cells": len(grid),
                        "confidence": confidence, "n_boot": n_boot})
    if skipped:
        warn(out, "exclusion_applied", f"{len(skipped)} {analysis['pairs']} pair(s) tokenise to different clean and corrupted "
             f"lengths and are not traced (unaligned_lengths): {', '.join(skipped)}")
    at = analysis.get("at")
    if at is None:
        out.not_established = "the analysis names no cell (at: {layer, position}) to decide a claim at; its table is descriptive"
        return out
    results = []
    for target in analysis["targets"]:
        cell = frame[(frame["target"] == target) & (frame["layer"] == at["layer"]) & (frame["position"] == str(at["position"]))]
        values = cell[metric].to_numpy(dtype=float)
        undefined = int((~np.isfinite(values)).sum())
        values = values[np.isfinite(values)]
        if values.size < 2:
            out.not_established = (f"{values.size} {analysis['pairs']} pair(s) have {metric} defined for {target} at layer "
                                   f"{at['layer']}, position {at['position']}; the interval and test need at least 2")
            return out
        low, high = cell_interval(values, n_boot, confidence, seed)
        test = stats.paired_permutation_test(values, statistic="mean", alternative=tails, n_resamples=settings.n_resamples,
                                             exact_cap=settings.exact_cap, rng=np.random.default_rng(settings.seed))
        results.append((target, float(values.mean()), low, high, float(test.pvalue), int(values.size), undefined, test))
    multi = len(results) > 1
    texts = []
    for target, mean, low, high, p, n, undefined, test in results:
        prefix = f"{target}_" if multi else ""
        out.numbers.update({f"{prefix}restored_fraction": mean, f"{prefix}restored_fraction_ci_low": low,
                            f"{prefix}restored_fraction_ci_high": high, f"{prefix}p_value": p, f"{prefix}n_pairs": n,
                            f"{prefix}n_undefined": undefined, f"{prefix}exact": bool(test.exact),
                            f"{prefix}n_relabelings": int(test.n_resamples)})
        texts.append(f"{target}: mean {metric} {mean:.3g} [{low:.3g}, {high:.3g}] over {n} pairs at layer {at['layer']}, "
                     f"position {at['position']}; sign-flip p = {p:.4g}")
    out.numbers.update({"at_layer": int(at["layer"]), "at_position": str(at["position"])})
    worst = min(results, key=lambda r: r[1])
    out.quantities.update({"p": max(r[4] for r in results), "restored_fraction": worst[1],
                           "restored_fraction_ci_low": min(r[2] for r in results),
                           "restored_fraction_ci_high": max(r[3] for r in results)})
    out.primary_passed = all(r[4] <= settings.alpha and direction_ok(r[1], tails) for r in results)
    out.primary_text = "; ".join(texts) + f" ({tails}) against alpha {settings.alpha}"
    out.facts["targets"] = list(analysis["targets"])
    return out
