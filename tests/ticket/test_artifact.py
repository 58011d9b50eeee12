"""The ticket file: save -> load regenerates the identical network; corrupt or hostile files are refused.

References: the ticket that was saved (tensors compared with ``torch.equal``), the file format as the manifest
documents it (decoded here with ``lzma`` and ``numpy.unpackbits`` alone), and hand-made corruptions.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from torch import nn

from ticketsolver import BuildConfig, TicketFormatError, build_ticket
from ticketsolver.construction.layout import PairLayout
from ticketsolver.construction.pair import PrunedPair
from ticketsolver.source import RNG_LAYOUT
from ticketsolver.ticket import FORMAT, FORMAT_VERSION, Ticket, artifact

TICKETS = ["mlp_ticket", "cnn_ticket"]


@pytest.fixture(scope="module")
def _files() -> dict[str, Path]:
    return {}


def _saved_once(name: str, request: pytest.FixtureRequest, files: dict[str, Path]) -> Path:
    # saving costs ~0.1 s per mask blob (LZMA preset 9), so each session ticket is written once per module
    if name not in files:
        ticket = request.getfixturevalue(name)
        files[name] = ticket.save(request.getfixturevalue("tmp_path_factory").mktemp(name) / "t.ticket")
    return files[name]


@pytest.fixture(params=TICKETS)
def ticket(request: pytest.FixtureRequest) -> Ticket:
    return request.getfixturevalue(request.param)


@pytest.fixture
def ticket_file(ticket: Ticket, request: pytest.FixtureRequest, _files: dict[str, Path]) -> Path:
    """The file of `ticket` (read-only: tests write edited copies elsewhere)."""
    return _saved_once(request.node.callspec.params["ticket"], request, _files)


@pytest.fixture
def saved(request: pytest.FixtureRequest, _files: dict[str, Path]) -> Path:
    """The MLP's ticket file (read-only: tests write edited copies elsewhere)."""
    return _saved_once("mlp_ticket", request, _files)


def rewrite(
    path: Path,
    out: Path,
    manifest: Callable[[dict[str, Any]], None] | None = None,
    tensors: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> Path:
    """A copy of a ticket file with its manifest and/or tensors edited (still a valid safetensors file)."""
    arrays = load_file(str(path))
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["manifest"])
    if manifest is not None:
        manifest(meta)
    if tensors is not None:
        tensors(arrays)
    save_file(arrays, str(out), metadata={"manifest": json.dumps(meta)})
    return out


def blob_span(path: Path, name: str) -> tuple[int, int]:
    """Absolute byte range of one tensor's data in a safetensors file."""
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + header_len])[name]["data_offsets"]
    return 8 + header_len + start, 8 + header_len + end


# -- round trip ----------------------------------------------------------------------------------------------------


def test_save_then_load_gives_identical_masks_draws_and_layouts(ticket: Ticket, ticket_file: Path) -> None:
    loaded = Ticket.load(ticket_file)
    assert (loaded.seed, loaded.input_shape, loaded.input_domain) == (
        ticket.seed,
        ticket.input_shape,
        ticket.input_domain,
    )
    assert loaded.steps == ticket.steps
    assert loaded.layouts == ticket.layouts
    for before, after in zip(ticket.masks, loaded.masks, strict=True):
        assert before.keys() == after.keys()
        for name in before:
            assert after[name].dtype == np.bool_ and np.array_equal(before[name], after[name])
    for before, after in zip(ticket.draws, loaded.draws, strict=True):
        assert after.dtype == np.uint8 and np.array_equal(before, after)
    assert any(d.any() for d in ticket.draws)  # the round trip covered stored draw indices
    assert loaded.build == json.loads(json.dumps(ticket.build))
    assert loaded.kept_hash() == ticket.kept_hash()


def test_save_then_load_regenerates_identical_network_tensors(ticket: Ticket, ticket_file: Path) -> None:
    before = ticket.to_module().state_dict()
    after = Ticket.load(ticket_file).to_module().state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == torch.float32 and torch.equal(before[key], after[key]), key


def test_declared_input_domain_survives_the_round_trip(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(3, 2))
    ticket = build_ticket(net, BuildConfig(n=6, input_domain=(0, 1), solver="mitm"), input_shape=(3,))
    loaded = Ticket.load(ticket.save(tmp_path / "t.ticket"))
    assert loaded.input_domain == (0.0, 1.0) and not any(d.any() for d in loaded.draws)


