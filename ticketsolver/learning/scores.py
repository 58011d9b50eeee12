"""Scores and the straight-through top-K mask: the trainable part of edge-popup and IteRand.

A :class:`MaskedLayer` holds a frozen random weight (a buffer: no optimizer ever changes it) and one score per
weight entry (a Parameter). Its forward keeps, in each tensor, the ``kept_count`` entries of largest |score| and
computes with ``weight * mask``. The mask is a step function of the scores, so its true gradient is zero almost
everywhere; :class:`TopKMask` passes the gradient of the mask straight through to |score| instead
(hidden-networks' ``GetSubnet``), and the ``abs`` in front of it turns that into ``sign(score) * dL/dmask``: an
entry whose kept weight would lower the loss gains |score|.

>>> import torch
>>> scores = torch.tensor([0.3, -0.9, 0.1, 0.5])
>>> top_k_mask(scores.abs(), keep=0.5)
tensor([0., 1., 0., 1.])
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction import ConvGeometry
from ticketsolver.errors import ConfigError

__all__ = ["WARM_START_EPS", "MaskedLayer", "TopKMask", "kept_count", "top_k_mask"]

#: warm start: kept entries get |score| in [1, 1 + eps], pruned ones [0, eps]
WARM_START_EPS = 1e-3


def kept_count(numel: int, keep: float) -> int:
    """Entries a tensor of ``numel`` entries keeps: ``max(1, round(keep * numel))`` (round half to even).

    ``keep == 0`` keeps none: only a warm start from a ticket that pruned a whole tensor asks for it (a
    :class:`~ticketsolver.learning.LearnConfig` refuses it).

    >>> kept_count(10, 0.25), kept_count(10, 0.01), kept_count(10, 0.0), kept_count(7, 1.0)
    (2, 1, 0, 7)
    """
    if not 0.0 <= keep <= 1.0:
        raise ConfigError(f"keep must be in [0, 1], got {keep}")
    if keep == 0.0:
        return 0
    return max(1, round(keep * numel))


def top_k_mask(magnitudes: torch.Tensor, keep: float) -> torch.Tensor:
    """The 0/1 mask (dtype of ``magnitudes``) keeping the ``kept_count`` largest entries.

    Ties are broken deterministically by position: a stable descending sort keeps the lower flat index.
    """
    flat = magnitudes.detach().reshape(-1)
    count = kept_count(flat.numel(), keep)
    order = torch.sort(flat, descending=True, stable=True).indices
    mask = torch.zeros_like(flat)
    mask[order[:count]] = 1
    return mask.view_as(magnitudes)


class TopKMask(torch.autograd.Function):
    """Forward: :func:`top_k_mask` of the magnitudes; backward: the mask's gradient, unchanged (straight through)."""

    @staticmethod
    def forward(ctx: Any, magnitudes: torch.Tensor, keep: float) -> torch.Tensor:
        return top_k_mask(magnitudes, keep)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class MaskedLayer(nn.Module):
    """A frozen random Linear/Conv2d whose effective weight is ``weight * mask(scores)``.

    Args:
        kind: ``"linear"`` or ``"conv2d"``.
        weight: the random weight in the module's shape ((d_out, d_in) or (c_out, c_in, kh, kw)); copied
            into a buffer.
        bias: the random bias (d_out,), or None.
        keep: kept fraction per tensor name (``"weight"``, and ``"bias"`` when there is one).
        conv: the conv's geometry (stride, padding, dilation); None for a linear layer.

    The scores start at zero: call :meth:`init_scores_kaiming` or :meth:`init_scores_from_masks`.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        kind: Literal["linear", "conv2d"],
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        keep: dict[str, float],
        conv: ConvGeometry | None = None,
    ) -> None:
        super().__init__()
        rank = 4 if kind == "conv2d" else 2
        if weight.dim() != rank or (kind == "conv2d") != (conv is not None):
            raise ConfigError(f"a {kind} layer needs a weight of rank {rank}, and a geometry exactly when it is a conv")
        self.kind = kind
        self.conv = conv
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.weight_scores = nn.Parameter(torch.zeros_like(self.weight))
        self.bias_scores = None if bias is None else nn.Parameter(torch.zeros_like(bias))
        missing = {name for name in self.tensor_names() if name not in keep}
        if missing:
            raise ConfigError(f"keep needs a fraction for {sorted(missing)}")
        self.keep = {name: float(keep[name]) for name in self.tensor_names()}

    def tensor_names(self) -> tuple[str, ...]:
        return ("weight",) if self.bias is None else ("weight", "bias")

    def scores(self, name: str) -> nn.Parameter:
        score = self.weight_scores if name == "weight" else self.bias_scores
        assert score is not None
        return score

    def frozen(self, name: str) -> torch.Tensor:
        """The random tensor ``name`` as the layer holds it (module shape)."""
        tensor = self.weight if name == "weight" else self.bias
        assert tensor is not None
        return tensor

    # -- scores ---------------------------------------------------------------------------------------

    def init_scores_kaiming(self, generator: torch.Generator) -> None:
        """hidden-networks' scores: ``kaiming_uniform_(a=sqrt(5))``, i.e. uniform on +-1/sqrt(fan_in) (the
        same bound for the bias scores, as torch initialises a bias)."""
        bound = 1.0 / math.sqrt(self.weight[0].numel())
        with torch.no_grad():
            for name in self.tensor_names():
                score = self.scores(name)
                u = torch.rand(score.shape, generator=generator, dtype=torch.float64)
                score.copy_((2.0 * u - 1.0) * bound)

    def init_scores_from_masks(self, masks: dict[str, np.ndarray], generator: torch.Generator) -> None:
        """Warm start: kept entries get |score| in [1, 1 + eps], pruned ones [0, eps] (eps = WARM_START_EPS), so
        the first top-K mask is ``masks`` exactly when each tensor's keep is its mask's kept fraction."""
        with torch.no_grad():
            for name in self.tensor_names():
                score = self.scores(name)
                kept = torch.from_numpy(np.asarray(masks[name], dtype=bool).reshape(tuple(score.shape)))
                u = torch.rand(score.shape, generator=generator, dtype=torch.float64)
                score.copy_(kept.to(torch.float64) + WARM_START_EPS * u)

    # -- forward --------------------------------------------------------------------------------------

    def masks(self) -> dict[str, torch.Tensor]:
        """The current top-K masks (bool, module shape)."""
        return {name: top_k_mask(self.scores(name).abs(), self.keep[name]).bool() for name in self.tensor_names()}

    def effective(self, name: str) -> torch.Tensor:
        """``frozen * mask``, differentiable in the scores through the straight-through mask."""
        mask = TopKMask.apply(self.scores(name).abs(), self.keep[name])
        return self.frozen(name) * mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective("weight")
        bias = None if self.bias is None else self.effective("bias")
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        g = self.conv
        assert g is not None
        return F.conv2d(x, weight, bias, g.stride, g.padding, g.dilation)

    def extra_repr(self) -> str:
        return f"{self.kind}, weight={tuple(self.weight.shape)}, bias={self.bias is not None}, keep={self.keep}"
