"""Online RL of causal LMs with the GRPO family: seeded group sampling, a programmatic reward, probes throughout.

``train_rl(cfg, reward_fn)`` runs ``cfg.loss`` in {grpo, dr_grpo, dapo, rloo, gspo, cispo} (``toykit.group_losses``,
the same objectives the toy simulator uses). Each step takes ``cfg.batch_size`` prompts (epochs of permutations
seeded by (seed, epoch), as ``llm.training``), samples ``cfg.num_generations`` completions per prompt with a
sampler seeded by (seed, step), scores them with ``reward_fn(prompts, completions) -> list[float]`` (TRL's reward
function convention; the engine never builds one: the CLI passes the synthetic world's judge), turns rewards into
advantages the objective's way and takes ``cfg.num_iterations`` optimizer updates on the group. The first update is
on-policy (old log-probs = the policy's, detached, as TRL does), so rho = 1 there.

The run directory matches ``llm.training``'s: config.json, env.json, tokenizer/, metrics.jsonl (one row per step
with TRL's names: loss, reward, reward_std, completions/mean_length, entropy, clip_ratio/region_mean,
frac_reward_zero_std, grad_norm, learning_rate, kl when beta > 0, and ``lld_statistics`` of the step's groups;
tidy probe rows per evaluation), probes/,
checkpoint.pt, model/, summary.json. The probe set gains two probe types sampled once from the starting policy
and judged by ``reward_fn``: ``group_best`` and ``group_worst`` (the highest- and lowest-reward completion of a
probe prompt's group, None where the group's rewards tie), saved in probe_groups.json so a resumed run tracks the
same texts. Resuming replays the same prompts and samples, so it equals the uninterrupted run.

Per-step hooks (``llm.hooks``, as ``llm.training.train``'s): ``on_train_begin(RunContext)`` (its objective a
``llm.rl_explain.GroupObjective``, no encoded pairs, ``total_steps`` counting optimizer updates, i.e. steps times
``num_iterations``), ``on_step(StepContext)`` after every optimizer update with theta_t and the model at theta_{t+1}
(``step`` counts updates), ``on_train_end`` at the end or a stop. A hook with ``wants_response_gradients`` gets the
update's gradient split into the objective's terms (``llm.rl_explain``: positive-advantage pull, negative-advantage
push, the KL where the loss has one), keyed by term; ``cfg.explain_prompts > 0`` adds the attribution hook
(``llm.explain.AttributionHook`` over those terms, saved under explain/). Without hooks the loop runs as before.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from llm.checkpoint import load_checkpoint, load_tensors, rewind_outputs, save_checkpoint, save_tensors
from llm.config import TrainConfig
from llm.hooks import RunContext, StepContext, call_hooks, snapshot, wants_response_gradients
from llm.inputs import build_inputs, check_device
from llm.logps import logps_from_logits, response_logits
from llm.objective import NonFiniteLossError
from llm.optim import build_optimizer, warmup_schedule
from llm.probes import ProbeEvaluator
from llm.rl_explain import GroupObjective, group_term_backward, group_term_weights, rl_hooks_from_config
from llm.training import TrainResult, _check_resumable, _evaluate, _means, _Plan, _save_tokenizer
from toykit.group_losses import clipped_tokens, compute_group_loss, get_group_loss, group_advantages, rloo_advantages
from toykit.runs import MetricsWriter, atomic_path, check_run_dir, create_run_dir, read_json, write_env, write_json

__all__ = ["RewardFn", "train_rl", "sample_groups", "completion_batch", "completion_logps", "lld_statistics"]

RewardFn = Callable[[list[str], list[str]], list[float]]
GROUP_PROBES = ("group_best", "group_worst")


def _prompt_ids(tokenizer, prompt: str, max_tokens: int) -> list[int]:
    """Token ids of ``prompt``, its last ``max_tokens`` kept (the assistant turn ends the prompt)."""
    return tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_tokens:]


@torch.no_grad()
def sample_groups(model, prompt_ids: Sequence[list[int]], *, num_generations: int, max_new_tokens: int,
                  temperature: float, seed: int, pad_token_id: int, eos_token_id: int) -> list[list[int]]:
    """Sample ``num_generations`` completions per prompt (ancestral, top_k 0, top_p 1), seeded locally.

    Returns:
        P * G completions (prompt-major) as token-id lists cut after their first eos (eos kept).
    """
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)  # (P, Lp) left-padded
    attn = torch.zeros_like(ids)
    for n, p in enumerate(prompt_ids):
        ids[n, width - len(p):], attn[n, width - len(p):] = torch.tensor(p), 1
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             num_return_sequences=num_generations, pad_token_id=pad_token_id,
                             eos_token_id=eos_token_id)
    model.train(was_training)
    out = []
    for row in gen[:, width:].tolist():  # (P * G, <= max_new_tokens)
        cut = row.index(eos_token_id) + 1 if eos_token_id in row else len(row)
        out.append(row[:cut])
    return out


def completion_batch(prompt_ids: Sequence[list[int]], completions: Sequence[list[int]], pad_token_id: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded [prompt; completion] rows: input_ids, attention_mask, response_mask, each (B, L)."""
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completions)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attn, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for n, (p, c) in enumerate(zip(prompt_ids, completions)):
        ids[n, :len(p) + len(c)] = torch.tensor(list(p) + list(c))
        attn[n, :len(p) + len(c)] = 1
        resp[n, len(p):len(p) + len(c)] = 1
    return ids, attn, resp


