"""full_backward: the recursive DTD against a per-point loop, its identities, its budget and its errors."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

import dtd
from dtd.tolerances import pattern_tol
from tests import reference

ATOL64 = 1e-10  # float64, batched vs looped: summation order only (relevances are O(1))
EXACT64 = 1e-12  # float64, the same arithmetic in another order


def _case(sizes=(5, 4, 4, 2), n=8, seed=1):
    net = dtd.ReLUNetwork.random(list(sizes), seed=seed, dtype=torch.float64)
    return net, net.sample_inputs(n, output=0, min_output=0.05, seed=0)


FINDERS = {
    "z+": lambda x: dtd.LinearRoots("z+"),
    "w2": lambda x: dtd.LinearRoots("w2"),
    "zB-gamma-z+": lambda x: dtd.LinearRoots([dtd.rules.ZB(0.0, float(x.max()) + 1), "gamma", "z+"]),
    "region-l1": lambda x: dtd.RegionRoots(),
}


@pytest.mark.parametrize("name", list(FINDERS))
def test_full_backward_equals_the_per_point_recursion(name):
    net, x = _case()
    finder = FINDERS[name](x)
    fast = dtd.full_backward(net, x, root_finder=finder)
    for n in range(x.shape[0]):
        slow = reference.full_backward_point(net, finder, x[n].numpy(), 0, pattern_tol(torch.float64))
        assert torch.allclose(fast.relevance[n], torch.from_numpy(slow), atol=ATOL64, rtol=0), n


def test_one_layer_and_the_top_layer_are_train_free():
    one = dtd.ReLUNetwork.random([6, 3], seed=1, dtype=torch.float64)
    x = one.sample_inputs(10, output=1, min_output=0.01, seed=0)
    fb = dtd.full_backward(one, x, root_finder=dtd.LinearRoots("z+"), output=1)
    assert torch.allclose(fb.relevance, dtd.train_free(one, x, output=1).relevance, atol=EXACT64, rtol=0)
    net, x = _case(n=20)
    fb, tf = dtd.full_backward(net, x, root_finder=dtd.LinearRoots("z+")), dtd.train_free(net, x)
    assert torch.allclose(fb.layers[-1].relevance, tf.layers[-1].relevance, atol=EXACT64, rtol=0)
    assert float(fb.layers[-1].unresolved.abs().max()) <= EXACT64  # the top root zeroes the output


def test_in_region_roots_conserve_exactly_below_the_top():
    # below the top layer the relevance function is affine in the root's region, so its Taylor expansion is exact
    net, x = _case(sizes=(10, 10, 10, 10, 2), n=15, seed=2)
    fb = dtd.full_backward(net, x, root_finder=dtd.RegionRoots())
    lay = fb.layers[-2]
    complete = lay.root_valid.all(1)
    assert int(complete.sum()) >= 5
    assert float(lay.conservation_error[complete].abs().max()) <= 1e-8


def test_layers_account_for_every_number():
    net, x = _case(n=12)
    fb = dtd.full_backward(net, x, root_finder=dtd.RegionSamplingRoots(32))
    for lay, upper in pairwise(fb.layers):
        assert torch.equal(upper.relevance, lay.upper_relevance)  # the layer above's output relevance
    assert torch.allclose(fb.conservation_error, fb.output_value - fb.relevance.sum(1))
    for lay in fb.layers:
        dead = ~lay.carries_relevance | ~lay.root_valid
        assert bool((lay.unresolved[dead] == 0).all()) and bool((lay.gradient_scale[dead] == 0).all())
    assert fb.evaluations[0] == x.shape[0] and sum(fb.evaluations) <= fb.estimated_evaluations


def test_identical_rows_are_evaluated_once_and_get_identical_relevance():
    net, x = _case(n=4)
    doubled = torch.cat([x, x])
    fb = dtd.full_backward(net, doubled, root_finder=dtd.LinearRoots("z+"))
    single = dtd.full_backward(net, x, root_finder=dtd.LinearRoots("z+"))
    assert torch.equal(fb.relevance[:4], fb.relevance[4:])
    # the real activations are evaluated row by row (they are recorded); every forwarded root of the copy is reused
    for k in range(net.n_layers):
        assert fb.evaluations[k] - 8 == single.evaluations[k] - 4, k
    assert fb.reused > single.reused


def test_cost_estimate_and_budget():
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2, dtype=torch.float64)
    assert dtd.estimate_cost(net, 1) == 1 + 11 + 11 * 11 + 11 * 11 * 11  # widths 10, 10, 10, then the one output
    assert dtd.estimate_cost(net, 7) == 7 * 1464
    x = net.sample_inputs(3, output=0, seed=0)
    with pytest.raises(ValueError, match=r"up to 4,392 points .* budget of 4,000.*at most 2"):
        dtd.full_backward(net, x, root_finder=dtd.LinearRoots(), budget=4000)
    assert dtd.full_backward(net, x, root_finder=dtd.LinearRoots(), budget=None).relevance.shape == (3, 10)


def test_full_backward_refuses_bad_arguments_and_leaves_its_inputs_alone():
    net, x = _case(n=3)
    before = x.clone()
    with pytest.raises(TypeError, match="root_finder"):
        dtd.full_backward(net, x, root_finder="z+")
    with pytest.raises(TypeError, match="root_finder"):
        dtd.full_backward(net, x)  # no default: the caller chooses where relevance functions are expanded
    with pytest.raises(ValueError, match="budget"):
        dtd.full_backward(net, x, root_finder=dtd.LinearRoots(), budget=0)
    with pytest.raises(ValueError, match="output"):
        dtd.full_backward(net, x, root_finder=dtd.LinearRoots(), output=2)
    with pytest.raises(ValueError, match="non-negative"):
        dtd.full_backward(net, -x - 1, root_finder=dtd.RegionSamplingRoots(4))
    with pytest.raises(TypeError, match="ReLUNetwork"):
        dtd.full_backward(torch.nn.Linear(5, 2), x, root_finder=dtd.LinearRoots())
    dtd.full_backward(net, x, root_finder=dtd.LinearRoots())
    assert torch.equal(x, before)
