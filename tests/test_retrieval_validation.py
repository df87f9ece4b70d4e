"""Request validation (research_r1.retrieval.validation), through the server: bad requests get a
short 422 naming the field, no body a 500, and bodies over the limit a 413 read no further than
it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from helpers import JSON, PARIS, OverlapRetriever, asgi_post, serving

from research_r1.retrieval.server import ServerSettings, create_app


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

    scope = asgi_post(
        "/retrieve", [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
    )
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert orjson.loads(sent[1]["body"]) == {
        "detail": "request body exceeds the limit of 4096 bytes"
    }
    assert chunks_read == 5  # 4 chunks fit, the 5th passes the limit and is not kept
