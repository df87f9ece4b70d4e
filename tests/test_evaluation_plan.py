"""What a run plays (research_r1.evaluation.plan), as `research-r1 eval --dry-run` prints it:
each published family's upstream setting with its sources, the setting's name, our checkpoints'
settings read back from their model card, dataset aliases, and one output folder per model and
setting."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT
from huggingface_hub import HfApi, ModelCard

from research_r1 import evaluation
from research_r1.cli import main as cli_main
from research_r1.evaluation import EvalArguments
from research_r1.evaluation.families import families, get_family
from research_r1.protocol import FINAL_TURN_NOTICE
from research_r1.training.publish import model_card

# owner/repo@commit:path:line[-line], or a PyPI release's file (pypi/package@version:path:line)
CITATION = re.compile(
    r"^([\w.-]+/[\w.-]+@[0-9a-f]{40}|pypi/[\w.-]+@[\w.]+):"  # a commit, or a PyPI release
    r"(\S+:\d+(-\d+)?|\S+\.(jpg|png|pdf))$"  # a file's lines, or a figure
)


@pytest.mark.parametrize(
    ("family", "model"),
    [(f.name, example) for f in families() for pattern in f.models for example in pattern.examples],
)
def test_dry_run_shows_each_familys_upstream_setting_with_sources(family, model, capsys):
    """Every published id resolves to its family without loading anything, and the plan shows
    every audited value with a full citation, and what we run where we knowingly differ."""
    assert cli_main(["eval", model, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    audited = get_family(family)
    assert config["family"] == family and config["methods"] == ["agent"]
    assert config["upstream"]["code"] == audited.upstream
    assert config["template"]["user"] == audited.template.user
    assert config["rollout"]["k"] == audited.rollout["k"]
    audit = config["upstream"]["audit"]
    assert audit and all(entry["source"] for entry in audit.values())
    for name, entry in audit.items():
        assert all(CITATION.match(source) for source in entry["source"]), (name, entry)
        assert ("ours" in entry) == ("why" in entry), name
        assert "why" not in entry or len(entry["why"]) > 20, name  # a deviation is argued
    suite = config["suite"]
    assert config["setting"].startswith(f"{suite} · ")
    assert config["metrics"].keys() >= {"em", "f1", audited.scoring.headline}


def test_the_search_r1_family_plays_its_papers_setting(capsys):
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-3b-em-ppo"
    assert cli_main(["eval", model, "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["datasets"] == {
        "nq": "test",
        "triviaqa": "test",
        "popqa": "test",
        "hotpotqa": "dev",
        "2wikimultihopqa": "dev",
        "musique": "dev",
        "bamboogle": "test",
    }
    rollout = config["rollout"]
    assert (rollout["k"], rollout["max_turns"], rollout["last_turn"]) == (3, 4, "answer")
    assert (rollout["max_new_tokens"], rollout["max_observation_tokens"]) == (500, 500)
    assert (rollout["max_context"], rollout["context"], rollout["max_completion_tokens"]) == (
        4096,
        "keep_last",
        None,
    )
    assert config["template"]["question_mark"] is True
    assert config["protocol"]["passage_format"] == "Doc {i}(Title: {title_line}) {text}"
    assert config["scoring"]["min_matches"] == 2 and config["scoring"]["text"] == "prompt+response"
    assert config["setting"] == "search_r1 · wiki-18, e5-base-v2 · top-3"
    assert config["retriever"]["encoder"] == "intfloat/e5-base-v2"
    assert config["decoding"] == {
        "mode": "greedy",
        "sampling": {},
        "backend": "transformers",
        "batch_size": 16,
    }
    decoding = config["upstream"]["audit"]["generation.decoding"]
    assert decoding["upstream"] == {"temperature": 1.0, "top_p": 0.95} and decoding["ours"] == {}
    assert cli_main(["eval", model, "--dry-run", "--decoding", "upstream"]) == 0
    sampled = json.loads(capsys.readouterr().out)["decoding"]
    assert sampled["sampling"] == {"temperature": 1.0, "top_p": 0.95}


def test_the_setting_names_the_retriever_only_when_it_is_not_the_suites(tmp_path, capsys):
    """The suite's own index given as a config is the suite's setting (where it runs does not
    count); any other index, or a corpus of another folder, is a setting of its own."""
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"
    flat = yaml.safe_load((ROOT / "recipes/retrievers/e5_wiki18_flat.yaml").read_text())
    configs = {
        "same.yaml": flat | {"device": "cuda:1", "batch_size": 8, "fp16": False},
        "hnsw.yaml": flat | {"index": "hf://datasets/PeterJinGo/wiki-18-e5-index-HNSW64"},
        "a.yaml": {"type": "bm25", "index": "a/bm25", "corpus": "a/corpus.jsonl"},
        "b.yaml": {"type": "bm25", "index": "b/bm25", "corpus": "b/corpus.jsonl"},
    }
    settings = []
    for name, config in configs.items():
        (tmp_path / name).write_text(yaml.safe_dump(config))
        assert cli_main(["eval", model, "--retriever", str(tmp_path / name), "--dry-run"]) == 0
        settings.append(json.loads(capsys.readouterr().out)["setting"])
    assert settings == [
        "search_r1 · wiki-18, e5-base-v2 · top-3",
        "search_r1 · wiki-18-corpus/wiki-18.jsonl.gz, e5-base-v2 (wiki-18-e5-index-HNSW64) · top-3",
        "search_r1 · a/corpus.jsonl, BM25 · top-3",
        "search_r1 · b/corpus.jsonl, BM25 · top-3",
    ]


def write_card(folder: Path, settings: dict[str, Any]) -> ModelCard:
    """Our training's model card in `folder`, with `settings` as its research_r1 section."""
    card = model_card(
        model_name=folder.name,
        base_model="Qwen/Qwen2.5-3B",
        dataset="data",
        template="demo",
        observation_tag="<information>",
        rewards=["search_r1_em"],
        retriever="r.yaml",
        recipe={},
        evaluations=[],
        peft=False,
        settings=settings,
    )
    card.save(folder / "README.md")
    return card


