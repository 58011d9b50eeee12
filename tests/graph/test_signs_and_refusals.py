"""Sign analysis picks construction O where a unit's input is provably >= 0 (after ReLU, ReLU6) and I where it is not
(after GELU, after LayerNorm, a signed input); an op that is neither weighted nor replayable is refused with the
module that holds it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ticketsolver import BuildConfig, build_ticket
from ticketsolver.errors import UnsupportedModuleError
from ticketsolver.graph import capture_program
from ticketsolver.graph.signs import unit_input_signs
from ticketsolver.models import load_target


def _export(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    return torch.export.export(module.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


class Branches(nn.Module):
    """Four heads, each reading its own kind of activation of one trunk."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(6, 8)
        self.after_relu6 = nn.Linear(8, 3)
        self.after_gelu = nn.Linear(8, 3)
        self.norm = nn.LayerNorm(8, elementwise_affine=False)
        self.after_norm = nn.Linear(8, 3)
        self.after_pool = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        relu6 = nn.functional.relu6(h)
        pooled = nn.functional.avg_pool1d(torch.relu(h).unsqueeze(1), 2).squeeze(1)  # >= 0 through pooling
        return (
            self.after_relu6(relu6)
            + self.after_gelu(nn.functional.gelu(h))
            + self.after_norm(self.norm(torch.relu(h)))
            + self.after_pool(pooled)
        )


def test_sign_analysis_after_relu6_gelu_layernorm_and_pooling() -> None:
    target = capture_program(_export(Branches(), torch.randn(2, 6)), "branches")
    paths = [u.path for u in target.spec.units]
    signs = dict(zip(paths, unit_input_signs(target.spec, (-1.0, 1.0)), strict=True))
    assert signs == {
        "trunk": False,  # a signed input box
        "after_relu6": True,
        "after_gelu": False,
        "after_norm": False,  # LayerNorm centres its input: negative values even from a ReLU
        "after_pool": True,
    }
    assert unit_input_signs(target.spec, (0.0, 1.0))[0] is True  # a non-negative box makes the input >= 0


def test_a_rerandomised_build_uses_o_after_relu6_and_i_after_gelu_and_layernorm() -> None:
    target = capture_program(_export(Branches(), torch.randn(2, 6)), "branches")
    ticket = build_ticket(target, BuildConfig(n=8, resample=1))
    letters = {u["path"]: u["construction"] for u in ticket.build["graph_units"]}
    assert letters == {"trunk": "I", "after_relu6": "O", "after_gelu": "I", "after_norm": "I", "after_pool": "O"}
    assert [ticket.layouts[p].construction for u in ticket.graph.units for p in u.pairs] == [
        "input_blocks",
        "output_blocks",
        "input_blocks",
        "input_blocks",
        "output_blocks",
    ]
    pure = build_ticket(target, BuildConfig(n=8))
    assert {u["construction"] for u in pure.build["graph_units"]} == {"L"}  # a pure build: L everywhere


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.rnn = nn.LSTM(4, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.encoder(x))
        return self.head(out[:, -1])


class Cumulative(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), dim=-1)


@pytest.mark.parametrize(
    ("module", "example", "where"),
    [
        (Recurrent(), torch.randn(2, 3, 4), "from module 'rnn' (LSTM)"),
        (Cumulative(), torch.randn(2, 4), "in the model's own forward (Cumulative)"),
    ],
)
def test_an_unsupported_op_is_refused_naming_its_module(
    module: nn.Module, example: torch.Tensor, where: str, tmp_path: Path
) -> None:
    program = _export(module, example)
    with pytest.raises(UnsupportedModuleError, match="is not supported") as captured:
        capture_program(program, "model")
    assert where in str(captured.value)
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    with pytest.raises(UnsupportedModuleError) as loaded:
        load_target(path)
    assert where in str(loaded.value)
