"""The graph engine: ReLUNetwork.from_module lowers users' models exactly, and DTD on it is matrix-free and exact.

References: the original models' own forward (float64 1e-10, float32 1e-5
relative), zennit's ZPlus on the *original* VGG, a slow dense z+ written out
here for a residual network, the dense ReLUNetwork engine on MLPs, and a
naive recomputation with autograd for ``f_k`` and its gradient.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import dtd
from dtd.lowering import lower_module
from properties.measure.checks import RootOutcomes, root_outcomes, segment_outcomes

from .graph_models import MODELS, Residual, SkipPastALayer, seeded, vgg_features_net
from .reference import dense_matrix, linear_part, zplus_step

#: relative error of a lowered forward against the model's
FORWARD_RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
#: float64 agreement of two exact computations of the same relevance
RELEVANCE_RTOL = 1e-10


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _inputs(shape, n=3, seed=0, dtype=torch.float64):
    return torch.rand((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            build, shape = MODELS[name]
            cache[name] = (seeded(build), shape)
        return cache[name]

    return get


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_lowered_forward_equals_the_model(built, name, dtype):
    model, shape = built(name)
    model = copy.deepcopy(model).to(dtype)
    net = dtd.ReLUNetwork.from_module(model, shape)
    x = _inputs(shape, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    assert _relative(net(x), expected.flatten(1)) <= FORWARD_RTOL[dtype]


def test_the_model_is_not_touched(built):
    model, shape = built("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = dtd.ReLUNetwork.from_module(model, shape)
    dtd.train_free(net, _inputs(shape, n=1, dtype=torch.float32), rule="z+", output=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    pointers = {p.data_ptr() for p in model.parameters()}
    held = [t for node in net.nodes if isinstance(node, dtd.graph.AffineNode) for b in node.branches
            for t in b.op.tensors()]
    assert pointers.isdisjoint({t.data_ptr() for t in held})


def test_layers_are_named_by_the_models_modules(built):
    model, shape = built("resnet18")
    names = dtd.ReLUNetwork.from_module(model, shape).layer_names()
    assert names[0] == "conv1" and names[-1] == "fc"
    assert "layer1.0.conv2" in names and "layer2.0.conv2" in names  # the block's sum is one layer, named by its conv


def test_a_residual_sum_is_one_layer_with_the_skip_as_a_branch(built):
    model, shape = built("resnet18")
    net = dtd.ReLUNetwork.from_module(model, shape)
    block = net.layer(net.layer_names().index("layer2.0.conv2"))
    assert len(block.branches) == 2  # bn2(conv2(h)) and downsample(x)
    assert "layer2.0.downsample.0" in block.modules and "layer2.0.bn2" in block.modules


def test_an_mlp_comes_back_as_the_dense_network():
    net = dtd.ReLUNetwork.random([6, 5, 4, 3], seed=1)
    seq = net.to_sequential()
    lowered = dtd.ReLUNetwork.from_module(seq, (6,))
    assert type(lowered) is dtd.ReLUNetwork
    for k in range(net.n_layers):
        assert torch.equal(lowered.weight(k), net.weight(k)) and torch.equal(lowered.bias(k), net.bias(k))


# --------------------------------------------------------------------------- relevance against references
def test_zplus_on_vgg_equals_zennit_on_the_original_model():
    from zennit.composites import LayerMapComposite
    from zennit.rules import ZPlus

    model = seeded(vgg_features_net).double()
    x = _inputs((3, 32, 32), n=2)
    dec = dtd.train_free(dtd.ReLUNetwork.from_module(model, (3, 32, 32)), x, rule="z+", output=3)
    # zennit's stabiliser is made negligible: the two then compute the same sums
    rule = ZPlus(zero_params="bias", stabilizer=1e-300)
    composite = LayerMapComposite(layer_map=[(nn.Conv2d, rule), (nn.Linear, rule)])
    xx = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(xx)
        seed = torch.zeros_like(out)
        seed[:, 3] = out[:, 3]
        (expected,) = torch.autograd.grad(out, xx, seed)
    assert _relative(dec.relevance, expected) <= RELEVANCE_RTOL


def test_zplus_on_a_residual_net_equals_a_slow_dense_reference():
    model = seeded(lambda: Residual()).double()
    x = _inputs((3, 8, 8), n=2, seed=3)
    net = dtd.ReLUNetwork.from_module(model, (3, 8, 8))
    dec = dtd.train_free(net, x, rule="z+", output=1)
    m = model
    stem, block1 = linear_part(m.stem), (linear_part(m.conv1), linear_part(m.bn1))
    block2 = (linear_part(m.conv2), linear_part(m.bn2))
    W0 = dense_matrix(stem, (3, 8, 8))
    W1 = dense_matrix(lambda v: block1[1](block1[0](v)), (4, 8, 8))
    # [conv2 bn2 | identity skip]
    W2 = np.hstack([dense_matrix(lambda v: block2[1](block2[0](v)), (4, 8, 8)), np.eye(4 * 64)])
    head = linear_part(m.fc)
    W3 = dense_matrix(lambda v: head(v.mean((2, 3))), (4, 4, 4))
    for n in range(x.shape[0]):
        with torch.no_grad():
            xi = x[n : n + 1]
            h = torch.relu(m.stem(xi))
            h1 = torch.relu(m.bn1(m.conv1(h)))
            h2 = torch.relu(m.bn2(m.conv2(h1)) + h)
            pooled, argmax = nn.functional.max_pool2d(h2, 2, return_indices=True)
            out = m.fc(pooled.mean((2, 3)))
        R = np.zeros(4)
        R[1] = float(out[0, 1])
        R_pool = zplus_step(pooled.flatten().numpy(), W3, R)
        R_h2 = np.zeros(4 * 64)
        for c in range(4):  # each window's relevance to its argmax
            for p, flat in enumerate(argmax[0, c].flatten().tolist()):
                R_h2[c * 64 + flat] += R_pool[c * 16 + p]
        a2 = np.concatenate([h1.flatten().numpy(), h.flatten().numpy()])
        R_a2 = zplus_step(a2, W2, R_h2)
        R_h1, R_h = R_a2[:256], R_a2[256:].copy()
        R_h += zplus_step(h.flatten().numpy(), W1, R_h1)
        R_x = zplus_step(xi.flatten().numpy(), W0, R_h)
        assert np.abs(dec.relevance[n].flatten().numpy() - R_x).max() <= RELEVANCE_RTOL * np.abs(R_x).max()
        assert np.abs(dec.layers[2].relevance[n].numpy() - R_a2).max() <= RELEVANCE_RTOL * np.abs(R_a2).max()


@pytest.mark.parametrize("name", ["residual", "two_branches", "sequential_cnn", "resnet18"])
def test_zplus_conserves_relevance_up_to_what_missing_roots_lose(built, name):
    """Each layer hands down exactly its neurons' relevance where their roots exist; ReLUs and max pools pass all of it.

    So ``sum_i R_i(x) = f(x) - sum_k lost_k`` at every point, and ``= f(x)`` where every root exists.
    """
    model, shape = built(name)
    model = copy.deepcopy(model).double()
    net = dtd.ReLUNetwork.from_module(model, shape)
    x = _inputs(shape, n=4, seed=1)
    dec = dtd.train_free(net, x, rule="z+", output=0)
    for layer in dec.layers:
        passed = torch.where(layer.root_valid, layer.upper_relevance, torch.zeros_like(layer.upper_relevance)).sum(1)
        assert bool(((layer.relevance.sum(1) - passed).abs() <= 1e-9 * passed.abs().clamp_min(1)).all())
    lost = sum(layer.lost_relevance for layer in dec.layers)
    total = dec.relevance.flatten(1).sum(1)
    assert bool(((total - (dec.output_value - lost)).abs() <= 1e-9 * dec.output_value.abs().clamp_min(1)).all())


@pytest.mark.parametrize("rule", ["z+", "w2", "gamma", "x", "zB"])
def test_the_graph_engine_equals_the_dense_engine_on_an_mlp(rule):
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2).double()
    x = net.sample_inputs(100, output=0, min_output=0.1, seed=0)
    graph = lower_module(net.to_sequential(), (10,))
    rules = [dtd.rules.ZB(0.0, 5.0)] + ["z+"] * 3 if rule == "zB" else rule
    dense, ops = dtd.train_free(net, x, rule=rules, output=0), dtd.train_free(graph, x, rule=rules, output=0)
    assert _relative(ops.relevance, dense.relevance) <= RELEVANCE_RTOL
    for k in range(net.n_layers):
        assert torch.equal(ops.layers[k].root_valid, dense.layers[k].root_valid)
        assert _relative(ops.layers[k].roots, dense.layers[k].roots) <= RELEVANCE_RTOL
        full_d, full_o = root_outcomes(net, dense, layer=k), root_outcomes(graph, ops, layer=k)
        gen_d, gen_o = torch.Generator().manual_seed(k), torch.Generator().manual_seed(k)
        sampled_d = root_outcomes(net, dense, layer=k, neurons=3, generator=gen_d)
        sampled_o = root_outcomes(graph, ops, layer=k, neurons=3, generator=gen_o)
        for outcome in RootOutcomes.OUTCOMES:
            assert torch.equal(getattr(full_o, outcome), getattr(full_d, outcome)), (k, outcome)
            assert torch.equal(getattr(sampled_o, outcome), getattr(sampled_d, outcome)), (k, outcome)


@pytest.mark.parametrize("name", ["residual", "two_branches", "sequential_cnn"])
def test_sampled_roots_solve_their_root_equation(built, name):
    model, shape = built(name)
    net = dtd.ReLUNetwork.from_module(copy.deepcopy(model).double(), shape)
    dec = dtd.train_free(net, _inputs(shape, n=3, seed=2), rule="z+", output=0)
    for k, layer in enumerate(dec.layers):
        roots = layer.roots  # small layers: every neuron, (N, J, D)
        n, j, d = roots.shape
        parts = net.split_input(k, (layer.input.unsqueeze(1) - roots).reshape(n * j, d))
        moved = sum(b.op.forward(p).flatten(1) for b, p in zip(net.layer(k).branches, parts, strict=True)).reshape(
            n, j, j
        )
        own = moved.diagonal(dim1=1, dim2=2)  # w_j . (a - root_j) for each neuron j
        residual = (own - layer.upper_relevance).abs()
        assert bool((residual[layer.root_valid] <= 1e-9 * layer.upper_relevance.abs().max().clamp_min(1)).all()), k


def _naive_f(net, x, k, roots, point, output):
    """``f_k`` and its gradient by recomputing the whole graph with the layer's sources replaced, and autograd."""
    values, _ = net.run(x)
    values = {i: v.index_select(0, point) for i, v in values.items()}
    with torch.enable_grad():
        parts = [p.clone().requires_grad_(True) for p in net.split_input(k, roots)]
        sources = [b.source for b in net.layer(k).branches]
        for s, p in zip(sources, parts, strict=True):
            values[s] = p
        for node in net.nodes[1:]:
            if node.id in sources:
                continue
            if isinstance(node, dtd.graph.AffineNode):
                values[node.id] = sum(b.op.forward(values[b.source]) for b in node.branches) + node.bias
            elif isinstance(node, dtd.graph.ReLUNode):
                values[node.id] = torch.relu(values[node.source])
            else:
                values[node.id] = node.pool(values[node.source])[0]
        out = net.output_of(values)[:, output]
        grads = torch.autograd.grad(out.sum(), parts, allow_unused=True)
    grad = torch.cat([(torch.zeros_like(p) if g is None else g).flatten(1) for g, p in zip(grads, parts, strict=True)],
                     1)
    return out.detach(), grad


