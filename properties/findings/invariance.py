"""Input invariance (Kindermans et al., *The (Un)reliability of Saliency Methods*, 2019).

Shift the inputs by a constant ``c`` and compensate in the first layer's
bias, ``b' = b - W c``: the shifted network computes on ``x + c`` exactly
what the original computes on ``x`` (``W (x + c) + b - W c = W x + b``), so
every layer above the first sees the same activations and hands the first
layer the same upper relevance ``R_j``.  An explanation method is
*input-invariant* when the input relevance does not change either.

At the first layer a rule's relevance is ``R_i = sum_j w_ji v_ji R_j / (w_j . v_j)``
with the rule's direction ``v_j``:

* ``w2``: ``v_j = w_j`` does not read ``a``: unchanged (exactly);
* ``zB`` with bounds shifted by ``c``: ``v_j = (a + c) - (low + c) 1[w >= 0] - (high + c) 1[w < 0]``
  is the unshifted direction: unchanged (exactly);
* ``z+``, ``gamma``, ``x`` (LRP-0): ``v_j`` is ``a`` times a pattern, which the
  shift changes: invariant only by accident (e.g. one input feature, where
  conservation alone fixes ``R_i``);
* ``zB_unshifted`` (the contrast): zB whose box is the shifted data's own
  ``[0, ceil(max(x + c))]``, not moved with the shift: changes.

:func:`shifted_network` builds the compensated network from copies (the
caller's network is never touched), :func:`shifted_rules` the rules that go
with it; :func:`invariance_sweep` measures the share of points whose relevance
is unchanged (:data:`properties.measure.thresholds.INVARIANT_RTOL`) over generated
networks, :func:`subject_invariance` on a trained subject with ``c`` its
inputs' per-feature mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import dtd
from dtd import rules as R
from dtd.threads import one_thread
from dtd.validation import check_seed

from ..generate import variants as V
from ..measure.keys import RateKey, describe
from ..measure.stats import DEFAULT_CONFIDENCE, Rate
from ..measure.thresholds import INVARIANT_RTOL
from .common import Findings, RuleSpec, dense_network, rule_list

if TYPE_CHECKING:
    from ..generate.strategies import Case
    from ..subjects.subject import Subject

__all__ = ["shifted_network", "shifted_rules", "relevance_change", "unchanged", "invariance_sweep",
           "subject_invariance", "UNSHIFTED", "FIGURE", "INVARIANT_BY_CONSTRUCTION"]

#: label of the contrast row: zB with the shifted data's own box (not moved with the shift)
UNSHIFTED = "zB_unshifted"
#: rule labels whose relevance is unchanged by construction (see the module docstring)
INVARIANT_BY_CONSTRUCTION = ("w2", "w2_first", "zB")
FIGURE = "invariance_by_rule.png"


def shifted_network(net: dtd.ReLUNetwork, c: float | torch.Tensor) -> dtd.ReLUNetwork:
    """A new network computing on ``x + c`` what ``net`` computes on ``x``: first bias ``b - W c``.

    Parameters
    ----------
    net
        The network (not modified: the result is built from copies of its layers).
    c
        ``(D_0,)`` shift (or a number), in any floating dtype; the new bias is
        computed in float64 and stored in the network's dtype.

    Returns
    -------
    dtd.ReLUNetwork
        Takes flat ``(N, D_0)`` inputs.
    """
    if not isinstance(net, dtd.ReLUNetwork):
        raise TypeError(f"net must be a dtd.ReLUNetwork, got {type(net).__name__}")
    shift = _shift(c, net.in_features)
    modules = [m for m in net.to_sequential() if not isinstance(m, nn.Flatten)]  # to_sequential copies every Linear
    first = next(m for m in modules if isinstance(m, nn.Linear))  # the first module: a Linear with a bias
    with torch.no_grad():
        bias = first.bias.double() - first.weight.double() @ shift
        first.bias.copy_(bias.to(first.bias.dtype))
    return dtd.ReLUNetwork.from_sequential(nn.Sequential(*modules))


def _shift(c: object, width: int) -> torch.Tensor:
    if isinstance(c, bool) or not isinstance(c, (int, float, torch.Tensor)):
        raise TypeError(f"c must be a number or a (D,) tensor, got {type(c).__name__}")
    shift = torch.as_tensor(c, dtype=torch.float64).detach().clone().reshape(-1)
    if shift.numel() == 1:
        shift = shift.expand(width).clone()
    if shift.shape != (width,):
        raise ValueError(f"c must have one entry per input feature ({width}), got shape {tuple(shift.shape)}")
    if not bool(torch.isfinite(shift).all()):
        raise ValueError("c must be finite")
    return shift


def shifted_rules(rule: RuleSpec, c: float | torch.Tensor, n_layers: int) -> list[R.Rule]:
    """The per-layer rules for the shifted network: a zB at the input gets bounds
    ``low + c, high + c``; the rest as given."""
    rules = rule_list(rule, n_layers)
    first = rules[0]
    if isinstance(first, R.ZB):
        shift = torch.as_tensor(c, dtype=torch.float64).detach().reshape(-1)
        first = R.ZB(first.low + shift, first.high + shift)
    return [first] + rules[1:]


def relevance_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``(N,)``: ``max_i |after - before|`` over ``max_i |before|`` per point (0 where both
    are 0, inf where only ``before`` is)."""
    b, a = before.flatten(1).double(), after.flatten(1).double()
    change = (a - b).abs().amax(1)
    scale = b.abs().amax(1)
    ratio = change / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, ratio, torch.where(change > 0, torch.full_like(ratio, float("inf")),
                                                     torch.zeros_like(ratio)))


