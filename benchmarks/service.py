"""The batch-job service under load and under faults, and Ray against the local workers.

1. Latency: starts a real server (``python -m ticketsolver_api.server``) on 127.0.0.1, submits ``--jobs``
   small jobs at once (an MLP 8-16-4 each, its own seed) and, while they are queued or running, asks for job
   status for ``--window`` seconds, timing every answer: p50 / p95 / max of GET /jobs/{id}.
2. Faults: ``--fault-jobs`` small jobs run twice: once on a clean server, once on a server that is killed
   with SIGKILL at ``--kills`` random moments and started again on the same data dir each time. Prints jobs
   lost (accepted but missing or unfinished after the last restart; goal 0), and the tickets identical to
   the clean run by ``kept_values_sha256`` (goal: all).
3. Ray: the same LeNet5 build through the local exact engine (what a worker runs) and through a real local
   Ray cluster with 1 and 2 CPUs; problems solved per second and whether the tickets are bit-identical.
4. Jobs table under load: a server with a token and ``--table-workers`` worker processes (default: one per
   job) gets ``--table-jobs`` long jobs (an MLP 8-64-64-4 each at n = 40 with the exact engine, ~35 s of CPU
   alone, far longer when they share the cores; no verification): as many run as there are workers, the rest
   wait in the queue. While they do, it times what the web view's jobs page asks for on each refresh
   (``GET /jobs/progress?limit=100``, the JSON the table is drawn from) and the page itself (``GET /``), and,
   in Debian's headless chromium (driven as the browser test drives it), the time from the start of a
   refresh's request to the table's DOM updated and laid out, and from navigation to the table drawn with
   every job. The chromium rows are left out, with the reason, where chromium cannot be found.

    python benchmarks/service.py                       # latency, faults, jobs table (minutes on 2 cores)
    python benchmarks/service.py --ray                 # and the Ray comparison
    python benchmarks/service.py --jobs 50 --window 20 --fault-jobs 10 --kills 3
    python benchmarks/service.py --skip-latency --skip-faults --table-workers 2   # only the jobs table
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ticketsolver.models import MLP

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=150)
FINISHED = {"succeeded", "failed", "cancelled"}
#: a small job: n = 12, re-randomised (so that it takes a moment), cheap verification
SMALL: dict[str, Any] = {
    "n": 12,
    "build": {"resample": 4},
    "verify": {"n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32"]},
}


def _mlp_bytes(seed: int, sizes: tuple[int, ...] = (8, 16, 4)) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(MLP(sizes).state_dict(), buffer)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Server:
    """A real server on 127.0.0.1 in its own process group, on ``data_dir``; restartable. ``env`` adds
    service settings (``TICKETSOLVER_*``); with ``token`` set, the server requires it and we send it."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, token: str | None = None) -> None:
        self.data_dir = data_dir
        self.env = {"TICKETSOLVER_POLL_INTERVAL": "0.2", **(env or {})}
        if token is not None:
            self.env["TICKETSOLVER_TOKEN"] = token
        self.headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 120) -> Server:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.data_dir.parent / f"server-{port}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ticketsolver_api.server", "--port", str(port), "--data-dir", str(self.data_dir)],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"the server did not start; see {log.name}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server process alone, as a crash would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def submit(self, seed: int, job: dict[str, Any] | None = None, checkpoint: bytes | None = None) -> str | None:
        """Submit ``job`` (default :data:`SMALL`) with build seed ``seed`` on an MLP; the job id, or None."""
        job = job or SMALL
        with self.client() as client:
            response = client.post(
                "/approximate",
                files=[("checkpoint", (f"mlp{seed}.pt", checkpoint or _mlp_bytes(seed)))],
                data={"params": json.dumps({**job, "build": {**job["build"], "seed": seed}})},
            )
        return response.json()["job_id"] if response.status_code == 202 else None


