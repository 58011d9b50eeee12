"""Projected gradient ascent on |f - g|: never below its starts, reaches vertex maxima, deterministic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ticketsolver.errors import VerificationError
from ticketsolver.verification import random_starts, search_worst_case

from .helpers import (
    build_pruned,
    mlp,
    odd_conv_net,
    output_blocks_pair,
    perturb_second,
    single_thread,  # noqa: F401  (autouse fixture)
)


def _nets(net, nonneg: bool, dtype: torch.dtype = torch.float64, seed: int = 0):
    target = net(seed)
    pruned = build_pruned(target, input_nonneg=nonneg, perturb=1e-3, seed=seed)
    return copy.deepcopy(target).to(dtype), copy.deepcopy(pruned).to(dtype)


def _errors(f, g, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (f(x) - g(x)).abs().flatten(1).amax(1)


def test_ascent_never_ends_below_its_best_start() -> None:
    f, g = _nets(odd_conv_net, nonneg=False)
    starts = random_starts(torch.tensor(-1.0), torch.tensor(1.0), 6, (2, 12, 12), seed=0)
    worst = search_worst_case(f, g, starts, (-1.0, 1.0), steps=30)
    at_starts = _errors(f, g, starts)
    assert worst.initial_max_abs_error == pytest.approx(at_starts.max().item(), rel=1e-12)
    assert all(found >= start for found, start in zip(worst.per_start, at_starts.tolist(), strict=True))
    assert worst.max_abs_error > 1.2 * worst.initial_max_abs_error  # the climb does find more
    # the reported point reaches the reported value
    assert _errors(f, g, worst.point.double()).item() == pytest.approx(worst.max_abs_error, rel=1e-12)
    assert worst.point.min() >= -1.0 and worst.point.max() <= 1.0


def test_search_is_deterministic() -> None:
    f, g = _nets(mlp, nonneg=True, dtype=torch.float32)
    starts = random_starts(torch.tensor(0.0), torch.tensor(1.0), 4, (13,), seed=1)
    a = search_worst_case(f, g, starts, (0.0, 1.0), steps=20)
    b = search_worst_case(f, g, starts, (0.0, 1.0), steps=20)
    assert a.per_start == b.per_start and a.start_index == b.start_index and torch.equal(a.point, b.point)
    assert a.dtype == "float32"


def test_ascent_reaches_the_exact_maximum_of_a_single_affine_layer() -> None:
    # one O layer on [0, 1]^d: g - f = D x + db is affine, so its max |.| sits at a vertex we can compute
    torch.manual_seed(2)
    layer = nn.Linear(8, 3).double()
    pair = perturb_second(output_blocks_pair(layer), 1e-2, seed=2).double()
    eff = pair.effective(torch.float64)
    d, db = eff.weight_pos - layer.weight, eff.bias - layer.bias
    upper = d.clamp(min=0).sum(1) + db
    lower = -(-d).clamp(min=0).sum(1) + db
    exact = torch.maximum(upper, -lower).max().item()
    starts = random_starts(torch.tensor(0.0), torch.tensor(1.0), 8, (8,), seed=2)
    worst = search_worst_case(nn.Sequential(layer), nn.Sequential(pair), starts, (0.0, 1.0), steps=50)
    assert worst.max_abs_error == pytest.approx(exact, rel=1e-9)


def test_per_feature_box_and_out_of_box_starts_are_clamped() -> None:
    f, g = _nets(mlp, nonneg=False)
    lo, hi = -torch.ones(13), torch.linspace(0.1, 2.0, 13)
    starts = torch.full((3, 13), 5.0, dtype=torch.float64)
    worst = search_worst_case(f, g, starts, (lo, hi), steps=10)
    assert (worst.point >= lo).all() and (worst.point <= hi).all()


def test_zero_steps_evaluates_the_starts() -> None:
    f, g = _nets(mlp, nonneg=True)
    starts = random_starts(torch.tensor(0.0), torch.tensor(1.0), 5, (13,), seed=3)
    worst = search_worst_case(f, g, starts, (0.0, 1.0), steps=0, start_kinds=[f"s{i}" for i in range(5)])
    errors = _errors(f, g, starts)
    assert worst.per_start == pytest.approx(errors.tolist(), rel=1e-12)
    assert worst.start_index == int(errors.argmax()) and worst.start_kind == f"s{worst.start_index}"
    assert set(worst.to_dict()) >= {"max_abs_error", "start_index", "start_kind", "per_start", "steps"}
    assert "point" not in worst.to_dict()


def test_modules_are_not_touched() -> None:
    target = mlp(4)
    pruned = build_pruned(target, input_nonneg=True, perturb=1e-3)
    starts = random_starts(torch.tensor(0.0), torch.tensor(1.0), 2, (13,), seed=4)
    search_worst_case(target, pruned, starts, (0.0, 1.0), steps=3)
    params = list(target.parameters()) + list(pruned.parameters())
    assert all(p.grad is None and p.requires_grad for p in params)


def test_bad_arguments_raise() -> None:
    f, g = _nets(mlp, nonneg=True)
    starts = torch.rand(2, 13, dtype=torch.float64)
    with pytest.raises(VerificationError, match="at least one start"):
        search_worst_case(f, g, starts[:0], (0.0, 1.0))
    with pytest.raises(VerificationError, match="labels"):
        search_worst_case(f, g, starts, (0.0, 1.0), start_kinds=["only one"])
    with pytest.raises(VerificationError, match="step_size"):
        search_worst_case(f, g, starts, (0.0, 1.0), step_size=0.0)
