"""The suite's trained networks: accurate, deterministic, and trained without touching global state."""

from __future__ import annotations

import pytest
import torch

from properties import digits

MIN_ACCURACY = 0.9


@pytest.mark.parametrize("make", [digits.digits_mlp, digits.digits_cnn], ids=["mlp", "cnn"])
def test_trained_digits_networks_are_accurate_and_reproducible(make):
    rng_before = torch.get_rng_state()
    threads = torch.get_num_threads()
    first = make.__wrapped__()  # a real training (make() trains once per process, then hands out copies)
    assert torch.equal(torch.get_rng_state(), rng_before), "training touched torch's global RNG"
    assert torch.get_num_threads() == threads
    assert first.test_accuracy >= MIN_ACCURACY
    # the accuracy is the model's, recomputed here
    assert first.test_accuracy == digits.accuracy(first.model, first.data.test_x, first.data.test_y)
    assert not first.model.training
    second = make()  # the process's cached training: another training than first's
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs between two trainings"


def test_cached_digits_models_are_independent_copies():
    first, second = digits.digits_mlp(), digits.digits_mlp()
    assert first.model is not second.model
    with torch.no_grad():
        first.model[1].weight.add_(1.0)
    assert not torch.equal(first.model[1].weight, second.model[1].weight)
    assert torch.equal(digits.digits_mlp().model[1].weight, second.model[1].weight)


def test_digits_data_are_a_fixed_split_in_the_unit_box():
    data = digits.load_digits()
    assert data.train_x.shape[1:] == digits.IMAGE_SHAPE and data.test_x.shape[0] == digits.N_TEST
    assert data.train_x.shape[0] + data.test_x.shape[0] == 1797
    for x in (data.train_x, data.test_x):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    again = digits.load_digits()
    assert torch.equal(data.test_x, again.test_x) and torch.equal(data.train_y, again.train_y)


def test_digits_rejects_a_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        digits.digits_mlp("0")
    with pytest.raises(ValueError, match="seed"):
        digits.digits_mlp(-1)
