"""The files of a validation run: tidy mean metrics, claims.json (with each claim's attribution), seeds.json,
claims_rl.json, the figures, report.md and summary.json, rewritten whole after every seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm.validation.claim_attribution import attribution_markdown, with_attribution
from llm.validation.config import ValidateConfig
from llm.validation.prop1 import plot_prop1
from llm.validation.render import plot_baseline_vs_extend, plot_probe_curves, report_markdown
from llm.validation.report import CLAIMS, SeedResult, claims_document, evaluate_claims, evaluate_regimes
from llm.validation.rl_claims import RL_CLAIMS, rl_markdown
from toykit.runs import MetricsWriter, write_json

__all__ = ["write_outputs", "mean_rows", "rerun_command"]


def mean_rows(seeds: Sequence[SeedResult]) -> list[dict[str, Any]]:
    """Average the seeds' probe rows point by point (same schedule in every seed) into tidy rows."""
    groups: dict[tuple, list[float]] = {}
    for r in seeds:
        for row in r.rows:
            key = (row["phase"], row["step"], row["examples_seen"], row["probe"], row["statistic"])
            groups.setdefault(key, []).append(row["value"])
    return [{"phase": k[0], "step": k[1], "examples_seen": k[2], "probe": k[3], "statistic": k[4],
             "value": float(np.mean(v)), "count": len(v)} for k, v in sorted(groups.items())]


def write_outputs(run_dir: Path, cfg: ValidateConfig, preset, seeds: Sequence[SeedResult], prop1_results: list,
                  seconds: float, status: str) -> dict[str, Any]:
    """(Re)write metrics.jsonl, claims.json, seeds.json, figures, report.md and summary.json for ``seeds``.

    Args:
        preset: the run's ``pipeline.Preset``; prop1_results: per seed, its Prop. 1 results (the figure's).
    """
    done = [r.seed for r in seeds]
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # rewritten whole: this run's own file, never appended
    with MetricsWriter(run_dir / "metrics.jsonl") as writer:
        writer.write_many(mean_rows(seeds))
    regimes = evaluate_regimes(seeds, CLAIMS)
    # each claim with what moved its probes (the phases' attribution, through the claim's own step regime)
    scored, large = (with_attribution(regimes[k], [r.in_regime(k) for r in seeds], cfg.explain_prompts)
                     for k in ("small", "large"))
    context = {"preset": cfg.preset, "seeds": done, "seconds": seconds,
               "model": cfg.model or f"{preset.arch} from scratch on the synthetic world"}
    doc = claims_document(scored, context, large)
    write_json(run_dir / "claims.json", doc)
    write_json(run_dir / "seeds.json", [{"seed": r.seed, "win_rate": r.win_rate, "prop1": r.prop1,
                                         "extras": r.extras} for r in seeds])
    figures = _figures(run_dir, seeds, prop1_results[0])
    header = (f"# Validation report: do the paper's predictions hold on a real transformer?\n\n"
              f"Preset `{cfg.preset}`, model: {context['model']}, seeds {done}, "
              f"{seconds:.0f} s in total ({status}). Regenerate with `{rerun_command(cfg)}`.")
    report = report_markdown(doc, seeds, figures, header)
    with_rl = [r for r in seeds if "rl" in r.extras]
    if with_rl:  # the GRPO phase's claims, scored apart from the paper's (llm.validation.rl_claims)
        rl_doc = claims_document(with_attribution(evaluate_claims(with_rl, RL_CLAIMS), with_rl,
                                                  cfg.explain_prompts), context)
        write_json(run_dir / "claims_rl.json", rl_doc)
        report += rl_markdown(rl_doc, with_rl) + "\n" + "\n".join(
            attribution_markdown(rl_doc, "What moved each RL claim")) + "\n"
    (run_dir / "report.md").write_text(report)
    write_json(run_dir / "summary.json", {"status": status, "seeds_done": done, "seconds": seconds,
                                          "held": doc["held"], "total": doc["total"]})
    return doc


def rerun_command(cfg: ValidateConfig) -> str:
    """The command that reruns this validation: its preset, its seeds and the options not at their defaults."""
    default, parts = ValidateConfig(), [f"python -m llm validate --preset {cfg.preset}"]
    for name in ("seeds", "model", "data", "probes", "held_out", "num_probes", "device", "time_budget_s", "probe_mode",
                 "share_prompts", "explain_prompts", "explain_every", "explain_forecast"):
        value = getattr(cfg, name)
        if value != getattr(default, name):
            text = (",".join(map(str, value)) if isinstance(value, tuple)
                    else str(value).lower() if isinstance(value, bool) else str(value))
            parts.append(f"--{name.replace('_', '-')} {text}")
    return " ".join(parts)


def _figures(run_dir: Path, seeds: Sequence[SeedResult], prop1_results: list) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, fig in (("probe_curves", plot_probe_curves(seeds)),
                      ("probe_curves_per_token", plot_probe_curves(seeds, "logp_mean")),
                      ("baseline_vs_extend", plot_baseline_vs_extend(seeds)),
                      ("prop1_scatter", plot_prop1(prop1_results))):
        fig.savefig(run_dir / f"{name}.png", dpi=80)
        plt.close(fig)
        out[name] = f"{name}.png"
    return out
