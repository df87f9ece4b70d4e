"""The search rollout (research_r1.rollout): exact token accounting, turn and budget rules,
batching, retriever failures, and an episode the same alone or in a batch.

The transformers backend that plays real episodes is in test_generation.py."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence

import pytest
from helpers import RecordingRetriever, passages_for
from transformers import AutoTokenizer

from research_r1 import rollout
from research_r1.errors import RunStopped
from research_r1.generators import BatchEngine, Generation
from research_r1.protocol import SEARCH_R1
from research_r1.retrieval import Passage, RetrievalError, RetrieverUnavailable
from research_r1.rollout import (
    FINAL_TURN_NOTICE,
    Episode,
    RolloutConfig,
    run_episodes,
    run_rollout,
    run_rollout_continuous,
)
from research_r1.tiny import EOS

CLOSE = "</information>\n\n"  # what follows the passages in a Search-R1 observation
pytestmark = pytest.mark.usefixtures("one_thread")


class FlakyRetriever(RecordingRetriever):
    """Raises `errors` in turn (one per call), then answers as RecordingRetriever does."""

    def __init__(self, *errors: Exception) -> None:
        super().__init__()
        self.errors = list(errors)
        self.attempts = 0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().search(queries, k)


def scripted_logprob(position: int) -> float:
    """The log-prob the scripted policy reports for the `position`-th id of a turn."""
    return -(position + 1) / 8


class ScriptedPolicy:
    """A `Generator` test double that plays fixed turns per prompt.

    `scripts[prompt]` lists the text of each turn; a turn is cut at its budget ("length"), and
    otherwise ends with "eos" when its text ends with EOS, "stop" when it ends with a stop string,
    else "length". Prompts are told apart by their ids, so they must not prefix one another.
    """

    def __init__(self, tokenizer, scripts: dict[str, list[str]]) -> None:
        self.tokenizer = tokenizer
        self.scripts = {tuple(self.encode(prompt)): turns for prompt, turns in scripts.items()}
        self.turns: dict[tuple[int, ...], int] = defaultdict(int)
        self.calls: list[tuple[list[list[int]], list[int]]] = []

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        self.calls.append(([list(c) for c in contexts], list(max_new_tokens)))
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            prompt = next(p for p in self.scripts if tuple(context[: len(p)]) == p)
            text = self.scripts[prompt][self.turns[prompt]]
            self.turns[prompt] += 1
            ids = self.encode(text)
            finish = (
                "eos" if text.endswith(EOS) else "stop" if text.endswith(tuple(stop)) else "length"
            )
            if len(ids) > budget:
                ids, finish = ids[:budget], "length"
            logprobs = [scripted_logprob(j) for j in range(len(ids))]
            generations.append(Generation(ids, logprobs, finish))
        return generations


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def play(tokenizer, scripts, retriever=None, protocol=SEARCH_R1, watcher=None, **limits):
    """Run the scripted prompts as one batch; returns the episodes and the policy."""
    policy = ScriptedPolicy(tokenizer, scripts)
    episodes = run_rollout(
        [encode(tokenizer, prompt) for prompt in scripts],
        generator=policy,
        tokenizer=tokenizer,
        retriever=retriever or RecordingRetriever(),
        protocol=protocol,
        config=RolloutConfig(**{"k": 2, **limits}),
        watcher=watcher,
    )
    return episodes, policy


def observation_ids(tokenizer, query: str, k: int = 2) -> list[int]:
    """The ids inserted after a Search-R1 search: passages, then the closing tag kept whole."""
    observation = SEARCH_R1.observation(passages_for(query, k))
    return encode(tokenizer, observation.removesuffix(CLOSE)) + encode(tokenizer, CLOSE)


def transcript(tokenizer, episode: Episode) -> str:
    return tokenizer.decode(episode.prompt_ids + episode.completion_ids, skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------
# Scripted policy: exact accounting and the episode rules


def test_exact_ids_mask_and_logprobs_of_a_search_then_answer(tokenizer):
    prompt = "Question: who wrote hamlet?\n"
    turn1 = "<think> I need to search </think>\n<search> hamlet author </search>"
    turn2 = "<think> found it </think>\n<answer> shakespeare </answer>"
    retriever = RecordingRetriever()
    [episode], _ = play(tokenizer, {prompt: [turn1, turn2]}, retriever)

    observation = SEARCH_R1.observation(passages_for("hamlet author", 2))
    assert observation == (
        "\n\n<information>Doc 1(Title: title hamlet author) fact 0 about hamlet author\n"
        "Doc 2(Title: title hamlet author) fact 1 about hamlet author</information>\n\n"
    )
    sampled1, sampled2 = encode(tokenizer, turn1), encode(tokenizer, turn2)
    inserted = observation_ids(tokenizer, "hamlet author")
    eos = tokenizer.eos_token_id
    assert episode.prompt_ids == encode(tokenizer, prompt)
    assert episode.completion_ids == sampled1 + inserted + sampled2 + [eos]
    assert episode.env_mask == [1] * len(sampled1) + [0] * len(inserted) + [1] * len(sampled2) + [0]
    assert episode.logprobs == (
        [scripted_logprob(j) for j in range(len(sampled1))]
        + [0.0] * len(inserted)
        + [scripted_logprob(j) for j in range(len(sampled2))]
        + [0.0]
    )
    assert transcript(tokenizer, episode) == prompt + turn1 + observation + turn2 + EOS
    assert (episode.num_searches, episode.queries) == (1, ["hamlet author"])
    assert episode.retrieved_ids == [["hamlet author#0", "hamlet author#1"]]
    assert (episode.answered, episode.truncated) == (True, False)
    assert episode.invalid_steps == 0
    assert retriever.calls == [(["hamlet author"], 2)]


def test_mixed_batch_makes_one_retrieval_call_per_turn(tokenizer):
    scripts = {
        "Question A\n": ["<answer> paris </answer>"],
        "Question B\n": [
            "<search> b one </search>",
            "<search> b two </search>",
            "<answer> b </answer>",
        ],
        "Question C\n": ["<search> c one </search>", "<answer> c </answer>"],
    }
    retriever = RecordingRetriever()
    (a, b, c), policy = play(tokenizer, scripts, retriever)

    assert retriever.calls == [(["b one", "c one"], 2), (["b two"], 2)]
    assert [len(contexts) for contexts, _ in policy.calls] == [3, 2, 1]
    # Each turn continues from the prompt and everything so far, inserted ids included.
    assert policy.calls[1][0] == [
        b.prompt_ids
        + encode(tokenizer, "<search> b one </search>")
        + observation_ids(tokenizer, "b one"),
        c.prompt_ids
        + encode(tokenizer, "<search> c one </search>")
        + observation_ids(tokenizer, "c one"),
    ]
    assert [e.num_searches for e in (a, b, c)] == [0, 2, 1]
    assert [e.queries for e in (a, b, c)] == [[], ["b one", "b two"], ["c one"]]
    assert all(e.answered and not e.truncated for e in (a, b, c))
    assert transcript(tokenizer, a) == "Question A\n<answer> paris </answer>" + EOS
    expected_b = (
        "Question B\n<search> b one </search>"
        + SEARCH_R1.observation(passages_for("b one", 2))
        + "<search> b two </search>"
        + SEARCH_R1.observation(passages_for("b two", 2))
        + "<answer> b </answer>"
        + EOS
    )
    assert transcript(tokenizer, b) == expected_b


class Recorder:
    """A `Watcher` that writes down what it sees, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def turn(self, row: int, text: str) -> None:
        self.seen.append(("turn", row, text))

    def searched(self, row: int, query: str, passages) -> None:
        self.seen.append(("searched", row, query, [p.id for p in passages]))


