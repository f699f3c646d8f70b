"""The field's own LRP rules, as the libraries define them: slow float64 references an implementation can claim.

DTD's rules (:mod:`dtd.rules`) ignore biases; the rules LRP libraries ship do
not.  A *claim* names one of those rules, and :func:`reference` computes it
layer by layer on the original model, in float64, with dense matrices, so an
implementation's result can be judged by what its library promises
(``Implementation(..., claims=...)`` in :mod:`properties.conformance`).

Per ``Linear`` (and ``Conv2d``, as its dense matrix ``W`` and per-output bias
``b``) with input ``a``, upper relevance ``R`` and ``stab(d) = d + e sign(d)``
(``sign(0) = 1``, the libraries' convention; ``a+ = max(a, 0)``, ``a- = min(a, 0)``):

:class:`Epsilon` ``(epsilon)``
    ``z = W a + b``; ``R_in = a * W^T (R / stab(z))`` (captum's ``EpsilonRule``,
    zennit's ``Epsilon``: the bias in the denominator; the bias' share is lost).
:class:`ZPlus` ``(bias, stabilizer)``
    ``z = W+ a+ + W- a- + b'``; ``R_in = a+ * W+^T (R / stab(z)) + a- * W-^T (R / stab(z))``
    with ``b' = b+`` (``bias="positive"``: zennit's ``ZPlus``), ``b' = b``
    (``"all"``: captum's ``Alpha1_Beta0_Rule()``, which clamps the weight only) or
    ``b' = 0`` (``"none"``: ``set_bias_to_zero=True``, DTD's z+).
:class:`AlphaBeta` ``(alpha, beta, stabilizer)``
    ``p = W+ a+ + W- a- + b+``, ``n = W- a+ + W+ a- + b-``;
    ``R_in = alpha (a+ W+^T(R/stab(p)) + a- W-^T(R/stab(p))) - beta (a+ W-^T(R/stab(n)) + a- W+^T(R/stab(n)))``
    (zennit's ``AlphaBeta``; ``alpha - beta = 1``).
:class:`Flat` ``(stabilizer)``
    every weight and input 1, no bias: ``R_in_i = sum_j 1[i feeds j] R_j / stab(n_j)``
    with ``n_j`` the number of inputs feeding ``j`` (zennit's ``Flat``).

Between those layers: ReLU passes relevance unchanged (zennit's composites put
``Pass()`` on activations; it matters for ``Flat``, whose relevance reaches
inactive neurons); max pooling passes it to the argmax;
average pooling splits it in proportion to the inputs with the claim's
stabiliser (zennit's ``Norm``, captum's ``EpsilonRule``); ``Flatten`` reshapes;
batch norm directly after a ``Conv2d`` is merged into it (zennit's
``SequentialMergeBatchNorm``, exact when the batch norm's ``eps`` is 0).  The
relevance entering the top is the explained output's value.

Notes
-----
The rules are those of Bach et al. 2015 (epsilon, alpha-beta), Montavon et
al. 2017 (z+) and Lapuschkin et al. 2019 (flat), in the libraries' sign and
stabiliser conventions (zennit's ``rules.py``, captum's ``lrp_rules.py``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dtd.validation import check_int, check_number

__all__ = ["Claim", "Epsilon", "ZPlus", "AlphaBeta", "Flat", "Claims", "ensure_claims", "reference", "CLAIM_RTOL"]

#: equal "up to rounding": the reference and a library compute the same divisions in a different order
CLAIM_RTOL = 1e-9


def _stab(d: torch.Tensor, epsilon: float) -> torch.Tensor:
    return d + epsilon * torch.where(d >= 0, 1.0, -1.0).to(d)


def _divide(relevance: torch.Tensor, d: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``R / stab(d)``; 0 where the stabilised denominator is 0 (only possible with ``epsilon = 0``: nothing passes)."""
    d = _stab(d, epsilon)
    return torch.where(d != 0, relevance / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))


