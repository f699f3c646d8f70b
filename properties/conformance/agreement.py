"""Agreement with the field's LRP implementations: zennit and captum.

On networks whose biases are all <= 0 and inputs >= 0, train-free DTD's
closed-form rules are LRP rules that ignore the bias (each rule declares its
counterparts where it is registered, :mod:`dtd.rules`):

====================  ==================================================
dtd rule              zennit / captum
====================  ==================================================
``z+``                zennit ``ZPlus()``; captum ``Alpha1_Beta0_Rule(set_bias_to_zero=True)``
``x`` (LRP-0)         zennit ``Epsilon(zero_params='bias')``
``gamma(g)``          zennit ``Gamma(g, zero_params='bias')``
``w2``                zennit ``WSquare(zero_params='bias')``
``zB(low, high)``     zennit ``ZBox(low, high)`` (its three biases cancel)
====================  ==================================================

(z+ drops non-positive biases by construction; zennit's ``ZPlus`` keeps a
positive one in the denominator, which is where the two part.)  They differ
only in the stabiliser: zennit divides by ``d + 1e-6 sign(d)``
(:data:`ZENNIT_STABILIZER`), captum by ``d + 1e-9 sign(d)``
(:data:`CAPTUM_STABILIZER`), where ``d_j = w_j . v_j`` is DTD's denominator.
:func:`stabilizer_bound` turns that into a rigorous per-input bound on the
difference, so "agree" means ``|R_dtd - R_lib| <= bound + ROUNDING64``.

zennit imports torchvision; both libraries come with the ``test`` extra.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from dtd import rules as R
from dtd.network import ReLUNetwork

from .adapters import CAPTUM_STABILIZER, ZENNIT_STABILIZER, captum_attribute, counterpart, zennit_attribute, zennit_rule
from ..measure.thresholds import CONDITIONING_FACTOR, ROUNDING64

__all__ = [
    "ZENNIT_STABILIZER",
    "CAPTUM_STABILIZER",
    "ROUNDING64",
    "zennit_rule",
    "zennit_relevance",
    "captum_relevance",
    "captum_zplus_relevance",
    "stabilizer_bound",
    "per_layer_rules",
]


def per_layer_rules(net: ReLUNetwork, rules: Union[R.Rule, Sequence[R.Rule]]) -> list[R.Rule]:
    """One rule per layer: ``rules`` itself, or one rule repeated."""
    if isinstance(rules, R.Rule):
        return [rules] * net.n_layers
    rules = list(rules)
    if len(rules) != net.n_layers:
        raise ValueError(f"got {len(rules)} rules for a network with {net.n_layers} layers")
    return rules


def zennit_relevance(net: ReLUNetwork, x: torch.Tensor, rules: Union[R.Rule, Sequence[R.Rule]], output: int) -> torch.Tensor:
    """zennit's input relevance ``(batch, D)`` with :func:`zennit_rule` of each layer's rule on its Linear.

    The relevance entering the top is the explained output's value (0 for
    the other outputs), as in train-free DTD.  ``net`` and ``x`` are not touched.
    """
    return zennit_attribute(net.to_sequential(), x, output, per_layer_rules(net, rules))


def captum_relevance(net: ReLUNetwork, x: torch.Tensor, rule: R.Rule, output: int) -> torch.Tensor:
    """captum's ``LRP`` with the registered captum counterpart of ``rule`` on every Linear, ``(batch, D)``."""
    name, kwargs = counterpart(rule, "captum")

    def make():
        from captum.attr._utils import lrp_rules

        return getattr(lrp_rules, name)(**kwargs)

    return captum_attribute(net.to_sequential(), x, output, make)


def captum_zplus_relevance(net: ReLUNetwork, x: torch.Tensor, output: int) -> torch.Tensor:
    """captum's ``LRP`` with ``Alpha1_Beta0_Rule(set_bias_to_zero=True)`` on every Linear, ``(batch, D)``."""
    return captum_relevance(net, x, R.ZPlus(), output)


def stabilizer_bound(net: ReLUNetwork, dec, rules: Union[R.Rule, Sequence[R.Rule]], epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How far an LRP implementation with stabiliser ``epsilon`` may lie from train-free DTD.

    Per layer DTD hands ``R_i = sum_j c_ij R_j`` with ``c_ij = w_ji v_ji / d_j``;
    the stabilised rule multiplies each term by ``d_j / (d_j + epsilon sign d_j)``,
    a relative change of at most ``delta_j = epsilon / (|d_j| - epsilon)``.  With
    ``E`` the bound on the upper relevance's error, the lower error is at most
    ``sum_j |c_ij| (E_j (1 + delta_j) + |R_j| delta_j)`` -- exact, not first order.

    Returns ``(bound (batch, D_0), conditioned (batch,))``: ``conditioned`` is
    False for points where some neuron carrying relevance has ``|d_j| <= 2
    epsilon`` or no DTD root (the stabiliser then decides the result: the
    agreement is not expected there; the margin is :data:`~properties.thresholds.CONDITIONING_FACTOR`).
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
