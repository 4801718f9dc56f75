"""One registry of finetuning objectives on per-example log-prob tensors, shared by toykit and llm training.

Every loss has the signature ``fn(chosen_logps, rejected_logps=None, ref_chosen_logps=None,
ref_rejected_logps=None, *, chosen_lengths=None, rejected_lengths=None, **hparams)`` and returns the
per-example loss with the inputs' leading shape (N,) (any leading shape works). Log-probs are SUMMED over
response tokens; ``*_lengths`` are token counts (default 1), used only by length-normalised terms.
Notation: lp+ = chosen_logps, lp- = rejected_logps, r+ = lp+ - ref+, r- = lp- - ref-, h = r+ - r-,
s = sigmoid. Each ``LossSpec.grad`` is the hand-derived (dL/dlp+, dL/dlp-) that ``toykit.residuals`` turns
into G = dL/dz; tests check it against autograd. The losses TRL 1.16 has beyond the core set (exo_pair, bco_pair,
apo_down, discopop, aot, aot_unpaired) and TRL's conventions as named variants (ipo_norm, dpo_norm, rpo_batch)
live in ``toykit.losses_trl`` and are registered here; the online-RL group objectives are ``toykit.group_losses``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from toykit import losses_trl as trl_forms

__all__ = ["LossSpec", "LOSSES", "get_loss", "loss_names", "compute_loss", "compute_loss_grad", "compute_nll_term"]

BETA = 0.1
EPS = 0.1


def _ratios(lp_c, lp_r, ref_c, ref_r) -> tuple[Tensor, Tensor, Tensor]:
    """Return (r+, r-, h): implicit rewards and their difference, each with the inputs' leading shape."""
    r_c, r_r = lp_c - ref_c, lp_r - ref_r
    return r_c, r_r, r_c - r_r


def _count(lengths: Tensor | None, like: Tensor) -> Tensor | float:
    """Return token counts in ``like``'s dtype, or 1 when none are given (one token per response)."""
    return 1.0 if lengths is None else torch.as_tensor(lengths, device=like.device).to(like.dtype)


# ---- the objectives; each fn is followed by its closed-form grad -> (dL/dlp+, dL/dlp- or None) ----


def sft(lp_c, lp_r=None, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None):
    """Supervised finetuning: the negative summed log-likelihood of the chosen response.

    Math: L = -lp+.
    References: Ren & Sutherland 2025, "Learning Dynamics of LLM Finetuning", Section 3 (G = pi - e_y+).
    Hyperparameters: none.
    """
    return -lp_c


def _sft_grad(lp_c, lp_r=None, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None):
    return -torch.ones_like(lp_c), None


def dpo(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """Direct preference optimisation (off-policy DPO).

    Math: L = -log s(beta h).
    References: Rafailov et al. 2023, "Direct Preference Optimization".
    Hyperparameters: beta: inverse temperature of the implicit reward beta (log pi - log pi_ref);
    larger beta keeps the policy closer to the reference.
    """
    return -F.logsigmoid(beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2])


def _dpo_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    dh = -beta * torch.sigmoid(-beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2])  # dL/dh = -beta (1 - a)
    return dh, -dh


