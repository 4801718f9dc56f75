"""Tests of the two-context toy simulator and the `trajectories` experiment."""

import dataclasses

import numpy as np
import pytest
import torch

from toykit.experiments import _toy_policy as tp
from toykit.experiments import run_experiment, trajectories
from toykit.residuals import residual, sequence_residual
from toykit.squeeze import squeeze_step

SMALL = dict(vocab=8, steps=40, record_every=10, algorithms=("sft", "dpo", "dpop", "dpo@on_policy"))


def _random_state(n: int, v: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, v, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))  # (S, 2, V)


@pytest.mark.parametrize("loss", ["sft", "dpo", "ipo", "dpop", "rpo", "simpo", "slic", "nca"])
def test_autograd_gradient_equals_closed_form_residual(loss):
    n, v = 5, 7
    z = _random_state(n, v, seed=1)
    y_c, y_r = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([6, 5, 4, 0, 1])
    ref = torch.log_softmax(_random_state(n, v, seed=2), dim=-1)
    ref_c, ref_r = ref[:, 0].gather(-1, y_c[:, None])[:, 0], ref[:, 1].gather(-1, y_r[:, None])[:, 0]
    algorithms = tp.parse_algorithms("algorithms", [loss])
    grad = tp.loss_gradient(z, y_c, y_r, ref_c, ref_r, torch.ones(n, dtype=torch.float64),
                            torch.zeros(n, dtype=torch.int64), algorithms, {"beta": 0.3})
    paired = algorithms[0].loss != "sft"
    res = residual(loss, z[:, 0], y_c, z[:, 1] if paired else None, y_r if paired else None,
                   ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, beta=0.3)
    torch.testing.assert_close(grad[:, 0], res.G_chosen, rtol=1e-10, atol=1e-12)
    expected_rejected = res.G_rejected if paired else torch.zeros_like(grad[:, 1])
    torch.testing.assert_close(grad[:, 1], expected_rejected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["dpo", "simpo", "rpo"])
