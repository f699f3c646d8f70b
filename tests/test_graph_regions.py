"""The in-region root finders on graph networks: dense weights, region rows (ReLU and argmax pattern) and the cap.

References: the dense engine bit for bit on chains of Linear layers (the
graph engine is to replace it without moving a rate), the dense lowering of
``from_sequential`` for a CNN without max pooling (the same function as a
dense ReLUNetwork), unit vectors pushed through each layer's own affine
computation for the weights, the graph's forward at points inside the
region for the region rows, explicit loops over each window for the max
pools, and HiGHS's rows built densely as before for the sparse LP rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dtd
from dtd.graph import DENSE_LAYER_LIMIT, MaxPoolNode, pool_windows
from dtd.lowering import lower_module
from dtd.regions import lp_rows, region_constraints, region_output_root, region_rows
from dtd.tolerances import equation_rtol, pattern_tol, region_slack
from properties.measure.checks import root_equation_residual, root_outcomes

from . import reference
from .graph_models import MODELS, SkipPastALayer, seeded

#: float64 agreement of two exact computations (composed maps against the forward, dense against graph lowering)
EXACT_RTOL = 1e-10
#: LP roots of the graph against those of the dense lowering (the constraint rows differ in the last bits)
ROOT_RTOL = 1e-9


def _inputs(shape, n, seed=0):
    return torch.rand((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _graph(name):
    build, shape = MODELS[name]
    return dtd.ReLUNetwork.from_module(seeded(build).double(), shape), shape


def _small_cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3))


# --------------------------------------------------------------------------- dense weights
@pytest.mark.parametrize("name", ["residual", "two_branches", "sequential_cnn", "conv1d"])
def test_weight_and_bias_are_the_layers_affine_map(name):
    net, _ = _graph(name)
    for k in range(net.n_layers):
        node = net.layer(k)
        d = net.in_features(k)

        def z(a, node=node, k=k):  # the layer's own affine computation of a flat input (its branches' operators, bias)
            return net._affine(
                node, dict(zip([b.source for b in node.branches], net.split_input(k, a), strict=True))
            ).flatten(1)

        zero = z(torch.zeros(1, d, dtype=torch.float64))
        expected = z(torch.eye(d, dtype=torch.float64)) - zero  # row i: the map of unit vector i
        weight = net.weight(k)
        assert weight.shape == (net.out_features_of(k), d)
        assert torch.allclose(weight, expected.T, atol=1e-12, rtol=0), f"layer {k}"
        assert torch.allclose(net.bias(k), zero[0], atol=1e-12, rtol=0)
        assert net.weight(k) is weight  # built once


# --------------------------------------------------------------------------- chains: the dense engine, bit for bit
def _chains():
    for sizes, final_relu in [([10, 10, 10, 10, 2], True), ([10, 10, 10, 10, 2], False), ([6, 4, 3], False),
                              ([5, 7, 3], True)]:
        dense = dtd.ReLUNetwork.random(sizes, seed=2).double()
        dense = dtd.ReLUNetwork(list(dense.layers), final_relu=final_relu)
        yield dense, lower_module(dense.to_sequential(), (sizes[0],))


def test_chain_graph_regions_equal_the_dense_engines_bit_for_bit():
    for dense, graph in _chains():
        assert graph.as_dense_chain() is not None
        x = _inputs((dense.in_features,), 7, seed=1)
        per_point = torch.arange(7) % dense.out_features
        for k, a in enumerate(dense.activations(x)[:-1]):
            assert torch.equal(graph.weight(k), dense.weight(k)) and torch.equal(graph.bias(k), dense.bias(k))
            assert region_rows(graph, k) == region_rows(dense, k) == sum(dense.sizes[k + 1 :])
            for output in (0, dense.out_features - 1, per_point):
                want, got = region_constraints(dense, a, k, output), region_constraints(graph, a, k, output)
                assert torch.equal(got.A, want.A) and torch.equal(got.c, want.c) and torch.equal(got.sign, want.sign)
                assert got.output_row == want.output_row
                for n in range(a.shape[0]):  # the slow reference, one point at a time, written out in numpy
                    o = int(output[n]) if isinstance(output, torch.Tensor) else output
                    A, c, sign, row = reference.region_constraints(dense, a[n].numpy(), k, o)
                    assert np.allclose(got.A[n].numpy(), A, rtol=1e-12, atol=1e-12) and np.allclose(
                        got.c[n].numpy(), c, rtol=1e-12, atol=1e-12
                    )
                    assert np.array_equal(got.sign[n].numpy(), sign) and got.output_row == row


FINDERS = [dtd.RegionRoots("l1"), dtd.RegionRoots("linf"), dtd.RegionSamplingRoots(32, seed=1),
           dtd.MetropolisHastingsRoots(4, 15, seed=1)]


@pytest.mark.parametrize("finder", FINDERS, ids=lambda f: f.describe(0))
def test_chain_graph_finders_equal_the_dense_finders_bit_for_bit(finder):
    for dense, graph in _chains():
        x = _inputs((dense.in_features,), 5, seed=3)
        for output in (0, torch.tensor([0, 1, 1, 0, 1]) % dense.out_features):
            want = dtd.train_free(dense, x, root_finder=finder, output=output)
            got = dtd.train_free(graph, x, root_finder=finder, output=output)
            assert torch.equal(got.relevance, want.relevance)
            for lw, lg in zip(want.layers, got.layers, strict=True):
                assert torch.equal(lg.roots, lw.roots) and torch.equal(lg.root_valid, lw.root_valid)
                assert torch.equal(lg.relevance, lw.relevance) and lg.method == lw.method
                if isinstance(finder, dtd.RegionRoots):
                    assert torch.equal(lg.root_set.status, lw.root_set.status)
                if isinstance(finder, dtd.MetropolisHastingsRoots):
                    assert torch.equal(lg.root_set.acceptance, lw.root_set.acceptance)


# ---------------------------------------------------------------------- a CNN: the dense lowering of the same function
@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_region_roots_on_a_cnn_equal_those_of_its_dense_lowering(norm):
    model = seeded(_small_cnn).double()
    dense = dtd.ReLUNetwork.from_sequential(model, input_shape=(2, 6, 6))
    graph = dtd.ReLUNetwork.from_module(model, (2, 6, 6))
    assert isinstance(graph, dtd.GraphNetwork) and graph.n_layers == dense.n_layers
    x = _inputs((2, 6, 6), 2, seed=1)
    finder = dtd.RegionRoots(norm)
    reference = dtd.train_free(dense, x, root_finder=finder)
    solved = 0
    for lay in reference.layers:  # the same inputs and relevances into both: only the rows' last bits differ
        k = lay.index
        want = finder.find(dense, k, lay.input, lay.upper_relevance, output=0)
        got = finder.find(graph, k, lay.input, lay.upper_relevance, output=0)
        assert torch.equal(got.status, want.status), f"layer {k}"
        scale = want.roots().abs().max()
        assert float((got.roots() - want.roots()).abs().max() / scale) <= ROOT_RTOL, f"layer {k}"
        solved += int((want.status == dtd.regions.LPStatus.SOLVED).sum())
    assert solved > 0
    whole = dtd.train_free(graph, x, root_finder=finder)
    want = reference.relevance.flatten(1)
    assert float((whole.relevance.flatten(1) - want).abs().max() / want.abs().max()) <= ROOT_RTOL


# --------------------------------------------------------------------------- region rows against the network
def _window_reference(node: MaxPoolNode, source: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
    """``z[argmax] - z[e]`` per output for each other element ``e`` of its window, by explicit loops over the
    pooling's parameters (window order: the kernel's, row-major; ``K - 1`` slots, missing ones 0) -- independent
    of :func:`dtd.graph.pool_windows`.  A min pooling's slice (``node.signs`` -1) has ``z[e] - z[argmin]``."""
    n = source.shape[0]
    spatial_in, spatial_out = tuple(source.shape[-node.dim :]), tuple(node.shape[-node.dim :])
    channels = int(np.prod(source.shape[1 : source.dim() - node.dim]))
    signs = (
        [1.0] * channels if node.signs is None else [s for s in node.signs for _ in range(channels // len(node.signs))]
    )
    plane_in = source.reshape(n, channels, -1)
    chosen = argmax.reshape(n, channels, -1)
    windows = []
    for o in np.ndindex(*spatial_out):
        ranges = []
        for d in range(node.dim):
            if node.output_size is not None:
                lo, hi = (o[d] * spatial_in[d]) // spatial_out[d], -((-(o[d] + 1) * spatial_in[d]) // spatial_out[d])
                ranges.append(list(range(lo, hi)))
            else:
                start = o[d] * node.stride[d] - node.padding[d]
                ranges.append(
                    [
                        e
                        for e in (start + t * node.dilation[d] for t in range(node.kernel_size[d]))
                        if 0 <= e < spatial_in[d]
                    ]
                )
        windows.append([int(np.ravel_multi_index(tuple(r[i] for r, i in zip(ranges, idx, strict=True)), spatial_in))
                        for idx in np.ndindex(*[len(r) for r in ranges])])
    slots = max(len(w) for w in windows) - 1
    out = torch.zeros(n, channels, len(windows), slots, dtype=source.dtype)
    for i in range(n):
        for ch in range(channels):
            for p, window in enumerate(windows):
                top = int(chosen[i, ch, p])
                assert top in window
                others = [e for e in window if e != top]
                for slot, e in enumerate(others):
                    out[i, ch, p, slot] = signs[ch] * (plane_in[i, ch, top] - plane_in[i, ch, e])
    return out.reshape(n, -1)


def _forward_at(net, k, r, base, points):
    """Every live node's value at layer inputs ``r`` (the graph's own forward, other activations from ``base``)."""
    overridden, live = net.live_nodes(k)
    values = dict(zip([b.source for b in net.layer(k).branches], net.split_input(k, r), strict=True))
    argmax: dict = {}
    for node in live:
        for s in net.sources(node):
            if s not in values:
                values[s] = base[0][s].index_select(0, points)
        net._compute(node, values, argmax, check=False)
    return values, argmax


@pytest.mark.parametrize("name", ["residual", "sequential_cnn", "two_branches", "conv1d", "skip_past", "leaky_pools"])
def test_region_rows_are_the_networks_pre_activations_and_window_gaps_inside_the_region(name):
    if name == "skip_past":
        shape = (2, 4, 4)
        net = dtd.ReLUNetwork.from_module(seeded(SkipPastALayer).double(), shape)
    else:
        net, shape = _graph(name)
    n = 2
    x = _inputs(shape, n, seed=4)
    base = net.run(x)
    output = net(x).argmax(1)
    checked_points = 0
    for k in range(net.n_layers):
        a = net.layer_input(base[0], k)
        region = region_constraints(net, a, k, output, base=base)
        assert region.A.shape == (n, region.A.shape[1], a.shape[1])
        assert sum(stop - start for _, _, start, stop in region.blocks) == region.A.shape[1]
        z_a = torch.einsum("nmd,nd->nm", region.A, a) + region.c
        assert bool((region.sign * z_a >= -1e-12).all()), f"layer {k}: the input is outside its own region"
        generator = torch.Generator().manual_seed(k)
        for scale in (1e-3, 1e-5, 1e-7):  # points near a; those inside the region (strictly) must be reproduced
            r = a + scale * torch.randn(a.shape, generator=generator, dtype=torch.float64) * a.abs().max()
            z_r = torch.einsum("nmd,nd->nm", region.A, r) + region.c
            inside = ((region.sign * z_r > 0) | (region.sign == 0) | ((region.A == 0).all(-1) & (region.c == 0))).all(1)
            points = torch.arange(n)
            values, argmax = _forward_at(net, k, r, base, points)
            for kind, node_id, start, stop in region.blocks:
                node = net.nodes[node_id]
                if kind == "relu":
                    expected = values[node.source].flatten(1)
                elif kind == "max pool":
                    expected = _window_reference(node, values[node.source], base[1][node_id])
                    assert torch.equal(argmax[node_id][inside], base[1][node_id][inside]), f"layer {k}: argmax moved"
                else:
                    expected = values[node_id].flatten(1).gather(1, output.unsqueeze(1))
                got = z_r[:, start:stop]
                if kind == "max pool":  # slots a smaller window lacks are rows of zeros
                    got = got * (region.sign[:, start:stop] != 0)
                    expected = expected * (region.sign[:, start:stop] != 0)
                assert got.shape == expected.shape
                if got.shape[1] == 0:  # windows of one element: no comparison to make
                    continue
                scale_ = expected.abs().max().clamp_min(1.0)
                error = ((got - expected).abs().amax(1) / scale_)[inside]
                assert bool((error <= EXACT_RTOL).all()), f"layer {k}, {kind} node {node_id}: {error.max():.3g}"
            checked_points += int(inside.sum())
    assert checked_points >= net.n_layers * n  # at least one scale per layer kept every point inside


def test_pool_windows_hold_exactly_the_elements_each_max_pool_output_takes():
    pools = [
        MaxPoolNode(1, (), 0, 2, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1)),
        MaxPoolNode(1, (), 0, 2, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
        MaxPoolNode(1, (), 0, 2, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), ceil_mode=True),
        MaxPoolNode(1, (), 0, 2, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=True),
        MaxPoolNode(1, (), 0, 2, output_size=(3, 2)),
        MaxPoolNode(1, (), 0, 1, kernel_size=(3,), stride=(2,), padding=(1,), dilation=(1,)),
        MaxPoolNode(1, (), 0, 1, output_size=(4,)),
    ]
    generator = torch.Generator().manual_seed(0)
    for probe in pools:
        shape = (2, 7, 5) if probe.dim == 2 else (2, 9)
        source = torch.randn((3,) + shape, generator=generator, dtype=torch.float64)
        values, argmax = probe.pool(source)
        node = MaxPoolNode(1, tuple(values.shape[1:]), 0, probe.dim, probe.kernel_size, probe.stride, probe.padding,
                           probe.dilation, probe.ceil_mode, probe.output_size)
        windows = pool_windows(node, shape)
        planes = source.reshape(3, 2, -1)
        gathered = planes[:, :, windows.clamp_min(0)]  # (3, C, P, K)
        gathered = torch.where(windows >= 0, gathered, torch.full_like(gathered, -math.inf))
        assert torch.equal(gathered.amax(-1), values.reshape(3, 2, -1)), probe
        assert bool((windows == argmax.reshape(3, 2, -1).unsqueeze(-1)).any(-1).all()), probe


def test_a_skip_past_the_layer_needs_the_kept_activations():
    net = dtd.ReLUNetwork.from_module(seeded(SkipPastALayer).double(), (2, 4, 4))
    x = _inputs((2, 4, 4), 2)
    base = net.run(x)
    k = net.layer_names().index("conv2")
    with pytest.raises(ValueError, match=r"conv2.*do not depend on its input.*base=net.run\(x\)"):
        region_constraints(net, net.layer_input(base[0], k), k, 0)


# --------------------------------------------------------------------------- the finders on graphs
def _check_roots(net, dec, atol=1e-12):
    """Every valid root solves its equation, lies in the domain and in the input's region (ReLU and argmax pattern)."""
    solved = 0
    for lay in dec.layers:
        k = lay.index
        valid = lay.root_valid
        outcomes = root_outcomes(net, dec, layer=k)
        assert bool(outcomes.region_match[valid].all()), f"layer {k}"
        assert bool((root_equation_residual(net, dec, k)[valid] <= equation_rtol(torch.float64)).all()), f"layer {k}"
        assert bool((lay.roots[valid] >= -atol).all()), f"layer {k}"
        solved += int((valid & lay.carries_relevance).sum())
        sampled = root_outcomes(net, dec, layer=k, neurons=3, generator=torch.Generator().manual_seed(k))
        assert bool(sampled.region_match[sampled.valid].all())
    assert solved > 0


@pytest.mark.parametrize("name", ["residual", "sequential_cnn", "skip_past", "leaky_pools"])
def test_region_roots_on_max_pool_and_residual_graphs_keep_the_region(name):
    if name == "skip_past":
        net, shape = dtd.ReLUNetwork.from_module(seeded(SkipPastALayer).double(), (2, 4, 4)), (2, 4, 4)
    else:
        net, shape = _graph(name)
    x = _inputs(shape, 1, seed=2)
    dec = dtd.train_free(net, x, root_finder=dtd.RegionRoots("l1"), output="predicted")
    assert isinstance(dec, dtd.GraphDecomposition) and dec.layers[0].method == "RegionRoots(norm='l1')"
    _check_roots(net, dec)
    # the relevance is what the valid roots hand down: conservation up to what missing roots lose
    for lay in dec.layers:
        kept = (lay.upper_relevance * lay.root_valid).sum(1)
        assert torch.allclose(lay.relevance.sum(1), kept, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("finder", [dtd.RegionSamplingRoots(64, seed=2), dtd.MetropolisHastingsRoots(8, 60, seed=2)],
                         ids=lambda f: type(f).__name__)
def test_sampling_finders_on_a_max_pool_cnn_keep_the_region(finder):
    net, shape = _graph("sequential_cnn")
    x = _inputs(shape, 3, seed=5)
    dec = dtd.train_free(net, x, root_finder=finder, output=1)
    _check_roots(net, dec)
    assert all(bool((lay.root_valid & lay.carries_relevance).any()) for lay in dec.layers)


def test_chunked_searches_on_a_graph_equal_one_pass(monkeypatch):
    """RegionSampling's memory budget, and the dense limit on the region rows of several points, only chunk the work."""
    net, shape = _graph("residual")
    x = _inputs(shape, 20, seed=6)
    dec = dtd.train_free(net, x)
    k = 2
    lay = dec.layers[k]
    args = (net, k, lay.input, lay.upper_relevance)
    kwargs = dict(output=dec.output, base=dec.activations)
    whole = dtd.RegionSamplingRoots(8, seed=1).find(*args, **kwargs)
    by_budget = dtd.RegionSamplingRoots(8, seed=1, memory_budget=1).find(*args, **kwargs)  # 16 points per chunk
    few = dtd.train_free(net, x[:6])
    walk_args = (net, k, few.layers[k].input, few.layers[k].upper_relevance)
    walk_kwargs = dict(output=few.output, base=few.activations)
    walk = dtd.MetropolisHastingsRoots(4, 10, seed=1).find(*walk_args, **walk_kwargs)
    _check_walk(net, few, k, walk)
    # room for the region rows of 3 points at a time
    monkeypatch.setattr(dtd.graph, "DENSE_LAYER_LIMIT", 3 * 8 * region_rows(net, k) * net.in_features(k))
    by_limit = dtd.RegionSamplingRoots(8, seed=1).find(*args, **kwargs)
    for chunked in (by_budget, by_limit):
        assert torch.equal(whole.valid, chunked.valid)
        assert torch.allclose(whole.roots(), chunked.roots(), atol=1e-12, rtol=0)
    walked = dtd.MetropolisHastingsRoots(4, 10, seed=1).find(*walk_args, **walk_kwargs)  # two chunks of 3 points
    assert torch.equal(walked.valid, dtd.MetropolisHastingsRoots(4, 10, seed=1).find(*walk_args, **walk_kwargs).valid)
    _check_walk(net, few, k, walked)


def _check_walk(net, dec, k, roots):
    """Walk roots of layer ``k`` of ``dec``'s points: on their equations and inside the region."""
    lay = dec.layers[k]
    valid = roots.valid & lay.carries_relevance
    assert bool(valid.any())
    delta = lay.input.unsqueeze(1) - roots.roots()
    residual = dtd.rootsets.root_equation_residual(delta, net.weight(k), lay.upper_relevance)
    assert bool((residual[valid] <= equation_rtol(torch.float64)).all())
    region = region_constraints(net, lay.input, k, dec.output, base=dec.activations)
    z = torch.einsum("nmd,njd->njm", region.A, roots.roots()) + region.c.unsqueeze(1)
    assert bool(((region.sign.unsqueeze(1) * z)[valid] >= -2 * region_slack(torch.float64)).all())


def test_region_output_root_on_a_graph_zeroes_the_output_inside_the_region():
    net, shape = _graph("sequential_cnn")
    x = _inputs(shape, 3, seed=7)
    tol = pattern_tol(torch.float64)
    for layer in (0, 2):
        exists, roots, status = region_output_root(net, x, layer=layer, output=4, nonnegative=True)
        assert roots.shape == (3, net.in_features(layer))
        assert bool(exists.all()), status
        base = net.run(x)
        points = torch.arange(3)
        at_input = net.evaluate_roots(layer, None, points, base, 4, threshold=tol)
        compared = net.compare_roots(layer, roots, points, base, 4, at_input, threshold=tol)
        values, _ = _forward_at(net, layer, roots, base, points)
        z_out = values[net.layer_ids[-1]].flatten(1)[:, 4]
        assert bool((z_out.abs() <= 1e-8).all())
        assert bool(compared.in_closure.all())
        assert bool((roots >= -region_slack(torch.float64)).all())


# --------------------------------------------------------------------------- the cap
def test_layers_above_the_dense_limit_are_refused_naming_layer_size_limit_and_fix():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    net = dtd.ReLUNetwork.from_module(model, (3, 32, 32))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    needed = 32768 * 32768 * 8
    pattern = (rf"layer 1 \('2'\): its weight is a dense 32,768 x 32,768 matrix, {needed:,} bytes.*"
               rf"DENSE_LAYER_LIMIT = {DENSE_LAYER_LIMIT:,} bytes \(256 MiB\).*rule=.*neurons=K")
    for finder in (dtd.RegionRoots(), dtd.RegionSamplingRoots(), dtd.MetropolisHastingsRoots()):
        with pytest.raises(ValueError, match=pattern):
            dtd.train_free(net, x, root_finder=finder)
    with pytest.raises(ValueError, match=pattern):
        net.weight(1)
    # the closed-form roots stay matrix-free on the same layer
    assert dtd.train_free(net, x, rule="z+").relevance.shape == x.shape


def test_region_rows_above_the_dense_limit_are_refused(monkeypatch):
    net, shape = _graph("residual")
    x = _inputs(shape, 1)
    base = net.run(x)
    a = net.layer_input(base[0], 0)
    rows = region_rows(net, 0) - net.out_features + 1
    weight_bytes = net.out_features_of(0) * net.in_features(0) * 8
    monkeypatch.setattr(dtd.graph, "DENSE_LAYER_LIMIT", weight_bytes)  # the weight fits, its region's rows do not
    net.weight(0)
    with pytest.raises(ValueError, match=rf"layer 0 \('stem'\): the region of f_0 .* {rows:,} x 192 matrix.*neurons=K"):
        region_constraints(net, a, 0, 0, base=base)


def test_a_layer_above_the_limit_is_refused_before_any_linear_program(monkeypatch):
    net, shape = _graph("residual")
    x = _inputs(shape, 1)
    rows = [region_rows(net, k) - net.out_features + 1 for k in range(net.n_layers)]  # the output's one row
    region_bytes = [m * net.in_features(k) * 8 for k, m in enumerate(rows)]
    k = max(range(net.n_layers), key=region_bytes.__getitem__)
    limit = region_bytes[k] - 1  # every weight and every other region fits, not this one
    assert all(b <= limit for j, b in enumerate(region_bytes) if j != k)
    assert all(net.out_features_of(j) * net.in_features(j) * 8 <= limit for j in range(net.n_layers))
    monkeypatch.setattr(dtd.graph, "DENSE_LAYER_LIMIT", limit)

    def no_lp(*args, **kwargs):
        raise AssertionError("a linear program was built before the refusal")

    monkeypatch.setattr(dtd.roots, "RegionLP", no_lp)
    name = net.layer_names()[k]
    for finder in (dtd.RegionRoots(), dtd.RegionSamplingRoots(8), dtd.MetropolisHastingsRoots(2, 2)):
        with pytest.raises(ValueError,
                           match=rf"layer {k} \('{name}'\): the region of f_{k} .* "
                                 rf"{rows[k]:,} x {net.in_features(k)} matrix"):
            dtd.train_free(net, x, root_finder=finder)


# --------------------------------------------------------------------------- the LP rows
def _dense_lp_rows(a, A, c, sign, norm, slack):
    """RegionLP's rows as they were built before: a dense matrix, its non-zeros read row by row."""
    d = a.shape[0]
    keep = sign != 0
    extra = d if norm == "l1" else 1
    eye = np.eye(d)
    distance = -eye if norm == "l1" else -np.ones((d, 1))
    rows = np.vstack([
        np.hstack([sign[keep, None] * A[keep], np.zeros((int(keep.sum()), extra))]),
        np.hstack([eye, distance]),
        np.hstack([-eye, distance]),
        np.concatenate([np.ones(d), np.zeros(extra)])[None],
    ])
    lower = np.concatenate([-(sign[keep] * c[keep]) - slack, np.full(2 * d, -np.inf), [0.0]])
    upper = np.concatenate([np.full(int(keep.sum()), np.inf), a, -a, [0.0]])
    nonzero = rows != 0
    starts = np.concatenate([[0], np.cumsum(nonzero.sum(1))[:-1]]).astype(np.int32)
    return rows.shape[0], lower, upper, starts, np.nonzero(nonzero)[1].astype(np.int32), rows[nonzero]


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_sparse_lp_rows_equal_the_dense_construction(norm):
    net, shape = _graph("sequential_cnn")
    x = _inputs(shape, 1)
    base = net.run(x)
    regions = [
        (net.layer_input(base[0], k), region_constraints(net, net.layer_input(base[0], k), k, 0, base=base))
        for k in (0, 1)
    ]
    seed = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2, dtype=torch.float64)  # the notebook's rows too
    points = seed.sample_inputs(3, output=0, min_output=0.1, seed=0)
    regions += [(a, region_constraints(seed, a, k, 0)) for k, a in enumerate(seed.activations(points)[:-1])]
    for a, region in regions:
        args = (a[0].numpy(), region.A[0].numpy(), region.c[0].numpy(), region.sign[0].numpy())
        want = _dense_lp_rows(*args, norm, 1e-9)
        got = lp_rows(*args, norm=norm, slack=1e-9)
        assert got[0] == want[0]
        for g, w in zip(got[1:], want[1:], strict=True):
            assert g.dtype == w.dtype and np.array_equal(g, w)
