"""Built-in architectures: recognising state_dicts by shapes, building and loading them; the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ticketsolver.data import load_digits_28, load_wine_standardized
from ticketsolver.errors import CheckpointError
from ticketsolver.models import (
    ARCHITECTURES,
    MLP,
    LeNet5,
    build_from_state_dict,
    evaluate_accuracy,
    infer_architecture,
    train_classifier,
)


def _renamed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same tensors, same order, meaningless names."""
    return {f"blob_{i:03d}_x": tensor for i, tensor in enumerate(state_dict.values())}


def _randomise_bn(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            with torch.no_grad():
                module.weight.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
    return model.eval()


def test_lenet5_is_the_classic_chain() -> None:
    model = LeNet5()
    names = [type(m).__name__ for m in model]
    assert names == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
        "Linear", "ReLU", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert model[0].padding == (2, 2) and model.input_shape == (1, 28, 28)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert LeNet5(in_channels=3, num_classes=4)(torch.zeros(1, 3, 28, 28)).shape == (1, 4)


def test_mlp_has_no_relu_after_the_last_layer() -> None:
    model = MLP((64, 500, 10))
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear"]
    assert model.input_shape == (64,)
    with pytest.raises(ValueError):
        MLP((5,))


def test_lenet5_recognised_from_shapes_whatever_the_keys() -> None:
    torch.manual_seed(0)
    model = LeNet5().eval()
    state_dict = _renamed(model.state_dict())
    assert infer_architecture(state_dict) == "lenet5"
    built, input_shape = build_from_state_dict(state_dict)
    assert input_shape == (1, 28, 28)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(built(x), model(x))


@pytest.mark.parametrize("sizes", [(3, 2), (64, 500, 10), (7, 5, 4, 3, 2)])
def test_mlp_of_any_depth_recognised(sizes: tuple[int, ...]) -> None:
    model = MLP(sizes, bias=[i % 2 == 0 for i in range(len(sizes) - 1)]).eval()
    built, input_shape = build_from_state_dict(_renamed(model.state_dict()))
    assert infer_architecture(model.state_dict()) == "mlp" and input_shape == (sizes[0],)
    x = torch.randn(4, sizes[0])
    torch.testing.assert_close(built(x), model(x))


@pytest.mark.parametrize(
    "model",
    [
        LeNet5(batch_norm=True),
        LeNet5(bias=False, batch_norm=[True, False, True, False, False]),
        MLP((6, 5, 4), batch_norm=True),
    ],
    ids=["lenet5-bn", "lenet5-partial-bn-no-bias", "mlp-bn"],
)
def test_batchnorm_tensors_do_not_confuse_recognition(model: nn.Module) -> None:
    _randomise_bn(model)
    state_dict = _renamed(model.state_dict())
    expected = "lenet5" if isinstance(model, LeNet5) else "mlp"
    assert infer_architecture(state_dict) == expected
    built, input_shape = build_from_state_dict(state_dict)
    x = torch.rand(2, *input_shape)
    torch.testing.assert_close(built(x), model(x))


def test_alphabetically_sorted_keys_are_read_in_natural_order() -> None:
    # safetensors stores keys sorted: "10.weight" < "3.weight" and "0.bias" < "0.weight".
    state_dict = LeNet5().state_dict()
    shuffled = dict(sorted(state_dict.items()))
    assert list(shuffled) != list(state_dict)
    assert infer_architecture(shuffled) == "lenet5"


def test_mismatched_arch_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="mismatched --arch lenet5") as error:
        build_from_state_dict(MLP((4, 3)).state_dict(), arch="lenet5")
    message = str(error.value)
    assert ARCHITECTURES["lenet5"].expected in message and "linear(3, 4)" in message


def test_unknown_arch_name_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="unknown architecture 'vgg'"):
        build_from_state_dict(MLP((4, 3)).state_dict(), arch="vgg")


def test_unrecognised_architecture_suggests_torch_export() -> None:
    state_dict = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)).state_dict()
    with pytest.raises(CheckpointError, match="torch.export"):
        infer_architecture(state_dict)


@pytest.mark.parametrize(
    "state_dict",
    [
        {"w": torch.zeros(3, 2), "a": torch.zeros(3), "b": torch.zeros(3)},
        {"w": torch.zeros(3, 2, 2)},
        {"w": torch.zeros(3, 2, dtype=torch.int32)},
        {"w": torch.zeros(3, 2), "n": torch.tensor(5)},
    ],
    ids=["two-vectors", "rank-3", "integer", "stray-counter"],
)
def test_malformed_layer_sequences_are_refused(state_dict: dict[str, torch.Tensor]) -> None:
    with pytest.raises(CheckpointError):
        infer_architecture(state_dict)


def test_training_is_deterministic_and_reports_metrics() -> None:
    dataset = load_wine_standardized()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MLP((13, 16, 3))
        metrics = train_classifier(model, dataset, epochs=3, batch_size=16)
        results.append((metrics, model.state_dict()))
    (first, weights_a), (second, weights_b) = results
    assert first["test_accuracy"] == second["test_accuracy"] and first["test_accuracy"] > 0.8
    assert set(first) == {"train_accuracy", "test_accuracy", "final_loss", "epochs", "seconds"}
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key])


def test_evaluate_accuracy_restores_training_mode() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    model.train()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert evaluate_accuracy(model, x, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert model.training


@pytest.mark.slow
def test_lenet5_reaches_95_percent_on_digits_28() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    metrics = train_classifier(model, load_digits_28(), epochs=10, lr=3e-3, batch_size=64)
    assert metrics["test_accuracy"] >= 0.95
