"""Pairwise objectives TRL 1.16's DPOTrainer has beyond the core set, and TRL's conventions as named variants.

Same signature and notation as ``toykit.losses`` (which registers them): lp+/lp- SUMMED log-probs (N,),
r+ = lp+ - ref+, r- = lp- - ref-, h = r+ - r-, s = sigmoid, |y| token counts. Each fn is followed by its
closed-form grad -> (dL/dlp+, dL/dlp-). Conventions where TRL differs from the core registry:
- ``ipo_norm`` / ``dpo_norm``: IPO / DPO on per-token-AVERAGED log-ratios (TRL's ``ipo`` and ``sigmoid_norm``;
  the IPO paper's reported setting). The core ``ipo`` uses summed log-ratios: its margin h grows with the
  response length, so the same beta targets a per-token margin |y| times smaller (beta_summed ~ |y| beta_norm).
- ``rpo_batch``: RPO's NLL as ONE token mean over the batch (TRL's ``loss_type=["sigmoid", "sft"]``); the core
  ``rpo`` averages each example over its own tokens. The per-example term here divides by the batch's mean
  length, so the batch mean equals TRL's -sum_i lp+_i / sum_i |y+_i| and long responses weigh more.
- ``aot`` / ``aot_unpaired`` couple the batch: they sort log-ratios over dim 0, so entry k of the returned
  loss belongs to rank k, not to example k; only the batch mean (as TRL takes it) is meaningful per batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BETA = 0.1


def _per_token(lp: Tensor, lengths: Tensor | None) -> Tensor:
    """Return lp / |y| (lp itself when no lengths are given)."""
    return lp if lengths is None else lp / torch.as_tensor(lengths, device=lp.device).to(lp.dtype)


def _dsig(x: Tensor) -> Tensor:
    """Return s'(x) = s(x) (1 - s(x)), in the form autograd's sigmoid backward uses (float32 agrees to rounding)."""
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def exo_pair(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=1e-3):
    """EXO (pairwise): reverse KL from the model's implicit preference s(beta h) to the smoothed label (1-eps, eps).

    Math: L = s(beta h) (log s(beta h) - log(1 - eps)) + s(-beta h) (log s(-beta h) - log eps).
    References: Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment" (Eq. 16);
    TRL 1.16 loss_type="exo_pair" (eps is its label_smoothing).
    Hyperparameters: beta: as in DPO; eps: label smoothing, in (0, 0.5) (log eps must be finite).
    """
    u = beta * ((lp_c - ref_c) - (lp_r - ref_r))
    return (torch.sigmoid(u) * (F.logsigmoid(u) - math.log1p(-eps))
            + torch.sigmoid(-u) * (F.logsigmoid(-u) - math.log(eps)))


def _exo_pair_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=1e-3):
    u = beta * ((lp_c - ref_c) - (lp_r - ref_r))
    dh = beta * _dsig(u) * (u - math.log((1 - eps) / eps))  # zero where s(beta h) = 1 - eps
    return dh, -dh


def bco_pair(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """BCO (pairwise): a binary classifier with r+ labelled good and r- labelled bad, no shared margin.

    Math: L = -log s(beta r+) - log s(-beta r-).
    References: Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment";
    TRL 1.16 loss_type="bco_pair" (without BCO's running reward shift).
    Hyperparameters: beta: scale of the implicit rewards.
    """
    return -F.logsigmoid(beta * (lp_c - ref_c)) - F.logsigmoid(-beta * (lp_r - ref_r))


def _bco_pair_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    return -beta * torch.sigmoid(-beta * (lp_c - ref_c)), beta * torch.sigmoid(beta * (lp_r - ref_r))


def apo_down(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """Anchored preference optimisation, down anchor: push r+ down, and r- down further than r+.

    Math: L = s(beta r+) + 1 - s(beta h).
    References: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (APO-down, Eq. 8); TRL 1.16 loss_type="apo_down".
    Hyperparameters: beta: scale of the implicit rewards.
    """
    r_c = lp_c - ref_c
    return torch.sigmoid(beta * r_c) + 1 - torch.sigmoid(beta * (r_c - (lp_r - ref_r)))


def _apo_down_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    r_c = lp_c - ref_c
    d_h = beta * _dsig(beta * (r_c - (lp_r - ref_r)))
    return beta * _dsig(beta * r_c) - d_h, d_h


def discopop(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, tau=0.05):
    """DiscoPOP: a blend of the logistic (DPO) and exponential losses, mixed by s(beta h / tau).

    exp(-u) m is computed as exp(-u + log s(u / tau)) so a very negative margin stays finite for tau < 1.

    Math: L = -log s(u) (1 - m) + exp(-u) m, u = beta h, m = s(u / tau).
    References: Chris Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large
    Language Models" (Eq. 5); TRL 1.16 loss_type="discopop" (tau is its discopop_tau).
    Hyperparameters: beta: as in DPO; tau: temperature of the mixing coefficient; > 0.
    """
    u = beta * ((lp_c - ref_c) - (lp_r - ref_r))
    m = torch.sigmoid(u / tau)
    return -F.logsigmoid(u) * (1 - m) + torch.exp(-u + F.logsigmoid(u / tau))


def _discopop_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, tau=0.05):
    u = beta * ((lp_c - ref_c) - (lp_r - ref_r))
    m = torch.sigmoid(u / tau)
    e_m = torch.exp(-u + F.logsigmoid(u / tau))  # exp(-u) m
    logistic = -F.logsigmoid(u)
    # dL/du = -s(-u)(1 - m) + (exp(-u) - logistic) m' - exp(-u) m, with m' = m (1 - m) / tau.
    du = -torch.sigmoid(-u) * (1 - m) + (e_m - logistic * m) * (1 - m) / tau - e_m
    return beta * du, -beta * du


def _smoothed(x: Tensor, beta: float, eps: float) -> tuple[Tensor, Tensor]:
    """Return (-(1-eps) log s(beta x) - eps log s(-beta x), its derivative in x): cDPO's form, used by AOT."""
    loss = -(1 - eps) * F.logsigmoid(beta * x) - eps * F.logsigmoid(-beta * x)
    return loss, beta * (-(1 - eps) * torch.sigmoid(-beta * x) + eps * torch.sigmoid(beta * x))


def _unsort(values: Tensor, order: Tensor) -> Tensor:
    """Return v with v[order[k]] = values[k] along dim 0: a sorted-rank quantity sent back to its example."""
    return torch.empty_like(values).scatter_(0, order, values)


def aot(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=0.0):
    """AOT (paired): distributional alignment by optimal transport; sorted policy margins vs sorted reference ones.

    Entry k of the result is rank k's loss (module docstring); the batch mean is TRL's value.

    Math: L = -(1-eps) log s(beta d_k) - eps log s(-beta d_k) at rank k, d = sort(lp+ - lp-) - sort(ref+ - ref-).
    References: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport";
    TRL 1.16 loss_type="aot" (sorted over the batch, dim 0).
    Hyperparameters: beta: as in DPO; eps: label smoothing, in [0, 0.5).
    """
    d = torch.sort(lp_c - lp_r, dim=0)[0] - torch.sort(ref_c - ref_r, dim=0)[0]
    return _smoothed(d, beta, eps)[0]


def _aot_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=0.0):
    sorted_m, order = torch.sort(lp_c - lp_r, dim=0)
    g = _unsort(_smoothed(sorted_m - torch.sort(ref_c - ref_r, dim=0)[0], beta, eps)[1], order)
    return g, -g


