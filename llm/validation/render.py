"""Figures and report.md of a validation run: the scoreboard in both step regimes, the conditions, the rules.

Pure rendering of what ``llm.validation.report`` scored; no rule lives here.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from llm.validation.claim_attribution import attribution_markdown
from llm.validation.report import (ARGMAX, BOOTSTRAP, CONDITIONS, GREEDY, LARGE_SUFFIX, MIN_EVALS, PHASES,
                                   RESPONSE_PROBES, SeedResult, paired_bootstrap, phase_conditions)

__all__ = ["plot_probe_curves", "plot_baseline_vs_extend", "report_markdown", "readme_table"]


def _mean_curves(seeds: Sequence[SeedResult], phase: str, probe: str, statistic: str = "logp_sum"):
    xs, ys = zip(*(r.curve(phase, probe, statistic) for r in seeds))
    n = min(len(y) for y in ys)
    stack = np.stack([y[:n] for y in ys])  # (seeds, T)
    return xs[0][:n], stack.mean(0), stack.min(0), stack.max(0)


def _phases_run(seeds: Sequence[SeedResult]) -> list[str]:
    present = {r["phase"] for r in seeds[0].rows}
    return [p for p in (*PHASES, *(q + LARGE_SUFFIX for q in PHASES)) if p in present]


def plot_probe_curves(seeds: Sequence[SeedResult], statistic: str = "logp_sum"):
    """Return a Figure: one panel per phase, every probe's mean curve over seeds (band: min-max over seeds)."""
    import matplotlib.pyplot as plt

    probes = (*RESPONSE_PROBES, ARGMAX, GREEDY)
    phases = _phases_run(seeds)
    fig, axes = plt.subplots(1, len(phases), figsize=(4.0 * len(phases), 3.8), sharey=False, squeeze=False)
    cmap = plt.get_cmap("tab20", len(probes))
    for ax, phase in zip(axes[0], phases):
        for k, probe in enumerate(probes):
            try:
                x, mean, lo, hi = _mean_curves(seeds, phase, probe, statistic)
            except ValueError:
                continue
            ax.plot(x, mean, color=cmap(k), label=probe, lw=2.0 if probe in ("chosen", "rejected") else 1.0)
            ax.fill_between(x, lo, hi, color=cmap(k), alpha=0.15)
        ax.set_title(phase, fontsize=10)
        ax.set_xlabel("training examples seen")
    kind = "summed" if statistic == "logp_sum" else "per-token mean"
    axes[0][0].set_ylabel(f"mean log pi ({kind} over tokens; greedy = free-running)")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def plot_baseline_vs_extend(seeds: Sequence[SeedResult]):
    """Return a Figure: SFT vs extend SFT, and DPO after each, for y+, y-, a rephrase, y_hum and the argmax."""
    import matplotlib.pyplot as plt

    probes = ("chosen", "rejected", "chosen_gptsemantic", "irr_hum", ARGMAX)
    fig, axes = plt.subplots(2, len(probes), figsize=(3.4 * len(probes), 6.0))
    for row, (base, ext) in enumerate((("sft", "extend_sft"), ("dpo", "extend_dpo"))):
        for ax, probe in zip(axes[row], probes):
            for phase, style in ((base, "-"), (ext, "--")):
                x, mean, lo, hi = _mean_curves(seeds, phase, probe)
                ax.plot(x, mean, style, label=phase)
                ax.fill_between(x, lo, hi, alpha=0.15)
            ax.set_title(f"{probe} ({'SFT' if row == 0 else 'DPO'}, summed)", fontsize=9)
            ax.set_xlabel("training examples seen", fontsize=8)
        axes[row][0].set_ylabel("mean summed log pi")
        axes[row][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _r(v: Any) -> str:
    """A correlation to 4 decimals (0.9999 is not 1), n/a when missing."""
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.4f}"


def _verdict(c: dict[str, Any] | None) -> str:
    if c is None:
        return "-"
    rule = f" (rule held {c['seeds_holding']}/{c['n_seeds']})"
    return f"**{c['verdict']}**{rule}"


