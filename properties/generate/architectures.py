"""Small original ``nn.Module`` s of the kinds LRP code breaks on: CNNs and residual networks.

The conformance kit hands an implementation the *original* model, so the
models here are what users write: convolutions, batch norm in eval mode with
non-trivial running statistics (negative scales included), 2x2 stride-2 max
and average pooling, global average pooling, a Linear head, and residual
blocks whose forward adds its two branches with a bare ``+``.

* :class:`CNNSpec` / :class:`ResNetSpec` describe an architecture;
  :func:`build` makes its model from a seed and a bias population, from a
  local ``torch.Generator`` only (the modules are created inside
  ``torch.random.fork_rng``, then every parameter and buffer is overwritten).
* :func:`sample_models` draws i.i.d. models (uniform structure within bounds);
  :func:`cnns` and :func:`resnets` are hypothesis strategies that shrink
  towards fewer channels, smaller images and fewer stages / blocks.
* :func:`to_code` prints a model as Python a user can paste to rebuild it
  exactly (parameters and buffers as literals); :func:`builder_code` prints the
  shorter seed-and-builder call.
* :func:`nonnegative_images` and :func:`live_inputs` draw inputs in image shape.

Bias populations (as the conformance kit's MLP populations): with ``s`` the
shift of an affine unit after batch norm is folded in (``bn(conv(0))``, per
channel; a Linear's bias):

``bias_free``
    Convolutions and the head without bias; each batch norm's ``bias`` is set
    to ``running_mean * weight / sqrt(running_var + eps)`` so ``s = 0`` up to
    float rounding (``|s|`` about 1e-17 in float64): the model is positively
    homogeneous (``f(2x) = 2 f(x)``, ``f(0) = 0``) up to rounding.
``bias_negative``
    Every ``s <= 0`` (convolution biases ``<= 0`` too).
``bias_positive``
    ``s`` uniform in ``[-BIAS_SCALE, BIAS_SCALE] / sqrt(fan_in)``; at least one
    ``s > 0`` (if none is, the head's biases are negated).

Batch norm statistics: ``running_mean ~ N(0, MEAN_SCALE^2)``, ``running_var``
log-uniform in ``VAR_RANGE``, ``|weight|`` uniform in ``SCALE_RANGE`` with a
negative sign with probability ``NEGATIVE_SCALE_SHARE``; every batch norm has
at least one negative scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from hypothesis import strategies as st
from torch import nn

from dtd.validation import check_int, check_number, check_seed

from .strategies import Bounds, check_bounds

__all__ = [
    "POPULATIONS",
    "ARCHITECTURES",
    "POOLS",
    "HEADS",
    "CNNSpec",
    "ResNetSpec",
    "BasicBlock",
    "ResidualNet",
    "build",
    "GeneratedModel",
    "sample_models",
    "cnns",
    "resnets",
    "architectures",
    "to_code",
    "builder_code",
    "nonnegative_images",
    "live_inputs",
    "affine_units",
    "ModelCase",
    "sample_cases",
    "smaller_specs",
    "shrink_case",
    "MEAN_SCALE",
    "VAR_RANGE",
    "SCALE_RANGE",
    "NEGATIVE_SCALE_SHARE",
    "BIAS_SCALE",
    "MAX_LITERAL_NUMBERS",
    "LIVE_OUTPUT",
]

POPULATIONS = ("bias_free", "bias_negative", "bias_positive")
ARCHITECTURES = ("cnn", "resnet")
#: per CNN stage: no pooling, 2x2 stride-2 average pooling, 2x2 stride-2 max pooling (shrinks towards the first)
POOLS = ("none", "avg", "max")
#: the CNN's head: global average pooling then Linear, or Flatten then Linear (shrinks towards the first)
HEADS = ("gap", "flatten")

#: standard deviation of batch norm running means
MEAN_SCALE = 0.5
#: running variances are log-uniform in this range
VAR_RANGE = (0.25, 4.0)
#: batch norm scales' magnitudes are uniform in this range
SCALE_RANGE = (0.5, 1.5)
#: probability that a batch norm channel's scale is negative (each batch norm gets at least one)
NEGATIVE_SCALE_SHARE = 0.25
#: biases (and folded shifts) are drawn up to this times 1/sqrt(fan_in)
BIAS_SCALE = 1.0
#: an explained output counts as live above this (a bias-free model's output can be ~1e-17 from rounding alone)
LIVE_OUTPUT = 1e-6
#: :func:`to_code` refuses models with more numbers than this (use :func:`builder_code`)
MAX_LITERAL_NUMBERS = 20_000



def _check_population(population: str) -> str:
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    return population


def _populations(population: str | Sequence[str]) -> tuple[str, ...]:
    chosen = (population,) if isinstance(population, str) else tuple(population)
    if not chosen:
        raise ValueError(f"population must be one of {POPULATIONS} or a non-empty sequence of them, got {population!r}")
    for p in chosen:
        _check_population(p)
    return chosen


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


# ------------------------------------------------------------------------------------------------ specs
@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """A CNN: per stage ``Conv2d(3x3, padding 1), BatchNorm2d, ReLU`` and a pool, then a head.

    Parameters
    ----------
    in_channels, image_size
        The input ``(batch, in_channels, image_size, image_size)``.
    channels
        Output channels of each stage's convolution (one stage per entry).
    pools
        Per stage one of :data:`POOLS` (``"avg"``/``"max"``: 2x2, stride 2).
    head
        ``"gap"``: ``AdaptiveAvgPool2d(1), Flatten, Linear``; ``"flatten"``: ``Flatten, Linear``.
    outputs
        The head's outputs.
    bn_eps
        The batch norms' ``eps``.
    """

    in_channels: int
    image_size: int
    channels: tuple[int, ...]
    pools: tuple[str, ...]
    head: str = "gap"
    outputs: int = 2
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_int(self.in_channels, "in_channels", minimum=1)
        check_int(self.image_size, "image_size", minimum=1)
        check_int(self.outputs, "outputs", minimum=1)
        object.__setattr__(self, "channels", tuple(check_int(c, "channels", minimum=1) for c in self.channels))
        object.__setattr__(self, "pools", tuple(self.pools))
        if not self.channels:
            raise ValueError("channels must list at least one stage")
        if len(self.pools) != len(self.channels):
            raise ValueError(f"pools must have one entry per stage ({len(self.channels)}), got {self.pools!r}")
        size = self.image_size
        for i, pool in enumerate(self.pools):
            if pool not in POOLS:
                raise ValueError(f"pools[{i}] must be one of {POOLS}, got {pool!r}")
            if pool != "none":
                if size < 2:
                    raise ValueError(f"stage {i} pools a {size}x{size} image; 2x2 pooling needs at least 2x2 "
                                     f"(use a larger image_size or pools[{i}]='none')")
                size //= 2
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        check_number(self.bn_eps, "bn_eps", minimum=0.0)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """A residual net: stem ``Conv2d(3x3), BatchNorm2d, ReLU``, :class:`BasicBlock`
    s, ``AdaptiveAvgPool2d(1)``, ``Linear``.

    Parameters
    ----------
    in_channels, image_size
        The input ``(batch, in_channels, image_size, image_size)``.
    stem
        The stem's output channels.
    blocks
        Per block ``(out_channels, stride)``, stride 1 or 2; a block whose
        stride is 2 or whose channels change has a 1x1-conv + batch norm
        downsample, the others add the identity.
    outputs, bn_eps
        As in :class:`CNNSpec`.
    """

    in_channels: int
    image_size: int
    stem: int
    blocks: tuple[tuple[int, int], ...]
    outputs: int = 2
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_int(self.in_channels, "in_channels", minimum=1)
        check_int(self.image_size, "image_size", minimum=1)
        check_int(self.stem, "stem", minimum=1)
        check_int(self.outputs, "outputs", minimum=1)
        blocks = []
        for i, block in enumerate(self.blocks):
            if not isinstance(block, (tuple, list)) or len(block) != 2:
                raise TypeError(f"blocks[{i}] must be an (out_channels, stride) pair, got {block!r}")
            channels = check_int(block[0], f"blocks[{i}] out_channels", minimum=1)
            stride = check_int(block[1], f"blocks[{i}] stride", minimum=1, maximum=2)
            blocks.append((channels, stride))
        if not blocks:
            raise ValueError("blocks must list at least one residual block")
        object.__setattr__(self, "blocks", tuple(blocks))
        check_number(self.bn_eps, "bn_eps", minimum=0.0)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


Spec = CNNSpec | ResNetSpec


# ------------------------------------------------------------------------------------------------ modules
class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, written with a bare ``+``.

    ``shortcut`` is the identity, or ``downsample`` (``Conv2d(1x1, stride), BatchNorm2d``)
    when ``stride != 1`` or the channels change.  Children are assigned in the
    order the forward visits them (zennit's ``SequentialMergeBatchNorm`` relies
    on it), each ReLU is its own module.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bn_eps: float = 1e-5):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        if stride != 1 or in_channels != out_channels:
            self.downsample: nn.Sequential | None = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels, eps=bn_eps))
        else:
            self.downsample = None
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + identity)


class ResidualNet(nn.Module):
    """Stem, :class:`BasicBlock` s, global average pooling, Linear head (see :class:`ResNetSpec`).

    ``blocks`` lists ``(out_channels, stride)`` per block; the parameters are torch's default init until overwritten.
    """

    def __init__(self, in_channels: int, stem: int, blocks: Sequence[Sequence[int]], outputs: int = 2,
                 bn_eps: float = 1e-5):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(in_channels, stem, 3, padding=1)), ("bn", nn.BatchNorm2d(stem, eps=bn_eps)),
            ("relu", nn.ReLU())]))
        layers, channels = [], stem
        for out_channels, stride in blocks:
            layers.append(BasicBlock(channels, out_channels, stride, bn_eps))
            channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


def _structure(spec: Spec, bias: bool) -> nn.Module:
    """The modules of ``spec`` (torch's init, replaced by :func:`_fill`); conv/Linear biases only when ``bias``."""
    if isinstance(spec, ResNetSpec):
        model = ResidualNet(spec.in_channels, spec.stem, spec.blocks, spec.outputs, spec.bn_eps)
        if not bias:
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    module.bias = None
        return model
    layers: list[tuple[str, nn.Module]] = []
    channels, size = spec.in_channels, spec.image_size
    for i, (out, pool) in enumerate(zip(spec.channels, spec.pools, strict=True)):
        layers += [(f"conv{i}", nn.Conv2d(channels, out, 3, padding=1, bias=bias)),
                   (f"bn{i}", nn.BatchNorm2d(out, eps=spec.bn_eps)), (f"relu{i}", nn.ReLU())]
        if pool == "avg":
            layers.append((f"pool{i}", nn.AvgPool2d(2, stride=2)))
        elif pool == "max":
            layers.append((f"pool{i}", nn.MaxPool2d(2, stride=2)))
        if pool != "none":
            size //= 2
        channels = out
    if spec.head == "gap":
        layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                   ("fc", nn.Linear(channels, spec.outputs, bias=bias))]
    else:
        layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * size * size, spec.outputs, bias=bias))]
    return nn.Sequential(OrderedDict(layers))


