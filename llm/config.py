"""Dataclass configs of the llm runs (training and probe evaluation); ``toykit.configs`` turns them into CLIs.

Defaults finish in seconds on a CPU: a tiny GPT-2 trained on synthetic arithmetic pairs. The paper's setup
(PAPER.md section 7) is RMSprop, lr 5e-7, 150 warm-up steps, clip 10, batch 4, beta 0.1, prompt 256 / total 512,
probes = the first 500 training examples evaluated every 1000 examples.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import field
from pathlib import Path
from typing import Literal

from toykit.runs import check_run_name

__all__ = ["TrainConfig", "EvalConfig", "RESUME_FREE_FIELDS"]

#: fields that may differ between a run and its resumption (they do not change what is computed).
RESUME_FREE_FIELDS = ("resume", "stop_after_steps", "progress", "device", "probe_mode", "share_prompts",
                      "share_prompts_min_tokens", "squeeze_alarm", "figure")


#: every size has a bound, so a typo cannot start a run that would not end (or exhaust memory).
_UPPER_BOUNDS = {"tiny_vocab_size": 1_000_000, "tiny_hidden": 65_536, "tiny_layers": 1_024, "tiny_heads": 1_024,
                 "num_synthetic": 10_000_000, "num_probes": 10_000_000, "greedy_max_new_tokens": 100_000,
                 "probe_batch_size": 1_000_000, "max_prompt_tokens": 1_000_000, "max_response_tokens": 1_000_000}


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class _ModelData:
    model: str = _f("tiny-gpt2", "causal LM: tiny-gpt2 / tiny-llama / tiny-gpt_neox / tiny-qwen2 (random, built "
                    "from a config) or a local directory / hub id")
    tokenizer: str = _f("", "tokenizer directory or hub id; empty: the model's own, or for tiny-* a byte-level BPE "
                        "trained on the run's texts")
    tiny_vocab_size: int = _f(512, "target vocabulary of the BPE trained for tiny-* models")
    tiny_hidden: int = _f(64, "hidden size of tiny-* models")
    tiny_layers: int = _f(2, "layers of tiny-* models")
    tiny_heads: int = _f(2, "attention heads of tiny-* models")
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = _f("float32", "weight dtype (the reference uses "
                                                                     "the same dtype as the policy)")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    bf16: bool = _f(False, "bf16 autocast of forward passes on CUDA (log-softmax stays float32)")
    data: str = _f("", "preference pairs: a .jsonl / .json / .parquet file, a datasets save_to_disk directory or a "
                   "hub dataset name (TRL prompt/chosen/rejected, HH raw dialogues, message lists, or TRL's "
                   "conversational formats with --data-format chat); empty: synthetic arithmetic pairs")
    data_format: Literal["auto", "trl", "hh", "messages", "chat"] = _f(
        "auto", "format of --data: auto (per record: message lists -> messages, a prompt key -> trl, else hh), trl, "
        "hh, messages (rendered in the HH layout), or chat (TRL's conversational records -- prompt/chosen/rejected "
        "message lists, prompt/completion, or messages for SFT -- rendered with the tokenizer's chat template)")
    data_split: str = _f("train", "split of a hub dataset or of a datasets directory holding several splits")
    data_columns: str = _f("", "rename data columns to TRL's names, e.g. prompt=question,chosen=good,rejected=bad")
    num_synthetic: int = _f(48, "number of synthetic pairs when --data is empty")
    max_pairs: int | None = _f(None, "use only the first pairs of the data file (default: all)")
    held_out: int = _f(8, "last pairs of the data withheld from training: their y+ are the held-out probe answers "
                       "(y_test, y_rnd)")
    probes: str = _f("", "probe file in the paper's format (../shared/data/NOTICE.md); empty: probes derived from "
                     "the first training pairs")
    num_probes: int = _f(16, "number of probe prompts (the paper: the first 500 training examples)")
    greedy_max_new_tokens: int = _f(0, "> 0 adds the free-running greedy-decoding probe with this many tokens")
    probe_batch_size: int = _f(16, "sequences per forward pass when evaluating probes and reference log-probs")
    probe_mode: Literal["shared", "full"] = _f("shared", "probe batching: shared (each prompt runs once and all its "
                                               "responses continue from its key/value cache; falls back to full, "
                                               "with a warning, on a model that cannot) or full (one sequence per "
                                               "response, the reference path); both give the same values")
    leading_space: bool = _f(True, "prefix a space to responses that lack one (the GPT rephrases do)")
    max_prompt_tokens: int = _f(256, "prompt token budget")
    max_response_tokens: int = _f(256, "response token budget (eos included); longer responses keep their start")
    prompt_overflow: Literal["error", "left_truncate", "right_truncate"] = _f(
        "error", "a prompt over its budget: error (refused), left_truncate (keeps its last tokens; the paper on HH) or "
        "right_truncate (keeps its first tokens; the paper on UltraFeedback)")
    max_total_tokens: int | None = _f(None, "total budget of prompt + response (the paper: 512): a prompt is cut to "
                                      "--max-prompt-tokens only when prompt + the longest response of its record "
                                      "exceed it, then responses keep their first tokens to fit; empty: separate "
                                      "prompt and response budgets")
    seed: int = _f(0, "seed of data order, derived probes and tiny-model weights")
    out_dir: str | None = _f(None, "run directory (must not hold a run unless --resume); default runs/<time>-<phase>")
    runs_root: str = _f("runs", "parent of default run directories")
    progress: bool = _f(True, "print progress (phase, step, ETA) to stderr; false: quiet")

    def _check_common(self) -> None:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", str(self.device)):
            raise ValueError(f"--device {self.device!r} is not a device; expected cpu, cuda, cuda:N, mps or auto")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"--seed must be an integer in [0, 2**32), got {self.seed}")
        for name, high in _UPPER_BOUNDS.items():
            if getattr(self, name) > high:
                raise ValueError(f"--{name.replace('_', '-')} must be <= {high}, got {getattr(self, name)}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"--max-pairs must be >= 1 (or left out for all pairs), got {self.max_pairs}")
        if self.phase:
            check_run_name(self.phase)
        for name in ("tiny_vocab_size", "tiny_hidden", "tiny_layers", "tiny_heads", "num_synthetic", "num_probes",
                     "probe_batch_size", "max_prompt_tokens", "max_response_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_total_tokens is not None and self.max_total_tokens <= self.max_prompt_tokens:
            raise ValueError(f"max_total_tokens ({self.max_total_tokens}) must exceed max_prompt_tokens "
                             f"({self.max_prompt_tokens})")
        if self.held_out < 0 or self.greedy_max_new_tokens < 0:
            raise ValueError(f"held_out and greedy_max_new_tokens must be >= 0, got {self.held_out}, "
                             f"{self.greedy_max_new_tokens}")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_ModelData):
    """Finetune a causal LM with SFT, "extend" SFT or any loss of the toykit registry, tracking probe log-probs."""

    loss: str = _f("sft", "objective: a toykit.losses name (sft, dpo, ipo, slic, hinge, cdpo, robust, simpo, dpop, "
                   "rpo, apo_zero, nca, sppo_hard, orpo, exo_pair, bco_pair, apo_down, discopop, aot, aot_unpaired, "
                   "ipo_norm, dpo_norm, rpo_batch) or extend (SFT on y+ and y-); online RL on sampled groups: grpo, dr_grpo, "
                   "dapo, rloo, gspo, cispo (toykit.group_losses; reward: the synthetic world's judge)")
    phase: str = _f("", "phase label written in metrics rows; default: the loss name")
    optimizer: Literal["sgd", "adamw", "rmsprop"] = _f("adamw", "optimizer (the paper: rmsprop)")
    lr: float = _f(1e-3, "peak learning rate eta")
    weight_decay: float = _f(0.0, "weight decay")
    momentum: float = _f(0.0, "momentum of sgd / rmsprop")
    warmup_steps: int = _f(0, "optimizer steps of linear learning-rate warm-up")
    max_grad_norm: float = _f(10.0, "gradient-norm clip (0: no clipping; the paper: 10)")
    batch_size: int = _f(4, "pairs per forward pass (group losses: prompts per step)")
    grad_accum: int = _f(1, "forward passes accumulated per optimizer step (effective batch = batch_size x this)")
    epochs: int = _f(1, "passes over the training pairs (honoured, unlike the paper's code)")
    max_examples: int | None = _f(None, "stop once this many training examples were seen, before the epochs end "
                                      "(default: no limit)")
    eval_every: int | None = _f(None, "evaluate the probes every this many training examples, plus at step 0 and "
                                "the end (the paper: 1000; default: about 10 evaluations per run)")
    eval_at_end: bool = _f(True, "also evaluate the probes after the last step when it is not on the --eval-every "
                                 "cadence (the paper's code does not: it evaluates at 0, E, 2E, ... before a batch)")
    checkpoint_every: int = _f(0, "save a resumable checkpoint every this many steps (0: only at the end)")
    checkpoint_at_end: bool = _f(True, "save a checkpoint (model + optimizer state) when the run completes; runs "
                                       "chained in-process (validation phases) skip it")
    share_prompts: bool = _f(True, "paired losses: run each pair's prompt once and score y+ and y- from its "
                                   "key/value cache, in the policy step and the reference (same values to float32 "
                                   "rounding; off, or a model that cannot, scores them as separate sequences)")
    share_prompts_min_tokens: int = _f(24, "with --share-prompts: share only when the pairs' prompts average at "
                                           "least this many tokens (shorter ones save less than the second forward "
                                           "call costs: on a CPU the step broke even at 16-30; "
                                           "benchmarks/bench_dpo_sharing.py --max-prompt-tokens); 0 shares any")
    reference: Literal["precomputed", "per_step"] = _f("precomputed", "reference log-probs: computed once for the "
                                                       "dataset, or a frozen model's forward pass every step")
    beta: float | None = _f(None, "beta: inverse temperature of the implicit reward (default: the loss's, 0.1)")
    lam: float | None = _f(None, "lam: SLiC's SFT weight / DPOP's penalty weight (default: the loss's)")
    delta: float | None = _f(None, "delta: SLiC's margin (default 1.0)")
    eps: float | None = _f(None, "eps: label-noise rate of cdpo / robust (default 0.1)")
    gamma: float | None = _f(None, "gamma: SimPO's target margin (default 0.5)")
    alpha: float | None = _f(None, "alpha: RPO's NLL weight (default 1.0)")
    lora_r: int = _f(0, "LoRA adapter rank (needs the peft extra); 0: train every parameter. Only the adapters "
                        "train; the reference is the base with adapters disabled (TRL's convention); the run saves "
                        "adapter/ and model/ (merged)")
    lora_adapter: str = _f("", "continue from LoRA adapters a run saved (its adapter/ directory), loaded onto "
                               "--model and trained further; the reference is still the base")
    lora_alpha: float = _f(16.0, "LoRA scaling numerator (update = alpha / r * B A)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA adapter inputs")
    lora_target_modules: str = _f("all-linear", "modules that get adapters: all-linear or comma-separated names "
                                                "(e.g. q_proj,v_proj; c_attn for GPT-2)")
    num_generations: int = _f(8, "group losses: completions sampled per prompt, the group size G (TRL's name); "
                                 "--batch-size prompts per step")
    max_completion_length: int = _f(16, "group losses: most new tokens per sampled completion (eos included)")
    temperature: float = _f(1.0, "group losses: sampling temperature of the group sampler (> 0)")
    num_iterations: int = _f(1, "group losses: optimizer updates per sampled group (TRL's num_iterations; > 1 lets "
                                "the importance ratio move off 1, where the clip binds)")
    epsilon: float | None = _f(None, "group losses: lower clip range eps_low (default: the loss's, 0.2)")
    epsilon_high: float | None = _f(None, "group losses: upper clip range eps_high (default: the loss's; dapo "
                                          "0.28; for cispo the cap eps_max, 5.0)")
    squeeze_alarm: Literal["off", "warn", "stop", "checkpoint"] = _f(
        "off", "squeeze alarm over the probe curves (llm/alarm.py: y+ falling while the teacher-forced argmax or the "
        "peakiness rises, y- in a valley): off, warn (a warning with the evidence and a squeeze/* metrics row), stop "
        "(also end the run with a checkpoint) or checkpoint (also save a checkpoint and go on)")
    squeeze_min_drop: float = _f(1.0, "nats (summed) y+ must fall below its peak, and y- below its value then, for "
                                      "the squeeze alarm")
    squeeze_min_rise: float = _f(0.5, "nats (summed) the teacher-forced argmax must rise since y+'s peak for the "
                                      "squeeze alarm (or the peakiness of y+ by 0.02)")
    figure: bool = _f(True, "write probe_curves.png (mean probe log-probs over training) at the end of the run")
    save_model: bool = _f(True, "save the final model and tokenizer (save_pretrained) in the run directory")
    resume: bool = _f(False, "continue the run in --out-dir from its last checkpoint")
    stop_after_steps: int | None = _f(None, "stop (as if killed) after this many steps, without a final checkpoint; "
                                      "for resume tests (default: never)")
    explain_prompts: int = _f(0, "> 0: attribute every probe's per-step change of the first this many probe "
                              "prompts to the loss's terms along the real optimizer update (llm.explain; saved "
                              "under explain/; read with `python -m llm explain RUN_DIR`). Its state is in every "
                              "checkpoint, so a --resume'd run records what an uninterrupted one does (SFT/DPO/paired "
                              "losses; an online-RL run refuses --resume with it)")
    explain_every: int = _f(1, "with --explain-prompts: attribution window in optimizer steps (1 = every step). The "
                               "update is split into its terms at every step; the first-order change along each "
                               "term's summed update is taken once per window, at the window's start, and compared "
                               "with the change measured over the window (cost ~1/this of a per-step attribution)")
    token_view: int = _f(0, "> 0: write token_view.json at the end: for the first this many y+ probes, the per-token "
                            "change of log pi over the run and the tokens that gained the most probability at each "
                            "position (llm.token_view; shown on the app's Online RL page)")

    def __post_init__(self) -> None:
        self._check_common()
        from llm.objective import EXTEND, Objective  # torch: imported once a config is built, not for --help
        from toykit.group_losses import group_loss_names
        from toykit.losses import check_hparams

        if self.loss not in Objective.known() and self.loss not in group_loss_names():
            raise ValueError(f"unknown loss {self.loss!r}; known: {', '.join(Objective.known() + group_loss_names())}")
        if self.token_view < 0:
            raise ValueError(f"token_view must be >= 0, got {self.token_view}")
        if self.share_prompts_min_tokens < 0:
            raise ValueError(f"share_prompts_min_tokens must be >= 0, got {self.share_prompts_min_tokens}")
        if self.explain_prompts < 0:
            raise ValueError(f"explain_prompts must be >= 0, got {self.explain_prompts}")
        if self.explain_every < 1:
            raise ValueError(f"explain_every must be >= 1, got {self.explain_every}")
        for name in ("batch_size", "grad_accum", "epochs", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"lr and max_grad_norm must be finite numbers, got {self.lr}, {self.max_grad_norm}")
        if self.lr <= 0 or self.max_grad_norm < 0 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError(f"need lr > 0, max_grad_norm >= 0, warmup_steps >= 0, checkpoint_every >= 0; got "
                             f"{self.lr}, {self.max_grad_norm}, {self.warmup_steps}, {self.checkpoint_every}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {self.max_examples}")
        if self.lora_adapter and not (Path(self.lora_adapter) / "adapter_config.json").is_file():
            raise ValueError(f"--lora-adapter {self.lora_adapter}: no adapter_config.json there (expected the "
                             "adapter/ directory of a LoRA run)")
        if self.lora_r < 0 or not 0 <= self.lora_dropout < 1 or self.lora_alpha <= 0:
            raise ValueError(f"need lora_r >= 0, 0 <= lora_dropout < 1, lora_alpha > 0; got {self.lora_r}, "
                             f"{self.lora_dropout}, {self.lora_alpha}")
        if self.resume and not self.out_dir:
            raise ValueError("--resume needs --out-dir (the run to continue)")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"--stop-after-steps must be >= 1 (or left out), got {self.stop_after_steps}")
        for name, value in self.hparams().items():
            if isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value!r}")
        if self.loss in group_loss_names():
            if min(self.num_generations, self.max_completion_length, self.num_iterations) < 1 or \
                    self.num_generations < 2 or not (math.isfinite(self.temperature) and self.temperature > 0):
                raise ValueError(f"group loss {self.loss!r} needs --num-generations >= 2, --max-completion-length "
                                 f">= 1, --num-iterations >= 1 and a finite --temperature > 0; got "
                                 f"{self.num_generations}, {self.max_completion_length}, {self.num_iterations}, "
                                 f"{self.temperature}")
            self.group_hparams()  # ValueError naming a hyperparameter the group loss refuses
        else:
            check_hparams("sft" if self.loss == EXTEND else self.loss, self.hparams())

    def group_hparams(self) -> dict[str, float]:
        """The group loss's hyperparameters from TRL-named flags (epsilon, epsilon_high, beta), checked."""
        from toykit.group_losses import check_group_hparams, get_group_loss

        spec = get_group_loss(self.loss)
        given = {"eps_low": self.epsilon, "eps_max" if "eps_max" in spec.defaults else "eps_high": self.epsilon_high,
                 "beta": self.beta}
        merged = {**spec.defaults, **{k: v for k, v in given.items() if v is not None and k in spec.defaults}}
        unused = [flag for flag, v in (("--epsilon", self.epsilon), ("--beta", self.beta))
                  if v is not None and {"--epsilon": "eps_low", "--beta": "beta"}[flag] not in spec.defaults]
        if unused:
            raise ValueError(f"group loss {self.loss!r} takes no {', '.join(unused)} (its hyperparameters: "
                             f"{sorted(spec.defaults)})")
        return check_group_hparams(self.loss, merged)

    def hparams(self) -> dict[str, float]:
        """The loss hyperparameters that were set (the registry supplies the others)."""
        names = ("beta", "lam", "delta", "eps", "gamma", "alpha")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def phase_name(self) -> str:
        return self.phase or self.loss


@dataclasses.dataclass(frozen=True)
class EvalConfig(_ModelData):
    """Evaluate every probe type of a probe set on a model and write one row per probe type and statistic."""

    phase: str = _f("eval", "phase label written in metrics rows")
    # evaluation alone: the paper's whole probe set (its first 500 records), not training's 16-prompt default
    num_probes: int = _f(500, "number of probe prompts, the first of the file (the paper: 500; fewer when the file "
                              "or the derived pairs hold fewer)")

    def __post_init__(self) -> None:
        self._check_common()
