"""GRPO training of a search agent from a YAML recipe, in the order it happens.

    accelerate launch -m research_r1.training.train recipes/qwen7b_grpo.yaml [--key value ...]
    research-r1 train recipes/qwen7b_grpo.yaml [--key value ...]     (research_r1.training.launch)

`train` reads like the run: parse the recipe (`research_r1.training.configs`), check what can be
checked before anything is loaded, then the data, the tokenizer, the retriever, the rewards, the
trainer; train (resuming when asked), save, publish. Every check names the recipe key that fixes
it, and `--resume_from_checkpoint` with no value resumes from the newest checkpoint in `output_dir`.

With `push_to_hub`, checkpoints go up in the background as `hub_strategy` says
(`research_r1.training.callbacks.HubPushCallback`) and the final model with its card through the
Trainer's own `push_to_hub`, each retried and never fatal. The recipe's `hub_token` is held by
those two only: the Trainer pickles its config into every checkpoint, so its copy has none.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import PartialState
from accelerate.utils import gather_object
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOTrainer, ModelConfig, get_peft_config, get_quantization_config

from research_r1 import evaluation, hub
from research_r1.data import check_split, load_split
from research_r1.errors import InputError, report
from research_r1.evaluation.suites import SUITES
from research_r1.generation_vllm import prepare_cpu_colocate
from research_r1.protocol import Protocol, Template, load_template
from research_r1.retrieval import RetrievalError, Retriever
from research_r1.retrieval.config import DenseConfig, HybridConfig, load_retriever, parse_config
from research_r1.rewards import REWARDS, get_reward
from research_r1.rollout import encode_prompt
from research_r1.space import push as space
from research_r1.training.callbacks import HubPushCallback, RewardPlotCallback
from research_r1.training.configs import (
    RESUME_LATEST,
    Recipe,
    SearchGRPOConfig,
    SearchScriptArguments,
    key_sources,
    parse_recipe,
)
from research_r1.training.publish import EVAL_FOLDER, model_card, read_evaluations
from research_r1.training.sampler import (
    INDEX_COLUMN,
    ZeroStdSkipSampler,
    group_column,
    with_prompt_index,
    zero_std_groups,
)
from research_r1.training.trl_rollout import make_episode_metrics, make_rollout_func

logger = logging.getLogger(__name__)

# Prompts with the longest questions are tokenised to check the token budget (see check_budget).
BUDGET_SAMPLE_ROWS = 64
# What the final push leaves out of the run folder, as the Trainer's own push does: checkpoints
# (HubPushCallback pushes them as hub_strategy says) and private files.
FINAL_PUSH_IGNORE = ["_*", "checkpoint-*"]


class SearchGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer whose model card, written at every checkpoint and before the final
    push, is ours: how the agent was trained, its recipe, and its evaluation results.

    With `skip_zero_std_prompts`, its training sampler is `ZeroStdSkipSampler`: the training
    split gets an `INDEX_COLUMN`, each generation's gathered rewards (the same on every process)
    tell the sampler which prompts' groups had zero std, its state goes into each checkpoint
    beside the RNG states and comes back on resume, and every step logs
    `sampler/zero_std_groups` and `sampler/skipped_prompts`."""

    def __init__(
        self, *args: Any, card: dict[str, Any], train_dataset: Any = None, **kwargs: Any
    ) -> None:
        self.card = card
        self.skipper: ZeroStdSkipSampler | None = None
        self.resume_from: str | bool | None = None
        if (
            getattr(kwargs.get("args"), "skip_zero_std_prompts", False)
            and train_dataset is not None
        ):
            train_dataset = with_prompt_index(train_dataset)
        super().__init__(*args, train_dataset=train_dataset, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        self.resume_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        sampler = super()._get_train_sampler(dataset)
        if not getattr(self.args, "skip_zero_std_prompts", False):
            return sampler
        self.skipper = ZeroStdSkipSampler(
            sampler.data_source,
            sampler.mini_repeat_count,
            sampler.batch_size,
            sampler.repeat_count,
            sampler.shuffle,
            sampler.seed,
            after=self.args.skip_zero_std_after,
            probability=self.args.skip_zero_std_probability,
            decay=self.args.skip_zero_std_decay,
            groups=(
                group_column(sampler.data_source, self.args.skip_zero_std_by)
                if self.args.skip_zero_std_by
                else None
            ),
        )
        checkpoint = self.resume_from
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        if checkpoint and not self.skipper.load(checkpoint):
            logger.warning("%s holds no sampler state: prompts start unskipped", checkpoint)
        if self.args.ignore_data_skip:  # the data loader does not skip the trained batches
            self.skipper.replay = []
        return self.skipper

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.skipper is not None and self.model.training:
            indices = gather_object([row[INDEX_COLUMN] for row in inputs])
            flat = zero_std_groups(rewards, self.reward_weights, self.num_generations)
            skipped = self.skipper.record(indices[:: self.num_generations], flat)
            self._metrics["train"]["sampler/zero_std_groups"].append(sum(flat) / len(flat))
            self._metrics["train"]["sampler/skipped_prompts"].append(skipped)
        return rewards

    def _save_rng_state(self, output_dir: str) -> None:
        """The RNG states, and the sampler's, which is the data order's."""
        super()._save_rng_state(output_dir)
        if self.skipper is not None and self.args.should_save:
            self.skipper.save(output_dir)

    def create_model_card(self, model_name: str | None = None, **_: Any) -> None:
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        card = model_card(
            model_name=model_name or output_dir.name,
            evaluations=read_evaluations(output_dir),
            **self.card,
        )
        card.save(output_dir / "README.md")


def train(argv: list[str], extra_callbacks: Sequence[Any] = ()) -> SearchGRPOTrainer:
    """Parse the recipe, check it, train (resuming when asked), save, and publish when asked.
    `extra_callbacks` join the trainer's (benchmarks/skip_solved.py measures with one)."""
    script, args, model_args = parse_recipe(argv)
    set_up_logging(args)
    check_recipe(script, args, model_args)
    start = resume_point(args)

    template = load_template(script.template)
    train_set = prepared_split(script, "dataset_train_split", template)
    if args.skip_zero_std_by:
        group_column(train_set, args.skip_zero_std_by)  # refused here, before anything is written
    eval_set = None
    if args.eval_strategy != "no":
        eval_set = prepared_split(script, "dataset_test_split", template)

    tokenizer = load_tokenizer(model_args, args)
    check_tokenizer(tokenizer, template.protocol)
    check_budget(train_set, tokenizer, args, context_length(model_args, args))

    retriever = load_retriever(script.retriever)
    check_retriever(retriever, script.probe_query or train_set[0]["question"], args.retrieval_topk)

    rewards = load_rewards(script, args)
    if args.use_vllm:
        prepare_cpu_colocate(args)  # vLLM on a CPU: a KV cache size, weights TRL can sync
    trainer = SearchGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[*rewards, make_episode_metrics(template.protocol)],
        args=trainer_config(args, model_args, len(rewards)),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
        callbacks=[*callbacks(args), *extra_callbacks],
        rollout_func=make_rollout_func(
            retriever,
            template.protocol,
            k=args.retrieval_topk,
            max_turns=args.max_turns,
            max_new_tokens=args.max_new_tokens_per_turn,
            max_observation_tokens=args.max_observation_tokens,
            max_retriever_wait_s=args.max_retriever_wait_s,
            generate_batch_size=args.rollout_batch_size,
            scheduler=args.rollout_scheduler,
        ),
        card=dict(
            base_model=model_args.model_name_or_path,
            dataset=script.dataset_name,
            template=script.template,
            observation_tag=template.protocol.observation_open,
            rewards=script.reward_funcs,
            retriever=script.retriever,
            recipe=recipe_record(argv, (script, args, model_args)),
            peft=model_args.use_peft,
            settings={
                "template": template.as_mapping(),
                "k": args.retrieval_topk,
                "max_turns": args.max_turns,
                "max_new_tokens": args.max_new_tokens_per_turn,
                "max_observation_tokens": args.max_observation_tokens,
                "max_completion_tokens": args.max_completion_length,
            },
        ),
    )

    result = trainer.train(resume_from_checkpoint=start)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # with the template and budgets `research-r1 eval` reads back
    pushed = publish(trainer, args.hub_token) if args.push_to_hub else False
    if script.eval_suite is not None and trainer.is_world_process_zero():
        evaluate_trained(trainer, script, args)
    if script.space_repo is not None and trainer.is_world_process_zero():
        publish_space(script, args, pushed)
    return trainer


