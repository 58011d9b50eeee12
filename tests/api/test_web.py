"""The web view through TestClient: open shells, closed data, figures with data, exports that load, no
asset from another host. (The real browser drives the same pages in test_browser.py.)"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from ticketsolver.ticket import Ticket
from ticketsolver_api.auth import is_open
from ticketsolver_api.settings import Settings

from .conftest import finished, mlp, state_dict_bytes, wait_for

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SVG_NS = "{http://www.w3.org/2000/svg}"
#: both dtypes, few inputs: the output-error figure must reproduce these very inputs
VERIFY = {"n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3, "dtypes": ["float32", "float64"]}
NAME = "private-net.pt"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A token-protected app with two finished jobs: a verified sweep (n = 8, 10) and an unverified n = 8."""
    from fastapi.testclient import TestClient

    from ticketsolver_api.main import create_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("web") / "data", token=TOKEN, poll_interval=0.1)
    with TestClient(create_app(settings)) as client:
        checkpoint = state_dict_bytes(mlp(0))
        ids = []
        for params in ({"n": [8, 10], "build": {"seed": 1}, "verify": VERIFY}, {"n": 8, "verify": None}):
            answer = client.post(
                "/approximate",
                files=[("checkpoint", (NAME, checkpoint))],
                data={"params": json.dumps(params)},
                headers=AUTH,
            )
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["job_id"])
        for job_id in ids:
            job = wait_for(lambda job_id=job_id: client.get(f"/jobs/{job_id}", headers=AUTH), finished)
            assert job["state"] == "succeeded", job["error"]
        yield {"client": client, "sweep": ids[0], "plain": ids[1]}


def _get(web: dict, path: str, **kwargs: object):
    return web["client"].get(path, headers=AUTH, **kwargs)


