"""Playing a method's questions (research_r1.evaluation.run): which errors are a question's own,
and a retriever outage waited out or, past the wait, stopping the run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from research_r1 import evaluation, rollout
from research_r1.errors import RunStopped
from research_r1.evaluation import EvalArguments
from research_r1.evaluation import load as loading
from research_r1.evaluation.plan import method_template
from research_r1.evaluation.run import per_question, play_robustly
from research_r1.retrieval import Passage, RetrieverUnavailable


def test_a_prompt_longer_than_the_models_context_is_a_failure_of_its_question():
    """vLLM refuses such a prompt with a `VLLMValidationError` (vLLM 0.32's input processor's
    type and message; a class of that name stands for it, as vLLM is not installed here). Its
    other validation errors (a request we built wrong) are not a question's."""

    class VLLMValidationError(Exception):
        pass

    too_long = VLLMValidationError(
        "The decoder prompt (length 5000) is longer than the maximum model length of 4096. "
        "Make sure that `max_model_len` is no smaller than the number of text tokens."
    )
    assert per_question(too_long)
    assert not per_question(VLLMValidationError("The decoder prompt cannot be empty"))
    assert not per_question(ValueError(str(too_long)))


class Outage:
    """The BM25 retriever of the toy world, unreachable for its first `failures` searches (for
    every one when None)."""

    def __init__(self, inner, failures: int | None = None) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise RetrieverUnavailable("retrieval at http://127.0.0.1:9/retrieve failed: refused")
        return self.inner.search(queries, k)


def batch_of_the_world(toy_world, method: str, max_retriever_wait_s: float = 600.0):
    """The plan, tokenizer, questions and protocol `eval` plays the toy world's set with, for
    playing one batch by hand."""
    args = EvalArguments(
        model=str(toy_world.model),
        template="search_r1",
        datasets=f"toy={toy_world.qa}",
        retriever=str(toy_world.retriever),
        method=method,
    )
    plan = evaluation.make_plan(args)
    waiting = {"max_retriever_wait_s": max_retriever_wait_s}
    plan = dataclasses.replace(plan, rollout=plan.rollout.model_copy(update=waiting))
    [questions] = loading.load_questions(plan).values()
    protocol = method_template(method, plan.family.template).protocol
    return plan, loading.load_tokenizer(plan), questions, protocol


@pytest.mark.parametrize("method", ["agent", "rag"])
def test_a_retriever_that_stays_unreachable_stops_the_run(method, toy_world, scripted, monkeypatch):
    """Waited for (here up to 0.1 s), then the run stops with the outage as the cause: no
    question is recorded as failed, and the traces so far resume it."""
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    plan, tokenizer, questions, protocol = batch_of_the_world(toy_world, method, 0.1)
    retriever = Outage(loading.load_retriever(plan.retriever))
    with pytest.raises(RunStopped, match="stayed unreachable") as stopped:
        play_robustly(method, questions, plan, scripted.generator, tokenizer, retriever, protocol)
    assert isinstance(stopped.value.__cause__, RetrieverUnavailable)
    assert retriever.calls > 1  # waited for


def test_rag_waits_out_a_short_outage(toy_world, scripted, monkeypatch):
    """The baseline's one search per question waits for the retriever as the agent's do."""
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    plan, tokenizer, questions, protocol = batch_of_the_world(toy_world, "rag")
    retriever = Outage(loading.load_retriever(plan.retriever), failures=2)
    lines = play_robustly(
        "rag", questions, plan, scripted.generator, tokenizer, retriever, protocol
    )
    assert retriever.calls == 3
    assert [line["error"] for line in lines] == [None, None, None]
    assert "Doc 1(Title: Hamlet) Hamlet is a tragedy" in scripted.generator.contexts[0]
