"""The home page: loads, explains the toolkit and links every page."""

from tests.app.harness import assert_no_exception, run_page
from tests.app.test_app_boundaries import EXPECTED_PAGES


def test_home_links_every_page():
    at = run_page("Home.py")
    assert_no_exception(at)
    assert "Proposition 1" in at.markdown[0].value
    links = [element.proto.page for element in at.get("page_link")]
    assert links == [name.split("_", 1)[1].removesuffix(".py") for name in EXPECTED_PAGES]  # URL path of each page
    assert all(element.proto.page_script_hash for element in at.get("page_link"))
