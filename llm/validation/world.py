"""A seeded synthetic language world: entities with attributes, questions, preference pairs, probes, a corpus.

No model weights can be downloaded here, so the validation pipeline (``llm.validation.pipeline``) builds its own small world
in which every probe type of the paper keeps its meaning exactly, and a programmatic judge (``llm.validation.judge``) can
score any response. The world is a small fact base (entity -> attribute -> value) and a grammar:

- a *prompt* asks one fact in the Anthropic-HH dialogue format: ``"\\n\\nHuman: where does tomi live ?\\n\\nAssistant:"``;
- the *chosen* answer y+ states the asked fact and one more true fact about the entity, in the plain wording;
- the *rejected* answer y- is worse: the asked fact with a wrong value, the same hedged, or an evasive non-answer;
- a *semantic* rephrase states exactly the same claims in the alternative wording (same facts, other words);
- a *format* rephrase keeps the wording, sentence by sentence, but talks about another entity with other values;
- the pretraining corpus states every fact of every entity in both wordings, plus fluent unrelated sentences and a
  few dialogues, so a model pretrained on it has a peaky, non-trivial distribution before finetuning.

Every text is a sequence of space-separated words (punctuation is its own word), so a word-level tokenizer covers
it exactly. Probe records use the paper's keys (``../shared/data/NOTICE.md``); ``chosen_initial`` (y_init, a sample
of the pretrained model) is filled in by the pipeline once a model exists.

References: Ren & Sutherland, ICLR 2025, Sections 5-6 (probe responses).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "WorldConfig", "Attribute", "Claim", "World", "ATTRIBUTES", "HUMAN", "ASSISTANT", "PROBE_KEYS",
    "build_world", "save_world", "prompt_text", "claim_text", "shuffle_words",
]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

# The paper's probe keys (NOTICE.md) that the world fills; chosen_initial is added after pretraining.
PROBE_KEYS = ("prompt", "chosen", "rejected", "chosen_gptsemantic", "chosen_gptformat", "reject_gptsemantic",
              "reject_gptformat", "irr_train", "irr_test", "irr_hum", "random_permute", "random_nonhum")


@dataclass(frozen=True)
class Attribute:
    """One attribute of the world's entities and every way the grammar can phrase it.

    ``plain``/``alt`` are the two wordings of a fact (``{e}`` entity, ``{v}`` value, no final period);
    ``wh`` is the indirect question used by evasive answers; ``questions`` are the prompt wordings.
    """

    name: str
    values: tuple[str, ...]
    questions: tuple[str, ...]
    plain: str
    alt: str
    wh: str


_TOWNS = ("belmar", "dorvin", "ostrel", "kalvik", "merrow", "tulsen", "varnby", "quenna", "harlow", "esmont",
          "brisca", "nolden")
ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("home", _TOWNS, ("where does {e} live ?", "in which town does {e} live ?"),
              "{e} lives in {v}", "the home town of {e} is {v}", "where {e} lives"),
    Attribute("food", ("apples", "bread", "rice", "fish", "cheese", "soup", "honey", "plums", "beans", "cake"),
              ("what food does {e} like ?", "what does {e} like to eat ?"),
              "{e} likes to eat {v}", "the favourite food of {e} is {v}", "what {e} likes to eat"),
    Attribute("job", ("baker", "farmer", "doctor", "teacher", "painter", "sailor", "singer", "miner", "tailor",
                      "guard"),
              ("what does {e} do for work ?", "what is the job of {e} ?"),
              "{e} works as a {v}", "by trade , {e} is a {v}", "what {e} does for work"),
    Attribute("pet", ("cat", "dog", "horse", "goat", "parrot", "rabbit", "owl", "fox"),
              ("what pet does {e} have ?", "which animal does {e} keep ?"),
              "{e} has a pet {v}", "at home , {e} keeps a {v}", "what pet {e} has"),
    Attribute("color", ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
              ("what is the favourite color of {e} ?", "which color does {e} like ?"),
              "{e} likes the color {v}", "the color that {e} loves most is {v}", "which color {e} likes"),
)}

# Hedged and evasive frames, in the two wordings; "{s}" is a fact body, "{w}" an indirect question.
HEDGE = {"plain": "i think {s} or so", "alt": "perhaps {s}"}
EVASIVE = {"plain": "sorry , i do not know {w}", "alt": "i am afraid i can not say {w}"}
REJECTED_KINDS = ("wrong", "hedged", "evasive")

# A small grammar of fluent sentences unrelated to the facts (y_hum); its words never occur in a fact.
_HUM = {
    "det": ("the", "a"),
    "adj": ("old", "quiet", "tall", "small", "bright", "cold", "gentle", "busy"),
    "noun": ("man", "woman", "child", "bird", "river", "train", "garden", "lamp", "ship", "window"),
    "verb": ("walked", "waited", "rested", "sang", "stood", "slept", "danced", "looked"),
    "prep": ("near", "behind", "under", "beside", "across"),
    "time": ("in the morning", "at night", "after the rain", "before dinner", "all day"),
}

_SYLLABLES = ("ta", "ro", "mi", "ve", "lu", "ko", "sa", "ne", "di", "pa", "zu", "fe", "jo", "ri", "ga", "bo")


@dataclass(frozen=True)
class WorldConfig:
    """Size and seed of a synthetic language world (defaults: the CPU validation preset)."""

    seed: int = field(default=0, metadata={"help": "seed of the world: names, facts, splits, answers, probes"})
    n_entities: int = field(default=32, metadata={"help": "number of entities (each has every attribute)"})
    test_fraction: float = field(default=0.25, metadata={"help": "share of questions held out of training"})
    n_probes: int = field(default=48, metadata={"help": "training pairs tracked as probes (the first ones)"})
    docs_per_entity: int = field(default=4, metadata={"help": "pretraining documents per entity (all its facts)"})
    n_unrelated: int = field(default=400, metadata={"help": "fluent unrelated sentences in the corpus"})
    dialogue_fraction: float = field(default=0.3, metadata={
        "help": "share of all questions that also appear as a dialogue in the corpus (any answer style)"})

    def __post_init__(self) -> None:
        if not 4 <= self.n_entities <= len(_SYLLABLES) ** 2:
            raise ValueError(f"WorldConfig.n_entities must be in [4, {len(_SYLLABLES) ** 2}], got {self.n_entities}")
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


@dataclass(frozen=True)
class Claim:
    """One sentence's meaning: ``kind`` in {"fact", "hedged", "evasive"}; ``value`` None for evasive."""

    kind: str
    entity: str
    attribute: str
    value: str | None
    wording: str  # "plain" or "alt"


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

    def words(self) -> list[str]:
        """Return every word the world can produce (corpus, pairs, probes), sorted."""
        vocab: set[str] = set()
        for text in self.corpus:
            vocab.update(text.split())
        for rec in (*self.train_pairs, *self.test_pairs, *self.probes):
            for key in PROBE_KEYS:
                if isinstance(rec.get(key), str):
                    vocab.update(rec[key].split())
        return sorted(vocab)