def _scoreboard(doc: dict[str, Any]) -> list[str]:
    large = {c["name"]: c for c in doc.get("large_step", [])}
    lines = ["| claim | group | paper says | measure | rule | per-seed values (small steps) | verdict, small steps "
             "(paper's regime) | per-seed values (large steps) | verdict, large steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in doc["claims"]:
        big = large.get(c["name"])
        lines.append(f"| `{c['name']}` | {c['group']} | {c['claim']} | {c['measure']} | {c['rule']} | "
                     f"{', '.join(_fmt(v) for v in c['values'])} | {_verdict(c)} | "
                     f"{', '.join(_fmt(v) for v in big['values']) if big else '-'} | {_verdict(big)} |")
    return lines


def _conditions_table(seeds: Sequence[SeedResult]) -> list[str]:
    phases = _phases_run(seeds)
    lines = ["| phase start | " + " | ".join(f"{c.name} ({c.rule})" for c in CONDITIONS) + " |",
             "|---|" + "---|" * len(CONDITIONS)]
    for phase in phases:
        per_seed = [phase_conditions(r, phase) for r in seeds]
        cells = []
        for c in CONDITIONS:
            vals = [d[c.name] for d in per_seed]
            bad = c.op is not None and not all(c.holds(v) for v in vals)
            cell = ", ".join(_fmt(v) for v in vals)
            cells.append(f"**{cell}** (no)" if bad else cell)
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return lines


def _prop1_real_steps(seeds: Sequence[SeedResult]) -> list[str]:
    """Prop. 1 along the phases' REAL optimizer steps (the explained phases' fit), next to the SGD check above."""
    lines = ["", "Along the real optimizer steps of the finetuning phases (`--explain-prompts`, `llm.explain`: the "
             "first-order prediction <grad log pi, Delta theta_t> along the optimizer's actual update, momentum "
             "included, vs the measured change of every attributed probe row; a measured figure, not a scored claim):",
             ""]
    rows = [(r.seed, phase, a) for r in seeds for phase, a in (r.extras.get("attribution") or {}).items()]
    if not rows:
        return lines + ["Not measured: the run had no `--explain-prompts N`."]
    lines += ["| seed | phase | optimizer | steps (window) | median r per window (predicted vs measured) | "
              "cumulative relative error |", "|---|---|---|---|---|---|"]
    lines += [f"| {seed} | {phase} | {a.get('optimizer', 'n/a')} | {a.get('steps', 'n/a')} "
              f"({a.get('explain_every', 1)}) | {_r(a['median_step_correlation'])} | {_fmt(a['relative_error'])} |"
              for seed, phase, a in rows]
    return lines


def report_markdown(doc: dict[str, Any], seeds: Sequence[SeedResult], figures: dict[str, str],
                    header: str) -> str:
    """Render report.md: scoreboard in both regimes, conditions, rules, claims not holding, Prop. 1, win rate."""
    claims = doc["claims"]
    lines = [header, "",
             f"**{doc['held']} of {doc['total']} claims hold in every seed** in the paper's step regime "
             f"(seeds {', '.join(str(r.seed) for r in seeds)}); {doc['out_of_regime']} not in the paper's regime, "
             f"{doc['not_testable']} not testable, {doc['not_measured']} not measured. Rule: {doc['rule']}.", "",
             "## Scoreboard", ""] + _scoreboard(doc)
    lines += [""] + attribution_markdown(doc)
    lines += ["", "## Conditions of the paper's argument at the start of each phase", "",
              "Values per seed; a bold cell marked (no) breaks the condition's rule in some seed, and every claim "
              "that needs it is then 'not in the paper's regime'.", ""] + _conditions_table(seeds)
    lines += ["", "| condition | measure | rule | the paper's setting |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['measure']} | {c['rule']} | {c['paper']} |" for c in doc["conditions_rules"]]
    lines += ["", "## Fair measures (fixed before the run)", "",
              "- Fixed responses (y+, y-, probes, the teacher-forced argmax along y+) use summed log-probs; the "
              "greedy response changes length, so greedy claims use the per-token mean (decoding cap in config).",
              "- Squeezing is checked as peakiness: the mean of sum_v pi_v^2 along y+ and along the greedy response.",
              f"- Rise-then-fall needs >= {MIN_EVALS} evaluations in the phase and a margin (see its rule).",
              "- 'Smaller gain' claims are 'not testable' unless their premise (a baseline gain) holds in every seed.",
              f"- The win rate passes when the low end of its {BOOTSTRAP['level']:.0%} paired bootstrap interval "
              f"({BOOTSTRAP['resamples']} resamples of the held-out prompts) is above 0.5.",
              "- The argmax change is split by position: where the argmax was not y+ at the phase start, and where it "
              "was.", ""]
    notable = [c for c in claims if c["passed"] is not True]
    lines += ["## Claims that do not hold in every seed (small steps)", ""]
    if not notable:
        lines.append("None.")
    for c in notable:
        why = ""
        if c["verdict"] == "not in the paper's regime":
            why = " Conditions failing: " + "; ".join(c["conditions_failed"]) + "."
        elif c["verdict"] == "not testable":
            why = f" Premise failing: {c['premise']} (per seed: {c['premise_holds']})."
        lines.append(f"- `{c['name']}` ({c['verdict']}, rule held {c['seeds_holding']}/{c['n_seeds']}): the paper "
                     f"says {c['claim']}; measured {c['measure']} = {', '.join(_fmt(v) for v in c['values'])} "
                     f"(rule: {c['rule']}).{why}" + (f" Known caveat: {c['caveat']}." if c["caveat"] else ""))
    lines += ["", "## Per-position split of the teacher-forced argmax change (mean Delta log max pi per position)",
              "", "| seed | phase | where argmax != y+ at the start | where argmax = y+ | share of positions != y+ |",
              "|---|---|---|---|---|"]
    for r in seeds:
        for phase, s in sorted(r.extras.get("argmax_split", {}).items()):
            lines.append(f"| {r.seed} | {phase} | {_fmt(s['not_chosen'])} | {_fmt(s['chosen'])} | "
                         f"{_fmt(s['share_not_chosen'])} |")
    lines += ["", "## Proposition 1 on the language model", "",
              "| seed | loss | eta | r (predicted vs measured) | relative error | slope of remainder vs eta |",
              "|---|---|---|---|---|---|"]
    for r in seeds:
        for loss, s in r.prop1.items():
            lines.append(f"| {r.seed} | {loss} | {s['eta']:g} | {s['correlation']:.4f} | "
                         f"{s['relative_error']:.3g} | {s['slope']:.2f} |")
    lines += _prop1_real_steps(seeds)
    lines += ["", "## Win rate of extend+DPO vs baseline+DPO (held-out prompts, both orders, ties = 1/2)", "",
              f"| seed | win rate | {BOOTSTRAP['level']:.0%} paired bootstrap interval | wins | ties | losses | "
              "prompts |", "|---|---|---|---|---|---|---|"]
    for r in seeds:
        w = r.win_rate
        per_prompt = w.get("per_prompt") or []
        ci = paired_bootstrap(per_prompt, **BOOTSTRAP)[1:] if per_prompt else (float("nan"),) * 2
        lines.append(f"| {r.seed} | {_fmt(w['win_rate'])} | [{_fmt(ci[0])}, {_fmt(ci[1])}] | {_fmt(w['wins'])} | "
                     f"{_fmt(w['ties'])} | {_fmt(w['losses'])} | {len(per_prompt)} |")
    lines += ["", "## Figures", ""] + [f"![{name}]({path})" for name, path in figures.items()]
    return "\n".join(lines) + "\n"


def readme_table(doc: dict[str, Any]) -> str:
    """The README's results table of a claims.json document: verdict, seeds holding and mean, both regimes."""
    large = {c["name"]: c for c in doc.get("large_step", [])}

    def cell(c: dict[str, Any] | None) -> str:
        if c is None:
            return "-"
        return f"{c['verdict']} ({c['seeds_holding']}/{c['n_seeds']}; mean {_fmt(c['mean'])})"

    lines = ["| claim | paper says | small steps (the paper's regime) | large steps (lr 5e-4, no warm-up) |",
             "|---|---|---|---|"]
    lines += [f"| `{c['name']}` | {c['claim']} | {cell(c)} | {cell(large.get(c['name']))} |" for c in doc["claims"]]
    return "\n".join(lines)
