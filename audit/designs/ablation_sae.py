"""The ``sae_knockdown`` analysis of the ablation design: one SAE feature knocked down at a time.

Reads ``sae_knockdown.parquet`` (capture/designs/ablation_sae.py) on the analysed pairs of the
analysis's class and split. Per tested feature: the pairs where it is active (on the clean prompt, at
the last token), the mean clean-margin drop over those pairs, and a paired sign-flip test of the drops
with a max-T correction (step-down by default) across every tested feature, both from
:func:`stats.all_unit_baseline` (one set of sign flips shared by all features).

The drop of a feature on a pair where it is inactive is 0 (the knockdown moves nothing there). The
engine gets the ``pairs x features`` matrix of drops with those zeros, each feature's column scaled
by ``n_pairs / active_pairs``: its ``mean`` statistic is then the mean drop over the active pairs, and
a sign flip of an inactive pair changes nothing, so each feature's sign-flip null is the one of its
active pairs alone.

Next to the results, the SAE's quality over the same pairs: the reconstruction variance explained at
the hook point over the clean prompts' tokens, ``1 - sum |x - x_hat|^2 / sum |x - mean x|^2``, and the
margin change when the SAE's output replaces the activation at the last token (splice-in). Below the
analysis's ``min_variance_explained`` the outcome carries the warning ``sae_low_variance_explained``
(which makes a held claim partly held: knockdowns through a poor SAE mean little).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

import stats
from lockstep import artifacts

from ..analyses import Outcome, Settings, direction_ok, warn

LOW_VE = "sae_low_variance_explained"
_ADJUSTED = {"maxT_stepdown": "p_maxt_step_down", "maxT_single_step": "p_maxt_single_step", "holm": "p_holm",
             "fdr_bh": "q_bh", "none": "p_uncorrected"}
_SUMMARY_FEATURES = 5  # features named in the outcome's summary line (all of them are in tables/sae_features)


def feature_drops(knock: pd.DataFrame, pair_ids: list[str], features: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``pairs x features`` drops (0 where the feature is inactive) and the active mask, pairs in ``pair_ids`` order."""
    drops = np.zeros((len(pair_ids), len(features)))
    active = np.zeros_like(drops, dtype=bool)
    row = {p: i for i, p in enumerate(pair_ids)}
    col = {f: j for j, f in enumerate(features)}
    for f, p, d in zip(knock["feature"], knock["pair_id"], knock["drop"]):
        if int(f) in col and p in row:
            drops[row[p], col[int(f)]] = float(d)
            active[row[p], col[int(f)]] = True
    return drops, active


def knockdown_test(drops: np.ndarray, active: np.ndarray, features: list[int], *, tails: str, settings: Settings):
    """The max-T sign-flip test over features (see the module docstring): a :class:`stats.BaselineResult`."""
    n_active = active.sum(axis=0)
    scale = np.where(n_active > 0, drops.shape[0] / np.maximum(n_active, 1), 1.0)
    return stats.all_unit_baseline(drops * scale[None, :], None, unit_ids=[str(f) for f in features], statistic="mean",
                                   alternative=tails, n_resamples=settings.n_resamples, exact_cap=settings.exact_cap,
                                   alpha=settings.alpha, rng=np.random.default_rng(settings.seed), null="symmetric")


def variance_explained(splice: pd.DataFrame) -> tuple[float, int]:
    """``1 - SSE / SST`` over every token of the rows' prompts, and the number of tokens."""
    n = int(splice["n_tokens"].sum())
    if n == 0:
        return float("nan"), 0
    total = np.sum(np.stack([np.asarray(v, dtype=float) for v in splice["sum_x"]]), axis=0)
    sst = float(splice["sum_sq"].sum()) - float(total @ total) / n
    return (1.0 - float(splice["sse"].sum()) / sst if sst > 0 else float("nan")), n


def _tested(analysis: dict, knock: pd.DataFrame, pair_ids: list[str]) -> list[int]:
    named = [int(analysis["feature"])] if "feature" in analysis else []
    if analysis["features"] != "all_active":
        return list(dict.fromkeys([int(f) for f in analysis["features"]] + named))
    counts = knock[knock["pair_id"].isin(pair_ids)].groupby("feature")["pair_id"].nunique()
    return sorted({int(f) for f, n in counts.items() if n >= int(analysis["min_active_pairs"])} | set(named))


