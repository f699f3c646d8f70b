"""Cascading parameter randomisation (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018).

An explanation that still looks the same after the model's top layers are
re-initialised does not explain what the model learned.  For ``n = 1, 2, ...``
the top ``n`` parameterised modules (``nn.Linear``, ``nn.Conv2d``) of a
*deep copy* of the subject's model are re-initialised -- weights and biases
i.i.d. uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` (the bound of
torch's default initialisation), from a local generator -- and each point's
input relevance for the same explained output is compared with the original
model's: ``rank_similar`` when the Spearman rank correlation is at least
:data:`~properties.measure.thresholds.SIMILAR_SPEARMAN`; for images ``ssim_similar``
when the SSIM of the two maps, each scaled by its largest ``|R|`` to
``[-1, 1]`` (data range 2), is at least
:data:`~properties.measure.thresholds.SIMILAR_SSIM`.  Judged: points whose explained
output stays positive in the randomised model (DTD explains a positive
output) and whose two maps are not constant.  Gradient x input (autograd on
the randomised copy itself) is the contrast row ``grad_x_input``.

Each ``n`` is measured on :data:`COPIES` independently re-initialised copies
(copy ``c`` drawn from a generator seeded with ``seed * COPIES + c``), each
copy a cluster of the rate: which weights one re-initialisation happens to
draw moves these rates far more than which points are judged, so a rate from
one copy would not be reproduced by another seed.

Rows ``randomisation.{subject}.{rule}.top{n}.{rank_similar|ssim_similar}``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

import dtd
from dtd.threads import one_thread
from dtd.validation import check_int, check_seed

from ..measure.keys import RateKey, describe
from ..measure.stats import DEFAULT_CONFIDENCE, Rate
from ..measure.thresholds import SIMILAR_SPEARMAN, SIMILAR_SSIM
from .common import Findings, RuleSpec, Series, dense_network, relevance_from_top
from .similarity import spearman, ssim

if TYPE_CHECKING:
    from ..subjects.subject import Subject

_Model = TypeVar("_Model", bound=nn.Module)

__all__ = ["parameterised_modules", "randomised_copy", "gradient_x_input", "subject_randomisation", "CONTRAST"]

#: label of the contrast row
CONTRAST = "grad_x_input"
#: randomised copies per number of re-initialised modules, each a cluster of the rates: a rate's variation across
#: re-initialisations is part of its interval, so another seed (other copies) gives a consistent rate.  An all-pass or
#: all-fail rate counts its copies as whole clusters (properties.measure.stats: sum(t)^2 / sum(t^2) of them, fewer than
#: the copies when they judge unequal numbers of points), so a 0 % contrast needs about 8 effective copies to bound its
#: interval below 50 % at 99 % (Wilson's upper bound of 0 of 8: 45.3 %); with 8 copies seed 7 had 7.3 and read 51.4 %
COPIES = 12
_PARAMETERISED = (nn.Linear, nn.Conv2d)


def parameterised_modules(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    """The model's ``nn.Linear`` / ``nn.Conv2d`` modules in forward (definition) order, lowest first."""
    return [m for m in model.modules() if isinstance(m, _PARAMETERISED)]


def randomised_copy(model: _Model, n_top: int, generator: torch.Generator) -> _Model:
    """A deep copy of ``model`` whose top ``n_top`` parameterised modules are re-initialised (``model`` is not touched).

    Weights and biases i.i.d. uniform in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``,
    drawn from ``generator`` in order from the top module down (cascading:
    the top ``n`` modules of ``n + 1`` get the same draws as of ``n`` when
    the generator starts from the same state).
    """
    modules = parameterised_modules(model)
    n_top = check_int(n_top, "n_top", minimum=0)
    if n_top > len(modules):
        raise ValueError(f"n_top is {n_top} but the model has only {len(modules)} Linear/Conv2d modules")
    clone = copy.deepcopy(model)
    targets = parameterised_modules(clone)[len(modules) - n_top:]
    with torch.no_grad():
        for module in reversed(targets):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            for parameter in (module.weight, module.bias):
                if parameter is not None:
                    values = torch.rand(parameter.shape, generator=generator, dtype=torch.float64) * 2 * bound - bound
                    parameter.copy_(values.to(parameter.dtype))
    return clone


