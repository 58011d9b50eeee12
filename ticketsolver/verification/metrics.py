"""Output comparison of the target f and the pruned network g: the numbers a user reads first.

Verification (the last stage of the pipeline before jobs/service) runs f and g on the same inputs; this
module turns their outputs into the metrics of docs/design.md section 5: max abs error, the relative error of
da Cunha et al. (per input: max over outputs |f - g| / max over outputs |f|; reported as max and mean),
accuracy of both when labels exist, and top-1 agreement. Outputs arrive in batches, so the metrics are
accumulated by :class:`OutputComparison`; :func:`compare_outputs` is the one-shot form.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ticketsolver.errors import VerificationError

__all__ = ["OutputComparison", "OutputMetrics", "compare_outputs", "per_input_errors", "relative_errors"]


@dataclass(frozen=True)
class OutputMetrics:
    """How closely g's outputs follow f's on one set of inputs, in one dtype.

    Attributes:
        n_inputs: number of inputs compared.
        max_abs_error: max over inputs and outputs of ``|f - g|``.
        mean_abs_error: mean over inputs of the per-input max over outputs of ``|f - g|``.
        relative_error_max: max over inputs of ``max_c |f - g| / max_c |f|`` (da Cunha et al.); inputs
            where f's output is all zeros are left out (counted in ``n_zero_target``); None if no input
            is left.
        relative_error_mean: mean of the same per-input relative error over the same inputs.
        n_zero_target: inputs whose target output is exactly zero (relative error undefined).
        accuracy_target: fraction of inputs whose argmax of f equals the label; None without labels.
        accuracy_pruned: the same for g.
        top1_agreement: fraction of inputs where argmax f == argmax g.
        argmax_input: index (in the order given) of the input with the largest ``|f - g|``.
    """

    n_inputs: int
    max_abs_error: float
    mean_abs_error: float
    relative_error_max: float | None
    relative_error_mean: float | None
    n_zero_target: int
    accuracy_target: float | None
    accuracy_pruned: float | None
    top1_agreement: float
    argmax_input: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OutputComparison:
    """Accumulates per-input comparison statistics over batches of outputs.

    Only per-input summaries (a few numbers per input) are kept, so memory does not grow with the number
    of outputs. Statistics are held in float64 whatever the dtype of the outputs.

    >>> acc = OutputComparison()
    >>> acc.update(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.5]]), torch.tensor([1]))
    >>> acc.result().max_abs_error
    0.5
    """

    def __init__(self, per_position: bool = False) -> None:
        #: outputs (B, ..., C): agreement and accuracy per position (argmax over the last dimension, every position
        #: of every input counts; labels (B, ...)); False: one argmax per input over all its outputs
        self.per_position = per_position
        self._abs: list[torch.Tensor] = []  # per-input max_c |f - g|
        self._scale: list[torch.Tensor] = []  # per-input max_c |f|
        self._agree: list[torch.Tensor] = []
        self._correct_f: list[torch.Tensor] = []
        self._correct_g: list[torch.Tensor] = []
        self._has_labels: bool | None = None

    @property
    def per_input_abs_error(self) -> torch.Tensor:
        """(N,) float64 on CPU: per-input max over outputs of ``|f - g|`` seen so far."""
        if not self._abs:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat(self._abs)

    @torch.no_grad()
    def update(self, f_out: torch.Tensor, g_out: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Adds one batch.

        Args:
            f_out: (B, C) or (B, ...) outputs of the target; flattened after the batch dimension.
            g_out: outputs of the pruned network, same shape.
            labels: (B,) integer class labels, or None. Either every batch has labels or none has.

        Raises:
            VerificationError: shapes disagree, or labels are given for some batches only.
        """
        if f_out.shape != g_out.shape:
            raise VerificationError(f"target output shape {tuple(f_out.shape)} != pruned {tuple(g_out.shape)}")
        if f_out.dim() < 2 or f_out.shape[0] == 0:
            raise VerificationError(f"expected outputs of shape (B, C) with B > 0, got {tuple(f_out.shape)}")
        has_labels = labels is not None
        if self._has_labels is not None and has_labels != self._has_labels:
            raise VerificationError("labels must be given for every batch or for none")
        self._has_labels = has_labels
        abs_err, scale = per_input_errors(f_out, g_out)
        self._abs.append(abs_err.cpu())
        self._scale.append(scale.cpu())
        if self.per_position:
            f_top, g_top = f_out.detach().argmax(-1).flatten(), g_out.detach().argmax(-1).flatten()
            expected = tuple(f_out.shape[:-1])
        else:
            f_top, g_top = f_out.detach().flatten(1).argmax(1), g_out.detach().flatten(1).argmax(1)
            expected = (f_out.shape[0],)
        self._agree.append((f_top == g_top).cpu())
        if labels is not None:
            if tuple(labels.shape) != expected:
                raise VerificationError(f"labels must have shape {expected}, got {tuple(labels.shape)}")
            labels = labels.reshape(-1)
            y = labels.to(f_top.device)
            self._correct_f.append((f_top == y).cpu())
            self._correct_g.append((g_top == y).cpu())

    def result(self) -> OutputMetrics:
        """The metrics over every batch added so far.

        Raises:
            VerificationError: nothing was added.
        """
        if not self._abs:
            raise VerificationError("no outputs were compared")
        abs_err = torch.cat(self._abs)
        scale = torch.cat(self._scale)
        nonzero = scale > 0
        # da Cunha et al.'s relative error is undefined where f's output is all zeros; such inputs are
        # counted, not hidden inside a division by a tiny guard value
        rel = abs_err[nonzero] / scale[nonzero]
        accuracy_f = accuracy_g = None
        if self._has_labels:
            accuracy_f = float(torch.cat(self._correct_f).double().mean())
            accuracy_g = float(torch.cat(self._correct_g).double().mean())
        return OutputMetrics(
            n_inputs=int(abs_err.numel()),
            max_abs_error=float(abs_err.max()),
            mean_abs_error=float(abs_err.mean()),
            relative_error_max=float(rel.max()) if rel.numel() else None,
            relative_error_mean=float(rel.mean()) if rel.numel() else None,
            n_zero_target=int((~nonzero).sum()),
            accuracy_target=accuracy_f,
            accuracy_pruned=accuracy_g,
            top1_agreement=float(torch.cat(self._agree).double().mean()),
            argmax_input=int(abs_err.argmax()),
        )


