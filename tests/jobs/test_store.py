"""The job store: lifecycle, fencing of stale workers, restart re-queueing, server-generated paths,
memory admission, honest write faults (read-only, full disk), health, and removing the files of old jobs."""

from __future__ import annotations

import os
import time

import pytest
from pydantic import TypeAdapter

from ticketsolver.errors import JobError
from ticketsolver.jobs.spec import JobState
from ticketsolver.jobs.store import JobStore, JobSummary, JobView, StoreError, new_id

from .faults import back_to_normal, pragma_on_connect

MiB = 1024**2


def _job(store: JobStore, ns=(10, 12), checkpoints: int = 1, memory: dict[int, int] | None = None) -> str:
    ckpts = [
        {
            "id": new_id(),
            "name": f"net{i}.pt",
            "size": 10,
            "sha256": "0" * 64,
            "arch": "mlp",
            "target_params": 100,
            "memory_bytes": memory or {},
        }
        for i in range(checkpoints)
    ]
    return store.create_job({"n": list(ns)}, ckpts, ns, "local")


@pytest.fixture
def store(tmp_path) -> JobStore:
    s = JobStore(tmp_path, retry_delays=(0.01, 0.01))
    yield s
    s.close()


def test_job_has_one_item_per_checkpoint_and_n(store):
    job = store.get_job(_job(store, ns=(10, 12, 14), checkpoints=2))
    assert job.state == "queued" and job.progress == 0.0
    assert [(i.checkpoint, i.n) for i in job.items] == [
        ("net0.pt", 10),
        ("net0.pt", 12),
        ("net0.pt", 14),
        ("net1.pt", 10),
        ("net1.pt", 12),
        ("net1.pt", 14),
    ]
    assert [i.position for i in job.items] == list(range(6))


def test_claim_progress_finish_and_close(store):
    job_id = _job(store, ns=(10,))
    task = store.claim_next_item()
    assert task is not None and task.job_id == job_id and task.attempt == 1
    assert store.get_job(job_id).state == "running"
    assert store.init_layers(task.item_id, task.attempt, 2)
    assert store.report_progress(task.item_id, task.attempt, 0.5, "half", (0, 1.0))
    item = store.get_job(job_id).items[0]
    assert item.progress == 0.5 and [(la.pair, la.fraction) for la in item.layers] == [(0, 1.0), (1, 0.0)]
    assert store.finish_item(task.item_id, task.attempt, {"ok": True}, problems_solved=123)
    assert store.finalize_jobs() == [job_id]
    job = store.get_job(job_id)
    assert job.state == "succeeded" and job.progress == 1.0 and job.finished_at is not None
    assert store.item_reports(job_id) == [{"ok": True}]
    assert store.counts()["problems_solved"] == 123


def test_cancel_stops_the_worker_at_its_next_write(store):
    job_id = _job(store)
    task = store.claim_next_item()
    assert store.cancel(job_id).state == "cancelled"
    assert not store.report_progress(task.item_id, task.attempt, 0.3, "late")
    assert not store.finish_item(task.item_id, task.attempt, {}, 0)
    assert {i.state for i in store.get_job(job_id).items} == {"cancelled"}
    assert store.claim_next_item() is None


def test_restart_requeues_running_items_and_fences_the_old_attempt(store):
    job_id = _job(store, ns=(10,))
    stale = store.claim_next_item()
    assert store.requeue_interrupted() == 1
    assert store.get_job(job_id).items[0].state == "queued"
    fresh = store.claim_next_item()
    assert fresh.item_id == stale.item_id and fresh.attempt > stale.attempt
    assert not store.report_progress(stale.item_id, stale.attempt, 0.9, "stale worker")
    assert store.report_progress(fresh.item_id, fresh.attempt, 0.1, "new worker")


