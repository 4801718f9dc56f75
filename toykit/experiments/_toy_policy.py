"""A two-context linear-softmax policy trained for many steps, vectorised over a batch of scenarios.

Not an experiment (the leading underscore keeps it out of the registry): the simulator that ``trajectories`` and
``phase-diagram`` share.

The model. In an LLM the tokens of y+ and y- are predicted at different contexts chi+ and chi- (their prefixes
differ), each with its own softmax over V. The toy keeps exactly that: a linear softmax z_c = W x_c with two fixed
unit-norm inputs, x+ (where y+ is scored) and x- (where y- is scored), of cosine ``rho``. Its eNTK is
K(x_c, x_c') = (x_c . x_c') I_V, so one SGD step on W moves the logits exactly by (PAPER.md Proposition 1, exact
here because z is linear in W):

    z+ <- z+ - eta (G+ + rho G-),      z- <- z- - eta (rho G+ + G-),      G_c = dL/dz_c,

with G from autograd of the registry loss (``toykit.losses``) on lp+ = log pi(y+|x+), lp- = log pi(y-|x-).
``rho = 1`` is a single shared softmax (chosen and rejected on the same input); ``rho = 0`` makes the y- context
receive a pure negative gradient (the squeezing setting of PAPER.md section 4). Both contexts start from the same
logits (they share the prompt), and the reference model is the start.

A start is a Zipf profile pi_i proportional to (i + 1)^(-s) over ranks i = 0..V-1 (index = rank at the start):
s = 0 is flat, larger s peakier (s plays the role of an inverse temperature).

On-policy sampling (algorithm names ``"<loss>@on_policy"``): at every step y- is drawn from the current policy at the
rejected context, pi(.|x-), and the pair is skipped (zero weight) when the draw equals y+; y+ stays the dataset's.
Draws use inverse-CDF sampling of uniforms passed in, so a batch and a loop over its scenarios agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from toykit.experiments._common import check_loss_names
from toykit.losses import compute_loss, get_loss
from toykit.progress import report

__all__ = [
    "CONTEXTS", "MASS_GROUPS", "RECORDS", "Algorithm", "parse_algorithms", "zipf_logits", "Scenarios", "Trace",
    "make_scenarios", "loss_gradient", "coupled_update", "simulate", "simulate_one_by_one", "select",
]

CONTEXTS = ("chosen", "rejected")
MASS_GROUPS = ("chosen", "rejected", "peak", "topk", "rest")
RECORDS = ("logp_chosen", "logp_rejected", "logp_argmax", "entropy") + tuple(f"mass_{g}" for g in MASS_GROUPS)
ON_POLICY = "on_policy"
PAD_LOGIT = -1.0e9  # exp(PAD_LOGIT - max z) == 0 in float64: padded labels carry no mass and get no gradient
LOGIT_LIMIT = 1.0e4  # a real logit beyond this means the step size made the scenario diverge (e.g. IPO, large eta)


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm: a registry loss, trained off-policy (dataset y-) or on-policy (y- sampled)."""

    name: str
    loss: str
    on_policy: bool


def parse_algorithms(field: str, names: Sequence[str]) -> tuple[Algorithm, ...]:
    """Parse names ``"<loss>"`` or ``"<loss>@on_policy"``; ValueError names the field and the bad entries."""
    if len(names) == 0:
        raise ValueError(f"{field}: expected at least one algorithm, got none")
    if len(set(names)) != len(names):
        raise ValueError(f"{field}: algorithms must be distinct, got {list(names)}")
    parsed = []
    for name in names:
        loss, sep, mode = str(name).partition("@")
        if sep and mode != ON_POLICY:
            raise ValueError(f"{field}: {name!r} has unknown mode {mode!r}; write '<loss>' or '<loss>@{ON_POLICY}'")
        parsed.append(Algorithm(name=str(name), loss=loss, on_policy=bool(sep)))
    check_loss_names(field, [a.loss for a in parsed])
    for a in parsed:
        if a.on_policy and not get_loss(a.loss).paired:
            raise ValueError(f"{field}: {a.name!r}: on-policy sampling replaces y-, but loss {a.loss!r} uses no y-")
    return tuple(parsed)


