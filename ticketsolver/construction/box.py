"""Interval bounds of every pair's input over the input box, through the network as it is being built.

Construction L keeps a unit ``relu(u·x_j + beta)`` only where ``beta >= max(-u·lo_j, -u·hi_j)``, so that the
unit is linear for every x_j in [lo_j, hi_j]. Those bounds must hold for *g's* activations, not only for
f's: the builder therefore walks the network in order and propagates the input box through each pair's
*effective* layer (the pair it has just built, exactly linear on its own box) and the modules kept in
place (ReLU, max and average pooling, Flatten — all monotone). By induction every pair's input lies in the
box computed for it, so every pair is linear there and g equals its effective-weights network on the whole
input box. Bounds are computed in float64 (centre/radius form) and widened by :data:`SLACK_REL` of their
width plus :data:`SLACK_ABS`, which covers rounding of g's float32 forward pass many times over (its
relative error is ~1e-6 on these networks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.errors import ConstructionError

__all__ = ["DEFAULT_INPUT_BOX", "SLACK_ABS", "SLACK_REL", "IntervalWalk"]

#: the input box assumed when none is declared: standardised features, six standard deviations each way
DEFAULT_INPUT_BOX: tuple[float, float] = (-6.0, 6.0)
#: widening of every propagated box, relative to its width, and absolute
SLACK_REL = 1e-3
SLACK_ABS = 1e-6


@dataclass
class IntervalWalk:
    """Elementwise bounds ``lo <= x <= hi`` of the current activation (per-sample shape, float64)."""

    lo: torch.Tensor
    hi: torch.Tensor

    @classmethod
    def from_box(cls, box: tuple[float, float], input_shape: tuple[int, ...]) -> IntervalWalk:
        lo, hi = (torch.full((1, *input_shape), float(v), dtype=torch.float64) for v in box)
        return cls(lo, hi)

    def through_module(self, module: nn.Module) -> None:
        """A kept module: ReLU, pooling and Flatten are monotone, so they map bounds to bounds."""
        if not isinstance(module, nn.ReLU | nn.MaxPool2d | nn.AvgPool2d | nn.Flatten):
            raise ConstructionError(f"no interval rule for {type(module).__name__}")
        self.lo, self.hi = module(self.lo), module(self.hi)

    def through_affine(
        self,
        layout: PairLayout,
        weight_pos: np.ndarray,
        weight_neg: np.ndarray | None,
        bias: np.ndarray | None,
    ) -> None:
        """A built pair, through its effective layer ``W+ x + b`` (or ``W+ x+ + W- x- + b`` for I).

        ``weight_pos``/``weight_neg`` are dense-view (d_out, d_in) float64 arrays.
        """
        if weight_neg is None:
            lo, hi = self._affine(layout, weight_pos, bias, self.lo, self.hi)
        else:
            lo_p, hi_p = self._affine(layout, weight_pos, bias, self.lo.clamp(min=0), self.hi.clamp(min=0))
            lo_n, hi_n = self._affine(layout, weight_neg, None, (-self.hi).clamp(min=0), (-self.lo).clamp(min=0))
            lo, hi = lo_p + lo_n, hi_p + hi_n
        slack = SLACK_REL * (hi - lo) + SLACK_ABS
        self.lo, self.hi = lo - slack, hi + slack

    @staticmethod
    def _affine(
        layout: PairLayout, weight: np.ndarray, bias: np.ndarray | None, lo: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float64))
        b = None if bias is None else torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float64))
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        if layout.kind == "linear":
            centre, radius = F.linear(mid.flatten(1), w, b), F.linear(rad.flatten(1), w.abs())
        else:
            g = layout.conv
            assert g is not None
            w = w.reshape(layout.d_out, g.in_channels, *g.kernel_size)
            args = (g.stride, g.padding, g.dilation)
            centre, radius = F.conv2d(mid, w, b, *args), F.conv2d(rad, w.abs(), None, *args)
        return centre - radius, centre + radius

    def column_box(self, conv: ConvGeometry | None, d_in: int) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of each dense-view input column of a layer: (d_in,) lo and hi.

        Linear: the features. Conv: column (c, a, b) of the im2col view reads channel c at every position
        the kernel visits, zero padding included, so it gets the channel's range (joined with 0 when the
        conv pads).
        """
        lo, hi = self.lo[0], self.hi[0]
        g = conv
        if g is None:
            lo_cols, hi_cols = lo.reshape(-1), hi.reshape(-1)
        else:
            lo_c, hi_c = lo.reshape(g.in_channels, -1).min(1).values, hi.reshape(g.in_channels, -1).max(1).values
            if any(g.padding):
                lo_c, hi_c = lo_c.clamp(max=0), hi_c.clamp(min=0)
            taps = g.kernel_size[0] * g.kernel_size[1]
            lo_cols, hi_cols = lo_c.repeat_interleave(taps), hi_c.repeat_interleave(taps)
        if lo_cols.numel() != d_in:
            raise ConstructionError(f"a layer reads {d_in} input columns, its input has {lo_cols.numel()}")
        return lo_cols.numpy().copy(), hi_cols.numpy().copy()
