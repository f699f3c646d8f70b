"""Conformance adapters for the field's LRP libraries: zennit and captum.

Each adapter is a :class:`properties.conformance.Implementation` whose
``attribute(model, x, output)`` runs the library on the ``nn.Sequential``
the kit hands it and claims the DTD rule the library's rule equals on
bias-negative networks (see :mod:`properties.conformance.agreement`).  The libraries are
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

CNNs and residual nets (:mod:`properties.generate.architectures`): every adapter above
has ``architectures=ARCHITECTURES`` (MLPs, CNNs, residual nets: the kit measures
its CNN and ResNet rows too) and runs on any model of Conv2d/BatchNorm2d/ReLU/pooling/Flatten/Linear modules and
on :class:`~properties.generate.architectures.ResidualNet` (:func:`zennit_model_attribute`,
:func:`captum_model_attribute`), the library set up as its documentation says:

* zennit: the claimed rule on every ``Conv2d`` and ``Linear`` (the first one
  gets the input rule), ``Norm()`` on average pooling (zennit's composites'
  choice), max pooling's own gradient (relevance to the argmax); batch norm
  merged into the convolution before it by ``SequentialMergeBatchNorm``; each
  :class:`~properties.generate.architectures.BasicBlock`'s bare ``+`` replaced by
  zennit's ``Sum`` module with ``Norm()`` (:class:`BasicBlockCanonizer`, the
  :class:`zennit.torchvision.ResNetCanonizer` way for torchvision's blocks).
  Two limitations are zennit's and show up in the kit: its merge leaves the
  batch norm computing ``x / sqrt(1 + eps)`` (a relative change of ``eps / 2``
  per batch norm; the populations' ``bn_eps`` decides whether it matters), and
  ``Sum`` + ``Norm`` splits a block's relevance by the branches' *outputs*
  before z+ runs inside each branch, while DTD's z+ sees the sum as one layer
  with the block row ``[W_h, W_x]`` (the two agree only when a branch's output
  is its own z+ denominator, e.g. non-negative weights and no shift);
* captum: the rule on every ``Conv2d`` and ``Linear``, captum's defaults on
  the other layers (``EpsilonRule`` on batch norm -- captum merges nothing --,
  pooling and ``AdaptiveAvgPool2d``), ``EpsilonRule(1e-9)`` on ``Flatten``
  (which captum has no default for; its ``IdentityRule`` fails on a change of shape).  A bare ``+`` is invisible to
  captum's hooks: both branches receive the full relevance (captum asks for its ``Addition_Module`` instead), so
  captum's results on residual nets double the shortcut's share.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dtd import rules as R

from ..generate.variants import counterpart_of
from . import Attribute, Implementation, RulesLike

if TYPE_CHECKING:
    from ..generate.architectures import BasicBlock

__all__ = [
    "ZENNIT_STABILIZER",
    "CAPTUM_STABILIZER",
    "ZBOX_HIGH",
    "counterpart",
    "zennit_rule",
    "zennit_attribute",
    "captum_attribute",
    "zennit_implementations",
    "zennit_model_attribute",
    "captum_model_attribute",
    "BasicBlockCanonizer",
    "captum_implementations",
    "shipped_implementations",
    "ARCHITECTURES",
]

#: zennit's default stabiliser: denominators become ``d + 1e-6 sign(d)``
ZENNIT_STABILIZER = 1e-6
#: captum's LRP stability factor: ``d + 1e-9 sign(d)``
CAPTUM_STABILIZER = 1e-9
#: the attribute of a module that captum's ``LRP`` reads the module's rule from
CAPTUM_RULE_ATTRIBUTE = "rule"
#: the upper bound of the zennit ``ZBox`` adapter's box ``[0, ZBOX_HIGH]`` (the kit clips inputs into it)
ZBOX_HIGH = 3.0


def _require(package: str, extra: str = "test") -> ModuleType:
    """Import ``package`` or raise an ``ImportError`` that says what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"this adapter needs the package {package!r}, which is not importable ({error}); "
            f"install it with `pip install {package}` (or `pip install dtd-properties[{extra}]`)"
        ) from None


def counterpart(rule: R.Rule, library: str) -> tuple[str, dict[str, Any]]:
    """``(class name, keyword arguments)`` of ``library``'s rule (``"zennit"`` or ``"captum"``) that equals
    ``rule`` on bias-negative networks, as declared in :mod:`properties.generate.variants`."""
    found = counterpart_of(rule, library)
    if found is None:
        raise ValueError(f"no {library} counterpart for {rule!r} (declare one with "
                         "properties.generate.variants.declare)")
    return found


