"""Interval bounds of every unit's input (ticketsolver.graph.intervals): sound on small captured graphs of each op
family (2000 random inputs of the box never leave them), tight where a LayerNorm or a ReLU6 bounds the values by
itself, None downstream of an op the analysis cannot bound, and finite on the example models."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.graph import GraphTarget, capture_program
from ticketsolver.graph import intervals as intervals_module
from ticketsolver.graph.capture import sample_inputs
from ticketsolver.graph.intervals import G_MARGIN_REL, unit_input_intervals
from ticketsolver.graph.network import unit_input_hook

_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_graph_models.py"


def capture(module: nn.Module, example: torch.Tensor) -> GraphTarget:
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return capture_program(program, type(module).__name__)


# -- the small graphs ---------------------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """Linear, GELU, LayerNorm (trained affine terms), a residual add, SiLU, a division by a positive activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 3)
        with torch.no_grad():
            nn.init.uniform_(self.norm.weight, -1.5, 1.5)
            nn.init.uniform_(self.norm.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x))
        h = h + F.silu(self.fc2(self.norm(h)))
        return self.fc3(h / (torch.sigmoid(h) + 1.0))


class DepthwiseCNN(nn.Module):
    """Conv + BatchNorm (folded) + ReLU6, a depthwise conv (groups = channels) + BatchNorm + ReLU6, a pointwise conv,
    adaptive average pool, and a BatchNorm with no conv before it (kept as x * scale + shift tensor units)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.depthwise = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
        self.bn2 = nn.BatchNorm2d(6)
        self.pointwise = nn.Conv2d(6, 8, 1)
        self.bn3 = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2, self.bn3):
                assert bn.running_mean is not None and bn.running_var is not None
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn1(self.conv(x)))
        h = F.relu6(self.bn2(self.depthwise(h)))
        h = F.relu6(self.pointwise(h))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(self.bn3(h))


class TinyAttention(nn.Module):
    """Patches through a Linear, a class token and learned positions, LayerNorm, attention twice (scaled dot
    product, and softmax(q k^T) v written out), a residual add, the class token's head."""

    def __init__(self, tokens: int = 5, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.patch = nn.Linear(4, dim)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.positions = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens = x.shape[0], x.shape[1] + 1
        t = torch.cat([self.class_token.expand(batch, -1, -1), self.patch(x)], dim=1) + self.positions
        q, k, v = self.qkv(self.norm(t)).reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        fused = F.scaled_dot_product_attention(q, k, v)
        written = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1) @ v
        a = (fused + written).transpose(1, 2).reshape(batch, tokens, self.dim)
        t = t + self.proj(a)
        return self.head(t[:, 0])


class TokenConv(nn.Module):
    """int64 ids through an embedding and learned positions, tanh, a grouped conv1d, sigmoid, a mean over time."""

    def __init__(self, vocab: int = 20, context: int = 12) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, 8)
        self.positions = nn.Parameter(torch.randn(1, context, 8))
        self.conv = nn.Conv1d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embedding(ids) + self.positions).transpose(1, 2)
        h = torch.sigmoid(self.conv(h) - 0.5) / 2
        return self.fc(h.mean(-1))


