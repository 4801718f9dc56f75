"""The synthetic world as an online-RL environment: its questions are the prompts, its judge is the reward.

``python -m llm train --loss grpo`` (and the other group objectives) builds this on the validation side and passes
the reward function into the engine (``llm.rl.train_rl``), which never imports the world.
"""

from __future__ import annotations

import dataclasses

from llm.data import PreferencePair, ProbeSet
from llm.tokenization import build_word_tokenizer
from llm.validation.judge import Judge
from llm.validation.world import PROBE_KEYS, WorldConfig, build_world

__all__ = ["WorldEnvironment", "world_environment"]


@dataclasses.dataclass(frozen=True)
class WorldEnvironment:
    """What an RL run on the world needs: pairs (their prompts are the RL prompts; the last ones held out),
    the world's probe set, a word tokenizer of its texts and ``reward(prompts, completions) -> scores``."""

    pairs: list[PreferencePair]
    probes: ProbeSet
    tokenizer: object
    judge: Judge

    def reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The judge's score of each completion for its prompt (llm.validation.judge's table)."""
        return [self.judge.score(p, c) for p, c in zip(prompts, completions)]


def world_environment(seed: int = 0, n_entities: int = 32) -> WorldEnvironment:
    """Build the world of ``seed``: training pairs then held-out pairs, probes, tokenizer and judge."""
    world = build_world(WorldConfig(seed=seed, n_entities=n_entities))
    pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in (*world.train_pairs, *world.test_pairs)]
    keys = [k for k in PROBE_KEYS if k != "prompt"]
    probes = ProbeSet(tuple(p["prompt"] for p in world.probes), {k: tuple(p[k] for p in world.probes) for k in keys},
                      source="synthetic world")
    texts = list(world.corpus) + [t for p in (*world.train_pairs, *world.test_pairs, *world.probes)
                                  for k, t in p.items() if k in PROBE_KEYS]
    return WorldEnvironment(pairs, probes, build_word_tokenizer(texts), Judge(world))
