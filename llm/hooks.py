"""Per-step hooks of the engine's training loop: code that sees theta_t and the real update Delta theta_t.

``llm.training.train(cfg, hooks=[...])`` calls, on the main process of a single-process run:

- ``hook.on_train_begin(run)`` once, with a :class:`RunContext` (the run's encoded data, references, objective,
  probe set and tokenizer), before the first step;
- ``hook.on_step(step)`` after every optimizer step, with a :class:`StepContext`: theta_t (the parameters before the
  step, detached clones), the model now at theta_{t+1}, the optimizer with its state after the step, the (clipped)
  gradients still in ``p.grad``, the step's pairs and learning rate;
- ``hook.on_train_end(run)`` once, after the last step.

Every method is optional. Parameters are cloned only when a hook is present, so a run without hooks pays nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["RunContext", "StepContext", "snapshot", "call_hooks", "hooks_from_config"]


@dataclasses.dataclass
class RunContext:
    """What a run trains on, as the engine resolved it (shared by every step)."""

    run_dir: Path
    cfg: Any  # the TrainConfig
    model: torch.nn.Module
    tokenizer: Any
    objective: Any  # llm.objective.Objective
    chosen: Sequence  # EncodedSequence per training pair
    rejected: Sequence | None
    ref_chosen: torch.Tensor | None  # (N_train,) precomputed reference summed log-probs, or None
    ref_rejected: torch.Tensor | None
    ref_model: torch.nn.Module | None  # the per-step reference, when cfg.reference == "per_step"
    probes: Any  # llm.data.ProbeSet
    policy: Any  # llm.encoding.TruncationPolicy
    optimizer: torch.optim.Optimizer
    total_steps: int


@dataclasses.dataclass
class StepContext:
    """One optimizer step just taken: theta_t -> theta_{t+1} = theta_t + Delta theta_t."""

    step: int  # 1-based index of the step just taken
    examples_seen: int
    indices: list[int]  # the training pairs of the step's effective batch
    lr: float  # the learning rate the step used (after warm-up scaling)
    grad_norm: float  # the gradient norm before clipping
    params_before: dict[str, torch.Tensor]  # theta_t of every trainable parameter (detached clones)
    model: torch.nn.Module  # now at theta_{t+1}
    optimizer: torch.optim.Optimizer  # state after the step

    def update(self) -> dict[str, torch.Tensor]:
        """Return Delta theta_t = theta_{t+1} - theta_t per trainable parameter (the optimizer's real update)."""
        now = dict(self.model.named_parameters())
        return {n: now[n].detach() - before for n, before in self.params_before.items()}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Return detached clones of the trainable parameters (theta_t), by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def call_hooks(hooks: Sequence[object], method: str, arg) -> None:
    """Call ``hook.method(arg)`` on every hook that defines it."""
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn(arg)


def hooks_from_config(cfg) -> list[object]:
    """The hooks a config asks for: the explain attribution when ``cfg.explain_prompts > 0``, the token view
    (llm.token_view) when ``cfg.token_view > 0``."""
    hooks: list[object] = []
    if getattr(cfg, "explain_prompts", 0) > 0:
        from llm.explain import AttributionHook

        hooks.append(AttributionHook(num_prompts=cfg.explain_prompts))
    if getattr(cfg, "token_view", 0) > 0:
        from llm.token_view import TokenViewHook

        hooks.append(TokenViewHook(cfg.token_view))
    return hooks
