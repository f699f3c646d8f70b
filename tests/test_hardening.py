"""Nothing silent, nothing aliased, nothing leaked: overflow, half precision, ownership, clear errors, chunking.

Each test names the promise it checks; each failed on the code before the
hardening (NaN or zero relevance, aliased inputs, raw RuntimeErrors, a
banner on stdout, unchunked sampling).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import dtd
from dtd import progress
from dtd import rules as R
from dtd.regions import LPStatus

ROOT = Path(__file__).resolve().parents[1]


def _net(dtype=torch.float32, scale=1.0, sizes=(4, 5, 5, 2)):
    net = dtd.ReLUNetwork.random(list(sizes), seed=1, dtype=dtype)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.mul_(scale)
    return net


def _x(net, n=8):
    return torch.rand(n, net.in_features, generator=torch.Generator().manual_seed(0)).to(net.dtype) + 0.5


# ---------------------------------------------------------------- overflow: an error naming layer and dtype
OVERFLOWING = _net(scale=1e15)  # float32: the pre-activations of layer 2 exceed 3.4e38

OVERFLOW_CASES = [
    ("train_free", lambda: dtd.train_free(OVERFLOWING, _x(OVERFLOWING))),
    ("full_backward", lambda: dtd.full_backward(OVERFLOWING, _x(OVERFLOWING), root_finder=dtd.LinearRoots())),
    ("sampling finder", lambda: dtd.train_free(OVERFLOWING, _x(OVERFLOWING), root_finder=dtd.RegionSamplingRoots(8))),
    ("walk finder", lambda: dtd.train_free(OVERFLOWING, _x(OVERFLOWING, 2),
                                           root_finder=dtd.MetropolisHastingsRoots(2, 3))),
    ("input_gradient", lambda: OVERFLOWING.input_gradient(_x(OVERFLOWING), 0)),
]


@pytest.mark.parametrize("call", [pytest.param(c, id=name) for name, c in OVERFLOW_CASES])
def test_overflow_is_an_error_naming_layer_and_dtype(call):
    with pytest.raises(ValueError, match=r"layer 2 overflows float32: .* use float64 or rescale"):
        call()


def test_overflowing_gamma_denominator_is_an_error():
    net = _net()
    with pytest.raises(ValueError, match=r"layer \d overflows float32: the Gamma\(gamma=1e\+308\) denominators"):
        dtd.train_free(net, _x(net), rule=R.Gamma(1e308))


def test_overflowing_input_gradient_is_an_error():
    """Pre-activations fit, but the product of the weights (the gradient) does not."""
    net = _net(sizes=(4, 5, 5, 5, 2))
    with torch.no_grad():
        for layer in net.layers:  # every neuron active, every weight 1e13: the gradient is ~(5e13)^4
            layer.weight.abs_().add_(0.1).mul_(1e13)
            layer.bias.zero_()
    x = torch.full((2, 4), 1e-40)  # tiny inputs keep every pre-activation finite
    assert all(bool(torch.isfinite(z).all()) for z in net.pre_activations(x))
    with pytest.raises(ValueError, match=r"layer \d overflows float32: the input gradient"):
        net.input_gradient(x, 0)


def test_accounting_of_an_overflowing_layer_is_an_error():
    net = _net()
    dec = dtd.train_free(net, _x(net))
    big = _net()
    with torch.no_grad():  # finite weights (<= ~2e38) whose pre-activations exceed float32's 3.4e38
        for layer in big.layers:
            layer.weight.abs_().clamp_(max=1.5).add_(0.5).mul_(1e38)
    with pytest.raises(ValueError, match="overflows float32"):
        dtd.accounting(big, dec)


def test_scaled_weights_in_float64_are_exact():
    """The same network that overflows float32 decomposes in float64, conserving the output."""
    net = _net(torch.float64, scale=1e15)
    dec = dtd.train_free(net, _x(net))
    assert bool(torch.isfinite(dec.relevance).all())
    assert torch.allclose(dec.relevance.sum(1), dec.output_value, rtol=1e-9)


# ---------------------------------------------------------------- half precision: refused
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("which", ["train_free", "full_backward"])
def test_half_precision_is_refused_with_the_fix(dtype, which):
    net = _net(dtype)
    x = torch.full((3, 4), 6e4 if dtype == torch.float16 else 1.0, dtype=dtype)
    call = (
        dtd.train_free if which == "train_free" else lambda n, x: dtd.full_backward(n, x, root_finder=dtd.LinearRoots())
    )
    with pytest.raises(TypeError, match=r"not computed in half precision.*net\.float\(\)"):
        call(net, x)


# ---------------------------------------------------------------- a decomposition owns its data
@pytest.mark.parametrize(
    "decompose",
    [
        pytest.param(lambda net, x: dtd.train_free(net, x), id="train_free"),
        pytest.param(lambda net, x: dtd.train_free(net, x, rule="w2"), id="train_free-w2"),
        pytest.param(lambda net, x: dtd.train_free(net, x, root_finder=dtd.RegionSamplingRoots(16)), id="sampling"),
        pytest.param(lambda net, x: dtd.full_backward(net, x, root_finder=dtd.LinearRoots()), id="full_backward"),
    ],
)
def test_results_do_not_alias_the_callers_x(decompose):
    net = _net()
    x = _x(net)
    dec = decompose(net, x)
    roots = [layer.roots.clone() for layer in dec.layers]
    relevance = dec.relevance.clone()
    x.mul_(2)  # the caller reuses its buffer
    assert all(torch.equal(r, layer.roots) for r, layer in zip(roots, dec.layers, strict=True))
    assert torch.equal(relevance, dec.relevance)
    x_before = x.clone()
    dec.layers[0].input.add_(1)  # the caller writes into the result
    assert torch.equal(x, x_before)


# ---------------------------------------------------------------- clear errors
def test_meta_device_network_is_a_clear_error():
    net = _net().to("meta")
    with pytest.raises(ValueError, match="meta device"):
        dtd.train_free(net, torch.rand(3, 4, device="meta"))


def test_uninitialised_lazy_linear_is_a_clear_error():
    with pytest.raises(ValueError, match=r"module '0' \(LazyLinear\) has uninitialised parameters: run the model once"):
        dtd.ReLUNetwork.from_sequential(nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match=r"layer 0 \(LazyLinear\) has uninitialised parameters"):
        dtd.ReLUNetwork([nn.LazyLinear(3), nn.Linear(3, 2)])


def test_largest_seed_runs_and_layer_seeds_do_not_overflow():
    net = _net()
    x = _x(net)
    for seed in (2**62, 2**63 - 1):
        dec = dtd.train_free(net, x, root_finder=dtd.RegionSamplingRoots(8, seed=seed))
        assert bool(torch.isfinite(dec.relevance).all())
        dtd.train_free(net, x[:2], root_finder=dtd.MetropolisHastingsRoots(2, 3, seed=seed))


def test_estimate_cost_refuses_negative_counts_and_matches_the_recurrence():
    net = _net()
    with pytest.raises(ValueError, match="n_points must be >= 0"):
        dtd.estimate_cost(net, -5)
    # N_0 = n, N_{k+1} = N_k (1 + J_k), J = 1 at the top: 3 + 3*6 + 3*6*6
    assert dtd.estimate_cost(net, 3) == 3 + 18 + 108
    assert dtd.estimate_cost(net, 0) == 0


def test_highs_banner_does_not_reach_stdout():
    """HiGHS prints a banner on fd 1 for the first solver of a process: run a fresh process and read its stdout."""
    code = (
        "import torch, dtd\n"
        "net = dtd.ReLUNetwork.random([4, 5, 2], seed=1)\n"
        "x = net.sample_inputs(2, seed=0)\n"
        "dtd.train_free(net, x, root_finder=dtd.RegionRoots())\n"
        "dtd.regions.region_output_root(net, x)\n"
        "print('done')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=300)
    assert out.stdout == "done\n"
    assert "HiGHS" not in out.stderr


def test_region_lp_leaves_python_stdout_alone(capfd):
    """What the caller prints around the LPs still arrives, in order, and nothing else does."""
    net = _net(sizes=(4, 5, 2))
    x = net.sample_inputs(2, seed=0)
    print("before")
    dtd.regions.region_output_root(net, x)
    print("after")
    captured = capfd.readouterr()
    assert captured.out == "before\nafter\n"


# ---------------------------------------------------------------- chunking and progress
def test_sampling_roots_are_identical_for_every_memory_budget():
    net = dtd.ReLUNetwork.random([10, 10, 10, 2], seed=2)
    x = net.sample_inputs(70, seed=0)  # 70 points: chunks of 16 and a ragged last one
    whole = dtd.train_free(net, x, root_finder=dtd.RegionSamplingRoots(12, seed=3))
    finder = dtd.RegionSamplingRoots(12, seed=3, memory_budget=1)
    assert finder.chunk_points(20, 10, 10) == 16
    chunked = dtd.train_free(net, x, root_finder=finder)
    for a, b in zip(whole.layers, chunked.layers, strict=True):
        assert torch.equal(a.roots, b.roots) and torch.equal(a.root_valid, b.root_valid)


def test_sampling_does_not_split_points_with_few_values():
    """Below 16 directions x width per point torch's normal stream would differ per chunk: no split."""
    assert dtd.RegionSamplingRoots(3, memory_budget=1).chunk_points(5, 4, 5) == -1


