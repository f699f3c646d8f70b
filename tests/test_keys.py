"""RateKey: the typed identity of a rate, whose str() is the dotted name of report.json and baseline.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from properties.measure.keys import FAMILIES, OUTCOMES, RateKey, describe

BASELINE = Path(__file__).resolve().parents[1] / "properties" / "baseline.json"


def test_every_baseline_name_round_trips():
    names = list(json.loads(BASELINE.read_text())["properties"])
    assert len(names) > 400
    for name in names:
        key = RateKey.parse(name)
        assert str(key) == name
        assert RateKey.parse(str(key)) == key


@pytest.mark.parametrize(
    "name, fields",
    [
        ("notebook.gradient_match.points", dict(family="notebook", outcome="gradient_match", unit="points")),
        ("notebook.layer2.region_roots.gradient_match.midpoint",
         dict(family="notebook", layer=2, finder="region_roots", outcome="gradient_match", subset="midpoint")),
        ("notebook.neuron7.zero_output", dict(family="notebook", neuron=7, outcome="zero_output")),
        ("gamma0_1.layer4.in_domain", dict(family="generated", rule="gamma0_1", layer=4, outcome="in_domain")),
        ("z+.gradient_match.points.relevant", dict(family="generated", rule="z+", outcome="gradient_match",
                                                   unit="points", subset="relevant")),
        ("region.sampled.w2.root_exists", dict(family="region", finder="sampled", rule="w2", outcome="root_exists")),
        ("region.output_root.layer1", dict(family="region", outcome="output_root", layer=1)),
        ("notebook.full_backward.sampled.layer3.resolved",
         dict(family="full_backward", subject="seed", finder="sampled", layer=3, outcome="resolved")),
        ("full_backward.z+.conserved", dict(family="full_backward", finder="z+", outcome="conserved")),
        ("agreement.zennit.w2_first.conditioned", dict(family="agreement", subject="zennit", rule="w2_first",
                                                       outcome="conditioned")),
        ("subject.digits_cnn.z+.layer1.zero_output",
         dict(family="subject", subject="digits_cnn", rule="z+", layer=1, outcome="zero_output")),
        ("conformance.my_lrp.equals_dtd.bias_free",
         dict(family="conformance", subject="my_lrp", outcome="equals_dtd", subset="bias_free")),
        ("insensitivity.z+.depth8.outputs.insensitive",
         dict(family="insensitivity", rule="z+", depth=8, pair="outputs", outcome="insensitive")),
        ("insensitivity.digits_mlp.x.random.insensitive",
         dict(family="insensitivity", subject="digits_mlp", rule="x", pair="random", outcome="insensitive")),
        ("insensitivity.vgg16_simulation.depth16.columns.insensitive.gaussian",
         dict(family="insensitivity", subject="vgg16_simulation", depth=16, pair="columns", outcome="insensitive",
              subset="gaussian")),
        ("invariance.zB_unshifted.unchanged", dict(family="invariance", rule="zB_unshifted", outcome="unchanged")),
        ("invariance.digits_cnn.w2_first.unchanged",
         dict(family="invariance", subject="digits_cnn", rule="w2_first", outcome="unchanged")),
        ("randomisation.digits_cnn.grad_x_input.top3.ssim_similar",
         dict(family="randomisation", subject="digits_cnn", rule="grad_x_input", randomised=3, outcome="ssim_similar")),
    ],
)
def test_parse_gives_the_fields(name, fields):
    key = RateKey.parse(name)
    assert key == RateKey(**fields)
    assert str(key) == name


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(family="nightly", outcome="zero_output"), "unknown rate family"),
        (dict(family="generated", outcome="sparkles", rule="z+"), "unknown outcome"),
        (dict(family="subject", outcome="conserved", subject="my.model", rule="z+"), "no dots"),
        (dict(family="generated", outcome="zero_output", rule="gamma0.1"), "no dots"),
        (dict(family="generated", outcome="zero_output", rule="z+", layer=-1), "layer must be"),
        (dict(family="notebook", outcome="zero_output", layer=1, neuron=2), "not both"),
        (dict(family="generated", outcome="zero_output"), "no name layout"),
        (dict(family="agreement", outcome="points", subject="zennit", rule="z+", layer=0), "no name layout"),
        (dict(family="insensitivity", outcome="insensitive", rule="depth3", pair="outputs"), "looks like a depth"),
        (dict(family="randomisation", outcome="rank_similar", subject="top2", rule="z+", randomised=1),
         "looks like a depth"),
        (dict(family="insensitivity", outcome="insensitive", rule="z+", depth=0, pair="outputs"), "depth must be"),
        (dict(family="randomisation", outcome="rank_similar", subject="m", rule="z+", randomised=True),
         "randomised must be"),
        (dict(family="insensitivity", outcome="insensitive", rule="z+", pair="classes"), "unknown pair"),
        (dict(family="insensitivity", outcome="insensitive", rule="z+"), "no name layout"),
        (dict(family="generated", outcome="zero_output", rule="z+", depth=2), "no name layout"),
    ],
)
def test_bad_keys_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        RateKey(**fields)


@pytest.mark.parametrize("name", ["", "z+", "notebook.layerX.zero_output", "region.z+.gradient_match.sideways",
                                  "agreement.zennit.z+",
                                  "insensitivity.z+.depth0.outputs.insensitive", "randomisation.m.z+.top.rank_similar",
                                  "insensitivity.z+.depth3.depth4.outputs.insensitive"])
def test_names_no_family_fits_are_refused(name):
    with pytest.raises(ValueError, match="no rate name"):
        RateKey.parse(name)


def test_descriptions_are_composed_from_the_key():
    key = RateKey("generated", "gradient_match", rule="w2", layer=3)
    text = describe(key)
    assert "rule w2" in text and "layer 3" in text and OUTCOMES["gradient_match"] in text
    assert describe(key.replace(outcome="zero_output")).endswith(OUTCOMES["zero_output"])
    assert all(family in FAMILIES for family in ("notebook", "subject", "conformance"))
