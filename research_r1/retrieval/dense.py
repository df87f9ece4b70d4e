"""Dense retrieval: a sentence-transformers encoder and a FAISS inner-product index.

Vectors are L2-normalised, so inner product is cosine similarity. Retrieval models are trained
with fixed text prefixes (e5: `query: ` / `passage: `; bge: an instruction before queries only);
`Encoder` passes them to sentence-transformers explicitly, so each is applied exactly once and a
model's own configured default prompt never stacks on top.

Building a wiki-scale index must survive interruptions and not hold 21M x 768 floats in RAM: the
FAISS index (any factory string: Flat, HNSW32, SQ8, IVF4096,PQ64, ...) is trained on a random
sample of passages, then filled a chunk at a time (encode, add, checkpoint), and a killed build
resumes from its last checkpoint (research_r1.retrieval.streaming). Saved indexes load
memory-mapped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from research_r1.errors import InputError
from research_r1.hub import resolve, resolve_split
from research_r1.retrieval import Passage
from research_r1.retrieval.corpus import INFO_FILE, Corpus, read_info, write_info
from research_r1.retrieval.recall import RECALL_FILE
from research_r1.retrieval.streaming import (
    CHECKPOINT_DIR,
    DEFAULT_TRAIN_SIZE,
    Checkpoint,
    add_in_chunks,
    index_parts,
    sample_rows,
    train_index,
)

logger = logging.getLogger(__name__)

INDEX_FILE = "faiss.index"
EMBEDDINGS_DIR = "embeddings"
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
# (pattern on the model's last name component, query prompt, passage prompt)
KNOWN_PROMPTS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"(multilingual-)?e5-(small|base|large)(-v2)?"), "query: ", "passage: "),
    (re.compile(r"bge-(small|base|large)-en(-v1\.5)?"), BGE_QUERY_INSTRUCTION, ""),
)

Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def known_prompts(model_name: str) -> tuple[str, str]:
    """(query prompt, passage prompt) for a known model family, matched on the name's last
    component (so a local copy named `e5-base-v2` counts); ("", "") for any other model."""
    name = Path(model_name.rstrip("/")).name.lower()
    for pattern, query, passage in KNOWN_PROMPTS:
        if pattern.fullmatch(name):
            return query, passage
    return "", ""


class Encoder:
    """A sentence-transformers model with its query and passage prompts fixed at construction."""

    def __init__(
        self,
        model_name: str,
        query_prompt: str | None = None,
        passage_prompt: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
        model: Any = None,
        max_length: int | None = None,
        fp16: bool = False,
    ) -> None:
        """`model` is an already loaded SentenceTransformer (else `model_name` is loaded on
        `device`); prompts left as None come from `known_prompts(model_name)`. `max_length`
        cuts the tokens a text is read to (Search-R1's server reads 256); `fp16` runs the model
        in half precision on a GPU, as Search-R1's server does."""
        if model is None:
            model = SentenceTransformer(model_name, device=device)
        if max_length is not None:
            model.max_seq_length = max_length
        if fp16 and str(model.device).startswith("cuda"):
            model.half()
        default_query, default_passage = known_prompts(model_name)
        self.name = model_name
        self.query_prompt = default_query if query_prompt is None else query_prompt
        self.passage_prompt = default_passage if passage_prompt is None else passage_prompt
        self.batch_size = batch_size
        self.model = model

    @property
    def dimension(self) -> int:
        # sentence-transformers 6 renamed the method; 5.x only has the old name.
        get = getattr(self.model, "get_embedding_dimension", None)
        return int((get or self.model.get_sentence_embedding_dimension)())

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self._encode(queries, self.query_prompt)

    def encode_passages(self, passages: Sequence[str]) -> np.ndarray:
        return self._encode(passages, self.passage_prompt)

    def _encode(self, texts: Sequence[str], prompt: str) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            prompt=prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def build_dense_index(
    corpus: Corpus,
    encoder: Encoder,
    out_dir: str | os.PathLike,
    factory: str = "Flat",
    chunk_size: int = 100_000,
    train_size: int | None = None,
    save_embeddings: bool = False,
    corpus_uri: str | None = None,
    checkpoint_every_s: float = 600.0,
) -> Path:
    """Encode the corpus a chunk at a time into the FAISS index named by `factory`, trained first
    on `train_size` passages drawn at random (default 200,000, or all when fewer), and save it as
    `out_dir/faiss.index` with its build info. Returns `out_dir`.

    Streamed and resumable (research_r1.retrieval.streaming): each chunk is encoded and added,
    and the index so far saved to out_dir/checkpoint at most every `checkpoint_every_s` seconds,
    so a rerun of a killed build continues after the last saved chunk. Peak memory: the index
    being filled (up to twice its final size, as FAISS doubles an array that grows) + the
    training sample (train_size x dimension x 4 bytes, and its texts) + one chunk (chunk_size x
    dimension x 4 bytes, and its texts) + the encoder; the pages of the corpus's memory-mapped
    Arrow file that were read also count as resident, but the kernel drops them as it needs.
    With `save_embeddings` each chunk's vectors are also kept in out_dir/embeddings; chunks found
    there (same encoder, prompt and chunk size) are read instead of encoded.
    """
    if chunk_size < 1:
        raise InputError(f"--chunk_size must be >= 1, got {chunk_size}")
    if encoder.batch_size < 1:
        raise InputError(f"encoder batch size must be >= 1, got {encoder.batch_size}")
    index = make_index(factory, encoder.dimension)
    out = Path(out_dir)
    size = min(DEFAULT_TRAIN_SIZE, len(corpus)) if train_size is None else train_size
    built_with = {
        "encoder": encoder.name,
        "passage_prompt": encoder.passage_prompt,
        "num_passages": len(corpus),
        "factory": factory,
        "chunk_size": chunk_size,
        "train_size": size,
    }
    checkpoint = Checkpoint(out / CHECKPOINT_DIR, built_with, checkpoint_every_s)
    resumed = checkpoint.resume()
    if resumed is not None:
        index = resumed
    elif not index.is_trained:
        rows = sample_rows(len(corpus), size, "--train_size", seed=0)
        logger.info("training %s on %d passages", factory, len(rows))
        train_index(index, _encode_rows(corpus, encoder, rows), factory)
        checkpoint.save(index, force=True)
    desc = f"encoding with {encoder.name}"
    with tqdm(total=len(corpus), initial=index.ntotal, unit="passages", desc=desc) as bar:
        chunks = EncodedChunks(
            corpus, encoder, out / EMBEDDINGS_DIR, chunk_size, bar.update, save_embeddings
        )
        add_in_chunks(
            index, chunks.read, len(corpus), chunk_size, checkpoint, f"adding to {factory}"
        )
    write_info(
        out,
        {
            "kind": "dense",
            "corpus": corpus_uri,
            "num_passages": len(corpus),
            "encoder": encoder.name,
            "query_prompt": encoder.query_prompt,
            "passage_prompt": encoder.passage_prompt,
            "factory": factory,
            "dimension": encoder.dimension,
        },
    )
    checkpoint.finish(out / INDEX_FILE)
    if not save_embeddings:
        shutil.rmtree(out / EMBEDDINGS_DIR, ignore_errors=True)
    return out


def make_index(factory: str, dimension: int) -> Any:
    """An empty inner-product FAISS index from a factory string, or an InputError naming it.

    PQ indexes come without polysemous training: it only reorders the codes for Hamming
    filtering, which search here never turns on, and it took 226 of 230 s to build IVF32,PQ64
    over 1,818 passages on 2 cores.
    """
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1]
        raise InputError(
            f"FAISS factory string {factory!r} is not valid for dimension {dimension}: {message}"
        ) from error
    for part in index_parts(index):
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    return index


