"""Training objectives on causal LMs: the toykit loss registry applied to summed sequence log-probs.

One forward pass scores chosen and rejected responses together (as TRL's concatenated forward), or, with prompt
sharing, one pass runs each pair's prompt once and y+ and y- continue from its key/value cache (``llm.prefix``;
the same log-probs to float32 rounding, N |x| fewer tokens per batch of N pairs). The loss comes from
``toykit.losses.compute_loss`` by name; "extend" is the paper's fix (Figure 5): SFT on both [x, y+] and [x, y-].
Reference log-probs are computed once for the whole dataset (the reference model never changes), or by a forward
pass of a frozen copy every step when asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Sequence

import torch

from llm.encoding import EncodedSequence, collate
from llm.logps import SequenceLogps, encoded_logps, logps_from_logits
from llm.prefix import (continuation_logits, plan_groups, prefix_forward, shared_pair_logps, shares_prompts,
                        sharing_problem)
from toykit.losses import compute_loss, compute_nll_term, get_loss, loss_names

__all__ = ["EXTEND", "NLL_PART", "Objective", "PairBatch", "make_pair_batch", "batch_loss", "precompute_reference_logps",
           "trl_metrics", "NonFiniteLossError", "autocast_context", "resolve_prompt_sharing"]

#: SFT on y+ and y- (the "extend" of the paper's section 5); not a registry loss, a choice of targets for "sft".
EXTEND = "extend"
#: batch_loss's per-example NLL term on y+ (rpo, orpo), and the key of its gradient in llm.hooks.ResponseSplit
NLL_PART = "nll_chosen"


class NonFiniteLossError(RuntimeError):
    """Raised when a training log-prob or loss is NaN or infinite; the run keeps what it wrote."""


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a training step optimises: a registry loss name (or "extend") and its hyperparameters."""

    loss: str
    hparams: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss != EXTEND:
            get_loss(self.loss)  # ValueError listing the known names

    @property
    def registry_name(self) -> str:
        return "sft" if self.loss == EXTEND else self.loss

    @property
    def needs_rejected(self) -> bool:
        return self.loss == EXTEND or get_loss(self.loss).paired

    @property
    def needs_reference(self) -> bool:
        return self.loss != EXTEND and get_loss(self.loss).uses_reference

    @property
    def has_nll_term(self) -> bool:
        """Whether the loss adds an NLL term on y+ to a preference term (``toykit.losses.LossSpec.nll``)."""
        return self.loss != EXTEND and get_loss(self.loss).nll is not None

    @property
    def beta(self) -> float:
        """beta of the implicit reward beta (log pi - log pi_ref) reported as rewards/* (TRL's convention)."""
        return float(self.hparams.get("beta", get_loss(self.registry_name).defaults.get("beta", 0.1)))

    @staticmethod
    def known() -> list[str]:
        return [*loss_names(), EXTEND]


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """A batch of N pairs: indices (N,) into the dataset, and chosen (+ rejected) sequences concatenated (2N, L)."""

    indices: torch.Tensor
    sequences: object  # EncodedBatch of the N chosen then (optionally) N rejected sequences
    paired: bool
    #: (chosen, rejected) EncodedSequences when their prompts are shared in the forward pass, else None
    shared: tuple[tuple[EncodedSequence, ...], tuple[EncodedSequence, ...]] | None = None
    pad_token_id: int = 0


def make_pair_batch(indices: Sequence[int], chosen: Sequence[EncodedSequence],
                    rejected: Sequence[EncodedSequence] | None, pad_token_id: int, *,
                    share_prompts: bool = False) -> PairBatch:
    """Collate the chosen (and rejected) sequences of ``indices`` into one right-padded batch.

    With ``share_prompts`` a paired batch whose y+ and y- share their prompts (>= 2 tokens) is scored by running
    each prompt once (``llm.prefix.shared_pair_logps``); other batches keep the concatenated forward pass.
    """
    seqs = [chosen[i] for i in indices] + ([rejected[i] for i in indices] if rejected is not None else [])
    shared = None
    if share_prompts and rejected is not None:
        c, r = tuple(chosen[i] for i in indices), tuple(rejected[i] for i in indices)
        shared = (c, r) if shares_prompts(c, r) else None
    return PairBatch(torch.as_tensor(list(indices), dtype=torch.long), collate(seqs, pad_token_id),
                     rejected is not None, shared, pad_token_id)


