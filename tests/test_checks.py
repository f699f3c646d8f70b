"""properties.measure.checks against a per-root autograd loop, and chunking equality."""

from __future__ import annotations

import pytest
import torch

import dtd
from dtd.tolerances import pattern_tol
from properties.measure.checks import chunk_points, draw_neurons, root_outcomes
from properties.measure.stats import Rate
from properties.measure.thresholds import PROPERTY_ATOL

ATOL64 = 1e-12


def _slow_outcomes(net, dec, layer, output):
    """One root at a time: forward with autograd, compare with the input's pattern by hand."""
    sub = net.subnetwork(layer)
    lay = dec.layers[layer]
    tol = pattern_tol(lay.input.dtype)
    n_points, n_roots, _ = lay.roots.shape
    result = {
        key: torch.zeros(n_points, n_roots, dtype=torch.float64) for key in ("f_root", "gmax", "region", "boundary")
    }

    def value_grad_pattern(point):
        point = point.clone().requires_grad_(True)
        value = sub(point.unsqueeze(0))[0, output]
        (grad,) = torch.autograd.grad(value, point)
        pattern, h = [], point.detach()
        for k, linear in enumerate(sub.layers):
            z = linear(h).detach()
            if k == sub.n_layers - 1:
                z = z[output : output + 1]
            pattern.append(z)
            h = torch.relu(linear(h)).detach()
        return float(value.detach()), grad, pattern

    for n in range(n_points):
        f_a, g_a, p_a = value_grad_pattern(lay.input[n])
        for j in range(n_roots):
            f_r, g_r, p_r = value_grad_pattern(lay.roots[n, j])
            result["f_root"][n, j] = f_r
            result["gmax"][n, j] = float((g_r - g_a).abs().max())
            same = True
            for k, (zr, za) in enumerate(zip(p_r, p_a, strict=True)):
                if not sub.has_relu(k):
                    continue
                for i in range(len(za)):
                    if not ((zr[i] > 0) == (za[i] > 0) or abs(zr[i]) <= tol or abs(za[i]) <= tol):
                        same = False
            result["region"][n, j] = float(same)
            # on a hinge the gradient jumps: which side rounding picks is arbitrary
            result["boundary"][n, j] = float(any(bool((z.abs() <= tol).any()) for z in p_r))
        result.setdefault("f_a", []).append(f_a)
    return result


@pytest.mark.parametrize("rule", ["z+", "w2", "x", dtd.rules.Gamma(1.0)])
@pytest.mark.parametrize(
    "sizes, seed, output, init", [([5, 6, 4, 2], 0, 0, "torch"), ([4, 5, 5, 5, 3], 4, 2, "torch"),
                                  ([10, 10, 10, 10, 2], 2, 0, "dtd")]
)
def test_root_outcomes_match_per_root_autograd(rule, sizes, seed, output, init):
    net = dtd.ReLUNetwork.random(sizes, seed=seed, dtype=torch.float64, init=init)
    x = net.sample_inputs(12, output=output, seed=seed)
    dec = dtd.train_free(net, x, rule=rule, output=output)
    for layer in range(net.n_layers):
        _assert_matches_slow(net, dec, layer, output)


def _assert_matches_slow(net, dec, layer, output):
    fast = root_outcomes(net, dec, layer=layer)
    slow = _slow_outcomes(net, dec, layer, output)
    valid = fast.valid
    assert torch.allclose(fast.output_at_input, torch.tensor(slow["f_a"], dtype=torch.float64), atol=ATOL64, rtol=0)
    assert torch.allclose(fast.output_at_root[valid], slow["f_root"][valid], atol=ATOL64, rtol=0)
    smooth = valid & ~slow["boundary"].bool()
    assert torch.allclose(fast.gradient_difference[smooth], slow["gmax"][smooth], atol=ATOL64, rtol=0)
    assert torch.equal(fast.region_match[valid], slow["region"][valid].bool())
    assert torch.equal(fast.zero_output, fast.output_at_root.abs() <= PROPERTY_ATOL)
    assert torch.equal(fast.gradient_match, fast.gradient_difference <= PROPERTY_ATOL)
    assert torch.equal(fast.in_domain, (dec.layers[layer].roots >= -PROPERTY_ATOL).all(-1))