def ipo(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """Identity preference optimisation: regress the log-ratio margin onto 1/(2 beta).

    The weight dL/dh = 2(h - 1/(2 beta)) changes sign at h = 1/(2 beta): past the target margin the push
    on y- stops and reverses (PAPER.md section 3).

    Math: L = (h - 1/(2 beta))^2.
    References: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences".
    Hyperparameters: beta: regularisation tau; the target margin is 1/(2 beta).
    """
    return (_ratios(lp_c, lp_r, ref_c, ref_r)[2] - 1.0 / (2.0 * beta)) ** 2


def _ipo_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    dh = 2.0 * (_ratios(lp_c, lp_r, ref_c, ref_r)[2] - 1.0 / (2.0 * beta))
    return dh, -dh


def slic(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, delta=1.0, lam=1.0):
    """SLiC-HF: a rank-calibration hinge on the log-likelihood margin plus an SFT regulariser on y+.

    Math: L = max(0, delta - lp+ + lp-) - lam lp+.
    References: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback".
    Hyperparameters: delta: required margin between lp+ and lp-; lam: weight of the SFT term on y+.
    """
    return torch.relu(delta - lp_c + lp_r) - lam * lp_c


def _slic_grad(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, delta=1.0,
               lam=1.0):
    active = (delta - lp_c + lp_r > 0).to(lp_c.dtype)
    return -active - lam, active


def hinge(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """Hinge loss on the DPO log-ratio margin (RSO / SLiC form with a reference).

    Math: L = max(0, 1 - beta h).
    References: Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization".
    Hyperparameters: beta: scale of the margin; the loss is zero once h >= 1/beta.
    """
    return torch.relu(1.0 - beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2])


def _hinge_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    h = _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    dh = -beta * (1.0 - beta * h > 0).to(lp_c.dtype)
    return dh, -dh


def cdpo(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=EPS):
    """Conservative DPO: DPO with label smoothing (the preference label is flipped with probability eps).

    Math: L = -(1 - eps) log s(beta h) - eps log s(-beta h).
    References: Mitchell 2023, "A note on DPO with noisy preferences" (cDPO).
    Hyperparameters: beta: as in DPO; eps: assumed probability that a preference label is wrong, in [0, 0.5).
    """
    bh = beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    return -(1.0 - eps) * F.logsigmoid(bh) - eps * F.logsigmoid(-bh)


def _cdpo_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=EPS):
    bh = beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    dh = beta * (-(1.0 - eps) * torch.sigmoid(-bh) + eps * torch.sigmoid(bh))
    return dh, -dh


def robust(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=EPS):
    """Robust DPO (rDPO): an unbiased estimate of the DPO loss under label noise of rate eps.

    Math: L = [-(1 - eps) log s(beta h) + eps log s(-beta h)] / (1 - 2 eps).
    References: Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback".
    Hyperparameters: beta: as in DPO; eps: label-flip rate, in [0, 0.5).
    """
    bh = beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    return (-(1.0 - eps) * F.logsigmoid(bh) + eps * F.logsigmoid(-bh)) / (1.0 - 2.0 * eps)


def _robust_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, eps=EPS):
    bh = beta * _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    dh = beta * (-(1.0 - eps) * torch.sigmoid(-bh) - eps * torch.sigmoid(bh)) / (1.0 - 2.0 * eps)
    return dh, -dh


def simpo(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, beta=BETA,
          gamma=0.5):
    """SimPO: reference-free DPO on length-normalised (per-token mean) log-probs with a target margin.

    Math: L = -log s(beta (lp+/|y+| - lp-/|y-|) - gamma).
    References: Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward".
    Hyperparameters: beta: reward scale; gamma: target reward margin.
    """
    n_c, n_r = _count(chosen_lengths, lp_c), _count(rejected_lengths, lp_r)
    return -F.logsigmoid(beta * (lp_c / n_c - lp_r / n_r) - gamma)


def _simpo_grad(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, beta=BETA,
                gamma=0.5):
    n_c, n_r = _count(chosen_lengths, lp_c), _count(rejected_lengths, lp_r)
    dm = -torch.sigmoid(-(beta * (lp_c / n_c - lp_r / n_r) - gamma))  # dL/d(margin)
    return dm * beta / n_c, -dm * beta / n_r


def dpop(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, lam=50.0):
    """DPO-Positive (Smaug): DPO with a penalty inside the sigmoid whenever lp+ falls below its reference.

    Math: L = -log s(beta (h - lam max(0, ref+ - lp+))).
    References: Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive".
    Hyperparameters: beta: as in DPO; lam: weight of the penalty that keeps y+ from dropping below pi_ref(y+).
    """
    h = _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    return -F.logsigmoid(beta * (h - lam * torch.relu(ref_c - lp_c)))


def _dpop_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, lam=50.0):
    h = _ratios(lp_c, lp_r, ref_c, ref_r)[2]
    weight = beta * torch.sigmoid(-beta * (h - lam * torch.relu(ref_c - lp_c)))  # -dL/d(margin / beta)
    below = (ref_c - lp_c > 0).to(lp_c.dtype)
    return -weight * (1.0 + lam * below), weight


