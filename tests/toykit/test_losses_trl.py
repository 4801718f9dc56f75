"""Every loss TRL 1.16's DPOTrainer, CPOTrainer and ORPOTrainer implement equals the registry's value and
gradient on random float64 tensors: TRL's own loss code runs on our tensors through a minimal stand-in for
the trainer and the model (fused-LM-head outputs), with each convention option (per-token IPO, batch
token-mean NLL) mapped to its named variant. Skipped when trl is not installed (CI installs it)."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from toykit.losses import compute_loss, compute_loss_grad

N, L = 5, 6
BETA, EPS, TAU, ALPHA = 0.6, 0.15, 0.3, 0.7

# TRL loss_type (or list of types with weights) -> (our loss, its hyperparameters)
DPO_TRAINER = {
    "sigmoid": ("dpo", {"beta": BETA}),
    "hinge": ("hinge", {"beta": BETA}),
    "ipo": ("ipo_norm", {"beta": BETA}),  # TRL averages IPO's log-ratios per token
    "exo_pair": ("exo_pair", {"beta": BETA, "eps": EPS}),
    "nca_pair": ("nca", {"beta": BETA}),
    "robust": ("robust", {"beta": BETA, "eps": EPS}),
    "bco_pair": ("bco_pair", {"beta": BETA}),
    "sppo_hard": ("sppo_hard", {"beta": BETA}),
    "aot": ("aot", {"beta": BETA, "eps": EPS}),
    "aot_unpaired": ("aot_unpaired", {"beta": BETA, "eps": EPS}),
    "apo_zero": ("apo_zero", {"beta": BETA}),
    "apo_down": ("apo_down", {"beta": BETA}),
    "discopop": ("discopop", {"beta": BETA, "tau": TAU}),
    "sigmoid_norm": ("dpo_norm", {"beta": BETA}),
    "sigmoid+sft": ("rpo_batch", {"beta": BETA, "alpha": ALPHA}),  # RPO: loss_type=["sigmoid", "sft"]
}


def _tokens(seed):
    """(2N, L) per-token log-probs (zero off the mask, as TRL's fused head returns them), the mask, references."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 2, 4, 1, 5, 3, 6, 2, 5, 4])
    mask = (torch.arange(L)[None] < lengths[:, None]).to(torch.float64)  # (2N, L), [chosen; rejected]
    tok = -2.5 * torch.rand(2 * N, L, generator=g, dtype=torch.float64) * mask
    ref = (tok * mask).sum(1) + 2 * torch.randn(2 * N, generator=g, dtype=torch.float64)
    return tok, mask, ref


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(t):
        return t

    gather_for_metrics = gather


def _trl_dpo_loss(loss_type, tok):
    """Run DPOTrainer._compute_loss on per-token log-probs ``tok`` (requires grad), refs precomputed."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    _, mask, ref = _tokens(0)
    types, weights = (["sigmoid", "sft"], [1.0, ALPHA]) if loss_type == "sigmoid+sft" else ([loss_type], [1.0])
    completion_mask = torch.cat([torch.zeros(2 * N, 1), mask], 1).long()  # column 0: the prompt's last token
    outputs = SimpleNamespace(log_probs=tok, entropy=torch.zeros_like(tok), mean_logits=torch.zeros_like(tok),
                              is_top1=torch.zeros_like(tok, dtype=torch.bool))
    stub = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=types, loss_weights=weights,
        beta=BETA, label_smoothing=EPS, args=SimpleNamespace(discopop_tau=TAU), use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:N], "ref_rejected_logps": ref[N:]}
    return dpo_trainer.DPOTrainer._compute_loss(stub, lambda **kw: outputs, inputs, return_outputs=False)


def _ours(name, hp, tok, mask, ref):
    lp = (tok * mask).sum(1)
    n = mask.sum(1).long()
    return dict(chosen_logps=lp[:N], rejected_logps=lp[N:], ref_chosen_logps=ref[:N], ref_rejected_logps=ref[N:],
                chosen_lengths=n[:N], rejected_lengths=n[N:], **hp)


@pytest.mark.parametrize("loss_type", list(DPO_TRAINER))
def test_dpo_trainer_loss_equals_registry_value_and_gradient(loss_type):
    name, hp = DPO_TRAINER[loss_type]
    tok, mask, ref = _tokens(0)
    x = tok.clone().requires_grad_(True)
    want = _trl_dpo_loss(loss_type, x)
    want_grad, = torch.autograd.grad(want, x)
    kw = _ours(name, hp, tok, mask, ref)
    # TRL builds exo_pair's log(eps), log(1 - eps) from a float32 tensor: agreement to float32 rounding there.
    rtol = 1e-7 if loss_type == "exo_pair" else 1e-12
    torch.testing.assert_close(compute_loss(name, **kw).mean(), want.detach(), rtol=rtol, atol=1e-14)
    g_c, g_r = compute_loss_grad(name, **kw)
    # TRL's loss is the batch mean, so each token of response i carries (1/N) dL/dlp_i (TRL's fused head
    # returns 0 off the completion, so only completion tokens are compared).
    grad = torch.cat([g_c, g_r])[:, None] / N * mask  # (2N, L)
    torch.testing.assert_close(grad, want_grad * mask, rtol=1e-11 if rtol < 1e-7 else 1e-6, atol=1e-14)


def test_trl_sft_alone_is_the_batch_token_mean_nll_and_ipo_differs_from_summed_ipo():
    tok, mask, ref = _tokens(1)
    want = _trl_dpo_loss("sft", tok)
    torch.testing.assert_close(want, -(tok[:N] * mask[:N]).sum() / mask[:N].sum())
    kw = _ours("rpo_batch", {"beta": BETA, "alpha": 1.0}, tok, mask, ref)
    nll = compute_loss("rpo_batch", **kw) - compute_loss("dpo", **{k: v for k, v in kw.items() if k != "alpha"})
    torch.testing.assert_close(nll.mean(), want, rtol=1e-12, atol=1e-14)
    summed = compute_loss("ipo", **_ours("ipo", {"beta": BETA}, tok, mask, ref)).mean()
    assert abs(float(summed - _trl_dpo_loss("ipo", tok))) > 1e-3  # the convention matters: not the same loss


@pytest.mark.parametrize("loss_type, name, hp, per_token", [
    ("sigmoid", "cdpo", {"beta": BETA, "eps": EPS}, False),
    ("hinge", "hinge", {"beta": BETA}, False),
    ("ipo", "ipo_norm", {"beta": BETA}, True),  # CPO averages log-probs per token for ipo and simpo
    ("simpo", "simpo", {"beta": BETA, "gamma": 0.4}, True),
])
def test_cpo_losses_equal_the_registry_without_a_reference(loss_type, name, hp, per_token):
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    tok, mask, _ = _tokens(2)
    lp = (tok * mask).sum(1).requires_grad_(True)
    n = mask.sum(1)
    shown = lp / n if per_token else lp
    stub = SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=BETA, simpo_gamma=hp.get("gamma", 0.0),
                           label_smoothing=EPS if loss_type == "sigmoid" else 0.0, accelerator=_Accelerator())
    want = cpo.CPOTrainer.cpo_loss(stub, shown[:N], shown[N:])[0]
    want_grad, = torch.autograd.grad(want.sum(), lp)
    zero = torch.zeros(N, dtype=torch.float64)
    kw = dict(chosen_logps=lp.detach()[:N], rejected_logps=lp.detach()[N:], ref_chosen_logps=zero,
              ref_rejected_logps=zero, chosen_lengths=n[:N].long(), rejected_lengths=n[N:].long(), **hp)
    torch.testing.assert_close(compute_loss(name, **kw), want.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat(compute_loss_grad(name, **kw)), want_grad, rtol=1e-11, atol=1e-14)


def test_orpo_odds_ratio_term_equals_trl():
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    tok, mask, _ = _tokens(3)
    lp = (tok * mask).sum(1).requires_grad_(True)
    n = mask.sum(1)
    stub = SimpleNamespace(beta=BETA, accelerator=_Accelerator())
    ratio_term = orpo.ORPOTrainer.odds_ratio_loss(stub, lp[:N] / n[:N], lp[N:] / n[N:])[0]  # beta log s(log odds)
    want = -(lp[:N] / n[:N]) - ratio_term  # ORPO: NLL (per-token mean) minus the odds-ratio term
    want_grad, = torch.autograd.grad(want.sum(), lp)
    kw = dict(chosen_logps=lp.detach()[:N], rejected_logps=lp.detach()[N:], chosen_lengths=n[:N].long(),
              rejected_lengths=n[N:].long(), beta=BETA)
    # TRL casts to float32 inside odds_ratio_loss: agreement to float32 rounding
    torch.testing.assert_close(compute_loss("orpo", **kw), want.detach().double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.cat(compute_loss_grad("orpo", **kw)), want_grad.double(), rtol=1e-5, atol=1e-7)
