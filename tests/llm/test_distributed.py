"""llm.distributed: a 2-process torchrun (gloo, CPU) run equals one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from llm.config import TrainConfig
from llm.parallel import SINGLE_PROCESS, init_distributed, shard_indices
from llm.training import train
from toykit.runs import read_metrics

REPO = Path(__file__).resolve().parents[2]

# Global batch 6 = batch_size 2 x grad_accum 3: each of 2 ranks takes 3 pairs (micro-batches of 2 and 1); the last
# step of the epoch has 2 pairs (1 per rank), so uneven shards and accumulation are both exercised.
_FIELDS = dict(loss="dpo", num_synthetic=24, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300,
               batch_size=2, grad_accum=3, max_prompt_tokens=32, max_response_tokens=16, lr=0.5, epochs=1,
               optimizer="sgd",  # linear in the gradient: Adam-style division turns summation-order noise into +-lr
               eval_every=6, checkpoint_every=2, progress=False, save_model=True)


@given(n=st.integers(0, 40), world_size=st.integers(1, 8))
def test_shards_partition_the_batch_in_order(n, world_size):
    indices = list(range(100, 100 + n))
    shards = [shard_indices(indices, r, world_size) for r in range(world_size)]
    assert sum(shards, []) == indices
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_rejects_a_bad_rank():
    with pytest.raises(ValueError, match="rank 2, world_size 2"):
        shard_indices([1, 2, 3], 2, 2)


def test_a_plain_process_is_the_single_process_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = init_distributed()
    assert world is SINGLE_PROCESS and world.is_main and world.shard([4, 5, 6]) == [4, 5, 6]
    values = {"losses": torch.arange(3.0), "ref_chosen": None}
    assert world.gather(values)["losses"].tolist() == [0.0, 1.0, 2.0] and world.gather(values)["ref_chosen"] is None


def _torchrun(out_dir: Path, nproc: int) -> subprocess.CompletedProcess:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in _FIELDS.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llm.distributed", *flags, f"--out-dir={out_dir}", "--device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.run_figure  # the torchrun ranks draw probe_curves.png, so the single run must too
def test_two_process_torchrun_equals_one_process(tmp_path):
    single = train(TrainConfig(**_FIELDS, out_dir=str(tmp_path / "single"), device="cpu"))
    proc = _torchrun(tmp_path / "ddp", 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"run directory: {tmp_path / 'ddp'}" in proc.stdout

    rows_1 = read_metrics(tmp_path / "single" / "metrics.jsonl")
    rows_2 = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [sorted(r) for r in rows_1] == [sorted(r) for r in rows_2]  # same rows in the same order, none duplicated
    assert [r["step"] for r in rows_2 if r.get("probe") == "chosen" and r["statistic"] == "logp_sum"] == [0, 1, 2, 3, 4]
    assert [r["examples_seen"] for r in rows_2 if "loss" in r] == [6, 12, 18, 20]
    for a, b in zip(rows_1, rows_2):
        for key, value in a.items():
            if key == "rewards/accuracies" and a["step"] == 1:
                continue  # policy = reference at step 1: margins are 0 up to summation order, so "margin > 0" is noise
            if isinstance(value, float):
                np.testing.assert_allclose(b[key], value, rtol=1e-4, atol=1e-5, err_msg=f"{key} at step {a['step']}")
            else:
                assert b[key] == value, key
    margins = [r["rewards/margins"] for r in rows_2 if "rewards/margins" in r]
    assert margins[-1] > margins[0]  # it trained: DPO widened the margin

    weights = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "model").state_dict()
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)  # steps move ~1e-2
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["examples_seen"] == 20
    assert _run_files(tmp_path / "ddp") == _run_files(tmp_path / "single")  # rank 1 wrote nothing of its own


def _run_files(run_dir: Path) -> list[str]:
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