class _Links(HTMLParser):
    """Every URL a page makes the browser fetch or follow: src, href, action."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "action") and value is not None]


def _links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.urls


def _svg(content: bytes) -> ET.Element:
    root = ET.fromstring(content)
    assert root.tag == f"{SVG_NS}svg"
    return root


def _texts(root: ET.Element) -> str:
    return " ".join("".join(node.itertext()) for node in root.iter(f"{SVG_NS}text"))


def _series(root: ET.Element, gid: str) -> list[str]:
    """The path data drawn under the SVG group of id ``gid``."""
    groups = [node for node in root.iter() if node.get("id") == gid]
    assert groups, f"no series {gid} in the figure"
    return [path.get("d", "") for group in groups for path in group.iter(f"{SVG_NS}path")]


# --- auth: open shells, closed data --------------------------------------------------------------------


def test_pages_and_assets_render_for_an_anonymous_user_without_job_data(web):
    client = web["client"]
    job_id = web["sweep"]
    home = client.get("/")
    page = client.get(f"/ui/jobs/{job_id}")
    for answer in (home, page):
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
        assert 'id="token-form"' in answer.text and 'name="token"' in answer.text
        assert NAME not in answer.text and "succeeded" not in answer.text
    assert job_id not in home.text and web["plain"] not in page.text
    assert 'id="submit-form"' in home.text and 'id="jobs"' in home.text
    for asset in ("/ui/static/app.js", "/ui/static/app.css"):
        assert client.get(asset).status_code == 200


def test_the_token_form_is_only_shown_when_the_service_has_a_token(client_factory):
    client = client_factory()
    assert client.get("/").status_code == 200
    assert 'id="token-form"' not in client.get("/").text


def test_every_data_endpoint_refuses_without_the_token(web):
    job_id = web["sweep"]
    paths = [
        "/jobs/progress",
        f"/jobs/{job_id}/tickets/0/figures/weight-errors.svg",
        f"/jobs/{job_id}/tickets/0/figures/output-errors.svg",
        f"/jobs/{job_id}/figures/sweep.svg",
        f"/jobs/{job_id}/tickets/0/export/safetensors",
        f"/jobs/{job_id}/tickets/0/export/onnx",
        f"/jobs/{job_id}/tickets/0/report",
    ]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = web["client"].get(path, headers=headers)
            assert answer.status_code == 401, path
            assert NAME not in answer.text
    assert _get(web, "/jobs/progress").status_code == 200


def test_the_open_prefix_opens_pages_and_assets_only():
    assert is_open("/") and is_open("/ui/static/app.js") and is_open("/ui/jobs/" + "a" * 32)
    assert is_open("/docs") and is_open("/ui/docs-assets/swagger-ui-bundle.js")
    for closed in ("/jobs", "/jobs/progress", "/ui/../jobs", "/ui/static/../../jobs", "/uix", "/ui", "/metrics"):
        assert not is_open(closed), closed


# --- the jobs table ------------------------------------------------------------------------------------


def test_jobs_progress_counts_layers_items_and_problems_in_one_request(web):
    rows = {row["id"]: row for row in _get(web, "/jobs/progress").json()["data"]}
    sweep = _get(web, f"/jobs/{web['sweep']}").json()
    row = rows[web["sweep"]]
    assert row["state"] == "succeeded" and row["progress"] == 1.0
    assert (row["items_total"], row["items_done"]) == (2, 2)
    assert (row["layers_total"], row["layers_done"]) == (4, 4)  # two Linear layers per item
    assert row["problems_solved"] == sum(item["problems_solved"] for item in sweep["items"]) > 0
    assert row["created_at"] == sweep["created_at"] and row["finished_at"] == sweep["finished_at"]
    only = _get(web, "/jobs/progress", params={"limit": 1}).json()
    assert len(only["data"]) == 1 and only["count"] == 2


# --- figures -------------------------------------------------------------------------------------------


def test_weight_errors_figure_is_a_log_x_histogram_per_layer(web):
    answer = _get(web, f"/jobs/{web['sweep']}/tickets/0/figures/weight-errors.svg")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
    root = _svg(answer.content)
    for layer in (0, 1):
        (outline,) = _series(root, f"weight-errors-layer-{layer}")
        assert outline.count("L") > 20  # a step outline over many bins, not an empty axis
    texts = _texts(root)
    assert "per-weight error" in texts and "log scale" in texts and "weights" in texts
    assert "layer 0" in texts and "layer 1" in texts


def test_weight_errors_recomputed_from_ticket_and_target_match_the_builders_record(web, tmp_path):
    from ticketsolver.models import Target
    from ticketsolver_api.web.measures import weight_errors

    ticket = _ticket(web, web["sweep"], 1, tmp_path)
    layers = _get(web, f"/jobs/{web['sweep']}/report").json()["items"][1]["ticket"]["layers"]
    errors = weight_errors(Target.from_module(mlp(0), (8,)).module, ticket)
    assert [e.size for e in errors] == [16 * 8, 4 * 16]
    for recomputed, recorded in zip(errors, layers, strict=True):
        assert recomputed.max() == pytest.approx(recorded["weight_error_max"], rel=1e-9)
        assert recomputed.mean() == pytest.approx(recorded["weight_error_mean"], rel=1e-9)


def test_output_errors_figure_plots_the_verifications_own_inputs_per_dtype(web, tmp_path):
    from ticketsolver.models import Target
    from ticketsolver_api.web.measures import relative_output_errors

    answer = _get(web, f"/jobs/{web['sweep']}/tickets/1/figures/output-errors.svg")
    assert answer.status_code == 200
    root = _svg(answer.content)
    for dtype in ("float32", "float64"):
        line = max(_series(root, f"output-errors-{dtype}"), key=len)  # the others draw its marker
        assert line.count("L") == VERIFY["n_random"] - 1  # one vertex per input
    assert "input index" in _texts(root) and "relative output error" in _texts(root)

    verification = _get(web, f"/jobs/{web['sweep']}/report").json()["items"][1]["verification"]
    target = Target.from_module(mlp(0), (8,)).module
    errors = relative_output_errors(target, _ticket(web, web["sweep"], 1, tmp_path), verification)
    measured = verification["sections"]["random"]
    assert errors["float64"].size == VERIFY["n_random"]
    assert np.nanmax(errors["float64"]) == pytest.approx(measured["float64"]["relative_error_max"], rel=1e-9)
    assert np.nanmean(errors["float64"]) == pytest.approx(measured["float64"]["relative_error_mean"], rel=1e-9)
    assert np.nanmax(errors["float32"]) == pytest.approx(measured["float32"]["relative_error_max"], rel=1e-2)


def test_sweep_figure_has_one_point_per_n(web):
    answer = _get(web, f"/jobs/{web['sweep']}/figures/sweep.svg")
    assert answer.status_code == 200
    root = _svg(answer.content)
    for gid in ("sweep-weight-0", "sweep-output-0"):
        assert any(d.count("L") == 1 for d in _series(root, gid))  # two values of n: one segment
    assert "n (random values per target weight)" in _texts(root)


def test_an_unverified_item_has_weight_errors_but_no_output_errors(web):
    job_id = web["plain"]
    assert _get(web, f"/jobs/{job_id}/tickets/0/figures/weight-errors.svg").status_code == 200
    answer = _get(web, f"/jobs/{job_id}/tickets/0/figures/output-errors.svg")
    assert answer.status_code == 409 and "without verification" in answer.json()["detail"]
    assert _get(web, f"/jobs/{job_id}/tickets/1/figures/weight-errors.svg").status_code == 404
    assert _get(web, f"/jobs/{'0' * 32}/figures/sweep.svg").status_code == 404


# --- downloads -----------------------------------------------------------------------------------------


def _ticket(web: dict, job_id: str, k: int, folder) -> Ticket:
    path = folder / f"{job_id}-{k}.ticket"
    path.write_bytes(_get(web, f"/jobs/{job_id}/tickets/{k}").content)
    return Ticket.load(path)


def test_onnx_export_downloads_and_runs_as_the_ticket_does(web, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    answer = _get(web, f"/jobs/{web['sweep']}/tickets/0/export/onnx")
    assert answer.status_code == 200, answer.text
    assert f'filename="job-{web["sweep"]}-0-n8.onnx"' in answer.headers["content-disposition"]
    session = ort.InferenceSession(answer.content, providers=["CPUExecutionProvider"])
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    (got,) = session.run(["output"], {"input": x.numpy()})
    with torch.no_grad():  # the reference in float64: float32 passes of an L pair round its offsets' cancellation
        expected = _ticket(web, web["sweep"], 0, tmp_path).to_module().double()(x.double()).numpy()
    assert got.shape == expected.shape == (5, 4)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_safetensors_export_downloads_the_pruned_network_with_sources_and_masks(web, tmp_path):
    from safetensors.torch import load

    answer = _get(web, f"/jobs/{web['sweep']}/tickets/1/export/safetensors")
    assert answer.status_code == 200
    tensors = load(answer.content)
    ticket = _ticket(web, web["sweep"], 1, tmp_path)
    pruned = ticket.to_module().state_dict()
    for name, value in pruned.items():
        torch.testing.assert_close(tensors[name], value)
        assert torch.equal(tensors[name], tensors[f"{name}.source"] * tensors[f"{name}.mask"])
    from safetensors import safe_open

    (tmp_path / "export.safetensors").write_bytes(answer.content)
    with safe_open(str(tmp_path / "export.safetensors"), "pt") as exported:
        assert exported.metadata()["kept_values_sha256"] == ticket.kept_hash()


def test_item_report_downloads_as_the_jobs_report_holds_it(web):
    answer = _get(web, f"/jobs/{web['sweep']}/tickets/1/report")
    assert answer.status_code == 200
    assert "attachment" in answer.headers["content-disposition"]
    assert answer.json() == _get(web, f"/jobs/{web['sweep']}/report").json()["items"][1]


def test_exports_refuse_an_unknown_format_and_a_missing_item(web):
    assert _get(web, f"/jobs/{web['sweep']}/tickets/0/export/pickle").status_code == 422
    assert _get(web, f"/jobs/{web['sweep']}/tickets/7/export/onnx").status_code == 404


# --- nothing from another host -------------------------------------------------------------------------

_REMOTE = re.compile(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}")


def test_no_page_or_asset_points_off_host(web):
    client = web["client"]
    for page in ("/", f"/ui/jobs/{web['sweep']}"):
        html = client.get(page).text
        assert "http:" not in html and "https:" not in html
        for url in _links(html):
            assert url.startswith("/") and not url.startswith("//"), url
            assert client.get(url).status_code == 200, url  # every asset answers without the token
    for asset in ("/ui/static/app.js", "/ui/static/app.css"):
        text = client.get(asset).text
        assert not _REMOTE.search(text), asset
        assert "@import" not in text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_reference_only_local_assets(web, page):
    client = web["client"]
    html = client.get(page).text
    assert "http:" not in html and "https:" not in html and "cdn" not in html.lower()
    urls = _links(html)
    assert any(url.endswith(".js") for url in urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        answer = client.get(url)
        assert answer.status_code == 200 and len(answer.content) > 100, url
    assert client.get("/openapi.json").status_code == 200


def test_openapi_lists_the_web_views_endpoints_but_not_its_pages(web):
    paths = set(web["client"].get("/openapi.json").json()["paths"])
    assert {
        "/jobs/progress",
        "/jobs/{job_id}/tickets/{k}/export/{fmt}",
        "/jobs/{job_id}/tickets/{k}/report",
        "/jobs/{job_id}/tickets/{k}/figures/weight-errors.svg",
        "/jobs/{job_id}/tickets/{k}/figures/output-errors.svg",
        "/jobs/{job_id}/figures/sweep.svg",
    } <= paths
    assert "/" not in paths and "/ui/jobs/{job_id}" not in paths


def test_a_figure_is_a_standalone_svg_document(web):
    content = _get(web, f"/jobs/{web['sweep']}/tickets/0/figures/weight-errors.svg").content
    assert content.lstrip().startswith(b"<?xml")
    assert b"<script" not in content and b"rdf:RDF" not in content
