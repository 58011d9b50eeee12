"""``mitm``: the exact meet-in-the-middle engine for this machine, chosen among the two implementations.

:mod:`~ticketsolver.solvers.mitm` (numba, CPU cores) and :mod:`~ticketsolver.solvers.mitm_torch` (torch, any
device) give the same exact optimum; ``mitm`` picks torch where CUDA is present and numba elsewhere, unless
asked for one. Both stay registered under their own names (``mitm_numba``, ``mitm_torch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import Solver

if TYPE_CHECKING:
    import torch

__all__ = ["ENGINES", "make_mitm"]

#: the implementations ``make_mitm(engine=...)`` accepts
ENGINES = ("numba", "torch")


def make_mitm(
    engine: str | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    max_elements: int | None = None,
) -> Solver:
    """The exact engine: torch on CUDA when present (or when ``engine``/``device`` ask for it), else numba.

    Whichever engine runs, the solver is named ``mitm`` (what was asked for, so a ticket's manifest does not
    depend on the machine that built it); ``info["engine"]`` of its solutions says which one ran.

    Args:
        engine: "numba" or "torch"; None: chosen from ``device`` and the machine.
        device: torch device for the torch engine ("cuda", "cuda:1", "cpu"); numba runs on the CPU only.
        threads: threads of the numba engine (default: all cores).
        max_elements: memory budget per chunk of the torch engine.

    Raises:
        InvalidProblemError: an unknown engine, or an option the chosen engine does not take (the message
            names the call that does).

    Example:
        >>> make_mitm(engine="torch", device="cpu").solve([[0.5, 0.25, -0.125]], [0.375]).info["engine"]
        'torch'
        >>> make_mitm(engine="numba", device="cuda")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ticketsolver.errors.InvalidProblemError: the numba engine runs on the CPU, not on 'cuda'; ...
    """
    if engine is not None and engine not in ENGINES:
        raise InvalidProblemError(
            f"engine must be one of {', '.join(map(repr, ENGINES))} (or left out), got {engine!r}"
        )
    on_cpu = device is None or str(device) == "cpu"
    if engine is None:
        if not on_cpu or max_elements is not None:
            engine = "torch"
        elif threads is not None or device is not None:
            engine = "numba"
        else:
            engine = "torch" if _cuda_available() else "numba"
    if engine == "numba":
        if not on_cpu:
            raise InvalidProblemError(
                f"the numba engine runs on the CPU, not on {str(device)!r}; for a torch device use "
                f"get_solver('mitm_torch', device={str(device)!r})"
            )
        if max_elements is not None:
            raise InvalidProblemError(
                "max_elements is an option of the torch engine; use get_solver('mitm', engine='torch', ...)"
            )
        from ticketsolver.solvers.mitm import NumbaMitmSolver

        return NumbaMitmSolver(threads=threads)
    if threads is not None:
        raise InvalidProblemError("threads is an option of the numba engine; use get_solver('mitm_numba', threads=...)")
    from ticketsolver.solvers.mitm_torch import TorchMitmSolver

    solver = TorchMitmSolver(device=device) if max_elements is None else TorchMitmSolver(device, max_elements)
    solver.name = "mitm"  # asked for as mitm: the same exact answers, whichever engine gives them
    return solver


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())
