"""The search episode: the model reasons, searches, reads results and answers, turn by turn.

An episode generates until a stop string, EOS or its token budget; the turn is read
(`protocol.read_turn`: what the family's loop keeps of it and what it asks for); a search's
passages are inserted as an observation before the next turn. Two schedulers play episodes:
`run_rollout`, turn by turn (every unfinished episode of the batch generates in one call, then
all the turn's queries go to the retriever in ONE call), and `run_rollout_continuous`, episode by
episode over an `Engine` (an episode that searched goes back to the engine as soon as its own
passages are in, while the others decode). Both apply the same per-episode rules (`_Play`). What
an episode does follows only from its own text and the settings (`Protocol`, `RolloutConfig`),
never from the other episodes of its batch, so a question's transcript is the same whatever it
is played with, and whichever scheduler plays it.

Token accounting. In `sampled` protocols (ours, and every training run) it is exact, because it
is what the policy loss trains on:

- `completion_ids` holds the very ids the backend sampled (never re-tokenised text),
  interleaved with the ids the environment inserted (observations, notices, a final EOS);
- `env_mask` is 1 on every sampled id and 0 on every inserted one (TRL multiplies it into the
  loss mask, so inserted text stays in the attention context but is never trained on);
- `logprobs` holds the sampling log-probabilities of sampled ids, 0.0 on inserted ones.

Published families' loops keep something else, and evaluation plays them as they do: `turn`
protocols keep each turn's text re-encoded alone (mask 1, log-probability 0.0), `text` protocols
keep the transcript as text and encode it whole for every call.

Rules of an episode:

- Turns: at most `max_turns + 1` model turns (unbounded when `max_turns` is None). Every turn
  but the last may search; the last is played as `last_turn` says: a search asked for there is
  not run (`answer`), is run and its passages end the episode (`search`), is run and its
  passages thrown away (`search_discarded`), or the turn is made and discarded (`ignored`). An
  invalid step also uses a turn, as in Search-R1. The observation inserted before the last turn
  ends with `config.final_turn_notice` (ours: `FINAL_TURN_NOTICE`).
- What a turn asks for is the protocol's to say (the first block, or the stop string it ended
  at); ids the backend sampled after it (within the stop's own token) stay in a `sampled`
  completion as sampled.
- Invalid steps get `protocol.invalid_notice` as an observation (no penalty); so does a `sampled`
  turn cut off by `max_new_tokens` while completion budget remains. A protocol without a notice
  ends the episode there instead.
- A retriever that cannot be reached (`RetrieverUnavailable`: a remote one, after its own quick
  retries) is waited for, with backoff and a log line per wait, for up to `max_retriever_wait_s`;
  then the rollout raises `RunStopped` naming it, and the run ends (its last checkpoint resumes
  it). No episode ever reads an error where passages should be, so no step trains on an outage.
  Any other exception from the retriever (a bug, a refused request) propagates as it is.
- Observations are cut to `max_observation_tokens` as `protocol.observation_cut` says (ours: at
  the end of their passages, the closing tag and what follows it kept whole).
- Budgets. Ours (`max_completion_tokens`): each turn may sample `max_new_tokens`, shrunk to
  what is left of `max_completion_tokens` less one id kept for the final EOS; an episode that
  runs out (or whose last turn is cut off by a token budget) is cut to `max_completion_tokens`
  and marked `truncated`, with NO EOS, so TRL counts it as truncated too. A context budget
  (`max_context`) is kept as `context` says: the model sees only the last `max_context` ids
  (`keep_last`, veRL), a turn may only fill what is left of it and the episode ends when none
  is left (`fit`), or the episode ends once the last call's context and output (`after_call`)
  or all calls' together (`after_calls`) reach it. A model server's own context length
  (`server_context`, as SGLang <= 0.4.1 keeps `--context-length L`) binds each call besides:
  a context longer than L-6 ids is cut to its first L-6, and the call may sample at most
  L-2 less the context's length (the transcript keeps everything; `after_call(s)` budgets
  count the context as cut).
- A `Watcher` (optional) sees each model turn as it is decoded and each search's passages as
  they come back, before the next turn starts: the live views (`research-r1 ask`, the Space)
  watch the same episode that training and evaluation play.
- Finished `sampled` episodes end with EOS. When the model sampled it, it is a sampled token.
  When the episode ends otherwise (stopped at `</answer>`, or out of turns), the environment
  appends EOS as an inserted token (mask 0: the model did not choose it, so it is not trained
  on). It is there because TRL counts any completion whose last id is not EOS or pad as
  truncated.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from research_r1.errors import InputError, RunStopped, invalid
from research_r1.generators import Engine, Generation, Generator
from research_r1.protocol import FINAL_TURN_NOTICE, Prompt, Protocol, read_turn, render_prompt
from research_r1.retrieval import Passage, Retriever, RetrieverUnavailable

logger = logging.getLogger(__name__)

# Waits for an unreachable retriever: 1 s, then doubling, at most a minute between tries.
OUTAGE_FIRST_WAIT_S = 1.0
OUTAGE_LONGEST_WAIT_S = 60.0


@dataclass
class Episode:
    """One prompt's rollout: the token streams the trainer needs and what happened, for rewards
    and logs (`queries[i]` returned the passages `retrieved_ids[i]`). `turns` holds each model
    turn as the loop kept it; `text` protocols keep the transcript in `completion_text`;
    `finish` is how the last call ended; `spent` counts the context and output tokens of the
    calls so far, for `after_call(s)` budgets. `context_tokens` counts the ids sent to the
    backend over all calls, `cached_tokens` how many of them its prefix cache served (None when
    the backend does not report it), for the prefix-cache hit rate."""

    prompt_ids: list[int]
    prompt_text: str = ""
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    completion_text: str = ""
    turns: list[str] = field(default_factory=list)
    num_searches: int = 0
    queries: list[str] = field(default_factory=list)
    retrieved_ids: list[list[str]] = field(default_factory=list)
    answered: bool = False
    truncated: bool = False
    invalid_steps: int = 0
    finish: str = ""
    spent: int = 0
    context_tokens: int = 0
    cached_tokens: int | None = None

    def count_call(self, context: Sequence[int], generation: Generation) -> None:
        """Add one call's context, and what the backend served of it from its prefix cache."""
        self.context_tokens += len(context)
        if generation.cached_tokens is not None:
            self.cached_tokens = (self.cached_tokens or 0) + generation.cached_tokens

    def add_sampled(self, generation: Generation) -> None:
        self.completion_ids += generation.token_ids
        self.env_mask += [1] * len(generation.token_ids)
        self.logprobs += generation.logprobs

    def add_turn(self, ids: Sequence[int]) -> None:
        """A model turn re-encoded from its text: the model's, but not as sampled."""
        self.completion_ids += ids
        self.env_mask += [1] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def add_inserted(self, ids: Sequence[int]) -> None:
        self.completion_ids += ids
        self.env_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def cut(self, length: int) -> None:
        """End the episode as truncated at `length` completion ids."""
        del self.completion_ids[length:], self.env_mask[length:], self.logprobs[length:]
        self.truncated = True


