"""What the field's findings share: DTD started from any top-layer relevance, and the record of what a family measured.

* :func:`relevance_from_top`: train-free DTD from an arbitrary top-layer
  relevance (``train_free`` starts from ``f(x)`` of one output), through the
  public root-finder contract (:meth:`dtd.RootFinder.find` and the root
  set's ``relevance``); equals ``dtd.train_free`` for a one-hot top.
* :func:`rule_list`: one rule object per layer.
* :class:`Findings`: the rates, counts and plots a family measured, with
  :meth:`Findings.record` writing them into the property report.

The families (:mod:`.insensitivity`, :mod:`.invariance`, :mod:`.randomisation`)
build on these; :func:`properties.findings.evaluate_findings` runs them on a subject.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

import dtd
from dtd.decompose import checked_activations

from ..measure.keys import RateKey
from ..measure.recorder import Recorder
from ..measure.stats import Rate

if TYPE_CHECKING:
    from ..subjects.subject import Subject

__all__ = ["relevance_from_top", "rule_list", "Findings", "RuleSpec", "dense_network", "Series"]

#: one line of a plot: ``{"x": [...], "y": [...], "low": [...], "high": [...]}`` (None where a value is missing)
Series = dict[str, list[float | None]]

#: one rule (object or name) for every layer, or one per layer
RuleSpec = dtd.rules.RuleLike | Sequence[dtd.rules.RuleLike]


def rule_list(rule: RuleSpec, n_layers: int) -> list[dtd.Rule]:
    """One rule object per layer, first layer first (a single rule repeated)."""
    if isinstance(rule, (str, dtd.Rule)):
        return [dtd.Rule.ensure(rule)] * n_layers
    if isinstance(rule, (list, tuple)):
        rules = [dtd.Rule.ensure(r) for r in rule]
        if len(rules) != n_layers:
            raise ValueError(f"{len(rules)} per-layer rules for a network of {n_layers} layers")
        return rules
    raise TypeError(f"a rule must be a str or a dtd.rules.Rule, or a list of them, got {type(rule).__name__} {rule!r}")


def dense_network(subject: Subject, family: str) -> dtd.ReLUNetwork:
    """The subject's network, which the field's findings read as dense layers (``TypeError`` for a graph network)."""
    net = subject.network
    if not isinstance(net, dtd.ReLUNetwork):
        raise TypeError(f"the {family} family runs on the dense layers of from_sequential; subject {subject.name} was "
                        "lowered by the graph engine")
    return net


def relevance_from_top(net: dtd.ReLUNetwork, x: torch.Tensor, top: torch.Tensor, rule: RuleSpec) -> torch.Tensor:
    """Input relevance of train-free DTD started from ``top`` at the top layer's outputs.

    Parameters
    ----------
    net
        The network (not modified).
    x
        ``(N, D_0)`` inputs, or ``(N, *net.input_shape)``.
    top
        ``(N, J_{L-1})`` relevance of the top layer's output neurons (for
        ``train_free(..., output=c)`` this is ``f_c(x)`` in column ``c``, 0
        elsewhere).
    rule
        One rule for every layer or one per layer (objects or names).

    Returns
    -------
    torch.Tensor
        ``(N, D_0)`` input relevance, in the network's dtype.
    """
    finder = dtd.LinearRoots(rule_list(rule, net.n_layers))
    _, activations = checked_activations(net, x, 0, finder)
    if not isinstance(top, torch.Tensor) or top.shape != activations[-1].shape:
        raise ValueError(f"top must be a tensor of shape {tuple(activations[-1].shape)} (points, top-layer "
                         f"outputs), got {tuple(top.shape) if isinstance(top, torch.Tensor) else type(top).__name__}")
    relevance = top.to(activations[-1].dtype)
    with torch.no_grad():
        for k in range(net.n_layers - 1, -1, -1):
            root_set = finder.find(net, k, activations[k], relevance, output=0)
            relevance = root_set.relevance(net.weight(k))
    return relevance


@dataclasses.dataclass
class Findings:
    """What one family measured: ``rates`` (key -> (Rate, description)), ``counts`` and ``plots``.

    ``plots`` holds ``(method, args, kwargs)`` for the property report's
    plot methods (``lines``, ``bars``).
    """

    rates: dict[RateKey, tuple[Rate, str]] = dataclasses.field(default_factory=dict)
    counts: dict[str, float] = dataclasses.field(default_factory=dict)
    #: ``(method, args, kwargs)`` of a :class:`~properties.measure.recorder.Recorder` plot method
    plots: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = dataclasses.field(default_factory=list)

    def add(self, key: RateKey, rate: Rate, description: str) -> None:
        if key in self.rates:
            raise ValueError(f"rate {key} measured twice")
        self.rates[key] = (rate, description)

    def extend(self, other: Findings) -> Findings:
        for key, (rate, description) in other.rates.items():
            self.add(key, rate, description)
        self.counts.update(other.counts)
        self.plots.extend(other.plots)
        return self

    def record(self, property_report: Recorder, *,
               summary: Callable[[RateKey], bool] = lambda key: False) -> None:
        """Write everything into ``property_report``; ``summary(key)`` picks the rows of the terminal table."""
        for key, (rate, description) in self.rates.items():
            property_report.rate(key, rate, description, summary=summary(key))
        for label, value in self.counts.items():
            property_report.count(label, value)
        for method, args, kwargs in self.plots:
            getattr(property_report, method)(*args, **kwargs)
