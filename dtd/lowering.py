"""Lowering users' models: an ``nn.Sequential`` becomes exact affine layers and ReLUs.

DTD's analysis needs a network of affine maps each followed by a ReLU (the
last one optionally without).  Models people train hold more module types,
but many of them are affine maps in disguise: a convolution, an average
pooling, a batch norm in eval mode, a flatten, a dropout in eval mode.  This
module walks a (nested) ``nn.Sequential``, checks every module, and folds each
run of affine modules between two ReLUs into one dense affine map
``y = W x + b`` on the flattened (C-order) activations.

Exactness
---------
The matrix of a run of affine modules is computed by pushing the standard
basis of its input through the modules' *linear parts* (every bias dropped)
in float64, in chunks; the bias is the run applied to the zero input with its
biases.  No matrix is ever obtained as ``M(e_i) - M(0)`` (that difference
rounds).  The modules' own forward code computes the linear parts (a float64
copy of a ``Conv2d`` with its bias removed, the ``AvgPool2d`` itself), so every
stride, padding, padding mode, dilation, ``ceil_mode`` and
``count_include_pad`` means what it means in the model.  The float64 results
are then converted to the model's dtype once.

Memory
------
Each folded map is dense: ``D_out x D_in`` float64 entries while it is
computed.  Before allocating, :func:`lower_sequential` refuses (``ValueError``
naming the modules and the bytes) a map larger than ``memory_budget``.

What is accepted (exact types only -- a subclass may override ``forward``):
:data:`AFFINE_MODULES`, ``nn.ReLU`` and nested ``nn.Sequential`` containers.
Modules with forward hooks or forward pre-hooks are refused (the hooks could
change what the module computes, and the lowering would ignore them).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .validation import check_int

__all__ = [
    "AFFINE_MODULES",
    "IDENTITY_MODULES",
    "DEFAULT_MEMORY_BUDGET",
    "AffineLayer",
    "LoweredModel",
    "lower_sequential",
]

#: Largest dense matrix (bytes, float64) one folded affine map may need by default: 1 GiB.
DEFAULT_MEMORY_BUDGET = 1 << 30

#: Modules that are the identity on the flattened activations in eval mode (shape changes aside).
IDENTITY_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d)

#: Every module type (exact type) that lowers to an affine map.
AFFINE_MODULES = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d) + IDENTITY_MODULES

# basis images pushed through a run at once take at most this many bytes per intermediate tensor
_CHUNK_BYTES = 16 << 20

_NOT_PIECEWISE_LINEAR = (
    "DTD's analysis needs a piecewise-linear network whose only non-linearity is the ReLU: its roots and "
    "linear regions are defined by ReLU activation patterns"
)

# why a module DTD cannot analyse is refused, and the fix where one exists
_REFUSALS: dict[type, str] = {
    nn.MaxPool2d: (
        "max pooling is piecewise linear (inside a linear region it selects one input per window), but its region is "
        "an argmax pattern, which the dense ReLU layers of from_sequential cannot hold; lower the model with "
        "dtd.ReLUNetwork.from_module(model, input_shape) (the graph engine), or use nn.AvgPool2d"
    ),
    nn.MaxPool1d: "max pooling needs the graph engine: use dtd.ReLUNetwork.from_module(model, input_shape)",
    nn.AdaptiveMaxPool2d: "max pooling needs the graph engine: use dtd.ReLUNetwork.from_module(model, input_shape)",
    nn.LeakyReLU: (
        "its negative slope changes every DTD rule's root (the rules assume relu(z) = 0 below the hinge); "
        "use nn.ReLU"
    ),
    nn.PReLU: "its negative slope changes every DTD rule's root; use nn.ReLU",
    nn.Sigmoid: f"sigmoid is smooth, not piecewise linear: {_NOT_PIECEWISE_LINEAR}; use nn.ReLU",
    nn.Tanh: f"tanh is smooth, not piecewise linear: {_NOT_PIECEWISE_LINEAR}; use nn.ReLU",
    nn.GELU: f"GELU is smooth, not piecewise linear: {_NOT_PIECEWISE_LINEAR}; use nn.ReLU",
    nn.SiLU: f"SiLU is smooth, not piecewise linear: {_NOT_PIECEWISE_LINEAR}; use nn.ReLU",
    nn.ELU: f"ELU is not piecewise linear: {_NOT_PIECEWISE_LINEAR}; use nn.ReLU",
    nn.Softplus: f"softplus is smooth, not piecewise linear: {_NOT_PIECEWISE_LINEAR}; use nn.ReLU",
    nn.Softmax: (
        f"softmax couples its inputs non-linearly: {_NOT_PIECEWISE_LINEAR}; explain the logits: "
        "leave the final softmax out of the Sequential"
    ),
    nn.LogSoftmax: (
        f"log-softmax couples its inputs non-linearly: {_NOT_PIECEWISE_LINEAR}; explain the logits: "
        "leave the final log-softmax out of the Sequential"
    ),
    nn.MultiheadAttention: (
        f"attention multiplies inputs with each other (softmax of products): {_NOT_PIECEWISE_LINEAR}"
    ),
    nn.LayerNorm: f"layer norm divides by the input's own spread, which is not affine: {_NOT_PIECEWISE_LINEAR}",
}


@dataclasses.dataclass(frozen=True)
class AffineLayer:
    """One lowered layer ``y = x W^T + b`` on flattened activations.

    Attributes
    ----------
    weight
        ``(D_out, D_in)`` in the model's dtype, owned (no storage shared with the model).
    bias
        ``(D_out,)``, or None for an ``nn.Linear`` without bias that was copied as it is.
    relu
        Whether a ReLU follows.
    modules
        Names of the model's modules folded into this layer (``"features.3"``).
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    relu: bool
    modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class LoweredModel:
    """Result of :func:`lower_sequential`.

    Attributes
    ----------
    layers
        The affine layers, first to last.
    input_shape
        The model's input shape without the batch dimension, or None when it
        was not given and the model starts with ``nn.Flatten`` (any input
        whose trailing dimensions flatten to the first layer's width).
    flatten_input
        Whether inputs with more than one non-batch dimension are flattened.
    """

    layers: tuple[AffineLayer, ...]
    input_shape: Optional[tuple[int, ...]]
    flatten_input: bool


