"""Vectorised property evaluators: what holds at every root of a decomposition.

All roots of all points of one layer are evaluated in one batched pass
through ``f_k`` (streamed over chunks of points to bound memory): outputs,
exact gradients (closed form, masks times weights) and ReLU patterns.
Nothing here loops over points or neurons.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from dtd import Decomposition, ReLUNetwork
from dtd.tolerances import PROPERTY_ATOL, pattern_tol

__all__ = [
    "RootOutcomes",
    "root_outcomes",
    "root_equation_residual",
    "conservation_residual",
    "DEFAULT_CHUNK_ELEMENTS",
]

#: Roots are evaluated in chunks of points holding about this many root
#: coordinates (points x neurons x input width): ~32 MiB per float64 tensor.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class RootOutcomes:
    """Per-root (``(batch, J)``) and per-point (``(batch,)``) outcomes at layer ``k``.

    Root-level booleans are only meaningful where :attr:`valid` is True;
    use :meth:`considered` to select roots and :meth:`per_point` to reduce.

    Attributes
    ----------
    output_at_input
        ``f_k(a)`` ``(batch,)``.
    output_at_root
        ``f_k(root_j)`` ``(batch, J)``.
    gradient_difference
        ``max_i |grad f_k(root_j) - grad f_k(a)|_i`` ``(batch, J)``.
    gradient_mean_abs_difference
        ``mean_i |grad f_k(root_j) - grad f_k(a)|_i`` ``(batch, J)``.
    zero_output
        ``|f_k(root_j)| <= atol``: the root zeroes the explained output.
    output_unchanged
        ``f_k(a) - f_k(root_j) < atol``: the seed notebook's own test.
    gradient_match
        ``gradient_difference <= atol``.
    region_match
        The root lies in the closure of the input's linear region of
        ``f_k``: the same ReLU state as the input for every hidden neuron
        of the layers ``>= k`` and for the explained output neuron (other
        output neurons do not enter ``f``); a neuron with
        ``|z| <= pattern_tol`` at the root or the input matches either state.
    in_domain
        ``root_j >= -atol`` in every coordinate (inputs are non-negative).
    valid, carries_relevance
        From the decomposition: the root exists; ``R_j != 0``.
    """

    layer: int
    atol: float
    output_at_input: torch.Tensor
    output_at_root: torch.Tensor
    gradient_difference: torch.Tensor
    gradient_mean_abs_difference: torch.Tensor
    zero_output: torch.Tensor
    output_unchanged: torch.Tensor
    gradient_match: torch.Tensor
    region_match: torch.Tensor
    in_domain: torch.Tensor
    valid: torch.Tensor
    carries_relevance: torch.Tensor

    #: the root-level boolean outcomes, in report order
    OUTCOMES = ("zero_output", "output_unchanged", "gradient_match", "region_match", "in_domain")

    def considered(self, include_trivial: bool = True) -> torch.Tensor:
        """``(batch, J)``: valid roots, optionally only those of neurons that carry relevance."""
        return self.valid if include_trivial else self.valid & self.carries_relevance

    def per_point(self, outcome: str, include_trivial: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether *all* considered roots of each point satisfy ``outcome``.

        Returns ``(holds, has_roots)``, both ``(batch,)``; a point without
        considered roots has ``has_roots = False`` and must not be counted.
        """
        values = getattr(self, outcome)
        mask = self.considered(include_trivial)
        return (values | ~mask).all(1), mask.any(1)


