"""The property report: ``report.json``, ``report.md``, ``report.html`` and PNG plots.

``report.json`` holds ``{"properties": [row, ...], "plots": [...], "config": {...}}``.
:func:`render_report` builds every file's bytes (the text from
:mod:`properties.report.summary`, :mod:`properties.report.markdown`, :mod:`properties.report.htmlpage`,
the figures from :mod:`properties.report.figures`); :func:`write_report` writes them.
Each row is one measured rate (see :func:`row`); rows are sorted by name, so
a serial run and a ``pytest -n 2`` run write the same ``properties`` section.
Every file is written atomically (temporary file, then rename), through
symbolic links (in the link target's directory: the link stays a link); a
rewritten file keeps its mode.  :func:`update_baseline` and
:func:`replace_report` hold a lock (:func:`lock`, the ``filelock`` package)
so that concurrent runs neither lose each other's baseline entries nor
break each other's report swap.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import filelock

from ..measure.keys import RateKey
from ..measure.stats import Rate, compare
from . import figures
from .htmlpage import html_page
from .markdown import VERDICT_LINKS, markdown
from .sections import row_key
from .summary import changes, format_rate, interval, summarize

__all__ = [
    "row", "write_report", "render_report", "replace_report", "write_partial_report", "partial_report_path",
    "read_baseline",
    "write_baseline", "update_baseline", "writable_problem", "format_table", "table_legend", "row_key", "BASELINE_KEYS",
    "MANIFEST", "lock", "LOCK_TIMEOUT", "verdict_lines", "TERMINAL_CHANGES",
]

#: seconds a run waits for another run's lock on the baseline or the report directory before giving up
LOCK_TIMEOUT = 600.0

#: what a baseline entry keeps of a row
BASELINE_KEYS = ("rate", "ci_low", "ci_high", "successes", "trials", "confidence", "interval")


def row(name: str, rate: Rate, description: str, baseline: Mapping | None, key: RateKey | None = None) -> dict:
    """One report row: the rate, its interval, the baseline entry, the gate's status and the key's fields
    (``"key"``: :meth:`RateKey.to_dict`, or None for a name recorded without a key)."""
    values = rate.to_dict()
    base = None if baseline is None else {field: baseline.get(field) for field in ("rate", "ci_low", "ci_high")}
    return {"name": name, "description": description, **values, "baseline": base, "status": compare(values, baseline),
            "key": None if key is None else key.to_dict()}


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask."""
    return 0o666 & ~_umask()


def _target(path: Path) -> Path:
    """Where writing ``path`` really goes: the end of its chain of symbolic links (also a dangling one's target)."""
    return Path(os.path.realpath(path))