def test_progress_is_quiet_in_ci_and_off_a_terminal(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.progress_enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress.progress_enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))
    assert not progress.progress_enabled()
    with progress.progress(5, "quiet") as bar:
        bar.update(5)
        assert bar.disable


# ---------------------------------------------------------------- issue 9: types and identities
def test_lp_status_values_and_count_keys():
    assert [int(s) for s in LPStatus] == [0, 1, 2, 3]
    assert [s.label for s in LPStatus] == ["solved", "trivial", "infeasible", "solver failed"]
    net = _net(torch.float64, sizes=(4, 5, 2))
    x = net.sample_inputs(3, seed=0)
    found = dtd.RegionRoots().find(net, 1, net.activations(x)[1], torch.ones(3, 2, dtype=torch.float64), output=0)
    counts = found.counts()
    assert list(counts) == ["solved", "trivial", "infeasible", "solver failed"]
    assert sum(counts.values()) == 6


def test_root_sets_live_in_rootsets_and_stay_importable_from_roots():
    from dtd import roots, rootsets

    assert roots.RegionRootSet is rootsets.RegionRootSet and roots.WalkRootSet is rootsets.WalkRootSet
    assert rootsets.RegionRootSet.__module__ == "dtd.rootsets"


def test_rule_equality_is_on_parameter_values():
    assert R.ZB(0, 1.0000001) != R.ZB(0, 1.0)
    assert R.ZB(0, 1) == R.ZB(0.0, 1.0) and hash(R.ZB(0, 1)) == hash(R.ZB(0.0, 1.0))
    assert R.Gamma(2) == R.Gamma(2.0) and hash(R.Gamma(2)) == hash(R.Gamma(2.0))
    assert R.Gamma(2) != R.Gamma(2.0000001)
    assert R.ZB(torch.tensor([0.0, 1.0]), 2.0) != R.ZB(torch.tensor([0.0, 1.5]), 2.0)
    assert R.ZB(torch.tensor([0.0, 1.0]), 2.0) == R.ZB(torch.tensor([0.0, 1.0]), 2.0)
    assert R.ZPlus() == R.ZPlus() and R.ZPlus() != R.LRP0()
    assert R.Gamma(2.0).params() == {"gamma": 2.0}
    assert repr(R.Gamma(0.25)) == "Gamma(gamma=0.25)" and repr(R.ZB(0, 5)) == "ZB(low=0, high=5)"
    assert repr(R.ZB(0, 1.0000001)) == "ZB(low=0, high=1.0000001)"
    assert len({R.Gamma(1), R.Gamma(1.0), R.ZB(0, 1), R.ZB(0.0, 1.0)}) == 2


def test_walk_restores_the_thread_count_even_on_error():
    net = _net(sizes=(4, 5, 2))
    x = net.sample_inputs(3, seed=0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        dtd.train_free(net, x, root_finder=dtd.MetropolisHastingsRoots(2, 5))
        assert torch.get_num_threads() == 2
        finder = dtd.MetropolisHastingsRoots(2, 5)
        with pytest.raises(RuntimeError):  # a relevance of the wrong shape fails inside the walk
            finder.find(net, 1, net.activations(x)[1], torch.ones(3, 7, dtype=net.dtype), output=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
