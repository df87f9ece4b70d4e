"""GRPO training of a search agent from a YAML recipe.

    accelerate launch -m research_r1.train recipes/qwen7b_grpo.yaml [--key value ...]
    research-r1 train recipes/qwen7b_grpo.yaml [--key value ...]

A recipe is parsed by TRL's `TrlParser` into three dataclasses: `ScriptArguments` (data,
template, retriever, rewards), `SearchGRPOConfig` (TRL's `GRPOConfig` plus the rollout's turn and
token budgets) and TRL's `ModelConfig` (model, LoRA, 4-bit). Any key can be overridden on the
command line. Everything a run needs is checked before the first step, and each failure names the
recipe key to fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl import GRPOConfig, ModelConfig, TrlParser

from research_r1.errors import InputError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from research_r1.protocol import Template
    from research_r1.retrieval import Retriever

logger = logging.getLogger(__name__)


@dataclass
class ScriptArguments:
    """What to train on and how episodes are scored (the recipe's non-TRL keys)."""

    dataset: str = field(
        metadata={"help": "Folder or hf:// URI holding prepare-data's {split}.parquet files."}
    )
    retriever: str = field(metadata={"help": "Retriever config YAML (see recipes/retrievers/)."})
    template: str = field(
        default="search_r1", metadata={"help": "Prompt template the dataset was prepared with."}
    )
    train_split: str = "train"
    eval_split: str | None = None
    reward_funcs: list[str] = field(
        default_factory=lambda: ["search_r1_em"],
        metadata={"help": "Reward names from research_r1.rewards.REWARDS."},
    )
    probe_query: str = field(
        default="capital of France",
        metadata={"help": "Query sent once at start-up to check the retriever answers."},
    )
    accelerate_config: str | None = field(
        default=None, metadata={"help": "accelerate config used by `research-r1 train`."}
    )


@dataclass
class SearchGRPOConfig(GRPOConfig):
    """GRPOConfig plus the multi-turn search rollout's budgets (Search-R1's paper values)."""

    max_turns: int = field(default=4, metadata={"help": "Searches allowed per episode."})
    retrieval_topk: int = field(default=3, metadata={"help": "Passages per search."})
    max_new_tokens_per_turn: int = field(default=500, metadata={"help": "Tokens per turn."})
    max_observation_tokens: int = field(
        default=500, metadata={"help": "Inserted passages are cut to this many tokens."}
    )


def parse_recipe(argv: list[str]) -> tuple[ScriptArguments, SearchGRPOConfig, ModelConfig]:
    """Parse `recipe.yaml [--key value ...]`; command-line keys override the recipe's."""
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["--config", argv[0], *argv[1:]]
    parser = TrlParser((ScriptArguments, SearchGRPOConfig, ModelConfig))
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as error:
        raise InputError(f"recipe: {error}") from error


# ---------------------------------------------------------------------------------------------
# Start-up validation: every check names the recipe key that fixes it.


def check_supported(args: SearchGRPOConfig, model_args: ModelConfig) -> None:
    """Refuse combinations that would fail hours in, or that nobody has made work."""
    if model_args.load_in_8bit:
        raise InputError(
            "load_in_8bit: 8-bit training is not supported; use load_in_4bit with use_peft (QLoRA)"
        )
    if model_args.load_in_4bit and not model_args.use_peft:
        raise InputError("load_in_4bit: 4-bit weights cannot be trained directly; set use_peft")
    if model_args.load_in_4bit and args.use_vllm:
        raise InputError(
            "use_vllm: QLoRA with vLLM generation is not supported (TRL merges the adapter into "
            "full weights for vLLM every step, which a 4-bit base cannot give); set use_vllm: false"
        )


def check_dataset(dataset: Dataset, split: str) -> None:
    needed = {"id", "prompt", "golden_answers"}
    missing = needed - set(dataset.column_names)
    if missing:
        raise InputError(
            f"dataset: split {split!r} lacks columns {sorted(missing)} (has "
            f"{dataset.column_names}); write it with `research-r1 prepare-data`"
        )
    if len(dataset) == 0:
        raise InputError(f"dataset: split {split!r} is empty")


def check_template(dataset: Dataset, template: Template) -> None:
    if "template" in dataset.column_names:
        used = set(dataset.unique("template"))
        if used != {template.name}:
            raise InputError(
                f"template: the recipe says {template.name!r} but the dataset was prepared with "
                f"{sorted(used)}"
            )


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, template: Template) -> None:
    """The trainer decodes completions with skip_special_tokens=True: a tag registered as a
    special token would vanish from the text the rewards read."""
    for tag in template.protocol.tags:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        if tokenizer.decode(ids, skip_special_tokens=True) != tag:
            raise InputError(
                f"model_name_or_path: its tokenizer does not round-trip the tag {tag!r} when "
                "decoding (is it a special token?); register the tags as normal tokens"
            )


