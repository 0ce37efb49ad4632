"""Figures of the HTML report, drawn with matplotlib and returned as inline SVG strings.

Every function takes tidy frames (already filtered to one analysis) and returns the text of one
``<svg>`` element ready to be pasted into HTML: no XML prolog, no metadata, no global ``<style>``,
no fixed width or height (the page's CSS sizes it from the ``viewBox``), and every ``id`` inside it
prefixed with the figure's own id so that several figures can share one document. Text stays text
(``svg.fonttype = none``), so a browser can search it and a test can read it; dense grids such as a
40 x 256 baseline are one embedded PNG (``imshow``), never 10,240 rectangles.

User text (unit ids, prompt ids, class and register labels) reaches matplotlib through
:func:`_lit`, which turns off mathtext; matplotlib's SVG writer escapes ``<``, ``>`` and ``&``.
The output is deterministic for the same input: fixed hash salt, no date, seeded jitter.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

__all__ = [
    "PALETTE",
    "ablation_drops",
    "baseline_heatmap",
    "class_order",
    "minibar",
    "null_histogram",
    "slug",
    "target_strips",
    "wsq_bars",
]

# Okabe-Ito, colour-blind safe; the report's CSS uses the same accent colours.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
INK = "#1f2328"
MUTED = "#656d76"
TARGET = "#d1242f"
BEST = "#8250df"

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "lockstep-report",
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.0,
    "axes.edgecolor": "#8c959f",
    "axes.labelcolor": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "legend.frameon": False,
    "legend.fontsize": 8.0,
    "figure.dpi": 100.0,
}

_ID_REF = re.compile(r'(\bid=")([^"]+)(")|(url\(#)([^)]+)(\))|(href="#)([^"]+)(")')
_SLUG_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def slug(text: Any) -> str:
    """A string safe inside an HTML ``id``: letters, digits, ``_`` and ``-`` only, never empty."""
    cleaned = _SLUG_BAD.sub("-", str(text)).strip("-")
    return cleaned or "x"


def _lit(text: Any, limit: int = 48) -> str:
    """User text for matplotlib: cut to ``limit`` characters (the HTML around the figure has it whole)
    and ``$`` escaped so that it is never read as mathtext."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _styled(draw: Callable[..., Figure]) -> Callable[..., str]:
    """Run ``draw`` under the report's rc settings and return its figure as inline SVG."""

    def wrapper(*args: Any, fig_id: str, **kwargs: Any) -> str:
        with matplotlib.rc_context(_RC):
            fig = draw(*args, **kwargs)
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=0.08)
        return _inline_svg(buffer.getvalue(), fig_id)

    wrapper.__name__ = draw.__name__
    wrapper.__doc__ = draw.__doc__
    return wrapper


def _inline_svg(text: str, prefix: str) -> str:
    """Turn matplotlib's standalone SVG document into an element for an HTML page."""
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, count=1, flags=re.S)
    text = re.sub(r'<style type="text/css">.*?</style>\s*', "", text, count=1, flags=re.S)
    text = re.sub(r"<defs>\s*</defs>\s*", "", text, count=1)

    def prefixed(match: re.Match[str]) -> str:
        for start in (1, 4, 7):
            if match.group(start) is not None:
                return f"{match.group(start)}{prefix}-{match.group(start + 1)}{match.group(start + 2)}"
        raise AssertionError("unreachable: the pattern has three alternatives")

    text = _ID_REF.sub(prefixed, text)
    head_end = text.index(">")
    head = text[:head_end]
    width = re.search(r'\swidth="([0-9.]+)pt"', head)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    head += ' class="plot" role="img" focusable="false"'
    if width is not None:  # never drawn larger than matplotlib laid it out: text stays at its point size
        head += f' style="max-width:{float(width.group(1)) * 1.6:.0f}px"'
    return head + text[head_end:]


def _new_figure(width: float, height: float, *, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    fig.patch.set_alpha(0.0)
    return fig


def _colours(labels: Sequence[str]) -> dict[str, str]:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def class_order(values: Sequence[str]) -> list[str]:
    """FIRE before NOFIRE, headline before control, the rest alphabetically."""
    preferred = ["FIRE", "NOFIRE", "headline", "control", "diagnostic"]
    seen = sorted({str(v) for v in values})
    head = [p for p in preferred if p in seen]
    return head + [v for v in seen if v not in head]


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.3g}"


# --------------------------------------------------------------------------------------------
# Layer x unit heatmap of the all-unit baseline


