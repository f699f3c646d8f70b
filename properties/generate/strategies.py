"""Hypothesis strategies: ReLU networks, non-negative inputs, rules, cases.

Hypothesis only draws *structure and integer seeds*; weights and inputs are
built from those seeds with local generators, so its bias towards small or
special values touches the shape of a network, never its weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st

from dtd import ReLUNetwork
from dtd import rules as R
from dtd.network import INITS
from dtd.validation import check_int, check_number, check_seed

from . import variants as V

__all__ = ["check_bounds", "Bounds",
           "networks", "nonnegative_inputs", "rules", "variants", "cases", "sample_cases", "CaseSpace", "Case",
           "SEED_MAX"]

#: seeds are drawn from [0, SEED_MAX]
SEED_MAX = 2**31 - 1

Bounds = int | tuple[int, int]


def check_bounds(value: Bounds, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a ``(min, max)`` pair of ints, as a checked ``(min, max)`` pair (TypeError / ValueError naming
    ``name``)."""
    if not isinstance(value, tuple):
        value = (value, value)
    if len(value) != 2:
        raise TypeError(f"{name} must be an int or a (min, max) pair of ints, got {value!r}")
    low, high = (check_int(v, name) for v in value)
    if low < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if low > high:
        raise ValueError(f"{name} has min > max: {value!r}")
    return low, high


def _pair(value: Bounds) -> tuple[int, int]:
    """Bounds already checked (:func:`check_bounds`) as a ``(min, max)`` pair."""
    return value if isinstance(value, tuple) else (value, value)


def _check_dtype(dtype: object) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")


@st.composite
def networks(
    draw: st.DrawFn,
    /,
    *,
    depth: Bounds = (1, 5),
    width: Bounds = (1, 24),
    input_size: Bounds = (1, 24),
    outputs: Bounds = (1, 4),
    init: str | Sequence[str] = INITS,
    dtype: torch.dtype = torch.float64,
) -> ReLUNetwork:
    """Random :class:`dtd.ReLUNetwork` s.

    ``depth`` counts Linear layers (the last has ``outputs`` neurons);
    ``width`` bounds every hidden layer.  Weights come from
    ``ReLUNetwork.random(sizes, seed, init=...)`` with a drawn seed.

    Shrinks towards: the shallowest, narrowest network with the smallest
    input and output sizes, the first ``init`` listed, seed 0.
    """
    depth_b = check_bounds(depth, "depth")
    width_b = check_bounds(width, "width")
    input_b = check_bounds(input_size, "input_size")
    output_b = check_bounds(outputs, "outputs")
    inits = (init,) if isinstance(init, str) else tuple(init)
    if not inits or any(i not in INITS for i in inits):
        raise ValueError(f"init must be one of {INITS} or a non-empty sequence of them, got {init!r}")
    _check_dtype(dtype)

    n_layers = draw(st.integers(*depth_b), label="depth")
    sizes = [draw(st.integers(*input_b), label="input_size")]
    sizes += [draw(st.integers(*width_b), label="width") for _ in range(n_layers - 1)]
    sizes.append(draw(st.integers(*output_b), label="outputs"))
    chosen = draw(st.sampled_from(inits), label="init")
    seed = draw(st.integers(0, SEED_MAX), label="seed")
    return ReLUNetwork.random(sizes, seed, init=chosen, dtype=dtype)


@st.composite
def nonnegative_inputs(
    draw: st.DrawFn, /, net: ReLUNetwork, *, n: Bounds = (1, 64), output: int = 0, min_output: float = 0.0
) -> torch.Tensor:
    """``(n, D)`` inputs drawn like the seed's (``|N(0, I)|``) with ``f(x)[output] > min_output``.

    Rejects the example (``hypothesis.assume``) when the network's output
    cannot exceed ``min_output`` within :meth:`ReLUNetwork.sample_inputs`'s
    draw budget.  Shrinks towards: fewer points, seed 0.
    """
    if not isinstance(net, ReLUNetwork):
        raise TypeError(f"net must be a dtd.ReLUNetwork, got {type(net).__name__}")
    n_b = check_bounds(n, "n")
    net.check_output(output)
    count = draw(st.integers(*n_b), label="n")
    seed = draw(st.integers(0, SEED_MAX), label="input seed")
    try:
        x = net.sample_inputs(count, output=output, min_output=min_output, seed=seed)
    except ValueError:
        assume(False)
    return x


def variants(sweep: str = "must_hold") -> st.SearchStrategy[V.Variant]:
    """One of the registered rule variants that ``sweep`` runs (see :func:`properties.generate.variants.variants`).

    Build its rule(s) for a case with ``variant.make(case.x, case.net.n_layers)``.  Shrinks towards the
    first registered variant (z+).
    """
    return st.sampled_from(V.variants(sweep))