def knockdown(frozen, analysis: dict, run, settings: Settings, out: Outcome) -> Outcome:
    """Per feature: active pairs, mean drop over them, sign-flip p and its max-T adjusted p; the SAE's quality.
    ``out`` arrives with the run's exclusion warnings, the stopping rule met (audit/designs/ablation.py)."""
    if analysis["statistic"] != "mean_drop" or analysis["null"] != "symmetric":
        out.not_established = (f"sae_knockdown tests statistic mean_drop under null symmetric (sign flips), not "
                               f"{analysis['statistic']!r} under {analysis['null']!r}")
        return out
    path = run.run_dir / artifacts.SAE_KNOCKDOWN
    if not path.is_file():
        out.not_established = f"run {run.run_id} has no {artifacts.SAE_KNOCKDOWN} (capture it again with this plan)"
        return out
    table = pq.read_table(path).to_pandas()
    table = table[table["sae"] == analysis["sae"]]
    pairs = run.analysed_pairs(cls=analysis["pairs"], split=analysis.get("split"))
    pair_ids = sorted(pairs["pair_id"])
    splice = table[(table["condition"] == "splice_in") & table["pair_id"].isin(pair_ids)]
    knock = table[(table["condition"] == "knockdown") & table["pair_id"].isin(pair_ids)]
    if len(splice) != len(pair_ids) or len(pair_ids) < 2:
        out.not_established = (f"{len(pair_ids)} {analysis['pairs']} pair(s) after exclusions, {len(splice)} of them with "
                               f"SAE {analysis['sae']!r} captured in run {run.run_id}; need every one, and at least 2")
        return out
    entry = run.manifest.get("sae_knockdown", {}).get(analysis["sae"], {})
    ve, n_tokens = variance_explained(splice)
    change = (splice["margin"] - splice["baseline_margin"]).to_numpy(dtype=float)
    out.numbers.update({"sae": analysis["sae"], "hook_point": entry.get("hook_point"), "sae_width": entry.get("width"),
                        "sae_k": entry.get("k"), "n_pairs": len(pair_ids), "variance_explained": ve,
                        "variance_explained_tokens": n_tokens, "min_variance_explained": analysis["min_variance_explained"],
                        "splice_mean_margin_change": float(change.mean()),
                        "splice_mean_abs_margin_change": float(np.abs(change).mean()),
                        "mean_baseline_margin": float(splice["baseline_margin"].mean())})
    out.quantities.update({"variance_explained": ve, "splice_margin_change": float(np.abs(change).mean())})
    if not ve >= analysis["min_variance_explained"]:
        warn(out, LOW_VE, f"SAE {analysis['sae']!r} explains {ve:.3g} of the variance at {entry.get('hook_point')} over "
             f"{n_tokens} tokens of the analysed pairs, below min_variance_explained {analysis['min_variance_explained']:g}; "
             f"its splice-in moves the margin by {np.abs(change).mean():.3g} on average: knockdowns through it mean little")
    features = _tested(analysis, knock, pair_ids)
    if not features:
        out.not_established = (f"no feature of SAE {analysis['sae']!r} is active on at least {analysis['min_active_pairs']} "
                               f"of the {len(pair_ids)} analysed pairs")
        return out
    drops, active = feature_drops(knock, pair_ids, features)
    n_active = active.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_drop = np.where(n_active > 0, drops.sum(axis=0) / np.maximum(n_active, 1), np.nan)
    acts = {int(f): g for f, g in knock.groupby("feature")["activation"]}
    testable = n_active >= 2
    tails = analysis["tails"]
    p_raw = np.full(len(features), np.nan)
    p_adj = np.full(len(features), np.nan)
    result = None
    if testable.any():
        idx = np.flatnonzero(testable)
        result = knockdown_test(drops[:, idx], active[:, idx], [features[i] for i in idx], tails=tails, settings=settings)
        p_raw[idx] = result.p_uncorrected
        p_adj[idx] = getattr(result, _ADJUSTED[analysis["correction"]])
    claimed = (int(analysis["feature"]) if "feature" in analysis
               else int(analysis["features"][0]) if analysis["features"] != "all_active"
               else features[int(np.nanargmax(np.where(testable, mean_drop if tails != "less" else -mean_drop, -np.inf)))]
               if testable.any() else features[0])
    j = features.index(claimed)
    frame = pd.DataFrame({"analysis_id": analysis["id"], "sae": analysis["sae"], "feature": features,
                          "active_pairs": n_active.astype(int), "mean_drop": mean_drop,
                          "mean_activation": [float(acts[f].mean()) if f in acts else np.nan for f in features],
                          "p_value": p_raw, "p_adjusted": p_adj, "correction": analysis["correction"],
                          "is_claimed": [f == claimed for f in features]})
    order = frame.sort_values(["p_adjusted", "mean_drop"], ascending=[True, tails == "less"], na_position="last")
    lines = [f"feature {int(r.feature)}: {int(r.active_pairs)} active pairs, mean clean logit-diff drop {r.mean_drop:.3g}, "
             f"p_adj {r.p_adjusted:.3g}" for r in order.head(_SUMMARY_FEATURES).itertuples()]
    out.tables["sae_features"] = order.reset_index(drop=True)
    out.numbers.update({"feature": claimed, "features_tested": len(features), "features_testable": int(testable.sum()),
                        "family_size": int(result.family_size) if result is not None else 0,
                        "correction": analysis["correction"], "features_significant": int(np.nansum(p_adj <= settings.alpha)),
                        "active_pairs": int(n_active[j]), "mean_drop": float(mean_drop[j]), "p_value": float(p_raw[j]),
                        "p_adjusted": float(p_adj[j]), "n_relabelings": int(result.n_resamples) if result is not None else 0,
                        "exact": bool(result.exact) if result is not None else False, "top_features": "; ".join(lines)})
    out.quantities.update({"p": float(p_adj[j]), "mean_drop": float(mean_drop[j]), "active_pairs": int(n_active[j])})
    if not testable[j]:
        out.not_established = (f"feature {claimed} of SAE {analysis['sae']!r} is active on {int(n_active[j])} analysed "
                               f"{analysis['pairs']} pair(s); a sign-flip test needs at least 2")
        return out
    out.primary_passed = bool(p_adj[j] <= settings.alpha and direction_ok(float(mean_drop[j]), tails))
    out.primary_text = (f"SAE {analysis['sae']} at {entry.get('hook_point')}, feature {claimed}: {int(n_active[j])} active "
                        f"pairs, mean clean logit-diff drop {mean_drop[j]:.4g} under knockdown (error term kept), sign-flip "
                        f"p = {p_raw[j]:.4g}, {analysis['correction']} over {len(features)} feature(s) p = {p_adj[j]:.4g} "
                        f"({tails}) against alpha {settings.alpha}; SAE variance explained {ve:.3g}, splice-in margin "
                        f"change {change.mean():+.3g}")
    return out
