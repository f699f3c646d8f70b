"""A new rule in three declarations: its class (dtd.rules.register, for Rule.ensure), what the suite runs of it
(properties.generate.variants.declare: the sweeps, the agreement check) and its slow replica (tests/reference.py)."""

from __future__ import annotations

import pytest
import torch

import dtd
from dtd import rules as R
from properties.conformance import agreement as ag
from properties.generate import variants as V
from properties.generate.strategies import sample_cases
from properties.measure.keys import RateKey
from properties.suite import test_generated
from tests import reference, test_train_free


class _Toy(R.Rule):
    """A toy rule: ``v_j = a * (1 + 1[w_j < 0])`` (gamma's mirror image, on the negative weights)."""

    name = "toy"

    def direction_terms(self, weight):
        return 1 + (weight < 0).to(weight.dtype), None


@pytest.fixture
def toy_rule():
    """Register the toy rule (its class, its variant and its replica) for the duration of a test."""
    R.register()(_Toy)
    V.declare(_Toy, variants=[V.Variant("toy", lambda x, n_layers: _Toy(), {"generated", "reference"})])
    reference.replicates(_Toy)(reference._elementwise(lambda rule, a, w, i: a * 2.0 if w < 0 else a))
    try:
        yield _Toy
    finally:
        R.unregister(_Toy)
        V.undeclare(_Toy)
        reference.unreplicate(_Toy)


def test_a_registered_rule_reaches_ensure_the_sweep_and_the_reference_test(toy_rule):
    assert type(R.Rule.ensure("toy")) is toy_rule
    # the generated sweep picks it up and records its rates under its label
    assert "toy" in [v.label for v in test_generated.sweep_variants()]
    variant = next(v for v in test_generated.sweep_variants() if v.label == "toy")
    tally, n_roots = test_generated.sweep(variant, sample_cases(3, seed=0, n=4))
    assert n_roots > 0 and RateKey("generated", "gradient_match", rule="toy", subset="all") in tally.names()
    # the reference tests pick it up, and the batched decomposition equals its replica
    assert "toy" in [p.id for p in test_train_free.reference_rules()]
    test_train_free.assert_matches_reference(toy_rule(), (6, 5, 4, 3), 0)


def test_unregistered_after_the_test():
    assert "toy" not in [v.label for v in V.variants("generated")]
    with pytest.raises(ValueError, match="unknown rule 'toy'"):
        R.Rule.ensure("toy")


def test_registry_refuses_duplicate_names_and_bad_labels():
    class Clash(R.Rule):
        name = "z+"

        def direction_terms(self, weight):
            return None, weight

    with pytest.raises(ValueError, match="already registered"):
        R.register()(Clash)
    with pytest.raises(ValueError, match="no dots"):
        V.Variant("gamma0.1", lambda x, n: R.Gamma(0.1), {"generated"})
    with pytest.raises(ValueError, match="unknown sweep"):
        V.Variant("g", lambda x, n: R.Gamma(0.1), {"nightly"})
    with pytest.raises(ValueError, match="unknown sweep"):
        V.variants("nightly")
    with pytest.raises(ValueError, match="already declared"):
        V.declare(R.Gamma, variants=[V.Variant("z+", lambda x, n: R.Gamma(0.1), {"generated"})])
    with pytest.raises(KeyError, match="not a registered rule"):
        V.declare(Clash)


def test_zennit_counterparts_come_from_the_registry():
    import zennit.rules as zr

    assert isinstance(ag.zennit_rule(R.ZPlus()), zr.ZPlus)
    assert isinstance(ag.zennit_rule(R.Gamma(0.5)), zr.Gamma)
    with pytest.raises(ValueError, match="no zennit counterpart"):
        ag.zennit_rule(R.Pinv())


def test_variants_build_rules_for_the_data():
    x = torch.tensor([[0.0, 2.3], [1.0, 0.5]], dtype=torch.float64)
    recipe = next(v for v in V.variants("generated") if v.label == "zB").make(x, 3)
    assert isinstance(recipe[0], R.ZB) and float(recipe[0].high) == 3.0 and recipe[1:] == [R.ZPlus(), R.ZPlus()]
    net = dtd.ReLUNetwork.random([2, 3, 2, 1], seed=0, dtype=torch.float64)
    dtd.train_free(net, x, rule=recipe)
