"""DTD's promises measured over generated networks, per rule and per layer.

Every rule variant the registry marks for the ``generated`` sweep (:func:`properties.generate.variants.variants`)
runs on the same cases, drawn uniformly and independently with :func:`properties.generate.strategies.sample_cases`
(network structure, weight seed, explained output, inputs with ``f(x) > 0``; see that function for the population).
i.i.d. draws rather than hypothesis's example generation, whose mutations and near-duplicates would make the rates
depend on its heuristics.  Roots of layer ``k`` are judged with ``f_k``.  Rates are clustered by network: the
interval accounts for roots of one point and points of one network not being independent.  Subset ``all`` counts
every valid root (trivial roots of neurons that carry no relevance included, as the notebook does), ``relevant``
only roots of neurons with ``R_j != 0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import settings
from tqdm import tqdm

import dtd
from properties.generate import variants as V
from properties.generate.strategies import sample_cases
from properties.measure.checks import RootOutcomes, root_outcomes
from properties.measure.keys import RateKey
from properties.measure.stats import Tally

if TYPE_CHECKING:
    from properties.generate.strategies import Case
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: networks per sweep: this many times the hypothesis profile's max_examples (ci: 150, thorough: 2500)
SWEEP_FACTOR = 5
POINTS_PER_NETWORK = 64
#: the subsets of roots each outcome is counted over, and whether trivial roots belong to it
SUBSETS = {"all": True, "relevant": False}


def sweep_variants() -> list[V.Variant]:
    """The rule variants of this sweep, from the registry (a newly registered rule joins by naming the sweep)."""
    return V.variants("generated")


@pytest.fixture(scope="module")
def generated_cases(property_report_seed: int) -> list[Case]:
    count = SWEEP_FACTOR * settings().max_examples
    return sample_cases(count, seed=property_report_seed, n=POINTS_PER_NETWORK)


def sweep(variant: V.Variant, generated: list[Case]) -> tuple[Tally[RateKey], int]:
    """Tally every outcome of every valid root of ``variant`` over the
    ``generated`` cases, keyed by :class:`RateKey`."""
    tally: Tally[RateKey] = Tally()
    n_roots = 0
    key = RateKey("generated", "root_exists", rule=variant.label)
    for case in tqdm(generated, desc=f"{variant.label} sweep", unit="network", disable=None, leave=False):
        tally.new_cluster()
        dec = dtd.train_free(case.net, case.x, rule=variant.make(case.x, case.net.n_layers), output=case.output)
        for k in [0] if variant.input_layer_only else range(case.net.n_layers):
            outcomes = root_outcomes(case.net, dec, layer=k)
            n_roots += outcomes.valid.numel()
            tally.add(key, outcomes.valid)
            for subset, include_trivial in SUBSETS.items():
                considered = outcomes.considered(include_trivial)
                for outcome in RootOutcomes.OUTCOMES:
                    tally.add(key.replace(outcome=outcome, subset=subset), getattr(outcomes, outcome), considered)
                holds, has_roots = outcomes.per_point("gradient_match", include_trivial)
                tally.add(key.replace(outcome="gradient_match", unit="points", subset=subset), holds, has_roots)
            for outcome in RootOutcomes.OUTCOMES:
                tally.add(key.replace(outcome=outcome, layer=k), getattr(outcomes, outcome), outcomes.valid)
    return tally, n_roots


def _in_summary(key: RateKey) -> bool:
    """The terminal table shows, per rule, the pooled gradient-match and zero-output rates over every valid root."""
    return key.subset == "all" and key.layer is None and key.outcome in ("gradient_match", "zero_output")


@pytest.mark.parametrize("variant", sweep_variants(), ids=lambda v: v.label)
def test_rates_over_generated_networks(variant: V.Variant, property_report: PropertyReport,
                                       generated_cases: list[Case]) -> None:
    tally, n_roots = sweep(variant, generated_cases)
    assert tally.n_clusters == len(generated_cases)
    for key in tally.names():
        property_report.rate(key, tally.rate(key, property_report.confidence), summary=_in_summary(key))
    property_report.count(f"roots evaluated ({variant.label}, generated networks)", n_roots)
    # the per-layer rates are drawn once for all rules, from the rows, by properties.report.figures (layers x rules)
