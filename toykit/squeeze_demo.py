"""The paper notebook's squeezing panels A-E as a run: real linear-softmax steps, a figure and a JSON.

Each panel takes one plain gradient step on a linear softmax z = W x (float64 torch autograd, W' = W - grad of
lr_plus * (-log pi(y+)) + lr_minus * log pi(ybar)) and compares the result with the closed form of
``toykit.squeeze``. The draws follow the notebook (``np.random.seed(10086)``, then x, W_uniform, W_flat, the peaky
W and panel E's x and W, in that order), so a legacy ``RandomState`` reproduces its distributions.

    A  positive gradient on one label, random W (the notebook calls it W_uniform; lr 0.5)
    B  negative gradient on a flat pi (lr 0.3)
    C  negative gradient on the PEAK of a peaky pi (lr 0.5)
    D  negative gradient on a VALLEY label of a peaky pi (lr 0.5); optionally plus a positive gradient on another
       label (``--lr-d-plus``)
    E  large vocabulary, V = 1000, feature dim 50 (lr 1)

The peaky W is one GD step (lr 1) from a random W on L = logsumexp(z) - t.z with a multi-hot t on 8 labels (the
notebook's update W - lr (pi - t) x^T).

Note on D: the notebook's code calls ``case_all(W_t=Wt_peaky, X=X, minus=42, minus_lr=0.5)``, whose ``plus_lr``
defaults to 0, so its panel D is a negative step alone; PAPER.md describes it as negative plus positive (lr 0.5 each).
The default follows the code (``lr_d_plus = 0``); ``--lr-d-plus 0.5`` gives the described variant. There, with one
shared x and equal learning rates the pi terms of the two gradients cancel,
z' = z + c (e_{y+} - e_ybar), so every label other than y+ and ybar moves by the same factor 1/Z with
Z = 1 + pi(y+)(e^c - 1) - pi(ybar)(1 - e^-c): y* rises only when pi(y+)(e^c - 1) < pi(ybar)(1 - e^-c). The JSON
records that prediction, and the negative part of D alone (where y* must rise, claim 2).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from toykit.configs import HelpFormatter, add_config_arguments, config_from_namespace
from toykit.runs import atomic_path, new_run_dir, write_json
from toykit.squeeze import positive_contrast, positive_step, rise_threshold, squeeze_claims, squeeze_step

__all__ = ["SqueezeDemoConfig", "PanelResult", "SqueezeDemoResult", "run", "save", "plot", "execute", "main"]

NAME = "squeeze"
HELP = "the squeezing effect: the paper notebook's panels A-E (linear softmax, one exact step each)"


@dataclass(frozen=True)
class SqueezeDemoConfig:
    """Panels A-E of the squeezing-effect notebook (Ren & Sutherland, ICLR 2025, Appendix C)."""

    seed: int = field(default=10086, metadata={"help": "seed of the legacy numpy RandomState (the notebook's)"})
    num_classes: int = field(default=50, metadata={"max": 100_000, "help": "V, number of classes in panels A-D"})
    feature_dim: int = field(default=4, metadata={"max": 10_000, "help": "dimension of the single input x in panels A-D"})
    flat_noise: float = field(default=0.05, metadata={"help": "std of the noise on the all-ones W of panel B"})
    peaky_labels: tuple[int, ...] = field(default=(5, 6, 7, 8, 9, 10, 11, 12),
                                          metadata={"help": "multi-hot target labels that make the peaky W"})
    peaky_lr: float = field(default=1.0, metadata={"help": "eta of the GD step that makes the peaky W"})
    label_a: int = field(default=21, metadata={"help": "panel A: label y+ pulled up"})
    lr_a: float = field(default=0.5, metadata={"help": "panel A: eta of the positive step"})
    label_b: int = field(default=42, metadata={"help": "panel B: label ybar pushed down"})
    lr_b: float = field(default=0.3, metadata={"help": "panel B: eta of the negative step"})
    label_c: Optional[int] = field(default=None, metadata={"help": "panel C: ybar; none = the peak argmax pi"})
    lr_c: float = field(default=0.5, metadata={"help": "panel C: eta of the negative step"})
    label_d_minus: int = field(default=42, metadata={"help": "panel D: valley label ybar pushed down"})
    label_d_plus: int = field(default=25, metadata={"help": "panel D: label y+ pulled up when lr_d_plus > 0"})
    lr_d: float = field(default=0.5, metadata={"help": "panel D: eta of the negative step"})
    lr_d_plus: float = field(default=0.0, metadata={
        "help": "panel D: eta of a simultaneous positive step on label_d_plus (0 = the notebook code's panel D)"})
    large_num_classes: int = field(default=1000, metadata={"max": 1_000_000, "help": "panel E: V"})
    large_feature_dim: int = field(default=50, metadata={"max": 10_000, "help": "panel E: dimension of x"})
    large_weight_scale: float = field(default=0.5, metadata={"help": "panel E: std of the random W"})
    label_e: int = field(default=100, metadata={"help": "panel E: label ybar pushed down"})
    lr_e: float = field(default=1.0, metadata={"help": "panel E: eta of the negative step"})
    dpi: int = field(default=110, metadata={"max": 600, "help": "resolution of squeeze.png"})

    def __post_init__(self) -> None:
        for name, least in (("num_classes", 2), ("large_num_classes", 2), ("feature_dim", 1),
                            ("large_feature_dim", 1), ("dpi", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{name}: expected >= {least}, got {getattr(self, name)}")
        for name in ("flat_noise", "large_weight_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("peaky_lr", "lr_a", "lr_b", "lr_c", "lr_d", "lr_e"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a learning rate eta > 0, got {getattr(self, name)}")
        labels = {"label_a": self.label_a, "label_b": self.label_b, "label_d_minus": self.label_d_minus,
                  "label_d_plus": self.label_d_plus}
        labels.update({f"peaky_labels[{i}]": y for i, y in enumerate(self.peaky_labels)})
        if self.label_c is not None:
            labels["label_c"] = self.label_c
        for name, y in labels.items():
            if not 0 <= y < self.num_classes:
                raise ValueError(f"{name}: expected a label in [0, {self.num_classes}), got {y}")
        if not 0 <= self.label_e < self.large_num_classes:
            raise ValueError(f"label_e: expected a label in [0, {self.large_num_classes}), got {self.label_e}")
        if not self.lr_d_plus >= 0:
            raise ValueError(f"lr_d_plus: expected >= 0 (0 disables the positive step), got {self.lr_d_plus}")
        if self.label_d_minus == self.label_d_plus:
            raise ValueError(f"label_d_plus: expected a label other than label_d_minus={self.label_d_minus}")


@dataclass(frozen=True)
class PanelResult:
    """One panel: pi before/after a real step, which labels rose, and the squeezing claims.

    ``ybar`` is the pushed-down label (None for A), ``y_plus`` the pulled-up one (None for B, C, E), ``y_star`` =
    argmax_{i != ybar} pi_i. ``c_minus`` / ``c_plus`` = eta ||x||^2 of each step. ``closed_form_max_abs_diff`` is
    max |pi_after - closed form| (``squeeze_step`` / ``positive_step``, or z + c_-(pi - e_ybar) - c_+(pi - e_y+) for D).
    """

    key: str
    title: str
    ybar: Optional[int]
    y_plus: Optional[int]
    y_star: Optional[int]
    lr_minus: float
    lr_plus: float
    x_norm_sq: float
    c_minus: float
    c_plus: float
    pi_before: np.ndarray
    pi_after: np.ndarray
    rose: tuple[int, ...]
    threshold: Optional[float]
    closed_form_max_abs_diff: float
    claims: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Return the panel as plain JSON values."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["pi_before"] = self.pi_before.tolist()
        out["pi_after"] = self.pi_after.tolist()
        out["rose"] = list(self.rose)
        return out


@dataclass(frozen=True)
class SqueezeDemoResult:
    """The five panels, keyed "A" to "E"."""

    panels: dict[str, PanelResult]


# ----------------------------------------------------------------------------------------------- the steps


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _real_step(weight: np.ndarray, x: np.ndarray, *, ybar: Optional[int], lr_minus: float, y_plus: Optional[int],
               lr_plus: float) -> tuple[np.ndarray, np.ndarray]:
    """Take one gradient step on W (V, d) with torch autograd; return (pi_before, pi_after), each (V,)."""
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)  # (V, d)
    xt = torch.tensor(x, dtype=torch.float64)  # (d,)
    log_pi = torch.log_softmax(w @ xt, dim=-1)  # (V,)
    objective = torch.zeros((), dtype=torch.float64)
    if y_plus is not None:
        objective = objective + lr_plus * (-log_pi[y_plus])  # descent on -log pi(y+)
    if ybar is not None:
        objective = objective - lr_minus * (-log_pi[ybar])  # ascent on -log pi(ybar)
    (grad,) = torch.autograd.grad(objective, w)
    with torch.no_grad():
        pi_after = torch.softmax((w - grad) @ xt, dim=-1)
    return log_pi.detach().exp().numpy(), pi_after.numpy()


def _panel(key: str, title: str, weight: np.ndarray, x: np.ndarray, *, ybar: Optional[int] = None,
           lr_minus: float = 0.0, y_plus: Optional[int] = None, lr_plus: float = 0.0) -> PanelResult:
    """Take the panel's real step from W (V, d) and x (d,); check it against the closed form; measure the claims."""
    pi_before, pi_after = _real_step(weight, x, ybar=ybar, lr_minus=lr_minus, y_plus=y_plus, lr_plus=lr_plus)
    x_norm_sq = float(x @ x)
    c_minus, c_plus = lr_minus * x_norm_sq, lr_plus * x_norm_sq
    claims: dict[str, Any] = {}
    threshold = None
    y_star = None
    if ybar is not None and y_plus is None:
        closed = squeeze_step(pi_before, ybar, c_minus)
        measured = squeeze_claims(pi_before, ybar, c_minus).to_dict()
        threshold = float(rise_threshold(pi_before, ybar, c_minus))
        y_star = int(measured["y_star"])
        claims = {k: v for k, v in measured.items() if k.startswith(("claim", "num_", "only_"))}
    elif ybar is None and y_plus is not None:
        closed = positive_step(pi_before, y_plus, c_plus)
        contrast = positive_contrast(pi_before, y_plus, c_plus).to_dict()
        claims = {"claim_y_plus_increases": bool(pi_after[y_plus] > pi_before[y_plus]),
                  "claim_rich_lose_most": contrast["rich_lose_most"],
                  "richest_other": contrast["richest_other"],
                  "richest_other_log_change": contrast["log_change_richest_other"]}
    else:
        # z' = z + c_-(pi - e_ybar) - c_+(pi - e_y+), with z = log pi (logits up to a shift).
        labels = np.arange(pi_before.size)
        z_new = np.log(pi_before) + c_minus * (pi_before - (labels == ybar)) - c_plus * (pi_before - (labels == y_plus))
        closed = _softmax(z_new)
        claims = _combined_claims(pi_before, pi_after, ybar, y_plus, c_minus, c_plus)
        y_star = int(claims["negative_part"]["y_star"])
    return PanelResult(
        key=key, title=title, ybar=ybar, y_plus=y_plus, y_star=y_star, lr_minus=lr_minus, lr_plus=lr_plus,
        x_norm_sq=x_norm_sq, c_minus=c_minus, c_plus=c_plus, pi_before=pi_before, pi_after=pi_after,
        rose=tuple(int(i) for i in np.flatnonzero(pi_after > pi_before)), threshold=threshold,
        closed_form_max_abs_diff=float(np.max(np.abs(pi_after - closed))), claims=claims,
    )