def zennit_rule(rule: R.Rule) -> object:
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
    mapped = {id(m): zennit_rule(rule) for m, rule in zip(linears, rules, strict=True)}
    composite = Composite(module_map=lambda ctx, name, module: mapped.get(id(module)))
    onehot = torch.zeros(linears[-1].out_features, dtype=x.dtype, device=x.device)
    onehot[output] = 1
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.detach().clone(), lambda out: onehot * out)
    return relevance.detach()


def captum_attribute(model: nn.Module, x: torch.Tensor, output: int, make_rule: Callable[[], object]) -> torch.Tensor:
    """captum's ``LRP`` with ``make_rule()`` set as ``rule`` of every Linear, ``(batch, D)``.

    Setting ``module.rule`` is captum's documented way to choose rules; ``LRP``
    removes the attribute and its hooks again after the call.
    """
    _require("captum")
    from captum.attr import LRP

    for module in _linears(model):
        setattr(module, CAPTUM_RULE_ATTRIBUTE, make_rule())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        return LRP(model).attribute(x.detach().clone().requires_grad_(True), target=output).detach()


#: the architectures every shipped adapter is measured on (:data:`properties.conformance.ARCHITECTURES`)
ARCHITECTURES = ("mlp", "cnn", "resnet")


def _implementation(name: str, attribute: Attribute, rule: RulesLike, stabilizer: float) -> Implementation:
    return Implementation(name, attribute, rule, seed="value", stabilizer=stabilizer, architectures=ARCHITECTURES)


def _per_layer(model: nn.Module, first: R.Rule, rest: R.Rule) -> list[R.Rule]:
    return [first] + [rest] * (len(_linears(model)) - 1)


