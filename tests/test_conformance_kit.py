"""The conformance kit catches deliberate defects (mutation testing), and its contract's edges.

A correct z+ LRP written out by hand (float64, no stabiliser: the slow,
obvious reference) passes every property; each mutant carries one defect
and must fail exactly the properties meant to catch it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import dtd
from properties import conformance as C
from properties.conformance import Implementation
from properties.generate.strategies import Case

#: a small sweep: every population, few networks (the rates' machinery is the same as the full run's)
SWEEP = dict(seed=0, networks=6, points=8, shrink_failures=False)


def lrp_zplus(model: nn.Sequential, x: torch.Tensor, output: int, *, positive_bias=False, stabilizer=None,
              in_place=False, nan_at_zero=False, wrong_output=False, float32=False) -> torch.Tensor:
    """z+ LRP layer by layer; each keyword switches on one defect."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    inputs, a = [], x
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                inputs.append(a)
            a = module(a)
        explained = (output + 1) % a.shape[1] if wrong_output else output
        relevance = torch.zeros_like(a)
        relevance[:, explained] = a[:, explained]
        for layer, a in zip(reversed(linears), reversed(inputs), strict=True):
            if in_place:  # "forgets to restore": clamps the caller's weights instead of a copy
                layer.weight.clamp_(min=0)
            w = layer.weight.clamp(min=0)
            z = a @ w.T
            if positive_bias:
                z = z + layer.bias.clamp(min=0)
            if stabilizer is not None:  # a stabiliser relative to the batch's largest denominator
                z = z + stabilizer * z.abs().max() * torch.where(z >= 0, 1.0, -1.0)
            share = torch.where(z != 0, relevance / torch.where(z != 0, z, torch.ones_like(z)), torch.zeros_like(z))
            relevance = a * (share @ w)
        if nan_at_zero:  # "relevance per unit input, times the input": 0/0 at zero inputs
            relevance = relevance / x * x
    return relevance.float() if float32 else relevance


def _impl(name, claimed_stabilizer=0.0, **defect):
    return Implementation(name, lambda model, x, output: lrp_zplus(model, x, output, **defect), "z+",
                          stabilizer=claimed_stabilizer)


#: defect -> the properties meant to catch it
MUTANTS = {
    "positive_bias": (dict(positive_bias=True), {"equals_dtd.bias_positive"}),
    "in_place": (dict(in_place=True), {"no_side_effects"}),
    # within the 1e-6 stabiliser it claims, so DTD agrees; but a point's result depends on its batch mates
    "batch_normalised": (dict(stabilizer=1e-10, claimed_stabilizer=1e-6), {"batch_independent"}),
    "nan_at_zero": (dict(nan_at_zero=True), {"finite"}),
    # conservation compares with the explained output's value too: the wrong output breaks both
    "wrong_output": (dict(wrong_output=True), {"equals_dtd.bias_free", "equals_dtd.bias_negative",
                                               "equals_dtd.bias_positive",
                                               "conservation.bias_free", "conservation.bias_negative"}),
    "float32": (dict(float32=True), {"dtype_device"}),
}


def _failing(result) -> set[str]:
    prefix = f"conformance.{result.implementation.name}."
    return {name[len(prefix):] for name in result.failing()}


def test_the_reference_passes_every_property():
    result = C.run(_impl("reference"), **SWEEP)
    assert _failing(result) == set()
    assert {name.split(".", 2)[2] for name in result.rates} == {
        "equals_dtd.bias_free", "equals_dtd.bias_negative", "equals_dtd.bias_positive", "conservation.bias_free",
        "conservation.bias_negative", "positivity", "batch_independent", "no_side_effects", "finite", "dtype_device"}


@pytest.mark.parametrize("defect", sorted(MUTANTS))
def test_each_mutant_fails_exactly_its_property(defect):
    switches, expected = MUTANTS[defect]
    result = C.run(_impl(defect, **switches), **SWEEP)
    assert _failing(result) == expected


def test_a_shrunk_counterexample_is_small_and_still_fails():
    impl = _impl("positive_bias", positive_bias=True)
    cases = C.population("bias_positive", 6, 8, 0)
    case = next(c for c in cases if C._fails(impl, c, "bias_positive", "equals_dtd"))
    small = C.shrink(impl, case, "bias_positive", "equals_dtd")
    assert C._fails(impl, small, "bias_positive", "equals_dtd")
    assert small.x.shape[0] == 1
    assert sum(p.numel() for p in small.net.parameters()) < sum(p.numel() for p in case.net.parameters())
    text = C.describe_failure(impl, small, "equals_dtd")
    assert "W0 = " in text and "dtd.train_free R" in text


