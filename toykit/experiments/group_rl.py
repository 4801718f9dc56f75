"""Online RL on a toy policy: groups sampled per prompt, rule rewards, the GRPO family; lazy likelihood displacement.

The toy policy. P prompts, each its own table of logits z[p, l] (V,) for positions l = 0..L-1 (no prefix
dependence, so the teacher-forced and the free-running greedy argmax coincide). A response samples a token per
position and stops after the first EOS (token V-1) or at L; log pi(o) is SUMMED over its tokens. The parameters
are the logits themselves, so the eNTK is K = I between equal (prompt, position) and 0 otherwise, and one SGD step
is exactly Delta z[p, l] = -eta P sum_{i in group p} G_{i,l} (P undoes the batch mean over prompts), with G from ``toykit.group_losses.group_residual``
(closed form, PAPER.md section 10). Start logits: a Zipf profile of peakiness s, shuffled per (prompt, position).

Rule reward: 1 if the response contains the prompt's target token, else 0. Each step samples a group of G
responses per prompt from the current policy (inverse-CDF on seeded uniforms shared by every variant), computes
advantages the variant's way, and takes ``inner_steps`` updates on that group (the first is on-policy, rho = 1;
later ones see rho != 1, where the clip zones differ between variants).

Lazy likelihood displacement (Deng, Ren, Sutherland et al. 2025): a correct response's tokens that also occur,
at the same position, in incorrect responses of its group get the incorrect ones' negative push too, so the
correct response gains little or falls. ``overlap`` of a correct response = the fraction of its tokens that occur
in an incorrect response of its group at the same position. Variant ``grpo+nthr`` is GRPO with NTHR's idea in
exact form: a negative-advantage token that also occurs at the same position in a correct response of the group
gets weight ``nthr_weight`` (the paper down-weights by hidden-embedding similarity; equality is the limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from toykit.experiments._common import (check_at_least, check_choice, check_fraction, check_positive, new_figure,
                                        save_figure, write_metrics, write_summary)
from toykit.group_losses import get_group_loss, group_advantages, group_loss_names, group_residual, rloo_advantages

NAME = "group-rl"
DESCRIPTION = "toy online RL: GRPO-family groups on rule rewards; lazy likelihood displacement and its softening"

NTHR = "grpo+nthr"
VARIANTS = (*group_loss_names(), NTHR)
RECORDS = ("p_correct", "reward", "greedy_logp", "entropy", "seen_mass", "delta_correct", "delta_correct_high",
           "delta_correct_low", "delta_incorrect", "frac_correct_fell", "clip_ratio")


@dataclass(frozen=True)
class Config:
    """P prompts with a toy per-position policy, trained by each variant on sampled groups for several steps."""

    vocab: int = field(default=8, metadata={"help": "V tokens per position; token V-1 is EOS"})
    max_len: int = field(default=5, metadata={"help": "L, the longest response (tokens)"})
    prompts: int = field(default=32, metadata={"help": "P prompts, each with its own logits and target token"})
    group_size: int = field(default=8, metadata={"help": "G responses sampled per prompt per step"})
    steps: int = field(default=25, metadata={"help": "sampling steps (a fresh group each)"})
    inner_steps: int = field(default=2, metadata={"help": "updates per sampled group (TRL's num_iterations)"})
    lr: float = field(default=2.0, metadata={"help": "SGD learning rate eta on the logits (per prompt: the batch "
                                                         "mean over prompts is undone)"})
    peakiness: float = field(default=1.0, metadata={"help": "Zipf exponent s of the start distribution per position"})
    nthr_weight: float = field(default=0.0, metadata={"help": "grpo+nthr: weight of a negative token a correct "
                                                              "response shares (1: plain GRPO)"})
    variants: tuple[str, ...] = field(default=VARIANTS, metadata={"help": f"variants, from {list(VARIANTS)}"})
    seed: int = field(default=0, metadata={"help": "seed of the start logits, targets and sampling uniforms"})

    def __post_init__(self) -> None:
        for name, minimum in (("vocab", 3), ("max_len", 1), ("prompts", 1), ("group_size", 2), ("steps", 1),
                              ("inner_steps", 1), ("seed", 0)):
            check_at_least(name, getattr(self, name), minimum)
        check_positive("lr", self.lr)
        check_fraction("peakiness", self.peakiness, 0.0, 20.0)
        check_fraction("nthr_weight", self.nthr_weight)
        if not self.variants:
            raise ValueError("variants: expected at least one variant, got none")
        for v in self.variants:
            check_choice("variants", v, VARIANTS)


@dataclass(frozen=True)
class Result:
    """Per-step records of every variant, and the groups of the first variant's run for the token view.

    Attributes:
        config: the Config of the run.
        records: (n_variants, steps, n_records) the RECORDS per step (mean over prompts / responses).
        first_group: the first step's group of prompt 0 per variant: tokens (G, L), mask, reward, advantage,
            delta (G, L) per-token change of log pi over the step.
        summary: the claims, with measured values and whether they held.
    """

    config: Config
    records: np.ndarray
    first_group: dict[str, dict[str, list]]
    summary: dict[str, Any]


def start_logits(cfg: Config, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return start logits (P, L, V) float64 (Zipf profile shuffled per row) and targets (P,), never EOS."""
    profile = -cfg.peakiness * torch.log(torch.arange(1, cfg.vocab + 1, dtype=torch.float64))  # (V,)
    order = torch.rand(cfg.prompts, cfg.max_len, cfg.vocab, generator=g).argsort(-1)  # (P, L, V) random ranks
    targets = torch.randint(0, cfg.vocab - 1, (cfg.prompts,), generator=g)
    return profile[order], targets


