"""Proposition 1: the one-step change Delta log pi(y | x_o) = -eta A(x_o) K(x_o, x_u) G(x_u) + O(eta^2).

``decompose`` returns the three factors, the prediction, the gradient-inner-product form of the same first-order
term (never building K), and the actual change after a real (optionally preconditioned) SGD step on a copy of the
model. ``eta_sweep`` measures how the prediction error shrinks with eta (slope 2 on a log-log plot).

Glossary of shapes: N_o observed examples, V classes, P parameters. The toy has one token per response, so the
log-probs fed to the loss are single-token (summed = averaged).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad

from toykit.forward_ad import jvp
from toykit.losses import compute_loss, get_loss
from toykit.ntk import check_preconditioner, empirical_ntk, trainable_params
from toykit.residuals import residual
from toykit.softmax import log_softmax_jacobian

__all__ = ["Decomposition", "EtaSweep", "decompose", "eta_sweep", "diagonal_preconditioner", "loglog_slope"]

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Decomposition:
    """The factors of Proposition 1 for one update on (x_u, y_u) observed at every x_o.

    Attributes:
        A: (N_o, V, V) A(x_o) = I - 1 pi^T.
        K: (N_o, V, V) eNTK K(x_o, x_u) (preconditioned as J_o P J_u^T when a preconditioner was given).
        G: (V,) residual dL/dz at x_u (chosen and rejected terms summed: both share x_u in the toy).
        eta: learning rate of the step.
        predicted: (N_o, V) -eta A K G, the first-order Delta log pi (the minus sign is included).
        inner_product: (N_o, V) -eta <grad_theta log pi(y | x_o), P grad_theta L(x_u)> for every y.
        actual: (N_o, V) log pi_after - log pi_before after one real step.
    """

    A: torch.Tensor
    K: torch.Tensor
    G: torch.Tensor
    eta: float
    predicted: torch.Tensor
    inner_product: torch.Tensor
    actual: torch.Tensor

    @property
    def error(self) -> float:
        """Frobenius norm of predicted - actual: the O(eta^2) remainder of Proposition 1."""
        return float(torch.linalg.vector_norm(self.predicted - self.actual))


@dataclass(frozen=True)
class EtaSweep:
    """Prediction error of Proposition 1 over learning rates.

    Attributes:
        etas: (E,) learning rates, increasing.
        errors: (E,) ||predicted - actual||_F per eta.
        mass_drift: (E,) max over x_o of |pi^T Delta log pi|, per eta (zero to first order since pi^T A = 0).
        slope: fitted log-log slope of errors vs etas (2 when the remainder is O(eta^2)).
        drift_slope: fitted log-log slope of mass_drift vs etas.
    """

    etas: torch.Tensor
    errors: torch.Tensor
    mass_drift: torch.Tensor
    slope: float
    drift_slope: float


@dataclass(frozen=True)
class _Problem:
    """A validated update: the functional model, the single x_u, labels, loss and its fixed inputs."""

    model: nn.Module
    params: Params
    constants: Params
    precond: Params | None
    x_o: torch.Tensor  # (N_o, ...)
    x_u: torch.Tensor  # (1, ...)
    y_u: torch.Tensor  # (1,)
    y_rejected: torch.Tensor | None  # (1,)
    loss: str
    refs: dict  # ref_chosen_logps / ref_rejected_logps (1,), only for losses that use a reference
    hparams: dict


def _label(y, V: int, name: str, dtype_like: torch.Tensor) -> torch.Tensor:
    value = y.item() if isinstance(y, torch.Tensor) and y.numel() == 1 else y
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"decompose({name}): expected one integer class label, got {y!r}")
    if not 0 <= value < V:
        raise ValueError(f"decompose({name}): label {value} is outside [0, V) with V = {V}")
    return torch.tensor([value], device=dtype_like.device)


def _logits(model: nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"decompose: the model must return logits (N, V) at {where}, got {getattr(z, 'shape', z)}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"decompose: the model's logits at {where} contain NaN/inf")
    return z


def _prepare(model, x_o, x_u, y_u, loss, eta, y_rejected, reference, preconditioner, hparams) -> _Problem:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
        raise ValueError(f"decompose(eta): the learning rate must be a finite number > 0, got {eta!r}")
    spec = get_loss(loss)
    if not isinstance(x_o, torch.Tensor) or x_o.dim() < 2 or x_o.shape[0] == 0:
        got = tuple(x_o.shape) if isinstance(x_o, torch.Tensor) else type(x_o).__name__
        raise ValueError(f"decompose(x_o): expected a non-empty batch (N_o, ...), got {got}")
    if not isinstance(x_u, torch.Tensor) or tuple(x_u.shape) not in (tuple(x_o.shape[1:]), (1, *x_o.shape[1:])):
        got = tuple(x_u.shape) if isinstance(x_u, torch.Tensor) else type(x_u).__name__
        raise ValueError(
            f"decompose(x_u): expected one example of shape {tuple(x_o.shape[1:])} or (1, ...), got {got}"
        )
    x_u = x_u.reshape(1, *x_o.shape[1:])  # (1, ...)
    for name, x in (("x_o", x_o), ("x_u", x_u)):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"decompose({name}): inputs contain NaN/inf")
    params, constants = trainable_params(model)
    precond = check_preconditioner(preconditioner, params)
    _logits(model, x_o, "x_o")
    z_u = _logits(model, x_u, "x_u")  # (1, V)
    V = z_u.shape[1]
    y_u = _label(y_u, V, "y_u", z_u)
    if spec.paired and y_rejected is None:
        raise ValueError(f"decompose: loss {loss!r} is paired and needs y_rejected")
    if not spec.paired and y_rejected is not None:
        raise ValueError(f"decompose: loss {loss!r} takes one response; got y_rejected = {y_rejected!r}")
    y_rej = _label(y_rejected, V, "y_rejected", z_u) if spec.paired else None
    if y_rej is not None and bool((y_rej == y_u).all()):
        raise ValueError(f"decompose: y_rejected = y_u = {int(y_u[0])}; a paired loss needs two different labels "
                         "(the same label makes G identically zero)")
    refs = {}
    if spec.uses_reference:
        # Default reference = the model itself at the start of the step, so the log-ratio h is 0 (TRL's setup).
        z_ref = z_u if reference is None else _logits(reference, x_u, "x_u (reference model)")
        log_ref = torch.log_softmax(z_ref, dim=-1)  # (1, V)
        refs = {"ref_chosen_logps": log_ref.gather(1, y_u[:, None])[:, 0]}
        if y_rej is not None:
            refs["ref_rejected_logps"] = log_ref.gather(1, y_rej[:, None])[:, 0]
    elif reference is not None:
        raise ValueError(
            f"decompose: loss {loss!r} uses no reference model; got reference = {type(reference).__name__}"
        )
    return _Problem(model, params, constants, precond, x_o, x_u, y_u, y_rej, loss, refs, dict(hparams))


def _loss_from_logits(prob: _Problem, z_u: torch.Tensor) -> torch.Tensor:
    """Scalar loss of the update from the logits (1, V) at x_u; single-token log-probs."""
    log_pi = torch.log_softmax(z_u, dim=-1)  # (1, V)
    chosen = log_pi.gather(1, prob.y_u[:, None])[:, 0]  # (1,)
    rejected = None if prob.y_rejected is None else log_pi.gather(1, prob.y_rejected[:, None])[:, 0]
    return compute_loss(prob.loss, chosen_logps=chosen, rejected_logps=rejected, **prob.refs, **prob.hparams).sum()


def _f(prob: _Problem, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(prob.model, (params, prob.constants), (x,))  # (n, V)


def _residual(prob: _Problem) -> torch.Tensor:
    """G = dL/dz at x_u in closed form (chosen and rejected terms share x_u, so they add): (V,)."""
    z_u = _f(prob, prob.params, prob.x_u).detach()  # (1, V)
    res = residual(prob.loss, z_u, prob.y_u, None, prob.y_rejected, **prob.refs, **prob.hparams)
    return res.G[0]


def _first_order(prob: _Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return A (N_o, V, V), K (N_o, V, V), G (V,) and the inner product <grad log pi(.|x_o), P grad L> (N_o, V)."""
    z_o = _f(prob, prob.params, prob.x_o).detach()  # (N_o, V)
    A = log_softmax_jacobian(torch.softmax(z_o, dim=-1))
    K = empirical_ntk(prob.model, prob.x_o, prob.x_u, preconditioner=prob.precond)[:, 0]  # (N_o, V, V)
    G = _residual(prob)
    g_u = grad(lambda p: _loss_from_logits(prob, _f(prob, p, prob.x_u)))(prob.params)  # name -> param shape
    if prob.precond is not None:
        g_u = {k: v * prob.precond[k] for k, v in g_u.items()}
    # <grad_theta log pi(y|x_o), v> for every (x_o, y) is one forward-mode derivative along v.
    _, inner = jvp(lambda p: torch.log_softmax(_f(prob, p, prob.x_o), dim=-1), (prob.params,), (g_u,))  # (N_o, V)
    return A, K, G, inner


