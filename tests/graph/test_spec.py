"""A stored graph is data, never code: only whitelisted ops, references to earlier nodes, every unit used once."""

from __future__ import annotations

import pytest

from ticketsolver.errors import TicketFormatError
from ticketsolver.graph.ir import GraphSpec, GraphUnit, replay_op


def _spec(nodes: list[dict], units: int = 1) -> dict:
    unit = GraphUnit("linear", "fc", "fc", (2, 3), pairs=(0,)).to_dict()
    return {
        "nodes": nodes,
        "units": [unit] * units,
        "input_shape": [3],
        "input_dtype": "float32",
        "output": {"ref": nodes[-1]["name"]},
    }


GOOD = [
    {"name": "x", "op": "input"},
    {"name": "h", "op": "aten.relu.default", "args": [{"ref": "x"}]},
    {"name": "fc", "op": "unit", "unit": 0, "args": [{"ref": "h"}]},
]


def test_a_well_formed_graph_parses_and_round_trips() -> None:
    spec = GraphSpec.from_dict(_spec(GOOD))
    assert GraphSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("nodes", "units", "message"),
    [
        (GOOD[:1] + [{"name": "h", "op": "os.system", "args": ["rm -rf /"]}] + GOOD[2:], 1, "may replay"),
        (GOOD[:1] + [{"name": "h", "op": "aten.relu.default", "args": [{"ref": "fc"}]}] + GOOD[2:], 1, "before"),
        (GOOD + [{"name": "fc2", "op": "unit", "unit": 0, "args": [{"ref": "fc"}]}], 1, "exactly one node"),
        (GOOD, 2, "exactly one node"),
        ([{"name": "x", "op": "input"}, *GOOD], 1, "repeated"),
        (GOOD[:2] + [{"name": "fc", "op": "unit", "unit": 5, "args": [{"ref": "h"}]}], 1, "not one of"),
    ],
)
def test_a_forged_graph_is_refused(nodes: list[dict], units: int, message: str) -> None:
    with pytest.raises(TicketFormatError, match=message):
        GraphSpec.from_dict(_spec(nodes, units))


def test_only_whitelisted_ops_resolve() -> None:
    assert callable(replay_op("aten.gelu.default")) and callable(replay_op("operator.mul"))
    for name in ("builtins.eval", "aten.lstm.input", "operator.setitem", "os.system"):
        with pytest.raises(TicketFormatError):
            replay_op(name)
