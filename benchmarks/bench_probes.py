"""Benchmark probe evaluation: batched, length-sorted ProbeEvaluator vs the paper's method (one forward pass per
example and probe type, batch 1) on the same tiny model. Prints one JSON object.

Probes are the paper's HH probe file (../shared/data/paper_probes/hh_formal_prob_train.jsonl) when present, else
derived from synthetic pairs. Both methods are checked against each other (largest difference of the means).

    python benchmarks/bench_probes.py [--num-prompts 500] [--device auto] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from llm.data import load_probe_set, probe_set_from_pairs, synthetic_pairs
from llm.encoding import TruncationPolicy
from llm.models import resolve_device, tiny_model
from llm.probes import ProbeEvaluator, evaluate_sequential
from llm.tokenization import train_bpe_tokenizer

PAPER_PROBES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "paper_probes" / \
    "hh_formal_prob_train.jsonl"


def _probe_set(path: str, num_prompts: int):
    path = Path(path) if path else PAPER_PROBES
    if path.is_file():
        return load_probe_set(path, max_records=num_prompts, leading_space=True), path.name
    pairs = synthetic_pairs(num_prompts + 50, seed=0)
    return probe_set_from_pairs(pairs[:num_prompts], held_out=pairs[num_prompts:], seed=0), "synthetic pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=500)
    parser.add_argument("--probes", default="", help="probe file (default: the paper's HH file when present)")
    parser.add_argument("--arch", default="qwen2")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    probes, source = _probe_set(args.probes, args.num_prompts)
    texts = list(probes.prompts) + [t for v in probes.responses.values() for t in v if t]
    tok = train_bpe_tokenizer(texts, vocab_size=2000)
    model = tiny_model(args.arch, len(tok), seed=0, hidden=args.hidden, layers=args.layers).to(device)
    policy = TruncationPolicy(max_prompt_tokens=256, max_response_tokens=256, prompt_overflow="left_truncate")
    evaluator = ProbeEvaluator(probes, tok, policy, batch_size=args.batch_size)
    evaluator(model)  # warm-up (allocator, kernels)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    batched = evaluator(model)
    sync()
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    sequential = evaluate_sequential(model, probes, tok, policy)
    sync()
    t_seq = time.perf_counter() - t0
    mb, ms = batched.means(), sequential.means()
    diff = max(abs(mb[k] - ms[k]) for k in mb if np.isfinite(mb[k]))
    print(json.dumps({
        "benchmark": "probe_evaluation", "probe_source": source, "num_prompts": len(probes),
        "probe_types": len(probes.probe_types), "num_sequences": evaluator.truncation["num_sequences"],
        "model": f"tiny-{args.arch} hidden {args.hidden} x {args.layers} layers, V={len(tok)}",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "batched_seconds": round(t_batched, 3), "paper_method_seconds": round(t_seq, 3),
        "speedup": round(t_seq / t_batched, 1), "max_abs_diff_of_means": diff,
    }, indent=2))


if __name__ == "__main__":
    main()
