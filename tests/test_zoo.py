"""Models from the zoos users download from, lowered exactly: timm classifiers of several families, a Hugging Face
vision model, torchvision segmentation, segmentation_models_pytorch's Unet, a hand-written U-Net, MobileNetV2, a
LeakyReLU CNN -- and the models that are not piecewise linear refused by the operation's name.

Random weights (no downloads), batch-norm statistics randomised from a local generator, small inputs (32x32 to
64x64), float64.  Each model: the lowered forward equals the model's own, and z+ conserves relevance at every layer
wherever its roots exist (each layer hands down exactly its valid neurons' relevance).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dtd

timm = pytest.importorskip("timm")
smp = pytest.importorskip("segmentation_models_pytorch")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

#: the lowered network's forward against the model's, relative to the largest output (float64)
FORWARD_RTOL = 1e-10
#: a layer's handed-down relevance against the relevance of its valid neurons (float64 sums in another order)
CONSERVATION_RTOL = 1e-9


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` in float64 and eval mode with batch-norm statistics and affine
    parameters drawn from a local generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.double().eval()


def _built(make, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the libraries' initialisers draw from the global RNG: forked, then restored
        model = make()
    return _randomised(model, seed)


class UNet(nn.Module):
    """A two-level U-Net: a transposed convolution up one level, a nearest upsampling up the other, skips by cat."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(32, 8, 3, padding=1), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up2(self.bottom(e2)), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2, mode="nearest"), e1], 1))
        return self.head(d1)


class LeakyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _hf_resnet():
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    return transformers.ResNetForImageClassification(config)


ZOO = [  # (id, factory, input shape, select, explained output)
    ("timm resnet10t", lambda: timm.create_model("resnet10t", num_classes=5), (3, 32, 32), None, 1),
    ("timm dla34", lambda: timm.create_model("dla34", num_classes=5), (3, 32, 32), None, 0),
    ("timm regnetx_002", lambda: timm.create_model("regnetx_002", num_classes=5), (3, 32, 32), None, 2),
    ("timm vgg11", lambda: timm.create_model("vgg11", num_classes=5), (3, 32, 32), None, 3),
    ("timm mobilenetv2_050", lambda: timm.create_model("mobilenetv2_050", num_classes=5), (3, 32, 32), None, 4),
    ("timm repvgg_a0", lambda: timm.create_model("repvgg_a0", num_classes=5), (3, 32, 32), None, 0),
    ("timm cspresnet50 (leaky ReLU, splits)", lambda: timm.create_model("cspresnet50", num_classes=5), (3, 32, 32),
     None, 1),
    ("timm hrnet_w18_small (upsampling fuse)", lambda: timm.create_model("hrnet_w18_small", num_classes=5), (3, 64, 64),
     None, 2),
    ("Hugging Face ResNetForImageClassification", _hf_resnet, (3, 32, 32), "logits", 3),
    ("torchvision mobilenet_v2 (ReLU6)", lambda: torchvision.models.mobilenet_v2(num_classes=5), (3, 32, 32), None, 0),
    ("torchvision fcn_resnet50",
     lambda: torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                                                    num_classes=3, aux_loss=False),
     (3, 32, 32), "out", (1, 16, 16)),
    ("smp Unet resnet18", lambda: smp.Unet("resnet18", encoder_weights=None, classes=2), (3, 64, 64), None,
     (1, 30, 33)),
    ("hand-written U-Net", UNet, (3, 32, 32), None, (2, 5, 9)),
    ("LeakyReLU CNN", LeakyCNN, (3, 32, 32), None, 2),
]  # fmt: skip


@pytest.mark.parametrize("make, shape, select, output", [pytest.param(*c[1:], id=c[0]) for c in ZOO])
def test_zoo_models_lower_exactly_and_zplus_conserves_per_layer(make, shape, select, output):
    model = _built(make)
    net = dtd.ReLUNetwork.from_module(model, shape, select=select)
    x = torch.rand((2,) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        expected = (out[select] if select is not None else out).flatten(1)
    got = net(x)
    assert float((got - expected).abs().max()) <= FORWARD_RTOL * float(expected.abs().max())
    dec = dtd.train_free(net, x, rule="z+", output=output)
    for layer in dec.layers:
        passed = torch.where(layer.root_valid, layer.upper_relevance, torch.zeros_like(layer.upper_relevance)).sum(1)
        assert bool(
            ((layer.relevance.sum(1) - passed).abs() <= CONSERVATION_RTOL * passed.abs().clamp_min(1e-12)).all()
        )
    index = net.check_output(output)
    torch.testing.assert_close(dec.output_value, expected[:, index], rtol=1e-12, atol=0)


def test_a_segmentation_model_is_explained_over_a_mask():
    model = _built(lambda: smp.Unet("resnet18", encoder_weights=None, classes=2))
    net = dtd.ReLUNetwork.from_module(model, (3, 32, 32))
    mask = torch.zeros(net.output_shape, dtype=torch.float64)
    mask[1, 8:20, 10:24] = 1.0
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dec = dtd.train_free(net, x, rule="z+", output=mask)
    with torch.no_grad():
        torch.testing.assert_close(dec.output_value, (model(x) * mask).sum((1, 2, 3)), rtol=1e-12, atol=0)
    for layer in dec.layers:
        passed = torch.where(layer.root_valid, layer.upper_relevance, torch.zeros_like(layer.upper_relevance)).sum(1)
        assert bool(
            ((layer.relevance.sum(1) - passed).abs() <= CONSERVATION_RTOL * passed.abs().clamp_min(1e-12)).all()
        )


REFUSED = [  # models that are not piecewise linear: refused by the operation the graph holds, and its module
    ("timm efficientnet_b0", lambda: timm.create_model("efficientnet_b0"),
     r"'silu' in module 'bn1\.act' \(SiLU\).*smooth"),
    ("timm mobilenetv3_small_050", lambda: timm.create_model("mobilenetv3_small_050"),
     r"'hardswish' in module 'bn1\.act' \(Hardswish\).*piecewise quadratic"),
    ("timm convnext_atto", lambda: timm.create_model("convnext_atto"),
     r"'layer_norm' in module 'stem\.1' \(LayerNorm2d\)"),
]  # fmt: skip


@pytest.mark.parametrize("make, message", [pytest.param(*c[1:], id=c[0]) for c in REFUSED])
def test_models_that_are_not_piecewise_linear_are_refused_by_name(make, message):
    with pytest.raises(TypeError, match=message):
        dtd.ReLUNetwork.from_module(_built(make), (3, 32, 32))
