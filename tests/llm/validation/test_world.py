"""The HH-like world is deterministic, y- is an independent response, every probe type means what it says, the
BPE tokenizer round-trips, and the judge reads the world exactly."""

import json
from collections import Counter

import numpy as np
import pytest

from llm.data import PreferencePair
from llm.validation.conditions import bigram_overlap
from llm.validation.grammar import ATTRIBUTES, FILLER_KINDS
from llm.validation.judge import Judge
from llm.validation.world import (ANSWER_WORDS, PROBE_KEYS, REJECTED_KINDS, WorldConfig, build_world, save_world,
                                  shuffle_words, world_texts, world_tokenizer)

CFG = WorldConfig(seed=3, n_entities=12, n_probes=20, docs_per_entity=3, n_unrelated=30, test_fraction=0.4)
#: y- is not a token edit of y+: at most this share of y-'s BPE bigrams occur in y+ on average (the old
#: one-sentence-edit world: 0.39; Anthropic-HH's independent responses are far below).
MAX_MEAN_OVERLAP = 0.2


@pytest.fixture(scope="module")
def world():
    return build_world(CFG)


@pytest.fixture(scope="module")
def judge(world):
    return Judge(world)


@pytest.fixture(scope="module")
def tokenizer(world):
    return world_tokenizer(world)


def _parsed(judge, text):
    claims, _ = judge.parse(text)
    assert all(c is not None for c in claims), f"unparsed sentence in {text!r}"
    return claims


def _facts(judge, text):
    """The meaning of a response: its fact-bearing claims (fillers carry none)."""
    return [(c.kind, c.entity, c.attribute, c.value) for c in _parsed(judge, text) if c.kind not in FILLER_KINDS]


def test_same_seed_same_world_other_seed_other_world(world):
    again = build_world(CFG)
    assert again.probes == world.probes and again.corpus == world.corpus and again.facts == world.facts
    other = build_world(WorldConfig(**{**CFG.__dict__, "seed": 4}))
    assert other.facts != world.facts
    assert [p["chosen"] for p in other.probes] != [p["chosen"] for p in world.probes]
    assert world_tokenizer(again).get_vocab() == world_tokenizer(world).get_vocab(), "the BPE is deterministic"


def test_sizes_and_keys(world):
    n_q = CFG.n_entities * len(ATTRIBUTES)
    assert len(world.train_pairs) + len(world.test_pairs) == n_q
    assert len(world.test_pairs) == round(CFG.test_fraction * n_q)
    train_q = {(p["entity"], p["attribute"]) for p in world.train_pairs}
    test_q = {(p["entity"], p["attribute"]) for p in world.test_pairs}
    assert not train_q & test_q, "a held-out question is also a training question"
    assert len(world.probes) == CFG.n_probes
    for probe, pair in zip(world.probes, world.train_pairs):
        assert set(probe) == set(PROBE_KEYS)
        assert (probe["prompt"], probe["chosen"], probe["rejected"]) == (pair["prompt"], pair["chosen"],
                                                                         pair["rejected"])
        assert all(probe[k].startswith(" ") for k in PROBE_KEYS if k != "prompt"), "responses lead with a space"


def test_chosen_states_true_facts_rejected_is_worse(world, judge):
    kinds = Counter()
    for pair in (*world.train_pairs, *world.test_pairs):
        entity, attribute = judge.question(pair["prompt"])
        assert (entity, attribute) == (pair["entity"], pair["attribute"])
        chosen = _facts(judge, pair["chosen"])
        assert chosen[0] == ("fact", entity, attribute, world.facts[entity, attribute])
        assert all(world.facts[e, a] == v for _, e, a, v in chosen) and len(chosen) >= 2, "true extra facts"
        rejected = _facts(judge, pair["rejected"])
        asked = [f for f in rejected if f[1:3] == (entity, attribute)]
        kind = pair["rejected_kind"]
        if kind == "wrong":
            assert asked[0][0] == "fact" and asked[0][3] != world.facts[entity, attribute]
        elif kind in ("hedged", "evasive"):
            assert asked[0][0] == kind
        else:
            assert not asked, "an unhelpful y- does not answer"
        assert judge.compare(pair["prompt"], pair["chosen"], pair["rejected"]) == 1
        assert judge.compare(pair["prompt"], pair["rejected"], pair["chosen"]) == -1
        kinds[kind] += 1
    assert set(kinds) == set(REJECTED_KINDS)


