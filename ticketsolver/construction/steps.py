"""The modules kept in place between pairs (ReLU, pooling, flatten): their canonical description.

One description serves three places: the builder writes it into the manifest, the ticket rebuilds the
module from it, and the verifier compares target and pruned network through it (so ``kernel_size=2`` and
``kernel_size=(2, 2)`` are the same pooling).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ticketsolver.errors import TicketFormatError, UnsupportedModuleError

__all__ = ["as_pair", "describe_step", "module_from_step"]


def as_pair(value: int | Sequence[int]) -> list[int]:
    """2 -> [2, 2]; (2, 3) -> [2, 3]."""
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def describe_step(module: nn.Module) -> dict[str, Any]:
    """The JSON description of a kept module of the normal form.

    Raises:
        UnsupportedModuleError: the module is not one that stays in place.
    """
    if isinstance(module, nn.ReLU):
        return {"op": "relu"}
    if isinstance(module, nn.MaxPool2d):
        return {
            "op": "maxpool2d",
            "kernel_size": as_pair(module.kernel_size),
            "stride": as_pair(module.stride),
            "padding": as_pair(module.padding),
            "dilation": as_pair(module.dilation),
            "ceil_mode": bool(module.ceil_mode),
        }
    if isinstance(module, nn.AvgPool2d):
        return {
            "op": "avgpool2d",
            "kernel_size": as_pair(module.kernel_size),
            "stride": as_pair(module.stride),
            "padding": as_pair(module.padding),
            "ceil_mode": bool(module.ceil_mode),
            "count_include_pad": bool(module.count_include_pad),
        }
    if isinstance(module, nn.Flatten):
        return {"op": "flatten", "start_dim": int(module.start_dim), "end_dim": int(module.end_dim)}
    raise UnsupportedModuleError(
        f"module {module!r} ({type(module).__name__}) is not supported: between the linear and conv layers a "
        "network may hold ReLU, MaxPool2d, AvgPool2d and Flatten"
    )


def module_from_step(step: dict[str, Any]) -> nn.Module:
    """The module a description stands for (inverse of :func:`describe_step`).

    Raises:
        TicketFormatError: an unknown or malformed description.
    """
    try:
        op = step["op"]
        if op == "relu":
            return nn.ReLU()
        if op == "maxpool2d":
            return nn.MaxPool2d(
                tuple(step["kernel_size"]),
                tuple(step["stride"]),
                tuple(step["padding"]),
                tuple(step["dilation"]),
                ceil_mode=bool(step["ceil_mode"]),
            )
        if op == "avgpool2d":
            return nn.AvgPool2d(
                tuple(step["kernel_size"]),
                tuple(step["stride"]),
                tuple(step["padding"]),
                ceil_mode=bool(step["ceil_mode"]),
                count_include_pad=bool(step["count_include_pad"]),
            )
        if op == "flatten":
            return nn.Flatten(int(step["start_dim"]), int(step["end_dim"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TicketFormatError(f"malformed step {step!r}: {exc!r}") from exc
    raise TicketFormatError(f"unknown step {op!r} in the ticket")
