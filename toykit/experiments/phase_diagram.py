"""The squeezing phase diagram: where off-policy DPO hurts the chosen response, and which losses remove the effect.

Every combination of start peakiness s (Zipf exponent, 1/temperature), rank of y- (as a quantile: 0 = the peak,
1 = the deepest valley), learning rate eta, vocabulary size V and algorithm is one row of a single (S, 2, V) state,
trained T steps at once on the two-context toy of :mod:`toykit.experiments._toy_policy` (no Python loop over
scenarios). After T steps: did the per-token pi(y+ | x+) fall below its start, by how much, and how much mass moved
to the start's peak (its most likely label other than y+ and y-)?

First-order reading (derived from PAPER.md Proposition 1 on this toy, with p = pi(y+), q = pi(y-) small and the peak
p*): Delta log pi(y+|x+) is proportional to (1 + ||pi||^2) - rho (|y-|/|y+|) ||pi||^2 for DPO, so y+ can fall only
when the negative push reaching x+ from the |y-| rejected tokens outweighs y+'s own positive push,
rho |y-| / |y+| > (1 + ||pi||^2) / ||pi||^2 >= 2, and the peakier the start (||pi||^2 -> 1) the easier.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from toykit.experiments import _toy_policy as tp
from toykit.experiments._common import (check_at_least, check_fraction, check_positive, new_figure, save_figure,
                                        write_metrics, write_summary)

NAME = "phase-diagram"
DESCRIPTION = "vectorised grid (peakiness x rank of y- x eta x V x loss): where DPO lowers pi(y+), what fixes it"

AXES = ("algorithm", "eta", "vocab", "peakiness", "rejected_quantile")


@dataclass(frozen=True)
class Config:
    """A grid of toy finetuning scenarios, all simulated in one batch."""

    algorithms: tuple[str, ...] = field(default=("dpo", "dpop", "ipo", "rpo", "dpo@on_policy"), metadata={
        "help": "registry losses (toykit.losses), each optionally '<loss>@on_policy' (y- sampled each step)"})
    peakiness: tuple[float, ...] = field(default=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0), metadata={
        "help": "Zipf exponents s of the start pi_i proportional to (i+1)^-s (0 flat; larger = lower temperature)"})
    rejected_quantiles: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={
        "help": "rank of y- among the labels other than y+, as a quantile: 0 = the peak, 1 = the deepest valley"})
    etas: tuple[float, ...] = field(default=(0.1, 0.3, 1.0), metadata={"help": "learning rates eta (||x|| = 1)"})
    vocab_sizes: tuple[int, ...] = field(default=(10, 50), metadata={"max": 100_000, "help": "vocabulary sizes V"})
    chosen_rank: int = field(default=2, metadata={"max": 100_000, "help": "start rank of y+ (0 = the most likely label)"})
    rho: float = field(default=0.9, metadata={"help": "cosine of x+ and x-: K(x+, x-) = rho I_V (1 = one softmax)"})
    chosen_length: int = field(default=1, metadata={"max": 10_000, "help": "|y+|, tokens of the chosen response"})
    rejected_length: int = field(default=4, metadata={"max": 10_000, "help": "|y-|, tokens of the rejected response"})
    beta: float = field(default=0.1, metadata={"help": "beta of the preference losses (DPO's inverse temperature)"})
    steps: int = field(default=300, metadata={"max": 1_000_000, "help": "T, SGD steps per scenario"})
    fall_tol: float = field(default=1e-3, metadata={
        "help": "y+ 'fell' when log pi_T(y+|x+) < log pi_0(y+|x+) - fall_tol (nats per token)"})
    seed: int = field(default=0, metadata={"help": "seed of the on-policy draws"})

    def __post_init__(self) -> None:
        tp.parse_algorithms("algorithms", self.algorithms)
        for name in ("peakiness", "rejected_quantiles", "etas", "vocab_sizes"):
            values = getattr(self, name)
            if len(values) == 0 or len(set(values)) != len(values):
                raise ValueError(f"{name} must be a non-empty list of distinct values, got {list(values)}")
        for s in self.peakiness:
            check_fraction("peakiness", s, 0.0, 50.0)
        for q in self.rejected_quantiles:
            check_fraction("rejected_quantiles", q, 0.0, 1.0)
        for eta in self.etas:
            check_positive("etas (each eta)", eta)
        for v in self.vocab_sizes:
            check_at_least("vocab_sizes (each V)", v, 2)
        check_at_least("chosen_rank", self.chosen_rank, 0)
        if self.chosen_rank >= min(self.vocab_sizes):
            raise ValueError(f"chosen_rank must be < the smallest V = {min(self.vocab_sizes)}, got {self.chosen_rank}")
        check_fraction("rho", self.rho, 0.0, 1.0)
        check_at_least("chosen_length", self.chosen_length, 1)
        check_at_least("rejected_length", self.rejected_length, 1)
        check_positive("beta", self.beta)
        check_at_least("steps", self.steps, 1)
        check_fraction("fall_tol", self.fall_tol, 0.0, 10.0)
        check_at_least("seed", self.seed, 0)

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape (algorithms, etas, vocab_sizes, peakiness, rejected_quantiles)."""
        return (len(self.algorithms), len(self.etas), len(self.vocab_sizes), len(self.peakiness),
                len(self.rejected_quantiles))


