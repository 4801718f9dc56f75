"""llm.probes: batched probe evaluation (shared prompts and full sequences) against the per-example method, the
argmax on y+, the paper's probe file."""

import dataclasses

import numpy as np
import pytest
import torch

from llm.data import ProbeSet, load_probe_set, probe_set_from_pairs
from llm.encoding import TruncationPolicy
from llm.models import TINY_ARCHS, tiny_model
from llm.prefix import GROUP_BATCHES, split_batches
from llm.probes import ARGMAX_PROBE, GREEDY_PROBE, RESPONSE_STATISTICS, ProbeEvaluator, evaluate_sequential
from llm.tokenization import train_bpe_tokenizer


def _assert_same(a, b, rtol=1e-5, atol=1e-5):
    assert a.per_example.keys() == b.per_example.keys()
    for probe, stats in a.per_example.items():
        assert stats.keys() == b.per_example[probe].keys()
        for stat, values in stats.items():
            np.testing.assert_allclose(values, b.per_example[probe][stat], rtol=rtol, atol=atol,
                                       err_msg=f"{probe}/{stat}")


def _edge_case_probes(pairs, tokenizer):
    """Probes with long prompts (left-truncated below), a one-token prompt, one-token and absent responses."""
    probes = probe_set_from_pairs(pairs[:7], held_out=pairs[7:10], seed=0)
    prompts = list(probes.prompts)
    prompts[0] = prompts[0] * 6  # far over the prompt budget: keeps its last tokens
    one_token = next(t for t in ("7", "a", " ", "H") if len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1)
    prompts[1] = one_token  # nothing to share: the full path scores it
    responses = {k: list(v) for k, v in probes.responses.items()}
    responses["chosen"][2] = ""  # with eos appended: the one-token response [eos]
    responses["rejected"][3] = None  # absent: NaN in every mode
    return ProbeSet(tuple(prompts), {k: tuple(v) for k, v in responses.items()})


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_shared_prompts_equal_the_full_path_for_every_architecture(arch, tokenizer, pairs):
    policy = TruncationPolicy(max_prompt_tokens=24, max_response_tokens=6, prompt_overflow="left_truncate")
    probes = _edge_case_probes(pairs, tokenizer)
    model = tiny_model(arch, len(tokenizer), seed=2)
    full = ProbeEvaluator(probes, tokenizer, policy, batch_size=16, mode="full")
    assert full.truncation["prompts_truncated"] > 0 and full.truncation["responses_truncated"] > 0
    reference = full(model)
    assert full.active_mode == "full"
    _assert_same(reference, evaluate_sequential(model, probes, tokenizer, policy), atol=1e-4)
    one_token = [s for p, i, s in full.items if p == "chosen" and i == 2][0]
    assert len(one_token.response_ids) == 1
    for batch_size in (1, 3, 64):  # 3 splits a prompt's responses over batches; 64 holds several prompts
        shared = ProbeEvaluator(probes, tokenizer, policy, batch_size=batch_size, mode="shared")
        result = shared(model)
        assert shared.active_mode == "shared", batch_size
        assert shared._use_head, "the LM head ran on the scored positions only"
        assert shared.unshared and all(shared.items[k][1] == 1 for k in shared.unshared)
        _assert_same(result, reference, rtol=0, atol=1e-4)
        assert np.isnan(result.per_example["rejected"]["logp_sum"][3])
        assert set(RESPONSE_STATISTICS) <= set(result.per_example["chosen"])
    only_chosen = ProbeSet(probes.prompts, {"chosen": probes.responses["chosen"]})
    sliced = ProbeEvaluator(only_chosen, tokenizer, policy, batch_size=2)  # 8 prompts a group, 2 per prefix pass
    assert max(len(prompts) for prompts, _ in sliced.groups) > 2
    _assert_same(sliced(model), ProbeEvaluator(only_chosen, tokenizer, policy, mode="full")(model), rtol=0, atol=1e-4)
    work_shared, work_full = shared.work("shared"), full.work("full")
    assert work_shared["real_tokens"] < work_full["real_tokens"] <= work_full["padded_positions"]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_shared_prompts_equal_the_full_path_with_sdpa_attention(arch, tokenizer, pairs):
    # Models loaded from the hub keep their default attention (sdpa in transformers 5), not the tiny models' eager:
    # its masked continuation from the cache must agree too.
    policy = TruncationPolicy(max_prompt_tokens=24, max_response_tokens=6, prompt_overflow="left_truncate")
    probes = _edge_case_probes(pairs, tokenizer)
    model = tiny_model(arch, len(tokenizer), seed=2, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    shared = ProbeEvaluator(probes, tokenizer, policy, batch_size=3, mode="shared")
    _assert_same(shared(model), ProbeEvaluator(probes, tokenizer, policy, mode="full")(model), rtol=0, atol=1e-4)
    assert shared.active_mode == "shared" and shared._use_head


def test_an_empty_response_without_eos_is_refused_naming_its_probe(tokenizer, pairs):
    # Without an appended eos (chat data) an empty response would have no token to score: refused at construction,
    # naming the probe, before any model runs (with eos it is the one-token [eos], tested above).
    policy = TruncationPolicy(max_prompt_tokens=24, max_response_tokens=6, append_eos=False)
    probes = probe_set_from_pairs(pairs[:4], seed=0)
    responses = {k: list(v) for k, v in probes.responses.items()}
    responses["rejected"][2] = ""
    probes = ProbeSet(probes.prompts, {k: tuple(v) for k, v in responses.items()})
    with pytest.raises(ValueError, match="probe 2: response encodes to zero tokens"):
        ProbeEvaluator(probes, tokenizer, policy, mode="shared")


def test_the_first_batch_check_runs_on_its_longest_responses(gpt2, tokenizer, pairs, policy, monkeypatch):
    # The one-time check compares a few responses with the full path: the batch's longest (most tokens checked).
    import llm.probes as probes_module

    probes = probe_set_from_pairs(pairs[:4], seed=0)
    evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=8, mode="shared")
    checked = []
    real = evaluator._reference_stats
    monkeypatch.setattr(evaluator, "_reference_stats", lambda m, d, index: checked.append(index) or real(m, d, index))
    evaluator(gpt2)
    first = [k for _, k in evaluator.groups[0][1][0]]
    assert checked == [first[-probes_module._SELF_CHECK_ROWS:]]
    assert len(first) > probes_module._SELF_CHECK_ROWS  # the first rows would be another check


