"""pytest entry point of dtd-properties: options, marker and fixtures, nothing heavy.

pytest loads this module (the ``pytest11`` entry point) in every run of an
environment where dtd-properties is installed, including runs of unrelated
projects.  So it imports neither torch nor the ``properties`` package and
changes nothing by itself: it registers the suite's command-line options, the
``properties`` marker and the ``property_report`` / ``property_report_seed``
fixtures.  The suite's plugin (:mod:`properties.plugin`: the gate, the report,
xdist's thread budget) is imported and registered only when a run uses the
suite:

* a property option is given explicitly (on the command line or in ``addopts``);
* a test requests ``property_report`` or ``property_report_seed``;
* under pytest-xdist, a worker sends recorded rates back to the controller;
* or a project loads it itself (``pytest_plugins = ["properties.plugin"]`` in
  its conftest, or ``-p properties.plugin``), which also loads this module.

Options
-------
Registered by :func:`pytest_addoption` below; its help texts are the one
description of every option (``pytest --help``, group "DTD property suite").

Every option this module registers starts with ``--property-`` or
``--dtd-``: it is registered in the pytest runs of every project of the
environment, whose own conftest may register ``--update-baseline``.  The
short spellings ``--update-baseline`` and ``--update-baseline-partial`` are
registered by :mod:`properties.plugin` only when a run loads it itself
(``-p properties.plugin``, a conftest's ``pytest_plugins``, the
``dtd-properties`` console script), never when this module activates it.
"""

from __future__ import annotations

import secrets
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController

__all__ = ["property_report", "property_report_seed", "activate", "activating", "random_seed", "OPTIONS",
           "HEAVY_PLUGIN", "DEFAULT_CALL_TIMEOUT"]

#: the suite's plugin module, registered under this name
HEAVY_PLUGIN = "properties.plugin"
#: option name -> argparse destination; any of them given explicitly activates the suite
OPTIONS = {
    "--property-report": "property_report",
    "--property-update-baseline": "property_update_baseline",
    "--property-update-baseline-partial": "property_update_baseline_partial",
    "--property-baseline": "property_baseline",
    "--property-confidence": "property_confidence",
    "--property-seed": "property_seed",
    "--dtd-implementation": "dtd_implementation",
    "--dtd-subject": "dtd_subject",
    "--property-call-timeout": "property_call_timeout",
    "--property-require": "property_require",
}
#: the conformance kit's default limit on one call of an implementation, in seconds (generous: a call takes ms)
DEFAULT_CALL_TIMEOUT = 120.0
#: the key of a worker's records in xdist's ``workeroutput``
WORKER_OUTPUT = "property_records"
#: ``workerinput`` keys: the controller's seed, and a random fallback for non-derandomized runs
WORKER_SEED = "property_seed"
WORKER_RANDOM_SEED = "property_random_seed"

