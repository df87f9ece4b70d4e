"""`research-r1 ask "question" --model M`: one episode, watched live in the terminal.

    research-r1 ask "who wrote hamlet?" \\
        --model PeterJinGo/SearchR1-nq_hotpotqa_train-qwen2.5-3b-em-ppo
    research-r1 ask "Where was Vildrorul born?" --model outputs/demo/grpo

Scores say how often an agent is right; reading one episode says how it got there. `ask` shows
each thought, each search with the titles of the passages it brought back, and the answer, as
they happen. It runs exactly what `eval`'s `agent` method scores (the same plan, model family
resolution, prompt, greedy decoding and `play`), so what it shows is what `eval` measures: a
`Watcher` prints each turn and each search's titles as the rollout plays them. A model whose card
names its retriever (the demo's) searches with it unless `--retriever` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.rule import Rule
from rich.text import Text

from research_r1 import evaluation
from research_r1.errors import InputError
from research_r1.protocol import Protocol, split_turn
from research_r1.retrieval import Passage

_LABEL_WIDTH = 8  # "think", "search" and the title numbers line up after it


@dataclass(kw_only=True)
class AskArguments(evaluation.PlayArguments):
    """Ask one question and watch the agent think, search and answer, as `eval` runs it (the
    agent method, greedy)."""

    question: str = field(metadata={"positional": True, "help": "the question to ask"})


def run_ask(args: AskArguments) -> int:
    ask(args, Console())
    return 0


def ask(args: AskArguments, console: Console) -> dict[str, Any]:
    """Play `args.question` as `eval` would, printing it to `console`; its `eval` trace line."""
    if not args.question.strip():
        raise InputError("the question is empty")
    if not args.model.strip():
        raise InputError("--model is empty")
    plan = evaluation.agent_plan(args)
    question = evaluation.Question("ask", evaluation.normalise_question(args.question, plan), [])
    protocol = plan.family.template.protocol
    tokenizer = evaluation.load_tokenizer(plan)
    retriever = evaluation.open_retriever(plan)
    evaluation.probe(retriever, plan, question.question)
    generator = evaluation.load_generator(plan, tokenizer)

    console.print(Rule(Text(question.question, style="bold")))
    console.print(Text(f"{plan.model} · {plan.family.template.name} · {plan.setting}"))
    [episode] = evaluation.play(
        "agent",
        [question],
        plan,
        generator,
        tokenizer,
        retriever,
        watcher=Show(protocol, console),
    )
    line = evaluation.trace(question, episode, tokenizer, plan, protocol)
    answer = Text(line["prediction"]) if line["prediction"] is not None else Text("no answer")
    console.print(Panel(answer, title="answer", title_align="left", expand=False))
    searches = f"{line['searches']} search" + ("" if line["searches"] == 1 else "es")
    console.print(Text(f"{searches} · {line['tokens']} tokens · {line['finish']}", style="dim"))
    return line


@dataclass(frozen=True)
class Show:
    """A rollout `Watcher` that prints each turn's thought and search query, and the titles of
    the passages each search brought back, as they happen."""

    protocol: Protocol
    console: Console

    def turn(self, row: int, text: str) -> None:
        thought, action = split_turn(text, self.protocol)
        if thought:
            self.console.print(_labelled("think", thought, "italic"))
        if action.kind == "search":
            self.console.print(_labelled("search", action.content, "bold cyan"))

    def searched(self, row: int, query: str, passages: Sequence[Passage]) -> None:
        for rank, passage in enumerate(passages, 1):
            self.console.print(_labelled(f"{rank:>5}.", passage.title, "green"))
        if not passages:
            self.console.print(_labelled("", "nothing found", "dim"))


def _labelled(label: str, text: str, style: str) -> Text:
    """One line: a label padded to `_LABEL_WIDTH`, then `text` (never read as markup)."""
    return Text.assemble((label.ljust(_LABEL_WIDTH), "dim"), (text, style))