class EncodedChunks:
    """A corpus's vectors by chunk, for `add_in_chunks`: read from `folder` where an earlier build
    saved them (`--save_embeddings`), else encoded batch by batch, `progress` hearing of every
    batch, and saved there when `save`.

    A manifest pins what the saved chunks were made with, so a build with another encoder,
    prompt or chunk size fails loudly instead of mixing vectors.
    """

    def __init__(
        self,
        corpus: Corpus,
        encoder: Encoder,
        folder: Path,
        chunk_size: int,
        progress: Callable[[int], object],
        save: bool,
    ) -> None:
        self.corpus = corpus
        self.encoder = encoder
        self.folder = folder
        self.chunk_size = chunk_size
        self.progress = progress
        self.save = save
        manifest = {
            "encoder": encoder.name,
            "passage_prompt": encoder.passage_prompt,
            "chunk_size": chunk_size,
            "num_passages": len(corpus),
        }
        path = folder / "manifest.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != manifest:
                raise InputError(
                    f"{folder} holds embeddings made with {saved}, not {manifest}: delete that "
                    "folder or build into another --output_dir"
                )
        elif save:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(manifest, indent=2) + "\n")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `start..stop`'s vectors; `start` is a multiple of the chunk size."""
        path = self.folder / f"chunk_{start // self.chunk_size:05d}.npy"
        if path.exists():
            vectors = np.load(path)
            if len(vectors) != stop - start:
                raise InputError(f"{path} has {len(vectors)} vectors, expected {stop - start}")
            self.progress(stop - start)
            return vectors
        vectors = _encode_batches(self.encoder, self.corpus.contents(start, stop), self.progress)
        if self.save:
            tmp = path.with_name(f".{path.name}.tmp")
            with tmp.open("wb") as sink:
                np.save(sink, vectors)
            os.replace(tmp, path)
        return vectors


