"""Where the time of the multi-turn search rollout goes, turn by turn.

    .venv/bin/python benchmarks/rollout.py [--batch-sizes 8 64 256] [--batches 2] [--max-turns 4]
        [--top-k 3] [--threads 1] [--device cpu|cuda] [--data DIR]

`run_rollout` plays one batch of episodes. Each turn's wall time is split, by wrapping the
generator and the retriever with timers, into:

- generation: inside `Generator.generate` (the model, or the scripted policy below);
- retrieval: inside `Retriever.search` (BM25 over the passages, in process);
- orchestration: the rest of the turn, i.e. the rollout's own work: detokenising and parsing each
  turn, tokenising observations and notices, budgets, bookkeeping, building the next contexts.

A turn runs from the start of one `generate` call to the start of the next (the first from the
start of the rollout, the last to its end). Orchestration is also given per sequence-turn: its
time over the (sequence, turn) pairs that were active, i.e. the rows `generate` was given.

Retrieval calls are counted per turn and checked: a turn in which any episode searched must make
exactly one `search` call with exactly those queries (one per rank: this is one process), and a
turn without searches none. Which episodes searched is worked out independently of the rollout,
from the ids the generator returned.

Generators:

- scripted: a policy that plays planned turns without a model (search 0..max_turns times with the
  question as its query, sometimes an invalid step, then answer), so its rows show the
  orchestration overhead alone, with real BM25 retrieval and real observations;
- tiny: the random tiny Qwen2 of `benchmarks/train_step.py` (hidden 128, 2 layers), sampling
  through `TransformersGenerator`, with the output bias that makes it write tags and EOS often;
- on a GPU only (`--device cuda`): random bf16 models shaped like Qwen2.5-0.5B and Qwen2.5-3B
  (train_step's shapes, real vocabulary size), through transformers, and through vLLM when vLLM
  is importable (the same bias given per request, since vLLM's Qwen2 has no output bias).

Questions and passages come from the synthetic world, or with `--data DIR` from a FlashRAG
`test.jsonl` and a Search-R1 `corpus.jsonl` (e.g. the Bamboogle mini set, whose 100-word passages
make observations as long as in training on wiki-18). Each generator plays one untimed warm-up
batch at the first batch size; every (generator, batch size) then plays `--batches` timed
batches, and figures are means per timed batch.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from train_step import TimedRetriever, build_model, load_data, setups
from transformers import GenerationConfig

from research_r1.generation import Generation, Generator, TransformersGenerator
from research_r1.protocol import SEARCH_R1, Prompt, parse_turn
from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.bm25 import BM25Retriever, build_bm25_index
from research_r1.retrieval.corpus import load_corpus
from research_r1.rollout import (
    FINAL_TURN_NOTICE,
    Episode,
    RolloutConfig,
    encode_prompt,
    run_rollout,
)

SEARCH_TURN = "<think> I need to search </think>\n<search> {query} </search>"
ANSWER_TURN = "<think> I found it </think>\n<answer> {answer} </answer>"
INVALID_TURN = "<think> I am not sure what to"  # cut off: neither a search nor an answer
INVALID_SHARE = 0.1  # of the scripted search turns
SAMPLED_EOS_SHARE = 0.5  # of the scripted answers: the model samples EOS after </answer>


@dataclass
class Turn:
    """One `generate` call of a rollout and what followed it until the next one."""

    start: float
    rows: int
    generation: float = 0.0
    retrieval: float = 0.0
    wall: float = 0.0
    calls: int = 0
    queries: int = 0
    searches: int = 0  # episodes that asked for a search this turn, read from the sampled ids
    generations: list[Generation] = field(default_factory=list, repr=False)

    @property
    def orchestration(self) -> float:
        return self.wall - self.generation - self.retrieval

    @property
    def calls_ok(self) -> bool:
        return self.calls == (self.searches > 0) and self.queries == self.searches


class TimedGenerator:
    """A generator that records each call as a `Turn`: its start, duration, rows and output."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.collective = getattr(generator, "collective", False)
        self.turns: list[Turn] = []

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        turn = Turn(start=time.perf_counter(), rows=len(contexts))
        self.turns.append(turn)
        generations = self.generator.generate(contexts, max_new_tokens, stop)
        turn.generation = time.perf_counter() - turn.start
        turn.generations = generations
        return generations


