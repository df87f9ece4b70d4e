"""The demo Space: splitting episodes into steps, the app's settings, the Gradio app driven
headless through gradio_client, and push-space against the loopback Hub."""

from __future__ import annotations

import ast
import configparser
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, SpaceCard, hf_hub_download, snapshot_download

from research_r1 import cli, evaluation
from research_r1.cli import main as cli_main
from research_r1.errors import InputError
from research_r1.generation import Generation
from research_r1.protocol import RESEARCH, SEARCH_R1
from research_r1.retrieval import Passage, RetrieverUnavailable
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import parse_config
from research_r1.retrieval.corpus import load_corpus
from research_r1.rollout import FINAL_TURN_NOTICE, Episode, RolloutConfig, run_rollout
from research_r1.space import push as space
from research_r1.space.push import (
    SPACE_DIR,
    SpaceSettings,
    Turn,
    load_settings,
    push_space,
    transcript_turns,
)
from research_r1.tiny import EOS, build_tiny_model, build_tokenizer

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no calls home

HAMLET = Passage("h1", '"Hamlet (play)"\nHamlet is a tragedy by William Shakespeare.', 2.0)
SHAKESPEARE = Passage("h2", '"William Shakespeare"\nShakespeare (1564-1616) was a playwright.', 1.0)
HAMLET_PAIRS = (
    ("Hamlet (play)", "Hamlet is a tragedy by William Shakespeare."),
    ("William Shakespeare", "Shakespeare (1564-1616) was a playwright."),
)
SEARCH_TURN = "<think> I need the author. </think>\n<search> hamlet author </search>"
ANSWER_TURN = "<think> Shakespeare wrote it. </think>\n<answer> William Shakespeare </answer>"
HAMLET_TURNS = [
    Turn("think", "I need the author."),
    Turn("search", "hamlet author", HAMLET_PAIRS),
    Turn("think", "Shakespeare wrote it."),
    Turn("answer", "William Shakespeare"),
]
TEXTS = [
    "Question: who wrote hamlet?\n",
    SEARCH_TURN,
    ANSWER_TURN,
    *(f"Doc {i}(Title: {p.title}) {p.text}\n" for i, p in enumerate((HAMLET, SHAKESPEARE), 1)),
    SEARCH_R1.invalid_notice,
    FINAL_TURN_NOTICE,
    # Unused words: they fix the vocabulary, hence the random model these tests expect.
    "Search failed: connection refused",
    "The final answer is \\[ \\boxed{William Shakespeare} \\]",
]


