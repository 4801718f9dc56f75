"""Proposition 1 on one causal LM at a chosen size, architecture, device and dtype: is the remainder O(eta^2)?

The validation's Prop. 1 check (llm.validation.prop1) compares -eta <grad log pi(y_o), grad L> with the real change after one
SGD step, over a sweep of eta. A correct first-order prediction leaves a remainder whose log-log slope vs eta is 2;
a numerical floor (operations that run in lower precision than the check's dtype) flattens it towards 0 or 1.
This script runs that check for several architectures on the same synthetic world, after a short pretraining,
and prints JSON, so the precision of a model family can be checked on the device that matters.

    PYTHONPATH=. python3 benchmarks/prop1_precision.py --archs llama,gpt2 --device cuda   # the gpu preset's size
    .venv/bin/python benchmarks/prop1_precision.py --small                               # a CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from llm.models import tiny_model
from llm.validation.prop1 import Prop1Config, run_prop1
from llm.tokenization import build_word_tokenizer
from llm.validation.pipeline import PRESETS, pretrain
from llm.validation.world import PROBE_KEYS, build_world


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="llama,gpt2", help="comma-separated tiny_model architectures")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--dtype", default="float64", help="dtype of the Prop. 1 check")
    parser.add_argument("--pretrain-epochs", type=int, default=2, help="epochs on the world corpus before the check")
    parser.add_argument("--probes", type=int, default=32, help="probe prompts observed (x 11 probe types)")
    parser.add_argument("--target-change", type=float, default=0.05, help="largest predicted change in nats")
    parser.add_argument("--small", action="store_true", help="the cpu preset's world and model size (smoke run)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    preset = PRESETS["cpu" if args.small else "gpu"]
    world = build_world(dataclasses.replace(preset.world, seed=0))
    texts = list(world.corpus) + [t for p in (*world.train_pairs, *world.probes) for k, t in p.items()
                                  if k in PROBE_KEYS]
    tok = build_word_tokenizer(texts)
    types = [k for k in PROBE_KEYS if k != "prompt"]
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": args.dtype, "hidden": preset.hidden, "layers": preset.layers, "probes": args.probes,
           "pretrain_epochs": args.pretrain_epochs, "target_change": args.target_change, "results": {}}
    for arch in args.archs.split(","):
        t0 = time.perf_counter()
        model = tiny_model(arch, len(tok), seed=0, hidden=preset.hidden, layers=preset.layers, heads=preset.heads,
                           max_positions=256, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        n_params = sum(p.numel() for p in model.parameters())
        losses = pretrain(model, tok, world.corpus, epochs=args.pretrain_epochs, lr=preset.pretrain_lr,
                          batch_size=preset.pretrain_batch, seed=0, device=device, bf16=device.type == "cuda")
        model.to(device)
        for loss in ("sft", "dpo"):
            cfg = Prop1Config(loss=loss, n_steps=1, target_change=args.target_change, dtype=args.dtype)
            r = run_prop1(model, tok, world.train_pairs[:4], world.probes[: args.probes], types, cfg)
            out["results"][f"{arch}/{loss}"] = {
                "parameters": n_params, "pretrain_loss": losses[-1], "correlation": r.correlation,
                "slope": r.slope, "sweep_etas": list(r.sweep_etas), "sweep_errors": list(r.sweep_errors),
                "seconds": time.perf_counter() - t0}
            print(arch, loss, f"r={r.correlation:.5f} slope={r.slope:.2f}", flush=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
