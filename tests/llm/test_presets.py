"""llm.presets: the paper's recipe resolved field by field, its warm-up, truncation rule and evaluation cadence."""

import json

import pytest
import torch

from llm.cli import _config, build_parser
from llm.config import TrainConfig
from llm.encoding import TruncationPolicy, encode_record, encode_sequence
from llm.optim import warmup_schedule
from llm.presets import PRESETS, preset_config, preset_fields
from llm.tokenization import build_word_tokenizer
from llm.training import train
from toykit.runs import read_metrics

# The values read off the paper's code (config.yaml, trainers.py, preference_datasets.py, sft.sh / dpo.sh), written
# here independently of llm/presets.py.
_PAPER = dict(optimizer="rmsprop", lr=5e-7, momentum=0.0, weight_decay=0.0, warmup_steps=151, max_grad_norm=10.0,
              batch_size=4, grad_accum=1, beta=0.1, max_prompt_tokens=256, max_total_tokens=512, num_probes=500,
              eval_at_end=False, held_out=0, dtype="float32")
_DATASET = {"paper-hh": dict(prompt_overflow="left_truncate", eval_every=1000),
            "paper-ultrafeedback": dict(prompt_overflow="right_truncate", eval_every=500)}
_BUDGET = {("paper-hh", "sft"): 40000, ("paper-hh", "dpo"): 30000, ("paper-ultrafeedback", "sft"): 10000,
           ("paper-ultrafeedback", "dpo"): 30000}


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_resolved_config_equals_the_documented_recipe(name, command):
    parser = build_parser()
    cfg = _config(parser, parser.parse_args([command, "--preset", name]))
    expected = {**_PAPER, **_DATASET[name], "max_examples": _BUDGET[(name, command)], "loss": command}
    assert {k: getattr(cfg, k) for k in expected} == expected
    documented = preset_fields(name, command)
    assert {k: getattr(cfg, k) for k in documented} == {k: v for k, (v, _) in documented.items()}
    assert all(source.strip() for _, source in documented.values())  # every field names its source
    assert preset_config(name, loss=command) == cfg


def test_flags_and_config_file_override_the_preset(tmp_path):
    parser = build_parser()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"lr": 1e-6, "eval_every": 200}))
    cfg = _config(parser, parser.parse_args(["dpo", "--preset", "paper-hh", "--config", str(path), "--eval-every",
                                             "300", "--batch-size", "2"]))
    assert (cfg.lr, cfg.eval_every, cfg.batch_size, cfg.warmup_steps) == (1e-6, 300, 2, 151)
    with pytest.raises(SystemExit):
        parser.parse_args(["dpo", "--preset", "paper-nope"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset_fields("paper-nope")


def test_warmup_is_the_papers_step_plus_one_over_151():
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_schedule(opt, preset_fields("paper-hh")["warmup_steps"][0])
    seen = []
    for _ in range(200):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    paper = [min(1.0, (step + 1) / (150 + 1)) for step in range(200)]  # trainers.py, warmup_steps: 150
    assert seen == pytest.approx(paper, rel=1e-12)


def _paper_rule(prompt, responses, max_length, max_prompt, keep_end):
    """A transcription of the paper's tokenize_batch_element on token lists (eos already on the responses)."""
    longest = max(len(r) for r in responses)
    if len(prompt) + longest > max_length:
        prompt = prompt[-max_prompt:] if keep_end else prompt[:max_prompt]
    if len(prompt) + longest > max_length:
        responses = [r[: max_length - len(prompt)] for r in responses]
    return prompt, responses


@pytest.mark.parametrize("overflow", ["left_truncate", "right_truncate"])
@pytest.mark.parametrize("lengths", [(3, 2, 2), (6, 2, 1), (6, 5, 1), (9, 4, 8), (2, 9, 3), (5, 1, 1)])
def test_total_budget_cuts_like_the_papers_code(overflow, lengths):
    words = [f"w{i}" for i in range(40)]
    tok = build_word_tokenizer([" ".join(words)])
    n_prompt, n_chosen, n_rejected = lengths
    prompt, chosen, rejected = (" ".join(words[:n_prompt]), " ".join(words[10:10 + n_chosen]),
                                " ".join(words[20:20 + n_rejected]))
    policy = TruncationPolicy(4, 100, overflow, max_total_tokens=8)
    got = encode_record(tok, prompt, [chosen, rejected], policy)
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = [tok.eos_token_id]
    want_prompt, want = _paper_rule(ids(prompt), [ids(chosen) + eos, ids(rejected) + eos], 8, 4,
                                    overflow == "left_truncate")
    assert [list(s.prompt_ids) for s in got] == [want_prompt, want_prompt]
    assert [list(s.response_ids) for s in got] == want
    assert all(s.length <= 8 for s in got)
    with pytest.raises(ValueError, match="max_total_tokens"):
        TruncationPolicy(4, 100, max_total_tokens=4)


def test_without_a_total_budget_a_record_encodes_like_its_sequences(tokenizer, pairs):
    policy = TruncationPolicy(8, 5, "left_truncate")
    for p in pairs[:5]:
        assert encode_record(tokenizer, p.prompt, [p.chosen, p.rejected], policy) == [
            encode_sequence(tokenizer, p.prompt, p.chosen, policy), encode_sequence(tokenizer, p.prompt, p.rejected,
                                                                                    policy)]


@pytest.mark.parametrize("at_end", [False, True])
def test_evaluation_cadence_has_no_extra_final_evaluation(tmp_path, at_end):
    cfg = TrainConfig(loss="sft", num_synthetic=24, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300,
                      batch_size=4, max_prompt_tokens=32, max_response_tokens=16, max_total_tokens=40,
                      progress=False, save_model=False, eval_every=8, max_examples=16, epochs=5,
                      eval_at_end=at_end, out_dir=str(tmp_path / "run"))
    result = train(cfg)
    steps = sorted({r["step"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "probe" in r})
    # the paper: evaluations at examples 0 and 8 before a batch; the budget (16) ends training without one
    assert steps == ([0, 2, 4] if at_end else [0, 2])
    assert result.step == 4
