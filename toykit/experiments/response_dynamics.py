"""The paper's Figures 3-5 at toy scale: probe log-probs during SFT then DPO, baseline vs "extend".

The toy world. A response is L tokens: ``length_content`` content positions, then ``length_format`` format positions.
Tokens come in synonym pairs (2i, 2i+1) whose fixed embeddings u have cosine ``synonym_similarity``. Each prompt x
has a fixed feature e_x (cosine ``prompt_similarity`` between any two prompts). The policy predicts every position
from the prompt only (no prefix dependence, so the teacher-forced argmax and greedy decoding coincide here):

    z_l(x) = A_l e_x + U C_l e_x,        log pi(y|x) = sum_l log Softmax(z_l(x))[y_l]   (summed over tokens)

with A (L, V, d) and C (L, k, d) trained. Its eNTK is K((x, l), (x', l')) = [l = l'] (e_x . e_x') (I_V + U U^T): a
step on one prompt moves every prompt (e . e'), and a step on a token moves its synonym (U U^T). Chosen responses share
a small pool of "good" format tokens across prompts; a rejected response keeps ``shared_content`` of y+'s content
tokens and uses "bad" format tokens.

Probes, each scored under the training prompt x_u and averaged over the training prompts (PAPER.md section 6):
y+ (chosen), y- (rejected), semantic rephrase (every token of y+ swapped for its synonym: same content features, other
surface tokens), format rephrase (y+'s format tokens with other content), y+ of another training prompt, y+ of a
held-out prompt, y+ shuffled across positions, uniformly random tokens, and the argmax response.

Training: full-batch SGD. SFT on y+ (baseline) or on y+ and y- ("extend", PAPER.md section 5), then DPO (the loss from
the registry, reference = the model after SFT). The summary lists each claim of PAPER.md section 5 with its measured
value and whether it held in this toy; nothing here is tuned to make a claim hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from toykit.experiments._common import (check_at_least, check_fraction, check_loss_names, check_positive, new_figure,
                                        save_figure, write_metrics, write_summary)
from toykit.losses import compute_loss, get_loss
from toykit.progress import report

NAME = "response-dynamics"
DESCRIPTION = "toy prompts/responses: probe log-probs during SFT -> DPO, baseline vs extend (Figures 3-5)"

ARMS = ("baseline", "extend")
PROBES = ("chosen", "rejected", "rephrase_semantic", "rephrase_format", "other_chosen", "heldout", "shuffled",
          "random", "argmax")
NON_TARGET = ("rephrase_semantic", "rephrase_format", "other_chosen", "heldout", "shuffled", "random")


@dataclass(frozen=True)
class Config:
    """A toy world of prompts and responses, trained SFT then DPO in two arms (baseline, extend)."""

    n_train: int = field(default=32, metadata={"max": 100_000, "help": "training prompts (each with one y+ and one y-)"})
    n_heldout: int = field(default=16, metadata={"max": 100_000, "help": "held-out prompts (their y+ is the 'heldout' probe)"})
    vocab_pairs: int = field(default=32, metadata={"max": 100_000, "help": "synonym pairs; V = 2 * vocab_pairs tokens"})
    length_content: int = field(default=4, metadata={"max": 1_000, "help": "content positions per response"})
    length_format: int = field(default=4, metadata={"max": 1_000, "help": "format positions per response"})
    format_pool: int = field(default=4, metadata={"max": 10_000, "help": "size of the 'good' and of the 'bad' format token pools"})
    shared_content: int = field(default=2, metadata={"max": 1_000, "help": "content tokens y- shares with y+ (same positions)"})
    prompt_dim: int = field(default=16, metadata={"max": 10_000, "help": "d, dimension of the prompt features e_x"})
    embed_dim: int = field(default=8, metadata={"max": 10_000, "help": "k, dimension of the fixed token embeddings u"})
    prompt_similarity: float = field(default=0.5, metadata={"help": "cosine e_x . e_x' of two different prompts"})
    synonym_similarity: float = field(default=0.8, metadata={"help": "cosine u_2i . u_2i+1 of two synonyms"})
    init_scale: float = field(default=0.3, metadata={"help": "std of the initial parameters (the 'base model')"})
    sft_steps: int = field(default=150, metadata={"max": 1_000_000, "help": "full-batch SGD steps of SFT"})
    dpo_steps: int = field(default=300, metadata={"max": 1_000_000, "help": "full-batch SGD steps of DPO"})
    sft_lr: float = field(default=0.5, metadata={"help": "learning rate eta of SFT"})
    dpo_lr: float = field(default=0.5, metadata={"help": "learning rate eta of DPO"})
    dpo_loss: str = field(default="dpo", metadata={"help": "registry loss of the preference phase (toykit.losses)"})
    beta: float = field(default=0.1, metadata={"help": "beta of the preference loss"})
    record_every: int = field(default=10, metadata={"max": 1_000_000, "help": "evaluate the probes every this many steps"})
    seed: int = field(default=0, metadata={"help": "seed of the world (prompts, responses, embeddings, init)"})

    def __post_init__(self) -> None:
        for name, minimum in (("n_train", 2), ("n_heldout", 1), ("length_content", 1), ("length_format", 1),
                              ("format_pool", 1), ("prompt_dim", 1), ("embed_dim", 1), ("sft_steps", 1),
                              ("dpo_steps", 1), ("record_every", 1), ("shared_content", 0), ("seed", 0)):
            check_at_least(name, getattr(self, name), minimum)
        check_at_least("vocab_pairs", self.vocab_pairs, 2)
        if self.shared_content > self.length_content:
            raise ValueError(f"shared_content must be <= length_content = {self.length_content}, "
                             f"got {self.shared_content}")
        content_pairs = self.vocab_pairs - 2 * self.format_pool
        if content_pairs < 2 * self.length_content:
            raise ValueError(f"vocab_pairs = {self.vocab_pairs} leaves {content_pairs} content pairs after 2 format "
                             f"pools of {self.format_pool}; need >= 2 * length_content = {2 * self.length_content}")
        check_fraction("prompt_similarity", self.prompt_similarity, 0.0, 1.0, open_high=True)
        check_fraction("synonym_similarity", self.synonym_similarity, 0.0, 1.0, open_high=True)
        for name in ("init_scale", "sft_lr", "dpo_lr", "beta"):
            check_positive(name, getattr(self, name))
        check_loss_names("dpo_loss", [self.dpo_loss])
        if not get_loss(self.dpo_loss).paired:
            raise ValueError(f"dpo_loss must be a paired (preference) loss, got {self.dpo_loss!r}")


@dataclass(frozen=True)
class Result:
    """Probe curves of both arms.

    Attributes:
        config: the Config of the run.
        steps: (R,) global step of each record (SFT steps first, then DPO steps).
        phase: (R,) "sft" or "dpo" (the record at the end of SFT counts as "sft").
        logps: (2, R, n_probes) mean over training prompts of the summed log-prob of each probe, per arm.
        summary: claims of PAPER.md section 5 with measured values and whether they held.
    """

    config: Config
    steps: np.ndarray
    phase: np.ndarray
    logps: np.ndarray
    summary: dict[str, Any]


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _with_cosine(base: Tensor, cosine: float, generator: torch.Generator) -> Tensor:
    """Return unit vectors whose cosine with the unit ``base`` rows is ``cosine`` up to sampling noise."""
    noise = _unit(torch.randn(base.shape, dtype=torch.float64, generator=generator))
    noise = _unit(noise - (noise * base).sum(-1, keepdim=True) * base)  # orthogonal to base
    return cosine * base + math.sqrt(1.0 - cosine ** 2) * noise


def make_world(cfg: Config) -> dict[str, Tensor]:
    """Return the fixed world: prompt features, token embeddings and the probe token arrays.

    Returns:
        dict with ``prompts`` (n_train + n_heldout, d), ``embeddings`` (V, k), and one (n_train, L) int64 tensor of
        tokens per probe of PROBES except "argmax", plus ``chosen_heldout`` (n_heldout, L).
    """
    g = torch.Generator().manual_seed(cfg.seed)
    n_all, lc, lf = cfg.n_train + cfg.n_heldout, cfg.length_content, cfg.length_format
    common = _unit(torch.randn(cfg.prompt_dim, dtype=torch.float64, generator=g))
    prompts = _with_cosine(common.expand(n_all, -1), math.sqrt(cfg.prompt_similarity), g)  # (N, d)
    pair_base = _unit(torch.randn(cfg.vocab_pairs, cfg.embed_dim, dtype=torch.float64, generator=g))
    synonyms = _with_cosine(pair_base, cfg.synonym_similarity, g)
    embeddings = torch.stack([pair_base, synonyms], dim=1).reshape(2 * cfg.vocab_pairs, cfg.embed_dim)  # (V, k)
    # canonical (even) token ids of each pool; their synonyms are id + 1
    good = 2 * torch.arange(cfg.format_pool)
    bad = 2 * torch.arange(cfg.format_pool, 2 * cfg.format_pool)
    content = 2 * torch.arange(2 * cfg.format_pool, cfg.vocab_pairs)

    def pick(pool: Tensor, n: int, k: int) -> Tensor:
        return pool[torch.stack([torch.randperm(len(pool), generator=g)[:k] for _ in range(n)])]  # (n, k)

    chosen_all = torch.cat([pick(content, n_all, lc), good[torch.randint(len(good), (n_all, lf), generator=g)]], 1)
    chosen = chosen_all[:cfg.n_train]  # (n_train, L)
    other_content = torch.stack([content[~torch.isin(content, row)][torch.randperm(len(content) - lc, generator=g)
                                                                   [:lc]] for row in chosen[:, :lc]])  # (n, lc)
    rejected = torch.cat([chosen[:, :cfg.shared_content], other_content[:, cfg.shared_content:],
                          bad[torch.randint(len(bad), (cfg.n_train, lf), generator=g)]], 1)
    shuffle = torch.stack([torch.roll(torch.randperm(lc + lf, generator=g), 1) for _ in range(cfg.n_train)])
    return {
        "prompts": prompts, "embeddings": embeddings, "chosen_heldout": chosen_all[cfg.n_train:],
        "chosen": chosen, "rejected": rejected,
        "rephrase_semantic": chosen + 1,
        "rephrase_format": torch.cat([other_content, chosen[:, lc:]], 1),
        "other_chosen": torch.roll(chosen, 1, dims=0),
        "heldout": chosen_all[cfg.n_train + torch.arange(cfg.n_train) % cfg.n_heldout],
        "shuffled": chosen.gather(1, shuffle),
        "random": torch.randint(2 * cfg.vocab_pairs, (cfg.n_train, lc + lf), generator=g),
    }


def logits(params: dict[str, Tensor], prompts: Tensor, embeddings: Tensor) -> Tensor:
    """Return z (N, L, V) = A_l e_x + U C_l e_x for prompts e (N, d).

    Math: z_l(x) = A_l e_x + U C_l e_x; eNTK [l = l'] (e_x . e_x') (I_V + U U^T).
    References: PAPER.md section 2 (K is what couples responses); Proposition 1.
    """
    direct = torch.einsum("lvd,nd->nlv", params["A"], prompts)  # (N, L, V)
    shared = torch.einsum("vk,lkd,nd->nlv", embeddings, params["C"], prompts)  # (N, L, V)
    return direct + shared


def response_logps(z: Tensor, tokens: Tensor) -> Tensor:
    """Return log pi(y|x) (N,) summed over the L tokens of ``tokens`` (N, L) under logits z (N, L, V)."""
    return torch.log_softmax(z, dim=-1).gather(-1, tokens[..., None])[..., 0].sum(-1)  # (N,)


def _probe_logps(z: Tensor, world: dict[str, Tensor]) -> list[float]:
    values = {name: response_logps(z, world[name]).mean() for name in PROBES if name != "argmax"}
    values["argmax"] = torch.log_softmax(z, dim=-1).max(dim=-1).values.sum(-1).mean()  # teacher-forced = greedy
    return [float(values[name]) for name in PROBES]


def _train_arm(cfg: Config, world: dict[str, Tensor], arm: str) -> tuple[list[int], list[str], list[list[float]]]:
    g = torch.Generator().manual_seed(cfg.seed + 1)  # both arms start from the same base model
    length = cfg.length_content + cfg.length_format
    v = 2 * cfg.vocab_pairs
    params = {"A": cfg.init_scale * torch.randn(length, v, cfg.prompt_dim, dtype=torch.float64, generator=g),
              "C": cfg.init_scale * torch.randn(length, cfg.embed_dim, cfg.prompt_dim, dtype=torch.float64,
                                                generator=g)}
    prompts, emb = world["prompts"][:cfg.n_train], world["embeddings"]
    steps, phases, rows = [0], ["sft"], [_probe_logps(logits(params, prompts, emb), world)]
    reference: dict[str, Tensor] = {}
    for t in range(cfg.sft_steps + cfg.dpo_steps):
        report(f"arm {arm}: SFT then DPO steps", t, cfg.sft_steps + cfg.dpo_steps)
        phase = "sft" if t < cfg.sft_steps else "dpo"
        if phase == "dpo" and not reference:
            with torch.no_grad():
                z_ref = logits(params, prompts, emb)
                reference = {"chosen": response_logps(z_ref, world["chosen"]),
                             "rejected": response_logps(z_ref, world["rejected"])}
        for p in params.values():
            p.requires_grad_(True)
        z = logits(params, prompts, emb)
        lp_c, lp_r = response_logps(z, world["chosen"]), response_logps(z, world["rejected"])
        if phase == "sft":
            loss = compute_loss("sft", chosen_logps=lp_c).mean()
            if arm == "extend":
                loss = 0.5 * (loss + compute_loss("sft", chosen_logps=lp_r).mean())
            lr = cfg.sft_lr
        else:
            n_tok = torch.full_like(lp_c, float(length))
            loss = compute_loss(cfg.dpo_loss, chosen_logps=lp_c, rejected_logps=lp_r,
                                ref_chosen_logps=reference["chosen"], ref_rejected_logps=reference["rejected"],
                                chosen_lengths=n_tok, rejected_lengths=n_tok, beta=cfg.beta).mean()
            lr = cfg.dpo_lr
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: (p - lr * grad).detach() for (k, p), grad in zip(params.items(), grads)}
        step = t + 1
        if step % cfg.record_every == 0 or step in (cfg.sft_steps, cfg.sft_steps + cfg.dpo_steps):
            steps.append(step)
            phases.append("sft" if step <= cfg.sft_steps else "dpo")
            with torch.no_grad():
                rows.append(_probe_logps(logits(params, prompts, emb), world))
    report(f"arm {arm}: SFT then DPO steps", cfg.sft_steps + cfg.dpo_steps, cfg.sft_steps + cfg.dpo_steps)
    return steps, phases, rows


def _claim(claim: str, measured: dict[str, float], held: bool, reference: str) -> dict[str, Any]:
    return {"claim": claim, "reference": reference, "measured": {k: round(v, 4) for k, v in measured.items()},
            "held": bool(held)}


def _claims(cfg: Config, steps: np.ndarray, phase: np.ndarray, logps: np.ndarray) -> list[dict[str, Any]]:
    sft = np.nonzero(phase == "sft")[0]
    end_sft, end = int(sft[-1]), len(steps) - 1
    p = {name: i for i, name in enumerate(PROBES)}
    base, ext = logps[0], logps[1]

    def sft_delta(name: str) -> float:
        return float(base[end_sft, p[name]] - base[0, p[name]])

    def dpo_delta(curves: np.ndarray, name: str) -> float:
        return float(curves[end, p[name]] - curves[end_sft, p[name]])

    def rise_then_fall(name: str) -> dict[str, float]:
        curve = base[:end_sft + 1, p[name]]
        return {"start": float(curve[0]), "peak": float(curve.max()), "end_of_sft": float(curve[-1])}

    fig3, fig4, fig5 = ("PAPER.md section 5, Figure 3 (SFT)", "PAPER.md section 5, Figure 4 (off-policy DPO)",
                        "PAPER.md section 5, Figure 5 (extend)")
    out = [_claim("SFT raises log pi(y+)", {"delta": sft_delta("chosen")}, sft_delta("chosen") > 0, fig3),
           _claim("SFT raises the y+ of other training prompts", {"delta": sft_delta("other_chosen")},
                  sft_delta("other_chosen") > 0, fig3)]
    for name in ("rejected", "heldout"):
        rf = rise_then_fall(name)
        out.append(_claim(f"SFT: {name} rises first, then falls", rf,
                          rf["peak"] > rf["start"] and rf["end_of_sft"] < rf["peak"], fig3))
    for name in ("rephrase_semantic", "rephrase_format"):
        out.append(_claim(f"SFT: {name} stays flat or declines (gains under a quarter of y+'s)",
                          {"delta": sft_delta(name), "delta_chosen": sft_delta("chosen")},
                          sft_delta(name) < 0.25 * sft_delta("chosen"), fig3))
    for name in ("shuffled", "random"):
        out.append(_claim(f"SFT lowers {name}", {"delta": sft_delta(name)}, sft_delta(name) < 0, fig3))
    out.append(_claim("SFT raises the argmax response", {"delta": sft_delta("argmax")}, sft_delta("argmax") > 0, fig3))
    out.append(_claim("DPO: y- falls, faster than y+ (the margin grows)",
                      {"delta_rejected": dpo_delta(base, "rejected"), "delta_chosen": dpo_delta(base, "chosen")},
                      dpo_delta(base, "rejected") < min(0.0, dpo_delta(base, "chosen")), fig4))
    out.append(_claim("DPO lowers y+ after long training", {"delta": dpo_delta(base, "chosen")},
                      dpo_delta(base, "chosen") < 0, fig4))
    falls = [dpo_delta(base, n) < 0 for n in PROBES if n != "argmax"]
    out.append(_claim("DPO lowers almost every probe (>= 75% of the non-argmax probes)",
                      {"fraction_falling": float(np.mean(falls))}, np.mean(falls) >= 0.75, fig4))
    out.append(_claim("DPO raises the argmax response (squeezing)", {"delta": dpo_delta(base, "argmax")},
                      dpo_delta(base, "argmax") > 0, fig4))
    mean_base = float(np.mean([dpo_delta(base, n) for n in NON_TARGET]))
    mean_ext = float(np.mean([dpo_delta(ext, n) for n in NON_TARGET]))
    out.append(_claim("extend: non-target probes decay more slowly during DPO than baseline",
                      {"mean_delta_baseline": mean_base, "mean_delta_extend": mean_ext}, mean_ext > mean_base, fig5))
    out.append(_claim("extend: smaller argmax gain during DPO than baseline (the paper's own run did NOT show this: "
                      "+18.8 vs +14.7 nats, PAPER.md section 8)",
                      {"delta_baseline": dpo_delta(base, "argmax"), "delta_extend": dpo_delta(ext, "argmax")},
                      dpo_delta(ext, "argmax") < dpo_delta(base, "argmax"), fig5))
    return out


def run(cfg: Config) -> Result:
    """Build the world, train both arms (SFT then DPO) and evaluate the probes along the way."""
    world = make_world(cfg)
    curves = [_train_arm(cfg, world, arm) for arm in ARMS]
    steps, phases = np.array(curves[0][0]), np.array(curves[0][1])
    logps = np.array([rows for _, _, rows in curves], dtype=np.float64)  # (2, R, n_probes)
    claims = _claims(cfg, steps, phases, logps)
    summary = {"claims": claims, "claims_held": int(sum(c["held"] for c in claims)), "claims_total": len(claims),
               "vocab": 2 * cfg.vocab_pairs, "response_length": cfg.length_content + cfg.length_format,
               "final_logps": {arm: dict(zip(PROBES, logps[a, -1].round(4).tolist())) for a, arm in enumerate(ARMS)}}
    return Result(config=cfg, steps=steps, phase=phases, logps=logps, summary=summary)


def save(result: Result, out_dir: Path) -> None:
    """Write ``metrics.jsonl`` (step, probe = arm/probe, metric = logp_sum_<phase>, value), summary.json, figure."""
    out_dir = Path(out_dir)
    rows = [{"step": int(step), "probe": f"{arm}/{name}", "metric": f"logp_sum_{result.phase[r]}",
             "value": float(result.logps[a, r, p])}
            for a, arm in enumerate(ARMS) for r, step in enumerate(result.steps.tolist())
            for p, name in enumerate(PROBES)]
    write_metrics(out_dir, rows)
    write_summary(out_dir, result.summary)
    save_figure(plot(result), out_dir / "response_dynamics.png")


def plot(result: Result) -> Figure:
    """Draw each probe's mean summed log-prob over SFT then DPO, one panel per arm, the SFT/DPO boundary dashed."""
    fig = new_figure(11.0, 4.0)
    axes = fig.subplots(1, len(ARMS), sharey=True, squeeze=False)[0]
    boundary = result.config.sft_steps
    for a, arm in enumerate(ARMS):
        ax = axes[a]
        for p, name in enumerate(PROBES):
            ax.plot(result.steps, result.logps[a, :, p], label=name, lw=2.0 if name in ("chosen", "rejected",
                                                                                        "argmax") else 1.0)
        ax.axvline(boundary, color="grey", ls="--", lw=0.8)
        ax.set_title(f"{arm}: SFT{' on y+ and y-' if arm == 'extend' else ' on y+'} | {result.config.dpo_loss}",
                     fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[0].set_ylabel("log pi(y|x_u), summed over tokens (mean over prompts)", fontsize=8)
    axes[-1].legend(fontsize=7, loc="lower left")
    return fig
