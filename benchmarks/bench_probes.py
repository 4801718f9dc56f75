"""Benchmark probe evaluation on one model in one process: shared prompts (each prompt once, its responses from its
key/value cache) vs full sequences (every [prompt, response] its own sequence, length-sorted batches) vs the paper's
method (one forward pass per example and probe type, batch 1), and the unique-token bound: the model's dense forward
on exactly the set's unique tokens (each prompt once, each response once) packed into full rows of ``--bound-width``
tokens with logits at every position, no statistics. The unique-token work is that bound as an evaluator needs it:
the body on the unique tokens, the LM head and the probe statistics on the response tokens only; full mode's time
over it is the largest speed-up any exact evaluator could reach on this set. Prints one JSON object.

Probes are the paper's HH probe file (../shared/data/paper_probes/hh_formal_prob_train.jsonl: 500 prompts, every
probe type) when present, else derived from synthetic pairs. Every mode's per-example arrays are checked against the
full path (largest absolute difference). ``--memory`` (or ``--memory-only``) adds each mode's peak memory above its
set-up, each mode alone in a fresh process: resident memory on a CPU, torch's allocated device memory on a GPU.

    python benchmarks/bench_probes.py [--probes FILE] [--num-prompts 500] [--batch-size 64] [--vocab 50257] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm.data import load_probe_set, probe_set_from_pairs, synthetic_pairs
from llm.encoding import TruncationPolicy
from llm.models import resolve_device, tiny_model
from llm.logps import head_statistics
from llm.prefix import head_path
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


def _setup(args):
    device = resolve_device(args.device)
    probes, source = _probe_set(args.probes, args.num_prompts)
    texts = list(probes.prompts) + [t for v in probes.responses.values() for t in v if t]
    tok = train_bpe_tokenizer(texts, vocab_size=2000)
    model = tiny_model(args.arch, max(len(tok), args.vocab), seed=0, hidden=args.hidden, layers=args.layers)
    policy = TruncationPolicy(max_prompt_tokens=256, max_response_tokens=256, prompt_overflow="left_truncate")
    return device, probes, source, tok, model.to(device).eval(), policy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def unique_tokens(evaluator: ProbeEvaluator) -> list[int]:
    """Each prompt once and each response once, as one token stream (the work no method can avoid): the prompts'
    tokens first, then the responses' (``num_prompt_tokens`` of them are prompt tokens)."""
    return [t for p in _unique_prompts(evaluator) for t in p] + \
        [t for _, _, s in evaluator.items for t in s.response_ids]


def num_prompt_tokens(evaluator: ProbeEvaluator) -> int:
    return sum(len(p) for p in _unique_prompts(evaluator))


def _unique_prompts(evaluator: ProbeEvaluator) -> list[tuple[int, ...]]:
    return [p for _, p in sorted({(i, s.prompt_ids) for _, i, s in evaluator.items})]


