"""The suite's trained networks: accurate, deterministic, and trained without touching global state."""

from __future__ import annotations

import pytest
import torch

from properties.subjects import digits

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
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
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


@pytest.mark.parametrize("name, make", [("maxpool", digits.digits_maxpool), ("resnet", digits.digits_resnet)])
def test_trained_maxpool_cnn_and_resnet_are_accurate_reproducible_and_cached(name, make):
    from torch import nn

    rng_before = torch.get_rng_state()
    threads = torch.get_num_threads()
    first = make()
    assert torch.equal(torch.get_rng_state(), rng_before), "training touched torch's global RNG"
    assert torch.get_num_threads() == threads
    assert first.test_accuracy >= MIN_ACCURACY, f"{name}: held-out accuracy {first.test_accuracy:.3f}"
    assert first.test_accuracy == digits.accuracy(first.model, first.data.test_x, first.data.test_y)
    assert not first.model.training
    kinds = {type(m) for m in first.model.modules()}
    assert (nn.MaxPool2d in kinds) == (name == "maxpool")
    if name == "resnet":
        assert {nn.BatchNorm2d, nn.AdaptiveAvgPool2d} <= kinds
        blocks = list(first.model.blocks)
        assert [b.downsample is None for b in blocks] == [True, False]  # an identity and a 1x1-conv shortcut
        bn = first.model.stem.bn
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))  # trained statistics
    # cached: a second call trains nothing and returns an equal, independent copy
    second = make()
    assert second.model is not first.model
    for (key, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    with torch.no_grad():
        next(second.model.parameters()).add_(1.0)
    assert not torch.equal(next(make().model.parameters()), next(second.model.parameters()))
    # deterministic: two fresh trainings (not the cache; a few steps of the same code) give the same bits
    build, _, learning_rate, batch_size, target = digits._CACHED[name]
    one, two = (digits._train(build, 0, steps=1, learning_rate=learning_rate, batch_size=batch_size, target=target)
                for _ in range(2))
    for (key, a), (_, b) in zip(one.model.state_dict().items(), two.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{key} differs between two trainings"


def test_cached_trainings_reject_a_bad_seed():
    with pytest.raises(TypeError, match="seed"):
        digits.digits_resnet("0")
    with pytest.raises(ValueError, match="seed"):
        digits.digits_maxpool(-1)


def test_the_digits_unet_segments_ink_and_trains_reproducibly():
    first = digits.digits_unet()
    assert first.test_accuracy >= 0.95  # held-out pixel accuracy of the ink / background segmentation
    x = first.data.test_x[:5]
    with torch.no_grad():
        out = first.model(x)
    assert out.shape == (5, 2, 8, 8)
    assert float((out.argmax(1) == digits.ink(x)).double().mean()) >= 0.9  # it segments the ink of these five too
    second = digits.digits_unet()
    assert second.model is not first.model
    pairs = zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    build, _, learning_rate, batch_size, target = digits._CACHED["unet"]
    one, two = (digits._train(build, 0, steps=1, learning_rate=learning_rate, batch_size=batch_size, target=target)
                for _ in range(2))
    pairs = zip(one.model.state_dict().values(), two.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
