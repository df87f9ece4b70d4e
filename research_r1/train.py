"""GRPO training of a search agent from a YAML recipe.

    accelerate launch -m research_r1.train recipes/qwen7b_grpo.yaml [--key value ...]
    research-r1 train recipes/qwen7b_grpo.yaml [--key value ...]

A recipe is parsed by TRL's `TrlParser` into three dataclasses: `ScriptArguments` (data,
template, retriever, rewards), `SearchGRPOConfig` (TRL's `GRPOConfig` plus the rollout's turn and
token budgets) and TRL's `ModelConfig` (model, LoRA, 4-bit). Any key can be overridden on the
command line; `--resume_from_checkpoint` with no value resumes from the newest checkpoint in
`output_dir`. Everything a run needs is checked before the first step, and each failure names
the recipe key to fix.

With `push_to_hub`, checkpoints are uploaded in the background and the final model with its card
at the end (`research_r1.callbacks`, `research_r1.publish`); the trainer itself never sees the
token, because it pickles its arguments into every checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from research_r1.errors import InputError, RunStopped

if TYPE_CHECKING:
    from collections.abc import Callable

    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase
    from trl import GRPOTrainer, ModelConfig

    from research_r1.callbacks import HubPushCallback
    from research_r1.protocol import Protocol, Template
    from research_r1.retrieval import Retriever

logger = logging.getLogger(__name__)

RESUME_LATEST = "latest"
# Prompts with the longest questions are tokenised to check the token budget (see check_budget).
BUDGET_SAMPLE_ROWS = 64


@dataclass
class ScriptArguments:
    """What to train on and how episodes are scored (the recipe's keys that TRL does not have).

    Reward weights are TRL's own `reward_weights` key, one per entry of `reward_funcs`.
    """

    dataset: str = field(
        metadata={
            "help": "prepare-data output: a folder of {split}.parquet files, or a Hub dataset "
            "pushed by prepare-data --push-to-hub (hf://datasets/ORG/NAME[@REV])."
        }
    )
    retriever: str = field(metadata={"help": "Retriever config YAML (see recipes/retrievers/)."})
    template: str = field(
        default="search_r1",
        metadata={"help": "Prompt template the dataset was prepared with (name or YAML file)."},
    )
    train_split: str = "train"
    eval_split: str | None = None
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
        default=None, metadata={"help": "accelerate config file used by `research-r1 train`."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.reward_kwargs, str):
            try:
                self.reward_kwargs = json.loads(self.reward_kwargs)
            except json.JSONDecodeError as error:
                raise InputError(f"reward_kwargs: not valid JSON ({error})") from error


@functools.cache
def _search_grpo_config() -> type:
    """`SearchGRPOConfig`, defined on first use: importing TRL takes seconds, and the
    `research-r1` command imports this module only to list its subcommands."""
    from trl import GRPOConfig

    @dataclass
    class SearchGRPOConfig(GRPOConfig):
        """GRPOConfig plus the multi-turn search rollout's budgets (Search-R1's paper values)."""

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

    # Checkpoints pickle the config: pickle must find the class as research_r1.train's attribute.
    SearchGRPOConfig.__module__ = __name__
    SearchGRPOConfig.__qualname__ = "SearchGRPOConfig"
    return SearchGRPOConfig


def __getattr__(name: str) -> Any:
    if name == "SearchGRPOConfig":
        return _search_grpo_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_recipe(argv: list[str]) -> tuple[ScriptArguments, Any, ModelConfig]:
    """Parse `recipe.yaml [--key value ...]`; command-line keys override the recipe's."""
    from trl import ModelConfig, TrlParser

    argv = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        if not Path(argv[0]).is_file():
            raise InputError(f"recipe {argv[0]} does not exist")
        argv = ["--config", argv[0], *argv[1:]]
    flag = "--resume_from_checkpoint"
    for i in reversed(range(len(argv))):
        if argv[i] == flag and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            argv.insert(i + 1, RESUME_LATEST)
    parser = TrlParser((ScriptArguments, _search_grpo_config(), ModelConfig))
    try:
        return parser.parse_args_and_config(argv)
    except InputError:
        raise
    except ValueError as error:
        raise InputError(f"recipe: {error}") from error


