"""Functional log-probs of a causal LM and their directional derivatives (JVPs): the first-order toolkit.

The engine's explain attribution (``llm.explain``), the kernel forecast (``llm.forecast``) and the Prop. 1 check
(``llm.validation.prop1``) share these: ``summed_logps`` as a function of a parameter dict (torch.func-ready),
``observed_logps`` (the same plus the teacher-forced argmax rows), ``directional_changes`` (one forward-mode
product per direction: <grad_theta log pi(y_o | x_o), d> for every observed response, never one backward pass per
probe) and ``full_precision`` (float64 kept inside the modules that upcast to float32 on their own).

References: Ren & Sutherland, ICLR 2025, Proposition 1 (PAPER.md section 2, "cheap exact first-order form").
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import warnings
from typing import Iterator, Sequence

import torch
from torch.func import functional_call, jvp, vmap

from llm.encoding import EncodedBatch
from llm.logps import logps_from_logits, response_logits
from llm.prefix import SharingUnsupported, cache_keyword, continuation_logits, prefix_forward
from toykit.forward_ad import FORWARD_AD_LOCK

__all__ = ["summed_logps", "observed_logps", "batch_chunks", "directional_changes", "full_precision", "PromptGroups",
           "prompt_groups", "sharing_problem"]


def _response_logits(model: torch.nn.Module, params: dict[str, torch.Tensor], batch: EncodedBatch):
    """``llm.logps.response_logits`` at ``params``: logits (N, K, V) from the first position that predicts a
    response token (the LM head skips the prompt prefix), with their input_ids and response_mask columns (N, K)."""
    return response_logits(lambda **kw: functional_call(model, params, (), kw), batch.input_ids,
                           batch.attention_mask, batch.response_mask)


def summed_logps(model: torch.nn.Module, params: dict[str, torch.Tensor], batch: EncodedBatch) -> torch.Tensor:
    """Return (N,) log pi(y | x) SUMMED over response tokens, as a function of ``params`` (torch.func-ready).

    Math: sum_m log pi(y_m | x, y_<m), teacher forcing; position l predicts token l + 1.
    """
    return logps_from_logits(*_response_logits(model, params, batch)).summed  # the engine's one reduction


@dataclasses.dataclass(frozen=True)
class PromptGroups:
    """The rows of an EncodedBatch grouped by prompt: G distinct prompts, each row's prompt and response tokens."""

    prompts: list[list[int]]  # G prompts, >= 2 tokens each
    owners: list[int]  # (N,) the prompt of each row
    responses: list[list[int]]  # N responses


def prompt_groups(batch: EncodedBatch) -> PromptGroups | None:
    """Group the (right-padded) rows of ``batch`` by prompt; None when a prompt has under 2 tokens (nothing to share).
    """
    prompts, owners, responses, index = [], [], [], {}
    for ids, attention, response in zip(batch.input_ids.tolist(), batch.attention_mask.tolist(),
                                        batch.response_mask.tolist()):
        start, end = response.index(1), sum(attention)
        prompt = tuple(ids[:start])
        if len(prompt) < 2:
            return None
        owners.append(index.setdefault(prompt, len(index)))
        if owners[-1] == len(prompts):
            prompts.append(list(prompt))
        responses.append(ids[start:end])
    return PromptGroups(prompts, owners, responses)


class _Bound:
    """``model`` at the parameter dict ``params`` with the interface llm.prefix calls (config, parameters, kwargs)."""

    def __init__(self, model: torch.nn.Module, params: dict[str, torch.Tensor]):
        self.model, self.params, self.config = model, params, model.config

    def parameters(self):
        return iter(self.params.values())

    def __call__(self, **kwargs):
        return functional_call(self.model, self.params, (), kwargs)


class _BoundCache(_Bound):
    def forward(self, input_ids=None, cache=None, **kwargs):  # the signature llm.prefix.cache_keyword reads
        return self(input_ids=input_ids, cache=cache, **kwargs)


class _BoundPast(_Bound):
    def forward(self, input_ids=None, past_key_values=None, **kwargs):
        return self(input_ids=input_ids, past_key_values=past_key_values, **kwargs)


def _shared_logits(model: torch.nn.Module, params: dict[str, torch.Tensor], groups: PromptGroups, pad_token_id: int):
    """``llm.prefix`` continuation logits (N, 1 + R, V) of every row, each prompt run once, at ``params``."""
    bound = (_BoundCache if cache_keyword(model) == "cache" else _BoundPast)(model, params)
    prefix = prefix_forward(bound, groups.prompts, pad_token_id)
    return continuation_logits(bound, prefix, groups.owners, groups.responses, pad_token_id)


def observed_logps(model: torch.nn.Module, params: dict[str, torch.Tensor], batch: EncodedBatch,
                   argmax: torch.Tensor | None = None, groups: PromptGroups | None = None,
                   pad_token_id: int = 0) -> torch.Tensor:
    """Return (N,) summed log-probs; rows with ``argmax`` True score the TEACHER-FORCED argmax instead.

    Args:
        batch: (N, L) encoded (prompt, response) rows.
        argmax: (N,) bool; a True row gives sum_m log max_v pi(v | x, y_<m) along its response prefix.
        groups: ``prompt_groups(batch)`` to run each distinct prompt once (``llm.prefix``: its key/value cache
            continued by every response of it), or None for one sequence per row; equal up to float rounding.
        pad_token_id: the id of padding slots in the shared path.

    Math: the argmax rows' derivative is that of log pi(argmax token) at each position (Danskin: the maximiser is
    locally constant), so a JVP of this function is the first-order change of both probe kinds.
    """
    if groups is not None:
        logits, targets, response = _shared_logits(model, params, groups, pad_token_id)  # (N, 1 + R, ...)
    else:
        logits, targets, response = _response_logits(model, params, batch)  # (N, K, V), (N, K), (N, K)
    if argmax is not None and bool(argmax.any()):
        best = torch.cat([targets[:, :1], logits[:, :-1].detach().argmax(-1)], dim=1)  # (N, K): token l from z_{l-1}
        targets = torch.where(argmax.unsqueeze(1) & response.bool(), best, targets)
    return logps_from_logits(logits, targets, response).summed


