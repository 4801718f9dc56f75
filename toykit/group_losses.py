"""The GRPO family: objectives over a GROUP of sampled responses with rewards (online RL), with closed-form G.

Every objective has the signature ``fn(logps, old_logps, advantages, mask, ref_logps=None, **hparams)`` and
returns the batch loss (a scalar) aggregated as TRL 1.16 aggregates it. Shapes: B responses in the batch
(prompts x group size), T completion length (padded), V vocabulary.
- ``logps`` (B, T): per-token log pi_theta(o_t | q, o_<t) of the sampled tokens (differentiable).
- ``old_logps`` (B, T): the sampling policy's per-token log-probs (detached); equal to ``logps`` at the first,
  on-policy step, where every ratio rho = exp(l - l_old) is 1 and nothing is clipped.
- ``advantages`` (B,): one advantage per response (``group_advantages`` / ``rloo_advantages``); the token-ratio
  objectives also take (B, T) per-token advantages (as TRL does), e.g. NTHR-style token re-weighting.
- ``mask`` (B, T): 1 on completion tokens, 0 on padding; its row sums are |o_i|.
- ``ref_logps`` (B, T): the reference model's per-token log-probs, read only when beta > 0 (the k3 KL).
Each ``GroupLossSpec.grad`` is the hand-derived w = dL/dlogps (B, T); ``group_residual`` turns it into
G = dL/dz = w (e_y - pi) / temperature per token, and tests check both against autograd and TRL's code.

Notation (PAPER.md section 10): rho = exp(l - l_old) per token; clipped means the PPO min picks the clipped
branch, i.e. (A > 0 and rho > 1 + eps_high) or (A < 0 and rho < 1 - eps_low), where the token's gradient is 0;
k3 = exp(l_ref - l) - (l_ref - l) - 1 with dk3/dl = 1 - pi_ref/pi.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor

__all__ = ["GroupLossSpec", "GROUP_LOSSES", "group_loss_names", "get_group_loss", "check_group_hparams",
           "compute_group_loss",
           "compute_group_weights", "clipped_tokens", "group_advantages", "rloo_advantages", "GroupResidual",
           "group_residual"]

# TRL 1.16's GRPOConfig defaults: epsilon 0.2, beta 0.0; DAPO's clip-higher 0.28; ScaleRL's CISPO eps_max 5.0
# (TRL's epsilon_high for cispo); the GSPO paper's 3e-4 / 4e-4 (TRL's docs for importance_sampling_level).
_ADV_EPS = 1e-4  # TRL adds 1e-4 to the group std


# ---- shared pieces ----


def _ppo_token(rho: Tensor, adv: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """Return (per-token PPO loss -min(rho A, clip(rho) A), clipped mask) for ratios rho, advantages A (B, 1)."""
    clipped = ((adv > 0) & (rho > 1 + eps_high)) | ((adv < 0) & (rho < 1 - eps_low))
    return -torch.minimum(rho * adv, rho.clamp(1 - eps_low, 1 + eps_high) * adv), clipped


def _adv(advantages: Tensor) -> Tensor:
    """Return advantages as (B, 1) from (B,), or as given when per token (B, T) (TRL accepts both)."""
    return advantages[:, None] if advantages.dim() == 1 else advantages


def _k3(logps: Tensor, ref_logps: Tensor | None, beta: float) -> tuple[Tensor | float, Tensor | float]:
    """Return (beta k3, beta dk3/dl), each (B, T) or 0 when beta == 0: the KL penalty TRL adds per token."""
    if beta == 0:
        return 0.0, 0.0
    d = ref_logps - logps  # (B, T)
    return beta * (torch.exp(d) - d - 1), beta * (1 - torch.exp(d))


def _mean_per_response(mask: Tensor) -> Tensor:
    """GRPO's normaliser: 1 / (|o_i| B) per token, (B, 1); TRL's 'grpo' (and GSPO's) aggregation."""
    return 1.0 / (mask.sum(-1, keepdim=True).clamp(min=1.0) * mask.shape[0])


def _token_level(mask: Tensor) -> Tensor:
    """DAPO's normaliser: 1 / (active tokens of the batch), a scalar tensor; TRL's 'dapo'/'cispo' aggregation."""
    return 1.0 / mask.sum().clamp(min=1.0)


def _seq_ratio(logps, old_logps, mask, mean: bool) -> Tensor:
    """Return the sequence-level ratio exp(sum_t m (l - l_old)) (RLOO) or exp of its per-token mean (GSPO), (B, 1)."""
    s = ((logps - old_logps) * mask).sum(-1, keepdim=True)  # (B, 1)
    return torch.exp(s / mask.sum(-1, keepdim=True).clamp(min=1.0) if mean else s)


# ---- the objectives; each fn is followed by its closed-form grad -> w = dL/dlogps (B, T) ----


def grpo(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.2, beta=0.0):
    """GRPO: token-level PPO clip on a group-normalised advantage, mean over each response, then over responses.

    Math: L = (1/B) sum_i (1/|o_i|) sum_t [-min(rho A_i, clip(rho, 1-eps_low, 1+eps_high) A_i) + beta k3].
    References: Shao et al. 2024, "DeepSeekMath" (GRPO); TRL 1.16 GRPOTrainer loss_type="grpo".
    Hyperparameters: eps_low, eps_high: PPO clip range; beta: weight of the k3 KL to the reference.
    """
    ppo, _ = _ppo_token(torch.exp(logps - old_logps), _adv(advantages), eps_low, eps_high)
    return ((ppo + _k3(logps, ref_logps, beta)[0]) * mask * _mean_per_response(mask)).sum()


def _ppo_token_grad(logps, old_logps, advantages, mask, ref_logps, eps_low, eps_high, beta):
    """Return the per-token dl of -min(rho A, clip A) + beta k3: -rho A on unclipped tokens, plus beta (1 - pi_ref/pi)."""
    rho, adv = torch.exp(logps - old_logps), _adv(advantages)
    _, clipped = _ppo_token(rho, adv, eps_low, eps_high)
    return -rho * adv * (~clipped).to(logps.dtype) + _k3(logps, ref_logps, beta)[1]


def _grpo_grad(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.2, beta=0.0):
    return _ppo_token_grad(logps, old_logps, advantages, mask, ref_logps, eps_low, eps_high, beta) * mask \
        * _mean_per_response(mask)


def dr_grpo(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.2, beta=0.0,
            max_len=0.0):
    """Dr. GRPO: GRPO without the length normaliser (a constant B * L_max) and, by default, without std scaling.

    Math: L = (1/(B L_max)) sum_i sum_t [-min(rho A_i, clip(rho, 1-eps_low, 1+eps_high) A_i) + beta k3].
    References: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO);
    TRL 1.16 GRPOTrainer loss_type="dr_grpo" (L_max = max_completion_length).
    Hyperparameters: eps_low, eps_high, beta: as in GRPO; max_len: L_max, the constant normaliser (0: T).
    """
    ppo, _ = _ppo_token(torch.exp(logps - old_logps), _adv(advantages), eps_low, eps_high)
    return ((ppo + _k3(logps, ref_logps, beta)[0]) * mask).sum() / (mask.shape[0] * (max_len or mask.shape[1]))


def _dr_grpo_grad(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.2, beta=0.0,
                  max_len=0.0):
    return _ppo_token_grad(logps, old_logps, advantages, mask, ref_logps, eps_low, eps_high, beta) * mask \
        / (mask.shape[0] * (max_len or mask.shape[1]))


def dapo(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.28, beta=0.0):
    """DAPO: clip-higher (eps_high > eps_low) and token-level aggregation over the batch's active tokens.

    Math: L = (1/sum_i |o_i|) sum_i sum_t [-min(rho A_i, clip(rho, 1-eps_low, 1+eps_high) A_i) + beta k3].
    References: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale";
    TRL 1.16 GRPOTrainer loss_type="dapo" (normaliser num_items_in_batch, one process, no accumulation).
    Hyperparameters: eps_low, eps_high: the asymmetric clip range; beta: weight of the k3 KL.
    """
    ppo, _ = _ppo_token(torch.exp(logps - old_logps), _adv(advantages), eps_low, eps_high)
    return ((ppo + _k3(logps, ref_logps, beta)[0]) * mask).sum() * _token_level(mask)


def _dapo_grad(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.28, beta=0.0):
    return _ppo_token_grad(logps, old_logps, advantages, mask, ref_logps, eps_low, eps_high, beta) * mask \
        * _token_level(mask)


def cispo(logps, old_logps, advantages, mask, ref_logps=None, *, eps_max=5.0, beta=0.0):
    """CISPO: REINFORCE weighted by the detached importance ratio capped at eps_max; no token's gradient is zeroed.

    Math: L = (1/sum_i |o_i|) sum_i sum_t [-sg(min(rho, eps_max)) A_i l_t + beta k3].
    References: MiniMax 2025, "MiniMax-M1" (CISPO); TRL 1.16 GRPOTrainer loss_type="cispo" (eps_max is its
    epsilon_high; ScaleRL recommends 5.0).
    Hyperparameters: eps_max: cap on the importance weight; beta: weight of the k3 KL.
    """
    weight = torch.exp(logps - old_logps).clamp(max=eps_max).detach()
    per_token = -weight * _adv(advantages) * logps + _k3(logps, ref_logps, beta)[0]
    return (per_token * mask).sum() * _token_level(mask)


def _cispo_grad(logps, old_logps, advantages, mask, ref_logps=None, *, eps_max=5.0, beta=0.0):
    weight = torch.exp(logps - old_logps).clamp(max=eps_max)
    return (-weight * _adv(advantages) + _k3(logps, ref_logps, beta)[1]) * mask * _token_level(mask)


def gspo(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=3e-4, eps_high=4e-4, beta=0.0):
    """GSPO: one sequence-level ratio S_i = exp(mean_t (l - l_old)) per response, clipped as a whole.

    Math: L = (1/B) sum_i [-min(S_i A_i, clip(S_i, 1-eps_low, 1+eps_high) A_i) + (beta/|o_i|) sum_t k3].
    References: Zheng et al. 2025, "Group Sequence Policy Optimization"; TRL 1.16 GRPOTrainer
    loss_type="grpo" with importance_sampling_level="sequence".
    Hyperparameters: eps_low, eps_high: clip range of the sequence ratio; beta: weight of the k3 KL.
    """
    ppo, _ = _ppo_token(_seq_ratio(logps, old_logps, mask, mean=True), advantages[:, None], eps_low, eps_high)
    return ((ppo + _k3(logps, ref_logps, beta)[0]) * mask * _mean_per_response(mask)).sum()


def _gspo_grad(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=3e-4, eps_high=4e-4, beta=0.0):
    s, adv = _seq_ratio(logps, old_logps, mask, mean=True), advantages[:, None]
    _, clipped = _ppo_token(s, adv, eps_low, eps_high)
    # d S_i / d l_t = S_i / |o_i|; the (1/|o_i|) is the same factor as the KL term's mean, hence one normaliser.
    return (-s * adv * (~clipped).to(logps.dtype) + _k3(logps, ref_logps, beta)[1]) * mask * _mean_per_response(mask)


def rloo(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.2):
    """RLOO: PPO clip on the SUMMED sequence log-ratio with a leave-one-out advantage; mean over responses.

    The KL to the reference enters the reward (``rloo_advantages(..., kl=...)``), not this loss, as in TRL.

    Math: L = (1/B) sum_i -min(R_i A_i, clip(R_i, 1-eps_low, 1+eps_high) A_i), R_i = exp(sum_t (l - l_old)).
    References: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization" (RLOO);
    TRL 1.16 RLOOTrainer._compute_loss.
    Hyperparameters: eps_low, eps_high: clip range of the sequence ratio.
    """
    ppo, _ = _ppo_token(_seq_ratio(logps, old_logps, mask, mean=False), advantages[:, None], eps_low, eps_high)
    return ppo.sum() / mask.shape[0]


def _rloo_grad(logps, old_logps, advantages, mask, ref_logps=None, *, eps_low=0.2, eps_high=0.2):
    r, adv = _seq_ratio(logps, old_logps, mask, mean=False), advantages[:, None]
    _, clipped = _ppo_token(r, adv, eps_low, eps_high)
    return -r * adv * (~clipped).to(logps.dtype) * mask / mask.shape[0]


# ---- advantages ----


def group_advantages(rewards: Tensor, scale: str = "group") -> Tensor:
    """Return GRPO's group-relative advantages (r - mean_group r) / (std + 1e-4), shape (P, G) like ``rewards``.

    Args:
        rewards: (P, G) rewards of G responses for each of P prompts.
        scale: "group" (std of the group, Bessel-corrected as TRL's nanstd), "batch" (std over all P*G),
            or "none" (no std: Dr. GRPO).

    Math: A_i = (r_i - mean_g r) / (std r + 1e-4).
    References: Shao et al. 2024 (GRPO); TRL 1.16 GRPOTrainer (scale_rewards, 1e-4 added to the std).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"group_advantages: rewards must be (P, G) with G >= 2, got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(-1, keepdim=True)  # (P, G)
    if scale == "none":
        return centred
    if scale == "group":
        return centred / (rewards.std(-1, keepdim=True) + _ADV_EPS)
    if scale == "batch":
        return centred / (rewards.std() + _ADV_EPS)
    raise ValueError(f"group_advantages: scale must be one of group, batch, none; got {scale!r}")


def rloo_advantages(rewards: Tensor, kl: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """Return RLOO's leave-one-out advantages r_i - mean_{j != i} r_j, shape (P, G).

    Args:
        rewards: (P, G) rewards.
        kl: (P, G) summed per-response log-ratio sum_t (l_old - l_ref), or None; with beta > 0 the reward
            becomes r - beta kl first (TRL's RLOO puts the KL in the reward, not the loss).
        beta: the KL weight.

    Math: A_i = r_i - (sum_j r_j - r_i) / (G - 1).
    References: Ahmadian et al. 2024 (RLOO); TRL 1.16 RLOOTrainer (normalize_advantages=False).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rloo_advantages: rewards must be (P, G) with G >= 2, got {tuple(rewards.shape)}")
    if beta and kl is not None:
        rewards = rewards - beta * kl
    g = rewards.shape[1]
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (g - 1)


# ---- the registry ----


@dataclass(frozen=True)
class GroupLossSpec:
    """One group objective: the loss, its closed-form per-token weight w = dL/dl, and how it sets advantages.

    ``advantage`` is "group" / "none" (``group_advantages`` with that std scaling) or "loo"
    (``rloo_advantages``); ``ratio`` is "token" or "sequence" (which ratio the clip sees).
    """

    name: str
    fn: Callable[..., Tensor]
    grad: Callable[..., Tensor]
    advantage: str
    ratio: str
    defaults: Mapping[str, float]
    formula: str
    reference: str
    hyperparams: Mapping[str, str] = field(default_factory=dict)


_HELP = {
    "eps_low": "lower clip range: a negative-advantage token's ratio is clipped below 1 - eps_low; in [0, 1)",
    "eps_high": "upper clip range: a positive-advantage token's ratio is clipped above 1 + eps_high; >= 0",
    "eps_max": "cap on CISPO's detached importance weight min(rho, eps_max); > 0",
    "beta": "weight of the k3 KL estimate to the reference model (0: no reference is read); >= 0",
    "max_len": "Dr. GRPO's constant normaliser L_max (TRL's max_completion_length); 0 means the padded length T",
}
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "eps_low": (lambda v: 0 <= v < 1, "in [0, 1)"), "eps_high": (lambda v: v >= 0, ">= 0"),
    "eps_max": (lambda v: v > 0, "> 0"), "beta": (lambda v: v >= 0, ">= 0"), "max_len": (lambda v: v >= 0, ">= 0"),
}


def _docline(fn: Callable, key: str) -> str:
    """Return the ``key`` section ("Math:" or "References:") of ``fn``'s docstring as one line."""
    lines = inspect.getdoc(fn).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(key))
    section = [lines[start][len(key):]]
    for line in lines[start + 1:]:
        if line.split(" ", 1)[0] in ("Math:", "References:", "Hyperparameters:") or not line.strip():
            break
        section.append(line)
    return " ".join(part.strip() for part in section).rstrip(".")


