"""The random source: every random value of a ticket, identical on every machine and in any order.

The references here do not use ``RandomSource``: the values are regenerated from the text of ``RNG_LAYOUT``
with plain NumPy, from a pure-Python Philox4x64-10 (the Random123 algorithm), and from frozen bit patterns.
"""

from __future__ import annotations

import numpy as np
import pytest

from ticketsolver.source import RNG_LAYOUT, TENSOR_IDS, RandomSource

MASK64 = (1 << 64) - 1


def layout_by_hand(seed: int, pair: int, tensor: str, shape: tuple[int, ...], scale: float, draw: int) -> np.ndarray:
    """RNG_LAYOUT followed word for word, with plain NumPy."""
    tensor_id = {"U": 0, "beta": 1, "V": 2}[tensor]  # "tensor ids U=0, beta=1, V=2"
    key = np.array([seed, pair * 2**32 + tensor_id * 2**16 + draw], dtype=np.uint64)
    values = np.random.Generator(np.random.Philox(key=key)).random(int(np.prod(shape)), dtype=np.float64)
    return np.float32(scale * (2 * values - 1)).reshape(shape)  # C order


def philox4x64_10(counter: list[int], key: list[int]) -> list[int]:
    """One block of Philox4x64-10 (Salmon et al. 2011, Random123), in Python integers."""
    c, k = list(counter), list(key)
    for round_ in range(10):
        if round_:
            k = [(k[0] + 0x9E3779B97F4A7C15) & MASK64, (k[1] + 0xBB67AE8584CAA73B) & MASK64]
        p0, p1 = 0xD2E7470EE14C6C93 * c[0], 0xCA5A826395121157 * c[2]
        c = [(p1 >> 64) ^ c[1] ^ k[0], p1 & MASK64, (p0 >> 64) ^ c[3] ^ k[1], p0 & MASK64]
    return c


def values_from_first_principles(seed: int, word: int, size: int, scale: float) -> np.ndarray:
    """Philox words -> 53-bit doubles in [0, 1) -> float32(scale * (2u - 1)), without NumPy's generators.

    NumPy's Philox with counter 0 increments the counter before each block, so block b is computed at b + 1.
    """
    words: list[int] = []
    block = 1
    while len(words) < size:
        words += philox4x64_10([block, 0, 0, 0], [seed, word])
        block += 1
    unit = np.array([(w >> 11) * 2.0**-53 for w in words[:size]])
    return np.float32(scale * (2 * unit - 1))


# -- determinism ------------------------------------------------------------------------------------------------


def test_same_key_gives_identical_values_on_every_call() -> None:
    a = RandomSource(7).tensor(2, "U", (5, 4), scale=0.3, draw=3)
    b = RandomSource(7).tensor(2, "U", (5, 4), scale=0.3, draw=3)
    assert a.tobytes() == b.tobytes()


def test_values_do_not_depend_on_the_order_of_calls() -> None:
    keys = [(0, "U", 0), (0, "V", 0), (1, "beta", 2), (3, "U", 5)]
    forward = {k: RandomSource(11).tensor(k[0], k[1], (6, 3), 0.5, draw=k[2]) for k in keys}
    src = RandomSource(11)
    backward = {k: src.tensor(k[0], k[1], (6, 3), 0.5, draw=k[2]) for k in reversed(keys)}
    for k in keys:
        assert np.array_equal(forward[k], backward[k]), k


def test_a_tensor_is_a_prefix_of_a_larger_one_in_c_order() -> None:
    # values depend on the key and the position only, so a shape is a C-order view of the stream
    small = RandomSource(0).tensor(0, "V", (3, 4), 1.0)
    large = RandomSource(0).tensor(0, "V", (5, 4), 1.0)
    assert np.array_equal(small.ravel(), large.ravel()[:12])


