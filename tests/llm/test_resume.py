"""Kill-and-resume: a resumed run ends with the same metrics rows, arrays and weights as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llm.cli import main
from llm.config import TrainConfig
from llm.training import train
from toykit.runs import read_metrics


def _cfg(out_dir, **kw):
    base = dict(loss="dpo", num_synthetic=16, held_out=4, num_probes=4, tiny_hidden=32, tiny_vocab_size=300,
                batch_size=2, max_prompt_tokens=32, max_response_tokens=16, lr=3e-3, epochs=2, eval_every=5,
                checkpoint_every=2, progress=False, save_model=False, out_dir=str(out_dir))
    base.update(kw)
    return TrainConfig(**base)


def _assert_same_run(a: Path, b: Path, weights_a: dict, weights_b: dict):
    rows_a, rows_b = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert len(rows_a) == len(rows_b)
    assert rows_a == rows_b  # no row lost, none duplicated, every value identical
    arrays_a = sorted(p.name for p in (a / "probes").glob("*.npz"))
    assert arrays_a == sorted(p.name for p in (b / "probes").glob("*.npz"))
    for name in arrays_a:
        xa, xb = np.load(a / "probes" / name), np.load(b / "probes" / name)
        assert list(xa.keys()) == list(xb.keys())
        for key in xa.keys():
            np.testing.assert_array_equal(xa[key], xb[key])
    assert list(weights_a) == list(weights_b)
    for (ka, va), (kb, vb) in zip(weights_a.items(), weights_b.items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("stop, every", [(5, 2), (1, 0)])  # mid-run after a checkpoint; before any checkpoint
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, stop, every):
    whole = train(_cfg(tmp_path / "whole", checkpoint_every=every))
    stopped = train(_cfg(tmp_path / "cut", checkpoint_every=every, stop_after_steps=stop))
    assert stopped.status == "stopped" and stopped.step == stop
    rows_at_stop = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert max(r["step"] for r in rows_at_stop) == stop  # rows after the last checkpoint exist before the resume
    resumed = train(_cfg(tmp_path / "cut", checkpoint_every=every, resume=True))
    assert resumed.status == "completed" and resumed.step == whole.step
    _assert_same_run(tmp_path / "whole", tmp_path / "cut", whole.model.state_dict(), resumed.model.state_dict())


def test_resume_refuses_a_changed_config(tmp_path):
    train(_cfg(tmp_path / "run", stop_after_steps=2))
    with pytest.raises(ValueError, match=r"config differs in \['lr'\]"):
        train(_cfg(tmp_path / "run", lr=1e-2, resume=True))


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_result(tmp_path):
    """SIGKILL a CLI run mid-training (after a checkpoint and some later rows), resume it, compare."""
    args = ["train", "--loss", "dpo", "--num-synthetic", "16", "--held-out", "4", "--num-probes", "4",
            "--tiny-hidden", "32", "--tiny-vocab-size", "300", "--batch-size", "2", "--max-prompt-tokens", "32",
            "--max-response-tokens", "16", "--lr", "3e-3", "--epochs", "30", "--eval-every", "5",
            "--checkpoint-every", "3", "--progress", "false", "--save-model", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm", *args, "--out-dir", str(tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = tmp_path / "cut" / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "cut" / "checkpoint.pt").exists() and metrics.exists() and '"step": 8,' in metrics.read_text():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert main([*args, "--out-dir", str(tmp_path / "cut"), "--resume", "true"]) == 0
    assert main([*args, "--out-dir", str(tmp_path / "whole")]) == 0
    final = {d: torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["model"] for d in ("whole", "cut")}
    _assert_same_run(tmp_path / "whole", tmp_path / "cut", final["whole"], final["cut"])