def _encode_rows(corpus: Corpus, encoder: Encoder, rows: np.ndarray) -> np.ndarray:
    """The vectors of the passages at `rows` (a training sample), with a progress bar."""
    texts = [passage.contents for passage in corpus.passages(rows.tolist(), [0.0] * len(rows))]
    with tqdm(total=len(texts), unit="passages", desc="training sample") as bar:
        return _encode_batches(encoder, texts, bar.update)


def _encode_batches(
    encoder: Encoder, texts: Sequence[str], progress: Callable[[int], object]
) -> np.ndarray:
    """`encoder.encode_passages(texts)`, one batch per call so `progress` hears of every batch.

    The texts are ordered longest first, as sentence-transformers orders one call's texts, so
    each batch holds texts of similar length (little padding) and the vectors equal one call's;
    they are returned in the order of `texts`.
    """
    order = np.argsort([-len(text) for text in texts], kind="stable")
    vectors = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    for start in range(0, len(texts), encoder.batch_size):
        rows = order[start : start + encoder.batch_size]
        vectors[rows] = encoder.encode_passages([texts[row] for row in rows])
        progress(len(rows))
    return vectors


def resolve_index(
    uri_or_path: str | os.PathLike, token: str | bool | None = None
) -> tuple[Path, dict[str, Any]]:
    """The local FAISS file behind a path or `hf://` URI, and its build info ({} if none).

    Accepts an index file, a `build-index` output folder, or a folder of Search-R1's published
    parts (`part_aa`, `part_ab`, ...), which are concatenated into `e5_Flat.index`.
    """
    path = resolve(
        uri_or_path, allow_patterns=[INFO_FILE, RECALL_FILE, "*.index", "part_*"], token=token
    )
    if path.is_file():
        return path, {}
    if (path / INDEX_FILE).is_file():
        return path / INDEX_FILE, read_info(path)
    if any(path.glob("part_*")):
        return resolve_split(path), {}
    candidates = sorted(path.glob("*.index"))
    if len(candidates) == 1:
        return candidates[0], {}
    raise InputError(
        f"{uri_or_path} holds no FAISS index: expected {INDEX_FILE}, one *.index file, or "
        "part_* files"
    )


def load_faiss_index(path: Path) -> Any:
    """Read an index memory-mapped and read-only, so it is paged in from disk on demand and its
    pages are shared with every process that maps the same file; index types that cannot be
    mapped are read into RAM instead, with a warning.

    Measured with faiss 1.15.1: Flat, SQ8, IVF-Flat/SQ8/PQ, HNSW (graph and storage), their
    pre-transforms and RFlat re-rank map, leaving in RAM only what is small (HNSW's levels and
    offsets, 12 bytes a vector; IVF centroids); fast-scan indexes (`...x4fs`) are read into RAM
    whole, without an error, so they are named here.
    """
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as mmap_error:
        logger.warning("cannot memory-map %s (%s); reading it into RAM", path, mmap_error)
    else:
        fast_scan = (faiss.IndexFastScan, faiss.IndexIVFFastScan)
        for part in index_parts(index):
            if isinstance(part, fast_scan):
                name = type(part).__name__
                logger.warning("%s: FAISS maps no fast-scan index (%s): read into RAM", path, name)
        return index
    try:
        return faiss.read_index(str(path))
    except RuntimeError as error:
        raise InputError(f"{path} is not a readable FAISS index: {error}") from error