class Quotient(nn.Module):
    """fc1(x) / fc2(x): fc2's output may be 0 in the box, so nothing after the division can be bounded."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(3, 4)
        self.fc3 = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc1(x)) / self.fc2(x))


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    example: Callable[[], torch.Tensor]
    box: tuple[float, float]


CASES: dict[str, Case] = {
    "mlp": Case(ResidualMLP, lambda: torch.rand(2, 6), (-1.0, 2.0)),
    "cnn": Case(DepthwiseCNN, lambda: torch.rand(2, 2, 8, 8), (0.0, 1.0)),
    "attention": Case(TinyAttention, lambda: torch.rand(2, 5, 4), (-1.0, 1.0)),
    "tokens": Case(TokenConv, lambda: torch.randint(0, 20, (2, 12)), (0.0, 1.0)),
}


@pytest.fixture(scope="module")
def targets() -> dict[str, GraphTarget]:
    out = {}
    for name, case in CASES.items():
        torch.manual_seed(0)
        out[name] = capture(case.build(), case.example())
    return out


# -- helpers ------------------------------------------------------------------------------------------------------
def observed_columns(
    target: GraphTarget, box: tuple[float, float], count: int, seed: int = 1
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per linear or conv unit: the least and the largest value of each input column over ``count`` random inputs
    of the box (uniform values, or uniform token ids), f run in float64."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(k: int, x: torch.Tensor | None) -> None:
        unit = target.spec.units[k]
        if x is None or unit.kind in ("embedding", "tensor"):
            return
        values = x.detach().double()
        columns = values.reshape(-1, values.shape[-1]).T if unit.kind == "linear" else values.transpose(0, 1)
        columns = columns.reshape(columns.shape[0], -1)
        lo, hi = columns.amin(1), columns.amax(1)
        if k in seen:
            lo, hi = torch.minimum(seen[k][0], lo), torch.maximum(seen[k][1], hi)
        seen[k] = (lo, hi)

    network = unit_input_hook(target.network(torch.float64), record)
    inputs = sample_inputs(target.spec, count, torch.Generator().manual_seed(seed), box)
    with torch.no_grad():
        for start in range(0, count, 500):
            network(inputs[start : start + 500])
    return seen


def known(bounds: list[tuple[torch.Tensor, torch.Tensor] | None], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    value = bounds[k]
    assert value is not None, f"unit {k} got no bounds"
    return value


def assert_sound(target: GraphTarget, box: tuple[float, float], count: int) -> None:
    bounds = unit_input_intervals(target, box)
    assert len(bounds) == len(target.spec.units)
    seen = observed_columns(target, box, count)
    for k, unit in enumerate(target.spec.units):
        if unit.kind in ("embedding", "tensor"):
            assert bounds[k] is None
            continue
        lo, hi = known(bounds, k)
        columns = unit.weight_shape[1] * (unit.groups if unit.kind == "conv" else 1)
        assert lo.shape == hi.shape == (columns,) and lo.dtype == torch.float64
        assert bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
        low, high = seen[k]
        assert bool((lo <= low).all()), f"unit {k} ({unit.path}): {low - lo}"
        assert bool((high <= hi).all()), f"unit {k} ({unit.path}): {hi - high}"


def unit_index(target: GraphTarget, path: str) -> int:
    return next(k for k, unit in enumerate(target.spec.units) if unit.path == path)


# -- 1. soundness ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_observed_unit_input_lies_in_its_bounds(name: str, targets: dict[str, GraphTarget]) -> None:
    assert_sound(targets[name], CASES[name].box, 2000)


def test_the_box_corners_and_a_narrow_box_stay_inside(targets: dict[str, GraphTarget]) -> None:
    """The extremes of the box (every element at one end) and a box of width 0 (one input) are inside too."""
    target = targets["cnn"]
    bounds = unit_input_intervals(target, (0.0, 1.0))
    seen: dict[float, dict[int, torch.Tensor]] = {0.0: {}, 1.0: {}}
    for corner, inputs in seen.items():

        def record(k: int, x: torch.Tensor | None, into: dict[int, torch.Tensor] = inputs) -> None:
            if x is not None:
                into[k] = x

        network = unit_input_hook(target.network(torch.float64), record)
        with torch.no_grad():
            network(torch.full((1, *target.spec.input_shape), corner, dtype=torch.float64))
        for k, x in inputs.items():
            if target.spec.units[k].kind == "tensor":
                continue
            lo, hi = known(bounds, k)
            values = x.transpose(0, 1).reshape(x.shape[1], -1)
            assert bool((lo[:, None] <= values).all() and (values <= hi[:, None]).all())
    assert_sound(targets["mlp"], (0.25, 0.25), 4)
    lo, hi = known(unit_input_intervals(targets["mlp"], (0.25, 0.25)), unit_index(targets["mlp"], "fc1"))
    assert bool((lo == 0.25).all() and (hi == 0.25).all())


# -- 2. tightness where the graph bounds values by itself ---------------------------------------------------------
def test_a_layer_norm_bounds_the_next_unit_by_sqrt_m_minus_1(targets: dict[str, GraphTarget]) -> None:
    target = targets["mlp"]
    k = unit_index(target, "fc2")
    lo, hi = known(unit_input_intervals(target, (-1.0, 2.0)), k)
    gamma = next(t["weight"] for t, u in zip(target.tensors, target.spec.units, strict=True) if u.path == "norm.weight")
    beta = next(t["weight"] for t, u in zip(target.tensors, target.spec.units, strict=True) if u.path == "norm.bias")
    limit = math.sqrt(16 - 1) * float(gamma.abs().max()) + float(beta.abs().max())
    assert float(torch.maximum(lo.abs(), hi.abs()).max()) <= limit * (1 + 1e-3)
    # and column by column: sqrt(m - 1) |gamma_i| + |beta_i|, up to the widening of the tensor units
    per_column = math.sqrt(15) * gamma.abs() + beta.abs()
    assert bool((torch.maximum(lo.abs(), hi.abs()) <= per_column * (1 + 4 * G_MARGIN_REL) + 1e-6).all())


def test_relu6_bounds_the_next_unit_to_0_6(targets: dict[str, GraphTarget]) -> None:
    target = targets["cnn"]
    bounds = unit_input_intervals(target, (0.0, 1.0))
    for path in ("depthwise", "pointwise"):
        lo, hi = known(bounds, unit_index(target, path))
        assert float(lo.min()) >= 0.0
        assert float(hi.max()) <= 6.0 + 1e-6
    first = known(bounds, unit_index(target, "conv"))
    assert torch.equal(first[0], torch.zeros(2, dtype=torch.float64))  # the input box itself
    assert torch.equal(first[1], torch.ones(2, dtype=torch.float64))


class NormThenLinear(nn.Module):
    """LayerNorm (trained affine terms), then two Linears: the second reads W (z * gamma + beta) + b."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 2)
        with torch.no_grad():
            nn.init.uniform_(self.norm.weight, -1.5, 1.5)
            nn.init.uniform_(self.norm.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.norm(x)))