_RANDOM_SEED_KEY = pytest.StashKey[int]()
_WORKER_LOST_KEY = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("properties", "DTD property suite (dtd-properties)")
    group.addoption("--property-report", default=None, metavar="DIR",
                    help="directory of report.json, report.md and plots (default: property-report); an interrupted "
                         "run leaves it as it was and writes DIR.partial.json instead")
    # explicit dests: properties.plugin may have registered the short spellings onto them already
    group.addoption("--property-update-baseline", action="store_true", default=None, dest="property_update_baseline",
                    help="rewrite the baseline with this run's rates instead of gating on them; only when every test "
                         "passed and the run completed (else the baseline stays as it was)")
    group.addoption("--property-update-baseline-partial", action="store_true", default=None,
                    dest="property_update_baseline_partial",
                    help="like --property-update-baseline, but after a failed or interrupted run too: merge the rates "
                         "of the tests that passed into the old baseline, keep every other entry")
    group.addoption("--property-baseline", default=None, metavar="FILE",
                    help="baseline file to gate on (default: properties/baseline.json; "
                         "./conformance-baseline.json or ./dtd-properties-baseline.json with "
                         "--dtd-implementation / --dtd-subject); must exist unless updating")
    group.addoption("--property-confidence", type=float, default=None, metavar="C",
                    help="confidence of every interval (default: 0.99)")
    group.addoption("--dtd-implementation", action="append", default=None, metavar="MODULE:FACTORY",
                    help="run the conformance kit on these LRP implementations (repeatable; MODULE importable from the "
                         "current directory); the baseline then defaults to ./conformance-baseline.json")
    group.addoption("--dtd-subject", action="append", default=None, metavar="MODULE:FACTORY",
                    help="judge the properties.Subject(s) a user's factory returns (repeatable); the baseline then "
                         "defaults to ./dtd-properties-baseline.json")
    group.addoption("--dtd-no-findings", action="store_true", default=False,
                    help="with --dtd-subject: skip the insensitivity, invariance "
                         "and randomisation rows of the subjects (for large models)")
    group.addoption("--property-seed", type=int, default=None, metavar="N",
                    help="seed of the sampled networks and of the subjects' neuron draws, in [0, 2**32 - 1] (default: "
                         "0 under a derandomized hypothesis profile and for subjects, else random; the report names "
                         "it)")
    group.addoption("--property-call-timeout", type=float, default=None, metavar="S",
                    help=f"conformance kit: the longest one call of an implementation may take, in seconds (default "
                         f"{DEFAULT_CALL_TIMEOUT:g}); a slower call fails the property it was made for")
    group.addoption("--property-require", action="append", default=None, metavar="PATTERN>=VALUE",
                    help="an absolute floor (repeatable): every rate whose name matches the glob PATTERN must have a "
                         "point estimate >= VALUE (in [0, 1]), e.g. 'conformance.mylib_*.equals_dtd.*>=0.99'; a rate "
                         "below it fails its test (status below_floor), with or without a baseline; a PATTERN that "
                         "matches no rate of the run is a usage error (properties.measure.gates)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "properties: statistical and must-hold DTD property tests")
    if any(config.getoption(dest) is not None for dest in OPTIONS.values()):
        activate(config)


_activating = False


def activating() -> bool:
    """Whether :func:`activate` is registering the suite's plugin right now (after the command line was parsed).

    :mod:`properties.plugin` then leaves out the short option spellings,
    which another project's conftest may own.
    """
    return _activating


def activate(config: pytest.Config) -> ModuleType:
    """The suite's plugin module, imported and registered on first use (idempotent)."""
    global _activating
    manager = config.pluginmanager
    plugin = manager.get_plugin(HEAVY_PLUGIN)
    if plugin is None:
        if manager.is_blocked(HEAVY_PLUGIN):
            raise pytest.UsageError(f"the property suite is used but its plugin is disabled (-p no:{HEAVY_PLUGIN})")
        _activating = True
        try:
            manager.import_plugin(HEAVY_PLUGIN)
        finally:
            _activating = False
        plugin = manager.get_plugin(HEAVY_PLUGIN)
        if plugin is None:  # import_plugin registers the module or raises
            raise pytest.UsageError(f"the property suite's plugin {HEAVY_PLUGIN} could not be registered")
    return plugin


def random_seed(config: pytest.Config) -> int:
    """One random seed per run, drawn by the controller (xdist workers receive it)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_RANDOM_SEED in workerinput:
        return int(workerinput[WORKER_RANDOM_SEED])
    if _RANDOM_SEED_KEY not in config.stash:
        config.stash[_RANDOM_SEED_KEY] = secrets.randbelow(2**31)
    return config.stash[_RANDOM_SEED_KEY]


def worker_lost(config: pytest.Config) -> bool:
    """Whether an xdist worker went down with an error (its records are lost)."""
    return config.stash.get(_WORKER_LOST_KEY, False)


@pytest.fixture
def property_report(request: pytest.FixtureRequest) -> Any:  # a properties.plugin.PropertyReport (not imported here)
    """Record rates, breakdowns and plot data into the property report (:class:`properties.plugin.PropertyReport`)."""
    return activate(request.config).recorder(request)


@pytest.fixture(scope="session")
def property_report_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed for i.i.d. samples of generated cases (``--property-seed``)."""
    return activate(request.config).store(request.config).seed


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: WorkerController) -> None:
    """xdist: every worker samples the same networks as the controller chose."""
    config = node.config
    node.workerinput[WORKER_RANDOM_SEED] = random_seed(config)
    plugin = config.pluginmanager.get_plugin(HEAVY_PLUGIN)
    if plugin is not None:
        node.workerinput[WORKER_SEED] = plugin.store(config).seed


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: WorkerController, error: object) -> None:
    """xdist: merge a worker's records (activating the suite on the controller if needed)."""
    if error is not None:
        node.config.stash[_WORKER_LOST_KEY] = True
    text = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if text:
        activate(node.config).store(node.config).merge_json(text)
