"""The normal form: flattening, BatchNorm folding, refusals that name the module, export graphs."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from ticketsolver.errors import ConstructionError, UnsupportedModuleError
from ticketsolver.models import NORMAL_FORM_TYPES, LeNet5, Target, normalize, normalize_exported_program


def _randomise_bn(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.1)
            with torch.no_grad():
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator))
    return model


def _types(module: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in module]


def test_nested_sequential_is_flattened_and_identities_dropped() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Dropout2d(0.3)),
        nn.Identity(),
        nn.Sequential(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), nn.Dropout(0.5), nn.Linear(18, 3)),
    )
    normal = normalize(model, (1, 8, 8))
    assert _types(normal) == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]
    assert not normal[1].inplace
    assert all(isinstance(m, NORMAL_FORM_TYPES) for m in normal)


def test_normal_form_is_a_frozen_float32_copy() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU()).double().train()
    normal = normalize(model, (3,))
    assert not normal.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in normal.parameters())
    assert model.training and isinstance(model[1], nn.BatchNorm1d)  # the input is left alone
    assert model[0].weight.data_ptr() != normal[0].weight.data_ptr()


def test_batchnorm_is_folded_exactly() -> None:
    model = _randomise_bn(
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 5 * 5, 4, bias=False),
            nn.BatchNorm1d(4),
        )  # fmt: skip
    ).eval()
    normal = normalize(model, (2, 5, 5))
    assert _types(normal) == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert normal[3].bias is not None  # the BatchNorm's shift became the layer's bias
    x = torch.randn(16, 2, 5, 5, dtype=torch.float64)
    expected = model.double()(x)
    got = normal.double()(x)
    assert (got - expected).abs().max().item() <= 1e-6 * max(1.0, expected.abs().max().item())


def test_gelu_is_refused_with_its_name() -> None:
    model = nn.Sequential(
        OrderedDict(features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.GELU()))
    )
    with pytest.raises(UnsupportedModuleError, match=r"features\.4 \(GELU\)"):
        normalize(model, (1, 4, 4))


@pytest.mark.parametrize(
    ("module", "shape", "fragment"),
    [
        (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)), (2, 5, 5), r"0 \(Conv2d\): grouped"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect")), (1, 5, 5), "padding_mode"),
        (nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), (3,), r"1 \(BatchNorm1d\) follows"),
        (nn.Sequential(nn.BatchNorm1d(3)), (3,), "the input"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm1d(2)), (1, 5, 5), "directly after a Linear"),
        (nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)), (3,), "batch statistics"),
        (nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)), (1, 5, 5), r"0 \(MaxPool2d\)"),
        (nn.Sequential(nn.MaxPool2d(2, dilation=2)), (1, 5, 5), "dilation"),
        (nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), (1, 4, 4), "divisor_override"),
        (nn.Sequential(nn.Flatten(0)), (3,), "Flatten"),
        (nn.Sequential(nn.Tanh()), (3,), r"0 \(Tanh\): only ReLU"),
        (nn.Sequential(nn.LeakyReLU()), (3,), r"LeakyReLU"),
        (nn.Sequential(nn.Conv1d(1, 1, 3)), (1, 5), r"0 \(Conv1d\) is not supported"),
        (nn.Sequential(nn.Conv2d(1, 1, 4, padding="same")), (1, 6, 6), "asymmetrically"),
        (nn.ModuleList([nn.Linear(2, 2)]), (2,), "torch.export"),
    ],
    ids=[
        "grouped-conv", "reflect-padding", "bn-after-relu", "bn-first", "bn2d-kind-mismatch", "bn-batch-stats",
        "maxpool-ceil", "maxpool-dilation", "avgpool-divisor", "flatten-dim0", "tanh", "leaky-relu", "conv1d",
        "same-even-kernel", "module-list",
    ],
)  # fmt: skip
def test_unsupported_modules_are_refused_by_name(module: nn.Module, shape: tuple[int, ...], fragment: str) -> None:
    with pytest.raises(UnsupportedModuleError, match=fragment):
        normalize(module, shape)


def test_custom_forward_is_refused_with_export_hint() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    class Doubling(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    class MyLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x).clamp(min=0)

    for model, name in [
        (nn.Sequential(Residual()), r"0 \(Residual\)"),
        (Doubling(nn.Linear(3, 3)), r"model \(Doubling\)"),
        (nn.Sequential(MyLinear(3, 3)), r"0 \(MyLinear\) overrides forward"),
    ]:
        with pytest.raises(UnsupportedModuleError, match=name) as error:
            normalize(model, (3,))
        assert "torch.export" in str(error.value)


def test_same_and_valid_padding_become_numbers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Conv2d(2, 2, 3, padding="valid", dilation=2))
    normal = normalize(model, (1, 9, 9))
    assert normal[0].padding == (1, 1) and normal[1].padding == (0, 0)


@pytest.mark.parametrize("where", ["weight", "running_var"])
def test_nan_is_a_construction_error_naming_the_tensor(where: str) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        (model[0].weight if where == "weight" else model[1].running_var)[0] = float("nan")
    name = "0.weight" if where == "weight" else "1.running_var"
    with pytest.raises(ConstructionError, match=name.replace(".", r"\.")):
        normalize(model, (2,))


def test_wrong_input_shape_is_a_construction_error() -> None:
    with pytest.raises(ConstructionError, match="per-sample shape"):
        normalize(LeNet5(), (1, 32, 32))
    with pytest.raises(ConstructionError):
        normalize(LeNet5(), ())


def test_target_from_module_records_its_origin() -> None:
    target = Target.from_module(LeNet5(), [1, 28, 28])
    assert (target.arch, target.input_shape, target.source) == ("custom", (1, 28, 28), "<module>")
    assert len(target.module) == 12


# -- torch.export programs --------------------------------------------------------------------------


class _Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 2 * 2, 2, bias=False)
        self.bn_fc = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.bn_fc(self.fc(x.reshape(x.shape[0], -1)))


@pytest.mark.parametrize("decomposed", [False, True], ids=["training-ir", "decomposed"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
def test_export_program_roundtrip_to_normal_form(decomposed: bool, dynamic: bool) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(_Cnn()).eval()
    shapes = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamic else {}
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),), **shapes)
    if decomposed:
        program = program.run_decompositions()
    normal, input_shape = normalize_exported_program(program)
    assert input_shape == (1, 8, 8)
    assert _types(normal) == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear"]
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(normal(x), model(x), rtol=1e-4, atol=1e-5)


def test_export_with_unsupported_op_names_node_and_op() -> None:
    model = nn.Sequential(OrderedDict(fc=nn.Linear(3, 3), act=nn.Tanh())).eval()
    program = torch.export.export(model, (torch.rand(1, 3),))
    with pytest.raises(UnsupportedModuleError, match=r"'tanh'.*aten\.tanh\.default.*'act'"):
        normalize_exported_program(program)


def test_export_with_skip_connection_is_refused() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x)) + x

    program = torch.export.export(Skip().eval(), (torch.rand(1, 3),))
    with pytest.raises(UnsupportedModuleError, match="single chain|feeds several"):
        normalize_exported_program(program)


def test_export_in_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    program = torch.export.export(model, (torch.rand(4, 3),))
    with pytest.raises(UnsupportedModuleError, match="training mode"):
        normalize_exported_program(program)


def test_export_matmul_and_added_biases_become_layers() -> None:
    class Manual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, bias=False)
            self.conv_bias = nn.Parameter(torch.randn(2, 1, 1))
            self.weight = nn.Parameter(torch.randn(4, 18))
            self.bias = nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv(x) + self.conv_bias)
            return x.flatten(1) @ self.weight.t() + self.bias

    model = Manual().eval()
    normal, _ = normalize_exported_program(torch.export.export(model, (torch.rand(2, 1, 5, 5),)))
    assert _types(normal) == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert normal[0].bias is not None and normal[3].bias is not None
    x = torch.rand(3, 1, 5, 5)
    torch.testing.assert_close(normal(x), model(x), rtol=1e-4, atol=1e-5)