def _spec(fn, grad, advantage: str, ratio: str) -> GroupLossSpec:
    defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    return GroupLossSpec(fn.__name__, fn, grad, advantage, ratio, defaults, _docline(fn, "Math:"),
                         _docline(fn, "References:"), {k: _HELP[k] for k in defaults})


GROUP_LOSSES: dict[str, GroupLossSpec] = {s.name: s for s in [
    _spec(grpo, _grpo_grad, "group", "token"),
    _spec(dr_grpo, _dr_grpo_grad, "none", "token"),
    _spec(dapo, _dapo_grad, "group", "token"),
    _spec(rloo, _rloo_grad, "loo", "sequence"),
    _spec(gspo, _gspo_grad, "group", "sequence"),
    _spec(cispo, _cispo_grad, "group", "token"),
]}


def group_loss_names() -> list[str]:
    """Return the registered group objectives in registry order."""
    return list(GROUP_LOSSES)


def get_group_loss(name: str) -> GroupLossSpec:
    """Return the GroupLossSpec called ``name``; raise ValueError listing the known names otherwise."""
    if name not in GROUP_LOSSES:
        raise ValueError(f"unknown group loss {name!r}; known group losses: {', '.join(GROUP_LOSSES)}")
    return GROUP_LOSSES[name]


