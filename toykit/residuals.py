"""G = dL/dz in closed form for every loss in the registry (Proposition 1's residual term).

A loss L = f(log pi(y+), log pi(y-)) reaches the logits only through the log-probs of the responses, and
d log pi(y|x)/dz = e_y - pi, so each response a contributes G^(a) = (dL/dlp_a) (e_{y_a} - pi_a). The scalar
weights dL/dlp_a come from ``LossSpec.grad`` (hand-derived, never autograd). Shapes: N batch, V vocabulary,
L length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from toykit.losses import compute_loss_grad, get_loss
from toykit.softmax import log_softmax, softmax

__all__ = ["Residual", "residual", "sequence_residual"]


@dataclass(frozen=True)
class Residual:
    """The residual of one loss at one batch.

    Attributes:
        G_chosen: (N, V) or (N, L, V) dL/dz of the chosen response's logits.
        G_rejected: same shape as that response's logits, or None for single-response losses.
        G: G_chosen + G_rejected (G_chosen when unpaired); meaningful when both responses share the input
            (the toy setting); None for sequences whose chosen and rejected logits differ in shape.
        weight_chosen: (N,) dL/dlp+ per example (log-probs summed over tokens).
        weight_rejected: (N,) dL/dlp- per example, or None for single-response losses.
    """

    G_chosen: Tensor
    G_rejected: Tensor | None
    G: Tensor | None
    weight_chosen: Tensor
    weight_rejected: Tensor | None


def _check_labels(y: Tensor, shape: tuple[int, ...], num_classes: int, name: str, mask: Tensor | None = None) -> None:
    """Refuse labels of the wrong type/shape or out of [0, V) where ``mask`` is set."""
    if not isinstance(y, Tensor) or y.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name}: expected an int32/int64 tensor of labels, got "
                         f"{y.dtype if isinstance(y, Tensor) else type(y).__name__}")
    if tuple(y.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(y.shape)}")
    inside = (y >= 0) & (y < num_classes)
    if mask is not None:
        inside = inside | ~mask
    if not bool(inside.all()):
        where = (~inside).nonzero()[0].tolist()
        raise ValueError(f"{name}: label {int(y[tuple(where)])} at index {where} is outside [0, {num_classes})")


def _check_mask(mask: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
    """Return ``mask`` as bool after checking its shape, its 0/1 values and that no row is empty."""
    if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a 0/1 tensor of shape {shape}, got {got}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: entries must be 0/1 or bool")
    mask = mask.bool()
    empty = (~mask.any(dim=-1)).nonzero()
    if len(empty):
        raise ValueError(f"{name}: row {int(empty[0, 0])} selects no response tokens")
    return mask


def _logits(z: Tensor | None, ndim: int, name: str) -> Tensor:
    """Return ``z`` after checking it is a finite float tensor with ``ndim`` dims ((N, V) or (N, L, V))."""
    if not isinstance(z, Tensor) or z.dim() != ndim:
        dims = "(N, V)" if ndim == 2 else "(N, L, V)"
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{name}: expected logits of shape {dims}, got {got}")
    if not z.is_floating_point():
        raise ValueError(f"{name}: expected floating-point logits, got dtype {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        where = (~torch.isfinite(z)).nonzero()[0].tolist()
        raise ValueError(f"{name}: logits have a NaN or inf entry at index {where}")
    return z


def _assemble(loss_name: str, pis: list[Tensor], onehots: list[Tensor], logps: list[Tensor],
              lengths: list[Tensor | None], refs: tuple[Tensor | None, Tensor | None], hparams: dict) -> Residual:
    """Turn per-response pi, one-hot targets and summed log-probs into a Residual via ``LossSpec.grad``."""
    paired = len(pis) == 2
    w_c, w_r = compute_loss_grad(
        loss_name, chosen_logps=logps[0], rejected_logps=logps[1] if paired else None,
        ref_chosen_logps=refs[0], ref_rejected_logps=refs[1], chosen_lengths=lengths[0],
        rejected_lengths=lengths[1] if paired else None, **hparams)
    extra = (1,) * (pis[0].dim() - 1)
    G_c = w_c.reshape(-1, *extra) * (onehots[0] - pis[0])  # (N, [L,] V): (dL/dlp+) (e_y+ - pi+)
    G_r = w_r.reshape(-1, *extra) * (onehots[1] - pis[1]) if w_r is not None else None
    if G_r is None:
        G = G_c
    else:
        G = G_c + G_r if G_c.shape == G_r.shape else None
    return Residual(G_c, G_r, G, w_c, w_r)


def residual(loss_name: str, z_chosen: Tensor, y_chosen: Tensor, z_rejected: Tensor | None = None,
             y_rejected: Tensor | None = None, *, ref_chosen_logps: Tensor | None = None,
             ref_rejected_logps: Tensor | None = None, **hparams) -> Residual:
    """Compute G = dL/dz for a single softmax output per response (the toy classifier setting).

    Args:
        loss_name: a registered loss (``toykit.losses.loss_names()``).
        z_chosen: (N, V) logits at the chosen response's input.
        y_chosen: (N,) int chosen labels y+.
        z_rejected: (N, V) logits at the rejected response's input; defaults to ``z_chosen`` (same input x_u,
            as in the toy, where y+ and y- are two labels of one example).
        y_rejected: (N,) int rejected labels y-; required by paired losses.
        ref_chosen_logps, ref_rejected_logps: (N,) reference log-probs, for losses that use a reference.
        **hparams: the loss's hyperparameters (defaults from the registry).

    Returns:
        Residual with G_* of shape (N, V) and weights of shape (N,); each response has one token.

    Math: G^(a) = (dL/dlp_a) (e_{y_a} - pi_a); for SFT G = pi - e_y+.
    References: Ren & Sutherland 2025, Proposition 1 and Section 3 (G^t = grad_z L).
    """
    spec = get_loss(loss_name)
    z_c = _logits(z_chosen, 2, "residual(z_chosen)")
    n, v = z_c.shape
    _check_labels(y_chosen, (n,), v, "residual(y_chosen)")
    zs, ys = [z_c], [y_chosen]
    if spec.paired:
        if y_rejected is None:
            raise ValueError(f"residual: loss {loss_name!r} is paired and needs y_rejected, got None")
        z_r = z_c if z_rejected is None else _logits(z_rejected, 2, "residual(z_rejected)")
        if z_r.shape != z_c.shape:
            raise ValueError(f"residual(z_rejected): expected shape {tuple(z_c.shape)}, got {tuple(z_r.shape)}")
        _check_labels(y_rejected, (n,), v, "residual(y_rejected)")
        zs, ys = [z_c, z_r], [y_chosen, y_rejected]
    pis = [softmax(z) for z in zs]
    onehots = [torch.nn.functional.one_hot(y.long(), v).to(z.dtype) for z, y in zip(zs, ys)]  # (N, V)
    logps = [log_softmax(z).gather(-1, y.long()[:, None])[:, 0] for z, y in zip(zs, ys)]  # (N,)
    return _assemble(loss_name, pis, onehots, logps, [None] * len(zs), (ref_chosen_logps, ref_rejected_logps),
                     hparams)


def sequence_residual(loss_name: str, z_chosen: Tensor, y_chosen: Tensor, mask_chosen: Tensor,
                      z_rejected: Tensor | None = None, y_rejected: Tensor | None = None,
                      mask_rejected: Tensor | None = None, *, ref_chosen_logps: Tensor | None = None,
                      ref_rejected_logps: Tensor | None = None, **hparams) -> Residual:
    """Compute G = dL/dz for teacher-forced sequences, with log-probs SUMMED over the masked response tokens.

    Args:
        loss_name: a registered loss (``toykit.losses.loss_names()``).
        z_chosen: (N, L, V) logits; column l predicts y_chosen[:, l] given the prefix (teacher forcing).
        y_chosen: (N, L) int target tokens; positions outside the mask may hold any value (e.g. -100).
        mask_chosen: (N, L) 0/1 or bool, 1 on response tokens; its row sums are |y+| for SimPO/RPO.
        z_rejected, y_rejected, mask_rejected: the same for the rejected response (its own L allowed);
            required by paired losses.
        ref_chosen_logps, ref_rejected_logps: (N,) summed reference log-probs, for losses that use a reference.
        **hparams: the loss's hyperparameters (defaults from the registry).

    Returns:
        Residual with G_* of shape (N, L, V), zero at masked-out positions, and weights of shape (N,).

    Math: G^(a)[:, l] = (dL/dlp_a) m_l (e_{y_l} - pi_l) with lp_a = sum_l m_l log pi_l(y_l).
    References: Ren & Sutherland 2025, Section 3 (sequence version of Proposition 1, teacher forcing).
    """
    spec = get_loss(loss_name)
    sides = [("chosen", z_chosen, y_chosen, mask_chosen)]
    if spec.paired:
        if z_rejected is None or y_rejected is None or mask_rejected is None:
            raise ValueError(f"sequence_residual: loss {loss_name!r} is paired and needs z_rejected, y_rejected "
                             f"and mask_rejected")
        sides.append(("rejected", z_rejected, y_rejected, mask_rejected))
    pis, onehots, logps, lengths = [], [], [], []
    n = None
    for side, z, y, mask in sides:
        z = _logits(z, 3, f"sequence_residual(z_{side})")
        if n is not None and z.shape[0] != n:
            raise ValueError(f"sequence_residual(z_{side}): batch size {z.shape[0]}, expected {n} (z_chosen's)")
        n, length, v = z.shape
        mask = _check_mask(mask, (n, length), f"sequence_residual(mask_{side})")
        _check_labels(y, (n, length), v, f"sequence_residual(y_{side})", mask)
        y = torch.where(mask, y.long(), torch.zeros_like(y, dtype=torch.long))  # (N, L) padding -> any valid id
        m = mask.to(z.dtype)  # (N, L)
        pis.append(softmax(z))
        onehots.append(torch.nn.functional.one_hot(y, v).to(z.dtype) * m[..., None])  # (N, L, V)
        logps.append((log_softmax(z).gather(-1, y[..., None])[..., 0] * m).sum(-1))  # (N,) summed over tokens
        lengths.append(m.sum(-1))  # (N,) token counts |y|
        pis[-1] = pis[-1] * m[..., None]  # (N, L, V) masked positions carry no gradient
    return _assemble(loss_name, pis, onehots, logps, lengths, (ref_chosen_logps, ref_rejected_logps), hparams)
