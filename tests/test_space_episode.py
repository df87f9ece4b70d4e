"""research_r1.space.episode: an episode's steps as the Space shows them, read from a finished
episode (`transcript_turns`); the live view (`LiveTurns`) is driven by test_space_app.py's
streaming tests."""

from __future__ import annotations

import pytest
from helpers import (
    ANSWER_TURN,
    HAMLET_PAIRS,
    SEARCH_TURN,
    HamletRetriever,
    Scripted,
    hamlet_tokenizer,
)

from research_r1.protocol import RESEARCH, SEARCH_R1
from research_r1.rollout import FINAL_TURN_NOTICE, Episode, RolloutConfig, run_rollout
from research_r1.space.episode import Turn, transcript_turns

HAMLET_TURNS = [
    Turn("think", "I need the author."),
    Turn("search", "hamlet author", HAMLET_PAIRS),
    Turn("think", "Shakespeare wrote it."),
    Turn("answer", "William Shakespeare"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return hamlet_tokenizer()


def play(tokenizer, turns: list[str], protocol=SEARCH_R1, **limits) -> Episode:
    [episode] = run_rollout(
        [tokenizer.encode("Question: who wrote hamlet?\n")],
        generator=Scripted(tokenizer, turns),
        tokenizer=tokenizer,
        retriever=HamletRetriever(),
        protocol=protocol,
        config=RolloutConfig(k=2, **limits),
    )
    return episode


def test_turns_of_a_search_then_an_answer(tokenizer):
    episode = play(tokenizer, [SEARCH_TURN, ANSWER_TURN])
    assert episode.answered and episode.queries == ["hamlet author"]
    assert transcript_turns(episode, tokenizer, SEARCH_R1) == HAMLET_TURNS


def test_turns_of_research_read_the_boxed_answer(tokenizer):
    answer = "<answer> The final answer is \\[ \\boxed{William Shakespeare} \\] </answer>"
    episode = play(tokenizer, ["<search> hamlet author </search>", answer], protocol=RESEARCH)
    assert transcript_turns(episode, tokenizer, RESEARCH) == [
        Turn("search", "hamlet author", HAMLET_PAIRS),
        Turn("answer", "William Shakespeare"),
    ]


def test_invalid_steps_and_notices_become_notice_turns(tokenizer):
    turns = [
        "I am not sure",
        "<search> hamlet </search>",
        "<think> still nothing </think> <search> hamlet author </search>",
    ]
    episode = play(tokenizer, turns, max_turns=2)
    assert not episode.answered
    assert transcript_turns(episode, tokenizer, SEARCH_R1) == [
        Turn("think", "I am not sure"),
        Turn("notice", SEARCH_R1.invalid_notice.strip()),
        Turn("search", "hamlet", HAMLET_PAIRS),
        Turn("notice", FINAL_TURN_NOTICE.strip()),
        Turn("think", "still nothing"),
        Turn("search", "hamlet author"),  # the last turn's search is never run
    ]


def test_passages_of_an_observation_cut_mid_title(tokenizer):
    observation = (
        "\n\n<information>Doc 1(Title: A (b)) one\ntwo\nDoc 2(Title: Cut (ti</information>"
    )
    model, inserted = (tokenizer.encode(t) for t in ("<search> q </search>", observation))
    episode = Episode(
        prompt_ids=[0],
        completion_ids=model + inserted,
        env_mask=[1] * len(model) + [0] * len(inserted),
    )
    assert transcript_turns(episode, tokenizer, SEARCH_R1) == [
        Turn("search", "q", (("A (b)", "one\ntwo"), ("Cut (ti", ""))),
    ]
