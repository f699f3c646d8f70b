"""Trained networks as subjects: the digits MLP and CNN (:mod:`properties.digits`), judged like a user's model.

Each is trained deterministically, then its first :data:`N_POINTS` held-out
digits are explained at their predicted class with z+ and with zB on the
data's box ``[0, 1]`` at the input (z+ above); every layer's roots are asked
the seed notebook's questions (``subject.digits_mlp.*``, ``subject.digits_cnn.*``).
"""

from __future__ import annotations


import pytest

from properties import digits
from properties.subject import Subject, evaluate

pytestmark = pytest.mark.properties

#: held-out points explained per network
N_POINTS = 200
RULES = ("z+", "zB")


def _judge(property_report, name, trained):
    assert trained.test_accuracy >= 0.9, f"{name}: held-out accuracy {trained.test_accuracy:.3f}"
    subject = Subject(name, trained.model, trained.data.test_x[:N_POINTS], rules=RULES, input_box=(0.0, 1.0))
    result = evaluate(subject, seed=property_report.seed, confidence=property_report.confidence)
    result.record(property_report)
    property_report.count(f"subject {name}: held-out accuracy", trained.test_accuracy)


def test_digits_mlp(property_report):
    _judge(property_report, "digits_mlp", digits.digits_mlp())


def test_digits_cnn(property_report):
    _judge(property_report, "digits_cnn", digits.digits_cnn())