def unchanged(before: torch.Tensor, after: torch.Tensor, rtol: float = INVARIANT_RTOL) -> torch.Tensor:
    """``(N,)`` bool: the point's relevance is unchanged (:func:`relevance_change` at most ``rtol``)."""
    return relevance_change(before, after) <= rtol


def _pairs(net: dtd.ReLUNetwork, moved: dtd.ReLUNetwork, x: torch.Tensor, c: torch.Tensor, output: int, label: str,
           rule: RuleSpec) -> torch.Tensor:
    """``(N,)`` bool unchanged for one rule: ``net`` on ``x`` vs ``moved`` (:func:`shifted_network`) on ``x + c``."""
    n_layers = net.n_layers
    xc = x + c.to(x.dtype)
    before = dtd.train_free(net, x, rule=rule_list(rule, n_layers), output=output).relevance
    if label == UNSHIFTED:
        after_rules = [R.ZB.for_data(xc)] + rule_list(rule, n_layers)[1:]
    else:
        after_rules = shifted_rules(rule, c, n_layers)
    after = dtd.train_free(moved, xc, rule=after_rules, output=output).relevance
    return unchanged(before, after)


def invariance_sweep(cases: Sequence[Case], *, seed: int, confidence: float = DEFAULT_CONFIDENCE,
                     variants: Sequence[V.Variant] | None = None) -> Findings:
    """``invariance.{rule}.unchanged`` over generated ``cases`` (each a :class:`properties.generate.strategies.Case`).

    Per case a shift ``c`` with i.i.d. uniform ``[0, 1)`` entries (so shifted
    inputs stay non-negative: z+ and gamma apply), drawn from a local
    generator seeded with ``seed``.  Every rule variant of the ``generated``
    sweep (zB: its box shifted with the data), plus :data:`UNSHIFTED`;
    clustered by network.
    """
    variants = V.variants("generated") if variants is None else list(variants)
    generator = torch.Generator().manual_seed(check_seed(seed))
    clusters: dict = {}
    labels = [v.label for v in variants] + [UNSHIFTED]
    with one_thread(), torch.no_grad():
        for case in cases:
            x = case.x
            c = torch.rand(x.shape[1], generator=generator, dtype=torch.float64)
            moved = shifted_network(case.net, c)
            for variant in variants:
                held = _pairs(case.net, moved, x, c, case.output, variant.label, variant.make(x, case.net.n_layers))
                clusters.setdefault(variant.label, []).append((int(held.sum()), held.numel()))
            zb = next(v for v in V.variants("generated") if v.label == "zB").make(x, case.net.n_layers)
            held = _pairs(case.net, moved, x, c, case.output, UNSHIFTED, zb)
            clusters.setdefault(UNSHIFTED, []).append((int(held.sum()), held.numel()))
    found = Findings()
    for label in labels:
        key = RateKey("invariance", "unchanged", rule=label)
        found.add(key, Rate.from_clusters(clusters[label], confidence), describe(key) + _HOW.get(label, "") +
                  f" [{len(cases)} networks, c ~ U[0, 1) per feature, clustered by network]")
    found.plots.append(_figure(FIGURE, "Input invariance per rule, generated networks",
                               [str(RateKey("invariance", "unchanged", rule=label)) for label in labels], labels))
    return found


