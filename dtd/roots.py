"""Root finders: where DTD expands each neuron's relevance.

A root finder gets the input ``a`` ``(batch, D)`` of layer ``k`` and the
relevance ``R`` ``(batch, J)`` of its output neurons and returns a
:class:`~dtd.rootsets.RootSet`: for every (point, neuron) a root (materialised
on demand, ``(batch, J, D)``) with a validity flag ``(batch, J)``.
A valid root satisfies the root equation ``w_j . (a - root_j) = R_j``, so the
relevances ``R_i = sum_j w_ji (a - root_j)_i`` conserve ``sum_j R_j``.
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence, Union

import torch

from .rootsets import RootSet
from .rules import Rule, RuleLike
from .tolerances import denominator_eps

__all__ = ["RootFinder", "LinearRoots"]


class RootFinder(abc.ABC):
    """Finds the roots of every neuron of one layer, for a whole batch."""

    def check(self, net) -> None:
        """Raise ``ValueError`` if the finder cannot serve ``net`` (called once per decomposition)."""

    def check_domain(self, k: int, a: torch.Tensor) -> None:
        """Raise ``ValueError`` if the input ``a`` of layer ``k`` is outside the finder's domain."""

    @abc.abstractmethod
    def find(self, net, k: int, a: torch.Tensor, relevance: torch.Tensor) -> RootSet:
        """The roots of every (point, neuron) of layer ``k`` (use
        :class:`~dtd.rootsets.ExplicitRoots` to return a ``(batch, J_k, D_k)`` tensor)."""

    @abc.abstractmethod
    def describe(self, k: int) -> str:
        """Short label of what is used at layer ``k`` (for results and reports)."""


class LinearRoots(RootFinder):
    """Closed-form roots along each rule's direction (train-free DTD's default).

    Parameters
    ----------
    rule
        One rule for every layer, or a sequence with one rule per layer
        (first layer first; DTD's usual recipe is ``[ZB(...), "z+", ...]``).
    eps
        ``|w_j . v_j|`` at or below this means the root does not exist
        (default: :func:`dtd.tolerances.denominator_eps` of the dtype).
    """

    def __init__(self, rule: Union[RuleLike, Sequence[RuleLike]] = "z+", *, eps: Optional[float] = None):
        if isinstance(rule, (str, Rule)):
            self.rules: Union[Rule, tuple[Rule, ...]] = Rule.ensure(rule)
        elif isinstance(rule, Sequence) and len(rule) > 0:
            self.rules = tuple(Rule.ensure(r) for r in rule)
        else:
            raise TypeError(f"rule must be a rule, a rule name or a non-empty list of them, got {rule!r}")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        self.eps = eps

    def rule(self, k: int) -> Rule:
        """The rule used at layer ``k``."""
        return self.rules[k] if isinstance(self.rules, tuple) else self.rules

    def check(self, net) -> None:
        if isinstance(self.rules, tuple) and len(self.rules) != net.n_layers:
            raise ValueError(
                f"got {len(self.rules)} rules for a network with {net.n_layers} layers; give one rule per layer"
            )

    def check_domain(self, k, a):
        self.rule(k).check_domain(a)

    def find(self, net, k, a, relevance):
        eps = denominator_eps(a.dtype) if self.eps is None else self.eps
        return self.rule(k).root_set(a, net.weight(k), relevance, eps)

    def describe(self, k: int) -> str:
        return repr(self.rule(k))

    def __repr__(self) -> str:
        rules = list(self.rules) if isinstance(self.rules, tuple) else self.rules
        return f"LinearRoots({rules!r})"