# --------------------------------------------------------------------------- walking and checking
def _describe(name: str, module: nn.Module) -> str:
    return f"module {name!r} ({type(module).__name__})"


def _check_hooks(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"{_describe(name, module)} has uninitialised parameters: run the model once on an input of its shape "
            "(or use the module's non-lazy counterpart) before lowering it"
        )
    hooks = [kind for kind in ("_forward_hooks", "_forward_pre_hooks") if getattr(module, kind, None)]
    if hooks:
        kinds = " and ".join("forward hooks" if h == "_forward_hooks" else "forward pre-hooks" for h in hooks)
        raise TypeError(
            f"{_describe(name, module)} has {kinds}: they can change what the module computes and the lowering "
            "would ignore them (weight_norm and spectral_norm work this way); remove the hooks (or bake them into "
            "the parameters) before lowering"
        )


def _check_global_hooks() -> None:
    from torch.nn.modules import module as module_module

    if getattr(module_module, "_global_forward_hooks", None) or getattr(module_module, "_global_forward_pre_hooks", None):
        raise TypeError(
            "global forward hooks are registered (torch.nn.modules.module.register_module_forward_hook / "
            "..._pre_hook): they can change what every module computes and the lowering would ignore them; "
            "remove them before lowering"
        )


def _leaves(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of the leaves of nested exact ``nn.Sequential`` containers, in forward order."""
    for child_name, child in model.named_children():
        name = f"{prefix}{child_name}"
        _check_hooks(name, child)
        if type(child) is nn.Sequential:
            yield from _leaves(child, prefix=f"{name}.")
        else:
            yield name, child


def _check_module(name: str, module: nn.Module) -> None:
    kind = type(module)
    if kind is nn.ReLU or kind in AFFINE_MODULES:
        if kind is nn.Conv2d and module.groups != 1:
            raise ValueError(
                f"{_describe(name, module)} has groups={module.groups}: only groups=1 convolutions are supported"
            )
        if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d)) and module.training:
            raise ValueError(
                f"{_describe(name, module)} is in training mode, where it is not an affine map "
                "(dropout draws random masks, batch norm uses the batch's statistics); call model.eval() first"
            )
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_mean is None:
            raise ValueError(
                f"{_describe(name, module)} has track_running_stats=False, so it normalises with each batch's own "
                "statistics even in eval mode: not an affine map; train it with running statistics"
            )
        return
    if kind is nn.Sequential:  # reached only for the top level, see _leaves
        return
    if kind in _REFUSALS:
        raise TypeError(f"{_describe(name, module)} cannot be lowered: {_REFUSALS[kind]}")
    base = next((b for b in (nn.ReLU, nn.Sequential) + AFFINE_MODULES if isinstance(module, b)), None)
    if base is not None:
        raise TypeError(
            f"{_describe(name, module)} is a subclass of nn.{base.__name__}: only the exact torch types are "
            "accepted, because a subclass may compute something else (an overridden forward); use "
            f"nn.{base.__name__} itself"
        )
    accepted = ", ".join(f"nn.{t.__name__}" for t in (nn.ReLU,) + AFFINE_MODULES)
    raise TypeError(
        f"{_describe(name, module)} is not supported by from_sequential, which lowers only (nested) nn.Sequential "
        f"containers of {accepted}; dtd.ReLUNetwork.from_module(model, input_shape) lowers any piecewise-linear model "
        "(adaptive pooling, Conv1d, max pooling, residual blocks, ...)"
    )


# --------------------------------------------------------------------------- one module's affine map
class _Affine:
    """A module's map in float64: ``linear(x)`` (every bias dropped) and ``affine(x)`` (with biases)."""

    def __init__(self, linear: Callable[[torch.Tensor], torch.Tensor], affine: Callable[[torch.Tensor], torch.Tensor]):
        self.linear = linear
        self.affine = affine


def _float64(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.detach().to(torch.float64)


def _batch_norm_affine(module: nn.Module, shape: tuple[int, ...]) -> _Affine:
    scale = 1.0 / torch.sqrt(_float64(module.running_var) + module.eps)
    if module.weight is not None:
        scale = scale * _float64(module.weight)
    shift = -_float64(module.running_mean) * scale
    if module.bias is not None:
        shift = shift + _float64(module.bias)
    view = (-1,) + (1,) * (len(shape) - 1)  # channels are the first non-batch dimension
    scale, shift = scale.reshape(view), shift.reshape(view)
    return _Affine(lambda x: x * scale, lambda x: x * scale + shift)


def _affine_of(name: str, module: nn.Module, shape: tuple[int, ...]) -> _Affine:
    """The float64 map of an accepted module acting on activations of shape ``(batch, *shape)``."""
    if isinstance(module, nn.Linear):
        if shape[-1] != module.in_features:
            raise ValueError(
                f"{_describe(name, module)} expects {module.in_features} inputs in its last dimension but gets "
                f"activations of shape {shape}"
            )
        weight, bias = _float64(module.weight), _float64(module.bias)
        return _Affine(
            lambda x: torch.nn.functional.linear(x, weight), lambda x: torch.nn.functional.linear(x, weight, bias)
        )
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        dims = (1, 2) if isinstance(module, nn.BatchNorm1d) else (3,)
        if len(shape) not in dims or shape[0] != module.num_features:
            expected = "(C,) or (C, L)" if isinstance(module, nn.BatchNorm1d) else "(C, H, W)"
            raise ValueError(
                f"{_describe(name, module)} with {module.num_features} features expects activations of shape "
                f"{expected} with C = {module.num_features}, got {shape}"
            )
        return _batch_norm_affine(module, shape)
    if isinstance(module, nn.Conv2d):
        with_bias = copy.deepcopy(module).to(torch.float64).requires_grad_(False)
        without_bias = copy.deepcopy(with_bias)
        without_bias.bias = None
        return _Affine(without_bias, with_bias)
    # AvgPool2d and the identity-like modules hold no parameters: their own forward is their linear map
    return _Affine(module, module)


def _output_shape(name: str, module: nn.Module, affine: _Affine, shape: tuple[int, ...], device) -> tuple[int, ...]:
    try:
        probe = affine.affine(torch.zeros((1,) + shape, dtype=torch.float64, device=device))
    except RuntimeError as error:
        hint = ""
        if isinstance(module, nn.Conv2d) and len(shape) == 4:
            hint = f"; input_shape is one input's shape, without the batch dimension (e.g. {shape[1:]})"
        raise ValueError(f"{_describe(name, module)} cannot take activations of shape {shape}: {error}{hint}") from None
    return tuple(probe.shape[1:])


# --------------------------------------------------------------------------- folding a run
@dataclasses.dataclass
class _Run:
    """Affine modules between two ReLUs."""

    input_shape: tuple[int, ...]
    shape: tuple[int, ...]
    names: list[str] = dataclasses.field(default_factory=list)
    modules: list[nn.Module] = dataclasses.field(default_factory=list)
    maps: list[_Affine] = dataclasses.field(default_factory=list)
    shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # output shape of each module

    @property
    def is_identity(self) -> bool:
        return all(isinstance(m, IDENTITY_MODULES) for m in self.modules)

    def add(self, name: str, module: nn.Module, device) -> None:
        affine = _affine_of(name, module, self.shape)
        self.shape = _output_shape(name, module, affine, self.shape, device)
        self.names.append(name)
        self.modules.append(module)
        self.maps.append(affine)
        self.shapes.append(self.shape)


def _is_plain_linear(run: _Run) -> bool:
    real = [m for m in run.modules if not isinstance(m, IDENTITY_MODULES)]
    return len(real) == 1 and type(real[0]) is nn.Linear and len(run.input_shape) == 1


def _check_budget(run: _Run, index: int, memory_budget: int) -> None:
    if _is_plain_linear(run):
        return  # copied as it is: the model already holds this matrix
    d_in, d_out = math.prod(run.input_shape), math.prod(run.shape)
    needed = d_in * d_out * 8
    if needed > memory_budget:
        raise ValueError(
            f"affine layer {index} (modules {', '.join(repr(n) for n in run.names)}: {d_in} inputs, {d_out} "
            f"outputs) would need {needed:,} bytes ({needed / 2**30:.2f} GiB) for its dense float64 matrix, more "
            f"than memory_budget={memory_budget:,}; pass a larger memory_budget= to from_sequential"
        )


def _fold(run: _Run, relu: bool, dtype: torch.dtype, device) -> AffineLayer:
    """The run as one dense affine layer, in ``dtype`` (its size checked by :func:`_check_budget`)."""
    if _is_plain_linear(run):
        real = [m for m in run.modules if not isinstance(m, IDENTITY_MODULES)]
        # a plain Linear: its own parameters, copied (bit-identical, and a missing bias stays missing)
        layer = real[0]
        bias = None if layer.bias is None else layer.bias.detach().to(dtype=dtype, device=device, copy=True)
        weight = layer.weight.detach().to(dtype=dtype, device=device, copy=True)
        return AffineLayer(weight, bias, relu, tuple(run.names))
    d_in, d_out = math.prod(run.input_shape), math.prod(run.shape)
    widest = max([d_in] + [math.prod(s) for s in run.shapes])
    chunk = max(1, min(d_in, _CHUNK_BYTES // (8 * widest)))
    matrix = torch.empty(d_out, d_in, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, d_in, chunk):
            stop = min(start + chunk, d_in)
            basis = torch.zeros(stop - start, d_in, dtype=torch.float64, device=device)
            basis[torch.arange(stop - start, device=device), torch.arange(start, stop, device=device)] = 1.0
            h = basis.reshape((stop - start,) + run.input_shape)
            for affine in run.maps:
                h = affine.linear(h)
            matrix[:, start:stop] = h.reshape(stop - start, d_out).T
        h = torch.zeros((1,) + run.input_shape, dtype=torch.float64, device=device)
        for affine in run.maps:
            h = affine.affine(h)
        bias = h.reshape(d_out)
    return AffineLayer(matrix.to(dtype), bias.to(dtype), relu, tuple(run.names))


# --------------------------------------------------------------------------- the whole model
def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(
            f"all parameters and buffers of the model must share one dtype and device, got {sorted(map(str, dtypes))} "
            f"on {sorted(map(str, devices))}; convert the model with model.to(...)"
        )
    if not tensors:
        return torch.get_default_dtype(), torch.device("cpu")
    return tensors[0].dtype, tensors[0].device


def _check_input_shape(input_shape) -> Optional[tuple[int, ...]]:
    if input_shape is None:
        return None
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) == 0:
        raise TypeError(
            f"input_shape must be a non-empty tuple of ints without the batch dimension (e.g. (1, 8, 8)), "
            f"got {input_shape!r}"
        )
    return tuple(check_int(n, f"every entry of input_shape {tuple(input_shape)}", minimum=1) for n in input_shape)


def lower_sequential(
    model: nn.Module, input_shape: Optional[Sequence[int]] = None, *, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> LoweredModel:
    """Lower a (nested) ``nn.Sequential`` to affine layers, each ending at a ReLU.

    Parameters
    ----------
    model
        An ``nn.Sequential`` (exact type) of the modules in
        :data:`AFFINE_MODULES`, ``nn.ReLU`` and nested ``nn.Sequential``\\ s,
        in eval mode where that matters.  Not modified, and nothing of it is
        shared with the result.
    input_shape
        The input's shape without the batch dimension, e.g. ``(1, 8, 8)``.
        Required when the first affine module is not an ``nn.Linear`` (after
        an optional leading ``nn.Flatten``) or an ``nn.BatchNorm1d``.
    memory_budget
        Largest dense float64 matrix (bytes) one folded affine map may take.

    Returns
    -------
    LoweredModel
        Every run of affine modules between two ReLUs folded into one
        ``(D_out, D_in)`` matrix and bias on the flattened activations;
        a trailing run without a ReLU is the last layer (``relu=False``);
        identity-like modules after the last ReLU are dropped.

    Raises
    ------
    TypeError
        ``model`` is no ``nn.Sequential``; a module is not supported (named,
        with why DTD does not apply and the fix); a module is a subclass of
        an accepted type; a module (or torch globally) has forward
        (pre-)hooks; a ReLU that follows no affine module.
    ValueError
        A BatchNorm/Dropout in training mode ("call model.eval()"); a batch
        norm without running statistics; a ``Conv2d`` with ``groups != 1``;
        ``input_shape`` missing where it is needed, or not matching a module;
        parameters of several dtypes or devices; no affine module at all; a
        folded map above ``memory_budget`` (checked for every layer before
        any matrix is computed).
    """
    if type(model) is not nn.Sequential:
        if isinstance(model, nn.Sequential):
            raise TypeError(
                f"from_sequential expects an nn.Sequential itself, got the subclass {type(model).__name__} "
                "(its forward may compute something else); rebuild it as nn.Sequential(*model)"
            )
        raise TypeError(
            f"from_sequential expects nn.Sequential, got {type(model).__name__}; lower any other model (a ResNet, a module "
            "with a residual +, ...) with dtd.ReLUNetwork.from_module(model, input_shape)"
        )
    input_shape = _check_input_shape(input_shape)
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    _check_global_hooks()
    _check_hooks("<model>", model)
    leaves = list(_leaves(model))
    for name, module in leaves:
        _check_module(name, module)
    dtype, device = _model_dtype_device(model)

    shape = input_shape
    flatten_input = input_shape is not None and len(input_shape) > 1
    position = 0
    if shape is None:
        # without input_shape the first module must tell the input's width
        if leaves and type(leaves[0][1]) is nn.Flatten:
            flat = leaves[0][1]
            if flat.start_dim != 1 or flat.end_dim != -1:
                raise ValueError(
                    f"{_describe(leaves[0][0], flat)} is nn.Flatten(start_dim={flat.start_dim}, end_dim={flat.end_dim}) "
                    "and the input's shape is unknown; pass input_shape="
                )
            flatten_input = True
            position = 1
        first = next(((n, m) for n, m in leaves[position:] if not isinstance(m, (nn.Identity, nn.Dropout))), None)
        if first is not None and type(first[1]) is nn.Linear:
            shape = (first[1].in_features,)
        elif first is not None and type(first[1]) is nn.BatchNorm1d:
            shape = (first[1].num_features,)
        elif first is not None and type(first[1]) is not nn.ReLU:
            raise ValueError(
                f"{_describe(*first)} needs the input's shape: pass input_shape= to from_sequential "
                "(without the batch dimension, e.g. input_shape=(1, 8, 8) for one-channel 8x8 images)"
            )
        if first is None:
            raise ValueError("the Sequential holds no affine module (nn.Linear, nn.Conv2d, ...)")
    model_input_shape = input_shape

    # first every run and its shapes (cheap: one zero input per module), so that a run above the
    # budget is refused before any matrix is computed
    runs: list[tuple[_Run, bool]] = []
    run = _Run(shape, shape) if shape is not None else None
    for name, module in leaves[position:]:
        if type(module) is nn.ReLU:
            if run is None or run.is_identity:
                raise TypeError(
                    f"{_describe(name, module)} must directly follow an affine module (nn.Linear, nn.Conv2d, ...): "
                    "a ReLU at the start or right after another ReLU cannot be lowered"
                )
            runs.append((run, True))
            run = _Run(run.shape, run.shape)
            continue
        run.add(name, module, device)
    if run is not None and not run.is_identity:
        runs.append((run, False))
    if not runs:
        raise ValueError("the Sequential holds no affine module (nn.Linear, nn.Conv2d, ...)")
    for index, (run, _) in enumerate(runs):
        _check_budget(run, index, memory_budget)
    layers = [_fold(run, relu, dtype, device) for run, relu in runs]
    return LoweredModel(layers=tuple(layers), input_shape=model_input_shape, flatten_input=flatten_input)
