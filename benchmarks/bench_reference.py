"""Benchmark a DPO optimizer step with reference log-probs precomputed once vs a reference forward pass every step.
Prints one JSON object (milliseconds per step, their ratio, and the one-off cost of the precomputation).

    python benchmarks/bench_reference.py [--steps 20] [--hidden 256] [--layers 4] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time

import torch

from llm.data import synthetic_pairs
from llm.encoding import TruncationPolicy, encode_sequence
from llm.models import resolve_device, tiny_model
from llm.objective import Objective, batch_loss, make_pair_batch, precompute_reference_logps
from llm.tokenization import train_bpe_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--arch", default="gpt2")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pairs = synthetic_pairs(args.pairs, seed=0)
    tok = train_bpe_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs], vocab_size=1000)
    policy = TruncationPolicy(64, 64)
    chosen = [encode_sequence(tok, p.prompt, p.chosen, policy) for p in pairs]
    rejected = [encode_sequence(tok, p.prompt, p.rejected, policy) for p in pairs]
    objective = Objective("dpo")
    timings = {}
    for mode in ("precomputed", "per_step"):
        model = tiny_model(args.arch, len(tok), seed=0, hidden=args.hidden, layers=args.layers,
                           heads=max(1, args.hidden // 64)).to(device)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False) if mode == "per_step" else None
        sync()
        t0 = time.perf_counter()
        ref_c, ref_r = (precompute_reference_logps(model, chosen, rejected, tok.pad_token_id, batch_size=64)
                        if mode == "precomputed" else (None, None))
        sync()
        setup = time.perf_counter() - t0
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()
        for step in range(args.steps + 3):  # 3 warm-up steps are not timed
            if step == 3:
                sync()
                t0 = time.perf_counter()
            idx = [(step * args.batch_size + k) % len(pairs) for k in range(args.batch_size)]
            batch = make_pair_batch(idx, chosen, rejected, tok.pad_token_id)
            batch = dataclasses.replace(batch, sequences=batch.sequences.to(device))
            loss, _ = batch_loss(model, batch, objective, ref_chosen=None if ref_c is None else ref_c[idx],
                                 ref_rejected=None if ref_r is None else ref_r[idx], ref_model=ref_model)
            optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()
            optimizer.step()
        sync()
        timings[mode] = {"ms_per_step": 1000 * (time.perf_counter() - t0) / args.steps,
                         "one_off_seconds": setup}
    print(json.dumps({
        "benchmark": "dpo_reference", "steps": args.steps, "batch_size": args.batch_size,
        "dataset_pairs": len(pairs), "model": f"tiny-{args.arch} hidden {args.hidden} x {args.layers} layers",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "precomputed_ms_per_step": round(timings["precomputed"]["ms_per_step"], 2),
        "per_step_ms_per_step": round(timings["per_step"]["ms_per_step"], 2),
        "per_step_over_precomputed": round(timings["per_step"]["ms_per_step"]
                                           / timings["precomputed"]["ms_per_step"], 2),
        "precompute_seconds_for_dataset": round(timings["precomputed"]["one_off_seconds"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
