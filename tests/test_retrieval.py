"""Retrieval: the Arrow corpus, BM25, reciprocal rank fusion, retriever configs and the CLI.

Dense (FAISS) retrieval is in test_retrieval_dense.py.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from research_r1.cli import main
from research_r1.errors import InputError
from research_r1.retrieval import Passage
from research_r1.retrieval import corpus as corpus_module
from research_r1.retrieval.bm25 import BM25Retriever, build_bm25_index
from research_r1.retrieval.client import RemoteRetriever
from research_r1.retrieval.config import (
    DenseConfig,
    HybridConfig,
    load_retriever,
    parse_config,
)
from research_r1.retrieval.corpus import SCHEMA, Corpus, load_corpus
from research_r1.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion

PASSAGES = [
    ("Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("Macbeth", "Macbeth is a tragedy by Shakespeare about a Scottish general and his wife."),
    ("Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("Lyon", "Lyon is a French city at the confluence of the Rhone and the Saone rivers."),
    ("Seine", "The Seine is a river in northern France that flows through Paris."),
    ("Mount Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ("K2", "K2 is the second highest mountain on Earth, in the Karakoram range."),
    ("Citibank", "Citibank was founded in 1812 as the City Bank of New York."),
    ("James Madison", "James Madison was president of the United States from 1809 to 1817."),
    ("Voyager 2", "Voyager 2 was launched on a Titan IIIE rocket and flew past Uranus in 1986."),
    ("Uranus", "Uranus is the seventh planet from the Sun; only Voyager 2 has visited it."),
    ("Titan IIIE", "The Titan IIIE rocket launched both Voyager probes and the Helios probes."),
]


def write_corpus(path: Path, passages: list[tuple[str, str]] = PASSAGES) -> Path:
    """A Search-R1 style jsonl corpus with ids "0", "1", ..."""
    rows = [
        {"id": str(i), "contents": f'"{title}"\n{text}'} for i, (title, text) in enumerate(passages)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def bm25_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bm25")
    corpus_path = write_corpus(folder / "corpus.jsonl")
    build_bm25_index(load_corpus(corpus_path), folder / "index", corpus_uri=str(corpus_path))
    return corpus_path, folder / "index"


# --- corpus -----------------------------------------------------------------------------------


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
        corpus = load_corpus(source)
        assert corpus.path == tmp_path / f"{source.name}.arrow"
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
    assert len(load_corpus(source)) == 5
    assert conversions == [source, source]
    assert len(load_corpus(tmp_path / "c.jsonl.arrow")) == 5  # an .arrow file loads as is


def test_corpus_beside_a_read_only_source_goes_to_a_cache_dir(tmp_path: Path, monkeypatch) -> None:
    source = write_corpus(tmp_path / "c.jsonl", PASSAGES[:2])
    monkeypatch.setattr(corpus_module.os, "access", lambda path, mode: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(tmp_path / "hf"))
    corpus = load_corpus(source)
    assert corpus.path.parent == tmp_path / "hf" / "research_r1" / "corpora"
    assert corpus.path.name.endswith("-c.jsonl.arrow")
    assert len(corpus) == 2
    explicit = load_corpus(source, cache_dir=tmp_path / "cache")
    assert explicit.path.parent == tmp_path / "cache"
    assert not (tmp_path / "c.jsonl.arrow").exists()


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
    assert not (tmp_path / "bad.jsonl.arrow").exists()  # no half-written cache


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


# --- BM25 -------------------------------------------------------------------------------------


def brute_force_bm25(query: str, k1: float = 1.5, b: float = 0.75) -> list[tuple[int, float]]:
    """Lucene BM25 of every passage, from our own tokenisation: lowercase, words of 2+ word
    characters, English stopwords out, Snowball stems. Returns (row, score) for score > 0."""
    stemmer = Stemmer.Stemmer("english")
    stopwords = set(STOPWORDS_EN)

    def tokens(text: str) -> list[str]:
        words = re.findall(r"(?u)\b\w\w+\b", text.lower())
        return stemmer.stemWords([word for word in words if word not in stopwords])

    docs = [tokens(f'"{title}"\n{text}') for title, text in PASSAGES]
    avg = sum(map(len, docs)) / len(docs)
    scores = []
    for row, doc in enumerate(docs):
        counts = Counter(doc)
        score = 0.0
        for term in set(tokens(query)):
            df = sum(term in other for other in docs)
            if counts[term]:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                tf = counts[term]
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avg))
        if score > 0:
            scores.append((row, score))
    return sorted(scores, key=lambda pair: -pair[1])


@pytest.mark.parametrize(
    "query",
    [
        "Which rocket launched the probe that flew past Uranus?",
        "tragedies written by Shakespeare",
        "river Seine flowing through Paris",
        "Voyager probes",
        "who was president when Citibank was founded",
    ],
)
def test_bm25_ranks_exactly_like_brute_force(bm25_setup: tuple[Path, Path], query: str) -> None:
    corpus_path, index_dir = bm25_setup
    retriever = BM25Retriever(load_corpus(corpus_path), index_dir)
    expected = brute_force_bm25(query)[:4]
    assert len({round(score, 4) for _, score in expected}) == len(expected)  # no ties to order
    [got] = retriever.search([query], 4)
    assert [p.id for p in got] == [str(row) for row, _ in expected]
    assert [p.score for p in got] == pytest.approx([score for _, score in expected], rel=1e-5)
    assert [p.title for p in got] == [PASSAGES[row][0] for row, _ in expected]


def test_bm25_loads_memory_mapped_and_batches_queries(bm25_setup: tuple[Path, Path]) -> None:
    _, index_dir = bm25_setup
    retriever = load_retriever({"type": "bm25", "index": str(index_dir)})  # corpus from info
    assert isinstance(retriever.model.scores["data"], np.memmap)
    queries = ["Titan IIIE rocket", "the of and", "zyxwv", "Seine"]
    results = retriever.search(queries, 3)
    assert [[p.id for p in result] for result in results] == [
        [str(row) for row, _ in brute_force_bm25(query)[:3]] for query in queries
    ]
    assert results[1] == [] and results[2] == []  # stopwords only, unknown word: no match
    assert [p.title for p in results[3]] == ["Seine", "Paris"]  # fewer than k match
    assert len(retriever.search(["mountain river city"], 100)[0]) <= len(PASSAGES)
    assert retriever.search([], 3) == []


def test_bm25_index_of_another_corpus_is_refused(bm25_setup, tmp_path: Path) -> None:
    _, index_dir = bm25_setup
    other = load_corpus(write_corpus(tmp_path / "other.jsonl", PASSAGES[:5]))
    with pytest.raises(InputError, match=r"has 12 passages but corpus .* has 5"):
        BM25Retriever(other, index_dir)
    with pytest.raises(InputError, match="is not a BM25 index folder"):
        BM25Retriever(other, tmp_path)


# --- hybrid -----------------------------------------------------------------------------------


def passage(id_: str, score: float = 0.0, title: str = "") -> Passage:
    return Passage(id_, f'"{title or id_.upper()}"\ntext {id_}', score)


def test_reciprocal_rank_fusion_known_case() -> None:
    bm25 = [passage("a", 9.0, "from bm25"), passage("b", 8.0), passage("c", 7.0)]
    dense = [passage("c", 0.9), passage("d", 0.8), passage("a", 0.7, "from dense")]
    fused = reciprocal_rank_fusion([bm25, dense], k=4, rrf_k=60)
    # a and c: 1/61 + 1/63 (tie, a met first); b and d: 1/62 (tie, b met first).
    assert [p.id for p in fused] == ["a", "c", "b", "d"]
    assert [p.score for p in fused] == pytest.approx([1 / 61 + 1 / 63] * 2 + [1 / 62] * 2)
    assert fused[0].title == "from bm25"
    assert [p.id for p in reciprocal_rank_fusion([bm25, dense], k=2, rrf_k=0)] == ["a", "c"]
    shifted = reciprocal_rank_fusion([[passage("x"), passage("y")], [passage("y")]], k=2, rrf_k=0)
    assert [(p.id, p.score) for p in shifted] == [("y", 1.5), ("x", 1.0)]
    duplicated = reciprocal_rank_fusion([[passage("x"), passage("x"), passage("y")]], k=3)
    assert [(p.id, p.score) for p in duplicated] == [("x", 1 / 61), ("y", 1 / 63)]


class FixedRetriever:
    """Returns a fixed ranking (cut to k) for every query, and records the k it was asked."""

    def __init__(self, ranking: list[Passage]) -> None:
        self.ranking = ranking
        self.asked: list[int] = []

    def search(self, queries, k):
        self.asked.append(k)
        return [self.ranking[:k] for _ in queries]


def test_hybrid_retriever_fuses_deep_candidate_lists() -> None:
    first = FixedRetriever([passage(x) for x in "abcdef"])
    second = FixedRetriever([passage(x) for x in "fedcba"])
    hybrid = HybridRetriever([first, second], rrf_k=0, depth=6)
    [[top]] = hybrid.search(["q"], 1)
    assert first.asked == [6] and second.asked == [6]
    assert (top.id, top.score) == ("a", 1 + 1 / 6)  # a: ranks 1 and 6 beat c: 3 and 4
    assert [[p.id for p in r] for r in hybrid.search(["q1", "q2"], 2)] == [["a", "f"]] * 2
    assert [p.id for p in HybridRetriever([first], depth=2).search(["q"], 3)[0]] == list("abc")
    with pytest.raises(InputError, match="at least one retriever"):
        HybridRetriever([])


# --- configs ----------------------------------------------------------------------------------


DENSE_KEYS = (
    "index, corpus, encoder, query_prompt, nprobe, ef_search, k_factor, device, batch_size, "
    "max_length, fp16"
)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"index": "x"}, "key 'type' must be one of bm25, dense, hybrid, remote, got None"),
        ({"type": "sparse"}, "key 'type' must be one of bm25, dense, hybrid, remote, got 'sparse'"),
        ({"type": "bm25"}, "key 'index': Field required"),
        (
            {"type": "bm25", "index": "x", "nprobe": 4},
            "unknown key 'nprobe' for type bm25 (allowed: index, corpus)",
        ),
        (
            {"type": "dense", "index": "x", "nprob": 4},
            f"unknown key 'nprob' for type dense (allowed: {DENSE_KEYS})",
        ),
        (
            {"type": "dense", "index": "x", "nprobe": "ten"},
            "key 'nprobe': Input should be a valid integer, got 'ten'",
        ),
        (
            {"type": "dense", "index": "x", "nprobe": True},
            "key 'nprobe': Input should be a valid integer, got True",
        ),
        (
            {"type": "dense", "index": "x", "nprobe": 0},
            "key 'nprobe': Input should be greater than or equal to 1, got 0",
        ),
        (
            {"type": "dense", "index": "x", "k_factor": 0, "batch_size": 0},
            "key 'k_factor': Input should be greater than or equal to 1, got 0 (and 1 more)",
        ),
        ({"type": "dense", "index": 3}, "key 'index': Input should be a valid string, got 3"),
        (
            {"type": "dense", "index": "x", "device": "gpu"},
            r"key 'device': String should match pattern '^(cpu|auto|cuda(:\d+)?)$', got 'gpu'",
        ),
        ({"type": "remote"}, "key 'url': Field required"),
        (
            {"type": "remote", "url": "u", "timeout_s": "1"},
            "key 'timeout_s': Input should be a valid number, got '1'",
        ),
        (
            {"type": "remote", "url": "u", "retries": True},
            "key 'retries': Input should be a valid integer, got True",
        ),
        (
            {"type": "remote", "url": "u", "token": "t", "token_env": "T"},
            "key 'token_env': give key 'token' or key 'token_env', not both, got 'T'",
        ),
        ({"type": "hybrid", "bm25": {"index": "x"}}, "key 'dense': Field required"),
        (
            {"type": "hybrid", "bm25": "x", "dense": {"index": "y"}},
            "key 'bm25': Input should be a valid dictionary or instance of BM25Config, got 'x'",
        ),
        (
            {"type": "hybrid", "bm25": {"index": "x", "type": "bm25"}, "dense": {"index": "y"}},
            "unknown key 'bm25.type' for type hybrid (allowed: index, corpus)",
        ),
        (
            {"type": "hybrid", "bm25": {"index": "x"}, "dense": {"index": "y", "nprobe": 0}},
            "key 'dense.nprobe': Input should be greater than or equal to 1, got 0",
        ),
        (
            {"type": "hybrid", "bm25": {"index": "x"}, "dense": {"index": "y"}, "depth": 0},
            "key 'depth': Input should be greater than or equal to 1, got 0",
        ),
        (
            {"type": "hybrid", "bm25": {"index": "x"}, "dense": {"index": "y"}, "rrf_k": -1},
            "key 'rrf_k': Input should be greater than or equal to 0, got -1",
        ),
    ],
)
def test_config_errors_name_the_key(config: dict, message: str) -> None:
    with pytest.raises(InputError) as error:
        parse_config(config)
    assert str(error.value) == f"retriever config: {message}"


def test_config_types_are_strict_and_devices_checked() -> None:
    """A YAML `8` is a number where a number goes, but no other type is read as one."""
    remote = parse_config({"type": "remote", "url": "u", "timeout_s": 5})
    assert remote.timeout_s == 5.0
    for device in ("cpu", "auto", "cuda", "cuda:12"):
        assert parse_config({"type": "dense", "index": "x", "device": device}).device == device
    for device in ("gpu", "cuda:", "cuda:x", "cuda\n", " cpu"):
        with pytest.raises(InputError, match="key 'device': String should match pattern"):
            parse_config({"type": "dense", "index": "x", "device": device})


def test_shipped_retriever_configs_parse() -> None:
    folder = Path(__file__).resolve().parents[1] / "recipes" / "retrievers"
    configs = {path.stem: parse_config(path) for path in sorted(folder.glob("*.yaml"))}
    assert {"demo_bm25", "e5_wiki18_flat", "e5_wiki18_hnsw", "e5_wiki18_ivfpq"} <= set(configs)
    ivfpq = configs["e5_wiki18_ivfpq"]
    assert isinstance(ivfpq, DenseConfig)
    assert (ivfpq.nprobe, ivfpq.k_factor, ivfpq.query_prompt) == (64, 4, "query: ")


def test_config_yaml_is_parsed_and_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hybrid.yaml"
    path.write_text(
        "type: hybrid\ncorpus: c.jsonl\nrrf_k: 10\n"
        "bm25: {index: bm25}\ndense: {index: e5, encoder: intfloat/e5-base-v2, nprobe: 8}\n"
    )
    config = parse_config(path)
    assert isinstance(config, HybridConfig)
    assert config.rrf_k == 10 and config.depth == 50 and config.corpus == "c.jsonl"
    assert config.dense == DenseConfig(index="e5", encoder="intfloat/e5-base-v2", nprobe=8)
    path.write_text("type: bm25\nindex: [unclosed\n")
    with pytest.raises(
        InputError, match=f"retriever config {re.escape(str(path))}: not valid YAML"
    ):
        parse_config(path)
    path.write_text("- type: bm25\n")
    with pytest.raises(InputError) as error:
        parse_config(path)
    assert str(error.value) == f"retriever config {path}: expected a mapping of keys, got list"
    path.write_text("type: dense\nindex: e5\nnprobe: 0\n")
    with pytest.raises(InputError) as error:
        parse_config(path)
    assert str(error.value) == (
        f"retriever config {path}: key 'nprobe': Input should be greater than or equal to 1, got 0"
    )
    with pytest.raises(InputError, match=r"absent\.yaml does not exist"):
        parse_config(tmp_path / "absent.yaml")


def test_remote_config_builds_the_http_client(monkeypatch) -> None:
    retriever = load_retriever(
        {"type": "remote", "url": "http://127.0.0.1:9/", "api": "research", "retries": 0}
    )
    assert isinstance(retriever, RemoteRetriever)
    assert retriever.url == "http://127.0.0.1:9/batch_search"
    with_token = parse_config({"type": "remote", "url": "u", "token": "secret"})
    assert with_token.token == "secret" and "secret" not in repr(with_token)
    monkeypatch.delenv("RETRIEVER_TOKEN", raising=False)
    from_env = {"type": "remote", "url": "http://127.0.0.1:9", "token_env": "RETRIEVER_TOKEN"}
    with pytest.raises(InputError, match="environment variable RETRIEVER_TOKEN is unset"):
        load_retriever(from_env)
    monkeypatch.setenv("RETRIEVER_TOKEN", "secret")
    assert load_retriever(from_env)._http.headers["Authorization"] == "Bearer secret"


def test_index_without_recorded_corpus_needs_the_key(bm25_setup, tmp_path: Path) -> None:
    _, index_dir = bm25_setup
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in index_dir.iterdir():
        if path.name != "index_info.json":
            (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="key 'corpus' is required"):
        load_retriever({"type": "bm25", "index": str(bare)})


# --- CLI --------------------------------------------------------------------------------------


def test_cli_builds_and_searches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "bm25"
    assert main(["build-index", "bm25", "--corpus", str(corpus), "--out", str(out)]) == 0
    assert json.loads((out / "index_info.json").read_text()) == {
        "kind": "bm25",
        "corpus": str(corpus),
        "num_passages": len(PASSAGES),
    }
    config = tmp_path / "retriever.yaml"
    config.write_text(f"type: bm25\nindex: {out}\n")
    capsys.readouterr()
    argv = ["search", "Titan rocket Uranus", "Seine", "--retriever", str(config), "--top_k", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Titan IIIE" in printed and "Voyager 2" in printed and "Seine" in printed
    assert main(["search", "x", "--retriever", str(config), "--top-k", "0"]) == 2
    assert capsys.readouterr().err == "error: --top_k must be >= 1, got 0\n"
    assert main(["build-index", "dense", "--corpus", str(corpus), "--out", str(out)]) == 2
    assert "needs --encoder" in capsys.readouterr().err


def test_cli_pushes_the_index_to_the_hub(tmp_path: Path, hub, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    repo = hub.new_repo_id("bm25-index")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    out = tmp_path / "bm25"
    argv = ["build-index", "bm25", "--corpus", str(corpus), "--out", str(out)]
    assert main([*argv, "--push_to_hub", repo]) == 0
    monkeypatch.delenv("HF_TOKEN")
    retriever = load_retriever({"type": "bm25", "index": f"hf://datasets/{repo}"})
    assert retriever.search(["Seine"], 1)[0][0].title == "Seine"
