"""The retrieval server and client over real HTTP on 127.0.0.1, with an in-test retriever."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from live_server import LiveServer, wait_until

from research_r1 import cli
from research_r1.errors import InputError
from research_r1.retrieval import Passage, QueryRejected, RetrieverUnavailable
from research_r1.retrieval.client import RemoteRetriever, RetrievalError
from research_r1.retrieval.server import ServerSettings, create_app, run_serve_retriever

CORPUS = [
    ("p1", "Paris", "Paris is the capital of France."),
    ("p2", "Berlin", "Berlin is the capital of Germany."),
    ("p3", "Eiffel Tower", "The Eiffel Tower stands in Paris."),
    ("p4", "Rhine", "The Rhine flows through Germany."),
]


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class OverlapRetriever:
    """Ranks CORPUS by the number of distinct words shared with the query (ties by id), and
    records every call; with a `gate` each call blocks until the test opens it."""

    def __init__(self, gate: threading.Event | None = None, error: str | None = None) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.entered = threading.Event()
        self.gate = gate
        self.error = error

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append((list(queries), k))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if self.error is not None:
            raise RuntimeError(self.error)
        return [self._rank(query)[:k] for query in queries]

    def _rank(self, query: str) -> list[Passage]:
        passages = [
            Passage(pid, f'"{title}"\n{text}', float(len(words(query) & words(f"{title} {text}"))))
            for pid, title, text in CORPUS
        ]
        return sorted(passages, key=lambda p: (-p.score, p.id))


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the raw HTTP calls: building one costs more than a test's requests."""
    with httpx.Client(timeout=30) as client:
        yield client


@contextmanager
def serving(retriever: Any, **settings: Any) -> Iterator[str]:
    """The url of `retriever` served with these settings, for the duration of the block."""
    with LiveServer(create_app(retriever, ServerSettings(**settings))) as server:
        yield server.url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PARIS = {"id": "p1", "contents": '"Paris"\nParis is the capital of France.'}
BERLIN = {"id": "p2", "contents": '"Berlin"\nBerlin is the capital of Germany.'}
TOWER = {"id": "p3", "contents": '"Eiffel Tower"\nThe Eiffel Tower stands in Paris.'}
RHINE = {"id": "p4", "contents": '"Rhine"\nThe Rhine flows through Germany.'}
QUERIES = ["capital of France", "Eiffel Tower Paris"]
JSON = {"Content-Type": "application/json"}


def test_search_r1_api_exact_json(http: httpx.Client) -> None:
    with serving(OverlapRetriever()) as url:
        scored = http.post(
            f"{url}/retrieve", json={"queries": QUERIES, "topk": 2, "return_scores": True}
        )
        plain = http.post(f"{url}/retrieve", json={"queries": QUERIES, "topk": 2})
    assert scored.status_code == 200
    assert scored.json() == {
        "result": [
            [{"document": PARIS, "score": 3.0}, {"document": BERLIN, "score": 2.0}],
            [{"document": TOWER, "score": 3.0}, {"document": PARIS, "score": 1.0}],
        ]
    }
    assert plain.status_code == 200
    assert plain.json() == {"result": [[PARIS, BERLIN], [TOWER, PARIS]]}


def test_research_api_exact_json(http: httpx.Client) -> None:
    with serving(OverlapRetriever()) as url:
        batch = http.post(f"{url}/batch_search", json={"query": QUERIES, "top_n": 2})
        batch_scored = http.post(
            f"{url}/batch_search", json={"query": QUERIES, "top_n": 1, "return_score": True}
        )
        one = http.post(f"{url}/search", json={"query": "capital of France", "top_n": 2})
        one_scored = http.post(
            f"{url}/search", json={"query": "Eiffel Tower Paris", "top_n": 1, "return_score": True}
        )
    assert batch.json() == [[PARIS, BERLIN], [TOWER, PARIS]]
    assert batch_scored.json() == [[[PARIS], [TOWER]], [[3.0], [3.0]]]
    assert one.json() == [PARIS, BERLIN]
    assert one_scored.json() == [[TOWER], [3.0]]


