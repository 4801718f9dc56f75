"""llm.prefix: a prompt run once and continued from its key/value cache equals the full forward pass (values and
gradients), in the DPO step and the reference precompute, for every tiny architecture."""

import dataclasses

import pytest
import torch

from llm.encoding import EncodedSequence, TruncationPolicy, collate, encode_sequence
from llm.models import TINY_ARCHS, tiny_model
from llm.objective import (Objective, batch_loss, make_pair_batch, precompute_reference_logps,
                           resolve_prompt_sharing)
from llm.logps import encoded_logps
from llm.prefix import group_by_budget, shared_pair_logps, shares_prompts


def _encoded(pairs, tokenizer, policy):
    chosen = [encode_sequence(tokenizer, p.prompt, p.chosen, policy) for p in pairs]
    rejected = [encode_sequence(tokenizer, p.prompt, p.rejected, policy) for p in pairs]
    return chosen, rejected


@pytest.fixture(scope="module")
def truncating():
    return TruncationPolicy(max_prompt_tokens=9, max_response_tokens=5, prompt_overflow="left_truncate")


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_dpo_step_with_shared_prompts_equals_the_concatenated_step(arch, tokenizer, pairs, truncating):
    chosen, rejected = _encoded(pairs[:6], tokenizer, truncating)
    rejected[1] = dataclasses.replace(rejected[1], response_ids=rejected[1].response_ids[:1])  # one-token y-
    assert any(s.prompt_truncated for s in chosen) and shares_prompts(chosen, rejected)
    model = tiny_model(arch, len(tokenizer), seed=1)
    objective = Objective("dpo", {"beta": 0.1})
    ref_c, ref_r = precompute_reference_logps(model, chosen, rejected, 0, batch_size=4)
    ref_cs, ref_rs = precompute_reference_logps(model, chosen, rejected, 0, batch_size=3, share_prompts=True)
    torch.testing.assert_close(ref_cs, ref_c, rtol=0, atol=1e-4)
    torch.testing.assert_close(ref_rs, ref_r, rtol=0, atol=1e-4)
    model.train()
    results = []
    for share in (False, True):
        batch = make_pair_batch(range(6), chosen, rejected, 0, share_prompts=share)
        assert (batch.shared is not None) == share
        model.zero_grad()
        losses, parts = batch_loss(model, batch, objective, ref_chosen=ref_c + 0.3, ref_rejected=ref_r - 0.2)
        losses.sum().backward()
        results.append((losses.detach(), parts["logps_chosen"].detach(), parts["logps_rejected"].detach(),
                        [p.grad.clone() for p in model.parameters()]))
    (l0, c0, r0, g0), (l1, c1, r1, g1) = results
    torch.testing.assert_close(c1, c0, rtol=0, atol=1e-4)
    torch.testing.assert_close(r1, r0, rtol=0, atol=1e-4)
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-5)
    assert max(float(g.abs().max()) for g in g0) > 1e-4  # the gradient is not trivially zero
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_shared_per_token_log_probs_equal_the_concatenated_ones(arch, tokenizer, pairs, truncating):
    # Not only the sums: every response token's log-prob, in order (the two layouts differ in their columns).
    chosen, rejected = _encoded(pairs[:5], tokenizer, truncating)
    rejected[2] = dataclasses.replace(rejected[2], response_ids=rejected[2].response_ids[:1])
    model = tiny_model(arch, len(tokenizer), seed=3).eval()
    with torch.no_grad():
        shared = shared_pair_logps(model, chosen, rejected, 0)
        full = encoded_logps(model, collate([*chosen, *rejected], 0))
    for n, seq in enumerate([*chosen, *rejected]):
        a = shared.token_logps[n][shared.token_logps[n] != 0]
        b = full.token_logps[n][full.token_logps[n] != 0]
        assert a.numel() == b.numel() == len(seq.response_ids), n
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared.lengths.float(), full.lengths.float())


def test_a_per_step_reference_shares_its_prompts_too(gpt2, tokenizer, pairs, policy):
    chosen, rejected = _encoded(pairs[:4], tokenizer, policy)
    ref_model = tiny_model("gpt2", len(tokenizer), seed=5).eval()
    out = [batch_loss(gpt2, make_pair_batch(range(4), chosen, rejected, 0, share_prompts=s), Objective("dpo"),
                      ref_model=ref_model)[1] for s in (False, True)]
    torch.testing.assert_close(out[1]["ref_chosen"], out[0]["ref_chosen"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[1]["ref_rejected"], out[0]["ref_rejected"], rtol=0, atol=1e-4)


def test_pairs_without_a_shareable_prompt_keep_the_concatenated_pass(gpt2, tokenizer, pairs, policy):
    chosen, rejected = _encoded(pairs[:3], tokenizer, policy)
    other = list(rejected)
    other[0] = EncodedSequence(chosen[1].prompt_ids, rejected[0].response_ids, False, False)  # another prompt
    assert make_pair_batch(range(3), chosen, other, 0, share_prompts=True).shared is None
    short = [EncodedSequence(s.prompt_ids[-1:], s.response_ids, False, False) for s in chosen]  # 1-token prompt
    assert not shares_prompts(short, short)
    with pytest.raises(ValueError, match="same prompt of >= 2 tokens"):
        shared_pair_logps(gpt2, short, short, 0)
    assert make_pair_batch(range(3), chosen, None, 0, share_prompts=True).shared is None  # SFT: nothing to pair


def test_prompts_too_short_to_pay_are_not_shared(gpt2, tokenizer, pairs, policy):
    # The DPO step with sharing broke even on a CPU at prompts of 16-30 tokens (bench_dpo_sharing.py
    # --max-prompt-tokens): a run shares only when its prompts average at least share_prompts_min_tokens.
    from llm.config import TrainConfig

    chosen, rejected = _encoded(pairs[:4], tokenizer, policy)
    mean = sum(len(c.prompt_ids) for c in chosen) / len(chosen)
    assert resolve_prompt_sharing(gpt2, chosen, rejected, 0, True, min_prompt_tokens=0)
    assert resolve_prompt_sharing(gpt2, chosen, rejected, 0, True, min_prompt_tokens=int(mean))
    assert not resolve_prompt_sharing(gpt2, chosen, rejected, 0, True, min_prompt_tokens=int(mean) + 1)
    assert not resolve_prompt_sharing(gpt2, chosen, rejected, 0, False, min_prompt_tokens=0)
    assert TrainConfig().share_prompts_min_tokens == 24 > mean  # these synthetic prompts: unshared by default
    with pytest.raises(ValueError, match="share_prompts_min_tokens must be >= 0, got -1"):
        TrainConfig(share_prompts_min_tokens=-1)


class _NoPositions(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


def test_a_model_that_cannot_share_is_told_and_scored_unshared(gpt2, tokenizer, pairs, policy):
    chosen, rejected = _encoded(pairs[:3], tokenizer, policy)
    assert resolve_prompt_sharing(gpt2, chosen, rejected, 0, True)
    assert not resolve_prompt_sharing(gpt2, chosen, rejected, 0, False)
    assert not resolve_prompt_sharing(gpt2, chosen, None, 0, True)
    with pytest.warns(RuntimeWarning, match="share_prompts is not available for _NoPositions .*separate sequences"):
        assert not resolve_prompt_sharing(_NoPositions(gpt2), chosen, rejected, 0, True)


def test_group_by_budget_fills_groups_in_order():
    assert group_by_budget([3, 3, 3, 7, 1, 1], 6) == [[0, 1], [2], [3], [4, 5]]
    assert group_by_budget([], 4) == []
