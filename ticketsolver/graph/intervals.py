"""Sound interval bounds of every unit's input over an input box: interval arithmetic over a graph's nodes.

:func:`unit_input_intervals` runs the graph once, in node order like
:meth:`~ticketsolver.graph.network.GraphNetwork.forward`, on *interval values*: a pair of float64 tensors (lo, hi)
of batch size 1 that bound every element of the node's value for every input of the box (one sample of a batch; a
graph computes every sample alike, so the bounds hold sample by sample). Each node's rule is sound: whatever input
of the box the network runs, every element of every node's value lies in its interval. Values that do not depend on
the input (creation ops, masks, shapes) are computed exactly; token ids stay symbolic (only their shape is known,
and an embedding reads them). A node with no rule, or whose bound is NaN, is *unknown*, and so is everything
computed from it: the units it feeds get None.

Rules, by op (all in real arithmetic, then padded where float64 rounding could move the network's value off it):

* units: ``linear``/``conv`` as centre and radius, ``c' = W c + b``, ``r' = |W| r`` with the trained weights (a
  conv with its stride, padding, dilation and groups); ``embedding``: per output column the least and the largest
  value over the vocabulary's rows; ``tensor``: its value. Every unit's output interval is then widened by
  :data:`G_MARGIN_REL` and :data:`G_MARGIN_ABS`, so that the bounds also hold for g, whose units follow f's to
  about 1e-5 relative;
* monotone elementwise ops on the two ends (relu, relu6, hardtanh, sigmoid, tanh, exp, sqrt, erf; rsqrt and neg
  swap them; abs; gelu and silu, which fall to a minimum left of 0 and rise again, take that minimum when the
  interval holds its minimiser); ``pow`` by a scalar;
* add, sub, mul, div of intervals and Python scalars (products: the least and largest of the four end products;
  division by an interval only where it excludes 0);
* ops that move, select or repeat values (:data:`~ticketsolver.graph.ir.INDEX_OPS`), pools, means and sums: on each
  end, as they are monotone;
* layer_norm/group_norm (no affine terms in a captured graph): ``[-sqrt(m - 1), sqrt(m - 1)]``, ``m`` the elements
  normalised together (see :func:`_normalised`);
* softmax: per element ``e^lo_i / (e^lo_i + sum_j e^hi_j)`` to ``e^hi_i / (e^hi_i + sum_(j != i) e^lo_j)``,
  within [0, 1]; log_softmax: their logarithms;
* scaled_dot_product_attention: each output row is a convex combination of v's rows, so it lies between their
  least and largest value per column, whatever the scores, mask or causality;
* matmul/bmm of intervals as centre and radius, ``c = Ac Bc``, ``r = |Ac| Br + Ar |Bc| + Ar Br``;
* where/masked_fill with an input-independent mask, element by element (with any other mask: the hull).

One relation is kept besides the intervals, where it matters most: the rows of a LayerNorm's output (over the last
dimension), scaled and shifted per column and moved by ops that keep whole rows, have ``sum z = 0`` and
``sum z^2 <= m``; a Linear reading them is bounded through the norm of its rows as well (:func:`_sphere_linear`,
about sqrt(m) tighter than the interval bound), and keeps the tighter of the two.

A unit's input interval is then reduced to its *columns*: a Linear's last dimension, a convolution's channel
(dimension 1); an embedding reads a one-hot input and a tensor unit a constant 1, so neither gets one here.

>>> import torch
>>> from torch import nn
>>> from ticketsolver.graph.capture import capture_program
>>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU6(), nn.Linear(3, 1)).eval()
>>> program = torch.export.export(model, (torch.rand(2, 2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
>>> bounds = unit_input_intervals(capture_program(program, "mlp"), (0.0, 1.0))
>>> [b[0].tolist() for b in bounds[:1]], bool((bounds[1][0] >= 0).all() and (bounds[1][1] <= 6).all())
([[0.0, 0.0]], True)
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ticketsolver.graph.capture import GraphTarget
from ticketsolver.graph.ir import INDEX_OPS, GraphUnit, decode, replay_op

__all__ = ["G_MARGIN_ABS", "G_MARGIN_REL", "unit_input_intervals"]

_log = logging.getLogger(__name__)

#: every unit's output interval [lo, hi] is widened on both sides by
#: ``G_MARGIN_REL * (hi - lo) + G_MARGIN_REL * max(|lo|, |hi|) + G_MARGIN_ABS``: the pruned random network g
#: differs from the target f by about 1e-5 relative per unit, ten times less than this margin, so the bounds of f
#: (which the rest of the analysis propagates) hold for g too
G_MARGIN_REL = 1e-4
#: absolute part of the widening of a unit's output (a unit whose output is exactly 0 still gets a margin)
G_MARGIN_ABS = 1e-9
#: relative padding of the non-unit ops that round (sums, products, transcendental functions, normalisations): the
#: rules are exact in real arithmetic, and the network's float64 value of a sum of n terms is within about
#: n * 1.1e-16 of its magnitude (so this covers sums of up to ~1e6 terms, and a different summation order)
_ROUNDING = 1e-10

Bounds = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class _Sphere:
    """What a LayerNorm over the last dimension adds to an interval: the value is ``z * scale + shift`` row by row
    (scale and shift intervals of shape (m,), m the last dimension), where every row z has ``sum z = 0`` and
    ``sum z^2 <= m`` (see :func:`_normalised`). A Linear reading such rows is bounded by the norm of its rows
    (:func:`_sphere_linear`), which is tighter than the interval bound by about sqrt(m)."""

    m: int
    scale: _Box
    shift: _Box


@dataclass(frozen=True)
class _Box:
    """An interval value: every element of the node's value lies in [lo, hi] (float64, same shape, batch 1);
    ``sphere``, where known, what the rows of a LayerNorm's output satisfy besides."""

    lo: torch.Tensor
    hi: torch.Tensor
    sphere: _Sphere | None = None


