"""`research-r1 ask`: on a tiny local world with a scripted policy, the exact lines it prints
(thoughts, queries, the titles found, the answer, the footer), that it plays what `eval` scores,
bad input named before anything loads, and the real tiny model end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from rich.console import Console
from toy import Scripted, write_bm25
from transformers import AutoTokenizer

from research_r1 import evaluation
from research_r1.cli import main as cli_main
from research_r1.cli import parse
from research_r1.evaluation.ask import ask
from research_r1.protocol import SEARCH_R1, TEMPLATES
from research_r1.tiny import EOS, build_tiny_model

CORPUS = [
    '"Hamlet"\nHamlet is a tragedy written by Shakespeare.',
    '"France"\nThe capital of France is Paris.',
    '"Everest"\nThe tallest mountain is Everest.',
]
HAMLET = [
    "<think> I need to search </think><search> hamlet author </search>",
    "<think> found it </think><answer> Shakespeare </answer>",
]
# What the scripted policy writes for each question (as the prompt has it), turn by turn.
SCRIPTS = {
    "who wrote hamlet?": HAMLET,
    "capital of france?": ["<think> I know it </think><answer> Paris </answer>"],
    "tallest mountain?": ["<think> no idea </think>" + EOS],
}
OBSERVATION_HEAD = (
    "\n\n<information>Doc 1(Title: Hamlet) Hamlet is a tragedy written by Shakespeare."
)
OBSERVATION_TAIL = "</information>\n\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    """A QA file, a BM25 corpus and its config, and a tiny model with its tokenizer."""
    root = tmp_path_factory.mktemp("ask")
    qa = root / "toy.jsonl"
    qa.write_text(
        json.dumps({"id": "q1", "question": "who wrote hamlet", "golden_answers": ["x"]}) + "\n"
    )
    retriever = write_bm25(root, CORPUS)
    texts = [TEMPLATES["search_r1"].user, *CORPUS, *(t for ts in SCRIPTS.values() for t in ts)]
    model = build_tiny_model(root / "model", texts, SEARCH_R1.tags, hidden_size=64, seed=0)
    return SimpleNamespace(qa=qa, retriever=retriever, model=model)


@pytest.fixture
def scripted(world, monkeypatch) -> SimpleNamespace:
    """The scripted policy in place of the model's generation; the plans it is loaded for."""
    policy = SimpleNamespace(
        plans=[], generator=Scripted(AutoTokenizer.from_pretrained(world.model), SCRIPTS)
    )

    def load_generator(plan, tokenizer):
        policy.plans.append(plan)
        return policy.generator

    monkeypatch.setattr(evaluation, "load_generator", load_generator)
    return policy


def ask_args(world, question: str, *extra: str) -> list[str]:
    return [
        *("ask", question, "--model", str(world.model), "--template", "search_r1"),
        *("--retriever", str(world.retriever)),
        *extra,
    ]


def asked(argv: list[str]) -> tuple[list[str], dict]:
    """What `ask` prints (lines, trailing spaces cut) and its trace line, as the CLI parses
    `argv`."""
    console = Console(record=True, width=200)  # wide enough for a temporary path
    line = ask(parse(argv)[1], console)
    return [row.rstrip() for row in console.export_text().splitlines()], line


def test_a_search_shows_the_thought_query_titles_answer_and_footer(world, scripted):
    lines, _ = asked(ask_args(world, "who wrote hamlet"))
    tokenizer = scripted.generator.tokenizer
    tokens = sum(
        len(tokenizer.encode(text, add_special_tokens=False))
        for text in (*HAMLET, OBSERVATION_HEAD, OBSERVATION_TAIL)
    )
    assert lines == [
        "─" * 90 + " who wrote hamlet? " + "─" * 91,
        f"{world.model} · search_r1 · search_r1 · {world.model.parent.name}/corpus.jsonl, BM25 "
        "· top-3",
        "think   I need to search",
        "search  hamlet author",
        "    1.  Hamlet",
        "think   found it",
        "╭─ answer ────╮",
        "│ Shakespeare │",
        "╰─────────────╯",
        f"1 search · {tokens + 1} tokens · answered",  # + the EOS the rollout appends
    ]
    [plan] = scripted.plans
    assert (plan.batch_size, plan.methods) == (1, ("agent",))


def test_an_answer_without_search_prints_no_search(world, scripted):
    lines, line = asked(ask_args(world, "capital of france"))
    assert lines[2:] == [
        "think   I know it",
        "╭─ answer ─╮",
        "│ Paris    │",
        "╰──────────╯",
        f"0 searches · {line['tokens']} tokens · answered",
    ]
    assert line["searches"] == 0 and line["queries"] == []


def test_an_episode_without_answer_says_so(world, scripted):
    lines, line = asked(ask_args(world, "tallest mountain"))
    assert lines[2:] == [
        "think   no idea",
        "╭─ answer ──╮",
        "│ no answer │",
        "╰───────────╯",
        f"0 searches · {line['tokens']} tokens · no_answer",
    ]


def test_ask_plays_what_eval_scores(world, scripted, tmp_path):
    _, line = asked(ask_args(world, "who wrote hamlet"))
    out = tmp_path / "eval"
    argv = ["eval", str(world.model), "--template", "search_r1", "--datasets", f"toy={world.qa}"]
    assert cli_main([*argv, "--retriever", str(world.retriever), "--out", str(out)]) == 0
    scored = json.loads((out / "agent" / "traces" / "toy.jsonl").read_text())
    keys = ("question", "prediction", "transcript", "queries", "retrieved_ids", "tokens", "finish")
    assert {key: line[key] for key in keys} == {key: scored[key] for key in keys}


def test_bad_input_is_named_before_anything_loads(world, scripted, hub, tmp_path, capsys):
    """(`hub`: the model card of an unknown Hub id is looked for on the loopback Hub.)"""
    missing = tmp_path / "missing-model"
    for argv, message in [
        (ask_args(world, "  "), "error: the question is empty"),
        (["ask", "who?", "--model", ""], "error: --model is empty"),
        (["ask", "who?", "--model", "someone/unknown-model"], "no known family"),
        (ask_args(world, "who?", "--template", "nope.yaml"), "template 'nope.yaml' is neither"),
        (["ask", "who?", "--model", str(missing), "--template", "search_r1"], f"model {missing}"),
    ]:
        assert cli_main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert scripted.plans == []


@pytest.mark.slow
def test_the_real_tiny_model_completes_and_prints_the_footer(world, capsys):
    assert cli_main(ask_args(world, "who wrote hamlet", "--max-turns", "1")) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer.split(" · ")[0] in ("0 searches", "1 search")
    assert footer.split(" · ")[2] in ("answered", "truncated", "no_answer")
