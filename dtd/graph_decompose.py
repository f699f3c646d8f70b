"""Train-free DTD on a :class:`~dtd.graph.GraphNetwork`, matrix-free.

Relevance walks the graph backwards, in reverse topological order: the
output's affine node gets ``R_j = f(x)`` for the explained output (0 for the
others); a ReLU passes its relevance to its input unchanged; a max pool to the
argmax input of each window (overlapping windows add up); an affine node (a
DTD layer) applies its rule (:mod:`dtd.rules`) and hands each branch's input
its share.  An activation read by several consumers sums what they hand it.

A rule is applied through its :class:`~dtd.rules.Terms`: the denominators
``w_j . v_j = ((W * P) a)_j + ((W * Q) 1)_j`` and the input relevances
``R_i = a_i ((W * P)^T t)_i + ((W * Q)^T t)_i`` are sums of the layer's
modified operators (``W``, ``W+``, ``W-``, ``W^2``) applied forward and
transposed, so no ``(J, D)`` matrix and no ``(batch, J, D)`` root tensor is
formed.  Roots are built only for the neurons asked for
(:meth:`OperatorRoots.selected`).

Any other root finder (the in-region ones: ``RegionRoots``,
``RegionSamplingRoots``, ``MetropolisHastingsRoots``) is given the layer's
input ``a`` and upper relevance flat, returns its roots ``(batch, J, D)``,
and the input relevances ``R_i = sum_j w_ji (a - root_j)_i`` use the layer's
dense weight (:meth:`GraphNetwork.weight`, refused above
:data:`dtd.graph.DENSE_LAYER_LIMIT`), split back onto the branches.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

from .decomposition import GraphDecomposition, LayerDecomposition, check_output_and_precision, edge_shape
from .graph import AffineNode, GraphNetwork, MaxPoolNode, ReLUNode, scatter_argmax
from .roots import LinearRoots, RootFinder
from .rootsets import RootSet
from .rules import WEIGHTED, Rule
from .tolerances import denominator_eps
from .validation import all_finite, check_finite_layer, overflow_error

if TYPE_CHECKING:
    from .network import ReLUNetwork
    from .outputs import OutputLike

__all__ = ["OperatorRoots", "GraphDecomposition", "graph_train_free", "decompose", "check_domains",
           "ROOT_ELEMENTS_LIMIT"]

#: Largest number of root coordinates (points x neurons x D) :meth:`OperatorRoots.roots` materialises at once;
#: beyond it, judge sampled neurons (:meth:`OperatorRoots.selected`, ``root_outcomes(..., neurons=K)``).
ROOT_ELEMENTS_LIMIT = 1 << 27


def _q_parts(net: GraphNetwork, k: int, value: float | torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
    """A ``Terms.q`` value (a number or a ``(D_k,)`` per-feature tensor) as one
    tensor per branch, in its source's shape."""
    node = net.layer(k)
    if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() > 1:
        if value.numel() != net.in_features(k):
            raise ValueError(f"a per-feature bound has {value.numel()} entries "
                             f"but layer {k} has {net.in_features(k)} inputs")
        flat = value.to(dtype=like.dtype, device=like.device).unsqueeze(0)
        return [part.squeeze(0) for part in net.split_input(k, flat)]
    number = float(value) if not isinstance(value, torch.Tensor) else float(value.reshape(()))
    return [torch.full(tuple(b.op.in_shape), number, dtype=like.dtype, device=like.device) for b in node.branches]


