"""The search episode inside TRL 1.16's GRPOTrainer: its `rollout_func` and the episode metrics.

TRL's `rollout_func` and `env_mask` are experimental and have changed between minor releases, so
everything that depends on them lives here, and TRL is pinned to the minor version the tests run
against. The rollout itself (`research_r1.rollout`) knows nothing of TRL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from typing import Any, Literal

from trl.models import unwrap_model_for_generation

from research_r1.generation import TransformersGenerator
from research_r1.generation_vllm import vllm_engine_for, vllm_generator_for
from research_r1.generators import BatchEngine
from research_r1.protocol import Protocol, extract_answer, follows_format
from research_r1.retrieval import Retriever
from research_r1.rewards import completion_text, exact_match
from research_r1.rollout import (
    Episode,
    RolloutConfig,
    encode_prompt,
    run_rollout,
    run_rollout_continuous,
)

RolloutFunc = Callable[[list, Any], dict[str, list]]


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
    scheduler: Literal["turn", "continuous"] = "turn",
) -> RolloutFunc:
    """A TRL `rollout_func(prompts, trainer)` that plays search episodes.

    `prompts` arrive already repeated `num_generations` times; each is chat-templated with the
    trainer's `processing_class` and its `chat_template_kwargs`, and played as one episode, in
    order. Completions are capped at `trainer.args.max_completion_length` (TRL does not cut
    them). Generation comes from vLLM when the trainer uses it (colocate or server, see
    `research_r1.generation_vllm`), else from the trainer's own model through transformers,
    `generate_batch_size` rows at a time, with the trainer's sampling settings.

    `scheduler` picks how episodes are played (`research_r1.rollout`): `turn`, all episodes turn
    by turn, or `continuous`, each episode on its own, over vLLM's engine stepped directly
    (colocate) or one request per episode turn to the server from each rank (server mode). With
    transformers, `continuous` runs over `BatchEngine` (transformers' own continuous batching
    runs on a CPU but took 70-85 s for what `generate` does in 0.9 s, measured on the demo's
    model), so an episode waits only for its own search but decodes with its turn's batch.
    """
    engines: dict[str, Any] = {}  # the server-mode engine, built once: it asks rank 0 its address

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
        if trainer.args.use_vllm and scheduler == "continuous":
            if "vllm" not in engines:
                engines["vllm"] = vllm_engine_for(trainer)
            episodes = run_rollout_continuous(prompt_ids, engine=engines["vllm"], **play)
            return episodes_to_trl(episodes)
        if trainer.args.use_vllm:
            return episodes_to_trl(
                run_rollout(prompt_ids, generator=vllm_generator_for(trainer), **play)
            )
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
            if scheduler == "continuous":
                engine = BatchEngine(generator)
                return episodes_to_trl(run_rollout_continuous(prompt_ids, engine=engine, **play))
            return episodes_to_trl(run_rollout(prompt_ids, generator=generator, **play))

    return rollout_func


def episodes_to_trl(episodes: Sequence[Episode]) -> dict[str, list]:
    """The dict a TRL `rollout_func` returns: one list per field, one entry per episode.

    Besides `prompt_ids`, `completion_ids`, `logprobs` and `env_mask`, every per-episode field
    (`num_searches`, `queries`, `retrieved_ids`, `answered`, `truncated`, `invalid_steps`,
    `context_tokens`, `cached_tokens`) and `inserted_tokens` (how many completion ids the
    environment inserted) reach the reward functions as keyword arguments.
    """
    rows = [asdict(episode) for episode in episodes]
    columns = {f.name: [row[f.name] for row in rows] for f in fields(Episode)}
    columns["inserted_tokens"] = [len(e.env_mask) - sum(e.env_mask) for e in episodes]
    return columns


def prefix_cache_hit_rate(
    context_tokens: Sequence[int], cached_tokens: Sequence[int | None]
) -> float | None:
    """The share of the ids sent to the engine that its prefix cache served, over a batch of
    episodes; None when nothing was sent or the backend did not report hits for every episode
    that sent some (transformers, vLLM server mode), so that no made-up 0 is logged. An episode
    that made no call (a budget ended it first) reports nothing and counts for nothing."""
    sent = [(ids, cached) for ids, cached in zip(context_tokens, cached_tokens, strict=True) if ids]
    if not sent or any(cached is None for _, cached in sent):
        return None
    return sum(cached for _, cached in sent) / sum(ids for ids, _ in sent)


def make_episode_metrics(protocol: Protocol) -> Callable[..., list[float]]:
    """A reward function named `em`, added to every run with weight 0: it returns the exact match
    of each final answer, so the logs show `rewards/em/mean` whatever the run trains on, and
    reports the batch's episodes through TRL's `log_metric`, averaged per logging step (and over
    processes): `rollout/searches_per_episode`, `rollout/answered_rate`,
    `rollout/truncated_rate`, `rollout/invalid_steps_per_episode`, `rollout/valid_format_rate`
    (the rewards' grammar check on the text they read), `rollout/masked_token_share`
    (inserted ids over all completion ids, i.e. what the loss skips) and, where the backend
    reports it (vLLM in process), `rollout/prefix_cache_hit_rate` (`prefix_cache_hit_rate`)."""

    def em(
        prompts: list,
        completions: list,
        completion_ids: list[list[int]],
        *,
        golden_answers: list,
        num_searches: list[int],
        answered: list[bool],
        truncated: list[bool],
        invalid_steps: list[int],
        inserted_tokens: list[int],
        context_tokens: list[int] | None = None,
        cached_tokens: list[int | None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        texts = [completion_text(completion) for completion in completions]
        if log_metric is not None:
            count = len(texts)
            log_metric("rollout/searches_per_episode", sum(num_searches) / count)
            log_metric("rollout/answered_rate", sum(answered) / count)
            log_metric("rollout/truncated_rate", sum(truncated) / count)
            log_metric("rollout/invalid_steps_per_episode", sum(invalid_steps) / count)
            valid = sum(follows_format(text, protocol)[0] for text in texts)
            log_metric("rollout/valid_format_rate", valid / count)
            total = sum(len(ids) for ids in completion_ids)
            log_metric("rollout/masked_token_share", sum(inserted_tokens) / max(1, total))
            reported = context_tokens is not None and cached_tokens is not None
            hit_rate = prefix_cache_hit_rate(context_tokens, cached_tokens) if reported else None
            if hit_rate is not None:
                log_metric("rollout/prefix_cache_hit_rate", hit_rate)
        return [
            exact_match(extract_answer(text, protocol), gold)
            for text, gold in zip(texts, golden_answers, strict=True)
        ]

    return em