def test_a_watcher_sees_each_turn_then_its_searches_as_they_happen(tokenizer):
    scripts = {
        "Question A\n": ["<answer> paris </answer>"],
        "Question B\n": ["<search> b one </search>", "<answer> b </answer>"],
        "Question C\n": ["<search> c one </search>", "<search> c two </search>", "stop" + EOS],
    }
    recorder = Recorder()
    play(tokenizer, scripts, watcher=recorder)
    assert recorder.seen == [
        ("turn", 0, "<answer> paris </answer>"),
        ("turn", 1, "<search> b one </search>"),
        ("turn", 2, "<search> c one </search>"),
        ("searched", 1, "b one", ["b one#0", "b one#1"]),
        ("searched", 2, "c one", ["c one#0", "c one#1"]),
        ("turn", 1, "<answer> b </answer>"),
        ("turn", 2, "<search> c two </search>"),
        ("searched", 2, "c two", ["c two#0", "c two#1"]),
        ("turn", 2, "stop"),  # as a reader sees it: without the special EOS token
    ]


def test_turn_limit_refuses_the_last_search_and_warns_before_the_last_turn(tokenizer):
    turns = ["<search> a </search>", "<search> b </search>", "<search> c </search>"]
    retriever = RecordingRetriever()
    [episode], policy = play(tokenizer, {"Question D\n": turns}, retriever, max_turns=2)

    assert retriever.calls == [(["a"], 2), (["b"], 2)]
    assert len(policy.calls) == 3
    assert transcript(tokenizer, episode) == (
        "Question D\n<search> a </search>"
        + SEARCH_R1.observation(passages_for("a", 2))
        + "<search> b </search>"
        + SEARCH_R1.observation(passages_for("b", 2))
        + FINAL_TURN_NOTICE
        + "<search> c </search>"
        + EOS
    )
    assert (episode.num_searches, episode.queries) == (2, ["a", "b"])
    assert (episode.answered, episode.truncated) == (False, False)
    assert episode.env_mask[-1] == 0 and episode.completion_ids[-1] == tokenizer.eos_token_id


