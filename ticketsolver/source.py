"""The random source: every random tensor of a ticket, regenerated bit-identically on any machine.

Values come from NumPy's counter-based Philox4x64-10 generator, keyed by (seed, pair, tensor, draw): no
state is carried between tensors, so any tensor of any draw can be produced alone, in any order, on any
machine. A tensor follows one of four laws, drawn in float64 and rounded once to float32 (which can round a
uniform value just below scale up to scale itself): ``symmetric``, uniform on [-scale, scale] (every weight
tensor of a construction), ``nonnegative``, uniform on [0, scale] (the offsets of construction L, see
construction/offset_blocks.py), and the two initialisations of learned-mask networks (edge-popup, IteRand):
``signed_constant``, ±scale with equal probability, and ``normal``, Gaussian with standard deviation scale.
The float32 value is what the network holds, and what the solver sees (upcast to float64, exactly).

An Erdős–Rényi sparse source (Gadhikar et al. 2023) also draws, per random tensor, which entries *exist*
(:meth:`RandomSource.er_mask`), from a stream of its own: tensor ids offset by :data:`ER_TENSOR_OFFSET`, so an
ER mask never shares a stream with any tensor's values, and always draw 0, so re-randomisation redraws values,
never the ER mask. The layout is docs/design.md section 3.

Philox is counter-based, so a value can be produced without the ones before it: value k of a stream is word k % 4 of
the block computed at counter k // 4 + 1. :meth:`RandomSource.values_at` (and :meth:`RandomSource.er_mask_at`) compute
just the blocks holding the values asked for (Philox4x64-10 in vectorised NumPy), bit-identical to the entries of the
whole tensor; construction L takes the diagonal of its U, a d_in-th of U, that way. Whole tensors are generated in
chunks of :data:`GENERATION_CHUNK` values, so the float64 temporaries of a large tensor stay small.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ticketsolver.errors import ConfigError

__all__ = [
    "ER_TENSOR_OFFSET",
    "GENERATION_CHUNK",
    "LAWS",
    "RNG_LAYOUT",
    "TENSOR_IDS",
    "UNIFORM_LAWS",
    "Law",
    "RandomSource",
    "philox_words",
]

#: a tensor's law: uniform on [-scale, scale] or on [0, scale]; ±scale; Gaussian of standard deviation scale
Law = Literal["symmetric", "nonnegative", "signed_constant", "normal"]
LAWS: tuple[str, ...] = ("symmetric", "nonnegative", "signed_constant", "normal")

#: tensor name -> id in the stream key: a pair's U, beta, V; a learned-mask network's own layer W (and bias b)
TENSOR_IDS: dict[str, int] = {"U": 0, "beta": 1, "V": 2, "W": 3, "b": 4}
#: added to a tensor's id in the key of its Erdős–Rényi mask: the ER stream of U is tensor id 256, of V 258
ER_TENSOR_OFFSET = 256

#: recorded in every ticket so that anyone can regenerate the values without ticketsolver
RNG_LAYOUT: dict[str, str] = {
    "algorithm": "numpy.random.Philox (Philox4x64-10) with counter 0; NumPy increments the counter before each "
    "block, so the first block is generated at counter 1",
    "key": "[seed, pair * 2**32 + tensor * 2**16 + draw] as two uint64 words; tensor ids U=0, beta=1, V=2, W=3, b=4",
    "values": "r = Generator(Philox(key=key)).random(size, dtype=float64); "
    "law symmetric: float32(scale * (2 * r - 1)); law nonnegative: float32(scale * r); "
    "law signed_constant: float32(scale * (1 if r >= 0.5 else -1)); "
    "law normal: float32(scale * Generator(Philox(key=key)).standard_normal(size, dtype=float64)); C order",
    "er_mask": "an Erdos-Renyi sparse tensor's existing entries: key [seed, pair * 2**32 + (256 + tensor) * 2**16] "
    "(draw 0 always: redraws never change it), r = Generator(Philox(key=key)).random(size, dtype=float64), C order; "
    "the entry exists iff r < density (the tensor's density in the pair's densities); values outside are 0",
}


#: values generated per step when a whole tensor is drawn: the stream is the same in any chunking (one uint64 per
#: float64), and the float64 temporaries of a tensor of hundreds of millions of entries stay at a few tens of MB
GENERATION_CHUNK = 1 << 22
#: the laws whose value k depends on the k-th word of the stream alone (normal's rejection sampling does not)
UNIFORM_LAWS: tuple[str, ...] = ("symmetric", "nonnegative", "signed_constant")

_MASK64 = (1 << 64) - 1
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
#: Philox4x64-10 (Salmon et al. 2011, Random123): the round multipliers and the Weyl increments of the key
_PHILOX_M0, _PHILOX_M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B
#: NumPy's next_double: the top 53 bits of a word, times 2**-53
_DOUBLE_SHIFT = np.uint64(11)
_DOUBLE_UNIT = 1.0 / 9007199254740992.0


def _mulhilo64(multiplier: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The high and low words of the 128-bit products ``multiplier * x`` (uint64 arrays, from 32-bit halves)."""
    a0, a1 = np.uint64(multiplier & 0xFFFFFFFF), np.uint64(multiplier >> 32)
    x0, x1 = x & _LOW32, x >> _SHIFT32
    low_low, low_high, high_low = a0 * x0, a0 * x1, a1 * x0
    middle = (low_low >> _SHIFT32) + (low_high & _LOW32) + (high_low & _LOW32)  # < 3 * 2**32: no overflow
    high = a1 * x1 + (low_high >> _SHIFT32) + (high_low >> _SHIFT32) + (middle >> _SHIFT32)
    low = (middle << _SHIFT32) | (low_low & _LOW32)  # the shift drops the carry, i.e. the product mod 2**64
    return high, low


