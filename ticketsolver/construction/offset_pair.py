"""An L pair held compactly (of a conv, or of a Linear as a 1x1 conv): its first layer a grouped conv of U's block
diagonal, U never whole.

Construction L keeps only U's block diagonal: hidden unit (j, t) reads input entry j = (c, a, b) (channel c, kernel tap
(a, b)) alone, with weight u_(j,t) = U[(j, t), j]. The dense first conv (hidden x c_in x kh x kw) is therefore the
grouped conv with one group per input channel c whose kh·kw·n output channels (tap, t) each hold a kernel that is
zero but at their own tap: exactly the same network, without the dense U (a ResNet-18 at n = 30 has 2.8e9 entries of
U, of which 945,450 can be kept). The bias block's units are fed by nothing: ``relu(beta_b) = beta_b``, so they add
the constant ``V_b relu(beta_b)`` to every output position, computed from the random values on every call (no
trained value is stored, and an export keeps the computation).

:class:`OffsetPair` has the interface the graph verifier and the effective-weights network use of a
:class:`~ticketsolver.construction.pair.PrunedPair` (``construction``, ``kind``, ``forward_with_margin``,
``effective``), and runs its hidden units chunk by chunk over input entries (im2col, an elementwise affine map, one
matrix product per chunk) so that the hidden activations of a batch stay near :data:`HIDDEN_CHUNK` values however wide
the pair is.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.pair import Construction, EffectiveLayer, _tracing
from ticketsolver.errors import ConstructionError

__all__ = ["HIDDEN_CHUNK", "OffsetPair"]

#: hidden activations (batch x units x positions) computed at once; the sum over chunks is the same network
HIDDEN_CHUNK = 1 << 25


def _frozen(values: np.ndarray | torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(np.asarray(values, dtype=np.float32)).clone(), requires_grad=False)


class OffsetPair(nn.Module):
    """``second(relu(first(x))) + V_b relu(beta_b)``: an L pair with U held as its block diagonal.

    A Linear's pair is held as the conv pair of a 1x1 kernel on a 1x1 image (``linear``: inputs (rows, d_in) and
    outputs (rows, d_out), its effective layer a Linear).

    Attributes:
        first: ``nn.Conv2d(c_in, d_in·n, (kh, kw), groups=c_in)`` with bias beta (input blocks); the weight of unit
            (c, tap, t) is u_(j,t) at its tap, 0 elsewhere.
        second: 1x1 ``nn.Conv2d(d_in·n, d_out)`` without bias: V's input-block columns.
        bias_offsets: (bias_units,) the bias block's offsets beta_b (>= 0).
        bias_weight: (d_out, bias_units) V's bias-block columns.
        n: units per input entry.
        linear: the pair stands for a Linear (rows in, rows out).
    """

    construction: Construction = "offset_blocks"

    def __init__(
        self,
        first: nn.Conv2d,
        second: nn.Conv2d,
        bias_offsets: nn.Parameter,
        bias_weight: nn.Parameter,
        n: int,
        linear: bool = False,
    ) -> None:
        super().__init__()
        if first.groups != first.in_channels or first.bias is None or second.bias is not None:
            raise ConstructionError("an offset pair's first layer is a biased per-channel grouped conv")
        if linear and first.kernel_size != (1, 1):
            raise ConstructionError("an offset pair of a Linear has a 1x1 kernel")
        self.first, self.second, self.n, self.linear = first, second, int(n), bool(linear)
        self.bias_offsets, self.bias_weight = bias_offsets, bias_weight

    @staticmethod
    def holds(layout: object) -> bool:
        """Whether ``layout`` is a pair this module can hold: construction L (of a conv, or of a Linear)."""
        return isinstance(layout, PairLayout) and layout.construction == "offset_blocks"

    @staticmethod
    def geometry(layout: PairLayout) -> ConvGeometry:
        """The first layer's conv geometry: the layout's, or a Linear's as a 1x1 kernel over d_in channels."""
        return layout.conv or ConvGeometry(layout.d_in, (1, 1), (1, 1), (0, 0), (1, 1))

    @classmethod
    def grouped(cls, layout: PairLayout, diagonal: np.ndarray) -> np.ndarray:
        """U's block diagonal (d_in, n) (values or a mask) laid out as the grouped conv's weight (d_in·n, 1, kh, kw):
        unit (c, tap, t) holds entry [(c, tap), t] at its own tap, zero (False) at the others."""
        conv = cls.geometry(layout)
        channels, (kh, kw), n = conv.in_channels, conv.kernel_size, layout.n
        taps = kh * kw
        weight = np.zeros((channels, taps, n, taps), dtype=diagonal.dtype)
        index = np.arange(taps)
        weight[:, index, :, index] = diagonal.reshape(channels, taps, n).transpose(1, 0, 2)
        return weight.reshape(layout.d_in * n, 1, kh, kw)

    @classmethod
    def slots(
        cls, layout: PairLayout, held: dict[str, np.ndarray], masks: dict[str, np.ndarray]
    ) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """Per parameter of this module: (parameter name, random tensor it comes from, source values and mask in the
        parameter's shape). The grouped weight's source holds U's diagonal at each unit's tap, 0 at the others
        (entries of no random tensor); every other entry of U is pruned by construction L."""
        units = layout.d_in * layout.n
        beta, v = held["beta"], held["V"]
        return [
            ("first.weight", "U", cls.grouped(layout, held["U"]), cls.grouped(layout, masks["U"])),
            ("first.bias", "beta", beta[:units], masks["beta"][:units]),
            ("second.weight", "V", v[:, :units, None, None], masks["V"][:, :units, None, None]),
            ("bias_offsets", "beta", beta[units:], masks["beta"][units:]),
            ("bias_weight", "V", v[:, units:], masks["V"][:, units:]),
        ]

    @classmethod
    def from_held(cls, layout: PairLayout, held: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> OffsetPair:
        """The pruned pair from its held tensors and masks (:meth:`PairLayout.held_tensors`, ``mask_shapes``)."""
        if not cls.holds(layout):
            raise ConstructionError(f"pair {layout.pair}: an offset pair is construction L")
        conv = cls.geometry(layout)
        channels, units = conv.in_channels, layout.d_in * layout.n
        # skip_init: default initialisation would draw from torch's global generator only to be overwritten
        first = skip_init(
            nn.Conv2d, channels, units, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=channels
        )
        second = skip_init(nn.Conv2d, units, layout.d_out, 1, bias=False)
        pruned = {
            name: _frozen(np.where(mask, source, np.zeros((), dtype=source.dtype)))
            for name, _, source, mask in cls.slots(layout, held, masks)
        }
        first.weight, first.bias, second.weight = pruned["first.weight"], pruned["first.bias"], pruned["second.weight"]
        linear = layout.conv is None
        return cls(first, second, pruned["bias_offsets"], pruned["bias_weight"], layout.n, linear).eval()

    @property
    def kind(self) -> Literal["linear", "conv2d"]:
        return "linear" if self.linear else "conv2d"

    @property
    def units(self) -> int:
        return int(self.first.out_channels)

    def _constant(self) -> torch.Tensor:
        """The bias block's output ``V_b relu(beta_b)`` (d_out,), from the random values."""
        return self.bias_weight @ torch.relu(self.bias_offsets)

    def _taps(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The grouped weight as (channels, taps, n, taps) and each unit's own tap (channels, taps, n), in ``dtype``."""
        first = self.first
        channels, taps = int(first.in_channels), first.kernel_size[0] * first.kernel_size[1]
        w = first.weight.detach().to(dtype).reshape(channels, taps, self.units // (channels * taps), taps)
        return w, w.diagonal(dim1=1, dim2=3).permute(0, 2, 1)

    def _units_view(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(u, beta, V, C) of the input blocks as (d_in, n), (d_in, n), (d_out, d_in·n) tensors read from the layers
        (each unit's own tap of the grouped weight), and the constant ``C = V beta + V_b relu(beta_b)`` (d_out,) in
        float64; cached per weights, like PrunedPair's kept units."""
        first, second = self.first, self.second
        tensors = (first.weight, first.bias, second.weight, self.bias_offsets, self.bias_weight)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors if t is not None)
        if getattr(self, "_view_key", None) != key:
            with torch.no_grad():
                _, taps = self._taps(first.weight.dtype)
                u = taps.reshape(-1, self.n)  # (d_in, n)
                assert first.bias is not None
                beta = first.bias.reshape(u.shape)
                v = second.weight.reshape(-1, self.units)
                constant = v.double() @ beta.double().reshape(-1) + self.bias_weight.double() @ torch.relu(
                    self.bias_offsets.double()
                )
                self._view = (u.contiguous(), beta.contiguous(), v.contiguous(), constant)
                self._view_key = key
        return self._view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.reshape(*x.shape, 1, 1) if self.linear else x
        if _tracing():  # the layers themselves are the network's definition (ONNX: grouped conv, 1x1 conv)
            out = self.second(F.relu(self.first(image))) + self._constant()[None, :, None, None]
        else:
            out = self._run(image, track_margin=False)[0]
        return out.reshape(out.shape[:2]) if self.linear else out

    def forward_with_margin(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pair(x), m)`` with ``m`` per input the least pre-activation of a kept hidden unit (one with a kept V
        entry, the bias block's included: their pre-activation is beta_b >= 0): where ``m >= 0`` every ReLU is the
        identity and the pair equals its effective layer."""
        out, least = self._run(x.reshape(*x.shape, 1, 1) if self.linear else x, track_margin=True)
        assert least is not None
        return (out.reshape(out.shape[:2]) if self.linear else out), least

    def _run(self, x: torch.Tensor, track_margin: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pair over its input blocks' units, a range of input entries at a time: im2col patches (B, d_in, L),
        each entry's n units laid out (units, B·L), then one matrix product with V's columns accumulated into
        (d_out, B·L). The same sums as the layers (their zero taps dropped), 2-3x faster on CPUs than the grouped conv
        and the 1x1 conv, and the hidden activations of one step stay near HIDDEN_CHUNK values.

        Each unit is evaluated as ``relu(u·p + beta) = beta + max(u·p, -beta)`` (an identity), the offsets' part
        ``V beta`` joined with the bias block's ``V_b relu(beta_b)`` into one constant C computed in float64: the same
        network, but float32 no longer rounds the large offsets whose sum the bias block cancels (L's offsets grow
        with the box, and their constants reach ~1e4 where outputs are ~10). C is within rounding of the target's bias.
        """
        first = self.first
        u, beta, v, constant = self._units_view()
        d_in, n = u.shape
        patches = F.unfold(x, first.kernel_size, first.dilation, first.padding, first.stride)  # type: ignore[arg-type]
        batch, length = patches.shape[0], patches.shape[-1]
        columns = patches.permute(1, 0, 2).reshape(d_in, 1, batch * length)
        out = torch.zeros(v.shape[0], batch * length, dtype=x.dtype, device=x.device)
        kept = v.ne(0).any(0).reshape(d_in, n) if track_margin else None
        least = torch.full((batch,), torch.inf, dtype=x.dtype, device=x.device) if track_margin else None
        step = max(1, HIDDEN_CHUNK // max(1, n * batch * length))
        for j0 in range(0, d_in, step):
            j1 = min(d_in, j0 + step)
            product = columns[j0:j1] * u[j0:j1, :, None]  # (j, n, B·L): u·p of every unit
            if kept is not None and least is not None and bool(kept[j0:j1].any()):
                # the pre-activation u·p + beta, least over positions per unit and input: a reduction, no copy
                per_unit = product.reshape(j1 - j0, n, batch, length).amin(-1) + beta[j0:j1, :, None]
                least = torch.minimum(least, per_unit[kept[j0:j1]].amin(0))
            # relu(u·p + beta) - beta = max(u·p, -beta); in place unless differentiated
            floor = beta[j0:j1, :, None].neg()
            hidden = torch.maximum(product, floor) if product.requires_grad else torch.max(product, floor, out=product)
            out.addmm_(v[:, j0 * n : j1 * n], hidden.reshape(-1, batch * length))
        if least is not None:  # the bias block's kept units: their pre-activation is beta_b on every input
            kept_bias = self.bias_offsets[self.bias_weight.ne(0).any(0)]
            if kept_bias.numel():
                least = torch.minimum(least, kept_bias.min().to(least.dtype))
        out += constant.to(out.dtype)[:, None]
        pad, dilation, kernel, stride = first.padding[0], first.dilation[0], first.kernel_size[0], first.stride[0]
        assert isinstance(pad, int)  # numeric padding (built so)
        height = (x.shape[-2] + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        return out.reshape(-1, batch, height, length // height).permute(1, 0, 2, 3), least

    @torch.no_grad()
    def effective(self, dtype: torch.dtype = torch.float64) -> EffectiveLayer:
        """The effective conv this pair equals where its units are linear: ``W[i, c, a, b] = sum_t V[i, (c, a, b, t)]
        u_(c, a, b, t)`` and ``b_i = V relu(beta)`` over every unit, input blocks and bias block.

        Raises:
            ConstructionError: a unit reads more than its own tap, or a kept offset is negative.
        """
        first = self.first
        channels, units, n = int(first.in_channels), self.units, self.n
        kh, kw = first.kernel_size
        taps = kh * kw
        w, u = self._taps(dtype)  # u: (channels, taps, n), unit (c, tap, t)'s own tap
        assert first.bias is not None
        beta = first.bias.detach().to(dtype)
        if bool((w.abs().sum(-1) != u.abs()).any()) or bool((beta < 0).any()):
            raise ConstructionError("offset pair has a unit fed by several taps or a negative offset")
        if bool((self.bias_offsets < 0).any()):
            raise ConstructionError("offset pair has a negative offset in its bias block")
        v = self.second.weight.detach().to(dtype).reshape(-1, units)
        d_out = v.shape[0]
        weight = torch.empty(d_out, channels, taps, dtype=dtype, device=v.device)
        rows = max(1, (1 << 22) // max(1, units))  # output rows per step: bounds the (rows, units) temporaries
        flat_u = u.reshape(1, channels, taps, n)
        for start in range(0, d_out, rows):
            part = v[start : start + rows].reshape(-1, channels, taps, n)
            weight[start : start + rows] = (part * flat_u).sum(-1)
        bias = v @ beta + self.bias_weight.detach().to(dtype) @ self.bias_offsets.detach().to(dtype)
        if self.linear:
            return EffectiveLayer(weight.reshape(d_out, channels), None, bias, "linear")
        return EffectiveLayer(
            weight.reshape(d_out, channels, kh, kw),
            None,
            bias,
            "conv2d",
            stride=tuple(first.stride),  # type: ignore[arg-type]
            padding=tuple(first.padding),  # type: ignore[arg-type]
            dilation=tuple(first.dilation),  # type: ignore[arg-type]
        )