def test_no_search_at_all_with_zero_turns(tokenizer):
    retriever = RecordingRetriever()
    [episode], policy = play(
        tokenizer, {"Question E\n": ["<search> a </search>"]}, retriever, max_turns=0
    )
    assert retriever.calls == [] and len(policy.calls) == 1
    assert transcript(tokenizer, episode) == "Question E\n<search> a </search>" + EOS
    assert (episode.num_searches, episode.answered, episode.truncated) == (0, False, False)


def test_invalid_steps_get_the_notice_and_go_on(tokenizer):
    scripts = {
        "Question F\n": ["hmm </search>", "<answer> f </answer>"],
        "Question G\n": ["one two three four five six", "<answer> g </answer>"],
    }
    assert len(encode(tokenizer, "<answer> g </answer>")) <= 5
    assert len(encode(tokenizer, "hmm </search>")) <= 5
    (f, g), _ = play(tokenizer, scripts, max_new_tokens=5)

    notice = SEARCH_R1.invalid_notice
    assert transcript(tokenizer, f) == (
        "Question F\nhmm </search>" + notice + "<answer> f </answer>" + EOS
    )
    cut = tokenizer.decode(encode(tokenizer, "one two three four five six")[:5])
    assert transcript(tokenizer, g) == "Question G\n" + cut + notice + "<answer> g </answer>" + EOS
    for episode in (f, g):
        assert (episode.invalid_steps, episode.num_searches, episode.answered) == (1, 0, True)
        assert episode.env_mask.count(0) == len(encode(tokenizer, notice)) + 1  # notice, EOS


def test_eos_sampled_by_the_model_ends_the_episode_as_sampled(tokenizer):
    scripts = {
        "Question H\n": ["<think> no idea </think>" + EOS],
        "Question I\n": ["<answer> i </answer>" + EOS],
    }
    (h, i), _ = play(tokenizer, scripts)
    eos = tokenizer.eos_token_id
    for episode in (h, i):
        assert episode.completion_ids[-1] == eos and episode.completion_ids.count(eos) == 1
        assert set(episode.env_mask) == {1} and not episode.truncated
        assert episode.logprobs[-1] == scripted_logprob(len(episode.completion_ids) - 1)
    assert (h.answered, i.answered) == (False, True)


def test_completion_budget_cuts_and_marks_truncated_without_eos(tokenizer):
    turns = ["<search> hamlet author </search>", "<answer> x </answer>"]
    [episode], policy = play(
        tokenizer, {"Question J\n": turns}, max_completion_tokens=20, max_observation_tokens=100
    )
    assert len(episode.completion_ids) == len(episode.env_mask) == len(episode.logprobs) == 20
    assert episode.truncated and not episode.answered
    assert episode.completion_ids[-1] != tokenizer.eos_token_id
    assert len(policy.calls) == 1  # the observation used up the budget: no second turn