@pytest.mark.parametrize("name", ["residual", "two_branches", "sequential_cnn"])
def test_f_k_and_its_gradient_equal_a_naive_recomputation(built, name):
    model, shape = built(name)
    net = dtd.ReLUNetwork.from_module(copy.deepcopy(model).double(), shape)
    x = _inputs(shape, n=3, seed=4)
    base = net.run(x)
    g = torch.Generator().manual_seed(0)
    for k in range(net.n_layers):
        a = net.layer_input(base[0], k)
        point = torch.tensor([0, 1, 2, 0, 2])
        roots = a.index_select(0, point) + 0.05 * torch.randn(5, a.shape[1], generator=g, dtype=torch.float64)
        evaluation = net.evaluate_roots(k, roots, point, base, 0)
        value, grad = _naive_f(net, x, k, roots, point, 0)
        assert _relative(evaluation.value, value) <= 1e-12
        assert _relative(evaluation.gradient, grad) <= 1e-12


def test_the_input_itself_is_in_its_region_with_its_gradient(built):
    model, shape = built("residual")
    net = dtd.ReLUNetwork.from_module(copy.deepcopy(model).double(), shape)
    dec = dtd.train_free(net, _inputs(shape, n=2), rule="z+", output=0)
    for k in range(net.n_layers):
        outcomes = root_outcomes(net, dec, layer=k, neurons=4, generator=torch.Generator().manual_seed(0))
        assert outcomes.region_match.shape == (2, 4) and outcomes.output_at_root.shape == (2, 4)
        # the layer's trivial move (t = 0) is the input: evaluated there it is in the region with f_k(a)
        zero = dec.layers[k].input
        ev = net.evaluate_roots(k, zero, torch.arange(2), net.run(dec.x), 0, reference_argmax=None)
        assert _relative(ev.value, outcomes.output_at_input) <= 1e-12


