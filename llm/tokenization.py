"""Tokenizers built locally with the `tokenizers` library, and the pad/eos checks every tokenizer must pass.

Tests and from-scratch runs cannot download a tokenizer, so one is trained here on the run's own texts. A byte-level
BPE (the GPT-2 scheme) keeps every character, including the leading space of a response, which matters for the
first-token artefact described in PAPER.md section 7; a word-level tokenizer is offered for the smallest fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from llm.load_checks import check_tokenizer_dir

__all__ = ["PAD_TOKEN", "EOS_TOKEN", "UNK_TOKEN", "train_bpe_tokenizer", "build_word_tokenizer", "load_tokenizer",
           "check_tokenizer"]

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=UNK_TOKEN if tok.token_to_id(UNK_TOKEN) is not None else None)
    fast.padding_side = "right"
    return fast


def _texts(texts: Iterable[str]) -> list[str]:
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise ValueError("cannot train a tokenizer: no non-empty texts were given")
    return texts


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 scheme) on ``texts``; pad and eos are special tokens 0 and 1.

    Args:
        texts: training texts (prompts and responses); any character is representable.
        vocab_size: target vocabulary size including the 256 byte symbols and the special tokens.
        min_frequency: minimum count of a pair to be merged.
    """
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[PAD_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(texts), trainer=trainer)
    return _wrap(tok)


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build a whitespace word-level tokenizer whose vocabulary is every word of ``texts`` (plus pad, eos, unk).

    Spaces are not tokens, so " yes" and "yes" encode alike: use it for fixtures, not for leading-space studies.
    """
    words = sorted({w for t in _texts(texts) for w in t.split()})
    vocab = {PAD_TOKEN: 0, EOS_TOKEN: 1, UNK_TOKEN: 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return _wrap(tok)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make sure ``tokenizer`` can pad and end sequences; use eos as pad when only eos exists.

    Raises:
        ValueError: if the tokenizer has neither a pad token nor an eos token.
    """
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a pad token nor an eos token: batched "
                         "log-probs need padding and responses need an end marker; set tokenizer.pad_token or "
                         "tokenizer.eos_token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(name_or_path: str, flag: str = "--tokenizer") -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (or a hub id) and check its files and pad/eos tokens.

    Args:
        flag: the option that named the folder, for messages (``--model`` when the model's own tokenizer is used).
    """
    check_tokenizer_dir(name_or_path, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises plain Exception for a corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        where = ("its tokenizer files are unreadable" if Path(name_or_path).is_dir() else
                 "not a local tokenizer directory, and no hub id reachable offline")
        raise ValueError(f"{flag} {name_or_path}: cannot load a tokenizer: {where} ({type(err).__name__}: "
                         f"{first})") from None
    return check_tokenizer(tokenizer)