class Watcher(typing.Protocol):
    """Sees episodes as they are played; `row` is the episode's index in the batch."""

    def turn(self, row: int, text: str) -> None:
        """The model's turn as a reader sees it (decoded without special tokens)."""

    def searched(self, row: int, query: str, passages: Sequence[Passage]) -> None:
        """A search of that turn and what it found, before it is inserted as an observation."""


class RolloutConfig(BaseModel):
    """How far an episode may go (Search-R1's paper values by default, and our completion
    budget), and how long a search waits for a retriever that cannot be reached before the run
    stops. The module docstring says what each budget does."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    k: int = Field(3, ge=1)
    max_turns: int | None = Field(4, ge=0)
    max_new_tokens: int = Field(500, ge=1)
    max_observation_tokens: int | None = Field(500, ge=1)
    max_completion_tokens: int | None = Field(4096, ge=2)  # one sampled id and the final EOS
    max_context: int | None = Field(None, ge=2)
    context: Literal["keep_last", "fit", "after_call", "after_calls"] = "keep_last"
    context_drops_pad: bool = False  # veRL's loops read every pad-id token as padding
    server_context: int | None = Field(None, ge=8)  # SGLang <= 0.4.1's --context-length
    last_turn: Literal["answer", "search", "search_discarded", "ignored"] = "answer"
    max_retriever_wait_s: float = Field(600.0, ge=0)
    final_turn_notice: str = FINAL_TURN_NOTICE  # "" to evaluate agents trained without it

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as error:
            raise invalid(error, "rollout setting") from error

    @model_validator(mode="after")
    def _bounded(self) -> RolloutConfig:
        unbounded = self.max_context is None or self.context == "keep_last"
        if self.max_turns is None and self.max_completion_tokens is None and unbounded:
            raise ValueError("without max_turns, an episode needs a budget that ends it")
        return self


def run_rollout(
    prompt_ids: Sequence[Sequence[int]],
    *,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    protocol: Protocol,
    config: RolloutConfig,
    watcher: Watcher | None = None,
    prompt_texts: Sequence[str] | None = None,
) -> list[Episode]:
    """Play one episode per prompt, turn by turn (the turn-synchronous scheduler): each turn,
    every unfinished episode generates in one batch, then all the turn's searches go to the
    retriever in one call. Episodes come back in prompt order. `text` protocols continue the
    prompt's text (`prompt_texts`; by default the prompt ids decoded)."""
    play = _Play(prompt_ids, prompt_texts, tokenizer, protocol, config, retriever, watcher)
    active = list(range(len(play.episodes)))
    turn = 0
    while True:
        calls = play.calls(active)
        if not calls and not getattr(generator, "collective", False):
            break
        rows = list(calls)
        generations = generator.generate(
            [calls[row][0] for row in rows], [calls[row][1] for row in rows], protocol.stop_strings
        )
        if len(generations) != len(rows):
            raise RuntimeError(f"generator returned {len(generations)} rows for {len(rows)}")
        read = play.read(
            [(row, calls[row], g, turn) for row, g in zip(rows, generations, strict=True)]
        )
        play.insert_notes(read.notes)
        play.insert_results(read.searches, play.fetch(read.searches))
        play.fetch(read.discarded)
        if turn == config.max_turns:
            break
        active = sorted(read.continuing)
        turn += 1
    return play.episodes


