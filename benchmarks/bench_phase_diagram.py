"""Throughput of the phase diagram: one vectorised (S, 2, V) batch vs a plain Python loop over scenarios.

Prints JSON: scenario-steps per second of each, their ratio (target >= 100x), and the largest difference between the
two on the scenarios both ran (asserted to be round-off). The loop is timed on an evenly spaced subset of the grid
(it would take minutes on all of it); its throughput is per scenario-step, so the ratio is fair.

    python benchmarks/bench_phase_diagram.py [--steps 300] [--loop-scenarios 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from toykit.experiments import _toy_policy as tp
from toykit.experiments import phase_diagram as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="T, SGD steps per scenario")
    parser.add_argument("--loop-scenarios", type=int, default=40, help="scenarios timed in the Python loop")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = pd.Config(steps=args.steps)  # the default grid
    batch = pd.build_scenarios(cfg)
    uniforms = pd.draw_uniforms(cfg, batch.size)

    start = time.perf_counter()
    together = tp.simulate(batch, cfg.steps, uniforms, record_every=cfg.steps)
    vectorised_s = time.perf_counter() - start

    rows = torch.linspace(0, batch.size - 1, args.loop_scenarios).round().long().unique()
    start = time.perf_counter()
    alone = tp.simulate_one_by_one(tp.select(batch, rows), cfg.steps, uniforms[:, rows], record_every=cfg.steps)
    loop_s = time.perf_counter() - start

    max_abs_diff = max(float((together.records[k][:, rows] - alone.records[k]).abs().max()) for k in tp.RECORDS)
    assert max_abs_diff < 1e-9, f"vectorised and loop results differ by {max_abs_diff}"
    assert torch.equal(together.diverged_at[rows], alone.diverged_at)

    vectorised_rate = batch.size * cfg.steps / vectorised_s
    loop_rate = len(rows) * cfg.steps / loop_s
    print(json.dumps({
        "benchmark": "phase_diagram_throughput",
        "scenarios": batch.size, "steps": cfg.steps, "loop_scenarios": len(rows), "threads": args.threads,
        "vectorised_seconds": round(vectorised_s, 3), "loop_seconds": round(loop_s, 3),
        "vectorised_scenario_steps_per_s": round(vectorised_rate, 1),
        "loop_scenario_steps_per_s": round(loop_rate, 1),
        "speedup": round(vectorised_rate / loop_rate, 1), "target_speedup": 100,
        "max_abs_diff_on_shared_scenarios": max_abs_diff,
    }, indent=2))


if __name__ == "__main__":
    main()
