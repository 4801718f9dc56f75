"""Token encoding of (prompt, response) sequences under a recorded truncation policy, and right-padded batches.

Prompt and response are encoded separately and concatenated, so the response mask marks exactly the response tokens
(no re-tokenisation across the boundary). ``response_mask[n, l] = 1`` when token l of sequence n is a response token,
i.e. a token whose log-probability pi(y_l | x, y_<l) is scored.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch

__all__ = ["TruncationPolicy", "EncodedSequence", "EncodedBatch", "encode_sequence", "collate", "truncation_report"]


@dataclasses.dataclass(frozen=True)
class TruncationPolicy:
    """How prompts and responses are cut to token budgets (the paper: prompt 256, total 512)."""

    max_prompt_tokens: int = 256
    max_response_tokens: int = 256
    prompt_overflow: Literal["error", "left_truncate"] = "error"
    append_eos: bool = True

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise ValueError(f"token budgets must be >= 1, got prompt {self.max_prompt_tokens}, "
                             f"response {self.max_response_tokens}")
        if self.prompt_overflow not in ("error", "left_truncate"):
            raise ValueError(f"prompt_overflow must be 'error' or 'left_truncate', got {self.prompt_overflow!r}")


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


def encode_sequence(tokenizer, prompt: str, response: str, policy: TruncationPolicy, where: str = "") -> EncodedSequence:
    """Encode ``prompt`` and ``response`` separately and apply ``policy``.

    The response keeps its first ``max_response_tokens`` tokens (eos appended first when ``policy.append_eos``);
    a prompt over ``max_prompt_tokens`` is refused (ValueError naming ``where``) or keeps its last tokens.
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if policy.append_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("policy.append_eos is set but the tokenizer has no eos token")
        response_ids.append(tokenizer.eos_token_id)
    if not response_ids:
        raise ValueError(f"{where}: response encodes to zero tokens" if where else "response encodes to zero tokens")
    prompt_truncated = len(prompt_ids) > policy.max_prompt_tokens
    if prompt_truncated:
        if policy.prompt_overflow == "error":
            raise ValueError(f"{where + ': ' if where else ''}prompt has {len(prompt_ids)} tokens, over the budget "
                             f"max_prompt_tokens={policy.max_prompt_tokens} (set prompt_overflow='left_truncate' "
                             "to keep its last tokens)")
        prompt_ids = prompt_ids[-policy.max_prompt_tokens:]
    response_truncated = len(response_ids) > policy.max_response_tokens
    response_ids = response_ids[: policy.max_response_tokens]
    return EncodedSequence(tuple(prompt_ids), tuple(response_ids), prompt_truncated, response_truncated)


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
