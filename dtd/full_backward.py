"""Full-backward ("true") Deep Taylor Decomposition: the upper decomposition re-applied at every root.

Train-free DTD takes a layer's upper relevance at the real activations and
assumes it behaves like the neuron's output near the root.  The recursive DTD
(the 2022 study's Algorithm 1) instead treats the upper relevance as the
function it is: for layer ``k`` with input ``a``,

``R_j(a) = Rel_{k+1}(act(W_k a + b_k))_j``

where ``Rel_{k+1}(h)`` is the relevance DTD hands to the inputs of layer
``k + 1`` at ``h`` (at the top: ``Rel_L(y) = y_out`` for the explained output,
0 for the others).  Per neuron ``j`` carrying relevance, a root finder gives
a root ``r_j`` of ``R_j``'s first-order model at ``a``: with the slope
``s_j = dR_j/dz_j`` at ``a`` (below), ``w_j . (a - r_j) = R_j(a) / s_j``
(``s_j = 1`` at the top layer, the train-free root equation; ``s_j = 0``
with ``R_j != 0`` means the relevance function is flat there and has no root); then

* the root is forwarded, ``h_j = act(W_k r_j + b_k)``, and the upper
  decomposition is re-applied there: the *unresolved* relevance
  ``R_j(r_j) = Rel_{k+1}(h_j)_j`` (DTD promises 0);
* the relevance of the inputs is ``R_i = sum_j [grad R_j(r_j)]_i (a - r_j)_i``.

Gradient at the root.  A root finder's output is no differentiable function
of its input, so the roots of the upper layers are constants of the
expansion, and ``Rel_{k+1}(h)_i = sum_l g_li (h_i - r_li)`` near ``h_j``: its
gradient in ``h`` is diagonal, ``G_i = sum_l g_li``.  Hence
``grad R_j(r_j) = G_j(h_j) * act'(z_j(r_j)) * w_j`` and ``s_j = G_j * act'(z_j(a))``
at the real activations.  Conservation ``sum_i R_i = sum_j R_j`` holds
exactly when every slope at the root equals the slope at ``a``.  Where the root lies on
neuron ``j``'s hinge (``|z_j(r_j)| <= pattern_tol``; every top-layer root
does), ``act'`` is taken on the side the segment from the root to ``a``
enters, which by the root equation is the active side iff ``R_j(a) / s_j > 0``.
On the top layer this makes full backward equal train-free DTD.

Cost.  Evaluating ``Rel_k`` at ``M`` points evaluates ``Rel_{k+1}`` at the
``M`` activations and at up to ``M * J_k`` forwarded roots, so the points
passed to root finders grow like ``N * prod_k (1 + J_k)`` -- ``J^depth``.
:func:`estimate_cost` gives the bound before anything runs; ``full_backward``
refuses above ``budget`` (default :data:`DEFAULT_BUDGET`).  Work is shared
by exact keys: at every level, identical rows (the same bits, hence the same
ReLU pattern; never a rounded or hashed float) are evaluated once.
"""

from __future__ import annotations

import dataclasses

import torch

from .decompose import checked_activations
from .decomposition import Decomposition, LayerDecomposition, edge_shape
from .graph import dense_only
from .network import ReLUNetwork
from .outputs import explain, is_weights
from .roots import RootFinder
from .rootsets import ExplicitRoots
from .tolerances import pattern_tol
from .validation import check_finite_layer, check_int

__all__ = ["DEFAULT_BUDGET", "FullBackward", "FullBackwardLayer", "estimate_cost", "full_backward"]

#: Default limit on the points full_backward may pass to root finders (the bound of :func:`estimate_cost`).
DEFAULT_BUDGET = 2_000_000

#: Rows per root-finder call (bounds the memory of the sampling finders).
FINDER_BATCH = 2048


