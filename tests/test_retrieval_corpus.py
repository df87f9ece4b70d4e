"""The corpus (research_r1.retrieval.corpus): every source format read the same way into a
memory-mapped Arrow file, cached until the source changes, contents kept byte for byte however
malformed, bad rows named, and a passage's contents split into title and text."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import MALFORMED_CONTENTS, PASSAGES, write_corpus, write_jsonl

from research_r1.errors import InputError
from research_r1.retrieval import Passage
from research_r1.retrieval import corpus as corpus_module
from research_r1.retrieval.corpus import (
    FORMAT_VERSION,
    LEGACY_SCHEMA,
    SCHEMA,
    Corpus,
    load_corpus,
    split_contents,
)


def test_corpus_parses_titles_from_every_format_the_same_way(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "contents": '"Hamlet"\nA tragedy.\nSecond line.'},
        {"id": 7, "contents": "No quotes\ntext"},
        {"id": "c", "contents": '"Only a title"'},
        {"id": "d", "title": "Given title", "text": "given text"},
    ]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(lines + "\n")  # a trailing blank line is not a row
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(lines.encode()))
    parquet = tmp_path / "c.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c", "d"],
                "title": ["Hamlet", "No quotes", "Only a title", "Given title"],
                "text": ["A tragedy.\nSecond line.", "text", "", "given text"],
            }
        ),
        parquet,
    )
    expected = [
        Passage("a", '"Hamlet"\nA tragedy.\nSecond line.', 0.0),
        Passage("7", "No quotes\ntext", 0.0),
        Passage("c", '"Only a title"', 0.0),
        Passage("d", '"Given title"\ngiven text', 0.0),
    ]
    for source in (jsonl, gz, parquet):
        corpus = load_corpus(source, cache_dir=tmp_path / "cache")
        assert corpus.path.parent == tmp_path / "cache"
        assert corpus.path.name.endswith(f"-{source.name}.arrow")
        assert len(corpus) == 4
        got = corpus.passages([0, 1, 2, 3], [0.0] * 4)
        assert [p.title for p in got] == [p.title for p in expected]
        assert [p.text for p in got] == [p.text for p in expected]
    corpus = load_corpus(jsonl)
    assert corpus.passages([3, 0], [2.5, 1.0]) == [
        Passage("d", '"Given title"\ngiven text', 2.5),
        Passage("a", '"Hamlet"\nA tragedy.\nSecond line.', 1.0),
    ]
    assert corpus.contents(0, 2) == ['"Hamlet"\nA tragedy.\nSecond line.', "No quotes\ntext"]
    # titles as stored: an agent is shown them as its own loop showed them
    assert [p.title_line for p in corpus.passages([0, 1, 2], [0.0] * 3)] == [
        '"Hamlet"',
        "No quotes",
        '"Only a title"',
    ]


def write_legacy(path: Path, version: str, title: str, text: str, **metadata: str) -> Path:
    """An Arrow corpus file of format 1 or 2 (title and text columns) holding one row."""
    schema = LEGACY_SCHEMA.with_metadata({"research_r1_format": version, **metadata})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch({"id": ["a"], "title": [title], "text": [text]}, schema))
    return path


@pytest.mark.parametrize("source", ["c.jsonl", "c.jsonl.gz", "c.parquet"])
def test_malformed_contents_round_trip_byte_for_byte(tmp_path: Path, source: str) -> None:
    """Whatever the first line holds (no quotes, extra quotes, no newline at all, CR LF), the
    corpus gives back the stored `contents`, byte for byte, to an index builder
    (`contents`) and in every passage; title and text are still read from it for display."""
    path = tmp_path / source
    rows = [{"id": str(i), "contents": c} for i, c in enumerate(MALFORMED_CONTENTS)]
    if source.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif source.endswith(".gz"):
        path.write_bytes(gzip.compress(write_jsonl(tmp_path / "plain.jsonl", rows).read_bytes()))
    else:
        write_jsonl(path, rows)
    corpus = load_corpus(path, cache_dir=tmp_path / "cache")
    stored = [c.encode() for c in MALFORMED_CONTENTS]
    assert [c.encode() for c in corpus.contents(0, len(corpus))] == stored
    assert [c.encode() for c in corpus.contents(2, 5)] == stored[2:5]
    rows_asked = list(reversed(range(len(corpus))))
    passages = corpus.passages(rows_asked, [0.5] * len(corpus))
    assert [p.contents.encode() for p in passages] == [stored[row] for row in rows_asked]
    assert [p.id for p in passages] == [str(row) for row in rows_asked]
    [[kyoto], [timbuktu]] = corpus.results([[0], [6]], [[2.0], [1.0]])
    assert kyoto == Passage("0", MALFORMED_CONTENTS[0], 2.0)
    assert (kyoto.title, kyoto.text) == (
        "Title: Kyoto Protocol Text: A treaty that extends the 1992 climate convention.",
        "",
    )
    assert (timbuktu.title, timbuktu.text) == ("Only a title: Timbuktu", "")


def test_a_conversion_of_an_older_format_is_redone(tmp_path: Path, caplog) -> None:
    """A cached conversion of format 2 (title and text apart, a newline added to a row stored
    without one) is made again from the source, not read."""
    source = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "contents": MALFORMED_CONTENTS[0]}])
    cache = tmp_path / "cache"
    stale = corpus_module._cache_path(source, cache)
    stale.parent.mkdir()
    stamp = corpus_module._source_stamp(source) | {"research_r1_format": "2"}
    write_legacy(stale, "2", MALFORMED_CONTENTS[0], "", **stamp)
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(source, cache_dir=cache)
    assert corpus.path == stale
    assert corpus.contents(0, 1) == [MALFORMED_CONTENTS[0]]  # not MALFORMED_CONTENTS[0] + "\n"
    schema = pa.ipc.open_file(pa.memory_map(str(stale))).schema
    assert schema.remove_metadata() == SCHEMA
    assert schema.metadata[b"research_r1_format"] == FORMAT_VERSION.encode()
    assert not caplog.records


@pytest.mark.parametrize(
    ("version", "title", "contents"),
    [("1", "Hamlet", '"Hamlet"\nA tragedy.'), ("2", "Hamlet", "Hamlet\nA tragedy.")],
)
def test_a_corpus_file_of_an_older_format_given_as_is_still_loads(
    tmp_path: Path, caplog, version: str, title: str, contents: str
) -> None:
    """Formats 1 and 2 kept title and text apart (format 1 without the title's quotes); such a
    file, given as is, reads as before, with a warning that its contents are rebuilt."""
    arrow = write_legacy(tmp_path / "old.arrow", version, title, "A tragedy.")
    with caplog.at_level(logging.WARNING):
        corpus = load_corpus(arrow)
    [passage] = corpus.passages([0], [1.0])
    assert passage == Passage("a", contents, 1.0)
    assert corpus.contents(0, 1) == [contents]
    assert f"format {version}, which kept title and text apart" in caplog.text


def test_corpus_is_memory_mapped_not_copied(tmp_path: Path) -> None:
    passages = [(f"Title {i}", f"passage number {i} " * 20) for i in range(5000)]
    source = write_corpus(tmp_path / "big.jsonl", passages)
    arrow = load_corpus(source).path
    before = pa.total_allocated_bytes()
    corpus = Corpus(arrow)
    assert pa.total_allocated_bytes() - before < arrow.stat().st_size // 100
    assert corpus.passages([4321], [1.0])[0].title == "Title 4321"


def test_corpus_conversion_is_cached_until_the_source_changes(tmp_path: Path, monkeypatch) -> None:
    source = write_corpus(tmp_path / "c.jsonl", PASSAGES[:3])
    conversions = []
    convert = corpus_module.convert_corpus
    monkeypatch.setattr(
        corpus_module,
        "convert_corpus",
        lambda *args: conversions.append(args[0]) or convert(*args),
    )
    assert len(load_corpus(source)) == 3
    assert len(load_corpus(source)) == 3
    assert conversions == [source]
    write_corpus(source, PASSAGES[:5])
    converted = load_corpus(source)
    assert len(converted) == 5
    assert conversions == [source, source]
    assert len(load_corpus(converted.path)) == 5  # an .arrow file loads as is


def test_the_conversion_goes_to_the_cache_never_beside_the_source(
    tmp_path: Path, monkeypatch
) -> None:
    """Under $HF_HOME/research_r1/corpora (or `cache_dir`), named so that two sources of one
    file name never share a conversion; the source's folder may be read-only."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(tmp_path / "hf"))
    sources = [
        write_corpus(tmp_path / name / "c.jsonl", PASSAGES[:n]) for name, n in (("a", 2), ("b", 3))
    ]
    for source in sources:
        source.parent.chmod(0o555)
    try:
        corpora = [load_corpus(source) for source in sources]
    finally:
        for source in sources:
            source.parent.chmod(0o755)
    assert [len(corpus) for corpus in corpora] == [2, 3]
    for corpus in corpora:
        assert corpus.path.parent == tmp_path / "hf" / "research_r1" / "corpora"
        assert corpus.path.name.endswith("-c.jsonl.arrow")
    assert corpora[0].path != corpora[1].path
    explicit = load_corpus(sources[0], cache_dir=tmp_path / "cache")
    assert explicit.path.parent == tmp_path / "cache"
    assert sorted(p.name for p in tmp_path.glob("[ab]/*")) == ["c.jsonl", "c.jsonl"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a", "list"]', "line 2: expected a JSON object, got list"),
        ('{"contents": "\\"T\\"\\nx"}', "line 2: field 'id' must be a string, got None"),
        ('{"id": true, "contents": "x"}', "line 2: field 'id' must be a string, got True"),
        ('{"id": "1", "contents": 5}', "line 2: field 'contents' must be a string, got 5"),
        ('{"id": "1", "title": "T"}', "line 2: needs a string field 'contents' (or 'title' and"),
    ],
)
def test_bad_corpus_rows_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"id": "0", "contents": "\\"A\\"\\nok"}\n' + line + "\n")
    with pytest.raises(InputError) as error:
        load_corpus(source)
    assert str(error.value).startswith(f"{source}, {message}")
    assert not list(
        corpus_module.outputs.cache_dir("corpora").glob("*bad.jsonl*")
    )  # no half-written cache


def test_bad_parquet_row_is_named(tmp_path: Path) -> None:
    source = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["0", "1"], "contents": ["ok", None]}), source)
    with pytest.raises(InputError, match=re.escape(f"{source}, row 1: field 'contents'")):
        load_corpus(source)


def test_missing_or_empty_corpus_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.jsonl does not exist"):
        load_corpus(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match=r"corpus .*empty\.jsonl holds no passages"):
        load_corpus(tmp_path / "empty.jsonl")


@pytest.mark.parametrize(
    ("contents", "title", "text"),
    [
        ('"Paris"\nParis is the capital of France.', "Paris", "Paris is the capital of France."),
        ("Paris\nline one\nline two", "Paris", "line one\nline two"),
        ('  "Paris"  \ntext', "Paris", "text"),
        ("Only a title", "Only a title", ""),
        ('"Title"\n', "Title", ""),
        ('"Say "hi""\ntext', 'Say "hi', "text"),  # every surrounding quote goes
    ],
)
def test_split_contents(contents: str, title: str, text: str) -> None:
    assert split_contents(contents) == (title, text)