def _chunk_points(n_points: int, per_point: int, chunk_elements: int) -> int:
    return max(1, min(n_points, chunk_elements // max(per_point, 1)))


def _region_match(z_roots, z_input, net: ReLUNetwork, layer: int, n_roots: int, output: int):
    """Whether each root shares the input's linear region of ``f_k`` (closure)."""
    tol = pattern_tol(z_input[0].dtype)
    match = torch.ones(z_input[0].shape[0], n_roots, dtype=torch.bool, device=z_input[0].device)
    last = len(z_input) - 1
    for offset, (zr, za) in enumerate(zip(z_roots, z_input)):
        if not net.has_relu(layer + offset):
            continue
        if offset == last:  # other output neurons do not enter f
            zr, za = zr[:, output : output + 1], za[:, output : output + 1]
        zr = zr.reshape(za.shape[0], n_roots, -1)
        za = za.unsqueeze(1)
        same = ((zr > 0) == (za > 0)) | (zr.abs() <= tol) | (za.abs() <= tol)
        match &= same.all(-1)
    return match


def root_outcomes(
    net: ReLUNetwork,
    dec: Decomposition,
    *,
    layer: int = 0,
    output: Optional[int] = None,
    atol: float = PROPERTY_ATOL,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> RootOutcomes:
    """Evaluate the DTD promises at every root of layer ``layer`` of ``dec``.

    Parameters
    ----------
    net, dec
        The network and a decomposition of it.
    layer
        ``k``; roots live in the input space of layer ``k`` and are judged
        with ``f_k``, the network from layer ``k`` up to the output.
    output
        The explained output (default: the decomposition's).
    atol
        Tolerance of the questions (default the notebook's 1e-6).
    chunk_elements
        Memory bound: points are processed in chunks of about this many
        root coordinates.
    """
    if not isinstance(dec, Decomposition):
        raise TypeError(f"dec must be a dtd.Decomposition, got {type(dec).__name__}")
    net.check_layer(layer)
    output = dec.output if output is None else net.check_output(output)
    if not (isinstance(atol, (int, float)) and not isinstance(atol, bool) and atol >= 0):
        raise ValueError(f"atol must be a number >= 0, got {atol!r}")
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements must be a positive int, got {chunk_elements!r}")
    lay = dec.layers[layer]
    if lay.input.shape[1] != net.layers[layer].in_features:
        raise ValueError("the decomposition does not belong to this network (layer widths differ)")

    n_points, n_roots, width = lay.roots.shape
    chunk = _chunk_points(n_points, n_roots * max(width, max(net.sizes[layer:])), chunk_elements)
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("f_a", "f_r", "gmax", "gmean", "region")}
    for start in range(0, n_points, chunk):
        a = lay.input[start : start + chunk]
        roots = lay.roots[start : start + chunk]
        z_a, f_a, g_a = net.evaluate(a, output, from_layer=layer)
        z_r, f_r, g_r = net.evaluate(roots.reshape(-1, width), output, from_layer=layer)
        diff = (g_r.reshape(a.shape[0], n_roots, width) - g_a.unsqueeze(1)).abs()
        parts["f_a"].append(f_a)
        parts["f_r"].append(f_r.reshape(a.shape[0], n_roots))
        parts["gmax"].append(diff.amax(-1))
        parts["gmean"].append(diff.mean(-1))
        parts["region"].append(_region_match(z_r, z_a, net, layer, n_roots, output))
    f_a, f_r, gmax, gmean, region = (torch.cat(parts[key]) for key in ("f_a", "f_r", "gmax", "gmean", "region"))
    return RootOutcomes(
        layer=layer,
        atol=float(atol),
        output_at_input=f_a,
        output_at_root=f_r,
        gradient_difference=gmax,
        gradient_mean_abs_difference=gmean,
        zero_output=f_r.abs() <= atol,
        output_unchanged=(f_a.unsqueeze(1) - f_r) < atol,
        gradient_match=gmax <= atol,
        region_match=region,
        in_domain=(lay.roots >= -atol).all(-1),
        valid=lay.root_valid,
        carries_relevance=lay.carries_relevance,
    )


def root_equation_residual(net: ReLUNetwork, dec: Decomposition, layer: int) -> torch.Tensor:
    """``(batch, J)``: ``|w_j . (a - root_j) - R_j|`` relative to the terms' scale (0 for invalid roots).

    Values above :func:`dtd.tolerances.equation_rtol` mean the root
    equation fails.
    """
    lay = dec.layers[layer]
    weight = net.weight(layer)
    delta = lay.input.unsqueeze(1) - lay.roots
    reached = torch.einsum("njd,jd->nj", delta, weight)
    scale = torch.einsum("njd,jd->nj", delta.abs(), weight.abs()) + lay.upper_relevance.abs()
    residual = (reached - lay.upper_relevance).abs() / scale.clamp_min(1.0)
    return torch.where(lay.root_valid, residual, torch.zeros_like(residual))


def conservation_residual(dec: Decomposition, layer: int) -> torch.Tensor:
    """``(batch,)``: ``|sum_i R_i - sum_j R_j|`` over valid roots, relative to ``max(1, sum_j |R_j|)``."""
    lay = dec.layers[layer]
    upper = torch.where(lay.root_valid, lay.upper_relevance, torch.zeros_like(lay.upper_relevance))
    scale = upper.abs().sum(1).clamp_min(1.0)
    return (lay.relevance.sum(1) - upper.sum(1)).abs() / scale