def _combined_claims(pi: np.ndarray, pi_after: np.ndarray, ybar: int, y_plus: int, c_minus: float,
                     c_plus: float) -> dict[str, Any]:
    """Claims for D: the combined step, its closed-form prediction for y*, and the negative part alone."""
    negative = squeeze_claims(pi, ybar, c_minus).to_dict()
    y_star = int(negative["y_star"])
    out: dict[str, Any] = {
        "claim_ybar_decreases": bool(pi_after[ybar] < pi[ybar]),
        "claim_y_plus_increases": bool(pi_after[y_plus] > pi[y_plus]),
        "ystar_increases": bool(pi_after[y_star] > pi[y_star]),
        "negative_part": {k: v for k, v in negative.items() if k in ("y_star", "pi_ystar_before", "pi_ystar_after",
                                                                    "pi_ybar_after", "num_rose", "only_ystar_rises")
                         or k.startswith("claim")},
    }
    # z' = z + (c_- - c_+) pi - c_- e_ybar + c_+ e_{y+}, so log pi'(y*) - log pi(y*) = (c_- - c_+) pi(y*) - log Z.
    # With c_- = c_+ = c this says: y* rises iff pi(y+)(e^c - 1) < pi(ybar)(1 - e^-c).
    shift = (c_minus - c_plus) * pi
    shift[ybar] -= c_minus
    shift[y_plus] += c_plus
    log_z = np.logaddexp.reduce(np.log(pi) + shift)
    out["ystar_log_change_predicted"] = float(shift[y_star] - log_z)
    out["ystar_increases_predicted"] = bool(shift[y_star] > log_z)
    out["claim_ystar_matches_closed_form"] = out["ystar_increases"] == out["ystar_increases_predicted"]
    return out