def latency_benchmark(jobs: int, window: float) -> None:
    server = Server(Path(tempfile.mkdtemp(prefix="ticketsolver-bench-")) / "data").start()
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(min(jobs, 16)) as pool:
            ids = [i for i in pool.map(server.submit, range(jobs)) if i is not None]
        submitted = time.perf_counter() - start
        latencies: list[float] = []
        with httpx.Client(base_url=server.url, timeout=30) as client:
            active_at_start = sum(client.get(f"/jobs/{i}").json()["state"] not in FINISHED for i in ids)
            deadline = time.monotonic() + window
            k = 0
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                client.get(f"/jobs/{ids[k % len(ids)]}").raise_for_status()
                latencies.append(time.perf_counter() - t0)
                k += 1
                time.sleep(0.01)
            active_at_end = sum(client.get(f"/jobs/{i}").json()["state"] not in FINISHED for i in ids)
    finally:
        server.stop()
    table = Table(title=f"GET /jobs/{{id}} while {jobs} small jobs are queued or running ({os.cpu_count()} cores)")
    for column in (
        "accepted",
        "active at start",
        "active at end",
        "requests",
        "p50 ms",
        "p95 ms",
        "max ms",
        "submit s",
    ):
        table.add_column(column, justify="right")
    ms = [1000 * v for v in latencies]
    table.add_row(
        str(len(ids)),
        str(active_at_start),
        str(active_at_end),
        str(len(ms)),
        f"{_percentile(ms, 50):.1f}",
        f"{_percentile(ms, 95):.1f}",
        f"{max(ms, default=float('nan')):.1f}",
        f"{submitted:.1f}",
    )
    console.print(table)
    console.print("goal: p95 < 50 ms")


def _hashes(server: Server, ids: list[str], timeout: float) -> dict[str, tuple[str, str | None]]:
    """Per job id: (state, kept_values_sha256 of its ticket) once every job has finished (or ``timeout``)."""
    found: dict[str, tuple[str, str | None]] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.monotonic() < deadline:
            listed = {j["id"]: j["state"] for j in client.get("/jobs", params={"limit": 500}).json()["data"]}
            if all(listed.get(i) in FINISHED for i in ids):
                break
            time.sleep(0.5)
        for job_id in ids:
            answer = client.get(f"/jobs/{job_id}")
            if answer.status_code != 200:
                continue
            state = answer.json()["state"]
            items = client.get(f"/jobs/{job_id}/report").json()["items"]
            found[job_id] = (state, items[0]["kept_values_sha256"] if items and items[0] else None)
    return found


def fault_benchmark(jobs: int, kills: int, timeout: float, seed: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ticketsolver-faults-"))
    (workdir / "clean").mkdir()
    (workdir / "faulty").mkdir()
    t0 = time.perf_counter()
    clean = Server(workdir / "clean" / "data").start()
    try:
        clean_ids = [clean.submit(s) for s in range(jobs)]
        reference = _hashes(clean, [i for i in clean_ids if i], timeout)
    finally:
        clean.stop()
    clean_seconds = time.perf_counter() - t0
    by_seed = {s: reference.get(i or "", ("missing", None))[1] for s, i in enumerate(clean_ids)}

    rng = random.Random(seed)
    t0 = time.perf_counter()
    server = Server(workdir / "faulty" / "data").start()
    accepted: dict[str, int] = {}
    try:
        for s in range(jobs):
            job_id = server.submit(s)
            if job_id is not None:
                accepted[job_id] = s
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 4.0))  # somewhere in the middle of the queue's work
            server.kill()
            server.start()
        final = _hashes(server, list(accepted), timeout)
    finally:
        server.stop()
    faulty_seconds = time.perf_counter() - t0

    lost = sum(1 for i in accepted if final.get(i, ("missing", None))[0] != "succeeded") + (jobs - len(accepted))
    identical = sum(
        1 for i, s in accepted.items() if by_seed[s] is not None and final.get(i, ("", None))[1] == by_seed[s]
    )
    table = Table(title=f"{jobs} small jobs, the server killed with SIGKILL {kills} times and restarted")
    for column in ("jobs", "kills", "accepted", "lost", "tickets identical to a clean run", "clean s", "with kills s"):
        table.add_column(column, justify="right")
    table.add_row(
        str(jobs),
        str(kills),
        str(len(accepted)),
        str(lost),
        f"{identical}/{jobs}",
        f"{clean_seconds:.1f}",
        f"{faulty_seconds:.1f}",
    )
    console.print(table)
    console.print("goal: 0 lost, every ticket identical (kept_values_sha256)")


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
    config = ts.BuildConfig(n=n, seed=0, solver="mitm", resample=resample, input_domain=(0.0, 1.0))
    warm = ts.BuildConfig(n=8, seed=0, solver="mitm", input_domain=(0.0, 1.0))  # a quick pure build

    def timed(solve_with: object | None) -> tuple[object, float, int]:
        t0 = time.perf_counter()
        ticket = ts.build_ticket(target, config, solve_with=solve_with)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        return ticket, seconds, sum(p["problems_solved"] for p in ticket.build["pairs"])

    # a batch of heavy problems (28 usable coefficients: 2^14 sums per half), where solving dominates
    rng = np.random.default_rng(0)
    heavy = (rng.uniform(-1, 1, (heavy_problems, 28)), rng.uniform(-2, 2, heavy_problems))

    def timed_batch(solver: object) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        masks = solver.solve(*heavy).masks
        return masks, time.perf_counter() - t0

    ts.build_ticket(target, warm)  # load the compiled engine once
    reference, seconds, problems = timed(None)
    reference_masks, batch_seconds = timed_batch(get_solver("mitm"))
    rows = [("local engine (a worker, all cores)", seconds, problems, True, "-", batch_seconds, True)]
    for cpus in (1, 2):
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            solver = RaySolver("mitm")
            ts.build_ticket(target, warm, solve_with=solver)  # start Ray's workers
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
        title=f"Ray vs local workers ({os.cpu_count()} cores): LeNet5 ticket at n={n}, resample={resample}; "
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


