"""Register vs prompt class: does the unit track the generated register or the prompt label?

The journal's 2×2 (prompt class × generated register) with the unit's value in each cell, and an
OLS model of the value on both indicators together, so "tracks the generated register rather than
the prompt label" becomes a coefficient with an interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from stats._common import Flag, as_1d_float, as_ids, check_confidence

__all__ = ["RegisterResult", "crosses", "register_analysis"]

_COEF_COLUMNS = ("term", "estimate", "std_error", "ci_low", "ci_high", "pvalue")


@dataclass(frozen=True)
class RegisterResult:
    """Result of :func:`register_analysis`.

    Attributes
    ----------
    cells : pandas.DataFrame
        Columns ``prompt_class, register, n, mean, sd`` for the four cells (``n = 0`` cells kept).
    coefficients : pandas.DataFrame
        Columns ``term, estimate, std_error, ci_low, ci_high, pvalue`` for ``Intercept``,
        ``register`` (target register vs not, holding class fixed), ``prompt_class`` (target
        class vs not, holding register fixed) and ``register - prompt_class`` (the contrast a claim
        "the register rather than the class" states: its estimate, standard error, interval and
        two-sided p from ``fit.t_test``). NaN when the model cannot be fitted.
    register_effect, class_effect : float
        The two slopes.
    crossing : pandas.DataFrame
        Items whose register is not their class's: ``item, prompt_class, register, value``.
    n_obs : int
    cov_type : str
        The statsmodels covariance used (``"nonrobust"`` by default).
    formula : str
    flags : tuple of Flag
        ``register_confounded_with_class`` (every item's register is its class's, or the opposite:
        the model cannot separate them), ``register_constant`` / ``class_constant`` (one indicator
        never varies: nothing to compare), ``empty_cell``, ``leverage_one`` (a robust covariance is
        undefined for a single-item cell).
    """

    cells: pd.DataFrame
    coefficients: pd.DataFrame
    register_effect: float
    class_effect: float
    crossing: pd.DataFrame
    n_obs: int
    cov_type: str
    formula: str
    confidence: float
    flags: tuple

    def to_frame(self) -> pd.DataFrame:
        """The coefficient table (``term, estimate, std_error, ci_low, ci_high, pvalue``)."""
        return self.coefficients.copy()


def crosses(prompt_class, register, *, target_class: str, target_register: str) -> np.ndarray:
    """Which items cross their class: the generated register is not the one their class was built to elicit.

    An item of ``target_class`` crosses when its register is not ``target_register``; an item of any
    other class crosses when its register is ``target_register``. This is the one definition of crossing:
    the 2×2 table, the routing analyses' per-prompt tables, the ledger's crossing list and the report
    all call it.

    Returns
    -------
    numpy.ndarray of bool, one per item.
    """
    pc = np.asarray(prompt_class, dtype=object)
    rg = np.asarray(register, dtype=object)
    return (pc == target_class) != (rg == target_register)


def _register_iv(value, prompt_class, register, ids, confidence, cov_type):
    v = as_1d_float(value, "value")
    if not np.all(np.isfinite(v)):
        raise ValueError("`value` must be finite (drop prompts with NaN first).")
    pc = np.asarray(prompt_class, dtype=object)
    rg = np.asarray(register, dtype=object)
    if pc.shape != v.shape:
        raise ValueError(f"`prompt_class` must have one label per item ({v.size}).")
    if rg.shape != v.shape:
        raise ValueError(f"`register` must have one label per item ({v.size}).")
    if v.size < 4:
        raise ValueError("`value` must hold at least 4 items.")
    ids = as_ids(ids, v.size, "ids", "p")
    confidence = check_confidence(confidence)
    if cov_type not in ("nonrobust", "HC0", "HC1", "HC2", "HC3"):
        raise ValueError("`cov_type` must be one of 'nonrobust', 'HC0', 'HC1', 'HC2', 'HC3'.")
    return v, pc, rg, ids, confidence


def register_analysis(value, prompt_class, register, *, target_class="FIRE",
                      target_register="target", ids=None, confidence: float = 0.95,
                      cov_type: str = "nonrobust", other_class: str | None = None,
                      other_register: str | None = None) -> RegisterResult:
    """2×2 prompt class × generated register table and ``value ~ register + prompt_class``.

    Parameters
    ----------
    value : array_like, 1-D
        The unit's per-prompt value (e.g. W of L14E114 in the trimmed generated zone).
    prompt_class, register : array_like, 1-D
        Labels per prompt; compared with ``target_class`` and ``target_register`` to make 0/1
        indicators.
    ids : sequence of str, optional
        Prompt ids, used to list the crossing items.
    other_class, other_register : str, optional
        Names of the other class and register in the cell table (default ``not_<target>``), so a
        table says NOFIRE and the rubric's own label.
    confidence : float
    cov_type : str
        statsmodels covariance type. ``"nonrobust"`` (default) or HC0–HC3. A single-item cell has
        leverage 1 and makes HC2/HC3 undefined; that is flagged, never silently replaced.

    Returns
    -------
    RegisterResult

    Notes
    -----
    OLS via ``statsmodels.formula.api.ols("value ~ register + prompt_class")``; intervals from
    ``conf_int(alpha=1-confidence)``. With the additive model the register slope is the mean
    difference between registers within class, pooled across classes; it is identifiable only
    when some prompt's register differs from its class (the journal's cat-purring control).
    Checked against the direct statsmodels fit and against cell means in a balanced design
    (``tests/stats/test_stats_wsq_register.py``).
    """
    v, pc, rg, ids, confidence = _register_iv(value, prompt_class, register, ids, confidence, cov_type)
    cls = (pc == target_class).astype(int)
    reg = (rg == target_register).astype(int)
    frame = pd.DataFrame({"value": v, "register": reg, "prompt_class": cls})
    rows = []
    for c in (1, 0):
        for r in (1, 0):
            sel = v[(cls == c) & (reg == r)]
            rows.append({"prompt_class": target_class if c else (other_class or f"not_{target_class}"),
                         "register": target_register if r else (other_register or f"not_{target_register}"),
                         "n": int(sel.size), "mean": float(sel.mean()) if sel.size else np.nan,
                         "sd": float(sel.std(ddof=1)) if sel.size > 1 else np.nan})
    cells = pd.DataFrame(rows, columns=["prompt_class", "register", "n", "mean", "sd"])
    cross = crosses(pc, rg, target_class=target_class, target_register=target_register)
    crossing = pd.DataFrame({"item": ids[cross], "prompt_class": pc[cross], "register": rg[cross],
                             "value": v[cross]}, columns=["item", "prompt_class", "register", "value"])
    flags = []
    formula = "value ~ register + prompt_class"
    design = np.column_stack([np.ones(v.size), reg, cls])
    terms = ["Intercept", "register", "prompt_class"]
    contrast = "register - prompt_class"
    if (cells["n"] == 0).any():
        empty = cells.loc[cells["n"] == 0, ["prompt_class", "register"]].astype(str).agg("/".join, axis=1)
        flags.append(Flag("empty_cell", f"no prompt in cell(s) {', '.join(empty)}"))
    constant_value = bool(np.all(v == v[0]))
    if constant_value:
        flags.append(Flag("value_constant", f"the value is {v[0]:.6g} for every prompt: neither "
                          "register nor class changes it, and there is no variance to test against"))
    if constant_value and np.linalg.matrix_rank(design) == 3:
        coef = pd.DataFrame({"term": terms + [contrast], "estimate": [float(v[0]), 0.0, 0.0, 0.0],
                             "std_error": np.full(4, np.nan), "ci_low": np.full(4, np.nan),
                             "ci_high": np.full(4, np.nan), "pvalue": np.full(4, np.nan)},
                            columns=list(_COEF_COLUMNS))
    elif np.linalg.matrix_rank(design) < 3:
        if reg.min() == reg.max():
            flags.append(Flag("register_constant", f"every prompt has register {rg[0]!r}: there is no register "
                              "difference to compare"))
        elif cls.min() == cls.max():
            flags.append(Flag("class_constant", f"every prompt has class {pc[0]!r}: there is no class difference to compare"))
        else:
            flags.append(Flag("register_confounded_with_class",
                              "every prompt's register matches its class: register and prompt class cannot be separated"))
        nan4 = np.full(4, np.nan)  # arrays, not a scalar NaN: pandas would make the columns object
        coef = pd.DataFrame({"term": terms + [contrast], "estimate": nan4, "std_error": nan4, "ci_low": nan4,
                             "ci_high": nan4, "pvalue": nan4}, columns=list(_COEF_COLUMNS))
    else:
        hat = np.einsum("ij,ij->i", design @ np.linalg.pinv(design.T @ design), design)
        if cov_type in ("HC2", "HC3") and np.any(hat > 1 - 1e-10):
            flags.append(Flag("leverage_one",
                              f"{int(np.sum(hat > 1 - 1e-10))} item(s) alone in their cell have leverage "
                              f"1; {cov_type} standard errors are undefined for them"))
        # fit on the value times an exact power of two (largest |value| in [0.5, 1)): squared residuals
        # neither overflow nor underflow; estimates, errors and intervals are scaled back exactly
        k = int(np.frexp(np.max(np.abs(v)))[1])
        frame["value"] = np.ldexp(v, -k)
        with np.errstate(divide="ignore", invalid="ignore"):
            fit = smf.ols(formula, data=frame).fit(cov_type=cov_type)
            ci = fit.conf_int(alpha=1 - confidence)
            test = fit.t_test("register - prompt_class = 0")
            test_ci = np.asarray(test.conf_int(alpha=1 - confidence)).ravel()
        coef = pd.DataFrame({"term": terms + [contrast],
                             "estimate": [*fit.params[terms].to_numpy(), float(np.ravel(test.effect)[0])],
                             "std_error": [*fit.bse[terms].to_numpy(), float(np.ravel(test.sd)[0])],
                             "ci_low": [*ci.loc[terms, 0].to_numpy(), float(test_ci[0])],
                             "ci_high": [*ci.loc[terms, 1].to_numpy(), float(test_ci[1])],
                             "pvalue": [*fit.pvalues[terms].to_numpy(), float(np.ravel(test.pvalue)[0])]},
                            columns=list(_COEF_COLUMNS))
        for col in ("estimate", "std_error", "ci_low", "ci_high"):
            coef[col] = np.ldexp(coef[col].to_numpy(dtype=float), k)
    est = coef.set_index("term")["estimate"]
    return RegisterResult(cells=cells, coefficients=coef, register_effect=float(est["register"]),
                          class_effect=float(est["prompt_class"]), crossing=crossing, n_obs=int(v.size),
                          cov_type=cov_type, formula=formula, confidence=confidence, flags=tuple(flags))
