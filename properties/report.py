"""The property report: ``report.json``, ``report.md`` and PNG plots.

``report.json`` holds ``{"properties": [row, ...], "plots": [...], "config": {...}}``.
Each row is one measured rate (see :func:`row`); rows are sorted by name, so
a serial run and a ``pytest -n 2`` run write the same ``properties`` section.
Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional

from .keys import RateKey
from .stats import Rate, compare

__all__ = ["row", "write_report", "read_baseline", "write_baseline", "format_table", "BASELINE_KEYS"]

#: what a baseline entry keeps of a row
BASELINE_KEYS = ("rate", "ci_low", "ci_high", "successes", "trials", "confidence", "interval")


def row(name: str, rate: Rate, description: str, baseline: Optional[Mapping], key: Optional[RateKey] = None) -> dict:
    """One report row: the rate, its interval, the baseline entry, the gate's status and the key's fields
    (``"key"``: :meth:`RateKey.to_dict`, or None for a name recorded without a key)."""
    values = rate.to_dict()
    base = None if baseline is None else {field: baseline.get(field) for field in ("rate", "ci_low", "ci_high")}
    return {"name": name, "description": description, **values, "baseline": base, "status": compare(values, baseline),
            "key": None if key is None else key.to_dict()}


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _dumps(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def read_baseline(path: Path) -> dict[str, dict]:
    """The baseline's entries by name; an absent file is an empty baseline."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"baseline {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
        raise ValueError(f"baseline {path} must hold {{'properties': {{name: entry}}}}")
    return data["properties"]


def write_baseline(path: Path, rows: Iterable[Mapping], owners: Mapping[str, str], keep: Mapping[str, Mapping]) -> None:
    """Rewrite the baseline with ``rows``, each entry naming the test that recorded it (``owners``).

    Entries of ``keep`` (the old baseline) survive only when their test did
    not run in this session: a test that ran replaces all of its entries, so
    rates it no longer records disappear.
    """
    ran = set(owners.values())
    entries = {name: entry for name, entry in keep.items() if entry.get("test") not in ran}
    for r in rows:
        entries[r["name"]] = {**{key: r[key] for key in BASELINE_KEYS}, "test": owners[r["name"]]}
    _atomic_write(Path(path), _dumps({"properties": dict(sorted(entries.items()))}))


def _percent(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _interval(low: Optional[float], high: Optional[float]) -> str:
    return "—" if low is None else f"[{100 * low:.2f}, {100 * high:.2f}]"


def format_table(rows: Iterable[Mapping]) -> list[str]:
    """Fixed-width text lines: name, rate, interval, trials, baseline, status."""
    rows = list(rows)
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'name':<{width}}  {'rate':>8}  {'interval':>18}  {'trials':>9}  {'baseline':>8}  status"]
    for r in rows:
        base = r["baseline"]
        lines.append(
            f"{r['name']:<{width}}  {_percent(r['rate']):>8}  {_interval(r['ci_low'], r['ci_high']):>18}  "
            f"{r['trials']:>9}  {_percent(base['rate'] if base else None):>8}  {r['status']}"
        )
    return lines


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(rows: list[Mapping]) -> list[tuple[str, list[Mapping]]]:
    """Rows grouped by the first part of their name; the notebook's first, breakdowns last."""
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        head, _, rest = r["name"].partition(".")
        detail = rest.split(".")[0]
        if detail.startswith("layer"):
            key = f"{head}: per layer"
        elif detail.startswith("neuron"):
            key = f"{head}: per hidden neuron"
        else:
            key = head
        groups.setdefault(key, []).append(r)

    def order(key: str) -> tuple:
        return (not key.startswith("notebook"), ":" in key, key)

    return [(key, groups[key]) for key in sorted(groups, key=order)]


def _markdown(rows: list[Mapping], plots: list[Mapping], config: Mapping) -> str:
    confidence = config.get("confidence")
    out = [
        "# DTD property report",
        "",
        f"Rates with {100 * confidence:g}% intervals. `wilson`: Wilson score interval (independent trials). "
        "`wilson-clustered`: Wilson interval on the effective sample size trials / design effect, the design "
        "effect from the cluster-robust variance over the clusters (generated networks, or the points of one "
        "network). Status `regression`: the interval and the baseline's do not overlap; `new`: no baseline entry.",
        "",
        "| config | value |",
        "|---|---|",
    ]
    out += [f"| {key} | {value} |" for key, value in sorted(config.items())]
    for title, members in _sections(rows):
        out += ["", f"## {title}", "", "| name | rate | interval | successes / trials | interval method | baseline | status | counts |",
                "|---|---|---|---|---|---|---|---|"]
        for r in members:
            base = r["baseline"]
            method = r["interval"] + (f" ({r['clusters']} clusters, deff {r['design_effect']:.2f})" if r["clusters"] else "")
            out.append(
                f"| `{r['name']}` | {_percent(r['rate'])} | {_interval(r['ci_low'], r['ci_high'])} | "
                f"{r['successes']} / {r['trials']} | {method} | {_percent(base['rate'] if base else None)} "
                f"{_interval(base['ci_low'], base['ci_high']) if base else ''} | {r['status']} | {_cell(r['description'])} |"
            )
    if plots:
        out += ["", "## Plots", ""]
        for plot in plots:
            out += [f"### {plot['title']}", "", plot.get("caption", ""), "", f"![{plot['title']}]({plot['file']})", ""]
    return "\n".join(out) + "\n"