def test_seed_one_is_scaled_by_the_output():
    def from_one(model, x, output):
        y = model(x)[:, output]
        r = lrp_zplus(model, x, output)
        return torch.where(y[:, None] > 0, r / torch.where(y > 0, y, torch.ones_like(y))[:, None], torch.zeros_like(r))

    result = C.run(Implementation("seed_one", from_one, "z+", seed="one", stabilizer=0.0), **SWEEP)
    assert _failing(result) == set()
    # claimed "value" but started from one: equals_dtd and conservation catch it
    wrong = C.run(Implementation("seed_value", from_one, "z+", stabilizer=0.0), **SWEEP)
    assert "equals_dtd.bias_negative" in _failing(wrong) and "conservation.bias_negative" in _failing(wrong)


def test_lrp0_is_judged_against_gradient_times_input_on_bias_free_networks():
    def lrp0(model, x, output):
        x = x.detach().clone().requires_grad_(True)
        y = model(x)[:, output].sum()
        (gradient,) = torch.autograd.grad(y, x)
        return (gradient * x).detach()

    result = C.run(Implementation("grad_x_input", lrp0, "x", stabilizer=0.0), **SWEEP)
    failing = _failing(result)
    assert "gradient_x_input" in result.rates or any(n.endswith("gradient_x_input") for n in result.rates)
    # gradient x input keeps the biases' share out: it is LRP-0 only without biases
    assert "gradient_x_input" not in failing and "equals_dtd.bias_free" not in failing
    assert "equals_dtd.bias_negative" in failing


def test_names_and_contract_errors():
    impl = _impl("ok")
    assert C.conformance_name(impl, "equals_dtd", "bias_free") == "conformance.ok.equals_dtd.bias_free"
    assert C.conformance_name("ok", "finite") == "conformance.ok.finite"
    with pytest.raises(ValueError, match=r"'my\.lib' must be .*no dots"):
        Implementation("my.lib", lambda m, x, o: x, "z+")
    with pytest.raises(TypeError, match="name must be a str"):
        Implementation(3, lambda m, x, o: x, "z+")
    with pytest.raises(TypeError, match="attribute must be callable"):
        Implementation("a", None, "z+")
    with pytest.raises(ValueError, match="unknown rule 'zplus'"):
        Implementation("a", lambda m, x, o: x, "zplus")
    with pytest.raises(ValueError, match="seed must be 'value' or 'one', got 'ones'"):
        Implementation("a", lambda m, x, o: x, "z+", seed="ones")
    with pytest.raises(ValueError, match="stabilizer must be >= 0"):
        Implementation("a", lambda m, x, o: x, "z+", stabilizer=-1.0)
    with pytest.raises(ValueError, match="unknown conformance property"):
        C.conformance_name(impl, "conserved")
    assert [type(r).__name__ for r in Implementation("a", lambda m, x, o: x, ["zB", "z+"]).rules_for(3)] == [
        "ZB",
        "ZPlus",
        "ZPlus",
    ]


def test_a_result_of_the_wrong_shape_or_type_is_a_clear_error():
    net = dtd.ReLUNetwork.random([3, 2], seed=0, dtype=torch.float64)
    case = Case(net, net.sample_inputs(4, seed=0), 0)
    with pytest.raises(ValueError, match=r"returned shape \(4,\) for x of shape \(4, 3\)"):
        C.evaluate_case(Implementation("flat", lambda m, x, o: x.sum(1), "z+"), case, "bias_negative")
    with pytest.raises(TypeError, match="returned ndarray"):
        C.evaluate_case(Implementation("numpy", lambda m, x, o: x.numpy(), "z+"), case, "bias_negative")


def test_load_implementations_errors_name_what_was_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "kitmod_ok.py").write_text(
        "from properties import Implementation\n"
        "def one():\n    return Implementation('a', lambda m, x, o: x, 'z+')\n"
        "def two():\n    return [one(), Implementation('b', lambda m, x, o: x, 'x')]\n"
        "def wrong():\n    return 'z+'\n"
        "def dup():\n    return [one(), one()]\n"
        "NOT_CALLABLE = 3\n")
    assert [i.name for i in C.load_implementations("kitmod_ok:one")] == ["a"]
    assert [i.name for i in C.load_implementations("kitmod_ok:two")] == ["a", "b"]
    with pytest.raises(ValueError, match="expected MODULE:FACTORY.*'kitmod_ok'"):
        C.load_implementations("kitmod_ok")
    with pytest.raises(ValueError, match="cannot import module 'nosuchmod' of 'nosuchmod:f'"):
        C.load_implementations("nosuchmod:f")
    with pytest.raises(ValueError, match="no attribute 'three'.*'one'"):
        C.load_implementations("kitmod_ok:three")
    with pytest.raises(TypeError, match="not a function"):
        C.load_implementations("kitmod_ok:NOT_CALLABLE")
    with pytest.raises(TypeError, match=r"returned str; expected a properties.Implementation or a list of them"):
        C.load_implementations("kitmod_ok:wrong")
    with pytest.raises(ValueError, match="Implementations with the same name"):
        C.load_implementations("kitmod_ok:dup")