@_styled
def baseline_heatmap(frame: pd.DataFrame, *, index_name: str) -> Figure:
    """Layer x expert (or head) heatmap of ``statistic`` with targets ringed and the best unit marked.

    ``frame`` has the columns of ``tables/baseline.parquet`` for one analysis.
    """
    layers = frame["layer"].astype(int)
    index = frame["index"].astype(int)
    layer_lo, layer_hi = int(layers.min()), int(layers.max())
    width = int(index.max()) + 1
    grid = np.full((layer_hi - layer_lo + 1, width), np.nan)
    grid[layers.to_numpy() - layer_lo, index.to_numpy()] = frame["statistic"].astype(float).to_numpy()

    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo < 0.0 < hi:
        cmap, norm = matplotlib.colormaps["RdBu_r"], TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)
    else:
        cmap, norm = matplotlib.colormaps["viridis"], None
    cmap = cmap.with_extremes(bad="#eaeef2")

    n_layers = grid.shape[0]
    fig = _new_figure(9.2, float(np.clip(1.3 + 0.065 * n_layers, 2.6, 4.8)))
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", interpolation="none", cmap=cmap, norm=norm,
                      extent=(-0.5, width - 0.5, layer_hi + 0.5, layer_lo - 0.5))
    image.set_gid("grid")
    bar = fig.colorbar(image, ax=ax, fraction=0.035, pad=0.015)
    bar.set_label("baseline statistic")
    bar.outline.set_visible(False)
    ax.set_xlabel(index_name)
    ax.set_ylabel("layer")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers and units are whole numbers
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)

    targets = frame[frame["is_target"].astype(bool)]
    ranks = frame["rank"].astype(float)
    best = frame.loc[[ranks.idxmin()]] if ranks.notna().any() else frame.iloc[0:0]
    marks: list[tuple[pd.Series, str, str]] = [(row, "target", TARGET) for _, row in targets.iterrows()]
    marks += [(row, "best", BEST) for _, row in best.iterrows() if not bool(row["is_target"])]
    for k, (row, role, colour) in enumerate(marks):
        x, y = int(row["index"]), int(row["layer"])
        ring = ax.scatter([x], [y], s=150, facecolors="none", edgecolors="white", linewidths=3.2, zorder=3,
                          clip_on=False)
        ring.set_gid(f"{role}-halo-{slug(row['unit'])}")
        ring = ax.scatter([x], [y], s=150, facecolors="none", edgecolors=colour, linewidths=1.6, zorder=4,
                          clip_on=False)
        ring.set_gid(f"{role}-{slug(row['unit'])}")
        rank = row["rank"]
        rank_text = f"rank {int(rank)}" if np.isfinite(float(rank)) else "unranked"
        label = f"{_lit(row['unit'])} · {rank_text}" if role == "target" else f"best: {_lit(row['unit'])}"
        # Away from the nearer edges; alternate sides so that neighbouring labels do not stack.
        right = x < 0.25 * width or (x <= 0.75 * width and k % 2 == 0)
        up = y > (layer_lo + layer_hi) / 2  # the layer axis runs downwards
        dx, dy = (16 if right else -16), (14 if up else -14)
        note = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                           ha="right" if dx < 0 else "left", va="center", fontsize=8.5, fontweight="bold",
                           color=colour, zorder=5,
                           bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "lw": 0.8, "alpha": 0.92},
                           arrowprops={"arrowstyle": "-", "color": colour, "lw": 1.0})
        note.set_gid(f"{role}-label-{slug(row['unit'])}")
    return fig


# --------------------------------------------------------------------------------------------
# FIRE / NOFIRE strips of the target's per-prompt values


