"""The GRPO family: closed-form w and G against autograd (inside and outside the clip zones, with the length
normaliser), the objectives against TRL 1.16's own _compute_loss on random float64 tensors, the advantages
against TRL's formulas, known values at the on-policy step, and input validation."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from toykit.group_losses import (GROUP_LOSSES, clipped_tokens, compute_group_loss, compute_group_weights,
                                 get_group_loss, group_advantages, group_loss_names, group_residual,
                                 rloo_advantages)

B, T, V = 6, 7, 5


def _batch(seed=0, spread=0.4, beta=0.0):
    """Random per-token log-probs, a ragged mask and old log-probs off by up to ``spread`` nats per token, so
    ratios fall on both sides of every clip range; advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    logps = -3 * torch.rand(B, T, generator=g, dtype=torch.float64) - 0.05
    old = logps + spread * (2 * torch.rand(B, T, generator=g, dtype=torch.float64) - 1)
    lengths = torch.tensor([7, 3, 5, 1, 6, 4])
    mask = (torch.arange(T)[None] < lengths[:, None]).to(torch.float64)
    adv = torch.tensor([1.3, -0.7, 0.4, -1.9, 0.0, 0.9], dtype=torch.float64)
    ref = logps + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    return logps, old, adv, mask, ref


HP = {  # clip ranges small enough that some tokens (or, for sequence ratios, responses) clip and some do not
    "grpo": {"eps_low": 0.1, "eps_high": 0.1}, "dr_grpo": {"eps_low": 0.1, "eps_high": 0.15, "max_len": 9},
    "dapo": {"eps_low": 0.1, "eps_high": 0.2}, "cispo": {"eps_max": 1.1},
    "gspo": {"eps_low": 0.05, "eps_high": 0.05}, "rloo": {"eps_low": 0.3, "eps_high": 0.3},
}


def test_registry_lists_the_family_with_documented_formulas():
    assert group_loss_names() == ["grpo", "dr_grpo", "dapo", "rloo", "gspo", "cispo"]
    for spec in GROUP_LOSSES.values():
        assert spec.formula.startswith("L = ") and "TRL" in spec.reference
        assert set(spec.hyperparams) == set(spec.defaults) and all(spec.hyperparams.values())
    assert get_group_loss("dapo").defaults["eps_high"] == 0.28 and get_group_loss("dr_grpo").advantage == "none"


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("name", group_loss_names())
def test_closed_form_weights_match_autograd_inside_and_outside_the_clip(name, beta):
    if name == "rloo" and beta:
        pytest.skip("RLOO's KL is part of the reward, not the loss")
    logps, old, adv, mask, ref = _batch(seed=1)
    hp = {**HP[name], **({"beta": beta} if beta else {})}
    x = logps.clone().requires_grad_(True)
    auto, = torch.autograd.grad(compute_group_loss(name, x, old, adv, mask, ref, **hp), x)
    w = compute_group_weights(name, logps, old, adv, mask, ref, **hp)
    torch.testing.assert_close(w, auto, rtol=1e-12, atol=1e-15)
    clipped = clipped_tokens(name, logps, old, adv, mask, **HP[name])
    active = mask.bool() & (adv[:, None] != 0)
    assert bool((clipped & active).any()) and bool((~clipped & active).any()), "both zones must be exercised"
    if name != "cispo" and not beta:
        assert bool((w[clipped] == 0).all()) and bool((w[~clipped & active] != 0).all())
    if name == "cispo":  # the cap binds but never zeroes a token
        assert bool((w[active] != 0).all())
    assert bool((w[~mask.bool()] == 0).all())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("name", group_loss_names())
def test_residual_G_matches_autograd_through_the_logits(name, temperature):
    g = torch.Generator().manual_seed(5)
    z = 2 * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (B, T), generator=g)
    _, _, adv, mask, _ = _batch()
    logps0 = torch.log_softmax(z / temperature, -1).gather(-1, y[..., None])[..., 0]
    old = logps0 + 0.4 * (2 * torch.rand(B, T, generator=g, dtype=torch.float64) - 1)
    zz = z.clone().requires_grad_(True)
    logps = torch.log_softmax(zz / temperature, -1).gather(-1, y[..., None])[..., 0]  # (B, T)
    auto, = torch.autograd.grad(compute_group_loss(name, logps, old, adv, mask, **HP[name]), zz)
    res = group_residual(name, z, y, mask, old, adv, temperature=temperature, **HP[name])
    torch.testing.assert_close(res.G, auto, rtol=1e-10, atol=1e-14)
    assert bool((res.G[~mask.bool()] == 0).all())
    torch.testing.assert_close(res.G.sum(-1), torch.zeros(B, T, dtype=torch.float64), atol=1e-14, rtol=0)


