"""Fixtures shared by the jobs tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ticketsolver.jobs import JobStore
from ticketsolver.jobs import worker as worker_module


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    """A fresh job store in the test's own folder."""
    s = JobStore(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def progress_messages(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    """Every (progress, message) a worker reports for ``store``'s items, in order, recorded as the worker's own store
    writes them (the writes still happen)."""
    worker_store = worker_module._worker_store(str(store.data_dir), store.url)
    messages: list[tuple[float, str]] = []
    report_progress = worker_store.report_progress

    def spy(item_id, attempt, progress, message, layer=None):  # type: ignore[no-untyped-def]
        messages.append((progress, message))
        return report_progress(item_id, attempt, progress, message, layer)

    monkeypatch.setattr(worker_store, "report_progress", spy)
    return messages
