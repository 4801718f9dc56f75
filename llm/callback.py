"""Probes inside any Hugging Face ``Trainer`` run (transformers, TRL's SFTTrainer and DPOTrainer): ``ProbeCallback``.

The callback evaluates a probe set with the engine's batched ``ProbeEvaluator`` at step 0, every
``eval_every_steps`` optimizer steps and at the final step, and writes the engine's run-directory format, so the app's
LLM page and ``llm.runs`` read these runs like the engine's own:

- ``config.json`` (written first): the callback's settings, the probe set, the truncation record, the Trainer's
  arguments and whatever the caller adds;
- ``env.json``: versions, git sha, device (``toykit.runs``);
- ``metrics.jsonl``: tidy probe rows ``{step, examples_seen, phase, probe, statistic, value, count}`` and the
  Trainer's own logs as TRL-named training rows ``{step, examples_seen, phase, loss, rewards/margins, ...}``.

Only the main process (``state.is_world_process_zero``) writes. It alone evaluates under DDP (the other ranks wait
at the next gradient all-reduce); under FSDP every rank runs the probe forward passes, since each one all-gathers
the sharded weights. The probes see the model as the Trainer runs it: under ``bf16=True`` (TRL's default)
accelerate wraps its forward in autocast, so the probe values carry that precision. A run resumed with
``trainer.train(resume_from_checkpoint=...)`` continues its own directory: rows written after the checkpoint are
dropped and the checkpoint's step is evaluated again, so none are duplicated.

Dashboards: after each evaluation the probe means are added to the Trainer's next log under ``logps/probe_<type>``
(TRL's ``logps/`` section, beside ``logps/chosen``) and ``probes/<type>_peakiness``; with ``squeeze_alarm`` a
``squeeze/alarm`` value (0 or 1) goes with them. Reporters (W&B, trackio, TensorBoard) see them when the callback
runs before them: add it with ``callback.attach(trainer)`` rather than ``callbacks=[...]``. TRL's DPOTrainer and
SFTTrainer score their own batches with a fused LM head; the callback runs its own forward passes on the probes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from transformers import DefaultFlowCallback, TrainerCallback

from llm.alarm import SqueezeMonitor, SqueezeRule, dashboard_metrics
from llm.probes import ProbeEvaluator
from toykit.runs import MetricsWriter, create_run_dir, json_safe, read_metrics, write_json

__all__ = ["ProbeCallback", "examples_per_step", "is_sharded"]

_SHARDED = (FSDPModule, FullyShardedDataParallel)  # FSDP2 (fully_shard) and FSDP1 wrappers

_NOT_LOGGED = ("total_flos",)  # Trainer log keys that are not training curves


def is_sharded(model) -> bool:
    """Return True when ``model`` (or a submodule) is FSDP-sharded, so a forward pass needs every rank."""
    return any(isinstance(m, _SHARDED) for m in model.modules())


def examples_per_step(args) -> int:
    """Return the nominal global batch of one optimizer step: per-device batch x accumulation x processes."""
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * int(args.world_size)


class ProbeCallback(TrainerCallback):
    """Evaluate a probe set at step 0, every ``eval_every_steps`` steps and at the end of a ``Trainer`` run.

    Args:
        evaluator: the engine's batched probe evaluator (the probe set is tokenised once, when it is built).
        out_dir: the run directory; it must not already hold a run unless the Trainer resumes from a checkpoint.
        eval_every_steps: optimizer steps between evaluations; 0 evaluates at step 0 and at the end only.
        phase: the ``phase`` column of every row (e.g. "sft", "dpo"), as in the engine's runs.
        log_training: also write the Trainer's logs (loss, learning_rate, TRL's rewards/*, logps/*) as training rows.
        config: extra JSON-ready fields recorded under "run" in config.json (model name, dataset, ...).
        squeeze_alarm: a ``SqueezeRule`` (llm.alarm) checked after every evaluation: when it fires, a warning with
            the evidence is logged, a ``squeeze/*`` row written, and its action taken ("stop": the Trainer stops
            after this step; "checkpoint": the Trainer saves a checkpoint now).
        dashboard: add the probe means to the Trainer's logs (W&B / trackio / TensorBoard names, see above).

    ``examples_seen`` is the nominal count ``step x per-device batch x accumulation x processes`` (a short last
    batch of an epoch is counted as full).
    """

    def __init__(self, evaluator: ProbeEvaluator, out_dir: str | Path, *, eval_every_steps: int = 0,
                 phase: str = "train", log_training: bool = True, config: dict[str, Any] | None = None,
                 squeeze_alarm: SqueezeRule | None = None, dashboard: bool = True):
        if not isinstance(evaluator, ProbeEvaluator):
            raise ValueError(f"evaluator must be an llm.probes.ProbeEvaluator, got {type(evaluator).__name__}")
        if isinstance(eval_every_steps, bool) or not isinstance(eval_every_steps, int) or eval_every_steps < 0:
            raise ValueError(f"eval_every_steps must be an integer >= 0, got {eval_every_steps!r}")
        if not phase:
            raise ValueError("phase must be a non-empty name, e.g. 'sft' or 'dpo'")
        self.evaluator, self.out_dir = evaluator, Path(out_dir)
        self.eval_every_steps, self.phase, self.log_training = eval_every_steps, phase, log_training
        if squeeze_alarm is not None and not isinstance(squeeze_alarm, SqueezeRule):
            raise ValueError(f"squeeze_alarm must be an llm.alarm.SqueezeRule, got {type(squeeze_alarm).__name__}")
        self.extra_config = dict(config or {})
        self.squeeze_alarm, self.dashboard = squeeze_alarm, dashboard
        self.monitor = SqueezeMonitor(squeeze_alarm) if squeeze_alarm is not None else None
        self._writer: MetricsWriter | None = None
        self._evaluated: set[int] = set()
        self._pending: dict[str, float] = {}
        self.probe_seconds = 0.0  # wall time of this process's probe evaluations (summary.json, benchmarks)
        self._started = 0.0

    def attach(self, trainer):
        """Add this callback to ``trainer`` right after its flow callback, before the reporters; return trainer."""
        handler = trainer.callback_handler
        handler.callbacks = [c for c in handler.callbacks if c is not self]
        first = 1 if handler.callbacks and isinstance(handler.callbacks[0], DefaultFlowCallback) else 0
        handler.callbacks.insert(first, self)
        return trainer

    # ------------------------------------------------------------------------------------------------------------
    # Run directory.

    def _config(self, args) -> dict[str, Any]:
        return {"kind": "trainer_probe_callback", "phase": self.phase, "eval_every_steps": self.eval_every_steps,
                "examples_per_step": examples_per_step(args), "probe_set": self.evaluator.probe_set.describe(),
                "probe_batch_size": self.evaluator.batch_size,
                "greedy_max_new_tokens": self.evaluator.greedy_max_new_tokens,
                "truncation": self.evaluator.truncation, "run": self.extra_config,
                "squeeze_alarm": dataclasses.asdict(self.squeeze_alarm) if self.squeeze_alarm else None,
                "trainer_args": json.loads(json.dumps(args.to_dict(), default=str))}

    def _open(self, args, resumed_step: int) -> None:
        """Create the run directory, or continue it when the Trainer resumed from step ``resumed_step`` > 0."""
        metrics = self.out_dir / "metrics.jsonl"
        if resumed_step > 0 and (self.out_dir / "config.json").exists():
            # Rows after the checkpoint belong to the lost future; the probes of the checkpoint's own step are
            # evaluated again (same weights, same values) so that every rank takes the same decisions under FSDP.
            kept = [r for r in read_metrics(metrics) if r["step"] < resumed_step
                    or (r["step"] == resumed_step and "probe" not in r)] if metrics.exists() else []
            tmp = metrics.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(json_safe(r)) + "\n" for r in kept))
            os.replace(tmp, metrics)
        else:
            create_run_dir(self._config(args), name=self.phase, out_dir=self.out_dir,
                           env_extra={"world_size": int(args.world_size)})
        self._writer = MetricsWriter(metrics)

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation.

    def _evaluate(self, args, state, model, control=None) -> None:
        """Evaluate on the main process; on every process when the model is sharded (its forward all-gathers)."""
        step = int(state.global_step)
        if step in self._evaluated or not (state.is_world_process_zero or is_sharded(model)):
            return
        t0 = time.perf_counter()
        result = self.evaluator(model)
        self.probe_seconds += time.perf_counter() - t0
        self._evaluated.add(step)
        if not state.is_world_process_zero:
            return
        seen = step * examples_per_step(args)
        self._writer.write_many(result.rows(step, seen, self.phase))
        means = result.means()
        if self.dashboard:
            self._pending = dashboard_metrics(means)
        if self.monitor is None:
            return
        event = self.monitor.update(step, seen, means)
        if self.dashboard:
            self._pending["squeeze/alarm"] = float(self.monitor.fired is not None)
        if event is not None:
            self._writer.write(self.monitor.row(event, self.phase))
            if control is not None and event.action == "stop":
                control.should_training_stop = True
            elif control is not None and event.action == "checkpoint":
                control.should_save = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._evaluated, self.probe_seconds, self._started = set(), 0.0, time.perf_counter()
        if state.is_world_process_zero:
            self._open(args, int(state.global_step))
        self._evaluate(args, state, model, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.eval_every_steps and state.global_step % self.eval_every_steps == 0:
            self._evaluate(args, state, model, control)
            if self._pending:
                control.should_log = True  # the probe means reach the reporters at this step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and logs is not None and self._writer is not None):
            return
        values = {k: float(v) for k, v in logs.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_LOGGED}
        if self._pending:
            logs.update(self._pending)  # reporters after this callback (see attach) show them
            self._pending = {}
        if values and self.log_training:
            step = int(state.global_step)
            self._writer.write({"step": step, "examples_seen": step * examples_per_step(args), "phase": self.phase,
                                **values})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._evaluate(args, state, model)
        if not state.is_world_process_zero or self._writer is None:
            return
        self._writer.close()
        self._writer = None
        wall = time.perf_counter() - self._started
        write_json(self.out_dir / "summary.json", {"final_step": int(state.global_step),
                                                   "probe_seconds": self.probe_seconds, "wall_seconds": wall,
                                                   "probe_share": self.probe_seconds / wall if wall > 0 else None,
                                                   "examples_seen": int(state.global_step) * examples_per_step(args),
                                                   "evaluated_steps": sorted(self._evaluated),
                                                   "squeeze_alarm": (dataclasses.asdict(self.monitor.fired)
                                                                     if self.monitor and self.monitor.fired
                                                                     else None)})

