"""Evaluation suites: the settings papers report their numbers in, as data.

A number means something only with its setting: the question sets and splits, the corpus and
retriever, how many passages a search returns, the turn and token budgets, and the metric. A
suite names one such setting; `research-r1 eval` runs it, and the leaderboard ranks together
only the runs whose `setting` strings agree. Any key can be overridden for one run
(`dataclasses.replace`), which changes the setting string wherever it changes the setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from research_r1.errors import InputError

# Search-R1's retriever: e5-base-v2 over wiki-18, its published flat index (recipes/retrievers/
# e5_wiki18_flat.yaml holds the same settings with comments).
E5_WIKI18: Mapping[str, Any] = {
    "type": "dense",
    "index": "hf://datasets/PeterJinGo/wiki-18-e5-index",
    "corpus": "hf://datasets/PeterJinGo/wiki-18-corpus/wiki-18.jsonl.gz",
    "encoder": "intfloat/e5-base-v2",
    "query_prompt": "query: ",
    "device": "auto",
    "batch_size": 256,
}


@dataclass(frozen=True)
class Suite:
    """One published setting.

    `datasets` maps FlashRAG dataset names to the split the papers score (`test` when a set has
    one, else `dev`). The token budget is either a whole context (`max_context`: prompt and
    completion, Search-R1) or a completion length (`max_completion_tokens`, ReSearch).
    `question_mark`: questions are stripped and get a `?` when they lack one, as Search-R1's
    evaluation prepares them.
    """

    name: str
    datasets: Mapping[str, str]
    retriever: Mapping[str, Any] | str
    retriever_label: str
    k: int
    max_turns: int
    max_new_tokens: int
    max_observation_tokens: int
    metric: str = "em"
    max_context: int | None = None
    max_completion_tokens: int | None = None
    question_mark: bool = False
    subset: int | None = None  # a fixed sample per set (Bamboogle always whole)
    whole_sets: tuple[str, ...] = field(default=("bamboogle",))

    def __post_init__(self) -> None:
        if (self.max_context is None) == (self.max_completion_tokens is None):
            raise InputError(
                f"suite {self.name}: give exactly one of max_context and max_completion_tokens"
            )

    @property
    def setting(self) -> str:
        """What makes numbers comparable, as one string: runs are ranked together only when
        theirs agree."""
        parts = [self.name, self.retriever_label, f"top-{self.k}", self.metric.upper()]
        if self.subset is not None:
            parts.append(f"{self.subset} per set")
        return " · ".join(parts)


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        # Search-R1 (and most follow-ups): seven sets, e5 wiki-18 top-3, at most 4 searches then a
        # final turn, 500 new tokens per turn, observations cut to 500 tokens, 4,096 in context.
        Suite(
            name="search_r1",
            datasets={
                "nq": "test",
                "triviaqa": "test",
                "popqa": "test",
                "hotpotqa": "dev",
                "2wikimultihopqa": "dev",
                "musique": "dev",
                "bamboogle": "test",
            },
            retriever=E5_WIKI18,
            retriever_label="wiki-18, e5-base-v2",
            k=3,
            max_turns=4,
            max_new_tokens=500,
            max_observation_tokens=500,
            max_context=4096,
            question_mark=True,
        ),
        # ReSearch: four multi-hop sets, top-5, no search cap but an 8,192-token budget.
        Suite(
            name="research",
            datasets={
                "hotpotqa": "dev",
                "2wikimultihopqa": "dev",
                "musique": "dev",
                "bamboogle": "test",
            },
            retriever=E5_WIKI18,
            retriever_label="wiki-18, e5-base-v2",
            k=5,
            max_turns=64,  # never reached before the token budget
            max_new_tokens=8192,
            max_observation_tokens=8192,
            max_completion_tokens=8192,
        ),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise InputError(f"--suite: unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return SUITES[name]
