"""Tiny offline fixtures for the llm tests: synthetic pairs, a BPE tokenizer trained on them, tiny models."""

import pytest

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
