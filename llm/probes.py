"""Batched evaluation of every probe type of many prompts: the learning-dynamics curves of PAPER.md section 6.

All (prompt, probe type) sequences are encoded once, sorted by length and evaluated in buckets of ``batch_size``
sequences, never one example at a time. ``evaluate_sequential`` is the paper's method (one forward pass per example
and probe type, batch 1), kept as the reference that tests and benchmarks compare against.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Sequence

import numpy as np
import torch

from llm.data import ProbeSet
from llm.encoding import EncodedSequence, TruncationPolicy, collate, encode_record, encode_sequence, truncation_report
from llm.logps import STATISTICS, greedy_statistics, response_logits, response_statistics

__all__ = ["ProbeResult", "ProbeEvaluator", "evaluate_sequential", "GREEDY_PROBE", "ARGMAX_PROBE",
           "RESPONSE_STATISTICS", "GREEDY_STATISTICS"]

#: free-running greedy decoding from the prompt, scored by its own log-prob.
GREEDY_PROBE = "greedy"
#: teacher-forced argmax along the y+ ("chosen") prefix: sum over m of log max_v pi(v | x, y+_<m).
ARGMAX_PROBE = "argmax_teacher_forced"
#: statistics kept for every response probe type (the argmax ones move to ARGMAX_PROBE, computed on y+ only).
RESPONSE_STATISTICS = tuple(s for s in STATISTICS if not s.startswith("argmax_"))
_LOGP_STATS = ("logp_sum", "logp_mean", "num_tokens")
#: statistics of the greedy probe: its log-probs and how sharp pi is along it (squeezing raises the peakiness).
GREEDY_STATISTICS = (*_LOGP_STATS, "entropy", "peakiness")


def _store(out: dict[str, dict[str, np.ndarray]], probe: str, i: int, stats: dict[str, np.ndarray], row: int) -> None:
    """Copy one response's statistics into ``out``; the argmax of y+ becomes the ARGMAX_PROBE's log-probs."""
    for stat in RESPONSE_STATISTICS:
        out[probe][stat][i] = stats[stat][row]
    if probe == "chosen":
        out[ARGMAX_PROBE]["logp_sum"][i] = stats["argmax_logp_sum"][row]
        out[ARGMAX_PROBE]["logp_mean"][i] = stats["argmax_logp_mean"][row]
        out[ARGMAX_PROBE]["num_tokens"][i] = stats["num_tokens"][row]


def _empty(probe_types: Sequence[str], n: int, greedy: bool) -> dict[str, dict[str, np.ndarray]]:
    out = {p: {s: np.full(n, np.nan) for s in RESPONSE_STATISTICS} for p in probe_types}
    out[ARGMAX_PROBE] = {s: np.full(n, np.nan) for s in _LOGP_STATS}
    if greedy:
        out[GREEDY_PROBE] = {s: np.full(n, np.nan) for s in GREEDY_STATISTICS}
    return out


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Per-example probe statistics: ``per_example[probe][stat]`` is an (N,) float64 array, NaN where absent.

    Probes are the probe set's types, plus ARGMAX_PROBE (teacher-forced argmax on y+) and, when enabled,
    GREEDY_PROBE; log-prob statistics are "logp_sum" (summed over tokens) and "logp_mean" (per-token mean).
    """

    per_example: dict[str, dict[str, np.ndarray]]

    @property
    def probe_types(self) -> tuple[str, ...]:
        return tuple(self.per_example)

    def means(self) -> dict[tuple[str, str], float]:
        """Mean over probe examples (ignoring NaN: empty responses) of every (probe type, statistic)."""
        out = {}
        for probe, stats in self.per_example.items():
            for stat, values in stats.items():
                finite = values[~np.isnan(values)]
                out[(probe, stat)] = float(finite.mean()) if finite.size else float("nan")
        return out

    def rows(self, step: int, examples_seen: int, phase: str = "probe") -> list[dict[str, Any]]:
        """Tidy metric rows (step, examples_seen, phase, probe, statistic, value, count)."""
        return [{"step": step, "examples_seen": examples_seen, "phase": phase, "probe": probe, "statistic": stat,
                 "value": value, "count": int((~np.isnan(self.per_example[probe][stat])).sum())}
                for (probe, stat), value in self.means().items()]

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat "probe/statistic" -> (N,) arrays, in a fixed order (the key order is saved next to them)."""
        return {f"{p}/{s}": v for p, stats in self.per_example.items() for s, v in stats.items()}


class ProbeEvaluator:
    """Evaluate a ProbeSet on any model in length-sorted batches; the set is tokenised once at construction.

    Args:
        probe_set: prompts and probe responses.
        tokenizer: the model's tokenizer (pad and eos checked by the caller).
        policy: truncation policy of the probe sequences (recorded in ``truncation``).
        batch_size: sequences per forward pass.
        greedy_max_new_tokens: > 0 adds the "greedy" probe: free-running greedy decoding of that many tokens at
            most, scored by its own log-prob (not the teacher-forced argmax).
        autocast_dtype: e.g. torch.bfloat16 to evaluate under CUDA autocast; log-softmax stays float32.
    """

    def __init__(self, probe_set: ProbeSet, tokenizer, policy: TruncationPolicy, *, batch_size: int = 16,
                 greedy_max_new_tokens: int = 0, autocast_dtype: torch.dtype | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.probe_set, self.batch_size = probe_set, batch_size
        self.greedy_max_new_tokens, self.autocast_dtype = greedy_max_new_tokens, autocast_dtype
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        encoded: dict[tuple[str, int], EncodedSequence] = {}
        for i, prompt in enumerate(probe_set.prompts):  # one record per prompt: all its probe responses together
            kept = [(probe, r[i]) for probe, r in probe_set.responses.items() if r[i] is not None]
            seqs = encode_record(tokenizer, prompt, [text for _, text in kept], policy, f"{probe_set.source} probe {i}")
            encoded.update({(probe, i): seq for (probe, _), seq in zip(kept, seqs)})
        self.items: list[tuple[str, int, EncodedSequence]] = [
            (probe, i, encoded[(probe, i)]) for probe, responses in probe_set.responses.items()
            for i, response in enumerate(responses) if response is not None]
        self.order = sorted(range(len(self.items)), key=lambda k: self.items[k][2].length)
        self.truncation = truncation_report([s for _, _, s in self.items], policy)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    @torch.no_grad()
    def __call__(self, model) -> ProbeResult:
        """Evaluate all probes on ``model`` (put in eval mode for the call, its mode restored afterwards)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = _empty(self.probe_set.probe_types, len(self.probe_set), self.greedy_max_new_tokens > 0)
        try:
            with self._autocast(device):
                for start in range(0, len(self.order), self.batch_size):
                    chunk = [self.items[k] for k in self.order[start: start + self.batch_size]]
                    batch = collate([s for _, _, s in chunk], self.pad_token_id).to(device)
                    scored = response_logits(model, batch.input_ids, batch.attention_mask, batch.response_mask)
                    stats = {k: v.double().cpu().numpy() for k, v in response_statistics(*scored).items()}
                    for row, (probe, i, _) in enumerate(chunk):
                        _store(out, probe, i, stats, row)
                if self.greedy_max_new_tokens > 0:
                    self._greedy(model, out[GREEDY_PROBE])
        finally:
            model.train(was_training)
        return ProbeResult(out)

    def _greedy(self, model, out: dict[str, np.ndarray]) -> None:
        prompts = {i: s for p, i, s in self.items if p == "chosen"}
        order = sorted(prompts, key=lambda i: len(prompts[i].prompt_ids))
        for start in range(0, len(order), self.batch_size):
            idx = order[start: start + self.batch_size]
            _, stats = greedy_statistics(model, [prompts[i] for i in idx], max_new_tokens=self.greedy_max_new_tokens,
                                         pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id)
            for row, i in enumerate(idx):
                for stat in GREEDY_STATISTICS:
                    out[stat][i] = float(stats[stat][row])


@torch.no_grad()
def evaluate_sequential(model, probe_set: ProbeSet, tokenizer, policy: TruncationPolicy,
                        probe_types: Sequence[str] | None = None) -> ProbeResult:
    """Evaluate probes the paper's way: one unpadded forward pass per example and probe type (batch 1).

    Slow by design; it is the independent reference for the batched ``ProbeEvaluator`` (tests, benchmarks).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    types = tuple(probe_types or probe_set.probe_types)
    out = _empty(types, len(probe_set), greedy=False)
    for i, prompt in enumerate(probe_set.prompts):
        for probe in types:
            response = probe_set.responses[probe][i]
            if response is None:
                continue
            seq = encode_sequence(tokenizer, prompt, response, policy)
            ids = torch.tensor([seq.prompt_ids + seq.response_ids], device=device)  # (1, L)
            resp = torch.zeros_like(ids)
            resp[0, len(seq.prompt_ids):] = 1
            stats = {k: v.double().cpu().numpy() for k, v in
                     response_statistics(*response_logits(model, ids, None, resp)).items()}
            _store(out, probe, i, stats, 0)
    model.train(was_training)
    return ProbeResult(out)
