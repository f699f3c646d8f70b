"""Capturing a model with ``torch.export``: the graph the lowering reads, and the output it explains.

``torch.export.export(model, (example,))`` runs the model's Python once at
the user's input shape (with fake tensors: no real computation, nothing of
the model changed) and records every ATen operation it performs, with shapes
specialised: ``if x.ndim == 4``, ``x.size(1) // 2`` and hooks are resolved
there, parametrisations (``weight_norm``) and pruning masks appear as
operations on parameters.  ``run_decompositions({})`` makes the graph
functional (no in-place operations) while keeping every operation at the
level PyTorch's API names it (``conv2d``, ``linear``, ``silu``, ``layer_norm``),
so that what is refused is refused by the name its user knows.

The example input has batch size 2 (:data:`BATCH`): a batch dimension that a
model mixes into another shows up as a size that is not 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from ..validation import check_int

__all__ = ["BATCH", "Captured", "SelectLike", "capture", "check_input_shape", "model_dtype_device"]

#: The batch size of the example input the model is exported at.
BATCH = 2

#: What ``select=`` accepts: a key of a dict / ``ModelOutput``, an index of a tuple, a path of those, or a callable.
SelectLike = str | int | Sequence[str | int] | Callable[[Any], Any] | None

_WRAPPED = "model"  # the attribute a callable selection's wrapper holds the model under
_TORCH_DIR = str(__import__("pathlib").Path(torch.__file__).parent)


@dataclasses.dataclass
class Captured:
    """An exported model: ``program`` (functional ATen), the index of the explained output among the graph's user
    outputs, the model's dtype and device, and ``prefix`` to strip from module names (a selection's wrapper)."""

    program: torch.export.ExportedProgram
    output: int
    dtype: torch.dtype
    device: torch.device
    prefix: str = ""

    def module_name(self, node: torch.fx.Node) -> tuple[str, str]:
        """``(qualified name, class name)`` of the innermost module a graph node
        was called from (``("", "")`` if none)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", ""
        path, kind = list(stack.values())[-1]
        kind = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :]
        elif self.prefix and path == self.prefix[:-1]:
            path = ""
        return path, kind

    def where(self, node: torch.fx.Node) -> str:
        """How a message names a node: the operation as the graph holds it and the module it came from."""
        name, kind = self.module_name(node)
        op = display_name(node)
        source = f" in module {name!r} ({kind})" if name else (" in the model's own forward" if kind else "")
        trace = node.meta.get("stack_trace") or ""
        frames = [line.strip() for line in trace.strip().splitlines() if line.strip().startswith("File ")]
        own = [f for f in frames if _TORCH_DIR not in f]  # the user's code, not torch's modules
        at = f" [{own[-1]}]" if own else ""
        return f"{op!r}{source}{at}"


#: ATen's internal variants shown by the name PyTorch's API gives them (``F.batch_norm``, ``F.layer_norm``, ...)
_PUBLIC_NAMES = {
    "_native_batch_norm_legit_functional": "batch_norm", "_native_batch_norm_legit_no_training": "batch_norm",
    "_native_batch_norm_legit": "batch_norm", "native_batch_norm": "batch_norm", "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm", "native_dropout": "dropout", "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "_safe_softmax": "softmax", "_prelu_kernel": "prelu", "_adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "_unsafe_view": "view", "log_sigmoid_forward": "log_sigmoid",
}


def display_name(node: torch.fx.Node) -> str:
    """The operation as a message names it: ATen's name, its internal variants by their public name."""
    name = operation_name(node)
    return _PUBLIC_NAMES.get(name, name)


