"""The graph-shaped example targets of issue 9 (examples/train_graph_models.py): they export with a dynamic
batch and reload exactly, load as graph targets, and build into tickets whose g follows f.

The models here are the script's classes at tiny widths (the graph, not the size, decides what is built),
untrained, with BatchNorm running statistics moved off their defaults so a wrong fold would show.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from ticketsolver import BuildConfig, VerifyConfig, build_ticket, verify
from ticketsolver.graph import GraphTarget
from ticketsolver.models import load_target

_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_graph_models.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_graph_models", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


graphs = _load_script()

# name -> (tiny model of the script's class, one input sample)
_TINY: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor]]] = {
    "resnet": (lambda: graphs.ResNet(widths=(4, 8, 8)), lambda batch: torch.rand(batch, 3, 32, 32)),
    "mobilenet": (lambda: graphs.MobileNet(widths=(4, 8, 8, 8)), lambda batch: torch.rand(batch, 1, 28, 28)),
    "vit": (lambda: graphs.ViT(dim=8, depth=1, heads=2, hidden=16), lambda batch: torch.rand(batch, 1, 28, 28)),
    "chartransformer": (
        lambda: graphs.CharTransformer(12, context=16, dim=8, heads=2, layers=1, hidden=16),
        lambda batch: torch.randint(0, 12, (batch, 16)),
    ),
}

# the units each tiny model's graph holds, by kind (weighted ops and trained tensors used as such)
_UNITS: dict[str, dict[str, int]] = {
    "resnet": {"conv": 9, "linear": 1},  # every BatchNorm folded into its conv
    "mobilenet": {"conv": 7, "linear": 1},
    "vit": {"conv": 1, "linear": 5, "tensor": 8},  # class token, positions, 3 LayerNorms x (weight, bias)
    "chartransformer": {"embedding": 1, "linear": 5, "tensor": 7},  # positions, 3 LayerNorms x 2
}


def _with_batch_statistics(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """One training-mode forward pass, so BatchNorm running statistics are not the identity's."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        with torch.no_grad():
            model.train()(2.0 * inputs + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, torch.Tensor, Path]]:
    """Each tiny model, inputs of batch 7, and its .pt2 file (exported at batch 2)."""
    folder = tmp_path_factory.mktemp("graphs")
    out: dict[str, tuple[nn.Module, torch.Tensor, Path]] = {}
    for name, (build, sample) in _TINY.items():
        torch.manual_seed(0)
        inputs = sample(7)
        model = _with_batch_statistics(build(), inputs)
        path = folder / f"{name}.pt2"
        torch.export.save(graphs.export_program(model, inputs[:2]), path)
        out[name] = (model, inputs, path)
    return out


@pytest.mark.parametrize("name", sorted(_TINY))
def test_export_round_trips_at_two_batch_sizes(name: str, exported: dict[str, Any]) -> None:
    model, inputs, path = exported[name]
    assert graphs.check_round_trip(path, model, inputs, batches=(3, 7)) <= 1e-5
    program = torch.export.load(path)
    (input_name,) = program.graph_signature.user_inputs
    user_input = next(n for n in program.graph.nodes if n.name == input_name)
    assert isinstance(user_input.meta["val"].shape[0], torch.SymInt)  # the batch is dynamic
    assert all(isinstance(d, int) for d in user_input.meta["val"].shape[1:])  # the rest, time too, is fixed


@pytest.mark.parametrize("name", sorted(_TINY))
def test_load_target_captures_it_as_a_graph_that_computes_the_model(name: str, exported: dict[str, Any]) -> None:
    model, inputs, path = exported[name]
    target = load_target(path)
    assert isinstance(target, GraphTarget)
    kinds: dict[str, int] = {}
    for unit in target.spec.units:
        kinds[unit.kind] = kinds.get(unit.kind, 0) + 1
    assert kinds == _UNITS[name]
    with torch.no_grad():
        expected = model(inputs)
        got = target.network(torch.float32)(inputs)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))


@pytest.mark.parametrize("name", sorted(_TINY))
def test_it_builds_a_pure_ticket_whose_g_follows_f(name: str, exported: dict[str, Any]) -> None:
    _, inputs, path = exported[name]
    target = load_target(path)
    assert isinstance(target, GraphTarget)
    ticket = build_ticket(target, BuildConfig(n=30))
    assert ticket.sizes()["source_kind"] == "iid"
    report = verify(target, ticket, VerifyConfig(n_random=64, worst_case_steps=0, dtypes=("float64",)))
    random = report.sections["random"]["float64"]
    # tiny untrained nets at n = 30: a weight whose ~27 usable coefficients lean one way stays ~0.1 of itself off
    # (the pure source's tail); a wrong graph, fold or unit would be off by O(1)
    assert random.relative_error_max is not None and random.relative_error_max <= 3e-2
    assert random.top1_agreement >= 0.95
    for check in report.layers["float64"]:
        assert check.pair_vs_effective <= 1e-9 * max(1.0, check.max_abs_target), check


def test_resnet18_is_the_standard_cifar_resnet18() -> None:
    model = graphs.resnet18()
    assert abs(graphs.parameter_count(model) - 11.17e6) <= 0.05e6
    assert graphs.parameter_count(model) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(stage) for stage in model.layers] == [2, 2, 2, 2]
    downsamples = [block.downsample[0] for stage in model.layers for block in stage if len(block.downsample._modules)]
    assert [(d.out_channels, d.kernel_size, d.stride) for d in downsamples] == [
        (width, (1, 1), (2, 2)) for width in (128, 256, 512)
    ]


@pytest.mark.slow
def test_resnet18_exports_round_trips_and_loads_as_a_graph(tmp_path: Path) -> None:
    torch.manual_seed(0)
    inputs = torch.rand(5, 3, 32, 32)
    model = _with_batch_statistics(graphs.resnet18(), inputs)
    path = tmp_path / "resnet18.pt2"
    torch.export.save(graphs.export_program(model, inputs[:2]), path)
    assert graphs.check_round_trip(path, model, inputs, batches=(3, 5)) <= 1e-4
    target = load_target(path)
    assert isinstance(target, GraphTarget)
    norms = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # each BatchNorm folded into its conv: its weight and bias become the conv's bias
    assert sum(unit.weights for unit in target.spec.units) == graphs.parameter_count(model) - norms


def test_mobilenet_convs_are_depthwise_then_pointwise() -> None:
    model = graphs.MobileNet()
    for block in model.blocks:
        assert block.depthwise.groups == block.depthwise.in_channels == block.depthwise.out_channels
        assert block.pointwise.kernel_size == (1, 1) and block.pointwise.groups == 1


@pytest.mark.parametrize("name", ["mobilenet", "chartransformer"])
def test_script_trains_exports_and_loads(name: str, tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    try:
        metrics = graphs.main(["--model", name, "--epochs", "2", "--out", str(tmp_path / "model.pt2")])
    finally:
        torch.set_num_threads(previous)  # main sets --threads
    assert (tmp_path / "model.pt2").is_file() and metrics["round_trip_deviation"] <= 1e-4
    assert metrics["refusal"] is None
    if name == "mobilenet":
        # far better than chance (0.1); after one epoch the BatchNorm running statistics still lag (0.10)
        assert metrics["test_accuracy"] > 0.5
    else:
        assert metrics["validation_loss"] < math.log(95)  # better than a uniform guess over the 95 characters
