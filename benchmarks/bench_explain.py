"""Benchmark the cost of explaining a run and of forecasting it, as multiples of the plain run. Prints one JSON.

Three runs of the same config (DPO, AdamW, tiny GPT-2 on synthetic pairs, probes derived from the first training
pairs: 6 probe types + the teacher-forced argmax): the plain run, the run with the attribution of
``--explain-prompts`` probe prompts at every step (llm.explain), and the forecast (llm.forecast, the model
linearised at the start, trained by the same loop). Costs are the runs' own train + probe seconds (summary.json),
so setup (tokenizer training, model construction) is left out of every figure. The targets of issue 12 are an
attribution below 1.5x and a forecast below 1x the plain run; the JSON says whether they are met.

    python benchmarks/bench_explain.py [--explain-prompts 16] [--batch-size 8] [--examples 256] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from llm.config import TrainConfig
from llm.forecast import forecast
from llm.training import train


def _loop_seconds(summary: dict) -> float:
    return float(summary["train_seconds"] + summary["probe_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--explain-prompts", type=int, default=16, help="probe prompts attributed at every step")
    parser.add_argument("--num-probes", type=int, default=64, help="probe prompts of the run's own evaluations")
    parser.add_argument("--examples", type=int, default=256, help="training examples of each run")
    parser.add_argument("--eval-every", type=int, default=128, help="probe evaluation every this many examples")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--hidden", type=int, default=64, help="tiny GPT-2 hidden size")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        def cfg(name: str, **kw) -> TrainConfig:
            return TrainConfig(loss="dpo", optimizer="adamw", lr=args.lr, tiny_hidden=args.hidden,
                               num_synthetic=args.num_probes + 40, held_out=20, num_probes=args.num_probes,
                               batch_size=args.batch_size, epochs=10_000, max_examples=args.examples,
                               eval_every=args.eval_every, max_prompt_tokens=64, max_response_tokens=64,
                               device=args.device, progress=False, save_model=False, checkpoint_at_end=False,
                               out_dir=str(Path(tmp) / name), **kw)

        plain = train(cfg("plain"))
        explained = train(cfg("explained", explain_prompts=args.explain_prompts))
        fc = forecast(cfg("forecast"))
        meta = json.loads((explained.run_dir / "explain" / "meta.json").read_text())
    base = _loop_seconds(plain.summary)
    attribution_x = _loop_seconds(explained.summary) / base
    forecast_x = _loop_seconds(fc.summary) / base
    print(json.dumps({
        "benchmark": "explain", "device": str(next(plain.model.parameters()).device), "steps": plain.step,
        "batch_size": args.batch_size, "explain_prompts": args.explain_prompts,
        "observed_sequences_per_step": len(meta["probe_types"]), "plain_seconds": round(base, 3),
        "attribution_seconds": round(meta["seconds"], 3), "attribution_x": round(attribution_x, 2),
        "attribution_target_met": attribution_x < 1.5, "forecast_seconds": round(_loop_seconds(fc.summary), 3),
        "forecast_x": round(forecast_x, 2), "forecast_target_met": forecast_x < 1.0,
        "median_step_correlation": round(meta["median_step_correlation"], 5),
    }))


if __name__ == "__main__":
    main()
