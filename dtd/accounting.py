"""Where did the relevance go?  Per-layer accounting of a decomposition.

Users of LRP/DTD code keep asking why the input relevance does not add up
to the output.  For each layer this splits the relevance that arrived from
above into what the layer passed on, what it lost to roots that do not
exist, and what a bias-including LRP rule would have handed to the biases.
"""

from __future__ import annotations

import dataclasses

import torch

from .decomposition import Decomposition, GraphDecomposition
from .graph import GraphNetwork
from .network import ReLUNetwork
from .validation import check_finite_layer

__all__ = ["LayerAccount", "Accounting", "accounting"]


@dataclasses.dataclass(frozen=True)
class LayerAccount:
    """Relevance bookkeeping of one layer; every tensor is ``(batch,)``.

    Attributes
    ----------
    upper
        ``sum_j R_j``: what arrived from the layer above.
    conserved
        ``sum_i R_i``: what the layer passed on to its inputs.
    lost
        ``sum_j R_j`` over neurons whose root does not exist (they pass nothing on).
    residual
        ``upper - lost - conserved``: numerical error (0 up to rounding for valid roots).
    trivial_roots
        Neurons with ``R_j = 0`` (root ``a``; they carry and pass on nothing).
    bias_share
        ``sum_j R_j b_j / z_j`` over neurons with ``z_j != 0``: the part of the
        upper relevance that LRP-0 with the bias kept would assign to the
        biases instead of the inputs (negative biases give a negative share).
    """

    index: int
    upper: torch.Tensor
    conserved: torch.Tensor
    lost: torch.Tensor
    residual: torch.Tensor
    trivial_roots: torch.Tensor
    bias_share: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Accounting:
    """:class:`LayerAccount` per layer (``k = 0`` is the first Linear) and the explained output."""

    layers: tuple[LayerAccount, ...]
    output_value: torch.Tensor

    def summary(self) -> str:
        """A text table of the batch means, top layer first."""
        lines = [
            f"{'layer':>5} {'upper':>10} {'conserved':>10} {'lost':>10} {'residual':>10} {'trivial':>8} "
            f"{'bias share':>11}"
        ]
        for acc in reversed(self.layers):
            lines.append(
                f"{acc.index:>5} {float(acc.upper.mean()):>10.4g} {float(acc.conserved.mean()):>10.4g} "
                f"{float(acc.lost.mean()):>10.4g} {float(acc.residual.abs().mean()):>10.2g} "
                f"{float(acc.trivial_roots.float().mean()):>8.2f} {float(acc.bias_share.mean()):>11.4g}"
            )
        lines.append(
            "means over the batch; upper: sum_j R_j from the layer above; conserved: sum_i R_i passed on; lost: R_j of "
            "neurons without a root; residual: |upper - lost - conserved| (rounding); trivial: neurons with R_j = 0 "
            "per point; bias share: what LRP-0 with the bias kept would hand the biases"
        )
        return "\n".join(lines)


def accounting(net: ReLUNetwork | GraphNetwork, dec: Decomposition) -> Accounting:
    """Split each layer's upper relevance, per point, into what it passed on, what it lost and the bias share.

    Raises ``ValueError`` naming the layer and dtype where a pre-activation or
    bias share overflows (never a NaN table).
    """
    if not isinstance(net, (ReLUNetwork, GraphNetwork)):
        raise TypeError(f"net must be a dtd.ReLUNetwork or dtd.GraphNetwork, got {type(net).__name__}")
    if not isinstance(dec, Decomposition):
        raise TypeError(f"dec must be a dtd.Decomposition, got {type(dec).__name__}")
    # a graph network's accounting reads the pre-activations train_free computed (a GraphDecomposition keeps them)
    graph_dec = dec if isinstance(dec, GraphDecomposition) else None
    width = net.in_features(0) if isinstance(net, GraphNetwork) else net.in_features
    if (len(dec.layers) != net.n_layers or dec.layers[0].input.shape[1] != width
            or (isinstance(net, GraphNetwork) and graph_dec is None)):
        raise ValueError("the decomposition does not belong to this network")
    layers = []
    with torch.no_grad():
        for lay in dec.layers:
            k = lay.index
            upper = lay.upper_relevance
            if isinstance(net, GraphNetwork) and graph_dec is not None:
                # the pre-activation train_free computed, and the node's bias (its branches' constants summed)
                z, bias = graph_dec.activations[0][net.layer_ids[k]].flatten(1), net.layer(k).bias.flatten()
            elif isinstance(net, ReLUNetwork):
                z, bias = lay.input @ net.weight(k).T + net.bias(k), net.bias(k)
            else:  # unreachable: checked above
                raise ValueError("the decomposition does not belong to this network")
            nonzero = z != 0
            share = torch.where(nonzero, upper * bias / torch.where(nonzero, z, torch.ones_like(z)),
                                torch.zeros_like(z))
            check_finite_layer(z, k, "its pre-activations")
            check_finite_layer(share, k, "the bias shares R_j b_j / z_j")
            total, lost, conserved = upper.sum(1), lay.lost_relevance, lay.relevance.sum(1)
            layers.append(
                LayerAccount(
                    index=k,
                    upper=total,
                    conserved=conserved,
                    lost=lost,
                    residual=total - lost - conserved,
                    trivial_roots=(~lay.carries_relevance).sum(1),
                    bias_share=share.sum(1),
                )
            )
    return Accounting(tuple(layers), dec.output_value)
