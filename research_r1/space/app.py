"""The Space's Gradio app, and `research-r1 space`, which runs it on this machine.

Ask a question, watch the agent think, search and answer, step by step. The same app runs as the
Hub Space (`spaces/search_agent/app.py` calls `load_space` with the settings `settings.py` reads)
and here (`research-r1 space`, by default on what `make demo` wrote). Each question is one
episode of `eval`'s `agent` method (`evaluation.play`, as `research-r1 ask` plays it), in a worker
thread the page watches through `episode.LiveTurns`: each thought, each search (pending until its
passages are back), then the answer. When the episode ends, its steps are redrawn from the
episode itself (`episode.transcript_turns`): passages as the model read them (cut where its
observation was cut) and the environment's notices.

Everything the model writes and every passage is shown as text: HTML-escaped, with Markdown
rendering off, so a passage holding `<img onerror=...>` or a link shows as those characters.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from research_r1 import evaluation, outputs
from research_r1.errors import InputError, RunStopped
from research_r1.evaluation import leaderboard
from research_r1.evaluation.arguments import MODEL_HELP
from research_r1.generation import Generator
from research_r1.ports import check_port
from research_r1.retrieval import RetrievalError, Retriever
from research_r1.space.episode import EpisodeStopped, LiveTurns, Turn, transcript_turns
from research_r1.space.settings import SpaceSettings

MAX_QUESTION_CHARS = 1000
QUEUE_SIZE = 16  # questions waiting; more are turned away with a "busy" message
TIME_LIMIT_S = 300.0  # per question; the episode stops at its next step after that
# A visitor waits for the answer: an unreachable retriever is waited for this long, not the ten
# minutes a training run allows, then the question fails with a message.
RETRIEVER_WAIT_S = 30.0
NO_ANSWER = "The agent gave no answer (it ran out of searches or tokens)."
EXAMPLES = 5


def shown(text: str) -> str:
    """`text` as the chat shows it: HTML-escaped (Markdown rendering is off)."""
    return html.escape(text, quote=False)


def to_message(turn: Turn) -> gr.ChatMessage:
    """Thoughts, searches and notices are collapsed steps; the answer is the assistant's reply.
    A search is pending until its passages are back."""
    if turn.kind == "answer":
        return gr.ChatMessage(content=shown(turn.text))
    if turn.kind == "search":
        found = [f"{title}\n{text}" for title, text in turn.passages]
        title = f"Searching: {turn.text}" if turn.pending else f"Search: {turn.text}"
        body = "…" if turn.pending else "\n\n".join(found) or "No passages found."
    else:
        title, body = ("Thinking" if turn.kind == "think" else "Environment"), turn.text
    status = "pending" if turn.pending else "done"
    return gr.ChatMessage(content=shown(body), metadata={"title": shown(title), "status": status})


def build_app(
    plan: evaluation.Plan,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    *,
    examples: Sequence[str] = (),
    results: Sequence[str] = (),
    time_limit_s: float = TIME_LIMIT_S,
) -> gr.Blocks:
    """The chat UI for `plan`'s model and settings, and a leaderboard tab of the `results`
    (eval runs: files, folders or `hf://datasets/ORG/NAME`) beside the papers' numbers;
    `generator` writes the model's turns (any research_r1 `Generator`)."""
    protocol = plan.family.template.protocol

    def play(question: str, live: LiveTurns, outcome: dict[str, Any]) -> None:
        asked = evaluation.Question("space", evaluation.normalise_question(question, plan), [])
        try:
            [outcome["episode"]] = evaluation.play(
                "agent", [asked], plan, generator, tokenizer, retriever, watcher=live
            )
        except Exception as error:  # handed to the page, which shows it or raises it
            outcome["error"] = error
        finally:
            live.updates.put(None)  # the episode is over

    def ask(question: str, history: list) -> Any:
        question = question.strip()
        if not question:
            raise gr.Error("Ask a question first.")
        if len(question) > MAX_QUESTION_CHARS:
            raise gr.Error(f"Questions are limited to {MAX_QUESTION_CHARS} characters.")
        history = [*history, gr.ChatMessage(role="user", content=shown(question))]
        yield "", history
        live, outcome = LiveTurns(protocol), {}
        worker = threading.Thread(target=play, args=(question, live, outcome), daemon=True)
        worker.start()
        deadline, shown_so_far = time.monotonic() + time_limit_s, []
        while True:
            try:
                steps = live.updates.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                live.stop()
                raise gr.Error(
                    f"The agent took longer than {time_limit_s:g} s; try a simpler question."
                ) from None
            if steps is None:
                break
            shown_so_far = [to_message(turn) for turn in steps]
            yield "", [*history, *shown_so_far]
        final = replies(outcome)
        if final != shown_so_far:  # redrawn only where it differs: open steps stay open
            yield "", [*history, *final]

    def replies(outcome: dict[str, Any]) -> list[gr.ChatMessage]:
        """The finished episode's steps, or the reason it has none."""
        error = outcome.get("error")
        if isinstance(error, RunStopped | RetrievalError):
            raise gr.Error(f"The search engine did not answer: {error}") from error
        if isinstance(error, EpisodeStopped):
            raise gr.Error("The question was stopped.") from error
        if error is not None:
            raise error
        turns = transcript_turns(outcome["episode"], tokenizer, protocol)
        messages = [to_message(turn) for turn in turns]
        if not any(turn.kind == "answer" for turn in turns):
            messages.append(gr.ChatMessage(content=NO_ANSWER))
        return messages

    with gr.Blocks(title="research_r1 search agent") as demo:
        with gr.Tab("Ask"):
            gr.Markdown(
                "# Search agent\nAsk a factual question. The agent reasons, searches a corpus, "
                "reads the passages and answers; each step appears as it happens, open it to "
                "read it."
            )
            gr.Textbox(describe(plan), label="Running", interactive=False, max_lines=3)
            chatbot = gr.Chatbot(label="Agent", height=560, render_markdown=False)
            box = gr.Textbox(
                placeholder="Ask a question", show_label=False, max_length=MAX_QUESTION_CHARS
            )
            if examples:
                gr.Examples(list(examples), box, label="Questions it can answer")
            box.submit(on_gpu(ask), [box, chatbot], [box, chatbot], api_name="ask")
            gr.ClearButton([box, chatbot])
        with gr.Tab("Leaderboard"):
            leaderboard_tab(results)
    return demo


