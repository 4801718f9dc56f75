"""Prop. 1 along the real optimizer step inside any transformers ``Trainer`` / TRL run: ``ExplainCallback``.

Around every optimizer step (the Trainer's ``on_pre_optimizer_step`` / ``on_optimizer_step`` events) the callback
keeps theta_t, takes Delta theta_t = theta_{t+1} - theta_t from the Trainer's own optimizer, and records for every
probe response of the first ``num_prompts`` probe prompts the predicted change <grad log pi(y_o), Delta theta_t>
(one JVP) next to the measured one. A Trainer's loss is opaque to a callback, so the update is not split into the
loss's terms here (the engine's ``--explain-prompts`` does that): the record has the one term "real update". It is
written as the engine's ``explain/`` folder, so ``python -m llm explain OUT_DIR`` and the app read it.

Single process only (under DDP / FSDP the parameters a callback sees are shards or replicas).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from llm.attribution_record import write_attribution
from llm.explain import observed_probes
from llm.hooks import snapshot
from llm.linearize import directional_changes

__all__ = ["ExplainCallback", "REAL_UPDATE"]

REAL_UPDATE = "real update"


class ExplainCallback(TrainerCallback):
    """Record Prop. 1 along every real optimizer step of a ``Trainer`` for the first probe prompts.

    Args:
        probes: a ProbeSet (llm.data); tokenizer and policy: as for ``ProbeEvaluator``.
        out_dir: a run directory (e.g. ProbeCallback's); the record goes to ``out_dir/explain``.
        num_prompts: probe prompts observed (every probe type of each, plus the teacher-forced argmax on y+).
    """

    def __init__(self, probes, tokenizer, policy, out_dir: str | Path, *, num_prompts: int = 16,
                 chunk_size: int = 256):
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.probes, self.tokenizer, self.policy, self.out_dir = probes, tokenizer, policy, Path(out_dir)
        self.num_prompts, self.chunk_size = num_prompts, chunk_size

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if int(args.world_size) > 1:
            raise ValueError("ExplainCallback runs in a single process only")
        batch, argmax, self.kinds, self.owners = observed_probes(self.probes, self.tokenizer, self.policy,
                                                                 self.num_prompts)
        device = next(model.parameters()).device
        self.observed, self.argmax = batch.to(device), argmax.to(device)
        self.values, self.contributions, self.steps, self.lrs = [], [], [], []
        self.before, self.seconds = None, 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before = snapshot(model)

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        t0 = time.perf_counter()
        now = dict(model.named_parameters())
        update = {n: now[n].detach() - b for n, b in self.before.items()}
        was_training = model.training
        model.eval()
        try:
            values, change = directional_changes(model, self.before, self.observed, [update], self.argmax,
                                                 self.chunk_size)
        finally:
            model.train(was_training)
        self.values.append(values.double().cpu().numpy())
        self.contributions.append(change.double().cpu().numpy())
        self.steps.append(int(state.global_step) + 1)
        self.lrs.append(float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float("nan"))
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        self.optimizer_kind = type(inner).__name__
        self.before = None
        self.seconds += time.perf_counter() - t0

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.steps:
            return
        was_training = model.training
        model.eval()
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        final, _ = directional_changes(model, params, self.observed, [], self.argmax, self.chunk_size)
        model.train(was_training)
        self.values.append(final.double().cpu().numpy())
        write_attribution(self.out_dir / "explain", values=np.stack(self.values),
                          contributions=np.stack(self.contributions), steps=self.steps, learning_rates=self.lrs,
                          remainder_norms=[0.0] * len(self.steps), terms=(REAL_UPDATE,), probe_types=self.kinds,
                          prompts=self.owners, optimizer=self.optimizer_kind,
                          loss="trainer", extra={"seconds": self.seconds, "source": "ExplainCallback"})