def test_file_holds_only_compressed_masks_and_draws_and_the_manifest(saved: Path, mlp_ticket: Ticket) -> None:
    arrays = load_file(str(saved))
    expected = {f"pair{k}.{name}.mask" for k, masks in enumerate(mlp_ticket.masks) for name in masks}
    expected |= {f"pair{k}.draws" for k, draws in enumerate(mlp_ticket.draws) if draws.any()}
    assert set(arrays) == expected
    assert all(a.dtype == np.uint8 and a.ndim == 1 for a in arrays.values())  # no weight values
    with safe_open(str(saved), "np") as f:
        manifest = json.loads(f.metadata()["manifest"])
    assert manifest["format"] == FORMAT and manifest["format_version"] == FORMAT_VERSION
    assert manifest["rng"] == RNG_LAYOUT and manifest["seed"] == mlp_ticket.seed
    assert manifest["sizes"] == mlp_ticket.sizes()
    assert manifest["kept_values_sha256"] == mlp_ticket.kept_hash()
    assert [PairLayout.from_dict(p) for p in manifest["pairs"]] == mlp_ticket.layouts


def candidate_positions(layout: PairLayout, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Where a mask may be True, as the manifest's mask_encoding states it.

    O: U > 0, beta > 0, V block diagonal; I: U block diagonal, beta > 0 on the bias block, V all.
    """
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    if layout.construction == "output_blocks":
        v = np.zeros((d_out, d_out, n), dtype=bool)
        v[np.arange(d_out), np.arange(d_out)] = True
        out = {"U": tensors["U"] > 0, "V": v.reshape(d_out, -1)}
        if layout.has_bias:
            out["beta"] = tensors["beta"] > 0
        return out
    blocks = d_in + int(layout.has_bias)
    u = np.zeros((blocks, n, d_in), dtype=bool)
    u[np.arange(d_in), :, np.arange(d_in)] = True
    out = {"U": u.reshape(-1, d_in), "V": np.ones((d_out, blocks * n), dtype=bool)}
    if layout.has_bias:
        beta = np.zeros((blocks, n), dtype=bool)
        beta[d_in] = tensors["beta"].reshape(blocks, n)[d_in] > 0
        out["beta"] = beta.reshape(-1)
    return out


def test_masks_and_draws_decode_as_the_manifest_documents(ticket: Ticket, ticket_file: Path) -> None:
    """Mask bits at the candidate positions only, numpy.packbits, LZMA; draws: LZMA-compressed uint8."""
    path = ticket_file
    arrays = load_file(str(path))
    with safe_open(str(path), "np") as f:
        encoding = json.loads(f.metadata()["manifest"])["mask_encoding"]
    assert "candidate positions" in encoding and "packbits" in encoding and "LZMA" in encoding
    for k, layout in enumerate(ticket.layouts):
        candidates = candidate_positions(layout, ticket.source_tensors(k))
        for name, shape in layout.shapes().items():
            raw = np.frombuffer(lzma.decompress(arrays[f"pair{k}.{name}.mask"].tobytes()), dtype=np.uint8)
            mask = np.zeros(shape, dtype=bool)
            mask[candidates[name]] = np.unpackbits(raw, count=int(candidates[name].sum())).astype(bool)
            assert np.array_equal(mask, ticket.masks[k][name])
        if ticket.draws[k].any():
            raw = np.frombuffer(lzma.decompress(arrays[f"pair{k}.draws"].tobytes()), dtype=np.uint8)
            assert np.array_equal(raw.reshape(layout.draw_shape), ticket.draws[k])


def test_a_mask_outside_its_construction_cannot_be_saved(mlp_ticket: Ticket, tmp_path: Path) -> None:
    masks = [{name: m.copy() for name, m in pair.items()} for pair in mlp_ticket.masks]
    masks[1]["V"][0, -1] = True  # V of an O pair off its block diagonal
    forged = Ticket(
        seed=mlp_ticket.seed,
        input_shape=mlp_ticket.input_shape,
        input_domain=None,
        steps=mlp_ticket.steps,
        layouts=mlp_ticket.layouts,
        masks=masks,
        draws=mlp_ticket.draws,
        build=mlp_ticket.build,
    )
    with pytest.raises(TicketFormatError, match="forbids"):
        forged.save(tmp_path / "forged.ticket")
    assert not (tmp_path / "forged.ticket").exists()


def _copy(ticket: Ticket, build: dict[str, Any] | None = None) -> Ticket:
    """A fresh Ticket with the same contents (no cached sources or hashes), optionally another build record."""
    return Ticket(
        seed=ticket.seed,
        input_shape=ticket.input_shape,
        input_domain=ticket.input_domain,
        steps=ticket.steps,
        layouts=ticket.layouts,
        masks=ticket.masks,
        draws=ticket.draws,
        build=ticket.build if build is None else build,
    )


def _with_sources(ticket: Ticket, edit: Callable[[dict[str, np.ndarray]], None], pair: int = 0) -> Ticket:
    """A copy of ``ticket`` whose regenerated tensors of ``pair`` (held form, as its masks) are edited (as if the
    generator had drawn them)."""
    copy = _copy(ticket)
    tensors = {name: t.copy() for name, t in ticket.held_tensors(pair).items()}
    edit(tensors)
    copy._held[pair] = tensors
    return copy


def _scaled_at(name: str, at: tuple[int, ...]) -> Callable[[dict[str, np.ndarray]], None]:
    """An edit of one source value: the entry ``at`` of tensor ``name`` halved (it is never 0)."""

    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[name][at] *= np.float32(0.5)

    return edit


def _with_mask(ticket: Ticket, pair: int, name: str, at: tuple[int, ...]) -> Ticket:
    """A copy of ``ticket`` with one mask entry of ``pair`` flipped."""
    masks = [{key: m.copy() for key, m in masks.items()} for masks in ticket.masks]
    masks[pair][name][at] = not masks[pair][name][at]
    copy = _copy(ticket)
    copy.masks = masks
    return copy


def _entries(ticket: Ticket) -> list[tuple[int, str, tuple[int, ...], tuple[int, ...]]]:
    """Per pair and tensor, the first kept and the first pruned entry (where the tensor has both)."""
    found = []
    for k, masks in enumerate(ticket.masks):
        for name, mask in masks.items():
            if mask.any() and not mask.all():
                found.append((k, name, tuple(np.argwhere(mask)[0]), tuple(np.argwhere(~mask)[0])))
    return found


def test_kept_hash_changes_with_every_kept_value_and_never_with_a_pruned_one(mlp_ticket: Ticket) -> None:
    entries = _entries(mlp_ticket)
    assert {name for _, name, _, _ in entries} == {"U", "beta", "V"}  # every tensor kind is exercised
    reference = mlp_ticket.kept_hash()
    for pair, name, kept, pruned in entries:
        assert _with_sources(mlp_ticket, _scaled_at(name, kept), pair).kept_hash() != reference, (pair, name)
        assert _with_sources(mlp_ticket, _scaled_at(name, pruned), pair).kept_hash() == reference, (pair, name)


def test_kept_hash_changes_when_a_mask_keeps_or_prunes_one_more_entry(mlp_ticket: Ticket) -> None:
    reference = mlp_ticket.kept_hash()
    for pair, name, kept, pruned in _entries(mlp_ticket):
        assert _with_mask(mlp_ticket, pair, name, kept).kept_hash() != reference, (pair, name, "pruned one more")
        assert _with_mask(mlp_ticket, pair, name, pruned).kept_hash() != reference, (pair, name, "kept one more")
    assert _copy(mlp_ticket).kept_hash() == reference  # a fresh copy hashes alike: nothing else enters


def test_kept_hash_covers_the_structure(mlp_ticket: Ticket) -> None:
    reference = mlp_ticket.kept_hash()
    wider = _copy(mlp_ticket)
    wider.input_shape = (mlp_ticket.input_shape[0] + 1,)
    reordered = _copy(mlp_ticket)
    reordered.steps = [step for step in mlp_ticket.steps if step["op"] != "relu"]
    assert wider.kept_hash() != reference
    assert reordered.kept_hash() != reference


@pytest.fixture(scope="module")
def pure_cnn_ticket(cnn: Any) -> Ticket:
    """The CNN's pure ticket (construction L in every pair: U held as its diagonal)."""
    return build_ticket(cnn.module, BuildConfig(n=12, solver="mitm"), input_shape=cnn.input_shape)


@pytest.mark.parametrize("name", ["pure_cnn_ticket", "cnn_ticket"])
def test_kept_hash_is_the_documented_dense_definition(name: str, request: pytest.FixtureRequest) -> None:
    """Structure JSON, then per unit and tensor its name and the dense view's kept float32 bytes: an L pair's U, held
    as its diagonal and streamed, hashes exactly as the whole masked U would."""
    ticket: Ticket = request.getfixturevalue(name)
    structure = {
        "input_shape": list(ticket.input_shape),
        "steps": ticket.steps,
        "pairs": [layout.to_dict() for layout in ticket.layouts],
    }
    digest = hashlib.sha256(json.dumps(structure, sort_keys=True).encode())
    held_somewhere = False
    for k, layout in enumerate(ticket.layouts):
        tensors, masks = ticket.source_tensors(k), ticket.dense_masks(k)
        held_somewhere |= any(masks[t].shape != ticket.masks[k][t].shape for t in masks)
        for t in layout.tensor_names:
            if t in tensors:
                digest.update(t.encode())
                digest.update(np.where(masks[t], tensors[t], np.float32(0)).tobytes())
    assert held_somewhere == (name == "pure_cnn_ticket")  # L pairs hold U as its diagonal, O and I pairs whole
    assert digest.hexdigest() == ticket.kept_hash()


def test_build_hash_covers_the_statistics_and_leaves_the_kept_hash_alone(mlp_ticket: Ticket) -> None:
    build = json.loads(json.dumps(mlp_ticket.build))
    build["pairs"][0]["weight_error_max"] /= 2
    edited = _copy(mlp_ticket, build)
    assert edited.build_hash() != mlp_ticket.build_hash()
    assert edited.kept_hash() == mlp_ticket.kept_hash()


# -- source kind and examined values -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_target() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.fixture(scope="module")
def pure_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pure ticket (inputs in [0, 1]: every pair O, so no draw index even where input blocks are redrawn)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ticket = build_ticket(net, BuildConfig(n=8, input_domain=(0, 1), solver="mitm"), input_shape=(3,))
    return ticket.save(tmp_path_factory.mktemp("pure") / "pure.ticket")


def test_a_pure_build_is_iid_and_examines_exactly_its_source(small_target: nn.Module, tmp_path: Path) -> None:
    ticket = build_ticket(small_target, BuildConfig(n=12), input_shape=(4,))
    sizes = ticket.sizes()
    assert not any(d.any() for d in ticket.draws)
    assert sizes["source_kind"] == "iid"
    assert sizes["examined_values"] == sizes["source_params"]
    assert [ticket.examined_values(k) for k in range(2)] == [layout.source_params() for layout in ticket.layouts]
    loaded = Ticket.load(ticket.save(tmp_path / "t.ticket"))
    assert loaded.sizes() == sizes


def test_a_rerandomized_build_states_so_and_counts_its_discarded_draws(small_target: nn.Module) -> None:
    ticket = build_ticket(small_target, BuildConfig(n=12, resample=8, tolerance=0.0), input_shape=(4,))
    sizes = ticket.sizes()
    assert any(d.any() for d in ticket.draws)  # tolerance 0: some unit was redrawn
    assert sizes["source_kind"] == "rerandomized"
    assert sizes["examined_values"] is not None, "the builder records no examined_values in build['pairs']"
    assert sizes["examined_values"] > sizes["source_params"]


def test_manifest_states_source_kind_and_examined_values(saved: Path, pure_file: Path) -> None:
    for path, kind in ((saved, "rerandomized"), (pure_file, "iid")):
        with safe_open(str(path), "np") as f:
            manifest = json.loads(f.metadata()["manifest"])
        ticket = Ticket.load(path)
        assert manifest["sizes"]["source_kind"] == kind == ticket.sizes()["source_kind"]
        assert manifest["sizes"]["examined_values"] == ticket.sizes()["examined_values"]
        assert manifest["build_sha256"] == ticket.build_hash()
    assert manifest["sizes"]["examined_values"] == manifest["sizes"]["source_params"]  # the pure one


def _scale_error(m: dict[str, Any]) -> None:
    m["build"]["pairs"][0]["weight_error_max"] /= 10


def _scale_error_and_drop_the_digest(m: dict[str, Any]) -> None:
    _scale_error(m)
    del m["build_sha256"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_scale_error, "build_sha256"),
        (lambda m: m["build"]["pairs"][1].update(usable_mean=99.0), "build_sha256"),
        (lambda m: m["build"].update(solver="gurobi"), "build_sha256"),
        (_scale_error_and_drop_the_digest, "build_sha256"),
        (lambda m: m["build"]["pairs"][0].update(examined_values=10**9), "examined_values|build_sha256"),
        (lambda m: m["sizes"].update(source_kind="iid"), "source_kind 'iid' stored, 'rerandomized' recomputed"),
        (lambda m: m["sizes"].update(examined_values=10**9), "examined_values"),
        (lambda m: m["sizes"].update(kept_params=m["sizes"]["kept_params"] - 1), "kept_params"),
        (lambda m: m.pop("sizes"), "sizes"),
        (lambda m: m.update(resampled=[False] * len(m["resampled"])), "resampled"),
    ],
    ids=[
        "weight_error_max",
        "usable_mean",
        "solver",
        "digest-removed",
        "build-examined_values",
        "sizes-source_kind",
        "sizes-examined_values",
        "sizes-kept",
        "sizes-removed",
        "resampled",
    ],
)
def test_edited_build_statistics_are_refused(
    saved: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError, match=message):
        Ticket.load(bad)
    Ticket.load(bad, verify_hash=False)  # the network itself is intact


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["sizes"].update(source_kind="rerandomized"), "source_kind"),
        (lambda m: m["sizes"].update(examined_values=m["sizes"]["examined_values"] * 100), "examined_values"),
        (lambda m: m["build"]["pairs"][0].update(weight_error_max=0.0), "build_sha256"),
    ],
    ids=["source_kind", "examined_values", "weight_error_max"],
)
def test_edited_statistics_of_a_pure_ticket_are_refused(
    pure_file: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    bad = rewrite(pure_file, tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError, match=message):
        Ticket.load(bad)


def test_a_pure_pair_claiming_more_examined_values_is_refused_even_with_a_matching_digest(
    pure_file: Path, tmp_path: Path
) -> None:
    """The digest is only a checksum: what can be recomputed (a pure pair examines its source) is recomputed."""
    forged = Ticket.load(pure_file)
    forged.build["pairs"][0]["examined_values"] = forged.layouts[0].source_params() * 2

    def consistent(m: dict[str, Any]) -> None:
        m["build"] = forged.build
        m["sizes"] = dict(forged.sizes())
        m["build_sha256"] = forged.build_hash()

    bad = rewrite(pure_file, tmp_path / "bad.ticket", manifest=consistent)
    with pytest.raises(TicketFormatError, match="pair 0 records examined_values .*a pure pair examines exactly"):
        Ticket.load(bad)


# -- size ----------------------------------------------------------------------------------------------------------


def test_ticket_file_is_tiny(saved: Path, mlp_ticket: Ticket) -> None:
    assert saved.stat().st_size < 16 * 1024
    assert saved.stat().st_size < 4 * mlp_ticket.sizes()["source_params"] / 2  # float32 network: 19.6 KB


def test_masks_are_stored_compressed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))
    ticket = build_ticket(net, BuildConfig(n=16, solver="mitm"), input_shape=(48,))
    path = ticket.save(tmp_path / "t.ticket")
    source = ticket.sizes()["source_params"]
    stored = sum(a.nbytes for a in load_file(str(path)).values())
    assert stored < source / 8 / 2  # under half of one bit per random entry
    assert path.stat().st_size < 4 * source / 20  # and the file under 5 % of the float32 network