def on_gpu(handler: Callable[..., Any]) -> Callable[..., Any]:
    """On a ZeroGPU Space (the `spaces` package is there), `handler` runs under its decorator,
    which lends a GPU for each question, up to the time limit; anywhere else it is unchanged.
    Never run here: this project's machines have neither ZeroGPU nor that package."""
    try:
        from spaces import GPU  # only on Hugging Face Spaces (not this repo's spaces/ folder)
    except ImportError:
        return handler
    return GPU(duration=int(TIME_LIMIT_S))(handler)


def leaderboard_tab(results: Sequence[str]) -> None:
    """The runs of `results` and the papers' reported rows: a sortable table (a rank within
    each setting only), a setting filter and the chart of what is shown."""
    rows = [*(leaderboard.load_runs(results) if results else ()), *leaderboard.REPORTED_ROWS]
    board = leaderboard.sections(rows)
    every = "every setting"

    def view(setting: str) -> tuple[dict[str, list], Any]:
        picked = board if setting == every else {setting: board[setting]}
        records = leaderboard.table(picked)
        headers = [key for key in records[0] if any(r[key] is not None for r in records)]
        frame = {"headers": headers, "data": [[r[key] for key in headers] for r in records]}
        return frame, leaderboard.chart(picked)

    gr.Markdown(
        "Exact match per dataset. Rows are ranked only within their setting (corpus, retriever, "
        "top-k, metric); `reported` rows are the papers' own numbers, `measured` rows runs of "
        "`research-r1 eval`."
    )
    setting = gr.Dropdown([every, *board], value=every, label="Setting")
    frame, figure = view(every)
    shown = gr.Dataframe(frame, interactive=False, label="Leaderboard")
    plot = gr.Plot(figure, label="Average per row")
    setting.change(view, setting, [shown, plot], api_name="leaderboard")