@pytest.mark.parametrize("name", ["residual", "sequential_cnn", "two_branches"])
def test_compare_roots_equals_the_patterns_and_gradients_of_evaluate_roots(built, name):
    """The comparison one non-linearity at a time, with the backward pass only where the pattern moved, against
    every deciding pre-activation and argmax side by side and every root's full gradient (:meth:`evaluate_roots`)."""
    model, shape = built(name)
    net = dtd.ReLUNetwork.from_module(copy.deepcopy(model).double(), shape)
    x = _inputs(shape, n=3, seed=5)
    base = net.run(x)
    tol = 1e-9
    g = torch.Generator().manual_seed(1)
    n_roots = 4
    moved = 0
    for k in range(net.n_layers):
        a = net.layer_input(base[0], k)
        points = torch.arange(3)
        rows = points.repeat_interleave(n_roots)
        # no move, small moves (mostly the same pattern) and large ones (patterns and argmaxes change)
        scale = torch.tensor([0.0, 1e-3, 0.3, 1.0], dtype=torch.float64).repeat(3).unsqueeze(1)
        roots = a.index_select(0, rows) + scale * torch.randn(
            rows.shape[0], a.shape[1], generator=g, dtype=torch.float64
        )
        at_input = net.evaluate_roots(k, None, points, base, 0, threshold=tol)
        full = net.evaluate_roots(k, roots, rows, base, 0, threshold=tol,
                                  reference_argmax=at_input.argmax.index_select(0, rows))
        fast = net.compare_roots(k, roots, points, base, 0, at_input, threshold=tol)
        z_a, z_r = at_input.relu.index_select(0, rows), full.relu
        same = ((z_r > tol) == (z_a > tol)).all(1) & (full.argmax == at_input.argmax.index_select(0, rows)).all(1)
        crossed = (((z_r > tol) & (z_a < -tol)) | ((z_r < -tol) & (z_a > tol))).any(1)
        closure = same | (~crossed & (full.window_gap <= tol).all(1))
        diff = (full.gradient - at_input.gradient.index_select(0, rows)).abs()
        assert torch.equal(fast.value, full.value)
        assert torch.equal(fast.same, same) and torch.equal(fast.in_closure, closure)
        assert bool(same[::n_roots].all())  # the unmoved root is its input
        assert float((fast.gradient_max - torch.where(same, 0.0, diff.amax(1))).abs().max()) <= 1e-12
        assert float((fast.gradient_mean - torch.where(same, 0.0, diff.mean(1))).abs().max()) <= 1e-12
        # where the pattern is the input's, so is the gradient (what lets compare_roots skip the backward pass)
        assert float(torch.where(same.unsqueeze(1), diff, torch.zeros_like(diff)).max()) <= 1e-12
        moved += int((~same).sum())
    assert moved > 0  # the large moves change some pattern: the backward pass ran


