"""DTD's promises measured over generated networks, per rule and per layer.

Every rule runs on the same cases, drawn uniformly and independently with
:func:`properties.strategies.sample_cases` (network structure, weight seed,
explained output, inputs with ``f(x) > 0``; see that function for the
population).  i.i.d. draws rather than hypothesis's example generation, whose
mutations and near-duplicates would make the rates depend on its heuristics.
Roots of layer ``k`` are judged with ``f_k``.  Rates are clustered by network:
the interval accounts for roots of one point and points of one network not
being independent.  ``.all`` counts every valid root (trivial roots of neurons
that carry no relevance included, as the notebook does), ``.relevant`` only
roots of neurons with ``R_j != 0``.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from tqdm import tqdm

import dtd
from dtd import rules as R
from dtd.tolerances import PROPERTY_ATOL
from properties.checks import root_outcomes
from properties.stats import Tally
from properties.strategies import sample_cases, zb_recipe

pytestmark = pytest.mark.properties

#: networks per sweep: this many times the hypothesis profile's max_examples
#: (ci: 150, thorough: 2500)
SWEEP_FACTOR = 5
POINTS_PER_NETWORK = 64

RULES = {
    "z+": lambda case: R.ZPlus(),
    "w2": lambda case: R.WSquare(),
    "x": lambda case: R.LRP0(),
    "gamma0_1": lambda case: R.Gamma(0.1),  # names hold no dots: dots separate a rate name's parts
    "gamma1": lambda case: R.Gamma(1.0),
    "gamma10": lambda case: R.Gamma(10.0),
    # DTD's recipe for bounded inputs: zB at the input, z+ above.  Only its
    # first layer differs from z+, so only layer 0 is reported.
    "zB": zb_recipe,
}

OUTCOMES = {
    "zero_output": f"|f_k(root)| <= {PROPERTY_ATOL:g}",
    "output_unchanged": f"f_k(a) - f_k(root) < {PROPERTY_ATOL:g}",
    "gradient_match": f"max_i |grad f_k(root) - grad f_k(a)| <= {PROPERTY_ATOL:g}",
    "region_match": "root in the closure of the input's linear region of f_k (hidden ReLUs >= k and the explained output)",
    "in_domain": f"root >= -{PROPERTY_ATOL:g} in every coordinate",
}
SUBSETS = {"all": True, "relevant": False}


@pytest.fixture(scope="module")
def generated_cases(property_report_seed):
    count = SWEEP_FACTOR * settings.default.max_examples
    return sample_cases(count, seed=property_report_seed, n=POINTS_PER_NETWORK)


def _sweep(rule_name: str, generated) -> tuple[Tally, int]:
    tally = Tally()
    n_roots = 0
    rule_for = RULES[rule_name]
    layers_for = (lambda net: [0]) if rule_name == "zB" else (lambda net: range(net.n_layers))
    for case in tqdm(generated, desc=f"{rule_name} sweep", unit="network", disable=None, leave=False):
        tally.new_cluster()
        dec = dtd.train_free(case.net, case.x, rule=rule_for(case), output=case.output)
        for k in layers_for(case.net):
            outcomes = root_outcomes(case.net, dec, layer=k)
            n_roots += outcomes.valid.numel()
            tally.add(f"{rule_name}.root_exists", outcomes.valid)
            for subset, include_trivial in SUBSETS.items():
                considered = outcomes.considered(include_trivial)
                for key in OUTCOMES:
                    tally.add(f"{rule_name}.{key}.{subset}", getattr(outcomes, key), considered)
                holds, has_roots = outcomes.per_point("gradient_match", include_trivial)
                tally.add(f"{rule_name}.gradient_match.points.{subset}", holds, has_roots)
            for key in OUTCOMES:
                tally.add(f"{rule_name}.layer{k}.{key}", getattr(outcomes, key), outcomes.valid)
    return tally, n_roots


def _describe(name: str, rule_name: str) -> str:
    parts = name[len(rule_name) + 1 :].split(".")
    what = f"{rule_name} roots over generated networks"
    if parts[0] == "root_exists":
        return f"{what}: (point, neuron) pairs whose closed-form root exists"
    if parts[0].startswith("layer"):
        return f"{what}, layer {parts[0][5:]} only, valid roots: {OUTCOMES[parts[1]]}"
    subset = "valid roots" if parts[-1] == "all" else "valid roots of neurons with R_j != 0"
    if parts[:2] == ["gradient_match", "points"]:
        return f"{what}: points all of whose {subset} have the input's gradient"
    return f"{what}, {subset}: {OUTCOMES[parts[0]]}"


@pytest.mark.parametrize("rule_name", list(RULES))
def test_rates_over_generated_networks(rule_name, property_report, generated_cases):
    tally, n_roots = _sweep(rule_name, generated_cases)
    assert tally.n_clusters == len(generated_cases)
    for name in tally.names():
        summary = name.endswith(".all") and ".layer" not in name and ("gradient_match" in name or "zero_output" in name)
        property_report.rate(name, tally.rate(name, property_report.confidence), _describe(name, rule_name), summary=summary)
    property_report.count(f"roots evaluated ({rule_name}, generated networks)", n_roots)
    # the per-layer rates are drawn once for all rules, from the rows, by properties.figures (layers x rules)
