"""Benchmark the exact squeeze step on 1,000 distributions over an LM vocabulary (V = 50,257): one vectorized call
versus Python loops over distributions. Prints one JSON object.

Baselines: ``python_loop`` updates one distribution at a time in plain Python (math.log / math.exp per label), timed
on a subset of rows and extrapolated linearly to all rows; ``numpy_row_loop`` calls the vectorized step once per
distribution (the paper notebook's one-distribution-at-a-time style). Both are checked against the batched result.

    python benchmarks/bench_squeeze.py [--rows 1000] [--vocab 50257] [--loop-rows 5]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

from toykit.squeeze import random_distribution, squeeze_step


def python_loop_step(pi_row: list[float], ybar: int, c: float) -> list[float]:
    """One distribution, label by label: pi'_i = pi_i exp(c (pi_i - [i = ybar])) / Z in log space."""
    s = [(math.log(p) if p > 0 else -math.inf) + c * p for p in pi_row]
    s[ybar] -= c
    top = max(s)
    e = [math.exp(v - top) for v in s]
    z = sum(e)
    return [v / z for v in e]


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="number of distributions N")
    parser.add_argument("--vocab", type=int, default=50_257, help="vocabulary size V")
    parser.add_argument("--loop-rows", type=int, default=5, help="rows timed for the pure-Python loop")
    parser.add_argument("--numpy-loop-rows", type=int, default=200, help="rows timed for the per-row numpy loop")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the vectorized call (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    pi = random_distribution(rng, args.vocab, temperature=0.5, size=(args.rows,))  # (N, V) float64
    ybar = rng.integers(0, args.vocab, size=args.rows)  # (N,)
    c = rng.uniform(0.5, 5.0, size=args.rows)  # (N,)

    vectorized_s, batched = _best_time(lambda: squeeze_step(pi, ybar, c), args.repeats)

    k = min(args.loop_rows, args.rows)
    start = time.perf_counter()
    looped = [python_loop_step(pi[n].tolist(), int(ybar[n]), float(c[n])) for n in range(k)]
    python_loop_s = (time.perf_counter() - start) * args.rows / k
    np.testing.assert_allclose(np.array(looped), batched[:k], rtol=1e-10, atol=1e-300)

    m = min(args.numpy_loop_rows, args.rows)
    start = time.perf_counter()
    row_by_row = [squeeze_step(pi[n], int(ybar[n]), float(c[n])) for n in range(m)]
    numpy_row_loop_s = (time.perf_counter() - start) * args.rows / m
    np.testing.assert_allclose(np.stack(row_by_row), batched[:m], rtol=1e-12, atol=0)

    print(json.dumps({
        "benchmark": "squeeze_step",
        "rows": args.rows,
        "vocab": args.vocab,
        "dtype": "float64",
        "vectorized_s": round(vectorized_s, 4),
        "python_loop_s": round(python_loop_s, 3),
        "python_loop_rows_timed": k,
        "python_loop_extrapolated": k < args.rows,
        "ratio_vs_python_loop": round(python_loop_s / vectorized_s, 1),
        "numpy_row_loop_s": round(numpy_row_loop_s, 4),
        "numpy_row_loop_rows_timed": m,
        "ratio_vs_numpy_row_loop": round(numpy_row_loop_s / vectorized_s, 2),
        "results_match": True,
        "numpy": np.__version__,
        "machine": platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()
