"""The offline vLLM backend on a real engine: ids, log-probabilities, finish reasons, stop strings
and per-row budgets, checked against transformers running the same weights."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from research_r1.errors import InputError
from research_r1.generation import Generation
from research_r1.generation_vllm import (
    VLLMGenerator,
    to_generation,
    vllm_generator_for,
)
from research_r1.protocol import SEARCH_R1
from research_r1.retrieval import Passage

TOLERANCE = 1e-3
STOP = list(SEARCH_R1.stop_strings)


def assert_logprobs_match(tiny, context: list[int], generation: Generation) -> None:
    assert len(generation.logprobs) == len(generation.token_ids)
    expected = tiny.logprobs(context, generation.token_ids)
    assert generation.logprobs == pytest.approx(expected, abs=TOLERANCE)


def test_to_generation_reads_stop_eos_and_length_from_real_outputs(llm, tiny):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    greedy = dict(temperature=0.0, logprobs=0)
    requests = [
        (tiny.search_prompt, SamplingParams(max_tokens=20, stop=STOP, **greedy)),
        (tiny.search_prompt, SamplingParams(max_tokens=20, **greedy)),
        (tiny.long_prompt, SamplingParams(max_tokens=6, stop=STOP, **greedy)),
    ]
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids, _ in requests],
        [params for _, params in requests],
        use_tqdm=False,
    )
    completions = [output.outputs[0] for output in outputs]
    assert [(c.finish_reason, c.stop_reason) for c in completions] == [
        ("stop", "</search>"),
        ("stop", None),
        ("length", None),
    ]

    generations = [to_generation(completion) for completion in completions]
    searched = tiny.greedy(tiny.search_prompt, 20)  # a token, <search>, a token, </search>, EOS
    assert searched[-1] == tiny.tokenizer.eos_token_id
    assert [g.token_ids for g in generations] == [
        searched[:4],
        searched,
        tiny.greedy(tiny.long_prompt, 6),
    ]
    assert [g.finish for g in generations] == ["stop", "eos", "length"]
    for (context, _), generation in zip(requests, generations, strict=True):
        assert_logprobs_match(tiny, context, generation)


def test_to_generation_refuses_an_output_without_logprobs(llm, tiny):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    [output] = llm.generate(
        [TokensPrompt(prompt_token_ids=tiny.long_prompt)],
        SamplingParams(max_tokens=2, temperature=0.0),
        use_tqdm=False,
    )
    with pytest.raises(ValueError, match=r"logprobs=0"):
        to_generation(output.outputs[0])


def test_greedy_generation_equals_transformers_and_ends_at_eos(llm, tiny):
    [generation] = VLLMGenerator(llm, temperature=0.0).generate([tiny.search_prompt], [20], [])

    assert generation.token_ids == tiny.greedy(tiny.search_prompt, 20)
    assert generation.token_ids[-1] == tiny.tokenizer.eos_token_id
    assert generation.finish == "eos"
    assert_logprobs_match(tiny, tiny.search_prompt, generation)


def test_a_stop_string_ends_the_turn_right_after_its_first_occurrence(llm, tiny):
    """A multi-character stop string taken from the model's own greedy text, so it does occur."""
    greedy = tiny.greedy(tiny.long_prompt, 24)
    decode = tiny.tokenizer.decode
    stop = next(
        text
        for token in greedy[3:]
        if (text := decode([token])).isascii() and text.isprintable() and len(text.strip()) > 1
    )
    end = next(k for k in range(1, len(greedy) + 1) if stop in decode(greedy[:k]))

    [generation] = VLLMGenerator(llm, temperature=0.0).generate(
        [tiny.long_prompt], [24], [stop, "</never>"]
    )

    assert end > 1
    assert generation.token_ids == greedy[:end]
    assert decode(generation.token_ids).endswith(stop)
    assert generation.finish == "stop"


def test_each_row_keeps_its_own_token_budget(llm, tiny):
    greedy = tiny.greedy(tiny.long_prompt, 9)

    generations = VLLMGenerator(llm, temperature=0.0).generate(
        [tiny.long_prompt] * 3, [1, 4, 9], STOP
    )

    assert [g.token_ids for g in generations] == [greedy[:1], greedy[:4], greedy]
    assert [g.finish for g in generations] == ["length"] * 3


