"""toykit: the mathematics of learning dynamics (Ren & Sutherland, ICLR 2025) on toy models.

Notation (paper symbol -> code name, shape, meaning); N batch, V vocabulary/classes, L length, P parameters:

| paper | code | shape | meaning |
|---|---|---|---|
| z = h_theta(x) | ``logits`` / ``z`` | (N, V) or (N, L, V) | logits of the model |
| pi = Softmax(z) | ``pi`` | (N, V) | predicted distribution |
| A(x_o) = I - 1 pi^T | ``log_softmax_jacobian(pi)`` | (V, V) | Jacobian of log pi w.r.t. z at x_o |
| K(x_o, x_u) | ``empirical_ntk(model, x_o, x_u)`` | (N_o, N_u, V, V) | empirical NTK of the logits |
| G(x_u, y_u) = dL/dz | ``residual(loss, ...)`` | (V,) or (L, V) | residual set by the loss |
| w_{i,t} = dL/dl_{i,t} | ``compute_group_weights(loss, ...)`` | (B, T) | per-token weight of a group objective |
| A_i (group advantage) | ``group_advantages(rewards)`` | (P, G) | reward minus the group's baseline |
| Delta log pi(y, x_o) | ``delta_log_pi`` | (N_o, V) | new minus old log-prob after one step |
| eta | ``eta`` | scalar | learning rate |
| c = eta ||x||^2 | ``c`` | scalar | step size of the linear-softmax squeeze |
"""

import importlib

# Names are imported on first use (PEP 562), so ``import toykit.configs`` (every command line's parser) does not
# load torch; ``from toykit import softmax`` works as before. The sympy derivations live in ``toykit.symbolic``
# (imported on demand: sympy is slow to load): Derivation, log_softmax_jacobian_sympy, residual_sympy,
# squeeze_update_sympy.
_EXPORTS = {
    "decomposition": ("Decomposition", "EtaSweep", "decompose", "diagonal_preconditioner", "eta_sweep",
                      "loglog_slope"),
    "group_losses": ("GROUP_LOSSES", "GroupLossSpec", "GroupResidual", "compute_group_loss", "compute_group_weights",
                     "get_group_loss", "group_advantages", "group_loss_names", "group_residual", "rloo_advantages"),
    "losses": ("LOSSES", "LossSpec", "compute_loss", "compute_loss_grad", "get_loss", "loss_names"),
    "models": ("MLP", "LinearSoftmax", "SmallConvNet"),
    "ntk": ("check_preconditioner", "empirical_ntk", "linear_softmax_ntk", "ntk_matrix", "trainable_params"),
    "residuals": ("Residual", "residual", "sequence_residual"),
    "softmax": ("check_distribution", "log_softmax", "log_softmax_jacobian", "softmax"),
    "squeeze": ("PositiveContrast", "SqueezeClaims", "peaky_distribution", "positive_contrast", "positive_step",
                "random_distribution", "rise_threshold", "rose", "squeeze_claims", "squeeze_logits_step",
                "squeeze_step", "temper", "ystar_conditional_log_gain"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'toykit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"toykit.{_WHERE[name]}"), name)


__all__ = [
    # softmax and A
    "softmax", "log_softmax", "check_distribution", "log_softmax_jacobian",
    # toy models and K
    "LinearSoftmax", "MLP", "SmallConvNet",
    "empirical_ntk", "linear_softmax_ntk", "ntk_matrix", "trainable_params", "check_preconditioner",
    # losses and G
    "LossSpec", "LOSSES", "get_loss", "loss_names", "compute_loss", "compute_loss_grad",
    "Residual", "residual", "sequence_residual",
    # online RL: the GRPO family over a group of sampled responses
    "GroupLossSpec", "GROUP_LOSSES", "get_group_loss", "group_loss_names", "compute_group_loss",
    "compute_group_weights", "group_advantages", "rloo_advantages", "GroupResidual", "group_residual",
    # Proposition 1
    "Decomposition", "EtaSweep", "decompose", "eta_sweep", "diagonal_preconditioner", "loglog_slope",
    # squeezing
    "squeeze_step", "positive_step", "squeeze_logits_step", "rise_threshold", "rose", "SqueezeClaims",
    "squeeze_claims", "PositiveContrast", "positive_contrast", "ystar_conditional_log_gain",
    "peaky_distribution", "random_distribution", "temper",
]