def describe(plan: evaluation.Plan) -> str:
    """One line for the page: the model, its template, the retriever and the episode's limits."""
    rollout = plan.rollout
    searches = (
        "no search limit"
        if rollout.max_turns is None
        else (f"at most {rollout.max_turns} searches")
    )
    return (
        f"model {plan.model} · template {plan.family.template.name} · {plan.retriever_label}, "
        f"top-{rollout.k} · {searches}, {rollout.max_new_tokens} tokens per turn, greedy"
    )


def load_app(
    options: evaluation.PlayArguments,
    *,
    examples: Sequence[str] = (),
    results: Sequence[str] = (),
) -> gr.Blocks:
    """The app for `options.model` as `eval` would play it (its family's or card's template and
    settings, then `options`), loaded on a GPU when there is one."""
    plan = evaluation.agent_plan(options)
    waiting = {"max_retriever_wait_s": RETRIEVER_WAIT_S}
    plan = dataclasses.replace(plan, rollout=plan.rollout.model_copy(update=waiting))
    tokenizer = evaluation.load_tokenizer(plan)
    searcher = evaluation.open_retriever(plan)
    generator = evaluation.load_generator(plan, tokenizer)
    return build_app(plan, generator, tokenizer, searcher, examples=examples, results=results)


def load_space(settings: SpaceSettings) -> gr.Blocks:
    """The Hub Space's app from its settings."""
    options = evaluation.PlayArguments(
        model=settings.model_id,
        retriever=settings.retriever_config,
        template=settings.template,
        top_k=settings.top_k,
        max_turns=settings.max_turns,
    )
    return load_app(
        options,
        examples=read_examples(Path(settings.examples)) if settings.examples else [],
        results=[settings.results] if settings.results else [],
    )


def read_examples(path: Path, count: int = EXAMPLES) -> list[str]:
    """The first `count` questions of a QA file (JSON lines with a "question")."""
    with path.open() as lines:
        return [json.loads(line)["question"] for line in itertools.islice(lines, count)]


# ---------------------------------------------------------------------------------------------
# research-r1 space


@dataclass(kw_only=True)
class SpaceArguments(evaluation.PlayArguments):
    """Run the demo app on this machine (127.0.0.1): by default the demo's trained model on its
    synthetic corpus, as `make demo` wrote them to outputs/demo (its retriever too, unless
    --retriever is given)."""

    model: str | None = field(
        default=None,
        metadata={"help": f"{MODEL_HELP} (default: the demo's, outputs/demo/grpo)"},
    )
    examples: Path | None = field(
        default=None,
        metadata={
            "help": "a QA file whose first questions are shown (default: the demo's held-out "
            "questions with the demo's model, else none)"
        },
    )
    results: list[str] = field(
        default_factory=list,
        metadata={
            "help": "eval runs for the leaderboard tab: results files, folders or "
            "hf://datasets/ORG/NAME"
        },
    )
    port: int = field(default=7860, metadata={"help": "port on 127.0.0.1"})


def run_space(args: SpaceArguments) -> int:
    demo = outputs.demo_dir()  # what `make demo` writes: the default of `research-r1 space`
    args = dataclasses.replace(args, model=args.model or str(demo / "grpo"))
    demo_model = args.model == str(demo / "grpo")
    if demo_model and not Path(args.model).is_dir():
        raise InputError(f"{args.model} does not exist: run `make demo` first, or pass --model")
    check_port("127.0.0.1", args.port)  # before the model loads
    if args.retriever is None and demo_model:
        args = dataclasses.replace(args, retriever=str(demo / "retriever.yaml"))
    questions = args.examples or (demo / "questions" / "test.jsonl" if demo_model else None)
    examples = read_examples(questions) if questions else []
    app = load_app(args, examples=examples, results=args.results)
    app.queue(max_size=QUEUE_SIZE).launch(server_name="127.0.0.1", server_port=args.port)
    return 0
