"""The retrieval server's settings (research_r1.retrieval.server_settings): bad values name their
key, the token stays out of reprs, and the default limits take Search-R1's largest request."""

from __future__ import annotations

import httpx
import pytest
from helpers import RHINE, OverlapRetriever, serving

from research_r1.errors import InputError
from research_r1.retrieval.server import ServerSettings


def test_bad_settings_name_the_field() -> None:
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
        (
            {"regroup_share": 1.5},
            "key 'regroup_share': Input should be less than or equal to 1, got 1.5",
        ),
        ({"max_k": True}, "key 'max_k': Input should be a valid integer, got True"),
        ({"token": ""}, "key 'token': String should have at least 1 character, got ''"),
    ]:
        with pytest.raises(InputError) as error:
            ServerSettings(**settings)
        assert str(error.value) == f"server setting: {message}"
    assert "s3cret" not in repr(ServerSettings(token="s3cret"))


def test_default_limits_take_4096_queries_in_one_request(http: httpx.Client) -> None:
    retriever = OverlapRetriever()
    with serving(retriever) as url:
        response = http.post(f"{url}/retrieve", json={"queries": ["Rhine"] * 4096, "topk": 1})
        too_many = http.post(f"{url}/retrieve", json={"queries": ["Rhine"] * 4097, "topk": 1})
    assert response.status_code == 200 and response.json() == {"result": [[RHINE]] * 4096}
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "queries"]