def run(cfg: SqueezeDemoConfig) -> SqueezeDemoResult:
    """Build the five panels of the notebook from ``cfg`` (pure: no files written)."""
    rng = np.random.RandomState(cfg.seed)  # legacy stream on purpose: it reproduces the notebook's draws
    d, v = cfg.feature_dim, cfg.num_classes
    x = rng.standard_normal((d, 1))[:, 0]  # (d,)
    w_uniform = rng.standard_normal((d, v)).T  # (V, d); drawn (d, V) as in the notebook
    w_flat = (np.ones((d, v)) + cfg.flat_noise * rng.standard_normal((d, v))).T  # (V, d)
    w_random = rng.standard_normal((d, v)).T  # (V, d)
    target = np.zeros(v)
    target[list(cfg.peaky_labels)] = 1.0
    w_peaky = w_random - cfg.peaky_lr * np.outer(_softmax(w_random @ x) - target, x)  # (V, d)
    x_large = rng.standard_normal((cfg.large_feature_dim, 1))[:, 0]  # (d_E,)
    w_large = cfg.large_weight_scale * rng.standard_normal((cfg.large_feature_dim, cfg.large_num_classes)).T
    # w_large: (V_E, d_E)

    peak = int(np.argmax(_softmax(w_peaky @ x))) if cfg.label_c is None else cfg.label_c
    panels = [
        _panel("A", f"A: positive gradient on y={cfg.label_a} (random W, the notebook's W_uniform; lr {cfg.lr_a:g})", w_uniform, x,
               y_plus=cfg.label_a, lr_plus=cfg.lr_a),
        _panel("B", f"B: negative gradient on ybar={cfg.label_b} (flat pi, lr {cfg.lr_b:g})", w_flat, x,
               ybar=cfg.label_b, lr_minus=cfg.lr_b),
        _panel("C", f"C: negative gradient on the peak ybar={peak} (peaky pi, lr {cfg.lr_c:g})", w_peaky, x,
               ybar=peak, lr_minus=cfg.lr_c),
        _panel("D", f"D: negative on valley ybar={cfg.label_d_minus} (lr {cfg.lr_d:g})"
               + (f" + positive on y={cfg.label_d_plus} (lr {cfg.lr_d_plus:g})" if cfg.lr_d_plus > 0 else ""),
               w_peaky, x, ybar=cfg.label_d_minus, lr_minus=cfg.lr_d,
               y_plus=cfg.label_d_plus if cfg.lr_d_plus > 0 else None, lr_plus=cfg.lr_d_plus),
        _panel("E", f"E: negative gradient on ybar={cfg.label_e}, V={cfg.large_num_classes} (lr {cfg.lr_e:g})",
               w_large, x_large, ybar=cfg.label_e, lr_minus=cfg.lr_e),
    ]
    return SqueezeDemoResult(panels={p.key: p for p in panels})


