"""Learning a mask end to end: the task is learned, the ticket reports its own network, one seed one ticket."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ticketsolver import BuildConfig, build_ticket
from ticketsolver.data import Dataset, load_wine_standardized
from ticketsolver.errors import ConfigError
from ticketsolver.learning import LearnConfig, learn_mask, network_of_ticket, random_network_of
from ticketsolver.learning.scores import kept_count
from ticketsolver.models import MLP, Target, evaluate_accuracy
from ticketsolver.ticket import Ticket


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_wine_standardized()


@pytest.fixture(scope="module")
def learned(wine: Dataset) -> Ticket:
    net = random_network_of(Target.from_module(MLP((13, 64, 3)), (13,)), keep=0.5, seed=0)
    return learn_mask(net, wine, LearnConfig(keep=0.5, epochs=8))


def test_wine_is_learned_and_the_report_is_the_tickets_own_network(learned: Ticket, wine: Dataset) -> None:
    task = learned.build["task"]
    # measured: test accuracy 0.963 after 8 epochs (chance: 0.39, the largest class); train 0.968
    assert task["test_accuracy"] > 0.9 and task["train_accuracy"] > 0.9
    network = learned.to_module()
    assert task["test_accuracy"] == evaluate_accuracy(network, wine.x_test, wine.y_test)
    with torch.no_grad():
        assert math.isclose(task["test_loss"], float(F.cross_entropy(network(wine.x_test), wine.y_test)), rel_tol=1e-6)
    assert task["data"] == "wine" and task["examples"] == len(wine.x_test)


def test_the_build_record_is_the_contracts(learned: Ticket) -> None:
    build = learned.build
    assert build["kind"] == "learned" and build["method"] == "edge-popup" and build["random_network"] == "arch"
    assert build["config"] == LearnConfig(keep=0.5, epochs=8).to_dict() and build["rerandomization"] is None
    assert build["target_params"] == 13 * 64 + 64 + 64 * 3 + 3 and build["seconds"] > 0
    for unit, layout, masks in zip(build["pairs"], learned.layouts, learned.masks, strict=True):
        assert unit["examined_values"] == layout.source_params()
        assert [int(m.sum()) for m in masks.values()] == [kept_count(m.size, 0.5) for m in masks.values()]
        assert unit["kept_fraction"] == 0.5
    assert learned.sizes()["source_kind"] == "iid" and learned.input_domain is None
    assert [s["op"] for s in learned.steps] == ["layer", "relu", "layer"]


def test_save_and_load_give_back_the_same_network(learned: Ticket, tmp_path: Path, wine: Dataset) -> None:
    loaded = Ticket.load(learned.save(tmp_path / "wine.ticket"))
    assert loaded.kept_hash() == learned.kept_hash() and loaded.build == learned.build
    for before, after in zip(learned.masks, loaded.masks, strict=True):
        assert all(np.array_equal(before[name], after[name]) for name in before)
    with torch.no_grad():
        assert torch.equal(loaded.to_module()(wine.x_test), learned.to_module()(wine.x_test))


def test_one_seed_gives_one_ticket_and_another_seed_another(wine: Dataset) -> None:
    net = random_network_of(Target.from_module(MLP((13, 8, 3)), (13,)))
    config = LearnConfig(epochs=2, method="iterand", rerand_period=2)
    first, again = learn_mask(net, wine, config), learn_mask(net, wine, config)
    assert first.kept_hash() == again.kept_hash()
    assert all(np.array_equal(a, b) for a, b in zip(first.draws, again.draws, strict=True))
    assert learn_mask(net, wine, config.replace(seed=1)).kept_hash() != first.kept_hash()


def test_progress_is_called_once_per_epoch_and_its_exception_aborts(wine: Dataset) -> None:
    net = random_network_of(Target.from_module(MLP((13, 8, 3)), (13,)))
    calls: list[tuple[int, int, dict[str, float]]] = []
    learn_mask(net, wine, LearnConfig(epochs=3), progress=lambda *args: calls.append(args))
    assert [(done, total) for done, total, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(set(metrics) == {"loss", "test_accuracy"} for _, _, metrics in calls)

    def cancel(done: int, total: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        learn_mask(net, wine, LearnConfig(epochs=3), progress=cancel)


def test_a_warm_start_with_its_own_keep_learns_from_the_constructed_ticket(wine: Dataset) -> None:
    torch.manual_seed(0)
    target = MLP((13, 4, 3))
    constructed = build_ticket(target, BuildConfig(n=4), input_shape=(13,))
    net = network_of_ticket(constructed, use_masks=True)
    ticket = learn_mask(net, wine, LearnConfig(epochs=1))
    assert ticket.build["random_network"] == "init-from" and ticket.seed == constructed.seed
    # keep=None: every tensor keeps as many entries as the construction kept
    for p in range(2):
        for unit, names in ((2 * p, {"weight": "U", "bias": "beta"}), (2 * p + 1, {"weight": "V"})):
            for name, pair_name in names.items():
                assert ticket.masks[unit][name].sum() == constructed.masks[p][pair_name].sum()
    with pytest.raises(ConfigError, match="learned layers"):
        network_of_ticket(ticket, use_masks=False)


def test_data_of_another_shape_are_refused(wine: Dataset) -> None:
    net = random_network_of(Target.from_module(MLP((12, 4, 3)), (12,)))
    with pytest.raises(ConfigError, match=r"\(13,\).*\(12,\)"):
        learn_mask(net, wine, LearnConfig(epochs=1))