@dataclass(frozen=True)
class Result:
    """The grid's outcomes, each array of shape ``config.shape`` = (A, E, Vn, P, Q) over AXES.

    Attributes:
        config: the Config of the run.
        rejected_rank: (Vn, Q) start rank of y- for each V and quantile.
        delta_logp_chosen: log pi_T(y+|x+) - log pi_0(y+|x+), nats per token (NaN where diverged).
        fell: whether y+ fell by more than ``fall_tol`` (False where diverged).
        peak_mass_gain: pi_T(peak|x+) - pi_0(peak|x+), the mass moved to the start's peak at y+'s context.
        argmax_gain_rejected_ctx: max pi_T(.|x-) - max pi_0(.|x-), the squeeze of y-'s context.
        diverged: the scenario's logits blew up (the step size is too large for this loss).
        summary: fractions per algorithm and the checked claims.
    """

    config: Config
    rejected_rank: np.ndarray
    delta_logp_chosen: np.ndarray
    fell: np.ndarray
    peak_mass_gain: np.ndarray
    argmax_gain_rejected_ctx: np.ndarray
    diverged: np.ndarray
    summary: dict[str, Any]


def rejected_rank(vocab: int, quantile: float, chosen_rank: int) -> int:
    """Return the start rank of y-: the ``quantile`` point of the labels other than y+ (0 = peak, 1 = valley)."""
    others = [r for r in range(vocab) if r != chosen_rank]
    return others[int(round(quantile * (len(others) - 1)))]


def build_scenarios(cfg: Config) -> tp.Scenarios:
    """Return the whole grid as one batch, rows in C order over ``cfg.shape``."""
    algorithms = tp.parse_algorithms("algorithms", cfg.algorithms)
    grid = list(itertools.product(range(len(cfg.algorithms)), cfg.etas, cfg.vocab_sizes, cfg.peakiness,
                                  cfg.rejected_quantiles))
    return tp.make_scenarios(
        vocab=[v for _, _, v, _, _ in grid], peakiness=[s for _, _, _, s, _ in grid],
        y_chosen=[cfg.chosen_rank] * len(grid),
        y_rejected=[rejected_rank(v, q, cfg.chosen_rank) for _, _, v, _, q in grid],
        eta=[e for _, e, _, _, _ in grid], algorithm=[k for k, _, _, _, _ in grid], algorithms=algorithms,
        rho=cfg.rho, hparams={"beta": cfg.beta}, chosen_length=cfg.chosen_length,
        rejected_length=cfg.rejected_length, topk=0)


def draw_uniforms(cfg: Config, size: int) -> torch.Tensor:
    """Return the (T, S) on-policy draws of a run, from ``cfg.seed`` only."""
    generator = torch.Generator().manual_seed(cfg.seed)
    return torch.rand(cfg.steps, size, dtype=torch.float64, generator=generator)


