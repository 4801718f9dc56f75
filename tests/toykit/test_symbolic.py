"""Sympy derivations against the numeric closed forms: A = I - 1 pi^T, G for five losses, the squeeze step."""

import numpy as np
import pytest
import sympy as sp
import torch

from toykit.residuals import residual
from toykit.softmax import log_softmax_jacobian
from toykit.squeeze import squeeze_logits_step, squeeze_step
from toykit.symbolic import SYMBOLIC_LOSSES, log_softmax_jacobian_sympy, residual_sympy, squeeze_update_sympy

V_RES = 4
HPARAMS = {"beta": 0.6, "delta": 1.5, "lam": 2.0}
SQUEEZE_SIZES = [(3, 2), (5, 3)]


@pytest.fixture(scope="module")
def jacobians():
    return {v: log_softmax_jacobian_sympy(v) for v in (2, 3, 5)}


@pytest.fixture(scope="module")
def residuals():
    return {name: residual_sympy(name, V_RES) for name in SYMBOLIC_LOSSES}


@pytest.fixture(scope="module")
def squeezes():
    return {size: squeeze_update_sympy(*size) for size in SQUEEZE_SIZES}


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("v", [2, 3, 5])
def test_sympy_jacobian_of_log_softmax_is_I_minus_one_pi_T(jacobians, v):
    rng = np.random.default_rng(v)
    for _ in range(3):
        z = 2 * rng.standard_normal(v)
        A = jacobians[v].fn(z)
        pi = torch.softmax(torch.tensor(z, dtype=torch.float64), -1)
        np.testing.assert_allclose(A, log_softmax_jacobian(pi).numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(A, np.eye(v) - np.outer(np.ones(v), _softmax(z)), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(A @ np.ones(v), np.zeros(v), atol=1e-14)  # A 1 = 0


def test_sympy_jacobian_identity_holds_symbolically(jacobians):
    (A,) = jacobians[3].exprs
    z = sp.Matrix(jacobians[3].symbols["z"])
    pi = z.applyfunc(sp.exp) / sum(z.applyfunc(sp.exp))
    assert sp.simplify(A - (sp.eye(3) - sp.ones(3, 1) * pi.T)) == sp.zeros(3, 3)
    assert sp.simplify(A * sp.ones(3, 1)) == sp.zeros(3, 1)


@pytest.mark.parametrize("name", SYMBOLIC_LOSSES)
def test_sympy_G_equals_closed_form_residual(residuals, name):
    rng = np.random.default_rng(sum(map(ord, name)))
    hp = {k: HPARAMS[k] for k in map(str, residuals[name].symbols["hparams"])}
    for _ in range(4):
        z_c, z_r = 2 * rng.standard_normal(V_RES), 2 * rng.standard_normal(V_RES)
        y_c, y_r = rng.choice(V_RES, size=2, replace=False)
        lp_c = np.log(_softmax(z_c)[y_c])
        lp_r = np.log(_softmax(z_r)[y_r])
        ref_c, ref_r = lp_c + rng.uniform(-2, 2), lp_r + rng.uniform(-2, 2)  # y+ above and below its reference
        g_c, g_r = residuals[name].fn(z_c, y_c, z_r, y_r, ref_chosen=ref_c, ref_rejected=ref_r, **hp)

        def t(a):
            return torch.tensor(np.atleast_1d(a), dtype=torch.float64)

        res = residual(name, t(z_c)[None], torch.tensor([y_c]), t(z_r)[None], torch.tensor([y_r]),
                       ref_chosen_logps=t(ref_c), ref_rejected_logps=t(ref_r), **hp)
        np.testing.assert_allclose(g_c, res.G_chosen[0].numpy(), rtol=1e-10, atol=1e-12)
        if res.G_rejected is None:
            np.testing.assert_array_equal(g_r, np.zeros(V_RES))
        else:
            np.testing.assert_allclose(g_r, res.G_rejected[0].numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["dpo", "slic"])
def test_sympy_G_on_a_shared_input_is_the_sum_of_both_terms(residuals, name):
    z = np.array([1.0, -0.5, 0.3, 2.0])
    hp = {k: HPARAMS[k] for k in map(str, residuals[name].symbols["hparams"])}
    g_c, g_r = residuals[name].fn(z, 0, z, 2, ref_chosen=-1.0, ref_rejected=-3.0, **hp)
    res = residual(name, torch.tensor(z)[None], torch.tensor([0]), y_rejected=torch.tensor([2]),
                   ref_chosen_logps=torch.tensor([-1.0], dtype=torch.float64),
                   ref_rejected_logps=torch.tensor([-3.0], dtype=torch.float64), **hp)
    np.testing.assert_allclose(g_c + g_r, res.G[0].numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size", SQUEEZE_SIZES)
def test_sympy_squeeze_update_equals_numeric_squeeze_step(squeezes, size):
    v, d = size
    rng = np.random.default_rng(v * 10 + d)
    for ybar in range(v):
        W, x, eta = rng.standard_normal((v, d)), rng.standard_normal(d), rng.uniform(0.1, 2.0)
        z_new, pi_new = squeezes[size].fn(W, x, eta, ybar)
        z, c = W @ x, eta * float(x @ x)
        np.testing.assert_allclose(z_new, squeeze_logits_step(z, ybar, c), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pi_new, squeeze_step(_softmax(z), ybar, c), rtol=1e-10, atol=1e-14)
        assert pi_new[ybar] < _softmax(z)[ybar]  # claim 1 on the derived update


def test_sympy_squeeze_shift_simplifies_to_c_times_pi_minus_e(squeezes):
    deriv = squeezes[(3, 2)]
    W = sp.Matrix(3, 2, deriv.symbols["W"])
    x, e = sp.Matrix(deriv.symbols["x"]), sp.Matrix(deriv.symbols["e"])
    (eta,) = deriv.symbols["eta"]
    z = W * x
    pi = z.applyfunc(sp.exp) / sum(z.applyfunc(sp.exp))
    claimed = eta * (x.T * x)[0, 0] * (pi - e)  # c (pi - e_ybar), c = eta ||x||^2
    for ybar in range(3):
        onehot = {e[i]: int(i == ybar) for i in range(3)}
        assert sp.simplify((deriv.exprs[2] - claimed).subs(onehot)) == sp.zeros(3, 1)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match=r"no symbolic form for loss 'nca'; available: sft, dpo, ipo, slic, dpop"):
        residual_sympy("nca", 3)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2, got 1"):
        log_softmax_jacobian_sympy(1)
    with pytest.raises(ValueError, match=r"dim must be an int >= 1, got 0"):
        squeeze_update_sympy(3, 0)


def test_lambdified_functions_check_their_inputs(residuals, jacobians):
    with pytest.raises(ValueError, match=r"z: expected shape \(3,\), got \(4,\)"):
        jacobians[3].fn(np.zeros(4))
    with pytest.raises(ValueError, match=r"y_rejected: label 9 is outside \[0, 4\)"):
        residuals["dpo"].fn(np.zeros(4), 0, np.zeros(4), 9)
    with pytest.raises(ValueError, match=r"unknown hyperparameters \['gamma'\]"):
        residuals["dpo"].fn(np.zeros(4), 0, np.zeros(4), 1, gamma=1.0)