def aot_unpaired(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=0.0):
    """AOT (unpaired): sorted chosen log-ratios against sorted rejected log-ratios, ranks matched across the batch.

    Math: L = -(1-eps) log s(beta d_k) - eps log s(-beta d_k) at rank k, d = sort(r+) - sort(r-).
    References: Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport";
    TRL 1.16 loss_type="aot_unpaired".
    Hyperparameters: beta: as in DPO; eps: label smoothing, in [0, 0.5).
    """
    d = torch.sort(lp_c - ref_c, dim=0)[0] - torch.sort(lp_r - ref_r, dim=0)[0]
    return _smoothed(d, beta, eps)[0]


def _aot_unpaired_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA,
                       eps=0.0):
    s_c, o_c = torch.sort(lp_c - ref_c, dim=0)
    s_r, o_r = torch.sort(lp_r - ref_r, dim=0)
    g = _smoothed(s_c - s_r, beta, eps)[1]
    return _unsort(g, o_c), _unsort(-g, o_r)


def ipo_norm(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """IPO on per-token-averaged log-ratios (TRL's and the IPO paper's reported setting; see module docstring).

    Math: L = (r+/|y+| - r-/|y-| - 1/(2 beta))^2.
    References: Azar et al. 2023 (IPO, Eq. 17); TRL 1.16 loss_type="ipo" (normalised by the completion length).
    Hyperparameters: beta: IPO's tau; the per-token margin is regressed onto 1/(2 beta).
    """
    h = _per_token(lp_c - ref_c, chosen_lengths) - _per_token(lp_r - ref_r, rejected_lengths)
    return (h - 1 / (2 * beta)) ** 2


def _ipo_norm_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    h = _per_token(lp_c - ref_c, chosen_lengths) - _per_token(lp_r - ref_r, rejected_lengths)
    dh = 2 * (h - 1 / (2 * beta))
    return _per_token(dh, chosen_lengths), -_per_token(dh, rejected_lengths)


def dpo_norm(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """DPO on per-token-averaged log-ratios (TRL's sigmoid_norm).

    Math: L = -log s(beta (r+/|y+| - r-/|y-|)).
    References: Rafailov et al. 2023 (DPO); TRL 1.16 loss_type="sigmoid_norm".
    Hyperparameters: beta: as in DPO, on a per-token margin.
    """
    h = _per_token(lp_c - ref_c, chosen_lengths) - _per_token(lp_r - ref_r, rejected_lengths)
    return -F.logsigmoid(beta * h)


def _dpo_norm_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    h = _per_token(lp_c - ref_c, chosen_lengths) - _per_token(lp_r - ref_r, rejected_lengths)
    dh = -beta * torch.sigmoid(-beta * h)
    return _per_token(dh, chosen_lengths), -_per_token(dh, rejected_lengths)


def _batch_mean_length(lengths: Tensor | None, like: Tensor) -> Tensor | float:
    """Return the batch's mean token count (a scalar; 1 without lengths)."""
    return 1.0 if lengths is None else torch.as_tensor(lengths, device=like.device).to(like.dtype).mean()


def rpo_batch(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, alpha=1.0):
    """RPO with the NLL as one token mean over the batch (TRL's ["sigmoid", "sft"]; see module docstring).

    Math: L = -log s(beta h) - alpha lp+ / mean_batch |y+|  (batch mean: DPO + alpha (-sum lp+ / sum |y+|)).
    References: Pang et al. 2024 (RPO); TRL 1.16 loss_type=["sigmoid", "sft"], loss_weights=[1, alpha].
    Hyperparameters: beta: as in DPO; alpha: weight of the batch token-mean NLL on y+.
    """
    return -F.logsigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))) + _rpo_batch_nll(
        lp_c, lp_r, ref_c, ref_r, chosen_lengths=chosen_lengths, alpha=alpha)


def _rpo_batch_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, alpha=1.0):
    dh = -beta * torch.sigmoid(-beta * ((lp_c - ref_c) - (lp_r - ref_r)))
    return dh - alpha / _batch_mean_length(chosen_lengths, lp_c) * torch.ones_like(lp_c), -dh


def _rpo_batch_nll(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, alpha=1.0):
    """The NLL term of rpo_batch (its LossSpec.nll).

    Math: L_NLL = -alpha lp+ / mean_batch |y+|.
    """
    return -alpha * lp_c / _batch_mean_length(chosen_lengths, lp_c)