# -- counting --------------------------------------------------------------------------------------------------------


def test_sizes_count_kept_and_pruned_entries_of_the_source(ticket: Ticket) -> None:
    sizes = ticket.sizes()
    network = ticket.to_module()
    source = sum(
        (layout.hidden * layout.d_in + layout.d_out * layout.hidden + layout.hidden * int(layout.has_bias))
        for layout in ticket.layouts
    )
    assert sizes["source_params"] == source
    assert sizes["kept_params"] + sizes["pruned_params"] == sizes["source_params"]
    assert all((ticket.source_tensors(k)[name] != 0).all() for k in range(len(ticket.layouts)) for name in ("U", "V"))
    assert sizes["kept_params"] == sum(int(torch.count_nonzero(p)) for p in network.parameters())
    assert sizes["kept_params"] == sum(int(m.sum()) for masks in ticket.masks for m in masks.values())


def test_target_params_count_the_target_layers(cnn: Any, cnn_ticket: Ticket) -> None:
    layers = [m for m in cnn.module if isinstance(m, nn.Linear | nn.Conv2d)]
    assert cnn_ticket.sizes()["target_params"] == sum(m.weight.numel() + m.bias.numel() for m in layers)


# -- prune buffers ---------------------------------------------------------------------------------------------------


def test_prune_buffers_hold_the_source_and_mask_whose_product_is_the_pruned_weight(ticket: Ticket) -> None:
    plain = [m for m in ticket.to_module() if isinstance(m, PrunedPair)]
    buffered = ticket.to_module(prune_buffers=True)
    pairs = [m for m in buffered if isinstance(m, PrunedPair)]
    for k, (p, b) in enumerate(zip(plain, pairs, strict=True)):
        tensors = ticket.source_tensors(k)
        for layer, attr, name in (("first", "weight", "U"), ("first", "bias", "beta"), ("second", "weight", "V")):
            if getattr(getattr(p, layer), attr) is None:
                continue
            module = getattr(b, layer)
            orig, mask = getattr(module, f"{attr}_orig"), getattr(module, f"{attr}_mask")
            assert dict(module.named_buffers())[f"{attr}_mask"] is mask
            assert np.array_equal(orig.detach().numpy().reshape(tensors[name].shape), tensors[name])
            assert torch.equal(orig * mask, getattr(getattr(p, layer), attr))
            assert torch.equal(getattr(module, attr), getattr(getattr(p, layer), attr))
    x = torch.randn(3, *ticket.input_shape)
    assert torch.equal(buffered(x), ticket.to_module()(x))


