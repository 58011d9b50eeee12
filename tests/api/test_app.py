"""The app through TestClient: auth, limits, refusals, CORS, metrics, docs, and one job end to end."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import torch

from ticketsolver.ticket import Ticket

from .conftest import LIGHT, finished, wait_for


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
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["executor"] == "local"


def test_missing_token_401(client_factory, mlp_bytes):
    client = client_factory(token="s3cret")
    for request in (
        lambda h: client.get("/jobs", headers=h),
        lambda h: client.get("/metrics", headers=h),
        lambda h: _submit(client, [("a.pt", mlp_bytes())], headers=h),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            response = request(headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("wrap", ["raw pickle", "torch.save"])
def test_upload_of_pickle_payload_is_refused(client_factory, tmp_path, wrap):
    client = client_factory()
    marker = tmp_path / "code-ran"
    if wrap == "raw pickle":
        payload = pickle.dumps(MarkerPayload(str(marker)))
    else:
        buffer = io.BytesIO()
        torch.save({"fc.weight": MarkerPayload(str(marker))}, buffer)
        payload = buffer.getvalue()
    response = _submit(client, [("evil.pt", payload)])
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
        ({"solver": "magic"}, "unknown solver 'magic'"),
        ({"n": [5, 5]}, "distinct"),
        ({"seed": -1}, "greater than or equal to 0"),
        ({"tolerance": "nan"}, "finite number"),
        ({"bogus": 1}, "Extra inputs are not permitted"),
    ],
)
def test_limits_and_bad_parameters_are_422_with_a_message(client_factory, mlp_bytes, params, message):
    client = client_factory(max_n=32, max_batch_items=6)
    response = _submit(client, [("a.pt", mlp_bytes()), ("b.pt", mlp_bytes(1))], params)
    assert response.status_code == 422
    assert message in json.dumps(response.json())


def test_weights_per_job_limit_is_422(client_factory, mlp_bytes):
    client = client_factory(max_weights_per_job=500)
    response = _submit(client, [("a.pt", mlp_bytes())], {"n": [8, 10, 12]})
    assert response.status_code == 422
    assert "636 weights" in response.json()["detail"] and "limit is 500" in response.json()["detail"]


def test_params_must_be_json(client_factory, mlp_bytes):
    client = client_factory()
    response = client.post("/approximate", files=[("checkpoint", ("a.pt", mlp_bytes()))], data={"params": "{n: 3"})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    assert client.post("/approximate", data={"params": "{}"}).status_code == 422  # no checkpoint


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


def test_openapi_describes_the_routes(client_factory):
    paths = client_factory().get("/openapi.json").json()["paths"]
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


def test_openapi_states_the_source_kind_and_examined_values_of_a_report(client_factory):
    schemas = client_factory().get("/openapi.json").json()["components"]["schemas"]
    sizes = schemas["TicketSizesPublic"]["properties"]
    assert {"target_params", "source_params", "kept_params", "pruned_params"} <= set(sizes)
    assert "iid" in json.dumps(sizes["source_kind"]) and "rerandomized" in json.dumps(sizes["source_kind"])
    assert "discarded draws" in sizes["examined_values"]["description"]


def test_submit_follow_download_and_metrics(client_factory, mlp_bytes, tmp_path):
    client = client_factory()
    response = _submit(client, [("../net.pt", mlp_bytes())], {"n": [8, 10], "seed": 1, **LIGHT})
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
