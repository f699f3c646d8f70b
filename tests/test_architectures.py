"""properties.generate.architectures: CNNs and residual nets, their bias populations, strategies and printed code."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import find, given, settings
from torch import nn

from properties.generate import architectures as A

#: float64 forward comparisons of two computations of the same model (different summation orders)
FORWARD_ATOL64 = 1e-12


def _shifts(model: nn.Module) -> list[torch.Tensor]:
    """Each affine unit's folded shift, computed from the modules on a zero input (independent of the builder)."""
    out = []
    with torch.no_grad():
        for _, module, bn in A.affine_units(model):
            if isinstance(module, nn.Linear):
                zero = torch.zeros(1, module.in_features, dtype=module.weight.dtype)
                out.append(module(zero)[0])
                continue
            k = module.kernel_size[0]
            zero = torch.zeros(1, module.in_channels, k + 2, k + 2, dtype=module.weight.dtype)
            y = module(zero)
            y = bn(y) if bn is not None else y
            out.append(y[0, :, y.shape[2] // 2, y.shape[3] // 2])
    return out


def _kinds(model):
    return {type(m) for m in model.modules()}


@pytest.mark.parametrize("architecture", A.ARCHITECTURES)
@pytest.mark.parametrize("population", A.POPULATIONS)
def test_populations_hold_their_sign_conditions(architecture, population):
    models = A.sample_models(architecture, 8, seed=3, population=population, image_size=(2, 6))
    negative_scale = 0
    for g in models:
        shifts = torch.cat(_shifts(g.model))
        if population == "bias_free":
            assert bool((shifts.abs() <= FORWARD_ATOL64).all())
            x = A.nonnegative_images(4, g.input_shape, seed=1)
            with torch.no_grad():  # positively homogeneous: no bias anywhere
                assert torch.allclose(g.model(2 * x), 2 * g.model(x), atol=FORWARD_ATOL64, rtol=0)
                assert bool((g.model(torch.zeros_like(x)).abs() <= FORWARD_ATOL64).all())
            assert all(m.bias is None for _, m, _ in A.affine_units(g.model))
        elif population == "bias_negative":
            assert bool((shifts <= FORWARD_ATOL64).all())
            assert all(bool((m.bias <= 0).all()) for _, m, _ in A.affine_units(g.model))
        else:
            assert bool((shifts > 0).any())
        for bn in (m for m in g.model.modules() if isinstance(m, nn.BatchNorm2d)):
            assert bool((bn.weight < 0).any()), "every batch norm has a negative scale"
            assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
            assert bool((bn.running_var > 0).all())
            negative_scale += int((bn.weight < 0).sum())
        assert not g.model.training
        assert not any(p.requires_grad for p in g.model.parameters())
    assert negative_scale > 0


def test_cnns_cover_max_and_average_pooling_and_both_heads():
    models = A.sample_models("cnn", 40, seed=0, image_size=(4, 8))
    kinds = set().union(*(_kinds(g.model) for g in models))
    assert {nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d, nn.Conv2d, nn.Linear} <= kinds
    assert {g.spec.head for g in models} == set(A.HEADS)
    for g in models:
        x = A.nonnegative_images(3, g.input_shape, seed=2)
        assert x.shape == (3, *g.input_shape) and bool((x >= 0).all())
        assert g.model(x).shape == (3, g.spec.outputs)
        for pool in (m for m in g.model.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))):
            assert pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))


def test_residual_nets_add_identity_and_downsample_shortcuts():
    models = A.sample_models("resnet", 12, seed=0, depth=(1, 2), image_size=(2, 6))
    blocks = [b for g in models for b in g.model.blocks]
    assert any(b.downsample is None for b in blocks) and any(b.downsample is not None for b in blocks)
    g = next(g for g in models if any(b.downsample is None for b in g.model.blocks))
    x = A.nonnegative_images(2, g.input_shape, seed=0)
    block = next(b for b in g.model.blocks if b.downsample is None)
    # the block's output is relu(branch + input): recompute it by hand
    with torch.no_grad():
        h = g.model.stem(x)
        for b in g.model.blocks:
            if b is block:
                break
            h = b(h)
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(h)))))
        assert torch.allclose(block(h), torch.relu(branch + h), atol=FORWARD_ATOL64, rtol=0)
    for g in models:
        assert g.model(A.nonnegative_images(2, g.input_shape, seed=1)).shape == (2, g.spec.outputs)


