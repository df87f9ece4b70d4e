"""`research-r1 build-index` and `research-r1 search`: build a retriever's index, try it out.

    research-r1 build-index bm25 --corpus corpus.jsonl     # into outputs/indexes/corpus_bm25
    research-r1 search "who wrote hamlet" --retriever outputs/indexes/corpus_bm25/retriever.yaml
    research-r1 build-index dense --corpus hf://datasets/ORG/wiki/wiki-18.jsonl.gz \\
        --encoder intfloat/e5-base-v2 --factory IVF4096,SQ8 --output_dir outputs/indexes/e5 \\
        --push_to_hub ORG/NAME

The index folder gets the index, its build info (index_info.json) and `retriever.yaml`, a
retriever config that searches it (`search --retriever`, `eval --retriever`, a recipe's
`retriever`). A dense build saves each encoded chunk under OUTPUT_DIR/embeddings and skips
chunks already there, so running the same command again after an interruption resumes it. The
corpus is read through its Arrow conversion in the cache folder (research_r1.outputs), never
written beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from rich.console import Console
from rich.table import Table

from research_r1 import outputs
from research_r1.errors import InputError
from research_r1.hub import is_hub_uri, push_folder
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import load_corpus
from research_r1.retrieval.dense import EMBEDDINGS_DIR, Encoder, build_dense_index

_SHOWN_TEXT_CHARS = 300
_CORPUS_SUFFIXES = (".gz", ".jsonl", ".json", ".parquet", ".arrow")
RETRIEVER_FILE = "retriever.yaml"  # written beside an index: a config that searches it


@dataclass
class BuildIndexArguments:
    """Build a BM25 or dense (FAISS) index of a corpus; the dense options apply to dense only."""

    kind: str = field(
        metadata={"positional": True, "help": "which index to build", "choices": ["bm25", "dense"]}
    )
    corpus: str = field(metadata={"help": "jsonl, jsonl.gz or parquet; path or hf://"})
    output_dir: Path | None = field(
        default=None,
        metadata={
            "help": "folder to write the index and its retriever.yaml to (default: "
            "outputs/indexes/CORPUS_KIND, CORPUS the corpus file's name without its suffixes: "
            "corpus_bm25 for corpus.jsonl)",
            "metavar": "DIR",
        },
    )
    encoder: str | None = field(
        default=None, metadata={"help": "sentence-transformers model name or path"}
    )
    factory: str = field(
        default="Flat", metadata={"help": "FAISS factory string, e.g. HNSW32, SQ8"}
    )
    query_prompt: str | None = field(
        default=None,
        metadata={
            "help": "the encoder's query prompt (default: its family's, e.g. e5's 'query: ')"
        },
    )
    passage_prompt: str | None = field(
        default=None,
        metadata={"help": "the encoder's passage prompt (default: its family's)"},
    )
    chunk_size: int = field(default=100_000, metadata={"help": "passages per saved chunk"})
    batch_size: int = field(default=256, metadata={"help": "encoder batch size"})
    train_size: int = field(
        default=200_000, metadata={"help": "vectors sampled to train IVF/PQ indexes"}
    )
    device: str | None = field(
        default=None, metadata={"help": "encoder device (default: a GPU when there is one)"}
    )
    save_embeddings: bool = field(
        default=False, metadata={"help": "keep OUTPUT_DIR/embeddings after the build"}
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "upload OUTPUT_DIR to this dataset repo", "metavar": "ORG/NAME"},
    )
    private: bool = field(default=False, metadata={"help": "create the dataset repo private"})


def default_output_dir(args: BuildIndexArguments) -> Path:
    """`outputs/indexes/<corpus>_<kind>`: `wiki-18_dense` for `.../wiki-18.jsonl.gz`."""
    stem = PurePosixPath(str(args.corpus).rstrip("/")).name
    while (suffix := PurePosixPath(stem).suffix) in _CORPUS_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return outputs.output_dir("indexes", outputs.folder_name(f"{stem}_{args.kind}"))


def run_build_index(args: BuildIndexArguments) -> int:
    if args.kind == "dense" and not args.encoder:
        raise InputError("build-index dense needs --encoder (e.g. intfloat/e5-base-v2)")
    out = Path(args.output_dir or default_output_dir(args))
    corpus = load_corpus(args.corpus)
    corpus_uri = args.corpus if is_hub_uri(args.corpus) else str(Path(args.corpus).resolve())
    if args.kind == "bm25":
        build_bm25_index(corpus, out, corpus_uri=corpus_uri)
    else:
        encoder = Encoder(
            args.encoder,
            query_prompt=args.query_prompt,
            passage_prompt=args.passage_prompt,
            device=args.device,
            batch_size=args.batch_size,
        )
        build_dense_index(
            corpus,
            encoder,
            out,
            factory=args.factory,
            chunk_size=args.chunk_size,
            train_size=args.train_size,
            save_embeddings=args.save_embeddings,
            corpus_uri=corpus_uri,
        )
    config = out / RETRIEVER_FILE
    config.write_text(
        yaml.safe_dump(
            {"type": args.kind, "corpus": corpus_uri, "index": str(out)}, sort_keys=False
        )
    )
    print(f"wrote {args.kind} index for {len(corpus)} passages to {out}; search it with")
    print(f"research-r1 search QUERY --retriever {config}")
    if args.push_to_hub:
        push_folder(
            out,
            args.push_to_hub,
            repo_type="dataset",
            ignore_patterns=[f"{EMBEDDINGS_DIR}/*", RETRIEVER_FILE],  # local paths
            private=args.private,
            what=f"push the index to {args.push_to_hub}",
        )
        print(f"pushed to hf://datasets/{args.push_to_hub}")
    return 0


@dataclass
class SearchArguments:
    """Search with a retriever config; print a table per query."""

    queries: list[str] = field(
        metadata={"positional": True, "help": "one or more queries", "metavar": "QUERY"}
    )
    retriever: str = field(metadata={"help": "retriever YAML (path or hf:// URI)"})
    top_k: int = field(default=3, metadata={"help": "passages per query"})


def run_search(args: SearchArguments) -> int:
    if args.top_k < 1:
        raise InputError(f"--top_k must be >= 1, got {args.top_k}")
    results = load_retriever(args.retriever).search(args.queries, args.top_k)
    console = Console()
    for query, passages in zip(args.queries, results, strict=True):
        table = Table(title=query, show_lines=True)
        for column in ("#", "score", "id", "title", "text"):
            table.add_column(column, overflow="fold")
        for rank, passage in enumerate(passages, 1):
            text = passage.text
            if len(text) > _SHOWN_TEXT_CHARS:
                text = text[:_SHOWN_TEXT_CHARS] + "…"
            table.add_row(str(rank), f"{passage.score:.4f}", passage.id, passage.title, text)
        console.print(table)
    return 0
