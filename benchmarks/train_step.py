"""Where a GRPO step's time goes, per shipped recipe and rollout scheduler, and its peak memory.

    .venv/bin/python benchmarks/train_step.py [--recipes NAME ...] [--schedulers turn continuous]
        [--processes 1 2] [--steps 5] [--threads N] [--data DIR]
    PYTHONPATH=. VLLM_VENV/bin/python benchmarks/train_step.py --generation vllm [...]

Each setup or recipe, with one generation backend and a number of training processes, trains in
processes of its own (so its peak memory is its own) with the rollout schedulers (both by
default) taking turns from step to step: `turn`, the turn-synchronous one, and `continuous`,
each episode on its own (the rollout functions the recipe key `rollout_scheduler` picks between).
Taking turns puts both under the same spells of load from other processes on the cores, and the
same weights to within a step. Each scheduler's first step warms up; the table gives the medians
over its `--steps` next ones, a row per scheduler. A step's wall time (on the first process) is
split into:

- generation: the rollout less its retrieval calls (model decoding, plus the rollout's own
  bookkeeping: detokenising turns, parsing tags, inserting observations);
- retrieval: the time spent inside the retriever's `search` (BM25 in process, called between
  engine steps by both schedulers, so it never overlaps generation);
- scoring: inside the reward functions (the recipe's rewards and the episode metrics);
- weight sync: TRL's `VLLMGeneration.sync_weights`, which loads the trained weights (LoRA merged)
  into the colocated vLLM engine before each step's rollout; with transformers the policy
  generates itself and there is nothing to sync;
- fwd/bwd: the rest of the step: the log-probability passes TRL makes for the loss, the forward
  and backward passes and the optimizer step; with several processes also DDP's gradient
  all-reduce and the wait for the slowest process's rollout at the first collective after it.

Rows (`--recipes`, all by default):
- `tiny`, `tiny+lora`: this script's own random tiny model (hidden 128, 2 layers) with the tiny
  recipe's episode settings, on the demo world (or `--data DIR`: a FlashRAG `test.jsonl` and a
  Search-R1 `corpus.jsonl`); on a GPU (only when torch sees one) also bf16 models shaped like
  Qwen2.5-0.5B and 3B. An output bias makes tags and EOS likely, so episodes search and stop.
- `tiny_cpu_grpo`: the CPU recipe as shipped, on what `make demo` wrote to outputs/demo (its
  cold-started model, data and BM25 index).
- every GPU recipe, through the function `research-r1 train` runs in each training process, at
  the reduced shape of `research_r1.training.reduced` (the recipe's architecture at 2 layers of
  64-wide heads, the demo world, the shape keys `SHAPE`; every other key as shipped) with the
  CPU's device and precision flags. `--processes 2` adds rows for the recipes that train data
  parallel (TRL's multi_gpu preset), started as `research-r1 train --num_processes 2` starts
  them (torchrun, DDP over gloo), the cores shared between the processes. With `--generation
  transformers` (the default) a vLLM recipe generates with transformers (`use_vllm false`); with
  `--generation vllm` (vLLM's CPU build importable) only the vLLM recipes run, on TRL's
  colocated engine (one per process), as shipped. Shipped settings a CPU cannot run get a row
  that says why (vLLM server mode, the 8-GPU runs).

Peak memory, one figure for a run's schedulers, is the first process's peak resident set on CPU
(with vLLM, the engine and its KV cache are in it), and the most CUDA memory a step allocated on
a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from research_r1.protocol import SEARCH_R1, load_template
from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.bm25 import BM25Retriever, build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.rewards import search_r1_em
from research_r1.rollout import FINAL_TURN_NOTICE
from research_r1.tiny import build_tiny_model, build_tokenizer
from research_r1.training.reduced import CPU_FLAGS, read_recipe, reduce_recipe
from research_r1.training.trl_rollout import make_episode_metrics, make_rollout_func

ROOT = Path(__file__).resolve().parents[1]
CPU_RECIPE = ROOT / "recipes" / "tiny_cpu_grpo.yaml"
GPU_RECIPES = sorted(
    path for path in (ROOT / "recipes").glob("*.yaml") if not read_recipe(path).get("use_cpu")
)
PARTS = ("rollout", "retrieval", "scoring", "weight_sync")
# vLLM's CPU backend traces the model once and runs it eagerly rather than compiling it with
# inductor (as tests_vllm runs the recipes: a reduced qwen3b run took 90 s instead of 230 s).
VLLM_CPU_ENV = {"VLLM_CPU_CI_ENV": "1"}
# Why some shipped settings get no numbers here.
SERVER_REASON = (
    "not run: TRL syncs weights to a vLLM server over NCCL only ('needs a CUDA device', "
    "VLLMClient.init_communicator), so no weight sync can be timed on a CPU"
)
DATA_PARALLEL_REASON = (
    "not run as shipped: 8 processes on 8 GPUs (TRL's multi_gpu preset: DDP over NCCL, bf16); "
    "no GPU here: `--processes 2` runs its DDP over gloo on the CPU"
)

# How likely a random model is made to write each tag and EOS, whatever the vocabulary size: a
# share s gets the probability mass of s x (vocabulary size) ordinary tokens.
TAG_SHARES = {
    "<think>": 0.05,
    "<search>": 0.15,
    "</search>": 0.15,
    "<answer>": 0.08,
    "</answer>": 0.12,
}
EOS_SHARE = 0.04
QWEN_SHAPES = {
    "qwen2.5-0.5b-shaped": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14
    ),
    "qwen2.5-3b-shaped": dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16
    ),
}
QWEN_VOCAB = 151_936
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Setup:
    """One of this script's own configurations: a model and its episode and GRPO settings."""

    name: str
    device: str
    lora_rank: int  # 0: full fine-tuning
    num_generations: int
    prompts_per_step: int
    micro_batch: int  # sequences per forward/backward pass; one rollout feeds the whole step
    max_turns: int
    k: int
    max_new_tokens: int
    max_observation_tokens: int
    max_completion_length: int
    learning_rate: float
    beta: float