def test_rejected_is_an_independent_response_not_a_token_edit(world, tokenizer):
    pairs = [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in world.train_pairs]
    assert bigram_overlap(tokenizer, pairs) <= MAX_MEAN_OVERLAP
    per_pair = [bigram_overlap(tokenizer, [p]) for p in pairs]
    assert max(per_pair) < 0.7, "no y- repeats most of its y+"
    same_start = np.mean([p.chosen.split(" . ")[0] == p.rejected.split(" . ")[0] for p in pairs])
    assert same_start < 0.15, "y+ and y- rarely open with the same sentence (only a shared opener)"
    # The measure itself: a one-value edit of y+ scores near 1, y+ against itself exactly 1.
    p = pairs[0]
    edit = PreferencePair(p.prompt, p.chosen, p.chosen.replace(world.facts[world.train_pairs[0]["entity"],
                                                                           world.train_pairs[0]["attribute"]], "xyz"))
    assert bigram_overlap(tokenizer, [PreferencePair(p.prompt, p.chosen, p.chosen)]) == 1.0
    assert bigram_overlap(tokenizer, [edit]) > 0.7


def test_answers_have_hh_like_length_and_variety(world, judge, tokenizer):
    for pair in world.train_pairs:
        for key in ("chosen", "rejected"):
            assert ANSWER_WORDS[0] <= len(pair[key].split()) <= ANSWER_WORDS[1]
            assert 25 <= len(tokenizer(pair[key])["input_ids"]) <= 60, pair[key]
    first = Counter(pair["chosen"].split(" . ")[0] for pair in world.train_pairs)
    assert max(first.values()) < 0.35 * len(world.train_pairs) and len(first) >= 8, "answers open in many ways"
    wordings = Counter(c.wording for pair in world.train_pairs for c in _parsed(judge, pair["chosen"])
                       if c.kind == "fact")
    assert set(wordings) == {0, 1, 2}, "every fact wording occurs"
    n_facts = Counter(len(_facts(judge, pair["chosen"])) for pair in world.train_pairs)
    assert len(n_facts) >= 2, "a variable number of extra facts"


def test_tokenizer_is_a_bpe_of_the_world_that_round_trips(world, tokenizer):
    assert len(tokenizer) > 500 and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    pieces = [tokenizer.convert_ids_to_tokens(tokenizer(w)["input_ids"]) for w in (" sapa", " dumplings")]
    assert all(len(p) >= 1 for p in pieces)
    for text in world_texts(world)[:400]:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    prompt, response = world.probes[0]["prompt"], world.probes[0]["chosen"]
    assert tokenizer.decode(tokenizer(prompt + response)["input_ids"]) == prompt + response


def test_semantic_rephrase_same_facts_other_words(world, judge):
    for p in world.probes:
        for resp, reph in (("chosen", "chosen_gptsemantic"), ("rejected", "reject_gptsemantic")):
            assert _facts(judge, p[resp]) == _facts(judge, p[reph])
            original, rephrased = judge.parse(p[resp])[1], judge.parse(p[reph])[1]
            assert all(a != b for a, b in zip(original, rephrased)), "every sentence in other words"
            assert judge.score(p["prompt"], p[resp]) == judge.score(p["prompt"], p[reph])


def test_format_rephrase_same_frames_other_facts(world, judge):
    for p in world.probes:
        for resp, reph in (("chosen", "chosen_gptformat"), ("rejected", "reject_gptformat")):
            original, rephrased = _parsed(judge, p[resp]), _parsed(judge, p[reph])
            assert len(original) == len(rephrased)
            for a, b in zip(original, rephrased):
                assert (a.kind, a.attribute, a.wording, a.frame) == (b.kind, b.attribute, b.wording, b.frame)
                if a.entity is not None:
                    assert a.entity != b.entity, "another entity"
                    assert a.value is None or a.value != b.value, "another value"
            assert len(p[resp].split()) == len(p[reph].split())


