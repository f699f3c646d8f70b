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
from collections.abc import Sequence

import torch

from .decomposition import HALF_PRECISION, Decomposition, LayerDecomposition, check_output_and_precision, edge_shape
from .graph import GraphNetwork, dense_only
from .graph_decompose import decompose, graph_train_free
from .network import ReLUNetwork
from .outputs import OutputLike, explain, is_weights
from .roots import LinearRoots, RootFinder
from .rules import RuleLike

__all__ = ["LayerDecomposition", "Decomposition", "train_free", "HALF_PRECISION"]  # the records: dtd.decomposition

def checked_arguments(
    net: ReLUNetwork, x: torch.Tensor, output: int | torch.Tensor | str, root_finder: RootFinder
) -> tuple[int | torch.Tensor | str, torch.Tensor]:
    """Validate a decomposition's arguments: ``(output, x)``, ``output`` checked
    against ``x``'s batch (``"predicted"`` kept).

    ``x`` comes back validated as ``(batch, D_0)`` (not copied); raises the
    ``TypeError`` / ``ValueError`` documented in :func:`train_free`.
    """
    dense_only(net, "this decomposition")
    if not isinstance(net, ReLUNetwork):
        raise TypeError(
            f"net must be a dtd.ReLUNetwork or dtd.GraphNetwork, got {type(net).__name__}; "
            "lower a model with ReLUNetwork.from_module(model, input_shape) (any "
            "piecewise-linear nn.Module) or ReLUNetwork.from_sequential"
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
    net: ReLUNetwork, x: torch.Tensor, output: int | torch.Tensor | str, root_finder: RootFinder
) -> tuple[int | torch.Tensor, list[torch.Tensor]]:
    """Validate a decomposition's arguments; return the output index and the
    activations (every layer's input, then the output).

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
    net: ReLUNetwork | GraphNetwork,
    x: torch.Tensor,
    *,
    rule: RuleLike | Sequence[RuleLike] | None = None,
    output: OutputLike = 0,
    root_finder: RootFinder | None = None,
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
        dec = graph_train_free(explained, x, index, root_finder)
    else:
        shape = edge_shape(x) if isinstance(x, torch.Tensor) else None
        index, x = checked_arguments(explained, x, index, root_finder)
        dec = decompose(explained.graph(), x.clone(), index, root_finder, finder_net=explained, input_shape=shape)
    if is_weights(output):  # the decomposition of sum(w * y): its record says so
        dec = dataclasses.replace(dec, output=output.detach().clone())
    return dec