_HOW = {"zB": " (zB's box shifted with the data: unchanged by construction)",
        UNSHIFTED: " (zB with the shifted data's own box [0, ceil(max(x + c))], not moved with the shift)",
        "w2_first": " (w2 at the input, z+ above: unchanged by construction)"}


def _figure(file: str, title: str, rows: list[str], labels: list[str]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    return ("bars", (file, title, rows, labels), {
        "xlabel": "rule (at the input layer)",
        "caption": ("Share of points whose input relevance is unchanged when the inputs are shifted by c "
                    "and the first layer's bias by -W c (the same function). w2 and zB with shifted "
                    "bounds are invariant by construction; rules whose direction reads the input are not.")})


def subject_invariance(subject: Subject, *, confidence: float = DEFAULT_CONFIDENCE) -> Findings:
    """``invariance.{name}.{rule}.unchanged`` for the subject's rules, LRP-0 (``x``), ``w2_first`` and the unshifted zB.

    ``c``: the subject's inputs' per-feature mean (a data-derived shift that
    keeps non-negative inputs non-negative).  zB rows use the subject's box
    shifted by ``c`` (or, for :data:`UNSHIFTED`, the shifted data's own box).
    """
    net, name = dense_network(subject, "invariance"), subject.name
    x = subject.inputs.flatten(1)
    c = x.mean(0).double()  # in the inputs' dtype, so x + c and the shifted box round alike
    rules: list[tuple[str, RuleSpec]] = list(subject.rules)
    labels = {label for label, _ in rules}
    contrasts: list[tuple[str, RuleSpec]] = [("x", R.LRP0()),
                                             ("w2_first", [R.WSquare()] + [R.ZPlus()] * (net.n_layers - 1))]
    found = Findings()
    if float(x.min()) >= 0:  # the unshifted box [0, ceil(max)] needs non-negative data
        contrasts.append((UNSHIFTED, [R.ZB.for_data(x)] + [R.ZPlus()] * (net.n_layers - 1)))
    else:
        found.counts[f"invariance, subject {name}: {UNSHIFTED} not measured (inputs with negative values)"] = 0
    for label, rule in contrasts:
        if label not in labels:
            rules.append((label, rule))
    with one_thread(), torch.no_grad():
        moved = shifted_network(net, c)
        for label, rule in rules:
            holds = torch.cat(
                [_pairs(net, moved, x[index], c, int(cls), label, rule) for cls, index in _groups(subject.outputs)]
            )
            key = RateKey("invariance", "unchanged", subject=name, rule=label)
            found.add(key, Rate(int(holds.sum()), holds.numel(), confidence),
                      describe(key) + _HOW.get(label, "") + " [c = the inputs' per-feature mean]")
    shown = [label for label, _ in rules]
    names = [str(RateKey("invariance", "unchanged", subject=name, rule=label)) for label in shown]
    found.plots.append(_figure(f"invariance_{name}.png", f"Input invariance per rule, subject {name}", names, shown))
    return found


def _groups(outputs: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for cls in sorted(set(outputs.tolist())):
        yield cls, (outputs == cls).nonzero().squeeze(1)
