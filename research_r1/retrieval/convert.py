"""`research-r1 build-index convert`: a Flat index made into any FAISS index (SQ8, HNSW32,SQ8,
IVF65536,PQ64, OPQ64_256,IVF4096,PQ64, ...) in bounded memory, resumably, with its recall
against the Flat written beside it.

The Flat index's vectors are read from its file through memory maps a chunk at a time, the
quantiser is trained on a random sample and the vectors added a chunk at a time, with
checkpoints (research_r1.retrieval.streaming). Peak memory, above the process's own:

    2 x the new index's final size (FAISS grows an index's arrays by copying them into arrays
    twice as large, and the allocator keeps what they left)
    + the training sample (train_size x d x 4 bytes, while training)
    + 2 chunks (chunk_size x d x 4 bytes: the mapped rows and the copy FAISS reads)
    + the queries (num_queries x d x 4 bytes) + a few MB of FAISS and allocator state

and never the Flat's size (tests/test_retrieval_convert.py measures it). For wiki-18 (21,015,324
x 768) to SQ8 with the defaults that is at most 2 x 16.1 GB (768 bytes a vector) + 0.6 + 0.6 GB,
computed from the formats, against 64.6 GB for the Flat.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from research_r1.errors import InputError
from research_r1.hub import is_hub_uri, resolve
from research_r1.retrieval.corpus import write_info
from research_r1.retrieval.dense import (
    INDEX_FILE,
    Encoder,
    make_index,
    resolve_index,
    set_search_parameters,
)
from research_r1.retrieval.recall import DEFINITION, KS, measure_recall, write_report
from research_r1.retrieval.streaming import (
    CHECKPOINT_DIR,
    DEFAULT_TRAIN_SIZE,
    Checkpoint,
    add_in_chunks,
    sample_rows,
    train_index,
)

DEFAULT_NUM_QUERIES = 1000
# FAISS's index header: fourcc, d, ntotal, two unused int64, is_trained, metric type (a metric
# above 1 adds a float argument, but only inner product is read here); then a Flat's float count
# as uint64 and its float32 matrix.
_HEADER = struct.Struct("<4siqqq?i")
_COUNT = struct.Struct("<Q")
_FLAT_FOURCCS = (b"IxFI", b"IxF2", b"IxFl")
PASSAGE_QUERIES = "passages used as queries (each left out of its own results)"


class FlatVectors:
    """The vectors of a FAISS inner-product Flat index file, read by mapping only the rows
    asked for (at most `span` rows at once), copying them and unmapping: the matrix is never
    read or mapped whole. Every header field is checked against the file's size, so a file of
    another layout is refused rather than misread."""

    def __init__(self, path: Path, span: int) -> None:
        with path.open("rb") as source:
            head = source.read(_HEADER.size + _COUNT.size)
        if len(head) < _HEADER.size + _COUNT.size:
            raise InputError(f"{path} is not a FAISS index (too short)")
        fourcc, dimension, count, _, _, _, metric = _HEADER.unpack_from(head)
        if fourcc not in _FLAT_FOURCCS:
            kind = fourcc.decode("ascii", errors="replace")
            raise InputError(
                f"{path} is a FAISS {kind!r} index, not a Flat one: convert reads Flat"
            )
        if metric != faiss.METRIC_INNER_PRODUCT:
            name = "L2 distance" if metric == faiss.METRIC_L2 else f"FAISS metric {metric}"
            raise InputError(f"{path} is a Flat index by {name}, not inner product")
        (floats,) = _COUNT.unpack_from(head, _HEADER.size)
        self.offset = _HEADER.size + _COUNT.size
        if floats != count * dimension or path.stat().st_size != self.offset + 4 * floats:
            raise InputError(f"{path} is not a whole Flat index of {count} x {dimension} floats")
        if count == 0:
            raise InputError(f"{path} holds no vectors")
        self.path = path
        self.count = count
        self.dimension = dimension
        self.span = span

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `start..stop` (at most `span` of them), copied out of a map of just those rows."""
        return np.array(self._map(start, stop))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The sorted `rows`, gathered `span` rows of the file at a time."""
        vectors = np.empty((len(rows), self.dimension), dtype=np.float32)
        edges = np.searchsorted(rows, np.arange(0, self.count + self.span, self.span))
        for low, high in itertools.pairwise(edges):
            if low < high:
                mine = rows[low:high]
                vectors[low:high] = self._map(mine[0], mine[-1] + 1)[mine - mine[0]]
        return vectors

    def _map(self, start: int, stop: int) -> np.memmap:
        return np.memmap(
            self.path,
            dtype=np.float32,
            mode="r",
            offset=self.offset + 4 * self.dimension * int(start),
            shape=(int(stop - start), self.dimension),
        )


def convert_index(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    factory: str,
    *,
    chunk_size: int = 100_000,
    train_size: int | None = None,
    queries: np.ndarray | None = None,
    queries_from: str = "queries",
    num_queries: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    k_factor: int | None = None,
    checkpoint_every_s: float = 600.0,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert the Flat index at `source` (a file, a `build-index` folder, Search-R1's parts, or
    an `hf://` URI of one) to `factory` in `out_dir/faiss.index`, beside it its build info (the
    Flat's, `info` over it) and its recall report, which is returned.

    The quantiser is trained on `train_size` vectors drawn at random (default 200,000, or all
    when fewer). Recall is measured with the search parameters given, for `queries` (vectors,
    named `queries_from` in the report) or else `num_queries` passages drawn at random (default
    1,000, or all when fewer). A rerun after a kill resumes from out_dir/checkpoint."""
    if chunk_size < 1:
        raise InputError(f"--chunk_size must be >= 1, got {chunk_size}")
    path, source_info = resolve_index(source)
    out = Path(out_dir)
    if out.resolve() == path.parent.resolve():
        raise InputError(f"--output_dir {out} holds the Flat index {path}: convert into another")
    flat = FlatVectors(path, chunk_size)
    if flat.count <= max(KS):
        raise InputError(f"{path} holds {flat.count} vectors: recall@{max(KS)} needs more")
    index = make_index(factory, flat.dimension)
    set_search_parameters(index, nprobe, ef_search, k_factor)  # refused before any work
    query_vectors, own, queries_from = _query_set(flat, queries, queries_from, num_queries)
    size = min(DEFAULT_TRAIN_SIZE, flat.count) if train_size is None else train_size
    sample = None if index.is_trained else sample_rows(flat.count, size, "--train_size", seed=0)
    built_with = {
        "source": str(path.resolve()),
        "source_bytes": path.stat().st_size,
        "factory": factory,
        "chunk_size": chunk_size,
        "train_size": None if sample is None else size,
    }
    checkpoint = Checkpoint(out / CHECKPOINT_DIR, built_with, checkpoint_every_s)
    resumed = checkpoint.resume()
    if resumed is not None:
        index = resumed
    elif sample is not None:
        train_index(index, flat.take(sample), factory)
        checkpoint.save(index, force=True)
    add_in_chunks(index, flat.read, flat.count, chunk_size, checkpoint, f"converting to {factory}")
    build_time_s = checkpoint.seconds()
    set_search_parameters(index, nprobe, ef_search, k_factor)
    recall = measure_recall(index, query_vectors, own, flat.read, flat.take, flat.count, chunk_size)
    size_bytes = checkpoint.index_path.stat().st_size
    report = {
        "factory": factory,
        "source": str(source),
        "num_vectors": flat.count,
        "dimension": flat.dimension,
        "size_bytes": size_bytes,
        "bytes_per_vector": size_bytes / flat.count,
        "flat_size_bytes": path.stat().st_size,
        "build_time_s": round(build_time_s, 3),
        "train_size": built_with["train_size"],
        "search_parameters": {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor},
        "queries": {"count": len(query_vectors), "from": queries_from},
        "recall": recall,
        "recall_definition": DEFINITION,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_info(
        out,
        {
            **source_info,
            **(info or {}),
            "kind": "dense",
            "num_passages": flat.count,
            "factory": factory,
            "dimension": flat.dimension,
            "converted_from": str(source),
        },
    )
    write_report(out, report)
    checkpoint.finish(out / INDEX_FILE)
    return report


def _query_set(
    flat: FlatVectors, queries: np.ndarray | None, queries_from: str, num_queries: int | None
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(query vectors, each one's own row or None, what they are) for the recall report."""
    if queries is not None:
        if queries.ndim != 2 or queries.shape[1] != flat.dimension or not len(queries):
            raise InputError(
                f"--queries {queries_from}: expected vectors of dimension {flat.dimension}, got "
                f"an array of shape {queries.shape}"
            )
        return np.ascontiguousarray(queries, dtype=np.float32), None, f"queries from {queries_from}"
    size = min(DEFAULT_NUM_QUERIES, flat.count) if num_queries is None else num_queries
    rows = sample_rows(flat.count, size, "--num_queries", seed=1)
    return flat.take(rows), rows, PASSAGE_QUERIES


def read_queries(path_or_uri: str | os.PathLike, encoder: Callable[[], Encoder]) -> np.ndarray:
    """Query vectors from a file, local or `hf://` (e.g. FlashRAG's
    `hf://datasets/RUC-NLPIR/FlashRAG_datasets/nq/test.jsonl`): a .npy array as it is, else one
    query a line (a JSON line's `question`, as in FlashRAG's QA files, or the line itself)
    encoded by `encoder()`."""
    path = resolve(path_or_uri) if is_hub_uri(path_or_uri) else Path(path_or_uri)
    if not path.is_file():
        raise InputError(f"--queries {path} does not exist")
    if path.suffix == ".npy":
        try:
            return np.load(path)
        except ValueError as error:
            raise InputError(f"--queries {path} is not a .npy array: {error}") from error
    lines = path.read_text().splitlines()
    texts = [
        _query_text(line, path, number) for number, line in enumerate(lines, 1) if line.strip()
    ]
    if not texts:
        raise InputError(f"--queries {path} holds no queries")
    return encoder().encode_queries(texts)


def _query_text(line: str, path: Path, number: int) -> str:
    if not line.startswith("{"):
        return line
    try:
        return json.loads(line)["question"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(
            f"--queries {path} line {number}: not a JSON object with a 'question'"
        ) from error