def test_a_linear_after_a_layer_norm_is_bounded_by_its_rows_norm() -> None:
    """Rows z of a LayerNorm have sum z = 0 and sum z^2 <= m, so W (z * gamma + beta) + b lies within
    sqrt(m) ||a - mean(a)|| of W beta + b, a a row of W diag(gamma): far inside the interval bound
    sqrt(m - 1) |W| |gamma|, which the analysis would give from the LayerNorm's per-element bounds alone."""
    torch.manual_seed(0)
    model = NormThenLinear()
    target = capture(model, torch.rand(2, 16))
    lo, hi = known(unit_input_intervals(target, (-1.0, 1.0)), unit_index(target, "fc2"))
    weight, bias = model.fc1.weight.double(), model.fc1.bias.double()
    gamma, beta = model.norm.weight.double(), model.norm.bias.double()
    rows = weight * gamma
    half = math.sqrt(16) * (rows - rows.mean(1, keepdim=True)).norm(dim=1)
    centre = weight @ beta + bias
    slack = 1e-3 * (half + centre.abs())  # the widening of the tensor units and of fc1's output
    assert bool(((lo - (centre - half)).abs() <= slack).all())
    assert bool(((hi - (centre + half)).abs() <= slack).all())
    interval = math.sqrt(15) * rows.abs().sum(1)
    assert bool((half < 0.6 * interval).all())
    assert_sound(target, (-1.0, 1.0), 2000)


# -- 3. an op without a rule ---------------------------------------------------------------------------------------
def test_units_after_a_division_by_an_interval_holding_zero_get_none() -> None:
    torch.manual_seed(0)
    target = capture(Quotient(), torch.rand(2, 3))
    bounds = unit_input_intervals(target, (-1.0, 1.0))
    by_path = {unit.path: bounds[k] for k, unit in enumerate(target.spec.units)}
    assert by_path["fc1"] is not None and by_path["fc2"] is not None
    assert by_path["fc3"] is None


def test_units_after_an_op_without_a_rule_get_none(
    targets: dict[str, GraphTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = targets["mlp"]
    monkeypatch.delitem(intervals_module._RULES, "aten.gelu.default")
    bounds = unit_input_intervals(target, (-1.0, 2.0))
    by_path = {unit.path: bounds[k] for k, unit in enumerate(target.spec.units) if unit.kind == "linear"}
    assert by_path["fc1"] is not None  # upstream of the GELU
    assert by_path["fc2"] is None and by_path["fc3"] is None


def test_an_op_name_no_rule_knows_makes_its_users_unknown(targets: dict[str, GraphTarget]) -> None:
    target = targets["cnn"]
    nodes = tuple(
        {**node, "op": "aten.future_op.default"} if node["op"] == "aten.adaptive_avg_pool2d.default" else node
        for node in target.spec.nodes
    )
    changed = replace(target, spec=replace(target.spec, nodes=nodes))
    bounds = unit_input_intervals(changed, (0.0, 1.0))
    assert bounds[unit_index(target, "pointwise")] is not None
    assert bounds[unit_index(target, "fc")] is None


def test_no_box_bounds_nothing_that_reads_the_input(targets: dict[str, GraphTarget]) -> None:
    assert all(b is None for b in unit_input_intervals(targets["mlp"], None))
    with pytest.raises(ValueError):
        unit_input_intervals(targets["mlp"], (1.0, 0.0))


# -- 4. the example models -----------------------------------------------------------------------------------------
def _example_script():  # type: ignore[no-untyped-def]
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("train_graph_models_for_intervals", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["vit", "mobilenet", "chartransformer", "resnet"])
def test_the_example_models_get_finite_sound_bounds(name: str) -> None:
    """The example script's networks (default sizes, untrained, seeded), exported as the script exports them."""
    graphs = _example_script()
    torch.manual_seed(0)
    if name == "chartransformer":
        model, example = graphs.CharTransformer(95), torch.randint(0, 95, (2, 64))
    else:
        model = graphs.RECIPES[name].build(10)
        example = torch.rand(2, 3, 32, 32) if name == "resnet" else torch.rand(2, 1, 28, 28)
    target = capture_program(graphs.export_program(model, example), name)
    bounds = unit_input_intervals(target, (0.0, 1.0))
    assert all(
        (b is not None) == (u.kind in ("linear", "conv")) for b, u in zip(bounds, target.spec.units, strict=True)
    )
    assert_sound(target, (0.0, 1.0), 64)