def philox_words(key: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Words ``positions`` (uint64, any shape) of the stream ``np.random.Philox(key=key).random_raw(...)``.

    NumPy's Philox starts at counter 0 and increments the counter before each block of four words, so word k is
    word k % 4 of Philox4x64-10 at counter (k // 4 + 1, 0, 0, 0). Only those blocks are computed.

    Example:
        >>> key = np.array([7, 3], dtype=np.uint64)
        >>> stream = np.random.Philox(key=key).random_raw(40)
        >>> bool((philox_words(key, np.array([0, 5, 39], dtype=np.uint64)) == stream[[0, 5, 39]]).all())
        True
    """
    where = np.asarray(positions, dtype=np.uint64)
    flat = where.reshape(-1)
    k0, k1 = int(key[0]), int(key[1])
    c0 = (flat >> np.uint64(2)) + np.uint64(1)
    c1 = np.zeros_like(c0)
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + _PHILOX_W0) & _MASK64, (k1 + _PHILOX_W1) & _MASK64
        high0, low0 = _mulhilo64(_PHILOX_M0, c0)
        high1, low1 = _mulhilo64(_PHILOX_M1, c2)
        c0, c1, c2, c3 = high1 ^ c1 ^ np.uint64(k0), low1, high0 ^ c3 ^ np.uint64(k1), low0
    lane = (flat & np.uint64(3)).astype(np.intp)
    words = np.choose(lane, (c0, c1, c2, c3)) if flat.size else flat.copy()
    return words.reshape(where.shape)


def _apply_law(r: np.ndarray, scale: float, law: Law) -> np.ndarray:
    """float32 values of a uniform law from uniforms ``r`` in [0, 1) (float64): the arithmetic of RNG_LAYOUT."""
    if law == "signed_constant":
        return np.where(r >= 0.5, scale, -scale).astype(np.float32)
    if law == "nonnegative":
        return (scale * r).astype(np.float32)
    return (scale * (2.0 * r - 1.0)).astype(np.float32)


@dataclass(frozen=True)
class RandomSource:
    """Seeded source of the random tensors of one ticket.

    Args:
        seed: any integer in [0, 2^64).

    Example:
        >>> src = RandomSource(seed=0)
        >>> bool((src.tensor(0, "U", (3, 2), scale=0.5) == src.tensor(0, "U", (3, 2), scale=0.5)).all())
        True
    """

    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int | np.integer) or not 0 <= int(self.seed) < 2**64:
            raise ConfigError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")

    def key(self, pair: int, tensor: str, draw: int = 0, *, er: bool = False) -> np.ndarray:
        """The Philox key of tensor ``tensor`` of pair ``pair`` at draw ``draw`` (``er``: of its ER mask)."""
        if not 0 <= pair < 2**32 or not 0 <= draw < 2**16:
            raise ConfigError(f"pair must be < 2**32 and draw < 2**16, got pair={pair}, draw={draw}")
        if tensor not in TENSOR_IDS:
            raise ConfigError(f"unknown random tensor {tensor!r}; expected one of {list(TENSOR_IDS)}")
        word = pair * 2**32 + (TENSOR_IDS[tensor] + (ER_TENSOR_OFFSET if er else 0)) * 2**16 + draw
        return np.array([int(self.seed), word], dtype=np.uint64)

    def er_mask(self, pair: int, tensor: str, shape: tuple[int, ...], density: float) -> np.ndarray:
        """Which entries of tensor ``tensor`` of pair ``pair`` exist in an Erdős–Rényi sparse source: one
        uniform r per entry from the tensor's ER stream, the entry exists iff r < ``density``. The mask is the
        same for every draw of the values (re-randomisation never redraws it).

        Example:
            >>> mask = RandomSource(seed=0).er_mask(0, "V", (100, 100), density=0.25)
            >>> mask.dtype, bool(0.2 < mask.mean() < 0.3)
            (dtype('bool'), True)
        """
        _check_density(density)
        gen = np.random.Generator(np.random.Philox(key=self.key(pair, tensor, er=True)))
        size = math.prod(shape)
        exists = np.empty(size, dtype=bool)
        for start in range(0, size, GENERATION_CHUNK):
            stop = min(size, start + GENERATION_CHUNK)
            exists[start:stop] = gen.random(stop - start, dtype=np.float64) < float(density)
        return exists.reshape(shape)

    def er_mask_at(self, pair: int, tensor: str, index: np.ndarray, density: float) -> np.ndarray:
        """Entries ``index`` (flat, C order; any integer array) of :meth:`er_mask`, without the rest of the mask:
        ``er_mask(pair, tensor, shape, density).ravel()[index]`` for any shape with more than ``index.max()``
        entries."""
        _check_density(density)
        return _uniforms_at(self.key(pair, tensor, er=True), index) < float(density)

    def tensor(
        self, pair: int, tensor: str, shape: tuple[int, ...], scale: float, draw: int = 0, law: Law = "symmetric"
    ) -> np.ndarray:
        """The float32 tensor ``tensor`` of pair ``pair`` at draw ``draw``: uniform on [-scale, scale]
        (``law="symmetric"``) or on [0, scale] (``law="nonnegative"``), ±scale (``"signed_constant"``), or
        Gaussian with standard deviation scale (``"normal"``)."""
        _check_scale_and_law(scale, law)
        gen = np.random.Generator(np.random.Philox(key=self.key(pair, tensor, draw)))
        size = math.prod(shape)
        if law == "normal":
            return (scale * gen.standard_normal(size, dtype=np.float64)).astype(np.float32).reshape(shape)
        values = np.empty(size, dtype=np.float32)
        for start in range(0, size, GENERATION_CHUNK):  # the same stream as one call: one word per value
            stop = min(size, start + GENERATION_CHUNK)
            values[start:stop] = _apply_law(gen.random(stop - start, dtype=np.float64), scale, law)
        return values.reshape(shape)

    def values_at(
        self,
        pair: int,
        tensor: str,
        index: np.ndarray,
        scale: float,
        draw: int = 0,
        law: Law = "symmetric",
    ) -> np.ndarray:
        """The float32 entries ``index`` (flat positions in C order; any integer array, the result has its shape) of
        tensor ``tensor`` of pair ``pair``, computed without the rest of the tensor and bit-identical to
        ``tensor(pair, tensor, shape, scale, draw, law).ravel()[index]`` for any shape with more than
        ``index.max()`` entries (a tensor's values depend on the key and the position only). Uniform laws only:
        ``normal`` draws a variable number of words per value.

        Example:
            >>> src = RandomSource(seed=3)
            >>> index = np.array([[0, 9], [399, 17]])
            >>> some = src.values_at(1, "U", index, 0.5)
            >>> some.shape, bool((some == src.tensor(1, "U", (50, 8), 0.5).ravel()[index]).all())
            ((2, 2), True)
        """
        _check_scale_and_law(scale, law)
        if law not in UNIFORM_LAWS:
            raise ConfigError(f"values_at needs a law that draws one word per value {UNIFORM_LAWS}, got {law!r}")
        return _apply_law(_uniforms_at(self.key(pair, tensor, draw), index), scale, law)


def _check_scale_and_law(scale: float, law: str) -> None:
    if not np.isfinite(scale) or scale <= 0:
        raise ConfigError(f"scale must be positive and finite, got {scale}")
    if law not in LAWS:
        raise ConfigError(f"unknown law {law!r}; expected one of {LAWS}")


def _check_density(density: float) -> None:
    if isinstance(density, bool) or not (isinstance(density, numbers.Real) and 0.0 < float(density) <= 1.0):
        raise ConfigError(f"an ER density must be a number in (0, 1], got {density!r}")


def _uniforms_at(key: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``Generator(Philox(key)).random(size, float64)[index]`` without the values before: NumPy's next_double
    turns word k into (word >> 11) * 2**-53, exactly."""
    where = np.asarray(index)
    if where.dtype.kind not in "iu":
        raise ConfigError(f"indices must be integers, got dtype {where.dtype}")
    if where.size and int(where.min()) < 0:
        raise ConfigError("indices must be >= 0")
    words = philox_words(key, where.astype(np.uint64))
    return (words >> _DOUBLE_SHIFT).astype(np.float64) * _DOUBLE_UNIT
