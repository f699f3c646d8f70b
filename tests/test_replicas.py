"""The z+ replica on CNNs and residual nets, the CNN adapters of zennit and captum, and the kit's mutants.

The replica (:func:`properties.conformance.replicas.zplus`) is checked by hand on a tiny
model, against ``dtd.train_free`` on MLPs and against zennit on the original
CNNs; the mutants each differ from it where their defect matters and only there.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dtd
from dtd import rules as R
from properties.conformance import adapters, replicas
from properties.generate import architectures as A
from properties.measure.thresholds import ROUNDING64

#: the replica with zennit's stabiliser and pooling nodes computes zennit's divisions: rounding only
ZENNIT_RTOL = 1e-9
#: captum's stabiliser is 1e-9 and it also divides at the max pool and Flatten, which the replica does not:
#: relative differences of ~1e-9 / d per division
CAPTUM_RTOL = 1e-6
#: a defect "matters" when it moves the relevance by more than this share of its largest entry
DEFECT_RTOL = 1e-3


def _live(g: A.GeneratedModel, n: int = 8):
    """``(x, output)``: ``n`` inputs on which the model's most often positive output is positive, or None."""
    with torch.no_grad():
        y = g.model(A.nonnegative_images(200, g.input_shape, seed=0))
    output = int((y > 0).sum(0).argmax())
    if int((y[:, output] > 0).sum()) < 10:
        return None
    return A.live_inputs(g.model, g.input_shape, n, output=output, seed=1), output


