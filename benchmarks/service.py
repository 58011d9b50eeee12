"""The batch-job service under load, and Ray against the local pool.

1. Service: starts a real server (``python -m ticketsolver_api.server``) on 127.0.0.1, submits ``--jobs`` small jobs at
   once (an MLP 8-16-4 each, its own seed), and while they run keeps asking for job status, timing every
   answer. Prints jobs succeeded / failed / lost, p50 / p95 / max status latency while solving, seconds.
2. Ray: the same LeNet5 build through the local exact engine (what a pool worker runs) and through a real
   local Ray cluster with 1 and 2 CPUs; prints subset-sum problems solved per second and whether the
   tickets are bit-identical (kept-value hash, masks, draws).

    python benchmarks/service.py                      # both parts
    python benchmarks/service.py --jobs 20 --skip-ray
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=150)
FINISHED = {"succeeded", "failed", "cancelled"}
LIGHT = {"n": 12, "resample": 4, "n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32"]}


def _mlp_bytes(seed: int) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).state_dict(), buffer)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def service_benchmark(jobs: int, timeout: float) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="ticketsolver-bench-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TICKETSOLVER_POLL_INTERVAL": "0.2"}
    log = (data_dir / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "ticketsolver_api.server", "--port", str(port), "--data-dir", str(data_dir / "data")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        client = httpx.Client(base_url=url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the server did not start; see {data_dir / 'server.log'}")
            time.sleep(0.2)
        workers = client.get("/healthz").json()
        console.print(f"server up at {url} (executor {workers['executor']}); submitting {jobs} jobs at once")

        def submit(seed: int) -> str | None:
            with httpx.Client(base_url=url, timeout=60) as c:
                response = c.post(
                    "/approximate",
                    files=[("checkpoint", (f"mlp{seed}.pt", _mlp_bytes(seed)))],
                    data={"params": json.dumps({**LIGHT, "seed": seed})},
                )
            return response.json()["job_id"] if response.status_code == 202 else None

        start = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            ids = list(pool.map(submit, range(jobs)))
        submitted = time.perf_counter() - start
        accepted = [i for i in ids if i is not None]

        latencies: list[float] = []  # status requests answered while some job was still running
        states: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        k = 0
        while time.monotonic() < deadline:
            job_id = accepted[k % len(accepted)]
            k += 1
            t0 = time.perf_counter()
            response = client.get(f"/jobs/{job_id}")
            elapsed = time.perf_counter() - t0
            states[job_id] = response.json()["state"]
            active = any(s not in FINISHED for s in states.values()) or len(states) < len(accepted)
            if active:
                latencies.append(elapsed)
            elif len(states) == len(accepted):
                break
            time.sleep(0.02)
        total = time.perf_counter() - start
        listed = {j["id"]: j["state"] for j in client.get("/jobs", params={"limit": 500}).json()["data"]}
        metrics = client.get("/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

    counts = {s: sum(1 for i in accepted if listed.get(i) == s) for s in ("succeeded", "failed", "cancelled")}
    lost = len(ids) - sum(1 for i in accepted if i in listed)
    table = Table(title=f"Service: {jobs} concurrent small jobs (MLP 8-16-4, n=12) on {os.cpu_count()} cores")
    for column in (
        "submitted",
        "accepted",
        "succeeded",
        "failed",
        "lost",
        "status requests",
        "p50 ms",
        "p95 ms",
        "max ms",
        "submit s",
        "total s",
    ):
        table.add_column(column, justify="right")
    ms = [1000 * v for v in latencies]
    table.add_row(
        str(jobs),
        str(len(accepted)),
        str(counts["succeeded"]),
        str(counts["failed"]),
        str(lost),
        str(len(ms)),
        f"{_percentile(ms, 50):.1f}",
        f"{_percentile(ms, 95):.1f}",
        f"{max(ms, default=float('nan')):.1f}",
        f"{submitted:.1f}",
        f"{total:.1f}",
    )
    console.print(table)
    solved = [line for line in metrics.splitlines() if line.startswith("ticketsolver_problems_solved_total")]
    console.print(f"{solved[0] if solved else ''}; goal: all succeed, none lost, p95 < 50 ms")


def ray_benchmark(n: int, resample: int, heavy_problems: int) -> None:
    import ray

    import ticketsolver as ts
    from ticketsolver.jobs import RaySolver
    from ticketsolver.models import LeNet5
    from ticketsolver.solvers import get_solver

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        torch.save(LeNet5().state_dict(), Path(tmp) / "lenet5.pt")
        target = ts.load_target(Path(tmp) / "lenet5.pt")
    options = {"seed": 0, "solver": "mitm", "resample": resample, "input_domain": (0.0, 1.0)}

    def timed(solve_with: object | None) -> tuple[object, float, int]:
        t0 = time.perf_counter()
        ticket = ts.build_ticket(target, n, solve_with=solve_with, **options)
        seconds = time.perf_counter() - t0
        return ticket, seconds, sum(p["problems_solved"] for p in ticket.build["pairs"])

    # a batch of heavy problems (28 usable coefficients: 2^14 sums per half), where solving dominates
    rng = np.random.default_rng(0)
    heavy = (rng.uniform(-1, 1, (heavy_problems, 28)), rng.uniform(-2, 2, heavy_problems))

    def timed_batch(solver: object) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        masks = solver.solve(*heavy).masks  # type: ignore[attr-defined]
        return masks, time.perf_counter() - t0

    ts.build_ticket(target, 8, **{**options, "resample": 0})  # load the compiled engine once
    reference, seconds, problems = timed(None)
    reference_masks, batch_seconds = timed_batch(get_solver("mitm"))
    rows = [("local engine (pool worker, all cores)", seconds, problems, True, "-", batch_seconds, True)]
    for cpus in (1, 2):
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            solver = RaySolver("mitm")
            ts.build_ticket(target, 8, solve_with=solver, **{**options, "resample": 0})  # start Ray's workers
            solver.tasks = 0
            ticket, seconds, problems = timed(solver)
            same = (
                ticket.kept_hash() == reference.kept_hash()
                and all(
                    np.array_equal(a[k], b[k]) for a, b in zip(ticket.masks, reference.masks, strict=True) for k in a
                )
                and all(np.array_equal(a, b) for a, b in zip(ticket.draws, reference.draws, strict=True))
            )
            masks, batch_seconds = timed_batch(RaySolver("mitm", chunk=max(1, heavy_problems // (4 * cpus))))
            label = f"Ray, {cpus} worker CPU{'s' if cpus > 1 else ''}"
            rows.append(
                (
                    label,
                    seconds,
                    problems,
                    same,
                    str(solver.tasks),
                    batch_seconds,
                    bool(np.array_equal(masks, reference_masks)),
                )
            )
        finally:
            ray.shutdown()
    table = Table(
        title=f"Ray vs local pool ({os.cpu_count()} cores): LeNet5 ticket at n={n}, resample={resample}; "
        f"{heavy_problems:,} problems with 28 coefficients"
    )
    for column in (
        "executor",
        "ticket s",
        "problems",
        "problems/s",
        "bit-identical ticket",
        "Ray tasks",
        "n=28 batch s",
        "n=28 problems/s",
        "identical masks",
    ):
        table.add_column(column, justify="right")
    for name, seconds, problems, same, tasks, batch_s, batch_same in rows:
        table.add_row(
            name,
            f"{seconds:.2f}",
            f"{problems:,}",
            f"{problems / seconds:,.0f}",
            str(same),
            tasks,
            f"{batch_s:.2f}",
            f"{heavy_problems / batch_s:,.0f}",
            str(batch_same),
        )
    console.print(table)
    ray_rows = [r for r in rows if r[0].startswith("Ray")]
    if len(ray_rows) == 2:
        ticket_ratio = ray_rows[0][1] / ray_rows[1][1]
        batch_ratio = ray_rows[0][5] / ray_rows[1][5]
        console.print(f"Ray throughput, 2 CPUs / 1 CPU: ticket {ticket_ratio:.2f}x, n=28 batch {batch_ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="concurrent small jobs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the service part gives up")
    parser.add_argument("--n", type=int, default=20, help="n of the Ray comparison")
    parser.add_argument("--resample", type=int, default=8, help="resampling rounds of the Ray comparison")
    parser.add_argument("--heavy", type=int, default=4000, help="problems of the n=28 batch of the Ray comparison")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    if not args.skip_service:
        service_benchmark(args.jobs, args.timeout)
    if not args.skip_ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            console.print("ray is not installed: pip install 'ticketsolver[ray]'; Ray part skipped")
            return
        ray_benchmark(args.n, args.resample, args.heavy)


if __name__ == "__main__":
    main()
