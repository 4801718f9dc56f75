"""Finetune causal LMs (SFT, extend, any registry loss) while tracking probe log-probs; evaluate probes alone.

``train(cfg)`` writes a run directory: config.json (first), env.json, tokenizer/, metrics.jsonl (a TRL-named
training row per optimizer step and one tidy row per probe type and statistic per evaluation), probes/step_*.npz
(per-example arrays; their key order in probes/keys.json), checkpoint.pt, model/ and summary.json. The data order of
epoch e is a permutation seeded by (cfg.seed, e), so a resumed run replays exactly the batches it would have seen;
torch's global generator (dropout) is seeded from cfg.seed and saved in every checkpoint.

Every input is checked (config, run folder, data, model, tokenizer, encodings) before the run folder is created, so
a refused input leaves nothing behind. Every file is written through ``toykit.runs.atomic_path`` (temporary name,
fsync, rename), and what a killed run lacks (env.json, tokenizer/, the reference, model/, summary.json) is rebuilt
on ``--resume``, so a kill at any moment resumes to the uninterrupted run's files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llm.alarm import SqueezeMonitor, SqueezeRule
from llm.checkpoint import (CHECKPOINT_NAME, load_checkpoint, load_tensors, probe_array_path, rewind_outputs,
                            save_checkpoint, save_tensors)
from llm.config import RESUME_FREE_FIELDS, EvalConfig, TrainConfig
from llm.parallel import SINGLE_PROCESS, World
from llm.encoding import encode_record, truncation_report
from llm.hooks import (RunContext, ResponseSplit, StepContext, call_hooks, check_hook_states, hook_states,
                       hooks_from_config, restore_hooks, snapshot, wants_response_gradients)
from llm.inputs import build_inputs, check_device, check_pairs_differ
from llm.lora import AdapterFreeReference, adapters_disabled, apply_lora, is_peft_model, load_adapter
from llm.objective import (NonFiniteLossError, Objective, batch_loss, make_pair_batch, precompute_reference_logps,
                           resolve_prompt_sharing, trl_metrics)
from llm.optim import build_optimizer, warmup_schedule
from llm.probes import ProbeEvaluator, ProbeResult
from toykit.configs import config_to_dict
from toykit.runs import (MetricsWriter, atomic_path, check_run_dir, create_run_dir, read_json, write_env,
                         write_json)

__all__ = ["TrainResult", "train", "evaluate", "epoch_order", "NonFiniteLossError"]


@dataclasses.dataclass
class TrainResult:
    """What a run produced: its directory, the trained model and tokenizer, where it stopped, the last probes."""

    run_dir: Path
    model: object
    tokenizer: object
    status: str
    step: int
    examples_seen: int
    probes: ProbeResult | None
    summary: dict


_PARTS = ("logps_chosen", "logps_rejected", "ref_chosen", "ref_rejected")  # per-example tensors of batch_loss


def epoch_order(num_pairs: int, seed: int, epoch: int) -> list[int]:
    """The data order of ``epoch``: a permutation seeded by (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_pairs, generator=gen).tolist()


class _Plan:
    """Which pairs each optimizer step uses: epochs of seeded permutations cut into effective batches."""

    def __init__(self, num_pairs: int, cfg: TrainConfig):
        self.n, self.seed, self.size = num_pairs, cfg.seed, cfg.batch_size * cfg.grad_accum
        self.per_epoch = math.ceil(num_pairs / self.size)
        self._orders: dict[int, list[int]] = {}
        total, seen = cfg.epochs * self.per_epoch, 0
        if cfg.max_examples is not None:
            for s in range(total):
                seen += len(self.indices(s))
                if seen >= cfg.max_examples:
                    total = s + 1
                    break
        self.total_steps = total
        #: examples between probe evaluations: the config's, or about 10 evaluations over the run
        self.eval_every = cfg.eval_every or max(1, math.ceil(self.examples_after(total) / 10))

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch not in self._orders:
            self._orders = {epoch: epoch_order(self.n, self.seed, epoch)}
        return self._orders[epoch][k * self.size: (k + 1) * self.size]

    def examples_after(self, step: int) -> int:
        full, rest = divmod(step, self.per_epoch)
        return full * self.n + min(rest * self.size, self.n)