def test_all_finite_is_the_element_wise_test():
    from dtd.validation import all_finite

    assert all_finite(torch.tensor([3e38, 3e38]))  # finite entries whose float32 sum overflows
    assert not all_finite(torch.tensor([1.0, float("nan")])) and not all_finite(
        torch.tensor([float("inf"), -float("inf")])
    )
    assert not all_finite(torch.tensor([float("-inf"), 1.0], dtype=torch.float64))
    assert all_finite(torch.zeros(0)) and all_finite(torch.randn(5, 7))


# --------------------------------------------------------------------------- refusals
class _Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.conv(x)).flatten(1)


class _Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_what_is_not_piecewise_linear_is_refused_naming_the_operation_and_the_module():
    with pytest.raises(TypeError, match=r"'sigmoid' in module 'act' \(Sigmoid\).*smooth, not piecewise linear"):
        dtd.ReLUNetwork.from_module(_Smooth().eval(), (1, 5, 5))


def test_a_model_torch_export_cannot_capture_gets_an_error_saying_what_to_try():
    with pytest.raises(TypeError,
                       match=r"torch.export cannot capture _Branching.*What to try.*torch.cond.*ExportedProgram"):
        dtd.ReLUNetwork.from_module(_Branching(), (4,))


def test_training_mode_and_missing_shapes_are_value_errors():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(ValueError, match=r"'batch_norm' \(module '1', BatchNorm2d\) runs in training mode.*model.eval"):
        dtd.ReLUNetwork.from_module(model, (1, 5, 5))
    assert model.training  # the model's mode is never changed
    with pytest.raises(TypeError, match="input_shape"):
        dtd.ReLUNetwork.from_module(model.eval(), None)
    with pytest.raises(ValueError, match=r"fails on an input of shape \(2, 3, 5, 5\).*channels") as refused:
        dtd.ReLUNetwork.from_module(model.eval(), (3, 5, 5))
    assert "batch dimension in front" not in str(refused.value)
    with pytest.raises(ValueError,
                       match=r"fails on an input of shape.*batch dimension in front.*x.shape\[1:\], e.g. \(1, 5, 5\)"):
        dtd.ReLUNetwork.from_module(model.eval(), (4, 1, 5, 5))  # x.shape passed whole


