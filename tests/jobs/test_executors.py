"""Executors: the local pool's settings, and a real local Ray cluster giving bit-identical tickets."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

import ticketsolver as ts
from ticketsolver.jobs import (
    JobRunner,
    JobSpec,
    JobStore,
    Limits,
    LocalExecutor,
    RayExecutor,
    RaySolver,
    accept_job,
    make_executor,
)
from ticketsolver.jobs.runner import run_item
from ticketsolver.solvers import get_solver
from ticketsolver.ticket import Ticket

from .test_runner import LIGHT, mlp_bytes


def test_make_executor_by_name():
    assert make_executor("local", 2).capacity == 2
    ray_executor = make_executor("ray", 1, "ray://head:10001", 4096)
    assert ray_executor.context() == {"kind": "ray", "address": "ray://head:10001", "chunk": 4096, "verify_on": "auto"}
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("dask")
    with pytest.raises(ValueError):
        LocalExecutor(0)


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """One real local Ray cluster (2 CPUs) for the module; token authentication as Ray sets it up."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _problems(count: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    coeffs = rng.uniform(-1, 1, (count, n))
    usable = rng.random((count, n)) < 0.8
    return coeffs, rng.uniform(-1, 1, count), usable


@pytest.mark.ray
def test_ray_solver_splits_a_batch_and_matches_the_local_engine(cluster):
    coeffs, targets, usable = _problems(3000, 18)
    solver = RaySolver("mitm", chunk=700)
    remote = solver.solve(coeffs, targets, usable)
    local = get_solver("mitm_numba").solve(coeffs, targets, usable)
    assert solver.tasks == 5 and remote.info["tasks"] == 5
    assert remote.solver == "mitm"
    np.testing.assert_array_equal(remote.masks, local.masks)
    np.testing.assert_array_equal(remote.errors, local.errors)


@pytest.mark.ray
@pytest.mark.parametrize("solver", ["mitm", "auto"])
def test_ray_ticket_is_bit_identical_to_the_local_one(cluster, tmp_path, solver):
    (tmp_path / "net.pt").write_bytes(mlp_bytes(2, (8, 24, 6)))
    target = ts.load_target(tmp_path / "net.pt")
    options = {"seed": 11, "solver": solver, "resample": 3, "input_domain": (-1.0, 1.0)}
    local = ts.build_ticket(target, 16, **options)
    remote = ts.build_ticket(target, 16, solve_with=RaySolver(solver, chunk=128), **options)
    assert remote.kept_hash() == local.kept_hash()
    assert remote.build["solver"] == local.build["solver"] == solver
    for a, b in zip(local.masks, remote.masks, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            assert np.packbits(a[name]).tobytes() == np.packbits(b[name]).tobytes()
    for a, b in zip(local.draws, remote.draws, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.ray
def test_ray_item_verifies_as_a_cluster_task(cluster, tmp_path):
    store = JobStore(tmp_path / "data")
    spec = JobSpec.from_dict({"n": 10, "solver": "mitm", **LIGHT})
    job_id = accept_job(store, [("net.pt", io.BytesIO(mlp_bytes(3)))], spec, Limits(), "ray")
    task = store.claim_next_item()
    context = RayExecutor(chunk=64, verify_on="cluster").context()
    assert run_item(task, context, str(store.data_dir), store.url) == "succeeded"
    report = store.item_reports(job_id)[0]
    assert report["verification"]["device"] == "cpu"
    store.close()


@pytest.mark.ray
def test_service_pool_on_ray_gives_the_local_pools_tickets(cluster, tmp_path):
    """The whole path: a spawned worker process joins the cluster by its address and spreads the solving
    over Ray tasks; its tickets equal those of a local worker (run_item, as the local pool runs it)."""
    payload = mlp_bytes(4, (8, 20, 5))
    spec = JobSpec.from_dict({"n": [12, 14], "seed": 7, "solver": "mitm", **LIGHT, "resample": 2})

    local = JobStore(tmp_path / "local")
    accept_job(local, [("net.pt", io.BytesIO(payload))], spec, Limits(), "local")
    expected = []
    while (task := local.claim_next_item()) is not None:
        assert run_item(task, LocalExecutor().context(), str(local.data_dir), local.url) == "succeeded"
        expected.append(Ticket.load(local.ticket_of(task.item_id)).kept_hash())
    local.close()

    store = JobStore(tmp_path / "ray")
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
    assert job.state == "succeeded", job.error
    assert job.executor == "ray"
    assert [Ticket.load(store.ticket_of(i.id)).kept_hash() for i in job.items] == expected
    store.close()
