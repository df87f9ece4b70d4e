"""The retrieval HTTP server: any `Retriever` behind the Search-R1 and ReSearch APIs at once.

Endpoints:

- `POST /retrieve` (Search-R1): `{"queries": [str], "topk": int, "return_scores": bool}` →
  `{"result": [[{"document": {"id", "contents"}, "score": float}, ...] per query]}`, or lists of
  plain `{"id", "contents"}` documents when `return_scores` is false.
- `POST /batch_search` (ReSearch): `{"query": [str], "top_n": int, "return_score": bool}` →
  `[[{"id", "contents"}, ...] per query]`, or `[documents, scores]` when `return_score` is true.
- `POST /search` (ReSearch): `{"query": str, "top_n": int, "return_score": bool}` → one list.
- `GET /health`: `{"status": "ok", "memory": {...}, "indexes": [...]}`, this process's
  resident memory (anonymous and file-backed; `footprint`) and each index behind the retriever
  (its file's and its corpus's path and size, its recall report or null), or 503 with
  `{"status": "down", "detail"}` once the batching worker has died. The recall report is here
  rather than at an endpoint of its own: what the server holds is one answer, and it is
  small. `GET /metrics` (JSON: counters, queue depth, latency quantiles).

Well-formed search requests are answered by `FastSearch`, before FastAPI's routing; FastAPI's
endpoints answer the rest, identically, and every refusal.

Concurrent requests are searched together (`batching.MicroBatcher`). Search-R1's own trainer
sends a whole turn's searches in one request (2,560 queries with its shipped script), an empty
list when no rollout searched and `""` for an empty `<search></search>`, and crashes on
anything but a 200. So an empty list gets an empty answer and a blank query an empty passage
list in its slot; neither reaches the retriever.

Limits (each a `serve-retriever` flag, checked in `validation`): a body over `max_body_bytes`
(8 MiB) gets 413; over `max_queries_per_request` (4,096) queries, a query over
`max_query_chars` or a k over `max_k` get 422; a full queue gets 503. A 503 is an outage the
client waits out; a failing retriever, or a bug in a handler (`InternalErrors`), is a 500 whose
detail says what failed and whose traceback is logged here.

`contents` is each passage's as the corpus stores it (wiki-18: `"Title"` on the first line, then
the text).
No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run
time, and the request models are built per app from its limits.
"""

import asyncio
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import State
from starlette.responses import Response

from research_r1.errors import InputError
from research_r1.ports import check_port
from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.batching import MicroBatcher, QueueFull, WorkerDown
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.footprint import (
    memory_line,
    process_memory,
    recall_lines,
    served_indexes,
)
from research_r1.retrieval.server_settings import ServerSettings
from research_r1.retrieval.validation import (
    RequestGuard,
    has_unencodable_values,
    json_response,
    reject_unencodable_values,
    request_models,
    validation_failed,
)

logger = logging.getLogger(__name__)

LATENCY_WINDOW = 10_000  # requests kept for the latency quantiles in /metrics


