"""Conformance adapters for the field's LRP libraries: zennit and captum.

Each adapter is a :class:`properties.conformance.Implementation` whose
``attribute(model, x, output)`` runs the library on the ``nn.Sequential``
the kit hands it and claims the DTD rule the library's rule equals on
bias-negative networks (see :mod:`properties.agreement`).  The libraries are
imported when an adapter is *called*, so building the list needs neither;
a missing library is an ``ImportError`` naming the package to install.

Seed convention: every shipped adapter uses ``seed="value"`` -- zennit's
``Gradient`` attributor is given ``onehot * y`` as the output relevance and
captum's ``LRP`` starts from the target output itself, so the relevance
entering the top is the explained output's value, as in train-free DTD.

Adapters (name: library rule on the Linear layers -> claimed DTD rule, stabiliser):

* ``zennit_zplus``: ``ZPlus()`` -> ``z+``, 1e-6
* ``zennit_epsilon0``: ``Epsilon(1e-6, zero_params='bias')`` -> ``x``, 1e-6
* ``zennit_gamma``: ``Gamma(0.25, zero_params='bias')`` -> ``gamma(0.25)``, 1e-6
* ``zennit_wsquare``: ``WSquare(zero_params='bias')`` at the input, ``ZPlus()`` above -> ``[w2, z+]``, 1e-6
* ``zennit_zbox``: ``ZBox(0, 3)`` at the input, ``ZPlus()`` above -> ``[zB(0, 3), z+]``, 1e-6
* ``captum_zplus``: ``Alpha1_Beta0_Rule(set_bias_to_zero=True)`` -> ``z+``, 1e-9
* ``captum_epsilon``: ``EpsilonRule(1e-9)`` -> ``x``, 1e-9
* ``captum_gamma``: ``GammaRule(0.25, set_bias_to_zero=True)`` -> ``gamma(0.25)``, 1e-9

(zennit's ``Epsilon`` needs a non-zero epsilon: 1e-6 is its own default
stabiliser, so "Epsilon(0)" is LRP-0 up to the stabiliser the kit allows for.)
"""

from __future__ import annotations

import importlib
import warnings
from typing import Sequence

import torch
from torch import nn

from dtd import rules as R

from .variants import counterpart_of

__all__ = [
    "ZENNIT_STABILIZER",
    "CAPTUM_STABILIZER",
    "ZBOX_HIGH",
    "counterpart",
    "zennit_rule",
    "zennit_attribute",
    "captum_attribute",
    "zennit_implementations",
    "captum_implementations",
    "shipped_implementations",
]

#: zennit's default stabiliser: denominators become ``d + 1e-6 sign(d)``
ZENNIT_STABILIZER = 1e-6
#: captum's LRP stability factor: ``d + 1e-9 sign(d)``
CAPTUM_STABILIZER = 1e-9
#: the upper bound of the zennit ``ZBox`` adapter's box ``[0, ZBOX_HIGH]`` (the kit clips inputs into it)
ZBOX_HIGH = 3.0


def _require(package: str, extra: str = "test"):
    """Import ``package`` or raise an ``ImportError`` that says what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"this adapter needs the package {package!r}, which is not importable ({error}); "
            f"install it with `pip install {package}` (or `pip install dtd-properties[{extra}]`)"
        ) from None


def counterpart(rule: R.Rule, library: str) -> tuple[str, dict]:
    """``(class name, keyword arguments)`` of ``library``'s rule (``"zennit"`` or ``"captum"``) that equals
    ``rule`` on bias-negative networks, as declared in :mod:`properties.variants`."""
    found = counterpart_of(rule, library)
    if found is None:
        raise ValueError(f"no {library} counterpart for {rule!r} (declare one with properties.variants.declare)")
    return found


def zennit_rule(rule: R.Rule):
    """The zennit rule DTD's ``rule`` equals on bias-negative networks (``ValueError`` where none is registered)."""
    name, kwargs = counterpart(rule, "zennit")
    return getattr(_require("zennit.rules"), name)(**kwargs)


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def zennit_attribute(model: nn.Module, x: torch.Tensor, output: int, rules: Sequence[R.Rule]) -> torch.Tensor:
    """zennit's input relevance ``(batch, D)``: ``zennit_rule(rules[k])`` on the k-th Linear of ``model``.

    ``rules`` has one entry per Linear; the relevance entering the top is the
    explained output's value.  ``x`` is not touched; zennit removes its hooks.
    """
    _require("zennit")
    from zennit.attribution import Gradient
    from zennit.core import Composite

    linears = _linears(model)
    if len(rules) != len(linears):
        raise ValueError(f"got {len(rules)} rules for a model with {len(linears)} Linear layers")
    mapped = {id(m): zennit_rule(rule) for m, rule in zip(linears, rules)}
    composite = Composite(module_map=lambda ctx, name, module: mapped.get(id(module)))
    onehot = torch.zeros(linears[-1].out_features, dtype=x.dtype, device=x.device)
    onehot[output] = 1
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.detach().clone(), lambda out: onehot * out)
    return relevance.detach()


