"""Benchmark the engine's speed at the validation ``gpu`` preset's model size: SFT and DPO steps, probe evaluation.

What is timed is the engine itself, the inner body of ``llm.training.train``'s loop: ``make_pair_batch`` ->
``batch_loss`` (bf16 autocast on CUDA, log-softmax in float32) -> backward -> gradient clipping -> the optimizer of
``llm.optim.build_optimizer`` (AdamW) -> ``trl_metrics``. DPO scores chosen and rejected in one forward pass against
reference log-probs precomputed once with ``precompute_reference_logps`` (the engine's default). Batches are random
token ids of fixed prompt and response lengths. Probe throughput is the engine's ``ProbeEvaluator`` on the probes of
the ``gpu`` preset's synthetic world, every probe type, with and without the free-running greedy probe.

Model FLOPs (PaLM, Chowdhery et al. 2022, appendix B): per token 6 N + 12 n_layer d_model T, with N every parameter
(the tied embedding counted once, as the LM head) and T the sequence length; MFU = FLOPs / (step time x peak), against
the datasheet peak (``--peak-tflops``) and against a bf16 matmul timed in this process. Prints one JSON object.

    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--out FILE]      # full size (the gpu preset), < 90 s on an H200
    python benchmarks/bench_gpu.py --small --device cpu            # CPU smoke run: tiny model, few steps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import transformers

from llm.data import ProbeSet
from llm.encoding import EncodedSequence, TruncationPolicy
from llm.models import resolve_device, tiny_model
from llm.objective import Objective, batch_loss, make_pair_batch, precompute_reference_logps, trl_metrics
from llm.optim import build_optimizer, warmup_schedule
from llm.probes import ProbeEvaluator
from llm.tokenization import build_word_tokenizer
from llm.validation.pipeline import PRESETS
from llm.validation.world import PROBE_KEYS, build_world

_GPU = PRESETS["gpu"]
#: sizes of the full benchmark (the gpu preset's model) and of the --small CPU smoke run; explicit flags win.
_FULL = dict(batch_size=32, prompt_len=64, response_len=64, steps=20, warmup=5, vocab_size=8192, hidden=_GPU.hidden,
             layers=_GPU.layers, heads=_GPU.heads, probe_prompts=_GPU.world.n_probes, matmul_size=8192)
_SMALL = dict(batch_size=4, prompt_len=8, response_len=8, steps=3, warmup=1, vocab_size=512, hidden=64, layers=2,
              heads=2, probe_prompts=8, matmul_size=512)
_FLOPS_NOTE = ("PaLM appendix B: 6*N*tokens + 12*layers*hidden*seq_len*tokens per step, N = all parameters with the "
               "tied embedding counted once (= the LM head); tokens = non-pad tokens through the policy forward")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    add("--small", action="store_true", help="CPU smoke sizes: tiny model, few steps (explicit flags still win)")
    add("--batch-size", type=int, help=f"pairs per step (default {_FULL['batch_size']})")
    add("--prompt-len", type=int, help=f"prompt tokens per sequence (default {_FULL['prompt_len']})")
    add("--response-len", type=int, help=f"response tokens per sequence (default {_FULL['response_len']})")
    add("--steps", type=int, help=f"timed steps per benchmark (default {_FULL['steps']})")
    add("--warmup", type=int, help=f"untimed warm-up steps (default {_FULL['warmup']})")
    add("--vocab-size", type=int, help=f"V of the model (default {_FULL['vocab_size']}); must cover the world's "
                                       "word tokenizer used by the probes")
    add("--hidden", type=int, help=f"hidden size (default: the gpu preset's, {_GPU.hidden})")
    add("--layers", type=int, help=f"transformer layers (default: the gpu preset's, {_GPU.layers})")
    add("--heads", type=int, help=f"attention heads (default: the gpu preset's, {_GPU.heads})")
    add("--arch", default=_GPU.arch, help=f"tiny architecture (default: the gpu preset's, {_GPU.arch})")
    add("--attn", default="eager,sdpa", help="comma-separated attention implementations to time the steps with; "
                                             "the first also runs the probes (llm.validation.pipeline builds 'eager')")
    add("--probe-prompts", type=int, help=f"probe prompts of the gpu world (default all {_GPU.world.n_probes})")
    add("--probe-batch-sizes", default="16,64", help="comma-separated probe batch sizes (the engine's default: 16)")
    add("--greedy-max-new-tokens", type=int, default=_GPU.greedy_max_new_tokens,
        help="length of the greedy probe (the gpu preset's); 0 skips the with-greedy measurement")
    add("--probe-repeats", type=int, default=2, help="timed probe evaluations (median reported)")
    add("--lr", type=float, default=_GPU.sft_lr, help="learning rate of the timed steps")
    add("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak (H100/H200 SXM: 989)")
    add("--matmul-size", type=int, help=f"n of the n x n x n bf16 matmul peak (default {_FULL['matmul_size']})")
    add("--threads", type=int, default=0, help="torch CPU threads (0 keeps torch's setting)")
    add("--seed", type=int, default=0, help="seed of the weights and the random batches")
    add("--out", default="", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    for name, value in (_SMALL if args.small else _FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch_size", "prompt_len", "response_len", "steps", "vocab_size", "hidden", "layers", "heads",
                 "probe_prompts", "probe_repeats", "matmul_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.greedy_max_new_tokens < 0:
        raise SystemExit(f"--warmup and --greedy-max-new-tokens must be >= 0, got {args.warmup}, "
                         f"{args.greedy_max_new_tokens}")
    args.attn = [a.strip() for a in args.attn.split(",") if a.strip()]
    args.probe_batch_sizes = [int(b) for b in args.probe_batch_sizes.split(",") if b.strip()]
    if not args.attn or not args.probe_batch_sizes or min(args.probe_batch_sizes) < 1:
        raise SystemExit(f"--attn and --probe-batch-sizes need >= 1 entry (sizes >= 1), got {args.attn}, "
                         f"{args.probe_batch_sizes}")
    return args


def _timed(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def _matmul_peak_tflops(n: int, device: torch.device) -> float | None:
    """Measured dense bf16 throughput (TFLOP/s) of an n x n x n matmul; None off CUDA."""
    if device.type != "cuda":
        return None
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=gen)
    seconds = _timed(lambda: a @ b, repeats=10, warmup=3, device=device)
    return 2 * n ** 3 / statistics.median(seconds) / 1e12


def _random_sequences(num: int, prompt_len: int, response_len: int, vocab: int, gen: torch.Generator
                      ) -> list[EncodedSequence]:
    """``num`` [prompt, response] sequences of random token ids in [2, V) (0 and 1 are pad and eos)."""
    ids = torch.randint(2, vocab, (num, prompt_len + response_len), generator=gen).tolist()  # (N, L)
    return [EncodedSequence(tuple(row[:prompt_len]), tuple(row[prompt_len:]), False, False) for row in ids]


def _build_model(args, attn: str, device: torch.device):
    return tiny_model(args.arch, args.vocab_size, seed=args.seed, hidden=args.hidden, layers=args.layers,
                      heads=args.heads, max_positions=max(256, args.prompt_len + args.response_len),
                      pad_token_id=0, eos_token_id=1, attn_implementation=attn).to(device)


def _flops_per_token(model, args) -> float:
    """6 N + 12 n_layer d_model T (PaLM appendix B) with N counting shared (tied) weights once."""
    n_params = sum(p.numel() for p in model.parameters())
    return 6.0 * n_params + 12.0 * args.layers * args.hidden * (args.prompt_len + args.response_len)


def _step_figures(seconds: list[float], tokens: int, flops: float, args, device: torch.device,
                  peak_measured: float | None) -> dict:
    median = statistics.median(seconds)
    on_gpu = device.type == "cuda"
    return {"step_seconds_median": median, "step_seconds_min": min(seconds), "step_seconds_max": max(seconds),
            "timed_steps": len(seconds), "tokens_per_step": tokens, "tokens_per_second": tokens / median,
            "pairs_per_second": args.batch_size / median, "model_tflops_per_step": flops / 1e12,
            "achieved_tflops": flops / median / 1e12,
            "mfu_vs_datasheet_peak": flops / median / (args.peak_tflops * 1e12) if on_gpu else None,
            "mfu_vs_measured_matmul_peak": flops / median / (peak_measured * 1e12) if peak_measured else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if on_gpu else None}


def bench_steps(args, attn: str, device: torch.device, peak_measured: float | None) -> tuple[dict, object]:
    """Time the engine's SFT and DPO steps with one attention implementation; return the figures and the model."""
    bf16 = device.type == "cuda"
    gen = torch.Generator().manual_seed(args.seed)
    pool = min(args.warmup + args.steps, 8) * args.batch_size  # distinct pairs cycled through by the steps
    chosen = _random_sequences(pool, args.prompt_len, args.response_len, args.vocab_size, gen)
    rejected = _random_sequences(pool, args.prompt_len, args.response_len, args.vocab_size, gen)
    out = {}
    model = None
    for loss in ("sft", "dpo"):
        model = _build_model(args, attn, device)
        objective = Objective(loss, {})
        rej = rejected if objective.needs_rejected else None
        ref_c = ref_r = None
        if objective.needs_reference:
            t0 = time.perf_counter()
            ref_c, ref_r = precompute_reference_logps(model, chosen, rej, 0, batch_size=args.batch_size, bf16=bf16)
            ref_seconds = time.perf_counter() - t0
        optimizer = build_optimizer("adamw", model.parameters(), lr=args.lr)
        scheduler = warmup_schedule(optimizer, 0)
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        state = {"step": 0, "tokens": 0}

        def step() -> None:  # the body of llm.training.train's loop, one micro-batch per optimizer step
            start = (state["step"] * args.batch_size) % pool
            idx = list(range(start, start + args.batch_size))
            optimizer.zero_grad(set_to_none=True)
            batch = make_pair_batch(idx, chosen, rej, 0)
            batch = dataclasses.replace(batch, sequences=batch.sequences.to(device))
            losses, parts = batch_loss(model, batch, objective, ref_chosen=None if ref_c is None else ref_c[idx],
                                       ref_rejected=None if ref_r is None else ref_r[idx], bf16=bf16)
            (losses.sum() / len(idx)).backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            scheduler.step()
            trl_metrics(losses.detach(), {k: None if v is None else v.detach() for k, v in parts.items()},
                        objective.beta)
            state["step"] += 1
            state["tokens"] = int(batch.sequences.attention_mask.sum())  # non-pad tokens through the policy

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = _timed(step, args.steps, args.warmup, device)
        tokens = state["tokens"]
        out[loss] = _step_figures(seconds, tokens, _flops_per_token(model, args) * tokens, args, device,
                                  peak_measured)
        if objective.needs_reference:
            ref_tokens = 2 * pool * (args.prompt_len + args.response_len)
            out[loss]["reference_precompute"] = {"sequences": 2 * pool, "seconds": ref_seconds,
                                                 "tokens_per_second": ref_tokens / ref_seconds}
        del optimizer
    return out, model


