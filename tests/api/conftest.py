"""Fixtures of the service tests: small checkpoints, a TestClient factory and real uvicorn servers."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import torch
from torch import nn

from ticketsolver_api.settings import Settings

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
#: generous: the machine running the tests may be small and busy
JOB_TIMEOUT = 180.0
#: cheap verification so that a test spends its time on the service, not on forward passes
LIGHT = {"resample": 0, "n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32"]}


def pytest_configure(config: pytest.Config) -> None:
    # Starlette's TestClient announces its move to httpx2; the tests use it as documented.
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


def state_dict_bytes(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def mlp(seed: int = 0, sizes: tuple[int, ...] = (8, 16, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


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
        options: dict[str, object] = {"poll_interval": 0.1, "warm_up": False, **overrides}
        settings = Settings(data_dir=tmp_path / f"data{len(clients)}", **options)
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

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "TICKETSOLVER_POLL_INTERVAL": "0.1", **(env or {})}
        self.groups: list[int] = []
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 90.0) -> Server:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ticketsolver_api.server", "--port", str(port), "--data-dir", str(self.data_dir)],
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(self.data_dir.parent / f"server-{port}.log").open("wb"),
        )
        self.groups.append(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server exited while starting"
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

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
        directory = data_dir or tmp_path / f"server{len(servers)}"
        directory.mkdir(parents=True, exist_ok=True)
        servers.append(Server(directory, env))
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