@pytest.mark.parametrize("architecture", A.ARCHITECTURES)
def test_models_are_deterministic_per_seed_and_leave_the_global_rng_alone(architecture):
    state = torch.get_rng_state()
    first = A.sample_models(architecture, 3, seed=5)
    again = A.sample_models(architecture, 3, seed=5)
    other = A.sample_models(architecture, 3, seed=6)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first, again, strict=True):
        assert a.spec == b.spec and a.seed == b.seed
        for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
            assert torch.equal(p, q), name
    assert any(a.spec != c.spec or a.seed != c.seed for a, c in zip(first, other, strict=True))
    rebuilt = A.build(first[0].spec, first[0].seed, first[0].population)
    x = A.nonnegative_images(3, first[0].input_shape, seed=0)
    assert torch.equal(rebuilt(x), first[0].model(x))


def test_dtype_and_bn_eps_are_honoured():
    g = A.sample_models("cnn", 1, seed=0, dtype=torch.float32, bn_eps=0.0)[0]
    assert all(p.dtype == torch.float32 for p in g.model.parameters())
    assert all(m.eps == 0.0 for m in g.model.modules() if isinstance(m, nn.BatchNorm2d))


def _rebuild(code: str) -> nn.Module:
    namespace: dict = {}
    state = torch.get_rng_state()
    exec(compile(code, "<printed model>", "exec"), namespace)
    assert torch.equal(torch.get_rng_state(), state), "the printed code touched torch's global RNG"
    return namespace["model"]


@pytest.mark.parametrize("architecture", A.ARCHITECTURES)
def test_printed_code_rebuilds_the_same_function(architecture):
    for g in A.sample_models(architecture, 4, seed=9, population="bias_positive"):
        x = A.nonnegative_images(5, g.input_shape, seed=4)
        for code in (A.to_code(g.model), g.code()):
            model = _rebuild(code)
            assert not model.training
            with torch.no_grad():
                assert torch.equal(model(x), g.model(x))
    # an edited model (rounded weights, as a shrinker makes them) prints exactly too
    g = A.sample_models(architecture, 1, seed=1, dtype=torch.float32)[0]
    with torch.no_grad():
        for p in g.model.parameters():
            p.copy_(p.round(decimals=2))
    x = A.nonnegative_images(3, g.input_shape, seed=0, dtype=torch.float32)
    assert torch.equal(_rebuild(A.to_code(g.model))(x), g.model(x))


def test_to_code_refuses_large_or_foreign_models():
    g = A.sample_models("cnn", 1, seed=0)[0]
    with pytest.raises(ValueError, match="builder_code"):
        A.to_code(g.model, max_numbers=3)
    with pytest.raises(TypeError, match="Tanh"):
        A.to_code(nn.Sequential(nn.Tanh()))
    with pytest.raises(TypeError, match="nn.Module"):
        A.to_code("model")


@settings(max_examples=15)
@given(g=A.cnns(channels=(1, 3), depth=(1, 2), image_size=(2, 6), population="bias_negative"))
def test_cnn_strategy_respects_its_bounds(g):
    assert isinstance(g.spec, A.CNNSpec) and g.population == "bias_negative"
    assert 1 <= len(g.spec.channels) <= 2 and all(1 <= c <= 3 for c in g.spec.channels)
    assert 2 <= g.spec.image_size <= 6
    assert torch.cat(_shifts(g.model)).max() <= FORWARD_ATOL64


@settings(max_examples=10)
@given(g=A.resnets(channels=(1, 3), depth=(1, 2), image_size=(3, 5)))
def test_resnet_strategy_respects_its_bounds(g):
    assert isinstance(g.model, A.ResidualNet) and 1 <= len(g.model.blocks) <= 2
    assert g.model(A.nonnegative_images(1, g.input_shape, seed=0)).shape == (1, g.spec.outputs)


def test_strategies_shrink_towards_small_models():
    pooled = find(A.cnns(depth=(1, 3), image_size=(2, 8), channels=(1, 4)), lambda g: "max" in g.spec.pools)
    assert pooled.spec.image_size == 2 and pooled.spec.channels == (1,) and pooled.spec.head == "gap"
    blocks = find(A.resnets(depth=(1, 2), image_size=(2, 6)), lambda g: len(g.model.blocks) == 2)
    assert blocks.spec.stem == 1 and blocks.spec.image_size == 2 and all(c == 1 for c, _ in blocks.spec.blocks)


@pytest.mark.parametrize("bounds, error, message", [
    (dict(channels=0), ValueError, "channels must be >= 1"),
    (dict(depth=(2, 1)), ValueError, "depth has min > max"),
    (dict(image_size="8"), TypeError, "image_size must be an int"),
    (dict(population="bias_small"), ValueError, "population must be one of"),
    (dict(population=()), ValueError, "non-empty"),
    (dict(dtype=torch.int64), TypeError, "dtype must be a floating"),
    (dict(bn_eps=-1.0), ValueError, "bn_eps must be >= 0"),
    (dict(shape=3), TypeError, "unexpected keyword"),
])
def test_samplers_and_strategies_reject_bad_arguments(bounds, error, message):
    with pytest.raises(error, match=message):
        A.sample_models("cnn", 1, seed=0, **bounds)
    with pytest.raises(error, match=message):
        find(A.resnets(**bounds), lambda g: True)


