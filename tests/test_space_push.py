"""research_r1.space.push: `research-r1 push-space` against the loopback Hub (what goes up,
what is refused), and the Space's requirements.txt against what its code imports."""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import HAMLET_PAIRS, TEXTS, launch, summary, write_config, write_corpus
from huggingface_hub import HfApi, SpaceCard, hf_hub_download, snapshot_download

from research_r1 import cli
from research_r1.cli import main as cli_main
from research_r1.errors import InputError
from research_r1.protocol import SEARCH_R1
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import parse_config
from research_r1.retrieval.corpus import load_corpus
from research_r1.space import push
from research_r1.space.push import SPACE_DIR, push_space
from research_r1.space.settings import SpaceSettings, load_settings
from research_r1.tiny import build_tiny_model


def module_imports(path: Path) -> set[str]:
    """The modules a file imports at its top level (function-local imports are optional extras
    that the Space brings or does not need, such as `spaces` in the app's `on_gpu`)."""
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
    options = ["--retriever", str(retriever), "--template", str(template)]
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
        "research_r1/space/app.py",  # what the Space's app.py imports, and what that imports
        "research_r1/space/episode.py",
        "research_r1/space/settings.py",
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
        ["push-space", "--config", str(options), "--top_k", "2", "--retriever", "r.yaml"]
    )
    assert run is push.run_push_space
    assert args == push.PushSpaceArguments(
        repo="org/space", retriever="r.yaml", max_turns=3, top_k=2
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
    monkeypatch.setattr(push, "SHIP_LIMIT_BYTES", 1024)
    with pytest.raises(InputError, match=r"model: 0\.0 GiB, more than a Space holds"):
        push_space("org/space", str(model), retriever)


@pytest.mark.slow
def test_the_demo_space_ships_its_model_and_corpus_and_starts_from_its_files(
    hub, tmp_path, monkeypatch
):
    """Without a model, push-space ships what `make demo` wrote (a tiny model with its card,
    BM25 over its corpus, its questions); the pushed Space starts from its own files alone."""
    app = pytest.importorskip("research_r1.space.app")
    demo = tmp_path / "work" / "outputs" / "demo"
    demo.mkdir(parents=True)
    corpus = write_corpus(demo / "corpus.jsonl", HAMLET_PAIRS)
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
    shipped = push._shipped("org/agent", parsed, path)
    relocated = push._relocated(parsed, shipped)
    assert (relocated["bm25"]["index"], relocated["dense"]["index"]) == (
        "retriever/index",
        "retriever/1-index",
    )
    assert relocated["corpus"] == "retriever/corpus.jsonl" and relocated["type"] == "hybrid"


@pytest.fixture
def space_argv(tmp_path) -> list[str]:
    """`push-space` for a Hub model and a retriever on the Hub: nothing local goes up."""
    retriever = write_config(
        tmp_path / "wiki.yaml", {"type": "bm25", "index": "hf://datasets/org/wiki/bm25"}
    )
    return ["push-space", "--model", "org/agent", "--retriever", str(retriever)]


def test_a_push_without_network_is_one_line_naming_the_space(no_hub, space_argv, capsys):
    repo_id = no_hub.new_repo_id("space")
    assert cli_main([*space_argv, "--repo", repo_id]) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot reach {no_hub.endpoint} to push to space repo '{repo_id}' (ConnectError: "
        "[Errno 111] Connection refused): connect to the network (or fix HF_ENDPOINT) and run "
        "it again"
    ]


@pytest.mark.parametrize(
    ("status", "token_is"), [(401, "is missing or invalid"), (403, "has no write access to it")]
)
def test_a_push_the_hub_refuses_says_why_without_the_token(
    hub, space_argv, capsys, monkeypatch, status, token_is
):
    repo_id = hub.new_repo_id("space")
    token = "hf_" + "Wrong" * 6 + "Toke" if status == 401 else hub.token
    monkeypatch.setenv("HF_TOKEN", token)
    if status == 403:  # an organisation the token's account may not write to
        hub.inject_failure("/api/repos/create", status=403)
    assert cli_main([*space_argv, "--repo", repo_id]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: {hub.endpoint} refused the push to space repo '{repo_id}' (HTTP {status}): the "
        f"token {token_is}; log in with `hf auth login` or set HF_TOKEN with a write token of an "
        "account that may write there"
    ]
    assert token not in err
