"""Token encoding of (prompt, response) sequences under a recorded truncation policy, and right-padded batches.

Prompt and response are encoded separately and concatenated, so the response mask marks exactly the response tokens
(no re-tokenisation across the boundary). ``response_mask[n, l] = 1`` when token l of sequence n is a response token,
i.e. a token whose log-probability pi(y_l | x, y_<l) is scored.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch

__all__ = ["TruncationPolicy", "EncodedSequence", "EncodedBatch", "encode_sequence", "encode_record", "collate",
           "truncation_report", "PROMPT_OVERFLOW"]

#: what a prompt over its budget does: refused, keeps its last tokens (HH in the paper), or keeps its first tokens
#: (UltraFeedback in the paper).
PROMPT_OVERFLOW = ("error", "left_truncate", "right_truncate")


@dataclasses.dataclass(frozen=True)
class TruncationPolicy:
    """How prompts and responses are cut to token budgets (the paper: prompt 256, total 512).

    Without ``max_total_tokens`` a prompt over ``max_prompt_tokens`` overflows and a response keeps its first
    ``max_response_tokens``. With it, the paper's rule (its ``tokenize_batch_element``) applies per record (a prompt
    and all its responses): only when prompt + the record's longest response exceed ``max_total_tokens`` is the prompt
    cut to ``max_prompt_tokens``; if still too long, every response keeps its first ``max_total_tokens - prompt``.
    """

    max_prompt_tokens: int = 256
    max_response_tokens: int = 256
    prompt_overflow: Literal["error", "left_truncate", "right_truncate"] = "error"
    append_eos: bool = True
    max_total_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError(f"token budgets must be >= 1, got prompt {self.max_prompt_tokens}, "
                             f"response {self.max_response_tokens}")
        if self.prompt_overflow not in PROMPT_OVERFLOW:
            raise ValueError(f"prompt_overflow must be one of {PROMPT_OVERFLOW}, got {self.prompt_overflow!r}")
        if self.max_total_tokens is not None and self.max_total_tokens <= self.max_prompt_tokens:
            raise ValueError(f"max_total_tokens ({self.max_total_tokens}) must exceed max_prompt_tokens "
                             f"({self.max_prompt_tokens}) so that a response keeps at least one token")


@dataclasses.dataclass(frozen=True)
class EncodedSequence:
    """Token ids of one [prompt, response] sequence and what truncation did to it."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    prompt_truncated: bool
    response_truncated: bool

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclasses.dataclass(frozen=True)
class EncodedBatch:
    """Right-padded batch: input_ids, attention_mask, response_mask all (N, L); lengths (N,) response tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> "EncodedBatch":
        return EncodedBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


def _tokens(tokenizer, response: str, policy: TruncationPolicy, where: str) -> list[int]:
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if policy.append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("policy.append_eos is set but the tokenizer has no eos token")
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError(f"{where}: response encodes to zero tokens" if where else "response encodes to zero tokens")
    return ids


def _cut_prompt(prompt_ids: list[int], policy: TruncationPolicy, where: str) -> list[int]:
    if policy.prompt_overflow == "error":
        raise ValueError(f"{where + ': ' if where else ''}prompt has {len(prompt_ids)} tokens, over the budget "
                         f"max_prompt_tokens={policy.max_prompt_tokens} (set prompt_overflow='left_truncate' "
                         "to keep its last tokens, 'right_truncate' to keep its first)")
    if policy.prompt_overflow == "left_truncate":
        return prompt_ids[-policy.max_prompt_tokens:]
    return prompt_ids[: policy.max_prompt_tokens]


def _encode(prompt_ids: list[int], responses: list[list[int]], policy: TruncationPolicy,
            where: str) -> list[EncodedSequence]:
    """Apply ``policy`` to one prompt and the token ids of its responses (eos already appended)."""
    prompt_cut = list(prompt_ids)
    limit = policy.max_response_tokens
    if policy.max_total_tokens is None:
        if len(prompt_cut) > policy.max_prompt_tokens:
            prompt_cut = _cut_prompt(prompt_cut, policy, where)
    else:  # the paper's rule: cut only when the record's longest sequence overflows the total budget
        longest = max(len(r) for r in responses)
        if len(prompt_cut) + longest > policy.max_total_tokens and len(prompt_cut) > policy.max_prompt_tokens:
            prompt_cut = _cut_prompt(prompt_cut, policy, where)
        limit = min(limit, policy.max_total_tokens - len(prompt_cut))
    prompt_truncated = len(prompt_cut) < len(prompt_ids)
    return [EncodedSequence(tuple(prompt_cut), tuple(r[:limit]), prompt_truncated, len(r) > limit)
            for r in responses]


def encode_sequence(tokenizer, prompt: str, response: str, policy: TruncationPolicy, where: str = "") -> EncodedSequence:
    """Encode ``prompt`` and ``response`` separately and apply ``policy``.

    The response keeps its first ``max_response_tokens`` tokens (eos appended first when ``policy.append_eos``);
    a prompt over ``max_prompt_tokens`` is refused (ValueError naming ``where``) or keeps its last (first) tokens.
    Under ``policy.max_total_tokens`` the response is its own record (see ``encode_record``).
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return _encode(prompt_ids, [_tokens(tokenizer, response, policy, where)], policy, where)[0]


def encode_record(tokenizer, prompt: str, responses: Sequence[str], policy: TruncationPolicy,
                  where: str = "") -> list[EncodedSequence]:
    """Encode one prompt with all its responses (y+, y-, or every probe type), cutting them as one record.

    Without ``policy.max_total_tokens`` this equals ``encode_sequence`` on each response; with it, the prompt is cut
    the same way for every response, from the record's longest one (the paper's rule).
    """
    if not responses:
        raise ValueError(f"{where}: a record needs at least one response" if where else "no responses to encode")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return _encode(prompt_ids, [_tokens(tokenizer, r, policy, where) for r in responses], policy, where)


def collate(sequences: Sequence[EncodedSequence], pad_token_id: int) -> EncodedBatch:
    """Right-pad ``sequences`` into an EncodedBatch of shape (N, L) with L the longest sequence."""
    if not sequences:
        raise ValueError("cannot collate an empty list of sequences")
    width = max(s.length for s in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)  # (N, L)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)  # (N, L)
    resp = torch.zeros((len(sequences), width), dtype=torch.long)  # (N, L)
    for n, s in enumerate(sequences):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[n, : p + r] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attn[n, : p + r] = 1
        resp[n, p: p + r] = 1
    return EncodedBatch(ids, attn, resp)


def truncation_report(sequences: Sequence[EncodedSequence], policy: TruncationPolicy) -> dict:
    """Return the policy and how many prompts / responses it truncated, for the run record."""
    return {**dataclasses.asdict(policy), "num_sequences": len(sequences),
            "prompts_truncated": sum(s.prompt_truncated for s in sequences),
            "responses_truncated": sum(s.response_truncated for s in sequences),
            "max_length": max((s.length for s in sequences), default=0)}