def lock(path: Path) -> filelock.FileLock:
    """The lock of ``path`` (a baseline file or a report directory): ``.NAME.lock`` beside the link's target.

    Acquiring it waits up to :data:`LOCK_TIMEOUT` seconds for another run,
    then raises ``filelock.Timeout`` (a ``TimeoutError``, so an ``OSError``).
    """
    target = _target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(target.parent / f".{target.name}.lock"), timeout=LOCK_TIMEOUT)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename.

    A reader (or an interrupted run) sees the old file or the new one, never
    a mixture.  A symbolic link is written through: the temporary file lies
    in the target's directory and replaces the target.  A new file gets the
    umask's permissions (not mkstemp's 0600); a rewritten one keeps its mode.
    """
    path = _target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = _file_mode()
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())  # a full disk shows up here, before the old file is replaced
            os.fchmod(stream.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _dumps(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


#: tolerance of ``ci_low <= rate <= ci_high`` in a baseline entry (JSON round trip of floats)
_BOUND_TOLERANCE = 1e-12


def _entry_problem(entry: object) -> str | None:
    """What is wrong with one baseline entry (a field and why), or None."""
    if not isinstance(entry, dict):
        return f"must be an object with the fields {', '.join(BASELINE_KEYS)}, got {type(entry).__name__}"
    for key in BASELINE_KEYS:
        if key not in entry:
            return f"field {key!r} is missing"
    for key in ("successes", "trials"):
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"field {key!r} must be a non-negative integer, got {value!r}"
    if entry["successes"] > entry["trials"]:
        return f"field 'successes' ({entry['successes']}) exceeds 'trials' ({entry['trials']})"
    confidence = entry["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        return f"field 'confidence' must be a number in (0, 1), got {confidence!r}"
    if not isinstance(entry["interval"], str):
        return f"field 'interval' must be a string, got {entry['interval']!r}"
    if "test" in entry and not isinstance(entry["test"], str):
        return f"field 'test' must be a string (the test that records it), got {entry['test']!r}"
    bounds = {key: entry[key] for key in ("rate", "ci_low", "ci_high")}
    if all(value is None for value in bounds.values()):
        return None if entry["trials"] == 0 else ("fields 'rate', 'ci_low', 'ci_high' are "
                                                  "null (no data) but 'trials' is not 0")
    for key, value in bounds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"field {key!r} must be a number in [0, 1], got {value!r}"
        if math.isnan(value) or not 0 <= value <= 1:
            return f"field {key!r} must be a number in [0, 1], got {value!r}"
    if bounds["ci_low"] > bounds["ci_high"]:
        return f"fields 'ci_low' ({bounds['ci_low']!r}) > 'ci_high' ({bounds['ci_high']!r})"
    if not bounds["ci_low"] - _BOUND_TOLERANCE <= bounds["rate"] <= bounds["ci_high"] + _BOUND_TOLERANCE:
        return (f"field 'rate' ({bounds['rate']!r}) lies outside ['ci_low', "
                f"'ci_high'] = [{bounds['ci_low']!r}, {bounds['ci_high']!r}]")
    return None


def read_baseline(path: Path, *, missing_ok: bool = False) -> dict[str, dict]:
    """The baseline's entries by name, each checked.

    Parameters
    ----------
    path : Path
        The baseline file, ``{"properties": {name: entry}}``.
    missing_ok : bool
        Whether an absent file is an empty baseline (``--update-baseline``
        creates it); otherwise it is an error.

    Raises
    ------
    ValueError
        The file is missing (unless ``missing_ok``), a directory, not JSON,
        not shaped as above, or an entry is invalid: a missing field, a wrong
        type, a rate or bound outside [0, 1] or NaN, ``ci_low > ci_high``, or
        a rate outside its interval.  The message names the path, the entry
        and the field.
    """
    path = Path(path)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as error:  # e.g. a name too long for the file system
        raise ValueError(f"baseline {path} cannot be read: {error.strerror} (errno {error.errno})") from None
    if is_dir:
        raise ValueError(f"baseline {path} is a directory, not a baseline file")
    if not exists:
        if missing_ok:
            return {}
        raise ValueError(f"baseline {path} does not exist (a typo? --update-baseline (dtd-properties check) or "
                         "--property-update-baseline (pytest) creates it)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"baseline {path} is not valid JSON: {error}") from None
    except OSError as error:
        raise ValueError(f"baseline {path} cannot be read: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("properties"), dict):
        raise ValueError(f"baseline {path} must hold {{'properties': {{name: entry}}}}")
    for name, entry in data["properties"].items():
        problem = _entry_problem(entry)
        if problem is not None:
            raise ValueError(f"baseline {path}: entry {name!r}: {problem}")
    return data["properties"]


def writable_problem(path: Path, *, directory: bool) -> str | None:
    """Why ``path`` (a directory to replace, or a file) cannot be written, or None.

    Nothing is created: the nearest existing ancestor must be a directory the
    process may write into, and ``path`` itself, if it exists, must be of the
    expected kind (and writable, for a directory; not immutable or on a
    read-only file system, for a file).  A symbolic link is judged by its
    target (where the write goes); a path the file system cannot hold (a
    name too long) is a problem naming the error.
    """
    given = Path(path)
    try:
        return _writable_problem(_target(given), given, directory)
    except OSError as error:
        return f"{given}: {error.strerror} (errno {error.errno})"


def _writable_problem(path: Path, given: Path, directory: bool) -> str | None:
    if path != given.absolute() and given.is_symlink():
        shown = f"{given} (a link to {path})"
    else:
        shown = str(given)
    if not directory and path.is_file():
        try:
            os.close(os.open(path, os.O_WRONLY))
        except PermissionError as error:
            if error.errno == errno.EPERM:  # EACCES is only the mode: the file is replaced, and keeps its mode
                return (f"{shown} cannot be replaced: {error.strerror} (errno "
                        f"{error.errno}; an immutable file? chattr -i)")
        except OSError as error:
            if error.errno == errno.EROFS:
                return f"{shown} lies on a read-only file system"
    if path.exists():
        if directory and not path.is_dir():
            return f"{path} exists and is not a directory"
        if not directory and path.is_dir():
            return f"{path} is a directory"
        if directory and not os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            return f"directory {path} is not writable"
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{path} lies under {ancestor}, which is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"{path} cannot be created: directory {ancestor} is not writable"
    return None


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


def update_baseline(path: Path, rows: Iterable[Mapping], owners: Mapping[str, str]) -> None:
    """Merge ``rows`` into the baseline at ``path`` under its :func:`lock`: read, merge (:func:`write_baseline`), write.

    Two runs updating one baseline at once each keep the other's entries.
    Raises ``ValueError`` when the file on disk is no valid baseline (the
    start-up check read it before), ``OSError`` when it cannot be written.
    """
    with lock(path):
        write_baseline(path, rows, owners, read_baseline(path, missing_ok=True))


def _percent(value: float | None) -> str:
    """The terminal table's compact ``"42.16%"`` (fixed-width columns)."""
    return "—" if value is None else f"{100 * value:.2f}%"


