"""benchmarks/compressed_indexes.py's pure parts: the streamed Flat file FAISS would write, the
size formulas the wiki-18 table rests on, and the synthetic mixture."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports its sibling retrieval.py
import compressed_indexes as bench

from research_r1.retrieval.convert import FlatVectors


def test_streamed_flat_file_is_byte_identical_to_faiss_own(tmp_path: Path) -> None:
    mixture = bench.make_mixture(seed=0, dimension=bench.DIMENSION)
    parts = [bench.synthetic_chunk(mixture, rows, seed)[0] for seed, rows in enumerate((7, 5))]
    path = tmp_path / "streamed.index"
    bench.write_flat(path, 12, bench.DIMENSION, iter(parts))
    index = faiss.IndexFlatIP(bench.DIMENSION)
    index.add(np.concatenate(parts))
    assert path.read_bytes() == faiss.serialize_index(index).tobytes()
    assert np.array_equal(FlatVectors(path, 4).read(0, 12), np.concatenate(parts))


def test_a_short_stream_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="wrote 3 vectors, expected 4"):
        bench.write_flat(tmp_path / "x.index", 4, 8, iter([np.zeros((3, 8), np.float32)]))
    assert not (tmp_path / "x.index").exists()


@pytest.mark.parametrize(
    ("factory", "nlist", "tolerance"),
    [("Flat", 0, 0.0), ("SQ8", 0, 0.0), ("IVF16,PQ8x4", 16, 0.0), ("HNSW8,SQ8", 0, 0.02)],
)
def test_size_formulas_match_faiss_files(factory: str, nlist: int, tolerance: float) -> None:
    """The formula, plus FAISS's fixed headers (under 300 bytes), is the file's size; HNSW's
    upper levels are random, so its size is the expectation within `tolerance`."""
    count, dimension = 4000, 32
    vectors = np.random.default_rng(0).standard_normal((count, dimension)).astype(np.float32)
    index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    size = len(faiss.serialize_index(index))
    predicted, _ = bench.wiki18_bytes(factory, count, dimension, nlist)
    assert abs(size - predicted) <= tolerance * size + 300


def test_synthetic_vectors_are_unit_seeded_and_in_a_cone() -> None:
    mixture = bench.make_mixture(seed=3)
    vectors, fine = bench.synthetic_chunk(mixture, 2000, seed=1)
    again, _ = bench.synthetic_chunk(mixture, 2000, seed=1)
    assert np.array_equal(vectors, again)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    stats = bench.embedding_stats(vectors, sample=200)
    assert stats["mean_pair_cosine"] == pytest.approx(bench.CONE, abs=0.03)
    assert stats["top_neighbour_cosine"] > stats["mean_pair_cosine"]
    assert fine.max() < bench.TOPICS * bench.FINE_PER_TOPIC
