"""Sequence log-probabilities of causal LMs: the one gather-mask-sum used by training, the reference and the probes.

Log-softmax is taken in float32 whatever the model dtype. Logits at position l predict token l + 1, so the scored
positions are ``response_mask[:, 1:]``: a response token at position 0 (an empty prompt) cannot be scored.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from llm.encoding import EncodedBatch, EncodedSequence, collate

__all__ = ["SequenceLogps", "logps_from_logits", "sequence_logps", "encoded_logps", "response_logits",
           "response_statistics", "head_statistics", "greedy_decode", "greedy_statistics", "STATISTICS"]

#: per-response statistics of ``response_statistics``; "argmax" is the TEACHER-FORCED argmax along the scored prefix.
STATISTICS = ("logp_sum", "logp_mean", "argmax_logp_sum", "argmax_logp_mean", "entropy", "A_norm", "pi_minus_e_norm",
              "energy", "peakiness", "top1_share", "valley_share", "num_tokens")


@dataclasses.dataclass(frozen=True)
class SequenceLogps:
    """Log-probabilities of the response tokens of N sequences (float32).

    Attributes:
        summed: (N,) sum over response tokens of log pi(y_l | x, y_<l).
        mean: (N,) the same averaged over response tokens (per-token mean).
        token_logps: (N, K-1) per-token values, zero outside the response; the columns are the last K of the
            batch (``sequence_logps`` drops the prompt prefix shared by every row, K <= L).
        lengths: (N,) number of scored response tokens |y|.
    """

    summed: torch.Tensor
    mean: torch.Tensor
    token_logps: torch.Tensor
    lengths: torch.Tensor


def _check_shapes(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape or input_ids.shape != response_mask.shape:
        raise ValueError(f"expected logits (N, L, V) and input_ids / response_mask (N, L); got "
                         f"{tuple(logits.shape)}, {tuple(input_ids.shape)}, {tuple(response_mask.shape)}")


def _scored(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor):
    """Log-softmax at the scored positions only: prompts and padding never reach the softmax.

    Half-precision logits are upcast to float32; float32 and float64 keep their dtype (Prop. 1 checks run in float64).
    """
    _check_shapes(logits, input_ids, response_mask)
    mask = response_mask[:, 1:].bool()  # (N, L-1): logits at l predict token l + 1
    scored = logits[:, :-1][mask]  # (T, V), T scored tokens in the batch
    if scored.dtype in (torch.float16, torch.bfloat16):
        scored = scored.float()
    log_pi = torch.log_softmax(scored, dim=-1)  # (T, V)
    targets = input_ids[:, 1:][mask]  # (T,)
    owner = mask.nonzero()[:, 0]  # (T,) sequence of each scored token
    return log_pi, targets, mask, owner


def _per_sequence_sum(values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Sum (T,) per-token values into (N,) per-sequence totals."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, owner, values)


def logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> SequenceLogps:
    """Gather, mask and reduce the response-token log-probs from logits.

    Args:
        logits: (N, L, V) model logits (any float dtype).
        input_ids: (N, L) token ids.
        response_mask: (N, L) 1 on response tokens.

    Math: log pi(y | x) = sum_l log softmax(z_{l-1})[y_l] over response positions l (teacher forcing).
    References: PAPER.md section 6 (summed log-probs; per-token means avoid the length confound of section 7).
    """
    log_pi, targets, mask, owner = _scored(logits, input_ids, response_mask)
    values = log_pi.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (T,)
    token = torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)  # (N, L-1)
    lengths = mask.sum(dim=1).to(values.dtype)  # (N,)
    summed = token.sum(dim=1)
    return SequenceLogps(summed, summed / lengths.clamp_min(1.0), token, lengths)


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` and return logits only from the first position that predicts a response token.

    The LM head is the costliest layer on long prompts; ``logits_to_keep`` (supported by the Hugging Face causal
    LMs) skips it on the shared prompt prefix. Models without that argument get a full forward pass.

    Returns:
        logits (N, K, V) and the matching input_ids and response_mask columns (N, K), K <= L.
    """
    width = input_ids.shape[1]
    starts = torch.where(response_mask.any(dim=1), response_mask.float().argmax(dim=1), width)  # (N,)
    keep = width - max(int(starts.min()) - 1, 0)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=keep).logits  # (N, K, V)
    except TypeError:  # a model without logits_to_keep
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (N, L, V)
    cut = width - logits.shape[1]
    return logits, input_ids[:, cut:], response_mask[:, cut:]


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor) -> SequenceLogps:
    """Run ``model`` on a right-padded batch and return the summed, mean and per-token response log-probs.

    Args:
        model: a causal LM returning ``.logits`` of shape (N, L, V).
        input_ids, attention_mask, response_mask: (N, L).
    """
    return logps_from_logits(*response_logits(model, input_ids, attention_mask, response_mask))


#: elements of one block of ``response_statistics`` (scored positions x vocabulary): on a CPU the block stays in
#: cache between its passes (measured 1.2x faster than whole-batch passes); a GPU takes far larger blocks.
STAT_BLOCK_ELEMENTS = {"cpu": 2**21, "cuda": 2**26}