def run_rollout_continuous(
    prompt_ids: Sequence[Sequence[int]],
    *,
    engine: Engine,
    tokenizer: Any,
    retriever: Retriever,
    protocol: Protocol,
    config: RolloutConfig,
    watcher: Watcher | None = None,
    prompt_texts: Sequence[str] | None = None,
) -> list[Episode]:
    """Play one episode per prompt, each on its own (the continuous scheduler): an episode that
    stops at a search waits only for its own search and goes back to the engine while the others
    are still decoding. The searches of the episodes that stopped since the last retriever call
    go in the next one. A retriever that `waits_on_network` (a remote one) is called from a
    background thread while the engine steps on; an in-process one is called between steps, as
    in a thread it would compete with the engine for the same cores (its OpenMP threads spinning
    beside torch's made the uniform benchmark 6x slower).

    Each episode's transcript, ids, masks and log-probabilities come from the same per-episode
    rules as `run_rollout` (`_Play`), and an episode depends only on its own text: under greedy
    decoding both schedulers play the same episodes. The weights do not change within a call.
    """
    play = _Play(prompt_ids, prompt_texts, tokenizer, protocol, config, retriever, watcher)
    turn_of = [0] * len(play.episodes)
    in_engine: dict[int, _Call] = {}

    def submit(rows: Iterable[int]) -> None:
        for row, call in play.calls(rows).items():
            in_engine[row] = call
            engine.submit(row, call[0], call[1], protocol.stop_strings)

    def resume(rows: Iterable[int]) -> None:
        """Send rows whose observation is in to the engine again, unless that was their last."""
        going_on = [row for row in rows if turn_of[row] != config.max_turns]
        for row in going_on:
            turn_of[row] += 1
        submit(going_on)

    submit(range(len(play.episodes)))
    beside_the_engine = getattr(retriever, "waits_on_network", False)
    waiting: list[_Search] = []
    in_flight: tuple[list[_Search], Future[list[list[Passage]]]] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="search") as searcher:
        while in_engine or waiting or in_flight is not None:
            if in_flight is not None and (in_flight[1].done() or not in_engine):
                searches, results = in_flight[0], in_flight[1].result()
                in_flight = None
                play.insert_results(searches, results)
                resume(search.row for search in searches)
            if waiting and in_flight is None and beside_the_engine:
                in_flight = (waiting, searcher.submit(play.fetch, waiting))
                waiting = []
            elif waiting and not beside_the_engine:
                play.insert_results(waiting, play.fetch(waiting))
                resume(search.row for search in waiting)
                waiting = []
            if not in_engine:
                continue
            finished = engine.step()
            items = [(row, in_engine.pop(row), g, turn_of[row]) for row, g in finished]
            read = play.read(items)
            play.insert_notes(read.notes)
            resume(note.row for note in read.notes)
            waiting += read.searches
            play.fetch(read.discarded)
    return play.episodes


