"""Building a FAISS index in bounded memory, resumably: the one add loop of `build-index dense`
(vectors encoded from a corpus) and `build-index convert` (vectors read from a Flat index).

A quantiser is trained on a random sample, then vectors are added one chunk at a time, so
memory holds the sample, one chunk and the index being filled, never every vector. After a
chunk the index so far is saved (`Checkpoint`), at most once every `every_s` seconds, because
a wiki-scale index takes minutes to write; its `ntotal` is the count of vectors added, so the
count and the vectors are written together, atomically, and a killed build resumes after the
last saved chunk.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from research_r1.errors import InputError

CHECKPOINT_DIR = "checkpoint"  # in the output folder while a build is under way
DEFAULT_TRAIN_SIZE = 200_000
_INDEX = "partial.index"
_STATE = "state.json"


class Checkpoint:
    """A build in progress in `folder`: the index so far, and a state file with what the build
    reads (a rerun with other inputs is refused rather than mixing vectors) and the seconds it
    has spent training and adding, summed over runs (work a kill threw away not counted)."""

    def __init__(self, folder: Path, built_with: Mapping[str, Any], every_s: float) -> None:
        self.folder = folder
        self.built_with = dict(built_with)
        self.every_s = every_s
        self._spent_s = 0.0
        self._started = self._saved_at = time.monotonic()
        self._saved_count = -1

    @property
    def index_path(self) -> Path:
        return self.folder / _INDEX

    def resume(self) -> Any | None:
        """The saved index, read into RAM to be added to; None when no build was saved."""
        state_path = self.folder / _STATE
        if not (state_path.is_file() and self.index_path.is_file()):
            return None
        state = json.loads(state_path.read_text())
        if state["built_with"] != self.built_with:
            raise InputError(
                f"{self.folder} holds a build of {state['built_with']}, not {self.built_with}: "
                "delete that folder or build into another --output_dir"
            )
        self._spent_s = state["seconds"]
        index = faiss.read_index(str(self.index_path))
        self._saved_count = index.ntotal
        return index

    def seconds(self) -> float:
        """Seconds spent on this build: saved runs' and this run's so far."""
        return self._spent_s + time.monotonic() - self._started

    def save(self, index: Any, force: bool = False) -> None:
        """Save `index` when `every_s` seconds have passed since the last save, or when
        `force`d; an index already saved with this many vectors is not written again."""
        due = force or time.monotonic() - self._saved_at >= self.every_s
        if not due or index.ntotal == self._saved_count:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{_INDEX}.tmp"
        faiss.write_index(index, str(tmp))
        os.replace(tmp, self.index_path)
        state = {"built_with": self.built_with, "seconds": self.seconds(), "added": index.ntotal}
        tmp = self.folder / f".{_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.folder / _STATE)
        self._saved_at = time.monotonic()
        self._saved_count = index.ntotal

    def finish(self, target: Path) -> None:
        """Move the saved (complete) index to `target` and remove the checkpoint folder."""
        os.replace(self.index_path, target)
        shutil.rmtree(self.folder)


def sample_rows(total: int, size: int, option: str, seed: int) -> np.ndarray:
    """`size` distinct rows of `total`, uniform with a fixed seed, sorted (read in file order);
    more than there are is an InputError naming `option`."""
    if not 1 <= size <= total:
        raise InputError(
            f"{option} must be between 1 and the {total} vectors there are, got {size}"
        )
    return np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))


def train_index(index: Any, sample: np.ndarray, factory: str) -> None:
    """Train `index` on `sample`, or say why FAISS cannot (too few vectors for its centroids)."""
    try:
        index.train(sample)
    except RuntimeError as error:
        message = str(error).strip().splitlines()[-1]
        raise InputError(
            f"cannot train {factory} on {len(sample)} vectors (--train_size): {message}"
        ) from error


def add_in_chunks(
    index: Any,
    read: Callable[[int, int], np.ndarray],
    total: int,
    chunk_size: int,
    checkpoint: Checkpoint,
    desc: str,
) -> None:
    """Add rows `index.ntotal..total`, `read(start, stop)` a chunk at a time, saving a checkpoint
    after a chunk when one is due and after the last.

    HNSW draws each vector's level from a generator that a saved index does not keep, so it is
    reseeded by each chunk's first row: a resumed build draws the levels an uninterrupted one
    does (with one thread the two are byte-identical; with several, HNSW's parallel insertion
    orders links differently run to run anyway)."""
    with tqdm(total=total, initial=index.ntotal, unit="vectors", desc=desc) as bar:
        for start in range(index.ntotal, total, chunk_size):
            stop = min(start + chunk_size, total)
            vectors = read(start, stop)
            _seed_levels(index, start)
            index.add(vectors)
            bar.update(stop - start)
            checkpoint.save(index)
    checkpoint.save(index, force=True)


def index_parts(index: Any) -> list[Any]:
    """The index and every index it wraps (pre-transforms, refine stages), downcast."""
    parts = []
    while index is not None:
        index = faiss.downcast_index(index)
        parts.append(index)
        index = getattr(index, "base_index", None) or getattr(index, "index", None)
    return parts


def _seed_levels(index: Any, seed: int) -> None:
    for part in index_parts(index):
        if hasattr(part, "hnsw"):
            part.hnsw.rng = faiss.RandomGenerator(seed)
