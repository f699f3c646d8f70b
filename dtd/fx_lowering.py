"""Lowering any piecewise-linear ``nn.Module`` into a :class:`~dtd.graph.GraphNetwork` with ``torch.fx``.

The model is traced symbolically (``torch.fx.symbolic_trace``; torch's own
modules are leaves), and the trace is interpreted node by node.  A value is
either an *activation* (the input, a ReLU's or a max pool's output) or a
*linear value*: a sum of branches ``A_b(h_b)`` plus a constant, built up by
the affine operations (convolutions, Linear, batch norm, average pooling,
means, reshapes, ``+``, ``torch.cat``, scaling by a number).  A non-linearity
applied to a linear value turns it into an affine node (a DTD layer).

Exactness: every operator is built from the module's own parameters in
float64 (batch norm folded into the convolution or Linear beside it, before or
after), the constant of a node is propagated exactly through the operators in
float64, and the result is converted to the model's dtype once.  A chain of
operators whose modified matrices are not the chain of the modified
primitives (two signed maps without a non-linearity between them, a
convolution followed by an overlapping pooling, ...) is folded into one dense
matrix when that fits ``memory_budget``; otherwise it is refused, naming the
modules.

What is accepted (exact torch types; a subclass may override ``forward``):
``nn.Linear``, ``nn.Conv1d/2d`` (zero padding; any stride, dilation, groups),
``nn.BatchNorm1d/2d`` (eval, running statistics), ``nn.AvgPool1d/2d``,
``nn.AdaptiveAvgPool1d/2d``, ``nn.MaxPool1d/2d``, ``nn.AdaptiveMaxPool1d/2d``,
``nn.Flatten``, ``nn.Unflatten``, ``nn.Identity``, ``nn.Dropout*`` (eval),
``nn.ReLU``; ``torch.relu`` / ``F.relu`` / ``.relu()`` (in place or not),
``+`` / ``torch.add`` / ``+=``, ``torch.cat``, ``torch.flatten``,
``.view`` / ``.reshape`` / ``.flatten``, ``.mean(dims)`` / ``torch.mean``,
``F.avg_pool2d``, ``F.adaptive_avg_pool2d``, ``F.max_pool2d``, ``.size()``,
multiplication or division by a number.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from typing import Any, Optional, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .graph import AffineNode, Branch, GraphNetwork, InputNode, MaxPoolNode, ReLUNode
from .lowering import (_REFUSALS, DEFAULT_MEMORY_BUDGET, _check_global_hooks, _check_hooks, _check_input_shape,
                       _model_dtype_device)
from .operators import Chain, Conv, Dense, Embed, Operator, Parallel, Pooling, Reshape, Scale
from .validation import check_int

__all__ = ["lower_module"]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ACCEPTED = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.ReLU,
) + _DROPOUT + _BATCH_NORM + _MAX_POOL

# the refusals of the Sequential lowering, less what the graph lowering accepts
_GRAPH_REFUSALS = {kind: why for kind, why in _REFUSALS.items() if kind not in _MAX_POOL}


# --------------------------------------------------------------------------- values of the interpretation
@dataclasses.dataclass
class _Act:
    """An activation: a node of the graph (input, ReLU, max pool)."""

    id: int
    shape: tuple


@dataclasses.dataclass
class _Lin:
    """``sum_b ops_b(h_b) + const``: branches are ``(source id, [float64 operators], module names)``."""

    branches: list
    const: torch.Tensor  # float64, ``shape``
    shape: tuple


class _Refused(TypeError):
    pass


def _f64(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(torch.float64, copy=True)


class _Lowering:
    def __init__(self, model: nn.Module, traced: torch.fx.GraphModule, input_shape: tuple, memory_budget: int, device):
        self.model, self.traced, self.input_shape = model, traced, input_shape
        self.memory_budget, self.device = memory_budget, device
        self.nodes: list = [InputNode(0, input_shape)]
        self.materialised: dict[int, int] = {}  # id(_Lin) -> affine node id

    # ------------------------------------------------------------------ helpers
    def _where(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target!r} ({type(self.traced.get_submodule(node.target)).__name__})"
        target = getattr(node.target, "__name__", str(node.target))
        return f"operation {target!r} (fx node {node.name!r})"

    def _lin(self, value, node) -> _Lin:
        if isinstance(value, _Lin):
            return value
        if isinstance(value, _Act):
            return _Lin([(value.id, [], [])], torch.zeros(value.shape, dtype=torch.float64, device=self.device), value.shape)
        raise _Refused(f"{self._where(node)} is applied to {type(value).__name__} {value!r}, not to an activation")

    def _apply(self, value, node, op: Operator, bias: Optional[torch.Tensor], name: str) -> _Lin:
        """``op(value) + bias``: the operator appended to every branch; the constant pushed through it exactly."""
        lin = self._lin(value, node)
        if tuple(op.in_shape) != tuple(lin.shape):
            raise ValueError(f"{self._where(node)} expects activations of shape {op.in_shape}, got {lin.shape}")
        const = op.forward(lin.const.unsqueeze(0)).squeeze(0)
        if bias is not None:
            const = const + bias
        branches = [(source, ops + [op], names + [name]) for source, ops, names in lin.branches]
        return _Lin(branches, const, tuple(op.out_shape))

    def _affine_node(self, lin: _Lin, node) -> int:
        key = id(lin)
        if key in self.materialised:
            return self.materialised[key]
        grouped: dict[int, list] = {}
        for source, ops, names in lin.branches:
            if not ops:  # an activation added as it is (a skip connection): the identity
                shape = self.nodes[source].shape
                ops, names = [Reshape(shape, shape)], ["skip"]
            grouped.setdefault(source, []).append((self._chain(ops, names, node), names))
        branches, modules = [], []
        for source, group in grouped.items():
            for _, names in group:
                modules.extend(n for n in names if n)
            if len(group) == 1:
                branches.append(Branch(source, group[0][0]))
                continue
            branches.append(Branch(source, self._merged([c for c, _ in group], [n for _, ns in group for n in ns], node)))
        signed = [n for (_, ops, names) in lin.branches for op, n in zip(ops, names) if op.signed and n]
        name = signed[0] if signed else (modules[0] if modules else "skip")
        node_id = len(self.nodes)
        self.nodes.append(AffineNode(node_id, lin.shape, tuple(branches), lin.const.clone(), name, tuple(dict.fromkeys(modules))))
        self.materialised[key] = node_id
        return node_id

    def _merged(self, chains: list, names: list, node):
        """Several maps of one activation summed: one operator (its layer input holds the activation once).

        The parts of a ``torch.cat`` write disjoint slices (a :class:`~dtd.operators.Parallel`, exact);
        any other sum is folded into one dense matrix within ``memory_budget``.
        """
        try:
            parallel = Parallel(chains)
        except ValueError:
            parallel = None
        if parallel is not None and parallel.exact_modifications():
            return parallel
        summed = _Sum(chains)
        d_in, d_out = summed.in_features, summed.out_features
        needed = d_in * d_out * 8
        if needed > self.memory_budget:
            listed = ", ".join(repr(n) for n in dict.fromkeys(names) if n and n != "skip")
            raise ValueError(
                f"the affine map before {self._where(node)} adds several maps of one activation (modules {listed}); "
                f"their sum's dense matrix ({d_in} x {d_out}) would need {needed:,} bytes ({needed / 2**30:.2f} GiB), more "
                f"than memory_budget={self.memory_budget:,}; pass a larger memory_budget= or write the sum as one module"
            )
        return Chain([Reshape(summed.in_shape, (d_in,)), Dense(_dense_matrix(summed, self.device)),
                      Reshape((d_out,), summed.out_shape)])

    def _chain(self, ops: list, names: list, node) -> Chain:
        source_shape = ops[0].in_shape
        ops = _fold_scales(list(ops))
        chain = Chain(ops)
        if chain.exact_modifications():
            return chain
        # dense fallback: the chain's matrix by pushing the standard basis through it (float64)
        d_in, d_out = chain.in_features, chain.out_features
        needed = d_in * d_out * 8
        if needed > self.memory_budget:
            listed = ", ".join(repr(n) for n in dict.fromkeys(names) if n)
            raise ValueError(
                f"the affine map of modules {listed} (before {self._where(node)}) combines several signed maps or "
                "overlapping windows without a non-linearity between them, so DTD's modified weights (W+, W-, W*W) are "
                f"not those of its parts; its dense matrix ({d_in} inputs x {d_out} outputs) would need {needed:,} bytes "
                f"({needed / 2**30:.2f} GiB), more than memory_budget={self.memory_budget:,}; pass a larger "
                "memory_budget= to from_module or put a ReLU between the maps"
            )
        return Chain([Reshape(source_shape, (d_in,)), Dense(_dense_matrix(chain, self.device)), Reshape((d_out,), chain.out_shape)])

    # ------------------------------------------------------------------ the walk
    def run(self):
        env: dict[str, Any] = {}
        output = None
        for node in self.traced.graph.nodes:
            args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            if node.op == "placeholder":
                if env:
                    raise _Refused(f"the model's forward takes more than one input ({node.name!r}); DTD explains one input tensor")
                env[node.name] = _Act(0, self.input_shape)
            elif node.op == "get_attr":
                raise _Refused(
                    f"the model reads the tensor attribute {node.target!r} directly in forward; only modules and the "
                    "operations listed in dtd.fx_lowering's docstring are lowered (wrap the computation in a module)"
                )
            elif node.op == "call_module":
                env[node.name] = self.module(node, self.traced.get_submodule(node.target), args, kwargs)
            elif node.op == "call_function":
                env[node.name] = self.function(node, node.target, args, kwargs)
            elif node.op == "call_method":
                env[node.name] = self.method(node, node.target, args, kwargs)
            elif node.op == "output":
                output = args[0]
        return self.finish(output)

    def finish(self, output):
        if isinstance(output, (tuple, list)) and len(output) == 1:
            output = output[0]
        if isinstance(output, _Lin):
            return self._affine_node(output, None), False
        if isinstance(output, _Act) and output.id > 0 and isinstance(self.nodes[output.id], ReLUNode):
            source = self.nodes[output.id].source
            if isinstance(self.nodes[source], AffineNode):
                return source, True
        raise _Refused(
            "the model's output must be an affine map of its activations (a Linear, a convolution, ...), optionally "
            f"followed by a ReLU; got {type(output).__name__}"
        )

    # ------------------------------------------------------------------ non-linearities
    def relu(self, value, node, name=""):
        if isinstance(value, _Lin):
            source = self._affine_node(value, node)
        elif isinstance(value, _Act):
            source = value.id
        else:
            raise _Refused(f"{self._where(node)} is applied to {value!r}, not to an activation")
        node_id = len(self.nodes)
        shape = value.shape
        self.nodes.append(ReLUNode(node_id, shape, source, name))
        return _Act(node_id, shape)

    def max_pool(self, value, node, *, dim, kernel_size=None, stride=None, padding=0, dilation=1, ceil_mode=False,
                 output_size=None, name=""):
        source = self._affine_node(value, node) if isinstance(value, _Lin) else value.id
        def tup(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dim
        if output_size is None:
            kernel_size = tup(kernel_size)
            stride = kernel_size if stride is None or stride == [] or stride == () else tup(stride)
            params = dict(kernel_size=kernel_size, stride=stride, padding=tup(padding), dilation=tup(dilation), ceil_mode=bool(ceil_mode))
        else:
            size = tup(output_size)
            size = tuple(value.shape[-dim + i] if s is None else s for i, s in enumerate(size))
            params = dict(output_size=size)
        node_id = len(self.nodes)
        probe = MaxPoolNode(node_id, (), source, dim, **params, name=name)
        out, _ = probe.pool(torch.zeros((1,) + tuple(value.shape), dtype=torch.float64, device=self.device))
        shape = tuple(out.shape[1:])
        self.nodes.append(dataclasses.replace(probe, shape=shape))
        return _Act(node_id, shape)

    # ------------------------------------------------------------------ modules
    def module(self, node, module: nn.Module, args, kwargs):
        kind = type(module)
        name = node.target
        _check_hooks(name, module)
        if kind in _GRAPH_REFUSALS:
            raise _Refused(f"{self._where(node)} cannot be lowered: {_GRAPH_REFUSALS[kind]}")
        if kind not in _ACCEPTED:
            base = next((b for b in _ACCEPTED if isinstance(module, b)), None)
            if base is not None:
                raise _Refused(
                    f"{self._where(node)} is a subclass of nn.{base.__name__}: only the exact torch types are accepted, "
                    f"because a subclass may compute something else (an overridden forward); use nn.{base.__name__} itself"
                )
            raise _Refused(
                f"{self._where(node)} is not supported: DTD needs a piecewise-linear network (affine maps, ReLU, max "
                "pooling); accepted modules are listed in dtd.fx_lowering's docstring"
            )
        if isinstance(module, _DROPOUT + _BATCH_NORM) and module.training:
            raise ValueError(
                f"{self._where(node)} is in training mode, where it is not an affine map (dropout draws random masks, "
                "batch norm uses the batch's statistics); call model.eval() first"
            )
        (value,) = args[:1]
        if kind is nn.ReLU:
            return self.relu(value, node, name)
        if kind in _MAX_POOL:
            dim = 1 if kind in (nn.MaxPool1d, nn.AdaptiveMaxPool1d) else 2
            if kind in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d):
                return self.max_pool(value, node, dim=dim, output_size=module.output_size, name=name)
            if getattr(module, "return_indices", False):
                raise _Refused(f"{self._where(node)} has return_indices=True; DTD needs only the pooled values")
            return self.max_pool(value, node, dim=dim, kernel_size=module.kernel_size, stride=module.stride,
                                 padding=module.padding, dilation=module.dilation, ceil_mode=module.ceil_mode, name=name)
        if isinstance(value, (int, float)) or not isinstance(value, (_Act, _Lin)):
            raise _Refused(f"{self._where(node)} is applied to {value!r}, not to an activation")
        shape = value.shape
        if kind is nn.Linear:
            if len(shape) != 1 or shape[0] != module.in_features:
                raise ValueError(
                    f"{self._where(node)} expects {module.in_features} inputs but gets activations of shape {shape}; "
                    "a Linear on activations with more than one dimension is not supported: flatten them first"
                )
            return self._apply(value, node, Dense(_f64(module.weight)), _f64(module.bias), name)
        if kind in (nn.Conv1d, nn.Conv2d):
            return self._apply(value, node, *_conv(module, shape, self._where(node)), name)
        if kind in _BATCH_NORM:
            return self._apply(value, node, *_batch_norm(module, shape, self._where(node)), name)
        if kind in (nn.AvgPool1d, nn.AvgPool2d):
            dim = 1 if kind is nn.AvgPool1d else 2
            return self._apply(value, node, _avg_pool(shape, dim, module.kernel_size, module.stride, module.padding,
                                                      module.ceil_mode, module.count_include_pad,
                                                      getattr(module, "divisor_override", None), self.device), None, name)
        if kind in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
            dim = 1 if kind is nn.AdaptiveAvgPool1d else 2
            return self._apply(value, node, _adaptive_avg_pool(shape, dim, module.output_size, self.device), None, name)
        if kind in (nn.Flatten, nn.Unflatten):
            out = module(torch.zeros((1,) + shape, device="meta"))
            return self._reshape(value, node, tuple(out.shape[1:]), name)
        return value  # Identity, dropout in eval mode

    def _reshape(self, value, node, out_shape, name=""):
        out_shape = tuple(out_shape)
        if out_shape == tuple(value.shape):
            return value
        return self._apply(value, node, Reshape(value.shape, out_shape), None, name)

    # ------------------------------------------------------------------ functions and methods
    def function(self, node, target, args, kwargs):
        if target in (F.relu, torch.relu, torch.relu_, torch.nn.functional.relu_):
            return self.relu(args[0], node)
        if target in (operator.add, torch.add, operator.iadd):
            if kwargs.get("alpha", 1) != 1:
                raise _Refused(f"{self._where(node)} with alpha != 1 is not supported")
            return self.add(args[0], args[1], node)
        if target in (operator.mul, torch.mul, operator.truediv, torch.div):
            return self.scale(args[0], args[1], node, divide=target in (operator.truediv, torch.div))
        if target is torch.cat:
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return self.cat(list(tensors), dim, node)
        if target is torch.flatten:
            return self.flatten(args[0], node, *args[1:], **kwargs)
        if target in (torch.mean,):
            return self.mean(args[0], node, *args[1:], **kwargs)
        if target is F.dropout:
            if kwargs.get("training", args[2] if len(args) > 2 else True):
                raise ValueError(f"{self._where(node)} drops at random (training=True); DTD needs the eval-mode network")
            return args[0]
        if target in (F.avg_pool2d, F.avg_pool1d):
            dim = 2 if target is F.avg_pool2d else 1
            names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            params = dict(zip(names, args[1:]), **kwargs)
            kernel = params["kernel_size"]
            stride = params.get("stride") or kernel
            return self._apply(args[0], node, _avg_pool(args[0].shape, dim, kernel, stride, params.get("padding", 0),
                                                        params.get("ceil_mode", False), params.get("count_include_pad", True),
                                                        params.get("divisor_override"), self.device), None, "")
        if target in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d):
            dim = 2 if target is F.adaptive_avg_pool2d else 1
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            return self._apply(args[0], node, _adaptive_avg_pool(args[0].shape, dim, size, self.device), None, "")
        if target in (F.max_pool2d, F.max_pool1d):
            dim = 2 if target is F.max_pool2d else 1
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
            params = dict(zip(names, args[1:]), **kwargs)
            if params.pop("return_indices", False):
                raise _Refused(f"{self._where(node)} has return_indices=True; DTD needs only the pooled values")
            return self.max_pool(args[0], node, dim=dim, **params)
        if target is getattr:
            return self.attribute(args[0], args[1], node)
        if target is operator.getitem:
            if isinstance(args[0], (tuple, list, torch.Size)):
                return args[0][args[1]]
            raise _Refused(f"{self._where(node)} indexes an activation; slicing activations is not supported")
        raise _Refused(
            f"{self._where(node)} is not supported: DTD needs a piecewise-linear network built from the modules and "
            "operations listed in dtd.fx_lowering's docstring"
        )

    def method(self, node, name, args, kwargs):
        value, rest = args[0], args[1:]
        if name in ("relu", "relu_"):
            return self.relu(value, node)
        if name in ("add", "add_", "__add__", "__iadd__"):
            return self.add(value, rest[0], node)
        if name in ("view", "reshape"):
            shape = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)) else rest
            return self.view(value, node, tuple(shape))
        if name == "flatten":
            return self.flatten(value, node, *rest, **kwargs)
        if name == "mean":
            return self.mean(value, node, *rest, **kwargs)
        if name == "size":
            full = (1,) + tuple(value.shape)
            return torch.Size(full) if not rest else full[rest[0]]
        if name in ("contiguous", "clone", "detach"):
            return value
        if name in ("mul", "mul_", "div", "div_"):
            return self.scale(value, rest[0], node, divide=name.startswith("div"))
        raise _Refused(
            f"{self._where(node)} (method .{name}) is not supported: DTD needs a piecewise-linear network built from the "
            "modules and operations listed in dtd.fx_lowering's docstring"
        )

    def attribute(self, value, name, node):
        if name == "shape" and isinstance(value, (_Act, _Lin)):
            return torch.Size((1,) + tuple(value.shape))
        raise _Refused(f"{self._where(node)} reads attribute {name!r}; only .shape of activations is supported")

    def add(self, left, right, node):
        if isinstance(left, (int, float)) and isinstance(right, (_Act, _Lin)):
            left, right = right, left
        if isinstance(right, (int, float)):
            lin = self._lin(left, node)
            return _Lin(lin.branches, lin.const + float(right), lin.shape)
        a, b = self._lin(left, node), self._lin(right, node)
        if a.shape != b.shape:
            raise _Refused(f"{self._where(node)} adds activations of shapes {a.shape} and {b.shape}; broadcasting sums are not supported")
        return _Lin(a.branches + b.branches, a.const + b.const, a.shape)

    def scale(self, value, factor, node, *, divide: bool):
        if isinstance(value, (int, float)) and isinstance(factor, (_Act, _Lin)) and not divide:
            value, factor = factor, value
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            raise _Refused(f"{self._where(node)} multiplies two activations (or by a tensor); only scaling by a number is affine")
        factor = 1.0 / factor if divide else float(factor)
        shape = value.shape
        op = Scale(torch.full((shape[0],), factor, dtype=torch.float64, device=self.device), shape)
        return self._apply(value, node, op, None, "")

    def cat(self, tensors, dim, node):
        lins = [self._lin(t, node) for t in tensors]
        rank = len(lins[0].shape)
        dim = dim % (rank + 1) if dim < 0 else dim
        if dim == 0:
            raise _Refused(f"{self._where(node)} concatenates along the batch dimension")
        axis = dim - 1
        out_shape = list(lins[0].shape)
        out_shape[axis] = sum(l.shape[axis] for l in lins)
        out_shape = tuple(out_shape)
        branches, const, start = [], torch.zeros(out_shape, dtype=torch.float64, device=self.device), 0
        for lin in lins:
            embed = Embed(lin.shape, out_shape, axis, start)
            const = const + embed.forward(lin.const.unsqueeze(0)).squeeze(0)
            branches += [(s, ops + [embed], names + [""]) for s, ops, names in lin.branches]
            start += lin.shape[axis]
        return _Lin(branches, const, out_shape)

    def flatten(self, value, node, start_dim=0, end_dim=-1):
        shape = (1,) + tuple(value.shape)
        out = torch.zeros(shape, device="meta").flatten(start_dim, end_dim)
        if out.dim() == 0 or out.shape[0] != 1 or (start_dim == 0 and len(shape) > 1):
            raise _Refused(f"{self._where(node)} flattens the batch dimension; use torch.flatten(x, 1)")
        return self._reshape(value, node, tuple(out.shape[1:]))

    def view(self, value, node, shape):
        out = torch.zeros((1,) + tuple(value.shape), device="meta").reshape(shape)
        if out.shape[0] != 1:
            raise _Refused(f"{self._where(node)} reshapes across the batch dimension ({shape}); keep dimension 0 the batch")
        return self._reshape(value, node, tuple(out.shape[1:]))

    def mean(self, value, node, dim=None, keepdim=False, **kwargs):
        if dim is None:
            raise _Refused(f"{self._where(node)} averages over the batch; give the dimensions, e.g. x.mean((2, 3))")
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        rank = len(value.shape) + 1
        dims = tuple(d % rank for d in dims)
        if 0 in dims:
            raise _Refused(f"{self._where(node)} averages over the batch dimension")
        count = math.prod(value.shape[d - 1] for d in dims)
        out = torch.zeros((1,) + tuple(value.shape), device="meta").mean(dims, keepdim=keepdim)
        base = lambda x, dims=dims, keepdim=keepdim: x.mean(dims, keepdim=keepdim)  # noqa: E731
        entry = torch.full(tuple(out.shape[1:]), 1.0 / count, dtype=torch.float64, device=self.device)
        op = Pooling(base, value.shape, tuple(out.shape[1:]), entry, column_sparse=True, name="mean")
        return self._apply(value, node, op, None, "")


class _Sum(Chain):
    """The sum of chains reading one input (only pushed through to build a dense matrix)."""

    def __init__(self, chains):
        self.members = chains
        self.ops = [Reshape(chains[0].in_shape, chains[0].in_shape)]
        self.in_shape, self.out_shape = chains[0].in_shape, chains[0].out_shape

    def forward(self, x):
        return sum(c.forward(x) for c in self.members)


def _dense_matrix(chain: Chain, device) -> torch.Tensor:
    """The chain's ``(D_out, D_in)`` matrix in float64, exactly: its rows or columns pushed through it.

    A chain that ends in a Linear (then reshapes) is ``W P``: the Linear's
    rows pushed back through the part before it (``P^T w_j``), which costs one
    pass per output instead of a dense product per input.  Otherwise the
    standard basis of the input is pushed forward, in chunks.
    """
    d_in, d_out = chain.in_features, chain.out_features
    ops = chain.ops
    last = len(ops) - 1
    while last > 0 and isinstance(ops[last], Reshape):
        last -= 1
    with torch.no_grad():
        if isinstance(ops[last], Dense) and last > 0:
            prefix = Chain(ops[:last])
            weight = ops[last].weight
            rows = weight.reshape((weight.shape[0],) + tuple(prefix.out_shape))
            return prefix.transpose(rows).reshape(weight.shape[0], d_in)
        matrix = torch.empty(d_out, d_in, dtype=torch.float64, device=device)
        chunk = max(1, min(d_in, (16 << 20) // (8 * max(d_in, d_out))))
        for start in range(0, d_in, chunk):
            stop = min(start + chunk, d_in)
            basis = torch.zeros(stop - start, d_in, dtype=torch.float64, device=device)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            matrix[:, start:stop] = chain.forward(basis.reshape((stop - start,) + tuple(chain.in_shape))).reshape(stop - start, d_out).T
    return matrix


# --------------------------------------------------------------------------- modules as operators
def _conv(module, shape, where):
    if module.padding_mode != "zeros":
        raise _Refused(f"{where} pads with mode {module.padding_mode!r}; only zero padding is lowered")
    dim = 1 if isinstance(module, nn.Conv1d) else 2
    if len(shape) != dim + 1 or shape[0] != module.in_channels:
        hint = ""
        if len(shape) == dim + 2 and shape[1] == module.in_channels:
            hint = (f"; that looks like a batch dimension in front: input_shape is one input's shape without it "
                    f"(x.shape[1:], e.g. {tuple(shape[1:])})")
        raise ValueError(f"{where} expects {module.in_channels} channels of {dim}-d data, got activations of shape {shape}{hint}")
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0,) * dim
        else:  # "same": symmetric only
            total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
            if any(t % 2 for t in total):
                raise _Refused(f"{where} uses padding='same' with an even kernel extent (asymmetric padding); pad explicitly")
            padding = tuple(t // 2 for t in total)
    op = Conv(_f64(module.weight), shape, stride=module.stride, padding=padding, dilation=module.dilation, groups=module.groups)
    bias = None
    if module.bias is not None:
        bias = _f64(module.bias).reshape((-1,) + (1,) * dim).expand(op.out_shape).clone()
    return op, bias


def _batch_norm(module, shape, where):
    if module.running_mean is None:
        raise ValueError(
            f"{where} has track_running_stats=False, so it normalises with each batch's own statistics even in eval "
            "mode: not an affine map; train it with running statistics"
        )
    if len(shape) == 0 or shape[0] != module.num_features:
        raise ValueError(f"{where} with {module.num_features} features expects C = {module.num_features} channels, got {shape}")
    scale = 1.0 / torch.sqrt(_f64(module.running_var) + module.eps)
    if module.weight is not None:
        scale = scale * _f64(module.weight)
    shift = -_f64(module.running_mean) * scale
    if module.bias is not None:
        shift = shift + _f64(module.bias)
    view = (-1,) + (1,) * (len(shape) - 1)
    return Scale(scale, shape), shift.reshape(view).expand(shape).clone()


def _avg_pool(shape, dim, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, device):
    def tup(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dim
    kernel, stride, padding = tup(kernel), tup(stride if stride not in (None, [], ()) else kernel), tup(padding)
    pool = F.avg_pool1d if dim == 1 else F.avg_pool2d
    kwargs = dict(ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    if dim == 2:
        kwargs["divisor_override"] = divisor_override

    def base(x, kernel=kernel, stride=stride, padding=padding, kwargs=kwargs):
        return pool(x, kernel, stride, padding, **kwargs)

    ones = torch.ones((1,) + tuple(shape), dtype=torch.float64, device=device)
    average = base(ones)
    if dim == 2:
        count = F.avg_pool2d(ones, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=True, divisor_override=1)
    else:  # the sum of real inputs in each window: the average with padding counted, times the kernel size
        count = F.avg_pool1d(ones, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=True) * kernel[0]
    entry = (average / count).squeeze(0)
    non_overlapping = all(s >= k for s, k in zip(stride, kernel))
    return Pooling(base, shape, tuple(average.shape[1:]), entry, column_sparse=non_overlapping, name="avg_pool")


def _adaptive_windows(n_in: int, n_out: int) -> tuple[torch.Tensor, bool]:
    """Window sizes of adaptive pooling along one dimension (torch's start/end rule), and whether they overlap."""
    starts = [(i * n_in) // n_out for i in range(n_out)]
    ends = [-(-((i + 1) * n_in) // n_out) for i in range(n_out)]
    overlap = any(ends[i] > starts[i + 1] for i in range(n_out - 1))
    return torch.tensor([e - s for s, e in zip(starts, ends)], dtype=torch.float64), overlap


def _adaptive_avg_pool(shape, dim, output_size, device):
    size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * dim
    size = tuple(shape[-dim + i] if s is None else s for i, s in enumerate(size))
    pool = F.adaptive_avg_pool1d if dim == 1 else F.adaptive_avg_pool2d

    def base(x, size=size):
        return pool(x, size)

    windows, overlaps = zip(*(_adaptive_windows(shape[-dim + i], size[i]) for i in range(dim)))
    count = windows[0] if dim == 1 else windows[0][:, None] * windows[1][None, :]
    entry = (1.0 / count).to(device).expand((shape[0],) + tuple(size)).clone()
    return Pooling(base, shape, (shape[0],) + tuple(size), entry, column_sparse=not any(overlaps), name="adaptive_avg_pool")


def _fold_scales(ops: list) -> list:
    """Batch norms (:class:`Scale`) multiplied into the convolution or Linear beside them (exact products, float64).

    A scale right after a convolution / Linear scales its output channels; one
    right before (possibly with reshapes between it and a Linear) scales its
    input channels.  Folding leaves at most one signed operator where the
    model has one weight layer between non-linearities.
    """
    changed = True
    while changed:
        changed = False
        for i, op in enumerate(ops):
            if not isinstance(op, Scale):
                continue
            before = ops[i - 1] if i > 0 else None
            if isinstance(before, (Conv, Dense)):
                w = before.weight * op.scale.reshape((-1,) + (1,) * (before.weight.dim() - 1))
                ops[i - 1 : i + 1] = [before._with(w) if isinstance(before, Conv) else Dense(w)]
                changed = True
                break
            j = i + 1
            while j < len(ops) and isinstance(ops[j], Reshape):
                j += 1
            after = ops[j] if j < len(ops) else None
            if isinstance(after, Conv) and j == i + 1:
                groups = after.groups
                out_c, in_per_group = after.weight.shape[:2]
                s = op.scale.reshape(groups, in_per_group).repeat_interleave(out_c // groups, dim=0)  # (O, I/g)
                w = after.weight * s.reshape(s.shape + (1,) * (after.weight.dim() - 2))
                ops[i : i + 2] = [after._with(w)]
                changed = True
                break
            if isinstance(after, Dense):
                flat = op.scale.reshape((-1,) + (1,) * (len(op.in_shape) - 1)).expand(op.in_shape).reshape(-1)
                ops[j] = Dense(after.weight * flat.unsqueeze(0))
                del ops[i]  # the reshapes between keep their shapes (the scale's shape is the first one's input)
                changed = True
                break
    return ops


# --------------------------------------------------------------------------- entry point
def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, RuntimeError, ... for untraceable code
        raise TypeError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(error).__name__}: {error}); its forward must not "
            "branch on tensor values or call untraceable code. Make forward traceable (no data-dependent if/for), or "
            "rebuild the model as an nn.Sequential / a module whose forward only calls modules and the operations "
            "listed in dtd.fx_lowering's docstring"
        ) from None


def lower_module(model: nn.Module, input_shape: Sequence[int], *, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> GraphNetwork:
    """Lower ``model`` exactly into a :class:`~dtd.graph.GraphNetwork` (see the module docstring).

    ``input_shape`` is one input's shape without the batch dimension.  The
    model is not modified and shares no storage with the result.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    if shape is None:
        raise TypeError("from_module needs input_shape=, one input's shape without the batch dimension (e.g. (3, 32, 32))")
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    _check_global_hooks()
    for name, sub in model.named_modules():
        _check_hooks(name or "<model>", sub)
    dtype, device = _model_dtype_device(model)
    traced = _trace(model)
    lowering = _Lowering(model, traced, shape, memory_budget, device)
    try:
        output, final_relu = lowering.run()
    except _Refused as refusal:
        raise TypeError(str(refusal)) from None
    nodes = _prune(lowering.nodes, output)
    converted = []
    for node in nodes:
        if isinstance(node, AffineNode):
            branches = tuple(Branch(b.source, b.op.to(dtype, device)) for b in node.branches)
            node = dataclasses.replace(node, branches=branches, bias=node.bias.to(dtype=dtype, device=device))
        converted.append(node)
    ids = {node.id: i for i, node in enumerate(converted)}
    renumbered = [_renumber(node, ids) for node in converted]
    return GraphNetwork(renumbered, ids[output], final_relu=final_relu, input_shape=shape)


def _prune(nodes: list, output: int) -> list:
    """The nodes the output depends on (dead branches dropped), in order."""
    needed = {output}
    for node in reversed(nodes):
        if node.id in needed:
            needed.update(GraphNetwork.sources(node))
    needed.add(0)
    return [node for node in nodes if node.id in needed]


def _renumber(node, ids: dict):
    if isinstance(node, InputNode):
        return node
    if isinstance(node, AffineNode):
        return dataclasses.replace(node, id=ids[node.id], branches=tuple(Branch(ids[b.source], b.op) for b in node.branches))
    return dataclasses.replace(node, id=ids[node.id], source=ids[node.source])
