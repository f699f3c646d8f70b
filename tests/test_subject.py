"""properties.Subject: argument checks up front, nothing mutated, and evaluate against a per-point reference."""

from __future__ import annotations

import copy
from itertools import pairwise

import pytest
import torch
from torch import nn

import dtd
from properties.measure.checks import root_outcomes
from properties.measure.keys import RateKey
from properties.measure.thresholds import CONSERVED_SHARE
from properties.subjects.subject import ROOT_QUESTIONS, Subject, evaluate


def _mlp(seed=0, sizes=(6, 12, 8, 3), dtype=torch.float32, last_bias=0.0):
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        layers = []
        for n_in, n_out in pairwise(sizes):
            layers += [nn.Linear(n_in, n_out, dtype=dtype), nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=dtype) * 0.5)
        model[-1].bias.add_(last_bias)
    return model.eval()


def _inputs(n=30, d=6, seed=1, dtype=torch.float32):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(name="my.model"), ValueError, "no dots"),
        (dict(name=""), ValueError, "name"),
        (dict(name=3), TypeError, "name must be a str"),
        (dict(model="net"), TypeError, "model must be a torch.nn.Module"),
        (dict(inputs=[[0.0] * 6]), TypeError, "inputs must be a torch.Tensor"),
        (dict(inputs=torch.zeros(0, 6)), ValueError, "no point"),
        (dict(inputs=torch.ones(4, 6, dtype=torch.int64)), TypeError, "floating"),
        (dict(inputs=torch.ones(6)), ValueError, "batch dimension"),
        (dict(inputs=torch.full((2, 6), float("nan"))), ValueError, "NaN"),
        (dict(inputs=torch.ones(2, 6, dtype=torch.float64)), TypeError, "float64"),
        (dict(outputs="argmax"), ValueError, "'predicted'"),
        (dict(outputs=7), ValueError, r"\[0, 2\]"),
        (dict(outputs=True), TypeError, "outputs"),
        (dict(outputs=[0, 1]), ValueError, "2 indices for 30 points"),
        (dict(outputs=torch.zeros(30)), ValueError, "output weights must have the per-point output's shape"),
        (dict(outputs=torch.zeros(30, dtype=torch.bool)), TypeError, "integer tensor"),
        (dict(rules=("nope",)), ValueError, "unknown rule"),
        (dict(rules=(3,)), TypeError, "every rule"),
        (dict(rules=()), ValueError, "non-empty"),
        (dict(rules=("z+", "z+")), ValueError, "twice"),
        (dict(neurons_per_point=0), ValueError, "neurons_per_point"),
        (dict(max_points=1.5), TypeError, "max_points"),
        (dict(input_box=(0.0, 0.5)), ValueError, "outside input_box"),
        (dict(input_box=3), TypeError, "input_box"),
        (dict(points_per_item=0), ValueError, "points_per_item"),
        (dict(points_per_item="many"), ValueError, "points_per_item"),
        (dict(points_per_item=2.5), TypeError, "points_per_item"),
    ],
)
def test_subject_rejects_bad_arguments(kwargs, error, match):
    arguments = dict(name="tiny", model=_mlp(), inputs=_inputs())
    arguments.update(kwargs)
    name, model, inputs = arguments.pop("name"), arguments.pop("model"), arguments.pop("inputs")
    with pytest.raises(error, match=match):
        Subject(name, model, inputs, **arguments)


def test_subject_without_a_positive_explained_output_is_an_error():
    model = _mlp()
    with torch.no_grad():
        model[-1].bias.fill_(-100.0)
    with pytest.raises(ValueError, match="no point has a positive explained output"):
        Subject("tiny", model, _inputs())


def test_negative_inputs_under_zplus_name_the_fix():
    with pytest.raises(ValueError, match="zB"):
        Subject("tiny", _mlp(), _inputs() - 0.5)


def test_points_with_a_non_positive_explained_output_are_left_out():
    model, x = _mlp(), _inputs()
    logits = model(x).detach()
    subject = Subject("tiny", model, x, outputs=1)
    assert torch.equal(subject.inputs, x[logits[:, 1] > 0])
    assert subject.n_dropped == int((logits[:, 1] <= 0).sum())
    predicted = Subject("tiny", model, x)
    assert torch.equal(predicted.outputs, logits.argmax(1)[logits.amax(1) > 0])
    capped = Subject("tiny", model, x, max_points=5)
    assert torch.equal(capped.inputs, predicted.inputs[:5])


