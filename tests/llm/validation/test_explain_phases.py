"""llm.validation.explain_phases: a phase's attribution condensed for the seed's record, with its forecast."""

import copy

import pytest

from llm.config import TrainConfig
from llm.training import train
from llm.validation.config import ValidateConfig
from llm.validation.explain_phases import phase_attribution


def test_a_dpo_phase_is_condensed_with_sentences_and_the_forecast(tmp_path, gpt2, tokenizer, pairs):
    cfg = TrainConfig(loss="dpo", phase="dpo", lr=1e-5, batch_size=4, epochs=1, held_out=0, num_probes=3,
                      eval_every=8, max_prompt_tokens=64, max_response_tokens=32, progress=False, save_model=False,
                      checkpoint_at_end=False, explain_prompts=3, out_dir=str(tmp_path / "dpo"))
    start = copy.deepcopy(gpt2)
    result = train(cfg, model=copy.deepcopy(start), tokenizer=tokenizer, pairs=list(pairs[:16]))
    out = phase_attribution(result, cfg, start, tokenizer, pairs[:16], None, with_forecast=True)
    assert out["terms"][:2] == ["y+ pull", "y- push"]
    assert set(out["by_probe"]) >= {"chosen", "rejected", "argmax_teacher_forced"}
    rejected = out["by_probe"]["rejected"]
    assert rejected["measured"] < 0 and rejected["y- push"] < 0  # DPO pushes y- down, the push did it
    assert any(s.startswith("rejected fell by") and "y- push" in s for s in out["sentences"])
    assert out["median_step_correlation"] > 0.99
    assert (tmp_path / "dpo_forecast" / "forecast.json").exists()
    assert out["forecast"]["parts_at_step"]["chosen"] is None  # lr 1e-5: the kernel regime holds
    assert out["pair_rank_correlations"]["ches"]["ches"] == pytest.approx(1.0)


def test_explain_prompts_must_not_be_negative():
    with pytest.raises(ValueError, match="explain_prompts must be >= 0"):
        ValidateConfig(explain_prompts=-1)


def test_explain_every_must_be_positive():
    with pytest.raises(ValueError, match="explain_every must be >= 1"):
        ValidateConfig(explain_every=0)