class TurnRetriever(TimedRetriever):
    """train_step's timed retriever, charging each call to the turn in progress."""

    def __init__(self, retriever: Retriever, turns: list[Turn]) -> None:
        super().__init__(retriever)
        self.turns = turns

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        before = self.seconds
        try:
            return super().search(queries, k)
        finally:
            turn = self.turns[-1]
            turn.calls += 1
            turn.queries += len(queries)
            turn.retrieval += self.seconds - before


class ScriptedPolicy:
    """A `Generator` without a model: each prompt plays a plan of turns fixed in advance.

    Plans are keyed by prompt ids, and a context's turn number is the number of `<think>` tags
    in its completion (every scripted turn writes one; observations and notices never do), so
    the same prompt may appear many times in a batch, as in a GRPO group.
    """

    def __init__(self, tokenizer: Any, max_turns: int, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.rng = random.Random(seed)
        self.think_id = tokenizer.convert_tokens_to_ids("<think>")
        self.plans: dict[tuple[int, ...], list[Generation]] = {}
        self.prompt_lengths: set[int] = set()

    def plan(self, prompt_ids: Sequence[int], query: str, answer: str) -> None:
        """Search for `query` 0..max_turns times (some turns invalid instead), then answer."""
        key = tuple(prompt_ids)
        if key in self.plans:
            return
        turns = [
            self._turn(INVALID_TURN, "length")
            if self.rng.random() < INVALID_SHARE
            else self._turn(SEARCH_TURN.format(query=query), "stop")
            for _ in range(self.rng.randint(0, self.max_turns))
        ]
        answer_text = ANSWER_TURN.format(answer=answer)
        if self.rng.random() < SAMPLED_EOS_SHARE:
            turns.append(self._turn(answer_text + self.tokenizer.eos_token, "eos"))
        else:
            turns.append(self._turn(answer_text, "stop"))
        self.plans[key] = turns
        self.prompt_lengths.add(len(key))

    def _turn(self, text: str, finish: str) -> Generation:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return Generation(ids, [-1.0] * len(ids), finish)  # type: ignore[arg-type]

    def generate(
        self, contexts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        generations = []
        for context, budget in zip(contexts, max_new_tokens, strict=True):
            length = next(n for n in self.prompt_lengths if tuple(context[:n]) in self.plans)
            turns = self.plans[tuple(context[:length])]
            done = list(context[length:]).count(self.think_id)
            turn = turns[min(done, len(turns) - 1)]
            if len(turn.token_ids) > budget:
                turn = Generation(turn.token_ids[:budget], turn.logprobs[:budget], "length")
            generations.append(turn)
        return generations


@dataclass(frozen=True)
class Result:
    """The timed batches of one generator at one batch size."""

    name: str
    device: str
    batch_size: int
    batches: list[list[Turn]]
    episodes: list[Episode]

    @property
    def calls_ok(self) -> bool:
        queries = sum(turn.queries for turns in self.batches for turn in turns)
        searches = sum(episode.num_searches for episode in self.episodes)
        turns_ok = all(turn.calls_ok for turns in self.batches for turn in turns)
        return turns_ok and queries == searches


def question_of(prompt: Prompt) -> str:
    """The question inside a Search-R1 prompt (it ends the user message)."""
    content = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    return content.rpartition("Question: ")[2].strip()


def count_searches(turns: Sequence[Turn], tokenizer: Any, max_turns: int) -> None:
    """Which episodes asked for a search each turn, from the sampled ids alone: a search block
    in a turn that is not the last and did not end with EOS (the rollout's rules)."""
    for number, turn in enumerate(turns):
        if number == max_turns:
            continue
        texts = tokenizer.batch_decode(
            [g.token_ids for g in turn.generations], skip_special_tokens=False
        )
        turn.searches = sum(
            g.finish != "eos" and parse_turn(text).kind == "search"
            for g, text in zip(turn.generations, texts, strict=True)
        )


def play_batch(
    prompt_ids: list[list[int]],
    generator: Generator,
    tokenizer: Any,
    retriever: Retriever,
    config: RolloutConfig,
) -> tuple[list[Turn], list[Episode]]:
    """One timed `run_rollout`, with its turns."""
    timed = TimedGenerator(generator)
    counted = TurnRetriever(retriever, timed.turns)
    start = time.perf_counter()
    episodes = run_rollout(
        prompt_ids,
        generator=timed,
        tokenizer=tokenizer,
        retriever=counted,
        protocol=SEARCH_R1,
        config=config,
    )
    end = time.perf_counter()
    bounds = [start] + [turn.start for turn in timed.turns[1:]] + [end]
    for turn, begin, finish in zip(timed.turns, bounds, bounds[1:], strict=False):
        turn.wall = finish - begin
    count_searches(timed.turns, tokenizer, config.max_turns)
    for turn in timed.turns:
        turn.generations = []
    return timed.turns, episodes


def measure(
    name: str,
    device: str,
    generator: Generator,
    tokenizer: Any,
    questions: Any,
    retriever: Retriever,
    config: RolloutConfig,
    batch_size: int,
    batches: int,
    warm_up: bool,
) -> Result:
    """`batches` timed batches, after an untimed one if `warm_up`; batch b holds questions
    b*n.. (cycling)."""
    timed: list[list[Turn]] = []
    episodes: list[Episode] = []
    for batch in range(batches + warm_up):
        rows = [(batch * batch_size + i) % len(questions) for i in range(batch_size)]
        prompt_ids = [encode_prompt(questions[row]["prompt"], tokenizer) for row in rows]
        if isinstance(generator, ScriptedPolicy):
            for ids, row in zip(prompt_ids, rows, strict=True):
                query = question_of(questions[row]["prompt"])
                generator.plan(ids, query, questions[row]["golden_answers"][0])
        torch.manual_seed(batch)
        turns, played = play_batch(prompt_ids, generator, tokenizer, retriever, config)
        if batch >= warm_up:
            timed.append(turns)
            episodes += played
    return Result(name, device, batch_size, timed, episodes)


def vllm_generator(model: Any, tokenizer: Any, folder: Path, max_model_len: int) -> Generator:
    """A vLLM engine on `model`'s weights, sampling with its output bias given per request.

    vLLM's Qwen2 has no output bias, so the bias is removed from the saved weights and passed as
    `logit_bias`, and ids beyond the tokenizer (the -inf part of the bias) are disallowed.
    """
    from vllm import LLM

    from research_r1.generation_vllm import VLLMGenerator

    bias = model.lm_head.bias.detach().float().cpu()
    allowed = list(range(len(tokenizer)))
    logit_bias = {i: bias[i].item() for i in allowed if bias[i] != 0}
    model.lm_head.bias = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    llm = LLM(
        model=str(folder),
        dtype=str(model.dtype).removeprefix("torch."),
        max_model_len=max_model_len,
        gpu_memory_utilization=0.4,  # leaves room for the next shape's engine if one lingers
        seed=0,
    )
    return VLLMGenerator(
        llm, seed=0, generation_kwargs={"logit_bias": logit_bias, "allowed_token_ids": allowed}
    )


def free(device: str) -> None:
    """Release a dropped model's memory before the next one is built."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def print_tables(results: Sequence[Result], args: argparse.Namespace) -> None:
    print(
        f"\nSearch rollout, mean of {args.batches} batches after a warm-up batch, "
        f"{args.threads} threads; max_turns {args.max_turns}, k {args.top_k}, max_new_tokens "
        f"{args.max_new_tokens}, max_observation_tokens {args.max_observation_tokens}, "
        f"max_completion_tokens {args.max_completion_tokens}"
    )
    print(
        "| generator | device | batch | seq-turns | sampled tokens / episode "
        "| searches / episode | rollout s | generation s | retrieval s | orchestration s "
        "| orchestration µs / seq-turn | retrieval calls / turns with searches | check |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        turns = [turn for batch in result.batches for turn in batch]
        per_batch = len(result.batches)
        seq_turns = sum(turn.rows for turn in turns)
        orchestration = sum(turn.orchestration for turn in turns)
        calls = sum(turn.calls for turn in turns)
        searching = sum(turn.searches > 0 for turn in turns)
        episodes = result.episodes
        print(
            f"| {result.name} | {result.device} | {result.batch_size} "
            f"| {seq_turns / per_batch:.0f} "
            f"| {statistics.mean(sum(e.env_mask) for e in episodes):.1f} "
            f"| {statistics.mean(e.num_searches for e in episodes):.2f} "
            f"| {sum(turn.wall for turn in turns) / per_batch:.3f} "
            f"| {sum(turn.generation for turn in turns) / per_batch:.3f} "
            f"| {sum(turn.retrieval for turn in turns) / per_batch:.3f} "
            f"| {orchestration / per_batch:.3f} "
            f"| {orchestration / seq_turns * 1e6:.0f} "
            f"| {calls} / {searching} | {'PASS' if result.calls_ok else 'FAIL'} |"
        )

    print("\nPer turn (means per batch; calls and turns with searches summed over batches)")
    print(
        "| generator | batch | turn | active seqs | searches | generation ms | retrieval ms "
        "| orchestration ms | orchestration µs / seq-turn | retrieval calls / turns with searches |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for number in range(max(len(batch) for batch in result.batches)):
            turns = [batch[number] for batch in result.batches if len(batch) > number]
            n = len(result.batches)
            rows = sum(turn.rows for turn in turns)
            orchestration = sum(turn.orchestration for turn in turns)
            print(
                f"| {result.name} | {result.batch_size} | {number} | {rows / n:.1f} "
                f"| {sum(turn.searches for turn in turns) / n:.1f} "
                f"| {sum(turn.generation for turn in turns) / n * 1e3:.1f} "
                f"| {sum(turn.retrieval for turn in turns) / n * 1e3:.1f} "
                f"| {orchestration / n * 1e3:.1f} "
                f"| {orchestration / max(rows, 1) * 1e6:.0f} "
                f"| {sum(turn.calls for turn in turns)} / {sum(t.searches > 0 for t in turns)} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--batches", type=int, default=2, help="timed batches per row (default 2)")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=3, help="passages per search")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-observation-tokens", type=int, default=500)
    parser.add_argument("--max-completion-tokens", type=int, default=1024)
    parser.add_argument(
        "--generate-batch-size", type=int, default=64, help="rows per transformers generate call"
    )
    parser.add_argument(
        "--data", type=Path, help="folder with test.jsonl and corpus.jsonl (default: synthetic)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: spare CPU for the rollout's own single-threaded work)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    args = parser.parse_args()
    if min(args.batch_sizes) < 1 or args.batches < 1:
        parser.error("--batch-sizes and --batches must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU")
    torch.set_num_threads(args.threads)
    config = RolloutConfig(
        k=args.top_k,
        max_turns=args.max_turns,
        max_new_tokens=args.max_new_tokens,
        max_observation_tokens=args.max_observation_tokens,
        max_completion_tokens=args.max_completion_tokens,
    )

    with tempfile.TemporaryDirectory() as folder:
        questions, corpus_file = load_data(args.data, Path(folder))
        corpus = load_corpus(corpus_file, cache_dir=folder)
        retriever = BM25Retriever(corpus, build_bm25_index(corpus, Path(folder) / "bm25"))
        texts = [m["content"] for p in questions["prompt"] for m in p]
        texts += [SEARCH_R1.invalid_notice, FINAL_TURN_NOTICE]
        texts += corpus.contents(0, len(corpus))
        shapes = [setup for setup in setups(args.device == "cuda") if setup.device == "cuda"]

        def run_all(name: str, device: str, generator: Generator, tokenizer: Any) -> list[Result]:
            play = dict(
                questions=questions, retriever=retriever, config=config, batches=args.batches
            )
            return [
                measure(name, device, generator, tokenizer, **play, batch_size=n, warm_up=i == 0)
                for i, n in enumerate(args.batch_sizes)
            ]

        model, tokenizer = build_model(setups(False)[0], texts, Path(folder) / "tiny")
        results = run_all("scripted", "cpu", ScriptedPolicy(tokenizer, args.max_turns), tokenizer)
        sampling = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        model = model.to(args.device).eval()
        generator = TransformersGenerator(
            model, tokenizer, sampling, batch_size=args.generate_batch_size
        )
        results += run_all("tiny", args.device, generator, tokenizer)
        for setup in shapes:  # the Qwen2.5 shapes, on a GPU only
            name = setup.name.removesuffix("+lora")
            del model, generator
            free(args.device)
            model, tokenizer = build_model(setup, texts, Path(folder) / name)
            generator = TransformersGenerator(
                model.eval(), tokenizer, sampling, batch_size=args.generate_batch_size
            )
            results += run_all(f"{name} transformers", "cuda", generator, tokenizer)
            if importlib.util.find_spec("vllm") is not None:
                longest = max(len(encode_prompt(p, tokenizer)) for p in questions["prompt"])
                length = longest + config.max_completion_tokens
                del generator
                generator = vllm_generator(model, tokenizer, Path(folder) / f"{name}-vllm", length)
                results += run_all(f"{name} vllm", "cuda", generator, tokenizer)
    print_tables(results, args)


if __name__ == "__main__":
    main()
