"""Recall of an index against the exact (Flat) search it approximates, and the report written
beside a converted index (`recall.json`), which `research-r1 search` prints and a Hub push puts
in the dataset card.

recall@k is the share of each approximate top k whose exact score reaches the exact k-th score,
averaged over the queries, so an exact tie counts as a hit (as benchmarks/retrieval.py counts
it). A passage used as a query is left out of both top lists, since it finds itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

RECALL_FILE = "recall.json"
KS = (1, 3, 5)
TIE_TOLERANCE = 1e-5  # exact scores this close to the k-th count as ties
DEFINITION = (
    "recall@k: the share of each top k whose exact (Flat) score reaches the exact k-th score, "
    "averaged over the queries; a passage used as a query is left out of both top lists"
)

Reader = Callable[[int, int], np.ndarray]  # rows start..stop of the exact vectors
Taker = Callable[[np.ndarray], np.ndarray]  # the exact vectors of sorted rows


def measure_recall(
    index: Any,
    queries: np.ndarray,
    own: np.ndarray | None,
    read: Reader,
    take: Taker,
    total: int,
    chunk_size: int,
) -> dict[str, float]:
    """recall@1/3/5 of `index` for `queries` against exact search over `total` vectors, read a
    chunk at a time; `own` is each query's own row when the queries are passages, else None."""
    k = max(KS)
    depth = k + (own is not None)
    exact_scores, _ = _first(*exact_top(queries, read, total, chunk_size, depth), own, k)
    found = _first(*index.search(queries, depth), own, k)[1]
    scores = _exact_scores(queries, found, take)
    return {str(n): recall_at(found[:, :n], scores[:, :n], exact_scores[:, n - 1]) for n in KS}


def exact_top(
    queries: np.ndarray, read: Reader, total: int, chunk_size: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) by inner product, one chunk of vectors in memory at a time."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        scores, rows = faiss.knn(
            queries, read(start, stop), min(k, stop - start), metric=faiss.METRIC_INNER_PRODUCT
        )
        heap.add_result(scores, rows + start)
    heap.finalize()
    return heap.D, heap.I


def recall_at(found: np.ndarray, scores: np.ndarray, kth: np.ndarray) -> float:
    """The share of `found` rows (-1: none) whose exact `scores` reach each query's `kth`."""
    hits = (found >= 0) & (scores >= kth[:, None] - TIE_TOLERANCE)
    return float(hits.sum() / found.size)


def _first(
    scores: np.ndarray, rows: np.ndarray, own: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's first k results without FAISS's -1 padding and, given `own`, its own row;
    missing places are -1 (score -inf)."""
    keep = rows >= 0
    if own is not None:
        keep &= rows != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    return (
        np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf),
        np.where(kept, np.take_along_axis(rows, order, axis=1), -1),
    )


def _exact_scores(queries: np.ndarray, found: np.ndarray, take: Taker) -> np.ndarray:
    """Each found row's exact inner product with its query (-inf where none was found)."""
    rows = np.unique(found[found >= 0])
    if not len(rows):
        return np.full(found.shape, -np.inf)
    vectors = take(rows)[np.searchsorted(rows, np.maximum(found, 0))]
    return np.where(found >= 0, np.einsum("qkd,qd->qk", vectors, queries), -np.inf)


def write_report(folder: Path, report: Mapping[str, Any]) -> None:
    (folder / RECALL_FILE).write_text(json.dumps(report, indent=2) + "\n")


def read_report(index_path: Path) -> dict[str, Any] | None:
    """The report beside an index file (or in an index folder); None when it has none."""
    folder = index_path if index_path.is_dir() else index_path.parent
    path = folder / RECALL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def describe(report: Mapping[str, Any]) -> str:
    """The report as one line."""
    recall = ", ".join(f"@{k} {value:.3f}" for k, value in report["recall"].items())
    return (
        f"{report['factory']} index, recall vs Flat {recall} on {report['queries']['count']} "
        f"{report['queries']['from']}{_parameters(report)}; {_size(report['size_bytes'])} "
        f"({report['bytes_per_vector']:.1f} B/vector), built in {report['build_time_s']:.1f} s"
    )


def card_section(report: Mapping[str, Any]) -> str:
    """The report as a dataset card section (markdown)."""
    recall = report["recall"]
    return "\n".join(
        [
            "## Recall against the Flat index",
            "",
            "| " + " | ".join(f"recall@{k}" for k in recall) + " |",
            "|" + "---|" * len(recall),
            "| " + " | ".join(f"{value:.4f}" for value in recall.values()) + " |",
            "",
            f"Measured on {report['queries']['count']} {report['queries']['from']}"
            f"{_parameters(report)}, against `{report['source']}`. {DEFINITION}.",
            "",
            f"- factory string: `{report['factory']}`",
            f"- vectors: {report['num_vectors']} of dimension {report['dimension']}",
            f"- size: {report['size_bytes']} bytes ({report['bytes_per_vector']:.1f} per vector; "
            f"the Flat index: {report['flat_size_bytes']} bytes)",
            f"- build time: {report['build_time_s']:.1f} s (training and adding)",
            "",
        ]
    )


def _parameters(report: Mapping[str, Any]) -> str:
    given = {k: v for k, v in report["search_parameters"].items() if v is not None}
    return f" with {', '.join(f'{k} {v}' for k, v in given.items())}" if given else ""


def _size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