def test_default_k_applies_when_the_request_names_none(http: httpx.Client) -> None:
    with serving(OverlapRetriever(), default_k=1) as url:
        response = http.post(f"{url}/retrieve", json={"queries": ["capital of France"]})
    assert response.json() == {"result": [[PARIS]]}


def test_client_returns_the_same_passages_in_both_api_modes() -> None:
    retriever = OverlapRetriever()
    expected = retriever.search(QUERIES, 3)
    with serving(retriever) as url:
        with RemoteRetriever(url) as search_r1, RemoteRetriever(url, api="research") as research:
            assert search_r1.search(QUERIES, 3) == expected
            assert research.search(QUERIES, 3) == expected
            assert search_r1.search([], 3) == []
        # Search-R1 configs write the full endpoint url; that works too
        with RemoteRetriever(f"{url}/retrieve/") as full_url:
            assert full_url.url == f"{url}/retrieve"
            assert full_url.search(QUERIES[:1], 1) == [[expected[0][0]]]
    assert expected[0][0] == Passage("p1", '"Paris"\nParis is the capital of France.', 3.0)


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


@pytest.fixture(scope="module")
def strict_server() -> Iterator[tuple[str, OverlapRetriever]]:
    """A server with small limits, shared by the validation cases (none reaches the retriever)."""
    retriever = OverlapRetriever()
    with serving(retriever, max_queries_per_request=3, max_query_chars=20, max_k=5) as url:
        yield url, retriever


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/retrieve", {"queries": ["a", "b", "c", "d"], "topk": 1}, "body.queries"),
        ("/retrieve", {"queries": ["ok", "x" * 21], "topk": 1}, "body.queries.1"),
        ("/retrieve", {"queries": ["ok"], "topk": 0}, "body.topk"),
        ("/retrieve", {"queries": ["ok"], "topk": 6}, "body.topk"),
        ("/retrieve", {"topk": 1}, "body.queries"),
        ("/retrieve", {"queries": "ok", "topk": 1}, "body.queries"),
        # strict types: no bool, string or float is taken for a number, nor 1 for a bool
        ("/retrieve", {"queries": ["ok"], "topk": True}, "body.topk"),
        ("/retrieve", {"queries": ["ok"], "topk": "3"}, "body.topk"),
        ("/retrieve", {"queries": ["ok"], "topk": 3.0}, "body.topk"),
        ("/retrieve", {"queries": ["ok"], "return_scores": 1}, "body.return_scores"),
        ("/retrieve", {"queries": ["ok"], "return_scores": "true"}, "body.return_scores"),
        ("/retrieve", {"queries": ["ok", 7]}, "body.queries.1"),
        ("/retrieve", {"queries": [None]}, "body.queries.0"),
        ("/batch_search", {"query": ["ok"], "top_n": 6}, "body.top_n"),
        ("/batch_search", {"query": ["ok"], "top_n": False}, "body.top_n"),
        ("/batch_search", {"query": ["ok"], "return_score": 0}, "body.return_score"),
        ("/search", {"query": "", "top_n": 1}, "body.query"),
        ("/search", {"query": "x" * 21, "top_n": 1}, "body.query"),
        ("/search", {"query": "ok", "top_n": 0}, "body.top_n"),
        ("/search", {"query": "ok", "top_n": "2"}, "body.top_n"),
        ("/search", {"query": ["ok"]}, "body.query"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(
    http: httpx.Client, strict_server: tuple[str, OverlapRetriever], path: str, body: dict, loc: str
) -> None:
    url, retriever = strict_server
    response = http.post(url + path, json=body)
    assert response.status_code == 422
    assert [".".join(map(str, error["loc"])) for error in response.json()["detail"]] == [loc]
    assert retriever.calls == []


def test_validation_errors_list_no_input_and_at_most_20(http: httpx.Client) -> None:
    """A 5 MB request with 1,000 bad queries gets a short 422, not its input echoed back."""
    retriever = OverlapRetriever()
    with serving(retriever, max_query_chars=100) as url:
        response = http.post(f"{url}/retrieve", json={"queries": ["x" * 5000] * 1000})
    assert response.status_code == 422
    assert len(response.content) < 5000
    detail = response.json()["detail"]
    assert detail[:20] == [
        {
            "loc": ["body", "queries", i],
            "msg": "String should have at most 100 characters",
            "type": "string_too_long",
        }
        for i in range(20)
    ]
    assert detail[20:] == [
        {"loc": ["body"], "msg": "980 more errors not listed", "type": "too_many_errors"}
    ]
    assert retriever.calls == []


@pytest.mark.parametrize(
    ("raw", "loc", "msg"),
    [
        (rb'{"queries": ["ok", "\ud800"]}', "body.queries.1", "valid Unicode text"),
        (rb'{"queries": ["\udc00' + b"long" * 9 + b'"]}', "body.queries.0", "valid Unicode text"),
        (b'{"queries": ["ok"], "topk": NaN}', "body.topk", "valid number"),
        (b'{"queries": ["ok"], "return_scores": -Infinity}', "body.return_scores", "valid number"),
        (b'{"queries": ["ok"], "extra": {"x": [1, Infinity]}}', "body.extra.x.1", "valid number"),
        (b'{"queries": ["ok"], "topk": 1e999}', "body.topk", "valid number"),
        (rb'{"queries": ["ok"], "\ud800": 1}', r"body.\ud800", "key is not valid Unicode text"),
    ],
)
def test_values_json_cannot_carry_get_422_naming_the_field(
    http: httpx.Client,
    strict_server: tuple[str, OverlapRetriever],
    raw: bytes,
    loc: str,
    msg: str,
) -> None:
    """Python's json module reads NaN, Infinity and lone surrogates; no JSON answer can hold
    them, so they are refused where they stand instead of failing the reply with a 500."""
    url, retriever = strict_server
    response = http.post(f"{url}/retrieve", content=raw, headers=JSON)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert ".".join(map(str, error["loc"])) == loc
    assert msg in error["msg"]
    assert retriever.calls == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b'"queries"',
        b"{",
        b"[" * 100_000,
        b'{"queries": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"queries": ["\xff\xfe"]}',
        b'{"queries": ["ok"], "topk": ' + b"9" * 5000 + b"}",
        b'{"queries": ["ok"], "topk": ' + b"9" * 100 + b"}",
        b'{"queries": [NaN, Infinity, "\\udfff"], "topk": [], "return_scores": {}}',
        b'{"queries": ["ok"], "x": ' + b"[" * 500 + b"NaN" + b"]" * 500 + b"}",
        b'{"queries": ["ok"], "' + b"k" * 100_000 + b'": [' + b"NaN," * 10_000 + b"0]}",
    ],
)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_no_request_body_gets_a_500(
    http: httpx.Client,
    strict_server: tuple[str, OverlapRetriever],
    raw: bytes,
    content_type: str,
) -> None:
    url, retriever = strict_server
    for path in ("/retrieve", "/batch_search", "/search"):
        response = http.post(url + path, content=raw, headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert len(response.content) < 10_000
        assert "detail" in response.json()
    assert retriever.calls == []


def test_client_reports_a_bad_request_without_retrying(caplog: pytest.LogCaptureFixture) -> None:
    with (
        serving(OverlapRetriever(), max_k=5, max_query_chars=8) as url,
        RemoteRetriever(url) as remote,
        pytest.raises(QueryRejected) as error,
    ):
        remote.search(["capital of France", "capital"], 9)
    message = str(error.value)
    assert message.startswith(f"{url}/retrieve refused the request: HTTP 422: ")
    assert "body.queries.0: String should have at most 8 characters" in message
    assert "body.topk: Input should be less than or equal to 5" in message
    assert "retry" not in caplog.text


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


def test_bearer_token_is_required_when_configured(http: httpx.Client) -> None:
    retriever = OverlapRetriever()
    body = {"queries": ["Paris"], "topk": 1}
    with serving(retriever, token="s3cret") as url:
        missing = http.post(f"{url}/retrieve", json=body)
        wrong = http.post(f"{url}/retrieve", json=body, headers={"Authorization": "Bearer nope"})
        metrics = http.get(f"{url}/metrics")
        right = http.post(f"{url}/retrieve", json=body, headers={"Authorization": "Bearer s3cret"})
        with RemoteRetriever(url, api="research", token="s3cret") as remote:
            passages = remote.search(["Paris"], 1)
        with RemoteRetriever(url) as anonymous, pytest.raises(RetrievalError) as error:
            anonymous.search(["Paris"], 1)
    assert [missing.status_code, wrong.status_code, metrics.status_code] == [401, 401, 401]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200 and right.json() == {"result": [[PARIS]]}
    assert [p.id for p in passages[0]] == ["p1"]
    assert str(error.value) == (
        f"{url}/retrieve refused the request: HTTP 401: "
        "missing or wrong bearer token in the Authorization header"
    )
    assert len(retriever.calls) == 2


def test_oversized_body_gets_413(http: httpx.Client) -> None:
    body = orjson.dumps({"queries": ["x" * 5000]})
    with serving(OverlapRetriever(), max_body_bytes=1024) as url:
        response = http.post(f"{url}/retrieve", content=body, headers=JSON)
    assert response.status_code == 413
    assert response.json() == {
        "detail": f"request body of {len(body)} bytes exceeds the limit of 1024 bytes"
    }


def test_chunked_body_over_the_limit_gets_413(http: httpx.Client) -> None:
    """A chunked body has no Content-Length: the bytes received are counted instead."""
    retriever = OverlapRetriever()
    body = orjson.dumps({"queries": ["x" * 5000]})
    chunks = [body[i : i + 512] for i in range(0, len(body), 512)]
    with serving(retriever, max_body_bytes=1024) as url:
        refused = http.post(f"{url}/retrieve", content=iter(chunks), headers=JSON)
        small = orjson.dumps({"queries": ["Paris"], "topk": 1})
        accepted = http.post(
            f"{url}/retrieve", content=iter([small[:10], small[10:]]), headers=JSON
        )
    assert refused.request.headers["transfer-encoding"] == "chunked"
    assert refused.status_code == 413
    assert refused.json() == {"detail": "request body exceeds the limit of 1024 bytes"}
    assert accepted.status_code == 200 and accepted.json() == {"result": [[PARIS]]}
    assert retriever.calls == [(["Paris"], 1)]


def test_body_guard_stops_reading_once_past_the_limit() -> None:
    """An endless chunked body is read only up to the limit, then answered with 413."""
    app = create_app(OverlapRetriever(), ServerSettings(max_body_bytes=4096))
    chunks_read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/retrieve",
        "raw_path": b"/retrieve",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert orjson.loads(sent[1]["body"]) == {
        "detail": "request body exceeds the limit of 4096 bytes"
    }
    assert chunks_read == 5  # 4 chunks fit, the 5th passes the limit and is not kept


def test_health_and_metrics(http: httpx.Client) -> None:
    with serving(OverlapRetriever()) as url:
        health = http.get(f"{url}/health")
        http.post(f"{url}/retrieve", json={"queries": QUERIES, "topk": 1})
        http.post(f"{url}/batch_search", json={"query": ["Paris"], "top_n": 1})
        http.post(f"{url}/search", json={"query": "Rhine", "top_n": 2})
        http.post(f"{url}/search", json={"query": "", "top_n": 2})
        metrics = http.get(f"{url}/metrics").json()
    assert health.json() == {"status": "ok"}
    latency = metrics.pop("latency_ms")
    assert metrics == {
        "batching": True,
        "requests": 3,
        "queries": 4,
        "batches": 3,
        "mean_batch_queries": 4 / 3,
        "queue_depth": 0,
        "rejected": 0,
        "failed": 0,
    }
    assert list(latency) == ["p50", "p90", "p99", "max"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_search_r1_trainer_requests_are_answered(http: httpx.Client) -> None:
    """Search-R1's trainer sends a whole turn's searches in one request (2,560 queries with its
    shipped script), an empty list when no rollout searched, and "" for an empty
    <search></search>, and crashes on anything but a 200; replayed exactly as it sends them."""
    retriever = OverlapRetriever()
    many = [f"{query} {i}" for i in range(1280) for query in QUERIES]
    with serving(retriever) as url:
        responses = [
            http.post(
                f"{url}/retrieve", json={"queries": queries, "topk": 3, "return_scores": True}
            )
            for queries in (many, [], ["capital of France", "", "Eiffel Tower Paris"])
        ]
    assert [r.status_code for r in responses] == [200, 200, 200]
    turn, empty, with_blank = (r.json() for r in responses)
    assert len(turn["result"]) == 2560
    assert turn["result"][:2] == [
        [
            {"document": PARIS, "score": 3.0},
            {"document": BERLIN, "score": 2.0},
            {"document": TOWER, "score": 0.0},
        ],
        [
            {"document": TOWER, "score": 3.0},
            {"document": PARIS, "score": 1.0},
            {"document": BERLIN, "score": 0.0},
        ],
    ]
    assert turn["result"][2:] == turn["result"][:2] * 1279
    assert empty == {"result": []}
    assert with_blank == {"result": [turn["result"][0], [], turn["result"][1]]}
    # the blank query never reaches the retriever; the empty list makes no call
    assert [(len(queries), k) for queries, k in retriever.calls] == [(2560, 3), (2, 3)]
    assert retriever.calls[1][0] == ["capital of France", "Eiffel Tower Paris"]


def test_research_batch_search_answers_empty_lists_and_blank_queries(http: httpx.Client) -> None:
    retriever = OverlapRetriever()
    with serving(retriever) as url:
        post = lambda body: http.post(f"{url}/batch_search", json=body).json()  # noqa: E731
        empty = post({"query": [], "top_n": 1})
        empty_scored = post({"query": [], "top_n": 1, "return_score": True})
        blank = post({"query": [" \n", "capital of France", ""], "top_n": 1})
        blank_scored = post({"query": ["Rhine", "\t"], "top_n": 1, "return_score": True})
    assert (empty, empty_scored) == ([], [[], []])
    assert blank == [[], [PARIS], []]
    assert blank_scored == [[[RHINE], []], [[1.0], []]]
    assert [queries for queries, _ in retriever.calls] == [["capital of France"], ["Rhine"]]


def test_default_limits_take_4096_queries_in_one_request(http: httpx.Client) -> None:
    retriever = OverlapRetriever()
    with serving(retriever) as url:
        response = http.post(f"{url}/retrieve", json={"queries": ["Rhine"] * 4096, "topk": 1})
        too_many = http.post(f"{url}/retrieve", json={"queries": ["Rhine"] * 4097, "topk": 1})
    assert response.status_code == 200 and response.json() == {"result": [[RHINE]] * 4096}
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "queries"]


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
        assert http.get(f"{server.url}/health").json() == {"status": "ok"}
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


def test_client_retries_across_a_server_restart(caplog: pytest.LogCaptureFixture) -> None:
    retriever = OverlapRetriever()
    expected = retriever.search(QUERIES, 2)
    server = LiveServer(create_app(retriever)).start()
    restarted: list[LiveServer] = []
    restart = threading.Timer(
        0.2, lambda: restarted.append(LiveServer(create_app(retriever), port=server.port).start())
    )
    remote = RemoteRetriever(server.url, retries=8, backoff_s=0.05)
    assert remote.search(QUERIES, 2) == expected  # the pool now holds a live connection
    server.stop()
    restart.start()
    try:
        assert remote.search(QUERIES, 2) == expected
    finally:
        restart.join()
        remote.close()
        for live in restarted:
            live.stop()
    assert "retry 1 of 8 in 0.05 s" in caplog.text  # the first try found no server


@pytest.mark.parametrize("status", [503, 502, 504])
def test_outage_answers_are_retried_until_the_server_answers(status: int) -> None:
    """502, 503 and 504 say the server is away for now (a proxy without its upstream, a full
    queue): retried like a refused connection."""
    answers = [status, status, 200]
    app = FastAPI()

    @app.post("/retrieve")
    def retrieve() -> Response:
        if answers.pop(0) != 200:
            return Response(b'{"detail": "starting"}', status)
        return Response(orjson.dumps({"result": [[{"document": PARIS, "score": 1.0}]]}))

    with LiveServer(app) as server, RemoteRetriever(server.url, retries=2, backoff_s=0) as remote:
        assert remote.search(["Paris"], 1) == [[Passage("p1", PARIS["contents"], 1.0)]]
    assert answers == []


def test_client_error_after_the_last_retry_names_url_attempts_and_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RemoteRetriever(url, api="research", retries=2, backoff_s=0.01) as remote,
        pytest.raises(RetrieverUnavailable) as error,
    ):
        remote.search(["Paris"], 1)
    message = str(error.value)
    assert message.startswith(
        f"retrieval at {url}/batch_search failed after 3 attempts; last cause: NewConnectionError"
    )
    assert message.endswith("Connection refused")
    retries = [record.getMessage() for record in caplog.records]
    assert [line.rsplit("; ", 1)[-1] for line in retries] == [
        "retry 1 of 2 in 0.01 s",
        "retry 2 of 2 in 0.02 s",
    ]