def format_table(rows: Iterable[Mapping]) -> list[str]:
    """Fixed-width text lines: name, rate, interval, trials, baseline, status."""
    rows = list(rows)
    width = max([len(r["name"]) for r in rows] + [4])
    lines = [f"{'name':<{width}}  {'rate':>8}  {'interval':>18}  {'trials':>9}  {'baseline':>8}  status"]
    for r in rows:
        base = r["baseline"]
        lines.append(
            f"{r['name']:<{width}}  {_percent(r['rate']):>8}  {interval(r['ci_low'], r['ci_high']):>18}  "
            f"{r['trials']:>9}  {_percent(base['rate'] if base else None):>8}  {r['status']}"
        )
    return lines


def table_legend(confidence: float | None = None) -> str:
    """One line explaining the columns of :func:`format_table`."""
    level = "" if confidence is None else f"{100 * confidence:g} % "
    return (f"rate: share of trials that satisfy the property; interval: its {level}confidence "
            "interval in %; trials: roots or points counted; baseline: the rate in the baseline "
            "file; status: ok | regression (intervals do not overlap) | below_floor (a must-hold "
            "property below 100 % or a rate below a --require floor) | new (no baseline entry)")


#: how many moved rows the terminal's verdict lists
TERMINAL_CHANGES = 3


def verdict_lines(rows: Iterable[Mapping], written_to: str | None = None) -> list[str]:
    """The terminal summary's first lines: the gate's verdict, the offending rows, the rows that moved most."""
    rows = list(rows)
    gate = summarize(rows).gate
    where = "" if written_to is None else f" (see {written_to})"
    lines = [gate.verdict + where]
    by_name = {r["name"]: r for r in rows}
    for status, names in gate.failing.items():
        lines.append(
            f"  {status}: "
            + ", ".join(names[:VERDICT_LINKS])
            + (f" and {len(names) - VERDICT_LINKS} more" if len(names) > VERDICT_LINKS else "")
        )
        if status == "below_floor":  # which floor each row failed, with its rate
            lines += [f"    {name}: {format_rate(by_name[name])} of {by_name[name]['trials']} trials -- "
                      + "; ".join(by_name[name].get("floor") or ["below a floor"]) for name in names[:VERDICT_LINKS]]
    moved = changes(rows, TERMINAL_CHANGES)
    if moved:
        lines.append("  moved most against the baseline:")
        lines += [f"    {r['name']}: {format_rate(r)}, baseline {format_rate(r['baseline'])} ({r['status']})"
                  for r in moved]
    return lines


def render_report(rows: list[Mapping], plots: list[Mapping], config: Mapping) -> dict[str, bytes]:
    """Every file of the report by name: ``report.json``, ``report.md``, ``report.html`` and the PNGs.

    ``plots`` are the recorded plot specs; the rule comparison and the
    layers x rules figure are added from the rows (:func:`properties.report.figures.derived_plots`).
    A ``bars`` plot whose rates are all 0 % or all 100 % becomes a sentence
    (its ``report.json`` entry has ``"file": None`` and ``"text"``).
    """
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
    summary = summarize(rows, confidence, config)
    files["report.json"] = _dumps({"properties": rows, "plots": entries, "config": dict(config)})
    files["report.md"] = markdown(rows, entries, config, summary).encode()
    files["report.html"] = html_page(rows, entries, files, config, summary).encode()
    return files


