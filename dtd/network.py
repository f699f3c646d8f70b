"""ReLU networks: a stack of Linear layers, each followed by a ReLU.

The network is the object every DTD computation walks through: its layers,
their pre-activations and activation patterns, and the exact input gradient
of the piecewise-linear function it computes.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

__all__ = ["ReLUNetwork", "INITS", "output_column"]

#: Weight initialisations understood by :meth:`ReLUNetwork.random`.
INITS = ("dtd", "torch")

# The seed's init scales every positive weight by this factor three times and
# every positive bias twice before negating it (see ReLUNetwork.random).
_DTD_INIT_FACTOR = 1.4

# sample_inputs gives up after drawing this many candidate rows per row asked for.
_MAX_DRAWS_PER_ROW = 1000
# ... and evaluates candidates in batches whose activations take at most this many bytes.
_SAMPLING_BATCH_BYTES = 64 << 20


def _check_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def output_column(values: torch.Tensor, output: "int | torch.Tensor") -> torch.Tensor:
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
    final_relu
        Whether the last Linear is followed by a ReLU (the seed's MLP has
        one; a classifier exported without it does not).

    Notes
    -----
    Layer ``k`` (``k = 0`` is the first Linear) maps activations
    ``a_k`` of shape ``(batch, D_k)`` to ``a_{k+1} = relu(a_k W_k^T + b_k)``
    of shape ``(batch, J_k)``.  ``f_k`` denotes the network from layer ``k``
    up to the output; ``f = f_0``.
    """

    def __init__(self, layers: Iterable[nn.Linear], *, final_relu: bool = True, flatten_input: bool = False):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("a ReLUNetwork needs at least one nn.Linear layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"layer {index} must be nn.Linear, got {type(layer).__name__}")
        for index, (lower, upper) in enumerate(zip(layers[:-1], layers[1:])):
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
        self.layers = nn.ModuleList(layers)
        self.final_relu = final_relu
        self.flatten_input = bool(flatten_input)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def random(
        cls,
        sizes: Sequence[int],
        seed: int,
        *,
        init: str = "dtd",
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device | str] = None,
    ) -> "ReLUNetwork":
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
            _check_int(size, f"every entry of sizes ({list(sizes)})", minimum=1)
        _check_int(seed, "seed", minimum=0)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers = [nn.Linear(n_in, n_out, dtype=torch.float32) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
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
    def from_sequential(cls, seq: nn.Sequential) -> "ReLUNetwork":
        """Wrap an ``nn.Sequential`` of alternating ``Linear`` and ``ReLU``.

        An ``nn.Flatten`` may come first; the ReLU after the last Linear is
        optional.  The Linear modules are shared, not copied, and ``seq`` is
        not changed.  Any other module is a ``TypeError`` naming it.
        """
        if not isinstance(seq, nn.Sequential):
            raise TypeError(f"from_sequential expects nn.Sequential, got {type(seq).__name__}")
        modules = list(seq.named_children())
        flatten = False
        if modules and isinstance(modules[0][1], nn.Flatten):
            flat = modules[0][1]
            if flat.start_dim != 1 or flat.end_dim != -1:
                raise TypeError(
                    f"module {modules[0][0]!r} is nn.Flatten(start_dim={flat.start_dim}, end_dim={flat.end_dim}); "
                    "only nn.Flatten(1, -1) can be represented"
                )
            flatten = True
            modules = modules[1:]
        layers: list[nn.Linear] = []
        final_relu = False
        for name, module in modules:
            if isinstance(module, nn.Linear):
                if layers and not final_relu:
                    raise TypeError(f"module {name!r} (Linear) follows a Linear without a ReLU in between")
                layers.append(module)
                final_relu = False
            elif type(module) is nn.ReLU:
                if not layers or final_relu:
                    raise TypeError(f"module {name!r} (ReLU) must directly follow a Linear")
                final_relu = True
            else:
                raise TypeError(
                    f"module {name!r} of type {type(module).__name__} is not supported: "
                    "only nn.Linear, nn.ReLU (and a leading nn.Flatten)"
                )
        if not layers:
            raise ValueError("the Sequential holds no nn.Linear layer")
        return cls(layers, final_relu=final_relu, flatten_input=flatten)

    def to_sequential(self, *, bias: bool = True) -> nn.Sequential:
        """An independent ``nn.Sequential`` copy (``Linear``, ``ReLU``, ...) computing the same function.

        For handing the network to other attribution libraries (zennit,
        captum) without them touching this one's modules.  ``bias=False``
        gives the same weights with every bias set to zero.
        """
        modules: list[nn.Module] = [nn.Flatten()] if self.flatten_input else []
        for k, layer in enumerate(self.layers):
            copy = nn.Linear(layer.in_features, layer.out_features, dtype=self.dtype, device=self.device)
            with torch.no_grad():
                copy.weight.copy_(layer.weight)
                copy.bias.copy_(self.bias(k) if bias else torch.zeros_like(copy.bias))
            modules.append(copy)
            if self.has_relu(k):
                modules.append(nn.ReLU())
        return nn.Sequential(*modules)

    # ------------------------------------------------------------------ structure
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def sizes(self) -> list[int]:
        """``[D_0, J_0, ..., J_{L-1}]`` as accepted by :meth:`random`."""
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    @property
    def out_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    def weight(self, k: int) -> torch.Tensor:
        """Weight ``(J_k, D_k)`` of layer ``k`` (detached view)."""
        return self.layers[k].weight.detach()

    def bias(self, k: int) -> torch.Tensor:
        """Bias ``(J_k,)`` of layer ``k``; zeros for a Linear without bias."""
        layer = self.layers[k]
        if layer.bias is None:
            return layer.weight.new_zeros(layer.out_features).detach()
        return layer.bias.detach()

    def has_relu(self, k: int) -> bool:
        """Whether layer ``k`` is followed by a ReLU."""
        return k < self.n_layers - 1 or self.final_relu

    def subnetwork(self, from_layer: int) -> "ReLUNetwork":
        """``f_k``: the layers ``from_layer ...`` sharing this network's parameters."""
        self.check_layer(from_layer)
        return ReLUNetwork(list(self.layers)[from_layer:], final_relu=self.final_relu)

    def check_parameters(self) -> None:
        """Raise ``ValueError`` if any weight or bias is NaN or infinite."""
        # one reduction for the common case: NaN and inf survive a sum (a sum that
        # overflows only sends us to the per-tensor check, which names the culprit)
        total = torch.stack([p.detach().sum() for p in self.parameters()]).sum()
        if bool(torch.isfinite(total)):
            return
        for k in range(self.n_layers):
            _check_all_finite(self.weight(k), f"weight of layer {k}")
            _check_all_finite(self.bias(k), f"bias of layer {k}")

    def check_layer(self, k, name: str = "layer") -> int:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{name} must be an int, got {k!r}")
        if not 0 <= k < self.n_layers:
            raise ValueError(f"{name} must be in [0, {self.n_layers - 1}] for a {self.n_layers}-layer network, got {k}")
        return k

    def check_output(self, output, batch: Optional[int] = None) -> "int | torch.Tensor":
        """``output`` checked: an int in range, or a ``(batch,)`` integer tensor of per-point output indices.

        A tensor is returned as int64 on the network's device; ``batch``
        (when given) is the number of points it must index.
        """
        if isinstance(output, torch.Tensor):
            if output.dtype.is_floating_point or output.dtype.is_complex or output.dtype == torch.bool or output.dim() != 1:
                raise TypeError(
                    f"output as a tensor must be a 1-D integer tensor of per-point output indices, got dtype {output.dtype}, "
                    f"shape {tuple(output.shape)}"
                )
            if batch is not None and output.shape[0] != batch:
                raise ValueError(f"output holds {output.shape[0]} per-point indices for {batch} points; give one per point")
            if output.numel() and (int(output.min()) < 0 or int(output.max()) >= self.out_features):
                raise ValueError(
                    f"every per-point output must be in [0, {self.out_features - 1}], got values in [{int(output.min())}, {int(output.max())}]"
                )
            return output.detach().to(dtype=torch.int64, device=self.device)
        if isinstance(output, bool) or not isinstance(output, int):
            raise TypeError(f"output must be an int or a (batch,) integer tensor, got {output!r}")
        if not 0 <= output < self.out_features:
            raise ValueError(f"output must be in [0, {self.out_features - 1}], got {output}")
        return output

    def check_input(self, x, *, from_layer: int = 0, name: str = "x") -> torch.Tensor:
        """Validate a batch for layer ``from_layer`` and return it as ``(batch, D_k)``.

        Raises ``TypeError`` for a non-tensor or a dtype other than the
        network's and ``ValueError`` for a wrong shape, an empty batch,
        NaN/inf entries or another device.  Never modifies ``x``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if from_layer == 0 and self.flatten_input and x.dim() > 2:
            x = x.flatten(1)
        width = self.layers[from_layer].in_features
        if x.dim() != 2 or x.shape[1] != width:
            raise ValueError(f"{name} must have shape (batch, {width}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but the network is {self.dtype}; convert one of them")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the network is on {self.device}")
        _check_all_finite(x, name)
        return x.detach()

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``net(x)``: ``(batch, D_0) -> (batch, J_{L-1})``."""
        if self.flatten_input and x.dim() > 2:
            x = x.flatten(1)
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
        """
        zs = self.pre_activations(x)
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
        return [z > 0 if self.has_relu(from_layer + i) else torch.ones_like(z, dtype=torch.bool) for i, z in enumerate(zs)]

    def output_value(self, x: torch.Tensor, output: int, *, from_layer: int = 0) -> torch.Tensor:
        """``f_k(x)``: output neuron ``output`` (an int, or one per row) of the layers ``from_layer ...``, shape ``(batch,)``."""
        z = output_column(self.pre_activations(x, from_layer=from_layer)[-1], output)
        return torch.relu(z) if self.final_relu else z

    def input_gradient(self, x: torch.Tensor, output: int, *, from_layer: int = 0) -> torch.Tensor:
        """Exact gradient ``d f_k / d a_k`` at every row of ``x``: ``(batch, D_k)``.

        Closed form of the piecewise-linear network: masks times weights,
        with torch's convention ``relu'(0) = 0`` (equal to autograd).  ``x``
        is the input of layer ``from_layer``; it is not touched.
        """
        return self.evaluate(x, output, from_layer=from_layer)[2]

    def evaluate(
        self, x: torch.Tensor, output: int, *, from_layer: int = 0
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """One pass for everything the property checks need at the rows of ``x``.

        Returns the pre-activations of layers ``from_layer ...`` (as
        :meth:`pre_activations`), ``f_k(x)`` ``(batch,)`` and the exact
        gradient ``d f_k / d a_k`` ``(batch, D_k)`` (as :meth:`input_gradient`).
        """
        self.check_output(output, x.shape[0])
        zs = self.pre_activations(x, from_layer=from_layer)
        z_out = output_column(zs[-1], output)
        value = torch.relu(z_out) if self.final_relu else z_out
        return zs, value, self.gradient_from_pre_activations(zs, output, from_layer=from_layer)

    def gradient_from_pre_activations(
        self, zs: list[torch.Tensor], output: int, *, from_layer: int = 0, threshold: float = 0.0
    ) -> torch.Tensor:
        """``d f_k / d a_k`` ``(batch, D_k)`` from the pre-activations of layers ``from_layer ...``.

        The gradient of the piecewise-linear network depends only on the
        ReLU states ``z > threshold``: the backward pass is masks times
        weights.  ``threshold = 0`` is torch's ``relu'(0) = 0``; a positive
        threshold treats pre-activations within it of 0 as exactly 0.
        """
        last = self.n_layers - 1
        with torch.no_grad():
            z_out = output_column(zs[-1], output)  # with per-row outputs, weight(last)[output] is (batch, D) too
            if self.final_relu:
                grad = (z_out > threshold).to(z_out.dtype).unsqueeze(1) * self.weight(last)[output]
            else:
                grad = self.weight(last)[output].expand(z_out.shape[0], -1).clone()
            for k in range(last - 1, from_layer - 1, -1):
                grad = (grad * (zs[k - from_layer] > threshold)) @ self.weight(k)
        return grad

    # ------------------------------------------------------------------ inputs
    def sample_inputs(
        self,
        n: int,
        *,
        output: int = 0,
        min_output: float = 0.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
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
        _check_int(n, "n", minimum=1)
        self.check_output(output)
        if isinstance(min_output, bool) or not isinstance(min_output, (int, float)) or not math.isfinite(min_output):
            raise ValueError(f"min_output must be a finite number, got {min_output!r}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator, not both")
        if generator is None:
            generator = torch.Generator(device="cpu")
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(_check_int(seed, "seed", minimum=0))
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
