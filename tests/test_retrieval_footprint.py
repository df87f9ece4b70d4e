"""What a serving process holds (research_r1.retrieval.footprint): its memory read from
/proc/self/status, the index and corpus files behind each kind of retriever with the recall
report, and, in subprocesses, that a memory-mapped index is shared between processes and costs
no anonymous memory where reading it into RAM would."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import RECALL_REPORT, write_bm25

from research_r1.retrieval.client import RemoteRetriever
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.footprint import (
    MIB,
    memory_line,
    process_memory,
    recall_lines,
    served_indexes,
)
from research_r1.retrieval.recall import describe, write_report


def test_process_memory_reads_the_resident_split(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(
        "Name:\tpython\nVmRSS:\t  300 kB\nRssAnon:\t  100 kB\nRssFile:\t  196 kB\n"
        "RssShmem:\t   4 kB\nVmSwap:\t  0 kB\n"
    )
    assert process_memory(status) == {
        "resident_bytes": 300 * 1024,
        "anonymous_bytes": 100 * 1024,
        "file_backed_bytes": 196 * 1024,
        "shared_memory_bytes": 4 * 1024,
    }
    status.write_text("VmRSS:\t  3072 kB\nRssAnon:\t  1024 kB\nRssFile:\t  2048 kB\n")
    assert memory_line(process_memory(status)) == (
        "resident 3 MiB (anonymous 1 MiB, file-backed 2 MiB)"
    )
    status.write_text("VmRSS:\t  300 kB\n")  # a kernel before 4.5
    old = process_memory(status)
    assert old["resident_bytes"] == 300 * 1024 and old["anonymous_bytes"] is None
    assert old["absent"] == f"{status} has no RssAnon, RssFile, RssShmem (Linux before 4.5?)"
    assert memory_line(old) == "resident 0 MiB"


def test_process_memory_says_what_is_absent_without_proc(tmp_path: Path) -> None:
    memory = process_memory(tmp_path / "no-proc" / "status")
    assert {key: memory[key] for key in memory if key != "absent"} == {
        "resident_bytes": None,
        "anonymous_bytes": None,
        "file_backed_bytes": None,
        "shared_memory_bytes": None,
    }
    assert "resident memory is reported on Linux only" in memory["absent"]
    assert memory_line(memory) == memory["absent"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_process_memory_of_this_process_adds_up() -> None:
    memory = process_memory()
    parts = ("anonymous_bytes", "file_backed_bytes", "shared_memory_bytes")
    assert memory["resident_bytes"] == sum(memory[part] for part in parts)
    assert memory["anonymous_bytes"] > 10 * MIB  # an interpreter with numpy and faiss loaded


def test_served_indexes_carry_files_and_recall(minilm_index, tmp_path: Path) -> None:
    """A dense index carries its file, its corpus and its recall report (None without one);
    BM25 its corpus; a hybrid both of its parts; a remote retriever nothing."""
    _, built = minilm_index
    converted = shutil.copytree(built, tmp_path / "converted")
    write_report(converted, RECALL_REPORT)
    dense = load_retriever({"type": "dense", "index": str(converted)})
    (entry,) = served_indexes(dense)
    index_file = converted / "faiss.index"
    assert entry == {
        "kind": "dense",
        "index": {"path": str(index_file), "size_bytes": index_file.stat().st_size},
        "corpus": {"path": str(dense.corpus.path), "size_bytes": dense.corpus.path.stat().st_size},
        "recall": RECALL_REPORT,
    }
    assert recall_lines([entry]) == [f"{index_file}: {describe(RECALL_REPORT)}"]

    bm25 = write_bm25(tmp_path, ["one passage", "another passage"]).parent / "bm25"
    hybrid = load_retriever(
        {"type": "hybrid", "bm25": {"index": str(bm25)}, "dense": {"index": str(built)}}
    )
    bm25_entry, flat_entry = served_indexes(hybrid)
    bm25_files = [f for f in bm25.iterdir() if f.is_file()]
    assert bm25_entry["kind"] == "bm25" and bm25_entry["index"] == {  # a folder: its files' sum
        "path": str(bm25),
        "size_bytes": sum(f.stat().st_size for f in bm25_files),
    }
    assert len(bm25_files) > 1 and not any(f.is_dir() for f in bm25.iterdir())
    assert bm25_entry["recall"] is None and bm25_entry["corpus"]["size_bytes"] > 0
    assert flat_entry["recall"] is None  # a Flat has no report
    assert recall_lines([bm25_entry, flat_entry]) == [
        f"{bm25}: no recall report",
        f"{built / 'faiss.index'}: no recall report",
    ]
    assert served_indexes(RemoteRetriever("http://127.0.0.1:1")) == []


# --- memory maps, measured in subprocesses -----------------------------------------------------

DIM = 128
# A process that loads each `mmap:PATH` with load_faiss_index and each `ram:PATH` read into
# RAM (what load_faiss_index falls back to for an index FAISS cannot map), keeping them all,
# searches each with every list probed (so every page of it is read), prints RssAnon and
# RssFile before and after as JSON, and holds its maps until its stdin closes.
WORKER = r"""
import json, re, sys
import faiss, numpy as np
from research_r1.retrieval.dense import load_faiss_index

