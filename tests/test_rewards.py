"""The rewards (research_r1.rewards): answer scoring, the reward functions through TRL's
signature, and rewards named in the registry or by import path."""

from __future__ import annotations

import re
from typing import Any

import pytest

from research_r1.errors import InputError
from research_r1.protocol import (
    FINAL_TURN_NOTICE,
    RESEARCH,
    SEARCH_R1,
    SEARCH_R1_INVALID_NOTICE,
    TEMPLATES,
    follows_format,
    is_valid_search_r1_sequence,
)
from research_r1.retrieval import Passage
from research_r1.rewards import (
    REWARDS,
    completion_text,
    cover_match,
    exact_match,
    get_reward,
    make_format_em_reward,
    normalize_answer,
    research_f1,
    search_r1_em,
    search_r1_format_em,
    token_f1,
)

# ---------------------------------------------------------------------------------------------
# Normalisation and scoring


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "paris"),
        ("The  Eiffel Tower!", "eiffel tower"),
        ("  A cat, an apple & the dog. ", "cat apple dog"),
        ("Theatre of the Absurd", "theatre of absurd"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("Who's there?", "whos there"),
        ("tab\tand\nnewline", "tab and newline"),
        ("Pelé", "pelé"),  # accented letters stay letters
        ("Pele\u0301", "pelé"),  # decomposed accent composes (NFKC)
        ("Ｐａｒｉｓ，　Ｆｒａｎｃｅ", "paris france"),  # full-width letters and comma fold
        ("\ufb01nal", "final"),  # the "fi" ligature folds
        ("x²", "x2"),
        ("Rock ’n’ roll", "rock ’n’ roll"),  # non-ASCII punctuation stays, as upstream
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", ["paris"], 1.0),
        ("  the PARIS. ", ["Paris"], 1.0),
        ("Paris, France", ["Paris"], 0.0),
        ("Lennon", ["John Lennon", "Lennon"], 1.0),  # any gold
        ("Beatles", "The Beatles", 1.0),  # a bare string is one gold, not characters
        ("B", "The Beatles", 0.0),
        ("Pelé", ["Pele"], 0.0),
        ("Pele\u0301", ["Pelé"], 1.0),
        ("x", [], 0.0),
        (None, ["Paris"], 0.0),
        ("", ["Paris"], 0.0),
        ("the", ["a"], 1.0),  # both normalise to nothing, as upstream
    ],
)
def test_exact_match(prediction: str | None, golds: Any, expected: float) -> None:
    assert exact_match(prediction, golds) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris, France", ["paris"], 1.0),
        ("It is the city of Paris.", ["Lyon", "Paris"], 1.0),
        ("Parisian", ["Paris"], 1.0),  # character substring, as FlashRAG's "acc"
        ("Lyon", ["Paris"], 0.0),
        ("Paris", ["Paris, France"], 0.0),
        ("anything", ["The"], 0.0),  # an empty gold covers nothing but an empty prediction
        ("the", ["The"], 1.0),
        (None, ["Paris"], 0.0),
        ("Paris", [], 0.0),
    ],
)
def test_cover_match(prediction: str | None, golds: Any, expected: float) -> None:
    assert cover_match(prediction, golds) == expected


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", ["paris"], 1.0),
        ("Eiffel Tower", ["the Eiffel tower in Paris"], 2 / 3),  # P 1, R 2/4
        ("Barack Obama Jr.", ["Barack Obama"], 4 / 5),  # P 2/3, R 1
        ("x x", ["x x x"], 4 / 5),  # counts clip: P 1, R 2/3
        ("x y x", ["x"], 1 / 2),  # P 1/3, R 1
        ("new york city", ["York", "New York City"], 1.0),  # best gold
        ("new york", ["York", "new jersey"], 2 / 3),  # max(2/3, 1/2)
        ("yes", ["yes"], 1.0),
        ("Yes.", ["no"], 0.0),
        ("no", ["no way"], 0.0),  # yes/no/noanswer: exact or nothing
        ("no way", ["no"], 0.0),
        ("noanswer", ["no answer"], 0.0),
        ("Lyon", ["Paris"], 0.0),
        ("", ["Paris"], 0.0),
        ("the", ["the"], 0.0),  # no tokens left: F1 0 (EM would say 1)
        (None, ["Paris"], 0.0),
        ("Paris", "Paris", 1.0),
    ],
)
def test_token_f1(prediction: str | None, golds: Any, expected: float) -> None:
    assert token_f1(prediction, golds) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Observations the rewards read (the format checks themselves are tested in test_protocol.py)

