"""Construction L (offset blocks): pure, every coefficient usable, exactly linear over its box.

The claims of ticketsolver/construction/offset_blocks.py and box.py, checked on built tickets: each pair
equals its effective layer at the corners of its input box (float64, 1e-12), every kept unit's
pre-activation is >= 0 over the box, the random tensors are draw 0 of their documented laws (KS test on
the exported source tensors), and the ticket stores no draw index.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from ticketsolver import BuildConfig, ConfigError, build_ticket
from ticketsolver.construction import DEFAULT_INPUT_BOX, PrunedPair, pair_input_boxes

from .nets import small_cnn as _cnn
from .nets import small_mlp as _mlp


def _corners(lo: float, hi: float, shape: tuple[int, ...], count: int, seed: int) -> torch.Tensor:
    """Random corners of the box [lo, hi]^shape (every coordinate at an end), plus the two extreme ones."""
    gen = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (count, *shape), generator=gen, dtype=torch.float64)
    extremes = torch.stack([torch.full(shape, lo, dtype=torch.float64), torch.full(shape, hi, dtype=torch.float64)])
    return torch.cat([extremes, lo + (hi - lo) * bits])


def _pairs_and_inputs(ticket, x: torch.Tensor) -> list[tuple[PrunedPair, torch.Tensor]]:
    """Every pair of g in float64 with the activations that reach it from inputs x."""
    g = ticket.to_module().double()
    seen = []
    with torch.no_grad():
        for module in g:
            if isinstance(module, PrunedPair):
                seen.append((module, x))
            x = module(x)
    return seen


@pytest.mark.parametrize(
    ("make", "shape", "box"),
    [(_mlp, (5,), (-2.0, 3.0)), (_mlp, (5,), None), (_cnn, (2, 6, 6), (0.0, 1.0)), (_cnn, (2, 6, 6), (-1.0, 1.0))],
    ids=["mlp-signed", "mlp-default-box", "cnn-images", "cnn-signed"],
)
def test_pure_pairs_equal_their_effective_layers_at_the_corners_of_the_box(make, shape, box) -> None:
    net = make(0)
    ticket = build_ticket(net, BuildConfig(n=16, input_domain=box, solver="mitm"), input_shape=shape)
    assert {p.construction for p in ticket.layouts} == {"offset_blocks"}
    lo, hi = box if box is not None else DEFAULT_INPUT_BOX
    assert ticket.input_domain == (lo, hi)
    assert ticket.build["input_domain_origin"] == ("declared" if box is not None else "default")
    x = torch.cat([_corners(lo, hi, shape, 64, seed=1), lo + (hi - lo) * torch.rand(64, *shape, dtype=torch.float64)])
    for pair, inputs in _pairs_and_inputs(ticket, x):
        effective = pair.effective(torch.float64)
        with torch.no_grad():
            got, want = pair(inputs), effective(inputs)
        scale = max(1.0, float(want.abs().max()))
        assert float((got - want).abs().max()) <= 1e-12 * scale


def test_every_kept_unit_is_active_over_the_propagated_box() -> None:
    """The margin of the docstring: beta >= max(-u lo, -u hi) for every kept unit, at the box's corners."""
    ticket = build_ticket(_mlp(1), BuildConfig(n=16, input_domain=(-1.5, 2.5), solver="mitm"), input_shape=(5,))
    g = ticket.to_module().double()
    lo = torch.full((5,), -1.5, dtype=torch.float64)
    hi = torch.full((5,), 2.5, dtype=torch.float64)
    for module in g:
        if isinstance(module, PrunedPair):
            assert module.linear_on_box(lo, hi)
            effective = module.effective(torch.float64)
            # exact image of the box under the (linear) pair, then the ReLU that follows it
            w = effective.weight_pos
            mid, rad = (lo + hi) / 2, (hi - lo) / 2
            out_lo = w @ mid + effective.bias - w.abs() @ rad
            out_hi = w @ mid + effective.bias + w.abs() @ rad
            lo, hi = out_lo, out_hi
        else:
            lo, hi = module(lo.unsqueeze(0))[0], module(hi.unsqueeze(0))[0]