def check_retriever(retriever: Retriever, query: str, k: int) -> None:
    try:
        results = retriever.search([query], k)
    except Exception as error:
        raise InputError(f"retriever: the probe query {query!r} failed: {error}") from error
    if len(results) != 1 or not results[0]:
        raise InputError(f"retriever: the probe query {query!r} returned no passages")


def check_budget(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, args: SearchGRPOConfig, context: int
) -> None:
    from research_r1.protocol import render_prompt

    longest = max(
        len(tokenizer(render_prompt(p, tokenizer), add_special_tokens=False)["input_ids"])
        for p in dataset.select(range(min(len(dataset), 512)))["prompt"]
    )
    if longest + args.max_completion_length > context:
        raise InputError(
            f"max_completion_length: the longest prompt ({longest} tokens) plus "
            f"max_completion_length ({args.max_completion_length}) exceeds the model's context "
            f"({context} tokens)"
        )
    if args.max_new_tokens_per_turn > args.max_completion_length:
        raise InputError("max_new_tokens_per_turn: larger than max_completion_length")


# ---------------------------------------------------------------------------------------------
# Assembly


def load_split(dataset: str, split: str) -> Dataset:
    """A prepare-data split: `{split}.parquet` in a local folder or a Hub dataset folder."""
    from datasets import load_dataset

    from research_r1.hub import resolve

    folder = resolve(dataset, allow_patterns=[f"{split}.parquet"])
    path = folder / f"{split}.parquet" if folder.is_dir() else folder
    if not path.is_file():
        raise InputError(f"dataset: no {split}.parquet in {dataset}")
    return load_dataset("parquet", data_files=str(path), split="train")


def model_init_kwargs(model_args: ModelConfig) -> dict[str, Any]:
    """How GRPOTrainer loads the model from its name (dtype, attention, 4-bit placement)."""
    from accelerate import PartialState
    from trl import get_quantization_config

    quantization = get_quantization_config(model_args)
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # 4-bit weights must sit on this process's GPU from the start.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    return kwargs


def build_trainer(script: ScriptArguments, args: SearchGRPOConfig, model_args: ModelConfig):
    """Everything validated, then a GRPOTrainer whose rollout is the multi-turn search episode."""
    from transformers import AutoConfig, AutoTokenizer
    from trl import GRPOTrainer, get_peft_config

    from research_r1.callbacks import HubPushCallback, RewardPlotCallback
    from research_r1.protocol import load_template
    from research_r1.retrieval.config import load_retriever
    from research_r1.rewards import get_reward
    from research_r1.rollout import make_rollout_func

    check_supported(args, model_args)
    if not model_args.model_name_or_path:
        raise InputError("model_name_or_path: required")
    template = load_template(script.template)
    train = load_split(script.dataset, script.train_split)
    check_dataset(train, script.train_split)
    check_template(train, template)
    evaluation = None
    if script.eval_split:
        evaluation = load_split(script.dataset, script.eval_split)
        check_dataset(evaluation, script.eval_split)
    rewards = [get_reward(name) for name in script.reward_funcs]

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision
    )
    check_tokenizer(tokenizer, template)
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision
    )
    check_budget(train, tokenizer, args, config.max_position_embeddings)

    retriever = load_retriever(script.retriever)
    check_retriever(retriever, script.probe_query, args.retrieval_topk)

    args.model_init_kwargs = model_init_kwargs(model_args)
    push = args.push_to_hub
    # We push ourselves (in the background, retried, never fatal); the Trainer must not.
    args.push_to_hub = False
    callbacks = [RewardPlotCallback(args.output_dir)]
    if push:
        callbacks.append(HubPushCallback(args.hub_model_id, args.hub_token, args.hub_private_repo))
    return GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=rewards,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
        rollout_func=make_rollout_func(
            retriever,
            template.protocol,
            k=args.retrieval_topk,
            max_turns=args.max_turns,
            max_new_tokens=args.max_new_tokens_per_turn,
            max_observation_tokens=args.max_observation_tokens,
        ),
    )


