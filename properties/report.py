"""The property report: ``report.json``, ``report.md``, ``report.html`` and PNG plots.

``report.json`` holds ``{"properties": [row, ...], "plots": [...], "config": {...}}``.
:func:`render_report` builds every file's bytes (the text from
:mod:`properties.summary`, :mod:`properties.markdown`, :mod:`properties.htmlpage`,
the figures from :mod:`properties.figures`); :func:`write_report` writes them.
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
from .sections import row_key
from .stats import Rate, compare

__all__ = ["row", "write_report", "render_report", "read_baseline", "write_baseline", "format_table", "table_legend", "row_key", "BASELINE_KEYS"]

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


def table_legend(confidence: Optional[float] = None) -> str:
    """One line explaining the columns of :func:`format_table`."""
    level = "" if confidence is None else f"{100 * confidence:g} % "
    return (f"rate: share of trials that satisfy the property; interval: its {level}confidence interval in %; trials: roots or "
            "points counted; baseline: the rate in the baseline file; status: ok | regression (intervals do not overlap) | new (no baseline entry)")


def render_report(rows: list[Mapping], plots: list[Mapping], config: Mapping) -> dict[str, bytes]:
    """Every file of the report by name: ``report.json``, ``report.md``, ``report.html`` and the PNGs.

    ``plots`` are the recorded plot specs; the rule comparison and the
    layers x rules figure are added from the rows (:func:`properties.figures.derived_plots`).
    A ``bars`` plot whose rates are all 0 % or all 100 % becomes a sentence
    (its ``report.json`` entry has ``"file": None`` and ``"text"``).
    """
    from . import figures
    from .htmlpage import html_page
    from .markdown import markdown
    from .summary import summarize

    rows = sorted(rows, key=lambda r: r["name"])
    confidence = config.get("confidence")
    by_name = {r["name"]: r for r in rows}
    specs = figures.derived_plots(rows) + sorted(plots, key=lambda p: p["file"])
    files: dict[str, bytes] = {}
    entries = []
    for plot in specs:
        entry = {"file": plot["file"], "title": plot["title"], "caption": figures.caption(plot, confidence)}
        sentence = figures.constant_sentence(plot, by_name, confidence)
        if sentence is None:
            files[plot["file"]] = figures.render(plot, by_name, confidence)
        else:  # the sentence states the rates' interval; the caption keeps only what the chart would have shown
            entry.update(file=None, text=sentence, caption=plot.get("caption", ""))
        entries.append(entry)
    summary = summarize(rows, confidence)
    files["report.json"] = _dumps({"properties": rows, "plots": entries, "config": dict(config)})
    files["report.md"] = markdown(rows, entries, config, summary).encode()
    files["report.html"] = html_page(rows, entries, files, config, summary).encode()
    return files


def write_report(directory: Path, rows: list[Mapping], plots: list[Mapping], config: Mapping) -> None:
    """Write ``report.json``, ``report.md``, ``report.html`` and every plot under ``directory`` (see :func:`render_report`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in render_report(rows, plots, config).items():
        _atomic_write(directory / name, data)