def test_shared_batches_hold_their_prompt_groups_only(tokenizer, pairs, policy):
    # Memory: one group's cache at a time, each group a few batches of responses, never the whole set.
    probes = probe_set_from_pairs(pairs[:12], held_out=pairs[12:16], seed=0)
    evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=4)
    per_prompt, budget = len(probes.probe_types), GROUP_BATCHES * 4
    assert len(evaluator.groups) == -(-len(probes) // (budget // per_prompt)) > 1
    for prompts, chunks in evaluator.groups:
        assert len(prompts) * per_prompt <= budget and all(1 <= len(c) <= 4 for c in chunks)
        lengths = [len(evaluator.items[k][2].response_ids) for c in chunks for _, k in c]
        assert lengths == sorted(lengths)  # batches of similar lengths: little padding
    covered = sorted(k for _, chunks in evaluator.groups for c in chunks for _, k in c)
    assert covered == sorted(set(range(len(evaluator.items))) - set(evaluator.unshared))


def test_split_batches_minimises_padding_plus_a_cost_per_batch():
    assert split_batches([1, 1, 1, 9], 4, overhead=0) == [(0, 3), (3, 4)]
    assert split_batches([1, 1, 1, 9], 4, overhead=100) == [(0, 4)]
    cuts = split_batches([2] * 5, 2, overhead=0)
    assert [i for a, b in cuts for i in range(a, b)] == list(range(5)) and all(b - a <= 2 for a, b in cuts)
    with pytest.raises(ValueError, match="sorted"):
        split_batches([3, 1], 4, overhead=0)


class _NoCache(torch.nn.Module):
    """A causal LM whose forward takes no cache or positions (the full path still works)."""

    def __init__(self, inner, shift_positions=0):
        super().__init__()
        self.inner, self.shift_positions = inner, shift_positions

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                          logits_to_keep=logits_to_keep)