def _actual_change(prob: _Problem, eta: float) -> torch.Tensor:
    """Delta log pi(. | x_o) (N_o, V) after one real step theta -= eta P grad L on a deep copy of the model."""
    stepped = copy.deepcopy(prob.model)
    trainable = {k: p for k, p in stepped.named_parameters() if p.requires_grad}
    for p in trainable.values():
        p.grad = None
    _loss_from_logits(prob, stepped(prob.x_u)).backward()
    with torch.no_grad():
        for k, p in trainable.items():
            p -= eta * (p.grad if prob.precond is None else prob.precond[k] * p.grad)
        before = torch.log_softmax(prob.model(prob.x_o), dim=-1)  # (N_o, V)
        after = torch.log_softmax(stepped(prob.x_o), dim=-1)  # (N_o, V)
    return after - before


def decompose(
    model: nn.Module,
    x_o: torch.Tensor,
    x_u: torch.Tensor,
    y_u,
    *,
    loss: str = "sft",
    eta: float,
    y_rejected=None,
    reference: nn.Module | None = None,
    preconditioner: Params | None = None,
    **hparams,
) -> Decomposition:
    """Decompose the change of log pi(. | x_o) caused by one step on (x_u, y_u) into -eta A K G.

    Args:
        model: a deterministic module (eval mode) returning logits (N, V); it is not modified.
        x_o: (N_o, ...) observed inputs, in the parameters' dtype (float64 for analytic checks).
        x_u: (...) or (1, ...) the single updated input.
        y_u: the chosen label at x_u (int or one-element tensor).
        loss: a name from ``toykit.losses`` (e.g. "sft", "dpo", "ipo").
        eta: learning rate, > 0.
        y_rejected: the rejected label at x_u; required by paired losses, refused by the others.
        reference: reference model for losses that use one; None = the model itself before the step (h = 0).
        preconditioner: optional diagonal P (name -> tensor like each trainable parameter); the step becomes
            theta -= eta P grad L and K becomes J_o P J_u^T. See ``diagonal_preconditioner``.
        **hparams: the loss's hyperparameters (beta, eps, ...), validated by the registry.

    Returns:
        Decomposition with A, K, G, eta, predicted, inner_product and actual.

    Math: Delta log pi(y|x_o) = -eta A(x_o) K(x_o, x_u) G(x_u, y_u) + O(eta^2 ||grad_theta z(x_u)||_op^2),
        and -eta A K G = -eta <grad_theta log pi(y|x_o), P grad_theta L(x_u)>.
    References: Ren & Sutherland (2025), Proposition 1 and Section 3.1.
    """
    prob = _prepare(model, x_o, x_u, y_u, loss, eta, y_rejected, reference, preconditioner, hparams)
    A, K, G, inner = _first_order(prob)
    predicted = -eta * torch.einsum("nvw,nwk,k->nv", A, K, G)  # (N_o, V)
    return Decomposition(A, K, G, float(eta), predicted, -eta * inner, _actual_change(prob, eta))


