"""DTD rules: one small object per rule.

A neuron rule says along which direction ``v_j`` the root of neuron ``j`` is
searched; the shared step (``t_j = R_j / (w_j . v_j)``,
``root_j = a - t_j v_j``) lives once, in :meth:`Rule.root_set`.  A layer
rule (:class:`Pinv`) finds one root for the whole layer instead.

Strings are accepted only at the edge: :meth:`Rule.ensure` turns ``"z+"``,
``"w2"``, ``"gamma"``, ``"x"``, ``"0"``, ``"zB"`` and ``"pinv"`` into rule
objects.

Notes
-----
Montavon et al., *Explaining nonlinear classification decisions with deep
Taylor decomposition*, Pattern Recognition 65 (2017), appendix;
Montavon et al., *Layer-Wise Relevance Propagation: An Overview* (2019),
section 10.2.3 for the gamma rule.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from .rootsets import AffineRoots, RootSet, SharedRoots, affine_direction, root_equation_residual
from .tolerances import equation_rtol
from .validation import check_number, overflow_error

__all__ = [
    "Rule", "Terms", "WEIGHTED", "ZPlus", "WSquare", "Gamma", "LRP0", "ZB", "Pinv", "RuleLike",
    "RuleEntry", "register", "registered", "entry_for",
]


def _nonnegative(a: torch.Tensor, rule: Rule) -> None:
    if float(a.min()) < 0:
        raise ValueError(
            f"rule {rule!r} needs non-negative activations, but the input holds {int((a < 0).sum())} negative "
            f"value(s) (min {float(a.min()):.3g}); for inputs that can be negative use, at the input layer, "
            "ZB(low, high) with your data's box (e.g. rule=[dtd.rules.ZB(float(x.min()), float(x.max())), "
            "'z+', ...]) or 'w2' (rule=['w2', 'z+', ...]); LRP0 ('x') also accepts them"
        )


class Rule(abc.ABC):
    """A DTD rule.  Subclasses implement :meth:`direction_terms`."""

    #: short name used in reports and accepted by :meth:`ensure`
    name: str = ""

    def check_domain(self, a: torch.Tensor) -> None:  # noqa: B027 -- a hook: by default every activation
        """Raise ``ValueError`` if activations ``a`` ``(batch, D)`` violate the rule's domain."""

    @abc.abstractmethod
    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(P, Q)``, each ``(J, D)`` or None for zero, with ``v_j = a * P_j + Q_j``.

        Every DTD neuron rule's direction is affine in the activations with
        per-neuron constants; this lets the shared step work with matrix
        products instead of ``(batch, J, D)`` tensors.
        """

    def terms(self) -> Terms:
        """The direction ``v_j = a * P_j + Q_j`` in terms of the weight's element-wise indicators (see :class:`Terms`).

        The form every operator layer (:mod:`dtd.operators`) computes a rule
        with; :meth:`direction_terms` is the same direction as dense matrices.
        """
        raise TypeError(f"{type(self).__name__} has no per-neuron direction in operator form")

    def direction(self, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Search direction ``v`` ``(batch, J, D)`` for activations ``a``
        ``(batch, D)`` and weight ``(J, D)``."""
        return affine_direction(a, *self.direction_terms(weight))

    def root_set(
        self, a: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, eps: float, *, layer: int | None = None
    ) -> RootSet:
        """The roots of every neuron: the shared step of all neuron rules.

        ``root_j = a - t_j v_j`` with ``t_j = R_j / (w_j . v_j)``; a root
        exists iff ``|w_j . v_j| > eps`` or ``R_j = 0`` (then ``t_j = 0``,
        the trivial root ``a``).  Invalid roots get ``t_j = 0`` and must not
        be used.  A denominator that overflows the dtype is a ``ValueError``
        naming ``layer`` (never a silent zero or NaN relevance).
        """
        p, q = self.direction_terms(weight)
        denominator = torch.zeros_like(relevance)
        if p is not None:
            denominator = a @ (weight * p).T
        if q is not None:
            denominator = denominator + (weight * q).sum(1)
        if not bool(torch.isfinite(denominator).all()):
            raise overflow_error(layer, a.dtype, f"the {self!r} denominators w_j . v_j")
        carries = relevance != 0
        valid = (denominator.abs() > eps) | ~carries
        use = valid & carries
        t = torch.where(use, relevance / torch.where(use, denominator, torch.ones_like(denominator)),
                        torch.zeros_like(relevance))
        return AffineRoots(a, t, valid, p, q)

    @staticmethod
    def ensure(value: RuleLike) -> Rule:
        """Turn a rule name into a rule object; rule objects pass through.

        ``"z+"`` -> :class:`ZPlus`, ``"w2"`` -> :class:`WSquare`,
        ``"gamma"`` -> ``Gamma(0.25)``, ``"x"``/``"0"`` -> :class:`LRP0`,
        ``"zB"`` -> ``ZB(0.0, 1.0)``, ``"pinv"`` -> :class:`Pinv`.
        """
        if isinstance(value, Rule):
            return value
        if isinstance(value, str):
            names = {name: entry for entry in _REGISTRY.values() for name in (entry.cls.name, *entry.aliases)}
            try:
                entry = names[value]
            except KeyError:
                raise ValueError(f"unknown rule {value!r}; known rules: {sorted(names)}") from None
            return (entry.default or entry.cls)()
        raise TypeError(f"a rule must be a str or a dtd.rules.Rule, got {type(value).__name__} {value!r}")

    def params(self) -> dict[str, Any]:
        """The rule's parameters by name, as exact hashable values (floats, tuples of floats).

        Equality, hashing and ``repr`` are defined by them: two rules are
        equal iff they are of the same class with equal parameter values.
        """
        return {}

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={_show(value)}" for name, value in self.params().items())
        return f"{type(self).__name__}({shown})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.params().items())))