def test_a_collective_generator_is_called_every_turn_even_when_all_episodes_ended(tokenizer):
    """vLLM server mode gathers every rank's rows in each call: ranks must call equally often."""

    class CollectivePolicy(ScriptedPolicy):
        collective = True

    policy = CollectivePolicy(tokenizer, {"Question L\n": ["<answer> x </answer>"]})
    [episode] = run_rollout(
        [encode(tokenizer, "Question L\n")],
        generator=policy,
        tokenizer=tokenizer,
        retriever=RecordingRetriever(),
        protocol=SEARCH_R1,
        config=RolloutConfig(k=2, max_turns=2),
    )
    assert episode.answered
    assert [len(contexts) for contexts, _ in policy.calls] == [1, 0, 0]


def test_every_turn_budget_shrinks_to_what_is_left(tokenizer):
    turns = ["<search> a </search>", "<search> b </search>", "<answer> x </answer>"]
    limits = dict(max_new_tokens=8, max_completion_tokens=60, max_observation_tokens=100)
    [episode], policy = play(tokenizer, {"Question K\n": turns}, **limits)
    prompt_length = len(episode.prompt_ids)
    for contexts, budgets in policy.calls:
        so_far = len(contexts[0]) - prompt_length
        assert budgets == [min(8, 60 - so_far - 1)]
    assert len(episode.completion_ids) <= 60


def test_last_turn_cut_by_its_token_budget_is_truncated(tokenizer):
    [episode], _ = play(
        tokenizer, {"Question L\n": ["one two three four five six"]}, max_turns=0, max_new_tokens=3
    )
    assert episode.completion_ids == encode(tokenizer, "one two three four five six")[:3]
    assert episode.truncated and episode.env_mask == [1, 1, 1]


def test_long_observation_is_cut_keeping_its_closing_tag(tokenizer):
    turns = ["<search> hamlet author </search>", "<answer> x </answer>"]
    [episode], _ = play(tokenizer, {"Question M\n": turns}, k=3, max_observation_tokens=12)
    inserted = [
        token
        for token, mask in zip(episode.completion_ids, episode.env_mask, strict=True)
        if not mask
    ]
    observation = inserted[:-1]  # the final EOS is inserted too
    assert len(observation) == 12
    text = tokenizer.decode(observation)
    assert text.startswith("\n\n<information>Doc 1(Title:") and text.endswith(CLOSE)
    assert "Doc 3" not in text


def test_an_outage_is_waited_out_and_the_episode_reads_real_passages(
    tokenizer, monkeypatch, caplog
):
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    down = RetrieverUnavailable("retrieval at http://127.0.0.1:9/retrieve failed: refused")
    flaky = FlakyRetriever(down, down)
    turns = ["<search> hamlet author </search>", "<answer> x </answer>"]
    [episode], _ = play(tokenizer, {"Question N\n": turns}, flaky)
    [reference], _ = play(tokenizer, {"Question N\n": turns})

    assert flaky.attempts == 3 and flaky.calls == [(["hamlet author"], 2)]
    assert episode == reference  # the same ids as with a retriever that never went away
    waits = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(waits) == 2
    assert waits[0].startswith(f"the retriever is unreachable ({down}); waiting 0.01 s for it")


def test_an_outage_longer_than_the_limit_stops_the_run(tokenizer, monkeypatch):
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    down = RetrieverUnavailable("retrieval at http://127.0.0.1:9/retrieve failed: refused")
    flaky = FlakyRetriever(*[down] * 100)
    turns = ["<search> a </search>", "<answer> x </answer>"]
    with pytest.raises(RunStopped) as stopped:
        play(tokenizer, {"Question N\n": turns}, flaky, max_retriever_wait_s=0.1)
    message = str(stopped.value)
    assert message.startswith("the retriever stayed unreachable for 0 s (max_retriever_wait_s=0.1)")
    assert str(down) in message and "--resume_from_checkpoint" in message
    assert 3 <= flaky.attempts < 10  # waits of 0.01, 0.02, 0.04 s fit in 0.1 s, 0.08 more do not
    assert stopped.value.__cause__ is down


@pytest.mark.parametrize(
    "error",
    [ConnectionError("a bug in an in-process retriever"), RetrievalError("HTTP 401: bad token")],
)
def test_other_retriever_errors_propagate_at_once(tokenizer, error):
    flaky = FlakyRetriever(error)
    turns = ["<search> a </search>", "<answer> x </answer>"]
    with pytest.raises(type(error)) as raised:
        play(tokenizer, {"Question N\n": turns}, flaky)
    assert raised.value is error and flaky.attempts == 1