def test_sampled_logprobs_equal_transformers_and_seeds_differ_per_row(llm, tiny):
    contexts = [tiny.long_prompt, tiny.long_prompt, tiny.search_prompt]
    budgets = [12, 12, 6]

    generations = VLLMGenerator(llm, temperature=1.0, seed=1234).generate(contexts, budgets, STOP)
    again = VLLMGenerator(llm, temperature=1.0, seed=1234).generate(contexts, budgets, STOP)

    assert again == generations
    assert generations[0].token_ids != generations[1].token_ids
    for context, budget, generation in zip(contexts, budgets, generations, strict=True):
        assert 1 <= len(generation.token_ids) <= budget
        assert_logprobs_match(tiny, context, generation)


def test_bad_batches_are_refused_before_reaching_vllm(llm, tiny):
    generator = VLLMGenerator(llm)

    assert generator.generate([], [], STOP) == []
    with pytest.raises(ValueError, match="2 contexts but 1 token budgets"):
        generator.generate([tiny.long_prompt, tiny.long_prompt], [4], STOP)
    with pytest.raises(ValueError, match="context 1 has a token budget of 0"):
        generator.generate([tiny.long_prompt, tiny.long_prompt], [4, 0], STOP)
    with pytest.raises(ValueError, match="context 0 is empty"):
        generator.generate([[]], [4], STOP)


def grpo_trainer_view(llm, tmp_path, **overrides):
    """What `vllm_generator_for` reads from a GRPOTrainer in colocate mode, around a real config."""
    from trl import GRPOConfig

    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        use_vllm=True,
        vllm_mode="colocate",
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        repetition_penalty=1.1,
        generation_kwargs={"presence_penalty": 0.5},
    )
    args = GRPOConfig(**{**settings, **overrides})
    return SimpleNamespace(args=args, vllm_generation=SimpleNamespace(llm=llm))


