"""Progress of long computations, reported only when an entry point asks for it.

Library code calls :func:`report` (phase, steps done, steps in all); it is a no-op unless a caller installed a
reporter with :func:`reporting` (the command lines print ``name: phase, step i/n, elapsed, ETA`` lines to stderr;
the app shows the phase in its spinner). The reporter lives in a context variable, so each thread (each Streamlit
script run) has its own and results never depend on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from typing import Callable, Iterator, TextIO

__all__ = ["report", "reporting", "LineReporter"]

Reporter = Callable[[str, int, int], None]
_REPORTER: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("toykit_progress", default=None)


def report(phase: str, done: int, total: int) -> None:
    """Tell the installed reporter (if any) that ``done`` of ``total`` steps of ``phase`` are finished."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(phase, done, total)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Install ``reporter`` for the code run inside the ``with`` block (None: report nothing)."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)


class LineReporter:
    """Print ``label: phase, step i/n, 12 s elapsed, ETA 30 s`` to ``stream``, at most every ``interval`` seconds.

    The ETA extrapolates the current phase's rate; the last step of every phase is always printed.
    """

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 2.0):
        self.label, self.stream, self.interval = label, stream or sys.stderr, interval
        self._start = time.perf_counter()
        self._phase: str | None = None
        self._phase_start = self._start
        self._last = -float("inf")

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != self._phase:
            self._phase, self._phase_start = phase, now
        if now - self._last < self.interval and done < total:
            return
        self._last = now
        rate = (now - self._phase_start) / done if done else None
        eta = f", ETA {rate * (total - done):.0f} s" if rate is not None and done < total else ""
        print(f"{self.label}: {phase}, step {done}/{total}, {now - self._start:.0f} s elapsed{eta}",
              file=self.stream, flush=True)