class HamletRetriever:
    """Two passages whose titles and texts hold parentheses."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [[HAMLET, SHAKESPEARE][:k] for _ in queries]


class ScriptedGenerator:
    """A `Generator` that plays the given turn texts in order, whatever the context."""

    def __init__(self, tokenizer, turns: list[str]) -> None:
        self.tokenizer, self.turns = tokenizer, list(turns)

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = []
        for _ in contexts:
            text = self.turns.pop(0)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            finish = (
                "eos" if text.endswith(EOS) else "stop" if text.endswith(tuple(stop)) else "length"
            )
            generations.append(Generation(ids, [0.0] * len(ids), finish))
        return generations


@pytest.fixture(scope="module")
def tokenizer():
    tags = dict.fromkeys(SEARCH_R1.tags + RESEARCH.tags)
    return build_tokenizer(TEXTS, list(tags))


def play(tokenizer, turns: list[str], protocol=SEARCH_R1, **limits) -> Episode:
    [episode] = run_rollout(
        [tokenizer.encode("Question: who wrote hamlet?\n")],
        generator=ScriptedGenerator(tokenizer, turns),
        tokenizer=tokenizer,
        retriever=HamletRetriever(),
        protocol=protocol,
        config=RolloutConfig(k=2, **limits),
    )
    return episode


# ---------------------------------------------------------------------------------------------
# transcript_turns


def test_turns_of_a_search_then_an_answer(tokenizer):
    episode = play(tokenizer, [SEARCH_TURN, ANSWER_TURN])
    assert episode.answered and episode.queries == ["hamlet author"]
    assert transcript_turns(episode, tokenizer, SEARCH_R1) == HAMLET_TURNS


def test_turns_of_research_read_the_boxed_answer(tokenizer):
    answer = "<answer> The final answer is \\[ \\boxed{William Shakespeare} \\] </answer>"
    episode = play(tokenizer, ["<search> hamlet author </search>", answer], protocol=RESEARCH)
    assert transcript_turns(episode, tokenizer, RESEARCH) == [
        Turn("search", "hamlet author", HAMLET_PAIRS),
        Turn("answer", "William Shakespeare"),
    ]


def test_invalid_steps_and_notices_become_notice_turns(tokenizer):
    turns = [
        "I am not sure",
        "<search> hamlet </search>",
        "<think> still nothing </think> <search> hamlet author </search>",
    ]
    episode = play(tokenizer, turns, max_turns=2)
    assert not episode.answered
    assert transcript_turns(episode, tokenizer, SEARCH_R1) == [
        Turn("think", "I am not sure"),
        Turn("notice", SEARCH_R1.invalid_notice.strip()),
        Turn("search", "hamlet", HAMLET_PAIRS),
        Turn("notice", FINAL_TURN_NOTICE.strip()),
        Turn("think", "still nothing"),
        Turn("search", "hamlet author"),  # the last turn's search is never run
    ]


def test_passages_of_an_observation_cut_mid_title(tokenizer):
    observation = (
        "\n\n<information>Doc 1(Title: A (b)) one\ntwo\nDoc 2(Title: Cut (ti</information>"
    )
    model, inserted = (tokenizer.encode(t) for t in ("<search> q </search>", observation))
    episode = Episode(
        prompt_ids=[0],
        completion_ids=model + inserted,
        env_mask=[1] * len(model) + [0] * len(inserted),
    )
    assert transcript_turns(episode, tokenizer, SEARCH_R1) == [
        Turn("search", "q", (("A (b)", "one\ntwo"), ("Cut (ti", ""))),
    ]


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_read_the_file_under_the_space_variables(tmp_path):
    (tmp_path / "retriever.yaml").write_text("type: remote\nurl: http://search.example\n")
    (tmp_path / "space_config.json").write_text(
        json.dumps({"MODEL_ID": "org/agent", "RETRIEVER_CONFIG": "retriever.yaml", "TOPK": 5})
    )
    assert load_settings(tmp_path, {}) == SpaceSettings(
        model_id="org/agent",
        retriever_config=str(tmp_path / "retriever.yaml"),
        top_k=5,  # template and searches: the model's own
    )
    variables = {
        "RETRIEVER_CONFIG": '{"type": "remote", "url": "http://search.example"}',
        "TEMPLATE": "research_instruct",
        "MAX_TURNS": "0",
    }
    assert load_settings(tmp_path, variables) == SpaceSettings(
        model_id="org/agent",
        retriever_config={"type": "remote", "url": "http://search.example"},
        template="research_instruct",
        max_turns=0,
        top_k=5,
    )
    assert load_settings(tmp_path, {"RETRIEVER_CONFIG": " hf://datasets/o/r/c.yaml "}) == (
        SpaceSettings(model_id="org/agent", retriever_config="hf://datasets/o/r/c.yaml", top_k=5)
    )


NOT_SET = "is not set: set the Space variable, or push with push-space"
JSON_ERROR = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RETRIEVER_CONFIG": "r.yaml"}, f"MODEL_ID {NOT_SET}"),
        ({"MODEL_ID": "o/m"}, f"RETRIEVER_CONFIG {NOT_SET}"),
        ({"MODEL_ID": " ", "RETRIEVER_CONFIG": "r.yaml"}, f"MODEL_ID {NOT_SET}"),
        ({"MODEL_ID": "o/m", "RETRIEVER_CONFIG": ""}, f"RETRIEVER_CONFIG {NOT_SET}"),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "{nope"},
            "Space variables: key 'RETRIEVER_CONFIG': not a valid JSON object "
            f"({JSON_ERROR}), got '{{nope'",
        ),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "TOPK": "three"},
            "Space variables: key 'TOPK': Input should be a valid integer, unable to parse "
            "string as an integer, got 'three'",
        ),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "TOPK": "0"},
            "Space variables: key 'TOPK': Input should be greater than or equal to 1, got '0'",
        ),
        (
            {"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "MAX_TURNS": "-1"},
            "Space variables: key 'MAX_TURNS': Input should be greater than or equal to 0, "
            "got '-1'",
        ),
    ],
)
def test_bad_settings_name_the_variable(tmp_path, variables, message):
    with pytest.raises(InputError) as raised:
        load_settings(tmp_path, variables)
    assert str(raised.value) == message


def test_bad_settings_in_the_file_name_the_file_and_key(tmp_path):
    path = tmp_path / "space_config.json"
    path.write_text('{"MODEL_ID": "o/m", "RETRIEVER_CONFIG": "r.yaml", "TOPK": 0}')
    with pytest.raises(InputError) as raised:
        load_settings(tmp_path, {})
    assert str(raised.value) == (
        f"{path}: key 'TOPK': Input should be greater than or equal to 1, got 0"
    )
    # The same value from a Space variable overrides the file's.
    assert load_settings(tmp_path, {"TOPK": "2"}).top_k == 2


def test_unknown_keys_in_the_settings_file_are_named(tmp_path):
    """Before the setting they look like a misspelling of (RETRIEVER_CONFIG is missing)."""
    path = tmp_path / "space_config.json"
    path.write_text('{"MODEL_ID": "o/m", "TOP_K": 3}')
    with pytest.raises(InputError) as raised:
        load_settings(tmp_path, {})
    assert str(raised.value) == (
        f"{path}: unknown settings ['TOP_K'] (known: "
        "['MODEL_ID', 'RETRIEVER_CONFIG', 'TEMPLATE', 'MAX_TURNS', 'TOPK', 'RESULTS', "
        "'EXAMPLES'])"
    )


def module_imports(path: Path) -> set[str]:
    """The modules a file imports at its top level (function-local imports are optional extras,
    such as gradio in space.py, that the Space brings or does not need)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def space_distributions() -> set[str]:
    """The distributions the Space's code imports: app.py and, through it, every module of the
    package copy it loads."""
    root = SPACE_DIR.parent.parent
    seen, third_party = set(), set()
    pending = [SPACE_DIR / "app.py"]
    while pending:
        path = pending.pop()
        for name in module_imports(path):
            top = name.split(".")[0]
            if top == "research_r1":
                module = root / Path(*name.split("."))
                for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                    if candidate.is_file() and candidate not in seen:
                        seen.add(candidate)
                        pending.append(candidate)
            elif top not in sys.stdlib_module_names and top != "gradio":  # the Space SDK's
                third_party.add(top)
    installed = importlib.metadata.packages_distributions()
    return {canonical(dist) for top in third_party for dist in installed[top]}


