"""The app through TestClient: auth, limits, refusals, CORS, metrics, docs, and one job end to end."""

from __future__ import annotations

import errno
import json
import pickle

import pytest

from ticketsolver.errors import (
    CheckpointError,
    ConfigError,
    ConstructionError,
    JobError,
    SolverUnavailableError,
)
from ticketsolver.jobs.intake import MemoryBudgetError
from ticketsolver.jobs.store import StoreError
from ticketsolver.ticket import Ticket
from ticketsolver_api.errors import public_message, status_of

from .conftest import finished, job_params, mlp, state_dict_bytes, wait_for


class MarkerPayload:
    """Unpickling this creates a file: if the file exists, the upload's code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _submit(client, files, params=None, headers=None):
    return client.post(
        "/approximate",
        files=[("checkpoint", f) for f in files],
        data={"params": json.dumps(params or {})},
        headers=headers or {},
    )


def test_healthz_is_open_and_reports_the_executor(client_factory):
    client = client_factory(token="s3cret")
    answer = client.get("/healthz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["problems"] == [] and body["executor"] == "local"


def test_without_the_token_only_healthz_and_the_api_description_answer(client_factory, mlp_bytes):
    client = client_factory(token="s3cret")
    for request in (
        lambda h: client.get("/jobs", headers=h),
        lambda h: client.get("/metrics", headers=h),
        lambda h: client.get("/jobs/" + "0" * 32, headers=h),
        lambda h: client.get("/no-such-route", headers=h),
        lambda h: _submit(client, [("a.pt", mlp_bytes())], headers=h),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            response = request(headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/jobs", headers={"Authorization": "bearer s3cret"}).status_code == 200
    for open_path in ("/healthz", "/docs", "/redoc", "/openapi.json"):
        assert client.get(open_path).status_code == 200, open_path


def test_upload_of_pickle_payload_is_refused(client_factory, tmp_path):
    """The service's end of the intake's check (tests/jobs/test_intake.py tries each way of wrapping one):
    422 naming the client's file, no code run, no job."""
    client = client_factory()
    marker = tmp_path / "code-ran"
    response = _submit(client, [("evil.pt", pickle.dumps(MarkerPayload(str(marker))))])
    assert response.status_code == 422
    assert "evil.pt" in response.json()["detail"]
    assert not marker.exists()
    assert client.get("/jobs").json()["count"] == 0


def test_oversized_upload_413(client_factory, mlp_bytes):
    client = client_factory(max_upload_bytes=10_000)
    assert _submit(client, [("big.pt", b"\0" * 20_000)]).status_code == 413
    assert (
        _submit(
            client, [("a.pt", mlp_bytes()), ("b.pt", mlp_bytes(1)), ("c.pt", mlp_bytes(2)), ("d.pt", mlp_bytes(3))]
        ).status_code
        == 413
    )
    assert client.get("/jobs").json()["count"] == 0


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n": 40}, "above this service's limit of 32"),
        ({"n": [4, 5, 6, 7]}, "8 items; the limit is 6"),
        ({"n": [60, 61]}, "n = 60"),
        ({"build": {"solver": "magic"}}, "solver must be one of auto"),
        ({"n": [5, 5]}, "must not repeat a value"),
        ({"n": True}, "got True"),
        ({"build": {"seed": -1}}, "build: seed must be an integer"),
        ({"build": {"tolerance": "nan"}}, "build: tolerance must be a number"),
        ({"bogus": 1}, "unknown field 'bogus'"),
        ({"seed": 1}, "give it as build.seed"),
        ({"n_random": 5}, "give it as verify.n_random"),
        ([8], "expected a JSON object"),
    ],
)
def test_limits_and_bad_parameters_are_422_with_a_message(client_factory, mlp_bytes, params, message):
    client = client_factory(max_n=32, max_batch_items=6)
    response = _submit(client, [("a.pt", mlp_bytes()), ("b.pt", mlp_bytes(1))], params)
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert client.get("/jobs").json()["count"] == 0


