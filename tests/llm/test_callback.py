"""llm.callback: ProbeCallback inside a transformers Trainer, TRL's DPOTrainer (when installed) and an FSDP model."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from llm import runs
from llm.callback import ProbeCallback
from llm.data import probe_set_from_pairs
from llm.encoding import encode_sequence
from llm.probes import ProbeEvaluator
from toykit.runs import read_metrics

pytest.importorskip("accelerate")


class _SFTDataset(torch.utils.data.Dataset):
    """[prompt, y+] token ids with labels on the response only (-100 on the prompt), as SFT trainers build them."""

    def __init__(self, pairs, tokenizer, policy):
        self.items = []
        for p in pairs:
            seq = encode_sequence(tokenizer, p.prompt, p.chosen, policy)
            ids = list(seq.prompt_ids + seq.response_ids)
            self.items.append({"input_ids": ids, "labels": [-100] * len(seq.prompt_ids) + list(seq.response_ids)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _collate(pad_token_id):
    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)  # (N, L)
        labels = torch.full((len(features), width), -100, dtype=torch.long)  # (N, L)
        attn = torch.zeros((len(features), width), dtype=torch.long)  # (N, L)
        for n, f in enumerate(features):
            k = len(f["input_ids"])
            ids[n, :k], labels[n, :k], attn[n, :k] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}
    return collate


def _args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1,
                report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
                lr_scheduler_type="constant", optim="adamw_torch")
    return TrainingArguments(**{**base, **kw})


def _probe_rows(rows, step):
    return {(r["probe"], r["statistic"]): r["value"] for r in rows if "probe" in r and r["step"] == step}


def _assert_rows_equal_direct(rows, step, evaluator, model):
    direct = evaluator(model).means()
    logged = _probe_rows(rows, step)
    assert logged.keys() == direct.keys()
    for key, value in direct.items():
        np.testing.assert_allclose(logged[key], value, rtol=1e-6, atol=1e-7, err_msg=f"step {step} {key}")


def test_trainer_writes_probe_rows_equal_to_direct_evaluation(tmp_path, gpt2, tokenizer, pairs, policy):
    probes = probe_set_from_pairs(pairs[:6], held_out=pairs[20:22], seed=0)
    evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=8)
    start_model = copy.deepcopy(gpt2)
    callback = ProbeCallback(evaluator, tmp_path / "run", eval_every_steps=2, phase="sft",
                             config={"model": "tiny gpt2"})
    trainer = Trainer(model=gpt2, args=_args(tmp_path / "trainer", max_steps=5),
                      train_dataset=_SFTDataset(pairs[:20], tokenizer, policy),
                      data_collator=_collate(tokenizer.pad_token_id), callbacks=[callback])
    trainer.train()

    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["phase"] == "sft" and config["run"] == {"model": "tiny gpt2"}
    assert config["examples_per_step"] == 4 and config["probe_set"]["num_prompts"] == 6
    assert (run / "env.json").exists() and json.loads((run / "summary.json").read_text())["final_step"] == 5
    rows = read_metrics(run / "metrics.jsonl")
    probe_rows = [r for r in rows if "probe" in r]
    assert sorted({r["step"] for r in probe_rows}) == [0, 2, 4, 5]
    assert {r["examples_seen"] for r in probe_rows} == {0, 8, 16, 20}
    assert all(r["phase"] == "sft" for r in rows)
    _assert_rows_equal_direct(rows, 0, evaluator, start_model)
    _assert_rows_equal_direct(rows, 5, evaluator, trainer.model)
    assert _probe_rows(rows, 5)[("chosen", "logp_sum")] > _probe_rows(rows, 0)[("chosen", "logp_sum")] + 1.0
    losses = [r for r in rows if "loss" in r and "train_runtime" not in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4, 5]

    table = runs.read_run_metrics(run)  # the app's LLM page reads the run through this function
    curves = runs.probe_curves(table, "summed", probes=["chosen"])
    assert list(curves["examples_seen"]) == [0, 8, 16, 20]
    assert "loss" in set(runs.training_curves(table)["statistic"])


def test_resume_continues_the_same_run_without_duplicated_rows(tmp_path, gpt2, tokenizer, pairs, policy):
    probes = probe_set_from_pairs(pairs[:4], seed=0)
    evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=8)
    data = _SFTDataset(pairs[:16], tokenizer, policy)

    def trainer_for(model, out_dir, **kw):
        return Trainer(model=model, args=_args(tmp_path / out_dir, max_steps=4, save_strategy="steps", save_steps=2,
                                               **kw), train_dataset=data,
                       data_collator=_collate(tokenizer.pad_token_id),
                       callbacks=[ProbeCallback(evaluator, tmp_path / f"{out_dir}-run", eval_every_steps=1)])

    model_b = copy.deepcopy(gpt2)
    trainer_for(gpt2, "full").train()
    interrupted = trainer_for(model_b, "cut")
    interrupted.train()  # runs to step 4, wrote rows 0..4; resuming from checkpoint-2 must drop rows 3 and 4
    with pytest.raises(FileExistsError):  # a fresh run never writes into another run's directory
        trainer_for(copy.deepcopy(gpt2), "cut").train()
    trainer_for(model_b, "cut").train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))

    full = [r for r in read_metrics(tmp_path / "full-run" / "metrics.jsonl") if "probe" in r]
    cut = [r for r in read_metrics(tmp_path / "cut-run" / "metrics.jsonl") if "probe" in r]
    assert [(r["step"], r["probe"], r["statistic"]) for r in cut] == [(r["step"], r["probe"], r["statistic"])
                                                                       for r in full]
    np.testing.assert_allclose([r["value"] for r in cut], [r["value"] for r in full], rtol=1e-5, atol=1e-6)


def test_only_the_main_process_writes(tmp_path, tokenizer, pairs, policy, gpt2):
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[:3], seed=0), tokenizer, policy)
    callback = ProbeCallback(evaluator, tmp_path / "run", eval_every_steps=1)
    state = TrainerState(is_world_process_zero=False)
    args = _args(tmp_path / "trainer", max_steps=1)
    for event in ("on_train_begin", "on_step_end", "on_train_end"):
        getattr(callback, event)(args, state, TrainerControl(), model=gpt2)
    callback.on_log(args, state, TrainerControl(), logs={"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_bad_arguments_are_refused(tokenizer, pairs, policy, tmp_path):
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[:3], seed=0), tokenizer, policy)
    with pytest.raises(ValueError, match="ProbeEvaluator"):
        ProbeCallback(probe_set_from_pairs(pairs[:3], seed=0), tmp_path)
    with pytest.raises(ValueError, match="eval_every_steps"):
        ProbeCallback(evaluator, tmp_path, eval_every_steps=-1)
    with pytest.raises(ValueError, match="phase"):
        ProbeCallback(evaluator, tmp_path, phase="")


def test_trl_dpo_trainer_with_probe_callback(tmp_path, gpt2, tokenizer, pairs, policy):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    probes = probe_set_from_pairs(pairs[:4], held_out=pairs[20:22], seed=0)
    evaluator = ProbeEvaluator(probes, tokenizer, policy, batch_size=8)
    start_model = copy.deepcopy(gpt2)
    train = datasets.Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                        for p in pairs[:16]])
    args = trl.DPOConfig(output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=4, max_steps=3,
                         learning_rate=5e-3, beta=0.1, logging_steps=1, report_to=[], save_strategy="no",
                         use_cpu=True, seed=0, disable_tqdm=True, bf16=False, gradient_checkpointing=False)
    callback = ProbeCallback(evaluator, tmp_path / "run", eval_every_steps=2, phase="dpo")
    trainer = trl.DPOTrainer(model=gpt2, ref_model=copy.deepcopy(gpt2), args=args, train_dataset=train,
                             processing_class=tokenizer,
                             callbacks=[callback])
    trainer.train()

    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert sorted({r["step"] for r in rows if "probe" in r}) == [0, 2, 3]
    _assert_rows_equal_direct(rows, 0, evaluator, start_model)
    _assert_rows_equal_direct(rows, 3, evaluator, trainer.model)
    assert {"loss", "rewards/margins", "rewards/chosen"} <= {k for r in rows for k in r}
    first = next(r for r in rows if "loss" in r)
    assert first["loss"] == pytest.approx(np.log(2.0), abs=1e-4)  # DPO at step 1 with reference = policy


_FSDP_WORKER = """
import sys, types
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState
from llm.callback import ProbeCallback, is_sharded
from llm.data import probe_set_from_pairs, synthetic_pairs
from llm.encoding import TruncationPolicy
from llm.probes import ProbeEvaluator
from llm.tokenization import load_tokenizer

