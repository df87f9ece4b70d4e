"""A seeded synthetic world: invented people, one fact per passage, questions only search answers.

Every person has an invented one-word name, a home city (also invented), a job and a mentor, and
each fact is one passage of a Search-R1 corpus whose title is the person:

    {"id": "17", "contents": "\\"Zorvak\\"\\nZorvak was born in Velmora."}

Questions ask for one fact (single-hop) or for a fact about the person's mentor (two-hop: the
mentor's passage names the bridge person, whose own passage holds the answer). Names are
invented, so no model knows the answers: they are in the corpus and nowhere else.

People are split into two groups before anything else and mentors are drawn within a group, so
a held-out question's subject, bridge and answer are all people no training question mentions.
Cities and jobs are values shared by both groups, not entities.

`ScriptedAgent` plays the training questions through the real search rollout, with flaws that
depend on the question kind; its transcripts are the demo's cold-start SFT data.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from research_r1.errors import InputError
from research_r1.generation import Generation
from research_r1.protocol import SEARCH_R1, SEARCH_R1_PROMPT

# kind -> (question pattern, relation read at each hop, in order)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "born": ("Where was {name} born?", ("born",)),
    "job": ("What is the job of {name}?", ("job",)),
    "mentor": ("Who is the mentor of {name}?", ("mentor",)),
    "mentor_born": ("Where was the mentor of {name} born?", ("mentor", "born")),
    "mentor_job": ("What is the job of the mentor of {name}?", ("mentor", "job")),
}

# relation -> the passage that states it
FACTS = {
    "born": "{name} was born in {value}.",
    "job": "The job of {name} is {value}.",
    "mentor": "The mentor of {name} is {value}.",
}

JOBS = (
    "baker", "sailor", "weaver", "potter", "miner", "farmer", "tailor", "painter", "builder",
    "hunter", "scribe", "healer", "smith", "brewer", "fisher", "carpenter", "gardener", "singer",
    "dancer", "merchant",
)  # fmt: skip

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "k", "th")


@dataclass(frozen=True)
class Person:
    name: str
    born: str
    job: str
    mentor: str


@dataclass(frozen=True)
class Question:
    """One question; `chain` is the people it goes through (subject, then the bridge if any)."""

    id: str
    kind: str
    question: str
    answer: str
    chain: tuple[str, ...]


@dataclass(frozen=True)
class World:
    people: dict[str, Person]
    passages: list[dict[str, str]]  # Search-R1 corpus rows
    train: list[Question]
    test: list[Question]
    cities: tuple[str, ...]

    def values(self, relation: str, names: Sequence[str]) -> tuple[str, ...]:
        """What an answer to `relation` can be: cities, jobs, or one of `names` (mentors)."""
        return {"born": self.cities, "job": JOBS}.get(relation, tuple(names))


def invent_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` new capitalised pronounceable words, none in `taken` (which they are added to)."""
    words: list[str] = []
    while len(words) < count:
        syllables = rng.choice((2, 2, 3))
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        ).capitalize()
        if word.lower() not in taken and 5 <= len(word) <= 10:
            taken.add(word.lower())
            words.append(word)
    return words


