"""Micro-batching (research_r1.retrieval.batching), through the server: concurrent requests
gathered into one search with the results of separate ones, one call per k, a batch of fewer
requests than the last one regrouping with those, a full queue refused, and a dead worker
failing fast."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from helpers import BERLIN, PARIS, RHINE, TOWER, OverlapRetriever, serving
from live_server import LiveServer, wait_until

from research_r1.retrieval import Passage
from research_r1.retrieval.server import ServerSettings, create_app


def post_concurrently(http: httpx.Client, url: str, bodies: list[dict[str, Any]]) -> list[Any]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: http.post(f"{url}/retrieve", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    return [r.json() for r in responses]


def test_micro_batching_gathers_concurrent_requests_with_unbatched_results(
    http: httpx.Client,
) -> None:
    queries = ["capital of France", "Eiffel Tower", "Rhine Germany", "Berlin", "Paris"] * 2
    bodies = [{"queries": [q], "topk": 2, "return_scores": True} for q in queries[:8]]

    unbatched = OverlapRetriever()
    with serving(unbatched, batching=False) as url:
        alone = post_concurrently(http, url, bodies)
        metrics = http.get(f"{url}/metrics").json()
    assert sorted(len(q) for q, _ in unbatched.calls) == [1] * 8
    assert metrics["batches"] == 8 and metrics["mean_batch_queries"] == 1.0

    # the batch is full exactly when all 8 requests are in, long before max_wait_ms runs out
    batched = OverlapRetriever()
    with serving(batched, max_batch_queries=8, max_wait_ms=10_000) as url:
        together = post_concurrently(http, url, bodies)
        metrics = http.get(f"{url}/metrics").json()
    assert len(batched.calls) == 1
    assert sorted(batched.calls[0][0]) == sorted(queries[:8])
    assert metrics["batches"] == 1 and metrics["mean_batch_queries"] == 8.0
    assert together == alone


def test_default_server_answers_at_once_and_batches_what_arrives_during_a_search(
    http: httpx.Client,
) -> None:
    """No wait by default: a lone request is searched as soon as it arrives, and the requests
    that arrive while that search runs make up the next batch."""
    assert ServerSettings().max_wait_ms == 0
    gate = threading.Event()
    retriever = OverlapRetriever(gate=gate)
    queries = ["Berlin", "Rhine", "Eiffel Tower", "capital of France"]
    with serving(retriever) as url, ThreadPoolExecutor(5) as pool:
        post = lambda query: http.post(f"{url}/retrieve", json={"queries": [query], "topk": 1})  # noqa: E731
        first = pool.submit(post, "Paris")
        assert retriever.entered.wait(10)  # searched alone, with nothing else waiting
        rest = [pool.submit(post, query) for query in queries]
        wait_until(lambda: http.get(f"{url}/metrics").json()["queue_depth"] == 4)
        gate.set()
        answers = [first.result(), *(future.result() for future in rest)]
    assert [sorted(call) for call, _ in retriever.calls] == [["Paris"], sorted(queries)]
    assert [r.json()["result"][0][0]["id"] for r in answers] == ["p1", "p2", "p4", "p3", "p1"]


def test_a_batch_with_different_k_makes_one_call_per_k(http: httpx.Client) -> None:
    bodies = [{"queries": ["capital of France", "Rhine"], "topk": 1}] * 2 + [
        {"queries": ["Eiffel Tower"], "topk": 3}
    ] * 2
    retriever = OverlapRetriever()
    with serving(retriever, max_batch_queries=6, max_wait_ms=10_000) as url:
        responses = post_concurrently(http, url, bodies)
    assert sorted((len(queries), k) for queries, k in retriever.calls) == [(2, 3), (4, 1)]
    assert responses == [
        {"result": [[PARIS], [RHINE]]},
        {"result": [[PARIS], [RHINE]]},
        {"result": [[TOWER, PARIS, BERLIN]]},
        {"result": [[TOWER, PARIS, BERLIN]]},
    ]


class SlowRetriever(OverlapRetriever):
    """Every search takes `seconds` (then waits for the gate, if any), so the regrouping hold
    after it (that share of it) is long enough for a test's requests to arrive within it."""

    def __init__(self, seconds: float, gate: threading.Event | None = None) -> None:
        super().__init__(gate=gate)
        self.seconds = seconds

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        time.sleep(self.seconds)
        return super().search(queries, k)


