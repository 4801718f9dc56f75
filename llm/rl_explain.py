"""Explain an online-RL run: the GRPO family's gradient split into its terms, for ``llm.explain``'s attribution.

A group objective is a function of the per-token log-probs l (B, T) of the sampled completions, so its gradient
is g = sum_{i,t} w_{i,t} grad_theta l_{i,t} with w = dL/dl (``toykit.group_losses``; PAPER.md section 10). The
terms split w, and so g, exactly:

- "A>0 pull": the policy-gradient weight on the completions with a positive advantage (w < 0 on their unclipped
  tokens: pulled up);
- "A<0 push": the same on the completions with a negative advantage (w > 0: pushed down; the negative gradient of
  Deng et al. 2025 that lowers even the correct responses' tokens it shares with them);
- "KL to reference": the k3 KL's weight beta (1 - pi_ref / pi) / N_i on every token, where the loss has one
  (beta > 0: grpo, dr_grpo, dapo, cispo, gspo). RLOO has no such term: as in TRL its KL lives in the reward
  (``rloo_advantages(kl=...)``), so it would reach the gradient through the advantages, inside the two advantage
  terms; ``train_rl``'s rloo takes no --beta, so its runs have no KL at all.

Completions with a zero advantage (a group whose rewards tie) carry no policy-gradient weight. ``train_rl`` hands
the terms' gradients to its hooks in ``StepContext.response_gradients`` (keyed by term), and
``AttributionHook(terms=group_terms(...))`` attributes every probe's change along the real update to them, with
per-term optimizer momentum buffers (``llm.explain.UpdateSplit``) and weight decay as a term of its own.

Math: w_pg = dL(beta = 0)/dl; w_pull = w_pg 1[A > 0]; w_push = w_pg 1[A < 0]; w_KL = w - w_pull - w_push;
g_k = sum_{i,t} w_k grad_theta l (the last term's gradient is taken as p.grad minus the others, so they sum to the
run's own gradient).
References: PAPER.md section 10 (w of each objective); Deng et al. 2025, arXiv 2505.18830 (negative gradients in
GRPO); Ren & Sutherland, ICLR 2025, Prop. 1 (the first-order change along an update).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from torch import Tensor

from toykit.group_losses import compute_group_weights

__all__ = ["PULL", "PUSH", "KL", "GroupObjective", "group_terms", "group_term_weights", "group_term_backward",
           "rl_hooks_from_config"]

PULL, PUSH, KL = "A>0 pull", "A<0 push", "KL to reference"


@dataclasses.dataclass(frozen=True)
class GroupObjective:
    """The RL run's objective as ``llm.hooks.RunContext.objective`` (name, hyperparameters; no y+/y- pairs)."""

    loss: str
    hparams: Mapping[str, float]
    needs_rejected: bool = False

    @property
    def beta(self) -> float:
        """The k3 KL weight (0 without a KL term)."""
        return float(self.hparams.get("beta", 0.0))

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads a reference model (the k3 KL)."""
        return self.beta > 0


def group_terms(hparams: Mapping[str, float]) -> tuple[str, ...]:
    """The terms of a group objective with these hyperparameters: pull, push, and the KL where beta > 0."""
    return (PULL, PUSH, KL) if hparams.get("beta", 0.0) > 0 else (PULL, PUSH)


def _weights(name: str, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, ref_logps, hparams):
    """w = dL/dl (B, T): the group objective's closed form (``toykit.group_losses.compute_group_weights``, tested
    against autograd there), on detached inputs (the run's graph is left alone)."""
    return compute_group_weights(name, logps, old_logps, advantages, mask, ref_logps, **hparams)


def group_term_weights(name: str, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                       ref_logps: Tensor | None, hparams: Mapping[str, float]) -> dict[str, Tensor]:
    """Return term -> its part of w = dL/dl, each (B, T) and detached; they sum to w (see the module docstring).

    Args:
        name: the group objective; logps, old_logps, mask, ref_logps: (B, T) as ``compute_group_loss``;
        advantages: (B,) one per completion; hparams: the objective's hyperparameters (``group_hparams``).

    Math: w_pull = w_pg 1[A > 0], w_push = w_pg 1[A < 0], w_KL = w - w_pull - w_push, w_pg = dL(beta = 0)/dl.
    """
    if advantages.dim() != 1 or advantages.shape[0] != logps.shape[0]:
        raise ValueError(f"group_term_weights: advantages must be (B,) = ({logps.shape[0]},), got "
                         f"{tuple(advantages.shape)}")
    terms = group_terms(hparams)
    pg = _weights(name, logps, old_logps, advantages, mask, ref_logps, {**hparams, "beta": 0.0})  # (B, T)
    sign = advantages[:, None]  # (B, 1)
    out = {PULL: torch.where(sign > 0, pg, torch.zeros_like(pg)), PUSH: torch.where(sign < 0, pg, torch.zeros_like(pg))}
    if KL in terms:
        full = _weights(name, logps, old_logps, advantages, mask, ref_logps, hparams)
        out[KL] = full - out[PULL] - out[PUSH]
    return out


def group_term_backward(loss: Tensor, logps: Tensor, weights: Mapping[str, Tensor],
                        params: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Backpropagate the run's ``loss`` (p.grad exactly as without hooks) and return each term's gradient.

    One backward pass per term but the last through the run's graph, then the run's own ``loss.backward()``; the
    last term's gradient is p.grad minus the others, so the terms sum to p.grad (before clipping).

    Args:
        loss: the group loss of the update (scalar); logps: (B, T) the per-token log-probs it was computed from.
        weights: term -> (B, T) its part of dL/dl (``group_term_weights``).
        params: the trainable parameters by name.

    Returns:
        term -> parameter name -> its part of the loss gradient.
    """
    names, terms = list(params), list(weights)
    out: dict[str, dict[str, Tensor]] = {}
    for term in terms[:-1]:
        grads = torch.autograd.grad((weights[term].detach() * logps).sum(), [params[n] for n in names],
                                    retain_graph=True, allow_unused=True)
        out[term] = {n: g for n, g in zip(names, grads) if g is not None}
    loss.backward()  # the run's own backward pass
    out[terms[-1]] = {n: p.grad - sum(out[t][n] for t in terms[:-1] if n in out[t])
                      for n, p in params.items() if p.grad is not None}
    return out


def rl_hooks_from_config(cfg) -> list[object]:
    """The hooks an RL config asks for: the attribution into the group objective's terms when explain_prompts > 0.

    The token view (``cfg.token_view``) is run by ``train_rl`` itself.
    """
    if cfg.explain_prompts <= 0:
        return []
    from llm.explain import AttributionHook

    return [AttributionHook(num_prompts=cfg.explain_prompts, every=cfg.explain_every,
                            terms=group_terms(cfg.group_hparams()), diagnose_pairs=False)]
