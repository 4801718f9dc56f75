"""The one check of a model or tokenizer folder at load, and of a model and tokenizer used together.

Hugging Face loaders are lenient where a study must not be: a weight missing from ``model.safetensors`` is randomly
initialised with a log line, ``"n_layer": -1`` builds a model without layers, a folder without tokenizer files
yields an empty tokenizer (every probe statistic null), a cut safetensors file raises a Rust error without the file.
Each of these is refused here with one line naming the folder, the file or the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["WEIGHT_FILES", "TOKENIZER_FILES", "check_model_dir", "check_loading_info", "check_tokenizer_dir",
           "check_model_fits"]

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")
#: config sizes that must be >= 1 (GPT-2 spells them n_layer, n_embd, n_head; the config maps the names).
_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")


def _hint(path: Path) -> str:
    for sub in ("model", "tokenizer"):
        if (path / sub).is_dir():
            return f"; did you mean {path / sub}?"
    return ""


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


def check_model_dir(name_or_path: str, flag: str = "--model") -> None:
    """Refuse a local model folder that cannot give the model it claims (a hub id is left to the loader).

    Raises:
        ValueError: the path is missing or a file; it has no config.json or no weight file (a run folder gets
            "did you mean RUN/model?"); a config size is <= 0; a safetensors file is empty, cut or corrupt.
    """
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_local(name_or_path):
            raise ValueError(f"{flag} {name_or_path}: no such folder")
        return
    if not path.is_dir():
        raise ValueError(f"{flag} {name_or_path} is a file; give the folder that save_pretrained wrote")
    weights = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights or not (path / "config.json").is_file():
        raise ValueError(f"{flag} {name_or_path} holds no model (config.json and one of "
                         f"{', '.join(WEIGHT_FILES[::2])}){_hint(path)}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / 'config.json'}: not valid JSON ({err})") from None
    from transformers import AutoConfig

    try:
        parsed = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path / 'config.json'}: not a model config ({str(err).splitlines()[0]})") from None
    for name in _SIZES:
        value = getattr(parsed, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            key = parsed.attribute_map.get(name, name) if parsed.attribute_map.get(name) in config else name
            raise ValueError(f"{path / 'config.json'}: {key} must be >= 1, got {value}")
    _check_safetensors(path)


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file}: not a readable safetensors file ({err}); the save was cut or the file is "
                             "corrupt") from None


def check_loading_info(info: dict[str, Any], name_or_path: str) -> None:
    """Refuse a load whose weights and config disagree (``from_pretrained(..., output_loading_info=True)``).

    Raises:
        ValueError: weights the model needs are missing (they would be randomly initialised), weights the config
            has no place for are present, or shapes differ.
    """
    for key, what in (("missing_keys", "lacks {n} weight(s) the config needs, which would be randomly initialised"),
                      ("unexpected_keys", "holds {n} weight(s) the config has no place for"),
                      ("mismatched_keys", "holds {n} weight(s) whose shape differs from the config's")):
        found = sorted(str(k if not isinstance(k, tuple) else k[0]) for k in info.get(key) or ())
        if found:
            shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
            raise ValueError(f"{name_or_path}: the checkpoint {what.format(n=len(found))} ({shown}); config.json "
                             "and the weight files do not belong together")
    errors = info.get("error_msgs") or []
    if errors:
        raise ValueError(f"{name_or_path}: loading the weights failed ({str(errors[0]).splitlines()[0]})")


def check_tokenizer_dir(name_or_path: str, flag: str = "--tokenizer") -> None:
    """Refuse a local folder without tokenizer files (transformers would build an empty tokenizer from it)."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if _looks_local(name_or_path):
            raise ValueError(f"{flag} {name_or_path}: no such folder")
        return
    if not path.is_dir():
        raise ValueError(f"{flag} {name_or_path} is a file; give the folder that save_pretrained wrote")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ValueError(f"{flag} {name_or_path} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
                         f"pass --tokenizer with the folder that has them{_hint(path)}")


def check_model_fits(model, tokenizer, cfg, *, loaded: bool) -> None:
    """Refuse a tokenizer with more tokens than the model embeds, and budgets past a loaded model's positions.

    Args:
        loaded: the model came from a folder or the hub (tiny models are built to fit the budgets).
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    config = getattr(model, "config", None)
    vocab = getattr(embeddings, "num_embeddings", None) or getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}: ids from "
                         f"{vocab} on have no embedding; use the model's own tokenizer (--tokenizer) or a model "
                         "built for this one")
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    need = cfg.max_prompt_tokens + max(cfg.max_response_tokens, cfg.greedy_max_new_tokens)
    if loaded and isinstance(positions, int) and need > positions:
        raise ValueError(f"--max-prompt-tokens {cfg.max_prompt_tokens} + max(--max-response-tokens "
                         f"{cfg.max_response_tokens}, --greedy-max-new-tokens {cfg.greedy_max_new_tokens}) = {need} "
                         f"exceeds the model's {positions} positions; lower them")