@torch.no_grad()
def dense_forward(model, tokens: list[int], width: int, batch_rows: int, device: torch.device,
                  scored_from: int | None = None) -> None:
    """The model's forward on ``tokens`` packed into full rows of ``width``: with logits at every position, or, with
    ``scored_from``, the body on every token and the LM head and every probe statistic (``head_statistics``) on
    the tokens from index ``scored_from`` on only (the responses: the work each scored token needs in any mode)."""
    rows = -(-len(tokens) // width)
    ids = torch.zeros(rows * width, dtype=torch.long)
    ids[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    scored = torch.zeros(rows * width, dtype=torch.long)
    if scored_from is not None:
        scored[scored_from: len(tokens)] = 1
    ids, scored = ids.view(rows, width).to(device), scored.view(rows, width).to(device)  # (rows, width), packed
    head = head_path(model) if scored_from is not None else None
    if scored_from is not None and head is None:
        raise ValueError("the bound with statistics needs a model whose logits are its LM head's output")
    for start in range(0, rows, batch_rows):
        batch = ids[start: start + batch_rows]
        if head is None:
            model(input_ids=batch, use_cache=False)
        else:
            hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state  # (b, width, H)
            head_statistics(hidden, head, batch, scored[start: start + batch_rows])


def _max_diff(a, b) -> float:
    return max(float(np.nanmax(np.abs(a.per_example[p][s] - b.per_example[p][s]), initial=0.0))
               for p in a.per_example for s in a.per_example[p])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_memory_child(args) -> None:
    """Evaluate in one mode once in this fresh process; print its peak resident memory above the set-up process.

    The tokenizer comes from the parent's folder (training one here would set the peak before evaluating).
    """
    from transformers import AutoTokenizer

    device = resolve_device(args.device)
    probes, _ = _probe_set(args.probes, args.num_prompts)
    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    model = tiny_model(args.arch, max(len(tok), args.vocab), seed=0, hidden=args.hidden, layers=args.layers)
    model = model.to(device).eval()
    policy = TruncationPolicy(max_prompt_tokens=256, max_response_tokens=256, prompt_overflow="left_truncate")
    evaluator = ProbeEvaluator(probes, tok, policy, batch_size=args.batch_size, mode=args.memory_child)
    before, peak_before = _rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":  # on a GPU the evaluation's memory is the device's, not the host's
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        gpu_before = torch.cuda.memory_allocated(device) / 2**20
    evaluator(model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        gpu = {"gpu_above_setup_mib": round(torch.cuda.max_memory_allocated(device) / 2**20 - gpu_before, 1)}
    print(json.dumps({"mode": args.memory_child, "active_mode": evaluator.active_mode, "rss_before_mib": before,
                      "peak_before_mib": peak_before, "peak_mib": peak, **gpu}))


def _peak_memory(args, tok) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        for mode in ("full", "shared"):
            cmd = [sys.executable, __file__, "--memory-child", mode, "--tokenizer-dir", tmp, "--probes", args.probes,
                   "--num-prompts", str(args.num_prompts), "--arch", args.arch, "--hidden", str(args.hidden),
                   "--layers", str(args.layers), "--vocab", str(args.vocab), "--batch-size", str(args.batch_size),
                   "--device", args.device,
                   "--threads", str(args.threads)]
            child = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            if "gpu_above_setup_mib" in child:  # allocated device memory (torch's allocator), above the set-up
                out[mode] = child["gpu_above_setup_mib"]
                continue
            if child["peak_mib"] <= child["peak_before_mib"]:
                raise RuntimeError(f"{mode}: the set-up peak hides the evaluation's ({child})")
            out[mode] = round(child["peak_mib"] - child["rss_before_mib"], 1)
    return out


def _memory_figures(args, tok, device: torch.device) -> dict:
    kind = "gpu_allocated" if device.type == "cuda" else "resident"
    return {f"peak_{kind}_above_setup_mib": _peak_memory(args, tok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=500, help="probe prompts (the HH file has 500)")
    parser.add_argument("--probes", default="", help="probe file (default: the paper's HH file when present)")
    parser.add_argument("--arch", default="qwen2", help="tiny model architecture: gpt2, llama, gpt_neox or qwen2")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the tiny model")
    parser.add_argument("--layers", type=int, default=2, help="layers of the tiny model")
    parser.add_argument("--vocab", type=int, default=0,
                        help="model vocabulary when larger than the tokenizer's 2,000 (e.g. 50257: a real model's LM "
                             "head and logits; the extra rows are never targets)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences (responses) per forward pass")
    parser.add_argument("--bound-width", type=int, default=256, help="row length of the unique-token bound")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each batched mode (the best is kept)")
    parser.add_argument("--skip-paper-method", action="store_true", help="leave out the slow batch-1 method")
    parser.add_argument("--memory", action="store_true", help="also measure each mode's peak memory (subprocesses)")
    parser.add_argument("--memory-only", action="store_true", help="measure the peak memory only (no timings)")
    parser.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        _peak_memory_child(args)
        return
    device, probes, source, tok, model, policy = _setup(args)
    if args.memory_only:
        print(json.dumps({"benchmark": "probe_evaluation_memory", "probe_source": source, "num_prompts": len(probes),
                          "batch_size": args.batch_size, **_memory_figures(args, tok, device)},
                         indent=2))
        return
    shared = ProbeEvaluator(probes, tok, policy, batch_size=args.batch_size, mode="shared")
    full = ProbeEvaluator(probes, tok, policy, batch_size=args.batch_size, mode="full")
    warm = probes.subset(min(len(probes), 16))  # allocator and kernels warm; the shared path's one-time check
    ProbeEvaluator(warm, tok, policy, batch_size=args.batch_size, mode="full")(model)
    ProbeEvaluator(warm, tok, policy, batch_size=args.batch_size, mode="shared")(model)
    t_shared, r_shared = _timed(lambda: shared(model), device, args.repeats)
    t_full, r_full = _timed(lambda: full(model), device, args.repeats)
    unique = unique_tokens(shared)
    bound_rows = max(1, args.batch_size * 64 // args.bound_width)
    t_bound, _ = _timed(lambda: dense_forward(model, unique, args.bound_width, bound_rows, device),
                        device, args.repeats)
    t_work, _ = _timed(lambda: dense_forward(model, unique, args.bound_width, bound_rows, device,
                                              scored_from=num_prompt_tokens(shared)), device, args.repeats)
    paper_tokens = sum(s.length for _, _, s in full.items)
    figures = {}
    if not args.skip_paper_method:
        t_paper, r_paper = _timed(lambda: evaluate_sequential(model, probes, tok, policy), device, 1)
        figures = {"paper_method_seconds": round(t_paper, 3), "shared_vs_paper_method": round(t_paper / t_shared, 2),
                   "full_vs_paper_method": round(t_paper / t_full, 2),
                   "max_abs_diff_paper_method_vs_full": _max_diff(r_paper, r_full)}
    print(json.dumps({
        "benchmark": "probe_evaluation", "probe_source": source, "num_prompts": len(probes),
        "probe_types": len(probes.probe_types), "num_sequences": full.truncation["num_sequences"],
        "model": f"tiny-{args.arch} hidden {args.hidden} x {args.layers} layers, V={model.config.vocab_size}",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size, "shared_active": shared.active_mode,
        "shared_seconds": round(t_shared, 3), "full_seconds": round(t_full, 3),
        "unique_token_bound_seconds": round(t_bound, 3), "shared_vs_full": round(t_full / t_shared, 2),
        **{k: v for k, v in figures.items() if k != "max_abs_diff_paper_method_vs_full"},
        "shared_over_bound": round(t_shared / t_bound, 2),
        # the bound with the statistics: the body on the unique tokens, the LM head and every probe statistic on the
        # response tokens only, the work of any exact evaluator; full over it is the most any exact mode can gain
        "unique_token_work_seconds": round(t_work, 3), "full_over_unique_token_work": round(t_full / t_work, 2),
        "shared_over_unique_token_work": round(t_shared / t_work, 2),
        # positions run in each mode; full's cost more each (attention over [prompt, response], the LM head from the
        # batch's earliest response start), so the time ratio can exceed this one
        "positions_full_over_shared": round(full.work("full")["padded_positions"] /
                                            shared.work("shared")["padded_positions"], 2),
        "tokens": {"paper_method": {"padded_positions": paper_tokens, "real_tokens": paper_tokens},
                   "full": full.work("full"), "shared": shared.work("shared"), "unique": len(unique),
                   "bound_positions": -(-len(unique) // args.bound_width) * args.bound_width},
        "max_abs_diff_shared_vs_full": _max_diff(r_shared, r_full),
        **{k: v for k, v in figures.items() if k == "max_abs_diff_paper_method_vs_full"},
        **(_memory_figures(args, tok, device) if args.memory else {}),
    }, indent=2))


if __name__ == "__main__":
    main()