def operation_name(node: torch.fx.Node) -> str:
    """``'silu'``, ``'conv2d'``, ``'_native_batch_norm_legit_no_training'``: the ATen
    operation without namespace and overload."""
    target = node.target
    packet = getattr(target, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(target, "__name__", str(target))


def check_input_shape(input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """``input_shape`` as a tuple of positive ints (None stays None); TypeError / ValueError naming the problem."""
    if input_shape is None:
        return None
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) == 0:
        raise TypeError(
            f"input_shape must be a non-empty tuple of ints without the batch dimension (e.g. (1, 8, 8)), "
            f"got {input_shape!r}"
        )
    return tuple(check_int(n, f"every entry of input_shape {tuple(input_shape)}", minimum=1) for n in input_shape)


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The one floating dtype and device of the model's parameters and buffers (ValueError when they differ)."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    dtypes = {t.dtype for t in tensors}
    devices = {t.device for t in tensors}
    if len(dtypes) > 1 or len(devices) > 1:
        raise ValueError(
            f"all parameters and buffers of the model must share one dtype and device, got {sorted(map(str, dtypes))} "
            f"on {sorted(map(str, devices))}; convert the model with model.to(...)"
        )
    if not tensors:
        return torch.get_default_dtype(), torch.device("cpu")
    if any(t.is_meta for t in tensors):
        raise ValueError("the model has parameters without values (on the meta device); load its weights first")
    return tensors[0].dtype, tensors[0].device


def check_lazy(model: nn.Module) -> None:
    """A ``ValueError`` naming a lazy module whose parameters are not initialised yet."""
    for name, module in model.named_modules():
        # torch types the method's self as its private _LazyProtocol, which mypy cannot match on a narrowed Module
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():  # type: ignore[misc]
            raise ValueError(
                f"module {name or '<model>'!r} ({type(module).__name__}) has uninitialised parameters: run the "
                "model once on an input of its shape (or use the module's non-lazy counterpart) before lowering it"
            )


class _Leaf:
    """Stands for the graph's ``index``-th user output while a selection is applied to the output's structure."""

    def __init__(self, index: int):
        self.index = index


class _Selected(nn.Module):
    """``select(model(x))``: a callable selection that does more than pick an output is exported with the model."""

    def __init__(self, model: nn.Module, select: Callable[[Any], Any]):
        super().__init__()
        setattr(self, _WRAPPED, model)
        self.select = select

    def forward(self, x: torch.Tensor) -> Any:
        return self.select(getattr(self, _WRAPPED)(x))


def _describe_structure(spec: pytree.TreeSpec, shapes: list[tuple[int, ...]]) -> str:
    """The output's structure for a message: ``"a dict: 'logits' (2, 10), 'aux' (2, 4, 8, 8)"``."""
    tree = pytree.tree_unflatten([_Leaf(i) for i in range(spec.num_leaves)], spec)

    def show(node: Any, depth: int = 0) -> str:  # any node of the model's output structure
        if isinstance(node, _Leaf):
            return str(tuple(shapes[node.index][1:])) if node.index < len(shapes) else "?"
        if isinstance(node, dict) or hasattr(node, "keys"):
            inner = ", ".join(f"{k!r}: {show(node[k], depth + 1)}" for k in node.keys())
            return f"{type(node).__name__}({inner})"
        if isinstance(node, (tuple, list)):
            inner = ", ".join(f"[{i}]: {show(v, depth + 1)}" for i, v in enumerate(node))
            return f"{type(node).__name__}({inner})"
        return repr(node)

    return show(tree)


def _pick(tree: Any, select: str | int | Sequence[str | int] | Callable[[Any], Any]) -> Any:
    """``select`` applied to the output's structure (leaves are :class:`_Leaf`);
    raises KeyError/IndexError/TypeError."""
    if callable(select) and not isinstance(select, (str, int)):
        return select(tree)
    path = [select] if isinstance(select, (str, int)) else list(select)
    node = tree
    for step in path:
        if isinstance(step, bool) or not isinstance(step, (str, int)):
            raise TypeError(f"a selection path holds keys (str) and indices (int), got {step!r}")
        node = node[step]
    return node


@contextlib.contextmanager
def _quiet_fake_tensors() -> Iterator[None]:
    """torch logs an ERROR line for an operation that fails on fake tensors before it raises; the lowering reports the
    failure itself (:func:`_export_error`), so that logger is silenced while exporting (and restored)."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export(module: nn.Module, example: torch.Tensor, strict: bool) -> torch.export.ExportedProgram:
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _quiet_fake_tensors():  # export draws from the global RNG
        program = torch.export.export(module, (example,), strict=strict)
        return program.run_decompositions({})


def _export_error(model: nn.Module, example: torch.Tensor, error: Exception, input_shape: tuple) -> Exception:
    """A clear error for a failed export: the model fails at this shape
    (ValueError) or cannot be captured (TypeError)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # does the model itself run at this shape?  (eval copies: a training-mode model must not update its statistics)
    try:
        import copy

        probe = copy.deepcopy(model).eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            probe(example)
    except Exception as eager:  # noqa: BLE001  (the model's own error, whatever its type, is reported)
        message = str(eager).strip().splitlines()[0] if str(eager).strip() else type(eager).__name__
        hint = ""
        if len(input_shape) > 1 and _runs(probe, example.new_zeros((BATCH,) + tuple(input_shape[1:]))):
            hint = (f"; that looks like a batch dimension in front: input_shape is one input's shape without it "
                    f"(x.shape[1:], e.g. {tuple(input_shape[1:])})")
        return ValueError(
            f"the model fails on an input of shape {(BATCH,) + input_shape} ({type(eager).__name__}: {message}); "
            f"input_shape must be one input's shape without the batch dimension{hint}"
        )
    return TypeError(
        f"torch.export cannot capture {type(model).__name__} at input shape "
        f"{input_shape} ({type(error).__name__}: {first_line}). What to try: make forward's Python "
        "independent of tensor values (no `if x.sum() > 0:`; torch.cond for a data-dependent branch); pass "
        "a wrapper module whose forward calls the model the way it should be explained; or export it "
        "yourself -- the lowering exports with strict=False, and torch.export.export(model, (x,), "
        "strict=True) traces differently -- and pass the ExportedProgram to from_module"
    )


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(x)
        return True
    except Exception:  # noqa: BLE001  (whether it runs at all is the question)
        return False


def capture(model: nn.Module | torch.export.ExportedProgram, input_shape: Sequence[int] | None,
            select: SelectLike = None) -> tuple[Captured, tuple[int, ...]]:
    """Export ``model`` at ``input_shape`` and find the output ``select`` names; ``(captured, input_shape)``.

    An ``ExportedProgram`` is taken as it is (``input_shape`` may be None: its
    example input's shape is used; a callable ``select`` must then only pick).
    """
    if isinstance(model, torch.export.ExportedProgram):
        program = model.run_decompositions({})
        users = [s for s in program.graph_signature.input_specs
                 if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
        if len(users) != 1:
            raise TypeError(f"the exported program takes {len(users)} inputs; DTD explains a model of one input tensor")
        placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0].arg.name)
        example = placeholder.meta["val"]
        shape = tuple(int(s) for s in example.shape[1:])
        if input_shape is not None and check_input_shape(input_shape) != shape:
            raise ValueError(f"input_shape {tuple(input_shape)} differs from the exported program's input {shape}")
        captured = Captured(program, 0, example.dtype, example.device)
        try:
            captured.output = _selected_output(captured, select)
        except _NotAPick:
            raise ValueError("a callable select= on an ExportedProgram must pick one of its outputs (out.logits, "
                             "out['out']); to compute something from them, pass the model itself") from None
        return captured, shape
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (or a torch.export.ExportedProgram), got {type(model).__name__}")
    checked = check_input_shape(input_shape)
    if checked is None:
        raise TypeError("from_module needs input_shape=, one input's shape "
                        "without the batch dimension (e.g. (3, 32, 32))")
    shape = checked
    check_lazy(model)
    dtype, device = model_dtype_device(model)
    example = torch.zeros((BATCH,) + shape, dtype=dtype, device=device)
    module = model
    # a callable that only picks (out.logits, out["seg"]) is applied to the structure, else exported
    if callable(select) and not isinstance(select, (str, int)):
        try:
            program = _export(model, example, strict=False)
        except Exception as error:  # noqa: BLE001  (any export failure gets the diagnosis below)
            raise _export_error(model, example, error, shape) from error
        captured = Captured(program, 0, dtype, device)
        try:
            captured.output = _selected_output(captured, select)
            return captured, shape
        except _NotAPick:
            module = _Selected(model, select)
    try:
        program = _export(module, example, strict=False)
    except Exception as error:  # noqa: BLE001
        raise _export_error(model, example, error, shape) from error
    captured = Captured(program, 0, dtype, device, prefix=f"{_WRAPPED}." if module is not model else "")
    captured.output = _selected_output(captured, None if module is not model else select)
    return captured, shape


