"""The synthetic world is deterministic, every probe type means what it says, and the judge reads it exactly."""

import json
from collections import Counter

import numpy as np
import pytest

from llm.validation.judge import Judge
from llm.validation.world import ATTRIBUTES, PROBE_KEYS, WorldConfig, build_world, save_world, shuffle_words

CFG = WorldConfig(seed=3, n_entities=12, n_probes=20, docs_per_entity=2, n_unrelated=30)


@pytest.fixture(scope="module")
def world():
    return build_world(CFG)


@pytest.fixture(scope="module")
def judge(world):
    return Judge(world)


def _facts(judge, text):
    claims, _ = judge.parse(text)
    assert all(c is not None for c in claims), f"unparsed sentence in {text!r}"
    return [(c.kind, c.entity, c.attribute, c.value) for c in claims]


def test_same_seed_same_world_other_seed_other_world(world):
    again = build_world(CFG)
    assert again.probes == world.probes and again.corpus == world.corpus and again.facts == world.facts
    other = build_world(WorldConfig(**{**CFG.__dict__, "seed": 4}))
    assert other.facts != world.facts
    assert [p["chosen"] for p in other.probes] != [p["chosen"] for p in world.probes]


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
    for pair in world.train_pairs:
        entity, attribute = judge.question(pair["prompt"])
        assert (entity, attribute) == (pair["entity"], pair["attribute"])
        chosen = _facts(judge, pair["chosen"])
        assert chosen[0] == ("fact", entity, attribute, world.facts[entity, attribute])
        assert all(world.facts[e, a] == v for _, e, a, v in chosen)
        rejected = _facts(judge, pair["rejected"])
        assert rejected[0][1:3] == (entity, attribute)
        assert rejected[0][3] != world.facts[entity, attribute], "y- must not state the true value"
        assert judge.compare(pair["prompt"], pair["chosen"], pair["rejected"]) == 1
        assert judge.compare(pair["prompt"], pair["rejected"], pair["chosen"]) == -1
        kinds[pair["rejected_kind"]] += 1
    assert set(kinds) == {"wrong", "hedged", "evasive"}


def test_semantic_rephrase_same_facts_other_words(world, judge):
    for p in world.probes:
        for resp, reph in (("chosen", "chosen_gptsemantic"), ("rejected", "reject_gptsemantic")):
            assert _facts(judge, p[resp]) == _facts(judge, p[reph])
            assert p[resp].split() != p[reph].split()
            assert judge.score(p["prompt"], p[resp]) == judge.score(p["prompt"], p[reph])


def test_format_rephrase_same_frames_other_facts(world, judge):
    for p in world.probes:
        for resp, reph in (("chosen", "chosen_gptformat"), ("rejected", "reject_gptformat")):
            original, rephrased = judge.parse(p[resp])[0], judge.parse(p[reph])[0]
            assert len(original) == len(rephrased)
            for a, b in zip(original, rephrased):
                assert (a.kind, a.attribute, a.wording) == (b.kind, b.attribute, b.wording), "same sentence frame"
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
        assert claims == [None], "y_hum is no fact of the world"
        assert not set(p["irr_hum"].split()) & set(world.entities)
        assert sorted(p["random_permute"].split()) == sorted(p["chosen"].split())
        assert p["random_permute"].split() != p["chosen"].split()
        assert sorted(p["random_nonhum"].split()) == sorted(p["irr_test"].split())
        assert judge.score(p["prompt"], p["random_permute"]) < judge.score(p["prompt"], p["chosen"])


def test_corpus_holds_every_fact_in_both_wordings(world, judge):
    stated = Counter()
    for doc in world.corpus:
        if "Human" in doc:
            continue
        claims, _ = judge.parse(doc)
        for c in claims:
            if c is not None:
                assert c.kind == "fact" and world.facts[c.entity, c.attribute] == c.value
                stated[c.entity, c.attribute] += 1
    assert set(stated) == set(world.facts)
    assert min(stated.values()) == CFG.docs_per_entity
    assert any("Human" in d for d in world.corpus), "the corpus holds dialogues"


def test_judge_penalises_wrong_repeated_and_broken_answers(world, judge):
    pair = world.train_pairs[0]
    e, a = pair["entity"], pair["attribute"]
    first = pair["chosen"].split(" . ")[0].strip() + " ."
    assert judge.judge(pair["prompt"], " " + first).answered == "correct"
    assert judge.score(pair["prompt"], " " + first + " " + first) < judge.score(pair["prompt"], " " + first)
    assert judge.score(pair["prompt"], " " + first[:-2]) < judge.score(pair["prompt"], " " + first)
    assert judge.score(pair["prompt"], "") < judge.score(pair["prompt"], pair["rejected"])
    wrong = first.replace(" " + world.facts[e, a] + " ", " " + next(
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
                                                        "n": 8}
    mixed = judge.win_rate(prompts, chosen[:2] + rejected[2:], rejected[:2] + chosen[2:])
    assert mixed["win_rate"] == 0.5 and mixed["ties"] == 0.0
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
