"""Class insensitivity with depth (Sixt, Granz & Landgraf, *When Explanations Lie*, ICML 2020).

The claim: z+ (and alpha-beta) relevance converges with depth to one
direction whatever is explained, because each layer's backward map is a
non-negative, column-normalised matrix and products of such matrices converge
to rank one; LRP-0 (gradient x input) does not converge.

Measured here, per point: the cosine similarity of two input relevances of
the same point -- pair ``outputs``: the relevance of two different explained
outputs (outputs 0 and 1 of a generated network; a subject's predicted class
and its runner-up), at points where both outputs are positive; pair
``random``: the relevance of two random non-negative vectors (i.i.d. uniform
``[0, 1)``) injected at the top layer, at every point.  A point is
``insensitive`` when the cosine is at least
:data:`properties.measure.thresholds.INSENSITIVE_COSINE`; a point whose relevance is
all zero (no cosine) is left out and counted.

* :func:`depth_sweep`: generated networks (torch's default init, every layer
  :data:`WIDTH` wide, :data:`OUTPUTS` outputs, outputs 0 and 1 both positive
  at one of the drawn inputs at least) of each depth 1-10, every
  rule variant of the ``generated`` sweep; rates clustered by network;
  ``insensitivity.{rule}.depth{d}.{pair}.insensitive``.
* :func:`vgg16_simulation`: the paper's simulation -- random matrices with
  VGG-16's backward shapes (:data:`VGG16_WIDTHS`, per layer its channel
  count, then the classifier's widths), non-negative vs Gaussian; the cosine
  of pairs of columns of the product of the top ``d`` matrices;
  ``insensitivity.vgg16_simulation.depth16.columns.insensitive.{nonnegative|gaussian}``.
* :func:`subject_insensitivity`: a trained subject's rules plus LRP-0 (``x``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import dtd
from dtd import rules as R
from dtd.threads import one_thread
from dtd.validation import check_int, check_seed

from ..generate import variants as V
from ..measure.keys import RateKey, describe
from ..measure.stats import DEFAULT_CONFIDENCE, Rate
from ..measure.thresholds import INSENSITIVE_COSINE
from .common import Findings, Series, dense_network, relevance_from_top
from .similarity import cosine, median_interval

if TYPE_CHECKING:
    from ..subjects.subject import Subject

__all__ = ["DEPTHS", "WIDTH", "OUTPUTS", "VGG16_WIDTHS", "SIMULATION", "SweepResult", "depth_sweep", "vgg16_simulation",
           "subject_insensitivity", "FIGURE", "SIMULATION_FIGURE"]

#: depths (number of layers) of the generated networks
DEPTHS = tuple(range(1, 11))
#: width of every layer of the generated networks (their input size too)
WIDTH = 16
#: initialisation of the generated networks: torch's default (zero-mean weights, as in the paper's argument; the
#: seed's ``dtd`` init makes most weights positive, so even LRP-0's backward maps are mostly non-negative)
INIT = "torch"
#: outputs of the generated networks (the ``outputs`` pair explains outputs 0 and 1)
OUTPUTS = 4
#: redraws of a generated network whose outputs 0 and 1 are never both positive
MAX_REDRAWS = 200
#: VGG-16's backward shapes: the input's 3 channels, each conv layer's channels, the classifier's widths
#: (the paper's simulation multiplies one random matrix per layer, of these consecutive sizes)
VGG16_WIDTHS = (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 4096, 4096, 1000)
#: the simulation's distributions of the matrices' entries (subset names of the rows)
SIMULATION = ("nonnegative", "gaussian")
#: explained columns (classes) per simulation run: every pair of them is compared
SIMULATION_COLUMNS = 8
FIGURE = "insensitivity_by_depth.png"
SIMULATION_FIGURE = "insensitivity_vgg16_simulation.png"
_PAIRS = ("outputs", "random")


@dataclasses.dataclass
class SweepResult:
    """Per (rule, depth, pair): the cosines each network contributed and its (insensitive, judged) counts."""

    cosines: dict[tuple[str, int, str], list[torch.Tensor]]  # (rule, depth, pair) -> (K,) tensors, one per network
    clusters: dict[tuple[str, int, str], list[tuple[int, int]]]  # (rule, depth, pair) -> (insensitive, judged) each
    undefined: dict[tuple[str, str], int]  # (rule, pair) -> points left out (all-zero relevance)
    dropped: int  # points of the outputs pair left out: output 0 or 1 not positive


def _networks(depth: int, count: int, n_points: int,
              seed: int) -> list[tuple[dtd.ReLUNetwork, torch.Tensor, torch.Tensor]]:
    """``count`` (network, inputs) pairs of one depth whose outputs 0 and 1 are both positive at one input at least
    (the ``outputs`` pair needs such points; a draw without is redrawn, at most :data:`MAX_REDRAWS` times a network)."""
    rng = np.random.default_rng([seed, depth])
    generator = torch.Generator().manual_seed(seed * 1000 + depth)
    found: list[tuple[dtd.ReLUNetwork, torch.Tensor, torch.Tensor]] = []
    while len(found) < count:
        for _ in range(MAX_REDRAWS):
            net = dtd.ReLUNetwork.random([WIDTH] * depth + [OUTPUTS], int(rng.integers(0, 2**31 - 1)), init=INIT,
                                         dtype=torch.float64)
            x = torch.rand(n_points, WIDTH, generator=generator, dtype=torch.float64)
            with torch.no_grad():
                y = net(x)
            if bool(((y[:, 0] > 0) & (y[:, 1] > 0)).any()):
                found.append((net, x, y))
                break
        else:
            raise ValueError(f"no depth-{depth} network with outputs 0 and 1 "
                             f"positive at a common input in {MAX_REDRAWS} draws")
    return found


def depth_sweep(*, n_networks: int, n_points: int, seed: int, depths: Sequence[int] = DEPTHS,
                variants: Sequence[V.Variant] | None = None) -> SweepResult:
    """Cosines of the two pairs for every rule variant on ``n_networks`` generated networks of each depth.

    Parameters
    ----------
    n_networks, n_points
        Networks per depth, uniform ``[0, 1)`` input points per network.
    seed
        Seeds the networks' and inputs' draws (local generators only).
    depths
        Depths to sweep (default :data:`DEPTHS`).
    variants
        Rule variants (default: the ``generated`` sweep's, :func:`dtd.rules.variants`).
    """
    n_networks = check_int(n_networks, "n_networks", minimum=1)
    n_points = check_int(n_points, "n_points", minimum=1)
    seed = check_seed(seed)
    variants = V.variants("generated") if variants is None else list(variants)
    result = SweepResult({}, {}, {}, 0)
    with one_thread():  # tiny matrices: threads only contend (10x slower on a busy 2-core machine)
        for depth in depths:
            _sweep_depth(result, int(depth), n_networks, n_points, seed, variants)
    return result


def _sweep_depth(result: SweepResult, depth: int, n_networks: int, n_points: int, seed: int,
                 variants: Sequence[V.Variant]) -> None:
    generator = torch.Generator().manual_seed(seed * 1000 + 500 + depth)
    for net, x, y in _networks(depth, n_networks, n_points, seed):
        live = (y[:, 0] > 0) & (y[:, 1] > 0)
        result.dropped += int((~live).sum())
        random_top = torch.rand(2, n_points, OUTPUTS, generator=generator, dtype=torch.float64)
        one_hot = torch.zeros(2, n_points, OUTPUTS, dtype=torch.float64)
        one_hot[0, :, 0], one_hot[1, :, 1] = y[:, 0], y[:, 1]
        # the four tops of a point in one batch: outputs 0 and 1, two random vectors
        tops = torch.cat([one_hot, random_top]).reshape(4 * n_points, OUTPUTS)
        xs = x.repeat(4, 1)
        for variant in variants:
            rel = relevance_from_top(net, xs, tops, variant.make(xs, net.n_layers)).reshape(4, n_points, WIDTH)
            for pair, (first, second), keep in (("outputs", (0, 1), live), ("random", (2, 3), torch.ones_like(live))):
                values, defined = cosine(rel[first], rel[second])
                judged = defined & keep
                where = (variant.label, int(depth), pair)
                result.cosines.setdefault(where, []).append(values[judged])
                result.clusters.setdefault(where, []).append(
                    (int((values[judged] >= INSENSITIVE_COSINE).sum()), int(judged.sum())))
                undefined = (variant.label, pair)
                result.undefined[undefined] = result.undefined.get(undefined, 0) + int((keep & ~defined).sum())


def sweep_findings(result: SweepResult, *, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> Findings:
    """The sweep's rates, counts and figure."""
    found = Findings()
    rules = list(dict.fromkeys(rule for rule, _, _ in result.clusters))
    depths = sorted({depth for _, depth, _ in result.clusters})
    panels: list[dict[str, Any]] = []
    for pair in _PAIRS:
        medians: dict[str, Series] = {}
        shares: dict[str, Series] = {}
        for rule in rules:
            m: Series = {"x": [], "y": [], "low": [], "high": []}
            s: Series = {"x": [], "y": [], "low": [], "high": []}
            for depth in depths:
                key = RateKey("insensitivity", "insensitive", rule=rule, depth=depth, pair=pair)
                rate = Rate.from_clusters(result.clusters[(rule, depth, pair)], confidence)
                found.add(key, rate, describe(key) + " [intervals clustered by network]")
                median, low, high = median_interval(result.cosines[(rule, depth, pair)], confidence, seed=seed)
                if median is not None:
                    for series, values in ((m, (median, low, high)), (s, (rate.rate, *rate.interval))):
                        series["x"].append(depth)
                        for name, value in zip(("y", "low", "high"), values, strict=True):
                            series[name].append(value)
            medians[rule], shares[rule] = m, s
        what = "two explained outputs (0 and 1)" if pair == "outputs" else "two random non-negative top relevances"
        panels.append({"title": f"median cosine, {what}", "ylabel": "cosine", "ylim": [-1.05, 1.05], "series": medians})
        panels.append({"title": f"insensitive share (cosine >= {INSENSITIVE_COSINE:g}), {what}",
                       "ylabel": "share of points", "ylim": [-0.05, 1.05], "series": shares})
    for (rule, pair), n in result.undefined.items():
        if n:
            found.counts[f"insensitivity, {rule}, {pair}: points left out (all-zero relevance)"] = n
    found.counts["insensitivity: points left out of the outputs pair (output 0 or 1 not positive)"] = result.dropped
    found.plots.append(("lines", (FIGURE, "Class insensitivity with depth, generated networks", panels),
                        {"xlabel": "depth (layers)", "caption": (
                            f"Generated networks (torch init, width {WIDTH}, {OUTPUTS} outputs), per depth "
                            "and rule: the median cosine of the two input relevances of a point (band: "
                            "cluster-bootstrap interval over networks) and the share of points with cosine "
                            f">= {INSENSITIVE_COSINE:g} (band: Wilson interval clustered by network).")}))
    return found


# --------------------------------------------------------------------------- the paper's simulation
def vgg16_simulation(*, runs: int, seed: int, confidence: float = DEFAULT_CONFIDENCE,
                     widths: Sequence[int] = VGG16_WIDTHS, columns: int = SIMULATION_COLUMNS) -> Findings:
    """Cosine of the columns of products of random matrices with VGG-16's backward shapes.

    Each run draws one matrix per layer, ``(widths[l], widths[l + 1])``, with
    i.i.d. uniform ``[0, 1)`` (``nonnegative``) or standard normal
    (``gaussian``) entries, and multiplies them from the top down onto
    ``columns`` distinct unit vectors of the top (classes): after ``d``
    matrices each class has a column of the product of the top ``d``.  Every
    pair of those columns is compared; the rate row counts the pairs with
    cosine at least :data:`~properties.measure.thresholds.INSENSITIVE_COSINE` after
    all matrices (clustered by run), the figure the median cosine by depth.
    """
    runs = check_int(runs, "runs", minimum=1)
    seed = check_seed(seed)
    widths = [check_int(w, "every width", minimum=1) for w in widths]
    columns = check_int(columns, "columns", minimum=2)
    if columns > widths[-1]:
        raise ValueError(f"columns ({columns}) exceeds the top width {widths[-1]}")
    depth = len(widths) - 1
    found = Findings()
    series = {}
    upper = torch.triu_indices(columns, columns, offset=1)
    for kind in SIMULATION:
        generator = torch.Generator().manual_seed(seed * 7 + SIMULATION.index(kind))
        per_depth: dict[int, list[torch.Tensor]] = {d: [] for d in range(1, depth + 1)}
        clusters: list[tuple[int, int]] = []
        for _ in range(runs):
            vectors = None
            for d, layer in enumerate(range(depth - 1, -1, -1), start=1):
                shape = (widths[layer], widths[layer + 1]) if vectors is not None else (widths[layer], columns)
                draw = torch.rand if kind == "nonnegative" else torch.randn
                # the top matrix: only the explained classes' columns (i.i.d., so any `columns` of them alike)
                matrix = draw(*shape, generator=generator)
                vectors = matrix if vectors is None else matrix @ vectors
                vectors = vectors / vectors.norm(dim=0, keepdim=True).clamp_min(1e-30)  # direction only: no overflow
                gram = (vectors.T.double() @ vectors.double()).clamp(-1, 1)
                per_depth[d].append(gram[upper[0], upper[1]])
            final = per_depth[depth][-1]
            clusters.append((int((final >= INSENSITIVE_COSINE).sum()), int(final.numel())))
        key = RateKey("insensitivity", "insensitive", subject="vgg16_simulation", depth=depth, pair="columns",
                      subset=kind)
        found.add(key, Rate.from_clusters(clusters, confidence),
                  f"the paper's simulation, {SUBSETS_TEXT[kind]} with VGG-16's backward shapes "
                  f"{tuple(widths)}: pairs of columns of the product of all {depth} matrices "
                  f"({columns} classes, {runs} runs, clustered by run) with cosine >= {INSENSITIVE_COSINE:g}")
        line: Series = {"x": [], "y": [], "low": [], "high": []}
        for d, values in per_depth.items():
            median, low, high = median_interval(values, confidence, seed=seed)
            line["x"].append(d)
            line["y"].append(median)
            line["low"].append(low)
            line["high"].append(high)
        series[kind] = line
    found.plots.append(("lines", (SIMULATION_FIGURE,
                                  "The paper's simulation: random matrices with VGG-16's backward shapes",
                                  [{"title": "median cosine of two columns of the product", "ylabel": "cosine",
                                    "ylim": [-1.05, 1.05], "series": series}]),
                        {"xlabel": "matrices multiplied from the top (depth)", "caption": (
                            f"Products of the top d of {depth} random matrices of VGG-16's backward "
                            f"shapes; median over pairs of {columns} columns and {runs} runs (band: "
                            "bootstrap interval over runs). Non-negative entries (as z+'s backward "
                            "maps) converge to one direction; Gaussian entries do not.")}))
    return found


SUBSETS_TEXT = {"nonnegative": "uniform [0, 1) matrices", "gaussian": "standard normal matrices"}


# --------------------------------------------------------------------------- trained subjects
def subject_insensitivity(subject: Subject, *, seed: int = 0, confidence: float = DEFAULT_CONFIDENCE) -> Findings:
    """``insensitivity.{name}.{rule}.{outputs|random}.insensitive`` for the subject's rules and LRP-0 (``x``).

    Pair ``outputs``: each point's explained output and its runner-up (the
    second-largest output), at points where the runner-up is positive; pair
    ``random``: two uniform ``[0, 1)`` vectors at the top layer, every point.
    """
    net, name = dense_network(subject, "insensitivity"), subject.name
    x = subject.inputs.flatten(1)
    generator = torch.Generator().manual_seed(check_seed(seed))
    with torch.no_grad():
        y = net(x)
    n, n_out = y.shape
    found = Findings()
    if n_out < 2:
        found.counts[f"insensitivity, subject {name}: not measured (one output)"] = 0
        return found
    runner = y.scatter(1, subject.outputs.unsqueeze(1), float("-inf")).argmax(1)
    live = y.gather(1, runner.unsqueeze(1)).squeeze(1) > 0
    tops = torch.zeros(4, n, n_out, dtype=y.dtype)
    tops[0].scatter_(1, subject.outputs.unsqueeze(1), y.gather(1, subject.outputs.unsqueeze(1)))
    tops[1].scatter_(1, runner.unsqueeze(1), y.gather(1, runner.unsqueeze(1)))
    tops[2:] = torch.rand(2, n, n_out, generator=generator, dtype=torch.float64).to(y.dtype)
    rules = list(subject.rules)
    if "x" not in {label for label, _ in rules}:
        rules.append(("x", R.LRP0()))
    for label, rule in rules:
        rel = relevance_from_top(net, x.repeat(4, 1), tops.reshape(4 * n, n_out), rule).reshape(4, n, -1)
        for pair, (first, second), keep in (("outputs", (0, 1), live), ("random", (2, 3), torch.ones_like(live))):
            values, defined = cosine(rel[first], rel[second])
            judged = defined & keep
            key = RateKey("insensitivity", "insensitive", subject=name, rule=label, pair=pair)
            found.add(key, Rate.from_mask(values >= INSENSITIVE_COSINE, judged, confidence=confidence),
                      describe(key) + f" [{int(judged.sum())} of {n} points judged]")
            found.counts[f"insensitivity, subject {name}, {label}, {pair}: median cosine"] = (
                float(values[judged].median()) if bool(judged.any()) else 0.0)
    return found
