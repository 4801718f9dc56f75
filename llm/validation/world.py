"""A seeded synthetic HH-like world: entities with attributes, questions, preference pairs, probes, a corpus.

No model weights can be downloaded here, so the validation pipeline (``llm.validation.pipeline``) builds its own
world in which every probe type of the paper keeps its meaning exactly, and a programmatic judge
(``llm.validation.judge``) can score any response. The world is a fact base (entity -> attribute -> value) and the
grammar of ``llm.validation.grammar``:

- a *prompt* asks one fact in the Anthropic-HH dialogue format: ``"\\n\\nHuman: where does tomi live ?\\n\\nAssistant:"``;
- the *chosen* answer y+ is helpful: maybe an opener, the asked fact, 1-3 more true facts about the entity in a
  random order, maybe a closer, each sentence in one of several wordings;
- the *rejected* answer y- is an INDEPENDENT response of the same grammar, worse in content: wrong (the asked fact
  with a wrong value and more false facts), hedged, evasive or unhelpful (remarks and an unasked fact, no answer), with its own opener,
  wordings and closer. It is not a token edit of y+ (``bigram_overlap`` in the conditions measures it);
- a *semantic* rephrase states the same claims with every sentence in another wording or frame;
- a *format* rephrase keeps every sentence frame and wording but talks about another entity with other values;
- the pretraining corpus states every fact in every wording, fluent unrelated sentences and dialogues with every
  answer style, so a model pretrained on it has a broad, non-trivial answer distribution before finetuning.

Answers have 25-55 words (25-60 BPE tokens; ``world_tokenizer`` trains a byte-level BPE on the world's texts).
Probe records use the paper's keys (``../shared/data/NOTICE.md``); ``chosen_initial`` (y_init, a sample of the
pretrained model) is filled in by the pipeline once a model exists.

References: Ren & Sutherland, ICLR 2025, Sections 5-6 (probe responses).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm.validation.grammar import (ATTRIBUTES, EVASIONS, FILLER_KINDS, HEDGES, HUM, UNHELPFUL,
                                    Claim, response_text)

__all__ = ["WorldConfig", "World", "HUMAN", "ASSISTANT", "PROBE_KEYS", "REJECTED_KINDS", "ANSWER_WORDS",
           "build_world", "save_world", "world_texts", "world_tokenizer", "prompt_text", "shuffle_words"]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

# The paper's probe keys (NOTICE.md) that the world fills; chosen_initial is added after pretraining.
PROBE_KEYS = ("prompt", "chosen", "rejected", "chosen_gptsemantic", "chosen_gptformat", "reject_gptsemantic",
              "reject_gptformat", "irr_train", "irr_test", "irr_hum", "random_permute", "random_nonhum")
REJECTED_KINDS = ("wrong", "hedged", "evasive", "unhelpful")
_REJECTED_P = (0.4, 0.2, 0.2, 0.2)
#: words per answer (y+ and y-), inclusive: 25-60 BPE tokens (the BPE merges most words whole).
ANSWER_WORDS = (25, 55)

_SYLLABLES = ("ta", "ro", "mi", "ve", "lu", "ko", "sa", "ne", "di", "pa", "zu", "fe", "jo", "ri", "ga", "bo")


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a synthetic language world (defaults: the CPU validation preset)."""

    seed: int = field(default=0, metadata={"help": "seed of the world: names, facts, splits, answers, probes"})
    n_entities: int = field(default=48, metadata={"help": "number of entities (each has every attribute)"})
    test_fraction: float = field(default=0.62, metadata={
        "help": "share of questions held out of training (their prompts judge the win rate)"})
    n_probes: int = field(default=24, metadata={"help": "training pairs tracked as probes (the first ones)"})
    docs_per_entity: int = field(default=3, metadata={"help": "pretraining documents per entity (all its facts)"})
    n_unrelated: int = field(default=300, metadata={"help": "fluent unrelated sentences in the corpus"})
    dialogue_fraction: float = field(default=0.5, metadata={
        "help": "share of all questions that also appear as a dialogue in the corpus (any answer style)"})
    vocab_size: int = field(default=2048, metadata={"help": "target vocabulary of the world's byte-level BPE"})

    def __post_init__(self) -> None:
        if not 4 <= self.n_entities <= len(_SYLLABLES) * (len(_SYLLABLES) - 1):
            raise ValueError(f"WorldConfig.n_entities must be in [4, {len(_SYLLABLES) * (len(_SYLLABLES) - 1)}], "
                             f"got {self.n_entities}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"WorldConfig.test_fraction must be in (0, 1), got {self.test_fraction}")
        n_questions = self.n_entities * len(ATTRIBUTES)
        n_train = n_questions - int(round(self.test_fraction * n_questions))
        if not 2 <= self.n_probes <= n_train:
            raise ValueError(f"WorldConfig.n_probes must be in [2, {n_train}] (training pairs), got {self.n_probes}")
        if self.docs_per_entity < 1 or self.n_unrelated < 2:
            raise ValueError("WorldConfig.docs_per_entity must be >= 1 and n_unrelated >= 2, got "
                             f"{self.docs_per_entity} and {self.n_unrelated}")
        if not 0.0 <= self.dialogue_fraction <= 1.0:
            raise ValueError(f"WorldConfig.dialogue_fraction must be in [0, 1], got {self.dialogue_fraction}")
        if self.vocab_size < 260:
            raise ValueError(f"WorldConfig.vocab_size must be >= 260 (bytes + special tokens), got {self.vocab_size}")


@dataclass(frozen=True)
class World:
    """A generated world: its fact base, the training/held-out questions, pairs, probes and corpus.

    ``train_pairs``/``test_pairs`` are dicts with prompt/chosen/rejected (TRL's names) plus the meta keys
    ``entity``, ``attribute`` and ``rejected_kind``; ``probes`` are dicts with the paper's probe keys.
    """

    config: WorldConfig
    entities: tuple[str, ...]
    facts: dict[tuple[str, str], str]
    train_pairs: tuple[dict[str, Any], ...]
    test_pairs: tuple[dict[str, Any], ...]
    probes: tuple[dict[str, str], ...]
    corpus: tuple[str, ...]


def prompt_text(question: str) -> str:
    """Wrap a question in the HH dialogue format that ends with the assistant's turn."""
    return f"{HUMAN} {question}{ASSISTANT}"


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    """Return the words of ``text`` in a random order that differs from the original when possible."""
    words = text.split()
    if len(set(words)) < 2:
        return " " + " ".join(words)
    while True:
        perm = [words[i] for i in rng.permutation(len(words))]
        if perm != words:
            return " " + " ".join(perm)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _other(rng: np.random.Generator, options, exclude) -> Any:
    return _pick(rng, [o for o in options if o not in exclude])


def _names(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    pool = [a + b for a in _SYLLABLES for b in _SYLLABLES if a != b]
    return tuple(pool[i] for i in rng.choice(len(pool), size=n, replace=False))


def _hum_sentence(rng: np.random.Generator) -> str:
    return (f"{_pick(rng, HUM['det'])} {_pick(rng, HUM['adj'])} {_pick(rng, HUM['noun'])} {_pick(rng, HUM['verb'])} "
            f"{_pick(rng, HUM['prep'])} the {_pick(rng, HUM['noun'])} {_pick(rng, HUM['time'])} .")


def _fact(rng, entity, attribute, value, kind="fact") -> Claim:
    return Claim(kind, entity, attribute, value, int(rng.integers(3)), int(rng.integers(len(HEDGES))))


def _filler(rng, kind: str) -> Claim:
    return Claim(kind, None, None, None, 0, int(rng.integers(len(FILLER_KINDS[kind]))))


def _frame(rng, body: list[Claim], p_opener: float = 0.6, p_closer: float = 0.6) -> list[Claim]:
    return ([_filler(rng, "opener")] if rng.random() < p_opener else []) + body + \
        ([_filler(rng, "closer")] if rng.random() < p_closer else [])


def _words(claims: list[Claim]) -> int:
    return len(response_text(claims).split())


def _sized(rng, make) -> list[Claim]:
    """Draw responses from ``make(rng)`` until one has ANSWER_WORDS words."""
    for _ in range(200):
        claims = make(rng)
        if ANSWER_WORDS[0] <= _words(claims) <= ANSWER_WORDS[1]:
            return claims
    raise RuntimeError("the grammar cannot make an answer of the required length")  # pragma: no cover


def _chosen(rng, facts, entity, attribute) -> list[Claim]:
    def make(rng):
        others = [a for a in ATTRIBUTES if a != attribute]
        extra = [others[i] for i in rng.permutation(len(others))[: int(rng.integers(1, 4))]]
        body = [_fact(rng, entity, attribute, facts[entity, attribute])]
        body += [_fact(rng, entity, a, facts[entity, a]) for a in extra]
        return _frame(rng, body)
    return _sized(rng, make)


def _rejected(rng, facts, entity, attribute, kind: str) -> list[Claim]:
    attr = ATTRIBUTES[attribute]
    others = [a for a in ATTRIBUTES if a != attribute]

    def wrong_facts(rng, n):
        picked = [others[i] for i in rng.permutation(len(others))[:n]]
        return [_fact(rng, entity, a, _other(rng, ATTRIBUTES[a].values, {facts[entity, a]})) for a in picked]

    def make(rng):
        if kind == "wrong":
            body = [_fact(rng, entity, attribute, _other(rng, attr.values, {facts[entity, attribute]}))]
            body += wrong_facts(rng, int(rng.integers(1, 3)))
        elif kind == "hedged":
            value = facts[entity, attribute] if rng.random() < 0.5 else _other(rng, attr.values,
                                                                                  {facts[entity, attribute]})
            body = [_fact(rng, entity, attribute, value, "hedged")] + wrong_facts(rng, int(rng.integers(0, 2)))
            body += [_filler(rng, "unhelpful")] if rng.random() < 0.5 else []
        elif kind == "evasive":
            body = [Claim("evasive", entity, attribute, None, 0, int(rng.integers(len(EVASIONS)))),
                    _filler(rng, "unhelpful")] + wrong_facts(rng, int(rng.integers(0, 2)))
        else:  # unhelpful: no answer, remarks and a true fact that was not asked for
            frames = rng.permutation(len(UNHELPFUL))[: int(rng.integers(1, 3))]
            body = [Claim("unhelpful", None, None, None, 0, int(f)) for f in frames]
            side = _pick(rng, others)
            body.insert(int(rng.integers(len(body) + 1)), _fact(rng, entity, side, facts[entity, side]))
        return _frame(rng, body, 0.5, 0.5)
    return _sized(rng, make)


def _pair(rng, facts, entity: str, attribute: str) -> dict[str, Any]:
    """Build one preference pair (and its claim lists, used for the rephrases)."""
    question = _pick(rng, ATTRIBUTES[attribute].questions).format(e=entity)
    kind = REJECTED_KINDS[int(rng.choice(len(REJECTED_KINDS), p=_REJECTED_P))]
    chosen, rejected = _chosen(rng, facts, entity, attribute), _rejected(rng, facts, entity, attribute, kind)
    return {"prompt": prompt_text(question), "chosen": response_text(chosen), "rejected": response_text(rejected),
            "entity": entity, "attribute": attribute, "rejected_kind": kind,
            "_chosen_claims": chosen, "_rejected_claims": rejected}


def _semantic_rephrase(rng, claims: list[Claim]) -> str:
    """The same claims, every sentence in another wording (facts) or frame (hedges, evasions, fillers)."""
    out = []
    for c in claims:
        if c.kind == "fact":
            out.append(dataclasses.replace(c, wording=_other(rng, range(3), {c.wording})))
        else:  # another frame, and none that a sentence of the same kind uses (no repeated sentence)
            n = len(HEDGES if c.kind == "hedged" else EVASIONS if c.kind == "evasive" else FILLER_KINDS[c.kind])
            used = {d.frame for d in (*claims, *out) if d.kind == c.kind}
            out.append(dataclasses.replace(c, frame=_other(rng, range(n), used)))
    return response_text(out)


def _format_rephrase(rng, claims: list[Claim], entities: tuple[str, ...]) -> str:
    """The same sentence frames and wordings as ``claims``, about another entity, every value changed."""
    entity = next(c.entity for c in claims if c.entity is not None)
    other = _other(rng, entities, {entity})
    new = [c if c.entity is None else dataclasses.replace(
        c, entity=other, value=None if c.value is None else _other(rng, ATTRIBUTES[c.attribute].values, {c.value}))
        for c in claims]
    return response_text(new)


def _corpus(rng, facts, entities, questions, cfg: WorldConfig) -> list[str]:
    """Documents stating every fact in every wording, unrelated sentences and dialogues, shuffled."""
    docs: list[str] = []
    attrs = list(ATTRIBUTES)
    for entity in entities:
        for k in range(cfg.docs_per_entity):
            order = [attrs[i] for i in rng.permutation(len(attrs))]
            # Document k states attribute a in wording (k + index of a) % 3: every wording once in 3 documents.
            claims = [Claim("fact", entity, a, facts[entity, a], (k + attrs.index(a)) % 3) for a in order]
            docs.append(response_text(claims).strip())
    docs += [_hum_sentence(rng) for _ in range(cfg.n_unrelated)]
    # Dialogues with every answer style, so the base model has a broad (not yet aligned) answer distribution.
    n_dialogues = int(round(cfg.dialogue_fraction * len(questions)))
    for k in rng.choice(len(questions), size=n_dialogues, replace=False):
        entity, attribute = questions[int(k)]
        question = _pick(rng, ATTRIBUTES[attribute].questions).format(e=entity)
        style = int(rng.integers(3))
        claims = (_chosen(rng, facts, entity, attribute) if style == 0 else
                  _rejected(rng, facts, entity, attribute, _pick(rng, REJECTED_KINDS)) if style == 1 else
                  _frame(rng, [_fact(rng, entity, attribute, facts[entity, attribute])]))
        docs.append((prompt_text(question) + response_text(claims)).strip())
    return [docs[i] for i in rng.permutation(len(docs))]


def build_world(cfg: WorldConfig = WorldConfig()) -> World:
    """Generate the world deterministically from ``cfg.seed``.

    Returns:
        A World whose probes are the first ``cfg.n_probes`` training pairs with every probe key of the paper.
    """
    rng = np.random.default_rng(cfg.seed)
    entities = _names(rng, cfg.n_entities)
    facts = {(e, a): _pick(rng, attr.values) for e in entities for a, attr in ATTRIBUTES.items()}
    questions = [(e, a) for e in entities for a in ATTRIBUTES]
    order = rng.permutation(len(questions))
    n_test = int(round(cfg.test_fraction * len(questions)))
    train = [_pair(rng, facts, *questions[i]) for i in order[n_test:]]
    test = [_pair(rng, facts, *questions[i]) for i in order[:n_test]]
    probes = []
    for i, pair in enumerate(train[:cfg.n_probes]):
        # Another training question's answer about another entity, so it is never a rephrase of this y+.
        others = [j for j, p in enumerate(train) if j != i and p["entity"] != pair["entity"]]
        irr_test = _pick(rng, test)["chosen"]
        probes.append({
            "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
            "chosen_gptsemantic": _semantic_rephrase(rng, pair["_chosen_claims"]),
            "chosen_gptformat": _format_rephrase(rng, pair["_chosen_claims"], entities),
            "reject_gptsemantic": _semantic_rephrase(rng, pair["_rejected_claims"]),
            "reject_gptformat": _format_rephrase(rng, pair["_rejected_claims"], entities),
            "irr_train": train[_pick(rng, others)]["chosen"], "irr_test": irr_test,
            "irr_hum": " " + " ".join(_hum_sentence(rng) for _ in range(3)),
            "random_permute": shuffle_words(pair["chosen"], rng), "random_nonhum": shuffle_words(irr_test, rng),
        })
    corpus = _corpus(rng, facts, entities, questions, cfg)

    def public(pair: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pair.items() if not k.startswith("_")}

    return World(config=cfg, entities=entities, facts=facts, train_pairs=tuple(public(p) for p in train),
                 test_pairs=tuple(public(p) for p in test), probes=tuple(probes), corpus=tuple(corpus))


def world_texts(world: World) -> list[str]:
    """Every text of the world (corpus, pairs, probes): what its tokenizer is trained on."""
    return list(world.corpus) + [t for p in (*world.train_pairs, *world.test_pairs, *world.probes)
                                 for k, t in p.items() if k in PROBE_KEYS]


def world_tokenizer(world: World):
    """A byte-level BPE (GPT-2 scheme) with ``world.config.vocab_size`` target tokens, trained on the world."""
    from llm.tokenization import train_bpe_tokenizer

    return train_bpe_tokenizer(world_texts(world), vocab_size=world.config.vocab_size, min_frequency=1)


def save_world(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Write the world as the engine's files: pairs JSONL (TRL format), probe JSONL, corpus JSONL (``text``), facts.

    Returns:
        The written paths by name: ``train``, ``test``, ``probes``, ``corpus``, ``facts``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"train": out / "pairs_train.jsonl", "test": out / "pairs_test.jsonl",
             "probes": out / "probes_train.jsonl", "corpus": out / "corpus.jsonl", "facts": out / "world.json"}
    for name, records in (("train", world.train_pairs), ("test", world.test_pairs), ("probes", world.probes)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["corpus"].write_text("".join(json.dumps({"text": doc}) + "\n" for doc in world.corpus))
    facts = [{"entity": e, "attribute": a, "value": v} for (e, a), v in world.facts.items()]
    paths["facts"].write_text(json.dumps({"config": dataclasses.asdict(world.config), "facts": facts}, indent=1))
    return paths
