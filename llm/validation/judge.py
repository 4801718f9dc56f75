"""The synthetic world's programmatic judge: parse a response into claims, score it for a prompt, rank two.

The judge stands in for the paper's GPT/Claude judges (Table 1) on the synthetic world (``llm.validation.world``). It reads a
response sentence by sentence with the world's grammar, so it knows exactly which facts a response states, and
scores it for the question the prompt asks:

| part of the response | score |
|---|---|
| the asked fact, correct value (any wording) | +3 |
| the asked fact, hedged, correct / wrong value | +2 / -1 |
| the asked fact, wrong value | -2 |
| an evasive non-answer to the asked fact | 0 |
| nothing about the asked fact | -1 |
| an opener or closer ("of course .", "i hope this helps .") | 0 |
| each unhelpful remark ("maybe ask someone else .") | -0.5 |
| each further true fact about the asked entity (at most 2 counted) | +0.5 |
| each further false fact, or a fact about another entity | -1 / -0.5 |
| each sentence the grammar cannot parse, an unfinished sentence, a repeated sentence | -1 |
| an empty response | -4 |

Only the first claim about the asked fact is scored as the answer; a later one is counted as repetition if it is
the same sentence and as a further (possibly false) fact otherwise. Two responses tie when their scores are equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm.validation.grammar import ATTRIBUTES, EVASIONS, FILLER_KINDS, HEDGES, Claim
from llm.validation.world import ASSISTANT, HUMAN, World

__all__ = ["Judgement", "Judge"]

_ASKED = {("fact", True): 3.0, ("fact", False): -2.0, ("hedged", True): 2.0, ("hedged", False): -1.0}
_EVASIVE_SCORE = 0.0
_NO_ANSWER = -1.0
_EXTRA_TRUE, _MAX_EXTRA = 0.5, 2
_EXTRA_FALSE = -1.0
_OFF_TOPIC = -0.5
_UNHELPFUL = -0.5
_DISFLUENT = -1.0
_EMPTY = -4.0


@dataclass(frozen=True)
class Judgement:
    """A scored response: total ``score``, the parsed ``claims`` and the count of unparsed sentences."""

    score: float
    claims: tuple[Claim, ...]
    unparsed: int
    repeated: int
    answered: str  # "correct", "wrong", "hedged-correct", "hedged-wrong", "evasive" or "none"


def _pattern(template: str) -> str:
    """Turn a grammar template with {e}/{v}/{s}/{w} slots into a regex body (slots become named groups)."""
    out = re.escape(template)
    out = out.replace(re.escape("{e}"), r"(?P<e>\S+)").replace(re.escape("{v}"), r"(?P<v>\S+)")
    return out


class Judge:
    """Score responses of the synthetic world against its fact base.

    Args:
        world: the World whose entities and facts define truth.
    """

    def __init__(self, world: World):
        self.world = world
        self._entities = set(world.entities)
        # (regex, kind, attribute, wording, frame); fillers are matched exactly in self._fillers.
        self._patterns: list[tuple[re.Pattern[str], str, str, int, int]] = []
        for name, attr in ATTRIBUTES.items():
            for wording, body in enumerate(attr.wordings):
                self._patterns.append((re.compile("^" + _pattern(body) + r" \.$"), "fact", name, wording, 0))
                for frame, hedge in enumerate(HEDGES):
                    self._patterns.append((re.compile("^" + _pattern(hedge.replace("{s}", body)) + r" \.$"),
                                           "hedged", name, wording, frame))
            for frame, evasion in enumerate(EVASIONS):
                self._patterns.append((re.compile("^" + _pattern(evasion.replace("{w}", attr.wh)) + r" \.$"),
                                       "evasive", name, 0, frame))
        self._fillers = {text: (kind, frame) for kind, texts in FILLER_KINDS.items()
                         for frame, text in enumerate(texts)}
        self._questions = [(re.compile("^" + _pattern(q) + "$"), name)
                           for name, attr in ATTRIBUTES.items() for q in attr.questions]

    def question(self, prompt: str) -> tuple[str, str]:
        """Return the (entity, attribute) the prompt asks about; ValueError if it is not a world question."""
        text = prompt.strip()
        if not (text.startswith(HUMAN.strip()) and text.endswith(ASSISTANT.strip())):
            raise ValueError(f"prompt must be '{HUMAN!r} <question>{ASSISTANT!r}', got {prompt!r}")
        body = text[len(HUMAN.strip()):-len(ASSISTANT.strip())].strip()
        for regex, name in self._questions:
            m = regex.match(body)
            if m and m.group("e") in self._entities:
                return m.group("e"), name
        raise ValueError(f"prompt asks no question of this world: {body!r}")

    def parse(self, response: str) -> tuple[list[Claim | None], list[str]]:
        """Split a response into sentences and parse each; None marks a sentence the grammar cannot read.

        Returns:
            (claims, sentences), aligned; an unfinished last sentence (no final period) parses as None.
        """
        words = response.split()
        sentences, current = [], []
        for w in words:
            current.append(w)
            if w in (".", "?"):
                sentences.append(" ".join(current))
                current = []
        if current:
            sentences.append(" ".join(current))
        return [self._parse_sentence(s) for s in sentences], sentences

    def _parse_sentence(self, sentence: str) -> Claim | None:
        if sentence in self._fillers:
            kind, frame = self._fillers[sentence]
            return Claim(kind, None, None, None, 0, frame)
        for regex, kind, name, wording, frame in self._patterns:
            m = regex.match(sentence)
            if m is None or m.group("e") not in self._entities:
                continue
            value = m.groupdict().get("v")
            if value is not None and value not in ATTRIBUTES[name].values:
                continue
            return Claim(kind, m.group("e"), name, value, wording, frame)
        return None

    def judge(self, prompt: str, response: str) -> Judgement:
        """Score ``response`` as an answer to ``prompt`` with the table in the module docstring."""
        entity, attribute = self.question(prompt)
        claims, sentences = self.parse(response)
        if not sentences:
            return Judgement(_EMPTY, (), 0, 0, "none")
        score, answered, extra_true = 0.0, "none", 0
        unparsed = sum(c is None for c in claims)
        repeated = len(sentences) - len(set(sentences))
        score += _DISFLUENT * (unparsed + repeated)
        seen: set[str] = set()
        for claim, sentence in zip(claims, sentences):
            if claim is None or sentence in seen:
                seen.add(sentence)
                continue
            seen.add(sentence)
            if claim.kind in FILLER_KINDS:
                score += _UNHELPFUL if claim.kind == "unhelpful" else 0.0
                continue
            about_asked = claim.entity == entity and claim.attribute == attribute
            if about_asked and answered == "none":
                if claim.kind == "evasive":
                    score += _EVASIVE_SCORE
                    answered = "evasive"
                else:
                    true = self.world.facts[entity, attribute] == claim.value
                    score += _ASKED[claim.kind, true]
                    answered = ("" if claim.kind == "fact" else "hedged-") + ("correct" if true else "wrong")
                continue
            if claim.kind == "evasive":
                score += _OFF_TOPIC
            elif claim.entity != entity:
                score += _OFF_TOPIC if self.world.facts[claim.entity, claim.attribute] == claim.value \
                    else _EXTRA_FALSE
            elif self.world.facts[claim.entity, claim.attribute] == claim.value:
                if extra_true < _MAX_EXTRA and claim.attribute != attribute:
                    score += _EXTRA_TRUE
                    extra_true += 1
            else:
                score += _EXTRA_FALSE
        if answered == "none":
            score += _NO_ANSWER
        return Judgement(score, tuple(c for c in claims if c is not None), unparsed, repeated, answered)

    def score(self, prompt: str, response: str) -> float:
        """Return the judge's score of ``response`` for ``prompt`` (higher is better)."""
        return self.judge(prompt, response).score

    def compare(self, prompt: str, first: str, second: str) -> int:
        """Rank two responses shown in this order: +1 if ``first`` is better, -1 if ``second`` is, 0 for a tie."""
        a, b = self.score(prompt, first), self.score(prompt, second)
        return int(a > b) - int(a < b)

    def win_rate(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> dict[str, float]:
        """Win rate of A over B: each prompt judged in both answer orders, a tie counting one half.

        Returns:
            ``win_rate`` (wins + ties/2 over all judgements), ``wins``, ``ties``, ``losses`` (shares), ``n``
            (judgements) and ``per_prompt`` (each prompt's outcome in [0, 1], its two orders averaged: the unit a
            paired bootstrap resamples).
        """
        if not len(prompts) == len(responses_a) == len(responses_b) or not prompts:
            raise ValueError(f"win_rate needs equal, non-empty lists; got {len(prompts)} prompts, "
                             f"{len(responses_a)} and {len(responses_b)} responses")
        outcomes, per_prompt = [], []
        for p, a, b in zip(prompts, responses_a, responses_b):
            pair = (self.compare(p, a, b), -self.compare(p, b, a))
            outcomes.extend(pair)
            per_prompt.append(sum((o + 1) / 2 for o in pair) / 2)
        n = len(outcomes)
        wins, ties = sum(o > 0 for o in outcomes) / n, sum(o == 0 for o in outcomes) / n
        return {"win_rate": wins + 0.5 * ties, "wins": wins, "ties": ties, "losses": 1.0 - wins - ties, "n": n,
                "per_prompt": per_prompt}