class _NotAPick(Exception):
    """A callable selection computed something instead of picking one output."""


def _selected_output(captured: Captured, select: SelectLike) -> int:
    """The index among the graph's user outputs that ``select`` names (ValueError listing the outputs otherwise)."""
    program = captured.program
    spec = program.call_spec.out_spec
    n = spec.num_leaves
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    kinds = program.graph_signature.output_specs
    user = [i for i, s in enumerate(kinds) if s.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT]
    values = [output_node.args[0][i] for i in user]
    shapes = [tuple(v.meta["val"].shape) if isinstance(v, torch.fx.Node) and hasattr(v.meta.get("val"), "shape") else ()
              for v in values]
    tree = pytree.tree_unflatten([_Leaf(i) for i in range(n)], spec)
    structure = _describe_structure(spec, shapes)
    how = ("pass select= a key (select='logits'), an index (select=0), a path (select=('out', 0)) or a callable "
           "(select=lambda out: out['out'])")
    if select is None:
        if n == 1:
            return 0
        raise ValueError(f"the model returns {n} tensors, {structure}; choose the one to explain: {how}")
    if isinstance(select, bool):
        raise TypeError(f"select must be a key, an index, a path or a callable, got {select!r}")
    callable_select = callable(select) and not isinstance(select, (str, int))
    try:
        picked = _pick(tree, select)
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        if callable_select:
            raise _NotAPick() from error
        raise ValueError(f"select={select!r} names no output of the model, which returns {structure}; {how}") from None
    if not isinstance(picked, _Leaf):
        if callable_select:
            raise _NotAPick()
        raise ValueError(f"select={select!r} names {type(picked).__name__}, not "
                         f"one tensor, of the model's outputs {structure}; {how}")
    return picked.index
