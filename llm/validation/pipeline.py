"""Validation of the paper's predictions on real language models, end to end: ``python -m llm validate``.

Per seed: build the synthetic world (``llm.validation.world``), pretrain a small transformer from scratch on its corpus, then
run the paper's story with the engine's ``train``: SFT on y+ (baseline) and "extend" SFT on y+ and y-; off-policy DPO
from each; on-policy DPO from the SFT model on pairs sampled from it and ranked by the world's judge. Probes are
evaluated throughout. Then the judge's win rate of extend+DPO vs baseline+DPO on held-out prompts, and Proposition 1
(one-step prediction vs real step) on the SFT model. The claims scoreboard (``llm.validation.report``) scores every claim of
PAPER.md section 5 with the rules written there, and the run directory gets claims.json, report.md and figures.
With ``--explain-prompts N`` every phase also records what moved its probes (``llm.explain``), and each claim of
claims.json and report.md gets its attribution (``llm.validation.claim_attribution``).

With ``--model DIR --data FILE`` the finetuning part runs on a user's pretrained model and preference pairs instead;
claims that need the synthetic judge (on-policy DPO, win rate) are then reported as not measured.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from llm.config import TrainConfig
from llm.data import PreferencePair, ProbeSet, load_pairs, load_probe_set, probe_set_from_pairs
from llm.encoding import EncodedSequence, TruncationPolicy
from llm.probes import GREEDY_PROBE, ProbeEvaluator
from llm.validation.explain_phases import phase_attribution
from llm.validation.config import ValidateConfig
from llm.validation.judge import Judge
from llm.logps import greedy_decode
from llm.models import load_model, resolve_device, tiny_model
from llm.validation.prop1 import Prop1Config, run_prop1, save_prop1
from llm.validation.report import LARGE_SUFFIX, SeedResult
from llm.validation.outputs import write_outputs
from llm.validation.rl_claims import run_rl_phase
from llm.runs import read_run_metrics
from llm.tokenization import load_tokenizer
from llm.training import train
from llm.validation.lm_pretraining import pretrain
from llm.validation.fingerprint import fingerprint
from llm.validation.conditions import argmax_positions, argmax_split, bigram_overlap, ches_similarity, one_step_change
from llm.validation.world import PROBE_KEYS, World, WorldConfig, build_world, save_world, world_tokenizer
from toykit.configs import config_to_dict
from toykit.progress import LineReporter
from toykit.runs import create_run_dir, write_json

__all__ = ["Preset", "PRESETS", "ValidateConfig", "pretrain", "sample_responses", "greedy_responses",
           "onpolicy_pairs", "run_seed", "run_validation"]

_PROBE_STATS = ("logp_sum", "logp_mean", "entropy", "energy", "peakiness", "top1_share", "valley_share")


@dataclass(frozen=True)
class Preset:
    """Sizes of one validation preset: world, model, pretraining, the finetuning schedules of both step regimes,
    probes and Prop. 1. SFT phases are probed ``sft_evals`` times (plus at their start), DPO phases ``dpo_evals``
    times, whatever their length; the greedy response (decoded up to ``greedy_max_new_tokens``) at start and end."""

    world: WorldConfig
    arch: str = "gpt2"
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    pretrain_epochs: int = 15
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 32
    optimizer: str = "adamw"
    sft_lr: float = 3e-5
    sft_warmup: int = 10
    sft_epochs: int = 3
    dpo_lr: float = 3e-5
    dpo_warmup: int = 20
    dpo_epochs: int = 6
    #: the "large step" regime of the DPO phases (a labelled second column): the old preset's lr, no warm-up.
    large_dpo_lr: float = 5e-4
    large_dpo_epochs: int = 4
    large_phases: tuple[str, ...] = ("dpo", "extend_dpo")
    beta: float = 0.1
    batch_size: int = 8
    sft_evals: int = 20
    dpo_evals: int = 10
    probe_batch_size: int = 32
    greedy_max_new_tokens: int = 72
    onpolicy_samples: int = 4
    temperature: float = 1.0
    prop1_probes: int = 12
    prop1_steps: int = 3
    prop1_target_change: float = 0.05
    dtype: str = "float32"
    bf16: bool = False
    #: the GRPO phase (llm.validation.rl_claims): steps, prompts per step, samples per prompt, learning rate
    rl_steps: int = 24
    rl_prompts: int = 8
    rl_generations: int = 8
    rl_lr: float = 1e-4


PRESETS: dict[str, Preset] = {
    # The reduced pipeline of the test suite: every phase, two tiny seeds, well under a minute.
    "test": Preset(WorldConfig(n_entities=8, n_probes=6, docs_per_entity=3, n_unrelated=40, vocab_size=600),
                   hidden=32, pretrain_epochs=6, dpo_lr=2e-5, sft_epochs=2, dpo_epochs=2, large_dpo_epochs=1,
                   sft_evals=4, dpo_evals=3, greedy_max_new_tokens=64, onpolicy_samples=2, prop1_probes=2,
                   prop1_steps=1, rl_steps=2, rl_prompts=2, rl_generations=2),
    # Three seeds in under 10 minutes on 2 CPU cores.
    "cpu": Preset(WorldConfig()),
    # The same pipeline and design sized for one H200: a ~50M-parameter model, a larger world, bf16.
    "gpu": Preset(WorldConfig(n_entities=200, n_probes=256, docs_per_entity=9, n_unrelated=4000,
                              test_fraction=0.4, vocab_size=4096),
                  arch="llama", hidden=768, layers=10, heads=12, pretrain_epochs=30, pretrain_lr=1e-3,
                  pretrain_batch=64, sft_lr=2e-5, sft_warmup=50, dpo_lr=5e-6, dpo_warmup=150, large_dpo_lr=1e-4,
                  batch_size=16, prop1_probes=32, probe_batch_size=128, bf16=True),
}




def _prompt_batch(tokenizer, prompts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(i) for i in ids)
    out = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)  # (N, L) left-padded
    attn = torch.zeros_like(out)
    for n, i in enumerate(ids):
        out[n, width - len(i):], attn[n, width - len(i):] = torch.tensor(i), 1
    return out.to(device), attn.to(device)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: Sequence[str], *, k: int, max_new_tokens: int, temperature: float,
                     seed: int, batch_size: int = 64) -> list[list[str]]:
    """Sample ``k`` responses per prompt (ancestral sampling at ``temperature``), seeded locally; return texts."""
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start: start + batch_size])
            ids, attn = _prompt_batch(tokenizer, chunk, device)
            gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=k,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)  # (N * k,)
            out.extend([" " + t.strip() for t in texts[n * k: (n + 1) * k]] for n in range(len(chunk)))
    return out


def greedy_responses(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
    """Free-running greedy responses (the engine's ``greedy_decode``) as texts with a leading space."""
    encoded = [EncodedSequence(tuple(tokenizer(p, add_special_tokens=False)["input_ids"]), (), False, False)
               for p in prompts]
    decoded, _ = greedy_decode(model, encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)
    return [" " + tokenizer.decode(list(s.response_ids), skip_special_tokens=True).strip() for s in decoded]


def onpolicy_pairs(judge: Judge, prompts: Sequence[str], samples: Sequence[Sequence[str]]
                   ) -> tuple[list[PreferencePair], dict[str, float]]:
    """Rank each prompt's samples with the judge: best = chosen, worst = rejected; prompts whose samples tie skip.

    Returns:
        (pairs, stats) with stats: prompts, pairs, mean chosen / rejected judge score.
    """
    pairs, best, worst = [], [], []
    for prompt, responses in zip(prompts, samples):
        scored = sorted(((judge.score(prompt, r), r) for r in responses), key=lambda t: t[0])
        if scored[-1][0] > scored[0][0]:
            pairs.append(PreferencePair(prompt, scored[-1][1], scored[0][1]))
            best.append(scored[-1][0])
            worst.append(scored[0][0])
    stats = {"prompts": len(prompts), "pairs": len(pairs), "chosen_score": float(np.mean(best)) if best else None,
             "rejected_score": float(np.mean(worst)) if worst else None}
    return pairs, stats


def _world_probe_set(world: World, y_init: Sequence[str]) -> ProbeSet:
    keys = [k for k in PROBE_KEYS if k != "prompt"]
    responses = {"chosen": tuple(p["chosen"] for p in world.probes), "rejected": tuple(p["rejected"] for p in
                                                                                        world.probes),
                 "chosen_initial": tuple(t if t.strip() else None for t in y_init)}
    responses.update({k: tuple(p[k] for p in world.probes) for k in keys if k not in responses})
    return ProbeSet(tuple(p["prompt"] for p in world.probes), responses, source="synthetic world")


def _probe_rows(run_dir: Path) -> list[dict[str, Any]]:
    table = read_run_metrics(run_dir)
    table = table[(table["probe"] != "train") & table["statistic"].isin(_PROBE_STATS)]
    return [{k: row[k] for k in ("phase", "step", "examples_seen", "probe", "statistic", "value")}
            for row in table.to_dict("records")]


class _Phases:
    """Run finetuning phases of one seed with the engine's ``train``, sharing every setting but loss and schedule.

    At the start of every phase it measures the conditions of ``llm.validation.conditions`` (y+/y- overlap and
    CHES of the phase's pairs, the largest one-step probe change at the phase's peak lr) and the per-position
    teacher-forced argmax, which it measures again at the end (the argmax split).
    """

    def __init__(self, preset: Preset, seed: int, seed_dir: Path, tokenizer, probes: ProbeSet, device: str,
                 cfg: ValidateConfig, model_name: str):
        self.preset, self.seed, self.dir, self.tok, self.probes = preset, seed, seed_dir, tokenizer, probes
        self.device, self.progress, self.model_name = device, cfg.progress, model_name
        self.probe_mode, self.share_prompts = cfg.probe_mode, cfg.share_prompts
        self.explain_prompts, self.explain_forecast = cfg.explain_prompts, cfg.explain_forecast
        self.explain_every = cfg.explain_every
        self.rows: list[dict[str, Any]] = []
        self.conditions: dict[str, dict[str, float]] = {}
        self.argmax_split: dict[str, dict[str, float]] = {}
        self.seconds: dict[str, float] = {}
        self.probe_modes: dict[str, dict[str, Any]] = {}  # phase -> the modes that ran (the engine's summary)
        self.attribution: dict[str, dict[str, Any]] = {}  # phase -> llm.validation.explain_phases' record
        # The greedy response is decoded at the start and the end of each phase only (its claims are Deltas).
        self.greedy = ProbeEvaluator(ProbeSet(probes.prompts, {"chosen": probes.responses["chosen"]},
                                               source=probes.source), tokenizer, TruncationPolicy(),
                                      batch_size=preset.probe_batch_size,
                                      greedy_max_new_tokens=preset.greedy_max_new_tokens, mode=cfg.probe_mode)

    def run(self, name: str, loss: str, start_model, pairs: Sequence[PreferencePair], *, epochs: int, lr: float,
            warmup: int = 0, max_examples: int | None = None):
        p = self.preset
        n_examples = max_examples or epochs * len(pairs)
        evals = p.sft_evals if loss in ("sft", "extend") else p.dpo_evals
        cfg = TrainConfig(model=self.model_name, loss=loss, phase=name, optimizer=p.optimizer, lr=lr,
                          warmup_steps=warmup, batch_size=p.batch_size, epochs=epochs, max_examples=max_examples,
                          eval_every=max(1, n_examples // evals),
                          beta=p.beta if loss != "extend" and loss != "sft" else None,
                          held_out=0, num_probes=len(self.probes), greedy_max_new_tokens=0,
                          dtype=p.dtype, bf16=p.bf16, device=self.device, seed=self.seed, save_model=False,
                          checkpoint_at_end=False, probe_batch_size=p.probe_batch_size,
                          probe_mode=self.probe_mode, share_prompts=self.share_prompts, progress=self.progress,
                          out_dir=str(self.dir / name), explain_prompts=self.explain_prompts,
                          explain_every=self.explain_every)
        t0 = time.perf_counter()
        probe_pairs = list(pairs[: max(len(self.probes), 64)])
        self.conditions[name] = {"overlap": bigram_overlap(self.tok, probe_pairs),
                                 **ches_similarity(start_model, self.tok, probe_pairs),
                                 "max_step": one_step_change(cfg, start_model, self.tok, pairs, self.probes,
                                                             self.dir / "one_step" / name)}
        start = argmax_positions(start_model, self.tok, self.probes)
        greedy_start = self.greedy(start_model)
        result = train(cfg, model=copy.deepcopy(start_model), tokenizer=self.tok, pairs=list(pairs),
                       probes=self.probes)
        self.argmax_split[name] = argmax_split(start, argmax_positions(result.model, self.tok, self.probes))
        if self.explain_prompts:
            self.attribution[name] = phase_attribution(result, cfg, start_model, self.tok, pairs, self.probes,
                                                       with_forecast=self.explain_forecast)
        self.probe_modes[name] = {k: result.summary.get(k) for k in ("probe_mode", "share_prompts")}
        self.rows.extend(_probe_rows(result.run_dir))
        for res, step, seen in ((greedy_start, 0, 0), (self.greedy(result.model), result.step, result.examples_seen)):
            self.rows.extend({k: r[k] for k in ("phase", "step", "examples_seen", "probe", "statistic", "value")}
                             for r in res.rows(step, seen, name) if r["probe"] == GREEDY_PROBE)
        self.seconds[name] = time.perf_counter() - t0
        return result


def _prop1(model, tokenizer, pairs: Sequence[PreferencePair], probes: ProbeSet, preset: Preset, out_dir: Path,
           dtype: str) -> tuple[dict[str, dict[str, Any]], list]:
    records = [{"prompt": pr, **{k: v[i] for k, v in probes.responses.items() if v[i]}}
               for i, pr in enumerate(probes.prompts[: preset.prop1_probes])]
    pair_dicts = [dataclasses.asdict(p) for p in pairs]
    summaries, results = {}, []
    for loss in ("sft", "dpo"):
        cfg = Prop1Config(loss=loss, n_steps=preset.prop1_steps, target_change=preset.prop1_target_change,
                          beta=preset.beta, dtype=dtype)
        res = run_prop1(model, tokenizer, pair_dicts, records,
                        list(probes.probe_types), cfg)
        save_prop1(res, out_dir)
        summaries[loss] = res.summary()
        results.append(res)
    return summaries, results


def run_seed(cfg: ValidateConfig, preset: Preset, seed: int, seed_dir: Path) -> tuple[SeedResult, list]:
    """Run the whole pipeline for one seed; return its SeedResult and the Prop. 1 results (for the figure)."""
    device = resolve_device(cfg.device)
    extras: dict[str, Any] = {}
    t0 = time.perf_counter()
    if cfg.model:
        tok = load_tokenizer(cfg.model)
        base = load_model(cfg.model, dtype=preset.dtype, device=str(device))
        all_pairs = load_pairs(cfg.data, leading_space=True)
        if len(all_pairs) <= cfg.held_out + 1:
            raise ValueError(f"{cfg.data} has {len(all_pairs)} pairs; need more than held_out={cfg.held_out} + 1")
        pairs, held = all_pairs[: -cfg.held_out], all_pairs[-cfg.held_out:]
        probes = (load_probe_set(cfg.probes, max_records=cfg.num_probes, held_out=[p.chosen for p in held],
                                 seed=seed, leading_space=True) if cfg.probes
                  else probe_set_from_pairs(pairs[: cfg.num_probes], held, seed=seed))
        judge = None
    else:
        world = build_world(dataclasses.replace(preset.world, seed=seed))
        save_world(world, seed_dir / "world")
        tok = world_tokenizer(world)
        extras["vocab_size"] = len(tok)
        base = tiny_model(preset.arch, len(tok), seed=seed, dtype=preset.dtype, hidden=preset.hidden,
                          layers=preset.layers, heads=preset.heads, max_positions=256,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        extras["pretrain_losses"] = pretrain(base, tok, world.corpus, epochs=preset.pretrain_epochs,
                                             lr=preset.pretrain_lr, batch_size=preset.pretrain_batch, seed=seed,
                                             device=device, bf16=preset.bf16)
        judge = Judge(world)
        prompts = [p["prompt"] for p in world.probes]
        y_init = [s[0] for s in sample_responses(base, tok, prompts, k=1, max_new_tokens=preset.greedy_max_new_tokens,
                                                 temperature=preset.temperature, seed=seed)]
        probes = _world_probe_set(world, y_init)
        pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in world.train_pairs]
        held = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in world.test_pairs]
    extras["seconds_setup"] = time.perf_counter() - t0
    phases = _Phases(preset, seed, seed_dir, tok, probes, str(device), cfg, cfg.model or "world-pretrained")
    sft_kw = {"epochs": preset.sft_epochs, "lr": preset.sft_lr, "warmup": preset.sft_warmup}
    dpo_kw = {"epochs": preset.dpo_epochs, "lr": preset.dpo_lr, "warmup": preset.dpo_warmup}
    large_kw = {"epochs": preset.large_dpo_epochs, "lr": preset.large_dpo_lr, "warmup": 0}
    sft = phases.run("sft", "sft", base, pairs, **sft_kw)
    ext = phases.run("extend_sft", "extend", base, pairs, **sft_kw)
    dpo = phases.run("dpo", "dpo", sft.model, pairs, **dpo_kw)
    ext_dpo = phases.run("extend_dpo", "dpo", ext.model, pairs, **dpo_kw)
    for name, start in (("dpo", sft.model), ("extend_dpo", ext.model)):
        if name in preset.large_phases:
            phases.run(name + LARGE_SUFFIX, "dpo", start, pairs, **large_kw)
    win: dict[str, float] = {"win_rate": float("nan"), "wins": float("nan"), "ties": float("nan"),
                             "losses": float("nan"), "n": 0}
    if judge is not None:
        samples = sample_responses(sft.model, tok, [p.prompt for p in pairs], k=preset.onpolicy_samples,
                                   max_new_tokens=preset.greedy_max_new_tokens, temperature=preset.temperature,
                                   seed=seed + 1)
        on_pairs, extras["onpolicy"] = onpolicy_pairs(judge, [p.prompt for p in pairs], samples)
        if on_pairs:
            phases.run("onpolicy_dpo", "dpo", sft.model, on_pairs, epochs=10 * preset.dpo_epochs,
                       lr=preset.dpo_lr, warmup=preset.dpo_warmup, max_examples=dpo.examples_seen)
        extras["rl"] = run_rl_phase(phases, lambda ps, cs: [judge.score(p, c) for p, c in zip(ps, cs)], sft.model,
                                    pairs, _probe_rows)
        test_prompts = [p.prompt for p in held]
        answers = {name: greedy_responses(r.model, tok, test_prompts, max_new_tokens=preset.greedy_max_new_tokens)
                   for name, r in (("sft", sft), ("extend_sft", ext), ("dpo", dpo), ("extend_dpo", ext_dpo))}
        win = judge.win_rate(test_prompts, answers["extend_dpo"], answers["dpo"])
        extras["held_out_judge"] = {
            name: {"mean_score": float(np.mean([judge.score(p, a) for p, a in zip(test_prompts, texts)])),
                   "correct": float(np.mean([judge.judge(p, a).answered == "correct"
                                             for p, a in zip(test_prompts, texts)]))}
            for name, texts in answers.items()}
        extras["examples"] = {name: [{"prompt": test_prompts[i], "response": answers[name][i]} for i in range(3)]
                              for name in answers}
    prop1_dtype = "float64" if not cfg.model else "float32"
    prop1, prop1_results = _prop1(sft.model, tok, pairs, probes, preset, seed_dir, prop1_dtype)
    extras["seconds_total"] = time.perf_counter() - t0
    extras["conditions"], extras["argmax_split"] = phases.conditions, phases.argmax_split
    extras["seconds_phases"] = phases.seconds
    extras["probe_modes"] = phases.probe_modes
    if phases.attribution:
        extras["attribution"] = phases.attribution
    return SeedResult(seed, tuple(phases.rows), win, prop1, extras), prop1_results


def _seed_job(cfg: ValidateConfig, preset: Preset, seed: int, seed_dir: Path):
    """``run_seed`` in a worker process, with the run's thread setting."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return run_seed(cfg, preset, seed, seed_dir)


def run_validation(cfg: ValidateConfig) -> tuple[Path, dict[str, Any]]:
    """Run every seed, score the claims and write the run directory; return it and the claims document.

    The report, claims and mean metrics are rewritten after every seed, so a run that is killed or stopped by
    ``time_budget_s`` keeps a complete report of the seeds that finished (``summary.json`` says which).
    """
    preset = PRESETS[cfg.preset]
    run_dir = create_run_dir({"validate": config_to_dict(cfg), "preset": config_to_dict(preset)}, "validate",
                             out_dir=cfg.out_dir, root=cfg.runs_root)
    t0 = time.perf_counter()
    seeds, prop1_results = [], []
    doc: dict[str, Any] = {}
    threads = torch.get_num_threads()
    reporter = LineReporter("validate", interval=0.0) if cfg.progress else None
    workers = 1 if cfg.time_budget_s else min(cfg.workers, len(cfg.seeds))

    def finished(result, p1, *, write: bool = True, stopped: bool = False) -> dict[str, Any]:
        seeds.append(result)
        prop1_results.append(p1)
        if not write:
            return doc
        status = ("completed" if len(seeds) == len(cfg.seeds)
                  else f"stopped by the time budget after {len(seeds)} of {len(cfg.seeds)} seeds" if stopped
                  else f"partial: {len(seeds)} seed(s) done")
        return write_outputs(run_dir, cfg, preset, seeds, prop1_results, time.perf_counter() - t0, status)

    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if workers > 1:  # fresh interpreters (spawn): each seed's numbers are those of a run on its own
            if reporter:
                reporter(f"seeds {list(cfg.seeds)} in {workers} processes (pretrain, SFT, extend, DPO, Prop. 1)",
                         0, len(cfg.seeds))
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                jobs = [pool.submit(_seed_job, cfg, preset, seed, run_dir / f"seed_{seed}") for seed in cfg.seeds]
                for k, job in enumerate(jobs):  # in seed order, so each report covers a prefix of the seeds
                    # a next seed already done is written with this one: one report (and its figures), not two
                    doc = finished(*job.result(), write=k + 1 == len(jobs) or not jobs[k + 1].done())
        else:
            for k, seed in enumerate(cfg.seeds):
                if reporter:
                    reporter(f"seeds (seed {seed} next: pretrain, SFT, extend, DPO phases, Prop. 1)", k,
                             len(cfg.seeds))
                result = run_seed(cfg, preset, seed, run_dir / f"seed_{seed}")
                elapsed = time.perf_counter() - t0
                # decided before writing, so a stopped run writes its report once, with its final status
                stop = bool(cfg.time_budget_s) and k + 1 < len(cfg.seeds) and (
                    elapsed + elapsed / (k + 1) > cfg.time_budget_s)
                doc = finished(*result, stopped=stop)
                if stop:
                    print(f"time budget: stopping after {k + 1} seed(s) ({elapsed:.0f} s of "
                          f"{cfg.time_budget_s:.0f} s)")
                    break
    finally:
        torch.set_num_threads(threads)
    if not cfg.model:  # the fast check that a committed copy of this run still matches the code
        write_json(run_dir / "fingerprint.json", fingerprint(preset, seeds[0].seed, probe_mode=cfg.probe_mode,
                                                                 share_prompts=cfg.share_prompts))
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["cpu_seconds"] = sum(u.ru_utime + u.ru_stime for u in usage)  # all processes: a figure load-free
    write_json(run_dir / "summary.json", summary)
    return run_dir, doc