def resume_point(value: str | None, output_dir: str) -> str | None:
    """`--resume_from_checkpoint` with no path (or `true`/`latest`) means the newest checkpoint in
    output_dir; a fresh output_dir starts from scratch."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value.lower() in ("false", "none", ""):
        return None
    if value.lower() in ("true", "latest"):
        return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if not os.path.isdir(value):
        raise InputError(f"resume_from_checkpoint: {value} is not a checkpoint folder")
    return value


def publish(trainer, script: ScriptArguments, model_args: ModelConfig, recipe: dict) -> bool:
    """Push the final model with its card (retried; a failure is logged, never raised)."""
    from research_r1.protocol import load_template
    from research_r1.publish import model_card, push_model, read_eval_results

    args = trainer.args
    card = model_card(
        model_name=args.hub_model_id.split("/")[-1],
        base_model=model_args.model_name_or_path,
        dataset=script.dataset,
        template=script.template,
        observation_tag=load_template(script.template).protocol.observation_open,
        rewards=script.reward_funcs,
        retriever=script.retriever,
        recipe=recipe,
        eval_results=read_eval_results(args.output_dir),
    )
    return push_model(args.output_dir, args.hub_model_id, card, args.hub_token)


def recipe_record(argv: list[str]) -> dict[str, Any]:
    """The recipe as run: the YAML's keys and the command-line overrides (tokens left out)."""
    import yaml

    recipe = (
        yaml.safe_load(Path(argv[0]).read_text())
        if argv and argv[0].endswith((".yaml", ".yml"))
        else {}
    )
    overrides = argv[1:] if recipe else argv
    recipe = {k: v for k, v in recipe.items() if "token" not in k}
    if overrides:
        recipe["command_line_overrides"] = [a for a in overrides if not a.startswith("hf_")]
    return recipe


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        script, args, model_args = parse_recipe(argv)
        push = args.push_to_hub
        trainer = build_trainer(script, args, model_args)
        start = resume_point(args.resume_from_checkpoint, args.output_dir)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    trainer.train(resume_from_checkpoint=start)
    trainer.save_model(args.output_dir)
    if push and trainer.accelerator.is_main_process:
        publish(trainer, script, model_args, recipe_record(argv))
    return 0


# ---------------------------------------------------------------------------------------------
# `research-r1 train`: start the same module under accelerate with the recipe's config.


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs")


def accelerate_command(recipe: str, overrides: list[str]) -> list[str]:
    """`accelerate launch [--config_file C] -m research_r1.train recipe ...`, C from the recipe."""
    import yaml

    spec = yaml.safe_load(Path(recipe).read_text()) or {}
    config = spec.get("accelerate_config")
    if "--accelerate_config" in overrides:
        config = overrides[overrides.index("--accelerate_config") + 1]
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config:
        command += ["--config_file", str(config)]
    return [*command, "-m", "research_r1.train", recipe, *overrides]


def run_train(args: argparse.Namespace) -> int:
    if not Path(args.recipe).is_file():
        raise InputError(f"recipe {args.recipe} does not exist")
    return subprocess.call(accelerate_command(args.recipe, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
