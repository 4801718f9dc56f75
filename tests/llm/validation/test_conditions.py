"""The conditions measured at a phase start: overlap, CHES, the one-step change and the per-position argmax split."""

import numpy as np
import pytest
import torch

from llm.config import TrainConfig
from llm.data import PreferencePair, probe_set_from_pairs
from llm.models import tiny_model
from llm.validation.conditions import (argmax_positions, argmax_split, bigram_overlap, ches_similarity,
                                       one_step_change)


@pytest.fixture(scope="module")
def setup(pairs, tokenizer):
    model = tiny_model("gpt2", len(tokenizer), seed=0).eval()
    probes = probe_set_from_pairs(pairs[:4], pairs[-2:], seed=0)
    return model, probes


def test_bigram_overlap_separates_edits_from_independent_responses(tokenizer):
    p = PreferencePair("Q:", " the cat sat on the mat today", " the cat sat on the rug today")
    same = PreferencePair("Q:", p.chosen, p.chosen)
    other = PreferencePair("Q:", p.chosen, " XQZ WKJ VVB")  # no byte of it occurs in y+
    ids = tokenizer(p.rejected, add_special_tokens=False)["input_ids"]
    plus = tokenizer(p.chosen, add_special_tokens=False)["input_ids"]
    expected = np.mean([b in set(zip(plus[:-1], plus[1:])) for b in zip(ids[:-1], ids[1:])])
    assert bigram_overlap(tokenizer, [p]) == pytest.approx(expected) and 0.3 < expected < 1
    assert bigram_overlap(tokenizer, [same]) == 1.0
    assert bigram_overlap(tokenizer, [other]) == 0.0
    one_token = PreferencePair(p.prompt, p.chosen, next(t for t in ("a", "7", " ")
                                                        if len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1))
    assert np.isnan(bigram_overlap(tokenizer, [one_token])), "no y- bigram: not measured (was a crash mid-validation)"
    assert bigram_overlap(tokenizer, [same, other]) == 0.5, "a mean over pairs"


def test_ches_is_one_for_identical_responses_and_matches_its_formula(setup, tokenizer, pairs):
    model, _ = setup
    same = [PreferencePair(p.prompt, p.chosen, p.chosen) for p in pairs[:3]]
    got = ches_similarity(model, tokenizer, same)
    assert got["ches_cosine"] == pytest.approx(1.0, abs=1e-5) and got["ches_ln"] == pytest.approx(0.0, abs=1e-4)
    # Against a loop: mean hidden state over the positions that predict the response tokens.
    p = pairs[0]
    with torch.no_grad():
        def mean_hidden(response):
            prompt_ids = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
            resp_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            h = model(input_ids=torch.tensor([prompt_ids + resp_ids]), output_hidden_states=True).hidden_states[-1][0]
            return h[len(prompt_ids) - 1: len(prompt_ids) + len(resp_ids) - 1].mean(0)
        hp, hm = mean_hidden(p.chosen), mean_hidden(p.rejected)
    got = ches_similarity(model, tokenizer, [p])
    assert got["ches_ln"] == pytest.approx(float(hp @ hm - hp @ hp), rel=1e-4)
    assert got["ches_cosine"] == pytest.approx(float(torch.cosine_similarity(hp, hm, dim=0)), rel=1e-5)


def test_one_step_change_grows_with_the_learning_rate_and_leaves_the_model(setup, tokenizer, pairs, tmp_path):
    model, probes = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    changes = []
    for k, lr in enumerate((1e-5, 1e-3)):
        cfg = TrainConfig(model="tiny", loss="dpo", optimizer="adamw", lr=lr, batch_size=4, num_probes=len(probes),
                          held_out=0, device="cpu", progress=False, save_model=False, checkpoint_at_end=False,
                          warmup_steps=50)
        changes.append(one_step_change(cfg, model, tokenizer, pairs[:8], probes, tmp_path / f"s{k}"))
    assert 0 < changes[0] < changes[1], "a larger peak lr (warm-up ignored) moves the probes further"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_argmax_split_by_the_start_positions(setup, tokenizer):
    model, probes = setup
    start = argmax_positions(model, tokenizer, probes)
    assert len(start) == len(probes.prompts)
    first = tokenizer(probes.responses["chosen"][0], add_special_tokens=False)["input_ids"]
    assert len(start[0]["log_max"]) == len(first) + 1, "every y+ token and the eos"
    assert np.all(start[0]["log_max"] <= 0)
    end = [{"log_max": s["log_max"] + np.where(s["is_chosen"], 1.0, 3.0), "is_chosen": ~s["is_chosen"]}
           for s in start]
    split = argmax_split(start, end)
    share = np.concatenate([~s["is_chosen"] for s in start]).mean()
    assert split["share_not_chosen"] == pytest.approx(share)
    assert split["not_chosen"] == pytest.approx(3.0) and (split["chosen"] == pytest.approx(1.0) or share == 1)
    with pytest.raises(ValueError, match="same probes"):
        argmax_split(start, end[:1])