def _world_probes(num: int) -> tuple[ProbeSet, object]:
    """The gpu preset's world probes (every probe key but the sampled y_init) and the word tokenizer of llm.validation.pipeline."""
    world = build_world(_GPU.world)
    texts = list(world.corpus) + [t for p in (*world.train_pairs, *world.test_pairs, *world.probes)
                                  for k, t in p.items() if k in PROBE_KEYS]
    tok = build_word_tokenizer(texts)
    probes = world.probes[:num]
    responses = {k: tuple(p[k] for p in probes) for k in PROBE_KEYS if k != "prompt"}
    return ProbeSet(tuple(p["prompt"] for p in probes), responses, source="gpu preset world"), tok


def bench_probes(args, model, device: torch.device) -> dict:
    """Time ``ProbeEvaluator`` on the world's probes at each batch size, teacher-forced only and with greedy."""
    probes, tok = _world_probes(args.probe_prompts)
    if len(tok) > args.vocab_size:
        raise SystemExit(f"--vocab-size {args.vocab_size} is below the world tokenizer's {len(tok)} tokens")
    policy = TruncationPolicy()
    autocast = torch.bfloat16 if device.type == "cuda" else None
    out = {"probe_prompts": len(probes), "probe_types": list(probes.probe_types), "world_tokenizer_size": len(tok),
           "by_batch_size": {}}
    for batch_size in args.probe_batch_sizes:
        row = {}
        for label, greedy in (("teacher_forced", 0), ("with_greedy", args.greedy_max_new_tokens)):
            if label == "with_greedy" and not greedy:
                continue
            evaluator = ProbeEvaluator(probes, tok, policy, batch_size=batch_size, greedy_max_new_tokens=greedy,
                                       autocast_dtype=autocast)
            seconds = statistics.median(_timed(lambda: evaluator(model), args.probe_repeats, 1, device))
            sequences = len(evaluator.items)
            tokens = sum(s.length for _, _, s in evaluator.items)
            row[label] = {"seconds": seconds, "sequences": sequences, "tokens": tokens,
                          "sequences_per_second": sequences / seconds, "tokens_per_second": tokens / seconds,
                          "prompts_per_second": len(probes) / seconds}
            if greedy:  # plus one greedy decoding (and its re-scoring) per prompt, not counted above
                row[label].update(greedy_max_new_tokens=greedy, greedy_prompts_decoded=len(probes))
        out["by_batch_size"][str(batch_size)] = row
    return out


