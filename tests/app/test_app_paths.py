"""The app reads folders under its roots only (runs/, results/, widened on the command line) and listens locally."""

import tomllib
from pathlib import Path

from app.paths import ROOTS_ENV, allowed_roots, resolve_under_roots
from streamlit.testing.v1 import AppTest

from tests.app.harness import PAGE_TIMEOUT_S, assert_no_exception, page_path, run_page, write_tidy_run

REPO = Path(__file__).resolve().parents[2]


def test_a_run_folder_outside_the_roots_is_refused_without_a_listing(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    write_tidy_run(outside / "secret-run", decay=1.0)
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "allowed"))  # the test folder itself is no longer a root
    at = run_page("pages/6_LLM_runs.py")
    for folder in (str(outside), "/", str(tmp_path / "allowed" / ".." / "outside")):
        at.text_input(key="folder").set_value(folder).run()
        assert_no_exception(at)
        errors = [e.value for e in at.error]
        assert any("is outside the folders this app reads" in e for e in errors), errors
        assert not any("secret-run" in e for e in errors)
        assert not at.dataframe  # nothing of the outside run was read


def test_a_symlink_out_of_a_root_is_refused(tmp_path, monkeypatch):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "allowed"))
    try:
        resolve_under_roots(str(tmp_path / "allowed" / "link"))
    except ValueError as err:
        assert "outside the folders" in str(err)
    else:
        raise AssertionError("a symlink leading out of the roots was accepted")
    assert resolve_under_roots(str(tmp_path / "allowed")) == tmp_path / "allowed"


def test_the_digits_page_refuses_a_folder_outside_the_roots_and_lists_nothing(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private-file.txt").write_text("x")
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "allowed"))
    at = AppTest.from_file(page_path("pages/5_Digits_influence.py"), default_timeout=PAGE_TIMEOUT_S)
    at.session_state["data_dir"] = str(outside)  # typed before the first run: the page must not train at all
    at.run()
    assert_no_exception(at)
    errors = [e.value for e in at.error]
    assert any("is outside the folders this app reads" in e for e in errors), errors
    assert not any("private-file" in e for e in errors)


def test_roots_default_to_runs_and_results_and_widen_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    monkeypatch.setattr("sys.argv", ["app/Home.py"])
    roots = allowed_roots()
    assert REPO.joinpath("runs").resolve() in roots and REPO.joinpath("results").resolve() in roots
    assert tmp_path.resolve() not in roots
    monkeypatch.setattr("sys.argv", ["app/Home.py", "--roots", str(tmp_path), "--other", "x"])
    assert tmp_path.resolve() in allowed_roots() and Path("x").resolve() not in allowed_roots()
    monkeypatch.setattr("sys.argv", ["app/Home.py"])
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path))
    assert resolve_under_roots(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"


def test_the_app_listens_on_localhost_only():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