@pytest.mark.parametrize("final_relu", [True, False], ids=["final_relu", "logits"])
def test_root_outcomes_on_networks_with_and_without_a_final_relu(final_relu):
    """A classifier ends in logits: its top layer decides no ReLU region (it once crashed reshaping 0 elements)."""
    generator = torch.Generator().manual_seed(3)
    layers = [torch.nn.Linear(4, 5, dtype=torch.float64), torch.nn.ReLU(), torch.nn.Linear(5, 3, dtype=torch.float64)]
    with torch.no_grad():
        for module in layers[::2]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64))
            module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator, dtype=torch.float64))
    net = dtd.ReLUNetwork.from_sequential(torch.nn.Sequential(*layers, *([torch.nn.ReLU()] if final_relu else [])))
    assert net.final_relu == final_relu
    x = net.sample_inputs(10, output=1, seed=0)
    dec = dtd.train_free(net, x, rule="z+", output=1)
    for layer in range(net.n_layers):
        _assert_matches_slow(net, dec, layer, 1)


def test_chunked_evaluation_equals_unchunked():
    """Chunking changes only BLAS batch sizes: values agree to rounding, decisions exactly.

    (A matmul's row can round differently with the batch it is in, so float
    values are compared with a tolerance.  Decisions are exact, also for the
    top layer's roots that sit on the output's hinge: gradients treat
    |z| <= pattern_tol as 0.)
    """
    for dtype in (torch.float64, torch.float32):
        _chunked_equals_unchunked(dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2, dtype=dtype))


def _chunked_equals_unchunked(net):
    atol = ATOL64 if net.dtype == torch.float64 else 1e-5
    x = net.sample_inputs(300, output=0, min_output=0.1, seed=0)
    dec = dtd.train_free(net, x)
    for layer in range(net.n_layers):
        whole = root_outcomes(net, dec, layer=layer)
        chunked = root_outcomes(net, dec, layer=layer, memory_budget=100_000)  # a few points per chunk
        assert 1 < chunk_points(net, layer, 100_000) < 300 or net.dtype == torch.float32
        for field in ("output_at_input", "output_at_root", "gradient_difference", "gradient_mean_abs_difference"):
            assert torch.allclose(getattr(whole, field), getattr(chunked, field), rtol=0, atol=atol), field
        for field in ("gradient_match", "region_match", "in_domain"):
            assert torch.equal(getattr(whole, field), getattr(chunked, field)), field
        # the notebook's questions compare with atol = 1e-6, a few float32 ulps of an O(1) output:
        # a decision may differ only where the value is within rounding of that threshold
        near = {
            "zero_output": (whole.output_at_root.abs() - PROPERTY_ATOL).abs() <= atol,
            "output_unchanged": (whole.output_at_input.unsqueeze(1) - whole.output_at_root - PROPERTY_ATOL).abs()
            <= atol,
        }
        for field, ambiguous in near.items():
            assert bool(((getattr(whole, field) == getattr(chunked, field)) | ambiguous).all()), field
            if net.dtype == torch.float64:
                assert torch.equal(getattr(whole, field), getattr(chunked, field)), field


def test_per_point_reduction_ignores_points_without_roots():
    net = dtd.ReLUNetwork.random([4, 3, 2], seed=0, dtype=torch.float64, init="torch")
    x = net.sample_inputs(20, output=0, seed=0)
    outcomes = root_outcomes(net, dtd.train_free(net, x), layer=0)
    holds, has_roots = outcomes.per_point("gradient_match", include_trivial=False)
    considered = outcomes.considered(False)
    assert torch.equal(has_roots, considered.any(1))
    expected = torch.tensor([bool(outcomes.gradient_match[n][considered[n]].all()) for n in range(20)])
    assert torch.equal(holds, expected)


def test_root_outcomes_refuses_bad_arguments():
    net = dtd.ReLUNetwork.random([4, 3, 2], seed=1)
    dec = dtd.train_free(net, net.sample_inputs(5, seed=0))
    with pytest.raises(TypeError, match="Decomposition"):
        root_outcomes(net, "dec")
    with pytest.raises(ValueError, match="layer"):
        root_outcomes(net, dec, layer=2)
    with pytest.raises(ValueError, match="atol"):
        root_outcomes(net, dec, atol=-1.0)
    with pytest.raises(ValueError, match="memory_budget"):
        root_outcomes(net, dec, memory_budget=0)
    other = dtd.ReLUNetwork.random([5, 3, 2], seed=1)
    with pytest.raises(ValueError, match="does not belong"):
        root_outcomes(other, dec)


