"""Resampling (IteRand): units above the tolerance are redrawn from later streams; the best draw is kept.

The reference replays the rounds unit by unit from docs/design.md section 2.6 alone: a unit's own entries come from
the stream of its draw, its best error at each draw is found by enumeration, and rounds stop once it is within
tolerance.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ticketsolver import BuildConfig, Ticket, build_ticket

from .reference import optimal_unit_errors, realised_unit_errors, tensors_with_draws

N = 10
SEED = 3
ROUNDS = 6

LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "conv-stride2-pad1": (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1), (2, 6, 6)),
}
CASES = [
    pytest.param(kind, construction, id=f"{construction[0].upper()}-{kind}")
    for construction in ("output_blocks", "input_blocks")
    for kind in LAYERS
]


def _build(kind: str, construction: str, resample: int, tolerance: float) -> Ticket:
    factory, shape = LAYERS[kind]
    torch.manual_seed(17)
    domain = (0.0, 1.0) if construction == "output_blocks" else None
    config = BuildConfig(
        n=N,
        input_domain=domain,
        construction=construction,
        resample=resample,
        tolerance=tolerance,
        solver="mitm",
        seed=SEED,
        block_draws=0,  # these tests follow V's resampling rounds alone; block draws have their own tests
    )
    return build_ticket(nn.Sequential(factory()), config, input_shape=shape)


def unit_shape(layout) -> tuple[int, int]:  # noqa: ANN001
    """The resampling units' part of the draws: O one row per output; I an x+ row and an x- row per output
    (the bias column in the first). Construction I's last row, the input blocks' draws, is excluded."""
    rows = layout.d_out if layout.construction == "output_blocks" else 2 * layout.d_out
    return (rows, layout.d_in + int(layout.has_bias))


def unit_draws(ticket: Ticket) -> np.ndarray:
    """The per-unit draws of U/beta (O) or V (I): the ticket's draws without construction I's block row."""
    return ticket.draws[0][: unit_shape(ticket.layouts[0])[0]]


def with_blocks_at_zero(layout, units: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """A full draws array for ``units``, every input block at draw 0 (these builds use block_draws=0)."""
    full = np.zeros(layout.draw_shape, dtype=np.uint8)
    full[: unit_shape(layout)[0]] = units
    return full


def _target(kind: str) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(17)
    layer = LAYERS[kind][0]()
    weight = layer.weight.detach().double().numpy()
    return weight.reshape(weight.shape[0], -1), layer.bias.detach().double().numpy()


@cache
def single_and_resampled(kind: str, construction: str) -> tuple[Ticket, Ticket, float]:
    """The one-draw ticket, the ticket with up to ROUNDS redraws, and the tolerance (the median unit error)."""
    single = _build(kind, construction, 0, 1e-6)
    weight, bias = _target(kind)
    layout = single.layouts[0]
    tensors = tensors_with_draws(layout, SEED, single.draws[0])
    errors = realised_unit_errors(layout, tensors, single.masks[0], weight, bias)
    tolerance = float(np.median(errors))
    return single, _build(kind, construction, ROUNDS, tolerance), tolerance


def unit_errors(ticket: Ticket, kind: str) -> np.ndarray:
    weight, bias = _target(kind)
    layout = ticket.layouts[0]
    tensors = tensors_with_draws(layout, SEED, ticket.draws[0])
    return realised_unit_errors(layout, tensors, ticket.masks[0], weight, bias)


@pytest.mark.parametrize(("kind", "construction"), CASES)
def test_resampling_never_makes_a_unit_worse(kind: str, construction: str) -> None:
    single, resampled, _ = single_and_resampled(kind, construction)
    before, after = unit_errors(single, kind), unit_errors(resampled, kind)
    assert (after <= before + 1e-15).all()
    assert after.max() < before.max()  # and the tail does shrink
    report = resampled.build["pairs"][0]
    assert after[:, :-1].max() == pytest.approx(report["weight_error_max"], abs=1e-12)
    assert after[:, -1].max() == pytest.approx(report["bias_error_max"], abs=1e-12)


@pytest.mark.parametrize(("kind", "construction"), CASES)
def test_draws_are_recorded_per_unit_within_the_rounds(kind: str, construction: str) -> None:
    """A unit's draw index is one of the rounds 0..ROUNDS, and a unit carries a later draw only where that draw
    made it strictly better than draw 0 (which it can only have been compared with when it was above tolerance)."""
    single, resampled, tolerance = single_and_resampled(kind, construction)
    layout = resampled.layouts[0]
    draws = unit_draws(resampled)
    assert draws.dtype == np.uint8 and draws.shape == unit_shape(layout)
    assert not resampled.draws[0][draws.shape[0] :].any()  # block_draws=0: every input block at draw 0
    assert not single.draws[0].any()
    assert 0 < draws.max() <= ROUNDS  # some unit was redrawn, none beyond the last round
    redrawn = draws > 0
    before, after = unit_errors(single, kind), unit_errors(resampled, kind)
    assert (before[redrawn] > tolerance).all()
    assert (after[redrawn] < before[redrawn]).all()
    assert resampled.build["pairs"][0]["redrawn_units"] == int(redrawn.sum())


@pytest.mark.parametrize(("kind", "construction"), CASES)
def test_units_within_tolerance_after_round_zero_are_never_redrawn(kind: str, construction: str) -> None:
    single, resampled, tolerance = single_and_resampled(kind, construction)
    before, after = unit_errors(single, kind), unit_errors(resampled, kind)
    settled = before <= tolerance
    assert settled.any() and (~settled).any()
    assert (unit_draws(resampled)[settled] == 0).all()
    assert np.array_equal(after[settled], before[settled])


@pytest.mark.parametrize(("kind", "construction"), CASES)
def test_each_unit_keeps_the_first_best_draw_of_the_rounds_it_took_part_in(kind: str, construction: str) -> None:
    """Replays IteRand per unit: redraw while above tolerance, keep a draw only where strictly better."""
    _, resampled, tolerance = single_and_resampled(kind, construction)
    layout = resampled.layouts[0]
    weight, bias = _target(kind)
    optimum_at = [
        optimal_unit_errors(
            layout,
            tensors_with_draws(layout, SEED, with_blocks_at_zero(layout, np.full(unit_shape(layout), d))),
            weight,
            bias,
        )
        for d in range(ROUNDS + 1)
    ]
    expected_draws = np.zeros(unit_shape(layout), dtype=np.uint8)
    expected_errors = optimum_at[0].copy()
    for unit in np.ndindex(*unit_shape(layout)):
        for d in range(1, ROUNDS + 1):
            if expected_errors[unit] <= tolerance:
                break
            if optimum_at[d][unit] < expected_errors[unit]:
                expected_errors[unit], expected_draws[unit] = optimum_at[d][unit], d
    assert np.array_equal(unit_draws(resampled), expected_draws)
    assert np.allclose(unit_errors(resampled, kind), expected_errors, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("kind", "construction"), CASES)
def test_resampled_ticket_holds_the_redrawn_values(kind: str, construction: str) -> None:
    _, resampled, _ = single_and_resampled(kind, construction)
    layout = resampled.layouts[0]
    expected = tensors_with_draws(layout, SEED, resampled.draws[0])
    got = resampled.source_tensors(0)
    assert set(got) == set(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


@pytest.mark.parametrize(("kind", "construction"), CASES)
def test_resampled_ticket_regenerates_the_same_network_after_save_and_load(
    kind: str, construction: str, tmp_path: Path
) -> None:
    _, resampled, _ = single_and_resampled(kind, construction)
    loaded = Ticket.load(resampled.save(tmp_path / "resampled.ticket"))
    assert np.array_equal(loaded.draws[0], resampled.draws[0]) and loaded.draws[0].dtype == np.uint8
    assert loaded.kept_hash() == resampled.kept_hash()
    before, after = resampled.to_module().state_dict(), loaded.to_module().state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_zero_tolerance_redraws_every_inexact_unit_for_all_rounds() -> None:
    single = _build("linear", "input_blocks", 0, 0.0)
    resampled = _build("linear", "input_blocks", 2, 0.0)
    before, after = unit_errors(single, "linear"), unit_errors(resampled, "linear")
    assert (after <= before + 1e-15).all()
    improved = after < before
    assert np.array_equal(unit_draws(resampled) > 0, improved)
