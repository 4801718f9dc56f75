"""The update of one SGD / AdamW / RMSprop step split into one direction per loss term (``llm.explain``'s split).

Optimizers are linear in the gradient g given their preconditioner, so with g = sum_k g_k each term keeps its own
momentum buffer and the update Delta theta_t splits into directions d_k (module docstring of ``llm.explain``):

- SGD: d_k = -eta b_k with b_k = mu b_k + (1 - tau) g_k (b_k = g_k without momentum); weight decay is its own term;
- AdamW: m_k = beta1 m_k + (1 - beta1) g_k, d_k = -(eta / (1 - beta1^t)) m_k / (sqrt(v_t / (1 - beta2^t)) + eps)
  with the optimizer's own second moment v_t (shared, the preconditioner), plus -eta lambda theta_t (decoupled decay);
- RMSprop: d_k = -eta b_k with b_k = mu b_k + g_k / (sqrt(v_t) + eps) (b_k = g_k / (...) without momentum).

References: Loshchilov & Hutter 2019 (AdamW); torch.optim's SGD / AdamW / RMSprop update rules.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["UpdateSplit", "WEIGHT_DECAY"]

WEIGHT_DECAY = "weight decay"


class UpdateSplit:
    """Per-term update directions of a torch SGD / AdamW / RMSprop step, with one momentum buffer per term.

    The arithmetic runs on the trainable parameters flattened into one vector (P,), in the order of
    ``StepContext.params_before``: a handful of vector operations per step, whatever the number of tensors.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, terms: Sequence[str]):
        kind = type(optimizer).__name__
        if kind not in ("SGD", "AdamW", "RMSprop"):
            raise ValueError(f"explain splits SGD, AdamW and RMSprop updates, not {kind}")
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) > 1 or group.get("amsgrad") or group.get("centered") or group.get("maximize"):
            raise ValueError("explain needs one parameter group without amsgrad / centered / maximize")
        self.kind, self.group, self.optimizer, self.terms = kind, group, optimizer, tuple(terms)
        self.buffers: dict[str, torch.Tensor] = {}  # term -> (P,) momentum buffer
        self.names: tuple[str, ...] = ()
        self.shapes: list[torch.Size] = []

    @staticmethod
    def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """(P,) the tensors' values one after the other."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter name -> view of ``flat`` (P,) shaped like the parameter."""
        parts = torch.split(flat, [s.numel() for s in self.shapes])
        return {n: part.view(shape) for n, part, shape in zip(self.names, parts, self.shapes)}

    def _buffer(self, term: str, like: torch.Tensor) -> torch.Tensor:
        return self.buffers.setdefault(term, torch.zeros_like(like))

    def flat_directions(self, ctx, grads: dict[str, dict[str, torch.Tensor]], clip: float
                        ) -> dict[str, torch.Tensor]:
        """Return term -> d_k (P,), the term's part of Delta theta_t (flattened); weight decay is a term.

        The optimizer remainder Delta theta_t - sum_k d_k (its rounding) is not among them: the caller takes it from
        the real update (``AttributionHook`` folds it into the last term over each window).

        Args:
            ctx: the engine's StepContext (theta_t, the model at theta_{t+1}, the optimizer after its step).
            grads: the terms' raw gradients at theta_t (``term_gradients`` or the engine's per-response split).
            clip: the gradient-clipping factor the step applied (1 without clipping).
        """
        g, wd, lr = self.group, float(self.group["weight_decay"]), ctx.lr
        if not self.names:
            self.names = tuple(ctx.params_before)
            self.shapes = [ctx.params_before[n].shape for n in self.names]
        by_name = dict(ctx.model.named_parameters())
        states = [self.optimizer.state[by_name[n]] for n in self.names]
        theta = self.flatten([ctx.params_before[n] for n in self.names])  # (P,)
        parts = {t: self.flatten([grads[t][n] for n in self.names]).mul_(clip) for t in self.terms}
        out: dict[str, torch.Tensor] = {}
        if self.kind == "AdamW":
            b1, b2 = g["betas"]
            steps = {float(st["step"]) for st in states}
            if len(steps) != 1:
                raise ValueError(f"explain needs every parameter stepped alike; AdamW steps differ: {sorted(steps)}")
            k = steps.pop()
            denom = self.flatten([st["exp_avg_sq"] for st in states]).sqrt_()  # sqrt(v_t / (1 - b2^k)) + eps
            denom.div_((1 - b2 ** k) ** 0.5).add_(g["eps"])
            for t, gt in parts.items():
                m = self._buffer(t, gt).mul_(b1).add_(gt, alpha=1 - b1)
                out[t] = (-lr / (1 - b1 ** k)) * m / denom
            if wd:
                out[WEIGHT_DECAY] = (-lr * wd) * theta  # decoupled: -eta lambda theta_t
            return out
        if wd:
            parts[WEIGHT_DECAY] = wd * theta
        if self.kind == "RMSprop":
            avg = self.flatten([st["square_avg"] for st in states]).sqrt_().add_(g["eps"])
            parts = {t: gt / avg for t, gt in parts.items()}
        mu = float(g["momentum"])
        for t, gt in parts.items():
            if mu:
                damp = 1 - g.get("dampening", 0.0) if self.kind == "SGD" and ctx.step > 1 else 1.0
                b = self._buffer(t, gt).mul_(mu).add_(gt, alpha=damp)
                gt = gt + mu * b if g.get("nesterov") else b
            out[t] = -lr * gt
        return out

    def directions(self, ctx, grads: dict[str, dict[str, torch.Tensor]], clip: float
                   ) -> dict[str, dict[str, torch.Tensor]]:
        """``flat_directions`` by parameter name: term -> name -> d_k (the parameter's shape)."""
        return {t: self.unflatten(d) for t, d in self.flat_directions(ctx, grads, clip).items()}
