"""Preference pairs and probe sets: readers for TRL, Anthropic-HH and message-list files, and derived probes.

Field names follow TRL (prompt / chosen / rejected). Probe types keep the keys of the paper's probe files
(../shared/data/NOTICE.md) so metrics can be read next to the paper's logs; ``PROBE_TYPES`` maps each key to the
paper's symbol (PAPER.md section 6).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from toykit.runs import iter_jsonl

__all__ = ["PreferencePair", "ProbeSet", "PROBE_TYPES", "DERIVED_PROBE_TYPES", "read_jsonl", "load_pairs",
           "pairs_from_records", "load_probe_set", "probe_set_from_records", "probe_set_from_pairs",
           "derive_probes", "shuffle_words", "normalize_leading_space", "synthetic_pairs", "ASSISTANT_TAG"]

ASSISTANT_TAG = "\n\nAssistant:"

#: probe key -> (paper symbol, meaning); order is the order of metrics and arrays.
PROBE_TYPES: dict[str, tuple[str, str]] = {
    "chosen": ("y+", "preferred response"),
    "rejected": ("y-", "dispreferred response"),
    "chosen_initial": ("y_init", "base-model sample for the prompt"),
    "chosen_gptsemantic": ("y+_gpts", "y+ reworded, same meaning"),
    "chosen_gptformat": ("y+_gptf", "same format as y+, other meaning"),
    "reject_gptsemantic": ("y-_gpts", "y- reworded, same meaning"),
    "reject_gptformat": ("y-_gptf", "same format as y-, other meaning"),
    "irr_train": ("y+_{j!=u}", "chosen response of another training prompt"),
    "irr_test": ("y_test", "chosen response of a held-out prompt"),
    "irr_hum": ("y_hum", "fluent unrelated sentence"),
    "random_permute": ("y_urnd", "words of y+ shuffled"),
    "random_nonhum": ("y_rnd", "words of y_test shuffled"),
}
#: keys of the paper's probe files that are read but not tracked as probe types (as in the paper), and the prompt.
_UNTRACKED_KEYS = {"prompt", "chosen_selfr"}
#: probe types that can be built from pairs alone (irr_test / random_nonhum need held-out pairs).
DERIVED_PROBE_TYPES = ("irr_train", "irr_test", "random_permute", "random_nonhum")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One preference pair: ``prompt`` ends where the response starts; responses keep their leading space."""

    prompt: str
    chosen: str
    rejected: str


