"""Erdős–Rényi sparse random sources (Gadhikar et al. 2023): ER masks, density policies, sparse tickets.

References: the ER stream written out with NumPy from the documented key (docs/design.md section 3); the policies'
formulas worked by hand on small layer lists (construction/sparsity.py cites the paper's code); a dense build of the
same target (density 1 must be it bit for bit, and its usable counts times p_U·p_V are what a sparse build's should
be); the verifier's per-layer check (each pair equals its effective layer); the exported file read with NumPy alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file
from ticket.checks import check_pruned_equals_source_times_mask
from torch import nn

from ticketsolver import BuildConfig, ConfigError, Target, Ticket, TicketFormatError, build_ticket
from ticketsolver.construction import DEFAULT_INPUT_BOX, PairLayout, PrunedPair
from ticketsolver.construction.sparsity import DENSITY_POLICIES, expected_nonzeros, layer_densities
from ticketsolver.source import RandomSource
from ticketsolver.ticket import export_safetensors
from ticketsolver.verification.layers import check_layers

# -- the ER mask: its own stream, regenerated from the seed ---------------------------------------------------------


def test_er_masks_regenerate_bit_identically_from_the_seed_and_differ_with_it() -> None:
    shape, density = (60, 50), 0.3
    mask = RandomSource(7).er_mask(2, "U", shape, density)
    assert np.array_equal(mask, RandomSource(7).er_mask(2, "U", shape, density))
    for other in (
        RandomSource(8).er_mask(2, "U", shape, density),  # another seed
        RandomSource(7).er_mask(3, "U", shape, density),  # another pair
        RandomSource(7).er_mask(2, "V", shape, density),  # another tensor
    ):
        assert not np.array_equal(mask, other)
    assert abs(mask.mean() - density) < 0.03
    # the documented layout, with NumPy alone: key [seed, pair * 2**32 + (256 + tensor id) * 2**16], entry iff r < p
    r = np.random.Generator(np.random.Philox(key=np.array([7, 2 * 2**32 + 256 * 2**16], dtype=np.uint64))).random(3000)
    assert np.array_equal(mask, (r < density).reshape(shape))


def test_the_er_stream_is_none_of_the_value_streams() -> None:
    source = RandomSource(0)
    er_words = {int(source.key(0, name, er=True)[1]) for name in ("U", "beta", "V")}
    value_words = {int(source.key(0, name, draw)[1]) for name in ("U", "beta", "V", "W", "b") for draw in (0, 1, 255)}
    assert not er_words & value_words


def test_an_er_density_outside_zero_one_is_refused() -> None:
    for bad in (0.0, -0.1, 1.5, math.nan, True):
        with pytest.raises(ConfigError, match="ER density"):
            RandomSource(0).er_mask(0, "U", (3, 3), bad)


# -- density policies: the paper's formulas --------------------------------------------------------------------------

# LeNet5's five pairs (construction L at n = 10: U is (d_in*n + bias units, c_in, kh, kw), V is (d_out, hidden, 1, 1))
LENET5_LAYERS = [(350, 1, 5, 5), (6, 350, 1, 1), (1800, 6, 5, 5), (16, 1800, 1, 1)] + [
    (4600, 400),
    (120, 4600),
    (1300, 120),
    (84, 1300),
    (940, 84),
    (10, 940),
]
# the tests' 5 -> 8 -> 6 -> 3 MLP at n = 16 (hidden d_in*n + bias units)
MLP_LAYERS = [(96, 5), (8, 96), (160, 8), (6, 160), (128, 6), (3, 128)]


@pytest.mark.parametrize(
    ("policy", "density", "shapes", "expected"),
    [
        ("uniform", 0.3, [(10, 10), (10, 1000)], [0.3, 0.3]),
        # raw (10+10)/100 = 0.2 and (10+1000)/10,000 = 0.101; eps = 5,050 / (0.2*100 + 0.101*10,000) = 5050/1030
        ("erk", 0.5, [(10, 10), (10, 1000)], [0.2 * 5050 / 1030, 0.101 * 5050 / 1030]),
        # raw 4/4 = 1: eps*1 > 1, so the 2x2 layer is dense; eps = (5,000 - 0.5*4) / 1,010 for the other
        ("erk", 0.5, [(2, 2), (10, 1000)], [1.0, 0.101 * 4998 / 1010]),
        # conv: the kernel dimensions count in the raw probability, (6 + 1 + 5 + 5) / 150 and (16 + 6 + 5 + 5) / 2400
        ("erk", 0.1, [(6, 1, 5, 5), (16, 6, 5, 5)], [17 / 150 * 255 / 49, 32 / 2400 * 255 / 49]),
        # X = 0.2 * 12,000 / 2 = 1,200 nonzeros in each layer
        ("balanced", 0.2, [(20, 100), (10, 1000)], [1200 / 2000, 1200 / 10000]),
        # X = 2,525 > 100: the small layer is dense, the other holds 5,050 - 100
        ("balanced", 0.5, [(10, 10), (10, 1000)], [1.0, 4950 / 10000]),
        # 100 r + 100 r^2 = 100: r = (sqrt 5 - 1) / 2, densities r and r^2
        ("pyramidal", 0.5, [(10, 10), (10, 10)], [(math.sqrt(5) - 1) / 2, ((math.sqrt(5) - 1) / 2) ** 2]),
    ],
)
def test_densities_per_policy_equal_the_formulas(
    policy: str, density: float, shapes: list[tuple[int, ...]], expected: list[float]
) -> None:
    assert layer_densities(density, shapes, policy) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shapes", [LENET5_LAYERS, MLP_LAYERS], ids=["lenet5", "mlp"])
@pytest.mark.parametrize("policy", DENSITY_POLICIES)
@pytest.mark.parametrize("density", [0.5, 0.2, 0.05])
def test_policies_keep_the_overall_nonzeros_and_their_shape(
    shapes: list[tuple[int, ...]], policy: str, density: float
) -> None:
    p = layer_densities(density, shapes, policy)
    sizes = [math.prod(shape) for shape in shapes]
    assert all(0.0 < d <= 1.0 for d in p)
    assert expected_nonzeros(p, shapes) == pytest.approx(density * sum(sizes), rel=1e-12)
    free = [i for i, d in enumerate(p) if d < 1.0]  # the layers the policy did not cap
    assert free
    if policy == "uniform":
        assert p == [density] * len(shapes)
    elif policy == "erk":  # p_l proportional to (sum of dims) / N_l
        ratios = [p[i] * sizes[i] / sum(shapes[i]) for i in free]
        assert ratios == pytest.approx([ratios[0]] * len(free), rel=1e-12)
    elif policy == "balanced":  # the same nonzeros in every uncapped layer, more than a capped one holds
        nonzeros = [p[i] * sizes[i] for i in free]
        assert nonzeros == pytest.approx([nonzeros[0]] * len(free), rel=1e-12)
        assert all(sizes[i] <= nonzeros[0] for i in range(len(p)) if i not in free)
    else:  # geometric in network order, p_1 = r
        assert p == pytest.approx([p[0] ** (level + 1) for level in range(len(p))], rel=1e-9)


def test_density_one_is_dense_whatever_the_policy() -> None:
    for policy in DENSITY_POLICIES:
        assert layer_densities(1.0, LENET5_LAYERS, policy) == [1.0] * len(LENET5_LAYERS)
    with pytest.raises(ConfigError, match="unknown density policy"):
        layer_densities(0.5, MLP_LAYERS, "ER")


# -- sparse tickets ------------------------------------------------------------------------------------------------

# (network fixture, config): every construction, a conv net, a policy other than uniform
BUILDS: dict[str, tuple[str, dict[str, Any]]] = {
    "L": ("mlp", {"n": 16, "source_density": 0.5}),
    "L-conv-erk": ("cnn", {"n": 8, "source_density": 0.4, "density_policy": "erk"}),
    "O-pyramidal": ("mlp", {"n": 16, "source_density": 0.5, "resample": 2, "input_domain": (0, 1)}),
    "I-conv-balanced": ("cnn", {"n": 8, "source_density": 0.5, "resample": 2, "density_policy": "balanced"}),
}
BUILDS["O-pyramidal"][1]["density_policy"] = "pyramidal"
CONSTRUCTIONS = {"L": "offset_blocks", "O": "output_blocks", "I": "input_blocks"}


@pytest.fixture(scope="module", params=list(BUILDS))
def sparse(request: pytest.FixtureRequest) -> tuple[Any, Ticket, BuildConfig]:
    which, fields = BUILDS[request.param]
    net = request.getfixturevalue(which)
    config = BuildConfig(solver="mitm", **fields)
    ticket = build_ticket(net.module, config, input_shape=net.input_shape)
    assert ticket.layouts[0].construction == CONSTRUCTIONS[request.param[0]]
    return net, ticket, config


def test_the_tickets_masks_lie_inside_the_er_masks(sparse: tuple[Any, Ticket, BuildConfig]) -> None:
    _, ticket, config = sparse
    for k, layout in enumerate(ticket.layouts):
        assert isinstance(layout, PairLayout) and layout.sparse
        er = ticket.er_masks(k)
        assert set(er) <= {"U", "V"} and "beta" not in er  # biases stay dense
        for name, exists in er.items():
            assert not (ticket.dense_masks(k)[name] & ~exists).any()
            assert (~exists).any()  # really sparse
            source = ticket.source_tensors(k)[name]
            assert not source[~exists].any()  # the network holds 0 where no entry exists
    shapes = [s for layout in ticket.layouts for s in layout.weight_shapes().values()]  # type: ignore[union-attr]
    densities = [layout.density(name) for layout in ticket.layouts for name in ("U", "V")]  # type: ignore[union-attr]
    assert densities == pytest.approx(layer_densities(config.source_density, shapes, config.density_policy))


def test_a_sparse_ticket_saves_loads_and_counts_its_er_nonzeros(
    sparse: tuple[Any, Ticket, BuildConfig], tmp_path: Path
) -> None:
    _, ticket, _ = sparse
    loaded = Ticket.load(ticket.save(tmp_path / "sparse.ticket"))  # the kept hash and statistics check out
    assert loaded.kept_hash() == ticket.kept_hash() and loaded.layouts == ticket.layouts
    nonzeros = 0
    for k, layout in enumerate(loaded.layouts):
        assert isinstance(layout, PairLayout)
        er = loaded.er_masks(k)
        nonzeros += sum(int(er[name].sum()) if name in er else math.prod(s) for name, s in layout.shapes().items())
    sizes = loaded.sizes()
    assert sizes["source_params"] == nonzeros == ticket.sizes()["source_params"]
    assert nonzeros < sum(layout.dense_params() for layout in loaded.layouts)  # type: ignore[union-attr]
    if sizes["source_kind"] == "iid":
        assert sizes["examined_values"] == nonzeros


def test_the_exported_source_is_the_sparse_network_itself(
    sparse: tuple[Any, Ticket, BuildConfig], tmp_path: Path
) -> None:
    _, ticket, _ = sparse
    path = export_safetensors(ticket, tmp_path / "g.safetensors")
    assert check_pruned_equals_source_times_mask(path)
    tensors = load_file(str(path))
    with safe_open(str(path), framework="numpy") as f:
        densities = json.loads((f.metadata() or {})["source_densities"])
    steps = [i for i, step in enumerate(ticket.steps) if step["op"] == "pair"]
    for k, step in enumerate(steps):
        layout = ticket.layouts[k]
        for name, key in (("U", f"{step}.first.weight"), ("V", f"{step}.second.weight")):
            exists = ticket.er_masks(k).get(name)
            if exists is None:
                continue
            source = tensors[f"{key}.source"].reshape(exists.shape)
            assert not source[~exists].any() and np.count_nonzero(source) == np.count_nonzero(exists)
            assert densities[f"{key}.source"] == layout.density(name)  # type: ignore[union-attr]


def test_the_built_network_matches_its_effective_layers(sparse: tuple[Any, Ticket, BuildConfig]) -> None:
    """g equals its effective-weights network on the input box it was built for (L: the default box), and the
    verifier's per-layer check finds every pair equal to its effective layer (where an L pair is linear: the
    target's activations, which it is compared on, can leave g's boxes when the approximation is coarse)."""
    net, ticket, config = sparse
    lo, hi = config.input_domain or DEFAULT_INPUT_BOX
    x = lo + (hi - lo) * torch.rand((128, *net.input_shape), generator=torch.Generator().manual_seed(0))
    g = ticket.to_module().double()
    effective = nn.Sequential(*(m.effective(torch.float64) if isinstance(m, PrunedPair) else m for m in g))
    out, expected = g(x.double()), effective(x.double())
    assert (out - expected).abs().max().item() <= 1e-10 * expected.abs().max().item()
    target = Target.from_module(net.module, net.input_shape).module.double()
    checks = check_layers(target, g, x.double())
    assert len(checks) == len(ticket.layouts)
    for check in checks:
        assert check.pair_vs_effective <= 1e-9 * max(check.max_abs_target, 1.0)


def test_save_refuses_a_mask_outside_the_er_mask(sparse: tuple[Any, Ticket, BuildConfig], tmp_path: Path) -> None:
    _, ticket, _ = sparse
    masks = [dict(m) for m in ticket.masks]

    def outside(k: int, name: str) -> np.ndarray:
        """Where the construction alone would allow a kept entry but the ER mask has none (held shapes)."""
        layout = ticket.layouts[k]
        assert isinstance(layout, PairLayout)
        held = ticket.held_tensors(k)
        return layout._construction_candidates(held)[name] & ~layout.candidates(held, ticket.er_masks(k))[name]

    k, name = next(
        (k, name) for k in range(len(ticket.layouts)) for name in ticket.er_masks(k) if outside(k, name).any()
    )
    first = outside(k, name) & (np.cumsum(outside(k, name)) == 1).reshape(masks[k][name].shape)
    masks[k][name] = masks[k][name] | first
    forged = Ticket(
        seed=ticket.seed,
        input_shape=ticket.input_shape,
        input_domain=ticket.input_domain,
        steps=ticket.steps,
        layouts=ticket.layouts,
        masks=masks,
        draws=ticket.draws,
        build=ticket.build,
    )
    with pytest.raises(TicketFormatError, match=f"mask {name} keeps an entry its construction forbids"):
        forged.save(tmp_path / "forged.ticket")


@pytest.mark.parametrize("resample", [0, 2], ids=["L", "I-O"])
def test_density_one_builds_todays_ticket(mlp: Any, resample: int) -> None:
    fields: dict[str, Any] = {"n": 8, "solver": "mitm", "resample": resample}
    plain = build_ticket(mlp.module, BuildConfig(**fields), input_shape=mlp.input_shape)
    dense = build_ticket(
        mlp.module, BuildConfig(**fields, source_density=1.0, density_policy="erk"), input_shape=mlp.input_shape
    )
    assert dense.kept_hash() == plain.kept_hash()
    assert all("densities" not in layout.to_dict() for layout in dense.layouts)


@pytest.mark.parametrize(
    "fields",
    [{}, {"resample": 1, "input_domain": (0, 1)}],
    ids=["L", "O"],
)
def test_usable_coefficients_per_weight_shrink_by_p_u_times_p_v(fields: dict[str, Any]) -> None:
    """A weight's coefficient needs its U and its V entry: a sparse build's usable count is the dense build's
    times p_U·p_V (uniform: p²), within sampling noise over 400 weights."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(20, 20))
    n, p = 24, 0.5
    counts = {}
    for density in (1.0, p):
        config = BuildConfig(n=n, solver="mitm", source_density=density, **fields)
        ticket = build_ticket(net, config, input_shape=(20,))
        counts[density] = ticket.build["pairs"][0]["usable_mean"]
    assert counts[p] == pytest.approx(counts[1.0] * p * p, rel=0.15)


def test_learning_on_a_sparse_source_is_refused_until_layers_have_er_masks(mlp: Any) -> None:
    from ticketsolver.learning.network import network_of_ticket

    config = BuildConfig(n=4, solver="mitm", source_density=0.5)
    ticket = build_ticket(mlp.module, config, input_shape=mlp.input_shape)
    with pytest.raises(ConfigError, match="Erdős–Rényi sparse source"):
        network_of_ticket(ticket, use_masks=False)
