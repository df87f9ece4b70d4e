"""The search episode: the model reasons, searches, reads results and answers, turn by turn.

Each turn, every unfinished episode of the batch generates until `</search>`, `</answer>`, EOS or
its token budget. The turn's sampled ids are decoded and parsed (`parse_turn`); all the batch's
queries of that turn go to the retriever in ONE call, and each result is inserted as an
observation before the next turn.

Token accounting is exact, because it is what the policy loss trains on:

- `completion_ids` holds the very ids the backend sampled (never re-tokenised text),
  interleaved with the ids the environment inserted (observations, notices, a final EOS);
- `env_mask` is 1 on every sampled id and 0 on every inserted one (TRL multiplies it into the
  loss mask, so inserted text stays in the attention context but is never trained on);
- `logprobs` holds the sampling log-probabilities of sampled ids, 0.0 on inserted ones.

Rules of an episode:

- Turns: at most `max_turns + 1` model turns. Every turn but the last may search, so at most
  `max_turns` searches run; an invalid step (neither a search nor an answer) also uses a turn,
  as in Search-R1. The observation inserted before the last turn ends with
  `config.final_turn_notice` (ours: `FINAL_TURN_NOTICE`, telling the model it has no searches
  left and must answer). A search asked for in the last turn is not run and the episode ends
  there, unanswered.
- Only the first `<search>` or `<answer>` block of a turn is acted on; ids the backend sampled
  after it (within the stop's own token) stay in the completion as sampled.
- Invalid steps get `protocol.invalid_notice` as an observation (no penalty); so does a turn cut
  off by `max_new_tokens` while completion budget remains. A protocol without a notice
  (ReSearch, R1-Searcher) ends the episode there instead, as its authors' loops do.
- A retriever that cannot be reached (`RetrieverUnavailable`: a remote one, after its own quick
  retries) is waited for, with backoff and a log line per wait, for up to `max_retriever_wait_s`;
  then the rollout raises `RunStopped` naming it, and the run ends (its last checkpoint resumes
  it). No episode ever reads an error where passages should be, so no step trains on an outage.
  Any other exception from the retriever (a bug, a refused request) propagates as it is.
- Observations are cut to `max_observation_tokens` at the end of their passages: the closing tag
  and what follows it are kept whole, so the transcript stays well formed.
- Budgets: each turn may sample `max_new_tokens`, shrunk to what is left of
  `max_completion_tokens` less one id kept for the final EOS. An episode that runs out (or whose
  last turn is cut off by a token budget) is cut to `max_completion_tokens` and marked
  `truncated`, with NO EOS, so TRL counts it as truncated too.
- A `Watcher` (optional) sees each model turn as it is decoded and each search's passages as
  they come back, before the next turn starts: the live views (`research-r1 ask`, the Space)
  watch the same episode that training and evaluation play.
- Finished episodes end with EOS. When the model sampled it, it is a sampled token. When the
  episode ends otherwise (stopped at `</answer>`, or out of turns), the environment appends EOS
  as an inserted token (mask 0: the model did not choose it, so it is not trained on). It is
  there because TRL counts any completion whose last id is not EOS or pad as truncated.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm.auto import tqdm

from research_r1.errors import InputError, RunStopped, invalid
from research_r1.generation import Generation, Generator
from research_r1.protocol import (
    FINAL_TURN_NOTICE,
    Prompt,
    Protocol,
    format_observation,
    parse_turn,
    render_prompt,
)
from research_r1.retrieval import Passage, Retriever, RetrieverUnavailable

logger = logging.getLogger(__name__)

# Waits for an unreachable retriever: 1 s, then doubling, at most a minute between tries.
OUTAGE_FIRST_WAIT_S = 1.0
OUTAGE_LONGEST_WAIT_S = 60.0


@dataclass
class Episode:
    """One prompt's rollout: the token streams the trainer needs and what happened, for rewards
    and logs (`queries[i]` returned the passages `retrieved_ids[i]`)."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    num_searches: int = 0
    queries: list[str] = field(default_factory=list)
    retrieved_ids: list[list[str]] = field(default_factory=list)
    answered: bool = False
    truncated: bool = False
    invalid_steps: int = 0

    def add_sampled(self, generation: Generation) -> None:
        self.completion_ids += generation.token_ids
        self.env_mask += [1] * len(generation.token_ids)
        self.logprobs += generation.logprobs

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
    """How far an episode may go (Search-R1's paper values by default), and how long a search
    waits for a retriever that cannot be reached before the run stops."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    k: int = Field(3, ge=1)
    max_turns: int = Field(4, ge=0)
    max_new_tokens: int = Field(500, ge=1)
    max_observation_tokens: int = Field(500, ge=1)
    max_completion_tokens: int = Field(4096, ge=2)  # one sampled id and the final EOS
    max_retriever_wait_s: float = Field(600.0, ge=0)
    final_turn_notice: str = FINAL_TURN_NOTICE  # "" to evaluate agents trained without it

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as error:
            raise invalid(error, "rollout setting") from error


def run_rollout(
    prompt_ids: Sequence[Sequence[int]],
    *,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    protocol: Protocol,
    config: RolloutConfig,
    watcher: Watcher | None = None,
) -> list[Episode]:
    """Play one episode per prompt, all turns batched; episodes come back in prompt order."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise InputError("the tokenizer has no EOS token; finished episodes must end with one")
    episodes = [Episode(prompt_ids=list(ids)) for ids in prompt_ids]
    active = list(range(len(episodes)))
    for turn in range(config.max_turns + 1):
        last_turn = turn == config.max_turns
        budgets = {row: min(config.max_new_tokens, _room(episodes[row], config)) for row in active}
        for row in active:
            if budgets[row] <= 0:
                episodes[row].cut(config.max_completion_tokens)
        active = [row for row in active if budgets[row] > 0]
        if not active and not getattr(generator, "collective", False):
            break
        contexts = [episodes[row].prompt_ids + episodes[row].completion_ids for row in active]
        generations = generator.generate(
            contexts, [budgets[row] for row in active], protocol.stop_strings
        )
        if len(generations) != len(active):
            raise RuntimeError(f"generator returned {len(generations)} rows for {len(active)}")
        searches: list[tuple[int, str]] = []
        invalid: list[int] = []
        for row, generation in zip(active, generations, strict=True):
            _check(generation, budgets[row])
        # one call for the batch; guarded, as transformers decodes [] as one empty sequence
        texts = (
            tokenizer.batch_decode([g.token_ids for g in generations], skip_special_tokens=False)
            if generations
            else []
        )
        for row, generation, text in zip(active, generations, texts, strict=True):
            if watcher is not None:
                watcher.turn(row, tokenizer.decode(generation.token_ids, skip_special_tokens=True))
            episode = episodes[row]
            episode.add_sampled(generation)
            action = parse_turn(text, protocol)
            if generation.finish == "eos":  # the model ended the episode itself
                episode.answered = action.kind == "answer"
            elif action.kind == "answer":  # stopped at </answer>: the environment ends it
                episode.answered = True
                episode.add_inserted([eos_id])
            elif last_turn:  # out of turns: a search asked for now is not run
                if generation.finish == "length":
                    episode.cut(config.max_completion_tokens)
                else:
                    episode.add_inserted([eos_id])
            elif action.kind == "search":
                searches.append((row, action.content))
            elif generation.finish == "length" and _room(episode, config) <= 0:
                episode.cut(config.max_completion_tokens)  # out of completion budget
            elif protocol.invalid_notice is None:  # the protocol ends such an episode
                if generation.finish == "length":
                    episode.cut(len(episode.completion_ids))
                else:
                    episode.add_inserted([eos_id])
            else:  # an invalid step, or a turn cut off by max_new_tokens
                invalid.append(row)
        notice = config.final_turn_notice if turn + 1 == config.max_turns else ""
        for row in invalid:
            episodes[row].invalid_steps += 1
        _observe(
            [episodes[row] for row in invalid],
            [protocol.invalid_notice] * len(invalid),
            notice,
            tokenizer,
            config,
        )
        _run_searches(searches, episodes, retriever, protocol, tokenizer, config, notice, watcher)
        active = sorted(invalid + [row for row, _ in searches])
    return episodes


