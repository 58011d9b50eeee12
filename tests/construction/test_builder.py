"""Whole builds: small MLPs and CNNs, BatchNorm folding, refusals, resuming (config rules: tests/test_config.py).

References: the target network itself (float64), the network of effective weights (what the masks realise,
exact), per-layer bounds from the reported per-weight errors, and BatchNorm folded by hand.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver import (
    BuildConfig,
    ConfigError,
    ConstructionError,
    Target,
    Ticket,
    UnsupportedModuleError,
    build_ticket,
    get_solver,
)
from ticketsolver.construction import PrunedPair
from ticketsolver.solvers import Solver


def effective_network(ticket: Ticket) -> nn.Sequential:
    """The ticket's network with every pair replaced by its effective-weights layer (float64)."""
    modules = [m.effective(torch.float64) if isinstance(m, PrunedPair) else m for m in ticket.to_module()]
    return nn.Sequential(*modules).double().eval()


def inputs(shape: tuple[int, ...], count: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_pairs_follow_their_layers(target: nn.Sequential, ticket: Ticket, x: torch.Tensor) -> None:
    """On the target's own activations, |pair - layer| <= max weight error * receptive |x| + max bias error."""
    network = ticket.to_module().double()
    target = copy.deepcopy(target).double()
    reports = iter(ticket.build["pairs"])
    assert len(network) == len(target)
    for module, step in zip(target, network, strict=True):
        if isinstance(step, PrunedPair):
            report = next(reports)
            if isinstance(module, nn.Linear):
                reach = x.abs().sum(-1, keepdim=True)
            else:
                ones = torch.ones_like(module.weight[:1])
                reach = F.conv2d(x.abs(), ones, None, module.stride, module.padding, module.dilation)
            bound = report["weight_error_max"] * reach + report.get("bias_error_max", 0.0)
            assert ((step(x) - module(x)).abs() <= bound * (1 + 1e-9) + 1e-12).all()
        x = module(x)


# -- whole builds ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_ticket_network_is_exactly_its_effective_weights_network(which: str, request: pytest.FixtureRequest) -> None:
    net, ticket = request.getfixturevalue(which), request.getfixturevalue(f"{which}_ticket")
    x = inputs(net.input_shape)
    g = ticket.to_module().double()(x)
    expected = effective_network(ticket)(x)
    assert (g - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_every_pair_follows_its_target_layer_within_the_reported_errors(
    which: str, request: pytest.FixtureRequest
) -> None:
    net, ticket = request.getfixturevalue(which), request.getfixturevalue(f"{which}_ticket")
    target = Target.from_module(net.module, net.input_shape).module  # BatchNorm folded, as the builder saw it
    assert_pairs_follow_their_layers(target, ticket, inputs(net.input_shape))


def propagated_error_bound(target: nn.Sequential, ticket: Ticket, x: torch.Tensor) -> torch.Tensor:
    """Per sample and output, a bound on |f - g| implied by the reported per-weight errors.

    Through each pair: delta' = |W'| delta + eps, where eps bounds |pair - layer| on the target's own
    activations (max weight error * receptive sum of |x| + max bias error) and |W'| is the absolute effective
    weight (I: max(|W+|, |W-|)). ReLU, pooling and flatten map delta through themselves: none expands it.
    """
    target = copy.deepcopy(target).double()
    reports = iter(ticket.build["pairs"])
    delta = torch.zeros_like(x)
    for module, step in zip(target, effective_network(ticket), strict=True):
        if isinstance(module, nn.Linear | nn.Conv2d):
            report = next(reports)
            weight = step.weight_pos.abs()
            if step.weight_neg is not None:
                weight = torch.maximum(weight, step.weight_neg.abs())
            if isinstance(module, nn.Linear):
                reach = x.abs().sum(-1, keepdim=True)
                delta = F.linear(delta, weight)
            else:
                ones = torch.ones_like(module.weight[:1])
                reach = F.conv2d(x.abs(), ones, None, module.stride, module.padding, module.dilation)
                delta = F.conv2d(delta, weight, None, module.stride, module.padding, module.dilation)
            delta = delta + report["weight_error_max"] * reach + report.get("bias_error_max", 0.0)
        else:
            delta = module(delta)
        x = module(x)
    return delta


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_ticket_stays_within_the_error_bound_of_its_per_weight_errors(
    which: str, request: pytest.FixtureRequest
) -> None:
    net, ticket = request.getfixturevalue(which), request.getfixturevalue(f"{which}_ticket")
    target = Target.from_module(net.module, net.input_shape).module
    x = inputs(net.input_shape)
    f = copy.deepcopy(target).double()(x)
    g = ticket.to_module().double()(x)
    bound = propagated_error_bound(target, ticket, x)
    assert ((f - g).abs() <= bound * (1 + 1e-9) + 1e-12).all()


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_ticket_computes_what_the_target_computes(which: str, request: pytest.FixtureRequest) -> None:
    net, ticket = request.getfixturevalue(which), request.getfixturevalue(f"{which}_ticket")
    x = inputs(net.input_shape).float()
    f = net.module(x)  # the original module, BatchNorm and all
    g = ticket.to_module()(x)
    assert g.shape == f.shape and g.dtype == torch.float32
    assert (f - g).abs().max().item() < 5e-2 * f.abs().max().item()  # n = 24, 8 redraws: ~1e-2 at worst
    assert (f.argmax(1) == g.argmax(1)).float().mean().item() >= 0.9


def test_mlp_ticket_structure(mlp: Any, mlp_ticket: Ticket) -> None:
    assert [layout.construction for layout in mlp_ticket.layouts] == ["input_blocks", "output_blocks", "output_blocks"]
    assert [step["op"] for step in mlp_ticket.steps] == ["pair", "relu", "pair", "relu", "pair"]
    assert [(layout.d_out, layout.d_in, layout.n) for layout in mlp_ticket.layouts] == [
        (8, 5, 24),
        (6, 8, 24),
        (3, 6, 24),
    ]
    sizes = mlp_ticket.sizes()
    assert sizes["target_params"] == sum(p.numel() for p in mlp.module.parameters())
    assert mlp_ticket.build["config"]["n"] == 24 and mlp_ticket.build["config"]["resample"] == 8
    assert mlp_ticket.build["arch"] == "custom"


def test_cnn_ticket_structure(cnn_ticket: Ticket) -> None:
    assert [step["op"] for step in cnn_ticket.steps] == ["pair", "relu", "pair", "relu", "avgpool2d", "flatten", "pair"]
    assert [layout.kind for layout in cnn_ticket.layouts] == ["conv2d", "conv2d", "linear"]
    assert [layout.construction for layout in cnn_ticket.layouts] == ["input_blocks", "output_blocks", "output_blocks"]
    geometry = cnn_ticket.layouts[0].conv
    assert geometry is not None and (geometry.stride, geometry.padding) == ((2, 2), (1, 1))
    assert cnn_ticket.layouts[1].conv is not None and cnn_ticket.layouts[1].conv.dilation == (2, 2)


def test_same_configuration_builds_the_same_ticket_and_another_seed_another(mlp: Any) -> None:
    def build(seed: int) -> Ticket:
        return build_ticket(mlp.module, BuildConfig(n=8, solver="mitm", resample=2, seed=seed), input_shape=(5,))

    a, b, c = build(0), build(0), build(1)
    assert a.kept_hash() == b.kept_hash()
    assert all(np.array_equal(x[name], y[name]) for x, y in zip(a.masks, b.masks, strict=True) for name in x)
    assert a.kept_hash() != c.kept_hash()


def test_target_or_module_with_input_shape_give_the_same_ticket(mlp: Any) -> None:
    target = Target.from_module(mlp.module, mlp.input_shape)
    config = BuildConfig(n=6, solver="mitm")
    a = build_ticket(target, config)
    b = build_ticket(mlp.module, config, input_shape=mlp.input_shape)
    assert a.kept_hash() == b.kept_hash() and a.input_shape == b.input_shape == (5,)


def test_any_solver_instance_can_solve_and_exact_ones_agree(mlp: Any) -> None:
    calls = []

    class Counting(Solver):
        name = "counting-mitm"

        def __init__(self) -> None:
            self.inner = get_solver("mitm")

        def solve(self, coeffs: Any, targets: Any, usable: Any | None = None, **options: Any) -> Any:
            calls.append(len(targets))
            return self.inner.solve(coeffs, targets, usable, **options)

        def _solve_batch(self, coeffs: Any, targets: Any, usable: Any) -> Any:  # pragma: no cover - not reached
            raise NotImplementedError

    config = BuildConfig(n=8, solver="mitm", resample=2)
    plain = build_ticket(mlp.module, config, input_shape=mlp.input_shape)
    spread = build_ticket(mlp.module, config, input_shape=mlp.input_shape, solve_with=Counting())
    assert calls and spread.kept_hash() == plain.kept_hash()
    assert spread.build["config"]["solver"] == "mitm"


def test_progress_reports_each_layer_to_completion_and_can_cancel(mlp: Any) -> None:
    seen: list[tuple[int, float, str]] = []
    build_ticket(
        mlp.module,
        BuildConfig(n=6, solver="mitm", resample=1),
        input_shape=mlp.input_shape,
        progress=lambda pair, fraction, note: seen.append((pair, fraction, note)),
    )
    assert {pair for pair, _, _ in seen} == {0, 1, 2}
    assert all(0.0 <= fraction <= 1.0 for _, fraction, _ in seen)
    for pair in range(3):
        assert [s for s in seen if s[0] == pair][-1][1:] == (1.0, "done")

    class Cancelled(Exception):
        pass

    def cancel(pair: int, fraction: float, note: str) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        build_ticket(mlp.module, BuildConfig(n=6, solver="mitm"), input_shape=mlp.input_shape, progress=cancel)


# -- BatchNorm folding -------------------------------------------------------------------------------------------------


def _batch_norm(channels: int, dims: int, seed: int) -> nn.Module:
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator) * 0.3)
        bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.3)
    return bn.eval()


