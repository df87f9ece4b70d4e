"""`research-r1 build-index` and `research-r1 search` (research_r1.retrieval.cli): an index
built, searched and pushed to the Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import PASSAGES, free_port, write_corpus
from huggingface_hub import HfApi

from research_r1.cli import main
from research_r1.retrieval.config import load_retriever


def test_cli_builds_and_searches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "bm25"
    assert main(["build-index", "bm25", "--corpus", str(corpus), "--output_dir", str(out)]) == 0
    assert json.loads((out / "index_info.json").read_text()) == {
        "kind": "bm25",
        "corpus": str(corpus),
        "num_passages": len(PASSAGES),
    }
    config = out / "retriever.yaml"  # written beside the index, to search it
    assert yaml.safe_load(config.read_text()) == {
        "type": "bm25",
        "corpus": str(corpus),
        "index": str(out),
    }
    assert f"search QUERY --retriever {config}" in capsys.readouterr().out
    argv = ["search", "Titan rocket Uranus", "Seine", "--retriever", str(config), "--top_k", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Titan IIIE" in printed and "Voyager 2" in printed and "Seine" in printed
    assert main(["search", "x", "--retriever", str(config), "--top-k", "0"]) == 2
    assert capsys.readouterr().err == "error: --top_k must be >= 1, got 0\n"
    assert main(["build-index", "dense", "--corpus", str(corpus), "--output_dir", str(out)]) == 2
    assert "needs --encoder" in capsys.readouterr().err


def test_cli_pushes_the_index_to_the_hub(tmp_path: Path, hub, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    repo = hub.new_repo_id("bm25-index")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    out = tmp_path / "bm25"
    argv = ["build-index", "bm25", "--corpus", str(corpus), "--output_dir", str(out)]
    assert main([*argv, "--push_to_hub", repo]) == 0
    files = HfApi(token=hub.token).list_repo_files(repo, repo_type="dataset")
    assert "index_info.json" in files and "retriever.yaml" not in files  # it names local paths
    monkeypatch.delenv("HF_TOKEN")
    retriever = load_retriever({"type": "bm25", "index": f"hf://datasets/{repo}"})
    assert retriever.search(["Seine"], 1)[0][0].title == "Seine"


def test_search_against_a_dead_server_is_one_line(tmp_path: Path, capsys) -> None:
    """The client's retries, then one line naming the server and the cause, exit 4 (a service
    that stayed unreachable): no traceback."""
    port = free_port()
    config = tmp_path / "remote.yaml"
    config.write_text(f"type: remote\nurl: http://127.0.0.1:{port}\nretries: 1\n")
    assert main(["search", "--retriever", str(config), "who wrote hamlet"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(
        f"error: retrieval at http://127.0.0.1:{port}/retrieve failed after 2 attempts; last "
        "cause: NewConnectionError"
    )


def test_an_encoder_on_an_unreachable_hub_is_one_line_naming_it(
    no_hub, minilm_index, tmp_path, capsys
):
    """A dense config whose encoder is a Hub id not in the cache: sentence-transformers' OSError
    (from huggingface_hub's error) is one line, exit 4."""
    encoder = no_hub.new_repo_id("e5-base-v2")
    config = tmp_path / "dense.yaml"
    config.write_text(
        yaml.safe_dump({"type": "dense", "index": str(minilm_index[1]), "encoder": encoder})
    )
    assert main(["search", "Seine", "--retriever", str(config)]) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot reach {no_hub.endpoint} to fetch 'config.json' in model repo '{encoder}' "
        "at revision 'main' (ConnectError: [Errno 111] Connection refused): connect to the "
        "network (or fix HF_ENDPOINT); if it is in the Hub cache (`research-r1 download` puts a "
        "model there), set HF_HUB_OFFLINE=1 to use it"
    ]
