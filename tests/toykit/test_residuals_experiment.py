"""residuals (Figure 2): G per algorithm, the exact step Delta z = -eta K G, guaranteed directions, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toykit.experiments import run_experiment
from toykit.experiments.loss_residuals import ALGORITHMS, Config, plot, response_space, run, run_algorithm
from toykit.losses import compute_loss, get_loss
from toykit.softmax import log_softmax

PAIRED_DPO_FORM = ["dpo_offpolicy", "dpo_onpolicy", "ipo_onpolicy", "spin", "sppo", "dpop", "simpo"]


def _space(cfg: Config):
    rng = np.random.default_rng(cfg.seed)
    _, features = response_space(cfg, rng)
    Phi = torch.as_tensor(features, dtype=torch.float64)  # (V, d)
    theta0 = torch.as_tensor(rng.standard_normal(Phi.shape[1]) * cfg.peakiness, dtype=torch.float64)
    return Phi, theta0


def _autograd_step(name: str, Phi, theta0, chosen: int, rejected: int, cfg: Config) -> torch.Tensor:
    """One SGD step by autograd on toykit.losses through z = Phi theta: an independent route to pi_after."""
    spec = get_loss(ALGORITHMS[name].loss)
    theta = theta0.clone().requires_grad_(True)
    logp = log_softmax(Phi @ theta)  # (V,)
    ref = log_softmax(Phi @ theta0).detach()
    kwargs = {"chosen_logps": logp[[chosen]]}
    if rejected >= 0:
        kwargs["rejected_logps"] = logp[[rejected]]
    if spec.uses_reference:
        kwargs["ref_chosen_logps"] = ref[[chosen]]
        if rejected >= 0:
            kwargs["ref_rejected_logps"] = ref[[rejected]]
    if "beta" in spec.defaults:
        kwargs["beta"] = cfg.beta
    (grad,) = torch.autograd.grad(compute_loss(spec.name, **kwargs).sum(), theta)
    return torch.softmax(Phi @ (theta0 - cfg.eta * grad), -1)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_step_through_G_equals_autograd_step(name):
    cfg = Config(steps=1, eta=0.3)
    Phi, theta0 = _space(cfg)
    pi0 = torch.softmax(Phi @ theta0, -1).numpy()
    ranking = np.argsort(-pi0, kind="stable")
    pair = (int(ranking[cfg.chosen_rank]), int(ranking[cfg.valley_rank]))
    reward = (Phi @ Phi[pair[0]]).numpy()
    rec = run_algorithm(ALGORITHMS[name], Phi, theta0, pair, reward, cfg, np.random.default_rng(3))
    expected = _autograd_step(name, Phi, theta0, rec.chosen, rec.rejected, cfg)
    np.testing.assert_allclose(rec.pi_after, expected.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(rec.G, rec.G_chosen + rec.G_rejected, atol=1e-15)


@pytest.fixture(scope="module")
def one_step():
    return run(Config(steps=1, eta=0.05))


def test_sft_raises_the_chosen_response(one_step):
    # Delta log pi(y+) = eta (e+ - pi)^T K (e+ - pi) + O(eta^2) > 0 because K = Phi Phi^T is PSD.
    rec = one_step.records["sft"]
    assert rec.pi_after[rec.chosen] > rec.pi_before[rec.chosen]
    assert one_step.summary["algorithms"]["sft"]["delta_pi_chosen"] > 0


@pytest.mark.parametrize("name", PAIRED_DPO_FORM)
def test_pairwise_losses_widen_the_margin(one_step, name):
    # At the reference point the two weights are equal and opposite, so G = w (e- - e+) with w > 0 and
    # Delta (log pi+ - log pi-) = eta w ||phi+ - phi-||^2 > 0 exactly (log Z cancels).
    rec = one_step.records[name]
    margin = lambda pi: np.log(pi[rec.chosen]) - np.log(pi[rec.rejected])  # noqa: E731
    assert margin(rec.pi_after) > margin(rec.pi_before), name


@pytest.mark.parametrize("name", PAIRED_DPO_FORM)
def test_shared_input_cancels_the_pi_terms(one_step, name):
    # With y+ and y- on one input, G+ = w+ (e+ - pi) and G- = w- (e- - pi); equal and opposite weights leave
    # G nonzero only at y+ and y-. A residual computed at a different pi for y- would fail this.
    rec = one_step.records[name]
    others = np.ones(len(rec.G), bool)
    others[[rec.chosen, rec.rejected]] = False
    assert np.abs(rec.G[others]).max() < 1e-12
    assert rec.G[rec.chosen] < 0 < rec.G[rec.rejected]
    assert np.abs(rec.G_rejected[others]).max() > 1e-6  # each part alone does carry the pi term


def test_off_policy_pair_is_a_valley_and_sft_moves_similar_responses(one_step):
    s = one_step.summary
    assert s["initial_pi_rejected"] < s["initial_pi_chosen"] < s["initial_pi_argmax"]
    rec = one_step.records["sft"]
    attrs = one_step.attributes
    shares = (attrs == attrs[rec.chosen]).any(1)
    shares[rec.chosen] = False
    delta = np.log(rec.pi_after) - np.log(rec.pi_before)
    # Responses sharing an attribute with y+ gain relative to those sharing none (K couples them).
    assert delta[shares].mean() > delta[~shares & (np.arange(len(delta)) != rec.chosen)].mean()


def test_every_policy_stays_a_distribution_and_the_figure_has_a_column_per_algorithm():
    result = run(Config(steps=5))
    for rec in result.records.values():
        assert np.all(rec.pi_after >= 0) and rec.pi_after.sum() == pytest.approx(1.0, abs=1e-12)
    fig = plot(result)
    assert len(fig.axes) == 2 * len(result.records)


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = Config(steps=3)
    _, a = run_experiment("residuals", cfg, out_dir=tmp_path / "a")
    _, b = run_experiment("residuals", cfg, out_dir=tmp_path / "b")
    _, c = run_experiment("residuals", Config(steps=3, seed=1), out_dir=tmp_path / "c")
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()
    assert (a / "metrics.jsonl").read_bytes() != (c / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("kwargs, message", [
    ({"eta": -1.0}, "eta must be a finite number > 0"),
    ({"eta": 0.0}, "eta must be a finite number > 0"),
    ({"values_per_attribute": 1}, r"V >= 3 .* got V = .* = 1"),
    ({"algorithms": ("dpo_offpolicy", "kto")}, "unknown .*kto.*known algorithms"),
    ({"algorithms": ()}, "known algorithms"),
    ({"beta": 0.0}, "beta must be"),
    ({"chosen_rank": 36}, r"chosen_rank must lie in \[0, V\) = \[0, 36\)"),
    ({"valley_quantile": 3 / 35, "chosen_rank": 3}, "y\\+ and y- must differ"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs)