def test_the_kit_leaves_torchs_global_rng_and_thread_count_alone():
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    C.run(_impl("rng"), seed=0, networks=2, points=4, shrink_failures=False)
    small = C.shrink(_impl("rng_shrink", positive_bias=True), C.population("bias_positive", 2, 4, 0)[0],
                     "bias_positive", "equals_dtd", budget=5)
    assert small is not None
    assert torch.equal(torch.random.get_rng_state(), state) and torch.get_num_threads() == threads


def test_the_report_shows_each_counterexample_with_its_rate(tmp_path):
    from properties import report
    from properties.measure.stats import Rate

    broken = {**report.row("conformance.a.finite", Rate(1, 2), "finite", None), "example": "W0 = [[1.0]]"}
    report.write_report(tmp_path, [broken, report.row("other.rate", Rate(2, 2), "other", None)], [],
                        {"confidence": 0.99})
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.index("Counterexample of `conformance.a.finite`:") < markdown.index("W0 = [[1.0]]")
    assert markdown.count("Counterexample of `") == 1  # only the row that has one
    assert "W0 = [[1.0]]" in (tmp_path / "report.html").read_text()


# ------------------------------------------------------------------------------------------------ architectures
def _dtd_zplus(model, x, output, *, rescale_by_batch=False):
    """DTD's own z+ on the model it is handed (MLP or image model); ``rescale_by_batch`` multiplies every row by
    ``f(x_i) / mean_batch f`` -- a result that depends on its batch mates at every point."""
    net = dtd.ReLUNetwork.from_module(model, tuple(x.shape[1:]))
    relevance = dtd.train_free(net, x, rule="z+", output=output).relevance
    if rescale_by_batch:
        with torch.no_grad():
            f = model(x)[:, output]
        relevance = relevance * (f / f.mean()).reshape((-1,) + (1,) * (x.dim() - 1))
    return relevance


def test_architectures_are_validated_and_name_their_rows():
    impl = Implementation("z", _dtd_zplus, "z+")
    assert impl.architectures == ("mlp",)
    mlp_rows = [C.conformance_name(impl, p, s) for p, s in impl.properties()]
    assert mlp_rows == ["conformance.z.equals_dtd.bias_free", "conformance.z.equals_dtd.bias_negative",
                        "conformance.z.equals_dtd.bias_positive", "conformance.z.conservation.bias_free",
                        "conformance.z.conservation.bias_negative", "conformance.z.positivity",
                        "conformance.z.batch_independent", "conformance.z.no_side_effects", "conformance.z.finite",
                        "conformance.z.dtype_device"]
    every = Implementation("z", _dtd_zplus, "z+", architectures=("mlp", "cnn", "resnet"))
    rows = [C.conformance_name(every, p, s) for p, s in every.properties()]
    assert rows[:len(mlp_rows)] == mlp_rows
    assert (
        "conformance.z.equals_dtd.cnn_bias_negative" in rows and "conformance.z.conservation.resnet_bias_free" in rows
    )
    assert {
        "conformance.z.finite.cnn",
        "conformance.z.batch_independent.resnet",
        "conformance.z.positivity.cnn",
    } <= set(rows)
    lrp0 = Implementation("e", _dtd_zplus, "x", architectures=("cnn", "resnet"),
                          claims=__import__("properties.conformance.claims").conformance.claims.Epsilon(1e-9))
    rows0 = [C.conformance_name(lrp0, p, s) for p, s in lrp0.properties()]
    assert (
        "conformance.e.gradient_x_input.cnn_bias_free" in rows0
        and "conformance.e.equals_claim.cnn_bias_positive" in rows0
    )
    assert not any("equals_claim.resnet" in r for r in rows0), "the claim references do not model residual sums"
    assert len(rows0) == len(set(rows0))
    with pytest.raises(TypeError, match="architectures must be a tuple"):
        Implementation("z", _dtd_zplus, "z+", architectures="cnn")
    with pytest.raises(ValueError, match=r"unknown architecture 'vit'; known: \('mlp', 'cnn', 'resnet'\)"):
        Implementation("z", _dtd_zplus, "z+", architectures=("mlp", "vit"))
    with pytest.raises(ValueError, match="at least one"):
        Implementation("z", _dtd_zplus, "z+", architectures=())
    with pytest.raises(ValueError, match="twice"):
        Implementation("z", _dtd_zplus, "z+", architectures=("cnn", "cnn"))


