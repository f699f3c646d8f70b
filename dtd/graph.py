"""Graph networks: affine operators between ReLUs and max poolings.

:meth:`dtd.ReLUNetwork.from_module` lowers any piecewise-linear model into a
:class:`GraphNetwork`, a list of nodes in topological order:

* :class:`InputNode` -- the network's input ``x`` (node 0);
* :class:`AffineNode` -- a **DTD layer**: one affine map between
  non-linearities, ``z = sum_b A_b(h_b) + c``, whose branches ``b`` read
  activations ``h_b`` (the input, a ReLU's or a max pooling's output) through
  operators ``A_b`` (:mod:`dtd.operators`).  Its input ``a`` is the
  concatenation of the branch inputs (flattened, in branch order), its weight
  the block row ``[A_1, A_2, ...]``: a skip connection's identity is a weight
  like any other.  A source read by two branches appears twice in ``a``.
* :class:`ReLUNode` and :class:`MaxPoolNode` -- the non-linearities.  Inside
  a linear region a max pooling selects one input per window (its argmax),
  so the region of an input is its ReLU pattern *and* its argmax pattern.

Other piecewise-linear activations are ReLU units (:mod:`dtd.lowering`):
``f(z) = c + sum_m s_m relu(sigma_m z + beta_m)``.  The layer before the
activation computes every unit's pre-activation, stacked along a new first
axis; one ReLU node follows; the layer after reads all the units.  For DTD
that means: a ReLU6 layer is ``relu(z)`` and ``relu(z - 6)`` (the bias
``-6`` of the second unit is a bias like any other), and the next layer reads
``a = [relu(z), relu(z - 6)]`` with weights ``[W, -W]``; a leaky ReLU with
slope ``s`` gives ``a = [relu(z), relu(-z)]`` with weights ``[W, -s W]``;
``abs`` ``[W, W]``; ``hardtanh``, ``clamp`` and ``hardsigmoid`` are ReLU6's
shape with other offsets and scales.  Every layer input stays non-negative,
so z+ and gamma apply after these activations as after a ReLU; a max pooling
of a non-decreasing one pools its units (``relu(-z)``'s by a min pooling:
:attr:`MaxPoolNode.signs`).

Semantics shared by every computation on a graph:

* relevance reaching an activation from several consumers is summed;
* a ReLU passes relevance unchanged; a max pool passes each output's
  relevance to its argmax input (overlapping windows add up);
* ``f_k(root)``: the network's output when the activations entering layer
  ``k`` are replaced by the root's parts and everything downstream of them is
  recomputed, every other activation kept at its value for the input.  For a
  chain this is the network from layer ``k`` up.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .operators import Chain, Dense, Operator, Parallel, Reshape
from .outputs import OutputLike, check_output, check_weights
from .validation import all_finite, check_finite_layer, check_int

__all__ = [
    "DENSE_LAYER_LIMIT",
    "dense_limit_error",
    "dense_only",
    "InputNode",
    "AffineNode",
    "ReLUNode",
    "MaxPoolNode",
    "Branch",
    "GraphNetwork",
    "RootEvaluation",
    "RootComparison",
    "NodeValues",
]


#: Largest dense float64 matrix, in bytes (per point), that the in-region root finders may build for one layer of a
#: :class:`GraphNetwork`: its weight ``(J_k, D_k)`` (:meth:`GraphNetwork.weight`) and its region's rows ``(M, D_k)``
#: (:func:`dtd.regions.region_constraints`).  256 MiB: a 16-channel 16x16 convolution (4096 x 4096, 128 MiB) fits,
#: a 32-channel 32x32 one (32768 x 32768, 8 GiB) is refused with :func:`dense_limit_error`.  Read at every call, so
#: ``dtd.graph.DENSE_LAYER_LIMIT = ...`` raises it where the memory is there.
DENSE_LAYER_LIMIT = 256 << 20


def dense_limit_error(net: GraphNetwork, k: int, what: str, rows: int, cols: int) -> ValueError:
    """The ``ValueError`` for a dense ``rows x cols`` float64 matrix of layer ``k`` above :data:`DENSE_LAYER_LIMIT`."""
    needed = rows * cols * 8
    return ValueError(
        f"layer {k} ({net.layer_names()[k]!r}): {what} is a dense {rows:,} x {cols:,} matrix, {needed:,} bytes "
        f"({needed / 2**30:.2f} GiB) as float64, above dtd.graph.DENSE_LAYER_LIMIT "
        f"= {DENSE_LAYER_LIMIT:,} bytes ({DENSE_LAYER_LIMIT / 2**20:.0f} MiB) per point; the in-region root "
        "finders (RegionRoots, RegionSamplingRoots, MetropolisHastingsRoots) and the layer rule pinv need it. "
        "On this layer use DTD's closed-form neuron rules (dtd.train_free(net, x, rule='z+'), or w2, gamma, x, "
        "zB), which stay matrix-free, and judge sampled neurons with properties.checks.root_outcomes(..., "
        "neurons=K); or raise dtd.graph.DENSE_LAYER_LIMIT where the memory is there"
    )


def dense_only(net: object, what: str) -> None:
    """``TypeError`` when ``net`` is a :class:`GraphNetwork`: ``what`` needs the dense layers of a ``ReLUNetwork``."""
    if isinstance(net, GraphNetwork):
        raise TypeError(
            f"{what} needs the dense layers of a dtd.ReLUNetwork, but this network was lowered by the graph "
            "engine (ReLUNetwork.from_module); on a GraphNetwork use dtd.train_free with rule= (closed-form "
            "roots) or an in-region root finder (up to dtd.graph.DENSE_LAYER_LIMIT), dtd.accounting and "
            "properties.checks.root_outcomes, or lower an MLP or a small CNN with from_sequential"
        )


@dataclasses.dataclass(frozen=True)
class InputNode:
    id: int
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Branch:
    """One summand ``A_b(h_b)`` of an affine node: the source node's id and the operator."""

    source: int
    op: Chain | Parallel  # Parallel: several maps of one activation summed (dtd.lowering)