def test_each_attempt_writes_its_own_ticket_file(store):
    job_id = _job(store, ns=(10,))
    stale = store.claim_next_item()
    store.requeue_interrupted()
    fresh = store.claim_next_item()
    assert store.ticket_path(stale.item_id, stale.attempt) != store.ticket_path(fresh.item_id, fresh.attempt)
    store.ticket_path(fresh.item_id, fresh.attempt).write_bytes(b"ticket")
    assert store.ticket_of(fresh.item_id) is None  # not finished yet
    assert store.finish_item(fresh.item_id, fresh.attempt, {}, 1)
    assert not store.finish_item(stale.item_id, stale.attempt, {}, 1)
    assert store.ticket_of(fresh.item_id) == store.ticket_path(fresh.item_id, fresh.attempt)
    item, path = store.item_files(job_id, 0)
    assert item.has_ticket and path == store.ticket_path(fresh.item_id, fresh.attempt)
    assert store.item_files(job_id, 1) is None


def test_a_failed_item_fails_the_job_with_its_reason(store):
    job_id = _job(store, ns=(10, 12))
    first, second = store.claim_next_item(), store.claim_next_item()
    store.finish_item(first.item_id, first.attempt, {}, 1)
    store.fail_item(second.item_id, second.attempt, "solver exploded")
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "failed"
    assert "item 1 (net0.pt, n=12): solver exploded" in job.error


def test_list_jobs_newest_first_with_state_filter(store):
    ids = [_job(store) for _ in range(3)]
    store.cancel(ids[0])
    jobs, count = store.list_jobs()
    assert count == 3 and [j.id for j in jobs] == ids[::-1]
    jobs, count = store.list_jobs(state="cancelled")
    assert count == 1 and jobs[0].id == ids[0]


@pytest.mark.parametrize("bad", ["../etc/passwd", "x" * 32, "", "A" * 32, "/tmp/evil"])
def test_paths_are_made_of_server_ids_only(store, bad):
    with pytest.raises(JobError, match="not a server-generated id"):
        store.upload_path(bad)
    with pytest.raises(JobError, match="not a server-generated id"):
        store.ticket_path(bad, 1)
    with pytest.raises(JobError, match="not an upload suffix"):
        store.upload_path(new_id(), "/../x")


def test_store_survives_reopening(tmp_path):
    first = JobStore(tmp_path)
    job_id = _job(first)
    first.close()
    second = JobStore(tmp_path)
    assert second.get_job(job_id).state == "queued"
    second.close()


# -- views: the API's response models ------------------------------------------------------------------


def test_views_are_pydantic_models_with_typed_states_and_no_item_ids_in_json(store):
    job_id = _job(store, ns=(10,))
    job = store.get_job(job_id)
    assert isinstance(job, JobView) and job.state is JobState.QUEUED
    dumped = job.model_dump(mode="json")
    assert dumped["state"] == "queued" and dumped["items"][0]["state"] == "queued"
    assert "id" not in dumped["items"][0]  # item ids name server files; clients address items by position
    assert job.items[0].id  # ... but the library still reads it
    # the list endpoint's model serialises the same view to its own fields (as FastAPI does)
    listed = TypeAdapter(list[JobSummary]).dump_python([job], mode="json")
    assert listed[0]["id"] == job_id and "items" not in listed[0] and "params" not in listed[0]


# -- memory admission ----------------------------------------------------------------------------------


def test_items_carry_their_memory_estimate_to_the_dispatcher(store):
    job_id = _job(store, ns=(10, 12), memory={10: 300 * MiB, 12: 500 * MiB})
    assert [i.memory_bytes for i in store.get_job(job_id).items] == [300 * MiB, 500 * MiB]
    first = store.claim_next_item(memory_budget=700 * MiB, memory_in_use=0)
    assert first.memory_bytes == 300 * MiB
    # 300 + 500 > 700: the next item waits until the first is done
    assert store.claim_next_item(memory_budget=700 * MiB, memory_in_use=first.memory_bytes) is None
    assert store.running_memory_bytes() == 300 * MiB
    store.finish_item(first.item_id, first.attempt, {}, 0)
    second = store.claim_next_item(memory_budget=700 * MiB, memory_in_use=0)
    assert second is not None and second.memory_bytes == 500 * MiB