def rpo(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, alpha=1.0):
    """RPO: DPO plus a length-normalised NLL term on the chosen response.

    Math: L = -log s(beta h) + alpha (-lp+/|y+|).
    References: Pang et al. 2024, "Iterative Reasoning Preference Optimization" (DPO + NLL), TRL's rpo_alpha.
    Hyperparameters: beta: as in DPO; alpha: weight of the per-token NLL on y+.
    """
    return dpo(lp_c, lp_r, ref_c, ref_r, beta=beta) + _rpo_nll(lp_c, lp_r, ref_c, ref_r,
                                                              chosen_lengths=chosen_lengths, alpha=alpha)


def _rpo_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, alpha=1.0):
    g_c, g_r = _dpo_grad(lp_c, lp_r, ref_c, ref_r, beta=beta)
    return g_c - alpha / _count(chosen_lengths, lp_c), g_r


def _rpo_nll(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA, alpha=1.0):
    """The NLL term of rpo (its LossSpec.nll, what the attribution splits out of the y+ pull).

    Math: L_NLL = alpha (-lp+/|y+|).
    """
    return -alpha * lp_c / _count(chosen_lengths, lp_c)


def apo_zero(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """Anchored preference optimisation, zero anchor: push r+ up and r- down, each through a sigmoid.

    Math: L = (1 - s(beta r+)) + s(beta r-).
    References: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions"
    (APO-zero).
    Hyperparameters: beta: scale of the implicit rewards.
    """
    r_c, r_r, _ = _ratios(lp_c, lp_r, ref_c, ref_r)
    return (1.0 - torch.sigmoid(beta * r_c)) + torch.sigmoid(beta * r_r)


def _apo_zero_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    r_c, r_r, _ = _ratios(lp_c, lp_r, ref_c, ref_r)
    s_c, s_r = torch.sigmoid(beta * r_c), torch.sigmoid(beta * r_r)
    return -beta * s_c * (1.0 - s_c), beta * s_r * (1.0 - s_r)


def nca(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """Noise-contrastive alignment (pairwise NCA): absolute rewards, y+ pulled up, both pushed from above 0.

    Math: L = -log s(beta r+) - 0.5 log s(-beta r+) - 0.5 log s(-beta r-).
    References: Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards".
    Hyperparameters: beta: scale of the implicit rewards.
    """
    r_c, r_r, _ = _ratios(lp_c, lp_r, ref_c, ref_r)
    return -F.logsigmoid(beta * r_c) - 0.5 * F.logsigmoid(-beta * r_c) - 0.5 * F.logsigmoid(-beta * r_r)


def _nca_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    r_c, r_r, _ = _ratios(lp_c, lp_r, ref_c, ref_r)
    g_c = -beta * torch.sigmoid(-beta * r_c) + 0.5 * beta * torch.sigmoid(beta * r_c)
    return g_c, 0.5 * beta * torch.sigmoid(beta * r_r)


def sppo_hard(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """SPPO with hard win probabilities: regress r+ onto +1/(2 beta) and r- onto -1/(2 beta).

    Math: L = (r+ - 1/(2 beta))^2 + (r- + 1/(2 beta))^2.
    References: Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment" (TRL's
    sppo_hard).
    Hyperparameters: beta: the targets are +-1/(2 beta), i.e. (P(win) - 1/2)/beta with P(win) in {0, 1}.
    """
    r_c, r_r, _ = _ratios(lp_c, lp_r, ref_c, ref_r)
    return (r_c - 1.0 / (2.0 * beta)) ** 2 + (r_r + 1.0 / (2.0 * beta)) ** 2


def _sppo_hard_grad(lp_c, lp_r, ref_c, ref_r, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    r_c, r_r, _ = _ratios(lp_c, lp_r, ref_c, ref_r)
    return 2.0 * (r_c - 1.0 / (2.0 * beta)), 2.0 * (r_r + 1.0 / (2.0 * beta))


# log(1 - exp(m)) is -inf at m = 0, which a float32 log_softmax reaches on a token it is certain of; ORPO's odds
# use m clamped to at most this, so the loss stays finite (the clamp is flat above it, in grad as in autograd).
_ORPO_MAX_MEAN_LOGP = -1e-12


def _orpo_parts(lp_c, lp_r, chosen_lengths, rejected_lengths):
    """Return (m+, m-, log_odds, slopes): per-token mean log-probs, the log odds ratio, d log_odds / d(m+, m-).

    log(1 - exp(m)) is computed as log(-expm1(m)) and d/dm log(1 - exp(m)) = 1/expm1(-m), both stable for m < 0.
    """
    m_c = lp_c / _count(chosen_lengths, lp_c)
    m_r = lp_r / _count(rejected_lengths, lp_r)
    q_c, q_r = m_c.clamp(max=_ORPO_MAX_MEAN_LOGP), m_r.clamp(max=_ORPO_MAX_MEAN_LOGP)
    log_odds = (m_c - m_r) - (torch.log(-torch.expm1(q_c)) - torch.log(-torch.expm1(q_r)))
    # d log_odds/dm+ = 1 + exp(m)/(1 - exp(m)) = 1 + 1/expm1(-m) where unclamped, 1 where clamped; mirror for m-.
    open_c = (m_c <= _ORPO_MAX_MEAN_LOGP).to(lp_c.dtype)
    open_r = (m_r <= _ORPO_MAX_MEAN_LOGP).to(lp_r.dtype)
    slope_c = 1.0 + open_c / torch.expm1(-q_c)
    slope_r = -1.0 - open_r / torch.expm1(-q_r)
    return m_c, m_r, log_odds, (slope_c, slope_r)


def orpo(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """ORPO: per-token NLL on y+ plus a log-sigmoid penalty on the odds ratio of y+ over y-, no reference model.

    With per-token means m = lp/|y| and odds(m) = exp(m)/(1 - exp(m)), log_odds = log odds(m+) - log odds(m-)
    = (m+ - m-) - (log(1 - exp(m+)) - log(1 - exp(m-))). Mean log-probs above -1e-12 (a response the model is
    certain of) are clamped to -1e-12 inside log(1 - exp(m)), so the loss stays finite.

    Math: L = -lp+/|y+| - beta log s((m+ - m-) - (log(1 - exp(m+)) - log(1 - exp(m-)))), m = lp/|y|.
    References: Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
    (TRL's odds_ratio_loss; TRL calls the paper's lambda beta).
    Hyperparameters: beta: weight of the odds-ratio term relative to the NLL (the paper's lambda).
    """
    _, _, log_odds, _ = _orpo_parts(lp_c, lp_r, chosen_lengths, rejected_lengths)
    return _orpo_nll(lp_c, lp_r, chosen_lengths=chosen_lengths) - beta * F.logsigmoid(log_odds)


def _orpo_grad(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    _, _, log_odds, (slope_c, slope_r) = _orpo_parts(lp_c, lp_r, chosen_lengths, rejected_lengths)
    d_odds = -beta * torch.sigmoid(-log_odds)  # dL/d log_odds
    return ((-1.0 + d_odds * slope_c) / _count(chosen_lengths, lp_c),
            d_odds * slope_r / _count(rejected_lengths, lp_r))


def _orpo_nll(lp_c, lp_r, ref_c=None, ref_r=None, *, chosen_lengths=None, rejected_lengths=None, beta=BETA):
    """The NLL term of orpo (its LossSpec.nll).

    Math: L_NLL = -m+ = -lp+/|y+|.
    """
    return -lp_c / _count(chosen_lengths, lp_c)


# ---- the registry ----


@dataclass(frozen=True)
class LossSpec:
    """One objective: the loss, its closed-form gradient in the log-probs, and what it needs.

    ``grad`` takes the loss's arguments and returns (dL/dlp+, dL/dlp-), each with the leading shape (N,);
    the second is None for single-response losses. ``hyperparams`` maps each hyperparameter to its help text.
    """

    name: str
    fn: Callable[..., Tensor]
    grad: Callable[..., tuple[Tensor, Tensor | None]]
    paired: bool
    uses_reference: bool
    defaults: Mapping[str, float]
    formula: str
    reference: str
    hyperparams: Mapping[str, str] = field(default_factory=dict)
    couples_batch: bool = False  # True when example k's loss reads other examples (AOT's sort, RPO's batch mean)
    rules: Mapping[str, tuple[Callable[[float], bool], str]] = field(default_factory=dict)  # overrides _RULES
    #: the loss's NLL (SFT) term on y+ alone, per example, with fn's signature (a part of fn's value), for losses
    #: that add one to a preference term (rpo, orpo, rpo_batch); None otherwise (sft is all NLL: no part to split)
    nll: Callable[..., Tensor] | None = None


_BETA_HELP = "inverse temperature of the implicit reward beta (log pi - log pi_ref); must be > 0"
_EPS_HELP = "label-noise rate: probability that a preference label is flipped; in [0, 0.5)"

# name -> (test, what a valid value is); hyperparameters missing here are refused.
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "beta": (lambda v: v > 0, "> 0"),
    "eps": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "lam": (lambda v: v >= 0, ">= 0"),
    "delta": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: v >= 0, ">= 0"),
    "alpha": (lambda v: v >= 0, ">= 0"),
    "tau": (lambda v: v > 0, "> 0"),
}


def _docline(fn: Callable, key: str) -> str:
    """Return the ``key`` section ("Math:" or "References:") of ``fn``'s docstring, joined into one line."""
    lines = inspect.getdoc(fn).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(key))
    section = [lines[start][len(key):]]
    for line in lines[start + 1:]:
        if line.split(" ", 1)[0] in ("Math:", "References:", "Hyperparameters:") or not line.strip():
            break
        section.append(line)
    return " ".join(part.strip() for part in section).rstrip(".")


def _spec(fn, grad, *, paired: bool, uses_reference: bool, hyperparams: dict[str, str], couples_batch: bool = False,
          rules: dict | None = None, nll: Callable[..., Tensor] | None = None) -> LossSpec:
    defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items()
                if p.kind is p.KEYWORD_ONLY and not n.endswith("_lengths")}
    if set(defaults) != set(hyperparams):
        raise AssertionError(f"loss {fn.__name__!r}: hyperparams help {sorted(hyperparams)} != {sorted(defaults)}")
    return LossSpec(fn.__name__, fn, grad, paired, uses_reference, defaults, _docline(fn, "Math:"),
                    _docline(fn, "References:"), hyperparams, couples_batch, rules or {}, nll)


LOSSES: dict[str, LossSpec] = {s.name: s for s in [
    _spec(sft, _sft_grad, paired=False, uses_reference=False, hyperparams={}),
    _spec(dpo, _dpo_grad, paired=True, uses_reference=True, hyperparams={"beta": _BETA_HELP}),
    _spec(ipo, _ipo_grad, paired=True, uses_reference=True,
          hyperparams={"beta": "IPO regularisation tau; the log-ratio margin is regressed onto 1/(2 beta); > 0"}),
    _spec(slic, _slic_grad, paired=True, uses_reference=False,
          hyperparams={"delta": "hinge margin required between lp+ and lp-; >= 0",
                       "lam": "weight of the SFT regulariser -lp+; >= 0"}),
    _spec(hinge, _hinge_grad, paired=True, uses_reference=True,
          hyperparams={"beta": "scale of the log-ratio margin; the hinge is flat once h >= 1/beta; > 0"}),
    _spec(cdpo, _cdpo_grad, paired=True, uses_reference=True, hyperparams={"beta": _BETA_HELP, "eps": _EPS_HELP}),
    _spec(robust, _robust_grad, paired=True, uses_reference=True,
          hyperparams={"beta": _BETA_HELP, "eps": _EPS_HELP}),
    _spec(simpo, _simpo_grad, paired=True, uses_reference=False,
          hyperparams={"beta": "scale of the length-normalised reward; > 0",
                       "gamma": "target reward margin subtracted inside the sigmoid; >= 0"}),
    _spec(dpop, _dpop_grad, paired=True, uses_reference=True,
          hyperparams={"beta": _BETA_HELP, "lam": "penalty on lp+ falling below ref+ (DPO-Positive lambda); >= 0"}),
    _spec(rpo, _rpo_grad, paired=True, uses_reference=True, nll=_rpo_nll,
          hyperparams={"beta": _BETA_HELP, "alpha": "weight of the per-token NLL term -lp+/|y+|; >= 0"}),
    _spec(apo_zero, _apo_zero_grad, paired=True, uses_reference=True, hyperparams={"beta": _BETA_HELP}),
    _spec(nca, _nca_grad, paired=True, uses_reference=True, hyperparams={"beta": _BETA_HELP}),
    _spec(sppo_hard, _sppo_hard_grad, paired=True, uses_reference=True,
          hyperparams={"beta": "the targets of r+ and r- are +1/(2 beta) and -1/(2 beta); > 0"}),
    _spec(orpo, _orpo_grad, paired=True, uses_reference=False, nll=_orpo_nll,
          hyperparams={"beta": "weight of the odds-ratio term -log s(log_odds) added to the per-token NLL on y+ "
                               "(the paper's lambda); > 0"}),
    # TRL 1.16's DPOTrainer losses beyond the core set, and its conventions as named variants (toykit.losses_trl)
    _spec(trl_forms.exo_pair, trl_forms._exo_pair_grad, paired=True, uses_reference=True,
          hyperparams={"beta": _BETA_HELP, "eps": "label smoothing of the target preference (1 - eps, eps); "
                                                  "in (0, 0.5)"},
          rules={"eps": (lambda v: 0 < v < 0.5, "in (0, 0.5)")}),
    _spec(trl_forms.bco_pair, trl_forms._bco_pair_grad, paired=True, uses_reference=True,
          hyperparams={"beta": _BETA_HELP}),
    _spec(trl_forms.apo_down, trl_forms._apo_down_grad, paired=True, uses_reference=True,
          hyperparams={"beta": _BETA_HELP}),
    _spec(trl_forms.discopop, trl_forms._discopop_grad, paired=True, uses_reference=True,
          hyperparams={"beta": _BETA_HELP, "tau": "temperature of DiscoPOP's mixing coefficient s(beta h / tau); > 0"}),
    _spec(trl_forms.aot, trl_forms._aot_grad, paired=True, uses_reference=True, couples_batch=True,
          hyperparams={"beta": _BETA_HELP, "eps": _EPS_HELP}),
    _spec(trl_forms.aot_unpaired, trl_forms._aot_unpaired_grad, paired=True, uses_reference=True,
          couples_batch=True, hyperparams={"beta": _BETA_HELP, "eps": _EPS_HELP}),
    _spec(trl_forms.ipo_norm, trl_forms._ipo_norm_grad, paired=True, uses_reference=True,
          hyperparams={"beta": "IPO's tau on per-token-averaged log-ratios; target margin 1/(2 beta) per token; > 0"}),
    _spec(trl_forms.dpo_norm, trl_forms._dpo_norm_grad, paired=True, uses_reference=True,
          hyperparams={"beta": "inverse temperature on per-token-averaged log-ratios; > 0"}),
    _spec(trl_forms.rpo_batch, trl_forms._rpo_batch_grad, paired=True, uses_reference=True, couples_batch=True,
          nll=trl_forms._rpo_batch_nll,
          hyperparams={"beta": _BETA_HELP, "alpha": "weight of the NLL on y+ as one token mean over the batch; >= 0"}),
]}


def loss_names() -> list[str]:
    """Return the registered loss names in registry order."""
    return list(LOSSES)


def get_loss(name: str) -> LossSpec:
    """Return the LossSpec called ``name``; raise ValueError listing the known names otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def _check_hparams(spec: LossSpec, hparams: Mapping[str, float]) -> dict[str, float]:
    """Return the loss's hyperparameters (defaults overridden), refusing unknown names and invalid values.

    Names that another registered loss uses (e.g. ``beta`` for ``sft``) are dropped, so a trainer can pass
    one config to any loss; names no loss knows are refused as typos.
    """
    for name in hparams:
        if name not in _RULES:
            raise ValueError(f"loss {spec.name!r}: unknown hyperparameter {name!r}; "
                             f"this loss takes {sorted(spec.defaults) or 'none'}")
    merged = {**spec.defaults, **{k: v for k, v in hparams.items() if k in spec.defaults}}
    for name, value in merged.items():
        test, valid = spec.rules.get(name, _RULES[name])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"loss {spec.name!r}: hyperparameter {name} must be a finite number, got {value!r}")
        if not test(value):
            raise ValueError(f"loss {spec.name!r}: hyperparameter {name} must be {valid}, got {value!r}")
    return merged


def check_hparams(name: str, hparams: Mapping[str, float]) -> dict[str, float]:
    """Return the hyperparameters loss ``name`` uses (defaults filled in); ValueError for a bad value or a typo.

    Configs call it when they are built, so a bad ``--beta`` is refused before a run starts.
    """
    return _check_hparams(get_loss(name), hparams)


def _check_tensors(spec: LossSpec, tensors: dict[str, Tensor | None]) -> None:
    """Refuse missing, non-float, mis-shaped or non-finite inputs, naming the argument and the loss."""
    needed = ["chosen_logps"] + (["rejected_logps"] if spec.paired else [])
    if spec.uses_reference:
        needed += ["ref_chosen_logps"] + (["ref_rejected_logps"] if spec.paired else [])
    for name in needed:
        if tensors[name] is None:
            raise ValueError(f"loss {spec.name!r} needs {name}, got None")
    shape = tuple(tensors["chosen_logps"].shape)
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"loss {spec.name!r}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"loss {spec.name!r}: {name} has shape {tuple(t.shape)}, expected {shape} "
                             f"(the shape of chosen_logps)")
        if name.endswith("_lengths"):
            if not bool((t > 0).all()):
                raise ValueError(f"loss {spec.name!r}: {name} must be positive token counts, got min {t.min()}")
            continue
        if not t.is_floating_point():
            raise ValueError(f"loss {spec.name!r}: {name} must be a float tensor, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            bad = (~torch.isfinite(t)).nonzero()[0].tolist()
            raise ValueError(f"loss {spec.name!r}: {name} has a NaN or inf entry at index {bad}")


def _validated(name: str, kwargs: dict) -> tuple[LossSpec, dict]:
    spec = get_loss(name)
    keys = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "chosen_lengths",
            "rejected_lengths")
    tensors = {k: kwargs.pop(k, None) for k in keys}
    _check_tensors(spec, tensors)
    args = {k: tensors.pop(k) for k in keys[:4]}
    return spec, {**args, **tensors, **_check_hparams(spec, kwargs)}


def compute_loss(name: str, **kwargs) -> Tensor:
    """Validate the inputs and return the per-example loss of objective ``name``.

    Args:
        name: a registered loss (see ``loss_names()``).
        **kwargs: chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps (N,) summed log-probs;
            chosen_lengths, rejected_lengths (N,) token counts; hyperparameters (see ``LossSpec.hyperparams``).

    Returns:
        (N,) per-example loss, differentiable through the log-prob tensors.
    """
    spec, args = _validated(name, dict(kwargs))
    return spec.fn(args.pop("chosen_logps"), args.pop("rejected_logps"), args.pop("ref_chosen_logps"),
                   args.pop("ref_rejected_logps"), **args)


def compute_loss_grad(name: str, **kwargs) -> tuple[Tensor, Tensor | None]:
    """Validate the inputs like ``compute_loss`` and return the closed-form (dL/dlp+, dL/dlp-), each (N,).

    Math: the per-loss derivatives in ``LossSpec.grad``; dL/dlp- is None for single-response losses.
    References: PAPER.md section 3 (G^(a) = (dL/dlp_a) (e_{y_a} - pi_a) is built from these weights).
    """
    spec, args = _validated(name, dict(kwargs))
    return spec.grad(args.pop("chosen_logps"), args.pop("rejected_logps"), args.pop("ref_chosen_logps"),
                     args.pop("ref_rejected_logps"), **args)


def compute_nll_term(name: str, **kwargs) -> Tensor | None:
    """Validate the inputs like ``compute_loss`` and return the per-example NLL term of loss ``name``, or None.

    For a loss that adds an NLL (SFT) term on y+ to a preference term (rpo, orpo, rpo_batch) it is that term
    alone, a part of ``compute_loss``'s value: the rest is the preference term (e.g. rpo minus it is dpo).

    Returns:
        (N,) the NLL term, differentiable through chosen_logps; None when the loss has none.
    """
    spec, args = _validated(name, dict(kwargs))
    if spec.nll is None:
        return None
    return spec.nll(args.pop("chosen_logps"), args.pop("rejected_logps"), args.pop("ref_chosen_logps"),
                    args.pop("ref_rejected_logps"), **args)
