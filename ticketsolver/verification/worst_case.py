"""Worst-case search: projected gradient ascent on |f - g| inside the input box.

Verification stage, between the sampled metrics (which only see the inputs they are given) and the
certified bound (which may be loose). From several starts (data points and random points of the box),
each start climbs ``max over outputs |f(x) - g(x)|`` by signed-gradient steps whose size is a fraction of
the box width (decaying linearly to a tenth of it), clamped back into the box after every step. The
largest error seen along every trajectory, its start included, is kept, so the answer is never below the
best start. Deterministic: the starts are given, and the steps use no randomness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ticketsolver.errors import VerificationError
from ticketsolver.verification.inputs import sample_inputs

__all__ = ["WorstCase", "random_starts", "search_worst_case"]


@dataclass(frozen=True)
class WorstCase:
    """The largest ``|f - g|`` found by projected gradient ascent, and where.

    Attributes:
        dtype: the dtype the search ran in.
        max_abs_error: the largest ``max over outputs |f(x) - g(x)|`` found.
        start_index: which start (position in ``starts``) led to it.
        start_kind: the label of that start, e.g. ``"data:17"`` or ``"random:3"``.
        output_index: the output (flattened) where it occurs.
        initial_max_abs_error: the largest error over the starts themselves, before any step.
        per_start: the largest error found from each start.
        start_kinds: the label of each start.
        steps: gradient steps per start.
        step_size: the first step as a fraction of the box width (per feature).
        seconds: wall-clock time of the search.
        point: the input (1, *input_shape) reaching ``max_abs_error``; not part of :meth:`to_dict`.
    """

    dtype: str
    max_abs_error: float
    start_index: int
    start_kind: str
    output_index: int
    initial_max_abs_error: float
    per_start: list[float]
    start_kinds: list[str]
    steps: int
    step_size: float
    seconds: float
    point: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "max_abs_error": self.max_abs_error,
            "start_index": self.start_index,
            "start_kind": self.start_kind,
            "output_index": self.output_index,
            "initial_max_abs_error": self.initial_max_abs_error,
            "per_start": list(self.per_start),
            "start_kinds": list(self.start_kinds),
            "steps": self.steps,
            "step_size": self.step_size,
            "seconds": self.seconds,
        }


def random_starts(lo: torch.Tensor, hi: torch.Tensor, n: int, input_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``n`` points uniform in the box ``[lo, hi]``: :func:`~ticketsolver.verification.inputs.sample_inputs`
    with the uniform law (float64, CPU, reproducible from ``seed``)."""
    return sample_inputs(lo, hi, n, input_shape, seed, "uniform")


def search_worst_case(
    target: nn.Module,
    pruned: nn.Module,
    starts: torch.Tensor,
    input_box: tuple[torch.Tensor | float, torch.Tensor | float],
    *,
    steps: int = 50,
    step_size: float = 0.05,
    start_kinds: list[str] | None = None,
) -> WorstCase:
    """Projected signed-gradient ascent on ``max over outputs |f(x) - g(x)|`` from each start.

    Args:
        target: f, on the device and in the dtype of the search.
        pruned: g, same device and dtype. Neither module is changed (only the input needs gradients).
        starts: (S, *input_shape) starting points; moved to the networks' device and dtype, then clamped
            into the box.
        input_box: ``(lo, hi)`` floats or tensors broadcastable to ``input_shape``.
        steps: gradient steps per start (0: only evaluate the starts).
        step_size: the first step as a fraction of the box width; it decays linearly to a tenth of that.
        start_kinds: a label per start for the report (default ``"start:i"``).

    Returns:
        The :class:`WorstCase` found.

    Raises:
        VerificationError: no starts, labels of the wrong length, or bad steps/step size.
    """
    if starts.dim() < 2 or starts.shape[0] == 0:
        raise VerificationError(f"need at least one start of shape (S, *input_shape), got {tuple(starts.shape)}")
    if steps < 0 or not step_size > 0:
        raise VerificationError(f"steps must be >= 0 and step_size > 0, got {steps} and {step_size}")
    kinds = start_kinds if start_kinds is not None else [f"start:{i}" for i in range(starts.shape[0])]
    if len(kinds) != starts.shape[0]:
        raise VerificationError(f"{len(kinds)} start labels for {starts.shape[0]} starts")
    begin = time.perf_counter()
    reference = next((p for p in target.parameters()), None)
    device = reference.device if reference is not None else starts.device
    dtype = reference.dtype if reference is not None else starts.dtype
    lo, hi = (torch.as_tensor(b, dtype=dtype).to(device).expand(starts.shape[1:]) for b in input_box)
    width = hi - lo
    x = torch.clamp(starts.detach().to(device, dtype), min=lo, max=hi)
    n = x.shape[0]
    best = torch.full((n,), -1.0, dtype=torch.float64, device=device)
    best_output = torch.zeros(n, dtype=torch.long, device=device)
    best_x = x.clone()
    initial = 0.0
    for t in range(steps + 1):
        x = x.detach().requires_grad_(t < steps)
        with torch.enable_grad():
            gap = (target(x) - pruned(x)).flatten(1).abs()
            objective, output = gap.max(1)
            grad = torch.autograd.grad(objective.sum(), x)[0] if t < steps else None
        value = objective.detach().to(torch.float64)
        if t == 0:
            initial = float(value.max())
        improved = value > best
        best = torch.where(improved, value, best)
        best_output = torch.where(improved, output, best_output)
        best_x[improved] = x.detach()[improved]
        if grad is None:
            break
        # linear decay: large early steps cross ReLU regions, small late ones settle on a local maximum
        scale = step_size * (1.0 - 0.9 * t / max(steps, 1))
        x = torch.clamp(x.detach() + scale * width * grad.sign(), min=lo, max=hi)
    index = int(best.argmax())
    return WorstCase(
        dtype=str(dtype).removeprefix("torch."),
        max_abs_error=float(best[index]),
        start_index=index,
        start_kind=kinds[index],
        output_index=int(best_output[index]),
        initial_max_abs_error=initial,
        per_start=[float(v) for v in best.cpu()],
        start_kinds=list(kinds),
        steps=steps,
        step_size=step_size,
        seconds=time.perf_counter() - begin,
        point=best_x[index : index + 1].detach().cpu(),
    )