def create_app(retriever: Retriever, settings: ServerSettings | None = None) -> FastAPI:
    """The server as an ASGI app, so tests and benchmarks can run it in-process."""
    settings = settings or ServerSettings()
    RetrieveRequest, BatchSearchRequest, SearchRequest = request_models(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for line in recall_lines(app.state.indexes):
            logger.info("%s", line)
        logger.info("memory at start: %s", memory_line(process_memory()))
        app.state.batcher = MicroBatcher(retriever, settings)
        app.state.worker = asyncio.create_task(app.state.batcher.run())
        yield
        app.state.worker.cancel()

    app = FastAPI(
        title="research_r1 retriever",
        lifespan=lifespan,
        exception_handlers={RequestValidationError: validation_failed},
    )
    app.state.settings = settings
    app.state.stats = ServerStats()
    app.state.indexes = served_indexes(retriever)
    answers = {
        "/retrieve": (RetrieveRequest, answer_retrieve),
        "/batch_search": (BatchSearchRequest, answer_batch_search),
        "/search": (SearchRequest, answer_search),
    }
    app.add_middleware(FastSearch, state=app.state, answers=answers)
    app.add_middleware(InternalErrors, stats=app.state.stats)
    app.add_middleware(RequestGuard, settings=settings)  # the outer one: it runs first
    checked = [Depends(reject_unencodable_values)]

    # What FastSearch hands on: requests it would not take, and every refusal.
    @app.post("/retrieve", dependencies=checked)
    async def retrieve(body: RetrieveRequest, request: Request) -> Response:
        return await answer_retrieve(request.app.state, body)

    @app.post("/batch_search", dependencies=checked)
    async def batch_search(body: BatchSearchRequest, request: Request) -> Response:
        return await answer_batch_search(request.app.state, body)

    @app.post("/search", dependencies=checked)
    async def search_one(body: SearchRequest, request: Request) -> Response:
        return await answer_search(request.app.state, body)

    app.get("/health")(health)
    app.get("/metrics")(metrics)
    return app


class ServerStats:
    """Counters behind `/metrics`; touched only from the event loop, so no lock."""

    def __init__(self) -> None:
        self.requests = 0
        self.queries = 0
        self.rejected = 0
        self.failed = 0
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def snapshot(self, batcher: MicroBatcher, batching: bool) -> dict[str, Any]:
        ordered = sorted(self.latencies_s)
        batches = batcher.batches
        return {
            "batching": batching,
            "requests": self.requests,
            "queries": self.queries,
            "batches": batches,
            "mean_batch_queries": batcher.batched_queries / batches if batches else 0.0,
            "queue_depth": batcher.waiting_queries,
            "rejected": self.rejected,
            "failed": self.failed,
            "latency_ms": {
                name: _quantile(ordered, q) * 1000.0
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
        }


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list (0.0 for an empty one)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def search(state: State, queries: list[str], k: int) -> list[list[Passage]]:
    """Results in the order of `queries`; a blank one gets no passages and is not searched.

    A full queue and a dead batching worker are 503s, outages a client waits out; a failing
    retriever is a 500 naming its error, logged here with its traceback."""
    stats: ServerStats = state.stats
    asked = [query for query in queries if query.strip()]
    started = time.perf_counter()
    try:
        found = await state.batcher.search(asked, k) if asked else []
    except QueueFull as error:
        stats.rejected += 1
        raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from error
    except WorkerDown as error:
        stats.failed += 1
        raise HTTPException(503, str(error)) from error
    except Exception as error:
        stats.failed += 1
        logger.exception("retriever failed on %d queries", len(asked))
        raise HTTPException(500, f"retriever failed: {error}") from error
    stats.requests += 1
    stats.queries += len(asked)
    stats.latencies_s.append(time.perf_counter() - started)
    answers = iter(found)
    return [next(answers) if query.strip() else [] for query in queries]


async def answer_retrieve(state: State, body: Any) -> Response:
    """Search-R1's `/retrieve`."""
    results = await search(state, body.queries, body.topk)
    shape = _scored if body.return_scores else _documents
    return json_response({"result": [shape(passages) for passages in results]})


async def answer_batch_search(state: State, body: Any) -> Response:
    """ReSearch's `/batch_search`."""
    results = await search(state, body.query, body.top_n)
    documents = [_documents(passages) for passages in results]
    if body.return_score:
        return json_response([documents, [_scores(passages) for passages in results]])
    return json_response(documents)


async def answer_search(state: State, body: Any) -> Response:
    """ReSearch's `/search`: one query."""
    (passages,) = await search(state, [body.query], body.top_n)
    if body.return_score:
        return json_response([_documents(passages), _scores(passages)])
    return json_response(_documents(passages))


def _document(passage: Passage) -> dict[str, str]:
    """A passage as a corpus row: its `contents` as the corpus stores them."""
    return {"id": passage.id, "contents": passage.contents}


def _documents(passages: list[Passage]) -> list[dict[str, str]]:
    return [_document(passage) for passage in passages]


def _scored(passages: list[Passage]) -> list[dict[str, Any]]:
    return [{"document": _document(p), "score": float(p.score)} for p in passages]


def _scores(passages: list[Passage]) -> list[float]:
    return [float(passage.score) for passage in passages]


async def health(request: Request) -> Response:
    failure = request.app.state.batcher.failure
    if failure is not None:
        return json_response({"status": "down", "detail": failure}, 503)
    return json_response(
        {"status": "ok", "memory": process_memory(), "indexes": request.app.state.indexes}
    )


async def metrics(request: Request) -> dict[str, Any]:
    state = request.app.state
    return state.stats.snapshot(state.batcher, state.settings.batching)


class FastSearch:
    """ASGI middleware that answers a well-formed search request itself, without FastAPI's
    per-request machinery (routing, dependency solving, a `Request`, the content type parsed by
    `email`): over a retriever that answers at once, 64 single-query clients on the same 2
    cores got 3,300 answers/s through FastAPI and 9,700 through this path, and on a busy
    server that time is taken from the searches. What it takes is exactly what FastAPI's
    endpoints would answer with a 200: a POST to a search path with a JSON content type whose
    body parses, holds nothing JSON cannot carry and passes the endpoint's model, checked the
    same way. Everything else goes on to FastAPI with the body replayed, so every refusal is
    FastAPI's own."""

    def __init__(
        self,
        app: Any,
        state: State,
        answers: dict[str, tuple[type[BaseModel], Callable[[State, Any], Awaitable[Response]]]],
    ) -> None:
        self.app = app
        self.state = state
        self.answers = answers

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        taken = self.answers.get(scope["path"]) if _posts_json(scope) else None
        if taken is None:
            await self.app(scope, receive, send)
            return
        try:
            raw = await _body(receive)
        except HTTPException as error:  # the body is over the limit (RequestGuard)
            await _error_response(error)(scope, receive, send)
            return
        if raw is None:  # the client went away
            return
        model, answer = taken
        body = _valid_body(raw, model)
        if body is None:
            await self.app(scope, _replaying(raw, receive), send)
            return
        try:
            response = await answer(self.state, body)
        except HTTPException as error:
            response = _error_response(error)
        await response(scope, receive, send)


def _posts_json(scope: dict[str, Any]) -> bool:
    """An HTTP POST whose content type is `application/json` (parameters aside)."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def _body(receive: Any) -> bytes | None:
    """The whole request body, or None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _valid_body(raw: bytes, model: type[BaseModel]) -> BaseModel | None:
    """`raw` as `model`, parsed and checked as FastAPI does it (the standard library's JSON,
    `reject_unencodable_values`, the model); None where any of them would refuse it."""
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if has_unencodable_values(parsed):
        return None
    try:
        return model.model_validate(parsed)
    except ValidationError:
        return None


def _replaying(raw: bytes, receive: Any) -> Callable[[], Awaitable[dict[str, Any]]]:
    """`receive` for an app downstream: the body already read, then whatever comes next."""
    pending = [{"type": "http.request", "body": raw, "more_body": False}]

    async def replay() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replay


def _error_response(error: HTTPException) -> Response:
    """What FastAPI's own handler answers for `error`."""
    return json_response({"detail": error.detail}, error.status_code, error.headers)


class InternalErrors:
    """ASGI middleware for a bug in a handler: a 500 naming the error, so a client stops at once
    instead of waiting out a server that would fail the same way again, and its traceback in
    this server's log. Starlette's own 500 handler would re-raise the error to uvicorn, which
    then drops the connection the answer went out on."""

    def __init__(self, app: Any, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if scope["type"] != "http" or started:
                raise
            self.stats.failed += 1
            logger.exception("%s %s failed", scope["method"], scope["path"])
            detail = f"internal server error: {type(error).__name__}: {error}"
            await json_response({"detail": detail}, 500)(scope, receive, send)


# ---------------------------------------------------------------------------------------------
# CLI: research-r1 serve-retriever

_DEFAULT = ServerSettings()


@dataclass
class ServeRetrieverArguments:
    """Serve a retriever over HTTP, behind the Search-R1 and ReSearch APIs at once."""

    retriever: str = field(
        metadata={"help": "retriever YAML (type: bm25|dense|hybrid|remote, ...)"}
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "bind address (loopback: this machine only)"}
    )
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    token_env: str | None = field(
        default=None,
        metadata={
            "help": "environment variable holding a bearer token every request must send "
            "(default: none, no token asked)",
            "metavar": "VAR",
        },
    )
    no_batching: bool = field(
        default=False,
        metadata={
            "help": "run each request as its own search call (for comparison with micro-batching)"
        },
    )
    access_log: bool = field(
        default=False,
        metadata={
            "help": "log a line per request (/metrics already counts requests and their "
            "latency, and training sends thousands a minute)"
        },
    )
    # ServerSettings' limits, their defaults its own
    max_batch_queries: int = field(
        default=_DEFAULT.max_batch_queries,
        metadata={"help": "most queries gathered into one search call"},
    )
    max_wait_ms: float = field(
        default=_DEFAULT.max_wait_ms,
        metadata={"help": "how long the first request of a batch waits for more"},
    )
    regroup_share: float = field(
        default=_DEFAULT.regroup_share,
        metadata={
            "help": "a batch of fewer requests than the last search answered waits for as many, "
            "at most this share of that search's time (0: never)"
        },
    )
    max_queue: int = field(
        default=_DEFAULT.max_queue,
        metadata={
            "help": "queries allowed to wait for the retriever; beyond, requests get 503 "
            "(at least --max_queries_per_request)"
        },
    )
    max_queries_per_request: int = field(
        default=_DEFAULT.max_queries_per_request,
        metadata={
            "help": "most queries in one request, blank ones included (422 beyond); "
            "Search-R1's trainer sends a whole turn in one, 2,560 queries with its script"
        },
    )
    max_query_chars: int = field(
        default=_DEFAULT.max_query_chars,
        metadata={"help": "longest query in characters (422 beyond)"},
    )
    max_body_bytes: int = field(
        default=_DEFAULT.max_body_bytes,
        metadata={
            "help": "largest request body in bytes, a chunked one counted as it arrives (413 "
            "beyond); a request must fit both this and the query limits"
        },
    )
    max_k: int = field(
        default=_DEFAULT.max_k,
        metadata={"help": "largest topk / top_n a request may ask for (422 beyond)"},
    )
    default_k: int = field(
        default=_DEFAULT.default_k, metadata={"help": "k for requests that name none"}
    )


def run_serve_retriever(args: ServeRetrieverArguments) -> int:
    token = _read_token(args.token_env)
    limits = {
        name: value for name, value in asdict(args).items() if name in ServerSettings.model_fields
    }
    settings = ServerSettings(batching=not args.no_batching, token=token, **limits)
    check_port(args.host, args.port)  # before the index loads, which can take minutes
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    retriever = load_retriever(args.retriever)
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s without a token: anyone reaching it can query", args.host)
    logger.info(
        "serving %s on http://%s:%d (batching %s, auth %s)",
        args.retriever,
        args.host,
        args.port,
        "on" if settings.batching else "off",
        "bearer token" if token else "none",
    )
    uvicorn.run(
        create_app(retriever, settings),
        host=args.host,
        port=args.port,
        access_log=args.access_log,
    )
    return 0


def _read_token(var: str | None) -> str | None:
    if var is None:
        return None
    token = os.environ.get(var, "")
    if not token:
        raise InputError(f"--token_env {var}: environment variable {var} is unset or empty")
    return token
