"""pytest plugin: the ``properties`` marker, the ``property_report`` fixture, the gate and the report.

Options
-------
``--property-report DIR``
    Where ``report.json``, ``report.md`` and the plots go (default ``property-report``).
``--update-baseline``
    Rewrite the baseline with this run's rates instead of gating on it.
``--property-baseline FILE``
    The baseline to gate on (default: ``properties/baseline.json``).
``--property-confidence C``
    Confidence of every interval (default 0.99).
``--property-seed N``
    Seed of the i.i.d. samples of generated networks (``property_report.seed``).
    Default: 0 under a derandomized hypothesis profile (``ci``, ``thorough``),
    else a fresh random seed, printed in the report so a run can be repeated.

A test records rates with ``property_report.rate(name, Rate, description)``.
Each recorded rate is compared with the baseline at once; a rate whose
interval does not overlap the baseline's fails the test that recorded it
(after the test body ran, listing every such rate).  Under pytest-xdist each
worker ships its records to the controller, which merges them and writes the
report, so ``-n 2`` gives the same report as a serial run.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pytest

from . import report as _report
from .keys import RateKey, describe
from .stats import DEFAULT_CONFIDENCE, Rate

__all__ = ["PropertyReport", "Store"]

DEFAULT_BASELINE = Path(__file__).with_name("baseline.json")
#: users' subjects (``--dtd-subject``) are collected by their own plugin module
pytest_plugins = ["properties.subject_plugin"]
_STORE_KEY = pytest.StashKey["Store"]()
_RECORDER_KEY = pytest.StashKey["PropertyReport"]()
_WORKER_OUTPUT = "property_records"


class Store:
    """Everything recorded in this process: rows, plots, terminal-summary names."""

    def __init__(self, baseline: Mapping[str, Mapping], confidence: float, seed: int):
        self.baseline = dict(baseline)
        self.confidence = confidence
        self.seed = seed
        self.rows: dict[str, dict] = {}
        self.plots: dict[str, dict] = {}
        self.summary: set[str] = set()
        self.counts: dict[str, float] = {}
        self.written_to: Optional[str] = None  # report directory, once written
        self.owner: dict[str, str] = {}
        self.started = time.time()

    def claim(self, name: str, nodeid: str) -> None:
        if name in self.owner and self.owner[name] != nodeid:
            raise ValueError(f"property {name!r} is recorded by both {self.owner[name]} and {nodeid}")
        self.owner[name] = nodeid

    def to_json(self) -> str:
        return json.dumps({"rows": self.rows, "plots": self.plots, "summary": sorted(self.summary), "owner": self.owner, "counts": self.counts})

    def merge_json(self, text: str) -> None:
        data = json.loads(text)
        for name, nodeid in data["owner"].items():
            self.claim(name, nodeid)
        self.rows.update(data["rows"])
        self.plots.update(data["plots"])
        self.summary.update(data["summary"])
        self.counts.update(data["counts"])


class PropertyReport:
    """The ``property_report`` fixture: record rates and plot data for the report."""

    def __init__(self, store: Store, nodeid: str, gate: bool):
        self._store = store
        self._nodeid = nodeid
        self._gate = gate
        self.regressions: list[str] = []

    @property
    def confidence(self) -> float:
        """Confidence to build :class:`~properties.stats.Rate` s with."""
        return self._store.confidence

    @property
    def seed(self) -> int:
        """Seed for i.i.d. samples of generated cases (same in every xdist worker)."""
        return self._store.seed

    def rate(self, name: "str | RateKey", rate: Rate, description: Optional[str] = None, *, summary: bool = False) -> dict:
        """Record one rate; returns its report row.

        ``name`` is a :class:`~properties.keys.RateKey` (the suite's own
        rates) or a dotted name.  ``description`` says in one line exactly
        what is counted; for a key it defaults to
        :func:`properties.keys.describe`.  ``summary=True`` shows the row in
        the terminal table (every row is in ``report.md``).  A rate
        inconsistent with the baseline fails the calling test unless
        ``--update-baseline`` is given.
        """
        if not isinstance(rate, Rate):
            raise TypeError(f"rate must be a properties.stats.Rate, got {type(rate).__name__}")
        if rate.confidence != self.confidence:
            rate = Rate(rate.successes, rate.trials, self.confidence, rate.clusters)
        key = name if isinstance(name, RateKey) else None
        if key is not None:
            name = str(key)
            description = description or describe(key)
        elif not isinstance(name, str):
            raise TypeError(f"name must be a str or a properties.keys.RateKey, got {type(name).__name__}")
        if not description:
            raise ValueError(f"property {name!r} needs a description of what it counts")
        self._store.claim(name, self._nodeid)
        entry = _report.row(name, rate, description, self._store.baseline.get(name), key)
        self._store.rows[name] = entry
        if summary:
            self._store.summary.add(name)
        if self._gate and entry["status"] == "regression":
            base = entry["baseline"]
            now = "no data" if entry["rate"] is None else f"{100 * entry['rate']:.2f}% [{100 * entry['ci_low']:.2f}, {100 * entry['ci_high']:.2f}]"
            was = "no data" if base["rate"] is None else f"{100 * base['rate']:.2f}% [{100 * base['ci_low']:.2f}, {100 * base['ci_high']:.2f}]"
            self.regressions.append(f"{name}: now {now}, baseline {was} -- the intervals do not overlap")
        return entry

    def count(self, label: str, value: float) -> None:
        """An informational number for the report's config table (not gated): ints as they are, floats to 6 digits."""
        self._store.claim("count:" + label, self._nodeid)
        self._store.counts[label] = value if isinstance(value, int) else float(f"{float(value):.6g}")

    def histogram(self, file: str, title: str, series: Mapping[str, Sequence[float]], *, xlabel: str = "", caption: str = "", bins: int = 30) -> None:
        """A histogram plot of one or more value series (drawn over each other)."""
        self._plot(file, {"kind": "histogram", "title": title, "xlabel": xlabel, "caption": caption, "bins": bins,
                          "series": {label: [float(v) for v in values] for label, values in series.items()}})

    def bars(self, file: str, title: str, rows: Sequence[str], labels: Sequence[str], *, xlabel: str = "", caption: str = "") -> None:
        """A bar chart of recorded rates (by row name) with their intervals."""
        if len(rows) != len(labels):
            raise ValueError("bars needs one label per row")
        self._plot(file, {"kind": "bars", "title": title, "xlabel": xlabel, "caption": caption,
                          "rows": list(rows), "labels": list(labels)})

    def images(self, file: str, title: str, rows: Sequence[Mapping], columns: Sequence[str], *, caption: str = "") -> None:
        """A grid of images: one row per ``{"label": str, "images": [2-D lists, one per column]}``, columns titled ``columns``."""
        for entry in rows:
            if len(entry["images"]) != len(columns):
                raise ValueError(f"images: row {entry.get('label')!r} has {len(entry['images'])} images for {len(columns)} columns")
        self._plot(file, {"kind": "image_grid", "title": title, "caption": caption, "columns": list(columns),
                          "rows": [{"label": str(entry["label"]), "images": [[[float(v) for v in line] for line in image] for image in entry["images"]]}
                                   for entry in rows]})

    def _plot(self, file: str, spec: dict) -> None:
        if not file.endswith(".png") or "/" in file:
            raise ValueError(f"plot file must be a bare name ending in .png, got {file!r}")
        self._store.claim("plot:" + file, self._nodeid)
        self._store.plots[file] = {"file": file, **spec}


