"""BM25 (research_r1.retrieval.bm25): rankings equal a brute-force Lucene BM25, the index loads
memory-mapped and searches in batches, an index of another corpus is refused, and malformed rows
are indexed and returned exactly as stored."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from bm25s.tokenization import Tokenizer
from helpers import MALFORMED_CONTENTS, PASSAGES, write_corpus, write_jsonl

from research_r1.errors import InputError
from research_r1.retrieval.bm25 import BM25Retriever, build_bm25_index
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import load_corpus


def brute_force_bm25(query: str, k1: float = 1.5, b: float = 0.75) -> list[tuple[int, float]]:
    """Lucene BM25 of every passage, from our own tokenisation: lowercase, words of 2+ word
    characters, English stopwords out, Snowball stems. Returns (row, score) for score > 0."""
    stemmer = Stemmer.Stemmer("english")
    stopwords = set(STOPWORDS_EN)

    def tokens(text: str) -> list[str]:
        words = re.findall(r"(?u)\b\w\w+\b", text.lower())
        return stemmer.stemWords([word for word in words if word not in stopwords])

    docs = [tokens(f'"{title}"\n{text}') for title, text in PASSAGES]
    avg = sum(map(len, docs)) / len(docs)
    scores = []
    for row, doc in enumerate(docs):
        counts = Counter(doc)
        score = 0.0
        for term in set(tokens(query)):
            df = sum(term in other for other in docs)
            if counts[term]:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                tf = counts[term]
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avg))
        if score > 0:
            scores.append((row, score))
    return sorted(scores, key=lambda pair: -pair[1])


@pytest.mark.parametrize(
    "query",
    [
        "Which rocket launched the probe that flew past Uranus?",
        "tragedies written by Shakespeare",
        "river Seine flowing through Paris",
        "Voyager probes",
        "who was president when Citibank was founded",
    ],
)
def test_bm25_ranks_exactly_like_brute_force(bm25_index: tuple[Path, Path], query: str) -> None:
    corpus_path, index_dir = bm25_index
    retriever = BM25Retriever(load_corpus(corpus_path), index_dir)
    expected = brute_force_bm25(query)[:4]
    assert len({round(score, 4) for _, score in expected}) == len(expected)  # no ties to order
    [got] = retriever.search([query], 4)
    assert [p.id for p in got] == [str(row) for row, _ in expected]
    assert [p.score for p in got] == pytest.approx([score for _, score in expected], rel=1e-5)
    assert [p.title for p in got] == [PASSAGES[row][0] for row, _ in expected]


def test_bm25_loads_memory_mapped_and_batches_queries(bm25_index: tuple[Path, Path]) -> None:
    _, index_dir = bm25_index
    retriever = load_retriever({"type": "bm25", "index": str(index_dir)})  # corpus from info
    assert isinstance(retriever.model.scores["data"], np.memmap)
    queries = ["Titan IIIE rocket", "the of and", "zyxwv", "Seine"]
    results = retriever.search(queries, 3)
    assert [[p.id for p in result] for result in results] == [
        [str(row) for row, _ in brute_force_bm25(query)[:3]] for query in queries
    ]
    assert results[1] == [] and results[2] == []  # stopwords only, unknown word: no match
    assert [p.title for p in results[3]] == ["Seine", "Paris"]  # fewer than k match
    assert len(retriever.search(["mountain river city"], 100)[0]) <= len(PASSAGES)
    assert retriever.search([], 3) == []


def test_bm25_index_of_another_corpus_is_refused(bm25_index, tmp_path: Path) -> None:
    _, index_dir = bm25_index
    other = load_corpus(write_corpus(tmp_path / "other.jsonl", PASSAGES[:5]))
    with pytest.raises(InputError, match=r"has 12 passages but corpus .* has 5"):
        BM25Retriever(other, index_dir)
    with pytest.raises(InputError, match="is not a BM25 index folder"):
        BM25Retriever(other, tmp_path)


def test_bm25_indexes_and_returns_contents_as_stored(tmp_path: Path, monkeypatch) -> None:
    """The text BM25 tokenizes for each row is its stored contents, byte for byte, whatever its
    first line looks like; a word of that first line finds the row, returned as stored."""
    rows = [{"id": str(i), "contents": c} for i, c in enumerate(MALFORMED_CONTENTS)]
    corpus = load_corpus(write_jsonl(tmp_path / "corpus.jsonl", rows), cache_dir=tmp_path)
    tokenized: list[str] = []
    tokenize = Tokenizer.tokenize

    def spy(self, texts, *args, **kwargs):
        texts = list(texts)
        tokenized.extend(texts)
        return tokenize(self, texts, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "tokenize", spy)
    build_bm25_index(corpus, tmp_path / "index")
    assert [t.encode() for t in tokenized] == [c.encode() for c in MALFORMED_CONTENTS]
    retriever = BM25Retriever(corpus, tmp_path / "index")
    words = ["Kyoto", "otter", "Vesuvius", "Zanzibar", "Reykjavik", "Lisbon", "Timbuktu", "Quito"]
    found = retriever.search([*words, "Montréal"], 1)
    assert [[p.contents.encode() for p in result] for result in found] == [
        [c.encode()] for c in MALFORMED_CONTENTS
    ]