def rules(*, include_pinv: bool = False) -> st.SearchStrategy[R.Rule]:
    """One of the registered neuron rules as the must-hold sweep runs them (z+, w2, gamma 0.1/1/10, x), and
    optionally pinv; variants that need the data (zB) are left to :func:`variants`.  Shrinks towards z+."""
    options = [v.make(None, 1) for v in V.variants("must_hold") if not v.input_layer_only]
    return st.sampled_from([rule for rule in options if include_pinv or not isinstance(rule, R.Pinv)])


@dataclasses.dataclass(frozen=True)
class Case:
    """One generated experiment: a network, inputs and the explained output."""

    net: ReLUNetwork
    x: torch.Tensor
    output: int

    def describe(self) -> str:
        """Sizes and weights, for failure messages of shrunk examples."""
        lines = [f"network sizes {self.net.sizes} (final_relu={self.net.final_relu}), output {self.output}, "
                 f"{self.x.shape[0]} input(s)"]
        with torch.no_grad():
            for k in range(self.net.n_layers):
                lines.append(f"  W{k} = {self.net.weight(k).tolist()}")
                lines.append(f"  b{k} = {self.net.bias(k).tolist()}")
        lines.append(f"  x = {self.x.tolist()}")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CaseSpace:
    """The bounds of generated cases, validated once.

    Shared by :func:`cases` (hypothesis draws, for must-hold properties that
    shrink) and :func:`sample_cases` (uniform i.i.d. draws, for rates that
    estimate a well-defined population).
    """

    depth: Bounds = (1, 5)
    width: Bounds = (1, 24)
    input_size: Bounds = (1, 24)
    outputs: Bounds = (1, 4)
    n: Bounds = (1, 64)
    min_output: float = 0.0
    init: str | Sequence[str] = INITS
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        for name in ("depth", "width", "input_size", "outputs", "n"):
            object.__setattr__(self, name, check_bounds(getattr(self, name), name))
        inits = (self.init,) if isinstance(self.init, str) else tuple(self.init)
        if not inits or any(i not in INITS for i in inits):
            raise ValueError(f"init must be one of {INITS} or a non-empty sequence of them, got {self.init!r}")
        object.__setattr__(self, "init", inits)
        _check_dtype(self.dtype)
        check_number(self.min_output, "min_output")

    def build(self, sizes: list[int], init: str, seed: int, output: int, n: int, input_seed: int) -> Case | None:
        """The case these draws describe, or None when ``output`` is dead (no input reaches ``min_output``)."""
        net = ReLUNetwork.random(sizes, seed, init=init, dtype=self.dtype)
        try:
            x = net.sample_inputs(n, output=output, min_output=self.min_output, seed=input_seed)
        except ValueError:
            return None
        return Case(net, x, output)


@st.composite
def cases(draw: st.DrawFn, /, **bounds: Any) -> Case:
    """A network, an explained output and inputs with ``f(x)[output] > min_output``.

    Keyword arguments are the fields of :class:`CaseSpace` (``depth``,
    ``width``, ``input_size``, ``outputs``, ``n``, ``min_output``, ``init``,
    ``dtype``).  Examples whose output is dead are rejected.  Shrinks towards
    the smallest network (see :func:`networks`), output 0 and a single input.
    """
    space = CaseSpace(**bounds)
    net = draw(networks(depth=space.depth, width=space.width, input_size=space.input_size, outputs=space.outputs,
                        init=space.init, dtype=space.dtype))
    output = draw(st.integers(0, net.out_features - 1), label="output")
    x = draw(nonnegative_inputs(net, n=space.n, output=output, min_output=space.min_output))
    return Case(net, x, output)


def sample_cases(count: int, *, seed: int, max_tries: int = 100, **bounds: Any) -> list[Case]:
    """``count`` cases drawn uniformly and independently from a :class:`CaseSpace`.

    Every integer (depth, each width, input and output size, the explained
    output, the number of points) is uniform within its bounds, ``init``
    uniform over the listed ones, weight and input seeds uniform.  A draw
    whose explained output is dead is redrawn, so the population is "cases
    with a live output"; more than ``max_tries`` redraws for one case is a
    ``ValueError``.  Reproducible from ``seed`` alone; never touches torch's
    global RNG.
    """
    space = CaseSpace(**bounds)
    check_int(count, "count", minimum=0)
    rng = np.random.default_rng(check_seed(seed))

    def uniform(bounds: Bounds) -> int:
        low, high = _pair(bounds)
        return int(rng.integers(low, high + 1))

    result: list[Case] = []
    while len(result) < count:
        for _ in range(max_tries):
            depth = uniform(space.depth)
            sizes = (
                [uniform(space.input_size)]
                + [uniform(space.width) for _ in range(depth - 1)]
                + [uniform(space.outputs)]
            )
            init = space.init[int(rng.integers(len(space.init)))]
            net_seed, input_seed = (int(v) for v in rng.integers(0, SEED_MAX, size=2))
            case = space.build(sizes, init, net_seed, uniform((0, sizes[-1] - 1)), uniform(space.n), input_seed)
            if case is not None:
                result.append(case)
                break
        else:
            raise ValueError(f"no case with a live output in {max_tries} draws from {space}")
    return result