#: a long job for the jobs table benchmark: the exact engine at n = 40 on an MLP 8-64-64-4 (4,864 weights)
LONG: dict[str, Any] = {"n": 40, "build": {"solver": "mitm"}, "verify": None}
LONG_SIZES = (8, 64, 64, 4)
#: installed in every page before its own script: times each refresh of the jobs table, from the start of the
#: request the table is drawn from to its DOM updated and laid out, and the moment it first shows every job
TABLE_TIMER = """
(() => {
  const timing = (window.__jobsTable = { refreshes: [], drawn: null, pending: null, expected: %d });
  const fetchFirst = window.fetch;
  window.fetch = function (input, init) {
    const url = typeof input === "string" ? input : input.url;
    if (url.includes("/jobs/progress")) timing.pending = performance.now();
    return fetchFirst.call(this, input, init);
  };
  document.addEventListener("DOMContentLoaded", () => {
    const tbody = document.querySelector("table#jobs tbody");
    if (!tbody) return;
    new MutationObserver(() => {
      if (timing.pending === null) return;
      void tbody.offsetHeight; // style and layout now, so that the time includes them
      const now = performance.now();
      timing.refreshes.push(now - timing.pending);
      timing.pending = null;
      const rows = tbody.querySelectorAll("tr[data-job-id] progress.job-progress").length;
      if (timing.drawn === null && rows >= timing.expected) timing.drawn = now;
    }).observe(tbody, { childList: true, subtree: true, characterData: true, attributes: true });
  });
})();
"""


def _browser_kit() -> ModuleType:
    """scripts/screenshot.py (chromium as the browser test drives it), loaded by path."""
    spec = importlib.util.spec_from_file_location("ticketsolver_screenshot", ROOT / "scripts" / "screenshot.py")
    assert spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    return kit


def _browser_timings(kit: ModuleType, server: Server, token: str, jobs: int, reloads: int, window: float) -> dict:
    """In headless chromium: ms from navigation to the table drawn with ``jobs`` rows, ``reloads`` times, and
    ms per live refresh (request start to DOM laid out) while the page stays open for ``window`` seconds."""
    driver = kit.chrome()
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TABLE_TIMER % jobs})
        kit.sign_in(driver, server.url, token)
        drawn: list[float] = []
        for _ in range(reloads):
            driver.get(server.url + "/")
            found = kit.wait(
                driver, lambda d: d.execute_script("return window.__jobsTable && window.__jobsTable.drawn"), 60
            )
            drawn.append(float(found))
        driver.get(server.url + "/")
        time.sleep(window)
        refreshes = driver.execute_script("return window.__jobsTable.refreshes")[1:]  # [0] is the page's first
    finally:
        driver.quit()
    return {"drawn": drawn, "refreshes": [float(v) for v in refreshes]}


