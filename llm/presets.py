"""The paper's training recipe as ``--preset paper-hh`` / ``--preset paper-ultrafeedback`` for sft / dpo / train.

Each value is documented against the paper's code (Joshua-Ren/Learning_dynamics_LLM, ``src/``): the Hydra config
``config/config.yaml``, the trainer ``trainers.py`` (``BasicTrainer.train``), the data pipeline
``preference_datasets.py`` and the launch scripts ``bashes/sft.sh`` / ``bashes/dpo.sh`` (the Qwen1.5-1.8B lines).
A preset fills fields; ``--config`` and explicit flags override it. What the toolkit deliberately does NOT copy
(PAPER.md section 7) is listed in ``NOT_COPIED``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llm.config import TrainConfig

__all__ = ["PRESETS", "NOT_COPIED", "preset_fields", "preset_config"]

#: fields shared by both datasets: (value, where the paper's code sets it).
_COMMON: dict[str, tuple[Any, str]] = {
    "optimizer": ("rmsprop", "config.yaml `optimizer: RMSprop`; trainers.py getattr(torch.optim, ...)(params, lr=lr): "
                             "torch defaults otherwise (alpha 0.99, eps 1e-8, no momentum, no weight decay)"),
    "lr": (5e-7, "config.yaml `lr: 5e-7`"),
    "momentum": (0.0, "torch.optim.RMSprop default (the paper passes lr only)"),
    "weight_decay": (0.0, "torch.optim.RMSprop default"),
    "warmup_steps": (151, "trainers.py LambdaLR(lambda step: min(1.0, (step + 1) / (warmup_steps + 1))) with "
                          "`warmup_steps: 150`, i.e. (step+1)/151; the toolkit's schedule is min(1, (step+1)/W), "
                          "so W = 151"),
    "max_grad_norm": (10.0, "config.yaml `max_grad_norm: 10.0`"),
    "batch_size": (4, "config.yaml `batch_size: 4` (the Qwen1.5-1.8B scripts keep it)"),
    "grad_accum": (1, "config.yaml `gradient_accumulation_steps: 1`"),
    "beta": (0.1, "dpo.sh `loss.beta=0.1`"),
    "max_prompt_tokens": (256, "config.yaml `max_prompt_length: 256`"),
    "max_total_tokens": (512, "config.yaml `max_length: 512`; preference_datasets.tokenize_batch_element cuts the "
                              "prompt only when prompt + the record's longest response exceed it, then the responses"),
    "max_response_tokens": (512, "no separate response budget in the paper: responses are limited by max_length"),
    "num_probes": (500, "trainers.py get_batch_iterator(split='formal_prob_train', n_examples=500, shuffle=False): "
                        "the first 500 training examples"),
    "eval_at_end": (False, "trainers.py evaluates when example_counter % eval_every == 0 BEFORE a batch (0 "
                           "included, `do_first_eval: true`) and never after the last batch"),
    "epochs": (1000, "the paper's iterator never increments its epoch counter (n_epochs is ignored): n_examples "
                     "alone ends training, so epochs is set high and max_examples decides"),
    "held_out": (0, "the paper's probe file holds training prompts; y_test comes from its own file (--probes)"),
    "dtype": ("float32", "model config `policy_dtype: float32` (the paper's fp16 reference is not copied)"),
}

#: preset name -> fields particular to the dataset: (value, source).
_PER_DATASET: dict[str, dict[str, tuple[Any, str]]] = {
    "paper-hh": {
        "prompt_overflow": ("left_truncate", "preference_datasets.get_batch_iterator: truncation_mode = 'keep_end' "
                                             "if name == 'hh'"),
        "eval_every": (1000, "sft.sh / dpo.sh qwen18 HH lines: `eval_every=1000`"),
    },
    "paper-ultrafeedback": {
        "prompt_overflow": ("right_truncate", "preference_datasets.get_batch_iterator: 'keep_start' for every "
                                              "dataset but hh (ultrafb)"),
        "eval_every": (500, "sft.sh / dpo.sh ultrafb lines: `eval_every=500` (config.yaml's default is 100)"),
    },
}

#: (preset, phase) -> example budget: the paper's n_examples of its Qwen1.5-1.8B runs.
_BUDGET: dict[tuple[str, str], tuple[int, str]] = {
    ("paper-hh", "sft"): (40000, "sft.sh baseline_sft_qwen18_ep8: `n_examples=40000`"),
    ("paper-hh", "dpo"): (30000, "dpo.sh baseline_dpo_qwen18_ep6: `n_examples=30000`"),
    ("paper-ultrafeedback", "sft"): (10000, "sft.sh ultrafb_baseline_sftep2_qwen18: `n_examples=10000`"),
    ("paper-ultrafeedback", "dpo"): (30000, "dpo.sh ultrafb_baseline_dpo_qwen18: `n_examples=30000`"),
}

PRESETS = tuple(_PER_DATASET)

#: what the paper's code does that the presets deliberately do not reproduce (PAPER.md section 7).
NOT_COPIED = (
    "reference model in fp16 while the policy is fp32 (the toolkit keeps one dtype: the DPO log-ratio is 0 at step 0)",
    "data order from a hard-coded seed with numpy shuffles (the toolkit's order is seeded by --seed and the epoch)",
    "a short last batch of each pass is dropped by the paper's iterator (the toolkit trains it)",
    "GPT rephrases without a leading space (--leading-space adds it)",
    "the teacher-forced argmax of the last probe instead of y+ (the toolkit's is on y+)",
)


def _phase(loss: str) -> str:
    return "sft" if loss in ("sft", "extend") else "dpo"


def preset_fields(name: str, loss: str = "dpo") -> dict[str, tuple[Any, str]]:
    """Return ``{field: (value, source in the paper's code)}`` of preset ``name`` for a run of ``loss``."""
    if name not in _PER_DATASET:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    budget = _BUDGET[(name, _phase(loss))]
    return {**_COMMON, **_PER_DATASET[name], "max_examples": budget}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from preset ``name`` with ``overrides`` on top (``loss`` picks the example budget)."""
    loss = overrides.get("loss", "sft")
    values = {k: v for k, (v, _) in preset_fields(name, loss).items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for preset {name!r}")
    return TrainConfig(**{**values, **overrides})