def zipf_logits(vocab: int, peakiness: float) -> Tensor:
    """Return start logits whose softmax is the Zipf profile pi_i proportional to (i + 1)^(-s).

    Args:
        vocab: V, the number of labels (>= 2).
        peakiness: s >= 0; 0 gives the flat distribution.

    Returns:
        z: (V,) float64 logits, z_i = -s log(i + 1), sorted from the peak (index 0) down.

    Math: pi_i = (i + 1)^(-s) / sum_j (j + 1)^(-s).
    References: PAPER.md section 4 ("the peakier pi is, the worse").
    """
    if vocab < 2:
        raise ValueError(f"zipf_logits: vocab V must be >= 2, got {vocab}")
    if not peakiness >= 0:
        raise ValueError(f"zipf_logits: peakiness s must be >= 0, got {peakiness}")
    return -peakiness * torch.log(torch.arange(1, vocab + 1, dtype=torch.float64))


@dataclass(frozen=True)
class Scenarios:
    """A batch of S scenarios simulated together (one row each).

    Attributes:
        z0: (S, 2, V) float64 start logits per context (chosen, rejected); labels >= ``vocab`` padded.
        vocab: (S,) int64 number of real labels of each scenario.
        y_chosen: (S,) int64 y+; y_rejected: (S,) int64 the dataset's y-.
        eta: (S,) float64 learning rates.
        algorithm: (S,) int64 index into ``algorithms``.
        algorithms: the algorithms of the batch.
        rho: cosine of x+ and x- (K(x+, x-) = rho I_V), shared by the batch.
        hparams: loss hyperparameters (e.g. beta); each loss receives those it declares.
        chosen_length, rejected_length: |y+| and |y-|, tokens per response, every token of a response predicted
            at an identical context, so lp = |y| log pi(y|x) (summed log-probs, as in the paper).
        topk: how many start-likely labels (after the peak) form the ``topk`` mass group.
    """

    z0: Tensor
    vocab: Tensor
    y_chosen: Tensor
    y_rejected: Tensor
    eta: Tensor
    algorithm: Tensor
    algorithms: tuple[Algorithm, ...]
    rho: float
    hparams: dict[str, float]
    chosen_length: int
    rejected_length: int
    topk: int

    @property
    def size(self) -> int:
        return int(self.z0.shape[0])


def make_scenarios(vocab: Sequence[int], peakiness: Sequence[float], y_chosen: Sequence[int],
                   y_rejected: Sequence[int], eta: Sequence[float], algorithm: Sequence[int],
                   algorithms: tuple[Algorithm, ...], *, rho: float, hparams: dict[str, float],
                   chosen_length: int = 1, rejected_length: int = 1, topk: int = 3) -> Scenarios:
    """Build a padded batch of Zipf starts; ValueError when a label lies outside its scenario's vocabulary."""
    n = len(vocab)
    columns = {"peakiness": peakiness, "y_chosen": y_chosen, "y_rejected": y_rejected, "eta": eta,
               "algorithm": algorithm}
    for key, column in columns.items():
        if len(column) != n:
            raise ValueError(f"make_scenarios: {key} has {len(column)} entries, expected S = {n} (one per scenario)")
    width = max(vocab)
    z0 = torch.full((n, width), PAD_LOGIT, dtype=torch.float64)  # (S, V_max)
    for s, (v, p) in enumerate(zip(vocab, peakiness)):
        z0[s, :v] = zipf_logits(v, p)
    for key, labels in (("y_chosen", y_chosen), ("y_rejected", y_rejected)):
        bad = [(s, y, v) for s, (y, v) in enumerate(zip(labels, vocab)) if not 0 <= y < v]
        if bad:
            raise ValueError(f"make_scenarios: {key} outside [0, V) for (scenario, label, V) = {bad[:3]}")
    if any(a == b for a, b in zip(y_chosen, y_rejected)):
        raise ValueError("make_scenarios: y_chosen equals y_rejected in some scenario; a pair needs two labels")
    return Scenarios(
        z0=z0[:, None, :].repeat(1, 2, 1),  # (S, 2, V): both contexts share the prompt's start
        vocab=torch.tensor(list(vocab), dtype=torch.int64),
        y_chosen=torch.tensor(list(y_chosen), dtype=torch.int64),
        y_rejected=torch.tensor(list(y_rejected), dtype=torch.int64),
        eta=torch.tensor(list(eta), dtype=torch.float64),
        algorithm=torch.tensor(list(algorithm), dtype=torch.int64),
        algorithms=algorithms, rho=float(rho), hparams=dict(hparams), chosen_length=int(chosen_length),
        rejected_length=int(rejected_length), topk=int(topk))