def affine_units(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear, nn.BatchNorm2d | None]]:
    """``(name, conv_or_linear, batch_norm_or_None)`` of every Conv2d/Linear in forward order.

    A batch norm is paired with the Conv2d it directly follows among the
    model's leaves (the order zennit's ``SequentialMergeBatchNorm`` uses; the
    models here assign children in forward order).
    """
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    units: list[tuple[str, nn.Conv2d | nn.Linear, nn.BatchNorm2d | None]] = []
    for i, (name, module) in enumerate(leaves):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            following = leaves[i + 1][1] if i + 1 < len(leaves) else None
            units.append((name, module, following if isinstance(following, nn.BatchNorm2d) else None))
    return units


def _uniform(shape: int | Sequence[int], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def _fill(model: nn.Module, population: str, generator: torch.Generator) -> None:
    """Draw every parameter and batch norm buffer of ``model`` for ``population`` from ``generator`` (float64)."""
    shifts: list[torch.Tensor] = []
    with torch.no_grad():
        for _, module, bn in affine_units(model):
            fan_in = module.weight[0].numel()
            bound = math.sqrt(6.0 / fan_in)  # He-uniform: keeps the activations' scale through ReLUs
            module.weight.copy_(_uniform(module.weight.shape, -bound, bound, generator))
            bias_bound = BIAS_SCALE / math.sqrt(fan_in)
            out = module.weight.shape[0]
            if population == "bias_free":
                shift = torch.zeros(out, dtype=torch.float64)
            elif population == "bias_negative":
                shift = -_uniform(out, 0.0, bias_bound, generator)
            else:
                shift = _uniform(out, -bias_bound, bias_bound, generator)
            own = None if module.bias is None else (
                -_uniform(out, 0.0, bias_bound, generator) if population == "bias_negative"
                else _uniform(out, -bias_bound, bias_bound, generator))
            if bn is None:  # a Linear (or a conv without batch norm): its bias is the shift
                if module.bias is not None:
                    module.bias.copy_(shift)
                shifts.append(shift)
                continue
            if own is not None and module.bias is not None:
                module.bias.copy_(own)
            mean = torch.randn(out, generator=generator, dtype=torch.float64) * MEAN_SCALE
            var = torch.exp(_uniform(out, math.log(VAR_RANGE[0]), math.log(VAR_RANGE[1]), generator))
            magnitude = _uniform(out, *SCALE_RANGE, generator)
            draws = torch.rand(out, generator=generator, dtype=torch.float64)
            negative = draws < NEGATIVE_SCALE_SHARE
            negative[int(draws.argmin())] = True  # every batch norm has a negative scale
            weight = torch.where(negative, -magnitude, magnitude)
            scale = weight / torch.sqrt(var + bn.eps)
            conv_bias = own if own is not None else torch.zeros(out, dtype=torch.float64)
            # folded shift s = (conv_bias - mean) * scale + beta
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(f"{type(bn).__name__} without running statistics: nothing to draw them into")
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(weight)
            bn.bias.copy_(shift - (conv_bias - mean) * scale)
            shifts.append(shift)
        if population == "bias_positive" and not any(bool((s > 0).any()) for s in shifts):
            head = affine_units(model)[-1][1]
            if head.bias is not None:
                head.bias.neg_()  # the head's biases are drawn non-zero: now some are > 0


def build(spec: Spec, seed: int, population: str = "bias_positive", *, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The model of ``spec`` for ``population``, in eval mode, parameters without ``requires_grad``.

    Deterministic in ``(spec, seed, population, dtype)``; drawn in float64 from
    a local ``torch.Generator`` and converted to ``dtype``; torch's global RNG
    is untouched.
    """
    if not isinstance(spec, (CNNSpec, ResNetSpec)):
        raise TypeError(f"spec must be a CNNSpec or a ResNetSpec, got {type(spec).__name__}")
    seed = check_seed(seed)
    _check_population(population)
    _check_dtype(dtype)
    with torch.random.fork_rng(devices=[]):  # the modules' own init draws from the global RNG: keep it
        model = _structure(spec, bias=population != "bias_free").double()
    _fill(model, population, torch.Generator().manual_seed(seed))
    model = model.to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@dataclasses.dataclass(frozen=True)
class GeneratedModel:
    """A drawn model and how to rebuild it: ``build(spec, seed, population, dtype=dtype)``."""

    spec: Spec
    seed: int
    population: str
    model: nn.Module
    dtype: torch.dtype = torch.float64

    @property
    def architecture(self) -> str:
        return "resnet" if isinstance(self.spec, ResNetSpec) else "cnn"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def code(self) -> str:
        """The seed-and-builder call that rebuilds :attr:`model` (:func:`builder_code`)."""
        return builder_code(self.spec, self.seed, self.population, dtype=self.dtype)


def _generated(spec: Spec, seed: int, population: str, dtype: torch.dtype) -> GeneratedModel:
    return GeneratedModel(spec, seed, population, build(spec, seed, population, dtype=dtype), dtype)


# ------------------------------------------------------------------------------------------------ bounds
@dataclasses.dataclass(frozen=True)
class _Space:
    architecture: str
    in_channels: tuple[int, int]
    channels: tuple[int, int]
    depth: tuple[int, int]
    image_size: tuple[int, int]
    outputs: tuple[int, int]
    populations: tuple[str, ...]
    dtype: torch.dtype
    bn_eps: float

    @classmethod
    def of(cls, architecture: str, *, in_channels: Bounds = (1, 2), channels: Bounds = (1, 4), depth: Bounds = (1, 2),
           image_size: Bounds = (2, 8), outputs: Bounds = (1, 3), population: str | Sequence[str] = POPULATIONS,
           dtype: torch.dtype = torch.float64, bn_eps: float = 1e-5) -> _Space:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        return cls(architecture, check_bounds(in_channels, "in_channels"), check_bounds(channels, "channels"),
                   check_bounds(depth, "depth"),
                   check_bounds(image_size, "image_size"), check_bounds(outputs, "outputs"), _populations(population),
                   _check_dtype(dtype), check_number(bn_eps, "bn_eps", minimum=0.0))

    def spec(self, pick: Callable[[str, int, int], int]) -> Spec:
        """The spec of the draws ``pick(kind, low, high)`` makes (an int in ``[low, high]`` each)."""
        in_channels = pick("in_channels", *self.in_channels)
        size = pick("image_size", *self.image_size)
        depth = pick("depth", *self.depth)
        if self.architecture == "cnn":
            channels, pools, current = [], [], size
            for _ in range(depth):
                channels.append(pick("channels", *self.channels))
                pool = POOLS[pick("pool", 0, len(POOLS) - 1)] if current >= 2 else "none"
                current = current // 2 if pool != "none" else current
                pools.append(pool)
            head = HEADS[pick("head", 0, len(HEADS) - 1)]
            return CNNSpec(in_channels, size, tuple(channels), tuple(pools), head, pick("outputs", *self.outputs),
                           self.bn_eps)
        stem = pick("channels", *self.channels)
        blocks = []
        for _ in range(depth):
            blocks.append((pick("channels", *self.channels), 1 + pick("stride", 0, 1)))
        return ResNetSpec(in_channels, size, stem, tuple(blocks), pick("outputs", *self.outputs), self.bn_eps)


def sample_models(architecture: str, count: int, *, seed: int, **bounds: Any) -> list[GeneratedModel]:
    """``count`` i.i.d. models of ``architecture`` (``"cnn"`` or ``"resnet"``).

    Keyword bounds (int or ``(min, max)``): ``in_channels`` (1, 2), ``channels``
    (1, 4; every stage / the stem and every block), ``depth`` (1, 2; CNN stages or
    residual blocks), ``image_size`` (2, 8), ``outputs`` (1, 3); ``population``
    (one of :data:`POPULATIONS` or several, uniform), ``dtype``, ``bn_eps``.
    Every integer is uniform within its bounds, each pool uniform over
    :data:`POOLS` (``"none"`` once the image is 1x1), the head uniform over
    :data:`HEADS`, a block's stride uniform over 1, 2.  Reproducible from
    ``seed``; never touches torch's global RNG.
    """
    space = _Space.of(architecture, **bounds)
    check_int(count, "count", minimum=0)
    generator = torch.Generator().manual_seed(check_seed(seed))

    def pick(_kind: str, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    out = []
    for _ in range(count):
        spec = space.spec(pick)
        population = space.populations[pick("population", 0, len(space.populations) - 1)]
        model_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        out.append(_generated(spec, model_seed, population, space.dtype))
    return out


def _strategy(draw: st.DrawFn, architecture: str, bounds: dict[str, Any]) -> GeneratedModel:
    space = _Space.of(architecture, **bounds)
    spec = space.spec(lambda kind, low, high: draw(st.integers(low, high), label=kind))
    population = draw(st.sampled_from(space.populations), label="population")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    return _generated(spec, seed, population, space.dtype)


@st.composite
def cnns(draw: st.DrawFn, /, **bounds: Any) -> GeneratedModel:
    """Random CNNs (:class:`CNNSpec`) as :class:`GeneratedModel` s; bounds as in :func:`sample_models`.

    Bad bounds raise when the strategy is drawn from.  Shrinks towards: one
    input channel, the smallest image, one stage, the fewest channels, no
    pooling, the GAP head, one output, the first population listed, seed 0.
    """
    return _strategy(draw, "cnn", bounds)


@st.composite
def resnets(draw: st.DrawFn, /, **bounds: Any) -> GeneratedModel:
    """Random residual nets (:class:`ResNetSpec`) as :class:`GeneratedModel` s; bounds as in :func:`sample_models`.

    Shrinks towards: one input channel, the smallest image, one block, the
    fewest channels, stride 1, one output, the first population listed, seed 0.
    """
    return _strategy(draw, "resnet", bounds)


def architectures(architecture: str, **bounds: Any) -> st.SearchStrategy[GeneratedModel]:
    """:func:`cnns` or :func:`resnets` by name (``"cnn"`` / ``"resnet"``)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    return cnns(**bounds) if architecture == "cnn" else resnets(**bounds)


# ------------------------------------------------------------------------------------------------ inputs
def nonnegative_images(n: int, shape: Sequence[int], *, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, *shape)`` inputs ``|N(0, 1)|`` (the seed study's input distribution) from a local generator."""
    check_int(n, "n", minimum=0)
    shape = tuple(check_int(s, "shape", minimum=1) for s in shape)
    _check_dtype(dtype)
    generator = torch.Generator().manual_seed(check_seed(seed))
    return torch.randn((n, *shape), generator=generator, dtype=torch.float64).abs().to(dtype)


def live_inputs(model: nn.Module, shape: Sequence[int], n: int, *, output: int, seed: int, min_output: float = 0.0,
                max_draws: int = 20) -> torch.Tensor:
    """``(n, *shape)`` draws of :func:`nonnegative_images` with ``model(x)[:, output] > min_output``.

    Draws batches of ``max(4 n, 64)`` until ``n`` are found; ``ValueError`` after ``max_draws`` batches.
    """
    check_int(n, "n", minimum=1)
    check_int(output, "output", minimum=0)
    check_number(min_output, "min_output")
    dtype = next(iter(model.parameters())).dtype
    kept: list[torch.Tensor] = []
    found = 0
    for draw in range(check_int(max_draws, "max_draws", minimum=1)):
        x = nonnegative_images(max(4 * n, 64), shape, seed=check_seed(seed) + draw * 7919, dtype=dtype)
        with torch.no_grad():
            y = model(x)
        if output >= y.shape[1]:
            raise ValueError(f"output {output} out of range: the model has {y.shape[1]} outputs")
        alive = x[y[:, output] > min_output]
        kept.append(alive)
        found += alive.shape[0]
        if found >= n:
            return torch.cat(kept)[:n]
    raise ValueError(f"output {output} exceeded {min_output} on only {found} of {max_draws * max(4 * n, 64)} "
                     f"non-negative inputs, fewer than the {n} asked for")


# ------------------------------------------------------------------------------------------------ printing
def builder_code(spec: Spec, seed: int, population: str, *, dtype: torch.dtype = torch.float64) -> str:
    """Python that rebuilds ``build(spec, seed, population, dtype=dtype)`` (needs this package installed)."""
    return ("import torch\n"
            "from properties.generate.architectures import CNNSpec, ResNetSpec, build\n"
            f"model = build({spec!r}, seed={seed}, population={population!r}, dtype={dtype})\n")


def _literal(t: torch.Tensor) -> str:
    return f"torch.tensor({t.tolist()!r}, dtype={t.dtype})"


def _module_code(module: nn.Module) -> str:
    """Constructor code of one leaf module (the kinds this module builds)."""
    if isinstance(module, nn.Conv2d):
        return (f"nn.Conv2d({module.in_channels}, {module.out_channels}, {module.kernel_size}, stride={module.stride}, "
                f"padding={module.padding}, bias={module.bias is not None})")
    if isinstance(module, nn.BatchNorm2d):
        return f"nn.BatchNorm2d({module.num_features}, eps={module.eps!r})"
    if isinstance(module, nn.Linear):
        return f"nn.Linear({module.in_features}, {module.out_features}, bias={module.bias is not None})"
    if isinstance(module, nn.MaxPool2d):
        return f"nn.MaxPool2d({module.kernel_size!r}, stride={module.stride!r})"
    if isinstance(module, nn.AvgPool2d):
        return f"nn.AvgPool2d({module.kernel_size!r}, stride={module.stride!r})"
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return f"nn.AdaptiveAvgPool2d({module.output_size!r})"
    if isinstance(module, nn.Flatten):
        return "nn.Flatten()"
    if isinstance(module, nn.ReLU):
        return "nn.ReLU()"
    raise TypeError(f"to_code prints the modules of properties.generate.architectures, not {type(module).__name__}")


def to_code(model: nn.Module, *, max_numbers: int = MAX_LITERAL_NUMBERS) -> str:
    """Python that rebuilds ``model`` exactly: its structure, then every parameter and buffer as a literal.

    ``model`` is an ``nn.Sequential`` of the leaf modules :func:`build` uses
    (pure torch code) or a :class:`ResidualNet` (the code imports it).  The
    code defines ``model`` in eval mode; its forward equals ``model``'s bit for
    bit (floats print exactly).  It builds the modules inside
    ``torch.random.fork_rng``, so running it leaves torch's global RNG as it was.
    ``ValueError`` above ``max_numbers`` parameters and buffers: print
    :func:`builder_code` instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    state = model.state_dict()
    numbers = sum(t.numel() for t in state.values())
    if numbers > max_numbers:
        raise ValueError(f"the model has {numbers} numbers, more than max_numbers={max_numbers} to print as literals; "
                         "print builder_code(spec, seed, population) instead, or raise max_numbers")
    lines = ["import torch", "from collections import OrderedDict", "from torch import nn"]
    if isinstance(model, ResidualNet):
        conv = cast(nn.Conv2d, model.stem.conv)  # the stem's children, by name (ResidualNet.__init__)
        bn = cast(nn.BatchNorm2d, model.stem.bn)
        blocks = [(b.out_channels, b.stride) for b in model.blocks]
        lines.append("from properties.generate.architectures import ResidualNet")
        lines.append(f"model = ResidualNet({conv.in_channels}, {conv.out_channels}, "
                     f"{blocks!r}, {model.fc.out_features}, bn_eps={bn.eps!r})")
    elif isinstance(model, nn.Sequential):
        items = ",\n    ".join(f"({name!r}, {_module_code(m)})" for name, m in model.named_children())
        lines.append(f"model = nn.Sequential(OrderedDict([\n    {items},\n]))")
    else:
        raise TypeError(f"to_code prints an nn.Sequential or a ResidualNet, not {type(model).__name__}")
    dtype = next(iter(state.values())).dtype if state else torch.float32
    # constructing modules draws their default init from torch's global RNG: the pasted code keeps it unchanged
    built = lines.pop()
    lines.append("with torch.random.fork_rng(devices=[]):")
    lines += ["    " + line for line in built.splitlines()]
    lines.append(f"model = model.to({dtype})")
    entries = ",\n    ".join(f"{name!r}: {_literal(t)}" for name, t in state.items())
    lines.append(f"model.load_state_dict({{\n    {entries},\n}})")
    lines.append("model.eval()")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ cases
@dataclasses.dataclass(frozen=True)
class ModelCase:
    """A generated model, non-negative inputs ``x`` ``(n, *input_shape)`` with a live explained ``output``."""

    generated: GeneratedModel
    x: torch.Tensor
    output: int

    @property
    def model(self) -> nn.Module:
        return self.generated.model

    def code(self) -> str:
        """Python that rebuilds the model (parameters as literals, or the builder call
        for large models), ``x`` and ``output``."""
        try:
            model = to_code(self.model)
        except ValueError:
            model = self.generated.code()
        return (model + f"x = torch.tensor({self.x.tolist()!r}, dtype={self.x.dtype})\n"
                f"output = {self.output}\n")

    def describe(self) -> str:
        """One header line (architecture, spec, population, seed) and :meth:`code`."""
        g = self.generated
        return (f"{g.architecture} {g.spec!r}, population {g.population}, seed {g.seed}, output {self.output}, "
                f"{self.x.shape[0]} input(s); to rebuild:\n" + self.code())


def _case(g: GeneratedModel, points: int, seed: int, min_output: float) -> ModelCase | None:
    """The model's most often live output and ``points`` inputs on which it exceeds ``min_output``, or None."""
    with torch.no_grad():
        y = g.model(nonnegative_images(256, g.input_shape, seed=seed, dtype=g.dtype))
    alive = (y > min_output).sum(0)
    output = int(alive.argmax())
    if int(alive[output]) == 0:
        return None
    try:
        x = live_inputs(g.model, g.input_shape, points, output=output, seed=seed + 1, min_output=min_output,
                        max_draws=4)
    except ValueError:
        return None
    return ModelCase(g, x, output)


def sample_cases(architecture: str, population: str, count: int, *, points: int, seed: int,
                 min_output: float = LIVE_OUTPUT, max_tries: int = 20, **bounds: Any) -> list[ModelCase]:
    """``count`` i.i.d. :class:`ModelCase` s of one architecture and population: models with a live output.

    Each model is drawn by :func:`sample_models` (``bounds`` as there); its
    explained output is the one most often above ``min_output`` (default
    :data:`LIVE_OUTPUT`: not alive by rounding alone) on 256 draws
    of :func:`nonnegative_images`, and ``points`` inputs with that output above
    ``min_output`` are kept.  A dead model is redrawn (so the population is
    "models with a live output"); more than ``max_tries`` redraws in a row is
    a ``ValueError``.  Reproducible from ``seed``; torch's global RNG untouched.
    """
    _check_population(population)
    check_int(count, "count", minimum=0)
    check_int(points, "points", minimum=1)
    check_number(min_output, "min_output")
    generator = torch.Generator().manual_seed(check_seed(seed))
    out: list[ModelCase] = []
    while len(out) < count:
        for _ in range(check_int(max_tries, "max_tries", minimum=1)):
            draw_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            (g,) = sample_models(architecture, 1, seed=draw_seed, population=population, **bounds)
            case = _case(g, points, draw_seed, min_output)
            if case is not None:
                out.append(case)
                break
        else:
            raise ValueError(f"no {architecture} of population {population} with a live output in {max_tries} draws")
    return out


def smaller_specs(spec: Spec) -> list[Spec]:
    """Specs one step simpler than ``spec``, simplest first: one stage / block fewer, a smaller image, fewer
    channels, no pooling in a stage, the GAP head, stride 1, one output fewer (only valid specs)."""
    candidates: list[Spec] = []

    def attempt(**changes: Any) -> None:
        try:
            candidates.append(dataclasses.replace(spec, **changes))
        except (ValueError, TypeError):
            pass

    if isinstance(spec, CNNSpec):
        for i in range(len(spec.channels)):
            if len(spec.channels) > 1:
                attempt(channels=spec.channels[:i] + spec.channels[i + 1:], pools=spec.pools[:i] + spec.pools[i + 1:])
        for size in (spec.image_size // 2, spec.image_size - 1):
            if 1 <= size < spec.image_size:
                attempt(image_size=size)
        for i, c in enumerate(spec.channels):
            if c > 1:
                attempt(channels=spec.channels[:i] + (spec.channels[i] - 1,) + spec.channels[i + 1:])
        for i, pool in enumerate(spec.pools):
            if pool != "none":
                attempt(pools=spec.pools[:i] + ("none",) + spec.pools[i + 1:])
        if spec.head != "gap":
            attempt(head="gap")
    else:
        for i in range(len(spec.blocks)):
            if len(spec.blocks) > 1:
                attempt(blocks=spec.blocks[:i] + spec.blocks[i + 1:])
        for size in (spec.image_size // 2, spec.image_size - 1):
            if 1 <= size < spec.image_size:
                attempt(image_size=size)
        if spec.stem > 1:
            attempt(stem=spec.stem - 1)
        for i, (c, stride) in enumerate(spec.blocks):
            if c > 1:
                attempt(blocks=spec.blocks[:i] + ((c - 1, stride),) + spec.blocks[i + 1:])
            if stride > 1:
                attempt(blocks=spec.blocks[:i] + ((c, 1),) + spec.blocks[i + 1:])
    if spec.outputs > 1:
        attempt(outputs=spec.outputs - 1)
    return candidates


#: seeds tried per smaller spec while shrinking (the case's own first, then 0, 1, ...)
SHRINK_SEEDS = 4


def shrink_case(case: ModelCase, fails: Callable[[ModelCase], object], *, budget: int = 60) -> ModelCase:
    """A smaller :class:`ModelCase` on which ``fails(case) -> bool`` still holds (greedy, at most ``budget`` calls).

    First a single input (the first failing one, tried alone), then repeatedly
    the first of :func:`smaller_specs` that, rebuilt with the case's own seed
    or one of :data:`SHRINK_SEEDS` - 1 others (same population) and given live
    inputs, still fails.  Shrinks towards fewer stages / blocks, smaller
    images, fewer channels, no pooling.
    """
    check_int(budget, "budget", minimum=0)
    spent = [0]

    def still(candidate: ModelCase) -> bool:
        if spent[0] >= budget:
            return False
        spent[0] += 1
        try:
            return bool(fails(candidate))
        except (ValueError, TypeError):
            return False

    for i in range(case.x.shape[0]):
        candidate = ModelCase(case.generated, case.x[i:i + 1], case.output)
        if still(candidate):
            case = candidate
            break
    n = case.x.shape[0]
    improved = True
    while improved and spent[0] < budget:
        improved = False
        g = case.generated
        for spec in smaller_specs(g.spec):
            for seed in dict.fromkeys([g.seed] + list(range(SHRINK_SEEDS - 1))):
                smaller = _case(_generated(spec, seed, g.population, g.dtype), n, seed, LIVE_OUTPUT)
                if smaller is not None and still(smaller):
                    case, improved = smaller, True
                    break
            if improved or spent[0] >= budget:
                break
    return case