def _show(value: float | tuple[float, ...]) -> str:
    """A parameter as text: the short ``%g`` form when it is exact, else the float's repr."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


RuleLike = str | Rule


#: the weight each indicator is multiplied into: ``W * 1 = W``, ``W * 1[W >= 0] = W+``, ``W * 1[W < 0] = W-``,
#: ``W * W = W^2``
WEIGHTED = {"ind": "W", "ind_ge": "pos", "ind_lt": "neg", "W": "square"}


@dataclasses.dataclass(frozen=True)
class Terms:
    """A neuron rule's direction as indicators of the weight: ``v_j = a * P_j + Q_j`` with

    ``P = sum(coef * I_kind for kind, coef in p)`` and ``Q = sum(I_kind * value for kind, value in q)``,
    where ``I_ind = 1`` on the operator's structure, ``I_ind_ge = 1[W >= 0]``,
    ``I_ind_lt = 1[W < 0]`` and ``I_W = W`` itself; ``value`` is a number or a
    per-input-feature tensor.  Then ``W * P`` and ``W * Q`` are sums of the
    modified operators ``W``, ``W+``, ``W-``, ``W^2`` (:data:`WEIGHTED`), so
    denominators and relevances need no ``(J, D)`` matrix.
    """

    p: tuple[tuple[str, float], ...] = ()
    q: tuple[tuple[str, float | torch.Tensor], ...] = ()


# --------------------------------------------------------------------------- the registry
@dataclasses.dataclass
class RuleEntry:
    """What the library knows about one rule class, declared where the class is.

    Attributes
    ----------
    cls
        The :class:`Rule` subclass; ``cls.name`` is the name :meth:`Rule.ensure` accepts.
    aliases
        Further names :meth:`Rule.ensure` accepts.
    default
        The rule :meth:`Rule.ensure` builds from a name.

    What the property suite sweeps and which other libraries' rules equal a
    rule is the suite's knowledge, declared in :mod:`properties.variants`.
    """

    cls: type[Rule]
    aliases: tuple[str, ...] = ()
    default: Callable[[], Rule] | None = None


_REGISTRY: dict[type, RuleEntry] = {}

_R = TypeVar("_R", bound=type[Rule])


def register(*, aliases: Sequence[str] = (), default: Callable[[], Rule] | None = None) -> Callable[[_R], _R]:
    """Class decorator: declare a rule's names for :meth:`Rule.ensure` (see :class:`RuleEntry`)."""

    def decorate(cls: _R) -> _R:
        if not (isinstance(cls, type) and issubclass(cls, Rule)) or not cls.name:
            raise TypeError(f"register() decorates Rule subclasses with a name, got {cls!r}")
        taken = {name for entry in _REGISTRY.values() if entry.cls is not cls
                 for name in (entry.cls.name, *entry.aliases)}
        clash = taken & {cls.name, *aliases}
        if clash:
            raise ValueError(f"rule name(s) {sorted(clash)} of {cls.__name__} are already registered")
        _REGISTRY[cls] = RuleEntry(cls, tuple(aliases), default or cls)
        return cls

    return decorate


