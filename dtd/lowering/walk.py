"""Reading an exported graph node by node into a :class:`~dtd.graph.GraphNetwork` (see :mod:`dtd.lowering`)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch.export.graph_signature import InputKind, OutputKind

from ..graph import AffineNode, Branch, GraphNetwork, InputNode, Node, ReLUNode
from . import linear as _linear  # noqa: F401  (registers the affine operations)
from .aten import HANDLERS, IGNORED, LIKE, bind
from .build import Act, Builder, Lin, Refused, is_value
from .capture import Captured, operation_name
from .hinges import INDICES
from .refusals import prepass_refusal, refusal, training_refusal

__all__ = ["lower_captured", "check_refusals"]


def _depends(program: torch.export.ExportedProgram) -> set[torch.fx.Node]:
    """The graph's nodes whose values depend on the user's input (``zeros_like(x)`` does not)."""
    specs = {s.arg.name: s.kind for s in program.graph_signature.input_specs}
    depends: set[torch.fx.Node] = set()
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if specs.get(node.name) == InputKind.USER_INPUT:
                depends.add(node)
        elif node.op == "call_function" and operation_name(node) not in LIKE | IGNORED:
            if any(a in depends for a in node.all_input_nodes):
                depends.add(node)
    return depends


def check_refusals(captured: Captured) -> None:
    """Refuse, before any work, the first input-dependent operation that cannot be lowered (TypeError / ValueError)."""
    depends = _depends(captured.program)
    for node in captured.program.graph.nodes:
        if node.op == "call_function" and node in depends and node.target is not operator.getitem:
            problem = prepass_refusal(captured, node, depends) or training_refusal(captured, node)
            if problem is not None:
                raise problem


def _constants(program: torch.export.ExportedProgram, device: torch.device) -> dict[str, torch.Tensor]:
    """Parameters, buffers and lifted constants by placeholder name; floating ones as float64 copies."""
    state = program.state_dict
    constants = program.constants
    values = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            tensor = state[spec.target] if spec.target in state else constants[spec.target]
        elif spec.kind == InputKind.CONSTANT_TENSOR:
            tensor = constants[spec.target]
        else:
            continue
        tensor = tensor.detach()
        values[spec.arg.name] = tensor.to(dtype=torch.float64, device=device, copy=True) if tensor.is_floating_point() \
            else tensor.to(device=device, copy=True)
    return values


def _map(value: object, env: dict[str, Any]) -> Any:
    if isinstance(value, torch.fx.Node):
        return env[value.name]
    if isinstance(value, (list, tuple)):
        return type(value)(_map(v, env) for v in value)
    return value


def _contains_value(value: object) -> bool:
    if is_value(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_value(v) for v in value)
    return False


def _fold(node: torch.fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """An operation on constants only, evaluated (floating results in float64)."""
    if "dtype" in kwargs and isinstance(kwargs["dtype"], torch.dtype) and kwargs["dtype"].is_floating_point:
        kwargs = dict(kwargs, dtype=torch.float64)
    with torch.no_grad():
        result = cast(Callable[..., Any], node.target)(*args, **kwargs)  # a call_function node's target
    if isinstance(result, torch.Tensor) and result.is_floating_point():
        result = result.to(torch.float64)
    return result


def lower_captured(captured: Captured, input_shape: tuple[int, ...],
                   memory_budget: int) -> tuple[list[Node], int, bool]:
    """The network's nodes (float64 operators), the output node and whether the output has a final ReLU."""
    check_refusals(captured)
    program = captured.program
    builder = Builder(captured, input_shape, memory_budget)
    specs = {s.arg.name: s for s in program.graph_signature.input_specs}
    constants = _constants(program, captured.device)
    env: dict[str, Any] = {}
    outputs: list = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            spec = specs[node.name]
            if spec.kind == InputKind.USER_INPUT:
                env[node.name] = Act(0, tuple(input_shape))
            elif node.name in constants:
                env[node.name] = constants[node.name]
            else:
                raise Refused(f"the model's graph takes an input of kind {spec.kind.name} ({node.name!r}); "
                              "DTD lowers models of one input tensor")
        elif node.op == "call_function":
            if operation_name(node) in IGNORED:
                env[node.name] = None
                continue
            args, kwargs = _map(node.args, env), _map(node.kwargs, env)
            if node.target is operator.getitem:
                container, index = args
                value = container[index]
                if value is INDICES:
                    raise Refused(f"cannot lower {captured.where(node)}: it reads a max pooling's argmax indices "
                                  "(data-dependent positions)")
                env[node.name] = value
            elif not _contains_value(args) and not _contains_value(kwargs) and operation_name(node) not in LIKE:
                env[node.name] = _fold(node, args, kwargs)
            else:
                handler = HANDLERS.get(operation_name(node))
                if handler is None:
                    raise refusal(captured, node)
                builder.module = captured.module_name(node)[0]
                env[node.name] = handler(builder, node, bind(node, args, kwargs))
        elif node.op == "output":
            kinds = program.graph_signature.output_specs
            outputs = [_map(v, env) for v, spec in zip(node.args[0], kinds, strict=True)
                       if spec.kind == OutputKind.USER_OUTPUT]
        elif node.op == "get_attr":
            env[node.name] = getattr(program.graph_module, node.target)
    output, final_relu = _finish(builder, outputs[captured.output])
    return builder.nodes, output, final_relu


def _finish(builder: Builder, value: object) -> tuple[int, bool]:
    if not is_value(value):
        raise Refused("the selected output of the model does not depend on its input")
    where = "the model's output"
    if isinstance(value, Lin):
        return builder.affine_node(value, where), False
    node = builder.nodes[value.id]
    if isinstance(node, ReLUNode) and isinstance(builder.nodes[node.source], AffineNode):
        return node.source, True
    return builder.source_of(value, where), False


def build_network(nodes: list[Node], output: int, final_relu: bool, input_shape: tuple[int, ...], dtype: torch.dtype,
                  device: torch.device) -> GraphNetwork:
    """The nodes the output depends on, renumbered, with operators and biases converted to ``dtype`` on ``device``."""
    needed = {output}
    for node in reversed(nodes):
        if node.id in needed:
            needed.update(GraphNetwork.sources(node))
    needed.add(0)
    kept = [node for node in nodes if node.id in needed]
    converted = []
    for node in kept:
        if isinstance(node, AffineNode):
            branches = tuple(Branch(b.source, b.op.to(dtype, device)) for b in node.branches)
            node = dataclasses.replace(node, branches=branches, bias=node.bias.to(dtype=dtype, device=device))
        converted.append(node)
    ids = {node.id: i for i, node in enumerate(converted)}
    renumbered = [_renumber(node, ids) for node in converted]
    return GraphNetwork(renumbered, ids[output], final_relu=final_relu, input_shape=input_shape)


def _renumber(node: Node, ids: dict[int, int]) -> Node:
    if isinstance(node, InputNode):
        return node
    if isinstance(node, AffineNode):
        return dataclasses.replace(node, id=ids[node.id],
                                   branches=tuple(Branch(ids[b.source], b.op) for b in node.branches))
    return dataclasses.replace(node, id=ids[node.id], source=ids[node.source])
