"""Depth L+1 (Burkholz 2022): one random layer per target layer, plus a first layer of input copies.

The claims of ticketsolver/construction/shallow.py and copies.py, checked on built tickets: the network has L + 1
random weight layers; it equals its effective-weights network in float64 (the first stage, an L pair, replaced by
its effective layer); every stage's output copies equal its effective weights on the target's own activations and
approximate the target layer; kept entries lie where the construction puts them (a copy row reads the copies of
its own target inputs and the constants, a conv reads constants only through taps that never touch padding); the
source is pure; and tickets round-trip through save/load and verify with a certified bound above the measured error.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ticketsolver import BuildConfig, ConfigError, ConstructionError, VerifyConfig, build_ticket, verify
from ticketsolver.construction.copies import CopyStage
from ticketsolver.ticket import Ticket

from .nets import small_cnn, small_mlp

_SHAPES = {"mlp": (5,), "cnn": (2, 8, 8)}


@pytest.fixture(scope="module")
def tickets() -> dict[str, tuple[nn.Sequential, Ticket]]:
    out = {}
    for name, net in (("mlp", small_mlp(0)), ("cnn", small_cnn(0))):
        config = BuildConfig(n=12, input_domain=(-1.0, 1.0), depth="L+1")
        out[name] = (net, build_ticket(net, config, input_shape=_SHAPES[name]))
    return out


def _box_inputs(shape: tuple[int, ...], count: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(count, *shape, generator=gen, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_network_has_one_random_layer_per_target_layer_plus_one(tickets, name):
    net, ticket = tickets[name]
    target_layers = sum(isinstance(m, nn.Linear | nn.Conv2d) for m in net)
    weight_layers = [m for m in ticket.to_module().modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert len(weight_layers) == ticket.random_layers() == target_layers + 1
    assert ticket.depth == "L+1" and not ticket.learned
    assert ticket.build["config"]["depth"] == "L+1"


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_an_l_plus_1_chain_equals_its_effective_weights_network_in_float64(tickets, name):
    """g, and g with its first stage (an L pair, linear on the box) replaced by the pair's effective layer: equal to
    float64 rounding on the whole input box; every later stage is linear by construction."""
    _, ticket = tickets[name]
    g = copy.deepcopy(ticket.to_module()).double()
    effective = copy.deepcopy(g)
    first = next(i for i, m in enumerate(effective) if isinstance(m, CopyStage))
    effective[first] = effective[first].layer.effective(torch.float64)
    x = torch.cat([_box_inputs(_SHAPES[name]), torch.full((1, *_SHAPES[name]), -1.0, dtype=torch.float64)])
    with torch.no_grad():
        out_g, out_eff = g(x), effective(x)
    assert (out_g - out_eff).abs().max() <= 1e-10 * max(1.0, float(out_g.abs().max()))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_copy_of_every_stage_matches_its_effective_weights_and_the_target(tickets, name):
    net, ticket = tickets[name]
    f, g = copy.deepcopy(net).double(), copy.deepcopy(ticket.to_module()).double()
    h = _box_inputs(_SHAPES[name])
    errors = {s["module_index"]: s["weight_error_max"] for s in ticket.build["pairs"]}
    with torch.no_grad():
        for index, (layer, stage) in enumerate(zip(f, g, strict=True)):
            if isinstance(stage, CopyStage):
                copies = stage.plan.collapse(stage(stage.plan.expand(h, stage.constants_in)))
                assert copies.shape[2] == stage.plan.copies_out
                target = layer(h).unsqueeze(2)
                assert (copies - stage.effective_forward(h)).abs().max() <= 1e-11
                # each copy is the target layer up to its subset sums' errors (bias within the tolerance too)
                bound = errors[index] * float(h.abs().sum(tuple(range(1, h.dim()))).max()) + 1e-6
                assert (copies - target).abs().max() <= bound
            h = layer(h)


def test_copy_rows_keep_only_their_own_inputs_copies_and_the_constants(tickets):
    """Stage k >= 1: a row of output copy (o, s') keeps entries only on the copies of its inputs and on constants;
    a constant row only on constants; a conv reads constants only through taps that never read padding."""
    _, ticket = tickets["cnn"]
    plans = ticket.copy_plans()
    assert plans is not None
    for k in range(1, len(plans)):
        plan, mask = plans[k], ticket.masks[k]["weight"]
        mask = mask.reshape(plan.rows, plan.channels, plan.positions)
        const_rows = mask[plan.d_out * plan.copies_out :]
        assert not const_rows[:, : plan.channels_in * plan.copies_in].any()
        if plan.kind == "conv2d" and plan.constants_in:
            # 3x3 stride-2 pad-1 conv of a 4x4 input: only the taps of row and column 1 and 2 stay inside
            taps_used = np.flatnonzero(mask[:, plan.channels_in * plan.copies_in :].any((0, 1)))
            assert set(taps_used) <= {4, 5, 7, 8}
            assert taps_used.size > 0


def test_the_source_is_pure(tickets):
    for _, ticket in tickets.values():
        sizes = ticket.sizes()
        assert sizes["source_kind"] == "iid" and sizes["examined_values"] == sizes["source_params"]
        assert not any(d.any() for d in ticket.draws)


def test_tickets_round_trip_through_save_and_load(tickets, tmp_path):
    net, ticket = tickets["cnn"]
    path = ticket.save(tmp_path / "cnn.ticket")
    loaded = Ticket.load(path)
    assert loaded.kept_hash() == ticket.kept_hash() and loaded.depth == "L+1"
    x = _box_inputs(_SHAPES["cnn"]).float()
    with torch.no_grad():
        assert torch.equal(loaded.to_module()(x), ticket.to_module()(x))


def test_verification_certifies_a_bound_above_what_it_measures(tickets):
    net, ticket = tickets["mlp"]
    report = verify(net, ticket, VerifyConfig(n_random=128, worst_case_starts=2, worst_case_steps=5))
    measured = report.sections["random"]["float64"].max_abs_error
    assert report.certified.max_bound is not None and measured <= report.certified.max_bound
    assert report.certified.forward["float32"].not_certified  # float rounding of L+1 is not bounded: said so
    checks = report.layers["float64"]
    assert [c.construction for c in checks] == ["offset_blocks", "copies", "copies"]
    assert all(c.pair_vs_effective_relative < 1e-10 for c in checks)
    assert all(c.outside_linear_region == 0 for c in checks)


def test_config_refuses_what_depth_l_plus_1_cannot_build():
    with pytest.raises(ConfigError, match="pure source"):
        BuildConfig(depth="L+1", resample=4)
    with pytest.raises(ConfigError, match="source_density"):
        BuildConfig(depth="L+1", source_density=0.5)
    with pytest.raises(ConfigError, match="depth must be one of"):
        BuildConfig(depth="3L")


def test_average_pooling_with_padding_is_refused_with_the_module():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2, padding=1), nn.Flatten(), nn.Linear(2 * 9, 2))
    with pytest.raises(ConstructionError, match="module 2: AvgPool2d with padding"):
        build_ticket(net, BuildConfig(n=8, input_domain=(0, 1), depth="L+1"), input_shape=(1, 6, 6))


def test_a_single_layer_is_a_plain_offset_pair():
    net = nn.Sequential(nn.Linear(4, 3))
    ticket = build_ticket(net, BuildConfig(n=10, input_domain=(-1, 1), depth="L+1"), input_shape=(4,))
    plans = ticket.copy_plans()
    assert plans is not None and plans[0].copies_out == 1 and plans[0].constants_out == 0
    assert ticket.random_layers() == 2


def test_a_copy_plan_that_does_not_match_its_units_is_refused_at_load(tickets, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from ticketsolver.errors import TicketFormatError

    _, ticket = tickets["mlp"]
    path = ticket.save(tmp_path / "t.ticket")
    with safe_open(str(path), "np") as handle:
        manifest = json.loads(handle.metadata()["manifest"])
    manifest["build"]["copies"][1]["copies_in"] = 11  # one copy fewer than the stage reads
    save_file(load_file(str(path)), str(tmp_path / "forged.ticket"), metadata={"manifest": json.dumps(manifest)})
    with pytest.raises(TicketFormatError):
        Ticket.load(tmp_path / "forged.ticket", verify_hash=False)