# ---------------------------------------------------------------------------------------------
# Start-up validation: every check names the recipe key that fixes it.


def check_supported(args: Any, model_args: ModelConfig) -> None:
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
    if args.use_vllm and args.vllm_mode == "colocate":
        if args.vllm_tensor_parallel_size > 1:
            raise InputError(
                "vllm_tensor_parallel_size: tensor parallelism in colocate mode is not supported "
                "by the multi-turn rollout; use vllm_mode: server"
            )
        if args.vllm_enable_sleep_mode:
            raise InputError(
                "vllm_enable_sleep_mode: not supported by the multi-turn rollout (the engine "
                "would sleep between turns); set it to false"
            )


def check_rewards(script: ScriptArguments, args: Any) -> list[Callable[..., Any]]:
    """The reward functions the recipe names, with their options from `reward_kwargs`."""
    from research_r1.rewards import REWARDS, get_reward

    if not script.reward_funcs:
        raise InputError(f"reward_funcs: name at least one of {', '.join(REWARDS)}")
    options = script.reward_kwargs or {}
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise InputError(
            "reward_kwargs: expected a mapping from reward name to its options, e.g. "
            "{search_r1_format_em: {retrieval: 0.1}}"
        )
    unused = sorted(set(options) - set(script.reward_funcs))
    if unused:
        raise InputError(f"reward_kwargs: {unused} are not in reward_funcs {script.reward_funcs}")
    if args.reward_weights is not None and len(args.reward_weights) != len(script.reward_funcs):
        raise InputError(
            f"reward_weights: {len(args.reward_weights)} weights for "
            f"{len(script.reward_funcs)} reward_funcs"
        )
    try:
        return [get_reward(name, **options.get(name, {})) for name in script.reward_funcs]
    except InputError as error:
        raise InputError(f"reward_funcs: {error}") from error


def check_dataset(dataset: Dataset, split: str, template: Template) -> None:
    """Columns the rollout and rewards read, and the template the prompts were written with."""
    needed = {"id", "question", "prompt", "golden_answers"}
    missing = needed - set(dataset.column_names)
    if missing:
        raise InputError(
            f"dataset: split {split!r} lacks columns {sorted(missing)} (has "
            f"{dataset.column_names}); write it with `research-r1 prepare-data`"
        )
    if len(dataset) == 0:
        raise InputError(f"dataset: split {split!r} is empty")
    if "template" in dataset.column_names:
        used = set(dataset.unique("template"))
        if used != {template.name}:
            raise InputError(
                f"template: the recipe says {template.name!r} but split {split!r} was prepared "
                f"with {sorted(used)}"
            )


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, protocol: Protocol) -> None:
    """The trainer decodes completions with skip_special_tokens=True: a tag registered as a
    special token would vanish from the text the rewards read. Episodes end with EOS."""
    if tokenizer.eos_token_id is None:
        raise InputError("model_name_or_path: its tokenizer has no EOS token")
    for tag in protocol.tags:
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


def check_retriever_placement(retriever: str, num_processes: int) -> None:
    """Each training process builds its own in-process retriever. A dense index on a GPU would
    then be loaded once per process, each copy (64 GB for wiki-18's flat index) on a GPU that
    training needs; refuse it and point at one shared server instead."""
    from research_r1.retrieval.config import DenseConfig, HybridConfig, parse_config

    if num_processes < 2:
        return
    config = parse_config(retriever)
    dense = config.dense if isinstance(config, HybridConfig) else config
    if isinstance(dense, DenseConfig) and dense.device != "cpu":
        raise InputError(
            f"retriever: {retriever} loads a dense index on device {dense.device!r} in each of "
            f"the {num_processes} training processes; serve it once with `research-r1 "
            f"serve-retriever --config {retriever}` and give the recipe a `type: remote` "
            "retriever config pointing at it (recipes/retrievers/remote.yaml)"
        )


