"""Explain a run: attribute every probe's per-step change to the loss's terms along the REAL optimizer update.

For the step theta_t -> theta_{t+1} = theta_t + Delta theta_t the first-order change of an observed log-prob is

    Delta log pi(y_o | x_o) ~= < grad_theta log pi(y_o | x_o), Delta theta_t >          (Prop. 1 along the real step)

and Delta theta_t is split exactly into the parts due to each term of the loss. The loss gradient is a sum over the
responses it flows through, g = sum_k g_k with g_k = sum_i (dL/d lp_k,i) grad lp_k,i (k = "y+" pull through the
chosen log-probs, "y-" push through the rejected ones; the reference and KL parts of DPO-family losses enter as the
weights dL/dlp, they have no gradient of their own). A loss that adds an NLL term on y+ to a preference term (rpo,
orpo: ``toykit.losses.LossSpec.nll``) has that term as its own, "y+ (NLL)", with the weights dL_nll/d lp+; the
y+ pull is then the rest of y+'s gradient (the preference term's). Optimizers are linear in g given their preconditioner, so each
term keeps its own momentum buffer and the update splits into one direction per term:

- SGD: d_k = -eta b_k with b_k = mu b_k + (1 - tau) g_k (b_k = g_k without momentum); weight decay is its own term;
- AdamW: m_k = beta1 m_k + (1 - beta1) g_k, d_k = -(eta / (1 - beta1^t)) m_k / (sqrt(v_t / (1 - beta2^t)) + eps)
  with the optimizer's own second moment v_t (shared, the preconditioner), plus -eta lambda theta_t (decoupled decay);
- RMSprop: d_k = -eta b_k with b_k = mu b_k + g_k / (sqrt(v_t) + eps) (b_k = g_k / (...) without momentum).

The per-term gradients g_k come from the engine's own step (``llm.hooks.ResponseSplit``: one backward pass per
response, their parts summing to the step's p.grad), so no forward or backward pass is recomputed at theta_t.

Windows (``every`` = W steps, ``--explain-every``): the split runs at every step (the per-term momentum buffers
need every g_k), the directions are summed per term over the window, D_k = sum_{t in window} d_k,t, and the
first-order change is taken once per window at its start theta_t0:

    log pi_o(theta_t0+W) - log pi_o(theta_t0) ~= < grad_theta log pi_o(theta_t0), theta_t0+W - theta_t0 >
                                               = sum_k < grad_theta log pi_o(theta_t0), D_k >

With W = 1 this is the per-step attribution. The optimizer remainder (theta_t0+W - theta_t0) - sum_k D_k (float
rounding of the optimizer's arithmetic, ~1e-7 of the update; its relative norm is saved per window) is added to
the LAST term's direction, so the terms sum exactly to the prediction along the real update without a JVP of its
own. Each term costs one tangent of one forward-mode pass over the probe sequences
(``llm.linearize.directional_changes``; the primal, shared by all tangents, gives log pi_o(theta_t0)): the measured
change is log pi_o(theta_t0+W) - log pi_o(theta_t0) and the residual is measured minus predicted. With the run's
``probe_mode shared`` (the default) each probe prompt runs once in that pass and all its probe rows (one per probe
type, and the argmax) continue from its key/value cache (checked against one sequence per row at the start; meta.json says which path ran).

Saved with the run under ``explain/``: attribution.npz (values (W+1, N_o), contributions (W, K, N_o), the windows'
last steps) and meta.json (probe type and prompt of every observed row, terms, the window, fit per window); for
reference-based preference losses also pairs.csv, the pair diagnostics of the first training pairs
(``llm.pair_diagnostics``: CHES, its variants, the eNTK one-step change of y+, and the change of y+ measured over the
run where the pair is a probe), with their rank correlations in meta.json. ``llm.explain_report`` reads them.

References: Ren & Sutherland, ICLR 2025, Prop. 1 (PAPER.md section 2); Loshchilov & Hutter 2019 (AdamW).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.func import functional_call

from llm.attribution_record import pearson, write_attribution
from llm.encoding import EncodedBatch, collate, encode_sequence
from llm.linearize import directional_changes, sharing_problem
from llm.objective import EXTEND, NLL_PART, batch_loss, make_pair_batch
from llm.update_split import WEIGHT_DECAY, UpdateSplit

__all__ = ["AttributionHook", "observed_probes", "term_gradients", "UpdateSplit", "WEIGHT_DECAY", "NLL_TERM",
           "term_names",
           "pearson", "write_attribution"]  # these two live in llm.attribution_record, UpdateSplit in llm.update_split

ARGMAX = "argmax_teacher_forced"  # the engine's ARGMAX_PROBE (llm.probes), scored on the y+ prefix
NLL_TERM = "y+ (NLL)"  # an NLL (SFT) term on y+: SFT's only term, and rpo's / orpo's third


def term_names(objective) -> tuple[str, ...]:
    """The loss terms of ``objective``: the responses its gradient flows through, and its NLL term on y+ if any.

    For a loss that adds an NLL term to a preference term (rpo, orpo) the "y+ pull" is the preference term's
    gradient through y+ and "y+ (NLL)" the NLL term's (the name SFT's only term has: the same gradient).
    """
    if objective.loss == EXTEND:
        return ("y+ (NLL)", "y- (NLL)")
    if not objective.needs_rejected:
        return (NLL_TERM,) if objective.loss == "sft" else ("y+ pull",)
    return ("y+ pull", "y- push", NLL_TERM) if objective.has_nll_term else ("y+ pull", "y- push")


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
    log-probs; for a loss with an NLL term (rpo, orpo) y+'s weight splits into the NLL term's dL_nll/d lp+ (the
    term "y+ (NLL)") and the rest (the "y+ pull"); sum_k g_k = grad_theta mean_i L_i.
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
        weights = list(torch.autograd.grad(losses.sum() / len(indices), lps, retain_graph=True))  # dL/dlp_k, (N,)
        if part.get(NLL_PART) is not None:  # the NLL term's weights, taken out of y+'s: the pull is the rest
            nll = torch.autograd.grad(part[NLL_PART].sum() / len(indices), lps[0], retain_graph=True)[0]
            weights[0] = weights[0] - nll
            lps, weights = lps + [lps[0]], weights + [nll]
        for k, (term, lp, w) in enumerate(zip(terms, lps, weights)):
            g = torch.autograd.grad((w.detach() * lp).sum(), [leaves[n] for n in names],
                                    retain_graph=k + 1 < len(terms), allow_unused=True)
            for n, gn in zip(names, g):
                if gn is not None:
                    grads[term][n] += gn
    return grads


class AttributionHook:
    """The engine hook (llm.hooks) that attributes every probe's change over a run; see the module docstring.

    Args:
        num_prompts: the first probe prompts of the run's probe set to attribute (every probe type of each).
        every: the attribution window in optimizer steps (1: every step). The update is split into its terms at
            every step (per-term momentum buffers need every step's gradient); the JVPs run once per window, at the
            window's start theta_t0, along each term's update summed over the window.
        chunk_size: observed sequences per JVP.
        out_name: folder of the run directory the arrays are written to.
        terms: the loss's term names, for a training loop whose ``StepContext.response_gradients`` is keyed by
            them (``llm.rl``: the group objectives' advantage-sign and KL terms); None (the engine): the
            objective's responses (``term_names``), read from the split's "chosen" / "rejected".
    """

    #: ask the engine for the loss gradient split by response (llm.hooks.ResponseSplit)
    wants_response_gradients = True
    #: its state (per-term momentum buffers, open window, record) must come back from the checkpoint
    #: (``state_dict`` / ``load_state_dict``, which llm.training saves and restores); a loop that does not
    #: checkpoint hook states refuses to resume with it (``llm.training._check_resumable``)
    resumable = False

    def __init__(self, num_prompts: int = 16, chunk_size: int = 256, out_name: str = "explain",
                 diagnose_pairs: bool = True, every: int = 1, terms: Sequence[str] | None = None):
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        if every < 1:
            raise ValueError(f"every (the attribution window in steps) must be >= 1, got {every}")
        self.num_prompts, self.chunk_size, self.out_name, self.every = num_prompts, chunk_size, out_name, every
        self.diagnose_pairs = diagnose_pairs
        self.given_terms = tuple(terms) if terms is not None else None
        self.seconds = 0.0

    def on_train_begin(self, run) -> None:
        t0 = time.perf_counter()
        self.run, self.pair_seconds = run, 0.0
        device = next(run.model.parameters()).device
        batch, argmax, self.kinds, self.owners = observed_probes(run.probes, run.tokenizer, run.policy,
                                                                 self.num_prompts)
        self.observed, self.argmax = batch.to(device), argmax.to(device)
        self.terms = self.given_terms or term_names(run.objective)
        self.split = UpdateSplit(run.optimizer, self.terms)
        self.pad, self.share, self.sharing = run.tokenizer.pad_token_id, False, "probe_mode full"
        if getattr(run.cfg, "probe_mode", "full") == "shared":  # the probes' own mode: each prompt run once
            was_training = run.model.training
            run.model.eval()
            params = {n: p.detach() for n, p in run.model.named_parameters() if p.requires_grad}
            problem = sharing_problem(run.model, params, self.observed, self.argmax, self.pad)
            run.model.train(was_training)
            self.share, self.sharing = problem is None, problem or "shared"
        self.values, self.contributions, self.steps, self.lrs, self.remainder_norms = [], [], [], [], []
        self.window_starts, self.names = [], self.terms
        self.start, self.sums = None, None  # theta_t0 of the open window and each term's summed direction
        self.pairs, self.finished = None, False
        resumed = getattr(run, "start_step", 0) > 0  # the pairs' diagnostics at the start come from the checkpoint
        if self.diagnose_pairs and not resumed and run.rejected is not None and run.objective.needs_reference:
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

    def _term_grads(self, ctx) -> dict[str, dict[str, torch.Tensor]]:
        """Each term's raw gradient at theta_t: the engine's per-response split, or recomputed when it has none."""
        if ctx.response_gradients is None and self.given_terms is not None:
            raise ValueError("an attribution with its own terms needs the loop's per-term gradients "
                             "(StepContext.response_gradients keyed by the term names)")
        if ctx.response_gradients is None:  # a loop without the split: a forward and a backward per term, eval mode
            was_training = ctx.model.training
            ctx.model.eval()
            try:
                return term_gradients(ctx.model, ctx.params_before, self.run, ctx.indices)
            finally:
                ctx.model.train(was_training)
        out = {}
        keys = self.given_terms or ("chosen", "rejected", NLL_PART)  # llm.hooks' keys, term_names' order
        for term, response in zip(self.terms, keys):
            got = ctx.response_gradients.get(response, {})
            out[term] = {n: got[n] if n in got else torch.zeros_like(t) for n, t in ctx.params_before.items()}
        return out

    def on_step(self, ctx) -> None:
        t0 = time.perf_counter()
        max_norm = self.run.cfg.max_grad_norm
        clip = min(1.0, max_norm / (ctx.grad_norm + 1e-6)) if max_norm else 1.0  # torch's clip_grad_norm_
        grads = self._term_grads(ctx)
        with torch.no_grad():
            dirs = self.split.flat_directions(ctx, grads, clip)  # term -> (P,)
            if self.start is None:  # a window opens at theta_t (the engine's clone; kept, not copied)
                self.start, self.start_step, self.sums = ctx.params_before, ctx.step - 1, dirs
            else:
                for t, d in dirs.items():
                    self.sums[t].add_(d)
        self.lrs.append(ctx.lr)
        self.last_step = ctx.step
        if ctx.step - self.start_step >= self.every or ctx.step >= self.run.total_steps:
            self._close_window(ctx.model, ctx.step)
        self.seconds += time.perf_counter() - t0

    def _close_window(self, model: torch.nn.Module, step: int) -> None:
        """JVPs at the window's start along each term's summed update; the remainder joins the last term."""
        split = self.split
        now = dict(model.named_parameters())
        with torch.no_grad():
            update = split.flatten([now[n].detach() - self.start[n] for n in split.names])  # theta_t1 - theta_t0
            rest = update - sum(self.sums.values())  # the optimizer's rounding, ~1e-7 of the update
            rem = float(rest.double().norm()) / max(float(update.double().norm()), 1e-300)
            last = list(self.sums)[-1]
            self.sums[last].add_(rest)  # the terms now sum to the real update exactly
            dirs = {t: split.unflatten(d) for t, d in self.sums.items()}
        was_training = model.training
        model.eval()
        try:
            values, changes = directional_changes(model, self.start, self.observed, list(dirs.values()),
                                                  self.argmax, self.chunk_size, self.share, self.pad)
        finally:
            model.train(was_training)
        self.names = tuple(dirs)
        self.values.append(values.double().cpu().numpy())
        self.contributions.append(changes.double().cpu().numpy())
        self.steps.append(step), self.window_starts.append(self.start_step), self.remainder_norms.append(rem)
        self.start = self.sums = None

    #: what ``state_dict`` saves: the record so far, the open window, the per-term buffers, the start's diagnostics
    _STATE = ("values", "contributions", "steps", "window_starts", "remainder_norms", "lrs", "names", "start",
              "start_step", "sums", "last_step", "seconds", "pair_seconds", "share", "sharing", "finished")

    def state_dict(self) -> dict:
        """The attribution's state for a checkpoint (tensors and plain data only: ``torch.load(weights_only)``)."""
        state = {name: getattr(self, name, None) for name in self._STATE}
        state["values"] = [torch.from_numpy(v) for v in self.values]  # numpy arrays are not plain data
        state["contributions"] = [torch.from_numpy(c) for c in self.contributions]
        state["names"], state["buffers"] = list(self.names), dict(self.split.buffers)
        state["pairs"] = None if self.pairs is None else {c: self.pairs[c].tolist() for c in self.pairs.columns}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict``'s state (a resumed run; after ``on_train_begin``)."""
        device = self.observed.input_ids.device
        for name in self._STATE:
            setattr(self, name, state[name])
        self.values = [v.numpy() for v in state["values"]]
        self.contributions = [c.numpy() for c in state["contributions"]]
        self.names = tuple(state["names"])
        self.split.buffers = {t: b.to(device) for t, b in state["buffers"].items()}
        if self.start is not None:
            self.start = {n: t.to(device) for n, t in self.start.items()}
            self.sums = {t: d.to(device) for t, d in self.sums.items()}
        if state["pairs"] is not None:
            import pandas as pd

            self.pairs = pd.DataFrame(state["pairs"])

    def on_train_end(self, run) -> None:
        if self.finished:  # resumed after the end checkpoint: the record is complete, write it again
            self.save(run.run_dir / self.out_name)
            return
        t0 = time.perf_counter()
        model = run.model
        if self.start is not None:  # a run stopped inside a window (stop_after_steps, the squeeze alarm)
            self._close_window(model, self.last_step)
        if not self.steps:
            return
        was_training = model.training
        model.eval()
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        final, _ = directional_changes(model, params, self.observed, [], self.argmax, self.chunk_size, self.share,
                                       self.pad)  # no direction: the observed log-probs alone, without gradients
        model.train(was_training)
        self.values.append(final.double().cpu().numpy())
        self.seconds += time.perf_counter() - t0
        self.finished = True
        self.save(run.run_dir / self.out_name)

    def save(self, out_dir: Path) -> Path:
        """Write attribution.npz and meta.json (fit per window and the hook's own seconds) into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        values = np.stack(self.values)  # (W+1, N_o), W windows
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
                                 optimizer=self.split.kind, loss=self.run.objective.loss, every=self.every,
                                 window_starts=self.window_starts,
                                 extra={"seconds": self.seconds, "pair_seconds": self.pair_seconds,
                                        "share_prompts": self.share, "prompt_sharing": self.sharing,
                                        "remainder_folded_into": self.names[-1], **pairs_meta})