def test_on_policy_weights_are_the_papers_closed_forms():
    logps, _, adv, mask, _ = _batch()
    n = mask.sum(-1, keepdim=True)
    w = {k: compute_group_weights(k, logps, logps, adv, mask) for k in group_loss_names()}
    torch.testing.assert_close(w["grpo"], -adv[:, None] / (n * B) * mask)  # -A_i / (|o_i| B)
    torch.testing.assert_close(w["gspo"], w["grpo"])  # S_i = 1: GSPO equals GRPO at rho = 1
    torch.testing.assert_close(w["dr_grpo"], -adv[:, None] / (B * T) * mask)  # no length bias
    torch.testing.assert_close(w["dapo"], -adv[:, None] / mask.sum() * mask)
    torch.testing.assert_close(w["cispo"], w["dapo"])
    torch.testing.assert_close(w["rloo"], -adv[:, None] / B * mask)  # summed log-prob: the push grows with |o_i|
    # A_i < 0: every token of the response is pushed down (w > 0) with equal weight.
    assert bool((w["grpo"][1, :3] > 0).all()) and torch.unique(w["grpo"][1, :3]).numel() == 1


def test_advantages_match_trl_formulas_and_leave_one_out():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [2.0, -1.0, 0.0, 3.0]], dtype=torch.float64)
    trl_utils = pytest.importorskip("trl.trainer.utils")
    flat = rewards.view(-1)
    mean = rewards.mean(1).repeat_interleave(4)
    std = trl_utils.nanstd(rewards, dim=1).repeat_interleave(4)
    torch.testing.assert_close(group_advantages(rewards).view(-1), (flat - mean) / (std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, "batch").view(-1),
                               (flat - mean) / (trl_utils.nanstd(flat) + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, "none").view(-1), flat - mean)
    assert bool((group_advantages(rewards)[1] == 0).all())  # a solved or failed group carries no signal
    loo = rloo_advantages(rewards)
    torch.testing.assert_close(loo[0, 0], torch.tensor(1.0 - 1.0 / 3, dtype=torch.float64))
    torch.testing.assert_close(loo, (rewards - rewards.mean(1, keepdim=True)) * 4 / 3)  # G/(G-1) x centred


# ---- TRL 1.16's own loss code, called on our tensors through a minimal stand-in for the trainer ----


class _Accelerator:
    num_processes = 1

    @staticmethod
    def reduce(t, reduction="sum"):
        return t

    @staticmethod
    def gather(t):
        return t

    gather_for_metrics = gather


def _trl_self(loss_type, level, hp, logps):
    beta = hp.get("beta", 0.0)
    eps_high = hp.get("eps_max", hp.get("eps_high", 0.2))
    return SimpleNamespace(
        loss_type=loss_type, importance_sampling_level=level, beta=beta, epsilon_low=hp.get("eps_low", 0.2),
        epsilon_high=eps_high, top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        aux_loss_enabled=False, _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1,
        max_completion_length=int(hp.get("max_len") or T), model=SimpleNamespace(training=True),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=_Accelerator(), _metrics=defaultdict(lambda: defaultdict(list)),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))


