"""The routing-basin comparison and the duplicate-run check: analyses of the routing design that read two runs.

``basin_comparison`` (the routing journal's step 1) compares two model variants on identical tokens: its
second run re-reads the first run's generated texts (``decoding: teacher_forced``). Per unit it reports
S and W in each variant (mean of per-prompt means over the analysis's prompts) and their Pearson and
Spearman correlation over units; per token and layer the overlap (Jaccard) of the two top-k expert
sets, averaged per layer and over all; and the target unit's rank by W in each variant. It tests
nothing: its preregistered bounds are its criterion (``facts["decided_by_bounds"]``, see
:func:`audit.verdicts.decide`).

``duplicate_check`` compares two runs of one variant under one decoding rule token by token: the
generated ids and the top-k expert sets must be identical, and the routed weights within the bound the
claim names (the journal's "base duplicate reproduced exactly"). A difference fails the claim and names
the first prompt and position where the runs part.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import stats as sps

from lockstep import artifacts
from lockstep.units import parse_unit_id

from .analyses import Outcome, Settings, warn
from .topk import TOKEN_ZONES, read_topk

TOKEN_KEYS = ["prompt_id", "position", "token_id", "zone"]


def _variant(run) -> str:
    return run.manifest.get("variant") or "base"


def _prompt_ids(run, analysis: dict) -> list[str]:
    prompts = run.prompts if analysis.get("split") is None else run.prompts[run.prompts["split"] == analysis["split"]]
    return list(prompts["prompt_id"])


def _first_token_difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """Where two per-token tables first part (the first row, in prompt and position order, that differs)."""
    merged = a[TOKEN_KEYS].merge(b[TOKEN_KEYS], on=["prompt_id", "position"], how="outer", suffixes=("_a", "_b"),
                                 indicator=True).sort_values(["prompt_id", "position"])
    differ = merged[(merged["_merge"] != "both") | (merged["token_id_a"] != merged["token_id_b"])
                    | (merged["zone_a"] != merged["zone_b"])]
    if not len(differ):
        return "the tables hold the same tokens in another order"
    row = differ.iloc[0]
    if row["_merge"] != "both":
        return f"prompt {row['prompt_id']} position {int(row['position'])} is read by only one run"
    return (f"prompt {row['prompt_id']} position {int(row['position'])}: token {int(row['token_id_a'])} "
            f"({row['zone_a']}) against {int(row['token_id_b'])} ({row['zone_b']})")


def _topk(run):
    return read_topk(run.run_dir)


def _unit_means(run, zone: str, metric: str, prompt_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Per unit, the mean over prompts of ``metric`` (W and S of a never-selected unit are 0)."""
    x, ids = run.matrix(zone, metric, prompt_ids)
    return np.nanmean(np.nan_to_num(x, nan=0.0), axis=0), ids


def _rank(values: np.ndarray, j: int) -> int:
    """Rank of unit ``j`` by value, 1 = largest, ties counted against it (pessimistic)."""
    return int((values >= values[j]).sum())


def _correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")  # undefined: a bound on it is never passed (audit.verdicts)
    return float(sps.pearsonr(a, b).statistic), float(sps.spearmanr(a, b).statistic)