def test_other_answers_held_out_unrelated_and_shuffled(world, judge):
    test_chosen = {q["chosen"] for q in world.test_pairs}
    train_chosen = {q["chosen"] for q in world.train_pairs}
    for p in world.probes:
        entity, _ = judge.question(p["prompt"])
        assert p["irr_train"] in train_chosen and p["irr_train"] != p["chosen"]
        assert all(e != entity for _, e, _, _ in _facts(judge, p["irr_train"]))
        assert p["irr_test"] in test_chosen
        claims, _ = judge.parse(p["irr_hum"])
        assert claims and all(c is None for c in claims), "y_hum is no sentence of the world"
        assert not set(p["irr_hum"].split()) & set(world.entities)
        assert sorted(p["random_permute"].split()) == sorted(p["chosen"].split())
        assert p["random_permute"].split() != p["chosen"].split()
        assert sorted(p["random_nonhum"].split()) == sorted(p["irr_test"].split())
        assert judge.score(p["prompt"], p["random_permute"]) < judge.score(p["prompt"], p["chosen"])


def test_corpus_holds_every_fact_in_every_wording(world, judge):
    stated, wordings = Counter(), set()
    for doc in world.corpus:
        if "Human" in doc:
            continue
        claims, _ = judge.parse(doc)
        for c in claims:
            if c is not None:
                assert c.kind == "fact" and world.facts[c.entity, c.attribute] == c.value
                stated[c.entity, c.attribute] += 1
                wordings.add((c.entity, c.attribute, c.wording))
    assert set(stated) == set(world.facts) and len(wordings) == 3 * len(world.facts)
    assert min(stated.values()) == CFG.docs_per_entity
    assert any("Human" in d for d in world.corpus), "the corpus holds dialogues"


def test_judge_penalises_wrong_repeated_and_broken_answers(world, judge):
    pair = world.train_pairs[0]
    e, a = pair["entity"], pair["attribute"]
    first = pair["chosen"].split(" . ")[0].strip() + " ."
    assert judge.score(pair["prompt"], " " + first + " " + first) < judge.score(pair["prompt"], " " + first)
    assert judge.score(pair["prompt"], " " + first[:-2]) < judge.score(pair["prompt"], " " + first)
    assert judge.score(pair["prompt"], "") < judge.score(pair["prompt"], pair["rejected"])
    asked = next(s for s in pair["chosen"].split(" . ") if world.facts[e, a] in s.split()).strip() + " ."
    assert judge.judge(pair["prompt"], " " + asked).answered == "correct"
    wrong = asked.replace(" " + world.facts[e, a] + " ", " " + next(
        v for v in ATTRIBUTES[a].values if v != world.facts[e, a]) + " ")
    assert judge.judge(pair["prompt"], " " + wrong).answered == "wrong"
    with pytest.raises(ValueError, match="no question"):
        judge.question("\n\nHuman: how are you ?\n\nAssistant:")


def test_win_rate_counts_both_orders_and_ties(world, judge):
    prompts = [p["prompt"] for p in world.train_pairs[:4]]
    chosen = [p["chosen"] for p in world.train_pairs[:4]]
    rejected = [p["rejected"] for p in world.train_pairs[:4]]
    assert judge.win_rate(prompts, chosen, rejected)["win_rate"] == 1.0
    assert judge.win_rate(prompts, chosen, chosen) == {"win_rate": 0.5, "wins": 0.0, "ties": 1.0, "losses": 0.0,
                                                        "n": 8, "per_prompt": [0.5] * 4}
    mixed = judge.win_rate(prompts, chosen[:2] + rejected[2:], rejected[:2] + chosen[2:])
    assert mixed["win_rate"] == 0.5 and mixed["ties"] == 0.0 and mixed["per_prompt"] == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="equal, non-empty"):
        judge.win_rate(prompts, chosen, rejected[:3])


def test_shuffle_words_permutes_and_save_writes_engine_files(world, tmp_path):
    rng = np.random.default_rng(0)
    assert shuffle_words(" a a a", rng) == " a a a"
    out = shuffle_words(" x y z w", rng)
    assert sorted(out.split()) == ["w", "x", "y", "z"] and out.split() != ["x", "y", "z", "w"]
    paths = save_world(world, tmp_path)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert {"prompt", "chosen", "rejected"} <= set(rows[0]) and len(rows) == len(world.train_pairs)
    probes = [json.loads(line) for line in paths["probes"].read_text().splitlines()]
    assert probes == list(world.probes)
    corpus = [json.loads(line)["text"] for line in paths["corpus"].read_text().splitlines()]
    assert corpus == list(world.corpus)


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_entities"):
        WorldConfig(n_entities=2)
    with pytest.raises(ValueError, match="n_probes"):
        WorldConfig(n_entities=4, n_probes=100)
    with pytest.raises(ValueError, match="test_fraction"):
        WorldConfig(test_fraction=1.5)
