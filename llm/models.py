"""Causal language models: load any Hugging Face causal LM, or build a tiny one from a config for tests and demos.

Tiny models have every dropout set to zero, so training is deterministic and the reference equals the policy at
step 0: the DPO log-ratio is 0 there up to float32 rounding (a few ULPs, as the precomputed reference is scored in
other batches; ``llm.objective.trl_metrics`` does not count that noise as reward accuracy), unlike the paper's fp16
reference model.
"""

from __future__ import annotations

import re

import torch
from safetensors import SafetensorError
from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, PretrainedConfig,
                          PreTrainedModel, Qwen2Config)

from llm.load_checks import check_loading_info, check_model_dir

__all__ = ["TINY_ARCHS", "tiny_config", "tiny_model", "load_model", "resolve_dtype", "resolve_device"]

TINY_ARCHS = ("gpt2", "llama", "gpt_neox", "qwen2")

_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32" / "bfloat16" / "float16" / "float64" (or a torch dtype) to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def resolve_device(name: str = "auto") -> torch.device:
    """Return ``cuda`` when available for "auto", else the named device."""
    if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
        raise ValueError(f"--device {name!r} is not a device; expected cpu, cuda, cuda:N, mps or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} requested but CUDA is not available")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device 'mps' requested but MPS is not available")
    return torch.device(name)


def tiny_config(arch: str, vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                max_positions: int = 512, pad_token_id: int = 0, eos_token_id: int = 1) -> PretrainedConfig:
    """Return a small config of ``arch`` (one of TINY_ARCHS) with all dropouts zero."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    common = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                  bos_token_id=eos_token_id, tie_word_embeddings=True)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, **common)
    llama_like = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, max_position_embeddings=max_positions, attention_dropout=0.0)
    if arch == "llama":
        return LlamaConfig(num_key_value_heads=heads, **llama_like, **common)
    if arch == "qwen2":
        return Qwen2Config(num_key_value_heads=heads, **llama_like, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_dropout=0.0, rotary_pct=0.25, use_parallel_residual=True, **llama_like, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {TINY_ARCHS}")


def tiny_model(arch: str, vocab_size: int, *, seed: int = 0, dtype: str | torch.dtype = "float32",
               attn_implementation: str = "eager", **config_kwargs) -> PreTrainedModel:
    """Build a randomly initialised tiny causal LM of ``arch``; the weights depend only on ``seed``.

    Args:
        arch: one of TINY_ARCHS ("gpt2", "llama", "gpt_neox", "qwen2").
        vocab_size: V, usually ``len(tokenizer)``.
        seed: seed of a local generator state used for initialisation (the global RNG is restored afterwards).
        attn_implementation: "eager" works with torch.func transforms; "sdpa" is faster on GPU.
        **config_kwargs: forwarded to ``tiny_config`` (hidden, layers, heads, max_positions, pad/eos ids).
    """
    config = tiny_config(arch, vocab_size, **config_kwargs)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(resolve_dtype(dtype))


def load_model(name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str = "cpu",
               attn_implementation: str | None = None) -> PreTrainedModel:
    """Load a causal LM from a local directory (or a hub id when online) with the given dtype and device.

    Args:
        name_or_path: a directory written by ``save_pretrained`` or a hub id.
        dtype: weight dtype; keep the reference model in the same dtype as the policy.
        device: "cpu", "cuda", "cuda:1" or "auto".
        attn_implementation: e.g. "eager" for torch.func work, "sdpa" for speed; None keeps the model's default.
    """
    kwargs = {"dtype": resolve_dtype(dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    check_model_dir(name_or_path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load a causal LM from {name_or_path!r}: {first}") from None
    check_loading_info(info, name_or_path)
    return model.to(resolve_device(device))