def write_report(directory: Path, rows: list[Mapping], plots: list[Mapping], config: Mapping) -> None:
    """Write ``report.json``, ``report.md``, ``report.html`` and every plot under
    ``directory`` (see :func:`render_report`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in render_report(rows, plots, config).items():
        _atomic_write(directory / name, data)


#: a hidden file in the report directory naming the files the report wrote, so
#: that the next report replaces exactly those and never a file of the user's
MANIFEST = ".property-report-files.json"


def _dir_mode() -> int:
    """The mode ``mkdir`` gives a new directory under the current umask (mkdtemp gives 0700)."""
    return 0o777 & ~_umask()


def _owned(directory: Path) -> set[str]:
    """Names of the files a previous report wrote into ``directory``."""
    try:
        names = json.loads((directory / MANIFEST).read_text())["files"]
        return {name for name in names if isinstance(name, str) and "/" not in name} | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:  # a report written before the manifest existed: report.json names its plots
        plots = json.loads((directory / "report.json").read_text()).get("plots", [])
        files = {p["file"] for p in plots
                 if isinstance(p, dict) and isinstance(p.get("file"), str) and "/" not in p["file"]}
        return {"report.json", "report.md"} | files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def partial_report_path(directory: Path) -> Path:
    """Where a partial (interrupted) run's report goes: ``DIR.partial.json`` beside ``DIR``."""
    directory = Path(directory)
    return directory.with_name(directory.name + ".partial.json")


def replace_report(directory: Path, rows: list[Mapping], plots: list[Mapping], config: Mapping) -> None:
    """Write a complete report as ``directory``, replacing the previous report as a whole.

    The report is rendered by :func:`write_report` into a temporary sibling
    directory first, so a failure or an interruption while rendering leaves
    the previous report as it was.  Then the new directory is swapped in
    (two renames), or, when the old directory holds files the report did not
    write, the new files are moved in one by one and the previous report's
    own files that the new one lacks (stale plots) are removed.  Files get
    the umask's permissions.  A partial report of an earlier interrupted run
    (:func:`partial_report_path`) is removed: this report supersedes it.
    """
    with lock(directory):
        _replace_report(_target(Path(directory)), rows, plots, config)
    partial = partial_report_path(directory)
    try:
        if json.loads(partial.read_text()).get("partial") is True:
            partial.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _replace_report(directory: Path, rows: list[Mapping], plots: list[Mapping], config: Mapping) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        write_report(staging, rows, plots, config)
        written = sorted(entry.name for entry in staging.iterdir() if entry.name != MANIFEST)
        _atomic_write(staging / MANIFEST, _dumps({"files": written}))
        for entry in staging.iterdir():
            os.chmod(entry, _file_mode() if entry.is_file() else _dir_mode())
        os.chmod(staging, _dir_mode())
        owned = _owned(directory) if directory.is_dir() else set()
        if not directory.exists() and not directory.is_symlink():
            os.rename(staging, directory)
        elif not directory.is_symlink() and all(entry.name in owned for entry in directory.iterdir()):
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
            os.rename(directory, old)  # onto the empty directory mkdtemp made
            try:
                os.rename(staging, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:  # the user keeps other files here: replace ours one by one
            for name in written:
                os.replace(staging / name, directory / name)
            os.replace(staging / MANIFEST, directory / MANIFEST)
            for name in sorted(owned - set(written) - {MANIFEST}):
                stale = directory / name
                if stale.is_file() and not stale.is_symlink():
                    stale.unlink()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_partial_report(directory: Path, rows: list[Mapping], config: Mapping, reason: str) -> Path:
    """Write an interrupted run's rows to :func:`partial_report_path` (``{"partial": true, ...}``).

    ``directory`` (the complete report) is not touched.  Returns the path written.
    """
    path = partial_report_path(directory)
    rows = sorted(rows, key=lambda r: r["name"])
    _atomic_write(path, _dumps({"partial": True, "reason": reason, "properties": rows, "config": dict(config)}))
    return path
