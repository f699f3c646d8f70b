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
:func:`stabilizer_bound` (:mod:`properties.conformance.stabilizer`, which the kit
uses too) turns that into a rigorous per-input bound on the difference, so
"agree" means ``|R_dtd - R_lib| <= bound + ROUNDING64``.

zennit imports torchvision; both libraries come with the ``test`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dtd import rules as R
from dtd.network import ReLUNetwork

from ..measure.thresholds import ROUNDING64
from .adapters import CAPTUM_STABILIZER, ZENNIT_STABILIZER, captum_attribute, counterpart, zennit_attribute, zennit_rule
from .stabilizer import per_layer_rules, stabilizer_bound

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


def zennit_relevance(net: ReLUNetwork, x: torch.Tensor, rules: R.Rule | Sequence[R.Rule], output: int) -> torch.Tensor:
    """zennit's input relevance ``(batch, D)`` with :func:`zennit_rule` of each layer's rule on its Linear.

    The relevance entering the top is the explained output's value (0 for
    the other outputs), as in train-free DTD.  ``net`` and ``x`` are not touched.
    """
    return zennit_attribute(net.to_sequential(), x, output, per_layer_rules(net, rules))


def captum_relevance(net: ReLUNetwork, x: torch.Tensor, rule: R.Rule, output: int) -> torch.Tensor:
    """captum's ``LRP`` with the registered captum counterpart of ``rule`` on every Linear, ``(batch, D)``."""
    name, kwargs = counterpart(rule, "captum")

    def make() -> object:
        from captum.attr._utils import lrp_rules

        return getattr(lrp_rules, name)(**kwargs)

    return captum_attribute(net.to_sequential(), x, output, make)


def captum_zplus_relevance(net: ReLUNetwork, x: torch.Tensor, output: int) -> torch.Tensor:
    """captum's ``LRP`` with ``Alpha1_Beta0_Rule(set_bias_to_zero=True)`` on every Linear, ``(batch, D)``."""
    return captum_relevance(net, x, R.ZPlus(), output)
