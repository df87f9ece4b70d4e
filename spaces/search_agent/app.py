"""Watch a research_r1 search agent work: ask a question, see each thought, each search with the
passages it read, and the final answer, as they happen.

Settings come from the Space variables MODEL_ID, RETRIEVER_CONFIG, TEMPLATE, MAX_TURNS and TOPK,
over the values `research-r1 push-space` wrote to space_config.json. The model, tokenizer and
retriever are loaded once at start-up; each question plays one episode with the same rollout
code the model was trained with (greedy decoding), in a thread the page watches step by step.
When it ends, the steps are redrawn from the episode itself: passages as the model read them
(cut where its observation was cut) and the environment's notices.

Everything the model writes and every passage is shown as text: HTML-escaped, with Markdown
rendering off, so a passage holding `<img onerror=...>` or a link shows as those characters.
"""

from __future__ import annotations

import html
import queue
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from research_r1.errors import RunStopped
from research_r1.generation import Generator, TransformersGenerator
from research_r1.protocol import Template, load_template
from research_r1.retrieval import RetrievalError, Retriever
from research_r1.retrieval.config import load_retriever
from research_r1.rollout import Episode, RolloutConfig, encode_prompt, run_rollout
from research_r1.space import (
    EpisodeStopped,
    LiveTurns,
    SpaceSettings,
    Turn,
    load_settings,
    transcript_turns,
)

HERE = Path(__file__).resolve().parent
MAX_QUESTION_CHARS = 1000
QUEUE_SIZE = 16  # questions waiting; more are turned away with a "busy" message
TIME_LIMIT_S = 300.0  # per question; the episode stops at its next step after that
# A visitor waits for the answer: an unreachable retriever is waited for this long, not the ten
# minutes a training run allows, then the question fails with a message.
RETRIEVER_WAIT_S = 30.0
NO_ANSWER = "The agent gave no answer (it ran out of searches or tokens)."


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
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    template: Template,
    config: RolloutConfig,
    about: str = "",
    time_limit_s: float = TIME_LIMIT_S,
) -> gr.Blocks:
    """The chat UI; `generator` writes the model's turns (any research_r1 `Generator`) and
    `about` says which model, corpus and settings the page runs."""

    def play(question: str, live: LiveTurns, outcome: dict[str, Any]) -> None:
        try:
            [outcome["episode"]] = run_rollout(
                [encode_prompt(template.prompt(question), tokenizer)],
                generator=generator,
                tokenizer=tokenizer,
                retriever=retriever,
                protocol=template.protocol,
                config=config,
                watcher=live,
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
        live, outcome = LiveTurns(template.protocol), {}
        worker = threading.Thread(target=play, args=(question, live, outcome), daemon=True)
        worker.start()
        deadline = time.monotonic() + time_limit_s
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
            yield "", [*history, *(to_message(turn) for turn in steps)]
        yield "", [*history, *replies(outcome)]

    def replies(outcome: dict[str, Any]) -> list[gr.ChatMessage]:
        """The finished episode's steps, or the reason it has none."""
        error = outcome.get("error")
        if isinstance(error, RunStopped | RetrievalError):
            raise gr.Error(f"The search engine did not answer: {error}") from error
        if isinstance(error, EpisodeStopped):
            raise gr.Error("The question was stopped.") from error
        if error is not None:
            raise error
        episode: Episode = outcome["episode"]
        turns = transcript_turns(episode, tokenizer, template.protocol)
        messages = [to_message(turn) for turn in turns]
        if not any(turn.kind == "answer" for turn in turns):
            messages.append(gr.ChatMessage(content=NO_ANSWER))
        return messages

    with gr.Blocks(title="research_r1 search agent") as demo:
        gr.Markdown(
            "# Search agent\nAsk a factual question. The agent reasons, searches a corpus, reads "
            "the passages and answers; each step appears as it happens, open it to read it."
        )
        if about:
            gr.Textbox(about, label="Running", interactive=False, max_lines=3)
        chatbot = gr.Chatbot(label="Agent", height=600, render_markdown=False)
        box = gr.Textbox(
            placeholder="Who wrote the novel that the film Blade Runner is based on?",
            show_label=False,
            max_length=MAX_QUESTION_CHARS,
        )
        box.submit(ask, [box, chatbot], [box, chatbot], api_name="ask")
        gr.ClearButton([box, chatbot])
    return demo


def describe(settings: SpaceSettings) -> str:
    """One line for the page: the model, the retriever and the episode's limits."""
    config = settings.retriever_config
    retriever = (
        config if isinstance(config, str) else ", ".join(f"{k} {v}" for k, v in config.items())
    )
    return (
        f"model {settings.model_id} · retriever {retriever} · template {settings.template} · "
        f"top-{settings.top_k}, at most {settings.max_turns} searches, greedy"
    )


def load_app(settings: SpaceSettings) -> gr.Blocks:
    """Load the model (on a GPU when there is one), tokenizer and retriever, then build the UI."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(settings.model_id)
    model = AutoModelForCausalLM.from_pretrained(settings.model_id, dtype="auto").to(device)
    greedy = GenerationConfig(do_sample=False)
    config = RolloutConfig(
        k=settings.top_k, max_turns=settings.max_turns, max_retriever_wait_s=RETRIEVER_WAIT_S
    )
    return build_app(
        TransformersGenerator(model.eval(), tokenizer, greedy, batch_size=1),
        tokenizer,
        load_retriever(settings.retriever_config),
        load_template(settings.template),
        config,
        about=describe(settings),
    )


if __name__ == "__main__":
    load_app(load_settings(HERE)).queue(max_size=QUEUE_SIZE).launch()