def test_a_stalled_server_times_out_and_is_retried() -> None:
    gate = threading.Event()
    with (
        serving(OverlapRetriever(gate=gate)) as url,
        RemoteRetriever(url, retries=1, timeout_s=0.3, backoff_s=0.01) as remote,
    ):
        with pytest.raises(RetrieverUnavailable) as error:
            remote.search(["Paris"], 1)
        gate.set()  # lets the stalled search finish so the server can stop
    assert str(error.value).startswith(
        f"retrieval at {url}/retrieve failed after 2 attempts; last cause: ReadTimeoutError"
    )


def test_a_failing_retriever_is_a_500_reported_at_once(http: httpx.Client) -> None:
    """A 500 is no outage: the client stops at the first, with the server's message."""
    retriever = OverlapRetriever(error="index file is corrupt")
    with serving(retriever) as url, RemoteRetriever(url) as remote:
        with pytest.raises(RetrievalError) as error:
            remote.search(["Paris"], 1)
        failed = http.get(f"{url}/metrics").json()["failed"]
    assert not isinstance(error.value, RetrieverUnavailable)
    assert str(error.value) == (
        f"{url}/retrieve failed: HTTP 500: retriever failed: index file is corrupt"
    )
    assert len(retriever.calls) == 1 and failed == 1


