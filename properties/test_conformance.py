"""The conformance kit on the shipped adapters: zennit's and captum's LRP rules (:mod:`properties.adapters`).

Every adapter is judged on the same generated networks (3 populations x
:data:`properties.conformance.NETWORKS` MLPs, :data:`~properties.conformance.POINTS`
points each, and :data:`~properties.conformance.IMAGE_NETWORKS` CNNs and residual
nets with :data:`~properties.conformance.IMAGE_POINTS` points); its rows ``conformance.{adapter}.{property}[.{subset}]`` are gated
by ``properties/baseline.json``.  Where a property breaks, the report lists a
shrunk counterexample.  These are rates: a break is a finding about the
library, not a failure of this suite.
"""

from __future__ import annotations

import pytest

from properties import adapters, conformance

pytestmark = pytest.mark.properties

IMPLEMENTATIONS = adapters.shipped_implementations()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=[impl.name for impl in IMPLEMENTATIONS])
def test_shipped_adapter_conformance(implementation, property_report, property_report_seed):
    result = conformance.run(implementation, seed=property_report_seed, confidence=property_report.confidence)
    conformance.record(property_report, result)
    # the kit itself: every property was measured on every population it applies to
    assert set(result.rates) == {conformance.conformance_name(implementation, p, s) for p, s in implementation.properties()}
    assert all(rate.trials > 0 for rate in result.rates.values())