def _token_statistics(z: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token statistics of one block of logits z (T, V) with targets (T,); z is overwritten (shifted).

    The passes over the block are the fast ones (a max, a subtraction, one exp, and vectorised reductions): with
    z' = z - max z <= 0 and e = exp(z'), S = sum e, log pi(y) = z'_y - log S, ||pi||^2 = ||e||^2 / S^2 and
    H(pi) = log S - <e, z'> / S. The shift keeps log-probs and entropy free of cancellation (logits of real models
    sit far from 0); y is a top-1 token when z'_y = 0, i.e. it attains the max (ties count).
    """
    z.sub_(z.amax(dim=-1, keepdim=True))  # (T, V) z - max z <= 0, the max exactly 0
    e = z.exp()  # (T, V)
    total = e.sum(dim=-1)  # (T,) S >= 1
    lse = total.log()  # (T,) log sum_v exp(z_v - max z)
    zy = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (T,)
    return {"logp": zy - lse, "argmax_logp": -lse, "entropy": lse - torch.linalg.vecdot(e, z) / total,
            "peakiness": (torch.linalg.vector_norm(e, dim=-1) / total) ** 2, "top1": (zy == 0).to(z.dtype)}


def response_statistics(logits: torch.Tensor, input_ids: torch.Tensor,
                        response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-response learning-dynamics statistics, each (N,) float32 (names in STATISTICS).

    Per scored token with pi = softmax(z) and target y: log pi(y) (summed and mean); the teacher-forced argmax
    log max_v pi(v | x, y_<l) along THIS response's prefix (summed and mean); the entropy of pi; A_norm = ||A||_F
    with A = I - 1 pi^T, i.e. sqrt(V - 2 + V ||pi||^2); pi_minus_e_norm = ||pi - e_y||; the energy 1 - pi(y);
    the peakiness ||pi||^2 = sum_v pi_v^2 (1 for a one-hot pi, 1/V for a uniform one: what squeezing raises);
    top1_share, the share of tokens whose target y attains the max of pi (a "peak" token; a tie counts);
    valley_share, the share whose pi(y) is below the uniform 1/V (a "valley" token). Those seven are means over the
    response tokens; num_tokens is |y|. The scored positions are taken in blocks of STAT_BLOCK_ELEMENTS (``_token_statistics``).

    Math: ||I - 1 pi^T||_F^2 = sum_i [(1 - pi_i)^2 + sum_{j != i} pi_j^2] = V - 2 + V ||pi||^2;
        H(pi) = log sum_v exp z_v - sum_v pi_v z_v (z shifted by its max: no cancellation).
    References: PAPER.md section 6 (probes, the two "argmax"); NOTICE.md (A_o, p_e and energy of the paper's logs).
    """
    _check_shapes(logits, input_ids, response_mask)
    n, width, vocab = logits.shape
    flat = logits.reshape(n * width, vocab)  # (N L, V), a view of contiguous logits
    return _reduce_statistics(lambda rows: flat.index_select(0, rows), vocab, logits.dtype, input_ids, response_mask)


