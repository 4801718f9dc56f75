"""Tiny offline fixtures for the llm tests: synthetic pairs, a BPE tokenizer trained on them, tiny models."""

from pathlib import Path

import pytest

import llm.figures
from llm.data import synthetic_pairs
from llm.encoding import TruncationPolicy
from llm.models import tiny_model
from llm.tokenization import train_bpe_tokenizer


@pytest.fixture(scope="session")
def pairs():
    return synthetic_pairs(24, seed=3)


@pytest.fixture(scope="session")
def tokenizer(pairs):
    return train_bpe_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs], vocab_size=320)


@pytest.fixture()
def gpt2(tokenizer):
    return tiny_model("gpt2", len(tokenizer), seed=0)


@pytest.fixture(scope="session")
def policy():
    return TruncationPolicy(max_prompt_tokens=64, max_response_tokens=32)


@pytest.fixture(autouse=True)
def _runs_without_their_figure(request, monkeypatch):
    """Training runs in these tests do not draw probe_curves.png: drawing it is ~1 s of a tiny run's ~1.5 s.

    The tests that check the figure, or compare a run with one in another process, ask for it with
    ``@pytest.mark.run_figure`` (test_cli, test_kills, test_distributed). Spawned processes (the validation's
    parallel seeds, torchrun ranks, CLI subprocesses) draw it as usual.
    """
    if request.node.get_closest_marker("run_figure") is None:
        monkeypatch.setattr(llm.figures, "save_run_figure", lambda run_dir: Path(run_dir) / "probe_curves.png")
