"""Benchmark the batched torch.func eNTK against per-pair and per-example autograd loops; print JSON.

The loops produce the same K (asserted with allclose). Run: ``python benchmarks/bench_ntk.py --help``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from toykit.models import MLP
from toykit.ntk import empirical_ntk


def _jacobian_rows(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J(x) for one example (V, P) by V reverse-mode passes of plain autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    z = model(x.unsqueeze(0)).squeeze(0)  # (V,)
    rows = []
    for v in range(z.shape[0]):
        grads = torch.autograd.grad(z[v], params, retain_graph=True)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)  # (V, P)


def per_pair_loop(model, x_o, x_u, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """The naive loop: for each pair (a, b), Jacobians of both examples by autograd, then J_o J_u^T: (n, V, V)."""
    return torch.stack([_jacobian_rows(model, x_o[a]) @ _jacobian_rows(model, x_u[b]).T for a, b in pairs])


def per_example_loop(model, x_o, x_u) -> torch.Tensor:
    """A stronger baseline: each example's Jacobian once by autograd, then one einsum."""
    J_o = torch.stack([_jacobian_rows(model, x) for x in x_o])  # (N_o, V, P)
    J_u = torch.stack([_jacobian_rows(model, x) for x in x_u])  # (N_u, V, P)
    return torch.einsum("avp,bwp->abvw", J_o, J_u)  # (N_o, N_u, V, V)


def _best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-o", type=int, default=100, help="number of observed inputs N_o")
    parser.add_argument("--n-u", type=int, default=100, help="number of updated inputs N_u")
    parser.add_argument("--in-dim", type=int, default=64, help="MLP input features")
    parser.add_argument("--hidden", type=int, default=32, help="MLP hidden width")
    parser.add_argument("--classes", type=int, default=10, help="V, number of logits")
    parser.add_argument("--chunk-size", type=int, default=None, help="eNTK chunk size (None = one block)")
    parser.add_argument("--loop-pairs", type=int, default=300,
                        help="pairs the per-pair loop computes (row-major from (0, 0)); its time is extrapolated "
                             "linearly to all N_o * N_u pairs; 0 = all pairs (about 3-7 minutes at 100 x 100)")
    parser.add_argument("--repeats", type=int, default=3, help="best-of repeats for the batched methods")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(args.seed)
    model = MLP(args.in_dim, args.hidden, args.classes, depth=2, generator=g).to(dtype)
    x_o = torch.randn(args.n_o, args.in_dim, generator=g, dtype=dtype)
    x_u = torch.randn(args.n_u, args.in_dim, generator=g, dtype=dtype)

    seconds, kernels = {}, {}
    for method in ("jacobian", "implicit"):
        empirical_ntk(model, x_o[:2], x_u[:2], method=method)  # warm up torch.func's first-use setup
        seconds[method], kernels[method] = _best_time(
            lambda m=method: empirical_ntk(model, x_o, x_u, method=m, chunk_size=args.chunk_size), args.repeats
        )
    seconds["per_example_loop"], kernels["per_example_loop"] = _best_time(
        lambda: per_example_loop(model, x_o, x_u), 1
    )
    total = args.n_o * args.n_u
    n_pairs = total if args.loop_pairs <= 0 else min(args.loop_pairs, total)
    pairs = [divmod(i, args.n_u) for i in range(n_pairs)]
    loop_seconds, loop_K = _best_time(lambda: per_pair_loop(model, x_o, x_u, pairs), 1)
    seconds["per_pair_loop"] = loop_seconds * total / n_pairs

    rows, cols = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
    tol = {"float32": (1e-4, 1e-5), "float64": (1e-10, 1e-12)}[args.dtype]
    for name, K in kernels.items():
        torch.testing.assert_close(K[rows, cols], loop_K, rtol=tol[0], atol=tol[1], msg=f"{name} != per-pair loop")
        torch.testing.assert_close(K, kernels["per_example_loop"], rtol=tol[0], atol=tol[1],
                                   msg=f"{name} != per-example loop")

    best = min(seconds["jacobian"], seconds["implicit"])
    print(json.dumps({
        "benchmark": "empirical_ntk",
        "sizes": {"n_o": args.n_o, "n_u": args.n_u, "in_dim": args.in_dim, "hidden": args.hidden,
                  "classes": args.classes, "params": sum(p.numel() for p in model.parameters())},
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "per_pair_loop_pairs_timed": n_pairs,
        "per_pair_loop_extrapolated": n_pairs < total,
        "speedup_vs_per_pair_loop": {m: seconds["per_pair_loop"] / seconds[m] for m in ("jacobian", "implicit")},
        "speedup_vs_per_example_loop": {m: seconds["per_example_loop"] / seconds[m] for m in ("jacobian", "implicit")},
        "target_speedup": 10.0,
        "meets_target": seconds["per_pair_loop"] / best >= 10.0,
        "same_K": True,
    }, indent=2))


if __name__ == "__main__":
    main()
