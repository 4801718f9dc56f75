"""Figure 2: the residual G of each finetuning algorithm and the distribution change it causes.

A toy response space for one prompt: every candidate response y is a tuple of attribute values (e.g. tone, topic)
embedded by a fixed feature map phi(y) = [one-hot of each attribute, small random part]. The policy is a softmax
over all V responses with logits z = Phi theta (Phi: (V, d) rows phi(y)), so its eNTK is K = Phi Phi^T and learning
one response moves the responses that share its attributes. One SGD step is theta <- theta - eta Phi^T G, i.e.
Delta z = -eta K G exactly (the model is linear in theta); G comes from ``toykit.residuals`` and the loss from
``toykit.losses``.

Algorithms differ by their loss and by where y+ and y- come from (Section 3 of the paper): off-policy pairs take
the dataset's y+ (a mid-probability response) and a y- in a valley of pi; on-policy pairs sample both from the
current pi and let a fixed judge (similarity to the dataset's y+) rank them; SPIN pairs the dataset's y+ with a
model sample. The reference model is the initial policy (SPIN's "previous iterate").

Note (derived): y+ and y- here share one input, so the pi parts of G+ and G- cancel for any loss whose two weights
are equal and opposite (DPO, IPO, SPPO at the start): G = w (e_{y-} - e_{y+}). The squeezing of the paper's
Figure 2 then only appears when the negative term dominates; in LLMs it comes from the token level, where y+ and y-
have different contexts. The summary reports what this toy does, not the cartoon.

References: Ren & Sutherland (2025), Section 3 and Figure 2; Pal et al. (DPOP), Meng et al. (SimPO), Pang et al. (RPO).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toykit.experiments._common import (check_at_least, check_fraction, check_loss_names, check_positive,
                                        new_figure, save_figure, write_metrics, write_summary)
from toykit.losses import get_loss
from toykit.residuals import residual
from toykit.softmax import log_softmax

NAME = "residuals"
DESCRIPTION = "Figure 2: G of SFT, off/on-policy DPO, IPO, SPIN, SPPO, SLiC, DPOP, SimPO, RPO on a toy response space"


@dataclass(frozen=True)
class Algorithm:
    """A finetuning algorithm: a registered loss and the sources of y+ and y-.

    chosen: "dataset" (the fixed y+) or "sample" (the judge's winner of two samples from pi).
    rejected: None (single-response loss), "valley" (a fixed low-probability y-) or "sample" (a sample from pi).
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
    """The residual G per algorithm on a toy response space, and the distribution after a few steps."""

    algorithms: tuple[str, ...] = field(default=tuple(ALGORITHMS), metadata={
        "help": f"algorithms to compare, from {list(ALGORITHMS)}"})
    num_attributes: int = field(default=2, metadata={"help": "attributes per response (V = values ** attributes)"})
    values_per_attribute: int = field(default=6, metadata={"help": "values of each attribute"})
    noise_dim: int = field(default=4, metadata={"help": "extra random feature dimensions per response"})
    noise_scale: float = field(default=0.5, metadata={"help": "scale of the random features"})
    peakiness: float = field(default=2.0, metadata={"help": "scale of the initial theta: larger = peakier pi"})
    chosen_rank: int = field(default=3, metadata={"help": "rank (0 = argmax) of the dataset's y+ under the initial pi"})
    valley_quantile: float = field(default=0.9, metadata={
        "help": "the off-policy y- is the response at this quantile of the initial ranking (1 = least likely)"})
    eta: float = field(default=0.5, metadata={"help": "SGD learning rate eta"})
    steps: int = field(default=10, metadata={"help": "SGD steps per algorithm (G is drawn at the first)"})
    beta: float = field(default=0.5, metadata={
        "help": "inverse temperature beta of the losses that have one (0.5 keeps IPO/SPPO weights 2(1/(2 beta) - h) comparable to DPO)"})
    seed: int = field(default=0, metadata={"help": "seed of the features, the initial theta and on-policy samples"})

    @property
    def num_responses(self) -> int:
        """V, the number of candidate responses."""
        return self.values_per_attribute ** self.num_attributes

    def __post_init__(self) -> None:
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"algorithms: unknown {unknown or 'empty list'}; known algorithms: {list(ALGORITHMS)}")
        check_loss_names("algorithms", [ALGORITHMS[a].loss for a in self.algorithms])
        check_at_least("num_attributes", self.num_attributes, 1)
        check_at_least("values_per_attribute", self.values_per_attribute, 1)
        check_at_least("noise_dim", self.noise_dim, 0)
        V = self.num_responses
        if V < 3:
            raise ValueError(f"the response space needs V >= 3 (y+, y- and another response); got V = "
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
                             f"chosen_rank; y+ and y- must differ")

    @property
    def valley_rank(self) -> int:
        """Rank (0 = argmax) of the off-policy y- under the initial pi."""
        return int(round(self.valley_quantile * (self.num_responses - 1)))


