"""Proposition 1 on a causal language model: the predicted one-step change of every probe's log-prob vs the real one.

For one SGD step Delta theta = -eta grad_theta L(chi_u) on an updated pair chi_u, the first-order change of the
SUMMED log-prob of an observed response y_o given its prompt x_o is the gradient inner product

    Delta log pi(y_o | x_o) ~= -eta < grad_theta log pi(y_o | x_o), grad_theta L(chi_u) >      (PAPER.md section 2)

which is the sequence form of -eta A K G with the V x V x M x L kernel never built. It is computed here as one
forward-mode product (a JVP of theta -> [log pi(y_o | x_o)]_o along grad L), so every probe of every prompt costs one
batched forward pass, never one backward pass per probe. The measured change is log pi after the real step minus
log pi before it. The remainder is O(eta^2), so |measured - predicted| should shrink like eta^2 (slope 2 on log-log).

References: Ren & Sutherland, ICLR 2025, Proposition 1 and its sequence version (Section 3 / PAPER.md section 2).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from llm.encoding import EncodedBatch, TruncationPolicy, collate, encode_sequence
from llm.linearize import batch_chunks, full_precision, summed_logps
from llm.lora import trainable_parameters
from toykit.decomposition import loglog_slope
from toykit.forward_ad import jvp  # torch.func.jvp under the process-wide forward-AD lock
from toykit.losses import compute_loss, get_loss
from toykit.runs import write_json

__all__ = ["Prop1Config", "Prop1Result", "observed_batch", "summed_logps", "loss_gradient", "predicted_change",
           "measured_change", "run_prop1", "save_prop1", "plot_prop1", "full_precision"]


@dataclass(frozen=True)
class Prop1Config:
    """One-step decomposition check on a causal LM (plain SGD, float64 by default)."""

    loss: str = field(default="sft", metadata={"help": "loss of the registry for the update (sft, dpo, ...)"})
    eta: float = field(default=1e-3, metadata={"help": "SGD learning rate eta of the checked steps"})
    target_change: float = field(default=0.0, metadata={
        "help": "if > 0, eta is set at the first step so that the largest predicted |Delta log pi| is this many "
                "nats (a 'small step' in the model's own scale); eta then stays fixed"})
    n_steps: int = field(default=3, metadata={"help": "successive steps, each on the next training pair"})
    sweep_factors: tuple[float, ...] = field(default=(0.25, 1.0, 4.0, 16.0), metadata={
        "help": "the error-vs-eta sweep at the first step uses eta times each factor (slope ~2 expected)"})
    beta: float = field(default=0.1, metadata={"help": "beta of preference losses (ignored by sft)"})
    dtype: str = field(default="float64", metadata={"help": "dtype of the model copy the check runs in"})
    chunk_size: int = field(default=256, metadata={"help": "observed sequences per forward / JVP chunk"})
    trainable_only: bool = field(default=True, metadata={
        "help": "differentiate only the parameters that train (requires_grad): the kernel a LoRA run has; with "
                "every parameter trainable this is the full computation"})

    def __post_init__(self) -> None:
        get_loss(self.loss)
        if not self.eta > 0 or not all(f > 0 for f in self.sweep_factors) or len(set(self.sweep_factors)) < 2:
            raise ValueError(f"Prop1Config: eta and >= 2 distinct sweep_factors must be > 0, got {self.eta}, "
                             f"{self.sweep_factors}")
        if self.target_change < 0:
            raise ValueError(f"Prop1Config: target_change must be >= 0, got {self.target_change}")
        if self.n_steps < 1 or self.chunk_size < 1:
            raise ValueError(f"Prop1Config: n_steps and chunk_size must be >= 1, got {self.n_steps}, "
                             f"{self.chunk_size}")


@dataclass(frozen=True)
class Prop1Result:
    """Predicted vs measured change of every observed response over ``n_steps`` steps and an eta sweep.

    Attributes:
        predicted, measured: (S, N_o) change of summed log-probs (new minus old; predicted includes the minus sign).
        probe_types: (N_o,) probe type of each observed response.
        correlation, relative_error: Pearson r and ||measured - predicted|| / ||measured|| over all S * N_o.
        sweep_etas, sweep_errors, sweep_correlations: the first-step sweep, error = ||measured - predicted||.
        slope: least-squares slope of log error vs log eta (Prop. 1 predicts 2).
    """

    loss: str
    eta: float
    probe_types: tuple[str, ...]
    predicted: np.ndarray
    measured: np.ndarray
    correlation: float
    relative_error: float
    sweep_etas: tuple[float, ...]
    sweep_errors: tuple[float, ...]
    sweep_correlations: tuple[float, ...]
    slope: float

    def summary(self) -> dict[str, Any]:
        """Return the scalar results (no arrays) as a JSON-ready dict."""
        return {"loss": self.loss, "eta": self.eta, "n_steps": int(self.predicted.shape[0]),
                "n_observed": int(self.predicted.shape[1]), "correlation": self.correlation,
                "relative_error": self.relative_error, "sweep_etas": list(self.sweep_etas),
                "sweep_errors": list(self.sweep_errors), "sweep_correlations": list(self.sweep_correlations),
                "slope": self.slope}


def observed_batch(tokenizer, probes: Sequence[dict[str, str]], probe_types: Sequence[str],
                   policy: TruncationPolicy = TruncationPolicy()) -> tuple[EncodedBatch, tuple[str, ...]]:
    """Encode every (prompt, probe response) of ``probes`` into one right-padded batch.

    Args:
        probes: records with ``prompt`` and the probe keys; empty or missing responses are skipped.
        probe_types: which keys to observe (e.g. ``chosen``, ``rejected``, ``irr_hum``).

    Returns:
        (batch with N_o = probes x types rows, probe type of each row).
    """
    seqs, kinds = [], []
    for i, rec in enumerate(probes):
        for key in probe_types:
            if rec.get(key):
                seqs.append(encode_sequence(tokenizer, rec["prompt"], rec[key], policy, where=f"probe {i} {key}"))
                kinds.append(key)
    if not seqs:
        raise ValueError(f"no non-empty responses of types {list(probe_types)} in {len(probes)} probes")
    return collate(seqs, tokenizer.pad_token_id), tuple(kinds)


def loss_gradient(model: torch.nn.Module, params: dict[str, torch.Tensor], chosen: EncodedBatch,
                  rejected: EncodedBatch | None, loss: str, ref: tuple[torch.Tensor, torch.Tensor | None],
                  **hparams: float) -> dict[str, torch.Tensor]:
    """Return grad_theta of the batch-mean loss on the updated pair(s), one tensor per parameter.

    Args:
        chosen, rejected: (N_u, L) encoded updated pairs (rejected None for single-response losses).
        ref: reference summed log-probs (ref_chosen (N_u,), ref_rejected (N_u,) or None).
    """
    spec = get_loss(loss)
    names = list(params)
    leaves = [params[n].detach().requires_grad_(True) for n in names]

    def objective(*ps: torch.Tensor) -> torch.Tensor:
        p = dict(zip(names, ps))
        lp_c = summed_logps(model, p, chosen)
        lp_r = summed_logps(model, p, rejected) if spec.paired else None
        return compute_loss(loss, chosen_logps=lp_c, rejected_logps=lp_r, ref_chosen_logps=ref[0],
                            ref_rejected_logps=ref[1], chosen_lengths=chosen.response_lengths,
                            rejected_lengths=None if rejected is None else rejected.response_lengths,
                            **hparams).mean()

    grads = torch.autograd.grad(objective(*leaves), leaves, allow_unused=True)
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)}


def predicted_change(model: torch.nn.Module, params: dict[str, torch.Tensor], observed: EncodedBatch,
                     gradient: dict[str, torch.Tensor], eta: float, chunk_size: int = 256) -> torch.Tensor:
    """Return (N_o,) -eta <grad log pi(y_o | x_o), grad L>: Prop. 1's first-order change, minus sign included.

    Math: Delta log pi(y_o | chi_o) ~= -eta J_o g, with J_o g computed as a JVP along g.
    References: PAPER.md section 2, "cheap exact first-order form".
    """
    out = []
    for (part,) in batch_chunks(observed, chunk_size):
        _, tangent = jvp(lambda p: summed_logps(model, p, part), (params,), (gradient,))
        out.append(tangent)
    return -eta * torch.cat(out).cpu()


def measured_change(model: torch.nn.Module, params: dict[str, torch.Tensor], observed: EncodedBatch,
                    gradient: dict[str, torch.Tensor], eta: float, chunk_size: int = 256) -> torch.Tensor:
    """Return (N_o,) log pi after the SGD step theta - eta g minus log pi before it (summed over tokens)."""
    stepped = {n: params[n] - eta * gradient[n] for n in params}
    with torch.no_grad():
        before = torch.cat([summed_logps(model, params, c) for (c,) in batch_chunks(observed, chunk_size)])
        after = torch.cat([summed_logps(model, stepped, c) for (c,) in batch_chunks(observed, chunk_size)])
    return (after - before).cpu()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def run_prop1(model: torch.nn.Module, tokenizer, pairs: Sequence[dict[str, str]], probes: Sequence[dict[str, str]],
              probe_types: Sequence[str], cfg: Prop1Config = Prop1Config(),
              policy: TruncationPolicy = TruncationPolicy()) -> Prop1Result:
    """Check Proposition 1 over ``cfg.n_steps`` real SGD steps and an eta sweep; ``model`` is left untouched.

    Args:
        model: a causal LM; a copy in ``cfg.dtype`` with dropout off is used.
        pairs: updated examples with prompt/chosen/rejected; step s trains on pair s (cycling).
        probes: observed records (prompt and probe keys); every probe type of every record is observed.
        probe_types: the probe keys to observe.

    Returns:
        A Prop1Result with predicted and measured changes of shape (S, N_o).
    """
    if not pairs:
        raise ValueError("run_prop1 needs at least one training pair to update on")
    spec = get_loss(cfg.loss)
    work = copy.deepcopy(model).to(getattr(torch, cfg.dtype)).eval()
    with full_precision(work):  # float64 all the way through, or the remainder hits a float32 floor
        params = (trainable_parameters(work) if cfg.trainable_only else
                  {n: p.detach().clone() for n, p in work.named_parameters()})
        device = next(work.parameters()).device
        observed, kinds = observed_batch(tokenizer, probes, probe_types, policy)
        observed = observed.to(device)
        hparams = {"beta": cfg.beta} if "beta" in spec.defaults else {}

        def encoded(pair: dict[str, str]) -> tuple[EncodedBatch, EncodedBatch | None]:
            c = collate([encode_sequence(tokenizer, pair["prompt"], pair["chosen"], policy)], tokenizer.pad_token_id)
            r = collate([encode_sequence(tokenizer, pair["prompt"], pair["rejected"], policy)],
                        tokenizer.pad_token_id) if spec.paired else None
            return c.to(device), None if r is None else r.to(device)

        # Reference log-probs of the initial model, computed once (they never change).
        refs = []
        with torch.no_grad():
            for s in range(cfg.n_steps):
                c, r = encoded(pairs[s % len(pairs)])
                refs.append((summed_logps(work, params, c) if spec.uses_reference else None,
                             summed_logps(work, params, r) if spec.uses_reference and r is not None else None))

        eta = cfg.eta
        predicted, measured = [], []
        sweep_err, sweep_corr = [], []
        for s in range(cfg.n_steps):
            c, r = encoded(pairs[s % len(pairs)])
            g = loss_gradient(work, params, c, r, cfg.loss, refs[s], **hparams)
            if s == 0:
                if cfg.target_change > 0:
                    unit = predicted_change(work, params, observed, g, 1.0, cfg.chunk_size).abs().max().item()
                    eta = cfg.target_change / max(unit, 1e-300)
                etas = tuple(eta * f for f in cfg.sweep_factors)
                for sweep_eta in etas:
                    p = predicted_change(work, params, observed, g, sweep_eta, cfg.chunk_size).numpy()
                    m = measured_change(work, params, observed, g, sweep_eta, cfg.chunk_size).numpy()
                    sweep_err.append(float(np.linalg.norm(m - p)))
                    sweep_corr.append(_pearson(p, m))
            predicted.append(predicted_change(work, params, observed, g, eta, cfg.chunk_size).numpy())
            measured.append(measured_change(work, params, observed, g, eta, cfg.chunk_size).numpy())
            params = {n: params[n] - eta * g[n] for n in params}

        pred, meas = np.stack(predicted), np.stack(measured)  # (S, N_o)
        slope = loglog_slope(etas, np.maximum(np.asarray(sweep_err), 1e-300))
        rel = float(np.linalg.norm(meas - pred) / max(np.linalg.norm(meas), 1e-300))
        return Prop1Result(cfg.loss, eta, kinds, pred, meas, _pearson(pred, meas), rel, etas,
                           tuple(sweep_err), tuple(sweep_corr), slope)


def save_prop1(result: Prop1Result, out_dir: str | Path, name: str | None = None) -> Path:
    """Write ``prop1_<loss>.json`` (summary, probe types and the (S, N_o) arrays) into ``out_dir``."""
    path = Path(out_dir) / f"{name or 'prop1_' + result.loss}.json"
    write_json(path, {**result.summary(), "probe_types": list(result.probe_types),
                      "predicted": result.predicted, "measured": result.measured})
    return path


def plot_prop1(results: Sequence[Prop1Result]):
    """Return a Figure: predicted vs measured scatter per loss (coloured by probe type) and error vs eta."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results) + 1, figsize=(4.2 * (len(results) + 1), 3.8))
    for ax, res in zip(axes, results):
        types = sorted(set(res.probe_types))
        cmap = plt.get_cmap("tab20", len(types))
        kinds = np.asarray(res.probe_types)
        for k, t in enumerate(types):
            cols = kinds == t
            ax.scatter(res.predicted[:, cols].ravel(), res.measured[:, cols].ravel(), s=8, color=cmap(k), label=t)
        lo = float(min(res.predicted.min(), res.measured.min()))
        hi = float(max(res.predicted.max(), res.measured.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{res.loss}: eta={res.eta:g}, r={res.correlation:.4f}", fontsize=9)
        ax.set_xlabel("predicted Delta log pi (summed, -eta <grad, grad>)", fontsize=8)
        ax.set_ylabel("measured Delta log pi (summed)", fontsize=8)
    axes[0].legend(fontsize=6, ncol=2)
    ax = axes[-1]
    for res in results:
        ax.loglog(res.sweep_etas, res.sweep_errors, "o-", label=f"{res.loss} (slope {res.slope:.2f})")
    ax.set_xlabel("eta")
    ax.set_ylabel("||measured - predicted||")
    ax.set_title("remainder vs step size (Prop. 1: slope 2)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
