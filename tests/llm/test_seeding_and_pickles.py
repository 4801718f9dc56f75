"""--seed seeds torch's global generator (dropout); checkpoints load as plain data only (a crafted pickle is refused)."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from llm.checkpoint import CHECKPOINT_NAME, load_tensors
from llm.config import TrainConfig
from llm.data import synthetic_pairs
from llm.tokenization import train_bpe_tokenizer
from llm.training import train
from toykit.runs import read_metrics


def _cfg(out_dir, **kw):
    base = dict(loss="sft", num_synthetic=10, held_out=2, num_probes=3, tiny_vocab_size=270, batch_size=2,
                max_prompt_tokens=32, max_response_tokens=16, lr=1e-2, eval_every=100, progress=False,
                save_model=False, checkpoint_at_end=False, out_dir=str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


def _dropout_model(vocab_size: int):
    config = GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=64, resid_pdrop=0.3, bos_token_id=1, eos_token_id=1, pad_token_id=0,
                        embd_pdrop=0.3, attn_pdrop=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config)


def test_same_seed_gives_the_same_numbers_with_dropout(tmp_path):
    pairs = synthetic_pairs(10, seed=0)
    tok = train_bpe_tokenizer([t for p in pairs for t in (p.prompt, p.chosen, p.rejected)], vocab_size=270)
    losses = []
    for k, outside_seed in enumerate((1, 2)):  # the caller's global RNG state differs, as between two processes
        torch.manual_seed(outside_seed)
        train(_cfg(tmp_path / f"run{k}"), model=_dropout_model(len(tok)), tokenizer=tok, pairs=pairs)
        losses.append([r["loss"] for r in read_metrics(tmp_path / f"run{k}" / "metrics.jsonl") if "loss" in r])
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]  # identical from step 1 on: dropout masks come from --seed
    torch.manual_seed(1)
    train(_cfg(tmp_path / "other", seed=1), model=_dropout_model(len(tok)), tokenizer=tok, pairs=pairs)
    other = [r["loss"] for r in read_metrics(tmp_path / "other" / "metrics.jsonl") if "loss" in r]
    assert other != losses[0]  # the seed is used, not ignored


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))  # runs on unpickling: what a hostile checkpoint would do


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, checkpoint_every=1, stop_after_steps=1))
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(str(marker)), "step": 1}, run / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: refused to load"):
        train(_cfg(run, checkpoint_every=1, resume=True))
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused to load"):
        load_tensors(run / CHECKPOINT_NAME)
    assert not marker.exists()


def test_a_real_checkpoint_is_plain_data(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, checkpoint_every=1, stop_after_steps=2, loss="dpo"))
    state = torch.load(run / CHECKPOINT_NAME, weights_only=True)  # optimizer, schedule and RNG state included
    assert {"model", "optimizer", "scheduler", "rng_cpu", "step", "metrics_bytes"} <= set(state)
    assert state["step"] == 2
