"""Measurements of the conditions the paper's argument needs, taken at the start of a finetuning phase.

- ``bigram_overlap``: how much of y- is a token edit of y+ (the share of y-'s token bigrams found in y+);
- ``ches_similarity``: a CHES-style similarity of the hidden embeddings of y+ and y- (Razin et al., ICLR 2025);
- ``one_step_change``: the largest change of any probe's log-prob that one optimizer step makes at the phase's
  peak learning rate (the kernel regime of Proposition 1 needs it small);
- ``argmax_positions`` / ``argmax_split``: the teacher-forced argmax along y+ per position, and its change split
  into positions whose argmax was not the y+ token at the phase start (where squeezing moves mass) and the rest.

The per-token entropy, energy 1 - pi(y+) and the peak / valley shares of y- come from the probes' own statistics
(``llm.logps.response_statistics``), read at the phase's first evaluation by ``llm.validation.report``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from llm.config import TrainConfig
from llm.data import PreferencePair, ProbeSet
from llm.encoding import TruncationPolicy, collate, encode_sequence
from llm.logps import response_logits
from llm.pair_diagnostics import ches_scores
from llm.probes import ProbeEvaluator
from llm.training import train

__all__ = ["bigram_overlap", "ches_similarity", "one_step_change", "argmax_positions", "argmax_split"]

_POLICY = TruncationPolicy(max_prompt_tokens=256, max_response_tokens=256)


def _bigrams(ids: Sequence[int]) -> list[tuple[int, int]]:
    return list(zip(ids[:-1], ids[1:]))


def bigram_overlap(tokenizer, pairs: Sequence[PreferencePair]) -> float:
    """Mean over pairs of the share of y-'s token bigrams that also occur in the same pair's y+.

    A minimal edit of y+ (one value swapped) scores near 1; two independent responses score near 0. NaN ("not
    measured" in the conditions table) when no pair's y- has two tokens, e.g. a tiny model's on-policy samples.
    """
    shares = []
    for p in pairs:
        plus = set(_bigrams(tokenizer(p.chosen, add_special_tokens=False)["input_ids"]))
        minus = _bigrams(tokenizer(p.rejected, add_special_tokens=False)["input_ids"])
        if minus:
            shares.append(sum(b in plus for b in minus) / len(minus))
    return float(np.mean(shares)) if shares else float("nan")


def _batch(tokenizer, prompts: Sequence[str], responses: Sequence[str], device):
    seqs = [encode_sequence(tokenizer, p, r, _POLICY) for p, r in zip(prompts, responses)]
    return collate(seqs, tokenizer.pad_token_id).to(device)


def ches_similarity(model, tokenizer, pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """CHES-style similarity of y+ and y- hidden embeddings, averaged over pairs (``llm.pair_diagnostics``).

    Math: with hbar+- the mean last-layer hidden state over the positions predicting y+- (length-normalised
        sums), ches_ln = <hbar+, hbar-> - ||hbar+||^2 (Razin et al.'s length-normalised CHES) and
        cosine = <hbar+, hbar-> / (||hbar+|| ||hbar-||).
    References: Razin et al., "Unintentional Unalignment", ICLR 2025 (CHES score); PAPER.md section 9.
    """
    chosen = [encode_sequence(tokenizer, p.prompt, p.chosen, _POLICY) for p in pairs]
    rejected = [encode_sequence(tokenizer, p.prompt, p.rejected, _POLICY) for p in pairs]
    scores = ches_scores(model, chosen, rejected, tokenizer.pad_token_id)
    return {"ches_ln": float(scores["ln_ches"].mean()), "ches_cosine": float(scores["cosine"].mean())}


def one_step_change(cfg: TrainConfig, model, tokenizer, pairs: Sequence[PreferencePair], probes: ProbeSet,
                    out_dir: Path) -> float:
    """Largest |Delta log pi| (summed over tokens, any probe type and probe example) over ONE optimizer step.

    The step is the phase's first batch at its PEAK learning rate from a fresh optimizer state (no warm-up): for
    Adam and RMSprop that first step is the largest in parameter space, so the value bounds the steps the phase
    takes after its warm-up. ``model`` is not modified.
    """
    evaluator = ProbeEvaluator(probes, tokenizer, _POLICY, batch_size=cfg.probe_batch_size, mode=cfg.probe_mode)
    before = evaluator(model)
    step_cfg = dataclasses.replace(cfg, warmup_steps=0, epochs=1, max_examples=cfg.batch_size * cfg.grad_accum,
                                   eval_every=10 ** 9, greedy_max_new_tokens=0, out_dir=str(out_dir), explain_prompts=0,
                                   progress=False, phase=f"{cfg.phase_name}_one_step",
                                   figure=False)  # a scratch run: only its probes are read
    after = train(step_cfg, model=copy.deepcopy(model), tokenizer=tokenizer, pairs=list(pairs), probes=probes).probes
    changes = [np.abs(after.per_example[p]["logp_sum"] - before.per_example[p]["logp_sum"])
               for p in before.per_example if p in after.per_example]
    return float(np.nanmax(np.concatenate(changes)))


@torch.no_grad()
def argmax_positions(model, tokenizer, probes: ProbeSet) -> list[dict[str, np.ndarray]]:
    """Per probe example, along the y+ prefix: ``log_max`` (M,) log max_v pi(v | x, y+_<m) and ``is_chosen`` (M,)
    whether that argmax is the y+ token (the teacher-forced argmax of PAPER.md section 6, per position)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(probes.prompts), 16):
            prompts = probes.prompts[start: start + 16]
            batch = _batch(tokenizer, prompts, probes.responses["chosen"][start: start + 16], device)
            logits, ids, mask = response_logits(model, batch.input_ids, batch.attention_mask, batch.response_mask)
            log_pi = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (N, K-1, V)
            top = log_pi.max(dim=-1)  # (N, K-1)
            scored = mask[:, 1:].bool()  # (N, K-1)
            is_chosen = top.indices == ids[:, 1:]
            for n in range(len(prompts)):
                out.append({"log_max": top.values[n][scored[n]].double().cpu().numpy(),
                            "is_chosen": is_chosen[n][scored[n]].cpu().numpy()})
    finally:
        model.train(was)
    return out


def argmax_split(start: list[dict[str, np.ndarray]], end: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Mean change of log max pi per position, split by whether the argmax was the y+ token at the START.

    Returns:
        ``not_chosen`` (mean over positions whose start argmax != y+), ``chosen`` (the rest; NaN where a group is
        empty) and ``share_not_chosen`` (that group's share of all positions).
    """
    if len(start) != len(end):
        raise ValueError(f"argmax_split needs the same probes at both ends, got {len(start)} and {len(end)}")
    delta = np.concatenate([e["log_max"] - s["log_max"] for s, e in zip(start, end)])  # (positions,)
    was_chosen = np.concatenate([s["is_chosen"] for s in start])
    mean = lambda x: float(x.mean()) if x.size else float("nan")  # noqa: E731
    return {"not_chosen": mean(delta[~was_chosen]), "chosen": mean(delta[was_chosen]),
            "share_not_chosen": float((~was_chosen).mean())}

