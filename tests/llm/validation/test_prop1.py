"""Proposition 1 on a tiny causal LM: the JVP inner product, the real step, and the eta^2 remainder."""

import pytest
import torch

from llm.encoding import collate, encode_sequence, TruncationPolicy
from llm.models import tiny_model
from llm.validation.prop1 import (Prop1Config, loss_gradient, measured_change, observed_batch, predicted_change, run_prop1,
                       summed_logps)
from llm.tokenization import build_word_tokenizer
from llm.validation.world import PROBE_KEYS, WorldConfig, build_world

TYPES = [k for k in PROBE_KEYS if k != "prompt"]


@pytest.fixture(scope="module")
def setup():
    world = build_world(WorldConfig(seed=1, n_entities=8, n_probes=4, docs_per_entity=1, n_unrelated=10))
    texts = list(world.corpus) + [v for p in world.probes for v in p.values()]
    tok = build_word_tokenizer(texts)
    model = tiny_model("gpt2", len(tok), hidden=32, layers=2, heads=2, seed=0, dtype="float64").eval()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return world, tok, model, params


def test_summed_logps_equals_a_per_token_loop(setup):
    world, tok, model, params = setup
    batch, _ = observed_batch(tok, world.probes[:2], ["chosen", "irr_hum"])
    fast = summed_logps(model, params, batch)
    for n in range(batch.input_ids.shape[0]):
        ids = batch.input_ids[n][batch.attention_mask[n].bool()]
        start = int(batch.response_mask[n].nonzero()[0])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[None]).logits[0], dim=-1)  # (L, V)
        slow = sum(float(logp[m - 1, ids[m]]) for m in range(start, len(ids)))
        assert fast[n].item() == pytest.approx(slow, abs=1e-9)


def test_jvp_prediction_equals_explicit_gradient_inner_products(setup):
    world, tok, model, params = setup
    pair = world.train_pairs[0]
    policy = TruncationPolicy()
    chosen = collate([encode_sequence(tok, pair["prompt"], pair["chosen"], policy)], tok.pad_token_id)
    g = loss_gradient(model, params, chosen, None, "sft", (None, None))
    batch, _ = observed_batch(tok, world.probes[:2], ["chosen", "rejected", "random_permute"])
    eta = 1e-3
    predicted = predicted_change(model, params, batch, g, eta, chunk_size=2)
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    logps = summed_logps(model, leaves, batch)
    for n in range(logps.shape[0]):
        grads = torch.autograd.grad(logps[n], list(leaves.values()), retain_graph=True)
        inner = sum((a * g[k]).sum() for a, k in zip(grads, leaves))
        assert predicted[n].item() == pytest.approx(-eta * inner.item(), rel=1e-9, abs=1e-12)
    # SFT on y+ of probe 0 must raise that very response (its own gradient inner product is a squared norm).
    assert predicted[0] > 0


