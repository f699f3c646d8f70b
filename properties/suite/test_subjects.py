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

import pytest

import dtd
from properties.subjects import digits
from properties.measure.keys import LAYER_NAMES_SEPARATOR, RateKey, layer_names_label
from properties.subjects.subject import ROOT_QUESTIONS, Subject, evaluate

pytestmark = pytest.mark.properties

#: held-out points explained per dense network (every rate's clusters)
N_POINTS = 200
RULES = ("z+", "zB")
#: the graph-engine subjects: name -> (trainer, points, neurons drawn per point and layer); fewer than the dense
#: subjects' 200 x 64 (the graph path recomputes f_k operator by operator: ~4 s for the ResNet's 100 x 16 on 2 cores)
GRAPH_SUBJECTS = {"digits_maxpool": (digits.digits_maxpool, 100, 32), "digits_resnet": (digits.digits_resnet, 100, 16)}
#: the held-out accuracy every trained subject must reach
MIN_ACCURACY = 0.9


def _judge(property_report, name, trained, *, points=N_POINTS, neurons=64):
    assert trained.test_accuracy >= MIN_ACCURACY, f"{name}: held-out accuracy {trained.test_accuracy:.3f}"
    subject = Subject(name, trained.model, trained.data.test_x[:points], rules=RULES, input_box=(0.0, 1.0),
                      neurons_per_point=neurons)
    result = evaluate(subject, seed=property_report.seed, confidence=property_report.confidence)
    result.record(property_report)
    property_report.count(f"subject {name}: held-out accuracy", trained.test_accuracy)
    return subject, result


def test_digits_mlp(property_report):
    _judge(property_report, "digits_mlp", digits.digits_mlp())


def test_digits_cnn(property_report):
    _judge(property_report, "digits_cnn", digits.digits_cnn())


@pytest.mark.parametrize("name", list(GRAPH_SUBJECTS))
def test_graph_subjects(property_report, name):
    train, points, neurons = GRAPH_SUBJECTS[name]
    subject, result = _judge(property_report, name, train(), points=points, neurons=neurons)
    net = subject.network
    assert isinstance(net, dtd.GraphNetwork), f"{name} should need the graph engine, lowered to {type(net).__name__}"
    # every question at every DTD layer, in graph order, and the layers named by the model's modules
    for label in RULES:
        for k in range(net.n_layers):
            for outcome in ROOT_QUESTIONS + ("root_exists",):
                assert RateKey("subject", outcome, subject=name, rule=label, layer=k) in result.rates, (label, k, outcome)
    modules = dict(subject.model.named_modules())
    assert all(layer in modules for layer in net.layer_names()), net.layer_names()
    note = property_report._store.counts[layer_names_label(name)]
    assert note == LAYER_NAMES_SEPARATOR.join(f"{k}: {n}" for k, n in enumerate(net.layer_names()))
    if name == "digits_resnet":
        assert "blocks.0.conv2" in net.layer_names()
    # zB at the input takes every bit of relevance z+ leaves at the digits' zero border: conservation holds there
    zb = result.rates[RateKey("subject", "conserved", subject=name, rule="zB")][0]
    assert zb.successes == zb.trials == len(subject.inputs), f"{name}, zB: {zb}"