def test_a_bug_in_a_handler_is_a_500_with_its_traceback_logged(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler failing on what the retriever gave (a passage without a score): a 500 naming
    the error, which the client reports at once, and the traceback in the server's log."""
    retriever = OverlapRetriever()
    retriever.search = lambda queries, k: [[Passage("p1", "x", None)] for _ in queries]
    with serving(retriever) as url, RemoteRetriever(url) as remote:
        response = http.post(f"{url}/retrieve", json={"queries": ["Paris"], "return_scores": True})
        unscored = http.post(f"{url}/retrieve", json={"queries": ["Paris"]})  # same connection
        with pytest.raises(RetrievalError) as error:
            remote.search(["Paris"], 1)
        failed = http.get(f"{url}/metrics").json()["failed"]
    detail = (
        "internal server error: TypeError: float() argument must be a string or a real number, "
        "not 'NoneType'"
    )
    assert response.status_code == 500 and response.json() == {"detail": detail}
    assert unscored.status_code == 200  # the server still answers what it can
    assert not isinstance(error.value, RetrieverUnavailable)
    assert str(error.value) == f"{url}/retrieve failed: HTTP 500: {detail}"
    assert failed == 2
    logged = [record for record in caplog.records if record.name == "research_r1.retrieval.server"]
    assert [record.getMessage() for record in logged] == ["POST /retrieve failed"] * 2
    assert all(record.exc_info[0] is TypeError for record in logged)
    assert "Traceback (most recent call last)" in caplog.text and "in _scored" in caplog.text


def test_client_rejects_answers_without_scores() -> None:
    """Servers that ignore the score flag answer in a shape the client must not misread."""
    app = FastAPI()
    app.post("/retrieve")(lambda: {"result": [[PARIS]]})
    app.post("/batch_search")(lambda: [[PARIS], [BERLIN]])
    with LiveServer(app) as server:
        with RemoteRetriever(server.url) as remote, pytest.raises(RetrievalError) as r1_error:
            remote.search(["Paris"], 1)
        with (
            RemoteRetriever(server.url, api="research") as remote,
            pytest.raises(RetrievalError) as research_error,
        ):
            remote.search(["Paris", "Berlin"], 1)
    assert str(r1_error.value) == (
        f"{server.url}/retrieve answered in an unexpected shape for api='search_r1': "
        "KeyError: 'document'"
    )
    assert str(research_error.value).startswith(
        f"{server.url}/batch_search answered in an unexpected shape for api='research': "
    )


def test_bad_settings_and_client_arguments_name_the_field() -> None:
    for settings, message in [
        ({"default_k": 0}, "key 'default_k': Input should be greater than or equal to 1, got 0"),
        ({"max_k": 3, "default_k": 5}, "key 'default_k': must not exceed max_k (3), got 5"),
        (
            {"max_queue": 10, "max_queries_per_request": 11},
            "key 'max_queries_per_request': must not exceed max_queue (10), or such requests "
            "could never be served, got 11",
        ),
        (
            {"max_body_bytes": 0},
            "key 'max_body_bytes': Input should be greater than or equal to 1, got 0",
        ),
        (
            {"max_wait_ms": -1.0},
            "key 'max_wait_ms': Input should be greater than or equal to 0, got -1.0",
        ),
        ({"max_k": True}, "key 'max_k': Input should be a valid integer, got True"),
        ({"token": ""}, "key 'token': String should have at least 1 character, got ''"),
    ]:
        with pytest.raises(InputError) as error:
            ServerSettings(**settings)
        assert str(error.value) == f"server setting: {message}"
    assert "s3cret" not in repr(ServerSettings(token="s3cret"))
    with pytest.raises(InputError, match="'elastic' is not one of"):
        RemoteRetriever("http://127.0.0.1:1", api="elastic")


def test_cli_registers_serve_retriever(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["serve-retriever", "--retriever", "r.yaml", "--no-batching", "--max-wait-ms", "2.5"]
    run, args = cli.parse(argv)
    assert run is run_serve_retriever
    assert (args.retriever, args.host, args.port, args.no_batching) == (
        "r.yaml",
        "127.0.0.1",
        8000,
        True,
    )
    assert (args.max_wait_ms, args.max_batch_queries, args.token_env) == (2.5, 256, None)
    assert args.access_log is False  # /metrics counts requests; no line per request
    _, limits = cli.parse(["serve-retriever", "--retriever", "r.yaml", "--max_body_bytes", "1000"])
    assert (limits.max_body_bytes, limits.max_queries_per_request, limits.max_queue) == (
        1000,
        4096,
        16384,
    )
    assert ServerSettings().max_body_bytes == 8 * 1024 * 1024
    assert cli.parse(["serve-retriever", "--retriever", "r.yaml"])[1].max_wait_ms == 0
    monkeypatch.delenv("RR1_TEST_TOKEN", raising=False)
    args.token_env = "RR1_TEST_TOKEN"
    with pytest.raises(InputError, match="RR1_TEST_TOKEN is unset or empty"):
        run_serve_retriever(args)