def test_specs_and_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="architecture must be one of"):
        A.sample_models("vgg", 1, seed=0)
    with pytest.raises(ValueError, match="architecture must be one of"):
        A.architectures("mlp")
    with pytest.raises(ValueError, match=r"stage 1 pools a 1x1 image"):
        A.CNNSpec(1, 2, (1, 1), ("max", "avg"))
    with pytest.raises(ValueError, match="one entry per stage"):
        A.CNNSpec(1, 4, (1, 2), ("max",))
    with pytest.raises(ValueError, match="pools\\[0\\] must be one of"):
        A.CNNSpec(1, 4, (1,), ("min",))
    with pytest.raises(ValueError, match="stride must be <= 2"):
        A.ResNetSpec(1, 4, 2, ((2, 3),))
    with pytest.raises(TypeError, match="spec must be a CNNSpec or a ResNetSpec"):
        A.build("cnn", 0)
    with pytest.raises(ValueError, match="population must be one of"):
        A.build(A.CNNSpec(1, 4, (1,), ("max",)), 0, "free")


def test_live_inputs_have_a_live_output_or_a_clear_error():
    for g in A.sample_models("cnn", 10, seed=0, population="bias_free"):  # about a quarter of the draws are dead
        with torch.no_grad():
            outputs = g.model(A.nonnegative_images(200, g.input_shape, seed=0))
        output = int((outputs > 0).sum(0).argmax())
        if int((outputs[:, output] > 0).sum()) >= 20:
            break
    x = A.live_inputs(g.model, g.input_shape, 6, output=output, seed=0)
    assert x.shape == (6, *g.input_shape) and bool((x >= 0).all())
    assert bool((g.model(x)[:, output] > 0).all())
    with pytest.raises(ValueError, match=r"exceeded 1000000.0 on only 0 of 128"):
        A.live_inputs(g.model, g.input_shape, 2, output=output, seed=0, min_output=1e6, max_draws=2)
    with pytest.raises(ValueError, match="out of range"):
        A.live_inputs(g.model, g.input_shape, 2, output=99, seed=0)
    assert math.isfinite(float(x.sum()))


@pytest.mark.parametrize("architecture", A.ARCHITECTURES)
def test_sample_cases_have_live_outputs_and_print_as_code(architecture):
    cases = A.sample_cases(architecture, "bias_negative", 3, points=4, seed=0)
    again = A.sample_cases(architecture, "bias_negative", 3, points=4, seed=0)
    for case, same in zip(cases, again, strict=True):
        assert case.generated.population == "bias_negative" and case.x.shape == (4, *case.generated.input_shape)
        with torch.no_grad():
            assert bool((case.model(case.x)[:, case.output] > A.LIVE_OUTPUT).all())
        assert torch.equal(case.x, same.x) and case.output == same.output
        namespace: dict = {}
        with torch.random.fork_rng(devices=[]):
            exec(compile(case.code(), "<printed case>", "exec"), namespace)
        assert torch.equal(namespace["x"], case.x) and namespace["output"] == case.output
        with torch.no_grad():
            assert torch.equal(namespace["model"](namespace["x"]), case.model(case.x))
        assert case.describe().startswith(f"{architecture} ")


def test_shrink_case_finds_a_small_model_that_still_fails():
    case = next(c for c in A.sample_cases("cnn", "bias_free", 12, points=5, seed=1, depth=2, channels=(2, 4),
                                          image_size=(6, 8))
                if "max" in c.generated.spec.pools)

    def has_max_pool(c):  # the "failure": the model max-pools
        return any(isinstance(m, nn.MaxPool2d) for m in c.model.modules())

    small = A.shrink_case(case, has_max_pool, budget=200)
    assert has_max_pool(small) and small.x.shape[0] == 1
    assert small.generated.spec.channels == (1,) and small.generated.spec.image_size == 2
    assert bool((small.model(small.x)[:, small.output] > A.LIVE_OUTPUT).all())
    resnet = A.sample_cases("resnet", "bias_positive", 1, points=3, seed=0, depth=2, channels=(2, 3))[0]
    tiny = A.shrink_case(resnet, lambda c: True, budget=200)
    assert len(tiny.generated.spec.blocks) == 1 and tiny.generated.spec.stem == 1 and tiny.x.shape[0] == 1
    assert A.shrink_case(resnet, lambda c: False, budget=5) is resnet