class Claim:
    """One library rule for a Linear/Conv2d layer: :meth:`propagate` maps upper relevance to the layer's input."""

    @property
    def stabilizer(self) -> float:
        """What the rule adds to its denominators (a field of every claim)."""
        raise NotImplementedError

    def propagate(self, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relevance: torch.Tensor,
                  connectivity: torch.Tensor) -> torch.Tensor:
        """``R_in (N, D)`` from ``a (N, D)``, ``weight (J, D)``, ``bias (J,)``, ``R (N, J)`` and ``connectivity (J, D)``
        (1 where input ``i`` feeds output ``j``: all ones for a Linear, the kernel's footprint for a conv)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Epsilon(Claim):
    """LRP-epsilon with the bias in the denominator (captum ``EpsilonRule``, zennit ``Epsilon``)."""

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        check_number(self.epsilon, "epsilon", minimum=0.0)

    @property
    def stabilizer(self) -> float:
        return self.epsilon

    def propagate(self, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relevance: torch.Tensor,
                  connectivity: torch.Tensor) -> torch.Tensor:
        z = a @ weight.T + bias
        return a * (_divide(relevance, z, self.epsilon) @ weight)


_BIASES = ("positive", "all", "none")


@dataclasses.dataclass(frozen=True)
class ZPlus(Claim):
    """z+ with the bias kept: ``"positive"`` part (zennit ``ZPlus``), ``"all"`` of it (captum
    ``Alpha1_Beta0_Rule``) or ``"none"``."""

    bias: str = "positive"
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        if self.bias not in _BIASES:
            raise ValueError(f"bias must be one of {_BIASES}, got {self.bias!r}")
        check_number(self.stabilizer, "stabilizer", minimum=0.0)

    def propagate(self, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relevance: torch.Tensor,
                  connectivity: torch.Tensor) -> torch.Tensor:
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        kept = {"positive": bias.clamp(min=0), "all": bias, "none": torch.zeros_like(bias)}[self.bias]
        ratio = _divide(relevance, ap @ wp.T + an @ wn.T + kept, self.stabilizer)
        return ap * (ratio @ wp) + an * (ratio @ wn)


@dataclasses.dataclass(frozen=True)
class AlphaBeta(Claim):
    """zennit's ``AlphaBeta(alpha, beta)``: positive and negative contributions, each with its bias part."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        check_number(self.alpha, "alpha", minimum=0.0)
        check_number(self.beta, "beta", minimum=0.0)
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError("alpha - beta must be 1 (relevance is conserved), "
                             f"got alpha={self.alpha}, beta={self.beta}")
        check_number(self.stabilizer, "stabilizer", minimum=0.0)

    def propagate(self, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relevance: torch.Tensor,
                  connectivity: torch.Tensor) -> torch.Tensor:
        wp, wn = weight.clamp(min=0), weight.clamp(max=0)
        ap, an = a.clamp(min=0), a.clamp(max=0)
        positive = _divide(relevance, ap @ wp.T + an @ wn.T + bias.clamp(min=0), self.stabilizer)
        negative = _divide(relevance, ap @ wn.T + an @ wp.T + bias.clamp(max=0), self.stabilizer)
        return (self.alpha * (ap * (positive @ wp) + an * (positive @ wn))
                - self.beta * (ap * (negative @ wn) + an * (negative @ wp)))


@dataclasses.dataclass(frozen=True)
class Flat(Claim):
    """zennit's ``Flat``: relevance spread evenly over each output's inputs."""

    stabilizer: float = 1e-6

    def __post_init__(self) -> None:
        check_number(self.stabilizer, "stabilizer", minimum=0.0)

    def propagate(self, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relevance: torch.Tensor,
                  connectivity: torch.Tensor) -> torch.Tensor:
        counts = connectivity.sum(1)  # (J,): the inputs feeding each output
        return _divide(relevance, counts, self.stabilizer) @ connectivity


@dataclasses.dataclass(frozen=True)
class Claims:
    """Per-layer claims: ``first`` on the first Linear/Conv2d, ``rest`` on every other."""

    first: Claim
    rest: Claim

    def for_layer(self, k: int) -> Claim:
        return self.first if k == 0 else self.rest

    def reference(self, model: nn.Module, x: torch.Tensor, output: int) -> torch.Tensor:
        """:func:`reference` with these claims."""
        return reference(model, x, output, self)


ClaimsLike = Claim | Claims | Sequence[Claim]


def ensure_claims(value: ClaimsLike) -> Claims:
    """A :class:`Claims` from a claim (every layer), a ``[first, rest]`` pair or a
    :class:`Claims`; ``TypeError`` otherwise."""
    if isinstance(value, Claims):
        return value
    if isinstance(value, Claim):
        return Claims(value, value)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) in (1, 2)
        and all(isinstance(c, Claim) for c in value)
    ):
        return Claims(value[0], value[-1])
    raise TypeError(f"claims must be a properties.conformance.claims rule (Epsilon, ZPlus, AlphaBeta, Flat), a "
                    f"[first, rest] pair of them or a Claims, got {value!r}")


