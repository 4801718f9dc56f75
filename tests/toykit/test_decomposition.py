"""Proposition 1: -eta A K G against the real step (eta^2 law), the inner-product form, closed forms, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from toykit.decomposition import decompose, diagonal_preconditioner, eta_sweep, loglog_slope
from toykit.models import MLP, LinearSoftmax, SmallConvNet
from toykit.ntk import linear_softmax_ntk

F64 = torch.float64
ETAS = np.logspace(-4, -2, 5)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _setup(name: str, seed: int = 0):
    g = _gen(seed)
    model, shape = {
        "linear": lambda: (LinearSoftmax(5, 6, generator=g).double(), (5,)),
        "mlp": lambda: (MLP(5, 8, 6, depth=3, generator=g).double(), (5,)),
        "conv": lambda: (SmallConvNet(1, side=6, num_classes=6, channels=3, generator=g).double(), (1, 6, 6)),
    }[name]()
    x_o = torch.randn(4, *shape, generator=g, dtype=F64)
    x_u = torch.randn(*shape, generator=g, dtype=F64)
    return model, x_o, x_u


def _random_preconditioner(model, seed: int):
    g = _gen(seed)
    v = {k: torch.rand(p.shape, generator=g, dtype=F64) for k, p in model.named_parameters()}
    return diagonal_preconditioner(v, eps=1e-2)


@pytest.mark.parametrize("name", ["linear", "mlp", "conv"])
@pytest.mark.parametrize("loss, extra", [("sft", {}), ("dpo", {"y_rejected": 2})])
def test_prediction_error_shrinks_like_eta_squared(name, loss, extra):
    model, x_o, x_u = _setup(name)
    sweep = eta_sweep(model, x_o, x_u, 1, ETAS, loss=loss, **extra)
    assert 1.8 <= sweep.slope <= 2.2, sweep.errors
    # pi^T Delta log pi = -KL(pi || pi') is second order as well.
    assert 1.8 <= sweep.drift_slope <= 2.2, sweep.mass_drift
    # The prediction is not vacuous: at the smallest eta it explains the change to a relative 1e-3.
    d = decompose(model, x_o, x_u, 1, loss=loss, eta=float(ETAS[0]), **extra)
    assert d.error < 1e-3 * float(torch.linalg.vector_norm(d.actual))
    assert d.error == pytest.approx(float(sweep.errors[0]), rel=1e-8)


@pytest.mark.parametrize("name", ["mlp", "conv"])
@pytest.mark.parametrize("loss, extra", [("sft", {}), ("dpo", {"y_rejected": 4}), ("ipo", {"y_rejected": 0})])
@pytest.mark.parametrize("preconditioned", [False, True])
def test_inner_product_form_equals_A_K_G(name, loss, extra, preconditioned):
    model, x_o, x_u = _setup(name, seed=1)
    P = _random_preconditioner(model, seed=2) if preconditioned else None
    d = decompose(model, x_o, x_u, 3, loss=loss, eta=0.05, preconditioner=P, **extra)
    scale = float(d.predicted.abs().max())
    assert scale > 1e-6
    torch.testing.assert_close(d.inner_product, d.predicted, rtol=1e-10, atol=1e-12 * scale)


def test_linear_softmax_factors_have_their_closed_forms():
    model, x_o, x_u = _setup("linear", seed=3)
    eta, y = 0.01, 2
    d = decompose(model, x_o, x_u, y, eta=eta)
    with torch.no_grad():
        pi_o = torch.softmax(model(x_o), -1)  # (N_o, V)
        pi_u = torch.softmax(model(x_u[None]), -1)[0]  # (V,)
    e_y = torch.nn.functional.one_hot(torch.tensor(y), 6).to(F64)
    torch.testing.assert_close(d.G, pi_u - e_y, rtol=0, atol=1e-14)  # SFT: G = pi - e_y
    torch.testing.assert_close(d.K, linear_softmax_ntk(x_o, x_u[None], 6)[:, 0], rtol=1e-12, atol=1e-14)
    A = torch.eye(6, dtype=F64) - pi_o[:, None, :]  # (N_o, V, V)
    expected = -eta * (x_o @ x_u)[:, None] * torch.einsum("nvw,w->nv", A, pi_u - e_y)  # (N_o, V)
    torch.testing.assert_close(d.predicted, expected, rtol=1e-10, atol=1e-15)


def test_dpo_residual_at_zero_margin_and_with_a_reference_model():
    model, x_o, x_u = _setup("mlp", seed=4)
    beta, y_plus, y_minus = 0.3, 1, 5
    d = decompose(model, x_o, x_u, y_plus, loss="dpo", eta=1e-3, y_rejected=y_minus, beta=beta)
    # Default reference = the model itself, so h = 0, sigmoid = 1/2 and pi cancels: G = (beta/2)(e- - e+).
    expected = torch.zeros(6, dtype=F64)
    expected[y_minus], expected[y_plus] = beta / 2, -beta / 2
    torch.testing.assert_close(d.G, expected, rtol=1e-12, atol=1e-15)
    ref = MLP(5, 8, 6, depth=3, generator=_gen(99)).double()
    d_ref = decompose(model, x_o, x_u, y_plus, loss="dpo", eta=1e-3, y_rejected=y_minus, reference=ref, beta=beta)
    with torch.no_grad():
        lp, lp_ref = torch.log_softmax(model(x_u[None]), -1)[0], torch.log_softmax(ref(x_u[None]), -1)[0]
    h = (lp[y_plus] - lp_ref[y_plus]) - (lp[y_minus] - lp_ref[y_minus])
    weight = beta * torch.sigmoid(-beta * h)  # -dL/dlp+ = dL/dlp-
    e = torch.eye(6, dtype=F64)
    torch.testing.assert_close(d_ref.G, weight * (e[y_minus] - e[y_plus]), rtol=1e-10, atol=1e-15)


def test_preconditioned_step_follows_its_own_kernel_not_the_plain_one():
    model, x_o, x_u = _setup("mlp", seed=5)
    P = _random_preconditioner(model, seed=6)
    sweep = eta_sweep(model, x_o, x_u, 0, ETAS, preconditioner=P)
    assert 1.8 <= sweep.slope <= 2.2, sweep.errors
    eta = float(ETAS[0])
    d_p = decompose(model, x_o, x_u, 0, eta=eta, preconditioner=P)
    d_plain = decompose(model, x_o, x_u, 0, eta=eta)
    # The plain SGD prediction misses the preconditioned step at first order, the P-kernel does not.
    mismatch = float(torch.linalg.vector_norm(d_plain.predicted - d_p.actual))
    assert d_p.error < 1e-2 * mismatch


def test_caller_model_is_untouched():
    model, x_o, x_u = _setup("conv", seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    decompose(model, x_o, x_u, 0, loss="dpo", y_rejected=1, eta=0.5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_loglog_slope_recovers_a_power_law():
    x = np.logspace(-3, 0, 7)
    assert loglog_slope(x, 3.0 * x**2) == pytest.approx(2.0, abs=1e-12)
    assert loglog_slope(x, 0.5 * x**-1.5) == pytest.approx(-1.5, abs=1e-12)
    with pytest.raises(ValueError, match="> 0"):
        loglog_slope(x, -x)


class _NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((5, 3), float("nan"), dtype=F64))

    def forward(self, x):
        return x @ self.w


def test_bad_input_raises_value_error_saying_what_and_where():
    model, x_o, x_u = _setup("mlp", seed=8)
    with pytest.raises(ValueError, match=r"x_u.*\(5,\).*\(4,\)"):
        decompose(model, x_o, x_u[:4], 0, eta=0.1)
    with pytest.raises(ValueError, match=r"eta.*> 0"):
        decompose(model, x_o, x_u, 0, eta=0.0)
    with pytest.raises(ValueError, match=r"eta.*> 0"):
        decompose(model, x_o, x_u, 0, eta=float("nan"))
    bad = x_o.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x_o.*NaN"):
        decompose(model, bad, x_u, 0, eta=0.1)
    with pytest.raises(ValueError, match="logits at x_o contain NaN"):
        decompose(_NaNNet(), x_o, x_u, 0, eta=0.1)
    with pytest.raises(ValueError, match="unknown loss 'dpoo'"):
        decompose(model, x_o, x_u, 0, loss="dpoo", eta=0.1)
    with pytest.raises(ValueError, match="needs y_rejected"):
        decompose(model, x_o, x_u, 0, loss="dpo", eta=0.1)
    with pytest.raises(ValueError, match="takes one response"):
        decompose(model, x_o, x_u, 0, loss="sft", eta=0.1, y_rejected=1)
    with pytest.raises(ValueError, match="uses no reference model"):
        decompose(model, x_o, x_u, 0, loss="sft", eta=0.1, reference=model)
    with pytest.raises(ValueError, match=r"y_u.*outside \[0, V\) with V = 6"):
        decompose(model, x_o, x_u, 6, eta=0.1)
    with pytest.raises(ValueError, match="beta"):
        decompose(model, x_o, x_u, 0, loss="dpo", y_rejected=1, eta=0.1, beta=-1.0)
    with pytest.raises(ValueError, match="at least two"):
        eta_sweep(model, x_o, x_u, 0, [0.1])
    with pytest.raises(ValueError, match="second moment"):
        diagonal_preconditioner({"w": -torch.ones(2, dtype=F64)})


def test_paired_loss_with_the_same_label_twice_is_refused():
    torch.manual_seed(0)
    model = LinearSoftmax(3, 4).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="two different labels"):
        decompose(model, x, x[:1], 1, loss="dpo", eta=0.1, y_rejected=1)
