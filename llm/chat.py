"""TRL's conversational formats rendered with the tokenizer's chat template, as TRL 1.16's trainers tokenize them.

Records (TRL's names):

- preference, explicit prompt: ``{"prompt": [messages], "chosen": [assistant message(s)], "rejected": [...]}``;
- preference, implicit prompt: ``{"chosen": [full conversation], "rejected": [full conversation]}``, the prompt being
  their longest common prefix of messages (TRL's ``extract_prompt``);
- prompt-completion: ``{"prompt": [messages], "completion": [assistant message(s)]}``;
- language modelling ``{"messages": [...]}`` (SFT): the prompt is everything before the final assistant message,
  the response is that message.

The prompt text is ``apply_chat_template(prompt, add_generation_prompt=True)`` and a response is the rest of
``apply_chat_template(prompt + response)``; TRL's DPOTrainer / SFTTrainer take the response tokens as the tokenised
prompt+response after its common prefix with the tokenised prompt. The engine tokenises prompt and response apart,
so each rendered record is checked to tokenise identically both ways (the template's end-of-turn tokens are part of
the response, no eos is appended): the response tokens are exactly those the TRL trainer trains, or the record is
refused with a message naming it.
"""

from __future__ import annotations

from typing import Any, Sequence

from llm.data import PreferencePair

__all__ = ["is_conversational", "split_conversation", "render_record", "pairs_from_chat_records", "check_template",
           "CHATML_TEMPLATE", "add_chatml_template"]

#: the ChatML template (Qwen's layout) for tokenizers built locally; end-of-turn is <|im_end|>.
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")

_MESSAGE_KEYS = ("prompt", "chosen", "rejected", "completion", "messages")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def is_conversational(rec: dict[str, Any]) -> bool:
    """True when any of TRL's fields holds a list of ``{"role", "content"}`` messages."""
    return any(_is_messages(rec.get(k)) for k in _MESSAGE_KEYS)


def check_template(tokenizer) -> None:
    """Refuse a tokenizer without a chat template, naming the fix."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--data-format chat needs a tokenizer with a chat template (tokenizer.chat_template is "
                         "empty); pass --tokenizer with one, e.g. the instruct model's directory")


def split_conversation(rec: dict[str, Any], where: str) -> tuple[list, list, list | None]:
    """Return (prompt messages, chosen messages, rejected messages or None) of a conversational record."""
    for key in _MESSAGE_KEYS:
        if key in rec and rec[key] is not None and not _is_messages(rec[key]):
            raise ValueError(f"{where}: {key!r} must be a non-empty list of {{'role', 'content'}} messages")
    if "messages" in rec:
        msgs = list(rec["messages"])
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if not last:
            raise ValueError(f"{where}: 'messages' needs an assistant message after at least one other message")
        return msgs[:last], [msgs[last]], None
    if "prompt" in rec:
        chosen = rec.get("chosen", rec.get("completion"))
        if chosen is None:
            raise ValueError(f"{where}: a conversational 'prompt' needs 'chosen' (and 'rejected') or 'completion'")
        return list(rec["prompt"]), list(chosen), (list(rec["rejected"]) if rec.get("rejected") else None)
    if "chosen" in rec and "rejected" in rec:  # implicit prompt: the longest common prefix of messages
        chosen, rejected = list(rec["chosen"]), list(rec["rejected"])
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        if k == 0 or k == len(chosen) or k == len(rejected):
            raise ValueError(f"{where}: implicit-prompt conversations must share a prefix and differ after it")
        return chosen[:k], chosen[k:], rejected[k:]
    raise ValueError(f"{where}: no conversational fields; expected 'messages', 'prompt' + 'chosen'/'completion', "
                     f"or 'chosen' + 'rejected'; found keys {sorted(rec)}")


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, prompt: list, response: list, prompt_text: str, where: str) -> str:
    full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    if not full.startswith(prompt_text):
        raise ValueError(f"{where}: the chat template renders the prompt differently alone and with the response; "
                         "the response cannot be cut from the prompt")
    text = full[len(prompt_text):]
    if _ids(tokenizer, full) != _ids(tokenizer, prompt_text) + _ids(tokenizer, text):
        raise ValueError(f"{where}: tokens merge across the prompt/response boundary of the rendered template, so "
                         "the response tokens would differ from TRL's; end the template's generation prompt on a "
                         "token boundary")
    if not text:
        raise ValueError(f"{where}: the rendered response is empty")
    return text


def render_record(tokenizer, rec: dict[str, Any], where: str) -> PreferencePair:
    """Render one conversational record into a PreferencePair of template text (rejected "" when absent)."""
    prompt, chosen, rejected = split_conversation(rec, where)
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    chosen_text = _render(tokenizer, prompt, chosen, prompt_text, where + " (chosen)")
    rejected_text = _render(tokenizer, prompt, rejected, prompt_text, where + " (rejected)") if rejected else ""
    return PreferencePair(prompt_text, chosen_text, rejected_text)


def pairs_from_chat_records(records: Sequence[tuple[int, dict[str, Any]]], tokenizer,
                            source: str = "records") -> list[PreferencePair]:
    """Render every conversational record with ``tokenizer``'s chat template; errors name ``source:row``."""
    check_template(tokenizer)
    return [render_record(tokenizer, rec, f"{source}:{row}") for row, rec in records]


def add_chatml_template(tokenizer):
    """Give a locally built tokenizer ChatML's special tokens and template (in place); return it."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
