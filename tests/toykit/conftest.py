"""Fixtures for the toykit tests."""

from pathlib import Path

import pytest


@pytest.fixture
def undrawn_figures(monkeypatch):
    """Return ``skip(module)``: from then on that experiment module's ``save`` writes its numbers and no figure.

    Drawing a figure is most of a small run's time (a second up to ~15 s here). For tests that compare only a run's
    numbers; each experiment's figure is still drawn and checked by another run or test.
    """

    def skip(module) -> None:
        monkeypatch.setattr(module, "plot", lambda result, *args, **kwargs: None)
        monkeypatch.setattr(module, "save_figure", lambda fig, path: Path(path))

    return skip
