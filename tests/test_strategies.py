"""properties.generate.strategies: what they generate, and the arguments they refuse."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dtd
from dtd import rules as R
from properties.generate.strategies import Case, cases, networks, nonnegative_inputs, rules


@settings(max_examples=25)
@given(net=networks(depth=(2, 3), width=(3, 5), input_size=(4, 6), outputs=(2, 3), init="torch", dtype=torch.float32))
def test_networks_respect_their_bounds(net):
    assert isinstance(net, dtd.ReLUNetwork)
    assert 2 <= net.n_layers <= 3
    assert 4 <= net.in_features <= 6 and 2 <= net.out_features <= 3
    assert all(3 <= w <= 5 for w in net.sizes[1:-1])
    assert net.dtype == torch.float32


@settings(max_examples=25)
@given(case=cases(n=(3, 7), min_output=0.05))
def test_cases_hold_live_outputs_and_nonnegative_inputs(case):
    assert isinstance(case, Case)
    assert 3 <= case.x.shape[0] <= 7
    assert bool((case.x >= 0).all())
    assert bool((case.net(case.x)[:, case.output] > 0.05).all())
    assert case.x.dtype == torch.float64
    assert "network sizes" in case.describe()


@settings(max_examples=10)
@given(data=st.data())
def test_nonnegative_inputs_and_rules_generate(data):
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    x = data.draw(nonnegative_inputs(net, n=5, min_output=0.1))
    assert x.shape == (5, 10) and bool((net(x)[:, 0] > 0.1).all())
    rule = data.draw(rules(include_pinv=True))
    assert isinstance(rule, dtd.rules.Rule)


def test_networks_are_reproducible_from_their_draws():
    from hypothesis import find

    first = find(networks(depth=3), lambda net: net.in_features > 3)
    again = find(networks(depth=3), lambda net: net.in_features > 3)
    assert torch.equal(first.weight(0), again.weight(0))


def test_networks_do_not_touch_global_rng():
    torch.manual_seed(3)
    state = torch.get_rng_state()

    @settings(max_examples=5)
    @given(net=networks())
    def draw(net):
        pass

    draw()
    assert torch.equal(torch.get_rng_state(), state)


def test_zb_rule_box_holds_the_batch():
    x = torch.tensor([[0.0, 2.3], [1.0, 0.5]])
    rule = R.ZB.for_data(x)
    assert float(rule.low) == 0.0 and float(rule.high) == 3.0
    rule.check_domain(x)


@pytest.mark.parametrize(
    "make, exception, message",
    [
        (lambda: networks(depth=0), ValueError, "depth must be >= 1"),
        (lambda: networks(width=(5, 2)), ValueError, "min > max"),
        (lambda: networks(depth=(1, 2, 3)), TypeError, "pair of ints"),
        (lambda: networks(depth=True), TypeError, "depth"),
        (lambda: networks(init="xavier"), ValueError, "init must be one of"),
        (lambda: networks(init=()), ValueError, "init must be one of"),
        (lambda: networks(dtype=torch.int64), TypeError, "floating"),
        (lambda: nonnegative_inputs("net"), TypeError, "ReLUNetwork"),
        (lambda: nonnegative_inputs(dtd.ReLUNetwork.random([3, 2], seed=0), output=2), ValueError, "output"),
        (lambda: nonnegative_inputs(dtd.ReLUNetwork.random([3, 2], seed=0), n=0), ValueError, "n must be >= 1"),
        (lambda: cases(outputs=(0, 2)), ValueError, "outputs must be >= 1"),
    ],
)
def test_strategies_refuse_bad_arguments(make, exception, message):
    from hypothesis import find

    with pytest.raises(exception, match=message):
        find(make(), lambda value: True)
