"""The report's figures: recorded plots and the figures built from the rows, rendered to deterministic PNGs.

Two figures are drawn from the rows' keys, whatever tests recorded them:
the rule comparison (:func:`derived_plots`: every rule side by side, one
bar per question, with intervals) and the layers x rules heat map of the
gradient match.  Recorded ``bars`` plots whose rates are all 0 % or all
100 % become a sentence instead of an empty chart; histograms show counts
on a log scale so their tails stay visible.  Every caption states the
confidence level.  :func:`render` returns PNG bytes that depend only on the
data (no timestamps or version strings in the file).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .sections import natural_key, row_key
from .summary import GLANCE_COLUMNS

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["derived_plots", "render", "caption", "constant_sentence", "RULES_FIGURE", "LAYERS_FIGURE"]

RULES_FIGURE = "rules_comparison.png"
LAYERS_FIGURE = "layers_by_rule_gradient_match.png"

#: the questions of the rule comparison (the first columns of the rules-at-a-glance table)
_COMPARED = ("zero output", "gradient match", "region match", "in-region root exists")


def _keyed(rows: list[Mapping]) -> list:
    return [(k, r) for k, r in ((row_key(r), r) for r in rows) if k is not None]


def _overall(keyed: list, fields: Mapping) -> str | None:
    """Name of the row whose key has ``fields`` and no layer, neuron, finder or unit (None if absent)."""
    for k, r in keyed:
        if (
            all(getattr(k, f) == v for f, v in fields.items())
            and k.layer is None
            and k.neuron is None
            and k.finder is None
            and k.unit is None
        ):
            return r["name"]
    return None


def derived_plots(rows: list[Mapping]) -> list[dict]:
    """Plot specs built from the rows: the rule comparison and the layers x rules figure (each only if it has data)."""
    keyed = _keyed(rows)
    out = []
    rules = sorted({k.rule for k, _ in keyed if k.family in ("generated", "region") and k.rule is not None},
                   key=natural_key)
    series = {}
    for title in _COMPARED:
        names = [_overall(keyed, GLANCE_COLUMNS[title](rule)) for rule in rules]
        if any(names):
            series[title] = names
    if rules and series:
        out.append({
            "file": RULES_FIGURE, "kind": "grouped_bars", "title": "Rules side by side over generated networks",
            "groups": rules, "series": series, "xlabel": "rule",
            "caption": "Each bar: the share of valid roots of neurons carrying relevance (R_j "
                       "!= 0) that satisfy the question, over all layers of the generated "
                       "networks; in-region root exists: exact LP over the region's closure.",
        })
    layer_rows = [(k, r) for k, r in keyed if k.family == "generated" and k.layer is not None
                  and k.outcome == "gradient_match"
                  and k.unit is None and k.subset is None]
    if layer_rows:
        layer_rules = sorted({k.rule for k, _ in layer_rows}, key=natural_key)
        layers = sorted({k.layer for k, _ in layer_rows})
        cells = {(k.rule, k.layer): r["name"] for k, r in layer_rows}
        out.append({
            "file": LAYERS_FIGURE, "kind": "heatmap", "title": "Gradient match per layer and rule, generated networks",
            "rows": layer_rules, "columns": layers,
            "cells": [[cells.get((rule, k)) for k in layers] for rule in layer_rules],
            "xlabel": "layer k (roots judged with f_k)", "ylabel": "rule",
            "caption": "Each cell: the share of valid roots of layer k (trivial roots "
                       "included) whose gradient of f_k equals the input's, with its interval "
                       "below; blank: no network of the sample has that layer for that rule.",
        })
    return out


def caption(plot: Mapping, confidence: float | None) -> str:
    """The plot's caption, ending with the confidence level of its intervals (or that it has none)."""
    level = "the run's" if confidence is None else f"{100 * confidence:g} %"
    text = plot.get("caption", "").strip()
    if plot["kind"] == "histogram":
        note = ("Counts on a log scale (tails visible); raw values of this "
                f"run, no interval (the rates carry {level} intervals).")
    elif plot["kind"] == "image_grid":
        note = f"Single explained points, no interval (the rates carry {level} intervals)."
    elif plot["kind"] == "lines":
        note = f"Bands: {level} confidence intervals (their method in the caption)."
    else:
        note = f"Error bars and brackets: {level} confidence intervals (Wilson; clustered where the rate is)."
    return f"{text} {note}".strip()


def _bar_rows(plot: Mapping, by_name: Mapping[str, Mapping]) -> list[tuple[str, Mapping]]:
    return [(label, by_name[name]) for name, label in zip(plot["rows"], plot["labels"], strict=True) if name in by_name]