def basin_comparison(frozen, analysis: dict, runs: Callable, settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "basin_comparison")
    out.facts["decided_by_bounds"] = True
    first, second = (runs(r) for r in analysis["runs"])
    zone, unit = analysis["zone"], analysis["unit"]
    _TOKEN_ZONES = TOKEN_ZONES

    stored_a, stored_b = _topk(first), _topk(second)
    if stored_a is None or stored_b is None:
        out.not_established = "a run stored no per-token top-k (capture.per_token_topk), so top-k overlap cannot be computed"
        return out
    tokens_a, idx_a, tokens_b, idx_b = stored_a[0], stored_a[1], stored_b[0], stored_b[1]
    if not tokens_a[TOKEN_KEYS].reset_index(drop=True).equals(tokens_b[TOKEN_KEYS].reset_index(drop=True)):
        out.not_established = (f"runs {first.run_id} and {second.run_id} do not read identical tokens "
                               f"({_first_token_difference(tokens_a, tokens_b)}): routing can only be compared on the same "
                               f"tokens; the second run must re-read the first (decoding: teacher_forced)")
        return out
    prompt_ids = _prompt_ids(first, analysis)
    keep = (tokens_a["zone"].isin(_TOKEN_ZONES[zone]) & tokens_a["prompt_id"].isin(prompt_ids)).to_numpy()
    if not keep.any():
        out.not_established = f"no token of the {zone} zone to compare"
        return out
    a, b = np.asarray(idx_a)[keep], np.asarray(idx_b)[keep]             # [tokens, layers, k]
    k = a.shape[-1]
    inter = (a[..., :, None] == b[..., None, :]).any(-1).sum(-1)        # expert ids are distinct within a top-k
    jaccard = inter / (2 * k - inter)                                   # |A ∩ B| / |A ∪ B| per token and layer
    layers = [m["layer"] for m in first.manifest.get("moe_layers", [])]
    per_layer = jaccard.mean(axis=0)
    worst = int(np.argmin(per_layer))
    out.tables["basin_layers"] = pd.DataFrame({"analysis_id": analysis["id"], "layer": layers, "jaccard": per_layer,
                                               "n_tokens": int(keep.sum()), "top_k": k})

    w_a, ids = _unit_means(first, zone, "W", prompt_ids)
    w_b, ids_b = _unit_means(second, zone, "W", prompt_ids)
    s_a, _ = _unit_means(first, zone, "S", prompt_ids)
    s_b, _ = _unit_means(second, zone, "S", prompt_ids)
    if ids != ids_b or unit not in ids:
        out.not_established = f"the runs do not hold the same units, or unit {unit} is not among them"
        return out
    j = ids.index(unit)
    pearson_w, spearman_w = _correlations(w_a, w_b)
    pearson_s, spearman_s = _correlations(s_a, s_b)
    rank_a, rank_b = _rank(w_a, j), _rank(w_b, j)
    out.quantities.update({"rank_correlation": spearman_w, "correlation": pearson_w, "rank_correlation_s": spearman_s,
                           "correlation_s": pearson_s, "jaccard": float(jaccard.mean()),
                           "worst_layer_jaccard": float(per_layer[worst]), "target_rank_a": float(rank_a),
                           "target_rank_b": float(rank_b)})
    out.numbers.update({"run_a": first.run_id, "run_b": second.run_id, "variant_a": _variant(first),
                        "variant_b": _variant(second), "unit": unit, "zone": zone, "n_units": len(ids),
                        "n_prompts": len(prompt_ids), "n_tokens": int(keep.sum()), "top_k": k,
                        "spearman_w": spearman_w, "pearson_w": pearson_w, "spearman_s": spearman_s, "pearson_s": pearson_s,
                        "jaccard": float(jaccard.mean()), "worst_layer": layers[worst],
                        "worst_layer_jaccard": float(per_layer[worst]), "target_rank_a": rank_a, "target_rank_b": rank_b,
                        "target_w_a": float(w_a[j]), "target_w_b": float(w_b[j]),
                        "target_s_a": float(s_a[j]), "target_s_b": float(s_b[j])})
    rank_b_all = np.array([_rank(w_b, i) for i in range(len(ids))])
    parsed = [parse_unit_id(u) for u in ids]
    out.tables["basin_units"] = pd.DataFrame({
        "analysis_id": analysis["id"], "unit": ids, "layer": [p[0] for p in parsed], "expert": [p[2] for p in parsed],
        "W_a": w_a, "W_b": w_b, "S_a": s_a, "S_b": s_b,
        "rank_a": [_rank(w_a, i) for i in range(len(ids))], "rank_b": rank_b_all, "is_target": [u == unit for u in ids]})
    out.primary_passed = True
    out.primary_text = (f"{unit} W rank {rank_a} in {first.run_id} (variant {_variant(first)}) and {rank_b} in "
                        f"{second.run_id} (variant {_variant(second)}) of {len(ids)} units; over units, W Spearman "
                        f"{spearman_w:.3f} (Pearson {pearson_w:.3f}), S Spearman {spearman_s:.3f}; top-{k} Jaccard "
                        f"{float(jaccard.mean()):.3f} on {int(keep.sum())} identical {zone}-zone tokens × {len(layers)} layers, "
                        f"worst layer L{layers[worst]} {per_layer[worst]:.3f}")
    return out