@_styled
def target_strips(frame: pd.DataFrame, *, max_panels: int = 6) -> Figure:
    """One panel per (unit, run, zone, metric): per-prompt values by prompt class, coloured by the
    generated register label, class means as bars, crossing prompts ringed and named."""
    keys = ["unit", "run", "zone", "metric"]
    panels = list(frame.groupby(keys, sort=False, dropna=False))[:max_panels]  # the engine's order
    registers = sorted({str(v) for v in frame["register_label"].dropna()})
    colours = _colours(registers)
    n = len(panels)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = _new_figure(3.6 * ncols + 0.8, 3.0 * nrows + 0.9, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    rng = np.random.default_rng(20260607)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for p, (ax, ((unit, run, zone, metric), sub)) in enumerate(zip(axes.flat, panels)):
        sub = sub.sort_values(["prompt_class", "prompt_id"], kind="stable")
        classes = class_order(sub["prompt_class"])
        ticks = []
        for c, cls in enumerate(classes):
            rows = sub[sub["prompt_class"].astype(str) == cls]
            values = rows["value"].astype(float).to_numpy()
            xs = c + rng.uniform(-0.2, 0.2, size=len(rows))
            fills = [colours.get(str(r), "#8c959f") for r in rows["register_label"]]
            ax.scatter(xs, values, s=22, c=fills, edgecolors="white", linewidths=0.5, zorder=3)
            mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            if np.isfinite(mean):
                ax.plot([c - 0.32, c + 0.32], [mean, mean], color=INK, lw=1.6, zorder=4)
            ticks.append(f"{_lit(cls)}\nmean {_fmt(mean)} · n {len(rows)}")
            crossing = rows["crosses"].astype(bool).to_numpy()
            for j, (x, v, pid) in enumerate(zip(xs[crossing], values[crossing], rows["prompt_id"][crossing])):
                ring = ax.scatter([x], [v], s=80, facecolors="none", edgecolors=TARGET, linewidths=1.5, zorder=5)
                ring.set_gid(f"p{p}-cross-ring-{slug(pid)}")
                note = ax.annotate(_lit(pid), (x, v), xytext=(-12 if c else 12, 12 + 11 * (j % 3)),
                                   textcoords="offset points", ha="right" if c else "left", fontsize=7.5,
                                   color=TARGET, fontweight="bold", zorder=6,
                                   arrowprops={"arrowstyle": "-", "color": TARGET, "lw": 0.8})
                note.set_gid(f"p{p}-cross-{slug(pid)}")
                note.set_in_layout(False)
        ax.set_xticks(range(len(classes)), ticks)
        ax.set_xlim(-0.6, len(classes) - 0.4)
        ax.margins(y=0.14)
        ax.set_title(_lit(unit), loc="left")
        ax.set_ylabel(_lit(f"{metric} · {zone} · {run}"))
        ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
    handles = [Line2D([], [], ls="", marker="o", ms=6, mfc=colours[r], mec="white", label=_lit(r)) for r in registers]
    handles.append(Line2D([], [], ls="", marker="o", ms=8, mfc="none", mec=TARGET, mew=1.5,
                          label="crosses its class"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5),
               title="generated register (frozen rubric)", title_fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# Null distribution


@_styled
def null_histogram(values: np.ndarray, *, observed: float | None, critical: float | None) -> Figure:
    """Histogram of the permutation null with the observed statistic and the critical value."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fig = _new_figure(7.6, 3.0)
    ax = fig.add_subplot()
    span = [values.min(), values.max()] if values.size else [0.0, 1.0]
    for v in (observed, critical):
        if v is not None and np.isfinite(v):
            span += [v]
    lo, hi = float(min(span)), float(max(span))
    pad = 0.04 * (hi - lo or 1.0)
    bins = np.linspace(lo - pad, hi + pad, 61)
    ax.hist(values, bins=bins, color="#8c959f", edgecolor="white", linewidth=0.3, zorder=2)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("statistic")
    ax.set_ylabel("relabellings")
    ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
    top = ax.get_ylim()[1]
    if critical is not None and np.isfinite(critical):
        line = ax.axvline(critical, color=PALETTE[1], lw=1.6, ls="--", zorder=3)
        line.set_gid("critical")
        ax.annotate(f"critical {_fmt(critical)}", (critical, top * 0.93), xytext=(-4, 0),
                    textcoords="offset points", ha="right", fontsize=8, color="#9a6700")
    if observed is not None and np.isfinite(observed):
        line = ax.axvline(observed, color=TARGET, lw=2.0, zorder=4)
        line.set_gid("observed")
        ax.annotate(f"observed {_fmt(observed)}", (observed, top * 0.78), xytext=(-4, 0),
                    textcoords="offset points", ha="right", fontsize=8.5, color=TARGET, fontweight="bold")
    return fig


# --------------------------------------------------------------------------------------------
# W / S / Q


@_styled
def wsq_bars(frame: pd.DataFrame) -> Figure:
    """Three panels, W, S and Q, with one bar per group (and per unit when there are several)."""
    units = sorted({str(u) for u in frame["unit"]})
    groups = class_order(frame["group"])
    colours = _colours(groups)
    fig = _new_figure(9.2, 2.9, layout="constrained")
    axes = fig.subplots(1, 3)
    table = frame.assign(unit=frame["unit"].astype(str), group=frame["group"].astype(str)).drop_duplicates(
        ["unit", "group"]).set_index(["unit", "group"])
    titles = {"W": "W = S × Q (mean routed weight)", "S": "S (selection rate)", "Q": "Q (weight when selected)"}
    width = (0.8 if len(units) > 1 else 0.6) / max(len(groups), 1)
    for ax, metric in zip(axes, ("W", "S", "Q")):
        for g, group in enumerate(groups):
            heights = [float(table.loc[(u, group), metric]) if (u, group) in table.index else np.nan for u in units]
            xs = np.arange(len(units)) + (g - (len(groups) - 1) / 2) * width
            bars = ax.bar(xs, heights, width=width * 0.92, color=colours[group], zorder=2, label=_lit(group))
            for u, patch in zip(units, bars):
                patch.set_gid(f"{metric}-{slug(group)}-{slug(u)}")
            for x, h in zip(xs, heights):
                if np.isfinite(h):
                    ax.annotate(_fmt(h), (x, h), xytext=(0, 2), textcoords="offset points",
                                ha="center", va="bottom", fontsize=7.5, color=INK)
        ax.set_xticks(range(len(units)), [_lit(u) for u in units])
        ax.set_title(titles[metric], loc="left", fontsize=9)
        ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
        ax.margins(y=0.15)
    axes[0].legend(loc="upper right")
    return fig


# --------------------------------------------------------------------------------------------
# Ablation: per-pair drop against the threshold


@_styled
def ablation_drops(frame: pd.DataFrame, *, threshold: float | None) -> Figure:
    """Per-pair logit-difference drop, pairs sorted within class; class means and the threshold."""
    classes = class_order(frame["pair_class"])
    colours = _colours(classes)
    fig = _new_figure(9.2, 3.4)
    ax = fig.add_subplot()
    start = 0
    for cls in classes:
        rows = frame[frame["pair_class"].astype(str) == cls].sort_values("drop", kind="stable")
        xs = np.arange(start, start + len(rows))
        drops = rows["drop"].astype(float).to_numpy()
        points = ax.scatter(xs, drops, s=14, color=colours[cls], zorder=3, label=_lit(f"{cls} (n={len(rows)})"))
        points.set_gid(f"pairs-{slug(cls)}")
        if len(rows) and np.isfinite(drops).any():
            mean = float(np.nanmean(drops))
            ax.plot([xs[0] - 0.5, xs[-1] + 0.5], [mean, mean], color=colours[cls], lw=2.0, zorder=4)
            ax.annotate(f"mean {_fmt(mean)}", (xs[-1] + 0.5, mean), xytext=(3, 3), textcoords="offset points",
                        fontsize=8, color=colours[cls], fontweight="bold")
        start += len(rows) + 3
    ax.axhline(0.0, color="#8c959f", lw=0.8, zorder=1)
    if threshold is not None and np.isfinite(threshold):
        line = ax.axhline(threshold, color=TARGET, lw=1.5, ls="--", zorder=2)
        line.set_gid("threshold")
        ax.annotate(f"threshold {_fmt(threshold)} logits (on the mean drop)", (0.0, threshold),
                    xycoords=("axes fraction", "data"), xytext=(4, 4), textcoords="offset points",
                    fontsize=8, color=TARGET)
    ax.set_xticks([])
    ax.set_xlabel("contrastive pairs, sorted by drop within class")
    ax.set_ylabel("margin drop under ablation (logits)")
    ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
    ax.legend(loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------
# Hand-written mini bar for tables


def minibar(mean: float, sd: float, *, lo: float, hi: float, colour: str = PALETTE[0]) -> str:
    """A 140 x 14 inline SVG: a bar from 0 to ``mean`` and a whisker of ± ``sd`` on a shared scale."""
    w = 140.0
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return round((float(np.clip(v, lo, hi)) - lo) / span * w, 2)

    label = f"mean {_fmt(mean)}, sd {_fmt(sd)}"
    parts = [f'<svg class="minibar" viewBox="0 0 {w:g} 14" width="{w:g}" height="14" role="img" aria-label="{label}">',
             f'<line x1="{x(0.0)}" y1="1" x2="{x(0.0)}" y2="13" stroke="#8c959f" stroke-width="1"/>']
    if np.isfinite(mean):
        left, right = sorted((x(0.0), x(mean)))
        parts.append(f'<rect x="{left}" y="3" width="{max(right - left, 1.0)}" height="8" rx="1.5" fill="{colour}"/>')
        if np.isfinite(sd):
            parts.append(f'<line x1="{x(mean - sd)}" y1="7" x2="{x(mean + sd)}" y2="7" '
                         'stroke="#1f2328" stroke-width="1.2"/>')
    parts.append("</svg>")
    return "".join(parts)
