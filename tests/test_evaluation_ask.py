"""`research-r1 ask` (research_r1.evaluation.ask): on the toy world with a scripted policy, the
exact lines it prints (thoughts, queries, the titles found, the answer, the footer), that it
plays what `eval` scores, bad input named before anything loads, and the real tiny model end to
end."""

from __future__ import annotations

import json

import pytest
from helpers import TOY_SCRIPTS
from rich.console import Console

from research_r1.cli import main as cli_main
from research_r1.cli import parse
from research_r1.evaluation.ask import ask

HAMLET = TOY_SCRIPTS["who wrote hamlet?"]
OBSERVATION_HEAD = (
    "\n\n<information>Doc 1(Title: Hamlet) Hamlet is a tragedy written by Shakespeare."
)
OBSERVATION_TAIL = "</information>\n\n"


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


def test_a_search_shows_the_thought_query_titles_answer_and_footer(toy_world, scripted):
    lines, _ = asked(ask_args(toy_world, "who wrote hamlet"))
    tokenizer = scripted.generator.tokenizer
    tokens = sum(
        len(tokenizer.encode(text, add_special_tokens=False))
        for text in (*HAMLET, OBSERVATION_HEAD, OBSERVATION_TAIL)
    )
    assert lines == [
        "─" * 90 + " who wrote hamlet? " + "─" * 91,
        f"{toy_world.model} · search_r1 · search_r1 · {toy_world.root.name}/corpus.jsonl, "
        "BM25 · top-3",
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


def test_an_answer_without_search_prints_no_search(toy_world, scripted):
    lines, line = asked(ask_args(toy_world, "capital of france"))
    assert lines[2:] == [
        "think   I know it",
        "╭─ answer ─╮",
        "│ Lyon     │",
        "╰──────────╯",
        f"0 searches · {line['tokens']} tokens · answered",
    ]
    assert line["searches"] == 0 and line["queries"] == []


def test_an_episode_without_answer_says_so(toy_world, scripted):
    lines, line = asked(ask_args(toy_world, "tallest mountain"))
    assert lines[2:] == [
        "think   no idea",
        "╭─ answer ──╮",
        "│ no answer │",
        "╰───────────╯",
        f"0 searches · {line['tokens']} tokens · no_answer",
    ]


def test_ask_plays_what_eval_scores(toy_world, scripted, tmp_path):
    _, line = asked(ask_args(toy_world, "who wrote hamlet"))
    out = tmp_path / "eval"
    argv = [
        "eval",
        str(toy_world.model),
        "--template",
        "search_r1",
        "--datasets",
        f"toy={toy_world.qa}",
    ]
    assert cli_main([*argv, "--retriever", str(toy_world.retriever), "--output_dir", str(out)]) == 0
    scored = json.loads((out / "agent" / "traces" / "toy.jsonl").read_text().splitlines()[0])
    keys = ("question", "prediction", "transcript", "queries", "retrieved_ids", "tokens", "finish")
    assert {key: line[key] for key in keys} == {key: scored[key] for key in keys}


def test_bad_input_is_named_before_anything_loads(toy_world, scripted, hub, tmp_path, capsys):
    """(`hub`: the model card of an unknown Hub id is looked for on the loopback Hub.)"""
    missing = tmp_path / "missing-model"
    for argv, message in [
        (ask_args(toy_world, "  "), "error: the question is empty"),
        (["ask", "who?", "--model", ""], "error: --model is empty"),
        (["ask", "who?", "--model", "someone/unknown-model"], "no known family"),
        (ask_args(toy_world, "who?", "--template", "nope.yaml"), "template 'nope.yaml' is neither"),
        (["ask", "who?", "--model", str(missing), "--template", "search_r1"], f"model {missing}"),
    ]:
        assert cli_main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert scripted.plans == []


@pytest.mark.slow
def test_the_real_tiny_model_completes_and_prints_the_footer(toy_world, capsys):
    assert cli_main(ask_args(toy_world, "who wrote hamlet", "--max-turns", "1")) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer.split(" · ")[0] in ("0 searches", "1 search")
    assert footer.split(" · ")[2] in ("answered", "truncated", "no_answer")


def test_a_hub_model_without_network_is_one_line_naming_it(toy_world, no_hub, capsys):
    model = no_hub.new_repo_id("never-fetched")
    argv = ["ask", "who?", "--model", f"{model}@v2", "--template", "search_r1"]
    assert cli_main([*argv, "--retriever", str(toy_world.retriever)]) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot reach {no_hub.endpoint} to fetch model repo '{model}' at revision 'v2' "
        "(ConnectError: [Errno 111] Connection refused): connect to the network (or fix "
        "HF_ENDPOINT); if it is in the Hub cache (`research-r1 download` puts a model there), "
        "set HF_HUB_OFFLINE=1 to use it"
    ]
