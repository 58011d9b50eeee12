"""Each op kind a graph builds from random pairs, on a tiny network of its own: captured exactly, built (pure, L),
every pair equal to its effective layer and g equal to its effective-weights network in float64, g close to f."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver import BuildConfig, Ticket, build_ticket
from ticketsolver.graph import GraphTarget, PairUnit, capture_program
from ticketsolver.graph.boxes import calibration_inputs
from ticketsolver.graph.effective import effective_network

N = 20


def capture(module: nn.Module, example: torch.Tensor) -> GraphTarget:
    torch.manual_seed(0)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return capture_program(program, type(module).__name__)


class TokenMLP(nn.Module):
    """Linear on a rank-3 tensor (batch, time, features) with a bias added outside the Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4, bias=False)
        self.offset = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x) + self.offset)


class Grouped(nn.Module):
    """A grouped conv (4 groups) and a depthwise conv (groups = channels), with BatchNorm folded into each."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(F.relu6(self.bn(self.grouped(x))))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1, dilation=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(-1)


class Embed(nn.Module):
    """An embedding of int64 token ids plus learned positions, then a LayerNorm with its affine terms."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(11, 6)
        self.positions = nn.Parameter(torch.randn(1, 5, 6))
        self.norm = nn.LayerNorm(6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.embedding(ids) + self.positions)


def _perturb(module: nn.Module) -> nn.Module:
    """Move every parameter and BatchNorm statistic off its initial value (a wrong fold or unit would show)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
    return module


CASES = {
    "linear-rank3": (TokenMLP, lambda b: torch.randn(b, 3, 5), ["linear", "tensor"]),
    "grouped-depthwise": (Grouped, lambda b: torch.rand(b, 4, 6, 6), ["conv", "conv"]),
    "conv1d": (Conv1dNet, lambda b: torch.randn(b, 3, 7), ["conv"]),
    "embedding": (Embed, lambda b: torch.randint(0, 11, (b, 5)), ["embedding", "tensor", "tensor", "tensor"]),
}


@functools.cache
def _built(name: str) -> tuple[str, nn.Module, GraphTarget, Ticket]:
    build, sample, _ = CASES[name]
    torch.manual_seed(0)
    module = _perturb(build()).eval()
    target = capture(module, sample(2))
    return name, module, target, build_ticket(target, BuildConfig(n=N))


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module, GraphTarget, Ticket]:
    return _built(request.param)


def test_capture_computes_what_the_module_computes_in_float64(built: tuple) -> None:
    name, module, target, _ = built
    _, sample, kinds = CASES[name]
    assert [u.kind for u in target.spec.units] == kinds
    x = sample(9)
    expected = module.double()(x if not x.is_floating_point() else x.double())
    module.float()
    got = target.network(torch.float64)(x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_grouped_convs_keep_their_groups_one_pair_per_group() -> None:
    _, _, _, ticket = _built("grouped-depthwise")
    grouped, depthwise = ticket.graph.units
    assert (grouped.groups, len(grouped.pairs)) == (4, 4) and (depthwise.groups, len(depthwise.pairs)) == (8, 8)
    assert grouped.folded == ("bn",)  # the BatchNorm after the grouped conv is folded into it
    assert all(ticket.layouts[p].kind == "conv2d" and ticket.layouts[p].d_out == 2 for p in grouped.pairs)
    assert all(ticket.layouts[p].d_in == 9 for p in depthwise.pairs)  # one channel, 3x3 taps


def test_every_pair_equals_its_effective_layer_in_float64(built: tuple) -> None:
    _, _, target, ticket = built
    g = ticket.to_module().double()
    x = calibration_inputs(target, (-6.0, 6.0))[:64]
    seen: dict[int, torch.Tensor | None] = {}
    f = target.network(torch.float64)
    f.hook = lambda k, h: seen.__setitem__(k, h)
    with torch.no_grad():
        f(x)
    from ticketsolver.verification.graph import check_units

    checks = check_units(f, g, x, "float64")
    assert len(checks) == len(target.spec.units)
    for check in checks:
        assert check.outside_linear_region == 0
        assert check.pair_vs_effective_relative <= 1e-10, check


def test_g_equals_its_effective_weights_network_and_is_close_to_f(built: tuple) -> None:
    _, _, target, ticket = built
    g = ticket.to_module().double()
    assert all(isinstance(unit, PairUnit) for unit in g.units)
    effective = effective_network(g)
    x = calibration_inputs(target, (-6.0, 6.0))[:64]
    if x.is_floating_point():
        x = x.double()
    with torch.no_grad():
        out, eff, ref = g(x), effective(x), target.network(torch.float64)(x)
    scale = ref.abs().max()
    assert float((out - eff).abs().max() / scale) <= 1e-10
    assert float((out - ref).abs().max() / scale) <= 1e-2  # n = 20 from a pure source


def test_no_trained_tensor_is_held_by_g(built: tuple) -> None:
    _, _, target, ticket = built
    g = ticket.to_module()
    trained = [t.float().reshape(-1) for unit in target.tensors for t in unit.values()]
    for name, tensor in [*g.named_parameters(), *g.named_buffers()]:
        flat = tensor.detach().reshape(-1)
        for t in trained:
            assert flat.numel() != t.numel() or not torch.allclose(flat, t, rtol=1e-3, atol=1e-6), name


def test_ticket_round_trip_keeps_the_graph_and_outputs(built: tuple, tmp_path) -> None:
    _, _, target, ticket = built
    loaded = Ticket.load(ticket.save(tmp_path / "t.ticket"))
    assert loaded.graph == ticket.graph
    x = calibration_inputs(target, (-6.0, 6.0))[:8]
    with torch.no_grad():
        assert torch.equal(loaded.to_module()(x), ticket.to_module()(x))


def test_a_graph_build_resumes_from_its_stored_pairs(tmp_path) -> None:
    _, _, target, _ = _built("grouped-depthwise")
    first = build_ticket(target, BuildConfig(n=N), resume_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) >= len(first.layouts)  # every pair stored
    again = build_ticket(target, BuildConfig(n=N), resume_dir=tmp_path)
    assert again.kept_hash() == first.kept_hash()
    # reused, not solved again: each pair's recorded solve time is the stored one
    assert [p["seconds"] for p in again.build["pairs"]] == [p["seconds"] for p in first.build["pairs"]]
