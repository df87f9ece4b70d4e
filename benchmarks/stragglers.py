"""Continuous vs turn-synchronous scheduling of search episodes, with and without stragglers.

    .venv/bin/python benchmarks/stragglers.py                       # transformers, on the CPU
    .venv-vllm/bin/python benchmarks/stragglers.py --backend vllm   # vLLM's CPU build

Two workloads of `--episodes` episodes, each episode's turns planned in advance:

- uniform: every episode searches once, then answers; both turns `--short` tokens long;
- straggler: one episode in ten searches at every turn it may (`--max-turns`), each turn
  `--long` tokens long, then answers; the others are uniform ones.

The engine really decodes each planned turn: a random tiny Qwen2 (`--hidden`, `--layers`) is held
to a filler token (transformers: a +100 sequence bias; vLLM: `allowed_token_ids`), so each turn
costs exactly its planned number of decoding steps, batched as the backend batches them. The
planned turn's text (filler `</think><search> q </search>`, or filler `</think><answer> a
</answer>` and EOS) then replaces the decoded ids, with the same length, before the rollout reads
it: the time is the engine's, the episode is the plan's. Only the turn's tail differs from what
the engine decoded, so the next turn's context shares all but those few ids with what the engine
holds (a real turn shares all of them). Searches go to BM25 over the demo world's passages, in
process, plus `--search-latency-ms` of sleep per retriever call, standing in for a retrieval
server's round trip.

The engine decodes at most `--concurrency` sequences at once (vLLM's `max_num_seqs`, the
transformers generator's batch), fewer than the episodes, as on a GPU whose KV cache holds only
part of a step's episodes (the 7B recipe's dry run: 63 of 320 at once). Where every episode fits
in the engine at once, a rollout call lasts as long as its longest episode's chain of turns and
searches under either scheduler; continuous scheduling then only ends the other episodes sooner.

Both schedulers play the same episodes (checked: the same completion ids); per scheduler the
script reports episodes per second, p50 and p99 episode time (from the start of the rollout to the
end of the episode's last turn), and the engine's idle share (the part of the wall time spent
outside `generate` / `step`: retrieval, orchestration, waiting) and, on vLLM, the prefix-cache
hits: the share of the context ids sent to the engine that it served from its prefix cache
(`RequestOutput.num_cached_tokens`, as training logs it; transformers has no prefix cache: n/a).
vLLM's prefix cache is emptied before every run, as TRL empties it after each weight sync, so
hits come from the run's own earlier turns. Each (workload, scheduler) runs `--repeats` times
after one untimed warm-up; figures are medians.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from research_r1.generators import BatchEngine, Engine, Generation, Generator
from research_r1.protocol import SEARCH_R1
from research_r1.retrieval import Passage, Retriever
from research_r1.retrieval.bm25 import build_bm25_index
from research_r1.retrieval.config import load_retriever
from research_r1.retrieval.corpus import load_corpus
from research_r1.rollout import RolloutConfig, run_rollout, run_rollout_continuous
from research_r1.tiny import build_tiny_model
from research_r1.training.trl_rollout import prefix_cache_hit_rate
from research_r1.world import build_world, write_corpus

STRAGGLER_SHARE = 0.1


@dataclass(frozen=True)
class Turn:
    length: int
    action: str  # "search" or "answer"


def plan(workload: str, episodes: int, args: argparse.Namespace) -> list[list[Turn]]:
    """Each episode's turns: a straggler searches at every turn it may, with long turns."""
    uniform = [Turn(args.short, "search"), Turn(args.short, "answer")]
    stragglers = set(random.Random(0).sample(range(episodes), round(episodes * STRAGGLER_SHARE)))
    long = [Turn(args.long, "search")] * args.max_turns + [Turn(args.long, "answer")]
    return [
        long if workload == "straggler" and row in stragglers else uniform
        for row in range(episodes)
    ]


@dataclass
class Planned:
    """The plan, what each episode has played of it, and the clock: shared by the wrappers that
    put the planned turns in place of what the engine decoded."""

    prompts: list[list[int]]
    plans: list[list[Turn]]
    tokenizer: Any
    filler: int
    start: float = 0.0
    busy: float = 0.0  # seconds inside the engine's generate / step
    played: list[int] = field(default_factory=list)
    ended: dict[int, float] = field(default_factory=dict)

    def reset(self) -> None:
        self.start, self.busy = time.perf_counter(), 0.0
        self.played, self.ended = [0] * len(self.plans), {}

    def episode(self, context: Sequence[int]) -> int:
        """Which episode a context belongs to (every prompt is its own)."""
        return next(i for i, p in enumerate(self.prompts) if list(context[: len(p)]) == p)

    def next_turn(self, row: int) -> Turn:
        turn = self.plans[row][self.played[row]]
        self.played[row] += 1
        return turn

    def replace(self, row: int, turn: Turn, decoded: Generation) -> Generation:
        """The planned turn's ids, as long as what the engine decoded for it."""

        def encode(text: str) -> list[int]:
            return self.tokenizer.encode(text, add_special_tokens=False)

        if turn.action == "search":
            tail, finish = encode("</think><search> born </search>"), "stop"
        else:
            tail, finish = (
                [*encode("</think><answer> a </answer>"), self.tokenizer.eos_token_id],
                "eos",
            )
        ids = [self.filler] * (len(decoded.token_ids) - len(tail)) + tail
        if len(ids) != len(decoded.token_ids):
            raise SystemExit(f"--short and --long must be at least {len(tail)}")
        if self.played[row] == len(self.plans[row]):
            self.ended[row] = time.perf_counter() - self.start
        return Generation(ids, [0.0] * len(ids), finish, decoded.cached_tokens)


