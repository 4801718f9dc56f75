"""A real browser against the running app: headless Chromium (the Debian package) driven by playwright.

Starts ``streamlit run app/Home.py`` on a free localhost port, opens the squeezing page, changes a control, waits for
the rerun and checks that the page shows the updated result; saves a screenshot under the pytest tmp dir.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from toykit.experiments import squeeze_explorer

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 90
RERUN_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@contextlib.contextmanager
def app_server(log: Path):
    """Run the app headless on a free localhost port (as the README starts it); yield its URL, stop it after."""
    port = _free_port()
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with log.open("w") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def app_url(tmp_path):
    """The app for the duration of one test."""
    with app_server(tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def page(tmp_path):
    """A fresh headless Chromium page (system Chromium via executable_path, fresh user-data dir)."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is absent: install the Debian package `chromium` to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def _metric(page, label: str) -> str:
    """The displayed value of the st.metric whose label starts with ``label``."""
    metric = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def _wait_rerun_done(page) -> None:
    """Wait until Streamlit has replaced every element of the previous run (none marked stale, no status widget)."""
    page.wait_for_function(
        """() => !document.querySelector('[data-stale="true"]')
                 && !document.querySelector('[data-testid="stStatusWidget"]')""", timeout=RERUN_TIMEOUT_MS)


def test_squeezing_page_updates_in_a_real_browser(app_url, page, tmp_path):
    default = squeeze_explorer.run(squeeze_explorer.Config()).summary
    pushed_peak = squeeze_explorer.run(squeeze_explorer.Config(negative="peak")).summary
    assert default["num_rose"] != pushed_peak["num_rose"], "the test needs settings that differ on the page"

    page.goto(f"{app_url}/Squeezing_explorer", wait_until="domcontentloaded")
    page.get_by_text("labels that rose").first.wait_for(timeout=RERUN_TIMEOUT_MS)
    assert _metric(page, "labels that rose") == f"{default['num_rose']} of 50"

    negative = page.locator('[data-testid="stRadio"]').filter(has_text="Negative gradient on ybar").first
    negative.get_by_text("peak", exact=True).click()
    expected = f"{pushed_peak['num_rose']} of 50"
    page.wait_for_function(
        """([label, want]) => [...document.querySelectorAll('[data-testid="stMetric"]')]
               .some(m => m.innerText.includes(label) && m.innerText.includes(want))""",
        arg=["labels that rose", expected], timeout=RERUN_TIMEOUT_MS)
    assert _metric(page, "labels that rose") == expected
    _wait_rerun_done(page)
    shot = tmp_path / "squeezing_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