def set_search_parameters(
    index: Any, nprobe: int | None, ef_search: int | None, k_factor: int | None = None
) -> None:
    """Apply IVF `nprobe`, HNSW `ef_search` and the `k_factor` of an exact re-rank (`...,RFlat`:
    k_factor x k candidates rescored with the stored vectors), through any pre-transform; or
    say which index type does not have them."""
    for key, name, value in (
        ("nprobe", "nprobe", nprobe),
        ("ef_search", "efSearch", ef_search),
        ("k_factor", "k_factor_rf", k_factor),
    ):
        if value is None:
            continue
        if value < 1:
            raise InputError(f"{key} must be >= 1, got {value}")
        try:
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        except RuntimeError as error:
            kind = type(faiss.downcast_index(index)).__name__
            raise InputError(f"{key} does not apply to this index ({kind})") from error


def make_searcher(index: Any, device: str) -> Searcher:
    """A function (queries, k) -> (scores, rows) for `index` on `device`: "cpu", "cuda" (torch's
    current device, GPU 0 unless the process chose another), "cuda:N" (GPU N), "cuda:N,M,..."
    (those GPUs) or "cuda:all" (every GPU).

    On GPUs the index uses the GPUs named only, so processes pinned to different GPUs do not
    each fill every GPU; over several, it is split between them (each holds a shard of the
    vectors, as Search-R1's server holds its Flat). The GPU copy is in fp16 when faiss-gpu is
    installed and supports the index type; otherwise, for a flat index, exact search with
    torch, its blocks spread over the GPUs; otherwise the CPU, with a warning. A GPU number the
    machine does not have is an InputError. None of these GPU paths has run on a real GPU
    here: tests stand in for faiss-gpu and CUDA.
    """
    if device == "cpu":
        return index.search
    try:
        listed_gpus(device)
    except ValueError as error:
        raise InputError(f"device {device!r} {error}") from None
    faiss_gpus = faiss.get_num_gpus()
    if faiss_gpus > 0:
        gpus = _gpu_numbers(device, faiss_gpus, "faiss")
        try:
            return FaissGpuSearch(index, gpus)
        except RuntimeError as error:  # e.g. HNSW, which faiss-gpu does not implement
            logger.warning("faiss-gpu cannot hold this index (%s)", str(error).strip())
    flat = faiss.downcast_index(index)
    if isinstance(flat, faiss.IndexFlatIP):
        gpus = _gpu_numbers(device, torch.cuda.device_count(), "torch")
        return TorchFlatSearch(flat, [f"cuda:{gpu}" for gpu in gpus], torch.float16)
    logger.warning("no GPU search for %s here: searching on the CPU", type(flat).__name__)
    return index.search


DEVICES = (
    "cpu, cuda, cuda:N, cuda:N,M,... (one index split over those GPUs) or cuda:all (a "
    "retriever config also takes auto)"
)
_DEVICE = re.compile(r"cpu|cuda(?::(all|\d+(?:,\d+)*))?")


def listed_gpus(device: str) -> list[int] | None:
    """The GPU numbers `device` lists ("cuda:N" or "cuda:N,M,..."), None where it lists none
    ("cpu", "cuda", "cuda:all"); a ValueError for any other form or a GPU listed twice."""
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise ValueError(f"must be {DEVICES}")
    if match[1] in (None, "all"):
        return None
    gpus = [int(number) for number in match[1].split(",")]
    if len(set(gpus)) < len(gpus):
        raise ValueError("lists a GPU twice")
    return gpus


def query_device(device: str) -> str:
    """Where the query encoder runs for a search on `device`: the first GPU of several."""
    if device == "cuda:all":
        return "cuda:0"
    gpus = listed_gpus(device)
    return f"cuda:{gpus[0]}" if gpus else device


def _gpu_numbers(device: str, count: int, seen_by: str) -> list[int]:
    """The GPUs a valid `device` names, of the `count` that `seen_by` (faiss or torch) sees."""
    gpus = listed_gpus(device)
    if gpus is None:
        if device == "cuda:all":
            gpus = list(range(count))
        else:
            gpus = [torch.cuda.current_device() if torch.cuda.is_available() else 0]
    if not gpus or max(gpus) >= count:
        named = f"GPU {max(gpus)}" if gpus else "every GPU"
        raise InputError(f"device {device!r} names {named} but {seen_by} sees {count} GPUs")
    return gpus


