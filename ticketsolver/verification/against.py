"""Verify a ticket against its target: the library's ``verify(model, ticket, data)``.

Materialises the ticket, checks that it was built for this target (same sequence of layers, same
shapes), and runs :func:`verify_networks` on the data given and on random inputs of the ticket's domain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ticketsolver.errors import VerificationError
from ticketsolver.verification.report import Report
from ticketsolver.verification.verify import verify_networks

__all__ = ["check_ticket_matches", "verify"]


def check_ticket_matches(target: nn.Sequential, ticket: Any) -> None:
    """Raise :class:`VerificationError` unless ``ticket`` was built for a network shaped like ``target``."""
    if len(target) != len(ticket.steps):
        raise VerificationError(
            f"the target has {len(target)} modules in normal form but the ticket has {len(ticket.steps)} steps"
        )
    for index, (module, step) in enumerate(zip(target, ticket.steps, strict=True)):
        if isinstance(module, nn.Linear | nn.Conv2d):
            if step["op"] != "pair":
                raise VerificationError(
                    f"module {index}: the target has {type(module).__name__}, the ticket {step['op']}"
                )
            layout = ticket.layouts[step["pair"]]
            d_out, d_in = module.weight.shape[0], module.weight[0].numel()
            if (layout.d_out, layout.d_in) != (d_out, d_in) or layout.has_bias != (module.bias is not None):
                raise VerificationError(
                    f"module {index}: the target layer is {d_out}x{d_in} but the ticket's pair is "
                    f"{layout.d_out}x{layout.d_in}: this ticket was built for another network"
                )
        elif step["op"] == "pair":
            raise VerificationError(
                f"module {index}: the ticket has a pair where the target has {type(module).__name__}"
            )


def verify(
    model: Any,
    ticket: Any,
    data: Any = None,
    *,
    input_box: tuple[float, float] | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> Report:
    """Measure how closely the ticket's pruned network follows the target, and certify a bound.

    Args:
        model: a :class:`ticketsolver.models.Target` or an ``nn.Module`` of supported layers.
        ticket: the :class:`ticketsolver.ticket.Ticket`.
        data: None, ``(x, y)`` / ``(x, None)`` tensors, or a :class:`ticketsolver.data.Dataset` (its test split).
        input_box: the input box (lo, hi) of the random inputs, the worst-case search and the certified bound;
            default: the ticket's declared input domain, else the data's per-feature range.
        device: where to run (default: CUDA when present, else the CPU; the report says which).
        **options: passed to :func:`verify_networks` (n_random, worst_case_steps, dtypes, certify, ...).

    Raises:
        VerificationError: the ticket does not match the model, or the data has the wrong shape.
    """
    from ticketsolver.models import Target

    target = model if isinstance(model, Target) else Target.from_module(model, ticket.input_shape)
    check_ticket_matches(target.module, ticket)
    if data is not None and hasattr(data, "x_test"):
        data = (data.x_test, data.y_test)
    return verify_networks(
        target.module,
        ticket.to_module(),
        input_shape=tuple(ticket.input_shape),
        input_box=input_box if input_box is not None else ticket.input_domain,
        data=data,
        device=device,
        **options,
    )
