"""The README's picture of the web view's job page, taken in Debian's headless chromium.

    python scripts/screenshot.py                      # writes docs/images/job-page.png
    python scripts/screenshot.py --out /tmp/page.png

It starts a real server (``python -m ticketsolver_api.server``) on 127.0.0.1 with a token, submits a small job
(an MLP 8-32-16-4 at n = 30 with a light verification), waits for it, signs in through the page's token form
and saves the job page. The browser test (tests/api/test_browser.py) and the service benchmark drive chromium
with the functions here (:func:`chrome`, :func:`sign_in`, :func:`save_job_page`), so the picture is what the
test saw.

The browser is the system's: ``chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and
``chromium-driver``, installed by scripts/bootstrap.sh). Selenium is handed the driver's path, so Selenium
Manager never runs and nothing is downloaded; chromium itself resolves no host name but 127.0.0.1's.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "images" / "job-page.png"
#: where Debian's chromium-driver puts the driver; TICKETSOLVER_CHROMEDRIVER overrides it
CHROMEDRIVER = "/usr/bin/chromedriver"
#: how long a page may take to show what a wait looks for (the machine may be small and busy)
PAGE_TIMEOUT = 60.0
#: the job of the picture: the default n, small enough to finish in seconds, three layers so that the table has rows
JOB = {
    "n": 30,
    "build": {"seed": 0},
    "verify": {"n_random": 64, "worst_case_starts": 1, "worst_case_steps": 3},
}
MLP_SIZES = (8, 32, 16, 4)


class BrowserMissing(RuntimeError):
    """chromium, chromedriver or selenium cannot be found; the message says which and how to install it."""


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver): the system's browser and driver.

    Raises:
        BrowserMissing: one of them, or the selenium package, is not there.
    """
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserMissing("selenium is not installed (pip install 'ticketsolver[dev]')") from None
    browser = os.environ.get("TICKETSOLVER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise BrowserMissing("chromium is not installed (apt-get install chromium chromium-driver)")
    driver = os.environ.get("TICKETSOLVER_CHROMEDRIVER") or CHROMEDRIVER
    if not os.access(driver, os.X_OK):
        raise BrowserMissing(f"no chromedriver at {driver} (apt-get install chromium-driver)")
    return browser, driver


def chrome(download_dir: Path | None = None, width: int = 1280, height: int = 900) -> WebDriver:
    """A headless chromium that resolves no host but loopback, logs every request it sends (read them with
    :func:`requested_urls`) and saves downloads to ``download_dir`` without asking."""
    browser, driver = browser_paths()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, should anything start it, stays offline
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        # the network is "offline": a CDN asset would not load (and would show in the request log)
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    if download_dir is not None:
        download_dir.mkdir(parents=True, exist_ok=True)
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(download_dir),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
    session = webdriver.Chrome(options=options, service=Service(driver))
    if download_dir is not None:
        session.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return session


def requested_urls(driver: WebDriver) -> list[str]:
    """Every URL the browser sent a request for since the last call (Chrome's performance log, drained).

    A request the page's own policy refused inside the browser (a Content-Security-Policy, say) never left
    it and is not counted; one that failed on the network (a host that does not resolve) is.
    """
    sent: list[tuple[str, str]] = []  # (request id, url); a redirect is a second url under the same id
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message["params"]
        if message["method"] == "Network.requestWillBeSent":
            sent.append((params["requestId"], params["request"]["url"]))
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [url for request, url in sent if request not in blocked]


def off_host(urls: list[str], base_url: str) -> list[str]:
    """The URLs that are neither on ``base_url``'s host nor in-page (data:, blob:, about:)."""
    local = (base_url.rstrip("/") + "/", "data:", "blob:", "about:")
    return [url for url in urls if not url.startswith(local) and url != base_url.rstrip("/")]


def wait(driver: WebDriver, condition: Any, timeout: float = PAGE_TIMEOUT, message: str = "") -> Any:
    """Selenium's WebDriverWait: ``condition(driver)`` until truthy (polled every 0.1 s)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def sign_in(driver: WebDriver, base_url: str, token: str) -> None:
    """Open the jobs page and enter ``token`` into its token form; returns once the page keeps it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(base_url.rstrip("/") + "/")
    field = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "form#token-form input[name=token]"))
    field.clear()
    field.send_keys(token, Keys.ENTER)
    stored = "return Object.values(sessionStorage).concat(Object.values(localStorage)).includes(arguments[0]);"
    wait(driver, lambda d: d.execute_script(stored, token), message="the page did not keep the token")