def sample(z: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a group per prompt by inverse CDF: tokens (P, G, L) and mask (P, G, L), 1 up to the first EOS.

    Args:
        z: (P, L, V) logits; u: (P, G, L) uniforms in [0, 1).
    """
    cdf = torch.softmax(z, -1).cumsum(-1)[:, None].expand(-1, u.shape[1], -1, -1)  # (P, G, L, V)
    tokens = torch.searchsorted(cdf.contiguous(), u[..., None]).squeeze(-1).clamp(max=z.shape[-1] - 1)
    eos = (tokens == z.shape[-1] - 1).long()
    mask = (eos.cumsum(-1) - eos) == 0  # (P, G, L): positions up to and including the first EOS
    return tokens, mask


def _token_logps(z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Return log pi of each sampled token, (P, G, L)."""
    logp = torch.log_softmax(z, -1)[:, None].expand(-1, tokens.shape[1], -1, -1)  # (P, G, L, V)
    return logp.gather(-1, tokens[..., None])[..., 0]


def policy_statistics(z: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return per prompt (P,): P(correct), the greedy response's summed log-prob and the sequence entropy.

    Math: alive_l = prod_{k<l} (1 - pi_k(EOS)); P(correct) = sum_l prod_{k<l} (1 - pi_k(t) - pi_k(EOS)) pi_l(t);
    H = sum_l alive_l H(pi_l). The greedy response takes argmax_v pi_l(v) until it emits EOS.
    """
    pi = torch.softmax(z, -1)  # (P, L, V)
    p_t = pi.gather(-1, targets[:, None, None].expand(-1, z.shape[1], 1))[..., 0]  # (P, L)
    p_eos = pi[..., -1]
    before = torch.cumprod(torch.cat([torch.ones_like(p_t[:, :1]), (1 - p_t - p_eos)[:, :-1]], 1), 1)
    alive = torch.cumprod(torch.cat([torch.ones_like(p_t[:, :1]), (1 - p_eos)[:, :-1]], 1), 1)
    entropy = (alive * -(pi * torch.log(pi)).sum(-1)).sum(-1)
    top = torch.log(pi.max(-1).values)  # (P, L)
    greedy_eos = pi.argmax(-1) == z.shape[-1] - 1
    greedy_mask = (greedy_eos.long().cumsum(-1) - greedy_eos.long()) == 0
    return {"p_correct": (before * p_t).sum(-1), "greedy_logp": (top * greedy_mask).sum(-1), "entropy": entropy}


def _advantages(variant: str, rewards: torch.Tensor) -> torch.Tensor:
    """Return (P, G) advantages the variant's way (group-normalised, unscaled, or leave-one-out)."""
    spec = get_group_loss("grpo" if variant == NTHR else variant)
    return rloo_advantages(rewards) if spec.advantage == "loo" else group_advantages(rewards, spec.advantage)


def _shared_with(tokens, mask, side: torch.Tensor) -> torch.Tensor:
    """Return (P, G, L) bool: token (i, l) also occurs at position l in a response of its group where ``side``."""
    same = (tokens[:, :, None] == tokens[:, None]) & mask[:, :, None] & mask[:, None]  # (P, G, G, L)
    return (same & side[:, None, :, None]).any(2) & mask


def _seen_mass(z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return (P,) the probability the policy z puts on the group's distinct responses (the 'seen' set)."""
    logp = (_token_logps(z, tokens) * mask).sum(-1)  # (P, G)
    keys = torch.where(mask, tokens, -1)  # (P, G, L): padding cannot make two responses differ
    equal = (keys[:, :, None] == keys[:, None]).all(-1)  # (P, G, G)
    repeat = torch.tril(equal, diagonal=-1).any(-1)  # (P, G): an earlier response of the group is identical
    return (torch.exp(logp) * ~repeat).sum(-1)


def _run_variant(cfg: Config, variant: str, z0: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, dict, dict]:
    """Train one variant; return (records (steps, n_records), pooled correct responses, prompt 0's first group)."""
    loss = "grpo" if variant == NTHR else variant
    z, rows, group = z0.clone(), [], {}
    pool: dict[str, list[float]] = {"delta": [], "overlap": [], "accuracy": []}
    b = cfg.prompts * cfg.group_size
    for step in range(cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)  # the same draws for every variant
        tokens, mask = sample(z, torch.rand(cfg.prompts, cfg.group_size, cfg.max_len, generator=g,
                                            dtype=torch.float64))
        correct = ((tokens == targets[:, None, None]) & mask).any(-1)  # (P, G)
        rewards = correct.to(torch.float64)
        adv = _advantages(variant, rewards)  # (P, G)
        if variant == NTHR:  # negative tokens that a correct response of the group shares get nthr_weight
            soft = (adv[..., None] < 0) & _shared_with(tokens, mask, correct)
            adv_used = (adv[..., None] * torch.where(soft, cfg.nthr_weight, 1.0)).reshape(b, cfg.max_len)
        else:
            adv_used = adv.reshape(b)
        before = _token_logps(z, tokens)  # (P, G, L) the sampling policy's log-probs
        flat_tokens, flat_mask, old = tokens.reshape(b, -1), mask.reshape(b, -1).double(), before.reshape(b, -1)
        clip = []
        for _ in range(cfg.inner_steps):
            z_b = z[:, None].expand(-1, cfg.group_size, -1, -1).reshape(b, cfg.max_len, cfg.vocab)  # (B, L, V)
            res = group_residual(loss, z_b, flat_tokens, flat_mask, old, adv_used)
            clip.append(float(res.clipped.sum() / flat_mask.sum()))
            # K = I per (prompt, position): each prompt's logits move by -eta P times its group's summed G (the
            # batch loss averages over P prompts; the factor P keeps a prompt's step independent of P).
            z = z - cfg.lr * cfg.prompts * res.G.reshape(cfg.prompts, cfg.group_size, cfg.max_len,
                                                         cfg.vocab).sum(1)
        delta_tok = (_token_logps(z, tokens) - before) * mask  # (P, G, L)
        delta = delta_tok.sum(-1)  # (P, G) summed log-prob change of each response over the step
        overlap = _shared_with(tokens, mask, ~correct).sum(-1) / mask.sum(-1)  # (P, G)
        stats = policy_statistics(z, targets)

        def mean(x, where):
            return float(x[where].mean()) if bool(where.any()) else float("nan")

        rows.append([float(stats["p_correct"].mean()), float(rewards.mean()), float(stats["greedy_logp"].mean()),
                     float(stats["entropy"].mean()), float(_seen_mass(z, tokens, mask).mean()),
                     mean(delta, correct), mean(delta, correct & (overlap >= 0.5)),
                     mean(delta, correct & (overlap < 0.5)), mean(delta, ~correct),
                     mean((delta < 0).double(), correct), float(np.mean(clip))])
        accuracy = rewards.mean(1, keepdim=True).expand(-1, cfg.group_size)  # (P, G)
        for key, val in (("delta", delta), ("overlap", overlap), ("accuracy", accuracy)):
            pool[key] += val[correct].tolist()
        if step == 0:
            group = {"tokens": tokens[0].tolist(), "mask": mask[0].int().tolist(), "reward": rewards[0].tolist(),
                     "advantage": adv[0].tolist(), "delta": delta_tok[0].tolist(), "target": int(targets[0])}
    return np.array(rows), pool, group


def _claim(claim: str, measured: dict[str, float], held: bool) -> dict[str, Any]:
    return {"claim": claim, "reference": "PAPER.md section 10; Deng, Ren, Sutherland et al. 2025 (LLD)",
            "measured": {k: round(float(v), 4) for k, v in measured.items()}, "held": bool(held)}


def _claims(cfg: Config, records: np.ndarray, pools: dict[str, dict]) -> list[dict[str, Any]]:
    """The pass rules, fixed before any run: each compares measured quantities with a stated inequality."""
    col = {name: i for i, name in enumerate(RECORDS)}
    out = []
    for v, variant in enumerate(cfg.variants):
        rise = records[v, -1, col["p_correct"]] - records[v, 0, col["p_correct"]]
        out.append(_claim(f"{variant}: P(correct) rises over the run", {"delta_p_correct": rise}, rise > 0))
    if "grpo" not in cfg.variants:
        return out
    g = cfg.variants.index("grpo")
    pool = {k: np.array(x) for k, x in pools["grpo"].items()}
    high, low = pool["delta"][pool["overlap"] >= 0.5], pool["delta"][pool["overlap"] < 0.5]
    out.append(_claim("grpo: correct responses that share most tokens with incorrect ones gain less (mean summed "
                      "delta log pi, overlap >= 0.5 vs < 0.5)",
                      {"mean_delta_high_overlap": high.mean() if high.size else np.nan,
                       "mean_delta_low_overlap": low.mean() if low.size else np.nan,
                       "n_high": high.size, "n_low": low.size},
                      high.size > 0 and low.size > 0 and high.mean() < low.mean()))
    fell = float(np.mean(pool["delta"] < 0))
    out.append(_claim("grpo: lazy likelihood displacement occurs (>= 5% of rewarded correct responses lose "
                      "log-prob in their own step)", {"fraction_fell": fell}, fell >= 0.05))
    # The same comparison within groups of equal accuracy (k of G correct), where the advantages are equal, so
    # the group's accuracy (which drives both overlap and the advantage) cannot confound it; strata weighted by size.
    gaps, sizes = [], []
    for acc in np.unique(pool["accuracy"]):
        d, o = pool["delta"][pool["accuracy"] == acc], pool["overlap"][pool["accuracy"] == acc]
        if (o >= 0.5).any() and (o < 0.5).any():
            gaps.append(d[o >= 0.5].mean() - d[o < 0.5].mean())
            sizes.append(d.size)
    gap = float(np.average(gaps, weights=sizes)) if gaps else np.nan
    out.append(_claim("grpo: at equal group accuracy, correct responses with overlap >= 0.5 gain less than those "
                      "with overlap < 0.5 (size-weighted mean gap < 0)", {"mean_gap": gap, "strata": len(gaps)},
                      bool(gap < 0)))
    hi_acc, lo_acc = pool["accuracy"] > 0.5, pool["accuracy"] <= 0.5
    f_hi = float(np.mean(pool["delta"][hi_acc] < 0)) if hi_acc.any() else np.nan
    f_lo = float(np.mean(pool["delta"][lo_acc] < 0)) if lo_acc.any() else np.nan
    out.append(_claim("grpo: the phase: correct responses fall more often in groups with accuracy > 1/2 than <= 1/2",
                      {"fraction_fell_accuracy_above_half": f_hi, "fraction_fell_accuracy_at_most_half": f_lo},
                      bool(f_hi > f_lo)))
    greedy = records[g, -1, col["greedy_logp"]] - records[g, 0, col["greedy_logp"]]
    entropy = records[g, -1, col["entropy"]] - records[g, 0, col["entropy"]]
    out.append(_claim("grpo: squeezing in RL: the greedy response's log-prob rises and the entropy falls",
                      {"delta_greedy_logp": greedy, "delta_entropy": entropy}, greedy > 0 and entropy < 0))
    if NTHR in cfg.variants:
        nthr = {k: np.array(x) for k, x in pools[NTHR].items()}
        n_high = nthr["delta"][nthr["overlap"] >= 0.5]
        f_nthr = float(np.mean(nthr["delta"] < 0))
        out.append(_claim("grpo+nthr softens LLD: high-overlap correct responses gain more, and fewer fall, than "
                          "under grpo",
                          {"mean_delta_high_overlap_nthr": n_high.mean() if n_high.size else np.nan,
                           "mean_delta_high_overlap_grpo": high.mean() if high.size else np.nan,
                           "fraction_fell_nthr": f_nthr, "fraction_fell_grpo": fell},
                          n_high.size > 0 and high.size > 0 and n_high.mean() > high.mean() and f_nthr < fell))
    return out


def run(cfg: Config) -> Result:
    """Train every variant from the same start on the same sampling uniforms; measure and score the claims."""
    z0, targets = start_logits(cfg, torch.Generator().manual_seed(cfg.seed))
    records, pools, groups = [], {}, {}
    for variant in cfg.variants:
        rows, pools[variant], groups[variant] = _run_variant(cfg, variant, z0, targets)
        records.append(rows)
    records = np.array(records)  # (n_variants, steps, n_records)
    claims = _claims(cfg, records, pools)
    col = {name: i for i, name in enumerate(RECORDS)}
    def over_steps(x: np.ndarray) -> float:  # mean over the steps where the quantity exists (NaN if none)
        return float(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")

    table = {variant: {name: round(over_steps(records[v, :, col[name]]) if name.startswith(("delta", "frac", "clip"))
                                   else float(records[v, -1, col[name]]), 4) for name in RECORDS}
             for v, variant in enumerate(cfg.variants)}
    summary = {"claims": claims, "claims_held": int(sum(c["held"] for c in claims)), "claims_total": len(claims),
               "variants": table, "note": "p_correct, reward, greedy_logp, entropy, seen_mass: at the last step; "
               "delta_*, frac_*, clip_ratio: mean over steps; log-probs summed over tokens"}
    return Result(config=cfg, records=records, first_group=groups, summary=summary)


def group_table(result: Result, variant: str) -> list[dict[str, Any]]:
    """Return prompt 0's first group under ``variant`` as rows: tokens, reward, advantage, per-token and summed
    change of log pi over that step (tokens: 'EOS' for V-1, the target in brackets, '-' after the response)."""
    group = result.first_group[variant]
    eos = result.config.vocab - 1

    def name(t: int) -> str:
        return "EOS" if t == eos else f"[{t}]" if t == group["target"] else str(t)

    rows = []
    for i, (tokens, mask) in enumerate(zip(group["tokens"], group["mask"])):
        delta = [round(d, 3) if m else None for d, m in zip(group["delta"][i], mask)]
        rows.append({"response": i, "correct": bool(group["reward"][i]), "advantage": round(group["advantage"][i], 3),
                     "tokens": " ".join(name(t) if m else "-" for t, m in zip(tokens, mask)),
                     "delta_logp_summed": round(sum(d for d in delta if d is not None), 4),
                     **{f"delta_t{t}": d for t, d in enumerate(delta)}})
    return rows


def save(result: Result, out_dir: Path) -> None:
    """Write ``metrics.jsonl`` (step, probe = variant, metric, value), ``summary.json`` and the figure."""
    out_dir = Path(out_dir)
    rows = [{"step": s, "probe": variant, "metric": name, "value": float(result.records[v, s, m])}
            for v, variant in enumerate(result.config.variants) for s in range(result.config.steps)
            for m, name in enumerate(RECORDS) if np.isfinite(result.records[v, s, m])]
    write_metrics(out_dir, rows)
    write_summary(out_dir, {**result.summary, "first_group": result.first_group})
    save_figure(plot(result), out_dir / "group_rl.png")


def plot(result: Result) -> Figure:
    """Draw P(correct), greedy log-prob, entropy and the correct responses' step gain per variant over steps."""
    fig = new_figure(12.0, 3.4)
    panels = [("p_correct", "P(correct)"), ("greedy_logp", "greedy response log pi (summed)"),
              ("entropy", "sequence entropy (nats)"), ("delta_correct_high", "correct, overlap >= 0.5: step gain")]
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    steps = np.arange(result.config.steps)
    for ax, (name, label) in zip(axes, panels):
        m = RECORDS.index(name)
        for v, variant in enumerate(result.config.variants):
            ax.plot(steps, result.records[v, :, m], label=variant, lw=2.0 if variant in ("grpo", NTHR) else 1.0)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[-1].axhline(0.0, color="grey", lw=0.6)
    axes[0].legend(fontsize=7)
    return fig