def loglog_slope(x, y) -> float:
    """Return the least-squares slope of log y against log x.

    Args:
        x: (E,) positive abscissae (e.g. learning rates).
        y: (E,) positive values (e.g. errors).

    Math: slope of the line fitted to (log x_i, log y_i); 2 for y = C x^2.
    """
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    y = torch.as_tensor(y, dtype=torch.float64).flatten()
    if x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"loglog_slope: need two equal-length series of >= 2 points, got {x.numel()} and {y.numel()}")
    if not bool((x > 0).all() and (y > 0).all()):
        raise ValueError("loglog_slope: every x and y must be > 0 to take logs")
    lx, ly = x.log(), y.log()
    lx_c = lx - lx.mean()
    return float((lx_c * (ly - ly.mean())).sum() / (lx_c**2).sum())


def eta_sweep(
    model: nn.Module,
    x_o: torch.Tensor,
    x_u: torch.Tensor,
    y_u,
    etas: Sequence[float],
    *,
    loss: str = "sft",
    y_rejected=None,
    reference: nn.Module | None = None,
    preconditioner: Params | None = None,
    **hparams,
) -> EtaSweep:
    """Measure the error of Proposition 1's prediction against the real step over learning rates.

    Args:
        model, x_o, x_u, y_u, loss, y_rejected, reference, preconditioner, hparams: as in ``decompose``.
        etas: (E,) learning rates, each > 0, E >= 2.

    Returns:
        EtaSweep with per-eta errors ||-eta A K G - Delta log pi||_F, the mass drift max |pi^T Delta log pi|,
        and both log-log slopes (about 2 when the remainder is O(eta^2)).

    Math: Delta log pi + eta A K G = O(eta^2); pi^T Delta log pi = -KL(pi || pi') = O(eta^2) since pi^T A = 0.
    References: Ren & Sutherland (2025), Proposition 1.
    """
    etas_t = torch.as_tensor(list(etas), dtype=torch.float64)
    if etas_t.dim() != 1 or etas_t.numel() < 2:
        raise ValueError(f"eta_sweep(etas): need at least two learning rates, got {list(etas)!r}")
    etas_t, _ = etas_t.sort()
    prob = _prepare(model, x_o, x_u, y_u, loss, float(etas_t[0]), y_rejected, reference, preconditioner, hparams)
    if not bool((etas_t > 0).all() and torch.isfinite(etas_t).all()):
        raise ValueError(f"eta_sweep(etas): every learning rate must be finite and > 0, got {etas_t.tolist()}")
    A, K, G, _ = _first_order(prob)
    direction = torch.einsum("nvw,nwk,k->nv", A, K, G)  # (N_o, V); predicted = -eta * direction
    pi_o = torch.softmax(_f(prob, prob.params, prob.x_o).detach(), dim=-1)  # (N_o, V)
    errors, drift = [], []
    for eta in etas_t.tolist():
        actual = _actual_change(prob, eta)
        errors.append(float(torch.linalg.vector_norm(-eta * direction - actual)))
        drift.append(float((pi_o.to(actual.dtype) * actual).sum(-1).abs().max()))
    errors_t, drift_t = torch.tensor(errors, dtype=torch.float64), torch.tensor(drift, dtype=torch.float64)
    return EtaSweep(etas_t, errors_t, drift_t, loglog_slope(etas_t, errors_t), loglog_slope(etas_t, drift_t))


def diagonal_preconditioner(second_moments: Params, eps: float = 1e-8) -> Params:
    """Return the diagonal preconditioner P = 1 / (sqrt(v) + eps) of RMSprop/Adam from second moments v.

    Args:
        second_moments: name -> (shape of the parameter) running averages v of squared gradients, >= 0
            (RMSprop's ``square_avg``; Adam's bias-corrected ``exp_avg_sq``).
        eps: the optimizer's epsilon, > 0.

    Returns:
        name -> P with the same shapes. The step theta -= eta P g is RMSprop's; Adam's first moment is ignored.

    Math: P = diag(1 / (sqrt(v) + eps)), so K_P(x_o, x_u) = grad z(x_o) P grad z(x_u)^T.
    References: Ren & Sutherland (2025), Section 3 (adaptive optimizers change K by the preconditioner).
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"diagonal_preconditioner(eps): expected a number > 0, got {eps!r}")
    out = {}
    for k, v in second_moments.items():
        if not isinstance(v, torch.Tensor) or not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
            raise ValueError(f"diagonal_preconditioner: second moment {k!r} must be a finite tensor with entries >= 0")
        out[k] = 1.0 / (v.sqrt() + eps)
    return out
