"""research_r1.space.app: the Gradio app driven headless through gradio_client (each step as it
happens, the limits, the leaderboard tab, start-up from settings) and `research-r1 space`."""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from helpers import (
    ANSWER_TURN,
    HAMLET_PAIRS,
    SEARCH_TURN,
    TEXTS,
    HamletRetriever,
    Scripted,
    free_port,
    hamlet_tokenizer,
    launch,
    summary,
    write_config,
    write_corpus,
)

from research_r1 import evaluation
from research_r1.cli import main as cli_main
from research_r1.protocol import SEARCH_R1
from research_r1.retrieval import Passage, RetrieverUnavailable
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.space.episode import Turn
from research_r1.space.settings import SpaceSettings
from research_r1.tiny import EOS, build_tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return hamlet_tokenizer()


def plan_for(tmp_path: Path, **settings):
    """`eval`'s agent plan for a model of no known family with Search-R1's template."""
    config = write_config(tmp_path / "r.yaml", {"type": "bm25", "index": "i", "corpus": "c"})
    options = dict(model="tiny", template="search_r1", retriever=str(config), top_k=2, max_turns=2)
    played = evaluation.PlayArguments(**options | settings, backend="transformers")
    return evaluation.agent_plan(played)


def statuses(history: list[dict]) -> list[str | None]:
    return [(message.get("metadata") or {}).get("status") for message in history]


@pytest.fixture(scope="module")
def app():
    return pytest.importorskip("research_r1.space.app")


@pytest.mark.slow
def test_the_app_streams_each_step_then_the_answer(app, tokenizer, tmp_path):
    from gradio_client.exceptions import AppError

    generator = Scripted(tokenizer, [SEARCH_TURN, ANSWER_TURN, "<think> no idea </think>" + EOS])
    demo = app.build_app(plan_for(tmp_path), generator, tokenizer, HamletRetriever())
    client = launch(demo)
    try:
        job = client.submit("who wrote hamlet?", [], api_name="/ask")
        updates = [(summary(history), statuses(history)) for _, history in job]
        passages = (
            "Hamlet (play)\nHamlet is a tragedy by William Shakespeare.\n\n"
            "William Shakespeare\nShakespeare (1564-1616) was a playwright."
        )
        question = ("user", None, "who wrote hamlet?")
        thought = ("assistant", "Thinking", "I need the author.")
        found = [question, thought, ("assistant", "Search: hamlet author", passages)]
        answered = [
            *found,
            ("assistant", "Thinking", "Shakespeare wrote it."),
            ("assistant", None, "William Shakespeare"),
        ]
        assert updates == [
            ([question], [None]),
            (
                [question, thought, ("assistant", "Searching: hamlet author", "…")],
                [None, "done", "pending"],
            ),
            (found, [None, "done", "done"]),
            (answered, [None, "done", "done", "done", None]),
        ]

        _, history = client.predict("and macbeth?", job.result()[1], api_name="/ask")
        assert summary(history) == [
            *answered,
            ("user", None, "and macbeth?"),
            ("assistant", "Thinking", "no idea"),
            ("assistant", None, app.NO_ANSWER),
        ]
        with pytest.raises(AppError, match="Ask a question first"):
            client.predict("   ", [], api_name="/ask")
    finally:
        demo.close()


class SlowGenerator(Scripted):
    def generate(self, contexts, max_new_tokens, stop):
        time.sleep(1.0)
        return super().generate(contexts, max_new_tokens, stop)


@pytest.mark.slow
def test_a_question_over_the_time_limit_fails_with_a_message(app, tokenizer, tmp_path):
    from gradio_client.exceptions import AppError

    generator = SlowGenerator(tokenizer, [SEARCH_TURN, ANSWER_TURN])
    demo = app.build_app(
        plan_for(tmp_path), generator, tokenizer, HamletRetriever(), time_limit_s=0.5
    )
    client = launch(demo)
    try:
        with pytest.raises(AppError, match=r"The agent took longer than 0.5 s"):
            client.predict("who wrote hamlet?", [], api_name="/ask")
    finally:
        demo.close()


def test_passages_and_the_models_text_are_shown_as_text(app):
    """HTML and Markdown in a passage or in what the model wrote reach the page escaped (the
    chat renders no Markdown); the browser test checks the page itself."""
    evil = "<img src=x onerror=alert(1)> [a link](http://example.com) & more"
    search = app.to_message(Turn("search", evil, ((evil, evil),)))
    escaped = "&lt;img src=x onerror=alert(1)&gt; [a link](http://example.com) &amp; more"
    assert search.metadata["title"] == f"Search: {escaped}"
    assert search.content == f"{escaped}\n{escaped}"
    assert app.to_message(Turn("answer", evil)).content == escaped


class UnreachableRetriever:
    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        raise RetrieverUnavailable("retrieval at http://127.0.0.1:9/retrieve failed: refused")


@pytest.mark.slow
def test_an_unreachable_retriever_fails_the_question_with_a_message(app, tokenizer, tmp_path):
    from gradio_client.exceptions import AppError

    generator = Scripted(tokenizer, [SEARCH_TURN, ANSWER_TURN])
    plan = plan_for(tmp_path)
    plan = dataclasses.replace(
        plan, rollout=plan.rollout.model_copy(update={"max_retriever_wait_s": 0.0})
    )
    demo = app.build_app(plan, generator, tokenizer, UnreachableRetriever())
    client = launch(demo)
    try:
        with pytest.raises(AppError, match=r"The search engine did not answer: the retriever"):
            client.predict("who wrote hamlet?", [], api_name="/ask")
    finally:
        demo.close()


