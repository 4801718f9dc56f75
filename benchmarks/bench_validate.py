"""Wall time and peak memory of the validation pipeline (default: the CPU preset, 3 seeds); prints JSON.

    python benchmarks/bench_validate.py                      # the CPU preset (target: < 600 s on 2 cores)
    python benchmarks/bench_validate.py --preset test --seeds 0

Peak memory is the largest maximum resident set size of the process and of its seed workers
(``resource.getrusage``), in MiB; CPU seconds add the workers'. The machine's load average before and after says
whether the wall time was measured on a calm machine (the target is for 2 otherwise idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=["test", "cpu", "gpu"])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--out-dir", default=None, help="keep the run here (default: a temporary directory)")
    parser.add_argument("--workers", type=int, default=3, help="seeds run in parallel processes (1: in this one)")
    args = parser.parse_args()

    import torch

    from llm.validation.pipeline import ValidateConfig, run_validation

    seeds = tuple(int(s) for s in args.seeds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or str(Path(tmp) / "v")
        load_before, start = os.getloadavg(), time.perf_counter()
        run_dir, doc = run_validation(ValidateConfig(preset=args.preset, seeds=seeds, out_dir=out_dir,
                                                     workers=args.workers))
        wall, load_after = time.perf_counter() - start, os.getloadavg()
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    peak_mib = max(u.ru_maxrss for u in usage) / 1024.0
    print(json.dumps({
        "benchmark": "validate", "preset": args.preset, "seeds": list(seeds), "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1), "peak_rss_mib": round(peak_mib, 1), "target_wall_seconds": 600,
        "claims_held": doc["held"], "claims_total": doc["total"], "out_of_regime": doc["out_of_regime"],
        "workers": args.workers, "load_average_before": load_before[0], "load_average_after": load_after[0],
        "cpu_count": os.cpu_count(),
        "torch_threads_during_run": ValidateConfig().threads, "torch": torch.__version__, "python": platform.python_version(),
    }, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
