"""An L pair held compactly: U's mask and values as its block diagonal, the conv pair as a grouped conv.

The held form must be the same network as the dense one, bit for bit where it is stored and in float64 where it runs:
the kept bytes streamed from the diagonal are the dense masked bytes, the grouped-conv pair computes what the dense
pair computes (chunked or not), its effective layer is the dense pair's, and a compact pair exports as
pruned = source x mask.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from ticketsolver.construction import OffsetPair, PairLayout, offset_pair
from ticketsolver.construction import layout as layout_module
from ticketsolver.construction.layout import ConvGeometry
from ticketsolver.construction.offset_blocks import solve_offset_blocks
from ticketsolver.solvers import get_solver
from ticketsolver.source import RandomSource

SEED = 5


def _layout(
    stride: int = 1, padding: int = 1, dilation: int = 1, densities: dict[str, float] | None = None
) -> PairLayout:
    conv = ConvGeometry(3, (3, 2), (stride, stride), (padding, padding), (dilation, dilation))
    return PairLayout(
        pair=2,
        construction="offset_blocks",
        kind="conv2d",
        d_out=4,
        d_in=3 * 3 * 2,
        n=6,
        has_bias=True,
        scales={"U": 0.5, "V": 0.4, "beta": 1.5},
        conv=conv,
        bias_units=9,
        densities=densities or {},
    )


def _solved(layout: PairLayout, bias_solver: Any = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Held tensors and the masks an actual solve chose (a weight of 0.1-scale entries on the box [-1, 1])."""
    rng = np.random.default_rng(0)
    weight = 0.1 * rng.standard_normal((layout.d_out, layout.d_in))
    bias = 0.1 * rng.standard_normal(layout.d_out)
    lo, hi = -np.ones(layout.d_in), np.ones(layout.d_in)
    source = RandomSource(SEED)
    solution = solve_offset_blocks(layout, source, weight, bias, get_solver("mitm"), lo, hi, bias_solver=bias_solver)
    if bias_solver is not None:
        assert float(solution.bias_errors.max()) < 1e-6
    return layout.held_tensors(source), solution.masks