def test_evaluate_changes_nothing_the_user_passed():
    model, x = _mlp(), _inputs()
    model.train()  # a Linear/ReLU model may be in train mode: nothing depends on it
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    x_before = x.clone()
    evaluate(Subject("tiny", model, x, rules=("z+", "w2"), neurons_per_point=3), seed=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    assert torch.equal(x, x_before) and not x.requires_grad
    assert not model._forward_hooks and not model._forward_pre_hooks and not model._backward_hooks


def test_evaluate_equals_a_point_by_point_reference():
    """Every point explained alone, with its own output, every neuron: the rates'
    counts (grouping by output is exact)."""
    model, x = _mlp(dtype=torch.float64), _inputs(dtype=torch.float64)
    subject = Subject("tiny", model, x, outputs="predicted", rules=("z+",), neurons_per_point=None)
    result = evaluate(subject)
    net = dtd.ReLUNetwork.from_sequential(model)
    expected = {}
    conserved = 0
    for i in range(len(subject.inputs)):
        output = int(subject.outputs[i])
        dec = dtd.train_free(net, subject.inputs[i : i + 1], rule="z+", output=output)
        f = float(dec.output_value[0])
        conserved += abs(float(dec.relevance.sum()) - f) <= CONSERVED_SHARE * f
        for k in range(net.n_layers):
            out = root_outcomes(net, dec, layer=k)
            counted = out.valid & out.carries_relevance
            for outcome in ROOT_QUESTIONS:
                s, t = expected.get((k, outcome), (0, 0))
                expected[(k, outcome)] = (s + int((getattr(out, outcome) & counted).sum()), t + int(counted.sum()))
            s, t = expected.get((k, "root_exists"), (0, 0))
            expected[(k, "root_exists")] = (s + int(counted.sum()), t + int(out.carries_relevance.sum()))
    for (k, outcome), (s, t) in expected.items():
        rate, description = result.rates[RateKey("subject", outcome, subject="tiny", rule="z+", layer=k)]
        assert (rate.successes, rate.trials) == (s, t), (k, outcome)
        assert rate.n_clusters <= len(subject.inputs)  # clustered by point
        assert "relevance-carrying" in description
    rate, _ = result.rates[RateKey("subject", "conserved", subject="tiny", rule="z+")]
    assert (rate.successes, rate.trials) == (conserved, len(subject.inputs))


def test_evaluate_is_reproducible_and_samples_neurons():
    subject = Subject("tiny", _mlp(sizes=(6, 40, 30, 3), last_bias=1.0), _inputs(60), neurons_per_point=5)
    first, second = evaluate(subject, seed=3), evaluate(subject, seed=3)
    key = RateKey("subject", "gradient_match", subject="tiny", rule="z+", layer=0)
    assert first.rates[key][0] == second.rates[key][0]
    assert first.rates[key][0].trials <= 5 * len(subject.inputs)
    region = first.rates[RateKey("subject", "region_root_exists", subject="tiny", rule="z+", layer=0)][0]
    assert 0 < region.trials <= 12 * 6


def test_rule_specifications():
    subject = Subject("tiny", _mlp(), _inputs(), rules=("z+", "zB", "gamma1", dtd.rules.WSquare(),
                                                        ("mine", [dtd.rules.WSquare(), "z+", "z+"])),
                      input_box=(0.0, 1.0))
    labels = [label for label, _ in subject.rules]
    assert labels == ["z+", "zB", "gamma1", "w2", "mine"]
    zb = dict(subject.rules)["zB"]
    assert (
        isinstance(zb[0], dtd.rules.ZB)
        and float(zb[0].high) == 1.0
        and all(isinstance(r, dtd.rules.ZPlus) for r in zb[1:])
    )


def test_image_inputs_get_heatmaps():
    """A CNN subject (lowered with its input shape) gets a grid of relevance heatmaps beside its inputs."""
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                              nn.Linear(8, 3)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    x = torch.rand(10, 1, 4, 4, generator=generator)
    result = evaluate(Subject("cnn", model, x, neurons_per_point=4))
    assert len(result.image_grids) == 1
    file, _, rows, columns, _ = result.image_grids[0]
    assert len(rows[0]["images"]) == len(columns) == 2 and len(rows[0]["images"][1]) == 4
    # every rule's relevance in one grid, side by side (one scale per row), not one grid per rule
    both = evaluate(Subject("cnn", model, x, neurons_per_point=4, rules=("z+", "gamma1")))
    assert len(both.image_grids) == 1
    _, _, rows, columns, _ = both.image_grids[0]
    assert columns == ["input", "relevance (z+)", "relevance (gamma1)"] and len(rows[0]["images"]) == 3


def test_layers_are_named_by_the_models_modules():
    from properties.subjects.subject import layer_names

    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 10))
    assert layer_names(model, 3) == ["0 Conv2d", "2 AvgPool2d + 3 Conv2d", "6 Linear"]
    assert layer_names(model, 2) is None  # the grouping disagrees with the lowering: no names rather than wrong ones


