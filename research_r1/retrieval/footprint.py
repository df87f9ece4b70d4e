"""What a serving process holds, for the retrieval server's `/health`: its resident memory and
the index and corpus files behind its retriever, with the index's recall report.

Indexes and corpora are memory-mapped, so their pages count as resident only once a search has
read them, and as file-backed (`RssFile`), not anonymous (`RssAnon`): the kernel may drop them
and read them again, and every process mapping the same file shares one copy through the page
cache. Anonymous memory is this process's own (Python, the encoder, search buffers, and any
index FAISS could not map). A file's size beside the file-backed figure tells how much of it
can be resident.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from research_r1.retrieval import Retriever
from research_r1.retrieval.bm25 import BM25Retriever
from research_r1.retrieval.dense import DenseRetriever
from research_r1.retrieval.hybrid import HybridRetriever
from research_r1.retrieval.recall import describe

STATUS = Path("/proc/self/status")
# /health's name -> the /proc/<pid>/status field (Linux >= 4.5); VmRSS is the sum of the others
MEMORY_FIELDS = {
    "resident_bytes": "VmRSS",
    "anonymous_bytes": "RssAnon",
    "file_backed_bytes": "RssFile",
    "shared_memory_bytes": "RssShmem",
}
MIB = 2**20
_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$", re.MULTILINE)


def process_memory(status: Path = STATUS) -> dict[str, Any]:
    """This process's resident memory in bytes by kind, read from `status`; a field it lacks
    is None, and `absent` says what could not be read (another OS than Linux has no /proc)."""
    try:
        text = status.read_text()
    except OSError as error:
        return dict.fromkeys(MEMORY_FIELDS) | {
            "absent": f"cannot read {status} on {sys.platform} ({error.strerror}): resident "
            "memory is reported on Linux only"
        }
    found = dict(_FIELD.findall(text))
    memory: dict[str, Any] = {
        key: int(found[name]) * 1024 if name in found else None
        for key, name in MEMORY_FIELDS.items()
    }
    missing = [name for name in MEMORY_FIELDS.values() if name not in found]
    if missing:
        memory["absent"] = f"{status} has no {', '.join(missing)} (Linux before 4.5?)"
    return memory


def memory_line(memory: dict[str, Any]) -> str:
    """`process_memory()` as a log line, in MiB."""
    if memory["resident_bytes"] is None:
        return memory["absent"]
    parts = {"anonymous": memory["anonymous_bytes"], "file-backed": memory["file_backed_bytes"]}
    split = ", ".join(f"{name} {size / MIB:.0f} MiB" for name, size in parts.items() if size)
    return f"resident {memory['resident_bytes'] / MIB:.0f} MiB" + (f" ({split})" if split else "")


def served_indexes(retriever: Retriever) -> list[dict[str, Any]]:
    """Each local index behind `retriever`: its kind, its file and its corpus's (path and size),
    and its recall report (None when it has none: BM25, a Flat, an index not made by
    `convert`). A remote retriever has none here: its own server reports them."""
    if isinstance(retriever, HybridRetriever):
        return [entry for part in retriever.retrievers for entry in served_indexes(part)]
    if isinstance(retriever, DenseRetriever):
        return [
            {
                "kind": "dense",
                "index": _file(retriever.index_path),
                "corpus": _file(retriever.corpus.path),
                "recall": retriever.recall,
            }
        ]
    if isinstance(retriever, BM25Retriever):
        return [
            {
                "kind": "bm25",
                "index": _file(retriever.index_dir),
                "corpus": _file(retriever.corpus.path),
                "recall": None,
            }
        ]
    return []


def recall_lines(indexes: list[dict[str, Any]]) -> list[str]:
    """One line per index saying its recall against the Flat, or that it has no report."""
    lines = []
    for entry in indexes:
        where = entry["index"]["path"] if entry["index"] else f"{entry['kind']} index"
        report = entry["recall"]
        lines.append(f"{where}: {describe(report) if report else 'no recall report'}")
    return lines


def _file(path: Path | None) -> dict[str, Any] | None:
    """Path and size in bytes of a file, or of a folder's files (a BM25 index is a folder)."""
    if path is None:
        return None
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return {"path": str(path), "size_bytes": sum(f.stat().st_size for f in files)}