INFO = SEARCH_R1.observation([Passage("1", '"Paris"\nParis is in France.', 1.0)])
RESULT = RESEARCH.observation([Passage("1", '"Paris"\nParis is in France.', 1.0)])


# ---------------------------------------------------------------------------------------------
# Reward functions through TRL's signature

SEARCH_R1_PROMPT = TEMPLATES["search_r1"].prompt("What is the capital of France?")
RESEARCH_PROMPT = TEMPLATES["research_instruct"].prompt("What is the capital of France?")


def _call(reward: Any, completions: list[str], golds: list[Any], conversational: bool, **extra):
    """Call a reward as GRPOTrainer does, with string or chat-message prompts/completions."""
    if conversational:
        prompts = [SEARCH_R1_PROMPT] * len(completions)
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    else:
        prompts = [SEARCH_R1_PROMPT[0]["content"]] * len(completions)
    return reward(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2, 3]] * len(completions),
        golden_answers=golds,
        trainer_state=None,
        data_source=["nq"] * len(completions),
        **extra,
    )


EM_CASES = [
    ("<think>a</think><answer> Paris </answer>", ["Paris"], 1.0),
    ("<think>a</think><answer>the paris.</answer>", ["Paris"], 1.0),
    ("<think>a</think><answer>Lyon</answer>", ["Paris", "Lyon"], 1.0),
    # The prompt shows `<answer> Beijing </answer>`: only the completion counts.
    ("<think>a</think><answer>Shanghai</answer>", ["Beijing"], 0.0),
    ("<think>I do not know</think>", ["Beijing"], 0.0),
    ("<think>a</think><answer>Beijing", ["Beijing"], 0.0),  # unclosed
    ("<think>a</think><answer></answer>", ["Beijing"], 0.0),  # empty
    ("<answer>Lyon</answer><answer>Paris</answer>", ["Paris"], 1.0),  # duplicated: the last
    ("<answer>Paris</answer><answer>Lyon</answer>", ["Paris"], 0.0),
    ("<answer>x <answer>Paris</answer>", ["Paris"], 0.0),  # nested: "x <answer>Paris"
    ("Paris", ["Paris"], 0.0),  # no tags
    # The rollout's invalid-action notice spells `<answer> and </answer>`: never the answer.
    (f"<think>a</think>{SEARCH_R1_INVALID_NOTICE}<think>b</think>", ["and"], 0.0),
]


@pytest.mark.parametrize("conversational", [False, True])
def test_search_r1_em(conversational: bool) -> None:
    completions = [c for c, _, _ in EM_CASES]
    golds = [g for _, g, _ in EM_CASES]
    expected = [r for _, _, r in EM_CASES]
    assert _call(search_r1_em, completions, golds, conversational) == expected


VALID_RIGHT = f"<think>a</think><search>q</search>{INFO}<think>b</think><answer>Paris</answer>"
VALID_WRONG = "<think>a</think><answer>Lyon</answer>"
INVALID_RIGHT = "<answer>Paris</answer>"  # answers without thinking
INVALID_WRONG = "<think>a</think><answer>Lyon</answer> trailing"
NO_ANSWER = "<think>a</think><search>q</search>"
NOTICE_NO_ANSWER = f"<think>a</think>{SEARCH_R1_INVALID_NOTICE}<think>b</think>"
FORMAT_CASES = [VALID_RIGHT, VALID_WRONG, INVALID_RIGHT, INVALID_WRONG, NO_ANSWER, NOTICE_NO_ANSWER]


@pytest.mark.parametrize("conversational", [False, True])
def test_search_r1_format_em_default_values(conversational: bool) -> None:
    rewards = _call(search_r1_format_em, FORMAT_CASES, [["Paris"]] * 6, conversational)
    assert rewards == [1.0, 0.2, 0.8, 0.1, 0.0, 0.0]


