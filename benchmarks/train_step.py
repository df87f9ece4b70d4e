"""Time and peak memory of one GRPO step with the search rollout, split into its parts.

    .venv/bin/python benchmarks/train_step.py [--steps 3] [--data DIR] [--threads N]

A step is one rollout (every episode of the step, turn by turn) and one optimizer step on it.
Its wall time is split into:

- generation: the rollout less its retrieval calls (model decoding, plus the rollout's own
  bookkeeping: detokenising turns, parsing tags, inserting observations);
- retrieval: the time spent inside `Retriever.search` (BM25 over the passages, in process);
- scoring: inside the reward functions (the reward and the episode metrics);
- fwd/bwd: the rest of the step: the log-probability passes TRL makes for the loss, the forward
  and backward passes and the optimizer step;
- weight sync: pushing the trained weights into vLLM before the rollout (vLLM only: with
  transformers generation the policy generates itself, and the column says so).

`--schedulers turn continuous` runs every setup with each rollout scheduler (the recipe key
`rollout_scheduler`): `turn`, the turn-synchronous one this benchmark measured before, and
`continuous`, each episode on its own (with transformers, over `BatchEngine`).

Peak memory is the process's peak resident set on CPU, and the peak allocated CUDA memory of
the step on a GPU.

Questions and passages come from the demo's synthetic world (`research_r1.world`: one-sentence
passages), or with `--data DIR` from a FlashRAG `test.jsonl` and a Search-R1 `corpus.jsonl`,
e.g. the Bamboogle mini set (real questions, real Wikipedia passages of about 100 words, so
observations as long as in training on wiki-18).

Models are random, so nothing is downloaded: on CPU the tiny model of the demo recipe (hidden
128, 2 layers), fully fine-tuned and with LoRA; on a GPU (only when torch sees one) bf16 models
shaped like Qwen2.5-0.5B and Qwen2.5-3B (with their real vocabulary size, so the output layer
costs what it does in training) with LoRA on every linear layer. A random model rarely writes a
tag, so an output bias makes tags and EOS likely: episodes then search, answer and stop, instead
of every turn running to its token budget.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
from research_r1.training.trl_rollout import make_episode_metrics, make_rollout_func

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
    """One benchmarked configuration: a model and the episode and GRPO settings it runs with."""

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
class StepTiming:
    total: float
    rollout: float
    retrieval: float
    scoring: float
    peak_bytes: int


class TimedRetriever:
    """A retriever that adds the time spent in `search` to `seconds`."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.seconds = 0.0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        start = time.perf_counter()
        try:
            return self.retriever.search(queries, k)
        finally:
            self.seconds += time.perf_counter() - start


class StepTimer(TrainerCallback):
    """Wall time, rollout time, retrieval time and peak memory of every optimizer step."""

    def __init__(self, retriever: TimedRetriever, device: str) -> None:
        self.retriever = retriever
        self.device = device
        self.rollout_seconds = self.scoring_seconds = 0.0
        self.steps: list[StepTiming] = []

    def timed_reward(self, reward: Callable) -> Callable:
        """`reward`, adding its time to the step's scoring (its name kept for TRL's logs)."""

        @functools.wraps(reward)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return reward(*args, **kwargs)
            finally:
                self.scoring_seconds += time.perf_counter() - start

        return timed

    def timed(self, rollout: Callable) -> Callable:
        def rollout_func(prompts: list, trainer) -> dict:
            start = time.perf_counter()
            try:
                return rollout(prompts, trainer)
            finally:
                self._sync()
                self.rollout_seconds += time.perf_counter() - start

        return rollout_func

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.retriever.seconds = self.rollout_seconds = self.scoring_seconds = 0.0
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        if self.device == "cuda":
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        self.steps.append(
            StepTiming(
                time.perf_counter() - self.start,
                self.rollout_seconds,
                self.retriever.seconds,
                self.scoring_seconds,
                peak,
            )
        )


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