def test_a_pure_ticket_is_draw_zero_of_documented_laws(tmp_path) -> None:
    from safetensors import safe_open

    from ticketsolver.ticket.export import export_safetensors

    ticket = build_ticket(_cnn(2), BuildConfig(n=12, input_domain=(0.0, 1.0), solver="mitm"), input_shape=(2, 6, 6))
    assert not any(d.any() for d in ticket.draws)
    path = ticket.save(tmp_path / "t.ticket")
    with safe_open(str(path), "np") as f:
        assert not any(key.endswith(".draws") for key in f.keys())
    assert ticket.sizes()["source_kind"] == "iid"
    assert ticket.sizes()["examined_values"] == ticket.sizes()["source_params"]
    export = export_safetensors(ticket, tmp_path / "t.safetensors")
    with safe_open(str(export), "np") as f:
        laws = json.loads(f.metadata()["source_laws"])
        assert laws and set(laws) == {k for k in f.keys() if k.endswith(".source")}
        for key, (law, scale) in laws.items():
            values = f.get_tensor(key).astype(np.float64).ravel() / scale
            unit = values if law == "nonnegative" else (values + 1.0) / 2.0
            # float32 rounding moves values by ~1e-7 of the scale: far below what KS can see at these sizes
            assert stats.kstest(unit, "uniform").pvalue > 1e-4, key


def test_usable_coefficients_are_nearly_all_n() -> None:
    """Sign pruning gave ~n/2 per problem; L gives ~0.9 n on signed and on non-negative inputs alike."""
    for box in ((-1.0, 1.0), (0.0, 1.0)):
        ticket = build_ticket(_mlp(3, d_in=12), BuildConfig(n=24, input_domain=box, solver="mitm"), input_shape=(12,))
        first = ticket.build["pairs"][0]
        assert first["usable_mean"] >= 0.8 * 24, (box, first["usable_mean"])


def test_offset_blocks_refuse_resampling() -> None:
    with pytest.raises(ConfigError, match="construction offset_blocks \\(L\\) is built from a pure source"):
        BuildConfig(n=8, construction="offset_blocks", resample=4, solver="mitm")


def test_identical_builds_give_identical_tickets() -> None:
    a = build_ticket(_mlp(4), BuildConfig(n=10), input_shape=(5,))
    b = build_ticket(_mlp(4), BuildConfig(n=10), input_shape=(5,))
    assert a.kept_hash() == b.kept_hash()
    for masks_a, masks_b in zip(a.masks, b.masks, strict=True):
        for name in masks_a:
            assert np.array_equal(masks_a[name], masks_b[name])


@pytest.mark.parametrize("n", [20, 30])
def test_pure_mlp_matches_its_target_closely(n: int) -> None:
    """End to end in float64 on random inputs of the box: all-usable subset sums give small errors."""
    net = _mlp(5, d_in=8)
    ticket = build_ticket(net, BuildConfig(n=n, input_domain=(-1.0, 1.0)), input_shape=(8,))
    x = -1.0 + 2.0 * torch.rand(512, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f, g = net.double()(x), ticket.to_module().double()(x)
    rel = float(((f - g).abs().amax(1) / f.abs().amax(1)).max())
    assert rel < (1e-2 if n == 20 else 1e-4), rel


@pytest.mark.parametrize(("make", "shape", "box"), [(_mlp, (5,), (-2.0, 3.0)), (_cnn, (2, 6, 6), (0.0, 1.0))])
def test_each_pair_is_linear_on_the_box_the_builder_propagated_to_it(make, shape, box) -> None:
    """Every kept unit's pre-activation is >= 0 on the whole (replayed) box of its pair, corners included."""
    ticket = build_ticket(make(6), BuildConfig(n=14, input_domain=box, solver="mitm"), input_shape=shape)
    boxes = pair_input_boxes(ticket)
    pairs = list(ticket.pairs())
    assert len(boxes) == len(pairs)
    for pair, layout, (lo, hi) in zip(pairs, ticket.layouts, boxes, strict=True):
        assert (lo <= hi).all()
        u = pair.first.weight.detach().double().reshape(layout.hidden, -1)
        beta = pair.first.bias.detach().double()
        kept = (u != 0).any(1)
        column = (u != 0).double().argmax(1)
        # one input per unit: its least pre-activation sits at a corner of that input's interval
        at_lo = u[torch.arange(layout.hidden), column] * torch.from_numpy(lo)[column] + beta
        at_hi = u[torch.arange(layout.hidden), column] * torch.from_numpy(hi)[column] + beta
        assert bool((torch.minimum(at_lo, at_hi)[kept] >= 0).all())