def test_a_map_without_an_exact_operator_form_is_folded_or_refused_by_size():
    # conv then an overlapping average pooling: entries are sums of products, so the pair is folded densely
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.AvgPool2d(3, stride=1, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(2 * 36, 2)).eval().double()
    net = dtd.ReLUNetwork.from_module(model, (1, 6, 6))
    x = _inputs((1, 6, 6))
    with torch.no_grad():
        assert _relative(net(x), model(x)) <= FORWARD_RTOL[torch.float64]
    with pytest.raises(ValueError, match=r"modules '0', '1'.*memory_budget"):
        dtd.ReLUNetwork.from_module(model, (1, 6, 6), memory_budget=1000)


def test_pinv_and_in_region_finders_above_the_dense_limit_are_refused_on_graphs(built, monkeypatch):
    model, shape = built("residual")
    net = dtd.ReLUNetwork.from_module(model, shape)
    x = _inputs(shape, n=1, dtype=torch.float32)
    # pinv and the in-region finders work on graphs up to dtd.graph.DENSE_LAYER_LIMIT (a layer's dense block row);
    # pinv's shared root solves each layer's root equations W (a - root) = R where the block row has full row rank
    dec = dtd.train_free(net, x, rule="pinv")
    for k, lay in enumerate(dec.layers):
        delta = lay.input - lay.root_set.roots()[:, 0]
        reached = delta @ net.weight(k).T
        assert bool(
            ((reached - lay.upper_relevance).abs() <= 1e-4 * lay.upper_relevance.abs().amax().clamp_min(1))[
                lay.root_valid
            ].all()
        )
    # above it, the cap names layer, size and fix (a network lowered anew: a block row, once built, is kept)
    net = dtd.ReLUNetwork.from_module(model, shape)
    monkeypatch.setattr(dtd.graph, "DENSE_LAYER_LIMIT", 1000)
    with pytest.raises(ValueError, match=r"layer 3 \('fc'\): its weight is a dense 4 x 64 matrix"):
        dtd.train_free(net, x, rule="pinv")
    with pytest.raises(ValueError, match=r"layer 3 \('fc'\): its weight is a dense 4 x 64 matrix, 2,048 bytes.*"
                                         r"DENSE_LAYER_LIMIT = 1,000 bytes.*rule=.*root_outcomes\(\.\.\., neurons=K\)"):
        dtd.train_free(net, x, root_finder=dtd.RegionRoots())