@pytest.mark.slow
def test_the_app_loads_a_checkpoint_and_retriever_from_its_settings(app, tmp_path):
    """The start-up path: from_pretrained and a BM25 retriever config; the random model writes
    no tags, so the episode ends unanswered after its one turn."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", HAMLET_PAIRS)
    index = build_bm25_index(load_corpus(corpus), tmp_path / "bm25")
    model_dir = build_tiny_model(tmp_path / "model", TEXTS, SEARCH_R1.tags, hidden_size=64)
    settings = SpaceSettings(
        model_id=str(model_dir),
        retriever_config={"type": "bm25", "index": str(index), "corpus": str(corpus)},
        template="search_r1",
        max_turns=0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    demo = app.load_space(settings)
    client = launch(demo)
    try:
        _, history = client.predict("who wrote hamlet?", [], api_name="/ask")
    finally:
        demo.close()
        torch.set_num_threads(threads)
    messages = summary(history)
    assert messages[0] == ("user", None, "who wrote hamlet?")
    assert messages[-1] == ("assistant", None, app.NO_ANSWER)
    assert {title for _, title, _ in messages[1:-1]} <= {"Thinking", "Environment"}


def test_space_without_the_demos_output_says_to_run_it(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["space"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: outputs/demo/grpo does not exist: run `make demo` first, or pass --model"
    )


def run_file(folder: Path, model: str, setting: str, em: dict[str, float]) -> None:
    """A run as `research-r1 eval` writes it (the keys the leaderboard reads)."""
    results = {name: {"em": value, "n": 100} for name, value in em.items()}
    config = {"model": model, "revision": None, "method": "agent", "setting": setting}
    config["date"] = "2026-11-29T00:00:00Z"
    (folder / f"{model.replace('/', '_')}.json").write_text(
        json.dumps({"config": config, "results": results})
    )


@pytest.mark.slow
def test_the_leaderboard_tab_ranks_runs_with_the_papers_rows_of_their_setting(
    app, tokenizer, tmp_path
):
    from research_r1.evaluation.leaderboard import SEARCH_R1_SETTING

    runs = tmp_path / "runs"
    runs.mkdir()
    run_file(runs, "org/strong", SEARCH_R1_SETTING, {"nq": 0.9, "bamboogle": 0.9})
    run_file(runs, "org/bm25", "search_r1 · wiki/corpus.jsonl, BM25 · top-3 · EM", {"nq": 0.99})
    generator = Scripted(tokenizer, [ANSWER_TURN])
    demo = app.build_app(
        plan_for(tmp_path), generator, tokenizer, HamletRetriever(), results=[str(runs)]
    )
    client = launch(demo)
    try:
        table, _ = client.predict(SEARCH_R1_SETTING, api_name="/leaderboard")
        bm25, _ = client.predict(
            "search_r1 · wiki/corpus.jsonl, BM25 · top-3 · EM", api_name="/leaderboard"
        )
    finally:
        demo.close()
    records = [dict(zip(table["headers"], row, strict=True)) for row in table["data"]]
    assert {r["setting"] for r in records} == {SEARCH_R1_SETTING}
    assert [(r["rank"], r["model"], r["kind"]) for r in records[:3]] == [
        (1, "org/strong", "measured"),
        (2, "Qwen2.5-7B", "reported"),
        (3, "Qwen2.5-7B", "reported"),
    ]
    assert {r["kind"] for r in records[1:]} == {"reported"}
    assert [row[:5] for row in bm25["data"]] == [
        ["search_r1 · wiki/corpus.jsonl, BM25 · top-3 · EM", 1, "org/bm25", "agent", "measured"]
    ]


def test_on_a_zerogpu_space_questions_run_under_its_decorator(app, monkeypatch):
    """A stand-in for the `spaces` package (not installed here): its `GPU(duration=...)` wraps
    the question handler; without the package the handler is left as it is."""
    import types

    def handler(question, history):
        yield question

    monkeypatch.delitem(sys.modules, "spaces", raising=False)
    monkeypatch.setattr("builtins.__import__", _refusing("spaces"))
    assert app.on_gpu(handler) is handler
    monkeypatch.undo()

    calls = []
    fake = types.ModuleType("spaces")
    fake.GPU = lambda duration: lambda function: calls.append(duration) or ("on a GPU", function)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert app.on_gpu(handler) == ("on a GPU", handler)
    assert calls == [int(app.TIME_LIMIT_S)]


def _refusing(name: str):
    real = __import__

    def importer(module, *args, **kwargs):
        if module == name:
            raise ImportError(f"No module named {name!r}")
        return real(module, *args, **kwargs)

    return importer


def test_a_busy_port_is_one_line_before_the_model_loads(app, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app, "load_app", lambda *_, **__: pytest.fail("the model loaded"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["space", "--model", str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: port {port} on 127.0.0.1 is in use (another server?); pick another with --port"
    )


def test_a_hub_model_without_network_is_one_line_naming_it(app, toy_world, no_hub, capsys):
    model = no_hub.new_repo_id("never-fetched")
    argv = ["space", "--model", model, "--template", "search_r1", "--port", str(free_port())]
    assert cli_main([*argv, "--retriever", str(toy_world.retriever)]) == 4
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: cannot reach {no_hub.endpoint} to fetch model repo '{model}' (ConnectError: "
    )
