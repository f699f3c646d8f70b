"""pytest plugin: the gate and the report of the DTD property suite.

This module is the heavy half of the plugin (it imports torch).  The options,
the ``properties`` marker and the ``property_report`` / ``property_report_seed``
fixtures live in the tiny entry-point module :mod:`dtd_properties_pytest`,
which registers this module only when a run uses the suite (see there); this
module loads that one (``pytest_plugins``), so ``-p properties.plugin`` or a
conftest's ``pytest_plugins = ["properties.plugin"]`` works with or without
the installed entry point and registers every option once.

The options are described once, by their help texts in
:mod:`dtd_properties_pytest` (``pytest --help``, group "DTD property suite").

The short spellings ``--update-baseline`` / ``--update-baseline-partial``
exist only in the suite's own runs: they are registered here when a run
loads this module itself (``-p properties.plugin``, ``pytest_plugins`` in a
conftest, the console script) and not when the entry point activates it
for a project that merely uses a fixture or a ``--property-*`` option, so
that project's own ``--update-baseline`` keeps working.

A test records rates with ``property_report.rate(name, Rate, description)``.
Each recorded rate is compared with the baseline at once; a rate whose
interval does not overlap the baseline's fails the test that recorded it
(after the test body ran, listing every such rate).  Under pytest-xdist each
worker ships its records to the controller, which merges them and writes the
report, so ``-n 2`` gives the same report as a serial run.

Absolute gates (:mod:`properties.measure.gates`), with or without a baseline and also
while updating it: a ``conformance`` row of a property every implementation
must satisfy (:data:`properties.measure.gates.MUST_HOLD`) below 100 %, and a row below
a floor ``--property-require 'PATTERN>=VALUE'`` (its point estimate), get the
status ``below_floor`` and fail the test that recorded them, naming the floor
and the rate.  A floor whose pattern matches no row of a completed run is a
usage error (exit status 4, the note names the pattern and some rows).

What a run leaves behind
------------------------
* Start-up checks (``pytest.UsageError`` before any test runs): the baseline
  exists (unless updating) and every entry is valid; the report directory and,
  when updating, the baseline can be written; the confidence and seed are in range.
* A completed run (every selected test ran; failures allowed) replaces the
  report directory as a whole: rendered in a temporary sibling and swapped in,
  so no plot of an earlier run is left beside it; files in the directory that
  the report did not write are kept.
* An interrupted run (Ctrl-C, an internal error, ``-x``/``--maxfail`` stopping
  early, a crashed xdist worker) leaves the report directory as it was and
  writes its rows to ``DIR.partial.json`` (``"partial": true``) instead.
* ``--update-baseline`` rewrites the baseline only when the run completed and
  every test passed; otherwise the file stays byte for byte as it was.
  ``--update-baseline-partial`` merges the rates of the tests that passed
  into the old baseline whatever happened to the others.  The update reads,
  merges and writes the baseline under a lock (concurrent runs keep each
  other's entries); the report directory is replaced under a lock too.
* A report or baseline that cannot be written at the end (a full disk, a
  read-only or immutable file) leaves the old file as it was; the rates
  table is shown, the note names the path and the error, and the run exits
  with :data:`WRITE_FAILED`.
* New files get the permissions of ``open(path, "w")`` under the umask; a
  rewritten baseline keeps its mode; links are written through.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import pytest

from dtd.validation import check_int, check_probability

from .. import report as _report
from ..measure import gates
from ..measure.keys import RateKey, describe
from ..measure.stats import DEFAULT_CONFIDENCE, Rate
from ..report.summary import format_rate

# the options, the marker and the fixtures (one registration, whoever loads this module)
pytest_plugins = ["dtd_properties_pytest", "properties.plugin.subjects"]

__all__ = ["PropertyReport", "Store"]

DEFAULT_BASELINE = Path(__file__).parent.parent / "baseline.json"
#: the baseline of ``--dtd-implementation`` runs, in the directory pytest is run from
CONFORMANCE_BASELINE = "conformance-baseline.json"
#: the baseline of ``--dtd-subject`` runs (users' models), in the directory pytest is run from
SUBJECT_BASELINE = "dtd-properties-baseline.json"
#: seed of the neuron draws of ``--dtd-subject`` runs without ``--property-seed`` (a user's run repeats exactly)
DEFAULT_SUBJECT_SEED = 0
#: the exit status of a run whose report or baseline could not be written (the rates table is still shown)
WRITE_FAILED = pytest.ExitCode.INTERNAL_ERROR
_STORE_KEY = pytest.StashKey["Store"]()
_RECORDER_KEY = pytest.StashKey["PropertyReport"]()
#: the largest --property-seed: a 32-bit seed, with room for the offsets the tests add to it
SEED_MAXIMUM = 2**32 - 1


class Store:
    """Everything recorded in this process: rows, plots, terminal-summary names."""

    def __init__(self, baseline: Mapping[str, Mapping], confidence: float, seed: int,
                 floors: Sequence[gates.Floor] = ()) -> None:
        self.baseline = dict(baseline)
        self.floors = list(floors)  # --property-require (properties.measure.gates), besides the must-hold properties
        self.confidence = confidence
        self.seed = seed
        self.rows: dict[str, dict] = {}
        self.plots: dict[str, dict] = {}
        self.summary: set[str] = set()
        self.counts: dict[str, float | str] = {}  # numbers (count) and lines of text (note)
        self.written_to: str | None = None  # report directory, once written
        self.html_report: str | None = None  # its report.html, once a complete report is written
        self.owner: dict[str, str] = {}
        self.started = time.time()
        self.failed: set[str] = set()  # tests with a phase that did not pass
        self.completed: set[str] = set()  # tests whose setup, call and teardown passed
        self.notes: list[str] = []  # what the session finish did, for the terminal summary

    def claim(self, name: str, nodeid: str) -> None:
        if name in self.owner and self.owner[name] != nodeid:
            raise ValueError(f"property {name!r} is recorded by both {self.owner[name]} and {nodeid}")
        self.owner[name] = nodeid

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "plots": self.plots, "summary": sorted(self.summary), "owner": self.owner,
                           "counts": self.counts, "completed": sorted(self.completed)})

    def merge_json(self, text: str) -> None:
        data = json.loads(text)
        for name, nodeid in data["owner"].items():
            self.claim(name, nodeid)
        self.rows.update(data["rows"])
        self.plots.update(data["plots"])
        self.summary.update(data["summary"])
        self.counts.update(data["counts"])
        self.completed.update(data["completed"])

    def track(self, report: pytest.TestReport) -> None:
        """Follow one test phase's outcome (completed = every phase passed)."""
        if not report.passed:
            self.failed.add(report.nodeid)
        elif report.when == "teardown" and report.nodeid not in self.failed:
            self.completed.add(report.nodeid)


