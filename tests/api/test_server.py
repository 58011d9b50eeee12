"""Against a real uvicorn server on 127.0.0.1: submit, poll, download and verify; batches; uploads without
Content-Length; refusals before the body is read; keep-alive after a refusal; the server log; a crash mid-job
and a restart that finishes it. Faults (cancel, kill -9, a full store) are in test_faults.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx

import ticketsolver as ts
from ticketsolver.ticket import Ticket

from .conftest import finished, job_params, raw_exchange, wait_for


def _submit(client: httpx.Client, files, params) -> str:
    response = client.post(
        "/approximate", files=[("checkpoint", f) for f in files], data={"params": json.dumps(params)}
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _download(client: httpx.Client, url: str, path) -> Ticket:
    response = client.get(url)
    assert response.status_code == 200
    path.write_bytes(response.content)
    return Ticket.load(path)  # checks the stored hash of the regenerated kept values


def test_submit_poll_download_and_the_ticket_verifies(server, mlp_bytes, tmp_path):
    (tmp_path / "net.pt").write_bytes(mlp_bytes(5, (8, 16, 4)))
    with server.client() as client:
        job_id = _submit(
            client,
            [("net.pt", (tmp_path / "net.pt").read_bytes())],
            job_params(16, seed=2, resample=4, input_domain=[-1, 1]),
        )
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
        assert job["state"] == "succeeded", job["error"]
        ticket = _download(client, f"/jobs/{job_id}/tickets/0", tmp_path / "net.ticket")
        report = client.get(f"/jobs/{job_id}/report").json()["items"][0]
    target = ts.load_target(tmp_path / "net.pt")
    checked = ts.verify(target, ticket, ts.VerifyConfig(n_random=256, worst_case_starts=0))
    error = checked.sections["random"]["float64"].max_abs_error
    assert error <= checked.certified.max_bound
    assert checked.sections["random"]["float32"].top1_agreement > 0.95
    assert report["verification"]["certified"]["max_bound"] == checked.certified.max_bound
    fresh = ts.build_ticket(target, ts.BuildConfig(n=16, seed=2, resample=4, input_domain=(-1, 1)))
    assert ticket.kept_hash() == fresh.kept_hash()


def test_a_batch_over_several_n_and_checkpoints(server, mlp_bytes, tmp_path):
    with server.client() as client:
        job_id = _submit(client, [("a.pt", mlp_bytes(0)), ("b.pt", mlp_bytes(1, (6, 10, 3)))], job_params([8, 10]))
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
        assert job["state"] == "succeeded", job["error"]
        tickets = client.get(f"/jobs/{job_id}/tickets").json()
        assert [(t["k"], t["checkpoint"], t["n"]) for t in tickets["data"]] == [
            (0, "a.pt", 8),
            (1, "a.pt", 10),
            (2, "b.pt", 8),
            (3, "b.pt", 10),
        ]
        loaded = [_download(client, t["url"], tmp_path / f"{t['k']}.ticket") for t in tickets["data"]]
        report = client.get(f"/jobs/{job_id}/report").json()
    assert [t.layouts[0].n for t in loaded] == [8, 10, 8, 10]
    assert [t.input_shape for t in loaded] == [(8,), (8,), (6,), (6,)]
    assert [r["item"] for r in report["items"]] == [
        {"checkpoint": "a.pt", "n": 8},
        {"checkpoint": "a.pt", "n": 10},
        {"checkpoint": "b.pt", "n": 8},
        {"checkpoint": "b.pt", "n": 10},
    ]
    assert all(r["verification"]["sections"]["random"]["float32"]["n_inputs"] == 64 for r in report["items"])


def _multipart_head(port: int, boundary: str, extra: str = "") -> bytes:
    return (
        f"POST /approximate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
    ).encode()


def _upload(boundary: str, mib: int):
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="checkpoint"; filename="big.pt"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for _ in range(16 * mib):  # 64 KiB chunks
        yield b"\0" * 65536
    yield f"\r\n--{boundary}--\r\n".encode()


def test_upload_without_content_length_is_413(server):
    """4 MiB streamed in chunks (no Content-Length) to a server that takes 2 MB: the 413 must be seen."""
    uploads = set((server.data_dir / "uploads").iterdir())
    with server.client() as client:
        jobs = client.get("/jobs").json()["count"]
    head = _multipart_head(server.port, "ts-boundary", "Transfer-Encoding: chunked\r\n") + b"\r\n"
    chunks = (f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in _upload("ts-boundary", 4))
    status, answer = raw_exchange(server.port, head, chunks)
    assert status == 413, answer[:300]
    with server.client() as client:
        listed = client.get("/jobs")
        assert listed.status_code == 200 and listed.json()["count"] == jobs  # still serving; nothing accepted
    assert set((server.data_dir / "uploads").iterdir()) == uploads


def test_an_unauthenticated_60_mib_upload_is_refused_before_its_body_is_read(server_factory):
    server = server_factory(env={"TICKETSOLVER_TOKEN": "s3cret"}).start()
    mib = 60
    size = sum(len(chunk) for chunk in _upload("b", mib))
    head = _multipart_head(server.port, "b", f"Content-Length: {size}\r\n") + b"\r\n"
    # the answer comes before a byte of the body is sent
    status, answer = raw_exchange(server.port, head, timeout=10)
    assert status == 401 and b"missing or invalid bearer token" in answer
    # and with the whole body on its way, the server refuses it all the same and keeps nothing
    status, _ = raw_exchange(server.port, head, _upload("b", mib))
    assert status == 401
    assert list((server.data_dir / "uploads").iterdir()) == []
    with server.client(headers={"Authorization": "Bearer s3cret"}) as client:
        assert client.get("/jobs").json()["count"] == 0


def test_an_offset_beyond_64_bits_is_422_and_the_connection_keeps_serving(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        stream = sock.makefile("rb")
        answers = []
        for offset in (2**63, 0):
            sock.sendall(f"GET /jobs?offset={offset} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status = int(stream.readline().split()[1])
            length = 0
            while (line := stream.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answers.append((status, json.loads(stream.read(length))))
    assert answers[0][0] == 422 and answers[0][1]["detail"][0]["loc"] == ["query", "offset"]
    assert answers[1][0] == 200 and "count" in answers[1][1]


def test_the_services_own_info_logs_reach_the_server_log(server, mlp_bytes):
    with server.client() as client:
        job_id = _submit(client, [("net.pt", mlp_bytes())], job_params(8, verify=None))
        wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
    log = server.log.read_text()
    assert "ticketsolver.api: serving jobs from" in log
    assert f"ticketsolver.api: accepted job {job_id}" in log


def test_serve_refuses_a_non_loopback_host_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETSOLVER_")}
    command = [sys.executable, "-m", "ticketsolver", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "refusing to serve on 0.0.0.0 without authentication" in refused.stderr
    assert "--allow-no-token" in refused.stderr


def test_a_job_survives_a_crash_and_restart(server_factory, lenet_bytes, tmp_path):
    """Kill the server (SIGKILL) while it solves a LeNet5, start it again on the same data dir: the job
    finishes, reusing the layers finished before the crash, and its ticket verifies."""
    (tmp_path / "lenet.pt").write_bytes(lenet_bytes)
    first = server_factory().start()
    with first.client() as client:
        job_id = _submit(client, [("lenet.pt", lenet_bytes)], job_params(20, seed=4, resample=8, input_domain=[0, 1]))
        # a layer's message says "done" once it is stored in the item's resume directory
        wait_for(
            lambda: client.get(f"/jobs/{job_id}"),
            lambda j: finished(j) or [la["message"][-4:] for la in j["items"][0]["layers"][:2]] == ["done"] * 2,
        )
    first.kill()
    second = server_factory(data_dir=first.data_dir).start()
    with second.client() as client:
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
        assert job["state"] == "succeeded", job["error"]
        ticket = _download(client, f"/jobs/{job_id}/tickets/0", tmp_path / "lenet.ticket")
    resumed = [bool(p.get("resumed")) for p in ticket.build["pairs"]]
    assert resumed[:2] == [True, True] and resumed[2:] != [True, True, True], resumed
    target = ts.load_target(tmp_path / "lenet.pt")
    checked = ts.verify(target, ticket, ts.VerifyConfig(n_random=64, worst_case_starts=0, dtypes=("float64",)))
    assert checked.sections["random"]["float64"].max_abs_error <= checked.certified.max_bound
    started = time.monotonic()
    fresh = ts.build_ticket(target, ts.BuildConfig(n=20, seed=4, resample=8, input_domain=(0, 1)))
    assert ticket.kept_hash() == fresh.kept_hash(), f"rebuilt in {time.monotonic() - started:.1f} s"


def test_a_graph_checkpoint_builds_on_the_service_and_its_ticket_holds_the_graph(server, tmp_path):
    """A .pt2 program that is not a chain (a residual add, GELU, LayerNorm with affine terms) is a graph target:
    the job builds one pair per unit, verifies it (no certified bound for a graph: the report says so), and the
    downloaded ticket rebuilds the same g."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.norm, self.fc2, self.head = (
                nn.Linear(6, 6),
                nn.LayerNorm(6),
                nn.Linear(6, 6),
                nn.Linear(6, 3),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))
            return self.head(h)

    torch.manual_seed(0)
    program = torch.export.export(
        Residual().eval(), (torch.randn(2, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "residual.pt2")
    with server.client() as client:
        job_id = _submit(client, [("residual.pt2", (tmp_path / "residual.pt2").read_bytes())], job_params(12))
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
        assert job["state"] == "succeeded", job["error"]
        ticket = _download(client, f"/jobs/{job_id}/tickets/0", tmp_path / "residual.ticket")
        report = client.get(f"/jobs/{job_id}/report").json()["items"][0]
    assert ticket.graph is not None
    assert [u.kind for u in ticket.graph.units] == ["tensor", "tensor", "linear", "linear", "linear"]
    assert report["verification"]["certified"] is None
    assert any("no certified bound for a graph" in note for note in report["verification"]["notes"])
    target = ts.load_target(tmp_path / "residual.pt2")
    fresh = ts.build_ticket(target, ts.BuildConfig(n=12))
    assert ticket.kept_hash() == fresh.kept_hash()
