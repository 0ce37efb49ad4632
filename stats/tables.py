"""From a tidy per-prompt × unit table (what capture writes) to the N×F arrays the engine takes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stats._common import unit_id

__all__ = ["UnitTable", "pivot_units"]


@dataclass(frozen=True)
class UnitTable:
    """Values of every unit on every prompt.

    Attributes
    ----------
    values : numpy.ndarray, shape (N, F)
        NaN where the tidy table had no row (e.g. Q of an expert never selected in that prompt).
    prompt_ids : numpy.ndarray of str, shape (N,)
        Sorted prompt ids (rows).
    unit_ids : numpy.ndarray of str, shape (F,)
        Unit ids such as ``"L14E114"`` (columns), sorted by layer then index when built from
        ``layer``/``index`` columns, else sorted as strings.
    """

    values: np.ndarray
    prompt_ids: np.ndarray
    unit_ids: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """Wide frame: index ``prompt_id``, one column per unit id."""
        return pd.DataFrame(self.values, index=pd.Index(self.prompt_ids, name="prompt_id"),
                            columns=pd.Index(self.unit_ids, name="unit"))

    def column(self, unit: str) -> np.ndarray:
        """The values of one unit over prompts."""
        idx = np.flatnonzero(self.unit_ids == unit)
        if idx.size != 1:
            raise ValueError(f"`unit` {unit!r} is not in this table.")
        return self.values[:, idx[0]]

    def mask(self, labels: dict | pd.Series, positive) -> np.ndarray:
        """Boolean mask over prompts: ``labels[prompt_id] == positive`` (e.g. class == "FIRE")."""
        lab = pd.Series(labels)
        missing = [p for p in self.prompt_ids if p not in lab.index]
        if missing:
            raise ValueError(f"`labels` has no entry for prompt(s) {missing[:5]}.")
        return lab.loc[list(self.prompt_ids)].to_numpy() == positive


def _pivot_units_iv(frame, value, prompt, unit, layer, index):
    if not isinstance(frame, pd.DataFrame):
        raise ValueError("`frame` must be a pandas DataFrame.")
    need = [prompt, value] + ([unit] if unit is not None else [layer, index])
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise ValueError(f"`frame` lacks column(s) {missing}; pass `unit=` or `layer=`/`index=` "
                         "naming the unit columns.")
    keys = [prompt, unit] if unit is not None else [prompt, layer, index]
    if frame.duplicated(keys).any():
        raise ValueError(f"`frame` has more than one row per {tuple(keys)}; reduce it first.")


def pivot_units(frame: pd.DataFrame, *, value: str = "value", prompt: str = "prompt_id",
                unit: str | None = None, layer: str = "layer", index: str = "expert",
                kind: str = "E") -> UnitTable:
    """Pivot a tidy frame (one row per prompt × unit) to a :class:`UnitTable`.

    Either ``unit`` names a column of ready-made ids (``"L14E114"``), or ``layer`` and ``index``
    name integer columns and ids are built as ``f"L{layer}{kind}{index}"`` (``kind="H"`` for heads).
    """
    _pivot_units_iv(frame, value, prompt, unit, layer, index)
    if unit is None:
        f = frame[[prompt, layer, index, value]].copy()
        pairs = f[[layer, index]].drop_duplicates().sort_values([layer, index])
        ids = [unit_id(l, i, kind) for l, i in zip(pairs[layer], pairs[index])]
        f["_unit"] = [unit_id(l, i, kind) for l, i in zip(f[layer], f[index])]
        col = "_unit"
    else:
        f = frame[[prompt, unit, value]]
        ids = sorted(f[unit].astype(str).unique())
        col = unit
    wide = f.pivot(index=prompt, columns=col, values=value).sort_index()
    wide = wide.reindex(columns=ids)
    return UnitTable(wide.to_numpy(dtype=float), np.asarray(wide.index.astype(str), dtype=object),
                     np.asarray(ids, dtype=object))
