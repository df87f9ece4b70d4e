"""Evaluation suites: the question sets and retrievers papers report their numbers on, as data.

A number means something only with its setting: the question sets and splits, the corpus and
retriever, and how many passages a search returns. A suite names the first two; the family's k
completes the setting (`research-r1 eval` writes `suite · retriever · top-k` into every result),
and the leaderboard ranks together only the runs whose setting strings agree. How an episode is
played and scored (budgets, turns, metric) is the family's (`research_r1.evaluation.families`).

A suite whose retriever cannot be served here (a web search engine, a retriever its authors did
not publish, a corpus one builds first) says what it needs; `--retriever` then plays it on a
corpus of the user's, a setting of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from research_r1.errors import InputError

# Search-R1's retriever: e5-base-v2 over wiki-18, its published flat index, queries cut at 256
# tokens and encoded in fp16 on a GPU as its server does (recipes/retrievers/e5_wiki18_flat.yaml
# holds the same settings with comments).
E5_WIKI18: Mapping[str, Any] = {
    "type": "dense",
    "index": "hf://datasets/PeterJinGo/wiki-18-e5-index",
    "corpus": "hf://datasets/PeterJinGo/wiki-18-corpus/wiki-18.jsonl.gz",
    "encoder": "intfloat/e5-base-v2",
    "query_prompt": "query: ",
    "max_length": 256,
    "fp16": True,
    "device": "auto",
    "batch_size": 256,
}
FLASHRAG_SETS = {
    "nq": "test",
    "triviaqa": "test",
    "popqa": "test",
    "hotpotqa": "dev",
    "2wikimultihopqa": "dev",
    "musique": "dev",
    "bamboogle": "test",
}
MULTI_HOP_SETS = {
    name: FLASHRAG_SETS[name] for name in ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
}


@dataclass(frozen=True)
class Suite:
    """One published setting's questions and retriever.

    `datasets` maps dataset names to the split scored (`test` when a set has one, else `dev`),
    FlashRAG's sets unless `files` says where the questions come from instead. `retriever` is
    None when it cannot be served here; `needs` then says what it takes (`web`: the papers
    searched the live web, so no corpus reproduces their numbers).
    """

    name: str
    datasets: Mapping[str, str]
    retriever: Mapping[str, Any] | str | None
    retriever_label: str
    subset: int | None = None  # a fixed sample per set (Bamboogle always whole)
    whole_sets: tuple[str, ...] = field(default=("bamboogle",))
    files: str = ""
    needs: str = ""
    web: bool = False

    def label(self, k: int) -> str:
        """The setting string of runs with `k` passages per search."""
        parts = [self.name, self.retriever_label, f"top-{k}"]
        if self.subset is not None:
            parts.append(f"{self.subset} per set")
        return " · ".join(parts)


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        # Search-R1 (and most follow-ups): FlashRAG's seven sets, e5 over wiki-18.
        Suite("search_r1", FLASHRAG_SETS, E5_WIKI18, "wiki-18, e5-base-v2"),
        # ReSearch: the four multi-hop sets, FlashRAG's e5 retriever (queries cut at 128 tokens).
        Suite("research", MULTI_HOP_SETS, {**E5_WIKI18, "max_length": 128}, "wiki-18, e5-base-v2"),
        # StepSearch: the four multi-hop sets on Search-R1's retriever (its MuSiQue answerable
        # subset and 520-question samples were built outside its repository).
        Suite("stepsearch", MULTI_HOP_SETS, E5_WIKI18, "wiki-18, e5-base-v2"),
        # R1-Searcher: its own question files and corpora (KILT 2019 100-word chunks; HotpotQA's
        # 2017 abstracts for HotpotQA), bge-large-en-v1.5.
        Suite(
            "r1_searcher",
            {
                "hotpotqa_500": "test",
                "2wiki_500": "test",
                "musique_500": "test",
                "bamboogle": "test",
            },
            None,
            "KILT 2019 and HotpotQA abstracts, bge-large-en-v1.5",
            files=(
                "R1-Searcher's question files ship in its repository (RUCAIBox/R1-Searcher, "
                "data/eval_set/): pass them as --datasets hotpotqa_500=FILE,2wiki_500=FILE,"
                "musique_500=FILE,bamboogle=FILE"
            ),
            needs=(
                "R1-Searcher searched KILT's 2019 Wikipedia in 100-word chunks (HotpotQA: its 2017 "
                "abstracts) with bge-large-en-v1.5, flat inner product: build it with "
                "`research-r1 build-index dense --corpus CORPUS.jsonl --encoder "
                "BAAI/bge-large-en-v1.5 --output_dir DIR` (4.1 GB of float32 vectors per million "
                "chunks) and pass --retriever"
            ),
        ),
        # ZeroSearch's wiki models: a Wikipedia retrieval server its repository does not ship.
        Suite(
            "zerosearch_wiki",
            FLASHRAG_SETS,
            None,
            "ZeroSearch's wiki retriever (unpublished)",
            needs=(
                "ZeroSearch's wiki models were measured with a retrieval server its repository "
                "does not ship (corpus, encoder and index unknown): pass --retriever, e.g. "
                "recipes/retrievers/e5_wiki18_flat.yaml; the run is then a setting of its own"
            ),
        ),
        # ZeroSearch's google models (and all V1 models): live Google results through SerpAPI.
        Suite(
            "zerosearch_google",
            FLASHRAG_SETS,
            None,
            "live Google search (SerpAPI)",
            web=True,
            needs=(
                "these checkpoints were tuned for and measured on live Google results (SerpAPI, "
                "5 per search), which research_r1 does not search: pass --retriever to play them "
                "on a corpus, a setting of its own, never ranked with their web numbers"
            ),
        ),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise InputError(f"--suite: unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return SUITES[name]