def test_an_item_always_may_run_alone_even_above_the_budget(store):
    _job(store, ns=(10,), memory={10: 900 * MiB})
    assert store.claim_next_item(memory_budget=100 * MiB, memory_in_use=0) is not None


def test_the_queue_keeps_its_order_a_small_item_does_not_overtake(store):
    _job(store, ns=(10,), memory={10: 100 * MiB})
    _job(store, ns=(10,), memory={10: 600 * MiB})
    _job(store, ns=(10,), memory={10: 100 * MiB})
    first = store.claim_next_item(memory_budget=650 * MiB)
    assert store.claim_next_item(memory_budget=650 * MiB, memory_in_use=first.memory_bytes) is None


# -- write faults: typed errors, never a job "running" for ever ----------------------------------------


def test_a_write_to_a_read_only_store_is_retried_then_raises_store_error(store, tmp_path):
    job_id = _job(store, ns=(10,))
    task = store.claim_next_item()
    read_only = pragma_on_connect(store, "PRAGMA query_only=ON")
    started = time.monotonic()
    with pytest.raises(StoreError, match="could not be written \\(record a failed item\\): .*readonly") as caught:
        store.fail_item(task.item_id, task.attempt, "boom")
    assert time.monotonic() - started >= 0.02  # the two retries waited
    assert str(tmp_path) not in str(caught.value)
    assert store.get_job(job_id).state == "running"  # reads still work
    back_to_normal(store, read_only)
    assert store.fail_item(task.item_id, task.attempt, "boom")


def test_a_full_disk_is_a_store_error(store):
    with store.engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
    full = pragma_on_connect(store, f"PRAGMA max_page_count={pages}")
    with pytest.raises(StoreError, match="full"):
        for _ in range(200):  # fills the last free pages, then needs a new one
            _job(store, ns=tuple(range(1, 33)))
    back_to_normal(store, full)


def test_a_failure_that_cannot_be_written_is_kept_and_written_when_the_store_recovers(store):
    job_id = _job(store, ns=(10,))
    task = store.claim_next_item()
    read_only = pragma_on_connect(store, "PRAGMA query_only=ON")
    assert store.record_failure(task.item_id, task.attempt, "worker died") is None  # deferred, no raise
    assert store.flush_deferred() == 1  # still unwritable: still waiting
    health = store.health()
    assert health["status"] == "degraded" and health["deferred_failures"] == 1
    back_to_normal(store, read_only)
    assert store.flush_deferred() == 0
    assert store.finalize_jobs() == [job_id]
    job = store.get_job(job_id)
    assert job.state == "failed" and "worker died" in job.error


# -- health ------------------------------------------------------------------------------------------


def test_health_of_a_working_store(store):
    health = store.health()
    assert health["status"] == "ok" and health["problems"] == []
    assert health["readable"] and health["writable"] and health["files_writable"]
    assert health["free_bytes"] > 0
    assert [p for p in os.listdir(store.data_dir) if p.startswith(".health")] == []  # the probe file is gone


def test_health_probes_a_real_write(store, tmp_path):
    read_only = pragma_on_connect(store, "PRAGMA query_only=ON")
    health = store.health()
    back_to_normal(store, read_only)
    assert health["status"] == "degraded" and health["readable"] and not health["writable"]
    assert any("not writable" in problem for problem in health["problems"])
    assert not any(str(tmp_path) in problem for problem in health["problems"])


def test_health_is_degraded_when_a_subfolder_the_service_writes_to_is_broken(store):
    tickets = store.data_dir / "tickets"
    tickets.rmdir()
    tickets.write_bytes(b"a file where the folder was")  # as root, chmod would not stop a write
    try:
        health = store.health()
    finally:
        tickets.unlink()
        tickets.mkdir()
    assert health["status"] == "degraded" and not health["files_writable"]
    assert health["problems"] == ["data dir's tickets/ not writable: Not a directory"]


