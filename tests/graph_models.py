"""Models of the kinds users explain, built reproducibly for the graph-engine tests (torchvision's and custom ones).

Every builder seeds torch inside ``fork_rng`` (the caller's RNG is untouched)
and randomises batch-norm statistics and affine parameters, so that folding
them is exercised with non-trivial values (negative scales included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Random running statistics and affine parameters (scales of both signs) for every batch norm."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return randomise_batch_norms(model, torch.Generator().manual_seed(seed + 1)).eval()


class Residual(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + x)``, then max pool, a global mean and a
    Linear: functional relu and a bare ``+``."""

    def __init__(self, channels: int = 3, n_out: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4, n_out)

    def forward(self, x):
        h = F.relu(self.stem(x))
        out = torch.relu(self.bn1(self.conv1(h)))
        out = self.bn2(self.conv2(out)) + h
        out = F.relu(out)
        out = self.pool(out)
        return self.fc(out.mean((2, 3)))


class TwoBranches(nn.Module):
    """Two convolutions of the input concatenated (``torch.cat``), a depthwise
    convolution, ``x * 0.5`` and a flatten view."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 1)
        self.depthwise = nn.Conv2d(5, 5, 3, padding=1, groups=5)
        self.grouped = nn.Conv2d(5, 4, 3, stride=2, groups=1, dilation=1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1).relu()
        h = F.relu(self.depthwise(h) * 0.5)
        h = F.max_pool2d(F.relu(self.grouped(h)), 1)
        return self.fc(h.view(h.size(0), -1))


class SkipPastALayer(nn.Module):
    """``relu(conv3(relu(conv2(relu(conv1(h0))))) + h0)`` with ``h0 = relu(conv0(x))``, then a 2x2 max pool (``pool``)
    and a Linear: for conv2's layer, ``h0`` is an activation ``f_k`` keeps (it skips past the layer).

    ``side`` is the input's height and width.
    """

    def __init__(self, channels: int = 3, side: int = 4, pool: bool = True):
        super().__init__()
        self.pool = pool
        self.conv0 = nn.Conv2d(2, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels * (side // 2 if pool else side) ** 2, 3)

    def forward(self, x):
        h0 = F.relu(self.conv0(x))
        h = F.relu(self.conv2(F.relu(self.conv1(h0))))
        h = F.relu(self.conv3(h) + h0)
        return self.fc((F.max_pool2d(h, 2) if self.pool else h).flatten(1))


def sequential_cnn() -> nn.Sequential:
    """BN before and after convolutions, max and adaptive average pooling, dropout, a Linear head."""
    return nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=1, padding=1),
        nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Dropout(0.3), nn.Linear(32, 10), nn.BatchNorm1d(10), nn.ReLU(),
        nn.Linear(10, 5),
    )


def conv1d_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 4, 3), nn.ReLU(),
                         nn.AvgPool1d(2), nn.Flatten(), nn.Linear(4 * 2, 3))


def vgg_features_net() -> nn.Sequential:
    """torchvision VGG11's convolution and max-pool stack, global average pooling
    and a Linear head (for 32x32 inputs)."""
    return nn.Sequential(torchvision.models.vgg11().features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(),
                         nn.Linear(512, 10))


def leaky_pools() -> nn.Sequential:
    """Max poolings of monotone piecewise-linear activations: the units are pooled (min pooling for relu(-z))."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4), nn.ReLU6(), nn.AdaptiveMaxPool2d((2, 1)), nn.Flatten(), nn.Linear(8, 3),
    )


#: name -> (builder, input shape)
MODELS = {
    "vgg11": (lambda: torchvision.models.vgg11(num_classes=10), (3, 32, 32)),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), (3, 32, 32)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "resnet50": (lambda: torchvision.models.resnet50(num_classes=10), (3, 32, 32)),
    "residual": (lambda: Residual(), (3, 8, 8)),
    "two_branches": (lambda: TwoBranches(), (2, 6, 6)),
    "sequential_cnn": (sequential_cnn, (3, 8, 8)),
    "conv1d": (conv1d_net, (2, 12)),
    "leaky_pools": (leaky_pools, (2, 8, 8)),
}
