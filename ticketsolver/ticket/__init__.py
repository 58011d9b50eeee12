"""The ticket artifact: save, load (regenerate and check), materialise, export (docs/design.md section 4).

Pipeline stage after construction: a :class:`Ticket` holds the seed, layouts, masks and draws of a pruned random
network; :mod:`~ticketsolver.ticket.export` writes it as ONNX or safetensors, :mod:`~ticketsolver.ticket.summary`
says what ``ticketsolver inspect`` shows.
"""

from __future__ import annotations

from ticketsolver.ticket.artifact import FORMAT, FORMAT_VERSION, Ticket
from ticketsolver.ticket.export import EXPORT_FORMATS, export_onnx, export_safetensors, export_ticket

__all__ = ["EXPORT_FORMATS", "FORMAT", "FORMAT_VERSION", "Ticket", "export_onnx", "export_safetensors", "export_ticket"]