def _generations(run) -> dict[str, list[int]]:
    table = pq.read_table(run.run_dir / artifacts.TEXTS, columns=["prompt_id", "token_ids"])
    return {pid: list(ids) for pid, ids in zip(table.column(0).to_pylist(), table.column(1).to_pylist())}


def duplicate_check(frozen, analysis: dict, runs: Callable, settings: Settings) -> Outcome:
    out = Outcome(analysis["id"], "duplicate_check")
    first, second = (runs(r) for r in analysis["runs"])
    gen_a, gen_b = _generations(first), _generations(second)
    prompt_ids = sorted(set(gen_a) | set(gen_b))
    mismatched, firsts = 0, []
    for pid in prompt_ids:
        x, y = gen_a.get(pid), gen_b.get(pid)
        if x is None or y is None:
            mismatched += len(x or y)
            firsts.append(f"prompt {pid} generated in only one run")
            continue
        differ = [i for i, (p, q) in enumerate(zip(x, y)) if p != q] + list(range(min(len(x), len(y)), max(len(x), len(y))))
        if differ:
            mismatched += len(differ)
            firsts.append(f"prompt {pid} from generated token {differ[0]}")
    out.quantities["mismatched_tokens"] = float(mismatched)
    stored_a, stored_b = _topk(first), _topk(second)
    topk_text = "no per-token top-k stored"
    if stored_a is not None and stored_b is not None:
        tokens_a, idx_a, w_a = stored_a[0], np.asarray(stored_a[1]), np.asarray(stored_a[2], dtype=np.float64)
        tokens_b, idx_b, w_b = stored_b[0], np.asarray(stored_b[1]), np.asarray(stored_b[2], dtype=np.float64)
        if tokens_a[TOKEN_KEYS].reset_index(drop=True).equals(tokens_b[TOKEN_KEYS].reset_index(drop=True)):
            order_a, order_b = np.argsort(idx_a, axis=-1), np.argsort(idx_b, axis=-1)
            ia, ib = np.take_along_axis(idx_a, order_a, -1), np.take_along_axis(idx_b, order_b, -1)
            sets_differ = (ia != ib).any(-1)                               # [tokens, layers]
            wd = np.abs(np.take_along_axis(w_a, order_a, -1) - np.take_along_axis(w_b, order_b, -1)).max(-1)
            out.quantities["mismatched_topk"] = float(sets_differ.sum())
            out.quantities["weight_diff"] = float(wd[~sets_differ].max()) if (~sets_differ).any() else float("nan")
            topk_text = (f"top-{ia.shape[-1]} sets differ on {int(sets_differ.sum())} of {sets_differ.size} token × layer rows, "
                         f"routed weights within {out.quantities['weight_diff']:.3g} where they agree")
            if sets_differ.any():
                t, layer = np.argwhere(sets_differ)[0]
                row = tokens_a.iloc[int(t)]
                firsts.append(f"top-k first differs at prompt {row['prompt_id']} position {int(row['position'])} layer index {int(layer)}")
        else:
            topk_text = f"the runs read different tokens ({_first_token_difference(tokens_a, tokens_b)})"
    out.numbers.update({"run_a": first.run_id, "run_b": second.run_id, "variant": _variant(first), "n_prompts": len(prompt_ids),
                        **{k: v for k, v in out.quantities.items()}, "first_differences": "; ".join(firsts[:5])})
    identical = mismatched == 0 and out.quantities.get("mismatched_topk") == 0
    out.primary_passed = identical
    if identical:
        out.primary_text = (f"{first.run_id} and {second.run_id} generated the same {sum(map(len, gen_a.values()))} tokens "
                            f"for {len(prompt_ids)} prompts; {topk_text}")
    else:
        out.primary_text = (f"{first.run_id} and {second.run_id} differ: {mismatched} generated token(s) differ; {topk_text}; "
                            f"first: {'; '.join(firsts[:3])}")
        warn(out, "duplicate_differs", f"the duplicate runs {first.run_id} and {second.run_id} do not reproduce each other "
             f"({'; '.join(firsts[:3])})")
    return out