@dataclass(frozen=True)
class AlgorithmRecord:
    """One algorithm's run; responses are indexed as in ``Result.features``.

    Attributes:
        G, G_chosen, G_rejected: (V,) residual at the first step (G_rejected zeros for single-response losses).
        pi_before, pi_after: (V,) the policy before the first and after the last step.
        chosen, rejected: y+ and y- of the first step (rejected = -1 for single-response losses).
        trace: {metric: (steps + 1,)} pi(y+), pi(y-) of the first pair, pi(initial argmax), entropy (nats).
    """

    G: np.ndarray
    G_chosen: np.ndarray
    G_rejected: np.ndarray
    pi_before: np.ndarray
    pi_after: np.ndarray
    chosen: int
    rejected: int
    trace: dict[str, np.ndarray]


@dataclass(frozen=True)
class Result:
    config: Config
    features: np.ndarray  # (V, d) Phi
    attributes: np.ndarray  # (V, num_attributes) attribute values of each response
    records: dict[str, AlgorithmRecord]
    summary: dict


def response_space(cfg: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return the attribute tuples (V, num_attributes) and the feature map Phi (V, d) of every response.

    Math: phi(y) = [onehot(y_1), ..., onehot(y_k), noise_scale * n_y], n_y ~ N(0, I / noise_dim).
    """
    attrs = np.array(list(itertools.product(range(cfg.values_per_attribute), repeat=cfg.num_attributes)))
    V = len(attrs)
    onehots = [np.eye(cfg.values_per_attribute)[attrs[:, k]] for k in range(cfg.num_attributes)]  # each (V, values)
    noise = rng.standard_normal((V, cfg.noise_dim)) * cfg.noise_scale / np.sqrt(max(cfg.noise_dim, 1))
    return attrs, np.concatenate(onehots + [noise], axis=1)  # (V, d)


def _sample_pair(pi: np.ndarray, reward: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Draw two distinct responses from pi; the judge's preferred one (higher reward) is y+."""
    a = int(rng.choice(len(pi), p=pi))
    rest = pi.copy()
    rest[a] = 0.0
    # A collapsed pi (all mass on a) leaves no second sample: take the runner-up, as greedy decoding would.
    b = int(rng.choice(len(pi), p=rest / rest.sum())) if rest.sum() > 0 else int(np.argsort(-pi)[1])
    return (int(a), int(b)) if reward[a] >= reward[b] else (int(b), int(a))


def _pick_pair(algo: Algorithm, pi: np.ndarray, dataset_pair: tuple[int, int], reward: np.ndarray,
               rng: np.random.Generator) -> tuple[int, int | None]:
    if algo.chosen == "sample":
        return _sample_pair(pi, reward, rng)
    chosen = dataset_pair[0]
    if algo.rejected is None:
        return chosen, None
    if algo.rejected == "valley":
        return chosen, dataset_pair[1]
    masked = pi.copy()
    masked[chosen] = 0.0  # SPIN: y- is the model's own sample, never the ground truth itself
    if masked.sum() == 0:
        return chosen, int(np.argsort(-pi)[1])
    return chosen, int(rng.choice(len(pi), p=masked / masked.sum()))



def run_algorithm(algo: Algorithm, Phi: torch.Tensor, theta0: torch.Tensor, dataset_pair: tuple[int, int],
                  reward: np.ndarray, cfg: Config, rng: np.random.Generator) -> AlgorithmRecord:
    """Run ``cfg.steps`` SGD steps of one algorithm on the feature-softmax policy z = Phi theta.

    Args:
        algo: the algorithm.
        Phi: (V, d) float64 response features; theta0: (d,) initial parameters (also the reference model).
        dataset_pair: the off-policy (y+, y-) indices.
        reward: (V,) the judge's score that ranks on-policy samples.

    Math: theta <- theta - eta Phi^T G, so Delta z = -eta K G with K = Phi Phi^T (Proposition 1, exact here).
    References: Ren & Sutherland (2025), Proposition 1 and Figure 2.
    """
    spec = get_loss(algo.loss)
    hparams = {"beta": cfg.beta} if "beta" in spec.defaults else {}
    ref_logp = log_softmax(Phi @ theta0)  # (V,) reference: the initial policy
    thetas = [theta0]
    first = None
    for _ in range(cfg.steps):
        z = Phi @ thetas[-1]  # (V,)
        y_pos, y_neg = _pick_pair(algo, torch.softmax(z, -1).numpy(), dataset_pair, reward, rng)
        kwargs: dict = {}
        if y_neg is not None:
            kwargs = {"z_rejected": z[None], "y_rejected": torch.tensor([y_neg])}
        if spec.uses_reference:
            kwargs["ref_chosen_logps"] = ref_logp[[y_pos]]
            if y_neg is not None:
                kwargs["ref_rejected_logps"] = ref_logp[[y_neg]]
        res = residual(algo.loss, z[None], torch.tensor([y_pos]), **kwargs, **hparams)
        if first is None:
            first = (res, y_pos, -1 if y_neg is None else y_neg)
        thetas.append(thetas[-1] - cfg.eta * Phi.T @ res.G[0])  # (d,) gradient step through the feature map
    res, chosen, rejected = first
    pis = torch.softmax(torch.stack(thetas) @ Phi.T, -1)  # (steps + 1, V)
    argmax0 = int(pis[0].argmax())
    entropy = -(pis * torch.log(pis.clamp_min(1e-300))).sum(-1)  # (steps + 1,) nats
    trace = {"pi_chosen": pis[:, chosen], "pi_argmax": pis[:, argmax0], "entropy": entropy}
    if rejected >= 0:
        trace["pi_rejected"] = pis[:, rejected]
    zeros = torch.zeros_like(res.G[0])
    return AlgorithmRecord(
        G=res.G[0].numpy(), G_chosen=res.G_chosen[0].numpy(),
        G_rejected=(res.G_rejected[0] if res.G_rejected is not None else zeros).numpy(),
        pi_before=pis[0].numpy(), pi_after=pis[-1].numpy(), chosen=chosen, rejected=rejected,
        trace={k: v.numpy() for k, v in trace.items()})


def run(cfg: Config) -> Result:
    """Build the response space and run every algorithm from the same initial policy."""
    rng = np.random.default_rng(cfg.seed)
    attrs, features = response_space(cfg, rng)
    Phi = torch.as_tensor(features, dtype=torch.float64)  # (V, d)
    theta0 = torch.as_tensor(rng.standard_normal(Phi.shape[1]) * cfg.peakiness, dtype=torch.float64)  # (d,)
    pi0 = torch.softmax(Phi @ theta0, -1).numpy()
    ranking = np.argsort(-pi0, kind="stable")  # response indices, most likely first
    dataset_pair = (int(ranking[cfg.chosen_rank]), int(ranking[cfg.valley_rank]))
    reward = features @ features[dataset_pair[0]]  # (V,) the judge: similarity to the dataset's y+

    records, per_algo = {}, {}
    for k, name in enumerate(cfg.algorithms):
        algo_rng = np.random.default_rng([cfg.seed, k])  # each algorithm's samples independent of the list order
        rec = run_algorithm(ALGORITHMS[name], Phi, theta0, dataset_pair, reward, cfg, algo_rng)
        records[name] = rec
        a0 = int(ranking[0])
        per_algo[name] = {
            "label": ALGORITHMS[name].label,
            "loss": ALGORITHMS[name].loss,
            "chosen": int(rec.chosen), "rejected": int(rec.rejected),
            "chosen_rank": int(np.flatnonzero(ranking == rec.chosen)[0]),
            "rejected_rank": int(np.flatnonzero(ranking == rec.rejected)[0]) if rec.rejected >= 0 else None,
            "mass_to_argmax": float(rec.pi_after[a0] - rec.pi_before[a0]),
            "delta_pi_chosen": float(rec.pi_after[rec.chosen] - rec.pi_before[rec.chosen]),
            "delta_pi_rejected": (float(rec.pi_after[rec.rejected] - rec.pi_before[rec.rejected])
                                  if rec.rejected >= 0 else None),
            "delta_entropy": float(rec.trace["entropy"][-1] - rec.trace["entropy"][0]),
            "G_norm": float(np.linalg.norm(rec.G)),
        }
    summary = {
        "num_responses": cfg.num_responses,
        "initial_argmax": int(ranking[0]), "initial_pi_argmax": float(pi0[ranking[0]]),
        "dataset_chosen": dataset_pair[0], "dataset_rejected": dataset_pair[1],
        "initial_pi_chosen": float(pi0[dataset_pair[0]]), "initial_pi_rejected": float(pi0[dataset_pair[1]]),
        "steps": cfg.steps,
        "note": "chosen/rejected are the first step's pair; on-policy pairs are resampled each step",
        "shared_input_note": "y+ and y- share one input here, so for equal and opposite weights (DPO-form losses "
                             "at the reference) the pi parts of G cancel: G = w (e_y- - e_y+). A squeeze towards "
                             "the argmax then needs an unbalanced negative weight; in LLMs it arises per token.",
        "algorithms": per_algo,
    }
    return Result(config=cfg, features=features, attributes=attrs, records=records, summary=summary)


def save(result: Result, out_dir: Path) -> None:
    """Write metrics.jsonl (per step and algorithm: pi of y+, y-, initial argmax, entropy), summary.json, figure."""
    rows = []
    for name, rec in result.records.items():
        for metric, values in rec.trace.items():
            rows.extend({"step": step, "probe": name, "metric": metric, "value": float(v)}
                        for step, v in enumerate(values))
    write_metrics(out_dir, rows)
    write_summary(out_dir, result.summary)
    save_figure(plot(result), Path(out_dir) / "residuals.png")


def plot(result: Result):
    """One column per algorithm: G at the first step (top), pi before and after (bottom), responses by initial rank."""
    names = list(result.records)
    fig = new_figure(2.1 * len(names), 4.4)
    axes = fig.subplots(2, len(names), squeeze=False, sharey="row")
    first = result.records[names[0]]
    order = np.argsort(-first.pi_before, kind="stable")  # x axis: responses from most to least likely at start
    xs = np.arange(len(order))
    for col, name in enumerate(names):
        rec = result.records[name]
        pos = {int(v): i for i, v in enumerate(order)}
        top, bottom = axes[0, col], axes[1, col]
        top.bar(xs, -rec.G[order], color="tab:purple", width=1.0)
        top.set_title(ALGORITHMS[name].label, fontsize=9)
        bottom.bar(xs, rec.pi_before[order], color="0.75", width=1.0, label="before")
        bottom.plot(xs, rec.pi_after[order], color="tab:blue", lw=1.2, label=f"after {result.config.steps} steps")
        for ax in (top, bottom):
            ax.axvline(pos[rec.chosen], color="tab:green", lw=0.8, ls="--")
            if rec.rejected >= 0:
                ax.axvline(pos[rec.rejected], color="tab:red", lw=0.8, ls="--")
            ax.tick_params(labelsize=7)
        bottom.set_xlabel("response (by initial rank)", fontsize=7)
    axes[0, 0].set_ylabel("-G (first step)", fontsize=8)
    axes[1, 0].set_ylabel("pi(y | x)", fontsize=8)
    axes[1, 0].legend(fontsize=6)
    fig.suptitle("Residual G per algorithm (green: y+, red: y-) and the policy before/after", fontsize=10)
    return fig
