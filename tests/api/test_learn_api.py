"""A learned-mask job against a real uvicorn server on 127.0.0.1: submit with ``learn``, poll, download the
ticket and its exports (ONNX run in onnxruntime, safetensors), the report with the task instead of a
verification, the job page, figures that answer 409 (no target), and refusals that name the field. The last
test drives the job page in a real browser (marked ``browser``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
import torch

from ticketsolver.data import load_wine_standardized
from ticketsolver.ticket import Ticket

from .conftest import Server, finished, mlp, state_dict_bytes, wait_for

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

#: IteRand on wine for 2 epochs (4 iterations of 64 examples): a period of 2 re-randomises twice
LEARN = {"method": "iterand", "keep": 0.5, "epochs": 2, "data": "wine", "rerand_period": 2}
#: the checkpoint: an MLP of wine's shape, 13 features -> 8 hidden -> 3 classes
SIZES = (13, 8, 3)


def _submit(client: httpx.Client, params: object, checkpoint: bytes | None = None) -> httpx.Response:
    return client.post(
        "/approximate",
        files=[("checkpoint", ("wine-mlp.pt", checkpoint or state_dict_bytes(mlp(0, SIZES))))],
        data={"params": json.dumps(params)},
    )


@pytest.fixture(scope="module")
def learned(server: Server) -> Iterator[dict]:
    """One finished learned-mask job on the module's server: its id and its JSON view."""
    with server.client() as client:
        answer = _submit(client, {"learn": LEARN})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
    assert job["state"] == "succeeded", job["error"] or job["items"][0]["error"]
    yield {"id": job_id, "job": job}


def _ticket(client: httpx.Client, job_id: str, folder: Path) -> Ticket:
    answer = client.get(f"/jobs/{job_id}/tickets/0")
    assert answer.status_code == 200
    assert f'filename="job-{job_id}-0-learned.ticket"' in answer.headers["content-disposition"]
    (folder / "learned.ticket").write_bytes(answer.content)
    return Ticket.load(folder / "learned.ticket")  # regenerates the network and checks its hashes


def test_a_learned_job_makes_one_item_whose_ticket_downloads_and_loads(server, learned, tmp_path):
    job_id, job = learned["id"], learned["job"]
    assert job["params"]["learn"]["method"] == "iterand" and job["params"]["verify"] is None
    assert [(item["state"], item["progress"], item["layers"]) for item in job["items"]] == [("succeeded", 1.0, [])]
    with server.client() as client:
        tickets = client.get(f"/jobs/{job_id}/tickets").json()["data"]
        assert [(t["k"], t["n"], t["url"]) for t in tickets] == [(0, None, f"/jobs/{job_id}/tickets/0")]
        ticket = _ticket(client, job_id, tmp_path)
        report = client.get(f"/jobs/{job_id}/report").json()["items"][0]
    assert ticket.learned and ticket.sizes()["source_kind"] == "rerandomized"
    assert ticket.build["method"] == "iterand" and ticket.build["rerandomization"]["events"] == 2
    assert report["kept_values_sha256"] == ticket.kept_hash()
    assert report["ticket"]["sizes"] == ticket.sizes()


def test_the_report_holds_the_task_and_says_why_nothing_was_verified(server, learned):
    with server.client() as client:
        report = client.get(f"/jobs/{learned['id']}/report").json()["items"][0]
        alone = client.get(f"/jobs/{learned['id']}/tickets/0/report")
    assert report["item"] == {"checkpoint": "wine-mlp.pt", "method": "iterand", "data": "wine"}
    assert report["verification"] is None and "learned-mask ticket" in report["verification_note"]
    task = report["task"]
    assert task["examples"] == 54 and 0.0 <= task["accuracy"] <= 1.0 and task["loss"] > 0
    assert task["accuracy"] == task["recorded_accuracy"] == report["ticket"]["learned"]["task"]["test_accuracy"]
    assert alone.status_code == 200 and alone.json() == report
    assert f'filename="job-{learned["id"]}-0-learned.report.json"' in alone.headers["content-disposition"]