def _render_plot(directory: Path, plot: Mapping, rows_by_name: Mapping[str, Mapping]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if plot["kind"] == "histogram":
            import numpy as np

            every = [v for values in plot["series"].values() for v in values]
            edges = np.histogram_bin_edges(every, bins=plot.get("bins", 30)) if every else plot.get("bins", 30)
            for label, values in plot["series"].items():
                ax.hist(values, bins=edges, alpha=0.6, density=True, label=f"{label} (n={len(values)})")
            ax.set_ylabel("density (each series integrates to 1)")
            ax.legend()
        elif plot["kind"] == "bars":
            names = [n for n in plot["rows"] if n in rows_by_name]
            labels = [plot["labels"][plot["rows"].index(n)] for n in names]
            rates = [100 * (rows_by_name[n]["rate"] or 0.0) for n in names]
            lows = [100 * (rows_by_name[n]["ci_low"] or 0.0) for n in names]
            highs = [100 * (rows_by_name[n]["ci_high"] or 0.0) for n in names]
            errors = [[max(0.0, r - lo) for r, lo in zip(rates, lows)], [max(0.0, hi - r) for r, hi in zip(rates, highs)]]
            ax.bar(range(len(names)), rates, yerr=errors, capsize=3, color="tab:blue")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(labels, rotation=45 if len(names) > 8 else 0, ha="right" if len(names) > 8 else "center")
            ax.set_ylim(0, 105)
            ax.set_ylabel("rate (%) with interval")
        elif plot["kind"] == "image_grid":
            ax = _image_grid(fig, plot)
        else:
            raise ValueError(f"unknown plot kind {plot['kind']!r}")
        ax.set_title(plot["title"])
        ax.set_xlabel(plot.get("xlabel", ""))
        fig.tight_layout()
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=".plot.", suffix=".png")
        os.close(handle)
        fig.savefig(tmp)
        os.replace(tmp, directory / plot["file"])
    finally:
        plt.close(fig)


def _image_grid(fig, plot: Mapping):
    """Rows of images (inputs in grey, relevance-like columns on a symmetric red-blue scale), the title above them."""
    import numpy as np

    rows, columns = plot["rows"], plot["columns"]
    fig.clf()
    fig.set_size_inches(1.9 * len(columns) + 0.6, 1.7 * max(1, len(rows)) + 0.6)
    axes = np.array(fig.subplots(max(1, len(rows)), len(columns), squeeze=False))
    for r, entry in enumerate(rows):
        for c, image in enumerate(entry["images"]):
            values = np.asarray(image, dtype=float)
            axis = axes[r, c]
            if c == 0:
                axis.imshow(values, cmap="gray_r")
                axis.set_ylabel(entry["label"], fontsize=7)
            else:
                limit = float(np.abs(values).max()) or 1.0
                axis.imshow(values, cmap="bwr", vmin=-limit, vmax=limit)
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(columns[c], fontsize=8)
    fig.suptitle(plot["title"], fontsize=9)
    return _Untitled()


class _Untitled:
    """Stands in for the single axes of the other plot kinds: a grid's title is the figure's own."""

    def set_title(self, *args, **kwargs):
        pass

    def set_xlabel(self, *args, **kwargs):
        pass


def write_report(directory: Path, rows: list[Mapping], plots: list[Mapping], config: Mapping) -> None:
    """Write ``report.json``, ``report.md`` and every plot under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["name"])
    plots = sorted(plots, key=lambda p: p["file"])
    by_name = {r["name"]: r for r in rows}
    for plot in plots:
        _render_plot(directory, plot, by_name)
    summary = [{key: p[key] for key in ("file", "title", "caption") if key in p} for p in plots]
    _atomic_write(directory / "report.json", _dumps({"properties": rows, "plots": summary, "config": dict(config)}))
    _atomic_write(directory / "report.md", _markdown(rows, summary, config).encode())
