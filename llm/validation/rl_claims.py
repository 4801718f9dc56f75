"""The RL phase of the validation: GRPO from the SFT model with the world's judge as reward, and its claims.

The claims and their pass rules were fixed here before any validation run scored them (PAPER.md section 10):

| claim | measure | rule |
|---|---|---|
| ``rl_reward_up`` | mean judge reward of the last quarter of GRPO steps minus the first quarter | > 0 |
| ``rl_lld_shared_gain_less`` | mean over steps of Delta log pi(o) of positive-advantage samples sharing < 1/2 of their tokens with the group's negative ones minus those sharing >= 1/2 | > 0 |
| ``rl_greedy_up`` | Delta greedy per-token log-prob over grpo (squeezing in RL) | > 0 |
| ``rl_peakier_greedy`` | Delta mean sum_v pi_v^2 along the greedy response over grpo | > 0 |
| ``rl_milder_than_offpolicy`` | mean Delta(other probes) over grpo minus over dpo (on-policy negatives squeeze less) | > 0 |

They are scored apart from the paper's claims (``claims_rl.json`` and the report's RL section), so the paper's
scoreboard keeps its count. A claim passes when its rule holds in every seed.

With ``--explain-prompts N`` the GRPO phase, like the others, records its attribution (``llm.rl_explain``: every
probe's change split into the positive-advantage pull, the negative-advantage push and, where beta > 0, the KL to
the reference) under ``grpo/explain/`` and in the seed's record (``extras["attribution"]["grpo"]``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm.config import TrainConfig
from llm.rl import train_rl
from llm.validation.explain_phases import phase_attribution
from llm.validation.report import GREEDY, OTHER_PROBES, ClaimSpec, SeedResult
from toykit.runs import iter_jsonl

__all__ = ["RL_PHASE", "RL_CLAIMS", "run_rl_phase", "rl_phase_attribution", "rl_markdown"]

RL_PHASE = "grpo"


def _quarters(r: SeedResult, key: str) -> float:
    values = np.asarray(r.extras["rl"][key], dtype=np.float64)
    q = max(1, len(values) // 4)
    return float(values[-q:].mean() - values[:q].mean())


def _lld_gap(r: SeedResult) -> float:
    low = np.asarray(r.extras["rl"]["gain_low_overlap"], dtype=np.float64)
    high = np.asarray(r.extras["rl"]["gain_high_overlap"], dtype=np.float64)
    low, high = low[np.isfinite(low)], high[np.isfinite(high)]
    return float(low.mean() - high.mean()) if low.size and high.size else float("nan")


def _others(r: SeedResult, phase: str) -> float:
    return float(np.mean([r.delta(phase, p) for p in OTHER_PROBES]))


_c = ClaimSpec
RL_CLAIMS: tuple[ClaimSpec, ...] = (
    _c("rl_reward_up", "online RL (GRPO)", "GRPO raises the judge's mean reward",
       "mean reward, last quarter of the steps minus the first quarter", ">", 0.0,
       lambda r: _quarters(r, "reward")),
    _c("rl_lld_shared_gain_less", "online RL (GRPO)",
       "correct samples sharing tokens with negative ones gain less (lazy likelihood displacement)",
       "mean over steps: Delta log pi of positive-advantage samples with overlap < 1/2 minus overlap >= 1/2",
       ">", 0.0, _lld_gap, "overlap = share of a sample's tokens that occur in a negative sample of its group"),
    _c("rl_greedy_up", "online RL (GRPO)", "the greedy response's log-prob rises (squeezing in RL)",
       "Delta greedy per-token log-prob over grpo", ">", 0.0, lambda r: r.delta(RL_PHASE, GREEDY, "logp_mean")),
    _c("rl_peakier_greedy", "online RL (GRPO)", "pi gets peakier along the greedy response",
       "Delta mean sum_v pi_v^2 along the greedy response over grpo", ">", 0.0,
       lambda r: r.delta(RL_PHASE, GREEDY, "peakiness")),
    _c("rl_milder_than_offpolicy", "online RL (GRPO)", "on-policy negatives lower the other probes less than "
       "off-policy DPO", "mean Delta(others) over grpo minus over dpo", ">", 0.0,
       lambda r: _others(r, RL_PHASE) - _others(r, "dpo"), "GRPO and DPO run for different numbers of steps"),
)


def run_rl_phase(phases, reward: Callable[[list[str], list[str]], list[float]], start_model, pairs: Sequence,
                 probe_rows: Callable[[Path], list[dict[str, Any]]]) -> dict[str, Any]:
    """Run GRPO from ``start_model`` on the pairs' prompts; add its probe rows to ``phases``; return its curves.

    Args:
        phases: the pipeline's phase runner (preset, seed, directory, tokenizer, probes, device, rows).
        reward: the world judge's reward function.
        start_model: the SFT model (copied, never changed).
        pairs: the training pairs (their prompts are the RL prompts).
        probe_rows: the pipeline's reader of a run's tidy probe rows.
    """
    p = phases.preset
    n_examples = p.rl_steps * p.rl_prompts
    cfg = TrainConfig(model=phases.model_name, loss=RL_PHASE, phase=RL_PHASE, optimizer=p.optimizer, lr=p.rl_lr,
                      batch_size=p.rl_prompts, max_examples=n_examples,
                      eval_every=max(1, n_examples // p.dpo_evals), held_out=0, num_probes=len(phases.probes),
                      greedy_max_new_tokens=p.greedy_max_new_tokens, num_generations=p.rl_generations,
                      max_completion_length=p.greedy_max_new_tokens, temperature=p.temperature, dtype=p.dtype,
                      bf16=p.bf16, device=phases.device, seed=phases.seed, save_model=False,
                      checkpoint_at_end=False, probe_batch_size=p.probe_batch_size, probe_mode=phases.probe_mode,
                      progress=phases.progress, out_dir=str(phases.dir / RL_PHASE),
                      explain_prompts=phases.explain_prompts, explain_every=phases.explain_every)
    result = train_rl(cfg, reward, model=copy.deepcopy(start_model), tokenizer=phases.tok, pairs=list(pairs),
                      probes=phases.probes)
    if cfg.explain_prompts:
        phases.attribution[RL_PHASE] = rl_phase_attribution(result, cfg, start_model, phases.tok, pairs,
                                                            phases.probes)
    phases.rows.extend(probe_rows(result.run_dir))
    steps = [row for _, row in iter_jsonl(result.run_dir / "metrics.jsonl") if "reward" in row]  # training rows
    columns = {"reward": "reward", "reward_std": "reward_std", "entropy": "entropy",
               "gain_high_overlap": "lld/gain_high_overlap", "gain_low_overlap": "lld/gain_low_overlap",
               "frac_positive_fell": "lld/frac_positive_fell"}
    return {key: [float(row.get(name, float("nan"))) for row in steps] for key, name in columns.items()}


def rl_phase_attribution(result, cfg, start_model, tokenizer, pairs: Sequence, probes) -> dict[str, Any]:
    """The RL phase's attribution in the shape of every other phase's (``explain_phases.phase_attribution``).

    Its terms are the group objective's (``llm.rl_explain``); ``objective`` adds the loss and its KL weight (beta 0:
    no KL term). No forecast: ``llm.forecast`` runs the engine's pairwise losses, not online RL.
    """
    out = phase_attribution(result, cfg, start_model, tokenizer, pairs, probes, with_forecast=False)
    out["objective"] = {"loss": cfg.loss, **cfg.group_hparams()}
    return out


def rl_markdown(doc: dict[str, Any], seeds: Sequence[SeedResult]) -> str:
    """The report's RL section: the claims table and the reward / LLD curves' end points per seed."""
    lines = ["", "## Online RL: GRPO from the SFT model, the world's judge as reward", "",
             f"**{doc['held']} of {doc['total']} RL claims hold in every seed** (rules fixed in "
             "`llm/validation/rl_claims.py` before any run; scored apart from the paper's claims).", "",
             "| claim | measure | rule | values per seed | verdict |", "|---|---|---|---|---|"]
    for c in doc["claims"]:
        values = ", ".join("nan" if v is None or not np.isfinite(v) else f"{v:.3g}" for v in c["values"])
        lines.append(f"| `{c['name']}`: {c['claim']} | {c['measure']} | {c['rule']} | {values} | {c['verdict']} |")
    lines += ["", "| seed | reward (first -> last step) | share of positive samples whose log-prob fell |",
              "|---|---|---|"]
    for r in seeds:
        rl = r.extras.get("rl")
        if rl and rl["reward"]:
            fell = np.asarray(rl["frac_positive_fell"], dtype=np.float64)
            lines.append(f"| {r.seed} | {rl['reward'][0]:.2f} -> {rl['reward'][-1]:.2f} | "
                         f"{np.nanmean(fell) if np.isfinite(fell).any() else float('nan'):.3f} |")
    return "\n".join(lines) + "\n"
