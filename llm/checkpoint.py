"""Resumable checkpoints of a training run: weights, optimizer, schedule, RNG and how far the outputs had got.

A checkpoint records the byte length of ``metrics.jsonl`` when it was written; resuming truncates the file back to
it and removes array files of later steps, so rows written after the checkpoint by a killed process are neither lost
nor duplicated: the resumed run writes them again, identically.

Checkpoints hold tensors, numbers, strings, lists and dicts only (weights, optimizer and schedule state, RNG
states), so they load with ``torch.load(weights_only=True)``: a crafted ``checkpoint.pt`` cannot run code on
``--resume``; one that needs more than plain data is refused with a message naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from toykit.runs import atomic_path

__all__ = ["CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "load_tensors", "save_tensors", "rewind_outputs",
           "probe_array_path"]

CHECKPOINT_NAME = "checkpoint.pt"


def probe_array_path(run_dir: Path, step: int) -> Path:
    """Where the per-example probe arrays of ``step`` live."""
    return Path(run_dir) / "probes" / f"step_{step:07d}.npz"


def save_tensors(obj: Any, path: Path) -> Path:
    """Write ``obj`` (tensors in plain dicts/lists) with ``torch.save`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_tensors(path: Path, map_location: torch.device | str = "cpu") -> Any:
    """Load a file written by :func:`save_tensors` with ``weights_only=True``: plain data only, never code.

    Raises:
        ValueError: the file is cut, corrupt, or holds objects other than tensors and plain data (file named).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused to load: it holds more than tensors and plain data, which could run code "
                         f"({first}); delete it if you did not write it") from None
    except (RuntimeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot read it (cut or corrupt: {first}); delete it to recompute it") from None


def save_checkpoint(run_dir: Path, *, model, optimizer, scheduler, step: int, examples_seen: int,
                    metrics_path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint.pt`` atomically (temporary file, fsync, rename); ``extra`` must be plain data."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "examples_seen": examples_seen,
        "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        **(extra or {}),
    }
    return save_tensors(state, Path(run_dir) / CHECKPOINT_NAME)


def load_checkpoint(run_dir: Path, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Return the checkpoint of ``run_dir`` (None when the run was killed before its first one); restore the RNG."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = load_tensors(path, map_location=map_location)
    torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state


def rewind_outputs(run_dir: Path, metrics_path: Path, step: int, metrics_bytes: int) -> None:
    """Truncate ``metrics.jsonl`` to ``metrics_bytes`` and delete probe arrays of steps after ``step``."""
    if metrics_path.exists():
        if metrics_path.stat().st_size < metrics_bytes:
            raise ValueError(f"{metrics_path} is shorter ({metrics_path.stat().st_size} bytes) than its checkpoint "
                             f"recorded ({metrics_bytes}): the run directory was changed; refusing to resume")
        with metrics_path.open("r+b") as fh:
            fh.truncate(metrics_bytes)
    for path in sorted((Path(run_dir) / "probes").glob("step_*.npz")):
        if int(path.stem.split("_")[1]) > step:
            path.unlink()
