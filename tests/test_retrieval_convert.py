"""`build-index convert` (research_r1.retrieval.convert, .recall, .streaming): a Flat index read
through memory maps, converted chunk by chunk, resumed after a kill, its recall report checked
against numpy brute force, its memory measured, and its bad inputs refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from research_r1.errors import InputError
from research_r1.retrieval.convert import PASSAGE_QUERIES, FlatVectors, convert_index
from research_r1.retrieval.dense import load_faiss_index, set_search_parameters
from research_r1.retrieval.recall import KS, TIE_TOLERANCE

COUNT, DIM = 3000, 32


def unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_flat(folder: Path, vectors: np.ndarray, index: faiss.Index | None = None) -> Path:
    """`vectors` as a FAISS Flat inner-product index file, `folder/faiss.index`."""
    folder.mkdir(parents=True, exist_ok=True)
    index = index or faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(folder / "faiss.index"))
    return folder / "faiss.index"


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return unit_vectors(COUNT, DIM, seed=0)


@pytest.fixture(scope="module")
def flat(vectors: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flat(tmp_path_factory.mktemp("flat"), vectors).parent


@pytest.fixture
def one_thread() -> Iterator[None]:
    """HNSW inserts in parallel, in an order that differs run to run; with one thread a build is
    reproducible to the byte."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


# --- reading the Flat file ------------------------------------------------------------------------


def test_flat_vectors_are_read_from_the_file_as_faiss_wrote_them(vectors, flat) -> None:
    reader = FlatVectors(flat / "faiss.index", span=700)
    assert (reader.count, reader.dimension) == (COUNT, DIM)
    assert np.array_equal(reader.read(650, 1350), vectors[650:1350])
    rows = np.array([0, 5, 699, 700, 701, 2100, COUNT - 1])
    assert np.array_equal(reader.take(rows), vectors[rows])
    assert np.array_equal(
        reader.read(0, COUNT), faiss.read_index(str(flat / "faiss.index")).reconstruct_n(0, COUNT)
    )


# --- recall against brute force -----------------------------------------------------------------


