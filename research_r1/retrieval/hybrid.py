"""Hybrid retrieval: several retrievers (BM25 and dense) fused by reciprocal rank fusion.

BM25 and dense scores live on unrelated scales, so RRF fuses ranks instead: a passage scores
sum(1 / (rrf_k + rank)) over the lists it appears in (rank 1 = best). Exact-term matches that
BM25 finds and paraphrases that the dense index finds both reach the top. Passages are matched
by id, so one found by both retrievers appears once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from research_r1.errors import InputError
from research_r1.retrieval import Passage, Retriever


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Passage]], k: int, rrf_k: int = 60
) -> list[Passage]:
    """The top `k` passages of the fused rankings, each carrying its RRF score. Ties keep the
    order in which passages were first met (earlier rankings first)."""
    scores: dict[str, float] = {}
    passages: dict[str, Passage] = {}
    for ranking in rankings:
        seen: set[str] = set()
        for rank, passage in enumerate(ranking, 1):
            if passage.id in seen:
                continue
            seen.add(passage.id)
            scores[passage.id] = scores.get(passage.id, 0.0) + 1.0 / (rrf_k + rank)
            passages.setdefault(passage.id, passage)
    best = sorted(scores, key=lambda id_: scores[id_], reverse=True)[:k]
    return [replace(passages[id_], score=scores[id_]) for id_ in best]


class HybridRetriever:
    """Asks every retriever for its top `depth` (at least k) and fuses them with RRF."""

    def __init__(self, retrievers: Sequence[Retriever], rrf_k: int = 60, depth: int = 50) -> None:
        if not retrievers:
            raise InputError("a hybrid retriever needs at least one retriever")
        if rrf_k < 0 or depth < 1:
            raise InputError(f"hybrid needs rrf_k >= 0 and depth >= 1, got {rrf_k}, {depth}")
        self.retrievers = list(retrievers)
        self.rrf_k = rrf_k
        self.depth = depth

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        results = [retriever.search(queries, max(k, self.depth)) for retriever in self.retrievers]
        return [
            reciprocal_rank_fusion([result[i] for result in results], k, self.rrf_k)
            for i in range(len(queries))
        ]
