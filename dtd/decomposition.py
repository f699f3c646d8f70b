"""What a decomposition returns, and the argument checks every decomposition shares.

:func:`dtd.train_free` (:mod:`dtd.decompose`) and the engine that computes it
(:mod:`dtd.graph_decompose`) both build these records; :func:`dtd.full_backward`
returns a :class:`Decomposition` too.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .rootsets import RootSet

if TYPE_CHECKING:
    from .graph import GraphNetwork
    from .network import ReLUNetwork
    from .outputs import OutputLike

__all__ = ["LayerDecomposition", "Decomposition", "GraphDecomposition", "HALF_PRECISION", "edge_shape",
           "check_output_and_precision"]

#: dtypes a decomposition refuses: DTD's root equations and relevance sums lose
#: too much in 8-11 bit mantissas (float16 full backward diverged silently from float32)
HALF_PRECISION = (torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class LayerDecomposition:
    """What DTD did at one layer (``k = 0`` is the first Linear).

    Attributes
    ----------
    index
        ``k``.
    method
        The rule or root finder used here, as text.
    input
        ``a``, the layer's input activations ``(batch, D)``.  Layer 0's is a
        copy of the caller's ``x``: a decomposition owns its tensors.
    upper_relevance
        ``R_j`` of the layer's output neurons ``(batch, J)``.
    root_set
        How the roots are held (:mod:`dtd.rootsets`); :attr:`roots`
        materialises them, :meth:`root_chunk` a slice of points at a time.
    root_valid
        ``(batch, J)``: whether the root exists (``|w_j . v_j| > eps`` for
        closed-form roots).  Invalid roots contribute no relevance.
    carries_relevance
        ``(batch, J)``: ``R_j != 0``.  Neurons that carry none get the
        trivial root ``a``.
    relevance
        ``R_i`` of the layer's inputs ``(batch, D)``.
    """

    index: int
    method: str
    input: torch.Tensor
    upper_relevance: torch.Tensor
    root_set: RootSet
    root_valid: torch.Tensor
    carries_relevance: torch.Tensor
    relevance: torch.Tensor

    @property
    def roots(self) -> torch.Tensor:
        """``(batch, J, D)``: the root of every (point, neuron), computed on access.

        Where ``root_valid`` is False the entry is no root and must be
        ignored.  For large layers prefer :meth:`root_chunk`.
        """
        return self.root_set.roots()

    def root_chunk(self, start: int, stop: int) -> torch.Tensor:
        """Roots ``(stop - start, J, D)`` of the points ``start:stop``."""
        return self.root_set.roots(start, stop)

    @property
    def n_invalid(self) -> int:
        """Number of (point, neuron) pairs whose root does not exist."""
        return int((~self.root_valid).sum())

    @property
    def lost_relevance(self) -> torch.Tensor:
        """``(batch,)``: upper relevance of neurons whose root does not exist."""
        return torch.where(self.root_valid, torch.zeros_like(self.upper_relevance), self.upper_relevance).sum(1)


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """Result of :func:`train_free`: one :class:`LayerDecomposition` per layer.

    ``input_shape`` is the shape of the ``x`` that was explained without its
    batch dimension (e.g. ``(1, 8, 8)``), or None for a flat ``(batch, D_0)``.
    """

    layers: tuple[LayerDecomposition, ...]
    output: int | torch.Tensor  # the explained output: an index, (batch,) per-point indices, or output weights
    output_value: torch.Tensor  # (batch,) f(x) of the explained output
    input_shape: tuple[int, ...] | None = dataclasses.field(default=None, kw_only=True)

    @property
    def relevance(self) -> torch.Tensor:
        """Input relevance in the shape of the explained ``x``: ``(batch, *input_shape)``, else ``(batch, D_0)``.

        ``layers[0].relevance`` is the same values, flat ``(batch, D_0)``.
        """
        flat = self.layers[0].relevance
        if self.input_shape is None:
            return flat
        return flat.reshape((flat.shape[0],) + self.input_shape)

    @property
    def n_invalid(self) -> int:
        """Invalid roots over all layers."""
        return sum(layer.n_invalid for layer in self.layers)


def edge_shape(x: torch.Tensor) -> tuple[int, ...] | None:
    """The non-batch shape of an input ``x`` with more than two dimensions (None for ``(batch, D)``)."""
    return tuple(x.shape[1:]) if x.dim() > 2 else None


def check_output_and_precision(net: ReLUNetwork | GraphNetwork, output: OutputLike,
                               convert: str) -> int | torch.Tensor | str:
    """``output`` checked (an int, a ``(batch,)`` tensor, or ``"predicted"`` kept as it is); the network's parameters
    finite; half precision refused, ``convert`` saying how to convert.  Shared by the dense and the graph
    decomposition."""
    if isinstance(output, str):
        if output != "predicted":
            raise ValueError(f"output must be an int, a (batch,) integer tensor or 'predicted', got {output!r}")
    else:
        output = net.check_output(output)
    net.check_parameters()
    if net.dtype in HALF_PRECISION:
        raise TypeError(
            f"the network is {net.dtype}: decompositions are not computed in half precision (the root equations "
            f"and relevance sums lose too many digits); convert with {convert}"
        )
    return output


@dataclasses.dataclass(frozen=True)
class GraphDecomposition(Decomposition):
    """A :class:`~dtd.Decomposition` of a graph network.

    ``layers[k]`` is DTD layer ``k`` with flat tensors (``input`` ``(batch, D_k)``
    the branch inputs side by side, ``upper_relevance`` ``(batch, J_k)``).
    ``input_relevance`` ``(batch, prod(input_shape))`` sums what every layer
    reading the input handed it (a skip from the input included);
    :attr:`relevance` shows it in ``x``'s shape.  ``x`` is the explained input (a copy),
    ``activations`` every node's value there (as :meth:`~dtd.graph.GraphNetwork.run`).
    """

    input_relevance: torch.Tensor = dataclasses.field(kw_only=True)
    x: torch.Tensor = dataclasses.field(kw_only=True)
    #: every node's value at ``x`` and every max pool's argmax (:meth:`GraphNetwork.run`), kept for the checks
    activations: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] = dataclasses.field(
        kw_only=True, repr=False, compare=False)

    @property
    def relevance(self) -> torch.Tensor:
        flat = self.input_relevance
        if self.input_shape is None:
            return flat
        return flat.reshape((flat.shape[0],) + tuple(self.input_shape))