def check_budget(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, args: Any, context: int
) -> None:
    """Turn and token budgets, and whether the longest prompt plus a full completion fits the
    model's context. Prompt length grows with the question, so the prompts of the longest
    questions stand for the whole split."""
    from research_r1.rollout import encode_prompt

    minimums = {
        "retrieval_topk": 1,
        "max_turns": 0,
        "max_new_tokens_per_turn": 1,
        "max_observation_tokens": 1,
        "max_completion_length": 2,  # one sampled id and the final EOS
        "rollout_batch_size": 1,
    }
    for key, minimum in minimums.items():
        if getattr(args, key) is None or getattr(args, key) < minimum:
            raise InputError(f"{key}: must be at least {minimum}, got {getattr(args, key)}")
    if args.max_new_tokens_per_turn >= args.max_completion_length:
        raise InputError(
            f"max_new_tokens_per_turn: {args.max_new_tokens_per_turn} leaves no room in "
            f"max_completion_length ({args.max_completion_length}) for a second turn"
        )
    lengths = [len(question) for question in dataset["question"]]
    longest_rows = sorted(range(len(lengths)), key=lengths.__getitem__)[-BUDGET_SAMPLE_ROWS:]
    longest = max(
        len(encode_prompt(prompt, tokenizer, args.chat_template_kwargs))
        for prompt in dataset.select(longest_rows)["prompt"]
    )
    if longest + args.max_completion_length > context:
        raise InputError(
            f"max_completion_length: the longest prompt ({longest} tokens) plus "
            f"max_completion_length ({args.max_completion_length}) exceeds the model's context "
            f"({context} tokens)"
        )


# ---------------------------------------------------------------------------------------------
# Assembly


def load_split(dataset: str, split: str, key: str) -> Dataset:
    """A prepare-data split: `{split}.parquet` in a local folder, or a split of a Hub dataset
    that prepare-data pushed."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    from research_r1 import hub

    if hub.is_hub_uri(dataset):
        location = hub.parse_uri(dataset)
        if location.repo_type != "dataset":
            raise InputError(f"dataset: {dataset} is not a dataset repo (hf://datasets/ORG/NAME)")
        try:
            return load_dataset(location.repo_id, split=split, revision=location.revision)
        except (DatasetNotFoundError, ValueError) as error:
            raise InputError(
                f"dataset: no split {split!r} ({key}) in {dataset}: {error}"
            ) from error
    path = Path(dataset) / f"{split}.parquet"
    if not path.is_file():
        raise InputError(f"dataset: no {split}.parquet ({key}) in {dataset}")
    return load_dataset("parquet", data_files=str(path), split="train")


def exact_match_metric(protocol: Protocol) -> Callable[..., list[float]]:
    """EM of the final answer under `protocol`. Added to every run with weight 0, so the logs
    show EM (`rewards/em/mean`) whatever reward the run trains on."""
    from research_r1.protocol import extract_answer
    from research_r1.rewards import completion_text, exact_match

    def em(
        prompts: list, completions: list, completion_ids: Any = None, **columns: Any
    ) -> list[float]:
        golds = columns["golden_answers"]
        return [
            exact_match(extract_answer(completion_text(completion), protocol), gold)
            for completion, gold in zip(completions, golds, strict=True)
        ]

    return em


def model_init_kwargs(model_args: ModelConfig, args: Any) -> dict[str, Any]:
    """How GRPOTrainer loads the model from its name; the recipe's own model_init_kwargs win."""
    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if model_args.load_in_4bit:
        from accelerate import PartialState

        # 4-bit weights must sit on this process's GPU from the start.
        kwargs["device_map"] = {"": PartialState().local_process_index}
    return {**kwargs, **(args.model_init_kwargs or {})}


