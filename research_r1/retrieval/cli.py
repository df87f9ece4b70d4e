"""`research-r1 build-index` and `research-r1 search`: build a retriever's index, try it out.

    research-r1 build-index bm25 --corpus corpus.jsonl --out indexes/bm25
    research-r1 build-index dense --corpus hf://datasets/ORG/wiki/wiki-18.jsonl.gz \\
        --encoder intfloat/e5-base-v2 --factory IVF4096,SQ8 --out indexes/e5 --push-to-hub ORG/NAME
    research-r1 search "who wrote hamlet" --config retriever.yaml -k 3

A dense build saves each encoded chunk under OUT/embeddings and skips chunks already there, so
running the same command again after an interruption resumes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from research_r1.errors import InputError
from research_r1.hub import create_repo, is_hub_uri, upload_folder
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import load_corpus
from research_r1.retrieval.dense import EMBEDDINGS_DIR, Encoder, build_dense_index

_SHOWN_TEXT_CHARS = 300


def configure_build_index(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["bm25", "dense"], help="which index to build")
    parser.add_argument("--corpus", required=True, help="jsonl, jsonl.gz or parquet; path or hf://")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the index to")
    dense = parser.add_argument_group("dense")
    dense.add_argument("--encoder", help="sentence-transformers model name or path")
    dense.add_argument("--factory", default="Flat", help="FAISS factory string, e.g. HNSW32, SQ8")
    dense.add_argument("--query-prompt", help="override the encoder family's query prompt")
    dense.add_argument("--passage-prompt", help="override the encoder family's passage prompt")
    dense.add_argument("--chunk-size", type=int, default=100_000, help="passages per saved chunk")
    dense.add_argument("--batch-size", type=int, default=256, help="encoder batch size")
    dense.add_argument(
        "--train-size", type=int, default=200_000, help="vectors sampled to train IVF/PQ indexes"
    )
    dense.add_argument("--device", help="encoder device (default: a GPU when there is one)")
    dense.add_argument(
        "--save-embeddings", action="store_true", help="keep OUT/embeddings after the build"
    )
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload OUT to this dataset repo")
    hub.add_argument("--private", action="store_true", help="create the dataset repo private")


def run_build_index(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.corpus)
    corpus_uri = args.corpus if is_hub_uri(args.corpus) else str(Path(args.corpus).resolve())
    if args.kind == "bm25":
        build_bm25_index(corpus, args.out, corpus_uri=corpus_uri)
    else:
        if not args.encoder:
            raise InputError("build-index dense needs --encoder (e.g. intfloat/e5-base-v2)")
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
            args.out,
            factory=args.factory,
            chunk_size=args.chunk_size,
            train_size=args.train_size,
            save_embeddings=args.save_embeddings,
            corpus_uri=corpus_uri,
        )
    print(f"wrote {args.kind} index for {len(corpus)} passages to {args.out}")
    if args.push_to_hub:
        create_repo(args.push_to_hub, "dataset", private=args.private)
        upload_folder(
            args.out, args.push_to_hub, "dataset", ignore_patterns=[f"{EMBEDDINGS_DIR}/*"]
        )
        print(f"pushed to hf://datasets/{args.push_to_hub}")
    return 0


def configure_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="one or more queries")
    parser.add_argument("--config", required=True, help="retriever YAML (path or hf:// URI)")
    parser.add_argument("-k", type=int, default=3, help="passages per query (default 3)")


def run_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise InputError(f"-k must be >= 1, got {args.k}")
    results = load_retriever(args.config).search(args.queries, args.k)
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