_Call = tuple[list[int], int]  # the ids a call sees, and how many it may sample


@dataclass(frozen=True)
class _Search:
    """A search an episode asked for, and the notice its observation ends with."""

    row: int
    query: str
    notice: str = ""


@dataclass(frozen=True)
class _Note:
    """A text an episode inserts that is no search's (a notice, a message), and its notice."""

    row: int
    text: str
    notice: str


@dataclass
class _Read:
    """What a set of finished calls asks for next; `continuing` are the rows that go on."""

    notes: list[_Note] = field(default_factory=list)
    searches: list[_Search] = field(default_factory=list)
    discarded: list[_Search] = field(
        default_factory=list
    )  # run, as the family's last turn runs them
    continuing: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Next:
    """What an unfinished episode inserts before its next turn: passages for a search, or a
    text (a notice, a message)."""

    kind: Literal["search", "search_discarded", "text"]
    content: str


class _Play:
    """The episodes of one rollout call, and one family's rules applied to each on its own: the
    context and budget of its next call, what a turn adds to it, and how an observation is cut
    and inserted. Both schedulers drive it; it never looks at two episodes together."""

    def __init__(
        self,
        prompt_ids: Sequence[Sequence[int]],
        prompt_texts: Sequence[str] | None,
        tokenizer: Any,
        protocol: Protocol,
        config: RolloutConfig,
        retriever: Retriever,
        watcher: Watcher | None,
    ) -> None:
        if protocol.tokens == "sampled" and tokenizer.eos_token_id is None:
            raise InputError("the tokenizer has no EOS token; finished episodes must end with one")
        if prompt_texts is None:  # only `text` protocols read them
            as_text = protocol.tokens == "text" and bool(prompt_ids)
            prompt_texts = tokenizer.batch_decode(prompt_ids) if as_text else [""] * len(prompt_ids)
        self.episodes = [
            Episode(prompt_ids=list(ids), prompt_text=text)
            for ids, text in zip(prompt_ids, prompt_texts, strict=True)
        ]
        self.tokenizer, self.protocol, self.config = tokenizer, protocol, config
        self.retriever, self.watcher = retriever, watcher
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id
        self.special_tokens = protocol.special_tokens is not False

    def calls(self, rows: Iterable[int]) -> dict[int, _Call]:
        """The next call of each of `rows` whose budgets let it make one."""
        return {row: call for row in rows if (call := self.call(self.episodes[row])) is not None}

    def call(self, episode: Episode) -> tuple[list[int], int] | None:
        """The ids the next call sees and how many it may sample, or None when a budget ends
        the episode before it."""
        config = self.config
        if self.protocol.tokens == "text":
            context = self.tokenizer.encode(
                episode.prompt_text + episode.completion_text,
                add_special_tokens=self.special_tokens,
            )
        else:
            context = episode.prompt_ids + episode.completion_ids
        if config.context_drops_pad and episode.turns:
            context = [token for token in context if token != self.pad_id]
        budget = config.max_new_tokens
        if config.max_completion_tokens is not None:
            budget = min(budget, _room(episode, config))
            if budget <= 0:
                episode.cut(config.max_completion_tokens)
                return None
        if config.max_context is not None:
            if config.context == "keep_last":
                context = context[-config.max_context :]
            elif config.context == "fit":
                budget = min(budget, config.max_context - len(context))
                if budget <= 0:
                    return None
            elif episode.spent >= config.max_context:
                return None
        if config.server_context is not None:  # SGLang <= 0.4.1: max_req_len = L - 1
            longest = config.server_context - 1
            context = context[: longest - 5]  # max_req_input_len: the head is kept
            budget = min(budget, longest - len(context) - 1)
        return context, budget

    def read(self, items: Sequence[tuple[int, _Call, Generation, int]]) -> _Read:
        """Add each finished call's turn (`row`, its call, what it generated, the turn's index)
        to its episode, and say what each asks for next; the texts are decoded in one call."""
        for _, call, generation, _ in items:
            _check(generation, call[1])
        # one call for the batch; guarded, as transformers decodes [] as one empty sequence
        texts = (
            self.tokenizer.batch_decode(
                [generation.token_ids for _, _, generation, _ in items],
                skip_special_tokens=self.protocol.tokens != "sampled",
            )
            if items
            else []
        )
        read = _Read()
        for (row, call, generation, turn), text in zip(items, texts, strict=True):
            if self.watcher is not None:
                decoded = self.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
                self.watcher.turn(row, decoded)
            last_turn = turn == self.config.max_turns
            outcome = self.turn(self.episodes[row], generation, text, call[0], last_turn)
            if outcome is None:
                continue
            notice = self.config.final_turn_notice if turn + 1 == self.config.max_turns else ""
            if outcome.kind == "text":
                read.notes.append(_Note(row, outcome.content, notice))
            elif outcome.kind == "search":
                read.searches.append(_Search(row, outcome.content, notice))
            else:
                read.discarded.append(_Search(row, outcome.content))
            if outcome.kind != "search_discarded" and not last_turn:
                read.continuing.append(row)
        return read

    def turn(
        self,
        episode: Episode,
        generation: Generation,
        text: str,
        context: Sequence[int],
        last_turn: bool,
    ) -> _Next | None:
        """Add one turn to `episode` and say what it inserts next, or None when it has ended."""
        config, protocol = self.config, self.protocol
        cumulative = config.context == "after_calls"
        spent = len(context) + len(generation.token_ids)
        episode.spent = episode.spent + spent if cumulative else spent
        episode.count_call(context, generation)
        episode.finish = generation.finish
        if last_turn and config.last_turn == "ignored":
            return None
        kept, action = read_turn(text, generation.finish, protocol)
        episode.turns.append(kept)
        if protocol.tokens == "sampled":
            episode.add_sampled(generation)
        elif protocol.tokens == "turn":
            episode.add_turn(self.tokenizer.encode(kept, add_special_tokens=False))
        else:
            episode.completion_text += kept
        if action.kind == "answer":
            episode.answered = True
            return self._end(episode, generation, cut=False)
        if action.kind == "search" and last_turn and config.last_turn.startswith("search"):
            return _Next(config.last_turn, action.content)
        if last_turn or action.kind == "end":
            return self._end(episode, generation, cut=True)
        if action.kind == "search":
            return _Next("search", action.content)
        if action.kind == "observe":
            return _Next("text", action.content)
        if (
            protocol.tokens == "sampled"
            and generation.finish == "length"
            and config.max_completion_tokens is not None
            and _room(episode, config) <= 0
        ):  # out of completion budget
            episode.cut(config.max_completion_tokens)
            return None
        if protocol.invalid_notice is None:  # the protocol ends such an episode
            return self._end(episode, generation, cut=True)
        episode.invalid_steps += 1
        return _Next("text", protocol.invalid_notice)

    def _end(self, episode: Episode, generation: Generation, *, cut: bool) -> None:
        """End an episode: a `sampled` one ends with EOS, or (`cut`, when a token budget stopped
        its last turn) as truncated."""
        if self.protocol.tokens != "sampled" or generation.finish == "eos":
            return None
        if cut and generation.finish == "length":
            episode.cut(self.config.max_completion_tokens or len(episode.completion_ids))
        else:
            episode.add_inserted([self.tokenizer.eos_token_id])
        return None

    def insert_notes(self, notes: Sequence[_Note]) -> None:
        self.observe([(self.episodes[note.row], note.text, note.notice) for note in notes])

    def fetch(self, searches: Sequence[_Search]) -> list[list[Passage]]:
        """The passages of `searches`, in one retriever call (none when there are none)."""
        if not searches:
            return []
        queries = [search.query for search in searches]
        config = self.config
        results = search_through_outages(
            self.retriever, queries, config.k, config.max_retriever_wait_s
        )
        if len(results) != len(queries):
            raise RuntimeError(f"retriever returned {len(results)} result lists for {len(queries)}")
        return results

    def insert_results(self, searches: Sequence[_Search], results: Sequence[list[Passage]]) -> None:
        """Insert each search's passages as an observation, followed by its notice (empty unless
        the next turn is the last)."""
        closing = self.protocol.observation_tail
        items = []
        for search, passages in zip(searches, results, strict=True):
            if self.watcher is not None:
                self.watcher.searched(search.row, search.query, passages)
            episode = self.episodes[search.row]
            episode.num_searches += 1
            episode.queries.append(search.query)
            episode.retrieved_ids.append([passage.id for passage in passages])
            head = self.protocol.observation(passages).removesuffix(closing)
            items.append((episode, head, closing + search.notice))
        self.observe(items)

    def observe(self, items: Sequence[tuple[Episode, str, str]]) -> None:
        """Insert `head + tail` into each episode, cut to the observation budget as the protocol
        cuts it (a `passages` cut shortens the head and keeps the tail, the wrapper's closing
        tag and any notice, whole); the heads are tokenised in one call."""
        if not items:
            return
        limit, cut = self.config.max_observation_tokens, self.protocol.observation_cut
        if self.protocol.tokens == "text" and limit is None:
            for episode, head, tail in items:
                episode.completion_text += head + tail
            return
        whole = cut != "passages" or self.protocol.tokens == "text"
        texts = [head + tail if whole else head for _, head, tail in items]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        for (episode, _, tail), ids in zip(items, encoded, strict=True):
            if limit is not None and len(ids) > limit and cut == "tail":
                kept = self.tokenizer.decode(ids[-limit:], skip_special_tokens=True)
                ids = self.tokenizer.encode(kept, add_special_tokens=False)
            elif limit is not None and whole:
                ids = ids[:limit]
            elif not whole:
                tail_ids = self.tokenizer.encode(tail, add_special_tokens=False) if tail else []
                room = len(ids) if limit is None else max(0, limit - len(tail_ids))
                ids = (ids[:room] + tail_ids)[:limit]
            if self.protocol.tokens == "text":
                episode.completion_text += self.tokenizer.decode(ids)
            else:
                episode.add_inserted(ids)