class _WrongPositions(torch.nn.Module):
    """A causal LM that continues from a cache but shifts every position id (a silently wrong continuation)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, **kwargs):
        if position_ids is not None and cache is not None:
            position_ids = position_ids + 5
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          cache=cache, **kwargs)


@pytest.mark.parametrize("wrapper, reason", [(_NoCache, "unexpected keyword"), (_WrongPositions, "differs")])
def test_shared_falls_back_to_full_with_a_message(wrapper, reason, gpt2, tokenizer, pairs, policy):
    probes = probe_set_from_pairs(pairs[:4], seed=0)
    evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=8, mode="shared")
    with pytest.warns(RuntimeWarning, match=rf"probe_mode 'shared' is not available .*{reason}.*probe_mode 'full'"):
        result = evaluator(wrapper(gpt2))
    assert evaluator.active_mode == "full"
    _assert_same(result, ProbeEvaluator(probes, tokenizer, policy, batch_size=8, mode="full")(gpt2))


def test_logits_post_processed_beyond_the_head_are_scored_from_the_model_itself(gpt2, tokenizer, pairs, policy):
    # A model whose logits are not head(last hidden state) (here: doubled by a hook, like soft-capping or a logit
    # scale) fails the first-batch check of the head path and is scored from its own logits, still shared.
    from llm.prefix import head_path

    probes = probe_set_from_pairs(pairs[:4], seed=0)
    full = ProbeEvaluator(probes, tokenizer, policy, batch_size=8, mode="full")
    def double(module, args, output):
        output.logits.mul_(2.0)  # in place: the hook returns None, so the output object stays

    handle = gpt2.register_forward_hook(double)
    try:
        assert head_path(gpt2) is not None  # nothing in its config says so: only the check can tell
        evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=8, mode="shared")
        result = evaluator(gpt2)
        reference = full(gpt2)
    finally:
        handle.remove()
    assert evaluator.active_mode == "shared" and not evaluator._use_head
    _assert_same(result, reference, rtol=0, atol=1e-4)
    gpt2.config.final_logit_softcapping = 30.0
    try:
        assert head_path(gpt2) is None
    finally:
        del gpt2.config.final_logit_softcapping


def test_unknown_probe_mode_is_refused(tokenizer, pairs, policy):
    with pytest.raises(ValueError, match="probe mode must be one of shared, full; got 'packed'"):
        ProbeEvaluator(probe_set_from_pairs(pairs[:2], seed=0), tokenizer, policy, mode="packed")


def test_batched_equals_per_example(gpt2, tokenizer, pairs, policy):
    probes = probe_set_from_pairs(pairs[:10], held_out=pairs[10:14], seed=0)
    batched = ProbeEvaluator(probes, tokenizer, policy, batch_size=7)(gpt2)
    _assert_same(batched, evaluate_sequential(gpt2, probes, tokenizer, policy))
    assert set(batched.probe_types) == set(probes.probe_types) | {ARGMAX_PROBE}
    assert not np.isnan(batched.arrays()["random_nonhum/logp_sum"]).any()


def test_teacher_forced_argmax_is_computed_on_y_plus(gpt2, tokenizer, pairs, policy):
    # The paper's code logged the argmax of the LAST probe in its loop (shuffled text) instead of y+ (PAPER.md s7).
    probes = probe_set_from_pairs(pairs[:6], held_out=pairs[6:8], seed=0)
    result = ProbeEvaluator(probes, tokenizer, policy, batch_size=4)(gpt2)
    only_chosen = ProbeSet(probes.prompts, {"chosen": probes.responses["chosen"]})
    only_last = ProbeSet(probes.prompts, {"chosen": probes.responses[probes.probe_types[-1]]})
    on_y_plus = ProbeEvaluator(only_chosen, tokenizer, policy)(gpt2).per_example[ARGMAX_PROBE]["logp_sum"]
    on_last = ProbeEvaluator(only_last, tokenizer, policy)(gpt2).per_example[ARGMAX_PROBE]["logp_sum"]
    got = result.per_example[ARGMAX_PROBE]["logp_sum"]
    np.testing.assert_allclose(got, on_y_plus, rtol=1e-6)
    assert np.abs(got - on_last).max() > 1e-3
    assert (got >= result.per_example["chosen"]["logp_sum"] - 1e-6).all()


def test_means_ignore_empty_responses_and_rows_are_tidy(gpt2, tokenizer, pairs, policy):
    probes = probe_set_from_pairs(pairs[:4], seed=0)
    responses = dict(probes.responses)
    responses["rejected"] = (None,) + responses["rejected"][1:]
    probes = ProbeSet(probes.prompts, responses)
    result = ProbeEvaluator(probes, tokenizer, policy, batch_size=3, greedy_max_new_tokens=3)(gpt2)
    rej = result.per_example["rejected"]["logp_sum"]
    assert np.isnan(rej[0]) and result.means()[("rejected", "logp_sum")] == pytest.approx(np.mean(rej[1:]))
    rows = result.rows(step=5, examples_seen=20, phase="dpo")
    assert {r["probe"] for r in rows} == set(probes.probe_types) | {ARGMAX_PROBE, GREEDY_PROBE}
    assert all(r.keys() == {"step", "examples_seen", "phase", "probe", "statistic", "value", "count"} for r in rows)
    assert [r["count"] for r in rows if r["probe"] == "rejected"][0] == 3
    assert (result.per_example[GREEDY_PROBE]["num_tokens"] <= 3).all()


def test_paper_hh_probe_file_evaluates_on_a_tiny_model(shared_data):
    probes = load_probe_set(shared_data / "paper_probes" / "hh_formal_prob_train.jsonl", max_records=4)
    texts = [t for v in probes.responses.values() for t in v if t] + list(probes.prompts)
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    model = tiny_model("qwen2", len(tok), seed=1)
    policy = TruncationPolicy(max_prompt_tokens=96, max_response_tokens=48, prompt_overflow="left_truncate")
    evaluator = ProbeEvaluator(probes, tok, policy, batch_size=16)
    result = evaluator(model)
    means = result.means()
    for probe in probes.probe_types:
        assert np.isfinite(means[(probe, "logp_sum")]), probe
        assert means[(probe, "logp_sum")] < 0 and means[(probe, "logp_mean")] < 0
    assert np.isfinite(means[(ARGMAX_PROBE, "logp_sum")])
    assert evaluator.truncation["num_sequences"] == sum(v is not None for r in probes.responses.values() for v in r)


def test_a_resumed_shared_run_equals_an_uninterrupted_full_run(tmp_path):
    """Shared probes and shared DPO prompts, stopped and resumed, against an uninterrupted run with neither."""
    from llm.config import TrainConfig
    from llm.training import train
    from toykit.runs import read_metrics

    base = TrainConfig(loss="dpo", num_synthetic=16, held_out=4, num_probes=6, tiny_hidden=32, tiny_vocab_size=300,
                       batch_size=2, max_prompt_tokens=32, max_response_tokens=16, lr=3e-3, epochs=1, eval_every=4,
                       checkpoint_every=2, probe_batch_size=5, progress=False, save_model=False)
    whole = train(dataclasses.replace(base, probe_mode="full", share_prompts=False, out_dir=str(tmp_path / "whole")))
    cut = dataclasses.replace(base, probe_mode="shared", share_prompts=True, share_prompts_min_tokens=0,
                              out_dir=str(tmp_path / "cut"))
    assert train(dataclasses.replace(cut, stop_after_steps=3)).status == "stopped"
    resumed = train(dataclasses.replace(cut, resume=True))
    assert (resumed.summary["probe_mode"], resumed.summary["share_prompts"]) == ("shared", True)
    assert (whole.summary["probe_mode"], whole.summary["share_prompts"]) == ("full", False)
    rows_a, rows_b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b]
    assert [(r["step"], r.get("probe"), r.get("statistic")) for r in rows_a] == \
        [(r["step"], r.get("probe"), r.get("statistic")) for r in rows_b]
    assert len({r["step"] for r in rows_a if "statistic" in r}) == 4  # steps 0, 2, 4 (every 4 pairs) and the end
    for a, b in zip(rows_a, rows_b):
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], rel=1e-4, abs=1e-4, nan_ok=True), (key, a, b)
            else:
                assert value == b[key]
    for name in sorted(p.name for p in (tmp_path / "whole" / "probes").glob("*.npz")):
        xa, xb = np.load(tmp_path / "whole" / "probes" / name), np.load(tmp_path / "cut" / "probes" / name)
        for key in xa.keys():
            np.testing.assert_allclose(xa[key], xb[key], rtol=0, atol=1e-4, err_msg=f"{name} {key}")
