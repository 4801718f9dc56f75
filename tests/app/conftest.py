"""Fixtures for the app tests."""

from pathlib import Path

import pytest

from app.paths import ROOTS_ENV
from tests.app.harness import write_tidy_run


@pytest.fixture(autouse=True)
def _app_reads_the_test_folder(tmp_path, monkeypatch):
    """Let the pages read this test's folder: the app refuses paths outside its roots (app/paths.py)."""
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path))


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A folder with two runs (baseline, extend) of different decay; extend is a validation run with claims."""
    folder = tmp_path / "runs"
    write_tidy_run(folder / "baseline", decay=1.0)
    write_tidy_run(folder / "extend", decay=0.5, with_claims=True)
    return folder