def test_what_needs_dense_layers_says_so_on_a_graph(built):
    model, shape = built("residual")
    net = dtd.ReLUNetwork.from_module(model, shape)
    x = _inputs(shape, n=1, dtype=torch.float32)
    for call in (lambda: dtd.full_backward(net, x, root_finder=dtd.LinearRoots()), lambda: dtd.estimate_cost(net, 10)):
        with pytest.raises(TypeError, match="needs the dense layers of a dtd.ReLUNetwork.*from_module"):
            call()


def _small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double()


def test_segment_outcomes_on_a_graph_equal_those_of_the_dense_network_of_the_same_model():
    """from_sequential folds the CNN into dense layers, from_module keeps convolutions: at
    the same roots the segment checks agree.

    (The two give different z+ roots: a convolution's root moves only its receptive field, a dense layer's every
    input.)"""
    model = seeded(_small_cnn)
    dense = dtd.ReLUNetwork.from_sequential(model, input_shape=(2, 6, 6))
    graph = dtd.ReLUNetwork.from_module(model, (2, 6, 6))
    assert isinstance(graph, dtd.GraphNetwork) and isinstance(dense, dtd.ReLUNetwork)
    x = _inputs((2, 6, 6), n=5, seed=3)
    dec_d, dec_g = dtd.train_free(dense, x, rule="z+", output=1), dtd.train_free(graph, x, rule="z+", output=1)
    for k in range(dense.n_layers):
        lay_d, lay_g = dec_d.layers[k], dec_g.layers[k]
        assert float((lay_d.input - lay_g.input).abs().max()) <= 1e-12
        seg_d = segment_outcomes(dense, lay_d.input, lay_g.roots, layer=k, output=1)
        seg_g = segment_outcomes(graph, lay_g.input, lay_g.roots, layer=k, output=1, base=dec_g.activations)
        assert torch.equal(seg_g.interior, seg_d.interior)
        assert torch.equal(seg_g.midpoint_gradient_match, seg_d.midpoint_gradient_match)
        assert float((seg_g.taylor_residual - seg_d.taylor_residual).abs().max()) <= 1e-9


def test_segment_outcomes_say_what_a_graph_needs():
    model, shape = seeded(Residual), (3, 8, 8)
    net = dtd.ReLUNetwork.from_module(model.double(), shape)
    dec = dtd.train_free(net, _inputs(shape, n=2), rule="z+")
    lay = dec.layers[2]  # conv2 + the skip: its f_k ends in the max pool
    with pytest.raises(TypeError, match="max pool.*root_outcomes"):
        segment_outcomes(net, lay.input, lay.roots, layer=2, output=0, base=dec.activations)
    net = dtd.ReLUNetwork.from_module(seeded(lambda: SkipPastALayer(channels=2, side=6, pool=False)).double(),
                                      (2, 6, 6))
    dec = dtd.train_free(net, _inputs((2, 6, 6), n=3), rule="z+")
    lay = dec.layers[2]  # conv2: its f_k adds h0, computed below it
    with pytest.raises(ValueError, match="pass base=dec.activations"):
        segment_outcomes(net, lay.input, lay.roots, layer=2, output=0)
    seg = segment_outcomes(net, lay.input, lay.roots, layer=2, output=0, base=dec.activations)
    # the closed-form z+ roots of a layer lie in the input's region far more often than not; where a root is in the
    # region, the first-order expansion from it is exact -- with the skip's h0 held at the input's values
    region = root_outcomes(net, dec, layer=2).region_match & lay.root_valid
    assert bool(region.any())
    assert float(seg.taylor_residual[region].max()) <= 1e-9
