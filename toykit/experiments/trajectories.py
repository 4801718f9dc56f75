"""Many steps of each finetuning algorithm on a toy softmax: where the probability mass goes.

The model is the two-context linear softmax of :mod:`toykit.experiments._toy_policy`: y+ is scored at context x+, y- at
x- (their prefixes differ, as the tokens of two responses do), K(x+, x-) = rho I_V, and each response has |y| tokens
at identical contexts, so log-probs are summed over |y| tokens. Starts are Zipf profiles, "flat" or "peaky"; y- sits
in a valley (the least likely label) or on the peak. Every (start, algorithm) pair is one row of a single batch.

Tracked at both contexts, per step: pi(y+), pi(y-), pi(argmax) (the current most likely label of that context, a
one-token "greedy" answer), the entropy, and where the mass went: the start's peak (its most likely label other than
y+ and y-), the next ``topk`` labels, and the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from toykit.experiments import _toy_policy as tp
from toykit.experiments._common import (check_at_least, check_fraction, check_positive, new_figure, save_figure,
                                        write_metrics, write_summary)

NAME = "trajectories"
DESCRIPTION = "many steps of SFT/DPO/IPO/DPOP/RPO/SimPO/on-policy DPO on a toy softmax: pi(y+), pi(y-), argmax, mass"

STARTS = ("flat/valley", "flat/peak", "peaky/valley", "peaky/peak")


@dataclass(frozen=True)
class Config:
    """Trajectories of several algorithms from flat and peaky starts, y- in a valley or on the peak."""

    algorithms: tuple[str, ...] = field(
        default=("sft", "dpo", "ipo", "dpop", "rpo", "simpo", "slic", "dpo@on_policy"),
        metadata={"help": "registry losses (toykit.losses), each optionally '<loss>@on_policy' (y- sampled from the "
                          "current policy at x- every step)"})
    vocab: int = field(default=50, metadata={"max": 100_000, "help": "V, the number of labels of each softmax"})
    flat_peakiness: float = field(default=0.5, metadata={
        "help": "Zipf exponent s of the 'flat' start, pi_i proportional to (i+1)^-s (0 = uniform)"})
    peaky_peakiness: float = field(default=2.5, metadata={"help": "Zipf exponent s of the 'peaky' start"})
    chosen_rank: int = field(default=2, metadata={"max": 100_000, "help": "start rank of y+ (0 = the most likely label)"})
    rho: float = field(default=0.9, metadata={"help": "cosine of x+ and x-: K(x+, x-) = rho I_V (1 = one softmax)"})
    chosen_length: int = field(default=1, metadata={"max": 10_000, "help": "|y+|, tokens of the chosen response"})
    rejected_length: int = field(default=4, metadata={"max": 10_000, "help": "|y-|, tokens of the rejected response"})
    eta: float = field(default=0.3, metadata={"help": "learning rate of SGD on W (||x|| = 1)"})
    beta: float = field(default=0.1, metadata={"help": "beta of the preference losses (DPO's inverse temperature)"})
    steps: int = field(default=300, metadata={"max": 1_000_000, "help": "T, the number of SGD steps"})
    record_every: int = field(default=5, metadata={"max": 1_000_000, "help": "record the metrics every this many steps"})
    topk: int = field(default=3, metadata={"max": 1_000, 
        "help": "size of the 'topk' mass group (start-likely labels after the peak)"})
    seed: int = field(default=0, metadata={"help": "seed of the on-policy draws"})

    def __post_init__(self) -> None:
        tp.parse_algorithms("algorithms", self.algorithms)
        check_at_least("vocab", self.vocab, 3)
        for name in ("flat_peakiness", "peaky_peakiness"):
            check_fraction(name, getattr(self, name), 0.0, 50.0)
        if not 0 < self.chosen_rank < self.vocab - 1:
            raise ValueError(f"chosen_rank must lie in [1, vocab - 2] = [1, {self.vocab - 2}] so that y- can sit "
                             f"on the peak (rank 0) or in the valley (rank V-1), got {self.chosen_rank}")
        check_fraction("rho", self.rho, 0.0, 1.0)
        check_at_least("chosen_length", self.chosen_length, 1)
        check_at_least("rejected_length", self.rejected_length, 1)
        check_positive("eta", self.eta)
        check_positive("beta", self.beta)
        check_at_least("steps", self.steps, 1)
        check_at_least("record_every", self.record_every, 1)
        check_at_least("topk", self.topk, 0)
        check_at_least("seed", self.seed, 0)


@dataclass(frozen=True)
class Result:
    """Recorded trajectories.

    Attributes:
        config: the Config of the run.
        steps: (R,) recorded steps.
        records: name -> (R, n_starts, n_algorithms, 2) for each of ``_toy_policy.RECORDS`` at the (chosen,
            rejected) contexts; log-probs per token in nats.
        diverged_at: (n_starts, n_algorithms) first step whose logits blew up (then frozen), -1 if none.
        summary: per (start, algorithm) changes from step 0 to T, and the checked claims.
    """

    config: Config
    steps: np.ndarray
    records: dict[str, np.ndarray]
    diverged_at: np.ndarray
    summary: dict[str, Any]


def _batch(cfg: Config) -> tp.Scenarios:
    algorithms = tp.parse_algorithms("algorithms", cfg.algorithms)
    rows = [(start, k) for start in STARTS for k in range(len(algorithms))]  # start-major, like the records
    peak = {"flat": cfg.flat_peakiness, "peaky": cfg.peaky_peakiness}
    y_rej = {"valley": cfg.vocab - 1, "peak": 0}
    return tp.make_scenarios(
        vocab=[cfg.vocab] * len(rows), peakiness=[peak[s.split("/")[0]] for s, _ in rows],
        y_chosen=[cfg.chosen_rank] * len(rows), y_rejected=[y_rej[s.split("/")[1]] for s, _ in rows],
        eta=[cfg.eta] * len(rows), algorithm=[k for _, k in rows], algorithms=algorithms, rho=cfg.rho,
        hparams={"beta": cfg.beta}, chosen_length=cfg.chosen_length, rejected_length=cfg.rejected_length,
        topk=cfg.topk)


def _summarise(cfg: Config, records: dict[str, np.ndarray], diverged_at: np.ndarray) -> dict[str, Any]:
    pi = {k: np.exp(v) for k, v in records.items() if k.startswith("logp_")}
    runs: dict[str, Any] = {}
    for i, start in enumerate(STARTS):
        for k, alg in enumerate(cfg.algorithms):
            def delta(values: np.ndarray, ctx: int) -> float:
                return float(values[-1, i, k, ctx] - values[0, i, k, ctx])
            runs[f"{start}/{alg}"] = {
                "delta_pi_chosen_at_chosen_ctx": delta(pi["logp_chosen"], 0),
                "max_rise_then_fall_of_pi_chosen": float(pi["logp_chosen"][:, i, k, 0].max()
                                                         - pi["logp_chosen"][-1, i, k, 0]),
                "delta_pi_rejected_at_rejected_ctx": delta(pi["logp_rejected"], 1),
                "delta_pi_argmax_at_chosen_ctx": delta(pi["logp_argmax"], 0),
                "delta_pi_argmax_at_rejected_ctx": delta(pi["logp_argmax"], 1),
                "delta_entropy_at_rejected_ctx": delta(records["entropy"], 1),
                "mass_moved_at_rejected_ctx": {g: delta(records[f"mass_{g}"], 1) for g in tp.MASS_GROUPS},
                "diverged_at": int(diverged_at[i, k]),
            }
    claims = []
    if "dpo" in cfg.algorithms:
        d = runs["peaky/valley/dpo"]
        claims.append({
            "claim": "off-policy DPO from a peaky start, y- in a valley: pi(argmax) at x- rises, pi(y-) falls",
            "reference": "PAPER.md section 4 claims 1-2, section 5 (Figure 4)",
            "measured": {"delta_pi_argmax_at_rejected_ctx": d["delta_pi_argmax_at_rejected_ctx"],
                         "delta_pi_rejected_at_rejected_ctx": d["delta_pi_rejected_at_rejected_ctx"]},
            "held": bool(d["delta_pi_argmax_at_rejected_ctx"] > 0 and d["delta_pi_rejected_at_rejected_ctx"] < 0)})
        claims.append({
            "claim": "off-policy DPO from a peaky start lowers pi(y+) at x+ after long training (y+ falls from its "
                     "start)",
            "reference": "PAPER.md section 5 (Figure 4)",
            "measured": {"delta_pi_chosen_at_chosen_ctx": d["delta_pi_chosen_at_chosen_ctx"]},
            "held": bool(d["delta_pi_chosen_at_chosen_ctx"] < 0)})
    return {"coupling_rho_times_length_ratio": cfg.rho * cfg.rejected_length / cfg.chosen_length,
            "runs": runs, "claims": claims}


def run(cfg: Config) -> Result:
    """Simulate every (start, algorithm) pair for ``cfg.steps`` steps in one batch."""
    batch = _batch(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    uniforms = torch.rand(cfg.steps, batch.size, dtype=torch.float64, generator=generator)  # (T, S)
    trace = tp.simulate(batch, cfg.steps, uniforms, record_every=cfg.record_every)
    shape = (len(STARTS), len(cfg.algorithms))
    records = {k: v.numpy().reshape(v.shape[0], *shape, 2) for k, v in trace.records.items()}  # (R, starts, algs, 2)
    diverged_at = trace.diverged_at.numpy().reshape(shape)
    return Result(config=cfg, steps=trace.steps.numpy(), records=records, diverged_at=diverged_at,
                  summary=_summarise(cfg, records, diverged_at))


def _rows(result: Result) -> list[dict[str, Any]]:
    rows = []
    for r, step in enumerate(result.steps.tolist()):
        for i, start in enumerate(STARTS):
            for k, alg in enumerate(result.config.algorithms):
                for c, ctx in enumerate(tp.CONTEXTS):
                    probe = f"{start}/{alg}/{ctx}_ctx"
                    rows.extend({"step": step, "probe": probe, "metric": name, "value": float(values[r, i, k, c])}
                                for name, values in result.records.items())
    return rows


def panel_table(result: Result) -> list[dict[str, Any]]:
    """Tidy rows of the quantities :func:`plot` draws: start, algorithm, panel (its label), step, value.

    Log-probs become per-token probabilities exp(log pi), as the figure shows them; the entropy stays in nats.
    """
    rows = []
    for i, start in enumerate(STARTS):
        for j, (name, ctx, label) in enumerate(PANELS):
            for k, alg in enumerate(result.config.algorithms):
                values = result.records[name][:, i, k, ctx]
                shown = np.exp(values) if name.startswith("logp_") else values
                rows.extend({"start": start, "algorithm": alg, "panel": label, "step": int(s), "value": float(v)}
                            for s, v in zip(result.steps.tolist(), shown.tolist()))
    return rows


def save(result: Result, out_dir: Path) -> None:
    """Write ``metrics.jsonl`` (step, probe = start/algorithm/context, metric, value), summary.json, the figure."""
    out_dir = Path(out_dir)
    write_metrics(out_dir, _rows(result))
    write_summary(out_dir, result.summary)
    save_figure(plot(result), out_dir / "trajectories.png")


PANELS = (("logp_chosen", 0, "pi(y+) at x+"), ("logp_rejected", 1, "pi(y-) at x-"),
          ("logp_argmax", 1, "pi(argmax) at x-"), ("logp_argmax", 0, "pi(argmax) at x+"),
          ("entropy", 1, "entropy at x- (nats)"))


def plot(result: Result) -> Figure:
    """Draw one row per start and one column per tracked quantity, a line per algorithm."""
    fig = new_figure(3.0 * len(PANELS), 2.3 * len(STARTS))
    axes = fig.subplots(len(STARTS), len(PANELS), squeeze=False)
    for i, start in enumerate(STARTS):
        for j, (name, ctx, label) in enumerate(PANELS):
            ax = axes[i, j]
            for k, alg in enumerate(result.config.algorithms):
                values = result.records[name][:, i, k, ctx]
                ax.plot(result.steps, np.exp(values) if name.startswith("logp_") else values, label=alg, lw=1.2)
            if name.startswith("logp_"):
                ax.set_yscale("log")
            ax.set_title(f"{start}: {label}", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == len(STARTS) - 1:
                ax.set_xlabel("step", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.suptitle(f"toy trajectories (rho={result.config.rho}, |y+|={result.config.chosen_length}, "
                 f"|y-|={result.config.rejected_length}, eta={result.config.eta}); per-token probabilities",
                 fontsize=9)
    return fig
