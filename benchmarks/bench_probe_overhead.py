"""Benchmark the probe-evaluation overhead of a training run that evaluates every 1000 examples (the paper's
schedule): share of wall time spent in probe evaluation, from the run's own summary.json. Prints one JSON object.

Trains DPO (precomputed reference) on synthetic pairs, with probes derived from the first training pairs (6 probe
types + the teacher-forced argmax), once per ``--probe-modes`` entry (same seed and data: an in-process comparison of
the probe modes). The run directories go to a temporary folder.

The floor of any exact evaluator is the model's dense forward on the probe set's unique tokens (each prompt once,
each response once: ``bench_probes.dense_forward``), timed in the same process on the same model size:
``probe_share_at_the_bound`` is the share the run would have if every evaluation cost only that, and
``probe_share_at_the_unique_token_work`` the same with the LM head and the probe statistics on the response tokens
only (what each evaluation must compute).

    python benchmarks/bench_probe_overhead.py [--examples 4000] [--num-probes 500] [--probe-modes shared,full]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench_probes import dense_forward, num_prompt_tokens, unique_tokens
from llm.config import TrainConfig
from llm.inputs import build_inputs
from llm.probes import ProbeEvaluator
from llm.training import train


def _bound_seconds(cfg: TrainConfig, repeats: int = 3) -> tuple[float, float, int]:
    """Seconds of the dense forward on the probe set's unique tokens, without and with the statistics on the
    response tokens (best of ``repeats`` each), and their count."""
    inputs = build_inputs(cfg)
    model = inputs.model.to(cfg.device if cfg.device != "auto" else "cpu").eval()
    evaluator = ProbeEvaluator(inputs.probes, inputs.tokenizer, inputs.policy, batch_size=cfg.probe_batch_size)
    tokens = unique_tokens(evaluator)
    device = next(model.parameters()).device
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", 256)
    width = min(256, positions)  # rows of the packed unique tokens, within the model's position table
    best = {None: float("inf"), num_prompt_tokens(evaluator): float("inf")}
    for _ in range(repeats):
        for scored_from in best:
            t0 = time.perf_counter()
            dense_forward(model, tokens, width, max(1, cfg.probe_batch_size * 64 // width), device, scored_from)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[scored_from] = min(best[scored_from], time.perf_counter() - t0)
    bound, work = best.values()
    return bound, work, len(tokens)


def _config(args, mode: str, out_dir: Path) -> TrainConfig:
    return TrainConfig(loss=args.loss, model=args.model, tiny_hidden=args.hidden, tiny_layers=args.layers,
                       num_synthetic=args.num_probes + 100, held_out=50, num_probes=args.num_probes,
                       batch_size=args.batch_size, epochs=10_000, max_examples=args.examples,
                       eval_every=args.eval_every, probe_batch_size=args.probe_batch_size, probe_mode=mode,
                       share_prompts=args.share_prompts == "true", max_prompt_tokens=64, max_response_tokens=64,
                       device=args.device, progress=False, save_model=False, out_dir=str(out_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=4000, help="training examples of each run")
    parser.add_argument("--eval-every", type=int, default=1000,
                        help="probe evaluation every this many examples (the paper's schedule: 1,000)")
    parser.add_argument("--num-probes", type=int, default=500, help="probe prompts of each evaluation")
    parser.add_argument("--probe-batch-size", type=int, default=128, help="sequences per probe forward pass")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--loss", default="dpo", help="training loss (a name of the loss registry: dpo, ipo, sft, ...)")
    parser.add_argument("--model", default="tiny-gpt2",
                        help="model: tiny-gpt2, tiny-llama, tiny-neox, tiny-qwen2 (built from a config), or a local "
                             "folder / hub id")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of a tiny model")
    parser.add_argument("--layers", type=int, default=2, help="layers of a tiny model")
    parser.add_argument("--probe-modes", default="shared,full", help="comma-separated probe modes: shared, full")
    parser.add_argument("--share-prompts", default="true", choices=("true", "false"),
                        help="DPO prompt sharing in the training steps: true = the engine's default (shared when the "
                             "prompts average >= 24 tokens; these synthetic ones, 14, are not), false = never")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.probe_modes.split(",") if m.strip()]
    runs = {}
    evals = 1 + -(-args.examples // args.eval_every)
    for mode in modes:
        with tempfile.TemporaryDirectory() as tmp:
            s = train(_config(args, mode, Path(tmp) / "run")).summary
        runs[mode] = {"probe_mode_active": s["probe_mode"], "train_seconds": round(s["train_seconds"], 2),
                      "probe_seconds": round(s["probe_seconds"], 2),
                      "probe_seconds_per_evaluation": round(s["probe_seconds"] / evals, 3),
                      "probe_share": round(s["probe_share"], 4)}
    out = {
        "benchmark": "probe_overhead", "loss": args.loss, "examples": s["examples_seen"], "steps": s["step"],
        "eval_every": args.eval_every, "evaluations": evals, "num_probes": args.num_probes,
        "probe_sequences_per_eval": s["truncation_probes"]["num_sequences"],
        "model": f"{args.model} hidden {args.hidden} x {args.layers} layers",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "share_prompts": s["share_prompts"], "runs": runs,
    }
    bound, work, num_unique = _bound_seconds(_config(args, modes[0], Path("unused")))
    train_only = runs[modes[0]]["train_seconds"]
    out["unique_tokens_per_eval"] = num_unique
    out["bound_seconds_per_evaluation"] = round(bound, 3)
    out["probe_share_at_the_bound"] = round(evals * bound / (train_only + evals * bound), 4)
    out["unique_token_work_seconds_per_evaluation"] = round(work, 3)
    out["probe_share_at_the_unique_token_work"] = round(evals * work / (train_only + evals * work), 4)
    if {"shared", "full"} <= set(runs):
        out["probe_speedup_shared_vs_full"] = round(runs["full"]["probe_seconds"] / runs["shared"]["probe_seconds"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
