"""Construction I's block draws: each input block's U rows are taken from the most sign-balanced of
draws 0..block_draws, recorded in the draws array's last row, and regenerated exactly by the ticket."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ticketsolver import BuildConfig, ConfigError, Ticket, build_ticket
from ticketsolver.source import RandomSource

SEED = 5
N = 16


def _ticket(block_draws: int, bias: bool = True) -> Ticket:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(7, 5, bias=bias))
    config = BuildConfig(n=N, resample=2, solver="mitm", seed=SEED, block_draws=block_draws)
    return build_ticket(net, config, input_shape=(7,))


def _diag(layout, draw: int) -> np.ndarray:  # noqa: ANN001
    u = RandomSource(SEED).tensor(0, "U", layout.shapes()["U"], layout.scales["U"], draw)
    blocks = layout.draw_shape[1]
    cols = np.arange(layout.d_in)
    return u.reshape(blocks, N, layout.d_in)[cols, :, cols]


def test_each_block_takes_the_earliest_most_balanced_draw() -> None:
    ticket = _ticket(block_draws=6)
    layout = ticket.layouts[0]
    chosen = ticket.draws[0][-1]
    balance = np.stack([np.minimum((_diag(layout, d) > 0).sum(1), (_diag(layout, d) < 0).sum(1)) for d in range(7)])
    assert np.array_equal(chosen[: layout.d_in], balance.argmax(0))  # argmax: the first of equal maxima
    beta = [RandomSource(SEED).tensor(0, "beta", layout.shapes()["beta"], layout.scales["beta"], d) for d in range(7)]
    positives = [int((b.reshape(-1, N)[layout.d_in] > 0).sum()) for b in beta]
    assert chosen[layout.d_in] == int(np.argmax(positives))


def test_the_network_holds_the_chosen_blocks_and_reloads_identically(tmp_path) -> None:  # noqa: ANN001
    ticket = _ticket(block_draws=6)
    layout = ticket.layouts[0]
    held = ticket.source_tensors(0)["U"].reshape(layout.draw_shape[1], N, layout.d_in)
    for j, d in enumerate(ticket.draws[0][-1][: layout.d_in]):
        drawn = RandomSource(SEED).tensor(0, "U", layout.shapes()["U"], layout.scales["U"], int(d))
        assert np.array_equal(held[j], drawn.reshape(held.shape)[j])
    loaded = Ticket.load(ticket.save(tmp_path / "t.ticket"))
    x = torch.randn(9, 7)
    assert torch.equal(ticket.to_module()(x), loaded.to_module()(x))


def test_block_draws_raise_the_weakest_usable_count() -> None:
    without, with_blocks = _ticket(block_draws=0), _ticket(block_draws=8)
    assert not without.draws[0][-1].any()
    assert with_blocks.build["pairs"][0]["usable_min"] >= without.build["pairs"][0]["usable_min"]


def test_a_layer_without_bias_has_no_bias_block() -> None:
    ticket = _ticket(block_draws=4, bias=False)
    assert ticket.draws[0].shape == (2 * ticket.layouts[0].d_out + 1, ticket.layouts[0].d_in)


@pytest.mark.parametrize("bad", [-1, 256, 2.5, True])
def test_block_draws_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"block_draws must be an integer in \[0, 255\]"):
        BuildConfig(n=8, resample=2, block_draws=bad)
