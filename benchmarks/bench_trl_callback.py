"""Benchmark the probe overhead inside a TRL DPO run: ProbeCallback's share of the run's wall time. Prints JSON.

Runs TRL's DPOTrainer on synthetic pairs with a tiny GPT-2 twice, once without the callback and once with it
(probes = the first --num-probes training pairs, every probe type derived from pairs plus the teacher-forced
argmax, evaluated at step 0, every --eval-every-steps optimizer steps and at the end). Reports the callback's own
measured probe seconds over the run's wall seconds (``probe_share``) and the slowdown of the whole run against the
run without the callback (``slowdown``; noisier, as two runs on a shared machine). The paper's cadence is one
evaluation per 1000 examples, i.e. every 250 steps at batch 4; the default here (every 25 steps) evaluates 10x
more often, so the share is an upper bound for that schedule.

    python benchmarks/bench_trl_callback.py [--steps 100] [--eval-every-steps 25] [--num-probes 64] [--lora-r 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _run(args, model, tok, pairs, out: Path, with_callback: bool) -> dict:
    import datasets
    from trl import DPOConfig, DPOTrainer

    from llm.callback import ProbeCallback
    from llm.data import probe_set_from_pairs
    from llm.encoding import TruncationPolicy
    from llm.probes import ProbeEvaluator

    cfg = DPOConfig(output_dir=str(out / "trainer"), per_device_train_batch_size=args.batch_size,
                    max_steps=args.steps, learning_rate=1e-4, beta=0.1, logging_steps=10, report_to=[],
                    save_strategy="no", use_cpu=not torch.cuda.is_available(), seed=0, disable_tqdm=True,
                    bf16=False)
    data = datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                       for p in pairs])
    peft_config = None
    if args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    policy_model = copy.deepcopy(model)
    trainer = DPOTrainer(model=policy_model, ref_model=None if args.lora_r else copy.deepcopy(model), args=cfg,
                         train_dataset=data, processing_class=tok, peft_config=peft_config)
    callback = None
    if with_callback:
        evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[: args.num_probes], seed=0), tok,
                                   TruncationPolicy(64, 64, "left_truncate"), batch_size=args.probe_batch_size)
        callback = ProbeCallback(evaluator, out / "run", eval_every_steps=args.eval_every_steps, phase="dpo")
        callback.attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    out_row = {"wall_seconds": wall}
    if callback is not None:
        summary = json.loads((out / "run" / "summary.json").read_text())
        out_row.update(probe_seconds=summary["probe_seconds"], evaluations=len(summary["evaluated_steps"]))
    return out_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--eval-every-steps", type=int, default=25)
    parser.add_argument("--num-probes", type=int, default=64)
    parser.add_argument("--probe-batch-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=0, help="> 0: LoRA adapters through TRL's peft_config")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from llm.data import synthetic_pairs
    from llm.models import tiny_model
    from llm.tokenization import train_bpe_tokenizer

    pairs = synthetic_pairs(max(args.num_probes, 200), seed=0)
    tok = train_bpe_tokenizer([t for p in pairs for t in (p.prompt, p.chosen, p.rejected)], vocab_size=512)
    model = tiny_model("gpt2", len(tok), seed=0, hidden=args.hidden, layers=args.layers, heads=2,
                       max_positions=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        plain = _run(args, model, tok, pairs, Path(tmp) / "plain", with_callback=False)
        probed = _run(args, model, tok, pairs, Path(tmp) / "probed", with_callback=True)
    print(json.dumps({
        "benchmark": "probe overhead of ProbeCallback in a TRL DPOTrainer run",
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": args.threads,
        "steps": args.steps, "batch_size": args.batch_size, "eval_every_steps": args.eval_every_steps,
        "num_probes": args.num_probes, "evaluations": probed["evaluations"], "lora_r": args.lora_r,
        "model": f"tiny gpt2 hidden {args.hidden} layers {args.layers}",
        "wall_seconds_without_callback": round(plain["wall_seconds"], 3),
        "wall_seconds_with_callback": round(probed["wall_seconds"], 3),
        "probe_seconds": round(probed["probe_seconds"], 3),
        "probe_share": round(probed["probe_seconds"] / probed["wall_seconds"], 4),
        "slowdown": round(probed["wall_seconds"] / plain["wall_seconds"] - 1, 4)}))


if __name__ == "__main__":
    main()