def _room(episode: Episode, config: RolloutConfig) -> int:
    """Ids the model may still sample, keeping one for the final EOS."""
    assert config.max_completion_tokens is not None
    return config.max_completion_tokens - len(episode.completion_ids) - 1


def _check(generation: Generation, budget: int) -> None:
    """The backend contract the token accounting relies on."""
    if len(generation.token_ids) != len(generation.logprobs):
        raise RuntimeError(
            f"generator returned {len(generation.token_ids)} ids "
            f"but {len(generation.logprobs)} log-probabilities"
        )
    if len(generation.token_ids) > budget:
        raise RuntimeError(f"generator returned {len(generation.token_ids)} ids, budget {budget}")


def search_through_outages(
    retriever: Retriever, queries: list[str], k: int, max_wait_s: float
) -> list[list[Passage]]:
    """`retriever.search(queries, k)`, waiting out an outage (`RetrieverUnavailable`) with
    exponential backoff and a warning per wait; `RunStopped` once the next wait would pass
    `max_wait_s` seconds since the first try."""

    def log_wait(state: tenacity.RetryCallState) -> None:
        logger.warning(
            "the retriever is unreachable (%s); waiting %g s for it (%.0f of at most %g s)",
            state.outcome.exception(),
            state.upcoming_sleep,
            state.seconds_since_start,
            max_wait_s,
        )

    def give_up(state: tenacity.RetryCallState) -> None:
        raise RunStopped(
            f"the retriever stayed unreachable for {state.seconds_since_start:.0f} s "
            f"(max_retriever_wait_s={max_wait_s:g}): {state.outcome.exception()}. Nothing was "
            "trained on the failed searches; once the retriever is back, resume the run from its "
            "last checkpoint (--resume_from_checkpoint)"
        ) from state.outcome.exception()

    waiting = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RetrieverUnavailable),
        wait=tenacity.wait_exponential(multiplier=OUTAGE_FIRST_WAIT_S, max=OUTAGE_LONGEST_WAIT_S),
        stop=tenacity.stop_before_delay(max_wait_s),
        before_sleep=log_wait,
        retry_error_callback=give_up,
    )
    return waiting(retriever.search, queries, k)