def main(argv: list[str] | None = None) -> int:
    """The training process: `train`, with our one-line errors instead of tracebacks."""

    def run() -> None:
        train(sys.argv[1:] if argv is None else argv)
        leave_process_group()

    return report(run, hub.user_error)


def leave_process_group() -> None:
    """Destroy the process group before the interpreter exits: gloo's worker threads can still
    hold a collective's tensors, and freeing them while Python shuts down aborts the process
    after a run that went well (seen with tests_vllm/server_ranks.py's ranks)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The steps


def set_up_logging(args: SearchGRPOConfig) -> None:
    """This process's log level: `log_level` on the main process, `log_level_replica` on the
    others, so an 8-process run does not print everything 8 times."""
    level = args.get_process_log_level()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("research_r1").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    # TRL warns that rollout_func is experimental; trl_rollout pins the TRL minor version instead.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def check_recipe(
    script: SearchScriptArguments, args: SearchGRPOConfig, model_args: ModelConfig
) -> None:
    """What the recipe alone can tell: required keys, and set-ups that would fail hours in or
    that nobody has made work."""
    for key, value in (
        ("model_name_or_path", model_args.model_name_or_path),
        ("dataset_name", script.dataset_name),
        ("retriever", script.retriever),
    ):
        if not value:
            raise InputError(f"{key}: required")
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
    if args.push_to_hub and not args.hub_model_id:
        raise InputError("hub_model_id: required with push_to_hub")
    check_retriever_placement(script.retriever, args.world_size)
    if script.eval_suite is not None:
        if script.eval_suite not in SUITES:
            raise InputError(
                f"eval_suite: unknown suite {script.eval_suite!r}; known: {', '.join(SUITES)}"
            )
        if script.eval_limit is not None and script.eval_limit < 1:
            raise InputError(f"eval_limit: {script.eval_limit}; give at least 1 question")
        if script.eval_retriever is not None:
            parse_config(script.eval_retriever)
    if script.space_repo is not None:
        try:
            validate_repo_id(script.space_repo)
        except HFValidationError as error:
            raise InputError(
                f"space_repo: {script.space_repo!r} is not a repo id ({error})"
            ) from None


def check_retriever_placement(retriever: str, num_processes: int) -> None:
    """Each training process builds its own in-process retriever. A dense index on a GPU would
    then be loaded once per process, each copy (64 GB for wiki-18's flat index) on a GPU that
    training needs; refuse it and point at one shared server instead."""
    if num_processes < 2:
        return
    config = parse_config(retriever)
    dense = config.dense if isinstance(config, HybridConfig) else config
    if isinstance(dense, DenseConfig) and dense.device != "cpu":
        raise InputError(
            f"retriever: {retriever} loads a dense index on device {dense.device!r} in each of "
            f"the {num_processes} training processes; serve it once with `research-r1 "
            f"serve-retriever --retriever {retriever}` and give the recipe a `type: remote` "
            "retriever config pointing at it (recipes/retrievers/remote.yaml)"
        )


def prepared_split(script: SearchScriptArguments, key: str, template: Template) -> datasets.Dataset:
    """The split the recipe key `key` names, checked for the columns and template training
    needs."""
    split = getattr(script, key)
    dataset = load_split(script.dataset_name, split, key, script.dataset_config)
    check_split(dataset, split, template)
    return dataset


def load_tokenizer(model_args: ModelConfig, args: SearchGRPOConfig) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            trust_remote_code=args.trust_remote_code,
        )
    except OSError as error:
        mapped = hub.model_error(error, model_args.model_name_or_path, model_args.model_revision)
        if mapped is not None:  # the Hub's: unreachable (exit 4), or no such repo or revision
            raise type(mapped)(f"model_name_or_path: {mapped}") from error
        raise InputError(f"model_name_or_path: {error}") from error


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


def context_length(model_args: ModelConfig, args: SearchGRPOConfig) -> int:
    """The model's context, or vLLM's when it is capped there."""
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=args.trust_remote_code,
    )
    if args.use_vllm and args.vllm_max_model_length:
        return min(config.max_position_embeddings, args.vllm_max_model_length)
    return config.max_position_embeddings


def check_budget(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    args: SearchGRPOConfig,
    context: int,
) -> None:
    """Turn and token budgets, and whether the longest prompt plus a full completion fits the
    model's context. Prompt length grows with the question, so the prompts of the longest
    questions stand for the whole split."""
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


def check_retriever(retriever: Retriever, query: str, k: int) -> None:
    """One probe query before anything is loaded: a retriever that cannot be reached, refuses
    the query or answers in a wrong shape fails here, naming the recipe key; any other error is
    a bug and keeps its traceback."""
    try:
        results = retriever.search([query], k)
    except (RetrievalError, InputError) as error:
        raise InputError(f"retriever: the probe query {query!r} failed: {error}") from error
    if len(results) != 1 or not results[0]:
        raise InputError(f"retriever: the probe query {query!r} returned no passages")


def load_rewards(
    script: SearchScriptArguments, args: SearchGRPOConfig
) -> list[Callable[..., list[float | None]]]:
    """The reward functions the recipe names, with their options from `reward_kwargs`."""
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


def trainer_config(
    args: SearchGRPOConfig, model_args: ModelConfig, num_rewards: int
) -> SearchGRPOConfig:
    """The trainer's copy of the recipe's config (the recipe's own stays as parsed): the episode
    metrics appended to the rewards with weight 0, how to load the model, and no Hub settings,
    since we push (`callbacks`, `publish`) and the Trainer pickles its config into every
    checkpoint, so it must not hold the token."""
    config = copy.copy(args)
    config.reward_weights = [*(args.reward_weights or [1.0] * num_rewards), 0.0]
    model_kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if model_args.load_in_4bit:
        # 4-bit weights must sit on this process's device (its GPU, or the CPU) from the start.
        model_kwargs["device_map"] = {"": str(PartialState().device)}
    config.model_init_kwargs = {**model_kwargs, **(args.model_init_kwargs or {})}
    config.push_to_hub, config.hub_token = False, None
    return config


def callbacks(args: SearchGRPOConfig) -> list[Any]:
    """The reward curve, redrawn at every save; checkpoint pushes with `push_to_hub`."""
    found: list[Any] = [RewardPlotCallback(args.output_dir)]
    if args.push_to_hub:
        strategy = str(getattr(args.hub_strategy, "value", args.hub_strategy))
        found.append(
            HubPushCallback(args.hub_model_id, strategy, args.hub_token, args.hub_private_repo)
        )
    return found


def resume_point(args: SearchGRPOConfig) -> str | None:
    """`resume_from_checkpoint`: a checkpoint folder, or `true`/`latest` (what a bare
    `--resume_from_checkpoint` becomes) for the newest checkpoint in output_dir; with none there
    yet, training starts from scratch, so a preempted job can always be relaunched as it was."""
    value, output_dir = args.resume_from_checkpoint, args.output_dir
    text = str(value).lower() if value is not None else ""
    if text in ("", "false", "none"):
        return None
    if text in ("true", RESUME_LATEST):
        latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if latest is None:
            logger.warning("no checkpoint in %s yet: starting from scratch", output_dir)
        return latest
    if not os.path.isdir(str(value)):
        raise InputError(f"resume_from_checkpoint: {value} is not a checkpoint folder")
    return str(value)


def recipe_record(argv: list[str], recipe: Recipe) -> dict[str, Any]:
    """The recipe as run, for the model card: each key the recipe file or the command line set,
    with the value training used. `TrainingArguments.to_dict()` masks the token (`hub_token`:
    `<HUB_TOKEN>`); the script's and model's dataclasses hold no secret."""
    script, args, model_args = recipe
    values = {**dataclasses.asdict(script), **dataclasses.asdict(model_args), **args.to_dict()}
    return {key: values[key] for key in key_sources(argv)}


def publish(trainer: SearchGRPOTrainer, token: str | None) -> bool:
    """Push the saved model folder with its card, from the main process alone, retried; a
    failure is logged, never raised, so a finished run is never lost to a flaky network (the
    run's folder holds everything for a later upload).

    Not the Trainer's `push_to_hub`: it saves the model again first, which is a collective call
    under FSDP or ZeRO-3 (every process gathers its shard), so retrying it on the main process
    alone would wait forever for the others. The model is saved once, by every process, before
    this; here only files move.
    """
    if not trainer.is_world_process_zero():
        return False
    repo_id = trainer.args.hub_model_id
    try:
        hub.push_folder(
            trainer.args.output_dir,
            repo_id,
            ignore_patterns=FINAL_PUSH_IGNORE,
            private=bool(trainer.args.hub_private_repo),
            commit_message="Final model",
            token=token,
            what=f"push {repo_id}",
        )
    except (*hub.PUSH_ERRORS, InputError) as error:  # never fatal; a bug of ours raises
        logger.error("could not push the final model to %s: %s", repo_id, hub.scrub(str(error)))
        return False
    logger.info("pushed the final model to %s", repo_id)
    return True


def evaluate_trained(
    trainer: SearchGRPOTrainer, script: SearchScriptArguments, args: SearchGRPOConfig
) -> None:
    """The recipe's eval: `research-r1 eval OUTPUT_DIR` on the saved model, into
    OUTPUT_DIR/eval, through transformers (a vLLM engine of the run may still hold the GPU).
    Its scores go into the card, and to the Hub when the run pushes; it runs after the final
    push, on the main process alone, so no other process waits on it. A push the Hub, the
    network or the disk fails is logged, never raised: the model is trained and evaluated."""
    output_dir = Path(args.output_dir)
    evaluation.run_eval(
        evaluation.EvalArguments(
            model=str(output_dir),
            suite=script.eval_suite,
            datasets=script.eval_datasets,
            retriever=script.eval_retriever,
            limit=script.eval_limit,
            backend="transformers",
            output_dir=output_dir / EVAL_FOLDER,
        )
    )
    trainer.create_model_card()
    if args.push_to_hub:
        repo_id = args.hub_model_id
        try:
            hub.push_folder(
                output_dir,
                repo_id,
                allow_patterns=["README.md", f"{EVAL_FOLDER}/**"],
                commit_message="Evaluation results",
                token=args.hub_token,
                what=f"push the evaluation to {repo_id}",
            )
        except (*hub.PUSH_ERRORS, InputError) as error:  # never fatal; a bug of ours raises
            logger.error("could not push the evaluation to %s: %s", repo_id, hub.scrub(str(error)))


def publish_space(script: SearchScriptArguments, args: SearchGRPOConfig, pushed: bool) -> None:
    """The recipe's demo Space (`space_repo`): the app for the pushed model, or for the saved
    model shipped in the Space when the run does not push, with the recipe's retriever config
    and template. A failure of the Hub, the network, the disk or the Space's input checks
    (retried first) is logged, never raised: the model is trained and saved, and `research-r1
    push-space` pushes the Space later. A bug in the Space's packaging raises."""
    if args.push_to_hub and not pushed:
        logger.error("not pushing the Space %s: the model is not on the Hub", script.space_repo)
        return
    model = args.hub_model_id if args.push_to_hub else args.output_dir
    try:
        sha = space.push_space(
            script.space_repo,
            model,
            script.retriever,
            template=script.template,
            token=args.hub_token,
        )
    except (*hub.PUSH_ERRORS, InputError) as error:  # never fatal; a bug of ours raises
        logger.error("could not push the Space %s: %s", script.space_repo, hub.scrub(str(error)))
        return
    logger.info("pushed the Space %s (commit %s) for %s", script.space_repo, sha[:12], model)


if __name__ == "__main__":
    sys.exit(main())