def test_a_model_dtd_cannot_lower_is_refused_before_training():
    from properties.subjects.subject import check_model

    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises((TypeError, ValueError), match="Tanh"):
        check_model(model, (4,))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert check_model(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), (4,)).n_layers == 1


def test_image_inputs_get_a_heatmap_grid_that_the_report_renders(tmp_path):
    from properties.plugin import PropertyReport, Store
    from properties.report import write_report

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        model[-1].bias.add_(1.0)
    x = torch.rand(10, 1, 4, 4, generator=generator)
    subject = Subject("images", model, x, neurons_per_point=4)
    result = evaluate(subject)
    (file, title, rows, columns, caption), = result.image_grids
    heat = torch.tensor(rows[0]["images"][1])
    reference = dtd.train_free(dtd.ReLUNetwork.from_sequential(model), x[:1], output=int(subject.outputs[0])).relevance
    assert torch.allclose(heat, reference.reshape(4, 4), atol=1e-6, rtol=0)
    store = Store({}, 0.99, 0)
    result.record(PropertyReport(store, "test", gate=True))
    write_report(tmp_path, list(store.rows.values()), list(store.plots.values()), {"confidence": 0.99})
    assert (tmp_path / file).stat().st_size > 1000
    assert file in (tmp_path / "report.md").read_text()


def test_zero_output_of_a_large_float32_logit_is_judged_up_to_its_rounding():
    """The top layer's root zeroes the explained logit exactly in exact arithmetic; in float32 a logit of ~500 is
    known only to ~3e-5, so the absolute 1e-6 of the notebook would report its rounding as a DTD failure."""
    from properties.measure.checks import root_outcomes
    from properties.measure.thresholds import PROPERTY_ATOL, zero_output_tolerance

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[2].weight.mul_(400.0)
    x = torch.rand(64, 6, generator=torch.Generator().manual_seed(1))
    subject = Subject("big_logits", model, x, outputs="predicted", neurons_per_point=None)
    result = evaluate(subject)
    top = result.rates[RateKey("subject", "zero_output", subject="big_logits", rule="z+", layer=1)][0]
    assert top.trials > 0 and top.successes == top.trials
    # the notebook's absolute tolerance would not have held at these roots: the rounding is real
    dec = dtd.train_free(subject.network, subject.inputs, rule="z+", output=subject.outputs)
    out = root_outcomes(subject.network, dec, layer=1)
    counted = out.valid & out.carries_relevance
    assert float(out.output_at_root.abs()[counted].max()) > PROPERTY_ATOL
    assert bool((zero_output_tolerance(out.output_at_input) > PROPERTY_ATOL).all())


def _maxpool_subject(**kwargs):
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(12, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.6)
        model[-1].bias.add_(0.5)
    x = torch.rand(11, 1, 4, 4, generator=generator)
    return model, x, Subject("split", model, x, rules=("z+", "zB"), input_box=(0.0, 1.0), neurons_per_point=3, **kwargs)


def _same(a, b):
    """Two results agree in every rate (successes, trials, clusters, interval), count, histogram and heatmap."""
    assert a.rates.keys() == b.rates.keys()
    for key, (rate, description) in a.rates.items():
        other, other_description = b.rates[key]
        assert (rate.successes, rate.trials, rate.clusters, rate.interval) == (
            other.successes,
            other.trials,
            other.clusters,
            other.interval,
        ), key
        assert description == other_description
    assert a.histograms == b.histograms and a.image_grids == b.image_grids and a.layer_names == b.layer_names


