"""Assemble what a run needs from its config: pairs, held-out pairs, probe set, tokenizer and model.

Objects passed in by a caller (a pipeline chaining pretrain -> SFT -> DPO hands its model and tokenizer along) are
used as given; only what is missing is built from the config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llm.chat import pairs_from_chat_records
from llm.data import (PreferencePair, ProbeSet, load_pairs, load_probe_set, pairs_from_records, probe_set_from_pairs,
                      synthetic_pairs)
from llm.encoding import TruncationPolicy
from llm.load_checks import check_model_dir, check_model_fits
from llm.models import TINY_ARCHS, load_model, resolve_device, resolve_dtype, tiny_model
from llm.sources import parse_columns, read_records
from llm.tokenization import check_tokenizer, load_tokenizer, train_bpe_tokenizer

__all__ = ["RunInputs", "build_inputs", "truncation_policy", "check_device", "check_pairs_differ"]

_TINY = "tiny-"


@dataclasses.dataclass
class RunInputs:
    """The resolved inputs of a run: model (on its device), tokenizer, training pairs, held-out pairs, probes."""

    model: object
    tokenizer: object
    train_pairs: list[PreferencePair]
    held_out: list[PreferencePair]
    probes: ProbeSet
    policy: TruncationPolicy


def truncation_policy(cfg) -> TruncationPolicy:
    """The run's truncation policy (eos appended to every response as TRL does, except to chat-template text,
    whose end-of-turn tokens TRL takes from the template)."""
    return TruncationPolicy(cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.prompt_overflow,
                            append_eos=cfg.data_format != "chat", max_total_tokens=cfg.max_total_tokens)


def check_device(cfg):
    """Resolve ``cfg.device`` and refuse ``--bf16`` where it cannot apply (bf16 autocast is CUDA-only here)."""
    device = resolve_device(cfg.device)
    if cfg.bf16 and device.type != "cuda":
        raise ValueError(f"--bf16 needs a CUDA device, but --device {cfg.device} is {device.type}; drop --bf16 "
                         "(or --bf16 false) on this machine")
    return device


def check_pairs_differ(pairs: list[PreferencePair], source: str, loss: str) -> None:
    """Refuse pairs whose chosen and rejected responses are the same text: a paired loss learns nothing from them."""
    same = [i for i, p in enumerate(pairs) if p.chosen == p.rejected]
    if same:
        raise ValueError(f"{source}: pair {same[0]} (0-based; {len(same)} such pairs) has chosen == rejected; loss "
                         f"{loss!r} compares the two, so drop or fix these pairs")


def _pairs(cfg, tokenizer=None) -> list[PreferencePair]:
    if cfg.data and cfg.data_format != "chat" and cfg.data.endswith(".jsonl") and not cfg.data_columns:
        pairs = load_pairs(cfg.data, cfg.data_format, leading_space=cfg.leading_space)
    elif cfg.data:
        records, source = read_records(cfg.data, split=cfg.data_split, columns=parse_columns(cfg.data_columns))
        if cfg.data_format == "chat":
            pairs = pairs_from_chat_records(records, tokenizer, source)
        else:
            pairs = pairs_from_records(records, source, cfg.data_format, leading_space=cfg.leading_space)
    else:
        pairs = synthetic_pairs(cfg.num_synthetic, seed=cfg.seed)
    return pairs[: cfg.max_pairs] if cfg.max_pairs is not None else pairs


def _probes(cfg, train_pairs: list[PreferencePair], held_out: list[PreferencePair], tokenizer=None) -> ProbeSet:
    if cfg.probes and cfg.data_format == "chat":  # conversational probe pairs, rendered like the training data
        records, source = read_records(cfg.probes, split=cfg.data_split, columns=parse_columns(cfg.data_columns))
        probe_pairs = pairs_from_chat_records(records[: cfg.num_probes], tokenizer, source)
        return dataclasses.replace(probe_set_from_pairs(probe_pairs, held_out=held_out, seed=cfg.seed), source=source)
    if cfg.probes:
        return load_probe_set(cfg.probes, max_records=cfg.num_probes, held_out=[p.chosen for p in held_out],
                              seed=cfg.seed, leading_space=cfg.leading_space)
    return probe_set_from_pairs(train_pairs[: cfg.num_probes], held_out=held_out, seed=cfg.seed)


def _texts(pairs: list[PreferencePair], probes: ProbeSet) -> list[str]:
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    return texts + list(probes.prompts) + [t for v in probes.responses.values() for t in v if t]


def build_inputs(cfg, *, model=None, tokenizer=None, pairs=None, probes=None, tokenizer_dir: Path | None = None,
                 need_pairs: bool = True) -> RunInputs:
    """Resolve the run's inputs from ``cfg``, keeping any object the caller passed.

    Args:
        cfg: a TrainConfig or EvalConfig.
        model, tokenizer: used as given when passed (a tokenizer is required with a passed model unless
            ``cfg.tokenizer`` names one).
        pairs: all preference pairs (the last ``cfg.held_out`` are withheld from training).
        probes: a ProbeSet; default from ``cfg.probes`` or derived from the first training pairs.
        tokenizer_dir: a saved tokenizer of this run (used when resuming, so the vocabulary cannot drift).
        need_pairs: False for probe evaluation from a probe file without a pairs file.
    """
    if tokenizer is None and cfg.data_format == "chat":  # rendering the data needs the tokenizer's template
        source = (str(tokenizer_dir) if tokenizer_dir is not None and Path(tokenizer_dir).is_dir() else
                  cfg.tokenizer or (None if cfg.model.startswith(_TINY) else cfg.model))
        if source is None:
            raise ValueError("--data-format chat with a tiny-* model needs --tokenizer: a tokenizer directory with a "
                             "chat template")
        tokenizer = load_tokenizer(source)
    if pairs is None and (need_pairs or not cfg.probes):
        pairs = _pairs(cfg, tokenizer)
    pairs = list(pairs or [])
    if need_pairs and len(pairs) <= cfg.held_out:
        raise ValueError(f"{len(pairs)} pairs leave none for training after holding out {cfg.held_out}")
    cut = len(pairs) - cfg.held_out if cfg.held_out else len(pairs)
    train_pairs, held_out = pairs[:cut], pairs[cut:]
    if probes is None:
        probes = _probes(cfg, train_pairs, held_out, tokenizer)
    if model is None and not cfg.model.startswith(_TINY):
        check_model_dir(cfg.model)  # before any tokenizer work: "did you mean RUN/model?"
    if tokenizer is None:
        if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
            tokenizer = load_tokenizer(str(tokenizer_dir))
        elif cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        elif cfg.model.startswith(_TINY):
            tokenizer = train_bpe_tokenizer(_texts(train_pairs, probes), vocab_size=cfg.tiny_vocab_size)
        elif model is None:
            tokenizer = load_tokenizer(cfg.model, flag="--model")
        else:
            raise ValueError("a model was passed without a tokenizer; pass tokenizer= or set cfg.tokenizer")
    tokenizer = check_tokenizer(tokenizer)
    device = resolve_device(cfg.device)
    loaded = model is None and not cfg.model.startswith(_TINY)
    if model is None:
        if cfg.model.startswith(_TINY):
            arch = cfg.model[len(_TINY):]
            if arch not in TINY_ARCHS:
                raise ValueError(f"unknown tiny model {cfg.model!r}; expected one of "
                                 f"{[_TINY + a for a in TINY_ARCHS]}")
            model = tiny_model(arch, len(tokenizer), seed=cfg.seed, dtype=cfg.dtype, hidden=cfg.tiny_hidden,
                               layers=cfg.tiny_layers, heads=cfg.tiny_heads,
                               max_positions=cfg.max_prompt_tokens + max(cfg.max_response_tokens,
                                                                         cfg.greedy_max_new_tokens),
                               pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        else:
            model = load_model(cfg.model, dtype=cfg.dtype, device=str(device))
    elif next(model.parameters()).dtype != resolve_dtype(cfg.dtype):
        raise ValueError(f"the passed model is {next(model.parameters()).dtype} but cfg.dtype is {cfg.dtype!r}")
    check_model_fits(model, tokenizer, cfg, loaded=loaded)
    return RunInputs(model.to(device), tokenizer, train_pairs, held_out, probes, truncation_policy(cfg))