class FaissGpuSearch:
    """A copy of a CPU index on one GPU, or split over several (each GPU holds a shard of the
    vectors and searches it, and the shards' results are merged), vectors in fp16, searched by
    faiss-gpu: Search-R1's server's `GpuMultipleClonerOptions` (useFloat16, shard) over the GPUs
    named rather than all of them.

    It holds the GPU resources (memory pools, streams) that the copy uses, one per GPU, since
    they must live as long as it does (`faiss.index_cpu_to_gpus_list` makes its own and drops
    them). This path has never run on a real GPU here: tests stand in for faiss-gpu's entry
    points, which faiss-cpu lacks.
    """

    def __init__(self, index: Any, gpus: list[int]) -> None:
        self.resources = [faiss.StandardGpuResources() for _ in gpus]
        options = faiss.GpuMultipleClonerOptions()
        options.useFloat16 = True
        options.shard = True
        self.index = faiss.index_cpu_to_gpu_multiple_py(self.resources, index, options, gpus)

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)


class TorchFlatSearch:
    """Exact inner-product search over a flat index's vectors copied to torch devices.

    The vectors are uploaded block by block (never all in host RAM at once), the blocks split
    into consecutive runs, one per device, as evenly as whole blocks allow (21 blocks of wiki-18
    over 8 GPUs: 3, 3, 2, 3, 3, 2, 3, 2); each block yields its own top k on its device before
    the blocks' candidates are merged on the first device. It has never run on a real GPU
    here: tests run it on the CPU, spread over several names for it ("cpu:0", "cpu:1").
    """

    def __init__(
        self, flat: Any, devices: list[str], dtype: Any, block_rows: int = 1 << 20
    ) -> None:
        vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d)
        vectors = vectors.reshape(flat.ntotal, flat.d)
        starts = range(0, flat.ntotal, block_rows)
        self.devices = devices
        self.dtype = dtype
        self.placed = [devices[i * len(devices) // len(starts)] for i in range(len(starts))]
        self.blocks = [
            torch.from_numpy(np.array(vectors[start : start + block_rows])).to(device, dtype)
            for start, device in zip(starts, self.placed, strict=True)
        ]

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        query = {
            device: torch.from_numpy(queries).to(device, self.dtype) for device in set(self.placed)
        }
        home = self.devices[0]
        scores, rows, offset = [], [], 0
        for device, block in zip(self.placed, self.blocks, strict=True):
            found = (query[device] @ block.T).float().topk(min(k, len(block)), dim=1)
            scores.append(found.values.to(home))
            rows.append(found.indices.to(home) + offset)
            offset += len(block)
        merged, position = torch.cat(scores, dim=1).topk(min(k, offset), dim=1)
        return merged.cpu().numpy(), torch.cat(rows, dim=1).gather(1, position).cpu().numpy()


class DenseRetriever:
    """Encodes queries and searches a FAISS index whose row `i` is corpus row `i`."""

    def __init__(
        self,
        corpus: Corpus,
        index: Any,
        encoder: Encoder,
        device: str = "cpu",
        index_path: Path | None = None,
        recall: dict[str, Any] | None = None,
    ) -> None:
        """`index_path` (the file `index` was read from) and `recall` (its recall report, None
        when it has none) are carried for the server to show."""
        if index.ntotal != len(corpus):
            raise InputError(
                f"the FAISS index has {index.ntotal} vectors but corpus {corpus.path} has "
                f"{len(corpus)} passages: the index must be built from this corpus"
            )
        if index.d != encoder.dimension:
            raise InputError(
                f"the FAISS index has dimension {index.d} but encoder {encoder.name} gives "
                f"{encoder.dimension}: use the encoder the index was built with"
            )
        self.corpus = corpus
        self.encoder = encoder
        self.index_path = index_path
        self.recall = recall
        self._search = make_searcher(index, device)

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        if not queries:
            return []
        scores, rows = self._search(self.encoder.encode_queries(queries), k)
        found = rows >= 0  # FAISS pads with -1 when fewer than k vectors are reached
        return self.corpus.results(
            [r[f] for r, f in zip(rows, found, strict=True)],
            [s[f] for s, f in zip(scores, found, strict=True)],
        )