# ----------------------------------------------------------------------------------------------- outputs


def _summary(result: SqueezeDemoResult) -> dict[str, Any]:
    panels = {}
    for key, p in result.panels.items():
        row: dict[str, Any] = {"title": p.title, "num_rose": len(p.rose),
                               "closed_form_max_abs_diff": p.closed_form_max_abs_diff}
        for role, label in (("ybar", p.ybar), ("y_plus", p.y_plus), ("y_star", p.y_star)):
            if label is not None:
                row[role] = label
                row[f"pi_{role}_before"] = float(p.pi_before[label])
                row[f"pi_{role}_after"] = float(p.pi_after[label])
        row["claims"] = {k: v for k, v in p.claims.items() if k.startswith("claim")}
        row["observations"] = {k: v for k, v in p.claims.items() if isinstance(v, bool) and not k.startswith("claim")}
        panels[key] = row
    verdicts = [v for row in panels.values() for v in row["claims"].values()]
    return {"figure": "squeeze.png", "details": "squeeze.json", "panels": panels,
            "all_claims_hold": bool(all(verdicts))}


def save(result: SqueezeDemoResult, run_dir: str | Path, dpi: int = 110) -> dict[str, Path]:
    """Write ``squeeze.json`` (every panel in full), ``summary.json`` and ``squeeze.png`` into ``run_dir``."""
    run_dir = Path(run_dir)
    paths = {
        "squeeze.json": write_json(run_dir / "squeeze.json",
                                   {"panels": {k: p.to_dict() for k, p in result.panels.items()}}),
        "summary.json": write_json(run_dir / "summary.json", _summary(result)),
    }
    figure = plot(result, dpi=dpi)
    with atomic_path(run_dir / "squeeze.png") as tmp, open(tmp, "wb") as fh:
        figure.savefig(fh, format="png", dpi=figure.get_dpi())
    paths["squeeze.png"] = run_dir / "squeeze.png"
    import matplotlib.pyplot as plt

    plt.close(figure)
    return paths


