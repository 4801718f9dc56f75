"""Softmax helpers and A = I - 1 pi^T, the Jacobian of log-softmax with respect to the logits.

Glossary of shapes: N batch, V vocabulary/classes. ``...`` is any leading shape.
"""

from __future__ import annotations

import torch

__all__ = ["softmax", "log_softmax", "check_distribution", "log_softmax_jacobian"]


def _check_logits(z: torch.Tensor, name: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of logits, got {type(z).__name__}")
    if z.dim() == 0:
        raise ValueError(f"{name}: expected logits of shape (..., V), got a 0-d tensor")
    if not torch.is_floating_point(z):
        raise ValueError(f"{name}: expected floating-point logits, got dtype {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).sum())
        raise ValueError(f"{name}: logits contain {bad} NaN/inf entries (shape {tuple(z.shape)})")


def softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Turn logits into probabilities along ``dim``.

    Args:
        z: (..., V) logits; must be finite.
        dim: the vocabulary axis.

    Returns:
        pi: same shape as ``z``, non-negative, summing to one along ``dim``.

    Math: pi_i = exp(z_i) / sum_j exp(z_j).
    References: Ren & Sutherland (2025), Section 3 (pi = Softmax(z)).
    """
    _check_logits(z, "softmax(z)")
    return torch.softmax(z, dim=dim)


def log_softmax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Return log-probabilities of logits along ``dim``, computed stably.

    Args:
        z: (..., V) logits; must be finite.
        dim: the vocabulary axis.

    Returns:
        log_pi: same shape as ``z``.

    Math: log pi_i = z_i - logsumexp_j z_j.
    References: Ren & Sutherland (2025), Section 3.
    """
    _check_logits(z, "log_softmax(z)")
    return torch.log_softmax(z, dim=dim)


def check_distribution(pi: torch.Tensor, name: str = "pi", atol: float = 1e-6) -> None:
    """Raise ValueError unless every row of ``pi`` along the last axis is a probability distribution.

    Args:
        pi: (..., V) candidate probabilities.
        name: how the caller calls ``pi``; quoted in the error message.
        atol: allowed deviation of each row sum from 1.

    Raises:
        ValueError: if ``pi`` is not a floating tensor with a last axis, has NaN/inf or negative entries,
            or a row does not sum to 1 within ``atol``. The message names the first offending row.
    """
    if not isinstance(pi, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(pi).__name__}")
    if pi.dim() == 0 or pi.shape[-1] == 0:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 1, got {tuple(pi.shape)}")
    if not torch.is_floating_point(pi):
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {pi.dtype}")
    rows = pi.reshape(-1, pi.shape[-1])  # (prod(...), V)
    finite = torch.isfinite(rows).all(dim=-1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{name}: contains NaN/inf (first in flattened row {row} of shape {tuple(pi.shape)})")
    negative = (rows < 0).any(dim=-1)
    if bool(negative.any()):
        row = int(negative.nonzero()[0, 0])
        raise ValueError(
            f"{name}: has negative entries (flattened row {row}, min {float(rows[row].min()):.3g}); "
            "probabilities must be >= 0"
        )
    sums = rows.sum(dim=-1)
    off = (sums - 1).abs() > atol
    if bool(off.any()):
        row = int(off.nonzero()[0, 0])
        raise ValueError(
            f"{name}: rows must sum to 1 (atol {atol:g}); flattened row {row} sums to {float(sums[row]):.10g}"
        )


def log_softmax_jacobian(pi: torch.Tensor) -> torch.Tensor:
    """Return A = I - 1 pi^T, the Jacobian of log pi with respect to the logits z, per row of ``pi``.

    Args:
        pi: (..., V) probability distributions (validated with ``check_distribution``).

    Returns:
        A: (..., V, V) with A[..., i, j] = d log pi_i / d z_j.

    Math: A_ij = delta_ij - pi_j, so A 1 = 0 and ||A||_F^2 = V ||pi||^2 + V - 2.
    References: Ren & Sutherland (2025), Proposition 1 (A^t(x_o) = grad_z log pi).
    """
    check_distribution(pi, "log_softmax_jacobian(pi)")
    V = pi.shape[-1]
    eye = torch.eye(V, dtype=pi.dtype, device=pi.device)  # (V, V)
    return eye - pi.unsqueeze(-2)  # (..., V, V): row i is e_i - pi
