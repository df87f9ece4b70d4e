"""Hybrid retrieval (research_r1.retrieval.hybrid): reciprocal rank fusion on known cases, and
the hybrid retriever fusing deep candidate lists."""

from __future__ import annotations

import pytest

from research_r1.errors import InputError
from research_r1.retrieval import Passage
from research_r1.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion


def passage(id_: str, score: float = 0.0, title: str = "") -> Passage:
    return Passage(id_, f'"{title or id_.upper()}"\ntext {id_}', score)


def test_reciprocal_rank_fusion_known_case() -> None:
    bm25 = [passage("a", 9.0, "from bm25"), passage("b", 8.0), passage("c", 7.0)]
    dense = [passage("c", 0.9), passage("d", 0.8), passage("a", 0.7, "from dense")]
    fused = reciprocal_rank_fusion([bm25, dense], k=4, rrf_k=60)
    # a and c: 1/61 + 1/63 (tie, a met first); b and d: 1/62 (tie, b met first).
    assert [p.id for p in fused] == ["a", "c", "b", "d"]
    assert [p.score for p in fused] == pytest.approx([1 / 61 + 1 / 63] * 2 + [1 / 62] * 2)
    assert fused[0].title == "from bm25"
    assert [p.id for p in reciprocal_rank_fusion([bm25, dense], k=2, rrf_k=0)] == ["a", "c"]
    shifted = reciprocal_rank_fusion([[passage("x"), passage("y")], [passage("y")]], k=2, rrf_k=0)
    assert [(p.id, p.score) for p in shifted] == [("y", 1.5), ("x", 1.0)]
    duplicated = reciprocal_rank_fusion([[passage("x"), passage("x"), passage("y")]], k=3)
    assert [(p.id, p.score) for p in duplicated] == [("x", 1 / 61), ("y", 1 / 63)]


class FixedRetriever:
    """Returns a fixed ranking (cut to k) for every query, and records the k it was asked."""

    def __init__(self, ranking: list[Passage]) -> None:
        self.ranking = ranking
        self.asked: list[int] = []

    def search(self, queries, k):
        self.asked.append(k)
        return [self.ranking[:k] for _ in queries]


def test_hybrid_retriever_fuses_deep_candidate_lists() -> None:
    first = FixedRetriever([passage(x) for x in "abcdef"])
    second = FixedRetriever([passage(x) for x in "fedcba"])
    hybrid = HybridRetriever([first, second], rrf_k=0, depth=6)
    [[top]] = hybrid.search(["q"], 1)
    assert first.asked == [6] and second.asked == [6]
    assert (top.id, top.score) == ("a", 1 + 1 / 6)  # a: ranks 1 and 6 beat c: 3 and 4
    assert [[p.id for p in r] for r in hybrid.search(["q1", "q2"], 2)] == [["a", "f"]] * 2
    assert [p.id for p in HybridRetriever([first], depth=2).search(["q"], 3)[0]] == list("abc")
    with pytest.raises(InputError, match="at least one retriever"):
        HybridRetriever([])
