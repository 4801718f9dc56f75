"""Tests of the `response-dynamics` experiment (toy Figures 3-5)."""

import dataclasses

import numpy as np
import pytest
import torch

from toykit.experiments import response_dynamics as rd
from toykit.experiments import run_experiment
from toykit.residuals import sequence_residual

SMALL = dict(n_train=6, n_heldout=3, vocab_pairs=14, length_content=3, length_format=2, format_pool=2,
             prompt_dim=6, embed_dim=4, sft_steps=40, dpo_steps=40, record_every=10)


@pytest.fixture(scope="module")
def small_result():
    return rd.run(rd.Config(**SMALL))


def test_probe_tokens_have_the_promised_structure():
    cfg = rd.Config(**SMALL)
    world = rd.make_world(cfg)
    lc = cfg.length_content
    chosen, rejected = world["chosen"], world["rejected"]
    assert torch.equal(world["rephrase_semantic"], chosen + 1)  # every token swapped for its synonym
    assert torch.equal(world["rephrase_format"][:, lc:], chosen[:, lc:])  # same format tokens
    assert torch.equal(rejected[:, :cfg.shared_content], chosen[:, :cfg.shared_content])
    for row in range(cfg.n_train):
        assert not torch.isin(world["rephrase_format"][row, :lc], chosen[row, :lc]).any()  # other content
        assert not torch.isin(rejected[row, cfg.shared_content:lc], chosen[row, :lc]).any()
    assert torch.equal(world["shuffled"].sort(1).values, chosen.sort(1).values)
    assert not torch.equal(world["shuffled"], chosen)
    assert torch.equal(world["other_chosen"][1:], chosen[:-1])
    # synonyms are close in embedding space, different pairs are not (on average)
    emb = world["embeddings"]
    syn = (emb[0::2] * emb[1::2]).sum(-1)
    np.testing.assert_allclose(syn.numpy(), cfg.synonym_similarity, atol=1e-12)


def test_one_sgd_step_moves_logits_exactly_by_minus_eta_k_g():
    # z is linear in (A, C), so Proposition 1 is exact here: Delta z(x_o, l) = -eta sum_u (e_o . e_u)(I + U U^T) G_ul
    cfg = rd.Config(**SMALL)
    world = rd.make_world(cfg)
    g = torch.Generator().manual_seed(3)
    length, v = cfg.length_content + cfg.length_format, 2 * cfg.vocab_pairs
    params = {"A": torch.randn(length, v, cfg.prompt_dim, dtype=torch.float64, generator=g, requires_grad=True),
              "C": torch.randn(length, cfg.embed_dim, cfg.prompt_dim, dtype=torch.float64, generator=g,
                               requires_grad=True)}
    e, emb, eta = world["prompts"][:cfg.n_train], world["embeddings"], 0.05
    z = rd.logits(params, e, emb)  # (N, L, V)
    loss = -rd.response_logps(z, world["chosen"]).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    new = {k: (p - eta * gr).detach() for (k, p), gr in zip(params.items(), grads)}
    observed = world["prompts"][cfg.n_train:]  # held-out prompts as x_o
    actual = rd.logits(new, observed, emb) - rd.logits(params, observed, emb).detach()
    res = sequence_residual("sft", z.detach(), world["chosen"], torch.ones(cfg.n_train, length, dtype=torch.bool))
    kernel_label = torch.eye(v, dtype=torch.float64) + emb @ emb.T  # (V, V)
    predicted = -eta * torch.einsum("ou,vw,ulw->olv", observed @ e.T, kernel_label, res.G_chosen / cfg.n_train)
    torch.testing.assert_close(actual, predicted, rtol=1e-9, atol=1e-11)


def test_sft_and_dpo_directions_guaranteed_by_small_steps(small_result):
    p = {name: i for i, name in enumerate(rd.PROBES)}
    base = small_result.logps[0]
    sft = np.nonzero(small_result.phase == "sft")[0]
    end_sft = int(sft[-1])
    assert np.all(np.diff(base[:end_sft + 1, p["chosen"]]) > 0)  # SFT descends -lp+
    margin = base[end_sft:, p["chosen"]] - base[end_sft:, p["rejected"]]
    assert np.all(np.diff(margin) > 0)  # DPO descends -log s(beta h): the margin grows
    extend = small_result.logps[1]
    assert extend[end_sft, p["rejected"]] > base[end_sft, p["rejected"]]  # extend trained on y-


def test_summary_lists_each_claim_with_a_measured_value(small_result):
    claims = small_result.summary["claims"]
    assert len(claims) == small_result.summary["claims_total"] == 15
    assert small_result.summary["claims_held"] == sum(c["held"] for c in claims)
    for c in claims:
        assert c["measured"] and isinstance(c["held"], bool) and c["reference"].startswith("PAPER.md")
    held = {c["claim"]: c["held"] for c in claims}
    # Pinned: the directions a step of each loss produces in this toy (SFT descends -lp+ and shares structure across
    # prompts; DPO widens the margin and squeezes the argmax). A regression in the simulator flips one of these.
    for claim in ("SFT raises log pi(y+)", "SFT raises the y+ of other training prompts",
                  "DPO: y- falls, faster than y+ (the margin grows)", "DPO raises the argmax response (squeezing)"):
        assert held[claim], claim


def test_same_seed_gives_identical_metrics_files(tmp_path):
    cfg = rd.Config(**{**SMALL, "sft_steps": 10, "dpo_steps": 10})
    _, first = run_experiment("response-dynamics", cfg, out_dir=tmp_path / "a")
    _, second = run_experiment("response-dynamics", cfg, out_dir=tmp_path / "b")
    assert (first / "metrics.jsonl").read_bytes() == (second / "metrics.jsonl").read_bytes()
    assert (first / "summary.json").read_bytes() == (second / "summary.json").read_bytes()


@pytest.mark.parametrize("change, message", [
    ({"dpo_lr": -0.5}, "dpo_lr must be a finite number > 0"),
    ({"vocab_pairs": 1}, "vocab_pairs must be an integer >= 2"),
    ({"dpo_loss": "kto"}, "unknown loss(es) ['kto']"),
    ({"dpo_loss": "sft"}, "dpo_loss must be a paired"),
    ({"shared_content": 9}, "shared_content must be <= length_content"),
    ({"prompt_similarity": 1.0}, "prompt_similarity must lie in"),
])
def test_bad_configs_are_refused_before_any_work(change, message):
    with pytest.raises(ValueError) as err:
        dataclasses.replace(rd.Config(), **change)
    assert message in str(err.value)
