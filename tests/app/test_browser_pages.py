"""Every page at its defaults in a real browser (headless Chromium via playwright), one screenshot per page.

One app server for the module (``streamlit run app/Home.py`` from the repository root, as the README starts it).
Each page must render without an exception element, and a page with a chart must show its main chart (the first
Altair chart or figure) unclipped: the chart's drawing lies inside its element and the element does not scroll.
Screenshots go to the test's tmp dir (CI keeps them as artefacts).
"""

import pytest

from tests.app.test_browser import CHROMIUM, CHROMIUM_ARGS, app_server

pytestmark = pytest.mark.browser

PAGE_TIMEOUT_MS = 240_000  # a first load on 2 busy cores includes torch's one-time warm-up
#: url path -> whether the page's defaults draw a chart (the explain page needs an explained run first)
PAGES = {"": False, "Squeezing_explorer": True, "One_step_decomposition": True, "Loss_residuals": True,
         "Trajectories_and_phase_diagram": True, "Digits_influence": True, "LLM_runs": True,
         "Explain_a_run": False, "Online_RL_groups": True}
_MAIN_CHART = '[data-testid="stVegaLiteChart"], [data-testid="stImage"]'


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with app_server(tmp_path_factory.mktemp("server") / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install the Debian package `chromium` to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def _wait_page_done(page) -> None:
    """Wait until the script run finished: a title is shown, no element is stale and no run is in progress."""
    page.locator("h1").first.wait_for(timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function(
        """() => !document.querySelector('[data-stale="true"]')
                 && !document.querySelector('[data-testid="stStatusWidget"]')
                 && !document.querySelector('[data-testid="stSpinner"]')""", timeout=PAGE_TIMEOUT_MS)


_CLIPPED = """(selector) => {
    const el = document.querySelector(selector);
    if (!el) return 'missing';
    const box = el.getBoundingClientRect();
    const drawn = el.querySelector('canvas, svg, img');
    if (!drawn) return 'nothing drawn';
    const d = drawn.getBoundingClientRect();
    if (d.width < 50 || d.height < 50) return `drawing too small: ${d.width}x${d.height}`;
    const out = d.left < box.left - 2 || d.top < box.top - 2 || d.right > box.right + 2 || d.bottom > box.bottom + 2;
    if (out) return `drawing ${JSON.stringify(d)} outside its element ${JSON.stringify(box)}`;
    if (el.scrollHeight > el.clientHeight + 2 || el.scrollWidth > el.clientWidth + 2) return 'element scrolls';
    return '';
}"""


@pytest.mark.parametrize("path", list(PAGES))
def test_every_page_renders_its_main_chart_unclipped(app_url, browser_page, path, tmp_path):
    page = browser_page
    page.goto(f"{app_url}/{path}", wait_until="domcontentloaded")
    _wait_page_done(page)
    if PAGES[path]:
        page.locator(_MAIN_CHART).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        page.wait_for_function(f"() => document.querySelector('{_MAIN_CHART}')"
                               ".querySelector('canvas, svg, img')", timeout=PAGE_TIMEOUT_MS)
    shot = tmp_path / f"{path or 'Home'}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()
    if PAGES[path]:
        assert page.evaluate(_CLIPPED, _MAIN_CHART) == ""
    else:
        assert page.locator("h1").first.inner_text().strip()
    print(f"screenshot: {shot}")