def check_group_hparams(name: str, hparams: Mapping[str, float]) -> dict[str, float]:
    """Return the objective's hyperparameters (defaults overridden); refuse unknown names and invalid values.

    Names that a sibling objective declares (e.g. ``eps_max`` for ``grpo``) are dropped, so one config drives any.
    """
    spec = get_group_loss(name)
    for key in hparams:
        if key not in _RULES:
            raise ValueError(f"group loss {name!r}: unknown hyperparameter {key!r}; it takes {sorted(spec.defaults)}")
    merged = {**spec.defaults, **{k: v for k, v in hparams.items() if k in spec.defaults}}
    for key, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"group loss {name!r}: hyperparameter {key} must be a finite number, got {value!r}")
        if not _RULES[key][0](value):
            raise ValueError(f"group loss {name!r}: hyperparameter {key} must be {_RULES[key][1]}, got {value!r}")
    return merged


def _validated(name: str, logps, old_logps, advantages, mask, ref_logps, hparams) -> tuple[GroupLossSpec, dict]:
    """Check shapes, dtypes, finiteness and hyperparameters; return the spec and the merged hyperparameters."""
    spec, merged = get_group_loss(name), check_group_hparams(name, hparams)
    if not isinstance(logps, Tensor) or logps.dim() != 2 or not logps.is_floating_point():
        raise ValueError(f"group loss {name!r}: logps must be a float (B, T) tensor, got "
                         f"{tuple(logps.shape) if isinstance(logps, Tensor) else type(logps).__name__}")
    shape = tuple(logps.shape)
    needs_ref = merged.get("beta", 0.0) > 0
    named = {"old_logps": old_logps, "mask": mask, "ref_logps": ref_logps if needs_ref else None}
    if needs_ref and ref_logps is None:
        raise ValueError(f"group loss {name!r}: beta > 0 needs ref_logps, got None")
    for key, t in [("logps", logps)] + [(k, v) for k, v in named.items() if v is not None]:
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"group loss {name!r}: {key} has shape {got}, expected {shape} (the shape of logps)")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"group loss {name!r}: {key} has a NaN or inf entry at "
                             f"{(~torch.isfinite(t)).nonzero()[0].tolist()}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"group loss {name!r}: mask entries must be 0/1")
    allowed = [shape[:1]] + ([shape] if spec.ratio == "token" else [])
    if not isinstance(advantages, Tensor) or tuple(advantages.shape) not in allowed:
        got = tuple(advantages.shape) if isinstance(advantages, Tensor) else type(advantages).__name__
        per_token = f" or {shape} (per token)" if spec.ratio == "token" else ""
        raise ValueError(f"group loss {name!r}: advantages has shape {got}, expected {shape[:1]} (one per "
                         f"response){per_token}")
    if not bool(torch.isfinite(advantages).all()):
        raise ValueError(f"group loss {name!r}: advantages has a NaN or inf entry")
    return spec, merged


