"""The conformance kit as a pytest module, for the implementations given with ``--dtd-implementation``.

Not collected by name (it does not match ``test_*.py``): the plugin adds it to
the collected paths when ``--dtd-implementation MODULE:FACTORY`` is given, so
it runs from any repository where ``dtd-properties`` is installed.  One test
per implementation records its ``conformance.{name}.*`` rows.  A rate fails its
test when it is inconsistent with the baseline (a user's own, see
``--property-baseline``; without one every rate is ``new``) and, from the first
run on, when a property every implementation must satisfy
(:data:`properties.measure.gates.MUST_HOLD`: ``no_side_effects``, ``finite``,
``dtype_device``, ``batch_independent``) held in fewer than every trial, or
when a rate is below a floor ``--property-require 'PATTERN>=VALUE'``
(:mod:`properties.measure.gates`; the plugin applies both to every row it records).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest

from properties import conformance
from properties.conformance import Implementation
from properties.measure.recorder import Recorder

pytestmark = pytest.mark.properties


def _implementations(config: pytest.Config) -> list[Implementation]:
    found: list[Implementation] = []
    for spec in config.getoption("--dtd-implementation"):
        try:
            found += conformance.load_implementations(spec)
        except (TypeError, ValueError) as error:
            raise pytest.UsageError(f"--dtd-implementation {spec}: {error}") from None
    names = [impl.name for impl in found]
    if len(set(names)) != len(names):
        raise pytest.UsageError(f"--dtd-implementation: duplicate implementation names {names}")
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "implementation" in metafunc.fixturenames:
        found = _implementations(metafunc.config)
        metafunc.parametrize("implementation", found, ids=[impl.name for impl in found])


def progress_writer(config: pytest.Config) -> Callable[[str], None] | None:
    """A progress line on the terminal (over pytest's output capture), or None off a terminal, in CI or under -q -q."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or os.environ.get("CI") or not reporter.isatty or (config.getoption("verbose") or 0) < -1:
        return None

    def show(line: str) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write("\r" + line[:width].ljust(width) + "\r", flush=True)
        else:
            reporter.write("\r" + line[:width].ljust(width) + "\r", flush=True)

    return show


def test_conformance(implementation: Implementation, property_report: Recorder, property_report_seed: int,
                     request: pytest.FixtureRequest) -> None:
    timeout = request.config.getoption("property_call_timeout")
    timeout = conformance.DEFAULT_CALL_TIMEOUT if timeout is None else timeout  # > 0: checked at start-up
    result = conformance.run(implementation, seed=property_report_seed, confidence=property_report.confidence,
                             call_timeout=timeout, progress=progress_writer(request.config))
    conformance.record(property_report, result)