def prompt_text(question: str) -> str:
    """Wrap a question in the HH dialogue format that ends with the assistant's turn."""
    return f"{HUMAN} {question}{ASSISTANT}"


def claim_text(claim: Claim) -> str:
    """Render one claim as a sentence (ending with " .")."""
    attr = ATTRIBUTES[claim.attribute]
    if claim.kind == "evasive":
        body = EVASIVE[claim.wording].format(w=attr.wh.format(e=claim.entity))
    else:
        body = getattr(attr, claim.wording).format(e=claim.entity, v=claim.value)
        if claim.kind == "hedged":
            body = HEDGE[claim.wording].format(s=body)
    return body + " ."


def _response(claims: list[Claim]) -> str:
    """Join claims into a response with the leading space HH responses have."""
    return " " + " ".join(claim_text(c) for c in claims)


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    """Return the words of ``text`` in a random order that differs from the original when possible."""
    words = text.split()
    if len(set(words)) < 2:
        return " " + " ".join(words)
    while True:
        perm = [words[i] for i in rng.permutation(len(words))]
        if perm != words:
            return " " + " ".join(perm)


def _names(rng: np.random.Generator, n: int) -> tuple[str, ...]:
    pool = [a + b for a in _SYLLABLES for b in _SYLLABLES if a != b]
    idx = rng.choice(len(pool), size=n, replace=False)
    return tuple(pool[i] for i in idx)


def _other(rng: np.random.Generator, options: tuple[str, ...], exclude: set[str]) -> str:
    allowed = [o for o in options if o not in exclude]
    return allowed[int(rng.integers(len(allowed)))]


def _hum_sentence(rng: np.random.Generator) -> str:
    def pick(key: str) -> str:
        opts = _HUM[key]
        return opts[int(rng.integers(len(opts)))]
    return (f"{pick('det')} {pick('adj')} {pick('noun')} {pick('verb')} {pick('prep')} the {pick('noun')} "
            f"{pick('time')} .")