class OperatorRoots(RootSet):
    """The roots ``root_j = a - t_j (a * P_j + Q_j)`` of one graph layer, built on demand.

    ``t`` ``(batch, J)`` is 0 where the root is invalid; ``P``, ``Q`` are the
    rule's :class:`~dtd.rules.Terms` over the layer's operators.
    """

    def __init__(self, net: GraphNetwork, k: int, rule: Rule, a: torch.Tensor, t: torch.Tensor, valid: torch.Tensor,
                 relevance: torch.Tensor) -> None:
        self.net, self.k, self.rule = net, k, rule
        self.input, self.t, self.valid, self._relevance = a, t, valid, relevance

    def directions(self, start: int, stop: int, index: torch.Tensor) -> torch.Tensor:
        """``v_j`` ``(stop - start, K, D)`` of the neurons ``index`` of the points ``start:stop``.

        ``index`` is ``(stop - start, K)``, or ``(1, K)``: the same neurons for every point.
        """
        terms = self.rule.terms()
        node = self.net.layer(self.k)
        a = self.input[start:stop]
        n, kk = a.shape[0], index.shape[1]
        a_parts = self.net.split_input(self.k, a)
        parts = []
        for b, branch in enumerate(node.branches):
            a_b = a_parts[b].unsqueeze(1)  # (n, 1, *in_shape) against the rows (n or 1, K, *in_shape)
            v: torch.Tensor | None = None
            for kind, coef in terms.p:
                term = branch.op.modified(kind).rows(index, a.dtype)
                term = term if coef == 1.0 else coef * term
                v = term if v is None else v + term
            v = a_b * v if v is not None else torch.zeros((n, kk) + a_b.shape[2:], dtype=a.dtype, device=a.device)
            for kind, value in terms.q:
                q_b = _q_parts(self.net, self.k, value, a)[b]
                v = v + branch.op.modified(kind).rows(index, a.dtype) * q_b
            parts.append(v.reshape(n, kk, -1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def selected(self, start: int, stop: int, index: torch.Tensor) -> torch.Tensor:
        """Roots ``(stop - start, K, D)`` of the neurons ``index`` ``(stop - start, K)`` (or
        ``(1, K)``) of the points ``start:stop``."""
        a = self.input[start:stop].unsqueeze(1)
        t = self.t[start:stop]
        t = (t.gather(1, index) if index.shape[0] == t.shape[0] else t.index_select(1, index[0])).unsqueeze(-1)
        return a - t * self.directions(start, stop, index)

    def roots(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.input.shape[0] if stop is None else stop
        n, j, d = stop - start, self.valid.shape[1], self.input.shape[1]
        if n * j * d > ROOT_ELEMENTS_LIMIT:
            raise ValueError(
                f"layer {self.k} has {j} neurons on {d} inputs: the roots of "
                f"{n} point(s) would hold {n * j * d:,} values; judge sampled neurons "
                "instead (root_outcomes(..., neurons=K) or OperatorRoots.selected)"
            )
        return self.selected(start, stop, torch.arange(j, device=self.input.device).unsqueeze(0))

    def relevance(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``R_i`` of the layer's inputs ``(batch, D)`` (computed with the operators; ``weight`` is not needed)."""
        return self._relevance


def operator_step(net: GraphNetwork, k: int, rule: Rule, parts: list[torch.Tensor], relevance: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The rule at layer ``k``: ``(t, valid, relevance per branch)`` for branch inputs
    ``parts`` and upper relevance ``(N, *shape)``."""
    terms = rule.terms()
    node = net.layer(k)
    like = parts[0]
    z: torch.Tensor | None = None
    for b, branch in enumerate(node.branches):
        for kind, coef in terms.p:
            term = branch.op.modified(WEIGHTED[kind]).forward(parts[b])
            term = term if coef == 1.0 else coef * term
            z = term if z is None else z + term
        for kind, value in terms.q:
            q_b = _q_parts(net, k, value, like)[b].unsqueeze(0)
            term = branch.op.modified(WEIGHTED[kind]).forward(q_b)
            z = term if z is None else z + term
    if z is None:
        raise TypeError(f"{rule!r}.terms() is empty: its direction has neither P nor Q")
    n = relevance.shape[0]
    z = z.expand((n,) + tuple(node.shape)).reshape(n, -1)
    if not all_finite(z):
        raise overflow_error(k, like.dtype, f"the {rule!r} denominators w_j . v_j")
    r = relevance.reshape(n, -1)
    carries = r != 0
    valid = (z.abs() > eps) | ~carries
    use = valid & carries
    t = torch.where(use, r / z, 0.0)  # r / z where the root exists; what the division gives elsewhere is discarded
    t_shaped = t.reshape((n,) + tuple(node.shape))
    lower = []
    for b, branch in enumerate(node.branches):
        back: torch.Tensor | None = None
        for kind, coef in terms.p:
            term = branch.op.modified(WEIGHTED[kind]).transpose(t_shaped)
            term = term if coef == 1.0 else coef * term
            back = term if back is None else back + term
        result = parts[b] * back if back is not None else torch.zeros_like(parts[b])
        for kind, value in terms.q:
            q_b = _q_parts(net, k, value, like)[b]
            result = result + q_b * branch.op.modified(WEIGHTED[kind]).transpose(t_shaped)
        lower.append(check_finite_layer(result, k, "the input relevances"))
    return t, valid, lower


def _takes_base(root_finder: RootFinder) -> bool:
    """Whether the finder's ``find`` accepts ``base=`` (:meth:`GraphNetwork.run`'s values at the explained points)."""
    try:
        parameters = inspect.signature(root_finder.find).parameters
    except (TypeError, ValueError):
        return False
    return "base" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def check_domains(net: GraphNetwork, x: torch.Tensor, root_finder: RootFinder) -> None:
    """Raise the ``ValueError`` a decomposition of ``x`` would raise for activations outside the finder's domains."""
    x = net.check_input(x)
    root_finder.check(net)
    values, _ = net.run(x)
    for k in range(net.n_layers):
        root_finder.check_domain(k, net.layer_input(values, k))


def graph_train_free(net: GraphNetwork, x: torch.Tensor, output: OutputLike,
                     root_finder: RootFinder) -> GraphDecomposition:
    """:func:`dtd.train_free` on a graph network (called from there; arguments already chosen).

    :class:`~dtd.roots.LinearRoots` runs matrix-free (:func:`operator_step`);
    any other finder through its ``find`` (see :func:`decompose`), with
    ``base=`` (every node's value at ``x``) when its ``find`` takes it.
    """
    if not isinstance(root_finder, RootFinder):
        raise TypeError(f"root_finder must be a dtd.roots.RootFinder, got {type(root_finder).__name__}")
    checked = check_output_and_precision(net, output, "the model's .float() / .double() (and x's)")
    shape = edge_shape(x) if isinstance(x, torch.Tensor) else None
    x = net.check_input(x).clone()
    if not isinstance(checked, str):
        checked = net.check_output(checked, x.shape[0])
    root_finder.check(net)
    input_shape = shape if shape is not None else (tuple(net.input_shape) if len(net.input_shape) > 1 else None)
    return decompose(net, x, checked, root_finder, finder_net=net, input_shape=input_shape)


def _operator_rule(root_finder: RootFinder, k: int) -> Rule | None:
    """Layer ``k``'s rule when it is applied through the operators (a neuron rule with
    :meth:`~dtd.rules.Rule.terms`), else None."""
    if not isinstance(root_finder, LinearRoots):
        return None
    rule = root_finder.rule(k)
    try:
        rule.terms()
    except TypeError:  # a layer rule (pinv) or a rule given only as dense matrices: the finder's dense step
        return None
    return rule


def decompose(
    net: GraphNetwork, x: torch.Tensor, output: int | torch.Tensor | str, root_finder: RootFinder, *,
    finder_net: ReLUNetwork | GraphNetwork, input_shape: tuple[int, ...] | None
) -> GraphDecomposition:
    """The engine's train-free walk over ``net`` (every network's: a :class:`dtd.ReLUNetwork` runs as its chain graph).

    ``x`` is validated and owned, ``output`` checked (an int, a ``(batch,)``
    tensor, or ``"predicted"``) and ``root_finder.check`` done.  Neuron rules
    of a :class:`~dtd.roots.LinearRoots` are applied through the layer's
    operators (:func:`operator_step`); any other finder (and a layer rule)
    gets ``finder_net`` -- the network the caller passed -- and the layer's
    inputs flat, as :meth:`~dtd.roots.RootFinder.find` documents, and its
    root set's relevance is taken with the layer's dense matrix.
    ``input_shape`` is the decomposition's (the explained ``x``'s shape).
    """
    values, argmax = net.run(x)
    top = net.output_of(values)
    explained = net.check_output(top.argmax(1), x.shape[0]) if isinstance(output, str) else output
    inputs = [net.layer_input(values, k) for k in range(net.n_layers)]
    for k in range(net.n_layers):
        root_finder.check_domain(k, inputs[k])
    eps = getattr(root_finder, "eps", None)
    if eps is None:
        eps = denominator_eps(x.dtype)
    n = x.shape[0]
    # a finder on a graph that takes base= (the in-region ones) gets every node's value at x: activations skipping past
    # a layer
    takes_base = isinstance(finder_net, GraphNetwork) and _takes_base(root_finder)
    finder_kwargs = {"base": (values, argmax)} if takes_base else {}
    with torch.no_grad():
        start = torch.zeros_like(top)
        if isinstance(explained, torch.Tensor):
            column = explained.unsqueeze(1)
            start.scatter_(1, column, top.gather(1, column))
        else:
            start[:, explained] = top[:, explained]
        last = net.nodes[net.layer_ids[-1]]
        relevance: dict[int, torch.Tensor] = {last.id: start.reshape((n,) + tuple(last.shape))}

        def add(node_id: int, r: torch.Tensor) -> None:
            relevance[node_id] = r if node_id not in relevance else relevance[node_id] + r

        layers: dict[int, LayerDecomposition] = {}
        for node in reversed(net.nodes[1:]):
            r = relevance.pop(node.id, None)
            if r is None:
                r = torch.zeros((n,) + tuple(node.shape), dtype=x.dtype, device=x.device)
            if isinstance(node, ReLUNode):
                add(node.source, r)
            elif isinstance(node, MaxPoolNode):
                add(node.source, scatter_argmax(r, argmax[node.id], tuple(values[node.source].shape[1:]), node.dim))
            elif isinstance(node, AffineNode):
                k = net._layer_of[node.id]
                a = inputs[k]
                upper = r.reshape(n, -1)
                rule = _operator_rule(root_finder, k)
                root_set: RootSet
                if rule is not None:
                    parts = [values[b.source] for b in node.branches]
                    t, valid, lower = operator_step(net, k, rule, parts, r, eps)
                    flat_lower = lower[0].flatten(1) if len(lower) == 1 else torch.cat([p.flatten(1) for p in lower], 1)
                    root_set = OperatorRoots(net, k, rule, a, t, valid, flat_lower)
                else:
                    # a graph's dense block row: refused above dtd.graph.DENSE_LAYER_LIMIT
                    weight = finder_net.weight(k)
                    root_set = root_finder.find(finder_net, k, a, upper, output=explained, **finder_kwargs)
                    flat_lower = check_finite_layer(root_set.relevance(weight), k, "the input relevances")
                    lower = net.split_input(k, flat_lower)
                    valid = root_set.valid
                for branch, part in zip(node.branches, lower, strict=True):
                    add(branch.source, part)
                layers[k] = LayerDecomposition(
                    index=k,
                    method=root_finder.describe(k),
                    input=a,
                    upper_relevance=upper,
                    root_set=root_set,
                    root_valid=valid,
                    carries_relevance=upper != 0,
                    relevance=flat_lower,
                )
        input_relevance = relevance.get(0, torch.zeros_like(x))
    if isinstance(explained, torch.Tensor):
        top_value = top.gather(1, explained.unsqueeze(1)).squeeze(1)
    else:
        top_value = top[:, explained]
    return GraphDecomposition(
        layers=tuple(layers[k] for k in range(net.n_layers)),
        output=explained,
        output_value=top_value.clone(),
        input_shape=input_shape,
        input_relevance=input_relevance.reshape(n, -1),
        x=x,
        activations=(values, argmax),
    )