def select(batch: Scenarios, rows: Tensor | Sequence[int]) -> Scenarios:
    """Return the sub-batch of the given scenario rows (used by the loop reference and by tests)."""
    rows = torch.as_tensor(rows, dtype=torch.int64)
    return Scenarios(z0=batch.z0[rows], vocab=batch.vocab[rows], y_chosen=batch.y_chosen[rows],
                     y_rejected=batch.y_rejected[rows], eta=batch.eta[rows], algorithm=batch.algorithm[rows],
                     algorithms=batch.algorithms, rho=batch.rho, hparams=batch.hparams,
                     chosen_length=batch.chosen_length, rejected_length=batch.rejected_length, topk=batch.topk)


def _gather(logp: Tensor, labels: Tensor) -> Tensor:
    return logp.gather(-1, labels[:, None])[:, 0]  # (S,)


def loss_gradient(z: Tensor, y_chosen: Tensor, y_rejected: Tensor, ref_chosen_logps: Tensor,
                  ref_rejected_logps: Tensor, weight: Tensor, algorithm: Tensor,
                  algorithms: tuple[Algorithm, ...], hparams: dict[str, Any], chosen_length: int = 1,
                  rejected_length: int = 1) -> Tensor:
    """Return G = dL/dz of the registry losses by autograd, one loss per scenario.

    Args:
        z: (S, 2, V) logits at the chosen and rejected contexts.
        y_chosen, y_rejected: (S,) labels scored at context 0 and 1.
        ref_chosen_logps, ref_rejected_logps: (S,) reference log-probs of the responses, summed over tokens.
        weight: (S,) per-scenario weight of the loss (0 skips a scenario's step).
        algorithm: (S,) index into ``algorithms``; each group of rows gets its own loss.
        hparams: hyperparameters; each loss receives the ones its registry entry declares.
        chosen_length, rejected_length: |y+|, |y-|; lp = |y| log pi(y|x) (summed over identical tokens).

    Returns:
        G: (S, 2, V) float64, G[:, 0] = dL/dz(x+), G[:, 1] = dL/dz(x-).

    Math: G_c = -(dL/dlp_c) (pi_c - e_{y_c}) (PAPER.md section 3); computed here by autograd.
    References: PAPER.md sections 2-3.
    """
    z = z.detach().requires_grad_(True)
    logp = torch.log_softmax(z, dim=-1)  # (S, 2, V)
    lp_c = chosen_length * _gather(logp[:, 0], y_chosen)  # (S,) summed over |y+| tokens
    lp_r = rejected_length * _gather(logp[:, 1], y_rejected)  # (S,) summed over |y-| tokens
    len_c = torch.full_like(lp_c, float(chosen_length))
    len_r = torch.full_like(lp_r, float(rejected_length))
    total = z.new_zeros(())
    for k, alg in enumerate(algorithms):
        rows = (algorithm == k).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        spec = get_loss(alg.loss)
        kwargs: dict[str, Any] = {"chosen_logps": lp_c[rows], "chosen_lengths": len_c[rows]}
        if spec.paired:
            kwargs.update(rejected_logps=lp_r[rows], rejected_lengths=len_r[rows])
        if spec.uses_reference:
            kwargs["ref_chosen_logps"] = ref_chosen_logps[rows]
            if spec.paired:
                kwargs["ref_rejected_logps"] = ref_rejected_logps[rows]
        kwargs.update({k2: v for k2, v in hparams.items() if k2 in spec.defaults})
        total = total + (compute_loss(alg.loss, **kwargs) * weight[rows]).sum()
    (grad,) = torch.autograd.grad(total, z, allow_unused=True)
    return torch.zeros_like(z) if grad is None else grad


