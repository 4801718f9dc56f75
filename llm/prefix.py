"""Prompt sharing: run a prompt once, keep its key/value cache, and score all of its responses from that cache.

A prompt x with R responses y_1..y_R costs R (|x| + |y|) tokens when every [x, y_r] is a separate sequence, and
|x| + R |y| with sharing. The prompt minus its last token, x_<|x|, is the cached prefix (right-padded, one row per
prompt); each response row then runs [x_|x|, y_r] continuing from its prompt's cache rows, with explicit position ids
|x| - 1, |x|, ... and an attention mask [prefix mask, response mask] whose gaps (prefix padding) are zeros. Its logits
are laid out like ``llm.logps.response_logits`` of the single sequence [x_|x|, y_r], so every statistic of
``llm.logps`` applies unchanged and equals the full path's up to float32 summation order.

Attention is causal in the cached slots: the response tokens see their own prompt's tokens and their own earlier
tokens, never another row's or a padding slot. Gradients flow through the cache (DPO's policy forward).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Sequence

import torch

from llm.encoding import EncodedSequence, collate
from llm.logps import SequenceLogps, encoded_logps, logps_from_logits

__all__ = ["PrefixCache", "SharingUnsupported", "prefix_forward", "continuation_logits", "continuation_hidden",
           "head_path", "cache_keyword",
           "group_by_budget", "split_batches", "plan_groups", "GROUP_BATCHES", "shares_prompts", "shared_pair_logps", "sharing_problem"]


#: responses per cached prompt group, in batches: a larger group sorts its responses by length into fuller batches
#: (measured on the paper's HH probes: padded positions 3x the real ones with 1 batch, 1.15x with 4); the cache
#: holds one group's prompts, never a whole set's.
GROUP_BATCHES = 4
#: fixed cost of one forward pass in token positions, traded against padding when cutting a group into batches.
BATCH_OVERHEAD_POSITIONS = 256


class SharingUnsupported(RuntimeError):
    """The model cannot continue a batch from a key/value cache with explicit positions (use the full path)."""


@functools.lru_cache(maxsize=None)
def _forward_keyword(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    if "cache" in params:  # transformers >= 5.24 renamed past_key_values
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise SharingUnsupported(f"{forward_cls.__name__}.forward takes neither cache nor past_key_values")


def cache_keyword(model) -> str:
    """Name of the key/value-cache argument of ``model.forward`` ("cache" or "past_key_values")."""
    return _forward_keyword(type(model))


def _cache_of(output):
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or getattr(layers[0], "keys", None) is None:
        raise SharingUnsupported(f"the model returned no per-layer key/value cache (got {type(cache).__name__})")
    return cache


@dataclasses.dataclass(frozen=True)
class PrefixCache:
    """Key/value states of G right-padded prompt prefixes x_<|x| (every prompt's tokens but its last).

    Attributes:
        layers: per layer (keys, values), each (G, H, P, D) with P the longest prefix.
        mask: (G, P) 1 on prefix tokens, 0 on padding.
        lengths: (G,) prefix lengths |x| - 1 (the position id of each prompt's last token).
        last_tokens: (G,) the last token of each prompt.
        config: the model config (cache layer types: full or sliding attention).
    """

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    mask: torch.Tensor
    lengths: torch.Tensor
    last_tokens: torch.Tensor
    config: object

    def rows(self, index: torch.Tensor):
        """A fresh Cache holding the prefix rows ``index`` (N,), repeated as needed; the model extends it in place."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k[index], v[index]) for k, v in self.layers], config=self.config)


def prefix_forward(model, prompts: Sequence[Sequence[int]], pad_token_id: int,
                   batch_size: int | None = None) -> PrefixCache:
    """Run every prompt but its last token once, right-padded, and keep the key/value cache.

    Args:
        model: a Hugging Face causal LM (gradients flow when called outside ``torch.no_grad``).
        prompts: G token-id sequences, each of at least 2 tokens.
        pad_token_id: id written in padding slots (masked out).
        batch_size: prompts per forward pass (default: all G at once); the caches are joined, padded to the
            longest prefix.

    Raises:
        SharingUnsupported: the model returns no per-layer key/value cache.
    """
    if any(len(p) < 2 for p in prompts):
        raise ValueError("prompt sharing needs prompts of at least 2 tokens (shorter ones have nothing to share)")
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts) - 1
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)  # (G, P)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (G, P)
    for g, p in enumerate(prompts):
        ids[g, : len(p) - 1] = torch.tensor(p[:-1], dtype=torch.long)
        mask[g, : len(p) - 1] = 1
    ids, mask = ids.to(device), mask.to(device)
    step = batch_size or len(prompts)
    parts = []
    for start in range(0, len(prompts), step):
        sub = mask[start: start + step]
        cut = int(sub.sum(dim=1).max())  # this slice's longest prefix: no forward over common padding
        positions = torch.arange(cut, device=device).expand(sub.shape[0], cut)  # (g, P')
        out = model(input_ids=ids[start: start + step, :cut], attention_mask=sub[:, :cut], position_ids=positions,
                    use_cache=True, logits_to_keep=1)
        layers = [(layer.keys, layer.values) for layer in _cache_of(out).layers]
        if layers[0][0].shape[0] != sub.shape[0] or layers[0][0].shape[-2] != cut:
            raise SharingUnsupported(f"unexpected cache shape {tuple(layers[0][0].shape)} for {sub.shape[0]} "
                                     f"prefixes of {cut} tokens")
        parts.append([tuple(torch.nn.functional.pad(t, (0, 0, 0, width - cut)) for t in kv) for kv in layers])
    layers = tuple(parts[0]) if len(parts) == 1 else tuple(
        tuple(torch.cat([part[n][j] for part in parts]) for j in range(2)) for n in range(len(parts[0])))
    return PrefixCache(layers, mask, mask.sum(dim=1), torch.tensor([p[-1] for p in prompts], device=device),
                       model.config)


