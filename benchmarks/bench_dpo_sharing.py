"""Benchmark DPO with and without prompt sharing on one model in one process: the optimizer step (policy forward,
backward, AdamW; precomputed reference) and the reference precompute over all pairs. Prints one JSON object with
milliseconds per step, seconds per precompute, their ratios (unshared / shared) and the largest log-prob difference.

Pairs are the prompt / chosen / rejected of the paper's HH probe file (../shared/data/paper_probes/
hh_formal_prob_train.jsonl: long prompts, ~70-token responses) when present, or synthetic arithmetic pairs
(``--data synthetic``: short prompts). Steps alternate between the two modes so that load changes hit both alike.

    python benchmarks/bench_dpo_sharing.py [--data hh|synthetic] [--steps 30] [--batch-size 4] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from llm.data import load_probe_set, synthetic_pairs
from llm.encoding import TruncationPolicy, encode_record
from llm.models import resolve_device, tiny_model
from llm.objective import Objective, batch_loss, make_pair_batch, precompute_reference_logps
from llm.tokenization import train_bpe_tokenizer

PAPER_PROBES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "paper_probes" / \
    "hh_formal_prob_train.jsonl"


def _pairs(args) -> tuple[list[tuple[str, str, str]], str]:
    path = Path(args.probes) if args.probes else PAPER_PROBES
    if args.data == "hh" and path.is_file():
        probes = load_probe_set(path, max_records=args.pairs, leading_space=True)
        return [(x, c, r) for x, c, r in zip(probes.prompts, probes.responses["chosen"], probes.responses["rejected"])
                if c and r], path.name
    return [(p.prompt, p.chosen, p.rejected) for p in synthetic_pairs(args.pairs, seed=0)], "synthetic pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("hh", "synthetic"), default="hh", help="pairs: hh or synthetic")
    parser.add_argument("--probes", default="", help="HH probe file (default: the paper's when present)")
    parser.add_argument("--pairs", type=int, default=500, help="pairs of the reference precompute (and step batches)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode (after 3 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--ref-batch-size", type=int, default=16, help="sequences per reference forward pass")
    parser.add_argument("--arch", default="qwen2", help="tiny model architecture: gpt2, llama, gpt_neox or qwen2")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model")
    parser.add_argument("--layers", type=int, default=2, help="layers of the tiny model")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--max-prompt-tokens", type=int, default=256,
                        help="prompts longer than this keep their last tokens (a sweep of prompt length on HH pairs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pairs, source = _pairs(args)
    tok = train_bpe_tokenizer([t for p in pairs for t in p], vocab_size=2000)
    policy = TruncationPolicy(max_prompt_tokens=args.max_prompt_tokens, max_response_tokens=256,
                              prompt_overflow="left_truncate")
    records = [encode_record(tok, x, (c, r), policy) for x, c, r in pairs]
    chosen, rejected = [s[0] for s in records], [s[1] for s in records]
    model = tiny_model(args.arch, len(tok), seed=0, hidden=args.hidden, layers=args.layers).to(device)
    pad = tok.pad_token_id

    ref, ref_seconds = {}, {}
    for share in (False, True, False, True):  # twice each, alternating; the best time is kept
        sync()
        t0 = time.perf_counter()
        ref[share] = precompute_reference_logps(model, chosen, rejected, pad, batch_size=args.ref_batch_size,
                                                share_prompts=share)
        sync()
        ref_seconds[share] = min(ref_seconds.get(share, float("inf")), time.perf_counter() - t0)
    ref_diff = max(float((ref[True][j] - ref[False][j]).abs().max()) for j in range(2))

    objective = Objective("dpo")
    models = {s: tiny_model(args.arch, len(tok), seed=0, hidden=args.hidden, layers=args.layers).to(device).train()
              for s in (False, True)}
    optims = {s: torch.optim.AdamW(models[s].parameters(), lr=1e-4) for s in (False, True)}
    times: dict[bool, list[float]] = {False: [], True: []}
    gen = torch.Generator().manual_seed(0)
    for step in range(args.steps + 3):
        idx = torch.randperm(len(pairs), generator=gen)[: args.batch_size].tolist()
        for share in (False, True):
            batch = make_pair_batch(idx, chosen, rejected, pad, share_prompts=share)
            sync()
            t0 = time.perf_counter()
            optims[share].zero_grad(set_to_none=True)
            losses, _ = batch_loss(models[share], batch, objective, ref_chosen=ref[False][0][idx],
                                   ref_rejected=ref[False][1][idx])
            losses.mean().backward()
            optims[share].step()
            sync()
            if step >= 3:
                times[share].append(time.perf_counter() - t0)
    step_ms = {s: 1e3 * statistics.median(t) for s, t in times.items()}
    weight_diff = max(float((a - b).detach().abs().max()) for a, b in zip(models[False].parameters(),
                                                                  models[True].parameters()))
    print(json.dumps({
        "benchmark": "dpo_prompt_sharing", "pairs_source": source, "num_pairs": len(pairs),
        "mean_prompt_tokens": round(sum(len(c.prompt_ids) for c in chosen) / len(chosen), 1),
        "mean_response_tokens": round(sum(len(c.response_ids) + len(r.response_ids)
                                          for c, r in zip(chosen, rejected)) / (2 * len(chosen)), 1),
        "model": f"tiny-{args.arch} hidden {args.hidden} x {args.layers} layers, V={len(tok)}",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size_pairs": args.batch_size, "steps": args.steps,
        "step_ms_unshared": round(step_ms[False], 2), "step_ms_shared": round(step_ms[True], 2),
        "step_speedup": round(step_ms[False] / step_ms[True], 2),
        "reference_seconds_unshared": round(ref_seconds[False], 3),
        "reference_seconds_shared": round(ref_seconds[True], 3),
        "reference_speedup": round(ref_seconds[False] / ref_seconds[True], 2),
        "max_abs_diff_reference_logps": ref_diff, "max_abs_diff_weights_after_steps": weight_diff,
    }, indent=2))


if __name__ == "__main__":
    main()
