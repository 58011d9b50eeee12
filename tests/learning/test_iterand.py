"""IteRand: pruned entries redrawn from later draws of their stream, recorded so the ticket regenerates them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ticketsolver.data import load_wine_standardized
from ticketsolver.errors import ConfigError
from ticketsolver.learning import LearnConfig, learn_mask, random_network_of
from ticketsolver.learning.iterand import Rerandomizer
from ticketsolver.learning.network import RandomNetwork
from ticketsolver.learning.train import learned_ticket, masked_network, train_scores
from ticketsolver.models import MLP, Target
from ticketsolver.source import RandomSource
from ticketsolver.ticket import Ticket
from ticketsolver.ticket.layer import LayerLayout, Stream


def _biased_layer() -> tuple[LayerLayout, RandomSource]:
    layout = LayerLayout(
        0, "linear", 6, 5, weight=Stream(0, "W", "normal", 0.5), bias=Stream(0, "b", "signed_constant", 0.1)
    )
    return layout, RandomSource(7)


def test_every_redrawn_entry_was_pruned_and_holds_its_draw_of_the_stream() -> None:
    layout, source = _biased_layer()
    net = RandomNetwork(7, (5,), [{"op": "layer", "unit": 0}], [layout], 0, "arch")
    _, (layer,) = masked_network(net, LearnConfig(keep=0.5))
    rerandomizer = Rerandomizer([layout], source, 0.5, torch.Generator().manual_seed(0))
    times_pruned = np.zeros(layout.draw_shape, dtype=int)
    scores = torch.Generator().manual_seed(1)
    for _ in range(12):
        with torch.no_grad():  # a new mask before every event, as training would move it
            layer.weight_scores.copy_(torch.randn(layer.weight_scores.shape, generator=scores))
            layer.bias_scores.copy_(torch.randn(layer.bias_scores.shape, generator=scores))
        masks = layer.masks()
        kept = {name: layer.frozen(name)[masks[name]].clone() for name in layer.tensor_names()}
        times_pruned += np.concatenate([(~masks[n]).reshape(-1).numpy() for n in layer.tensor_names()])
        redrawn = rerandomizer.event([layer])
        for name in layer.tensor_names():  # kept entries never change at an event
            assert torch.equal(layer.frozen(name)[masks[name]], kept[name])
        assert redrawn > 0
    draws = rerandomizer.draws[0]
    assert rerandomizer.events == 12 and draws.dtype == np.uint8
    assert bool((draws <= times_pruned).all()) and bool((draws[times_pruned == 0] == 0).all())
    assert 0.3 < draws.sum() / times_pruned.sum() < 0.7  # each pruned entry redrawn with probability 0.5
    regenerated = layout.source_tensors(source, draws)
    for name in layer.tensor_names():  # bit for bit: the ticket holds what the layer holds
        assert np.array_equal(regenerated[name], layer.frozen(name).numpy())


def test_rate_one_redraws_the_whole_pruned_set_once_per_event() -> None:
    layout, source = _biased_layer()
    net = RandomNetwork(7, (5,), [{"op": "layer", "unit": 0}], [layout], 0, "arch")
    _, (layer,) = masked_network(net, LearnConfig(keep=0.3))
    pruned = np.concatenate([(~m).reshape(-1).numpy() for m in layer.masks().values()])
    rerandomizer = Rerandomizer([layout], source, 1.0, torch.Generator().manual_seed(0))
    rerandomizer.event([layer])
    assert np.array_equal(rerandomizer.draws[0], pruned.astype(np.uint8))
    weight_draw1 = layout.tensor(source, "weight", draw=1)
    pruned_weight = ~layer.masks()["weight"].numpy()
    assert np.array_equal(layer.weight.numpy()[pruned_weight], weight_draw1[pruned_weight])


def test_an_iterand_run_saves_a_ticket_that_regenerates_the_trained_weights(tmp_path: Path) -> None:
    data = load_wine_standardized()
    net = random_network_of(Target.from_module(MLP((13, 16, 3)), (13,)), init="kaiming_normal")
    # 124 examples / 16 = 8 iterations per epoch, 6 epochs = 48 iterations: 16 events every 3 iterations
    config = LearnConfig(method="iterand", epochs=6, batch_size=16, rerand_period=3, rerand_rate=0.3)
    trained = train_scores(net, data, config)
    ticket = learned_ticket(net, data, config, trained)
    assert trained.events == 16 and ticket.build["rerandomization"] == {"period": 3, "rate": 0.3, "events": 16}
    loaded = Ticket.load(ticket.save(tmp_path / "iterand.ticket"))
    assert loaded.sizes()["source_kind"] == "rerandomized"
    for k, layer in enumerate(trained.layers):
        assert 1 <= loaded.draws[k].max() <= 16
        assert np.array_equal(loaded.draws[k], trained.draws[k])
        source = loaded.source_tensors(k)
        assert np.array_equal(source["weight"], layer.weight.reshape(source["weight"].shape).numpy())
        assert loaded.build["pairs"][k]["examined_values"] == net.layouts[k].source_params() + int(
            trained.draws[k].sum()
        )
    assert loaded.sizes()["examined_values"] == net.source_params() + sum(int(d.sum()) for d in trained.draws)
    # the ticket's network computes what the trained module computes
    with torch.no_grad():
        assert torch.equal(loaded.to_module()(data.x_test), trained.module(data.x_test))


def test_more_than_255_events_are_refused_with_the_numbers() -> None:
    net = random_network_of(Target.from_module(MLP((13, 4, 3)), (13,)))
    config = LearnConfig(method="iterand", epochs=300, batch_size=124, rerand_period=1)
    with pytest.raises(ConfigError, match=r"300 iterations.*300 times.*at most 255.*at least 2"):
        learn_mask(net, load_wine_standardized(), config)
    # edge-popup never re-randomises: the same run is fine
    ticket = learn_mask(net, load_wine_standardized(), config.replace(method="edge-popup"))
    assert ticket.build["rerandomization"] is None and not any(d.any() for d in ticket.draws)
