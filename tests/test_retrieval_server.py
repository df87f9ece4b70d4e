"""The retrieval server (research_r1.retrieval.server) over real HTTP on 127.0.0.1, with an
in-test retriever: both APIs' exact JSON, the same from the fast path as from FastAPI's
endpoints, the bearer token, health and metrics, the requests Search-R1's trainer and ReSearch
send, a bug's 500, `research-r1 serve-retriever`, and malformed corpus rows served exactly as
stored.

Its batching, request validation, settings and client have test files of their own."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import sys
from typing import Any

import httpx
import pytest
from helpers import (
    BERLIN,
    MALFORMED_CONTENTS,
    PARIS,
    QUERIES,
    RECALL_REPORT,
    RHINE,
    TOWER,
    OverlapRetriever,
    asgi_post,
    serving,
    write_bm25,
)
from live_server import LiveServer

from research_r1 import cli
from research_r1.errors import InputError
from research_r1.retrieval import Passage, RetrieverUnavailable
from research_r1.retrieval.client import RemoteRetriever, RetrievalError
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.footprint import process_memory, served_indexes
from research_r1.retrieval.recall import describe, write_report
from research_r1.retrieval.server import ServerSettings, create_app, run_serve_retriever


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


SEARCHES = [
    ("/retrieve", {"queries": QUERIES, "topk": 2, "return_scores": True}),
    ("/retrieve", {"queries": ["capital of France", " ", "Rhine"]}),
    ("/retrieve", {"queries": []}),
    ("/batch_search", {"query": QUERIES, "top_n": 2}),
    ("/batch_search", {"query": ["", "Rhine"], "top_n": 1, "return_score": True}),
    ("/search", {"query": "capital of France", "top_n": 2}),
    ("/search", {"query": "Eiffel Tower Paris", "return_score": True}),
]


def test_fast_path_answers_exactly_as_fastapis_endpoints(http: httpx.Client) -> None:
    """A well-formed `application/json` search is answered before FastAPI's routing (it still
    is with the search routes gone), byte for byte as FastAPI's endpoint answers it (reached
    here through another JSON content type, which only FastAPI takes)."""
    app = create_app(OverlapRetriever())

    def post(path: str, body: dict[str, Any], content_type: str) -> httpx.Response:
        return http.post(f"{url}{path}", json=body, headers={"Content-Type": content_type})

    with LiveServer(app) as server:
        url = server.url
        fast = [post(path, body, "application/json") for path, body in SEARCHES]
        fastapi = [post(path, body, "application/vnd.api+json") for path, body in SEARCHES]
        searches = {path for path, _ in SEARCHES}
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") not in searches]
        without_routes = [post(path, body, "application/json") for path, body in SEARCHES]
        unrouted = post(*SEARCHES[0], "application/vnd.api+json")
        metrics = http.get(f"{url}/metrics").json()
    answers = [(r.status_code, r.headers["content-type"], r.content) for r in fast]
    assert answers == [(r.status_code, r.headers["content-type"], r.content) for r in fastapi]
    assert [(r.status_code, r.content) for r in without_routes] == [a[::2] for a in answers]
    assert [status for status, _, _ in answers] == [200] * len(SEARCHES)
    assert unrouted.status_code == 404
    assert (metrics["requests"], metrics["failed"]) == (3 * len(SEARCHES), 0)


def test_a_client_gone_before_its_body_is_read_gets_no_answer() -> None:
    """No answer and no failure counted: nobody is left to read either."""
    app = create_app(OverlapRetriever())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = asgi_post("/retrieve", [(b"content-type", b"application/json")])
    asyncio.run(app(scope, receive, send))
    assert sent == []
    assert app.state.stats.failed == 0


def test_default_k_applies_when_the_request_names_none(http: httpx.Client) -> None:
    with serving(OverlapRetriever(), default_k=1) as url:
        response = http.post(f"{url}/retrieve", json={"queries": ["capital of France"]})
    assert response.json() == {"result": [[PARIS]]}


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


def test_health_reports_memory_files_and_recall(http, minilm_index, tmp_path, caplog) -> None:
    """/health: this process's resident memory as /proc/self/status has it now, and the index
    and corpus files behind the retriever with the index's recall report, which the server also
    logs once at start-up."""
    _, built = minilm_index
    converted = shutil.copytree(built, tmp_path / "converted")
    write_report(converted, RECALL_REPORT)
    retriever = load_retriever({"type": "dense", "index": str(converted)})
    caplog.set_level(logging.INFO, logger="research_r1.retrieval.server")
    with LiveServer(create_app(retriever)) as server:
        body = http.get(f"{server.url}/health").json()
        now = process_memory()
    assert body["status"] == "ok"
    assert body["indexes"] == served_indexes(retriever)
    assert body["indexes"][0]["recall"] == RECALL_REPORT
    memory = body["memory"]
    if sys.platform.startswith("linux"):  # the server runs in this process
        assert abs(memory["resident_bytes"] - now["resident_bytes"]) < 64 * 2**20
        parts = ("anonymous_bytes", "file_backed_bytes", "shared_memory_bytes")
        assert memory["resident_bytes"] == sum(memory[part] for part in parts)
    started = [r.getMessage() for r in caplog.records if r.name == "research_r1.retrieval.server"]
    assert f"{converted / 'faiss.index'}: {describe(RECALL_REPORT)}" in started
    assert any(line.startswith("memory at start: resident ") for line in started)


def test_health_and_metrics(http: httpx.Client) -> None:
    with serving(OverlapRetriever()) as url:
        health = http.get(f"{url}/health")
        http.post(f"{url}/retrieve", json={"queries": QUERIES, "topk": 1})
        http.post(f"{url}/batch_search", json={"query": ["Paris"], "top_n": 1})
        http.post(f"{url}/search", json={"query": "Rhine", "top_n": 2})
        http.post(f"{url}/search", json={"query": "", "top_n": 2})
        metrics = http.get(f"{url}/metrics").json()
    body = health.json()
    assert (body["status"], body["indexes"]) == ("ok", [])  # an in-test retriever maps nothing
    assert set(body["memory"]) >= {"resident_bytes", "anonymous_bytes", "file_backed_bytes"}
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


def test_a_busy_port_is_one_line_before_the_index_loads(monkeypatch, capsys) -> None:
    def load_retriever(config: str) -> None:
        pytest.fail("the index was loaded although the port is busy")

    monkeypatch.setattr("research_r1.retrieval.server.load_retriever", load_retriever)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["serve-retriever", "--retriever", "r.yaml", "--port", str(port)]
        assert cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: port {port} on 127.0.0.1 is in use (another server?); pick another with --port"
    )


def test_malformed_rows_are_served_exactly_as_stored(http: httpx.Client, tmp_path) -> None:
    """A document's `contents` is the corpus row's, byte for byte, as Search-R1's own server
    sends it (`corpus[idx]`), however its first line looks; the client keeps it so."""
    retriever = load_retriever(write_bm25(tmp_path, MALFORMED_CONTENTS))
    queries = ["Kyoto", "otter", "Vesuvius", "Zanzibar", "Reykjavik", "Lisbon", "Timbuktu"]
    queries += ["Quito", "Montréal"]
    stored = [{"id": str(i), "contents": c} for i, c in enumerate(MALFORMED_CONTENTS)]
    with serving(retriever) as url:
        search_r1 = http.post(f"{url}/retrieve", json={"queries": queries, "topk": 1})
        research = http.post(f"{url}/batch_search", json={"query": queries, "top_n": 1})
        one = http.post(f"{url}/search", json={"query": "Kyoto", "top_n": 1})
        with RemoteRetriever(url) as remote:
            passages = remote.search(queries, 1)
    assert search_r1.json() == {"result": [[document] for document in stored]}
    assert research.json() == [[document] for document in stored]
    assert one.json() == [stored[0]]
    assert [[p.contents.encode() for p in result] for result in passages] == [
        [c.encode()] for c in MALFORMED_CONTENTS
    ]
