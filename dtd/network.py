"""ReLU networks: a stack of Linear layers, each followed by a ReLU.

The network is the object every DTD computation walks through: its layers,
their pre-activations and activation patterns, and the exact input gradient
of the piecewise-linear function it computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import cast

import torch
from torch import nn

from .graph import GraphNetwork
from .lowering import DEFAULT_MEMORY_BUDGET, lower_module, lower_sequential
from .lowering.capture import SelectLike
from .outputs import OutputLike, check_output, check_weights
from .validation import check_finite_layer, check_int, check_number, check_seed

__all__ = ["ReLUNetwork", "INITS", "output_column", "linear_copy"]

#: Weight initialisations understood by :meth:`ReLUNetwork.random`.
INITS = ("dtd", "torch")

# The seed's init scales every positive weight by this factor three times and
# every positive bias twice before negating it (see ReLUNetwork.random).
_DTD_INIT_FACTOR = 1.4

# sample_inputs gives up after drawing this many candidate rows per row asked for.
_MAX_DRAWS_PER_ROW = 1000
# ... and evaluates candidates in batches whose activations take at most this many bytes.
_SAMPLING_BATCH_BYTES = 64 << 20


def linear_copy(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` whose parameters are copies of ``weight`` ``(out, in)`` and ``bias`` ``(out,)``.

    Built without ``nn.Linear.__init__``, whose random initialisation (thrown away here) would draw from torch's
    global RNG; ``nn.utils.skip_init`` avoids the draw but costs about 1 ms a layer (a meta-device module moved to
    an empty one), and the conformance kit makes thousands of these copies.  The module is an ordinary
    ``nn.Linear`` in training mode (``in_features``, ``out_features``, ``weight``, ``bias``; ``repr``, ``forward``
    and ``state_dict`` as usual), its parameters on ``weight``'s dtype and device.
    """
    out_features, in_features = weight.shape
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.in_features, layer.out_features = int(in_features), int(out_features)
    layer.weight = nn.Parameter(weight.detach().clone())
    layer.bias = nn.Parameter(bias.detach().to(weight).clone())
    return layer


def output_column(values: torch.Tensor, output: int | torch.Tensor) -> torch.Tensor:
    """``values[:, output]`` ``(batch,)``: one column, or with a ``(batch,)`` index tensor each row's own."""
    if isinstance(output, torch.Tensor):
        return values.gather(1, output.unsqueeze(1)).squeeze(1)
    return values[:, output]


def _check_all_finite(tensor: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} contains {n_bad} NaN or infinite value(s)")


