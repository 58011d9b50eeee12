"""Per-layer checks: pairs against their target layer and their effective layer; network validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ticketsolver.errors import VerificationError
from ticketsolver.verification import check_layers, describe_module, validate_networks

from .helpers import (
    build_pruned,
    input_blocks_pair,
    mlp,
    odd_conv_net,
    output_blocks_pair,
    perturb_second,
    single_thread,  # noqa: F401  (autouse fixture)
)


def _single(layer: nn.Module, pair: nn.Module, dtype: torch.dtype) -> tuple[nn.Sequential, nn.Sequential]:
    return nn.Sequential(copy.deepcopy(layer)).to(dtype), nn.Sequential(copy.deepcopy(pair)).to(dtype)


@pytest.mark.parametrize("make_pair", [output_blocks_pair, input_blocks_pair])
@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(7, 5),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2),
        nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0)),
    ],
    ids=["linear", "conv-s2-p1-d2", "conv-rect"],
)
def test_exact_pair_equals_target_and_effective_layer(make_pair, layer) -> None:
    torch.manual_seed(0)
    pair = make_pair(layer)
    shape = (16, 7) if isinstance(layer, nn.Linear) else (16, layer.in_channels, 9, 10)
    x = torch.rand(shape, dtype=torch.float64)
    if pair.construction == "input_blocks":
        x = 2 * x - 1  # I serves inputs of any sign
    target, pruned = _single(layer, pair, torch.float64)
    (check,) = check_layers(target, pruned, x)
    assert check.dtype == "float64" and check.n_inputs == 16
    assert check.pair_vs_effective_relative < 1e-12
    assert check.pair_vs_target_relative < 1e-12
    target32, pruned32 = _single(layer, pair, torch.float32)
    (check32,) = check_layers(target32, pruned32, x.float())
    assert check32.dtype == "float32"
    assert check32.pair_vs_effective_relative < 1e-5
    assert check32.pair_vs_target_relative < 1e-5


@pytest.mark.parametrize("make_pair", [output_blocks_pair, input_blocks_pair])
def test_perturbed_pair_shows_its_error_against_target_but_not_effective(make_pair) -> None:
    torch.manual_seed(1)
    layer = nn.Linear(6, 4)
    pair = perturb_second(make_pair(layer), 1e-3, seed=0)
    x = torch.rand(32, 6, dtype=torch.float64)
    target, pruned = _single(layer, pair, torch.float64)
    (check,) = check_layers(target, pruned, x)
    # the reference: the pair's own effective weights against the target's, on the same inputs
    eff = pruned[0].effective(torch.float64)
    expected = (eff(x) - target[0](x)).abs().max().item()
    assert check.pair_vs_target == pytest.approx(expected, rel=1e-9)
    assert 1e-5 < check.pair_vs_target < 1e-2
    assert check.pair_vs_effective_relative < 1e-12


def test_output_blocks_pair_fed_a_negative_input_is_flagged() -> None:
    # O is only valid for x >= 0: a builder that used it on signed inputs shows up as pair != effective
    torch.manual_seed(2)
    layer = nn.Linear(5, 3)
    target, pruned = _single(layer, output_blocks_pair(layer), torch.float64)
    (check,) = check_layers(target, pruned, torch.rand(64, 5, dtype=torch.float64) * 2 - 1)
    assert check.input_min < 0
    assert check.pair_vs_effective_relative > 1e-3


def test_whole_network_checks_every_pair_on_the_target_activations() -> None:
    target = odd_conv_net(0).double()
    pruned = build_pruned(odd_conv_net(0), input_nonneg=False, perturb=1e-4).double()
    checks = check_layers(target, pruned, torch.rand(8, 2, 12, 12, dtype=torch.float64) * 2 - 1)
    assert [c.index for c in checks] == [0, 3, 7]
    assert [c.construction for c in checks] == ["input_blocks", "output_blocks", "output_blocks"]
    assert checks[1].input_min >= 0 and checks[2].input_min >= 0  # after ReLU (+ pooling)
    assert all(c.pair_vs_effective_relative < 1e-12 for c in checks)
    assert all(0 < c.pair_vs_target for c in checks)


def test_pair_with_a_unit_fed_by_two_inputs_is_refused() -> None:
    layer = nn.Linear(3, 2)
    pair = input_blocks_pair(layer)
    with torch.no_grad():
        pair.first.weight[0, 1] = 0.5  # unit (0, +) now also reads x_1: not an input-blocks pair
    target, pruned = _single(layer, pair, torch.float32)
    with pytest.raises(VerificationError, match="layer 0"):
        check_layers(target, pruned, torch.rand(2, 3))


def test_validate_returns_pair_indices() -> None:
    target = mlp(0)
    assert validate_networks(target, build_pruned(target, input_nonneg=True)) == [0, 2, 4]


def _replace(seq: nn.Sequential, index: int, module: nn.Module) -> nn.Sequential:
    modules = list(copy.deepcopy(seq))
    modules[index] = module
    return nn.Sequential(*modules)


def test_mismatched_networks_raise_verification_error() -> None:
    target = mlp(0)
    pruned = build_pruned(target, input_nonneg=True)
    with pytest.raises(VerificationError, match="modules"):
        validate_networks(target, nn.Sequential(*list(pruned)[:-1]))
    with pytest.raises(VerificationError, match="PrunedPair is expected"):
        validate_networks(target, _replace(pruned, 2, nn.Linear(32, 32)))
    with pytest.raises(VerificationError, match="PrunedPair where the target has ReLU"):
        validate_networks(target, _replace(pruned, 1, pruned[0]))
    with pytest.raises(VerificationError, match="modules between pairs"):
        validate_networks(target, _replace(pruned, 1, nn.Flatten()))
    with pytest.raises(VerificationError, match="features"):
        validate_networks(target, _replace(pruned, 2, output_blocks_pair(nn.Linear(32, 31))))
    with pytest.raises(VerificationError, match="Tanh is not supported"):
        validate_networks(_replace(target, 1, nn.Tanh()), pruned)
    with pytest.raises(VerificationError, match="nn.Sequential"):
        validate_networks(target, pruned[0])


def test_conv_geometry_and_kind_mismatches_raise() -> None:
    target = odd_conv_net(0)
    pruned = build_pruned(target, input_nonneg=False)
    other_stride = nn.Conv2d(2, 3, 3, stride=1, padding=1, dilation=2)
    with pytest.raises(VerificationError, match="stride/padding/dilation"):
        validate_networks(target, _replace(pruned, 0, input_blocks_pair(other_stride)))
    with pytest.raises(VerificationError, match="target is Linear"):
        validate_networks(target, _replace(pruned, 7, input_blocks_pair(nn.Conv2d(8, 5, 1))))
    with pytest.raises(VerificationError, match="groups=1"):
        validate_networks(_replace(target, 3, nn.Conv2d(3, 3, 1, groups=3)), pruned)
    with pytest.raises(VerificationError, match="modules between pairs"):
        validate_networks(target, _replace(pruned, 5, nn.MaxPool2d(2)))


def test_describe_module_names_the_geometry() -> None:
    assert describe_module(nn.Linear(400, 120)) == "Linear(400->120)"
    assert describe_module(nn.Conv2d(1, 6, 5, padding=2)) == "Conv2d(1->6, k5x5, s1, p2, d1)"
    assert describe_module(nn.Conv2d(2, 3, (2, 3), stride=(1, 2))) == "Conv2d(2->3, k2x3, s1x2, p0, d1)"
    assert describe_module(nn.ReLU()) == "ReLU"
