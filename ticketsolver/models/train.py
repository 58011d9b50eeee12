"""A small deterministic trainer for the targets used by the demo, the examples and the tests.

Place in the pipeline: *target side*, before anything else: it produces the trained network f that
ticketsolver later approximates. Adam + cross-entropy on a :class:`ticketsolver.data.Dataset`, minibatch
order drawn from its own seeded generator, so one seed gives one result on a given machine.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ticketsolver.data import Dataset
from ticketsolver.errors import ConfigError

__all__ = ["evaluate_accuracy", "train_classifier"]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on (x, y), evaluated in eval mode (the mode is restored after).

    Args:
        model: a classifier returning logits of shape (N, classes).
        x: inputs, (N, ...).
        y: integer labels, (N,).
        batch_size: samples per forward pass.

    Returns:
        Fraction of correct predictions in [0, 1] (0.0 for an empty set).

    Raises:
        ValueError: x and y have different lengths.
    """
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        return 0.0
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
            for i in range(0, len(x), batch_size)
        )
    finally:
        model.train(was_training)
    return correct / len(x)


def train_classifier(
    model: nn.Module,
    dataset: Dataset,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> dict[str, Any]:
    """Train ``model`` in place with Adam and cross-entropy; leave it in eval mode.

    Deterministic for a given seed: ``torch.manual_seed(seed)`` is set before training (dropout) and
    the minibatch order comes from a generator seeded with ``seed``. Seed the model's initialisation
    yourself (``torch.manual_seed`` before constructing it) for a fully reproducible run.

    Args:
        model: classifier returning logits.
        dataset: train/test tensors.
        epochs: passes over the training set.
        lr: Adam learning rate.
        batch_size: minibatch size.
        seed: seed for the minibatch order and any randomness inside the model.
        weight_decay: Adam weight decay.

    Returns:
        ``{"train_accuracy", "test_accuracy", "final_loss", "epochs", "seconds"}``.

    Raises:
        ValueError: non-positive epochs, lr or batch_size.

    >>> from ticketsolver.data import load_wine_standardized
    >>> from ticketsolver.models.zoo import MLP
    >>> metrics = train_classifier(MLP((13, 16, 3)), load_wine_standardized(), epochs=5)
    >>> sorted(metrics)
    ['epochs', 'final_loss', 'seconds', 'test_accuracy', 'train_accuracy']
    """
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"epochs, lr and batch_size must be positive, got {epochs}, {lr}, {batch_size}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    x, y = dataset.x_train, dataset.y_train
    loss = torch.tensor(float("nan"))
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), batch_size):
            index = permutation[i : i + batch_size]
            if len(index) < 2 <= len(x):
                continue  # BatchNorm cannot train on a single sample; skipping it changes nothing else
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
    model.eval()
    return {
        "train_accuracy": evaluate_accuracy(model, dataset.x_train, dataset.y_train),
        "test_accuracy": evaluate_accuracy(model, dataset.x_test, dataset.y_test),
        "final_loss": float(loss.item()),
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }
