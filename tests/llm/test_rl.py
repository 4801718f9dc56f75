"""Online RL of causal LMs (llm.rl): one step of each group objective and on each tiny architecture, seeded
sampling, resume equals an uninterrupted run, TRL metric names, the world's judge as reward raises the mean reward."""

import math

import numpy as np
import pytest
import torch

from llm.cli import main
from llm.config import TrainConfig
from llm.models import TINY_ARCHS
from llm.rl import completion_batch, completion_logps, sample_groups, train_rl
from llm.training import train
from toykit.group_losses import group_loss_names
from toykit.runs import read_metrics

TRL_NAMES = ("loss", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "entropy",
             "clip_ratio/region_mean", "grad_norm", "learning_rate")


def _digits(prompts, completions):
    """A toy rule reward: the share of digits among a completion's characters."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def _cfg(out_dir, **kw):
    base = dict(loss="grpo", num_synthetic=16, held_out=4, num_probes=3, tiny_hidden=32, tiny_vocab_size=300,
                batch_size=2, num_generations=4, max_completion_length=6, max_prompt_tokens=32,
                max_response_tokens=16, lr=3e-3, eval_every=4, progress=False, save_model=False, out_dir=str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


def _train_rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "reward" in r]


@pytest.mark.parametrize("loss", group_loss_names())
def test_every_group_objective_takes_a_step_with_trl_metric_names(tmp_path, loss):
    result = train_rl(_cfg(tmp_path / loss, loss=loss, max_examples=2, num_iterations=2), _digits)
    [row] = _train_rows(result.run_dir)
    assert all(name in row for name in TRL_NAMES) and math.isfinite(row["loss"])
    assert 1 <= row["completions/mean_length"] <= 6 and row["entropy"] > 0
    probes = {r["probe"] for r in read_metrics(result.run_dir / "metrics.jsonl") if "probe" in r}
    assert "chosen" in probes and (result.run_dir / "probe_groups.json").exists()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_one_grpo_step_on_each_architecture(tmp_path, arch):
    cfg = _cfg(tmp_path / arch, model=f"tiny-{arch}", max_examples=2, eval_at_end=False)
    start = train(TrainConfig(**{**cfg.__dict__, "loss": "sft", "out_dir": str(tmp_path / f"{arch}-sft")}))
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    result = train_rl(cfg, _digits, model=start.model, tokenizer=start.tokenizer)
    [row] = _train_rows(result.run_dir)
    assert math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_sampling_is_seeded_and_the_log_probs_score_what_was_sampled(tmp_path):
    start = train(_cfg(tmp_path / "sft", loss="sft", max_examples=2))
    tok, model = start.tokenizer, start.model
    ids = [tok("1 + 2 =", add_special_tokens=False)["input_ids"], tok("7 + 5 =", add_special_tokens=False)["input_ids"]]
    kw = dict(num_generations=3, max_new_tokens=5, temperature=1.0, pad_token_id=tok.pad_token_id,
              eos_token_id=tok.eos_token_id)
    a, b, c = (sample_groups(model, ids, seed=s, **kw) for s in (7, 7, 8))
    assert a == b and a != c and len(a) == 6
    assert all(1 <= len(x) <= 5 and (tok.eos_token_id not in x[:-1]) for x in a)
    batch = completion_batch([ids[0]] * 3 + [ids[1]] * 3, a, tok.pad_token_id)
    logps, mask, entropy = completion_logps(model, *batch)
    assert mask.sum(-1).tolist() == [float(len(x)) for x in a]
    # the per-token log-probs are the model's log-softmax at each sampled token (teacher forcing)
    full = torch.log_softmax(model(input_ids=batch[0], attention_mask=batch[1]).logits, -1)
    row, n0 = 0, len(ids[0])
    want = [float(full[row, n0 - 1 + t, a[row][t]].detach()) for t in range(len(a[row]))]
    got = logps[row][mask[row].bool()].tolist()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert bool((entropy[mask.bool()] > 0).all())


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path):
    whole = train_rl(_cfg(tmp_path / "whole", max_examples=8, checkpoint_every=2), _digits)
    cut = train_rl(_cfg(tmp_path / "cut", max_examples=8, checkpoint_every=2, stop_after_steps=3), _digits)
    assert cut.status == "stopped" and cut.step == 3
    resumed = train_rl(_cfg(tmp_path / "cut", max_examples=8, checkpoint_every=2, resume=True), _digits)
    assert resumed.status == "completed" and resumed.step == whole.step == 4
    assert read_metrics(tmp_path / "whole" / "metrics.jsonl") == read_metrics(tmp_path / "cut" / "metrics.jsonl")
    for (ka, va), (kb, vb) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_rl_on_the_world_raises_the_mean_reward(tmp_path):
    from llm.validation.rl_world import world_environment

    env = world_environment(seed=0)
    common = dict(model="tiny-gpt2", held_out=32, num_probes=8, progress=False, save_model=False,
                  checkpoint_at_end=False, max_response_tokens=48, max_prompt_tokens=32, batch_size=8)
    sft = train(TrainConfig(loss="sft", out_dir=str(tmp_path / "sft"), epochs=3, lr=3e-3, eval_every=10 ** 6,
                            **common), tokenizer=env.tokenizer, pairs=env.pairs, probes=env.probes)
    tok = sft.tokenizer
    prompts = [p.prompt for p in env.pairs[:-32]][:32]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def expected_reward(model):  # fixed prompts and sampler seed: the policy's mean judge score
        comps = sample_groups(model, ids, num_generations=8, max_new_tokens=40, temperature=1.0, seed=123,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = [" " + tok.decode(c, skip_special_tokens=True).strip() for c in comps]
        return float(np.mean(env.reward([p for p in prompts for _ in range(8)], texts)))

    before = expected_reward(sft.model)
    rl = train_rl(TrainConfig(loss="grpo", out_dir=str(tmp_path / "rl"), lr=1e-3, max_examples=8 * 8,
                              eval_every=32, num_generations=8, max_completion_length=40, **common),
                  env.reward, model=sft.model, tokenizer=tok, pairs=env.pairs, probes=env.probes)
    after = expected_reward(rl.model)
    assert after > before + 0.2, (before, after)
    probe_rows = [r for r in read_metrics(rl.run_dir / "metrics.jsonl") if r.get("probe") == "group_best"]
    assert {r["step"] for r in probe_rows} == {0, 4, 8}  # the group's best/worst samples tracked throughout


def test_cli_trains_grpo_on_the_world_and_refuses_a_reward_less_data_file(tmp_path, capsys):
    assert main(["train", "--loss", "dr_grpo", "--out-dir", str(tmp_path / "run"), "--max-examples", "2",
                 "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "4", "--held-out", "40",
                 "--num-probes", "2", "--save-model", "false", "--progress", "false"]) == 0
    assert len(_train_rows(tmp_path / "run")) == 1
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n' * 12)
    assert main(["train", "--loss", "grpo", "--data", str(data), "--out-dir", str(tmp_path / "x")]) == 2
    assert "needs a reward function" in capsys.readouterr().err


@pytest.mark.parametrize("kw, pattern", [
    ({"loss": "cispo", "epsilon": 0.1}, r"group loss 'cispo' takes no --epsilon"),
    ({"num_generations": 1}, r"needs --num-generations >= 2"),
    ({"epsilon": 1.5}, r"eps_low must be in \[0, 1\), got 1.5"),
    ({"loss": "rloo", "beta": 0.1}, r"group loss 'rloo' takes no --beta"),
])
def test_bad_rl_settings_are_refused(tmp_path, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        _cfg(tmp_path / "x", **kw)


def test_lld_statistics_split_positive_samples_by_overlap_with_negative_ones():
    from llm.rl import lld_statistics

    comps = [[1, 2, 3], [1, 2, 9], [7, 8], [4, 5]]  # one group of 4: samples 0, 2 positive; 1, 3 negative
    adv = torch.tensor([[1.0, -1.0, 0.5, -0.5]])
    delta = torch.tensor([[-0.2, -1.0, 0.3, -0.4]])
    stats = lld_statistics(comps, adv, delta)
    # sample 0 shares 2 of 3 tokens with negatives (high overlap) and fell; sample 2 shares none and rose
    assert stats == {"lld/gain_high_overlap": pytest.approx(-0.2), "lld/gain_low_overlap": pytest.approx(0.3),
                     "lld/frac_positive_fell": 0.5}
    assert lld_statistics(comps, torch.zeros(1, 4), delta) == {}