def encode_prompt(
    prompt: Prompt,
    tokenizer: Any,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    special_tokens: bool | None = None,
) -> list[int]:
    """Prompt ids as the trainer would build them: chat-templated text already holds its special
    tokens; plain text gets the tokenizer's usual ones (e.g. a BOS). A family's loop may do
    otherwise (`special_tokens`: veRL never adds them, a text prompt sent to a server always
    gets them)."""
    templated = not isinstance(prompt, str) and bool(getattr(tokenizer, "chat_template", None))
    text = render_prompt(prompt, tokenizer, chat_template_kwargs)
    add = not templated if special_tokens is None else special_tokens
    return tokenizer.encode(text, add_special_tokens=add)


def run_episodes(
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    prompts: Sequence[Prompt],
    *,
    protocol: Protocol,
    config: RolloutConfig | None = None,
    batch_size: int = 16,
    show_progress: bool = True,
) -> list[Episode]:
    """Episodes for `prompts` without a trainer (evaluation, demos), `batch_size` at a time,
    with any `Generator` (e.g. `TransformersGenerator(model, tokenizer, GenerationConfig(...))`,
    which samples as its config says, or a vLLM one)."""
    config = config or RolloutConfig()
    episodes: list[Episode] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="episodes", unit="batch", disable=not show_progress):
        batch = prompts[start : start + batch_size]
        episodes += run_rollout(
            [encode_prompt(prompt, tokenizer) for prompt in batch],
            generator=generator,
            tokenizer=tokenizer,
            retriever=retriever,
            protocol=protocol,
            config=config,
        )
    return episodes