def coupled_update(z: Tensor, grad: Tensor, eta: Tensor, rho: float) -> Tensor:
    """Return the logits after one SGD step of the two-input linear softmax.

    Args:
        z: (S, 2, V) logits; grad: (S, 2, V) G = dL/dz; eta: (S,) learning rates; rho: x+ . x-.

    Returns:
        (S, 2, V) new logits.

    Math: z_c' = z_c - eta sum_c' K(x_c, x_c') G_c' with K = [[1, rho], [rho, 1]] (x) I_V (exact for z = W x).
    References: PAPER.md Proposition 1 (section 2) and section 4 (c = eta ||x||^2 with ||x|| = 1).
    """
    mixed = grad + rho * grad.flip(1)  # (S, 2, V): context c gets G_c + rho G_{other}
    return z - eta[:, None, None] * mixed


def _mass_groups(batch: Scenarios) -> Tensor:
    """Return (S, 2, V, 5) one-hot membership of each label in MASS_GROUPS, fixed at the start."""
    s_idx = torch.arange(batch.size)
    group = torch.full(batch.z0.shape, MASS_GROUPS.index("rest"), dtype=torch.int64)  # (S, 2, V)
    order = batch.z0.argsort(dim=-1, descending=True, stable=True)  # (S, 2, V) labels from most likely down
    special = torch.zeros(batch.z0.shape, dtype=torch.bool)
    special[s_idx, :, batch.y_chosen] = True
    special[s_idx, :, batch.y_rejected] = True
    # rank among the non-special labels, in start order: 0 is the peak, 1..topk the top-k
    ordered_special = special.gather(-1, order)  # (S, 2, V)
    rank_sorted = (~ordered_special).long().cumsum(-1) - 1  # (S, 2, V)
    rank = torch.empty_like(rank_sorted).scatter_(-1, order, rank_sorted)  # (S, 2, V) back to label order
    group[rank == 0] = MASS_GROUPS.index("peak")
    group[(rank >= 1) & (rank <= batch.topk)] = MASS_GROUPS.index("topk")
    group[special] = MASS_GROUPS.index("rest")
    group[s_idx, :, batch.y_rejected] = MASS_GROUPS.index("rejected")
    group[s_idx, :, batch.y_chosen] = MASS_GROUPS.index("chosen")
    padded = torch.arange(batch.z0.shape[-1])[None, None, :] >= batch.vocab[:, None, None]  # (S, 1, V)
    onehot = torch.nn.functional.one_hot(group, len(MASS_GROUPS)).to(torch.float64)  # (S, 2, V, 5)
    return onehot * (~padded)[..., None]


def _measure(z: Tensor, batch: Scenarios, groups: Tensor) -> dict[str, Tensor]:
    """Return each of RECORDS as an (S, 2) tensor (log-probs in nats, single-label responses)."""
    logp = torch.log_softmax(z, dim=-1)  # (S, 2, V)
    pi = logp.exp()
    masses = torch.einsum("scv,scvg->scg", pi, groups)  # (S, 2, 5)
    out = {
        "logp_chosen": logp.gather(-1, batch.y_chosen[:, None, None].expand(-1, 2, 1))[..., 0],  # (S, 2)
        "logp_rejected": logp.gather(-1, batch.y_rejected[:, None, None].expand(-1, 2, 1))[..., 0],  # (S, 2)
        "logp_argmax": logp.max(dim=-1).values,
        "entropy": torch.special.entr(pi).sum(-1),
    }
    out.update({f"mass_{g}": masses[..., i] for i, g in enumerate(MASS_GROUPS)})
    return out


@dataclass(frozen=True)
class Trace:
    """What ``simulate`` recorded.

    Attributes:
        steps: (R,) int64 the recorded steps (0 = the start, the last = T).
        records: name -> (R, S, 2) float64, for each name of RECORDS, at the (chosen, rejected) contexts;
            log-probs are per token (one label), nats.
        diverged_at: (S,) int64 the step at which a scenario's logits left [-LOGIT_LIMIT, LOGIT_LIMIT] (it is
            frozen from then on), or -1 when it never did.
        z_final: (S, 2, V) float64 logits after T steps.
    """

    steps: Tensor
    records: dict[str, Tensor]
    diverged_at: Tensor
    z_final: Tensor


