"""Jobs: parameters, limits, safe acceptance of uploads, running items (success, cancel, resume)."""

from __future__ import annotations

import io
import os
import pickle
import time

import numpy as np
import pytest
import torch
from torch import nn

import ticketsolver as ts
from ticketsolver.errors import CheckpointError, JobError
from ticketsolver.jobs import JobRunner, JobSpec, JobStore, Limits, LocalExecutor, accept_job, run_item
from ticketsolver.jobs.runner import check_limits, display_name
from ticketsolver.ticket import Ticket

LIGHT = {"resample": 0, "n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32"]}


def mlp_bytes(seed: int = 0, sizes=(8, 16, 4)) -> bytes:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    buffer = io.BytesIO()
    torch.save(nn.Sequential(*layers[:-1]).state_dict(), buffer)
    return buffer.getvalue()


class _MarkerPayload:
    """Unpickling this would create a file: the proof that a checkpoint's code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "data")
    yield s
    s.close()


def _accept(store, payloads, spec=None, limits=None) -> str:
    uploads = [(name, io.BytesIO(data)) for name, data in payloads]
    return accept_job(store, uploads, spec or JobSpec(n=(10,), **_light()), limits or Limits(), "local")


def _light(**extra):
    spec = {k: tuple(v) if isinstance(v, list) else v for k, v in LIGHT.items()}
    spec.update(extra)
    return spec


# -- parameters and limits -----------------------------------------------------------------------------


def test_spec_from_dict_accepts_one_n_or_a_list():
    assert JobSpec.from_dict({"n": 12}).n == (12,)
    assert JobSpec.from_dict({"n": [12, 16], "input_domain": [0, 1]}).input_domain == (0, 1)
    assert JobSpec.from_dict(JobSpec(n=(3, 4)).to_dict()) == JobSpec(n=(3, 4))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"solver": "nope"}, "unknown solver"),
        ({"n": []}, "n must be"),
        ({"n": [5, 5]}, "distinct"),
        ({"n": [0]}, "n must be an integer"),
        ({"arch": "resnet"}, "unknown arch"),
        ({"verify_box": [1, 0]}, "verify_box"),
        ({"dtypes": ["float16"]}, "dtypes"),
        ({"colour": "red"}, "unknown parameters: colour"),
    ],
)
def test_bad_parameters_are_refused_with_a_message(params, message):
    with pytest.raises(ValueError if params.get("n") == [0] else JobError, match=message):
        JobSpec.from_dict(params)


def test_limits_on_n_items_and_weights():
    limits = Limits(max_n=30, max_batch_items=4, max_weights_per_job=1000)
    check_limits(JobSpec(n=(20,)), [100, 100], limits)
    with pytest.raises(JobError, match="n = 40 is above .* 30"):
        check_limits(JobSpec(n=(40,)), [100], limits)
    with pytest.raises(JobError, match="5 items; the limit is 4"):
        check_limits(JobSpec(n=(10, 11, 12, 13, 14)), [100], limits)
    with pytest.raises(JobError, match="1,200 weights"):
        check_limits(JobSpec(n=(10, 12)), [300, 300], limits)


def test_display_name_is_only_for_showing():
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("C:\\Users\\me\\net.pt") == "net.pt"
    assert display_name("a\x00b\nc.pt") == "abc.pt"
    assert display_name(None) == "checkpoint"


# -- accepting uploads ---------------------------------------------------------------------------------


def test_accept_stores_the_upload_under_a_server_id(store):
    job_id = _accept(store, [("../../../evil/../net.pt", mlp_bytes())])
    job = store.get_job(job_id)
    assert job.checkpoints[0].name == "net.pt" and job.checkpoints[0].arch == "mlp"
    assert job.checkpoints[0].target_params == 8 * 16 + 16 + 16 * 4 + 4
    files = os.listdir(store.data_dir / "uploads")
    assert len(files) == 1 and len(files[0]) == 32 and "net" not in files[0]


@pytest.mark.parametrize("wrap", ["raw pickle", "torch.save"])
def test_upload_of_pickle_payload_is_refused(store, tmp_path, wrap):
    marker = tmp_path / "code-ran"
    if wrap == "raw pickle":
        payload = pickle.dumps(_MarkerPayload(str(marker)))
    else:
        buffer = io.BytesIO()
        torch.save({"weight": _MarkerPayload(str(marker))}, buffer)
        payload = buffer.getvalue()
    with pytest.raises(CheckpointError, match="evil.pt"):
        _accept(store, [("evil.pt", payload)])
    assert not marker.exists()
    assert os.listdir(store.data_dir / "uploads") == []  # nothing of a refused job is kept
    assert store.list_jobs()[1] == 0


def test_an_oversized_checkpoint_is_refused_while_copying(store):
    with pytest.raises(JobError, match="larger than the limit of 100 bytes"):
        _accept(store, [("net.pt", mlp_bytes())], limits=Limits(max_checkpoint_bytes=100))
    assert os.listdir(store.data_dir / "uploads") == []


# -- running items (in this process: run_item is what a pool worker runs) ------------------------------


def test_run_item_builds_saves_and_verifies_the_ticket(store, tmp_path):
    (tmp_path / "net.pt").write_bytes(mlp_bytes())
    job_id = _accept(store, [("net.pt", mlp_bytes())], JobSpec(n=(12,), seed=3, **_light()))
    task = store.claim_next_item()
    assert run_item(task, {"kind": "local"}, str(store.data_dir), store.url) == "succeeded"
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "succeeded" and job.items[0].problems_solved > 0
    assert [la.fraction for la in job.items[0].layers] == [1.0, 1.0]
    ticket = Ticket.load(store.ticket_of(task.item_id))
    expected = ts.build_ticket(ts.load_target(tmp_path / "net.pt"), 12, seed=3, resample=0)
    assert ticket.kept_hash() == expected.kept_hash()
    report = store.item_reports(job_id)[0]
    assert report["kept_values_sha256"] == ticket.kept_hash()
    assert report["ticket"]["sizes"] == ticket.sizes()  # source_kind and examined_values as the ticket states them
    assert report["ticket"]["sizes"]["source_kind"] == expected.sizes()["source_kind"]
    assert report["verification"]["input_box"]["source"].startswith("ticket's build box")
    assert not store.resume_dir(task.item_id).exists()  # resume files go once the ticket exists


def test_a_cancelled_item_stops_and_leaves_no_ticket(store):
    job_id = _accept(store, [("net.pt", mlp_bytes())])
    task = store.claim_next_item()
    store.cancel(job_id)
    assert run_item(task, {"kind": "local"}, str(store.data_dir), store.url) == "stopped"
    assert store.get_job(job_id).items[0].state == "cancelled"
    assert store.ticket_of(task.item_id) is None
    assert list((store.data_dir / "tickets").iterdir()) == []


def test_an_item_cancelled_while_verifying_drops_its_ticket(store, monkeypatch):
    from ticketsolver.jobs import runner as runner_module

    job_id = _accept(store, [("net.pt", mlp_bytes())])
    task = store.claim_next_item()
    verify_for_real = runner_module.verify_ticket

    def cancel_then_verify(*args, **kwargs):
        store.cancel(job_id)  # the user cancels while the ticket is being verified
        return verify_for_real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "verify_ticket", cancel_then_verify)
    assert run_item(task, {"kind": "local"}, str(store.data_dir), store.url) == "stopped"
    assert store.get_job(job_id).items[0].state == "cancelled"
    assert store.ticket_of(task.item_id) is None
    assert list((store.data_dir / "tickets").iterdir()) == []


def test_an_unbuildable_item_fails_with_the_reason(store):
    job_id = _accept(store, [("net.pt", mlp_bytes())], JobSpec(n=(12,), solver="bruteforce", **_light()))
    task = store.claim_next_item()
    store.upload_path(task.checkpoint_id).write_bytes(b"garbage")  # e.g. the disk lost the file
    assert run_item(task, {"kind": "local"}, str(store.data_dir), store.url) == "failed"
    store.finalize_jobs()
    job = store.get_job(job_id)
    assert job.state == "failed" and "unknown checkpoint format" in job.error


def test_an_interrupted_item_resumes_from_its_finished_layers(store, tmp_path):
    """A build stopped after its first layer (as a killed worker would be) and re-queued by a restart
    reuses that layer from the resume directory, and yields the same ticket as an uninterrupted build."""
    spec = JobSpec(n=(12,), seed=5, **_light(resample=2))
    job_id = _accept(store, [("net.pt", mlp_bytes(1))], spec)
    first = store.claim_next_item()
    target = ts.load_target(store.upload_path(first.checkpoint_id))

    def crash_on_second_layer(pair, fraction, message):
        if pair == 1:
            raise KeyboardInterrupt("worker killed")

    with pytest.raises(KeyboardInterrupt):
        ts.build_ticket(
            target,
            12,
            progress=crash_on_second_layer,
            resume_dir=store.resume_dir(first.item_id),
            **spec.build_options(),
        )
    assert store.requeue_interrupted() == 1
    second = store.claim_next_item()
    assert run_item(second, {"kind": "local"}, str(store.data_dir), store.url) == "succeeded"
    pairs = store.item_reports(job_id)[0]["ticket"]["layers"]
    ticket = Ticket.load(store.ticket_of(second.item_id))
    assert ticket.build["pairs"][0].get("resumed") is True and not ticket.build["pairs"][1].get("resumed")
    assert len(pairs) == 2
    assert ticket.kept_hash() == ts.build_ticket(target, 12, **spec.build_options()).kept_hash()


# -- the dispatcher with a real process pool -----------------------------------------------------------


def test_runner_runs_a_batch_in_worker_processes(store):
    runner = JobRunner(store, LocalExecutor(workers=1), poll_interval=0.1)
    runner.start()
    try:
        job_id = runner.submit(
            [("a.pt", io.BytesIO(mlp_bytes(0))), ("b.pt", io.BytesIO(mlp_bytes(1)))], JobSpec(n=(8, 10), **_light())
        )
        deadline = time.monotonic() + 180
        while store.get_job(job_id).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        runner.stop()
    job = store.get_job(job_id)
    assert job.state == "succeeded", job.error
    assert [(i.checkpoint, i.n, i.state) for i in job.items] == [
        ("a.pt", 8, "succeeded"),
        ("a.pt", 10, "succeeded"),
        ("b.pt", 8, "succeeded"),
        ("b.pt", 10, "succeeded"),
    ]
    hashes = {Ticket.load(store.ticket_of(i.id)).kept_hash() for i in job.items}
    assert len(hashes) == 4
    assert np.isclose(job.progress, 1.0)
