"""The rollout inside TRL (research_r1.training.trl_rollout): the episodes as TRL's columns, the
episode metrics logged through `log_metric`, and a real GRPOTrainer step, where the loss never
trains on inserted tokens, the per-episode fields reach the reward functions, and the step
updates the weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from helpers import RecordingRetriever, Scripted
from transformers import AutoModelForCausalLM, AutoTokenizer

from research_r1.protocol import RESEARCH, SEARCH_R1, TEMPLATES
from research_r1.rollout import FINAL_TURN_NOTICE, Episode, encode_prompt
from research_r1.tiny import build_tiny_model, build_tokenizer
from research_r1.training.trl_rollout import (
    episodes_to_trl,
    make_episode_metrics,
    make_rollout_func,
    prefix_cache_hit_rate,
)

QUESTIONS = ["who wrote hamlet?", "capital of france?"]


pytestmark = pytest.mark.usefixtures("one_thread")


def episode(tokenizer, parts: list[tuple[str, int]], **fields) -> Episode:
    """An episode from (text, 1 = sampled / 0 = inserted) parts."""
    result = Episode(prompt_ids=[0], **fields)
    for text, sampled in parts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        result.completion_ids += ids
        result.env_mask += [sampled] * len(ids)
    return result


def score_episodes(tokenizer, episodes: list[Episode], protocol, golds: list[list[str]]):
    """Call the episode metrics as GRPOTrainer does (decoded completions, the rollout's
    fields, `log_metric`); returns the EM values and what was logged."""
    logged: dict[str, float] = {}
    columns = episodes_to_trl(episodes)
    texts = tokenizer.batch_decode(columns.pop("completion_ids"), skip_special_tokens=True)
    em = make_episode_metrics(protocol)(
        ["prompt"] * len(episodes),
        texts,
        [e.completion_ids for e in episodes],
        golden_answers=golds,
        log_metric=logged.__setitem__,
        **columns,
    )
    return em, logged


def test_episode_metrics_report_the_batch_through_log_metric():
    tags = (*SEARCH_R1.tags, RESEARCH.observation_open, RESEARCH.observation_close)
    tokenizer = build_tokenizer(["a b c q x doc foo bar \\boxed{x}", FINAL_TURN_NOTICE], tags)
    valid = episode(
        tokenizer,
        [
            ("<think> a </think><search> q </search>", 1),
            ("<information> doc </information>", 0),
            ("<think> b </think><answer> x </answer>", 1),
            (tokenizer.eos_token, 0),
        ],
        num_searches=1,
        answered=True,
    )
    broken = episode(
        tokenizer,
        [("foo", 1), (" bar", 0)],
        num_searches=2,
        truncated=True,
        invalid_steps=1,
    )
    em, logged = score_episodes(tokenizer, [valid, broken], SEARCH_R1, [["x"], ["x"]])

    def length(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    inserted = length("<information> doc </information>") + 1 + length(" bar")
    total = len(valid.completion_ids) + len(broken.completion_ids)
    assert em == [1.0, 0.0]
    assert logged == {
        "rollout/searches_per_episode": 1.5,
        "rollout/answered_rate": 0.5,
        "rollout/truncated_rate": 0.5,
        "rollout/invalid_steps_per_episode": 0.5,
        "rollout/valid_format_rate": 0.5,
        "rollout/masked_token_share": pytest.approx(inserted / total),
    }

    boxed = episode(tokenizer, [("<think> a </think><answer> \\boxed{x} </answer>", 1)])
    em, logged = score_episodes(tokenizer, [boxed], RESEARCH, [["x"]])
    assert em == [1.0]
    assert logged["rollout/valid_format_rate"] == 1.0
    assert logged["rollout/masked_token_share"] == 0.0

    # the notice before the last turn is ours, not the model's: the format still counts as valid
    warned = episode(
        tokenizer,
        [
            ("<think> a </think><search> q </search>", 1),
            ("<information> doc </information>" + FINAL_TURN_NOTICE, 0),
            ("<think> b </think><answer> x </answer>", 1),
        ],
    )
    _, logged = score_episodes(tokenizer, [warned], SEARCH_R1, [["y"]])
    assert logged["rollout/valid_format_rate"] == 1.0


def test_the_prefix_cache_hit_rate_is_cached_over_sent_ids_where_every_episode_reports():
    assert prefix_cache_hit_rate([100, 300], [0, 256]) == 0.64
    assert prefix_cache_hit_rate([100, 300], [0, None]) is None  # one backend did not say
    assert prefix_cache_hit_rate([100], [None]) is None
    assert prefix_cache_hit_rate([], []) is None
    assert prefix_cache_hit_rate([0], [0]) is None
    assert prefix_cache_hit_rate([0, 100], [None, 50]) == 0.5  # one episode made no call

    tokenizer = build_tokenizer(["a x"], SEARCH_R1.tags)
    answered = [("<answer> x </answer>", 1), (tokenizer.eos_token, 0)]
    reported = [
        episode(tokenizer, answered, context_tokens=300, cached_tokens=256),
        episode(tokenizer, answered, context_tokens=100, cached_tokens=0),
    ]
    _, logged = score_episodes(tokenizer, reported, SEARCH_R1, [["x"], ["x"]])
    assert logged["rollout/prefix_cache_hit_rate"] == 0.64

    # transformers reports no hits: nothing is logged rather than a made-up 0
    unreported = [episode(tokenizer, answered, context_tokens=300)]
    _, logged = score_episodes(tokenizer, unreported, SEARCH_R1, [["x"]])
    assert "rollout/prefix_cache_hit_rate" not in logged
    assert "rollout/answered_rate" in logged


def test_episodes_become_one_column_per_field():
    tokenizer = build_tokenizer(["a b q x doc"], SEARCH_R1.tags)
    answered = episode(
        tokenizer, [("<answer> x </answer>", 1), (tokenizer.eos_token, 0)], answered=True
    )
    searched = episode(
        tokenizer,
        [("<search> q </search>", 1), ("<information> doc </information>", 0), ("a", 1)],
        num_searches=1,
        queries=["q"],
        retrieved_ids=[["d#0", "d#1"]],
        truncated=True,
    )
    searched.logprobs = [-0.5] * len(searched.completion_ids)
    episodes = [answered, searched]
    trl = episodes_to_trl(episodes)
    assert trl["prompt_ids"] == [e.prompt_ids for e in episodes]
    assert trl["completion_ids"] == [e.completion_ids for e in episodes]
    assert trl["env_mask"] == [e.env_mask for e in episodes]
    assert trl["logprobs"] == [e.logprobs for e in episodes]
    assert trl["num_searches"] == [0, 1]
    assert trl["queries"] == [[], ["q"]]
    assert trl["retrieved_ids"] == [[], [["d#0", "d#1"]]]
    assert trl["answered"] == [True, False]
    assert trl["truncated"] == [False, True]
    assert trl["inserted_tokens"] == [len(e.env_mask) - sum(e.env_mask) for e in episodes]
    assert trl["inserted_tokens"][0] == 1  # the EOS the environment added after </answer>
    assert trl["context_tokens"] == [0, 0] and trl["cached_tokens"] == [None, None]


def searching_model(tmp_path):
    """The tiny chat model with its head pushed towards tags and EOS, so episodes search, answer
    and stop; its tokenizer; and the Search-R1 prompts of QUESTIONS."""
    template = TEMPLATES["search_r1"]
    prompts = [template.prompt(question) for question in QUESTIONS]
    texts = [m["content"] for p in prompts for m in p] + [SEARCH_R1.invalid_notice]
    model_dir = build_tiny_model(
        tmp_path / "tiny", [*texts, FINAL_TURN_NOTICE], SEARCH_R1.tags, chat=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    bias = torch.zeros(model.config.vocab_size)
    pushes = {"<search>": 5.0, "</search>": 5.0, "<answer>": 3.0, "</answer>": 3.0}
    for token, push in {**pushes, tokenizer.eos_token: 3.0}.items():
        bias[tokenizer.convert_tokens_to_ids(token)] = push
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model, tokenizer, prompts


def test_both_schedulers_give_trl_the_same_episodes(tmp_path, monkeypatch):
    """`rollout_func` with `scheduler="continuous"` (transformers: over `BatchEngine`) returns
    the columns the turn-synchronous one returns, episodes that search once, twice or not at
    all side by side (a deterministic policy in place of the trainer's model)."""
    from accelerate import Accelerator

    from research_r1.training import trl_rollout

    model, tokenizer, prompts = searching_model(tmp_path)
    scripts = {
        QUESTIONS[0]: ["<search> hamlet </search>", "<search> author </search>", "<answer> x"],
        QUESTIONS[1]: ["<answer> Paris </answer>"],
    }
    monkeypatch.setattr(
        trl_rollout, "TransformersGenerator", lambda *args, **kwargs: Scripted(tokenizer, scripts)
    )
    trainer = SimpleNamespace(
        processing_class=tokenizer,
        args=SimpleNamespace(
            max_completion_length=120,
            chat_template_kwargs=None,
            use_vllm=False,
            ds3_gather_for_generation=True,
            gradient_checkpointing_kwargs=None,
        ),
        model_wrapped=model,
        accelerator=Accelerator(cpu=True),
        generation_kwargs={},
        generation_config=None,
    )
    played = {}
    for scheduler in ("turn", "continuous"):
        rollout_func = make_rollout_func(
            RecordingRetriever(), SEARCH_R1, k=1, max_turns=2, max_new_tokens=8, scheduler=scheduler
        )
        played[scheduler] = rollout_func(prompts * 2, trainer)
    assert played["continuous"] == played["turn"]
    assert played["turn"]["num_searches"] == [2, 0, 2, 0]


@pytest.mark.slow
def test_grpo_step_masks_inserted_tokens_and_updates_weights(tmp_path, monkeypatch):
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    model, tokenizer, prompts = searching_model(tmp_path)
    # A template option, as Qwen3's enable_thinking: the recipe's chat_template_kwargs turn it on.
    tokenizer.chat_template = "{% if hint %}hamlet {% endif %}" + tokenizer.chat_template
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    retriever = RecordingRetriever()
    inner = make_rollout_func(retriever, SEARCH_R1, k=1, max_turns=2, max_new_tokens=8)
    rollouts: list[tuple[list, dict]] = []

    def rollout_func(batch_prompts, trainer):
        output = inner(batch_prompts, trainer)
        rollouts.append((batch_prompts, output))
        return output

    rewarded: list[dict] = []

    def reward(prompts, completions, completion_ids, **fields):
        rewarded.append(fields)
        return [float(len(ids)) for ids in completion_ids]  # varies within a group

    config = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,  # transformers 5 name of gradient_checkpointing
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=120,
        max_steps=1,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        chat_template_kwargs={"hint": True},
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        rollout_func=rollout_func,
    )
    losses: list[dict[str, torch.Tensor]] = []
    compute_loss = trainer._compute_loss

    def recording_compute_loss(model, inputs):
        losses.append({key: inputs[key].clone() for key in ("completion_ids", "completion_mask")})
        losses[-1]["loss_mask"] = inputs["completion_mask"] * inputs["tool_mask"]
        return compute_loss(model, inputs)

    monkeypatch.setattr(trainer, "_compute_loss", recording_compute_loss)
    trainer.train()

    # One rollout call for the whole generation batch: each prompt repeated num_generations times,
    # one row per prompt in order.
    [(batch_prompts, output)] = rollouts
    assert sorted(map(str, batch_prompts)) == sorted(map(str, prompts * 4))
    assert len(output["completion_ids"]) == 8
    assert all(len(ids) <= 120 for ids in output["completion_ids"])
    env_masks = output["env_mask"]
    assert any(0 in mask for mask in env_masks) and all(1 in mask for mask in env_masks)
    assert sum(output["num_searches"]) > 0 and retriever.calls
    # Prompts were rendered with the recipe's chat_template_kwargs.
    for prompt, ids in zip(batch_prompts, output["prompt_ids"], strict=True):
        assert ids == encode_prompt(prompt, tokenizer, {"hint": True})
        assert ids != encode_prompt(prompt, tokenizer)
        assert tokenizer.decode(ids).startswith("hamlet ")

    # The loss mask the trainer used is exactly env_mask on every row, zero on the padding.
    mask_of = {
        tuple(ids): mask for ids, mask in zip(output["completion_ids"], env_masks, strict=True)
    }
    rows = 0
    for step in losses:
        for ids, completion_mask, loss_mask in zip(
            step["completion_ids"], step["completion_mask"], step["loss_mask"], strict=True
        ):
            length = int(completion_mask.sum())
            env_mask = mask_of[tuple(ids[:length].tolist())]
            assert loss_mask.tolist() == env_mask + [0] * (len(ids) - length)
            rows += 1
    assert rows == 8

    # Per-episode fields reach the reward function as keyword arguments, row by row.
    [fields] = rewarded
    for key in ("truncated", "answered", "num_searches", "queries", "retrieved_ids"):
        assert fields[key] == output[key]
    assert "env_mask" not in fields
    # transformers generated: ids were sent, no prefix-cache hits reported
    assert all(sent > 0 for sent in fields["context_tokens"])
    assert fields["cached_tokens"] == [None] * 8

    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed
