"""toykit: the mathematics of learning dynamics (Ren & Sutherland, ICLR 2025) on toy models.

Notation (paper symbol -> code name, shape, meaning); N batch, V vocabulary/classes, L length, P parameters:

| paper | code | shape | meaning |
|---|---|---|---|
| z = h_theta(x) | ``logits`` / ``z`` | (N, V) or (N, L, V) | logits of the model |
| pi = Softmax(z) | ``pi`` | (N, V) | predicted distribution |
| A(x_o) = I - 1 pi^T | ``log_softmax_jacobian(pi)`` | (V, V) | Jacobian of log pi w.r.t. z at x_o |
| K(x_o, x_u) | ``empirical_ntk(model, x_o, x_u)`` | (N_o, N_u, V, V) | empirical NTK of the logits |
| G(x_u, y_u) = dL/dz | ``residual(loss, ...)`` | (V,) or (L, V) | residual set by the loss |
| Delta log pi(y, x_o) | ``delta_log_pi`` | (N_o, V) | new minus old log-prob after one step |
| eta | ``eta`` | scalar | learning rate |
| c = eta ||x||^2 | ``c`` | scalar | step size of the linear-softmax squeeze |
"""