def _folded_by_hand(layer: nn.Module, bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """w * gamma / sqrt(var + eps) and (b - mean) * gamma / sqrt(var + eps) + beta, in float64."""
    gamma = bn.weight.detach().double().numpy()
    scale = gamma / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    weight = layer.weight.detach().double().numpy()
    bias = layer.bias.detach().double().numpy() if layer.bias is not None else 0.0
    folded_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    folded_b = (bias - bn.running_mean.double().numpy()) * scale + bn.bias.detach().double().numpy()
    return folded_w.reshape(weight.shape[0], -1), folded_b


@pytest.mark.parametrize("conv_bias", [True, False])
def test_conv_batchnorm_relu_ticket_matches_the_unfolded_network(conv_bias: bool) -> None:
    torch.manual_seed(3)
    conv, bn = nn.Conv2d(2, 3, 3, padding=1, bias=conv_bias), _batch_norm(3, 2, seed=3)
    net = nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2)).eval()
    ticket = build_ticket(net, BuildConfig(solver="mitm", resample=6), input_shape=(2, 5, 5))
    # the first pair approximates the hand-folded weights (stored as float32 before solving)
    eff = next(iter(ticket.to_module())).effective(torch.float64)
    weight, bias = _folded_by_hand(conv, bn)
    report = ticket.build["pairs"][0]
    w_pos = eff.weight_pos.reshape(3, -1).numpy()
    assert np.abs(w_pos - weight).max() <= report["weight_error_max"] + 1e-6 * np.abs(weight).max()
    assert np.abs(eff.bias.numpy() - bias).max() <= report["bias_error_max"] + 1e-6 * np.abs(bias).max()
    assert ticket.layouts[0].has_bias  # the fold gives the layer a bias even when the conv had none
    # and the whole ticket follows the network with its BatchNorm in place
    x = inputs((2, 5, 5)).float()
    f, g = net(x), ticket.to_module()(x)
    assert (f - g).abs().max().item() < 1e-2 * f.abs().max().item()