class PlannedGenerator:
    """A `Generator` (the turn-synchronous scheduler's) that decodes each row's planned length."""

    def __init__(self, inner: Generator, planned: Planned) -> None:
        self.inner, self.planned = inner, planned

    def generate(self, contexts, max_new_tokens, stop) -> list[Generation]:
        rows = [self.planned.episode(context) for context in contexts]
        turns = [self.planned.next_turn(row) for row in rows]
        budgets = [min(t.length, b) for t, b in zip(turns, max_new_tokens, strict=True)]
        began = time.perf_counter()
        decoded = self.inner.generate(contexts, budgets, stop)
        self.planned.busy += time.perf_counter() - began
        return [
            self.planned.replace(row, turn, generation)
            for row, turn, generation in zip(rows, turns, decoded, strict=True)
        ]


class PlannedEngine:
    """An `Engine` (the continuous scheduler's) that decodes each request's planned length."""

    def __init__(self, inner: Engine, planned: Planned) -> None:
        self.inner, self.planned = inner, planned
        self.turns: dict[int, Turn] = {}

    def submit(self, key, context, max_new_tokens, stop) -> None:
        turn = self.turns[key] = self.planned.next_turn(key)
        self.inner.submit(key, context, min(turn.length, max_new_tokens), stop)

    def step(self) -> list[tuple[int, Generation]]:
        began = time.perf_counter()
        finished = self.inner.step()
        self.planned.busy += time.perf_counter() - began
        return [(key, self.planned.replace(key, self.turns.pop(key), g)) for key, g in finished]


class SlowRetriever:
    """A retriever that answers after `latency_s`, as a server across a network would (so the
    continuous scheduler calls it beside the engine, as it calls a remote one)."""

    waits_on_network = True

    def __init__(self, inner: Retriever, latency_s: float) -> None:
        self.inner, self.latency_s = inner, latency_s

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        time.sleep(self.latency_s)
        return self.inner.search(queries, k)