def _affine_modules(model: nn.Module) -> list[nn.Module]:
    """The model's ``Conv2d`` and ``Linear`` modules in the order ``named_modules`` visits them (forward order here)."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def BasicBlockCanonizer() -> object:
    """A zennit canonizer that gives every :class:`properties.generate.architectures.BasicBlock` a ``Sum`` module.

    While it is applied, the block's forward stacks its two branches and sums
    them with ``Sum`` (so a rule can be attached to the sum); removing it
    restores the bare ``+``.  What zennit's ``ResNetBasicBlockCanonizer`` does
    for torchvision's ``BasicBlock``.
    """
    _require("zennit")
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    from ..generate.architectures import BasicBlock

    def forward(self: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        summed = self.get_submodule("canonizer_sum")(torch.stack([identity, out], dim=-1))  # the canonizer's Sum
        return self.relu2(summed)

    def attributes(name: str, module: nn.Module) -> dict[str, object] | None:
        if isinstance(module, BasicBlock):
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        return None

    return AttributeCanonizer(attributes)


def zennit_model_attribute(model: nn.Module, x: torch.Tensor, output: int, first: R.Rule, rest: R.Rule, *,
                           merge_batch_norm: bool = True, sum_module: bool = True) -> torch.Tensor:
    """zennit's input relevance, shaped like ``x``, on an MLP, CNN or residual net.

    ``zennit_rule(first)`` on the first ``Conv2d``/``Linear``, ``zennit_rule(rest)``
    on the others, ``Norm()`` on average pooling and on residual sums; with
    ``merge_batch_norm`` zennit's ``SequentialMergeBatchNorm``, with
    ``sum_module`` :func:`BasicBlockCanonizer` (switching either off is a
    mistake users make; the kit's tests use them as such).  The relevance
    entering the top is the explained output's value.  zennit undoes its
    canonizers and hooks after the call.
    """
    _require("zennit")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.core import Composite
    from zennit.layer import Sum
    from zennit.rules import Norm

    affine = _affine_modules(model)
    if not affine:
        raise ValueError("the model has no Conv2d or Linear module to attach a rule to")
    mapped = {id(m): zennit_rule(first if i == 0 else rest) for i, m in enumerate(affine)}

    def module_map(ctx: object, name: str, module: nn.Module) -> object:
        if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, Sum)):
            return Norm()
        return mapped.get(id(module))

    from ..generate.architectures import BasicBlock

    kinds = {type(m) for m in model.modules()}
    canonizers = ([SequentialMergeBatchNorm()] if merge_batch_norm
                  and kinds & {nn.BatchNorm1d, nn.BatchNorm2d} else []) + (
        [BasicBlockCanonizer()] if sum_module and BasicBlock in kinds else [])
    composite = Composite(module_map=module_map, canonizers=canonizers)
    if isinstance(affine[-1], nn.Linear):
        n_out = affine[-1].out_features
    else:
        with torch.no_grad():
            n_out = model(x[:1]).shape[1]
    onehot = torch.zeros(n_out, dtype=x.dtype, device=x.device)
    onehot[output] = 1
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.detach().clone(), lambda out: onehot * out)
    return relevance.detach()


def captum_model_attribute(model: nn.Module, x: torch.Tensor, output: int,
                           make_rule: Callable[[], object]) -> torch.Tensor:
    """captum's ``LRP`` with ``make_rule()`` on every ``Conv2d``/``Linear`` and ``EpsilonRule`` on ``Flatten``.

    Shaped like ``x``.  The other layers keep captum's defaults; ``LRP``
    removes the rules and hooks after the call.
    """
    _require("captum")
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    for module in _affine_modules(model):
        setattr(module, CAPTUM_RULE_ATTRIBUTE, make_rule())
    for module in model.modules():
        if isinstance(module, nn.Flatten):
            # x R / (x + eps sign x): R up to the stabiliser
            setattr(module, CAPTUM_RULE_ATTRIBUTE, EpsilonRule(CAPTUM_STABILIZER))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
        return LRP(model).attribute(x.detach().clone().requires_grad_(True), target=output).detach()


def zennit_implementations() -> list[Implementation]:
    """zennit's ZPlus, Epsilon (bias zeroed), Gamma(0.25), WSquare (input layer) and ZBox (input layer) adapters.

    Each runs on MLPs, CNNs and residual nets (:func:`zennit_model_attribute`).
    """
    zb = R.ZB(0.0, ZBOX_HIGH)

    def uniform(rule: R.Rule) -> Attribute:
        return lambda model, x, output: zennit_model_attribute(model, x, output, rule, rule)

    def first(rule: R.Rule) -> Attribute:
        return lambda model, x, output: zennit_model_attribute(model, x, output, rule, R.ZPlus())

    return [
        _implementation("zennit_zplus", uniform(R.ZPlus()), R.ZPlus(), ZENNIT_STABILIZER),
        _implementation("zennit_epsilon0", uniform(R.LRP0()), R.LRP0(), ZENNIT_STABILIZER),
        _implementation("zennit_gamma", uniform(R.Gamma(0.25)), R.Gamma(0.25), ZENNIT_STABILIZER),
        _implementation("zennit_wsquare", first(R.WSquare()), [R.WSquare(), R.ZPlus()], ZENNIT_STABILIZER),
        _implementation("zennit_zbox", first(zb), [zb, R.ZPlus()], ZENNIT_STABILIZER),
    ]


def captum_implementations() -> list[Implementation]:
    """captum's ``LRP`` with Alpha1_Beta0 (bias zeroed), Epsilon and Gamma(0.25) (bias zeroed) on every Linear
    and Conv2d (:func:`captum_model_attribute`: MLPs, CNNs, residual nets)."""

    def rule(name: str, **kwargs: object) -> Callable[[], object]:
        def make() -> object:
            module = _require("captum.attr._utils.lrp_rules")
            return getattr(module, name)(**kwargs)

        return make

    def attribute(make_rule: Callable[[], object]) -> Attribute:
        return lambda model, x, output: captum_model_attribute(model, x, output, make_rule)

    return [
        _implementation("captum_zplus", attribute(rule("Alpha1_Beta0_Rule", set_bias_to_zero=True)), R.ZPlus(),
                        CAPTUM_STABILIZER),
        _implementation("captum_epsilon", attribute(rule("EpsilonRule", epsilon=CAPTUM_STABILIZER)), R.LRP0(),
                        CAPTUM_STABILIZER),
        _implementation("captum_gamma", attribute(rule("GammaRule", gamma=0.25, set_bias_to_zero=True)), R.Gamma(0.25),
                        CAPTUM_STABILIZER),
    ]


def shipped_implementations() -> list[Implementation]:
    """Every shipped adapter (a ``dtd-properties conform`` factory:
    ``properties.conformance.adapters:shipped_implementations``)."""
    return zennit_implementations() + captum_implementations()
