"""Target networks: built-in architectures, safe checkpoint loading, the normal form, training.

Place in the pipeline: the *target side*, first stage. A checkpoint or an in-memory module becomes a
:class:`Target` whose ``module`` is the normal form (Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d,
Flatten) that the construction stage turns into pruned random pairs.
"""

from __future__ import annotations

from ticketsolver.models.checkpoint import DEFAULT_MAX_BYTES, load_target
from ticketsolver.models.normalize import (
    NORMAL_FORM_TYPES,
    SUPPORTED_EXPORT_OPS,
    Target,
    normalize,
    normalize_exported_program,
)
from ticketsolver.models.train import evaluate_accuracy, train_classifier
from ticketsolver.models.zoo import (
    ARCHITECTURES,
    MLP,
    Architecture,
    LeNet5,
    build_from_state_dict,
    infer_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MAX_BYTES",
    "MLP",
    "NORMAL_FORM_TYPES",
    "SUPPORTED_EXPORT_OPS",
    "Architecture",
    "LeNet5",
    "Target",
    "build_from_state_dict",
    "evaluate_accuracy",
    "infer_architecture",
    "load_target",
    "normalize",
    "normalize_exported_program",
    "train_classifier",
]
