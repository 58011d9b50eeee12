"""The job store: lifecycle, fencing of stale workers, restart re-queueing, server-generated paths."""

from __future__ import annotations

import pytest

from ticketsolver.jobs.store import JobStore, new_id


def _job(store: JobStore, ns=(10, 12), checkpoints: int = 1) -> str:
    ckpts = [
        {"id": new_id(), "name": f"net{i}.pt", "size": 10, "sha256": "0" * 64, "arch": "mlp", "target_params": 100}
        for i in range(checkpoints)
    ]
    return store.create_job({"n": list(ns)}, ckpts, ns, "local")


@pytest.fixture
def store(tmp_path) -> JobStore:
    s = JobStore(tmp_path)
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
    with pytest.raises(ValueError):
        store.upload_path(bad)
    with pytest.raises(ValueError):
        store.ticket_path(bad, 1)


def test_store_survives_reopening(tmp_path):
    first = JobStore(tmp_path)
    job_id = _job(first)
    first.close()
    second = JobStore(tmp_path)
    assert second.get_job(job_id).state == "queued"
    second.close()