def per_input_errors(f_out: torch.Tensor, g_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, in float64: ``max_c |f - g|`` and ``max_c |f|`` over all of that input's outputs."""
    f = f_out.detach().flatten(1).to(torch.float64)
    g = g_out.detach().flatten(1).to(torch.float64)
    return (f - g).abs().amax(1), f.abs().amax(1)


def relative_errors(f_out: torch.Tensor, g_out: torch.Tensor) -> torch.Tensor:
    """Per input, da Cunha et al.'s relative error ``max_c |f - g| / max_c |f|`` in float64; NaN where f's
    output is all zeros (undefined there).

    >>> relative_errors(torch.tensor([[2.0, -4.0], [0.0, 0.0]]), torch.tensor([[2.0, -3.0], [1.0, 0.0]])).tolist()
    [0.25, nan]
    """
    abs_err, scale = per_input_errors(f_out, g_out)
    return torch.where(scale > 0, abs_err / torch.where(scale > 0, scale, 1.0), torch.nan)


def compare_outputs(f_out: torch.Tensor, g_out: torch.Tensor, labels: torch.Tensor | None = None) -> OutputMetrics:
    """Metrics of one batch of outputs of f and g (see :class:`OutputMetrics`).

    Args:
        f_out: (N, C) outputs of the target.
        g_out: (N, C) outputs of the pruned network.
        labels: (N,) integer labels or None.

    Returns:
        The :class:`OutputMetrics` of these inputs.

    Raises:
        VerificationError: shapes disagree or the batch is empty.

    >>> m = compare_outputs(torch.tensor([[2.0, -4.0]]), torch.tensor([[2.0, -3.0]]))
    >>> m.max_abs_error, m.relative_error_max, m.top1_agreement
    (1.0, 0.25, 1.0)
    """
    acc = OutputComparison()
    acc.update(f_out, g_out, labels)
    return acc.result()
