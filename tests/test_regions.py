"""Region constraints and RegionRoots: every LP root is in the region, on its root equation, and nearest."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dtd
from dtd.regions import region_constraints
from properties.measure.checks import root_equation_residual, root_outcomes

LP_TOL = 1e-7  # HiGHS is asked for 1e-10 feasibility; constraints are checked with margin for O(10) magnitudes


def _case(seed=2, n=12):
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=seed, dtype=torch.float64)
    return net, net.sample_inputs(n, output=0, min_output=0.1, seed=0)


def test_region_constraints_reproduce_pre_activations_and_hold_at_the_input():
    net, x = _case()
    for layer in range(net.n_layers):
        a = net.activations(x)[layer]
        region = region_constraints(net, a, layer, 0)
        z = torch.einsum("nmd,nd->nm", region.A, a) + region.c
        zs = net.pre_activations(a, from_layer=layer)
        expected = torch.cat([*zs[:-1], zs[-1][:, :1]], 1)
        assert torch.allclose(z, expected, atol=1e-12, rtol=0)
        assert bool(((region.sign * z) >= 0).all())
        assert torch.allclose(z[:, region.output_row], zs[-1][:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_region_roots_are_in_region_on_their_equation_and_in_domain(norm):
    net, x = _case()
    dec = dtd.train_free(net, x, root_finder=dtd.RegionRoots(norm))
    for layer in dec.layers:
        k = layer.index
        valid = layer.root_valid
        assert bool(valid.any())
        assert bool((root_equation_residual(net, dec, k)[valid] <= LP_TOL).all())
        roots = layer.roots
        assert bool((roots[valid] >= -LP_TOL).all())
        region = region_constraints(net, layer.input, k, 0)
        z = torch.einsum("nmd,njd->njm", region.A, roots) + region.c.unsqueeze(1)
        assert bool(((region.sign.unsqueeze(1) * z)[valid] >= -LP_TOL).all())
        assert bool(root_outcomes(net, dec, layer=k).region_match[valid].all())
        counts = layer.root_set.counts()
        assert sum(counts.values()) == valid.numel()
        assert counts["trivial"] == int((~layer.carries_relevance).sum())


@pytest.mark.parametrize("norm, p", [("l1", 1), ("linf", float("inf"))])
def test_region_roots_are_no_farther_than_an_in_region_closed_form_root(norm, p):
    """Where the closed-form z+ root is in the region and the domain, the LP's optimum is at most as far."""
    net, x = _case(n=20)
    closed = dtd.train_free(net, x, rule="z+")
    finder = dtd.RegionRoots(norm)
    for k in range(net.n_layers):
        lay = closed.layers[k]
        found = finder.find(net, k, lay.input, lay.upper_relevance, output=0)
        inside = root_outcomes(net, closed, layer=k).region_match & (lay.roots >= 0).all(-1) & lay.root_valid
        assert bool(found.valid[inside].all())
        d_closed = (lay.roots - lay.input.unsqueeze(1)).norm(p=p, dim=-1)
        d_lp = (found.roots() - lay.input.unsqueeze(1)).norm(p=p, dim=-1)
        assert bool((d_lp[inside] <= d_closed[inside] + 1e-8).all())


def test_no_root_in_region_is_invalid_with_its_reason():
    first, top = nn.Linear(1, 1, dtype=torch.float64), nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        first.weight.fill_(1.0), first.bias.zero_(), top.weight.fill_(1.0), top.bias.zero_()
    net = dtd.ReLUNetwork([first, top])
    a = torch.tensor([[1.0]], dtype=torch.float64)
    # relevance 3 at a = 1 needs root = -2: outside the domain root >= 0
    found = dtd.RegionRoots().find(net, 0, a, torch.tensor([[3.0]], dtype=torch.float64), output=0)
    assert not bool(found.valid[0, 0]) and int(found.status[0, 0]) == 2
    assert found.counts()["infeasible"] == 1
    # dropping the domain does not help: at r = -2 the first neuron (active at a) would be inactive
    found = dtd.RegionRoots(nonnegative=False).find(net, 0, a, torch.tensor([[3.0]], dtype=torch.float64), output=0)
    assert not bool(found.valid[0, 0]) and int(found.status[0, 0]) == 2
    found = dtd.RegionRoots().find(net, 0, a, torch.tensor([[1.0]], dtype=torch.float64), output=0)
    assert bool(found.valid[0, 0]) and torch.allclose(found.roots()[0, 0], torch.zeros(1, dtype=torch.float64),
                                                      atol=1e-9)


def test_region_roots_refuse_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        dtd.RegionRoots("l2")
    net, x = _case(n=2)
    with pytest.raises(ValueError, match="non-negative"):
        dtd.train_free(net, x - 10.0, root_finder=dtd.RegionRoots())


@pytest.mark.parametrize("norm, p", [("l1", 1), ("linf", float("inf"))])
def test_warm_started_lp_equals_independent_linprog(norm, p):
    """RegionLP re-solves from the last basis; scipy's linprog solves each LP from scratch: same optima."""
    import numpy as np

    from benchmarks.workloads import region_lp_reference
    from dtd.regions import RegionLP

    net, x = _case(n=15)
    dec = dtd.train_free(net, x)
    for k in (0, 2):
        lay = dec.layers[k]
        region = region_constraints(net, lay.input, k, 0)
        w = net.weight(k).numpy()
        for n in range(lay.input.shape[0]):
            a = lay.input[n].numpy()
            args = (a, region.A[n].numpy(), region.c[n].numpy(), region.sign[n].numpy())
            lp = RegionLP(*args, norm=norm, nonnegative=True)
            for j in np.nonzero(lay.upper_relevance[n].numpy())[0]:
                rhs = float(w[j] @ a - lay.upper_relevance[n, j])
                fast_status, fast = lp.nearest(w[j], rhs)
                slow_status, slow = region_lp_reference(*args, w[j], rhs, norm, True)
                assert fast_status == slow_status
                if fast is not None:
                    assert abs(np.linalg.norm(fast - a, p) - np.linalg.norm(slow - a, p)) <= 1e-8


def test_region_output_root_zeroes_the_output_inside_the_region():
    net, x = _case(n=20)
    exists, roots, status = dtd.regions.region_output_root(net, x, layer=0, output=0)
    assert bool(exists.any())
    assert torch.equal(exists, status == 0)
    z_out = net.pre_activations(roots[exists])[-1][:, 0]
    assert torch.allclose(z_out, torch.zeros_like(z_out), atol=LP_TOL)
    region = region_constraints(net, x, 0, 0)
    z = torch.einsum("nmd,nd->nm", region.A, roots) + region.c
    assert bool(((region.sign * z)[exists] >= -LP_TOL).all())
    assert torch.equal(roots[~exists], x[~exists])


def test_region_output_root_absent_when_the_bias_keeps_the_output_positive():
    layer = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(1.0), layer.bias.fill_(1.0)  # f(r) = relu(r + 1) > 0 for every r >= 0
    net = dtd.ReLUNetwork([layer])
    exists, _, status = dtd.regions.region_output_root(net, torch.tensor([[2.0]], dtype=torch.float64))
    assert not bool(exists[0]) and int(status[0]) == 2
    exists, roots, _ = dtd.regions.region_output_root(net, torch.tensor([[2.0]], dtype=torch.float64),
                                                      nonnegative=False)
    assert bool(exists[0]) and torch.allclose(roots, torch.tensor([[-1.0]], dtype=torch.float64))