def _exact_command() -> str:
    """The command line, relative to the repository root (run from there with PYTHONPATH=.)."""
    root = Path(__file__).resolve().parents[1]
    args = [os.path.relpath(a, root) if os.path.isabs(a) and a.startswith(str(root)) else a for a in sys.argv]
    return "PYTHONPATH=. " + shlex.join(["python3", *args])


def main(argv: list[str] | None = None) -> dict:
    """Run every benchmark, print the JSON object (and write it to --out); return it."""
    args = _parse(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    peak_measured = _matmul_peak_tflops(args.matmul_size, device)
    steps, probe_model = {}, None
    for attn in args.attn:
        steps[attn], model = bench_steps(args, attn, device, peak_measured)
        if probe_model is None:
            probe_model = model
    n_params = sum(p.numel() for p in probe_model.parameters())
    embedding = probe_model.get_input_embeddings().weight.numel()
    result = {
        "benchmark": "engine_gpu_speed",
        "device": torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or "cpu"),
        "device_type": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "cuda": torch.version.cuda if on_gpu else None,
        "torch_threads": torch.get_num_threads(),
        "config": {"arch": args.arch, "hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                   "vocab_size": args.vocab_size, "parameters": n_params,
                   "parameters_non_embedding": n_params - embedding, "batch_size_pairs": args.batch_size,
                   "prompt_len": args.prompt_len, "response_len": args.response_len, "steps": args.steps,
                   "warmup": args.warmup, "optimizer": "adamw", "lr": args.lr, "max_grad_norm": 10.0,
                   "weights": "float32", "bf16_autocast": on_gpu, "reference": "precomputed", "small": args.small,
                   "attn_implementations": args.attn, "probe_attn": args.attn[0]},
        "flops_estimate": _FLOPS_NOTE,
        "peak_tflops_datasheet": args.peak_tflops if on_gpu else None,
        "peak_tflops_measured_bf16_matmul": peak_measured,
        "matmul_size": args.matmul_size if on_gpu else None,
        "steps": steps,
        "probes": bench_probes(args, probe_model, device),
        "seconds_total": None,
        "exact_command": _exact_command(),
    }
    result["seconds_total"] = time.perf_counter() - t_start
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
