"""A squeeze alarm over probe curves: y+ falling while the argmax or the peakiness rises, y- in a valley.

The squeezing effect (PAPER.md section 4) of a negative gradient on an already unlikely y-: the softmax mass moves
to the argmax of each position, so pi(y+) can fall with pi(y-) while the teacher-forced argmax rises and the
distribution sharpens. The rule compares the latest probe evaluation with the one where y+ peaked:

- y+ fell: mean log pi(y+) is at least ``min_drop`` below its peak;
- the argmax rose (teacher-forced argmax log-prob along y+ up by ``min_rise``) OR the distribution got peakier
  (mean ||pi||^2 along y+ up by ``min_peakiness_rise``) since that peak;
- y- is in a valley: mean log pi(y-) is at least ``min_drop`` below its value at y+'s peak and at its lowest so far.

An SFT run (y+ rising) never fires. ``dashboard_metrics`` names the probe means so that TRL / W&B / trackio
dashboards show them in TRL's ``logps/`` section beside ``logps/chosen`` (``logps/probe_chosen`` ...), and the
alarm's evidence under ``squeeze/``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal, Mapping

__all__ = ["SqueezeRule", "SqueezeEvent", "SqueezeMonitor", "squeeze_evidence", "dashboard_metrics", "ALARM_ACTIONS"]

logger = logging.getLogger("llm.alarm")

#: what a firing alarm does besides the warning and the metrics row.
ALARM_ACTIONS = ("warn", "stop", "checkpoint")

_CHOSEN, _REJECTED, _ARGMAX = "chosen", "rejected", "argmax_teacher_forced"


@dataclasses.dataclass(frozen=True)
class SqueezeRule:
    """Thresholds of the squeeze alarm (log-probs in nats, summed over tokens unless ``statistic`` says mean)."""

    min_drop: float = 1.0
    min_rise: float = 0.5
    min_peakiness_rise: float = 0.02
    statistic: Literal["logp_sum", "logp_mean"] = "logp_sum"
    action: Literal["warn", "stop", "checkpoint"] = "warn"

    def __post_init__(self) -> None:
        if self.action not in ALARM_ACTIONS:
            raise ValueError(f"squeeze alarm action must be one of {ALARM_ACTIONS}, got {self.action!r}")
        if self.statistic not in ("logp_sum", "logp_mean"):
            raise ValueError(f"squeeze alarm statistic must be logp_sum or logp_mean, got {self.statistic!r}")
        if min(self.min_drop, self.min_rise, self.min_peakiness_rise) <= 0:
            raise ValueError(f"squeeze alarm thresholds must be > 0, got min_drop={self.min_drop}, "
                             f"min_rise={self.min_rise}, min_peakiness_rise={self.min_peakiness_rise}")


@dataclasses.dataclass(frozen=True)
class SqueezeEvent:
    """A fired alarm: where, what it will do, and the numbers behind it."""

    step: int
    examples_seen: int
    action: str
    evidence: dict[str, float]

    @property
    def message(self) -> str:
        e = self.evidence
        rise = (f"teacher-forced argmax {e['argmax_peak']:.2f} -> {e['argmax_now']:.2f}" if e["argmax_rose"]
                else f"peakiness of y+ {e['peakiness_peak']:.4f} -> {e['peakiness_now']:.4f}")
        return (f"squeeze alarm at step {self.step} ({self.examples_seen} examples): y+ fell {e['chosen_peak']:.2f} "
                f"-> {e['chosen_now']:.2f} since step {int(e['peak_step'])} while {rise}; y- in a valley "
                f"{e['rejected_peak']:.2f} -> {e['rejected_now']:.2f} (action: {self.action})")


Means = Mapping[tuple[str, str], float]


def squeeze_evidence(history: list[tuple[int, Means]], rule: SqueezeRule) -> dict[str, float] | None:
    """Apply the rule to ``history`` (step, probe means) in evaluation order; the evidence when it holds, else None.

    ``history[k][1]`` maps (probe type, statistic) to the mean over probe examples, as ``ProbeResult.means()``.
    """
    if len(history) < 2:
        return None
    stat = rule.statistic
    chosen = [m.get((_CHOSEN, stat), float("nan")) for _, m in history]
    if any(c != c for c in chosen):  # NaN: no y+ probe
        return None
    peak = max(range(len(history)), key=lambda k: chosen[k])
    _, at_peak = history[peak]
    now = history[-1][1]

    def get(means: Means, key: tuple[str, str]) -> float:
        return float(means.get(key, float("nan")))

    rejected = [get(m, (_REJECTED, stat)) for _, m in history]
    ev = {"peak_step": float(history[peak][0]), "chosen_peak": chosen[peak], "chosen_now": chosen[-1],
          "argmax_peak": get(at_peak, (_ARGMAX, stat)), "argmax_now": get(now, (_ARGMAX, stat)),
          "peakiness_peak": get(at_peak, (_CHOSEN, "peakiness")), "peakiness_now": get(now, (_CHOSEN, "peakiness")),
          "rejected_peak": rejected[peak], "rejected_now": rejected[-1]}
    ev["chosen_drop"] = ev["chosen_peak"] - ev["chosen_now"]
    ev["argmax_rise"] = ev["argmax_now"] - ev["argmax_peak"]
    ev["peakiness_rise"] = ev["peakiness_now"] - ev["peakiness_peak"]
    ev["rejected_drop"] = ev["rejected_peak"] - ev["rejected_now"]
    ev["argmax_rose"] = float(ev["argmax_rise"] >= rule.min_rise)
    ev["peakier"] = float(ev["peakiness_rise"] >= rule.min_peakiness_rise)
    valley = ev["rejected_drop"] >= rule.min_drop and rejected[-1] <= min(rejected)  # NaN compares False
    if ev["chosen_drop"] >= rule.min_drop and (ev["argmax_rose"] or ev["peakier"]) and valley:
        return ev
    return None


class SqueezeMonitor:
    """Feed it every probe evaluation; it fires (once) when the squeeze rule holds, logging a warning."""

    def __init__(self, rule: SqueezeRule | None = None):
        self.rule = rule or SqueezeRule()
        self.history: list[tuple[int, Means]] = []
        self.fired: SqueezeEvent | None = None

    def update(self, step: int, examples_seen: int, means: Means) -> SqueezeEvent | None:
        """Record one evaluation; return the event the first time the rule holds, else None."""
        self.history = [h for h in self.history if h[0] < step] + [(step, dict(means))]  # a resumed step replaces
        if self.fired is not None:
            return None
        evidence = squeeze_evidence(self.history, self.rule)
        if evidence is None:
            return None
        self.fired = SqueezeEvent(step, examples_seen, self.rule.action, evidence)
        logger.warning(self.fired.message)
        return self.fired

    def row(self, event: SqueezeEvent, phase: str) -> dict[str, float | int | str]:
        """The metrics row of a fired alarm (training-row layout: step, examples_seen, phase, squeeze/*)."""
        return {"step": event.step, "examples_seen": event.examples_seen, "phase": phase, "squeeze/alarm": 1.0,
                **{f"squeeze/{k}": v for k, v in event.evidence.items()}}


def dashboard_metrics(means: Means, statistic: str = "logp_sum") -> dict[str, float]:
    """Probe means under dashboard names: ``logps/probe_<type>`` (beside TRL's logps/chosen), ``probes/...``."""
    out = {}
    for (probe, stat), value in means.items():
        if stat == statistic:
            out[f"logps/probe_{probe}"] = float(value)
        elif stat in ("peakiness", "entropy") and probe in (_CHOSEN, _REJECTED):
            out[f"probes/{probe}_{stat}"] = float(value)
    return out
