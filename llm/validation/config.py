"""The config of ``python -m llm validate``, kept apart from the pipeline so its ``--help`` loads no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ValidateConfig"]


@dataclass(frozen=True)
class ValidateConfig:
    """Validate the paper's claims end to end (pretrain -> SFT / extend -> DPO / on-policy DPO) over seeds."""

    preset: Literal["test", "cpu", "gpu"] = field(default="cpu", metadata={
        "help": "sizes: test (seconds), cpu (< 10 min on 2 cores), gpu (~50M parameters, bf16)"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "seeds (world, init, data order); >= 1"})
    model: str = field(default="", metadata={
        "help": "a pretrained causal LM directory: skip the world and pretraining, finetune it on --data"})
    data: str = field(default="", metadata={"help": "preference pairs JSONL (with --model)"})
    probes: str = field(default="", metadata={"help": "probe file in the paper's format (with --model); "
                                                      "default: probes derived from the pairs"})
    held_out: int = field(default=64, metadata={"help": "last pairs of --data held out (y_test probes)"})
    num_probes: int = field(default=64, metadata={"help": "probe prompts with --model"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    out_dir: str | None = field(default=None, metadata={"help": "run directory; default runs/<time>-validate"})
    runs_root: str = field(default="runs", metadata={"help": "parent of the default run directory"})
    progress: bool = field(default=True, metadata={
        "help": "print progress to stderr: a line per seed and each training phase's bar (phase, step, ETA)"})
    threads: int = field(default=1, metadata={
        "help": "torch CPU threads during the run (tiny models are fastest on one; 0 keeps torch's setting)"})
    workers: int = field(default=3, metadata={
        "help": "seeds run in this many parallel processes (each with --threads threads); 1 = one after another "
                "in this process; a --time-budget-s runs them one after another"})
    time_budget_s: float = field(default=0.0, metadata={
        "help": "stop before a seed that would not finish within this many seconds (judged from the seeds done); "
                "the report covers the seeds that finished; 0 = no limit"})

    probe_mode: Literal["shared", "full"] = field(default="shared", metadata={
        "help": "probe batching in every phase: shared (each prompt runs once and all its responses continue from "
                "its key/value cache; falls back to full, with a warning, on a model that cannot) or full (one "
                "sequence per response, the reference path); both give the same values"})
    share_prompts: bool = field(default=True, metadata={
        "help": "the DPO phases: run each pair's prompt once and score y+ and y- from its key/value cache, in the "
                "policy step and the reference (same values to float32 rounding; off, or a model that cannot, "
                "scores them as separate sequences). As in the engine, only prompts averaging at least 24 tokens "
                "are shared (--share-prompts-min-tokens of llm train): the world's ~15-token prompts are not"})

    explain_prompts: int = field(default=0, metadata={
        "help": "> 0: attribute every phase's probe changes to the loss's terms for the first this many probe prompts "
                "(llm.explain; each phase's explain/ folder, and per-phase sentences in the seed's record)"})
    explain_every: int = field(default=1, metadata={
        "help": "with --explain-prompts: attribution window in optimizer steps (1 = every step; the engine's "
                "--explain-every): the first-order change is taken once per window, which cuts the attribution's "
                "cost; the report's Prop. 1 section gives the fit per window"})
    explain_forecast: bool = field(default=False, metadata={
        "help": "with --explain-prompts: also forecast the off-policy DPO phases from the kernel at their start "
                "(llm.forecast, in <phase>_forecast/) and record where each probe's forecast parts"})

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if bool(self.model) != bool(self.data):
            raise ValueError(f"--model and --data go together; got model={self.model!r}, data={self.data!r}")
        if self.time_budget_s < 0:
            raise ValueError(f"time_budget_s must be >= 0 (0 = no limit), got {self.time_budget_s}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.explain_prompts < 0:
            raise ValueError(f"explain_prompts must be >= 0, got {self.explain_prompts}")
        if self.explain_every < 1:
            raise ValueError(f"explain_every must be >= 1, got {self.explain_every}")
        if self.held_out < 1 or self.num_probes < 2:
            raise ValueError(f"held_out must be >= 1 and num_probes >= 2, got {self.held_out}, {self.num_probes}")