def test_the_batched_runner_plays_as_one_batch_would(tokenizer):
    scripts = {
        "Question O\n": ["<answer> o </answer>"],
        "Question P\n": ["<search> p </search>", "<answer> p </answer>"],
        "Question Q\n": ["<think> q </think>" + EOS],
    }
    retriever = RecordingRetriever()
    policy = ScriptedPolicy(tokenizer, scripts)
    episodes = run_episodes(
        policy,
        tokenizer,
        retriever,
        list(scripts),
        protocol=SEARCH_R1,
        config=RolloutConfig(k=2),
        batch_size=2,
        show_progress=False,
    )
    assert [len(contexts) for contexts, _ in policy.calls] == [2, 1, 1]  # batches of 2 prompts
    expected, _ = play(tokenizer, scripts)
    assert episodes == expected


def test_bad_settings_are_rejected():
    from research_r1.errors import InputError

    with pytest.raises(InputError) as error:
        RolloutConfig(max_new_tokens=0)
    assert str(error.value) == (
        "rollout setting: key 'max_new_tokens': Input should be greater than or equal to 1, got 0"
    )
    with pytest.raises(InputError, match=r"^rollout setting: key 'k': Input should be a valid"):
        RolloutConfig(k=True)  # strict: a YAML `true` is not a number
    with pytest.raises(InputError, match=r"^rollout setting: key 'topk': Extra inputs"):
        RolloutConfig(topk=3)


# ---------------------------------------------------------------------------------------------
# A question's episode never depends on its batch


class ContextModel:
    """A deterministic stand-in for a model: what it writes depends on its own context only
    (searching while the context is short, answering once it is long), cut at the call's
    budget, as a real model's output would be; records each row's context and budget."""

    def __init__(self, tokenizer, protocol, answer_after: int) -> None:
        self.tokenizer, self.protocol, self.answer_after = tokenizer, protocol, answer_after
        self.seen: list[tuple[tuple[int, ...], int]] = []

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            self.seen.append((tuple(context), budget))
            n = len(context)
            if n < self.answer_after:
                search = f"{self.protocol.search_open} fact {n % 5} {self.protocol.search_close}"
                text = f"<think> step {n % 7} </think>{search} more"
            else:
                text = f"<think> done </think><answer> a{n % 3} </answer>"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            ids.append(self.tokenizer.eos_token_id)
            out, finish = [], "length"
            for token in ids[:budget]:
                out.append(token)
                if token == self.tokenizer.eos_token_id:
                    finish = "eos"
                    break
                if any(s in self.tokenizer.decode(out, skip_special_tokens=True) for s in stop):
                    finish = "stop"
                    break
            generations.append(Generation(out, [0.0] * len(out), finish))
        return generations


def binding_budgets(family: str):
    """A family's protocol and rollout settings, with context, observation and completion
    budgets small enough to bind."""
    from research_r1.evaluation.families import get_family

    if family == "ours":
        protocol, settings = SEARCH_R1, {"max_completion_tokens": 90}
    else:
        audited = get_family(family)
        protocol, settings = audited.template.protocol, dict(audited.rollout)
        settings |= {"max_context": 160} if settings.get("max_context") else {"max_turns": 3}
    config = RolloutConfig(
        **{**settings, "k": 2, "max_new_tokens": 64, "max_observation_tokens": 30}
    )
    return protocol, config


@pytest.mark.parametrize("family", ["ours", "search_r1", "research", "verltool", "r1_searcher"])
def test_an_episode_is_the_same_played_alone_or_in_a_batch(tokenizer, family):
    """Prompts of very different lengths under budgets that bind (a small context, observation
    and completion budget): each episode's contexts, budgets and tokens are the same whether it
    is played alone or with the others."""
    protocol, config = binding_budgets(family)
    prompts = [
        tokenizer.encode("question " + "word " * length, add_special_tokens=False)
        for length in (3, 60, 17, 110)
    ]

    def play(batch):
        model = ContextModel(tokenizer, protocol, answer_after=120)
        episodes = run_rollout(
            batch,
            generator=model,
            tokenizer=tokenizer,
            retriever=RecordingRetriever(),
            protocol=protocol,
            config=config,
        )
        return episodes, model.seen

    together, seen_together = play(prompts)
    alone = [play([prompt]) for prompt in prompts]
    for episode, (single, seen_alone) in zip(together, alone, strict=True):
        assert episode.completion_ids == single[0].completion_ids
        assert episode.completion_text == single[0].completion_text
        assert (episode.answered, episode.truncated) == (single[0].answered, single[0].truncated)
        assert set(seen_alone) <= set(seen_together)
    assert len(seen_together) == sum(len(seen) for _, seen in alone)
    assert len(seen_together) > len(prompts)  # episodes searched, and went on
    lengths = {len(e.completion_ids) + len(e.completion_text) for e in together}
    assert len(lengths) > 1


