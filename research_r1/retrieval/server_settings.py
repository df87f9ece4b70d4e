"""`ServerSettings`: the batching knobs, request limits and bearer token of one retrieval server.

Its own module because the batcher, the request checks and the app all read it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from research_r1.errors import invalid


class ServerSettings(BaseModel):
    """Batching knobs and request limits of one server.

    With `batching=False` every request is its own search call; calls still run one at a time,
    so the two modes differ only in batching. With `max_wait_ms=0` (the default) a batch is
    whatever arrived while the previous search ran: an idle server answers at once, a busy one
    batches by itself; and one of fewer requests than the last waits up to `regroup_share` of
    that search's time for as many.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    batching: bool = True
    max_batch_queries: int = Field(256, ge=1)  # queries gathered into one search call
    max_wait_ms: float = Field(0.0, ge=0)  # how long the first request of a batch waits for company
    # a batch of fewer requests than the last search answered waits for as many, at most this
    # share of that search's time (0: never); see batching.MicroBatcher
    regroup_share: float = Field(0.1, ge=0, le=1)
    # queries waiting for the retriever before new requests get 503
    max_queue: int = Field(16384, ge=1)
    # Search-R1's trainer sends a whole turn in one request: 2,560 queries with its script
    max_queries_per_request: int = Field(4096, ge=1)
    max_query_chars: int = Field(4096, ge=1)
    # bounds the memory a request can take, whatever it holds
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1)
    max_k: int = Field(100, ge=1)
    default_k: int = Field(3, ge=1)  # Search-R1's paper setting, used when a request names no k
    token: str | None = Field(None, min_length=1, repr=False)  # bearer token; never logged

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as error:
            raise invalid(error, "server setting") from error

    # A field validator sees the fields declared above it (`info.data`), so each limit is
    # checked against the other one it depends on, and an error names the field.
    @field_validator("max_queries_per_request")
    @classmethod
    def _fits_the_queue(cls, value: int, info: ValidationInfo) -> int:
        if value > info.data.get("max_queue", value):
            raise ValueError(
                f"must not exceed max_queue ({info.data['max_queue']}), or such requests could "
                "never be served"
            )
        return value

    @field_validator("default_k")
    @classmethod
    def _within_max_k(cls, value: int, info: ValidationInfo) -> int:
        if value > info.data.get("max_k", value):
            raise ValueError(f"must not exceed max_k ({info.data['max_k']})")
        return value