_TRL_NAMES = {"grpo": ("grpo", "token"), "dr_grpo": ("dr_grpo", "token"), "dapo": ("dapo", "token"),
              "cispo": ("cispo", "token"), "gspo": ("grpo", "sequence")}


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("name", group_loss_names())
def test_each_objective_equals_trl_value_and_gradient(name, beta):
    trainers = pytest.importorskip("trl.trainer.grpo_trainer")
    logps, old, adv, mask, ref = _batch(seed=3)
    hp = {**HP[name], **({"beta": beta} if beta and name != "rloo" else {})}
    x = logps.clone().requires_grad_(True)
    ids = torch.zeros(B, T, dtype=torch.long)
    if name == "rloo":
        rloo_mod = pytest.importorskip("trl.trainer.rloo_trainer")
        stub = _trl_self("rloo", "sequence", hp, x)
        inputs = {"prompt_ids": ids[:, :1], "prompt_mask": ids[:, :1] + 1, "completion_ids": ids,
                  "completion_mask": mask, "old_logps": (old * mask).sum(1), "advantages": adv}
        want = rloo_mod.RLOOTrainer._compute_loss(stub, None, inputs)
    else:
        stub = _trl_self(*_TRL_NAMES[name], hp, x)
        inputs = {"prompt_ids": ids[:, :1], "prompt_mask": ids[:, :1] + 1, "completion_ids": ids,
                  "completion_mask": mask, "advantages": adv, "old_per_token_logps": old,
                  "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
        want = trainers.GRPOTrainer._compute_loss(stub, None, inputs)
    want_grad, = torch.autograd.grad(want, x)
    got = compute_group_loss(name, logps, old, adv, mask, ref, **hp)
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(compute_group_weights(name, logps, old, adv, mask, ref, **hp), want_grad,
                               rtol=1e-12, atol=1e-15)
    if name in ("grpo", "dapo", "dr_grpo"):  # our clip mask is the one TRL logs
        frac = float(clipped_tokens(name, logps, old, adv, mask, **HP[name]).sum() / mask.sum())
        assert frac == pytest.approx(stub._metrics["train"]["clip_ratio/region_mean"][0], abs=1e-12)


def test_bad_inputs_are_refused_naming_what():
    logps, old, adv, mask, ref = _batch()
    with pytest.raises(ValueError, match=r"unknown group loss 'grp'; known group losses: grpo, dr_grpo"):
        compute_group_loss("grp", logps, old, adv, mask)
    with pytest.raises(ValueError, match=r"old_logps has shape \(6, 6\), expected \(6, 7\)"):
        compute_group_loss("grpo", logps, old[:, :6], adv, mask)
    with pytest.raises(ValueError, match=r"advantages has shape \(5,\), expected \(6,\)"):
        compute_group_loss("dapo", logps, old, adv[:5], mask)
    with pytest.raises(ValueError, match=r"beta > 0 needs ref_logps"):
        compute_group_loss("grpo", logps, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match=r"hyperparameter eps_low must be in \[0, 1\), got 1.5"):
        compute_group_loss("grpo", logps, old, adv, mask, eps_low=1.5)
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'epsilon'"):
        compute_group_loss("grpo", logps, old, adv, mask, epsilon=0.2)
    with pytest.raises(ValueError, match=r"rewards must be \(P, G\) with G >= 2"):
        group_advantages(torch.ones(3, 1))
    # hyperparameters of a sibling objective are accepted and ignored, so one config drives any of them
    torch.testing.assert_close(compute_group_loss("cispo", logps, old, adv, mask, eps_low=0.3),
                               compute_group_loss("cispo", logps, old, adv, mask))


@pytest.mark.parametrize("name", ["grpo", "dapo", "cispo"])
def test_per_token_advantages_match_autograd_and_trl(name):
    trainers = pytest.importorskip("trl.trainer.grpo_trainer")
    logps, old, adv, mask, ref = _batch(seed=4)
    adv_tok = adv[:, None] * torch.linspace(0.0, 1.0, T, dtype=torch.float64)[None]  # (B, T): NTHR-style weights
    x = logps.clone().requires_grad_(True)
    stub = _trl_self(*_TRL_NAMES[name], HP[name], x)
    ids = torch.zeros(B, T, dtype=torch.long)
    inputs = {"prompt_ids": ids[:, :1], "prompt_mask": ids[:, :1] + 1, "completion_ids": ids,
              "completion_mask": mask, "advantages": adv_tok, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    want = trainers.GRPOTrainer._compute_loss(stub, None, inputs)
    want_grad, = torch.autograd.grad(want, x)
    torch.testing.assert_close(compute_group_loss(name, logps, old, adv_tok, mask, **HP[name]), want.detach())
    torch.testing.assert_close(compute_group_weights(name, logps, old, adv_tok, mask, **HP[name]), want_grad)
    with pytest.raises(ValueError, match=r"advantages has shape \(6, 7\), expected \(6,\) \(one per response\)$"):
        compute_group_loss("gspo", logps, old, adv_tok, mask)
