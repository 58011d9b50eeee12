"""Each construction (O and I; dense and conv with stride, padding, dilation; with and without bias) on one layer.

A one-layer target goes through ``build_ticket``; its pair is then checked against references that do not use
the construction code: the effective-weights layer in float64, block sums recomputed from ``RandomSource``,
subset-sum optima found by enumeration, and the structure docs/design.md section 2 prescribes.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver import BuildConfig, ConstructionError, Ticket, build_ticket
from ticketsolver.construction.pair import CONSTRUCTIONS as LETTERS
from ticketsolver.construction.pair import PrunedPair

from .reference import effective_weights, optimal_errors, realised_errors, tensors_with_draws

N = 12
SEED = 5

#: name -> (layer factory taking `bias`, per-sample input shape)
LAYERS: dict[str, tuple[Callable[[bool], nn.Module], tuple[int, ...]]] = {
    "linear": (lambda bias: nn.Linear(7, 5, bias=bias), (7,)),
    "conv": (lambda bias: nn.Conv2d(2, 3, 3, bias=bias), (2, 7, 7)),
    "conv-stride2-pad1": (lambda bias: nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=bias), (2, 7, 7)),
    "conv-dilation2-pad2": (lambda bias: nn.Conv2d(2, 3, 3, padding=2, dilation=2, bias=bias), (2, 7, 7)),
    "conv-all-asymmetric": (
        lambda bias: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), bias=bias),
        (2, 9, 8),
    ),
}
CONSTRUCTIONS = ["output_blocks", "input_blocks"]
CASES = [
    pytest.param(kind, bias, construction, id=f"{construction[0].upper()}-{kind}-{'bias' if bias else 'nobias'}")
    for construction in CONSTRUCTIONS
    for kind in LAYERS
    for bias in (True, False)
]


@cache
def one_layer(kind: str, bias: bool, construction: str) -> tuple[nn.Module, tuple[int, ...], Ticket]:
    """The target layer, its input shape and its ticket (no resampling: every value is draw 0)."""
    factory, shape = LAYERS[kind]
    torch.manual_seed(zlib.crc32(f"{kind}-{bias}".encode()))  # stable: hash() of a str changes per process
    layer = factory(bias).eval()
    domain = (0.0, 1.0) if construction == "output_blocks" else None  # O needs inputs >= 0
    config = BuildConfig(n=N, input_domain=domain, construction=construction, resample=0, solver="mitm", seed=SEED)
    ticket = build_ticket(nn.Sequential(layer), config, input_shape=shape)
    return layer, shape, ticket


def dense_target(layer: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
    weight = layer.weight.detach().double().numpy()
    bias = None if layer.bias is None else layer.bias.detach().double().numpy()
    return weight.reshape(weight.shape[0], -1), bias


def draw0_tensors(ticket: Ticket) -> dict[str, np.ndarray]:
    """The pair's random tensors from the stream keys: draw 0 (no resampling), except construction I's input
    blocks at the draws the builder chose for them (the draws array's last row; see reference.py)."""
    return tensors_with_draws(ticket.layouts[0], SEED, ticket.draws[0])


def sample_inputs(shape: tuple[int, ...], construction: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if construction == "output_blocks":
        return torch.rand((4, *shape), generator=generator, dtype=torch.float64)
    return torch.randn((4, *shape), generator=generator, dtype=torch.float64)


def the_pair(ticket: Ticket) -> PrunedPair:
    network = ticket.to_module()
    assert len(network) == 1 and isinstance(network[0], PrunedPair)
    return network[0]


# -- (a) the pair is exactly its effective-weights layer ------------------------------------------------------------


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_pair_equals_its_effective_weights_layer_in_float64(kind: str, bias: bool, construction: str) -> None:
    _, shape, ticket = one_layer(kind, bias, construction)
    pair = the_pair(ticket)
    assert pair.construction == construction and pair.kind == ("linear" if kind == "linear" else "conv2d")
    x = sample_inputs(shape, construction)
    got = copy.deepcopy(pair).double()(x)
    expected = pair.effective(torch.float64)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-12 * expected.abs().max().item()


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_first_layer_copies_the_target_geometry(kind: str, bias: bool, construction: str) -> None:
    layer, _, ticket = one_layer(kind, bias, construction)
    pair = the_pair(ticket)
    layout = ticket.layouts[0]
    assert (pair.first.bias is not None) == bias and pair.second.bias is None
    assert pair.first.weight.shape[0] == layout.hidden == pair.second.weight.shape[1]
    if isinstance(layer, nn.Conv2d):
        first, second = pair.first, pair.second
        assert isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)
        for attr in ("kernel_size", "stride", "padding", "dilation"):
            assert getattr(first, attr) == getattr(layer, attr), attr
        assert second.kernel_size == (1, 1) and second.out_channels == layer.out_channels


# -- (b) the masks realise subset sums close to the target -----------------------------------------------------------


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_effective_weights_are_the_block_subset_sums_of_the_source(kind: str, bias: bool, construction: str) -> None:
    """Block sums recomputed from the stream keys equal the pair's own effective weights."""
    _, _, ticket = one_layer(kind, bias, construction)
    layout = ticket.layouts[0]
    w_pos, w_neg, b = effective_weights(layout, draw0_tensors(ticket), ticket.masks[0])
    eff = the_pair(ticket).effective(torch.float64)
    assert np.allclose(eff.weight_pos.reshape(layout.d_out, -1).numpy(), w_pos, rtol=1e-12, atol=1e-15)
    if w_neg is None:
        assert eff.weight_neg is None
    else:
        assert np.allclose(eff.weight_neg.reshape(layout.d_out, -1).numpy(), w_neg, rtol=1e-12, atol=1e-15)
    if b is not None:
        assert np.allclose(eff.bias.numpy(), b, rtol=1e-12, atol=1e-15)
    else:
        assert not eff.bias.any()


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_subset_sums_match_the_target_within_the_reported_errors(kind: str, bias: bool, construction: str) -> None:
    layer, _, ticket = one_layer(kind, bias, construction)
    weight, target_bias = dense_target(layer)
    errors = realised_errors(ticket.layouts[0], draw0_tensors(ticket), ticket.masks[0], weight, target_bias)
    report = ticket.build["pairs"][0]
    d_in = weight.shape[1]
    # the reported maxima are exactly the realised ones (the solver's error is the network's error)
    assert errors[:, :d_in].max() == pytest.approx(report["weight_error_max"], abs=1e-12)
    if bias:
        assert errors[:, d_in].max() == pytest.approx(report["bias_error_max"], abs=1e-12)
    assert report["weights"] == weight.size
    # the empty subset already reaches |w|, so no error exceeds it; with n = 12 and one draw most are far below
    assert (errors[:, :d_in] <= np.abs(weight) + 1e-15).all()
    assert errors[:, :d_in].mean() < 0.5 * np.abs(weight).mean()


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_every_weight_gets_the_best_subset_of_its_coefficients(kind: str, bias: bool, construction: str) -> None:
    """The masks reach the enumeration optimum of each weight's (and bias's) subset-sum problem."""
    layer, _, ticket = one_layer(kind, bias, construction)
    weight, target_bias = dense_target(layer)
    tensors = draw0_tensors(ticket)
    realised = realised_errors(ticket.layouts[0], tensors, ticket.masks[0], weight, target_bias)
    optimum = optimal_errors(ticket.layouts[0], tensors, weight, target_bias)
    assert np.allclose(realised, optimum, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_pair_follows_the_target_layer_within_the_error_bound(kind: str, bias: bool, construction: str) -> None:
    """|pair(x) - layer(x)| <= max weight error * sum of |x| over the receptive field + max bias error."""
    layer, shape, ticket = one_layer(kind, bias, construction)
    report = ticket.build["pairs"][0]
    x = sample_inputs(shape, construction, seed=1)
    target = copy.deepcopy(layer).double()
    diff = (copy.deepcopy(the_pair(ticket)).double()(x) - target(x)).abs()
    if isinstance(layer, nn.Linear):
        reach = x.abs().sum(-1, keepdim=True)
    else:
        ones = torch.ones_like(target.weight[:1])
        reach = F.conv2d(x.abs(), ones, None, layer.stride, layer.padding, layer.dilation)
    bound = report["weight_error_max"] * reach + report.get("bias_error_max", 0.0)
    assert (diff <= bound * (1 + 1e-9) + 1e-12).all()


# -- (c) structure ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "bias"), [(k, b) for k in LAYERS for b in (True, False)])
def test_output_blocks_structure(kind: str, bias: bool) -> None:
    """V kept only on its block diagonal, kept U and beta entries > 0, and no kept entry without a use."""
    _, _, ticket = one_layer(kind, bias, "output_blocks")
    layout, masks, tensors = ticket.layouts[0], ticket.masks[0], draw0_tensors(ticket)
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    v_mask = masks["V"].reshape(d_out, d_out, n)
    off_diagonal = ~np.eye(d_out, dtype=bool)
    assert not v_mask[off_diagonal].any()
    assert (tensors["U"][masks["U"]] > 0).all()
    if bias:
        assert (tensors["beta"][masks["beta"]] > 0).all()
    # a V entry is kept exactly where its hidden unit carries some kept U (or beta) entry
    used = masks["U"].reshape(d_out, n, d_in).any(axis=2)
    if bias:
        used |= masks["beta"].reshape(d_out, n)
    assert np.array_equal(v_mask[np.arange(d_out), np.arange(d_out)], used)
    assert set(masks) == ({"U", "V", "beta"} if bias else {"U", "V"})


@pytest.mark.parametrize(("kind", "bias"), [(k, b) for k in LAYERS for b in (True, False)])
def test_input_blocks_structure(kind: str, bias: bool) -> None:
    """U kept only on its block diagonal (one input per hidden unit), beta only on the bias block."""
    _, _, ticket = one_layer(kind, bias, "input_blocks")
    layout, masks = ticket.layouts[0], ticket.masks[0]
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    blocks = d_in + int(bias)
    u_mask = masks["U"].reshape(blocks, n, d_in)
    diagonal = np.zeros_like(u_mask)
    diagonal[np.arange(d_in), :, np.arange(d_in)] = True
    assert not (u_mask & ~diagonal).any()
    first = the_pair(ticket).first.weight.detach().reshape(layout.hidden, -1)
    assert ((first != 0).sum(1) <= 1).all()  # at most one nonzero per hidden unit
    if bias:
        beta_mask = masks["beta"].reshape(blocks, n)
        assert not beta_mask[:d_in].any()
        assert not u_mask[d_in].any()  # the bias block is fed by nothing but beta
        assert (draw0_tensors(ticket)["beta"].reshape(blocks, n)[d_in][beta_mask[d_in]] > 0).all()
    # a U (or beta) entry is kept exactly where its hidden unit feeds some output
    feeds = masks["V"].reshape(d_out, blocks, n).any(axis=0)
    carries = u_mask.any(axis=2)
    if bias:
        carries |= masks["beta"].reshape(blocks, n)
    assert np.array_equal(feeds, carries)


@pytest.mark.parametrize(("kind", "bias", "construction"), CASES)
def test_masks_keep_only_nonzero_random_values(kind: str, bias: bool, construction: str) -> None:
    _, _, ticket = one_layer(kind, bias, construction)
    tensors = draw0_tensors(ticket)
    for name, mask in ticket.masks[0].items():
        assert mask.dtype == np.bool_ and mask.shape == tensors[name].shape
        assert (tensors[name][mask] != 0).all()


def test_kept_entries_are_the_pruned_network_weights() -> None:
    """The materialised layers hold source * mask: kept values unchanged, everything else exactly 0."""
    _, _, ticket = one_layer("conv-stride2-pad1", True, "input_blocks")
    pair, tensors, masks = the_pair(ticket), draw0_tensors(ticket), ticket.masks[0]
    for tensor, name in ((pair.first.weight, "U"), (pair.first.bias, "beta"), (pair.second.weight, "V")):
        expected = np.where(masks[name], tensors[name], np.float32(0))
        assert np.array_equal(tensor.detach().numpy().reshape(expected.shape), expected)
        assert not tensor.requires_grad


# -- (d) which construction each layer gets ------------------------------------------------------------------------


def constructions(module: nn.Module, shape: tuple[int, ...], resample: int = 1, **options: Any) -> list[str]:
    """The letters of the constructions chosen per layer (re-randomised builds by default: O/I by sign)."""
    ticket = build_ticket(module, BuildConfig(n=4, resample=resample, solver="mitm", **options), input_shape=shape)
    recorded = [p["construction"] for p in ticket.manifest()["pairs"]]
    assert recorded == [layout.construction for layout in ticket.layouts]
    return [LETTERS[c] for c in recorded]


def test_a_pure_build_uses_L_for_every_layer_whatever_the_sign() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert constructions(net, (3,), resample=0) == ["L", "L"]
    assert constructions(net, (3,), resample=0, input_domain=(0.0, 1.0)) == ["L", "L"]


def test_signed_input_gets_I_and_the_layer_after_relu_gets_O() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert constructions(net, (3,)) == ["I", "O"]
    assert constructions(net, (3,), input_domain=(-1.0, 1.0)) == ["I", "O"]


def test_declared_nonnegative_input_domain_gives_O_first() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert constructions(net, (3,), input_domain=(0.0, 1.0)) == ["O", "O"]


def test_layer_after_a_layer_without_relu_gets_I() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert constructions(net, (3,)) == ["I", "I"]
    assert constructions(net, (3,), input_domain=(0.0, 1.0)) == ["O", "I"]


def test_pooling_and_flatten_after_relu_keep_the_input_nonnegative() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    assert constructions(net, (1, 10, 10)) == ["I", "O", "O"]


def test_forcing_input_blocks_is_always_allowed() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert constructions(net, (3,), input_domain=(0.0, 1.0), construction="input_blocks") == ["I", "I"]


@pytest.mark.parametrize(
    ("net", "domain"),
    [
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), None),
        (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (-1.0, 1.0)),
        (nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), (0.0, 1.0)),
    ],
    ids=["signed-input", "domain-crosses-zero", "no-relu-before-second-layer"],
)
def test_forcing_output_blocks_where_inputs_may_be_negative_is_refused(
    net: nn.Module, domain: tuple[float, float] | None
) -> None:
    config = BuildConfig(n=4, input_domain=domain, construction="output_blocks", solver="mitm")
    with pytest.raises(ConstructionError, match="output blocks need inputs >= 0"):
        build_ticket(net, config, input_shape=(3,))
