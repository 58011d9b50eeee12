"""The certified bound: it holds on every input we can find, in exact arithmetic and in float32 forward passes,
matches hand formulas (O, I and L pairs), is not absurd, and says "not certified" rather than fail."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import nn

from ticketsolver.errors import VerificationError
from ticketsolver.verification import certify_bound, random_starts, search_worst_case

from .helpers import (
    build_pruned,
    input_blocks_pair,
    mlp,
    odd_conv_net,
    offset_blocks_pair,
    output_blocks_pair,
    perturb_second,
    single_thread,  # noqa: F401  (autouse fixture)
)

CASES = [
    ("mlp, signed box", mlp, (13,), (-1.0, 1.0), False),
    ("mlp, [0,1] box", mlp, (13,), (0.0, 1.0), True),
    ("conv, signed box", odd_conv_net, (2, 12, 12), (-1.0, 1.0), False),
    ("conv, [0,1] box", odd_conv_net, (2, 12, 12), (0.0, 1.0), True),
]


def _observed(target, pruned, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Per-output max over inputs of |f - g|, both networks and the inputs in ``dtype``."""
    f, g = copy.deepcopy(target).to(dtype), copy.deepcopy(pruned).to(dtype)
    with torch.no_grad():
        return (f(x.to(dtype)) - g(x.to(dtype))).abs().flatten(1).amax(0).double()


@pytest.mark.parametrize(("name", "net", "shape", "box", "nonneg"), CASES, ids=[c[0] for c in CASES])
def test_bound_holds_on_random_inputs_and_worst_case_and_is_within_100x(name, net, shape, box, nonneg) -> None:
    target = net(0)
    pruned = build_pruned(target, input_nonneg=nonneg, perturb=1e-3, seed=0)
    bound = certify_bound(target, pruned, box, input_shape=shape)
    x = random_starts(torch.tensor(box[0]), torch.tensor(box[1]), 1000, shape, seed=1)
    per_output = torch.tensor(bound.per_output, dtype=torch.float64)
    assert (_observed(target, pruned, x) <= per_output).all()
    f, g = copy.deepcopy(target).double(), copy.deepcopy(pruned).double()
    worst = search_worst_case(f, g, x[:16], box, steps=50)
    assert worst.max_abs_error <= bound.max_bound
    # random weights, |W| Lipschitz products: loose, but on nets this small within two orders of magnitude
    assert bound.max_bound < 100 * worst.max_abs_error


def test_bound_holds_at_every_vertex_of_a_small_box() -> None:
    target = mlp(3, d_in=6, width=16, d_out=4)
    pruned = build_pruned(target, input_nonneg=False, perturb=3e-3, seed=3)
    lo, hi = torch.tensor([-1.0, 0.0, -2.0, 0.5, -1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 1.5, 2.0, 0.25])
    bound = certify_bound(target, pruned, (lo, hi), input_shape=(6,))
    vertices = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    x = lo.double() + (hi - lo).double() * vertices
    assert (_observed(target, pruned, x) <= torch.tensor(bound.per_output, dtype=torch.float64)).all()


def test_exact_pairs_certify_zero_up_to_rounding_slack() -> None:
    target = odd_conv_net(1)
    bound = certify_bound(target, build_pruned(target, input_nonneg=False), (-1.0, 1.0), input_shape=(2, 12, 12))
    assert 0.0 <= bound.max_bound < 1e-12


def test_single_output_blocks_layer_matches_the_formula() -> None:
    torch.manual_seed(4)
    layer = nn.Linear(5, 3)
    pair = perturb_second(output_blocks_pair(layer), 1e-2, seed=4)
    hi = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25])
    bound = certify_bound(nn.Sequential(layer), nn.Sequential(pair), (0.0, hi), input_shape=(5,))
    eff = pair.effective(torch.float64)
    w, b = layer.weight.double(), layer.bias.double()
    expected = (eff.weight_pos - w).abs() @ hi.double() + (eff.bias - b).abs()
    assert bound.per_output == pytest.approx(expected.tolist(), rel=1e-6)
    assert len(bound.layers) == 1 and bound.layers[0].construction == "output_blocks"


def test_single_input_blocks_layer_matches_the_formula() -> None:
    torch.manual_seed(5)
    layer = nn.Linear(4, 2)
    pair = perturb_second(input_blocks_pair(layer), 1e-2, seed=5)
    lo, hi = torch.tensor([-1.0, -0.5, 0.5, -2.0]), torch.tensor([1.0, 2.0, 1.0, -1.0])
    bound = certify_bound(nn.Sequential(layer), nn.Sequential(pair), (lo, hi), input_shape=(4,))
    eff = pair.effective(torch.float64)
    w, b = layer.weight.double(), layer.bias.double()
    h_pos, h_neg = hi.double().clamp(min=0), (-lo.double()).clamp(min=0)
    expected = (eff.weight_pos - w).abs() @ h_pos + (eff.weight_neg + w).abs() @ h_neg + (eff.bias - b).abs()
    assert bound.per_output == pytest.approx(expected.tolist(), rel=1e-6)


