"""How far an LRP implementation with a stabiliser may lie from train-free DTD: a rigorous per-input bound.

An LRP rule divides by ``d_j + epsilon sign(d_j)`` where DTD divides by its
denominator ``d_j = w_j . v_j``.  :func:`stabilizer_bound` propagates what that
changes through the layers, so the conformance kit (:mod:`properties.conformance`)
and the agreement with zennit and captum (:mod:`properties.conformance.agreement`)
can tell an implementation's stabiliser from a defect.  Torch only: neither
library is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dtd import rules as R
from dtd.decomposition import Decomposition
from dtd.network import ReLUNetwork

from ..measure.thresholds import CONDITIONING_FACTOR

__all__ = ["per_layer_rules", "stabilizer_bound"]


def per_layer_rules(net: ReLUNetwork, rules: R.Rule | Sequence[R.Rule]) -> list[R.Rule]:
    """One rule per layer: ``rules`` itself, or one rule repeated."""
    if isinstance(rules, R.Rule):
        return [rules] * net.n_layers
    rules = list(rules)
    if len(rules) != net.n_layers:
        raise ValueError(f"got {len(rules)} rules for a network with {net.n_layers} layers")
    return rules


def stabilizer_bound(
    net: ReLUNetwork, dec: Decomposition, rules: R.Rule | Sequence[R.Rule], epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far an LRP implementation with stabiliser ``epsilon`` may lie from train-free DTD.

    Per layer DTD hands ``R_i = sum_j c_ij R_j`` with ``c_ij = w_ji v_ji / d_j``;
    the stabilised rule multiplies each term by ``d_j / (d_j + epsilon sign d_j)``,
    a relative change of at most ``delta_j = epsilon / (|d_j| - epsilon)``.  With
    ``E`` the bound on the upper relevance's error, the lower error is at most
    ``sum_j |c_ij| (E_j (1 + delta_j) + |R_j| delta_j)`` -- exact, not first order.

    Returns ``(bound (batch, D_0), conditioned (batch,))``: ``conditioned`` is
    False for points where some neuron carrying relevance has ``|d_j| <= 2
    epsilon`` or no DTD root (the stabiliser then decides the result: the
    agreement is not expected there; the margin is :data:`~properties.measure.thresholds.CONDITIONING_FACTOR`).
    """
    rules = per_layer_rules(net, rules)
    n = dec.output_value.shape[0]
    error = torch.zeros_like(dec.layers[-1].upper_relevance)
    conditioned = torch.ones(n, dtype=torch.bool, device=error.device)
    for k in range(net.n_layers - 1, -1, -1):
        layer = dec.layers[k]
        w = net.weight(k)
        v = rules[k].direction(layer.input, w)  # (N, J, D)
        d = (v * w).sum(-1)  # (N, J)
        carrying = layer.carries_relevance
        margin = CONDITIONING_FACTOR * epsilon
        conditioned &= ~(carrying & ((d.abs() <= margin) | ~layer.root_valid)).any(1)
        safe = torch.where(carrying & (d.abs() > margin), d, torch.ones_like(d))
        delta = torch.where(carrying, epsilon / (safe.abs() - epsilon), torch.zeros_like(d))
        weight = (w * v).abs() / safe.abs().unsqueeze(-1) * carrying.unsqueeze(-1)
        error = torch.einsum("njd,nj->nd", weight, error * (1 + delta) + layer.upper_relevance.abs() * delta)
    return error, conditioned
