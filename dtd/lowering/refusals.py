"""Why an operation of an exported graph is not lowered: the refusal naming it, its module and the reason; training
mode; the checks made before any work (:func:`prepass_refusal`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch

from .aten import HANDLERS, bind, operations
from .build import Refused
from .capture import Captured, display_name, operation_name

__all__ = ["refusal", "training_mode", "training_refusal", "prepass_refusal"]

_QUADRATIC = ("hardswish",)
_SMOOTH = ("silu", "gelu", "sigmoid", "tanh", "elu", "selu", "celu", "softplus", "mish", "log_sigmoid_forward",
           "log_sigmoid", "erf", "exp", "expm1", "log", "log1p", "log2", "sqrt", "rsqrt", "pow",
           "reciprocal", "sin", "cos", "atan", "logit", "glu", "softsign", "tanhshrink")
_NORMS = ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "rms_norm",
          "_fused_rms_norm", "norm", "linalg_vector_norm", "std", "var", "var_mean", "std_mean",
          "_weight_norm_interface")
_SOFTMAX = ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax", "logsumexp")
_PRODUCTS = ("bmm", "baddbmm", "einsum", "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu", "bilinear")
_INDEXING = ("gather", "scatter", "scatter_add", "argmax", "argmin", "sort", "topk", "masked_select", "nonzero",
             "index_put", "take", "embedding")
_DISCONTINUOUS = ("threshold", "hardshrink", "sign", "round", "floor", "ceil", "trunc", "heaviside", "gt", "lt", "ge",
                  "le", "eq", "ne", "fmod", "remainder", "floor_divide")
_RANDOM = ("bernoulli", "rand_like", "randn_like", "randint_like", "normal", "uniform")


def refusal(captured: Captured, node: torch.fx.Node) -> Refused:
    """The refusal of an operation that is not lowered, naming it, its module, and why DTD does not apply."""
    name = display_name(node)
    where = captured.where(node)
    if name in _SMOOTH:
        why = (f"{name} is smooth, not piecewise linear: DTD's roots and linear regions are those of ReLU-type hinges "
               "(use ReLU, LeakyReLU, ReLU6 or hardtanh instead, or explain a piecewise-linear part of the model)")
    elif name in _QUADRATIC:
        why = (f"{name} is x times a hinge (x * relu6(x + 3) / 6): piecewise quadratic, not piecewise linear "
               "(use ReLU, ReLU6 or hardtanh instead)")
    elif name in _NORMS:
        why = (f"{name} divides by statistics of the input itself, which is not an affine map (only batch norm with "
               "running statistics, in eval mode, is)")
    elif name in _SOFTMAX:
        why = f"{name} couples its inputs non-linearly; explain the logits before it (select= the logits output)"
    elif name in _PRODUCTS:
        why = (f"{name} multiplies input-dependent values with each other "
               "(attention, bilinear forms): not piecewise linear")
    elif name in _INDEXING:
        why = f"{name} indexes with positions computed from the input (data-dependent indexing), not a fixed linear map"
    elif name in _DISCONTINUOUS:
        why = f"{name} is discontinuous or a comparison; DTD needs a continuous piecewise-linear network"
    elif name in _RANDOM:
        why = f"{name} draws random numbers; DTD explains a deterministic network (call model.eval())"
    else:
        why = (f"{name} is not among the operations the lowering knows to be affine or "
               f"piecewise linear (dtd.lowering.aten: {len(operations('affine'))} affine, "
               f"{len(operations('piecewise linear'))} piecewise-linear operations)")
    return Refused(f"cannot lower {where}: {why}")


def training_refusal(captured: Captured, node: torch.fx.Node) -> ValueError | None:
    """The ``ValueError`` of an operation that runs in training mode (batch norm, dropout, rrelu), else None."""
    name = operation_name(node)
    if name in ("batch_norm", "native_batch_norm", "_native_batch_norm_legit_functional", "_native_batch_norm_legit"):
        a = bind(node, node.args, node.kwargs)
        if a.get("running_mean") is None and name != "_native_batch_norm_legit_functional":
            module, kind = captured.module_name(node)
            return ValueError(
                f"'batch_norm' (module {module!r}, {kind}) has no running statistics "
                "(track_running_stats=False), so it normalises with each batch's own statistics "
                "even in eval mode: not an affine map; train it with running statistics"
            )
        return training_mode(captured, node) if a.get("training") else None
    if name in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout"):
        train = bind(node, node.args, node.kwargs).get("train")
        return training_mode(captured, node) if train is None or bool(train) else None
    if name in ("rrelu_with_noise", "rrelu"):
        return training_mode(captured, node) if bind(node, node.args, node.kwargs).get("training") else None
    return None


def training_mode(captured: Captured, node: torch.fx.Node) -> ValueError:
    name, kind = captured.module_name(node)
    module = f" (module {name!r}, {kind})" if name else ""
    return ValueError(
        f"{display_name(node)!r}{module} runs in training mode, where it is not a fixed "
        "affine map (batch norm uses the batch's own statistics, dropout draws random "
        "masks); call model.eval() first (from_module never changes the model's mode)"
    )


def prepass_refusal(captured: Captured, node: torch.fx.Node, depends: set[torch.fx.Node]) -> Exception | None:
    """Why an input-dependent node cannot be lowered, found before any work (None if the walk may try it)."""
    name = operation_name(node)
    if name not in HANDLERS:
        return refusal(captured, node)
    inputs = [a for a in node.all_input_nodes if a in depends]
    if name in ("mul", "div", "mm", "matmul", "addmm") and len(inputs) > 1:
        if name == "addmm" and node.args[0] in depends and len(inputs) == 2 and node.args[2] not in depends:
            return None
        return Refused(f"cannot lower {captured.where(node)}: it multiplies input-dependent values with each other "
                       "(gating, squeeze-and-excitation, attention): not piecewise linear")
    data: Sequence[object]
    if name == "index":
        indices = cast("list[object]", node.args[1]) if len(node.args) > 1 else []  # a list of optional tensors
        data = [i for i in indices if i is not None]
    else:
        data = {"where": node.args[:1], "index_select": node.args[2:3], "masked_fill": node.args[1:2]}.get(name, [])
    if any(d in depends for d in data if isinstance(d, torch.fx.Node)):
        return Refused(f"cannot lower {captured.where(node)}: it selects with positions "
                       "or conditions computed from the input (data-dependent)")
    return None
