"""The benchmark's per-point reference and its fast path compute the same answers."""

from __future__ import annotations

import torch

import dtd
from benchmarks.workloads import SEED_SIZES, reference_experiment
from dtd.tolerances import pattern_tol
from properties.measure.checks import root_outcomes


def test_reference_loop_equals_batched_outcomes():
    net = dtd.ReLUNetwork.random(SEED_SIZES, seed=2, dtype=torch.float64)
    x = net.sample_inputs(15, output=0, min_output=0.1, seed=0)
    outcomes = root_outcomes(net, dtd.train_free(net, x), layer=0)
    slow = reference_experiment(net, x)
    values = torch.tensor([v for v, _ in slow], dtype=torch.float64).reshape(15, 10)
    assert torch.allclose(values, outcomes.output_at_root, atol=1e-12, rtol=0)
    grads = torch.cat([g for _, g in slow]).reshape(15, 10, -1)
    g_x = net.input_gradient(x, 0)
    diff = (grads - g_x.unsqueeze(1)).abs().amax(-1)
    # away from hinges (where autograd's relu'(0) meets rounding) the differences agree
    zs = net.pre_activations(dtd.train_free(net, x).layers[0].roots.reshape(-1, 10))
    smooth = torch.stack([(z.abs() > pattern_tol(torch.float64)).all(-1) for z in zs]).all(0).reshape(15, 10)
    assert bool(smooth.any())
    assert torch.allclose(diff[smooth], outcomes.gradient_difference[smooth], atol=1e-12, rtol=0)