def _check_resumable(cfg: TrainConfig, run_dir: Path, hooks=(), restores_hooks: bool = False) -> None:
    """Refuse a resume whose config differs, of a completed run, or (in a loop that does not checkpoint its hooks'
    state, ``restores_hooks`` False) of a run with the attribution from a checkpoint."""
    saved, now = read_json(run_dir / "config.json"), config_to_dict(cfg)
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE_FIELDS and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(f"cannot resume {run_dir}: config differs in {diff} (saved vs now: "
                         f"{[(saved.get(k), now.get(k)) for k in diff]})")
    summary = run_dir / "summary.json"
    if summary.exists() and read_json(summary).get("status") == "completed":
        raise ValueError(f"{run_dir} already completed; start a new run instead of resuming")
    attributing = cfg.explain_prompts > 0 or any(getattr(h, "resumable", True) is False for h in hooks)
    if attributing and not restores_hooks and (run_dir / CHECKPOINT_NAME).exists():  # none: it starts over
        raise ValueError(f"cannot resume {run_dir} with the attribution (--explain-prompts): its per-term momentum "
                         f"buffers and record are not in the checkpoint, so a resumed record would cover only part "
                         f"of the run; train it again from the start with a new --out-dir")
    stateless = [type(h).__name__ for h in hooks if getattr(h, "resumable", True) is False
                 and not (hasattr(h, "state_dict") and hasattr(h, "load_state_dict"))]
    if stateless and (run_dir / CHECKPOINT_NAME).exists():  # a hook that needs its state but cannot save it
        raise ValueError(f"cannot resume {run_dir} with the hook(s) {stateless}: they are not resumable and keep "
                         f"no state_dict to restore; train again from the start with a new --out-dir")


def _evaluate(evaluator: ProbeEvaluator, model, run_dir: Path, writer: MetricsWriter, step: int, seen: int,
              phase: str) -> ProbeResult:
    result = evaluator(model)
    writer.write_many(result.rows(step, seen, phase))
    arrays = result.arrays()
    keys_path = run_dir / "probes" / "keys.json"
    keys_path.parent.mkdir(exist_ok=True)
    if not keys_path.exists():
        write_json(keys_path, {"keys": list(arrays), "num_probes": len(evaluator.probe_set),
                               "probe_set": evaluator.probe_set.describe()})
    with atomic_path(probe_array_path(run_dir, step)) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return result


def _means(result: ProbeResult | None) -> dict[str, float]:
    return {f"{p}/{s}": v for (p, s), v in (result.means().items() if result else [])}


def _save_tokenizer(tokenizer, run_dir: Path) -> None:
    """Write the run's tokenizer/ (atomically) unless a complete one is there (rebuilt when a kill lost it)."""
    if not (run_dir / "tokenizer").is_dir():
        with atomic_path(run_dir / "tokenizer") as tmp:
            tokenizer.save_pretrained(str(tmp))