@dataclass(frozen=True)
class _Tokens:
    """Token ids, kept symbolic: ``ids`` a placeholder of their shape; ``vocab`` bounds them ([0, vocab)) where
    they are the input's ids, moved or selected (None: they are valid indices, nothing more is known)."""

    ids: torch.Tensor
    vocab: int | None


class _Unknown:
    """A value the analysis cannot bound."""

    def __repr__(self) -> str:
        return "UNKNOWN"


_UNKNOWN = _Unknown()


class _Unbounded(Exception):
    """Raised by a rule that cannot bound its node (division by an interval holding 0, dropout in training)."""


def _box(lo: torch.Tensor, hi: torch.Tensor) -> _Box:
    lo, hi = torch.broadcast_tensors(lo.double(), hi.double())
    return _Box(lo, hi)


def _as_box(value: Any) -> _Box:
    """An interval of a box, an exact tensor or a number (a degenerate interval)."""
    if isinstance(value, _Box):
        return value
    if isinstance(value, torch.Tensor):
        return _box(value, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Unbounded(f"{type(value).__name__} is not an interval")
    t = torch.tensor(float(value), dtype=torch.float64)
    return _Box(t, t)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


def _pick(value: Any, side: str) -> Any:
    """``value`` with every interval replaced by its lower (``side="lo"``) or upper end."""
    if isinstance(value, _Box):
        return getattr(value, side)
    if isinstance(value, list | tuple):
        return [_pick(v, side) for v in value]
    if isinstance(value, dict):
        return {k: _pick(v, side) for k, v in value.items()}
    return value


def _join(lo: Any, hi: Any) -> Any:
    """Pair an op's results on the lower and on the upper ends back into intervals."""
    if isinstance(lo, torch.Tensor):
        return _box(lo, hi)
    if isinstance(lo, list | tuple):
        return [_join(a, b) for a, b in zip(lo, hi, strict=True)]
    return lo if lo == hi else _UNKNOWN


def _pad(box: _Box, rel: float = _ROUNDING, scale: torch.Tensor | None = None) -> _Box:
    """Widen by ``rel`` times ``scale`` (default: each end's own magnitude, so 0 and signs stay put)."""
    if scale is None:
        return _Box(box.lo - rel * box.lo.abs(), box.hi + rel * box.hi.abs())
    return _Box(box.lo - rel * scale, box.hi + rel * scale)


def _magnitude(box: _Box) -> torch.Tensor:
    return torch.maximum(box.lo.abs(), box.hi.abs())


def _centre_radius(box: _Box) -> tuple[torch.Tensor, torch.Tensor]:
    return (box.lo + box.hi) / 2, (box.hi - box.lo) / 2


# -- rules ------------------------------------------------------------------------------------------------------
Rule = Callable[[str, list[Any], dict[str, Any]], Any]

#: in-place ops the analysis runs out of place (the ends are shared between nodes)
_OUT_OF_PLACE = {"aten.relu_.default": "aten.relu.default", "aten.hardtanh_.default": "aten.hardtanh.default"}


def _fn(op: str) -> Callable[..., Any]:
    return replay_op(_OUT_OF_PLACE.get(op, op))


def _monotone(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """An op non-decreasing in each of its tensor arguments (and computing without rounding: moves, selections,
    clamps, maxima): run on the lower ends and on the upper ends. An op that moves whole rows of a LayerNorm's
    output keeps what they satisfy."""
    fn = _fn(op)
    value = _join(fn(*_pick(args, "lo"), **_pick(kwargs, "lo")), fn(*_pick(args, "hi"), **_pick(kwargs, "hi")))
    x = args[0] if args else None
    if (
        isinstance(value, _Box)
        and isinstance(x, _Box)
        and x.sphere is not None
        and op in INDEX_OPS
        and _keeps_rows(fn, args, kwargs, x)
    ):
        return _Box(value.lo, value.hi, x.sphere)
    return value


def _keeps_rows(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], x: _Box) -> bool:
    """Whether ``fn`` (applied to ``x``, its only interval argument) makes every row of its output (last
    dimension) one whole row of ``x``, in order: it is run on x's element numbers to see."""
    if any(isinstance(v, _Box) for v in _leaves((args[1:], kwargs))):
        return False
    m = x.lo.shape[-1]
    numbers = torch.arange(x.lo.numel(), dtype=torch.float64).reshape(x.lo.shape)
    out = fn(numbers, *args[1:], **kwargs)
    if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[-1] != m or out.numel() == 0:
        return False
    rows, columns = torch.div(out, m, rounding_mode="floor"), torch.remainder(out, m)
    in_order = bool((columns == torch.arange(m, dtype=torch.float64)).all())
    return in_order and bool((rows == rows[..., :1]).all())


def _row(value: Any, m: int) -> _Box | None:
    """A number, or a tensor or interval holding one value per column of an m-wide row, as an interval of shape
    (m,); None for anything else (a factor that differs from row to row)."""
    if _scalar(value) is not None:
        t = torch.full((m,), float(value), dtype=torch.float64)
        return _Box(t, t)
    if not isinstance(value, torch.Tensor | _Box):
        return None
    box = _as_box(value)
    if box.lo.numel() == 1:
        return _Box(box.lo.reshape(1).expand(m), box.hi.reshape(1).expand(m))
    if box.lo.dim() >= 1 and box.lo.shape[-1] == m and box.lo.numel() == m:
        return _Box(box.lo.reshape(m), box.hi.reshape(m))
    return None


def _increasing(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """A monotone elementwise function that rounds (sigmoid, tanh, exp, sqrt, erf): on the ends, padded."""
    return _pad(_monotone(op, args, kwargs))


def _decreasing(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """A non-increasing elementwise function (rsqrt): the ends swap."""
    box = _monotone(op, args, kwargs)
    return _pad(_Box(box.hi, box.lo))


def _neg(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = _as_box(args[0])
    return _Box(-x.hi, -x.lo)


def _abs_box(x: _Box) -> _Box:
    """|x|: 0 where the interval holds 0."""
    lo = torch.where(x.lo >= 0, x.lo, torch.where(x.hi <= 0, -x.hi, torch.zeros_like(x.lo)))
    return _Box(lo, _magnitude(x))


def _abs(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return _abs_box(_as_box(args[0]))


def _dropout(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    train = args[2] if len(args) > 2 else kwargs.get("train", False)
    if train and p:
        raise _Unbounded("dropout in training mode")
    return args[0]


def _max_pool_with_indices(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """max_pool2d_with_indices: the values as a max pool (monotone, exact); the indices are unknown."""
    values = _join(_fn(op)(*_pick(args, "lo"), **kwargs)[0], _fn(op)(*_pick(args, "hi"), **kwargs)[0])
    return [values, _UNKNOWN]


def _averaging(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Pools, means and sums: linear with non-negative weights, so monotone; padded by the rounding of a sum of
    their magnitudes, except that an average of values >= 0 stays >= 0 (and of values <= 0, <= 0)."""
    fn = _fn(op)
    x = _as_box(args[0])
    rest = args[1:]
    box = _join(fn(x.lo, *rest, **kwargs), fn(x.hi, *rest, **kwargs))
    assert isinstance(box, _Box)
    padded = _pad(box, scale=fn(_magnitude(x), *rest, **kwargs))
    all_nonneg = fn(x.lo.clamp(max=0.0), *rest, **kwargs) == 0  # every value averaged is >= 0
    all_nonpos = fn(x.hi.clamp(min=0.0), *rest, **kwargs) == 0
    lo = torch.where(all_nonneg, padded.lo.clamp(min=0.0), padded.lo)
    hi = torch.where(all_nonpos, padded.hi.clamp(max=0.0), padded.hi)
    return _Box(lo, hi)


@functools.cache
def _valley(key: str) -> tuple[float, float]:
    """(minimiser, minimum) of GELU (``gelu-none``, ``gelu-tanh``) or SiLU, found by ternary search: each falls
    from 0 (at -inf) to its minimum and rises from there on, with no other turn."""
    fn = _VALLEY_FUNCTIONS[key]
    a, b = -4.0, 0.0
    for _ in range(200):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        if fn(torch.tensor(m1, dtype=torch.float64)) <= fn(torch.tensor(m2, dtype=torch.float64)):
            b = m2
        else:
            a = m1
    x = (a + b) / 2
    return x, float(fn(torch.tensor(x, dtype=torch.float64)))


_VALLEY_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu-none": lambda t: F.gelu(t),
    "gelu-tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu,
}
#: how far the computed minimiser may be from the true one (far more than a ternary search's error)
_VALLEY_SLACK = 1e-3


def _valley_rule(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """gelu, silu: decreasing left of their minimiser x*, increasing right of it. An interval wholly on one side
    maps to its ends; one around x* (within :data:`_VALLEY_SLACK`) has the minimum as its lower end, and the
    larger of its ends' values as its upper end."""
    x = _as_box(args[0])
    if op == "aten.gelu.default":
        approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
        key = f"gelu-{approximate}"
    else:
        key = "silu"
    if key not in _VALLEY_FUNCTIONS:
        raise _Unbounded(f"unknown {op} variant {key}")
    fn = _VALLEY_FUNCTIONS[key]
    x_min, f_min = _valley(key)
    f_lo, f_hi = fn(x.lo), fn(x.hi)
    left = x.hi < x_min - _VALLEY_SLACK
    right = x.lo > x_min + _VALLEY_SLACK
    lo = torch.where(left, f_hi, torch.where(right, f_lo, torch.full_like(f_lo, f_min - 1e-12)))
    hi = torch.where(left, f_lo, torch.where(right, f_hi, torch.maximum(f_lo, f_hi)))
    return _pad(_Box(lo, hi))


def _scalar(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _add(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """a + alpha·b and a - alpha·b: each end from the matching (or, for -, the opposite) end."""
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    if _scalar(alpha) is None:
        raise _Unbounded("alpha is not a number")
    a, b = _as_box(args[0]), _as_box(args[1])
    subtract = op.startswith("aten.sub")
    flip = subtract != (alpha < 0)  # the upper end of b gives the lower end of the result
    fn = torch.sub if subtract else torch.add
    b_lo, b_hi = (b.hi, b.lo) if flip else (b.lo, b.hi)
    if alpha != 1:
        return _box(fn(a.lo, b_lo, alpha=alpha), fn(a.hi, b_hi, alpha=alpha))
    box = _box(fn(a.lo, b_lo), fn(a.hi, b_hi))
    if subtract:
        return box
    for x, other in ((args[0], args[1]), (args[1], args[0])):  # rows of a LayerNorm's output plus a row: shifted
        sphere = x.sphere if isinstance(x, _Box) else None
        term = None if sphere is None else _row(other, sphere.m)
        if sphere is not None and term is not None and box.lo.shape == x.lo.shape:
            shift = _box(sphere.shift.lo + term.lo, sphere.shift.hi + term.hi)
            return _Box(box.lo, box.hi, _Sphere(sphere.m, sphere.scale, shift))
    return box


def _products(a: _Box, b: _Box, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> _Box:
    """The least and the largest of fn at the four corners (fn monotone in each argument where it is defined)."""
    corners = [fn(a.lo, b.lo), fn(a.lo, b.hi), fn(a.hi, b.lo), fn(a.hi, b.hi)]
    lo, hi = corners[0], corners[0]
    for c in corners[1:]:
        lo, hi = torch.minimum(lo, c), torch.maximum(hi, c)
    return _box(lo, hi)


def _times(a: _Box, s: float) -> _Box:
    return _box(a.lo * s, a.hi * s) if s >= 0 else _box(a.hi * s, a.lo * s)


def _mul(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """a * b: by a number, on the ends (swapped if negative); of intervals, at the four corners. Rows of a
    LayerNorm's output times a per-column factor stay such rows (scale and shift times the factor)."""
    box: _Box | None = None
    for x, s in ((args[0], args[1]), (args[1], args[0])):
        scale = _scalar(s)
        if scale is not None:
            box = _times(_as_box(x), scale)
            break
    if box is None:
        box = _products(_as_box(args[0]), _as_box(args[1]), torch.mul)
    for x, other in ((args[0], args[1]), (args[1], args[0])):
        sphere = x.sphere if isinstance(x, _Box) else None
        factor = None if sphere is None else _row(other, sphere.m)
        if sphere is not None and factor is not None and box.lo.shape == x.lo.shape:
            times, shift = (_products(v, factor, torch.mul) for v in (sphere.scale, sphere.shift))
            return _Box(box.lo, box.hi, _Sphere(sphere.m, times, shift))
    return box


def _div(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """a / b: by a number, on the ends (swapped if negative); by an interval, at the four corners, only where
    every element's interval excludes 0 (a / b is then monotone in a and in b). A rounding mode (floor, trunc)
    is a non-decreasing function of the quotient and keeps that."""
    mode = kwargs.get("rounding_mode")
    a = _as_box(args[0])
    divisor = _scalar(args[1])
    if divisor is not None:
        if divisor == 0:
            raise _Unbounded("division by 0")
        lo, hi = torch.div(a.lo, divisor, rounding_mode=mode), torch.div(a.hi, divisor, rounding_mode=mode)
        return _box(lo, hi) if divisor > 0 else _box(hi, lo)
    b = _as_box(args[1])
    if not bool(((b.lo > 0) | (b.hi < 0)).all()):
        raise _Unbounded("division by an interval that holds 0")
    return _products(a, b, lambda x, y: torch.div(x, y, rounding_mode=mode))


def _pow(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """x ** p, p a number: odd powers increase; even powers are |x| ** p; negative powers need 0 outside the
    interval (they decrease on each side of it); fractional powers need x >= 0 (x > 0 when p < 0)."""
    x, p = _as_box(args[0]), _scalar(args[1])
    if p is None:
        raise _Unbounded("a power that is not a number")
    if p == 0:
        return _Box(torch.ones_like(x.lo), torch.ones_like(x.hi))
    integer = p.is_integer()
    if integer and int(p) % 2 == 0:
        x = _abs_box(x)
    elif not integer and not bool((x.lo >= 0).all()):
        raise _Unbounded("a fractional power of a value that may be negative")
    if p < 0:
        if not bool(((x.lo > 0) | (x.hi < 0)).all()):
            raise _Unbounded("a negative power of an interval that holds 0")
        return _pad(_box(x.hi**p, x.lo**p))
    return _pad(_box(x.lo**p, x.hi**p))


def _normalised(x: _Box, m: int) -> _Box:
    """Bounds of a normalised value z = (x - mean) / sqrt(var + eps) over a group of m elements.

    With the biased variance var = (1/m) sum_j (x_j - mean)^2: sum_j z_j = 0 and sum_j z_j^2 = m var / (var + eps)
    <= m. For one element i, sum_(j != i) z_j = -z_i, so by Cauchy-Schwarz z_i^2 = (sum_(j != i) z_j)^2 <=
    (m - 1) sum_(j != i) z_j^2 <= (m - 1)(m - z_i^2), i.e. m z_i^2 <= m (m - 1): |z_i| <= sqrt(m - 1), whatever x.
    """
    if not (bool(torch.isfinite(x.lo).all()) and bool(torch.isfinite(x.hi).all())):
        raise _Unbounded("normalisation of a value that may be infinite")
    bound = math.sqrt(max(m - 1, 0)) * (1 + _ROUNDING)
    return _Box(torch.full_like(x.lo, -bound), torch.full_like(x.lo, bound))


def _affine(z: _Box, weight: Any, bias: Any, shape: tuple[int, ...]) -> Any:
    """z * weight + bias (each optional, reshaped to ``shape`` to broadcast)."""
    out: Any = z
    if weight is not None:
        w = weight.reshape(shape) if isinstance(weight, torch.Tensor) else _reshape_box(_as_box(weight), shape)
        out = _mul("aten.mul.Tensor", [out, w], {})
    if bias is not None:
        b = bias.reshape(shape) if isinstance(bias, torch.Tensor) else _reshape_box(_as_box(bias), shape)
        out = _add("aten.add.Tensor", [out, b], {})
    return out


def _reshape_box(box: _Box, shape: tuple[int, ...]) -> _Box:
    return _Box(box.lo.reshape(shape), box.hi.reshape(shape))


def _layer_norm(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = _as_box(args[0])
    normalized_shape = [int(v) for v in args[1]]
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    bias = args[3] if len(args) > 3 else kwargs.get("bias")
    m = math.prod(normalized_shape)
    z = _normalised(x, m)
    if len(normalized_shape) == 1:
        one, zero = torch.ones(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
        z = _Box(z.lo, z.hi, _Sphere(m, _Box(one, one), _Box(zero, zero)))
    return _affine(z, weight, bias, tuple(normalized_shape))


def _group_norm(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = _as_box(args[0])
    groups = int(args[1])
    weight = args[2] if len(args) > 2 else kwargs.get("weight")
    bias = args[3] if len(args) > 3 else kwargs.get("bias")
    z = _normalised(x, x.lo[0].numel() // groups)
    return _affine(z, weight, bias, (-1,) + (1,) * (x.lo.dim() - 2))


def _softmax_bounds(x: _Box, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax is increasing in its own input and decreasing in the others:
    ``e^lo_i / (e^lo_i + sum_j e^hi_j) <= softmax_i <= e^hi_i / (e^hi_i + sum_(j != i) e^lo_j)`` (the lower one
    counts e^hi_i in the sum as well, which only lowers it). NaN (all -inf) falls back to [0, 1]."""
    lo, hi = x.lo, x.hi
    lower = torch.exp(lo - torch.logaddexp(lo, torch.logsumexp(hi, dim, keepdim=True)))
    shift = lo.amax(dim, keepdim=True)
    terms = torch.exp(lo - shift)
    total = terms.sum(dim, keepdim=True)
    others = (total - terms - 1e-12 * total).clamp(min=0.0)  # sum_(j != i) e^(lo_j - shift), rounded down
    upper = 1 / (1 + others * torch.exp(shift - hi))
    lower = torch.nan_to_num(lower * (1 - _ROUNDING), nan=0.0).clamp(0.0, 1.0)
    upper = torch.nan_to_num(upper * (1 + _ROUNDING), nan=1.0).clamp(0.0, 1.0)
    return lower, upper


def _softmax(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = _as_box(args[0])
    return _box(*_softmax_bounds(x, int(args[1] if len(args) > 1 else kwargs["dim"])))


def _log_softmax(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """log_softmax = log of the softmax bounds (<= 0), padded by the rounding of x_i - logsumexp(x)."""
    x = _as_box(args[0])
    dim = int(args[1] if len(args) > 1 else kwargs["dim"])
    lower, upper = _softmax_bounds(x, dim)
    scale = 1 + _magnitude(x) + torch.logsumexp(_magnitude(x), dim, keepdim=True)
    return _pad(_box(torch.log(lower), torch.log(upper).clamp(max=0.0)), scale=scale)


def _attention(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal, scale=, enable_gqa=): softmax weights are
    >= 0 and sum to 1 over the keys, so every output row lies between the least and the largest of v's rows
    (dimension -2) per column, whatever q, k, the mask or causality. Dropout is not a convex combination."""
    dropout_p = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
    if dropout_p:
        raise _Unbounded("attention with dropout")
    q, v = _as_box(args[0]), _as_box(args[2])
    lo, hi = v.lo.amin(-2, keepdim=True), v.hi.amax(-2, keepdim=True)
    if kwargs.get("enable_gqa") and lo.dim() >= 3 and q.lo.dim() >= 3 and lo.shape[-3] != q.lo.shape[-3]:
        repeats = q.lo.shape[-3] // lo.shape[-3]
        lo, hi = lo.repeat_interleave(repeats, -3), hi.repeat_interleave(repeats, -3)
    shape = (*torch.broadcast_shapes(q.lo.shape[:-2], lo.shape[:-2]), q.lo.shape[-2], v.lo.shape[-1])
    box = _Box(lo.expand(shape), hi.expand(shape))
    return _pad(box, scale=_magnitude(box))


def _matmul(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """A B of intervals as centre and radius: A B - Ac Bc = Ac (B - Bc) + (A - Ac) Bc + (A - Ac)(B - Bc), each term
    bounded by |Ac| Br, Ar |Bc|, Ar Br; padded by the rounding of |A| |B|."""
    fn = _fn(op)
    ac, ar = _centre_radius(_as_box(args[0]))
    bc, br = _centre_radius(_as_box(args[1]))
    centre = fn(ac, bc)
    radius = fn(ac.abs(), br) + fn(ar, bc.abs()) + fn(ar, br)
    scale = fn(ac.abs(), bc.abs()) + radius
    return _pad(_box(centre - radius, centre + radius), scale=scale)


def _where(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """where(cond, a, b) with an exact condition: element by element; otherwise the hull of a and b."""
    cond, a, b = args[0], _as_box(args[1]), _as_box(args[2])
    if isinstance(cond, torch.Tensor):
        return _box(torch.where(cond, a.lo, b.lo), torch.where(cond, a.hi, b.hi))
    return _box(torch.minimum(a.lo, b.lo), torch.maximum(a.hi, b.hi))


def _masked_fill(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x, mask, value = _as_box(args[0]), args[1], _scalar(args[2])
    if value is None:
        raise _Unbounded("masked_fill with a value that is not a number")
    if isinstance(mask, torch.Tensor):
        return _box(x.lo.masked_fill(mask, value), x.hi.masked_fill(mask, value))
    return _box(x.lo.clamp(max=value), x.hi.clamp(min=value))


def _cast(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """_to_copy, to, type_as: a cast to a float or an integer type is non-decreasing; to bool it is not."""
    value = _monotone(op, args, kwargs)
    if not isinstance(value, _Box) or value.lo.dtype == torch.bool:
        raise _Unbounded("a cast to bool")
    return value


def _sym_size(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    shape = x.lo.shape if isinstance(x, _Box) else x.ids.shape if isinstance(x, _Tokens) else x.shape
    return int(shape[int(args[1])])


_RULES: dict[str, Rule] = {op: _monotone for op in INDEX_OPS}
_RULES.update(
    {
        "aten.dropout.default": _dropout,
        "aten.sym_size.int": _sym_size,
        # exact monotone ops: clamps, maxima, masks of the triangle
        "aten.relu.default": _monotone,
        "aten.relu_.default": _monotone,
        "aten.relu6.default": _monotone,
        "aten.hardtanh.default": _monotone,
        "aten.hardtanh_.default": _monotone,
        "aten.max_pool2d.default": _monotone,
        "aten.max_pool1d.default": _monotone,
        "aten.max_pool2d_with_indices.default": _max_pool_with_indices,
        "aten.tril.default": _monotone,
        "aten.triu.default": _monotone,
        "aten.neg.default": _neg,
        "aten.abs.default": _abs,
        # monotone, rounding
        "aten.sigmoid.default": _increasing,
        "aten.tanh.default": _increasing,
        "aten.exp.default": _increasing,
        "aten.sqrt.default": _increasing,
        "aten.erf.default": _increasing,
        "aten.rsqrt.default": _decreasing,
        "aten.gelu.default": _valley_rule,
        "aten.silu.default": _valley_rule,
        "aten.pow.Tensor_Scalar": _pow,
        # averages
        "aten.avg_pool2d.default": _averaging,
        "aten.avg_pool1d.default": _averaging,
        "aten.adaptive_avg_pool2d.default": _averaging,
        "aten.adaptive_avg_pool1d.default": _averaging,
        "aten.mean.dim": _averaging,
        "aten.mean.default": _averaging,
        "aten.sum.dim_IntList": _averaging,
        # arithmetic
        "aten.add.Tensor": _add,
        "aten.add.Scalar": _add,
        "aten.sub.Tensor": _add,
        "aten.sub.Scalar": _add,
        "aten.mul.Tensor": _mul,
        "aten.mul.Scalar": _mul,
        "aten.div.Tensor": _div,
        "aten.div.Scalar": _div,
        "aten.matmul.default": _matmul,
        "aten.bmm.default": _matmul,
        # normalisation, attention
        "aten.layer_norm.default": _layer_norm,
        "aten.group_norm.default": _group_norm,
        "aten.softmax.int": _softmax,
        "aten._softmax.default": _softmax,
        "aten.log_softmax.int": _log_softmax,
        "aten._log_softmax.default": _log_softmax,
        "aten.scaled_dot_product_attention.default": _attention,
        # masks, casts
        "aten.where.self": _where,
        "aten.masked_fill.Scalar": _masked_fill,
        "aten._to_copy.default": _cast,
        "aten.to.dtype": _cast,
        "aten.type_as.default": _cast,
    }
)
#: ops that may read token ids: they move or select them (or read their shape)
_TOKEN_OPS = (INDEX_OPS - {"operator.getitem"}) | {"aten.sym_size.int"}


def _checked(value: Any) -> Any:
    """A NaN end makes the interval unknown; infinite ends stay (a -inf mask), units turn them into None."""
    if isinstance(value, _Box):
        return _UNKNOWN if bool(torch.isnan(value.lo).any() or torch.isnan(value.hi).any()) else value
    if isinstance(value, list | tuple):
        return [_checked(v) for v in value]
    return value


def _on_tokens(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """An op that moves or selects token ids: run on their placeholders, the result still ids."""
    if op == "aten.sym_size.int":
        return _sym_size(op, args, kwargs)
    tokens = [v for v in _leaves((args, kwargs)) if isinstance(v, _Tokens)]
    exact = any(isinstance(v, torch.Tensor | _Box) for v in _leaves((args, kwargs)))
    vocabs = {t.vocab for t in tokens}
    vocab = vocabs.pop() if len(vocabs) == 1 and not exact else None

    def placeholder(value: Any) -> Any:
        if isinstance(value, _Tokens):
            return value.ids
        if isinstance(value, _Box):
            raise _Unbounded("ids mixed with float values")
        if isinstance(value, list | tuple):
            return [placeholder(v) for v in value]
        return value

    result = _fn(op)(*placeholder(args), **{k: placeholder(v) for k, v in kwargs.items()})

    def wrap(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return _Tokens(value, vocab)
        if isinstance(value, list | tuple):
            return [wrap(v) for v in value]
        return value

    return wrap(result)


def _node_value(op: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """The interval value of a replayed op's node."""
    if op == "operator.getitem" and isinstance(args[0], list | tuple):
        return args[0][args[1]]
    leaves = list(_leaves((args, kwargs)))
    if any(v is _UNKNOWN for v in leaves):
        return _UNKNOWN
    if not any(isinstance(v, _Box | _Tokens) for v in leaves):
        return replay_op(op)(*args, **kwargs)  # independent of the input: exact
    try:
        if any(isinstance(v, _Tokens) for v in leaves):
            return _on_tokens(op, args, kwargs) if op in _TOKEN_OPS else _UNKNOWN
        rule = _RULES.get(op)
        if rule is None:
            _log.debug("no interval rule for %s", op)
            return _UNKNOWN
        return _checked(rule(op, args, kwargs))
    except _Unbounded as reason:
        _log.debug("%s: unbounded (%s)", op, reason)
        return _UNKNOWN
    except (RuntimeError, ValueError, TypeError, IndexError) as error:  # an op called in a form no rule expects
        _log.debug("%s: no bound (%s)", op, error)
        return _UNKNOWN


# -- units ------------------------------------------------------------------------------------------------------
def _widen(box: _Box) -> _Box:
    """A unit's output interval, widened to hold g's output as well (:data:`G_MARGIN_REL`)."""
    margin = G_MARGIN_REL * (box.hi - box.lo) + G_MARGIN_REL * _magnitude(box) + G_MARGIN_ABS
    return _Box(box.lo - margin, box.hi + margin)


def _unit_value(unit: GraphUnit, tensors: dict[str, torch.Tensor], x: Any) -> Any:
    """The interval of a unit's output (before widening) given its input's value."""
    weight = tensors["weight"].double()
    bias = tensors.get("bias")
    bias = None if bias is None else bias.double()
    if unit.kind == "tensor":
        return _Box(weight, weight)
    if x is _UNKNOWN or x is None:
        return _UNKNOWN
    if unit.kind == "embedding":
        if isinstance(x, torch.Tensor):  # exact ids
            value = F.embedding(x, weight) + (0 if bias is None else bias)
            return _Box(value, value)
        if isinstance(x, _Tokens):
            shape = x.ids.shape
            rows = weight if x.vocab is None else weight[: x.vocab]
        else:  # ids from a float interval: any row
            shape = _as_box(x).lo.shape
            rows = weight
        lo, hi = rows.amin(0), rows.amax(0)
        if bias is not None:
            lo, hi = lo + bias, hi + bias
        full = (*shape, weight.shape[1])
        return _Box(lo.expand(full), hi.expand(full))
    if isinstance(x, _Tokens):
        return _UNKNOWN
    centre, radius = _centre_radius(_as_box(x))
    if unit.kind == "linear":
        c, r = F.linear(centre, weight, bias), F.linear(radius, weight.abs())
        sphere = x.sphere if isinstance(x, _Box) else None
        if sphere is not None and sphere.m == weight.shape[1]:
            lo, hi = _sphere_linear(sphere, weight, bias)
            return _box(torch.maximum(c - r, lo), torch.minimum(c + r, hi))
    else:
        conv = F.conv1d if unit.dims == 1 else F.conv2d
        geometry = (unit.stride, unit.padding, unit.dilation, unit.groups)
        c, r = conv(centre, weight, bias, *geometry), conv(radius, weight.abs(), None, *geometry)  # type: ignore[operator]
    return _box(c - r, c + r)


def _sphere_linear(sphere: _Sphere, weight: torch.Tensor, bias: torch.Tensor | None) -> Bounds:
    """Bounds (out,) of ``W (z * s + t) + b`` over rows z with ``sum z = 0``, ``sum z^2 <= m``, s and t intervals.

    With s = sc + d (|d| <= sr): ``W (z * s + t) = (W diag sc) z + W (t + z * d)``. For a row a of W diag sc,
    ``a . z = (a - mean(a)) . z`` (as sum z = 0) lies within ``sqrt(m) ||a - mean(a)||`` (Cauchy-Schwarz); the
    rest is an interval, ``t + z * d`` within ``t -+ sqrt(m - 1) sr`` elementwise, taken through W as centre and
    radius. Padded by the rounding of the sum (|a| times sqrt(m))."""
    m = sphere.m
    sc, sr = _centre_radius(sphere.scale)
    a = weight * sc
    norm = (a - a.mean(1, keepdim=True)).norm(dim=1) * math.sqrt(m)
    norm = norm + _ROUNDING * a.abs().sum(1) * math.sqrt(m)
    slack = math.sqrt(max(m - 1, 0)) * (1 + _ROUNDING) * sr
    tc, tr = _centre_radius(_box(sphere.shift.lo - slack, sphere.shift.hi + slack))
    c = F.linear(tc, weight, bias)
    r = F.linear(tr, weight.abs()) + norm
    return c - r, c + r


def _columns(unit: GraphUnit, x: Any) -> Bounds | None:
    """A linear or conv unit's input interval reduced to its columns (last dimension / channels); None where it is
    unknown or not finite, and for embedding and tensor units."""
    if unit.kind in ("embedding", "tensor") or x is None or x is _UNKNOWN or isinstance(x, _Tokens):
        return None
    box = _as_box(x)
    if unit.kind == "linear":
        lo = box.lo.reshape(-1, box.lo.shape[-1]).amin(0)
        hi = box.hi.reshape(-1, box.hi.shape[-1]).amax(0)
    else:
        channels = box.lo.shape[1]
        lo = box.lo.transpose(0, 1).reshape(channels, -1).amin(1)
        hi = box.hi.transpose(0, 1).reshape(channels, -1).amax(1)
    if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
        return None
    return lo.clone(), hi.clone()


def _input_value(target: GraphTarget, box: tuple[float, float] | None) -> Any:
    spec = target.spec
    shape = (1, *spec.input_shape)
    if spec.tokens:
        return _Tokens(torch.zeros(shape, dtype=torch.int64), spec.vocab)
    if box is None or not all(math.isfinite(v) for v in box):
        return _UNKNOWN
    lo, hi = float(box[0]), float(box[1])
    if lo > hi:
        raise ValueError(f"input box ({lo}, {hi}) is empty")
    return _Box(torch.full(shape, lo, dtype=torch.float64), torch.full(shape, hi, dtype=torch.float64))


def unit_input_intervals(target: GraphTarget, box: tuple[float, float] | None) -> list[Bounds | None]:
    """Per unit: (lo, hi) float64 bounds of the unit's input per column that hold for EVERY input in the box (float
    inputs: every element in [box[0], box[1]]; token inputs (spec.tokens): any ids in [0, vocab)), or None where the
    analysis cannot bound it (an op without a rule upstream, or a non-finite bound).

    Column = for a linear unit the last dimension (shape (d_in,)), for a conv unit the input channel (shape
    (C_in,)); embedding and tensor units: None (their inputs are one-hot / constant 1, handled elsewhere).
    The bounds hold for the target f and, through the widening of every unit's output (:data:`G_MARGIN_REL`),
    for a pruned random network g that follows f to about 1e-5 relative per unit.

    Raises:
        ValueError: ``box[0] > box[1]``.
    """
    spec = target.spec
    device = torch.device("cpu")
    out: list[Bounds | None] = [None] * len(spec.units)
    env: dict[str, Any] = {}
    with torch.no_grad():
        for node in spec.nodes:
            name, op = node["name"], node["op"]
            if op == "input":
                env[name] = _input_value(target, box)
                continue
            args = decode(node.get("args", []), env, device, torch.float64)
            if op == "unit":
                k = node["unit"]
                unit = spec.units[k]
                x = args[0] if args else None
                out[k] = _columns(unit, x)
                value = _unit_value(unit, target.tensors[k], x)
                env[name] = _widen(value) if isinstance(value, _Box) else value
                env[name] = _checked(env[name])
                continue
            kwargs = {key: decode(v, env, device, torch.float64) for key, v in node.get("kwargs", {}).items()}
            if "device" in kwargs:
                kwargs["device"] = device
            env[name] = _node_value(op, args, kwargs)
    return out