def test_linear_batchnorm_ticket_matches_the_unfolded_network() -> None:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6), _batch_norm(6, 1, seed=4), nn.ReLU(), nn.Linear(6, 2)).eval()
    ticket = build_ticket(net, BuildConfig(solver="mitm", resample=6), input_shape=(4,))
    assert len(ticket.layouts) == 2 and [s["op"] for s in ticket.steps] == ["pair", "relu", "pair"]
    x = inputs((4,)).float()
    f, g = net(x), ticket.to_module()(x)
    assert (f - g).abs().max().item() < 1e-2 * f.abs().max().item()


# -- refusals ----------------------------------------------------------------------------------------------------------

MITM_8 = BuildConfig(n=8, solver="mitm")


@pytest.mark.parametrize("config", [8, {"n": 8}, None], ids=["an-int", "a-dict", "None"])
def test_anything_but_a_build_config_is_refused_with_the_way_to_write_it(config: Any) -> None:
    """The signature was build_ticket(model, n, **options): an old call must fail loudly, not build at n = 20."""
    with pytest.raises(ConfigError, match=r"config must be a BuildConfig.*BuildConfig\(n=20"):
        build_ticket(nn.Sequential(nn.Linear(3, 2)), config, input_shape=(3,))


def test_the_config_is_recorded_in_the_manifest_with_its_defaults_resolved() -> None:
    config = BuildConfig(n=6, solver="mitm", input_domain=(0, 1), resample=2)
    ticket = build_ticket(nn.Sequential(nn.Linear(3, 2)), config, input_shape=(3,))
    assert ticket.build["config"] == config.to_dict()
    assert (ticket.build["config"]["tolerance"], ticket.build["config"]["block_draws"]) == (1e-7, 8)
    assert ticket.build["config"]["input_domain"] == [0.0, 1.0]
    assert BuildConfig(**ticket.build["config"]) == config  # the record rebuilds the very config


