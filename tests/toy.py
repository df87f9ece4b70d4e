"""Toy pieces for tests of whole episodes: a policy whose turns are written in advance, and a
BM25 retriever over a handful of passages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from research_r1.generation import Generation
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.tiny import EOS


class Scripted:
    """A `Generator` that writes fixed turns per question. The question is found in the
    context's text, and the turn is the number of observations after it, so a batch that is
    played again question by question replays the same turns."""

    def __init__(
        self, tokenizer, scripts: Mapping[str, Sequence[str]], fail_on: str | None = None
    ) -> None:
        self.tokenizer, self.scripts, self.fail_on = tokenizer, scripts, fail_on
        self.contexts: list[str] = []

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            text = self.tokenizer.decode(context)
            self.contexts.append(text)
            question = next(q for q in self.scripts if q in text)
            if question == self.fail_on:
                raise KeyboardInterrupt  # stands for the process dying mid-run
            turn = self.scripts[question][text.split(question, 1)[1].count("</information>")]
            ids = self.tokenizer.encode(turn, add_special_tokens=False)[:budget]
            finish = "eos" if turn.endswith(EOS) else "stop" if turn.endswith(tuple(stop)) else ""
            generations.append(Generation(ids, [0.0] * len(ids), finish or "length"))
        return generations


def write_bm25(root: Path, contents: Sequence[str]) -> Path:
    """A corpus of `contents` (ids "0", "1", ...), its BM25 index and the retriever config
    (`root/bm25.yaml`) that loads them."""
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "contents": c}) + "\n" for i, c in enumerate(contents))
    )
    build_bm25_index(load_corpus(corpus), root / "bm25", corpus_uri=str(corpus))
    config = root / "bm25.yaml"
    config.write_text(f"type: bm25\nindex: {root / 'bm25'}\ncorpus: {corpus}\n")
    return config
