"""The web view in a real browser: Debian's headless chromium, driven by Selenium through chromium-driver,
against a real server on 127.0.0.1 with a token. Nothing the pages load may come from beyond that server:
chromium resolves no other host, and its request log is checked.

Skipped, with the reason, only where chromium, chromedriver or selenium cannot be found (scripts/bootstrap.sh
installs them from Debian's packages).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

from ticketsolver import Ticket

from .conftest import BROWSER_TOKEN, JOB_TIMEOUT, LIGHT_VERIFY, Server, job_params, mlp, state_dict_bytes

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AUTH = {"Authorization": f"Bearer {BROWSER_TOKEN}"}
#: three layers, so that the per-layer table has rows for each; n = 12 builds in a second
SIZES = (8, 16, 8, 4)


def by_css(driver: WebDriver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def job_ids_in_table(driver: WebDriver) -> set[str]:
    return {row.get_attribute("data-job-id") for row in by_css(driver, "table#jobs tr[data-job-id]")}


def fill(driver: WebDriver, name: str, value: str) -> None:
    (field,) = by_css(driver, f"form#submit-form [name={name}]")
    field.clear()
    field.send_keys(value)


def submit_through_the_form(driver: WebDriver, checkpoint: Path, n: str) -> None:
    """Fill the submit form (checkpoint, n, seed, verification on) and press its submit button."""
    from selenium.webdriver.support.ui import Select

    (upload,) = by_css(driver, "form#submit-form input[type=file][name=checkpoint]")
    upload.send_keys(str(checkpoint))
    fill(driver, "n", n)
    fill(driver, "seed", "3")
    Select(by_css(driver, "form#submit-form select[name=solver]")[0]).select_by_value("auto")
    (verify,) = by_css(driver, "form#submit-form input[name=verify]")
    if not verify.is_selected():
        verify.click()
    (button,) = by_css(driver, "form#submit-form button[type=submit]")
    button.click()


def wait_for_download(directory: Path, timeout: float = 60.0) -> Path:
    """The one finished file chromium saved in ``directory`` (no ``.crdownload`` part left)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = [p for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []
        if files and not any(p.suffix == ".crdownload" for p in files):
            assert len(files) == 1, f"expected one download, found {[p.name for p in files]}"
            return files[0]
        time.sleep(0.2)
    raise AssertionError(f"nothing was downloaded into {directory} within {timeout:.0f} s")


def assert_nothing_left_the_host(kit: ModuleType, driver: WebDriver, server: Server, seen: list[str]) -> None:
    seen += kit.requested_urls(driver)
    assert seen, "chromium's request log is empty: the check would prove nothing"
    assert kit.off_host(seen, server.url) == []


def test_a_job_submitted_through_the_form_reaches_100_percent_and_its_page_shows_layers_figures_and_the_ticket(
    browser_kit: ModuleType, browser: WebDriver, token_server: Server, tmp_path: Path
) -> None:
    from selenium.common.exceptions import TimeoutException

    kit, driver = browser_kit, browser
    seen: list[str] = []
    checkpoint = tmp_path / "mlp-8-16-8-4.pt"
    checkpoint.write_bytes(state_dict_bytes(mlp(seed=5, sizes=SIZES)))

    kit.sign_in(driver, token_server.url, BROWSER_TOKEN)
    kit.wait(driver, lambda d: by_css(d, "form#submit-form"), message="no submit form on the jobs page")
    before = job_ids_in_table(driver)
    submit_through_the_form(driver, checkpoint, "12")

    # the new job shows in the table (or the browser goes to its page): either way we learn its id
    def new_job(d: WebDriver) -> str | None:
        if "/ui/jobs/" in d.current_url:
            return d.current_url.rstrip("/").rsplit("/", 1)[1]
        return next(iter(job_ids_in_table(d) - before), None)

    job_id = kit.wait(driver, new_job, JOB_TIMEOUT, "the submitted job did not appear")
    with token_server.client(headers=AUTH) as client:
        job = client.get(f"/jobs/{job_id}").json()
    assert job["params"]["n"] == [12] and job["params"]["build"]["seed"] == 3
    assert job["params"]["verify"] is not None

    # its progress bar in the jobs table goes to 1 (100 %) and the row says succeeded
    if "/ui/jobs/" in driver.current_url:
        driver.get(token_server.url + "/")
    row = f'table#jobs tr[data-job-id="{job_id}"]'
    values: list[float] = []

    def full(d: WebDriver) -> bool:
        bars = by_css(d, f"{row} progress.job-progress")
        if not bars:
            return False
        values.append(float(bars[0].get_property("value")))
        return values[-1] >= 1.0 and "succeeded" in by_css(d, f"{row} td.state")[0].text

    try:
        kit.wait(driver, full, JOB_TIMEOUT)
    except TimeoutException:
        raise AssertionError(f"the bar did not reach 1 with the job succeeded; last values {values[-5:]}") from None
    (bar,) = by_css(driver, f"{row} progress.job-progress")
    assert float(bar.get_property("max")) == 1.0
    assert values == sorted(values), f"the bar went backwards: {values}"
    assert by_css(driver, f"{row} a.job-link"), "the row has no link to the job page"

    # the job page: per-layer table with one row per layer, figures with data, the ticket downloads and loads
    kit.open_job_page(driver, token_server.url, job_id)
    (item,) = by_css(driver, 'section.item[data-k="0"]')
    layer_rows = [r for r in item.find_elements("css selector", "table.layers tr") if r.find_elements("tag name", "td")]
    assert len(layer_rows) == len(SIZES) - 1
    assert "12" in layer_rows[0].text  # n
    figures = driver.execute_script(
        "return [...document.querySelectorAll('figure.plot svg')].map(s => [s.getBoundingClientRect().width,"
        " s.getBoundingClientRect().height, s.querySelectorAll('path, rect, polyline, circle, use').length]);"
    )
    drawn = [f for f in figures if f[0] > 100 and f[1] > 100 and f[2] >= 10]
    assert drawn, f"no figure.plot SVG is drawn with data (width, height, marks): {figures}"
    assert by_css(driver, "#verification, .verification"), "no verification report on the job page"
    assert "float64" in driver.find_element("css selector", "#verification, .verification").text

    page_png = kit.save_job_page(driver, tmp_path / "job-page.png")
    assert page_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    by_css(driver, 'section.item[data-k="0"] a.download-ticket')[0].click()
    downloaded = wait_for_download(tmp_path / "downloads")
    with token_server.client(headers=AUTH) as client:
        report = client.get(f"/jobs/{job_id}/report").json()
    ticket = Ticket.load(downloaded)
    assert ticket.kept_hash() == report["items"][0]["kept_values_sha256"]

    assert_nothing_left_the_host(kit, driver, token_server, seen)


def test_a_rejected_submission_shows_the_apis_message_in_the_form(
    browser_kit: ModuleType, browser: WebDriver, token_server: Server, tmp_path: Path
) -> None:
    kit, driver = browser_kit, browser
    checkpoint = tmp_path / "mlp.pt"
    checkpoint.write_bytes(state_dict_bytes(mlp()))
    with token_server.client(headers=AUTH) as client:
        answer = client.post(
            "/approximate",
            files=[("checkpoint", ("mlp.pt", checkpoint.read_bytes()))],
            data={"params": '{"n": 999}'},
        )
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    message = detail if isinstance(detail, str) else str(detail[0]["msg"])

    kit.sign_in(driver, token_server.url, BROWSER_TOKEN)
    kit.wait(driver, lambda d: by_css(d, "form#submit-form"))
    before = job_ids_in_table(driver)
    submit_through_the_form(driver, checkpoint, "999")
    shown = kit.wait(
        driver, lambda d: (by_css(d, "#form-errors") or [None])[0] and by_css(d, "#form-errors")[0].text.strip()
    )
    assert message in shown
    assert job_ids_in_table(driver) == before
    assert_nothing_left_the_host(kit, driver, token_server, [])


def test_without_the_token_the_pages_show_no_job_data(
    browser_kit: ModuleType, browser: WebDriver, token_server: Server, mlp_bytes: Callable[..., bytes]
) -> None:
    kit, driver = browser_kit, browser
    with token_server.client(headers=AUTH) as client:
        answer = client.post(
            "/approximate",
            files=[("checkpoint", ("mlp.pt", mlp_bytes()))],
            data={"params": json.dumps(job_params(4, LIGHT_VERIFY))},
        )
    assert answer.status_code == 202
    job_id = answer.json()["job_id"]

    driver.get(token_server.url + "/")
    kit.wait(driver, lambda d: by_css(d, "form#token-form input[name=token]"), message="no token form")
    time.sleep(2)  # a polling page would have asked for the jobs by now
    assert job_ids_in_table(driver) == set()
    assert job_id not in driver.page_source
    driver.get(f"{token_server.url}/ui/jobs/{job_id}")
    time.sleep(2)
    assert not by_css(driver, "table.layers tr td")
    assert not by_css(driver, "a.download-ticket[href*='/tickets/']")


def test_the_api_docs_render_their_operation_list_offline(
    browser_kit: ModuleType, browser: WebDriver, token_server: Server
) -> None:
    kit, driver = browser_kit, browser
    driver.get(token_server.url + "/docs")
    kit.wait(driver, lambda d: len(by_css(d, ".opblock")) >= 5, message="Swagger UI listed no operations")
    paths = {e.get_attribute("data-path") for e in by_css(driver, ".opblock .opblock-summary-path")}
    assert "/approximate" in paths and "/jobs/{job_id}" in paths
    urls = kit.requested_urls(driver)
    assert any(url.endswith(".js") for url in urls), f"Swagger UI's script was not requested: {urls}"
    assert kit.off_host(urls, token_server.url) == []


def test_redoc_renders_offline_and_asks_no_other_host(
    browser_kit: ModuleType, browser: WebDriver, token_server: Server
) -> None:
    kit, driver = browser_kit, browser
    driver.get(token_server.url + "/redoc")
    kit.wait(
        driver,
        lambda d: "/jobs/{job_id}" in d.execute_script("return document.body.innerText"),
        message="ReDoc rendered no operations",
    )
    assert kit.off_host(kit.requested_urls(driver), token_server.url) == []
