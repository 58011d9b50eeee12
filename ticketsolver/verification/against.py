"""Verify a ticket against its target: the library's ``verify(target, ticket, config, data=...)``.

Materialises the ticket, checks that it was built for this target (same sequence of layers, same
shapes), and runs :func:`verify_networks` on the data given and on random inputs of an input box: the one
given, else the box the ticket was built for when it was declared at build, else the data's range, else
the ticket's default build box (or, for a ticket without one, the documented default). A ticket built
without a declared domain is so verified over the box its layers were built for, with the default law of
standardised features (:mod:`ticketsolver.verification.inputs`), and never fails for want of a box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ticketsolver.config import VerifyConfig
from ticketsolver.errors import ConfigError, VerificationError
from ticketsolver.verification.inputs import DEFAULT_LAW, SOURCE_DECLARED, SOURCE_TICKET, SOURCE_TICKET_DEFAULT
from ticketsolver.verification.report import Report
from ticketsolver.verification.verify import verify_networks

__all__ = ["check_ticket_matches", "choose_input_box", "verify"]


def check_ticket_matches(target: nn.Sequential, ticket: Any) -> None:
    """Raise :class:`VerificationError` unless ``ticket`` was built for a network shaped like ``target``."""
    if len(target) != len(ticket.steps):
        raise VerificationError(
            f"the target has {len(target)} modules in normal form but the ticket has {len(ticket.steps)} steps"
        )
    plans = ticket.copy_plans() if hasattr(ticket, "copy_plans") else None
    for index, (module, step) in enumerate(zip(target, ticket.steps, strict=True)):
        if isinstance(module, nn.Linear | nn.Conv2d) and plans is not None:
            # a depth-L+1 ticket: its stages say which target layer they stand for
            unit = step.get("pair", step.get("unit")) if step["op"] in ("pair", "layer") else None
            d_out, d_in = module.weight.shape[0], module.weight[0].numel()
            if unit is None or (plans[int(unit)].d_out, plans[int(unit)].d_in) != (d_out, d_in):
                raise VerificationError(
                    f"module {index}: the target layer is {d_out}x{d_in} but the ticket's stage there is not: this "
                    "ticket was built for another network"
                )
            continue
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
        elif step["op"] in ("pair", "layer"):
            raise VerificationError(
                f"module {index}: the ticket has a pair where the target has {type(module).__name__}"
            )


def choose_input_box(
    ticket: Any, input_box: tuple[float, float] | None, has_data: bool
) -> tuple[tuple[float, float] | None, str | None, str | None]:
    """``(box, where it came from, law of the random inputs)`` for :func:`verify_networks`.

    A box given here wins; then the ticket's build box when the user declared it at build (the pairs were
    built for it); then the data (None: :func:`verify_networks` derives the per-feature range); then the
    ticket's default build box, with the default law; all None: verify_networks' own default.
    """
    if input_box is not None:
        return input_box, SOURCE_DECLARED, None
    domain = getattr(ticket, "input_domain", None)
    build = getattr(ticket, "build", None)
    origin = build.get("input_domain_origin") if isinstance(build, dict) else None
    # tickets from before the origin was recorded only had a domain when the user declared one
    if domain is not None and origin != "default":
        return (float(domain[0]), float(domain[1])), SOURCE_TICKET, None
    if has_data:
        return None, None, None
    if domain is not None:
        return (float(domain[0]), float(domain[1])), SOURCE_TICKET_DEFAULT, DEFAULT_LAW
    return None, None, None


def verify(
    target: Any,
    ticket: Any,
    config: VerifyConfig = VerifyConfig(),  # noqa: B008 - frozen: one shared default is safe
    *,
    data: Any = None,
    device: str | torch.device | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Report:
    """Measure how closely the ticket's pruned network follows the target, and certify a bound.

    Args:
        target: a :class:`ticketsolver.models.Target` or an ``nn.Module`` of supported layers.
        ticket: the :class:`ticketsolver.ticket.Ticket`.
        config: what to measure (:class:`~ticketsolver.config.VerifyConfig`); its ``input_box`` (None: see
            :func:`choose_input_box`) bounds the random inputs, the worst-case search and the certified bound;
            the report states which box and law were used.
        data: None, ``(x, y)`` / ``(x, None)`` tensors, or a :class:`ticketsolver.data.Dataset` (its test split).
        device: where to run (default: CUDA when present, else the CPU; the report says which).
        progress: called as ``progress(step name, fraction done in [0, 1])``.

    Raises:
        ConfigError: ``config`` is not a :class:`~ticketsolver.config.VerifyConfig` (data goes to ``data=``).
        VerificationError: the ticket does not match the target, or the data has the wrong shape.
    """
    from ticketsolver.graph import GraphTarget
    from ticketsolver.models import Target
    from ticketsolver.verification.graph import verify_graph

    if not isinstance(config, VerifyConfig):
        raise ConfigError(
            f"config must be a VerifyConfig, got {type(config).__name__}; data is passed as verify(..., data=...)"
        )
    if data is not None and hasattr(data, "x_test"):
        data = (data.x_test, data.y_test)
    if isinstance(target, GraphTarget) or getattr(ticket, "graph", None) is not None:
        if not isinstance(target, GraphTarget):
            raise VerificationError("the ticket was built from a graph target; verify it against that .pt2 program")
        return verify_graph(target, ticket, config, data=data, device=device, progress=progress)
    if not isinstance(target, Target):
        target = Target.from_module(target, ticket.input_shape)
    check_ticket_matches(target.module, ticket)
    box, source, law = choose_input_box(ticket, config.input_box, data is not None)
    return verify_networks(
        target.module,
        ticket.to_module(),
        config.replace(input_box=box),
        input_shape=tuple(ticket.input_shape),
        data=data,
        box_source=source,
        random_law=law,
        device=device,
        progress=progress,
    )
