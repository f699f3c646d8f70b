"""Which output a decomposition explains: an index, a per-point index, an index tuple, weights, or the predicted class.

Every network has a per-point output of some shape: ``(classes,)`` for a
classifier, ``(classes, height, width)`` for a segmentation model.  The
explained quantity is always a linear function of that output,
``f(x) = sum(w * y(x))``:

* an ``int`` picks one element of the flattened output (``w`` one-hot);
* a tuple of ints is an index into the output's shape (``(class, row, col)``
  of a segmentation map), the same as the flat index it names;
* a ``(batch,)`` integer tensor gives each point its own flat index;
* a floating-point tensor of the output's shape is ``w`` itself (a class's
  mask, a region of interest): the network is extended by that linear map
  (:meth:`dtd.GraphNetwork.explaining`, :meth:`dtd.ReLUNetwork.explaining`),
  whose top layer then has one neuron, and its output 0 is explained;
* ``"predicted"`` is each point's largest output (a ``(batch, classes)`` output).

The top layer is linear in ``y``, so an explained ``w`` is absorbed into it and
every rule and root question applies unchanged.
"""

from __future__ import annotations

import math
from typing import Protocol, TypeGuard, TypeVar

import torch

__all__ = ["OutputLike", "Explainable", "check_output", "explain", "is_weights", "describe_output"]

#: What ``output=`` accepts (see the module docstring).
OutputLike = int | tuple | torch.Tensor | str

_Net = TypeVar("_Net", bound="Explainable")


class Explainable(Protocol):
    """What this module reads of a network (a :class:`dtd.ReLUNetwork` or a :class:`dtd.GraphNetwork`)."""

    @property
    def out_features(self) -> int: ...

    @property
    def output_shape(self) -> tuple: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def explaining(self: _Net, weights: torch.Tensor) -> _Net: ...


def is_weights(output: object) -> TypeGuard[torch.Tensor]:
    """Whether ``output`` is a weight tensor (floating point), not an index."""
    return isinstance(output, torch.Tensor) and output.dtype.is_floating_point


def describe_output(output: object) -> str:
    if is_weights(output):
        return f"weights of shape {tuple(output.shape)}"
    if isinstance(output, torch.Tensor):
        return f"per-point outputs of shape {tuple(output.shape)}"
    return repr(output)


def _flat_index(net: Explainable, index: tuple) -> int:
    shape = tuple(net.output_shape)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in index):
        raise TypeError(f"an output index tuple holds ints, got {index!r}")
    if len(index) != len(shape):
        raise ValueError(
            f"output={index!r} has {len(index)} indices but the network's output per point has shape {shape}; "
            f"give one index per dimension (e.g. {tuple(0 for _ in shape)})"
        )
    for i, (k, n) in enumerate(zip(index, shape, strict=True)):
        if not 0 <= k < n:
            raise ValueError(f"output={index!r}: index {k} of dimension {i} is "
                             f"outside [0, {n - 1}] (output shape {shape})")
    flat = 0
    for k, n in zip(index, shape, strict=True):
        flat = flat * n + k
    return flat


def check_output(net: Explainable, output: OutputLike, batch: int | None = None) -> int | torch.Tensor:
    """``output`` checked against ``net``'s output: an int in range (a tuple becomes its flat index) or a ``(batch,)``
    integer tensor of per-point flat indices (int64 on the network's device; ``batch`` points when given)."""
    n_out = net.out_features
    if isinstance(output, tuple):
        return _flat_index(net, output)
    if isinstance(output, torch.Tensor):
        if output.dtype.is_floating_point:
            raise TypeError(
                "output as a floating-point tensor is weights over the output (shape "
                f"{tuple(net.output_shape)}); this function takes an index: pass the "
                "weights to dtd.train_free, or explain net.explaining(weights) at output 0"
            )
        if output.dim() > 1 or (output.dtype == torch.bool and tuple(output.shape) == tuple(net.output_shape)):
            raise TypeError(
                f"output as a {output.dtype} tensor of shape {tuple(output.shape)} is neither per-point indices (a "
                f"1-D integer tensor) nor weights: a mask over the output (shape {tuple(net.output_shape)}) must be "
                "floating point, e.g. output=mask.float()"
            )
        if output.dtype.is_complex or output.dtype == torch.bool or output.dim() != 1:
            raise TypeError(
                "output as a tensor must be a 1-D integer tensor of per-point output "
                f"indices, got dtype {output.dtype}, shape {tuple(output.shape)}"
            )
        if batch is not None and output.shape[0] != batch:
            raise ValueError(f"output holds {output.shape[0]} per-point indices for {batch} points; give one per point")
        if output.numel() and (int(output.min()) < 0 or int(output.max()) >= n_out):
            raise ValueError(
                f"every per-point output must be in [0, {n_out - 1}], got "
                f"values in [{int(output.min())}, {int(output.max())}]"
            )
        return output.detach().to(dtype=torch.int64, device=net.device)
    if isinstance(output, bool) or not isinstance(output, int):
        raise TypeError(
            f"output must be an int, a tuple index into the output, a (batch,) integer tensor, weights of the output's "
            f"shape or 'predicted', got {output!r}"
        )
    if not 0 <= output < n_out:
        raise ValueError(f"output must be in [0, {n_out - 1}], got {output}")
    return output


def check_weights(net: Explainable, weights: torch.Tensor) -> torch.Tensor:
    """Weights over the per-point output: the output's shape (or flat), finite, in the network's dtype and device."""
    shape = tuple(net.output_shape)
    if tuple(weights.shape) not in (shape, (math.prod(shape),)):
        raise ValueError(
            f"output weights must have the per-point output's shape {shape} (or be flat, ({math.prod(shape)},)), got "
            f"{tuple(weights.shape)}; one set of weights for every point"
        )
    if not bool(torch.isfinite(weights).all()):
        raise ValueError("output weights contain NaN or infinite values")
    if not bool((weights != 0).any()):
        raise ValueError("output weights are all zero: there is nothing to explain")
    return weights.detach().reshape(shape).to(dtype=net.dtype, device=net.device).clone()


def explain(net: _Net, output: OutputLike) -> tuple[_Net, int | torch.Tensor | str]:
    """``(network, output)`` to decompose: weights give ``net.explaining(weights)`` and output 0, a tuple its flat
    index; anything else is returned as it is (checked later against the batch)."""
    if is_weights(output):
        return net.explaining(output), 0
    if isinstance(output, tuple):
        return net, _flat_index(net, output)
    if isinstance(output, str):
        if output != "predicted":
            raise ValueError(
                f"output must be an int, a tuple, an integer tensor, weights or 'predicted', got {output!r}"
            )
        if len(tuple(net.output_shape)) != 1:
            raise ValueError(
                "output='predicted' takes each point's largest class of a (batch, classes) "
                f"output; this network's output per point has shape {tuple(net.output_shape)}: "
                "pass an index tuple (e.g. (class, row, col)) or weights"
            )
    return net, output
