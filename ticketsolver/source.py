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
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ticketsolver.errors import ConfigError

__all__ = ["ER_TENSOR_OFFSET", "LAWS", "RNG_LAYOUT", "TENSOR_IDS", "Law", "RandomSource"]

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
        if isinstance(density, bool) or not (isinstance(density, numbers.Real) and 0.0 < float(density) <= 1.0):
            raise ConfigError(f"an ER density must be a number in (0, 1], got {density!r}")
        gen = np.random.Generator(np.random.Philox(key=self.key(pair, tensor, er=True)))
        return (gen.random(math.prod(shape), dtype=np.float64) < float(density)).reshape(shape)

    def tensor(
        self, pair: int, tensor: str, shape: tuple[int, ...], scale: float, draw: int = 0, law: Law = "symmetric"
    ) -> np.ndarray:
        """The float32 tensor ``tensor`` of pair ``pair`` at draw ``draw``: uniform on [-scale, scale]
        (``law="symmetric"``) or on [0, scale] (``law="nonnegative"``), ±scale (``"signed_constant"``), or
        Gaussian with standard deviation scale (``"normal"``)."""
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"scale must be positive and finite, got {scale}")
        if law not in LAWS:
            raise ConfigError(f"unknown law {law!r}; expected one of {LAWS}")
        gen = np.random.Generator(np.random.Philox(key=self.key(pair, tensor, draw)))
        size = math.prod(shape)
        if law == "normal":
            return (scale * gen.standard_normal(size, dtype=np.float64)).astype(np.float32).reshape(shape)
        values = gen.random(size, dtype=np.float64)
        if law == "signed_constant":
            return np.where(values >= 0.5, scale, -scale).astype(np.float32).reshape(shape)
        if law == "nonnegative":
            return (scale * values).astype(np.float32).reshape(shape)
        return (scale * (2.0 * values - 1.0)).astype(np.float32).reshape(shape)
