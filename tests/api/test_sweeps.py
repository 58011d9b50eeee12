"""Sweep jobs against a real uvicorn server on 127.0.0.1: submit a checkpoint with its grid to ``POST /sweeps``,
follow it at ``GET /sweeps/{id}`` (and as a job at ``GET /jobs/{id}``), download results.csv and its figures;
refusals that name the field, hostile and oversized uploads, figure names that are not the sweep's, a cancel;
and, through TestClient, the token and the API description."""

from __future__ import annotations

import csv
import io
import json
import pickle
from collections.abc import Iterator

import httpx
import pytest

from ticketsolver.sweep import RESULT_COLUMNS

from .conftest import Server, finished, mlp, state_dict_bytes, wait_for

#: a cheap verification: float64 on a few random inputs, no worst-case search, no certificate
LIGHT = {"n_random": 16, "worst_case_starts": 0, "certify": False, "dtypes": ["float64"]}
#: two rows: n = 8 and 10 at depth 2L, also measured on wine
SWEEP = {"n": [8, 10], "depth": ["2L"], "data": "wine", "verify": LIGHT}
#: the checkpoint: an MLP of wine's shape, 13 features -> 8 hidden -> 3 classes
SIZES = (13, 8, 3)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _submit(client: httpx.Client, params: object, files: list | None = None) -> httpx.Response:
    files = files if files is not None else [("wine-mlp.pt", state_dict_bytes(mlp(0, SIZES)))]
    return client.post("/sweeps", files=[("checkpoint", f) for f in files], data={"params": json.dumps(params)})


@pytest.fixture(scope="module")
def swept(server: Server) -> Iterator[dict]:
    """One finished sweep on the module's server: its id and its ``GET /sweeps/{id}``."""
    with server.client() as client:
        answer = _submit(client, SWEEP)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert answer.headers["location"] == f"/sweeps/{job_id}"
        sweep = wait_for(lambda: client.get(f"/sweeps/{job_id}"), finished)
    assert sweep["state"] == "succeeded", sweep["error"]
    yield {"id": job_id, "sweep": sweep}


def test_a_sweep_reports_its_rows_and_links_its_results(swept):
    job_id, sweep = swept["id"], swept["sweep"]
    assert (sweep["rows_done"], sweep["rows_total"], sweep["skipped"]) == (2, 2, [])
    assert sweep["progress"] == 1.0 and sweep["checkpoint"] == "wine-mlp.pt"
    assert sweep["params"]["n"] == [8, 10] and sweep["params"]["data"] == "wine"
    assert sweep["results_url"] == f"/sweeps/{job_id}/results.csv" and sweep["job_url"] == f"/jobs/{job_id}"
    names = {figure["name"] for figure in sweep["figures"]}
    assert {"error_vs_n.png", "error_vs_n.svg"} <= names
    assert all(figure["url"] == f"/sweeps/{job_id}/figures/{figure['name']}" for figure in sweep["figures"])


def test_the_results_table_downloads_as_csv_with_one_row_per_setting(server, swept):
    with server.client() as client:
        answer = client.get(f"/sweeps/{swept['id']}/results.csv")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert f'filename="sweep-{swept["id"]}.csv"' in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 2 and set(RESULT_COLUMNS) <= set(rows[0])
    assert [(int(r["n"]), r["depth"]) for r in rows] == [(8, "2L"), (10, "2L")]
    assert all(float(r["max_rel_error_random"]) >= 0 and r["accuracy_ticket"] for r in rows)


def test_the_figures_download_by_their_names_and_no_other_path(server, swept):
    job_id = swept["id"]
    with server.client() as client:
        png = client.get(f"/sweeps/{job_id}/figures/error_vs_n.png")
        svg = client.get(f"/sweeps/{job_id}/figures/error_vs_n.svg")
        nope = client.get(f"/sweeps/{job_id}/figures/nope.png")
        refused = {
            name: client.get(f"/sweeps/{job_id}/figures/{name}").status_code
            for name in (
                "sweep.json",
                "..%2Fsweep.json",
                "..%2F..%2Fjobs.sqlite",
                "results.csv",
                ".svg",
                "%2Fetc%2Fx.png",
            )
        }
        dotted = client.get(f"/sweeps/{job_id}/figures/../sweep.json")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    assert nope.status_code == 404 and "drew no figure 'nope.png'; it drew error_vs_n.png" in nope.json()["detail"]
    assert all(code in (404, 422) for code in refused.values()), refused
    assert dotted.status_code == 404  # the client normalises the path: /sweeps/{id}/sweep.json is no route