def test_vllm_generator_for_a_colocated_trainer_samples_as_its_config_says(llm, tiny, tmp_path):
    generator = vllm_generator_for(grpo_trainer_view(llm, tmp_path))

    assert isinstance(generator, VLLMGenerator)
    assert generator.llm is llm
    assert generator.sampling == {
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "min_p": 0.0,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
    }
    [generation] = generator.generate([tiny.long_prompt], [5], STOP)
    assert len(generation.token_ids) == len(generation.logprobs) >= 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"use_vllm": False}, "use_vllm is False"),
        ({"vllm_tensor_parallel_size": 2}, "vllm_tensor_parallel_size > 1"),
        ({"vllm_enable_sleep_mode": True}, "vllm_enable_sleep_mode"),
    ],
)
def test_vllm_generator_for_refuses_unsupported_setups(llm, tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        vllm_generator_for(grpo_trainer_view(llm, tmp_path, **overrides))


class FixedRetriever:
    """Two made-up passages per query, the same every time."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        return [
            [Passage(f"{q}#{i}", f"hamlet\nshakespeare wrote {q}", 1.0) for i in range(k)]
            for q in queries
        ]


def test_search_episodes_with_vllm_equal_the_transformers_backend(llm, tiny):
    """The whole rollout, greedy: the same ids, masks and log-probabilities from both backends."""
    from transformers import GenerationConfig

    from research_r1.generation import TransformersGenerator
    from research_r1.rollout import RolloutConfig, run_episodes

    prompts = [tiny.tokenizer.decode(tiny.search_prompt), tiny.tokenizer.decode(tiny.long_prompt)]
    config = RolloutConfig(
        k=2, max_turns=2, max_new_tokens=12, max_observation_tokens=40, max_completion_tokens=96
    )
    play = dict(protocol=SEARCH_R1, config=config, show_progress=False)

    greedy = TransformersGenerator(tiny.model, tiny.tokenizer, GenerationConfig(do_sample=False))
    expected = run_episodes(greedy, tiny.tokenizer, FixedRetriever(), prompts, **play)
    episodes = run_episodes(
        VLLMGenerator(llm, temperature=0.0), tiny.tokenizer, FixedRetriever(), prompts, **play
    )

    assert expected[0].num_searches >= 1
    assert 0 in expected[0].env_mask and 1 in expected[0].env_mask
    for mine, theirs in zip(episodes, expected, strict=True):
        assert mine.prompt_ids == theirs.prompt_ids
        assert mine.completion_ids == theirs.completion_ids
        assert mine.env_mask == theirs.env_mask
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=TOLERANCE)
        assert (mine.queries, mine.answered, mine.truncated, mine.invalid_steps) == (
            theirs.queries,
            theirs.answered,
            theirs.truncated,
            theirs.invalid_steps,
        )


def test_the_engine_stepped_directly_plays_the_episodes_generate_plays(llm, tiny):
    """`VLLMGenerator` as an `Engine` (add_request / step on the engine itself): the continuous
    scheduler's greedy episodes equal the turn-synchronous ones over `generate`, and nothing is
    left in the engine afterwards."""
    from research_r1.rollout import RolloutConfig, run_rollout, run_rollout_continuous

    prompts = [tiny.search_prompt, tiny.long_prompt, tiny.search_prompt[:-1]]
    config = RolloutConfig(
        k=2, max_turns=2, max_new_tokens=12, max_observation_tokens=40, max_completion_tokens=96
    )
    play = dict(tokenizer=tiny.tokenizer, protocol=SEARCH_R1, config=config)
    generator = VLLMGenerator(llm, temperature=0.0)
    turn = run_rollout(prompts, generator=generator, retriever=FixedRetriever(), **play)
    continuous = run_rollout_continuous(
        prompts, engine=generator, retriever=FixedRetriever(), **play
    )

    assert turn[0].num_searches >= 1
    for mine, theirs in zip(continuous, turn, strict=True):
        assert mine.completion_ids == theirs.completion_ids
        assert mine.env_mask == theirs.env_mask
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=TOLERANCE)
        assert (mine.queries, mine.answered, mine.finish) == (
            theirs.queries,
            theirs.answered,
            theirs.finish,
        )
    assert not llm.llm_engine.has_unfinished_requests() and not generator._keys


def prompt_of_length(tokenizer, low: int, high: int) -> str:
    """Words of the tiny model's texts, enough for `low` to `high` prompt ids."""
    words = ["paris", "is", "the", "capital", "of", "france"]
    text = ""
    while len(tokenizer.encode(text)) < low:
        text += words[len(text.split()) % len(words)] + " "
    assert len(tokenizer.encode(text)) <= high
    return text


@pytest.mark.parametrize("scheduler", ["turn", "continuous"])
def test_a_later_turn_reports_the_block_aligned_prefix_the_engine_had_cached(
    llm, tiny, tmp_path, scheduler
):
    """Two-turn episodes through `rollout_func` on the colocated engine (its default settings,
    as TRL's: prefix caching on, stats off): a turn's context is the previous call's context
    and sampled ids plus an inserted text, and vLLM serves the full KV blocks it computed for
    them (every id but the last sampled one) from its cache. The first prompt is shorter than a
    block, so its hit exists only if the engine reused the sampled turn's blocks; the second
    prompt and turn never fill a block. The hit rate reaches the episode metrics."""
    from research_r1.training.trl_rollout import make_episode_metrics, make_rollout_func

    block = llm.llm_engine.vllm_config.cache_config.block_size
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    turn = 16  # ids per model turn: one allowed token, so every turn runs to its budget
    assert block >= 4 * turn
    prompts = [
        prompt_of_length(tiny.tokenizer, block - turn + 4, block - 1),
        prompt_of_length(tiny.tokenizer, turn, block // 2),
    ]
    filler = tiny.tokenizer.encode("paris", add_special_tokens=False)[0]
    trainer = grpo_trainer_view(
        llm, tmp_path, max_completion_length=400, generation_kwargs={"allowed_token_ids": [filler]}
    )
    trainer.processing_class = tiny.tokenizer
    rollout_func = make_rollout_func(
        FixedRetriever(), SEARCH_R1, max_turns=1, max_new_tokens=turn, scheduler=scheduler
    )
    assert llm.reset_prefix_cache()  # as TRL does after each weight sync
    columns = rollout_func(prompts, trainer)

    # turn 1 cut at its budget, the invalid-step notice inserted, turn 2 cut: the second call
    # saw the prompt and everything but the last turn
    lengths = [len(ids) for ids in columns["prompt_ids"]]
    completions = columns.pop("completion_ids")
    for mask in columns["env_mask"]:
        assert mask[:turn] == mask[-turn:] == [1] * turn and 0 in mask
    assert columns["context_tokens"] == [
        2 * length + len(completion) - turn
        for length, completion in zip(lengths, completions, strict=True)
    ]
    expected = [block * ((length + turn - 1) // block) for length in lengths]
    assert expected == [block, 0]
    assert columns["cached_tokens"] == expected

    logged: dict[str, float] = {}
    make_episode_metrics(SEARCH_R1)(
        prompts,
        tiny.tokenizer.batch_decode(completions),
        completions,
        golden_answers=[["x"], ["x"]],
        log_metric=logged.__setitem__,
        **columns,
    )
    assert logged["rollout/prefix_cache_hit_rate"] == block / sum(columns["context_tokens"])