def unregister(cls: type) -> None:
    """Remove a rule class from the registry (for tests that register a temporary rule)."""
    _REGISTRY.pop(cls, None)


def registered() -> list[RuleEntry]:
    """Every registered rule, in registration order."""
    return list(_REGISTRY.values())


def entry_for(rule: Rule | type) -> RuleEntry:
    """The registry entry of a rule object or class (``KeyError`` naming it if it was never registered)."""
    cls = rule if isinstance(rule, type) else type(rule)
    try:
        return _REGISTRY[cls]
    except KeyError:
        raise KeyError(f"{cls.__name__} is not a registered rule (decorate it with dtd.rules.register)") from None


def _positive_weights(weight: torch.Tensor) -> torch.Tensor:
    return (weight >= 0).to(weight.dtype)


@register()
class ZPlus(Rule):
    """``z+``: ``v_j = a * 1[w_j >= 0]``; equals LRP-alpha1-beta0 on bias-negative nets."""

    name = "z+"

    def check_domain(self, a: torch.Tensor) -> None:
        _nonnegative(a, self)

    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return _positive_weights(weight), None

    def terms(self) -> Terms:
        return Terms(p=(("ind_ge", 1.0),))


@register()
class WSquare(Rule):
    """``w2``: ``v_j = w_j``; the root may leave the domain ``a >= 0``."""

    name = "w2"

    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, weight

    def terms(self) -> Terms:
        return Terms(q=(("W", 1.0),))


