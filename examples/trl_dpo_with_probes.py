"""DPO with TRL's DPOTrainer and the toolkit's probes: ProbeCallback, optional LoRA, chat data, the squeeze alarm.

    python examples/trl_dpo_with_probes.py                  # a tiny GPT-2 and synthetic pairs, built offline (CI)
    python examples/trl_dpo_with_probes.py --model Qwen/Qwen2.5-1.5B-Instruct \\
        --data trl-lib/ultrafeedback_binarized --data-format chat --lora-r 16 --num-probes 500 \\
        --max-steps 1000 --eval-every-steps 250 --bf16 true --report-to wandb --squeeze-alarm warn

The probes are the first --num-probes training pairs (as the paper did); the run directory (--out-dir) opens in the
app: streamlit run app/Home.py -> "LLM runs". TRL scores its own batches with a fused LM head; the callback runs
its own forward passes on the probes, encoded by the engine (chat data rendered by the same template as TRL's).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from dataclasses import field
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import datasets  # noqa: E402
import torch  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from llm.alarm import SqueezeRule  # noqa: E402
from llm.callback import ProbeCallback  # noqa: E402
from llm.chat import pairs_from_chat_records  # noqa: E402
from llm.data import pairs_from_records, probe_set_from_pairs, synthetic_pairs  # noqa: E402
from llm.encoding import TruncationPolicy  # noqa: E402
from llm.models import load_model, tiny_model  # noqa: E402
from llm.probes import ProbeEvaluator  # noqa: E402
from llm.sources import parse_columns, read_records  # noqa: E402
from llm.tokenization import load_tokenizer, train_bpe_tokenizer  # noqa: E402
from toykit.configs import parse_config  # noqa: E402


def _f(default, text):
    return field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    """TRL DPO with probes (defaults: a tiny offline run that finishes in seconds on a CPU)."""

    model: str = _f("tiny-gpt2", "tiny-gpt2 (random, built here) or a local directory / hub id of a causal LM")
    data: str = _f("", "pairs: .jsonl/.json/.parquet, a datasets directory or a hub name; empty: synthetic pairs")
    data_format: Literal["trl", "chat"] = _f("trl", "trl: string prompt/chosen/rejected; chat: TRL's conversational "
                                                    "records, rendered with the tokenizer's chat template")
    data_split: str = _f("train", "split of a hub dataset or datasets directory")
    data_columns: str = _f("", "rename columns to TRL's names, e.g. prompt=question,chosen=good,rejected=bad")
    num_pairs: int = _f(32, "pairs used (the first ones)")
    num_probes: int = _f(8, "probe prompts: the first training pairs")
    out_dir: str = _f("runs/trl-dpo", "run directory of the probes (must not exist)")
    max_steps: int = _f(6, "optimizer steps")
    batch_size: int = _f(4, "per-device batch")
    grad_accum: int = _f(1, "gradient accumulation steps")
    lr: float = _f(5e-3, "learning rate")
    beta: float = _f(0.1, "DPO beta")
    max_prompt_tokens: int = _f(64, "probe prompt budget (prompts keep their last tokens)")
    max_response_tokens: int = _f(64, "probe response budget")
    eval_every_steps: int = _f(2, "probe evaluation every this many optimizer steps (and at step 0 and the end)")
    probe_batch_size: int = _f(16, "probe sequences per forward pass")
    lora_r: int = _f(0, "LoRA rank (peft); 0: full finetuning with a reference copy")
    squeeze_alarm: Literal["off", "warn", "stop", "checkpoint"] = _f("warn", "squeeze alarm action (llm.alarm)")
    bf16: bool = _f(False, "bf16 mixed precision (CUDA)")
    report_to: str = _f("none", "TRL/transformers reporters: none, wandb, trackio, tensorboard (comma-separated)")
    seed: int = _f(0, "seed of the tiny model and of TRL")


def _pairs_and_records(cfg: ExampleConfig, tok):
    if not cfg.data:
        pairs = synthetic_pairs(cfg.num_pairs, seed=cfg.seed)
        return pairs, [dataclasses.asdict(p) for p in pairs]
    records, source = read_records(cfg.data, split=cfg.data_split, columns=parse_columns(cfg.data_columns))
    records = records[: cfg.num_pairs]
    if cfg.data_format == "chat":
        return pairs_from_chat_records(records, tok, source), [r for _, r in records]  # TRL renders the raw ones
    pairs = pairs_from_records(records, source, "trl")
    return pairs, [dataclasses.asdict(p) for p in pairs]


def main(argv=None) -> dict:
    """Run the example; return (and print) the callback's summary.json."""
    cfg = parse_config(ExampleConfig, argv, prog="trl_dpo_with_probes.py")
    if cfg.model == "tiny-gpt2":
        pairs = synthetic_pairs(cfg.num_pairs, seed=cfg.seed)
        tok = train_bpe_tokenizer([t for p in pairs for t in (p.prompt, p.chosen, p.rejected)], vocab_size=320)
        model = tiny_model("gpt2", len(tok), seed=cfg.seed, max_positions=256, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    else:
        tok = load_tokenizer(cfg.model)
        model = load_model(cfg.model, dtype="bfloat16" if cfg.bf16 else "float32")
    pairs, records = _pairs_and_records(cfg, tok)
    policy = TruncationPolicy(cfg.max_prompt_tokens, cfg.max_response_tokens, "left_truncate",
                              append_eos=cfg.data_format != "chat")
    evaluator = ProbeEvaluator(probe_set_from_pairs(pairs[: cfg.num_probes], seed=cfg.seed), tok, policy,
                               batch_size=cfg.probe_batch_size)
    peft_config = None
    if cfg.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    args = DPOConfig(output_dir=str(Path(cfg.out_dir).with_name(Path(cfg.out_dir).name + "-trainer")),
                     per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                     max_steps=cfg.max_steps, learning_rate=cfg.lr, beta=cfg.beta, logging_steps=1,
                     report_to=[] if cfg.report_to == "none" else cfg.report_to.split(","), save_strategy="no",
                     use_cpu=not torch.cuda.is_available(), bf16=cfg.bf16, seed=cfg.seed, disable_tqdm=True,
                     max_length=cfg.max_prompt_tokens + cfg.max_response_tokens)
    trainer = DPOTrainer(model=model, ref_model=None if cfg.lora_r else copy.deepcopy(model), args=args,
                         train_dataset=datasets.Dataset.from_list(records), processing_class=tok,
                         peft_config=peft_config)
    rule = None if cfg.squeeze_alarm == "off" else SqueezeRule(action=cfg.squeeze_alarm)
    callback = ProbeCallback(evaluator, cfg.out_dir, eval_every_steps=cfg.eval_every_steps, phase="dpo",
                             squeeze_alarm=rule, config={"example": dataclasses.asdict(cfg)})
    callback.attach(trainer)  # before the reporters, so W&B / trackio get logps/probe_* beside logps/chosen
    trainer.train()
    summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