def test_our_checkpoints_are_read_back_from_their_model_card(toy_world, hub, tmp_path, capsys):
    """Training writes the template and budgets into the card; eval reads them back, from a
    folder or from the Hub."""
    model = tmp_path / "ours"
    model.mkdir()
    card = write_card(
        model,
        {
            "template": {
                "name": "demo",
                "protocol": "search_r1",
                "user": "Q: {question}\n",
                "chat": False,
            },
            "k": 2,
            "max_turns": 2,
            "max_new_tokens": 24,
            "max_observation_tokens": 96,
            "max_completion_tokens": 256,
        },
    )
    repo = hub.new_repo_id("ours")
    HfApi().create_repo(repo, token=hub.token)
    card.push_to_hub(repo, token=hub.token)
    for where in (str(model), repo):
        assert cli_main(["eval", where, "--datasets", f"toy={toy_world.qa}", "--dry-run"]) == 0
        config = json.loads(capsys.readouterr().out)
        template, rollout = config["template"], config["rollout"]
        assert (config["family"], template["name"], rollout["k"]) == ("research_r1", "demo", 2)
    assert (template["chat"], rollout["max_turns"], rollout["max_new_tokens"]) == (False, 2, 24)
    assert (rollout["max_completion_tokens"], rollout["max_context"]) == (256, None)
    assert rollout["final_turn_notice"] == FINAL_TURN_NOTICE and "upstream" not in config
    assert config["datasets"] == {"toy": "test"}


def test_a_card_that_names_its_own_setting_is_its_default(toy_world, tmp_path, monkeypatch):
    """The demo's card names its retriever and held-out questions (paths relative to the model
    folder): with no flag, eval plays those; `--datasets`, `--retriever` and `--suite` still
    win, and `ask`'s plan searches with the card's retriever."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(toy_world.model, tmp_path / "run" / "grpo")
    shutil.copy(toy_world.qa, tmp_path / "run" / "test.jsonl")
    shutil.copy(toy_world.retriever, tmp_path / "run" / "retriever.yaml")
    template = {"name": "demo", "protocol": "search_r1", "user": "Q: {question}\n", "chat": False}
    settings = {
        "template": template,
        "k": 2,
        "setting": "demo",
        "retriever": "../retriever.yaml",
        "questions": {"demo": "../test.jsonl"},
    }
    write_card(tmp_path / "run" / "grpo", settings)
    model = "run/grpo"

    plan = evaluation.make_plan(EvalArguments(model=model, dry_run=True))
    assert plan.datasets == {"demo": "demo=run/test.jsonl"} and plan.splits == {"demo": "test"}
    assert plan.retriever == "run/retriever.yaml" and plan.suite.name == "demo"
    assert plan.setting.startswith("demo · ") and plan.setting.endswith("BM25 · top-2")
    assert [q.id for q in evaluation.load_questions(plan)["demo"]]

    chosen = evaluation.make_plan(
        EvalArguments(
            model=model, datasets=f"toy={toy_world.qa}", retriever=str(toy_world.retriever)
        )
    )
    assert chosen.datasets == {"toy": f"toy={toy_world.qa}"}
    assert chosen.retriever == str(toy_world.retriever)
    suite = evaluation.make_plan(EvalArguments(model=model, suite="research"))
    assert suite.suite.name == "research" and "demo" not in suite.datasets
    played = evaluation.agent_plan(evaluation.PlayArguments(model=model))
    assert played.retriever == "run/retriever.yaml"


def test_the_default_folder_is_one_per_model_and_setting(toy_world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    finals = []
    for run in ("a", "b"):
        final = tmp_path / "runs" / run / "final"
        shutil.copytree(toy_world.model, final)
        finals.append(final)
    (finals[1] / "config.json").write_text((finals[1] / "config.json").read_text() + "\n")

    def out(model: Path | str, **options) -> Path:
        args = EvalArguments(
            model=str(model), template="search_r1", datasets=f"toy={toy_world.qa}", **options
        )
        return evaluation.make_plan(args).output_dir

    a, b = out(finals[0]), out(finals[1])
    assert a.parent == b.parent == Path("outputs", "eval") and a != b
    assert a.name.startswith("a_final-") and b.name.startswith("b_final-")
    assert out(finals[0], top_k=1) != a
    assert out(finals[0], batch_size=64, limit=2) == a  # no result changes
    hub_id = out("PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo@v1")
    assert hub_id.name.startswith("PeterJinGo__SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo@v1-")


def test_dataset_aliases_get_the_suites_split(capsys):
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"
    assert cli_main(["eval", model, "--datasets", "2wiki,hotpot,nq", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["datasets"] == {"2wiki": "dev", "hotpot": "dev", "nq": "test"}


def test_a_turn_limit_of_zero_is_a_setting_not_a_default(capsys):
    model = "PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-7b-em-ppo"
    assert cli_main(["eval", model, "--max-turns", "0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["rollout"]["max_turns"] == 0
