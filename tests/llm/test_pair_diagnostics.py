"""llm.pair_diagnostics: CHES and its variants, and the eNTK one-step change of y+ against Prop. 1's own code."""

import numpy as np
import pytest
import torch

from llm.encoding import collate, encode_sequence
from llm.linearize import summed_logps
from llm.pair_diagnostics import pair_diagnostics, rank_correlations
from llm.validation.prop1 import loss_gradient, predicted_change


@pytest.fixture()
def encoded(pairs, tokenizer, policy):
    chosen = [encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs[:5]]
    rejected = [encode_sequence(tokenizer, p.prompt, p.rejected, policy) for p in pairs[:5]]
    return chosen, rejected


def test_ches_vanishes_when_y_minus_is_y_plus_and_the_token_variant_is_not_below_it(gpt2, tokenizer, encoded):
    chosen, _ = encoded
    table = pair_diagnostics(gpt2.double(), chosen, chosen, tokenizer.pad_token_id)
    np.testing.assert_allclose(table["ches"], 0.0, atol=1e-6)
    np.testing.assert_allclose(table["ln_ches"], 0.0, atol=1e-9)
    assert (table["token_ches"] >= -1e-9).all()  # the max over tokens is at least the mean: <mean, mean> - ||mean||^2
    np.testing.assert_allclose(table["entk_delta_chosen"], 0.0, atol=1e-9)  # identical responses: DPO's gradient is 0


def test_the_entk_change_is_prop1_of_one_dpo_step_on_the_pair(gpt2, tokenizer, encoded):
    model = gpt2.double()
    chosen, rejected = encoded
    table = pair_diagnostics(model, chosen, rejected, tokenizer.pad_token_id, beta=0.2)
    params = {n: p.detach() for n, p in model.named_parameters()}
    for i in range(len(chosen)):
        c, r = collate([chosen[i]], tokenizer.pad_token_id), collate([rejected[i]], tokenizer.pad_token_id)
        with torch.no_grad():
            ref = (summed_logps(model, params, c), summed_logps(model, params, r))
        g = loss_gradient(model, params, c, r, "dpo", ref, beta=0.2)
        expected = float(predicted_change(model, params, c, g, 1.0)[0])
        assert table["entk_delta_chosen"][i] == pytest.approx(expected, rel=1e-8)
    corr = rank_correlations(table)
    assert corr.shape == (4, 4) and np.allclose(np.diag(corr), 1.0)


def test_batched_ches_scores_equal_each_pair_alone(gpt2, tokenizer, pairs, policy, encoded):
    # Right padding of shorter pairs in a batch must not move any real position's hidden state.
    from llm.pair_diagnostics import CHES_SCORES, ches_scores

    chosen, _ = encoded
    rejected = [encode_sequence(tokenizer, p.prompt, p.rejected + " no" * i, policy) for i, p in enumerate(pairs[:5])]
    assert len({len(r.prompt_ids) + len(r.response_ids) for r in rejected}) > 1, "the batch needs padding"
    batched = ches_scores(gpt2, chosen, rejected, tokenizer.pad_token_id)
    for i in range(len(chosen)):
        alone = ches_scores(gpt2, chosen[i: i + 1], rejected[i: i + 1], tokenizer.pad_token_id)
        for name in CHES_SCORES:
            assert float(batched[name][i]) == pytest.approx(float(alone[name][0]), rel=1e-4, abs=1e-5), name
    assert ((batched["cosine"] <= 1 + 1e-9) & (batched["cosine"] >= -1 - 1e-9)).all()
