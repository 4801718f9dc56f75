"""The figure every training run writes: mean probe log-probs over training (``probe_curves.png``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from llm.runs import probe_curves, read_run_metrics
from toykit.runs import atomic_path

__all__ = ["plot_run_probe_curves", "save_run_figure"]

_DPI = 110


def plot_run_probe_curves(run_dir: str | Path) -> Figure:
    """Return a Figure of the run's probe curves: summed (left) and per-token mean (right) log pi, one line per probe.

    Each line is the mean over probe prompts of log pi(y | x) for one probe type (y+ and y- drawn thicker), against
    training examples seen; the teacher-forced argmax along y+ is the probe ``argmax_teacher_forced``.
    """
    table = read_run_metrics(run_dir)
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    cmap = _colours()
    for ax, reduction in zip(axes, ("summed", "mean")):
        curves = probe_curves(table, reduction)
        for k, (probe, rows) in enumerate(curves.groupby("probe", sort=False)):
            wide = probe in ("chosen", "rejected")
            ax.plot(rows["examples_seen"], rows["value"], marker="o", ms=3, lw=2.2 if wide else 1.2,
                    color=cmap[k % len(cmap)], label=probe)
        ax.set_xlabel("training examples seen")
        ax.set_ylabel(f"mean log pi(y | x), {'summed' if reduction == 'summed' else 'per-token mean'} over tokens")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"probe log-probs during {Path(run_dir).name}", fontsize=10)
    return fig


def _colours() -> list:
    from matplotlib import colormaps

    return [colormaps["tab20"](i) for i in range(20)]


def save_run_figure(run_dir: str | Path) -> Path:
    """Write ``probe_curves.png`` into ``run_dir`` and return its path."""
    path = Path(run_dir) / "probe_curves.png"
    figure = plot_run_probe_curves(run_dir)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a kill mid-write leaves no half PNG
        figure.savefig(fh, format="png", dpi=_DPI, metadata={"Software": None})
    return path
