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
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "PALETTE",
    "ablation_drops",
    "baseline_heatmap",
    "class_order",
    "minibar",
    "null_histogram",
    "slug",
    "source_trace_heatmap",
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

    ``frame`` has the columns of ``tables/baseline.parquet`` for one analysis. The colour scale diverges at
    0 with symmetric limits (``-m .. m``, ``m`` the largest absolute statistic), so that a unit's colour
    says its sign and its size on one scale, and the colour bar has ticks on both sides of 0.
    """
    layers = frame["layer"].astype(int)
    index = frame["index"].astype(int)
    layer_lo, layer_hi = int(layers.min()), int(layers.max())
    width = int(index.max()) + 1
    grid = np.full((layer_hi - layer_lo + 1, width), np.nan)
    grid[layers.to_numpy() - layer_lo, index.to_numpy()] = frame["statistic"].astype(float).to_numpy()

    finite = grid[np.isfinite(grid)]
    bound = float(np.max(np.abs(finite))) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#eaeef2")
    norm = Normalize(vmin=-bound, vmax=bound)

    n_layers = grid.shape[0]
    fig = _new_figure(9.2, float(np.clip(1.3 + 0.065 * n_layers, 2.6, 4.8)))
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", interpolation="none", cmap=cmap, norm=norm,
                      extent=(-0.5, width - 0.5, layer_hi + 0.5, layer_lo - 0.5))
    image.set_gid("grid")
    bar = fig.colorbar(image, ax=ax, fraction=0.035, pad=0.015)
    bar.set_label("baseline statistic (0 = white)")
    ticks = MaxNLocator(nbins=6, symmetric=True).tick_values(-bound, bound)
    bar.set_ticks([t for t in ticks if -bound <= t <= bound])
    bar.ax.set_gid("colourbar")
    bar.outline.set_visible(False)
    ax.set_xlabel(index_name)
    ax.set_ylabel("layer")
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
        # Away from the nearer edges; alternate sides and heights so that neighbouring labels do not stack.
        right = x < 0.25 * width or (x <= 0.75 * width and k % 2 == 0)
        up = y > (layer_lo + layer_hi) / 2  # the layer axis runs downwards
        dx, dy = (16 if right else -16), (14 + 12 * (k // 2 % 3)) * (1 if up else -1)
        note = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                           ha="right" if dx < 0 else "left", va="center", fontsize=8.5, fontweight="bold",
                           color=colour, zorder=5,
                           bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colour, "lw": 0.8, "alpha": 0.92},
                           arrowprops={"arrowstyle": "-", "color": colour, "lw": 1.0})
        note.set_gid(f"{role}-label-{slug(row['unit'])}")
    return fig


# --------------------------------------------------------------------------------------------
# FIRE / NOFIRE strips of the target's per-prompt values


def _spread(positions: Sequence[float], gap: float, lo: float = 0.03, hi: float = 0.97) -> list[float]:
    """``positions`` (axes fractions, any order) moved apart to at least ``gap`` while staying in [lo, hi],
    each as close to where it was as the others allow; returned in the input order."""
    order = np.argsort(positions, kind="stable")
    placed = np.clip(np.asarray(positions, dtype=float)[order], lo, hi)
    gap = min(gap, (hi - lo) / max(len(placed) - 1, 1))
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    overflow = placed[-1] - hi if len(placed) else 0.0
    if overflow > 0:
        placed[-1] -= overflow
        for i in range(len(placed) - 2, -1, -1):
            placed[i] = min(placed[i], placed[i + 1] - gap)
    out = np.empty_like(placed)
    out[order] = placed
    return out.tolist()


@_styled
def target_strips(frame: pd.DataFrame, *, tick_labels: dict[tuple[str, str], str] | None = None,
                  max_panels: int = 6) -> Figure:
    """One panel per (unit, run, zone, metric): per-prompt values by prompt class, coloured by the
    generated register label, crossing prompts (the table's ``crosses`` column) ringed and named in a
    column of labels beside their class that never overlap.

    ``tick_labels`` maps (run, class) to the text under a class (the ledger's n and mean); the class name
    alone when absent.
    """
    keys = ["unit", "run", "zone", "metric"]
    panels = list(frame.groupby(keys, sort=False, dropna=False))[:max_panels]  # the engine's order
    registers = sorted({str(v) for v in frame["register_label"].dropna()})
    colours = _colours(registers)
    n = len(panels)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = _new_figure(3.9 * ncols + 0.8, 3.2 * nrows + 0.9, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    rng = np.random.default_rng(20260607)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for p, (ax, ((unit, run, zone, metric), sub)) in enumerate(zip(axes.flat, panels)):
        sub = sub.sort_values(["prompt_class", "prompt_id"], kind="stable")
        classes = class_order(sub["prompt_class"])
        values_all = sub["value"].astype(float).to_numpy()
        finite = values_all[np.isfinite(values_all)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = 0.12 * ((hi - lo) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlim(-0.5, len(classes) - 0.5 + 0.15)
        ticks = []
        for c, cls in enumerate(classes):
            rows = sub[sub["prompt_class"].astype(str) == cls]
            values = rows["value"].astype(float).to_numpy()
            xs = c - 0.18 + rng.uniform(-0.1, 0.1, size=len(rows))
            fills = [colours.get(str(r), "#8c959f") for r in rows["register_label"]]
            ax.scatter(xs, values, s=22, c=fills, edgecolors="white", linewidths=0.5, zorder=3)
            ticks.append((tick_labels or {}).get((str(run), cls), _lit(cls)))
            crossing = rows["crosses"].astype(bool).to_numpy()
            if not crossing.any():
                continue
            ids = list(rows["prompt_id"][crossing])
            xc, vc = xs[crossing], values[crossing]
            y0, y1 = ax.get_ylim()
            fractions = [(v - y0) / (y1 - y0) for v in vc]
            spots = _spread(fractions, gap=0.075)
            for x, v, pid, spot in zip(xc, vc, ids, spots):
                ring = ax.scatter([x], [v], s=80, facecolors="none", edgecolors=TARGET, linewidths=1.5, zorder=5)
                ring.set_gid(f"p{p}-cross-ring-{slug(pid)}")
                note = ax.annotate(_lit(pid, 32), (x, v), xytext=(c + 0.08, spot),
                                   textcoords=("data", "axes fraction"), ha="left", va="center", fontsize=7.5,
                                   color=TARGET, fontweight="bold", zorder=6,
                                   arrowprops={"arrowstyle": "-", "color": TARGET, "lw": 0.7, "shrinkA": 1})
                note.set_gid(f"p{p}-cross-{slug(pid)}")
                note.set_in_layout(False)
        ax.set_xticks(range(len(classes)), ticks)
        ax.set_title(_lit(unit), loc="left")
        ax.set_ylabel(_lit(f"{metric} · {zone} · {run}"))
        ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
    handles = [Line2D([], [], ls="", marker="o", ms=6, mfc=colours[r], mec="white", label=_lit(r)) for r in registers]
    handles.append(Line2D([], [], ls="", marker="o", ms=8, mfc="none", mec=TARGET, mew=1.5,
                          label="crosses its class (register not the one its class was built to elicit)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
               title="generated register (frozen rubric)", title_fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# Null distribution


@_styled
def null_histogram(values: np.ndarray, *, observed: float | None, critical: float | None,
                   xlabel: str = "statistic", ylabel: str = "resamples") -> Figure:
    """Histogram of a resampling null with the observed statistic (solid) and the critical value (dashed),
    both as the ledger gives them."""
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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
    top = ax.get_ylim()[1]
    right_half = (lo + hi) / 2
    if critical is not None and np.isfinite(critical):
        line = ax.axvline(critical, color=PALETTE[1], lw=1.6, ls="--", zorder=3)
        line.set_gid("critical")
        left = critical > right_half
        ax.annotate(f"critical {_fmt(critical)}", (critical, top * 0.93), xytext=(-4 if left else 4, 0),
                    textcoords="offset points", ha="right" if left else "left", fontsize=8, color="#9a6700")
    if observed is not None and np.isfinite(observed):
        line = ax.axvline(observed, color=TARGET, lw=2.0, zorder=4)
        line.set_gid("observed")
        left = observed > right_half
        ax.annotate(f"observed {_fmt(observed)}", (observed, top * 0.78), xytext=(-4 if left else 4, 0),
                    textcoords="offset points", ha="right" if left else "left", fontsize=8.5, color=TARGET,
                    fontweight="bold")
    return fig


# --------------------------------------------------------------------------------------------
# W / S / Q


@_styled
def wsq_bars(frame: pd.DataFrame) -> Figure:
    """Three panels, W, S and Q, with one bar per group (and per unit when there are several) and the
    table's 95% interval of each group mean (``<metric>_ci_low`` / ``_ci_high``) as a whisker."""
    units = sorted({str(u) for u in frame["unit"]})
    groups = class_order(frame["group"])
    colours = _colours(groups)
    fig = _new_figure(9.2, 2.9, layout="constrained")
    axes = fig.subplots(1, 3)
    table = frame.assign(unit=frame["unit"].astype(str), group=frame["group"].astype(str)).drop_duplicates(
        ["unit", "group"]).set_index(["unit", "group"])
    titles = {"W": "W = S × Q (mean routed weight)", "S": "S (selection rate)", "Q": "Q (weight when selected)"}
    width = (0.8 if len(units) > 1 else 0.6) / max(len(groups), 1)

    def cell(u: str, group: str, column: str) -> float:
        if (u, group) not in table.index or column not in table.columns:
            return float("nan")
        value = table.loc[(u, group), column]
        return float(value) if value is not None else float("nan")

    for ax, metric in zip(axes, ("W", "S", "Q")):
        for g, group in enumerate(groups):
            heights = [cell(u, group, metric) for u in units]
            lows = [cell(u, group, f"{metric}_ci_low") for u in units]
            highs = [cell(u, group, f"{metric}_ci_high") for u in units]
            xs = np.arange(len(units)) + (g - (len(groups) - 1) / 2) * width
            bars = ax.bar(xs, heights, width=width * 0.92, color=colours[group], zorder=2, label=_lit(group))
            for u, patch in zip(units, bars):
                patch.set_gid(f"{metric}-{slug(group)}-{slug(u)}")
            for x, h, l, hh, u in zip(xs, heights, lows, highs, units):
                if np.isfinite(l) and np.isfinite(hh):
                    whisker = ax.errorbar([x], [h], yerr=[[max(h - l, 0.0)], [max(hh - h, 0.0)]], fmt="none",
                                          ecolor=INK, elinewidth=1.0, capsize=3, zorder=3)
                    whisker.lines[2][0].set_gid(f"{metric}-{slug(group)}-{slug(u)}-ci")
        ax.set_xticks(range(len(units)), [_lit(u) for u in units])
        ax.set_title(titles[metric], loc="left", fontsize=9)
        ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
        ax.margins(y=0.15)
    axes[0].legend(loc="upper right")
    return fig


# --------------------------------------------------------------------------------------------
# Ablation: per-pair drop against the threshold


@_styled
def ablation_drops(frame: pd.DataFrame, *, threshold: float | None, means: dict[str, float] | None = None) -> Figure:
    """Per-pair logit-difference drop, pairs sorted within class, and the threshold. ``means`` maps a pair
    class to its mean drop as the ledger gives it; each is drawn as a line across its class, labelled."""
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
        mean = (means or {}).get(cls)
        if len(rows) and mean is not None and np.isfinite(mean):
            line, = ax.plot([xs[0] - 0.5, xs[-1] + 0.5], [mean, mean], color=colours[cls], lw=2.0, zorder=4)
            line.set_gid(f"mean-{slug(cls)}")
            ax.annotate(f"mean {_fmt(mean)}", (xs[-1] + 0.5, mean), xytext=(3, 3), textcoords="offset points",
                        fontsize=8, color=colours[cls], fontweight="bold")
        start += len(rows) + 3
    ax.set_xlim(-2, start + 6)
    ax.axhline(0.0, color="#8c959f", lw=0.8, zorder=1)
    if threshold is not None and np.isfinite(threshold):
        line = ax.axhline(threshold, color=TARGET, lw=1.5, ls="--", zorder=2)
        line.set_gid("threshold")
        ax.annotate(f"threshold {_fmt(threshold)} logits (on the mean drop)", (1.0, threshold),
                    xycoords=("axes fraction", "data"), xytext=(-4, 4), textcoords="offset points",
                    ha="right", fontsize=8, color=TARGET)
    ax.set_xticks([])
    ax.set_xlabel("contrastive pairs, sorted by drop within class")
    ax.set_ylabel("margin drop under ablation (logits)")
    ax.grid(axis="y", color="#eaeef2", lw=0.8, zorder=0)
    ax.legend(loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------
# Source tracing: restored fraction per source layer x position


def _position_order(labels: Sequence[str]) -> list[str]:
    """Named positions and indices from the start first (as listed), then offsets from the end, furthest first."""
    labels = list(dict.fromkeys(str(x) for x in labels))
    ends = sorted((x for x in labels if re.fullmatch(r"-\d+", x)), key=int)
    return [x for x in labels if x not in ends] + ends


@_styled
def source_trace_heatmap(frame: pd.DataFrame) -> Figure:
    """Source layer x position heatmaps of the mean restored fraction, one panel per target (rows of
    ``tables/source_trace.parquet`` for one analysis), on a diverging scale centred at 0 that spans at
    least -1..1, each cell labelled with its mean and n; the claim's cell ringed."""
    positions = _position_order(frame["position"].astype(str))
    layers = sorted(int(x) for x in frame["layer"].unique())
    targets = sorted(frame["target"].astype(str).unique())
    finite = frame["mean"].astype(float).to_numpy()
    finite = finite[np.isfinite(finite)]
    bound = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#eaeef2")
    norm = Normalize(vmin=-bound, vmax=bound)
    panel = float(np.clip(1.2 + 0.7 * len(positions), 3.0, 8.0))
    fig = _new_figure(min(9.2, 1.2 + panel * len(targets)), float(np.clip(1.3 + 0.42 * len(layers), 2.4, 6.0)))
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    for ax, target in zip(axes, targets):
        part = frame[frame["target"].astype(str) == target]
        grid = np.full((len(layers), len(positions)), np.nan)
        for _, row in part.iterrows():
            grid[layers.index(int(row["layer"])), positions.index(str(row["position"]))] = float(row["mean"])
        image = ax.imshow(grid, aspect="auto", interpolation="none", cmap=cmap, norm=norm)
        image.set_gid(f"grid-{slug(target)}")
        if len(positions) * len(layers) <= 120:
            for _, row in part.iterrows():
                y, x = layers.index(int(row["layer"])), positions.index(str(row["position"]))
                value = float(row["mean"])
                text = "—" if not np.isfinite(value) else f"{value:.2f}"
                ax.text(x, y, f"{text}\nn={int(row['n_pairs'])}", ha="center", va="center", fontsize=7.5,
                        color="white" if np.isfinite(value) and abs(value) > 0.6 * bound else INK)
        for _, row in part[part["is_claim_cell"].astype(bool)].iterrows():
            y, x = layers.index(int(row["layer"])), positions.index(str(row["position"]))
            ring = ax.add_patch(Rectangle((x - 0.48, y - 0.48), 0.96, 0.96, fill=False, ec=TARGET, lw=2.2))
            ring.set_gid(f"claim-cell-{slug(target)}")
        ax.set_title(_lit(target))
        ax.set_xticks(range(len(positions)), [_lit(p, 16) for p in positions])
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_xlabel("patched position")
    axes[0].set_ylabel("source layer (its input)")
    bar = fig.colorbar(image, ax=list(axes), fraction=0.05, pad=0.02)
    bar.set_label(f"mean {_lit(frame['metric'].iloc[0]) if len(frame) else 'restored fraction'}")
    bar.outline.set_visible(False)
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
