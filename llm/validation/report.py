"""The claims scoreboard of the validation pipeline: each claim of PAPER.md section 5 as a named, pre-registered check.

Every claim is a ``ClaimSpec``: the paper's statement, how it is measured on the probe curves of one seed, and the
pass rule (a comparison with a threshold). The rules are fixed here, in code, before any run: a claim PASSES only
when its rule holds in EVERY seed; it is "mixed" when it holds in some seeds and "fails" when it holds in none.
Changes are end minus start of a phase, in mean SUMMED log-prob (nats) over the probe prompts; "argmax" is the
teacher-forced argmax along the y+ prefix and "greedy" the free-running greedy response scored by its own log-prob.

Phases: ``sft`` (SFT on y+ from the pretrained model), ``extend_sft`` (SFT on y+ and y-), ``dpo`` (off-policy DPO
from ``sft``), ``extend_dpo`` (off-policy DPO from ``extend_sft``), ``onpolicy_dpo`` (DPO from ``sft`` on pairs
sampled from the model and ranked by the judge). References: Ren & Sutherland, ICLR 2025, Figures 3-5, Table 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["SeedResult", "ClaimSpec", "CLAIMS", "OTHER_PROBES", "PHASES", "evaluate_claims", "claims_document",
           "plot_probe_curves", "plot_baseline_vs_extend", "report_markdown"]

PHASES = ("sft", "extend_sft", "dpo", "extend_dpo", "onpolicy_dpo")
#: probe responses that are neither the trained y+ nor y- (the "others" of Figure 4).
OTHER_PROBES = ("chosen_gptsemantic", "chosen_gptformat", "reject_gptsemantic", "reject_gptformat", "irr_train",
                "irr_test", "irr_hum", "random_permute", "random_nonhum")
_RESPONSE_PROBES = ("chosen", "rejected", *OTHER_PROBES)
ARGMAX, GREEDY = "argmax_teacher_forced", "greedy"


@dataclass(frozen=True)
class SeedResult:
    """What one seed of the pipeline measured.

    Attributes:
        seed: the seed (world, initialisation and data order).
        rows: tidy probe rows {phase, step, examples_seen, probe, statistic, value} (value: mean over probes).
        win_rate: the judge's extend-vs-baseline result after DPO (``Judge.win_rate`` output).
        prop1: loss name -> ``Prop1Result.summary()``.
        extras: anything else worth recording (losses, judge scores of greedy answers, pair counts).
    """

    seed: int
    rows: tuple[dict[str, Any], ...]
    win_rate: dict[str, float]
    prop1: dict[str, dict[str, Any]]
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)

    def curve(self, phase: str, probe: str, statistic: str = "logp_sum") -> tuple[np.ndarray, np.ndarray]:
        """Return (examples_seen (T,), value (T,)) of one probe curve, sorted by examples seen."""
        pts = sorted((r["examples_seen"], r["value"]) for r in self.rows
                     if r["phase"] == phase and r["probe"] == probe and r["statistic"] == statistic)
        if not pts:
            raise ValueError(f"seed {self.seed}: no {statistic} curve for probe {probe!r} in phase {phase!r}")
        x, y = zip(*pts)
        return np.asarray(x, dtype=np.int64), np.asarray(y, dtype=np.float64)

    def delta(self, phase: str, probe: str) -> float:
        """End minus start of a probe's mean summed log-prob over ``phase``."""
        _, y = self.curve(phase, probe)
        return float(y[-1] - y[0])


def _others_mean(r: SeedResult, phase: str) -> float:
    return float(np.mean([r.delta(phase, p) for p in OTHER_PROBES]))


def _rejected_fastest(r: SeedResult) -> float:
    """Gap between the fastest-falling other probe and y- (> 0 when y- falls fastest)."""
    others = [r.delta("dpo", p) for p in _RESPONSE_PROBES if p != "rejected"]
    return float(min(others) - r.delta("dpo", "rejected"))


def _rise_then_fall(r: SeedResult) -> float:
    """min(peak - start, peak - end) of y- during SFT: > 0 when it rose first and fell back from the peak."""
    _, y = r.curve("sft", "rejected")
    peak = float(y.max())
    return min(peak - float(y[0]), peak - float(y[-1]))


