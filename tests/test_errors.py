"""Every bad input gets a clear TypeError/ValueError naming the problem."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dtd
from dtd import rules as R

NET = dtd.ReLUNetwork.random([4, 5, 3], seed=1)
X = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))


def _nan_weights():
    net = dtd.ReLUNetwork.random([4, 5, 3], seed=1)
    with torch.no_grad():
        net.layers[1].weight[0, 0] = float("nan")
    return net


TRAIN_FREE_CASES = [
    ("net is a Sequential", lambda: dtd.train_free(nn.Sequential(nn.Linear(4, 3)), X), TypeError, "from_sequential"),
    ("x is a list", lambda: dtd.train_free(NET, X.tolist()), TypeError, "torch.Tensor"),
    ("x 1-D", lambda: dtd.train_free(NET, X[0]), ValueError, r"shape \(batch, 4\)"),
    ("x wrong width", lambda: dtd.train_free(NET, torch.rand(6, 3)), ValueError, r"shape \(batch, 4\)"),
    ("empty batch", lambda: dtd.train_free(NET, torch.rand(0, 4)), ValueError, "empty batch"),
    ("x has NaN", lambda: dtd.train_free(NET, torch.tensor([[0.1, math.nan, 0.2, 0.3]])), ValueError, "NaN"),
    ("x has inf", lambda: dtd.train_free(NET, torch.tensor([[0.1, math.inf, 0.2, 0.3]])), ValueError, "infinite"),
    ("x float64, net float32", lambda: dtd.train_free(NET, X.double()), TypeError, "dtype"),
    ("weights NaN", lambda: dtd.train_free(_nan_weights(), X), ValueError, "weight of layer 1"),
    ("output too large", lambda: dtd.train_free(NET, X, output=3), ValueError, r"output must be in \[0, 2\]"),
    ("output negative", lambda: dtd.train_free(NET, X, output=-1), ValueError, "output must be in"),
    ("output float", lambda: dtd.train_free(NET, X, output=1.0), TypeError, "output must be an int"),
    ("z+ negative input", lambda: dtd.train_free(NET, X - 0.5, rule="z+"), ValueError, "non-negative"),
    ("gamma negative input", lambda: dtd.train_free(NET, X - 0.5, rule=R.Gamma(1.0)), ValueError, "non-negative"),
    ("zB outside box", lambda: dtd.train_free(NET, X * 10, rule=[R.ZB(0, 1), "z+"]), ValueError, r"in \[low, high\]"),
    ("zB bound length", lambda: dtd.train_free(NET, X, rule=[R.ZB(torch.zeros(3), 1.0), "z+"]), ValueError,
     "3 entries"),
    ("unknown rule", lambda: dtd.train_free(NET, X, rule="lrp-eps"), ValueError, "unknown rule 'lrp-eps'"),
    ("rule not a rule", lambda: dtd.train_free(NET, X, rule=3), TypeError, "rule"),
    ("too few layer rules", lambda: dtd.train_free(NET, X, rule=["z+"]), ValueError, "1 rules for a network with 2"),
    ("rule and finder", lambda: dtd.train_free(NET, X, rule="z+", root_finder=dtd.LinearRoots()), ValueError,
     "not both"),
    ("finder not a finder", lambda: dtd.train_free(NET, X, root_finder="z+"), TypeError, "RootFinder"),
]


@pytest.mark.parametrize("call, exception, message", [pytest.param(*c[1:], id=c[0]) for c in TRAIN_FREE_CASES])
def test_train_free_refuses(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


RULE_CASES = [
    ("gamma < 0", lambda: R.Gamma(-0.1), ValueError, "gamma must be >= 0"),
    ("gamma nan", lambda: R.Gamma(float("nan")), ValueError, "finite"),
    ("gamma str", lambda: R.Gamma("1"), TypeError, "gamma must be a number"),
    ("gamma inf", lambda: R.Gamma(math.inf), ValueError, "finite"),
    ("zB low > high", lambda: R.ZB(1.0, 0.0), ValueError, "low must be <= high"),
    ("zB per-feature low > high", lambda: R.ZB(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])), ValueError,
     "low must be <= high"),
    ("zB 2-D bound", lambda: R.ZB(torch.zeros(2, 2), 1.0), ValueError, "1-D"),
    ("zB shapes", lambda: R.ZB(torch.zeros(2), torch.ones(3)), ValueError, "different shapes"),
    ("zB inf", lambda: R.ZB(0.0, math.inf), ValueError, "finite"),
    ("zB bool", lambda: R.ZB(False, 1.0), TypeError, "number or a tensor"),
    ("ensure unknown", lambda: R.Rule.ensure("z-"), ValueError, "known rules"),
    ("ensure int", lambda: R.Rule.ensure(0), TypeError, "str or a dtd.rules.Rule"),
    ("finder eps", lambda: dtd.LinearRoots("z+", eps=-1.0), ValueError, "eps"),
    ("finder eps str", lambda: dtd.LinearRoots("z+", eps="1e-6"), TypeError, "eps must be a number"),
    ("finder empty", lambda: dtd.LinearRoots([]), TypeError, "non-empty"),
]


@pytest.mark.parametrize("call, exception, message", [pytest.param(*c[1:], id=c[0]) for c in RULE_CASES])
def test_rules_refuse(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


NETWORK_CASES = [
    ("sizes too short", lambda: dtd.ReLUNetwork.random([4], seed=0), ValueError, "at least one layer"),
    ("sizes zero", lambda: dtd.ReLUNetwork.random([4, 0], seed=0), ValueError, ">= 1"),
    ("sizes str", lambda: dtd.ReLUNetwork.random("44", seed=0), TypeError, "sequence of ints"),
    ("seed negative", lambda: dtd.ReLUNetwork.random([4, 2], seed=-1), ValueError, "seed"),
    ("seed float", lambda: dtd.ReLUNetwork.random([4, 2], seed=1.5), TypeError, "seed"),
    ("init unknown", lambda: dtd.ReLUNetwork.random([4, 2], seed=0, init="xavier"), ValueError, "init must be one of"),
    ("dtype int", lambda: dtd.ReLUNetwork.random([4, 2], seed=0, dtype=torch.int32), TypeError, "floating"),
    ("no layers", lambda: dtd.ReLUNetwork([]), ValueError, "at least one"),
    ("mismatched layers", lambda: dtd.ReLUNetwork([nn.Linear(3, 4), nn.Linear(5, 1)]), ValueError, "expects 5"),
    ("sample n=0", lambda: NET.sample_inputs(0), ValueError, "n must be >= 1"),
    ("sample output", lambda: NET.sample_inputs(3, output=7), ValueError, "output"),
    ("sample min_output nan", lambda: NET.sample_inputs(3, min_output=math.nan), ValueError, "min_output"),
    ("sample seed and generator", lambda: NET.sample_inputs(3, seed=1, generator=torch.Generator()), ValueError,
     "not both"),
    ("sample generator type", lambda: NET.sample_inputs(3, generator=1), TypeError, "torch.Generator"),
    ("gradient output", lambda: NET.input_gradient(X, 5), ValueError, "output"),
    ("subnetwork layer", lambda: NET.subnetwork(2), ValueError, r"\[0, 1\]"),
]


@pytest.mark.parametrize("call, exception, message", [pytest.param(*c[1:], id=c[0]) for c in NETWORK_CASES])
def test_network_refuses(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_rule_ensure_maps_every_name():
    expected = {"z+": R.ZPlus, "w2": R.WSquare, "gamma": R.Gamma, "x": R.LRP0, "0": R.LRP0, "zB": R.ZB, "pinv": R.Pinv}
    for name, cls in expected.items():
        assert type(R.Rule.ensure(name)) is cls
    rule = R.Gamma(2.0)
    assert R.Rule.ensure(rule) is rule
    assert R.Gamma(2.0) == R.Gamma(2) and R.Gamma(2.0) != R.Gamma(1.0)


# One rule at every call site: a wrong type is a TypeError, a wrong value a ValueError (dtd.validation).
CALL_SITE_CASES = [
    ("sampling n_directions float", lambda: dtd.RegionSamplingRoots(n_directions=1.5), TypeError,
     "n_directions must be an int"),
    ("sampling n_directions 0", lambda: dtd.RegionSamplingRoots(n_directions=0), ValueError,
     "n_directions must be >= 1"),
    ("sampling seed 2**63", lambda: dtd.RegionSamplingRoots(seed=2**63), ValueError, "seed must be <="),
    ("sampling seed negative", lambda: dtd.RegionSamplingRoots(seed=-1), ValueError, "seed must be >= 0"),
    ("sampling nonnegative 'no'", lambda: dtd.RegionSamplingRoots(nonnegative="no"), TypeError,
     "nonnegative must be True or False"),
    ("sampling memory_budget", lambda: dtd.RegionSamplingRoots(memory_budget=0), ValueError,
     "memory_budget must be >= 1"),
    ("region nonnegative 1", lambda: dtd.RegionRoots(nonnegative=1), TypeError, "nonnegative must be True or False"),
    ("walk n_chains bool", lambda: dtd.MetropolisHastingsRoots(n_chains=True), TypeError, "n_chains must be an int"),
    ("walk n_steps 0", lambda: dtd.MetropolisHastingsRoots(n_steps=0), ValueError, "n_steps must be >= 1"),
    ("walk scale 0", lambda: dtd.MetropolisHastingsRoots(scale=0.0), ValueError, "scale must be > 0"),
    ("walk scale str", lambda: dtd.MetropolisHastingsRoots(scale="1"), TypeError, "scale must be a number"),
    ("walk acceptance 1", lambda: dtd.MetropolisHastingsRoots(target_acceptance=1.0), ValueError,
     "target_acceptance must be < 1"),
    ("walk seed float", lambda: dtd.MetropolisHastingsRoots(seed=0.5), TypeError, "seed must be an int"),
    ("full_backward budget 0", lambda: dtd.full_backward(NET, X, root_finder=dtd.LinearRoots(), budget=0), ValueError,
     "budget must be >= 1"),
    ("full_backward budget float", lambda: dtd.full_backward(NET, X, root_finder=dtd.LinearRoots(), budget=1e6),
     TypeError, "budget must be an int"),
    ("estimate_cost negative", lambda: dtd.estimate_cost(NET, -5), ValueError, "n_points must be >= 0"),
    ("estimate_cost float", lambda: dtd.estimate_cost(NET, 2.0), TypeError, "n_points must be an int"),
    ("layer str", lambda: NET.check_layer("0"), TypeError, "layer must be an int"),
    ("sample min_output str", lambda: NET.sample_inputs(3, min_output="0.1"), TypeError, "min_output must be a number"),
    ("region_output_root layer 5", lambda: dtd.regions.region_output_root(NET, X, layer=5), ValueError,
     r"layer must be in \[0, 1\]"),
    ("region_output_root output 9", lambda: dtd.regions.region_output_root(NET, X, output=9), ValueError,
     "output must be in"),
    ("region_output_root nonnegative", lambda: dtd.regions.region_output_root(NET, X, nonnegative="yes"), TypeError,
     "nonnegative must be True or False"),
    ("gradient from_layer 5", lambda: NET.input_gradient(X, 0, from_layer=5), ValueError, "from_layer must be in"),
]


@pytest.mark.parametrize("call, exception, message", [pytest.param(*c[1:], id=c[0]) for c in CALL_SITE_CASES])
def test_call_sites_refuse(call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_suite_call_sites_refuse():
    from properties.generate import strategies
    from properties.measure import checks, stats

    dec = dtd.train_free(NET, X)
    with pytest.raises(TypeError, match="atol must be a number"):
        checks.root_outcomes(NET, dec, atol="1e-6")
    with pytest.raises(ValueError, match="memory_budget must be >= 1"):
        checks.root_outcomes(NET, dec, memory_budget=0)
    with pytest.raises(TypeError, match="confidence must be a number"):
        stats.Rate(1, 2, confidence=True)
    with pytest.raises(TypeError, match="count must be an int"):
        strategies.sample_cases(1.0, seed=0)
    with pytest.raises(ValueError, match="count must be >= 0"):
        strategies.sample_cases(-1, seed=0)
    with pytest.raises(TypeError, match="depth must be an int"):
        strategies.CaseSpace(depth=True)
    with pytest.raises(TypeError, match="min_output must be a number"):
        strategies.CaseSpace(min_output="0")


def test_a_box_rule_above_the_input_names_the_layer_and_the_recipe():
    first, second = nn.Linear(4, 5), nn.Linear(5, 3)
    with torch.no_grad():
        first.weight.fill_(1.0)  # hidden activations up to 4, outside zB's default box [0, 1]
        first.bias.zero_()
    net = dtd.ReLUNetwork.from_sequential(nn.Sequential(first, nn.ReLU(), second))
    with pytest.raises(ValueError,
                       match=r"layer 1 \(the activations entering layer 1\): rule "
                             r"ZB.*\[dtd.rules.ZB\(low, high\)\] \+ \['z\+'\]"):
        dtd.train_free(net, X, rule="zB")
    dtd.train_free(net, X, rule=[R.ZB(0, 1), "z+"])  # the recipe the message names works
