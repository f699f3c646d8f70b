"""Trained networks as subjects: the digits MLP, AvgPool CNN, MaxPool CNN and ResNet
(:mod:`properties.subjects.digits`), judged like a user's model.

Each is trained deterministically (once per process), then its first held-out
digits are explained at their predicted class with z+ and with zB on the
data's box ``[0, 1]`` at the input (z+ above); every layer's roots are asked
the seed notebook's questions (``subject.digits_mlp.*``, ``subject.digits_cnn.*``,
``subject.digits_maxpool.*``, ``subject.digits_resnet.*``).  The MaxPool CNN and
the ResNet go through the graph engine (max pooling, residual sums): their
layers are named by the model's modules (``blocks.0.conv2``), and they are
judged on fewer points and sampled neurons (:data:`GRAPH_SUBJECTS`) to keep
``-m properties`` within its budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

import dtd
from properties.measure.keys import LAYER_NAMES_SEPARATOR, RateKey, layer_names_label
from properties.subjects import digits
from properties.subjects.subject import ROOT_QUESTIONS, Subject, SubjectResult, evaluate

if TYPE_CHECKING:
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

#: held-out points explained per dense network (every rate's clusters)
N_POINTS = 200
RULES = ("z+", "zB")
#: the graph-engine subjects: name -> (trainer, points, neurons drawn per point and layer); fewer than the dense
#: subjects' 200 x 64 (the graph path recomputes f_k operator by operator: ~4 s for the ResNet's 100 x 16 on 2 cores)
GRAPH_SUBJECTS = {"digits_maxpool": (digits.digits_maxpool, 100, 32), "digits_resnet": (digits.digits_resnet, 100, 16)}
#: the held-out accuracy every trained subject must reach
MIN_ACCURACY = 0.9


def _judge(property_report: PropertyReport, name: str, trained: digits.TrainedModel, *, points: int = N_POINTS,
           neurons: int = 64) -> tuple[Subject, SubjectResult]:
    assert trained.test_accuracy >= MIN_ACCURACY, f"{name}: held-out accuracy {trained.test_accuracy:.3f}"
    subject = Subject(name, trained.model, trained.data.test_x[:points], rules=RULES, input_box=(0.0, 1.0),
                      neurons_per_point=neurons)
    result = evaluate(subject, seed=property_report.seed, confidence=property_report.confidence)
    result.record(property_report)
    property_report.count(f"subject {name}: held-out accuracy", trained.test_accuracy)
    return subject, result


def test_digits_mlp(property_report: PropertyReport) -> None:
    _judge(property_report, "digits_mlp", digits.digits_mlp())


def test_digits_cnn(property_report: PropertyReport) -> None:
    _judge(property_report, "digits_cnn", digits.digits_cnn())


@pytest.mark.parametrize("name", list(GRAPH_SUBJECTS))
def test_graph_subjects(property_report: PropertyReport, name: str) -> None:
    train, points, neurons = GRAPH_SUBJECTS[name]
    subject, result = _judge(property_report, name, train(), points=points, neurons=neurons)
    net = subject.network
    assert isinstance(net, dtd.GraphNetwork), f"{name} should need the graph engine, lowered to {type(net).__name__}"
    # every question at every DTD layer, in graph order, and the layers named by the model's modules
    for label in RULES:
        for k in range(net.n_layers):
            for outcome in ROOT_QUESTIONS + ("root_exists",):
                assert RateKey("subject", outcome, subject=name, rule=label, layer=k) in result.rates, (
                    label,
                    k,
                    outcome,
                )
    modules = dict(subject.model.named_modules())
    assert all(layer in modules for layer in net.layer_names()), net.layer_names()
    note = property_report._store.counts[layer_names_label(name)]
    assert note == LAYER_NAMES_SEPARATOR.join(f"{k}: {n}" for k, n in enumerate(net.layer_names()))
    if name == "digits_resnet":
        assert "blocks.0.conv2" in net.layer_names()
    # zB at the input takes every bit of relevance z+ leaves at the digits' zero border: conservation holds there
    zb = result.rates[RateKey("subject", "conserved", subject=name, rule="zB")][0]
    assert zb.successes == zb.trials == len(subject.inputs), f"{name}, zB: {zb}"


#: the segmentation subjects: points and neurons (the U-Net's layers are small; its f_k recomputes up to 7 of them)
SEGMENTATION_POINTS, SEGMENTATION_NEURONS = 100, 16
#: the explained pixel (class 1, ink, near the digit's centre) and the region of the mask (the centre 4x4)
INK_PIXEL, MASK_ROWS, MASK_COLS = (1, 3, 4), slice(2, 6), slice(2, 6)


def test_segmentation_subjects(property_report: PropertyReport) -> None:
    """The digits U-Net (:func:`properties.subjects.digits.digits_unet`: leaky ReLUs, max pooling, a transposed
    convolution, a nearest upsampling, skips by cat, a ReLU6), judged like a user's segmentation model: explained at
    one pixel of the ink class (``subject.digits_unet_pixel.*``, the points whose logit there is positive) and over
    the image's centre (``subject.digits_unet_mask.*``: output weights +1 on the ink logits and -1 on the background
    logits of the centre 4x4, how much more ink than background the model sees there; the top layer is one neuron)."""
    trained = digits.digits_unet()
    assert trained.test_accuracy >= MIN_ACCURACY, f"digits_unet: held-out pixel accuracy {trained.test_accuracy:.3f}"
    mask = torch.zeros(2, 8, 8)
    mask[1, MASK_ROWS, MASK_COLS] = 1.0
    mask[0, MASK_ROWS, MASK_COLS] = -1.0
    for name, outputs in (("digits_unet_pixel", INK_PIXEL), ("digits_unet_mask", mask)):
        subject = Subject(name, trained.model, trained.data.test_x[:SEGMENTATION_POINTS], outputs=outputs, rules=RULES,
                          input_box=(0.0, 1.0), neurons_per_point=SEGMENTATION_NEURONS)
        assert isinstance(subject.network, dtd.GraphNetwork)
        assert subject.network.output_shape == ((2, 8, 8) if name.endswith("pixel") else (1,))
        result = evaluate(subject, seed=property_report.seed, confidence=property_report.confidence)
        result.record(property_report)
        property_report.count(f"subject {name}: held-out pixel accuracy", trained.test_accuracy)
        for label in RULES:
            assert RateKey("subject", "conserved", subject=name, rule=label) in result.rates
