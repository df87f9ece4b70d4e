"""BM25 over the corpus with bm25s: English stemming (PyStemmer) and stopwords.

bm25s precomputes every (term, passage) score into a sparse matrix saved as `.npy` arrays, so a
saved index loads memory-mapped and a query costs one sparse column sum per query term. Passage
`i` in the index is row `i` of the corpus it was built from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import bm25s
import Stemmer
from bm25s.tokenization import Tokenizer

from research_r1.errors import InputError
from research_r1.retrieval import Passage
from research_r1.retrieval.corpus import Corpus, write_info

STOPWORDS = "en"
_TOKENIZE_ROWS = 10_000


def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def build_bm25_index(
    corpus: Corpus, out_dir: str | os.PathLike, corpus_uri: str | None = None
) -> Path:
    """Index every corpus passage (title and text) and save the index to `out_dir`."""
    tokenizer = Tokenizer(stemmer=_stemmer(), stopwords=STOPWORDS)
    texts = (
        text
        for start in range(0, len(corpus), _TOKENIZE_ROWS)
        for text in corpus.contents(start, min(start + _TOKENIZE_ROWS, len(corpus)))
    )
    token_ids = tokenizer.tokenize(texts, length=len(corpus), update_vocab=True, return_as="ids")
    model = bm25s.BM25()
    model.index((token_ids, tokenizer.get_vocab_dict()))
    out = Path(out_dir)
    model.save(out)
    write_info(out, {"kind": "bm25", "corpus": corpus_uri, "num_passages": len(corpus)})
    return out


class BM25Retriever:
    """Searches a saved bm25s index, memory-mapped. Only passages that share a term with the
    query are returned, so a query of stopwords or unknown words gets an empty list."""

    def __init__(self, corpus: Corpus, index_dir: str | os.PathLike) -> None:
        index_dir = Path(index_dir)
        if not (index_dir / "params.index.json").is_file():
            raise InputError(f"{index_dir} is not a BM25 index folder (no params.index.json)")
        self.model = bm25s.BM25.load(index_dir, mmap=True)
        size = self.model.scores["num_docs"]
        if size != len(corpus):
            raise InputError(
                f"BM25 index {index_dir} has {size} passages but corpus {corpus.path} has "
                f"{len(corpus)}: the index must be built from this corpus"
            )
        self.corpus = corpus
        self.index_dir = index_dir
        self._stemmer = _stemmer()

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        tokens = bm25s.tokenize(
            list(queries),
            stopwords=STOPWORDS,
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )
        rows, scores = self.model.retrieve(tokens, k=min(k, len(self.corpus)), show_progress=False)
        keep = scores > 0
        return self.corpus.results(
            [r[m] for r, m in zip(rows, keep, strict=True)],
            [s[m] for s, m in zip(scores, keep, strict=True)],
        )
