"""Faults, against real uvicorn servers on 127.0.0.1 (each in its own process group, always stopped):
cancelling a running build stops its worker, a second server on a data dir is refused, kill -9 leaves no
process behind, an item past the time limit is stopped, a job over the memory budget is refused, and a
full disk fails the job, answers 507 and turns /healthz degraded."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import (
    Server,
    alive,
    cpu_seconds,
    descendants,
    finished,
    group_members,
    job_params,
    wait_for,
)

pytestmark = pytest.mark.slow

#: a build that keeps a worker busy for minutes: LeNet5 at the largest n, not verified
LONG_BUILD = job_params(64, verify=None, seed=0)


def _submit(client: httpx.Client, files, params) -> str:
    response = client.post(
        "/approximate", files=[("checkpoint", f) for f in files], data={"params": json.dumps(params)}
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _busy_workers(server: Server, window: float = 1.0) -> set[int]:
    """The processes below the server that used CPU during ``window`` seconds (its working workers)."""
    assert server.process is not None
    before = {pid: cpu_seconds({pid}) for pid in descendants(server.process.pid)}
    time.sleep(window)
    return {pid for pid, used in before.items() if cpu_seconds({pid}) - used > 0.3 * window}


def _running(client: httpx.Client, job_id: str) -> dict:
    return wait_for(lambda: client.get(f"/jobs/{job_id}"), lambda j: finished(j) or j["state"] == "running")


def test_cancelling_a_running_lenet5_build_stops_its_worker_within_5_seconds(server_factory, lenet_bytes, mlp_bytes):
    server = server_factory().start()
    with server.client() as client:
        job_id = _submit(client, [("lenet.pt", lenet_bytes)], LONG_BUILD)
        assert _running(client, job_id)["state"] == "running"
        deadline = time.monotonic() + 60
        while not (busy := _busy_workers(server)) and time.monotonic() < deadline:
            pass
        assert busy, "no worker process is working on the build"

        cancelled = client.delete(f"/jobs/{job_id}")
        stopped_by = time.monotonic() + 5.0
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        while time.monotonic() < stopped_by:
            still = {pid for pid in busy if alive(pid)}
            if not still or not _busy_workers(server, 0.5) & still:
                break
        else:
            pytest.fail(f"worker(s) {busy} still working 5 s after the cancel")

        job = client.get(f"/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and {i["state"] for i in job["items"]} == {"cancelled"}
        assert client.get(f"/jobs/{job_id}/tickets/0").status_code == 409

        # the worker is free: a tiny job starts at once and finishes
        submitted = time.monotonic()
        tiny = _submit(client, [("net.pt", mlp_bytes())], job_params(8, verify=None))
        started = _running(client, tiny)
        assert started["state"] in ("running", "succeeded"), started
        assert time.monotonic() - submitted < 15, "the tiny job waited for the cancelled build"
        done = wait_for(lambda: client.get(f"/jobs/{tiny}"), finished)
        assert done["state"] == "succeeded", done["items"][0]["error"]


def test_a_second_server_on_the_same_data_dir_is_refused(server_factory):
    first = server_factory().start()
    second = server_factory(data_dir=first.data_dir)
    process = second.launch()
    assert process.wait(120) != 0
    message = second.log.read_text()
    assert first.process is not None and str(first.process.pid) in message, message[-2000:]
    assert "data dir" in message or "data directory" in message, message[-2000:]
    assert httpx.get(f"{first.url}/healthz", timeout=10).status_code == 200  # the first one serves on


def test_kill_9_of_the_server_leaves_no_process_behind(server_factory, lenet_bytes):
    server = server_factory().start()
    assert server.process is not None
    with server.client() as client:
        job_id = _submit(client, [("lenet.pt", lenet_bytes)], LONG_BUILD)
        _running(client, job_id)
    children = descendants(server.process.pid)
    assert children, "the server runs its items in worker processes"
    group = server.process.pid
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ({pid for pid in children if alive(pid)} or group_members(group)):
        time.sleep(0.2)
    assert {pid for pid in children if alive(pid)} == set(), "worker processes outlived the server by 10 s"
    assert group_members(group) == set()


def test_an_item_past_the_services_time_limit_is_stopped_and_failed(server_factory, lenet_bytes):
    server = server_factory(env={"TICKETSOLVER_TIME_LIMIT_S": "3"}).start()
    with server.client() as client:
        job_id = _submit(client, [("lenet.pt", lenet_bytes)], LONG_BUILD)
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished, timeout=60)
    assert job["state"] == "failed" and "time limit of 3 s exceeded" in job["items"][0]["error"], job


def test_a_job_over_the_memory_budget_is_refused_with_its_estimate(server_factory, lenet_bytes):
    server = server_factory(env={"TICKETSOLVER_MEMORY_BUDGET_BYTES": "1000000"}).start()
    with server.client() as client:
        response = client.post(
            "/approximate", files=[("checkpoint", ("lenet.pt", lenet_bytes))], data={"params": json.dumps(LONG_BUILD)}
        )
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert "memory" in detail and "1,000,000" in detail, detail
        assert client.get("/jobs").json()["count"] == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 272 MiB tmpfs for a data dir: a real disk that fills up (mounting needs root with CAP_SYS_ADMIN;
    elsewhere the test is skipped). Request it before ``server_factory``, so that it is unmounted after the
    servers on it have stopped."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=272m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> None:
    """Write a file until the disk has no byte left."""
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(descriptor, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(descriptor)


def test_a_full_disk_fails_the_job_answers_507_and_turns_healthz_degraded(
    small_disk, server_factory, tmp_path, lenet_bytes, mlp_bytes
):
    """The data dir's disk fills up while a job waits in the queue (the job database lives on another
    disk): new uploads are refused with 507, /healthz says degraded (503), and the waiting job fails when
    its worker cannot write, with a message and without a server path."""
    data_dir = small_disk / "data"
    database = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    server = server_factory(env={"TICKETSOLVER_DATABASE_URL": database}, data_dir=data_dir).start()
    with server.client() as client:
        blocker = _submit(client, [("lenet.pt", lenet_bytes)], LONG_BUILD)  # keeps the one worker busy
        _running(client, blocker)
        waiting = _submit(client, [("net.pt", mlp_bytes())], job_params(8, verify=None))
        _fill(small_disk)

        refused = client.post(
            "/approximate", files=[("checkpoint", ("late.pt", mlp_bytes(1)))], data={"params": '{"n": 8}'}
        )
        assert refused.status_code == 507, refused.text
        assert "disk is full" in refused.json()["detail"] and str(small_disk) not in refused.text
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
        assert any("free" in problem or "not writable" in problem for problem in health.json()["problems"])

        assert client.delete(f"/jobs/{blocker}").status_code == 200  # the waiting job gets the worker
        job = wait_for(lambda: client.get(f"/jobs/{waiting}"), finished)
        assert job["state"] == "failed", job
        error = job["items"][0]["error"]
        assert error and str(small_disk) not in error, error