def test_the_onnx_export_runs_in_onnxruntime_as_the_ticket_does(server, learned, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    with server.client() as client:
        answer = client.get(f"/jobs/{learned['id']}/tickets/0/export/onnx")
        assert answer.status_code == 200, answer.text
        ticket = _ticket(client, learned["id"], tmp_path)
    session = ort.InferenceSession(answer.content, providers=["CPUExecutionProvider"])
    x = load_wine_standardized().x_test
    (got,) = session.run(["output"], {"input": x.numpy()})
    with torch.no_grad():
        expected = ticket.to_module()(x).numpy()
    assert got.shape == expected.shape == (54, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    accuracy = float((got.argmax(1) == load_wine_standardized().y_test.numpy()).mean())
    assert accuracy == pytest.approx(ticket.build["task"]["test_accuracy"])


def test_the_safetensors_export_holds_sources_and_masks(server, learned, tmp_path):
    from safetensors.torch import load

    with server.client() as client:
        answer = client.get(f"/jobs/{learned['id']}/tickets/0/export/safetensors")
        assert answer.status_code == 200, answer.text
        ticket = _ticket(client, learned["id"], tmp_path)
    tensors = load(answer.content)
    for name, value in ticket.to_module().state_dict().items():
        torch.testing.assert_close(tensors[name], value)
        assert torch.equal(tensors[name], tensors[f"{name}.source"] * tensors[f"{name}.mask"])


def test_the_job_page_answers_and_the_figures_are_409_without_a_target(server, learned):
    job_id = learned["id"]
    with server.client() as client:
        assert client.get(f"/ui/jobs/{job_id}").status_code == 200
        for figure in ("weight-errors", "output-errors"):
            answer = client.get(f"/jobs/{job_id}/tickets/0/figures/{figure}.svg")
            assert answer.status_code == 409, figure
            assert "learned-mask ticket: no target to compare it with" in answer.json()["detail"]
        sweep = client.get(f"/jobs/{job_id}/figures/sweep.svg")
    assert sweep.status_code == 409 and "learned masks" in sweep.json()["detail"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"learn": {**LEARN, "data": "mnist"}}, "learn: data must be one of digits, digits-flat, wine"),
        ({"learn": {**LEARN, "keep": 0}}, "learn: keep must be a number in (0, 1], got 0"),
        ({"n": [8, 12], "learn": LEARN}, "n lists 2 values, but a learned-mask job"),
        ({"learn": {**LEARN, "data": "digits"}}, "it takes inputs of shape (13,), but 'digits' has (1, 28, 28)"),
    ],
)
def test_bad_learn_params_are_422_naming_the_field(server, params, message):
    with server.client() as client:
        answer = _submit(client, params)
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


@pytest.mark.browser
@pytest.mark.slow
def test_the_job_page_shows_a_learned_item_in_a_browser(
    browser_kit: ModuleType, browser: WebDriver, server: Server, learned: dict
) -> None:
    """The page's script draws the learned item (method, task accuracy, kept / source per layer), asks for no
    figure and logs no error."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/ui/jobs/{learned['id']}")
    task = browser_kit.wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#task table"), message="no task")
    assert "test accuracy" in task[0].text
    (item,) = browser.find_elements(By.CSS_SELECTOR, 'section.item[data-k="0"]')
    assert "learned mask (iterand on wine)" in item.find_element(By.TAG_NAME, "h3").text
    rows = [r for r in item.find_elements(By.CSS_SELECTOR, "table.layers tr") if r.find_elements(By.TAG_NAME, "td")]
    assert [r.find_elements(By.TAG_NAME, "td")[4].text for r in rows] == ["52 / 104", "12 / 24"]
    assert item.find_elements(By.CSS_SELECTOR, "a.download-onnx") and not item.find_elements(By.CSS_SELECTOR, "figure")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    assert not any("/figures/" in url for url in browser_kit.requested_urls(browser))


@pytest.mark.browser
@pytest.mark.slow
def test_a_learn_job_submitted_through_the_form_succeeds_with_the_fields_given(
    browser_kit: ModuleType, browser: WebDriver, server: Server, tmp_path: Path
) -> None:
    """The jobs page's form sends {"learn": {method, data, keep, epochs, seed}} (no n, build or verify) when "learn a
    mask" is ticked; the job it makes learns an iterand mask on wine and its spec is what the form said."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    checkpoint = tmp_path / "wine-mlp.pt"
    checkpoint.write_bytes(state_dict_bytes(mlp(1, SIZES)))
    with server.client() as client:
        before = {job["id"] for job in client.get("/jobs").json()["data"]}
    browser.get(server.url + "/")
    (form,) = browser_kit.wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "form#submit-form"))
    form.find_element(By.CSS_SELECTOR, "input[type=file][name=checkpoint]").send_keys(str(checkpoint))
    form.find_element(By.CSS_SELECTOR, "input[name=learn]").click()
    Select(form.find_element(By.CSS_SELECTOR, "select[name=method]")).select_by_value("iterand")
    Select(form.find_element(By.CSS_SELECTOR, "select[name=data]")).select_by_value("wine")
    for name, value in (("keep", "0.25"), ("epochs", "3"), ("seed", "7")):
        field = form.find_element(By.CSS_SELECTOR, f"[name={name}]")
        field.clear()
        field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    browser_kit.wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#form-status a.job-link"), message="no job")
    with server.client() as client:
        (job_id,) = {job["id"] for job in client.get("/jobs").json()["data"]} - before
        job = wait_for(lambda: client.get(f"/jobs/{job_id}"), finished)
    assert job["state"] == "succeeded", job["error"]
    learn = job["params"]["learn"]
    given = (learn["method"], learn["data"], learn["keep"], learn["epochs"], learn["seed"])
    assert given == ("iterand", "wine", 0.25, 3, 7)
    assert job["params"]["verify"] is None and [item["n"] for item in job["items"]] == [None]
