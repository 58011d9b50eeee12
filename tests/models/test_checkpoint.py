"""load_target: state_dicts, safetensors and torch.export programs; corrupt and hostile files refused."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ticketsolver.errors import CheckpointError, ConstructionError, UnsupportedModuleError
from ticketsolver.models import MLP, LeNet5, load_target


class _WritesMarker:
    """A pickle payload: unpickling it would create the marker file (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


class _BnCnn(nn.Module):
    """Custom forward with BatchNorm, stride 2 and average pooling: only readable via torch.export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def _randomise_bn(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator))
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(_BnCnn())


@pytest.fixture(scope="module")
def cnn_pt2(cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    program = torch.export.export(cnn, (torch.rand(2, 1, 12, 12),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, path)
    return path


def _rewrite_pt2(
    source: Path, target: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None
) -> Path:
    """Copy a .pt2 archive member by member, letting ``edit`` replace contents (None keeps them)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        root = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            data = src.read(info.filename)
            relative = info.filename.split("/", 1)[1]
            out.writestr(info.filename, edit(relative, data) or data)
        for relative, data in (add or {}).items():
            out.writestr(f"{root}/{relative}", data)
    return target


def _pickled(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# -- state dicts ------------------------------------------------------------------------------------


def test_lenet5_state_dict_loads_to_an_equivalent_normal_form(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LeNet5().eval()
    torch.save(model.state_dict(), tmp_path / "lenet5.pt")
    target = load_target(tmp_path / "lenet5.pt")
    assert (target.arch, target.input_shape, target.source) == ("lenet5", (1, 28, 28), "lenet5.pt")
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(target.module(x), model(x))


def test_state_dict_nested_under_state_dict_key_is_accepted(tmp_path: Path) -> None:
    model = MLP((8, 6, 3)).eval()
    torch.save({"epoch": 3, "model_state_dict": model.state_dict()}, tmp_path / "run.ckpt")
    target = load_target(tmp_path / "run.ckpt", arch="mlp")
    assert (target.arch, target.input_shape) == ("mlp", (8,))


def test_safetensors_loads_despite_sorted_keys(tmp_path: Path) -> None:
    model = LeNet5(batch_norm=True)
    _randomise_bn(model)
    save_file(model.state_dict(), tmp_path / "lenet5.safetensors")
    target = load_target(tmp_path / "lenet5.safetensors")
    assert target.arch == "lenet5"
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(target.module(x), model(x), rtol=1e-4, atol=1e-5)


def test_pickle_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2, 2), "evil": _WritesMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="pickled objects"):
        load_target(tmp_path / "evil.pt")
    assert not marker.exists()


def test_pickle_payload_in_legacy_format_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(_WritesMarker(marker), tmp_path / "evil.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError):
        load_target(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(4096), b"PK\x03\x04" + os.urandom(64)],
    ids=["empty", "random-bytes", "broken-zip-header"],
)
def test_corrupt_files_are_checkpoint_errors(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(CheckpointError):
        load_target(tmp_path / "bad.pt")


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(LeNet5().state_dict(), buffer)
    (tmp_path / "cut.pt").write_bytes(buffer.getvalue()[: buffer.tell() // 2])
    with pytest.raises(CheckpointError):
        load_target(tmp_path / "cut.pt")


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_target(tmp_path / "nope.pt")


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    torch.save(LeNet5().state_dict(), tmp_path / "big.pt")

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", no_open)
    with pytest.raises(CheckpointError, match="limit"):
        load_target(tmp_path / "big.pt", max_bytes=1000)


@pytest.mark.parametrize(
    "state_dict",
    [
        {"w": torch.zeros(3, 2, dtype=torch.int64), "b": torch.zeros(3, dtype=torch.int64)},
        {"w": torch.zeros(3, 2), "b": torch.zeros(3), "junk": torch.zeros(7, 7, 7)},
        {"w": torch.zeros(3, 2), "b": torch.zeros(4)},
        {"w": torch.zeros(3, 2), "note": "hello"},
        {},
    ],
    ids=["integer-dtype", "stray-rank-3", "bias-of-wrong-size", "non-tensor", "empty"],
)
def test_tensors_of_wrong_dtype_or_shape_are_checkpoint_errors(tmp_path: Path, state_dict: dict) -> None:
    torch.save(state_dict, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError):
        load_target(tmp_path / "odd.pt")


def test_nan_weights_are_a_typed_error(tmp_path: Path) -> None:
    state_dict = MLP((4, 3, 2)).state_dict()
    state_dict["2.weight"][0, 0] = float("nan")
    torch.save(state_dict, tmp_path / "nan.pt")
    with pytest.raises((ConstructionError, CheckpointError), match="NaN"):
        load_target(tmp_path / "nan.pt")


def test_mismatched_arch_is_an_error(tmp_path: Path) -> None:
    torch.save(MLP((64, 500, 10)).state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(CheckpointError, match="mismatched --arch lenet5") as error:
        load_target(tmp_path / "mlp.pt", arch="lenet5")
    assert "expected" in str(error.value) and "linear(500, 64)" in str(error.value)


# -- torch.export programs --------------------------------------------------------------------------


def test_export_program_roundtrip_to_normal_form(cnn: nn.Module, cnn_pt2: Path) -> None:
    target = load_target(cnn_pt2)
    assert (target.arch, target.input_shape, target.source) == ("export", (1, 12, 12), "cnn.pt2")
    assert [type(m).__name__ for m in target.module] == ["Conv2d", "ReLU", "AvgPool2d", "Flatten", "Linear"]
    x = torch.rand(5, 1, 12, 12)
    torch.testing.assert_close(target.module(x), cnn(x), rtol=1e-4, atol=1e-5)


def test_arch_other_than_export_for_a_program_is_an_error(cnn_pt2: Path) -> None:
    with pytest.raises(CheckpointError, match="mismatched --arch"):
        load_target(cnn_pt2, arch="lenet5")


class _CumulativeSum(nn.Module):
    """An op neither a chain nor a graph takes (aten.cumsum: no replay rule)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=-1)


def test_program_with_unsupported_op_names_node_and_op(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), _CumulativeSum(), nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.rand(1, 4),)), tmp_path / "cumsum.pt2")
    with pytest.raises(UnsupportedModuleError, match=r"'cumsum'.*aten\.cumsum\.default"):
        load_target(tmp_path / "cumsum.pt2")


def test_an_unsupported_node_is_refused_with_the_module_that_holds_it(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(_CumulativeSum()), nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.rand(1, 4),)), tmp_path / "cumsum.pt2")
    with pytest.raises(
        UnsupportedModuleError, match=r"node 'cumsum' \[aten\.cumsum\.default from module '1\.0' \(_CumulativeSum\)\]"
    ):
        load_target(tmp_path / "cumsum.pt2")


def test_graph_ops_load_as_a_graph_target(tmp_path: Path) -> None:
    """GELU and ReLU6 are not chain layers; such a program loads as a graph (ticketsolver.graph)."""
    from ticketsolver.graph import GraphTarget

    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4), nn.ReLU6(), nn.Linear(4, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.rand(1, 4),)), tmp_path / "gelu.pt2")
    target = load_target(tmp_path / "gelu.pt2")
    assert isinstance(target, GraphTarget) and [u.kind for u in target.spec.units] == ["linear"] * 3


def test_a_module_path_with_control_characters_is_not_quoted(tmp_path: Path) -> None:
    """The path comes from the file: a forged one with a terminal escape is left out, the op is still named."""
    model = nn.Sequential(nn.Linear(4, 4), _CumulativeSum()).eval()
    torch.export.save(torch.export.export(model, (torch.rand(1, 4),)), tmp_path / "cumsum.pt2")

    def edit(name: str, data: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        program = json.loads(data)
        for node in program["graph_module"]["graph"]["nodes"]:
            node.setdefault("metadata", {})["nn_module_stack"] = "L__self__,\x1b[2Jevil,torch.nn.Identity"
        return json.dumps(program).encode()

    with pytest.raises(UnsupportedModuleError) as refusal:
        load_target(_rewrite_pt2(tmp_path / "cumsum.pt2", tmp_path / "forged.pt2", edit))
    assert "[aten.cumsum.default]" in str(refusal.value) and "\x1b" not in str(refusal.value)


def test_pt2_with_pickled_sample_inputs_is_refused_and_never_runs(cnn_pt2: Path, tmp_path: Path) -> None:
    # torch.export.load retries such a file with weights_only=False and runs the payload.
    marker = tmp_path / "pwned"
    payload = _pickled(((_WritesMarker(marker),), {}))
    evil = _rewrite_pt2(cnn_pt2, tmp_path / "evil.pt2", lambda n, d: payload if n.startswith("data/sample_") else None)
    with pytest.raises(CheckpointError, match="sample inputs"):
        load_target(evil)
    assert not marker.exists()


def test_pt2_with_pickled_weight_is_refused_and_never_runs(cnn_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    def edit(name: str, data: bytes) -> bytes | None:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        if name == "data/weights/weight_0":
            return _pickled(_WritesMarker(marker))
        return None

    with pytest.raises(CheckpointError, match="pickled"):
        load_target(_rewrite_pt2(cnn_pt2, tmp_path / "evil.pt2", edit))
    assert not marker.exists()


def test_pt2_with_aotinductor_binary_is_refused(cnn_pt2: Path, tmp_path: Path) -> None:
    evil = _rewrite_pt2(
        cnn_pt2, tmp_path / "aoti.pt2", lambda n, d: None, {"data/aotinductor/model/evil.so": b"\x7fELF"}
    )
    with pytest.raises(CheckpointError, match="data/aotinductor"):
        load_target(evil)


def test_pt2_with_code_in_a_symbolic_expression_is_refused_and_never_runs(cnn_pt2: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    code = f"__import__('builtins').open('{marker}', 'w')"

    def edit(name: str, data: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        text = data.decode()
        assert '"expr_str": "' in text  # the dynamic batch dimension is a symbolic expression
        start = text.index('"expr_str": "') + len('"expr_str": ')
        end = text.index('"', start + 1) + 1
        return (text[:start] + json.dumps(code) + text[end:]).encode()

    with pytest.raises(CheckpointError, match="symbolic expression"):
        load_target(_rewrite_pt2(cnn_pt2, tmp_path / "evil.pt2", edit))
    assert not marker.exists()


def test_pt2_with_guard_code_is_refused(cnn_pt2: Path, tmp_path: Path) -> None:
    def edit(name: str, data: bytes) -> bytes | None:
        if name != "models/model.json":
            return None
        program = json.loads(data)
        program["guards_code"] = ["__import__('os').system('true')"]
        return json.dumps(program).encode()

    with pytest.raises(CheckpointError, match="guard"):
        load_target(_rewrite_pt2(cnn_pt2, tmp_path / "evil.pt2", edit))


def test_truncated_pt2_is_a_checkpoint_error(cnn_pt2: Path, tmp_path: Path) -> None:
    data = cnn_pt2.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_target(tmp_path / "cut.pt2")
