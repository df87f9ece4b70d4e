"""Retrieval: the search engine the agent calls while it reasons.

Every backend (BM25, dense FAISS, hybrid, or a remote server through the HTTP client) implements
the same `Retriever` interface, so the rollout and the server never know which one they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Passage:
    """One retrieved passage; `title` is the corpus `contents` before its first newline.

    Not frozen: a frozen dataclass takes twice as long to build, and a search builds thousands.
    """

    id: str
    title: str
    text: str
    score: float


class Retriever(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-`k` passages for each query, best first, one list per query in order."""
        ...
