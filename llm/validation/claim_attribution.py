"""Every claim of the scoreboard with its attribution: which loss term moved the probes it reads, by how many nats.

With ``python -m llm validate --explain-prompts N`` every phase records ``llm.explain``'s attribution, condensed by
``llm.validation.explain_phases.phase_attribution`` into the seed's record: per probe type, the measured change of
the probe's SUMMED log-prob (mean over the first N probe prompts; the argmax is the teacher-forced one along y+),
the first-order prediction along the real optimizer steps and each loss term's share of it.

Most claims measure a linear combination of such changes (Delta y+ over dpo; Delta y+ - Delta y-; the mean
Delta of the other probes over extend_dpo minus over dpo), so their attribution is the same combination of the
records, term by term: a term of the same name in two phases (the y+ pull of extend_dpo and of dpo) is combined
into one ("the y+ pull changed the difference by X"). ``EXPLAINS`` maps every claim (the paper's and the GRPO
phase's) to its combination (the claim
-> phase and probe mapping), with a note where the claim's own measure is not that combination (a rise-then-fall,
a count of probes, per-token changes, a per-position split), or to the reason it has none (peakiness, the
free-running greedy response, the judge's win rate and Prop. 1's one-step check are not attributed).
The combination covers the first N probe prompts only; the claim's value is over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from llm.explain_report import attribution_sentence
from llm.validation.report import ARGMAX, CLAIMS, OTHER_PROBES, SeedResult

RL_PHASE = "grpo"  # llm.validation.rl_claims.RL_PHASE (not imported: that module imports the RL engine)

__all__ = ["Explains", "EXPLAINS", "claim_attribution", "with_attribution", "attribution_markdown"]

NOT_EXPLAINED = "not explained"
NO_RECORD = "the run had no --explain-prompts N (it records the attribution)"


@dataclass(frozen=True)
class Explains:
    """What explains a claim: ``what`` = sum of weight * Delta(probe over phase) over ``parts``, or ``why_not``.

    Attributes:
        what: the combination in words (the report's label).
        parts: (weight, phase, probe) terms of the combination; empty when the claim has no attribution.
        note: how the combination relates to the claim's own measure, where it differs.
        why_not: why no attribution applies (``parts`` empty).
    """

    what: str = ""
    parts: tuple[tuple[float, str, str], ...] = ()
    note: str = ""
    why_not: str = ""


def _one(phase: str, probe: str, note: str = "") -> Explains:
    return Explains(f"{probe} over {phase}", ((1.0, phase, probe),), note)


def _diff(what: str, plus: Sequence[tuple[str, str]], minus: Sequence[tuple[str, str]]) -> Explains:
    """The mean Delta of the ``plus`` (phase, probe) pairs minus the mean Delta of the ``minus`` ones."""
    return Explains(what, tuple((1.0 / len(plus), ph, pr) for ph, pr in plus)
                    + tuple((-1.0 / len(minus), ph, pr) for ph, pr in minus))


def _others(phase: str) -> list[tuple[str, str]]:
    return [(phase, p) for p in OTHER_PROBES]


_GREEDY = "the free-running greedy response changes with the model; the attribution covers fixed responses"
_PEAKINESS = "peakiness (sum_v pi_v^2) is not a response's log-prob; the attribution covers summed log-probs"
_OTHERS = f"mean of the {len(OTHER_PROBES)} other probes"

EXPLAINS: dict[str, Explains] = {
    "sft_chosen_up": _one("sft", "chosen"),
    "sft_other_chosen_up": _one("sft", "irr_train"),
    "sft_rejected_up_then_down": _one("sft", "rejected", "the end-minus-start change of y-; the claim is about "
                                                         "the curve's peak in between"),
    "sft_shuffled_down": _one("sft", "random_permute"),
    "sft_random_down": _one("sft", "random_nonhum"),
    "sft_unrelated_down": _one("sft", "irr_hum"),
    "sft_argmax_up": _one("sft", ARGMAX),
    "sft_greedy_up": Explains(why_not=_GREEDY),
    "dpo_rejected_fastest": _one("dpo", "rejected", "y-'s summed change; the claim compares per-token changes "
                                                    "with every other probe's"),
    "dpo_margin_grows": _diff("the y+ - y- margin over dpo", [("dpo", "chosen")], [("dpo", "rejected")]),
    "dpo_chosen_down": _one("dpo", "chosen"),
    "dpo_others_down": Explains(f"the {_OTHERS} over dpo", tuple((1.0 / len(OTHER_PROBES), ph, pr)
                                                                for ph, pr in _others("dpo")),
                                "the mean change of the other probes; the claim counts how many fall"),
    "dpo_argmax_up": _one("dpo", ARGMAX),
    "dpo_argmax_up_off_chosen": _one("dpo", ARGMAX, "the argmax summed over every y+ position; the claim reads "
                                                    "the positions whose argmax was not y+ at the start"),
    "dpo_greedy_up": Explains(why_not=_GREEDY),
    "dpo_peakier_chosen": Explains(why_not=_PEAKINESS),
    "dpo_peakier_greedy": Explains(why_not=_PEAKINESS),
    "extend_rejected_higher": Explains(
        "y- over extend_sft minus over sft", ((1.0, "extend_sft", "rejected"), (-1.0, "sft", "rejected")),
        "both phases start from the pretrained model, so end minus end is the difference of their changes"),
    "extend_smaller_drops": _diff(f"the {_OTHERS} over extend_dpo minus over dpo", _others("extend_dpo"),
                                  _others("dpo")),
    "extend_win_rate": Explains(why_not="the judge's win rate is not a probe's log-prob"),
    "extend_smaller_argmax_gain": _diff("the argmax over dpo minus over extend_dpo", [("dpo", ARGMAX)],
                                        [("extend_dpo", ARGMAX)]),
    "onpolicy_milder_squeezing": _diff(f"the {_OTHERS} over onpolicy_dpo minus over dpo", _others("onpolicy_dpo"),
                                       _others("dpo")),
    "onpolicy_smaller_argmax_gain": _diff("the argmax over dpo minus over onpolicy_dpo", [("dpo", ARGMAX)],
                                          [("onpolicy_dpo", ARGMAX)]),
    **{c.name: Explains(why_not="Proposition 1's one-step check (its own section of the report)")
       for c in CLAIMS if c.name.startswith("prop1_")},
    # the GRPO phase's claims (llm.validation.rl_claims, scored apart: claims_rl.json)
    "rl_reward_up": Explains(why_not="the judge's reward is not a probe's log-prob"),
    "rl_lld_shared_gain_less": Explains(why_not="a statistic of the sampled groups' responses, not of the probes"),
    "rl_greedy_up": Explains(why_not=_GREEDY),
    "rl_peakier_greedy": Explains(why_not=_PEAKINESS),
    "rl_milder_than_offpolicy": _diff(f"the {_OTHERS} over {RL_PHASE} minus over dpo", _others(RL_PHASE),
                                      _others("dpo")),
}


def _combine(spec: Explains, r: SeedResult) -> tuple[dict[str, Any] | None, str]:
    """The combination on one seed: {measured, predicted, residual, contributions {term: nats}, sentences}, or
    None and what is missing."""
    record = r.extras.get("attribution") or {}
    total = {"measured": 0.0, "predicted": 0.0, "residual": 0.0}
    contributions: dict[str, float] = {}
    sentences = []
    for weight, phase, probe in spec.parts:
        if phase not in record:
            return None, (f"no attribution of phase {phase} in seed {r.seed}: the phase did not run in this step "
                          "regime")
        row = record[phase]["by_probe"].get(probe)
        if row is None:
            return None, f"no attribution of probe {probe} in phase {phase} of seed {r.seed}"
        for key in total:
            total[key] += weight * float(row[key])
        for term in record[phase]["terms"]:
            contributions[term] = contributions.get(term, 0.0) + weight * float(row[term])
        # the phase's own sentence for this probe (phase_attribution lists them in by_probe's order)
        sentences.append(f"{phase}: {record[phase]['sentences'][list(record[phase]['by_probe']).index(probe)]}")
    return {"seed": r.seed, **total, "contributions": contributions, "sentences": sentences}, ""


def claim_attribution(name: str, seeds: Sequence[SeedResult], prompts: int) -> dict[str, Any]:
    """The ``attribution`` field of claim ``name`` in claims.json, from the seeds' phase attributions.

    Args:
        seeds: the seeds the claim was scored on (through the same step regime).
        prompts: the run's ``explain_prompts`` (0: the run recorded no attribution).

    Returns:
        {"status": "explained", what, parts [{weight, phase, probe}], note, prompts, terms, per_seed [{seed,
        measured, predicted, residual, contributions {term: nats}, sentences}], mean (the same, averaged over
        seeds), summary (the report's one line)}; or {"status": "not explained", why}.
    """
    spec = EXPLAINS[name]
    if not spec.parts:
        return {"status": NOT_EXPLAINED, "why": spec.why_not}
    if prompts == 0:
        return {"status": NOT_EXPLAINED, "why": NO_RECORD}
    per_seed = []
    for r in seeds:
        combined, missing = _combine(spec, r)
        if combined is None:
            return {"status": NOT_EXPLAINED, "why": missing}
        per_seed.append(combined)
    terms = list(dict.fromkeys(t for s in per_seed for t in s["contributions"]))
    mean = {key: float(np.mean([s[key] for s in per_seed])) for key in ("measured", "predicted", "residual")}
    mean["contributions"] = {t: float(np.mean([s["contributions"].get(t, 0.0) for s in per_seed])) for t in terms}
    seeds_text = (f"seed {per_seed[0]['seed']}" if len(per_seed) == 1
                  else f"mean over seeds {', '.join(str(s['seed']) for s in per_seed)}")
    summary = (attribution_sentence(spec.what, mean["measured"], mean["predicted"], mean["contributions"])
               + f" [{', '.join(f'{t} {v:+.3g}' for t, v in mean['contributions'].items())}; residual "
                 f"{mean['residual']:+.3g}; {seeds_text}; first {prompts} probe prompts, summed log-probs]")
    return {"status": "explained", "what": spec.what,
            "parts": [{"weight": w, "phase": ph, "probe": pr} for w, ph, pr in spec.parts], "note": spec.note,
            "prompts": prompts, "terms": terms, "per_seed": per_seed, "mean": mean, "summary": summary}


def with_attribution(scored: Sequence[dict[str, Any]], seeds: Sequence[SeedResult], prompts: int
                     ) -> list[dict[str, Any]]:
    """The scored claims, each with its ``attribution`` field (``claim_attribution``) on the same ``seeds``."""
    return [{**c, "attribution": claim_attribution(c["name"], seeds, prompts)} for c in scored]


def attribution_markdown(doc: dict[str, Any], title: str = "What moved each claim") -> list[str]:
    """The report's section: one line per claim and step regime, its attribution or why it has none."""
    lines = [f"## {title}: its attribution to the loss's terms", ""]
    claims = doc["claims"]
    if any(c.get("attribution", {}).get("why") == NO_RECORD for c in claims):
        return lines + [f"Not explained: {NO_RECORD}; with it every phase records what moved each probe, and each "
                        "claim gets its line here and its `attribution` in claims.json."]
    large = {c["name"]: c for c in doc.get("large_step", [])}
    lines += ["Changes of summed log-probs in nats over the first probe prompts (`--explain-prompts`), measured and "
              "predicted along the real optimizer steps, with each term's share (claims.json: `attribution`, "
              "per seed).", ""]
    for c in claims:  # the step regime is named where the document has two (the paper's claims; RL has one)
        for label, entry in (("small steps", c), ("large steps", large.get(c["name"]))):
            if entry is None:
                continue
            att = entry.get("attribution") or {"status": NOT_EXPLAINED, "why": "no attribution recorded"}
            head = f"- `{c['name']}` ({label}):" if large else f"- `{c['name']}`:"
            if att["status"] == "explained":
                lines.append(f"{head} {att['summary']}." + (f" Note: {att['note']}." if att["note"] else ""))
            else:
                lines.append(f"{head} not explained ({att['why']}).")
    return lines