def _continuation_inputs(model, prefix: PrefixCache, owners: Sequence[int], responses: Sequence[Sequence[int]],
                         pad_token_id: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The forward arguments of N responses continuing from their prompts' cached prefixes, and ids, response mask."""
    device = prefix.mask.device
    index = torch.as_tensor(list(owners), dtype=torch.long, device=device)  # (N,)
    width = 1 + max(len(r) for r in responses)
    ids = torch.full((len(responses), width), pad_token_id, dtype=torch.long)  # (N, 1 + R)
    resp = torch.zeros((len(responses), width), dtype=torch.long)  # (N, 1 + R)
    for n, r in enumerate(responses):
        ids[n, 1: 1 + len(r)] = torch.tensor(r, dtype=torch.long)
        resp[n, 1: 1 + len(r)] = 1
    ids, resp = ids.to(device), resp.to(device)
    ids[:, 0] = prefix.last_tokens[index]
    seq_mask = resp.clone()
    seq_mask[:, 0] = 1
    attention = torch.cat([prefix.mask[index], seq_mask], dim=1)  # (N, P + 1 + R)
    positions = prefix.lengths[index, None] + torch.arange(width, device=device)  # (N, 1 + R)
    kwargs = {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "use_cache": True,
              cache_keyword(model): prefix.rows(index)}
    return kwargs, ids, resp


def continuation_logits(model, prefix: PrefixCache, owners: Sequence[int], responses: Sequence[Sequence[int]],
                        pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score N responses continuing from their prompts' cached prefixes.

    Args:
        model: the model that built ``prefix``.
        prefix: G cached prompt prefixes.
        owners: (N,) the prefix row (prompt) of each response.
        responses: N response token-id sequences (at least 1 token each).
        pad_token_id: id of right-padding slots.

    Returns:
        logits (N, 1 + R, V) of the sequences [x_|x|, y] (R the longest response) and their input_ids and
        response_mask (N, 1 + R), in the layout of ``llm.logps.response_logits``.
    """
    kwargs, ids, resp = _continuation_inputs(model, prefix, owners, responses, pad_token_id)
    return model(**kwargs).logits, ids, resp  # (N, 1 + R, V)


def head_path(model) -> torch.nn.Linear | None:
    """The output embedding when the model's logits are exactly ``head(base_model(...).last_hidden_state)``.

    None for a model without a separate base model or a linear head, or whose config names a logit post-processing
    (soft-capping, scaling); ``llm.probes`` also checks the first batch against the full path.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    if not isinstance(head, torch.nn.Linear) or getattr(model, "base_model", model) is model:
        return None
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in _LOGIT_POSTPROCESSING):
        return None
    return head


#: config fields of Hugging Face models whose logits are not the bare head output (Gemma 2/3, Cohere, Granite,
#: MiniCPM-style scaling).
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "dim_model_base")


