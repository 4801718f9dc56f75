"""Shared pieces of the experiments: config checks, tidy metrics, summary and figure files.

Not an experiment (the leading underscore keeps it out of the registry). Everything here is small on purpose:
the run directory itself belongs to :mod:`toykit.runs`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from toykit.runs import MetricsWriter, atomic_path, write_json

__all__ = [
    "check_positive", "check_at_least", "check_fraction", "check_choice", "check_loss_names",
    "write_metrics", "write_summary", "save_figure", "new_figure", "tidy_rows", "pearson",
]

FIGURE_DPI = 110


# ----------------------------------------------------------------------------------------------------------------------
# Config checks: each raises ValueError naming the field, the expectation and the value received.

def check_positive(name: str, value: float) -> None:
    """Refuse a value that is not a finite number > 0 (e.g. a learning rate ``eta``)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_at_least(name: str, value: int, minimum: int) -> None:
    """Refuse an integer below ``minimum`` (e.g. ``V < 2`` classes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_fraction(name: str, value: float, low: float = 0.0, high: float = 1.0, *, open_low: bool = False,
                   open_high: bool = False) -> None:
    """Refuse a number outside ``[low, high]`` (ends made open with ``open_low`` / ``open_high``)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Refuse a value that is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_loss_names(name: str, losses: Iterable[str]) -> None:
    """Refuse loss names unknown to the registry in :mod:`toykit.losses` (the message lists the known ones)."""
    from toykit.losses import loss_names

    known = list(loss_names())
    unknown = [loss for loss in losses if loss not in known]
    if unknown:
        raise ValueError(f"{name}: unknown loss(es) {unknown}; known losses: {known}")


# ----------------------------------------------------------------------------------------------------------------------
# Files of a run directory.

def tidy_rows(step: int, probe: str, values: dict[str, float]) -> list[dict[str, Any]]:
    """Return one tidy row ``{step, probe, metric, value}`` per entry of ``values``."""
    return [{"step": int(step), "probe": str(probe), "metric": str(k), "value": float(v)} for k, v in values.items()]


def write_metrics(out_dir: str | Path, rows: Iterable[dict[str, Any]], filename: str = "metrics.jsonl") -> Path:
    """Write tidy metric rows to a NEW ``metrics.jsonl`` in ``out_dir``; an existing file is refused, never appended."""
    path = Path(out_dir) / filename
    if path.exists():
        raise FileExistsError(f"{path} already exists; a run never appends to an old run's metrics")
    with atomic_path(path) as tmp, MetricsWriter(tmp) as writer:  # complete or absent, never half written
        writer.write_many(rows)
    return path


def write_summary(out_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` (numpy values turned into plain JSON)."""
    return write_json(Path(out_dir) / "summary.json", summary)


def new_figure(width: float, height: float) -> Figure:
    """Return a pyplot-free figure (no global state, safe in tests, threads and Streamlit)."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG with fixed resolution and no time stamp in its metadata."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=FIGURE_DPI, metadata={"Software": None})
    return path


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Return the Pearson correlation of two equally shaped arrays (flattened); NaN when either is constant.

    Math: r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pearson: shapes differ, {a.shape} vs {b.shape}")
    a, b = a.ravel(), b.ravel()
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(da @ da) * float(db @ db))
    return float(da @ db / denom) if denom > 0 else float("nan")