def brute_force_recall(
    vectors: np.ndarray, queries: np.ndarray, found: np.ndarray, own: np.ndarray | None
) -> dict[str, float]:
    """recall@k in float64 numpy: the share of each found top k (own row dropped) whose exact
    score reaches the exact k-th score (less TIE_TOLERANCE). Near ties aside, that is the plain
    overlap of the two top k's, which it must not fall short of."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    if own is not None:
        scores[np.arange(len(own)), own] = -np.inf
    exact = np.argsort(-scores, axis=1)
    recall = {}
    for k in KS:
        hits = overlap = 0
        for query, rows in enumerate(found):
            rows = [r for r in rows if r >= 0 and (own is None or r != own[query])][:k]
            kth = scores[query, exact[query, k - 1]]
            hits += sum(scores[query, r] >= kth - TIE_TOLERANCE for r in rows)
            overlap += len(set(rows) & set(exact[query, :k].tolist()))
        assert overlap <= hits <= overlap * 1.001
        recall[str(k)] = hits / (k * len(found))
    return recall


@pytest.mark.parametrize(
    ("factory", "parameters"),
    [
        ("SQ4", {}),
        ("IVF16,PQ8x4", {"nprobe": 3}),
        ("HNSW8", {"ef_search": 10}),
        ("IVF16,PQ4x4,RFlat", {"nprobe": 2, "k_factor": 2}),
    ],
)
def test_recall_equals_numpy_brute_force(vectors, flat, tmp_path, factory, parameters) -> None:
    """Every passage a query (each without itself), then 200 outside queries: the report's
    recall is numpy's, computed from the converted index's own answers."""
    out = tmp_path / "out"
    report = convert_index(flat, out, factory, chunk_size=700, num_queries=COUNT, **parameters)
    index = load_faiss_index(out / "faiss.index")
    set_search_parameters(index, **{"nprobe": None, "ef_search": None, **parameters})
    found = index.search(vectors, max(KS) + 1)[1]
    expected = brute_force_recall(vectors, vectors, found, own=np.arange(COUNT))
    assert report["recall"] == expected
    assert report["queries"] == {"count": COUNT, "from": PASSAGE_QUERIES}
    assert min(expected.values()) < 1  # a lossy index: the test tells hits from misses

    queries = unit_vectors(200, DIM, seed=9)
    report = convert_index(
        flat, tmp_path / "given", factory, queries=queries, queries_from="q.npy", **parameters
    )
    index = load_faiss_index(tmp_path / "given" / "faiss.index")
    set_search_parameters(index, **{"nprobe": None, "ef_search": None, **parameters})
    found = index.search(queries, max(KS))[1]
    assert report["recall"] == brute_force_recall(vectors, queries, found, own=None)
    assert report["queries"] == {"count": 200, "from": "queries from q.npy"}


def test_report_fields_and_info(vectors: np.ndarray, tmp_path: Path) -> None:
    flat = write_flat(tmp_path / "flat", vectors).parent
    (flat / "index_info.json").write_text(json.dumps({"corpus": "c.jsonl", "encoder": "e5"}))
    report = convert_index(
        flat,
        tmp_path,
        "IVF8,SQ8",
        chunk_size=1000,
        train_size=1500,
        nprobe=2,
        info={"encoder": "mine"},
    )
    size = (tmp_path / "faiss.index").stat().st_size
    assert report == json.loads((tmp_path / "recall.json").read_text())
    assert report["factory"] == "IVF8,SQ8" and report["source"] == str(flat)
    assert (report["num_vectors"], report["dimension"]) == (COUNT, DIM)
    assert report["size_bytes"] == size and report["bytes_per_vector"] == size / COUNT
    assert report["flat_size_bytes"] == (flat / "faiss.index").stat().st_size
    assert report["train_size"] == 1500 and report["build_time_s"] >= 0
    assert report["search_parameters"] == {"nprobe": 2, "ef_search": None, "k_factor": None}
    assert report["queries"] == {"count": 1000, "from": PASSAGE_QUERIES}
    assert set(report["recall"]) == {"1", "3", "5"}
    info = json.loads((tmp_path / "index_info.json").read_text())
    assert info == {
        "corpus": "c.jsonl",
        "encoder": "mine",
        "kind": "dense",
        "num_passages": COUNT,
        "factory": "IVF8,SQ8",
        "dimension": DIM,
        "converted_from": str(flat),
    }
    assert not (tmp_path / "checkpoint").exists()


# --- resuming after a kill ----------------------------------------------------------------------


class Killed(Exception):
    pass


def kill_on_read(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """FlatVectors.read raises on its `call`-th call: the process dies while adding."""
    read = FlatVectors.read
    calls = []

    def dying(self, start: int, stop: int) -> np.ndarray:
        calls.append(start)
        if len(calls) == call:
            raise Killed
        return read(self, start, stop)

    monkeypatch.setattr(FlatVectors, "read", dying)


@pytest.mark.parametrize("factory", ["SQ8", "IVF8,PQ8x4", "HNSW8,SQ8"])
def test_a_killed_convert_resumes_to_the_same_index(
    flat, tmp_path, monkeypatch, one_thread, factory
) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    options = {"chunk_size": 500, "num_queries": 100, "checkpoint_every_s": 0}
    kill_on_read(monkeypatch, call=4)  # after three chunks of six
    with pytest.raises(Killed):
        convert_index(flat, killed, factory, **options)
    partial = faiss.read_index(str(killed / "checkpoint" / "partial.index"))
    assert partial.ntotal == 1500 and not (killed / "faiss.index").exists()
    monkeypatch.undo()

    added: list[int] = []
    read = FlatVectors.read
    monkeypatch.setattr(FlatVectors, "read", lambda self, a, b: added.append(a) or read(self, a, b))
    resumed = convert_index(flat, killed, factory, **options)
    assert added[:3] == [1500, 2000, 2500]  # then the recall pass reads every chunk
    monkeypatch.undo()
    report = convert_index(flat, whole, factory, **options)
    assert (killed / "faiss.index").read_bytes() == (whole / "faiss.index").read_bytes()
    assert {**resumed, "build_time_s": 0} == {**report, "build_time_s": 0}
    assert not (killed / "checkpoint").exists()


def test_checkpoints_wait_for_their_interval(flat, tmp_path, monkeypatch) -> None:
    """With a long interval a kill keeps only the trained quantiser, saved before any chunk."""
    kill_on_read(monkeypatch, call=4)
    with pytest.raises(Killed):
        convert_index(flat, tmp_path, "SQ8", chunk_size=500, checkpoint_every_s=3600)
    partial = faiss.read_index(str(tmp_path / "checkpoint" / "partial.index"))
    assert partial.is_trained and partial.ntotal == 0
    monkeypatch.undo()
    with pytest.raises(InputError, match=r"checkpoint holds a build of .*'factory': 'SQ8'"):
        convert_index(flat, tmp_path, "SQ4", chunk_size=500)
    convert_index(flat, tmp_path, "SQ8", chunk_size=500)
    assert faiss.read_index(str(tmp_path / "faiss.index")).ntotal == COUNT


# --- memory -------------------------------------------------------------------------------------

MEASURE = """
import json, sys
from research_r1.retrieval.convert import convert_index