def build_world(
    seed: int,
    *,
    num_people: int = 480,
    num_cities: int = 30,
    test_fraction: float = 0.25,
    num_test_questions: int = 400,
) -> World:
    """The world for `seed`: the same seed always gives the same people, passages and questions.

    Every training person's questions (all kinds) go to `train`; `test` is `num_test_questions`
    held-out questions, the same number of each kind.
    """
    if num_people < 8:
        raise InputError(
            f"num_people must be at least 8 (both groups need mentors), got {num_people}"
        )
    rng = random.Random(seed)
    # Invented words never coincide with a word of the prompt, questions or passages.
    known = SEARCH_R1_PROMPT + "".join(p for p, _ in KINDS.values()) + "".join(FACTS.values())
    taken = set(re.findall(r"[a-z]+", known.lower())) | set(JOBS)
    cities = tuple(invent_words(rng, num_cities, taken))
    names = invent_words(rng, num_people, taken)
    held_out = max(2, round(num_people * test_fraction))
    groups = {"test": names[:held_out], "train": names[held_out:]}

    people: dict[str, Person] = {}
    for group in groups.values():
        for name in group:
            mentor = rng.choice([other for other in group if other != name])
            people[name] = Person(name, rng.choice(cities), rng.choice(JOBS), mentor)

    facts = [(name, relation) for name in names for relation in FACTS]
    rng.shuffle(facts)
    passages = [
        {
            "id": str(index),
            "contents": f'"{name}"\n'
            + FACTS[relation].format(name=name, value=getattr(people[name], relation)),
        }
        for index, (name, relation) in enumerate(facts)
    ]

    def question(name: str, kind: str) -> Question:
        pattern, relations = KINDS[kind]
        chain, value = [name], name
        for relation in relations:
            value = getattr(people[value], relation)
            chain.append(value)
        return Question(
            id=f"{kind}-{name}",
            kind=kind,
            question=pattern.format(name=name),
            answer=value,
            chain=tuple(chain[: len(relations)]),
        )

    train = [question(name, kind) for name in groups["train"] for kind in KINDS]
    rng.shuffle(train)
    per_kind = -(-num_test_questions // len(KINDS))
    test: list[Question] = []
    for kind in KINDS:
        chosen = rng.sample(groups["test"], min(per_kind, len(groups["test"])))
        test += [question(name, kind) for name in chosen]
    rng.shuffle(test)
    return World(people, passages, train, test[:num_test_questions], cities)


def write_corpus(world: World, path: Path) -> Path:
    """The passages as a Search-R1 corpus (JSON lines `{"id", "contents"}`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        for passage in world.passages:
            file.write(json.dumps(passage) + "\n")
    return path


def write_questions(questions: Sequence[Question], path: Path) -> Path:
    """Questions as a FlashRAG QA file (`{"id", "question", "golden_answers", "metadata"}`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        for q in questions:
            row = {
                "id": q.id,
                "question": q.question,
                "golden_answers": [q.answer],
                "metadata": {"kind": q.kind, "chain": list(q.chain)},
            }
            file.write(json.dumps(row) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# A scripted agent: the imperfect teacher of the cold-start SFT

# How the scripted agent plays each kind of question: behaviour -> probability. The flaws depend
# on the kind, so the greedy policy after SFT skips search or stops early on some kinds; that is
# what GRPO can fix, because sampled episodes that search well earn the reward.
FLAWS: dict[str, dict[str, float]] = {
    "born": {"guess": 0.8, "search": 0.2},
    "job": {"search": 0.85, "vague": 0.15},
    "mentor": {"search": 0.85, "vague": 0.15},
    "mentor_born": {"one_hop": 0.8, "search": 0.2},
    "mentor_job": {"guess": 0.75, "search": 0.25},
}

QUERIES = {"born": "{name} born", "job": "job of {name}", "mentor": "mentor of {name}"}
# The agent's turns. After a search it restates the fact it read, as Search-R1's reasoning
# summarises what came back, then searches on or answers.
FIRST_SEARCH = "<think> I must search </think>\n<search> {query} </search>"
NEXT_SEARCH = "<think> {fact} </think>\n<search> {query} </search>"
ANSWER = "<think> {fact} </think>\n<answer> {answer} </answer>"
GUESS = "<think> I already know </think>\n<answer> {answer} </answer>"
NOT_FOUND = "<think> I found nothing </think>\n<answer> {answer} </answer>"
TURNS = (FIRST_SEARCH, NEXT_SEARCH, ANSWER, GUESS, NOT_FOUND)

_INFORMATION = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_FACT_PATTERNS = {
    relation: re.compile(
        "^"
        + re.escape(text)
        .replace(r"\{name\}", r"(?P<name>\S+)")
        .replace(r"\{value\}", r"(?P<value>\S+)")
        + "$"
    )
    for relation, text in FACTS.items()
}


def read_fact(passages: str, relation: str, name: str | None) -> tuple[str, str] | None:
    """(person, value) of the first of an observation's passages (`Doc i(Title: t) text` lines)
    that states `relation` for `name` (for anyone when `name` is None), or None if none does."""
    for passage in SEARCH_R1.passages.parse(passages):
        match = _FACT_PATTERNS[relation].match(passage.text.strip())
        if match and (name is None or match["name"] == name):
            return match["name"], match["value"]
    return None


class ScriptedAgent:
    """A `Generator` that plays questions by script: it reads the observations the real rollout
    inserted and writes each next turn as text, one behaviour per question (`FLAWS`).

    Behaviours: `search` (every hop, then answer what the passages say), `guess` (answer at
    once with a random value of the right type), `vague` (search the relation without the name,
    then answer what comes back), `one_hop` (stop after the first hop and answer the bridge).
    """

    def __init__(self, world: World, tokenizer, seed: int) -> None:
        self.world = world
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.plans: dict[tuple[int, ...], tuple[Question, str]] = {}
        self.prompt_lengths: set[int] = set()
        self.train_names = sorted({q.chain[0] for q in world.train})

    def plan(self, prompt_ids: Sequence[int], question: Question, behaviour: str) -> None:
        """Play `question`, whose prompt encodes to `prompt_ids`, with `behaviour`."""
        self.plans[tuple(prompt_ids)] = (question, behaviour)
        self.prompt_lengths.add(len(prompt_ids))

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            question, behaviour, completion = self._find(context)
            ids = self.tokenizer.encode(
                self._next_turn(question, behaviour, completion), add_special_tokens=False
            )
            finish = "stop" if len(ids) <= budget else "length"
            ids = ids[:budget]
            generations.append(Generation(ids, [0.0] * len(ids), finish))
        return generations

    def _find(self, context: Sequence[int]) -> tuple[Question, str, str]:
        for length in self.prompt_lengths:
            plan = self.plans.get(tuple(context[:length]))
            if plan is not None:
                return *plan, self.tokenizer.decode(context[length:])
        raise KeyError("a context matches no planned prompt")

    def _next_turn(self, question: Question, behaviour: str, completion: str) -> str:
        relations = KINDS[question.kind][1]
        observations = _INFORMATION.findall(completion)
        hop = len(observations)
        if behaviour == "guess":
            return GUESS.format(answer=self._guess(relations[-1]))
        if hop == 0:
            subject = None if behaviour == "vague" else question.chain[0]
            return FIRST_SEARCH.format(query=self._query(relations[0], subject))
        relation = relations[hop - 1]
        name = None if behaviour == "vague" else question.chain[hop - 1]
        read = read_fact(observations[-1], relation, name)
        if read is None:
            return NOT_FOUND.format(answer=self._guess(relations[-1]))
        fact = FACTS[relation].format(name=read[0], value=read[1])
        if behaviour == "search" and hop < len(relations):
            return NEXT_SEARCH.format(fact=fact, query=self._query(relations[hop], read[1]))
        return ANSWER.format(fact=fact, answer=read[1])

    @staticmethod
    def _query(relation: str, name: str | None) -> str:
        """The query for `relation` of `name`; a vague one (no name) names the relation only."""
        return relation if name is None else QUERIES[relation].format(name=name)

    def _guess(self, relation: str) -> str:
        return self.rng.choice(self.world.values(relation, self.train_names))