def table_benchmark(jobs: int, workers: int, window: float, reloads: int, start_timeout: float) -> None:
    token = "bench-token"
    estimate = 600 * 1024**2  # the store's estimate for one such item is ~590 MiB; real RSS is about half
    env = {"TICKETSOLVER_WORKERS": str(workers), "TICKETSOLVER_MEMORY_BUDGET_BYTES": str(workers * estimate)}
    server = Server(Path(tempfile.mkdtemp(prefix="ticketsolver-table-")) / "data", env, token).start()
    checkpoint = _mlp_bytes(0, LONG_SIZES)
    try:
        with ThreadPoolExecutor(min(jobs, 8)) as pool:
            ids = [i for i in pool.map(lambda s: server.submit(s, LONG, checkpoint), range(jobs)) if i is not None]
        with server.client(timeout=30) as client:

            def running() -> int:
                listed = client.get("/jobs", params={"limit": 500}).json()["data"]
                return sum(job["state"] == "running" for job in listed if job["id"] in ids)

            deadline = time.monotonic() + start_timeout
            while (running_at_start := running()) < min(workers, len(ids)) and time.monotonic() < deadline:
                time.sleep(1)
            load_at_start = os.getloadavg()[0]
            progress_ms: list[float] = []
            page_ms: list[float] = []
            end = time.monotonic() + window
            while time.monotonic() < end:
                for path, times in (("/jobs/progress?limit=100", progress_ms), ("/", page_ms)):
                    t0 = time.perf_counter()
                    client.get(path).raise_for_status()
                    times.append(1000 * (time.perf_counter() - t0))
                time.sleep(0.05)
            browser: dict | None = None
            reason = ""
            try:
                kit = _browser_kit()
                kit.browser_paths()
            except Exception as exc:  # noqa: BLE001 - BrowserMissing, or selenium absent: the HTTP part stands
                reason = str(exc)
            else:
                browser = _browser_timings(kit, server, token, len(ids), reloads, window)
            running_at_end = running()
            load_at_end = os.getloadavg()[0]
    finally:
        server.stop()

    title = (
        f"Jobs table with {len(ids)} long jobs listed, {workers} workers: {running_at_start} running when timing "
        f"began, {running_at_end} at its end{' (the rest queued)' if workers < len(ids) else ''}; "
        f"{os.cpu_count()} cores, load average {load_at_start:.1f} -> {load_at_end:.1f}"
    )
    table = Table(title=title)
    for column in ("what", "samples", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="right")
    rows = [("GET /jobs/progress?limit=100 (the JSON of one refresh)", progress_ms), ("GET / (the page)", page_ms)]
    if browser is not None:
        rows += [
            ("chromium: refresh, request start to table laid out", browser["refreshes"]),
            ("chromium: navigation to the table drawn with every job", browser["drawn"]),
        ]
    for label, values in rows:
        table.add_row(
            label,
            str(len(values)),
            f"{_percentile(values, 50):.1f}",
            f"{_percentile(values, 95):.1f}",
            f"{max(values, default=float('nan')):.1f}",
        )
    console.print(table)
    if browser is None:
        console.print(f"chromium part skipped: {reason}")
    console.print("goal: the jobs table renders in <= 200 ms at p95")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50, help="jobs queued or running while status is timed")
    parser.add_argument("--window", type=float, default=15, help="seconds of status requests")
    parser.add_argument("--fault-jobs", type=int, default=10, help="jobs of the fault run")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of the server during the fault run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run gives up waiting")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--skip-table", action="store_true", help="skip the jobs table under load")
    parser.add_argument("--table-jobs", type=int, default=20, help="long jobs listed while the table is timed")
    parser.add_argument("--table-workers", type=int, help="worker processes (jobs running at once); default: all")
    parser.add_argument("--table-window", type=float, default=30, help="seconds of each timing window")
    parser.add_argument("--table-reloads", type=int, default=20, help="page loads timed in chromium")
    parser.add_argument("--ray", action="store_true", help="also compare Ray with the local workers")
    parser.add_argument("--n", type=int, default=20, help="n of the Ray comparison")
    parser.add_argument("--resample", type=int, default=8, help="resampling rounds of the Ray comparison")
    parser.add_argument("--heavy", type=int, default=4000, help="problems of the n=28 batch of the Ray comparison")
    args = parser.parse_args()
    if not args.skip_latency:
        latency_benchmark(args.jobs, args.window)
    if not args.skip_faults:
        fault_benchmark(args.fault_jobs, args.kills, args.timeout, args.seed)
    if not args.skip_table:
        workers = args.table_workers or args.table_jobs
        table_benchmark(args.table_jobs, workers, args.table_window, args.table_reloads, args.timeout)
    if args.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            console.print("ray is not installed: pip install 'ticketsolver[ray]'; Ray part skipped")
            return
        ray_benchmark(args.n, args.resample, args.heavy)


if __name__ == "__main__":
    main()
