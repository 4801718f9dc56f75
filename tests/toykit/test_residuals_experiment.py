"""residuals (Figure 2): G per algorithm, the exact step vs autograd, guaranteed directions, config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toykit.experiments import loss_residuals, run_experiment
from toykit.experiments.loss_residuals import (ALGORITHMS, Config, build_model, dataset_pair, plot, run,
                                               run_algorithm)
from toykit.losses import compute_loss, get_loss
from toykit.softmax import log_softmax
from toykit.squeeze import squeeze_step

PAIRED_DPO_FORM = ["dpo_offpolicy", "dpo_onpolicy", "ipo_onpolicy", "spin", "sppo", "dpop", "simpo"]
# y- at its own context with nothing else coupled to it: orthogonal contexts (rho = 0) and one-hot token features
# make K(y-'s context, any other scored context) = 0 and K(y-'s context, itself) = I_V: the paper's linear softmax.
ISOLATED = dict(rho=0.0, num_attributes=1, values_per_attribute=12, noise_dim=0)


def _setup(cfg: Config):
    rng = np.random.default_rng(cfg.seed)
    _, model = build_model(cfg, rng)
    pair = dataset_pair(cfg, model)
    feats = model.Phi.numpy()
    judge = lambda y: float(sum(feats[t] @ feats[s] for t, s in zip(y, pair[0])))  # noqa: E731
    return model, pair, judge


def _summed_logp(logp: torch.Tensor, y: tuple[int, ...]) -> torch.Tensor:
    """Teacher forcing written out: token l of y is scored at context 0 (prompt) or 1 + y[l-1]."""
    contexts = [0] + [1 + t for t in y[:-1]]
    return torch.stack([logp[c, t] for c, t in zip(contexts, y)]).sum()[None]  # (1,)


def _autograd_step(name: str, model, chosen, rejected, cfg: Config) -> torch.Tensor:
    """One SGD step by autograd on toykit.losses through z_c = Phi M x_c: an independent route to pi_after."""
    spec = get_loss(ALGORITHMS[name].loss)
    M = model.M0.clone().requires_grad_(True)
    logits = lambda W: model.X @ W.T @ model.Phi.T  # noqa: E731  (V + 1, V)
    logp, ref = log_softmax(logits(M)), log_softmax(logits(model.M0)).detach()
    length = torch.tensor([float(len(chosen))], dtype=torch.float64)
    kwargs = {"chosen_logps": _summed_logp(logp, chosen), "chosen_lengths": length}
    if rejected:
        kwargs.update(rejected_logps=_summed_logp(logp, rejected), rejected_lengths=length)
    if spec.uses_reference:
        kwargs["ref_chosen_logps"] = _summed_logp(ref, chosen)
        if rejected:
            kwargs["ref_rejected_logps"] = _summed_logp(ref, rejected)
    if "beta" in spec.defaults:
        kwargs["beta"] = cfg.beta
    (grad,) = torch.autograd.grad(compute_loss(spec.name, **kwargs).sum(), M)
    return torch.softmax(logits(model.M0 - cfg.eta * grad), -1)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_step_through_G_equals_autograd_step(name, shared):
    cfg = Config(steps=1, eta=0.3, shared_context=shared)
    model, pair, judge = _setup(cfg)
    rec = run_algorithm(ALGORITHMS[name], model, pair, judge, cfg, np.random.default_rng(3))
    expected = _autograd_step(name, model, rec.chosen, rec.rejected, cfg)
    assert rec.pi_after.shape == (cfg.vocab + 1, cfg.vocab)
    np.testing.assert_allclose(rec.pi_after, expected.numpy(), rtol=1e-10, atol=1e-14)
    # G at the prompt is the sum of every position scored there (position 1 of both responses).
    np.testing.assert_allclose(rec.G_shared, rec.G_chosen[0] + rec.G_rejected[0], atol=1e-15)


def test_contexts_are_unit_vectors_with_cosine_rho_to_the_prompt():
    cfg = Config(rho=0.4)
    model, _, _ = _setup(cfg)
    np.testing.assert_allclose(model.X.norm(dim=1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose((model.X[1:] @ model.X[0]).numpy(), 0.4, atol=1e-12)


@pytest.fixture(scope="module", params=[False, True], ids=["two_tokens", "shared_context"])
def one_step(request):
    return run(Config(steps=1, eta=0.05, shared_context=request.param))


def test_sft_raises_the_chosen_response(one_step):
    # Delta lp+ = eta ||grad_M lp+||^2 + O(eta^2) > 0 for SFT (a gradient step on -lp+).
    assert one_step.summary["algorithms"]["sft"]["delta_pi_chosen"] > 0


@pytest.mark.parametrize("name", PAIRED_DPO_FORM)
def test_pairwise_losses_widen_the_margin(one_step, name):
    # At the reference the two weights are equal and opposite (-w, +w), so Delta (lp+ - lp-) =
    # eta w ||grad_M (lp+ - lp-)||^2 + O(eta^2) > 0; lp are summed over the tokens of each response.
    tr = one_step.records[name].trace
    assert np.diff(np.log(tr["pi_chosen"]) - np.log(tr["pi_rejected"]))[0] > 0, name


@pytest.mark.parametrize("name", PAIRED_DPO_FORM)
def test_the_pi_terms_cancel_at_the_shared_context_only(one_step, name):
    # At the prompt, G = w (e_{y+_1} - pi) - w (e_{y-_1} - pi): nonzero only at y+_1 and y-_1.
    rec = one_step.records[name]
    c, r = rec.chosen[0], rec.rejected[0]
    others = np.ones(len(rec.G_shared), bool)
    others[[c, r]] = False
    assert np.abs(rec.G_shared[others]).max() < 1e-12
    if c != r:
        assert rec.G_shared[c] < 0 < rec.G_shared[r]
    if one_step.config.shared_context or c == r:
        return
    # y-'s second token sits at a context y+ never visits: G there is w (e_{y-_2} - pi) with w > 0, pi intact.
    np.testing.assert_allclose(rec.G_context, rec.G_rejected[1], atol=0)
    rest = np.ones(len(rec.G_context), bool)
    rest[rec.rejected[1]] = False
    assert np.all(rec.G_context[rest] < 0) and rec.G_context[rec.rejected[1]] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_off_policy_dpo_is_the_exact_squeeze_at_an_isolated_rejected_context(seed):
    # With y-'s context coupled to nothing else, one DPO step there is the negative-gradient step of PAPER.md
    # section 4 with c = eta * beta (1 - sigmoid(0)) = eta beta / 2 (||x|| = 1): compare with toykit.squeeze.
    cfg = Config(algorithms=("dpo_offpolicy",), steps=1, eta=2.0, seed=seed, **ISOLATED)
    rec = run(cfg).records["dpo_offpolicy"]
    ctx, y_neg = rec.context, rec.rejected[1]
    expected = squeeze_step(rec.pi_before[ctx], y_neg, cfg.eta * cfg.beta / 2)
    np.testing.assert_allclose(rec.pi_after[ctx], expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_off_policy_dpo_squeezes_mass_into_the_argmax_of_the_rejected_context(seed):
    # Every step at the isolated context is such a squeeze step (c_t = eta w_t > 0): claims 1 and 2 of section 4
    # make pi(y-_2) fall and pi(argmax) rise at every step; at the prompt the pi parts cancel instead.
    cfg = Config(algorithms=("dpo_offpolicy", "sft"), steps=10, eta=2.0, seed=seed, **ISOLATED)
    result = run(cfg)
    tr = result.records["dpo_offpolicy"].trace
    assert np.all(np.diff(tr["pi_argmax_context"]) > 0)
    assert np.all(np.diff(tr["pi_rejected_token"]) < 0)
    assert result.summary["algorithms"]["dpo_offpolicy"]["delta_entropy"] < 0
    assert result.summary["algorithms"]["sft"]["delta_pi_chosen"] > 0


def test_off_policy_pair_is_a_valley_and_sft_moves_similar_tokens():
    result = run(Config(steps=1, eta=0.05, shared_context=True))
    s = result.summary
    assert s["initial_pi_rejected"] < s["initial_pi_chosen"] < s["initial_pi_argmax"]
    rec = result.records["sft"]
    attrs = result.attributes
    shares = (attrs == attrs[rec.chosen[0]]).any(1)
    shares[rec.chosen[0]] = False
    delta = np.log(rec.pi_after[0]) - np.log(rec.pi_before[0])
    # Tokens sharing an attribute with y+ gain relative to those sharing none (K = Phi Phi^T couples them).
    assert delta[shares].mean() > delta[~shares & (np.arange(len(delta)) != rec.chosen[0])].mean()


@pytest.mark.parametrize("shared, panels", [(False, 4), (True, 2)])
def test_every_policy_stays_a_distribution_and_the_figure_has_its_panels(shared, panels):
    result = run(Config(steps=5, shared_context=shared))
    for rec in result.records.values():
        assert np.all(rec.pi_after >= 0)
        np.testing.assert_allclose(rec.pi_after.sum(-1), 1.0, atol=1e-12)
    fig = plot(result)
    assert len(fig.axes) == panels * len(result.records)


def test_same_seed_gives_identical_metrics(tmp_path, undrawn_figures):
    # Only the numbers are compared: the figure (80 panels, most of a run's time) is not drawn here;
    # test_experiments_framework checks that run_experiment writes it.
    undrawn_figures(loss_residuals)
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
    ({"rho": 1.5}, r"rho must lie in \[0.0, 1.0\], got 1.5"),
    ({"shared_context": "yes"}, "shared_context must be True or False"),
    ({"chosen_rank": 36}, r"chosen_rank must lie in \[0, V\) = \[0, 36\)"),
    ({"valley_quantile": 3 / 35, "chosen_rank": 3}, "y\\+ and y- must differ"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(**kwargs)
