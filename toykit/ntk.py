"""K, the empirical neural tangent kernel of a logit network, computed with torch.func.

K(x_o, x_u) = J(x_o) P J(x_u)^T with J = d z / d theta over all trainable parameters (frozen parameters and
buffers are held constant) and P an optional diagonal preconditioner (identity for plain SGD).

Two independent algorithms: ``method="jacobian"`` materialises per-example Jacobians with vmap(jacrev);
``method="implicit"`` pulls basis cotangents back through x_u with a vjp and pushes them forward through x_o with
a jvp, never forming J(x_o). Both chunk x_o and x_u into blocks of ``chunk_size`` examples so that memory is
bounded by a block, not by the data set.

Glossary of shapes: N_o / N_u examples, V logits, P parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, jacrev, vjp, vmap

from toykit.forward_ad import jvp

__all__ = ["empirical_ntk", "linear_softmax_ntk", "trainable_params", "check_preconditioner", "ntk_matrix"]

Params = dict[str, torch.Tensor]


def trainable_params(model: nn.Module) -> tuple[Params, Params]:
    """Split a module's state into (trainable parameters, constants) as detached tensors.

    Args:
        model: any module.

    Returns:
        (params, constants): ``params`` maps names of parameters with ``requires_grad`` to their values;
        ``constants`` holds the frozen parameters and the buffers, which ``functional_call`` needs unchanged.
    """
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    constants = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    constants.update({k: v.detach() for k, v in model.named_buffers()})
    return params, constants


def _check_inputs(model: nn.Module, x_o: torch.Tensor, x_u: torch.Tensor, params: Params) -> None:
    for name, x in (("x_o", x_o), ("x_u", x_u)):
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"empirical_ntk({name}): expected a batch of shape (N, ...), got {got}")
        if x.shape[0] == 0:
            raise ValueError(f"empirical_ntk({name}): the batch is empty")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"empirical_ntk({name}): inputs contain NaN/inf")
    if x_o.shape[1:] != x_u.shape[1:]:
        raise ValueError(
            f"empirical_ntk: x_o and x_u must share per-example shape, got {tuple(x_o.shape[1:])} (x_o) "
            f"vs {tuple(x_u.shape[1:])} (x_u)"
        )
    if not params:
        raise ValueError(f"empirical_ntk: {type(model).__name__} has no trainable parameters")
    dtypes = {p.dtype for p in params.values()}
    if len(dtypes) != 1 or x_o.dtype not in dtypes or x_u.dtype not in dtypes:
        raise ValueError(
            f"empirical_ntk: inputs must have the parameters' dtype; params {sorted(map(str, dtypes))}, "
            f"x_o {x_o.dtype}, x_u {x_u.dtype}"
        )


def check_preconditioner(preconditioner: Params | None, params: Params) -> Params | None:
    """Validate a diagonal preconditioner against the trainable parameters and cast it to their dtypes.

    Args:
        preconditioner: None, or name -> tensor with each trainable parameter's shape, entries finite and >= 0.
        params: the trainable parameters (from ``trainable_params``).

    Returns:
        The preconditioner in the parameters' dtypes, or None.

    Raises:
        ValueError: naming the missing/extra keys, the parameter with the wrong shape, or negative/NaN entries.
    """
    if preconditioner is None:
        return None
    if set(preconditioner) != set(params):
        missing, extra = sorted(set(params) - set(preconditioner)), sorted(set(preconditioner) - set(params))
        raise ValueError(f"preconditioner: keys must equal the trainable parameters; missing {missing}, extra {extra}")
    for k, p in preconditioner.items():
        if tuple(p.shape) != tuple(params[k].shape):
            raise ValueError(
                f"preconditioner[{k!r}]: expected shape {tuple(params[k].shape)}, got {tuple(p.shape)}"
            )
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise ValueError(f"preconditioner[{k!r}]: entries must be finite and >= 0 (a diagonal PSD P)")
    return {k: p.to(params[k].dtype) for k, p in preconditioner.items()}


def _logits_fn(model: nn.Module, constants: Params) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """Return f(params, x (n, ...)) -> logits (n, V) with the constants bound."""

    def f(params: Params, x: torch.Tensor) -> torch.Tensor:
        z = functional_call(model, (params, constants), (x,))
        if z.dim() != 2 or z.shape[0] != x.shape[0]:
            raise ValueError(
                f"empirical_ntk: {type(model).__name__} must return logits (N, V) for inputs (N, ...); "
                f"got {tuple(z.shape)} for N = {x.shape[0]}"
            )
        return z

    return f


def _chunks(n: int, chunk_size: int | None) -> list[slice]:
    step = n if chunk_size is None else chunk_size
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _jacobian_block(f, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians of the logits, flattened: (n, V, P)."""

    def single(p: Params, xi: torch.Tensor) -> torch.Tensor:
        return f(p, xi.unsqueeze(0)).squeeze(0)  # (V,)

    jac = vmap(jacrev(single), in_dims=(None, 0))(params, x)  # name -> (n, V, *shape)
    return torch.cat([j.flatten(2) for j in jac.values()], dim=2)  # (n, V, P)


