"""A user's model and data as a subject of the property suite.

:class:`Subject` holds a trained model, the points to explain and the rules
to judge; :func:`evaluate` asks DTD's questions of it -- the seed notebook's
questions at every layer's roots, conservation, the relevance accounting and
in-region root existence by exact LP -- and returns rates with intervals
clustered by point, counts and plot data; :meth:`SubjectResult.record`
writes them into the property report (``subject.{name}.{rule}.layer{k}.{outcome}``).
The model is lowered once, densely (:meth:`~dtd.ReLUNetwork.from_sequential`)
where it can be, else by the graph engine (:meth:`~dtd.ReLUNetwork.from_module`:
max pooling, residual sums, any piecewise-linear module); everything
downstream is the suite's own machinery, unchanged.

Which roots are counted
-----------------------
Every rate of a layer's roots counts the *valid roots of neurons that carry
relevance* (``R_j != 0``): a neuron without relevance gets the trivial root
``a``, which says nothing about DTD (the seed notebook counts them; its rates
are therefore higher).  ``root_exists`` counts, among the relevance-carrying
neurons, those whose root exists.  With ``neurons_per_point=K`` each point
contributes ``K`` uniformly drawn neurons of each layer
(:func:`properties.measure.checks.root_outcomes`), so the rates estimate the
exhaustive ones; intervals are clustered by point either way.

Parts
-----
The points are evaluated in consecutive parts of at most
``Subject(..., points_per_item=...)`` points (:func:`evaluate_part`); a part
holds raw tallies only (per-point clusters, counts, sums, plot values), so
:func:`merge_parts` gives exactly the rates and clustered intervals of
:func:`evaluate`, whichever processes evaluated the parts
(:mod:`properties.plugin.subjects` makes each part a test item for
pytest-xdist).  Part ``i`` draws its neurons from a generator seeded by the
seed and ``i``; a subject of one part draws exactly as before parts existed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import dtd
from dtd import rules as R
from dtd.decomposition import Decomposition
from dtd.lowering.capture import SelectLike
from dtd.outputs import is_weights
from dtd.threads import one_thread
from dtd.validation import check_int, check_seed

from ..generate import variants as V
from ..measure.checks import draw_neurons, root_outcomes
from ..measure.keys import LAYER_NAMES_SEPARATOR, OUTCOMES, RateKey, check_name, describe, layer_names_label
from ..measure.recorder import Recorder
from ..measure.stats import DEFAULT_CONFIDENCE, Rate
from ..measure.thresholds import CONSERVED_SHARE, ZERO_OUTPUT_ULPS, zero_output_tolerance

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["Subject", "SubjectResult", "SubjectPart", "evaluate", "evaluate_part", "merge_parts", "ITEM_WORK",
           "SMALL_MODEL_ACTIVATIONS", "ROOT_QUESTIONS", "REGION_POINTS", "REGION_NEURONS", "REGION_LP_ENTRIES",
           "HEATMAP_POINTS", "layer_names", "check_model"]

#: the root questions of every layer, in report order (fields of :class:`properties.measure.checks.RootOutcomes`)
ROOT_QUESTIONS = ("zero_output", "output_unchanged", "gradient_match", "region_match", "in_domain")
#: points (the first of each subject) whose roots get an exact in-region LP per layer and rule
REGION_POINTS = 12
#: relevance-carrying neurons drawn per such point and layer for the LP (each LP is a dense HiGHS solve)
REGION_NEURONS = 6
#: cap on the LP work per layer, in constraint-matrix entries summed over the LPs (rows: every neuron of the
#: layers >= k; columns: the layer's inputs): wide layers get fewer points and neurons; a layer whose single
#: LP exceeds it gets none (its region_root_exists is not measured and a count says so): one dense LP of a
#: 28x28 CNN's second conv layer (6272 inputs, 3146 rows) takes ~4 GB in the solver
REGION_LP_ENTRIES = 8_000_000
#: points shown in the relevance heatmaps of image inputs
HEATMAP_POINTS = 6
#: the work of one test item of a split subject (``points_per_item="auto"``), in activation entries the root
#: questions compute: per point, rule and layer, the drawn roots times (the layer's input + every activation f_k
#: recomputes); sized so that an item stays well under a minute on a busy 2-core machine (the digits ResNet,
#: 2 rules, 64 neurons: 0.44 million entries per point and rule, 225 points per item, about 0.08 s per point here;
#: a torchvision ResNet-18 at 224x224 with 16 neurons gets one point per item)
ITEM_WORK = 200_000_000
#: a model whose activations of one point hold at most this many entries is evaluated on one intra-op thread
SMALL_MODEL_ACTIVATIONS = 100_000

_NAME = re.compile(r"^[A-Za-z0-9_+\-]+$")

OutputsLike = str | int | tuple | Sequence[int] | torch.Tensor
#: a rule of a subject: a rule name or variant label, a rule object, or a ``(label, rule or per-layer rules)`` pair
RuleChoice = str | R.Rule | tuple[str, R.RuleLike | list[R.RuleLike] | tuple[R.RuleLike, ...]]
#: a resolved rule of a subject: its label and the rule (or one rule per layer)
LabelledRule = tuple[str, R.Rule | list[R.Rule]]


class Subject:
    """A model, the points to explain and the rules to judge it with.

    Parameters
    ----------
    name
        The subject's name in rate names (``subject.{name}....``): letters,
        digits, ``_``, ``+``, ``-``; no dots.
    model
        Any piecewise-linear ``nn.Module`` in eval mode: an ``nn.Sequential``
        that :meth:`dtd.ReLUNetwork.from_sequential` lowers densely within
        its memory budget (MLPs, small CNNs of Conv2d/AvgPool2d/BatchNorm/ReLU)
        is lowered that way, with every question including the exact LP
        existence rates; any other model (max pooling, residual blocks,
        torchvision VGG/ResNet, layers too large to hold densely) through the
        graph engine, :meth:`dtd.ReLUNetwork.from_module` (every question
        except the LP existence rates).  Lowered once, here; never modified.
    inputs
        ``(N, *input_shape)`` floating tensor of the points to explain
        (``(N, D)`` for an MLP, ``(N, C, H, W)`` for a CNN).  Copied.
    outputs
        Which output to explain at each point: ``"predicted"`` (each point's
        argmax of a ``(N, classes)`` output), an int (the same flattened
        output everywhere), a tuple: an index into the per-point output's
        shape (``(class, row, col)`` of a segmentation map; a tuple is never
        read as one index per point), a list or 1-D integer tensor of ``N``
        output indices (one per point), or a floating tensor of
        the per-point output's shape: weights ``w`` explaining ``sum(w * y)``
        at every point (a class's mask; :mod:`dtd.outputs`).  Points whose
        explained output is not positive carry no relevance and are left out
        (:attr:`n_dropped`); a ``ValueError`` if none is left.
    select
        Which of the model's outputs to explain when it returns several (a
        dict, a tuple, a Hugging Face ``ModelOutput``): a key, an index, a
        path or a callable, as :meth:`dtd.ReLUNetwork.from_module` takes it.
    rules
        The rules to judge, each a rule name (``"z+"``, ``"w2"``, ...), a
        variant label of :func:`properties.generate.variants.variants` (``"gamma1"``;
        ``"zB"``: zB at the input, z+ above), a :class:`dtd.rules.Rule`
        object, or a ``(label, rule or list of per-layer rules)`` pair.  The
        label names the rule in the report.
    input_box
        ``(low, high)``: the box the data live in (numbers or per-feature
        1-D tensors).  The ``zB`` recipe uses it at the input (default: the
        box ``[0, ceil(max)]`` of the inputs, from ``floor(min)`` where they are
        negative); inputs outside it are a ``ValueError``.
    neurons_per_point
        ``K``: neurons drawn per point and layer for the root questions
        (None: every neuron).
    max_points
        Explain at most this many points (the first eligible ones).
    findings
        Whether ``dtd-properties check`` / ``--dtd-subject`` also measures the
        field's findings on this subject (``insensitivity``, ``invariance``,
        ``randomisation``: :func:`properties.findings.evaluate_findings`);
        ``False`` for a model too large for them.
    points_per_item
        The points are evaluated in parts of at most this many
        (:meth:`part_range`); ``--dtd-subject`` makes each part one test
        item, so ``pytest -n auto`` and pytest-xdist's ``--tx`` hosts share
        one subject, and merges their raw tallies (:func:`merge_parts`) into
        the rates a serial run reports.  ``"auto"`` (default): as many points
        as :data:`ITEM_WORK` allows for this model, rules and neurons; None:
        one part.  The neuron draws of a part depend on the seed and the
        part's index, so the rates of a subject depend on its split (not on
        how its parts are spread over processes).
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        inputs: torch.Tensor,
        *,
        outputs: OutputsLike = "predicted",
        select: SelectLike = None,
        rules: str | R.Rule | Sequence[RuleChoice] = ("z+",),
        input_box: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
        neurons_per_point: int | None = 64,
        max_points: int | None = None,
        findings: bool = True,
        points_per_item: int | str | None = "auto",
    ) -> None:
        check_name(name, "name")  # the suite's one name rule (RateKey, Implementation)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (an nn.Sequential), got {type(model).__name__}")
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor of shape (N, *input_shape), got {type(inputs).__name__}")
        if not inputs.dtype.is_floating_point:
            raise TypeError(f"inputs must be a floating tensor, got dtype {inputs.dtype}")
        if inputs.dim() < 2:
            raise ValueError("inputs must have shape (N, *input_shape) with a "
                             f"batch dimension, got shape {tuple(inputs.shape)}")
        if inputs.shape[0] == 0:
            raise ValueError(f"inputs hold no point (shape {tuple(inputs.shape)}); give at least one point to explain")
        if not bool(torch.isfinite(inputs).all()):
            raise ValueError("inputs hold NaN or inf values")
        if max_points is not None:
            max_points = check_int(max_points, "max_points", minimum=1)
        if neurons_per_point is not None:
            neurons_per_point = check_int(neurons_per_point, "neurons_per_point", minimum=1)
        if not isinstance(findings, bool):
            raise TypeError(f"findings must be True or False, got {findings!r}")
        self.findings = findings
        self.name = name
        self.model = model
        self.neurons_per_point = neurons_per_point
        self.max_points = max_points
        x = inputs.detach().clone()
        self.input_shape = tuple(x.shape[1:])
        # lowered once; the lowering refuses what it cannot lower exactly (TypeError/ValueError naming the operation)
        self.network = _lower(model, self.input_shape, select)
        if self.network.dtype != x.dtype:
            raise TypeError(f"inputs are {x.dtype} but the model's parameters "
                            f"are {self.network.dtype}; convert one of them")
        #: the output weights explained at every point (None: an index)
        self.output_weights: torch.Tensor | None = None
        if is_weights(outputs):
            self.network = self.network.explaining(outputs)  # one output: sum(w * y)
            self.output_weights = outputs.detach().clone()
            outputs = 0
        elif isinstance(outputs, tuple):  # always an index into the output's shape (one per point: a list or tensor)
            outputs = self.network.check_output(outputs)
        if isinstance(outputs, str) and outputs == "predicted" and len(self.network.output_shape) != 1:
            raise ValueError(
                "outputs='predicted' takes each point's largest class of a (N, classes) output; "
                f"this model's output per point has shape {tuple(self.network.output_shape)}: "
                "give an index tuple (class, row, col) or weights"
            )
        with torch.no_grad():
            logits = self.network(x)
        explained = _explained_outputs(outputs, logits)
        value = logits.gather(1, explained.unsqueeze(1)).squeeze(1)
        keep = (value > 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            raise ValueError(
                f"no point has a positive explained output (outputs={_show_outputs(outputs)}, {x.shape[0]} points, "
                f"largest explained output {float(value.max()):.4g}): DTD explains a positive output; choose other "
                "points or outputs"
            )
        if max_points is not None:
            keep = keep[:max_points]
        self.n_dropped = int(x.shape[0] - (value > 0).sum())
        self.inputs = x[keep]
        self.outputs = explained[keep]
        self.input_box = _check_box(input_box, self.inputs)
        resolved = _resolve_rules(rules, self.inputs.flatten(1), self.network.n_layers, self.input_box)
        self.rules: tuple[LabelledRule, ...] = tuple(resolved)
        for label, rule in self.rules:
            try:  # the rules' domains (z+ and gamma need inputs >= 0 at every layer), up front
                if isinstance(self.network, dtd.GraphNetwork):
                    dtd.graph_decompose.check_domains(self.network, self.inputs, dtd.LinearRoots(rule))
                else:
                    dtd.decompose.checked_activations(self.network, self.inputs, int(self.outputs[0]),
                                                      dtd.LinearRoots(rule))
            except ValueError as error:
                if bool((self.inputs < 0).any()) and "negative" in str(error):
                    raise ValueError(
                        f"rule {label!r} cannot explain these inputs: they hold {int((self.inputs < 0).sum())} "
                        f"negative value(s) (min {float(self.inputs.min()):.4g}; normalised images?), and {label!r} "
                        "needs non-negative activations at the input. In a Subject, explain the input layer with "
                        "rules=('zB',) and the box your data live in, input_box=(low, high) (zB at the input, z+ "
                        "above; without input_box the box is [floor(min), ceil(max)] of these inputs), or "
                        "rules=('w2_first',) (w2 at the input, z+ above)") from None
                raise ValueError(f"rule {label!r} cannot explain these inputs: {error}") from None

        if points_per_item == "auto":
            points_per_item = _auto_points_per_item(self.network, len(self.rules), neurons_per_point)
        elif points_per_item is not None:
            if isinstance(points_per_item, str):
                raise ValueError(f"points_per_item must be a positive int, 'auto' or None, got {points_per_item!r}")
            points_per_item = check_int(points_per_item, "points_per_item", minimum=1)
        #: points per part (test item); None: one part
        self.points_per_item: int | None = points_per_item

    @property
    def n_parts(self) -> int:
        """How many parts (test items of ``--dtd-subject``) the points are evaluated in."""
        if self.points_per_item is None:
            return 1
        return max(1, -(-len(self.inputs) // self.points_per_item))

    def part_range(self, index: int) -> tuple[int, int]:
        """``(start, stop)``: the points of part ``index`` (consecutive, in the order of :attr:`inputs`)."""
        index = check_int(index, "index", minimum=0)
        if index >= self.n_parts:
            raise ValueError(f"subject {self.name} has {self.n_parts} part(s); "
                             f"index must be in [0, {self.n_parts - 1}], got {index}")
        if self.points_per_item is None:
            return 0, len(self.inputs)
        start = index * self.points_per_item
        return start, min(len(self.inputs), start + self.points_per_item)

    def __repr__(self) -> str:
        labels = [label for label, _ in self.rules]
        return f"Subject({self.name!r}, {len(self.inputs)} points of shape {self.input_shape}, rules={labels})"


#: modules that end a DTD layer, and modules that carry no layer of their own
_BOUNDARY = (nn.ReLU,)
_SHAPE_ONLY = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


def layer_names(model: nn.Module, n_layers: int) -> list[str] | None:
    """The model's modules behind each DTD layer (``"0 Linear"``, ``"3 AvgPool2d + 4 Conv2d"``), or None.

    A layer is the affine modules between two ReLUs (shape-only modules
    left out); None where the grouping does not give ``n_layers`` layers
    (a model the lowering reads differently).
    """
    leaves = [(name, module) for name, module in model.named_modules() if not list(module.children())]
    groups: list[list[str]] = []
    current: list[str] = []
    for name, module in leaves:
        if isinstance(module, _BOUNDARY):
            groups.append(current)
            current = []
        elif not isinstance(module, _SHAPE_ONLY):
            current.append(f"{name} {type(module).__name__}")
    groups.append(current)
    named = [" + ".join(g) for g in groups if g]
    return named if len(named) == n_layers else None


def check_model(model: nn.Module, input_shape: Sequence[int],
                select: SelectLike = None) -> dtd.ReLUNetwork | dtd.GraphNetwork:
    """Lower ``model`` as :class:`Subject` will, so a factory can refuse a model before it trains it.

    Call it on the untrained model at the top of a factory; it raises the
    ``TypeError`` / ``ValueError`` that ``Subject(...)`` would raise after
    training (naming the module DTD cannot lower) and returns the lowered
    network otherwise.  The model is not changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (an nn.Sequential), got {type(model).__name__}")
    return _lower(model, tuple(int(n) for n in input_shape), select)


def _lower(model: nn.Module, input_shape: tuple[int, ...],
           select: SelectLike = None) -> dtd.ReLUNetwork | dtd.GraphNetwork:
    """The model lowered exactly: densely by ``from_sequential`` where it can,
    else by the graph engine (``from_module``).

    A Sequential that ``from_sequential`` refuses only for what the graph
    engine handles (max pooling, a dense layer above its memory budget, a
    skip connection) goes to ``from_module``, which raises its own clear
    error for what is not piecewise linear.
    """
    if type(model) is nn.Sequential and select is None:
        try:
            return dtd.ReLUNetwork.from_sequential(model, input_shape=input_shape)
        except (TypeError, ValueError):
            pass
    return dtd.ReLUNetwork.from_module(model, input_shape, select=select)


def _auto_points_per_item(net: dtd.ReLUNetwork | dtd.GraphNetwork, n_rules: int, neurons: int | None) -> int:
    """Points per part within :data:`ITEM_WORK`: per point, rule and layer, the roots times what ``f_k`` recomputes."""
    work = 0
    for k in range(net.n_layers):
        if isinstance(net, dtd.GraphNetwork):
            width, above, n_neurons = (
                net.in_features(k),
                sum(math.prod(n.shape) for n in net.live_nodes(k)[1]),
                net.out_features_of(k),
            )
        else:
            width, above, n_neurons = net.sizes[k], sum(net.sizes[k + 1 :]), net.sizes[k + 1]
        work += min(n_neurons, neurons or n_neurons) * (width + above)
    return max(1, ITEM_WORK // max(1, n_rules * work))


def _show_outputs(outputs: OutputsLike) -> str:
    if isinstance(outputs, torch.Tensor):
        return f"tensor of shape {tuple(outputs.shape)}"
    return repr(outputs) if isinstance(outputs, (str, int)) else f"{type(outputs).__name__} of {len(outputs)}"


def _explained_outputs(outputs: OutputsLike, logits: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64 output index per point."""
    n, n_out = logits.shape
    if isinstance(outputs, str):
        if outputs != "predicted":
            raise ValueError(f"outputs must be 'predicted', an int or a sequence of ints, got {outputs!r}")
        return logits.argmax(1)
    if isinstance(outputs, bool):
        raise TypeError(f"outputs must be 'predicted', an int or a sequence of ints, got {outputs!r}")
    if isinstance(outputs, int):
        if not 0 <= outputs < n_out:
            raise ValueError(f"outputs must be an output index in [0, {n_out - 1}], got {outputs}")
        return torch.full((n,), outputs, dtype=torch.int64, device=logits.device)
    if isinstance(outputs, torch.Tensor):
        if outputs.dim() > 1:
            raise TypeError(f"outputs as a {outputs.dtype} tensor of shape {tuple(outputs.shape)} is neither one index "
                            "per point (a 1-D integer tensor) nor weights: a mask over the output must be floating "
                            "point, e.g. outputs=mask.float()")
        if outputs.dtype.is_floating_point or outputs.dtype == torch.bool or outputs.dim() != 1:
            raise TypeError("outputs as a tensor must be a 1-D integer tensor, got "
                            f"dtype {outputs.dtype}, shape {tuple(outputs.shape)}")
        values = outputs.detach().to(dtype=torch.int64, device=logits.device).clone()
    elif isinstance(outputs, Sequence):
        if any(isinstance(o, bool) or not isinstance(o, int) for o in outputs):
            raise TypeError(f"outputs as a sequence must hold ints, got {list(outputs)[:5]}...")
        values = torch.tensor(list(outputs), dtype=torch.int64, device=logits.device)
    else:
        raise TypeError(f"outputs must be 'predicted', an int or a sequence of ints, got {type(outputs).__name__}")
    if values.shape[0] != n:
        raise ValueError(f"outputs holds {values.shape[0]} indices for {n} points; give one per point")
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_out):
        raise ValueError(f"every entry of outputs must be in [0, {n_out - 1}], got "
                         f"values in [{int(values.min())}, {int(values.max())}]")
    return values


def _check_box(box: object, inputs: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor] | None:
    if box is None:
        return None
    if not isinstance(box, (tuple, list)) or len(box) != 2:
        raise TypeError(f"input_box must be a (low, high) pair, got {box!r}")
    low_bound, high_bound = box
    rule = R.ZB(low_bound, high_bound)  # checks the bounds' types, finiteness and low <= high
    flat = inputs.flatten(1).double()
    low, high = rule.low.to(flat.device), rule.high.to(flat.device)
    if bool((flat < low).any() | (flat > high).any()):
        raise ValueError(f"inputs lie outside input_box: values in [{float(flat.min()):g}, {float(flat.max()):g}]")
    return low_bound, high_bound


def _resolve_rules(rules: str | R.Rule | Sequence[RuleChoice], x_flat: torch.Tensor, n_layers: int,
                   box: tuple[float | torch.Tensor, float | torch.Tensor] | None) -> list[LabelledRule]:
    """``[(label, rule or per-layer rules)]`` from the user's specification."""
    choices: Sequence[RuleChoice] = [rules] if isinstance(rules, (str, R.Rule)) else rules
    if not isinstance(choices, Sequence) or len(choices) == 0:
        raise ValueError(f"rules must be a non-empty sequence of rules, got {rules!r}")
    variants = {v.label: v for entry in V.declared() for v in entry.variants}
    resolved: list[LabelledRule] = []
    for spec in choices:
        rule: R.Rule | list[R.Rule]
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
            label, given = spec
            rule = [R.Rule.ensure(r) for r in given] if isinstance(given, (list, tuple)) else R.Rule.ensure(given)
        elif isinstance(spec, str):
            label = spec
            if spec == "zB":  # the data's box: given, or [0, ceil(max)] (from floor(min) where inputs are negative)
                floor = min(0.0, float(torch.floor(x_flat.min())))
                low, high = box if box is not None else (floor, R.ZB.for_data(x_flat).high.item())
                rule = [R.ZB(low, high)] + [R.ZPlus()] * (n_layers - 1)
            elif spec in variants:
                rule = variants[spec].rules_for(x_flat, n_layers)
            else:
                rule = R.Rule.ensure(spec)
        elif isinstance(spec, R.Rule):
            label = next((v.label for v in variants.values() if v.rules_for(x_flat, n_layers) == spec), type(spec).name)
            rule = spec
        else:
            raise TypeError("every rule must be a name, a dtd.rules.Rule or a "
                            f"(label, rule) pair, got {type(spec).__name__} {spec!r}")
        if not _NAME.match(label):
            raise ValueError(f"rule label {label!r} must be letters, digits, '_', '+' or '-' (no dots)")
        if label in (seen for seen, _ in resolved):
            raise ValueError(f"rule label {label!r} appears twice in rules")
        resolved.append((label, rule))
    return resolved


# --------------------------------------------------------------------------- evaluation
#: a histogram's ``(file, title, series, xlabel, caption)``; an image grid's ``(file, title, rows, columns, caption)``
Histogram = tuple[str, str, dict[str, list[float]], str, str]
ImageGrid = tuple[str, str, list[dict[str, Any]], list[str], str]


@dataclasses.dataclass
class SubjectResult:
    """What :func:`evaluate` found: rates (with descriptions), counts and plot data."""

    subject: str  # the subject's name
    rates: dict[RateKey, tuple[Rate, str]]  # RateKey -> (Rate, description)
    counts: dict[str, float]  # label -> number
    histograms: list[Histogram]  # (file, title, series, xlabel, caption)
    image_grids: list[ImageGrid]  # (file, title, rows, columns, caption)
    layer_names: list[str] | None = None  # the model's modules behind each DTD layer, or None

    def record(self, property_report: Recorder, *, summary: bool = True) -> None:
        """Write everything into the property report (rates are gated by the run's baseline)."""
        for key, (rate, description) in self.rates.items():
            show = summary and key.outcome in ("conserved", "gradient_match", "region_match") and key.layer in (None, 0)
            property_report.rate(key, rate, description, summary=show)
        for label, value in self.counts.items():
            property_report.count(label, value)
        if self.layer_names is not None:
            property_report.note(layer_names_label(self.subject),
                                 LAYER_NAMES_SEPARATOR.join(f"{k}: {n}" for k, n in enumerate(self.layer_names)))
        for file, title, series, xlabel, caption in self.histograms:
            property_report.histogram(file, title, series, xlabel=xlabel, caption=caption)
        for file, title, rows, columns, caption in self.image_grids:
            property_report.images(file, title, rows, columns, caption=caption)


def _file(subject: str, label: str, what: str) -> str:
    return f"subject_{subject}_{label.replace('+', 'plus')}_{what}.png"


def _progress(total: int, desc: str) -> tqdm[Any] | None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; a missing bar is no error
        return None
    return tqdm(total=total, desc=desc, unit="step", disable=None, leave=False)


@dataclasses.dataclass
class SubjectPart:
    """The raw tallies of one part of a subject's points (:func:`evaluate_part`), merged exactly by :func:`merge_parts`.

    Everything is a count, a sum or a list of values, never a rate, so the
    rates and clustered intervals of merged parts are exactly those of
    :func:`evaluate`.  :meth:`to_json` / :meth:`from_json` carry a part
    between processes (pytest-xdist workers) without changing a bit.
    """

    #: what merging needs of the subject itself (:func:`_info`): name, rules, sizes, heatmap inputs
    info: dict[str, Any]
    index: int
    n_points: int
    #: (rule label, layer, outcome) -> [(successes, trials) per point]
    clusters: dict[tuple[str, int, str], list[tuple[int, int]]]
    conserved: dict[str, tuple[int, int]]  # rule label -> (points conserved, points)
    #: (rule label, layer, field) -> relevance summed over the part's points
    books: dict[tuple[str, int, str], float]
    ratios: dict[str, float]  # rule label -> sum over the part's points of sum_i R_i / f(x)
    series: dict[tuple[str, str], list[float]]  # (rule label, series) -> values, for the histograms
    #: rule label -> {point index: relevance as nested lists} for points < HEATMAP_POINTS
    heat: dict[str, dict[int, Any]]
    # point index -> (input as nested lists, output) of those points
    shown: dict[int, tuple[Any, int]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """The part as JSON text (floats written exactly)."""
        return json.dumps({
            "info": self.info, "index": self.index, "n_points": self.n_points,
            "clusters": [[list(key), pairs] for key, pairs in self.clusters.items()],
            "conserved": self.conserved, "books": [[list(key), value] for key, value in self.books.items()],
            "ratios": self.ratios, "series": [[list(key), values] for key, values in self.series.items()],
            "heat": {label: [[i, rel] for i, rel in rows.items()] for label, rows in self.heat.items()},
            "shown": [[i, image, output] for i, (image, output) in self.shown.items()],
        })

    @classmethod
    def from_json(cls, text: str) -> SubjectPart:
        data = json.loads(text)
        return cls(
            data["info"], data["index"], data["n_points"],
            {tuple(key): [tuple(p) for p in pairs] for key, pairs in data["clusters"]},
            {label: tuple(v) for label, v in data["conserved"].items()},
            {tuple(key): value for key, value in data["books"]}, data["ratios"],
            {tuple(key): values for key, values in data["series"]},
            {label: {int(i): rel for i, rel in rows} for label, rows in data["heat"].items()},
            {int(i): (image, output) for i, image, output in data["shown"]},
        )


def _part_seed(seed: int, index: int) -> int:
    """The neuron draws' seed of part ``index`` (part 0: ``seed`` itself, so an unsplit subject draws as before)."""
    return (seed + index * _PART_SEED_STRIDE) % 2**63


#: spacing of the parts' draw seeds (a prime: parts of nearby seeds do not share draws)
_PART_SEED_STRIDE = 1_000_003


def _threads(net: dtd.ReLUNetwork | dtd.GraphNetwork) -> contextlib.AbstractContextManager[Any]:
    """One intra-op thread for a model of small activations (torch's threads only contend there: 11x slower on a busy
    2-core machine for the digits ResNet), the caller's setting otherwise."""
    sizes = (
        net.sizes
        if isinstance(net, dtd.ReLUNetwork)
        else [math.prod(node.shape) for node in net.nodes if hasattr(node, "shape")]
    )
    return one_thread() if sum(sizes) <= SMALL_MODEL_ACTIVATIONS else contextlib.nullcontext()


def evaluate_part(subject: Subject, index: int, *, seed: int = 0) -> SubjectPart:
    """Ask DTD's questions of part ``index`` of ``subject``'s points (:meth:`Subject.part_range`): raw tallies.

    The neuron draws of part ``i`` come from a generator seeded by ``seed``
    and ``i`` alone, so a part gives the same tallies in any process and
    order; :func:`merge_parts` turns the parts into the subject's result.
    """
    if not isinstance(subject, Subject):
        raise TypeError(f"subject must be a properties.Subject, got {type(subject).__name__}")
    seed = check_seed(seed)
    index = check_int(index, "index", minimum=0)
    if index >= subject.n_parts:
        raise ValueError(f"subject {subject.name} has {subject.n_parts} part(s) "
                         f"(points_per_item={subject.points_per_item}); index "
                         f"must be in [0, {subject.n_parts - 1}], got {index}")
    start, stop = subject.part_range(index)
    net = subject.network
    inputs, outputs = subject.inputs[start:stop], subject.outputs[start:stop]
    groups = [(c, (outputs == c).nonzero().squeeze(1)) for c in sorted(set(outputs.tolist()))]
    part = SubjectPart(_info(subject), index, stop - start, {}, {}, {}, {}, {}, {})
    if len(subject.input_shape) >= 2:
        for i in range(start, min(stop, HEATMAP_POINTS)):
            part.shown[i] = (subject.inputs[i].tolist(), int(subject.outputs[i]))
    lp_plan = {k: _lp_plan(net, k) for k in range(net.n_layers)}
    bar = _progress(len(subject.rules) * len(groups) * net.n_layers, f"subject {subject.name}" +
                    (f" part {index + 1}/{subject.n_parts}" if subject.n_parts > 1 else ""))
    try:
        with torch.no_grad(), _threads(net):
            for label, rule in subject.rules:
                generator = torch.Generator().manual_seed(_part_seed(seed, index))
                conserved = [0, 0]
                ratio = 0.0
                heat = part.heat.setdefault(label, {}) if len(subject.input_shape) >= 2 else None
                # the exact LPs go to the subject's first points: this part's share of them, per layer
                region_left = {k: min(stop - start, max(0, points - start)) for k, (points, _) in lp_plan.items()}
                for c, where in groups:
                    x = inputs[where]
                    dec = dtd.train_free(net, x, root_finder=dtd.LinearRoots(rule), output=c)
                    if heat is not None:
                        for row, i in enumerate((where + start).tolist()):
                            if i < HEATMAP_POINTS:
                                heat[i] = dec.relevance[row].reshape(x.shape[1:]).tolist()
                    total = dec.relevance.reshape(len(x), -1).sum(1)
                    held = (total - dec.output_value).abs() <= CONSERVED_SHARE * dec.output_value
                    conserved[0] += int(held.sum())
                    conserved[1] += int(held.numel())
                    ratio += float((total / dec.output_value).double().sum())
                    for acc in dtd.accounting(net, dec).layers:
                        for field in ("upper", "conserved", "lost", "bias_share"):
                            key = (label, acc.index, field)
                            part.books[key] = part.books.get(key, 0.0) + float(getattr(acc, field).sum())
                    for k in range(net.n_layers):
                        n_region = min(region_left[k], len(x))
                        region_left[k] -= n_region
                        out = root_outcomes(net, dec, layer=k, neurons=subject.neurons_per_point,
                                            generator=generator if subject.neurons_per_point else None)
                        counted = out.valid & out.carries_relevance
                        # |f(root)| judged up to the rounding of f(x) in the model's dtype (thresholds.ZERO_OUTPUT_ULPS)
                        zero = out.output_at_root.abs() <= zero_output_tolerance(out.output_at_input).unsqueeze(1)
                        for outcome in ROOT_QUESTIONS:
                            holds = (zero if outcome == "zero_output" else getattr(out, outcome)) & counted
                            part.clusters.setdefault((label, k, outcome), []).extend(
                                zip(holds.sum(1).tolist(), counted.sum(1).tolist(), strict=True))
                        part.clusters.setdefault((label, k, "root_exists"), []).extend(
                            zip(counted.sum(1).tolist(), out.carries_relevance.sum(1).tolist(), strict=True))
                        if k == 0:
                            diffs = (out.output_at_input.unsqueeze(1) - out.output_at_root)[counted]
                            means = (out.gradient_mean_abs_difference * counted).sum(1) / counted.sum(1).clamp_min(1)
                            for name, values in (("diffs", diffs), ("f_x", out.output_at_input), ("gradient", means)):
                                part.series.setdefault((label, name), []).extend(values.tolist())
                        if n_region:
                            part.clusters.setdefault((label, k, "region_root_exists"), []).extend(
                                _region_roots(net, dec, k, c, n_region, lp_plan[k][1], generator))
                        if bar is not None:
                            bar.update()
                part.conserved[label] = (conserved[0], conserved[1])
                part.ratios[label] = ratio
    finally:
        if bar is not None:
            bar.close()
    return part


def _info(subject: Subject) -> dict[str, Any]:
    """What :func:`merge_parts` needs of a subject, as JSON values (a controlling process never builds the subject)."""
    net = subject.network
    names = net.layer_names() if isinstance(net, dtd.GraphNetwork) else layer_names(subject.model, net.n_layers)
    digest = hashlib.sha256()
    weights = [subject.output_weights] if subject.output_weights is not None else []
    for tensor in [subject.inputs, subject.outputs] + weights + list(subject.model.state_dict().values()):
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "name": subject.name, "rules": [label for label, _ in subject.rules], "n_points": len(subject.inputs),
        "n_dropped": subject.n_dropped, "neurons_per_point": subject.neurons_per_point,
        "points_per_item": subject.points_per_item, "n_parts": subject.n_parts,
        "graph": isinstance(net, dtd.GraphNetwork),
        "lp_plan": [list(_lp_plan(net, k)) for k in range(net.n_layers)], "input_shape": list(subject.input_shape),
        "layer_names": names, "dtype": str(subject.inputs.dtype).replace("torch.", ""),
        "fingerprint": digest.hexdigest(),  # the points, outputs and parameters: parts of one subject only
    }


def merge_parts(parts: Sequence[SubjectPart], *, confidence: float = DEFAULT_CONFIDENCE) -> SubjectResult:
    """A subject's result from every one of its parts (any order): clusters concatenated, counts and sums added.

    Raises ``ValueError`` unless ``parts`` holds each part of one subject
    exactly once (the parts say which subject and how many parts it has).
    """
    parts = sorted(parts, key=lambda p: p.index)
    if not parts or any(not isinstance(p, SubjectPart) for p in parts):
        raise TypeError(f"parts must be a non-empty sequence of SubjectPart (from evaluate_part), got {parts!r:.80}")
    info = parts[0].info
    indices = [p.index for p in parts]
    if any(p.info["name"] != info["name"] for p in parts) or indices != list(range(info["n_parts"])):
        raise ValueError(f"subject {info['name']} has {info['n_parts']} part(s); got parts {indices} of "
                         f"{sorted({p.info['name'] for p in parts})}: give each part of one subject exactly once")
    if any(p.info != info for p in parts):
        raise ValueError(f"the parts of subject {info['name']} come from different models or points (their "
                         "fingerprints of the points, outputs and parameters differ): its factory must build the same "
                         "subject in every process (load a checkpoint, or train with a fixed seed and thread count)")
    subject = _Info(info)
    name = subject.name
    n_points = subject.n_points
    rates: dict[RateKey, tuple[Rate, str]] = {}
    counts: dict[str, float] = {}
    histograms: list[Histogram] = []
    tail = (f"{subject.neurons_per_point} neurons drawn per point and layer" if subject.neurons_per_point
            else "every neuron") + f", {n_points} points, intervals clustered by point"
    lp_plan = {k: (plan[0], plan[1]) for k, plan in enumerate(subject.lp_plan)}
    for label in subject.rules:
        if subject.graph:
            counts[f"subject {name}, {label}: region_root_exists not measured (the exact in-region LPs need the "
                   "dense layers of from_sequential; this model was lowered by the graph engine)"] = 0
        else:
            for k, (points, _) in lp_plan.items():
                if points == 0:
                    counts[f"subject {name}, {label}, layer {k}: region_root_exists not measured (one LP exceeds "
                           f"REGION_LP_ENTRIES = {REGION_LP_ENTRIES:,} constraint entries)"] = 0
        keys = [key for key in parts[0].clusters if key[0] == label]
        for _, k, outcome in keys:
            pairs = [pair for p in parts for pair in p.clusters.get((label, k, outcome), [])]
            key = RateKey("subject", outcome, subject=name, rule=label, layer=k)
            if outcome == "region_root_exists":
                points, neurons = lp_plan[k]
                how = (f"relevance-carrying neurons, the first {points} points x {neurons} drawn neurons "
                       "at this layer, one exact LP each")
            elif outcome == "root_exists":
                how = f"among relevance-carrying neurons, {tail}"
            elif outcome == "zero_output":
                how = (f"valid roots of relevance-carrying neurons, |f(root)| <= max(1e-6, {ZERO_OUTPUT_ULPS:g} ulp "
                       f"of |f(x)|), {tail}")
            else:
                how = f"valid roots of relevance-carrying neurons, {tail}"
            rates[key] = (Rate.from_clusters(pairs, confidence), f"{describe(key)} [{how}]")
        key = RateKey("subject", "conserved", subject=name, rule=label)
        held = [sum(p.conserved[label][i] for p in parts) for i in (0, 1)]
        rates[key] = (Rate(held[0], held[1], confidence),
                      f"subject {name}, rule {label}: {OUTCOMES['conserved']} (points)")
        books: dict[tuple[int, str], float] = {}
        for p in parts:
            for (rule_label, k, field), value in p.books.items():
                if rule_label == label:
                    books[(k, field)] = books.get((k, field), 0.0) + value
        for (k, field), value in sorted(books.items()):
            counts[f"subject {name}, {label}, layer {k}: mean {field.replace('_', ' ')} relevance (dtd.accounting)"] = (
                value / n_points
            )
        counts[f"subject {name}, {label}: mean sum_i R_i / f(x)"] = sum(p.ratios[label] for p in parts) / n_points
        series = {
            what: [v for p in parts for v in p.series.get((label, what), [])] for what in ("diffs", "f_x", "gradient")
        }
        histograms.append((
            _file(name, label, "output_difference"),
            f"Subject {name}, first-layer {label} roots: f(x) - f(root), beside f(x)",
            {"f(x) - f(root), every counted root": series["diffs"], "f(x), every point": series["f_x"]},
            "value",
            "The notebook's first histogram on this subject: a root that "
            "zeroed the output would give f(x) - f(root) = f(x).",
        ))
        histograms.append((
            _file(name, label, "gradient_difference"),
            f"Subject {name}, first-layer {label} roots: mean |grad f(root) - grad f(x)| per point",
            {"mean over the point's counted roots and input dimensions": series["gradient"]},
            "mean absolute gradient difference",
            "The notebook's second histogram; 0: every root lies in the input's linear region.",
        ))
    grids: list[ImageGrid] = []
    if len(subject.input_shape) >= 2:
        heat = {label: {i: rel for p in parts for i, rel in p.heat.get(label, {}).items()} for label in subject.rules}
        shown = {i: entry for p in parts for i, entry in p.shown.items()}
        grids.append(_heatmaps(subject, heat, [shown[i] for i in sorted(shown)]))
    counts[f"subject {name}: points explained"] = n_points
    counts[f"subject {name}: points left out (explained output <= 0)"] = subject.n_dropped
    if subject.n_parts > 1:
        counts[f"subject {name}: parts (test items of at most {subject.points_per_item} points, tallies merged)"] = (
            subject.n_parts
        )
    return SubjectResult(name, rates, counts, histograms, grids, subject.layer_names)


def evaluate(subject: Subject, *, seed: int = 0, confidence: float = DEFAULT_CONFIDENCE) -> SubjectResult:
    """Ask DTD's questions of ``subject``: every rule, every layer.

    Parameters
    ----------
    subject
        The subject.
    seed
        Seeds the local generators of the neuron draws (same seed, same rates).
    confidence
        Of every interval.

    Returns
    -------
    SubjectResult
        Rates ``subject.{name}.{rule}.layer{k}.{outcome}`` for the outcomes
        of :data:`ROOT_QUESTIONS`, ``root_exists`` and ``region_root_exists``,
        ``subject.{name}.{rule}.conserved``, the accounting as counts, the
        notebook's histograms and, for image inputs, relevance heatmaps.
        The subject's parts (:attr:`Subject.n_parts`) are evaluated one
        after another and merged: ``merge_parts([evaluate_part(subject, i,
        seed=seed) for i in range(subject.n_parts)])``, exactly what a run
        that spreads the parts over processes reports.
    """
    if not isinstance(subject, Subject):
        raise TypeError(f"subject must be a properties.Subject, got {type(subject).__name__}")
    seed = check_seed(seed)
    return merge_parts([evaluate_part(subject, i, seed=seed) for i in range(subject.n_parts)], confidence=confidence)


def _lp_plan(net: dtd.ReLUNetwork | dtd.GraphNetwork, k: int) -> tuple[int, int]:
    """``(points, neurons per point)`` of layer ``k``'s exact LPs within
    :data:`REGION_LP_ENTRIES` (none on a graph network)."""
    if isinstance(net, dtd.GraphNetwork):
        return 0, 0
    entries = (sum(net.sizes[k + 1 :]) + 1) * net.sizes[k]  # one LP's constraint matrix
    lps = REGION_LP_ENTRIES // entries
    if lps == 0:
        return 0, 0
    neurons = min(REGION_NEURONS, lps)
    return min(REGION_POINTS, lps // neurons), neurons


def _region_roots(
    net: dtd.ReLUNetwork | dtd.GraphNetwork, dec: Decomposition, k: int, output: int, n_points: int, n_neurons: int,
    generator: torch.Generator,
) -> list[tuple[int, int]]:
    """Per point ``(found, tried)``: in-region roots by exact LP for a few drawn relevance-carrying neurons."""
    lay = dec.layers[k]
    upper = lay.upper_relevance[:n_points]
    drawn = draw_neurons(n_points, upper.shape[1], upper.shape[1], generator)
    # keep the first n_neurons relevance-carrying neurons in the random order: a uniform draw among them
    carrying = (upper != 0).gather(1, drawn)
    rank = carrying.cumsum(1)
    pick = torch.zeros_like(upper, dtype=torch.bool).scatter(1, drawn, carrying & (rank <= n_neurons))
    # the LP of neuron j depends on R_j alone: neurons without relevance are trivial (no LP)
    found = dtd.RegionRoots("l1").find(net, k, lay.input[:n_points], torch.where(pick, upper, torch.zeros_like(upper)),
                                       output=output)
    return list(zip((found.valid & pick).sum(1).tolist(), pick.sum(1).tolist(), strict=True))


class _Info:
    """:func:`_info`'s dict read as attributes (JSON values: lists, not tuples)."""

    name: str
    rules: list[str]
    n_points: int
    n_dropped: int
    neurons_per_point: int | None
    points_per_item: int | None
    n_parts: int
    graph: bool
    lp_plan: list[list[int]]
    input_shape: list[int]
    layer_names: list[str] | None
    dtype: str
    fingerprint: str

    def __init__(self, info: dict[str, Any]) -> None:
        self.__dict__.update(info)


def _heatmaps(subject: _Info, heat: dict[str, dict[int, Any]], shown: list[tuple[Any, int]]) -> ImageGrid:
    """Inputs beside their relevance under every rule, for the first few points (channels averaged / summed).

    ``heat``: rule label -> {point index: relevance (nested lists of the input's shape)} for the points shown;
    ``shown``: their ``(input, output)`` in point order.
    """
    shape = tuple(subject.input_shape)
    dtype = getattr(torch, subject.dtype)
    rows = []
    for i, (image, output) in enumerate(shown):
        image = torch.tensor(image, dtype=dtype).reshape(shape)
        heats = [torch.tensor(rows_of[i], dtype=dtype).reshape(shape) for rows_of in heat.values()]
        if len(shape) == 3:
            image, heats = image.mean(0), [h.sum(0) for h in heats]
        rows.append({"label": f"point {i}, output {output}", "images": [image.tolist()] + [h.tolist() for h in heats]})
    labels = list(heat)
    return (f"subject_{subject.name}_heatmaps.png",
            f"Subject {subject.name}: relevance beside the input ({', '.join(labels)})", rows,
            ["input"] + [f"relevance ({label})" for label in labels],
            "Each row: one explained point, its input, then its input relevance under each rule on one "
            "scale per row centred at 0 (red positive, blue negative, white 0; the colour bar ends the row).")