def compute_group_loss(name: str, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                       ref_logps: Tensor | None = None, **hparams) -> Tensor:
    """Validate the inputs and return the scalar batch loss of group objective ``name`` (module docstring)."""
    spec, hp = _validated(name, logps, old_logps, advantages, mask, ref_logps, hparams)
    return spec.fn(logps, old_logps.detach(), advantages, mask.to(logps.dtype), ref_logps, **hp)


def compute_group_weights(name: str, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                          ref_logps: Tensor | None = None, **hparams) -> Tensor:
    """Return the closed-form per-token weight w = dL/dlogps, (B, T), zero on padding and clipped tokens.

    Math: w < 0 pulls a token up, w > 0 pushes it down; at rho = 1, GRPO's w = -A_i / (|o_i| B).
    References: PAPER.md section 10 (the w_{i,t} of each objective).
    """
    spec, hp = _validated(name, logps, old_logps, advantages, mask, ref_logps, hparams)
    with torch.no_grad():
        return spec.grad(logps.detach(), old_logps.detach(), advantages, mask.to(logps.dtype), ref_logps, **hp)


def clipped_tokens(name: str, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor,
                   **hparams) -> Tensor:
    """Return the (B, T) bool mask of tokens whose gradient the clip removes (CISPO: where the cap binds).

    TRL logs the mean of this over active tokens as clip_ratio/region_mean (cispo_clip_ratio for CISPO).
    """
    spec, hp = _validated(name, logps, old_logps, advantages, mask, None, {**hparams, "beta": 0.0})
    with torch.no_grad():
        adv, m = _adv(advantages), mask.bool()
        if spec.name == "cispo":
            return (torch.exp(logps - old_logps) > hp["eps_max"]) & (adv > 0) & m
        ratio = torch.exp(logps - old_logps) if spec.ratio == "token" else \
            _seq_ratio(logps, old_logps, mask.to(logps.dtype), mean=spec.name == "gspo")
        return _ppo_token(ratio, adv, hp["eps_low"], hp["eps_high"])[1].expand_as(m) & m