def build_trainer(script: ScriptArguments, args: Any, model_args: ModelConfig) -> GRPOTrainer:
    """Everything validated, then a GRPOTrainer whose rollout is the multi-turn search episode.

    With `push_to_hub`, a `HubPushCallback` takes the Hub settings and the trainer is left with
    neither.
    """
    from transformers import AutoConfig, AutoTokenizer
    from trl import GRPOTrainer, get_peft_config, get_quantization_config

    from research_r1.callbacks import HubPushCallback, RewardPlotCallback
    from research_r1.protocol import load_template
    from research_r1.retrieval.config import load_retriever
    from research_r1.rollout import make_rollout_func

    check_supported(args, model_args)
    rewards = check_rewards(script, args)
    if not model_args.model_name_or_path:
        raise InputError("model_name_or_path: required")
    template = load_template(script.template)
    train_set = load_split(script.dataset, script.train_split, "train_split")
    check_dataset(train_set, script.train_split, template)
    eval_set = None
    if script.eval_split:
        eval_set = load_split(script.dataset, script.eval_split, "eval_split")
        check_dataset(eval_set, script.eval_split, template)

    where = dict(revision=model_args.model_revision, trust_remote_code=args.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, **where)
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, **where)
    except OSError as error:
        raise InputError(f"model_name_or_path: {error}") from error
    check_tokenizer(tokenizer, template.protocol)
    context = config.max_position_embeddings
    if args.use_vllm and args.vllm_max_model_length:
        context = min(context, args.vllm_max_model_length)
    check_budget(train_set, tokenizer, args, context)

    check_retriever_placement(script.retriever, args.world_size)
    retriever = load_retriever(script.retriever)
    check_retriever(retriever, script.probe_query or train_set[0]["question"], args.retrieval_topk)

    args.reward_weights = [*(args.reward_weights or [1.0] * len(rewards)), 0.0]
    args.model_init_kwargs = model_init_kwargs(model_args, args)
    callbacks: list[Any] = [RewardPlotCallback(args.output_dir)]
    if args.push_to_hub:
        callbacks.append(HubPushCallback(args.hub_model_id, args.hub_token, args.hub_private_repo))
    # We push (in the background, retried, never fatal), not the Trainer; and the Trainer pickles
    # its args into every checkpoint, so it must not hold the token.
    args.push_to_hub, args.hub_token = False, None
    if args.use_vllm:
        from research_r1.generation_vllm import prepare_cpu_colocate

        prepare_cpu_colocate(args)  # vLLM on a CPU: a KV cache size, weights TRL can sync
    return GRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[*rewards, exact_match_metric(template.protocol)],
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        callbacks=callbacks,
        rollout_func=make_rollout_func(
            retriever,
            template.protocol,
            k=args.retrieval_topk,
            max_turns=args.max_turns,
            max_new_tokens=args.max_new_tokens_per_turn,
            max_observation_tokens=args.max_observation_tokens,
            max_retriever_wait_s=args.max_retriever_wait_s,
            generate_batch_size=args.rollout_batch_size,
        ),
    )