def completion_logps(model, ids, attn, resp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, T), their 0/1 mask (B, T) and per-token entropies (B, T, detached) of completions."""
    logits, ids_k, resp_k = response_logits(model, ids, attn, resp)  # (B, K, V), (B, K)
    scored = logps_from_logits(logits, ids_k, resp_k)
    mask = resp_k[:, 1:].to(scored.token_logps.dtype)  # (B, K-1): logits at l predict token l + 1
    with torch.no_grad():
        logp_all = torch.log_softmax(logits[:, :-1].float(), -1)  # (B, K-1, V)
        entropy = -(logp_all.exp() * logp_all).sum(-1) * mask
    return scored.token_logps, mask, entropy


def lld_statistics(completions: Sequence[list[int]], adv: torch.Tensor, delta: torch.Tensor) -> dict[str, float]:
    """Lazy-likelihood-displacement statistics of one step's groups (the keys present where defined).

    overlap of a positive-advantage response = the share of its tokens whose id occurs in a negative-advantage
    response of its group. Returns the mean change of summed log pi over the step of positive-advantage responses
    with overlap >= 1/2 (``lld/gain_high_overlap``) and < 1/2 (``lld/gain_low_overlap``), and the share of them
    whose log-prob fell (``lld/frac_positive_fell``).

    Args:
        completions: P * G token-id lists (prompt-major); adv, delta: (P, G) advantages and Delta log pi(o).
    """
    groups, size = adv.shape
    high, low = [], []
    for p in range(groups):
        negative = {t for g in range(size) if adv[p, g] < 0 for t in completions[p * size + g]}
        for g in range(size):
            if adv[p, g] > 0:
                tokens = completions[p * size + g]
                share = sum(t in negative for t in tokens) / max(len(tokens), 1)
                (high if share >= 0.5 else low).append(float(delta[p, g]))
    out = {}
    if high:
        out["lld/gain_high_overlap"] = sum(high) / len(high)
    if low:
        out["lld/gain_low_overlap"] = sum(low) / len(low)
    if high or low:
        out["lld/frac_positive_fell"] = sum(d < 0 for d in high + low) / len(high + low)
    return out


def _advantages(loss: str, rewards: torch.Tensor) -> torch.Tensor:
    spec = get_group_loss(loss)
    return rloo_advantages(rewards) if spec.advantage == "loo" else group_advantages(rewards, spec.advantage)


def _group_probes(cfg: TrainConfig, model, tok, probes, reward_fn: RewardFn, run_dir: Path, resuming: bool):
    """The probe set plus group_best / group_worst, sampled once from the starting policy (saved for resumes)."""
    path = run_dir / "probe_groups.json"
    if resuming and path.exists():
        saved = read_json(path)
    else:
        ids = [_prompt_ids(tok, p, cfg.max_prompt_tokens) for p in probes.prompts]
        comps = sample_groups(model, ids, num_generations=cfg.num_generations,
                              max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                              seed=cfg.seed * 1_000_003 + 999_983, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
        texts = [" " + tok.decode(c, skip_special_tokens=True).strip() for c in comps]
        g = cfg.num_generations
        rewards = [float(r) for r in reward_fn([p for p in probes.prompts for _ in range(g)], texts)]
        best, worst = [], []
        for n in range(len(probes.prompts)):
            scored = sorted(zip(rewards[n * g:(n + 1) * g], texts[n * g:(n + 1) * g]), key=lambda t: t[0])
            differ = scored[-1][0] > scored[0][0] and scored[-1][1].strip() and scored[0][1].strip()
            best.append(scored[-1][1] if differ else None)
            worst.append(scored[0][1] if differ else None)
        saved = {"group_best": best, "group_worst": worst}
        write_json(path, saved)
    return dataclasses.replace(probes, responses={**probes.responses, **{k: tuple(saved[k]) for k in GROUP_PROBES}})


def train_rl(cfg: TrainConfig, reward_fn: RewardFn, model=None, tokenizer=None, pairs=None,
             probes=None, *, hooks=()) -> TrainResult:
    """Run (or resume) one online-RL phase; see the module docstring for what it writes.

    Args:
        cfg: the run's config; ``cfg.loss`` is a group objective.
        reward_fn: (prompts, completions) -> one float per completion (completions have a leading space).
        model, tokenizer, pairs, probes: as ``llm.training.train``; the pairs' prompts are the RL prompts.
        hooks: per-step hooks (llm.hooks) that see theta_t and every real update; cfg.explain_prompts adds one.
    """
    spec = get_group_loss(cfg.loss)  # ValueError for a pairwise loss
    hp = cfg.group_hparams()
    torch.manual_seed(cfg.seed)
    resuming = cfg.resume and (Path(cfg.out_dir) / "config.json").exists()
    run_dir = Path(cfg.out_dir) if resuming else None
    if resuming:
        _check_resumable(cfg, run_dir, hooks)  # the attribution is refused from a checkpoint (not in it)
    else:
        check_run_dir(cfg.out_dir)
    device = check_device(cfg)
    inputs = build_inputs(cfg, model=model, tokenizer=tokenizer, pairs=pairs, probes=probes,
                          tokenizer_dir=run_dir / "tokenizer" if resuming else None)
    model, tok = inputs.model, inputs.tokenizer
    prompts = list(dict.fromkeys(p.prompt for p in inputs.train_pairs))  # unique, in data order
    prompt_ids = [_prompt_ids(tok, p, cfg.max_prompt_tokens) for p in prompts]
    if not resuming:
        run_dir = create_run_dir(cfg, cfg.phase_name, out_dir=cfg.out_dir, root=cfg.runs_root)
    elif not (run_dir / "env.json").exists():
        write_env(run_dir)
    _save_tokenizer(tok, run_dir)
    state = load_checkpoint(run_dir, map_location=device) if resuming else None
    ref_model = None
    if hp.get("beta", 0.0) > 0:  # the k3 KL needs the starting policy
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        ref_path = run_dir / "reference_model.pt"
        if resuming and ref_path.exists():
            ref_model.load_state_dict(load_tensors(ref_path, map_location=device))
        else:
            save_tensors(ref_model.state_dict(), ref_path)
    probe_set = _group_probes(cfg, model, tok, inputs.probes, reward_fn, run_dir, resuming)
    evaluator = ProbeEvaluator(probe_set, tok, inputs.policy, batch_size=cfg.probe_batch_size,
                               greedy_max_new_tokens=cfg.greedy_max_new_tokens, mode=cfg.probe_mode)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum)
    scheduler = warmup_schedule(optimizer, cfg.warmup_steps)
    plan = _Plan(len(prompts), dataclasses.replace(cfg, grad_accum=1))
    metrics_path, step = run_dir / "metrics.jsonl", 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        rewind_outputs(run_dir, metrics_path, step, state["metrics_bytes"])
    elif resuming:
        rewind_outputs(run_dir, metrics_path, -1, 0)
    seen, phase, writer = plan.examples_after(step), cfg.phase_name, MetricsWriter(metrics_path)
    summary = {"status": "running", "phase": phase, "loss": cfg.loss, "objective_hparams": hp,
               "advantage": spec.advantage, "num_prompts": len(prompts), "num_generations": cfg.num_generations,
               "total_steps": plan.total_steps, "probe_set": probe_set.describe()}
    timing = {"train_seconds": 0.0, "probe_seconds": 0.0, "sample_seconds": 0.0}
    last = None

    def probe_now():
        t0 = time.perf_counter()
        result = _evaluate(evaluator, model, run_dir, writer, step, seen, phase)
        timing["probe_seconds"] += time.perf_counter() - t0
        return result

    view = None
    if cfg.token_view:  # the start's weights are saved once, so a resumed run compares with the same start
        from llm.token_view import TokenViewHook

        view = TokenViewHook(cfg.token_view)
        view_run = SimpleNamespace(run_dir=run_dir, model=model, tokenizer=tok, probes=probe_set,
                                   policy=inputs.policy)
        view.on_train_begin(view_run)
    hooks = [*hooks, *rl_hooks_from_config(cfg)]
    run_ctx = RunContext(run_dir, cfg, model, tok, GroupObjective(cfg.loss, hp), (), None, None, None, ref_model,
                         probe_set, inputs.policy, optimizer, plan.total_steps * cfg.num_iterations)
    call_hooks(hooks, "on_train_begin", run_ctx)
    stepping = any(hasattr(h, "on_step") for h in hooks)  # theta_t is cloned only for a hook that reads it
    split = wants_response_gradients(hooks)  # the gradient by term (llm.rl_explain)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if step == 0:
        last = probe_now()
    model.train()
    while step < plan.total_steps:
        t0 = time.perf_counter()
        idx = plan.indices(step)
        group_ids = [prompt_ids[i] for i in idx for _ in range(cfg.num_generations)]  # (B,) prompt-major
        comps = sample_groups(model, [prompt_ids[i] for i in idx], num_generations=cfg.num_generations,
                              max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                              seed=cfg.seed * 1_000_003 + step, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
        timing["sample_seconds"] += time.perf_counter() - t0
        texts = [" " + tok.decode(c, skip_special_tokens=True).strip() for c in comps]
        rewards = torch.tensor([float(r) for r in reward_fn([prompts[i] for i in idx
                                                             for _ in range(cfg.num_generations)], texts)],
                               dtype=torch.float64).view(len(idx), cfg.num_generations)  # (P, G)
        if not bool(torch.isfinite(rewards).all()):
            raise ValueError(f"reward_fn returned a NaN or inf reward at step {step + 1}")
        adv = _advantages(cfg.loss, rewards).reshape(-1).float().to(device)  # (B,)
        ids, attn, resp = (t.to(device) for t in completion_batch(group_ids, comps, tok.pad_token_id))
        ref = None
        if ref_model is not None:
            with torch.no_grad():
                ref = completion_logps(ref_model, ids, attn, resp)[0]
        old, losses, clips = None, [], []
        for it in range(cfg.num_iterations):
            logps, mask, entropy = completion_logps(model, ids, attn, resp)
            old = logps.detach() if old is None else old  # the sampling policy (first update: on-policy)
            loss = compute_group_loss(cfg.loss, logps, old, adv, mask, ref, **hp)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"group loss {cfg.loss!r} is {float(loss)} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            if split:  # the run's own backward pass plus one per term but the last
                by_term = group_term_backward(loss, logps, group_term_weights(cfg.loss, logps, old, adv, mask, ref,
                                                                              hp), named)
            else:
                loss.backward()
            lr = optimizer.param_groups[0]["lr"]
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            before = snapshot(model) if stepping else None
            optimizer.step()
            scheduler.step()
            if stepping:
                call_hooks(hooks, "on_step", StepContext(step * cfg.num_iterations + it + 1, seen + len(idx),
                                                       list(idx), lr, float(grad_norm), before, model, optimizer,
                                                       by_term if split else None))
            losses.append(float(loss.detach()))
            clips.append(float(clipped_tokens(cfg.loss, logps.detach(), old, adv, mask,
                                              **{k: v for k, v in hp.items() if k != "beta"}).sum()
                               / mask.sum().clamp(min=1)))
        with torch.no_grad():  # how each sampled response's log-prob moved over the step (for LLD)
            new = completion_logps(model, ids, attn, resp)[0]
        lld = lld_statistics(comps, adv.view(len(idx), -1).cpu(),
                             ((new - old) * mask).sum(-1).view(len(idx), -1).cpu())  # (P, G)
        step, seen = step + 1, seen + len(idx)
        std = rewards.std(-1)  # (P,) Bessel-corrected, as TRL's nanstd
        row = {"step": step, "examples_seen": seen, "phase": phase, "epoch": seen / len(prompts),
               "loss": losses[-1], "reward": float(rewards.mean()), "reward_std": float(std.mean()),
               "frac_reward_zero_std": float((std == 0).double().mean()),
               "completions/mean_length": float(mask.sum(-1).mean()),
               "entropy": float(entropy.sum() / mask.sum().clamp(min=1)),
               "clip_ratio/region_mean": float(sum(clips) / len(clips)), "grad_norm": float(grad_norm),
               "learning_rate": lr}
        row.update(lld)
        if ref is not None:
            d = ref - old
            row["kl"] = float(((torch.exp(d) - d - 1) * mask).sum() / mask.sum().clamp(min=1))
        writer.write(row)
        timing["train_seconds"] += time.perf_counter() - t0
        on_cadence = seen // plan.eval_every > (seen - len(idx)) // plan.eval_every
        if (on_cadence and step < plan.total_steps) or (step == plan.total_steps and cfg.eval_at_end):
            last = probe_now()
        if step < plan.total_steps and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                            examples_seen=seen, metrics_path=metrics_path)
        if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps and step < plan.total_steps:
            call_hooks(hooks, "on_train_end", run_ctx)
            writer.close()
            return TrainResult(run_dir, model, tok, "stopped", step, seen, last, summary)
    call_hooks(hooks, "on_train_end", run_ctx)
    writer.close()
    if view is not None:
        view.on_train_end(view_run)
    final_probes = _means(last)
    if cfg.checkpoint_at_end:
        save_checkpoint(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        examples_seen=seen, metrics_path=metrics_path, extra={"final_probes": final_probes})
    if cfg.save_model:
        with atomic_path(run_dir / "model") as tmp:
            model.save_pretrained(str(tmp))
            shutil.copytree(run_dir / "tokenizer", tmp, dirs_exist_ok=True)
    summary.update(status="completed", step=step, examples_seen=seen, **timing, final_probes=final_probes)
    write_json(run_dir / "summary.json", summary)
    return TrainResult(run_dir, model, tok, "completed", step, seen, last, summary)