def canonical(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_space_requirements_cover_what_it_imports_pinned_as_the_package_pins_them():
    setup = configparser.ConfigParser()
    setup.read(SPACE_DIR.parent.parent / "setup.cfg")
    package = set(setup["options"]["install_requires"].split())
    space = (SPACE_DIR / "requirements.txt").read_text().split()
    assert set(space) <= package  # the package's own ranges, so the Space runs what was trained
    missing = space_distributions() - {canonical(line) for line in space}
    assert not missing, f"spaces/search_agent/requirements.txt lacks {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# The app, driven headless


def plan_for(tmp_path: Path, **settings):
    """`eval`'s agent plan for a model of no known family with Search-R1's template."""
    config = write_config(tmp_path / "r.yaml", {"type": "bm25", "index": "i", "corpus": "c"})
    options = dict(model="tiny", template="search_r1", retriever=str(config), k=2, max_turns=2)
    played = evaluation.PlayArguments(**options | settings, backend="transformers")
    return evaluation.agent_plan(played)


def launch(demo):
    """Serve `demo` on a free loopback port; returns a gradio_client Client for it."""
    from gradio_client import Client

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.queue(max_size=4).launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        ssr_mode=False,
        quiet=True,
    )
    return Client(demo.local_url, verbose=False)


def statuses(history: list[dict]) -> list[str | None]:
    return [(message.get("metadata") or {}).get("status") for message in history]


def summary(history: list[dict]) -> list[tuple[str, str | None, str]]:
    """(role, metadata title, text) per message, as gradio_client returns the chat."""
    return [
        (
            message["role"],
            (message.get("metadata") or {}).get("title"),
            "".join(part["text"] for part in message["content"]),
        )
        for message in history
    ]


@pytest.fixture(scope="module")
def app():
    return pytest.importorskip("research_r1.space.app")


