"""One-step decomposition on a toy model: A, K, G, the prediction -eta A K G vs the real step, and the eta^2 law.

A small model (linear softmax or MLP, float64) takes one SGD step on (x_u, y_u) under a loss of the registry; the
change of log pi on the observed inputs x_o (x_o[0] = x_u itself, the others random) is predicted by Proposition 1
and measured. The eta sweep shows the error of the prediction shrinking like eta^2 (log-log slope 2). All the math is
:func:`toykit.decomposition.decompose` / :func:`toykit.decomposition.eta_sweep`; this module builds the problem and
reshapes the results for plotting. It is the computation behind the app's second page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.figure import Figure

from toykit.decomposition import decompose, eta_sweep
from toykit.experiments._common import (check_at_least, check_choice, check_loss_names, check_positive, new_figure,
                                        pearson, save_figure, write_metrics, write_summary)
from toykit.losses import get_loss
from toykit.models import MLP, LinearSoftmax

NAME = "one-step"
DESCRIPTION = "Proposition 1 on a toy model: A, K, G, predicted -eta A K G vs the real step, error ~ eta^2"

MODELS = ("linear", "mlp")


@dataclass(frozen=True)
class Config:
    """One SGD step on a toy model, decomposed."""

    model: Literal["linear", "mlp"] = field(default="mlp", metadata={"help": "linear softmax z = W x, or a tanh MLP"})
    num_classes: int = field(default=6, metadata={"max": 10_000, "help": "V, the number of classes"})
    in_dim: int = field(default=8, metadata={"max": 10_000, "help": "input dimension"})
    hidden: int = field(default=16, metadata={"max": 10_000, "help": "hidden width of the MLP"})
    num_observed: int = field(default=4, metadata={"max": 10_000, "help": "N_o observed inputs; x_o[0] is x_u itself"})
    loss: str = field(default="sft", metadata={"help": "loss name from toykit.losses (sft, dpo, ipo, ...)"})
    y_u: int = field(default=0, metadata={"help": "chosen label at x_u"})
    y_rejected: int = field(default=-1, metadata={
        "help": "rejected label at x_u for paired losses; -1 = the least likely label other than y_u"})
    eta: float = field(default=0.05, metadata={"help": "learning rate of the step"})
    beta: float = field(default=0.1, metadata={"help": "beta of losses that have one (DPO family)"})
    eta_min: float = field(default=1e-3, metadata={"help": "smallest eta of the sweep"})
    eta_max: float = field(default=0.5, metadata={"help": "largest eta of the sweep"})
    num_etas: int = field(default=7, metadata={"max": 1_000, "help": "learning rates in the sweep (log-spaced)"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and inputs"})

    def __post_init__(self) -> None:
        check_choice("model", self.model, MODELS)
        check_at_least("num_classes", self.num_classes, 2)
        check_at_least("in_dim", self.in_dim, 1)
        check_at_least("hidden", self.hidden, 1)
        check_at_least("num_observed", self.num_observed, 1)
        check_at_least("num_etas", self.num_etas, 2)
        check_loss_names("loss", [self.loss])
        for name in ("eta", "beta", "eta_min", "eta_max"):
            check_positive(name, getattr(self, name))
        if not self.eta_min < self.eta_max:
            raise ValueError(f"eta_min must be < eta_max, got {self.eta_min} and {self.eta_max}")
        if not 0 <= self.y_u < self.num_classes:
            raise ValueError(f"y_u must be a label in [0, {self.num_classes}), got {self.y_u}")
        if not (self.y_rejected == -1 or 0 <= self.y_rejected < self.num_classes) or self.y_rejected == self.y_u:
            raise ValueError(f"y_rejected must be -1 or a label in [0, {self.num_classes}) other than y_u={self.y_u}, "
                             f"got {self.y_rejected}")


@dataclass(frozen=True)
class Result:
    """The factors and predictions of one step (arrays float64).

    Attributes:
        A: (N_o, V, V) A(x_o) = I - 1 pi^T.   K: (N_o, V, V) eNTK K(x_o, x_u).   G: (V,) residual at x_u.
        predicted: (N_o, V) -eta A K G.   actual: (N_o, V) Delta log pi from the real step.
        pi: (N_o, V) predictions before the step.   y_rejected: the rejected label used (-1 for unpaired losses).
        etas, errors: (E,) the sweep: ||-eta A K G - Delta log pi||_F per eta.   slope: its log-log slope.
    """

    config: Config
    A: np.ndarray
    K: np.ndarray
    G: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    pi: np.ndarray
    y_rejected: int
    etas: np.ndarray
    errors: np.ndarray
    slope: float
    summary: dict[str, Any]


def _problem(cfg: Config) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Build the float64 model and inputs (x_o (N_o, d) with x_o[0] = x_u) from ``cfg.seed``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.model == "linear":
        model = LinearSoftmax(cfg.in_dim, cfg.num_classes, generator=gen)
    else:
        model = MLP(cfg.in_dim, cfg.hidden, cfg.num_classes, generator=gen)
    model = model.double().eval()
    x_o = torch.randn(cfg.num_observed, cfg.in_dim, generator=gen, dtype=torch.float64)  # (N_o, d)
    return model, x_o, x_o[0]


def run(cfg: Config) -> Result:
    """Decompose one step at ``cfg.eta`` and sweep eta over [eta_min, eta_max]."""
    model, x_o, x_u = _problem(cfg)
    with torch.no_grad():
        pi = torch.softmax(model(x_o), dim=-1)  # (N_o, V)
    paired = get_loss(cfg.loss).paired
    y_rej = None
    if paired:
        order = torch.argsort(pi[0]).tolist()  # least likely first
        y_rej = cfg.y_rejected if cfg.y_rejected >= 0 else next(y for y in order if y != cfg.y_u)
    hparams = {"beta": cfg.beta} if "beta" in get_loss(cfg.loss).defaults else {}
    dec = decompose(model, x_o, x_u, cfg.y_u, loss=cfg.loss, eta=cfg.eta, y_rejected=y_rej, **hparams)
    etas = np.geomspace(cfg.eta_min, cfg.eta_max, cfg.num_etas)
    sweep = eta_sweep(model, x_o, x_u, cfg.y_u, etas.tolist(), loss=cfg.loss, y_rejected=y_rej, **hparams)
    predicted, actual = dec.predicted.numpy(), dec.actual.numpy()
    summary = {
        "loss": cfg.loss, "eta": cfg.eta, "y_u": cfg.y_u, "y_rejected": -1 if y_rej is None else int(y_rej),
        "error": float(np.linalg.norm(predicted - actual)),
        "relative_error": float(np.linalg.norm(predicted - actual) / max(np.linalg.norm(actual), 1e-300)),
        "correlation": pearson(predicted, actual),
        "slope": float(sweep.slope), "inner_product_max_gap": float(np.abs(dec.inner_product.numpy() - predicted).max()),
        "delta_log_pi_chosen_self": float(actual[0, cfg.y_u]),
    }
    return Result(cfg, dec.A.numpy(), dec.K.numpy(), dec.G.numpy(), predicted, actual, pi.numpy(),
                  summary["y_rejected"], sweep.etas.numpy(), sweep.errors.numpy(), float(sweep.slope), summary)


def matrix_table(matrix: np.ndarray, value: str = "value") -> list[dict[str, Any]]:
    """Return tidy rows {row, column, value} of a (V, V) matrix, for heat maps."""
    return [{"row": i, "column": j, value: float(matrix[i, j])}
            for i in range(matrix.shape[0]) for j in range(matrix.shape[1])]


def residual_table(result: Result) -> list[dict[str, Any]]:
    """Return rows {label, G, pi(x_u), role} of the residual G = dL/dz at x_u."""
    roles = {result.config.y_u: "y_u (chosen)", result.y_rejected: "y- (rejected)"}
    return [{"label": v, "G": float(result.G[v]), "pi(x_u)": float(result.pi[0, v]), "role": roles.get(v, "other")}
            for v in range(result.G.size)]


def change_table(result: Result) -> list[dict[str, Any]]:
    """Return rows {observed, label, predicted, actual} of Delta log pi on every x_o (observed 0 is x_u)."""
    return [{"observed": f"x_o[{n}]" + (" = x_u" if n == 0 else ""), "label": v,
             "predicted": float(result.predicted[n, v]), "actual": float(result.actual[n, v])}
            for n in range(result.predicted.shape[0]) for v in range(result.predicted.shape[1])]


def sweep_table(result: Result) -> list[dict[str, Any]]:
    """Return rows {eta, error, series} of the sweep and an eta^2 line through its smallest-eta point."""
    reference = result.errors[0] * (result.etas / result.etas[0]) ** 2  # (E,) C eta^2 through the first point
    return ([{"eta": float(e), "error": float(r), "series": "||-eta A K G - Delta log pi||"}
             for e, r in zip(result.etas, result.errors)]
            + [{"eta": float(e), "error": float(r), "series": "C eta^2 (reference)"}
               for e, r in zip(result.etas, reference)])


def save(result: Result, out_dir: Path) -> None:
    """Write metrics.jsonl (the sweep), summary.json and one_step.png."""
    rows = [{"step": i, "probe": "sweep", "metric": "error", "value": float(r), "eta": float(e)}
            for i, (e, r) in enumerate(zip(result.etas, result.errors))]
    write_metrics(out_dir, rows)
    write_summary(out_dir, result.summary)
    save_figure(plot(result), Path(out_dir) / "one_step.png")


def plot(result: Result) -> Figure:
    """Plot A, K at x_u, G, predicted vs actual Delta log pi, and the error against eta on log-log axes."""
    fig = new_figure(14, 3.2)
    ax_a, ax_k, ax_g, ax_pa, ax_eta = fig.subplots(1, 5)
    for ax, mat, name in ((ax_a, result.A[0], "A(x_u)"), (ax_k, result.K[0], "K(x_u, x_u)")):
        image = ax.imshow(mat, cmap="RdBu_r")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(name)
        ax.set_xlabel("label")
        ax.set_ylabel("label")
    ax_g.bar(np.arange(result.G.size), result.G)
    ax_g.set_title("G = dL/dz at x_u")
    ax_g.set_xlabel("label")
    ax_pa.scatter(result.actual.ravel(), result.predicted.ravel(), s=10)
    ax_pa.set_xlabel("actual Delta log pi")
    ax_pa.set_ylabel("predicted -eta A K G")
    ax_eta.loglog(result.etas, result.errors, "o-", label=f"error (slope {result.slope:.2f})")
    ax_eta.loglog(result.etas, result.errors[0] * (result.etas / result.etas[0]) ** 2, "--", label="eta^2")
    ax_eta.set_xlabel("eta")
    ax_eta.set_ylabel("||prediction - actual||")
    ax_eta.legend(fontsize=7)
    return fig
