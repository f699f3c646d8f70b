"""The findings' machinery against slow, obvious references: similarity measures, the
top-down walk, the shift, the randomisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dtd
from dtd import rules as R
from properties.findings import Findings, invariance, randomisation, relevance_from_top
from properties.findings.similarity import average_ranks, cosine, median_interval, spearman, ssim
from properties.measure.keys import RateKey
from properties.measure.stats import Rate
from properties.report import papers

#: float64 agreement of two computations of one quantity (summation order only)
ATOL64 = 1e-10


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- similarity
def test_cosine_equals_a_per_row_loop_and_flags_zero_rows():
    a = torch.randn(6, 5, generator=_generator(), dtype=torch.float64)
    b = torch.randn(6, 5, generator=_generator(1), dtype=torch.float64)
    a[2] = 0
    values, defined = cosine(a, b)
    for i in range(6):
        if i == 2:
            assert not defined[i] and values[i] == 0
        else:
            expected = float(a[i] @ b[i]) / (float(a[i].norm()) * float(b[i].norm()))
            assert defined[i] and abs(float(values[i]) - expected) <= ATOL64


def test_average_ranks_and_spearman_equal_scipy():
    from scipy import stats  # a test dependency (pyproject's test extra)
    g = _generator()
    a = torch.randint(0, 4, (8, 12), generator=g).double()  # many ties, as relevance of zero pixels has
    b = torch.randn(8, 12, generator=g, dtype=torch.float64)
    b[:, :3] = 0
    for i in range(8):
        assert torch.equal(average_ranks(a)[i], torch.tensor(stats.rankdata(a[i].numpy()), dtype=torch.float64))
    values, defined = spearman(a, b)
    for i in range(8):
        expected = stats.spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert defined[i] and abs(float(values[i]) - expected) <= ATOL64
    constant = torch.ones(1, 12, dtype=torch.float64)
    assert not bool(spearman(constant, b[:1])[1][0])


def test_ssim_equals_scikit_image():
    from skimage import metrics  # a test dependency (pyproject's test extra)
    g = _generator()
    a = torch.rand(4, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    b = (a + 0.3 * torch.randn(4, 8, 8, generator=g, dtype=torch.float64)).clamp(-1, 1)
    ours = ssim(a, b, data_range=2.0)
    for i in range(4):
        theirs = metrics.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=2.0)
        assert abs(float(ours[i]) - theirs) <= ATOL64
    channels = ssim(a.reshape(4, 1, 8, 8).repeat(1, 3, 1, 1), b.reshape(4, 1, 8, 8).repeat(1, 3, 1, 1), data_range=2.0)
    assert torch.allclose(channels, ours, atol=ATOL64)


@pytest.mark.parametrize("call, message", [
    (lambda: ssim(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), data_range=1.0), "at least 7x7"),
    (lambda: ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), data_range=0), "data_range"),
    (lambda: cosine(torch.zeros(2, 3), torch.zeros(3, 3)), "one shape"),
])
def test_similarity_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_median_interval_brackets_the_median_and_is_reproducible():
    clusters = [torch.arange(5, dtype=torch.float64) + i for i in range(6)]
    median, low, high = median_interval(clusters, 0.99, seed=3)
    assert median == float(torch.cat(clusters).median()) and low <= median <= high
    assert median_interval(clusters, 0.99, seed=3) == (median, low, high)
    assert median_interval([torch.empty(0)], 0.99) == (None, None, None)
    assert median_interval([torch.tensor([2.0])], 0.99) == (2.0, 2.0, 2.0)


# --------------------------------------------------------------------------- the top-down walk
@pytest.mark.parametrize("rule", ["z+", "w2", "x", R.Gamma(1.0), [R.ZB(0.0, 4.0), R.ZPlus(), R.ZPlus()]], ids=str)
def test_relevance_from_a_one_hot_top_is_train_free(rule):
    net = dtd.ReLUNetwork.random([5, 6, 4, 3], seed=2, dtype=torch.float64)
    x = net.sample_inputs(10, output=1, seed=0)
    dec = dtd.train_free(net, x, rule=rule, output=1)
    top = torch.zeros(10, 3, dtype=torch.float64)
    top[:, 1] = dec.output_value
    assert torch.allclose(relevance_from_top(net, x, top, rule), dec.relevance, atol=ATOL64, rtol=0)


def test_relevance_from_top_checks_the_top_shape():
    net = dtd.ReLUNetwork.random([3, 4, 2], seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="top must be a tensor of shape"):
        relevance_from_top(net, torch.rand(2, 3, dtype=torch.float64), torch.zeros(2, 3), "z+")


# --------------------------------------------------------------------------- the shift
def test_shifted_network_computes_the_same_function_and_leaves_the_original_alone():
    net = dtd.ReLUNetwork.random([4, 5, 2], seed=0, dtype=torch.float64)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    c = torch.tensor([0.5, 0.1, 0.0, 2.0], dtype=torch.float64)
    moved = invariance.shifted_network(net, c)
    x = torch.rand(7, 4, generator=_generator(), dtype=torch.float64)
    assert torch.allclose(moved(x + c), net(x), atol=ATOL64, rtol=0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert moved.layers[0] is not net.layers[0]
    assert torch.allclose(moved.bias(0), net.bias(0) - net.weight(0) @ c, atol=ATOL64, rtol=0)  # b' = b - W c


def test_shifted_network_of_a_lowered_cnn_takes_flat_inputs():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).double().eval()
    net = dtd.ReLUNetwork.from_sequential(model, input_shape=(1, 4, 4))
    x = torch.rand(3, 1, 4, 4, generator=_generator(), dtype=torch.float64)
    c = torch.full((16,), 0.25, dtype=torch.float64)
    moved = invariance.shifted_network(net, c)
    assert torch.allclose(moved(x.flatten(1) + c), model(x), atol=ATOL64, rtol=0)


@pytest.mark.parametrize("c, error, message", [
    (torch.zeros(3), ValueError, "one entry per input feature"),
    ("0.5", TypeError, "c must be"),
    (torch.tensor([float("nan")] * 4), ValueError, "finite"),
])
def test_shifted_network_rejects_a_bad_shift(c, error, message):
    net = dtd.ReLUNetwork.random([4, 2], seed=0, dtype=torch.float64)
    with pytest.raises(error, match=message):
        invariance.shifted_network(net, c)


def test_shifted_rules_move_only_an_input_zb():
    c = torch.tensor([0.5, 1.0], dtype=torch.float64)
    moved = invariance.shifted_rules([R.ZB(0.0, 1.0), R.ZPlus()], c, 2)
    assert torch.equal(moved[0].low, c) and torch.equal(moved[0].high, 1.0 + c) and moved[1] == R.ZPlus()
    assert invariance.shifted_rules("w2", c, 3) == [R.WSquare()] * 3


def test_relevance_change_is_relative_and_explicit_about_zero():
    before = torch.tensor([[1.0, -2.0], [0.0, 0.0], [0.0, 0.0]])
    after = torch.tensor([[1.0, -2.2], [0.0, 0.0], [0.0, 1.0]])
    change = invariance.relevance_change(before, after)
    assert abs(float(change[0]) - 0.1) <= 1e-6 and float(change[1]) == 0.0 and change[2] == float("inf")


# --------------------------------------------------------------------------- the randomisation
def _model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def test_randomised_copy_replaces_only_the_top_modules_and_never_the_model():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    clone = randomisation.randomised_copy(model, 2, _generator(5))
    assert torch.equal(torch.get_rng_state(), rng), "the randomisation drew from torch's global RNG"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "the model changed"
    assert torch.equal(clone[0].weight, model[0].weight) and torch.equal(clone[0].bias, model[0].bias)
    for index in (2, 4):
        assert not torch.equal(clone[index].weight, model[index].weight)
        bound = 1 / 5**0.5
        assert (
            float(clone[index].weight.detach().abs().max()) <= bound
            and float(clone[index].bias.detach().abs().max()) <= bound
        )
    again = randomisation.randomised_copy(model, 2, _generator(5))
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), again.state_dict().values(), strict=True))
    # cascading: the top module gets the same draws whether one or two modules are re-initialised
    one = randomisation.randomised_copy(model, 1, _generator(5))
    assert torch.equal(one[4].weight, clone[4].weight)
    with pytest.raises(ValueError, match="only 3"):
        randomisation.randomised_copy(model, 4, _generator())


def test_gradient_x_input_equals_captum():
    from captum import attr  # a test dependency (pyproject's test extra)
    model = _model().double()
    x = torch.rand(6, 4, generator=_generator(), dtype=torch.float64)
    outputs = torch.tensor([0, 1, 2, 0, 1, 2])
    ours = randomisation.gradient_x_input(model, x, outputs)
    theirs = attr.InputXGradient(_model().double()).attribute(x.clone().requires_grad_(True), target=outputs).detach()
    assert torch.allclose(ours, theirs, atol=ATOL64, rtol=0)
    assert not x.requires_grad


# --------------------------------------------------------------------------- results and report text
def test_findings_refuse_a_rate_twice():
    found = Findings()
    key = RateKey("invariance", "unchanged", rule="w2")
    found.add(key, Rate(1, 1), "x")
    with pytest.raises(ValueError, match="measured twice"):
        found.add(key, Rate(1, 1), "x")


def test_the_opening_puts_the_papers_claim_beside_the_measured_rates():
    rows = [{"name": "insensitivity.z+.depth8.outputs.insensitive", "rate": 0.971, "ci_low": 0.95, "ci_high": 0.984},
            {"name": "insensitivity.x.depth8.outputs.insensitive", "rate": 0.032, "ci_low": 0.01, "ci_high": 0.06},
            {"name": "invariance.w2.unchanged", "rate": 1.0, "ci_low": 0.99, "ci_high": 1.0}]
    text = papers.opening("insensitivity", rows)
    assert text.startswith("Sixt, Granz & Landgraf") and "z+ 97.10 % [95.00, 98.40]" in text and "x 3.20 %" in text
    assert "depth 8" in text and "invariance" not in text
    assert papers.opening("invariance", rows).startswith("Kindermans") and "w2 100.00 %" in papers.opening(
        "invariance", rows
    )
    assert "not measured" in papers.opening("randomisation", rows)
    assert papers.opening("generated", rows) is None


def test_a_lines_figure_renders_deterministically_and_the_report_opens_the_findings_with_the_claim(tmp_path):
    from properties.measure.stats import Rate
    from properties.report import figures, render_report

    plot = {"file": "f.png", "kind": "lines", "title": "t", "xlabel": "depth", "caption": "c", "panels": [
        {"title": "p", "ylabel": "y", "ylim": [0, 1],
         "series": {"z+": {"x": [1, 2], "y": [0.2, 0.9], "low": [0.1, 0.8], "high": [0.3, 1.0]}}}]}
    first = figures.render(plot, {}, 0.99)
    assert first.startswith(b"\x89PNG") and first == figures.render(plot, {}, 0.99)
    assert "Bands: 99 % confidence intervals" in figures.caption(plot, 0.99)
    key = RateKey("insensitivity", "insensitive", rule="z+", depth=8, pair="outputs")
    row = {"name": str(key), "key": key.to_dict(), "description": "d", "status": "new", "baseline": None,
           **Rate(9, 10).to_dict()}
    files = render_report([row], [plot], {"confidence": 0.99})
    text = files["report.md"].decode()
    section = text.index("## Class insensitivity with depth")
    assert text.index("Sixt, Granz & Landgraf", section) < text.index("| name |", section)
    assert "z+ 90.00 %" in text and "The field's findings" in files["report.html"].decode()


def test_a_users_subject_gets_every_family_and_keeps_its_model():
    from properties.findings import evaluate_findings
    from properties.subjects.subject import Subject

    model = _model()
    with torch.no_grad():
        model[4].bias.add_(1.0)  # positive outputs to explain
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(30, 4, generator=_generator(2)) * 2 - 1  # negative inputs: w2 only, no unshifted zB box
    subject = Subject("signed", model, x, rules=("w2",))
    found = evaluate_findings(subject, seed=0)
    families = {key.family for key in found.rates}
    assert families == {"insensitivity", "invariance", "randomisation"}
    assert RateKey("invariance", "unchanged", subject="signed", rule="w2") in found.rates
    assert found.rates[RateKey("invariance", "unchanged", subject="signed", rule="w2")][0].rate == 1.0
    assert not any(key.rule == invariance.UNSHIFTED for key in found.rates)
    assert any("not measured" in label for label in found.counts)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(TypeError, match="findings must be True or False"):
        Subject("bad", model, x, rules=("w2",), findings="no")


def test_the_invariant_rules_rates_are_fixed_by_design_and_still_answer_the_claim():
    from properties.measure.keys import by_design
    from properties.report import render_report

    assert by_design(RateKey("invariance", "unchanged", rule="w2")) and by_design(
        RateKey("invariance", "unchanged", rule="zB")
    )
    assert by_design(RateKey("invariance", "unchanged", rule="z+")) is None
    # a user's label says nothing
    assert by_design(RateKey("invariance", "unchanged", subject="mine", rule="zB")) is None
    rows = []
    for rule, rate in (("w2", Rate(10, 10)), ("z+", Rate(1, 10))):
        key = RateKey("invariance", "unchanged", rule=rule)
        rows.append({"name": str(key), "key": key.to_dict(), "description": "d", "status": "new", "baseline": None,
                     **rate.to_dict()})
    text = render_report(rows, [], {"confidence": 0.99})["report.md"].decode()
    opening = text[text.index("## Input invariance"):]
    assert "w2 100.00 %" in opening.split("\n\n")[1] and "z+ 10.00 %" in opening.split("\n\n")[1]
