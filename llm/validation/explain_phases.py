"""The validation's phases with their attribution: what moved each probe, and the kernel's forecast of the phase.

``python -m llm validate --explain-prompts N`` records, in every phase, the per-term attribution of ``llm.explain``
(the first N probe prompts); ``--explain-forecast`` also forecasts the off-policy DPO phases from the kernel at their
start (``llm.forecast``). ``phase_attribution`` condenses a phase for the seed's record: the change of every probe
type by term, the sentences ("argmax_teacher_forced rose by X nats: the y- push (+a) outweighed the y+ pull (-b)
by X"), the fit of the prediction, and where the forecast parts from the phase. ``llm.validation.claim_attribution``
puts these records next to the claims they explain, in claims.json and report.md.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from llm.explain_report import attribution_sentences, explanation_table, forecast_comparison, load_explanation
from llm.forecast import forecast
from llm.validation.report import LARGE_SUFFIX

__all__ = ["phase_attribution", "FORECAST_PHASES"]

#: phases whose forecast is run with --explain-forecast: the off-policy DPO runs the claims are about, at the
#: preset's lr and at the large lr (where a real run should leave the kernel regime).
FORECAST_PHASES = ("dpo", "extend_dpo", "dpo" + LARGE_SUFFIX, "extend_dpo" + LARGE_SUFFIX)


def phase_attribution(result, cfg, start_model, tokenizer, pairs: Sequence, probes, *, with_forecast: bool,
                      tolerance: float = 0.15) -> dict[str, Any]:
    """Summarise the attribution of one finished phase; forecast it first when asked (DPO phases only).

    Args:
        result: the phase's TrainResult (its run directory holds explain/).
        cfg: the phase's TrainConfig; start_model: the model the phase started from (not modified).
        with_forecast: run ``llm.forecast`` for this phase (in ``<run_dir>_forecast``) when it is a DPO phase.
    """
    expl = load_explanation(result.run_dir)
    table = explanation_table(expl)
    out: dict[str, Any] = {
        "terms": list(expl.terms), "by_probe": table.set_index("probe").to_dict(orient="index"),
        "sentences": attribution_sentences(expl), "median_step_correlation": expl.meta["median_step_correlation"],
        "relative_error": expl.meta["relative_error"], "optimizer": expl.meta["optimizer"],
        "steps": expl.meta["steps"], "explain_every": expl.meta.get("explain_every", 1),
        "pair_rank_correlations": expl.meta.get("pair_rank_correlations")}
    if with_forecast and cfg.phase_name in FORECAST_PHASES:
        fdir = Path(str(result.run_dir) + "_forecast")
        fcfg = dataclasses.replace(cfg, out_dir=str(fdir), explain_prompts=0, greedy_max_new_tokens=0)
        forecast(fcfg, model=copy.deepcopy(start_model), tokenizer=tokenizer, pairs=list(pairs), probes=probes)
        comparison = forecast_comparison(result.run_dir, fdir, tolerance)
        parted = comparison[comparison["parted"]].groupby("probe")["step"].min()
        out["forecast"] = {"dir": fdir.name, "tolerance": tolerance,
                           "parts_at_step": {p: (int(parted[p]) if p in parted else None)
                                             for p in comparison["probe"].unique()}}
    return out
