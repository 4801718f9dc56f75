"""Optimizers by name and the linear warm-up schedule (the paper: RMSprop, 150 warm-up steps, then constant)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

__all__ = ["OPTIMIZERS", "build_optimizer", "warmup_schedule"]


def _sgd(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


def _adamw(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _rmsprop(params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


#: optimizer name -> factory(params, lr, weight_decay, momentum); momentum is ignored by AdamW.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adamw": _adamw, "rmsprop": _rmsprop}


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.0) -> torch.optim.Optimizer:
    """Return the optimizer ``name`` (sgd, adamw, rmsprop) over the trainable ``params``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    return OPTIMIZERS[name]([p for p in params if p.requires_grad], lr, weight_decay, momentum)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Scale the learning rate linearly from lr / warmup_steps at the first step up to lr, then keep it constant."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps)
                                             if warmup_steps else 1.0)