@dataclass(frozen=True)
class Measured:
    """What a row's worker process reports: its timed steps (each with the scheduler that played
    its rollout, its wall time and parts, its peak memory, and its episodes' sampled tokens and
    searches) and the run's settings."""

    steps: list[dict[str, Any]]
    trainable: int
    total: int
    episodes: int
    training: str  # where the policy trained: device, precision, processes
    generation: str  # what generated the episodes

    def of(self, scheduler: str) -> Measured:
        """The steps whose rollout `scheduler` played."""
        return replace(self, steps=[step for step in self.steps if step["scheduler"] == scheduler])

    def median(self, part: str) -> float:
        """The median over the steps of the seconds `part` took (`step`, one of `PARTS`,
        `generation`, `fwd_bwd`): other processes on the same cores slow some steps down."""
        return statistics.median(self.seconds(step, part) for step in self.steps)

    def average(self, key: str) -> float:
        """The mean over the steps of an episode statistic (`tokens`, `searches`)."""
        return statistics.mean(step[key] for step in self.steps)

    @staticmethod
    def seconds(step: dict[str, Any], part: str) -> float:
        if part == "generation":
            return step["rollout"] - step["retrieval"]
        if part == "fwd_bwd":
            return step["step"] - step["rollout"] - step["scoring"] - step["weight_sync"]
        return step[part]


# ---------------------------------------------------------------------------------------------
# The clock: one accumulator per measured part, one record per optimizer step


class Clock(TrainerCallback):
    """Seconds spent in each part (`PARTS`) during each optimizer step, the step's wall time
    and the process's peak memory at its end."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.parts = dict.fromkeys(PARTS, 0.0)
        self.scheduler = ""  # the scheduler playing this step's rollout (`alternate` sets it)
        self.steps: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def measure(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.parts[part] += time.perf_counter() - start

    def timed(self, part: str, function: Callable) -> Callable:
        """`function`, its calls' time added to `part` (its name kept for TRL's logs)."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.measure(part):
                return function(*args, **kwargs)

        return timed

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.parts = dict.fromkeys(PARTS, 0.0)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if self.device == "cuda":
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        step = time.perf_counter() - self.start
        self.steps.append(
            {"scheduler": self.scheduler, "step": step, **self.parts, "peak_bytes": peak}
        )