def _ntk_jacobian(f, params, precond, x_o, x_u, chunk_size) -> torch.Tensor:
    scale = None if precond is None else torch.cat([precond[k].flatten() for k in params])  # (P,)
    rows = []
    for so in _chunks(x_o.shape[0], chunk_size):
        J_o = _jacobian_block(f, params, x_o[so])  # (n_o, V, P)
        if scale is not None:
            J_o = J_o * scale
        blocks = []
        for su in _chunks(x_u.shape[0], chunk_size):
            J_u = _jacobian_block(f, params, x_u[su])  # (n_u, V, P)
            blocks.append(torch.einsum("avp,bwp->abvw", J_o, J_u))  # (n_o, n_u, V, V)
        rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows, dim=0)  # (N_o, N_u, V, V)


def _ntk_implicit(f, params, precond, x_o, x_u, chunk_size) -> torch.Tensor:
    columns = []
    for su in _chunks(x_u.shape[0], chunk_size):
        xu = x_u[su]
        z_u, pullback = vjp(lambda p: f(p, xu), params)  # z_u: (n_u, V)
        n_u, V = z_u.shape
        basis = torch.eye(n_u * V, dtype=z_u.dtype, device=z_u.device).reshape(n_u * V, n_u, V)  # (n_u V, n_u, V)
        # Examples do not interact, so cotangent e_(b, w) pulls back to row w of J(x_u[b]).
        (rows_u,) = vmap(pullback)(basis)  # name -> (n_u V, *shape)
        if precond is not None:
            rows_u = {k: v * precond[k] for k, v in rows_u.items()}
        blocks = []
        for so in _chunks(x_o.shape[0], chunk_size):
            xo = x_o[so]

            def push(tangent: Params) -> torch.Tensor:
                return jvp(lambda p: f(p, xo), (params,), (tangent,))[1]  # (n_o, V)

            out = vmap(push)(rows_u)  # (n_u V, n_o, V)
            out = out.reshape(n_u, V, xo.shape[0], V)  # (n_u, V_w, n_o, V_v)
            blocks.append(out.permute(2, 0, 3, 1))  # (n_o, n_u, V_v, V_w)
        columns.append(torch.cat(blocks, dim=0))
    return torch.cat(columns, dim=1)  # (N_o, N_u, V, V)


