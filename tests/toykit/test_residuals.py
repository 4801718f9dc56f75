"""Closed-form G = dL/dz against autograd of the registry's loss through log-softmax, for every loss:
single softmax outputs (shared and separate inputs) and teacher-forced sequences with padding masks."""

import pytest
import torch

from toykit.losses import compute_loss, compute_loss_grad, get_loss, loss_names
from toykit.residuals import residual, sequence_residual

HPARAMS = {"beta": 0.7, "eps": 0.2, "lam": 0.3, "delta": 2.0, "gamma": 0.8, "alpha": 0.5, "tau": 0.3}
N, V = 5, 7


def _hparams(name):
    return {k: HPARAMS[k] for k in get_loss(name).defaults}


def _labels(g):
    """Distinct chosen and rejected labels per example."""
    y_c = torch.randint(0, V, (N,), generator=g)
    return y_c, (y_c + torch.randint(1, V, (N,), generator=g)) % V


def _refs(g, scale=3.0):
    return -scale * torch.rand(N, generator=g, dtype=torch.float64), -scale * torch.rand(N, generator=g,
                                                                                         dtype=torch.float64)


def _logp(z, y):
    return torch.log_softmax(z, -1).gather(-1, y[:, None])[:, 0]  # (N,)


@pytest.mark.parametrize("name", loss_names())
def test_single_softmax_G_matches_autograd_on_shared_input(name):
    g = torch.Generator().manual_seed(10)
    z = (2 * torch.randn(N, V, generator=g, dtype=torch.float64)).requires_grad_(True)
    y_c, y_r = _labels(g)
    ref_c, ref_r = _refs(g)
    hp = _hparams(name)
    loss = compute_loss(name, chosen_logps=_logp(z, y_c), rejected_logps=_logp(z, y_r), ref_chosen_logps=ref_c,
                        ref_rejected_logps=ref_r, **hp)
    (auto,) = torch.autograd.grad(loss.sum(), z)
    res = residual(name, z.detach(), y_c, y_rejected=y_r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, **hp)
    assert res.G.shape == (N, V) and res.G.dtype == torch.float64
    torch.testing.assert_close(res.G, auto, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res.G.sum(-1), torch.zeros(N, dtype=torch.float64), rtol=0, atol=1e-13)  # 1^T G = 0