def test_plain_module_without_input_shape_is_refused() -> None:
    with pytest.raises(ConstructionError, match="input_shape is required"):
        build_ticket(nn.Sequential(nn.Linear(3, 2)), BuildConfig(n=8))


def test_network_without_a_weight_layer_is_refused() -> None:
    with pytest.raises(ConstructionError, match="no Linear or Conv2d"):
        build_ticket(nn.Sequential(nn.ReLU(), nn.Flatten()), BuildConfig(n=8), input_shape=(3,))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("where", ["weight", "bias"])
def test_non_finite_weights_are_refused(bad: float, where: str) -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        getattr(net[2], where)[0] = bad
    with pytest.raises(ConstructionError, match="NaN or inf"):
        build_ticket(net, MITM_8, input_shape=(3,))
    # the builder checks again when handed a Target that never went through normalisation
    target = Target(module=net.eval(), arch="custom", input_shape=(3,), source="<module>")
    with pytest.raises(ConstructionError, match="NaN or inf"):
        build_ticket(target, MITM_8)


def test_non_finite_batchnorm_statistics_are_refused() -> None:
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_var[1] = math.nan
    with pytest.raises(ConstructionError, match="NaN or inf"):
        build_ticket(nn.Sequential(nn.Linear(3, 4), bn).eval(), MITM_8, input_shape=(3,))


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.linear(x)


@pytest.mark.parametrize(
    ("module", "shape", "named"),
    [
        (nn.GELU(), (3,), "GELU"),
        (nn.Tanh(), (3,), "Tanh"),
        (nn.LSTM(3, 3), (3,), "LSTM"),
        (nn.Conv2d(2, 2, 3, groups=2), (2, 5, 5), "groups=2"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), (2, 5, 5), "reflect"),
        (_Scaled(), (3,), "_Scaled"),
    ],
    ids=["GELU", "Tanh", "LSTM", "grouped-conv", "reflect-padding", "custom-forward"],
)
def test_unsupported_modules_are_refused_by_name(module: nn.Module, shape: tuple[int, ...], named: str) -> None:
    first = nn.Conv2d(2, 2, 1) if len(shape) == 3 else nn.Linear(3, 3)
    net = nn.Sequential(first, module)
    with pytest.raises(UnsupportedModuleError, match=named):
        build_ticket(net, MITM_8, input_shape=shape)