def status():
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB$", open("/proc/self/status").read(), re.M))
    return {name: int(fields[name]) * 1024 for name in ("RssAnon", "RssFile")}

kept, grown = [], []
for spec in sys.argv[1:]:
    mode, path = spec.split(":", 1)
    before = status()
    index = load_faiss_index(path) if mode == "mmap" else faiss.read_index(path)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = ivf.nlist
    index.search(np.random.default_rng(1).standard_normal((64, index.d)).astype(np.float32), 10)
    kept.append(index)
    after = status()
    grown.append({name: after[name] - before[name] for name in after})
print(json.dumps(grown), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def big_indexes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """64 MB indexes of random vectors (building them takes about 4 s on 2 cores)."""
    folder = tmp_path_factory.mktemp("big-indexes")
    rng = np.random.default_rng(0)
    paths = {}
    for factory, count in (("Flat", 125_000), ("SQ8", 500_000), ("IVF64,SQ8", 500_000)):
        index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        index.train(rng.standard_normal((20_000, DIM)).astype(np.float32))
        for start in range(0, count, 100_000):
            index.add(rng.standard_normal((min(100_000, count - start), DIM)).astype(np.float32))
        paths[factory] = folder / f"{factory.replace(',', '_')}.index"
        faiss.write_index(index, str(paths[factory]))
    return paths


@contextmanager
def workers(*specs: list[str]) -> Iterator[list[tuple[int, list[dict[str, int]]]]]:
    """One worker per spec list, started together; yields each one's pid and growth once all
    have searched, and ends them on leaving."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    try:
        yield [(worker.pid, json.loads(worker.stdout.readline())) for worker in started]
    finally:
        for worker in started:
            worker.stdin.close()
            worker.wait(timeout=60)


def mapped(pid: int, path: Path) -> dict[str, int]:
    """The smaps fields (bytes) of process `pid`'s mappings of `path`, summed."""
    totals: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        header = re.match(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$", line)
        if header:
            inside = header[1] == str(path)
            continue
        field = re.match(r"^(\w+):\s+(\d+) kB$", line)
        if inside and field:
            totals[field[1]] = totals.get(field[1], 0) + int(field[2]) * 1024
    return totals


def rollup(pid: int) -> dict[str, int]:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {name: int(kb) * 1024 for name, kb in re.findall(r"^(\w+):\s+(\d+) kB$", text, re.M)}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/smaps")
def test_two_processes_mapping_one_index_share_its_pages(big_indexes) -> None:
    """Each process has the whole 61 MiB Flat resident after a search, but as pages shared with
    the other: its proportional share (Pss) is half, and nothing of it is private. Measured (2
    cores, faiss 1.15.1): per process Rss 61.0 MiB, Shared 61.0 MiB, Pss 30.5 MiB, Private 0;
    RssAnon grew 8 kB in each, RssFile 62.0 MiB. The shared pages count as Shared_Dirty while
    the page cache has not yet written back the file this test just wrote, Shared_Clean after:
    dirty there is the file's state, not a write of ours (the map is read-only)."""
    path = big_indexes["Flat"]
    size = path.stat().st_size
    with workers([f"mmap:{path}"], [f"mmap:{path}"]) as both:
        seen = [(mapped(pid, path), rollup(pid), grown) for pid, (grown,) in both]
    for index, whole, grown in seen:
        assert index["Rss"] > 0.95 * size
        assert index["Shared_Clean"] + index["Shared_Dirty"] > 0.95 * size
        assert index["Private_Clean"] + index["Private_Dirty"] < 0.01 * size
        assert abs(index["Pss"] - index["Rss"] / 2) < 0.05 * size
        assert whole["Shared_Clean"] + whole["Shared_Dirty"] > 0.95 * size  # smaps_rollup
        assert grown["RssAnon"] < 0.05 * size and grown["RssFile"] > 0.95 * size


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_mapped_indexes_cost_no_anonymous_memory_where_a_ram_read_does(big_indexes) -> None:
    """load_faiss_index maps SQ8 and IVF-SQ8 indexes: searching every page of them grows RssAnon
    by under 4 MiB, where reading the same files into RAM grows it by their size. Measured (2
    cores, faiss 1.15.1; RssAnon growth mapped / read into RAM, file size; in MiB): Flat 0.0 /
    61.0 (61.0), SQ8 0.0 / 61.0 (61.0), IVF64,SQ8 0.8 / 64.6 (64.9); not built here (slow to
    build at this size): IVF16,PQ64 3.4 / 55.0 (55.1), IVF16,PQ128x4 4.1 / 68.5 (68.7),
    IVF16,PQ16,RFlat 0.1 / 51.1 (51.3), HNSW16,SQ8 2.2 / 51.9 (51.9: the graph maps too; only its
    levels and offsets, 12 B a vector, are read)."""
    names = ("SQ8", "IVF64,SQ8")
    specs = [f"mmap:{big_indexes[n]}" for n in names] + [f"ram:{big_indexes[n]}" for n in names]
    with workers(specs) as ((_, grown),):
        pass
    for name, by_map, by_read in zip(names, grown[:2], grown[2:], strict=True):
        size = big_indexes[name].stat().st_size
        assert by_map["RssAnon"] < 4 * MIB, name
        assert by_map["RssFile"] > 0.9 * size, name
        assert by_read["RssAnon"] > 0.9 * size, name
