"""The corpus (research_r1.retrieval.corpus): every source format read the same way into a
memory-mapped Arrow file, cached until the source changes, bad rows named, and a passage's
contents split into title and text."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import PASSAGES, write_corpus

from research_r1.errors import InputError
from research_r1.retrieval import Passage
from research_r1.retrieval import corpus as corpus_module
from research_r1.retrieval.corpus import SCHEMA, Corpus, load_corpus, split_contents


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
        Passage("c", '"Only a title"\n', 0.0),
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


def test_a_corpus_file_of_format_1_gets_its_titles_quotes_back(tmp_path: Path) -> None:
    """Format 1 stored titles without their quotes; such a file, given as is, reads as before."""
    arrow = tmp_path / "old.arrow"
    schema = SCHEMA.with_metadata({"research_r1_format": "1"})
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(
            pa.record_batch({"id": ["a"], "title": ["Hamlet"], "text": ["A tragedy."]}, schema)
        )
    [passage] = load_corpus(arrow).passages([0], [1.0])
    assert passage == Passage("a", '"Hamlet"\nA tragedy.', 1.0)


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
