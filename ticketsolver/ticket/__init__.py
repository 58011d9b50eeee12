"""The ticket artifact: save, load (regenerate and check), materialise, export."""

from __future__ import annotations

from ticketsolver.ticket.artifact import FORMAT, FORMAT_VERSION, Ticket
from ticketsolver.ticket.export import EXPORT_FORMATS, export_onnx, export_safetensors, export_ticket

__all__ = ["EXPORT_FORMATS", "FORMAT", "FORMAT_VERSION", "Ticket", "export_onnx", "export_safetensors", "export_ticket"]
