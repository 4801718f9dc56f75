"""Sympy derivations of A, of G for five losses, and of the squeeze update, lambdified for numeric checks.

Each derivation starts from the definitions (log-softmax, the loss written in sympy, a linear softmax W x),
differentiates symbolically, and returns the expression together with a numpy function of it. They are a
second, independent route to the closed forms in ``toykit.softmax``, ``toykit.residuals`` and
``toykit.squeeze``; the tests compare the two. Labels enter as one-hot symbol vectors e, so one lambdified
function serves every label. Shapes: V classes, D feature dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp

from toykit.losses import get_loss

__all__ = ["Derivation", "SYMBOLIC_LOSSES", "log_softmax_jacobian_sympy", "residual_sympy",
           "squeeze_update_sympy"]

SYMBOLIC_LOSSES = ("sft", "dpo", "ipo", "slic", "dpop")


@dataclass(frozen=True)
class Derivation:
    """A symbolic result and its lambdified numeric form.

    Attributes:
        exprs: the derived sympy matrices (column vectors or square matrices), in the order ``fn`` returns them.
        symbols: the free symbols, grouped by argument (e.g. z, e, hyperparameters).
        fn: numpy function of the derivation; its signature is documented by the function that built it.
    """

    exprs: tuple[sp.Matrix, ...]
    symbols: dict[str, tuple[sp.Symbol, ...]]
    fn: Callable


def _vector(name: str, size: int) -> sp.Matrix:
    return sp.Matrix(sp.symbols(f"{name}0:{size}", real=True))


def _log_softmax(z: sp.Matrix) -> sp.Matrix:
    return z - sp.ones(z.rows, 1) * sp.log(sum(sp.exp(zi) for zi in z))


def _sigmoid(x: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-x))


def _check_size(num_classes: int, name: str = "num_classes") -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{name} must be an int >= 2, got {num_classes!r}")


def _as_vector(a, size: int, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.shape != (size,):
        raise ValueError(f"{name}: expected shape ({size},), got {arr.shape}")
    return arr


def _one_hot(label: int, size: int, name: str) -> np.ndarray:
    if not 0 <= int(label) < size:
        raise ValueError(f"{name}: label {label} is outside [0, {size})")
    return np.eye(size)[int(label)]


def log_softmax_jacobian_sympy(num_classes: int) -> Derivation:
    """Derive A = d log Softmax(z) / dz symbolically for V = ``num_classes``.

    Args:
        num_classes: V >= 2.

    Returns:
        Derivation with exprs (A,), A a (V, V) sympy Matrix in the symbols z0..z{V-1}, and fn(z (V,)) ->
        (V, V) float64 numpy array with A[i, j] = d log pi_i / d z_j.

    Math: A = Jacobian_z (z - 1 log sum_j exp z_j) = I - 1 pi^T.
    References: Ren & Sutherland 2025, Proposition 1 (A^t(x_o) = grad_z log pi).
    """
    _check_size(num_classes)
    z = _vector("z", num_classes)
    A = _log_softmax(z).jacobian(z)  # (V, V)
    lam = sp.lambdify([list(z)], A, "numpy")

    def fn(z_value) -> np.ndarray:
        return np.asarray(lam(_as_vector(z_value, num_classes, "z")), dtype=np.float64)

    return Derivation((A,), {"z": tuple(z)}, fn)


def _symbolic_loss(name: str, lp_c: sp.Expr, lp_r: sp.Expr, ref_c: sp.Symbol, ref_r: sp.Symbol,
                   hp: dict[str, sp.Symbol]) -> sp.Expr:
    """Write loss ``name`` in sympy from its paper's definition (not from toykit.losses)."""
    h = (lp_c - ref_c) - (lp_r - ref_r)
    if name == "sft":
        return -lp_c
    if name == "dpo":
        return -sp.log(_sigmoid(hp["beta"] * h))
    if name == "ipo":
        return (h - 1 / (2 * hp["beta"])) ** 2
    if name == "slic":
        return sp.Max(0, hp["delta"] - lp_c + lp_r) - hp["lam"] * lp_c
    if name == "dpop":
        return -sp.log(_sigmoid(hp["beta"] * (h - hp["lam"] * sp.Max(0, ref_c - lp_c))))
    raise ValueError(f"no symbolic form for loss {name!r}; available: {', '.join(SYMBOLIC_LOSSES)}")


_SYMBOLIC_HPARAMS = {"sft": (), "dpo": ("beta",), "ipo": ("beta",), "slic": ("delta", "lam"),
                     "dpop": ("beta", "lam")}