def _conv_matrix(conv: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """Dense ``(W (J, D), b (J,), output shape)`` of a Conv2d (or a conv + batch norm pair) on inputs of ``shape``."""
    size = 1
    for s in shape:
        size *= s
    with torch.no_grad():
        zero = conv(torch.zeros((1, *shape), dtype=torch.float64))
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        columns = conv(basis).reshape(size, -1) - zero.reshape(1, -1)
    return columns.T.contiguous(), zero.reshape(-1), zero.shape[1:]


def _merged(model: nn.Module) -> list[nn.Module]:
    """The model's leaves in forward order with each batch norm after a Conv2d folded into a copy of that conv."""
    leaves = [m for m in model.modules() if not list(m.children())]
    out: list[nn.Module] = []
    for module in leaves:
        if isinstance(module, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
            out[-1] = nn.Sequential(out[-1], module)  # the pair, applied as one affine map
        else:
            out.append(module)
    return out


def _connectivity(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """``(J, D)``: 1 where input ``i`` feeds output ``j`` (the conv with every weight
    1, no bias, as zennit's Flat sees it)."""
    conv = module[0] if isinstance(module, nn.Sequential) else module
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"a connectivity is a Conv2d's, got {type(conv).__name__}")
    ones = copy.deepcopy(conv)
    with torch.no_grad():
        ones.weight.fill_(1.0)
        if ones.bias is not None:
            ones.bias.zero_()
    return _conv_matrix(ones, shape)[0]


class _Affine(NamedTuple):
    """A Linear/Conv2d step of :func:`reference`'s forward pass, as a dense map."""

    weight: torch.Tensor
    bias: torch.Tensor
    connectivity: torch.Tensor
    layer: int


def reference(model: nn.Module, x: torch.Tensor, output: int, claims: ClaimsLike, *,
              pooling_stabilizer: float | None = None) -> torch.Tensor:
    """The claimed rules' input relevance ``(batch, *input_shape)`` for ``model``'s output ``output`` at ``x``.

    ``model``: an ``nn.Sequential`` (nested ones too) of ``Linear``, ``Conv2d``
    (each optionally followed by ``BatchNorm2d``), ``ReLU``, ``MaxPool2d``,
    ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``; computed on a float64
    copy (the caller's model is not touched), returned in ``x``'s dtype.
    Average pooling divides with ``pooling_stabilizer`` (default: the
    stabiliser of the claim above the first layer; zennit's ``Norm()`` uses
    1e-6, captum's ``EpsilonRule()`` 1e-9).
    """
    claims = ensure_claims(claims)
    pool_eps = (
        claims.rest.stabilizer
        if pooling_stabilizer is None
        else check_number(pooling_stabilizer, "pooling_stabilizer", minimum=0.0)
    )
    if not isinstance(model, nn.Sequential):
        raise TypeError("the claim references take an nn.Sequential of "
                        f"Linear/Conv2d/BatchNorm2d/ReLU/pooling/Flatten, got {type(model).__name__}")
    check_int(output, "output", minimum=0)
    model = copy.deepcopy(model).double()
    a = x.detach().to(torch.float64)
    tape: list[tuple[torch.Tensor, _Affine | nn.Module]] = []  # each step's input and what it is
    layer = 0
    with torch.no_grad():
        for module in _merged(model):
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Sequential)):
                out_shape: tuple[int, ...]
                if isinstance(module, nn.Linear):
                    weight = module.weight.detach()
                    bias = (
                        module.bias.detach()
                        if module.bias is not None
                        else torch.zeros(module.out_features, dtype=torch.float64)
                    )
                    out_shape, connectivity = (module.out_features,), torch.ones_like(weight)
                else:
                    weight, bias, out_shape = _conv_matrix(module, tuple(a.shape[1:]))
                    connectivity = _connectivity(module, tuple(a.shape[1:]))
                tape.append((a, _Affine(weight, bias, connectivity, layer)))
                layer += 1
                a = (a.reshape(a.shape[0], -1) @ weight.T + bias).reshape(a.shape[0], *out_shape)
            elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.Flatten, nn.ReLU,
                                     nn.Identity)):
                tape.append((a, module))
                a = module(a)
            else:
                raise TypeError(f"the claim references do not model {type(module).__name__}")
    if output >= a.shape[1]:
        raise ValueError(f"output {output} out of range: the model has {a.shape[1]} outputs")
    relevance = torch.zeros_like(a)
    relevance[:, output] = a[:, output]
    for a, step in reversed(tape):
        n = a.shape[0]
        if isinstance(step, _Affine):
            weight, bias, connectivity, k = step
            lower = claims.for_layer(k).propagate(a.reshape(n, -1), weight, bias, relevance.reshape(n, -1),
                                                  connectivity)
            relevance = lower.reshape(a.shape)
        else:
            relevance = _through(step, a, relevance, pool_eps)
    return relevance.to(x.dtype)


def _through(module: nn.Module, a: torch.Tensor, relevance: torch.Tensor, stabilizer: float) -> torch.Tensor:
    if isinstance(module, (nn.ReLU, nn.Identity)):
        return relevance
    if isinstance(module, nn.Flatten):
        return relevance.reshape(a.shape)
    if isinstance(module, nn.MaxPool2d):
        _, index = F.max_pool2d(a, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode,
                                return_indices=True)
        n, c = a.shape[:2]
        out = torch.zeros_like(a).reshape(n, c, -1)
        out.scatter_add_(2, index.reshape(n, c, -1), relevance.reshape(n, c, -1))
        return out.reshape(a.shape)
    # average pooling: R_i = a_i d(mean)/d(a_i) R / stab(mean) (zennit's Norm, captum's EpsilonRule)
    u = a.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        mean = module(u)
        (spread,) = torch.autograd.grad(mean, u, _divide(relevance, mean.detach(), stabilizer))
    return a * spread