# ---------------------------------------------------------------------------------------------
# The measured pieces


def time_generation(rollout_func: Callable, clock: Clock) -> Callable:
    """The rollout (generation with its retrieval calls inside: `time_retrieval` tells them)."""
    return clock.timed("rollout", rollout_func)


def alternate(make_rollout_func: Callable, schedulers: Sequence[str], clock: Clock) -> Callable:
    """`make_rollout_func` building one rollout function per scheduler, which take turns from
    step to step (a step's rollout is one call), so both meet the same spells of load from other
    processes on the cores and the same weights to within a step; the clock learns which one
    played each step."""

    def build(*args: Any, **kwargs: Any) -> Callable:
        rollouts = {s: make_rollout_func(*args, **{**kwargs, "scheduler": s}) for s in schedulers}
        order = itertools.cycle(rollouts.items())

        def rollout_func(prompts: list, trainer: Any) -> dict:
            clock.scheduler, rollout = next(order)
            return rollout(prompts, trainer)

        return rollout_func

    return build


class TimedRetriever:
    """A retriever that adds the time spent in `search` to `seconds` (benchmarks/rollout.py
    charges it per turn); other attributes are the wrapped one's (the rollout asks whether it
    `waits_on_network`)."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.seconds = 0.0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        start = time.perf_counter()
        try:
            return self.retriever.search(queries, k)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self.retriever, name)


def time_retrieval(retriever: Retriever, clock: Clock) -> TimedRetriever:
    """Retrieval: every `search` call of the rollout's retriever."""
    timed = TimedRetriever(retriever)
    timed.search = clock.timed("retrieval", timed.search)
    return timed


def time_scoring(reward_funcs: list[Callable], clock: Clock) -> list[Callable]:
    """The reward functions (and the episode metrics, one of them), each call timed. Not TRL's
    `_calculate_rewards` around them: its gather is the first collective after the rollout, so
    with several processes it would also hold the wait for the slowest one's rollout."""
    return [clock.timed("scoring", reward) for reward in reward_funcs]


def time_weight_sync(trainer: Any, clock: Clock) -> None:
    """TRL's own weight sync into its vLLM engine, wrapped on the trainer's `vllm_generation`
    (TRL calls it before each step's rollout); nothing with transformers generation."""
    if trainer.use_vllm:
        generation = trainer.vllm_generation
        generation.sync_weights = clock.timed("weight_sync", generation.sync_weights)


def timed_trainer(trainer_class: type, clock: Clock) -> type:
    """`trainer_class` with every measured piece of its step timed on `clock`."""

    class Timed(trainer_class):
        def __init__(
            self, *args: Any, rollout_func: Callable, reward_funcs: list[Callable], **kwargs: Any
        ) -> None:
            super().__init__(
                *args,
                rollout_func=time_generation(rollout_func, clock),
                reward_funcs=time_scoring(reward_funcs, clock),
                **kwargs,
            )
            time_weight_sync(self, clock)

    return Timed


# ---------------------------------------------------------------------------------------------
# This script's own setups (tiny random models, and Qwen-shaped ones on a GPU)