def build(args: argparse.Namespace, folder: Path) -> tuple[Any, Any, Retriever, list[list[int]]]:
    """The random tiny model, its tokenizer, the retriever and `--episodes` prompts."""
    world = build_world(seed=0, num_people=max(40, args.episodes))
    corpus = write_corpus(world, folder / "corpus.jsonl")
    build_bm25_index(load_corpus(corpus), folder / "bm25")
    retriever = load_retriever(
        {"type": "bm25", "corpus": str(corpus), "index": str(folder / "bm25")}
    )
    questions = [f"{i}: {q.question}" for i, q in enumerate(world.train[: args.episodes])]
    texts = [*questions, *(p["contents"] for p in world.passages)]
    path = build_tiny_model(
        folder / "model",
        texts,
        SEARCH_R1.tags,
        hidden_size=args.hidden,
        num_layers=args.layers,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompts = [tokenizer.encode(q, add_special_tokens=False) for q in questions]
    if len({tuple(p) for p in prompts}) != len(prompts):
        raise SystemExit("two prompts encode alike; the plan could not tell their episodes apart")
    return model, tokenizer, SlowRetriever(retriever, args.search_latency_ms / 1000), prompts


def backends(
    args: argparse.Namespace, model: Any, tokenizer: Any, filler: int, folder: Path
) -> tuple[Generator, Engine, Callable[[], object]]:
    """The turn-synchronous `Generator` and the continuous `Engine` of `--backend`, and what
    empties its prefix cache (nothing to empty with transformers)."""
    if args.backend == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process, as TRL's
        from vllm import LLM

        from research_r1.generation_vllm import VLLMGenerator, pass_opaque_namespaces

        model.save_pretrained(folder / "vllm")
        tokenizer.save_pretrained(folder / "vllm")
        pass_opaque_namespaces()  # bm25s imported numba, which vLLM's start-up scan trips on
        llm = LLM(  # as tests_vllm starts it on a CPU: its own KV cache, one process
            model=str(folder / "vllm"),
            dtype="float32",
            enforce_eager=True,
            max_model_len=2048,
            kv_cache_memory_bytes=512 * 2**20,
            distributed_executor_backend="uni",
            enable_prefix_caching=True,
            max_num_seqs=args.concurrency,
            seed=0,
        )
        forced = {"allowed_token_ids": [filler], "ignore_eos": True}
        generator = VLLMGenerator(llm, temperature=0.0, generation_kwargs=forced)
        return generator, generator, llm.reset_prefix_cache
    from transformers import GenerationConfig

    from research_r1.generation import TransformersGenerator

    config = GenerationConfig(do_sample=False, sequence_bias={(filler,): 100.0})
    generator = TransformersGenerator(model, tokenizer, config, batch_size=args.concurrency)
    return generator, BatchEngine(generator), lambda: None


@dataclass
class Run:
    workload: str
    scheduler: str
    seconds: float
    episode_s: list[float]
    idle: float
    completions: list[list[int]]
    hit_rate: float | None  # None: the backend reports no prefix-cache hits


def play(scheduler: str, backend: Any, planned: Planned, retriever, tokenizer, config) -> Run:
    planned.reset()
    common = {
        "tokenizer": tokenizer,
        "retriever": retriever,
        "protocol": SEARCH_R1,
        "config": config,
    }
    if scheduler == "turn":
        episodes = run_rollout(
            planned.prompts, generator=PlannedGenerator(backend, planned), **common
        )
    else:
        engine = PlannedEngine(backend, planned)
        episodes = run_rollout_continuous(planned.prompts, engine=engine, **common)
    wall = time.perf_counter() - planned.start
    ends = [planned.ended[row] for row in range(len(episodes))]
    hit_rate = prefix_cache_hit_rate(
        [e.context_tokens for e in episodes], [e.cached_tokens for e in episodes]
    )
    completions = [e.completion_ids for e in episodes]
    return Run("", scheduler, wall, ends, 1 - planned.busy / wall, completions, hit_rate)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="sequences the engine decodes at once (vLLM max_num_seqs, transformers batch)",
    )
    parser.add_argument("--short", type=int, default=24, help="tokens of a uniform turn")
    parser.add_argument("--long", type=int, default=160, help="tokens of a straggler's turn")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--search-latency-ms", type=float, default=20.0)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = RolloutConfig(
        k=2,
        max_turns=args.max_turns,
        max_new_tokens=args.long,
        max_observation_tokens=64,
        max_completion_tokens=None,
    )
    rows = []
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        model, tokenizer, retriever, prompts = build(args, folder)
        filler = tokenizer.encode(" born", add_special_tokens=False)[0]
        generator, engine, empty_cache = backends(args, model, tokenizer, filler, folder)

        def run(scheduler: str, backend: Any, planned: Planned) -> Run:
            empty_cache()  # as TRL does after each weight sync
            return play(scheduler, backend, planned, retriever, tokenizer, config)

        for workload in ("uniform", "straggler"):
            planned = Planned(prompts, plan(workload, len(prompts), args), tokenizer, filler)
            results: dict[str, list[Run]] = {}
            for scheduler, backend in (("turn", generator), ("continuous", engine)):
                run(scheduler, backend, planned)  # warm-up
                results[scheduler] = [run(scheduler, backend, planned) for _ in range(args.repeats)]
            if results["turn"][0].completions != results["continuous"][0].completions:
                raise SystemExit(f"{workload}: the schedulers played different episodes")
            for scheduler, runs in results.items():
                rows.append((workload, scheduler, runs))
    print_table(rows, args)


def print_table(rows, args: argparse.Namespace) -> None:
    print(
        f"\n{args.backend}, {args.episodes} episodes, {args.concurrency} at once, model hidden "
        f"{args.hidden} x {args.layers} layers, turns {args.short} / {args.long} tokens, "
        f"max_turns {args.max_turns}, search latency {args.search_latency_ms:g} ms; "
        f"medians of {args.repeats} runs\n"
    )
    columns = [
        "episodes/s",
        "p50 episode s",
        "p99 episode s",
        "engine idle",
        "prefix-cache hits",
        "speed-up",
    ]
    print("| workload | scheduler | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    base: dict[str, float] = {}
    for workload, scheduler, runs in rows:
        rate = statistics.median(len(r.episode_s) / r.seconds for r in runs)
        p50 = statistics.median(percentile(r.episode_s, 0.5) for r in runs)
        p99 = statistics.median(percentile(r.episode_s, 0.99) for r in runs)
        idle = statistics.median(r.idle for r in runs)
        base.setdefault(workload, rate)
        print(
            f"| {workload} | {scheduler} | {rate:.1f} | {p50:.2f} | {p99:.2f} | {idle:.0%} "
            f"| {hits(runs)} | {rate / base[workload]:.2f}x |"
        )


def hits(runs: list[Run]) -> str:
    """The median prefix-cache hit rate of `runs`, or n/a where the backend reports none."""
    rates = [r.hit_rate for r in runs]
    if None in rates:
        return "n/a"
    return f"{statistics.median(rates):.0%}"


if __name__ == "__main__":
    main()