# -- refused files ---------------------------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TicketFormatError, match="cannot read ticket"):
        Ticket.load(tmp_path / "absent.ticket")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, np.random.default_rng(0).bytes(4096), b"PK\x03\x04" + b"\x00" * 100],
    ids=["empty", "seven-zero-bytes", "random-bytes", "zip-header"],
)
def test_files_that_are_not_safetensors_are_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.ticket"
    path.write_bytes(content)
    with pytest.raises(TicketFormatError, match="not a ticketsolver ticket"):
        Ticket.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 10])
def test_truncated_files_are_refused(saved: Path, tmp_path: Path, keep: float) -> None:
    data = saved.read_bytes()
    cut = tmp_path / "cut.ticket"
    cut.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(TicketFormatError):
        Ticket.load(cut)


def _safetensors_bytes(header: dict[str, Any], body: bytes, declared: int | None = None) -> bytes:
    """A hand-made safetensors file: 8-byte little-endian header length (``declared`` if given), JSON, data."""
    raw = json.dumps(header).encode()
    return (len(raw) if declared is None else declared).to_bytes(8, "little") + raw + body


_BLOB = {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}
_MANIFEST = {"__metadata__": {"manifest": json.dumps({"format": FORMAT})}}


@pytest.mark.parametrize(
    "content",
    [
        _safetensors_bytes({**_MANIFEST, "a": _BLOB}, b"abc", declared=2**63),
        _safetensors_bytes({**_MANIFEST, "a": _BLOB}, b"abc", declared=10**6),
        _safetensors_bytes({**_MANIFEST, "a": _BLOB}, b"abc", declared=101_000_000),
        _safetensors_bytes({**_MANIFEST, "a": {**_BLOB, "shape": [2**40, 2**40]}}, b"abc"),
        _safetensors_bytes({**_MANIFEST, "a": {**_BLOB, "data_offsets": [0, 3 * 2**30]}}, b"abc"),
        _safetensors_bytes({**_MANIFEST, "a": _BLOB, "b": _BLOB}, b"abc"),
        _safetensors_bytes({**_MANIFEST, "a": _BLOB}, b"abc" + b"\0" * 64),
        _safetensors_bytes({"__metadata__": {"manifest": 5}, "a": _BLOB}, b"abc"),
        _safetensors_bytes(
            {**_MANIFEST, "a": {**_BLOB, "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"abcd"
        ),
        _safetensors_bytes({**_MANIFEST, "a": {**_BLOB, "shape": [3, 1]}}, b"abc"),
        (4).to_bytes(8, "little") + b"\xff\xfe{}",
    ],
    ids=[
        "header-length-2^63",
        "header-length-beyond-the-file",
        "header-over-100MB",
        "shape-overflows",
        "offsets-beyond-the-file",
        "overlapping-tensors",
        "bytes-no-tensor-covers",
        "manifest-not-a-string",
        "float-tensor",
        "two-dimensional-blob",
        "header-not-utf8",
    ],
)
def test_hostile_safetensors_headers_are_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "hostile.ticket"
    path.write_bytes(content)
    with pytest.raises(TicketFormatError, match="not a ticketsolver ticket"):
        Ticket.load(path)


def test_a_fifo_is_refused_without_reading_from_it(tmp_path: Path) -> None:
    """Reading a pipe would block for ever (and /dev/zero would never end): only regular files are read."""
    fifo = tmp_path / "pipe.ticket"
    os.mkfifo(fifo)
    with pytest.raises(TicketFormatError, match="not a regular file"):
        Ticket.load(fifo)


def test_safetensors_file_without_a_manifest_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(TicketFormatError, match="not a ticketsolver ticket"):
        Ticket.load(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(other), metadata={"format": "pt"})
    with pytest.raises(TicketFormatError, match="not a ticketsolver ticket"):
        Ticket.load(other)
    not_json = tmp_path / "not-json.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(not_json), metadata={"manifest": "{oops"})
    with pytest.raises(TicketFormatError, match="not a ticketsolver ticket"):
        Ticket.load(not_json)


@pytest.mark.parametrize("edit", [{"format": "something.else"}, {"format": None}], ids=["other", "none"])
def test_manifest_of_another_format_is_refused(saved: Path, tmp_path: Path, edit: dict[str, Any]) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=lambda m: m.update(edit))
    with pytest.raises(TicketFormatError, match="not a ticketsolver ticket"):
        Ticket.load(bad)


@pytest.mark.parametrize("version", [0, 1, 2, FORMAT_VERSION + 1, str(FORMAT_VERSION), True, None])
def test_manifest_with_another_format_version_is_refused(saved: Path, tmp_path: Path, version: Any) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=lambda m: m.update(format_version=version))
    with pytest.raises(TicketFormatError, match="format version"):
        Ticket.load(bad)


@pytest.mark.parametrize("position", [0.3, 0.5, 0.7])
def test_flipped_bit_in_a_mask_is_refused(saved: Path, tmp_path: Path, position: float) -> None:
    start, end = blob_span(saved, "pair0.V.mask")
    data = bytearray(saved.read_bytes())
    data[start + int((end - start) * position)] ^= 0x10
    flipped = tmp_path / "flipped.ticket"
    flipped.write_bytes(bytes(data))
    with pytest.raises(TicketFormatError, match="corrupt compressed data|after decompression|stored hash"):
        Ticket.load(flipped)


def test_a_mask_of_another_pattern_fails_the_hash(saved: Path, tmp_path: Path) -> None:
    """A well-formed but different mask decodes fine and is caught by the hash of the kept values."""

    def swap(arrays: dict[str, np.ndarray]) -> None:
        mask = np.unpackbits(np.frombuffer(lzma.decompress(arrays["pair1.V.mask"].tobytes()), np.uint8))
        mask[np.flatnonzero(mask)[0]] = 0
        arrays["pair1.V.mask"] = np.frombuffer(lzma.compress(np.packbits(mask).tobytes()), np.uint8)

    bad = rewrite(saved, tmp_path / "bad.ticket", tensors=swap)
    with pytest.raises(TicketFormatError, match="does not match the stored hash"):
        Ticket.load(bad)
    assert Ticket.load(bad, verify_hash=False).masks[1]["V"].sum() == Ticket.load(saved).masks[1]["V"].sum() - 1


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(seed=m["seed"] + 1),
        lambda m: m["pairs"][0]["scales"].update(U=m["pairs"][0]["scales"]["U"] * 1.001),
        lambda m: m["pairs"][1].update(pair=2),
    ],
    ids=["other-seed", "other-scale", "other-stream"],
)
def test_manifest_that_regenerates_other_values_is_refused(
    saved: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Other random values move the candidate positions (mask length) or, failing that, the kept-value hash."""
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError, match="does not match the stored hash|after decompression|numbered 0, 1"):
        Ticket.load(bad)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("pairs"),
        lambda m: m.pop("seed"),
        lambda m: m["pairs"][0].pop("d_out"),
        lambda m: m["pairs"][0].update(construction="middle_blocks"),
        lambda m: m["pairs"][0].update(n=0),
        lambda m: m["pairs"][0].update(conv={"in_channels": 1}),
        lambda m: m["pairs"].append(dict(m["pairs"][0], pair=3)),
        lambda m: m.update(input_shape=["x"]),
    ],
    ids=[
        "no-pairs",
        "no-seed",
        "no-d_out",
        "unknown-construction",
        "n-zero",
        "conv-on-linear",
        "extra-pair",
        "bad-input-shape",
    ],
)
def test_malformed_manifest_is_refused(saved: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError):
        Ticket.load(bad)


def test_missing_mask_tensor_is_refused(saved: Path, tmp_path: Path) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", tensors=lambda arrays: arrays.pop("pair2.U.mask"))
    with pytest.raises(TicketFormatError, match="pair2.U.mask"):
        Ticket.load(bad)


@pytest.mark.parametrize(
    "shape",
    [{"d_in": 10**9}, {"d_in": 10**12}, {"d_out": 2**62, "n": 4}],
    ids=["d_in-1e9", "d_in-1e12", "d_out-2^62"],
)
def test_absurd_shapes_are_refused_without_allocating_them(saved: Path, tmp_path: Path, shape: dict[str, int]) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=lambda m: m["pairs"][0].update(shape))
    tracemalloc.start()
    try:
        with pytest.raises(TicketFormatError):
            Ticket.load(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20  # the LZMA decoder's 64 MiB dictionary (preset 9) is the fixed cost


def test_a_large_claimed_source_is_refused_before_it_is_regenerated(saved: Path, tmp_path: Path) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=lambda m: m["pairs"][0].update(n=10**5))
    tracemalloc.start()
    try:
        with pytest.raises(TicketFormatError):
            Ticket.load(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20


def test_oversized_file_is_refused_before_reading(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact, "MAX_TICKET_BYTES", saved.stat().st_size - 1)
    with pytest.raises(TicketFormatError, match="a ticket is at most"):
        Ticket.load(saved)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(seed=-1),
        lambda m: m.update(seed=2**64),
        lambda m: m["pairs"][0].update(pair=-1),
        lambda m: m["pairs"][0]["scales"].update(U=-1.0),
        lambda m: m["pairs"][0]["scales"].update(V=math.nan),
        lambda m: m["pairs"][0]["scales"].pop("beta"),
    ],
    ids=["negative-seed", "huge-seed", "negative-pair", "negative-scale", "nan-scale", "missing-scale"],
)
def test_invalid_manifest_values_are_refused_as_format_errors(
    saved: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]
) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError):
        Ticket.load(bad)


def test_a_pair_entry_that_is_not_an_object_is_refused_as_a_format_error(saved: Path, tmp_path: Path) -> None:
    bad = rewrite(saved, tmp_path / "bad.ticket", manifest=lambda m: m.update(pairs=["not an object"]))
    with pytest.raises(TicketFormatError):
        Ticket.load(bad)


def _drop_pair(manifest: dict[str, Any], pair: int) -> None:
    manifest["steps"] = [s for s in manifest["steps"] if s != {"op": "pair", "pair": pair}]


@pytest.mark.parametrize(
    ("which", "edit"),
    [
        ("mlp_ticket", lambda m: m["steps"][0].update(pair=7)),
        ("mlp_ticket", lambda m: _drop_pair(m, 1)),
        ("mlp_ticket", lambda m: m["steps"].insert(2, {"op": "pair", "pair": 0})),
        ("mlp_ticket", lambda m: m.update(steps="abc")),
        ("cnn_ticket", lambda m: m["pairs"][0]["conv"].update(padding=[0, 0])),
    ],
    ids=["pair-out-of-range", "pair-left-out", "pair-repeated", "steps-not-a-list", "conv-padding-changed"],
)
def test_a_manifest_describing_another_network_is_refused(
    which: str,
    edit: Callable[[dict[str, Any]], None],
    request: pytest.FixtureRequest,
    _files: dict[str, Path],
    tmp_path: Path,
) -> None:
    bad = rewrite(_saved_once(which, request, _files), tmp_path / "bad.ticket", manifest=edit)
    with pytest.raises(TicketFormatError):
        Ticket.load(bad)


def test_a_directory_is_refused_as_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(TicketFormatError):
        Ticket.load(tmp_path)


def test_source_params_counts_absurd_layouts_exactly() -> None:
    layout = PairLayout(
        pair=0,
        construction="input_blocks",
        kind="linear",
        d_out=1,
        d_in=10**9,
        n=12,
        has_bias=True,
        scales={"U": 1.0, "V": 1.0, "beta": 1.0},
    )
    hidden = (10**9 + 1) * 12
    assert layout.source_params() == hidden * 10**9 + hidden + hidden