def test_a_sweep_is_a_job_with_a_sweep_section(server, swept):
    job_id = swept["id"]
    with server.client() as client:
        job = client.get(f"/jobs/{job_id}").json()
        tickets = client.get(f"/jobs/{job_id}/tickets").json()["data"]
        report = client.get(f"/jobs/{job_id}/report").json()["items"][0]
        listed = client.get("/jobs/progress").json()["data"]
        n_sweep_figure = client.get(f"/jobs/{job_id}/figures/sweep.svg")
    assert job["state"] == "succeeded" and job["params"]["sweep"]["n"] == [8, 10] and job["params"]["verify"] is None
    assert [(i["n"], i["has_ticket"], i["state"]) for i in job["items"]] == [(None, False, "succeeded")]
    assert [(t["n"], t["url"]) for t in tickets] == [(None, None)]
    assert report["item"] == {"checkpoint": "wine-mlp.pt", "data": "wine"} and report["sweep"]["rows"] == 2
    assert job_id in {j["id"] for j in listed}
    assert n_sweep_figure.status_code == 409 and f"/sweeps/{job_id}" in n_sweep_figure.json()["detail"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"n": [0]}, "n must be a non-empty list of integers in [1, 64]"),
        ({"depth": ["2L"]}, "n is required"),
        ({"n": "10:5"}, "sweep: n '10:5'"),  # a range as the CLI takes it, stop below start
        ({"n": [8], "depth": ["3L"]}, "depth must be a non-empty list of 2L, L+1"),
        ({"n": [8], "data": "mnist"}, "data must be one of digits, digits-flat, wine"),
        ({"n": [8], "build": {"seed": 1}}, "unknown field 'build'"),
        ({"n": [8], "verify": {"n_random": -1}}, "n_random must be an integer"),
        ({"n": [8], "time_limit_s": 0}, "time_limit_s must be a positive number of seconds"),
    ],
)
def test_bad_params_are_422_naming_the_field(server, params, field):
    with server.client() as client:
        answer = _submit(client, params)
    assert answer.status_code == 422 and field in answer.json()["detail"], answer.text