def _room(episode: Episode, config: RolloutConfig) -> int:
    """Ids the model may still sample, keeping one for the final EOS."""
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


def _run_searches(
    searches: list[tuple[int, str]],
    episodes: list[Episode],
    retriever: Retriever,
    protocol: Protocol,
    tokenizer: Any,
    config: RolloutConfig,
    notice: str,
    watcher: Watcher | None,
) -> None:
    """Run the turn's queries in one retriever call and insert each result as an observation,
    followed by `notice` (empty unless the next turn is the last)."""
    if not searches:
        return
    queries = [query for _, query in searches]
    results = search_through_outages(retriever, queries, config.k, config.max_retriever_wait_s)
    if len(results) != len(queries):
        raise RuntimeError(f"retriever returned {len(results)} result lists for {len(queries)}")
    closing = protocol.observation_format.split("{passages}")[-1]
    heads = []
    for (row, query), passages in zip(searches, results, strict=True):
        if watcher is not None:
            watcher.searched(row, query, passages)
        episode = episodes[row]
        episode.num_searches += 1
        episode.queries.append(query)
        episode.retrieved_ids.append([passage.id for passage in passages])
        heads.append(format_observation(passages, protocol).removesuffix(closing))
    _observe([episodes[row] for row, _ in searches], heads, closing + notice, tokenizer, config)


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


def _observe(
    episodes: Sequence[Episode],
    heads: Sequence[str],
    tail: str,
    tokenizer: Any,
    config: RolloutConfig,
) -> None:
    """Insert `head + tail` into each episode, cutting the end of its head to fit
    `max_observation_tokens`; the heads are tokenised in one call."""
    if not episodes:
        return
    limit = config.max_observation_tokens
    tail_ids = tokenizer.encode(tail, add_special_tokens=False) if tail else []
    for episode, head_ids in zip(
        episodes, tokenizer(list(heads), add_special_tokens=False)["input_ids"], strict=True
    ):
        ids = head_ids[: max(0, limit - len(tail_ids))] + tail_ids
        episode.add_inserted(ids[:limit])


def encode_prompt(
    prompt: Prompt, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None
) -> list[int]:
    """Prompt ids as the trainer would build them: chat-templated text already holds its special
    tokens; plain text gets the tokenizer's usual ones (e.g. a BOS)."""
    templated = not isinstance(prompt, str) and bool(getattr(tokenizer, "chat_template", None))
    text = render_prompt(prompt, tokenizer, chat_template_kwargs)
    return tokenizer.encode(text, add_special_tokens=not templated)


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
