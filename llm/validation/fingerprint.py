"""A fast fingerprint of what a validation preset computes, so a committed run can be checked against the code.

The full preset takes minutes, too slow for the test suite. The fingerprint runs the same code path in miniature
for one seed: the world and its tokenizer (digests), the pre-registered rules (a digest of every claim's measure and
rule and every condition's rule), the preset (a digest), and numbers from the engine: the model initialised as the
preset does, pretrained for one short epoch, its probes, two SFT steps and one DPO step through ``llm.training.train``
with their probe means. ``validate`` writes it next to claims.json; ``compare_fingerprints`` tells a stale run
(a digest differs or a number moved beyond float noise) from a current one.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llm.config import TrainConfig
from llm.data import PreferencePair, ProbeSet
from llm.models import tiny_model
from llm.training import train
from llm.validation.lm_pretraining import pretrain
from llm.validation.report import CLAIMS, CONDITIONS
from llm.validation.world import PROBE_KEYS, build_world, world_tokenizer
from toykit.configs import config_to_dict

__all__ = ["fingerprint", "compare_fingerprints", "RTOL", "ATOL"]

#: tolerances of the numbers: float noise (thread counts, batched vs prompt-shared probes agree to 1e-4) passes,
#: a changed computation does not.
RTOL, ATOL = 2e-4, 1e-4
_DOCS, _PROBES = 96, 8


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rules() -> list[list[str]]:
    return ([[c.name, c.measure, c.rule, ",".join(c.phases), ",".join(c.conditions)] for c in CLAIMS]
            + [[c.name, c.measure, c.rule] for c in CONDITIONS])


def fingerprint(preset, seed: int, *, probe_mode: str = "shared", share_prompts: bool = True) -> dict[str, Any]:
    """Return the fingerprint of ``preset`` (a ``pipeline.Preset``) for ``seed`` (a few seconds on a CPU).

    ``probe_mode`` and ``share_prompts`` are the run's (``ValidateConfig``); the numbers agree across them to
    float noise, so a fingerprint taken in one mode checks a run made in the other.
    """
    world = build_world(dataclasses.replace(preset.world, seed=seed))
    tok = world_tokenizer(world)
    out: dict[str, Any] = {"seed": seed, "world": _digest([sorted(world.facts.items()), world.train_pairs,
                                                           world.test_pairs, world.probes, world.corpus]),
                           "tokenizer": _digest(sorted(tok.get_vocab().items())), "vocab_size": len(tok),
                           "rules": _digest(_rules()), "preset": _digest(config_to_dict(preset))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model(preset.arch, len(tok), seed=seed, dtype="float32", hidden=min(preset.hidden, 64),
                           layers=min(preset.layers, 2), heads=min(preset.heads, 2), max_positions=256,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out["pretrain_loss"] = pretrain(model, tok, world.corpus[:_DOCS], epochs=1, lr=preset.pretrain_lr,
                                        batch_size=16, seed=seed, device=torch.device("cpu"))[-1]
        probes = ProbeSet(tuple(p["prompt"] for p in world.probes[:_PROBES]),
                          {k: tuple(p[k] for p in world.probes[:_PROBES]) for k in PROBE_KEYS if k != "prompt"},
                          source="fingerprint")
        pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in world.train_pairs[:16]]
        with tempfile.TemporaryDirectory() as tmp:
            for loss, steps, lr in (("sft", 2, preset.sft_lr), ("dpo", 1, preset.large_dpo_lr)):
                cfg = TrainConfig(model="fingerprint", loss=loss, optimizer=preset.optimizer, lr=lr, batch_size=8,
                                  max_examples=8 * steps, eval_every=10 ** 9, held_out=0, num_probes=_PROBES,
                                  greedy_max_new_tokens=8, device="cpu", seed=seed, save_model=False,
                                  probe_mode=probe_mode, share_prompts=share_prompts,
                                  checkpoint_at_end=False, progress=False, out_dir=str(Path(tmp) / loss),
                                  figure=False)  # a scratch run in a temporary folder: only its probes are read
                result = train(cfg, model=copy.deepcopy(model), tokenizer=tok, pairs=pairs, probes=probes)
                means = result.probes.means()
                out[loss] = {f"{p}/{s}": v for (p, s), v in sorted(means.items())
                             if s in ("logp_sum", "entropy", "peakiness")}
                model = result.model if loss == "sft" else model
    finally:
        torch.set_num_threads(threads)
    return out


def compare_fingerprints(committed: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return what differs (empty when current): digests and counts exactly, numbers within RTOL / ATOL."""
    problems = []

    def walk(a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if key not in a or key not in b:
                    problems.append(f"{where}{key}: only in the {'current' if key in b else 'committed'} fingerprint")
                else:
                    walk(a[key], b[key], f"{where}{key}/")
        elif isinstance(a, float) or isinstance(b, float):
            if not np.isclose(float(a), float(b), rtol=RTOL, atol=ATOL, equal_nan=True):
                problems.append(f"{where[:-1]}: committed {a:.6g}, code now gives {float(b):.6g}")
        elif a != b:
            problems.append(f"{where[:-1]}: committed {a!r}, code now gives {b!r}")

    walk(committed, current, "")
    return problems
