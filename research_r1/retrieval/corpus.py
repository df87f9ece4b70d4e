"""The passage corpus, memory-mapped as Arrow so a 21M-passage corpus costs no RAM up front.

Search-R1 and FlashRAG ship corpora as JSON lines (`{"id": str, "contents": "\\"Title\\"\\ntext"}`,
often gzipped) or parquet. Parsing 21M JSON rows into Python objects on every start-up would take
minutes and tens of GB, so the source is converted once into an uncompressed Arrow IPC file with
the columns `id` and `contents` (cached under `$HF_HOME/research_r1/corpora`, never beside the
source), and later loads map that file: the OS pages in only the rows a search returns.
Row `i` of the corpus is row `i` of every index built from it.

`contents` is kept exactly as stored, character for character, whatever its first line looks like
(`""Title: ... Text: ...`, a title without quotes, no newline at all): it is what every
index encodes or tokenizes, what a `Passage` carries and what the server sends, as Search-R1's
index builder and server use it. Title and text (`Passage.title`, `.text`, `split_contents`) are
read from it for display only. A parquet source with `title` and `text` columns instead has its
`contents` made once, at conversion, as `"title"` then a newline and the text.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from research_r1 import outputs
from research_r1.errors import InputError
from research_r1.hub import resolve
from research_r1.retrieval import Passage

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([("id", pa.string()), ("contents", pa.string())])
INFO_FILE = "index_info.json"  # written beside an index: the corpus it was built from, and how
FORMAT_VERSION = "3"  # bump when the Arrow layout changes, so stale caches are rebuilt
# Formats 1 and 2 split `contents` into a title line and the text; format 1 also took the
# title's quotes off. An .arrow file of either, given as is, still loads, with `contents` rebuilt
# from the split: exact for format 2 except rows stored without a newline (they gain one), and
# for format 1 only where the title line was one title in one pair of quotes.
LEGACY_SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
_UNQUOTED_TITLES = "1"
_BATCH_ROWS = 50_000


def split_contents(contents: str) -> tuple[str, str]:
    """Title and text of a corpus `contents` field as people read them: the first line (quotes
    stripped), the rest."""
    passage = Passage("", contents, 0.0)
    return passage.title, passage.text


class Corpus:
    """Passages by row number, read from a memory-mapped Arrow IPC file."""

    def __init__(self, arrow_path: str | os.PathLike) -> None:
        self.path = Path(arrow_path)
        self._table = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()
        schema = self._table.schema.remove_metadata()
        self._legacy = schema == LEGACY_SCHEMA
        if schema != SCHEMA and not self._legacy:
            raise InputError(f"{self.path} is not a corpus file (columns must be {SCHEMA.names})")
        metadata = self._table.schema.metadata or {}
        version = metadata.get(b"research_r1_format", b"1").decode()
        self._quote = self._legacy and version == _UNQUOTED_TITLES
        if self._legacy:
            logger.warning(
                "%s is a corpus file of format %s, which kept title and text apart: contents "
                "are rebuilt from them and differ from the source's where its first line was "
                "malformed; load the source (jsonl or parquet) to convert it again",
                self.path,
                version,
            )

    def __len__(self) -> int:
        return self._table.num_rows

    def passages(self, rows: Sequence[int], scores: Sequence[float]) -> list[Passage]:
        """The passages at `rows`, in that order, each carrying its score."""
        picked = self._table.take(pa.array(rows, type=pa.int64()))
        return [
            Passage(id=id_, contents=contents, score=float(score))
            for id_, contents, score in zip(
                picked.column("id").to_pylist(), self._contents(picked), scores, strict=True
            )
        ]

    def results(
        self, rows: Sequence[Sequence[int]], scores: Sequence[Sequence[float]]
    ) -> list[list[Passage]]:
        """One list of passages per query, fetched with a single Arrow take for the whole batch
        (a take per query was a third of the time of a 64-query BM25 batch)."""
        flat = self.passages(
            [row for query in rows for row in query], [s for query in scores for s in query]
        )
        split, start = [], 0
        for query in rows:
            split.append(flat[start : start + len(query)])
            start += len(query)
        return split

    def contents(self, start: int, stop: int) -> list[str]:
        """Rows `start..stop`'s `contents` exactly as stored: what every index encodes or
        tokenizes (Search-R1's published e5 index was encoded from the same strings)."""
        return self._contents(self._table.slice(start, stop - start))

    def _contents(self, table: pa.Table) -> list[str]:
        if not self._legacy:
            return table.column("contents").to_pylist()
        titles = table.column("title").to_pylist()
        if self._quote:
            titles = [f'"{title}"' for title in titles]
        texts = table.column("text").to_pylist()
        return [f"{title}\n{text}" for title, text in zip(titles, texts, strict=True)]


def load_corpus(
    uri_or_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Corpus:
    """Open a corpus (jsonl, jsonl.gz, parquet or an already converted .arrow; local or `hf://`),
    converting it to Arrow first unless an up-to-date conversion is cached.

    The conversion goes to `cache_dir` when given, else to the cache folder,
    `$HF_HOME/research_r1/corpora` (research_r1.outputs), never beside the source; it is named
    after the source's resolved path, so two sources never share one, and made again when the
    source changes.
    """
    source = resolve(uri_or_path, token=token)
    if not source.is_file():
        raise InputError(f"corpus {uri_or_path} must be a file (jsonl, jsonl.gz, parquet, arrow)")
    if source.name.endswith(".arrow"):
        return Corpus(source)
    target = _cache_path(source, cache_dir)
    stamp = _source_stamp(source)
    if not _is_fresh(target, stamp):
        convert_corpus(source, target, stamp)
    corpus = Corpus(target)
    if not len(corpus):
        raise InputError(f"corpus {uri_or_path} holds no passages")
    return corpus


def convert_corpus(source: Path, target: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `source` (jsonl, jsonl.gz or parquet) as an Arrow IPC corpus file at `target`,
    atomically, with a progress bar. `metadata` goes into the file's schema."""
    reader = _read_parquet if source.name.endswith(".parquet") else _read_jsonl
    schema = SCHEMA.with_metadata({"research_r1_format": FORMAT_VERSION, **(metadata or {})})
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in reader(source):
                writer.write_batch(pa.record_batch(batch, schema=schema))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_info(index_dir: Path, info: dict[str, Any]) -> None:
    """Save an index's build info (its corpus, row count, encoder) beside it."""
    (index_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_info(index_dir: Path) -> dict[str, Any]:
    """The build info `build-index` saved beside an index, or {} for one built elsewhere."""
    path = index_dir / INFO_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from error


def _read_jsonl(path: Path) -> Iterator[dict[str, list[str]]]:
    """Column batches of a (possibly gzipped) jsonl corpus; progress counts source bytes."""
    batch = _empty_batch()
    with (
        path.open("rb") as raw,
        gzip.open(raw) if path.name.endswith(".gz") else nullcontext(raw) as lines,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}"
        ) as bar,
    ):
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise InputError(f"{where}: not valid JSON ({error})") from error
            _append(batch, row, where)
            if len(batch["id"]) == _BATCH_ROWS:
                bar.update(raw.tell() - bar.n)
                yield batch
                batch = _empty_batch()
        bar.update(raw.tell() - bar.n)
    if batch["id"]:
        yield batch


def _read_parquet(path: Path) -> Iterator[dict[str, list[str]]]:
    """Column batches of a parquet corpus with `id` and either `contents` or `title` + `text`."""
    parquet = pq.ParquetFile(path)
    row_number = 0
    with tqdm(total=parquet.metadata.num_rows, unit="rows", desc=f"reading {path.name}") as bar:
        for record_batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
            batch = _empty_batch()
            for row in record_batch.to_pylist():
                _append(batch, row, f"{path}, row {row_number}")
                row_number += 1
            bar.update(record_batch.num_rows)
            yield batch


def _append(batch: dict[str, list[str]], row: Any, where: str) -> None:
    """Add one source row to `batch`, or raise an InputError naming the row and field."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    id_ = row.get("id")
    if isinstance(id_, bool) or not isinstance(id_, (str, int)):
        raise InputError(f"{where}: field 'id' must be a string, got {id_!r}")
    if "contents" in row:
        contents = row["contents"]
        if not isinstance(contents, str):
            raise InputError(f"{where}: field 'contents' must be a string, got {contents!r}")
    else:
        title, text = row.get("title"), row.get("text")
        for field, value in (("title", title), ("text", text)):
            if not isinstance(value, str):
                raise InputError(
                    f"{where}: needs a string field 'contents' (or 'title' and 'text'); "
                    f"field '{field}' is {value!r}"
                )
        contents = f'"{title}"\n{text}'  # as a `contents` field would hold it
    batch["id"].append(str(id_))
    batch["contents"].append(contents)


def _empty_batch() -> dict[str, list[str]]:
    return {"id": [], "contents": []}


def _cache_path(source: Path, cache_dir: str | os.PathLike | None) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else outputs.cache_dir("corpora")
    # Different sources may share a file name; the resolved path tells them apart.
    digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
    return folder / f"{digest}-{source.name}.arrow"


def _source_stamp(source: Path) -> dict[str, str]:
    """What identifies the source a conversion came from; a mismatch means reconvert."""
    stat = source.resolve().stat()
    return {
        "research_r1_format": FORMAT_VERSION,
        "source_size": str(stat.st_size),
        "source_mtime_ns": str(stat.st_mtime_ns),
    }


def _is_fresh(target: Path, stamp: dict[str, str]) -> bool:
    if not target.is_file():
        return False
    try:
        schema = pa.ipc.open_file(pa.memory_map(str(target))).schema
    except pa.ArrowInvalid:
        return False
    stored = {key.decode(): value.decode() for key, value in (schema.metadata or {}).items()}
    return all(stored.get(key) == value for key, value in stamp.items())