def test_narrower_box_gives_no_larger_bound() -> None:
    target = mlp(6)
    pruned = build_pruned(target, input_nonneg=True, perturb=1e-3, seed=6)
    wide = certify_bound(target, pruned, (0.0, 1.0), input_shape=(13,))
    narrow = certify_bound(target, pruned, (0.25, 0.5), input_shape=(13,))
    assert narrow.max_bound <= wide.max_bound


def test_output_blocks_on_a_possibly_negative_input_is_not_certified() -> None:
    target = mlp(7)
    pruned = build_pruned(target, input_nonneg=True)  # O first layer
    bound = certify_bound(target, pruned, (-1.0, 1.0), input_shape=(13,))
    assert bound.max_bound is None and bound.per_output == [] and not bound.certified
    assert bound.not_certified is not None and "not provably >= 0" in bound.not_certified
    assert bound.forward["float32"].max_bound is None
    assert json.loads(json.dumps(bound.to_dict()))["max_bound"] is None
    # two linear layers with no ReLU between them: the second one's input has any sign
    torch.manual_seed(7)
    linear_stack = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    pruned_stack = nn.Sequential(input_blocks_pair(linear_stack[0]), output_blocks_pair(linear_stack[1]))
    stack_bound = certify_bound(linear_stack, pruned_stack, (0.0, 1.0), input_shape=(3,))
    assert stack_bound.not_certified is not None and stack_bound.not_certified.startswith("layer 1")
    assert [layer.index for layer in stack_bound.layers] == [0]  # propagated up to the layer that failed


def test_bad_boxes_are_refused() -> None:
    target = mlp(8)
    pruned = build_pruned(target, input_nonneg=False)
    with pytest.raises(VerificationError, match="lo > hi"):
        certify_bound(target, pruned, (1.0, 0.0), input_shape=(13,))
    with pytest.raises(VerificationError, match="finite"):
        certify_bound(target, pruned, (0.0, float("inf")), input_shape=(13,))


def test_single_offset_blocks_layer_matches_the_formula_on_its_box() -> None:
    torch.manual_seed(12)
    layer = nn.Linear(4, 3)
    pair = perturb_second(offset_blocks_pair(layer, h=1.0), 1e-2, seed=12)
    lo, hi = torch.tensor([-1.0, -0.5, 0.0, -1.0]), torch.tensor([1.0, 0.5, 1.0, -0.25])
    bound = certify_bound(nn.Sequential(layer), nn.Sequential(pair), (lo, hi), input_shape=(4,))
    eff = pair.effective(torch.float64)
    assert eff.weight_neg is None
    w, b = layer.weight.double(), layer.bias.double()
    h_abs = torch.maximum(lo.abs(), hi.abs()).double()
    expected = (eff.weight_pos - w).abs() @ h_abs + (eff.bias - b).abs()
    assert bound.per_output == pytest.approx(expected.tolist(), rel=1e-6)
    assert bound.layers[0].construction == "offset_blocks"
    x = lo.double() + (hi - lo).double() * torch.rand(500, 4, dtype=torch.float64)
    assert (_observed(nn.Sequential(layer), nn.Sequential(pair), x) <= torch.tensor(bound.per_output)).all()


def test_offset_blocks_beyond_the_box_they_were_built_for_are_not_certified() -> None:
    torch.manual_seed(13)
    layer = nn.Linear(4, 3)
    pair = offset_blocks_pair(layer, h=1.0)
    f, g = nn.Sequential(layer), nn.Sequential(pair)
    assert certify_bound(f, g, (-1.0, 1.0), input_shape=(4,)).certified
    bound = certify_bound(f, g, (-2.0, 2.0), input_shape=(4,))  # no error: a finding, said in words
    assert bound.max_bound is None and bound.not_certified is not None
    assert "offset-blocks (L)" in bound.not_certified and bound.not_certified.startswith("layer 0")
    # and it is right not to certify: outside the box the pair is not its effective layer
    x = torch.full((1, 4), -2.0, dtype=torch.float64)
    with torch.no_grad():
        assert (g.double()(x) - pair.effective(torch.float64)(x)).abs().max() > 0.1