#: the old check (the batch reversed, the first point alone) passes every point but the first of each network
OLD_METHOD_FLOOR = 1 - 1 / SWEEP["points"]


def test_batch_independence_is_judged_at_every_point():
    sweep = dict(SWEEP, networks=3, image_networks=2, image_points=4)
    honest = C.run(Implementation("honest", _dtd_zplus, "z+", stabilizer=0.0, architectures=("mlp", "cnn")), **sweep)
    rescaled = C.run(Implementation("rescaled", lambda m, x, o: _dtd_zplus(m, x, o, rescale_by_batch=True), "z+",
                                    stabilizer=0.0, architectures=("mlp", "cnn")), **sweep)
    for suffix in ("", ".cnn"):
        kept = honest.rates[f"conformance.honest.batch_independent{suffix}"]
        assert kept.trials > 0 and kept.successes == kept.trials
        rate = rescaled.rates[f"conformance.rescaled.batch_independent{suffix}"]
        # on bias-free and bias <= 0 networks every point's relevance is non-zero (it sums to at least f(x) > 0), so
        # the rescaling moves it at every point: 0 %; with a positive bias a point may have no relevance at all (a
        # dead network: f is the bias), and a zero relevance honestly does not depend on its batch mates
        per_population = len(rate.clusters) // 3
        assert rate.trials > 0 and all(ok == 0 for ok, _ in rate.clusters[:2 * per_population]), rate
        assert rate.successes / rate.trials < OLD_METHOD_FLOOR / 2, rate
    assert honest.failing() == []


def test_an_image_counterexample_is_pasteable_code_that_reproduces_the_failure():
    from properties.conformance import replicas

    mutant = dataclasses.replace(next(i for i in replicas.mutant_implementations() if i.name == "mutant_bn_unmerged"),
                                 architectures=("cnn",))
    result = C.run(mutant, seed=0, networks=2, points=2, image_networks=2, image_points=4)
    row = "conformance.mutant_bn_unmerged.equals_dtd.cnn_bias_negative"
    assert result.rates[row].successes < result.rates[row].trials
    text = result.examples[row]
    namespace: dict = {}
    exec(text, namespace)  # the whole counterexample is Python: code, then the relevances as comments
    model, x, output = namespace["model"], namespace["x"], namespace["output"]
    assert isinstance(model, nn.Sequential) and x.shape[0] == 1 and x.dim() == 4
    theirs = mutant.attribute(model, x, output)
    ours = dtd.train_free(dtd.ReLUNetwork.from_module(model, tuple(x.shape[1:])), x, rule="z+", output=output).relevance
    assert float((theirs - ours).abs().max()) > 1e-3 * float(ours.abs().max())  # the failure, reproduced
    assert f"# implementation R = {theirs.tolist()}" in text and f"# dtd.train_free R = {ours.tolist()}" in text
    # shrunk: no larger than the smallest failing network of the sweep
    sizes = [sum(p.numel() for p in case.model.parameters())
             for case in C.image_population("cnn", "bias_negative", 2, 4, 0)]
    assert sum(p.numel() for p in model.parameters()) <= min(sizes)


def test_batch_independence_allows_the_rounding_of_the_implementations_own_values():
    """An implementation compared with itself (another batch, a second call) may differ by the rounding of its own
    values, which can be far larger than DTD's: large relevances with last-bit noise pass, the same noise 1e4 times
    larger (a real batch dependence) fails."""
    import zlib

    def noisy(relative):
        def attribute(model, x, output):
            r = 1e3 * _dtd_zplus(model, x, output)  # values 1000x DTD's (equals_dtd fails; not what is judged here)
            # noise that depends on the batch's composition, a few ulps of the values when relative is 1e-13
            key = zlib.crc32(x.detach().cpu().numpy().tobytes()) % 1000 + 1
            return r * (1 + relative * key / 1000)
        return Implementation(f"noisy_{relative:g}", attribute, "z+", stabilizer=0.0)

    sweep = dict(SWEEP, networks=3)
    rounding = C.run(noisy(1e-13), **sweep)
    assert all(rate.successes == rate.trials > 0 for row, rate in rounding.rates.items() if ".batch_independent" in row)
    assert all(rate.successes == rate.trials for row, rate in rounding.rates.items() if ".no_side_effects" in row)
    dependent = C.run(noisy(1e-9), **sweep)
    rate = dependent.rates["conformance.noisy_1e-09.batch_independent"]
    assert rate.successes < rate.trials / 2, rate
