"""Interval bounds of every pair's input over the input box, through the network as it is being built.

Construction L keeps a unit ``relu(u·x_j + beta)`` only where ``beta >= max(-u·lo_j, -u·hi_j)``, so that the
unit is linear for every x_j in [lo_j, hi_j]. Those bounds must hold for *g's* activations, not only for
f's: the builder therefore walks the network in order and propagates the input box through each pair's
*effective* layer (the pair it has just built, exactly linear on its own box) and the modules kept in
place (ReLU, max and average pooling, Flatten — all monotone). By induction every pair's input lies in the
box computed for it, so every pair is linear there and g equals its effective-weights network on the whole
input box. Bounds are computed in float64 and widened by :data:`SLACK_REL` of their width plus
:data:`SLACK_ABS`, which covers rounding of g's float32 forward pass many times over (its relative error
is ~1e-6 on these networks).

Plain interval arithmetic (centre/radius) loosens with depth: on LeNet5 it bounds the last layer's input
by ~470 where the data reach ~25, and the offsets of construction L, hence the constants its bias block
cancels, grow with the box. So on a run of dense layers (Linear and ReLU, after a Flatten or from a 1-D
input) the bounds are intersected with the backward linear relaxation of CROWN (Zhang et al. 2018): each
ReLU with pre-activation bounds [l, u] is enclosed between a lower line (identity or zero, whichever is
closer) and the chord u(z - l)/(u - l), and the resulting linear bound is evaluated on the run's first box.
Both are sound, so their intersection is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.errors import ConstructionError

__all__ = ["DEFAULT_INPUT_BOX", "SLACK_ABS", "SLACK_REL", "IntervalWalk", "pair_input_boxes"]

#: the input box assumed when none is declared: standardised features, six standard deviations each way
DEFAULT_INPUT_BOX: tuple[float, float] = (-6.0, 6.0)
#: widening of every propagated box, relative to its width, and absolute
SLACK_REL = 1e-3
SLACK_ABS = 1e-6


@dataclass
class _DenseLayer:
    """One affine layer of a dense run, its output's bounds, and whether a ReLU follows it."""

    weight: torch.Tensor  # (d_out, d_in)
    bias: torch.Tensor  # (d_out,)
    lo: torch.Tensor  # bounds of its output (the ReLU's input)
    hi: torch.Tensor
    relu: bool = False