@dataclasses.dataclass(frozen=True)
class AffineNode:
    """A DTD layer: ``z = sum_b branches[b].op(h_b) + bias``; ``bias`` has the node's ``shape``.

    ``modules`` names the model's modules folded into it (``"layer1.0.conv2"``,
    ``"layer1.0.bn2"``, ...); ``name`` is the first signed one (the layer's name in reports).
    """

    id: int
    shape: tuple[int, ...]
    branches: tuple[Branch, ...]
    bias: torch.Tensor
    name: str
    modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ReLUNode:
    id: int
    shape: tuple[int, ...]
    source: int
    name: str = ""


@dataclasses.dataclass(frozen=True)
class MaxPoolNode:
    """A max pooling over the last one or two dimensions (``F.max_pool1d/2d`` arguments, or an adaptive one).

    ``signs`` (one ``+1`` / ``-1`` per index of the first non-batch axis, or
    None for all ``+1``) make some slices *min* poolings: ``s * max(s * x)``.
    The lowering pools the ReLU units of a monotone activation this way --
    ``maxpool(leaky_relu(z)) = maxpool(relu(z)) - a * minpool(relu(-z))`` -- so
    the layer after it reads non-negative inputs.  Either way each window
    selects one input (its arg), and the region is that pattern.
    """

    id: int
    shape: tuple[int, ...]
    source: int
    dim: int
    kernel_size: tuple = ()
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    ceil_mode: bool = False
    output_size: tuple | None = None  # adaptive max pooling
    name: str = ""
    signs: tuple | None = None  # per index of the first non-batch axis: +1 max pooling, -1 min pooling

    def oriented(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` times the signs along its first non-batch axis (``t`` itself without signs)."""
        if self.signs is None:
            return t
        s = torch.tensor(self.signs, dtype=t.dtype, device=t.device)
        return t * s.reshape((-1,) + (1,) * (t.dim() - 2))

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, argmax)``: the pooled values and each window's arg (flat index within its channel plane)."""
        x = self.oriented(x)
        lead = tuple(x.shape[1 : x.dim() - self.dim])
        if len(lead) != 1:  # channels over several axes (a pooling of stacked units): pooled as one axis
            x = x.reshape((x.shape[0], -1) + tuple(x.shape[x.dim() - self.dim :]))
        if self.output_size is not None:
            function = F.adaptive_max_pool1d if self.dim == 1 else F.adaptive_max_pool2d
            values, index = function(x, self.output_size, return_indices=True)
        else:
            pooling = F.max_pool1d if self.dim == 1 else F.max_pool2d
            values, index = pooling(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                     return_indices=True)
        if len(lead) != 1:
            values = values.reshape((values.shape[0],) + lead + tuple(values.shape[2:]))
            index = index.reshape(values.shape)
        return self.oriented(values), index


Node = InputNode | AffineNode | ReLUNode | MaxPoolNode

#: every node's value and every max pool's argmax at some points, keyed by node id (:meth:`GraphNetwork.run`)
NodeValues = tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]


def _planes(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``(batch, C, spatial...)`` as ``(batch, C, prod(spatial))`` (max pooling's index space)."""
    return t.reshape(t.shape[0], -1, math.prod(t.shape[-dim:]))


def pool_windows(node: MaxPoolNode, source_shape: tuple) -> torch.Tensor:
    """Each output's window: ``(prod(out spatial), K)`` flat indices into the source's channel plane, ``-1`` for none.

    ``K`` is the largest window; windows clipped by the padding (or an
    adaptive pooling's uneven split) hold fewer indices, padded with -1.  A
    max pooling's output is the maximum of its source over these indices.
    Built once per pooling and source shape (do not modify the result).
    """
    return _pool_windows(node, tuple(source_shape))


@functools.lru_cache(maxsize=256)
def _pool_windows(node: MaxPoolNode, source_shape: tuple) -> torch.Tensor:
    dim = node.dim
    in_sizes = tuple(source_shape[-dim:])
    out_sizes = tuple(node.shape[-dim:])
    per_dim = []
    for d in range(dim):
        n_in, n_out = in_sizes[d], out_sizes[d]
        if node.output_size is not None:  # adaptive: [floor(o n_in / n_out), ceil((o + 1) n_in / n_out))
            windows = [list(range((o * n_in) // n_out, -((-(o + 1) * n_in) // n_out))) for o in range(n_out)]
        else:
            k, s, p, dil = node.kernel_size[d], node.stride[d], node.padding[d], node.dilation[d]
            windows = [[e for e in (o * s - p + t * dil for t in range(k)) if 0 <= e < n_in] for o in range(n_out)]
        per_dim.append(windows)
    if dim == 1:
        flat = per_dim[0]
    else:
        width = in_sizes[1]
        flat = [[i * width + j for i in rows for j in cols] for rows in per_dim[0] for cols in per_dim[1]]
    size = max(len(w) for w in flat)
    return torch.tensor([w + [-1] * (size - len(w)) for w in flat], dtype=torch.int64).reshape(len(flat), size)


def operator_matrix(op: Operator, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """An operator's ``(out_features, in_features)`` matrix, matrix-free: its own weight for a Linear, else unit
    vectors pushed through it (the outputs' back through the transpose when there are fewer of them), in chunks.

    Every entry of the lowered operators is a single product of their entries
    (:mod:`dtd.operators`), so pushing a unit vector reproduces it exactly.
    """
    weight = op.flat_weight()
    if weight is not None:
        return weight.to(dtype=dtype, device=device)
    d_in, d_out = op.in_features, op.out_features
    matrix = torch.empty(d_out, d_in, dtype=dtype, device=device)
    backwards = d_out <= d_in
    n, shape = (d_out, op.out_shape) if backwards else (d_in, op.in_shape)
    chunk = max(1, min(n, (64 << 20) // (8 * max(d_in, d_out))))
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            basis = torch.zeros(stop - start, n, dtype=dtype, device=device)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            basis = basis.reshape((stop - start,) + tuple(shape))
            if backwards:
                matrix[start:stop] = op.transpose(basis).reshape(stop - start, d_in)
            else:
                matrix[:, start:stop] = op.forward(basis).reshape(stop - start, d_out).T
    return matrix


def scatter_argmax(values: torch.Tensor, argmax: torch.Tensor, source_shape: tuple, dim: int) -> torch.Tensor:
    """Route ``values`` (a max pool's output shape) to the argmax inputs
    (``source_shape``), adding where windows overlap."""
    out = values.new_zeros((values.shape[0],) + tuple(source_shape))
    _planes(out, dim).scatter_add_(2, _planes(argmax, dim), _planes(values, dim))
    return out


@dataclasses.dataclass(frozen=True)
class RootEvaluation:
    """What :meth:`GraphNetwork.evaluate_roots` finds at ``M`` roots of one layer.

    value : ``(M,)`` ``f_k(root)``; gradient : ``(M, D_k)`` ``d f_k / d a`` with
    ``relu'(z) = 1[z > threshold]``; relu : ``(M, R)`` pre-activations of the
    deciding ReLUs side by side; argmax : ``(M, P)`` the deciding max pools'
    argmax indices side by side; window_gap : ``(M, P)`` how far the value
    at the *reference* argmax lies below each window's maximum (0 where it is
    the maximum), when reference argmaxes were given.
    """

    value: torch.Tensor
    gradient: torch.Tensor | None
    relu: torch.Tensor
    argmax: torch.Tensor
    window_gap: torch.Tensor | None


@dataclasses.dataclass(frozen=True)
class RootComparison:
    """What :meth:`GraphNetwork.compare_roots` finds at ``M`` roots against their inputs, each ``(M,)``.

    value : ``f_k(root)``; same : the root's deciding pattern (ReLU states
    and argmaxes) is the input's; in_closure : no deciding ReLU is clearly
    on at one and clearly off at the other, and every window's value at the
    input's argmax ties its maximum (the root lies in the closure of the
    input's region); gradient_max, gradient_mean : max and mean of ``|grad
    f_k(root) - grad f_k(a)|`` (0 where ``same``).
    """

    value: torch.Tensor
    same: torch.Tensor
    in_closure: torch.Tensor
    gradient_max: torch.Tensor
    gradient_mean: torch.Tensor


def _rows_of(points: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function taking the rows ``points`` of a tensor: a slice (a view, no copy) when they are one ascending run."""
    n = points.numel()
    if n and int(points[-1]) - int(points[0]) == n - 1 and (n == 1 or bool((points[1:] > points[:-1]).all())):
        start = int(points[0])
        return lambda t: t[start : start + n]
    return lambda t: t.index_select(0, points)


# Boolean reductions over the last dimension: uint8 min/max is several times faster than Tensor.all/any on CPU
def _all_last(mask: torch.Tensor) -> torch.Tensor:
    if mask.shape[-1] == 0:
        return torch.ones(mask.shape[:-1], dtype=torch.bool, device=mask.device)
    return mask.view(torch.uint8).amin(-1).bool()


def _any_last(mask: torch.Tensor) -> torch.Tensor:
    if mask.shape[-1] == 0:
        return torch.zeros(mask.shape[:-1], dtype=torch.bool, device=mask.device)
    return mask.view(torch.uint8).amax(-1).bool()


#: Pre-activation entries at the roots (all deciding ReLUs together) up to which :meth:`GraphNetwork.compare_roots`
#: compares the patterns side by side in one pass instead of one non-linearity at a time
SMALL_PATTERNS = 1 << 21


class GraphNetwork(nn.Module):
    """A piecewise-linear network as a graph of affine operators, ReLUs and max poolings (see the module docstring).

    Built by :meth:`dtd.ReLUNetwork.from_module`.  The DTD layers are the
    affine nodes in topological order: ``layers[k]`` is layer ``k`` (``k = 0``
    reads the input); the last one computes the output.

    Attributes
    ----------
    input_shape
        ``x``'s shape without the batch dimension.
    final_relu
        Whether the output is the last affine node's ReLU.
    """

    # set in __init__ through __dict__ (see there)
    nodes: list[Node]
    output_node: int
    final_relu: bool
    input_shape: tuple[int, ...]
    layer_ids: list[int]
    _layer_of: dict[int, int]
    consumers: dict[int, list[int]]
    _dtype: torch.dtype
    _device: torch.device
    _live: dict[int, tuple[frozenset[int], tuple[Node, ...]]]
    _weights: dict[int, torch.Tensor]
    _float64: dict[int, list[Chain | Parallel]]

    def __init__(self, nodes: Sequence[Node], output: int, *, final_relu: bool, input_shape: Sequence[int]):
        super().__init__()
        nodes = list(nodes)
        layer_ids = [node.id for node in nodes if isinstance(node, AffineNode)]
        consumers: dict[int, list[int]] = {node.id: [] for node in nodes}
        for node in nodes:
            for source in self.sources(node):
                consumers[source].append(node.id)
        tensors = [t for node in nodes if isinstance(node, AffineNode) for b in node.branches for t in b.op.tensors()]
        tensors += [node.bias for node in nodes if isinstance(node, AffineNode)]
        # plain attributes (no parameters, buffers or modules among them): set without nn.Module's per-attribute checks,
        # which were most of the cost of building the chain graph of a small ReLUNetwork on every call
        self.__dict__.update(
            nodes=nodes,
            output_node=output,
            final_relu=bool(final_relu),
            input_shape=tuple(input_shape),
            layer_ids=layer_ids,
            _layer_of={node_id: k for k, node_id in enumerate(layer_ids)},
            consumers=consumers,
            _dtype=tensors[0].dtype if tensors else torch.get_default_dtype(),
            _device=tensors[0].device if tensors else torch.device("cpu"),
            _live={},
            _weights={},  # layer -> its dense block row, built on first use (GraphNetwork.weight)
            _float64={},  # affine node id -> its branches' operators in float64 (the region's maps)
        )

    @classmethod
    def chain(
        cls, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor], *, final_relu: bool,
        input_shape: Sequence[int], names: Sequence[str] | None = None,
    ) -> GraphNetwork:
        """An MLP as a graph: Linear ``k`` (a :class:`~dtd.operators.Dense` operator on ``weights[k]``) then a ReLU.

        The tensors are used as given (not copied); a multi-dimensional
        ``input_shape`` is flattened by the first layer.  This is how a
        :class:`dtd.ReLUNetwork` runs on the engine (:meth:`dtd.ReLUNetwork.graph`).
        """
        input_shape = tuple(input_shape)
        nodes: list[Node] = [InputNode(0, input_shape)]
        previous = 0
        last = len(weights) - 1
        for k, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            name = names[k] if names is not None else f"layers.{k}"
            ops: list[Operator] = [Dense(weight)]
            if k == 0 and len(input_shape) > 1:
                ops.insert(0, Reshape(input_shape, (weight.shape[1],)))
            affine = AffineNode(len(nodes), (weight.shape[0],), (Branch(previous, Chain(ops)),), bias, name, (name,))
            nodes.append(affine)
            if k < last:
                nodes.append(ReLUNode(len(nodes), (weight.shape[0],), affine.id, name))
                previous = nodes[-1].id
        return cls(nodes, nodes[-1].id, final_relu=final_relu, input_shape=input_shape)

    # ------------------------------------------------------------------ structure
    @staticmethod
    def sources(node: Node) -> list[int]:
        if isinstance(node, AffineNode):
            return [b.source for b in node.branches]
        if isinstance(node, (ReLUNode, MaxPoolNode)):
            return [node.source]
        return []

    @property
    def n_layers(self) -> int:
        return len(self.layer_ids)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def layer(self, k: int) -> AffineNode:
        """The affine node of DTD layer ``k``."""
        self.check_layer(k)
        return self._layer_node(k)

    def _layer_node(self, k: int) -> AffineNode:
        """``layer(k)`` unchecked (``k = -1`` is the top layer)."""
        return cast(AffineNode, self.nodes[self.layer_ids[k]])  # layer_ids holds the affine nodes' ids

    def layer_names(self) -> list[str]:
        """Each layer's name: its first module with weights (``"features.0"``, ``"layer1.0.conv2"``, ``"fc"``)."""
        return [self._layer_node(k).name for k in range(self.n_layers)]

    def in_features(self, k: int) -> int:
        """``D_k``: the size of layer ``k``'s input (its branches' inputs side by side)."""
        return sum(b.op.in_features for b in self.layer(k).branches)

    def out_features_of(self, k: int) -> int:
        """``J_k``: layer ``k``'s number of neurons."""
        return math.prod(self.layer(k).shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.nodes[self.layer_ids[-1]].shape)

    @property
    def in_size(self) -> int:
        return math.prod(self.input_shape)

    def weight(self, k: int) -> torch.Tensor:
        """Layer ``k``'s weight ``(J_k, D_k)`` as a dense matrix: the block row ``[A_1, A_2, ...]`` over its branches.

        Columns follow :meth:`layer_input` (branch inputs flattened side by
        side); rows the node's flattened output.  A Linear's block is its
        weight itself; other operators' blocks are built matrix-free
        (:func:`operator_matrix`) once and kept.  Used by the in-region root
        finders; DTD's closed-form roots never need it.  Do not modify it.

        Raises ``ValueError`` (:func:`dense_limit_error`) when the matrix, as
        float64, would exceed :data:`DENSE_LAYER_LIMIT` bytes.
        """
        self.check_layer(k)
        if k not in self._weights:
            rows, cols = self.out_features_of(k), self.in_features(k)
            if rows * cols * 8 > DENSE_LAYER_LIMIT:
                raise dense_limit_error(self, k, "its weight", rows, cols)
            blocks = [operator_matrix(b.op, self.dtype, self.device) for b in self.layer(k).branches]
            self._weights[k] = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 1)
        return self._weights[k]

    def bias(self, k: int) -> torch.Tensor:
        """Layer ``k``'s bias ``(J_k,)``: the node's bias flattened (a view)."""
        return self.layer(k).bias.reshape(-1)

    def float64_operators(self, node: AffineNode) -> list[Chain | Parallel]:
        """The node's branch operators in float64 (themselves in a float64 network; converted copies kept otherwise)."""
        if self._dtype == torch.float64:
            return [b.op for b in node.branches]
        if node.id not in self._float64:
            self._float64[node.id] = [b.op.to(torch.float64) for b in node.branches]
        return self._float64[node.id]

    def check_layer(self, k: int, name: str = "layer") -> int:
        check_int(k, name)
        if not 0 <= k < self.n_layers:
            raise ValueError(f"{name} must be in [0, {self.n_layers - 1}] for a {self.n_layers}-layer network, got {k}")
        return k

    def check_output(self, output: OutputLike, batch: int | None = None) -> int | torch.Tensor:
        """``output``: an int in ``[0, out_features)``, an index tuple into :attr:`output_shape` (its flat index) or a
        ``(batch,)`` integer tensor (:func:`dtd.outputs.check_output`)."""
        return check_output(self, output, batch)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The per-point output's shape (``(classes,)``,
        ``(classes, height, width)``, ...); :meth:`forward` flattens it."""
        return tuple(self.nodes[self.layer_ids[-1]].shape)

    def explaining(self, weights: torch.Tensor) -> GraphNetwork:
        """The network whose one output is ``sum(weights * y)`` over this network's per-point output ``y``.

        The weights are absorbed into the top layer (the output is linear in
        it): each of its branches becomes the one row ``w^T A_b``, computed in
        float64 by pushing ``w`` back through ``A_b``, and its bias ``w . b``.
        Under a final ReLU a new one-neuron layer reads the ReLU instead.  The
        other layers are shared with this network.  ``weights`` has
        :attr:`output_shape` (or is flat).
        """
        w = check_weights(self, weights)
        w64 = w.to(torch.float64).reshape(1, -1)
        top = self._layer_node(-1)
        nodes = list(self.nodes)
        if self.final_relu:
            relu = ReLUNode(len(nodes), top.shape, top.id, top.name)
            nodes.append(relu)
            row_op = Chain([Reshape(top.shape, (math.prod(top.shape),)), Dense(w64.to(self.dtype))])
            nodes.append(AffineNode(len(nodes), (1,), (Branch(relu.id, row_op),),
                                    torch.zeros(1, dtype=self.dtype, device=self.device), top.name, top.modules))
            return GraphNetwork(nodes, nodes[-1].id, final_relu=False, input_shape=self.input_shape)
        branches = []
        for branch, op in zip(top.branches, self.float64_operators(top), strict=True):
            row = op.transpose(w64.reshape((1,) + tuple(top.shape))).reshape(1, -1)
            branches.append(Branch(branch.source,
                                   Chain([Reshape(op.in_shape, (op.in_features,)), Dense(row.to(self.dtype))])))
        bias = (w64.reshape(-1) * top.bias.to(torch.float64).reshape(-1)).sum().reshape(1).to(self.dtype)
        nodes[top.id] = AffineNode(top.id, (1,), tuple(branches), bias, top.name, top.modules)
        return GraphNetwork(nodes, top.id, final_relu=False, input_shape=self.input_shape)

    def check_parameters(self) -> None:
        for node in self.nodes:
            if isinstance(node, AffineNode):
                for t in [node.bias] + [t for b in node.branches for t in b.op.tensors()]:
                    if not all_finite(t):
                        raise ValueError(f"layer {self._layer_of[node.id]} ({node.name}) "
                                         "holds NaN or infinite parameters")

    def check_input(self, x: torch.Tensor, *, name: str = "x") -> torch.Tensor:
        """``x`` validated as ``(batch, *input_shape)`` (a flat
        ``(batch, prod(input_shape))`` is reshaped); never modified."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 2 and x.shape[1] == self.in_size and len(self.input_shape) > 1:
            x = x.reshape((x.shape[0],) + self.input_shape)
        if tuple(x.shape[1:]) != self.input_shape or x.dim() < 2:
            raise ValueError(
                f"{name} must have shape (batch, {', '.join(map(str, self.input_shape))}) "
                f"(or (batch, {self.in_size})), got {tuple(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the network is {self.dtype}; convert one of them")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the network is on {self.device}")
        if not all_finite(x):
            raise ValueError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN or infinite value(s)")
        return x.detach()

    def as_dense_chain(self) -> tuple[list[torch.Tensor], list[torch.Tensor], bool] | None:
        """``(weights, biases, final_relu)`` when the graph is an MLP (each layer one
        Linear on the previous ReLU), else None."""
        weights, biases = [], []
        previous = 0
        for k, node_id in enumerate(self.layer_ids):
            node = self._layer_node(k)
            if len(node.branches) != 1 or node.branches[0].source != previous:
                return None
            ops = node.branches[0].op.ops
            dense = [op for op in ops if isinstance(op, Dense)]
            if len(dense) != 1 or any(not isinstance(op, (Dense, Reshape)) for op in ops) or len(node.shape) != 1:
                return None
            if k > 0 and len(ops) != 1:
                return None
            weights.append(dense[0].weight)
            biases.append(node.bias)
            consumers = self.consumers[node_id]
            if k < self.n_layers - 1:
                if len(consumers) != 1 or not isinstance(self.nodes[consumers[0]], ReLUNode):
                    return None
                previous = consumers[0]
        return weights, biases, self.final_relu

    # ------------------------------------------------------------------ evaluation
    def _affine(self, node: AffineNode, values: dict[int, torch.Tensor]) -> torch.Tensor:
        if len(node.branches) == 1 and len(node.shape) == 1:
            branch = node.branches[0]
            weight = branch.op.flat_weight()
            if weight is not None:  # a Linear: the bias added in the product, as nn.Linear computes it
                return torch.addmm(node.bias, values[branch.source].flatten(1), weight.T)
        first, *rest = node.branches
        z = first.op.forward(values[first.source])
        for branch in rest:
            z = z + branch.op.forward(values[branch.source])
        return z + node.bias

    def run(self, x: torch.Tensor) -> NodeValues:
        """Every node's value at ``x`` ``(batch, *input_shape)``: ``(values, argmaxes)`` keyed by node id.

        An affine node's value is its pre-activation; a max pool's argmax
        (flat index in its source's channel plane) is in ``argmaxes``.  A layer
        whose pre-activations overflow the dtype is a ``ValueError`` naming it.
        """
        values = {0: x}
        argmax: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for node in self.nodes[1:]:
                self._compute(node, values, argmax)
        return values, argmax

    def _compute(self, node: Node, values: dict[int, torch.Tensor], argmax: dict[int, torch.Tensor],
                 check: bool = True) -> None:
        if isinstance(node, AffineNode):
            z = self._affine(node, values)
            values[node.id] = check_finite_layer(z, self._layer_of[node.id], "its pre-activations") if check else z
        elif isinstance(node, ReLUNode):
            values[node.id] = torch.relu(values[node.source])
        elif isinstance(node, MaxPoolNode):  # never the input: it is node 0, computed by no one
            values[node.id], argmax[node.id] = node.pool(values[node.source])

    def output_of(self, values: dict[int, torch.Tensor]) -> torch.Tensor:
        """``net(x)`` ``(batch, out_features)`` from :meth:`run`'s values."""
        z = values[self.layer_ids[-1]].flatten(1)
        return torch.relu(z) if self.final_relu else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``net(x)``: ``(batch, *input_shape)`` -> ``(batch, out_features)``."""
        if x.dim() == 2 and len(self.input_shape) > 1:
            x = x.reshape((x.shape[0],) + self.input_shape)
        return self.output_of(self.run(x)[0])

    def layer_input(self, values: dict[int, torch.Tensor], k: int) -> torch.Tensor:
        """``a``: layer ``k``'s branch inputs flattened side by side, ``(batch, D_k)`` (a view of the
        one source of a single-branch layer)."""
        branches = self.layer(k).branches
        if len(branches) == 1:
            return values[branches[0].source].flatten(1)
        return torch.cat([values[b.source].flatten(1) for b in branches], dim=1)

    def split_input(self, k: int, a: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of :meth:`layer_input`: ``a`` ``(batch, D_k)`` as one tensor per branch in its source's shape."""
        parts, start = [], 0
        for branch in self.layer(k).branches:
            n = branch.op.in_features
            parts.append(a[:, start : start + n].reshape((a.shape[0],) + tuple(branch.op.in_shape)))
            start += n
        return parts

    # ------------------------------------------------------------------ f_k at roots
    def live_nodes(self, k: int) -> tuple[frozenset[int], tuple[Node, ...]]:
        """``(overridden, live)``: layer ``k``'s sources, and the nodes ``f_k`` recomputes, in topological order.

        Live nodes depend on an overridden source and feed the output along a
        path that does not pass through another overridden node.  Computed once per layer (the graph does not change).
        """
        if k in self._live:
            return self._live[k]
        overridden = {b.source for b in self.layer(k).branches}
        depends = set(overridden)
        for node in self.nodes:
            if node.id not in overridden and any(s in depends for s in self.sources(node)):
                depends.add(node.id)
        needed = {self.layer_ids[-1]}
        for node in reversed(self.nodes):
            if node.id in needed and node.id not in overridden:
                needed.update(self.sources(node))
        live = tuple(node for node in self.nodes if node.id in depends and node.id in needed
                     and node.id not in overridden)
        self._live[k] = (frozenset(overridden), live)
        return self._live[k]

    def deciding(self, k: int) -> tuple[list[int], list[int]]:
        """The non-linearities deciding the region of ``f_k``:
        ``(relu node ids, max pool node ids)`` (the output's ReLU included)."""
        _, live = self.live_nodes(k)
        relus = [n.id for n in live if isinstance(n, ReLUNode)]
        pools = [n.id for n in live if isinstance(n, MaxPoolNode)]
        return relus, pools

    def evaluate_roots(
        self,
        k: int,
        roots: torch.Tensor | None,
        point: torch.Tensor,
        base: NodeValues,
        output: int | torch.Tensor,
        *,
        threshold: float = 0.0,
        gradient: bool = True,
        reference_argmax: torch.Tensor | None = None,
    ) -> RootEvaluation:
        """``f_k``, its gradient and the deciding patterns at roots ``(M, D_k)`` of layer ``k``.

        ``roots=None`` evaluates at the inputs themselves (``point`` selects
        them): every value is read from ``base``, only the gradient is computed.

        ``point`` ``(M,)`` says which input each root belongs to (the rows of
        ``base = run(x)``): activations that do not depend on layer ``k``'s
        input are taken from there.  ``output``: an int or ``(M,)`` per-row
        explained outputs.  ``threshold``: ``relu'(z) = 1[z > threshold]`` in
        the gradient and the output's ReLU.  ``reference_argmax`` ``(M, P)``:
        argmaxes (as :attr:`RootEvaluation.argmax`) at which the window gap
        is measured.
        """
        values_x, argmax_x = base
        overridden, live = self.live_nodes(k)
        values: dict[int, torch.Tensor] = {}
        argmax: dict[int, torch.Tensor] = {}
        live_ids = {n.id for n in live}
        take = _rows_of(point)
        if roots is None:  # the inputs themselves: every value is the input's, nothing to recompute
            for node_id in live_ids | overridden:
                values[node_id] = take(values_x[node_id])
                if node_id in argmax_x:
                    argmax[node_id] = take(argmax_x[node_id])
        else:
            for source, part in zip([b.source for b in self.layer(k).branches], self.split_input(k, roots),
                                    strict=True):
                values[source] = part

        def value(node_id: int) -> torch.Tensor:
            if node_id not in values:
                values[node_id] = take(values_x[node_id])
            return values[node_id]

        with torch.no_grad():
            for node in live:
                for s in self.sources(node):
                    value(s)
                if roots is not None:
                    self._compute(node, values, argmax, check=False)
        top = values[self.layer_ids[-1]].flatten(1)
        column = top.gather(1, output.reshape(-1, 1)).squeeze(1) if isinstance(output, torch.Tensor) else top[:, output]
        f = torch.relu(column) if self.final_relu else column
        relus = [n for n in live if isinstance(n, ReLUNode)]
        pools = [n for n in live if isinstance(n, MaxPoolNode)]
        relu_z = [values[n.source].flatten(1) for n in relus]
        if self.final_relu:
            relu_z.append(column.unsqueeze(1))
        relu = torch.cat(relu_z, 1) if relu_z else top[:, :0]
        argmaxes = torch.cat([argmax[n.id].flatten(1) for n in pools], 1) if pools else top[:, :0].long()
        gap = None
        if reference_argmax is not None:
            gaps = []
            start = 0
            for node in pools:
                i = node.id
                n = argmax[i][0].numel()
                ref = reference_argmax[:, start : start + n].reshape(argmax[i].shape)
                src = _planes(values[node.source], node.dim)
                at_ref = src.gather(2, _planes(ref, node.dim)).reshape(values[i].shape)
                gaps.append(node.oriented(values[i] - at_ref).flatten(1))
                start += n
            gap = torch.cat(gaps, 1) if gaps else top[:, :0]
        grad = None
        if gradient:
            grad = self._gradient(k, live, values, argmax, output, column, threshold, overridden, live_ids)
        return RootEvaluation(f, grad, relu, argmaxes, gap)

    def compare_roots(
        self,
        k: int,
        roots: torch.Tensor,
        points: torch.Tensor,
        base: NodeValues,
        output: int | torch.Tensor,
        at_input: RootEvaluation,
        *,
        threshold: float,
    ) -> RootComparison:
        """``f_k`` at ``n_roots`` roots per point and how each root's region and gradient compare with its input's.

        ``roots`` ``(P * n_roots, D_k)``, point-major: rows ``p * n_roots ...
        (p + 1) * n_roots - 1`` are roots of ``points[p]`` (``points`` ``(P,)``
        rows of ``base = run(x)``); ``at_input`` is :meth:`evaluate_roots` at
        those inputs (``roots=None``); ``output`` an int or ``(P * n_roots,)``.
        ``threshold`` is both ``relu'(z) = 1[z > threshold]`` and the pattern
        tolerance: a neuron is on where ``z > threshold``, off where ``z <
        -threshold``.  What :meth:`evaluate_roots` returns side by side (every
        deciding pre-activation) is compared one non-linearity at a time
        against the input's, broadcast over its roots, and the gradient's
        backward pass runs only for roots whose pattern differs from the
        input's (the gradient is a function of the pattern: elsewhere it is
        the input's exactly).
        """
        values_x, argmax_x = base
        overridden, live = self.live_nodes(k)
        live_ids = {n.id for n in live}
        n_points = points.shape[0]
        rows = roots.shape[0]
        if rows % n_points:
            raise ValueError(f"{rows} roots cannot be split evenly over {n_points} points")
        n_roots = rows // n_points
        point = points.repeat_interleave(n_roots)
        values = dict(zip([b.source for b in self.layer(k).branches], self.split_input(k, roots), strict=True))
        argmax: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for node in live:
                for s in self.sources(node):
                    if s not in values:
                        values[s] = values_x[s].index_select(0, point)
                self._compute(node, values, argmax, check=False)
            top = values[self.layer_ids[-1]].flatten(1)
            if isinstance(output, torch.Tensor):
                column = top.gather(1, output.reshape(-1, 1)).squeeze(1)
            else:
                column = top[:, output]
            f = torch.relu(column) if self.final_relu else column
            same = torch.ones(rows, dtype=torch.bool, device=roots.device)
            crossed = torch.zeros(rows, dtype=torch.bool, device=roots.device)
            ties = torch.ones(rows, dtype=torch.bool, device=roots.device)

            # every ReLU's pre-activation (and the output's, under a final ReLU) at the roots and at their inputs
            at_points = _rows_of(points)
            pairs = [(values[node.source].flatten(1), at_points(values_x[node.source]).flatten(1))
                     for node in live if isinstance(node, ReLUNode)]
            if self.final_relu:
                pairs.append((column.unsqueeze(1), at_input.relu[:, -1:]))
            # one comparison of them side by side
            if len(pairs) > 1 and sum(z_r.numel() for z_r, _ in pairs) <= SMALL_PATTERNS:
                # at the inputs that is at_input.relu: the same pre-activations in the same order
                pairs = [(torch.cat([z_r for z_r, _ in pairs], 1), at_input.relu)]
            for z_r, z_a in pairs:  # (rows, n) at the roots against (P, n) at their inputs
                on_r = (z_r > threshold).reshape(n_points, n_roots, -1)
                on_a = (z_a > threshold).reshape(n_points, 1, -1)
                same.logical_and_(_all_last(on_r == on_a).reshape(rows))
            moved = (~same).nonzero().squeeze(1)
            if moved.numel():  # a neuron clearly on at one and clearly off at the other: only where the pattern moved
                crossed_moved = torch.zeros(moved.shape[0], dtype=torch.bool, device=roots.device)
                for z_r, z_a in pairs:
                    z_r, z_a = z_r.index_select(0, moved), z_a.index_select(0, moved // n_roots)
                    crossed_moved.logical_or_(_any_last(((z_r > threshold) & (z_a < -threshold))
                                                        | ((z_r < -threshold) & (z_a > threshold))))
                crossed.index_copy_(0, moved, crossed_moved)
            for node in live:
                if isinstance(node, MaxPoolNode):
                    reference = at_points(argmax_x[node.id])
                    same.logical_and_(_all_last(argmax[node.id].reshape(n_points, n_roots, -1)
                                                == reference.reshape(n_points, 1, -1)).reshape(rows))
                    ref = reference.repeat_interleave(n_roots, dim=0)
                    at_ref = (_planes(values[node.source], node.dim).gather(2, _planes(ref, node.dim))
                              .reshape(values[node.id].shape))
                    ties.logical_and_(_all_last(node.oriented(values[node.id] - at_ref).flatten(1) <= threshold))
        gmax = torch.zeros(rows, dtype=roots.dtype, device=roots.device)
        gmean = torch.zeros_like(gmax)
        idx = (~same).nonzero().squeeze(1)
        if idx.numel():
            sub = {}
            for node in live:
                if isinstance(node, ReLUNode):
                    sub[node.source] = values[node.source].index_select(0, idx)
            sub_argmax = {i: a.index_select(0, idx) for i, a in argmax.items()}
            sub_output = output.index_select(0, idx) if isinstance(output, torch.Tensor) else output
            g_r = self._gradient(k, live, sub, sub_argmax, sub_output, column.index_select(0, idx), threshold,
                                 overridden, live_ids)
            if at_input.gradient is None:
                raise ValueError("at_input must hold the inputs' gradient (evaluate_roots with gradient=True)")
            diff = (g_r - at_input.gradient.index_select(0, idx // n_roots)).abs()
            gmax.index_copy_(0, idx, diff.amax(-1))
            gmean.index_copy_(0, idx, diff.mean(-1))
        return RootComparison(f, same, same | (~crossed & ties), gmax, gmean)

    def _gradient(self, k: int, live: tuple[Node, ...], values: dict[int, torch.Tensor],
                  argmax: dict[int, torch.Tensor], output: int | torch.Tensor, column: torch.Tensor, threshold: float,
                  overridden: frozenset[int], live_ids: set[int]) -> torch.Tensor:
        """``d f_k / d a`` ``(M, D_k)``: the backward pass of masks, transposed operators and argmax routing."""
        last = self.nodes[self.layer_ids[-1]]
        rows = column.shape[0]
        seed = column.new_zeros(rows, math.prod(last.shape))
        if isinstance(output, torch.Tensor):
            idx = output.reshape(-1, 1)
        else:
            idx = torch.full((rows, 1), output, device=column.device)
        scale = (column > threshold).to(column.dtype) if self.final_relu else torch.ones_like(column)
        seed.scatter_(1, idx, scale.unsqueeze(1))
        grads = {last.id: seed.reshape((rows,) + tuple(last.shape))}
        with torch.no_grad():
            for node in reversed(live):
                g = grads.pop(node.id, None)
                if g is None:
                    continue
                if isinstance(node, AffineNode):
                    for branch in node.branches:
                        if branch.source in live_ids or branch.source in overridden:
                            self._add(grads, branch.source, branch.op.transpose(g))
                elif isinstance(node, ReLUNode):
                    self._add(grads, node.source, g * (values[node.source] > threshold).to(g.dtype))
                elif isinstance(node, MaxPoolNode):  # never the input: it has no sources, so it is never live
                    shape = self.nodes[node.source].shape
                    self._add(grads, node.source, scatter_argmax(g, argmax[node.id], shape, node.dim))
            parts = []
            for branch in self.layer(k).branches:
                g = grads.get(branch.source)
                if g is None:
                    parts.append(torch.zeros(rows, branch.op.in_features, dtype=column.dtype, device=column.device))
                else:
                    parts.append(g.flatten(1))
            return check_finite_layer(parts[0] if len(parts) == 1 else torch.cat(parts, 1), k,
                                      "the input gradient's entries")

    @staticmethod
    def _add(grads: dict[int, torch.Tensor], node_id: int, g: torch.Tensor) -> None:
        grads[node_id] = g if node_id not in grads else grads[node_id] + g

    def __repr__(self) -> str:
        names = ", ".join(self.layer_names())
        return (f"GraphNetwork(input_shape={self.input_shape}, "
                f"{self.n_layers} layers: {names}; final_relu={self.final_relu})")
