"""Explain a run: attribute every probe's per-step change to the loss's terms along the REAL optimizer update.

For the step theta_t -> theta_{t+1} = theta_t + Delta theta_t the first-order change of an observed log-prob is

    Delta log pi(y_o | x_o) ~= < grad_theta log pi(y_o | x_o), Delta theta_t >          (Prop. 1 along the real step)

and Delta theta_t is split exactly into the parts due to each term of the loss. The loss gradient is a sum over the
responses it flows through, g = sum_k g_k with g_k = sum_i (dL/d lp_k,i) grad lp_k,i (k = "y+" pull through the
chosen log-probs, "y-" push through the rejected ones; the reference and KL parts of DPO-family losses enter as the
weights dL/dlp, they have no gradient of their own). Optimizers are linear in g given their preconditioner, so each
term keeps its own momentum buffer and the update splits into one direction per term:

- SGD: d_k = -eta b_k with b_k = mu b_k + (1 - tau) g_k (b_k = g_k without momentum); weight decay is its own term;
- AdamW: m_k = beta1 m_k + (1 - beta1) g_k, d_k = -(eta / (1 - beta1^t)) m_k / (sqrt(v_t / (1 - beta2^t)) + eps)
  with the optimizer's own second moment v_t (shared, the preconditioner), plus -eta lambda theta_t (decoupled decay);
- RMSprop: d_k = -eta b_k with b_k = mu b_k + g_k / (sqrt(v_t) + eps) (b_k = g_k / (...) without momentum).

"optimizer remainder" = Delta theta_t - sum_k d_k (float rounding of the optimizer's arithmetic; ~0) is kept as a
term too, so the contributions sum to the prediction along the real update. Each direction costs one JVP over the
probe sequences (``llm.linearize.directional_changes``), whose primal output is log pi_o(theta_t): the measured
change is log pi_o(theta_{t+1}) - log pi_o(theta_t) and the residual is measured minus predicted.

Saved with the run under ``explain/``: attribution.npz (values (S+1, N_o), contributions (S, K, N_o)) and
meta.json (probe type and prompt of every observed row, terms, per-step fit); for reference-based preference losses
also pairs.csv, the pair diagnostics of the first training pairs (``llm.pair_diagnostics``: CHES, its variants, the
eNTK one-step change of y+, and the change of y+ measured over the run where the pair is a probe), with their rank
correlations in meta.json. ``llm.explain_report`` reads them.

References: Ren & Sutherland, ICLR 2025, Prop. 1 (PAPER.md section 2); Loshchilov & Hutter 2019 (AdamW).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.func import functional_call

from llm.encoding import EncodedBatch, collate, encode_sequence
from llm.linearize import batch_chunks, directional_changes, observed_logps
from llm.objective import EXTEND, batch_loss, make_pair_batch
from toykit.runs import write_json

__all__ = ["AttributionHook", "observed_probes", "term_gradients", "UpdateSplit", "REMAINDER", "WEIGHT_DECAY",
           "term_names", "pearson", "write_attribution"]

ARGMAX = "argmax_teacher_forced"  # the engine's ARGMAX_PROBE (llm.probes), scored on the y+ prefix
REMAINDER = "optimizer remainder"
WEIGHT_DECAY = "weight decay"


def term_names(objective) -> tuple[str, ...]:
    """The loss terms of ``objective``: the responses its gradient flows through."""
    if objective.loss == EXTEND:
        return ("y+ (NLL)", "y- (NLL)")
    if not objective.needs_rejected:
        return ("y+ (NLL)",) if objective.loss == "sft" else ("y+ pull",)
    return ("y+ pull", "y- push")


def observed_probes(probes, tokenizer, policy, num_prompts: int
                    ) -> tuple[EncodedBatch, torch.Tensor, tuple[str, ...], np.ndarray]:
    """Encode every probe type of the first ``num_prompts`` prompts, plus the teacher-forced argmax on y+.

    Returns:
        batch (N_o, L); argmax (N_o,) bool rows that score the argmax; probe type (N_o,); prompt index (N_o,).
    """
    n = min(num_prompts, len(probes))
    seqs, kinds, owners, argmax = [], [], [], []
    for probe, responses in probes.responses.items():
        for i in range(n):
            if responses[i] is not None:
                seqs.append(encode_sequence(tokenizer, probes.prompts[i], responses[i], policy,
                                            f"{probes.source} probe {i} ({probe})"))
                kinds.append(probe), owners.append(i), argmax.append(False)
    for i in range(n):
        seqs.append(encode_sequence(tokenizer, probes.prompts[i], probes.responses["chosen"][i], policy))
        kinds.append(ARGMAX), owners.append(i), argmax.append(True)
    return (collate(seqs, tokenizer.pad_token_id), torch.tensor(argmax), tuple(kinds), np.asarray(owners))


class _AtParams(torch.nn.Module):
    """``model`` evaluated at the parameter dict ``params`` (so the engine's batch_loss runs at theta_t)."""

    def __init__(self, model: torch.nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self.inner, self.values = [model], params  # a list: not registered as a submodule

    def forward(self, *args, **kwargs):
        return functional_call(self.inner[0], self.values, args, kwargs)

    def parameters(self, recurse: bool = True):
        return iter(self.values.values())


def term_gradients(model: torch.nn.Module, params: dict[str, torch.Tensor], run, indices: Sequence[int]
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """Return each loss term's gradient g_k of the batch-mean loss at ``params`` (theta_t), before clipping.

    Args:
        run: the RunContext of the engine (encoded pairs, references, objective).
        indices: the step's pairs; the loss is their mean, as in the engine's step (whatever the accumulation).

    Math: g_k = sum_i (dL_i/d lp_k,i) grad lp_k,i / N, with lp_k the chosen (k = y+) or rejected (k = y-) summed
    log-probs; sum_k g_k = grad_theta mean_i L_i.
    """
    names = tuple(params)
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}
    bound = _AtParams(model, leaves)
    terms = term_names(run.objective)
    grads = {t: {n: torch.zeros_like(params[n]) for n in names} for t in terms}
    size = run.cfg.batch_size
    for start in range(0, len(indices), size):
        micro = list(indices[start: start + size])
        batch = make_pair_batch(micro, run.chosen, run.rejected, run.tokenizer.pad_token_id)
        batch = type(batch)(batch.indices, batch.sequences.to(params[names[0]].device), batch.paired)
        losses, part = batch_loss(bound, batch, run.objective,
                                  ref_chosen=None if run.ref_chosen is None else run.ref_chosen[micro],
                                  ref_rejected=None if run.ref_rejected is None else run.ref_rejected[micro],
                                  ref_model=run.ref_model)
        lps = [part["logps_chosen"], part["logps_rejected"]][: len(terms)]
        weights = torch.autograd.grad(losses.sum() / len(indices), lps, retain_graph=True)  # dL/dlp_k, (N,) each
        for k, (term, lp, w) in enumerate(zip(terms, lps, weights)):
            g = torch.autograd.grad((w.detach() * lp).sum(), [leaves[n] for n in names],
                                    retain_graph=k + 1 < len(terms), allow_unused=True)
            for n, gn in zip(names, g):
                if gn is not None:
                    grads[term][n] += gn
    return grads


class UpdateSplit:
    """Per-term update directions of a torch SGD / AdamW / RMSprop step, with one momentum buffer per term."""

    def __init__(self, optimizer: torch.optim.Optimizer, terms: Sequence[str]):
        kind = type(optimizer).__name__
        if kind not in ("SGD", "AdamW", "RMSprop"):
            raise ValueError(f"explain splits SGD, AdamW and RMSprop updates, not {kind}")
        group = optimizer.param_groups[0]
        if len(optimizer.param_groups) > 1 or group.get("amsgrad") or group.get("centered") or group.get("maximize"):
            raise ValueError("explain needs one parameter group without amsgrad / centered / maximize")
        self.kind, self.group, self.optimizer, self.terms = kind, group, optimizer, tuple(terms)
        self.buffers: dict[str, dict[str, torch.Tensor]] = {t: {} for t in self.terms + (WEIGHT_DECAY,)}

    def _buffer(self, term: str, name: str, like: torch.Tensor) -> torch.Tensor:
        return self.buffers[term].setdefault(name, torch.zeros_like(like))

    def directions(self, ctx, grads: dict[str, dict[str, torch.Tensor]], clip: float
                   ) -> dict[str, dict[str, torch.Tensor]]:
        """Return term -> parameter name -> d_k (the term's part of Delta theta_t), remainder included.

        Args:
            ctx: the engine's StepContext (theta_t, the model at theta_{t+1}, the optimizer after its step).
            grads: the terms' raw gradients at theta_t (``term_gradients``).
            clip: the gradient-clipping factor the step applied (1 without clipping).
        """
        g, wd, lr = self.group, float(self.group["weight_decay"]), ctx.lr
        by_name = dict(ctx.model.named_parameters())
        out: dict[str, dict[str, torch.Tensor]] = {t: {} for t in self.terms}
        decay: dict[str, torch.Tensor] = {}
        for name, theta in ctx.params_before.items():
            state = self.optimizer.state[by_name[name]]
            parts = {t: clip * grads[t][name] for t in self.terms}
            if self.kind == "AdamW":
                b1, b2 = g["betas"]
                step = float(state["step"])
                scale = lr / (1 - b1 ** step)
                denom = state["exp_avg_sq"].sqrt() / (1 - b2 ** step) ** 0.5 + g["eps"]
                for t, gt in parts.items():
                    m = self._buffer(t, name, gt).mul_(b1).add_(gt, alpha=1 - b1)
                    out[t][name] = -scale * m / denom
                decay[name] = -lr * wd * theta
                continue
            if wd:
                parts[WEIGHT_DECAY] = wd * theta
            if self.kind == "RMSprop":
                avg = state["square_avg"].sqrt() + g["eps"]
                parts = {t: gt / avg for t, gt in parts.items()}
            mu = float(g["momentum"])
            for t, gt in parts.items():
                if mu:
                    damp = 1 - g.get("dampening", 0.0) if self.kind == "SGD" and ctx.step > 1 else 1.0
                    b = self._buffer(t, name, gt).mul_(mu).add_(gt, alpha=damp)
                    gt = gt + mu * b if g.get("nesterov") else b
                out.setdefault(t, {})[name] = -lr * gt
        if decay and wd:
            out[WEIGHT_DECAY] = decay
        update = ctx.update()
        out[REMAINDER] = {n: update[n] - sum(out[t][n] for t in out) for n in update}
        return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays (flattened); NaN when either is constant."""
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


class AttributionHook:
    """The engine hook (llm.hooks) that attributes every probe's per-step change of a run; see the module docstring.

    Args:
        num_prompts: the first probe prompts of the run's probe set to attribute (every probe type of each).
        chunk_size: observed sequences per JVP.
        out_name: folder of the run directory the arrays are written to.
    """

    def __init__(self, num_prompts: int = 16, chunk_size: int = 256, out_name: str = "explain",
                 diagnose_pairs: bool = True):
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        self.num_prompts, self.chunk_size, self.out_name = num_prompts, chunk_size, out_name
        self.diagnose_pairs = diagnose_pairs
        self.seconds = 0.0

    def on_train_begin(self, run) -> None:
        t0 = time.perf_counter()
        self.run, self.pair_seconds = run, 0.0
        device = next(run.model.parameters()).device
        batch, argmax, self.kinds, self.owners = observed_probes(run.probes, run.tokenizer, run.policy,
                                                                 self.num_prompts)
        self.observed, self.argmax = batch.to(device), argmax.to(device)
        self.terms = term_names(run.objective)
        self.split = UpdateSplit(run.optimizer, self.terms)
        self.values, self.contributions, self.steps, self.lrs, self.remainder_norms = [], [], [], [], []
        self.pairs = None
        if self.diagnose_pairs and run.rejected is not None and run.objective.needs_reference:
            from llm.pair_diagnostics import pair_diagnostics

            n = min(self.num_prompts, len(run.chosen))
            self.pairs = pair_diagnostics(run.model, run.chosen[:n], run.rejected[:n], run.tokenizer.pad_token_id,
                                          beta=run.objective.beta)
            self.pairs["is_probe"] = [self._probe_row(run, i) is not None for i in range(n)]
        self.pair_seconds = time.perf_counter() - t0

    def _probe_row(self, run, i: int) -> int | None:
        """The observed y+ row of training pair ``i`` when that pair is also a probe prompt, else None."""
        for row, (kind, owner) in enumerate(zip(self.kinds, self.owners)):
            if kind == "chosen" and owner == i:
                ids = self.observed.input_ids[row][self.observed.attention_mask[row].bool()].tolist()
                seq = run.chosen[i]
                return row if ids == list(seq.prompt_ids) + list(seq.response_ids) else None
        return None

    def on_step(self, ctx) -> None:
        t0 = time.perf_counter()
        model, run = ctx.model, self.run
        was_training = model.training
        model.eval()
        try:
            grads = term_gradients(model, ctx.params_before, run, ctx.indices)
            max_norm = run.cfg.max_grad_norm
            clip = min(1.0, max_norm / (ctx.grad_norm + 1e-6)) if max_norm else 1.0  # torch's clip_grad_norm_
            dirs = self.split.directions(ctx, grads, clip)
            self.names = tuple(dirs)
            values, changes = directional_changes(model, ctx.params_before, self.observed, list(dirs.values()),
                                                  self.argmax, self.chunk_size)
        finally:
            model.train(was_training)
        update = ctx.update()
        total = sum(float(u.double().pow(2).sum()) for u in update.values()) ** 0.5
        rem = sum(float(u.double().pow(2).sum()) for u in dirs[REMAINDER].values()) ** 0.5
        self.values.append(values.double().cpu().numpy())
        self.contributions.append(changes.double().cpu().numpy())
        self.steps.append(ctx.step), self.lrs.append(ctx.lr), self.remainder_norms.append(rem / max(total, 1e-300))
        self.seconds += time.perf_counter() - t0

    def on_train_end(self, run) -> None:
        if not self.steps:
            return
        t0 = time.perf_counter()
        model = run.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
            final = torch.cat([observed_logps(model, params, part, rows) for part, rows in
                               batch_chunks(self.observed, self.chunk_size, self.argmax)])
        model.train(was_training)
        self.values.append(final.double().cpu().numpy())
        self.seconds += time.perf_counter() - t0
        self.save(run.run_dir / self.out_name)

    def save(self, out_dir: Path) -> Path:
        """Write attribution.npz and meta.json (fit per step and the hook's own seconds) into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        values = np.stack(self.values)  # (S+1, N_o)
        pairs_meta = {}
        if self.pairs is not None:
            from llm.pair_diagnostics import rank_correlations

            table = self.pairs.copy()
            rows = [self._probe_row(self.run, int(i)) for i in table["pair"]]
            table["measured_delta_chosen"] = [values[-1, r] - values[0, r] if r is not None else np.nan
                                              for r in rows]
            table.to_csv(out_dir / "pairs.csv", index=False)
            corr = rank_correlations(table.drop(columns=["is_probe"]).dropna(axis=1, how="all"))
            pairs_meta = {"pair_rank_correlations": corr.round(6).to_dict(), "num_pairs": len(table)}
        return write_attribution(out_dir, values=values, contributions=np.stack(self.contributions),
                                 steps=self.steps, learning_rates=self.lrs, remainder_norms=self.remainder_norms,
                                 terms=self.names, probe_types=self.kinds, prompts=self.owners,
                                 optimizer=self.split.kind, loss=self.run.objective.loss,
                                 extra={"seconds": self.seconds, "pair_seconds": self.pair_seconds, **pairs_meta})


def write_attribution(out_dir: Path, *, values: np.ndarray, contributions: np.ndarray, steps: Sequence[int],
                      learning_rates: Sequence[float], remainder_norms: Sequence[float], terms: Sequence[str],
                      probe_types: Sequence[str], prompts: np.ndarray, optimizer: str, loss: str,
                      extra: dict) -> Path:
    """Write attribution.npz and meta.json (``llm.explain_report`` reads them) with the per-step fit.

    Args:
        values: (S+1, N_o) summed log-probs of the observed rows at theta_0 .. theta_S.
        contributions: (S, K, N_o) first-order change of each row due to each of the K ``terms``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    measured, predicted = np.diff(values, axis=0), contributions.sum(axis=1)  # (S, N_o)
    per_step = [pearson(p, m) for p, m in zip(predicted, measured)]
    rel = float(np.linalg.norm(measured - predicted) / max(np.linalg.norm(measured), 1e-300))
    np.savez(out_dir / "attribution.npz", values=values, contributions=contributions, steps=np.asarray(steps),
             learning_rates=np.asarray(learning_rates), remainder_norms=np.asarray(remainder_norms))
    write_json(out_dir / "meta.json", {
        "terms": list(terms), "probe_types": list(probe_types), "prompts": prompts,
        "num_prompts": int(np.max(prompts)) + 1, "optimizer": optimizer, "loss": loss, "steps": len(steps),
        "per_step_correlation": per_step, "median_step_correlation": float(np.nanmedian(per_step)),
        "relative_error": rel, "max_remainder_norm": float(max(remainder_norms)), **extra})
    return out_dir
