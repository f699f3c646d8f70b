"""DTD's promises over generated CNNs and residual nets: how they fare with max pooling and skips.

The MLP sweep (:mod:`properties.suite.test_generated`) asks its questions of dense
chains only.  Here the rule variants :data:`RULES` (of the registry's ``generated`` sweep)
run on i.i.d. models of :func:`properties.generate.architectures.sample_cases`: small
CNNs (convolutions, batch norm with non-trivial statistics including negative
scales, 2x2 average and max pooling, a flatten or global-average head) and
residual nets (a stem, one or two basic blocks summed with a bare ``+``,
identity or 1x1-conv shortcuts, global average pooling), each of the three
bias populations in equal numbers, lowered by the graph engine
(:meth:`dtd.ReLUNetwork.from_module`).  At every DTD layer (zB: the input
layer only) :data:`NEURONS` neurons per point are drawn and their roots asked
the seed notebook's questions; a rate counts the valid roots of
relevance-carrying neurons (``root_exists``: among relevance-carrying
neurons), as the subjects do, pooled over layers and clustered by network.
Rows ``{rule}.{outcome}.{architecture}`` (subsets ``cnn``, ``resnet`` of
:data:`properties.measure.keys.SUBSETS`) and ``{rule}.conserved.{architecture}``
(points).  :data:`NETWORKS_PER_POPULATION` networks per population and
architecture under the ``ci`` profile (a few seconds); more under
``thorough``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import settings

import dtd
from dtd.threads import one_thread
from properties.generate import variants as V
from properties.generate.architectures import ARCHITECTURES, POPULATIONS, sample_cases
from properties.measure.checks import root_outcomes
from properties.measure.keys import OUTCOMES, SUBSETS, RateKey
from properties.measure.stats import Tally
from properties.measure.thresholds import CONSERVED_SHARE
from properties.subjects.subject import ROOT_QUESTIONS

if TYPE_CHECKING:
    from properties.generate.architectures import ModelCase
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: networks per population (3) and architecture: the hypothesis profile's max_examples divided by this (ci: 30 -> 2,
#: so 6 networks per architecture; thorough: 500 -> 33, 99 networks)
NETWORKS_DIVISOR = 15
#: the rule variants judged: the registry's generated sweep less its extra gamma strengths (gamma1 stands for gamma)
RULES = ("z+", "zB", "w2", "gamma1", "x")
#: points per network
POINTS = 5
#: neurons drawn per point and layer
NEURONS = 8
#: the outcomes counted per root, in report order
QUESTIONS = ROOT_QUESTIONS + ("root_exists",)


def networks_per_population() -> int:
    return max(1, settings().max_examples // NETWORKS_DIVISOR)


#: a lowered case: the drawn model and its network
Lowered = tuple["ModelCase", dtd.ReLUNetwork | dtd.GraphNetwork]
#: per architecture: (case, lowered network) of every population
GraphCases = dict[str, list[Lowered]]


@pytest.fixture(scope="module")
def graph_cases(property_report_seed: int) -> GraphCases:
    """Per architecture: (case, lowered network) of every population, the same for every rule."""
    cases: GraphCases = {}
    with one_thread():
        for a, architecture in enumerate(ARCHITECTURES):
            drawn: list[Lowered] = []
            for p, population in enumerate(POPULATIONS):
                seed = property_report_seed + 1000 * a + 100 * p
                for case in sample_cases(architecture, population, networks_per_population(), points=POINTS, seed=seed):
                    drawn.append((case, dtd.ReLUNetwork.from_module(case.model, case.generated.input_shape)))
            cases[architecture] = drawn
    return cases


def sweep_variants() -> list[V.Variant]:
    return [v for v in V.variants("generated") if v.label in RULES]


def graph_sweep(variant: V.Variant, drawn: list[Lowered], *, seed: int) -> Tally[str]:
    """Tally the root questions of ``variant`` over ``drawn`` ``[(case, network)]``: one cluster per network."""
    with one_thread(), torch.no_grad():  # tiny tensors: torch's intra-op threads only contend
        return _sweep(variant, drawn, seed)


def _sweep(variant: V.Variant, drawn: list[Lowered], seed: int) -> Tally[str]:
    tally: Tally[str] = Tally()
    generator = torch.Generator().manual_seed(seed)
    for case, net in drawn:
        tally.new_cluster()
        x = case.x
        rule = variant.make(x.flatten(1), net.n_layers)
        dec = dtd.train_free(net, x, root_finder=dtd.LinearRoots(rule), output=case.output)
        total = dec.relevance.reshape(len(x), -1).sum(1)
        tally.add("conserved", (total - dec.output_value).abs() <= CONSERVED_SHARE * dec.output_value)
        for k in [0] if variant.input_layer_only else range(net.n_layers):
            out = root_outcomes(net, dec, layer=k, neurons=NEURONS, generator=generator)
            counted = out.valid & out.carries_relevance
            for outcome in ROOT_QUESTIONS:
                tally.add(outcome, getattr(out, outcome), counted)
            tally.add("root_exists", out.valid, out.carries_relevance)
    return tally


def _description(architecture: str, label: str, outcome: str, variant: V.Variant) -> str:
    layers = "the input layer" if variant.input_layer_only else "every layer"
    if outcome == "conserved":
        counted = "points"
    elif outcome == "root_exists":
        counted = f"relevance-carrying neurons, {NEURONS} drawn per point at {layers}"
    else:
        counted = f"valid roots of relevance-carrying neurons, {NEURONS} drawn per point at {layers}"
    return (f"{SUBSETS[architecture]}, {len(POPULATIONS)} bias populations, {POINTS} points each, rule {label} "
            f"[{counted}, clustered by network]: {OUTCOMES[outcome]}")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("variant", sweep_variants(), ids=lambda v: v.label)
def test_rates_over_generated_graph_networks(variant: V.Variant, architecture: str, property_report: PropertyReport,
                                             graph_cases: GraphCases) -> None:
    drawn = graph_cases[architecture]
    tally = graph_sweep(variant, drawn, seed=property_report.seed)
    assert tally.n_clusters == len(drawn) == len(POPULATIONS) * networks_per_population()
    for outcome in QUESTIONS + ("conserved",):
        key = RateKey("generated", outcome, rule=variant.label, subset=architecture)
        rate = tally.rate(outcome, property_report.confidence)
        property_report.rate(key, rate, _description(architecture, variant.label, outcome, variant),
                             summary=outcome in ("gradient_match", "conserved"))
    exists = tally.rate("root_exists")
    assert exists.trials > 0, f"no relevance-carrying neuron was drawn on the {architecture}s: {exists}"