@pytest.mark.parametrize(
    "error, status",
    [
        (SolverUnavailableError("gurobi needs a license: pip install 'ticketsolver[gurobi]'"), 503),
        (StoreError("the store could not be written: database is locked"), 503),
        (MemoryBudgetError("needs 2 GiB; the budget is 1 GiB", 2 * 1024**3, 1024**3), 413),
        (ConfigError("JobSpec: n must be an integer"), 422),
        (JobError("no checkpoint"), 422),
        (CheckpointError("not a checkpoint"), 422),
        (ConstructionError("NaN weights"), 422),
    ],
)
def test_each_library_error_has_its_status(error, status):
    assert status_of(error) == status


def test_a_store_error_caused_by_a_full_disk_is_507():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise StoreError("the store could not be written") from exc
    except StoreError as exc:
        assert status_of(exc) == 507


def test_answers_show_no_absolute_paths():
    message = "cannot read '/srv/ticketsolver/data/uploads/0f3a.pt': bad magic; see /usr/lib/x/y.py, n = 1/2"
    assert public_message(message) == "cannot read '0f3a.pt': bad magic; see y.py, n = 1/2"


def test_weights_per_job_limit_is_422(client_factory, mlp_bytes):
    client = client_factory(max_weights_per_job=500)
    response = _submit(client, [("a.pt", mlp_bytes())], {"n": [8, 10, 12]})
    assert response.status_code == 422
    assert "636 weights" in response.json()["detail"] and "limit is 500" in response.json()["detail"]


def test_a_job_over_the_memory_budget_is_refused_with_the_estimate_and_the_budget(client_factory, mlp_bytes):
    client = client_factory(memory_budget_bytes=1000)
    response = _submit(client, [("a.pt", mlp_bytes())], {"n": 8})
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "memory" in detail and "budget" in detail and "1,000" in detail, detail
    assert client.get("/jobs").json()["count"] == 0


def test_params_must_be_json(client_factory, mlp_bytes):
    client = client_factory()
    response = client.post("/approximate", files=[("checkpoint", ("a.pt", mlp_bytes()))], data={"params": "{n: 3"})
    assert response.status_code == 422 and response.json()["detail"].startswith("params is not valid JSON")
    no_checkpoint = client.post("/approximate", files=[("params", (None, b"{}"))])
    assert no_checkpoint.status_code == 422 and "no checkpoint" in no_checkpoint.json()["detail"]
    not_multipart = client.post("/approximate", json={"n": 8})
    assert not_multipart.status_code == 422 and "multipart/form-data" in not_multipart.json()["detail"]
    unknown = client.post("/approximate", files=[("checkpoint", ("a.pt", mlp_bytes())), ("extra", (None, b"1"))])
    assert unknown.status_code == 422 and "unknown form field 'extra'" in unknown.json()["detail"]


def test_a_checkpoint_part_without_a_file_name_is_refused_without_echoing_it(client_factory):
    client = client_factory()
    response = client.post("/approximate", files=[("checkpoint", (None, b"A" * 900_000))], data={"params": "{}"})
    assert response.status_code == 422
    assert "has no file name" in response.json()["detail"]
    assert len(response.content) < 1000 and b"AAAA" not in response.content


def test_a_file_name_of_5000_characters_is_accepted_and_shown_shortened(client_factory, mlp_bytes):
    client = client_factory()
    response = _submit(client, [("x" * 5000 + ".pt", mlp_bytes())], {"n": 8, "verify": None})
    assert response.status_code == 202, response.text
    name = client.get(f"/jobs/{response.json()['job_id']}").json()["checkpoints"][0]["name"]
    assert name.startswith("xxxx") and len(name) <= 200


