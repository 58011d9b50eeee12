"""Retention: removing the files of finished jobs, and uploads that no job owns.

Place in the pipeline: jobs/store. A finished job's rows stay (its history, its reports); its uploads,
tickets, resume files and sweep results go when the operator asks (``JobStore.purge``) or when they are older than the
retention setting (``JobStore.purge_older_than``, run periodically by the service). An upload whose job
was never recorded (the service died during intake) is collected by ``JobStore.collect_orphan_uploads``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ticketsolver.errors import JobError
from ticketsolver.jobs.store.errors import StoreError
from ticketsolver.jobs.store.tables import TERMINAL_STATES, UPLOAD_SUFFIXES, CheckpointRow, ItemRow, JobRow, checked_id

if TYPE_CHECKING:
    from ticketsolver.jobs.store.repository import JobStore

__all__ = ["collect_orphan_uploads", "purge", "purge_older_than"]


def purge(store: JobStore, job_id: str) -> int | None:
    """Remove the uploads, tickets, resume files and sweep results of a finished or cancelled job; its rows
    stay (the job shows ``purged_at``, its items no ticket). Returns the files removed, or None: no such job.

    Raises:
        JobError: the job is still queued or running (cancel it first).
        StoreError: the store could not be written (nothing was removed).
    """
    now = time.time()

    def mark(session: Session) -> tuple[list[str], list[str]] | None:
        job = session.get(JobRow, job_id)
        if job is None:
            return None
        if job.state not in TERMINAL_STATES:
            raise JobError(f"job {job_id} is {job.state}: cancel it before removing its files")
        ckpts = list(session.scalars(select(CheckpointRow.id).where(CheckpointRow.job_id == job_id)))
        items = list(session.scalars(select(ItemRow.id).where(ItemRow.job_id == job_id)))
        session.execute(update(ItemRow).where(ItemRow.job_id == job_id).values(ticket_file=None))
        job.purged_at = job.purged_at or now
        return ckpts, items

    marked = store._write(mark, "purge a job")
    if marked is None:
        return None
    checkpoint_ids, item_ids = marked
    removed = 0
    try:
        for checkpoint_id in checkpoint_ids:
            removed += sum(_unlink(store.upload_path(checkpoint_id, suffix)) for suffix in UPLOAD_SUFFIXES)
        for item_id in item_ids:
            checked_id(item_id)
            for ticket in (store.data_dir / "tickets").glob(f"{item_id}-*.ticket"):
                removed += _unlink(ticket)
            for folder in (store.resume_dir(item_id), store.sweep_dir(item_id)):
                if folder.exists():
                    removed += sum(1 for p in folder.rglob("*") if p.is_file())
                    shutil.rmtree(folder)
    except OSError as exc:
        raise StoreError(f"the files of job {job_id} could not all be removed: {exc.strerror}") from None
    return removed


def purge_older_than(store: JobStore, seconds: float) -> list[str]:
    """:func:`purge` every job that finished more than ``seconds`` ago (the retention setting);
    returns their ids."""
    cutoff = time.time() - seconds
    ids = store._read(
        lambda s: list(
            s.scalars(
                select(JobRow.id).where(
                    JobRow.state.in_(TERMINAL_STATES), JobRow.finished_at < cutoff, JobRow.purged_at.is_(None)
                )
            )
        )
    )
    for job_id in ids:
        purge(store, job_id)
    return ids


def collect_orphan_uploads(store: JobStore, older_than: float) -> int:
    """Remove files in ``uploads/`` that belong to no checkpoint row and are older than ``older_than``
    seconds (an upload is written before its job's rows: younger files may be an intake under way).
    Returns how many were removed."""
    cutoff = time.time() - older_than
    candidates = [p for p in (store.data_dir / "uploads").iterdir() if p.is_file() and p.stat().st_mtime < cutoff]
    if not candidates:
        return 0
    names = sorted({p.name.split(".", 1)[0] for p in candidates})
    known: set[str] = set()
    for start in range(0, len(names), 500):
        known |= _existing_checkpoints(store, names[start : start + 500])
    return sum(_unlink(p) for p in candidates if p.name.split(".", 1)[0] not in known)


def _existing_checkpoints(store: JobStore, ids: list[str]) -> set[str]:
    return set(store._read(lambda s: s.scalars(select(CheckpointRow.id).where(CheckpointRow.id.in_(ids))).all()))


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1
