"""Figure 2: the residual G of each finetuning algorithm and the distribution change it causes.

A toy language model for one prompt. Tokens are tuples of attribute values embedded by a fixed feature map
phi(t) = [one-hot of each attribute, small random part] (Phi: (V, d)); a response is a sequence of two tokens scored
by teacher forcing. Position 1 is predicted at the prompt context chi_0, shared by every response; position 2 at the
context chi_t = (prompt, first token t), so two responses whose first tokens differ have their second tokens
predicted at DIFFERENT softmaxes, as in an LLM. Each context has a unit embedding x_c: x_0 = [1, 0] and
x_t = [rho, sqrt(1 - rho^2) phi(t) / ||phi(t)||], so continuations of similar first tokens have similar contexts.
The logits are z_c = Phi M x_c (M: (d, 1 + d) parameters), hence the eNTK K(chi_c, chi_c') = (x_c . x_c') Phi Phi^T:
learning one token at one context moves similar tokens at similar contexts. One SGD step is
M <- M - eta Phi^T sum_c G_c x_c^T, i.e. Delta z_c = -eta sum_c' K(chi_c, chi_c') G_c' exactly (z is linear in M);
G per position comes from ``toykit.residuals.sequence_residual`` and the loss from ``toykit.losses``.

Algorithms differ by their loss and by where y+ and y- come from (Section 3 of the paper): off-policy pairs take
the dataset's y+ (mid-probability tokens) and a y- whose tokens lie in valleys of their contexts; on-policy pairs
sample both from the current pi and let a fixed judge (feature similarity to the dataset's y+) rank them; SPIN pairs
the dataset's y+ with a model sample. The reference model is the initial policy (SPIN's "previous iterate").

What the toy shows (derived). At the shared context chi_0, G = G+_1 + G-_1 and the pi parts cancel for any loss
whose two weights are equal and opposite (DPO, IPO, SPPO at the reference): G = w (e_{y-_1} - e_{y+_1}), no squeeze.
At y-'s own context chi_{y-_1}, only y-'s term acts: G = w (e_{y-_2} - pi), a pure negative gradient, and with
y-_2 in a valley it squeezes that context's mass into its argmax (PAPER.md section 4); coupling through K (rho, shared
token features) adds smaller cross terms. ``shared_context=True`` makes every response a single token at chi_0 (one
softmax, y+ and y- two labels of it): the cancellation case, where off-policy DPO shows no squeeze.

References: Ren & Sutherland (2025), Sections 2-4 and Figure 2; Pal et al. (DPOP), Meng et al. (SimPO), Pang et al.
(RPO).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from toykit.experiments._common import (check_at_least, check_fraction, check_loss_names, check_positive,
                                        new_figure, save_figure, write_metrics, write_summary)
from toykit.losses import get_loss
from toykit.progress import report
from toykit.residuals import sequence_residual
from toykit.softmax import log_softmax

NAME = "residuals"
DESCRIPTION = ("Figure 2: G of SFT, off/on-policy DPO, IPO, SPIN, SPPO, SLiC, DPOP, SimPO, RPO on a toy two-token "
               "language model (shared and per-response contexts)")


@dataclass(frozen=True)
class Algorithm:
    """A finetuning algorithm: a registered loss and the sources of y+ and y-.

    chosen: "dataset" (the fixed y+) or "sample" (the judge's winner of two samples from pi).
    rejected: None (single-response loss), "valley" (the dataset's low-probability y-) or "sample" (from pi).
    """

    loss: str
    chosen: str
    rejected: str | None
    label: str


ALGORITHMS: dict[str, Algorithm] = {
    "sft": Algorithm("sft", "dataset", None, "SFT"),
    "dpo_offpolicy": Algorithm("dpo", "dataset", "valley", "off-policy DPO"),
    "dpo_onpolicy": Algorithm("dpo", "sample", "sample", "on-policy DPO"),
    "ipo_onpolicy": Algorithm("ipo", "sample", "sample", "on-policy IPO"),
    "spin": Algorithm("dpo", "dataset", "sample", "SPIN"),
    "sppo": Algorithm("sppo_hard", "sample", "sample", "SPPO"),
    "slic": Algorithm("slic", "dataset", "valley", "SLiC"),
    "dpop": Algorithm("dpop", "dataset", "valley", "DPOP"),
    "simpo": Algorithm("simpo", "dataset", "valley", "SimPO"),
    "rpo": Algorithm("rpo", "dataset", "valley", "RPO (DPO+NLL)"),
}


@dataclass(frozen=True)
class Config:
    """The residual G per algorithm on a toy two-token language model, and the distribution after a few steps."""

    algorithms: tuple[str, ...] = field(default=tuple(ALGORITHMS), metadata={
        "help": f"algorithms to compare, from {list(ALGORITHMS)}"})
    shared_context: bool = field(default=False, metadata={
        "help": "True: each response is ONE token at the prompt (one softmax: the pi parts of DPO's G cancel); "
                "False: two tokens, the second predicted at a context set by the first (as in an LLM)"})
    rho: float = field(default=0.3, metadata={
        "help": "cosine between the prompt context and every continuation context (0 = independent softmaxes)"})
    num_attributes: int = field(default=2, metadata={"max": 100, "help": "attributes per token (V = values ** attributes)"})
    values_per_attribute: int = field(default=6, metadata={"max": 1_000, "help": "values of each attribute"})
    noise_dim: int = field(default=4, metadata={"max": 10_000, "help": "extra random feature dimensions per token"})
    noise_scale: float = field(default=0.5, metadata={"help": "scale of the random features"})
    peakiness: float = field(default=2.0, metadata={"help": "scale of the initial M: larger = peakier pi"})
    chosen_rank: int = field(default=3, metadata={"max": 100_000, 
        "help": "rank (0 = argmax) of each token of the dataset's y+ at its context under the initial pi"})
    valley_quantile: float = field(default=0.9, metadata={
        "help": "each token of the off-policy y- is the one at this quantile of its context's initial ranking "
                "(1 = least likely)"})
    eta: float = field(default=0.5, metadata={"help": "SGD learning rate eta"})
    steps: int = field(default=10, metadata={"max": 1_000_000, "help": "SGD steps per algorithm (G is drawn at the first)"})
    beta: float = field(default=0.5, metadata={
        "help": "inverse temperature beta of the losses that have one (0.5 keeps IPO/SPPO weights 2(1/(2 beta) - h) "
                "comparable to DPO)"})
    seed: int = field(default=0, metadata={"help": "seed of the features, the initial M and on-policy samples"})

    @property
    def vocab(self) -> int:
        """V, the number of tokens."""
        return self.values_per_attribute ** self.num_attributes

    @property
    def length(self) -> int:
        """L, tokens per response (1 with a shared context, else 2)."""
        return 1 if self.shared_context else 2

    @property
    def num_responses(self) -> int:
        """V ** L, the number of candidate responses."""
        return self.vocab ** self.length

    def __post_init__(self) -> None:
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"algorithms: unknown {unknown or 'empty list'}; known algorithms: {list(ALGORITHMS)}")
        check_loss_names("algorithms", [ALGORITHMS[a].loss for a in self.algorithms])
        if not isinstance(self.shared_context, bool):
            raise ValueError(f"shared_context must be True or False, got {self.shared_context!r}")
        check_fraction("rho", self.rho)
        check_at_least("num_attributes", self.num_attributes, 1)
        check_at_least("values_per_attribute", self.values_per_attribute, 1)
        check_at_least("noise_dim", self.noise_dim, 0)
        V = self.vocab
        if V < 3:
            raise ValueError(f"the token space needs V >= 3 (y+, y- and another token); got V = "
                             f"values_per_attribute ** num_attributes = {V}")
        check_fraction("noise_scale", self.noise_scale)
        check_positive("peakiness", self.peakiness)
        check_positive("eta", self.eta)
        check_positive("beta", self.beta)
        check_at_least("steps", self.steps, 1)
        if not 0 <= self.chosen_rank < V:
            raise ValueError(f"chosen_rank must lie in [0, V) = [0, {V}), got {self.chosen_rank}")
        check_fraction("valley_quantile", self.valley_quantile, 0.0, 1.0)
        if self.valley_rank == self.chosen_rank:
            raise ValueError(f"valley_quantile={self.valley_quantile} picks rank {self.valley_rank}, the same as "
                             f"chosen_rank; y+ and y- must differ at their first token")

    @property
    def valley_rank(self) -> int:
        """Rank (0 = argmax) of each off-policy y- token at its context under the initial pi."""
        return int(round(self.valley_quantile * (self.vocab - 1)))


@dataclass(frozen=True)
class Model:
    """The toy language model: contexts c = 0 (prompt) and c = 1 + t (prompt, first token t).

    Attributes:
        Phi: (V, d) float64 token features; X: (V + 1, 1 + d) float64 unit context embeddings x_c.
        M0: (d, 1 + d) float64 initial parameters (also the reference model); L: tokens per response.
    """

    Phi: torch.Tensor
    X: torch.Tensor
    M0: torch.Tensor
    L: int

    def logits(self, M: torch.Tensor) -> torch.Tensor:
        """Return z: (V + 1, V) logits at every context, z_c = Phi M x_c."""
        return self.X @ M.T @ self.Phi.T  # (V + 1, V)

    def contexts(self, y: tuple[int, ...]) -> list[int]:
        """Return the context index at which each token of response ``y`` is predicted (teacher forcing)."""
        return [0] + [1 + t for t in y[:-1]]


@dataclass(frozen=True)
class AlgorithmRecord:
    """One algorithm's run; tokens and contexts indexed as in ``Model``.

    Attributes:
        G_chosen, G_rejected: (L, V) sequence residual of y+ and y- per position at the first step (zeros for
            single-response losses).
        G_shared: (V,) total G at the prompt context; G_context: (V,) total G at y-'s last-token context.
        pi_before, pi_after: (V + 1, V) pi at every context before the first and after the last step.
        chosen, rejected: y+ and y- (token tuples) of the first step (rejected = () for single-response losses).
        context: the context where y-'s last token is predicted (the dataset y-'s for single-response losses).
        trace: {metric: (steps + 1,)} pi(y+), pi(y-) (sequence probabilities, products over tokens), and at y-'s
            context pi(its initial argmax), pi(y-'s token), entropy (nats); pi(initial argmax) at the prompt.
    """

    G_chosen: np.ndarray
    G_rejected: np.ndarray
    G_shared: np.ndarray
    G_context: np.ndarray
    pi_before: np.ndarray
    pi_after: np.ndarray
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    context: int
    trace: dict[str, np.ndarray]


@dataclass(frozen=True)
class Result:
    config: Config
    features: np.ndarray  # (V, d) Phi
    attributes: np.ndarray  # (V, num_attributes) attribute values of each token
    records: dict[str, AlgorithmRecord]
    summary: dict


def response_space(cfg: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return the attribute tuples (V, num_attributes) and the feature map Phi (V, d) of every token.

    Math: phi(t) = [onehot(t_1), ..., onehot(t_k), noise_scale * n_t], n_t ~ N(0, I / noise_dim).
    """
    attrs = np.array(list(itertools.product(range(cfg.values_per_attribute), repeat=cfg.num_attributes)))
    V = len(attrs)
    onehots = [np.eye(cfg.values_per_attribute)[attrs[:, k]] for k in range(cfg.num_attributes)]  # each (V, values)
    noise = rng.standard_normal((V, cfg.noise_dim)) * cfg.noise_scale / np.sqrt(max(cfg.noise_dim, 1))
    return attrs, np.concatenate(onehots + [noise], axis=1)  # (V, d)


def build_model(cfg: Config, rng: np.random.Generator) -> tuple[np.ndarray, Model]:
    """Return the token attributes (V, k) and the model: features, context embeddings and initial parameters.

    Math: x_0 = [1, 0], x_{1+t} = [rho, sqrt(1 - rho^2) phi(t) / ||phi(t)||]; K(c, c') = (x_c . x_c') Phi Phi^T.
    """
    attrs, features = response_space(cfg, rng)
    Phi = torch.as_tensor(features, dtype=torch.float64)  # (V, d)
    V, d = Phi.shape
    unit = Phi / Phi.norm(dim=1, keepdim=True)  # (V, d)
    X = torch.zeros(V + 1, 1 + d, dtype=torch.float64)
    X[0, 0] = 1.0
    X[1:, 0] = cfg.rho
    X[1:, 1:] = np.sqrt(1.0 - cfg.rho ** 2) * unit
    M0 = torch.as_tensor(rng.standard_normal((d, 1 + d)) * cfg.peakiness, dtype=torch.float64)  # (d, 1 + d)
    return attrs, Model(Phi=Phi, X=X, M0=M0, L=cfg.length)


def sequence_prob(pi: np.ndarray, model: Model, y: tuple[int, ...]) -> float:
    """Return pi(y) = prod_l pi(y_l | context of position l) (teacher forcing); pi: (V + 1, V)."""
    return float(np.prod([pi[c, t] for c, t in zip(model.contexts(y), y)]))


def _draw(p: np.ndarray, rng: np.random.Generator, exclude: int | None = None) -> int:
    """Draw a token from p (V,), never ``exclude``; a collapsed p falls back to the runner-up (greedy)."""
    p = p.copy()
    if exclude is not None:
        p[exclude] = 0.0
    if p.sum() <= 0:
        return int(np.argsort(-p, kind="stable")[0 if exclude is None else 1])
    return int(rng.choice(len(p), p=p / p.sum()))


def sample_response(pi: np.ndarray, model: Model, rng: np.random.Generator,
                    differ_from: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Sample a response token by token from pi (V + 1, V); if ``differ_from`` is given, its last token is
    redrawn without that response's when all earlier tokens agree, so the two responses differ."""
    y: list[int] = []
    for pos in range(model.L):
        c = model.contexts(tuple(y) + (0,))[pos]
        same_prefix = differ_from is not None and tuple(y) == differ_from[:pos] and pos == model.L - 1
        y.append(_draw(pi[c], rng, differ_from[pos] if same_prefix else None))
    return tuple(y)


def _pick_pair(algo: Algorithm, pi: np.ndarray, model: Model, dataset_pair: tuple[tuple[int, ...], ...],
               judge, rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    if algo.chosen == "sample":
        a = sample_response(pi, model, rng)
        b = sample_response(pi, model, rng, differ_from=a)
        return (a, b) if judge(a) >= judge(b) else (b, a)
    chosen = dataset_pair[0]
    if algo.rejected is None:
        return chosen, None
    if algo.rejected == "valley":
        return chosen, dataset_pair[1]
    return chosen, sample_response(pi, model, rng, differ_from=chosen)  # SPIN: y- is the model's own sample


def run_algorithm(algo: Algorithm, model: Model, dataset_pair: tuple[tuple[int, ...], ...], judge, cfg: Config,
                  rng: np.random.Generator) -> AlgorithmRecord:
    """Run ``cfg.steps`` SGD steps of one algorithm on the toy language model.

    Args:
        algo: the algorithm.
        model: the toy model (its ``M0`` is the start and the reference).
        dataset_pair: the off-policy (y+, y-) token tuples.
        judge: callable response -> score that ranks on-policy samples.

    Math: M <- M - eta Phi^T sum_l G_l x_{c(l)}^T over every scored position l of y+ and y-, so
        Delta z_c = -eta sum_l K(chi_c, chi_{c(l)}) G_l (Proposition 1, exact here).
    References: Ren & Sutherland (2025), Proposition 1 (sequence version), Section 3 and Figure 2.
    """
    spec = get_loss(algo.loss)
    hparams = {"beta": cfg.beta} if "beta" in spec.defaults else {}
    V, L = model.Phi.shape[0], model.L
    ref_logp = log_softmax(model.logits(model.M0))  # (V + 1, V) reference: the initial policy
    ones = torch.ones(1, L, dtype=torch.bool)

    def side(z, logp, y):  # teacher-forced logits (1, L, V), labels (1, L), reference summed log-prob (1,)
        ctx = model.contexts(y)
        return z[ctx][None], torch.tensor([y]), logp[ctx, list(y)].sum()[None]

    Ms, first = [model.M0], None
    for _ in range(cfg.steps):
        z = model.logits(Ms[-1])  # (V + 1, V)
        y_pos, y_neg = _pick_pair(algo, torch.softmax(z, -1).numpy(), model, dataset_pair, judge, rng)
        z_c, t_c, ref_c = side(z, ref_logp, y_pos)
        kwargs: dict = {}
        if y_neg is not None:
            z_r, t_r, ref_r = side(z, ref_logp, y_neg)
            kwargs = {"z_rejected": z_r, "y_rejected": t_r, "mask_rejected": ones}
        if spec.uses_reference:
            kwargs["ref_chosen_logps"] = ref_c
            if y_neg is not None:
                kwargs["ref_rejected_logps"] = ref_r
        res = sequence_residual(algo.loss, z_c, t_c, ones, **kwargs, **hparams)
        G_ctx = torch.zeros(V + 1, V, dtype=torch.float64)  # total G at each context
        G_ctx.index_add_(0, torch.tensor(model.contexts(y_pos)), res.G_chosen[0])
        if y_neg is not None:
            G_ctx.index_add_(0, torch.tensor(model.contexts(y_neg)), res.G_rejected[0])
        if first is None:
            first = (res, G_ctx, y_pos, () if y_neg is None else y_neg)
        Ms.append(Ms[-1] - cfg.eta * model.Phi.T @ G_ctx.T @ model.X)  # (d, 1 + d) = Phi^T sum_c G_c x_c^T

    res, G_ctx, chosen, rejected = first
    context = model.contexts(rejected or dataset_pair[1])[-1]
    pis = torch.softmax(torch.stack([model.logits(M) for M in Ms]), -1).numpy()  # (steps + 1, V + 1, V)
    top_ctx, top_shared = int(pis[0, context].argmax()), int(pis[0, 0].argmax())
    trace = {"pi_chosen": np.array([sequence_prob(p, model, chosen) for p in pis]),
             "pi_argmax_context": pis[:, context, top_ctx],
             "entropy_context": -(pis[:, context] * np.log(np.clip(pis[:, context], 1e-300, None))).sum(-1),
             "pi_argmax_shared": pis[:, 0, top_shared]}
    if rejected:
        trace["pi_rejected"] = np.array([sequence_prob(p, model, rejected) for p in pis])
        trace["pi_rejected_token"] = pis[:, context, rejected[-1]]
    zeros = torch.zeros_like(res.G_chosen[0])
    return AlgorithmRecord(
        G_chosen=res.G_chosen[0].numpy(),
        G_rejected=(res.G_rejected[0] if res.G_rejected is not None else zeros).numpy(),
        G_shared=G_ctx[0].numpy(), G_context=G_ctx[context].numpy(), pi_before=pis[0], pi_after=pis[-1],
        chosen=chosen, rejected=rejected, context=context, trace=trace)


def dataset_pair(cfg: Config, model: Model) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return the off-policy (y+, y-): each token of y+ at ``chosen_rank`` of its context, each of y- at
    ``valley_rank`` of its own context, under the initial pi (so they differ from the first token on)."""
    pi0 = torch.softmax(model.logits(model.M0), -1).numpy()  # (V + 1, V)
    pair = []
    for rank in (cfg.chosen_rank, cfg.valley_rank):
        y: list[int] = []
        for pos in range(model.L):
            c = model.contexts(tuple(y) + (0,))[pos]
            y.append(int(np.argsort(-pi0[c], kind="stable")[rank]))
        pair.append(tuple(y))
    return pair[0], pair[1]


def run(cfg: Config) -> Result:
    """Build the toy language model and run every algorithm from the same initial policy."""
    rng = np.random.default_rng(cfg.seed)
    attrs, model = build_model(cfg, rng)
    pair = dataset_pair(cfg, model)
    features = model.Phi.numpy()
    judge = lambda y: float(sum(features[t] @ features[s] for t, s in zip(y, pair[0])))  # noqa: E731
    pi0 = torch.softmax(model.logits(model.M0), -1).numpy()  # (V + 1, V)

    records, per_algo = {}, {}
    for k, name in enumerate(cfg.algorithms):
        report(f"algorithm {name}", k, len(cfg.algorithms))
        algo_rng = np.random.default_rng([cfg.seed, k])  # each algorithm's samples independent of the list order
        rec = run_algorithm(ALGORITHMS[name], model, pair, judge, cfg, algo_rng)
        records[name] = rec
        tr, c = rec.trace, rec.context
        per_algo[name] = {
            "label": ALGORITHMS[name].label, "loss": ALGORITHMS[name].loss,
            "chosen": " ".join(map(str, rec.chosen)), "rejected": " ".join(map(str, rec.rejected)) or None,
            "delta_pi_chosen": float(tr["pi_chosen"][-1] - tr["pi_chosen"][0]),
            "delta_pi_rejected": float(tr["pi_rejected"][-1] - tr["pi_rejected"][0]) if rec.rejected else None,
            "rejected_context": c,
            "mass_to_argmax": float(tr["pi_argmax_context"][-1] - tr["pi_argmax_context"][0]),
            "delta_pi_rejected_token": (float(tr["pi_rejected_token"][-1] - tr["pi_rejected_token"][0])
                                        if rec.rejected else None),
            "delta_entropy": float(tr["entropy_context"][-1] - tr["entropy_context"][0]),
            "mass_to_argmax_shared": float(tr["pi_argmax_shared"][-1] - tr["pi_argmax_shared"][0]),
            "G_norm_shared": float(np.linalg.norm(rec.G_shared)),
            "G_norm_context": float(np.linalg.norm(rec.G_context)),
        }
    report("algorithms", len(cfg.algorithms), len(cfg.algorithms))
    summary = {
        "num_responses": cfg.num_responses, "vocab": cfg.vocab, "length": cfg.length,
        "initial_argmax": int(pi0[0].argmax()), "initial_pi_argmax": float(pi0[0].max()),
        "dataset_chosen": " ".join(map(str, pair[0])), "dataset_rejected": " ".join(map(str, pair[1])),
        "initial_pi_chosen": sequence_prob(pi0, model, pair[0]),
        "initial_pi_rejected": sequence_prob(pi0, model, pair[1]),
        "steps": cfg.steps,
        "note": ("chosen/rejected are the first step's pair (token ids); pi(y) is the teacher-forced sequence "
                 "probability; mass_to_argmax, delta_pi_rejected_token and delta_entropy are measured at the context "
                 "of y-'s last token (context 0 = the prompt), *_shared at the prompt; on-policy pairs are resampled "
                 "each step"),
        "shared_context_note": (
            "One softmax (shared_context=True): y+ and y- are labels of one context, so for equal and opposite "
            "weights (DPO-form losses at the reference) the pi parts of G cancel: G = w (e_y- - e_y+), no squeeze."
            if cfg.shared_context else
            "Two tokens: at the prompt the pi parts of G+ and G- cancel for DPO-form losses, but y-'s second token "
            "is predicted at its own context, where G = w (e_y- - pi) is a pure negative gradient: with y- in a "
            "valley it squeezes that context's mass into its argmax (cross terms via rho and shared token features "
            "are smaller)."),
        "algorithms": per_algo,
    }
    return Result(config=cfg, features=features, attributes=attrs, records=records, summary=summary)


def save(result: Result, out_dir: Path) -> None:
    """Write metrics.jsonl (per step and algorithm: the trace metrics), summary.json and the figure."""
    rows = []
    for name, rec in result.records.items():
        for metric, values in rec.trace.items():
            rows.extend({"step": step, "probe": name, "metric": metric, "value": float(v)}
                        for step, v in enumerate(values))
    write_metrics(out_dir, rows)
    write_summary(out_dir, result.summary)
    save_figure(plot(result), Path(out_dir) / "residuals.png")


def _panel_pair(top, bottom, G: np.ndarray, before: np.ndarray, after: np.ndarray, marks: dict[str, int],
                steps: int) -> None:
    """Draw -G (top) and pi before/after (bottom) at one context, tokens by initial rank there."""
    order = np.argsort(-before, kind="stable")  # x axis: tokens from most to least likely at the start
    pos = {int(v): i for i, v in enumerate(order)}
    xs = np.arange(len(order))
    top.bar(xs, -G[order], color="tab:purple", width=1.0)
    bottom.bar(xs, before[order], color="0.75", width=1.0, label="before")
    bottom.plot(xs, after[order], color="tab:blue", lw=1.2, label=f"after {steps} steps")
    for ax in (top, bottom):
        for color, token in marks.items():
            ax.axvline(pos[token], color=color, lw=0.8, ls="--")
        ax.tick_params(labelsize=7)


def panel_table(result: Result) -> list[dict[str, Any]]:
    """Tidy rows of what :func:`plot` draws, for interactive charts: per algorithm and context, every token.

    Columns: algorithm, context ("prompt" or "y-'s context"), rank (by pi before at that context, 0 = most likely),
    token, minus_G (-G of the first step, summed over the positions scored there), pi_before, pi_after (after the
    last step) and role (y+, y- or other). A single-response loss (SFT) has G = 0 at y-'s context: nothing is scored
    there, and the rows say so through minus_G = 0.
    """
    rows: list[dict[str, Any]] = []
    two = result.config.length == 2
    for name, rec in result.records.items():
        panels = [("prompt", rec.G_shared, rec.pi_before[0], rec.pi_after[0],
                   {rec.chosen[0]: "y+"} | ({rec.rejected[0]: "y-"} if rec.rejected else {}))]
        if two:
            roles = {rec.rejected[-1]: "y-"} if rec.rejected else {}
            if rec.rejected and rec.chosen[0] == rec.rejected[0]:
                roles[rec.chosen[-1]] = "y+"
            panels.append(("y-'s context", rec.G_context, rec.pi_before[rec.context], rec.pi_after[rec.context],
                           roles))
        for context, G, before, after, roles in panels:
            order = np.argsort(-before, kind="stable")  # tokens from most to least likely at the start
            for rank, token in enumerate(order.tolist()):
                rows.append({"algorithm": name, "label": ALGORITHMS[name].label, "context": context, "rank": rank,
                             "token": token, "minus_G": float(-G[token]), "pi_before": float(before[token]),
                             "pi_after": float(after[token]), "role": roles.get(token, "other")})
    return rows


def plot(result: Result):
    """One column per algorithm: -G at the first step and pi before/after, at the prompt (shared) context and, for
    two-token responses, at the context of y-'s second token (where the squeeze happens); tokens by initial rank."""
    names = list(result.records)
    two = result.config.length == 2
    rows = 4 if two else 2
    fig = new_figure(2.1 * len(names), 2.2 * rows)
    axes = fig.subplots(rows, len(names), squeeze=False)
    steps = result.config.steps
    for col, name in enumerate(names):
        rec = result.records[name]
        marks = {"tab:green": rec.chosen[0]} | ({"tab:red": rec.rejected[0]} if rec.rejected else {})
        _panel_pair(axes[0, col], axes[1, col], rec.G_shared, rec.pi_before[0], rec.pi_after[0], marks, steps)
        axes[0, col].set_title(ALGORITHMS[name].label, fontsize=9)
        if two:
            marks = {"tab:red": rec.rejected[-1]} if rec.rejected else {}
            if rec.rejected and rec.chosen[0] == rec.rejected[0]:  # y+ scored at the same context too
                marks["tab:green"] = rec.chosen[-1]
            _panel_pair(axes[2, col], axes[3, col], rec.G_context, rec.pi_before[rec.context],
                        rec.pi_after[rec.context], marks, steps)
        axes[-1, col].set_xlabel("token (by initial rank at that context)", fontsize=7)
    axes[0, 0].set_ylabel("-G, prompt context", fontsize=8)
    axes[1, 0].set_ylabel("pi(. | prompt)", fontsize=8)
    if two:
        axes[2, 0].set_ylabel("-G, y-'s context", fontsize=8)
        axes[3, 0].set_ylabel("pi(. | prompt, y-_1)", fontsize=8)
    axes[1, 0].legend(fontsize=6)
    where = ("rows 1-2: the prompt (y+_1 green, y-_1 red); rows 3-4: y-'s second-token context (y-_2 red)" if two
             else "one shared softmax (green: y+, red: y-)")
    fig.suptitle(f"Residual G per algorithm (first step) and pi before/after; {where}", fontsize=10)
    return fig
