"""A graph ticket through the command line and its exports: ONNX (runs in onnxruntime, dynamic batch, holds no trained
tensor, two weighted ops per unit at least) and safetensors (source, mask and pruned weight of every pair)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from ticketsolver import BuildConfig, Ticket, build_ticket
from ticketsolver.cli import app
from ticketsolver.models import load_target
from ticketsolver.ticket import export_ticket
from ticketsolver.ticket.flops import multiply_adds

runner = CliRunner()


class TinyViT(nn.Module):
    """Patch conv, class token, positions, a pre-LN attention block with a GELU MLP, a head on the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = nn.Conv2d(1, 8, 4, stride=4)
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.positions = nn.Parameter(0.1 * torch.randn(1, 5, 8))
        self.norm = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.positions
        q, k, v = self.qkv(self.norm(tokens)).unsqueeze(1).chunk(3, dim=-1)  # one head: (batch, 1, tokens, 8)
        tokens = tokens + F.scaled_dot_product_attention(q, k, v).squeeze(1)
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens[:, 0])


class TinyCharModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(9, 8)
        self.positions = nn.Parameter(0.1 * torch.randn(1, 6, 8))
        self.head = nn.Linear(8, 9)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.embedding(ids) + self.positions))


def _save(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.manual_seed(0)
    program = torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("graph-models")
    torch.manual_seed(0)
    return {
        "vit": _save(TinyViT(), torch.rand(2, 1, 8, 8), folder / "vit.pt2"),
        "char": _save(TinyCharModel(), torch.randint(0, 9, (2, 6)), folder / "char.pt2"),
    }


def _inputs(name: str, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    if name == "char":
        return torch.randint(0, 9, (batch, 6), generator=generator)
    return torch.rand(batch, 1, 8, 8, generator=generator) * 2 - 1


@pytest.mark.parametrize("name", ["vit", "char"])
def test_onnx_export_runs_holds_no_trained_tensor_and_doubles_the_weighted_ops(
    name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    target = load_target(models[name])
    ticket = build_ticket(target, BuildConfig(n=10))
    path = export_ticket(ticket, tmp_path / "g.onnx", "onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    trained = [t.numpy().reshape(-1) for unit in target.tensors for t in unit.values()]
    for key, value in initializers.items():
        flat = value.reshape(-1).astype(np.float64)
        for t in trained:
            close = flat.size == t.size and np.allclose(flat, t, rtol=1e-3, atol=1e-6 * max(1.0, np.abs(t).max()))
            assert not close, f"initializer {key} is a trained tensor of the target"
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "Gather")]
    assert len(weighted) >= 2 * len(target.spec.units)
    session = ort.InferenceSession(str(path))
    for batch in (1, 5):  # the batch is dynamic
        x = _inputs(name, batch)
        out = session.run(None, {"input": x.numpy() if name == "char" else x.float().numpy()})[0]
        with torch.no_grad():
            expected = ticket.to_module()(x if name == "char" else x.float()).numpy()
        assert out.shape == expected.shape
        assert np.abs(out - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_safetensors_export_names_every_pair_source_mask_and_pruned_weight(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors import safe_open

    ticket = build_ticket(load_target(models["vit"]), BuildConfig(n=10))
    path = export_ticket(ticket, tmp_path / "g.safetensors", "safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        compact = json.loads((f.metadata() or {}).get("compact_pairs", "[]"))
        # L pairs of convs and Linears, held as a grouped conv of U's diagonal (the patch conv, qkv, the MLP, the
        # head); the class token's and the positions' pairs (fed by a constant 1) stay dense
        assert compact == [k for k in range(len(ticket.layouts)) if ticket.runs_held(k)]
        assert 0 in compact and len(compact) == 5 < len(ticket.layouts)
        for k in range(len(ticket.layouts)):
            extra = ("bias_offsets", "bias_weight") if k in compact else ()
            for tensor in ("first.weight", "first.bias", "second.weight", *extra):
                assert {f"{k}.{tensor}", f"{k}.{tensor}.source", f"{k}.{tensor}.mask"} <= keys
                pruned, source, mask = (f.get_tensor(f"{k}.{tensor}{s}") for s in ("", ".source", ".mask"))
                assert torch.equal(pruned, source * mask)
        # the grouped weight's source is U's diagonal, one entry per unit: the held values of the ticket
        grouped = f.get_tensor("0.first.weight.source")
        assert grouped.shape[1] == 1 and int(torch.count_nonzero(grouped)) == ticket.held_tensors(0)["U"].size
    # every pair's layers are counted, an OffsetPair's bias block too (it runs its units, not its layers' forward)
    count = multiply_adds(ticket.to_module(), tuple(ticket.input_shape))
    assert count.layers == 3 * len(compact) + 2 * (len(ticket.layouts) - len(compact))
    assert 0 < count.kept < count.dense


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_graph_verification_on_an_absent_cuda_device_is_refused(models: dict[str, Path]) -> None:
    from ticketsolver import VerifyConfig, verify
    from ticketsolver.errors import VerificationError

    target = load_target(models["vit"])
    ticket = build_ticket(target, BuildConfig(n=10))
    with pytest.raises(VerificationError, match="no CUDA device"):
        verify(target, ticket, VerifyConfig(n_random=4), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_verification_on_the_gpu_matches_the_cpu(models: dict[str, Path]) -> None:
    from ticketsolver import VerifyConfig, verify

    target = load_target(models["vit"])
    ticket = build_ticket(target, BuildConfig(n=10))
    config = VerifyConfig(n_random=64, worst_case_steps=5)
    gpu, cpu = (verify(target, ticket, config, device=d) for d in ("cuda", "cpu"))
    assert gpu.device.startswith("cuda") and "TF32 off" in gpu.device_note
    for dtype, rel in (("float64", 1e-9), ("float32", 1e-2)):
        assert gpu.sections["random"][dtype].max_abs_error == pytest.approx(
            cpu.sections["random"][dtype].max_abs_error, rel=rel
        )


def test_cli_build_verify_inspect_a_graph(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "vit.ticket"
    result = runner.invoke(app, ["build", str(models["vit"]), "--n", "20", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "no certified bound for a graph" in result.output
    report = json.loads((tmp_path / "vit.report.json").read_text())["verification"]
    assert report["sections"]["random"]["float64"]["relative_error_max"] < 0.05
    assert len(report["layers"]["float64"]) == len(Ticket.load(out).graph.units)
    inspected = runner.invoke(app, ["inspect", str(out)])
    assert inspected.exit_code == 0 and "graph:" in inspected.output, inspected.output


def test_cli_verify_takes_the_inputs_dtypes_and_search_it_is_given(models: dict[str, Path], tmp_path: Path) -> None:
    """A large network is verified on fewer inputs: --data-limit, --random, --dtypes and --worst-case-starts reach the
    report; a bad value is a usage error naming the field, and the options need --against."""
    target = load_target(models["vit"])
    ticket = build_ticket(target, BuildConfig(n=10)).save(tmp_path / "vit.ticket")
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).random((9, 1, 8, 8), dtype=np.float32), y=np.arange(9) % 3)
    options = ["--data", str(data), "--data-limit", "5", "--random", "7", "--dtypes", "float64"]
    json_path = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "verify",
            str(ticket),
            "--against",
            str(models["vit"]),
            *options,
            "--worst-case-starts",
            "0",
            "--json",
            str(json_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(json_path.read_text())
    assert report["dtypes"] == ["float64"]
    assert report["sections"]["data"]["float64"]["n_inputs"] == 5
    assert report["sections"]["random"]["float64"]["n_inputs"] == 7
    assert report["worst_case"] == {}
    bad = runner.invoke(app, ["verify", str(ticket), "--against", str(models["vit"]), "--dtypes", "float16"])
    assert bad.exit_code == 2 and "dtypes" in bad.output, bad.output
    alone = runner.invoke(app, ["verify", str(ticket), "--data", str(data), "--random", "7"])
    assert alone.exit_code == 2 and "--random applies with --against only" in alone.output, alone.output
