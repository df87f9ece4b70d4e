"""Recipes (research_r1.training.configs): every shipped recipe parses and passes the support
checks on a machine without a GPU, the GPU recipes use the papers' settings, and any key is
overridden from the command line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from helpers import ROOT

from research_r1.retrieval.config import BM25Config, RemoteConfig, parse_config
from research_r1.training import launch, train
from research_r1.training.configs import parse_recipe

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


GPU_RECIPES = [path for path in RECIPES if path.name != "tiny_cpu_grpo.yaml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_every_recipe_parses_and_is_supported(path, in_repo, bf16_gpu):
    script, args, model_args = parse_recipe([str(path.relative_to(ROOT))])
    train.check_recipe(script, args, model_args)
    train.load_rewards(script, args)
    parse_config(script.retriever)
    _, config_file = launch.accelerate_config_file(script.accelerate_config)
    assert Path(config_file).is_file()
    assert args.temperature == 1.0
    assert args.generation_batch_size % args.num_generations == 0


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda path: path.name)
def test_gpu_recipes_use_the_papers_settings_and_a_lora_learning_rate(path, in_repo, bf16_gpu):
    script, args, model_args = parse_recipe([str(path.relative_to(ROOT))])
    assert (args.num_generations, args.beta, args.epsilon) == (5, 0.001, 0.2)
    assert (args.max_turns, args.retrieval_topk) == (4, 3)
    assert (args.max_new_tokens_per_turn, args.max_observation_tokens) == (500, 500)
    assert model_args.use_peft and model_args.dtype == "bfloat16" and args.bf16
    assert 1e-5 <= args.learning_rate <= 5e-5
    assert model_args.model_name_or_path.startswith("Qwen/Qwen2.5-")
    assert isinstance(parse_config(script.retriever), RemoteConfig)


def test_recipe_specifics(in_repo, bf16_gpu):
    def parse(name: str):
        return parse_recipe([f"recipes/{name}.yaml"])

    script, args, model_args = parse("qwen7b_grpo")
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-7B"
    assert script.reward_funcs == ["search_r1_em"] and script.template == "search_r1"
    assert (args.use_vllm, args.vllm_mode) == (True, "colocate")
    assert script.accelerate_config == "multi_gpu"  # TRL's preset
    prompts_per_step = 8 * args.generation_batch_size // args.num_generations  # 8 GPUs
    assert prompts_per_step == 512

    script, args, model_args = parse("qwen7b_qlora_grpo")
    assert model_args.load_in_4bit and not args.use_vllm
    assert script.accelerate_config == "recipes/accelerate/single_gpu.yaml"

    script, args, model_args = parse("research_qwen7b_grpo")
    assert script.reward_funcs == ["research_f1"] and script.template == "research_instruct"
    assert args.max_completion_length == 8192

    script, _, _ = parse("qwen3b_grpo")
    assert script.accelerate_config == "recipes/accelerate/single_gpu.yaml"

    # The demo's settings (G=8, 8 prompts per step, lr 3e-4 constant, DAPO, no KL, EM, BM25
    # top-2, at most 2 searches of 24 new tokens per turn, 60 steps), on what the demo writes.
    script, args, model_args = parse("tiny_cpu_grpo")
    assert (model_args.model_name_or_path, script.dataset_name, script.template) == (
        "outputs/demo/model",
        "outputs/demo/data",
        "outputs/demo/template.yaml",
    )
    assert script.retriever == "recipes/retrievers/demo_bm25.yaml"
    assert parse_config(script.retriever) == BM25Config(
        index="outputs/demo/bm25", corpus="outputs/demo/corpus.jsonl"
    )
    assert (args.num_generations, args.generation_batch_size // args.num_generations) == (8, 8)
    assert (args.learning_rate, args.lr_scheduler_type.value) == (3e-4, "constant")
    assert (args.loss_type, args.beta, script.reward_funcs) == ("dapo", 0.0, ["search_r1_em"])
    assert (args.retrieval_topk, args.max_turns, args.max_new_tokens_per_turn) == (2, 2, 24)
    assert (args.max_steps, args.use_cpu, args.bf16, model_args.use_peft) == (
        60,
        True,
        False,
        False,
    )


def test_any_key_is_overridden_and_a_bare_resume_flag_means_the_latest(in_repo):
    _, args, _ = parse_recipe(
        ["recipes/tiny_cpu_grpo.yaml", "--resume_from_checkpoint", "--max_steps", "7"]
    )
    assert (args.resume_from_checkpoint, args.max_steps) == ("latest", 7)
    _, args, _ = parse_recipe(["recipes/tiny_cpu_grpo.yaml", "--resume_from_checkpoint"])
    assert args.resume_from_checkpoint == "latest"

    # Checkpoints pickle the config (training_args.bin).
    assert pickle.loads(pickle.dumps(args)).max_turns == args.max_turns == 2
