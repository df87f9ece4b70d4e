"""Retriever configs (research_r1.retrieval.config): every error names its key, types are
strict, the shipped configs parse, and each type builds its retriever, from local files or the
Hub."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT
from huggingface_hub import HfApi

from research_r1.errors import InputError
from research_r1.hub import push_folder
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.client import RemoteRetriever
from research_r1.retrieval.config import (
    DenseConfig,
    HybridConfig,
    load_retriever,
    parse_config,
)
from research_r1.retrieval.corpus import load_corpus

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
            f"unknown key 'nprob' for type dense (did you mean 'nprobe'? allowed: {DENSE_KEYS})",
        ),
        (  # the typo comes first, not the key it leaves missing
            {"type": "bm25", "indx": "x"},
            "unknown key 'indx' for type bm25 (did you mean 'index'? allowed: index, corpus)",
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
            "key 'device': must be cpu, cuda, cuda:N, cuda:N,M,... (one index split over those "
            "GPUs) or cuda:all (a retriever config also takes auto), got 'gpu'",
        ),
        (
            {"type": "dense", "index": "x", "device": "cuda:0,1,0"},
            "key 'device': lists a GPU twice, got 'cuda:0,1,0'",
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
    for device in ("cpu", "auto", "cuda", "cuda:12", "cuda:0,1", "cuda:3,1,2", "cuda:all"):
        assert parse_config({"type": "dense", "index": "x", "device": device}).device == device
    for device in ("gpu", "cuda:", "cuda:x", "cuda\n", " cpu", "cuda:0,", "cuda:0 1", "cuda:al"):
        with pytest.raises(InputError, match="key 'device': must be cpu, cuda, cuda:N, "):
            parse_config({"type": "dense", "index": "x", "device": device})


def test_shipped_retriever_configs_parse() -> None:
    folder = ROOT / "recipes" / "retrievers"
    configs = {path.stem: parse_config(path) for path in sorted(folder.glob("*.yaml"))}
    assert {"demo_bm25", "e5_wiki18_flat", "e5_wiki18_hnsw", "e5_wiki18_ivfpq"} <= set(configs)
    ivfpq = configs["e5_wiki18_ivfpq"]
    assert isinstance(ivfpq, DenseConfig)
    assert (ivfpq.nprobe, ivfpq.k_factor, ivfpq.query_prompt) == (256, None, "query: ")


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


def test_index_without_recorded_corpus_needs_the_key(bm25_index, tmp_path: Path) -> None:
    _, index_dir = bm25_index
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in index_dir.iterdir():
        if path.name != "index_info.json":
            (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="key 'corpus' is required"):
        load_retriever({"type": "bm25", "index": str(bare)})


def test_hybrid_from_the_hub(minilm, minilm_index, hub, tmp_path, monkeypatch) -> None:
    corpus_path, dense_dir = minilm_index
    build_bm25_index(load_corpus(corpus_path), tmp_path / "bm25")
    repo = hub.new_repo_id("wiki-mini-indexes")
    push_folder(tmp_path / "bm25", repo, repo_type="dataset", path_in_repo="bm25", token=hub.token)
    push_folder(dense_dir, repo, repo_type="dataset", path_in_repo="e5", token=hub.token)
    HfApi(token=hub.token).upload_file(
        path_or_fileobj=corpus_path, path_in_repo="corpus.jsonl", repo_id=repo, repo_type="dataset"
    )
    # The index records the encoder's local path; reuse the loaded model rather than reload it.
    monkeypatch.setattr("research_r1.retrieval.dense.SentenceTransformer", lambda *a, **k: minilm)

    retriever = load_retriever(
        {
            "type": "hybrid",
            "corpus": f"hf://datasets/{repo}/corpus.jsonl",
            "bm25": {"index": f"hf://datasets/{repo}/bm25"},
            "dense": {"index": f"hf://datasets/{repo}/e5"},
            "depth": 5,
        }
    )
    bm25, dense = retriever.retrievers
    assert dense.corpus.path != corpus_path.with_name("corpus.jsonl.arrow")  # the Hub copy
    madison, citibank, hamlet = (
        "Who led America in the early nineteenth century?",
        "When was the bank of New York City established?",
        "Who is the author of the play about the prince of Denmark?",
    )
    assert bm25.search([madison], 3) == [[]]  # no word in common: only the dense side finds it
    assert [p.title for p in dense.search([hamlet], 2)[0]] == ["Hamlet", "Macbeth"]
    assert [p.title for p in bm25.search([hamlet], 2)[0]] == ["Macbeth"]  # "about"
    results = retriever.search([madison, citibank, hamlet], 2)
    assert [result[0].title for result in results] == ["James Madison", "Citibank", "Macbeth"]
    assert [p.score for p in results[2]] == pytest.approx([1 / 61 + 1 / 62, 1 / 61])
