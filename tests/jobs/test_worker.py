"""The worker's run of one item (in this process: run_item is what a worker process runs): success,
cancellation, failures with their reasons, resuming, progress, and verification that must not pass NaN."""

from __future__ import annotations

import io
import time

import pytest
import torch
from sqlalchemy import event

import ticketsolver as ts
from ticketsolver.jobs import JobSpec, JobStore, Limits, accept_job, run_item
from ticketsolver.jobs import worker as worker_module
from ticketsolver.jobs.worker import _Progress, _Stopped, nonfinite_errors
from ticketsolver.models import MLP
from ticketsolver.ticket import Ticket

#: a light verification for tests (a VerifyConfig's fields)
LIGHT = {"n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32"]}


def mlp_bytes(seed: int = 0, sizes=(8, 16, 4)) -> bytes:
    """A state_dict of a small ReLU MLP, as a client uploads it."""
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(MLP(sizes).state_dict(), buffer)
    return buffer.getvalue()


def _accept(store: JobStore, spec: JobSpec | None = None, payload: bytes | None = None) -> str:
    spec = spec or JobSpec(n=10, verify=LIGHT)
    return accept_job(store, [("net.pt", io.BytesIO(payload or mlp_bytes()))], spec, Limits(), "local")


def _run(store: JobStore, task) -> str:
    return run_item(task, {"kind": "local"}, str(store.data_dir), store.url).state


def test_run_item_builds_saves_and_verifies_the_ticket(store, tmp_path):
    spec = JobSpec(n=12, build={"seed": 3}, verify=LIGHT)
    job_id = _accept(store, spec)
    task = store.claim_next_item()
    assert _run(store, task) == "succeeded"
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "succeeded" and job.items[0].problems_solved > 0
    assert [layer.fraction for layer in job.items[0].layers] == [1.0, 1.0]
    ticket = Ticket.load(store.ticket_of(task.item_id))
    (tmp_path / "net.pt").write_bytes(mlp_bytes())
    expected = ts.build_ticket(ts.load_target(tmp_path / "net.pt"), spec.build_config(12))
    assert ticket.kept_hash() == expected.kept_hash()
    report = store.item_reports(job_id)[0]
    assert report["kept_values_sha256"] == ticket.kept_hash()
    assert report["ticket"]["sizes"]["source_kind"] == expected.sizes()["source_kind"]
    assert report["verification"]["input_box"]["source"].startswith("ticket's build box")
    assert report["verification"]["sections"]["random"]["float32"]["max_abs_error"] < 1.0
    assert not store.resume_dir(task.item_id).exists()  # resume files go once the ticket exists


def test_an_item_without_verification_has_no_verification_report(store):
    job_id = _accept(store, JobSpec(n=8, verify=None))
    assert _run(store, store.claim_next_item()) == "succeeded"
    assert store.item_reports(job_id)[0]["verification"] is None


def test_a_cancelled_item_stops_and_leaves_no_ticket(store):
    job_id = _accept(store)
    task = store.claim_next_item()
    store.cancel(job_id)
    assert _run(store, task) == "stopped"
    assert store.get_job(job_id).items[0].state == "cancelled"
    assert store.ticket_of(task.item_id) is None
    assert list((store.data_dir / "tickets").iterdir()) == []


def test_an_item_cancelled_while_verifying_drops_its_ticket(store, monkeypatch):
    job_id = _accept(store)
    task = store.claim_next_item()
    verify_for_real = worker_module.verify_ticket

    def cancel_then_verify(*args, **kwargs):
        store.cancel(job_id)  # the user cancels while the ticket is being verified
        return verify_for_real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "verify_ticket", cancel_then_verify)
    assert _run(store, task) == "stopped"
    assert store.get_job(job_id).items[0].state == "cancelled"
    assert list((store.data_dir / "tickets").iterdir()) == []


def test_an_unbuildable_item_fails_with_the_reason(store):
    job_id = _accept(store, JobSpec(n=12, build={"solver": "bruteforce"}, verify=LIGHT))
    task = store.claim_next_item()
    store.upload_path(task.checkpoint_id).write_bytes(b"garbage")  # e.g. the disk lost the file
    result = run_item(task, {"kind": "local"}, str(store.data_dir), store.url)
    assert result.state == "failed"
    assert result.error.startswith("checkpoint 'net.pt': the file contains pickled objects")
    assert task.checkpoint_id not in result.error  # the client's file name, never the server's
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "failed" and "checkpoint 'net.pt': the file contains pickled objects" in job.error


