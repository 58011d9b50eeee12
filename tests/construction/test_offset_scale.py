"""Construction L at the scale of large conv layers: U's diagonal without U, memory-bounded steps, same answers.

References: the whole draw of U (``PairLayout.tensor``, i.e. ``RandomSource.tensor``) for the diagonal; NumPy's own
Philox stream (``random_raw``, ``Generator.random`` in one call) for random access and chunked generation; the
full-size float64 reductions the chunked steps replace; tensors materialised by ``source_tensors`` for the errors a
solution reports.
"""

from __future__ import annotations

import numpy as np
import pytest

import ticketsolver.construction.offset_blocks as offset_blocks
import ticketsolver.construction.rounds as rounds
import ticketsolver.source as source_module
from ticketsolver.construction.builder import SCALE_MARGINS
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.offset_blocks import OffsetBlocks, offset_scales, solve_offset_blocks
from ticketsolver.errors import ConfigError, ConstructionError
from ticketsolver.solvers import get_solver
from ticketsolver.source import RandomSource, philox_words


def _layout(
    kind: str, d_out: int, c_in: int, n: int, pair: int = 0, lo: float = 0.0, seed: int = 0, **extra: object
) -> tuple[PairLayout, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An L layout for a random target (weights ~ N(0, 2/fan_in)) on the box [lo, 3]: layout, w, b, lo, hi."""
    conv = ConvGeometry(c_in, (3, 3), (1, 1), (1, 1), (1, 1)) if kind == "conv2d" else None
    d_in = c_in * 9 if conv else c_in
    rng = np.random.default_rng([seed, d_out, d_in])
    weight = rng.normal(0.0, np.sqrt(2.0 / d_in), (d_out, d_in))
    bias = rng.normal(0.0, 0.1, d_out)
    lo_box, hi_box = np.full(d_in, lo), np.full(d_in, 3.0)
    scales, units = offset_scales(weight, bias, lo_box, hi_box, n, SCALE_MARGINS["offset_blocks"])
    layout = PairLayout(
        pair=pair,
        construction="offset_blocks",
        kind=kind,  # type: ignore[arg-type]
        d_out=d_out,
        d_in=d_in,
        n=n,
        has_bias=True,
        scales=scales,
        conv=conv,
        bias_units=units,
        **extra,  # type: ignore[arg-type]
    )
    return layout, weight, bias, lo_box, hi_box


def _full_diagonal(layout: PairLayout, tensor: np.ndarray) -> np.ndarray:
    cols = np.arange(layout.d_in)
    return tensor[: layout.d_in * layout.n].reshape(layout.d_in, layout.n, layout.d_in)[cols, :, cols]


# -- random access to the stream -------------------------------------------------------------------------------------


def test_philox_words_are_numpys_stream_at_any_position() -> None:
    key = np.array([2**64 - 1, 3 * 2**32 + 5], dtype=np.uint64)
    stream = np.random.Philox(key=key).random_raw(1000)
    positions = np.array([[0, 1, 2, 3], [4, 517, 998, 999]], dtype=np.uint64)
    assert np.array_equal(philox_words(key, positions), stream[positions.astype(np.intp)])
    far = np.random.Philox(key=key)
    far.advance(10**15)  # counter 10**15: the next block is the one at counter 10**15 + 1, words 4 * 10**15 + 0..3
    assert np.array_equal(philox_words(key, np.arange(4 * 10**15, 4 * 10**15 + 4, dtype=np.uint64)), far.random_raw(4))


@pytest.mark.parametrize("law", ["symmetric", "nonnegative", "signed_constant"])
@pytest.mark.parametrize(("seed", "pair", "tensor", "draw"), [(0, 0, "U", 0), (2**64 - 1, 2**32 - 1, "V", 2**16 - 1)])
def test_values_at_are_the_entries_of_the_whole_tensor(law: str, seed: int, pair: int, tensor: str, draw: int) -> None:
    source = RandomSource(seed)
    whole = source.tensor(pair, tensor, (37, 29), 0.37, draw, law)  # type: ignore[arg-type]
    index = np.random.default_rng(seed % 97).integers(0, whole.size, (13, 7))
    some = source.values_at(pair, tensor, index, 0.37, draw, law)  # type: ignore[arg-type]
    assert some.dtype == np.float32 and some.shape == (13, 7)
    assert np.array_equal(some, whole.ravel()[index])
    assert source.values_at(pair, tensor, np.zeros(0, dtype=np.int64), 0.37, draw, law).shape == (0,)  # type: ignore[arg-type]


def test_er_mask_at_is_the_whole_er_mask() -> None:
    source = RandomSource(11)
    mask = source.er_mask(4, "U", (61, 33), 0.3)
    assert np.array_equal(source.er_mask_at(4, "U", np.arange(mask.size), 0.3), mask.ravel())


def test_random_access_refuses_normal_law_and_bad_indices() -> None:
    source = RandomSource(0)
    with pytest.raises(ConfigError, match="one word per value"):
        source.values_at(0, "W", np.arange(3), 1.0, law="normal")
    with pytest.raises(ConfigError, match=">= 0"):
        source.values_at(0, "U", np.array([-1]), 1.0)
    with pytest.raises(ConfigError, match="integers"):
        source.values_at(0, "U", np.array([0.5]), 1.0)


@pytest.mark.parametrize("law", ["symmetric", "nonnegative", "signed_constant"])
def test_chunked_generation_is_the_stream_of_one_call(monkeypatch: pytest.MonkeyPatch, law: str) -> None:
    """Whole tensors are drawn GENERATION_CHUNK values at a time; NumPy's Generator.random takes one word per
    value, so any chunking is the same stream as one call (the documented layout)."""
    source = RandomSource(5)
    r = np.random.Generator(np.random.Philox(key=source.key(3, "V", 2))).random(23 * 19, dtype=np.float64)
    expected = {
        "symmetric": (0.5 * (2.0 * r - 1.0)).astype(np.float32),
        "nonnegative": (0.5 * r).astype(np.float32),
        "signed_constant": np.where(r >= 0.5, 0.5, -0.5).astype(np.float32),
    }[law]
    monkeypatch.setattr(source_module, "GENERATION_CHUNK", 7)
    assert np.array_equal(source.tensor(3, "V", (23, 19), 0.5, 2, law).ravel(), expected)  # type: ignore[arg-type]
    er = np.random.Generator(np.random.Philox(key=source.key(3, "V", er=True))).random(23 * 19, dtype=np.float64)
    assert np.array_equal(source.er_mask(3, "V", (23, 19), 0.4).ravel(), er < 0.4)


# -- PairLayout.offset_diagonal --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "d_out", "c_in", "n", "pair", "seed"),
    [
        ("linear", 5, 7, 3, 0, 0),
        ("linear", 3, 1, 30, 9, 2**64 - 1),  # d_in = 1: several entries of one Philox block
        ("linear", 4, 2, 1, 2**32 - 1, 123),
        ("conv2d", 6, 3, 4, 1, 7),  # d_in = 27
        ("conv2d", 2, 5, 30, 3, 2**40 + 1),  # d_in = 45, n = 30
    ],
)
def test_offset_diagonal_is_bit_identical_to_the_full_draw(kind, d_out, c_in, n, pair, seed) -> None:
    layout = _layout(kind, d_out, c_in, n, pair=pair, lo=-3.0 if seed % 2 else 0.0)[0]
    source = RandomSource(seed)
    diagonal = layout.offset_diagonal(source)
    assert diagonal.dtype == np.float32 and diagonal.shape == (layout.d_in, n)
    full = layout.tensor(source, "U")
    assert np.array_equal(diagonal, _full_diagonal(layout, full))
    assert np.array_equal(diagonal, _full_diagonal(layout, layout.source_tensors(source)["U"]))


def test_offset_diagonal_of_a_sparse_source_is_zero_outside_the_er_mask_as_the_network_holds_it() -> None:
    layout = _layout("conv2d", 4, 3, 6, pair=2, densities={"U": 0.5, "V": 0.7})[0]
    source = RandomSource(3)
    diagonal = layout.offset_diagonal(source)
    held = _full_diagonal(layout, layout.source_tensors(source)["U"])
    assert np.array_equal(diagonal, held)
    assert (diagonal == 0).any() and (diagonal != 0).any()
    exists = _full_diagonal(layout, layout.er_masks(source)["U"])
    assert np.array_equal(diagonal != 0, exists)


def test_offset_diagonal_is_construction_ls_only() -> None:
    layout = _layout("linear", 3, 4, 5)[0]
    other = PairLayout(0, "input_blocks", "linear", 3, 4, 5, True, {"U": 0.1, "beta": 0.1, "V": 0.1})
    with pytest.raises(ConstructionError, match="offset_diagonal"):
        other.offset_diagonal(RandomSource(0))
    assert layout.offset_diagonal(RandomSource(0)).shape == (4, 5)


# -- the draw and the solve ------------------------------------------------------------------------------------------


def test_the_draw_of_a_dense_source_never_generates_u_and_equals_the_full_draw(monkeypatch) -> None:
    layout, _, _, lo, hi = _layout("conv2d", 5, 4, 8, pair=1, lo=-3.0)
    source = RandomSource(21)
    full = {name: layout.tensor(source, name) for name in ("U", "beta", "V")}
    whole_tensor = RandomSource.tensor

    def no_u(self, pair, tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert tensor != "U", "construction L's draw generated the whole U"
        return whole_tensor(self, pair, tensor, *args, **kwargs)

    monkeypatch.setattr(RandomSource, "tensor", no_u)
    blocks = OffsetBlocks.draw(layout, source, lo, hi)
    split = layout.d_in * layout.n
    assert np.array_equal(blocks.u, _full_diagonal(layout, full["U"]).astype(np.float64))
    assert np.array_equal(blocks.beta, full["beta"][:split].astype(np.float64).reshape(layout.d_in, layout.n))
    assert np.array_equal(blocks.beta_bias, full["beta"][split:].astype(np.float64))
    assert np.array_equal(blocks.v_all, full["V"])
    assert blocks.usable.mean() > 0.8  # the box [-3, 3] with the default offset scale: ~0.875 of the units


def test_constants_in_row_chunks_equal_the_full_float64_reduction(monkeypatch) -> None:
    rng = np.random.default_rng(4)
    v = rng.uniform(-1, 1, (37, 11, 7)).astype(np.float32)
    offset_beta = np.where(rng.random((11, 7)) < 0.5, rng.uniform(0, 5, (11, 7)), 0.0)
    chosen = rng.random((37, 11, 7)) < 0.5
    whole = (v.astype(np.float64) * offset_beta * chosen).sum((1, 2))
    for chunk in (1, 77, 10**6):  # one row at a time, a few rows, all rows
        monkeypatch.setattr(offset_blocks, "CONSTANT_CHUNK", chunk)
        assert np.array_equal(offset_blocks._constants(v, offset_beta, chosen), whole)


def test_a_layer_solved_in_small_chunks_chooses_the_same_masks(monkeypatch) -> None:
    layout, weight, bias, lo, hi = _layout("conv2d", 6, 2, 12, pair=4, lo=0.0)
    solver = get_solver("auto", tolerance=1e-8)
    whole = solve_offset_blocks(layout, RandomSource(1), weight, bias, solver, lo, hi)
    monkeypatch.setattr(rounds, "CHUNK", 5)  # 108 weights in 22 chunks of problems
    monkeypatch.setattr(offset_blocks, "CONSTANT_CHUNK", 1)
    seen: list[tuple[int, int]] = []

    def progress(round_: int, done: int, total: int) -> None:
        seen.append((done, total))

    chunked = solve_offset_blocks(layout, RandomSource(1), weight, bias, solver, lo, hi, progress=progress)
    for name in ("U", "beta", "V"):
        assert np.array_equal(chunked.masks[name], whole.masks[name]), name
    assert np.array_equal(chunked.weight_errors, whole.weight_errors)
    assert np.array_equal(chunked.bias_errors, whole.bias_errors)
    total = weight.size + weight.shape[0]
    assert all(t == total for _, t in seen) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (total, total)


@pytest.mark.parametrize("lo", [0.0, -3.0], ids=["post-relu", "signed"])
def test_reported_errors_are_those_of_the_materialised_tensors_and_meet_the_ladders_contract(lo: float) -> None:
    """Errors recomputed from the whole regenerated tensors and the masks, exactly as the solver computes them
    (float64 products of the float32 values). At n = 30 every problem ends within the tolerance or solved exactly
    (the ladder's last stages take all of its <= 30 usable coefficients), so a weight above the tolerance has the
    exact engine's optimum over its usable coefficients."""
    layout, weight, bias, lo_box, hi_box = _layout("conv2d", 8, 3, 30, pair=6, lo=lo)
    source = RandomSource(17)
    solution = solve_offset_blocks(layout, source, weight, bias, get_solver("auto", tolerance=1e-8), lo_box, hi_box)
    tensors = layout.source_tensors(source)
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    u = _full_diagonal(layout, tensors["U"]).astype(np.float64)
    v = tensors["V"][:, : d_in * n].reshape(d_out, d_in, n).astype(np.float64)
    chosen = solution.masks["V"][:, : d_in * n].reshape(d_out, d_in, n)
    coeffs = (v * u).reshape(-1, n)
    effective = (coeffs * chosen.reshape(-1, n)).sum(1).reshape(d_out, d_in)
    assert np.array_equal(np.abs(weight - effective), solution.weight_errors)
    # a kept U entry is the diagonal entry of a unit that feeds some output (U's mask is held as its diagonal), and
    # nothing else of U is kept
    assert solution.masks["U"].shape == layout.mask_shapes()["U"] == (d_in, n)
    assert np.array_equal(solution.masks["U"], chosen.any(0))
    u_kept = layout.dense_mask("U", solution.masks["U"])
    assert np.array_equal(u_kept[: d_in * n].reshape(d_in, n, d_in)[np.arange(d_in), :, np.arange(d_in)], chosen.any(0))
    assert int(u_kept.sum()) == int(chosen.any(0).sum())
    above = np.flatnonzero(solution.weight_errors.ravel() > 1e-8)
    rows = above[:40]
    if rows.size:
        blocks = OffsetBlocks.draw(layout, source, lo_box, hi_box)
        c, use, t = blocks.weight_problems(rows, weight)
        optimum = get_solver("mitm").solve(c, t, use).errors
        np.testing.assert_allclose(solution.weight_errors.ravel()[rows], optimum, rtol=0, atol=1e-15)
    assert float(solution.bias_errors.max()) <= 1.1e-8
    assert "failed" not in solution.stats["status"]
