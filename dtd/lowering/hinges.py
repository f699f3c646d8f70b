"""The piecewise-linear operations of an exported graph (see :mod:`dtd.lowering.aten`): activations as ReLU units
(:meth:`dtd.lowering.build.Builder.units`) and max poolings."""

from __future__ import annotations

import torch

from ..operators import Reshape
from .aten import Args, f64, graph_dim, handles, input_value, module_of, number_or_const, shape_of, tup, where
from .build import Builder, Refused, Unit, Value, is_value, per_point
from .capture import operation_name
from .refusals import training_mode

__all__ = ["INDICES"]


# --------------------------------------------------------------------------- piecewise-linear activations
def _units(b: Builder, node: torch.fx.Node, x: object, units: list[Unit], offset: float | torch.Tensor = 0.0,
           monotone: bool = True) -> Value:
    return b.units(input_value(b, node, x), units, offset, where(b, node), module_of(b, node), monotone=monotone)


def _clamp(b: Builder, node: torch.fx.Node, x: object, low: float | torch.Tensor | None,
           high: float | torch.Tensor | None) -> Value:
    low = None if low is None else number_or_const(low)
    high = None if high is None else number_or_const(high)
    if high is None:
        if low is None:
            return input_value(b, node, x)
        return _units(b, node, x, [Unit(1.0, -low, 1.0)], low)
    if low is None:
        return _units(b, node, x, [Unit(-1.0, high, -1.0)], high)
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        if bool((torch.as_tensor(low) >= torch.as_tensor(high)).any()):
            raise Refused(f"{where(b, node)} clamps with a lower bound not below the upper bound (a constant output)")
    elif low >= high:
        raise Refused(f"{where(b, node)} clamps to [{low}, {high}]: a constant output")
    return _units(b, node, x, [Unit(1.0, -low, 1.0), Unit(1.0, -high, -1.0)], low)