def constant_sentence(plot: Mapping, by_name: Mapping[str, Mapping], confidence: float | None) -> str | None:
    """For a ``bars`` plot whose rates are all 0 % or all 100 %: the sentence
    that replaces the empty chart; else None."""
    if plot["kind"] != "bars":
        return None
    pairs = _bar_rows(plot, by_name)
    rates = {r["rate"] for _, r in pairs}
    if not pairs or len(rates) != 1 or rates.pop() not in (0.0, 1.0):
        return None
    value = pairs[0][1]["rate"]
    level = "" if confidence is None else f"{100 * confidence:g} % "
    if value == 0.0:
        bound = max(r["ci_high"] for _, r in pairs)
        tail = f"every {level}interval ends at or below {100 * bound:.2f} %"
    else:
        bound = min(r["ci_low"] for _, r in pairs)
        tail = f"every {level}interval starts at or above {100 * bound:.2f} %"
    return (f"No chart: all {len(pairs)} rates ({pairs[0][0]} to {pairs[-1][0]}) are {100 * value:.0f} % "
            f"({sum(r['trials'] for _, r in pairs)} trials in all; {tail}).")


def _interval_errors(rows: list[Mapping | None]) -> tuple[list[float], list[list[float]]]:
    rates = [100 * (r["rate"] or 0.0) if r else 0.0 for r in rows]
    low = [max(0.0, rate - 100 * (r["ci_low"] or 0.0)) if r else 0.0 for rate, r in zip(rates, rows, strict=True)]
    high = [max(0.0, 100 * (r["ci_high"] or 0.0) - rate) if r else 0.0 for rate, r in zip(rates, rows, strict=True)]
    return rates, [low, high]