def resume_point(value: str | bool | None, output_dir: str) -> str | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `true`/`latest` (what a bare
    `--resume_from_checkpoint` becomes) for the newest checkpoint in output_dir; with none there
    yet, training starts from scratch, so a preempted job can always be relaunched as it was."""
    from transformers.trainer_utils import get_last_checkpoint

    text = str(value).lower() if value is not None else ""
    if text in ("", "false", "none"):
        return None
    if text in ("true", RESUME_LATEST):
        latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if latest is None:
            logger.info("no checkpoint in %s yet: starting from scratch", output_dir)
        return latest
    if not os.path.isdir(str(value)):
        raise InputError(f"resume_from_checkpoint: {value} is not a checkpoint folder")
    return str(value)


# Recipe keys that hold secrets (TRL's hub_token, or a token of any other name).
_SECRET_KEY = re.compile(r"(?:^|_)(?:token|secret|password)$")


def recipe_record(argv: list[str]) -> dict[str, Any]:
    """The recipe as run, for the model card: the YAML's keys and the command-line overrides,
    with every secret key (`hub_token`, ...) and its value left out. Keys that merely mention
    tokens (`max_new_tokens_per_turn`) are kept."""
    import yaml

    recipe: dict[str, Any] = {}
    overrides = list(argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        recipe = yaml.safe_load(Path(argv[0]).read_text()) or {}
        overrides = overrides[1:]
    recipe = {key: value for key, value in recipe.items() if not _SECRET_KEY.search(key)}
    kept: list[str] = []
    skip = False
    for arg in overrides:
        if skip:
            skip = False
        elif arg.startswith("--") and _SECRET_KEY.search(arg[2:].partition("=")[0]):
            skip = "=" not in arg
        else:
            kept.append(arg)
    if kept:
        recipe["command_line_overrides"] = " ".join(kept)
    return recipe


def publish(
    trainer: GRPOTrainer,
    pusher: HubPushCallback,
    script: ScriptArguments,
    model_args: ModelConfig,
    recipe: dict[str, Any],
) -> bool:
    """Push the final model with its card (retried; a failure is logged, never raised)."""
    from research_r1.protocol import load_template
    from research_r1.publish import model_card, push_model, read_eval_results

    output_dir = trainer.args.output_dir
    card = model_card(
        model_name=pusher.repo_id.split("/")[-1],
        base_model=model_args.model_name_or_path,
        dataset=script.dataset,
        template=script.template,
        observation_tag=load_template(script.template).protocol.observation_open,
        rewards=script.reward_funcs,
        retriever=script.retriever,
        recipe=recipe,
        eval_results=read_eval_results(output_dir),
        peft=model_args.use_peft,
    )
    return push_model(output_dir, pusher.repo_id, card, pusher.token, private=pusher.private)


def train(argv: list[str]) -> GRPOTrainer:
    """Parse the recipe, validate, train (resuming when asked), save, and publish when asked."""
    from research_r1.callbacks import HubPushCallback

    script, args, model_args = parse_recipe(argv)
    start = resume_point(args.resume_from_checkpoint, args.output_dir)
    trainer = build_trainer(script, args, model_args)
    if start:
        logger.info("resuming from %s", start)
    trainer.train(resume_from_checkpoint=start)
    trainer.save_model(args.output_dir)
    pushers = [c for c in trainer.callback_handler.callbacks if isinstance(c, HubPushCallback)]
    if pushers and trainer.accelerator.is_main_process:
        publish(trainer, pushers[0], script, model_args, recipe_record(argv))
    return trainer


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(sys.argv[1:] if argv is None else argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunStopped as error:
        print(f"\nstopped: {error}", file=sys.stderr)  # below any progress bar it cut off
        return 3
    return 0


# ---------------------------------------------------------------------------------------------
# `research-r1 train`: start this module under accelerate with the recipe's accelerate config.


# `accelerate launch` flags that say where this process sits in a multi-machine run; given to
# `research-r1 train`, they go to accelerate instead of the recipe.
LAUNCH_FLAGS = (
    "--machine_rank",
    "--main_process_ip",
    "--main_process_port",
    "--num_machines",
    "--num_processes",
)


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Train with GRPO from a recipe, under `accelerate launch` with the recipe's "
        "accelerate_config. Any recipe key can be overridden: --key value. "
        f"{', '.join(LAUNCH_FLAGS)} go to accelerate (one command per machine)."
    )
    parser.add_argument("recipe", help="recipe YAML (recipes/*.yaml)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs")


def accelerate_command(recipe: str, overrides: list[str]) -> list[str]:
    """`accelerate launch --quiet [--config_file C] [launch flags] -m research_r1.train recipe
    ...`, with C the recipe's `accelerate_config` (an `--accelerate_config` override wins) and the
    launch flags (`LAUNCH_FLAGS`) taken out of the overrides."""
    import yaml

    spec = yaml.safe_load(Path(recipe).read_text()) or {}
    config = spec.get("accelerate_config") if isinstance(spec, dict) else None
    launch, rest = split_launch_flags(overrides)
    for i, arg in enumerate(rest):
        if arg == "--accelerate_config" and i + 1 < len(rest):
            config = rest[i + 1]
        elif arg.startswith("--accelerate_config="):
            config = arg.partition("=")[2]
    # --quiet: a failed run ends with the run's own one-line error, not the launcher's traceback
    # (single-process and DeepSpeed launches; torchrun still prints its failure summary).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet"]
    if config:
        if not Path(config).is_file():
            raise InputError(f"accelerate_config: {config} does not exist")
        command += ["--config_file", str(config)]
    return [*command, *launch, "-m", "research_r1.train", recipe, *rest]


def split_launch_flags(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate launch flags with their values, recipe overrides), in their given order."""
    launch: list[str] = []
    rest: list[str] = []
    args = iter(overrides)
    for arg in args:
        name = arg.partition("=")[0]
        if name not in LAUNCH_FLAGS:
            rest.append(arg)
        elif "=" in arg:
            launch.append(arg)
        else:
            value = next(args, None)
            if value is None or value.startswith("--"):
                raise InputError(f"{arg} needs a value")
            launch += [arg, value]
    return launch, rest


def run_train(args: argparse.Namespace) -> int:
    if not Path(args.recipe).is_file():
        raise InputError(f"recipe {args.recipe} does not exist")
    return subprocess.call(accelerate_command(args.recipe, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
