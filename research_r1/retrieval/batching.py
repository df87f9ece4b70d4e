"""Micro-batching: concurrent search requests gathered into few `retriever.search` calls.

Training sends many small concurrent requests (one per rollout turn), and a dense index answers
a batch of queries almost as fast as one query, so the server hands every request to one
`MicroBatcher`, which searches them together and splits the results back.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.server_settings import ServerSettings

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """Too many queries are already waiting; the request is refused rather than queued."""


class WorkerDown(Exception):
    """The batching worker has stopped, so no search would ever be answered."""


@dataclass
class _Pending:
    queries: list[str]
    k: int
    future: asyncio.Future[list[list[Passage]]]


class MicroBatcher:
    """Gathers concurrent requests into few `retriever.search` calls, run one at a time in a
    worker thread so the event loop keeps accepting (and batching) requests meanwhile.

    A batch takes whole requests in arrival order until `max_batch_queries` is reached or the
    first request has waited `max_wait_ms`; requests with different k go to separate calls, so
    every request gets exactly what a search of its own would return.

    It also regroups: a batch of fewer requests than the last search answered waits for as
    many, for at most `regroup_share` of that search's time after it ended. Clients that send
    their next request as soon as they have an answer (rollouts, benchmarks) otherwise split
    into two groups for good: one early request is searched alone while the others' answers
    are on their way, so every other search is a batch of one, paying a whole search's fixed
    cost. A lone client is never held (one request answered, one awaited), nor is a trainer
    sending a whole turn's queries in one request.
    """

    def __init__(self, retriever: Retriever, settings: ServerSettings) -> None:
        self._retriever = retriever
        self._settings = settings
        self._pending: deque[_Pending] = deque()
        self._batch: list[_Pending] = []  # taken from the queue, not answered yet
        self._arrived = asyncio.Event()
        self.waiting_queries = 0
        self.failure: str | None = None  # why `run` stopped, once it has
        self.batches = 0  # search calls made, and the queries they held, for /metrics
        self.batched_queries = 0
        self._regroup_requests = 0  # requests the last search answered
        self._regroup_until = 0.0  # loop time until which a batch of fewer waits for as many

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        if self.failure is not None:
            raise WorkerDown(self.failure)
        if self.waiting_queries + len(queries) > self._settings.max_queue:
            raise QueueFull(
                f"retrieval queue is full ({self.waiting_queries} queries waiting, "
                f"max_queue={self._settings.max_queue}); retry later"
            )
        future: asyncio.Future[list[list[Passage]]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(queries, k, future))
        self.waiting_queries += len(queries)
        self._arrived.set()
        return await future

    async def run(self) -> None:
        """Serve pending requests until cancelled, one gathered batch at a time. Once it stops,
        for whatever reason, every request taken or waiting fails with `WorkerDown`, and so
        does every later one: none waits for an answer that will never come."""
        try:
            while True:
                while not self._pending:
                    self._arrived.clear()
                    await self._arrived.wait()
                await self._gather()
                await self._dispatch(self._batch)
                self._batch = []
        except asyncio.CancelledError:
            self._stop("batching worker was cancelled")
            raise
        except Exception as error:
            self._stop(f"batching worker died: {error!r}")
            logger.exception("the batching worker died; searches now get 503")

    def _stop(self, failure: str) -> None:
        self.failure = failure
        for item in [*self._batch, *self._pending]:
            if not item.future.done():
                item.future.set_exception(WorkerDown(failure))

    def _take(self) -> None:
        item = self._pending.popleft()
        self.waiting_queries -= len(item.queries)
        self._batch.append(item)

    async def _gather(self) -> None:
        """Move requests from the queue into `self._batch`."""
        self._take()
        if not self._settings.batching:
            return
        size = len(self._batch[0].queries)
        limit = self._settings.max_batch_queries
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.max_wait_ms / 1000.0
        while size < limit:
            if self._pending:
                if size + len(self._pending[0].queries) > limit:
                    break
                self._take()
                size += len(self._batch[-1].queries)
                continue
            until = deadline
            if len(self._batch) < self._regroup_requests:
                until = max(until, self._regroup_until)
            remaining = until - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break

    async def _dispatch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._search(batch)
        ended = loop.time()
        self._regroup_requests = len(batch)
        self._regroup_until = ended + self._settings.regroup_share * (ended - started)

    async def _search(self, batch: list[_Pending]) -> None:
        """One `retriever.search` call per k; each request's future gets its results, or the
        call's error."""
        by_k: dict[int, list[_Pending]] = {}
        for item in batch:
            by_k.setdefault(item.k, []).append(item)
        for k, items in by_k.items():
            queries = [query for item in items for query in item.queries]
            try:
                results = await asyncio.to_thread(self._retriever.search, queries, k)
                if len(results) != len(queries):
                    raise RuntimeError(
                        f"retriever returned {len(results)} result lists for {len(queries)} queries"
                    )
            except Exception as error:
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            self.batches += 1
            self.batched_queries += len(queries)
            start = 0
            for item in items:
                end = start + len(item.queries)
                if not item.future.done():
                    item.future.set_result(results[start:end])
                start = end
