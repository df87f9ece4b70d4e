"""Set-ups the Space's tests share (tests/test_space_*.py): the Hamlet episode (its texts,
tokenizer, retriever and a scripted model), retriever configs and a corpus on disk, and the app
served on a loopback port and read back through gradio_client."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import yaml

from research_r1.generation import Generation
from research_r1.protocol import RESEARCH, SEARCH_R1
from research_r1.retrieval import Passage
from research_r1.rollout import FINAL_TURN_NOTICE
from research_r1.tiny import EOS, build_tokenizer

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no calls home

HAMLET = Passage("h1", '"Hamlet (play)"\nHamlet is a tragedy by William Shakespeare.', 2.0)
SHAKESPEARE = Passage("h2", '"William Shakespeare"\nShakespeare (1564-1616) was a playwright.', 1.0)
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
    """Two passages whose titles and texts hold parentheses."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[HAMLET, SHAKESPEARE][:k] for _ in queries]


class ScriptedGenerator:
    """A `Generator` that plays the given turn texts in order, whatever the context."""

    def __init__(self, tokenizer, turns: list[str]) -> None:
        self.tokenizer, self.turns = tokenizer, list(turns)

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = []
        for _ in contexts:
            text = self.turns.pop(0)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            finish = (
                "eos" if text.endswith(EOS) else "stop" if text.endswith(tuple(stop)) else "length"
            )
            generations.append(Generation(ids, [0.0] * len(ids), finish))
        return generations


def hamlet_tokenizer():
    """A tokenizer over `TEXTS` and both protocols' tags."""
    tags = dict.fromkeys(SEARCH_R1.tags + RESEARCH.tags)
    return build_tokenizer(TEXTS, list(tags))


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def write_corpus(path: Path) -> Path:
    """A corpus of the two Hamlet passages, as JSON lines."""
    path.write_text(
        "".join(
            json.dumps({"id": p.id, "contents": f'"{p.title}"\n{p.text}'}) + "\n"
            for p in (HAMLET, SHAKESPEARE)
        )
    )
    return path


def launch(demo):
    """Serve `demo` on a free loopback port; returns a gradio_client Client for it."""
    from gradio_client import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue(max_size=4).launch(
        server_name="127.0.0.1",
        server_port=port,
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
