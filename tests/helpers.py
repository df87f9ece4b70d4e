"""Set-ups the test files share: files on disk (JSON lines, a corpus, a BM25 retriever, a YAML
config), retriever and policy test doubles, a retrieval server on a loopback port, the toy
evaluation world's data, a Hub whose uploads are faked, and the Space's Hamlet episode with the
app served on a loopback port. The fixtures built on them are in conftest.py.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from huggingface_hub import HfApi
from live_server import LiveServer

from research_r1 import hub as hub_io
from research_r1.generators import Generation
from research_r1.protocol import RESEARCH, SEARCH_R1
from research_r1.retrieval import Passage
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.retrieval.server import ServerSettings, create_app
from research_r1.rollout import FINAL_TURN_NOTICE
from research_r1.tiny import EOS, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def free_port() -> int:
    """A port nothing listens on (for a server that is not there, or started later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Files


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any] | str]) -> Path:
    """Rows as JSON lines; a str row is written as the raw line (for malformed input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_qa(path: Path, rows: Sequence[tuple[Any, str, list[str]]]) -> Path:
    """A question file of (id, question, golden answers) rows."""
    return write_jsonl(path, [{"id": i, "question": q, "golden_answers": a} for i, q, a in rows])


# A dozen encyclopedia passages (title, text), with a few facts that take two hops.
PASSAGES = [
    ("Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("Macbeth", "Macbeth is a tragedy by Shakespeare about a Scottish general and his wife."),
    ("Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("Lyon", "Lyon is a French city at the confluence of the Rhone and the Saone rivers."),
    ("Seine", "The Seine is a river in northern France that flows through Paris."),
    ("Mount Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ("K2", "K2 is the second highest mountain on Earth, in the Karakoram range."),
    ("Citibank", "Citibank was founded in 1812 as the City Bank of New York."),
    ("James Madison", "James Madison was president of the United States from 1809 to 1817."),
    ("Voyager 2", "Voyager 2 was launched on a Titan IIIE rocket and flew past Uranus in 1986."),
    ("Uranus", "Uranus is the seventh planet from the Sun; only Voyager 2 has visited it."),
    ("Titan IIIE", "The Titan IIIE rocket launched both Voyager probes and the Helios probes."),
]


# Two retrieved passages as the corpus stores them (the second's text of two lines).
TWO_PASSAGES = [
    Passage(id="1", contents='"Paris"\nParis is the capital of France.', score=2.5),
    Passage(id="7", contents='"Eiffel Tower"\nA tower in Paris.\nBuilt in 1889.', score=1.0),
]


def write_corpus(path: Path, passages: Sequence[tuple[str, str]] = PASSAGES) -> Path:
    """A Search-R1 style jsonl corpus of (title, text) passages, with ids "0", "1", ..."""
    contents = [f'"{title}"\n{text}' for title, text in passages]
    return write_jsonl(path, [{"id": str(i), "contents": c} for i, c in enumerate(contents)])


# Corpus `contents` whose first line is not one title in one pair of quotes (`""Title: ...
# Text: ...`, no quotes, quotes inside, no newline after it, CR LF): each must be encoded,
# indexed and served exactly as stored, never rebuilt from a title and text.
MALFORMED_CONTENTS = [
    '""Title: Kyoto Protocol Text: A treaty that extends the 1992 climate convention.',
    '""Title: Sea otter" Text: A marine mammal of the North Pacific.\nIt eats sea urchins.',
    "Unquoted Vesuvius\nA volcano on the Gulf of Naples, without quotes around its title.",
    '"Say "hi" to Zanzibar""\nA title with quotes inside it and one too many at its end.',
    '  "Spaced Reykjavik"  \nThe capital of Iceland, its title line padded with spaces.',
    '"Carriage Return Lisbon"\r\nThe capital of Portugal, its title line ending in CR LF.',
    '"Only a title: Timbuktu"',
    '"Trailing newline Quito"\n',
    '"Café – naïve Montréal"\nA city in Québec ✓, a tab\there.\n\nAnd a blank line.',
]


def write_bm25(root: Path, contents: Sequence[str]) -> Path:
    """A corpus of `contents` (ids "0", "1", ...), its BM25 index and the retriever config
    (`root/bm25.yaml`) that loads them."""
    corpus = write_jsonl(
        root / "corpus.jsonl", [{"id": str(i), "contents": c} for i, c in enumerate(contents)]
    )
    build_bm25_index(load_corpus(corpus), root / "bm25", corpus_uri=str(corpus))
    config = root / "bm25.yaml"
    config.write_text(f"type: bm25\nindex: {root / 'bm25'}\ncorpus: {corpus}\n")
    return config


# A converted index's recall.json (research_r1.retrieval.convert writes these keys)
RECALL_REPORT = {
    "factory": "SQ8",
    "source": "/indexes/flat/faiss.index",
    "num_vectors": 12,
    "dimension": 384,
    "size_bytes": 5000,
    "bytes_per_vector": 416.7,
    "flat_size_bytes": 18500,
    "build_time_s": 0.25,
    "train_size": 12,
    "search_parameters": {"nprobe": None, "ef_search": None, "k_factor": None},
    "queries": {"count": 12, "from": "passages"},
    "recall": {"1": 1.0, "3": 0.972, "5": 0.95},
}


def write_config(path: Path, config: dict) -> Path:
    """`config` as YAML (a retriever config, a template)."""
    path.write_text(yaml.safe_dump(config))
    return path


# ---------------------------------------------------------------------------------------------
# Retrievers and policies


def passages_for(query: str, k: int) -> list[Passage]:
    """The k passages RecordingRetriever finds for `query`: made up, the same every time."""
    return [
        Passage(f"{query}#{i}", f'"title {query}"\nfact {i} about {query}', 1.0 / (i + 1))
        for i in range(k)
    ]


class RecordingRetriever:
    """Deterministic passages per query (`passages_for`); remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append((list(queries), k))
        return [passages_for(query, k) for query in queries]