@pytest.mark.parametrize(
    ("module", "named"),
    [(nn.GELU(), "GELU"), (nn.Conv2d(2, 2, 3, groups=2), "groups=2")],
    ids=["GELU", "grouped-conv"],
)
def test_builder_refuses_unsupported_modules_in_a_hand_made_target(module: nn.Module, named: str) -> None:
    first = nn.Conv2d(2, 2, 1)
    target = Target(module=nn.Sequential(first, module).eval(), arch="custom", input_shape=(2, 5, 5), source="<m>")
    with pytest.raises(ConstructionError, match=named):
        build_ticket(target, MITM_8)


# -- resuming ----------------------------------------------------------------------------------------------------------


def _build_resumable(net: Any, directory: Path, **options: Any) -> Ticket:
    progress = options.pop("progress", None)
    config = BuildConfig(**{"n": 8, "solver": "mitm", "resample": 2, "seed": 0, **options})
    return build_ticket(net.module, config, input_shape=net.input_shape, resume_dir=directory, progress=progress)


def _resumed(ticket: Ticket) -> list[bool]:
    return [bool(pair.get("resumed", False)) for pair in ticket.build["pairs"]]


def test_a_second_build_reuses_every_stored_layer(mlp: Any, tmp_path: Path) -> None:
    first = _build_resumable(mlp, tmp_path)
    assert _resumed(first) == [False, False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"pair{k}.{ext}" for k in range(3) for ext in ("json", "npz")]
    second = _build_resumable(mlp, tmp_path)
    assert _resumed(second) == [True, True, True]
    assert second.kept_hash() == first.kept_hash()
    for a, b in zip(first.draws, second.draws, strict=True):
        assert np.array_equal(a, b)
    for a, b in zip(first.build["pairs"], second.build["pairs"], strict=True):
        assert a["weight_error_max"] == b["weight_error_max"]


def test_an_interrupted_build_resumes_from_its_finished_layers(mlp: Any, tmp_path: Path) -> None:
    fresh = _build_resumable(mlp, tmp_path / "fresh")

    class Interrupted(Exception):
        pass

    def stop_at_last_pair(pair: int, fraction: float, note: str) -> None:
        if pair == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        _build_resumable(mlp, tmp_path / "resumed", progress=stop_at_last_pair)
    resumed = _build_resumable(mlp, tmp_path / "resumed")
    assert _resumed(resumed) == [True, True, False]
    assert resumed.kept_hash() == fresh.kept_hash()


@pytest.mark.parametrize("change", [{"seed": 1}, {"n": 9}, {"tolerance": 1e-3}, {"resample": 1}])
def test_a_changed_configuration_does_not_reuse_stored_layers(mlp: Any, tmp_path: Path, change: dict) -> None:
    _build_resumable(mlp, tmp_path)
    changed = _build_resumable(mlp, tmp_path, **change)
    assert _resumed(changed) == [False, False, False]
    assert changed.kept_hash() == _build_resumable(mlp, tmp_path / "fresh", **change).kept_hash()


def test_a_changed_target_does_not_reuse_stored_layers(mlp: Any, tmp_path: Path) -> None:
    _build_resumable(mlp, tmp_path)
    other = copy.deepcopy(mlp.module)
    with torch.no_grad():
        other[4].weight[0, 0] += 0.01  # only the last layer differs
    config = BuildConfig(n=8, solver="mitm", resample=2)
    changed = build_ticket(other, config, input_shape=mlp.input_shape, resume_dir=tmp_path)
    assert _resumed(changed) == [True, True, False]


def test_a_corrupt_stored_layer_is_solved_again(mlp: Any, tmp_path: Path) -> None:
    first = _build_resumable(mlp, tmp_path)
    (tmp_path / "pair1.npz").write_bytes(b"not an npz file")
    (tmp_path / "pair2.json").write_text("{not json")
    again = _build_resumable(mlp, tmp_path)
    assert _resumed(again) == [True, False, False]
    assert again.kept_hash() == first.kept_hash()
