"""Fixtures shared by the jobs tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ticketsolver.jobs import JobStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    """A fresh job store in the test's own folder."""
    s = JobStore(tmp_path / "data")
    yield s
    s.close()