def train(cfg: TrainConfig, model=None, tokenizer=None, pairs=None, probes=None, *,
          world: World = SINGLE_PROCESS, hooks=()) -> TrainResult:
    """Run (or resume) one finetuning phase described by ``cfg``; see the module docstring for the outputs.

    Args:
        cfg: the run's config.
        model, tokenizer: a model object to continue from (e.g. the result of an SFT phase) and its tokenizer.
        pairs: preference pairs (default: read from ``cfg.data``); the last ``cfg.held_out`` are not trained on.
        probes: a ProbeSet (default: ``cfg.probes`` or derived from the first training pairs).
        world: the data-parallel process group (llm.parallel); rank 0 alone writes and evaluates the probes.
        hooks: per-step hooks (llm.hooks) that see theta_t and the real update; cfg.explain_prompts adds one.

    Raises:
        NonFiniteLossError: the loss became NaN/inf; summary.json says where, metrics written so far are kept.
    """
    torch.manual_seed(cfg.seed)  # dropout and any other draw from torch's global generator follow --seed
    resuming = world.broadcast(cfg.resume and (Path(cfg.out_dir) / "config.json").exists())
    run_dir = Path(cfg.out_dir) if resuming else None
    hooks = [*hooks, *hooks_from_config(cfg)]
    if resuming:
        _check_resumable(cfg, run_dir, hooks, restores_hooks=True)  # the hooks' state is in every checkpoint
    else:
        check_run_dir(cfg.out_dir)
    check_device(cfg)

    def prepare(tokenizer_dir: Path | None):
        inputs = build_inputs(cfg, model=model, tokenizer=tokenizer, pairs=pairs, probes=probes,
                              tokenizer_dir=tokenizer_dir)
        objective, tok, source = Objective(cfg.loss, cfg.hparams()), inputs.tokenizer, cfg.data or "synthetic pairs"
        if objective.needs_rejected:
            check_pairs_differ(inputs.train_pairs, source, cfg.loss)
        records = [encode_record(tok, p.prompt, (p.chosen, p.rejected) if p.rejected else (p.chosen,),
                                 inputs.policy, f"{source} pair {i}")
                   for i, p in enumerate(inputs.train_pairs)]  # y+ and y- cut as one record (the paper's rule)
        chosen = [r[0] for r in records]
        rejected = [r[1] for r in records] if objective.needs_rejected else None
        evaluator = ProbeEvaluator(inputs.probes, tok, inputs.policy, batch_size=cfg.probe_batch_size,
                                   greedy_max_new_tokens=cfg.greedy_max_new_tokens,
                                   autocast_dtype=torch.bfloat16 if cfg.bf16 else None, mode=cfg.probe_mode)
        return inputs, objective, chosen, rejected, evaluator

    if world.is_main:  # every refusal happens here, before the run folder exists
        inputs, objective, chosen, rejected, evaluator = prepare(run_dir / "tokenizer" if resuming else None)
        if not resuming:
            run_dir = create_run_dir(cfg, cfg.phase_name, out_dir=cfg.out_dir, root=cfg.runs_root)
        elif not (run_dir / "env.json").exists():
            write_env(run_dir)
        _save_tokenizer(inputs.tokenizer, run_dir)
    run_dir = world.broadcast(run_dir)
    if not world.is_main:  # the other ranks load the tokenizer the main process trained and saved
        inputs, objective, chosen, rejected, evaluator = prepare(run_dir / "tokenizer")
    model, tok = inputs.model, inputs.tokenizer
    if cfg.lora_adapter and not is_peft_model(model):  # saved adapters continue training on the same base
        model = load_adapter(model, cfg.lora_adapter)
    elif cfg.lora_r and not is_peft_model(model):  # only the adapters train; B = 0 so step 0 is the base model
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules)
    device = next(model.parameters()).device
    share = resolve_prompt_sharing(model, chosen, rejected, tok.pad_token_id, cfg.share_prompts,
                                   cfg.share_prompts_min_tokens)

    ref_c = ref_r = ref_model = None
    state = load_checkpoint(run_dir, map_location=device) if resuming else None
    if state is not None:  # before anything is rewound: a checkpoint without a hook's state is refused
        check_hook_states(hooks, state.get("hooks", {}), run_dir / CHECKPOINT_NAME)
    reuse = resuming or not world.is_main  # other ranks read what the main process saved
    with world.main_first():
        if objective.needs_reference and cfg.reference == "precomputed":
            ref_path = run_dir / "reference_logps.pt"
            if reuse and ref_path.exists():
                ref_c, ref_r = load_tensors(ref_path, map_location="cpu").values()
            else:  # the reference is the policy before any step (a LoRA run's base), scored once for the dataset
                with adapters_disabled(model):
                    ref_c, ref_r = precompute_reference_logps(model, chosen, rejected, tok.pad_token_id,
                                                              batch_size=cfg.probe_batch_size, bf16=cfg.bf16,
                                                              share_prompts=share)
                if world.is_main:
                    save_tensors({"chosen": ref_c, "rejected": ref_r}, ref_path)
        elif objective.needs_reference and is_peft_model(model):  # TRL's convention: the base, adapters off
            ref_model = AdapterFreeReference(model)
        elif objective.needs_reference:
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
            ref_path = run_dir / "reference_model.pt"
            if reuse and ref_path.exists():
                ref_model.load_state_dict(load_tensors(ref_path, map_location=device))
            elif world.is_main:
                save_tensors(ref_model.state_dict(), ref_path)

    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum)
    scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
    plan = _Plan(len(chosen), cfg)
    metrics_path = run_dir / "metrics.jsonl"
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        if world.is_main:
            rewind_outputs(run_dir, metrics_path, step, state["metrics_bytes"])
    elif resuming and world.is_main:  # killed before the first checkpoint: start over in the same directory
        rewind_outputs(run_dir, metrics_path, -1, 0)
    world.broadcast_parameters(model.parameters())  # identical replicas, whatever each rank loaded
    seen = plan.examples_after(step)
    phase, writer = cfg.phase_name, MetricsWriter(metrics_path if world.is_main else os.devnull)
    summary = {"status": "running", "phase": phase, "loss": cfg.loss, "objective_hparams": objective.hparams,
               "num_train_pairs": len(chosen), "num_held_out": len(inputs.held_out), "total_steps": plan.total_steps,
               "eval_every": plan.eval_every,
               "reference": cfg.reference if objective.needs_reference else None, "share_prompts": share,
               "truncation_train": truncation_report(chosen + (rejected or []), inputs.policy),
               "truncation_probes": evaluator.truncation, "probe_set": inputs.probes.describe()}
    timing = {"train_seconds": 0.0, "probe_seconds": 0.0}
    last = None
    final_probes = state.get("final_probes", {}) if state is not None else {}  # a kill after the end checkpoint
    probe_mode = state.get("probe_mode") if state is not None else None  # ditto: no probe pass runs again
    if hooks and world.world_size > 1:
        raise ValueError("step hooks (explain) run in a single process only")
    run_ctx = RunContext(run_dir, cfg, model, tok, objective, chosen, rejected, ref_c, ref_r, ref_model, inputs.probes,
                         inputs.policy, optimizer, plan.total_steps, step)
    call_hooks(hooks, "on_train_begin", run_ctx)
    if state is not None:
        restore_hooks(hooks, state.get("hooks", {}))

    monitor = (SqueezeMonitor(SqueezeRule(cfg.squeeze_min_drop, cfg.squeeze_min_rise, action=cfg.squeeze_alarm))
               if cfg.squeeze_alarm != "off" and world.is_main else None)

    def probe_now() -> ProbeResult | None:
        if not world.is_main:
            return None
        t0 = time.perf_counter()
        result = _evaluate(evaluator, model, run_dir, writer, step, seen, phase)
        timing["probe_seconds"] += time.perf_counter() - t0
        event = monitor.update(step, seen, result.means()) if monitor is not None else None
        if event is not None:
            writer.write(monitor.row(event, phase))
            summary["squeeze_alarm"] = dataclasses.asdict(event)
            if event.action in ("stop", "checkpoint"):
                save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                examples_seen=seen, metrics_path=metrics_path, extra={"hooks": hook_states(hooks)})
        return result

    def alarm_stops() -> bool:
        return world.broadcast(monitor is not None and monitor.fired is not None and monitor.fired.action == "stop")

    bar = tqdm(total=plan.total_steps, initial=step, disable=not (cfg.progress and world.is_main), desc=phase,
               unit="step")
    try:
        if step == 0:
            last = probe_now()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        stepping = any(hasattr(h, "on_step") for h in hooks)  # theta_t is cloned only for a hook that reads it
        split = wants_response_gradients(hooks)  # the gradient by response: one backward pass through each
        named = {n: p for n, p in model.named_parameters() if p.requires_grad} if split else None
        # On CUDA y+ and y- run in two graphs (the passes then cost one backward in all); on a CPU at small sizes
        # every pass costs its fixed overhead, so the run's own graph and backward plus one pass for y+ is faster.
        separate = split and device.type == "cuda"
        while step < plan.total_steps:
            t0 = time.perf_counter()
            idx = plan.indices(step)
            optimizer.zero_grad(set_to_none=True)
            losses, parts, by_response = [], [], ResponseSplit(named, separate) if split else None
            mine = world.shard(idx)  # this rank's part of the global batch (all of it in one process)
            for start in range(0, len(mine), cfg.batch_size):
                micro = mine[start: start + cfg.batch_size]
                batch = make_pair_batch(micro, chosen, rejected, tok.pad_token_id, share_prompts=share)
                batch = dataclasses.replace(batch, sequences=batch.sequences.to(device))
                loss, part = batch_loss(model, batch, objective, ref_chosen=None if ref_c is None else ref_c[micro],
                                        ref_rejected=None if ref_r is None else ref_r[micro], ref_model=ref_model,
                                        bf16=cfg.bf16, separate=separate)
                if split:
                    by_response.backward(loss, part, len(idx))
                else:
                    (loss.sum() / len(idx)).backward()  # mean over the effective batch, whatever the accumulation
                losses.append(loss.detach())
                parts.append({k: None if v is None else v.detach() for k, v in part.items()})
            split_grads = by_response.result() if split else None  # before clipping
            world.sum_gradients(params)
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf"))
            before = snapshot(model) if stepping else None
            optimizer.step()
            scheduler.step()
            step, seen = step + 1, seen + len(idx)
            if stepping:
                call_hooks(hooks, "on_step", StepContext(step, seen, idx, lr, float(grad_norm), before, model,
                                                       optimizer, split_grads))
            merged = world.gather({k: None if not parts or parts[0][k] is None else torch.cat([p[k] for p in parts])
                                   for k in _PARTS} | {"losses": torch.cat(losses) if losses else None})
            row = {"step": step, "examples_seen": seen, "phase": phase, "epoch": seen / len(chosen),
                   **trl_metrics(merged.pop("losses"), merged, objective.beta), "grad_norm": float(grad_norm),
                   "learning_rate": lr}
            writer.write(row)
            timing["train_seconds"] += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", ex_per_s=f"{len(idx) / (time.perf_counter() - t0):.1f}")
            on_cadence = seen // plan.eval_every > (seen - len(idx)) // plan.eval_every
            if (on_cadence and step < plan.total_steps) or (step == plan.total_steps and cfg.eval_at_end):
                last = probe_now()
            if step == plan.total_steps:
                break
            if cfg.squeeze_alarm == "stop" and alarm_stops():
                call_hooks(hooks, "on_train_end", run_ctx)
                bar.close()
                writer.close()
                summary.update(status="stopped_by_squeeze_alarm", step=step, examples_seen=seen, **timing)
                if world.is_main:
                    write_json(run_dir / "summary.json", summary)
                return TrainResult(run_dir, model, tok, "stopped_by_squeeze_alarm", step, seen, last, summary)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and world.is_main:
                save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                                examples_seen=seen, metrics_path=metrics_path, extra={"hooks": hook_states(hooks)})
            if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
                call_hooks(hooks, "on_train_end", run_ctx)
                bar.close()
                writer.close()
                return TrainResult(run_dir, model, tok, "stopped", step, seen, last, summary)
    except NonFiniteLossError as err:
        bar.close()
        writer.close()
        message = f"{err}: stopped at optimizer step {step + 1} ({seen} examples seen); rows written so far kept"
        if world.is_main:
            write_json(run_dir / "summary.json", {**summary, **timing, "status": "non_finite_loss",
                                                  "message": message, "step": step, "examples_seen": seen})
        raise NonFiniteLossError(f"{message} in {run_dir}") from None
    call_hooks(hooks, "on_train_end", run_ctx)
    bar.close()
    writer.close()
    if not world.is_main:
        return TrainResult(run_dir, model, tok, "completed", step, seen, None, summary)
    if last is not None:
        final_probes = _means(last)
    if cfg.checkpoint_at_end:
        save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        examples_seen=seen, metrics_path=metrics_path,
                        extra={"final_probes": final_probes, "probe_mode": evaluator.active_mode or probe_mode,
                               "hooks": hook_states(hooks)})
    if cfg.save_model and is_peft_model(model):  # adapter/ (PEFT format) and model/: the adapters merged in
        with atomic_path(run_dir / "adapter") as tmp:
            model.save_pretrained(str(tmp))
    if cfg.save_model:
        with atomic_path(run_dir / "model") as tmp:
            (copy.deepcopy(model).merge_and_unload() if is_peft_model(model) else model).save_pretrained(str(tmp))
            shutil.copytree(run_dir / "tokenizer", tmp, dirs_exist_ok=True)  # the run's tokenizer, as saved
    total = timing["train_seconds"] + timing["probe_seconds"]
    summary.update(status="completed", step=step, examples_seen=seen, epochs_completed=seen / len(chosen), **timing,
                   probe_mode=evaluator.active_mode or probe_mode,
                   probe_share=timing["probe_seconds"] / total if total else None, final_probes=final_probes)
    if cfg.figure:  # before summary.json: a completed summary is the run's last write, so a kill before it resumes
        from llm.figures import save_run_figure  # matplotlib only when a figure is asked for

        save_run_figure(run_dir)
    write_json(run_dir / "summary.json", summary)
    return TrainResult(run_dir, model, tok, "completed", step, seen, last, summary)


