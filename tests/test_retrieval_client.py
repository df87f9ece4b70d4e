"""The retrieval client (research_r1.retrieval.client) against a real server on 127.0.0.1: both
APIs, which failures it retries (a refused connection, an outage answer, a timeout) and which it
reports at once (a refused request, a failing retriever, an answer of the wrong shape)."""

from __future__ import annotations

import threading

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from helpers import BERLIN, PARIS, QUERIES, OverlapRetriever, free_port, serving
from live_server import LiveServer

from research_r1.errors import InputError
from research_r1.retrieval import Passage, QueryRejected, RetrieverUnavailable
from research_r1.retrieval.client import RemoteRetriever, RetrievalError
from research_r1.retrieval.server import create_app


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


def test_an_unknown_api_is_refused() -> None:
    with pytest.raises(InputError, match="'elastic' is not one of"):
        RemoteRetriever("http://127.0.0.1:1", api="elastic")