@pytest.mark.parametrize("densities", [None, {"U": 0.6, "V": 0.7}], ids=["dense", "sparse"])
def test_held_form_is_the_dense_view_at_the_diagonal_and_streams_the_same_kept_bytes(
    densities: dict[str, float] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = _layout(densities=densities)
    source = RandomSource(SEED)
    held = layout.held_tensors(source)
    dense = layout.source_tensors(source)
    assert {k: v.shape for k, v in held.items()} == layout.mask_shapes()
    cols = np.arange(layout.d_in)
    diagonal = dense["U"][: layout.d_in * layout.n].reshape(layout.d_in, layout.n, layout.d_in)[cols, :, cols]
    assert np.array_equal(held["U"], diagonal)
    assert np.array_equal(layout.dense_tensors(held, source)["U"], dense["U"])
    for name in ("beta", "V"):
        assert np.array_equal(held[name], dense[name])
    mask = np.random.default_rng(1).random(layout.mask_shapes()["U"]) < 0.5
    expected = np.where(layout.dense_mask("U", mask), dense["U"], np.float32(0)).tobytes()
    monkeypatch.setattr(layout_module, "KEPT_CHUNK", 7)  # many chunks, uneven ones included
    assert b"".join(layout.kept_bytes("U", held["U"], mask)) == expected
    assert layout.dense_mask("U", mask).sum() == mask.sum()
    assert layout.held_params() == (
        layout.dense_params() if densities else layout.d_in * layout.n + layout.hidden * (1 + layout.d_out)
    )


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
@pytest.mark.parametrize("chunk", [1 << 24, 5], ids=["one-chunk", "chunked"])
def test_the_grouped_conv_pair_is_the_dense_pair(
    stride: int, padding: int, dilation: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offset_pair, "HIDDEN_CHUNK", chunk)
    layout = _layout(stride, padding, dilation)
    held, masks = _solved(layout)
    compact = OffsetPair.from_held(layout, held, masks).double()
    dense = layout.to_module(layout.dense_tensors(dict(held), RandomSource(SEED)), masks).double()
    x = torch.rand(5, 3, 9, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = dense.second(torch.relu(dense.first(x)))  # the dense layers themselves
        out, margin = compact.forward_with_margin(x)
        _, dense_margin = dense.forward_with_margin(x)
    torch.testing.assert_close(compact(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(margin, dense_margin, rtol=0, atol=1e-12)
    effective, reference = compact.effective(), dense.effective()
    torch.testing.assert_close(effective.weight_pos, reference.weight_pos, rtol=0, atol=1e-12)
    torch.testing.assert_close(effective.bias, reference.bias, rtol=0, atol=1e-12)
    linear = margin >= 0
    assert bool(linear.any())
    torch.testing.assert_close(out[linear], effective(x)[linear], rtol=0, atol=1e-12)
    # nothing of U beyond its diagonal: the grouped weight has one entry per unit
    assert compact.first.weight.numel() == layout.d_in * layout.n * 6
    assert int(torch.count_nonzero(compact.first.weight)) == int(np.count_nonzero(np.where(masks["U"], held["U"], 0)))


def test_compact_slots_are_pruned_as_source_times_mask() -> None:
    layout = _layout()
    held, masks = _solved(layout)
    compact = OffsetPair.from_held(layout, held, masks)
    names = set()
    for name, tensor, source, mask in OffsetPair.slots(layout, held, masks):
        param = compact.get_parameter(name)
        assert tensor in ("U", "beta", "V") and tuple(source.shape) == tuple(param.shape) == tuple(mask.shape)
        assert torch.equal(param, torch.from_numpy(np.where(mask, source, np.float32(0))))
        names.add(name)
    assert names == {name for name, _ in compact.named_parameters()}


def test_a_unit_reading_two_taps_is_refused() -> None:
    layout = _layout()
    held, masks = _solved(layout)
    compact = OffsetPair.from_held(layout, held, masks)
    with torch.no_grad():
        compact.first.weight[0, 0, 1, 1] = 0.25  # unit 0 reads tap 0; now a second tap too
    with pytest.raises(Exception, match="several taps"):
        compact.effective()


def test_float32_does_not_round_the_large_offsets_the_bias_block_cancels() -> None:
    """Offsets 3000x the weights' scale: the dense layers in float32 carry their rounding (~eps * beta per unit); the
    held pair evaluates beta + max(u·x, -beta) with the offsets' constant in float64, the same network."""
    layout = replace(_layout(), scales={"U": 0.5, "V": 0.4, "beta": 3000.0}, bias_units=400)
    held, masks = _solved(layout, get_solver("auto", tolerance=1e-8))  # a bias block wide enough to cancel them
    dense = layout.to_module(layout.dense_tensors(dict(held), RandomSource(SEED)), masks)
    compact = OffsetPair.from_held(layout, held, masks)
    x = torch.rand(5, 3, 9, 8, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        exact = copy.deepcopy(dense).double()
        reference = exact.second(torch.relu(exact.first(x)))
        dense_error = (dense.second(torch.relu(dense.first(x.float()))).double() - reference).abs().max()
        compact_error = (compact(x.float()).double() - reference).abs().max()
    assert float(dense_error) > 0
    assert float(compact_error) * 10 < float(dense_error)


def test_a_linear_pair_is_held_as_a_one_by_one_conv_and_is_the_dense_pair() -> None:
    layout = PairLayout(
        pair=1,
        construction="offset_blocks",
        kind="linear",
        d_out=5,
        d_in=7,
        n=6,
        has_bias=True,
        scales={"U": 0.5, "V": 0.4, "beta": 1.5},
        bias_units=9,
    )
    held, masks = _solved(layout)
    compact = OffsetPair.from_held(layout, held, masks).double()
    dense = layout.to_module(layout.dense_tensors(dict(held), RandomSource(SEED)), masks).double()
    x = torch.rand(11, 7, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = dense.second(torch.relu(dense.first(x)))
        out, margin = compact.forward_with_margin(x)
        _, dense_margin = dense.forward_with_margin(x)
    assert compact.kind == "linear" and out.shape == (11, 5)
    torch.testing.assert_close(compact(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(margin, dense_margin, rtol=0, atol=1e-12)
    effective, reference = compact.effective(), dense.effective()
    assert effective.kind == "linear"
    torch.testing.assert_close(effective.weight_pos, reference.weight_pos, rtol=0, atol=1e-12)
    torch.testing.assert_close(effective.bias, reference.bias, rtol=0, atol=1e-12)
