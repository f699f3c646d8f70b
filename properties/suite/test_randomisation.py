"""Cascading parameter randomisation (Adebayo et al. 2018) on the trained digits subjects:
:mod:`properties.findings.randomisation`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import torch

from properties.findings import randomisation
from properties.measure.keys import RateKey
from properties.subjects import digits
from properties.subjects.subject import Subject

if TYPE_CHECKING:
    from properties.plugin import PropertyReport

pytestmark = pytest.mark.properties

SUBJECT_POINTS = 200
RULES = ("z+", "zB")


@pytest.mark.parametrize("name, train", [("digits_mlp", digits.digits_mlp), ("digits_cnn", digits.digits_cnn)])
def test_cascading_randomisation(property_report: PropertyReport, name: str,
                                 train: Callable[[], digits.TrainedModel]) -> None:
    trained = train()
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    subject = Subject(name, trained.model, trained.data.test_x[:SUBJECT_POINTS], rules=RULES, input_box=(0.0, 1.0))
    top = len(randomisation.parameterised_modules(trained.model))
    found = randomisation.subject_randomisation(subject, seed=property_report.seed,
                                                confidence=property_report.confidence)
    found.record(property_report, summary=lambda key: key.outcome == "rank_similar" and key.randomised == top)
    for entry, value in trained.model.state_dict().items():
        assert torch.equal(value, before[entry]), f"the subject's model changed: {entry}"
    labels = list(RULES) + [randomisation.CONTRAST]
    assert len(found.rates) == len(labels) * top * 2  # rank and SSIM (8x8 images)
    for key, (rate, _) in found.rates.items():
        assert rate.trials > 0, f"{key}: no point judged"
    # the contrast: gradient x input of a fully re-initialised model is another map (it reads every weight)
    contrast = found.rates[RateKey("randomisation", "rank_similar", subject=name, rule=randomisation.CONTRAST,
                                   randomised=top)][0]
    high = contrast.interval[1]
    assert high is not None and high < 0.5, f"gradient x input survives randomising every layer: {contrast}"
