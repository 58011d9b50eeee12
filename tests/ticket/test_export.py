"""Exports: ONNX that onnxruntime runs without ticketsolver, and a pruned safetensors state_dict.

References: ``ticket.to_module()`` (the network the export must equal), the ticket's own source tensors and
masks, and a separate Python process that imports only onnxruntime, safetensors and NumPy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ticketsolver import BuildConfig, build_ticket
from ticketsolver.construction.pair import PrunedPair
from ticketsolver.errors import ConfigError
from ticketsolver.ticket import EXPORT_FORMATS, Ticket, export_onnx, export_safetensors, export_ticket

from .checks import check_pruned_equals_source_times_mask


@pytest.fixture(scope="module")
def onnx_file(cnn_ticket: Ticket, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CNN ticket as ONNX (conv with stride and padding, dilated conv, ReLU, AvgPool, Flatten, Linear)."""
    return export_onnx(cnn_ticket, tmp_path_factory.mktemp("onnx") / "cnn.onnx")


@pytest.fixture(scope="module")
def safetensors_file(cnn_ticket: Ticket, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_safetensors(cnn_ticket, tmp_path_factory.mktemp("safetensors") / "cnn.safetensors")


def reference_outputs(ticket: Ticket, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ticket.to_module()(torch.from_numpy(x)).numpy()


def run_standalone(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter that must not import ticketsolver or torch."""
    guard = "\nimport sys\nassert 'ticketsolver' not in sys.modules and 'torch' not in sys.modules, 'imported'\n"
    path = tmp_path / "standalone.py"
    path.write_text(textwrap.dedent(script) + guard)
    return subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)


# -- ONNX --------------------------------------------------------------------------------------------------------------


def test_onnx_has_named_input_and_output_with_a_dynamic_batch(onnx_file: Path, cnn_ticket: Ticket) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert inp.type == "tensor(float)"
    assert not isinstance(inp.shape[0], int) and list(inp.shape[1:]) == list(cnn_ticket.input_shape)


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_output_equals_the_ticket_network(onnx_file: Path, cnn_ticket: Ticket, batch: int) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).standard_normal((batch, *cnn_ticket.input_shape)).astype(np.float32)
    (got,) = session.run(["output"], {"input": x})
    expected = reference_outputs(cnn_ticket, x)
    assert got.shape == expected.shape == (batch, 3)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_onnx_runs_with_onnxruntime_and_numpy_alone(onnx_file: Path, cnn_ticket: Ticket, tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, *cnn_ticket.input_shape), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_standalone(
        f"""
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession({str(onnx_file)!r}, providers=["CPUExecutionProvider"])
        np.save("y.npy", session.run(["output"], {{"input": np.load("x.npy")}})[0])
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected = reference_outputs(cnn_ticket, x)
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() <= 1e-5 * np.abs(expected).max()


# -- safetensors -------------------------------------------------------------------------------------------------------


def test_safetensors_names_follow_the_documented_scheme(safetensors_file: Path, cnn_ticket: Ticket) -> None:
    tensors = load_file(str(safetensors_file))
    pruned = {key for key in tensors if not key.endswith((".source", ".mask"))}
    assert pruned == set(cnn_ticket.to_module().state_dict())  # {step}.{first|second}.{weight|bias}
    assert set(tensors) == {f"{key}{suffix}" for key in pruned for suffix in ("", ".source", ".mask")}
    steps = [i for i, step in enumerate(cnn_ticket.steps) if step["op"] == "pair"]
    assert {key.split(".")[0] for key in pruned} == {str(s) for s in steps}


def test_every_pruned_tensor_is_its_source_times_its_mask(safetensors_file: Path, cnn_ticket: Ticket) -> None:
    tensors = load_file(str(safetensors_file))
    steps = [i for i, step in enumerate(cnn_ticket.steps) if step["op"] == "pair"]
    for k, step in enumerate(steps):
        source = cnn_ticket.source_tensors(k)
        for key, name in (
            (f"{step}.first.weight", "U"),
            (f"{step}.first.bias", "beta"),
            (f"{step}.second.weight", "V"),
        ):
            mask = tensors[f"{key}.mask"]
            assert mask.dtype == np.bool_ and tensors[key].dtype == tensors[f"{key}.source"].dtype == np.float32
            assert np.array_equal(tensors[f"{key}.source"].ravel(), source[name].ravel())
            assert np.array_equal(mask.ravel(), cnn_ticket.masks[k][name].ravel())
            assert np.array_equal(tensors[key], tensors[f"{key}.source"] * mask)
    assert check_pruned_equals_source_times_mask(safetensors_file)


def test_safetensors_metadata_identifies_the_ticket(safetensors_file: Path, cnn_ticket: Ticket) -> None:
    with safe_open(str(safetensors_file), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "ticketsolver.pruned-network"
    assert meta["kept_values_sha256"] == cnn_ticket.kept_hash()
    assert json.loads(meta["steps"]) == cnn_ticket.steps
    assert json.loads(meta["input_shape"]) == list(cnn_ticket.input_shape)
    sizes = cnn_ticket.sizes()
    assert meta["source_kind"] == sizes["source_kind"] == "rerandomized"
    examined = sizes["examined_values"]
    assert meta["examined_values"] == (str(examined) if examined is not None else "unrecorded")


def test_a_pure_tickets_export_states_iid_and_holds_every_source_at_draw_0(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ticket = build_ticket(net, BuildConfig(n=8, input_domain=(0, 1), solver="mitm"), input_shape=(3,))
    path = export_safetensors(ticket, tmp_path / "pure.safetensors")
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    identity = {"format", "naming", "steps", "input_shape", "kept_values_sha256"}  # what every export states
    assert set(meta) == identity | {"source_kind", "examined_values", "source_laws"}
    assert meta["source_kind"] == "iid" and meta["examined_values"] == str(ticket.sizes()["source_params"])
    tensors = load_file(str(path))
    pair_steps = [i for i, step in enumerate(ticket.steps) if step["op"] == "pair"]
    for step, layout in zip(pair_steps, ticket.layouts, strict=True):
        for key, name in (("first.weight", "U"), ("first.bias", "beta"), ("second.weight", "V")):
            law = layout.tensor(ticket.source, name, draw=0)  # the tensor's law at draw 0, nothing redrawn
            assert np.array_equal(tensors[f"{step}.{key}.source"].ravel(), law.ravel())
    assert check_pruned_equals_source_times_mask(path)


def test_the_pruned_check_fails_a_tensor_that_is_not_its_source_times_its_mask(
    safetensors_file: Path, tmp_path: Path
) -> None:
    tensors = load_file(str(safetensors_file))
    key = next(k for k in tensors if not k.endswith((".source", ".mask")))
    kept = np.argwhere(tensors[f"{key}.mask"])[0]
    edited = dict(tensors, **{key: tensors[key].copy()})
    edited[key][tuple(kept)] *= np.float32(1.5)  # a kept entry that is no longer its source value
    save_file(edited, str(tmp_path / "edited.safetensors"))
    assert not check_pruned_equals_source_times_mask(tmp_path / "edited.safetensors")
    without_mask = {k: v for k, v in tensors.items() if k != f"{key}.mask"}
    save_file(without_mask, str(tmp_path / "no-mask.safetensors"))
    assert not check_pruned_equals_source_times_mask(tmp_path / "no-mask.safetensors")
    save_file({k: v for k, v in tensors.items() if k.endswith(".source")}, str(tmp_path / "none.safetensors"))
    assert not check_pruned_equals_source_times_mask(tmp_path / "none.safetensors")


def test_pruned_tensors_load_into_the_network_and_reproduce_its_outputs(
    safetensors_file: Path, cnn_ticket: Ticket
) -> None:
    tensors = {k: torch.from_numpy(v) for k, v in load_file(str(safetensors_file)).items()}
    pruned = {k: v for k, v in tensors.items() if not k.endswith((".source", ".mask"))}
    network = cnn_ticket.to_module()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
    network.load_state_dict(pruned, strict=True)
    x = torch.randn(4, *cnn_ticket.input_shape)
    assert torch.equal(network(x), cnn_ticket.to_module()(x))
    assert sum(isinstance(m, PrunedPair) for m in network) == len(cnn_ticket.layouts)


def test_safetensors_export_is_checkable_with_numpy_alone(safetensors_file: Path, tmp_path: Path) -> None:
    result = run_standalone(
        f"""
        import numpy as np
        from safetensors.numpy import load_file
        tensors = load_file({str(safetensors_file)!r})
        keys = [k for k in tensors if not k.endswith((".source", ".mask"))]
        assert keys and all(np.array_equal(tensors[k], tensors[k + ".source"] * tensors[k + ".mask"]) for k in keys)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_export_ticket_dispatches_by_format_and_refuses_unknown_ones(mlp_ticket: Ticket, tmp_path: Path) -> None:
    assert EXPORT_FORMATS == ("onnx", "safetensors")
    path = export_ticket(mlp_ticket, tmp_path / "mlp.safetensors", "safetensors")
    assert check_pruned_equals_source_times_mask(path)
    with pytest.raises(ConfigError, match="unknown export format 'bogus'.*onnx, safetensors"):
        export_ticket(mlp_ticket, tmp_path / "x", "bogus")
