"""Learning a mask: edge-popup and IteRand over a frozen random network, and the learned ticket they yield.

Mask learning's last stage. :func:`learn_mask` wraps every random layer of a :class:`RandomNetwork` in a
:class:`~ticketsolver.learning.scores.MaskedLayer`, trains the scores with SGD (momentum, weight decay on the
scores, cosine schedule over all iterations, cross-entropy), optionally re-randomises pruned weights
(:class:`~ticketsolver.learning.iterand.Rerandomizer`), and returns a :class:`~ticketsolver.ticket.Ticket` of
layer units: seed, layouts, the final top-K masks and the draw indices. The reported accuracies are measured on
``ticket.to_module()``, the network the ticket regenerates, not on the training module.

Every random choice comes from a generator seeded from ``config.seed`` (one each for the scores, the minibatch
order and IteRand's choices), so one seed gives one ticket on a given machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.config import MAX_RESAMPLE
from ticketsolver.construction import module_from_step
from ticketsolver.data import Dataset
from ticketsolver.errors import ConfigError
from ticketsolver.learning.config import LearnConfig
from ticketsolver.learning.iterand import Rerandomizer
from ticketsolver.learning.network import RandomNetwork
from ticketsolver.learning.scores import MaskedLayer
from ticketsolver.models import evaluate_accuracy
from ticketsolver.ticket import Ticket

__all__ = [
    "EpochProgress",
    "TrainedScores",
    "learn_mask",
    "learned_ticket",
    "masked_network",
    "train_scores",
    "unit_keeps",
]

#: (epochs done, epochs, {"loss": mean training loss of the epoch, "test_accuracy": of the training module})
EpochProgress = Callable[[int, int, dict[str, float]], None]

# purposes of the generators derived from config.seed
_SCORES, _ORDER, _RERAND = 0, 1, 2


def _generator(seed: int, purpose: int) -> torch.Generator:
    """A torch generator for one purpose; the purposes' streams are independent (NumPy's SeedSequence)."""
    state = np.random.SeedSequence([seed, purpose]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def unit_keeps(network: RandomNetwork, config: LearnConfig) -> list[dict[str, float]]:
    """The kept fraction of every tensor of every layer: ``config.keep``; else the constructed ticket's own fractions;
    else 0.5."""
    if config.keep is None and network.keep_per_unit is not None:
        return [dict(keeps) for keeps in network.keep_per_unit]
    return [{name: config.default_keep for name in layout.shapes()} for layout in network.layouts]


def masked_network(network: RandomNetwork, config: LearnConfig) -> tuple[nn.Sequential, list[MaskedLayer]]:
    """The training module: the network's random layers as :class:`MaskedLayer` (scores initialised from the
    warm start's masks where there are some, else hidden-networks' Kaiming uniform), and its other steps.

    Returns:
        The module (float32) and its masked layers in unit order.
    """
    source = network.source
    keeps = unit_keeps(network, config)
    generator = _generator(config.seed, _SCORES)
    layers: list[MaskedLayer] = []
    for k, layout in enumerate(network.layouts):
        if layout.unit != k:
            raise ConfigError(f"layer {k} of the network says it is unit {layout.unit}")
        tensors = {name: torch.from_numpy(t) for name, t in layout.source_tensors(source).items()}
        weight = tensors["weight"]
        if layout.conv is not None:
            weight = weight.reshape(layout.d_out, layout.conv.in_channels, *layout.conv.kernel_size)
        layer = MaskedLayer(layout.kind, weight, tensors.get("bias"), keeps[k], layout.conv)
        if network.init_masks is not None:
            layer.init_scores_from_masks(network.init_masks[k], generator)
        else:
            layer.init_scores_kaiming(generator)
        layers.append(layer)
    modules: list[nn.Module] = []
    for step in network.steps:
        modules.append(layers[int(step["unit"])] if step["op"] == "layer" else module_from_step(step))
    return nn.Sequential(*modules), layers


def _cosine_lr(base: float, iteration: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * iteration / total))


@torch.no_grad()
def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean cross-entropy of ``model`` on (x, y)."""
    total = sum(
        float(F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size], reduction="sum"))
        for i in range(0, len(x), batch_size)
    )
    return total / max(1, len(x))


