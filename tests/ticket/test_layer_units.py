"""Tickets made of single random layers (learned masks): regeneration, file round trip, refusals, exports.

References: the seeded source itself (every kept value is the stream's value at its recorded draw), a pair's own
tensors (layers_of_pair reads the same streams), ``ticket.to_module()`` (what every export must equal), and
onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from ticketsolver import BuildConfig, build_ticket
from ticketsolver.construction import PairLayout
from ticketsolver.construction.layout import ConvGeometry
from ticketsolver.errors import TicketFormatError
from ticketsolver.source import RandomSource
from ticketsolver.ticket import Ticket, export_onnx, export_safetensors
from ticketsolver.ticket.layer import LayerLayout, Stream, layers_of_pair

from .test_artifact import rewrite


def small_learned_ticket(rerandomized: bool = True) -> Ticket:
    """conv(1->3, 3x3, pad 1) relu flatten linear(3*6*6 -> 4, bias): random masks; some entries at draws 1-3."""
    rng = np.random.default_rng(7)
    conv = LayerLayout(
        unit=0,
        kind="conv2d",
        d_out=3,
        d_in=9,
        weight=Stream(0, "W", "signed_constant", 0.5),
        conv=ConvGeometry(1, (3, 3), (1, 1), (1, 1), (1, 1)),
    )
    linear = LayerLayout(
        unit=1,
        kind="linear",
        d_out=4,
        d_in=108,
        weight=Stream(1, "W", "normal", 0.1),
        bias=Stream(1, "b", "symmetric", 0.2),
    )
    layouts = [conv, linear]
    masks = [{name: rng.random(shape) < 0.5 for name, shape in layout.shapes().items()} for layout in layouts]
    draws = [
        (rng.integers(0, 4, layout.draw_shape) * (rng.random(layout.draw_shape) < 0.3)).astype(np.uint8)
        if rerandomized
        else np.zeros(layout.draw_shape, dtype=np.uint8)
        for layout in layouts
    ]
    build = {
        "kind": "learned",
        "method": "iterand" if rerandomized else "edge-popup",
        "target_params": 0,
        "pairs": [
            {"examined_values": layout.source_params() + int(d.sum()), "kept_fraction": 0.5}
            for layout, d in zip(layouts, draws, strict=True)
        ],
    }
    steps = [{"op": "layer", "unit": 0}, {"op": "relu"}, {"op": "flatten", "start_dim": 1, "end_dim": -1}]
    steps.append({"op": "layer", "unit": 1})
    return Ticket(
        seed=11,
        input_shape=(1, 6, 6),
        input_domain=None,
        steps=steps,
        layouts=layouts,
        masks=masks,
        draws=draws,
        build=build,
    )


@pytest.fixture(scope="module")
def learned() -> Ticket:
    return small_learned_ticket()


@pytest.fixture
def saved(learned: Ticket, tmp_path: Path) -> Path:
    return learned.save(tmp_path / "learned.ticket")


def test_every_kept_value_is_its_stream_at_its_recorded_draw(learned: Ticket) -> None:
    source = RandomSource(learned.seed)
    for k, layout in enumerate(learned.layouts):
        assert isinstance(layout, LayerLayout)
        tensors = learned.source_tensors(k)
        for name, entry in layout.entry_draws(learned.draws[k]).items():
            stream = layout.streams()[name]
            for index in zip(*np.nonzero(np.ones_like(entry, dtype=bool)), strict=True):
                expected = source.tensor(
                    stream.pair, stream.tensor, layout.shapes()[name], stream.scale, int(entry[index]), stream.law
                )[index]
                assert tensors[name][index] == expected
    assert any(d.any() for d in learned.draws)  # the fixture does exercise later draws


def test_the_network_is_source_times_mask_layer_by_layer(learned: Ticket) -> None:
    module = learned.to_module()
    assert [type(m).__name__ for m in module] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    for step, k in ((0, 0), (3, 1)):
        tensors, masks = learned.source_tensors(k), learned.masks[k]
        for name in learned.layouts[k].shapes():
            got = getattr(module[step], name).detach().numpy().reshape(masks[name].shape)
            assert np.array_equal(got, np.where(masks[name], tensors[name], np.float32(0)))
            assert not getattr(module[step], name).requires_grad
    assert module(torch.rand(5, 1, 6, 6)).shape == (5, 4)


def test_sizes_count_examined_values_and_the_source_kind(learned: Ticket) -> None:
    sizes = learned.sizes()
    source = sum(layout.source_params() for layout in learned.layouts)
    assert sizes["source_params"] == source == 3 * 9 + 4 * 108 + 4
    assert sizes["kept_params"] == sum(int(m.sum()) for masks in learned.masks for m in masks.values())
    assert sizes["source_kind"] == "rerandomized"
    assert sizes["examined_values"] == source + sum(int(d.sum()) for d in learned.draws)
    assert learned.learned and small_learned_ticket(rerandomized=False).sizes()["source_kind"] == "iid"


def test_a_learned_ticket_round_trips_through_the_file(learned: Ticket, saved: Path) -> None:
    loaded = Ticket.load(saved)
    assert loaded.kept_hash() == learned.kept_hash() and loaded.build_hash() == learned.build_hash()
    assert loaded.layouts == learned.layouts and loaded.steps == learned.steps
    for a, b in zip(loaded.draws, learned.draws, strict=True):
        assert np.array_equal(a, b)
    x = torch.rand(3, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded.to_module()(x), learned.to_module()(x))
    assert json.loads(json.dumps(loaded.manifest()))["format_version"] == 4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["pairs"][1]["weight"].update(law="cauchy"), "unknown stream tensor 'W' or law 'cauchy'"),
        (lambda m: m["pairs"][1]["weight"].update(tensor="Q"), "unknown stream tensor"),
        (lambda m: m["pairs"][0].update(unit_kind="triple"), "unknown unit kind 'triple'"),
        (lambda m: m["pairs"][0].update(d_in=10), "inconsistent shapes"),
        (lambda m: m["pairs"][1]["bias"].update(scale=-1.0), "bad pair index or scale"),
        (lambda m: m["steps"][0].update(op="pair", pair=0), "step 'pair' names unit 0, which is not a pair"),
        (lambda m: m["steps"][3].update(unit=0), "the steps name units"),
    ],
    ids=["law", "tensor", "unit-kind", "shape", "scale", "step-kind", "step-order"],
)
def test_a_forged_layer_entry_is_refused(saved: Path, tmp_path: Path, edit: Any, message: str) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError, match=message):
        Ticket.load(bad)


def test_an_edited_scale_changes_the_network_and_is_refused(saved: Path, tmp_path: Path) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=lambda m: m["pairs"][0]["weight"].update(scale=0.25))
    with pytest.raises(TicketFormatError, match="does not match the stored hash"):
        Ticket.load(bad)


def test_the_safetensors_export_names_the_state_dict_and_holds_source_and_mask(learned: Ticket, tmp_path: Path) -> None:
    path = export_safetensors(learned, tmp_path / "g.safetensors")
    tensors = load_file(str(path))
    state = learned.to_module().state_dict()
    assert {key for key in tensors if not key.endswith((".source", ".mask"))} == set(state)
    for key, value in state.items():
        assert np.array_equal(tensors[key], value.numpy())
        assert np.array_equal(tensors[key], tensors[f"{key}.source"] * tensors[f"{key}.mask"])
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        laws = json.loads(f.metadata()["source_laws"])
        assert f.metadata()["source_kind"] == "rerandomized"
    assert laws["0.weight.source"] == ["signed_constant", 0.5] and laws["3.bias.source"] == ["symmetric", 0.2]


def test_the_onnx_export_runs_in_onnxruntime_like_the_ticket(learned: Ticket, tmp_path: Path) -> None:
    import onnxruntime as ort

    path = export_onnx(learned, tmp_path / "g.onnx")
    x = np.random.default_rng(0).random((7, 1, 6, 6), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["output"], {"input": x})
    with torch.no_grad():
        expected = learned.to_module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_a_pair_seen_as_two_layers_draws_exactly_the_pair_values() -> None:
    """layers_of_pair reads the pair's own streams: U, beta and V come back bit for bit, for a conv pair."""
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))
    ticket = build_ticket(net, BuildConfig(n=3, seed=5, input_domain=(0.0, 1.0)), input_shape=(2, 5, 5))
    source = RandomSource(ticket.seed)
    unit = 0
    for k, pair in enumerate(ticket.layouts):
        assert isinstance(pair, PairLayout)
        first, second = layers_of_pair(pair, unit)
        unit += 2
        tensors = ticket.source_tensors(k)
        assert np.array_equal(first.tensor(source, "weight"), tensors["U"])
        assert np.array_equal(second.tensor(source, "weight"), tensors["V"])
        assert ("beta" in tensors) == ("bias" in first.shapes())
        if "beta" in tensors:
            assert np.array_equal(first.tensor(source, "bias"), tensors["beta"])
        # as modules, with all-ones masks, the two layers with a ReLU between are the unpruned pair
        ones = [{n: np.ones(s, dtype=bool) for n, s in layer.shapes().items()} for layer in (first, second)]
        chain = torch.nn.Sequential(
            first.to_module(first.source_tensors(source), ones[0]),
            torch.nn.ReLU(),
            second.to_module(second.source_tensors(source), ones[1]),
        )
        whole = pair.to_module(tensors, {n: np.ones(s, dtype=bool) for n, s in pair.shapes().items()})
        x = torch.rand(2, pair.conv.in_channels if pair.conv else pair.d_in, 5, 5)
        with torch.no_grad():
            assert torch.equal(chain(x), whole.second(torch.relu(whole.first(x))))