@dataclass(frozen=True)
class ClaimSpec:
    """A pre-registered claim: ``value(seed)`` compared with ``threshold`` by ``op`` must hold in every seed."""

    name: str
    group: str
    claim: str
    measure: str
    op: str
    threshold: float
    value: Callable[[SeedResult], float]
    caveat: str = ""

    def holds(self, v: float) -> bool:
        return bool(np.isfinite(v) and (v > self.threshold if self.op == ">" else v < self.threshold))

    @property
    def rule(self) -> str:
        return f"value {self.op} {self.threshold:g} in every seed"


def _c(name, group, claim, measure, op, threshold, value, caveat=""):
    return ClaimSpec(name, group, claim, measure, op, threshold, value, caveat)


CLAIMS: tuple[ClaimSpec, ...] = (
    _c("sft_chosen_up", "SFT", "log pi(y+) rises during SFT", "Delta y+ over sft", ">", 0.0,
       lambda r: r.delta("sft", "chosen")),
    _c("sft_other_chosen_up", "SFT", "y+ of OTHER training prompts rises (hallucination mechanism)",
       "Delta y+_{j!=u} (irr_train) over sft", ">", 0.0, lambda r: r.delta("sft", "irr_train")),
    _c("sft_rejected_up_then_down", "SFT", "y- rises first, then falls",
       "min(peak - start, peak - end) of y- over sft", ">", 0.0, _rise_then_fall,
       "needs enough SFT for the fall; with few evaluation points a monotone curve gives 0"),
    _c("sft_shuffled_down", "SFT", "shuffled y+ (y_urnd) falls", "Delta random_permute over sft", "<", 0.0,
       lambda r: r.delta("sft", "random_permute")),
    _c("sft_random_down", "SFT", "shuffled held-out answer (y_rnd) falls", "Delta random_nonhum over sft", "<",
       0.0, lambda r: r.delta("sft", "random_nonhum")),
    _c("sft_unrelated_down", "SFT", "fluent unrelated sentences (y_hum) fall", "Delta irr_hum over sft", "<", 0.0,
       lambda r: r.delta("sft", "irr_hum")),
    _c("sft_argmax_up", "SFT", "the teacher-forced argmax along y+ rises", "Delta argmax over sft", ">", 0.0,
       lambda r: r.delta("sft", ARGMAX)),
    _c("sft_greedy_up", "SFT", "the free-running greedy response's log-prob rises", "Delta greedy over sft", ">",
       0.0, lambda r: r.delta("sft", GREEDY)),
    _c("dpo_rejected_fastest", "off-policy DPO", "y- falls fastest of all probe responses",
       "min Delta(other responses) - Delta y- over dpo", ">", 0.0, _rejected_fastest,
       "y-'s own rephrases share most tokens with y- and can fall about as fast"),
    _c("dpo_margin_grows", "off-policy DPO", "the y+ - y- margin grows", "Delta y+ - Delta y- over dpo", ">", 0.0,
       lambda r: r.delta("dpo", "chosen") - r.delta("dpo", "rejected")),
    _c("dpo_chosen_down", "off-policy DPO", "y+ eventually falls too", "Delta y+ over dpo", "<", 0.0,
       lambda r: r.delta("dpo", "chosen"),
       "the paper sees it after long DPO on large models; a short run may stop before y+ turns down"),
    _c("dpo_others_down", "off-policy DPO", "almost every other response falls",
       "share of the 9 other probe types whose Delta over dpo is < 0", ">", 0.75,
       lambda r: float(np.mean([r.delta("dpo", p) < 0 for p in OTHER_PROBES]))),
    _c("dpo_argmax_up", "off-policy DPO", "the teacher-forced argmax rises (squeezing)", "Delta argmax over dpo",
       ">", 0.0, lambda r: r.delta("dpo", ARGMAX)),
    _c("dpo_greedy_up", "off-policy DPO", "the greedy response's log-prob rises (squeezing)",
       "Delta greedy over dpo", ">", 0.0, lambda r: r.delta("dpo", GREEDY)),
    _c("extend_rejected_higher", "extend", "after extend SFT, y- is no longer a valley",
       "y- at the end of extend_sft minus y- at the end of sft", ">", 0.0,
       lambda r: r.curve("extend_sft", "rejected")[1][-1] - r.curve("sft", "rejected")[1][-1]),
    _c("extend_smaller_drops", "extend", "other responses decay more slowly during DPO after extend",
       "mean Delta(others) over extend_dpo minus over dpo", ">", 0.0,
       lambda r: _others_mean(r, "extend_dpo") - _others_mean(r, "dpo")),
    _c("extend_win_rate", "extend", "extend+DPO beats baseline+DPO on held-out prompts (judge)",
       "win rate (both orders, ties = 1/2)", ">", 0.5, lambda r: r.win_rate["win_rate"],
       "the synthetic judge scores facts and form; the paper used GPT-3.5 / Claude judges"),
    _c("extend_smaller_argmax_gain", "extend", "extend's argmax gain during DPO is smaller",
       "Delta argmax over dpo minus over extend_dpo", ">", 0.0,
       lambda r: r.delta("dpo", ARGMAX) - r.delta("extend_dpo", ARGMAX),
       "the paper's own numbers do not show it (+18.8 extend vs +14.7 baseline, PAPER.md section 8)"),
    _c("onpolicy_milder_squeezing", "on-policy DPO", "on-policy DPO squeezes less than off-policy",
       "mean Delta(others) over onpolicy_dpo minus over dpo", ">", 0.0,
       lambda r: _others_mean(r, "onpolicy_dpo") - _others_mean(r, "dpo")),
    _c("onpolicy_smaller_argmax_gain", "on-policy DPO", "on-policy DPO's argmax gain is smaller",
       "Delta argmax over dpo minus over onpolicy_dpo", ">", 0.0,
       lambda r: r.delta("dpo", ARGMAX) - r.delta("onpolicy_dpo", ARGMAX)),
    _c("prop1_sft_correlation", "Proposition 1", "the one-step prediction matches the real SFT step",
       "Pearson r of predicted vs measured Delta log pi, all probes and steps", ">", 0.95,
       lambda r: r.prop1["sft"]["correlation"]),
    _c("prop1_dpo_correlation", "Proposition 1", "the one-step prediction matches the real DPO step",
       "Pearson r of predicted vs measured Delta log pi, all probes and steps", ">", 0.95,
       lambda r: r.prop1["dpo"]["correlation"]),
    _c("prop1_eta_squared", "Proposition 1", "the remainder is O(eta^2)",
       "abs(slope - 2), slope = fitted log-log slope of norm(measured - predicted) vs eta (worse of SFT, DPO)", "<", 0.3,
       lambda r: max(abs(r.prop1[k]["slope"] - 2.0) for k in ("sft", "dpo"))),
)