def test_dpo_gradient_at_reference_is_half_beta_times_the_difference(setup):
    world, tok, model, params = setup
    pair, policy, beta = world.train_pairs[1], TruncationPolicy(), 0.1
    c = collate([encode_sequence(tok, pair["prompt"], pair["chosen"], policy)], tok.pad_token_id)
    r = collate([encode_sequence(tok, pair["prompt"], pair["rejected"], policy)], tok.pad_token_id)
    with torch.no_grad():
        ref = (summed_logps(model, params, c), summed_logps(model, params, r))
    g = loss_gradient(model, params, c, r, "dpo", ref, beta=beta)
    g_c = loss_gradient(model, params, c, None, "sft", (None, None))  # -grad lp+
    g_r = loss_gradient(model, params, r, None, "sft", (None, None))  # -grad lp-
    for name in params:
        expected = 0.5 * beta * (g_c[name] - g_r[name])  # dL/dh = -beta sigmoid(0) at h = 0
        torch.testing.assert_close(g[name], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss,eta", [("sft", 1e-4), ("dpo", 2e-3)])
def test_small_step_prediction_tracks_the_real_change(setup, loss, eta):
    world, tok, model, _ = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = run_prop1(model, tok, list(world.train_pairs), list(world.probes), TYPES,
                    Prop1Config(loss=loss, eta=eta, n_steps=2, sweep_factors=(0.5, 2.0, 8.0)))
    assert res.predicted.shape == res.measured.shape == (2, len(res.probe_types))
    assert set(res.probe_types) == set(TYPES)
    assert res.correlation > 0.99 and res.relative_error < 0.1
    assert 1.7 < res.slope < 2.3, f"remainder should scale like eta^2, fitted slope {res.slope}"
    assert res.sweep_errors[0] < res.sweep_errors[1] < res.sweep_errors[2]
    # The two steps differ (the model moved between them), and the caller's model was not touched.
    assert not torch.allclose(torch.as_tensor(res.measured[0]), torch.as_tensor(res.measured[1]))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_measured_change_is_the_difference_of_two_evaluations(setup):
    world, tok, model, params = setup
    batch, _ = observed_batch(tok, world.probes[:1], ["chosen", "irr_test"])
    g = {n: torch.randn_like(p, generator=torch.Generator().manual_seed(0)) for n, p in params.items()}
    delta = measured_change(model, params, batch, g, 1e-2)
    stepped = {n: params[n] - 1e-2 * g[n] for n in params}
    with torch.no_grad():
        expected = summed_logps(model, stepped, batch) - summed_logps(model, params, batch)
    torch.testing.assert_close(delta, expected)


def test_bad_config_and_inputs_are_refused(setup):
    world, tok, model, _ = setup
    with pytest.raises(ValueError, match="unknown loss"):
        Prop1Config(loss="nope")
    with pytest.raises(ValueError, match="sweep_factors"):
        Prop1Config(sweep_factors=(1.0,))
    with pytest.raises(ValueError, match="no non-empty responses"):
        observed_batch(tok, [{"prompt": world.probes[0]["prompt"], "chosen": ""}], ["chosen"])
    with pytest.raises(ValueError, match="at least one training pair"):
        run_prop1(model, tok, [], list(world.probes), TYPES)


def test_target_change_sets_eta_from_the_largest_predicted_change(setup):
    world, tok, model, _ = setup
    res = run_prop1(model, tok, list(world.train_pairs), list(world.probes[:2]), ["chosen", "rejected"],
                    Prop1Config(loss="sft", target_change=0.02, n_steps=1, sweep_factors=(1.0, 4.0)))
    assert abs(res.predicted[0]).max() == pytest.approx(0.02, rel=1e-9)
    assert res.sweep_etas == pytest.approx((res.eta, 4 * res.eta))


def test_full_precision_keeps_llama_norms_and_softmax_in_float64():
    from llm.validation.prop1 import full_precision

    model = tiny_model("llama", 50, hidden=32, layers=1, heads=2, seed=0, dtype="float64").eval()
    norm = next(m for m in model.modules() if type(m).__name__.endswith("RMSNorm"))
    x = torch.randn(3, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 7.3
    exact = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    # transformers rounds through float32 (a guard meant for half precision): visible at float64 resolution.
    assert (norm(x) - exact).abs().max() > 1e-10
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rounded = model(input_ids=ids).logits
        with full_precision(model):
            assert (norm(x) - exact).abs().max() < 1e-13
            probs = torch.nn.functional.softmax(x, dim=-1, dtype=torch.float32)
            assert probs.dtype == torch.float64
            full = model(input_ids=ids).logits
    assert torch.nn.functional.softmax(x, dim=-1, dtype=torch.float32).dtype == torch.float32  # restored
    assert (norm(x) - exact).abs().max() > 1e-10  # restored
    assert 0 < (full - rounded).abs().max() < 1e-5  # the same function, without the float32 rounding