def test_a_verification_with_non_finite_errors_fails_the_item(store):
    """An extreme verification box overflows float32: the item fails and says why, it does not succeed."""
    job_id = _accept(store, JobSpec(n=8, verify={**LIGHT, "input_box": (-3e38, 3e38)}))
    task = store.claim_next_item()
    result = run_item(task, {"kind": "local"}, str(store.data_dir), store.url)
    assert result.state == "failed", result
    assert "non-finite errors" in result.error and "max_abs_error" in result.error
    assert store.get_job(job_id).items[0].state == "failed"
    assert store.ticket_of(task.item_id) is None
    assert list((store.data_dir / "tickets").iterdir()) == []


def test_nonfinite_errors_names_each_bad_field():
    report = {
        "sections": {"random": {"float32": {"max_abs_error": "inf", "relative_error_max": "nan"}}},
        "layers": {"float32": [{"max_rel_error": "inf"}]},  # a relative error over a zero target may be infinite
        "worst_case": {"float64": {"max_abs_error": 2e-7}},
    }
    assert nonfinite_errors(report) == [
        "sections.random.float32.max_abs_error = inf",
        "sections.random.float32.relative_error_max = nan",
    ]


def test_an_interrupted_item_resumes_from_its_finished_layers(store):
    """A build stopped after its first layer (as a killed worker is) and run again reuses that layer from
    the resume directory, and yields the same ticket as an uninterrupted build."""
    spec = JobSpec(n=12, build={"seed": 5, "resample": 2}, verify=LIGHT)
    job_id = _accept(store, spec, mlp_bytes(1))
    first = store.claim_next_item()
    target = ts.load_target(store.upload_path(first.checkpoint_id))

    def crash_on_second_layer(pair, fraction, message):
        if pair == 1:
            raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        ts.build_ticket(
            target, spec.build_config(12), progress=crash_on_second_layer, resume_dir=store.resume_dir(first.item_id)
        )
    assert store.requeue_interrupted() == 1
    second = store.claim_next_item()
    assert _run(store, second) == "succeeded"
    ticket = Ticket.load(store.ticket_of(second.item_id))
    assert ticket.build["pairs"][0].get("resumed") is True and not ticket.build["pairs"][1].get("resumed")
    assert len(store.item_reports(job_id)[0]["ticket"]["layers"]) == 2
    assert ticket.kept_hash() == ts.build_ticket(target, spec.build_config(12)).kept_hash()


def test_progress_is_written_at_most_every_quarter_second_and_stops_a_lost_item(store):
    job_id = _accept(store)
    task = store.claim_next_item()
    assert store.init_layers(task.item_id, task.attempt, 2)
    progress = _Progress(store, task, sizes=[100, 300], share=0.9)

    def message() -> str:
        return store.get_job(job_id).items[0].message

    progress(0, 0.5, "first write")
    progress(0, 0.6, "too soon: not written")
    assert message() == "layer 0: first write"
    progress(0, 1.0, "a finished layer is always written")
    assert message() == "layer 0: a finished layer is always written"
    time.sleep(0.3)
    progress(1, 0.5, "later")
    item = store.get_job(job_id).items[0]
    assert item.message == "layer 1: later" and item.progress == pytest.approx(0.9 * (100 + 150) / 400)
    store.cancel(job_id)
    time.sleep(0.3)
    with pytest.raises(_Stopped):
        progress(1, 0.7, "no longer ours")


def test_a_store_that_refuses_writes_stops_the_worker_and_says_why(store):
    """The dispatcher records such an item failed once the store accepts writes (see test_dispatcher)."""
    job_id = _accept(store)
    task = store.claim_next_item()
    worker_store = worker_module._worker_store(str(store.data_dir), store.url)  # the worker's own connection
    worker_store.retry_delays = (0.01,)

    def read_only(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA query_only=ON")

    event.listen(worker_store.engine, "connect", read_only)
    worker_store.engine.dispose()
    try:
        result = run_item(task, {"kind": "local"}, str(store.data_dir), store.url)
    finally:
        event.remove(worker_store.engine, "connect", read_only)
        worker_store.engine.dispose()
    assert result.state == "store_unavailable" and "could not be written" in result.error
    assert store.get_job(job_id).items[0].state == "running"  # nothing the worker could write was written
    assert list((store.data_dir / "tickets").iterdir()) == []