# --------------------------------------------------------------------------- sampled neurons
def test_draw_neurons_draws_distinct_neurons_uniformly():
    drawn = draw_neurons(4000, 10, 3, torch.Generator().manual_seed(0))
    assert drawn.shape == (4000, 3)
    assert bool((drawn.sort(1).values.diff(dim=1) > 0).all()), "a neuron drawn twice for one point"
    share = torch.bincount(drawn.reshape(-1), minlength=10).double() / drawn.numel()
    # each neuron is drawn with probability 3/10 per point: shares 1/10 each, binomial sd ~0.0027
    assert bool(((share - 0.1).abs() < 0.015).all()), share
    assert draw_neurons(5, 4, 9, torch.Generator().manual_seed(0)).shape == (5, 4)


def test_sampled_outcomes_equal_the_exhaustive_ones_at_the_drawn_neurons():
    net = dtd.ReLUNetwork.random([6, 8, 7, 3], seed=1, dtype=torch.float64, init="torch")
    x = net.sample_inputs(20, output=2, seed=1, min_output=-1.0)
    for rule in ("z+", "w2"):
        dec = dtd.train_free(net, x, rule=rule, output=2)
        for layer in range(net.n_layers):
            full = root_outcomes(net, dec, layer=layer)
            part = root_outcomes(net, dec, layer=layer, neurons=3, generator=torch.Generator().manual_seed(layer))
            idx = part.neurons
            assert idx.shape == (20, min(3, net.sizes[layer + 1]))
            for field in ("valid", "carries_relevance", "region_match", "in_domain", "zero_output", "gradient_match"):
                assert torch.equal(getattr(part, field), getattr(full, field).gather(1, idx)), field
            assert torch.allclose(part.output_at_root, full.output_at_root.gather(1, idx), atol=ATOL64, rtol=0)
            assert torch.equal(part.output_at_input, full.output_at_input)


def test_sampled_rates_of_the_seed_network_fall_inside_the_exhaustive_intervals():
    """Seed network (the notebook's), 1000 points: 3 of 10 neurons per point estimate every layer's rates."""
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2)
    x = net.sample_inputs(1000, output=0, min_output=0.1, seed=0)
    dec = dtd.train_free(net, x, rule="z+", output=0)
    for layer in range(net.n_layers):
        full = root_outcomes(net, dec, layer=layer)
        part = root_outcomes(net, dec, layer=layer, neurons=3, generator=torch.Generator().manual_seed(7))
        for field in ("zero_output", "output_unchanged", "gradient_match", "region_match", "in_domain"):
            for counted in ("valid", "relevant"):
                mask_full = full.valid if counted == "valid" else full.valid & full.carries_relevance
                mask_part = part.valid if counted == "valid" else part.valid & part.carries_relevance
                exhaustive = Rate.from_mask(getattr(full, field), mask_full, cluster_dim=0)
                sampled = Rate.from_mask(getattr(part, field), mask_part, cluster_dim=0)
                low, high = exhaustive.interval
                assert (
                    sampled.trials <= exhaustive.trials
                    if net.sizes[layer + 1] <= 3
                    else sampled.trials < exhaustive.trials
                )
                assert low <= sampled.rate <= high, f"layer {layer} {field} ({counted}): {sampled} outside {exhaustive}"


def test_sampled_outcomes_refuse_bad_arguments():
    net = dtd.ReLUNetwork.random([3, 4, 2], seed=0)
    dec = dtd.train_free(net, net.sample_inputs(4, seed=0))
    with pytest.raises(TypeError, match="generator"):
        root_outcomes(net, dec, neurons=2)
    with pytest.raises(ValueError, match="generator is only used"):
        root_outcomes(net, dec, generator=torch.Generator())
    with pytest.raises(ValueError, match="neurons"):
        root_outcomes(net, dec, neurons=0, generator=torch.Generator())
    with pytest.raises(TypeError, match="neurons"):
        root_outcomes(net, dec, neurons=2.0, generator=torch.Generator())