def test_a_batch_of_fewer_requests_than_the_last_waits_for_as_many_then_no_longer(
    http: httpx.Client,
) -> None:
    """Three requests answered together: of the next three, sent together, the first waits for
    the other two rather than being searched alone, and each gets what a search of its own
    gives; a lone request after them waits at most the hold, then is searched alone."""
    gate = threading.Event()
    retriever = SlowRetriever(seconds=0.5, gate=gate)
    post = lambda query: http.post(f"{url}/retrieve", json={"queries": [query], "topk": 1})  # noqa: E731
    with serving(retriever, regroup_share=1.0) as url, ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, "Paris")
        assert retriever.entered.wait(10)
        waiting = [pool.submit(post, query) for query in ("Berlin", "Rhine", "Eiffel Tower")]
        wait_until(lambda: http.get(f"{url}/metrics").json()["queue_depth"] == 3)
        gate.set()
        answers = [first.result(), *(future.result() for future in waiting)]
        regrouped = list(pool.map(post, ["capital of France", "Rhine Germany", "Berlin"]))
        alone = post("Paris")
    calls = [sorted(queries) for queries, _ in retriever.calls]
    assert calls == [
        ["Paris"],
        ["Berlin", "Eiffel Tower", "Rhine"],
        ["Berlin", "Rhine Germany", "capital of France"],
        ["Paris"],
    ]
    ids = [r.json()["result"][0][0]["id"] for r in [*answers, *regrouped, alone]]
    assert ids == ["p1", "p2", "p4", "p3", "p1", "p4", "p2", "p1"]


def test_full_queue_gets_503_and_the_waiting_requests_still_succeed(http: httpx.Client) -> None:
    gate = threading.Event()
    retriever = OverlapRetriever(gate=gate)
    settings = {"max_queue": 2, "max_queries_per_request": 2, "max_wait_ms": 0}
    with serving(retriever, **settings) as url:
        with ThreadPoolExecutor(3) as pool:
            post = lambda query: http.post(f"{url}/retrieve", json={"queries": [query], "topk": 1})  # noqa: E731
            running = pool.submit(post, "Paris")
            assert retriever.entered.wait(10)  # the first request holds the retriever
            waiting = [pool.submit(post, query) for query in ("Berlin", "Rhine")]
            wait_until(lambda: http.get(f"{url}/metrics").json()["queue_depth"] == 2)
            refused = post("Eiffel Tower")
            gate.set()
            answered = [running.result(), *(future.result() for future in waiting)]
        metrics = http.get(f"{url}/metrics").json()
    assert refused.status_code == 503
    assert refused.json() == {
        "detail": "retrieval queue is full (2 queries waiting, max_queue=2); retry later"
    }
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert [r.json()["result"][0][0]["id"] for r in answered] == ["p1", "p2", "p4"]
    assert (metrics["rejected"], metrics["requests"], metrics["queue_depth"]) == (1, 3, 0)


def kill_worker_by_cancelling(
    app: FastAPI, retriever: OverlapRetriever, url: str, http: httpx.Client
) -> str:
    worker = app.state.worker
    worker.get_loop().call_soon_threadsafe(worker.cancel)
    wait_until(worker.done)
    return "batching worker was cancelled"


def kill_worker_by_a_fault(
    app: FastAPI, retriever: OverlapRetriever, url: str, http: httpx.Client
) -> str:
    """A retriever answering with a mapping passes the length check, then breaks the batch
    split: the worker dies holding a request, which must fail rather than wait forever."""
    retriever.search = lambda queries, k: {i: [] for i in range(len(queries))}
    response = http.post(f"{url}/retrieve", json={"queries": ["Paris"]}, timeout=5)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("batching worker died: ")
    return response.json()["detail"]


@pytest.mark.parametrize("kill", [kill_worker_by_cancelling, kill_worker_by_a_fault])
def test_dead_batching_worker_fails_health_and_searches_fast(
    http: httpx.Client, kill: Callable[[FastAPI, OverlapRetriever, str, httpx.Client], str]
) -> None:
    retriever = OverlapRetriever()
    app = create_app(retriever)
    with LiveServer(app) as server:
        assert http.get(f"{server.url}/health").json()["status"] == "ok"
        reason = kill(app, retriever, server.url, http)
        health = http.get(f"{server.url}/health")
        search = http.post(f"{server.url}/retrieve", json={"queries": ["Paris"]}, timeout=5)
        research = http.post(f"{server.url}/search", json={"query": "Paris"}, timeout=5)
        metrics = http.get(f"{server.url}/metrics")
    assert health.status_code == 503
    assert health.json() == {"status": "down", "detail": reason}
    assert [search.status_code, research.status_code] == [503, 503]
    assert search.json() == research.json() == {"detail": reason}
    assert metrics.status_code == 200 and metrics.json()["failed"] >= 2