class Scripted:
    """A `Generator` that writes fixed turns. Given a mapping, turns per question: the question
    is found in the context's text, and the turn is the number of observations after it, so a
    batch that is played again question by question replays the same turns. Given a list, its
    turns in order, whatever the context (for a protocol or an episode whose observations are not
    Search-R1's `<information>`)."""

    def __init__(
        self,
        tokenizer,
        scripts: Mapping[str, Sequence[str]] | Sequence[str],
        fail_on: str | None = None,
    ) -> None:
        self.tokenizer, self.fail_on = tokenizer, fail_on
        self.scripts = scripts if isinstance(scripts, Mapping) else list(scripts)
        self.contexts: list[str] = []

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            text = self.tokenizer.decode(context)
            self.contexts.append(text)
            turn = self._turn(text)
            ids = self.tokenizer.encode(turn, add_special_tokens=False)[:budget]
            finish = "eos" if turn.endswith(EOS) else "stop" if turn.endswith(tuple(stop)) else ""
            generations.append(Generation(ids, [0.0] * len(ids), finish or "length"))
        return generations

    def _turn(self, text: str) -> str:
        if not isinstance(self.scripts, Mapping):
            return self.scripts.pop(0)
        question = next(q for q in self.scripts if q in text)
        if question == self.fail_on:
            raise KeyboardInterrupt  # stands for the process dying mid-run
        return self.scripts[question][text.split(question, 1)[1].count("</information>")]


# ---------------------------------------------------------------------------------------------
# The toy evaluation world (the `toy_world` and `scripted` fixtures): three questions, a
# passage each, and what the scripted policy writes for each question, turn by turn.

TOY_QA = [
    ("q1", "who wrote hamlet", ["Shakespeare"]),
    ("q2", "capital of france?", ["Paris"]),
    ("q3", "tallest mountain", ["Everest"]),
]
TOY_CORPUS = [
    '"Hamlet"\nHamlet is a tragedy written by Shakespeare.',
    '"France"\nThe capital of France is Paris.',
    '"Everest"\nThe tallest mountain is Everest.',
]
TOY_SCRIPTS = {
    "who wrote hamlet?": [
        "<think> I need to search </think><search> hamlet author </search>",
        "<think> found it </think><answer> Shakespeare </answer>",
    ],
    "capital of france?": ["<think> I know it </think><answer> Lyon </answer>"],
    "tallest mountain?": ["<think> no idea </think>" + EOS],
}


# ---------------------------------------------------------------------------------------------
# A retrieval server on a loopback port, with a retriever whose ranking is known