def test_search_r1_format_em_configured_values() -> None:
    reward = make_format_em_reward(
        correct_valid=2.0, correct_invalid=1.5, wrong_valid=0.5, wrong_invalid=0.25
    )
    assert reward.__name__ == "search_r1_format_em"
    assert _call(reward, FORMAT_CASES, [["Paris"]] * 6, False) == [2.0, 0.5, 1.5, 0.25, 0.0, 0.0]
    configured = get_reward("search_r1_format_em", wrong_valid=0.0)
    assert _call(configured, FORMAT_CASES, [["Paris"]] * 6, True) == [1.0, 0.0, 0.8, 0.1, 0.0, 0.0]


FOUND_WRONG = (  # valid, wrong answer, but the search brought back the gold (Paris, in INFO)
    f"<think>a</think><search>q</search>{INFO}<think>b</think><answer>Lyon</answer>"
)
INVALID_FOUND_WRONG = f"<search>q</search>{INFO}<answer>Lyon</answer>"  # no <think>: invalid


def test_search_r1_format_em_retrieval_credit() -> None:
    """Upstream's retrieval branch: a valid sequence with a wrong answer whose `<information>`
    holds a gold answer earns structure_format_score + retrieval_score (0 by default)."""
    cases = [FOUND_WRONG, VALID_WRONG, INVALID_FOUND_WRONG, VALID_RIGHT]
    assert _call(search_r1_format_em, cases, [["Paris"]] * 4, False) == [0.2, 0.2, 0.1, 1.0]
    credited = get_reward("search_r1_format_em", retrieval=0.1)
    assert _call(credited, cases, [["Paris"]] * 4, True) == [0.2 + 0.1, 0.2, 0.1, 1.0]
    # Another gold (Berlin) is not in the passages; a gold that normalises to nothing never is.
    assert _call(credited, [FOUND_WRONG] * 2, [["Berlin"], ["The"]], False) == [0.2, 0.2]
    assert _call(credited, [FOUND_WRONG], [["berlin", "PARIS!"]], False) == [0.2 + 0.1]


def test_the_last_turn_notice_costs_no_format_bonus() -> None:
    """Our rollout warns before the last turn; Search-R1 has no such notice, and its grammar
    alone would call the sequence invalid. The invalid-step notice still invalidates."""
    warned = f"<think>a</think><search>q</search>{INFO}{FINAL_TURN_NOTICE}<think>b</think>"
    warned += "<answer>Paris</answer>"
    assert is_valid_search_r1_sequence(warned)[0] is False
    assert follows_format(warned, SEARCH_R1) == (True, "valid sequence")
    assert _call(search_r1_format_em, [warned], [["Paris"]], False) == [1.0]
    assert follows_format(NOTICE_NO_ANSWER, SEARCH_R1)[0] is False


def test_format_rewards_log_the_valid_rate() -> None:
    logged: list[tuple[str, float]] = []
    _call(
        search_r1_format_em,
        FORMAT_CASES,
        [["Paris"]] * 6,
        False,
        log_metric=lambda name, value: logged.append((name, value)),
    )
    assert logged == [("search_r1_format_em/valid_format", 2 / 6)]


R_VALID_RIGHT = (
    f"<think>a</think><search>q</search>{RESULT}<think>b</think>"
    "<answer>The answer is \\[ \\boxed{Paris} \\]</answer>"
)
R_PARTIAL = "<think>a</think><answer>\\boxed{Eiffel Tower}</answer>"
R_VALID_WRONG = "<think>a</think><answer>\\boxed{Lyon}</answer>"
R_INVALID_RIGHT = "<answer>\\boxed{Paris}</answer>"  # no think
R_NO_BOX = "<think>a</think><answer>Paris</answer>"
R_UNCLOSED_LAST_BOX = "<think>a</think><answer>\\boxed{Paris} or \\boxed{Lyon</answer>"
R_CASES = [R_VALID_RIGHT, R_PARTIAL, R_VALID_WRONG, R_INVALID_RIGHT, R_NO_BOX, R_UNCLOSED_LAST_BOX]
R_GOLDS = [["Paris"], ["the Eiffel tower in Paris"], ["Paris"], ["Paris"], ["Paris"], ["Paris"]]


