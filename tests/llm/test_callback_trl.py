"""ProbeCallback inside TRL 1.16's DPOTrainer and SFTTrainer: LoRA, gradient accumulation, dashboards, the alarm,
and the examples/ script CI runs on a tiny model."""

import copy
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import TrainerCallback

from llm import runs
from llm.alarm import SqueezeRule, squeeze_evidence
from llm.callback import ProbeCallback
from llm.data import probe_set_from_pairs
from llm.probes import ProbeEvaluator
from toykit.runs import read_metrics

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[2]


class _Reporter(TrainerCallback):
    """Stands in for W&B / trackio: records every log dict it is handed."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _probe_means(rows, step):
    return {(r["probe"], r["statistic"]): r["value"] for r in rows if "probe" in r and r["step"] == step}


def _assert_equal_direct(rows, step, evaluator, model):
    direct, logged = evaluator(model).means(), _probe_means(rows, step)
    assert logged.keys() == direct.keys()
    for key, value in direct.items():
        np.testing.assert_allclose(logged[key], value, rtol=1e-5, atol=1e-6, err_msg=f"step {step} {key}")


def _dataset(pairs):
    return datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                       for p in pairs])


def _common(tmp_path, **kw):
    return dict(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2, learning_rate=5e-3,
                logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                bf16=False, **kw)


def test_dpo_with_lora_and_accumulation_writes_the_probes_of_the_trained_adapters(tmp_path, gpt2, tokenizer, pairs,
                                                                                  policy):
    peft = pytest.importorskip("peft")
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[:4], seed=0), tokenizer, policy, batch_size=8)
    base_means = evaluator(gpt2).means()
    args = trl.DPOConfig(**_common(tmp_path, max_steps=4, gradient_accumulation_steps=2))
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")
    trainer = trl.DPOTrainer(model=gpt2, args=args, train_dataset=_dataset(pairs[:16]), processing_class=tokenizer,
                             peft_config=lora)  # no ref_model: TRL disables the adapters for the reference
    callback = ProbeCallback(evaluator, tmp_path / "run", eval_every_steps=2, phase="dpo")
    reporter = _Reporter()
    callback.attach(trainer)
    trainer.add_callback(reporter)
    trainer.train()

    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    probe_rows = [r for r in rows if "probe" in r]
    assert sorted({r["step"] for r in probe_rows}) == [0, 2, 4]
    assert {r["examples_seen"] for r in probe_rows} == {0, 8, 16}  # batch 2 x accumulation 2 per optimizer step
    assert _probe_means(rows, 0) == pytest.approx(base_means)  # step 0: adapters (B = 0) change nothing
    _assert_equal_direct(rows, 4, evaluator, trainer.model)
    assert _probe_means(rows, 4)[("chosen", "logp_sum")] != pytest.approx(base_means[("chosen", "logp_sum")])
    first = next(r for r in rows if "loss" in r)
    assert first["loss"] == pytest.approx(np.log(2.0), abs=1e-4)
    with_probes = [log for log in reporter.logs if "logps/probe_chosen" in log]
    assert with_probes and all("logps/chosen" in log for log in with_probes)  # beside TRL's own, same log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < summary["probe_share"] < 1 and summary["evaluated_steps"] == [0, 2, 4]


def test_sft_trainer_with_accumulation(tmp_path, gpt2, tokenizer, pairs, policy):
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[:4], seed=0), tokenizer, policy, batch_size=8)
    start = copy.deepcopy(gpt2)
    data = datasets.Dataset.from_list([{"prompt": p.prompt, "completion": p.chosen} for p in pairs[:16]])
    args = trl.SFTConfig(**_common(tmp_path, max_steps=3, gradient_accumulation_steps=2))
    trainer = trl.SFTTrainer(model=gpt2, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[ProbeCallback(evaluator, tmp_path / "run", eval_every_steps=2, phase="sft")])
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert sorted({r["step"] for r in rows if "probe" in r}) == [0, 2, 3]
    _assert_equal_direct(rows, 0, evaluator, start)
    _assert_equal_direct(rows, 3, evaluator, trainer.model)
    assert _probe_means(rows, 3)[("chosen", "logp_sum")] > _probe_means(rows, 0)[("chosen", "logp_sum")]
    curves = runs.probe_curves(runs.read_run_metrics(tmp_path / "run"), "summed", probes=["chosen"])
    assert list(curves["examples_seen"]) == [0, 8, 12]


def test_squeeze_alarm_stops_a_trl_dpo_run_at_the_rules_first_hit(tmp_path, gpt2, tokenizer, pairs, policy):
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[:4], seed=0), tokenizer, policy, batch_size=8)
    args = trl.DPOConfig(**{**_common(tmp_path, max_steps=40, lr_scheduler_type="constant"),
                            "learning_rate": 3e-2, "per_device_train_batch_size": 4})
    warn = ProbeCallback(evaluator, tmp_path / "warn", eval_every_steps=2, phase="dpo",
                         squeeze_alarm=SqueezeRule(action="warn"))
    trl.DPOTrainer(model=copy.deepcopy(gpt2), ref_model=copy.deepcopy(gpt2), args=args,
                   train_dataset=_dataset(pairs[:16]), processing_class=tokenizer, callbacks=[warn]).train()
    rows = read_metrics(tmp_path / "warn" / "metrics.jsonl")
    steps = sorted({r["step"] for r in rows if "probe" in r})
    history = [(s, _probe_means(rows, s)) for s in steps]
    hit = next(k for k in range(len(steps)) if squeeze_evidence(history[: k + 1], SqueezeRule()) is not None)
    alarms = [r for r in rows if "squeeze/alarm" in r]
    assert [r["step"] for r in alarms] == [steps[hit]]

    stop = ProbeCallback(evaluator, tmp_path / "stop", eval_every_steps=2, phase="dpo",
                         squeeze_alarm=SqueezeRule(action="stop"))
    trainer = trl.DPOTrainer(model=copy.deepcopy(gpt2), ref_model=copy.deepcopy(gpt2), args=args,
                             train_dataset=_dataset(pairs[:16]), processing_class=tokenizer, callbacks=[stop])
    trainer.train()
    assert trainer.state.global_step == steps[hit] < 40
    assert json.loads((tmp_path / "stop" / "summary.json").read_text())["squeeze_alarm"]["step"] == steps[hit]


def test_the_example_script_runs_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    script = REPO / "examples" / "trl_dpo_with_probes.py"
    # Run as ``python examples/trl_dpo_with_probes.py ...`` from another folder, in this interpreter: a subprocess
    # spent ~10 s importing trl and peft for a 0.5 s run.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "--out-dir", str(tmp_path / "run"), "--lora-r", "4",
                                      "--grad-accum", "2", "--max-steps", "4"])
    runpy.run_path(str(script), run_name="__main__")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["final_step"] == 4 and summary["examples_seen"] == 4 * 4 * 2
    assert summary["evaluated_steps"] == [0, 2, 4]
    table = runs.read_run_metrics(tmp_path / "run")
    assert {"chosen", "rejected", "argmax_teacher_forced"} <= set(table["probe"].dropna())
