"""What an app user waits for, measured with Streamlit's AppTest; prints JSON.

For every page: the first load (the page's caches cleared, as after a server start, with only streamlit's own
imports warm: the page's modules, torch and torch.func's one-time warm-up are paid here), the same with those
warm (``first_load_warm_s``: a first visit once the server has served any page), then the rerun after changing the page's main widget
to a value not seen before (a real recomputation, not a cached rerun), then a rerun at that value (the cache hit).
Targets on 2 cores: first load < 2 s, rerun after a change < 1 s on every toy page (< 300 ms where the computation
allows). The LLM pages are measured on a small run folder written here in the engine's tidy format.

    python benchmarks/bench_app.py [--pages 1_Squeezing_explorer.py ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "app"
FIRST_LOAD_TARGET_S, CHANGE_TARGET_S, FAST_TARGET_S = 2.0, 1.0, 0.3
TOY_PAGES = ["1_Squeezing_explorer.py", "2_One_step_decomposition.py", "3_Loss_residuals.py",
             "4_Trajectories_and_phase_diagram.py", "5_Digits_influence.py", "8_Online_RL_groups.py"]
#: page -> (main widget key, a value the page has not computed before)
MAIN_WIDGET = {"1_Squeezing_explorer.py": ("eta", 1.35), "2_One_step_decomposition.py": ("eta", 0.3),
               "3_Loss_residuals.py": ("peakiness", 2.25), "4_Trajectories_and_phase_diagram.py": ("steps", 150),
               "5_Digits_influence.py": ("steps", 100), "8_Online_RL_groups.py": ("steps", 17),
               "6_LLM_runs.py": ("reduction", "mean")}


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


def _timed_run(at: AppTest) -> float:
    start = time.perf_counter()
    at.run()
    return time.perf_counter() - start


def _set(at: AppTest, key: str, value) -> None:
    for kind in ("text_input", "radio", "selectbox", "multiselect", "slider", "select_slider", "number_input"):
        try:
            getattr(at, kind)(key=key).set_value(value)
            return
        except KeyError:
            continue
    raise KeyError(key)


def measure(page: str, setup: dict | None = None) -> dict:
    """First load of ``page`` with cleared caches, then the rerun after its main widget changes, then a cached rerun."""
    path = str(APP / "pages" / page) if page != "Home.py" else str(APP / page)
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(path, default_timeout=600)
    for key, value in (setup or {}).items():  # e.g. the LLM page's folder, before the first timed load
        at.run()
        _set(at, key, value)
    first = _timed_run(at)
    st.cache_data.clear()  # again with the page's imports and torch's one-time warm-up done: a later first load
    st.cache_resource.clear()
    again = AppTest.from_file(path, default_timeout=600)
    for key, value in (setup or {}).items():
        again.run()
        _set(again, key, value)
    warm = _timed_run(again)
    out = {"page": page, "first_load_s": round(first, 3), "first_load_warm_s": round(warm, 3),
           "first_load_ok": first < FIRST_LOAD_TARGET_S, "first_load_warm_ok": warm < FIRST_LOAD_TARGET_S}
    if page in MAIN_WIDGET:
        key, value = MAIN_WIDGET[page]
        _set(at, key, value)
        change = _timed_run(at)
        cached = _timed_run(at)
        out.update(widget=f"{key}={value}", rerun_after_change_s=round(change, 3),
                   rerun_cached_ms=round(1000 * cached, 1), change_ok=change < CHANGE_TARGET_S,
                   change_fast=change < FAST_TARGET_S)
    out["errors"] = [e.message for e in at.exception] + [e.value for e in at.error]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", nargs="*", default=None, help="page files to measure (default: all)")
    args = parser.parse_args(argv)
    pages = args.pages or ["Home.py", *sorted(p.name for p in (APP / "pages").glob("*.py"))]
    results = []
    os.chdir(REPO)  # the pages resolve runs/, results/ and ../shared relative to the repository root
    AppTest.from_file(str(APP / "Home.py")).run()  # warm the imports once (streamlit, altair, pandas)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LDT_APP_ROOTS"] = tmp  # the app reads only under its roots (app/paths.py)
        _write_llm_runs(Path(tmp) / "runs")
        for page in pages:
            setup = {"folder": str(Path(tmp) / "runs")} if page == "6_LLM_runs.py" else None
            results.append(measure(page, setup))
            print(json.dumps(results[-1]), file=sys.stderr)
    load = os.getloadavg()
    out = {"benchmark": "app: first load and rerun after a change (AppTest)", "cpus": os.cpu_count(),
           "load_average_1_5_15": [round(x, 2) for x in load],
           "targets_s": {"first_load": FIRST_LOAD_TARGET_S, "rerun_after_change": CHANGE_TARGET_S,
                         "fast": FAST_TARGET_S},
           "pages": results,
           "first_load_misses": [r["page"] for r in results if not r["first_load_ok"]],
           "change_misses": [r["page"] for r in results if r["page"] in TOY_PAGES and not r.get("change_ok", True)]}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
