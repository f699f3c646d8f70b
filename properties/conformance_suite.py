"""The conformance kit as a pytest module, for the implementations given with ``--dtd-implementation``.

Not collected by name (it does not match ``test_*.py``): the plugin adds it to
the collected paths when ``--dtd-implementation MODULE:FACTORY`` is given, so
it runs from any repository where ``dtd-properties`` is installed.  One test
per implementation records its ``conformance.{name}.*`` rows; a rate fails its
test only when it is inconsistent with the baseline (a user's own, see
``--property-baseline``; without one every rate is ``new``).
"""

from __future__ import annotations

import pytest

from properties import conformance

pytestmark = pytest.mark.properties


def _implementations(config) -> list:
    found = []
    for spec in config.getoption("--dtd-implementation"):
        try:
            found += conformance.load_implementations(spec)
        except (TypeError, ValueError) as error:
            raise pytest.UsageError(f"--dtd-implementation {spec}: {error}") from None
    names = [impl.name for impl in found]
    if len(set(names)) != len(names):
        raise pytest.UsageError(f"--dtd-implementation: duplicate implementation names {names}")
    return found


def pytest_generate_tests(metafunc):
    if "implementation" in metafunc.fixturenames:
        found = _implementations(metafunc.config)
        metafunc.parametrize("implementation", found, ids=[impl.name for impl in found])


def test_conformance(implementation, property_report, property_report_seed):
    result = conformance.run(implementation, seed=property_report_seed, confidence=property_report.confidence)
    conformance.record(property_report, result)