@pytest.mark.slow
def test_the_app_streams_each_step_then_the_answer(app, tokenizer, tmp_path):
    from gradio_client.exceptions import AppError

    generator = ScriptedGenerator(
        tokenizer, [SEARCH_TURN, ANSWER_TURN, "<think> no idea </think>" + EOS]
    )
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


class SlowGenerator(ScriptedGenerator):
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

    generator = ScriptedGenerator(tokenizer, [SEARCH_TURN, ANSWER_TURN])
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
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": p.id, "contents": f'"{p.title}"\n{p.text}'}) + "\n"
            for p in (HAMLET, SHAKESPEARE)
        )
    )
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


# ---------------------------------------------------------------------------------------------
# push-space


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_push_space_uploads_the_app_package_config_and_card(hub, tmp_path, monkeypatch):
    retriever = write_config(
        tmp_path / "wiki.yaml",
        {
            "type": "bm25",
            "index": "hf://datasets/org/wiki/bm25",
            "corpus": "hf://datasets/org/c.jsonl",
        },
    )
    template = write_config(
        tmp_path / "mine.yaml", {"protocol": "research", "user": "Q: {question}", "chat": False}
    )
    repo_id = hub.new_repo_id("demo-space")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    argv = ["push-space", "--repo", repo_id, "--model", "org/agent", "--top-k", "2", "--private"]
    options = ["--retriever-config", str(retriever), "--template", str(template)]
    assert cli_main([*argv, *options]) == 0

    api = HfApi(token=hub.token)
    info = api.space_info(repo_id)
    assert (info.sdk, info.private) == ("gradio", True)
    files = set(api.list_repo_files(repo_id, repo_type="space"))
    assert {
        "app.py",
        "requirements.txt",
        "README.md",
        "retriever.yaml",
        "template.yaml",
        "space_config.json",
    } <= files
    assert {
        "research_r1/__init__.py",
        "research_r1/space/push.py",
        "research_r1/rollout.py",
    } <= files
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]

    readme = hf_hub_download(repo_id, "README.md", repo_type="space", token=hub.token)
    card = SpaceCard.load(readme)
    assert card.data.sdk == "gradio"
    assert card.data.sdk_version == version("gradio")
    assert card.data.app_file == "app.py"
    assert card.data.models == ["org/agent"]
    assert "# research_r1 search agent" in card.text

    folder = Path(snapshot_download(repo_id, repo_type="space", token=hub.token))
    assert parse_config(folder / "retriever.yaml") == parse_config(retriever)
    assert (folder / "app.py").read_text() == (SPACE_DIR / "app.py").read_text()
    assert (folder / "template.yaml").read_text() == template.read_text()
    assert json.loads((folder / "space_config.json").read_text()) == {
        "MODEL_ID": "org/agent",
        "RETRIEVER_CONFIG": "retriever.yaml",
        "TEMPLATE": "template.yaml",
        "MAX_TURNS": None,
        "TOPK": 2,
        "RESULTS": None,
        "EXAMPLES": None,
    }
    assert load_settings(folder, {}) == SpaceSettings(
        model_id="org/agent",
        retriever_config=str(folder / "retriever.yaml"),
        template=str(folder / "template.yaml"),
        top_k=2,
    )


def test_push_space_options_are_one_dataclass_in_either_spelling(tmp_path):
    options = tmp_path / "space.yaml"
    options.write_text("repo: org/space\nmax_turns: 3\n")
    run, args = cli.parse(
        ["push-space", "--config", str(options), "--top_k", "2", "--retriever-config", "r.yaml"]
    )
    assert run is space.run_push_space
    assert args == space.PushSpaceArguments(
        repo="org/space", retriever_config="r.yaml", max_turns=3, top_k=2
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "bm25", "index": "outputs/bm25"}, r"outputs/bm25 does not exist"),
        ({"type": "remote", "url": "http://127.0.0.1:8000"}, "key 'url'.* is this machine"),
        ({"type": "remote", "url": "http://x.org", "token": "s"}, "key 'token' would be publ"),
        ({"type": "bm25"}, "key 'index': Field required"),
    ],
)
def test_push_space_refuses_a_retriever_the_space_could_not_load(tmp_path, config, message):
    retriever = write_config(tmp_path / "retriever.yaml", config)
    with pytest.raises(InputError, match=message):
        push_space("org/space", "org/agent", retriever)


