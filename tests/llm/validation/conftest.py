"""Fixtures of the validation tests: a miniature of the test preset in which every phase still runs."""

import dataclasses

import pytest

from llm.validation.pipeline import PRESETS
from llm.validation.world import WorldConfig


@pytest.fixture(scope="session")
def small_preset():
    """The test preset with a 4-entity world, one epoch per phase and one evaluation: seconds per seed."""
    return dataclasses.replace(PRESETS["test"], world=WorldConfig(n_entities=4, n_probes=2, n_unrelated=40,
                                                                  vocab_size=600),
                               sft_epochs=1, dpo_epochs=1, sft_evals=1, dpo_evals=1, greedy_max_new_tokens=16,
                               rl_steps=1, rl_prompts=1)
