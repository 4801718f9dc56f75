"""llm: real SFT/DPO finetuning of Hugging Face causal LMs with learning-dynamics probes.

Public API (imported lazily, so ``import llm.runs`` stays light for the app):

| name | module | what |
|---|---|---|
| ``train``, ``TrainConfig``, ``TrainResult`` | training, config | one finetuning phase (SFT, extend, any registry loss) |
| ``evaluate``, ``EvalConfig`` | training, config | probe evaluation of a model |
| ``ProbeEvaluator``, ``ProbeResult``, ``evaluate_sequential`` | probes | batched (and the paper's one-by-one) probes |
| ``sequence_logps``, ``response_statistics``, ``greedy_decode`` | logps | summed / mean log-probs, A norm, argmaxes |
| ``load_pairs``, ``load_probe_set``, ``probe_set_from_pairs``, ``synthetic_pairs`` | data | preference pairs, probes |
| ``TruncationPolicy``, ``encode_sequence``, ``collate`` | encoding | token budgets and padded batches |
| ``tiny_model``, ``load_model`` | models | causal LMs |
| ``train_bpe_tokenizer``, ``build_word_tokenizer``, ``load_tokenizer`` | tokenization | local tokenizers |
| ``Objective``, ``batch_loss``, ``precompute_reference_logps`` | objective | the per-batch step |
| ``ProbeCallback`` | callback | probes inside any transformers ``Trainer`` / TRL run |
| ``SqueezeRule``, ``SqueezeMonitor`` | alarm | the squeeze alarm over probe curves |
| ``preset_config``, ``preset_fields`` | presets | the paper's recipe (paper-hh, paper-ultrafeedback) |
| ``read_records``, ``pairs_from_chat_records``, ``add_chatml_template`` | sources, chat | data files, hub sets, chat |
| ``apply_lora``, ``load_adapter``, ``trainable_parameters`` | lora | LoRA adapters (peft) |
| ``init_distributed``, ``World``, ``shard_indices`` | parallel | data parallelism under ``torchrun`` |
| ``build_world``, ``WorldConfig``, ``Judge`` | validation.world, validation.judge | the synthetic world and its judge |
| ``run_prop1``, ``Prop1Config`` | validation.prop1 | Proposition 1 on a causal LM (gradient inner product vs a step) |
| ``run_validation``, ``ValidateConfig``, ``PRESETS`` | validation.pipeline | the end-to-end claims scoreboard |
| ``read_runs``, ``read_run_metrics``, ``read_paper_metrics``, ``read_claims`` | runs | reading run directories |
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "training": ("train", "evaluate", "TrainResult", "epoch_order"),
    "config": ("TrainConfig", "EvalConfig"),
    "probes": ("ProbeEvaluator", "ProbeResult", "evaluate_sequential", "ARGMAX_PROBE", "GREEDY_PROBE"),
    "logps": ("sequence_logps", "logps_from_logits", "response_statistics", "greedy_decode", "SequenceLogps"),
    "data": ("PreferencePair", "ProbeSet", "PROBE_TYPES", "load_pairs", "load_probe_set", "probe_set_from_pairs",
             "synthetic_pairs"),
    "encoding": ("TruncationPolicy", "EncodedBatch", "encode_sequence", "collate"),
    "models": ("tiny_model", "load_model", "TINY_ARCHS"),
    "tokenization": ("train_bpe_tokenizer", "build_word_tokenizer", "load_tokenizer", "check_tokenizer"),
    "objective": ("Objective", "batch_loss", "precompute_reference_logps", "NonFiniteLossError", "EXTEND"),
    "callback": ("ProbeCallback",),
    "alarm": ("SqueezeRule", "SqueezeMonitor"),
    "presets": ("preset_config", "preset_fields"),
    "sources": ("read_records",),
    "chat": ("pairs_from_chat_records", "add_chatml_template"),
    "lora": ("apply_lora", "load_adapter", "trainable_parameters"),
    "parallel": ("init_distributed", "World", "shard_indices"),
    "validation.world": ("build_world", "save_world", "WorldConfig"),
    "validation.judge": ("Judge",),
    "validation.prop1": ("run_prop1", "Prop1Config", "Prop1Result"),
    "validation.pipeline": ("run_validation", "ValidateConfig", "PRESETS"),
    "validation.report": ("CLAIMS", "evaluate_claims"),
    "runs": ("read_runs", "read_run_metrics", "read_paper_metrics", "read_claims", "list_run_dirs"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'llm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"llm.{_WHERE[name]}"), name)