@dataclass(frozen=True)
class GroupResidual:
    """The residual of a group objective at one batch.

    Attributes:
        G: (B, T, V) dL/dz at every completion position (zero on padding and on clipped tokens).
        weights: (B, T) w = dL/dl per token.
        clipped: (B, T) bool, tokens whose gradient the clip removed.
    """

    G: Tensor
    weights: Tensor
    clipped: Tensor


def group_residual(name: str, z: Tensor, y: Tensor, mask: Tensor, old_logps: Tensor, advantages: Tensor,
                   ref_logps: Tensor | None = None, *, temperature: float = 1.0, **hparams) -> GroupResidual:
    """Compute G = dL/dz per token for a group objective on teacher-forced sampled responses.

    Args:
        name: a registered group objective (``group_loss_names()``).
        z: (B, T, V) raw logits; the policy is softmax(z / temperature), as in TRL's sampler and loss.
        y: (B, T) int sampled tokens; any value on padding.
        mask: (B, T) 0/1, 1 on completion tokens.
        old_logps, advantages, ref_logps, **hparams: as in ``compute_group_loss``.
        temperature: the sampling temperature T > 0 the logits are divided by.

    Returns:
        GroupResidual with G (B, T, V).

    Math: G_{i,t} = w_{i,t} (e_{y_t} - pi_t) / temperature, pi = softmax(z / temperature).
    References: PAPER.md section 10; Ren & Sutherland 2025, Section 3 (G^(a) = (dL/dlp_a)(e_y - pi)).
    """
    if not isinstance(z, Tensor) or z.dim() != 3 or tuple(z.shape[:2]) != tuple(y.shape):
        raise ValueError(f"group_residual: z must be (B, T, V) matching y {tuple(y.shape)}, got "
                         f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__}")
    if not temperature > 0:
        raise ValueError(f"group_residual: temperature must be > 0, got {temperature!r}")
    logp_all = torch.log_softmax(z / temperature, dim=-1)  # (B, T, V)
    y = torch.where(mask.bool(), y.long(), torch.zeros_like(y, dtype=torch.long))  # (B, T) padding -> id 0
    logps = logp_all.gather(-1, y[..., None])[..., 0]  # (B, T)
    w = compute_group_weights(name, logps, old_logps, advantages, mask, ref_logps, **hparams)
    onehot = torch.nn.functional.one_hot(y, z.shape[-1]).to(z.dtype)  # (B, T, V)
    G = w[..., None] * (onehot - logp_all.exp()) / temperature  # (B, T, V)
    clipped = clipped_tokens(name, logps, old_logps, advantages, mask,
                             **{k: v for k, v in hparams.items() if k != "beta"})
    return GroupResidual(G.detach(), w, clipped)