def test_response_lengths_match_the_sequence_residual_of_repeated_tokens(loss):
    # |y| tokens at identical contexts: dL/dz is the sum over positions of the teacher-forced sequence residual
    n, v, len_c, len_r = 3, 6, 2, 5
    z = _random_state(n, v, seed=3)
    y_c, y_r = torch.tensor([1, 2, 3]), torch.tensor([5, 0, 4])
    ref_c, ref_r = torch.full((n,), -4.0, dtype=torch.float64), torch.full((n,), -9.0, dtype=torch.float64)
    grad = tp.loss_gradient(z, y_c, y_r, ref_c, ref_r, torch.ones(n, dtype=torch.float64),
                            torch.zeros(n, dtype=torch.int64), tp.parse_algorithms("a", [loss]), {"beta": 0.2},
                            chosen_length=len_c, rejected_length=len_r)
    seq = sequence_residual(
        loss, z[:, None, 0].expand(n, len_c, v), y_c[:, None].expand(n, len_c), torch.ones(n, len_c, dtype=torch.bool),
        z[:, None, 1].expand(n, len_r, v), y_r[:, None].expand(n, len_r), torch.ones(n, len_r, dtype=torch.bool),
        ref_chosen_logps=ref_c, ref_rejected_logps=ref_r, beta=0.2)
    torch.testing.assert_close(grad[:, 0], seq.G_chosen.sum(1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad[:, 1], seq.G_rejected.sum(1), rtol=1e-10, atol=1e-12)


def test_decoupled_rejected_context_takes_exactly_the_squeeze_step():
    # rho = 0: x- receives only the negative gradient, so one step is PAPER.md section 4's formula with
    # c = eta |y-| beta (1 - a), a = sigmoid(beta h) = 1/2 at the start (policy = reference).
    eta, beta, len_r = 0.7, 0.5, 3
    batch = tp.make_scenarios([6], [2.0], [2], [5], [eta], [0], tp.parse_algorithms("a", ["dpo"]), rho=0.0,
                              hparams={"beta": beta}, rejected_length=len_r)
    trace = tp.simulate(batch, 1, torch.zeros(1, 1, dtype=torch.float64))
    pi0 = torch.softmax(batch.z0[0, 1], -1).numpy()
    expected = squeeze_step(pi0, 5, eta * len_r * beta * 0.5)
    np.testing.assert_allclose(torch.softmax(trace.z_final[0, 1], -1).numpy(), expected, rtol=1e-10, atol=1e-14)


def test_batch_equals_a_loop_over_scenarios_with_padding_and_on_policy_draws():
    algorithms = tp.parse_algorithms("a", ["dpo", "ipo", "dpo@on_policy"])
    batch = tp.make_scenarios([5, 9, 9, 5], [0.5, 2.0, 1.0, 3.0], [1, 2, 2, 1], [4, 8, 0, 3], [0.3, 1.0, 0.5, 0.2],
                              [0, 1, 2, 2], algorithms, rho=0.8, hparams={"beta": 0.1}, rejected_length=3)
    uniforms = torch.rand(25, batch.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    together = tp.simulate(batch, 25, uniforms, record_every=5)
    alone = tp.simulate_one_by_one(batch, 25, uniforms, record_every=5)
    for name in tp.RECORDS:
        torch.testing.assert_close(together.records[name], alone.records[name], rtol=1e-12, atol=1e-12)
    assert torch.equal(together.diverged_at, alone.diverged_at)


def test_mass_groups_partition_the_distribution():
    result = trajectories.run(trajectories.Config(**SMALL))
    total = sum(result.records[f"mass_{g}"] for g in tp.MASS_GROUPS)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    np.testing.assert_allclose(result.records["mass_chosen"], np.exp(result.records["logp_chosen"]), atol=1e-12)


def test_off_policy_dpo_from_a_peaky_start_squeezes_the_rejected_context():
    # theory (PAPER.md section 4, claims 1-2): with rho = 0 the y- context gets a pure negative gradient, so
    # pi(y-) falls and pi(argmax) rises at every step
    cfg = trajectories.Config(**{**SMALL, "rho": 0.0, "steps": 30, "record_every": 1})
    result = trajectories.run(cfg)
    i, k = trajectories.STARTS.index("peaky/valley"), cfg.algorithms.index("dpo")
    argmax = np.exp(result.records["logp_argmax"][:, i, k, 1])
    rejected = np.exp(result.records["logp_rejected"][:, i, k, 1])
    assert np.all(np.diff(argmax) > 0)
    assert np.all(np.diff(rejected) < 0)
    assert result.summary["claims"][0]["held"]


def test_default_coupling_dpo_lowers_y_plus_where_dpop_keeps_it():
    # with rho |y-|/|y+| = 3.6 > 2 DPO's rejected tokens outweigh y+'s own push at a peaky start; DPOP's penalty
    # switches on once lp+ < ref+ and holds y+ at its start
    cfg = trajectories.Config(**{**SMALL, "vocab": 20, "steps": 200, "eta": 0.3})
    runs = trajectories.run(cfg).summary["runs"]
    assert runs["peaky/valley/dpo"]["delta_pi_chosen_at_chosen_ctx"] < 0
    assert runs["peaky/valley/dpop"]["delta_pi_chosen_at_chosen_ctx"] > -1e-3
    assert runs["peaky/valley/sft"]["delta_pi_chosen_at_chosen_ctx"] > 0


def test_same_seed_gives_identical_metrics_files(tmp_path, undrawn_figures):
    cfg = trajectories.Config(**SMALL)
    _, first = run_experiment("trajectories", cfg, out_dir=tmp_path / "a")
    undrawn_figures(trajectories)  # the second run's numbers only (its figure is ~4 s of drawing)
    _, second = run_experiment("trajectories", cfg, out_dir=tmp_path / "b")
    assert (first / "metrics.jsonl").read_bytes() == (second / "metrics.jsonl").read_bytes()
    assert (first / "summary.json").read_bytes() == (second / "summary.json").read_bytes()
    assert (first / "trajectories.png").exists()


@pytest.mark.parametrize("change, message", [
    ({"eta": -0.1}, "eta must be a finite number > 0"),
    ({"vocab": 1}, "vocab must be an integer >= 3"),
    ({"algorithms": ("dpo", "kto")}, "unknown loss(es) ['kto']"),
    ({"algorithms": ("sft@on_policy",)}, "uses no y-"),
    ({"algorithms": ("dpo@offline",)}, "unknown mode"),
    ({"chosen_rank": 0}, "chosen_rank must lie in"),
    ({"rho": 1.5}, "rho must lie in"),
])
def test_bad_configs_are_refused_before_any_work(change, message):
    with pytest.raises(ValueError) as err:
        dataclasses.replace(trajectories.Config(), **change)
    assert message in str(err.value)