def status(field: str) -> int:
    with open("/proc/self/status") as lines:
        return 1024 * int(next(line for line in lines if line.startswith(field)).split()[1])

before = status("VmRSS:")
report = convert_index(
    sys.argv[1], sys.argv[2], sys.argv[3], chunk_size=5000, train_size=5000, num_queries=200
)
print(json.dumps({"growth": status("VmHWM:") - before, "size": report["size_bytes"]}))
"""
# VmHWM, the peak of this process's own memory, rather than getrusage's ru_maxrss: a process
# started by exec inherits the ru_maxrss of the process that started it (here pytest's, larger).
ALLOWANCE = 16 * 2**20  # the "few MB of FAISS and allocator state" of the stated bound


@pytest.mark.parametrize("factory", ["SQ4", "IVF64,PQ16"])
def test_peak_memory_stays_under_the_stated_bound(tmp_path: Path, factory: str) -> None:
    """A 51 MB Flat converted in a process of its own: its peak resident memory grows by at most
    2 x the new index + the sample + 2 chunks + the queries + 16 MiB, which is less than the
    Flat it never loads."""
    count, dim = 200_000, 64
    flat = tmp_path / "flat"
    write_flat(flat, unit_vectors(count, dim, seed=1))
    flat_bytes = (flat / "faiss.index").stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(flat), str(tmp_path / "out"), factory],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(done.stdout.splitlines()[-1])
    floats = 4 * dim
    bound = 2 * measured["size"] + (5000 + 2 * 5000 + 200) * floats + ALLOWANCE
    assert bound < flat_bytes * 0.75
    assert measured["growth"] <= bound, measured


# --- bad input ----------------------------------------------------------------------------------


def one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


def test_bad_sources_are_refused(flat: Path, vectors: np.ndarray, tmp_path: Path) -> None:
    sq8 = faiss.index_factory(DIM, "SQ8", faiss.METRIC_INNER_PRODUCT)
    sq8.train(vectors)
    path = write_flat(tmp_path / "sq8", vectors, sq8)
    with pytest.raises(InputError) as error:
        convert_index(path, tmp_path / "out", "SQ4")
    assert one_line(error) == f"{path} is a FAISS 'IxSQ' index, not a Flat one: convert reads Flat"

    path = write_flat(tmp_path / "l2", vectors, faiss.IndexFlatL2(DIM))
    with pytest.raises(InputError, match="is a Flat index by L2 distance, not inner product"):
        convert_index(path, tmp_path / "out", "SQ4")

    cut = tmp_path / "cut.index"
    cut.write_bytes((flat / "faiss.index").read_bytes()[:-4])
    with pytest.raises(InputError) as error:
        convert_index(cut, tmp_path / "out", "SQ4")
    assert one_line(error) == f"{cut} is not a whole Flat index of {COUNT} x {DIM} floats"

    with pytest.raises(InputError) as error:
        convert_index(tmp_path / "missing.index", tmp_path / "out", "SQ4")
    assert one_line(error) == f"{tmp_path / 'missing.index'} does not exist"

    with pytest.raises(InputError, match=r"--output_dir .* holds the Flat index"):
        convert_index(flat, flat, "SQ4")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"factory": "SQ9"}, "FAISS factory string 'SQ9' is not valid for dimension 32: "),
        ({"train_size": COUNT + 1}, f"--train_size must be between 1 and the {COUNT} vectors "),
        ({"num_queries": COUNT + 1}, f"--num_queries must be between 1 and the {COUNT} vectors"),
        ({"chunk_size": 0}, "--chunk_size must be >= 1, got 0"),
        ({"queries": np.ones((3, 7), np.float32)}, "--queries q.npy: expected vectors of dimen"),
        ({"factory": "IVF4,PQ8", "train_size": 100}, r"cannot train IVF4,PQ8 on 100 vectors \(--"),
        ({"factory": "HNSW8", "nprobe": 2}, r"nprobe does not apply to this index \(IndexHNSW"),
    ],
)
def test_bad_options_are_refused_in_one_line(flat, tmp_path, options, message) -> None:
    options = {"factory": "SQ8", "queries_from": "q.npy", **options}
    with pytest.raises(InputError, match=message) as error:
        convert_index(flat, tmp_path / "out", **options)
    one_line(error)
