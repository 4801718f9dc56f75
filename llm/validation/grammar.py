"""The synthetic world's grammar: attributes and their wordings, answer frames, fillers and unrelated sentences.

Every sentence of the world is a ``Claim`` rendered by ``claim_text``; the judge (``llm.validation.judge``) parses
sentences back with the same templates, so it knows exactly what a response states. Words are separated by single
spaces and punctuation is its own word. Several wordings per fact, several hedges, evasions, openers, closers and
unhelpful remarks give the answers real lexical variety, as in Anthropic-HH, where y+ and y- are independent
responses rather than token edits of each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Attribute", "Claim", "ATTRIBUTES", "HEDGES", "EVASIONS", "OPENERS", "CLOSERS", "UNHELPFUL", "HUM",
           "FILLER_KINDS", "claim_text", "response_text"]


@dataclass(frozen=True)
class Attribute:
    """One attribute of the world's entities and every way the grammar phrases it.

    ``wordings`` are the fact templates (``{e}`` entity, ``{v}`` value, no final period); ``wh`` is the indirect
    question used by evasions; ``questions`` are the prompt wordings.
    """

    name: str
    values: tuple[str, ...]
    questions: tuple[str, ...]
    wordings: tuple[str, ...]
    wh: str


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("home", ("belmar", "dorvin", "ostrel", "kalvik", "merrow", "tulsen", "varnby", "quenna", "harlow",
                       "esmont", "brisca", "nolden", "palmyre", "westhal", "corrin", "ambleth", "sorvik", "tarnow"),
              ("where does {e} live ?", "in which town does {e} live ?", "do you know where {e} lives ?"),
              ("{e} lives in {v}", "the home town of {e} is {v}", "{e} has a house in the town of {v}"),
              "where {e} lives"),
    Attribute("food", ("apples", "bread", "rice", "fish", "cheese", "soup", "honey", "plums", "beans", "cake",
                       "noodles", "olives", "pears", "mushrooms", "dumplings", "oranges"),
              ("what food does {e} like ?", "what does {e} like to eat ?", "which dish does {e} enjoy most ?"),
              ("{e} likes to eat {v}", "the favourite food of {e} is {v}", "for dinner {e} always wants {v}"),
              "what {e} likes to eat"),
    Attribute("job", ("baker", "farmer", "doctor", "teacher", "painter", "sailor", "singer", "miner", "tailor",
                      "guard", "carpenter", "nurse", "pilot", "butcher", "weaver", "clerk"),
              ("what does {e} do for work ?", "what is the job of {e} ?", "how does {e} earn a living ?"),
              ("{e} works as a {v}", "by trade , {e} is a {v}", "every day {e} goes to work as a {v}"),
              "what {e} does for work"),
    Attribute("pet", ("cat", "dog", "horse", "goat", "parrot", "rabbit", "owl", "fox", "turtle", "hamster",
                      "lizard", "pigeon"),
              ("what pet does {e} have ?", "which animal does {e} keep ?", "does {e} own a pet ?"),
              ("{e} has a pet {v}", "at home , {e} keeps a {v}", "{e} takes care of a {v}"),
              "what pet {e} has"),
    Attribute("color", ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver",
                        "brown"),
              ("what is the favourite color of {e} ?", "which color does {e} like ?",
               "what color does {e} prefer ?"),
              ("{e} likes the color {v}", "the color that {e} loves most is {v}", "{e} paints everything {v}"),
              "which color {e} likes"),
    Attribute("hobby", ("chess", "fishing", "running", "painting", "dancing", "gardening", "knitting", "cooking",
                        "swimming", "reading", "hiking", "pottery"),
              ("what is the hobby of {e} ?", "what does {e} do for fun ?", "how does {e} spend free time ?"),
              ("in free time , {e} enjoys {v}", "the hobby of {e} is {v}", "{e} spends weekends on {v}"),
              "what {e} does for fun"),
    Attribute("music", ("flute", "drum", "violin", "harp", "guitar", "piano", "trumpet", "cello", "banjo",
                        "organ"),
              ("which instrument does {e} play ?", "what music does {e} make ?",
               "what instrument can {e} play ?"),
              ("{e} plays the {v}", "the instrument of {e} is the {v}", "most evenings {e} practises the {v}"),
              "which instrument {e} plays"),
)}

# Frames around a fact body {s} (hedges) or an indirect question {w} (evasions).
HEDGES = ("i think {s} , but i am not sure", "perhaps {s}", "it might be that {s}", "if i remember well , {s}")
EVASIONS = ("sorry , i do not know {w}", "i am afraid i can not say {w}", "nobody has told me {w}",
            "that is private , so i will not tell you {w}")
# Sentences that carry no fact: neutral openers and closers, and unhelpful remarks.
OPENERS = ("sure , here is what i know .", "good question .", "let me help with that .", "happy to answer .",
           "of course .", "thanks for asking .")
CLOSERS = ("i hope this helps .", "let me know if you need more .", "feel free to ask again .",
           "have a nice day .", "is there anything else ?")
UNHELPFUL = ("that is a strange thing to ask .", "you should look it up yourself .", "why do you want to know ?",
             "i would rather talk about the weather .", "questions like this are boring .",
             "maybe ask someone else .")
FILLER_KINDS = {"opener": OPENERS, "closer": CLOSERS, "unhelpful": UNHELPFUL}

# A grammar of fluent sentences unrelated to the facts (y_hum); its words never occur in a fact.
HUM = {
    "det": ("the", "a", "one", "that"),
    "adj": ("old", "quiet", "tall", "small", "bright", "cold", "gentle", "busy", "narrow", "wooden", "sleepy",
            "distant", "muddy", "golden", "empty", "crooked", "shiny", "dusty", "heavy", "tiny"),
    "noun": ("man", "woman", "child", "bird", "river", "train", "garden", "lamp", "ship", "window", "bridge",
             "forest", "kettle", "ladder", "tower", "wagon", "meadow", "candle", "stranger", "merchant", "lantern",
             "harbour", "chimney", "orchard", "pebble", "blanket", "village", "market"),
    "verb": ("walked", "waited", "rested", "sang", "stood", "slept", "danced", "looked", "wandered", "trembled",
             "glowed", "leaned", "drifted", "shivered", "whispered", "lingered", "rattled", "sparkled"),
    "prep": ("near", "behind", "under", "beside", "across", "beyond", "below", "against"),
    "time": ("in the morning", "at night", "after the rain", "before supper", "all day", "during the storm",
             "at dawn", "in the autumn", "once again", "without a sound"),
}


@dataclass(frozen=True)
class Claim:
    """One sentence's meaning.

    ``kind``: "fact", "hedged", "evasive" (about ``entity``'s ``attribute``; value None for evasive) or a filler
    kind ("opener", "closer", "unhelpful": no entity). ``wording`` indexes the attribute's fact wordings; ``frame``
    indexes the hedge, evasion or filler template.
    """

    kind: str
    entity: str | None
    attribute: str | None
    value: str | None
    wording: int = 0
    frame: int = 0


def claim_text(claim: Claim) -> str:
    """Render one claim as a sentence ending with " ."."""
    if claim.kind in FILLER_KINDS:
        return FILLER_KINDS[claim.kind][claim.frame]
    attr = ATTRIBUTES[claim.attribute]
    if claim.kind == "evasive":
        return EVASIONS[claim.frame].format(w=attr.wh.format(e=claim.entity)) + " ."
    body = attr.wordings[claim.wording].format(e=claim.entity, v=claim.value)
    if claim.kind == "hedged":
        body = HEDGES[claim.frame].format(s=body)
    return body + " ."


def response_text(claims: list[Claim]) -> str:
    """Join claims into a response with the leading space HH responses have."""
    return " " + " ".join(claim_text(c) for c in claims)