def _cases(architecture: str, count: int, seed: int, **bounds):
    out = []
    for g in A.sample_models(architecture, 4 * count, seed=seed, **bounds):
        found = _live(g)
        if found is not None:
            out.append((g, *found))
        if len(out) == count:
            return out
    raise AssertionError(f"fewer than {count} live {architecture}s")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-point ``max |a - b| / max |b|``."""
    a, b = a.flatten(1), b.flatten(1)
    return float(((a - b).abs().amax(1) / b.abs().amax(1).clamp_min(1e-300)).max())


def test_the_replica_by_hand_on_a_tiny_max_pool_cnn():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    fc = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[2.0]]], [[[-1.0]]]]))
        fc.weight.copy_(torch.tensor([[1.5, 1.0]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2, stride=2), nn.Flatten(), fc).double()
    x = torch.tensor([[[[0.5, 3.0], [1.0, 0.0]]]], dtype=torch.float64)
    # channel 0 is 2x (max 6 at pixel (0, 1)), channel 1 is dead; f = 1.5 * 6 = 9: all of it goes to pixel (0, 1)
    relevance = replicas.zplus(model, x, 0)
    assert torch.equal(relevance, torch.tensor([[[[0.0, 9.0], [0.0, 0.0]]]], dtype=torch.float64))
    # handled as an average, the window shares 9 in proportion to 2x = (1, 6, 2, 0)
    average = replicas.zplus(model, x, 0, max_pool="average")
    torch.testing.assert_close(average, torch.tensor([[[[1.0, 6.0], [2.0, 0.0]]]], dtype=torch.float64) * 9 / 9,
                               rtol=0, atol=ROUNDING64)


def test_the_replica_equals_dtd_zplus_on_mlps():
    for seed in range(4):
        net = dtd.ReLUNetwork.random([6, 8, 5, 3], seed=seed, dtype=torch.float64)
        output = int(net(net.sample_inputs(1, seed=0, output=0, min_output=-1e9)).argmax())
        try:
            x = net.sample_inputs(12, output=output, seed=seed)
        except ValueError:
            continue
        ours = replicas.zplus(net.to_sequential(), x, output)
        theirs = dtd.train_free(net, x, rule="z+", output=output).relevance
        assert float((ours - theirs).abs().max()) <= ROUNDING64


@pytest.mark.parametrize("architecture", A.ARCHITECTURES)
def test_the_replica_conserves_on_bias_free_models(architecture):
    for g, x, output in _cases(architecture, 3, seed=3, population="bias_free", image_size=(2, 6)):
        relevance = replicas.zplus(g.model, x, output)
        with torch.no_grad():
            f = g.model(x)[:, output]
        assert relevance.shape == x.shape and bool((relevance >= 0).all())
        assert float((relevance.flatten(1).sum(1) - f).abs().max()) <= ROUNDING64 * max(1.0, float(f.max()))


def test_zennit_zplus_on_bias_free_cnns_with_max_pooling_equals_the_replica():
    # bn_eps = 0: zennit's merge leaves the batch norm computing x / sqrt(1 + eps) (see properties.conformance.adapters)
    cases = _cases("cnn", 4, seed=2, population="bias_free", bn_eps=0.0, image_size=(4, 6))
    assert any("max" in g.spec.pools for g, _, _ in cases) and any("avg" in g.spec.pools for g, _, _ in cases)
    zennit_zplus = next(i for i in adapters.zennit_implementations() if i.name == "zennit_zplus")
    for g, x, output in cases:
        theirs = zennit_zplus.attribute(g.model, x, output)
        ours = replicas.zplus(g.model, x, output, stabilizer=adapters.ZENNIT_STABILIZER, pooling_nodes=True)
        assert theirs.shape == x.shape
        assert _relative(theirs, ours) <= ZENNIT_RTOL, g.spec
        # pooling as nodes of their own or folded into the next layer: the same z+ (2x2 stride-2 and global
        # pooling commute with the positive part), so the exact replica is DTD's z+ on the graph
        folded = replicas.zplus(g.model, x, output)
        assert _relative(replicas.zplus(g.model, x, output, pooling_nodes=True), folded) <= ZENNIT_RTOL


def test_zennit_zplus_on_residual_nets_splits_sums_by_their_outputs():
    """With the Sum canonizer zennit equals the replica's ``proportional`` split, without it the doubled ``both``;
    DTD's joint z+ over the block row differs from either (the limitation properties.conformance.adapters documents)."""
    for g, x, output in _cases("resnet", 2, seed=2, population="bias_free", bn_eps=0.0, image_size=(2, 5)):
        with_sum = adapters.zennit_model_attribute(g.model, x, output, R.ZPlus(), R.ZPlus())
        bare = adapters.zennit_model_attribute(g.model, x, output, R.ZPlus(), R.ZPlus(), sum_module=False)
        like_zennit = dict(stabilizer=adapters.ZENNIT_STABILIZER, pooling_nodes=True)
        assert (
            _relative(with_sum, replicas.zplus(g.model, x, output, residual="proportional", **like_zennit))
            <= ZENNIT_RTOL
        )
        assert _relative(bare, replicas.zplus(g.model, x, output, residual="both", **like_zennit)) <= ZENNIT_RTOL
        assert _relative(with_sum, replicas.zplus(g.model, x, output)) > DEFECT_RTOL
        with torch.no_grad():
            f = g.model(x)[:, output]
        assert bool((bare.flatten(1).sum(1) > f * (1 + DEFECT_RTOL)).all()), "a bare + doubles the shortcut's relevance"


def test_the_zennit_adapter_leaves_a_residual_net_as_it_was():
    g, x, output = _cases("resnet", 1, seed=5)[0]
    before = {k: v.clone() for k, v in g.model.state_dict().items()}
    names = [n for n, _ in g.model.named_modules()]
    y = g.model(x)
    adapters.zennit_model_attribute(g.model, x, output, R.ZPlus(), R.ZPlus())
    assert [n for n, _ in g.model.named_modules()] == names
    assert all(torch.equal(before[k], v) for k, v in g.model.state_dict().items())
    assert torch.equal(g.model(x), y)
    assert all("forward" not in vars(b) for b in g.model.blocks)


def _bn_free_cnn(seed: int) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2, stride=2),
            nn.Conv2d(4, 4, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 3, bias=False),
        ).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=generator, dtype=torch.float64) - 0.3) * 2)
    return model


def test_captum_zplus_on_a_cnn_without_batch_norm_equals_the_replica():
    captum_zplus = next(i for i in adapters.captum_implementations() if i.name == "captum_zplus")
    checked = 0
    for seed in range(6):
        model = _bn_free_cnn(seed)
        g = A.GeneratedModel(A.CNNSpec(1, 8, (1,), ("none",)), seed, "bias_free", model)
        found = _live(g)
        if found is None:
            continue
        x, output = found
        theirs = captum_zplus.attribute(model, x, output)
        assert _relative(theirs, replicas.zplus(model, x, output)) <= CAPTUM_RTOL
        checked += 1
    assert checked >= 3


