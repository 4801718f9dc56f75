"""The record of an attribution (``explain/``): attribution.npz and meta.json with the fit per window.

``llm.explain.AttributionHook`` (the engine's per-term attribution) and ``llm.explain_callback.ExplainCallback``
(the real update inside a transformers Trainer) write it; ``llm.explain_report`` reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from toykit.runs import write_json

__all__ = ["pearson", "write_attribution"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays (flattened); NaN when either is constant."""
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def write_attribution(out_dir: Path, *, values: np.ndarray, contributions: np.ndarray, steps: Sequence[int],
                      learning_rates: Sequence[float], remainder_norms: Sequence[float], terms: Sequence[str],
                      probe_types: Sequence[str], prompts: np.ndarray, optimizer: str, loss: str,
                      extra: dict, every: int = 1, window_starts: Sequence[int] | None = None) -> Path:
    """Write attribution.npz and meta.json (``llm.explain_report`` reads them) with the fit per window.

    A window is ``every`` optimizer steps (the last one may be shorter); with every = 1 a window is a step, and
    meta.json's per_step_correlation / median_step_correlation are per window.

    Args:
        values: (W+1, N_o) summed log-probs of the observed rows at the windows' starts and at the end.
        contributions: (W, K, N_o) first-order change of each row over each window due to each of the K ``terms``.
        steps: (W,) the last optimizer step of every window; window_starts: (W,) the step before its first.
        learning_rates: (S,) the learning rate of every optimizer step.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    measured, predicted = np.diff(values, axis=0), contributions.sum(axis=1)  # (W, N_o)
    per_window = [pearson(p, m) for p, m in zip(predicted, measured)]
    rel = float(np.linalg.norm(measured - predicted) / max(np.linalg.norm(measured), 1e-300))
    starts = np.asarray(window_starts if window_starts is not None else [s - 1 for s in steps])
    np.savez(out_dir / "attribution.npz", values=values, contributions=contributions, steps=np.asarray(steps),
             window_starts=starts, learning_rates=np.asarray(learning_rates),
             remainder_norms=np.asarray(remainder_norms))
    write_json(out_dir / "meta.json", {
        "terms": list(terms), "probe_types": list(probe_types), "prompts": prompts,
        "num_prompts": int(np.max(prompts)) + 1, "optimizer": optimizer, "loss": loss, "steps": int(steps[-1]),
        "explain_every": int(every), "windows": len(steps),
        "per_step_correlation": per_window, "median_step_correlation": float(np.nanmedian(per_window)),
        "relative_error": rel, "max_remainder_norm": float(max(remainder_norms)), **extra})
    return out_dir
