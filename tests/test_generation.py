"""The transformers backend (research_r1.generation): sampling from the tiny model, with the
sampling log-probabilities, stop strings matched as upstream's vLLM matches them, and the
episodes it plays with consistent masks and log-probabilities."""

from __future__ import annotations

from itertools import groupby

import pytest
import torch
from helpers import RecordingRetriever
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from research_r1.generation import TransformersGenerator
from research_r1.generators import Generation
from research_r1.protocol import SEARCH_R1
from research_r1.rollout import RolloutConfig, run_episodes
from research_r1.tiny import EOS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


@pytest.fixture(scope="module")
def model(tiny_dir, tokenizer):
    """The tiny model, pushed to write tags and EOS often so every turn ending occurs."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    bias = torch.zeros(model.config.vocab_size)
    for token in ("<search>", "</search>", "<answer>", "</answer>", EOS):
        bias[tokenizer.convert_tokens_to_ids(token)] = 4.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


def reference_logprobs(model, context: list[int], sampled: list[int], temperature: float):
    """log_softmax(logits / T) at the sampled ids, from one forward pass over the sequence."""
    with torch.no_grad():
        logits = model(torch.tensor([context + sampled])).logits[0, len(context) - 1 : -1]
    scores = (logits / temperature).log_softmax(-1)
    return scores.gather(1, torch.tensor(sampled)[:, None]).squeeze(1)


def test_transformers_backend_returns_sampling_logprobs_and_honours_stops(model, tokenizer):
    from transformers import GenerationConfig

    torch.manual_seed(0)
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0)
    generator = TransformersGenerator(model, tokenizer, config, batch_size=4)
    contexts = [encode(tokenizer, f"Question {i}\n")[: 2 + i % 3] for i in range(10)]
    budgets = [12, 20, 0, 5, 20, 16, 20, 3, 20, 20]
    generations = generator.generate(contexts, budgets, SEARCH_R1.stop_strings)

    finishes = [g.finish for g in generations]
    assert {"stop", "eos", "length"} <= set(finishes)
    assert generations[2] == Generation([], [], "length")
    for context, budget, generation in zip(contexts, budgets, generations, strict=True):
        ids = generation.token_ids
        assert len(ids) <= budget and len(generation.logprobs) == len(ids)
        has_stop = [
            any(s in tokenizer.decode(ids[:n]) for s in SEARCH_R1.stop_strings)
            for n in range(len(ids) + 1)
        ]
        eos_at = [n for n, token in enumerate(ids) if token == tokenizer.eos_token_id]
        if generation.finish == "stop":
            assert has_stop[-1] and not has_stop[-2] and not eos_at
        elif generation.finish == "eos":
            assert eos_at == [len(ids) - 1] and not any(has_stop)
        else:
            assert len(ids) == budget and not any(has_stop) and not eos_at
        if ids:
            expected = reference_logprobs(model, list(context), ids, 0.7)
            assert torch.allclose(torch.tensor(generation.logprobs), expected, atol=1e-4)


def test_transformers_backend_matches_stop_strings_in_generated_text_without_special_tokens(
    model, tokenizer
):
    """As upstream's vLLM matches them: a stop string begun in the context does not count, nor
    does the text of a special token that is not an EOS id."""
    bias = model.lm_head.bias.data.clone()
    generator = TransformersGenerator(model, tokenizer, GenerationConfig(do_sample=False))
    context = encode(tokenizer, "Question")
    try:
        for token, stop, finish, length in [
            ("</search>", "</search>", "stop", 1),
            ("</search>", "Question</search>", "length", 3),  # "Question" is the context's
            ("<|pad|>", "<|pad|>", "length", 3),  # a special token: its text is left out
        ]:
            model.lm_head.bias.data.zero_()
            model.lm_head.bias.data[tokenizer.convert_tokens_to_ids(token)] = 100.0
            [generation] = generator.generate([context], [3], [stop])
            assert generation.finish == finish
            assert tokenizer.convert_ids_to_tokens(generation.token_ids) == [token] * length
    finally:
        model.lm_head.bias.data.copy_(bias)


def test_transformers_episodes_have_consistent_masks_and_logprobs(model, tokenizer):
    torch.manual_seed(1)
    retriever = RecordingRetriever()
    prompts = [f"Question {i}\n" for i in range(6)]
    config = RolloutConfig(k=1, max_turns=2, max_new_tokens=10, max_completion_tokens=60)
    sampling = GenerationConfig(do_sample=True, temperature=0.7, top_p=1.0, top_k=0)
    episodes = run_episodes(
        TransformersGenerator(model, tokenizer, sampling, batch_size=6),
        tokenizer,
        retriever,
        prompts,
        protocol=SEARCH_R1,
        config=config,
        batch_size=6,
        show_progress=False,
    )
    assert len(retriever.calls) <= 2 and sum(e.num_searches for e in episodes) > 0
    assert any(0 in e.env_mask for e in episodes) and any(e.answered for e in episodes)
    # transformers has no prefix cache to report on: None, never a made-up 0
    assert all(e.context_tokens >= len(e.prompt_ids) > 0 for e in episodes)
    assert all(e.cached_tokens is None for e in episodes)
    eos = tokenizer.eos_token_id
    for episode in episodes:
        ids, mask, logprobs = episode.completion_ids, episode.env_mask, episode.logprobs
        assert len(ids) == len(mask) == len(logprobs) <= 60
        assert episode.truncated == (ids[-1] != eos)
        assert all(lp == 0.0 for lp, m in zip(logprobs, mask, strict=True) if not m)
        sampled = [n for n, m in enumerate(mask) if m]
        full = reference_logprobs(model, episode.prompt_ids, ids, 0.7)
        assert torch.allclose(torch.tensor(logprobs)[sampled], full[sampled], atol=1e-4)
        # Each run of sampled ids is one turn: a stop string can only complete at its end.
        for is_sampled, run in groupby(zip(ids, mask, strict=True), key=lambda pair: pair[1]):
            if is_sampled:
                turn = [token for token, _ in run]
                assert not any(s in tokenizer.decode(turn[:-1]) for s in SEARCH_R1.stop_strings)