@dataclass
class TrainedScores:
    """What training leaves: the training module, its masked layers (unit order) and IteRand's record.

    Attributes:
        module: the training module (float32); its layers' buffers hold the weights the network has now.
        layers: its :class:`MaskedLayer` in unit order.
        draws: per layer, the uint8 draw index of every entry (all 0 without re-randomisation).
        events: re-randomisations done.
        seconds: time spent training.
    """

    module: nn.Sequential
    layers: list[MaskedLayer]
    draws: list[np.ndarray]
    events: int
    seconds: float


def learn_mask(
    network: RandomNetwork,
    dataset: Dataset,
    config: LearnConfig = LearnConfig(),  # noqa: B008 - frozen: one shared default is safe
    *,
    progress: EpochProgress | None = None,
) -> Ticket:
    """Learn a mask over ``network`` for ``dataset`` (edge-popup, or IteRand with ``config.method="iterand"``).

    :func:`train_scores`, then :func:`learned_ticket`.

    Args:
        network: the frozen random network (:func:`random_network_of`, :func:`network_of_ticket`).
        dataset: the classification task; its test split gives the reported accuracy and loss.
        config: how to learn (:class:`LearnConfig`).
        progress: called after every epoch with (epochs done, epochs, {"loss", "test_accuracy"}); an
            exception it raises aborts the learning.

    Returns:
        The learned ticket: its units are the network's layers, masks the final top-K masks, draws the
        entries' draw indices (all 0 for edge-popup), ``build`` the record of docs/design.md (kind
        ``"learned"``).

    Raises:
        ConfigError: ``config`` is not a LearnConfig, the data do not fit the network, or an IteRand run
            would re-randomise more than 255 times (draw indices are uint8).

    >>> from ticketsolver.data import load_wine_standardized
    >>> from ticketsolver.learning import LearnConfig, random_network_of
    >>> from ticketsolver.models import MLP, Target
    >>> network = random_network_of(Target.from_module(MLP((13, 64, 3)), (13,)))
    >>> ticket = learn_mask(network, load_wine_standardized(), LearnConfig(epochs=10))
    >>> ticket.build["task"]["test_accuracy"] > 0.9, ticket.sizes()["source_kind"]
    (True, 'iid')
    """
    trained = train_scores(network, dataset, config, progress=progress)
    return learned_ticket(network, dataset, config, trained)


def _check_events(config: LearnConfig, examples: int) -> int:
    """The number of re-randomisations of the run (0 for edge-popup); more than 255 is refused."""
    total, events, least = config.rerandomizations(examples)
    if events > MAX_RESAMPLE:
        per_epoch = total // config.epochs
        raise ConfigError(
            f"LearnConfig: an iterand run of {config.epochs} epochs x {per_epoch} iterations = {total} iterations "
            f"with rerand_period {config.rerand_period} re-randomises {events} times; draw indices are uint8, so at "
            f"most {MAX_RESAMPLE} (raise rerand_period to at least {least})"
        )
    return events