@pytest.mark.parametrize(
    "other",
    [
        {"seed": 1},
        {"pair": 1},
        {"tensor": "V"},
        {"tensor": "beta"},
        {"draw": 1},
    ],
    ids=lambda d: next(iter(d)) + "=" + str(next(iter(d.values()))),
)
def test_any_change_of_seed_pair_tensor_or_draw_changes_the_values(other: dict[str, object]) -> None:
    base: dict[str, object] = {"seed": 0, "pair": 0, "tensor": "U", "draw": 0}
    changed = {**base, **other}

    def values(k: dict[str, object]) -> np.ndarray:
        return RandomSource(k["seed"]).tensor(k["pair"], k["tensor"], (64,), 1.0, draw=k["draw"])  # type: ignore[arg-type]

    a, b = values(base), values(changed)
    assert not np.any(a == b)  # independent streams: not even one of 64 values coincides


def test_keys_of_neighbouring_fields_never_collide() -> None:
    src = RandomSource(0)
    words = {
        int(src.key(pair, tensor, draw)[1])
        for pair in (0, 1, 2**32 - 1)
        for tensor in TENSOR_IDS
        for draw in (0, 1, 2**16 - 1)
    }
    assert len(words) == 3 * len(TENSOR_IDS) * 3


# -- values -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.1, 3.7e-3])
def test_values_are_float32_in_the_scale_box_and_spread_over_it(scale: float) -> None:
    values = RandomSource(3).tensor(0, "U", (200, 100), scale)
    assert values.dtype == np.float32 and values.shape == (200, 100)
    bound = np.float32(scale)  # rounding to float32 is monotone: |value| <= float32(scale)
    assert values.min() >= -bound and values.max() <= bound
    # uniform: mean ~ 0, a quarter of the values in each quarter of the box
    assert abs(float(values.mean())) < 0.02 * scale
    quarters = np.histogram(values, bins=4, range=(-scale, scale))[0] / values.size
    assert np.allclose(quarters, 0.25, atol=0.01)


def test_values_lie_in_the_documented_closed_interval_whose_end_rounding_can_reach() -> None:
    # float32 rounding of a float64 just below 1.0 gives exactly 1.0 (here at index 6603818)
    values = RandomSource(0).tensor(2, "U", (6_603_819,), 1.0)
    assert values.max() == 1.0 and values.min() >= -1.0


def test_rejects_keys_outside_the_documented_ranges() -> None:
    with pytest.raises(ValueError, match="seed"):
        RandomSource(-1)
    with pytest.raises(ValueError, match="seed"):
        RandomSource(2**64)
    src = RandomSource(np.uint64(2**64 - 1))
    with pytest.raises(ValueError, match="pair"):
        src.tensor(2**32, "U", (2,), 1.0)
    with pytest.raises(ValueError, match="draw"):
        src.tensor(0, "U", (2,), 1.0, draw=2**16)
    for scale in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            src.tensor(0, "U", (2,), scale)


# -- golden: the documented layout reproduces the values ----------------------------------------------------------


def test_rng_layout_text_states_the_algorithm_key_and_transform() -> None:
    assert "Philox4x64-10" in RNG_LAYOUT["algorithm"]
    assert "first block is generated at counter 1" in RNG_LAYOUT["algorithm"]
    assert "[seed, pair * 2**32 + tensor * 2**16 + draw]" in RNG_LAYOUT["key"]
    assert "U=0, beta=1, V=2, W=3, b=4" in RNG_LAYOUT["key"]
    assert TENSOR_IDS == {"U": 0, "beta": 1, "V": 2, "W": 3, "b": 4}
    assert "law symmetric: float32(scale * (2 * r - 1))" in RNG_LAYOUT["values"]
    assert "law nonnegative: float32(scale * r)" in RNG_LAYOUT["values"]
    assert "law signed_constant: float32(scale * (1 if r >= 0.5 else -1))" in RNG_LAYOUT["values"]
    assert (
        "law normal: float32(scale * Generator(Philox(key=key)).standard_normal(size, dtype=float64))"
        in (RNG_LAYOUT["values"])
    )


