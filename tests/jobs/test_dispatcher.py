"""The dispatcher with real worker processes: a batch runs; cancelling and time limits stop a worker deep
inside a solver call within seconds; dead workers are replaced and their items retried once."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import ticketsolver as ts
from ticketsolver.jobs import JobRunner, JobSpec, JobStore, Limits, LocalExecutor
from ticketsolver.jobs.memory import estimate_peak_bytes
from ticketsolver.ticket import Ticket

from .faults import back_to_normal, pragma_on_connect
from .test_worker import mlp_bytes

#: an item that spends ~50 s in single solver calls of ~25 s (brute force at n = 20): the worker itself
#: would not notice a cancellation before the call ends
SLOW = JobSpec(n=20, build={"solver": "bruteforce"}, verify=None)
#: an item of a few seconds (brute force at n = 16), long enough to lose its worker while it runs
MEDIUM = JobSpec(n=16, build={"solver": "bruteforce"}, verify=None)
SLOW_NET = (16, 32, 4)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def runner(tmp_path) -> Iterator[JobRunner]:
    store = JobStore(tmp_path / "data")
    runner = JobRunner(store, LocalExecutor(workers=1), poll_interval=0.1, kill_grace=1.0)
    runner.start()
    yield runner
    runner.stop()
    store.close()


def _submit(runner: JobRunner, spec: JobSpec, payload: bytes | None = None) -> str:
    return runner.submit([("net.pt", io.BytesIO(payload or mlp_bytes(0, SLOW_NET)))], spec)


def _state(runner: JobRunner, job_id: str) -> str:
    return str(runner.store.get_job(job_id).state)


def _finished(runner: JobRunner, job_id: str, timeout: float = 180) -> None:
    wait_for(lambda: _state(runner, job_id) not in ("queued", "running"), timeout, f"job {job_id} finished")


def _busy_pid(runner: JobRunner) -> int:
    """The pid of the worker running the (only) item, once the item is solving."""
    executor = runner.executor
    assert isinstance(executor, LocalExecutor)
    wait_for(lambda: executor.busy(), 60, "an item running")
    (pid,) = executor.busy().values()
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for a reaper has ended
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_a_batch_runs_in_worker_processes(runner):
    job_id = runner.submit(
        [("a.pt", io.BytesIO(mlp_bytes(0))), ("b.pt", io.BytesIO(mlp_bytes(1)))], JobSpec(n=[8, 10], verify=None)
    )
    _finished(runner, job_id)
    job = runner.store.get_job(job_id)
    assert job.state == "succeeded", job.error
    assert [(i.checkpoint, i.n, str(i.state)) for i in job.items] == [
        ("a.pt", 8, "succeeded"),
        ("a.pt", 10, "succeeded"),
        ("b.pt", 8, "succeeded"),
        ("b.pt", 10, "succeeded"),
    ]
    assert len({Ticket.load(runner.store.ticket_of(i.id)).kept_hash() for i in job.items}) == 4
    assert np.isclose(job.progress, 1.0)


@pytest.mark.parametrize("where", ["runner", "store"])
def test_cancelling_stops_a_worker_inside_a_long_solver_call_within_seconds(runner, where):
    """Cancelled through the runner (the API's DELETE) or only in the store (another process): the
    worker is terminated, not left solving for minutes, and a fresh worker runs the next job."""
    job_id = _submit(runner, SLOW)
    pid = _busy_pid(runner)
    time.sleep(1.0)  # inside the solver
    start = time.monotonic()
    if where == "runner":
        runner.cancel(job_id)
    else:
        runner.store.cancel(job_id)
    wait_for(lambda: not _alive(pid) and runner.busy == 0, 5, "the cancelled item's worker ended")
    assert time.monotonic() - start < 5
    assert _state(runner, job_id) == "cancelled"
    assert runner.store.get_job(job_id).items[0].state == "cancelled"
    following = _submit(runner, JobSpec(n=8, verify=None), mlp_bytes(1))
    _finished(runner, following)
    assert _state(runner, following) == "succeeded"


@pytest.mark.parametrize("where", ["spec", "service default"])
def test_an_item_past_its_time_limit_is_killed_and_failed(tmp_path, where):
    """The job's own limit, or the service's default (Limits.time_limit_s) for a job that sets none."""
    store = JobStore(tmp_path / "data")
    limits = Limits(time_limit_s=2.0 if where == "service default" else 600.0)
    runner = JobRunner(store, LocalExecutor(workers=1), limits, poll_interval=0.1, kill_grace=1.0)
    runner.start()
    try:
        job_id = _submit(runner, SLOW.model_copy(update={"time_limit_s": 2.0}) if where == "spec" else SLOW)
        pid = _busy_pid(runner)
        _finished(runner, job_id, timeout=30)
        job = store.get_job(job_id)
        assert job.state == "failed" and "time limit of 2 s exceeded" in job.items[0].error
        assert not _alive(pid)
    finally:
        runner.stop()
        store.close()


def test_an_item_whose_worker_dies_is_retried_once_on_a_fresh_worker(runner):
    job_id = _submit(runner, MEDIUM)
    os.kill(_busy_pid(runner), signal.SIGKILL)
    _finished(runner, job_id)
    job = runner.store.get_job(job_id)
    assert job.state == "succeeded", job.error


def test_an_item_whose_worker_dies_twice_fails_naming_the_signal(runner):
    job_id = _submit(runner, SLOW)
    first = _busy_pid(runner)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: runner.executor.busy() and _busy_pid(runner) != first, 60, "the retry running")
    os.kill(_busy_pid(runner), signal.SIGKILL)
    _finished(runner, job_id, timeout=60)
    error = runner.store.get_job(job_id).items[0].error
    assert "worker process died" in error and "signal SIGKILL" in error and "retried once" in error


def test_a_job_submitted_after_an_idle_worker_died_runs(runner):
    executor = runner.executor
    assert isinstance(executor, LocalExecutor)
    wait_for(lambda: executor.pids(), 30, "a worker started")
    (idle,) = executor.pids()
    os.kill(idle, signal.SIGKILL)
    wait_for(lambda: not _alive(idle), 10, "the idle worker died")
    job_id = _submit(runner, JobSpec(n=8, verify=None), mlp_bytes(1))
    _finished(runner, job_id)
    job = runner.store.get_job(job_id)
    assert job.state == "succeeded", job.error


@pytest.mark.parametrize("budget, together", [(1.5, 1), (2.5, 2)], ids=["one-fits", "two-fit"])
def test_items_run_together_only_while_their_memory_estimates_fit_the_budget(tmp_path, budget, together):
    """Two idle workers, two items: both run at once only when the budget holds both estimates."""
    payload = mlp_bytes(0)
    (tmp_path / "net.pt").write_bytes(payload)
    estimate = estimate_peak_bytes(ts.load_target(tmp_path / "net.pt"), 11)
    store = JobStore(tmp_path / "data")
    limits = Limits(memory_budget_bytes=int(budget * estimate))
    runner = JobRunner(store, LocalExecutor(workers=2), limits, poll_interval=0.1, kill_grace=1.0)
    runner.start()
    try:
        assert isinstance(runner.executor, LocalExecutor)
        executor = runner.executor
        wait_for(lambda: executor.idle() == 2, 30, "two workers started")
        job_id = _submit(runner, JobSpec(n=[10, 11], verify=None), payload)
        most = 0
        while _state(runner, job_id) in ("queued", "running"):
            most = max(most, runner.busy)
            time.sleep(0.01)
        assert _state(runner, job_id) == "succeeded"
        assert most == together
    finally:
        runner.stop()
        store.close()


def test_a_failure_the_store_refuses_is_recorded_once_it_accepts_writes(tmp_path):
    """The store turns read-only while an item runs past its time limit: the dispatcher cannot record the
    failure then, keeps it, and writes it as soon as the store accepts writes; the job does not stay
    running."""
    store = JobStore(tmp_path / "data", retry_delays=(0.01,))
    runner = JobRunner(store, LocalExecutor(workers=1), poll_interval=0.1, kill_grace=1.0)
    runner.start()
    try:
        job_id = _submit(runner, SLOW.model_copy(update={"time_limit_s": 3.0}))
        pid = _busy_pid(runner)
        read_only = pragma_on_connect(store, "PRAGMA query_only=ON")
        wait_for(lambda: not _alive(pid), 15, "the overdue item's worker killed")
        for _ in range(5):  # the dispatcher keeps trying; nothing is written while the store refuses
            time.sleep(0.2)
            assert str(store.get_job(job_id).items[0].state) == "running"
        back_to_normal(store, read_only)
        _finished(runner, job_id, timeout=10)
        job = store.get_job(job_id)
        assert job.state == "failed" and "time limit of 3 s exceeded" in job.items[0].error
    finally:
        runner.stop()
        store.close()
