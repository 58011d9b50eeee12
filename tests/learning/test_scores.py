"""The straight-through top-K mask and the masked layer: exact counts, the largest |scores|, the STE gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ticketsolver.construction import ConvGeometry
from ticketsolver.errors import ConfigError
from ticketsolver.learning.scores import MaskedLayer, kept_count, top_k_mask


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 3, 2, 2), (1, 1)])
@pytest.mark.parametrize("keep", [0.01, 0.3, 0.5, 0.77, 1.0])
def test_top_k_mask_keeps_exactly_kept_count_of_the_largest_magnitudes(shape: tuple[int, ...], keep: float) -> None:
    magnitudes = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = top_k_mask(magnitudes, keep)
    numel = math.prod(shape)
    assert mask.shape == magnitudes.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == kept_count(numel, keep) == max(1, round(keep * numel))
    kept, pruned = magnitudes[mask.bool()], magnitudes[~mask.bool()]
    if len(pruned):
        assert kept.min() > pruned.max()


def test_ties_are_broken_by_position_lower_index_kept() -> None:
    magnitudes = torch.tensor([0.5, 0.2, 0.5, 0.5, 0.9, 0.5])
    # 0.9 first, then three of the four 0.5s: those at the lowest indices
    assert top_k_mask(magnitudes, 4 / 6).tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_kept_count_rounds_half_to_even_keeps_one_and_zero_only_for_zero() -> None:
    assert [kept_count(10, k) for k in (0.05, 0.15, 0.25, 0.001, 0.0, 1.0)] == [1, 2, 2, 1, 0, 10]
    with pytest.raises(ConfigError, match="keep"):
        kept_count(10, 1.5)


def _linear_layer(keep: float = 0.5) -> MaskedLayer:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    layer = MaskedLayer("linear", weight, bias, {"weight": keep, "bias": keep}).double()
    layer.init_scores_kaiming(torch.Generator().manual_seed(1))
    return layer


def test_scores_get_the_straight_through_gradient_and_the_weight_none() -> None:
    layer = _linear_layer()
    x = torch.randn(5, 4, dtype=torch.float64)
    upstream = torch.randn(5, 3, dtype=torch.float64)  # loss = sum(out * upstream): dL/dout = upstream
    (layer(x) * upstream).sum().backward()
    # by hand: dL/dW_eff = upstream^T x, straight through the mask to |s|, then d|s|/ds = sign(s)
    w_s, b_s = layer.weight_scores, layer.bias_scores
    assert b_s is not None
    expected_w = torch.sign(w_s.detach()) * (upstream.T @ x) * layer.weight
    expected_b = torch.sign(b_s.detach()) * upstream.sum(0) * layer.bias
    assert w_s.grad is not None and b_s.grad is not None
    torch.testing.assert_close(w_s.grad, expected_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b_s.grad, expected_b, rtol=1e-12, atol=1e-12)
    # pruned entries get a gradient too (they could come back), the frozen weight gets none
    assert bool((w_s.grad[~layer.masks()["weight"]] != 0).all())
    assert not layer.weight.requires_grad and layer.weight.grad is None
    assert [name for name, _ in layer.named_parameters()] == ["weight_scores", "bias_scores"]


def test_an_optimizer_step_moves_the_scores_and_leaves_the_weights() -> None:
    layer = _linear_layer()
    weight, bias, scores = layer.weight.clone(), layer.bias.clone(), layer.weight_scores.detach().clone()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    F.cross_entropy(layer(torch.randn(8, 4, dtype=torch.float64)), torch.arange(8) % 3).backward()
    optimizer.step()
    assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias)
    assert not torch.equal(layer.weight_scores, scores)


def _relaxation(layer: MaskedLayer, x: torch.Tensor, s0: torch.Tensor):  # noqa: ANN202 - a closure
    """The mask as a continuous function of the scores that equals the top-K mask at s0 and moves like |s|:
    m(s) = mask(s0) + |s| - |s0|. Its true derivative at s0 is what the straight-through estimator claims."""
    mask0 = top_k_mask(s0.abs(), layer.keep["weight"])

    def forward(s: torch.Tensor) -> torch.Tensor:
        weight = layer.weight * (mask0 + s.abs() - s0.abs())
        if layer.kind == "linear":
            return F.linear(x, weight)
        g = layer.conv
        assert g is not None
        return F.conv2d(x, weight, None, g.stride, g.padding, g.dilation)

    return forward


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_straight_through_jacobian_is_the_derivative_of_the_continuous_relaxation(kind: str) -> None:
    """gradcheck cannot differentiate the top-K itself (a step function: numerically 0). It can check the
    relaxation m(s) = mask(s0) + |s| - |s0| numerically; the layer's Jacobian w.r.t. the scores must equal it."""
    g = torch.Generator().manual_seed(3)
    if kind == "linear":
        weight, x, conv = (
            torch.randn(3, 4, generator=g, dtype=torch.float64),
            torch.randn(2, 4, dtype=torch.float64),
            None,
        )
    else:
        weight = torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64)
        x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
        conv = ConvGeometry(2, (2, 2), (1, 1), (1, 1), (1, 1))
    layer = MaskedLayer(kind, weight, None, {"weight": 0.5}, conv).double()  # type: ignore[arg-type]
    layer.init_scores_kaiming(torch.Generator().manual_seed(4))
    s0 = layer.weight_scores.detach().clone()
    relaxed = _relaxation(layer, x, s0)
    assert torch.autograd.gradcheck(relaxed, (s0.clone().requires_grad_(True),), eps=1e-7, atol=1e-8)

    def through_layer(s: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight_scores": s}, (x,))

    torch.testing.assert_close(through_layer(s0), relaxed(s0), rtol=1e-14, atol=1e-14)  # 1 + |s0| - |s0| rounds
    ste = torch.autograd.functional.jacobian(through_layer, s0)
    torch.testing.assert_close(ste, torch.autograd.functional.jacobian(relaxed, s0), rtol=1e-12, atol=1e-12)


def test_warm_start_scores_reproduce_the_given_mask() -> None:
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(6, 7, generator=g) < 0.3
    layer = MaskedLayer("linear", torch.randn(6, 7), None, {"weight": float(mask.double().mean())})
    layer.init_scores_from_masks({"weight": mask.numpy()}, torch.Generator().manual_seed(6))
    assert torch.equal(layer.masks()["weight"], mask)
    scores = layer.weight_scores.detach()
    assert bool((scores[mask] >= 1).all()) and bool((scores[~mask] < 0.01).all())