def test_push_space_refuses_a_bad_model_and_more_than_a_space_holds(tmp_path, monkeypatch):
    retriever = write_config(tmp_path / "retriever.yaml", {"type": "remote", "url": "http://x.org"})
    with pytest.raises(InputError, match="'org/agent/v2' is neither a local folder nor a Hub"):
        push_space("org/space", "org/agent/v2", retriever)
    with pytest.raises(InputError, match=r"missing\.yaml is not a file"):
        push_space("org/space", "org/agent", tmp_path / "missing.yaml")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").write_bytes(b"0" * 2048)
    monkeypatch.setattr(space, "SHIP_LIMIT_BYTES", 1024)
    with pytest.raises(InputError, match=r"model: 0\.0 GiB, more than a Space holds"):
        push_space("org/space", str(model), retriever)


@pytest.mark.slow
def test_the_demo_space_ships_its_model_and_corpus_and_starts_from_its_files(
    app, hub, tmp_path, monkeypatch
):
    """Without a model, push-space ships what `make demo` wrote (a tiny model with its card,
    BM25 over its corpus, its questions); the pushed Space starts from its own files alone."""
    demo = tmp_path / "work" / "outputs" / "demo"
    corpus = demo / "corpus.jsonl"
    demo.mkdir(parents=True)
    corpus.write_text(
        "".join(
            json.dumps({"id": p.id, "contents": f'"{p.title}"\n{p.text}'}) + "\n"
            for p in (HAMLET, SHAKESPEARE)
        )
    )
    build_bm25_index(load_corpus(corpus), demo / "bm25")
    write_config(
        demo / "retriever.yaml",
        {"type": "bm25", "index": "outputs/demo/bm25", "corpus": "outputs/demo/corpus.jsonl"},
    )
    build_tiny_model(demo / "grpo", TEXTS, SEARCH_R1.tags, hidden_size=64)
    (demo / "grpo" / "checkpoint-60").mkdir()  # what training leaves beside the model
    (demo / "grpo" / "checkpoint-60" / "optimizer.pt").write_bytes(b"0" * 100)
    (demo / "grpo" / "training_args.bin").write_bytes(b"pickle")
    (demo / "questions").mkdir()
    (demo / "questions" / "test.jsonl").write_text(
        json.dumps({"id": "1", "question": "who wrote hamlet?", "golden_answers": ["x"]}) + "\n"
    )
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    repo_id = hub.new_repo_id("demo-default")
    assert cli_main(["push-space", "--repo", repo_id, "--template", "search_r1"]) == 0

    folder = Path(snapshot_download(repo_id, repo_type="space", token=hub.token))
    assert (folder / "model" / "config.json").is_file() and (folder / "examples.jsonl").is_file()
    assert not [
        p for p in (folder / "model").iterdir() if p.name.startswith(("checkpoint", "training"))
    ]
    assert parse_config(folder / "retriever.yaml").model_dump(include={"index", "corpus"}) == {
        "index": "retriever/bm25",
        "corpus": "retriever/corpus.jsonl",
    }
    assert SpaceCard.load(folder / "README.md").data.models is None
    monkeypatch.chdir(folder)
    demo_app = app.load_space(load_settings(folder, {}))
    client = launch(demo_app)
    try:
        _, history = client.predict("who wrote hamlet?", [], api_name="/ask")
    finally:
        demo_app.close()
    assert summary(history)[0] == ("user", None, "who wrote hamlet?")
    assert summary(history)[-1] == ("assistant", None, app.NO_ANSWER)  # a random model


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
    generator = ScriptedGenerator(tokenizer, [ANSWER_TURN])
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


def test_two_local_indexes_of_one_name_are_shipped_apart(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder / "index").mkdir(parents=True)
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    config = {
        "type": "hybrid",
        "corpus": str(tmp_path / "corpus.jsonl"),
        "bm25": {"index": str(tmp_path / "a" / "index")},
        "dense": {"index": str(tmp_path / "b" / "index")},
    }
    path = write_config(tmp_path / "hybrid.yaml", config)
    parsed = parse_config(path)
    shipped = space._shipped("org/agent", parsed, path)
    relocated = space._relocated(parsed, shipped)
    assert (relocated["bm25"]["index"], relocated["dense"]["index"]) == (
        "retriever/index",
        "retriever/1-index",
    )
    assert relocated["corpus"] == "retriever/corpus.jsonl" and relocated["type"] == "hybrid"