def continuation_hidden(model, prefix: PrefixCache, owners: Sequence[int], responses: Sequence[Sequence[int]],
                        pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``continuation_logits`` without the LM head: the final hidden states (N, 1 + R, H), input_ids, response_mask.

    For ``llm.logps.head_statistics`` with ``head_path(model)``: the head then runs on the scored positions only.
    """
    base = model.base_model
    kwargs, ids, resp = _continuation_inputs(base, prefix, owners, responses, pad_token_id)
    return base(**kwargs).last_hidden_state, ids, resp


def split_batches(lengths: Sequence[int], max_rows: int, overhead: int) -> list[tuple[int, int]]:
    """Cut rows sorted by length into batches [start, end) minimising padded positions plus a cost per batch.

    Each batch of rows start..end-1 costs (end - start) * lengths[end - 1] positions (right padding to its longest
    row) plus ``overhead`` (a forward pass's fixed cost, in positions); at most ``max_rows`` rows per batch.
    Dynamic programming over the cut points, O(len(lengths) * max_rows).
    """
    if any(b < a for a, b in zip(lengths, lengths[1:])):
        raise ValueError("split_batches needs lengths sorted in increasing order")
    best, cut = [0] + [float("inf")] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * lengths[end - 1] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], len(lengths)
    while end > 0:
        batches.append((cut[end], end))
        end = cut[end]
    return batches[::-1]


def plan_groups(prompt_lengths: Sequence[int], response_lengths: Sequence[Sequence[int]], batch_size: int
                ) -> list[tuple[list[int], list[list[tuple[int, int, int]]]]]:
    """Plan shared-prompt evaluation: groups of prompts in length order and their batches of responses.

    Args:
        prompt_lengths: (G,) token counts of the prompts.
        response_lengths: per prompt, the token counts of its responses.
        batch_size: responses per continuation pass (at most).

    Returns:
        Per group: the prompt indices, and its batches of (row of the prompt in the group, prompt index, response
        index), about GROUP_BATCHES * batch_size responses a group, sorted by response length and cut by
        ``split_batches``.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda g: prompt_lengths[g])
    plan = []
    for members in group_by_budget([len(response_lengths[g]) for g in order], GROUP_BATCHES * batch_size):
        prompts = [order[m] for m in members]
        rows = sorted(((row, g, r) for row, g in enumerate(prompts) for r in range(len(response_lengths[g]))),
                      key=lambda t: response_lengths[t[1]][t[2]])
        cuts = split_batches([response_lengths[g][r] + 1 for _, g, r in rows], batch_size, BATCH_OVERHEAD_POSITIONS)
        plan.append((prompts, [rows[a:b] for a, b in cuts]))
    return plan


def group_by_budget(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Split consecutive items into groups whose ``sizes`` sum to at most ``budget`` (an item alone may exceed it)."""
    groups: list[list[int]] = []
    total = budget + 1
    for k, size in enumerate(sizes):
        if total + size > budget:
            groups.append([])
            total = 0
        groups[-1].append(k)
        total += size
    return groups


def shares_prompts(chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence]) -> bool:
    """True when every pair has the same prompt of at least 2 tokens in y+ and y- (prompt sharing applies)."""
    return all(c.prompt_ids == r.prompt_ids and len(c.prompt_ids) >= 2 for c, r in zip(chosen, rejected))


def shared_pair_logps(model, chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence],
                      pad_token_id: int) -> SequenceLogps:
    """Summed and mean log-probs of N chosen then N rejected responses, each prompt run once for its pair.

    Equals ``llm.logps.encoded_logps`` of the collated [chosen, rejected] batch (up to float32 rounding) with
    N (|x| - 1) + 2N (1 + |y|) tokens instead of 2N (|x| + |y|); gradients flow through the shared prompt.

    Returns:
        SequenceLogps of the 2N sequences, chosen first (``token_logps`` has the columns of [x_|x|, y]).
    """
    if len(chosen) != len(rejected) or not shares_prompts(chosen, rejected):
        raise ValueError("shared_pair_logps needs pairs whose y+ and y- have the same prompt of >= 2 tokens")
    prefix = prefix_forward(model, [c.prompt_ids for c in chosen], pad_token_id)
    owners = [*range(len(chosen)), *range(len(chosen))]
    responses = [c.response_ids for c in chosen] + [r.response_ids for r in rejected]
    return logps_from_logits(*continuation_logits(model, prefix, owners, responses, pad_token_id))


@torch.no_grad()
def sharing_problem(model, chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence],
                    pad_token_id: int, tol: float = 1e-3) -> str | None:
    """Why prompt sharing cannot serve ``model`` on these pairs (None when it can).

    Compares ``shared_pair_logps`` with the concatenated forward pass on the given pairs, in eval mode: a difference
    over ``tol`` nats is a reason (float32 or wider; half precision is only checked for running).
    """
    was_training = model.training
    model.eval()
    try:
        shared = shared_pair_logps(model, chosen, rejected, pad_token_id).summed
        full = encoded_logps(model, collate([*chosen, *rejected], pad_token_id)).summed
    except (SharingUnsupported, TypeError) as err:
        return str(err)
    finally:
        model.train(was_training)
    if next(model.parameters()).dtype in (torch.float16, torch.bfloat16):
        return None
    shared, full = shared.float(), full.float()
    finite = shared.isfinite() & full.isfinite()  # a diverged model is NaN both ways: not a reason to stop sharing
    diff = float((shared - full)[finite].abs().max()) if finite.any() else 0.0
    if not torch.equal(shared.isfinite(), full.isfinite()):
        diff = float("nan")
    return None if diff <= tol else f"its cached continuation differs from the full forward pass by {diff:.3g} nats"
