"""llm.probes: batched probe evaluation against the per-example method, the argmax on y+, the paper's probe file."""

import numpy as np
import pytest

from llm.data import ProbeSet, load_probe_set, probe_set_from_pairs
from llm.encoding import TruncationPolicy
from llm.models import tiny_model
from llm.probes import ARGMAX_PROBE, GREEDY_PROBE, ProbeEvaluator, evaluate_sequential
from llm.tokenization import train_bpe_tokenizer


def _assert_same(a, b, rtol=1e-5):
    assert a.per_example.keys() == b.per_example.keys()
    for probe, stats in a.per_example.items():
        for stat, values in stats.items():
            np.testing.assert_allclose(values, b.per_example[probe][stat], rtol=rtol, atol=1e-5,
                                       err_msg=f"{probe}/{stat}")


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