def test_refusals_of_the_form_and_the_checkpoint(server, tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    net = ("net.pt", state_dict_bytes(mlp(0, SIZES)))
    with server.client() as client:
        two = _submit(client, SWEEP, [net, net])
        bad_json = client.post("/sweeps", files=[("checkpoint", net)], data={"params": "{n: 8"})
        hostile = _submit(client, SWEEP, [("evil.pt", pickle.dumps(Payload()))])
        misfit = _submit(client, SWEEP, [("eight.pt", state_dict_bytes(mlp(0, (8, 16, 3))))])
        oversized = _submit(client, SWEEP, [("big.pt", b"\0" * 3_000_000)])
        count = client.get("/jobs").json()["count"]
        not_a_sweep = client.get(f"/sweeps/{'0' * 32}")
    assert two.status_code == 422 and "a sweep takes one checkpoint, got 2" in two.json()["detail"]
    assert bad_json.status_code == 422 and "params is not valid JSON" in bad_json.json()["detail"]
    assert hostile.status_code == 422 and "evil.pt" in hostile.json()["detail"] and not marker.exists()
    assert misfit.status_code == 422 and "'eight.pt': it takes inputs of shape (8,)" in misfit.json()["detail"]
    assert oversized.status_code == 413
    assert not_a_sweep.status_code == 404
    with server.client() as client:
        assert client.get("/jobs").json()["count"] == count  # nothing refused became a job


def test_a_build_job_is_no_sweep(server):
    with server.client() as client:
        job_id = client.post(
            "/approximate",
            files=[("checkpoint", ("net.pt", state_dict_bytes(mlp(0, SIZES))))],
            data={"params": json.dumps({"n": 8, "verify": None})},
        ).json()["job_id"]
        answer = client.get(f"/sweeps/{job_id}")
        assert client.get(f"/sweeps/{job_id}/results.csv").status_code == 404
    assert answer.status_code == 404 and f"see /jobs/{job_id}" in answer.json()["detail"]


def _long_sweep(client: httpx.Client) -> str:
    """Submit seven rows of a wider MLP (n = 16, 24, ..., 64): some seconds each."""
    files = [("wide.pt", state_dict_bytes(mlp(0, (13, 64, 64, 3))))]
    answer = _submit(client, {"n": "16:64:8", "verify": LIGHT}, files)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def test_cancelling_a_running_sweep_stops_it_and_keeps_its_rows(server):
    with server.client() as client:
        job_id = _long_sweep(client)
        running = wait_for(lambda: client.get(f"/sweeps/{job_id}"), lambda s: finished(s) or "building" in s["message"])
        assert running["state"] == "running" and running["rows_total"] == 7, running
        cancelled = client.delete(f"/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        sweep = wait_for(lambda: client.get(f"/sweeps/{job_id}"), finished, timeout=10)
        figure = client.get(f"/sweeps/{job_id}/figures/error_vs_n.png")
        table = client.get(f"/sweeps/{job_id}/results.csv")
    assert sweep["state"] == "cancelled" and sweep["rows_done"] < 7 and sweep["figures"] == []
    assert figure.status_code == 409
    if sweep["rows_done"]:  # the rows finished before the cancel stay downloadable
        assert len(list(csv.DictReader(io.StringIO(table.text)))) == sweep["rows_done"]
    else:
        assert table.status_code == 409 and "no finished row yet" in table.json()["detail"]


@pytest.mark.slow
def test_a_sweep_survives_a_crash_and_restart_without_redoing_its_rows(server_factory):
    """Kill the server (SIGKILL) once two rows are done, start it again on the same data dir: the sweep
    finishes, and the rows done before the crash are the same bytes (their timings included): not rebuilt."""
    first = server_factory().start()
    with first.client() as client:
        job_id = _long_sweep(client)
        at_kill = wait_for(lambda: client.get(f"/sweeps/{job_id}"), lambda s: finished(s) or s["rows_done"] >= 2)
        before = client.get(f"/sweeps/{job_id}/results.csv").text.splitlines()
    first.kill()
    assert at_kill["state"] == "running", at_kill
    second = server_factory(data_dir=first.data_dir).start()
    with second.client() as client:
        sweep = wait_for(lambda: client.get(f"/sweeps/{job_id}"), finished)
        after = client.get(f"/sweeps/{job_id}/results.csv").text.splitlines()
        report = client.get(f"/jobs/{job_id}/report").json()["items"][0]["sweep"]
    assert sweep["state"] == "succeeded" and sweep["rows_done"] == 7, sweep
    assert len(before) - 1 >= 2 and after[: len(before)] == before and len(after) == 8
    assert len(before) - 1 <= report["reused"] < 7


# --- TestClient: no job runs ---------------------------------------------------------------------------------


def test_the_sweep_routes_need_the_token(client_factory):
    client = client_factory(token="s3cret")
    job_id = "0" * 32
    for request in (
        lambda h: client.post("/sweeps", files=[("checkpoint", ("a.pt", b"x"))], headers=h),
        lambda h: client.get(f"/sweeps/{job_id}", headers=h),
        lambda h: client.get(f"/sweeps/{job_id}/results.csv", headers=h),
        lambda h: client.get(f"/sweeps/{job_id}/figures/error_vs_n.png", headers=h),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert request(headers).status_code == 401
    assert client.get(f"/sweeps/{job_id}", headers={"Authorization": "Bearer s3cret"}).status_code == 404


def test_openapi_describes_the_sweep_routes_and_params(client_factory):
    document = client_factory().get("/openapi.json").json()
    assert {"/sweeps", "/sweeps/{job_id}", "/sweeps/{job_id}/results.csv", "/sweeps/{job_id}/figures/{name}"} <= set(
        document["paths"]
    )
    form = document["paths"]["/sweeps"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["params"]["contentSchema"] == {"$ref": "#/components/schemas/SweepSection"}
    section = document["components"]["schemas"]["SweepSection"]["properties"]
    assert {"n", "resample", "source_density", "depth", "verify", "data"} <= set(section)
    assert "sweep" in document["components"]["schemas"]["JobSpec"]["properties"]


# --- the web view in a real browser ------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_the_job_page_of_a_sweep_shows_its_rows_figures_and_the_csv(browser_kit, browser, token_server, tmp_path):
    from .conftest import BROWSER_TOKEN
    from .test_browser import by_css, wait_for_download

    kit, driver = browser_kit, browser
    with token_server.client(headers={"Authorization": f"Bearer {BROWSER_TOKEN}"}) as client:
        job_id = _submit(client, SWEEP).json()["job_id"]
        assert wait_for(lambda: client.get(f"/sweeps/{job_id}"), finished)["state"] == "succeeded"
    kit.sign_in(driver, token_server.url, BROWSER_TOKEN)
    driver.get(f"{token_server.url}/ui/jobs/{job_id}")
    drawn = "return document.querySelectorAll('section.item figure.plot svg path').length > 10"
    kit.wait(driver, lambda d: d.execute_script(drawn), message="the sweep's page drew no figure")
    (item,) = by_css(driver, 'section.item[data-k="0"]')
    assert "sweep of n = 8, 10" in item.text and "rows 2 / 2" in item.text
    names = {a.text for a in by_css(driver, "section.item a.download-figure")}
    assert {"error_vs_n.png", "error_vs_n.svg"} <= names
    by_css(driver, "section.item a.download-results")[0].click()
    downloaded = wait_for_download(tmp_path / "downloads")
    assert len(list(csv.DictReader(io.StringIO(downloaded.read_text())))) == 2
    assert kit.off_host(kit.requested_urls(driver), token_server.url) == []
