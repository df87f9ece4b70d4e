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
from research_r1.retrieval.recall import describe


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


# --- build-index convert ------------------------------------------------------------------------


def test_cli_converts_a_flat_index_and_search_prints_its_recall(minilm_index, tmp_path, capsys):
    """The converted index's folder: the index, its recall report and a retriever.yaml that
    searches it with the parameters recall was measured at; `search` prints the report."""
    corpus, flat = minilm_index
    out = tmp_path / "ivf"
    argv = ["build-index", "convert", "--index", str(flat), "--factory", "IVF2,SQ8"]
    assert main([*argv, "--nprobe", "2", "--output_dir", str(out)]) == 0
    report = json.loads((out / "recall.json").read_text())
    assert report["recall"] == {"1": 1.0, "3": 1.0, "5": 1.0}  # every list probed, 8-bit codes
    config = out / "retriever.yaml"
    assert yaml.safe_load(config.read_text()) == {
        "type": "dense",
        "corpus": str(corpus),
        "index": str(out),
        "nprobe": 2,
    }
    assert f"wrote {out}: IVF2,SQ8 index, recall vs Flat @1 1.000, @3 1.000, @5 1.000 on " in (
        capsys.readouterr().out
    )
    assert main(["search", "Seine", "--retriever", str(config), "--top_k", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == describe(report) and "with nprobe 2;" in printed[0]
    assert any("Seine" in line for line in printed[1:])


def test_cli_measures_recall_with_text_queries(minilm_index, tmp_path) -> None:
    """Text queries (plain lines, FlashRAG JSON lines) are encoded with the index's encoder."""
    queries = tmp_path / "questions.jsonl"
    queries.write_text('{"question": "Which river flows through Paris?"}\nwho wrote hamlet\n\n')
    out = tmp_path / "sq4"
    argv = ["build-index", "convert", "--index", str(minilm_index[1]), "--factory", "SQ4"]
    assert main([*argv, "--queries", str(queries), "--output_dir", str(out)]) == 0
    report = json.loads((out / "recall.json").read_text())
    assert report["queries"] == {"count": 2, "from": f"queries from {queries}"}


def test_cli_convert_needs_what_the_index_does_not_record(minilm_index, tmp_path, capsys):
    """Search-R1's published Flat index is bare parts: its corpus and encoder must be given."""
    corpus, flat = minilm_index
    data = (flat / "faiss.index").read_bytes()
    parts = tmp_path / "wiki-18-e5-index"
    parts.mkdir()
    (parts / "part_aa").write_bytes(data[:100])
    (parts / "part_ab").write_bytes(data[100:])
    argv = ["build-index", "convert", "--index", str(parts), "--factory", "SQ8"]
    assert main(argv) == 2
    err = capsys.readouterr().err  # before the parts are reassembled (wiki-18's: 60 GB)
    assert err == f"error: --index {parts} records no corpus: give --corpus\n"
    assert not (parts / "e5_Flat.index").exists()
    assert main(["build-index", "convert", "--factory", "SQ8"]) == 2
    assert "needs --index (the Flat index to convert)" in capsys.readouterr().err
    encoder = json.loads((flat / "index_info.json").read_text())["encoder"]
    out = tmp_path / "out"
    given = ["--corpus", str(corpus), "--encoder", encoder, "--output_dir", str(out)]
    assert main([*argv, *given]) == 0
    info = json.loads((out / "index_info.json").read_text())
    assert (info["corpus"], info["encoder"], info["converted_from"]) == (
        str(corpus),
        encoder,
        str(parts),
    )
    retriever = load_retriever(out / "retriever.yaml")
    assert retriever.search(["the river through Paris"], 1)[0][0].title == "Seine"


def test_cli_pushes_a_converted_index_with_its_recall_in_the_card(
    minilm_index, tmp_path, hub, monkeypatch, capsys
) -> None:
    repo = hub.new_repo_id("e5-sq8")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    out = tmp_path / "sq8"
    argv = ["build-index", "convert", "--index", str(minilm_index[1]), "--factory", "SQ8"]
    assert main([*argv, "--output_dir", str(out), "--push_to_hub", repo]) == 0
    files = HfApi(token=hub.token).list_repo_files(repo, repo_type="dataset")
    assert {"faiss.index", "index_info.json", "recall.json", "README.md"} <= set(files)
    assert "retriever.yaml" not in files
    card = (out / "README.md").read_text()
    assert f"index: hf://datasets/{repo}" in card
    assert "| recall@1 | recall@3 | recall@5 |" in card and "- factory string: `SQ8`" in card
    monkeypatch.delenv("HF_TOKEN")
    config = tmp_path / "hub.yaml"
    config.write_text(f"type: dense\nindex: hf://datasets/{repo}\n")
    capsys.readouterr()
    assert main(["search", "Seine", "--retriever", str(config)]) == 0
    report = json.loads((out / "recall.json").read_text())
    assert capsys.readouterr().out.splitlines()[0] == describe(report)


def test_a_conversion_is_named_after_its_index_and_factory(monkeypatch) -> None:
    from research_r1 import outputs
    from research_r1.cli import parse
    from research_r1.retrieval.cli import default_output_dir

    monkeypatch.setenv(outputs.OUTPUTS_ENV, "/out")
    for index, folder in [
        ("hf://datasets/PeterJinGo/wiki-18-e5-index", "wiki-18-e5-index_HNSW32_SQ8"),
        ("outputs/indexes/e5/", "e5_HNSW32_SQ8"),
        ("/data/e5_Flat.index", "e5_Flat_HNSW32_SQ8"),
    ]:
        _, args = parse(["build-index", "convert", "--index", index, "--factory", "HNSW32,SQ8"])
        assert default_output_dir(args) == Path("/out/indexes", folder)