class PropertyReport:
    """The ``property_report`` fixture: record rates and plot data for the report."""

    def __init__(self, store: Store, nodeid: str, gate: bool) -> None:
        self._store = store
        self._nodeid = nodeid
        self._gate = gate
        self.regressions: list[str] = []
        self.below_floor: list[str] = []  # rows failing an absolute gate (properties.measure.gates), also when updating

    @property
    def confidence(self) -> float:
        """Confidence to build :class:`~properties.measure.stats.Rate` s with."""
        return self._store.confidence

    @property
    def seed(self) -> int:
        """Seed for i.i.d. samples of generated cases (same in every xdist worker)."""
        return self._store.seed

    def rate(self, name: str | RateKey, rate: Rate, description: str | None = None, *, summary: bool = False,
             example: str | None = None) -> dict:
        """Record one rate; returns its report row.

        ``name`` is a :class:`~properties.measure.keys.RateKey` (the suite's own
        rates) or a dotted name.  ``description`` says in one line exactly
        what is counted; for a key it defaults to
        :func:`properties.measure.keys.describe`.  ``summary=True`` shows the row in
        the terminal table (every row is in ``report.md``).  ``example``: a
        counterexample (text) kept in the row as ``"example"`` and shown
        under "Counterexamples" in the report.  A rate inconsistent with the
        baseline fails the calling test unless the baseline is being updated.
        """
        if not isinstance(rate, Rate):
            raise TypeError(f"rate must be a properties.measure.stats.Rate, got {type(rate).__name__}")
        if rate.confidence != self.confidence:
            rate = Rate(rate.successes, rate.trials, self.confidence, rate.clusters)
        key = name if isinstance(name, RateKey) else None
        if key is not None:
            name = str(key)
            description = description or describe(key)
        elif not isinstance(name, str):
            raise TypeError(f"name must be a str or a properties.measure.keys.RateKey, got {type(name).__name__}")
        gate_key = key if key is not None else _parsed(name)
        if not description:
            raise ValueError(f"property {name!r} needs a description of what it counts")
        self._store.claim(name, self._nodeid)
        entry = _report.row(name, rate, description, self._store.baseline.get(name), key)
        if example is not None:
            if not isinstance(example, str):
                raise TypeError(f"example of {name!r} must be a str, got {type(example).__name__}")
            entry["example"] = example
        failed = gates.failed_floors(entry, gate_key, self._store.floors)
        if failed:
            entry["status"] = gates.BELOW_FLOOR
            entry["floor"] = failed
            self.below_floor.append(f"{name}: {format_rate(entry)} of {entry['trials']} trials -- "
                                    + "; ".join(failed))
            summary = True
        self._store.rows[name] = entry
        if summary:
            self._store.summary.add(name)
        if self._gate and entry["status"] == "regression":
            base = entry["baseline"]
            now = "no data" if entry["rate"] is None else (f"{100 * entry['rate']:.2f}% [{100 * entry['ci_low']:.2f}, "
                                                           f"{100 * entry['ci_high']:.2f}]")
            was = "no data" if base["rate"] is None else (f"{100 * base['rate']:.2f}% [{100 * base['ci_low']:.2f}, "
                                                          f"{100 * base['ci_high']:.2f}]")
            self.regressions.append(f"{name}: now {now}, baseline {was} -- the intervals do not overlap")
        return entry

    def count(self, label: str, value: float) -> None:
        """An informational number for the report's config table (not gated): ints as they are, floats to 6 digits."""
        self._store.claim("count:" + label, self._nodeid)
        self._store.counts[label] = value if isinstance(value, int) else float(f"{float(value):.6g}")

    def note(self, label: str, text: str) -> None:
        """A line of text for the report's config (not gated), e.g. a subject's layer names."""
        if not isinstance(text, str):
            raise TypeError(f"note {label!r} must be a str, got {type(text).__name__}")
        self._store.claim("count:" + label, self._nodeid)
        self._store.counts[label] = text

    def histogram(self, file: str, title: str, series: Mapping[str, Sequence[float]], *, xlabel: str = "",
                  caption: str = "", bins: int = 30) -> None:
        """A histogram plot of one or more value series (drawn over each other)."""
        self._plot(file, {"kind": "histogram", "title": title, "xlabel": xlabel, "caption": caption, "bins": bins,
                          "series": {label: [float(v) for v in values] for label, values in series.items()}})

    def bars(self, file: str, title: str, rows: Sequence[str], labels: Sequence[str], *, xlabel: str = "",
             caption: str = "") -> None:
        """A bar chart of recorded rates (by row name) with their intervals."""
        if len(rows) != len(labels):
            raise ValueError("bars needs one label per row")
        self._plot(file, {"kind": "bars", "title": title, "xlabel": xlabel, "caption": caption,
                          "rows": list(rows), "labels": list(labels)})

    def images(self, file: str, title: str, rows: Sequence[Mapping], columns: Sequence[str], *,
               caption: str = "") -> None:
        """A grid of images: one row per
        ``{"label": str, "images": [2-D lists, one per column]}``, columns titled ``columns``."""
        for entry in rows:
            if len(entry["images"]) != len(columns):
                raise ValueError(f"images: row {entry.get('label')!r} has "
                                 f"{len(entry['images'])} images for {len(columns)} columns")
        self._plot(
            file,
            {
                "kind": "image_grid",
                "title": title,
                "caption": caption,
                "columns": list(columns),
                "rows": [
                    {
                        "label": str(entry["label"]),
                        "images": [[[float(v) for v in line] for line in image] for image in entry["images"]],
                    }
                    for entry in rows
                ],
            },
        )

    def lines(self, file: str, title: str, panels: Sequence[Mapping], *, xlabel: str = "", caption: str = "") -> None:
        """Line plots side by side: each panel ``{"title", "ylabel", "ylim" (optional), "series": {label: {"x", "y",
        "low", "high"}}}``, one line per series with its interval as a band (``low``/``high`` as long as ``x``)."""
        cleaned = []
        for panel in panels:
            series = {}
            for label, line in panel["series"].items():
                lengths = {len(line[part]) for part in ("x", "y", "low", "high")}
                if len(lengths) != 1:
                    raise ValueError(f"lines: series {label!r} of panel "
                                     f"{panel.get('title')!r} needs x, y, low, high of one length")
                series[str(label)] = {part: [float(v) for v in line[part]] for part in ("x", "y", "low", "high")}
            cleaned.append({"title": str(panel.get("title", "")), "ylabel": str(panel.get("ylabel", "")),
                            "ylim": [float(v) for v in panel["ylim"]] if panel.get("ylim") else None, "series": series})
        self._plot(file, {"kind": "lines", "title": title, "xlabel": xlabel, "caption": caption, "panels": cleaned})

    def _plot(self, file: str, spec: dict) -> None:
        if not file.endswith(".png") or "/" in file:
            raise ValueError(f"plot file must be a bare name ending in .png, got {file!r}")
        self._store.claim("plot:" + file, self._nodeid)
        self._store.plots[file] = {"file": file, **spec}