@register(default=lambda: Gamma())
class Gamma(Rule):
    """``gamma``: ``v_j = a * (1 + gamma 1[w_j >= 0])``, so ``w.v = sum a (w + gamma w+)``.

    ``gamma = 0`` is LRP-0; ``gamma -> inf`` approaches z+.
    """

    name = "gamma"

    def __init__(self, gamma: float = 0.25) -> None:
        self.gamma = check_number(gamma, "gamma", minimum=0.0)

    def check_domain(self, a: torch.Tensor) -> None:
        _nonnegative(a, self)

    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return 1 + self.gamma * _positive_weights(weight), None

    def terms(self) -> Terms:
        return Terms(p=(("ind", 1.0), ("ind_ge", self.gamma)))

    def params(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


@register(aliases=("0",))
class LRP0(Rule):
    """``x`` (alias ``0``): ``v_j = a``; equals LRP-0 with the bias ignored.

    The 2022 code's ``"0"`` rule returned the origin, which is no root when
    biases exist; here ``"0"`` is the same as ``"x"``.
    """

    name = "x"

    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return torch.ones_like(weight), None

    def terms(self) -> Terms:
        return Terms(p=(("ind", 1.0),))


@register()
class ZB(Rule):
    """``zB``: ``v_j = a - low * 1[w_j >= 0] - high * 1[w_j < 0]``, for inputs in ``[low, high]``.

    ``low`` and ``high`` are numbers or 1-D tensors with one entry per input
    feature.  Inputs outside the box are a ``ValueError``.
    """

    name = "zB"

    def __init__(self, low: float | torch.Tensor = 0.0, high: float | torch.Tensor = 1.0) -> None:
        self.low = self._bound(low, "low")
        self.high = self._bound(high, "high")
        if self.low.shape != self.high.shape and self.low.numel() > 1 and self.high.numel() > 1:
            raise ValueError(f"low and high have different shapes: {tuple(self.low.shape)} vs {tuple(self.high.shape)}")
        if bool((torch.as_tensor(self.low) > torch.as_tensor(self.high)).any()):
            raise ValueError("low must be <= high everywhere, got "
                             f"low={self._show(self.low)}, high={self._show(self.high)}")

    @staticmethod
    def _bound(value: object, name: str) -> torch.Tensor:
        if isinstance(value, bool):
            raise TypeError(f"{name} must be a number or a tensor, got {value!r}")
        if isinstance(value, (int, float)):
            bound = torch.tensor(float(value), dtype=torch.float64)
        elif isinstance(value, torch.Tensor):
            if value.dim() > 1:
                raise ValueError(f"{name} must be a number or a 1-D tensor (one "
                                 f"bound per feature), got shape {tuple(value.shape)}")
            bound = value.detach().to(dtype=torch.float64, device="cpu").clone()
        else:
            raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
        if not bool(torch.isfinite(bound).all()):
            raise ValueError(f"{name} must be finite, got {bound}")
        return bound

    @staticmethod
    def _show(value: torch.Tensor) -> str:
        return _show(ZB._value(value))

    @staticmethod
    def _value(bound: torch.Tensor) -> float | tuple[float, ...]:
        """A bound as an exact hashable value: a float, or a tuple of floats for per-feature bounds."""
        return float(bound.item()) if bound.dim() == 0 else tuple(bound.tolist())

    @classmethod
    def for_data(cls, x: torch.Tensor, *, low: float = 0.0) -> ZB:
        """A box ``[low, high]`` holding every row of ``x``: ``high`` is the batch's largest
        value rounded up (at least ``low + 1``)."""
        high = float(torch.ceil(x.max()).clamp_min(low + 1.0))
        return cls(low, high)

    def _bounds(self, like: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        for bound, name in ((self.low, "low"), (self.high, "high")):
            if bound.dim() == 1 and bound.shape[0] != width:
                raise ValueError(f"ZB {name} has {bound.shape[0]} entries but the layer has {width} inputs")
        return self.low.to(like), self.high.to(like)

    def check_domain(self, a: torch.Tensor) -> None:
        low, high = self._bounds(a, a.shape[1])
        outside = (a < low) | (a > high)
        if bool(outside.any()):
            raise ValueError(
                f"rule {self!r} needs inputs in [low, high], but {int(outside.sum())} value(s) lie "
                f"outside (their range [{float(a.min()):.3g}, {float(a.max()):.3g}]); pass "
                "dtd.rules.ZB(low, high) with the data's bounds"
            )

    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        low, high = self._bounds(weight, weight.shape[1])
        shift = torch.where(weight >= 0, low, high)  # (J, D)
        return torch.ones_like(weight), -shift

    def terms(self) -> Terms:
        return Terms(p=(("ind", 1.0),), q=(("ind_ge", -self.low), ("ind_lt", -self.high)))

    def params(self) -> dict[str, Any]:
        return {"low": self._value(self.low), "high": self._value(self.high)}


@register()
class Pinv(Rule):
    """``pinv``: one root per layer, ``root = a - pinv(W) R``.

    ``W (a - root) = R`` holds exactly when ``W`` has full row rank (and
    ``R`` lies in its range otherwise).  A neuron's root is valid when its
    root equation ``w_j . (a - root) = R_j`` holds to the equation
    tolerance.  The 2022 code's pinv root missed the ``a -`` term.
    """

    name = "pinv"

    def direction_terms(self, weight: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise TypeError("Pinv is a layer rule: it has no per-neuron direction; use root_set")

    def root_set(
        self, a: torch.Tensor, weight: torch.Tensor, relevance: torch.Tensor, eps: float, *, layer: int | None = None
    ) -> RootSet:
        delta = relevance @ torch.linalg.pinv(weight).T  # (N, D)
        if not bool(torch.isfinite(delta).all()):
            raise overflow_error(layer, a.dtype, "the pinv step pinv(W) R")
        valid = root_equation_residual(delta, weight, relevance) <= equation_rtol(a.dtype)
        return SharedRoots(a, delta, valid)
