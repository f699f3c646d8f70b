"""Subject factories the subject benchmarks time with ``dtd-properties check`` (see :mod:`benchmarks.subjects`)."""

from __future__ import annotations

import torch
from torch import nn

from properties import Subject
from properties.subjects import digits

N_DIGITS = 200
N_WIDE = 100


def digits_mlp():
    """The suite's trained digits MLP, 200 held-out points, z+."""
    trained = digits.digits_mlp()
    return Subject("bench_digits_mlp", trained.model, trained.data.test_x[:N_DIGITS], rules=("z+",))


def digits_cnn():
    """The suite's trained digits CNN, 200 held-out points, z+ (needs the lowering of conv/pool layers)."""
    trained = digits.digits_cnn()
    return Subject("bench_digits_cnn", trained.model, trained.data.test_x[:N_DIGITS], rules=("z+",))


def wide_cnn():
    """A 28x28 CNN with 8 and 16 channels (weights from a local generator), 100
    points in [0, 1], 64 neurons per point."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 10),
        ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / max(1, p[0].numel()) ** 0.5)
        model[-1].bias.fill_(0.5)
    x = torch.rand(N_WIDE, 1, 28, 28, generator=generator)
    return Subject("bench_wide_cnn", model, x, rules=("z+",), neurons_per_point=64)


N_RESNET = 4


def resnet18_224():
    """torchvision resnet18 (random weights, randomised batch-norm statistics: :func:`benchmarks.graphs._model`) at
    3x224x224, 4 points in [0, 1], z+, 16 neurons per point and layer; the findings are off (a model this size)."""
    from benchmarks.graphs import _model

    x = torch.rand(N_RESNET, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return Subject("bench_resnet18_224", _model("resnet18"), x, rules=("z+",), neurons_per_point=16, findings=False)
