"""Retrieval: the search engine the agent calls while it reasons.

Every backend (BM25, dense FAISS, hybrid, or a remote server through the HTTP client) implements
the same `Retriever` interface, so the rollout and the server never know which one they hold.
Besides a bug, a retriever may fail in two ways the caller treats differently: it cannot be
reached for a while (`RetrieverUnavailable`: wait for it) or it refuses or garbles an answer
(`RetrievalError`: stop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from research_r1.errors import Unreachable


@dataclass(slots=True)
class Passage:
    """One retrieved passage: its corpus `contents` exactly as stored (wiki-18's `"Title"` line,
    then the text), so an agent can be shown it as its own loop showed it.

    Not frozen: a frozen dataclass takes twice as long to build, and a search builds thousands.
    """

    id: str
    contents: str
    score: float

    @property
    def title_line(self) -> str:
        """The first line of `contents` as stored (wiki-18: the title in quotes)."""
        return self.contents.partition("\n")[0]

    @property
    def title(self) -> str:
        """The title as people read it: the first line without its quotes and outer spaces."""
        return self.title_line.strip().strip('"')

    @property
    def text(self) -> str:
        """Everything after the first line."""
        return self.contents.partition("\n")[2]


class RetrievalError(RuntimeError):
    """A retriever gave no usable answer: it refused the request or answered in a wrong shape.
    Waiting will not help, so the caller stops."""


class QueryRejected(RetrievalError):
    """The retriever refused a request for what it asked (HTTP 400, 413 or 422: a query too
    long, or not text it can read): a failure of that query alone, which another may not hit."""


class RetrieverUnavailable(RetrievalError, Unreachable):
    """The retriever could not be reached (connection refused or reset, timeout, HTTP 502, 503
    or 504) after its own quick retries. Waiting may help: the rollout waits for it
    (`max_retriever_wait_s`); a command that stops on it says so in one line."""


class Retriever(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-`k` passages for each query, best first, one list per query in order."""
        ...