@dataclass
class _DenseRun:
    """A run of dense layers since the box ``lo``/``hi`` (1-D) it starts from."""

    lo: torch.Tensor
    hi: torch.Tensor
    layers: list[_DenseLayer] = field(default_factory=list)

    def bounds(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CROWN bounds of ``weight @ a + bias`` where ``a`` is the run's current output."""
        return self._bound(weight, bias, upper=False), self._bound(weight, bias, upper=True)

    def _bound(self, weight: torch.Tensor, bias: torch.Tensor, upper: bool) -> torch.Tensor:
        lam, const = weight.clone(), bias.clone()
        for layer in reversed(self.layers):
            if layer.relu:
                low, u = layer.lo, layer.hi
                active, dead = low >= 0, u <= 0
                unstable = ~active & ~dead
                width = torch.where(unstable, u - low, torch.ones_like(u))
                chord = torch.where(active, 1.0, torch.where(unstable, u / width, 0.0))  # a <= chord z + icpt
                icpt = torch.where(unstable, -chord * low, 0.0)
                floor = torch.where(active | (unstable & (u >= -low)), 1.0, 0.0)  # a >= floor z
                pos, neg = lam.clamp(min=0), lam.clamp(max=0)
                if upper:
                    lam, const = pos * chord + neg * floor, const + pos @ icpt
                else:
                    lam, const = pos * floor + neg * chord, const + neg @ icpt
            const = const + lam @ layer.bias
            lam = lam @ layer.weight
        pos, neg = lam.clamp(min=0), lam.clamp(max=0)
        if upper:
            return pos @ self.hi + neg @ self.lo + const
        return pos @ self.lo + neg @ self.hi + const


@dataclass(frozen=True)
class _Geometry:
    """What the walk needs of a pair when there is no layout: its kind, conv geometry and outputs."""

    kind: str
    conv: ConvGeometry | None
    d_out: int

    @classmethod
    def of(cls, pair: nn.Module) -> _Geometry:
        first, second = pair.first, pair.second
        assert isinstance(first, nn.Linear | nn.Conv2d) and isinstance(second, nn.Linear | nn.Conv2d)
        conv = ConvGeometry.of(first)
        return cls("linear" if conv is None else "conv2d", conv, int(second.weight.shape[0]))


@dataclass
class IntervalWalk:
    """Elementwise bounds ``lo <= x <= hi`` of the current activation (per-sample shape, float64)."""

    lo: torch.Tensor
    hi: torch.Tensor
    dense: _DenseRun | None = None  # the run of dense layers the activation comes out of, if any

    @classmethod
    def from_box(cls, box: tuple[float, float], input_shape: tuple[int, ...]) -> IntervalWalk:
        lo, hi = (torch.full((1, *input_shape), float(v), dtype=torch.float64) for v in box)
        return cls.from_bounds(lo, hi)

    @classmethod
    def from_bounds(cls, lo: torch.Tensor, hi: torch.Tensor) -> IntervalWalk:
        """Start from elementwise bounds of shape (1, *input_shape), float64."""
        walk = cls(lo.clone(), hi.clone())
        if lo.dim() == 2:
            walk.dense = _DenseRun(lo[0].clone(), hi[0].clone())
        return walk

    def through_module(self, module: nn.Module) -> None:
        """A kept module: ReLU, pooling and Flatten are monotone, so they map bounds to bounds."""
        if not isinstance(module, nn.ReLU | nn.MaxPool2d | nn.AvgPool2d | nn.Flatten):
            raise ConstructionError(f"no interval rule for {type(module).__name__}")
        self.lo, self.hi = module(self.lo), module(self.hi)
        if isinstance(module, nn.ReLU) and self.dense is not None and self.dense.layers:
            self.dense.layers[-1].relu = True
        elif isinstance(module, nn.Flatten) and self.lo.dim() == 2:
            if self.dense is None or not self.dense.layers:
                self.dense = _DenseRun(self.lo[0].clone(), self.hi[0].clone())
        elif not isinstance(module, nn.ReLU | nn.Flatten):
            self.dense = None
        if isinstance(module, nn.ReLU) and self.dense is not None and not self.dense.layers:
            self.dense = _DenseRun(self.lo[0].clone(), self.hi[0].clone())

    def through_affine(
        self,
        layout: PairLayout | _Geometry,
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
        dense = self.dense if layout.kind == "linear" and weight_neg is None else None
        if dense is not None:
            w = torch.from_numpy(np.ascontiguousarray(weight_pos, dtype=np.float64))
            b = torch.zeros(w.shape[0], dtype=torch.float64)
            if bias is not None:
                b = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float64))
            crown_lo, crown_hi = dense.bounds(w, b)
            lo, hi = torch.maximum(lo, crown_lo.unsqueeze(0)), torch.minimum(hi, crown_hi.unsqueeze(0))
        slack = SLACK_REL * (hi - lo) + SLACK_ABS
        self.lo, self.hi = lo - slack, hi + slack
        if dense is not None:
            dense.layers.append(_DenseLayer(w, b, self.lo[0].clone(), self.hi[0].clone()))
        else:
            self.dense = None

    @staticmethod
    def _affine(
        layout: PairLayout | _Geometry, weight: np.ndarray, bias: np.ndarray | None, lo: torch.Tensor, hi: torch.Tensor
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

    def through_pair(self, layout: PairLayout | None, pair: nn.Module, effective: Any = None) -> None:
        """A built pair (a :class:`PrunedPair`), through the effective layer computed from its own tensors.

        ``layout`` gives the pair's kind and conv geometry; None reads them from the pair's layers.
        ``effective``: the pair's effective layer in float64 when the caller has it already (anything with
        ``weight_pos``, ``weight_neg`` and ``bias`` tensors); None computes it.
        """
        shape: PairLayout | _Geometry = _Geometry.of(pair) if layout is None else layout
        if effective is None:
            effective = pair.effective()  # type: ignore[operator]

        def dense(t: torch.Tensor | None, *shape_: int) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().reshape(*shape_).numpy()

        weight_pos = dense(effective.weight_pos, shape.d_out, -1)
        assert weight_pos is not None
        self.through_affine(shape, weight_pos, dense(effective.weight_neg, shape.d_out, -1), dense(effective.bias, -1))

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


def pair_input_boxes(ticket: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The column box of every pair of a pure ticket, replayed as the builder computed it.

    Walks the ticket's steps from its input box through the pairs it holds; the result is what
    construction L was built on (used by benchmarks, and by tests that check each pair is linear there).
    """
    from ticketsolver.construction.steps import module_from_step

    if ticket.input_domain is None:
        raise ConstructionError("the ticket records no input box")
    walk = IntervalWalk.from_box(ticket.input_domain, tuple(ticket.input_shape))
    pairs = list(ticket.pairs())
    boxes = []
    for step in ticket.steps:
        if step["op"] != "pair":
            walk.through_module(module_from_step(step))
            continue
        k = int(step["pair"])
        layout = ticket.layouts[k]
        boxes.append(walk.column_box(layout.conv, layout.d_in))
        walk.through_pair(layout, pairs[k])
    return boxes
