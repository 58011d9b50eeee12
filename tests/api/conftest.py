"""Fixtures of the service tests: small checkpoints, a TestClient factory, real uvicorn servers and a real
browser (headless chromium, for the web view)."""

from __future__ import annotations

import importlib.util
import io
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import torch
from torch import nn

from ticketsolver.models import MLP
from ticketsolver_api.settings import Settings

if TYPE_CHECKING:
    from fastapi.testclient import TestClient
    from selenium.webdriver.chrome.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[2]
#: generous: the machine running the tests may be small and busy
JOB_TIMEOUT = 180.0
#: cheap verification so that a test spends its time on the service, not on forward passes
LIGHT_VERIFY = {"n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32"]}


def job_params(n: int | list[int], verify: dict | None = LIGHT_VERIFY, **build: object) -> dict:
    """A job's params (a JobSpec as JSON): ``n`` at the top, build settings under ``build``."""
    return {"n": n, "build": build, "verify": verify}


def pytest_configure(config: pytest.Config) -> None:
    # Starlette's TestClient announces its move to httpx2; the tests use it as documented.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


def state_dict_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def mlp(seed: int = 0, sizes: tuple[int, ...] = (8, 16, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    return MLP(sizes)


@pytest.fixture
def mlp_bytes() -> Callable[..., bytes]:
    """A small MLP's state_dict as torch.save writes it (``mlp_bytes(seed, sizes)``)."""
    return lambda seed=0, sizes=(8, 16, 4): state_dict_bytes(mlp(seed, sizes))


@pytest.fixture
def lenet_bytes() -> bytes:
    from ticketsolver.models import LeNet5

    torch.manual_seed(0)
    return state_dict_bytes(LeNet5())


@pytest.fixture
def client_factory(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``client_factory(**settings)`` -> a started TestClient on a fresh data dir; closed at the end."""
    from fastapi.testclient import TestClient  # imported here so that pytest_configure's filter applies

    from ticketsolver_api.main import create_app

    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        # no warm-up: most of these apps never run a job, and spawning a worker costs seconds
        options: dict[str, object] = {
            "data_dir": tmp_path / f"data{len(clients)}",
            "poll_interval": 0.1,
            "warm_up": False,
            **overrides,
        }
        settings = Settings(**options)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def wait_for(get: Callable[[], httpx.Response], done: Callable[[dict], bool], timeout: float = JOB_TIMEOUT) -> dict:
    """Poll ``get`` until ``done(json)``; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        body = get().json()
        if done(body) or time.monotonic() > deadline:
            assert done(body), f"timed out; last answer: {body}"
            return body
        time.sleep(0.1)


def finished(job: dict) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A real ``python -m ticketsolver_api.server`` on 127.0.0.1 in its own process group."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir or data_dir.parent
        self.env = {**os.environ, "TICKETSOLVER_POLL_INTERVAL": "0.1", **(env or {})}
        self.groups: list[int] = []
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.port = 0
        self.log = data_dir.parent / "server.log"

    def launch(self, *args: str) -> subprocess.Popen:
        """Start ``python -m ticketsolver_api.server`` on a free port (without waiting for it)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.log_dir / f"server-{self.port}.log"
        command = [sys.executable, "-m", "ticketsolver_api.server", "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--data-dir", str(self.data_dir), *args],
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        self.groups.append(self.process.pid)
        return self.process

    def start(self, timeout: float = 90.0) -> Server:
        self.launch()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited while starting: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("the server did not start")

    def kill(self) -> None:
        """SIGKILL the server process alone, as a crash would (its workers notice and stop)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then make sure nothing of any of its runs is left (process groups we started)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
        directory = data_dir or tmp_path / f"server{len(servers)}"
        directory.mkdir(parents=True, exist_ok=True)
        servers.append(Server(directory, env, log_dir=tmp_path))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


#: the limits of the shared server (small, so that the limit tests are cheap)
SERVER_ENV = {"TICKETSOLVER_MAX_UPLOAD_BYTES": "2000000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for a test module (starting one costs seconds)."""
    running = Server(tmp_path_factory.mktemp("server") / "data", SERVER_ENV)
    running.data_dir.mkdir()
    try:
        yield running.start()
    finally:
        running.stop()


# --- a real browser: Debian's chromium driven by Selenium (tests marked ``browser``) ------------------------

#: the token of the browser tests' server
BROWSER_TOKEN = "browser-test-token"


@pytest.fixture(scope="session")
def browser_kit() -> ModuleType:
    """scripts/screenshot.py, whose functions start chromium, sign in and take the README's picture; skips
    the test (with the reason) where chromium, chromedriver or selenium cannot be found."""
    spec = importlib.util.spec_from_file_location("ticketsolver_screenshot", ROOT / "scripts" / "screenshot.py")
    assert spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    try:
        kit.browser_paths()
    except kit.BrowserMissing as exc:
        pytest.skip(f"no browser to drive: {exc}")
    return kit


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server with :data:`BROWSER_TOKEN` set, for a test module."""
    running = Server(tmp_path_factory.mktemp("token-server") / "data", {"TICKETSOLVER_TOKEN": BROWSER_TOKEN})
    running.data_dir.mkdir()
    try:
        yield running.start()
    finally:
        running.stop()


@pytest.fixture
def browser(browser_kit: ModuleType, tmp_path: Path) -> Iterator[WebDriver]:
    """A fresh headless chromium (its downloads go to ``tmp_path / "downloads"``); quit at the end."""
    driver = browser_kit.chrome(download_dir=tmp_path / "downloads")
    try:
        yield driver
    finally:
        driver.quit()


# --- processes and raw HTTP, for the tests of a real server -----------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...); None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def group_members(pgid: int) -> set[int]:
    """Living processes of process group ``pgid``."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.add(int(entry.name))
    return members


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds the living ones of ``pids`` have used."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def raw_exchange(port: int, head: bytes, body: Iterator[bytes] = iter(()), timeout: float = 30.0) -> tuple[int, bytes]:
    """Send a request ``head`` and then ``body`` chunk by chunk on a fresh connection, but stop sending as
    soon as the server answers; return (status, answer bytes). The answer must come: no answer within
    ``timeout`` fails the test (a client that gives up on a reset connection would hide a missing 413)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for chunk in body:
            if select.select([sock], [], [], 0.002)[0]:
                break  # the server has answered
            try:
                sock.sendall(chunk)
            except OSError:  # it answered and closed while we were sending; the answer is in our buffer
                break
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, f"the server closed the connection without an answer (got {answer!r})"
            answer += data
        head_part, _, body_part = answer.partition(b"\r\n\r\n")
        lengths = [line for line in head_part.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        length = int(lengths[0].split(b":")[1]) if lengths else 0
        while len(body_part) < length and (data := sock.recv(65536)):
            body_part += data
    return int(answer.split(b" ", 2)[1]), head_part + b"\r\n\r\n" + body_part
