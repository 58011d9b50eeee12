"""Executors: worker processes of our own that run, lose, kill and replace calls, never outlive their
parent; and a real local Ray cluster giving the local engine's answers and bit-identical tickets."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ticketsolver as ts
from ticketsolver.errors import JobError
from ticketsolver.jobs import (
    JobRunner,
    JobSpec,
    JobStore,
    Limits,
    LocalExecutor,
    RayExecutor,
    RaySolver,
    accept_job,
    run_item,
)
from ticketsolver.jobs.executors import Outcome, make_executor
from ticketsolver.solvers import get_solver
from ticketsolver.ticket import Ticket

from .test_worker import LIGHT, mlp_bytes

# -- calls run in the workers (module level: a spawned worker imports them by name) -----------------------


def whoami() -> tuple[int, int, int]:
    """(pid, parent pid, nice value) of the process running the call."""
    return os.getpid(), os.getppid(), os.nice(0)


def refuse() -> None:
    raise JobError("refused on purpose")


def exit_with(code: int) -> None:
    os._exit(code)


def outcomes(executor: LocalExecutor, keys: set[str], timeout: float = 120.0) -> dict[str, Outcome]:
    """Wait (as the dispatcher does) until every call in ``keys`` has an outcome."""
    found: dict[str, Outcome] = {}
    deadline = time.monotonic() + timeout
    while keys - found.keys():
        assert time.monotonic() < deadline, f"no outcome for {keys - found.keys()} after {timeout} s"
        executor.wait(0.5)
        found.update((o.key, o) for o in executor.poll())
    return found


@pytest.fixture
def executor():
    ex = LocalExecutor(workers=1)
    ex.start()
    yield ex
    ex.shutdown()


def _warm(executor: LocalExecutor) -> int:
    """Run one call so the worker is warmed up; returns its pid."""
    executor.submit("warm", whoami)
    return outcomes(executor, {"warm"})["warm"].value[0]


# -- the local executor --------------------------------------------------------------------------------


def test_a_call_runs_in_a_spawned_worker_below_the_service_priority(executor):
    executor.submit("a", whoami)
    pid, parent, nice = outcomes(executor, {"a"})["a"].value
    assert pid != os.getpid() and parent == os.getpid()
    assert nice == min(19, os.nice(0) + executor.niceness) and executor.niceness == 19  # the lowest priority
    assert executor.idle() == 1  # the worker is free again


def test_an_exception_in_a_call_comes_back_as_its_error(executor):
    executor.submit("a", refuse)
    outcome = outcomes(executor, {"a"})["a"]
    assert outcome.error == "JobError: refused on purpose" and outcome.lost is None


def test_killing_a_call_ends_its_process_within_seconds_and_a_fresh_worker_takes_over(executor):
    old = _warm(executor)
    executor.submit("long", time.sleep, 600)
    assert executor.busy() == {"long": old} and executor.idle() == 0
    start = time.monotonic()
    executor.kill(["long"], grace=2.0)
    assert time.monotonic() - start < 5.0
    assert not _alive(old)
    assert executor.poll() == []  # a killed call has no outcome
    assert executor.idle() == 1 and executor.pids() != [old]
    assert _warm(executor) != old


@pytest.mark.parametrize(
    "how, reason", [("exits", "exit code 3"), ("is killed", "signal SIGKILL")], ids=["exit", "sigkill"]
)
def test_a_call_whose_worker_dies_is_reported_lost_with_the_exit_code_or_signal(executor, how, reason):
    pid = _warm(executor)
    if how == "exits":
        executor.submit("a", exit_with, 3)
    else:
        executor.submit("a", time.sleep, 600)
        os.kill(pid, signal.SIGKILL)
    outcome = outcomes(executor, {"a"})["a"]
    assert outcome == Outcome("a", lost=reason)
    assert executor.idle() == 1 and pid not in executor.pids()  # replaced at once
    assert _warm(executor) != pid


def test_an_idle_worker_that_dies_is_replaced_and_the_next_call_runs(executor):
    pid = _warm(executor)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid in executor.pids() or not executor.pids():
        assert time.monotonic() < deadline
        executor.wait(0.5)
        assert executor.poll() == []  # nothing was running: nothing is lost
    executor.submit("next", whoami)
    assert outcomes(executor, {"next"})["next"].value[0] not in (pid, os.getpid())


def test_wake_ends_a_wait_from_another_thread(executor):
    threading.Timer(0.2, executor.wake).start()
    start = time.monotonic()
    executor.wait(30.0)
    assert time.monotonic() - start < 5.0


def test_shutdown_ends_idle_and_busy_workers():
    ex = LocalExecutor(workers=2)
    ex.start()
    ex.submit("a", whoami)
    ex.submit("b", whoami)
    outcomes(ex, {"a", "b"})
    ex.submit("long", time.sleep, 600)
    pids = ex.pids()
    assert len(pids) == 2
    ex.shutdown(grace=1.0)
    assert not any(_alive(pid) for pid in pids)
    assert ex.pids() == []


def test_bad_settings_are_refused_with_a_typed_error():
    assert make_executor("local", 2).capacity == 2
    with pytest.raises(JobError, match="unknown executor 'dask'"):
        make_executor("dask")
    for workers in (0, -1, True, 1.5):
        with pytest.raises(JobError, match="workers must be a positive integer"):
            LocalExecutor(workers)  # type: ignore[arg-type]


# -- workers never outlive their parent ----------------------------------------------------------------

_PARENT_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from ticketsolver.jobs.executors import LocalExecutor

    executor = LocalExecutor(workers=2)
    executor.start()
    executor.submit("a", os.getpid)
    executor.submit("b", os.getpid)
    done = set()
    while len(done) < 2:
        executor.wait(0.5)
        done |= {o.key for o in executor.poll()}
    executor.submit("busy", time.sleep, 600)
    print(" ".join(map(str, executor.pids())), flush=True)
    time.sleep(600)
    """
)