@dataclasses.dataclass(frozen=True)
class ProbeSet:
    """Probe responses of N prompts, by probe type.

    Attributes:
        prompts: N prompts x_u.
        responses: probe type -> N responses (None where the file had an empty response: excluded from means).
        source: where the set came from (file or "pairs"), for the run record.
        derived: probe types built here rather than read from the file, with the seed used.
    """

    prompts: tuple[str, ...]
    responses: dict[str, tuple[str | None, ...]]
    source: str = ""
    derived: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, values in self.responses.items():
            if len(values) != len(self.prompts):
                raise ValueError(f"probe type {name!r} has {len(values)} responses, expected {len(self.prompts)}")
        if "chosen" not in self.responses:
            raise ValueError("a probe set needs the 'chosen' (y+) probe type: the teacher-forced argmax runs on it")

    @property
    def probe_types(self) -> tuple[str, ...]:
        return tuple(self.responses)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, n: int) -> "ProbeSet":
        """Return the first ``n`` probe records (the paper uses the first 500 training examples)."""
        return dataclasses.replace(self, prompts=self.prompts[:n],
                                   responses={k: v[:n] for k, v in self.responses.items()})

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the set: size, types, empty counts, derived types."""
        return {"source": self.source, "num_prompts": len(self), "probe_types": list(self.probe_types),
                "empty": {k: sum(r is None for r in v) for k, v in self.responses.items()},
                "derived": list(self.derived), "seed": self.seed}


def normalize_leading_space(text: str) -> str:
    """Prefix one space to a response that does not start with whitespace (dataset responses start with one)."""
    return text if not text or text[0].isspace() else " " + text


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    """Shuffle the whitespace-separated words of ``text``, keeping its leading whitespace."""
    lead = text[: len(text) - len(text.lstrip())]
    words = text.split()
    order = rng.permutation(len(words))
    return lead + " ".join(words[i] for i in order)


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL file into (line number, object) pairs; a malformed line raises ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} " + ("is a directory, not a JSONL file" if path.is_dir() else
                                                 "is not a regular file" if path.exists() else "does not exist"))
    records = list(iter_jsonl(path))
    if not records:
        raise ValueError(f"data file {path} holds no records")
    return records


def _render_messages(messages: Sequence[dict[str, Any]], where: str) -> str:
    """Render chat messages in the Anthropic-HH layout, ending with the assistant tag."""
    parts = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"{where}: message {i} must be an object with 'role' and 'content', got {msg!r}")
        role = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}.get(msg["role"])
        if role is None:
            raise ValueError(f"{where}: message {i} has unknown role {msg['role']!r}")
        parts.append(f"\n\n{role}: {msg['content']}")
    return "".join(parts) + ASSISTANT_TAG


def _split_hh(dialogue: str, where: str) -> tuple[str, str]:
    cut = dialogue.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise ValueError(f"{where}: HH dialogue has no {ASSISTANT_TAG!r} to split prompt from response")
    return dialogue[: cut + len(ASSISTANT_TAG)], dialogue[cut + len(ASSISTANT_TAG):]


def _pair_from_record(rec: dict[str, Any], fmt: str, where: str) -> PreferencePair:
    missing = [k for k in ("chosen", "rejected") if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; found keys {sorted(rec)}")
    chosen, rejected = rec["chosen"], rec["rejected"]
    if fmt == "auto":
        fmt = "messages" if isinstance(chosen, list) else ("trl" if "prompt" in rec else "hh")
    if fmt == "trl":
        if "prompt" not in rec:
            raise ValueError(f"{where}: missing key 'prompt' (TRL format needs prompt/chosen/rejected)")
        prompt = rec["prompt"]
    elif fmt == "hh":
        prompt, chosen = _split_hh(chosen, where + " (chosen)")
        prompt_r, rejected = _split_hh(rejected, where + " (rejected)")
        if prompt_r != prompt:
            raise ValueError(f"{where}: chosen and rejected dialogues differ before the last {ASSISTANT_TAG!r}")
    elif fmt == "messages":
        if not isinstance(chosen, list) or not isinstance(rejected, list) or not chosen or not rejected:
            raise ValueError(f"{where}: message-list format needs non-empty lists in 'chosen' and 'rejected'")
        if chosen[:-1] != rejected[:-1]:
            raise ValueError(f"{where}: chosen and rejected conversations differ before the final message")
        for key, final in (("chosen", chosen[-1]), ("rejected", rejected[-1])):
            if not (isinstance(final, dict) and final.get("role") == "assistant"
                    and isinstance(final.get("content"), str)):
                got = repr(final)[:120]
                raise ValueError(f"{where}: the final message of {key!r} must be an assistant message "
                                 f"{{'role': 'assistant', 'content': '...'}} (it is the trained response), got {got}")
        history = chosen[:-1]
        if isinstance(rec.get("prompt"), list):
            history = list(rec["prompt"]) + history
        elif not history and isinstance(rec.get("prompt"), str):
            history = [{"role": "user", "content": rec["prompt"]}]
        prompt = _render_messages(history, where)
        chosen = " " + str(chosen[-1].get("content", ""))
        rejected = " " + str(rejected[-1].get("content", ""))
    else:
        raise ValueError(f"unknown pair format {fmt!r}; expected auto, trl, hh or messages")
    for key, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{where}: empty {key!r} response" if key != "prompt" else f"{where}: empty 'prompt'")
    return PreferencePair(prompt, chosen, rejected)


def pairs_from_records(records: Sequence[tuple[int, dict[str, Any]]], source: str = "records",
                       fmt: Literal["auto", "trl", "hh", "messages"] = "auto",
                       leading_space: bool = False) -> list[PreferencePair]:
    """Turn (line number, record) pairs into PreferencePairs; errors name ``source`` and the line."""
    pairs = [_pair_from_record(rec, fmt, f"{source}:{lineno}") for lineno, rec in records]
    if leading_space:
        pairs = [PreferencePair(p.prompt, normalize_leading_space(p.chosen), normalize_leading_space(p.rejected))
                 for p in pairs]
    return pairs


def load_pairs(path: str | Path, fmt: Literal["auto", "trl", "hh", "messages"] = "auto",
               leading_space: bool = False) -> list[PreferencePair]:
    """Read preference pairs from JSONL in TRL (prompt/chosen/rejected), HH raw-dialogue or message-list format.

    Args:
        path: JSONL file, one pair per line.
        fmt: "auto" picks per record: lists -> messages, a "prompt" key -> TRL, else HH raw dialogues (split at the
            last "\\n\\nAssistant:").
        leading_space: prefix a space to responses that lack one.
    """
    return pairs_from_records(read_jsonl(path), str(path), fmt, leading_space)


def derive_probes(chosen: Sequence[str], held_out: Sequence[str] | None, seed: int,
                  types: Sequence[str] = DERIVED_PROBE_TYPES) -> dict[str, tuple[str, ...]]:
    """Build the derived probe types from the chosen responses alone, seeded.

    Returns irr_train (y+ of another prompt, never the prompt's own), random_permute (y+ words shuffled) and, when
    ``held_out`` chosen responses are given, irr_test (a held-out answer) and random_nonhum (irr_test shuffled);
    only those in ``types`` (the random draws are the same whichever are kept).
    """
    n = len(chosen)
    if n < 2 and "irr_train" in types:
        raise ValueError(f"deriving irr_train needs at least 2 prompts, got {n}")
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(n)
    irr_train = [""] * n
    for k in range(n):  # a cyclic shift along a random order: a derangement, no prompt keeps its own y+
        irr_train[cycle[k]] = chosen[cycle[(k + 1) % n]]
    out = {"irr_train": tuple(irr_train), "random_permute": tuple(shuffle_words(t, rng) for t in chosen)}
    if held_out:
        picks = rng.integers(0, len(held_out), size=n)
        irr_test = tuple(held_out[i] for i in picks)
        out["irr_test"] = irr_test
        out["random_nonhum"] = tuple(shuffle_words(t, rng) for t in irr_test)
    return {k: v for k, v in out.items() if k in types}


def probe_set_from_records(records: Sequence[tuple[int, dict[str, Any]]], source: str = "records", *,
                           held_out: Sequence[str] | None = None, seed: int = 0, derive_missing: bool = True,
                           leading_space: bool = False) -> ProbeSet:
    """Build a ProbeSet from records in the paper's probe format (or TRL pairs, whose missing types are derived).

    The probe types are those any record has; a record lacking one of them is refused (naming its line), and keys
    that are no probe type (a misspelt ``reject``) are reported with a warning rather than dropped silently.
    """
    present = {k for _, rec in records for k in rec}
    first_keys = [k for k in PROBE_TYPES if k in present]
    unknown = sorted(present - set(PROBE_TYPES) - _UNTRACKED_KEYS)
    if unknown:
        warnings.warn(f"{source}: key(s) {unknown} are no probe type and are ignored; probe types: "
                      f"{list(PROBE_TYPES)}", stacklevel=2)
    for lineno, rec in records:
        missing = [k for k in dict.fromkeys(["prompt", "chosen", *first_keys]) if k not in rec]
        if missing:
            raise ValueError(f"{source}:{lineno}: missing key(s) {missing}; found keys {sorted(rec)} (every "
                             f"record needs the probe types any record has)")
        bad = [k for k in ["prompt", *first_keys] if not isinstance(rec[k], str)]
        if bad:
            raise ValueError(f"{source}:{lineno}: key(s) {bad} must hold strings")
        if not rec["prompt"].strip() or not rec["chosen"].strip():
            raise ValueError(f"{source}:{lineno}: empty 'prompt' or 'chosen' (y+) response")
    prompts = tuple(rec["prompt"] for _, rec in records)
    fix = normalize_leading_space if leading_space else (lambda t: t)
    responses = {k: tuple(fix(rec[k]) if rec[k].strip() else None for _, rec in records) for k in first_keys}
    derived: tuple[str, ...] = ()
    missing = [k for k in DERIVED_PROBE_TYPES if k not in responses]
    if derive_missing and missing:
        extra = derive_probes([r for r in responses["chosen"]], held_out, seed, types=missing)
        extra = {k: tuple(fix(t) for t in v) for k, v in extra.items()}
        responses.update(extra)
        derived = tuple(extra)
    ordered = {k: responses[k] for k in PROBE_TYPES if k in responses}
    return ProbeSet(prompts, ordered, source=source, derived=derived, seed=seed if derived else None)


def load_probe_set(path: str | Path, *, max_records: int | None = None, held_out: Sequence[str] | None = None,
                   seed: int = 0, derive_missing: bool = True, leading_space: bool = False) -> ProbeSet:
    """Read a probe file in the paper's format (keys in ../shared/data/NOTICE.md) into a ProbeSet.

    Args:
        path: JSONL with at least prompt and chosen; every known probe key of the first record is loaded, and every
            record must have the same keys. "chosen_selfr" is not tracked (as in the paper).
        max_records: keep the first records only (the paper's probes are the first 500 training examples).
        held_out: chosen responses of held-out prompts, used to derive irr_test / random_nonhum when missing.
        seed: seed of the derived probes.
        derive_missing: build the derived probe types the file lacks.
        leading_space: prefix one space to responses without one (the GPT rephrases lack it).
    """
    records = read_jsonl(path)
    if max_records is not None:
        records = records[:max_records]
    return probe_set_from_records(records, str(path), held_out=held_out, seed=seed,
                                  derive_missing=derive_missing, leading_space=leading_space)


def probe_set_from_pairs(pairs: Sequence[PreferencePair], held_out: Sequence[PreferencePair] | None = None,
                         seed: int = 0) -> ProbeSet:
    """Build probes y+, y- and the derived types from preference pairs (and held-out pairs for y_test, y_rnd)."""
    records = [(i + 1, {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) for i, p in enumerate(pairs)]
    return probe_set_from_records(records, "pairs", held_out=[p.chosen for p in held_out or []], seed=seed)


def synthetic_pairs(num: int, seed: int = 0) -> list[PreferencePair]:
    """Return ``num`` small arithmetic preference pairs in the HH layout (a fast, offline default dataset).

    The chosen answer states the right sum, the rejected one a wrong sum with a hedge, so a model can learn the
    preference; prompts are distinct while ``num`` <= 400.
    """
    rng = np.random.default_rng(seed)
    # Distinct (a, b) while num <= 400 (then cycling), so y+ of "another prompt" is never the same question.
    order = rng.permutation(400)
    pairs = []
    for k in range(num):
        a, b = divmod(int(order[k % 400]), 20)
        wrong = a + b + int(rng.integers(1, 5))
        pairs.append(PreferencePair(f"\n\nHuman: What is {a} plus {b}?{ASSISTANT_TAG}",
                                    f" {a} plus {b} is {a + b}.", f" I think it is {wrong}, maybe."))
    return pairs
