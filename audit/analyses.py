"""What every design's analyses share: the :class:`Outcome` an analysis returns, the inference
:class:`Settings`, warnings as flags with codes, the direction rule and the all-unit baseline's record.
The analyses themselves live with their design (``audit/designs/<name>.py``); :func:`analysis_for`
finds one by design and kind.

Every analysis returns an :class:`Outcome`: the quantities its thresholds compare against, whether the
primary criterion passed (the test at alpha in the preregistered direction), the numbers and tables
behind it, warnings, and — when data are missing or too few — why it is not established.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from stats import Flag



@dataclass
class Outcome:
    analysis_id: str
    kind: str
    quantities: dict[str, float] = field(default_factory=dict)
    primary_passed: bool = False
    primary_text: str = ""
    numbers: dict[str, float | str | None] = field(default_factory=dict)
    warnings: list[Flag] = field(default_factory=list)  # Flag(code, message): rules read codes, the ledger messages
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
    engine: str = "numpy"  # where the max-T scan runs (study `inference.engine`; stats.use_backend)




def warn(out: Outcome, code: str, message: str) -> None:
    """Add a warning once (by code and message)."""
    flag = Flag(code, message)
    if flag not in out.warnings:
        out.warnings.append(flag)


def flag_warnings(out: Outcome, flags) -> None:
    """Carry the flags of a stats result into the outcome."""
    for flag in flags:
        warn(out, getattr(flag, "code", "stats"), str(getattr(flag, "message", flag)))


def direction_ok(diff: float, tails: str) -> bool:
    return diff > 0 if tails == "greater" else diff < 0 if tails == "less" else diff != 0


def critical_value(null, alpha: float, tails: str, exact: bool) -> float:
    """The critical statistic of a resampling null at ``alpha``, as the all-unit baseline defines it
    (:mod:`stats.baseline`): the k-th largest null value in the tested direction, k = floor(alpha * P) for an
    exact enumeration of P, floor(alpha * (P + 1) - 1) for P Monte Carlo resamples. Two-sided: on |statistic|."""
    values = np.asarray(null, dtype=float).ravel()
    values = values[np.isfinite(values)]
    directed = {"greater": values, "less": -values}.get(tails, np.abs(values))
    if not directed.size:
        return float("nan")
    srt = np.sort(directed)[::-1]
    k = int(np.floor(alpha * srt.size + 1e-9)) if exact else int(np.floor(alpha * (1 + srt.size) - 1 + 1e-9))
    if not 0 <= k < srt.size:
        return float("nan")
    return float(-srt[k]) if tails == "less" else float(srt[k])


def record_baseline(out: Outcome, analysis: dict, result, ids: list[str], target: str, targets: list[str],
                     settings: Settings, what: str, columns: dict) -> None:
    """The all-unit baseline's numbers, tables, primary criterion and warnings, for units or head slots."""
    correction = analysis["correction"]
    per_unit_p = {"maxT_stepdown": result.p_maxt_step_down, "maxT_single_step": result.p_maxt_single_step,
                  "holm": result.p_holm, "fdr_bh": result.q_bh, "none": result.p_uncorrected}[correction]
    p_target = float(per_unit_p[ids.index(target)])
    out.quantities.update({"p": p_target, "target_rank": float(result.target_rank), "target_percentile": float(result.target_percentile)})
    out.numbers.update({"target": target, "correction": correction, "null": result.null, "resampling": result.resampling,
                        "target_variance_ratio": result.target_variance_ratio,
                        "target_brown_forsythe_p": result.target_brown_forsythe_p, "target_p_corrected": p_target,
                        "target_statistic": float(result.target_statistic), "target_rank": int(result.target_rank),
                        "family_size": int(result.family_size), "best_unit": result.best_unit,
                        "best_statistic": float(result.best_statistic), "critical_statistic": float(result.critical_value),
                        "observed_statistic": float(result.target_statistic), "n_relabelings": int(result.n_resamples),
                        "exact": bool(result.exact), "dropped_units": len(result.dropped_units),
                        "engine": result.engine})
    for t in targets:
        j = ids.index(t)
        out.numbers[f"{t}_rank"] = int(result.rank[j])
        out.numbers[f"{t}_p_corrected"] = float(per_unit_p[j])
    flag_warnings(out, result.flags)
    out.tables["baseline"] = pd.DataFrame({"analysis_id": analysis["id"], "unit": ids, **columns, "statistic": result.statistic,
                                           "p_uncorrected": result.p_uncorrected, "p_fwer": per_unit_p, "rank": result.rank,
                                           "is_target": [u in targets for u in ids]})
    out.tables["null_distribution"] = pd.DataFrame({"analysis_id": analysis["id"], "value": np.asarray(result.null_max, dtype=float)})
    out.primary_passed = p_target <= settings.alpha and direction_ok(float(result.target_statistic), analysis["tails"])
    ranks = ", ".join(f"{t} {int(result.rank[ids.index(t)])}" for t in targets)
    out.primary_text = (f"{target} ranks {int(result.target_rank)} of {int(result.family_size)} {what} "
                        f"(statistic {float(result.target_statistic):.4g}; best: {result.best_unit}); {correction} corrected "
                        f"p = {p_target:.4g} against alpha {settings.alpha}" + (f"; ranks of the targets: {ranks}" if len(targets) > 1 else ""))
    if result.best_unit != target:
        warn(out, "best_not_target", f"the best-separating unit is {result.best_unit}, not the target {target}")
    out.facts["best_is_target"] = result.best_unit == target




def analysis_for(design: str, kind: str):
    """The function that computes analysis ``kind`` in a study of design ``design``."""
    from .designs import audit_design

    return audit_design(design).ANALYSES[kind]
