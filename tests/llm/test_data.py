"""llm.data / llm.encoding / llm.tokenization: readers, derived probes, truncation policy and bad input."""

import json

import numpy as np
import pytest

from llm.data import (PROBE_TYPES, PreferencePair, derive_probes, load_pairs, load_probe_set, normalize_leading_space,
                      probe_set_from_pairs, shuffle_words)
from llm.encoding import TruncationPolicy, collate, encode_sequence, truncation_report
from llm.tokenization import build_word_tokenizer, check_tokenizer, train_bpe_tokenizer


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_three_pair_formats_give_the_same_pair(tmp_path):
    trl = _jsonl(tmp_path / "trl.jsonl", [{"prompt": "\n\nHuman: Hi?\n\nAssistant:", "chosen": " Hello.",
                                           "rejected": " Go away."}])
    hh = _jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.",
                                         "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}])
    msgs = _jsonl(tmp_path / "uf.jsonl", [{"prompt": "Hi?",
                                           "chosen": [{"role": "user", "content": "Hi?"},
                                                      {"role": "assistant", "content": "Hello."}],
                                           "rejected": [{"role": "user", "content": "Hi?"},
                                                        {"role": "assistant", "content": "Go away."}]}])
    expected = PreferencePair("\n\nHuman: Hi?\n\nAssistant:", " Hello.", " Go away.")
    for path in (trl, hh, msgs):
        assert load_pairs(path) == [expected], path.name


def test_hh_split_uses_the_last_assistant_tag(tmp_path):
    dialogue = "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:"
    path = _jsonl(tmp_path / "hh.jsonl", [{"chosen": dialogue + " yes", "rejected": dialogue + " no"}])
    [pair] = load_pairs(path, fmt="hh")
    assert pair.prompt == dialogue and pair.chosen == " yes" and pair.rejected == " no"


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "p", "chosen": " a", "rejected": " b"}', '{"prompt": "p", "chosen": '], r"bad\.jsonl:2: invalid JSON"),
    (['{"prompt": "p", "chosen": " a"}'], r"bad\.jsonl:1: missing key\(s\) \['rejected'\]"),
    (['{"prompt": "p", "chosen": " a", "rejected": "   "}'], r"bad\.jsonl:1: empty 'rejected'"),
    (['{"prompt": "", "chosen": " a", "rejected": " b"}'], r"bad\.jsonl:1: empty 'prompt'"),
    (['{"chosen": "no tag a", "rejected": "no tag b"}'], r"bad\.jsonl:1 \(chosen\): HH dialogue has no"),
    (['[1, 2]'], r"bad\.jsonl:1: expected a JSON object"),
])
def test_bad_pair_files_name_file_and_line(tmp_path, lines, message):
    path = _jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        load_pairs(path)


def test_derived_probes_are_seeded_and_well_formed(pairs):
    chosen = [p.chosen for p in pairs]
    held = ["held out answer one", " held out answer two here"]
    a, b, c = derive_probes(chosen, held, seed=1), derive_probes(chosen, held, seed=1), derive_probes(chosen, held, 2)
    assert a == b and a != c
    assert all(other != own for other, own in zip(a["irr_train"], chosen))  # never the prompt's own y+
    assert sorted(a["irr_train"]) == sorted(chosen)  # a permutation of the other answers
    assert all(sorted(s.split()) == sorted(t.split()) and s[0] == t[0] == " "
               for s, t in zip(a["random_permute"], chosen))  # same words, leading space kept
    assert set(a["irr_test"]) <= set(held)
    assert all(sorted(s.split()) == sorted(t.split()) for s, t in zip(a["random_nonhum"], a["irr_test"]))


def test_probe_set_from_pairs_has_all_derivable_types(pairs):
    probes = probe_set_from_pairs(pairs[:8], held_out=pairs[8:10], seed=0)
    assert probes.probe_types == ("chosen", "rejected", "irr_train", "irr_test", "random_permute", "random_nonhum")
    assert set(probes.derived) == {"irr_train", "irr_test", "random_permute", "random_nonhum"}


