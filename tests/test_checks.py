"""properties.checks against a per-root autograd loop, and chunking equality."""

from __future__ import annotations

import pytest
import torch

import dtd
from dtd.tolerances import pattern_tol
from properties.thresholds import PROPERTY_ATOL
from properties.checks import chunk_points, root_outcomes

ATOL64 = 1e-12


def _slow_outcomes(net, dec, layer, output):
    """One root at a time: forward with autograd, compare with the input's pattern by hand."""
    sub = net.subnetwork(layer)
    lay = dec.layers[layer]
    tol = pattern_tol(lay.input.dtype)
    n_points, n_roots, _ = lay.roots.shape
    result = {key: torch.zeros(n_points, n_roots, dtype=torch.float64) for key in ("f_root", "gmax", "region", "boundary")}

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
            for k, (zr, za) in enumerate(zip(p_r, p_a)):
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
    "sizes, seed, output, init", [([5, 6, 4, 2], 0, 0, "torch"), ([4, 5, 5, 5, 3], 4, 2, "torch"), ([10, 10, 10, 10, 2], 2, 0, "dtd")]
)
def test_root_outcomes_match_per_root_autograd(rule, sizes, seed, output, init):
    net = dtd.ReLUNetwork.random(sizes, seed=seed, dtype=torch.float64, init=init)
    x = net.sample_inputs(12, output=output, seed=seed)
    dec = dtd.train_free(net, x, rule=rule, output=output)
    for layer in range(net.n_layers):
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
        chunked = root_outcomes(net, dec, layer=layer, memory_budget=40_000)  # a few points per chunk
        assert 1 < chunk_points(net, layer, 40_000) < 300 or net.dtype == torch.float32
        for field in ("output_at_input", "output_at_root", "gradient_difference", "gradient_mean_abs_difference"):
            assert torch.allclose(getattr(whole, field), getattr(chunked, field), rtol=0, atol=atol), field
        for field in ("gradient_match", "region_match", "in_domain"):
            assert torch.equal(getattr(whole, field), getattr(chunked, field)), field
        # the notebook's questions compare with atol = 1e-6, a few float32 ulps of an O(1) output:
        # a decision may differ only where the value is within rounding of that threshold
        near = {
            "zero_output": (whole.output_at_root.abs() - PROPERTY_ATOL).abs() <= atol,
            "output_unchanged": (whole.output_at_input.unsqueeze(1) - whole.output_at_root - PROPERTY_ATOL).abs() <= atol,
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