# --------------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """The short spellings of the update options, in the suite's own runs only (see the module docstring)."""
    if _entry().activating():
        return
    group = parser.getgroup("properties")
    group.addoption("--update-baseline", action="store_true", default=None, dest="property_update_baseline",
                    help="the suite's own runs: --property-update-baseline")
    group.addoption("--update-baseline-partial", action="store_true", default=None,
                    dest="property_update_baseline_partial",
                    help="the suite's own runs: --property-update-baseline-partial")


def _parsed(name: str) -> RateKey | None:
    """The key of a name recorded as a string, where it is one (the absolute gates read its fields)."""
    try:
        return RateKey.parse(name)
    except ValueError:
        return None


def _entry() -> ModuleType:
    """The entry-point module (imported here, after pytest registered it, so its asserts stay rewritable)."""
    import dtd_properties_pytest

    return dtd_properties_pytest


def store(config: pytest.Config) -> Store:
    """This run's :class:`Store`."""
    return config.stash[_STORE_KEY]


def recorder(request: pytest.FixtureRequest) -> PropertyReport:
    """A :class:`PropertyReport` for the requesting test (the ``property_report`` fixture)."""
    return recorder_for(request.node)


def recorder_for(item: pytest.Item) -> PropertyReport:
    """A :class:`PropertyReport` for a test item (also one that takes no fixtures, such as a user's subject)."""
    made = PropertyReport(store(item.config), item.nodeid, gate=_update_mode(item.config) is None)
    item.stash[_RECORDER_KEY] = made
    return made


