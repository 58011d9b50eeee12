"""An L conv pair held compactly: its first layer a grouped conv of U's block diagonal, U never whole.

Construction L keeps only U's block diagonal: hidden unit (j, t) reads input entry j = (c, a, b) (channel c, kernel tap
(a, b)) alone, with weight u_(j,t) = U[(j, t), j]. The dense first conv (hidden x c_in x kh x kw) is therefore the
grouped conv with one group per input channel c whose kh·kw·n output channels (tap, t) each hold a kernel that is
zero but at their own tap: exactly the same network, without the dense U (a ResNet-18 at n = 30 has 2.8e9 entries of
U, of which 945,450 can be kept). The bias block's units are fed by nothing: ``relu(beta_b) = beta_b``, so they add
the constant ``V_b relu(beta_b)`` to every output position, computed from the random values on every call (no
trained value is stored, and an export keeps the computation).

:class:`OffsetConvPair` has the interface the graph verifier and the effective-weights network use of a
:class:`~ticketsolver.construction.pair.PrunedPair` (``construction``, ``kind``, ``forward_with_margin``,
``effective``), and runs its hidden units chunk by chunk over input channels so that the hidden activations of a
batch stay near :data:`HIDDEN_CHUNK` values however wide the pair is.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.layout import PairLayout
from ticketsolver.construction.pair import Construction, EffectiveLayer, _tracing
from ticketsolver.errors import ConstructionError

__all__ = ["HIDDEN_CHUNK", "OffsetConvPair"]

#: hidden activations (batch x units x positions) computed at once; the sum over chunks is the same network
HIDDEN_CHUNK = 1 << 24


def _frozen(values: np.ndarray | torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(np.asarray(values, dtype=np.float32)).clone(), requires_grad=False)


class OffsetConvPair(nn.Module):
    """``second(relu(first(x))) + V_b relu(beta_b)``: an L conv pair with U held as its block diagonal.

    Attributes:
        first: ``nn.Conv2d(c_in, d_in·n, (kh, kw), groups=c_in)`` with bias beta (input blocks); the weight of unit
            (c, tap, t) is u_(j,t) at its tap, 0 elsewhere.
        second: 1x1 ``nn.Conv2d(d_in·n, d_out)`` without bias: V's input-block columns.
        bias_offsets: (bias_units,) the bias block's offsets beta_b (>= 0).
        bias_weight: (d_out, bias_units) V's bias-block columns.
        n: units per input entry.
    """

    construction: Construction = "offset_blocks"

    def __init__(
        self, first: nn.Conv2d, second: nn.Conv2d, bias_offsets: nn.Parameter, bias_weight: nn.Parameter, n: int
    ) -> None:
        super().__init__()
        if first.groups != first.in_channels or first.bias is None or second.bias is not None:
            raise ConstructionError("an offset conv pair's first layer is a biased per-channel grouped conv")
        self.first, self.second, self.n = first, second, int(n)
        self.bias_offsets, self.bias_weight = bias_offsets, bias_weight

    @staticmethod
    def holds(layout: object) -> bool:
        """Whether ``layout`` is a pair this module can hold: construction L of a conv."""
        return isinstance(layout, PairLayout) and layout.construction == "offset_blocks" and layout.conv is not None

    @staticmethod
    def grouped(layout: PairLayout, diagonal: np.ndarray) -> np.ndarray:
        """U's block diagonal (d_in, n) (values or a mask) laid out as the grouped conv's weight (d_in·n, 1, kh, kw):
        unit (c, tap, t) holds entry [(c, tap), t] at its own tap, zero (False) at the others."""
        conv = layout.conv
        assert conv is not None
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
    def from_held(cls, layout: PairLayout, held: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> OffsetConvPair:
        """The pruned pair from its held tensors and masks (:meth:`PairLayout.held_tensors`, ``mask_shapes``)."""
        if not cls.holds(layout):
            raise ConstructionError(f"pair {layout.pair}: an offset conv pair is construction L of a conv")
        conv = layout.conv
        assert conv is not None
        channels, units = conv.in_channels, layout.d_in * layout.n
        first = nn.Conv2d(channels, units, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=channels)
        second = nn.Conv2d(units, layout.d_out, 1, bias=False)
        pruned = {
            name: _frozen(np.where(mask, source, np.zeros((), dtype=source.dtype)))
            for name, _, source, mask in cls.slots(layout, held, masks)
        }
        first.weight, first.bias, second.weight = pruned["first.weight"], pruned["first.bias"], pruned["second.weight"]
        return cls(first, second, pruned["bias_offsets"], pruned["bias_weight"], layout.n).eval()

    @property
    def kind(self) -> Literal["conv2d"]:
        return "conv2d"

    @property
    def units(self) -> int:
        return int(self.first.out_channels)

    def _constant(self) -> torch.Tensor:
        """The bias block's output ``V_b relu(beta_b)`` (d_out,), from the random values."""
        return self.bias_weight @ torch.relu(self.bias_offsets)

    def _channel_chunks(self, x: torch.Tensor) -> list[tuple[int, int]]:
        """Input-channel ranges whose hidden activations for ``x`` stay near HIDDEN_CHUNK values (one while traced)."""
        channels = int(self.first.in_channels)
        if _tracing():
            return [(0, channels)]
        per_channel = x.shape[0] * (self.units // channels) * x.shape[-2] * x.shape[-1]
        step = max(1, HIDDEN_CHUNK // max(1, per_channel))
        return [(c, min(channels, c + step)) for c in range(0, channels, step)]

    def _hidden(self, x: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, slice]:
        """Pre-activations of the units of input channels [c0, c1) and their slice of the hidden units."""
        first = self.first
        per = self.units // int(first.in_channels)
        part = slice(c0 * per, c1 * per)
        assert first.bias is not None
        hidden = F.conv2d(
            x[:, c0:c1],
            first.weight[part],
            first.bias[part],
            first.stride,
            first.padding,  # type: ignore[arg-type]  # numeric (built so)
            first.dilation,
            c1 - c0,
        )
        return hidden, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, track_margin=False)[0]

    def forward_with_margin(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pair(x), m)`` with ``m`` per input the least pre-activation of a kept hidden unit (one with a kept V
        entry, the bias block's included: their pre-activation is beta_b >= 0): where ``m >= 0`` every ReLU is the
        identity and the pair equals its effective layer."""
        out, least = self._run(x, track_margin=True)
        assert least is not None
        return out, least

    def _run(self, x: torch.Tensor, track_margin: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        v = self.second.weight
        kept = v.reshape(v.shape[0], -1).ne(0).any(0) if track_margin else None
        out: torch.Tensor | None = None
        least = torch.full((x.shape[0],), torch.inf, dtype=x.dtype, device=x.device) if track_margin else None
        for c0, c1 in self._channel_chunks(x):
            hidden, part = self._hidden(x, c0, c1)
            term = F.conv2d(F.relu(hidden), v[:, part])
            out = term if out is None else out + term
            if kept is not None and least is not None and bool(kept[part].any()):
                least = torch.minimum(least, hidden[:, kept[part]].flatten(1).amin(1))
        assert out is not None
        if least is not None:  # the bias block's kept units: their pre-activation is beta_b on every input
            kept_bias = self.bias_offsets[self.bias_weight.ne(0).any(0)]
            if kept_bias.numel():
                least = torch.minimum(least, kept_bias.min().to(least.dtype))
        return out + self._constant()[None, :, None, None], least

    @torch.no_grad()
    def effective(self, dtype: torch.dtype = torch.float64) -> EffectiveLayer:
        """The effective conv this pair equals where its units are linear: ``W[i, c, a, b] = sum_t V[i, (c, a, b, t)]
        u_(c, a, b, t)`` and ``b_i = V relu(beta)`` over every unit, input blocks and bias block.

        Raises:
            ConstructionError: a unit reads more than its own tap, or a kept offset is negative.
        """
        first = self.first
        channels, units = int(first.in_channels), self.units
        kh, kw = first.kernel_size
        taps = kh * kw
        n = units // (channels * taps)
        w = first.weight.detach().to(dtype).reshape(channels, taps, n, taps)
        u = w.diagonal(dim1=1, dim2=3).permute(0, 2, 1)  # (channels, taps, n): unit (c, tap, t)'s own tap
        assert first.bias is not None
        beta = first.bias.detach().to(dtype)
        if bool((w.abs().sum(-1) != u.abs()).any()) or bool((beta < 0).any()):
            raise ConstructionError("offset conv pair has a unit fed by several taps or a negative offset")
        if bool((self.bias_offsets < 0).any()):
            raise ConstructionError("offset conv pair has a negative offset in its bias block")
        v = self.second.weight.detach().to(dtype).reshape(-1, units)
        d_out = v.shape[0]
        weight = torch.empty(d_out, channels, taps, dtype=dtype, device=v.device)
        rows = max(1, (1 << 22) // max(1, units))  # output rows per step: bounds the (rows, units) temporaries
        flat_u = u.reshape(1, channels, taps, n)
        for start in range(0, d_out, rows):
            part = v[start : start + rows].reshape(-1, channels, taps, n)
            weight[start : start + rows] = (part * flat_u).sum(-1)
        bias = v @ beta + self.bias_weight.detach().to(dtype) @ self.bias_offsets.detach().to(dtype)
        return EffectiveLayer(
            weight.reshape(d_out, channels, kh, kw),
            None,
            bias,
            "conv2d",
            stride=tuple(first.stride),  # type: ignore[arg-type]
            padding=tuple(first.padding),  # type: ignore[arg-type]
            dilation=tuple(first.dilation),  # type: ignore[arg-type]
        )