def test_a_split_subjects_parts_merge_into_exactly_the_rates_of_evaluate():
    """Parts evaluated apart, carried as JSON and merged in any order give evaluate()'s result bit for bit; and part i
    is, cluster for cluster, an unsplit subject of part i's points drawn with part i's seed (the obvious reference)."""
    from properties.subjects.subject import SubjectPart, _part_seed, evaluate_part, merge_parts

    model, x, subject = _maxpool_subject(points_per_item=4)
    assert subject.n_parts == 3 and [subject.part_range(i) for i in range(3)] == [
        (0, 4),
        (4, 8),
        (8, len(subject.inputs)),
    ]
    whole = evaluate(subject, seed=5)
    parts = [SubjectPart.from_json(evaluate_part(subject, i, seed=5).to_json()) for i in (2, 0, 1)]
    merged = merge_parts(parts)
    _same(whole, merged)
    assert whole.counts == merged.counts
    clusters = {key: [] for key in whole.rates}
    totals = {key: [0, 0] for key in whole.rates}
    for i in range(subject.n_parts):
        start, stop = subject.part_range(i)
        alone = Subject("split", model, subject.inputs[start:stop], outputs=subject.outputs[start:stop],
                        rules=("z+", "zB"), input_box=(0.0, 1.0), neurons_per_point=3, points_per_item=None)
        for key, (rate, _) in evaluate(alone, seed=_part_seed(5, i)).rates.items():
            clusters[key].extend(rate.clusters or ())
            totals[key] = [totals[key][0] + rate.successes, totals[key][1] + rate.trials]
    for key, (rate, _) in whole.rates.items():
        assert rate.clusters == (tuple(clusters[key]) if key.outcome != "conserved" else None), key
        assert [rate.successes, rate.trials] == totals[key], key
    # one part (points_per_item=None or larger than the points) draws with the seed itself, as before splitting existed
    _same(evaluate(Subject("split", model, x, rules=("z+", "zB"), input_box=(0.0, 1.0), neurons_per_point=3,
                           points_per_item=None), seed=5),
          evaluate(Subject("split", model, x, rules=("z+", "zB"), input_box=(0.0, 1.0), neurons_per_point=3,
                           points_per_item=100), seed=5))


def test_merging_refuses_missing_repeated_and_foreign_parts():
    from properties.subjects.subject import evaluate_part, merge_parts

    model, x, subject = _maxpool_subject(points_per_item=4)
    parts = [evaluate_part(subject, i) for i in range(subject.n_parts)]
    with pytest.raises(ValueError, match="exactly once"):
        merge_parts(parts[:2])
    with pytest.raises(ValueError, match="exactly once"):
        merge_parts(parts + parts[:1])
    with pytest.raises(TypeError, match="SubjectPart"):
        merge_parts([])
    with torch.no_grad():
        model[0].bias.add_(0.01)  # another process's factory built another model
    other = Subject("split", model, x, rules=("z+", "zB"), input_box=(0.0, 1.0), neurons_per_point=3, points_per_item=4)
    with pytest.raises(ValueError, match="same subject in every process"):
        merge_parts(parts[:2] + [evaluate_part(other, 2)])
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\]"):
        evaluate_part(subject, 3)


def test_points_per_item_auto_bounds_the_work_of_an_item():
    from properties.subjects.subject import ITEM_WORK, _auto_points_per_item

    _, _, subject = _maxpool_subject()
    assert subject.n_parts == 1 and subject.points_per_item == _auto_points_per_item(subject.network, 2, 3)
    # the work model: per point, rule and layer, the drawn roots times (the layer's input + what f_k recomputes)
    net = subject.network
    per_point = sum(min(3, net.out_features_of(k)) * (net.in_features(k) + sum(n.numel() if hasattr(n, "numel") else
                    __import__("math").prod(n.shape) for n in net.live_nodes(k)[1])) for k in range(net.n_layers))
    assert subject.points_per_item == ITEM_WORK // (2 * per_point)
    dense = Subject("tiny", _mlp(), _inputs(), neurons_per_point=None)
    sizes = dense.network.sizes
    work = sum(sizes[k + 1] * (sizes[k] + sum(sizes[k + 1 :])) for k in range(len(sizes) - 1))
    assert dense.points_per_item == ITEM_WORK // work


def test_a_tuple_is_an_index_into_the_output_never_one_index_per_point():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1)).eval()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    message = r"output=\(1, 2\) has 2 indices but the network's output per point has shape \(2, 4, 4\)"
    with pytest.raises(ValueError, match=message):
        Subject("seg", model, x, outputs=(1, 2))  # two points: as a list it would be one index per point


def test_negative_inputs_get_a_subjects_advice():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[2].bias.fill_(5.0)  # every point's output 0 is positive: only the inputs' sign is in question
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(0)) - 0.5
    with pytest.raises(ValueError, match=r"negative value\(s\).*rules=\('zB',\) and the box your data live in"):
        Subject("normalised", model, x, outputs=0)
    subject = Subject("normalised", model, x, outputs=0, rules=("zB",))  # the default box holds negative inputs too
    (label, rules), = subject.rules
    assert label == "zB" and rules[0].low == -1.0 and rules[0].high == 1.0
