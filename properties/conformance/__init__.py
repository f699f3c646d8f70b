"""The conformance kit: DTD's properties as tests for any LRP implementation.

An :class:`Implementation` wraps someone's LRP code as a black box,
``attribute(model, x, output) -> relevance``.  :func:`run` generates ReLU
networks and non-negative inputs (:func:`properties.generate.strategies.sample_cases`),
calls the implementation on a fresh ``nn.Sequential`` copy each time, and
measures how often each property holds; :func:`record` puts the rates, and
for every failing property a shrunk minimal counterexample, into the
property report.  Rows are named ``conformance.{name}.{property}[.{subset}]``
by :func:`conformance_name` (the one place that builds them).

Architectures
-------------
``Implementation(..., architectures=("mlp", "cnn", "resnet"))`` (default
``("mlp",)``) adds CNNs and residual nets (:mod:`properties.generate.architectures`:
convolutions, batch norm with non-trivial statistics and negative scales,
2x2 stride-2 max / average pooling, global average pooling, residual blocks
with a bare ``+``): per population :data:`IMAGE_NETWORKS` networks with
:data:`IMAGE_POINTS` points (fewer than the MLPs': a library call on them
costs far more), drawn once (:func:`image_population`) so every
implementation sees the same.  The implementation gets a ``copy.deepcopy`` of
the *original* ``nn.Module`` and ``x`` in image shape ``(N, C, H, W)``; DTD's
side is ``dtd.train_free(dtd.ReLUNetwork.from_module(model, input_shape), x)``,
with the claimed per-layer rules on the graph's DTD layers in graph order.
Rows put the architecture into the subset (:func:`subset_of`):
``equals_dtd.cnn_bias_negative``, ``conservation.resnet_bias_free``,
``gradient_x_input.cnn_bias_free`` (judged on bias-free models only), and a
property judged on every population is ``{property}.cnn`` /
``{property}.resnet`` (``finite.cnn``, ``batch_independent.resnet``).  The MLP
rows keep their names.  ``equals_claim`` is measured on MLPs and CNNs only:
the claim references (:func:`properties.conformance.claims.reference`) take an
``nn.Sequential`` and do not model a residual sum (:data:`CLAIM_ARCHITECTURES`).
A failing CNN / residual net shrinks to one of the population's smallest
models that fails too, else by :func:`properties.generate.architectures.shrink_case`
(fewer stages / blocks, smaller images, fewer channels), and prints as Python
that rebuilds the model, ``x`` and ``output`` exactly, followed by both
relevances as comments (paste it whole).

Properties (one trial per point unless said otherwise)
------------------------------------------------------
``equals_dtd.{bias_free, bias_negative, bias_positive}``
    The input relevance equals ``dtd.train_free`` with the claimed rule
    within :func:`properties.conformance.agreement.stabilizer_bound` of the
    implementation's stabiliser (plus rounding), at points whose relevant
    denominators exceed twice the stabiliser (on a graph network the same
    bound, routed through the graph).
``conservation.{bias_free, bias_negative}``
    ``|sum_i R_i - f(x)| <= 1e-6 |f(x)|`` plus the stabiliser bound's sum.
``positivity``
    ``R >= 0`` everywhere (only for z+ on every layer; all networks; gamma is
    not positive in DTD itself, see :attr:`Implementation.positive_rules`).
``gradient_x_input``
    ``R`` equals gradient x input on bias-free networks (only for LRP-0).
``batch_independent``
    A point's relevance is the same in the whole batch and in a batch of
    other composition: the points are split into halves, each explained
    again in reversed order, so every point is tried with other batch mates
    (half of them; none for a batch of 2 or 3) at another position.  The rate
    is the share of points whose relevance does not depend on its batch mates
    (an implementation that rescales every row by ``f(x_i) / mean_batch f``
    fails at every point).
``no_side_effects``
    One trial per network: after the call the model's parameters (values,
    ``requires_grad``, ``grad``), buffers, hooks (module and global) and
    ``training`` flags and ``x`` (values, ``requires_grad``) are unchanged, a
    second call returns the same relevance, and no call on that network
    changed torch's global state (below).
``finite``
    No NaN or inf for inputs with zero entries and an all-zero row.
``dtype_device``
    One trial per call: the result has ``x``'s dtype and device.
``equals_claim.{bias_free, bias_negative, bias_positive}``
    Only for an implementation with ``claims``: the relevance equals the
    claimed library rule's slow reference (:func:`properties.conformance.claims.reference`)
    within :data:`properties.conformance.claims.CLAIM_RTOL` of the point's largest relevance
    (plus rounding).

Every call runs in a clean global torch state, restored afterwards
(:mod:`properties.usercode.callstate`, :data:`GLOBAL_STATE`): default dtype float32, default device cpu, grad mode
on, anomaly detection off, deterministic algorithms off, the kit's thread
count (1 under :func:`run`) and torch's global RNG seeded with
:data:`CALL_RNG_SEED`.  A change the implementation makes to any of them is a
``no_side_effects`` failure of that network, named in its counterexample
(``torch default dtype float32 -> float64``), and undone before the next call,
so it never leaks into the next call's or the next implementation's rows.
A call that raises (or exceeds the per-call time limit) fails the property
it was made for, with the exception in the counterexample; the other
properties keep their rows.

The populations: ``bias_free`` (torch init, biases removed), ``bias_negative``
(the ``"dtd"`` init: every bias <= 0), ``bias_positive`` (torch init, some
bias > 0); on CNNs and residual nets the same three for the folded shifts
(:mod:`properties.generate.architectures`).  Every implementation is judged on the same networks.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

import dtd
from dtd import rules as R
from dtd.network import ReLUNetwork, linear_copy
from dtd.threads import one_thread
from dtd.tolerances import equation_rtol
from dtd.validation import check_int, check_number

from ..measure.keys import OUTCOMES, SUBSETS, RateKey, check_name
from ..measure.recorder import Recorder
from ..measure.stats import Rate, Tally
from ..measure.thresholds import CONDITIONING_FACTOR, ROUNDING64
from ..usercode.callstate import CALL_RNG_SEED, GLOBAL_STATE, CallTimeout, clean_global_state, time_limit
from ..usercode.factories import load_factory
from .stabilizer import stabilizer_bound

# strategies imports hypothesis: loaded when networks are drawn, not when a user module imports the kit
if TYPE_CHECKING:
    from dtd.decomposition import Decomposition, GraphDecomposition
    from dtd.graph import GraphNetwork

    from ..generate.architectures import ModelCase
    from ..generate.strategies import Case
    from .claims import Claims, ClaimsLike

    #: a case the kit judges: an MLP's or an image model's
    AnyCase = Case | ModelCase

__all__ = [
    "Implementation",
    "ConformanceResult",
    "conformance_name",
    "load_implementations",
    "run",
    "record",
    "PROPERTIES",
    "POPULATIONS",
    "NETWORKS",
    "POINTS",
    "ARCHITECTURES",
    "IMAGE_NETWORKS",
    "IMAGE_POINTS",
    "IMAGE_SPACE",
    "CLAIM_ARCHITECTURES",
    "image_population",
    "subset_of",
    "CONSERVATION_RTOL",
    "GLOBAL_STATE",
    "CALL_RNG_SEED",
    "DEFAULT_CALL_TIMEOUT",
]

#: networks per population (the same for every implementation; 3 populations)
NETWORKS = 20
#: points per network
POINTS = 56
#: the architectures the kit generates: ReLU MLPs (:mod:`properties.generate.strategies`), CNNs and residual nets
#: (:mod:`properties.generate.architectures`)
ARCHITECTURES = ("mlp", "cnn", "resnet")
#: networks per population of the CNNs and residual nets (each call of a library on them costs far more than on an
#: MLP: fewer networks keep the kit a few seconds per architecture)
IMAGE_NETWORKS = {"cnn": 2, "resnet": 2}
#: points per CNN / residual net
IMAGE_POINTS = {"cnn": 4, "resnet": 4}
#: the bounds of the generated CNNs and residual nets (:func:`properties.generate.architectures.sample_models`)
IMAGE_SPACE: dict[str, Any] = dict(in_channels=(1, 2), channels=(1, 4), depth=(1, 2), image_size=(2, 8),
                                   outputs=(1, 3))
#: architectures whose models the claim references (:func:`properties.conformance.claims.reference`) take: not
#: residual nets (``equals_claim`` is not measured there)
CLAIM_ARCHITECTURES = ("mlp", "cnn")
#: relative tolerance of conservation (before the stabiliser's own allowance)
CONSERVATION_RTOL = 1e-6
#: the bounds of the generated networks
CASE_SPACE: dict[str, Any] = dict(depth=(1, 4), width=(1, 16), input_size=(1, 16), outputs=(1, 4))
#: how many evaluations the counterexample shrinker may spend per property
SHRINK_BUDGET = 60
#: the same on a CNN or residual net (each evaluation builds, lowers and explains a new model: fewer steps)
IMAGE_SHRINK_BUDGET = 6

POPULATIONS = ("bias_free", "bias_negative", "bias_positive")

#: every property, with what its rate counts (report descriptions)
#: the properties the kit measures, in report order (each one's one-line text: :data:`properties.measure.keys.OUTCOMES`)
#: the properties judged only at points whose relevant denominators exceed twice the stabiliser (on the few points of
#: an image population that set can be empty under some seeds: such a row then has no data)
CONDITIONED = ("equals_dtd", "gradient_x_input")
PROPERTIES = ("equals_dtd", "conservation", "positivity", "gradient_x_input", "batch_independent", "no_side_effects",
              "finite", "dtype_device", "equals_claim")
_SUBSETS = {"equals_dtd": POPULATIONS, "conservation": ("bias_free", "bias_negative"), "equals_claim": POPULATIONS}
#: properties without a subset that are measured on one population only
_ONLY_ON = {"gradient_x_input": "bias_free"}

#: ``attribute(model, x, output) -> relevance``: an MLP's nn.Sequential, or the original CNN / residual net
Attribute = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]
RulesLike = R.RuleLike | Sequence[R.RuleLike]


def _check_name(name: object) -> str:
    """The suite's one name rule (:func:`properties.measure.keys.check_name`): rows are
    ``conformance.NAME.PROPERTY``."""
    return check_name(name, "an implementation name")


@dataclasses.dataclass(frozen=True)
class Implementation:
    """An LRP implementation under test.

    Parameters
    ----------
    name
        Short name without dots (rows ``conformance.{name}.{property}``).
    attribute
        ``attribute(model, x, output) -> relevance``: ``model`` an
        ``nn.Sequential`` of ``Linear``/``ReLU`` (a fresh copy per call, float64),
        ``x`` ``(N, D)``, ``output`` an int; returns a tensor shaped like ``x``.
    rule
        The DTD rule it claims to implement: a name (``"z+"``, ``"x"``,
        ``"w2"``, ``"gamma"``, ``"zB"``) or a :class:`dtd.rules.Rule`, or a
        per-layer list, first layer first, whose last entry repeats for every
        layer above (``[ZB(0, 3), "z+"]``: zB at the input, z+ above).
    seed
        ``"value"``: the relevance entering the top is the explained output's
        value; ``"one"``: the implementation starts from 1 and the kit scales
        its result by ``f(x)``.
    stabilizer
        The ``epsilon`` the implementation adds to denominators
        (``d + epsilon sign(d)``; default 1e-6); the kit's tolerance follows it.
    claims
        Optionally the library rule the implementation promises, bias
        included (a :mod:`properties.conformance.claims` rule such as ``Epsilon(1e-9)`` or
        ``ZPlus("positive")``, or a ``[first, rest]`` pair): adds the
        ``equals_claim`` rows, judged against the claim's slow reference.
    architectures
        The kinds of models the kit hands ``attribute`` (:data:`ARCHITECTURES`;
        default ``("mlp",)``): ``"cnn"`` and ``"resnet"`` add rows judged on
        :mod:`properties.generate.architectures`' original ``nn.Module`` s (convolutions,
        batch norm, max / average / global pooling, residual blocks with a bare
        ``+``), ``x`` in image shape ``(N, C, H, W)``; the claimed per-layer
        rules map onto the DTD layers of the model's graph in graph order
        (the first is the layer reading ``x``).
    """

    name: str
    attribute: Attribute
    rule: RulesLike
    seed: str = "value"
    stabilizer: float = 1e-6
    claims: ClaimsLike | None = None
    architectures: Sequence[str] = ("mlp",)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not callable(self.attribute):
            raise TypeError(f"Implementation {self.name!r}: attribute must be callable (model, "
                            f"x, output) -> relevance, got {type(self.attribute).__name__}")
        rules: tuple[R.Rule, ...]
        if isinstance(self.rule, (str, R.Rule)):
            rules = (R.Rule.ensure(self.rule),)
        elif isinstance(self.rule, Sequence) and len(self.rule) > 0:
            rules = tuple(R.Rule.ensure(r) for r in self.rule)
        else:
            raise TypeError(f"Implementation {self.name!r}: rule must be a rule name, a dtd.rules.Rule or a non-empty "
                            f"per-layer list of them, got {self.rule!r}")
        if any(isinstance(r, R.Pinv) for r in rules):
            raise ValueError(f"Implementation {self.name!r}: pinv is a layer rule no LRP implementation claims; "
                             "use z+, x, gamma, w2 or zB")
        object.__setattr__(self, "rule", rules)
        if self.seed not in ("value", "one"):
            raise ValueError(f"Implementation {self.name!r}: seed must be 'value' or 'one', got {self.seed!r}")
        object.__setattr__(self, "stabilizer", check_number(self.stabilizer, "stabilizer", minimum=0.0))
        if self.claims is not None:
            from .claims import ensure_claims

            object.__setattr__(self, "claims", ensure_claims(self.claims))
        object.__setattr__(self, "architectures", _check_architectures(self.architectures, self.name))

    @property
    def _rules(self) -> tuple[R.Rule, ...]:
        return cast("tuple[R.Rule, ...]", self.rule)  # __post_init__ made it a tuple of rule objects

    @property
    def _claims(self) -> Claims | None:
        return cast("Claims | None", self.claims)  # __post_init__ made it a Claims (or left None)

    def rules_for(self, depth: int) -> list[R.Rule]:
        """The claimed rule of each of ``depth`` layers (the last listed rule repeats upwards)."""
        return [self._rules[min(k, len(self._rules) - 1)] for k in range(depth)]

    @property
    def positive_rules(self) -> bool:
        """Whether every layer's rule is z+ (DTD's relevance is then >= 0 for x >= 0).

        Not gamma: with a negative weight gamma's relevance is negative in DTD
        itself (``W = [[1.6, -0.2]], b = [-0.2], x = [[0.8, 1.2]]`` gives
        ``R = [0.988, -0.148]``), so positivity is no gamma property.
        """
        return all(isinstance(r, R.ZPlus) for r in self._rules)

    @property
    def lrp0(self) -> bool:
        return all(isinstance(r, R.LRP0) for r in self._rules)

    def properties(self) -> list[tuple[str, str | None]]:
        """The ``(property, subset)`` pairs measured for this implementation, architecture by architecture."""
        return [(prop, subset) for architecture in self.architectures
                for prop, subset, _ in _layout(self, architecture)]


def _check_architectures(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"Implementation {name!r}: architectures must be a tuple of architecture names from "
                        f"{ARCHITECTURES}, e.g. ('mlp', 'cnn', 'resnet'), got {value!r}")
    chosen = tuple(value)
    if not chosen:
        raise ValueError(f"Implementation {name!r}: architectures must name at least one of {ARCHITECTURES}")
    for architecture in chosen:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"Implementation {name!r}: unknown architecture {architecture!r}; known: {ARCHITECTURES}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Implementation {name!r}: architectures lists one twice: {chosen!r}")
    return chosen


def subset_of(architecture: str, prop: str, population: str | None) -> str | None:
    """The subset of a row: the population on MLPs (``bias_negative``; None for a property judged on every
    population), ``{architecture}_{population}`` on CNNs and residual nets (``cnn_bias_negative``), and the
    architecture alone (``cnn``) for a property judged on all of its populations."""
    if architecture == "mlp":
        return population if prop in _SUBSETS else None
    return f"{architecture}_{population}" if population is not None else architecture


def _layout(impl: Implementation, architecture: str) -> list[tuple[str, str | None, str | None]]:
    """``(property, subset, population or None for all)`` measured on ``architecture``, in report order."""
    out: list[tuple[str, str | None, str | None]] = []
    for prop in PROPERTIES:
        if (prop == "positivity" and not impl.positive_rules) or (prop == "gradient_x_input" and not impl.lrp0):
            continue
        if prop == "equals_claim" and (impl.claims is None or architecture not in CLAIM_ARCHITECTURES):
            continue
        if prop in _SUBSETS:
            out += [(prop, subset_of(architecture, prop, p), p) for p in _SUBSETS[prop]]
        elif prop in _ONLY_ON:
            population = _ONLY_ON[prop]
            out.append((prop, None if architecture == "mlp" else subset_of(architecture, prop, population), population))
        else:
            out.append((prop, subset_of(architecture, prop, None), None))
    return out


def conformance_key(implementation: Implementation | str, prop: str, subset: str | None = None) -> RateKey:
    """The :class:`~properties.measure.keys.RateKey` of a property's rate (family
    ``conformance``, subject the implementation)."""
    name = _check_name(implementation.name if isinstance(implementation, Implementation) else implementation)
    if prop not in PROPERTIES:
        raise ValueError(f"unknown conformance property {prop!r}; known: {sorted(PROPERTIES)}")
    return RateKey("conformance", prop, subject=name, subset=subset)


def conformance_name(implementation: Implementation | str, prop: str, subset: str | None = None) -> str:
    """The report row of a property: ``conformance.{name}.{property}[.{subset}]``."""
    return str(conformance_key(implementation, prop, subset))


# ------------------------------------------------------------------------------------------------ loading
def load_implementations(spec: str) -> list[Implementation]:
    """The :class:`Implementation` (s) that ``MODULE:FACTORY`` returns (``MODULE`` importable from the current
    directory); errors as :func:`properties.usercode.factories.load_factory` raises them."""
    return load_factory(spec, Implementation)


# ------------------------------------------------------------------------------------------------ populations
@functools.lru_cache(maxsize=4)
def population(name: str, count: int, points: int, seed: int) -> tuple[Case, ...]:
    """``count`` i.i.d. cases of one population (cached: every implementation sees the same)."""
    from ..generate.strategies import Case, sample_cases

    if name not in POPULATIONS:
        raise ValueError(f"unknown population {name!r}; known: {POPULATIONS}")
    init = "dtd" if name == "bias_negative" else "torch"
    offset = {"bias_free": 11, "bias_negative": 22, "bias_positive": 33}[name]
    out: list[Case] = []
    batch = 0
    while len(out) < count:
        batch += 1
        if batch > 20:
            raise ValueError(f"could not draw {count} cases of population {name!r}")
        for case in sample_cases(count, seed=seed * 1000 + offset + 100 * batch, init=init, n=points, **CASE_SPACE):
            if name == "bias_free":  # the same weights without biases, on the points whose output stays alive
                net = ReLUNetwork.from_sequential(case.net.to_sequential(bias=False))
                alive = net.output_value(case.x, case.output) > 0
                if int(alive.sum()) < 2:
                    continue
                case = Case(net, case.x[alive], case.output)
            elif name == "bias_positive" and not any(
                bool((case.net.bias(k) > 0).any()) for k in range(case.net.n_layers)
            ):
                continue
            out.append(case)
    return tuple(out[:count])


@functools.lru_cache(maxsize=8)
def image_population(architecture: str, name: str, count: int, points: int, seed: int) -> tuple:
    """``count`` i.i.d. :class:`properties.generate.architectures.ModelCase` s (CNNs or residual nets) of one
    population, each with ``points`` inputs on which its explained output is live (cached: every implementation sees
    the same)."""
    from ..generate.architectures import sample_cases

    if architecture not in ("cnn", "resnet"):
        raise ValueError(f"unknown image architecture {architecture!r}; known: ('cnn', 'resnet')")
    if name not in POPULATIONS:
        raise ValueError(f"unknown population {name!r}; known: {POPULATIONS}")
    offset = {"bias_free": 11, "bias_negative": 22, "bias_positive": 33}[name] + (0 if architecture == "cnn" else 500)
    return tuple(sample_cases(architecture, name, count, points=points, seed=seed * 1000 + offset, **IMAGE_SPACE))


@functools.lru_cache(maxsize=8)
def _image_networks(architecture: str, name: str, count: int, points: int, seed: int) -> tuple:
    """The DTD networks of :func:`image_population` (lowered once, shared by every implementation)."""
    return tuple(_lower(case) for case in image_population(architecture, name, count, points, seed))


#: the bounds of the kit's smallest CNNs / residual nets, tried as counterexamples before a failing case is shrunk
SMALL_IMAGE_SPACE: dict[str, Any] = dict(in_channels=1, channels=1, depth=1, image_size=2, outputs=1)
#: how many of those small models per architecture and population
SMALL_IMAGE_CASES = 3


@functools.lru_cache(maxsize=8)
def _small_image_cases(architecture: str, name: str, seed: int) -> tuple:
    """:data:`SMALL_IMAGE_CASES` one-input cases of the smallest models of one population, with their networks.

    A universal break (a library's batch-norm merge, its residual sum) fails
    on them too: one evaluation each instead of a shrinking search.
    """
    from ..generate.architectures import sample_cases

    offset = {"bias_free": 71, "bias_negative": 72, "bias_positive": 73}[name] + (0 if architecture == "cnn" else 500)
    cases = sample_cases(architecture, name, SMALL_IMAGE_CASES, points=1, seed=seed * 1000 + offset,
                         **SMALL_IMAGE_SPACE)
    return tuple((case, _lower(case)) for case in cases)


#: lowered networks of recently seen image models, by ``id`` (the model is kept with it, so its id is not reused;
#: the kit never changes a model it lowered: every call gets a copy)
_LOWERED: collections.OrderedDict[int, tuple] = collections.OrderedDict()
_LOWERED_SIZE = 64


def _lower(case: ModelCase) -> ReLUNetwork | GraphNetwork:
    found = _LOWERED.get(id(case.model))
    if found is not None and found[0] is case.model:
        _LOWERED.move_to_end(id(case.model))
        return found[1]
    net = ReLUNetwork.from_module(case.model, case.generated.input_shape)
    _LOWERED[id(case.model)] = (case.model, net)
    while len(_LOWERED) > _LOWERED_SIZE:
        _LOWERED.popitem(last=False)
    return net


@dataclasses.dataclass(frozen=True)
class _Subject:
    """One case as the kit uses it: DTD's network, the inputs, the output and the model handed to the implementation."""

    net: ReLUNetwork | GraphNetwork  # a dtd.ReLUNetwork, or the dtd.GraphNetwork of ``model``
    x: torch.Tensor
    output: int
    architecture: str
    model: nn.Module | None = None  # the original model (CNNs, residual nets); MLPs: ``net.to_sequential()``

    def _dense(self) -> ReLUNetwork:
        """An MLP subject's network (a subject without ``model`` is an MLP)."""
        if not isinstance(self.net, ReLUNetwork):
            raise TypeError(f"a subject without a model is an MLP, got a {type(self.net).__name__}")
        return self.net

    def fresh(self) -> nn.Module:
        """A copy of the model for one call (nothing shared with the kit's own)."""
        return self._dense().to_sequential() if self.model is None else copy.deepcopy(self.model)

    def value(self, x: torch.Tensor, output: int) -> torch.Tensor:
        """``f(x)`` of the explained output ``(N,)``."""
        if self.model is None:
            return self._dense().output_value(x, output)
        with torch.no_grad():
            return self.net(x)[:, output]

    def gradient(self, x: torch.Tensor, output: int) -> torch.Tensor:
        """``d f / d x`` ``(N, D)`` (flat), on a fresh copy of the original model for CNNs and residual nets."""
        if self.model is None:
            return self._dense().input_gradient(x, output)
        model = self.fresh()
        u = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(model(u)[:, output].sum(), u)
        return grad.reshape(x.shape[0], -1)


def _subject(case: AnyCase, net: ReLUNetwork | GraphNetwork | None = None) -> _Subject:
    """The :class:`_Subject` of an MLP :class:`~properties.generate.strategies.Case` or an image
    :class:`~properties.generate.architectures.ModelCase`."""
    from ..generate.architectures import ModelCase

    if not isinstance(case, ModelCase):
        return _Subject(case.net, case.x, case.output, "mlp")
    return _Subject(net if net is not None else _lower(case), case.x, case.output, case.generated.architecture,
                    case.model)


def _architecture_of(case: AnyCase) -> str:
    generated = getattr(case, "generated", None)
    return "mlp" if generated is None else generated.architecture


def _population_of(architecture: str, population_name: str) -> str:
    """The bias population of ``population_name`` (``"bias_negative"`` or, on images, ``"cnn_bias_negative"``)."""
    name = population_name
    if architecture != "mlp" and name.startswith(architecture + "_"):
        name = name[len(architecture) + 1:]
    if name not in POPULATIONS:
        raise ValueError(f"unknown population {population_name!r} for a {architecture} case; known: {POPULATIONS}")
    return name


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


# ------------------------------------------------------------------------------------------------ one call
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _snapshot(model: nn.Module, x: torch.Tensor) -> tuple:
    from torch.nn.modules import module as module_state

    modules = [(n, m.training, tuple(len(getattr(m, h, {}) or {}) for h in _HOOKS)) for n, m in model.named_modules()]
    params = [(n, p.detach().clone(), p.requires_grad, p.grad is None) for n, p in model.named_parameters()]
    buffers = [(n, b.detach().clone()) for n, b in model.named_buffers()]
    global_hooks = tuple(len(getattr(module_state, h, {}) or {}) for h in _GLOBAL_HOOKS)
    return (
        modules,
        params,
        buffers,
        global_hooks,
        torch.is_grad_enabled(),
        x.detach().clone(),
        x.requires_grad,
        x.grad is None,
    )


def _unchanged(before: tuple, after: tuple) -> bool:
    modules, params, buffers, global_hooks, grad_mode, x, x_rg, x_nograd = before
    modules2, params2, buffers2, global_hooks2, grad_mode2, x2, x_rg2, x_nograd2 = after
    same = modules == modules2 and global_hooks == global_hooks2 and grad_mode == grad_mode2
    same &= x_rg == x_rg2 and x_nograd == x_nograd2 and torch.equal(x, x2)
    same &= [(n, rg, g) for n, _, rg, g in params] == [(n, rg, g) for n, _, rg, g in params2]
    same &= len(params) == len(params2) and all(torch.equal(a[1], b[1]) for a, b in zip(params, params2, strict=True))
    same &= [n for n, _ in buffers] == [n for n, _ in buffers2] and all(
        torch.equal(a[1], b[1]) for a, b in zip(buffers, buffers2, strict=True)
    )
    return bool(same)


#: seconds one call of an implementation may take by default (generous: a call takes milliseconds); the same number
#: as ``dtd_properties_pytest.DEFAULT_CALL_TIMEOUT`` and ``properties.cli.DEFAULT_CALL_TIMEOUT``, which must not import
#: this module before pytest has registered the entry point (a test keeps the three equal)
DEFAULT_CALL_TIMEOUT = 120.0
class CallFailed(Exception):
    """An implementation's call raised or exceeded the time limit (the message says which, with the error)."""


class _Caller:
    """Calls one implementation on fresh model copies, each call in a clean global state and under a time limit.

    ``calls`` records per returned result whether its dtype and device are
    ``x``'s; ``changes`` every change a call made to the global state;
    ``errors`` every call that raised (both as text).  A call that raised
    raises :class:`CallFailed`; a result of the wrong type or shape raises a
    ``TypeError`` / ``ValueError`` naming the implementation (its contract).
    """

    def __init__(self, impl: Implementation, call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
                 on_call: Callable[[], None] | None = None):
        self.impl = impl
        self.call_timeout = call_timeout
        self.on_call = on_call
        self.calls: list[bool] = []
        self.changes: list[str] = []
        self.errors: list[str] = []

    def __call__(self, subject: _Subject, x: torch.Tensor, output: int, *,
                 watch: bool = False) -> tuple[torch.Tensor, torch.dtype, bool | None]:
        """``(relevance (N, D) flat in x's dtype, the result's dtype, unchanged or None)``
        of one call on a fresh model."""
        model = subject.fresh()
        x_in = x.clone()
        before = _snapshot(model, x_in) if watch else None
        try:
            with clean_global_state() as changes:
                try:
                    with time_limit(self.call_timeout):
                        result = self.impl.attribute(model, x_in, output)
                except CallTimeout:
                    raise CallFailed(f"the call took longer than the limit of {self.call_timeout:g} s "
                                     f"(--property-call-timeout / conform --call-timeout)") from None
                except Exception as error:
                    raise CallFailed(f"{type(error).__name__}: {error}") from error
        except CallFailed as failed:
            self.errors.append(f"raised on x of shape {tuple(x.shape)}: {failed}")
            raise
        finally:
            self.changes += changes
            if self.on_call is not None:
                self.on_call()
        if not isinstance(result, torch.Tensor):
            raise TypeError(f"implementation {self.impl.name!r} returned {type(result).__name__}; "
                            f"attribute(model, x, output) must return a torch.Tensor shaped like x {tuple(x.shape)}")
        if tuple(result.shape) != tuple(x.shape):
            raise ValueError(f"implementation {self.impl.name!r} returned shape {tuple(result.shape)} for x of shape "
                             f"{tuple(x.shape)}; the relevance must be shaped like x")
        self.calls.append(result.dtype == x.dtype and result.device == x.device)
        unchanged = _unchanged(before, _snapshot(model, x_in)) if before is not None else None
        relevance = _flat(result.detach().to(dtype=x.dtype, device=x.device))
        if self.impl.seed == "one":
            relevance = relevance * subject.value(x, output).unsqueeze(1)
        return relevance, result.dtype, unchanged


def _allowance(dtype: torch.dtype, scale: torch.Tensor) -> torch.Tensor:
    """Rounding allowance ``(batch, 1)`` of a result in ``dtype`` whose values are of size ``scale`` ``(batch,)``."""
    base = ROUNDING64 if dtype == torch.float64 else equation_rtol(dtype)
    return (base * scale.clamp_min(1.0)).unsqueeze(1)


def _same(a: torch.Tensor, b: torch.Tensor, allowance: torch.Tensor) -> torch.Tensor:
    """Per row: equal within ``allowance`` (NaN matches NaN, inf matches inf)."""
    close = ((a - b).abs() <= allowance) | ((a == b) | (a.isnan() & b.isnan()))
    return close.all(1)


def _in_domain(impl: Implementation, x: torch.Tensor) -> torch.Tensor:
    """``x`` clipped into the box of a zB input rule (other rules: ``x`` itself); any shape ``(N, ...)``."""
    first = impl._rules[0]
    if isinstance(first, R.ZB):
        flat = _flat(x)
        low, high = first._bounds(flat, flat.shape[1])
        return torch.minimum(torch.maximum(flat, low), high).reshape(x.shape)
    return x


def _with_zeros(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with about half of its entries set to zero, and an all-zero row appended."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.rand(x.shape, generator=generator, dtype=torch.float64) >= 0.5
    return torch.cat([x * keep.to(x), torch.zeros_like(x[:1])])


def _equals_claim(impl: Implementation, subject: _Subject, x: torch.Tensor, output: int, relevance: torch.Tensor,
                  allowance: torch.Tensor) -> torch.Tensor:
    """Per point: ``relevance`` (flat) equals ``impl.claims``' reference on a fresh copy of the model."""
    from .claims import CLAIM_RTOL

    claims = impl._claims
    if claims is None:
        raise ValueError(f"implementation {impl.name!r} claims no library rule: it has no equals_claim")
    # starts from f(x), as the kit's (scaled) result
    expected = _flat(claims.reference(subject.fresh(), x, output))
    scale = expected.abs().amax(1, keepdim=True)
    return ((relevance - expected).abs() <= CLAIM_RTOL * scale + allowance).all(1)


def _graph_stabilizer_bound(net: GraphNetwork, dec: GraphDecomposition, rules: Sequence[R.Rule],
                            epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`properties.conformance.stabilizer.stabilizer_bound` on a graph network, routed through the graph as
    relevance is (summed over consumers, through ReLUs unchanged, through max pools to the argmax).

    A library sees pooling as layers of their own and stabilises their
    divisions too (zennit's ``Norm`` on average pooling, captum's
    ``EpsilonRule`` on every pooling): an average pooling folded into a DTD
    layer and a max pooling each add ``delta_q = epsilon / (|p_q| - epsilon)``
    at their outputs ``p_q`` (the relevance ``R`` through them moves by at most
    ``|R| delta_q``, its error ``E`` grows by ``1 + delta_q``); an output
    within twice ``epsilon`` of 0 that is not 0 leaves the point unconditioned.
    """
    from dtd.graph import AffineNode, MaxPoolNode, ReLUNode, scatter_argmax
    from dtd.operators import Pooling

    values, argmax = dec.activations
    n = dec.output_value.shape[0]
    conditioned = torch.ones(n, dtype=torch.bool, device=dec.output_value.device)
    margin = CONDITIONING_FACTOR * epsilon
    errors: dict[int, torch.Tensor] = {}
    relevance: dict[int, torch.Tensor] = {}  # DTD's relevance reaching each node

    def add(store: dict[int, torch.Tensor], node_id: int, t: torch.Tensor) -> None:
        store[node_id] = t if node_id not in store else store[node_id] + t

    def delta(p: torch.Tensor) -> torch.Tensor:
        """``delta_q`` of pooled values ``p`` ``(N, ...)``; 0 where ``p = 0`` (nothing passes); marks close calls."""
        nonlocal conditioned
        close = (p != 0) & (p.abs() <= margin)
        conditioned &= ~close.reshape(n, -1).any(1)
        safe = torch.where(p.abs() > margin, p.abs(), torch.ones_like(p))
        return torch.where(p.abs() > margin, epsilon / (safe - epsilon), torch.zeros_like(p))

    for node in reversed(net.nodes[1:]):
        shape = (n,) + tuple(node.shape)
        e = errors.pop(node.id, None)
        e = torch.zeros(shape, dtype=net.dtype, device=net.device) if e is None else e
        r = relevance.pop(node.id, None)
        r = torch.zeros(shape, dtype=net.dtype, device=net.device) if r is None else r
        if isinstance(node, ReLUNode):
            add(errors, node.source, e)
            add(relevance, node.source, r)
        elif isinstance(node, MaxPoolNode):
            d = delta(values[node.id])
            source_shape = tuple(values[node.source].shape[1:])
            add(errors, node.source, scatter_argmax(e * (1 + d) + r.abs() * d, argmax[node.id], source_shape, node.dim))
            add(relevance, node.source, scatter_argmax(r, argmax[node.id], source_shape, node.dim))
        elif isinstance(node, AffineNode):
            k = net.layer_ids.index(node.id)
            layer = dec.layers[k]
            w = net.weight(k)
            v = rules[k].direction(layer.input, w)  # (N, J, D)
            dd = (v * w).sum(-1)
            carrying = layer.carries_relevance
            conditioned &= ~(carrying & ((dd.abs() <= margin) | ~layer.root_valid)).any(1)
            safe = torch.where(carrying & (dd.abs() > margin), dd, torch.ones_like(dd))
            delta_j = torch.where(carrying, epsilon / (safe.abs() - epsilon), torch.zeros_like(dd))
            weight = (w * v).abs() / safe.abs().unsqueeze(-1) * carrying.unsqueeze(-1)
            lower = torch.einsum("njd,nj->nd", weight,
                                 e.reshape(n, -1) * (1 + delta_j) + layer.upper_relevance.abs() * delta_j)
            parts = zip(node.branches, net.split_input(k, lower), net.split_input(k, layer.relevance), strict=True)
            for branch, part, r_part in parts:
                # the average poolings read first (one or two: a pool, then global pooling): stabilised divisions
                # of their own; a factor prod (1 + delta) at the inputs bounds their joint change
                ops = list(branch.op.ops) if hasattr(branch.op, "ops") else [branch.op]
                a, factor = values[branch.source], None
                done: list[Pooling] = []
                for op in ops:
                    if not isinstance(op, Pooling):
                        break
                    a = op.forward(a)
                    d_in = op.modified("ind").transpose(delta(a))  # each input gets its window's delta
                    for before in reversed(done):
                        d_in = before.modified("ind").transpose(d_in)
                    done.append(op)
                    factor = 1 + d_in if factor is None else factor * (1 + d_in)
                if factor is not None:
                    part = part * factor + r_part.abs() * (factor - 1)
                add(errors, branch.source, part)
                add(relevance, branch.source, r_part)
    bound = errors.get(0, torch.zeros((n,) + tuple(net.input_shape), dtype=net.dtype, device=net.device))
    return _flat(bound), conditioned


def _bound(net: ReLUNetwork | GraphNetwork, dec: Decomposition, rules: Sequence[R.Rule],
           epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    from dtd.decomposition import GraphDecomposition
    from dtd.graph import GraphNetwork

    if isinstance(net, GraphNetwork):
        if not isinstance(dec, GraphDecomposition):
            raise TypeError(f"a graph network's bound reads a GraphDecomposition, got {type(dec).__name__}")
        return _graph_stabilizer_bound(net, dec, rules, epsilon)
    return stabilizer_bound(net, dec, rules, epsilon)


def _split_batches(n: int) -> list[torch.Tensor]:
    """The batches every point is explained again in: each half of the points, in reversed order, so every point
    gets other batch mates (half of them, or none when ``n`` is 2 or 3) at another position.  One point: alone."""
    half = n // 2
    return [rows for rows in (torch.arange(half - 1, -1, -1), torch.arange(n - 1, half - 1, -1)) if rows.numel() > 0]


def evaluate_case(impl: Implementation, case: AnyCase, population_name: str, *, only: set[str] | None = None,
                  caller: _Caller | None = None, seed: int = 0,
                  net: ReLUNetwork | GraphNetwork | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-point outcomes ``{property: (holds, counted)}`` of one case (``property`` without the population).

    ``case``: an MLP :class:`~properties.generate.strategies.Case` or a CNN / residual-net
    :class:`~properties.generate.architectures.ModelCase` (``population_name`` then
    ``"bias_negative"`` or ``"cnn_bias_negative"``; ``net`` its lowered
    network, if already at hand).  ``only`` restricts the work to some
    properties (the shrinker's use).  A call that raises
    (:class:`CallFailed`) fails the properties it was made for on this case;
    a change of the global state by any call fails ``no_side_effects``.
    """
    caller = caller or _Caller(impl)
    architecture = _architecture_of(case)
    population_name = _population_of(architecture, population_name)
    if architecture not in impl.architectures:
        raise ValueError(f"implementation {impl.name!r} is not measured on {architecture} models "
                         f"(its architectures are {impl.architectures})")
    subject = _subject(case, net)
    wanted = {p for p, _, population in _layout(impl, architecture) if population in (None, population_name)}
    if only is not None:
        wanted &= set(only)
    network, output = subject.net, subject.output
    x = _in_domain(impl, subject.x)
    n = x.shape[0]
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ones = torch.ones(n, dtype=torch.bool)
    nowhere = torch.zeros(n, dtype=torch.bool)
    calls_before, changes_before = len(caller.calls), len(caller.changes)
    side_effects_ok = True
    needs_main = wanted & {"equals_dtd", "conservation", "positivity", "gradient_x_input", "batch_independent",
                           "no_side_effects", "equals_claim"}
    if needs_main or "dtype_device" in wanted:
        rules = impl.rules_for(network.n_layers)
        dec = dtd.train_free(network, x, rule=rules, output=output)
        f = dec.output_value
        expected_relevance = _flat(dec.relevance)
        if wanted & {"equals_dtd", "conservation", "gradient_x_input"}:
            bound, conditioned = _bound(network, dec, rules, impl.stabilizer)
        try:
            relevance, dtype, unchanged = caller(subject, x, output, watch="no_side_effects" in wanted)
        except CallFailed:  # every property of this call fails on this case; the others are measured
            for prop in needs_main:
                counted = conditioned if prop in CONDITIONED else ones
                out[prop] = (
                    (nowhere, counted) if prop != "no_side_effects" else (torch.tensor([False]), torch.tensor([True]))
                )
            relevance = None
    else:
        relevance = None
    if relevance is not None:
        scale = torch.maximum(f.abs(), expected_relevance.abs().amax(1))
        allowance = _allowance(dtype, scale)
        # the implementation against itself (another batch, a second call): its rounding is of the size of its own
        # values, which a near-zero denominator can make far larger than DTD's (seed 9: |R| = 67 against 0.08, two
        # batches 1.0e-11 apart, 1.5e-13 of the values); non-finite entries are matched as they are (_same)
        own = relevance.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).amax(1)
        self_allowance = _allowance(dtype, torch.maximum(scale, own.to(scale.dtype)))
        if "equals_dtd" in wanted:
            agree = ((relevance - expected_relevance).abs() <= bound + allowance).all(1)
            out["equals_dtd"] = (agree, conditioned)
        if "conservation" in wanted:
            gap = (relevance.sum(1) - f).abs()
            out["conservation"] = (gap <= CONSERVATION_RTOL * f.abs() + bound.sum(1) + allowance[:, 0], ones)
        if "positivity" in wanted:
            out["positivity"] = ((relevance >= -allowance).all(1), ones)
        if "gradient_x_input" in wanted:
            expected = subject.gradient(x, output) * _flat(x)
            out["gradient_x_input"] = (((relevance - expected).abs() <= bound + allowance).all(1), conditioned)
        if "batch_independent" in wanted:
            # every point is explained again among other batch mates, at another position: its relevance must not move
            holds = ones.clone()
            try:
                for rows in _split_batches(n):
                    again, _, _ = caller(subject, x[rows], output)
                    holds[rows] &= _same(again, relevance[rows], self_allowance[rows])
            except CallFailed:
                holds = nowhere
            out["batch_independent"] = (holds, ones)
        if "equals_claim" in wanted:
            out["equals_claim"] = (_equals_claim(impl, subject, x, output, relevance, allowance), ones)
        if "no_side_effects" in wanted:
            try:
                again, _, _ = caller(subject, x, output)
                side_effects_ok = bool(unchanged) and bool(_same(again, relevance, self_allowance).all())
            except CallFailed:
                side_effects_ok = False
    if "finite" in wanted:
        special = _with_zeros(x, seed)
        try:
            relevance, _, _ = caller(subject, special, output)
            finite = torch.isfinite(relevance).all(1)
        except CallFailed:
            finite = torch.zeros(special.shape[0], dtype=torch.bool)
        out["finite"] = (finite, torch.ones(special.shape[0], dtype=torch.bool))
    if "no_side_effects" in wanted and "no_side_effects" not in out:
        # any call on this network that changed torch's global state counts, not only the watched one
        ok = side_effects_ok and len(caller.changes) == changes_before
        out["no_side_effects"] = (torch.tensor([ok]), torch.tensor([True]))
    if "dtype_device" in wanted:
        calls = caller.calls[calls_before:]
        out["dtype_device"] = (torch.tensor(calls, dtype=torch.bool), torch.ones(len(calls), dtype=torch.bool))
    return out


# ------------------------------------------------------------------------------------------------ shrinking
def _network(weights: list[torch.Tensor], biases: list[torch.Tensor], final_relu: bool) -> ReLUNetwork:
    # no global RNG
    return ReLUNetwork([linear_copy(w, b) for w, b in zip(weights, biases, strict=True)], final_relu=final_relu)


def _fails(impl: Implementation, case: AnyCase, population_name: str, prop: str,
           call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> bool:
    try:
        holds, counted = evaluate_case(impl, case, population_name, only={prop},
                                       caller=_Caller(impl, call_timeout))[prop]
    except (ValueError, TypeError):
        return False
    return bool((counted & ~holds).any())


def shrink(impl: Implementation, case: AnyCase, population_name: str, prop: str, budget: int = SHRINK_BUDGET, *,
           call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> AnyCase:
    """A small case on which ``prop`` still fails: fewer points, neurons, inputs, outputs; rounded weights.

    Greedy: every step is kept only if the property still fails; at most
    ``budget`` evaluations.  The result is 1-minimal in the neurons tried.
    A CNN or residual-net :class:`~properties.generate.architectures.ModelCase` shrinks
    by :func:`properties.generate.architectures.shrink_case` instead: one input, then
    fewer stages / blocks, smaller images, fewer channels, no pooling.
    """
    from ..generate.strategies import Case

    if not isinstance(case, Case):  # a CNN or residual net
        return _shrink_image(impl, case, population_name, prop, budget, call_timeout)

    spent = [0]

    def fails(candidate: Case) -> bool:
        if spent[0] >= budget:
            return False
        spent[0] += 1
        return _fails(impl, candidate, population_name, prop, call_timeout)

    holds, counted = evaluate_case(impl, case, population_name, only={prop}, caller=_Caller(impl, call_timeout))[prop]
    bad = torch.nonzero(counted & ~holds).flatten().tolist()
    if prop not in ("no_side_effects", "dtype_device"):
        rows = [bad[0]] if bad else [0]
        for candidate_rows in ([rows[0]], [rows[0], (rows[0] + 1) % case.x.shape[0]]):
            candidate = Case(case.net, case.x[candidate_rows], case.output)
            if fails(candidate):
                case = candidate
                break
    else:
        candidate = Case(case.net, case.x[:1], case.output)
        if fails(candidate):
            case = candidate

    def parts(c: Case) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([c.net.weight(k).detach().clone() for k in range(c.net.n_layers)],
                [c.net.bias(k).detach().clone() for k in range(c.net.n_layers)])

    changed = True
    while changed and spent[0] < budget:
        changed = False
        weights, biases = parts(case)
        # hidden neurons and outputs other than the explained one
        for k in range(len(weights)):
            j = 0
            while j < weights[k].shape[0] and weights[k].shape[0] > 1:
                if k == len(weights) - 1 and j == case.output:
                    j += 1
                    continue
                keep = [i for i in range(weights[k].shape[0]) if i != j]
                w2, b2 = list(weights), list(biases)
                w2[k], b2[k] = weights[k][keep], biases[k][keep]
                if k + 1 < len(weights):
                    w2[k + 1] = weights[k + 1][:, keep]
                output = case.output - (1 if k == len(weights) - 1 and j < case.output else 0)
                candidate = Case(_network(w2, b2, case.net.final_relu), case.x, output)
                if fails(candidate):
                    case, weights, biases, changed = candidate, w2, b2, True
                else:
                    j += 1
        # input features
        d = 0
        while d < case.x.shape[1] and case.x.shape[1] > 1:
            keep = [i for i in range(case.x.shape[1]) if i != d]
            w2 = list(weights)
            w2[0] = weights[0][:, keep]
            candidate = Case(_network(w2, biases, case.net.final_relu), case.x[:, keep], case.output)
            if fails(candidate):
                case, weights, changed = candidate, w2, True
            else:
                d += 1
    weights, biases = parts(case)
    for decimals in (1, 2, 3):
        candidate = Case(_network([w.round(decimals=decimals) for w in weights],
                                  [b.round(decimals=decimals) for b in biases],
                                  case.net.final_relu), case.x.round(decimals=decimals), case.output)
        if fails(candidate):
            return candidate
    return case


def _shrink_image(impl: Implementation, case: ModelCase, population_name: str, prop: str, budget: int,
                  call_timeout: float | None) -> ModelCase:
    """A small CNN / residual net of ``case``'s population on which ``prop`` fails: one of the population's smallest
    models (:data:`SMALL_IMAGE_SPACE`) when one fails, else ``case`` shrunk by
    :func:`properties.generate.architectures.shrink_case` (at most :data:`IMAGE_SHRINK_BUDGET` evaluations)."""
    from ..generate.architectures import shrink_case

    architecture, population = _architecture_of(case), _population_of(_architecture_of(case), population_name)
    if prop not in ("batch_independent",):  # one input cannot depend on batch mates
        for small, net in _small_image_cases(architecture, population, 0):
            try:
                holds, counted = evaluate_case(impl, small, population, only={prop}, net=net,
                                               caller=_Caller(impl, call_timeout))[prop]
            except (ValueError, TypeError):
                continue
            if bool((counted & ~holds).any()):
                return small
    return shrink_case(case, lambda c: _fails(impl, c, population_name, prop, call_timeout),
                       budget=min(budget, IMAGE_SHRINK_BUDGET))


def describe_failure(impl: Implementation, case: AnyCase, prop: str,
                     call_timeout: float | None = DEFAULT_CALL_TIMEOUT) -> str:
    """The counterexample's network and inputs, the implementation's relevance (or the error it raised, or what
    it changed in torch's global state) and DTD's.  ``finite`` shows the input with zeros it was judged on."""
    from ..generate.strategies import Case

    x = _in_domain(impl, case.x)
    if prop == "finite":
        x = _with_zeros(x, 0)  # the input evaluate_case (and so the shrinker) judged it on
    subject = _subject(case)
    rules = impl.rules_for(subject.net.n_layers)
    if isinstance(case, Case):
        lines = [f"{impl.name} ({prop}), claimed rule {list(rules)}:", Case(case.net, x, case.output).describe()]
    else:
        from ..generate.architectures import ModelCase

        if isinstance(subject.net, dtd.GraphNetwork):
            names = subject.net.layer_names()
        else:
            names = [str(k) for k in range(len(rules))]
        per_layer = ", ".join(f"{name}: {rule!r}" for name, rule in zip(names, rules, strict=True))
        shown = ModelCase(case.generated, x, case.output)
        # every line is Python: the model, x and output as code, the rest as comments (paste it whole)
        lines = [f"# {impl.name} ({prop}), claimed rules per DTD layer {{{per_layer}}}",
                 "# " + shown.describe().split("\n", 1)[0], shown.code().rstrip("\n"),
                 "# relevance in x's shape:"]
    mark = "  " if subject.model is None else "# "
    caller = _Caller(impl, call_timeout)
    shaped = (lambda t: t.reshape(x.shape).tolist()) if subject.model is not None else (lambda t: t.tolist())
    try:
        dec = dtd.train_free(subject.net, x, rule=rules, output=subject.output)
        lines.append(f"{mark}f(x) = {dec.output_value.tolist()}")
        try:
            relevance, dtype, unchanged = caller(subject, x, subject.output, watch=prop == "no_side_effects")
            lines.append(f"{mark}implementation R = {shaped(relevance)} ({dtype})")
            if unchanged is False:
                lines.append(f"{mark}the call changed the model or x (parameters, "
                             "requires_grad, grad, buffers, hooks, training or x)")
        except CallFailed as failed:
            lines.append(f"{mark}the implementation raised: {failed}")
        lines.append(f"{mark}dtd.train_free R = {shaped(dec.relevance)}")
    except Exception as error:  # the description must not hide the row it explains
        lines.append(f"{mark}(could not re-run: {type(error).__name__}: {error})")
    lines += [f"{mark}the call changed torch's global state (the kit restored it): {change}"
              for change in caller.changes]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the sweep
@dataclasses.dataclass
class ConformanceResult:
    """What :func:`run` measured for one implementation: rates, descriptions, counterexamples by row name."""

    implementation: Implementation
    rates: dict[str, Rate]
    descriptions: dict[str, str]
    examples: dict[str, str]
    keys: dict[str, RateKey] = dataclasses.field(default_factory=dict)

    def failing(self) -> list[str]:
        """Row names whose property failed at least once."""
        return [name for name, rate in self.rates.items() if rate.successes < rate.trials]


#: seconds between two progress lines of :func:`run`
PROGRESS_INTERVAL = 1.0


def run(impl: Implementation, *, seed: int = 0, networks: int = NETWORKS, points: int = POINTS,
        confidence: float = 0.99, shrink_failures: bool = True, call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
        progress: Callable[[str], None] | None = None, image_networks: int | None = None,
        image_points: int | None = None) -> ConformanceResult:
    """Measure every property of ``impl`` on ``networks`` generated networks per population.

    ``networks`` and ``points`` are the MLPs'; the CNNs and residual nets of
    ``impl.architectures`` use :data:`IMAGE_NETWORKS` / :data:`IMAGE_POINTS`
    per architecture unless ``image_networks`` / ``image_points`` set one
    number for both.

    Rates are clustered by network.  With ``shrink_failures`` each failing
    property gets a shrunk counterexample (:func:`shrink`; not after a call
    timed out: shrinking would repeat the slow calls).  ``call_timeout``:
    seconds one call may take (None: no limit); a slower call fails the
    property it was made for.  ``progress`` receives a line of text at most
    every :data:`PROGRESS_INTERVAL` seconds (where the sweep is, calls and
    seconds so far).  Every call runs in a clean global torch state (see the
    module docstring).  Runs with one torch thread (restored afterwards): on
    these tiny tensors intra-op threads cost far more than they give.
    """
    if not isinstance(impl, Implementation):
        raise TypeError(f"impl must be a properties.Implementation, got {type(impl).__name__}")
    networks = check_int(networks, "networks", minimum=2)
    points = check_int(points, "points", minimum=2)
    if call_timeout is not None:
        call_timeout = check_number(call_timeout, "call_timeout", minimum=0.0)
        if call_timeout <= 0:
            raise ValueError(f"call_timeout must be > 0 seconds (or None for no limit), got {call_timeout!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable (str) -> None or None, got {type(progress).__name__}")
    sizes = {"mlp": (networks, points)}
    for architecture in ("cnn", "resnet"):
        count = (
            IMAGE_NETWORKS[architecture]
            if image_networks is None
            else check_int(image_networks, "image_networks", minimum=2)
        )
        per = IMAGE_POINTS[architecture] if image_points is None else check_int(image_points, "image_points", minimum=2)
        sizes[architecture] = (count, per)
    with one_thread():  # tiny tensors: intra-op threads only add overhead (10x CPU on a busy machine)
        return _run(impl, seed, sizes, confidence, shrink_failures, call_timeout, progress)


def _cases_of(architecture: str, name: str, count: int, points: int,
              seed: int) -> list[tuple[AnyCase, ReLUNetwork | GraphNetwork | None]]:
    """``(case, lowered network or None)`` of one population of one architecture (cached, shared)."""
    if architecture == "mlp":
        return [(case, None) for case in population(name, count, points, seed)]
    return list(zip(image_population(architecture, name, count, points, seed),
                    _image_networks(architecture, name, count, points, seed), strict=True))


@dataclasses.dataclass
class _Where:
    """Where the sweep is, for the progress lines, and when the last one was shown."""

    text: str = "starting"
    shown: float = -math.inf


def _run(impl: Implementation, seed: int, sizes: dict[str, tuple[int, int]], confidence: float, shrink_failures: bool,
         call_timeout: float | None, progress: Callable[[str], None] | None) -> ConformanceResult:
    from ..generate.architectures import ModelCase

    tally: Tally[str] = Tally()
    first_failure: dict[str, tuple[AnyCase, str, int]] = {}  # row -> (case, population, size) of the smallest
    measured = impl.properties()
    started = time.monotonic()
    where = _Where()

    def on_call() -> None:
        now = time.monotonic()
        if progress is not None and now - where.shown >= PROGRESS_INTERVAL:
            where.shown = now
            progress(f"conformance {impl.name}: {where.text}, {len(caller.calls) + len(caller.errors)} calls, "
                     f"{now - started:.0f} s")

    caller = _Caller(impl, call_timeout, on_call)
    total = sum(sizes[a][0] for a in impl.architectures) * len(POPULATIONS)
    done = 0
    for architecture in impl.architectures:
        networks, points = sizes[architecture]
        layout = {(prop, population): subset for prop, subset, population in _layout(impl, architecture)}
        for name in POPULATIONS:
            for index, (case, net) in enumerate(_cases_of(architecture, name, networks, points, seed)):
                done += 1
                population_text = name if architecture == "mlp" else f"{architecture}_{name}"
                where.text = f"network {done}/{total} ({population_text})"
                tally.new_cluster()
                outcomes = evaluate_case(impl, case, name, seed=seed + index, caller=caller, net=net)
                for prop, (holds, counted) in outcomes.items():
                    subset = layout[(prop, name)] if (prop, name) in layout else layout[(prop, None)]
                    row = conformance_name(impl, prop, subset)
                    tally.add(row, holds, counted)
                    if bool((counted & ~holds).any()):
                        if isinstance(case, ModelCase):
                            size = sum(p.numel() for p in case.model.parameters()) + case.x.numel()
                        else:
                            size = sum(p.numel() for p in case.net.parameters())
                        if row not in first_failure or size < first_failure[row][2]:
                            first_failure[row] = (case, name, size)
    timed_out = any("longer than the limit" in error for error in caller.errors)
    rates: dict[str, Rate] = {}
    descriptions: dict[str, str] = {}
    examples: dict[str, str] = {}
    keys: dict[str, RateKey] = {}
    #: (architecture, population) -> the first shrunk image case (tried first for the other rows)
    shrunk: dict[tuple[str, str], AnyCase] = {}
    for prop, subset in measured:
        key = conformance_key(impl, prop, subset)
        row = str(key)
        keys[row] = key
        rates[row] = tally.rate(row, confidence)
        where_text = f", {SUBSETS[subset]}" if subset else ""
        descriptions[row] = f"{impl.name} (claims {_rule_text(impl)}): {OUTCOMES[prop]}{where_text}"
        if row in first_failure and shrink_failures:
            case, population_name, _ = first_failure[row]
            where.text = f"shrinking the counterexample of {prop}"
            architecture = _architecture_of(case)
            reused = shrunk.get((architecture, population_name))
            if timed_out:
                small = case
            elif (
                architecture != "mlp"
                and reused is not None
                and _fails(impl, reused, population_name, prop, call_timeout)
            ):
                small = reused  # a CNN / residual net shrunk for another row of this population fails this one too
            else:
                small = shrink(impl, case, population_name, prop, call_timeout=call_timeout)
                shrunk.setdefault((architecture, population_name), small)
            examples[row] = describe_failure(impl, small, prop, call_timeout)
    return ConformanceResult(impl, rates, descriptions, examples, keys)


def _rule_text(impl: Implementation) -> str:
    rules = [repr(r) for r in impl._rules]
    return rules[0] if len(rules) == 1 else f"{rules[0]} at the input, " + ", ".join(rules[1:]) + " above"


def record(property_report: Recorder, result: ConformanceResult) -> None:
    """Put ``result``'s rates (and counterexamples) into the property report, one row each."""
    for row, rate in result.rates.items():
        # the terminal table shows where an implementation breaks; every row is in the report
        property_report.rate(result.keys.get(row, row), rate, result.descriptions[row],
                             summary=rate.successes < rate.trials, example=result.examples.get(row))