def run(
    setup: Setup,
    questions: Dataset,
    retriever: Retriever,
    texts: list[str],
    steps: int,
    scheduler: str,
):
    """Train `steps + 1` steps (the first warms up and is dropped); the timings of the rest."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    timed = TimedRetriever(retriever)
    timer = StepTimer(timed, setup.device)
    with tempfile.TemporaryDirectory() as folder:
        model, tokenizer = build_model(setup, texts, Path(folder) / "model")
        episodes = setup.num_generations * setup.prompts_per_step
        config = GRPOConfig(
            output_dir=str(Path(folder) / "run"),
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
            max_steps=steps + 1,
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
        rollout = make_rollout_func(
            timed,
            SEARCH_R1,
            k=setup.k,
            max_turns=setup.max_turns,
            max_new_tokens=setup.max_new_tokens,
            max_observation_tokens=setup.max_observation_tokens,
            generate_batch_size=episodes,
            scheduler=scheduler,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[
                timer.timed_reward(search_r1_em),
                timer.timed_reward(make_episode_metrics(SEARCH_R1)),
            ],
            args=config,
            train_dataset=questions,
            processing_class=tokenizer,
            peft_config=peft,
            callbacks=[timer],
            rollout_func=timer.timed(rollout),
        )
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        trainer.train()
        timed_logs = trainer.state.log_history[1:-1]  # the warm-up step and the summary dropped
        del trainer, model  # free the setup's memory before the next one is measured
        gc.collect()
        if setup.device == "cuda":
            torch.cuda.empty_cache()
    episode = {
        key: statistics.mean(row[key] for row in timed_logs)
        for key in ("completions/mean_length", "rollout/searches_per_episode")
    }
    return timer.steps[1:], trainable, total, episode


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setup (default 3)")
    parser.add_argument(
        "--data", type=Path, help="folder with test.jsonl and corpus.jsonl (default: synthetic)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--schedulers", nargs="+", choices=["turn", "continuous"], default=["turn", "continuous"]
    )
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        questions, corpus_file = load_data(args.data, Path(folder))
        corpus = load_corpus(corpus_file, cache_dir=folder)
        index = build_bm25_index(corpus, Path(folder) / "bm25")
        retriever = BM25Retriever(corpus, index)
        texts = [m["content"] for p in questions["prompt"] for m in p]
        texts += [SEARCH_R1.invalid_notice, FINAL_TURN_NOTICE]
        texts += corpus.contents(0, len(corpus))
        rows = []
        for setup in setups(torch.cuda.is_available()):
            for scheduler in args.schedulers:
                measured = run(setup, questions, retriever, texts, args.steps, scheduler)
                rows.append((setup, scheduler, *measured))

    print(f"\nGRPO step, mean of {args.steps} steps after a warm-up step, {args.threads} threads")
    print(
        "| setup | scheduler | device | trainable / total params | episodes "
        "| sampled tokens / episode | searches / episode | step s | generation s | retrieval s "
        "| scoring s | fwd/bwd s | weight sync s | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for setup, scheduler, timings, trainable, total, episode in rows:
        step = statistics.mean(t.total for t in timings)
        rollout = statistics.mean(t.rollout for t in timings)
        retrieval = statistics.mean(t.retrieval for t in timings)
        scoring = statistics.mean(t.scoring for t in timings)
        peak = max(t.peak_bytes for t in timings) / 2**30
        device = "cpu" if setup.device == "cpu" else torch.cuda.get_device_name()
        print(
            f"| {setup.name} | {scheduler} | {device} "
            f"| {trainable / 1e6:.2f}M / {total / 1e6:.1f}M "
            f"| {setup.num_generations * setup.prompts_per_step} "
            f"| {episode['completions/mean_length']:.1f} "
            f"| {episode['rollout/searches_per_episode']:.2f} | {step:.2f} "
            f"| {rollout - retrieval:.2f} | {retrieval:.3f} | {scoring:.3f} "
            f"| {step - rollout - scoring:.2f} | none (transformers generates) | {peak:.2f} |"
        )


if __name__ == "__main__":
    main()
