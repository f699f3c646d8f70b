"""The sampling finders (RegionSamplingRoots, MetropolisHastingsRoots): every neuron gets its own in-region root;
the batched rays equal a per-point loop."""

from __future__ import annotations

import pytest
import torch

import dtd
from benchmarks.workloads import region_sampling_reference
from properties.measure.checks import root_equation_residual, root_outcomes


def _case(n=10):
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2, dtype=torch.float64)
    return net, net.sample_inputs(n, output=0, min_output=0.1, seed=0)


def test_batched_rays_equal_the_per_point_loop():
    net, x = _case(n=6)
    dec = dtd.train_free(net, x)
    finder = dtd.RegionSamplingRoots(16, seed=3)
    for k in range(net.n_layers):
        lay = dec.layers[k]
        fast = finder.find(net, k, lay.input, lay.upper_relevance, output=0)
        roots, valid = region_sampling_reference(finder, net, k, lay.input, lay.upper_relevance)
        assert torch.equal(fast.valid, valid), f"layer {k}"
        assert torch.allclose(fast.roots()[valid], roots[valid], atol=1e-12, rtol=0), f"layer {k}"


SAMPLERS = [dtd.RegionSamplingRoots(64), dtd.MetropolisHastingsRoots(8, 60, seed=1)]


@pytest.mark.parametrize("finder", SAMPLERS, ids=lambda f: type(f).__name__)
def test_every_root_is_in_the_region_and_solves_its_own_equation(finder):
    net, x = _case(n=30)
    dec = dtd.train_free(net, x, root_finder=finder)
    own_roots_differ = 0
    for lay in dec.layers:
        k = lay.index
        valid = lay.root_valid
        assert bool(valid[lay.carries_relevance].float().mean() > 0.5)
        assert bool(root_outcomes(net, dec, layer=k).region_match[valid].all())
        assert bool((root_equation_residual(net, dec, k)[valid] <= 1e-9).all())
        assert bool((lay.roots[valid] >= -1e-12).all())
        # neurons get roots of their own: two relevant neurons of one point sit at different points
        both = valid & lay.carries_relevance
        for n in range(x.shape[0]):
            idx = both[n].nonzero().squeeze(1)
            if idx.numel() >= 2:
                own_roots_differ += int(not torch.allclose(lay.roots[n, idx[0]], lay.roots[n, idx[1]]))
    assert own_roots_differ > 0


@pytest.mark.parametrize("make", [lambda: dtd.RegionSamplingRoots(32, seed=1),
                                  lambda: dtd.MetropolisHastingsRoots(4, 20, seed=1)])
def test_directions_are_reproducible_and_leave_the_global_rng_alone(make):
    net, x = _case(n=5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = dtd.train_free(net, x, root_finder=make())
    b = dtd.train_free(net, x, root_finder=make())
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(la.roots, lb.roots) for la, lb in zip(a.layers, b.layers, strict=True))


@pytest.mark.parametrize(
    "kwargs, exception, message",
    [({"n_directions": 0}, ValueError, "n_directions"), ({"seed": -1}, ValueError, "seed"),
     ({"n_directions": 2.5}, TypeError, "n_directions")],
)
def test_region_sampling_refuses_bad_arguments(kwargs, exception, message):
    with pytest.raises(exception, match=message):
        dtd.RegionSamplingRoots(**kwargs)


def test_the_walk_reaches_the_top_layers_hinge_root_and_adapts_its_steps():
    # the top layer's root lies on the region's own boundary (the output's hinge): only the clipped moves reach it
    net, x = _case(n=20)
    dec = dtd.train_free(net, x, root_finder=dtd.MetropolisHastingsRoots(8, 60))
    top = dec.layers[-1]
    assert bool(top.root_valid[:, 0].all())
    acceptance = top.root_set.acceptance
    assert bool(((acceptance > 0.1) & (acceptance < 0.7)).all()), acceptance


def test_walk_roots_are_the_nearest_crossing_found_no_farther_than_a_longer_walk_finds():
    net, x = _case(n=10)
    dec = dtd.train_free(net, x)
    lay = dec.layers[1]
    short = dtd.MetropolisHastingsRoots(8, 30, seed=2).find(net, 1, lay.input, lay.upper_relevance)
    long = dtd.MetropolisHastingsRoots(8, 90, seed=2).find(net, 1, lay.input, lay.upper_relevance)
    both = short.valid & long.valid & lay.carries_relevance
    dist_short = (short.roots() - lay.input.unsqueeze(1)).norm(dim=-1)
    dist_long = (long.roots() - lay.input.unsqueeze(1)).norm(dim=-1)
    # the longer walk repeats the shorter one's moves (same stream) and then keeps the nearest crossing
    assert bool((dist_long[both] <= dist_short[both] + 1e-12).all())
    assert bool((long.valid | ~short.valid).all())


@pytest.mark.parametrize(
    "kwargs, exception, message",
    [
        ({"n_chains": 0}, ValueError, "n_chains"),
        ({"n_steps": 1.5}, TypeError, "n_steps"),
        ({"scale": 0.0}, ValueError, "scale"),
        ({"scale": float("nan")}, ValueError, "scale"),
        ({"target_acceptance": 1.0}, ValueError, "target_acceptance"),
        ({"seed": -2}, ValueError, "seed"),
    ],
)
def test_walk_refuses_bad_arguments(kwargs, exception, message):
    with pytest.raises(exception, match=message):
        dtd.MetropolisHastingsRoots(**kwargs)


def test_walk_refuses_negative_inputs_in_the_nonnegative_domain():
    net = dtd.ReLUNetwork.random([3, 2], seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="non-negative"):
        dtd.train_free(net, -torch.ones(2, 3, dtype=torch.float64), root_finder=dtd.MetropolisHastingsRoots(2, 2))