@pytest.mark.parametrize("conversational", [False, True])
def test_research_f1(conversational: bool) -> None:
    rewards = _call(research_f1, R_CASES, R_GOLDS, conversational)
    assert rewards == pytest.approx([1.0, 2 / 3, 0.1, 0.0, 0.0, 0.0], abs=1e-12)


def test_research_f1_truncated_scores_zero() -> None:
    truncated = [False, True, True, False, False, False]
    rewards = _call(research_f1, R_CASES, R_GOLDS, False, truncated=truncated)
    assert rewards == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], abs=1e-12)
    absent = _call(research_f1, R_CASES, R_GOLDS, False, truncated=None)
    assert absent == pytest.approx([1.0, 2 / 3, 0.1, 0.0, 0.0, 0.0], abs=1e-12)


def test_completion_text() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    assert completion_text([{"role": "assistant", "content": None, "tool_calls": []}]) == ""
    assert completion_text([{"role": "assistant", "content": "a"}, {"content": "b"}]) == "ab"


def test_rewards_need_the_gold_column() -> None:
    with pytest.raises(InputError, match="reward 'search_r1_em' needs the dataset column "):
        search_r1_em(prompts=["p"], completions=["c"], completion_ids=[[1]])
    with pytest.raises(InputError, match="'golden_answers' has 1 rows for 2 completions"):
        research_f1(prompts=["p"] * 2, completions=["c"] * 2, golden_answers=[["x"]])
    with pytest.raises(InputError, match="'truncated' has 1 rows for 2 completions"):
        research_f1(
            prompts=["p"] * 2, completions=["c"] * 2, golden_answers=[["x"]] * 2, truncated=[True]
        )


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_names() -> None:
    assert list(REWARDS) == ["search_r1_em", "search_r1_format_em", "research_f1"]
    for name, reward in REWARDS.items():
        assert reward.__name__ == name  # TRL logs each reward under its function's name
        assert get_reward(name) is reward


def test_get_reward_errors() -> None:
    with pytest.raises(
        InputError,
        match="unknown reward 'em'; known rewards: search_r1_em, search_r1_format_em, research_f1",
    ):
        get_reward("em")
    with pytest.raises(InputError, match=r"reward 'search_r1_em' has no options \['scale'\]"):
        get_reward("search_r1_em", scale=2.0)
    with pytest.raises(
        InputError,
        match=r"reward 'search_r1_format_em' has no options \['bonus'\]; its options: "
        r"\['correct_invalid', 'correct_valid', 'retrieval', 'wrong_invalid', 'wrong_valid'\]",
    ):
        get_reward("search_r1_format_em", bonus=1.0)


def custom_reward(prompts, completions, completion_ids=None, *, scale=1.0, **columns):
    """A reward a user names by import path (tests.test_rewards.custom_reward)."""
    return [scale * len(completion_text(c)) for c in completions]


def test_rewards_by_import_path_with_options() -> None:
    path_to_custom = f"{__name__}.custom_reward"
    assert get_reward(path_to_custom) is custom_reward
    scaled = get_reward(path_to_custom, scale=2.0)
    assert scaled.__name__ == "custom_reward"  # TRL logs a reward under its function's name
    assert _call(scaled, ["abc", "de"], [["x"], ["y"]], False) == [6.0, 4.0]
    assert get_reward("research_r1.rewards.search_r1_em") is search_r1_em
    for path, message in [
        ("no_such_pkg.reward", "reward 'no_such_pkg.reward': cannot import module 'no_such_pkg'"),
        ("research_r1.rewards.nothing", "module 'research_r1.rewards' has no 'nothing'"),
        ("research_r1.rewards.REWARDS", "reward 'research_r1.rewards.REWARDS' is not a function"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            get_reward(path)
    with pytest.raises(InputError, match=re.escape("takes no options ['sacle']; its options: [")):
        get_reward(path_to_custom, sacle=2.0)  # misspelt: **columns would have swallowed it