def _children() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descendants(root: int) -> set[int]:
    parents, found, frontier = _children(), set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_child_outlives_a_parent_killed_with_sigkill():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        workers = {int(pid) for pid in parent.stdout.readline().split()}
        assert len(workers) == 2, "the parent did not start its workers"
        children = _descendants(parent.pid)
        assert workers <= children and len(children) >= 3  # the workers and multiprocessing's resource tracker
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in children if _alive(pid)] == []


# -- a real local Ray cluster --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """One real local Ray cluster (2 CPUs) for the module; token authentication as Ray sets it up."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _problems(count: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    coeffs = rng.uniform(-1, 1, (count, n))
    usable = rng.random((count, n)) < 0.8
    return coeffs, rng.uniform(-1, 1, count), usable


@pytest.mark.ray
def test_ray_solver_splits_a_batch_reports_progress_and_matches_the_local_engine(cluster):
    coeffs, targets, usable = _problems(3000, 18)
    solver = RaySolver("mitm", chunk=700)
    seen: list[int] = []
    remote = solver.solve(coeffs, targets, usable, progress=lambda done, total: seen.append(done))
    local = get_solver("mitm_numba").solve(coeffs, targets, usable)
    assert solver.tasks == 5 and remote.info["tasks"] == 5 and remote.solver == "mitm"
    assert seen == sorted(seen) and seen[-1] == 3000
    np.testing.assert_array_equal(remote.masks, local.masks)
    np.testing.assert_array_equal(remote.errors, local.errors)


@pytest.mark.ray
def test_ray_solver_stops_when_its_progress_callback_raises(cluster):
    class Cancelled(Exception):
        pass

    def cancel(done: int, total: int) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        RaySolver("mitm", chunk=100).solve(*_problems(2000, 16), progress=cancel)


@pytest.mark.ray
def test_ray_ticket_is_bit_identical_to_the_local_one(cluster, tmp_path):
    (tmp_path / "net.pt").write_bytes(mlp_bytes(2, (8, 24, 6)))
    target = ts.load_target(tmp_path / "net.pt")
    config = ts.BuildConfig(n=16, seed=11, solver="mitm", resample=3, input_domain=(-1.0, 1.0))
    local = ts.build_ticket(target, config)
    remote = ts.build_ticket(target, config, solve_with=RaySolver("mitm", chunk=128))
    assert remote.kept_hash() == local.kept_hash()
    assert remote.build["solver"] == local.build["solver"] == "mitm"


@pytest.mark.ray
def test_ray_item_solves_and_verifies_on_the_cluster(cluster, tmp_path):
    store = JobStore(tmp_path / "data")
    spec = JobSpec(n=10, build={"solver": "mitm"}, verify=LIGHT)
    job_id = accept_job(store, [("net.pt", io.BytesIO(mlp_bytes(3)))], spec, Limits(), "ray")
    task = store.claim_next_item()
    context = RayExecutor(chunk=64, verify_on="cluster").context()
    assert run_item(task, context, str(store.data_dir), store.url).state == "succeeded"
    report = store.item_reports(job_id)[0]
    assert report["verification"]["device"] == "cpu"
    local = ts.build_ticket(ts.load_target(store.upload_path(task.checkpoint_id)), spec.build_config(10))
    assert report["kept_values_sha256"] == local.kept_hash()
    store.close()


@pytest.mark.ray
def test_a_service_on_ray_gives_the_local_tickets(cluster, tmp_path):
    """The whole path: a spawned worker joins the cluster by its address and spreads the solving over Ray
    tasks; its ticket equals the local build's."""
    payload = mlp_bytes(4, (8, 20, 5))
    spec = JobSpec(n=12, build={"seed": 7, "solver": "mitm"}, verify=None)
    store = JobStore(tmp_path / "data")
    runner = JobRunner(store, RayExecutor(cluster, 1, chunk=256), poll_interval=0.1)
    runner.start()
    try:
        job_id = runner.submit([("net.pt", io.BytesIO(payload))], spec)
        deadline = time.monotonic() + 180
        while store.get_job(job_id).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        runner.stop()
    job = store.get_job(job_id)
    assert job.state == "succeeded" and job.executor == "ray", job.error
    (tmp_path / "net.pt").write_bytes(payload)
    local = ts.build_ticket(ts.load_target(tmp_path / "net.pt"), spec.build_config(12))
    assert Ticket.load(store.ticket_of(job.items[0].id)).kept_hash() == local.kept_hash()
    store.close()