def outcomes(cfg: Config, trace: tp.Trace) -> dict[str, np.ndarray]:
    """Reduce a two-record trace (step 0 and T) to the grid arrays of ``Result``, each of ``cfg.shape``."""
    rec = {k: v.numpy() for k, v in trace.records.items()}  # (R, S, 2) each
    diverged = trace.diverged_at.numpy() >= 0
    delta = rec["logp_chosen"][-1, :, 0] - rec["logp_chosen"][0, :, 0]
    delta = np.where(diverged, np.nan, delta)
    out = {
        "delta_logp_chosen": delta,
        "fell": ~diverged & (np.nan_to_num(delta, nan=0.0) < -cfg.fall_tol),
        "peak_mass_gain": rec["mass_peak"][-1, :, 0] - rec["mass_peak"][0, :, 0],
        "argmax_gain_rejected_ctx": np.exp(rec["logp_argmax"][-1, :, 1]) - np.exp(rec["logp_argmax"][0, :, 1]),
        "diverged": diverged,
    }
    return {k: v.reshape(cfg.shape) for k, v in out.items()}


def _summarise(cfg: Config, out: dict[str, np.ndarray]) -> dict[str, Any]:
    per_alg: dict[str, Any] = {}
    for k, alg in enumerate(cfg.algorithms):
        ok = ~out["diverged"][k]
        per_alg[alg] = {
            "fell_fraction": float(out["fell"][k][ok].mean()) if ok.any() else float("nan"),
            "diverged_fraction": float(out["diverged"][k].mean()),
            "mean_peak_mass_gain": float(np.nanmean(np.where(ok, out["peak_mass_gain"][k], np.nan))),
            "fell_fraction_by_peakiness": dict(zip(map(str, cfg.peakiness),
                                                   out["fell"][k].mean(axis=(0, 1, 3)).tolist())),
            "fell_fraction_by_rejected_quantile": dict(zip(map(str, cfg.rejected_quantiles),
                                                           out["fell"][k].mean(axis=(0, 1, 2)).tolist())),
            "fell_fraction_by_eta": dict(zip(map(str, cfg.etas), out["fell"][k].mean(axis=(1, 2, 3)).tolist())),
            "fell_fraction_by_vocab": dict(zip(map(str, cfg.vocab_sizes),
                                               out["fell"][k].mean(axis=(0, 2, 3)).tolist())),
        }
    claims = []
    if "dpo" in cfg.algorithms:
        dpo_region = int(out["fell"][cfg.algorithms.index("dpo")].sum())
        claims.append({"claim": "off-policy DPO lowers pi(y+) somewhere on the grid",
                       "reference": "PAPER.md section 5 (Figure 4)",
                       "measured": {"dpo_cells_where_y+_fell": dpo_region}, "held": dpo_region > 0})
        for fix in ("dpop", "rpo", "ipo", "dpo@on_policy"):
            if fix in cfg.algorithms:
                region = int(out["fell"][cfg.algorithms.index(fix)].sum())
                claims.append({"claim": f"{fix} shrinks the region where y+ falls (vs off-policy DPO)",
                               "reference": "PAPER.md sections 3-5 (DPOP, RPO, IPO, on-policy variants)",
                               "measured": {"dpo_cells": dpo_region, f"{fix}_cells": region,
                                            f"{fix}_diverged_cells": int(out["diverged"][cfg.algorithms.index(fix)]
                                                                         .sum())},
                               "held": region < dpo_region})
    return {"grid_shape": dict(zip(AXES, cfg.shape)), "scenarios": int(np.prod(cfg.shape)),
            "coupling_rho_times_length_ratio": cfg.rho * cfg.rejected_length / cfg.chosen_length,
            "per_algorithm": per_alg, "claims": claims}


def run(cfg: Config) -> Result:
    """Simulate the whole grid in one vectorised batch and reduce it to the phase-diagram arrays."""
    batch = build_scenarios(cfg)
    trace = tp.simulate(batch, cfg.steps, draw_uniforms(cfg, batch.size), record_every=cfg.steps)
    out = outcomes(cfg, trace)
    ranks = np.array([[rejected_rank(v, q, cfg.chosen_rank) for q in cfg.rejected_quantiles]
                      for v in cfg.vocab_sizes])
    return Result(config=cfg, rejected_rank=ranks, summary=_summarise(cfg, out), **out)


def _rows(result: Result) -> list[dict[str, Any]]:
    cfg = result.config
    rows = []
    for idx in itertools.product(*(range(n) for n in cfg.shape)):
        k, e, v, p, q = idx
        probe = (f"{cfg.algorithms[k]}/eta={cfg.etas[e]}/V={cfg.vocab_sizes[v]}/s={cfg.peakiness[p]}"
                 f"/q={cfg.rejected_quantiles[q]}")
        for metric in ("delta_logp_chosen", "fell", "peak_mass_gain", "argmax_gain_rejected_ctx", "diverged"):
            rows.append({"step": cfg.steps, "probe": probe, "metric": metric,
                         "value": float(getattr(result, metric)[idx])})
    return rows