dist.init_process_group("gloo")
src, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(src)
for block in model.transformer.h:
    fully_shard(block)
fully_shard(model)
assert is_sharded(model)
evaluator = ProbeEvaluator(probe_set_from_pairs(synthetic_pairs(24, seed=3)[:4], seed=0), load_tokenizer(src),
                           TruncationPolicy(64, 32), batch_size=8)
args = types.SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1,
                             world_size=dist.get_world_size(), to_dict=lambda: {"fsdp": "full_shard"})
state = TrainerState(is_world_process_zero=dist.get_rank() == 0)
callback = ProbeCallback(evaluator, out, phase="fsdp")
callback.on_train_begin(args, state, TrainerControl(), model=model)
callback.on_train_end(args, state, TrainerControl(), model=model)
dist.destroy_process_group()
"""


def test_fsdp_sharded_model_is_evaluated_on_every_rank(tmp_path, gpt2, tokenizer, pairs, policy):
    gpt2.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "worker.py").write_text(_FSDP_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path / "model"), str(tmp_path / "run")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                          timeout=180)  # a rank skipping the probes' all-gathers would hang here
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {r["step"] for r in rows} == {0}  # written once, by rank 0
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[:4], seed=0), tokenizer, policy, batch_size=8)
    _assert_rows_equal_direct(rows, 0, evaluator, gpt2)


def test_explain_callback_predicts_every_real_trainer_step(tmp_path, gpt2, tokenizer, pairs, policy):
    from llm.explain_callback import ExplainCallback
    from llm.explain_report import load_explanation

    probes = probe_set_from_pairs(pairs[:4], seed=0)
    callback = ExplainCallback(probes, tokenizer, policy, tmp_path / "run", num_prompts=3)
    trainer = Trainer(model=gpt2, args=_args(tmp_path / "trainer", max_steps=4, learning_rate=1e-4),
                      train_dataset=_SFTDataset(pairs[:16], tokenizer, policy),
                      data_collator=_collate(tokenizer.pad_token_id), callbacks=[callback])
    trainer.train()
    meta = json.loads((tmp_path / "run" / "explain" / "meta.json").read_text())
    assert meta["steps"] == 4 and meta["terms"] == ["real update"] and meta["optimizer"] == "AdamW"
    assert min(meta["per_step_correlation"]) > 0.99  # Prop. 1 along the Trainer's own AdamW steps
    expl = load_explanation(tmp_path / "run")
    assert expl.measured[expl.probe_types.index("chosen"), -1] > 0  # SFT raised y+