def captum_attribute(model: nn.Module, x: torch.Tensor, output: int, make_rule) -> torch.Tensor:
    """captum's ``LRP`` with ``make_rule()`` set as ``rule`` of every Linear, ``(batch, D)``.

    Setting ``module.rule`` is captum's documented way to choose rules; ``LRP``
    removes the attribute and its hooks again after the call.
    """
    _require("captum")
    from captum.attr import LRP

    for module in _linears(model):
        module.rule = make_rule()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        return LRP(model).attribute(x.detach().clone().requires_grad_(True), target=output).detach()


def _implementation(name, attribute, rule, stabilizer):
    from .conformance import Implementation

    return Implementation(name, attribute, rule, seed="value", stabilizer=stabilizer)


def _per_layer(model: nn.Module, first: R.Rule, rest: R.Rule) -> list[R.Rule]:
    return [first] + [rest] * (len(_linears(model)) - 1)


def zennit_implementations() -> list:
    """zennit's ZPlus, Epsilon (bias zeroed), Gamma(0.25), WSquare (input layer) and ZBox (input layer) adapters."""
    zb = R.ZB(0.0, ZBOX_HIGH)

    def uniform(rule):
        return lambda model, x, output: zennit_attribute(model, x, output, _per_layer(model, rule, rule))

    def first(rule):
        return lambda model, x, output: zennit_attribute(model, x, output, _per_layer(model, rule, R.ZPlus()))

    return [
        _implementation("zennit_zplus", uniform(R.ZPlus()), R.ZPlus(), ZENNIT_STABILIZER),
        _implementation("zennit_epsilon0", uniform(R.LRP0()), R.LRP0(), ZENNIT_STABILIZER),
        _implementation("zennit_gamma", uniform(R.Gamma(0.25)), R.Gamma(0.25), ZENNIT_STABILIZER),
        _implementation("zennit_wsquare", first(R.WSquare()), [R.WSquare(), R.ZPlus()], ZENNIT_STABILIZER),
        _implementation("zennit_zbox", first(zb), [zb, R.ZPlus()], ZENNIT_STABILIZER),
    ]


def captum_implementations() -> list:
    """captum's ``LRP`` with Alpha1_Beta0 (bias zeroed), Epsilon and Gamma(0.25) (bias zeroed) on every Linear."""

    def rule(name, **kwargs):
        def make():
            module = _require("captum.attr._utils.lrp_rules")
            return getattr(module, name)(**kwargs)

        return make

    def attribute(make_rule):
        return lambda model, x, output: captum_attribute(model, x, output, make_rule)

    return [
        _implementation("captum_zplus", attribute(rule("Alpha1_Beta0_Rule", set_bias_to_zero=True)), R.ZPlus(), CAPTUM_STABILIZER),
        _implementation("captum_epsilon", attribute(rule("EpsilonRule", epsilon=CAPTUM_STABILIZER)), R.LRP0(), CAPTUM_STABILIZER),
        _implementation("captum_gamma", attribute(rule("GammaRule", gamma=0.25, set_bias_to_zero=True)), R.Gamma(0.25), CAPTUM_STABILIZER),
    ]


def shipped_implementations() -> list:
    """Every shipped adapter (a ``dtd-properties conform`` factory: ``properties.adapters:shipped_implementations``)."""
    return zennit_implementations() + captum_implementations()