def test_the_model_adapters_equal_the_mlp_adapters_on_mlps():
    net = dtd.ReLUNetwork.random([10, 10, 10, 10, 2], seed=2, dtype=torch.float64)
    x = net.sample_inputs(16, output=0, seed=0)
    for first, rule in ((R.ZPlus(), R.ZPlus()), (R.LRP0(), R.LRP0()), (R.Gamma(0.25), R.Gamma(0.25)),
                        (R.WSquare(), R.ZPlus()), (R.ZB(0.0, adapters.ZBOX_HIGH), R.ZPlus())):
        old = adapters.zennit_attribute(net.to_sequential(), x, 0, [first] + [rule] * (net.n_layers - 1))
        new = adapters.zennit_model_attribute(net.to_sequential(), x, 0, first, rule)
        assert torch.equal(old, new)
    make = lambda: __import__("captum.attr._utils.lrp_rules", fromlist=["x"]).Alpha1_Beta0_Rule(set_bias_to_zero=True)  # noqa: E731
    assert torch.equal(adapters.captum_attribute(net.to_sequential(), x, 0, make),
                       adapters.captum_model_attribute(net.to_sequential(), x, 0, make))


def _mutant(name):
    return next(i for i in replicas.mutant_implementations() if i.name == name)


def test_each_mutant_differs_where_its_defect_matters_and_only_there():
    cnns = _cases("cnn", 6, seed=4, population="bias_negative", image_size=(4, 6))
    resnets = _cases("resnet", 2, seed=4, population="bias_negative", image_size=(2, 5))
    maxpool = [c for c in cnns if "max" in c[0].spec.pools]
    no_maxpool = [c for c in cnns if "max" not in c[0].spec.pools]
    assert maxpool and no_maxpool

    correct = {id(c): replicas.zplus(c[0].model, c[1], c[2]) for c in cnns + resnets}

    def moved(name, case):
        g, x, output = case
        return _relative(_mutant(name).attribute(g.model, x, output), correct[id(case)]) > DEFECT_RTOL

    # every model has a batch norm with a negative scale: folding it flips which weights are positive
    assert all(moved("mutant_bn_unmerged", c) for c in cnns + resnets)
    assert all(moved("mutant_max_as_average", c) for c in maxpool)
    assert not any(moved("mutant_max_as_average", c) for c in no_maxpool + resnets)
    assert all(moved("mutant_residual_both", c) for c in resnets)
    assert not any(moved("mutant_residual_both", c) for c in cnns)
    # the batch stabiliser stays within the 1e-6 it claims but makes a point depend on its batch mates
    g, x, output = resnets[0]
    stabilised = _mutant("mutant_batch_stabilizer")
    assert stabilised.stabilizer == 1e-6
    in_batch, alone = stabilised.attribute(g.model, x, output), stabilised.attribute(g.model, x[:1], output)
    assert not torch.equal(in_batch[:1], alone)
    assert _relative(in_batch, replicas.zplus(g.model, x, output)) < 1e-6


def test_the_replica_refuses_what_it_does_not_model():
    with pytest.raises(TypeError, match="not Tanh"):
        replicas.zplus(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), torch.ones(1, 2), 0)
    with pytest.raises(TypeError, match="nn.Module"):
        replicas.zplus("model", torch.ones(1, 2), 0)
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="residual must be one of"):
        replicas.zplus(model, torch.ones(1, 2), 0, residual="half")
    with pytest.raises(ValueError, match="max_pool must be one of"):
        replicas.zplus(model, torch.ones(1, 2), 0, max_pool="min")
    with pytest.raises(ValueError, match="output 5 out of range"):
        replicas.zplus(model, torch.ones(1, 2), 5)
    assert math.isfinite(float(replicas.zplus(model, torch.zeros(1, 2), 0).sum()))