@pytest.mark.parametrize("name", loss_names())
def test_single_softmax_G_per_response_on_separate_inputs(name):
    g = torch.Generator().manual_seed(11)
    z_c = torch.randn(N, V, generator=g, dtype=torch.float64).requires_grad_(True)
    z_r = torch.randn(N, V, generator=g, dtype=torch.float64).requires_grad_(True)
    y_c, y_r = _labels(g)
    ref_c, ref_r = _refs(g)
    hp = _hparams(name)
    lp_c, lp_r = _logp(z_c, y_c), _logp(z_r, y_r)
    loss = compute_loss(name, chosen_logps=lp_c, rejected_logps=lp_r, ref_chosen_logps=ref_c,
                        ref_rejected_logps=ref_r, **hp)
    auto_c, auto_r = torch.autograd.grad(loss.sum(), (z_c, z_r), allow_unused=True)
    res = residual(name, z_c.detach(), y_c, z_r.detach(), y_r, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r,
                   **hp)
    torch.testing.assert_close(res.G_chosen, auto_c, rtol=1e-12, atol=1e-14)
    w_c, w_r = compute_loss_grad(name, chosen_logps=lp_c.detach(), rejected_logps=lp_r.detach(),
                                 ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, **hp)
    torch.testing.assert_close(res.weight_chosen, w_c)
    if get_loss(name).paired:
        torch.testing.assert_close(res.G_rejected, auto_r, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(res.weight_rejected, w_r)
    else:
        assert res.G_rejected is None and res.weight_rejected is None and auto_r is None


def _sequence(g, length, v=V):
    """Logits, targets with -100 padding, and a right-padded mask with at least one response token per row."""
    z = torch.randn(N, length, v, generator=g, dtype=torch.float64).requires_grad_(True)
    lengths = torch.randint(1, length + 1, (N,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (N, L)
    y = torch.where(mask, torch.randint(0, v, (N, length), generator=g), torch.full((N, length), -100))
    return z, y, mask


def _seq_logp(z, y, mask):
    safe = torch.where(mask, y, 0)
    return (torch.log_softmax(z, -1).gather(-1, safe[..., None])[..., 0] * mask).sum(-1)  # (N,) summed


@pytest.mark.parametrize("name", loss_names())
def test_sequence_G_matches_autograd_with_padding(name):
    g = torch.Generator().manual_seed(12)
    z_c, y_c, m_c = _sequence(g, 6)
    z_r, y_r, m_r = _sequence(g, 4)
    ref_c, ref_r = _refs(g, scale=20.0)
    hp = _hparams(name)
    loss = compute_loss(name, chosen_logps=_seq_logp(z_c, y_c, m_c), rejected_logps=_seq_logp(z_r, y_r, m_r),
                        ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, chosen_lengths=m_c.sum(-1),
                        rejected_lengths=m_r.sum(-1), **hp)
    auto_c, auto_r = torch.autograd.grad(loss.sum(), (z_c, z_r), allow_unused=True)
    res = sequence_residual(name, z_c.detach(), y_c, m_c, z_r.detach(), y_r, m_r.to(torch.int64),
                            ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, **hp)
    assert res.G_chosen.shape == (N, 6, V)
    torch.testing.assert_close(res.G_chosen, auto_c, rtol=1e-12, atol=1e-14)
    assert bool((res.G_chosen[~m_c] == 0).all())
    if get_loss(name).paired:
        torch.testing.assert_close(res.G_rejected, auto_r, rtol=1e-12, atol=1e-14)
        assert res.G is None  # different lengths: the two responses do not share an input
    else:
        assert res.G_rejected is None and res.G is res.G_chosen


def test_sft_G_is_pi_minus_onehot_and_a_one_token_sequence_equals_the_single_output():
    g = torch.Generator().manual_seed(13)
    z = torch.randn(N, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (N,), generator=g)
    res = residual("sft", z, y)
    torch.testing.assert_close(res.G, torch.softmax(z, -1) - torch.nn.functional.one_hot(y, V).double())
    y_r = (y + 1) % V
    ref = torch.zeros(N, dtype=torch.float64)
    single = residual("simpo", z, y, z, y_r, gamma=0.3)
    seq = sequence_residual("simpo", z[:, None], y[:, None], torch.ones(N, 1), z[:, None], y_r[:, None],
                            torch.ones(N, 1), ref_chosen_logps=ref, gamma=0.3)
    torch.testing.assert_close(seq.G[:, 0], single.G)


def test_dpo_pushes_the_rejected_label_down_and_the_chosen_label_up():
    z = torch.tensor([[2.0, 0.0, -3.0]], dtype=torch.float64)
    ref = torch.zeros(1, dtype=torch.float64)
    res = residual("dpo", z, torch.tensor([1]), y_rejected=torch.tensor([2]), ref_chosen_logps=ref,
                   ref_rejected_logps=ref)
    # A gradient step moves z by -eta G: the chosen logit rises, the rejected (a valley) falls.
    assert float(res.G_chosen[0, 1]) < 0 < float(res.G_rejected[0, 2])
    assert float(res.weight_chosen[0]) == pytest.approx(-float(res.weight_rejected[0]))


def test_bad_inputs_are_refused_with_what_and_where():
    z = torch.zeros(3, V, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    bad = z.clone()
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"residual\(z_chosen\): logits have a NaN or inf entry at index \[1, 4\]"):
        residual("sft", bad, y)
    with pytest.raises(ValueError, match=r"residual\(y_chosen\): expected shape \(3,\), got \(2,\)"):
        residual("sft", z, y[:2])
    with pytest.raises(ValueError, match=r"residual\(y_chosen\): label 7 at index \[2\] is outside \[0, 7\)"):
        residual("sft", z, torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match=r"paired and needs y_rejected"):
        residual("dpo", z, y)
    with pytest.raises(ValueError, match=r"residual\(z_rejected\): expected shape \(3, 7\), got \(3, 6\)"):
        residual("slic", z, y, z[:, :6], y)
    with pytest.raises(ValueError, match=r"loss 'dpo' needs ref_chosen_logps"):
        residual("dpo", z, y, y_rejected=y)
    with pytest.raises(ValueError, match=r"loss 'dpo': hyperparameter beta must be > 0"):
        residual("dpo", z, y, y_rejected=y, ref_chosen_logps=z[:, 0], ref_rejected_logps=z[:, 0], beta=-0.1)
    with pytest.raises(ValueError, match=r"unknown loss 'dp'"):
        residual("dp", z, y)
    zs = torch.zeros(3, 4, V, dtype=torch.float64)
    ys = torch.zeros(3, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"mask_chosen\): expected a 0/1 tensor of shape \(3, 4\), got \(3, 5\)"):
        sequence_residual("sft", zs, ys, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"mask_chosen\): row 1 selects no response tokens"):
        sequence_residual("sft", zs, ys, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"z_chosen\): expected logits of shape \(N, L, V\), got \(3, 7\)"):
        sequence_residual("sft", z, ys, torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"needs z_rejected, y_rejected and mask_rejected"):
        sequence_residual("ipo", zs, ys, torch.ones(3, 4))