def resolve_prompt_sharing(model, chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence] | None,
                           pad_token_id: int, requested: bool, min_prompt_tokens: int = 0) -> bool:
    """Whether to share prompts in this run: asked for, paired, prompts of at least ``min_prompt_tokens`` on average
    (shorter ones do not pay for the second forward call), and checked on the model (a warning when it cannot).

    The check scores the first two pairs that share a prompt both ways (``llm.prefix.sharing_problem``) in eval
    mode, so it changes neither the weights nor any random state.
    """
    if not requested or rejected is None or not chosen:
        return False
    if sum(len(c.prompt_ids) for c in chosen) < min_prompt_tokens * len(chosen):
        return False
    sample = [i for i in range(len(chosen)) if shares_prompts([chosen[i]], [rejected[i]])][:2]
    if not sample:
        return False
    problem = sharing_problem(model, [chosen[i] for i in sample], [rejected[i] for i in sample], pad_token_id)
    if problem is not None:
        warnings.warn(f"share_prompts is not available for {type(model).__name__} ({problem}); scoring y+ and y- "
                      "as separate sequences", RuntimeWarning, stacklevel=2)
    return problem is None


def _batch_logps(model, batch: PairBatch, separate: bool = False) -> SequenceLogps:
    if separate and batch.paired:  # y+ rows and y- rows in two forward passes: two autograd graphs
        n, seqs = len(batch.indices), batch.sequences
        halves = []
        for rows in (slice(0, n), slice(n, None)):
            width = int(seqs.attention_mask[rows].sum(dim=1).max())  # right-padded: drop the all-padding columns
            halves.append(encoded_logps(model, type(seqs)(seqs.input_ids[rows, :width],
                                                          seqs.attention_mask[rows, :width],
                                                          seqs.response_mask[rows, :width])))
        cols = max(h.token_logps.shape[1] for h in halves)  # token columns are the last ones: pad on the left
        token = torch.cat([torch.nn.functional.pad(h.token_logps, (cols - h.token_logps.shape[1], 0)) for h in halves])
        return SequenceLogps(torch.cat([h.summed for h in halves]), torch.cat([h.mean for h in halves]), token,
                             torch.cat([h.lengths for h in halves]))
    if batch.shared is None:
        return encoded_logps(model, batch.sequences)
    return shared_pair_logps(model, *batch.shared, batch.pad_token_id)


