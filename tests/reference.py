"""Slow, obviously-correct re-implementations that the fast code must equal.

Plain Python loops over points and neurons in numpy float64: no batching, no
einsum, nothing shared with :mod:`dtd` except the network's weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from dtd import rules as R


def linear_part(module: nn.Module) -> nn.Module:
    """A float64 copy of a conv / batch norm / Linear with every additive constant removed (the model's own code)."""
    copy_ = copy.deepcopy(module).double()
    with torch.no_grad():
        if getattr(copy_, "bias", None) is not None:
            copy_.bias.zero_()
        if isinstance(copy_, (nn.BatchNorm1d, nn.BatchNorm2d)):
            copy_.running_mean.zero_()
    return copy_


def dense_matrix(function, in_shape) -> np.ndarray:
    """The matrix ``(D_out, D_in)`` of a linear ``function`` by pushing each basis vector through it."""
    d = int(np.prod(in_shape))
    basis = torch.eye(d, dtype=torch.float64).reshape((d,) + tuple(in_shape))
    with torch.no_grad():
        return function(basis).reshape(d, -1).T.numpy()


def zplus_step(a: np.ndarray, W: np.ndarray, R: np.ndarray) -> np.ndarray:
    """One z+ step for one point, neuron by neuron: ``R_i = sum_j a_i w+_ji R_j / sum_i a_i w+_ji``."""
    out = np.zeros_like(a)
    for j in range(W.shape[0]):
        wp = np.maximum(W[j], 0)
        z = float(a @ wp)
        if R[j] != 0 and abs(z) > 1e-12:
            out += a * wp * R[j] / z
    return out


def layer_params(net):
    return [
        (net.weight(k).double().cpu().numpy(), net.bias(k).double().cpu().numpy(), net.has_relu(k))
        for k in range(net.n_layers)
    ]


def forward_activations(params, x_row):
    """Inputs of every layer for one point, and the output last."""
    acts = [np.array(x_row, dtype=np.float64)]
    for w, b, relu in params:
        z = np.array([sum(w[j, i] * acts[-1][i] for i in range(w.shape[1])) + b[j] for j in range(w.shape[0])])
        acts.append(np.maximum(z, 0.0) if relu else z)
    return acts


def region_constraints(net, a_row, layer, output):
    """The closure of one point's region of ``f_k`` on an MLP, written out: ``(A, c, sign, output_row)``.

    Layer by layer with the ReLU states at ``a_row`` fixed: ``z_l = A_l r + c_l`` with
    ``A_k = W_k``, ``c_k = b_k`` and ``A_{l+1} = W_{l+1} diag(active_l) A_l``,
    ``c_{l+1} = W_{l+1} (active_l * c_l) + b_{l+1}``.  Rows: every hidden layer's
    neurons (sign +1 active, -1 inactive), then the explained output's (sign 0 without a final ReLU).
    """
    params = layer_params(net)
    a_row = np.asarray(a_row, dtype=np.float64)
    w, b, _ = params[layer]
    A, c = w.copy(), b.copy()
    rows_a, rows_c, rows_s = [], [], []
    for k in range(layer, len(params)):
        z = A @ a_row + c
        if k == len(params) - 1:
            output_row = sum(len(r) for r in rows_s)
            rows_a.append(A[output:output + 1])
            rows_c.append(c[output:output + 1])
            rows_s.append(np.array([(1.0 if z[output] > 0 else -1.0) if params[k][2] else 0.0]))
        else:
            rows_a.append(A)
            rows_c.append(c)
            rows_s.append(np.where(z > 0, 1.0, -1.0))
            active = (z > 0).astype(np.float64)
            w_next, b_next, _ = params[k + 1]
            A = w_next @ (active[:, None] * A)
            c = w_next @ (active * c) + b_next
    return np.vstack(rows_a), np.concatenate(rows_c), np.concatenate(rows_s), output_row


# ----------------------------------------------------------------------------- replicas, one per rule
# A newly registered rule adds its replica here (replicates(Class)); the tests find it by the rule's class.

#: rule class -> (replica, is a layer rule)
REPLICAS: dict = {}


def replicates(cls: type, *, layer_rule: bool = False):
    """Register the slow reference of rule class ``cls``.

    A neuron rule's replica is ``direction(rule, a, w_j) -> v_j`` (numpy, one neuron); a layer rule's
    (``layer_rule=True``) is ``roots(rule, a, W, R) -> (roots (J, D), valid (J,))``.
    """

    def decorate(function):
        REPLICAS[cls] = (function, layer_rule)
        return function

    return decorate


def unreplicate(cls: type) -> None:
    """Forget a replica (for tests that register a temporary rule)."""
    REPLICAS.pop(cls, None)


def _elementwise(choose):
    """A neuron rule's replica from ``choose(rule, a_i, w_ji, i) -> v_i``, one element at a time."""

    def direction(rule, a, w_j):
        return np.array([choose(rule, a[i], w_j[i], i) for i in range(len(a))], dtype=np.float64)

    return direction


def _bound(value, i):
    return float(value[i]) if value.dim() == 1 else float(value)


replicates(R.ZPlus)(_elementwise(lambda rule, a, w, i: a if w >= 0 else 0.0))
replicates(R.WSquare)(_elementwise(lambda rule, a, w, i: w))
replicates(R.Gamma)(_elementwise(lambda rule, a, w, i: a * (1.0 + rule.gamma) if w >= 0 else a))
replicates(R.LRP0)(_elementwise(lambda rule, a, w, i: a))
replicates(R.ZB)(_elementwise(lambda rule, a, w, i: a - _bound(rule.low, i) if w >= 0 else a - _bound(rule.high, i)))


@replicates(R.Pinv, layer_rule=True)
def _pinv(rule, a, w, upper):
    """One root for the layer, ``a - pinv(W) R``; a neuron's root is valid where its root equation holds."""
    n_out, n_in = w.shape
    step = np.linalg.pinv(w) @ upper
    roots, valid = np.zeros((n_out, n_in)), np.zeros(n_out, dtype=bool)
    for j in range(n_out):
        roots[j] = a - step
        residual = sum(w[j, i] * step[i] for i in range(n_in)) - upper[j]
        scale = sum(abs(w[j, i] * step[i]) for i in range(n_in)) + abs(upper[j])
        valid[j] = abs(residual) <= 1e-9 * max(scale, 1.0)
    return roots, valid


def direction(rule, a, w_j):
    """The root direction v_j of one neuron, from the rule's registered replica."""
    replica, layer_rule = REPLICAS.get(type(rule), (None, False))
    if replica is None or layer_rule:
        raise NotImplementedError(f"no neuron replica registered for {rule!r}")
    return replica(rule, a, w_j)


def layer_roots(rule, a, w, upper, eps):
    """Roots ``(J, D)`` and validity ``(J,)`` of one layer at one point, neuron by
    neuron (or the layer rule's replica)."""
    replica, layer_rule = REPLICAS.get(type(rule), (None, False))
    if replica is None:
        raise NotImplementedError(f"no replica registered for {rule!r}: add one "
                                  "with replicates(...) in tests/reference.py")
    if layer_rule:
        return replica(rule, a, w, upper)
    n_out, n_in = w.shape
    roots, valid = np.zeros((n_out, n_in)), np.zeros(n_out, dtype=bool)
    for j in range(n_out):
        if upper[j] == 0:
            roots[j], valid[j] = a, True
            continue
        v = direction(rule, a, w[j])
        denominator = sum(w[j, i] * v[i] for i in range(n_in))
        if abs(denominator) > eps:
            roots[j], valid[j] = a - upper[j] / denominator * v, True
        else:
            roots[j], valid[j] = a, False
    return roots, valid


def train_free(net, x, rules, output, eps):
    """Train-free DTD, one point and one neuron at a time.

    Returns per layer (first layer first) a dict of numpy arrays:
    roots (N, J, D), valid (N, J), upper (N, J), relevance (N, D).
    """
    params = layer_params(net)
    x = x.double().cpu().numpy()
    n_points = x.shape[0]
    out = [None] * len(params)
    per_point = []
    for n in range(n_points):
        acts = forward_activations(params, x[n])
        upper = np.zeros(len(acts[-1]))
        upper[output] = acts[-1][output]
        layers = [None] * len(params)
        for k in range(len(params) - 1, -1, -1):
            w, _, _ = params[k]
            a = acts[k]
            n_out, n_in = w.shape
            roots, valid = layer_roots(rules[k], a, w, upper, eps)
            relevance = np.zeros(n_in)
            for i in range(n_in):
                relevance[i] = sum(w[j, i] * (a[i] - roots[j, i]) for j in range(n_out) if valid[j])
            layers[k] = dict(roots=roots, valid=valid, upper=upper.copy(), relevance=relevance, input=a)
            upper = relevance
        per_point.append(layers)
    for k in range(len(params)):
        out[k] = {key: np.stack([p[k][key] for p in per_point]) for key in per_point[0][k]}
    return out


def input_gradient(params, x_row, output, from_layer=0):
    """Gradient of f_k at one point by the chain rule written out, relu'(0) = 0."""
    acts = forward_activations(params[from_layer:], x_row)
    grad = np.zeros(len(acts[-1]))
    grad[output] = 1.0
    for idx in range(len(params) - from_layer - 1, -1, -1):
        w, b, relu = params[from_layer + idx]
        z = w @ acts[idx] + b
        if relu:
            grad = grad * (z > 0)
        grad = w.T @ grad
    return grad



def full_backward_point(net, finder, x_row, output, pattern_tol):
    """dtd.full_backward for one point, recursing per neuron in plain loops (see dtd/full_backward.py).

    The root finder is called on one point at a time; everything else is
    numpy float64.  Returns the input relevance ``(D_0,)``.
    """
    import torch

    params = layer_params(net)
    n_layers = len(params)

    def act_slope(relu, z, dz):
        if not relu:
            return 1.0
        if dz is not None and abs(z) <= pattern_tol:
            return 1.0 if dz > 0 else 0.0
        return 1.0 if z > 0 else 0.0

    def rel(k, h, direction):
        """(relevance, diagonal gradient) of the inputs of layer k at h."""
        if k == n_layers:
            r, g = np.zeros_like(h), np.zeros_like(h)
            r[output], g[output] = h[output], 1.0
            return r, g
        w, b, relu = params[k]
        n_out, n_in = w.shape
        z = np.array([sum(w[j, i] * h[i] for i in range(n_in)) + b[j] for j in range(n_out)])
        dz = (
            None
            if direction is None
            else np.array([sum(w[j, i] * direction[i] for i in range(n_in)) for j in range(n_out)])
        )
        s = np.array([act_slope(relu, z[j], None if dz is None else dz[j]) for j in range(n_out)])
        h_next = np.maximum(z, 0.0) if relu else z
        upper, upper_grad = rel(k + 1, h_next, None if dz is None else s * dz)
        slope = upper_grad * s
        model = np.array([upper[j] / slope[j] if slope[j] != 0 else 0.0 for j in range(n_out)])
        found = finder.find(
            net, k, torch.tensor(h[None], dtype=net.dtype), torch.tensor(model[None], dtype=net.dtype), output=output
        )
        roots, valid = found.roots()[0].double().numpy(), found.valid[0].numpy()
        out_rel, out_grad = np.zeros(n_in), np.zeros(n_in)
        for j in range(n_out):
            if upper[j] == 0:
                out_grad += slope[j] * w[j]
                continue
            if slope[j] == 0 or not valid[j]:
                continue
            r = roots[j]
            back = h - r
            z_r = np.array([sum(w[m, i] * r[i] for i in range(n_in)) + b[m] for m in range(n_out)])
            dz_r = np.array([sum(w[m, i] * back[i] for i in range(n_in)) for m in range(n_out)])
            s_r = np.array([act_slope(relu, z_r[m], dz_r[m]) for m in range(n_out)])
            _, grad_at_root = rel(k + 1, np.maximum(z_r, 0.0) if relu else z_r, s_r * dz_r)
            g = grad_at_root[j] * s_r[j] * w[j]
            out_rel += g * back
            out_grad += g
        return out_rel, out_grad

    return rel(0, np.array(x_row, dtype=np.float64), None)[0]
