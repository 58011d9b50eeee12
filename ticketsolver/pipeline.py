"""The pipeline in one call: a trained network in, its strong lottery ticket out.

problems (coefficients drawn from the seeded :class:`~ticketsolver.source.RandomSource`) -> solvers (subset
sums) -> construction (:func:`ticketsolver.construction.construct`: the pruned pair of every target layer)
-> ticket (:class:`~ticketsolver.ticket.Ticket`: the artifact that regenerates the pruned network). The CLI,
the batch jobs and the service all build through :func:`build_ticket`; verification is the next stage
(:func:`ticketsolver.verify`).

>>> import torch
>>> from torch import nn
>>> from ticketsolver import BuildConfig, build_ticket
>>> _ = torch.manual_seed(0)
>>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> ticket = build_ticket(net, BuildConfig(n=12, input_domain=(-1.0, 1.0)), input_shape=(4,))
>>> [layout.construction for layout in ticket.layouts], ticket.sizes()["source_kind"]
(['offset_blocks', 'offset_blocks'], 'iid')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ticketsolver.config import BuildConfig
from ticketsolver.construction import LayerProgress, construct
from ticketsolver.errors import ConfigError, ConstructionError
from ticketsolver.solvers import Solver
from ticketsolver.ticket import Ticket

__all__ = ["build_ticket"]


def build_ticket(
    target: Any,
    config: BuildConfig = BuildConfig(),  # noqa: B008 - frozen: one shared default is safe
    *,
    input_shape: Sequence[int] | None = None,
    progress: LayerProgress | None = None,
    solve_with: Solver | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
) -> Ticket:
    """Build the strong lottery ticket of a trained network.

    Args:
        target: a :class:`ticketsolver.models.Target`, a :class:`ticketsolver.graph.GraphTarget` (a ``.pt2`` program
            that is not a chain), or an ``nn.Module`` made of supported layers
            (then ``input_shape`` is required).
        config: how to build: n, seed, solver, input domain, re-randomisation, ... (:class:`BuildConfig`).
        input_shape: per-sample input shape when ``target`` is a plain module.
        progress: called with (pair, fraction of that layer done, message) as the solver reports solved problems; an
            exception it raises aborts the build (how a service cancels one).
        solve_with: the solver instance to use instead of ``get_solver(config.solver)`` (e.g. one that spreads
            chunks over a cluster); the manifest still records ``config.solver``. Exact solvers give identical
            tickets whatever executes them.
        resume_dir: store each finished layer there, and reuse the layers already stored for this very
            target and configuration (an interrupted build resumes where it stopped).

    Returns:
        The :class:`~ticketsolver.ticket.Ticket`.

    Raises:
        ConfigError: ``config`` is not a :class:`BuildConfig`.
        ConstructionError: no ``input_shape`` for a plain module; unsupported or non-finite layers, a source
            too large.
        SolverError: the subset-sum backend failed.
    """
    from ticketsolver.graph import GraphTarget
    from ticketsolver.models import Target

    if not isinstance(config, BuildConfig):
        raise ConfigError(
            f"config must be a BuildConfig, got {type(config).__name__} {config!r}; "
            "e.g. build_ticket(target, BuildConfig(n=20, seed=0))"
        )
    if isinstance(target, GraphTarget):
        from ticketsolver.graph.build import construct_graph

        result = construct_graph(target, config, progress=progress, solve_with=solve_with, resume_dir=resume_dir)
    else:
        if not isinstance(target, Target):
            if input_shape is None:
                raise ConstructionError("input_shape is required when building from a plain nn.Module")
            target = Target.from_module(target, input_shape)
        result = construct(target, config, progress=progress, solve_with=solve_with, resume_dir=resume_dir)
    return Ticket(
        seed=result.config.seed,
        input_shape=result.input_shape,
        input_domain=result.input_box,
        steps=result.steps,
        layouts=result.layouts,
        masks=[solution.masks for solution in result.solutions],
        draws=[solution.draws for solution in result.solutions],
        build=result.record,
    )