def train_scores(
    network: RandomNetwork,
    dataset: Dataset,
    config: LearnConfig = LearnConfig(),  # noqa: B008 - frozen: one shared default is safe
    *,
    progress: EpochProgress | None = None,
) -> TrainedScores:
    """Train the scores of ``network``'s layers on ``dataset`` (and re-randomise for IteRand).

    SGD with momentum and weight decay on the scores, the learning rate on a cosine from ``config.lr`` to 0 over
    all iterations, cross-entropy, minibatches in an order drawn from a seeded generator (the last one of an epoch
    may be smaller). IteRand re-randomises after every ``rerand_period``-th iteration.

    Raises:
        ConfigError: see :func:`learn_mask`.
    """
    start = time.perf_counter()
    if not isinstance(config, LearnConfig):
        raise ConfigError(f"config must be a LearnConfig, got {type(config).__name__}")
    if not isinstance(network, RandomNetwork):
        raise ConfigError(f"network must be a RandomNetwork, got {type(network).__name__}")
    if tuple(dataset.input_shape) != tuple(network.input_shape):
        raise ConfigError(f"the data's inputs are {dataset.input_shape}, the network takes {network.input_shape}")
    x, y = dataset.x_train, dataset.y_train
    if len(x) == 0:
        raise ConfigError("the training split is empty")
    _check_events(config, len(x))
    total, _, _ = config.rerandomizations(len(x))
    iterand = config.method == "iterand"

    model, layers = masked_network(network, config)
    scores = [p for layer in layers for p in layer.parameters()]
    optimizer = torch.optim.SGD(scores, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    order = _generator(config.seed, _ORDER)
    rerandomizer = Rerandomizer(network.layouts, network.source, config.rerand_rate, _generator(config.seed, _RERAND))
    iteration = 0
    for epoch in range(config.epochs):
        model.train()
        permutation = torch.randperm(len(x), generator=order)
        loss_sum = 0.0
        for i in range(0, len(x), config.batch_size):
            index = permutation[i : i + config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(config.lr, iteration, total)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(index)
            iteration += 1
            if iterand and iteration % config.rerand_period == 0:
                rerandomizer.event(layers)
        if progress is not None:
            accuracy = evaluate_accuracy(model, dataset.x_test, dataset.y_test)
            progress(epoch + 1, config.epochs, {"loss": loss_sum / len(x), "test_accuracy": accuracy})
    model.eval()
    return TrainedScores(model, layers, rerandomizer.draws, rerandomizer.events, time.perf_counter() - start)


def learned_ticket(network: RandomNetwork, dataset: Dataset, config: LearnConfig, trained: TrainedScores) -> Ticket:
    """The ticket of the trained scores' final top-K masks, with the task measured on the network it regenerates
    (``ticket.to_module()``); ``build["seconds"]`` is training plus this measurement."""
    start = time.perf_counter()
    masks = [
        {name: mask.reshape(layout.shapes()[name]).numpy().copy() for name, mask in layer.masks().items()}
        for layout, layer in zip(network.layouts, trained.layers, strict=True)
    ]
    draws = [d.copy() for d in trained.draws]

    def ticket(build: dict[str, Any]) -> Ticket:
        return Ticket(
            seed=network.seed,
            input_shape=dataset.input_shape,
            input_domain=dataset.input_domain,
            steps=[dict(step) for step in network.steps],
            layouts=list(network.layouts),
            masks=masks,
            draws=draws,
            build=build,
        )

    pruned = ticket({}).to_module()
    task = {
        "data": dataset.name,
        "train_accuracy": evaluate_accuracy(pruned, dataset.x_train, dataset.y_train),
        "test_accuracy": evaluate_accuracy(pruned, dataset.x_test, dataset.y_test),
        "test_loss": _loss(pruned, dataset.x_test, dataset.y_test),
        "examples": len(dataset.x_test),
    }
    units = [
        {
            "examined_values": layout.source_params() + int(unit_draws.sum()),
            "kept_fraction": sum(int(m.sum()) for m in unit_masks.values()) / layout.source_params(),
        }
        for layout, unit_masks, unit_draws in zip(network.layouts, masks, draws, strict=True)
    ]
    return ticket(
        {
            "kind": "learned",
            "method": config.method,
            "config": config.to_dict(),
            "target_params": int(network.target_params),
            "seconds": trained.seconds + time.perf_counter() - start,
            "pairs": units,
            "task": task,
            "rerandomization": (
                {"period": config.rerand_period, "rate": config.rerand_rate, "events": trained.events}
                if config.method == "iterand"
                else None
            ),
            "random_network": network.origin,
        }
    )
