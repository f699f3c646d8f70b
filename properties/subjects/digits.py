"""Trained networks for the suite: an MLP, CNNs and a small ResNet on scikit-learn's 8x8 digits.

The property suite's other networks are random; DTD's users have trained
ones.  These are trained here (:func:`digits_mlp`, :func:`digits_cnn` with
average pooling, :func:`digits_maxpool` with max pooling, :func:`digits_resnet`
with batch norm and residual blocks), deterministically and in a few seconds on
a CPU, on the 1797 images of :func:`sklearn.datasets.load_digits` (bundled
with scikit-learn, no download):

* inputs are the 8x8 grey levels divided by 16, so every pixel lies in
  ``[0, 1]`` (non-negative: z+ applies at the input, and ``zB(0, 1)`` is the
  data's box);
* a fixed split: a permutation drawn from a local generator seeded with
  :data:`SPLIT_SEED`, the first :data:`N_TEST` images held out;
* parameters initialised from a local ``torch.Generator`` (the modules are
  built inside ``torch.random.fork_rng`` so their default init does not
  touch the caller's RNG, then overwritten), Adam (full batch, or mini-batches in an order drawn from the same
  generator) for a fixed number of steps on one thread (restored afterwards): two trainings give bit-identical
  weights, whatever the machine's core count.

Nothing here reads or changes torch's global RNG.  :func:`digits_maxpool` and
:func:`digits_resnet` train once per process and seed (cached) and hand every
caller its own copy.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from dtd.threads import one_thread
from dtd.validation import check_seed

__all__ = ["DigitsData", "load_digits", "digits_mlp", "digits_cnn", "digits_maxpool", "digits_resnet", "digits_unet",
           "DigitsUNet", "ink", "TrainedModel", "accuracy", "SPLIT_SEED", "N_TEST", "INK"]

#: seed of the fixed train/test permutation
SPLIT_SEED = 0
#: images held out for testing (the rest train)
N_TEST = 497
#: the images' shape, channels first
IMAGE_SHAPE = (1, 8, 8)
#: a pixel is ink (class 1 of :func:`digits_unet`'s segmentation) above this grey level
INK = 0.3


@dataclasses.dataclass(frozen=True)
class DigitsData:
    """The split digits, float32.

    Attributes
    ----------
    train_x, test_x
        ``(n, 1, 8, 8)`` images in ``[0, 1]``.
    train_y, test_y
        ``(n,)`` int64 labels 0-9.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits() -> DigitsData:
    """scikit-learn's bundled 8x8 digits, scaled to ``[0, 1]`` and split by :data:`SPLIT_SEED`."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.tensor(bunch.data, dtype=torch.float32).reshape(-1, *IMAGE_SHAPE) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    test, train = order[:N_TEST], order[N_TEST:]
    return DigitsData(x[train], y[train], x[test], y[test])


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained classifier (in eval mode) and its held-out accuracy."""

    model: nn.Module
    test_accuracy: float
    data: DigitsData


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` (of its pixels, for a segmentation) whose argmax logit is ``y``."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def ink(x: torch.Tensor) -> torch.Tensor:
    """The segmentation target of ``x`` ``(n, 1, 8, 8)``: ``(n, 8, 8)`` class 1 where
    the pixel is ink (``> INK``), else 0."""
    return (x[:, 0] > INK).to(torch.int64)


def _initialise(model: nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights and zero biases for every Linear/Conv2d/ConvTranspose2d, drawn from ``generator``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = module.weight[0].numel()
                bound = math.sqrt(6.0 / fan_in)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 * bound - bound)
                if module.bias is not None:
                    module.bias.zero_()


def _train(build: Callable[[], nn.Module], seed: int, *, steps: int, learning_rate: float,
           batch_size: int | None = None,
           target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> TrainedModel:
    """Adam on the training digits: ``steps`` full-batch steps, or with ``batch_size`` ``steps`` epochs of mini-batches
    (each epoch a permutation drawn from the same local generator as the initial weights).  ``target(x, y)``: what the
    model learns to output for images ``x`` of labels ``y`` (default: the labels)."""
    seed = check_seed(seed)
    data = load_digits()
    with torch.random.fork_rng(devices=[]):  # the modules' default init draws from the global RNG: keep it
        model = build()
    generator = torch.Generator().manual_seed(seed)
    _initialise(model, generator)
    train_x, test_x = data.train_x, data.test_x
    train_y = data.train_y if target is None else target(train_x, data.train_y)
    test_y = data.test_y if target is None else target(test_x, data.test_y)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    # one thread: the summation order (so every bit of the weights) does not depend on the machine's core
    # count, and these small matrices train fastest unthreaded on a busy machine; the caller's setting returns
    with one_thread():
        model.train()
        for _ in range(steps):
            batches: list[slice] | list[torch.Tensor]
            if batch_size is None:  # full batch: no shuffling, nothing random
                batches = [slice(None)]
            else:
                order = torch.randperm(train_x.shape[0], generator=generator)
                batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
            for batch in batches:
                optimiser.zero_grad()
                loss_fn(model(train_x[batch]), train_y[batch]).backward()
                optimiser.step()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return TrainedModel(model, accuracy(model, test_x, test_y), data)


class _Training(Protocol):
    def __call__(self, seed: int = 0) -> TrainedModel: ...


def _cached(train: Callable[[int], TrainedModel]) -> _Training:
    """Train once per seed and process (the suite's families share the digits models); every call gets its own deep
    copy of the model, so no caller can change what another one judges."""
    trained = functools.lru_cache(maxsize=None)(train)

    @functools.wraps(train)
    def fresh(seed: int = 0) -> TrainedModel:
        result = trained(check_seed(seed))
        return dataclasses.replace(result, model=copy.deepcopy(result.model))

    return fresh


@_cached
def digits_mlp(seed: int = 0) -> TrainedModel:
    """``Flatten, Linear(64, 32), ReLU, Linear(32, 16), ReLU, Linear(16, 10)``.

    Input ``(n, 1, 8, 8)`` like the CNN's (so reports show its relevance as
    images).  Full-batch Adam, 300 steps.  Trained once per seed and process.
    """
    build = lambda: nn.Sequential(  # noqa: E731
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    return _train(build, seed, steps=300, learning_rate=0.01)


@_cached
def digits_cnn(seed: int = 0) -> TrainedModel:
    """``Conv2d(1, 6, 3, padding=1), ReLU, AvgPool2d(2), Conv2d(6, 8, 3), ReLU, Flatten, Linear(32, 10)``.

    Input ``(n, 1, 8, 8)``: 6x8x8 after the first conv, 6x4x4 after pooling,
    8x2x2 after the second conv.  Full-batch Adam, 200 steps.  Trained once per seed and process.
    """
    build = lambda: nn.Sequential(  # noqa: E731
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(32, 10)
    )
    return _train(build, seed, steps=200, learning_rate=0.02)


def _maxpool_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 10),
    )


def _resnet() -> nn.Module:
    from ..generate.architectures import ResidualNet

    return ResidualNet(1, 4, [(4, 1), (8, 2)], 10)


class DigitsUNet(nn.Module):
    """A small U-Net segmenting a digit's ink: two levels down (max pooling), up by a transposed convolution and by a
    nearest upsampling, skips by ``torch.cat``; leaky ReLUs and a ReLU6; two classes per pixel (``(n, 2, 8, 8)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.LeakyReLU(0.1))
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.LeakyReLU(0.1))
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 8, 1), nn.ReLU())
        self.up_bottom = nn.Conv2d(16, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(12, 6, 3, padding=1), nn.ReLU6())
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        d = self.down(e)
        b = nn.functional.interpolate(self.bottom(d), scale_factor=2, mode="nearest")
        u = torch.relu(self.up_bottom(torch.cat([b, d], 1)))
        return self.head(self.dec(torch.cat([torch.relu(self.up(u)), e], 1)))


#: name -> (builder, epochs, learning rate, batch size, target) of the cached trainings: mini-batches reach the
#: accuracy of 100 full-batch steps in a fifth of the arithmetic (the suite trains these in every run)
_CACHED = {"maxpool": (_maxpool_cnn, 8, 0.01, 64, None), "resnet": (_resnet, 10, 0.03, 64, None),
           "unet": (DigitsUNet, 6, 0.01, 64, lambda x, y: ink(x))}


@functools.cache
def _trained(name: str, seed: int) -> TrainedModel:
    build, epochs, learning_rate, batch_size, target = _CACHED[name]
    return _train(build, seed, steps=epochs, learning_rate=learning_rate, batch_size=batch_size, target=target)


def _copy(trained: TrainedModel) -> TrainedModel:
    return dataclasses.replace(trained, model=copy.deepcopy(trained.model))


def digits_maxpool(seed: int = 0) -> TrainedModel:
    """``Conv2d(1, 6, 3, padding=1), ReLU, MaxPool2d(2), Conv2d(6, 8, 3, padding=1), ReLU, MaxPool2d(2), Flatten,
    Linear(32, 10)``.

    Input ``(n, 1, 8, 8)``: 6x8x8, pooled to 6x4x4, 8x4x4, pooled to 8x2x2.
    Adam, 8 epochs of mini-batches of 64; trained once per process and seed, every call
    returns its own copy of the model.
    """
    return _copy(_trained("maxpool", check_seed(seed)))


def digits_resnet(seed: int = 0) -> TrainedModel:
    """A :class:`properties.generate.architectures.ResidualNet`: stem ``Conv2d(1, 4, 3), BatchNorm2d, ReLU``, a block
    4 -> 4 (identity shortcut), a block 4 -> 8 with stride 2 (1x1-conv + batch-norm shortcut), global average
    pooling, ``Linear(8, 10)``; each block ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with a bare ``+``.

    Input ``(n, 1, 8, 8)``.  Batch norm trains on mini-batch statistics (its
    running statistics follow them, momentum 0.1); the model is returned in
    eval mode.  Adam, 10 epochs of mini-batches of 64; trained once per process and seed,
    every call returns its own copy.
    """
    return _copy(_trained("resnet", check_seed(seed)))


def digits_unet(seed: int = 0) -> TrainedModel:
    """A :class:`DigitsUNet` trained to segment each digit's ink (:func:`ink`: grey level above :data:`INK`).

    Input ``(n, 1, 8, 8)``, output ``(n, 2, 8, 8)`` (class 1: ink); ``test_accuracy`` is the held-out pixel accuracy.
    Adam, 6 epochs of mini-batches of 64, per-pixel cross entropy; trained once per process and seed, every call
    returns its own copy.
    """
    return _copy(_trained("unet", check_seed(seed)))