def gradient_x_input(model: nn.Module, x: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``x * d f_c / d x`` per point (``c = outputs[i]``), by autograd on ``model``; ``x`` is not modified."""
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = model(leaf)
        (grad,) = torch.autograd.grad(y.gather(1, outputs.unsqueeze(1)).sum(), leaf)
    return (grad * leaf).detach()


def _dtd_relevance(
    net: dtd.ReLUNetwork, x: torch.Tensor, outputs: torch.Tensor, rule: RuleSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, D)`` DTD relevance of each point's output and ``(N,)`` whether that output is positive."""
    flat = x.flatten(1)
    with torch.no_grad():
        y = net(flat)
    value = y.gather(1, outputs.unsqueeze(1)).squeeze(1)
    top = torch.zeros_like(y).scatter(1, outputs.unsqueeze(1), value.unsqueeze(1))
    positive = value > 0
    relevance = torch.zeros_like(flat)
    if bool(positive.any()):
        relevance[positive] = relevance_from_top(net, flat[positive], top[positive], rule)
    return relevance, positive


def _images(relevance: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Maps scaled by their largest |R| to [-1, 1], shaped ``(N, C, H, W)`` (or ``(N, H, W)``)."""
    scale = relevance.abs().amax(1, keepdim=True)
    return (relevance / torch.where(scale > 0, scale, torch.ones_like(scale))).reshape(-1, *shape)


def _clustered(outcomes: Iterable[tuple[torch.Tensor, torch.Tensor]], confidence: float) -> Rate:
    """The rate of ``(holds, judged)`` masks, one cluster per randomised copy."""
    return Rate.from_clusters([(int((h & j).sum()), int(j.sum())) for h, j in outcomes], confidence)


def subject_randomisation(subject: Subject, *, seed: int = 0, confidence: float = DEFAULT_CONFIDENCE) -> Findings:
    """``randomisation.{name}.{rule}.top{n}.*`` for ``n`` = 1 .. every parameterised module, the
    subject's rules and ``grad_x_input``."""
    name, model = subject.name, subject.model
    network = dense_network(subject, "randomisation")
    if not isinstance(model, nn.Sequential):
        raise TypeError("the randomisation family re-lowers copies of the model with from_sequential; "
                        f"subject {name}'s model is {type(model).__name__}, not an nn.Sequential")
    modules = parameterised_modules(model)
    found = Findings()
    if not modules:
        found.counts[f"randomisation, subject {name}: not measured (no Linear/Conv2d module)"] = 0
        return found
    x, outputs, shape = subject.inputs, subject.outputs, subject.input_shape
    images = len(shape) >= 2 and min(shape[-2:]) >= 7
    labels = [label for label, _ in subject.rules] + [CONTRAST]
    with one_thread():
        original = {label: _dtd_relevance(network, x, outputs, rule)[0] for label, rule in subject.rules}
        original[CONTRAST] = gradient_x_input(model, x, outputs).flatten(1)
        lines: dict[str, dict[str, Series]] = {
            "spearman": {label: {"x": [], "y": [], "low": [], "high": []} for label in labels},
            "share": {label: {"x": [], "y": [], "low": [], "high": []} for label in labels}}
        seed = check_seed(seed)
        for n in range(1, len(modules) + 1):
            rho_of: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {label: [] for label in labels}  # per copy
            ssim_of: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {label: [] for label in labels}
            positive_points = 0
            for c in range(COPIES):
                # copy c of every n starts from the same state (cascading: top n extends top n - 1)
                generator = torch.Generator().manual_seed(seed * COPIES + c)
                changed = randomised_copy(model, n, generator)
                net = dtd.ReLUNetwork.from_sequential(changed, input_shape=shape)
                now = {label: _dtd_relevance(net, x, outputs, rule) for label, rule in subject.rules}
                positive = next(iter(now.values()))[1] if now else torch.ones(len(x), dtype=torch.bool)
                now[CONTRAST] = (gradient_x_input(changed, x, outputs).flatten(1), positive)
                positive_points += int(positive.sum())
                for label in labels:
                    relevance, _ = now[label]
                    rho, defined = spearman(original[label], relevance)
                    rho_of[label].append((rho, defined & positive))
                    if images:
                        s = ssim(_images(original[label], shape), _images(relevance, shape), data_range=2.0)
                        ssim_of[label].append((s, defined & positive))
            for label in labels:
                judged_points = sum(int(j.sum()) for _, j in rho_of[label])
                key = RateKey("randomisation", "rank_similar", subject=name, rule=label, randomised=n)
                rate = _clustered([(r >= SIMILAR_SPEARMAN, j) for r, j in rho_of[label]], confidence)
                found.add(key, rate, describe(key) + f" [{judged_points} of {COPIES} x {len(x)} point-copies judged]")
                if judged_points:
                    median = float(torch.cat([r[j] for r, j in rho_of[label]]).median())
                    for panel, values in (("spearman", (median, median, median)),
                                          ("share", (rate.rate, *rate.interval))):
                        line = lines[panel][label]
                        for part, value in zip(("x", "y", "low", "high"), (n, *values), strict=True):
                            line[part].append(value)
                if images:
                    key = key.replace(outcome="ssim_similar")
                    found.add(key, _clustered([(v >= SIMILAR_SSIM, j) for v, j in ssim_of[label]], confidence),
                              describe(key) + f" [{judged_points} of {COPIES} x {len(x)} point-copies judged]")
            found.counts[f"randomisation, subject {name}, top {n}: point-copies whose explained output stays positive "
                         f"(of {COPIES} x {len(x)})"] = positive_points
    found.plots.append(("lines", (f"randomisation_{name}.png", f"Cascading randomisation, subject {name}", [
        {"title": "median Spearman rank correlation with the original", "ylabel": "Spearman", "ylim": [-1.05, 1.05],
         "series": lines["spearman"]},
        {"title": f"share of points with Spearman >= {SIMILAR_SPEARMAN:g}", "ylabel": "share of points",
         "ylim": [-0.05, 1.05], "series": lines["share"]},
    ]), {"xlabel": "top layers re-initialised", "caption": (
        f"Subject {name}: the top n Linear/Conv2d modules of a copy re-initialised; each point's relevance compared "
        "with the original model's (points whose explained output stays positive). Band of the share: Wilson "
        "interval; the median has none drawn (one value per point). grad_x_input: gradient x input, the contrast.")}))
    return found