def head_statistics(hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor,
                    response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``response_statistics`` from last hidden states: the LM head runs on the scored positions only, per block.

    The (N, L, V) logits are never formed (a block of STAT_BLOCK_ELEMENTS at a time), so padding and the positions
    that predict no response token cost no LM head, and memory stays O(block) whatever the vocabulary.

    Args:
        hidden: (N, L, H) the final (normed) hidden states, e.g. ``model.base_model(...).last_hidden_state``.
        head: the output embedding, z = head(h) (``model.get_output_embeddings()``; a model that post-processes
            its logits, e.g. soft-capping, needs ``response_statistics`` of its own logits instead).
        input_ids, response_mask: (N, L).
    """
    if hidden.dim() != 3 or hidden.shape[:2] != input_ids.shape or input_ids.shape != response_mask.shape:
        raise ValueError(f"expected hidden (N, L, H) and input_ids / response_mask (N, L); got "
                         f"{tuple(hidden.shape)}, {tuple(input_ids.shape)}, {tuple(response_mask.shape)}")
    n, width, size = hidden.shape
    flat = hidden.reshape(n * width, size)  # (N L, H)
    vocab = head.weight.shape[0]
    return _reduce_statistics(lambda rows: head(flat.index_select(0, rows)), vocab, head.weight.dtype, input_ids,
                              response_mask)


def _reduce_statistics(block_logits, vocab: int, dtype: torch.dtype, input_ids: torch.Tensor,
                       response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """STATISTICS of every response from ``block_logits(rows)``: the (B, V) logits of rows n L + l of the batch."""
    n, width = input_ids.shape
    mask = response_mask[:, 1:].bool()  # (N, L-1): logits at l predict token l + 1
    where = mask.nonzero()  # (T, 2) (sequence, position) of every scored token
    owner = where[:, 0]  # (T,)
    rows = owner * width + where[:, 1]  # (T,) rows of the flattened (N L, .) batch
    targets = input_ids[:, 1:][mask]  # (T,)
    dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    block = max(16, STAT_BLOCK_ELEMENTS.get(input_ids.device.type, 2**26) // vocab)
    parts = [_token_statistics(block_logits(rows[s: s + block]).to(dtype), targets[s: s + block])
             for s in range(0, rows.shape[0], block)]
    tok = {k: torch.cat([p[k] for p in parts]) if parts else torch.zeros(0, dtype=dtype, device=input_ids.device)
           for k in ("logp", "argmax_logp", "entropy", "peakiness", "top1")}
    pi_y, sq = tok["logp"].exp(), tok["peakiness"]
    per_token = {
        "entropy": tok["entropy"],
        "A_norm": torch.sqrt((vocab - 2 + vocab * sq).clamp_min(0.0)),
        "pi_minus_e_norm": torch.sqrt((sq - 2 * pi_y + 1).clamp_min(0.0)),
        "energy": 1 - pi_y,
        "peakiness": sq,
        "top1_share": tok["top1"],
        "valley_share": (pi_y < 1.0 / vocab).to(dtype),
    }
    lengths = mask.sum(1).to(torch.float32)  # (N,)
    denom = lengths.clamp_min(1.0)
    logp_sum = _per_sequence_sum(tok["logp"], owner, n)
    argmax_sum = _per_sequence_sum(tok["argmax_logp"], owner, n)
    nan = torch.full_like(lengths, float("nan"))
    empty = lengths == 0
    out = {"logp_sum": logp_sum, "logp_mean": logp_sum / denom, "argmax_logp_sum": argmax_sum,
           "argmax_logp_mean": argmax_sum / denom}
    for name, values in per_token.items():
        out[name] = _per_sequence_sum(values, owner, n) / denom
    out = {k: torch.where(empty, nan, v) for k, v in out.items()}
    out["num_tokens"] = lengths
    return {k: out[k] for k in STATISTICS}


def _greedy_sequences(model, prompts: Sequence[EncodedSequence], max_new_tokens: int, pad_token_id: int,
                      eos_token_id: int | None) -> list[EncodedSequence]:
    """Free-running greedy continuations of left-padded prompts, each cut after its first eos (kept)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    width = max(len(p.prompt_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)  # (N, L_prompt) left-padded
    attn = torch.zeros_like(ids)
    for n, p in enumerate(prompts):
        ids[n, width - len(p.prompt_ids):] = torch.tensor(p.prompt_ids, dtype=torch.long)
        attn[n, width - len(p.prompt_ids):] = 1
    out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                         eos_token_id=eos_token_id, num_beams=1)
    decoded = []
    for p, toks in zip(prompts, out[:, width:].tolist()):
        if eos_token_id is not None and eos_token_id in toks:
            toks = toks[: toks.index(eos_token_id) + 1]
        decoded.append(EncodedSequence(p.prompt_ids, tuple(toks), False, False))
    return decoded


@torch.no_grad()
def greedy_decode(model, prompts: Sequence[EncodedSequence], *, max_new_tokens: int, pad_token_id: int,
                  eos_token_id: int | None) -> tuple[list[EncodedSequence], SequenceLogps]:
    """Decode greedily (free-running argmax, no teacher forcing) from each prompt and score the result.

    Prompts are left-padded for ``model.generate``; each continuation is cut after its first eos (kept: a model
    whose argmax is eos at once gets the one-token response [eos]). The returned
    sequences are re-scored right-padded with ``sequence_logps``, giving the model's own log-prob of its greedy
    response (summed and mean). This is NOT the teacher-forced argmax of ``response_statistics``.

    Returns:
        The decoded [prompt, greedy response] sequences and their SequenceLogps ((N,) each).
    """
    decoded = _greedy_sequences(model, prompts, max_new_tokens, pad_token_id, eos_token_id)
    batch = collate(decoded, pad_token_id).to(next(model.parameters()).device)
    return decoded, sequence_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask)


@torch.no_grad()
def greedy_statistics(model, prompts: Sequence[EncodedSequence], *, max_new_tokens: int, pad_token_id: int,
                      eos_token_id: int | None) -> tuple[list[EncodedSequence], dict[str, torch.Tensor]]:
    """``greedy_decode``, but the greedy responses get every ``response_statistics`` (one forward pass).

    Along the model's own greedy response the target is the argmax at every position (so top1_share is 1 up to
    ties), and its entropy and peakiness say how sharp the free-running distribution is: the squeezing effect of
    PAPER.md section 5 raises the peakiness along the greedy response.

    Returns:
        The decoded sequences and a dict statistic -> (N,) tensor (names in STATISTICS).
    """
    decoded = _greedy_sequences(model, prompts, max_new_tokens, pad_token_id, eos_token_id)
    batch = collate(decoded, pad_token_id).to(next(model.parameters()).device)
    return decoded, response_statistics(*response_logits(model, batch.input_ids, batch.attention_mask,
                                                         batch.response_mask))


def encoded_logps(model, batch: EncodedBatch) -> SequenceLogps:
    """``sequence_logps`` of an EncodedBatch (moved to the model's device)."""
    batch = batch.to(next(model.parameters()).device)
    return sequence_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask)