def _update_mode(config: pytest.Config) -> str | None:
    """``"partial"``, ``"full"`` or None (gate on the baseline)."""
    if config.getoption("property_update_baseline_partial"):
        return "partial"
    return "full" if config.getoption("property_update_baseline") else None


def _baseline_path(config: pytest.Config) -> Path:
    option = config.getoption("--property-baseline")
    if option is not None:
        return Path(option)
    user = _user_run(config)
    return DEFAULT_BASELINE if user is None else Path(user)


def _report_directory(config: pytest.Config) -> Path:
    directory = Path(config.getoption("--property-report") or "property-report")
    return directory if directory.is_absolute() else Path(config.invocation_params.dir) / directory


def _user_run(config: pytest.Config) -> str | None:
    """Where a user's run (their implementations or subjects) gates: ``./conformance-baseline.json`` or
    ``./dtd-properties-baseline.json`` unless
    ``--property-baseline`` names another file; None for a run of the project's own suite."""
    for option, name in (("--dtd-implementation", CONFORMANCE_BASELINE), ("--dtd-subject", SUBJECT_BASELINE)):
        if config.getoption(option):
            return str(Path(config.invocation_params.dir) / name)
    return None


def pytest_configure(config: pytest.Config) -> None:
    if _STORE_KEY in config.stash:
        return
    user_baseline = _user_run(config)
    if user_baseline is not None and config.getoption("--dtd-implementation"):
        # the user's implementations: collect the kit's test module, gate on the user's baseline (never ours)
        suite = str(Path(__file__).parent.parent / "conformance" / "pytest_module.py")
        if suite not in config.args:
            config.args.append(suite)
    confidence = config.getoption("--property-confidence")
    try:
        confidence = (
            DEFAULT_CONFIDENCE if confidence is None else check_probability(confidence, "--property-confidence")
        )
    except ValueError as error:
        raise pytest.UsageError(f"{error}: --property-confidence must be in (0, 1), e.g. 0.99") from None
    seed = config.getoption("--property-seed")
    try:
        if seed is not None:
            check_int(seed, "--property-seed", minimum=0, maximum=SEED_MAXIMUM)
    except ValueError as error:
        raise pytest.UsageError(f"{error}: --property-seed must be in [0, 2**32 - 1]") from None
    timeout = config.getoption("property_call_timeout")
    if timeout is not None and not timeout > 0:
        raise pytest.UsageError(f"--property-call-timeout must be > 0 seconds, got {timeout:g}")
    update = _update_mode(config)
    path = _baseline_path(config)
    try:
        # a user's run without a baseline of its own yet: every rate is new, quietly (an explicit path must exist)
        first_user_run = user_baseline is not None and config.getoption("--property-baseline") is None
        baseline = _report.read_baseline(path, missing_ok=update is not None or first_user_run)
    except ValueError as error:
        raise pytest.UsageError(f"--property-baseline: {error}") from None
    if not _is_worker(config):
        problem = _report.writable_problem(_report_directory(config), directory=True)
        if problem:
            raise pytest.UsageError(f"--property-report cannot be written: {problem}")
        if update is not None:
            problem = _report.writable_problem(path, directory=False)
            if problem:
                raise pytest.UsageError(f"--property-baseline cannot be updated: {problem}")
    try:
        floors = gates.parse_floors(config.getoption("property_require"))
    except ValueError as error:
        raise pytest.UsageError(f"--property-require: {error}") from None
    config.stash[_STORE_KEY] = Store(baseline, confidence, _sweep_seed(config), floors)
    if _is_worker(config):
        # xdist workers share the machine's cores: without this, torch's
        # intra-op threads of all workers oversubscribe them (4x slower on 2 cores)
        import os

        import torch

        workers = int(_worker_dict(config, "workerinput").get("workercount", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _sweep_seed(config: pytest.Config) -> int:
    if _is_worker(config) and _entry().WORKER_SEED in _worker_dict(config, "workerinput"):
        return int(_worker_dict(config, "workerinput")[_entry().WORKER_SEED])
    seed = config.getoption("--property-seed")
    if seed is not None:
        return seed
    import hypothesis

    if hypothesis.settings().derandomize:  # the loaded profile's
        return 0
    return _entry().random_seed(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    recorder: PropertyReport | None = item.stash.get(_RECORDER_KEY, None)
    if (
        call.when == "call"
        and report.passed
        and recorder is not None
        and (recorder.regressions or recorder.below_floor)
    ):
        parts = []
        if recorder.below_floor:
            parts.append(f"{len(recorder.below_floor)} rate(s) below a required floor (with or without a baseline):\n  "
                         + "\n  ".join(recorder.below_floor))
        if recorder.regressions:
            parts.append(
                f"{len(recorder.regressions)} rate(s) inconsistent with the baseline "
                f"({_baseline_path(item.config)}):\n  "
                + "\n  ".join(recorder.regressions)
                + "\nIf the change is intended, rerun with --update-baseline (plain "
                  "pytest: --property-update-baseline) and commit the baseline."
            )
        report.outcome = "failed"
        report.longrepr = "\n".join(parts)
    store(item.config).track(report)


def _profile_name() -> str:
    import hypothesis

    getter = getattr(hypothesis.settings, "get_current_profile_name", None)
    return getter() if getter else getattr(hypothesis.settings, "_current_profile", "")


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _worker_dict(config: pytest.Config, name: str) -> dict[str, Any]:
    """xdist's ``workerinput`` / ``workeroutput`` of a worker's config (attributes xdist sets, unknown to Config)."""
    found: dict[str, Any] = getattr(config, name)
    return found


def _incomplete(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> str | None:
    """Why the run did not run every selected test to its end, or None."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted"
    if exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        return "internal error"
    if session.shouldstop or session.shouldfail:
        return f"stopped early ({session.shouldstop or session.shouldfail})"
    if _entry().worker_lost(session.config):
        return "an xdist worker went down; the rates it held are missing"
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    config = session.config
    run = store(config)
    if _is_worker(config):
        _worker_dict(config, "workeroutput")[_entry().WORKER_OUTPUT] = run.to_json()
        return
    incomplete = _incomplete(session, exitstatus)
    floors_matched = incomplete is not None or _check_floors_matched(session, run)
    if run.rows or run.plots:
        try:
            _write_report(config, run, incomplete, exitstatus)
        except OSError as error:  # a full disk, a lock held too long, ...: say so, keep the rates table, fail the run
            run.written_to = None
            run.notes.append(f"report NOT written: {_os_error(error, _report_directory(config))}; the previous report "
                             f"is as it was")
            session.exitstatus = WRITE_FAILED
    update = _update_mode(config)
    if update is None or not run.rows:
        return
    path = _baseline_path(config)
    if incomplete is None and exitstatus == pytest.ExitCode.OK and floors_matched:
        rows, owners, done = list(run.rows.values()), run.owner, f"baseline rewritten: {path}"
    elif update == "partial":
        owners = {name: test for name, test in run.owner.items() if test in run.completed}
        rows = [r for r in run.rows.values() if r["name"] in owners]
        tests = len(set(owners.values()))
        done = (f"baseline partially updated: {path} (the {len(rows)} rates of the {tests} test(s) that passed; "
                f"every other entry as it was)")
    else:
        rows = None
    if rows is not None:
        try:  # read, merge and write under the baseline's lock: a concurrent run's entries are kept
            _report.update_baseline(path, rows, owners)
            run.notes.append(done)
        except (OSError, ValueError) as error:
            problem = _os_error(error, path) if isinstance(error, OSError) else str(error)
            run.notes.append(f"baseline NOT rewritten: {problem}; {path} is as it was")
            session.exitstatus = WRITE_FAILED
    else:
        why = incomplete or (f"exit status {int(exitstatus)}: a test failed or errored"
                             if exitstatus != pytest.ExitCode.OK
                             else "a --require floor matches no rate")
        run.notes.append(f"baseline NOT rewritten ({why}): {path} is unchanged; fix the run and repeat, "
                         "or use --update-baseline-partial (plain pytest: "
                         "--property-update-baseline-partial) to keep the rates of the tests that passed")


#: how many of the run's rate names a floor that matches none of them lists
FLOOR_EXAMPLES = 5


def _check_floors_matched(session: pytest.Session, run: Store) -> bool:
    """Whether every floor matched a rate; one that matches none of a completed run's checked nothing: a usage error
    (exit status 4), the note naming it and the rates whose names come nearest its fixed start."""
    missing = gates.unmatched(run.floors, run.rows)
    if not missing:
        return True
    for floor in missing:
        names = gates.nearest(floor, run.rows, FLOOR_EXAMPLES)
        more = len(run.rows) - len(names)
        some = ", ".join(names) + (f" (and {more} more)" if more > 0 else "")
        run.notes.append(f"usage error: the floor '{floor.text}' (--property-require, "
                         f"--require of dtd-properties): the pattern {floor.pattern!r} matches "
                         f"no rate of this run (nearest rates: {some or 'none were recorded'})")
    session.exitstatus = pytest.ExitCode.USAGE_ERROR
    return False


def _os_error(error: OSError, path: Path) -> str:
    """``PATH: [Errno 28] No space left on device`` (the path the error names, else ``path``)."""
    if isinstance(error, TimeoutError) and error.errno is None:  # filelock.Timeout
        return f"{path}: another run held its lock for more than {_report.LOCK_TIMEOUT:g} s ({error})"
    at = f" (at {error.filename})" if error.filename and str(error.filename) != str(path) else ""
    return f"{path}: [Errno {error.errno}] {error.strerror or error}{at}"


def _write_report(config: pytest.Config, run: Store, incomplete: str | None,
                  exitstatus: int | pytest.ExitCode) -> None:
    import hypothesis
    import torch

    settings = hypothesis.settings()  # the loaded profile's
    start = Path(config.invocation_params.dir)
    run_config = {
        "confidence": run.confidence,
        "seed": run.seed,
        "hypothesis_profile": _profile_name(),
        "hypothesis_max_examples": settings.max_examples,
        "hypothesis_derandomize": settings.derandomize,
        "baseline": _relative(_baseline_path(config), start),
        "update_baseline": _update_mode(config) or False,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(time.time() - run.started, 1),
        **_yours(config, run),
        **dict(sorted(run.counts.items())),
    }
    directory = _report_directory(config)
    if incomplete is None:
        _report.replace_report(directory, list(run.rows.values()), list(run.plots.values()), run_config)
        run.written_to = _relative(directory, start) + "/report.md"
        run.html_report = _relative(directory, start) + "/report.html"
    else:
        run_config["exit_status"] = int(exitstatus)
        path = _report.write_partial_report(directory, list(run.rows.values()), run_config, incomplete)
        run.written_to = _relative(path, start)
        run.notes.append(f"partial report ({incomplete}): {run.written_to}; "
                         f"{_relative(directory, start)} is left as it was")


def _yours(config: pytest.Config, run: Store) -> dict[str, Any]:
    """Which seed drew the subjects' neurons, and which subjects and implementations the user brought (by the tests that
    recorded them: ``--dtd-subject`` items and the kit's ``--dtd-implementation`` module)."""
    out: dict[str, Any] = {}
    subjects = sorted(
        {r["key"]["subject"] for r in run.rows.values() if (r.get("key") or {}).get("family") == "subject"}
    )
    if subjects:
        seed = config.getoption("--property-seed")
        out["neuron_draw_seed"] = DEFAULT_SUBJECT_SEED if seed is None else seed
    ours = Path(__file__).with_name("test_conformance.py").name  # the shipped adapters' rows (the kit's own run)
    handed = bool(config.getoption("--dtd-implementation"))
    yours: dict[str, set[str]] = {"your_subjects": set(), "your_implementations": set()}
    for name, r in run.rows.items():
        key, owner = r.get("key") or {}, run.owner.get(name, "")
        # a SubjectItem (no file of tests)
        if key.get("family") == "subject" and owner.lstrip(":").startswith("subject["):
            yours["your_subjects"].add(key["subject"])
        elif key.get("family") == "conformance" and handed and ours not in owner:
            yours["your_implementations"].add(key["subject"])
    out.update({label: sorted(names) for label, names in yours.items() if names})
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int | pytest.ExitCode,
                            config: pytest.Config) -> None:
    run: Store | None = config.stash.get(_STORE_KEY, None)
    if run is None or _is_worker(config):
        return
    if run.rows:
        rows = sorted(run.rows.values(), key=lambda r: r["name"])
        shown = [r for r in rows if r["name"] in run.summary or r["status"] != "ok"]
        terminalreporter.section("DTD property rates")
        for line in _report.verdict_lines(rows, run.written_to):
            terminalreporter.write_line(line)
        for line in _report.format_table(shown):
            terminalreporter.write_line(line)
        terminalreporter.write_line(_report.table_legend(run.confidence))
        counts = {
            status: sum(r["status"] == status for r in rows)
            for status in ("ok", "regression", gates.BELOW_FLOOR, "new")
        }
        terminalreporter.write_line(
            f"{len(rows)} rates ({counts['ok']} ok, {counts['regression']} regression, {counts['new']} new"
            f"{f', {counts[gates.BELOW_FLOOR]} below a floor' if counts[gates.BELOW_FLOOR] else ''}); "
            f"{len(rows) - len(shown)} more rows and the plots in "
            f"{run.written_to or 'no report (not written, see below)'}"
        )
        unmeasured = sorted(set(run.baseline) - set(run.rows))
        if unmeasured:
            terminalreporter.write_line(
                f"{len(unmeasured)} baseline rate(s) were not measured in this "
                f"run (tests not selected, or stale), e.g. {unmeasured[0]}"
            )
    for note in run.notes:
        terminalreporter.write_line(note)
    if run.html_report is not None:
        terminalreporter.write_line(f"report: {run.html_report} (open in a browser; works offline)")