# ---------------------------------------------------------------------------------------------
# The continuous scheduler plays the same episodes, each on its own


class StragglingEngine:
    """An `Engine` over a `Generator` whose requests finish in an order of their own: each step
    finishes a seeded random share of what is queued (at least one), one request at a time, as
    a continuously batching engine returns whichever requests are done."""

    def __init__(self, generator, seed: int = 0) -> None:
        self.generator, self.random = generator, random.Random(seed)
        self.queued: list[tuple[int, list[int], int, Sequence[str]]] = []
        self.log: list[tuple[str, int]] = []  # ("submit" | "done", row), in order

    def submit(self, key, context, max_new_tokens, stop) -> None:
        self.queued.append((key, list(context), max_new_tokens, stop))
        self.log.append(("submit", key))

    def step(self) -> list[tuple[int, Generation]]:
        done = self.random.sample(self.queued, self.random.randint(1, len(self.queued)))
        finished = []
        for request in done:
            self.queued.remove(request)
            key, context, budget, stop = request
            finished.append((key, self.generator.generate([context], [budget], stop)[0]))
            self.log.append(("done", key))
        return finished


def fields_of(episode: Episode) -> tuple:
    return (
        episode.completion_ids,
        episode.env_mask,
        episode.logprobs,
        episode.completion_text,
        episode.turns,
        episode.queries,
        episode.retrieved_ids,
        episode.num_searches,
        episode.answered,
        episode.truncated,
        episode.invalid_steps,
        episode.finish,
    )


class NetworkRetriever(RecordingRetriever):
    """As a remote retriever: the continuous scheduler calls it from its search thread."""

    waits_on_network = True


