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
  as in Search-R1. The observation inserted before the last turn ends with `FINAL_TURN_NOTICE`,
  telling the model it has no searches left and must answer. A search asked for in the last
  turn is not run and the episode ends there, unanswered.
- Only the first `<search>` or `<answer>` block of a turn is acted on; ids the backend sampled
  after it (within the stop's own token) stay in the completion as sampled.
- Invalid steps get `protocol.invalid_notice` as an observation (no penalty); so does a turn cut
  off by `max_new_tokens` while completion budget remains.
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
- Finished episodes end with EOS. When the model sampled it, it is a sampled token. When the
  episode ends otherwise (stopped at `</answer>`, or out of turns), the environment appends EOS
  as an inserted token (mask 0: the model did not choose it, so it is not trained on). It is
  there because TRL counts any completion whose last id is not EOS or pad as truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import tenacity

from research_r1.errors import InputError, RunStopped
from research_r1.generation import Generation, Generator, TransformersGenerator
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


@dataclass(frozen=True)
class RolloutConfig:
    """How far an episode may go (Search-R1's paper values by default), and how long a search
    waits for a retriever that cannot be reached before the run stops."""

    k: int = 3
    max_turns: int = 4
    max_new_tokens: int = 500
    max_observation_tokens: int = 500
    max_completion_tokens: int = 4096
    max_retriever_wait_s: float = 600.0

    def __post_init__(self) -> None:
        minimums = {
            "k": 1,
            "max_turns": 0,
            "max_new_tokens": 1,
            "max_observation_tokens": 1,
            "max_completion_tokens": 2,  # one sampled id and the final EOS
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise InputError(f"rollout setting {name} must be >= {minimum}")
        if self.max_retriever_wait_s < 0:
            raise InputError("rollout setting max_retriever_wait_s must be >= 0")


def run_rollout(
    prompt_ids: Sequence[Sequence[int]],
    *,
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    protocol: Protocol,
    config: RolloutConfig,
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
            episode = episodes[row]
            episode.add_sampled(generation)
            action = parse_turn(text)
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
            else:  # an invalid step, or a turn cut off by max_new_tokens
                invalid.append(row)
        notice = FINAL_TURN_NOTICE if turn + 1 == config.max_turns else ""
        for row in invalid:
            episodes[row].invalid_steps += 1
        _observe(
            [episodes[row] for row in invalid],
            [protocol.invalid_notice] * len(invalid),
            notice,
            tokenizer,
            config,
        )
        _run_searches(searches, episodes, retriever, protocol, tokenizer, config, notice)
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


def episodes_to_trl(episodes: Sequence[Episode]) -> dict[str, list]:
    """The dict a TRL `rollout_func` returns: one list per field, one entry per episode.

    Besides `prompt_ids`, `completion_ids`, `logprobs` and `env_mask`, every per-episode field
    (`num_searches`, `queries`, `retrieved_ids`, `answered`, `truncated`, `invalid_steps`)
    reaches the reward functions as a keyword argument.
    """
    rows = [asdict(episode) for episode in episodes]
    return {f.name: [row[f.name] for row in rows] for f in fields(Episode)}


def encode_prompt(
    prompt: Prompt, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None
) -> list[int]:
    """Prompt ids as the trainer would build them: chat-templated text already holds its special
    tokens; plain text gets the tokenizer's usual ones (e.g. a BOS)."""
    templated = not isinstance(prompt, str) and bool(getattr(tokenizer, "chat_template", None))
    text = render_prompt(prompt, tokenizer, chat_template_kwargs)
    return tokenizer.encode(text, add_special_tokens=not templated)


def make_rollout_func(
    retriever: Retriever,
    protocol: Protocol,
    *,
    k: int = 3,
    max_turns: int = 4,
    max_new_tokens: int = 500,
    max_observation_tokens: int = 500,
    max_retriever_wait_s: float = 600.0,
    generate_batch_size: int = 16,
) -> Callable[[list, Any], dict[str, list]]:
    """A TRL 1.16 `rollout_func(prompts, trainer)` that plays search episodes.

    `prompts` arrive already repeated `num_generations` times; each is chat-templated with the
    trainer's `processing_class` and its `chat_template_kwargs`, and played as one episode, in
    order. Completions are capped at
    `trainer.args.max_completion_length` (TRL does not cut them). Generation comes from vLLM
    when the trainer uses it (colocate or server, see `research_r1.generation_vllm`), else from
    the trainer's own model through transformers, `generate_batch_size` rows at a time, with
    the trainer's sampling settings.
    """

    def rollout_func(prompts: list, trainer: Any) -> dict[str, list]:
        tokenizer = trainer.processing_class
        config = RolloutConfig(
            k=k,
            max_turns=max_turns,
            max_new_tokens=max_new_tokens,
            max_observation_tokens=max_observation_tokens,
            max_completion_tokens=trainer.args.max_completion_length,
            max_retriever_wait_s=max_retriever_wait_s,
        )
        template_kwargs = trainer.args.chat_template_kwargs
        prompt_ids = [encode_prompt(prompt, tokenizer, template_kwargs) for prompt in prompts]
        play = dict(tokenizer=tokenizer, retriever=retriever, protocol=protocol, config=config)
        if trainer.args.use_vllm:
            from research_r1.generation_vllm import vllm_generator_for

            episodes = run_rollout(prompt_ids, generator=vllm_generator_for(trainer), **play)
        else:
            from trl.models import unwrap_model_for_generation

            with unwrap_model_for_generation(
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                generation_kwargs=trainer.generation_kwargs,
                gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
            ) as model:
                generator = TransformersGenerator(
                    model, tokenizer, trainer.generation_config, batch_size=generate_batch_size
                )
                episodes = run_rollout(prompt_ids, generator=generator, **play)
        log_rollout_metrics(trainer, episodes, protocol)
        return episodes_to_trl(episodes)

    return rollout_func


def log_rollout_metrics(trainer: Any, episodes: Sequence[Episode], protocol: Protocol) -> None:
    """Record the batch's episode statistics in TRL's metrics, logged with the reward and KL.

    Values are gathered over processes, then averaged per logging step by the trainer:
    `rollout/searches_per_episode`, `rollout/answered_rate`, `rollout/truncated_rate`,
    `rollout/invalid_steps_per_episode`, `rollout/valid_format_rate` (the rewards' grammar
    check, on the text the rewards read) and `rollout/masked_token_share` (inserted ids over all
    completion ids, i.e. what the loss skips).
    """
    import torch

    from research_r1.rewards import follows_search_r1_format, is_valid_research_sequence

    valid_format = {
        "search_r1": follows_search_r1_format,
        "research": is_valid_research_sequence,
    }
    check = valid_format[protocol.name]
    texts = trainer.processing_class.batch_decode(
        [episode.completion_ids for episode in episodes], skip_special_tokens=True
    )
    rows = [
        [
            episode.num_searches,
            episode.answered,
            episode.truncated,
            episode.invalid_steps,
            check(text)[0],
            len(episode.env_mask) - sum(episode.env_mask),
            len(episode.env_mask),
        ]
        for episode, text in zip(episodes, texts, strict=True)
    ]
    local = torch.tensor(rows, dtype=torch.float32, device=trainer.accelerator.device)
    stats = trainer.accelerator.gather(local).reshape(-1, 7)
    names = (
        "searches_per_episode",
        "answered_rate",
        "truncated_rate",
        "invalid_steps_per_episode",
        "valid_format_rate",
    )
    means = stats[:, : len(names)].mean(dim=0).tolist()
    metrics = trainer._metrics["train" if trainer.model.training else "eval"]
    for name, value in zip(names, means, strict=True):
        metrics[f"rollout/{name}"].append(value)
    metrics["rollout/masked_token_share"].append((stats[:, 5].sum() / stats[:, 6].sum()).item())


def run_episodes(
    model_or_generator: Any,
    tokenizer: Any,
    retriever: Retriever,
    prompts: Sequence[Prompt],
    *,
    protocol: Protocol,
    config: RolloutConfig | None = None,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    show_progress: bool = True,
) -> list[Episode]:
    """Episodes for `prompts` without a trainer (evaluation, demos), `batch_size` at a time.

    `model_or_generator` is a transformers causal LM, greedy by default or sampled with the
    given settings (anything else, e.g. a repetition penalty, comes from the model's generation
    config), or any `Generator`, e.g. a vLLM one, which brings its own sampling settings.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if isinstance(model_or_generator, torch.nn.Module):
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
        generator: Generator = TransformersGenerator(
            model_or_generator,
            tokenizer,
            GenerationConfig(do_sample=do_sample, **sampling),
            batch_size=batch_size,
        )
    else:
        generator = model_or_generator
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