JOB_PAGE_READY = """
const rows = document.querySelectorAll('table.layers tbody tr, table.layers tr:has(td)');
const marks = document.querySelectorAll('figure.plot svg path, figure.plot svg rect, figure.plot svg polyline');
return rows.length > 0 && marks.length > 0;
"""
EVERY_FIGURE_DRAWN = "return [...document.querySelectorAll('figure.plot')].every(f => f.querySelector('svg'));"


def open_job_page(driver: WebDriver, base_url: str, job_id: str, settle: float = 30.0) -> None:
    """Open ``/ui/jobs/{job_id}`` and wait until its per-layer table and a figure are drawn, then up to
    ``settle`` seconds more for the other figures (one that cannot be drawn does not fail this)."""
    from selenium.common.exceptions import TimeoutException

    driver.get(f"{base_url.rstrip('/')}/ui/jobs/{job_id}")
    wait(driver, lambda d: d.execute_script(JOB_PAGE_READY), message="the job page drew no layer table or figure")
    try:
        wait(driver, lambda d: d.execute_script(EVERY_FIGURE_DRAWN), settle)
    except TimeoutException:
        pass


def save_job_page(driver: WebDriver, path: Path, max_height: int = 4000) -> Path:
    """Save the whole page the browser shows (up to ``max_height`` CSS pixels), as a PNG."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


# --- the standalone run: a server, a job, the picture ------------------------------------------------------


def mlp_checkpoint(seed: int = 0, sizes: tuple[int, ...] = MLP_SIZES) -> bytes:
    """A seeded MLP's state_dict as torch.save writes it."""
    import torch

    from ticketsolver.models import MLP

    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(MLP(sizes).state_dict(), buffer)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(data_dir: Path, token: str, timeout: float = 120.0) -> Iterator[str]:
    """A real server on 127.0.0.1 with ``token`` on ``data_dir``, in its own process group; yields its URL."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (data_dir.parent / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ticketsolver_api.server", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=ROOT,
        env={**os.environ, "TICKETSOLVER_TOKEN": token, "TICKETSOLVER_POLL_INTERVAL": "0.1"},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the server did not start; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_job(url: str, token: str, timeout: float = 300.0) -> str:
    """Submit :data:`JOB` on an MLP through the API and wait until it has finished; returns its id."""
    import httpx

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        answer = client.post(
            "/approximate",
            files=[("checkpoint", ("mlp-8-32-16-4.pt", mlp_checkpoint()))],
            data={"params": json.dumps(JOB)},
        )
        answer.raise_for_status()
        job_id: str = answer.json()["job_id"]
        deadline = time.monotonic() + timeout
        while (state := client.get(f"/jobs/{job_id}").json()["state"]) in ("queued", "running"):
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} did not finish within {timeout:.0f} s")
            time.sleep(0.2)
    if state != "succeeded":
        raise SystemExit(f"job {job_id} {state}")
    return job_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    args = parser.parse_args()
    token = "screenshot-token"
    with tempfile.TemporaryDirectory(prefix="ticketsolver-screenshot-") as tmp:
        with serving(Path(tmp) / "data", token) as url:
            job_id = run_job(url, token)
            driver = chrome(width=args.width)
            try:
                sign_in(driver, url, token)
                open_job_page(driver, url, job_id)
                save_job_page(driver, args.out)
                stray = off_host(requested_urls(driver), url)
            finally:
                driver.quit()
    if stray:
        raise SystemExit(f"the page asked for something beyond the server: {stray}")
    print(f"wrote {args.out} (job {job_id})")


if __name__ == "__main__":
    main()
