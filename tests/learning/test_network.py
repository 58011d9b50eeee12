"""The frozen random networks masks are learned over: a widened architecture, a constructed ticket's source."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ticketsolver import BuildConfig, build_ticket
from ticketsolver.errors import ConfigError
from ticketsolver.learning import LearnConfig, network_of_ticket, random_network_of
from ticketsolver.learning.train import masked_network
from ticketsolver.models import MLP, LeNet5, Target


def test_lenet5_widened_twice_keeps_input_and_output_and_follows_flatten() -> None:
    net = random_network_of(Target.from_module(LeNet5(), (1, 28, 28)), width=2.0, keep=0.5, seed=3)
    shapes = [(u.kind, u.d_out, u.d_in, u.conv.in_channels if u.conv else None) for u in net.layouts]
    assert shapes == [
        ("conv2d", 12, 1 * 25, 1),
        ("conv2d", 32, 12 * 25, 12),
        ("linear", 240, 32 * 5 * 5, None),  # the flattened widened channels
        ("linear", 168, 240, None),
        ("linear", 10, 168, None),
    ]
    assert [s["op"] for s in net.steps] == [
        *("layer", "relu", "maxpool2d", "layer", "relu", "maxpool2d", "flatten"),
        *("layer", "relu", "layer", "relu", "layer"),
    ]
    assert all(u.bias is None and u.weight.pair == k and u.weight.tensor == "W" for k, u in enumerate(net.layouts))
    assert [u.weight.scale for u in net.layouts] == [math.sqrt(2 / (u.d_in * 0.5)) for u in net.layouts]
    assert net.target_params == 61706 and net.seed == 3 and net.origin == "arch"
    module, _ = masked_network(net, LearnConfig(keep=0.5))
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_widths_round_and_stay_at_least_one() -> None:
    target = Target.from_module(MLP((13, 64, 32, 3)), (13,))
    assert [u.d_out for u in random_network_of(target, width=0.3).layouts] == [19, 10, 3]  # 19.2, 9.6
    assert [u.d_out for u in random_network_of(target, width=0.001).layouts] == [1, 1, 3]


def test_signed_constant_and_normal_laws_have_the_kaiming_scale() -> None:
    target = Target.from_module(MLP((100, 400, 3)), (100,))
    constant = random_network_of(target, init="signed_constant", keep=0.25, scale_fan=True)
    w = constant.layouts[0].tensor(constant.source, "weight")
    std = math.sqrt(2 / (100 * 0.25))
    assert set(np.unique(w).tolist()) == {np.float32(-std), np.float32(std)}
    assert abs(float((w > 0).mean()) - 0.5) < 0.01
    normal = random_network_of(target, init="kaiming_normal", keep=0.25, scale_fan=False)
    v = normal.layouts[0].tensor(normal.source, "weight")
    assert normal.layouts[0].weight.law == "normal"
    assert abs(float(v.std()) / math.sqrt(2 / 100) - 1) < 0.01


@pytest.mark.parametrize(("argument", "value"), [("width", 0.0), ("keep", 0.0), ("keep", 1.5), ("init", "xavier")])
def test_bad_arguments_are_refused_by_name(argument: str, value: object) -> None:
    target = Target.from_module(MLP((4, 3)), (4,))
    with pytest.raises(ConfigError, match=argument):
        random_network_of(target, **{argument: value})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def constructed():  # noqa: ANN201 - a Ticket
    torch.manual_seed(0)
    target = MLP((5, 6, 3))
    return build_ticket(target, BuildConfig(n=4, input_domain=(-1.0, 1.0)), input_shape=(5,))


def test_a_ticket_source_becomes_its_pairs_layers_with_the_same_values(constructed) -> None:  # noqa: ANN001
    net = network_of_ticket(constructed, use_masks=False)
    assert net.origin == "source-of" and net.init_masks is None
    assert net.keep_per_unit == network_of_ticket(constructed, use_masks=True).keep_per_unit  # the construction budget
    assert [s["op"] for s in net.steps] == ["layer", "relu", "layer", "relu", "layer", "relu", "layer"]
    assert net.seed == constructed.seed and net.target_params == 5 * 6 + 6 + 6 * 3 + 3
    for p in range(2):
        pair = constructed.source_tensors(p)
        first, second = (net.layouts[2 * p + i].source_tensors(net.source) for i in range(2))
        assert np.array_equal(first["weight"], pair["U"]) and np.array_equal(first["bias"], pair["beta"])
        assert np.array_equal(second["weight"], pair["V"])


def test_warm_start_reproduces_the_constructed_masks_and_values_bit_for_bit(constructed) -> None:  # noqa: ANN001
    net = network_of_ticket(constructed, use_masks=True)
    assert net.origin == "init-from" and net.keep_per_unit is not None
    module, layers = masked_network(net, LearnConfig())  # keep=None: each tensor keeps its own fraction
    for p in range(2):
        masks, tensors = constructed.dense_masks(p), constructed.source_tensors(p)  # the layers hold U whole
        first, second = layers[2 * p].masks(), layers[2 * p + 1].masks()
        assert np.array_equal(first["weight"].numpy(), masks["U"])
        assert np.array_equal(first["bias"].numpy(), masks["beta"])
        assert np.array_equal(second["weight"].numpy(), masks["V"])
        assert np.array_equal(layers[2 * p].weight.numpy(), tensors["U"])
        assert np.array_equal(layers[2 * p].frozen("bias").numpy(), tensors["beta"])
        assert np.array_equal(layers[2 * p + 1].weight.numpy(), tensors["V"])
        assert net.keep_per_unit[2 * p]["weight"] == masks["U"].mean()
    # the start is the constructed network itself: same function on its box
    x = torch.rand(64, 5) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(module(x), constructed.to_module()(x), rtol=1e-5, atol=1e-5)


def test_a_rerandomised_ticket_is_refused_because_its_draws_are_per_unit() -> None:
    torch.manual_seed(0)
    ticket = build_ticket(MLP((3, 2)), BuildConfig(n=4, resample=3, tolerance=1e-12), input_shape=(3,))
    assert any(d.any() for d in ticket.draws)
    with pytest.raises(ConfigError, match="per|units"):
        network_of_ticket(ticket, use_masks=False)