def test_offset_blocks_network_bound_holds_in_float64_and_float32() -> None:
    torch.manual_seed(14)
    target = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    # the second pair's input (g's hidden activation) stays within [0, h2] over the box [-1, 1]
    h2 = float((target[0].weight.abs().sum(1) + target[0].bias.abs()).max().detach()) * 1.5
    pruned = nn.Sequential(
        perturb_second(offset_blocks_pair(target[0], h=1.0, seed=1), 1e-4, seed=1),
        nn.ReLU(),
        perturb_second(offset_blocks_pair(target[2], h=h2, seed=2), 1e-4, seed=2),
    ).eval()
    bound = certify_bound(target, pruned, (-1.0, 1.0), input_shape=(5,), forward_dtypes=("float32", "float64"))
    assert bound.certified and [layer.construction for layer in bound.layers] == ["offset_blocks"] * 2
    x = random_starts(torch.tensor(-1.0), torch.tensor(1.0), 2000, (5,), seed=3)
    for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
        forward = bound.forward[name]
        assert forward.max_bound is not None and bound.max_bound is not None
        assert (_observed(target, pruned, x, dtype) <= torch.tensor(forward.per_output)).all()
        assert forward.max_bound >= bound.max_bound
    assert (_observed(target, pruned, x) <= torch.tensor(bound.per_output)).all()


@pytest.mark.parametrize(("name", "net", "shape", "box", "nonneg"), CASES, ids=[c[0] for c in CASES])
def test_float32_bound_holds_for_float32_forward_passes_of_exact_pairs(name, net, shape, box, nonneg) -> None:
    """Exact pairs: the exact-arithmetic bound is ~0, but float32 rounding is not; the float32 bound covers it."""
    target = net(0)
    pruned = build_pruned(target, input_nonneg=nonneg)
    bound = certify_bound(target, pruned, box, input_shape=shape, forward_dtypes=("float32",))
    x = random_starts(torch.tensor(box[0]), torch.tensor(box[1]), 1000, shape, seed=4)
    observed32 = _observed(target, pruned, x, torch.float32)
    forward = bound.forward["float32"]
    assert bound.max_bound is not None and forward.max_bound is not None and forward.rounding_max is not None
    assert observed32.max() > bound.max_bound  # the exact-arithmetic figure does not cover float32
    assert (observed32 <= torch.tensor(forward.per_output)).all()
    f32, g32 = copy.deepcopy(target).float(), copy.deepcopy(pruned).float()
    worst = search_worst_case(f32, g32, x[:8], box, steps=30)
    assert worst.max_abs_error <= forward.max_bound
    assert bound.max_bound <= forward.max_bound and forward.rounding_max <= forward.max_bound


def test_float32_bound_covers_the_rounding_of_float64_weights() -> None:
    """A float64 target is rounded to float32 by a float32 forward pass: the bound includes that too."""
    target = mlp(15).double()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(torch.rand(p.shape, dtype=torch.float64) * 1e-7)  # values float32 cannot hold
    pruned = build_pruned(mlp(15), input_nonneg=False)
    bound = certify_bound(target, pruned, (-1.0, 1.0), input_shape=(13,))
    x = random_starts(torch.tensor(-1.0), torch.tensor(1.0), 500, (13,), seed=5)
    assert (_observed(target, pruned, x, torch.float32) <= torch.tensor(bound.forward["float32"].per_output)).all()


def test_unknown_forward_dtype_is_refused() -> None:
    target = mlp(16)
    pruned = build_pruned(target, input_nonneg=True)
    with pytest.raises(VerificationError, match="unknown forward dtype"):
        certify_bound(target, pruned, (0.0, 1.0), input_shape=(13,), forward_dtypes=("half",))


def test_result_says_exact_arithmetic_and_is_plain_json() -> None:
    target = mlp(9)
    bound = certify_bound(target, build_pruned(target, input_nonneg=True, perturb=1e-3), (0.0, 1.0), input_shape=(13,))
    assert bound.exact_arithmetic and "exact arithmetic" in bound.note
    assert bound.relative_margin >= 1e-9
    assert "float32" in bound.forward["float32"].note and "gamma_k" in bound.forward["float32"].note
    d = bound.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["max_bound"] == max(d["per_output"])
    assert d["forward"]["float32"]["max_bound"] == max(d["forward"]["float32"]["per_output"])


def test_caller_modules_are_left_as_they_were() -> None:
    target = mlp(10)
    pruned = build_pruned(target, input_nonneg=True, perturb=1e-3)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    certify_bound(target, pruned, (0.0, 1.0), input_shape=(13,))
    after = pruned.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before)


def test_wrong_input_shape_is_a_verification_error() -> None:
    target = mlp(11)
    with pytest.raises(VerificationError, match="do not accept inputs of shape"):
        certify_bound(target, build_pruned(target, input_nonneg=True), (0.0, 1.0), input_shape=(12,))