def evaluate_claims(seeds: Sequence[SeedResult], claims: Sequence[ClaimSpec] = CLAIMS) -> list[dict[str, Any]]:
    """Score every claim on every seed.

    Returns:
        One dict per claim: name, group, claim, measure, rule, values (per seed), mean, std, min, max,
        seeds_holding, n_seeds, passed (every seed), verdict ("holds" / "mixed" / "fails"), caveat.
    """
    if not seeds:
        raise ValueError("evaluate_claims needs at least one seed result")
    out = []
    for spec in claims:
        values = []
        for r in seeds:
            try:
                values.append(float(spec.value(r)))
            except (KeyError, ValueError):
                values.append(float("nan"))
        arr = np.asarray(values, dtype=np.float64)
        holding = sum(spec.holds(v) for v in values)
        finite = arr[np.isfinite(arr)]
        measured = finite.size > 0
        verdict = ("not measured" if not measured else "holds" if holding == len(seeds)
                   else "fails" if holding == 0 else "mixed")
        out.append({"name": spec.name, "group": spec.group, "claim": spec.claim, "measure": spec.measure,
                    "rule": spec.rule, "values": values, "seeds": [r.seed for r in seeds],
                    "mean": float(finite.mean()) if finite.size else None,
                    "std": float(finite.std()) if finite.size else None,
                    "min": float(finite.min()) if finite.size else None,
                    "max": float(finite.max()) if finite.size else None,
                    "seeds_holding": int(holding), "n_seeds": len(seeds),
                    "passed": holding == len(seeds) if measured else None,
                    "verdict": verdict, "caveat": spec.caveat})
    return out


