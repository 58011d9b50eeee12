"""The pruned pair: two random layers that replace one target layer, and their effective weights.

A target layer ``y = W x + b`` (or a conv) is replaced by ``y' = second(relu(first(x)))`` whose weights are
random values times a 0/1 mask. After pruning, a pair is exactly linear in ``x`` (construction O, x >= 0;
construction L, x inside the box it was built for) or in ``(x+, x-)`` (construction I), so it equals an
:class:`EffectiveLayer` with weights computed from the pair's own tensors. That equality is the exact
per-layer check the verifier runs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.errors import ConstructionError

__all__ = ["CONSTRUCTIONS", "Construction", "EffectiveLayer", "PrunedPair"]

Construction = Literal["output_blocks", "input_blocks", "offset_blocks"]
#: construction name -> its letter in docs/design.md section 2 and in reports (L: linear over the layer's input box)
CONSTRUCTIONS: dict[str, str] = {"output_blocks": "O", "input_blocks": "I", "offset_blocks": "L"}


class EffectiveLayer(nn.Module):
    """``y = W+ x+ + W- x- + b`` with ``x+ = relu(x)``, ``x- = relu(-x)`` (``W-`` absent: ``y = W+ x + b``).

    Linear when ``kind == "linear"``; else a conv with the target's stride, padding and dilation.
    """

    weight_pos: torch.Tensor
    weight_neg: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(
        self,
        weight_pos: torch.Tensor,
        weight_neg: torch.Tensor | None,
        bias: torch.Tensor | None,
        kind: Literal["linear", "conv2d"],
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        self.kind = kind
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.register_buffer("weight_pos", weight_pos)
        self.register_buffer("weight_neg", weight_neg)
        self.register_buffer("bias", bias)

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_neg is None:
            return self._apply_weight(x, self.weight_pos, self.bias)
        return self._apply_weight(F.relu(x), self.weight_pos, self.bias) + self._apply_weight(
            F.relu(-x), self.weight_neg, None
        )


#: hidden activations computed at once by the kept-entries forward of an L conv pair
_HIDDEN_CHUNK = 1 << 20


def _tracing() -> bool:
    """True while torch traces or exports the module (the dense layers are then the graph to record)."""
    return bool(torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


class PrunedPair(nn.Module):
    """``second(relu(first(x)))``: the two pruned random layers standing for one target layer.

    ``first`` is an ``nn.Linear`` or an ``nn.Conv2d`` (the target's kernel, stride, padding, dilation) and
    ``second`` an ``nn.Linear`` or a 1x1 ``nn.Conv2d`` without bias. Their weights already hold
    ``source * mask``; pruned entries are exact zeros.

    Args:
        first: the first random layer (U, with bias beta or none).
        second: the second random layer (V).
        construction: ``"output_blocks"`` (O, da Cunha; needs x >= 0), ``"input_blocks"`` (I, Pensia) or
            ``"offset_blocks"`` (L: Pensia's input blocks with kept non-negative offsets; linear on its box).
    """

    def __init__(self, first: nn.Module, second: nn.Module, construction: Construction) -> None:
        super().__init__()
        if construction not in CONSTRUCTIONS:
            raise ConstructionError(f"unknown construction {construction!r}; expected one of {list(CONSTRUCTIONS)}")
        if not isinstance(first, nn.Linear | nn.Conv2d) or not isinstance(second, nn.Linear | nn.Conv2d):
            raise ConstructionError("a pruned pair is made of nn.Linear or nn.Conv2d layers")
        if second.bias is not None:
            raise ConstructionError("the second layer of a pruned pair (V) has no bias")
        if isinstance(first, nn.Conv2d) and isinstance(first.padding, str):
            raise ConstructionError(f"the first conv needs numeric padding, got {first.padding!r}")
        self.first = first
        self.second = second
        self.construction: Construction = construction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.construction == "offset_blocks" and not _tracing() and not hasattr(self.first, "weight_orig"):
            return self._forward_one_input_units(x)
        return self.second(F.relu(self.first(x)))

    def forward_with_margin(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pair(x), m)`` with ``m`` per input the least pre-activation of a kept hidden unit (one with a kept
        V entry): where ``m >= 0`` every ReLU is the identity and an O or L pair equals its effective layer."""
        if self.construction == "offset_blocks" and not hasattr(self.first, "weight_orig"):
            out, least = self._forward_one_input_units(x, track_margin=True)
            assert least is not None
            return out, least
        pre = self.first(x)
        v = self.second.weight
        kept = (v.reshape(v.shape[0], -1) != 0).any(0)
        least = pre[:, kept].flatten(1).amin(1) if bool(kept.any()) else torch.full_like(pre[:, 0, ...], torch.inf)
        return self.second(F.relu(pre)), least.reshape(x.shape[0], -1).amin(1)

    def _forward_one_input_units(self, x: torch.Tensor, track_margin: bool = False) -> Any:
        """The same network, computed over its kept entries only (construction L).

        Each hidden unit of L reads at most one input (one im2col column for a conv), so the first layer is
        a gather and an elementwise affine map, and units whose V column is pruned contribute nothing. The
        pruned entries are exact zeros, so this equals the dense forward up to the order of summation;
        tracing and export (ONNX) use the dense layers.
        """
        index, scale, offset, v = self._kept_units()
        if isinstance(self.first, nn.Linear):
            hidden = x[..., index] * scale + offset
            out = F.relu(hidden) @ v.T
            if track_margin:
                least = hidden.amin(-1) if index.numel() else torch.full(out.shape[:-1], torch.inf, dtype=x.dtype)
                return out, least.reshape(x.shape[0], -1).amin(1)
            return out
        conv = self.first
        assert isinstance(conv, nn.Conv2d)
        pad, dil, ker, stride = conv.padding, conv.dilation, conv.kernel_size, conv.stride
        assert not isinstance(pad, str)  # numeric padding (checked in __init__)
        height = (x.shape[-2] + 2 * pad[0] - dil[0] * (ker[0] - 1) - 1) // stride[0] + 1
        width = (x.shape[-1] + 2 * pad[1] - dil[1] * (ker[1] - 1) - 1) // stride[1] + 1
        # samples per step so that the hidden activations stay near _HIDDEN_CHUNK values (cache-sized work)
        step = max(1, _HIDDEN_CHUNK // max(1, index.numel() * height * width))
        outs, margins = [], []
        for start in range(0, x.shape[0], step):
            patches = F.unfold(x[start : start + step], ker, dil, pad, stride)  # (b, d_in, L)
            hidden = patches[:, index, :] * scale[:, None] + offset[:, None]
            outs.append(v @ F.relu(hidden))  # (b, d_out, L)
            if track_margin:
                empty = torch.full((hidden.shape[0],), torch.inf, dtype=x.dtype, device=x.device)
                margins.append(hidden.flatten(1).amin(1) if hidden.numel() else empty)
        out = torch.cat(outs).reshape(x.shape[0], -1, height, width)
        return (out, torch.cat(margins)) if track_margin else out

    def _kept_units(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input column, u, beta, V columns) of the hidden units that feed an output; cached per weights."""
        u = self.first.weight
        v = self.second.weight
        key = (u.data_ptr(), v.data_ptr(), u._version, v._version, u.dtype, u.device)
        if getattr(self, "_units_key", None) != key:
            with torch.no_grad():
                u_flat = u.reshape(u.shape[0], -1)
                v_flat = v.reshape(v.shape[0], -1)
                alive = torch.nonzero(v_flat.ne(0).any(0)).flatten()
                rows = u_flat[alive]
                index = rows.ne(0).to(torch.int8).argmax(1)  # 0 for a bias unit: its scale is 0
                scale = rows.gather(1, index[:, None]).flatten()
                bias = self.first.bias
                offset = torch.zeros_like(scale) if bias is None else bias[alive]
                self._units = (index, scale.clone(), offset.clone(), v_flat[:, alive].contiguous())
                self._units_key = key
        return self._units

    @torch.no_grad()
    def preactivation_min(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Per kept hidden unit (and position, for a conv), the least pre-activation over inputs in [lo, hi].

        Interval arithmetic on the masked first layer, in float64: ``U+ lo - U- hi + beta`` with U+ and U-
        the positive and negative parts of U. ``lo`` and ``hi`` have the pair's per-sample input shape.
        Units that are entirely pruned (no kept U entry and no kept beta) read +inf.
        """
        first = self.first
        u = first.weight.detach().double()
        lo, hi = lo.double().unsqueeze(0), hi.double().unsqueeze(0)
        beta = None if first.bias is None else first.bias.detach().double()
        if isinstance(first, nn.Linear):
            low = F.linear(lo, u.clamp(min=0)) - F.linear(hi, (-u).clamp(min=0))
            dims: tuple[int, ...] = ()
        else:
            conv = (first.stride, first.padding, first.dilation)  # numeric padding (checked in __init__)
            low = F.conv2d(lo, u.clamp(min=0), None, *conv) - F.conv2d(  # type: ignore[arg-type]
                hi,
                (-u).clamp(min=0),
                None,
                *conv,  # type: ignore[arg-type]
            )
            dims = (1, 1)
        if beta is not None:
            low = low + beta.reshape(-1, *dims)
        alive = (u.reshape(u.shape[0], -1) != 0).any(1)
        if beta is not None:
            alive |= beta != 0
        low = low[0]
        return torch.where(alive.reshape(-1, *dims), low, torch.full_like(low, float("inf")))

    def linear_on_box(self, lo: torch.Tensor, hi: torch.Tensor) -> bool:
        """True when every kept hidden unit's pre-activation is >= 0 for all inputs in [lo, hi]: the ReLU is
        then the identity on that box and the pair equals its effective layer there (O and L pairs)."""
        return bool((self.preactivation_min(lo, hi) >= 0).all())

    @property
    def kind(self) -> Literal["linear", "conv2d"]:
        return "linear" if isinstance(self.first, nn.Linear) else "conv2d"

    @torch.no_grad()
    def effective(self, dtype: torch.dtype = torch.float64) -> EffectiveLayer:
        """The effective-weights layer this pair equals, computed from its own (masked) tensors.

        For L the equality holds where every kept unit's pre-activation is >= 0, which
        :meth:`linear_on_box` checks for a box of inputs.

        Raises:
            ConstructionError: the pair's sparsity pattern does not have the structure of its construction
                (kept U or beta entries negative for O; a hidden unit of I or L fed by more than one input,
                a unit of I with a kept bias, a negative kept offset of L).
        """
        u = self.first.weight.detach().to(dtype)
        hidden = u.shape[0]
        u_flat = u.reshape(hidden, -1)
        beta = (
            self.first.bias.detach().to(dtype)
            if self.first.bias is not None
            else torch.zeros(hidden, dtype=dtype, device=u.device)
        )
        v = self.second.weight.detach().to(dtype).reshape(self.second.weight.shape[0], hidden)
        if self.construction == "output_blocks":
            if (u_flat < 0).any() or (beta < 0).any():
                raise ConstructionError("output-blocks pair has a kept negative entry in its first layer")
            w_pos, w_neg = v @ u_flat, None
        elif self.construction == "offset_blocks":
            if ((u_flat != 0).sum(1) > 1).any() or (beta < 0).any():
                raise ConstructionError("offset-blocks pair has a unit fed by several inputs or a negative offset")
            w_pos, w_neg = v @ u_flat, None
        else:
            fed = (u_flat != 0).sum(1)
            if (fed > 1).any() or ((fed == 1) & (beta != 0)).any():
                raise ConstructionError("input-blocks pair has a hidden unit fed by more than one input")
            w_pos, w_neg = v @ u_flat.clamp(min=0), v @ (-u_flat).clamp(min=0)
        bias = v @ beta.clamp(min=0)
        shape = (v.shape[0], *u.shape[1:])
        if self.kind == "linear":
            return EffectiveLayer(w_pos, w_neg, bias, "linear")
        conv = self.first
        assert isinstance(conv, nn.Conv2d)
        return EffectiveLayer(
            w_pos.reshape(shape),
            None if w_neg is None else w_neg.reshape(shape),
            bias,
            "conv2d",
            stride=tuple(conv.stride),  # type: ignore[arg-type]
            padding=tuple(conv.padding),  # type: ignore[arg-type]
            dilation=tuple(conv.dilation),  # type: ignore[arg-type]
        )
