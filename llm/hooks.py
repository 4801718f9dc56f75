"""Per-step hooks of the engine's training loop: code that sees theta_t and the real update Delta theta_t.

``llm.training.train(cfg, hooks=[...])`` calls, on the main process of a single-process run:

- ``hook.on_train_begin(run)`` once, with a :class:`RunContext` (the run's encoded data, references, objective,
  probe set and tokenizer), before the first step;
- ``hook.on_step(step)`` after every optimizer step, with a :class:`StepContext`: theta_t (the parameters before the
  step, detached clones), the model now at theta_{t+1}, the optimizer with its state after the step, the (clipped)
  gradients still in ``p.grad``, the step's pairs and learning rate;
- ``hook.on_train_end(run)`` once, after the last step.

Every method is optional. Parameters are cloned only when a hook has ``on_step``, so a run without one pays nothing.
A hook that keeps state across steps has ``state_dict()`` (tensors and plain data) and ``load_state_dict(state)``:
the engine saves it in every checkpoint and, on ``--resume``, gives it back after ``on_train_begin``
(``RunContext.start_step`` > 0), so a resumed run's hooks continue as in an uninterrupted run.
A hook with ``wants_response_gradients = True`` also gets, in ``StepContext.response_gradients``, the step's loss
gradient split by the responses it flows through (``ResponseSplit``, one backward pass per response: on CUDA y+ and
y- are scored in two graphs, so the two passes cost one backward's FLOPs in all; on a CPU the engine's own backward
runs unchanged and one pass more gives y+, which measured faster there at small sizes: ``bench_explain.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch

from llm.objective import NLL_PART

__all__ = ["RunContext", "StepContext", "snapshot", "call_hooks", "hooks_from_config", "wants_response_gradients",
           "ResponseSplit", "RESPONSES", "NLL", "hook_states", "check_hook_states", "restore_hooks"]

#: the per-example log-prob tensors of ``llm.objective.batch_loss`` a loss gradient flows through, by response
RESPONSES = {"chosen": "logps_chosen", "rejected": "logps_rejected"}
#: the key of the NLL term's gradient in ``ResponseSplit.result`` (batch_loss's part of that name: rpo, orpo)
NLL = NLL_PART


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
    start_step: int = 0  # > 0 when resumed from a checkpoint: the hooks' state is then restored after on_train_begin


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
    #: response ("chosen", "rejected") -> parameter name -> its part of the loss gradient at theta_t, before
    #: clipping (they sum to the unclipped p.grad), plus NLL = "nll_chosen" (the NLL term on y+, then not in
    #: "chosen") for a loss with one (rpo, orpo); None unless a hook has wants_response_gradients
    response_gradients: dict[str, dict[str, torch.Tensor]] | None = None

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


def wants_response_gradients(hooks: Sequence[object]) -> bool:
    """Whether any hook asks for the per-response split of the loss gradient."""
    return any(getattr(hook, "wants_response_gradients", False) for hook in hooks)


class ResponseSplit:
    """The loss gradient of one optimizer step split by the responses it flows through, over its micro-batches.

    Two ways, both one backward pass per response:

    - on the run's own graph (``separate_graphs=False``): the engine's own backward pass (p.grad exactly as in a run
      without hooks), plus one backward pass per response but the last, whose part is p.grad minus the others;
    - on two graphs (``separate_graphs=True``, batch_loss's ``separate``: y+ and y- scored in two forward passes):
      one backward pass through each graph, p.grad their sum; the passes cost one backward's FLOPs in all.

    A loss with an NLL term on y+ (batch_loss's ``nll_chosen``: rpo, orpo) takes one backward pass more, through y+
    with the NLL term's weights alone: its part is ``NLL`` and the "chosen" part is the rest of y+'s gradient (the
    preference term's pull), so the parts still sum to p.grad; p.grad itself is computed as without it.

    Args:
        params: the trainable parameters by name.
    """

    def __init__(self, params: dict[str, torch.Tensor], separate_graphs: bool):
        self.params, self.separate = params, separate_graphs
        self.names = list(params)
        self.grads: dict[str, dict[str, torch.Tensor]] = {}
        self.keys: list[str] = []  # responses seen, in RESPONSES order

    def backward(self, losses: torch.Tensor, parts: dict[str, torch.Tensor | None], denominator: int) -> None:
        """Backpropagate ``losses.sum() / denominator`` of a micro-batch (``llm.objective.batch_loss``), by response.

        Math: grad_theta L = sum_k sum_i (dL/d lp_k,i) grad_theta lp_k,i (chain rule through the summed log-probs
        lp_k of response k; the reference log-probs are constants); the weights dL/d lp_k come from a backward pass
        through the loss alone. The NLL term's part is sum_i (dL_nll/d lp+_i) grad_theta lp+_i.
        """
        keys = [k for k, part in RESPONSES.items() if parts.get(part) is not None and parts[part].requires_grad]
        self.keys = keys if len(keys) > len(self.keys) else self.keys
        objective = losses.sum() / denominator
        lps = [parts[RESPONSES[k]] for k in keys]
        weights = list(torch.autograd.grad(objective, lps, retain_graph=True, allow_unused=True))
        own = keys if self.separate else keys[:-1]
        passes = list(zip(own, lps, weights))
        nll = parts.get(NLL_PART)
        if nll is not None and nll.requires_grad and "chosen" in keys:  # the NLL term's weights dL_nll/d lp+
            lp_c = parts[RESPONSES["chosen"]]
            passes.append((NLL, lp_c, torch.autograd.grad(nll.sum() / denominator, [lp_c], retain_graph=True,
                                                          allow_unused=True)[0]))
        if not self.separate:
            objective.backward(retain_graph=bool(passes))  # the run's own backward pass: p.grad as without hooks
        for j, (key, lp, w) in enumerate(passes):
            if w is None:  # the loss does not depend on this response
                continue
            grads = torch.autograd.grad((w.detach() * lp).sum(), [self.params[n] for n in self.names],
                                        retain_graph=j + 1 < len(passes), allow_unused=True)
            acc = self.grads.setdefault(key, {})
            for name, g in zip(self.names, grads):
                if g is None:
                    continue
                acc[name] = acc[name] + g if name in acc else g
                if self.separate and key != NLL:  # the NLL pass is a part of y+'s, already in p.grad
                    p = self.params[name]
                    p.grad = g.clone() if p.grad is None else p.grad + g

    def result(self) -> dict[str, dict[str, torch.Tensor]]:
        """Response -> name -> its part of the step's gradient (before clipping: call before clip_grad_norm_).

        Keys: "chosen" (y+ without the NLL term), "rejected", and ``NLL`` for a loss with an NLL term on y+.
        """
        out = dict(self.grads)
        if not self.separate and self.keys:
            last, others = self.keys[-1], [self.grads.get(k, {}) for k in self.keys[:-1]]
            out[last] = {n: p.grad - sum(o[n] for o in others if n in o) for n, p in self.params.items()
                         if p.grad is not None}
        if NLL in out and "chosen" in out:  # y+'s gradient minus the NLL term's: the preference term's pull
            nll = out[NLL]
            out["chosen"] = {n: g - nll[n] if n in nll else g for n, g in out["chosen"].items()}
        return out


def _stateful(hooks: Sequence[object]) -> dict[str, object]:
    """Hook key ("<index>:<class>", index among the hooks with a state) -> hook, for hooks with ``state_dict``."""
    found = [h for h in hooks if hasattr(h, "state_dict") and hasattr(h, "load_state_dict")]
    return {f"{i}:{type(h).__name__}": h for i, h in enumerate(found)}


def hook_states(hooks: Sequence[object]) -> dict[str, Any]:
    """The state of every hook with ``state_dict()`` (tensors and plain data), by hook key, for a checkpoint."""
    return {key: hook.state_dict() for key, hook in _stateful(hooks).items()}


def check_hook_states(hooks: Sequence[object], states: dict[str, Any], where: Path) -> None:
    """Refuse to resume when the checkpoint ``where`` lacks the state of a hook that keeps one.

    Raises:
        ValueError: naming the hook and the checkpoint (e.g. a run checkpointed without the attribution).
    """
    missing = [key for key in _stateful(hooks) if key not in states]
    if missing:
        raise ValueError(f"cannot resume from {where}: it holds no state for the hook(s) {missing} (the run was "
                         f"checkpointed without them); resume without them or train again with a new --out-dir")


def restore_hooks(hooks: Sequence[object], states: dict[str, Any]) -> None:
    """Give every hook with ``load_state_dict`` its state from a checkpoint (after its ``on_train_begin``)."""
    for key, hook in _stateful(hooks).items():
        hook.load_state_dict(states[key])


def hooks_from_config(cfg) -> list[object]:
    """The hooks a config asks for: the explain attribution when ``cfg.explain_prompts > 0``, the token view
    (llm.token_view) when ``cfg.token_view > 0``."""
    hooks: list[object] = []
    if getattr(cfg, "explain_prompts", 0) > 0:
        from llm.explain import AttributionHook

        hooks.append(AttributionHook(num_prompts=cfg.explain_prompts, every=getattr(cfg, "explain_every", 1)))
    if getattr(cfg, "token_view", 0) > 0:
        from llm.token_view import TokenViewHook

        hooks.append(TokenViewHook(cfg.token_view))
    return hooks
