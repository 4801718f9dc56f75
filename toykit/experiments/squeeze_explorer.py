"""The squeezing explorer: any start distribution, a negative and/or positive gradient, several exact steps.

A linear softmax z = W x with one fixed input x: a step of size c = eta ||x||^2 that pushes ``ybar`` down moves the
logits by z' = z + c (pi - e_ybar), one that pulls ``y_plus`` up by z' = z - c (pi - e_y+); both at once add the two
(PAPER.md section 4). The start is a random distribution of a chosen temperature, the uniform one, or the paper
notebook's peaky one (one GD step from a random W toward a multi-hot target). The result says which labels rose, how
much mass moved to the argmax y*, and whether claims 1-5 and the positive-gradient contrast hold for this setting
(evaluated on the first step, with :mod:`toykit.squeeze`). This is the computation behind the app's first page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from toykit import squeeze
from toykit.experiments._common import (check_at_least, check_choice, check_positive, new_figure, save_figure,
                                        write_metrics, write_summary)

NAME = "squeeze-explorer"
DESCRIPTION = "exact negative/positive gradient steps on a softmax from any start: which labels rise, claims 1-5"

STARTS = ("temperature", "uniform", "peaky")
LABEL_WORDS = ("peak", "valley", "none")


@dataclass(frozen=True)
class Config:
    """One squeezing scenario on a linear softmax with a single fixed input."""

    num_classes: int = field(default=50, metadata={"max": 100_000, "help": "V, the number of labels"})
    start: Literal["temperature", "uniform", "peaky"] = field(default="temperature", metadata={
        "help": "start distribution: Softmax(g / T) with g ~ N(0, I) ('temperature'), 1/V ('uniform'), or the paper "
                "notebook's peaky pi (one GD step from a random W toward a multi-hot target on 8 labels)"})
    temperature: float = field(default=0.5, metadata={"help": "T of the 'temperature' start: small T = peaky pi"})
    negative: str = field(default="valley", metadata={
        "help": "label ybar that gets the negative gradient: 'valley' (least likely), 'peak' (most likely), an "
                "index, or 'none'"})
    positive: str = field(default="none", metadata={
        "help": "label y+ that gets the positive gradient at the same step: 'peak', 'valley', an index, or 'none'"})
    eta: float = field(default=1.0, metadata={"help": "step size c = eta ||x||^2 of each step (||x|| = 1)"})
    steps: int = field(default=1, metadata={"max": 10_000, "help": "number of steps with the same labels"})
    seed: int = field(default=0, metadata={"help": "seed of the start distribution"})

    def __post_init__(self) -> None:
        check_at_least("num_classes", self.num_classes, 2)
        check_choice("start", self.start, STARTS)
        check_positive("temperature", self.temperature)
        check_positive("eta", self.eta)
        check_at_least("steps", self.steps, 1)
        for name in ("negative", "positive"):
            value = getattr(self, name)
            if value not in LABEL_WORDS and not (value.isdigit() and int(value) < self.num_classes):
                raise ValueError(f"{name} must be one of {list(LABEL_WORDS)} or a label index in "
                                 f"[0, {self.num_classes}), got {value!r}")
        if self.negative == "none" and self.positive == "none":
            raise ValueError("negative and positive are both 'none': choose at least one label to move")


@dataclass(frozen=True)
class Result:
    """Distributions before and after, the labels involved, and the live claim checks.

    Attributes:
        trajectory: (steps + 1, V) pi after each step (row 0 = the start).
        ybar, y_plus: the pushed-down / pulled-up label, or -1 when absent.
        y_star: the most likely label of the start pi other than ybar and y+ (where squeezed mass goes).
        rose: (V,) pi_after > pi_before.
        threshold: (1/c) log Z of the first negative step alone (NaN without a negative label): on that step a label
            i != ybar rises iff pi_i > threshold (claim 3).
        claims: one entry per claim: statement, measured value and whether it held.
    """

    config: Config
    trajectory: np.ndarray
    ybar: int
    y_plus: int
    y_star: int
    rose: np.ndarray
    threshold: float
    claims: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def pi_before(self) -> np.ndarray:
        """(V,) start distribution."""
        return self.trajectory[0]

    @property
    def pi_after(self) -> np.ndarray:
        """(V,) distribution after the last step."""
        return self.trajectory[-1]


def start_distribution(cfg: Config, rng: np.random.Generator) -> np.ndarray:
    """Return the (V,) start pi of ``cfg`` drawn from ``rng``."""
    if cfg.start == "uniform":
        return np.full(cfg.num_classes, 1.0 / cfg.num_classes)
    if cfg.start == "temperature":
        return squeeze.random_distribution(rng, cfg.num_classes, temperature=cfg.temperature)
    # The notebook's peaky pi: z = W x, then z' = z - 1 * ||x||^2 (pi - t) for a multi-hot t on 8 labels.
    weight = rng.standard_normal((cfg.num_classes, 4))  # (V, d)
    x = rng.standard_normal(4)  # (d,)
    z = weight @ x  # (V,)
    target = np.zeros(cfg.num_classes)
    target[rng.choice(cfg.num_classes, size=min(8, cfg.num_classes - 1), replace=False)] = 1.0
    z = z - float(x @ x) * (_softmax(z) - target)
    return _softmax(z)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def resolve_label(word: str, pi: np.ndarray, exclude: int = -1) -> int:
    """Return the label named by ``word`` ('peak', 'valley', an index, 'none' -> -1) for distribution ``pi`` (V,)."""
    if word == "none":
        return -1
    if word.isdigit():
        return int(word)
    order = np.argsort(pi, kind="stable")  # (V,) least likely first
    ranked = order[::-1] if word == "peak" else order
    return int(next(y for y in ranked if y != exclude))


def step(pi: np.ndarray, ybar: int, y_plus: int, c: float) -> np.ndarray:
    """Apply one exact linear-softmax step: negative on ``ybar`` and/or positive on ``y_plus`` (-1 = absent).

    Args:
        pi: (V,) current distribution.

    Returns:
        (V,) pi after the step.

    Math: z' = z + c (pi - e_ybar) - c (pi - e_y+) (each term only when its label is present), pi' = Softmax(z').
    References: PAPER.md section 4 (squeezing effect, positive contrast); the notebook's panel D for both at once.
    """
    if y_plus < 0:
        return squeeze.squeeze_step(pi, ybar, c)
    if ybar < 0:
        return squeeze.positive_step(pi, y_plus, c)
    z = np.log(pi)  # (V,)
    z[ybar] -= c  # the pi terms of the two gradients cancel
    z[y_plus] += c
    return _softmax(z)


def _claims(pi: np.ndarray, ybar: int, y_plus: int, c: float) -> list[dict[str, Any]]:
    """Evaluate claims 1-5 (negative step alone) and the positive contrast on the first step from ``pi``."""
    rows: list[dict[str, Any]] = []
    if ybar >= 0:
        found = squeeze.squeeze_claims(pi, ybar, c)
        rows += [
            {"claim": "1. pi(ybar) decreases", "measured": f"{found.pi_ybar_before:.4g} -> {found.pi_ybar_after:.4g}",
             # pi(ybar) = 1 in float64 leaves no room to see a decrease: unresolved, not a failure
             "holds": None if float(found.pi_ybar_before) >= 1.0 - 1e-15 else bool(found.claim1_ybar_decreases)},
            {"claim": "2. pi(y*) increases (y* = argmax of the others)",
             "measured": f"y*={int(found.y_star)}: {found.pi_ystar_before:.4g} -> {found.pi_ystar_after:.4g}",
             "holds": bool(found.claim2_ystar_increases)},
            {"claim": "3. a label rises iff pi_i > (1/c) log Z", "measured": f"threshold {found.threshold:.4g}, "
             f"{int(found.num_rose)} rose", "holds": bool(found.claim3_threshold_rule)},
        ]
        peakier = squeeze.temper(pi, 0.5)
        rose_peakier = int(squeeze.squeeze_claims(peakier, ybar, c).num_rose)
        rows.append({"claim": "4. no label below ||pi||^2 - pi(ybar) rises, so a peaky pi loses all but y*",
                     "measured": f"only y* rose: {bool(found.only_ystar_rises)}; {int(found.num_rose)} rose "
                                 f"({rose_peakier} for the peakier pi^2 renormalised)",
                     "holds": bool(found.claim4_jensen_bound_holds)})
        gain = float(squeeze.ystar_conditional_log_gain(pi, ybar, c))
        gain_2c = float(squeeze.ystar_conditional_log_gain(pi, ybar, 2 * c))
        # Claim 5 compares the SAME rest of the distribution with less mass on ybar: halve pi(ybar) and give the
        # freed mass to the other labels in their current proportions (a different ybar would change y* and the rest).
        halved = pi * (1.0 - pi[ybar] / 2.0) / max(1.0 - pi[ybar], 1e-300)
        halved[ybar] = pi[ybar] / 2.0
        gain_half = float(squeeze.ystar_conditional_log_gain(halved, ybar, c))
        rows.append({"claim": "5. a larger c and a smaller pi(ybar) squeeze harder (y*'s share of the rest)",
                     "measured": f"log-gain {gain:.3g}; with 2c {gain_2c:.3g}; with pi(ybar) halved {gain_half:.3g}",
                     "holds": gain_2c >= gain - 1e-12 and gain_half >= gain - 1e-12})
    if y_plus >= 0:
        contrast = squeeze.positive_contrast(pi, y_plus, c)
        rows.append({"claim": "contrast: a positive step raises y+ and the rich lose most",
                     "measured": f"richest other label {int(contrast.richest_other)}: log change "
                                 f"{float(contrast.log_change_richest_other):.3g}",
                     "holds": bool(contrast.y_increases) and bool(contrast.rich_lose_most)})
    return rows


def run(cfg: Config) -> Result:
    """Run ``cfg.steps`` exact steps from the start distribution and evaluate the claims on the first one."""
    rng = np.random.default_rng(cfg.seed)
    pi = start_distribution(cfg, rng)
    ybar = resolve_label(cfg.negative, pi)
    y_plus = resolve_label(cfg.positive, pi, exclude=ybar)
    if ybar >= 0 and ybar == y_plus:
        raise ValueError(f"negative and positive name the same label {ybar}: choose two different labels")
    masked = pi.copy()
    masked[[y for y in (ybar, y_plus) if y >= 0]] = -np.inf
    y_star = int(np.argmax(masked))
    trajectory = [pi]
    for _ in range(cfg.steps):
        trajectory.append(step(trajectory[-1], ybar, y_plus, cfg.eta))
    traj = np.stack(trajectory)  # (steps + 1, V)
    rose = traj[-1] > traj[0]
    threshold = float(squeeze.rise_threshold(pi, ybar, cfg.eta)) if ybar >= 0 else math.nan
    claims = _claims(pi, ybar, y_plus, cfg.eta)
    summary = {
        "ybar": ybar, "y_plus": y_plus, "y_star": y_star, "num_rose": int(rose.sum()),
        "labels_rose": [int(i) for i in np.flatnonzero(rose)],
        "mass_to_ystar": float(traj[-1, y_star] - traj[0, y_star]),
        "pi_ystar": [float(traj[0, y_star]), float(traj[-1, y_star])],
        "pi_ybar": [float(traj[0, ybar]), float(traj[-1, ybar])] if ybar >= 0 else None,
        "pi_y_plus": [float(traj[0, y_plus]), float(traj[-1, y_plus])] if y_plus >= 0 else None,
        "threshold_first_step": threshold, "claims_held": sum(r["holds"] is True for r in claims),
        "claims": sum(r["holds"] is not None for r in claims),
    }
    return Result(cfg, traj, ybar, y_plus, y_star, rose, threshold, claims, summary)


def distribution_table(result: Result) -> list[dict[str, Any]]:
    """Return tidy rows {label, when ('before'/'after'), pi, rose, role} for plotting pi before and after."""
    roles = {result.ybar: "ybar (pushed down)", result.y_plus: "y+ (pulled up)", result.y_star: "y* (argmax of rest)"}
    return [{"label": i, "when": when, "pi": float(p[i]), "rose": bool(result.rose[i]), "role": roles.get(i, "other")}
            for when, p in (("before", result.pi_before), ("after", result.pi_after)) for i in range(p.size)]


def trajectory_table(result: Result) -> list[dict[str, Any]]:
    """Return tidy rows {step, label role, pi} of pi(ybar), pi(y+), pi(y*) over the steps."""
    tracked = [(y, name) for y, name in ((result.ybar, "pi(ybar)"), (result.y_plus, "pi(y+)"),
                                         (result.y_star, "pi(y*)")) if y >= 0]
    return [{"step": t, "probability": name, "pi": float(result.trajectory[t, y])}
            for t in range(result.trajectory.shape[0]) for y, name in tracked]


def save(result: Result, out_dir: Path) -> None:
    """Write metrics.jsonl (pi per label before/after), summary.json (with the claims) and squeeze_explorer.png."""
    rows = [{"step": 0 if r["when"] == "before" else result.config.steps, "probe": f"label_{r['label']}",
             "metric": "pi", "value": r["pi"]} for r in distribution_table(result)]
    write_metrics(out_dir, rows)
    write_summary(out_dir, {**result.summary, "claim_checks": result.claims})
    save_figure(plot(result), Path(out_dir) / "squeeze_explorer.png")


def plot(result: Result) -> Figure:
    """Plot pi before and after on linear and log scales, marking ybar, y+ and y*."""
    fig = new_figure(10, 3.4)
    labels = np.arange(result.pi_before.size)
    for ax, log in zip(fig.subplots(1, 2), (False, True)):
        ax.bar(labels, result.pi_before, color="0.7", label="before")
        ax.plot(labels, result.pi_after, "o", ms=3, color="tab:red", label=f"after {result.config.steps} step(s)")
        for y, name, colour in ((result.ybar, "ybar", "tab:blue"), (result.y_plus, "y+", "tab:green"),
                                (result.y_star, "y*", "tab:orange")):
            if y >= 0:
                ax.axvline(y, color=colour, lw=0.8, ls="--", label=name)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("label")
        ax.set_ylabel("pi (log scale)" if log else "pi")
    fig.axes[0].legend(fontsize=7)
    return fig
