"""Slow, obviously-correct re-implementations that the fast code must equal.

Plain Python loops over points and neurons in numpy float64: no batching, no
einsum, nothing shared with :mod:`dtd` except the network's weights.
"""

from __future__ import annotations

import numpy as np

from dtd import rules as R


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


def direction(rule, a, w_j):
    """The root direction v_j of one neuron, element by element."""
    v = np.zeros_like(a)
    for i in range(len(a)):
        positive = w_j[i] >= 0
        if isinstance(rule, R.ZPlus):
            v[i] = a[i] if positive else 0.0
        elif isinstance(rule, R.WSquare):
            v[i] = w_j[i]
        elif isinstance(rule, R.Gamma):
            v[i] = a[i] * (1.0 + rule.gamma) if positive else a[i]
        elif isinstance(rule, R.LRP0):
            v[i] = a[i]
        elif isinstance(rule, R.ZB):
            low = float(rule.low[i]) if rule.low.dim() == 1 else float(rule.low)
            high = float(rule.high[i]) if rule.high.dim() == 1 else float(rule.high)
            v[i] = a[i] - low if positive else a[i] - high
        else:
            raise NotImplementedError(rule)
    return v


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
            roots = np.zeros((n_out, n_in))
            valid = np.zeros(n_out, dtype=bool)
            rule = rules[k]
            if isinstance(rule, R.Pinv):
                step = np.linalg.pinv(w) @ upper
                for j in range(n_out):
                    roots[j] = a - step
                    residual = sum(w[j, i] * step[i] for i in range(n_in)) - upper[j]
                    scale = sum(abs(w[j, i] * step[i]) for i in range(n_in)) + abs(upper[j])
                    valid[j] = abs(residual) <= 1e-9 * max(scale, 1.0)
            else:
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