def evaluate(cfg: EvalConfig, model=None, tokenizer=None, probes=None) -> tuple[ProbeResult, Path]:
    """Evaluate every probe type on a model and write a run directory with step-0 rows and arrays."""
    torch.manual_seed(cfg.seed)
    check_run_dir(cfg.out_dir)
    check_device(cfg)
    inputs = build_inputs(cfg, model=model, tokenizer=tokenizer, probes=probes, need_pairs=not cfg.probes)
    evaluator = ProbeEvaluator(inputs.probes, inputs.tokenizer, inputs.policy, batch_size=cfg.probe_batch_size,
                               greedy_max_new_tokens=cfg.greedy_max_new_tokens,
                               autocast_dtype=torch.bfloat16 if cfg.bf16 else None, mode=cfg.probe_mode)
    run_dir = create_run_dir(cfg, cfg.phase, out_dir=cfg.out_dir, root=cfg.runs_root)  # every input checked first
    t0 = time.perf_counter()
    with MetricsWriter(run_dir / "metrics.jsonl") as writer:
        result = _evaluate(evaluator, inputs.model, run_dir, writer, 0, 0, cfg.phase)
    write_json(run_dir / "summary.json", {"status": "completed", "probe_seconds": time.perf_counter() - t0,
                                          "probe_mode": evaluator.active_mode,
                                          "truncation_probes": evaluator.truncation,
                                          "probe_set": inputs.probes.describe(),
                                          "probes": {f"{p}/{s}": v for (p, s), v in result.means().items()}})
    return result, run_dir