def test_refusals_never_show_server_paths(client_factory, mlp_bytes):
    client = client_factory()
    data_dir = str(client.app.state.settings.data_dir.resolve())
    for files in ([("a.pt", b"not a checkpoint")], [("b.safetensors", b"\x00" * 64)], [("c.pt2", b"PK\x03\x04")]):
        response = _submit(client, files)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert files[0][0] in detail and data_dir not in detail and "/uploads/" not in detail, detail


def test_an_offset_beyond_64_bits_is_422_and_the_largest_one_answers(client_factory):
    client = client_factory()
    assert client.get("/jobs", params={"offset": 2**63}).status_code == 422
    largest = client.get("/jobs", params={"offset": 2**63 - 1})
    assert largest.status_code == 200 and largest.json() == {"data": [], "count": 0}


def test_unknown_and_malformed_job_ids(client_factory):
    client = client_factory()
    assert client.get("/jobs/" + "0" * 32).status_code == 404
    assert client.get("/jobs/" + "0" * 32 + "/tickets/0").status_code == 404
    assert client.delete("/jobs/" + "0" * 32).status_code == 404
    assert client.get("/jobs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/jobs/not-an-id/report").status_code == 422


def test_cors_is_closed_unless_configured(client_factory):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    closed = client_factory()
    assert "access-control-allow-origin" not in closed.get("/healthz", headers={"Origin": "https://a.example"}).headers
    assert "access-control-allow-origin" not in closed.options("/jobs", headers=preflight).headers
    opened = client_factory(cors_origins=["https://a.example"])
    answer = opened.get("/healthz", headers={"Origin": "https://a.example"})
    assert answer.headers["access-control-allow-origin"] == "https://a.example"
    assert "access-control-allow-origin" not in opened.options("/jobs", headers=preflight).headers


def test_cors_origins_from_the_environment(monkeypatch):
    from ticketsolver_api.settings import Settings

    monkeypatch.setenv("TICKETSOLVER_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TICKETSOLVER_TOKEN", "t")
    settings = Settings()
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.token.get_secret_value() == "t"


