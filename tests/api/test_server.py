"""Against a real uvicorn server on 127.0.0.1: submit, poll, download and verify; batches; cancel;
uploads without Content-Length; a crash mid-job and a restart that finishes it."""

from __future__ import annotations

import json
import time

import httpx

import ticketsolver as ts
from ticketsolver.ticket import Ticket
from ticketsolver.verification.against import verify

from .conftest import JOB_TIMEOUT, LIGHT, finished, wait_for


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
            {"n": 16, "seed": 2, "resample": 4, "input_domain": [-1, 1], **{**LIGHT, "resample": 4}},
        )
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
        assert job["state"] == "succeeded", job["error"]
        ticket = _download(client, f"/jobs/{job_id}/tickets/0", tmp_path / "net.ticket")
        report = client.get(f"/jobs/{job_id}/report").json()["items"][0]
    target = ts.load_target(tmp_path / "net.pt")
    checked = verify(target, ticket, n_random=256, worst_case_starts=0)
    error = checked.sections["random"]["float64"].max_abs_error
    assert error <= checked.certified.max_bound
    assert checked.sections["random"]["float32"].top1_agreement > 0.95
    assert report["verification"]["certified"]["max_bound"] == checked.certified.max_bound
    assert ticket.kept_hash() == ts.build_ticket(target, 16, seed=2, resample=4, input_domain=(-1, 1)).kept_hash()


def test_a_batch_over_several_n_and_checkpoints(server, mlp_bytes, tmp_path):
    with server.client() as client:
        job_id = _submit(client, [("a.pt", mlp_bytes(0)), ("b.pt", mlp_bytes(1, (6, 10, 3)))], {"n": [8, 10], **LIGHT})
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


def test_cancel_a_running_job_frees_the_worker(server, lenet_bytes, mlp_bytes):
    with server.client() as client:
        long_job = _submit(
            client, [("lenet.pt", lenet_bytes)], {**LIGHT, "n": [20, 24], "resample": 16, "input_domain": [0, 1]}
        )
        running = wait_for(lambda: client.get(f"/jobs/{long_job}"), lambda j: finished(j) or j["progress"] > 0)
        cancelled = client.delete(f"/jobs/{long_job}")
        assert cancelled.status_code == 200, (cancelled.text, running)
        assert cancelled.json()["state"] == "cancelled"
        assert client.delete(f"/jobs/{long_job}").status_code == 200  # cancelling twice is harmless
        short_job = _submit(client, [("net.pt", mlp_bytes())], {"n": 8, **LIGHT})
        job = wait_for(lambda: client.get(f"/jobs/{short_job}"), finished, timeout=JOB_TIMEOUT)
        assert job["state"] == "succeeded", job["error"]
        final = client.get(f"/jobs/{long_job}").json()
        assert final["state"] == "cancelled" and {i["state"] for i in final["items"]} == {"cancelled"}
        assert client.get(f"/jobs/{long_job}/tickets/0").status_code == 409


def test_upload_without_content_length_is_413(server):
    boundary = "ts-boundary"

    def body():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="checkpoint"; filename="big.pt"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(64):  # 4 MiB in 64 KiB chunks, beyond the server's 2 MB limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    with server.client() as client:
        try:
            response = client.post(
                "/approximate", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
            )
        except httpx.TransportError:  # the server may close before the client has written everything
            response = None
        if response is not None:
            assert response.status_code == 413
            assert "content-length" not in response.request.headers
        assert client.get("/jobs").json()["count"] >= 0  # still serving


def test_a_job_survives_a_crash_and_restart(server_factory, lenet_bytes, tmp_path):
    """Kill the server (SIGKILL) while it solves a LeNet5, start it again on the same data dir: the job
    finishes, reusing the layers finished before the crash, and its ticket verifies."""
    (tmp_path / "lenet.pt").write_bytes(lenet_bytes)
    first = server_factory().start()
    with first.client() as client:
        job_id = _submit(
            client, [("lenet.pt", lenet_bytes)], {**LIGHT, "n": 20, "seed": 4, "resample": 8, "input_domain": [0, 1]}
        )
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
    checked = verify(target, ticket, n_random=64, worst_case_starts=0, dtypes=("float64",))
    assert checked.sections["random"]["float64"].max_abs_error <= checked.certified.max_bound
    started = time.monotonic()
    fresh = ts.build_ticket(target, 20, seed=4, resample=8, input_domain=(0, 1))
    assert ticket.kept_hash() == fresh.kept_hash(), f"rebuilt in {time.monotonic() - started:.1f} s"
