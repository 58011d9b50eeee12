"""What a ``torch.export`` program takes: its one user input and the trained tensors of its other placeholders.

Both readers of a program (the chain normaliser, :mod:`ticketsolver.models.normalize`, and the graph capture,
:mod:`ticketsolver.graph.capture`) start here: every placeholder is the user input, a parameter, a buffer or a constant
tensor, and the program returns one tensor; anything else is refused with :class:`UnsupportedModuleError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ticketsolver.errors import UnsupportedModuleError

__all__ = ["ProgramInputs", "read_signature"]


@dataclass
class ProgramInputs:
    """The placeholders of a program: ``user`` (its input), the trained tensors by node (``values``) and by name
    (``names``: the state-dict key), and ``inputs`` in placeholder order (None for the user input)."""

    user: torch.fx.Node
    values: dict[torch.fx.Node, torch.Tensor] = field(default_factory=dict)
    names: dict[torch.fx.Node, str] = field(default_factory=dict)
    inputs: list[torch.Tensor | None] = field(default_factory=list)


def read_signature(program: torch.export.ExportedProgram, where: str = "") -> ProgramInputs:
    """Read ``program``'s signature; ``where`` (e.g. the model's name and a colon) prefixes every refusal.

    Raises:
        UnsupportedModuleError: a placeholder without a tensor value or of another kind, not exactly one user input,
            or outputs other than one user output (a BUFFER_MUTATION: exported in training mode).
    """
    from torch.export.graph_signature import InputKind, OutputKind

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    users: list[torch.fx.Node] = []
    values: dict[torch.fx.Node, torch.Tensor] = {}
    names: dict[torch.fx.Node, str] = {}
    inputs: list[torch.Tensor | None] = []
    for spec in program.graph_signature.input_specs:
        node = placeholders[spec.arg.name]
        if spec.kind == InputKind.USER_INPUT:
            users.append(node)
            inputs.append(None)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = program.state_dict.get(spec.target)
            tensor = program.constants.get(spec.target) if tensor is None else tensor
            if not isinstance(tensor, torch.Tensor):
                raise UnsupportedModuleError(f"{where}program input {spec.arg.name!r} has no tensor value")
            values[node] = tensor.detach()
            names[node] = str(spec.target)
            inputs.append(tensor.detach())
        else:
            raise UnsupportedModuleError(f"{where}program input {spec.arg.name!r} of kind {spec.kind.name}")
    outputs = program.graph_signature.output_specs
    if len(users) != 1 or [s.kind for s in outputs] != [OutputKind.USER_OUTPUT]:
        raise UnsupportedModuleError(
            f"{where}the program must take one tensor and return one tensor; it takes {len(users)} inputs and returns "
            f"{[s.kind.name for s in outputs]} (a BUFFER_MUTATION means it was exported in training mode: call "
            "model.eval() before torch.export.export)"
        )
    return ProgramInputs(users[0], values, names, inputs)