def cell_table(result: Result) -> list[dict[str, Any]]:
    """One row per grid cell: algorithm, eta, V, peakiness, rejected_quantile, delta_logp_chosen, fell, diverged."""
    cfg = result.config
    rows = []
    for idx in itertools.product(*(range(n) for n in cfg.shape)):
        k, e, v, p, q = idx
        rows.append({"algorithm": cfg.algorithms[k], "eta": cfg.etas[e], "V": cfg.vocab_sizes[v],
                     "peakiness": cfg.peakiness[p], "rejected_quantile": cfg.rejected_quantiles[q],
                     "delta_logp_chosen": float(result.delta_logp_chosen[idx]), "fell": bool(result.fell[idx]),
                     "diverged": bool(result.diverged[idx])})
    return rows


def save(result: Result, out_dir: Path) -> None:
    """Write ``metrics.jsonl`` (one row per cell and metric, at step T), summary.json and the heat maps."""
    out_dir = Path(out_dir)
    write_metrics(out_dir, _rows(result))
    write_summary(out_dir, result.summary)
    save_figure(plot(result), out_dir / "phase_diagram.png")
    save_figure(_plot_values(result, "peak_mass_gain", "mass moved to the start's peak at x+", "viridis"),
                out_dir / "peak_mass_gain.png")


def _plot_values(result: Result, name: str, title: str, cmap: str) -> Figure:
    """Draw one heat map per (algorithm, eta, V) over (peakiness, rank of y-); 'x' marks cells where y+ fell."""
    cfg = result.config
    values = getattr(result, name)
    columns = list(itertools.product(range(len(cfg.etas)), range(len(cfg.vocab_sizes))))
    fig = new_figure(2.3 * len(columns) + 1.0, 2.0 * len(cfg.algorithms) + 0.6)
    axes = fig.subplots(len(cfg.algorithms), len(columns), squeeze=False)
    if name == "delta_logp_chosen":
        limit = float(np.nanmax(np.abs(values))) or 1.0
        kwargs = {"cmap": cmap, "vmin": -limit, "vmax": limit}
    else:
        kwargs = {"cmap": cmap, "vmin": float(np.nanmin(values)), "vmax": float(np.nanmax(values))}
    image = None
    for k, alg in enumerate(cfg.algorithms):
        for j, (e, v) in enumerate(columns):
            ax = axes[k, j]
            cell = values[k, e, v].T  # (Q, P): rows = rank of y-, columns = peakiness
            image = ax.imshow(cell, origin="lower", aspect="auto", **kwargs)
            qs, ps = np.nonzero(result.fell[k, e, v].T)
            ax.scatter(ps, qs, marker="x", c="k", s=14, linewidths=0.8)
            qd, pd = np.nonzero(result.diverged[k, e, v].T)
            ax.scatter(pd, qd, marker="s", facecolors="none", edgecolors="grey", s=14, linewidths=0.6)
            ax.set_xticks(range(len(cfg.peakiness)), [f"{s:g}" for s in cfg.peakiness], fontsize=6)
            ax.set_yticks(range(len(cfg.rejected_quantiles)), [f"{q:g}" for q in cfg.rejected_quantiles], fontsize=6)
            ax.set_title(f"{alg}  eta={cfg.etas[e]:g}  V={cfg.vocab_sizes[v]}", fontsize=7)
            if k == len(cfg.algorithms) - 1:
                ax.set_xlabel("peakiness s of the start", fontsize=7)
            if j == 0:
                ax.set_ylabel("rank of y- (0 peak, 1 valley)", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label=title)
    fig.suptitle(f"{title}; x = y+ fell, grey square = diverged (T={cfg.steps}, rho={cfg.rho}, "
                 f"|y+|={cfg.chosen_length}, |y-|={cfg.rejected_length})", fontsize=9)
    return fig


def plot(result: Result) -> Figure:
    """Draw the change of log pi(y+|x+) (nats per token) per algorithm as heat maps; 'x' where y+ fell."""
    return _plot_values(result, "delta_logp_chosen", "log pi_T(y+|x+) - log pi_0(y+|x+)", "RdBu")