def test_paper_probe_file_loads_with_every_probe_type(shared_data):
    probes = load_probe_set(shared_data / "paper_probes" / "hh_formal_prob_train.jsonl")
    assert len(probes) == 500 and probes.probe_types == tuple(PROBE_TYPES)
    assert probes.derived == ()  # the file has every type: nothing is derived
    info = probes.describe()
    assert info["empty"]["chosen_initial"] == 21 and info["empty"]["chosen"] == 0  # empty strings become None
    first = json.loads((shared_data / "paper_probes" / "hh_formal_prob_train.jsonl").open().readline())
    assert probes.responses["chosen_gptsemantic"][0] == first["chosen_gptsemantic"]
    fixed = load_probe_set(shared_data / "paper_probes" / "hh_formal_prob_train.jsonl", max_records=3,
                           leading_space=True)
    assert fixed.responses["chosen_gptsemantic"][0] == " " + first["chosen_gptsemantic"]


def test_leading_space_and_word_shuffle():
    assert normalize_leading_space("Yes.") == " Yes." and normalize_leading_space(" Yes.") == " Yes."
    assert normalize_leading_space("") == ""
    shuffled = shuffle_words("  a b c d e f", np.random.default_rng(0))
    assert shuffled.startswith("  ") and sorted(shuffled.split()) == list("abcdef")


def test_truncation_policy_refuses_or_left_truncates(tokenizer):
    prompt = "\n\nHuman: " + "What is one plus one? " * 20 + "\n\nAssistant:"
    strict = TruncationPolicy(max_prompt_tokens=8, max_response_tokens=3)
    with pytest.raises(ValueError, match=r"probe 7: prompt has \d+ tokens, over the budget max_prompt_tokens=8"):
        encode_sequence(tokenizer, prompt, " two is the answer", strict, where="probe 7")
    loose = TruncationPolicy(max_prompt_tokens=8, max_response_tokens=3, prompt_overflow="left_truncate")
    seq = encode_sequence(tokenizer, prompt, " two is the answer", loose)
    full = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert seq.prompt_ids == tuple(full[-8:]) and len(seq.response_ids) == 3
    assert seq.prompt_truncated and seq.response_truncated
    report = truncation_report([seq], loose)
    assert report["prompts_truncated"] == 1 and report["prompt_overflow"] == "left_truncate"


def test_collate_marks_exactly_the_response(tokenizer, policy):
    seqs = [encode_sequence(tokenizer, "\n\nHuman: hi\n\nAssistant:", r, policy) for r in (" 1 plus 2", " 3")]
    batch = collate(seqs, tokenizer.pad_token_id)
    for n, s in enumerate(seqs):
        row = batch.input_ids[n][batch.response_mask[n].bool()].tolist()
        assert row == list(s.response_ids) and row[-1] == tokenizer.eos_token_id
        assert int(batch.attention_mask[n].sum()) == s.length


def test_tokenizers_keep_or_drop_the_leading_space(pairs):
    bpe = train_bpe_tokenizer([p.chosen for p in pairs], vocab_size=300)
    assert bpe(" 7", add_special_tokens=False)["input_ids"] != bpe("7", add_special_tokens=False)["input_ids"]
    assert bpe.decode(bpe(" 3 plus 4", add_special_tokens=False)["input_ids"]) == " 3 plus 4"
    word = build_word_tokenizer(["a b c"])
    assert word("a zz c")["input_ids"] == [3, 2, 5]  # unknown word -> unk id 2


def test_tokenizer_without_pad_and_eos_is_refused(pairs):
    tok = train_bpe_tokenizer([p.chosen for p in pairs], vocab_size=300)
    tok.pad_token, tok.eos_token = None, None
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        check_tokenizer(tok)
    tok.eos_token = "<|endoftext|>"
    assert check_tokenizer(tok).pad_token_id == tok.eos_token_id  # eos stands in for pad
