"""The suite's knowledge of each rule: the settings its sweeps run, and the other libraries' rules that equal it.

:mod:`dtd.rules` knows the rules (their names, directions, roots); what the
property suite does with them lives here, as zennit keeps its rules
library-only and its replicas in its tests:

* :class:`Variant` -- one parameter setting (or per-layer recipe) a sweep runs,
  under a label used in rate names;
* the zennit / captum counterpart of a rule (the class name and keyword
  arguments of the library's LRP rule that equals it on networks whose biases
  are <= 0 and inputs >= 0), as data: the libraries are imported by
  :mod:`properties.conformance.adapters`.

Declare a new rule's with :func:`declare` (one call beside the built-in ones
below, or from a plugin); the generated sweep, the region sweep, the must-hold
properties, the agreement check and the reference tests read them with
:func:`variants`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import torch

from dtd import rules as R

__all__ = ["SWEEPS", "Variant", "SuiteEntry", "declare", "undeclare", "declared", "suite_entry", "variants",
           "counterpart_of"]

#: the suite's sweeps a variant can take part in
SWEEPS = ("generated", "region", "agreement", "must_hold", "reference")

#: how a variant builds its rule(s) for a batch of inputs ``x`` ``(batch, D_0)`` and a network of ``n_layers`` layers
#: (``x`` None: a variant that does not read the data)
Maker = Callable[[torch.Tensor | None, int], R.Rule | list[R.Rule]]
#: ``counterpart(rule) -> (class name, kwargs)``: a library's rule equal to ``rule``, an instance of the declared class
Counterpart = Callable[[Any], tuple[str, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One parameter setting of a rule, as the suite's sweeps run it.

    Attributes
    ----------
    label
        Its name in rate names and reports (no dots: ``"gamma0_1"`` for gamma = 0.1).
    make
        ``make(x, n_layers)``: the rule, or one rule per layer (a recipe such as zB at the input and z+ above).
    sweeps
        Which of :data:`SWEEPS` run it.
    input_layer_only
        The recipe differs from z+ only at the input layer, so only layer 0 is reported.
    """

    label: str
    make: Maker
    sweeps: AbstractSet[str]
    input_layer_only: bool = False

    def __post_init__(self) -> None:
        if "." in self.label or not self.label:
            raise ValueError(f"a variant label must be non-empty and hold no dots, got {self.label!r}")
        unknown = set(self.sweeps) - set(SWEEPS)
        if unknown:
            raise ValueError(f"unknown sweep(s) {sorted(unknown)}; known: {SWEEPS}")
        object.__setattr__(self, "sweeps", frozenset(self.sweeps))

    def rules_for(self, x: torch.Tensor, n_layers: int) -> R.Rule | list[R.Rule]:
        return self.make(x, n_layers)


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    """A rule class's variants and its zennit / captum counterparts
    (``counterpart(rule) -> (class name, kwargs)`` or None)."""

    cls: type
    variants: tuple[Variant, ...] = ()
    zennit: Counterpart | None = None
    captum: Counterpart | None = None


_ENTRIES: dict[type, SuiteEntry] = {}


def declare(cls: type, *, variants: Sequence[Variant] = (), zennit: Counterpart | None = None,
            captum: Counterpart | None = None) -> None:
    """Declare what the suite runs of rule class ``cls`` (registered in
    :mod:`dtd.rules`) and its library counterparts."""
    if not (isinstance(cls, type) and issubclass(cls, R.Rule)):
        raise TypeError(f"declare() takes a dtd.rules.Rule subclass, got {cls!r}")
    R.entry_for(cls)  # a KeyError naming it when the rule was never registered
    labels = {v.label for entry in _ENTRIES.values() if entry.cls is not cls for v in entry.variants}
    clash = labels & {v.label for v in variants}
    if clash:
        raise ValueError(f"variant label(s) {sorted(clash)} are already declared")
    _ENTRIES[cls] = SuiteEntry(cls, tuple(variants), zennit, captum)


def undeclare(cls: type) -> None:
    """Forget a rule class's declarations (for tests that declare a temporary rule)."""
    _ENTRIES.pop(cls, None)


def declared() -> list[SuiteEntry]:
    """Every declared rule, in the order of :func:`dtd.rules.registered` (then any other declared class)."""
    order = [entry.cls for entry in R.registered()]
    known = [_ENTRIES[c] for c in order if c in _ENTRIES]
    return known + [e for c, e in _ENTRIES.items() if c not in order]