@handles("piecewise linear", "relu")
def _relu(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return b.relu(input_value(b, node, a["self"]), where(b, node), module_of(b, node))


@handles("piecewise linear", "relu6")
def _relu6(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _clamp(b, node, a["self"], 0.0, 6.0)


@handles("piecewise linear", "hardtanh")
def _hardtanh(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _clamp(b, node, a["self"], a["min_val"], a["max_val"])


@handles("piecewise linear", "clamp", "clip")
def _clamp_op(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _clamp(b, node, a["self"], a.get("min"), a.get("max"))


@handles("piecewise linear", "clamp_min")
def _clamp_min(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _clamp(b, node, a["self"], a["min"], None)


@handles("piecewise linear", "clamp_max")
def _clamp_max(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _clamp(b, node, a["self"], None, a["max"])


@handles("piecewise linear", "maximum", "minimum", "min")
def _extremum(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    if "other" not in a:
        raise Refused(f"{where(b, node)} takes a minimum over a dimension (a min pooling), "
                      "which DTD's lowering does not take (max pooling is lowered)")
    left, right = a["self"], a["other"]
    upper = operation_name(node) in ("maximum", "max")
    out = shape_of(node)
    if is_value(left) and is_value(right):
        # max(l, r) = l + relu(r - l); min(l, r) = l - relu(l - r)
        diff = b.add(right, b.scale(left, -1.0), where(b, node), out) if upper else \
            b.add(left, b.scale(right, -1.0), where(b, node), out)
        hinge = b.units(diff, [Unit(1.0, 0.0, 1.0 if upper else -1.0)], 0.0, where(b, node), module_of(b, node))
        return b.add(left, hinge, where(b, node), out)
    value, const = (left, right) if is_value(left) else (right, left)
    if tuple(value.shape) != tuple(out):
        value = b.expand(value, out, where(b, node))
    c = per_point(const, out, where(b, node))
    return _clamp(b, node, value, c, None) if upper else _clamp(b, node, value, None, c)


@handles("piecewise linear", "leaky_relu")
def _leaky(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    slope = float(a["negative_slope"])
    if slope == 0.0:
        return b.relu(input_value(b, node, a["self"]), where(b, node), module_of(b, node))
    if slope == 1.0:
        return input_value(b, node, a["self"])
    return _units(b, node, a["self"], [Unit(), Unit(-1.0, 0.0, -slope)], monotone=slope >= 0)


@handles("piecewise linear", "prelu", "_prelu_kernel")
def _prelu(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    weight = a["weight"]
    if is_value(weight):
        raise Refused(f"{where(b, node)} has a slope computed from the input")
    w = f64(weight).reshape(-1)
    slope = float(w[0]) if w.numel() == 1 else w
    return _units(b, node, a["self"], [Unit(), Unit(-1.0, 0.0, -slope)], monotone=bool((w >= 0).all()))


@handles("piecewise linear", "rrelu_with_noise", "rrelu")
def _rrelu(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    if a.get("training"):
        raise training_mode(b.captured, node)
    slope = (float(a["lower"]) + float(a["upper"])) / 2
    return _units(b, node, a["self"], [Unit(), Unit(-1.0, 0.0, -slope)])


@handles("piecewise linear", "abs")
def _abs(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _units(b, node, a["self"], [Unit(), Unit(-1.0, 0.0, 1.0)], monotone=False)


@handles("piecewise linear", "hardsigmoid")
def _hardsigmoid(b: Builder, node: torch.fx.Node, a: Args) -> Value:
    return _units(b, node, a["self"], [Unit(1 / 6, 0.5, 1.0), Unit(1 / 6, -0.5, -1.0)])


# --------------------------------------------------------------------------- max pooling
@handles("piecewise linear", "max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices")
def _max_pool(b: Builder, node: torch.fx.Node, a: Args) -> Value | tuple[Value, _Indices]:
    x = input_value(b, node, a["self"])
    n = 1 if "1d" in operation_name(node) else 2
    kernel = tup(a["kernel_size"], n)
    stride = tup(a["stride"], n) if a["stride"] else kernel
    out = b.max_pool(x, where(b, node), dim=n, name=module_of(b, node), kernel_size=kernel, stride=stride,
                     padding=tup(a["padding"], n), dilation=tup(a["dilation"], n), ceil_mode=bool(a["ceil_mode"]))
    return (out, INDICES) if operation_name(node).endswith("with_indices") else out


@handles("piecewise linear", "adaptive_max_pool1d", "adaptive_max_pool2d")
def _adaptive_max_pool(b: Builder, node: torch.fx.Node, a: Args) -> tuple[Value, _Indices]:
    x = input_value(b, node, a["self"])
    n = 1 if "1d" in operation_name(node) else 2
    size = tup(a["output_size"], n)
    return (b.max_pool(x, where(b, node), dim=n, name=module_of(b, node), output_size=size), INDICES)


@handles("piecewise linear", "amax", "max")
def _amax(b: Builder, node: torch.fx.Node, a: Args) -> Value | tuple[Value, _Indices]:
    if "other" in a:  # max(a, b): the element-wise maximum
        return _extremum(b, node, a)
    x = input_value(b, node, a["self"])
    rank = len(x.shape) + 1
    dims_arg = a.get("dim")
    if dims_arg is None or (isinstance(dims_arg, (list, tuple)) and len(dims_arg) == 0):
        raise Refused(f"{where(b, node)} takes the maximum over every dimension, the batch included")
    given = dims_arg if isinstance(dims_arg, (list, tuple)) else [dims_arg]
    dims = sorted(graph_dim(b, node, d, rank) for d in given)
    n = len(dims)
    if dims != list(range(rank - n, rank)) or n not in (1, 2) or rank - n < 2:
        raise Refused(f"{where(b, node)} takes a maximum over dimensions {dims}; only a global maximum over the last "
                      "one or two (spatial) dimensions of a (batch, channels, ...) tensor is lowered (a max pooling)")
    pooled = b.max_pool(x, where(b, node), dim=n, name=module_of(b, node), output_size=(1,) * n)
    out = shape_of(node) if operation_name(node) == "amax" else shape_of(node, 0)
    result = pooled if tuple(pooled.shape) == out else b.apply(pooled, Reshape(pooled.shape, out))
    return result if operation_name(node) == "amax" else (result, INDICES)


class _Indices:
    """The argmax indices of a max pooling: reading them is refused (:func:`dtd.lowering.walk` checks)."""


INDICES = _Indices()


