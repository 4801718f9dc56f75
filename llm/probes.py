"""Batched evaluation of every probe type of many prompts: the learning-dynamics curves of PAPER.md section 6.

All (prompt, probe type) sequences are encoded once and evaluated in batches of ``batch_size`` sequences, never one
example at a time, in one of two modes (PROBE_MODES):

- "shared" (the default): each prompt runs once and all of its responses are scored from its key/value cache
  (``llm.prefix``), so a prompt with 12 probe responses costs |x| + 12 |y| tokens instead of 12 (|x| + |y|). Prompts
  are taken in length order, grouped so that a group's responses fill a few batches; the cache is kept for one
  group at a time, never for the whole set. The LM head runs on the scored positions only, block by block
  (``llm.logps.head_statistics``: no (N, L, V) logits), unless the model's logits are more than its head's output
  (then its own logits are scored). Models that cannot continue from a cache fall back to "full" with a warning.
- "full": every [prompt, response] is its own sequence, sorted by length and right-padded (the reference path).

``evaluate_sequential`` is the paper's method (one forward pass per example and probe type, batch 1), kept as the
independent reference that tests and benchmarks compare against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from llm.data import ProbeSet
from llm.encoding import EncodedSequence, TruncationPolicy, collate, encode_record, encode_sequence, truncation_report
from llm.logps import STATISTICS, greedy_statistics, head_statistics, response_logits, response_statistics
from llm.prefix import (SharingUnsupported, continuation_hidden, continuation_logits, head_path, plan_groups,
                         prefix_forward)

__all__ = ["ProbeResult", "ProbeEvaluator", "evaluate_sequential", "GREEDY_PROBE", "ARGMAX_PROBE",
           "RESPONSE_STATISTICS", "GREEDY_STATISTICS", "PROBE_MODES"]

#: how probe sequences are batched: prompts shared across their responses (KV cache), or one sequence per response.
PROBE_MODES = ("shared", "full")
#: largest |logp_sum| difference (nats) between the modes accepted by the one-time check of a model's first batch.
_SELF_CHECK_TOL = 1e-3
#: responses of the first shared batch that the check runs through the full path too, its longest ones (every
#: response has a token: an empty one is refused at encoding, or is [eos]); their (n, L, V) logits are the check's
#: memory: a whole batch of them would set the shared path's peak at a real vocabulary.
_SELF_CHECK_ROWS = 4

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
    """Evaluate a ProbeSet on any model in batches; the set is tokenised and planned once at construction.

    Args:
        probe_set: prompts and probe responses.
        tokenizer: the model's tokenizer (pad and eos checked by the caller).
        policy: truncation policy of the probe sequences (recorded in ``truncation``).
        batch_size: sequences (responses) per forward pass.
        greedy_max_new_tokens: > 0 adds the "greedy" probe: free-running greedy decoding of that many tokens at
            most, scored by its own log-prob (not the teacher-forced argmax).
        autocast_dtype: e.g. torch.bfloat16 to evaluate under CUDA autocast; log-softmax stays float32.
        mode: one of PROBE_MODES. "shared" falls back to "full" (with a warning) on a model that cannot continue
            from a key/value cache, or whose first shared batch differs from the full path; ``active_mode`` says
            which ran.
    """

    def __init__(self, probe_set: ProbeSet, tokenizer, policy: TruncationPolicy, *, batch_size: int = 16,
                 greedy_max_new_tokens: int = 0, autocast_dtype: torch.dtype | None = None, mode: str = "shared"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in PROBE_MODES:
            raise ValueError(f"probe mode must be one of {', '.join(PROBE_MODES)}; got {mode!r}")
        self.probe_set, self.batch_size, self.mode = probe_set, batch_size, mode
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
        self._plan_shared()
        self._use_head = True  # until the first batch shows the model's logits are not its head's output
        self.active_mode: str | None = None if mode == "shared" else "full"

    def _plan_shared(self) -> None:
        """Group the items by prompt (``llm.prefix.plan_groups``): prompts in length order, a few batches a group.

        ``groups`` lists (prompt ids, chunks): a chunk is up to ``batch_size`` (prompt row, item) pairs of the group,
        the group's responses sorted by length and cut where padding costs more than another forward pass;
        ``unshared`` are the items of prompts under 2 tokens (nothing to share).
        """
        by_prompt: dict[tuple[int, tuple[int, ...]], list[int]] = {}  # (prompt index, its tokens) -> items
        for k, (_, i, seq) in enumerate(self.items):
            by_prompt.setdefault((i, seq.prompt_ids), []).append(k)
        shared = [key for key in by_prompt if len(key[1]) >= 2]
        self.unshared = sorted((k for key in by_prompt if len(key[1]) < 2 for k in by_prompt[key]),
                               key=lambda k: self.items[k][2].length)
        plan = plan_groups([len(key[1]) for key in shared],
                           [[len(self.items[k][2].response_ids) for k in by_prompt[key]] for key in shared],
                           self.batch_size)
        self.groups: list[tuple[list[tuple[int, ...]], list[list[tuple[int, int]]]]] = [
            ([shared[g][1] for g in prompts], [[(row, by_prompt[shared[g]][r]) for row, g, r in c] for c in chunks])
            for prompts, chunks in plan]

    def work(self, mode: str) -> dict[str, int]:
        """Token positions the model runs in ``mode`` (padding included) and the real tokens among them.

        "full" counts every right-padded [prompt, response] batch; "shared" the padded prompt prefixes plus the
        padded [last prompt token, response] continuations.
        """
        if mode not in PROBE_MODES:
            raise ValueError(f"probe mode must be one of {', '.join(PROBE_MODES)}; got {mode!r}")
        full_order = self.order if mode == "full" else self.unshared
        padded = real = 0
        for start in range(0, len(full_order), self.batch_size):
            lengths = [self.items[k][2].length for k in full_order[start: start + self.batch_size]]
            padded, real = padded + len(lengths) * max(lengths), real + sum(lengths)
        if mode == "shared":
            for prompts, chunks in self.groups:
                for start in range(0, len(prompts), self.batch_size):  # prefix_forward's slices
                    lengths = [len(p) - 1 for p in prompts[start: start + self.batch_size]]
                    padded, real = padded + len(lengths) * max(lengths), real + sum(lengths)
                for chunk in chunks:
                    lengths = [1 + len(self.items[k][2].response_ids) for _, k in chunk]
                    padded, real = padded + len(lengths) * max(lengths), real + sum(lengths)
        return {"padded_positions": padded, "real_tokens": real}

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
                if self.active_mode != "full":
                    try:
                        self._shared(model, device, out)
                        self._full(model, device, out, self.unshared)
                        self.active_mode = "shared"
                    except SharingUnsupported as err:
                        warnings.warn(f"probe_mode 'shared' is not available for {type(model).__name__} ({err}); "
                                      "evaluating probes with probe_mode 'full'", RuntimeWarning, stacklevel=2)
                        self.active_mode = "full"
                if self.active_mode == "full":
                    self._full(model, device, out, self.order)
                if self.greedy_max_new_tokens > 0:
                    self._greedy(model, out[GREEDY_PROBE])
        finally:
            model.train(was_training)
        return ProbeResult(out)

    def _stats(self, scored) -> dict[str, np.ndarray]:
        return _to_numpy(response_statistics(*scored))

    def _full(self, model, device: torch.device, out, order: Sequence[int]) -> None:
        for start in range(0, len(order), self.batch_size):
            chunk = [self.items[k] for k in order[start: start + self.batch_size]]
            batch = collate([s for _, _, s in chunk], self.pad_token_id).to(device)
            stats = self._stats(response_logits(model, batch.input_ids, batch.attention_mask, batch.response_mask))
            for row, (probe, i, _) in enumerate(chunk):
                _store(out, probe, i, stats, row)

    def _shared(self, model, device: torch.device, out) -> None:
        head = head_path(model) if self._use_head else None  # the LM head on scored positions only
        for prompts, chunks in self.groups:
            try:
                prefix = prefix_forward(model, prompts, self.pad_token_id, self.batch_size)
            except TypeError as err:  # a forward without position_ids / use_cache / logits_to_keep
                raise SharingUnsupported(str(err)) from None
            for chunk in chunks:
                owners = [g for g, _ in chunk]
                responses = [self.items[k][2].response_ids for _, k in chunk]
                stats = self._continuation_stats(model, prefix, owners, responses, head)
                if self.active_mode is None:  # first batch on this evaluator: the full path must agree
                    checked = slice(-_SELF_CHECK_ROWS, None)  # the batch's longest responses
                    reference = self._reference_stats(model, device, [k for _, k in chunk[checked]])
                    stats_checked = {k: v[checked] for k, v in stats.items()}
                    if head is not None and not _agree(reference, stats_checked):
                        head = None  # logits post-processed beyond the head: score the model's own logits
                        self._use_head = False
                        stats = self._continuation_stats(model, prefix, owners, responses, head)
                        stats_checked = {k: v[checked] for k, v in stats.items()}
                    if not _agree(reference, stats_checked):
                        raise SharingUnsupported(f"its cached continuation differs from the full forward pass by "
                                                 f"{_difference(reference, stats_checked):.3g} nats on the first batch")
                    self.active_mode = "checking"
                for row, (_, k) in enumerate(chunk):
                    probe, i, _ = self.items[k]
                    _store(out, probe, i, stats, row)

    def _continuation_stats(self, model, prefix, owners, responses, head) -> dict[str, np.ndarray]:
        if head is None:
            return self._stats(continuation_logits(model, prefix, owners, responses, self.pad_token_id))
        hidden, ids, mask = continuation_hidden(model, prefix, owners, responses, self.pad_token_id)
        return _to_numpy(head_statistics(hidden, head, ids, mask))

    def _reference_stats(self, model, device: torch.device, index: list[int]) -> dict[str, np.ndarray] | None:
        """The full path's statistics of ``index`` (None under half precision: rounding exceeds the tolerance)."""
        autocast = self.autocast_dtype is not None and device.type == "cuda"
        if autocast or next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
            return None
        batch = collate([self.items[k][2] for k in index], self.pad_token_id).to(device)
        return self._stats(response_logits(model, batch.input_ids, batch.attention_mask, batch.response_mask))

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


def _to_numpy(stats: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.double().cpu().numpy() for k, v in stats.items()}


def _difference(reference: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> float:
    """Largest |logp_sum| difference; NaN where only one side is finite (a diverged model is NaN both ways)."""
    a, b = reference["logp_sum"], stats["logp_sum"]
    if not (np.isfinite(a) == np.isfinite(b)).all():
        return float("nan")
    finite = np.isfinite(a)
    return float(np.abs(a[finite] - b[finite]).max(initial=0.0))


def _agree(reference: dict[str, np.ndarray] | None, stats: dict[str, np.ndarray]) -> bool:
    return reference is None or _difference(reference, stats) <= _SELF_CHECK_TOL


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
            stats = _to_numpy(response_statistics(*response_logits(model, ids, None, resp)))
            _store(out, probe, i, stats, 0)
    model.train(was_training)
    return ProbeResult(out)