def render(plot: Mapping, by_name: Mapping[str, Mapping], confidence: float | None) -> bytes:
    """The plot as PNG bytes (identical bytes for identical data)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    level = "" if confidence is None else f" ({100 * confidence:g} % interval)"
    with matplotlib.rc_context({"font.size": 9}):
        if plot["kind"] == "heatmap":
            fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(plot["columns"]), 0.9 + 0.55 * len(plot["rows"])), dpi=100)
        elif plot["kind"] == "grouped_bars":
            fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(plot["groups"])), 4.2), dpi=100)
        else:
            fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        try:
            labelled: Axes | _Untitled = ax  # what the title and the x label go on
            if plot["kind"] == "histogram":
                every = [v for values in plot["series"].values() for v in values]
                bins = plot.get("bins", 30)
                edges = np.histogram_bin_edges(every, bins=bins).tolist() if every else bins
                for label, values in plot["series"].items():
                    ax.hist(values, bins=edges, alpha=0.55, label=f"{label} (n={len(values)})")
                ax.set_yscale("log")
                ax.set_ylabel("count (log scale)")
                ax.legend(fontsize=8)
            elif plot["kind"] == "bars":
                pairs = _bar_rows(plot, by_name)
                rates, errors = _interval_errors([r for _, r in pairs])
                ax.bar(range(len(pairs)), rates, yerr=errors, capsize=3, color="tab:blue")
                ax.set_xticks(range(len(pairs)))
                tilt = len(pairs) > 8
                ax.set_xticklabels([label for label, _ in pairs], rotation=45 if tilt else 0,
                                   ha="right" if tilt else "center")
                ax.set_ylim(0, 105)
                ax.set_ylabel(f"rate (%){level}")
            elif plot["kind"] == "grouped_bars":
                groups, series = plot["groups"], plot["series"]
                width = 0.8 / max(1, len(series))
                for i, (label, names) in enumerate(series.items()):
                    rows = [by_name.get(n) if n else None for n in names]
                    rates, errors = _interval_errors(rows)
                    xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
                    present = [j for j, r in enumerate(rows) if r is not None]
                    ax.bar([xs[j] for j in present], [rates[j] for j in present], width=width * 0.95,
                           yerr=[[errors[0][j] for j in present], [errors[1][j] for j in present]], capsize=2,
                           label=label)
                ax.set_xticks(range(len(groups)))
                ax.set_xticklabels(groups)
                ax.set_ylim(0, 105)
                ax.set_ylabel(f"rate (%){level}")
                ax.legend(fontsize=8, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
            elif plot["kind"] == "heatmap":
                grid = np.full((len(plot["rows"]), len(plot["columns"])), np.nan)
                for i, names in enumerate(plot["cells"]):
                    for j, name in enumerate(names):
                        r = by_name.get(name) if name else None
                        if r is not None and r["rate"] is not None:
                            grid[i, j] = 100 * r["rate"]
                            colour = "white" if r["rate"] < 0.6 else "black"
                            ax.text(j, i, f"{100 * r['rate']:.1f}\n[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]",
                                    ha="center", va="center", fontsize=7, color=colour)
                image = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=100, cmap="viridis", aspect="auto")
                fig.colorbar(image, ax=ax, label=f"rate (%){level}")
                ax.set_xticks(range(len(plot["columns"])))
                ax.set_xticklabels([str(c) for c in plot["columns"]])
                ax.set_yticks(range(len(plot["rows"])))
                ax.set_yticklabels(plot["rows"])
                ax.set_ylabel(plot.get("ylabel", ""))
            elif plot["kind"] == "image_grid":
                labelled = _image_grid(fig, plot)
            elif plot["kind"] == "lines":
                labelled = _lines(fig, plot)
            else:
                raise ValueError(f"unknown plot kind {plot['kind']!r}")
            labelled.set_title(plot["title"])
            labelled.set_xlabel(plot.get("xlabel", ""))
            grid = plot["kind"] == "image_grid"
            # a grid's colour bars do not fit tight_layout (its file is cropped to its content instead); the lines'
            # panels lay themselves out around a legend below them
            if not grid and plot["kind"] != "lines":
                fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight" if grid else None)
            return buffer.getvalue()
        finally:
            plt.close(fig)


def _image_grid(fig: Figure, plot: Mapping) -> _Untitled:
    """Rows of images: the input in grey, then the relevance-like columns on one diverging scale per row.

    The scale is centred at 0 (white; red positive, blue negative) and shared
    by every relevance column of the row, so two rules' relevance of one point
    compare at a glance; a colour bar ends each row.
    """
    import numpy as np

    rows, columns = plot["rows"], plot["columns"]
    fig.clf()
    fig.set_size_inches(1.9 * len(columns) + 1.2, 1.7 * max(1, len(rows)) + 0.6)
    axes = np.array(fig.subplots(max(1, len(rows)), len(columns), squeeze=False))
    for r, entry in enumerate(rows):
        relevance = [np.asarray(image, dtype=float) for image in entry["images"][1:]]
        limit = max((float(np.abs(values).max()) for values in relevance), default=0.0) or 1.0
        shown = None
        for c, image in enumerate(entry["images"]):
            values = np.asarray(image, dtype=float)
            axis = axes[r, c]
            if c == 0:
                axis.imshow(values, cmap="gray_r")
                axis.set_ylabel(entry["label"], fontsize=7)
            else:
                shown = axis.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(columns[c], fontsize=8)
        if shown is not None:
            bar = fig.colorbar(shown, ax=list(axes[r, 1:]), fraction=0.05, pad=0.03)
            bar.ax.tick_params(labelsize=6)
    fig.suptitle(plot["title"], fontsize=9)
    return _Untitled()


def _lines(fig: Figure, plot: Mapping) -> _Untitled:
    """Panels side by side (two per row), one line per series with its interval as a band; the title above them."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    panels = plot["panels"]
    columns = min(2, max(1, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    fig.clf()
    fig.set_size_inches(5.2 * columns + 0.4, 3.4 * rows + 0.8)
    axes = np.array(fig.subplots(rows, columns, squeeze=False)).reshape(-1)
    colours: dict[str, str] = {}
    for axis, panel in zip(axes, panels, strict=False):  # an odd number of panels leaves a last axis: hidden below
        for label, line in panel["series"].items():
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            axis.plot(line["x"], line["y"], marker="o", markersize=3, label=label, color=colour)
            axis.fill_between(line["x"], line["low"], line["high"], alpha=0.18, color=colour, linewidth=0)
        axis.set_title(panel["title"], fontsize=8)
        axis.set_ylabel(panel.get("ylabel", ""))
        axis.set_xlabel(plot.get("xlabel", ""))
        if panel.get("ylim"):
            axis.set_ylim(*panel["ylim"])
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(plot["title"], fontsize=9)
    inches = fig.get_size_inches()[1]
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.95 / inches, top=1 - 0.55 / inches, hspace=0.5, wspace=0.22)
    return _Untitled()


class _Untitled:
    """Stands in for the single axes of the other plot kinds: a grid's title is the figure's own."""

    def set_title(self, *args: object, **kwargs: object) -> None:
        pass

    def set_xlabel(self, *args: object, **kwargs: object) -> None:
        pass