@pytest.mark.parametrize("family", ["ours", "search_r1", "research", "verltool", "r1_searcher"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("retriever", [RecordingRetriever, NetworkRetriever])
def test_the_continuous_scheduler_plays_the_same_episodes(tokenizer, family, seed, retriever):
    """Under budgets that bind, with requests finishing out of order: every field of every
    episode equals the turn-synchronous scheduler's, and episodes went on before others ended
    their turn."""
    protocol, config = binding_budgets(family)
    prompts = [
        tokenizer.encode("question " + "word " * length, add_special_tokens=False)
        for length in (3, 60, 17, 110, 8, 33)
    ]
    common = {"tokenizer": tokenizer, "protocol": protocol, "config": config}
    synchronous = run_rollout(
        prompts,
        generator=ContextModel(tokenizer, protocol, answer_after=120),
        retriever=RecordingRetriever(),
        **common,
    )
    engine = StragglingEngine(ContextModel(tokenizer, protocol, answer_after=120), seed)
    continuous = run_rollout_continuous(prompts, engine=engine, retriever=retriever(), **common)

    assert [fields_of(e) for e in continuous] == [fields_of(e) for e in synchronous]
    assert sum(e.num_searches for e in continuous) > 0
    started: set[int] = set()
    decoding: set[int] = set()
    went_on_beside_others = 0  # next turns submitted while another episode's call was decoding
    for kind, row in engine.log:
        if kind == "done":
            decoding.remove(row)
        else:
            went_on_beside_others += row in started and bool(decoding)
            started.add(row)
            decoding.add(row)
    assert went_on_beside_others > 0


def test_the_continuous_scheduler_over_a_batch_engine_calls_as_the_synchronous_one(tokenizer):
    """`BatchEngine` (transformers has no continuous batching here): the same generate calls,
    and one retriever call per turn, as the turn-synchronous scheduler makes."""
    scripts = {
        "who wrote hamlet?": [
            "<think> look </think><search> hamlet </search>",
            "<answer> Shakespeare </answer>" + EOS,
        ],
        "capital of france?": ["<answer> Paris </answer>" + EOS],
    }
    prompts = [encode(tokenizer, prompt) for prompt in scripts]
    config = RolloutConfig(k=2, max_new_tokens=40)
    common = {"tokenizer": tokenizer, "protocol": SEARCH_R1, "config": config}
    sync_policy, sync_retriever = ScriptedPolicy(tokenizer, scripts), RecordingRetriever()
    sync = run_rollout(prompts, generator=sync_policy, retriever=sync_retriever, **common)
    policy, retriever = ScriptedPolicy(tokenizer, scripts), RecordingRetriever()
    engine = BatchEngine(policy)
    continuous = run_rollout_continuous(prompts, engine=engine, retriever=retriever, **common)
    assert [fields_of(e) for e in continuous] == [fields_of(e) for e in sync]
    assert policy.calls == sync_policy.calls and retriever.calls == sync_retriever.calls


class CachingPolicy(ScriptedPolicy):
    """`ScriptedPolicy` reporting the first half of each context as served from a prefix cache,
    as vLLM's engine reports its hits per request."""

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        generations = super().generate(contexts, max_new_tokens, stop)
        return [
            dataclasses.replace(generation, cached_tokens=len(context) // 2)
            for generation, context in zip(generations, contexts, strict=True)
        ]


@pytest.mark.parametrize("scheduler", ["turn", "continuous"])
@pytest.mark.parametrize("policy_class", [CachingPolicy, ScriptedPolicy])
def test_each_episode_adds_up_its_calls_contexts_and_the_cache_hits_reported(
    tokenizer, scheduler, policy_class
):
    """Context ids sent and prefix-cache hits, summed over each episode's own calls; None, not
    0, from a backend that reports no hits (`ScriptedPolicy`, as transformers)."""
    turn1 = "<search> hamlet </search>"
    scripts = {
        "who wrote hamlet?": [turn1, "<answer> Shakespeare </answer>" + EOS],
        "capital of france?": ["<answer> Paris </answer>" + EOS],
    }
    prompts = [encode(tokenizer, prompt) for prompt in scripts]
    common = {
        "tokenizer": tokenizer,
        "retriever": RecordingRetriever(),
        "protocol": SEARCH_R1,
        "config": RolloutConfig(k=2, max_new_tokens=40),
    }
    policy = policy_class(tokenizer, scripts)
    if scheduler == "turn":
        episodes = run_rollout(prompts, generator=policy, **common)
    else:
        episodes = run_rollout_continuous(prompts, engine=BatchEngine(policy), **common)

    searched = len(prompts[0]) + len(
        encode(tokenizer, turn1) + observation_ids(tokenizer, "hamlet")
    )
    assert [episode.context_tokens for episode in episodes] == [
        len(prompts[0]) + searched,
        len(prompts[1]),
    ]
    reported = [len(prompts[0]) // 2 + searched // 2, len(prompts[1]) // 2]
    expected = reported if policy_class is CachingPolicy else [None, None]
    assert [episode.cached_tokens for episode in episodes] == expected


def test_an_outage_in_the_search_thread_stops_the_continuous_run(tokenizer, monkeypatch):
    monkeypatch.setattr(rollout, "OUTAGE_FIRST_WAIT_S", 0.01)
    retriever = FlakyRetriever(*[RetrieverUnavailable("http://127.0.0.1:9: refused")] * 50)
    retriever.waits_on_network = True
    scripts = {"who wrote hamlet?": ["<search> hamlet </search>", "<answer> x </answer>" + EOS]}
    with pytest.raises(RunStopped, match="stayed unreachable"):
        run_rollout_continuous(
            [encode(tokenizer, "who wrote hamlet?")],
            engine=BatchEngine(ScriptedPolicy(tokenizer, scripts)),
            tokenizer=tokenizer,
            retriever=retriever,
            protocol=SEARCH_R1,
            config=RolloutConfig(k=2, max_retriever_wait_s=0.05),
        )


def test_the_rollout_imports_neither_torch_nor_transformers():
    """The episode, its protocol and the retrievers' interface load without them (evaluation
    plans, remote backends and the live views need neither)."""
    modules = "research_r1.rollout, research_r1.protocol, research_r1.retrieval"
    code = (
        f"import sys, {modules}; "
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