def load_data(data: Path | None, folder: Path) -> tuple[Dataset, Path]:
    """Questions with their prompts, and a corpus file: from `data`, or the synthetic world."""
    if data is None:
        from research_r1.world import build_world, write_corpus

        world = build_world(seed=0)
        rows = [{"question": q.question, "golden_answers": [q.answer]} for q in world.train]
        corpus = write_corpus(world, folder / "corpus.jsonl")
    else:
        lines = (data / "test.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line]
        corpus = data / "corpus.jsonl"
    template = load_template("search_r1")
    questions = Dataset.from_dict(
        {
            "prompt": [template.prompt(row["question"]) for row in rows],
            "golden_answers": [row["golden_answers"] for row in rows],
        }
    )
    return questions, corpus


def push_towards_tags(model: torch.nn.Module, tokenizer, vocab_size: int) -> None:
    """An output bias for tags and EOS (see TAG_SHARES); ids the tokenizer lacks (a Qwen-sized
    vocabulary over a small tokenizer) are never sampled."""
    bias = torch.zeros(vocab_size, dtype=model.dtype, device=model.device)
    bias[len(tokenizer) :] = -1e4
    for token, share in {**TAG_SHARES, tokenizer.eos_token: EOS_SHARE}.items():
        bias[tokenizer.convert_tokens_to_ids(token)] = math.log(share * len(tokenizer))
    model.lm_head.bias = torch.nn.Parameter(bias, requires_grad=False)


def build_model(setup: Setup, texts: list[str], folder: Path):
    """The setup's random model and a tokenizer trained on `texts` (prompts and passages)."""
    from transformers import AutoTokenizer

    tags = SEARCH_R1.tags
    if setup.device == "cpu":
        path = build_tiny_model(folder, texts, tags, hidden_size=128, head_dim=64, chat=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        push_towards_tags(model, tokenizer, model.config.vocab_size)
        return model, tokenizer
    tokenizer = build_tokenizer(texts, tags, chat=True)
    shape = QWEN_SHAPES[setup.name.removesuffix("+lora")]
    config = Qwen2Config(
        vocab_size=QWEN_VOCAB,
        num_key_value_heads=2,
        max_position_embeddings=32_768,
        tie_word_embeddings=shape["hidden_size"] < 1024,  # as the real 0.5B (tied) and 3B
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **shape,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    push_towards_tags(model, tokenizer, QWEN_VOCAB)
    return model, tokenizer


def setups(cuda: bool) -> list[Setup]:
    """The tiny recipe's episode settings on CPU; Search-R1's (shorter turns) on a GPU."""
    tiny = dict(
        device="cpu",
        num_generations=8,
        prompts_per_step=8,
        micro_batch=64,
        max_turns=2,
        k=2,
        max_new_tokens=16,
        max_observation_tokens=96,
        max_completion_length=256,
        learning_rate=3e-4,
        beta=0.0,
    )
    found = [Setup("tiny", lora_rank=0, **tiny), Setup("tiny+lora", lora_rank=8, **tiny)]
    if cuda:
        paper = dict(
            device="cuda",
            lora_rank=64,
            num_generations=5,
            prompts_per_step=8,
            micro_batch=8,
            max_turns=4,
            k=3,
            max_new_tokens=128,
            max_observation_tokens=500,
            max_completion_length=2048,
            learning_rate=2e-5,
            beta=0.001,
        )
        found += [Setup(f"{name}+lora", **paper) for name in QWEN_SHAPES]
    return found


def run_setup(
    setup: Setup,
    schedulers: Sequence[str],
    steps: int,
    data: Path | None,
    folder: Path,
    clock: Clock,
) -> Any:
    """Train `setup` for `steps` steps on `clock`, the schedulers taking turns; the trainer."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    questions, corpus_file = load_data(data, folder)
    corpus = load_corpus(corpus_file, cache_dir=folder)
    retriever = BM25Retriever(corpus, build_bm25_index(corpus, folder / "bm25"))
    texts = [m["content"] for p in questions["prompt"] for m in p]
    texts += [SEARCH_R1.invalid_notice, FINAL_TURN_NOTICE, *corpus.contents(0, len(corpus))]
    model, tokenizer = build_model(setup, texts, folder / "model")
    episodes = setup.num_generations * setup.prompts_per_step
    config = GRPOConfig(
        output_dir=str(folder / "run"),
        use_cpu=setup.device == "cpu",
        bf16=setup.device == "cuda",
        activation_checkpointing=setup.device == "cuda",
        per_device_train_batch_size=setup.micro_batch,
        gradient_accumulation_steps=episodes // setup.micro_batch,
        num_generations=setup.num_generations,
        max_completion_length=setup.max_completion_length,
        learning_rate=setup.learning_rate,
        beta=setup.beta,
        temperature=1.0,
        max_steps=steps,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        reward_weights=[1.0, 0.0],  # the episode metrics only log, as in training
    )
    peft = None
    if setup.lora_rank:
        peft = LoraConfig(
            r=setup.lora_rank,
            lora_alpha=2 * setup.lora_rank,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
    rollout = alternate(make_rollout_func, schedulers, clock)(
        time_retrieval(retriever, clock),
        SEARCH_R1,
        k=setup.k,
        max_turns=setup.max_turns,
        max_new_tokens=setup.max_new_tokens,
        max_observation_tokens=setup.max_observation_tokens,
        generate_batch_size=episodes,
    )
    trainer = timed_trainer(GRPOTrainer, clock)(
        model=model,
        reward_funcs=[search_r1_em, make_episode_metrics(SEARCH_R1)],
        args=config,
        train_dataset=questions,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[clock],
        rollout_func=rollout,
    )
    trainer.train()
    return trainer


# ---------------------------------------------------------------------------------------------
# The shipped recipes, through the training function `research-r1 train` runs


def recipe_flags(row: Row, steps: int, folder: Path) -> list[str]:
    """`research-r1 train` flags for the row's recipe: tiny_cpu_grpo as shipped (on make demo's
    outputs), a GPU recipe at reduced shape (written under `folder`) with the CPU's flags and
    the row's generation backend and processes; `steps` steps, no checkpoints."""
    recipe = ROOT / "recipes" / f"{row.name}.yaml"
    keys: dict[str, Any] = {
        "max_steps": steps,
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
    }
    if recipe == CPU_RECIPE:
        keys["output_dir"] = folder / "run"
        flags = [str(recipe.relative_to(ROOT))]
        return flags + [item for key, value in keys.items() for item in (f"--{key}", str(value))]
    reduced = reduce_recipe(recipe, folder)
    keys["use_vllm"] = row.generation == "vllm"
    processes = ["--num_processes", str(row.processes)]
    return [str(recipe.relative_to(ROOT)), *reduced.overrides(**keys), *CPU_FLAGS, *processes]


def run_recipe(flags: list[str], schedulers: Sequence[str], clock: Clock) -> Any:
    """Train the recipe through `research_r1.training.train.train` (what `research-r1 train`
    runs in each process) with its trainer class and retriever loader timed on `clock` and a
    rollout function per scheduler (what the recipe key `rollout_scheduler` picks), taking
    turns; the trainer."""
    from research_r1.retrieval.config import load_retriever
    from research_r1.training import train as training
    from research_r1.training.launch import launch_args

    argv = launch_args(flags).training_script_args
    trainer_class = timed_trainer(training.SearchGRPOTrainer, clock)
    with (
        mock.patch.object(training, "SearchGRPOTrainer", trainer_class),
        mock.patch.object(
            training, "make_rollout_func", alternate(make_rollout_func, schedulers, clock)
        ),
        mock.patch.object(
            training, "load_retriever", lambda spec: time_retrieval(load_retriever(spec), clock)
        ),
    ):
        return training.train(argv, extra_callbacks=[clock])


def launch_ranks(flags: list[str], worker_argv: list[str]) -> None:
    """This script's worker in every process the recipe's flags ask for, started as `research-r1
    train` starts the training processes (accelerate's launcher, the recipe's config: torchrun
    and DDP over gloo on a CPU)."""
    from accelerate.commands.launch import launch_command

    from research_r1.training.launch import launch_args

    launch = launch_args(flags)
    launch.module, launch.training_script = False, __file__
    launch.training_script_args = worker_argv
    launch_command(launch)


def where_trained(trainer: Any) -> str:
    """The device the policy trained on, its precision, processes and threads per process."""
    args = trainer.args
    dtype = "bf16" if args.bf16 else str(trainer.model.dtype).removeprefix("torch.")
    if any(hasattr(p, "quant_state") for p in trainer.model.parameters()):
        dtype += " over a 4-bit base"
    processes = "1 process" if args.world_size == 1 else f"{args.world_size} processes, gloo"
    return f"{args.device.type}, {dtype}, {processes} x {torch.get_num_threads()} threads"


def generation_backend(trainer: Any) -> str:
    """What generated the episodes: transformers (the policy itself) or TRL's colocated vLLM
    engine, with the dtype it runs in."""
    if not trainer.use_vllm:
        return "transformers"
    import vllm

    config = trainer.vllm_generation.llm.llm_engine.vllm_config.model_config
    return f"vLLM {vllm.__version__} colocate, {str(config.dtype).removeprefix('torch.')}"


# ---------------------------------------------------------------------------------------------
# One row, in worker processes of its own


@dataclass(frozen=True)
class Row:
    """One measured run: a setup or recipe, a generation backend (`transformers` or `vllm`) and
    training processes; a table row per scheduler."""

    name: str
    generation: str
    processes: int = 1


def parameter_count(parameter: torch.nn.Parameter) -> int:
    """Its elements, a 4-bit weight's unpacked (bitsandbytes keeps the shape in quant_state)."""
    state = getattr(parameter, "quant_state", None)
    return state.shape.numel() if state is not None else parameter.numel()


def all_steps(steps: int, schedulers: Sequence[str]) -> int:
    """The steps a row trains: a warm-up step and `steps` timed ones per scheduler."""
    return (steps + 1) * len(schedulers)


def measure_row(
    row: Row, schedulers: Sequence[str], steps: int, data: Path | None, flags: list[str] | None
) -> Measured:
    """Train the row (a recipe: with `flags`, which hold its step count) for a warm-up step and
    `steps` timed steps per scheduler, the schedulers taking turns; the timed steps."""
    own = {setup.name: setup for setup in setups(torch.cuda.is_available())}
    clock = Clock(own[row.name].device if row.name in own else "cpu")
    with tempfile.TemporaryDirectory() as folder:
        if flags is None:
            total = all_steps(steps, schedulers)
            trainer = run_setup(own[row.name], schedulers, total, data, Path(folder), clock)
        else:
            trainer = run_recipe(flags, schedulers, clock)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    timed = [
        {
            **step,
            "tokens": entry["completions/mean_length"],
            "searches": entry["rollout/searches_per_episode"],
        }
        for step, entry in zip(clock.steps, logs, strict=True)
    ]
    args = trainer.args
    episodes = args.per_device_train_batch_size * args.gradient_accumulation_steps
    parameters = list(trainer.model.parameters())
    return Measured(
        steps=timed[len(schedulers) :],  # each scheduler's first step warms up
        trainable=sum(parameter_count(p) for p in parameters if p.requires_grad),
        total=sum(parameter_count(p) for p in parameters),
        episodes=episodes * args.world_size,
        training=where_trained(trainer),
        generation=generation_backend(trainer),
    )


def worker(args: argparse.Namespace) -> None:
    """A row's worker: launch the row's processes, or (in each of them) measure the row; the
    first process writes what it measured to `args.worker`."""
    row = Row(args.recipes[0], args.generation, args.processes[0])
    flags = json.loads(args.flags.read_text()) if args.flags else None
    if row.processes > 1 and "LOCAL_RANK" not in os.environ:
        launch_ranks(flags, sys.argv[1:])
        return
    torch.set_num_threads(max(1, args.threads // row.processes))  # the cores, shared
    measured = measure_row(row, args.schedulers, args.steps, args.data, flags)
    if int(os.environ.get("RANK", "0")) == 0:
        args.worker.write_text(json.dumps(asdict(measured)))


def run_worker(row: Row, args: argparse.Namespace, log: Path) -> Measured | str:
    """The row's worker in a fresh process of this interpreter (a recipe reduced here first);
    what it measured, or why it did not (the last line of its output, kept in `log`)."""
    if row.name == CPU_RECIPE.stem and not (ROOT / "outputs" / "demo" / "model").is_dir():
        return "not run: tiny_cpu_grpo trains on outputs/demo; run `make demo` first"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "measured.json"
        argv = [sys.executable, __file__, "--worker", str(out), "--recipes", row.name]
        argv += ["--schedulers", *args.schedulers, "--generation", row.generation]
        argv += ["--processes", str(row.processes)]
        argv += ["--steps", str(args.steps), "--threads", str(args.threads)]
        argv += ["--data", str(args.data)] if args.data else []
        if row.name in recipe_names():
            flags = Path(folder) / "flags.json"
            total = all_steps(args.steps, args.schedulers)
            flags.write_text(json.dumps(recipe_flags(row, total, Path(folder))))
            argv += ["--flags", str(flags)]
        env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
        env |= VLLM_CPU_ENV if row.generation == "vllm" else {}
        with log.open("w") as output:
            done = subprocess.run(argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            return f"failed ({log}): {lines[-1] if lines else done.returncode}"
        return Measured(**json.loads(out.read_text()))


# ---------------------------------------------------------------------------------------------
# The rows and the table


def recipe_names() -> list[str]:
    return [CPU_RECIPE.stem, *(path.stem for path in GPU_RECIPES)]


def row_names() -> list[str]:
    """This script's own setups (the Qwen-shaped ones where torch sees a GPU), then the
    recipes."""
    return [setup.name for setup in setups(torch.cuda.is_available())] + recipe_names()


def data_parallel(name: str) -> bool:
    """Whether the recipe trains data parallel as shipped (TRL's multi_gpu preset)."""
    path = ROOT / "recipes" / f"{name}.yaml"
    return path in GPU_RECIPES and read_recipe(path).get("accelerate_config") == "multi_gpu"


def uses_vllm(name: str) -> bool:
    path = ROOT / "recipes" / f"{name}.yaml"
    return path in GPU_RECIPES and bool(read_recipe(path).get("use_vllm"))


def selected_rows(args: argparse.Namespace) -> list[Row]:
    """The rows asked for that run with this generation backend (vLLM: the vLLM recipes); more
    than one process only for the recipes that train data parallel."""
    names = [name for name in args.recipes if args.generation == "transformers" or uses_vllm(name)]
    return [
        Row(name, args.generation, processes)
        for name in names
        for processes in args.processes
        if processes == 1 or data_parallel(name)
    ]


def unmeasured_rows(rows: list[Row]) -> list[tuple[str, str, str]]:
    """Settings of the measured recipes that cannot run on this CPU: (recipe, setting, why)."""
    found = []
    for name in dict.fromkeys(row.name for row in rows if row.generation == "vllm"):
        found.append((name, "vLLM server", SERVER_REASON))
    for name in dict.fromkeys(row.name for row in rows if data_parallel(row.name)):
        found.append((name, "as shipped", DATA_PARALLEL_REASON))
    return found


def reason_cells(name: str, setting: str, reason: str) -> str:
    """A markdown row that says why a row has no numbers."""
    return "| " + " | ".join([name, "both", setting, *[""] * 5, reason, *[""] * 6]) + " |"


def row_cells(name: str, scheduler: str, measured: Measured, peak_bytes: int) -> str:
    """One markdown row: the scheduler's steps (median, min-max) and their parts."""
    steps = [s["step"] for s in measured.steps]
    sync = "none (policy generates)"
    if measured.generation.startswith("vLLM"):
        sync = f"{measured.median('weight_sync'):.3f}"
    return (
        f"| {name} | {scheduler} | {measured.generation} | {measured.training} "
        f"| {measured.trainable / 1e6:.2f}M / {measured.total / 1e6:.2f}M | {measured.episodes} "
        f"| {measured.average('tokens'):.1f} | {measured.average('searches'):.2f} "
        f"| {measured.median('step'):.2f} ({min(steps):.2f}-{max(steps):.2f}) "
        f"| {measured.median('generation'):.2f} | {measured.median('retrieval'):.3f} "
        f"| {measured.median('scoring'):.3f} | {measured.median('fwd_bwd'):.2f} | {sync} "
        f"| {peak_bytes / 2**30:.2f} |"
    )


def print_table(
    results: list[tuple[Row, Measured | str]],
    unmeasured: list[tuple[str, str, str]],
    args: argparse.Namespace,
) -> None:
    print(
        f"\nGRPO step: medians over {args.steps} steps per scheduler, the schedulers taking turns "
        f"after a warm-up step each; torch {torch.__version__}; GPU recipes at reduced shape"
    )
    print(
        "| recipe | scheduler | generation | training | trainable / total params | episodes "
        "| sampled tokens / episode | searches / episode | step s (min-max) | generation s "
        "| retrieval s | scoring s | fwd/bwd s | weight sync s | peak GiB (process) |"
    )
    print("|" + "---|" * 15)
    for row, measured in results:
        if isinstance(measured, str):
            print(reason_cells(row.name, row.generation, measured))
            continue
        peak = max(step["peak_bytes"] for step in measured.steps)
        for scheduler in args.schedulers:
            print(row_cells(row.name, scheduler, measured.of(scheduler), peak))
    for cells in unmeasured:
        print(reason_cells(*cells))


def print_before_after(results: list[tuple[Row, Measured | str]]) -> None:
    """Turn (the scheduler before issue 23) against continuous (its change), for each recipe,
    generation backend and processes. The scheduler leaves fwd/bwd alone (up to the episodes'
    lengths): how far its two medians differ shows how far the rest of the machine moved them."""
    print(
        "\n| recipe | generation | training | step s: turn -> continuous | continuous / turn "
        "| generation s: turn -> continuous | fwd/bwd s: turn -> continuous |"
    )
    print("|" + "---|" * 7)
    for row, measured in results:
        if isinstance(measured, str):
            continue
        turn, continuous = measured.of("turn"), measured.of("continuous")
        print(
            f"| {row.name} | {measured.generation} | {measured.training} "
            f"| {turn.median('step'):.2f} -> {continuous.median('step'):.2f} "
            f"| {continuous.median('step') / turn.median('step'):.2f} "
            f"| {turn.median('generation'):.2f} -> {continuous.median('generation'):.2f} "
            f"| {turn.median('fwd_bwd'):.2f} -> {continuous.median('fwd_bwd'):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per row and scheduler (default 5)"
    )
    parser.add_argument("--recipes", nargs="+", choices=row_names(), default=row_names())
    parser.add_argument(
        "--schedulers", nargs="+", choices=["turn", "continuous"], default=["turn", "continuous"]
    )
    parser.add_argument(
        "--generation",
        choices=["transformers", "vllm"],
        default="transformers",
        help="vllm: the vLLM recipes on TRL's colocated engine (vLLM's CPU build installed)",
    )
    parser.add_argument(
        "--processes",
        nargs="+",
        type=int,
        default=[1],
        help="training processes for the data-parallel recipes (DDP over gloo); default 1",
    )
    parser.add_argument(
        "--data", type=Path, help="folder with test.jsonl and corpus.jsonl, for the tiny setups"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--flags", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    os.environ.setdefault("TQDM_DISABLE", "1")  # the table alone on stdout (logs keep the rest)
    rows = selected_rows(args)
    logs = Path(tempfile.mkdtemp(prefix="train_step_logs_"))  # kept: a failed row names its log
    results: list[tuple[Row, Measured | str]] = []
    for row in rows:
        log = logs / f"{row.name}.{row.generation}.{row.processes}.log"
        results.append((row, run_worker(row, args, log)))
        print(f"{row}: {log}", file=sys.stderr, flush=True)
    print_table(results, unmeasured_rows(rows), args)
    if {"turn", "continuous"} <= set(args.schedulers):
        print_before_after(results)


if __name__ == "__main__":
    main()