@dataclasses.dataclass(frozen=True)
class FullBackwardLayer(LayerDecomposition):
    """One layer of a full-backward decomposition, at the real activations.

    Besides :class:`~dtd.decompose.LayerDecomposition`'s fields
    (``upper_relevance`` is here the full-backward relevance of the layer above):

    unresolved
        ``(batch, J)``: ``R_j(root_j)``, the upper decomposition re-applied at
        the forwarded root; 0 where the neuron carries no relevance or has no
        valid root.
    gradient_scale
        ``(batch, J)``: ``grad R_j(root_j) = gradient_scale_j * w_j``.
    slope
        ``(batch, J)``: ``dR_j / dz_j`` at ``a``; the root solves
        ``w_j . (a - root_j) = R_j / slope_j``.  Where it is 0 but ``R_j`` is
        not, ``R_j`` has no root (``root_valid`` False; the relevance is lost).
    """

    unresolved: torch.Tensor
    gradient_scale: torch.Tensor
    slope: torch.Tensor

    @property
    def conservation_error(self) -> torch.Tensor:
        """``(batch,)``: ``sum_j R_j - sum_i R_i`` of this layer."""
        return self.upper_relevance.sum(1) - self.relevance.sum(1)


@dataclasses.dataclass(frozen=True)
class FullBackward(Decomposition):
    """Result of :func:`full_backward`.

    estimated_evaluations
        The bound of :func:`estimate_cost` that was checked against the budget.
    evaluations
        Points actually passed to the root finder, per layer (first layer first).
    reused
        Rows served from an identical row at the same level instead of being evaluated again.
    """

    layers: tuple[FullBackwardLayer, ...]
    estimated_evaluations: int
    evaluations: tuple[int, ...]
    reused: int

    @property
    def conservation_error(self) -> torch.Tensor:
        """``(batch,)``: ``f(x) - sum_i R_i`` over the whole network."""
        return self.output_value - self.relevance.sum(1)


def estimate_cost(net: ReLUNetwork, n_points: int) -> int:
    """Upper bound on the points :func:`full_backward` passes to root finders for ``n_points`` inputs.

    Layer ``k`` is evaluated at ``N_k`` points with ``N_0 = n_points`` and
    ``N_{k+1} = N_k (1 + J_k)`` (``J = 1`` at the top: only the explained
    output carries relevance); the bound is ``sum_k N_k``.  Neurons without
    relevance or without a valid root and repeated rows make the real count smaller.
    """
    dense_only(net, "estimate_cost")
    if not isinstance(net, ReLUNetwork):
        raise TypeError(f"net must be a dtd.ReLUNetwork, got {type(net).__name__}")
    total, level = 0, check_int(n_points, "n_points", minimum=0)
    for k in range(net.n_layers):
        total += level
        width = 1 if k == net.n_layers - 1 else net.weight(k).shape[0]
        level *= 1 + width
    return total


@dataclasses.dataclass
class _Upper:
    """``Rel_k`` at some points and its diagonal gradient ``G``, both ``(M, D_k)``."""

    relevance: torch.Tensor
    gradient: torch.Tensor