def simulate(batch: Scenarios, steps: int, uniforms: Tensor, record_every: int = 1) -> Trace:
    """Train every scenario of ``batch`` for ``steps`` SGD steps at once, recording RECORDS.

    Args:
        batch: the scenarios (S rows).
        steps: T >= 1.
        uniforms: (T, S) float64 in [0, 1): the draws of on-policy sampling (ignored by off-policy rows).
        record_every: record after every this many steps (and always at 0 and T).

    Returns:
        A Trace with (R, S, 2) records.

    Math: z_{t+1} = z_t - eta K G_t (see ``coupled_update``); on-policy y-_t = min{i : cdf_i(pi_t(.|x-)) > u_t}.
    References: PAPER.md sections 4-5 (squeezing; on-policy variants).
    """
    if uniforms.shape != (steps, batch.size):
        raise ValueError(f"simulate: uniforms must have shape (T, S) = {(steps, batch.size)}, "
                         f"got {tuple(uniforms.shape)}")
    groups = _mass_groups(batch)
    real = torch.arange(batch.z0.shape[-1])[None, None, :] < batch.vocab[:, None, None]  # (S, 1, V)
    ref = torch.log_softmax(batch.z0, dim=-1)  # (S, 2, V): the reference model is the start
    ref_c = batch.chosen_length * _gather(ref[:, 0], batch.y_chosen)  # (S,) summed over |y+| tokens
    on_policy = torch.tensor([batch.algorithms[k].on_policy for k in batch.algorithm.tolist()], dtype=torch.bool)
    diverged_at = torch.full((batch.size,), -1, dtype=torch.int64)
    z = batch.z0.clone()
    recorded_steps = [0]
    rows = [_measure(z, batch, groups)]
    for t in range(steps):
        report(f"{batch.size} scenarios, training steps", t, steps)
        y_r = batch.y_rejected
        weight = (diverged_at < 0).to(torch.float64)  # (S,) a diverged scenario stays frozen
        if bool(on_policy.any()):
            cdf = torch.softmax(z[:, 1], dim=-1).cumsum(-1)  # (S, V)
            drawn = torch.searchsorted(cdf, uniforms[t][:, None])[:, 0]  # (S,)
            drawn = torch.minimum(drawn, batch.vocab - 1)
            y_r = torch.where(on_policy, drawn, batch.y_rejected)
            weight = torch.where(on_policy & (y_r == batch.y_chosen), 0.0, weight)
        ref_r = batch.rejected_length * _gather(ref[:, 1], y_r)  # (S,) summed over |y-| tokens
        grad = loss_gradient(z, batch.y_chosen, y_r, ref_c, ref_r, weight, batch.algorithm, batch.algorithms,
                             batch.hparams, batch.chosen_length, batch.rejected_length)
        z_new = coupled_update(z, grad, batch.eta, batch.rho)
        blown = ~((z_new.abs() <= LOGIT_LIMIT) | ~real).all(dim=-1).all(dim=-1)  # (S,) NaN counts as blown
        diverged_at = torch.where(blown & (diverged_at < 0), t + 1, diverged_at)
        z = torch.where((diverged_at >= 0)[:, None, None], z, z_new)
        if (t + 1) % record_every == 0 or t + 1 == steps:
            recorded_steps.append(t + 1)
            rows.append(_measure(z, batch, groups))
    report(f"{batch.size} scenarios, training steps", steps, steps)
    records = {name: torch.stack([r[name] for r in rows]) for name in RECORDS}  # (R, S, 2) each
    return Trace(steps=torch.tensor(recorded_steps, dtype=torch.int64), records=records, diverged_at=diverged_at,
                 z_final=z)


def simulate_one_by_one(batch: Scenarios, steps: int, uniforms: Tensor, record_every: int = 1) -> Trace:
    """Run ``simulate`` on each scenario alone, in a plain Python loop, and stack the traces.

    The reference the vectorised batch is checked against (tests) and timed against (benchmarks): each scenario
    gets its own column of ``uniforms``, so both give the same numbers.
    """
    traces = [simulate(select(batch, [s]), steps, uniforms[:, s:s + 1], record_every) for s in range(batch.size)]
    return Trace(steps=traces[0].steps,
                 records={k: torch.cat([t.records[k] for t in traces], dim=1) for k in RECORDS},  # (R, S, 2)
                 diverged_at=torch.cat([t.diverged_at for t in traces]),
                 z_final=torch.cat([t.z_final for t in traces]))
