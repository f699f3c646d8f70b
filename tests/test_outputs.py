"""Per-point explained outputs: a (batch,) index tensor or "predicted", everywhere an output is taken.

Reference: every point explained alone with its own int output (the path the suite's gated rates use).
"""

from __future__ import annotations

import pytest
import torch

import dtd
from properties.measure.checks import root_outcomes, segment_outcomes

ATOL64 = 1e-12


@pytest.fixture(scope="module")
def case():
    net = dtd.ReLUNetwork.random([5, 7, 6, 3], seed=4, dtype=torch.float64, init="torch")
    net_logits = dtd.ReLUNetwork.from_sequential(net.to_sequential()[:-1])  # the same layers without the final ReLU
    x = torch.rand(16, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outputs = torch.arange(16) % 3
    return net, net_logits, x, outputs


@pytest.mark.parametrize("logits", [False, True], ids=["final_relu", "logits"])
@pytest.mark.parametrize("rule", ["z+", "w2"])
def test_train_free_per_point_outputs_equal_each_point_alone(case, logits, rule):
    net, net_logits, x, outputs = case
    net = net_logits if logits else net
    dec = dtd.train_free(net, x, rule=rule, output=outputs)
    assert torch.equal(dec.output, outputs)
    for i in range(len(x)):
        alone = dtd.train_free(net, x[i : i + 1], rule=rule, output=int(outputs[i]))
        assert torch.allclose(dec.relevance[i], alone.relevance[0], atol=ATOL64, rtol=0)
        assert torch.allclose(dec.output_value[i], alone.output_value[0], atol=ATOL64, rtol=0)
        for lay, ref in zip(dec.layers, alone.layers, strict=True):
            assert torch.equal(lay.root_valid[i], ref.root_valid[0])
            assert torch.allclose(lay.upper_relevance[i], ref.upper_relevance[0], atol=ATOL64, rtol=0)
    for k in range(net.n_layers):
        fast = root_outcomes(net, dec, layer=k)
        for i in range(len(x)):
            alone = root_outcomes(net, dtd.train_free(net, x[i : i + 1], rule=rule, output=int(outputs[i])), layer=k)
            for field in ("valid", "region_match", "in_domain", "gradient_match", "zero_output"):
                assert torch.equal(getattr(fast, field)[i], getattr(alone, field)[0]), (k, i, field)
            assert torch.allclose(fast.output_at_root[i], alone.output_at_root[0], atol=ATOL64, rtol=0)


def test_an_int_and_a_constant_tensor_give_identical_results(case):
    net, _, x, _ = case
    x32 = x.float()
    net32 = dtd.ReLUNetwork.random([5, 7, 6, 3], seed=4, init="torch")
    by_int = dtd.train_free(net32, x32, output=2)
    by_tensor = dtd.train_free(net32, x32, output=torch.full((len(x),), 2))
    assert torch.equal(by_int.relevance, by_tensor.relevance) and torch.equal(
        by_int.output_value, by_tensor.output_value
    )


def test_predicted_is_each_points_argmax(case):
    net, net_logits, x, _ = case
    for n in (net, net_logits):
        dec = dtd.train_free(n, x, output="predicted")
        assert torch.equal(dec.output, n(x).argmax(1))


def test_region_finders_and_full_backward_take_per_point_outputs(case):
    net, _, x, outputs = case
    dec = dtd.train_free(net, x, output=outputs)
    for k in range(net.n_layers):
        lay = dec.layers[k]
        found = dtd.RegionRoots("l1").find(net, k, lay.input, lay.upper_relevance, output=outputs)
        for i in range(len(x)):
            alone = dtd.RegionRoots("l1").find(net, k, lay.input[i : i + 1], lay.upper_relevance[i : i + 1],
                                               output=int(outputs[i]))
            assert torch.equal(found.valid[i], alone.valid[0])
            assert torch.allclose(found.roots()[i], alone.roots()[0], atol=1e-9, rtol=0)
        seg = segment_outcomes(net, lay.input, lay.roots, layer=k, output=outputs)
        assert seg.taylor_residual.shape == lay.root_valid.shape
    fb = dtd.full_backward(net, x, root_finder=dtd.LinearRoots("z+"), output=outputs)
    for c in range(3):
        index = (outputs == c).nonzero().squeeze(1)
        alone = dtd.full_backward(net, x[index], root_finder=dtd.LinearRoots("z+"), output=c)
        assert torch.equal(fb.relevance[index], alone.relevance)
        assert torch.equal(fb.layers[0].unresolved[index], alone.layers[0].unresolved)
        assert torch.equal(fb.layers[1].roots[index], alone.layers[1].roots)


@pytest.mark.parametrize(
    "output, error, match",
    [
        (torch.zeros(16), ValueError, r"output weights must have the per-point output's shape \(3,\)"),
        (torch.zeros(16, dtype=torch.bool), TypeError, "integer tensor"),
        ((1, 2), ValueError, r"output=\(1, 2\) has 2 indices but the network's output per point has shape \(3,\)"),
        (torch.zeros(3, dtype=torch.int64), ValueError, "3 per-point indices for 16 points"),
        (torch.full((16,), 3), ValueError, r"\[0, 2\]"),
        ("argmax", ValueError, "'predicted'"),
        (1.0, TypeError, "output must be an int"),
    ],
)
def test_bad_outputs(case, output, error, match):
    net, _, x, _ = case
    with pytest.raises(error, match=match):
        dtd.train_free(net, x, output=output)