def empirical_ntk(
    model: nn.Module,
    x_o: torch.Tensor,
    x_u: torch.Tensor,
    *,
    method: str = "jacobian",
    chunk_size: int | None = None,
    preconditioner: Params | None = None,
) -> torch.Tensor:
    """Compute the empirical NTK of a logit network between every x_o and every x_u.

    Args:
        model: a module returning logits (N, V) for inputs (N, ...), acting on each example independently
            (eval mode: no batch statistics). Only parameters with ``requires_grad`` count; buffers and frozen
            parameters are constants.
        x_o: (N_o, ...) observed inputs, same dtype as the parameters.
        x_u: (N_u, ...) updated inputs.
        method: "jacobian" (vmap of jacrev, builds J per block) or "implicit" (vjp then jvp, never builds J(x_o)).
        chunk_size: at most this many examples of x_o and of x_u per block; None = one block each.
        preconditioner: optional diagonal P as a dict name -> tensor shaped like each trainable parameter
            (e.g. Adam/RMSprop's 1 / (sqrt(v) + eps)); entries must be >= 0.

    Returns:
        K: (N_o, N_u, V, V) with K[a, b] = J(x_o[a]) P J(x_u[b])^T, in the paper's order K(x_o, x_u).

    Math: K^t(x_o, x_u) = grad_theta z(x_o) grad_theta z(x_u)^T  (with P: grad z(x_o) P grad z(x_u)^T).
    References: Ren & Sutherland (2025), Proposition 1; Novak et al. (2022), "Fast Finite Width NTK".
    """
    if method not in ("jacobian", "implicit"):
        raise ValueError(f"empirical_ntk(method): expected 'jacobian' or 'implicit', got {method!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"empirical_ntk(chunk_size): expected None or a positive int, got {chunk_size!r}")
    params, constants = trainable_params(model)
    _check_inputs(model, x_o, x_u, params)
    precond = check_preconditioner(preconditioner, params)
    f = _logits_fn(model, constants)
    algorithm = _ntk_jacobian if method == "jacobian" else _ntk_implicit
    return algorithm(f, params, precond, x_o, x_u, chunk_size)


def linear_softmax_ntk(x_o: torch.Tensor, x_u: torch.Tensor, num_classes: int, bias: bool = False) -> torch.Tensor:
    """Return the closed-form eNTK of the linear softmax model z = W x [+ b].

    Args:
        x_o: (N_o, d) observed inputs.
        x_u: (N_u, d) updated inputs.
        num_classes: V.
        bias: whether the model has a bias (adds 1 to the inner product).

    Returns:
        K: (N_o, N_u, V, V), K[a, b] = (x_o[a] . x_u[b] [+ 1]) I_V. It does not depend on W.

    Math: dz_v / dW_{v'k} = delta_{vv'} x_k, so J(x_o) J(x_u)^T = (x_o^T x_u) I_V.
    References: Ren & Sutherland (2025), Section 3.3 (linear softmax: K = ||x||^2 I for x_o = x_u).
    """
    for name, x in (("x_o", x_o), ("x_u", x_u)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"linear_softmax_ntk({name}): expected shape (N, d), got {got}")
    if x_o.shape[1] != x_u.shape[1]:
        raise ValueError(f"linear_softmax_ntk: feature dims differ, x_o {x_o.shape[1]} vs x_u {x_u.shape[1]}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"linear_softmax_ntk(num_classes): expected a positive int, got {num_classes!r}")
    gram = x_o @ x_u.T + (1.0 if bias else 0.0)  # (N_o, N_u)
    eye = torch.eye(num_classes, dtype=gram.dtype, device=gram.device)  # (V, V)
    return gram[:, :, None, None] * eye  # (N_o, N_u, V, V)


def ntk_matrix(K: torch.Tensor) -> torch.Tensor:
    """Flatten a kernel (N_o, N_u, V, V) into the (N_o V, N_u V) matrix whose row (a, v) is J(x_o[a])_v P J^T.

    Args:
        K: (N_o, N_u, V, V) from ``empirical_ntk``.

    Returns:
        (N_o * V, N_u * V) matrix; for x_o = x_u it is the Gram matrix of the logit gradients (symmetric PSD).
    """
    if not isinstance(K, torch.Tensor) or K.dim() != 4 or K.shape[2] != K.shape[3]:
        got = tuple(K.shape) if isinstance(K, torch.Tensor) else type(K).__name__
        raise ValueError(f"ntk_matrix(K): expected shape (N_o, N_u, V, V), got {got}")
    N_o, N_u, V, _ = K.shape
    return K.permute(0, 2, 1, 3).reshape(N_o * V, N_u * V)  # (N_o V, N_u V)