def test_openapi_describes_the_routes_and_takes_the_job_spec_as_params(client_factory):
    document = client_factory().get("/openapi.json").json()
    paths = document["paths"]
    assert {
        "/approximate",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/tickets",
        "/jobs/{job_id}/tickets/{k}",
        "/jobs/{job_id}/report",
        "/healthz",
        "/metrics",
    } <= set(paths)
    assert "delete" in paths["/jobs/{job_id}"]
    form = paths["/approximate"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["params"]["contentSchema"] == {"$ref": "#/components/schemas/JobSpec"}
    schemas = document["components"]["schemas"]
    assert {"n", "arch", "build", "verify", "time_limit_s", "learn", "sweep"} == set(schemas["JobSpec"]["properties"])
    assert {"BuildConfig", "VerifyConfig", "LearnSpec", "JobView", "JobSummary", "ItemView"} <= set(schemas)


def test_openapi_states_the_sizes_of_a_report_as_ticket_sizes_says(client_factory):
    from typing import get_type_hints

    from ticketsolver.ticket.artifact import TicketSizes

    schemas = client_factory().get("/openapi.json").json()["components"]["schemas"]
    sizes = schemas["TicketSizesPublic"]["properties"]
    assert set(sizes) == set(get_type_hints(TicketSizes))
    assert "iid" in json.dumps(sizes["source_kind"]) and "rerandomized" in json.dumps(sizes["source_kind"])


def test_submit_follow_download_and_metrics(client_factory, mlp_bytes, tmp_path):
    client = client_factory()
    response = _submit(client, [("../net.pt", mlp_bytes())], job_params([8, 10], seed=1))
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["checkpoints"][0]["name"] == "net.pt"
    assert [(i["n"], i["state"], [la["fraction"] for la in i["layers"]]) for i in job["items"]] == [
        (8, "succeeded", [1.0, 1.0]),
        (10, "succeeded", [1.0, 1.0]),
    ]
    tickets = client.get(f"/jobs/{job_id}/tickets").json()
    assert [t["url"] for t in tickets["data"]] == [f"/jobs/{job_id}/tickets/0", f"/jobs/{job_id}/tickets/1"]
    download = client.get(tickets["data"][1]["url"])
    assert download.status_code == 200
    (tmp_path / "got.ticket").write_bytes(download.content)
    report = client.get(f"/jobs/{job_id}/report").json()
    got = Ticket.load(tmp_path / "got.ticket")
    assert report["items"][1]["kept_values_sha256"] == got.kept_hash()
    assert report["items"][1]["ticket"]["sizes"] == got.sizes()  # source_kind and examined_values included
    assert client.delete(f"/jobs/{job_id}").status_code == 409  # finished jobs stay as they are
    assert client.get("/jobs", params={"state": "succeeded"}).json()["count"] == 1
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'ticketsolver_jobs{state="succeeded"} 1.0' in text
    assert "ticketsolver_items_completed_total 2.0" in text
    assert "ticketsolver_problems_solved_total" in text
    assert 'ticketsolver_request_seconds_count{method="GET",route="/jobs/{job_id}",status="200"}' in text


def _run_small_job(client) -> str:
    response = _submit(client, [("net.pt", state_dict_bytes(mlp()))], {"n": 8, "verify": None})
    assert response.status_code == 202, response.text
    job = wait_for(lambda: client.get(f"/jobs/{response.json()['job_id']}"), finished)
    assert job["state"] == "succeeded", job["error"]
    return job["id"]


def _files(data_dir) -> list[str]:
    return sorted(
        str(p.relative_to(data_dir)) for sub in ("uploads", "tickets", "resume") for p in (data_dir / sub).rglob("*")
    )


def test_delete_with_purge_removes_the_jobs_files(client_factory):
    client = client_factory()
    data_dir = client.app.state.settings.data_dir
    job_id = _run_small_job(client)
    assert any(f.startswith("uploads/") for f in _files(data_dir)) and any(
        f.startswith("tickets/") for f in _files(data_dir)
    )
    purged = client.delete(f"/jobs/{job_id}", params={"purge": "true"})
    assert purged.status_code == 200 and purged.json()["purged_at"] is not None
    assert _files(data_dir) == []
    assert client.get(f"/jobs/{job_id}/tickets/0").status_code in (404, 409, 410)
    assert client.delete("/jobs/" + "0" * 32, params={"purge": "true"}).status_code == 404


def test_retention_purges_finished_jobs_at_start(client_factory, tmp_path):
    first = client_factory(data_dir=tmp_path / "kept")
    job_id = _run_small_job(first)
    first.__exit__(None, None, None)
    second = client_factory(data_dir=tmp_path / "kept", retention_days=1e-9)  # ~0.1 ms
    job = wait_for(lambda: second.get(f"/jobs/{job_id}"), lambda j: j["purged_at"] is not None, timeout=30)
    assert job["state"] == "succeeded"
    assert _files(tmp_path / "kept") == []


def test_uploads_no_job_refers_to_are_removed_at_start(client_factory, tmp_path):
    stray = tmp_path / "orphans" / "uploads" / ("ab" * 16)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left by a crash between writing the upload and recording the job")
    client_factory(data_dir=tmp_path / "orphans")
    assert not stray.exists()


def test_a_store_that_cannot_write_its_uploads_answers_503_with_a_message(client_factory, mlp_bytes):
    client = client_factory()
    uploads = client.app.state.settings.data_dir / "uploads"
    uploads.rmdir()
    uploads.write_text("a file where the store keeps its uploads: every write there fails (as root too)")
    response = _submit(client, [("a.pt", mlp_bytes())], {"n": 8})
    assert response.status_code == 503, response.text
    assert "nothing was accepted" in response.json()["detail"]
    assert str(uploads) not in response.text
    assert client.get("/jobs").json()["count"] == 0