SERVER_CORPUS = [
    ("p1", "Paris", "Paris is the capital of France."),
    ("p2", "Berlin", "Berlin is the capital of Germany."),
    ("p3", "Eiffel Tower", "The Eiffel Tower stands in Paris."),
    ("p4", "Rhine", "The Rhine flows through Germany."),
]
# Its passages as the server's JSON answers hold them.
PARIS = {"id": "p1", "contents": '"Paris"\nParis is the capital of France.'}
BERLIN = {"id": "p2", "contents": '"Berlin"\nBerlin is the capital of Germany.'}
TOWER = {"id": "p3", "contents": '"Eiffel Tower"\nThe Eiffel Tower stands in Paris.'}
RHINE = {"id": "p4", "contents": '"Rhine"\nThe Rhine flows through Germany.'}
QUERIES = ["capital of France", "Eiffel Tower Paris"]
JSON = {"Content-Type": "application/json"}


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class OverlapRetriever:
    """Ranks SERVER_CORPUS by the number of distinct words shared with the query (ties by id),
    and records every call; with a `gate` each call blocks until the test opens it."""

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
            for pid, title, text in SERVER_CORPUS
        ]
        return sorted(passages, key=lambda p: (-p.score, p.id))


@contextmanager
def serving(retriever: Any, **settings: Any) -> Iterator[str]:
    """The url of `retriever` served with these settings, for the duration of the block."""
    with LiveServer(create_app(retriever, ServerSettings(**settings))) as server:
        yield server.url


# ---------------------------------------------------------------------------------------------
# The Hub

COMMIT = SimpleNamespace(oid="0" * 40)  # what HfApi.upload_folder returns


def fake_hub(monkeypatch, upload_folder) -> None:
    """HfApi with repo creation a no-op and `upload_folder(api, **kwargs)` as its upload; Hub
    retries without the back-off wait."""
    monkeypatch.setattr(HfApi, "create_repo", lambda api, *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(hub_io, "retry", functools.partial(hub_io.retry, backoff_s=0.0))


# ---------------------------------------------------------------------------------------------
# The Space's Hamlet episode (tests/test_space_*.py): two passages whose titles and texts hold
# parentheses, a search turn then an answer, a tokenizer over them, and the app served on a
# loopback port and read back through gradio_client.

HAMLET_PAIRS = (
    ("Hamlet (play)", "Hamlet is a tragedy by William Shakespeare."),
    ("William Shakespeare", "Shakespeare (1564-1616) was a playwright."),
)
HAMLET, SHAKESPEARE = (
    Passage(f"h{i}", f'"{title}"\n{text}', score)
    for i, (title, text), score in zip((1, 2), HAMLET_PAIRS, (2.0, 1.0), strict=True)
)
SEARCH_TURN = "<think> I need the author. </think>\n<search> hamlet author </search>"
ANSWER_TURN = "<think> Shakespeare wrote it. </think>\n<answer> William Shakespeare </answer>"
TEXTS = [
    "Question: who wrote hamlet?\n",
    SEARCH_TURN,
    ANSWER_TURN,
    *(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate((HAMLET, SHAKESPEARE), 1)),
    SEARCH_R1.invalid_notice,
    FINAL_TURN_NOTICE,
    # Unused words: they fix the vocabulary, hence the random model these tests expect.
    "Search failed: connection refused",
    "The final answer is \\[ \\boxed{William Shakespeare} \\]",
]


class HamletRetriever:
    """HAMLET and SHAKESPEARE for every query."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[HAMLET, SHAKESPEARE][:k] for _ in queries]


def hamlet_tokenizer():
    """A tokenizer over `TEXTS` and both protocols' tags."""
    tags = dict.fromkeys(SEARCH_R1.tags + RESEARCH.tags)
    return build_tokenizer(TEXTS, list(tags))


def launch(demo):
    """Serve `demo` on a free loopback port; returns a gradio_client Client for it."""
    from gradio_client import Client

    demo.queue(max_size=4).launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        ssr_mode=False,
        quiet=True,
    )
    return Client(demo.local_url, verbose=False)


def summary(history: list[dict]) -> list[tuple[str, str | None, str]]:
    """(role, metadata title, text) per message, as gradio_client returns the chat."""
    return [
        (
            message["role"],
            (message.get("metadata") or {}).get("title"),
            "".join(part["text"] for part in message["content"]),
        )
        for message in history
    ]


def asgi_post(path: str, headers: Sequence[tuple[bytes, bytes]]) -> dict:
    """The ASGI scope of a POST to `path` on 127.0.0.1, for driving an app by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