def suite_entry(rule: R.Rule | type) -> SuiteEntry:
    """The declarations of a rule object or class (an empty entry when none were made)."""
    cls = rule if isinstance(rule, type) else type(rule)
    return _ENTRIES.get(cls, SuiteEntry(cls))


def variants(sweep: str) -> list[Variant]:
    """The variants that ``sweep`` (one of :data:`SWEEPS`) runs, in declaration order."""
    if sweep not in SWEEPS:
        raise ValueError(f"unknown sweep {sweep!r}; known: {SWEEPS}")
    return [v for entry in declared() for v in entry.variants if sweep in v.sweeps]


def counterpart_of(rule: R.Rule, library: str) -> tuple[str, dict[str, Any]] | None:
    """``(class name, kwargs)`` of ``library``'s (``"zennit"`` / ``"captum"``) rule equal to ``rule``, or None."""
    declared_ = getattr(suite_entry(rule), library)
    return None if declared_ is None else declared_(rule)


def _fixed(rule_factory: Callable[[], R.Rule]) -> Maker:
    """A variant that uses the same rule at every layer, whatever the data."""
    return lambda x, n_layers: rule_factory()


def _at_input(rule_factory: Callable[[torch.Tensor], R.Rule]) -> Maker:
    """DTD's recipe for an input layer that differs: ``rule_factory(x)`` at layer 0, z+ above."""

    def make(x: torch.Tensor | None, n_layers: int) -> list[R.Rule]:
        if x is None:
            raise TypeError("this variant builds its input layer's rule from the data: pass x")
        return [rule_factory(x)] + [R.ZPlus()] * (n_layers - 1)

    return make


# --------------------------------------------------------------------------- the built-in rules
declare(
    R.ZPlus,
    variants=[Variant("z+", _fixed(lambda: R.ZPlus()), frozenset(SWEEPS))],
    zennit=lambda rule: ("ZPlus", {}),
    captum=lambda rule: ("Alpha1_Beta0_Rule", {"set_bias_to_zero": True}),
)
declare(
    R.WSquare,
    variants=[
        Variant("w2", _fixed(lambda: R.WSquare()), {"generated", "region", "must_hold", "reference"}),
        # above the input layer w2 hands relevance to inactive neurons, which an LRP backward pass stops at their
        # ReLU: the libraries' WSquare equals DTD's only at the input layer
        Variant("w2_first", _at_input(lambda x: R.WSquare()), {"agreement"}, input_layer_only=True),
    ],
    zennit=lambda rule: ("WSquare", {"zero_params": "bias"}),
)
declare(
    R.Gamma,
    variants=[
        Variant("gamma0_1", _fixed(lambda: R.Gamma(0.1)), {"generated", "must_hold"}),
        Variant("gamma1", _fixed(lambda: R.Gamma(1.0)), {"generated", "region", "must_hold"}),
        Variant("gamma10", _fixed(lambda: R.Gamma(10.0)), {"generated", "must_hold"}),
        Variant("gamma0_25", _fixed(lambda: R.Gamma(0.25)), {"agreement"}),
        Variant("gamma4", _fixed(lambda: R.Gamma(4.0)), {"agreement"}),
        Variant("gamma0", _fixed(lambda: R.Gamma(0.0)), {"reference"}),
        Variant("gamma0_5", _fixed(lambda: R.Gamma(0.5)), {"reference"}),
        Variant("gamma100", _fixed(lambda: R.Gamma(100.0)), {"reference"}),
    ],
    zennit=lambda rule: ("Gamma", {"gamma": rule.gamma, "zero_params": "bias"}),
)
declare(
    R.LRP0,
    variants=[Variant("x", _fixed(lambda: R.LRP0()), frozenset(SWEEPS))],
    zennit=lambda rule: ("Epsilon", {"zero_params": "bias"}),
)
declare(
    R.ZB,
    variants=[
        # DTD's recipe for bounded inputs: zB with the data's box at the input, z+ above
        Variant("zB", _at_input(lambda x: R.ZB.for_data(x)), {"generated", "agreement", "must_hold"},
                input_layer_only=True),
        Variant("zB_box", _fixed(lambda: R.ZB(0.0, 1000.0)), {"reference"}),
    ],
    zennit=lambda rule: ("ZBox", {"low": rule.low, "high": rule.high}),
)
declare(R.Pinv, variants=[Variant("pinv", _fixed(lambda: R.Pinv()), {"must_hold", "reference"})])