class _Recursion:
    def __init__(self, net: ReLUNetwork, finder: RootFinder, output: int | torch.Tensor):
        self.net, self.finder, self.output = net, finder, output
        self.evaluations = [0] * net.n_layers
        self.reused = 0
        self.recorded: dict[int, FullBackwardLayer] = {}

    def act(self, k: int, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(z) if self.net.has_relu(k) else z

    def act_slope(self, k: int, z: torch.Tensor, on_hinge: torch.Tensor | None) -> torch.Tensor:
        """``act'(z)`` of layer ``k``: 1 / 0 off the hinge; on it
        (``|z| <= pattern_tol``) ``on_hinge`` if given, else 0."""
        if not self.net.has_relu(k):
            return torch.ones_like(z)
        if on_hinge is None:
            return (z > 0).to(z.dtype)
        return torch.where(z.abs() <= pattern_tol(z.dtype), on_hinge, z > 0).to(z.dtype)

    def evaluate(self, k: int, h: torch.Tensor, direction: torch.Tensor | None = None, record: bool = False) -> _Upper:
        """``Rel_k`` at the rows of ``h`` (inputs of layer ``k``; ``k = n_layers``: the network output).

        ``direction`` (rows like ``h``): where a ReLU sits exactly on its hinge,
        its slope is taken on the side this direction enters (the way back to
        the point being expanded); ``None``: ``act'(0) = 0``.
        """
        if h.shape[0] == 0:
            return _Upper(h.clone(), h.clone())
        if k == self.net.n_layers:
            relevance = torch.zeros_like(h)
            relevance[:, self.output] = h[:, self.output]
            gradient = torch.zeros_like(h)
            gradient[:, self.output] = 1
            return _Upper(relevance, gradient)
        if not record:
            key = h if direction is None else torch.cat([h, direction], 1)
            unique, inverse = torch.unique(key, dim=0, return_inverse=True)  # exact: equal bits only
            if unique.shape[0] < h.shape[0]:
                self.reused += h.shape[0] - unique.shape[0]
                width = h.shape[1]
                upper = self._evaluate(k, unique[:, :width], None if direction is None else unique[:, width:], False)
                return _Upper(upper.relevance[inverse], upper.gradient[inverse])
        return self._evaluate(k, h, direction, record)

    def _find(self, k: int, a: torch.Tensor, relevance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        roots, valid = [], []
        for start in range(0, a.shape[0], FINDER_BATCH):
            stop = start + FINDER_BATCH
            found = self.finder.find(self.net, k, a[start:stop], relevance[start:stop], output=self.output)
            roots.append(found.roots())
            valid.append(found.valid)
        self.evaluations[k] += a.shape[0]
        return torch.cat(roots), torch.cat(valid)

    def _forward(
        self, k: int, a: torch.Tensor, direction: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Layer ``k`` at ``a``: ``(z, act(z), slope act'(z), direction of the output)``."""
        w, b = self.net.weight(k), self.net.bias(k)
        z = check_finite_layer(a @ w.T + b, k, "its pre-activations")
        dz = None if direction is None else direction @ w.T
        slope = self.act_slope(k, z, None if dz is None else dz > 0)
        return z, self.act(k, z), slope, None if dz is None else slope * dz

    def _evaluate(self, k: int, a: torch.Tensor, direction: torch.Tensor | None, record: bool) -> _Upper:
        w = self.net.weight(k)
        z, h, act_slope, dh = self._forward(k, a, direction)
        upper = self.evaluate(k + 1, h, dh, record)
        relevance = upper.relevance  # (M, J): R_j(a)
        # R_j's slope in z_j at a; its first-order model vanishes where w_j . (a - r) = R_j / slope_j
        slope = upper.gradient * act_slope
        flat = (relevance != 0) & (slope == 0)  # R_j locally constant: it has no root
        model = torch.where(slope != 0, relevance / torch.where(slope != 0, slope, torch.ones_like(slope)),
                            torch.zeros_like(slope))
        roots, valid = self._find(k, a, model)
        valid = valid & ~flat
        pairs = ((relevance != 0) & valid).nonzero()  # (P, 2): point, neuron
        point, neuron = pairs[:, 0], pairs[:, 1]
        root = roots[point, neuron]  # (P, D)
        # the upper decomposition re-applied at the forwarded root, hinges judged on the way back to a
        _, h_root, root_slope, dh_root = self._forward(k, root, a[point] - root)
        at_root = self.evaluate(k + 1, h_root, dh_root)
        rows = torch.arange(len(neuron))
        unresolved_pairs = at_root.relevance[rows, neuron]
        scale_pairs = at_root.gradient[rows, neuron] * root_slope[rows, neuron]
        grad = scale_pairs.unsqueeze(1) * w[neuron]  # (P, D)
        lower = check_finite_layer(torch.zeros_like(a).index_add_(0, point, grad * (a[point] - root)), k,
                                   "the input relevances")
        # neurons without relevance expand at a itself (trivial root): their gradient is the slope there
        trivial = (relevance == 0).to(a.dtype)
        gradient = (slope * trivial) @ w
        gradient.index_add_(0, point, grad)
        if record:
            unresolved = torch.zeros_like(relevance).index_put_((point, neuron), unresolved_pairs)
            gradient_scale = torch.zeros_like(relevance).index_put_((point, neuron), scale_pairs)
            self.recorded[k] = FullBackwardLayer(
                index=k,
                method=self.finder.describe(k),
                input=a,
                upper_relevance=relevance,
                root_set=ExplicitRoots(a, roots, valid),
                root_valid=valid,
                carries_relevance=relevance != 0,
                relevance=lower,
                unresolved=unresolved,
                gradient_scale=gradient_scale,
                slope=slope,
            )
        return _Upper(lower, gradient)


def full_backward(
    net: ReLUNetwork,
    x: torch.Tensor,
    *,
    root_finder: RootFinder,
    output: int | torch.Tensor | str = 0,
    budget: int | None = DEFAULT_BUDGET,
) -> FullBackward:
    """Full-backward (recursive) DTD of output ``output`` of ``net`` at the points ``x``.

    Parameters
    ----------
    net, x, output
        As for :func:`~dtd.decompose.train_free` (not modified; an index
        tuple or output weights too); per-point outputs (a ``(batch,)``
        tensor or ``"predicted"``) run the recursion once per distinct output
        on its points and put the rows back in order.
    root_finder
        Where each neuron's relevance function is expanded, at every level of
        the recursion (e.g. ``dtd.LinearRoots("z+")``,
        ``dtd.RegionSamplingRoots()``, ``dtd.RegionRoots()``).
    budget
        Largest allowed :func:`estimate_cost` (points passed to root
        finders); ``None`` lifts the limit.

    Returns
    -------
    FullBackward
        Per layer at the real activations: roots, relevances, the unresolved
        relevance ``R_j(root_j)`` per neuron and the conservation error.

    Raises
    ------
    TypeError
        As :func:`train_free` (half precision is refused).
    ValueError
        The cost bound exceeds ``budget`` (the message gives both), or any
        input or overflow error :func:`train_free` reports.
    """
    if budget is not None:
        check_int(budget, "budget", minimum=1)
    dense_only(net, "full_backward")
    weights = output if is_weights(output) else None
    if isinstance(net, ReLUNetwork):
        net, output = explain(net, output)  # weights: the network of sum(w * y); a tuple: its flat index
    if weights is not None:
        result = full_backward(net, x, root_finder=root_finder, output=output, budget=budget)
        return dataclasses.replace(result, output=weights.detach().clone())
    output, activations = checked_activations(net, x, output, root_finder)
    estimate = estimate_cost(net, activations[0].shape[0])
    if budget is not None and estimate > budget:
        per_point = estimate_cost(net, 1)
        raise ValueError(
            f"full_backward would pass up to {estimate:,} points to the root finder "
            f"({per_point:,} per input point on a network with layer widths {net.sizes}: the count "
            f"grows like width^depth), above the budget of {budget:,}; explain fewer points (at "
            f"most {budget // per_point:,}) or pass a larger budget= (None: no limit)"
        )
    if isinstance(output, torch.Tensor):
        return _per_output(net, activations[0], root_finder, output, estimate)
    recursion = _Recursion(net, root_finder, output)
    with torch.no_grad():
        recursion.evaluate(0, activations[0], None, record=True)
    layers = tuple(recursion.recorded[k] for k in range(net.n_layers))
    return FullBackward(
        layers=layers,
        output=output,
        output_value=activations[-1][:, output].clone(),
        estimated_evaluations=estimate,
        evaluations=tuple(recursion.evaluations),
        reused=recursion.reused,
        input_shape=edge_shape(x),
    )


def _per_output(
    net: ReLUNetwork, x: torch.Tensor, root_finder: RootFinder, output: torch.Tensor, estimate: int
) -> FullBackward:
    """Per-point outputs: one recursion per distinct output (rows identical across outputs are not shared)."""
    groups = [(int(c), (output == c).nonzero().squeeze(1)) for c in output.unique().tolist()]
    parts = [full_backward(net, x[index], root_finder=root_finder, output=c, budget=None) for c, index in groups]
    n = x.shape[0]

    def merged(values: list[torch.Tensor]) -> torch.Tensor:
        first = values[0]
        result = torch.empty((n,) + tuple(first.shape[1:]), dtype=first.dtype, device=first.device)
        for (_, index), value in zip(groups, values, strict=True):
            result[index] = value
        return result

    layers = []
    for k in range(net.n_layers):
        pieces = [part.layers[k] for part in parts]
        fields = {f.name: merged([getattr(p, f.name) for p in pieces]) for f in dataclasses.fields(FullBackwardLayer)
                  if isinstance(getattr(pieces[0], f.name), torch.Tensor)}
        roots = ExplicitRoots(fields["input"], merged([p.roots for p in pieces]), fields["root_valid"])
        layers.append(FullBackwardLayer(index=k, method=pieces[0].method, root_set=roots, **fields))
    return FullBackward(
        layers=tuple(layers),
        output=output,
        output_value=merged([p.output_value for p in parts]),
        estimated_evaluations=estimate,
        evaluations=tuple(sum(p.evaluations[k] for p in parts) for k in range(net.n_layers)),
        reused=sum(p.reused for p in parts),
    )