def _pair(rng: np.random.Generator, facts: dict[tuple[str, str], str], entity: str, attribute: str,
          ) -> dict[str, Any]:
    """Build one preference pair (and its claim lists, used for the rephrases)."""
    attr = ATTRIBUTES[attribute]
    question = attr.questions[int(rng.integers(len(attr.questions)))].format(e=entity)
    extra = _other(rng, tuple(ATTRIBUTES), {attribute})
    chosen = [Claim("fact", entity, attribute, facts[entity, attribute], "plain"),
              Claim("fact", entity, extra, facts[entity, extra], "plain")]
    kind = REJECTED_KINDS[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
    wrong = _other(rng, attr.values, {facts[entity, attribute]})
    rejected = [Claim(kind if kind != "wrong" else "fact", entity, attribute,
                      None if kind == "evasive" else wrong, "plain")]
    return {"prompt": prompt_text(question), "chosen": _response(chosen), "rejected": _response(rejected),
            "entity": entity, "attribute": attribute, "rejected_kind": kind,
            "_chosen_claims": chosen, "_rejected_claims": rejected}


def _format_rephrase(rng: np.random.Generator, claims: list[Claim], entities: tuple[str, ...]) -> str:
    """Same sentence frames as ``claims``, about another entity, every value changed."""
    other = _other(rng, entities, {claims[0].entity})
    new = [dataclasses.replace(c, entity=other, value=None if c.value is None else
                               _other(rng, ATTRIBUTES[c.attribute].values, {c.value})) for c in claims]
    return _response(new)


def _semantic_rephrase(claims: list[Claim]) -> str:
    """Same claims in the other wording."""
    return _response([dataclasses.replace(c, wording="alt" if c.wording == "plain" else "plain") for c in claims])


def _corpus(rng: np.random.Generator, facts: dict[tuple[str, str], str], entities: tuple[str, ...],
            questions: list[tuple[str, str]], cfg: WorldConfig) -> list[str]:
    """Documents stating every fact in both wordings, unrelated sentences and a few dialogues, shuffled."""
    docs: list[str] = []
    attrs = list(ATTRIBUTES)
    for entity in entities:
        for _ in range(cfg.docs_per_entity):
            order = [attrs[i] for i in rng.permutation(len(attrs))]
            claims = [Claim("fact", entity, a, facts[entity, a], ("plain", "alt")[int(rng.integers(2))])
                      for a in order]
            docs.append(" ".join(claim_text(c) for c in claims))
    for _ in range(cfg.n_unrelated):
        docs.append(_hum_sentence(rng))
    # Dialogues with every answer style, so the base model has a broad (not yet aligned) answer distribution.
    n_dialogues = int(round(cfg.dialogue_fraction * len(questions)))
    for k in rng.choice(len(questions), size=n_dialogues, replace=False):
        entity, attribute = questions[int(k)]
        attr = ATTRIBUTES[attribute]
        question = attr.questions[int(rng.integers(len(attr.questions)))].format(e=entity)
        kind = ("fact", "fact", "hedged", "evasive")[int(rng.integers(4))]
        value = None if kind == "evasive" else (facts[entity, attribute] if rng.random() < 0.7
                                                else _other(rng, attr.values, {facts[entity, attribute]}))
        claim = Claim(kind, entity, attribute, value, ("plain", "alt")[int(rng.integers(2))])
        docs.append((prompt_text(question) + _response([claim])).strip())
    return [docs[i] for i in rng.permutation(len(docs))]


def build_world(cfg: WorldConfig = WorldConfig()) -> World:
    """Generate the world deterministically from ``cfg.seed``.

    Args:
        cfg: the world's size and seed.

    Returns:
        A World whose probes are the first ``cfg.n_probes`` training pairs with every probe key of the paper.
    """
    rng = np.random.default_rng(cfg.seed)
    entities = _names(rng, cfg.n_entities)
    facts = {(e, a): attr.values[int(rng.integers(len(attr.values)))] for e in entities
             for a, attr in ATTRIBUTES.items()}
    questions = [(e, a) for e in entities for a in ATTRIBUTES]
    order = rng.permutation(len(questions))
    n_test = int(round(cfg.test_fraction * len(questions)))
    test_q = [questions[i] for i in order[:n_test]]
    train_q = [questions[i] for i in order[n_test:]]
    train = [_pair(rng, facts, e, a) for e, a in train_q]
    test = [_pair(rng, facts, e, a) for e, a in test_q]

    probes = []
    for i, pair in enumerate(train[:cfg.n_probes]):
        # Another training question's answer about another entity, so it is never a rephrase of this y+.
        others = [j for j, p in enumerate(train) if j != i and p["entity"] != pair["entity"]]
        irr_train = train[others[int(rng.integers(len(others)))]]["chosen"]
        irr_test = test[int(rng.integers(len(test)))]["chosen"]
        probes.append({
            "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
            "chosen_gptsemantic": _semantic_rephrase(pair["_chosen_claims"]),
            "chosen_gptformat": _format_rephrase(rng, pair["_chosen_claims"], entities),
            "reject_gptsemantic": _semantic_rephrase(pair["_rejected_claims"]),
            "reject_gptformat": _format_rephrase(rng, pair["_rejected_claims"], entities),
            "irr_train": irr_train, "irr_test": irr_test, "irr_hum": " " + _hum_sentence(rng),
            "random_permute": shuffle_words(pair["chosen"], rng), "random_nonhum": shuffle_words(irr_test, rng),
        })
    corpus = _corpus(rng, facts, entities, questions, cfg)

    def public(pair: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pair.items() if not k.startswith("_")}

    return World(config=cfg, entities=entities, facts=facts, train_pairs=tuple(public(p) for p in train),
                 test_pairs=tuple(public(p) for p in test), probes=tuple(probes), corpus=tuple(corpus))


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
