"""Test-wide setup: a hermetic Hub environment and the `hub` fixture (a loopback Hub server).

huggingface_hub and datasets read HF_ENDPOINT, HF_HOME and the offline flags when they are first
imported, so the environment is fixed here, at conftest import, before any test module imports
them: every Hub call in the test session goes to the loopback server on a free 127.0.0.1 port
(never to the network), caches live in a fresh temporary HF_HOME, and no user token is seen.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_HUB_PORT = _free_loopback_port()
_HF_HOME = tempfile.mkdtemp(prefix="research-r1-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{_HUB_PORT}",
    HF_HUB_DISABLE_XET="1",
    HF_HOME=_HF_HOME,
    HF_HUB_CACHE=str(Path(_HF_HOME) / "hub"),
    HF_DATASETS_CACHE=str(Path(_HF_HOME) / "datasets"),
    HF_HUB_DISABLE_TELEMETRY="1",
)
for _name in (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
):
    os.environ.pop(_name, None)

from loopback_hub import LoopbackHub  # noqa: E402  (the environment must be set first)


@pytest.fixture(scope="session")
def hub() -> Iterator[LoopbackHub]:
    """A loopback Hugging Face Hub that the real huggingface_hub and datasets clients talk to.

    HF_ENDPOINT already points at it, so unmodified client code works: `HfApi`,
    `hf_hub_download`, `snapshot_download`, `HfFileSystem`, `Dataset.push_to_hub`,
    `datasets.load_dataset(repo_id, name, split=...)` and `research_r1.hub`.

    - `hub.token`: the one valid write token; pass it as `token=` (HF_TOKEN is unset).
    - `hub.endpoint`: the server's URL (equal to HF_ENDPOINT).
    - `hub.new_repo_id("name")`: a repo id no other test has used, e.g. "loopback-user/name-3";
      use one per test, since the server lives for the whole session.
    - `hub.requests`: recent "METHOD /path" lines, e.g. to check an upload went through LFS.
    - `hub.inject_failure("/commit/", status=500, times=1)`: fail the next matching requests.
    """
    with LoopbackHub(_HUB_PORT) as server:
        yield server