def plot(result: SqueezeDemoResult, dpi: int = 110):
    """Return the figure: one column per panel, pi before vs after on a linear (top) and log (bottom) scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result.panels)
    fig, axes = plt.subplots(2, len(keys), figsize=(4.6 * len(keys), 7.0), dpi=dpi, squeeze=False)
    for col, key in enumerate(keys):
        p = result.panels[key]
        labels = np.arange(p.pi_before.size)
        for row, log_scale in enumerate((False, True)):
            ax = axes[row, col]
            if p.pi_before.size <= 100:
                ax.bar(labels - 0.2, p.pi_before, width=0.4, color="0.6", label="pi before")
                ax.bar(labels + 0.2, p.pi_after, width=0.4, color="tab:orange", label="pi after")
            else:
                ax.plot(labels, p.pi_before, color="0.5", lw=0.8, label="pi before")
                ax.plot(labels, p.pi_after, color="tab:orange", lw=0.8, label="pi after")
            for label, colour, name in ((p.ybar, "tab:red", "ybar (pushed down)"),
                                        (p.y_plus, "tab:blue", "y+ (pulled up)"),
                                        (p.y_star, "tab:green", "y* = argmax_{i != ybar} pi")):
                if label is not None:
                    ax.axvline(label, color=colour, ls="--", lw=0.9, label=name)
            if p.threshold is not None and not log_scale:
                ax.axhline(p.threshold, color="k", ls=":", lw=0.9, label="(1/c) log Z")
            if log_scale:
                ax.set_yscale("log")
                ax.set_xlabel("label")
            else:
                ax.set_title(p.title, fontsize=9)
            ax.set_ylabel("pi (log scale)" if log_scale else "pi")
        axes[0, col].legend(fontsize=6, loc="upper right")
    fig.suptitle("Squeezing effect: one exact step on a linear softmax z = W x (c = eta ||x||^2)", fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- command line


def execute(cfg: SqueezeDemoConfig, out_dir: str | Path | None = None) -> Path:
    """Run the panels and write a run directory (config.json first); return its path."""
    with new_run_dir(cfg, NAME, out_dir) as run_dir:  # a refused input leaves no folder
        result = run(cfg)
    save(result, run_dir, dpi=cfg.dpi)
    return run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, one flag per config field and ``--out-dir`` to ``parser``."""
    add_config_arguments(parser, SqueezeDemoConfig)
    parser.add_argument("--out-dir", default=None, metavar="DIR",
                        help="run directory to create (default: runs/<time>-squeeze)")


def run_from_namespace(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """Build the config from parsed flags (bad values exit with status 2) and execute it."""
    try:
        cfg = config_from_namespace(SqueezeDemoConfig, ns)
    except ValueError as err:
        parser.error(str(err))
    try:
        run_dir = execute(cfg, ns.out_dir)
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))
    print(run_dir)
    return run_dir


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python -m toykit squeeze``: parse ``argv``, write the run, print its directory."""
    parser = argparse.ArgumentParser(prog="python -m toykit squeeze", description=HELP,
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    return run_from_namespace(parser.parse_args(argv), parser)