def test_health_is_degraded_when_the_disk_is_nearly_full(store):
    health = store.health(min_free_bytes=2**62)
    assert health["status"] == "degraded" and "bytes free" in health["problems"][0]


def test_a_read_only_database_file_opens_for_reading(tmp_path):
    first = JobStore(tmp_path)
    job_id = _job(first)
    first.close()
    url = f"sqlite:///file:{tmp_path / 'jobs.sqlite'}?mode=ro&uri=true"
    store = JobStore(tmp_path, url=url, retry_delays=())
    assert store.get_job(job_id).state == "queued"
    with pytest.raises(StoreError, match="readonly"):
        store.cancel(job_id)
    assert store.health()["writable"] is False
    store.close()


def test_an_in_memory_database_is_refused(tmp_path):
    with pytest.raises(StoreError, match="in-memory"):
        JobStore(tmp_path, url="sqlite://")


# -- removing the files of finished jobs -----------------------------------------------------------------


def _finished_job_with_files(store: JobStore) -> tuple[str, list]:
    job_id = _job(store, ns=(10,))
    checkpoint_id = store.get_job(job_id)
    with store._session() as session:  # the checkpoint id is internal: read it from its row
        from ticketsolver.jobs.store.tables import CheckpointRow

        checkpoint_id = session.query(CheckpointRow.id).filter_by(job_id=job_id).scalar()
    upload = store.upload_path(checkpoint_id, ".pt")
    upload.write_bytes(b"weights")
    task = store.claim_next_item()
    resume = store.resume_dir(task.item_id)
    resume.mkdir()
    (resume / "pair-0.npz").write_bytes(b"layer")
    ticket = store.ticket_path(task.item_id, task.attempt)
    ticket.write_bytes(b"ticket")
    stale_ticket = store.ticket_path(task.item_id, task.attempt + 5)
    stale_ticket.write_bytes(b"a lost attempt")
    store.finish_item(task.item_id, task.attempt, {}, 1)
    store.finalize_jobs()
    return job_id, [upload, resume, ticket, stale_ticket]


def test_purge_removes_uploads_tickets_and_resume_files_but_keeps_the_rows(store):
    job_id, files = _finished_job_with_files(store)
    assert store.purge(job_id) == 4
    assert not any(path.exists() for path in files)
    job = store.get_job(job_id)
    assert job.state == "succeeded" and job.purged_at is not None
    assert not job.items[0].has_ticket and store.item_files(job_id, 0)[1] is None
    assert store.purge(new_id()) is None


def test_purge_refuses_an_active_job(store):
    job_id = _job(store)
    with pytest.raises(JobError, match="cancel it before"):
        store.purge(job_id)
    store.cancel(job_id)
    assert store.purge(job_id) == 0


def test_purge_older_than_keeps_recent_and_active_jobs(store):
    old_id, files = _finished_job_with_files(store)
    with store._session.begin() as session:  # it finished an hour ago
        from ticketsolver.jobs.store.tables import JobRow

        session.get(JobRow, old_id).finished_at = time.time() - 3600
    recent_id, recent_files = _finished_job_with_files(store)
    active_id = _job(store)
    assert store.purge_older_than(600) == [old_id]
    assert not any(path.exists() for path in files) and all(path.exists() for path in recent_files)
    assert store.get_job(active_id).purged_at is None
    assert store.purge_older_than(600) == []  # purged once


def test_orphan_uploads_are_collected_once_old_enough(store):
    job_id, files = _finished_job_with_files(store)
    orphan = store.upload_path(new_id(), ".pt")
    orphan.write_bytes(b"an upload whose job was never recorded")
    receiving = store.upload_path(new_id(), "")
    receiving.write_bytes(b"an upload being received right now")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(files[0], (old, old))
    assert store.collect_orphan_uploads(older_than=600) == 1
    assert not orphan.exists() and receiving.exists() and files[0].exists()  # files[0] belongs to a job