def claims_document(scored: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    """Return the claims.json object: the pass rule, the run context and the scored claims."""
    return {"rule": "a claim passes when its rule holds in every seed; 'mixed' = some seeds; 'fails' = none; "
                    "'not measured' = no value (excluded from the total)",
            "held": sum(c["passed"] is True for c in scored),
            "total": sum(c["passed"] is not None for c in scored), **context, "claims": scored}


def _mean_curves(seeds: Sequence[SeedResult], phase: str, probe: str, statistic: str = "logp_sum"):
    xs, ys = zip(*(r.curve(phase, probe, statistic) for r in seeds))
    n = min(len(y) for y in ys)
    stack = np.stack([y[:n] for y in ys])  # (seeds, T)
    return xs[0][:n], stack.mean(0), stack.min(0), stack.max(0)


def plot_probe_curves(seeds: Sequence[SeedResult], statistic: str = "logp_sum"):
    """Return a Figure: one panel per phase, every probe's mean curve over seeds (band: min-max over seeds)."""
    import matplotlib.pyplot as plt

    probes = (*_RESPONSE_PROBES, ARGMAX, GREEDY)
    fig, axes = plt.subplots(1, len(PHASES), figsize=(4.0 * len(PHASES), 3.8), sharey=False)
    cmap = plt.get_cmap("tab20", len(probes))
    for ax, phase in zip(axes, PHASES):
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
    axes[0].set_ylabel(f"mean log pi ({kind} over tokens)")
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
            ax.set_title(f"{probe} ({'SFT' if row == 0 else 'DPO'})", fontsize=9)
            ax.set_xlabel("training examples seen", fontsize=8)
        axes[row][0].set_ylabel("mean summed log pi")
        axes[row][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def report_markdown(doc: dict[str, Any], seeds: Sequence[SeedResult], figures: dict[str, str],
                    header: str) -> str:
    """Render report.md: scoreboard table, failures with their numbers and caveats, Prop. 1, win rate, figures."""
    claims = doc["claims"]
    lines = [header, "", f"**{doc['held']} of {doc['total']} claims hold in every seed** "
             f"(seeds {', '.join(str(r.seed) for r in seeds)}). Rule: {doc['rule']}.", "",
             "| claim | group | paper says | measure | rule | per-seed values | mean | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        vals = ", ".join(_fmt(v) for v in c["values"])
        lines.append(f"| `{c['name']}` | {c['group']} | {c['claim']} | {c['measure']} | {c['rule']} | {vals} | "
                     f"{_fmt(c['mean'])} | **{c['verdict']}** ({c['seeds_holding']}/{c['n_seeds']}) |")
    failing = [c for c in claims if c["passed"] is False]
    unmeasured = [c["name"] for c in claims if c["passed"] is None]
    lines += ["", "## Claims that do not hold in every seed", ""]
    if not failing:
        lines.append("None.")
    for c in failing:
        lines.append(f"- `{c['name']}` ({c['verdict']}, {c['seeds_holding']}/{c['n_seeds']} seeds): the paper says "
                     f"{c['claim']}; measured {c['measure']} = {', '.join(_fmt(v) for v in c['values'])} "
                     f"(rule: {c['rule']})." + (f" Known caveat: {c['caveat']}." if c["caveat"] else ""))
    if unmeasured:
        lines += ["", f"Not measured in this run (no synthetic judge or phase skipped): {', '.join(unmeasured)}."]
    lines += ["", "## Proposition 1 on the language model", "",
              "| seed | loss | eta | r (predicted vs measured) | relative error | slope of remainder vs eta |",
              "|---|---|---|---|---|---|"]
    for r in seeds:
        for loss, s in r.prop1.items():
            lines.append(f"| {r.seed} | {loss} | {s['eta']:g} | {s['correlation']:.4f} | "
                         f"{s['relative_error']:.3g} | {s['slope']:.2f} |")
    lines += ["", "## Win rate of extend+DPO vs baseline+DPO (held-out prompts, both orders, ties = 1/2)", "",
              "| seed | win rate | wins | ties | losses | judgements |", "|---|---|---|---|---|---|"]
    for r in seeds:
        w = r.win_rate
        lines.append(f"| {r.seed} | {w['win_rate']:.3f} | {w['wins']:.3f} | {w['ties']:.3f} | {w['losses']:.3f} | "
                     f"{w['n']} |")
    lines += ["", "## Figures", ""] + [f"![{name}]({path})" for name, path in figures.items()]
    return "\n".join(lines) + "\n"
