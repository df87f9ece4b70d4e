"""The rollout inside a real TRL GRPOTrainer step: the loss never trains on inserted tokens, the
per-episode fields reach the reward functions, and the step updates the weights."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from research_r1.protocol import SEARCH_R1, TEMPLATES
from research_r1.retrieval import Passage
from research_r1.rollout import FINAL_TURN_NOTICE, encode_prompt
from research_r1.tiny import build_tiny_model
from research_r1.training.trl_rollout import make_rollout_func

QUESTIONS = ["who wrote hamlet?", "capital of france?"]


class EchoRetriever:
    """One deterministic passage per query; remembers every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        self.calls.append(list(queries))
        return [[Passage(f"id-{q}", f"title\nabout {q}", 1.0)] * k for q in queries]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_grpo_step_masks_inserted_tokens_and_updates_weights(tmp_path, monkeypatch):
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    template = TEMPLATES["search_r1"]
    prompts = [template.prompt(question) for question in QUESTIONS]
    texts = [m["content"] for p in prompts for m in p] + [SEARCH_R1.invalid_notice]
    model_dir = build_tiny_model(
        tmp_path / "tiny", [*texts, FINAL_TURN_NOTICE], SEARCH_R1.tags, chat=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # A template option, as Qwen3's enable_thinking: the recipe's chat_template_kwargs turn it on.
    tokenizer.chat_template = "{% if hint %}hamlet {% endif %}" + tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    # Push the random model towards tags and EOS so episodes search, answer and stop.
    bias = torch.zeros(model.config.vocab_size)
    pushes = {"<search>": 5.0, "</search>": 5.0, "<answer>": 3.0, "</answer>": 3.0}
    for token, push in {**pushes, tokenizer.eos_token: 3.0}.items():
        bias[tokenizer.convert_tokens_to_ids(token)] = push
    model.lm_head.bias = torch.nn.Parameter(bias)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    retriever = EchoRetriever()
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

    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed
