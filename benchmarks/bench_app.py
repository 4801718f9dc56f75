"""Rerun time of each app page at its default settings, measured with Streamlit's AppTest; prints JSON.

For every page: the cold first run (imports, the library computation, rendering) and the median of ``--reruns``
reruns (what a user waits for after touching a widget whose result is cached: widgets -> cached library call ->
render). Target: reruns under 300 ms for the toy pages. The LLM page is measured on a small run folder written here
in the engine's tidy format (and with the paper's metrics file when ../shared/data is present).

    python benchmarks/bench_app.py [--reruns 5] [--pages 1_Squeezing_explorer.py ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app"
PAPER_FILE = REPO.parent / "shared" / "data" / "paper_runs" / "base_dpo_qwen_ep6.jsonl"
TARGET_MS = 300.0
TOY_PAGES = ["1_Squeezing_explorer.py", "2_One_step_decomposition.py", "3_Loss_residuals.py",
             "4_Trajectories_and_phase_diagram.py", "5_Digits_influence.py"]


def _write_llm_runs(folder: Path) -> None:
    """Two runs x two phases x 12 evaluations x 12 probes x 2 reductions, plus TRL training rows."""
    probes = ["chosen", "rejected", "chosen_initial", "chosen_gptsemantic", "chosen_gptformat", "reject_gptsemantic",
              "reject_gptformat", "irr_train", "irr_test", "irr_hum", "random_permute", "random_nonhum"]
    for name, decay in (("baseline", 1.0), ("extend", 0.5)):
        run = folder / name
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        rows = []
        for phase in ("sft", "dpo"):
            for step in range(12):
                for k, probe in enumerate(probes):
                    for stat, scale in (("logp_sum", 20.0), ("logp_mean", 1.0)):
                        rows.append({"step": step, "examples_seen": 100 * step, "phase": phase, "probe": probe,
                                     "statistic": stat, "value": -scale * (1 + 0.1 * k + decay * 0.05 * step)})
                rows.append({"step": step, "examples_seen": 100 * step, "phase": phase, "loss": 0.69 / (1 + step)})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def measure(page: str, reruns: int, widgets: dict | None = None) -> dict:
    """Time the first run and ``reruns`` reruns of ``page`` (after setting ``widgets`` by key)."""
    at = AppTest.from_file(str(APP / "pages" / page) if page != "Home.py" else str(APP / page), default_timeout=600)
    start = time.perf_counter()
    at.run()
    first = time.perf_counter() - start
    for key, value in (widgets or {}).items():  # one at a time: later widgets appear once earlier ones are set
        _set(at, key, value)
        start = time.perf_counter()
        at.run()
        first = first + time.perf_counter() - start
    times = []
    for _ in range(reruns):
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
    failed = [e.message for e in at.exception] + [e.value for e in at.error]
    rerun_ms = 1000 * statistics.median(times)
    return {"page": page, "first_run_s": round(first, 3), "rerun_median_ms": round(rerun_ms, 1),
            "rerun_min_ms": round(1000 * min(times), 1), "meets_target": rerun_ms < TARGET_MS,
            "errors": failed}


def _set(at: AppTest, key: str, value) -> None:
    for kind in ("text_input", "radio", "selectbox", "multiselect", "slider", "select_slider", "number_input"):
        try:
            getattr(at, kind)(key=key).set_value(value)
            return
        except KeyError:
            continue
    raise KeyError(key)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reruns", type=int, default=5, help="timed reruns per page (median reported)")
    parser.add_argument("--pages", nargs="*", default=None, help="page files to measure (default: all)")
    args = parser.parse_args(argv)
    pages = args.pages or ["Home.py", *TOY_PAGES, "6_LLM_runs.py"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        _write_llm_runs(Path(tmp) / "runs")
        for page in pages:
            widgets = None
            if page == "6_LLM_runs.py":
                widgets = {"folder": str(Path(tmp) / "runs")}
                if PAPER_FILE.exists():
                    widgets["paper_path"] = str(PAPER_FILE)
            results.append(measure(page, args.reruns, widgets))
            print(json.dumps(results[-1]), file=sys.stderr)
    out = {"benchmark": "app page rerun time at default settings (AppTest)", "target_ms": TARGET_MS,
           "reruns": args.reruns, "pages": results,
           "toy_pages_missing_target": [r["page"] for r in results if r["page"] in TOY_PAGES and not r["meets_target"]]}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