# --------------------------------------------------------------------------- hooks
def pytest_addoption(parser):
    group = parser.getgroup("properties", "DTD property report")
    group.addoption("--property-report", default="property-report", metavar="DIR", help="directory of report.json, report.md and plots (default: property-report)")
    group.addoption("--update-baseline", action="store_true", default=False, help="rewrite the baseline with this run's rates instead of gating on it")
    group.addoption("--property-baseline", default=str(DEFAULT_BASELINE), metavar="FILE", help="baseline file to gate on (default: properties/baseline.json)")
    group.addoption("--property-confidence", type=float, default=DEFAULT_CONFIDENCE, metavar="C", help="confidence of every interval (default: 0.99)")
    group.addoption("--property-seed", type=int, default=None, metavar="N", help="seed of the sampled networks (default: 0 under a derandomized hypothesis profile, else random)")


def pytest_configure(config):
    config.addinivalue_line("markers", "properties: statistical and must-hold DTD property tests")
    confidence = config.getoption("--property-confidence")
    if not 0 < confidence < 1:
        raise pytest.UsageError(f"--property-confidence must be in (0, 1), got {confidence}")
    try:
        baseline = _report.read_baseline(Path(config.getoption("--property-baseline")))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[_STORE_KEY] = Store(baseline, confidence, _sweep_seed(config))
    if _is_worker(config):
        # xdist workers share the machine's cores: without this, torch's
        # intra-op threads of all workers oversubscribe them (4x slower on 2 cores)
        import os

        import torch

        workers = int(config.workerinput.get("workercount", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _sweep_seed(config) -> int:
    if _is_worker(config) and "property_seed" in config.workerinput:
        return int(config.workerinput["property_seed"])
    seed = config.getoption("--property-seed")
    if seed is not None:
        return seed
    import hypothesis

    if hypothesis.settings.default.derandomize:
        return 0
    import secrets

    return secrets.randbelow(2**31)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist: every worker samples the same networks as the controller chose."""
    node.workerinput["property_seed"] = node.config.stash[_STORE_KEY].seed


@pytest.fixture
def property_report(request) -> PropertyReport:
    """Record rates, breakdowns and plot data into the property report."""
    store = request.config.stash[_STORE_KEY]
    recorder = PropertyReport(store, request.node.nodeid, gate=not request.config.getoption("--update-baseline"))
    request.node.stash[_RECORDER_KEY] = recorder
    return recorder


def recorder_for(item) -> PropertyReport:
    """The ``property_report`` of a test item that is no function (it takes no fixtures), gated like the fixture's."""
    recorder = PropertyReport(item.config.stash[_STORE_KEY], item.nodeid, gate=not item.config.getoption("--update-baseline"))
    item.stash[_RECORDER_KEY] = recorder
    return recorder


@pytest.fixture(scope="session")
def property_report_seed(request) -> int:
    """The run's seed for i.i.d. samples of generated cases (``--property-seed``)."""
    return request.config.stash[_STORE_KEY].seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    recorder: Optional[PropertyReport] = item.stash.get(_RECORDER_KEY, None)
    if call.when == "call" and report.passed and recorder is not None and recorder.regressions:
        report.outcome = "failed"
        report.longrepr = (
            f"{len(recorder.regressions)} rate(s) inconsistent with the baseline "
            f"({item.config.getoption('--property-baseline')}):\n  "
            + "\n  ".join(recorder.regressions)
            + "\nIf the change is intended, rerun with --update-baseline and commit the baseline."
        )


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    text = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
    if text:
        node.config.stash[_STORE_KEY].merge_json(text)


def _profile_name() -> str:
    import hypothesis

    getter = getattr(hypothesis.settings, "get_current_profile_name", None)
    return getter() if getter else getattr(hypothesis.settings, "_current_profile", "")


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    store: Store = config.stash[_STORE_KEY]
    if _is_worker(config):
        config.workeroutput[_WORKER_OUTPUT] = store.to_json()
        return
    if not store.rows and not store.plots:
        return
    import hypothesis
    import torch

    settings = hypothesis.settings.default
    run_config = {
        "confidence": store.confidence,
        "seed": store.seed,
        "hypothesis_profile": _profile_name(),
        "hypothesis_max_examples": settings.max_examples,
        "hypothesis_derandomize": settings.derandomize,
        "baseline": _relative(Path(config.getoption("--property-baseline")), Path(config.invocation_params.dir)),
        "update_baseline": bool(config.getoption("--update-baseline")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seconds": round(time.time() - store.started, 1),
        **dict(sorted(store.counts.items())),
    }
    directory = Path(config.getoption("--property-report"))
    if not directory.is_absolute():
        directory = Path(config.invocation_params.dir) / directory
    _report.write_report(directory, list(store.rows.values()), list(store.plots.values()), run_config)
    if config.getoption("--update-baseline"):
        path = Path(config.getoption("--property-baseline"))
        _report.write_baseline(path, store.rows.values(), store.owner, _report.read_baseline(path))
    store.written_to = _relative(directory, Path(config.invocation_params.dir))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    store: Optional[Store] = config.stash.get(_STORE_KEY, None)
    if store is None or _is_worker(config) or not store.rows:
        return
    rows = sorted(store.rows.values(), key=lambda r: r["name"])
    shown = [r for r in rows if r["name"] in store.summary or r["status"] != "ok"]
    terminalreporter.section("DTD property rates")
    for line in _report.format_table(shown):
        terminalreporter.write_line(line)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "regression", "new")}
    terminalreporter.write_line(
        f"{len(rows)} rates ({counts['ok']} ok, {counts['regression']} regression, {counts['new']} new); "
        f"{len(rows) - len(shown)} more rows and the plots in {store.written_to}/report.md"
    )
    unmeasured = sorted(set(store.baseline) - set(store.rows))
    if unmeasured:
        terminalreporter.write_line(
            f"{len(unmeasured)} baseline rate(s) were not measured in this run (tests not selected, or stale), e.g. {unmeasured[0]}"
        )
    if config.getoption("--update-baseline"):
        terminalreporter.write_line(f"baseline rewritten: {config.getoption('--property-baseline')}")
