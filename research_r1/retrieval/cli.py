"""`research-r1 build-index` and `research-r1 search`: build a retriever's index, try it out.

    research-r1 build-index bm25 --corpus corpus.jsonl     # into outputs/indexes/corpus_bm25
    research-r1 search "who wrote hamlet" --retriever outputs/indexes/corpus_bm25/retriever.yaml
    research-r1 build-index dense --corpus hf://datasets/ORG/wiki/wiki-18.jsonl.gz \\
        --encoder intfloat/e5-base-v2 --factory IVF4096,SQ8 --output_dir outputs/indexes/e5 \\
        --push_to_hub ORG/NAME
    research-r1 build-index convert --index outputs/indexes/e5 --factory HNSW32,SQ8

The index folder gets the index, its build info (index_info.json) and `retriever.yaml`, a
retriever config that searches it (`search --retriever`, `eval --retriever`, a recipe's
`retriever`); a converted index also gets its recall against the Flat (recall.json), which
`search` prints. A dense build or a conversion saves the index so far in OUTPUT_DIR/checkpoint,
so running the same command again after an interruption resumes it. The corpus is read through
its Arrow conversion in the cache folder (research_r1.outputs), never written beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from rich.console import Console
from rich.table import Table

from research_r1 import outputs
from research_r1.errors import InputError
from research_r1.hub import is_hub_uri, push_folder, resolve
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import (
    DenseConfig,
    HybridConfig,
    RetrieverConfig,
    build_retriever,
    parse_config,
)
from research_r1.retrieval.convert import convert_index, read_queries
from research_r1.retrieval.corpus import INFO_FILE, load_corpus, read_info
from research_r1.retrieval.dense import EMBEDDINGS_DIR, Encoder, build_dense_index, resolve_index
from research_r1.retrieval.recall import card_section, describe, read_report
from research_r1.retrieval.streaming import CHECKPOINT_DIR

_SHOWN_TEXT_CHARS = 300
_SUFFIXES = (".gz", ".jsonl", ".json", ".parquet", ".arrow", ".index")
RETRIEVER_FILE = "retriever.yaml"  # written beside an index: a config that searches it
CARD_FILE = "README.md"  # the dataset card of a pushed index


@dataclass
class BuildIndexArguments:
    """Build a BM25 or dense (FAISS) index of a corpus, or convert a Flat index to a compressed
    one; each option says which kinds it applies to.

    convert's peak memory: 2 x the new index's final size (FAISS doubles a growing array) + the
    training sample (train_size x d x 4 bytes) + 2 chunks (chunk_size x d x 4 bytes) + the
    queries + a few MB; never the Flat's size. dense's: 2 x the index + the sample + one chunk
    + the encoder."""

    kind: str = field(
        metadata={
            "positional": True,
            "help": "which index to build (convert: from a Flat index)",
            "choices": ["bm25", "dense", "convert"],
        }
    )
    corpus: str | None = field(
        default=None,
        metadata={
            "help": "bm25, dense: jsonl, jsonl.gz or parquet; path or hf://. convert: the "
            "corpus of the Flat index, when it records none"
        },
    )
    index: str | None = field(
        default=None,
        metadata={
            "help": "convert: the Flat index (an index file, a build-index folder, Search-R1's "
            "part_* folder; path or hf://)"
        },
    )
    output_dir: Path | None = field(
        default=None,
        metadata={
            "help": "folder to write the index and its retriever.yaml to (default: "
            "outputs/indexes/CORPUS_KIND, CORPUS the corpus file's name without its suffixes: "
            "corpus_bm25 for corpus.jsonl; convert: outputs/indexes/INDEX_FACTORY)",
            "metavar": "DIR",
        },
    )
    encoder: str | None = field(
        default=None,
        metadata={
            "help": "dense: sentence-transformers model name or path. convert: the Flat "
            "index's, when it records none"
        },
    )
    factory: str = field(
        default="Flat",
        metadata={"help": "dense, convert: FAISS factory string, e.g. HNSW32,SQ8, IVF4096,PQ64"},
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
    chunk_size: int = field(
        default=100_000, metadata={"help": "dense, convert: vectors encoded or added at a time"}
    )
    batch_size: int = field(default=256, metadata={"help": "dense: encoder batch size"})
    train_size: int | None = field(
        default=None,
        metadata={
            "help": "dense, convert: vectors sampled to train IVF/PQ/SQ indexes (default: "
            "200000, or all when fewer)"
        },
    )
    checkpoint_every_s: float = field(
        default=600.0,
        metadata={
            "help": "dense, convert: save the index so far after a chunk at most this often "
            "(seconds); a rerun resumes from it"
        },
    )
    queries: str | None = field(
        default=None,
        metadata={
            "help": "convert: queries to measure recall with, local or hf://: a .npy of "
            "vectors, or one query a line (or a FlashRAG jsonl's question), encoded with the "
            "index's encoder (default: passages, each left out of its own results)",
            "metavar": "FILE",
        },
    )
    num_queries: int | None = field(
        default=None,
        metadata={"help": "convert: passages used as queries (default: 1000, or all when fewer)"},
    )
    nprobe: int | None = field(
        default=None, metadata={"help": "convert: IVF lists searched, for recall and the config"}
    )
    ef_search: int | None = field(
        default=None, metadata={"help": "convert: HNSW efSearch, for recall and the config"}
    )
    k_factor: int | None = field(
        default=None,
        metadata={"help": "convert: ...,RFlat candidates re-ranked (k_factor x k), likewise"},
    )
    device: str | None = field(
        default=None, metadata={"help": "encoder device (default: a GPU when there is one)"}
    )
    save_embeddings: bool = field(
        default=False,
        metadata={"help": "dense: keep each chunk's vectors in OUTPUT_DIR/embeddings"},
    )
    push_to_hub: str | None = field(
        default=None,
        metadata={"help": "upload OUTPUT_DIR to this dataset repo", "metavar": "ORG/NAME"},
    )
    private: bool = field(default=False, metadata={"help": "create the dataset repo private"})


def default_output_dir(args: BuildIndexArguments) -> Path:
    """`outputs/indexes/<corpus>_<kind>`: `wiki-18_dense` for `.../wiki-18.jsonl.gz`; for
    convert `outputs/indexes/<index>_<factory>`: `e5_SQ8` for `outputs/indexes/e5`."""
    if args.kind == "convert":
        name = f"{_stem(args.index)}_{args.factory}"
    else:
        name = f"{_stem(args.corpus)}_{args.kind}"
    return outputs.output_dir("indexes", outputs.folder_name(name))


def _stem(uri: str) -> str:
    stem = PurePosixPath(str(uri).rstrip("/")).name
    while (suffix := PurePosixPath(stem).suffix) in _SUFFIXES:
        stem = stem.removesuffix(suffix)
    return stem


def run_build_index(args: BuildIndexArguments) -> int:
    if args.kind == "convert":
        out, config = _convert(args)
    else:
        out, config = _build(args)
    path = out / RETRIEVER_FILE
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"search it with: research-r1 search QUERY --retriever {path}")
    if args.push_to_hub:
        (out / CARD_FILE).write_text(index_card(out, args.push_to_hub))
        push_folder(
            out,
            args.push_to_hub,
            repo_type="dataset",
            ignore_patterns=[f"{EMBEDDINGS_DIR}/*", f"{CHECKPOINT_DIR}/*", RETRIEVER_FILE],
            private=args.private,
            what=f"push the index to {args.push_to_hub}",
        )
        print(f"pushed to hf://datasets/{args.push_to_hub}")
    return 0


def _build(args: BuildIndexArguments) -> tuple[Path, dict[str, object]]:
    """A BM25 or dense index of `args.corpus`; its folder and a config that searches it."""
    if not args.corpus:
        raise InputError(f"build-index {args.kind} needs --corpus")
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
            checkpoint_every_s=args.checkpoint_every_s,
        )
    print(f"wrote {args.kind} index for {len(corpus)} passages to {out}")
    return out, {"type": args.kind, "corpus": corpus_uri, "index": str(out)}


def _convert(args: BuildIndexArguments) -> tuple[Path, dict[str, object]]:
    """The Flat index `args.index` converted to `args.factory`, with its recall report; its
    folder and a config that searches it with the search parameters recall was measured at."""
    if not args.index:
        raise InputError("build-index convert needs --index (the Flat index to convert)")
    out = Path(args.output_dir or default_output_dir(args))
    given = {
        "corpus": args.corpus,
        "encoder": args.encoder,
        "query_prompt": args.query_prompt,
        "passage_prompt": args.passage_prompt,
    }
    given = {key: value for key, value in given.items() if value is not None}
    if given.get("corpus") and not is_hub_uri(given["corpus"]):
        given["corpus"] = str(Path(given["corpus"]).resolve())
    info = {**_recorded_info(args.index), **given}
    for key in ("corpus", "encoder"):
        if not info.get(key):
            raise InputError(f"--index {args.index} records no {key}: give --{key}")
    queries = None
    if args.queries:
        queries = read_queries(
            args.queries,
            lambda: Encoder(
                info["encoder"], query_prompt=info.get("query_prompt"), device=args.device
            ),
        )
    parameters = {"nprobe": args.nprobe, "ef_search": args.ef_search, "k_factor": args.k_factor}
    report = convert_index(
        args.index,
        out,
        args.factory,
        chunk_size=args.chunk_size,
        train_size=args.train_size,
        queries=queries,
        queries_from=args.queries or "queries",
        num_queries=args.num_queries,
        checkpoint_every_s=args.checkpoint_every_s,
        info=given,
        **parameters,
    )
    print(f"wrote {out}: {describe(report)}")
    config = {"type": "dense", "corpus": info["corpus"], "index": str(out)}
    return out, {**config, **{key: value for key, value in parameters.items() if value is not None}}


def _recorded_info(index: str) -> dict[str, object]:
    """The build info an index folder records, fetched without its index (which may be 60 GB
    to download and reassemble); {} for an index file or a folder without one."""
    path = resolve(index, allow_patterns=[INFO_FILE])
    return read_info(path) if path.is_dir() else {}


def index_card(folder: Path, repo_id: str) -> str:
    """The dataset card of an index pushed to `repo_id`: what it holds, a retriever config that
    searches it and, for a converted index, its recall against the Flat."""
    info = read_info(folder)
    report = read_report(folder)
    config = {"type": info.get("kind", "bm25"), "index": f"hf://datasets/{repo_id}"}
    if report:
        config |= {k: v for k, v in report["search_parameters"].items() if v is not None}
    built = ", ".join(
        f"{key} `{info[key]}`" for key in ("factory", "encoder", "corpus") if info.get(key)
    )
    lines = [
        f"# {repo_id}",
        "",
        f"A {info.get('kind', '')} index of {info.get('num_passages', '?')} passages "
        f"({built}), made by `research-r1 build-index`. A retriever config that searches it:",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines) + ("\n" + card_section(report) if report else "")


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
    config = parse_config(args.retriever)
    results = build_retriever(config).search(args.queries, args.top_k)
    for line in _index_reports(config):
        print(line)
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


def _index_reports(config: RetrieverConfig) -> list[str]:
    """One line per dense index of `config` that has a recall report."""
    dense = config.dense if isinstance(config, HybridConfig) else config
    if not isinstance(dense, DenseConfig):
        return []
    report = read_report(resolve_index(dense.index)[0])
    return [describe(report)] if report else []