def test_both_laws_follow_the_documented_formula() -> None:
    """What RNG_LAYOUT says is what RandomSource does, for each law."""
    source = RandomSource(seed=5)
    gen = np.random.Generator(np.random.Philox(key=source.key(2, "beta", 0)))
    r = gen.random(12, dtype=np.float64)
    nonnegative = source.tensor(2, "beta", (3, 4), 0.75, law="nonnegative")
    symmetric = source.tensor(2, "beta", (3, 4), 0.75, law="symmetric")
    assert np.array_equal(nonnegative.ravel(), (0.75 * r).astype(np.float32))
    assert np.array_equal(symmetric.ravel(), (0.75 * (2 * r - 1)).astype(np.float32))
    assert nonnegative.min() >= 0 and symmetric.min() < 0
    with pytest.raises(ValueError, match="law"):
        source.tensor(2, "beta", (3,), 0.75, law="gaussian")  # type: ignore[arg-type]


def test_the_initialisation_laws_of_learned_masks_follow_the_documented_formula() -> None:
    """signed_constant: ±scale by the sign of 2r - 1; normal: scale times Philox's float64 standard normal."""
    source = RandomSource(seed=9)
    r = np.random.Generator(np.random.Philox(key=source.key(4, "W", 3))).random(2000, dtype=np.float64)
    z = np.random.Generator(np.random.Philox(key=source.key(4, "W", 3))).standard_normal(2000, dtype=np.float64)
    signed = source.tensor(4, "W", (40, 50), 0.125, draw=3, law="signed_constant")
    normal = source.tensor(4, "W", (40, 50), 0.125, draw=3, law="normal")
    assert np.array_equal(signed.ravel(), np.where(r >= 0.5, 0.125, -0.125).astype(np.float32))
    assert np.array_equal(normal.ravel(), (0.125 * z).astype(np.float32))
    assert set(np.unique(signed).tolist()) == {-0.125, 0.125}
    assert abs(float(normal.std()) - 0.125) < 0.01  # 2000 samples: the std's standard error is ~0.002


def test_an_unknown_tensor_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown random tensor 'X'"):
        RandomSource(0).tensor(0, "X", (2,), 1.0)


@pytest.mark.parametrize(
    ("seed", "pair", "tensor", "shape", "scale", "draw"),
    [
        (0, 0, "U", (7, 5), 1.0, 0),
        (12345, 3, "V", (4, 9), 0.25, 7),
        (2**63 + 5, 2**32 - 1, "beta", (11,), 2.0, 2**16 - 1),
        (42, 17, "U", (2, 3, 3, 3), 0.013, 255),
    ],
)
def test_documented_layout_reproduces_the_values_with_plain_numpy(
    seed: int, pair: int, tensor: str, shape: tuple[int, ...], scale: float, draw: int
) -> None:
    expected = layout_by_hand(seed, pair, tensor, shape, scale, draw)
    got = RandomSource(seed).tensor(pair, tensor, shape, scale, draw)
    assert got.dtype == np.float32 and got.tobytes() == expected.tobytes()


def test_values_follow_from_the_philox_algorithm_itself() -> None:
    seed, word = 12345, 3 * 2**32 + 2 * 2**16 + 7  # pair 3, tensor V, draw 7
    expected = values_from_first_principles(seed, word, 10, 0.25)
    got = RandomSource(seed).tensor(3, "V", (10,), 0.25, draw=7)
    assert got.tobytes() == expected.tobytes()


def test_frozen_bit_patterns() -> None:
    """Values recorded once: a NumPy or platform change that altered them would break every saved ticket."""
    cases = [
        (
            RandomSource(12345).tensor(3, "V", (2, 3), 0.25, draw=7),
            [0xBE62A084, 0xB9A5BE1E, 0x3DC67F54, 0xBC1C056B, 0xBDA57EE8, 0x3D481C5B],
        ),
        (RandomSource(12345).tensor(0, "U", (4,), 1.0), [0x3E95E4B0, 0x3F0C6CCD, 0x3F12A7C6, 0xBF2E4958]),
        (
            RandomSource(2**64 - 1).tensor(2**32 - 1, "beta", (3,), 2.0, draw=2**16 - 1),
            [0x3EFCDF46, 0xBFC62205, 0x3FA9CFD8],
        ),
    ]
    for values, bits in cases:
        assert values.ravel().view(np.uint32).tolist() == bits
