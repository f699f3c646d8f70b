"""Train-free Deep Taylor Decomposition, batched over points and neurons.

Train-free DTD walks down from the explained output: the top layer's
relevance is ``R_j = f(x)`` for the explained output neuron (0 for the
others); each layer finds a root per neuron, hands its inputs
``R_i = sum_j w_ji (a - root_j)_i`` over the valid roots, and that becomes the
upper relevance of the layer below -- all evaluated at the real activations.

There is one engine: :func:`dtd.graph_decompose.decompose` walks a
:class:`~dtd.graph.GraphNetwork`, and a :class:`~dtd.network.ReLUNetwork` runs
on it as its chain of Linear operators (:meth:`~dtd.network.ReLUNetwork.graph`);
this module validates the arguments and holds the result types.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import torch

from .graph import GraphNetwork, dense_only
from .network import ReLUNetwork
from .outputs import OutputLike, explain, is_weights
from .roots import LinearRoots, RootFinder
from .rootsets import RootSet
from .rules import RuleLike

__all__ = ["LayerDecomposition", "Decomposition", "train_free", "HALF_PRECISION"]

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
    output: Union[int, torch.Tensor]  # the explained output: an index, (batch,) per-point indices, or output weights
    output_value: torch.Tensor  # (batch,) f(x) of the explained output
    input_shape: Optional[tuple[int, ...]] = dataclasses.field(default=None, kw_only=True)

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


def edge_shape(x: torch.Tensor) -> Optional[tuple[int, ...]]:
    """The non-batch shape of an input ``x`` with more than two dimensions (None for ``(batch, D)``)."""
    return tuple(x.shape[1:]) if x.dim() > 2 else None


def check_output_and_precision(net, output, convert: str):
    """``output`` checked (an int, a ``(batch,)`` tensor, or ``"predicted"`` kept as it is); the network's parameters
    finite; half precision refused, ``convert`` saying how to convert.  Shared by the dense and the graph decomposition."""
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


def checked_arguments(
    net: ReLUNetwork, x: torch.Tensor, output: "int | torch.Tensor | str", root_finder: RootFinder
) -> tuple["int | torch.Tensor | str", torch.Tensor]:
    """Validate a decomposition's arguments: ``(output, x)``, ``output`` checked against ``x``'s batch (``"predicted"`` kept).

    ``x`` comes back validated as ``(batch, D_0)`` (not copied); raises the
    ``TypeError`` / ``ValueError`` documented in :func:`train_free`.
    """
    dense_only(net, "this decomposition")
    if not isinstance(net, ReLUNetwork):
        raise TypeError(
            f"net must be a dtd.ReLUNetwork or dtd.GraphNetwork, got {type(net).__name__}; lower a model with "
            "ReLUNetwork.from_module(model, input_shape) (any piecewise-linear nn.Module) or ReLUNetwork.from_sequential"
        )
    if not isinstance(root_finder, RootFinder):
        raise TypeError(f"root_finder must be a dtd.roots.RootFinder, got {type(root_finder).__name__}")
    output = check_output_and_precision(net, output, "net.float() / x.float() (or .double())")
    x = net.check_input(x)
    if not isinstance(output, str):
        output = net.check_output(output, x.shape[0])
    root_finder.check(net)
    return output, x


def checked_activations(
    net: ReLUNetwork, x: torch.Tensor, output: "int | torch.Tensor | str", root_finder: RootFinder
) -> tuple["int | torch.Tensor", list[torch.Tensor]]:
    """Validate a decomposition's arguments; return the output index and the activations (every layer's input, then the output).

    The activations start with a copy of ``x``, so nothing the decomposition
    returns aliases the caller's tensor.  Raises the ``TypeError`` /
    ``ValueError`` documented in :func:`train_free`.
    """
    output, x = checked_arguments(net, x, output, root_finder)
    x = x.clone()
    if isinstance(output, str):  # "predicted": each point's largest output
        with torch.no_grad():
            output = net.check_output(net(x).argmax(1), x.shape[0])
    activations = net.activations(x)
    for k in range(net.n_layers):
        root_finder.check_domain(k, activations[k])
    return output, activations


def train_free(
    net: "ReLUNetwork | GraphNetwork",
    x: torch.Tensor,
    *,
    rule: Union[RuleLike, Sequence[RuleLike], None] = None,
    output: OutputLike = 0,
    root_finder: Optional[RootFinder] = None,
) -> Decomposition:
    """Train-free DTD of output ``output`` of ``net`` at the points ``x``.

    Parameters
    ----------
    net
        The network.  Not modified.
    x
        ``(batch, D_0)`` inputs, or ``(batch, *net.input_shape)`` for a
        network lowered from a model with image inputs; in the network's
        dtype and on its device.  Not modified.  The input relevance
        (:attr:`Decomposition.relevance`) comes back in ``x``'s shape.
    rule
        One rule (object or name) for every layer, or one per layer, first
        layer first.  Default ``"z+"``.  Shorthand for
        ``root_finder=LinearRoots(rule)``; give one of the two.
    output
        What to explain (:mod:`dtd.outputs`): the index of an output
        element (an int into the flattened output, or a tuple into its
        shape: ``(class, row, col)`` of a segmentation map); one per point, a
        ``(batch,)`` integer tensor; ``"predicted"``, each point's largest
        class; or a floating-point tensor ``w`` of the per-point output's
        shape, explaining ``sum(w * y)`` (a class's mask): the top layer then
        has one neuron (``net.explaining(w)``) and :attr:`Decomposition.output`
        holds ``w``.  :attr:`Decomposition.output_value` is what was explained.
    root_finder
        Where to expand each neuron (default: closed-form roots of ``rule``).

    Returns
    -------
    Decomposition
        Owns its tensors: none aliases ``x`` (writing into the result leaves
        ``x`` unchanged, changing ``x`` afterwards leaves the result unchanged).

    Raises
    ------
    TypeError
        ``net`` is no :class:`ReLUNetwork`, ``x`` no tensor of its dtype, or
        the dtype is float16/bfloat16 (half precision is refused, not
        computed: convert to float32 or float64).
    ValueError
        Wrong shape, empty batch, NaN/inf in ``x`` or the weights,
        parameters without values (meta device, uninitialised
        ``nn.LazyLinear``), ``output`` out of range, activations outside a
        rule's domain, or a layer whose values overflow the dtype (the
        message names the layer and the dtype; never NaN or zero relevance).
    """
    if root_finder is None:
        root_finder = LinearRoots("z+" if rule is None else rule)
    elif rule is not None:
        raise ValueError("give either rule or root_finder, not both (pass the rule to the root finder)")
    if not isinstance(net, (ReLUNetwork, GraphNetwork)):
        checked_arguments(net, x, output, root_finder)  # the TypeError naming what net must be
    explained, index = explain(net, output)
    if isinstance(explained, GraphNetwork):
        from .graph_decompose import graph_train_free

        dec = graph_train_free(explained, x, index, root_finder)
    else:
        from .graph_decompose import decompose

        shape = edge_shape(x) if isinstance(x, torch.Tensor) else None
        index, x = checked_arguments(explained, x, index, root_finder)
        dec = decompose(explained.graph(), x.clone(), index, root_finder, finder_net=explained, input_shape=shape)
    if is_weights(output):  # the decomposition of sum(w * y): its record says so
        dec = dataclasses.replace(dec, output=output.detach().clone())
    return dec

