"""Watch a research_r1 search agent work: ask a question, see each thought, each search with the
passages it read, and the final answer.

Settings come from the Space variables MODEL_ID, RETRIEVER_CONFIG, TEMPLATE, MAX_TURNS and TOPK,
over the values `research-r1 push-space` wrote to space_config.json. The model, tokenizer and
retriever are loaded once at start-up; each question plays one episode with the same rollout
code the model was trained with (greedy decoding), one question at a time.
"""

from __future__ import annotations

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
from research_r1.rollout import RolloutConfig, run_episodes
from research_r1.space import SpaceSettings, Turn, load_settings, transcript_turns

HERE = Path(__file__).resolve().parent
MAX_QUESTION_CHARS = 1000
# A visitor waits for the answer: an unreachable retriever is waited for this long, not the ten
# minutes a training run allows, then the question fails with a message.
RETRIEVER_WAIT_S = 30.0
NO_ANSWER = "The agent gave no answer (it ran out of searches or tokens)."


def to_message(turn: Turn) -> gr.ChatMessage:
    """Thoughts, searches and notices are collapsed; the answer is the assistant's reply."""
    if turn.kind == "answer":
        return gr.ChatMessage(content=turn.text)
    if turn.kind == "search":
        found = [f"**{title}**: {text}" for title, text in turn.passages]
        title, body = f"Search: {turn.text}", "\n\n".join(found) or "No passages found."
    else:
        title, body = ("Thinking" if turn.kind == "think" else "Environment"), turn.text
    return gr.ChatMessage(content=body, metadata={"title": title, "status": "done"})


def build_app(
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    template: Template,
    config: RolloutConfig,
) -> gr.Blocks:
    """The chat UI; `generator` writes the model's turns (any research_r1 `Generator`)."""

    def ask(question: str, history: list) -> Any:
        question = question.strip()
        if not question:
            raise gr.Error("Ask a question first.")
        if len(question) > MAX_QUESTION_CHARS:
            raise gr.Error(f"Questions are limited to {MAX_QUESTION_CHARS} characters.")
        history = [*history, gr.ChatMessage(role="user", content=question)]
        working = {"title": "Searching and reasoning", "status": "pending"}
        yield "", [*history, gr.ChatMessage(content="Playing the episode…", metadata=working)]
        try:
            [episode] = run_episodes(
                generator,
                tokenizer,
                retriever,
                [template.prompt(question)],
                protocol=template.protocol,
                config=config,
                batch_size=1,
                show_progress=False,
            )
        except (RunStopped, RetrievalError) as error:
            raise gr.Error(f"The search engine did not answer: {error}") from error
        turns = transcript_turns(episode, tokenizer, template.protocol)
        replies = [to_message(turn) for turn in turns]
        if not any(turn.kind == "answer" for turn in turns):
            replies.append(gr.ChatMessage(content=NO_ANSWER))
        yield "", [*history, *replies]

    with gr.Blocks(title="research_r1 search agent") as demo:
        gr.Markdown(
            "# Search agent\nAsk a factual question. The agent reasons, searches a corpus, reads "
            "the passages and answers; open each step to see it."
        )
        chatbot = gr.Chatbot(label="Agent", height=600)
        box = gr.Textbox(
            placeholder="Who wrote the novel that the film Blade Runner is based on?",
            show_label=False,
            max_length=MAX_QUESTION_CHARS,
        )
        box.submit(ask, [box, chatbot], [box, chatbot], api_name="ask")
        gr.ClearButton([box, chatbot])
    return demo


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
    )


if __name__ == "__main__":
    load_app(load_settings(HERE)).queue(max_size=16).launch()