def sharing_problem(model: torch.nn.Module, params: dict[str, torch.Tensor], batch: EncodedBatch,
                    argmax: torch.Tensor | None, pad_token_id: int, tol: float = 1e-3) -> str | None:
    """Why ``observed_logps`` cannot share the prompts of ``batch`` for ``model`` (None when it can): a prompt of
    under 2 tokens, a model without a usable key/value cache, or shared values off the full ones by over ``tol``."""
    groups = prompt_groups(batch)
    if groups is None:
        return "a prompt has under 2 tokens"
    try:
        with torch.no_grad():
            shared = observed_logps(model, params, batch, argmax, groups, pad_token_id)
            full = observed_logps(model, params, batch, argmax)
    except (SharingUnsupported, TypeError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    gap = float((shared - full).abs().max())
    return None if gap <= tol else f"shared log-probs differ from the full ones by {gap:.2e} nats"


def batch_chunks(batch: EncodedBatch, size: int, *extra: torch.Tensor | None) -> Iterator[tuple]:
    """Yield (chunk of ``batch``, matching rows of each ``extra`` tensor) of at most ``size`` rows."""
    for start in range(0, batch.input_ids.shape[0], size):
        sl = slice(start, start + size)
        part = EncodedBatch(batch.input_ids[sl], batch.attention_mask[sl], batch.response_mask[sl])
        yield (part, *[None if e is None else e[sl] for e in extra])


def directional_changes(model: torch.nn.Module, params: dict[str, torch.Tensor], observed: EncodedBatch,
                        directions: Sequence[dict[str, torch.Tensor]], argmax: torch.Tensor | None = None,
                        chunk_size: int = 256, share_prompts: bool = False, pad_token_id: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return log pi_o at ``params`` (N_o,) and <grad_theta log pi_o, d_k> for every direction d_k (K, N_o).

    The K JVPs of a chunk run as one vmapped forward-mode pass (the primal forward is not repeated per direction).
    With ``share_prompts`` each distinct prompt of a chunk runs once (``observed_logps`` with ``prompt_groups``;
    check ``sharing_problem`` first).

    Math: the first-order change of log pi(y_o | x_o) along a parameter change d is J_o d, one JVP per direction.
    References: PAPER.md section 2 (Prop. 1 without building the V x V x M x L kernel).
    """
    values, changes = [], []
    stacked = {n: torch.stack([d[n] for d in directions]) for n in params} if directions else None  # (K, ...)
    for part, rows in batch_chunks(observed, chunk_size, argmax):
        groups = prompt_groups(part) if share_prompts else None
        fn = lambda p: observed_logps(model, p, part, rows, groups, pad_token_id)  # noqa: E731
        if directions:
            # One forward-mode pass for all K directions (the primal is shared, the tangents batched).
            with warnings.catch_warnings(), FORWARD_AD_LOCK:  # forward-AD levels are process-wide: one at a time
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                value, tangents = vmap(lambda d: jvp(fn, (params,), (d,)), out_dims=(None, 0))(stacked)
        else:
            with torch.no_grad():
                value = fn(params)
            tangents = value.new_zeros((0, value.shape[0]))
        values.append(value.detach())
        changes.append(tangents.detach())
    return torch.cat(values), torch.cat(changes, dim=1)


def _rms_norm_same_dtype(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """RMSNorm (Llama/Qwen2 form) computed in the input's dtype instead of a float32 round trip."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def full_precision(model: torch.nn.Module):
    """Keep a float64 model in float64 inside the modules that upcast to float32 on their own.

    Llama-family models (Llama, Qwen2, ...) compute RMSNorm and the eager-attention softmax in float32 whatever the
    model dtype, a guard meant for half precision. In a float64 Prop. 1 check that adds a float32 rounding floor to
    the measured change, which the first-order prediction does not have, so the remainder stops shrinking like
    eta^2. Measured: the cpu validation preset with a Llama gave remainder slopes 1.77 / 1.68 (SFT / DPO) without this
    context and 2.01 / 2.00 with it (GPT-2 has no such upcasts); the gpu preset's 59M Llama, checked without it, gave
    r = 0.91 / 0.62 and a remainder floor of ~0.04. Inside the context (float64 models only; a no-op otherwise)
    RMSNorm modules and ``torch.nn.functional.softmax`` keep float64. The rotary tables stay float32 in
    transformers, but they do not depend on the parameters, so they cancel in the change.
    """
    if next(model.parameters()).dtype != torch.float64:
        yield
        return
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")
             and hasattr(m, "variance_epsilon") and hasattr(m, "weight")]
    softmax = torch.nn.functional.softmax

    def softmax_same_dtype(x, dim=None, _stacklevel=3, dtype=None):
        if dtype == torch.float32 and x.dtype == torch.float64:
            dtype = None
        return softmax(x, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    for m in norms:
        m.forward = types.MethodType(_rms_norm_same_dtype, m)
    torch.nn.functional.softmax = softmax_same_dtype
    try:
        yield
    finally:
        torch.nn.functional.softmax = softmax
        for m in norms:
            del m.forward