def test_on_the_kits_mlp_populations_the_replica_passes_and_only_the_batch_mutant_fails():
    """On MLPs there is no batch norm, pooling or skip: the three structural mutants are the replica there."""
    from properties import conformance

    for impl in [replicas.replica_implementation()] + replicas.mutant_implementations():
        result = conformance.run(impl, seed=0, networks=3, points=5, shrink_failures=False)
        expected = [f"conformance.{impl.name}.batch_independent"] if impl.name == "mutant_batch_stabilizer" else []
        assert result.failing() == expected, impl.name


# ------------------------------------------------------------------------------------------------ the kit on images
#: which rows each structural defect must break on the kit's image populations, and which it must leave alone
IMAGE_DEFECTS = {
    "mutant_bn_unmerged": ("equals_dtd.cnn_", "equals_dtd.resnet_"),
    "mutant_max_as_average": ("equals_dtd.cnn_",),
    "mutant_residual_both": ("equals_dtd.resnet_", "conservation.resnet_"),
    "mutant_batch_stabilizer": ("batch_independent.cnn", "batch_independent.resnet"),
}
#: a small sweep of the kit's CNN and residual-net populations (3 networks per population: max pooling in each)
IMAGE_SWEEP = dict(seed=0, networks=2, points=2, image_networks=3, image_points=4)


def _image_run(impl):
    import dataclasses

    from properties import conformance

    return conformance.run(dataclasses.replace(impl, architectures=("cnn", "resnet")), **IMAGE_SWEEP)


def test_the_honest_replica_passes_the_kit_on_cnns_and_residual_nets():
    result = _image_run(replicas.replica_implementation())
    assert result.failing() == []
    assert any(".cnn_bias_negative" in row for row in result.rates) and any(
        ".resnet_bias_free" in row for row in result.rates
    )
    # with zennit's stabiliser and pooling as nodes of their own, claiming that stabiliser: the graph's bound holds
    from properties.conformance import Implementation

    stabilised = Implementation("replica_stabilised",
                                lambda m, x, o: replicas.zplus(m, x, o, stabilizer=1e-6, pooling_nodes=True),
                                "z+", stabilizer=1e-6)
    result = _image_run(stabilised)
    assert [row for row in result.failing() if ".equals_dtd." in row or ".conservation." in row] == []


@pytest.mark.parametrize("name", sorted(IMAGE_DEFECTS))
def test_the_kit_catches_each_defect_on_cnns_and_residual_nets(name):
    result = _image_run(_mutant(name))
    prefix = f"conformance.{name}."
    failing = {row[len(prefix):] for row in result.failing()}
    for caught_by in IMAGE_DEFECTS[name]:
        rows = [row for row in failing if row.startswith(caught_by)]
        assert rows, f"{name}: no {caught_by}* row below 100 % (failing: {sorted(failing)})"
        for row in rows:
            assert result.examples[prefix + row], f"{name}: {row} has no counterexample"
    if name == "mutant_max_as_average":  # a max pool handled as average changes nothing without max pooling
        assert not any(row.startswith(("equals_dtd.resnet", "conservation.resnet")) for row in failing)
    if name == "mutant_residual_both":
        assert not any(".cnn" in "." + row for row in failing)
    if name == "mutant_batch_stabilizer":  # inside the claimed stabiliser: only batch independence breaks
        assert all(row.startswith("batch_independent.") for row in failing)


def test_zennit_on_cnns_without_batch_norm_eps_equals_dtd():
    """The kit's break of zennit on CNNs is its batch-norm merge (x / sqrt(1 + eps)): with ``bn_eps = 0`` it agrees."""
    from properties import conformance

    zennit_zplus = next(i for i in adapters.zennit_implementations() if i.name == "zennit_zplus")
    for population in ("bias_free", "bias_negative"):
        for case in A.sample_cases("cnn", population, 3, points=4, seed=7, bn_eps=0.0, image_size=(2, 6)):
            holds, counted = conformance.evaluate_case(zennit_zplus, case, population, only={"equals_dtd"})[
                "equals_dtd"
            ]
            assert bool(holds[counted].all()), case.describe()
        eps_cases = A.sample_cases("cnn", population, 3, points=4, seed=7, image_size=(2, 6))  # torch's eps: 1e-5
        broken = [
            conformance.evaluate_case(zennit_zplus, c, population, only={"equals_dtd"})["equals_dtd"] for c in eps_cases
        ]
        assert any(bool((counted & ~holds).any()) for holds, counted in broken)