def autocast_context(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; log-softmax is taken in float32 regardless."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _split(values: torch.Tensor, paired: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not paired:
        return values, None
    n = values.shape[0] // 2
    return values[:n], values[n:]


@torch.no_grad()
def _reference_of(ref_model, batch: PairBatch, bf16: bool):
    device = next(ref_model.parameters()).device
    with autocast_context(device, bf16):
        lp = _batch_logps(ref_model, batch)
    return _split(lp.summed, batch.paired)


def batch_loss(model, batch: PairBatch, objective: Objective, *, ref_chosen: torch.Tensor | None = None,
               ref_rejected: torch.Tensor | None = None, ref_model=None, bf16: bool = False, separate: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example loss of one batch and the tensors behind the TRL metrics.

    Args:
        model: the policy (gradients flow through its forward pass).
        batch: N pairs (chosen then rejected sequences when the objective needs y-).
        objective: loss name and hyperparameters.
        ref_chosen, ref_rejected: (N,) precomputed reference summed log-probs, or None with ``ref_model``.
        ref_model: a frozen reference scored now (the per-step option), used when the precomputed ones are None.
        bf16: CUDA bf16 autocast for the forward passes.
        separate: score the chosen and the rejected rows in two forward passes (no prompt sharing), so that the
            gradient through each can be taken by its own backward pass at the cost of one in all (llm.hooks).

    Returns:
        losses (N,) and a dict with logps_chosen, logps_rejected, ref_chosen, ref_rejected (N,) or None, and
        nll_chosen (N,): the loss's NLL term on y+ (a part of losses) for losses with one (rpo, orpo), else None.

    Raises:
        NonFiniteLossError: NaN or infinite log-probs or loss.
    """
    device = next(model.parameters()).device
    with autocast_context(device, bf16):
        lp = _batch_logps(model, batch, separate)
    lp_c, lp_r = _split(lp.summed, batch.paired)
    len_c, len_r = _split(lp.lengths, batch.paired)
    if not bool(torch.isfinite(lp.summed).all()):
        raise NonFiniteLossError("the policy's log-probs are NaN or infinite (diverged weights or inputs)")
    if objective.needs_reference and ref_chosen is None:
        if ref_model is None:
            raise ValueError(f"loss {objective.loss!r} needs reference log-probs or a reference model")
        ref_chosen, ref_rejected = _reference_of(ref_model, batch, bf16)
    if ref_chosen is not None:
        ref_chosen = ref_chosen.to(lp_c)
        ref_rejected = ref_rejected.to(lp_c) if ref_rejected is not None else None
    if objective.loss == EXTEND:
        losses = 0.5 * (compute_loss("sft", chosen_logps=lp_c, chosen_lengths=len_c)
                        + compute_loss("sft", chosen_logps=lp_r, chosen_lengths=len_r))
    else:
        kwargs = {"chosen_logps": lp_c, "chosen_lengths": len_c}
        if batch.paired:
            kwargs.update(rejected_logps=lp_r, rejected_lengths=len_r)
        if objective.needs_reference:
            kwargs.update(ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
        losses = compute_loss(objective.loss, **kwargs, **objective.hparams)
    # the loss's NLL term on y+ alone, a part of losses (rpo, orpo): the attribution splits its gradient out
    nll = compute_nll_term(objective.loss, **kwargs, **objective.hparams) if objective.has_nll_term else None
    if not bool(torch.isfinite(losses).all()):
        raise NonFiniteLossError(f"loss {objective.loss!r} is NaN or infinite")
    return losses, {"logps_chosen": lp_c, "logps_rejected": lp_r, "ref_chosen": ref_chosen,
                    "ref_rejected": ref_rejected, NLL_PART: nll}


@torch.no_grad()
def precompute_reference_logps(model, chosen: Sequence[EncodedSequence], rejected: Sequence[EncodedSequence] | None,
                               pad_token_id: int, *, batch_size: int = 16, bf16: bool = False,
                               share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Score every chosen (and rejected) sequence once with the reference ``model``, in length-sorted batches.

    With ``share_prompts`` (and y+, y- of each pair sharing a prompt of >= 2 tokens) each prompt runs once for its
    pair, in the groups and length-sorted batches of ``llm.prefix.plan_groups`` (as the probes).

    Returns:
        (N,) float32 summed reference log-probs of y+ and of y- (None without ``rejected``), on the CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    if share_prompts and rejected is not None and shares_prompts(chosen, rejected):
        values = torch.empty((2, len(chosen)), dtype=torch.float32)  # (2, N): y+ then y-
        pairs = [(c.response_ids, r.response_ids) for c, r in zip(chosen, rejected)]
        for prompts, batches in plan_groups([len(c.prompt_ids) for c in chosen],
                                            [[len(c), len(r)] for c, r in pairs], batch_size):
            with autocast_context(device, bf16):
                prefix = prefix_forward(model, [chosen[i].prompt_ids for i in prompts], pad_token_id, batch_size)
                for rows in batches:
                    lp = logps_from_logits(*continuation_logits(model, prefix, [row for row, _, _ in rows],
                                                                [pairs[i][j] for _, i, j in rows], pad_token_id))
                    values[[j for _, _, j in rows], [i for _, i, _ in rows]] = lp.summed.float().cpu()
        model.train(was_training)
        return values[0], values[1]
    for seqs in (chosen, rejected):
        if seqs is None:
            out.append(None)
            continue
        values = torch.empty(len(seqs), dtype=torch.float32)
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].length)
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            with autocast_context(device, bf16):
                values[idx] = encoded_logps(model, collate([seqs[i] for i in idx], pad_token_id)).summed.float().cpu()
        out.append(values)
    model.train(was_training)
    return out[0], out[1]


#: relative float32 rounding allowed in a reward margin before rewards/accuracies counts it (see trl_metrics).
MARGIN_TOLERANCE = 1e-5


def trl_metrics(losses: torch.Tensor, parts: dict[str, torch.Tensor | None], beta: float) -> dict[str, float]:
    """Batch means under TRL's names: loss, logps/*, and rewards/* = beta (log pi - log pi_ref) when a reference exists.

    rewards/accuracies is the share of pairs whose margin beta [(log pi - log pi_ref)(y+) - (log pi - log pi_ref)(y-)]
    exceeds a float32 rounding tolerance, beta * MARGIN_TOLERANCE * (|log pi(y+)| + |log pi(y-)|) (summed log-probs).
    The precomputed reference scores each sequence in other batches (other padding, other reduction order) than
    the policy's training forward, so while policy = reference (the first step) the log-ratios are 0 only up to a
    few ULPs; the tolerance makes that step read accuracy 0 instead of counting rounding noise as wins.
    """
    out = {"loss": float(losses.mean()), "logps/chosen": float(parts["logps_chosen"].mean())}
    if parts["logps_rejected"] is not None:
        out["logps/rejected"] = float(parts["logps_rejected"].mean())
    if parts["ref_chosen"] is not None and parts["ref_rejected"] is not None:
        lp_c, lp_r = parts["logps_chosen"].detach().float(), parts["logps_rejected"].detach().float()
        chosen = beta * (lp_c - parts["ref_chosen"].float())
        rejected = beta * (lp_r - parts["ref_rejected"].float())
        tolerance = abs(beta) * MARGIN_TOLERANCE * (lp_c.abs() + lp_r.abs())
        out.update({"rewards/chosen": float(chosen.mean()), "rewards/rejected": float(rejected.mean()),
                    "rewards/margins": float((chosen - rejected).mean()),
                    "rewards/accuracies": float((chosen - rejected > tolerance).float().mean())})
    return out