def residual_sympy(loss_name: str, num_classes: int) -> Derivation:
    """Derive G+ = dL/dz+ and G- = dL/dz- by differentiating the loss written in sympy as a function of logits.

    The chosen and rejected responses have separate logits z+ and z- (separate inputs); for a shared input
    (the toy) pass the same z twice and add the two results.

    Args:
        loss_name: one of ``SYMBOLIC_LOSSES`` (sft, dpo, ipo, slic, dpop).
        num_classes: V >= 2.

    Returns:
        Derivation with exprs (G+, G-) as (V, 1) Matrices (G- is the zero vector for SFT) and
        fn(z_chosen (V,), y_chosen, z_rejected (V,), y_rejected, *, ref_chosen=0.0, ref_rejected=0.0,
        **hparams) -> (G+ (V,), G- (V,)) float64; hyperparameters default to the registry's defaults.

    Math: lp = e_y^T log Softmax(z); L = loss(lp+, lp-, ref+, ref-); G+- = dL/dz+-.
    References: Ren & Sutherland 2025, Section 3 and Figure 2 (G per algorithm).
    """
    if loss_name not in SYMBOLIC_LOSSES:
        raise ValueError(f"no symbolic form for loss {loss_name!r}; available: {', '.join(SYMBOLIC_LOSSES)}")
    _check_size(num_classes)
    z_c, z_r = _vector("zc", num_classes), _vector("zr", num_classes)
    e_c, e_r = _vector("ec", num_classes), _vector("er", num_classes)
    ref_c, ref_r = sp.symbols("ref_c ref_r", real=True)
    hp = {k: sp.Symbol(k, positive=True) if k == "beta" else sp.Symbol(k, nonnegative=True)
          for k in _SYMBOLIC_HPARAMS[loss_name]}
    lp_c = (e_c.T * _log_softmax(z_c))[0, 0]
    lp_r = (e_r.T * _log_softmax(z_r))[0, 0]
    loss = _symbolic_loss(loss_name, lp_c, lp_r, ref_c, ref_r, hp)
    G_c, G_r = sp.Matrix([loss]).jacobian(z_c).T, sp.Matrix([loss]).jacobian(z_r).T  # (V, 1) each
    args = [list(z_c), list(e_c), list(z_r), list(e_r), ref_c, ref_r, *hp.values()]
    lam = sp.lambdify(args, [G_c, G_r], "numpy")
    defaults = get_loss(loss_name).defaults  # the registry supplies default values only, not the math

    def fn(z_chosen, y_chosen, z_rejected, y_rejected, *, ref_chosen=0.0, ref_rejected=0.0, **hparams):
        unknown = set(hparams) - set(hp)
        if unknown:
            raise ValueError(f"residual_sympy({loss_name!r}): unknown hyperparameters {sorted(unknown)}; "
                             f"takes {sorted(hp)}")
        values = [float(hparams.get(k, defaults[k])) for k in hp]
        g_c, g_r = lam(_as_vector(z_chosen, num_classes, "z_chosen"), _one_hot(y_chosen, num_classes, "y_chosen"),
                       _as_vector(z_rejected, num_classes, "z_rejected"),
                       _one_hot(y_rejected, num_classes, "y_rejected"), float(ref_chosen), float(ref_rejected),
                       *values)
        return (np.asarray(g_c, dtype=np.float64).reshape(num_classes),  # (V, 1) -> (V,)
                np.asarray(g_r, dtype=np.float64).reshape(num_classes))

    symbols = {"z_chosen": tuple(z_c), "e_chosen": tuple(e_c), "z_rejected": tuple(z_r),
               "e_rejected": tuple(e_r), "ref": (ref_c, ref_r), "hparams": tuple(hp.values())}
    return Derivation((G_c, G_r), symbols, fn)


def squeeze_update_sympy(num_classes: int, dim: int) -> Derivation:
    """Derive one negative-gradient step on label ybar for the linear softmax z = W x, then z' and pi'.

    The step descends log pi(ybar | x) (equivalently ascends the NLL of ybar), pushing ybar down:
    W' = W - eta d log pi(ybar)/dW, z' = W' x, pi' = Softmax(z').

    Args:
        num_classes: V >= 2.
        dim: D >= 1, the feature dimension of x.

    Returns:
        Derivation with exprs (z', pi', z' - z) as (V, 1) Matrices in the symbols of W (V x D), x (D), eta and
        the one-hot e of ybar, and fn(W (V, D), x (D,), eta, ybar) -> (z' (V,), pi' (V,)) float64.

    Math: z' = z + eta ||x||^2 (pi - e_ybar) = z + c (pi - e_ybar); pi'_i = pi_i exp(c (pi_i - e_i)) / Z.
    References: Ren & Sutherland 2025, Section 3.3 and Appendix C (the squeezing effect); PAPER.md section 4.
    """
    _check_size(num_classes)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    W = sp.Matrix(num_classes, dim, lambda i, k: sp.Symbol(f"W{i}_{k}", real=True))  # (V, D)
    x = _vector("x", dim)  # (D, 1)
    e = _vector("e", num_classes)  # (V, 1) one-hot of ybar
    eta = sp.Symbol("eta", positive=True)
    z = W * x  # (V, 1)
    log_pi_ybar = (e.T * _log_softmax(z))[0, 0]
    grad_W = sp.Matrix(num_classes, dim, lambda i, k: sp.diff(log_pi_ybar, W[i, k]))  # (V, D)
    z_new = (W - eta * grad_W) * x  # (V, 1)
    unnormalised = z_new.applyfunc(sp.exp)  # (V, 1)
    pi_new = unnormalised / sum(unnormalised)
    lam = sp.lambdify([[list(row) for row in W.tolist()], list(x), eta, list(e)], [z_new, pi_new], "numpy")

    def fn(W_value, x_value, eta_value, ybar) -> tuple[np.ndarray, np.ndarray]:
        W_arr = np.asarray(W_value, dtype=np.float64)
        if W_arr.shape != (num_classes, dim):
            raise ValueError(f"W: expected shape ({num_classes}, {dim}), got {W_arr.shape}")
        z_out, pi_out = lam(W_arr.tolist(), _as_vector(x_value, dim, "x"), float(eta_value),
                            _one_hot(ybar, num_classes, "ybar"))
        return (np.asarray(z_out, dtype=np.float64).reshape(num_classes),  # (V, 1) -> (V,)
                np.asarray(pi_out, dtype=np.float64).reshape(num_classes))

    symbols = {"W": tuple(W), "x": tuple(x), "eta": (eta,), "e": tuple(e)}
    return Derivation((z_new, pi_new, z_new - z), symbols, fn)