class ReLUNetwork(nn.Module):
    """A multi-layer perceptron ``relu(W_L ... relu(W_1 x + b_1) ... + b_L)``.

    Parameters
    ----------
    layers
        The ``nn.Linear`` layers, first to last.  They are used as given
        (not copied): the network shares their parameters.
        (:meth:`from_sequential` copies a model's parameters instead.)
    final_relu
        Whether the last Linear is followed by a ReLU (the seed's MLP has
        one; a classifier exported without it does not).
    flatten_input
        Accept inputs with more than one non-batch dimension and flatten them
        (a model that starts with ``nn.Flatten``).
    input_shape
        The input's shape without the batch dimension (e.g. ``(1, 8, 8)``),
        when it is more than the first layer's width.  Inputs of shape
        ``(batch, *input_shape)`` and ``(batch, D_0)`` are both accepted;
        :func:`dtd.train_free` and :func:`dtd.full_backward` return the input
        relevance in the shape of the ``x`` they were given, while
        layer-level tensors stay flat ``(batch, D_k)``.
    output_shape
        The per-point output's shape (e.g. ``(2, 8, 8)`` for a segmentation
        map lowered densely), when it is more than the last layer's width:
        index tuples (``output=(class, row, col)``) and output weights read it.
        :meth:`forward` returns the flat ``(batch, out_features)`` either way.

    Notes
    -----
    Layer ``k`` (``k = 0`` is the first Linear) maps activations
    ``a_k`` of shape ``(batch, D_k)`` to ``a_{k+1} = relu(a_k W_k^T + b_k)``
    of shape ``(batch, J_k)``.  ``f_k`` denotes the network from layer ``k``
    up to the output; ``f = f_0``.
    """

    def __init__(
        self,
        layers: Iterable[nn.Linear],
        *,
        final_relu: bool = True,
        flatten_input: bool = False,
        input_shape: Sequence[int] | None = None,
        output_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("a ReLUNetwork needs at least one nn.Linear layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"layer {index} must be nn.Linear, got {type(layer).__name__}")
            if isinstance(layer.weight, nn.parameter.UninitializedParameter):
                raise ValueError(
                    f"layer {index} ({type(layer).__name__}) has uninitialised parameters: run the module once on an "
                    "input (or build an nn.Linear with explicit sizes) before wrapping it"
                )
            if type(layer) is not nn.Linear:
                raise TypeError(
                    f"layer {index} is {type(layer).__name__}, a subclass of nn.Linear: only nn.Linear itself is "
                    "accepted, because a subclass may compute something else (an overridden forward) than the "
                    "weights DTD reads"
                )
            if layer._forward_hooks or layer._forward_pre_hooks:
                raise TypeError(
                    f"layer {index} has forward hooks or pre-hooks, which could change its output while DTD reads "
                    "only its weight and bias; remove them"
                )
        for index, (lower, upper) in enumerate(pairwise(layers)):
            if lower.out_features != upper.in_features:
                raise ValueError(
                    f"layer {index} has {lower.out_features} outputs but layer {index + 1} "
                    f"expects {upper.in_features} inputs"
                )
        dtypes = {layer.weight.dtype for layer in layers}
        devices = {layer.weight.device for layer in layers}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"all layers must share one dtype and device, got {dtypes} on {devices}")
        if not isinstance(final_relu, bool):
            raise TypeError(f"final_relu must be a bool, got {final_relu!r}")
        if input_shape is not None:
            if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or len(input_shape) == 0:
                raise TypeError(f"input_shape must be a non-empty tuple of ints, got {input_shape!r}")
            input_shape = tuple(
                check_int(n, f"every entry of input_shape {tuple(input_shape)}", minimum=1) for n in input_shape
            )
            if math.prod(input_shape) != layers[0].in_features:
                raise ValueError(
                    f"input_shape {input_shape} has {math.prod(input_shape)} entries but the first layer takes "
                    f"{layers[0].in_features} inputs"
                )
        if output_shape is not None:
            output_shape = tuple(check_int(n, f"every entry of output_shape {tuple(output_shape)}", minimum=1)
                                 for n in output_shape)
            if math.prod(output_shape) != layers[-1].out_features:
                raise ValueError(f"output_shape {output_shape} has {math.prod(output_shape)} entries but the last "
                                 f"layer has {layers[-1].out_features} outputs")
        self.layers = nn.ModuleList(layers)
        self.final_relu = final_relu
        self.input_shape: tuple[int, ...] | None = input_shape
        self._output_shape: tuple[int, ...] | None = output_shape
        self.flatten_input = bool(flatten_input) or (input_shape is not None and len(input_shape) > 1)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(
        cls,
        sizes: Sequence[int],
        seed: int,
        *,
        init: str = "dtd",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> ReLUNetwork:
        """Build a random network bit-for-bit as the 2022 study's code does.

        Parameters
        ----------
        sizes
            ``[D_0, J_0, J_1, ..., J_{L-1}]``: input size, then each layer's
            width.  ``[10, 10, 10, 10, 2]`` is the seed's ``MLP(4, 10, 10, 2)``.
        seed
            Seeds torch's generator for the layer construction, inside
            ``torch.random.fork_rng`` so the caller's RNG state is untouched.
        init
            ``"dtd"``: the seed's ``init_weights()``.  Its ``Module.apply``
            visits every parameter more than once, so what it does is:
            every positive weight is multiplied by 1.4 three times in a row
            (effective x2.744, three float32 roundings), every positive bias
            is multiplied by 1.4 twice and negated (effective -1.96 b), and
            negative weights and biases stay as they are.  All biases end up
            ``<= 0``.  ``"torch"``: torch's default ``nn.Linear`` init.
        dtype
            The layers are always built in float32 (as the seed's are) and
            then converted, so a float64 network holds the same values.
        device
            Where the network lives.
        """
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"sizes must be a sequence of ints, got {sizes!r}")
        if len(sizes) < 2:
            raise ValueError(f"sizes needs an input size and at least one layer width, got {list(sizes)}")
        for size in sizes:
            check_int(size, f"every entry of sizes ({list(sizes)})", minimum=1)
        check_seed(seed)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers = [nn.Linear(n_in, n_out, dtype=torch.float32) for n_in, n_out in pairwise(sizes)]
        if init == "dtd":
            with torch.no_grad():
                for layer in layers:
                    weight, bias = layer.weight, layer.bias
                    positive = weight > 0
                    for _ in range(3):
                        weight[positive] = _DTD_INIT_FACTOR * weight[positive]
                    positive = bias > 0
                    for _ in range(2):
                        bias[positive] = _DTD_INIT_FACTOR * bias[positive]
                    bias[positive] = -bias[positive]
        net = cls(layers)
        return net.to(dtype=dtype, device=device)

    @classmethod
    def from_sequential(
        cls,
        model: nn.Sequential,
        input_shape: Sequence[int] | None = None,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> ReLUNetwork:
        """Lower an ``nn.Sequential`` exactly into a ReLU network of dense layers that owns its parameters.

        The model goes through the one lowering every model takes
        (:mod:`dtd.lowering`: captured with ``torch.export``, every operation
        checked), and each affine map between two ReLUs -- convolutions (any
        dimension, groups, padding mode), pooling, batch norm in eval mode,
        upsampling, reshapes, ... -- is folded into one dense layer, computed
        exactly (float64, then the model's dtype).  Every ReLU-type hinge
        ends a layer (a ReLU6 or a leaky ReLU as the ReLU units of
        :mod:`dtd.lowering.aten`), and a trailing affine map without one is
        the last layer (``final_relu=False``).  The network's forward equals
        the model's on the flattened output.

        The network holds copies: ``model`` is never modified (parameters,
        buffers, modes, hooks, ``requires_grad``) and shares no storage with
        it, so later changes to either leave the other alone.

        Parameters
        ----------
        model
            An ``nn.Sequential`` (containers may nest).
        input_shape
            The input's shape without the batch dimension, e.g. ``(1, 8, 8)``;
            required unless the first module with weights is an ``nn.Linear``
            (after an optional ``nn.Flatten``) or an ``nn.BatchNorm1d``.  The
            network then accepts ``x`` of shape ``(batch, *input_shape)`` (and
            flat ``(batch, D_0)``).
        memory_budget
            Largest dense float64 matrix, in bytes, a folded layer may need
            (default 1 GiB); a larger one is refused before it is allocated.

        Raises
        ------
        TypeError
            Not an ``nn.Sequential``; an operation DTD's ReLU-region analysis
            does not cover (named with its module, e.g. ``'silu' in module
            '3' (SiLU)``, with the reason); max pooling or a skip connection
            (they need :meth:`from_module`'s graph).
        ValueError
            Batch norm or dropout in training mode (call ``model.eval()``), a
            batch norm without running statistics, ``input_shape`` missing or
            not fitting the model, a folded layer above ``memory_budget``.
        """
        lowered = lower_sequential(model, input_shape, memory_budget=memory_budget)
        linears = []
        for layer in lowered.layers:
            out_features, in_features = layer.weight.shape
            # built on the meta device: no initialisation work and no draw from torch's global RNG;
            # the lowered tensors are fresh copies, owned by the network from here on
            linear = nn.Linear(in_features, out_features, bias=layer.bias is not None, device="meta")
            linear.weight = nn.Parameter(layer.weight)
            if layer.bias is not None:
                linear.bias = nn.Parameter(layer.bias)
            linears.append(linear)
        final_relu = lowered.layers[-1].relu
        output_shape = lowered.output_shape if len(lowered.output_shape) > 1 else None
        return cls(linears, final_relu=final_relu, flatten_input=lowered.flatten_input, input_shape=lowered.input_shape,
                   output_shape=output_shape)

    @classmethod
    def from_module(
        cls,
        model: nn.Module | torch.export.ExportedProgram,
        input_shape: Sequence[int] | None = None,
        *,
        select: SelectLike = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> ReLUNetwork | GraphNetwork:
        """Lower any piecewise-linear model exactly, from the graph ``torch.export`` captures (:mod:`dtd.lowering`).

        The model is exported at ``input_shape`` (shape-dependent Python
        resolved), and every ATen operation of its graph is lowered by what it
        is: convolutions (any dimension, transposed, grouped), Linear, batch
        norm (folded), pooling, upsampling, reshapes, permutes, slices,
        ``cat``, paddings, residual ``+`` ... become a
        :class:`~dtd.graph.GraphNetwork` whose DTD layers are matrix-free
        operators; ReLU, ReLU6 / hardtanh, leaky ReLU / PReLU, ``abs``,
        ``clamp`` become ReLU units and max pooling stays winner-take-all.  A
        model that lowers to a chain of Linear layers and ReLUs (an MLP) comes
        back as a dense :class:`ReLUNetwork`, as :meth:`from_sequential` builds it.

        Parameters
        ----------
        model
            Any ``nn.Module`` ``torch.export`` can capture (or an
            ``ExportedProgram``); in eval mode where that matters.  Never
            modified; nothing is shared.
        input_shape
            One input's shape without the batch dimension, e.g. ``(3, 224, 224)``
            (optional for an ``ExportedProgram``).
        select
            Which output to explain when the model returns several: a key
            (``"logits"`` of a dict or Hugging Face ``ModelOutput``), an index
            (of a tuple), a path of those (``("out", 0)``), or a callable
            applied to the output (``lambda out: out["out"]``).  Not needed
            for a model returning one tensor.
        memory_budget
            Largest dense float64 matrix (bytes) an affine map that has no exact
            operator form may be folded into (default 1 GiB).

        Raises
        ------
        TypeError
            An operation that is not piecewise linear, named as the graph
            holds it with the module it came from (``'silu' in module
            'act1' (SiLU)``) and why; a model ``torch.export`` cannot capture
            (what to try is in the message).
        ValueError
            Batch norm / dropout in training mode, an ``input_shape`` the model
            does not run at, a ``select`` that names no output (the outputs are
            listed), a dense fallback above ``memory_budget``.
        """
        graph = lower_module(model, input_shape, select=select, memory_budget=memory_budget)
        chain = graph.as_dense_chain()
        if chain is None:
            return graph
        weights, biases, final_relu = chain
        linears = []
        for weight, bias in zip(weights, biases, strict=True):
            linear = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
            linear.weight = nn.Parameter(weight.clone())
            linear.bias = nn.Parameter(bias.clone())
            linears.append(linear)
        shape, out = tuple(graph.input_shape), tuple(graph.output_shape)
        return cls(linears, final_relu=final_relu, input_shape=shape if len(shape) > 1 else None,
                   flatten_input=len(shape) > 1, output_shape=out if len(out) > 1 else None)

    def to_sequential(self, *, bias: bool = True) -> nn.Sequential:
        """An independent ``nn.Sequential`` copy (``Linear``, ``ReLU``, ...) computing the same function.

        For handing the network to other attribution libraries (zennit,
        captum) without them touching this one's modules.  ``bias=False``
        gives the same weights with every bias set to zero.  A network with
        a multi-dimensional ``input_shape`` (or ``flatten_input``) starts with
        ``nn.Flatten()``, so the Sequential takes the same inputs.
        """
        modules: list[nn.Module] = [nn.Flatten()] if self.flatten_input else []
        for k, layer in enumerate(self._linears()):
            # no initialisation, so torch's global RNG is not drawn from
            b = self.bias(k)
            modules.append(linear_copy(layer.weight, b if bias else torch.zeros_like(b)))
            if self.has_relu(k):
                modules.append(nn.ReLU())
        return nn.Sequential(*modules)

    def graph(self) -> GraphNetwork:
        """This network on the engine every DTD computation runs on: a :class:`~dtd.graph.GraphNetwork` chain.

        One :class:`~dtd.operators.Dense` operator per Linear, sharing this
        network's parameter tensors (detached, not copied), a ReLU after every
        layer but the last (``final_relu`` says whether the output has one).
        Built anew on each call (a few small objects), so it always computes
        with the parameters' current values.  Its input is flat ``(batch, D_0)``.
        """
        layers = self._linears()
        return GraphNetwork.chain(
            [layer.weight.detach() for layer in layers],
            [layer.bias.detach() if layer.bias is not None
             else layer.weight.new_zeros(layer.out_features).detach() for layer in layers],
            final_relu=self.final_relu,
            input_shape=(self.in_features,),
        )

    # ------------------------------------------------------------------ structure
    def _linear(self, k: int) -> nn.Linear:
        # every entry of self.layers is an nn.Linear (the constructor checks); ModuleList only knows Module
        return cast(nn.Linear, self.layers[k])

    def _linears(self) -> list[nn.Linear]:
        return [self._linear(k) for k in range(len(self.layers))]

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def sizes(self) -> list[int]:
        """``[D_0, J_0, ..., J_{L-1}]`` as accepted by :meth:`random`."""
        return [self.in_features] + [layer.out_features for layer in self._linears()]

    @property
    def in_features(self) -> int:
        return self._linear(0).in_features

    @property
    def out_features(self) -> int:
        return self._linear(-1).out_features

    @property
    def dtype(self) -> torch.dtype:
        return self._linear(0).weight.dtype

    @property
    def device(self) -> torch.device:
        return self._linear(0).weight.device

    def weight(self, k: int) -> torch.Tensor:
        """Weight ``(J_k, D_k)`` of layer ``k`` (detached view)."""
        return self._linear(k).weight.detach()

    def bias(self, k: int) -> torch.Tensor:
        """Bias ``(J_k,)`` of layer ``k``; zeros for a Linear without bias."""
        layer = self._linear(k)
        if layer.bias is None:
            return layer.weight.new_zeros(layer.out_features).detach()
        return layer.bias.detach()

    def has_relu(self, k: int) -> bool:
        """Whether layer ``k`` is followed by a ReLU."""
        return k < self.n_layers - 1 or self.final_relu

    def subnetwork(self, from_layer: int) -> ReLUNetwork:
        """``f_k``: the layers ``from_layer ...`` sharing this network's parameters."""
        self.check_layer(from_layer)
        return ReLUNetwork(self._linears()[from_layer:], final_relu=self.final_relu, output_shape=self._output_shape)

    def check_parameters(self) -> None:
        """Raise ``ValueError`` if any weight or bias is NaN, infinite or has no values (a network on the
        ``meta`` device; an ``nn.LazyLinear`` that never ran is refused when the network is built).
        """
        if self.device.type == "meta":
            raise ValueError(
                "the network is on the meta device (its parameters have no values): materialise it first, "
                "e.g. net.to_empty(device='cpu') followed by load_state_dict(...)"
            )
        # one reduction for the common case: NaN and inf survive a sum (a sum that
        # overflows only sends us to the per-tensor check, which names the culprit)
        total = torch.stack([p.detach().sum() for p in self.parameters()]).sum()
        if bool(torch.isfinite(total)):
            return
        for k in range(self.n_layers):
            _check_all_finite(self.weight(k), f"weight of layer {k}")
            _check_all_finite(self.bias(k), f"bias of layer {k}")

    def check_layer(self, k: object, name: str = "layer") -> int:
        k = check_int(k, name)
        if not 0 <= k < self.n_layers:
            raise ValueError(f"{name} must be in [0, {self.n_layers - 1}] for a {self.n_layers}-layer network, got {k}")
        return k

    def check_output(self, output: OutputLike, batch: int | None = None) -> int | torch.Tensor:
        """``output`` checked: an int in range, a 1-tuple ``(class,)``, or a ``(batch,)`` integer tensor of per-point
        output indices (:func:`dtd.outputs.check_output`).

        A tensor is returned as int64 on the network's device; ``batch``
        (when given) is the number of points it must index.
        """
        return check_output(self, output, batch)

    @property
    def output_shape(self) -> tuple:
        """The per-point output's shape: ``(out_features,)``, or the model's (``(2, 8, 8)``) where it was given."""
        return self._output_shape if self._output_shape is not None else (self.out_features,)

    def explaining(self, weights: torch.Tensor) -> ReLUNetwork:
        """The network whose one output is ``sum(weights * net(x))`` (``weights`` ``(out_features,)``).

        Without a final ReLU the last layer becomes ``w^T W``, ``w . b``
        (computed in float64); under one, a new last layer ``(1, out_features)``
        with the weights reads it.  The other layers are this network's own
        (shared, not copied).
        """
        w = check_weights(self, weights).to(torch.float64)
        layers = self._linears()
        last = layers[-1]
        if self.final_relu:
            extra = linear_copy(w.reshape(1, -1).to(self.dtype), torch.zeros(1, dtype=self.dtype, device=self.device))
            layers.append(extra)
        else:
            weight = (w.reshape(1, -1) @ last.weight.detach().to(torch.float64)).to(self.dtype)
            bias = (w * self.bias(len(layers) - 1).detach().to(torch.float64)).sum().reshape(1).to(self.dtype)
            layers[-1] = linear_copy(weight, bias)
        shape = self.input_shape
        return ReLUNetwork(layers, final_relu=False, flatten_input=self.flatten_input, input_shape=shape)

    def check_input(self, x: object, *, from_layer: int = 0, name: str = "x") -> torch.Tensor:
        """Validate a batch for layer ``from_layer`` and return it as ``(batch, D_k)``.

        Raises ``TypeError`` for a non-tensor or a dtype other than the
        network's and ``ValueError`` for a wrong shape, an empty batch,
        NaN/inf entries or another device.  Never modifies ``x``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        self.check_layer(from_layer, "from_layer")
        if from_layer == 0:
            x = self.flatten(x)
        width = self._linear(from_layer).in_features
        if x.dim() != 2 or x.shape[1] != width:
            shapes = f"(batch, {width})"
            if from_layer == 0 and self.input_shape is not None and len(self.input_shape) > 1:
                shapes += f" or (batch, {', '.join(map(str, self.input_shape))})"
            raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the network is {self.dtype}; convert one of them")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the network is on {self.device}")
        _check_all_finite(x, name)
        return x.detach()

    def flatten(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` of shape ``(batch, *input_shape)`` as ``(batch, D_0)`` (a view); other shapes unchanged.

        With ``flatten_input`` and no ``input_shape``, any ``x`` with more
        than two dimensions is flattened.
        """
        if x.dim() > 2 and (
            (self.input_shape is not None and tuple(x.shape[1:]) == self.input_shape)
            or (self.input_shape is None and self.flatten_input)
        ):
            return x.flatten(1)
        return x

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``net(x)``: ``(batch, D_0)`` or ``(batch, *input_shape)`` -> ``(batch, J_{L-1})``."""
        x = self.flatten(x)
        last = self.n_layers - 1
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < last or self.final_relu:
                x = torch.relu(x)
        return x

    def pre_activations(self, x: torch.Tensor, *, from_layer: int = 0) -> list[torch.Tensor]:
        """Pre-activations ``z_k = a_k W_k^T + b_k`` of layers ``from_layer ...``.

        ``x`` is the input of layer ``from_layer``; entry ``i`` of the result
        is ``(batch, J_{from_layer + i})``.
        """
        self.check_layer(from_layer, "from_layer")
        with torch.no_grad():
            a = x.detach()
            result = []
            for k in range(from_layer, self.n_layers):
                z = torch.addmm(self.bias(k), a, self.weight(k).T)
                result.append(z)
                a = torch.relu(z) if self.has_relu(k) else z
        return result

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Inputs ``a_0 = x, a_1, ..., a_{L-1}`` of every layer, and the output last.

        The list has ``n_layers + 1`` entries; entry ``k`` is ``(batch, D_k)``.
        Entry 0 is ``x`` itself (detached, not copied).  Pre-activations that
        overflow the dtype are a ``ValueError`` naming the layer.
        """
        zs = self.check_finite(self.pre_activations(x))
        acts = [x.detach()]
        for k, z in enumerate(zs):
            acts.append(torch.relu(z) if self.has_relu(k) else z)
        return acts

    def activation_pattern(self, x: torch.Tensor, *, from_layer: int = 0) -> list[torch.Tensor]:
        """Boolean ReLU states ``z_k > 0`` of layers ``from_layer ...``.

        A layer without a ReLU (the last, when ``final_relu`` is False) is
        reported as all-active: it is linear everywhere.
        """
        zs = self.pre_activations(x, from_layer=from_layer)
        return [z > 0
                if self.has_relu(from_layer + i) else torch.ones_like(z, dtype=torch.bool) for i, z in enumerate(zs)]

    def output_value(self, x: torch.Tensor, output: int | torch.Tensor, *, from_layer: int = 0) -> torch.Tensor:
        """``f_k(x)``: output neuron ``output`` (an int, or one per row) of the layers
        ``from_layer ...``, shape ``(batch,)``."""
        return self.output_from_pre_activations(self.pre_activations(x, from_layer=from_layer), output)

    def output_from_pre_activations(self, zs: list[torch.Tensor], output: int | torch.Tensor) -> torch.Tensor:
        """The explained output ``(batch,)`` from pre-activations ``zs`` (as :meth:`pre_activations`; the last is used);
        ``output`` an int or a ``(batch,)`` tensor of per-row output indices."""
        z = output_column(zs[-1], output)
        return torch.relu(z) if self.final_relu else z

    def check_finite(self, zs: list[torch.Tensor], *, from_layer: int = 0) -> list[torch.Tensor]:
        """``zs`` itself; a ``ValueError`` naming the first layer whose pre-activations overflow the dtype.

        One ``isfinite`` reduction per layer.
        """
        for offset, z in enumerate(zs):
            check_finite_layer(z, from_layer + offset, "its pre-activations")
        return zs

    def input_gradient(self, x: torch.Tensor, output: int | torch.Tensor, *, from_layer: int = 0) -> torch.Tensor:
        """Exact gradient ``d f_k / d a_k`` at every row of ``x``: ``(batch, D_k)``.

        Closed form of the piecewise-linear network: masks times weights,
        with torch's convention ``relu'(0) = 0`` (equal to autograd).  ``x``
        is the input of layer ``from_layer``; it is not touched.  Values that
        overflow the dtype are a ``ValueError`` naming the layer.
        """
        return self.evaluate(x, output, from_layer=from_layer)[2]

    def evaluate(
        self, x: torch.Tensor, output: int | torch.Tensor, *, from_layer: int = 0
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One pass for everything the property checks need at the rows of ``x``.

        Returns the pre-activations of layers ``from_layer ...`` (as
        :meth:`pre_activations`), ``f_k(x)`` ``(batch,)`` and the exact
        gradient ``d f_k / d a_k`` ``(batch, D_k)`` (as :meth:`input_gradient`).
        """
        self.check_output(output, x.shape[0])
        zs = self.check_finite(self.pre_activations(x, from_layer=from_layer), from_layer=from_layer)
        value = self.output_from_pre_activations(zs, output)
        return zs, value, self.gradient_from_pre_activations(zs, output, from_layer=from_layer)

    def gradient_from_pre_activations(
        self, zs: list[torch.Tensor], output: int | torch.Tensor, *, from_layer: int = 0, threshold: float = 0.0
    ) -> torch.Tensor:
        """``d f_k / d a_k`` ``(batch, D_k)`` from the pre-activations of layers ``from_layer ...``.

        The gradient of the piecewise-linear network depends only on the
        ReLU states ``z > threshold``: the backward pass is masks times
        weights.  ``threshold = 0`` is torch's ``relu'(0) = 0``; a positive
        threshold treats pre-activations within it of 0 as exactly 0.  A
        gradient that overflows the dtype is a ``ValueError`` naming the layer.
        """
        last = self.n_layers - 1
        with torch.no_grad():
            z_out = output_column(zs[-1], output)  # with per-row outputs, weight(last)[output] is (batch, D) too
            if self.final_relu:
                grad = (z_out > threshold).to(z_out.dtype).unsqueeze(1) * self.weight(last)[output]
            else:
                grad = self.weight(last)[output].expand(z_out.shape[0], -1).clone()
            for k in range(last - 1, from_layer - 1, -1):
                grad = check_finite_layer((grad * (zs[k - from_layer] > threshold)) @ self.weight(k), k,
                                          "the input gradient's entries")
        return grad

    # ------------------------------------------------------------------ inputs
    def sample_inputs(
        self,
        n: int,
        *,
        output: int = 0,
        min_output: float = 0.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` non-negative inputs with ``f(x) > min_output``.

        Rows are drawn like the seed's (``|N(0, I)|``) in batches from a
        local generator and kept when the explained output exceeds
        ``min_output``.  Raises ``ValueError``, quoting the acceptance rate,
        when ``n`` rows are not found within ``1000 n`` draws.

        Parameters
        ----------
        seed, generator
            Give one (or neither, for a fresh nondeterministic draw).  The
            global torch RNG is never used.
        """
        check_int(n, "n", minimum=1)
        self.check_output(output)
        check_number(min_output, "min_output")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if generator is None:
            generator = torch.Generator(device="cpu")
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(check_seed(seed))
        elif not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

        # accepted rows go straight into one preallocated result: many small kept
        # tensors between large freed temporaries pinned GBs of heap (glibc)
        result = torch.empty(n, self.in_features, dtype=self.dtype, device=self.device)
        n_kept = drawn = 0
        max_draws = _MAX_DRAWS_PER_ROW * n
        row_bytes = 2 * sum(self.sizes) * self.weight(0).element_size()
        max_batch = max(64, _SAMPLING_BATCH_BYTES // row_bytes)
        batch = min(max(64, n), max_batch)
        while n_kept < n and drawn < max_draws:
            size = min(batch, max_draws - drawn)
            candidates = torch.randn(size, self.in_features, generator=generator, dtype=torch.float32).abs()
            candidates = candidates.to(dtype=self.dtype, device=self.device)
            drawn += size
            accepted = candidates[self.output_value(candidates, output) > min_output][: n - n_kept]
            result[n_kept : n_kept + accepted.shape[0]] = accepted
            n_kept += accepted.shape[0]
            if n_kept < n and n_kept > 0:
                # grow the next batch towards what the observed acceptance rate needs
                batch = min(max(64, int(1.2 * (n - n_kept) * drawn / n_kept) + 1), max_batch)
            elif n_kept == 0:
                batch = min(batch * 4, max_batch)
        if n_kept < n:
            raise ValueError(
                f"could only find {n_kept} of {n} inputs with f(x)[{output}] > {min_output} in {drawn} draws "
                f"(acceptance rate {n_kept / drawn:.2e}); lower min_output or choose another output"
            )
        return result
